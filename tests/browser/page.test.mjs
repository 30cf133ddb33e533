// The demo page as people see it, and the SDK features only a page shows, in real headless
// Chromium: the grid for 1, 4 and 9 people and the spotlight for a screen share (screenshots
// under target/browser-screenshots/ to look at), the page at 420 px wide, the favicon, the
// connection-quality indicator, switching camera and speaker while in the call (the server keeps
// forwarding the same track), and the words for a browser that gathers no ICE candidate.
//
// Run: `node --test page.test.mjs` in tests/browser (after `cargo build`), inside a
// loopback-only namespace as tests/run.sh does. Asserts geometry and state, never durations.

import assert from 'node:assert/strict';
import http from 'node:http';
import { after, before, describe, it } from 'node:test';
import {
  forwardedTo,
  joinAndTimeFirstFrame,
  launchChromium,
  openPerson,
  receivedFrom,
  screenshot as saveScreenshot,
  startServer,
  until,
} from './lib.mjs';

const ROOM = `page-${process.pid}`;
const MEDIA_TIMEOUT_MS = 30_000;

let server;
let browser;
/** Everyone in ROOM, in join order. */
const people = [];

async function screenshot(person, label) {
  const file = await saveScreenshot(person, label);
  console.log(`screenshot: ${file}`);
  return file;
}

/** Opens the page for `name` and joins ROOM; `camera`/`mic` false joins without them. */
async function join(name, { camera = true, mic = true, viewport, room = ROOM } = {}) {
  const person = await openPerson(browser, server.url, { room, name, viewport });
  if (!camera) await person.page.uncheck('#with-camera');
  if (!mic) await person.page.uncheck('#with-mic');
  await joinAndTimeFirstFrame(person, { expectRemoteVideo: false });
  if (room === ROOM) people.push(person);
  return person;
}

/** Waits until `viewer` shows a tile for each of `count` others. */
function tilesShown(viewer, count) {
  return until(() => viewer.page.evaluate((n) => document.querySelectorAll('#tiles .tile').length === n, count),
    { timeoutMs: MEDIA_TIMEOUT_MS, what: `${viewer.name} to show ${count} remote tiles` });
}

/**
 * The geometry of `viewer`'s camera grid: its columns, the grid's box, each tile's box, whether
 * any two tiles overlap or one leaves the grid, and how much of the grid the tiles fill.
 */
function gridGeometry(viewer) {
  return viewer.page.evaluate(() => {
    const grid = document.querySelector('#grid').getBoundingClientRect();
    const boxes = [...document.querySelectorAll('#grid .tile, #grid .local-tile')]
      .filter((t) => t.offsetParent !== null)
      .map((t) => t.getBoundingClientRect());
    const overlap = (a, b) => a.left < b.right - 1 && b.left < a.right - 1 && a.top < b.bottom - 1 && b.top < a.bottom - 1;
    let overlaps = 0;
    boxes.forEach((a, i) => boxes.slice(i + 1).forEach((b) => { if (overlap(a, b)) overlaps++; }));
    const outside = boxes.filter((b) => b.left < grid.left - 1 || b.right > grid.right + 1 || b.top < grid.top - 1 || b.bottom > grid.bottom + 1).length;
    const area = boxes.reduce((n, b) => n + b.width * b.height, 0);
    const rows = new Set(boxes.map((b) => Math.round(b.top))).size;
    return {
      cols: Number(document.querySelector('#grid').dataset.cols),
      rows,
      tiles: boxes.length,
      overlaps,
      outside,
      fill: area / (grid.width * grid.height),
      tileWidth: Math.round(boxes[0]?.width ?? 0),
    };
  });
}

/** Pairs of elements (by selector) that overlap on the page: controls that cover each other. */
function overlappingControls(person, selector) {
  return person.page.evaluate((selector) => {
    const els = [...document.querySelectorAll(selector)].filter((e) => e.offsetParent !== null && !e.hidden);
    const found = [];
    els.forEach((a, i) => els.slice(i + 1).forEach((b) => {
      if (a.contains(b) || b.contains(a)) return;
      const r = a.getBoundingClientRect();
      const q = b.getBoundingClientRect();
      if (r.width && q.width && r.left < q.right - 1 && q.left < r.right - 1 && r.top < q.bottom - 1 && q.top < r.bottom - 1) {
        found.push(`${a.className || a.id} / ${b.className || b.id}`);
      }
    }));
    return found;
  }, selector);
}

