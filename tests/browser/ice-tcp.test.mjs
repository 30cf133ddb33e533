// Networks without UDP, in real headless Chromium, with the UDP of this network namespace dropped
// by an nftables rule of the test's own: two pages whose UDP stops mid-call restart ICE on their
// own (the web client's reaction to a disconnected connection) and decode again once it is
// back; two pages join, publish and decode each other over the server's passive TCP candidates
// (ICE-TCP); and two pages that may only use relays do so through the embedded TURN server over
// TLS.
//
// Run: `node --test ice-tcp.test.mjs` in tests/browser (after `cargo build`), as root, inside a
// loopback-only namespace of its own (tests/run.sh gives it one): the rule drops all UDP of the
// namespace, which would break any other test running in it.

import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { launchChromium, meetAndDecode, receivedFrom, startServer, until } from './lib.mjs';

const ROOM = `ice-tcp-${process.pid}`;
const TABLE = 'sfu_ice_tcp_test';
/** The TURN server's relay ports; the Linux ephemeral range starts at 32768. */
const RELAY_PORTS = '20000-20099';

const servers = {};
let browser;
const people = [];

function nft(...args) {
  return execFileSync('nft', args, { encoding: 'utf8' });
}

let dropping = false;

/**
 * Drops every UDP datagram of this namespace but those of the TURN server's relay sockets
 * (RELAY_PORTS, below the kernel's ephemeral ports, so no browser socket has one): a browser's
 * media can then only go over TCP, to the server or to its TURN server over TLS.
 */
function dropUdp() {
  if (dropping) return;
  nft('add', 'table', 'inet', TABLE);
  nft('add', 'chain', 'inet', TABLE, 'out', '{ type filter hook output priority 0 ; }');
  nft('add', 'rule', 'inet', TABLE, 'out', 'meta', 'l4proto', 'udp', 'udp', 'sport', '!=', RELAY_PORTS,
    'udp', 'dport', '!=', RELAY_PORTS, 'counter', 'drop');
  dropping = true;
}

function allowUdp() {
  if (!dropping) return;
  nft('delete', 'table', 'inet', TABLE);
  dropping = false;
}

