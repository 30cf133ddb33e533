// The Chromium quality scenario: a meeting of N headless Chromium people (fake camera and
// microphone), each publishing a simulcast camera and a microphone through the demo page's client
// (window.sfu) and receiving everyone else at quality `high`, measured for a fixed time. Owns: the scenario, the in-page sampler, the
// figures (per subscription, per publisher, the server's /metrics, CPU) and their report.
// Not a node:test file: `node --test meeting.test.mjs` does not run it.
//
// Run it in a loopback-only network namespace, as benches/quality-scenario.sh does:
//   SFU_BIN=target/release/sfu SFU_WEB=disk node tests/browser/quality.mjs \
//     --people 4 --seconds 60 [--camera 1280x720@30] [--relay 2000kbit,50ms,1%] [--json out.json]
// --camera is the captured size and frame rate (default 1280x720@30, what the client asks for by
// default); Chromium's fake camera is started at that frame rate (it runs at 20 fps otherwise).
//
// What it measures, over the window that starts once every page decodes every other's video
// and has asked for `high` (sfu.setQuality), and lasts --seconds:
//  - per receiver and subscription, from the page's stats sampled every 500 ms inside the page
//    (inbound-rtp through sfu.getStatsReport): fps, frame size, freezes per minute (freezeCount),
//    the share of samples at full size (frameWidth of the publisher's capture) and at the top
//    layer the server says it forwards (the client's last quality_changed), layer switches per
//    minute with their reasons (quality_changed events that changed the layer);
//  - per publisher (outbound-rtp per simulcast layer): PLIs per minute summed over its layers,
//    what limits its encoder (qualityLimitationDurations), and each layer's sending state;
//  - the server: deltas of its /metrics counters (mean downstream estimate from
//    sfu_bwe_estimate_bps sum/count, layer switches by reason, keyframe requests, NACKs, drops);
//  - CPU: the machine's (/proc/stat), the server's, Chromium's and this script's (/proc/<pid>/stat),
//    so a figure limited by the browsers' CPU can be told from one limited by the network;
//  - with --relay (relay.mjs), the relay's own counters per client flow and the real capacity.

