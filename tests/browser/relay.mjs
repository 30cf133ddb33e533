// A UDP relay that stands in for a bad network between the browsers and the server's media
// ports, for the quality scenario (quality.mjs --relay; benches/quality-scenario.sh). Owns: the
// relay spec syntax, the per-client downstream rate limit, delay, random loss and their counters.
//
// How it is put in the path (quality.mjs does this): the server binds its media sockets on
// 127.0.0.1 and advertises 127.0.0.2 (SFU_RTC_BIND=127.0.0.1, SFU_RTC_PUBLIC_IPS=["127.0.0.2"]).
// The relay listens on 127.0.0.2 at each media worker's port. For every client address that
// sends to it (one per browser peer connection), it opens a socket of its own on 127.0.0.1:0
// toward 127.0.0.1:<same port>, so the server sees one distinct address per client.
//
// Per client, in both directions: a one-way delay, random loss, optionally loss in bursts and
// jitter (each datagram held a further random 0..jitter ms, so some overtake others; with
// `inorder`, none overtakes: a queue whose wait varies). Server -> client only: a
// token bucket at the given rate (a burst of `burst` bytes passes at once) feeding a FIFO queue
// that holds at most `queue` ms of traffic at that rate; a packet that finds the queue full is
// dropped ("dropped by rate"). So the link behaves like a bottleneck router with a short buffer:
// queueing delay first, then loss. Client -> server has no rate limit.
//
// Spec: RATE,DELAY,LOSS[,queue=MS][,burst=BYTES][,bursts=P%xN][,jitter=MS][,inorder][,only=up|down],
// e.g. `2000kbit,50ms,1%`,
// `1.5mbit,20ms,0%,queue=100ms,burst=20000` or issue 13's `100mbit,10ms,5%,bursts=2%x5,jitter=30ms`
// (bursts=2%x5: a further 2% of datagrams lost in runs of 5, a run starting with chance 2%/5;
// only=down: loss and jitter toward the clients only, so publishers' media arrives whole and
// subscribers' is lossy; only=up: toward the server only).

import dgram from 'node:dgram';
import { performance } from 'node:perf_hooks';

/** Bytes a token bucket lets through at once: about one video frame of a 2 Mbit/s stream. */
const DEFAULT_BURST_BYTES = 12_000;
/** How much traffic, in ms at the rate, the downstream queue holds before it drops. */
const DEFAULT_QUEUE_MS = 50;
/** A bucket smaller than the largest datagram would never let that datagram through. */
const MIN_BURST_BYTES = 1_500;

/** Parses a relay spec (see the top of this file) into {rateBps, delayMs, loss, queueMs, burstBytes}. */
export function parseRelaySpec(text) {
  const [rate, delay, loss, ...options] = text.split(',').map((s) => s.trim());
  const rateMatch = /^(\d+(?:\.\d+)?)(kbit|mbit)$/i.exec(rate ?? '');
  const delayMatch = /^(\d+(?:\.\d+)?)ms$/i.exec(delay ?? '');
  const lossMatch = /^(\d+(?:\.\d+)?)%$/.exec(loss ?? '');
  if (!rateMatch || !delayMatch || !lossMatch) {
    throw new Error(`bad relay spec "${text}": expected RATE,DELAY,LOSS such as 2000kbit,50ms,1%`);
  }
  const spec = {
    rateBps: Number(rateMatch[1]) * (rateMatch[2].toLowerCase() === 'mbit' ? 1e6 : 1e3),
    delayMs: Number(delayMatch[1]),
    loss: Number(lossMatch[1]) / 100,
    queueMs: DEFAULT_QUEUE_MS,
    burstBytes: DEFAULT_BURST_BYTES,
    burstLoss: 0,
    burstLength: 0,
    jitterMs: 0,
    inOrder: false,
    only: null,
  };
  for (const option of options) {
    const queue = /^queue=(\d+(?:\.\d+)?)ms$/i.exec(option);
    const burst = /^burst=(\d+)$/i.exec(option);
    const bursts = /^bursts=(\d+(?:\.\d+)?)%x(\d+)$/i.exec(option);
    const jitter = /^jitter=(\d+(?:\.\d+)?)ms$/i.exec(option);
    if (queue) spec.queueMs = Number(queue[1]);
    else if (burst) spec.burstBytes = Number(burst[1]);
    else if (bursts && Number(bursts[2]) > 0) {
      spec.burstLoss = Number(bursts[1]) / 100;
      spec.burstLength = Number(bursts[2]);
    } else if (jitter) spec.jitterMs = Number(jitter[1]);
    else if (option === 'inorder') spec.inOrder = true;
    else if (option === 'only=up' || option === 'only=down') spec.only = option.slice(5);
    else throw new Error(`bad relay option "${option}": expected queue=MS, burst=BYTES, bursts=P%xN, jitter=MS, inorder or only=up|down`);
  }
  if (spec.rateBps <= 0) throw new Error(`relay rate must be above 0 (${text})`);
  if (spec.loss >= 1) throw new Error(`relay loss must be below 100% (${text})`);
  if (spec.burstBytes < MIN_BURST_BYTES) throw new Error(`relay burst must be at least ${MIN_BURST_BYTES} bytes (${text})`);
  return spec;
}

