// The embedded TURN server in real headless Chromium: two pages whose client may only use
// relayed candidates (iceTransportPolicy "relay", TURN credentials from `joined.ice_servers`)
// join, publish and decode each other, and their selected pairs' local candidates are relays.
//
// Run: `node --test turn.test.mjs` in tests/browser (after `cargo build`), inside a
// loopback-only namespace as tests/run.sh does.

import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { launchChromium, meetAndDecode, metricValue, startServer } from './lib.mjs';

const ROOM = `turn-${process.pid}`;

let server;
let browser;
const people = [];

describe('the embedded TURN server, in Chromium', { timeout: 5 * 60_000 }, () => {
  before(async () => {
    server = await startServer({ logName: 'server-turn.log' });
    browser = await launchChromium();
  });

  after(async () => {
    for (const p of people) await p.context.close().catch(() => {});
    await browser?.close();
    await server?.stop();
  });

  it('two relay-only pages decode each other through it', async () => {
    const met = await meetAndDecode(browser, server.url, { room: ROOM, names: ['Alice', 'Bob'], policy: 'relay' });
    people.push(...met.people);
    for (const [name, connections] of Object.entries(met.pairs)) {
      for (const [which, pair] of Object.entries(connections)) {
        assert.equal(pair?.local, 'relay', `${name}'s ${which} connection is not relayed: ${JSON.stringify(pair)}`);
      }
    }
    const relayed = await metricValue(server, 'sfu_turn_relayed_bytes_total');
    console.log(`bytes relayed by the TURN server: ${relayed}`);
    assert.ok(relayed > 100_000, `the TURN server relayed only ${relayed} bytes`);
  });
});