import { execFileSync } from 'node:child_process';
import { readdirSync, readFileSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import { parseArgs } from 'node:util';
import {
  embeddedWebIsCurrent,
  launchChromium,
  openPerson,
  shownProblems,
  sleep,
  startServer,
  until,
} from './lib.mjs';
import { describeRelaySpec, parseRelaySpec, startRelay } from './relay.mjs';

const SAMPLE_INTERVAL_MS = 500;
/** Generous bounds for things that must happen at some point (not performance bounds). */
const JOIN_TIMEOUT_MS = 30_000;
const VIDEO_FLOWING_TIMEOUT_MS = 60_000;
/**
 * Tries at publishing a person's microphone and camera. A try fails when the server ends the
 * session while it runs (media_failed) and the client rejoins; the next try publishes what the
 * rejoin did not bring back.
 */
const PUBLISH_ATTEMPTS = 3;
/** The address the server advertises with --relay; the relay listens there. */
const RELAY_HOST = '127.0.0.2';
/**
 * With --relay this script's main thread carries the network, so it runs at this nice value
 * (set after the server and Chromium started, which keep the default): on a machine the
 * browsers keep busy, a relay waiting for the CPU would add delay and drops of its own.
 */
const RELAY_NICE = -10;
/** Simulcast rids from the lowest layer to the highest (docs/protocol.md). */
const RID_ORDER = ['q', 'h', 'f'];
/** Above this share of the machine's CPU in use, the figures say more about CPU than network. */
const CPU_BOUND_SHARE = 0.9;

const USAGE = 'usage: node tests/browser/quality.mjs [--people 2|4] [--seconds 60] [--camera WxH@FPS] ' +
  '[--relay RATE,DELAY,LOSS[,queue=MS][,burst=BYTES]] [--json out.json]';

function parseOptions() {
  const { values } = parseArgs({
    options: {
      people: { type: 'string', default: '2' },
      seconds: { type: 'string', default: '60' },
      camera: { type: 'string', default: '1280x720@30' },
      relay: { type: 'string' },
      json: { type: 'string' },
    },
  });
  const people = Number(values.people);
  const seconds = Number(values.seconds);
  const camera = /^(\d+)x(\d+)@(\d+)$/.exec(values.camera);
  if (!Number.isInteger(people) || people < 2 || !(seconds > 0) || !camera) throw new Error(USAGE);
  return {
    people,
    seconds,
    camera: { width: Number(camera[1]), height: Number(camera[2]), fps: Number(camera[3]) },
    relay: values.relay ? parseRelaySpec(values.relay) : null,
    json: values.json ?? null,
  };
}

// ---------------------------------------------------------------------- in the page

/**
 * Runs in a page once its client exists, before Join: records every quality_changed and
 * publisher_layers the client gets, and from then on samples, every `intervalMs`, the stats of
 * each remote video it receives and of its own camera into window.__quality.samples.
 */
function installRecorder(intervalMs) {
  const sfu = window.sfu;
  const rec = { qualityChanges: [], publisherLayers: [], states: [], samples: [], skipped: 0 };
  window.__quality = rec;
  sfu.addEventListener('state', ({ detail }) => rec.states.push({ t: Date.now(), state: detail.state }));
  sfu.addEventListener('quality_changed', ({ detail }) => {
    rec.qualityChanges.push({ t: Date.now(), track: detail.track, quality: detail.quality, layer: detail.layer, reason: detail.reason });
  });
  sfu.addEventListener('publisher_layers', ({ detail }) => {
    rec.publisherLayers.push({ t: Date.now(), track: detail.track, active: detail.active });
  });

  const INBOUND = ['framesDecoded', 'framesDropped', 'frameWidth', 'frameHeight', 'freezeCount', 'totalFreezesDuration',
    'pauseCount', 'bytesReceived', 'packetsReceived', 'packetsLost', 'nackCount', 'pliCount', 'firCount',
    'jitterBufferDelay', 'jitterBufferEmittedCount', 'keyFramesDecoded'];
  const OUTBOUND = ['active', 'frameWidth', 'frameHeight', 'framesEncoded', 'bytesSent', 'packetsSent', 'pliCount',
    'firCount', 'nackCount', 'targetBitrate', 'qualityLimitationReason', 'qualityLimitationDurations',
    'qualityLimitationResolutionChanges', 'keyFramesEncoded', 'retransmittedBytesSent'];
  const pick = (stats, keys) => Object.fromEntries(keys.map((k) => [k, stats[k]]));
  /** The connection's selected candidate pair: our UDP port (the relay's key), RTT, send estimate. */
  const pathOf = (report) => {
    let pair;
    report.forEach((s) => {
      if (s.type === 'transport' && s.selectedCandidatePairId) pair = report.get(s.selectedCandidatePairId);
    });
    if (!pair) report.forEach((s) => { if (s.type === 'candidate-pair' && s.nominated && s.state === 'succeeded') pair = s; });
    if (!pair) return null;
    const local = report.get(pair.localCandidateId);
    return {
      localPort: local?.port,
      localType: local?.candidateType,
      rtt: pair.currentRoundTripTime,
      availableOutgoingBitrate: pair.availableOutgoingBitrate,
    };
  };

  let busy = false;
  setInterval(async () => {
    if (busy) {
      rec.skipped += 1;
      return;
    }
    busy = true;
    try {
      const sample = { t: Date.now(), receiving: {}, sending: null, subscriberPath: null, publisherPath: null };
      for (const track of sfu.tracks.values()) {
        if (track.kind !== 'video' || track.participant === sfu.me?.sid) continue;
        const report = await sfu.getStatsReport(track.sid);
        let inbound = null;
        report?.forEach((s) => { if (s.type === 'inbound-rtp' && s.kind === 'video') inbound = s; });
        if (!inbound) continue;
        sample.receiving[track.sid] = { t: Date.now(), ...pick(inbound, INBOUND), layer: sfu.remoteLayer(track.sid)?.layer ?? null };
        sample.subscriberPath ??= pathOf(report);
      }
      const camera = [...sfu.localTracks.values()].find((l) => l.source === 'camera' && l.sid);
      const report = camera && await sfu.getStatsReport(camera.sid);
      if (report) {
        const layers = {};
        report.forEach((s) => {
          if (s.type === 'outbound-rtp' && s.kind === 'video') layers[s.rid ?? ''] = pick(s, OUTBOUND);
        });
        sample.sending = { t: Date.now(), track: camera.sid, layers };
        sample.publisherPath = pathOf(report);
      }
      rec.samples.push(sample);
    } finally {
      busy = false;
    }
  }, intervalMs);
}

/** In the page: how many remote videos have decoded a frame. */
async function remoteVideosDecoding() {
  const sfu = window.sfu;
  let decoding = 0;
  for (const track of sfu.tracks.values()) {
    if (track.kind !== 'video' || track.participant === sfu.me?.sid) continue;
    const report = await sfu.getStatsReport(track.sid);
    let frames = 0;
    report?.forEach((s) => { if (s.type === 'inbound-rtp' && s.kind === 'video') frames = s.framesDecoded ?? 0; });
    if (frames > 0) decoding += 1;
  }
  return decoding;
}

/**
 * In the page: asks for `high` on every remote video, through the client and the tile's menu;
 * resolves with when it started asking.
 */
async function askHighEverywhere() {
  const sfu = window.sfu;
  const askedAt = Date.now();
  for (const track of sfu.tracks.values()) {
    if (track.kind !== 'video' || track.participant === sfu.me?.sid) continue;
    await sfu.setQuality(track.sid, 'high');
    // The page's notes compare what arrives with its menu: keep the menu in step.
    const select = document.querySelector(`.tile[data-video-track="${CSS.escape(track.sid)}"] select.quality`);
    if (select) select.value = 'high';
  }
  return askedAt;
}

/** In the page: what was recorded, and who publishes each track seen. */
function collectRecording() {
  const sfu = window.sfu;
  const identityOf = (participantSid) =>
    (participantSid === sfu.me?.sid ? sfu.me : sfu.participants.get(participantSid))?.identity ?? participantSid;
  const tracks = {};
  for (const track of sfu.tracks.values()) {
    tracks[track.sid] = { publisher: identityOf(track.participant), kind: track.kind, layers: track.layers };
  }
  const { qualityChanges, publisherLayers, states, samples, skipped } = window.__quality;
  return { qualityChanges, publisherLayers, states, samples, skipped, tracks };
}

// ---------------------------------------------------------------------- the meeting

/** In the page: publishes the microphone and the camera at `camera` unless they are already. */
async function publishMedia({ width, height, fps }) {
  const sfu = window.sfu;
  const local = (source) => [...sfu.localTracks.values()].find((l) => l.source === source);
  if (!local('microphone')) await sfu.publishMicrophone();
  if (!local('camera')) {
    await sfu.publishCamera({
      simulcast: true,
      constraints: { width: { exact: width }, height: { exact: height }, frameRate: { exact: fps } },
    });
  }
  const settings = local('camera').track.getSettings();
  return { width: settings.width, height: settings.height, frameRate: settings.frameRate };
}

/**
 * Opens `name`'s page, joins, and publishes its microphone and its camera at `camera`. What went
 * wrong on the way and was retried goes to `person.setupProblems`.
 */
async function joinPerson(browser, serverUrl, room, name, camera) {
  const person = await openPerson(browser, serverUrl, { room, name });
  person.setupProblems = [];
  await person.page.evaluate(installRecorder, SAMPLE_INTERVAL_MS);
  // The page would publish its default camera and microphone on Join; this scenario publishes
  // them itself, the camera at its own size.
  await person.page.uncheck('#with-camera');
  await person.page.uncheck('#with-mic');
  await person.page.click('#join');
  for (let attempt = 1; ; attempt++) {
    await person.page.waitForFunction(() => window.sfu.state === 'joined', null, { timeout: JOIN_TIMEOUT_MS });
    try {
      person.camera = await person.page.evaluate(publishMedia, camera);
      return person;
    } catch (err) {
      if (attempt >= PUBLISH_ATTEMPTS) throw err;
      person.setupProblems.push(`${name}: publishing failed (${err.message.split('\n')[0]}); tried again after the client rejoined`);
    }
  }
}

/** Media worker UDP ports from the server's log ("media worker N listening addr=IP:PORT"). */
function mediaPorts(serverOutput) {
  const ports = [...serverOutput.matchAll(/media worker \d+ listening addr=[\d.]+:(\d+)/g)].map((m) => Number(m[1]));
  if (!ports.length) throw new Error('the server logged no "media worker N listening" line (the relay needs the info log of sfu::rtc::engine)');
  return ports;
}

// ---------------------------------------------------------------------- server and CPU

async function scrapeMetrics(serverUrl) {
  const text = await (await fetch(`${serverUrl}/metrics`)).text();
  const series = new Map();
  for (const line of text.split('\n')) {
    const m = /^([a-zA-Z_:][\w:]*)(\{[^}]*\})?\s+(\S+)/.exec(line);
    if (m) series.set(m[1] + (m[2] ?? ''), Number(m[3]));
  }
  return series;
}

