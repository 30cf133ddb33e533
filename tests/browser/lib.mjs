// Helpers for the browser end-to-end tests: start the `sfu` binary on free ports, launch the
// machine's Chromium (/usr/bin/chromium) through playwright-core, and read WebRTC stats from
// a page of the demo client (web/index.html, which exposes the SDK's `window.room` and, for
// white-box checks, the engine under it as `window.sfu`).
//
// The tests run inside a loopback-only network namespace (tests/run.sh), so the server binds
// and advertises 127.0.0.1 only. The pages run the web client built into the binary, or with
// SFU_WEB=disk the one in the working tree (WEB_DIR).

import { spawn, spawnSync } from 'node:child_process';
import { createWriteStream, mkdirSync, readFileSync } from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

export const REPO = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
export const OUT_DIR = path.join(REPO, 'target', 'browser-screenshots');
export const LOG_DIR = path.join(REPO, 'target', 'browser-tests');

/**
 * The web client the pages run: by default the copy the server binary embeds (what users get;
 * tests/run.sh builds the binary from the working tree first). The binary embeds web/ when it is
 * built, so to try web/ edits with an older binary, SFU_WEB=disk makes the pages get the files
 * from the working tree (or from SFU_WEB_DIR) instead.
 */
export const WEB_DIR = process.env.SFU_WEB_DIR ?? path.join(REPO, 'web');
const WEB_FROM_DISK = process.env.SFU_WEB === 'disk' || process.env.SFU_WEB_DIR !== undefined;
const WEB_FILES = {
  '/': ['index.html', 'text/html; charset=utf-8'],
  '/index.html': ['index.html', 'text/html; charset=utf-8'],
  '/sfu-client.js': ['sfu-client.js', 'text/javascript; charset=utf-8'],
  '/sfu.js': ['sfu.js', 'text/javascript; charset=utf-8'],
};

/**
 * Text a page must never show, checked on every change of its DOM from the first moment
 * (window.__shownProblems, read with shownProblems()). `selector` narrows a check to some
 * elements; without it, the check reads the text the page renders (innerText).
 */
export const NEVER_SHOWN = [
  // A browser's own error text: the client must log it and say something a person can read.
  { what: 'a raw browser error', source: String.raw`Failed to execute|getParameters` },
  // The overlay leaves out figures it has not measured; "0 kbps" beside a moving picture is false.
  { what: 'a "0 kbps" stats figure', source: String.raw`(^|[^\d.])0 kbps`, selector: '.tile-stats' },
];

/** The flags every Chromium of this project runs with (notes/helper-rules.md). */
export const CHROMIUM_FLAGS = [
  '--headless',
  '--no-sandbox',
  '--disable-gpu',
  '--use-fake-device-for-media-stream',
  '--use-fake-ui-for-media-stream',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
  '--no-first-run',
  // WebRTC skips loopback candidates unless told otherwise, and loopback is all there is here.
  '--allow-loopback-in-peer-connection',
];

/** Variables for these tests, not for the server (which rejects unknown SFU_* variables). */
const TEST_ONLY_ENV = new Set(['SFU_BIN', 'SFU_WEB', 'SFU_WEB_DIR']);

/** How long the server gets to print its address before the test gives up on it. */
const SERVER_START_TIMEOUT_MS = 30_000;

/**
 * Starts `sfu serve --dev` on free ports (HTTP and media both chosen by the kernel) and resolves
 * with {url, pid, logPath, output, exited, stop}. Its output goes to target/browser-tests/`logName`.
 * `env` adds server variables or overrides the ones set here (e.g. the media addresses).
 */
