// ICE over TCP in real headless Chromium: with every UDP datagram in this network namespace
// dropped (an nftables rule of the test's own), two pages still join, publish and decode each
// other, over the server's passive TCP candidates, and their selected candidate pairs say tcp.
//
// Run: `node --test ice-tcp.test.mjs` in tests/browser (after `cargo build`), as root, inside a
// loopback-only namespace of its own (tests/run.sh gives it one): the rule drops all UDP of the
// namespace, which would break any other test running in it.

import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
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

const ROOM = `ice-tcp-${process.pid}`;
const TABLE = 'sfu_ice_tcp_test';

let server;
let browser;
const people = {};

function nft(...args) {
  return execFileSync('nft', args, { encoding: 'utf8' });
}

/** The protocol and candidate types of the pair `person`'s connection `which` uses. */
function selectedPair(person, which) {
  return person.page.evaluate(async (which) => {
    const pc = which === 'publisher' ? window.sfu._pub : window.sfu._sub;
    const report = await pc.getStats();
    let pair = null;
    report.forEach((s) => {
      if (s.type === 'transport' && s.selectedCandidatePairId) pair = report.get(s.selectedCandidatePairId);
    });
    if (!pair) return null;
    const local = report.get(pair.localCandidateId);
    const remote = report.get(pair.remoteCandidateId);
    return { protocol: local?.protocol, local: local?.candidateType, remote: `${remote?.address}:${remote?.port}`, remoteProtocol: remote?.protocol };
  }, which);
}

describe('ICE over TCP in Chromium, with UDP dropped', { timeout: 5 * 60_000 }, () => {
  before(async () => {
    // Every UDP datagram of this namespace is dropped: media can only go over TCP.
    nft('add', 'table', 'inet', TABLE);
    nft('add', 'chain', 'inet', TABLE, 'out', '{ type filter hook output priority 0 ; }');
    nft('add', 'rule', 'inet', TABLE, 'out', 'meta', 'l4proto', 'udp', 'counter', 'drop');
    server = await startServer({ logName: 'server-ice-tcp.log' });
    browser = await launchChromium();
  });

  after(async () => {
    for (const p of Object.values(people)) await p.context.close().catch(() => {});
    await browser?.close();
    await server?.stop();
    try {
      nft('delete', 'table', 'inet', TABLE);
    } catch {
      // Not there: nothing to undo.
    }
  });

  it('two pages connect over TCP and decode each other\'s video', async () => {
    for (const name of ['Alice', 'Bob']) {
      people[name] = await openPerson(browser, server.url, { room: ROOM, name });
      await joinAndTimeFirstFrame(people[name], { expectRemoteVideo: name === 'Bob', timeoutMs: 60_000 });
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
        assert.equal(pair?.protocol, 'tcp', `${person.name}'s ${which} connection is not on TCP: ${JSON.stringify(pair)}`);
      }
    }
    // The rule did drop UDP: the browsers tried it first.
    const dropped = /packets (\d+)/.exec(nft('list', 'table', 'inet', TABLE))?.[1];
    console.log(`UDP datagrams dropped: ${dropped}`);
    assert.ok(Number(dropped) > 0, 'no UDP was dropped: the test did not block what it should');
  });
});