/** after - before for every counter-like series (…_total, …_sum, …_count) that moved. */
function metricDeltas(before, after) {
  const out = {};
  for (const [key, value] of after) {
    const name = key.replace(/\{.*/, '');
    if (!/_(total|sum|count)$/.test(name)) continue;
    const delta = value - (before.get(key) ?? 0);
    if (delta !== 0) out[key] = delta;
  }
  return out;
}

/** {labelValue: delta} of one labelled counter, e.g. sfu_layer_switches_total by reason. */
function byLabel(deltas, name) {
  const out = {};
  for (const [key, value] of Object.entries(deltas)) {
    const m = new RegExp(`^${name}\\{\\w+="([^"]*)"\\}$`).exec(key);
    if (m) out[m[1]] = value;
  }
  return out;
}

function summariseServer(before, after, seconds) {
  const deltas = metricDeltas(before, after);
  const estimates = deltas.sfu_bwe_estimate_bps_count ?? 0;
  const videoSubscriptions = {};
  for (const [key, value] of after) {
    const m = /^sfu_video_subscriptions\{layer="([^"]*)"\}$/.exec(key);
    if (m) videoSubscriptions[m[1]] = value;
  }
  return {
    bweMeanBps: estimates ? deltas.sfu_bwe_estimate_bps_sum / estimates : null,
    bweEstimates: estimates,
    layerSwitches: byLabel(deltas, 'sfu_layer_switches_total'),
    keyframeRequestsReceived: byLabel(deltas, 'sfu_keyframe_requests_received_total'),
    keyframeRequestsSent: byLabel(deltas, 'sfu_keyframe_requests_sent_total'),
    nacksReceived: deltas.sfu_nacks_received_total ?? 0,
    nacksSent: deltas.sfu_nacks_sent_total ?? 0,
    retransmissions: deltas.sfu_retransmissions_total ?? 0,
    packetsDropped: byLabel(deltas, 'sfu_rtp_packets_dropped_total'),
    upstreamPacketsLost: byLabel(deltas, 'sfu_rtp_packets_lost_total'),
    sentKbps: Object.fromEntries(Object.entries(byLabel(deltas, 'sfu_rtp_bytes_sent_total')).map(([kind, bytes]) => [kind, (bytes * 8) / seconds / 1e3])),
    cpuSecondsOwnMetric: deltas.sfu_process_cpu_seconds_total ?? 0,
    videoSubscriptionsAtEnd: videoSubscriptions,
    deltas,
  };
}