export async function startServer({ env: extraEnv = {}, logName = 'server.log' } = {}) {
  const bin = process.env.SFU_BIN ?? path.join(REPO, 'target', 'debug', 'sfu');
  mkdirSync(LOG_DIR, { recursive: true });
  const logPath = path.join(LOG_DIR, logName);
  const logFile = createWriteStream(logPath);
  // The server refuses SFU_* variables that are not config keys: keep the tests' own out.
  const env = Object.fromEntries(Object.entries(process.env).filter(([key]) => !TEST_ONLY_ENV.has(key)));
  const child = spawn(bin, ['serve', '--dev'], {
    env: {
      ...env,
      NO_COLOR: '1',
      RUST_LOG: process.env.RUST_LOG ?? 'info',
      SFU_HTTP_BIND: '127.0.0.1',
      SFU_HTTP_PORT: '0',
      SFU_RTC_BIND: '127.0.0.1',
      SFU_RTC_UDP_PORT: '0',
      SFU_RTC_TCP_PORT: '0',
      SFU_TURN_UDP_PORT: '0',
      SFU_RTC_PUBLIC_IPS: '["127.0.0.1"]',
      ...extraEnv,
    },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let output = '';
  let exited = null;
  const onData = (chunk) => {
    logFile.write(chunk);
    output += chunk.toString();
  };
  child.stdout.on('data', onData);
  child.stderr.on('data', onData);
  const exit = new Promise((resolve) => child.on('exit', (code, signal) => {
    exited = { code, signal };
    resolve(exited);
  }));

  const started = Date.now();
  let port = null;
  while (port == null) {
    // Dev mode prints "web client   http://localhost:PORT/" once it listens.
    const m = /web client\s+http:\/\/[^:\s]+:(\d+)\//.exec(output);
    if (m) port = Number(m[1]);
    else if (exited) throw new Error(`the server exited (${JSON.stringify(exited)}) before listening:\n${output}`);
    else if (Date.now() - started > SERVER_START_TIMEOUT_MS) {
      child.kill('SIGKILL');
      throw new Error(`the server printed no address within ${SERVER_START_TIMEOUT_MS / 1000} s:\n${output}`);
    } else await sleep(50);
  }
  return {
    url: `http://127.0.0.1:${port}`,
    pid: child.pid,
    logPath,
    /** The server's output so far (for failure reports). */
    output: () => output,
    exited: () => exited,
    async stop() {
      if (!exited) {
        child.kill('SIGTERM');
        const timer = setTimeout(() => child.kill('SIGKILL'), 10_000);
        await exit;
        clearTimeout(timer);
      }
      logFile.end();
    },
  };
}

/**
 * Launches the machine's Chromium with CHROMIUM_FLAGS. Its fake camera runs at 20 fps unless
 * `fakeCameraFps` says otherwise (getUserMedia can lower a frame rate, never raise it).
 */
export async function launchChromium({ fakeCameraFps, extraFlags = [] } = {}) {
  const fakeDevice = '--use-fake-device-for-media-stream';
  return chromium.launch({
    executablePath: process.env.CHROMIUM ?? '/usr/bin/chromium',
    headless: true,
    args: [
      ...CHROMIUM_FLAGS.map((flag) => (flag === fakeDevice && fakeCameraFps ? `${fakeDevice}=fps=${fakeCameraFps}` : flag)),
      ...extraFlags,
    ],
  });
}

/**
 * One person in the meeting: a browser context of its own (its own storage and devices) with
 * one page on the demo client. Browser console errors and page errors are kept for reports.
 */
export async function openPerson(browser, baseUrl, { room, name, viewport = { width: 1280, height: 800 } }) {
  const context = await browser.newContext({
    // A page the test answers itself has no server address, so Chromium counts it as a public
    // site and blocks its WebSocket to the server on 127.0.0.1 (Local Network Access) unless
    // the person allowed it: allow it, as that person would.
    permissions: ['camera', 'microphone', ...(WEB_FROM_DISK ? ['local-network-access'] : [])],
    viewport,
  });
  if (WEB_FROM_DISK) await serveWebFromDisk(context, baseUrl);
  await context.addInitScript(watchShownText, NEVER_SHOWN);
  const page = await context.newPage();
  const console_ = [];
  page.on('console', (m) => {
    if (m.type() === 'error' || m.type() === 'warning') console_.push(`${name} console.${m.type()}: ${m.text()}`);
  });
  page.on('pageerror', (e) => console_.push(`${name} page error: ${e.message}`));
  await page.goto(`${baseUrl}/?${new URLSearchParams({ room, name })}`);
  return { name, page, context, console: console_ };
}

/** Answers the page's requests for the web client with the files in WEB_DIR (see there). */
async function serveWebFromDisk(context, baseUrl) {
  const origin = new URL(baseUrl).origin;
  await context.route((url) => url.origin === origin && url.pathname in WEB_FILES, (route) => {
    const [file, contentType] = WEB_FILES[new URL(route.request().url()).pathname];
    return route.fulfill({ status: 200, contentType, body: readFileSync(path.join(WEB_DIR, file)) });
  });
}

/**
 * Whether the server's built-in web client is the one in WEB_DIR; the tests use WEB_DIR's either
 * way (unless SFU_WEB=embedded), so a difference only means the binary needs building again.
 */
export async function embeddedWebIsCurrent(baseUrl) {
  for (const [urlPath, [file]] of Object.entries(WEB_FILES)) {
    const served = await (await fetch(new URL(urlPath, baseUrl))).text();
    if (served !== readFileSync(path.join(WEB_DIR, file), 'utf8')) return { current: false, file, fromDisk: WEB_FROM_DISK };
  }
  return { current: true, fromDisk: WEB_FROM_DISK };
}

/** Runs in each page before its own scripts: records any NEVER_SHOWN text it ever shows. */
function watchShownText(checks) {
  const seen = [];
  const known = new Set();
  window.__shownProblems = seen;
  const scan = () => {
    if (!document.body) return;
    for (const check of checks) {
      const re = new RegExp(check.source);
      const texts = check.selector
        ? [...document.querySelectorAll(check.selector)].map((e) => e.textContent)
        : [document.body.innerText];
      for (const text of texts) {
        const found = re.exec(text);
        if (!found) continue;
        // The words around the match: enough to recognise, short enough to read in a report.
        const excerpt = text.slice(Math.max(0, found.index - 80), found.index + 200).replace(/\s+/g, ' ');
        if (known.has(`${check.what}\n${excerpt}`)) continue;
        known.add(`${check.what}\n${excerpt}`);
        seen.push({ what: check.what, text: excerpt, at: new Date().toISOString() });
      }
    }
  };
  new MutationObserver(scan).observe(document, {
    subtree: true, childList: true, characterData: true, attributes: true, attributeFilter: ['hidden', 'class'],
  });
}

/** What `person`'s page showed that it never should have (NEVER_SHOWN): [{what, text, at}]. */
export function shownProblems(person) {
  return person.page.evaluate(() => window.__shownProblems ?? []);
}

/**
 * Hands `message` to the page's client as if the server had sent it: for situations a
 * loopback test cannot make happen (a subscriber without bandwidth, a codec it lacks), so the
 * page's handling of them can still be seen.
 */
export function serverSays(person, ...messages) {
  return person.page.evaluate(async (messages) => {
    // Each in a task of its own, as WebSocket messages come, one right after the other (a
    // MessageChannel task waits for no timer).
    const channel = new MessageChannel();
    const nextTask = () => new Promise((resolve) => {
      channel.port1.onmessage = resolve;
      channel.port2.postMessage(null);
    });
    for (const message of messages) {
      await nextTask();
      // Listeners can tell these from the server's own messages while this flag is up.
      window.__testSays = true;
      try {
        window.sfu._onMessage(JSON.stringify(message));
      } finally {
        window.__testSays = false;
      }
    }
    channel.port1.close();
  }, messages);
}

/**
 * Clicks Join and resolves with the ms from the click to the first decoded frame of any remote
 * video, measured inside the page (null if `expectRemoteVideo` is false: the first to join
 * has nobody to watch). The steps on the way (joined, first remote track, subscriber connection
 * up, first frame; ms from the click) are left in the page: read them with joinMarks().
 */
export async function joinAndTimeFirstFrame(person, { expectRemoteVideo, timeoutMs = 30_000 }) {
  const { page } = person;
  await page.evaluate(() => {
    document.querySelector('#join').addEventListener('click', () => { window.__joinClickedAt = performance.now(); }, { capture: true, once: true });
    // Where the time to the first frame goes: ms from the click to each step, the first time.
    window.__joinMarks = {};
    const mark = (what) => { window.__joinMarks[what] ??= Math.round(performance.now() - window.__joinClickedAt); };
    window.sfu.addEventListener('joined', () => mark('joined'));
    window.sfu.addEventListener('track', () => mark('first_remote_track'));
    window.sfu.addEventListener('connection_state', ({ detail }) => {
      if (detail.target === 'subscriber' && detail.state === 'connected') mark('subscriber_connected');
    });
  });
  await page.click('#join');
  await page.waitForFunction(() => window.sfuState?.joined === true, null, { timeout: timeoutMs });
  if (!expectRemoteVideo) return null;
  return page.evaluate(async (timeout) => {
    const sfu = window.sfu;
    const deadline = performance.now() + timeout;
    while (performance.now() < deadline) {
      for (const track of sfu.tracks.values()) {
        if (track.kind !== 'video' || track.participant === sfu.me?.sid) continue;
        const report = await sfu.getStatsReport(track.sid);
        let decoded = 0;
        report?.forEach((s) => {
          if (s.type === 'inbound-rtp' && s.kind === 'video') decoded += s.framesDecoded ?? 0;
        });
        if (decoded > 0) {
          window.__joinMarks.first_frame = Math.round(performance.now() - window.__joinClickedAt);
          return performance.now() - window.__joinClickedAt;
        }
      }
      await new Promise((r) => setTimeout(r, 10));
    }
    throw new Error(`no remote video frame was decoded within ${timeout / 1000} s of joining`);
  }, timeoutMs);
}

/** Saves a screenshot of `person`'s page as OUT_DIR/`label`.png, for a person to look at; resolves with its path. */
export async function screenshot(person, label) {
  mkdirSync(OUT_DIR, { recursive: true });
  const file = path.join(OUT_DIR, `${label}.png`);
  await person.page.screenshot({ path: file });
  return file;
}

/** The steps of `person`'s join (see joinAndTimeFirstFrame), ms from the click. */
export function joinMarks(person) {
  return person.page.evaluate(() => window.__joinMarks ?? {});
}

/**
 * Inbound stats of the video and audio `viewer` receives from the participant `identity`, read
 * from the tile the demo page shows for it: {video: {framesDecoded, frameWidth, frameHeight,
 * freezeCount, totalFreezesDuration, packetsReceived} | null, audio: {packetsReceived} | null}.
 */
export function receivedFrom(viewer, identity) {
  return viewer.page.evaluate(async (identity) => {
    const sfu = window.sfu;
    const tile = document.querySelector(`.tile[data-identity="${CSS.escape(identity)}"]`);
    const inbound = async (sid, kind) => {
      if (!sid) return null;
      const report = await sfu.getStatsReport(sid);
      let out = null;
      report?.forEach((s) => {
        if (s.type === 'inbound-rtp' && s.kind === kind) out = s;
      });
      return out;
    };
    const v = await inbound(tile?.dataset.videoTrack, 'video');
    const audioSid = tile && document.querySelector(`#audio-sinks audio[data-participant="${CSS.escape(tile.dataset.participant)}"]`)?.dataset.track;
    const a = await inbound(audioSid, 'audio');
    return {
      video: v && {
        framesDecoded: v.framesDecoded ?? 0,
        frameWidth: v.frameWidth ?? 0,
        frameHeight: v.frameHeight ?? 0,
        freezeCount: v.freezeCount ?? 0,
        totalFreezesDuration: v.totalFreezesDuration ?? 0,
        packetsReceived: v.packetsReceived ?? 0,
      },
      audio: a && { packetsReceived: a.packetsReceived ?? 0 },
    };
  }, identity);
}

/** The frame widths of the simulcast layers `person` sends for its camera, by rid. */
export function sentLayers(person) {
  return person.page.evaluate(async () => {
    const sfu = window.sfu;
    const cam = [...sfu.localTracks.values()].find((l) => l.source === 'camera');
    if (!cam?.sid) return {};
    const report = await sfu.getStatsReport(cam.sid);
    const out = {};
    report?.forEach((s) => {
      if (s.type === 'outbound-rtp' && s.kind === 'video') out[s.rid ?? ''] = { frameWidth: s.frameWidth ?? 0, framesEncoded: s.framesEncoded ?? 0, active: s.active };
    });
    return out;
  });
}

/**
 * A TCP proxy on 127.0.0.1 in front of the server's HTTP/WebSocket port, whose `cut()` drops every
 * connection through it at once, with no WebSocket close frame: the browser and the server see
 * the signaling socket die as on a dead network. New connections pass as before, unless `held`
 * is set: then they are dropped as they come (the network is still down).
 */
export async function startTcpProxy(targetUrl) {
  const target = new URL(targetUrl);
  const sockets = new Set();
  const control = { held: false };
  const proxy = net.createServer((client) => {
    if (control.held) {
      client.destroy();
      return;
    }
    const upstream = net.connect(Number(target.port), target.hostname);
    for (const [a, b] of [[client, upstream], [upstream, client]]) {
      sockets.add(a);
      a.on('error', () => {});
      a.on('close', () => {
        sockets.delete(a);
        b.destroy();
      });
      a.pipe(b);
    }
  });
  await new Promise((resolve) => proxy.listen(0, '127.0.0.1', resolve));
  return Object.assign(control, {
    url: `http://127.0.0.1:${proxy.address().port}`,
    /** Drops every open connection; returns how many there were (both sides counted). */
    cut() {
      const n = sockets.size;
      for (const s of sockets) s.destroy();
      return n;
    },
    close() {
      for (const s of sockets) s.destroy();
      return new Promise((resolve) => proxy.close(resolve));
    },
  });
}

/**
 * The local candidate of the pair `person`'s connection `which` ('publisher' or 'subscriber')
 * uses: {protocol, local (its type), relayProtocol, remote, remoteProtocol}, or null.
 */
export function selectedPair(person, which) {
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
    return { protocol: local?.protocol, local: local?.candidateType, relayProtocol: local?.relayProtocol, remote: `${remote?.address}:${remote?.port}`, remoteProtocol: remote?.protocol };
  }, which);
}

