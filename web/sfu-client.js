/**
 * sfu-client.js: the browser side of the `sfu` signaling protocol v1 (docs/protocol.md): the
 * engine under the public SDK (sfu.js), which apps use instead; its API may change without notice.
 * One dependency-free ES module. It imports nothing and touches no DOM, but for watching the size
 * and visibility of the video elements the page hands to observeVideo() (adaptive stream).
 *
 * What the SfuClient owns:
 *  - The signaling WebSocket. It matches each request to its answer (`id` / `request_id`) with a
 *    promise and a timeout, sends keepalive pings, and turns a server `leave{reason}` or a closed
 *    socket into a readable message. It reconnects on its own if enabled: when the socket drops
 *    it resumes the same session on a new socket (same sid, media untouched, missed messages
 *    replayed by the server); if that cannot be done, it rejoins with the same token and
 *    publishes the local tracks again. A media connection that drops after connecting gets an
 *    ICE restart.
 *  - The publisher RTCPeerConnection. The client makes the offers. This covers the local tracks,
 *    3-layer simulcast for the camera, and renegotiation, one offer at a time. The server's
 *    `track_published` is matched to our own tracks by `cid`.
 *  - The subscriber RTCPeerConnection. The server makes the offers. The client answers them,
 *    maps each m-line (mid) to a track sid and its participant, and hands out one MediaStream
 *    per remote track.
 *  - The room model the server reports: participants, tracks, muted flags.
 * The page owns the DOM. It calls the methods below and listens to the events.
 *
 * Usage:
 *   const sfu = new SfuClient();
 *   sfu.addEventListener('track', (e) => attach(e.detail.stream, e.detail.track, e.detail.participant));
 *   await sfu.connect('wss://host/ws', token);
 *   await sfu.join();
 *   await sfu.publishCamera({ simulcast: true });
 *   await sfu.publishMicrophone();
 *
 * Methods (all async ones reject with SfuError {code, message}; `code` is the server's stable
 * error code, or one of: connect_failed, not_connected, not_joined, timeout, disconnected,
 * media_unavailable, browser_error). A request the server answers with `server_busy` (its media
 * worker was overloaded and did nothing) is sent again a few times before it rejects with it.
 * `message` is always a sentence for a person: a browser's own error (a DOMException such as
 * "Failed to execute 'setParameters' on 'RTCRtpSender': ...") never becomes a message; it is
 * logged to the console and kept as the SfuError's `cause`.
 *   connect(url, token)              open the WebSocket (the token is sent in `join`)
 *   join({room}?)                    join the token's room, resolves with the `joined` message
 *   publishCamera({simulcast, constraints, name}?)    -> LocalTrack
 *   publishMicrophone({constraints, name}?)           -> LocalTrack
 *   publishScreen({audio, name}?)                     -> {video: LocalTrack, audio: LocalTrack|null}
 *   publishTrack(mediaStreamTrack, {source, name, simulcast}?) -> LocalTrack
 *   unpublish(localTrack | sid | MediaStreamTrack)
 *   mute(localTrack | sid | MediaStreamTrack, muted)   stops sending (nothing encoded; a camera is
 *                       released and opened again on unmute) and the server stops forwarding
 *   setQuality(trackSid, 'auto'|'low'|'medium'|'high'|'off')   a remote video's simulcast layer
 *   observeVideo(trackSid, videoElement) -> stop()   adaptive stream: the server sends the layer
 *                       that fills the element, nothing while it is hidden; `auto` quality
 *   unobserveVideo(trackSid)
 *   subscribe(trackSid) / unsubscribe(trackSid)
 *   sendChat(text) -> chat message;  setTyping(bool);  setMetadata(text);  ping()
 *   getTrackStats(trackSid) -> {width, height, fps, bitrate, rtt, layer} | null   (local or remote)
 *   remoteLayer(trackSid) -> {quality, layer, reason} | null   the last quality_changed of a remote video
 *   getStatsReport(trackSid) -> RTCStatsReport | null   the browser's raw stats for one track
 *   leave()
 *
 * Events (CustomEvent, the payload is in `event.detail`; protocol objects keep their snake_case):
 *   state               {state}  idle|connecting|connected|joined|reconnecting|closed
 *   joined              the `joined` message {room, participant, participants, chat_history,
 *                       tracks, server, ice_servers} plus {rejoined}
 *   participant_joined  {participant}
 *   participant_updated {participant}   someone's metadata changed (ours included)
 *   participant_left    {sid, identity, reason, participant}
 *   track               {track: TrackInfo, participant, stream, mediaTrack, receiver}   (remote)
 *   track_removed       {track: TrackInfo, participant, stream, mediaTrack}              (remote)
 *   track_published / track_unpublished   {track, participant}   (any track, ours included)
 *   track_muted         {track, participant, muted}
 *   local_track / local_track_published / local_track_removed / local_track_muted   {local}
 *   chat                {message, own}
 *   typing              {sid, identity, typing, participant}
 *   active_speakers     {speakers: [{participant, level}]}   level 0 = loudest, 127 = silence
 *   quality_changed     {track: sid, quality, layer, reason, remote}   the layer of a remote video we
 *                       receive changed (see QualityChange below). `layer: "off"` with
 *                       `reason: "bandwidth"` means the server paused the video: our downstream
 *                       has no room even for its lowest layer. A later quality_changed with a
 *                       layer says it resumed.
 *   subscription_failed {track: sid, code, message, info, participant}   a remote track we cannot
 *                       receive; today `code` is always `codec_not_supported` (our answer
 *                       accepted none of its formats). Nothing of it will arrive.
 *   publication_failed  {cid, mid, kind, code, message, local}   an m-line of our offer the server
 *                       refused: `code` is `codec_not_supported` (we offered no codec it forwards);
 *                       nothing of that track is published
 *   publisher_layers    {track: sid, active: [rid], local}   which layers of our video anyone
 *                       receives; the client pauses the others itself (dynacast)
 *   connection_state    {target: 'publisher'|'subscriber', state}
 *   error               {error: SfuError}   (errors no request is waiting for). Client-side codes:
 *                       `browser_error` (the browser refused an operation; `cause` has its
 *                       DOMException), `publisher_layers_failed` (pausing or resuming our
 *                       simulcast layers failed after retries; the video goes on),
 *                       `ice_gathering_failed` (a media connection never connected and this
 *                       browser gathered no ICE candidate for it: the browser's fault) and
 *                       `media_unreachable` (it gathered candidates but found no path)
 *   reconnecting        {attempt, maxAttempts, delay, reason, message, resume}   the socket dropped;
 *                       with `resume: true` the session is being resumed (same sid, media and
 *                       room state kept, `maxAttempts` null: it tries until the server's resume
 *                       window ends), otherwise a full rejoin is being tried
 *   redirected          {code, url, from}   cluster mode: the node refused the join and named
 *                       another (`room_on_other_node`, `node_full`, `node_draining`); the
 *                       client moves its socket to `url` and joins there (its state stays
 *                       `connected` meanwhile: no second `connecting`)
 *   resumed             {replayed, attempt}   the session was taken over on a new socket; the
 *                       `replayed` messages we missed were handled as usual before this event
 *   ice_restart         {target}   a media connection went disconnected/failed after it had
 *                       connected; the client restarts its ICE on its own
 *   disconnected        {reason, message, code, error}   the session is over
 */

/**
 * The detail of a `quality_changed` event.
 * @typedef {object} QualityChange
 * @property {string} track  the remote video track's sid
 * @property {'low'|'medium'|'high'|'off'} quality  what is forwarded now; a track without
 *   simulcast reports `high`
 * @property {string} layer  the rid forwarded now (`q`, `h`, `f`), `""` for a track without
 *   simulcast, or `"off"` when nothing is
 * @property {QualityReason} reason
 */

/**
 * Why the layer we receive changed (protocol `quality_changed.reason`):
 *  - `start`: the first layer the server sent us;
 *  - `request`: our setQuality took effect;
 *  - `bandwidth`: the server's estimate of our downstream bandwidth moved (down, up, or to
 *    `off`: paused because not even the lowest layer fits);
 *  - `publisher`: the publisher started sending a better layer within what we asked for;
 *  - `layer_lost`: the layer we received stopped arriving and a lower one took its place.
 * A server older than these reasons may say `layer_change`; treat unknown reasons as neutral.
 * @typedef {'start'|'request'|'bandwidth'|'publisher'|'layer_lost'} QualityReason
 */

const PROTOCOL_VERSION = 1;

/** Camera simulcast: quarter, half and full resolution. The server forwards the best live one. */
const CAMERA_SIMULCAST = [
  { rid: 'q', scaleResolutionDownBy: 4, maxBitrate: 150_000 },
  { rid: 'h', scaleResolutionDownBy: 2, maxBitrate: 500_000 },
  { rid: 'f', maxBitrate: 1_200_000 },
];

export const QUALITIES = ['auto', 'low', 'medium', 'high', 'off'];

/** What each leave reason means to the person in front of the screen. */
export const LEAVE_MESSAGES = {
  client_left: 'You left the room.',
  disconnected: 'The connection to the server was lost.',
  replaced: 'You joined this room again from another tab or device, so this session was closed.',
  kicked: 'You were removed from the room.',
  server_shutdown: 'The server is shutting down.',
  slow_consumer: 'The connection was too slow to keep up with the room.',
  join_timeout: 'Joining the room took too long.',
  media_failed: 'The media connection failed.',
  node_draining: 'The server is being taken down for maintenance; moving to another one.',
  room_moved: 'The room continues on another server; moving there.',
};

/** What a `media_failed` cause means to the person in front of the screen. */
export const MEDIA_FAILURES = {
  ice_failed:
    'The media connection could not reach the server over UDP, or stopped reaching it: check firewalls and the server\'s public address.',
  dtls_failed: 'The media connection\'s secure handshake (DTLS) failed.',
  internal: 'The media connection failed because of a fault on the server.',
};