const CLOCK_TICKS = Number(execFileSync('getconf', ['CLK_TCK']).toString().trim());

/** The machine's CPU time (busy and total, in ticks of all cores) and every process's. */
function cpuSnapshot() {
  const fields = readFileSync('/proc/stat', 'utf8').split('\n')[0].trim().split(/\s+/).slice(1).map(Number);
  // user nice system idle iowait irq softirq steal ...: idle and iowait are the idle time.
  const total = fields.slice(0, 8).reduce((a, b) => a + b, 0);
  const idle = fields[3] + fields[4];
  const processes = new Map();
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const stat = readFileSync(`/proc/${entry}/stat`, 'utf8');
      // Fields after "(comm)": state ppid ... utime (14th field) stime (15th).
      const rest = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
      processes.set(Number(entry), { ppid: Number(rest[1]), ticks: Number(rest[11]) + Number(rest[12]) });
    } catch {
      // The process ended while the list was read.
    }
  }
  return { at: performance.now(), busy: total - idle, total, processes, self: process.cpuUsage() };
}

/** `root` and every process under it, in `processes`. */
function processTree(processes, root) {
  const tree = new Set([root]);
  for (let grew = true; grew;) {
    grew = false;
    for (const [pid, { ppid }] of processes) {
      if (!tree.has(pid) && tree.has(ppid)) {
        tree.add(pid);
        grew = true;
      }
    }
  }
  return tree;
}

/**
 * CPU use between two snapshots in cores (1 = one core busy): the machine's, the server's,
 * Chromium's (every process under this script but the server), this script's and the rest.
 */
function cpuUse(before, after, serverPid) {
  const seconds = (after.at - before.at) / 1000;
  const cores = os.cpus().length;
  const ticksOf = (pids) => {
    let ticks = 0;
    for (const pid of pids) ticks += after.processes.get(pid).ticks - (before.processes.get(pid)?.ticks ?? 0);
    return ticks / CLOCK_TICKS / seconds;
  };
  const server = processTree(after.processes, serverPid);
  const ours = processTree(after.processes, process.pid);
  const chromium = [...ours].filter((pid) => pid !== process.pid && !server.has(pid));
  const machine = ((after.busy - before.busy) / (after.total - before.total)) * cores;
  const self = (after.self.user - before.self.user + after.self.system - before.self.system) / 1e6 / seconds;
  const serverCores = ticksOf(server);
  const chromiumCores = ticksOf(chromium);
  return {
    cores,
    machine,
    server: serverCores,
    chromium: chromiumCores,
    script: self,
    other: Math.max(0, machine - serverCores - chromiumCores - self),
    cpuBound: machine / cores > CPU_BOUND_SHARE,
  };
}

// ---------------------------------------------------------------------- figures

/** The samples of one series taken within [from, to]. */
const within = (series, from, to) => series.filter((s) => s.t >= from && s.t <= to);

/** Growth of `key` from the first to the last of `series` (0 if the browser lacks it). */
const growth = (series, key) => (series.at(-1)?.[key] ?? 0) - (series[0]?.[key] ?? 0);

/** {value: share} of the values of `series`, most common first. */
function shares(values) {
  const counts = new Map();
  for (const v of values) counts.set(v, (counts.get(v) ?? 0) + 1);
  return Object.fromEntries([...counts].sort((a, b) => b[1] - a[1]).map(([v, n]) => [v, n / values.length]));
}

/** The highest simulcast rid of a track (`""` without simulcast). */
function topLayer(layers) {
  if (!layers?.length) return '';
  return [...layers].sort((a, b) => RID_ORDER.indexOf(a) - RID_ORDER.indexOf(b)).at(-1);
}