describe('Chromium when UDP is dropped: ICE restart, ICE-TCP, TURN over TLS', { timeout: 5 * 60_000 }, () => {
  before(async () => {
    // TURN over TLS needs a certificate: a self-signed one for "localhost".
    const dir = mkdtempSync(path.join(tmpdir(), 'sfu-turns-'));
    const [cert, key] = [path.join(dir, 'cert.pem'), path.join(dir, 'key.pem')];
    execFileSync('openssl', ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256',
      '-nodes', '-keyout', key, '-out', cert, '-days', '1', '-subj', '/CN=localhost',
      '-addext', 'subjectAltName=DNS:localhost,IP:127.0.0.1'], { stdio: 'ignore' });
    // ICE-TCP is tried without a TURN server to fall back to; TURN over TLS has a server of
    // its own; the ICE restart one with neither, so that only a restart can bring media back.
    servers.udp = await startServer({
      logName: 'server-udp-only.log',
      env: { SFU_TURN_ENABLED: 'false', SFU_RTC_ICE_TCP: 'false' },
    });
    servers.tcp = await startServer({ logName: 'server-ice-tcp.log', env: { SFU_TURN_ENABLED: 'false' } });
    servers.turns = await startServer({
      logName: 'server-turns.log',
      env: {
        SFU_TURN_TLS_PORT: '0', SFU_TURN_TLS_CERT: cert, SFU_TURN_TLS_KEY: key, SFU_TURN_DOMAIN: 'localhost',
        SFU_TURN_RELAY_PORT_MIN: RELAY_PORTS.split('-')[0], SFU_TURN_RELAY_PORT_MAX: RELAY_PORTS.split('-')[1],
      },
    });
    // The TURN server's certificate is self-signed.
    browser = await launchChromium({ extraFlags: ['--ignore-certificate-errors'] });
  });

  after(async () => {
    for (const p of people) await p.context.close().catch(() => {});
    await browser?.close();
    for (const server of Object.values(servers)) await server.stop();
    allowUdp();
  });

  it('pages whose UDP stops for a while restart ICE on their own and decode again once it is back', async () => {
    const { people: [Eve, Frank] } = await meetAndDecode(browser, servers.udp.url, { room: ROOM, names: ['Eve', 'Frank'] });
    people.push(Eve, Frank);
    const ufrags = () => Eve.page.evaluate(() => {
      const ufrag = (d) => /a=ice-ufrag:(\S+)/.exec(d?.sdp ?? '')?.[1];
      return { publisher: ufrag(window.sfu._pub?.localDescription), subscriber: ufrag(window.sfu._sub?.remoteDescription) };
    });
    const before = await until(async () => { const u = await ufrags(); return u.publisher && u.subscriber ? u : null; },
      { timeoutMs: 30_000, what: 'both of Eve\'s connections to be negotiated' });
    await Eve.page.evaluate(() => {
      window.__restarts = [];
      window.sfu.addEventListener('ice_restart', (e) => window.__restarts.push(e.detail.target));
    });
    dropUdp();
    const restarted = await until(() => Eve.page.evaluate(() => (window.__restarts.length ? window.__restarts : null)),
      { timeoutMs: 60_000, what: 'Eve to restart ICE after her UDP stopped' });
    console.log(`Eve restarted ICE on: ${JSON.stringify(restarted)}`);
    allowUdp();
    for (const [viewer, identity] of [[Frank, 'Eve'], [Eve, 'Frank']]) {
      const first = await receivedFrom(viewer, identity);
      await until(async () => (await receivedFrom(viewer, identity)).video?.framesDecoded > (first.video?.framesDecoded ?? 0) + 10,
        { timeoutMs: 60_000, what: `${viewer.name} to decode ${identity} again` });
    }
    const after = await ufrags();
    console.log(`Eve's ICE credentials: ${JSON.stringify(before)} -> ${JSON.stringify(after)}`);
    for (const target of new Set(restarted)) {
      assert.notEqual(after[target], before[target], `Eve's ${target} connection has its old ICE credentials`);
    }
  });

  it('two pages connect over TCP and decode each other\'s video', async () => {
    dropUdp();
    const met = await meetAndDecode(browser, servers.tcp.url, { room: ROOM, names: ['Alice', 'Bob'] });
    people.push(...met.people);
    for (const [name, connections] of Object.entries(met.pairs)) {
      for (const [which, pair] of Object.entries(connections)) {
        assert.equal(pair?.protocol, 'tcp', `${name}'s ${which} connection is not on TCP: ${JSON.stringify(pair)}`);
      }
    }
    // The rule did drop UDP: the browsers tried it first.
    const dropped = /packets (\d+)/.exec(nft('list', 'table', 'inet', TABLE))?.[1];
    console.log(`UDP datagrams dropped: ${dropped}`);
    assert.ok(Number(dropped) > 0, 'no UDP was dropped: the test did not block what it should');
  });

  it('two pages that may only use relays decode each other through the TURN server over TLS', async () => {
    const met = await meetAndDecode(browser, servers.turns.url, { room: ROOM, names: ['Carol', 'Dave'], policy: 'relay' });
    people.push(...met.people);
    const urls = await met.people[0].page.evaluate(() => window.sfu._iceServers.flatMap((s) => s.urls));
    assert.ok(urls.some((u) => u.startsWith('turns:localhost:')), `no turns: server given: ${JSON.stringify(urls)}`);
    for (const [name, connections] of Object.entries(met.pairs)) {
      for (const [which, pair] of Object.entries(connections)) {
        assert.equal(pair?.local, 'relay', `${name}'s ${which} connection is not relayed: ${JSON.stringify(pair)}`);
        assert.equal(pair?.relayProtocol, 'tls', `${name}'s ${which} relay is not over TLS: ${JSON.stringify(pair)}`);
      }
    }
  });
});