/** Reasons worth a reconnect: a retry can fix them. Others end the session for good. */
const RETRYABLE = new Set(['disconnected', 'server_shutdown', 'slow_consumer', 'media_failed', 'node_draining', 'room_moved']);
/**
 * Cluster mode: join refusals that name the node to join instead (`url`, its signaling
 * WebSocket). The client follows at most MAX_REDIRECTS of them per join.
 */
const REDIRECTS = new Set(['room_on_other_node', 'node_full', 'node_draining']);
const MAX_REDIRECTS = 3;
/** Request failures that mean "try again later" rather than "this will never work". */
const TRANSIENT = new Set(['connect_failed', 'not_connected', 'timeout', 'disconnected', 'rate_limited', 'internal', 'server_busy', 'node_draining']);

/**
 * `server_busy` means the room's media worker could not take the request within 5 s and did
 * nothing, so sending it again is safe. A few tries, spaced out, give an overload spike time to
 * pass without leaving the person waiting for long.
 */
const SERVER_BUSY_ATTEMPTS = 3;
const SERVER_BUSY_BACKOFF_MS = 500;
/** The server takes one publisher offer per second after a burst of five. */
const OFFER_RETRY_MS = 1000;
/** Adaptive stream: a view size is sent once it has not changed for this long. */
const ADAPTIVE_SETTLE_MS = 300;
/** Adaptive stream: a size within this fraction of the last one sent is not sent again. */
const ADAPTIVE_STEP = 0.15;
/** What publishCamera asks of the camera unless told otherwise. */
const DEFAULT_CAMERA = { width: { ideal: 1280 }, height: { ideal: 720 }, frameRate: { ideal: 30 } };
/** How long a media connection may stay `disconnected` before the client restarts its ICE. */
const ICE_RESTART_DELAY_MS = 2000;

/**
 * Applying the layers the server wants us to send (dynacast) can fail for a moment: Chrome
 * refuses setParameters while the sender's previous change is still in flight, or before the
 * m-line is negotiated. A fresh getParameters usually succeeds shortly after; past these tries
 * the video still flows (with more or fewer layers than needed) and the next publisher_layers
 * tries again.
 */
const LAYER_APPLY_ATTEMPTS = 4;
const LAYER_APPLY_BACKOFF_MS = 250;

/**
 * A bitrate or frame rate is measured over at least this long: shorter intervals (two callers
 * polling at once) would turn the browser's counters' granularity into 0 or double figures.
 */
const MIN_STATS_INTERVAL_MS = 500;

export class SfuError extends Error {
  constructor(code, message, extra = {}) {
    super(message);
    this.name = 'SfuError';
    this.code = code;
    Object.assign(this, extra);
  }
}

export class SfuClient extends EventTarget {
  /**
   * @param {object} [options]
   * @param {number} [options.requestTimeout=10000] ms to wait for an answer to a request
   * @param {boolean} [options.reconnect=true] rejoin on its own after an unexpected disconnect
   * @param {number} [options.maxReconnectAttempts=5]
   * @param {number} [options.pingInterval=15000] ms between keepalive pings (0 disables them)
   * @param {'all'|'relay'} [options.iceTransportPolicy='all'] `relay`: media only through the
   *   TURN servers `joined.ice_servers` lists (the server's own, when it runs one)
   */
  constructor(options = {}) {
    super();
    this.options = {
      requestTimeout: 10_000,
      reconnect: true,
      maxReconnectAttempts: 5,
      pingInterval: 15_000,
      iceTransportPolicy: 'all',
      ...options,
    };
    this.url = null;
    this.token = null;
    this.ws = null;
    this.state = 'idle';
    /** The room name, this participant, and the server's {version, protocol}, once joined. */
    this.room = null;
    this.me = null;
    this.server = null;
    /** Everyone else in the room, by sid. */
    this.participants = new Map();
    /** Every track published in the room (ours included), by sid. */
    this.tracks = new Map();
    /** Our own tracks, by MediaStreamTrack id. */
    this.localTracks = new Map();

    this._seq = 0;
    this._pending = new Map();
    this._leaveReason = null;
    /** Cluster mode: the node a draining node told us to move to (`leave.url`). */
    this._moveUrl = null;
    this._mediaFailure = null;
    this._leaving = false;
    this._reconnecting = false;
    this._pingTimer = null;
    this._iceServers = [];
    /** Messages received since (and including) `joined`: what a `resume` says it has. */
    this._received = 0;
    /** The server's token for resuming this session after a drop, and for how long it may. */
    this._resumeToken = null;
    this._resumeWindowMs = 0;
    /** True while a dropped session is being resumed (media and room state are kept). */
    this._resuming = false;
    /** Pending ICE restarts after a media connection went disconnected/failed, by target. */
    this._iceRestartTimers = new Map();
    /** Adaptive stream: the elements showing remote videos, by track sid (observeVideo). */
    this._watched = new Map();
    this._onVisibility = null;
    this._resetMedia();
  }

  // ------------------------------------------------------------------ connection

  /** Opens the signaling socket. The token goes in `join`, see there. */
  async connect(url, token) {
    if (this.ws) {
      throw new SfuError('already_connected', 'connect() was called on a connected client; call leave() first');
    }
    this.url = url;
    /** The URL the app gave (a load balancer, in a cluster): where a full rejoin starts. */
    this._entryUrl = url;
    this._moveUrl = null;
    this.token = token;
    this._leaving = false;
    await this._openSocket();
  }

  /**
   * Joins the room named by the token; resolves with the `joined` message. The token travels in
   * `join`, not as `/ws?token=`: a bad token given at the upgrade fails with an HTTP 401 that a
   * browser cannot read, while a `join` answer says `token_expired` or `unauthorized` plainly.
   */
  async join({ room } = {}) {
    const joined = await this._joinFollowing(room);
    this._applyJoined(joined, false);
    return joined;
  }

  /**
   * Sends `join`; in a cluster, a refusal that names another node (`room_on_other_node`,
   * `node_full`, `node_draining`) moves the socket to that node's URL and joins there. `url`
   * stays the node joined, so a reconnect goes back to it.
   */
  async _joinFollowing(room) {
    for (let hop = 0; ; hop++) {
      try {
        return await this.request('join', { token: this.token, room, protocol: PROTOCOL_VERSION }, 15_000);
      } catch (err) {
        if (!REDIRECTS.has(err.code) || !err.url || hop >= MAX_REDIRECTS) throw err;
        console.info(`sfu: ${err.message}; moving to ${err.url}`);
        this._emit('redirected', { code: err.code, url: err.url, from: this.url });
        await this._moveTo(err.url);
      }
    }
  }

  /** Closes the socket without ending the session and opens one to `url` instead. */
  async _moveTo(url) {
    const ws = this.ws;
    this.ws = null; // its close event is not ours to handle any more
    clearInterval(this._pingTimer);
    if (ws) ws.close(1000, 'moving to another node');
    this.url = url;
    // The client stays `connected` (the join goes on over the new socket), not `connecting`
    // again: the page does not go back a step for a redirect.
    await this._openSocket({ moving: true });
  }

  /** Leaves the room and closes everything. The camera and microphone are released. */
  async leave() {
    this._leaving = true;
    const ws = this.ws;
    if (ws && ws.readyState === WebSocket.OPEN) {
      // The server answers `leave{reason:"client_left"}` and closes the socket itself.
      await this.request('leave', {}, 3_000).catch(expected('the server did not confirm the leave; the socket closes anyway'));
      ws.close(1000, 'client left');
      const closed = new Promise((resolve) => ws.addEventListener('close', resolve, { once: true }));
      await Promise.race([closed, sleep(2_000)]);
    } else if (ws) {
      ws.close(); // still opening (a reconnect attempt)
    }
    this._reconnecting = false;
    if (ws && this.ws === ws) {
      // No close event came in time: finish as if it had.
      this._onSocketClosed(ws, { code: 1000, reason: '' });
    } else if (this.state !== 'closed') {
      // Leaving while reconnecting, or before connecting: no socket to wait for.
      this._finish('client_left', {});
    }
  }

  ping() {
    return this.request('ping');
  }

  /**
   * Sends one request. Resolves with the answer message, or rejects with an SfuError carrying
   * the server's error `code` (or `timeout` / `not_connected` / `disconnected`). A `server_busy`
   * answer, or `rate_limited` for an `offer`, is retried (SERVER_BUSY_ATTEMPTS in all) before it
   * rejects with it.
   */
  async request(type, fields = {}, timeout = this.options.requestTimeout) {
    for (let attempt = 1; ; attempt++) {
      try {
        return await this._requestOnce(type, fields, timeout);
      } catch (err) {
        // An offer over the server's offer rate (1 per second, bursts of 5) was not looked at:
        // sending it again a moment later is as safe as after `server_busy`.
        const offerTooSoon = err.code === 'rate_limited' && type === 'offer';
        if ((err.code !== 'server_busy' && !offerTooSoon) || attempt >= SERVER_BUSY_ATTEMPTS) throw err;
        console.info(`sfu: the server asked to wait with \`${type}\` (${err.code}); trying again (${attempt} of ${SERVER_BUSY_ATTEMPTS - 1})`);
        await sleep(offerTooSoon ? OFFER_RETRY_MS * attempt : SERVER_BUSY_BACKOFF_MS * 2 ** (attempt - 1));
      }
    }
  }