function subscriptionFigures(receiver, recording, trackSid, publisher, from, to) {
  const series = within(recording.samples.map((s) => s.receiving[trackSid]).filter(Boolean), from, to);
  const seconds = series.length > 1 ? (series.at(-1).t - series[0].t) / 1000 : 0;
  const perMinute = (n) => (seconds ? (n / seconds) * 60 : null);
  const top = topLayer(recording.tracks[trackSid]?.layers);
  const changes = recording.qualityChanges.filter((c) => c.track === trackSid).sort((a, b) => a.t - b.t);
  let layer = changes.filter((c) => c.t < from).at(-1)?.layer ?? null;
  const switchReasons = {};
  let switches = 0;
  for (const change of changes.filter((c) => c.t >= from && c.t <= to)) {
    if (change.layer === layer) continue;
    layer = change.layer;
    switches += 1;
    switchReasons[change.reason] = (switchReasons[change.reason] ?? 0) + 1;
  }
  const lost = growth(series, 'packetsLost');
  const received = growth(series, 'packetsReceived');
  const emitted = growth(series, 'jitterBufferEmittedCount');
  return {
    receiver: receiver.name,
    publisher: publisher.name,
    track: trackSid,
    samples: series.length,
    seconds,
    fps: seconds ? growth(series, 'framesDecoded') / seconds : null,
    size: Object.keys(shares(series.map((s) => `${s.frameWidth ?? 0}x${s.frameHeight ?? 0}`)))[0] ?? null,
    fullSizeShare: series.length ? series.filter((s) => s.frameWidth >= publisher.camera.width).length / series.length : null,
    topLayer: top,
    topLayerShare: series.length ? series.filter((s) => s.layer === top).length / series.length : null,
    layerShares: shares(series.map((s) => s.layer ?? 'unknown')),
    freezesPerMinute: perMinute(growth(series, 'freezeCount')),
    frozenSeconds: growth(series, 'totalFreezesDuration'),
    pausesPerMinute: perMinute(growth(series, 'pauseCount')),
    layerSwitchesPerMinute: perMinute(switches),
    layerSwitchReasons: switchReasons,
    kbps: seconds ? (growth(series, 'bytesReceived') * 8) / seconds / 1e3 : null,
    lossShare: lost + received > 0 ? lost / (lost + received) : null,
    plisSentPerMinute: perMinute(growth(series, 'pliCount')),
    nacksSentPerMinute: perMinute(growth(series, 'nackCount')),
    framesDropped: growth(series, 'framesDropped'),
    jitterBufferMs: emitted > 0 ? (growth(series, 'jitterBufferDelay') / emitted) * 1000 : null,
  };
}

function publisherFigures(person, recording, from, to) {
  // The camera's sid changes if the client rejoined: every sid it had counts.
  const sending = within(recording.samples.map((s) => s.sending).filter(Boolean), from, to);
  const cameraSids = new Set(sending.map((s) => s.track));
  const seconds = sending.length > 1 ? (sending.at(-1).t - sending[0].t) / 1000 : 0;
  const rids = [...new Set(sending.flatMap((s) => Object.keys(s.layers)))]
    .sort((a, b) => RID_ORDER.indexOf(a) - RID_ORDER.indexOf(b));
  const layers = {};
  let plis = 0;
  let nacks = 0;
  for (const rid of rids) {
    const series = sending.map((s) => ({ t: s.t, ...s.layers[rid] })).filter((s) => s.framesEncoded != null);
    const last = series.at(-1) ?? {};
    const limitBefore = series[0]?.qualityLimitationDurations ?? {};
    const limitAfter = last.qualityLimitationDurations ?? {};
    const limitTotal = Object.keys(limitAfter).reduce((sum, k) => sum + limitAfter[k] - (limitBefore[k] ?? 0), 0);
    plis += growth(series, 'pliCount');
    nacks += growth(series, 'nackCount');
    layers[rid] = {
      activeShare: series.length ? series.filter((s) => s.active !== false).length / series.length : null,
      fps: seconds ? growth(series, 'framesEncoded') / seconds : null,
      size: last.frameWidth ? `${last.frameWidth}x${last.frameHeight}` : null,
      kbps: seconds ? (growth(series, 'bytesSent') * 8) / seconds / 1e3 : null,
      targetKbps: last.targetBitrate != null ? last.targetBitrate / 1e3 : null,
      plis: growth(series, 'pliCount'),
      keyFrames: growth(series, 'keyFramesEncoded'),
      qualityLimitationReason: last.qualityLimitationReason ?? null,
      qualityLimitationShares: limitTotal > 0
        ? Object.fromEntries(Object.keys(limitAfter).map((k) => [k, (limitAfter[k] - (limitBefore[k] ?? 0)) / limitTotal]).filter(([, v]) => v > 0))
        : {},
      resolutionChanges: growth(series, 'qualityLimitationResolutionChanges'),
    };
  }
  const estimates = within(recording.samples.filter((s) => s.publisherPath?.availableOutgoingBitrate != null), from, to)
    .map((s) => s.publisherPath.availableOutgoingBitrate);
  return {
    publisher: person.name,
    tracks: [...cameraSids],
    captured: `${person.camera.width}x${person.camera.height}@${person.camera.frameRate}`,
    plisPerMinute: seconds ? (plis / seconds) * 60 : null,
    nacksPerMinute: seconds ? (nacks / seconds) * 60 : null,
    dynacastChanges: recording.publisherLayers.filter((e) => cameraSids.has(e.track) && e.t >= from && e.t <= to).length,
    rejoins: recording.states.filter((e) => e.state === 'reconnecting' && e.t >= from && e.t <= to).length,
    availableOutgoingKbps: estimates.length ? estimates.reduce((a, b) => a + b, 0) / estimates.length / 1e3 : null,
    layers,
  };
}