/** The spec as people write it, for reports. */
export function describeRelaySpec(spec) {
  const bursts = spec.burstLength ? `, ${spec.burstLoss * 100}% more in bursts of ${spec.burstLength}` : '';
  const jitter = spec.jitterMs ? `, up to ${spec.jitterMs} ms jitter${spec.inOrder ? ' in order' : ' (reordering)'}` : '';
  return `${spec.rateBps / 1e3} kbit/s down per client (burst ${spec.burstBytes} B, queue ${spec.queueMs} ms), ` +
    `${spec.delayMs} ms each way, ${spec.loss * 100}% loss ${spec.only ? `${spec.only} only` : 'each way'}${bursts}${jitter}`;
}

/**
 * Holds every datagram for `delayMs`, then hands it to `deliver` in arrival order; one timer
 * for the head of the line rather than one per datagram. With jitter, each datagram is held a
 * further random 0..jitterMs on a timer of its own (so some overtake others), or with `inOrder`
 * at least until the one before it left (a queue whose wait varies: nothing overtakes).
 */
class DelayLine {
  constructor(delayMs, deliver, jitterMs = 0, inOrder = false) {
    this.delayMs = delayMs;
    this.jitterMs = jitterMs;
    this.inOrder = inOrder;
    this.deliver = deliver;
    this.queue = [];
    this.timer = null;
  }

  push(datagram) {
    if (this.jitterMs > 0 && this.inOrder) {
      const last = this.queue.length ? this.queue[this.queue.length - 1].due : 0;
      this.queue.push({ due: Math.max(last, performance.now() + this.delayMs + Math.random() * this.jitterMs), datagram });
      if (!this.timer) this.schedule();
      return;
    }
    if (this.jitterMs > 0) {
      setTimeout(() => this.deliver(datagram), this.delayMs + Math.random() * this.jitterMs);
      return;
    }
    if (this.delayMs === 0) {
      this.deliver(datagram);
      return;
    }
    this.queue.push({ due: performance.now() + this.delayMs, datagram });
    if (!this.timer) this.schedule();
  }

  schedule() {
    const wait = Math.max(0, this.queue[0].due - performance.now());
    this.timer = setTimeout(() => this.release(), wait);
  }

  release() {
    this.timer = null;
    const now = performance.now();
    while (this.queue.length && this.queue[0].due <= now) this.deliver(this.queue.shift().datagram);
    if (this.queue.length) this.schedule();
  }
}

/**
 * A token bucket of `burstBytes` filling at `rateBps`, in front of a FIFO that holds at most
 * `queueMs` of traffic at that rate. Counts what it drops and how long datagrams waited.
 */
class Shaper {
  constructor({ rateBps, burstBytes, queueMs }, deliver, counters) {
    this.bytesPerMs = rateBps / 8 / 1000;
    this.burstBytes = burstBytes;
    this.queueLimitBytes = Math.max(MIN_BURST_BYTES, this.bytesPerMs * queueMs);
    this.deliver = deliver;
    this.counters = counters;
    this.tokens = burstBytes;
    this.refilledAt = performance.now();
    this.queue = [];
    this.queuedBytes = 0;
    this.timer = null;
  }

  refill(now) {
    this.tokens = Math.min(this.burstBytes, this.tokens + (now - this.refilledAt) * this.bytesPerMs);
    this.refilledAt = now;
  }

  push(datagram) {
    const now = performance.now();
    this.refill(now);
    if (!this.queue.length && this.tokens >= datagram.length) {
      this.tokens -= datagram.length;
      this.deliver(datagram);
      return;
    }
    if (this.queuedBytes + datagram.length > this.queueLimitBytes) {
      this.counters.droppedByRate += 1;
      return;
    }
    this.queue.push({ datagram, queuedAt: now });
    this.queuedBytes += datagram.length;
    if (!this.timer) this.schedule(now);
  }

  schedule(now) {
    const wait = Math.max(0, (this.queue[0].datagram.length - this.tokens) / this.bytesPerMs);
    const due = now + wait;
    this.timer = setTimeout(() => this.drain(due), Math.ceil(wait));
  }