  _requestOnce(type, fields, timeout) {
    const ws = this.ws;
    if (!ws || ws.readyState !== WebSocket.OPEN) {
      return Promise.reject(new SfuError('not_connected', `cannot send \`${type}\`: not connected to the server`, { request: type }));
    }
    const id = String(++this._seq);
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this._pending.delete(id);
        reject(new SfuError('timeout', `the server did not answer \`${type}\` within ${timeout / 1000} s`, { request: type }));
      }, timeout);
      this._pending.set(id, { type, resolve, reject, timer });
      ws.send(JSON.stringify({ ...fields, type, id }));
    });
  }

  _openSocket({ moving = false } = {}) {
    const quiet = this._reconnecting || moving;
    if (!quiet) this._setState('connecting');
    return new Promise((resolve, reject) => {
      let ws;
      try {
        ws = new WebSocket(this.url);
      } catch (e) {
        reject(new SfuError('connect_failed', `bad signaling URL ${this.url}: ${e.message}`));
        return;
      }
      this.ws = ws;
      this._leaveReason = null;
      this._mediaFailure = null;
      let opened = false;
      ws.onopen = () => {
        if (ws !== this.ws) {
          // Superseded while opening (leave() during a reconnect attempt).
          ws.close();
          reject(new SfuError('disconnected', 'the connection was closed while opening'));
          return;
        }
        opened = true;
        if (!quiet) this._setState('connected');
        this._startPing(ws);
        resolve();
      };
      ws.onmessage = (e) => {
        if (ws === this.ws) this._onMessage(e.data, true);
      };
      // An error event carries no detail; the close event that always follows has the code.
      ws.onerror = () => {};
      ws.onclose = (e) => {
        if (!opened) {
          if (ws === this.ws) {
            this.ws = null;
            this._setState(this._reconnecting ? 'reconnecting' : 'closed');
          }
          reject(new SfuError('connect_failed', `could not open the signaling WebSocket at ${this.url} (close code ${e.code}); is the server running and reachable?`));
          return;
        }
        this._onSocketClosed(ws, e);
      };
    });
  }

  _startPing(ws) {
    clearInterval(this._pingTimer);
    if (!this.options.pingInterval) return;
    // The server pings too, and the browser answers those, but a browser can take minutes to
    // notice a dead network on its own. A missed answer here closes the socket and reconnects.
    this._pingTimer = setInterval(() => {
      if (ws !== this.ws) return;
      this.request('ping', {}, 10_000).catch((err) => {
        if (err.code === 'timeout' && ws === this.ws) {
          ws.close();
          this._onSocketClosed(ws, { code: 4000, reason: 'keepalive timeout' });
        }
      });
    }, this.options.pingInterval);
  }

  _onSocketClosed(ws, event) {
    if (ws !== this.ws) return;
    this.ws = null;
    clearInterval(this._pingTimer);
    const wasJoined = this.state === 'joined';
    const reason = this._leaveReason ?? (this._leaving ? 'client_left' : 'disconnected');
    this._rejectPending(new SfuError('disconnected', closeMessage(reason, event, this._mediaFailure)));
    if (this._resuming) return; // the resume loop goes on, media and room state kept
    // The socket dropped without the server ending the session: the server keeps us for its
    // resume window, media included. Take the session over on a new socket.
    if (this.options.reconnect && !this._leaving && wasJoined && reason === 'disconnected' && this._resumeToken) {
      this._resume(closeMessage(reason, event, this._mediaFailure));
      return;
    }
    this._teardownMedia();
    this.participants.clear();
    this.tracks.clear();
    if (this._reconnecting) return; // the reconnect loop goes on
    if (this.options.reconnect && !this._leaving && wasJoined && RETRYABLE.has(reason)) {
      this._reconnect(reason, closeMessage(reason, event, this._mediaFailure));
      return;
    }
    this._finish(reason, event);
  }

  /** The session is over for good: release the devices and say why. */
  _finish(reason, event, error = null) {
    this._moveUrl = null;
    this._stopLocalTracks();
    this._setState('closed');
    const message = error?.message ?? closeMessage(reason, event, this._mediaFailure);
    this._emit('disconnected', {
      reason,
      message,
      code: event?.code,
      error: reason === 'client_left' ? null : error ?? new SfuError(reason, message),
    });
  }

  /**
   * Resumes the session after its socket dropped: new sockets, with back-off, until one takes
   * the session over within the server's resume window. The server sends again what we missed
   * (handled as usual), then `resumed`. Same identity and sid; nobody saw us leave. If it cannot
   * be resumed, a full rejoin follows.
   */
  async _resume(message) {
    this._resuming = true;
    this._reconnecting = true;
    this._setState('reconnecting');
    const deadline = Date.now() + this._resumeWindowMs;
    let attempt = 0;
    while (!this._leaving && Date.now() < deadline) {
      attempt++;
      const delay = Math.min(250 * 2 ** (attempt - 1), 4_000, Math.max(0, deadline - Date.now()));
      this._emit('reconnecting', { attempt, maxAttempts: null, delay, reason: 'disconnected', message, resume: true });
      await sleep(delay);
      if (this._leaving) break;
      try {
        await this._openSocket();
        const answer = await this.request('resume', { token: this._resumeToken, received: this._received }, 10_000);
        this._resumeToken = answer.resume_token;
        this._resuming = false;
        this._reconnecting = false;
        this._setState('joined');
        this._emit('resumed', { replayed: answer.replayed, attempt });
        // The network that dropped the socket may have moved the media paths too.
        for (const [target, pc] of [['publisher', this._pub], ['subscriber', this._sub]]) {
          if (pc && ['disconnected', 'failed'].includes(pc.iceConnectionState)) this._scheduleIceRestart(target, 0);
        }
        return;
      } catch (err) {
        const ws = this.ws;
        if (ws) {
          ws.close();
          this._onSocketClosed(ws, { code: 1000, reason: '' });
        }
        if (err.code === 'resume_failed') {
          console.info(`sfu: the session could not be resumed (${err.message}); joining again`);
          break;
        }
        if (!TRANSIENT.has(err.code)) break;
      }
    }
    this._resuming = false;
    this._reconnecting = false;
    this._resumeToken = null;
    if (this.state === 'closed') return; // leave() finished it already
    this._teardownMedia();
    this.participants.clear();
    this.tracks.clear();
    if (this._leaving) {
      this._finish('client_left', {});
      return;
    }
    this._reconnect('disconnected', message);
  }

  async _reconnect(reason, message) {
    this._reconnecting = true;
    this._setState('reconnecting');
    const max = this.options.maxReconnectAttempts;
    let lastError = null;
    for (let attempt = 1; attempt <= max; attempt++) {
      // A draining node named where to go: no reason to wait before the first try.
      const delay = attempt === 1 && this._moveUrl ? 0 : Math.min(1000 * 2 ** (attempt - 1), 10_000);
      this._emit('reconnecting', { attempt, maxAttempts: max, delay, reason, message });
      await sleep(delay);
      if (this._leaving) break;
      try {
        // A full rejoin goes where a draining node or a moved room said, else back to the
        // URL the app gave: the node joined last may be the one that died.
        this.url = this._moveUrl ?? this._entryUrl ?? this.url;
        this._moveUrl = null;
        await this._openSocket();
        const joined = await this._joinFollowing();
        this._reconnecting = false;
        this._applyJoined(joined, true);
        return;
      } catch (err) {
        lastError = err;
        const ws = this.ws;
        if (ws) {
          ws.close();
          this._onSocketClosed(ws, { code: 1000, reason: '' });
        }
        // An expired token or a full room will not get better by retrying.
        if (!TRANSIENT.has(err.code)) break;
      }
    }
    this._reconnecting = false;
    if (this.state === 'closed' || this.state === 'joined') return; // leave() finished it already
    if (this._leaving) {
      this._finish('client_left', {});
    } else {
      const why = lastError && !TRANSIENT.has(lastError.code)
        ? `Could not rejoin: ${lastError.message}`
        : `${message} Reconnecting failed after ${max} attempts.`;
      this._finish(reason, {}, new SfuError(lastError?.code ?? reason, why));
    }
  }

  _rejectPending(error) {
    for (const p of this._pending.values()) {
      clearTimeout(p.timer);
      p.reject(new SfuError(error.code, error.message, { request: p.type }));
    }
    this._pending.clear();
  }

  // ------------------------------------------------------------------ messages

  _onMessage(text, fromSocket = false) {
    let msg;
    try {
      msg = JSON.parse(text);
    } catch {
      console.warn('sfu: ignoring a frame that is not JSON', text);
      return;
    }
    // What came over the socket is counted from `joined` (1) on, replays included: a resume
    // tells the server this number.
    if (fromSocket) {
      if (msg.type === 'joined') this._received = 0;
      this._received++;
    }
    if (msg.request_id != null) {
      const pending = this._pending.get(msg.request_id);
      if (pending) {
        this._pending.delete(msg.request_id);
        clearTimeout(pending.timer);
        if (msg.type === 'error') {
          pending.reject(new SfuError(msg.code, msg.message, { request: pending.type, ...(msg.url ? { url: msg.url } : {}) }));
        }
        else pending.resolve(msg);
      }
      // Some answers are news as well: our own chat message and metadata, and the end of the session.
      if (msg.type === 'chat') this._emit('chat', { message: msg.message, own: true });
      if (msg.type === 'participant_updated') this._onParticipantUpdated(msg.participant);
      if (msg.type === 'leave') this._leaveReason = msg.reason;
      return;
    }
    switch (msg.type) {
      case 'participant_joined':
        this.participants.set(msg.participant.sid, msg.participant);
        this._emit('participant_joined', { participant: msg.participant });
        break;
      case 'participant_updated':
        this._onParticipantUpdated(msg.participant);
        break;
      case 'participant_left': {
        const participant = this.participants.get(msg.sid);
        this.participants.delete(msg.sid);
        // Its track_unpublished events came first; this only catches stragglers.
        for (const [sid, t] of this.tracks) if (t.participant === msg.sid) this._onTrackUnpublished(sid);
        this._emit('participant_left', { sid: msg.sid, identity: msg.identity, reason: msg.reason, participant });
        break;
      }
      case 'chat':
        this._emit('chat', { message: msg.message, own: msg.message.sender.sid === this.me?.sid });
        break;
      case 'typing':
        this._emit('typing', { sid: msg.sid, identity: msg.identity, typing: msg.typing, participant: this.participants.get(msg.sid) });
        break;
      case 'track_published':
        this._onTrackPublished(msg.track);
        break;
      case 'track_unpublished':
        this._onTrackUnpublished(msg.track);
        break;
      case 'track_muted': {
        const track = this.tracks.get(msg.track);
        if (track) track.muted = msg.muted;
        this._emit('track_muted', {
          track: track ?? { sid: msg.track, participant: msg.participant, muted: msg.muted },
          participant: this._participant(msg.participant),
          muted: msg.muted,
        });
        break;
      }
      case 'active_speakers':
        this._emit('active_speakers', { speakers: msg.speakers });
        break;
      case 'quality_changed': {
        const remote = this._remote.get(msg.track);
        // Kept even before the track's media arrives: getTrackStats and remoteLayer report it.
        this._layers.set(msg.track, { quality: msg.quality, layer: msg.layer, reason: msg.reason });
        this._emit('quality_changed', { track: msg.track, quality: msg.quality, layer: msg.layer, reason: msg.reason, remote });
        break;
      }
      case 'subscription_failed': {
        // Our answer accepted none of the track's formats: the server forwards nothing of it.
        // Not an `error`: nothing failed for the session, one track just cannot be shown here.
        const info = this.tracks.get(msg.track);
        this._emit('subscription_failed', {
          track: msg.track,
          code: msg.code,
          message: msg.message,
          info,
          participant: info ? this._participant(info.participant) : undefined,
        });
        break;
      }
      case 'publication_failed': {
        // Our offer's m-line for this track had no codec the server forwards: it is not published.
        const local = [...this.localTracks.values()].find((l) => l.cid === msg.cid);
        this._emit('publication_failed', { cid: msg.cid, mid: msg.mid, kind: msg.kind, code: msg.code, message: msg.message, local });
        break;
      }
      case 'publisher_layers':
        this._applyPublisherLayers(msg.track, msg.active);
        break;
      case 'offer':
        // One subscriber offer at a time, in order (the server sends the next only after our answer).
        this._subChain = this._subChain
          .then(() => this._onSubscriberOffer(msg))
          .catch((err) => this._emitError(err, 'setting up the media you receive failed'));
        break;
      case 'leave':
        // The server closes the socket right after; the close handler reports it.
        this._leaveReason = msg.reason;
        // A draining cluster node, or one whose room lives on another node, names where to go.
        if ((msg.reason === 'node_draining' || msg.reason === 'room_moved') && msg.url) this._moveUrl = msg.url;
        break;
      case 'error':
        // media_failed carries its cause: ice_failed, dtls_failed or internal. The `leave`
        // after it says why in words (closeMessage).
        if (msg.code === 'media_failed') {
          this._mediaFailure = { cause: msg.cause, message: msg.message };
          // The server saw no ICE: if this browser gathered no candidate on a connection that
          // never connected, the browser is where it failed, not the server's reachability.
          const pc = [this._pub, this._sub].find((c) => c && !c._everConnected);
          const target = pc === this._pub ? 'publisher' : 'subscriber';
          if (msg.cause === 'ice_failed' && pc && this._gathered[target] === 0) {
            const err = neverConnected(target, 0, this.options.iceTransportPolicy);
            this._mediaFailure = { cause: err.code, message: err.message, words: err.message };
          }
        }
        this._emitError(new SfuError(msg.code, msg.message, msg.cause ? { cause: msg.cause } : {}));
        break;
      default:
        break; // ack/pong without request_id, or a message type from a newer server
    }
  }

  _applyJoined(msg, rejoined) {
    this.room = msg.room;
    this.me = msg.participant;
    this.server = msg.server;
    this.participants = new Map(msg.participants.map((p) => [p.sid, p]));
    this.tracks = new Map(msg.tracks.map((t) => [t.sid, t]));
    this._resumeToken = msg.resume_token ?? null;
    this._resumeWindowMs = msg.resume_window_ms ?? 0;
    this._iceServers = (msg.ice_servers ?? []).map((s) => ({
      urls: s.urls,
      ...(s.username != null ? { username: s.username } : {}),
      ...(s.credential != null ? { credential: s.credential } : {}),
    }));
    this._setState('joined');
    this._emit('joined', { ...msg, rejoined });
    if (rejoined && this.localTracks.size) {
      this._republish().catch((err) => this._emitError(err, 'publishing again after the reconnect failed'));
    }
  }

  _onParticipantUpdated(participant) {
    if (this.me && participant.sid === this.me.sid) this.me = participant;
    else if (this.participants.has(participant.sid)) this.participants.set(participant.sid, participant);
    else return;
    this._emit('participant_updated', { participant });
  }

  _participant(sid) {
    if (this.me && sid === this.me.sid) return this.me;
    return this.participants.get(sid);
  }

  _requireJoined(what) {
    if (this.state !== 'joined') throw new SfuError('not_joined', `cannot ${what}: join a room first`);
  }

  // ------------------------------------------------------------------ chat

  /** Sends a chat message; resolves with the server's stamped copy (also emitted as `chat`). */
  async sendChat(text) {
    const answer = await this.request('chat', { text });
    return answer.message;
  }

  /** Sets our metadata (free text for the app, at most 4 KiB); the room hears of it. */
  async setMetadata(metadata) {
    const answer = await this.request('update_metadata', { metadata: String(metadata) });
    return answer.participant;
  }

  /** Tells the room we are (or stopped) typing. The server keeps no timeout: send false. */
  async setTyping(typing) {
    await this.request('typing', { typing: !!typing });
  }

  // ------------------------------------------------------------------ publishing

  async publishCamera({ simulcast = true, constraints, name = 'camera' } = {}) {
    this._requireJoined('publish the camera');
    const open = async (deviceId) => {
      const stream = await getMedia('camera', () =>
        navigator.mediaDevices.getUserMedia({ video: withDevice(constraints ?? DEFAULT_CAMERA, deviceId) }));
      const [video] = stream.getVideoTracks();
      // Tells the encoder to keep the frame rate when bandwidth is short (faces move; text does not).
      video.contentHint = 'motion';
      return { stream, track: video };
    };
    const { stream, track } = await open();
    const local = await releaseOnError(stream, () => this.publishTrack(track, { source: 'camera', name, simulcast, stream }));
    local.open = async (deviceId) => (await open(deviceId)).track;
    // Camera off (mute) releases the device; camera on opens it again with the same constraints.
    local.reacquire = () => local.open(local.deviceId);
    return local;
  }

  async publishMicrophone({ constraints, name = 'microphone' } = {}) {
    this._requireJoined('publish the microphone');
    const base = constraints ?? { echoCancellation: true, noiseSuppression: true, autoGainControl: true };
    const open = (deviceId) => getMedia('microphone', () =>
      navigator.mediaDevices.getUserMedia({ audio: withDevice(base, deviceId) }));
    const stream = await open();
    const local = await releaseOnError(stream, () =>
      this.publishTrack(stream.getAudioTracks()[0], { source: 'microphone', name, stream }));
    // A muted microphone keeps its device (unmuting is instant); switching opens another.
    local.open = async (deviceId) => (await open(deviceId)).getAudioTracks()[0];
    return local;
  }

  /**
   * Moves a published camera or microphone to another device: the same track sid and sender
   * (no renegotiation), the old device released. A muted camera opens the new one on unmute.
   */
  async switchDevice(which, deviceId) {
    const local = this._findLocal(which);
    if (!local) throw new SfuError('track_not_found', 'no such local track');
    if (!local.open) throw new SfuError('bad_request', `the ${local.source} was not opened from a device`);
    local.deviceId = deviceId;
    if (local.muted && local.reacquire) return;
    const track = await local.open(deviceId);
    const old = local.track;
    track.enabled = !local.muted;
    try {
      if (!local.muted) await local.transceiver?.sender.replaceTrack(track);
    } catch (err) {
      track.stop();
      throw browserError(err, `switching the ${local.source} failed`);
    }
    this._swapTrack(local, track);
    old.stop();
  }

  /** Shares a screen or window, with its audio if asked and the browser offers it. */
  async publishScreen({ audio = false, name = 'screen' } = {}) {
    this._requireJoined('share the screen');
    const stream = await getMedia('screen', () =>
      navigator.mediaDevices.getDisplayMedia({ video: { frameRate: { ideal: 15, max: 30 } }, audio }));
    const [videoTrack] = stream.getVideoTracks();
    const [audioTrack] = stream.getAudioTracks();
    // Keep text sharp and drop frames instead when bandwidth is short. No simulcast: a screen at
    // a quarter of its resolution is unreadable anyway.
    videoTrack.contentHint = 'detail';
    const video = await releaseOnError(stream, () =>
      this.publishTrack(videoTrack, { source: 'screen', name, stream: new MediaStream([videoTrack]) }));
    let screenAudio = null;
    if (audioTrack) {
      try {
        screenAudio = await this.publishTrack(audioTrack, { source: 'screen_audio', name: `${name} audio`, stream: new MediaStream([audioTrack]) });
      } catch (err) {
        // The picture is shared already; go on without its sound.
        audioTrack.stop();
        this._emitError(err, 'sharing the screen\'s audio failed');
      }
    }
    return { video, audio: screenAudio };
  }

  /**
   * Publishes any MediaStreamTrack. Resolves with a LocalTrack
   * {id, track, stream, kind, source, name, simulcast, sid, cid, info, muted} once the server
   * has announced it (`track_published`), so `sid` is set. On failure the track is left as it
   * was (the caller owns it); publishCamera and friends stop the tracks they opened.
   */
  async publishTrack(track, { source, name = '', simulcast = false, stream } = {}) {
    this._requireJoined('publish');
    if (!this.me.permissions.publish) {
      throw new SfuError('permission_denied', 'your token does not allow publishing');
    }
    const local = {
      id: track.id,
      track,
      stream: stream ?? new MediaStream([track]),
      kind: track.kind,
      source: source ?? (track.kind === 'audio' ? 'microphone' : 'camera'),
      name,
      simulcast: simulcast && track.kind === 'video',
      muted: false,
      sid: null,
      cid: null,
      info: null,
      transceiver: null,
      declared: false,
      _waiter: null,
    };
    this.localTracks.set(local.id, local);
    this._watchEnded(local);
    this._emit('local_track', { local });
    try {
      const published = this._addToPublisher(local);
      published.catch(expected('awaited below; the negotiation may fail first'));
      await this._negotiatePublisher();
      await published;
    } catch (err) {
      local._waiter?.reject(err);
      // Never leave a sendonly m-line without a declared track behind: the next offer would
      // publish it as an anonymous track.
      const tr = local.transceiver;
      if (tr && this._pub && this._pub.signalingState !== 'closed') {
        tr.sender.replaceTrack(null).catch(expected('clearing the sender of a track that failed to publish'));
        tr.direction = 'inactive';
      }
      if (this.localTracks.get(local.id) === local) {
        this.localTracks.delete(local.id);
        this._emit('local_track_removed', { local });
      }
      throw browserError(err, `publishing the ${local.source} failed`);
    }
    return local;
  }

  /**
   * The track can end without us: the browser's "Stop sharing" bar, an unplugged camera. Then
   * it is unpublished (a track we stopped ourselves is no longer in localTracks by then).
   */
  _watchEnded(local) {
    const { track } = local;
    track.addEventListener('ended', () => {
      if (this.localTracks.get(track.id) !== local) return;
      this.unpublish(local).catch((err) => this._emitError(err, `the ${local.source} ended and unpublishing it failed`));
    }, { once: true });
  }

  /** Stops publishing one of our tracks and releases its device. */
  async unpublish(which) {
    const local = this._findLocal(which);
    if (!local) throw new SfuError('track_not_found', 'no such local track');
    this.localTracks.delete(local.id);
    local.track.stop();
    local._waiter?.reject(new SfuError('track_not_found', 'the track was unpublished before the server announced it'));
    try {
      if (local.sid && this.ws) {
        await this.request('unpublish', { track: local.sid }).catch((err) => {
          if (err.code !== 'track_not_found') throw err; // gone already is fine
        });
      }
      const tr = local.transceiver;
      if (tr && this._pub && this._pub.signalingState !== 'closed' && tr.currentDirection !== 'stopped') {
        // Stop sending, and mark the m-line inactive rather than stopping the transceiver: a
        // stopped m-line may be recycled for a later track, and the server knows tracks by mid.
        await tr.sender.replaceTrack(null);
        tr.direction = 'inactive';
        await this._negotiatePublisher();
      }
    } catch (err) {
      throw browserError(err, `stopping the ${local.source} failed`);
    } finally {
      this._emit('local_track_removed', { local });
    }
  }

  /**
   * Mutes or unmutes one of our tracks. `enabled = false` makes the browser send black frames or
   * silence on the same RTP stream: the server keeps forwarding (it only flags the track), the
   * stream stays alive, and unmuting needs no renegotiation or wait for a keyframe.
   */
  async mute(which, muted = true) {
    const local = this._findLocal(which);
    if (!local) throw new SfuError('track_not_found', 'no such local track');
    muted = !!muted;
    if (local.muted === muted) return;
    local.muted = muted;
    const sender = local.transceiver?.sender;
    if (muted) {
      // Nothing is encoded or sent (not black frames or silence), and the server forwards
      // nothing of the track. A camera is released: its light goes off.
      local.track.enabled = false;
      await sender?.replaceTrack(null);
      if (local.reacquire) local.track.stop();
    } else {
      if (local.track.readyState === 'ended' && local.reacquire) await this._reacquire(local);
      local.track.enabled = true;
      if (!sender && this.state === 'joined') {
        // Muted through a rejoin, which publishes only live tracks: publish it now.
        const announced = this._addToPublisher(local);
        await this._negotiatePublisher();
        await announced;
        this._emit('local_track_muted', { local, muted: false });
        return;
      }
      await sender?.replaceTrack(local.track);
    }
    this._emit('local_track_muted', { local, muted: local.muted });
    // Without a sid yet, the flag is sent once the server announces the track. Unmuted, the
    // server asks the encoder for a keyframe, so the others see us again at once.
    if (local.sid) await this.request('mute', { track: local.sid, muted: local.muted });
  }

  /** Opens the device of a local track released by mute() again; `local_track` tells the page. */
  async _reacquire(local) {
    this._swapTrack(local, await local.reacquire());
  }

  /** Puts a new MediaStreamTrack behind a local track (same sid); `local_track` tells the page. */
  _swapTrack(local, track) {
    this.localTracks.delete(local.id);
    local.id = track.id;
    local.track = track;
    local.stream = new MediaStream([track]);
    this.localTracks.set(local.id, local);
    this._watchEnded(local);
    this._emit('local_track', { local });
  }

  /**
   * Chooses the simulcast layer of a remote video track: `low` (q), `medium` (h), `high` (f),
   * `off`, or `auto`. The quality is a ceiling: the server goes lower when bandwidth is short and
   * says which layer it forwards in `quality_changed`. `auto` asks for `high`, which leaves the
   * choice to the server's bandwidth allocation alone. A server older than set_quality rejects
   * with `not_supported` (it forwards the best live layer).
   */
  async setQuality(trackSid, quality) {
    if (!QUALITIES.includes(quality)) {
      throw new SfuError('bad_request', `quality must be one of ${QUALITIES.join(', ')}`);
    }
    const watch = this._watched.get(trackSid);
    if (watch) {
      // A chosen quality takes the track over from adaptive stream; `auto` gives it back.
      watch.manual = quality !== 'auto';
      if (!watch.manual) {
        watch.sent = null;
        return this._sendViewSize(trackSid);
      }
    }
    return this.request('set_quality', { track: trackSid, quality: quality === 'auto' ? 'high' : quality });
  }

  /**
   * Adaptive stream: watches the element that shows remote video `trackSid` and tells the
   * server the size it is drawn at (in device pixels), so the server sends the smallest layer
   * that fills it, and nothing while it is hidden (not displayed, scrolled or clipped out of
   * view, or the page in the background). A change is sent once it settles (ADAPTIVE_SETTLE_MS)
   * and only if it is a real one (ADAPTIVE_STEP). setQuality() with a quality other than
   * `auto` overrides it for that track. Returns a function that stops watching; a removed track
   * stops being watched on its own.
   */
  observeVideo(trackSid, element) {
    this.unobserveVideo(trackSid);
    const watch = { element, visible: true, manual: false, sent: null, timer: null };
    watch.resize = new ResizeObserver(() => this._viewChanged(trackSid));
    watch.resize.observe(element);
    watch.intersect = new IntersectionObserver((entries) => {
      watch.visible = entries[entries.length - 1].isIntersecting;
      this._viewChanged(trackSid);
    });
    watch.intersect.observe(element);
    if (!this._onVisibility) {
      this._onVisibility = () => { for (const sid of this._watched.keys()) this._viewChanged(sid); };
      document.addEventListener('visibilitychange', this._onVisibility);
    }
    this._watched.set(trackSid, watch);
    this._viewChanged(trackSid);
    return () => { if (this._watched.get(trackSid) === watch) this.unobserveVideo(trackSid); };
  }

  /** Stops adaptive stream for a track (the server keeps the last size it was told). */
  unobserveVideo(trackSid) {
    const watch = this._watched.get(trackSid);
    if (!watch) return;
    watch.resize.disconnect();
    watch.intersect.disconnect();
    clearTimeout(watch.timer);
    this._watched.delete(trackSid);
  }

  _viewChanged(trackSid) {
    const watch = this._watched.get(trackSid);
    if (!watch || watch.manual) return;
    clearTimeout(watch.timer);
    watch.timer = setTimeout(() => {
      this._sendViewSize(trackSid).catch((err) => {
        // The track may have gone meanwhile; anything else is news.
        if (err.code !== 'track_not_found' && err.code !== 'not_connected' && err.code !== 'disconnected') {
          this._emitError(err, 'telling the server the size of a video failed');
        }
      });
    }, ADAPTIVE_SETTLE_MS);
  }

  /** Sends the size `trackSid`'s element is drawn at, or `off`, when that changed. */
  async _sendViewSize(trackSid) {
    const watch = this._watched.get(trackSid);
    if (!watch || watch.manual || this.state !== 'joined') return undefined;
    const { element } = watch;
    const hidden = !watch.visible || document.visibilityState === 'hidden' ||
      element.clientWidth === 0 || element.clientHeight === 0;
    const scale = globalThis.devicePixelRatio || 1;
    const view = hidden ? null : {
      width: Math.round(element.clientWidth * scale),
      height: Math.round(element.clientHeight * scale),
    };
    const last = watch.sent;
    if (last !== null) {
      const same = view === null ? last.off
        : !last.off && Math.abs(view.width - last.width) <= last.width * ADAPTIVE_STEP &&
          Math.abs(view.height - last.height) <= last.height * ADAPTIVE_STEP;
      if (same) return undefined;
    }
    watch.sent = view ?? { off: true };
    return this.request('set_quality', { track: trackSid, ...(view ?? { quality: 'off' }) });
  }

  /**
   * Dynacast: the server lists the layers of our video that someone receives; encoding the
   * others would spend CPU and upstream bandwidth on packets the server drops. Pausing an
   * encoding keeps its RTP stream (and m-line), so turning it on again needs no renegotiation;
   * the encoder starts it again with a keyframe, which is what the server waits for to switch.
   *
   * Only the latest list matters, so lists that come while one is being applied are merged
   * into the next application rather than queued.
   */
  _applyPublisherLayers(trackSid, active) {
    const local = [...this.localTracks.values()].find((l) => l.sid === trackSid);
    if (!local?.transceiver || !Array.isArray(active)) return;
    local.wantedLayers = new Set(active);
    local.wantedLayersVersion = (local.wantedLayersVersion ?? 0) + 1;
    this._emit('publisher_layers', { track: trackSid, active: [...local.wantedLayers], local });
    // One application per sender and connection; an older one (for a connection torn down
    // since) ends at its next step.
    if (local.applyingLayers !== this._gen) {
      local.applyingLayers = this._gen;
      this._syncLayers(local);
    }
  }

  /**
   * Brings the sender's encodings to `local.wantedLayers`, one setParameters at a time.
   *
   * The WebRTC spec lets setParameters take only the parameters of the latest getParameters on
   * that sender, read in the same task, and Chrome forgets that read when a setParameters
   * completes. Two changes overlapping on one sender therefore fail ("getParameters() has never
   * been called on this sender", "transaction_id doesn't match"): hence one change in flight
   * per sender, each with its own fresh getParameters right before it.
   */
  async _syncLayers(local) {
    const gen = this._gen;
    const stillOurs = () => gen === this._gen && this.localTracks.get(local.id) === local && !!local.transceiver;
    let failures = 0;
    try {
      for (;;) {
        // Not in the middle of an offer/answer round: the sender may not be negotiated yet.
        await this._pubChain;
        if (!stillOurs()) return;
        const version = local.wantedLayersVersion;
        try {
          await this._writeLayers(local);
          failures = 0;
          if (version === local.wantedLayersVersion) return; // the latest list is applied
        } catch (err) {
          failures += 1;
          if (failures >= LAYER_APPLY_ATTEMPTS) {
            console.warn(`sfu: could not apply the layers [${[...local.wantedLayers]}] to the ${local.source} track after ${failures} tries`, err);
            this._emitError(new SfuError(
              'publisher_layers_failed',
              `Could not switch the unused quality layers of your ${local.source} on or off; the video goes on, though viewers may not get the best quality they could.`,
              { cause: err, track: local.sid },
            ));
            return;
          }
          await sleep(LAYER_APPLY_BACKOFF_MS * 2 ** (failures - 1));
          if (!stillOurs()) return;
        }
      }
    } finally {
      if (local.applyingLayers === gen) local.applyingLayers = null;
    }
  }

  /**
   * Reads the sender's parameters and, if its encodings differ from `local.wantedLayers`, sets
   * them in the same synchronous run (see _syncLayers). Resolves when the browser applied them.
   */
  _writeLayers(local) {
    const tr = local.transceiver;
    if (!tr.currentDirection || tr.currentDirection === 'stopped' || this._pub?.signalingState !== 'stable') {
      // Chrome gives a sender that is not negotiated yet placeholder parameters it then refuses.
      return Promise.reject(new Error(`the ${local.source} sender is not negotiated yet`));
    }
    const params = tr.sender.getParameters();
    if (!params.encodings?.length) return Promise.reject(new Error(`the ${local.source} sender has no encodings yet`));
    const wanted = local.wantedLayers;
    let changed = false;
    for (const enc of params.encodings) {
      // Without simulcast there is one encoding without a rid; any entry at all means "send".
      const on = enc.rid ? wanted.has(enc.rid) : wanted.size > 0;
      if (enc.active !== on) {
        enc.active = on;
        changed = true;
      }
    }
    return changed ? tr.sender.setParameters(params) : Promise.resolve();
  }

  subscribe(trackSid) {
    return this.request('subscribe', { track: trackSid });
  }

  unsubscribe(trackSid) {
    return this.request('unsubscribe', { track: trackSid });
  }

  _findLocal(which) {
    if (!which) return null;
    if (typeof which === 'string') {
      return this.localTracks.get(which) ?? [...this.localTracks.values()].find((l) => l.sid === which) ?? null;
    }
    if (which.track && this.localTracks.get(which.id) === which) return which;
    return this.localTracks.get(which.id) ?? null;
  }

  _ensurePublisher() {
    if (this._pub) return this._pub;
    const pc = new RTCPeerConnection({ iceServers: this._iceServers, iceTransportPolicy: this.options.iceTransportPolicy, bundlePolicy: 'max-bundle' });
    pc.onicecandidate = (e) => this._sendCandidate('publisher', e.candidate);
    pc.onconnectionstatechange = () => this._onConnectionState('publisher', pc);
    this._pub = pc;
    return pc;
  }

  /** Adds a sendonly transceiver for a local track; returns a promise for its `track_published`. */
  _addToPublisher(local) {
    const pc = this._ensurePublisher();
    const init = { direction: 'sendonly', streams: [local.stream] };
    if (local.simulcast) init.sendEncodings = CAMERA_SIMULCAST.map((e) => ({ ...e }));
    local.transceiver = pc.addTransceiver(local.track, init);
    if (local.kind === 'video') preferCodec(local.transceiver, 'video/VP8');
    local.declared = false;
    local.sid = null;
    local.cid = null;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        local._waiter = null;
        reject(new SfuError('timeout', `the server did not announce the ${local.source} track within 15 s`));
      }, 15_000);
      local._waiter = {
        resolve: (info) => { clearTimeout(timer); local._waiter = null; resolve(info); },
        reject: (err) => { clearTimeout(timer); local._waiter = null; reject(err); },
      };
    });
  }

  /**
   * Restarts ICE on both media connections, for after a network change (new address, Wi-Fi to
   * mobile): the publisher offers new ICE credentials, and the server is asked to re-offer the
   * subscriber connection with new ones. Media goes on over the new path; DTLS stays.
   */
  async restartIce() {
    await this._restartIceOf('publisher');
    await this._restartIceOf('subscriber');
  }

  /** Restarts ICE on one connection, if it is there: we offer for ours, the server for its. */
  async _restartIceOf(target) {
    const pc = target === 'publisher' ? this._pub : this._sub;
    if (!pc || pc.signalingState === 'closed') return;
    if (target === 'publisher') {
      pc.restartIce();
      await this._negotiatePublisher();
    } else {
      await this.request('restart_ice');
    }
  }

  /**
   * Queues a publisher offer/answer round. Rounds run one at a time; a round finds every change
   * made before it starts, so calls made while one runs share the next round.
   */
  _negotiatePublisher() {
    this._pubDirty = true;
    const gen = this._gen;
    const run = this._pubChain.then(() => this._runPublisherNegotiation(gen));
    // The caller of this round gets its error; the chain only orders the rounds.
    this._pubChain = run.catch(expected('a publisher negotiation failed; its caller was told'));
    return run;
  }

  async _runPublisherNegotiation(gen) {
    if (!this._pubDirty || gen !== this._gen) return;
    this._pubDirty = false;
    const pc = this._pub;
    if (!pc || pc.signalingState === 'closed') throw new SfuError('disconnected', 'the publisher connection is closed');
    const offer = await pc.createOffer();
    await pc.setLocalDescription(offer);
    const sdp = pc.localDescription.sdp;
    try {
      // Declare each new track before the offer that carries it, by the track id its m-line's
      // `a=msid` names (that id is what the server matches; read it rather than assume it).
      for (const local of this.localTracks.values()) {
        const tr = local.transceiver;
        if (local.declared || !tr || tr.mid == null || !pc.getTransceivers().includes(tr)) continue;
        local.cid = msidTrackId(sdp, tr.mid) ?? local.track.id;
        await this.request('publish', { cid: local.cid, kind: local.kind, source: local.source, name: local.name });
        local.declared = true;
      }
      const answer = this.request('offer', { sdp }, 15_000);
      // The server creates the publisher connection when this offer arrives and ignores
      // candidates for a connection it does not have: send the ones gathered so far only now.
      this._pubOfferSent = true;
      for (const c of this._pubCandidates.splice(0)) this._sendCandidate('publisher', c);
      const { sdp: answerSdp } = await answer;
      if (gen !== this._gen) return;
      await pc.setRemoteDescription({ type: 'answer', sdp: answerSdp });
    } catch (err) {
      // Back to `stable`, so that the next round can start.
      if (pc.signalingState === 'have-local-offer') {
        await pc.setLocalDescription({ type: 'rollback' }).catch(expected('rolling back a failed offer'));
      }
      throw err;
    }
  }

  async _republish() {
    const locals = [...this.localTracks.values()].filter((l) => l.track.readyState === 'live');
    const announced = locals.map((l) => this._addToPublisher(l));
    announced.forEach((p) => p.catch(expected('awaited below, all together')));
    await this._negotiatePublisher();
    await Promise.all(announced);
  }

  _onTrackPublished(track) {
    this.tracks.set(track.sid, track);
    const mine = this.me && track.participant === this.me.sid;
    if (mine) {
      const local = [...this.localTracks.values()].find((l) => l.cid === track.cid && !l.sid);
      if (local) {
        local.sid = track.sid;
        local.info = track;
        if (local.muted) {
          this.request('mute', { track: track.sid, muted: true }).catch((err) => this._emitError(err, 'muting failed'));
        }
        local._waiter?.resolve(track);
        this._emit('local_track_published', { local });
      }
    } else {
      const remote = this._remote.get(track.sid);
      if (remote) this._maybeEmitTrack(remote);
    }
    this._emit('track_published', { track, participant: this._participant(track.participant) });
  }

  _onTrackUnpublished(sid) {
    const track = this.tracks.get(sid);
    this.tracks.delete(sid);
    this._removeRemote(sid, track);
    for (const local of this.localTracks.values()) {
      if (local.sid === sid) local.sid = null; // removed by the server (e.g. its m-line went away)
    }
    if (track) this._emit('track_unpublished', { track, participant: this._participant(track.participant) });
  }

  // ------------------------------------------------------------------ subscribing

  _ensureSubscriber() {
    if (this._sub) return this._sub;
    const pc = new RTCPeerConnection({ iceServers: this._iceServers, iceTransportPolicy: this.options.iceTransportPolicy, bundlePolicy: 'max-bundle' });
    pc.onicecandidate = (e) => this._sendCandidate('subscriber', e.candidate);
    pc.onconnectionstatechange = () => this._onConnectionState('subscriber', pc);
    pc.ontrack = (e) => this._onRemoteTrack(e);
    this._sub = pc;
    return pc;
  }

  async _onSubscriberOffer(msg) {
    const gen = this._gen;
    const pc = this._ensureSubscriber();
    const offered = new Map(msg.tracks.map((t) => [t.mid, t]));
    // An m-line the previous offer listed and this one does not is being removed.
    for (const [sid, remote] of this._remote) {
      if (!offered.has(remote.mid) || offered.get(remote.mid).track !== sid) this._removeRemote(sid);
    }
    // `ontrack` fires inside setRemoteDescription, so the mid map must be ready before it.
    this._midMap = offered;
    for (const t of msg.tracks) {
      if (!this._remote.has(t.track)) {
        this._remote.set(t.track, { sid: t.track, mid: t.mid, participant: t.participant, emitted: false });
      }
    }
    await pc.setRemoteDescription({ type: 'offer', sdp: msg.sdp });
    const answer = await pc.createAnswer();
    // Receiver reference times (see withRrtr); a browser that refuses the edited answer gets
    // its own, and its NACKs are only repeated less often.
    const sdp = withRrtr(answer.sdp, msg.sdp);
    if (sdp === answer.sdp) await pc.setLocalDescription(answer);
    else await pc.setLocalDescription({ type: 'answer', sdp }).catch(() => pc.setLocalDescription(answer));
    if (gen !== this._gen) return;
    await this.request('answer', { sdp: pc.localDescription.sdp });
  }

  _onRemoteTrack(e) {
    const mid = e.transceiver?.mid;
    // The server's offer names the track for each mid; its `a=msid` carries the sid as well.
    const sid = this._midMap.get(mid)?.track ?? e.track.id;
    const remote = this._remote.get(sid);
    if (!remote) return; // unpublished while the offer was being applied
    remote.mediaTrack = e.track;
    remote.receiver = e.receiver;
    // One stream per track, not the server's per-participant stream: a tile shows one video,
    // audio plays from its own element, and removing a track touches nothing else.
    remote.stream = new MediaStream([e.track]);
    this._maybeEmitTrack(remote);
  }

  /** Emits `track` once both the media (ontrack) and its description (track_published) are in. */
  _maybeEmitTrack(remote) {
    const info = this.tracks.get(remote.sid);
    if (remote.emitted || !remote.mediaTrack || !info) return;
    remote.emitted = true;
    this._emit('track', {
      track: info,
      participant: this._participant(info.participant),
      stream: remote.stream,
      mediaTrack: remote.mediaTrack,
      receiver: remote.receiver,
    });
  }

  _removeRemote(sid, info = this.tracks.get(sid)) {
    const remote = this._remote.get(sid);
    if (!remote) return;
    this._remote.delete(sid);
    this._statsPrev.delete(sid);
    this._layers.delete(sid);
    this.unobserveVideo(sid);
    if (remote.emitted) {
      this._emit('track_removed', {
        track: info ?? { sid, participant: remote.participant },
        participant: this._participant(remote.participant),
        stream: remote.stream,
        mediaTrack: remote.mediaTrack,
      });
    }
  }

  // ------------------------------------------------------------------ ICE and media state

  _sendCandidate(target, candidate) {
    if (candidate?.candidate) this._gathered[target] += 1;
    if (target === 'publisher' && !this._pubOfferSent) {
      this._pubCandidates.push(candidate);
      return;
    }
    // A null candidate (gathering done) is sent as "" (end of candidates). The server is
    // ICE-lite and learns our address from our connectivity checks anyway, so a lost one is harmless.
    this.request('candidate', { target, candidate: candidate?.candidate ?? '' })
      .catch(expected('sending an ICE candidate; the server learns our address from our checks anyway'));
  }

  _onConnectionState(target, pc) {
    if (pc !== this._pub && pc !== this._sub) return;
    const state = pc.connectionState;
    this._emit('connection_state', { target, state });
    if (state === 'connected') {
      pc._everConnected = true;
      clearTimeout(this._iceRestartTimers.get(target));
      this._iceRestartTimers.delete(target);
    } else if (state === 'failed' && !pc._everConnected) {
      this._emitError(neverConnected(target, this._gathered[target], this.options.iceTransportPolicy));
    } else if (pc._everConnected && (state === 'failed' || state === 'disconnected')) {
      // A network change (new address, Wi-Fi to mobile): restart ICE, at once when failed,
      // after a moment when only disconnected (that often heals by itself).
      this._scheduleIceRestart(target, state === 'failed' ? 0 : ICE_RESTART_DELAY_MS);
    }
  }

  /** Restarts ICE on one media connection after `delay` ms, if it has not recovered by then. */
  _scheduleIceRestart(target, delay) {
    if (this._iceRestartTimers.has(target)) return;
    this._iceRestartTimers.set(target, setTimeout(() => {
      this._iceRestartTimers.delete(target);
      const pc = target === 'publisher' ? this._pub : this._sub;
      if (!pc || pc.signalingState === 'closed' || this.state !== 'joined') return;
      if (!['disconnected', 'failed'].includes(pc.iceConnectionState)) return;
      console.info(`sfu: the ${target} media connection is ${pc.iceConnectionState}; restarting ICE`);
      this._emit('ice_restart', { target });
      this._restartIceOf(target)
        .catch((err) => this._emitError(err, `restarting ICE on the ${target} connection failed`));
    }, delay));
  }

  /**
   * Stats for one track, local or remote: {width, height, fps, bitrate (bit/s), rtt (s), layer}.
   * `layer` is the simulcast rid the server says it forwards (remote video, once it has said).
   * Any field may be undefined (no frames yet, audio, or a browser that does not report it).
   *
   * `bitrate` and `fps` are measured here, from the growth of the byte and frame counters
   * (bytesReceived/bytesSent, framesDecoded/framesEncoded) between two calls at least
   * MIN_STATS_INTERVAL_MS apart; until two such calls were made they are undefined, never a
   * made-up 0. A call sooner than that returns the previous measurement. A 0 is a measured 0:
   * nothing arrived (or was sent) in that interval. For our own simulcast video, the size and
   * frame rate are those of the largest layer being encoded.
   */
  async getTrackStats(trackSid) {
    const remote = this._remote.get(trackSid);
    const layer = remote ? this._layers.get(trackSid)?.layer : undefined;
    const local = [...this.localTracks.values()].find((l) => l.sid === trackSid);
    let report, rtpType, kind;
    if (remote?.receiver) {
      report = await remote.receiver.getStats();
      rtpType = 'inbound-rtp';
      kind = remote.mediaTrack.kind;
    } else if (local?.transceiver) {
      report = await local.transceiver.sender.getStats();
      rtpType = 'outbound-rtp';
      kind = local.kind;
    } else {
      return null;
    }
    const out = { width: undefined, height: undefined, fps: undefined, bitrate: undefined, rtt: undefined, layer };
    /** This call's counters, per RTP stream stats id: a stream that is new has no growth yet. */
    const counters = new Map();
    let time = 0;
    /** RTP streams with a picture, except paused simulcast layers (they keep their last size). */
    const pictures = [];
    let pairId;
    report.forEach((s) => {
      if (s.type === rtpType && (s.kind ?? s.mediaType) === kind) {
        const inbound = rtpType === 'inbound-rtp';
        counters.set(s.id, {
          bytes: (inbound ? s.bytesReceived : s.bytesSent) ?? 0,
          frames: inbound ? s.framesDecoded : s.framesEncoded,
        });
        time = Math.max(time, s.timestamp);
        if (s.frameWidth && s.active !== false) pictures.push(s);
      } else if (s.type === 'remote-inbound-rtp' && s.roundTripTime != null) {
        out.rtt = s.roundTripTime; // from RTCP receiver reports (publisher side)
      } else if (s.type === 'transport' && s.selectedCandidatePairId) {
        pairId = s.selectedCandidatePairId;
      }
    });
    if (out.rtt == null) {
      // Our ICE connectivity checks to the server (it is ICE-lite; we send the checks) time it.
      let pair = pairId ? report.get(pairId) : undefined;
      if (!pair) report.forEach((s) => { if (s.type === 'candidate-pair' && s.nominated && s.state === 'succeeded') pair = s; });
      out.rtt = pair?.currentRoundTripTime;
    }
    const prev = this._statsPrev.get(trackSid);
    const largest = (streams) => streams.reduce((a, b) => (b.frameWidth > (a?.frameWidth ?? 0) ? b : a), null);
    const show = (stream) => {
      out.width = stream?.frameWidth;
      out.height = stream?.frameHeight;
    };
    if (prev && time - prev.time < MIN_STATS_INTERVAL_MS) {
      // Too soon to measure anything: keep the baseline, repeat the last measurement.
      const same = pictures.find((p) => p.id === prev.shownId);
      show(same ?? largest(pictures));
      out.bitrate = prev.bitrate;
      out.fps = same ? prev.fps : undefined;
      return out;
    }
    // With simulcast there is one outbound-rtp per layer: show the largest whose frames still
    // come (an encoder short of bandwidth or CPU stops its top layer and leaves its size behind).
    const moving = pictures.filter((p) => {
      const before = prev?.counters.get(p.id)?.frames;
      return before != null && counters.get(p.id).frames > before;
    });
    const shown = largest(moving.length ? moving : pictures);
    show(shown);
    if (prev) {
      const seconds = (time - prev.time) / 1000;
      let bytes = 0;
      let measured = false;
      for (const [id, now] of counters) {
        const before = prev.counters.get(id);
        // A stream that restarted (its counters went back) is no measurement.
        if (!before || now.bytes < before.bytes) continue;
        bytes += now.bytes - before.bytes;
        measured = true;
      }
      if (measured) out.bitrate = (bytes * 8) / seconds;
      const framesBefore = shown && prev.counters.get(shown.id)?.frames;
      const framesNow = shown && counters.get(shown.id)?.frames;
      if (framesBefore != null && framesNow != null && framesNow >= framesBefore) {
        out.fps = (framesNow - framesBefore) / seconds;
      }
    }
    this._statsPrev.set(trackSid, { time, counters, bitrate: out.bitrate, fps: out.fps, shownId: shown?.id });
    return out;
  }

  /**
   * What the server last said it forwards of a remote video (its `quality_changed`):
   * {quality, layer, reason}, or null before it said anything. `layer` is `"off"` while the
   * video is paused.
   */
  remoteLayer(trackSid) {
    const layer = this._layers.get(trackSid);
    return layer ? { ...layer } : null;
  }

  /**
   * The browser's RTCStatsReport for one track: its receiver's for a remote track, its sender's
   * for one of ours; null if the track has no media yet. For diagnostics and tests.
   */
  async getStatsReport(trackSid) {
    const remote = this._remote.get(trackSid);
    if (remote?.receiver) return remote.receiver.getStats();
    const local = [...this.localTracks.values()].find((l) => l.sid === trackSid);
    if (local?.transceiver) return local.transceiver.sender.getStats();
    return null;
  }

  _resetMedia() {
    /** Bumped on every teardown so that rounds still running for old connections stop. */
    this._gen = (this._gen ?? 0) + 1;
    this._pub = null;
    this._sub = null;
    this._pubChain = Promise.resolve();
    this._subChain = Promise.resolve();
    this._pubDirty = false;
    this._pubOfferSent = false;
    this._pubCandidates = [];
    /** ICE candidates this browser gathered, per connection: none means the browser is at fault. */
    this._gathered = { publisher: 0, subscriber: 0 };
    /** Remote tracks by sid: {sid, mid, participant, mediaTrack, receiver, stream, emitted}. */
    this._remote = new Map();
    this._midMap = new Map();
    this._statsPrev = new Map();
    /** The layer the server forwards per remote track sid: {quality, layer, reason}. */
    this._layers = new Map();
  }

  /** Closes both peer connections. Local tracks stay, ready to be published again on rejoin. */
  _teardownMedia() {
    for (const timer of this._iceRestartTimers.values()) clearTimeout(timer);
    this._iceRestartTimers.clear();
    for (const sid of [...this._remote.keys()]) this._removeRemote(sid);
    this._pub?.close();
    this._sub?.close();
    for (const local of this.localTracks.values()) {
      local._waiter?.reject(new SfuError('disconnected', 'disconnected before the server announced the track'));
      local.transceiver = null;
      local.declared = false;
      local.sid = null;
      local.cid = null;
      local.info = null;
    }
    this._resetMedia();
  }

  _stopLocalTracks() {
    for (const local of [...this.localTracks.values()]) {
      this.localTracks.delete(local.id);
      local.track.stop();
      this._emit('local_track_removed', { local });
    }
  }

  // ------------------------------------------------------------------ helpers

  _setState(state) {
    if (this.state === state) return;
    this.state = state;
    this._emit('state', { state });
  }

  _emit(type, detail) {
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }

  /**
   * Emits `error`. An SfuError's message is already for a person and gets `context` in front;
   * anything else is the browser's own error, whose text ("Failed to execute ... on
   * 'RTCPeerConnection': ...") means nothing to the person: it goes to the console, and the
   * event carries `context` as a sentence with code `browser_error`.
   */
  _emitError(err, context) {
    const error = err instanceof SfuError ? err : browserError(err, context ?? 'something failed in the browser');
    if (context && err instanceof SfuError && !error.message.startsWith(context)) error.message = `${context}: ${error.message}`;
    this._emit('error', { error });
  }
}