/**
 * The relay's counters over the window, per client flow, named by the page whose selected
 * candidate pair has the flow's port as its local port: the client's own (host candidate) or
 * the relay's toward the server (the peer-reflexive candidate the client learns from the server).
 */
function relayFigures(spec, before, after, people, recordings, seconds) {
  const owners = new Map();
  people.forEach((person, i) => {
    for (const sample of recordings[i].samples) {
      if (sample.subscriberPath?.localPort) owners.set(sample.subscriberPath.localPort, `${person.name} subscriber`);
      if (sample.publisherPath?.localPort) owners.set(sample.publisherPath.localPort, `${person.name} publisher`);
    }
  });
  const start = new Map(before.map((f) => [`${f.port} ${f.client}`, f]));
  const minus = (a, b = {}) => Object.fromEntries(Object.entries(a).map(([k, v]) => [k, k.endsWith('MaxMs') ? v : v - (b[k] ?? 0)]));
  const flows = after.map((f) => {
    const was = start.get(`${f.port} ${f.client}`);
    const down = minus(f.down, was?.down);
    const up = minus(f.up, was?.up);
    return {
      client: f.client,
      owner: owners.get(Number(f.client.split(':')[1])) ?? owners.get(f.relayPort) ?? 'unknown',
      capacityKbps: spec.rateBps / 1e3,
      offeredKbps: (down.bytes * 8) / seconds / 1e3,
      deliveredKbps: (down.deliveredBytes * 8) / seconds / 1e3,
      down,
      up,
      meanQueueWaitMs: down.queuedPackets ? down.queueWaitSumMs / down.queuedPackets : 0,
    };
  }).sort((a, b) => a.owner.localeCompare(b.owner));
  return { spec, flows };
}

// ---------------------------------------------------------------------- report

const fixed = (v, digits = 1) => (v == null || Number.isNaN(v) ? '-' : v.toFixed(digits));
const percent = (v) => (v == null ? '-' : `${Math.round(v * 100)}`);
const listed = (obj, format = (v) => v) => Object.entries(obj).map(([k, v]) => `${k || '""'} ${format(v)}`).join(', ') || '-';

function table(header, rows) {
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => String(r[i]).length)));
  const line = (cells) => cells.map((c, i) => String(c).padEnd(widths[i])).join('  ').trimEnd();
  return [line(header), ...rows.map(line)].join('\n');
}