  drain(due) {
    this.timer = null;
    const now = performance.now();
    this.counters.timerLateMaxMs = Math.max(this.counters.timerLateMaxMs, now - due);
    this.refill(now);
    while (this.queue.length && this.tokens >= this.queue[0].datagram.length) {
      const { datagram, queuedAt } = this.queue.shift();
      this.queuedBytes -= datagram.length;
      this.tokens -= datagram.length;
      const waited = now - queuedAt;
      this.counters.queuedPackets += 1;
      this.counters.queueWaitSumMs += waited;
      this.counters.queueWaitMaxMs = Math.max(this.counters.queueWaitMaxMs, waited);
      this.deliver(datagram);
    }
    if (this.queue.length) this.schedule(now);
  }
}

function newDirectionCounters() {
  return { packets: 0, bytes: 0, droppedByLoss: 0, deliveredPackets: 0, deliveredBytes: 0 };
}

/**
 * Starts the relay on `listenHost` at each of `ports`, toward `serverHost` at the same port.
 * Resolves with {counters(), resetMaxima(), close()}. counters() gives a snapshot per client
 * flow: [{client, port, relayPort, up: {...}, down: {..., droppedByRate, queue...}}], where
 * `relayPort` is the relay's own port toward the server (the address the server sees, and the
 * one the client learns as its peer-reflexive candidate). The …MaxMs figures are maxima since
 * the start or since resetMaxima(); the others are counts since the start.
 */
export async function startRelay({ ports, spec, listenHost = '127.0.0.2', serverHost = '127.0.0.1' }) {
  const flows = new Map();
  const sockets = [];

  // Random loss, and runs of `burstLength` lost datagrams; `state` is one direction's run.
  const lossy = (counters, next, direction) => {
    const state = { burstLeft: 0 };
    return (datagram) => {
      counters.packets += 1;
      counters.bytes += datagram.length;
      if (spec.only && spec.only !== direction) {
        next(datagram);
        return;
      }
      let lost = false;
      if (state.burstLeft > 0) {
        state.burstLeft -= 1;
        lost = true;
      } else if (spec.burstLength && Math.random() < spec.burstLoss / spec.burstLength) {
        state.burstLeft = spec.burstLength - 1;
        lost = true;
      } else {
        lost = Math.random() < spec.loss;
      }
      if (lost) {
        counters.droppedByLoss += 1;
        return;
      }
      next(datagram);
    };
  };

  const openFlow = (front, port, rinfo) => {
    const back = dgram.createSocket('udp4');
    sockets.push(back);
    back.bind(0, serverHost);
    const up = newDirectionCounters();
    const down = {
      ...newDirectionCounters(),
      droppedByRate: 0,
      queuedPackets: 0,
      queueWaitSumMs: 0,
      queueWaitMaxMs: 0,
      timerLateMaxMs: 0,
    };
    const toServer = new DelayLine(spec.delayMs, (datagram) => {
      up.deliveredPackets += 1;
      up.deliveredBytes += datagram.length;
      back.send(datagram, port, serverHost);
    }, spec.only === 'down' ? 0 : spec.jitterMs, spec.inOrder);
    const toClient = new DelayLine(spec.delayMs, (datagram) => {
      down.deliveredPackets += 1;
      down.deliveredBytes += datagram.length;
      front.send(datagram, rinfo.port, rinfo.address);
    }, spec.only === 'up' ? 0 : spec.jitterMs, spec.inOrder);
    const shaper = new Shaper(spec, (datagram) => toClient.push(datagram), down);
    const flow = {
      client: `${rinfo.address}:${rinfo.port}`,
      port,
      back,
      up,
      down,
      fromClient: lossy(up, (datagram) => toServer.push(datagram), 'up'),
    };
    back.on('message', lossy(down, (datagram) => shaper.push(datagram), 'down'));
    back.on('error', (err) => console.error(`relay: socket toward ${serverHost}:${port} for ${flow.client}: ${err.message}`));
    flows.set(`${port} ${flow.client}`, flow);
    return flow;
  };

  for (const port of ports) {
    const front = dgram.createSocket('udp4');
    sockets.push(front);
    await new Promise((resolve, reject) => {
      front.once('error', reject);
      front.bind(port, listenHost, () => {
        front.off('error', reject);
        resolve();
      });
    });
    front.on('error', (err) => console.error(`relay: socket ${listenHost}:${port}: ${err.message}`));
    front.on('message', (datagram, rinfo) => {
      const flow = flows.get(`${port} ${rinfo.address}:${rinfo.port}`) ?? openFlow(front, port, rinfo);
      flow.fromClient(datagram);
    });
  }

  return {
    counters: () => [...flows.values()].map((f) => ({
      client: f.client,
      port: f.port,
      relayPort: f.back.address().port,
      up: { ...f.up },
      down: { ...f.down },
    })),
    resetMaxima: () => {
      for (const { down } of flows.values()) {
        down.queueWaitMaxMs = 0;
        down.timerLateMaxMs = 0;
      }
    },
    close: () => {
      for (const socket of sockets) socket.close();
    },
  };
}
