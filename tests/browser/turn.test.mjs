// The embedded TURN server in real headless Chromium: two pages whose client may only use
// relayed candidates (iceTransportPolicy "relay", TURN credentials from `joined.ice_servers`)
// join, publish and decode each other, and their selected pairs' local candidates are relays.
//
// Run: `node --test turn.test.mjs` in tests/browser (after `cargo build`), inside a
// loopback-only namespace as tests/run.sh does.

import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import {
  joinAndTimeFirstFrame,
  launchChromium,
  openPerson,
  receivedFrom,
  sleep,
  startServer,
  until,
} from './lib.mjs';

const ROOM = `turn-${process.pid}`;

let server;
let browser;
const people = {};

/** The local candidate type and protocol of the pair `person`'s connection `which` uses. */
function selectedPair(person, which) {
  return person.page.evaluate(async (which) => {
    const pc = which === 'publisher' ? window.sfu._pub : window.sfu._sub;
    const report = await pc.getStats();
    let pair = null;
    report.forEach((s) => {
      if (s.type === 'transport' && s.selectedCandidatePairId) pair = report.get(s.selectedCandidatePairId);
    });
    const local = pair && report.get(pair.localCandidateId);
    return local ? { type: local.candidateType, protocol: local.protocol, relayProtocol: local.relayProtocol } : null;
  }, which);
}

describe('the embedded TURN server, in Chromium', { timeout: 5 * 60_000 }, () => {
  before(async () => {
    server = await startServer({ logName: 'server-turn.log' });
    browser = await launchChromium();
  });

  after(async () => {
    for (const p of Object.values(people)) await p.context.close().catch(() => {});
    await browser?.close();
    await server?.stop();
  });

  it('two relay-only pages decode each other through it', async () => {
    for (const name of ['Alice', 'Bob']) {
      const person = await openPerson(browser, server.url, { room: ROOM, name });
      people[name] = person;
      await person.page.evaluate(() => { window.sfu.options.iceTransportPolicy = 'relay'; });
      await joinAndTimeFirstFrame(person, { expectRemoteVideo: name === 'Bob', timeoutMs: 60_000 });
    }
    const { Alice, Bob } = people;
    for (const [viewer, identity] of [[Bob, 'Alice'], [Alice, 'Bob']]) {
      const first = await until(async () => {
        const r = await receivedFrom(viewer, identity);
        return r.video?.framesDecoded > 0 ? r : null;
      }, { timeoutMs: 60_000, what: `${viewer.name} to decode ${identity}` });
      await sleep(2_000);
      const later = await receivedFrom(viewer, identity);
      assert.ok(later.video.framesDecoded > first.video.framesDecoded, `${viewer.name}: frames from ${identity} stopped`);
    }
    for (const person of [Alice, Bob]) {
      for (const which of ['publisher', 'subscriber']) {
        const pair = await selectedPair(person, which);
        console.log(`${person.name} ${which}: ${JSON.stringify(pair)}`);
        assert.equal(pair?.type, 'relay', `${person.name}'s ${which} connection is not relayed: ${JSON.stringify(pair)}`);
      }
    }
    const metrics = await (await fetch(`${server.url}/metrics`)).text();
    const relayed = Number(/^sfu_turn_relayed_bytes_total (\S+)/m.exec(metrics)?.[1] ?? 0);
    console.log(`bytes relayed by the TURN server: ${relayed}`);
    assert.ok(relayed > 100_000, `the TURN server relayed only ${relayed} bytes`);
  });
});