function printReport(report) {
  const { config, subscriptions, publishers, server, cpu, relay } = report;
  console.log(`\n== quality scenario: ${config.people} people, ${fixed(report.windowSeconds)} s measured, camera ${config.camera}, ` +
    `${relay ? `relay: ${describeRelaySpec(relay.spec)}` : 'no relay (loopback)'}`);
  console.log(`   Chromium ${config.chromium}, web client ${config.webClient}, setup (joins to every video decoding) ${fixed(report.setupSeconds)} s`);

  console.log('\n== subscriptions (receiver <- publisher)');
  console.log(table(
    ['receiver', 'publisher', 'fps', 'size', 'full%', 'top%', 'layers', 'freezes/min', 'frozen s', 'switches/min', 'switch reasons', 'kbps', 'loss%', 'PLI sent/min', 'jb ms', 'samples'],
    subscriptions.map((s) => [
      s.receiver, s.publisher, fixed(s.fps), s.size ?? '-', percent(s.fullSizeShare), percent(s.topLayerShare),
      listed(s.layerShares, (v) => `${Math.round(v * 100)}%`), fixed(s.freezesPerMinute), fixed(s.frozenSeconds),
      fixed(s.layerSwitchesPerMinute), listed(s.layerSwitchReasons), fixed(s.kbps, 0), fixed(s.lossShare == null ? null : s.lossShare * 100, 2),
      fixed(s.plisSentPerMinute), fixed(s.jitterBufferMs, 0), s.samples,
    ]),
  ));

  console.log('\n== publishers (outbound-rtp per layer)');
  console.log(table(
    ['publisher', 'captured', 'rejoins', 'PLI/min', 'NACK/min', 'dynacast', 'send est kbps', 'limited by (top layer, share of time)', 'layers: active% fps size kbps (target)'],
    publishers.map((p) => {
      const top = p.layers[topLayer(Object.keys(p.layers))] ?? {};
      return [
        p.publisher, p.captured, p.rejoins, fixed(p.plisPerMinute), fixed(p.nacksPerMinute), p.dynacastChanges, fixed(p.availableOutgoingKbps, 0),
        listed(top.qualityLimitationShares ?? {}, (v) => `${Math.round(v * 100)}%`),
        Object.entries(p.layers).map(([rid, l]) => `${rid} ${percent(l.activeShare)}% ${fixed(l.fps, 0)}fps ${l.size ?? '-'} ${fixed(l.kbps, 0)} (${fixed(l.targetKbps, 0)})`).join(' | '),
      ];
    }),
  ));

  console.log('\n== server (/metrics, deltas over the window)');
  console.log(`downstream estimate: mean ${server.bweMeanBps == null ? '-' : `${fixed(server.bweMeanBps / 1e6, 2)} Mbit/s`} over ${server.bweEstimates} estimates` +
    (relay ? ` (relay capacity per client ${fixed(relay.spec.rateBps / 1e6, 2)} Mbit/s)` : ''));
  console.log(`layer switches: ${listed(server.layerSwitches)}; video subscriptions by layer at the end: ${listed(server.videoSubscriptionsAtEnd)}`);
  console.log(`keyframe requests: from subscribers ${listed(server.keyframeRequestsReceived)}; to publishers ${listed(server.keyframeRequestsSent)}`);
  console.log(`NACKs: from subscribers ${server.nacksReceived}, to publishers ${server.nacksSent}; retransmissions ${server.retransmissions}; ` +
    `upstream lost ${listed(server.upstreamPacketsLost)}; not forwarded ${listed(server.packetsDropped)}`);
  console.log(`forwarded: ${listed(server.sentKbps, (v) => `${fixed(v, 0)} kbit/s`)}`);

  console.log(`\n== CPU over the window, in cores (${cpu.cores} cores)`);
  console.log(`machine ${fixed(cpu.machine, 2)}: server ${fixed(cpu.server, 2)} (its own metric ${fixed(server.cpuSecondsOwnMetric / report.windowSeconds, 2)}), ` +
    `Chromium ${fixed(cpu.chromium, 2)}, this script ${fixed(cpu.script, 2)}, other processes ${fixed(cpu.other, 2)}`);
  if (cpu.cpuBound) console.log(`!! the machine was over ${CPU_BOUND_SHARE * 100}% busy: these figures are limited by CPU, not by the network`);

  if (relay) {
    console.log('\n== relay (per client flow, over the window)');
    console.log(table(
      ['flow', 'client', 'capacity kbps', 'offered kbps', 'delivered kbps', 'dropped by rate', 'dropped by loss (down/up)', 'queue wait mean/max ms', 'timer late max ms'],
      relay.flows.map((f) => [
        f.owner, f.client, fixed(f.capacityKbps, 0), fixed(f.offeredKbps, 0), fixed(f.deliveredKbps, 0), f.down.droppedByRate,
        `${f.down.droppedByLoss}/${f.up.droppedByLoss}`, `${fixed(f.meanQueueWaitMs)}/${fixed(f.down.queueWaitMaxMs)}`, fixed(f.down.timerLateMaxMs),
      ]),
    ));
  }

  if (report.problems.length) {
    console.log(`\n== what the pages reported (${report.problems.length} lines; all in the JSON)`);
    for (const line of report.problems.slice(0, 20)) console.log(line);
  }
}

// ---------------------------------------------------------------------- main

