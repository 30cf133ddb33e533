// Cluster mode in real headless Chromium: three `sfu` nodes on one Redis (a `redis-server` of the
// test's own on a free loopback port). Pages opened on different nodes end up in one meeting
// (the nodes send each join to the node that hosts the room, and the web client follows), see
// and hear each other and chat; a third joiner on another node gets the whole chat history.
// Then the hosting node gets SIGTERM: it drains, its pages move to another node by themselves,
// publish again and meet there, chat history included.
//
// Run: `node --test cluster.test.mjs` in tests/browser (after `cargo build`), inside a
// loopback-only namespace as tests/run.sh does.

import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import net from 'node:net';
import { after, before, describe, it } from 'node:test';
import { launchChromium, metricValue, openPerson, printPages, receivedFrom, startServer, until } from './lib.mjs';

const ROOM = `cluster-${process.pid}`;
const MEDIA_TIMEOUT_MS = 60_000;

let redis;
let browser;
const nodes = {};
const people = {};

/** A free TCP port on loopback. */
function freePort() {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address();
      server.close(() => resolve(port));
    });
    server.on('error', reject);
  });
}

async function startRedis() {
  const port = await freePort();
  const child = spawn('redis-server', ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no'], { stdio: 'ignore' });
  await until(() => new Promise((resolve) => {
    const socket = net.connect(port, '127.0.0.1', () => { socket.end(); resolve(true); });
    socket.on('error', () => resolve(false));
  }), { timeoutMs: 10_000, what: 'redis-server to listen' });
  return { url: `redis://127.0.0.1:${port}/`, stop: () => child.kill('SIGKILL') };
}

function startNode(id) {
  return startServer({
    logName: `cluster-${id}.log`,
    env: {
      SFU_CLUSTER_REDIS_URL: redis.url,
      SFU_CLUSTER_NODE_ID: id,
      SFU_CLUSTER_REFRESH: '200ms',
      SFU_CLUSTER_NODE_TTL: '2s',
      SFU_CLUSTER_DRAIN_TIMEOUT: '30s',
      SFU_TURN_ENABLED: 'false',
    },
  });
}

/** Runs one step; on failure prints what the pages and the nodes said, then fails. */
async function diagnose(fn) {
  try {
    return await fn();
  } catch (err) {
    await printPages(Object.values(people));
    for (const [id, node] of Object.entries(nodes)) {
      console.error(`-- node ${id} (log ${node.logPath}):`);
      console.error(node.output().split('\n').slice(-15).join('\n'));
    }
    throw err;
  }
}

/** The signaling URL the page's client is connected to. */
function socketOf(person) {
  return person.page.evaluate(() => window.sfu.url);
}

/** Waits until `viewer` decodes `identity`'s video and gets its audio, both going on. */
async function assertReceiving(viewer, identity) {
  const first = await until(async () => {
    const r = await receivedFrom(viewer, identity);
    return r.video?.framesDecoded > 0 && r.audio?.packetsReceived > 0 ? r : null;
  }, { timeoutMs: MEDIA_TIMEOUT_MS, what: `${viewer.name} to decode video and get audio from ${identity}` });
  await until(async () => {
    const r = await receivedFrom(viewer, identity);
    return r.video?.framesDecoded > first.video.framesDecoded + 10 && r.audio?.packetsReceived > first.audio.packetsReceived;
  }, { timeoutMs: MEDIA_TIMEOUT_MS, what: `${viewer.name} to go on receiving ${identity}` });
}

async function chat(person, text) {
  await person.page.click('#chat-input');
  await person.page.keyboard.type(text);
  await person.page.keyboard.press('Enter');
}

async function seesChat(person, texts) {
  for (const text of texts) {
    await person.page.locator('#chat-log .chat-message', { hasText: text }).waitFor({ timeout: 15_000 });
  }
}

async function join(name, node) {
  const person = await openPerson(browser, nodes[node].url, { room: ROOM, name });
  people[name] = person;
  // Every state the client goes through, to show a redirect is not a step back.
  await person.page.evaluate(() => {
    window.__states = [];
    window.sfu.addEventListener('state', (e) => window.__states.push(e.detail.state));
  });
  await person.page.click('#join');
  await person.page.waitForFunction(() => window.sfuState?.joined === true, null, { timeout: 30_000 });
  return person;
}

describe('cluster: three nodes on one Redis, Chromium pages on different nodes', () => {
  before(async () => {
    redis = await startRedis();
    for (const id of ['a', 'b', 'c']) nodes[id] = await startNode(id);
    for (const node of Object.values(nodes)) {
      await until(async () => (await metricValue(node, 'sfu_cluster_nodes')) === 3,
        { timeoutMs: 15_000, what: 'every node to see the three nodes' });
    }
    browser = await launchChromium();
  });

  after(async () => {
    await browser?.close();
    for (const node of Object.values(nodes)) await node.stop();
    redis?.stop();
  });

  it('pages opened on nodes A and B meet on the room\'s node, see and hear each other and chat; a third on C gets the whole history', () => diagnose(async () => {
    const ann = await join('Ann', 'a');
    const ws = (node) => `${nodes[node].url.replace('http://', 'ws://')}/ws`;
    assert.equal(await socketOf(ann), ws('a'));
    const bob = await join('Bob', 'b');
    assert.equal(await socketOf(bob), ws('a'), 'Bob\'s client followed node B to the room\'s node');
    assert.equal(await metricValue(nodes.b, 'sfu_cluster_redirects_total{reason="room_on_other_node"}'), 1);
    assert.deepEqual(await bob.page.evaluate(() => window.__states), ['connecting', 'connected', 'joined'],
      'a redirected join does not go back to `connecting`');
    await assertReceiving(ann, 'Bob');
    await assertReceiving(bob, 'Ann');
    await chat(ann, 'hello from Ann');
    await seesChat(bob, ['hello from Ann']);
    await chat(bob, 'hello from Bob');
    await seesChat(ann, ['hello from Bob']);

    const cat = await join('Cat', 'c');
    assert.equal(await socketOf(cat), ws('a'));
    await seesChat(cat, ['hello from Ann', 'hello from Bob']);
    await assertReceiving(cat, 'Ann');
    await assertReceiving(cat, 'Bob');
  }));

  it('SIGTERM on the room\'s node: its pages move to another node by themselves, meet again there with the chat history', () => diagnose(async () => {
    const { Ann, Bob, Cat } = people;
    for (const p of [Ann, Bob, Cat]) {
      await p.page.evaluate(() => {
        window.__redirects = [];
        window.sfu.addEventListener('redirected', (e) => window.__redirects.push(e.detail));
      });
    }
    const stopped = nodes.a.stop(); // SIGTERM, then waits for the node to exit
    const moved = await until(async () => {
      const urls = await Promise.all([Ann, Bob, Cat].map(socketOf));
      const joined = await Promise.all([Ann, Bob, Cat].map((p) => p.page.evaluate(() => window.sfuState?.joined === true)));
      const off = urls.every((u) => !u.includes(new URL(nodes.a.url).host)) && joined.every(Boolean);
      return off && new Set(urls).size === 1 ? urls[0] : null;
    }, { timeoutMs: MEDIA_TIMEOUT_MS, what: 'the three pages to move to one other node and join there' });
    await stopped;
    assert.equal(nodes.a.exited()?.code, 0, `node A exited cleanly: ${JSON.stringify(nodes.a.exited())}`);
    console.log(`the pages moved to ${moved}`);
    for (const p of [Ann, Bob, Cat]) {
      // Straight to the node the `leave` named, not back to the draining node to be refused.
      assert.deepEqual(await p.page.evaluate(() => window.__redirects), [], `${p.name} was refused on the way`);
    }
    await assertReceiving(Ann, 'Bob');
    await assertReceiving(Bob, 'Cat');
    await assertReceiving(Cat, 'Ann');
    await chat(Cat, 'after the move');
    await seesChat(Ann, ['after the move']);
    // A page that opens now on the node left gets the history from before the move.
    const dee = await join('Dee', moved.includes(new URL(nodes.b.url).host) ? 'c' : 'b');
    await seesChat(dee, ['hello from Ann', 'hello from Bob', 'after the move']);
  }));
});