/**
 * `names[0]` and `names[1]` join `room` on `baseUrl` through the demo page, their client held
 * to ICE transport policy `policy`; each must decode the other's video, and go on decoding. Resolves with the two people and the selected pair of each one's connections
 * ({name: {publisher, subscriber}}), printed.
 */
export async function meetAndDecode(browser, baseUrl, { room, names, policy = 'all' }) {
  const people = [];
  for (const name of names) {
    const person = await openPerson(browser, baseUrl, { room, name });
    people.push(person);
    await person.page.evaluate((policy) => { window.sfu.options.iceTransportPolicy = policy; }, policy);
    await joinAndTimeFirstFrame(person, { expectRemoteVideo: people.length > 1, timeoutMs: 60_000 });
  }
  const [a, b] = people;
  for (const [viewer, from] of [[b, a], [a, b]]) {
    const first = await until(async () => {
      const r = await receivedFrom(viewer, from.name);
      return r.video?.framesDecoded > 0 ? r : null;
    }, { timeoutMs: 60_000, what: `${viewer.name} to decode ${from.name}` });
    // Decoding goes on: ten frames more.
    await until(async () => (await receivedFrom(viewer, from.name)).video?.framesDecoded > first.video.framesDecoded + 10,
      { timeoutMs: 30_000, what: `${viewer.name} to go on decoding ${from.name}` });
  }
  const pairs = {};
  for (const person of people) {
    pairs[person.name] = {};
    for (const which of ['publisher', 'subscriber']) {
      pairs[person.name][which] = await selectedPair(person, which);
      console.log(`${person.name} ${which}: ${JSON.stringify(pairs[person.name][which])}`);
    }
  }
  return { people, pairs };
}