async function main() {
  const options = parseOptions();
  const room = `quality-${process.pid}`;
  const serverEnv = options.relay ? { SFU_RTC_BIND: '127.0.0.1', SFU_RTC_PUBLIC_IPS: JSON.stringify([RELAY_HOST]) } : {};
  const server = await startServer({ env: serverEnv, logName: 'quality-server.log' });
  let browser;
  let relay;
  const people = [];
  try {
    if (options.relay) relay = await startRelay({ ports: mediaPorts(server.output()), spec: options.relay, listenHost: RELAY_HOST });
    browser = await launchChromium({ fakeCameraFps: options.camera.fps });
    if (relay) {
      try {
        // Linux applies this to the calling thread only: the event loop, where the relay runs.
        os.setPriority(RELAY_NICE);
      } catch (err) {
        console.warn(`note: could not raise the relay's priority (${err.message}); its timing suffers on a busy machine`);
      }
    }
    const web = await embeddedWebIsCurrent(server.url);
    if (!web.current && !web.fromDisk) console.warn(`note: the server's built-in ${web.file} differs from web/; SFU_WEB=disk serves web/ from the tree`);
    console.log(`server ${server.url} (pid ${server.pid}), Chromium ${browser.version()}, room ${room}`);

    const joinStart = Date.now();
    for (let i = 1; i <= options.people; i++) {
      people.push(await joinPerson(browser, server.url, room, `p${i}`, options.camera));
    }
    await until(async () => {
      const counts = await Promise.all(people.map((p) => p.page.evaluate(remoteVideosDecoding)));
      return counts.every((n) => n >= options.people - 1);
    }, { timeoutMs: VIDEO_FLOWING_TIMEOUT_MS, intervalMs: 250, what: 'every page to decode every other person\'s video' });
    const highAskedAt = Math.min(...await Promise.all(people.map((p) => p.page.evaluate(askHighEverywhere))));
    const setupSeconds = (Date.now() - joinStart) / 1000;

    console.log(`measuring ${options.seconds} s (setup took ${setupSeconds.toFixed(1)} s)`);
    const metricsBefore = await scrapeMetrics(server.url);
    const relayBefore = relay?.counters();
    relay?.resetMaxima();
    const cpuBefore = cpuSnapshot();
    const from = Date.now();
    await sleep(options.seconds * 1000);
    const to = Date.now();
    const cpuAfter = cpuSnapshot();
    const relayAfter = relay?.counters();
    const metricsAfter = await scrapeMetrics(server.url);
    const windowSeconds = (to - from) / 1000;

    const recordings = await Promise.all(people.map((p) => p.page.evaluate(collectRecording)));
    const byName = new Map(people.map((p) => [p.name, p]));
    const subscriptions = [];
    people.forEach((receiver, i) => {
      for (const [sid, track] of Object.entries(recordings[i].tracks)) {
        if (track.kind !== 'video' || track.publisher === receiver.name) continue;
        subscriptions.push(subscriptionFigures(receiver, recordings[i], sid, byName.get(track.publisher), from, to));
      }
    });
    const problems = [];
    for (const person of people) {
      problems.push(...person.setupProblems, ...person.console);
      for (const shown of await shownProblems(person)) problems.push(`${person.name} page showed ${shown.what}: ${shown.text}`);
    }
    const report = {
      config: {
        people: options.people,
        seconds: options.seconds,
        camera: `${options.camera.width}x${options.camera.height}@${options.camera.fps}`,
        chromium: browser.version(),
        webClient: web.fromDisk ? 'from the working tree' : 'built into the server',
        server: process.env.SFU_BIN ?? 'target/debug/sfu',
        sampleIntervalMs: SAMPLE_INTERVAL_MS,
      },
      setupSeconds,
      windowSeconds,
      /** When the first page asked for `high`, in seconds from the window's start (negative: before it). */
      highAskedAt: (highAskedAt - from) / 1000,
      subscriptions,
      publishers: people.map((p, i) => publisherFigures(p, recordings[i], from, to)),
      server: summariseServer(metricsBefore, metricsAfter, windowSeconds),
      cpu: cpuUse(cpuBefore, cpuAfter, server.pid),
      relay: relay ? relayFigures(options.relay, relayBefore, relayAfter, people, recordings, windowSeconds) : null,
      samplesSkipped: Object.fromEntries(people.map((p, i) => [p.name, recordings[i].skipped])),
      /** Each page's last selected candidate pairs (local port and type, RTT, send estimate). */
      paths: Object.fromEntries(people.map((p, i) => {
        const last = recordings[i].samples.at(-1);
        return [p.name, { subscriber: last?.subscriberPath ?? null, publisher: last?.publisherPath ?? null }];
      })),
      sessionStates: Object.fromEntries(people.map((p, i) => [p.name, recordings[i].states.map((e) => ({ ...e, t: (e.t - from) / 1000 }))])),
      qualityChanges: Object.fromEntries(people.map((p, i) => [p.name, recordings[i].qualityChanges.map((c) => ({ ...c, t: (c.t - from) / 1000 }))])),
      problems,
    };
    printReport(report);
    if (options.json) {
      writeFileSync(options.json, `${JSON.stringify(report, null, 2)}\n`);
      console.log(`\nJSON: ${options.json}`);
    }
  } catch (err) {
    for (const person of people) for (const line of person.console.slice(-10)) console.error(line);
    console.error(`-- server log (last lines; all in ${server.logPath}):\n${server.output().split('\n').slice(-30).join('\n')}`);
    throw err;
  } finally {
    for (const person of people) await person.context.close().catch(() => {});
    await browser?.close();
    relay?.close();
    await server.stop();
  }
}

main().catch((err) => {
  console.error(err.message);
  process.exitCode = 1;
});