// ---------------------------------------------------------------------- module helpers

/**
 * An SfuError for an error the browser threw (a DOMException from RTCPeerConnection or
 * RTCRtpSender): the person reads `what` failed, and the browser's text goes to the console
 * and stays in `cause` for whoever debugs.
 */
export function browserError(err, what) {
  if (err instanceof SfuError) return err;
  console.warn(`sfu: ${what}:`, err);
  const sentence = what.charAt(0).toUpperCase() + what.slice(1);
  return new SfuError('browser_error', `${sentence} (the browser refused; details are in the console).`, { cause: err });
}

/**
 * The error for a media connection that failed before it ever connected. Its message names the
 * likely cause: a browser that gathered no candidate at all cannot reach anyone (its WebRTC is
 * restricted: a privacy setting or extension, or no usable network interface); one that did
 * gather but found no path points at the network between it and the server.
 */
function neverConnected(target, gathered, policy) {
  if (gathered === 0) {
    const what = policy === 'relay'
      ? 'it gathered no relay candidate: the TURN server could not be reached or refused the credentials'
      : 'it gathered no ICE candidate: its WebRTC is restricted (a privacy setting or extension) or it has no usable network interface';
    return new SfuError('ice_gathering_failed', `The browser found no network address to send media from (${target} connection): ${what}.`);
  }
  return new SfuError('media_unreachable', `The ${target} media connection found no path to the server's media address: UDP to the server may be blocked (and TCP and TURN too, if offered), or the server advertises an address this network cannot reach.`);
}