describe('the demo page and the SDK in Chromium', { timeout: 10 * 60_000 }, () => {
  before(async () => {
    server = await startServer({ logName: 'server-page.log' });
    // Three fake cameras, so that switching devices has somewhere to go (see the switch test).
    browser = await launchChromium({ extraFlags: ['--use-fake-device-for-media-stream=device-count=3'] });
  });

  after(async () => {
    for (const p of people) await p.context.close().catch((err) => console.error(`closing ${p.name}: ${err.message}`));
    await browser?.close();
    await server?.stop();
  });

  it('serves a favicon, and the page asks for nothing the server does not have', async () => {
    const res = await fetch(`${server.url}/favicon.ico`);
    assert.equal(res.status, 200);
    assert.match(res.headers.get('content-type'), /^image\//);
    const person = await openPerson(browser, server.url, { room: `${ROOM}-alone`, name: 'Solo' });
    const missing = [];
    person.page.on('response', (r) => { if (r.status() >= 400) missing.push(`${r.status()} ${r.url()}`); });
    await person.page.reload();
    await person.page.waitForFunction(() => document.querySelector('link[rel="icon"]') !== null);
    // The preview shows the camera before joining.
    await until(() => person.page.evaluate(() => document.querySelector('#preview').videoWidth > 0),
      { timeoutMs: MEDIA_TIMEOUT_MS, what: 'the pre-join preview to show the camera' });
    const devices = await person.page.evaluate(() => document.querySelector('#camera-select').options.length);
    assert.equal(devices, 3, `the camera menu lists ${devices} cameras (the browser has 3)`);
    await screenshot(person, 'layout-prejoin');
    await joinAndTimeFirstFrame(person, { expectRemoteVideo: false });
    // The preview's camera was handed over: one camera open, the published one.
    const preview = await person.page.evaluate(() => document.querySelector('#preview').srcObject);
    assert.equal(preview, null, 'the preview is still open after joining');
    const geometry = await gridGeometry(person);
    assert.equal(geometry.tiles, 1);
    assert.ok(geometry.fill > 0.5, `alone, the one tile fills ${Math.round(geometry.fill * 100)}% of the stage`);
    await screenshot(person, 'layout-1');
    assert.deepEqual(missing, [], 'the page asked for files the server does not have');
    await person.context.close();
  });

  it('four people: a 2x2 grid that fills the stage, and each tile shows its connection quality', async () => {
    await join('Alice');
    await join('Bob');
    await join('Carol', { camera: false });
    await join('Dave', { camera: false });
    const [alice] = people;
    await tilesShown(alice, 3);
    const geometry = await gridGeometry(alice);
    console.log(`4 people: ${JSON.stringify(geometry)}`);
    assert.equal(geometry.cols, 2, `four tiles in ${geometry.cols} columns`);
    assert.equal(geometry.rows, 2);
    assert.equal(geometry.overlaps, 0);
    assert.equal(geometry.outside, 0);
    assert.ok(geometry.fill > 0.6, `four tiles fill only ${Math.round(geometry.fill * 100)}% of the stage`);
    // Measured from what arrives: Bob's media reaches Alice on loopback, and hers the server.
    await alice.page.locator('.tile[data-identity="Bob"] .tile-quality[data-quality="excellent"]').waitFor({ timeout: MEDIA_TIMEOUT_MS });
    await alice.page.locator('#local .tile-quality[data-quality="excellent"]').waitFor({ timeout: MEDIA_TIMEOUT_MS });
    const sdk = await alice.page.evaluate(() => window.room.getParticipantByIdentity('Bob').connectionQuality);
    assert.equal(sdk, 'excellent');
    // Carol sends only audio: measured from that.
    await alice.page.locator('.tile[data-identity="Carol"] .tile-quality[data-quality="excellent"]').waitFor({ timeout: MEDIA_TIMEOUT_MS });
    assert.deepEqual(await overlappingControls(alice, '.tile-bar > *, .tile-stats, .tile-note:not([hidden]), .tile-state:not([hidden])'), []);
    await screenshot(alice, 'layout-4');
  });

  it('metadata Alice sets through the SDK reaches Bob as an event and a property', async () => {
    const [alice, bob] = people;
    await bob.page.evaluate(() => {
      window.__metadata = [];
      window.room.on('participantMetadataChanged', ({ participant, previous }) =>
        window.__metadata.push({ identity: participant.identity, metadata: participant.metadata, previous }));
    });
    await alice.page.evaluate(() => window.room.localParticipant.setMetadata('{"hand":true}'));
    assert.equal(await alice.page.evaluate(() => window.room.localParticipant.metadata), '{"hand":true}');
    const seen = await until(() => bob.page.evaluate(() => window.__metadata.at(-1) ?? null),
      { timeoutMs: MEDIA_TIMEOUT_MS, what: 'Bob to hear of Alice\'s metadata' });
    assert.deepEqual(seen, { identity: 'Alice', metadata: '{"hand":true}', previous: '' });
    assert.equal(await bob.page.evaluate(() => window.room.getParticipantByIdentity('Alice').metadata), '{"hand":true}');
  });

  it('nine people: a 3x3 grid', async () => {
    for (const name of ['Erin', 'Frank', 'Grace', 'Heidi', 'Ivan']) await join(name, { camera: false, mic: false });
    const [alice] = people;
    await tilesShown(alice, 8);
    const geometry = await gridGeometry(alice);
    console.log(`9 people: ${JSON.stringify(geometry)}`);
    assert.equal(geometry.cols, 3);
    assert.equal(geometry.rows, 3);
    assert.equal(geometry.overlaps, 0);
    assert.equal(geometry.outside, 0);
    assert.ok(geometry.fill > 0.6, `nine tiles fill only ${Math.round(geometry.fill * 100)}% of the stage`);
    await screenshot(alice, 'layout-9');
    // Erin publishes nothing: there is nothing to measure, and the page does not pretend.
    assert.equal(await alice.page.evaluate(() => window.room.getParticipantByIdentity('Erin').connectionQuality), 'unknown');
    assert.equal(await alice.page.locator('.tile[data-identity="Erin"] .tile-quality').getAttribute('data-quality'), 'unknown');
    // Back to four for what follows.
    for (const p of people.splice(4)) await p.context.close();
    await tilesShown(alice, 3);
  });

  it('a screen share takes the stage (spotlight) and the cameras go to a strip', async () => {
    const [alice, bob] = people;
    await bob.page.click('#share-screen');
    await alice.page.locator('#spotlight .screen-tile[data-identity="Bob"]').waitFor({ timeout: MEDIA_TIMEOUT_MS });
    await until(() => alice.page.evaluate(() => document.querySelector('#spotlight .screen-tile video').videoWidth > 0),
      { timeoutMs: MEDIA_TIMEOUT_MS, what: 'Alice to show Bob\'s screen' });
    const layout = await alice.page.evaluate(() => {
      const screen = document.querySelector('#spotlight .screen-tile').getBoundingClientRect();
      const cams = [...document.querySelectorAll('#grid .tile, #grid .local-tile')].map((t) => t.getBoundingClientRect());
      return {
        screenArea: screen.width * screen.height,
        largestCamera: Math.max(...cams.map((c) => c.width * c.height)),
        camerasBelow: cams.every((c) => c.top >= screen.bottom - 1),
      };
    });
    assert.ok(layout.screenArea > 3 * layout.largestCamera, `the screen share is not the spotlight: ${JSON.stringify(layout)}`);
    assert.ok(layout.camerasBelow, 'the cameras are not in a strip below the screen share');
    assert.deepEqual(await overlappingControls(alice, '#spotlight .screen-tile, #grid .tile, #grid .local-tile'), []);
    await screenshot(alice, 'layout-screen-share');
    await bob.page.click('#share-screen');
    await alice.page.locator('#spotlight').waitFor({ state: 'hidden', timeout: MEDIA_TIMEOUT_MS });
  });

  it('Alice switches camera while in the call: same track, the other device, the server keeps forwarding it', async () => {
    const [alice, bob] = people;
    const before = await alice.page.evaluate(() => {
      const pub = window.room.localParticipant.getTrackPublication('camera');
      return { sid: pub.trackSid, device: pub.track.mediaStreamTrack.getSettings().deviceId };
    });
    // Chromium's second fake camera sends Y16 depth frames, which no encoder takes; its third
    // sends MJPEG, as a webcam does.
    const other = await alice.page.evaluate(async (current) =>
      (await window.room.constructor.getLocalDevices('videoinput')).find((d) => d.deviceId !== current && d.label === 'fake_device_2')?.deviceId, before.device);
    assert.ok(other, 'no second camera to switch to');
    await alice.page.click('#device-menu > summary');
    await alice.page.selectOption('#camera-select', other);
    await until(() => alice.page.evaluate((id) =>
      window.room.localParticipant.getTrackPublication('camera')?.track.mediaStreamTrack.getSettings().deviceId === id, other),
    { timeoutMs: MEDIA_TIMEOUT_MS, what: 'Alice\'s camera to be the other device' });
    const after = await alice.page.evaluate(() => {
      const pub = window.room.localParticipant.getTrackPublication('camera');
      return { sid: pub.trackSid, live: pub.track.mediaStreamTrack.readyState, preview: document.querySelector('#local-video').srcObject === pub.track.mediaStream };
    });
    assert.deepEqual(after, { sid: before.sid, live: 'live', preview: true });
    const bobSid = await bob.page.evaluate(() => window.room.localParticipant.sid);
    const first = await forwardedTo(server, ROOM, before.sid, bobSid);
    const decoded = (await receivedFrom(bob, 'Alice')).video?.framesDecoded ?? 0;
    await until(async () => (await forwardedTo(server, ROOM, before.sid, bobSid))?.packets > (first?.packets ?? 0) + 50 &&
      (await receivedFrom(bob, 'Alice')).video?.framesDecoded > decoded + 10,
    { timeoutMs: MEDIA_TIMEOUT_MS, what: 'the server to forward, and Bob to decode, Alice\'s switched camera' });
  });

  it('choosing a speaker routes every remote sound there', async () => {
    const [alice] = people;
    const outputs = await alice.page.evaluate(async () => (await window.room.constructor.getLocalDevices('audiooutput')).map((d) => d.deviceId));
    if (outputs.length === 0) {
      console.log('SKIPPED speaker choice: this Chromium lists no audio output device');
      return;
    }
    const target = outputs.at(-1);
    await alice.page.evaluate((id) => window.room.switchActiveDevice('audiooutput', id), target);
    const sinks = await alice.page.evaluate(() => [...document.querySelectorAll('#audio-sinks audio')].map((a) => a.sinkId));
    assert.ok(sinks.length > 0, 'no remote audio element');
    assert.deepEqual([...new Set(sinks)], [target]);
  });

  it('at 420 px wide nothing overflows and no control covers another', async () => {
    const narrow = await join('Narrow', { viewport: { width: 420, height: 860 } });
    await tilesShown(narrow, people.length - 1);
    const widths = await narrow.page.evaluate(() => ({ page: document.documentElement.scrollWidth, view: innerWidth }));
    assert.ok(widths.page <= widths.view, `the page is ${widths.page} px wide in a ${widths.view} px window`);
    assert.deepEqual(await overlappingControls(narrow, '#toolbar > *'), [], 'toolbar controls overlap');
    assert.deepEqual(await overlappingControls(narrow, '.tile-bar > *, .tile-stats, .tile-note:not([hidden])'), [], 'tile controls overlap');
    const geometry = await gridGeometry(narrow);
    assert.equal(geometry.overlaps, 0);
    assert.equal(geometry.outside, 0);
    await screenshot(narrow, 'layout-420px');
  });

  it('an app on another origin imports the SDK from the server and meets the room with it', async () => {
    // A page of its own, as an app developer would write one: no bundler, one module import.
    // It is served from another port of this machine: another origin.
    const html = `<!doctype html><title>app</title><script type="module">
        import { Room, RoomEvent } from '${server.url}/sfu.js';
        const room = new Room();
        window.app = { room, seen: [] };
        room.on(RoomEvent.TrackSubscribed, ({ track, participant }) => {
          window.app.seen.push(participant.identity + ' ' + track.kind);
          document.body.append(track.attach());
        });
      </script>`;
    const app = http.createServer((req, res) => {
      res.writeHead(200, { 'content-type': 'text/html; charset=utf-8' });
      res.end(html);
    });
    await new Promise((resolve) => app.listen(0, '127.0.0.1', resolve));
    const appOrigin = `http://127.0.0.1:${app.address().port}`;
    const context = await browser.newContext({ permissions: ['camera', 'microphone'] });
    try {
      await meetFromAnotherOrigin(context, appOrigin);
    } finally {
      await context.close();
      await new Promise((resolve) => app.close(resolve));
    }
  });

  /** The app's page (at `appOrigin`) loads the SDK, joins ROOM, and meets Alice there. */
  async function meetFromAnotherOrigin(context, appOrigin) {
    const page = await context.newPage();
    const failures = [];
    page.on('pageerror', (e) => failures.push(e.message));
    page.on('requestfailed', (r) => failures.push(`${r.url()}: ${r.failure()?.errorText}`));
    await page.goto(`${appOrigin}/`);
    await page.waitForFunction(() => window.app !== undefined, null, { timeout: MEDIA_TIMEOUT_MS })
      .catch((err) => { throw new Error(`the module did not load from ${server.url}: ${failures.join('; ') || err.message}`); });
    const { token } = await (await fetch(`${server.url}/api/dev/token?room=${ROOM}&name=App`)).json();
    await page.evaluate(async ({ url, token }) => {
      await window.app.room.connect(url, token);
      await window.app.room.localParticipant.publishMicrophone();
    }, { url: `${server.url.replace(/^http/, 'ws')}/ws`, token });
    await page.waitForFunction(() => window.app.seen.includes('Alice video'), null, { timeout: MEDIA_TIMEOUT_MS });
    const [alice] = people;
    await alice.page.locator('.tile[data-identity="App"]').waitFor({ timeout: MEDIA_TIMEOUT_MS });
    await until(() => alice.page.evaluate(() => window.room.getParticipantByIdentity('App')?.isMicrophoneEnabled),
      { timeoutMs: MEDIA_TIMEOUT_MS, what: 'Alice to see the app\'s microphone' });
  }

  it('a browser that gathers no ICE candidate is told so, not that the server is unreachable', async () => {
    // Relay only, on a server without TURN: the browser has no candidate at all.
    const noTurn = await startServer({ logName: 'server-page-noturn.log', env: { SFU_TURN_ENABLED: 'false', SFU_RTC_CONNECT_TIMEOUT: '5s' } });
    try {
      const person = await openPerson(browser, noTurn.url, { room: `${ROOM}-noice`, name: 'NoIce' });
      await person.page.evaluate(() => {
        window.sfu.options.iceTransportPolicy = 'relay';
        // Every status the page shows, however briefly (it reconnects and says so again).
        window.__statuses = [];
        const status = document.querySelector('#status');
        new MutationObserver(() => window.__statuses.push(status.textContent))
          .observe(status, { childList: true, characterData: true, subtree: true });
      });
      await person.page.click('#join');
      const status = await until(
        () => person.page.evaluate(() => window.__statuses.find((t) => /network address/.test(t)) ?? null),
        { timeoutMs: MEDIA_TIMEOUT_MS, what: 'the page to say the browser gathered no candidate' },
      );
      console.log(`status: ${status}`);
      const blamed = await person.page.evaluate(() =>
        window.__statuses.filter((t) => /could not reach the server|server's public address/.test(t)));
      assert.deepEqual(blamed, [], 'the page blamed the server');
      await person.context.close();
    } finally {
      await noTurn.stop();
    }
  });
});