/**
 * Waits until `viewer` has received `packets` more audio packets from `identity` (50 a second
 * for Opus): a clock kept by the media itself, for a test that must see something not happen
 * for a while.
 */
export async function audioPacketsLater(viewer, identity, packets) {
  const count = async () => (await receivedFrom(viewer, identity)).audio?.packetsReceived ?? 0;
  const start = await count();
  await until(async () => (await count()) >= start + packets,
    { timeoutMs: 30_000, what: `${viewer.name} to receive ${packets} more audio packets from ${identity}` });
}

/** The value of one Prometheus series (`name` or `name{labels}`) at the server's /metrics; 0 if absent. */
export async function metricValue(server, series) {
  const text = await (await fetch(`${server.url}/metrics`)).text();
  const line = text.split('\n').find((l) => l.startsWith(`${series} `));
  return line ? Number(line.split(' ').pop()) : 0;
}

/** An admin token for `server` (dev mode's fixed secret), minted once by the binary. */
let adminToken = null;
function admin() {
  if (!adminToken) {
    const bin = process.env.SFU_BIN ?? path.join(REPO, 'target', 'debug', 'sfu');
    const out = spawnSync(bin, ['token', '--dev', '--admin', '--ttl', '1h'], { encoding: 'utf8' });
    if (out.status !== 0) throw new Error(`sfu token --admin failed: ${out.stderr}`);
    adminToken = out.stdout.trim();
  }
  return adminToken;
}