/**
 * A rejection handler for a failure that is expected and harmless where it is used (the `why`):
 * it is logged for whoever debugs, and nothing else needs to know.
 */
function expected(why) {
  return (err) => console.debug(`sfu: ${why}:`, err?.message ?? err);
}

/** `constraints` narrowed to one device, when `deviceId` names one. */
export function withDevice(constraints, deviceId) {
  return deviceId ? { ...constraints, deviceId: { exact: deviceId } } : constraints;
}

/** Runs `publish`; if it fails, stops the tracks of `stream` (opened for it, owned by us). */
async function releaseOnError(stream, publish) {
  try {
    return await publish();
  } catch (err) {
    stream.getTracks().forEach((t) => t.stop());
    throw err;
  }
}

function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

function closeMessage(reason, event, mediaFailure = null) {
  let message = LEAVE_MESSAGES[reason] ?? `The session ended (${reason}).`;
  if (reason === 'media_failed' && mediaFailure) {
    if (mediaFailure.words) return mediaFailure.words;
    const words = MEDIA_FAILURES[mediaFailure.cause] ?? message;
    message = mediaFailure.message ? `${words} (${mediaFailure.message})` : words;
  }
  if (reason === 'disconnected' && event?.code === 1009) {
    message = 'The server closed the connection: a message was too big.';
  } else if (reason === 'disconnected' && event?.code === 4000) {
    message = 'The server stopped answering (keepalive timed out).';
  }
  return message;
}

/** getUserMedia/getDisplayMedia with errors a person can act on. */
export async function getMedia(what, open) {
  if (!navigator.mediaDevices) {
    throw new SfuError('media_unavailable', `${what} access needs a secure page (https:// or http://localhost)`);
  }
  try {
    return await open();
  } catch (e) {
    const why = {
      NotAllowedError: `permission to use the ${what} was denied`,
      NotFoundError: `no ${what} was found`,
      NotReadableError: `the ${what} is in use by another application or could not be started`,
      OverconstrainedError: `the ${what} does not support the requested settings`,
      AbortError: `opening the ${what} was aborted`,
    }[e.name] ?? `could not open the ${what}: ${e.message}`;
    throw new SfuError('media_unavailable', why, { cause: e });
  }
}

/**
 * Puts `mimeType` first in a transceiver's codec list. The server forwards the publisher's
 * codec unchanged, so every subscriber must be able to decode it: VP8 is the one every browser
 * decodes (Chromium builds may lack H.264), and its simulcast works everywhere.
 */
function preferCodec(transceiver, mimeType) {
  if (typeof transceiver.setCodecPreferences !== 'function' || !RTCRtpSender.getCapabilities) return;
  const codecs = RTCRtpSender.getCapabilities(transceiver.sender.track?.kind ?? 'video')?.codecs;
  if (!codecs) return;
  const wanted = mimeType.toLowerCase();
  const first = codecs.filter((c) => c.mimeType.toLowerCase() === wanted);
  if (!first.length) return;
  try {
    transceiver.setCodecPreferences([...first, ...codecs.filter((c) => c.mimeType.toLowerCase() !== wanted)]);
  } catch {
    // Some browsers refuse certain lists; their default order is then fine.
  }
}