/**
 * What the server's media worker forwards in `room` (the admin API's `tracks`): per track
 * {sid, participant, kind, muted, subscribers: [{participant, layer, packets}]}. The server's
 * own counters, for tests that must not take a page's word for it.
 */
async function roomTracks(server, room) {
  const res = await fetch(`${server.url}/api/rooms/${encodeURIComponent(room)}`, { headers: { authorization: `Bearer ${admin()}` } });
  if (!res.ok) throw new Error(`GET /api/rooms/${room}: HTTP ${res.status} ${await res.text()}`);
  return (await res.json()).tracks;
}

/** What the server forwards of track `trackSid` to participant `subscriberSid`: {layer, packets} or null. */
export async function forwardedTo(server, room, trackSid, subscriberSid) {
  const track = (await roomTracks(server, room)).find((t) => t.sid === trackSid);
  return track?.subscribers.find((s) => s.participant === subscriberSid) ?? null;
}

/** Prints what each page shows and said (status line, signaling socket, last console lines): for failure reports. */
export async function printPages(people) {
  for (const p of people) {
    const status = await p.page.locator('#status').textContent().catch(() => '?');
    const socket = await p.page.evaluate(() => window.sfu?.url).catch(() => '?');
    console.error(`-- ${p.name}: status "${status}", socket ${socket}`);
    for (const line of p.console.slice(-20)) console.error(`   ${line}`);
  }
}

/** Polls `check` (async, returns a truthy value when done) every `intervalMs` until `timeoutMs`. */
export async function until(check, { timeoutMs, intervalMs = 100, what }) {
  const deadline = Date.now() + timeoutMs;
  let last;
  for (;;) {
    last = await check();
    if (last) return last;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs / 1000} s waiting for ${what}`);
    await sleep(intervalMs);
  }
}

export function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}