/** The track id in the `a=msid:<stream> <track>` line of the m-section with `a=mid:<mid>`. */
function msidTrackId(sdp, mid) {
  for (const section of sdp.split(/\r?\n(?=m=)/).slice(1)) {
    const lines = section.split(/\r?\n/);
    if (!lines.some((l) => l.trim() === `a=mid:${mid}`)) continue;
    const msid = lines.find((l) => l.startsWith('a=msid:'));
    return msid ? msid.trim().split(/\s+/)[1] ?? null : null;
  }
  return null;
}

/**
 * The answer with `a=rtcp-fb:PT rrtr` after each `a=rtcp-fb:PT nack` whose format the offer
 * gave `rrtr`. A connection that only receives learns its round trip from RTCP XR receiver
 * reference times (RFC 3611), which the server answers; Chromium sends them only when its own
 * description lists `rrtr`, and without a round trip it repeats the NACK for a lost
 * retransmission only every 100 ms, long enough for a packet lost twice to freeze the picture.
 */
function withRrtr(answer, offer) {
  const offered = new Set([...offer.matchAll(/^a=rtcp-fb:(\d+) rrtr\r?$/gm)].map((m) => m[1]));
  if (!offered.size) return answer;
  return answer.replace(/^a=rtcp-fb:(\d+) nack(\r?\n)/gm, (line, pt, eol) =>
    offered.has(pt) && !answer.includes(`a=rtcp-fb:${pt} rrtr`) ? `${line}a=rtcp-fb:${pt} rrtr${eol}` : line);
}
