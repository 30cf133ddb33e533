/**
 * sfu.js: the public browser SDK of the `sfu` server (docs/client.md; types in sfu.d.ts).
 * One dependency-free ES module: `import { Room } from 'https://host:7880/sfu.js'`.
 *
 * What it owns: the object model an app works with — a `Room` with its `LocalParticipant` and
 * `RemoteParticipant`s, their `TrackPublication`s and the `Track`s that play them — and the
 * camelCase events about them. Underneath, one `SfuClient` (sfu-client.js, internal) speaks the
 * wire protocol and owns the WebSocket and both peer connections; nothing of the wire format
 * (snake_case objects, sids in messages) reaches the app. This module also owns what only the
 * object model can do: elements attached to tracks (adaptive stream follows them, the speaker
 * choice applies to them), device selection, and the connection-quality measure per participant.
 */
import { SfuClient, SfuError, browserError, getMedia, withDevice } from './sfu-client.js';

export { SfuError };

/** Every event a Room emits; the payload of each is described in sfu.d.ts (RoomEventMap). */
export const RoomEvent = Object.freeze({
  ConnectionStateChanged: 'connectionStateChanged',
  Connected: 'connected',
  Reconnecting: 'reconnecting',
  Reconnected: 'reconnected',
  Disconnected: 'disconnected',
  ParticipantConnected: 'participantConnected',
  ParticipantDisconnected: 'participantDisconnected',
  ParticipantMetadataChanged: 'participantMetadataChanged',
  TrackPublished: 'trackPublished',
  TrackUnpublished: 'trackUnpublished',
  TrackSubscribed: 'trackSubscribed',
  TrackUnsubscribed: 'trackUnsubscribed',
  TrackSubscriptionFailed: 'trackSubscriptionFailed',
  TrackMuted: 'trackMuted',
  TrackUnmuted: 'trackUnmuted',
  TrackQualityChanged: 'trackQualityChanged',
  LocalTrackPublished: 'localTrackPublished',
  LocalTrackUnpublished: 'localTrackUnpublished',
  LocalTrackPublicationFailed: 'localTrackPublicationFailed',
  LocalTrackReplaced: 'localTrackReplaced',
  ActiveSpeakersChanged: 'activeSpeakersChanged',
  ChatMessage: 'chatMessage',
  TypingChanged: 'typingChanged',
  ConnectionQualityChanged: 'connectionQualityChanged',
  MediaConnectionStateChanged: 'mediaConnectionStateChanged',
  MediaDevicesChanged: 'mediaDevicesChanged',
  Error: 'error',
});

export const ConnectionState = Object.freeze({
  Disconnected: 'disconnected',
  Connecting: 'connecting',
  Connected: 'connected',
  Reconnecting: 'reconnecting',
});

export const TrackSource = Object.freeze({
  Camera: 'camera',
  Microphone: 'microphone',
  ScreenShare: 'screen',
  ScreenShareAudio: 'screen_audio',
});

export const VideoQuality = Object.freeze({
  Auto: 'auto',
  Low: 'low',
  Medium: 'medium',
  High: 'high',
  Off: 'off',
});

export const ConnectionQuality = Object.freeze({
  Excellent: 'excellent',
  Good: 'good',
  Poor: 'poor',
  Lost: 'lost',
  Unknown: 'unknown',
});

/** How often the connection quality of every participant is measured. */
const QUALITY_INTERVAL_MS = 2000;

/**
 * A small typed event emitter: `on(event, listener)` gets one payload object. A listener that
 * throws is reported on the console and does not stop the others (nor the SDK).
 */
class Emitter {
  constructor() {
    this._listeners = new Map();
  }

  on(event, listener) {
    if (!this._listeners.has(event)) this._listeners.set(event, new Set());
    this._listeners.get(event).add(listener);
    return this;
  }

  off(event, listener) {
    this._listeners.get(event)?.delete(listener);
    return this;
  }

  once(event, listener) {
    const wrapped = (payload) => {
      this.off(event, wrapped);
      listener(payload);
    };
    return this.on(event, wrapped);
  }

  emit(event, payload = {}) {
    for (const listener of [...(this._listeners.get(event) ?? [])]) {
      try {
        listener(payload);
      } catch (err) {
        console.error(`sfu: a listener of '${event}' threw`, err);
      }
    }
  }
}

// ---------------------------------------------------------------------- tracks

/** A MediaStreamTrack with what the SDK knows about it, and the elements that play it. */
export class Track {
  constructor(kind, source, mediaStreamTrack, mediaStream) {
    this.kind = kind;
    this.source = source;
    this.mediaStreamTrack = mediaStreamTrack;
    this.mediaStream = mediaStream;
    /** @type {Set<HTMLMediaElement>} */
    this.attachedElements = new Set();
    this.sid = null;
  }

  /**
   * Plays the track in `element` (a new <video> or <audio> when none is given) and returns it.
   * For a remote video with adaptive stream on, the server is told the size the element is
   * drawn at from then on.
   */
  attach(element) {
    const el = element ?? document.createElement(this.kind === 'video' ? 'video' : 'audio');
    el.autoplay = true;
    if (this.kind === 'video') el.playsInline = true;
    if (el.srcObject !== this.mediaStream) el.srcObject = this.mediaStream;
    this.attachedElements.add(el);
    this._onAttached(el);
    return el;
  }

  /** Stops playing the track in `element` (all of its elements when none is given). */
  detach(element) {
    const els = element ? [element] : [...this.attachedElements];
    for (const el of els) {
      if (!this.attachedElements.delete(el)) continue;
      if (el.srcObject === this.mediaStream) el.srcObject = null;
      this._onDetached(el);
    }
    return els;
  }

  _onAttached() {}

  _onDetached() {}

  /** Points every attached element at a new stream (a replaced local device). */
  _setMedia(mediaStreamTrack, mediaStream) {
    this.mediaStreamTrack = mediaStreamTrack;
    this.mediaStream = mediaStream;
    for (const el of this.attachedElements) el.srcObject = mediaStream;
  }
}

export class LocalTrack extends Track {}

export class RemoteTrack extends Track {
  constructor(kind, source, mediaStreamTrack, mediaStream, room) {
    super(kind, source, mediaStreamTrack, mediaStream);
    this._room = room;
  }

  _onAttached(el) {
    if (this.kind === 'audio' || el instanceof HTMLAudioElement) this._room._applySink(el);
    if (this.kind === 'video') this._room._adapt(this.sid);
  }

  _onDetached() {
    if (this.kind === 'video') this._room._adapt(this.sid);
  }
}

// ---------------------------------------------------------------------- publications

/** A track a participant publishes, whether or not this client receives it. */
export class TrackPublication {
  constructor(info, participant) {
    this.participant = participant;
    /** @type {Track|null} */
    this.track = null;
    this._update(info);
  }

  _update(info) {
    this.trackSid = info.sid;
    this.kind = info.kind;
    this.source = info.source;
    this.trackName = info.name ?? '';
    this.isMuted = !!info.muted;
    this.simulcastLayers = [...(info.layers ?? [])];
  }

  get isSubscribed() {
    return this.track !== null;
  }
}

export class LocalTrackPublication extends TrackPublication {
  constructor(info, participant, local, room) {
    super(info, participant);
    this._local = local;
    this._room = room;
    this.track = new LocalTrack(local.kind, local.source, local.track, local.stream);
    this.track.sid = info.sid;
    this.isMuted = local.muted;
  }

  /** Stops sending (nothing is encoded; a camera is released) and the server stops forwarding. */
  mute() {
    return this._room._client.mute(this._local, true);
  }

  /** Sends again; subscribers get a keyframe at once. A released camera is opened again. */
  unmute() {
    return this._room._client.mute(this._local, false);
  }

  /** Stops publishing and releases the device. */
  unpublish() {
    return this._room.localParticipant.unpublishTrack(this);
  }

  /** {width, height, fps, bitrate, rtt} of what we send, measured by the browser. */
  getStats() {
    return this._room._client.getTrackStats(this.trackSid);
  }
}

export class RemoteTrackPublication extends TrackPublication {
  constructor(info, participant, room) {
    super(info, participant);
    this._room = room;
    /** The quality asked for with setVideoQuality (`auto` leaves it to adaptive stream). */
    this.videoQuality = 'auto';
    /** What the server forwards now: {quality, layer, reason}, or null before it said. */
    this.currentLayer = null;
    this._wanted = true;
  }

  /** Asks the server to send (true) or stop sending (false) this track to us. */
  async setSubscribed(subscribed) {
    this._wanted = !!subscribed;
    if (subscribed) await this._room._client.subscribe(this.trackSid);
    else await this._room._client.unsubscribe(this.trackSid);
  }

  /**
   * The simulcast layer to receive: `low`, `medium`, `high`, `off`, or `auto` (adaptive stream
   * picks by the size of the elements the track is attached to, or the server by bandwidth).
   */
  async setVideoQuality(quality) {
    await this._room._client.setQuality(this.trackSid, quality);
    this.videoQuality = quality;
    if (quality === 'auto') this._room._adapt(this.trackSid);
  }

  /** {width, height, fps, bitrate, rtt, layer} of what we receive, measured by the browser. */
  getStats() {
    return this._room._client.getTrackStats(this.trackSid);
  }
}

// ---------------------------------------------------------------------- participants

export class Participant {
  constructor(info, isLocal) {
    this.isLocal = isLocal;
    /** @type {Map<string, TrackPublication>} by track sid */
    this.trackPublications = new Map();
    this.isSpeaking = false;
    /** 0 (silence) to 1 (loudest) while speaking, else 0. */
    this.audioLevel = 0;
    this.connectionQuality = ConnectionQuality.Unknown;
    this._update(info);
  }

  _update(info) {
    this.sid = info?.sid ?? '';
    this.identity = info?.identity ?? '';
    this.name = info?.name || this.identity;
    this.joinedAt = info?.joined_at ? new Date(info.joined_at) : null;
    /** The app's text about this participant (setMetadata), `''` until set. */
    this.metadata = info?.metadata ?? '';
    const p = info?.permissions ?? {};
    this.permissions = { canPublish: !!p.publish, canSubscribe: !!p.subscribe, canChat: !!p.chat };
  }

  /** The publication of a source (`camera`, `microphone`, `screen`, `screen_audio`), if any. */
  getTrackPublication(source) {
    return [...this.trackPublications.values()].find((p) => p.source === source);
  }

  get audioTrackPublications() {
    return [...this.trackPublications.values()].filter((p) => p.kind === 'audio');
  }

  get videoTrackPublications() {
    return [...this.trackPublications.values()].filter((p) => p.kind === 'video');
  }

  get isCameraEnabled() {
    const p = this.getTrackPublication('camera');
    return !!p && !p.isMuted;
  }

  get isMicrophoneEnabled() {
    const p = this.getTrackPublication('microphone');
    return !!p && !p.isMuted;
  }

  get isScreenShareEnabled() {
    return !!this.getTrackPublication('screen');
  }
}

export class RemoteParticipant extends Participant {
  constructor(info) {
    super(info, false);
  }
}

export class LocalParticipant extends Participant {
  constructor(room) {
    super(null, true);
    this._room = room;
  }

  /** Publishes the camera (3-layer simulcast unless `simulcast: false`). */
  async publishCamera({ simulcast = true, deviceId, resolution, name } = {}) {
    const constraints = videoConstraints(deviceId ?? this._room._devices.videoinput, resolution);
    const local = await this._room._client.publishCamera({ simulcast, constraints, name });
    return this._room._localPublication(local);
  }

  async publishMicrophone({ deviceId, echoCancellation = true, noiseSuppression = true, autoGainControl = true, name } = {}) {
    const constraints = withDevice({ echoCancellation, noiseSuppression, autoGainControl }, deviceId ?? this._room._devices.audioinput);
    const local = await this._room._client.publishMicrophone({ constraints, name });
    return this._room._localPublication(local);
  }

  /** Shares a screen or window; `audio: true` shares its sound too when the browser offers it. */
  async publishScreen({ audio = false, name } = {}) {
    const { video, audio: sound } = await this._room._client.publishScreen({ audio, name });
    return {
      video: this._room._localPublication(video),
      audio: sound ? this._room._localPublication(sound) : null,
    };
  }

  /** Publishes any MediaStreamTrack (the caller keeps owning it until unpublished). */
  async publishTrack(mediaStreamTrack, { source, name, simulcast = false } = {}) {
    const local = await this._room._client.publishTrack(mediaStreamTrack, { source, name, simulcast });
    return this._room._localPublication(local);
  }

  async unpublishTrack(publication) {
    await this._room._client.unpublish(publication._local);
  }

  /** Sets our metadata: free text for the app (at most 4 KiB), which everyone in the room gets. */
  async setMetadata(metadata) {
    await this._room._client.setMetadata(metadata);
  }

  /** Turns the camera on (publishing it the first time) or off (muted, device released). */
  async setCameraEnabled(enabled, options) {
    return this._setSourceEnabled('camera', enabled, () => this.publishCamera(options));
  }

  async setMicrophoneEnabled(enabled, options) {
    return this._setSourceEnabled('microphone', enabled, () => this.publishMicrophone(options));
  }

  /** Starts (true) or stops (false) sharing the screen. */
  async setScreenShareEnabled(enabled, options) {
    const screen = this.getTrackPublication('screen');
    if (enabled && !screen) return (await this.publishScreen(options)).video;
    if (!enabled && screen) {
      const sound = this.getTrackPublication('screen_audio');
      await screen.unpublish();
      if (sound) await sound.unpublish();
    }
    return enabled ? screen : null;
  }

  async _setSourceEnabled(source, enabled, publish) {
    const pub = this.getTrackPublication(source);
    if (!pub) return enabled ? publish() : null;
    if (enabled) await pub.unmute();
    else await pub.mute();
    return pub;
  }
}

// ---------------------------------------------------------------------- room

/**
 * One meeting. `connect()` joins the room the token names; the room's participants, their
 * publications and tracks follow the server from then on, and every change is an event.
 */
export class Room extends Emitter {
  /**
   * @param {object} [options] see RoomOptions in sfu.d.ts
   */
  constructor(options = {}) {
    super();
    const { adaptiveStream = true, ...clientOptions } = options;
    this.options = { adaptiveStream, ...clientOptions };
    this.state = ConnectionState.Disconnected;
    this.name = '';
    this.serverInfo = null;
    this.localParticipant = new LocalParticipant(this);
    /** @type {Map<string, RemoteParticipant>} by participant sid */
    this.remoteParticipants = new Map();
    /** @type {Participant[]} loudest first */
    this.activeSpeakers = [];
    /** Chat messages the room kept from before we joined, then every new one. */
    this.chatHistory = [];
    this._devices = { audioinput: undefined, videoinput: undefined, audiooutput: undefined };
    this._qualityTimer = null;
    this._qualityPrev = new Map();
    this._client = new SfuClient(clientOptions);
    this._wire();
    if (globalThis.navigator?.mediaDevices?.addEventListener) {
      this._onDeviceChange = () => this.emit(RoomEvent.MediaDevicesChanged, {});
      navigator.mediaDevices.addEventListener('devicechange', this._onDeviceChange);
    }
  }

  /** Joins the token's room (or `room`, for a token that allows any). */
  async connect(url, token, { room } = {}) {
    try {
      await this._client.connect(url, token);
      await this._client.join(room ? { room } : {});
    } catch (err) {
      if (this._client.state !== 'idle' && this._client.state !== 'closed') await this._client.leave();
      throw err;
    }
  }

  /** Leaves the room; local tracks are stopped and devices released. */
  async disconnect() {
    await this._client.leave();
  }

  getParticipantBySid(sid) {
    if (sid === this.localParticipant.sid) return this.localParticipant;
    return this.remoteParticipants.get(sid);
  }

  getParticipantByIdentity(identity) {
    if (identity === this.localParticipant.identity) return this.localParticipant;
    return [...this.remoteParticipants.values()].find((p) => p.identity === identity);
  }

  /** Sends a chat message; resolves with it as the server stamped it. */
  async sendChatMessage(text) {
    return this._chatMessage(await this._client.sendChat(text));
  }

  /** Tells the others we are typing (true) or stopped (false). */
  setTyping(typing) {
    return this._client.setTyping(typing);
  }

  /** Restarts ICE on both media connections (after a network change). */
  restartIce() {
    return this._client.restartIce();
  }

  /** The devices of one kind (`audioinput`, `videoinput`, `audiooutput`). */
  static async getLocalDevices(kind) {
    if (!navigator.mediaDevices?.enumerateDevices) {
      throw new SfuError('media_unavailable', 'device selection needs a secure page (https:// or http://localhost)');
    }
    const all = await navigator.mediaDevices.enumerateDevices();
    return kind ? all.filter((d) => d.kind === kind) : all;
  }

  /** The device chosen for a kind with switchActiveDevice, if any. */
  getActiveDevice(kind) {
    return this._devices[kind];
  }

  /**
   * Chooses the camera (`videoinput`), microphone (`audioinput`) or speaker (`audiooutput`).
   * A published camera or microphone switches to it at once (same publication, no
   * renegotiation); later publications open it. The speaker applies to every element the
   * room's remote tracks are attached to.
   */
  async switchActiveDevice(kind, deviceId) {
    if (!['audioinput', 'videoinput', 'audiooutput'].includes(kind)) {
      throw new SfuError('bad_request', `unknown device kind '${kind}'`);
    }
    if (kind === 'audiooutput') {
      const probe = document.createElement('audio');
      if (typeof probe.setSinkId !== 'function') {
        throw new SfuError('media_unavailable', 'this browser cannot choose the speaker');
      }
      this._devices.audiooutput = deviceId;
      await Promise.all(this._attachedMediaElements().map((el) => this._applySink(el)));
      return;
    }
    const source = kind === 'videoinput' ? 'camera' : 'microphone';
    const pub = this.localParticipant.getTrackPublication(source);
    if (pub) await this._client.switchDevice(pub._local, deviceId);
    this._devices[kind] = deviceId;
  }

  // -------------------------------------------------------------- internals

  _attachedMediaElements() {
    const els = [];
    for (const p of this.remoteParticipants.values()) {
      for (const pub of p.trackPublications.values()) if (pub.track) els.push(...pub.track.attachedElements);
    }
    return els;
  }

  _applySink(el) {
    const id = this._devices.audiooutput;
    if (id === undefined || typeof el.setSinkId !== 'function' || el.sinkId === id) return Promise.resolve();
    return el.setSinkId(id).catch((err) => this._error(err, 'switching the speaker failed'));
  }

  /**
   * Adaptive stream: the server learns the size of the largest element a remote video is
   * attached to (nothing while it is hidden), unless the app chose a quality for it.
   */
  _adapt(trackSid) {
    const pub = this._remotePublication(trackSid);
    if (!pub?.track || !this.options.adaptiveStream || pub.videoQuality !== 'auto') return;
    const [el] = [...pub.track.attachedElements].filter((e) => e.isConnected)
      .sort((a, b) => b.clientWidth * b.clientHeight - a.clientWidth * a.clientHeight);
    if (el) this._client.observeVideo(trackSid, el);
    else this._client.unobserveVideo(trackSid);
  }

  _remotePublication(trackSid) {
    for (const p of this.remoteParticipants.values()) {
      const pub = p.trackPublications.get(trackSid);
      if (pub) return pub;
    }
    return undefined;
  }

  /** Our publication of the engine's local track `local`, if there is one. */
  _publicationOf(local) {
    return [...this.localParticipant.trackPublications.values()].find((p) => p._local === local);
  }

  _localPublication(local) {
    const lp = this.localParticipant;
    let pub = this._publicationOf(local);
    if (!pub && local.info) {
      pub = new LocalTrackPublication(local.info, lp, local, this);
      lp.trackPublications.set(pub.trackSid, pub);
    }
    return pub;
  }

  _participant(info) {
    if (!info) return undefined;
    if (info.sid === this.localParticipant.sid) return this.localParticipant;
    let p = this.remoteParticipants.get(info.sid);
    if (!p) {
      p = new RemoteParticipant(info);
      this.remoteParticipants.set(info.sid, p);
    }
    return p;
  }

  _chatMessage(m) {
    return {
      id: m.id,
      text: m.text,
      timestamp: new Date(m.time),
      from: { sid: m.sender.sid, identity: m.sender.identity, name: m.sender.name || m.sender.identity },
      participant: this.getParticipantBySid(m.sender.sid),
    };
  }

  _setState(state) {
    if (this.state === state) return;
    this.state = state;
    this.emit(RoomEvent.ConnectionStateChanged, { state });
  }

  _error(err, context) {
    this.emit(RoomEvent.Error, { error: browserError(err, context) });
  }

  /** A remote publication from a wire TrackInfo: created, or updated in place. */
  _remotePublicationFor(info) {
    const participant = this.remoteParticipants.get(info.participant);
    if (!participant) return undefined;
    let pub = participant.trackPublications.get(info.sid);
    if (pub) pub._update(info);
    else {
      pub = new RemoteTrackPublication(info, participant, this);
      participant.trackPublications.set(info.sid, pub);
    }
    return pub;
  }

  _reset() {
    this.remoteParticipants.clear();
    this.activeSpeakers = [];
    this._qualityPrev.clear();
  }

  /** Turns the engine's wire-level events into the object model and its events. */
  _wire() {
    const c = this._client;
    const on = (type, fn) => c.addEventListener(type, ({ detail }) => {
      try {
        fn(detail);
      } catch (err) {
        console.error(`sfu: handling '${type}' failed`, err);
      }
    });

    on('state', ({ state }) => {
      const mapped = { idle: 'disconnected', connecting: 'connecting', connected: 'connecting', joined: 'connected', reconnecting: 'reconnecting', closed: 'disconnected' }[state];
      this._setState(mapped);
    });
    on('joined', (msg) => {
      const again = !!msg.rejoined;
      this.name = msg.room;
      this.serverInfo = msg.server ?? null;
      if (again) {
        // A full rejoin: a new session, everyone announced afresh.
        for (const p of [...this.remoteParticipants.values()]) {
          this.remoteParticipants.delete(p.sid);
          this.emit(RoomEvent.ParticipantDisconnected, { participant: p, reason: 'rejoined' });
        }
        this._reset();
      }
      this.localParticipant._update(msg.participant);
      for (const info of msg.participants) this._participant(info);
      for (const t of msg.tracks) {
        if (t.participant !== this.localParticipant.sid) this._remotePublicationFor(t);
      }
      this.chatHistory = (msg.chat_history ?? []).map((m) => this._chatMessage(m));
      this._startQuality();
      if (again) {
        for (const p of this.remoteParticipants.values()) this.emit(RoomEvent.ParticipantConnected, { participant: p });
        this.emit(RoomEvent.Reconnected, { resumed: false });
      } else {
        this.emit(RoomEvent.Connected, {});
      }
    });
    on('resumed', ({ replayed }) => this.emit(RoomEvent.Reconnected, { resumed: true, replayed }));
    on('reconnecting', (d) => this.emit(RoomEvent.Reconnecting, {
      attempt: d.attempt, maxAttempts: d.maxAttempts, delayMs: d.delay, resume: !!d.resume, message: d.message,
    }));
    on('disconnected', (d) => {
      clearInterval(this._qualityTimer);
      this._qualityTimer = null;
      const participants = [...this.remoteParticipants.values()];
      this._reset();
      this.localParticipant.trackPublications.clear();
      this.emit(RoomEvent.Disconnected, { reason: d.reason, code: d.code ?? d.error?.code ?? d.reason, message: d.message, error: d.error ?? null });
      for (const p of participants) p.trackPublications.clear();
    });
    on('participant_joined', ({ participant }) => {
      const p = this._participant(participant);
      this.emit(RoomEvent.ParticipantConnected, { participant: p });
    });
    on('participant_updated', ({ participant: info }) => {
      const p = this.getParticipantBySid(info.sid);
      if (!p) return;
      const previous = p.metadata;
      p._update(info);
      if (previous !== p.metadata) this.emit(RoomEvent.ParticipantMetadataChanged, { participant: p, previous });
    });
    on('participant_left', ({ sid, reason }) => {
      const p = this.remoteParticipants.get(sid);
      if (!p) return;
      this.remoteParticipants.delete(sid);
      this._qualityPrev.delete(sid);
      this.activeSpeakers = this.activeSpeakers.filter((s) => s !== p);
      this.emit(RoomEvent.ParticipantDisconnected, { participant: p, reason });
    });
    on('track_published', ({ track }) => {
      if (track.participant === this.localParticipant.sid) return; // local_track_published
      const pub = this._remotePublicationFor(track);
      if (pub) this.emit(RoomEvent.TrackPublished, { publication: pub, participant: pub.participant });
    });
    on('track_unpublished', ({ track }) => {
      const participant = this.getParticipantBySid(track.participant);
      const pub = participant?.trackPublications.get(track.sid);
      if (!pub || participant.isLocal) return;
      participant.trackPublications.delete(track.sid);
      this.emit(RoomEvent.TrackUnpublished, { publication: pub, participant });
    });
    on('track', ({ track: info, stream, mediaTrack }) => {
      const pub = this._remotePublicationFor(info);
      if (!pub) return;
      const track = new RemoteTrack(info.kind, info.source, mediaTrack, stream, this);
      track.sid = info.sid;
      pub.track = track;
      this.emit(RoomEvent.TrackSubscribed, { track, publication: pub, participant: pub.participant });
    });
    on('track_removed', ({ track: info }) => {
      const participant = this.remoteParticipants.get(info.participant);
      const pub = participant?.trackPublications.get(info.sid);
      const track = pub?.track;
      if (!track) return;
      pub.track = null;
      track.detach();
      this.emit(RoomEvent.TrackUnsubscribed, { track, publication: pub, participant });
    });
    on('subscription_failed', ({ track, code, message, info }) => {
      const pub = info ? this._remotePublicationFor(info) : undefined;
      this.emit(RoomEvent.TrackSubscriptionFailed, {
        trackSid: track, publication: pub, participant: pub?.participant, error: new SfuError(code, message),
      });
    });
    on('track_muted', ({ track, muted }) => {
      const participant = this.getParticipantBySid(track.participant);
      const pub = participant?.trackPublications.get(track.sid);
      if (!pub) return;
      pub.isMuted = muted;
      this.emit(muted ? RoomEvent.TrackMuted : RoomEvent.TrackUnmuted, { publication: pub, participant });
    });
    on('quality_changed', ({ track, quality, layer, reason }) => {
      const pub = this._remotePublication(track);
      if (!pub) return;
      pub.currentLayer = { quality, layer, reason };
      this.emit(RoomEvent.TrackQualityChanged, { publication: pub, participant: pub.participant, quality, layer, reason });
    });
    on('local_track_published', ({ local }) => {
      const lp = this.localParticipant;
      const pub = this._localPublication(local);
      if (pub) {
        // Published again after a full rejoin: the same publication under its new sid.
        if (lp.trackPublications.get(local.sid) !== pub) {
          for (const [sid, p] of lp.trackPublications) if (p === pub) lp.trackPublications.delete(sid);
          lp.trackPublications.set(local.sid, pub);
        }
        pub._update(local.info);
        pub.track.sid = local.sid;
        pub.isMuted = local.muted;
        this.emit(RoomEvent.LocalTrackPublished, { publication: pub, participant: this.localParticipant });
      }
    });
    on('local_track', ({ local }) => {
      // A device opened again (unmute, device switch) behind an existing publication.
      const pub = this._publicationOf(local);
      if (pub && pub.track.mediaStreamTrack !== local.track) {
        pub.track._setMedia(local.track, local.stream);
        this.emit(RoomEvent.LocalTrackReplaced, { publication: pub, track: pub.track });
      }
    });
    on('local_track_removed', ({ local }) => {
      const lp = this.localParticipant;
      const pub = this._publicationOf(local);
      if (!pub) return;
      lp.trackPublications.delete(pub.trackSid);
      pub.track.detach();
      this.emit(RoomEvent.LocalTrackUnpublished, { publication: pub, participant: lp });
    });
    on('local_track_muted', ({ local, muted }) => {
      const pub = this._publicationOf(local);
      if (!pub) return;
      pub.isMuted = muted;
      this.emit(muted ? RoomEvent.TrackMuted : RoomEvent.TrackUnmuted, { publication: pub, participant: this.localParticipant });
    });
    on('publication_failed', ({ kind, code, message, local }) => {
      this.emit(RoomEvent.LocalTrackPublicationFailed, {
        kind, source: local?.source, error: new SfuError(code, message),
      });
    });
    on('active_speakers', ({ speakers }) => {
      const now = [];
      const levels = new Map(speakers.map((s) => [s.participant, s.level]));
      for (const p of [this.localParticipant, ...this.remoteParticipants.values()]) {
        const level = levels.get(p.sid);
        p.isSpeaking = level !== undefined;
        p.audioLevel = level === undefined ? 0 : Math.max(0, (127 - level) / 127);
      }
      for (const s of speakers) {
        const p = this.getParticipantBySid(s.participant);
        if (p) now.push(p);
      }
      this.activeSpeakers = now;
      this.emit(RoomEvent.ActiveSpeakersChanged, { speakers: now });
    });
    on('chat', ({ message, own }) => {
      const m = this._chatMessage(message);
      this.chatHistory.push(m);
      this.emit(RoomEvent.ChatMessage, { message: m, participant: m.participant, own });
    });
    on('typing', ({ sid, typing }) => {
      const participant = this.getParticipantBySid(sid);
      if (participant) this.emit(RoomEvent.TypingChanged, { participant, typing });
    });
    on('connection_state', ({ target, state }) => {
      this.emit(RoomEvent.MediaConnectionStateChanged, { target, state });
    });
    on('error', ({ error }) => this.emit(RoomEvent.Error, { error }));
  }

  // -------------------------------------------------------------- connection quality

  _startQuality() {
    if (this._qualityTimer) return;
    this._qualityTimer = setInterval(() => {
      this._measureQuality().catch((err) => this._error(err, 'measuring the connection quality failed'));
    }, QUALITY_INTERVAL_MS);
  }

  /**
   * The connection quality of each participant, from what this browser measures. Ours: how
   * our media reaches the server (the loss and round-trip time the server reports back in
   * RTCP). Another participant's: how their media reaches us (loss between what they sent
   * and what arrived, which covers their upstream and our downstream). `lost`: media that
   * should arrive stopped; `unknown`: nothing to measure (no unmuted track).
   */
  async _measureQuality() {
    if (this.state !== ConnectionState.Connected) return;
    const everyone = [this.localParticipant, ...this.remoteParticipants.values()];
    for (const p of everyone) {
      let received = 0;
      let lost = 0;
      let rtt = 0;
      let expecting = false;
      for (const pub of p.trackPublications.values()) {
        if (pub.isMuted || !pub.track) continue;
        const report = await this._client.getStatsReport(pub.trackSid);
        if (!report) continue;
        expecting = true;
        report.forEach((s) => {
          if (p.isLocal && s.type === 'remote-inbound-rtp') {
            // fractionLost is of the last RTCP interval; weigh it as 100 packets' worth.
            lost += (s.fractionLost ?? 0) * 100;
            received += 100;
            rtt = Math.max(rtt, s.roundTripTime ?? 0);
          } else if (!p.isLocal && s.type === 'inbound-rtp') {
            received += s.packetsReceived ?? 0;
            lost += Math.max(0, s.packetsLost ?? 0);
          }
        });
      }
      let quality = ConnectionQuality.Unknown;
      if (expecting) {
        const prev = this._qualityPrev.get(p.sid);
        let r = received;
        let l = lost;
        if (!p.isLocal) {
          this._qualityPrev.set(p.sid, { received, lost });
          r = prev ? received - prev.received : 0;
          l = prev ? lost - prev.lost : 0;
        }
        if (!p.isLocal && !prev) quality = ConnectionQuality.Unknown;
        else if (r <= 0 && !p.isLocal) quality = ConnectionQuality.Lost;
        else quality = qualityOf(r + l > 0 ? l / (r + l) : 0, rtt);
      }
      if (quality !== p.connectionQuality) {
        p.connectionQuality = quality;
        this.emit(RoomEvent.ConnectionQualityChanged, { participant: p, quality });
      }
    }
  }
}

/** Loss fraction and round-trip time (s) to a quality: the thresholds of common meeting apps. */
export function qualityOf(loss, rtt) {
  if (loss > 0.1 || rtt > 0.8) return ConnectionQuality.Poor;
  if (loss > 0.02 || rtt > 0.3) return ConnectionQuality.Good;
  return ConnectionQuality.Excellent;
}

function videoConstraints(deviceId, resolution) {
  return withDevice({
    width: { ideal: resolution?.width ?? 1280 },
    height: { ideal: resolution?.height ?? 720 },
    frameRate: { ideal: resolution?.frameRate ?? 30 },
  }, deviceId);
}

/**
 * A camera and/or microphone preview before joining: opens the devices and returns their
 * tracks; `stop()` releases them. Publish the same devices afterwards by passing their
 * deviceIds (or choosing them with `room.switchActiveDevice`).
 */
export async function createLocalPreview({ video = true, audio = true, videoDeviceId, audioDeviceId } = {}) {
  const what = video && audio ? 'camera and microphone' : video ? 'camera' : 'microphone';
  const stream = await getMedia(what, () => navigator.mediaDevices.getUserMedia({
    video: video ? videoConstraints(videoDeviceId) : false,
    audio: audio ? withDevice({}, audioDeviceId) : false,
  }));
  const [videoTrack] = stream.getVideoTracks();
  const [audioTrack] = stream.getAudioTracks();
  return {
    stream,
    videoTrack: videoTrack ?? null,
    audioTrack: audioTrack ?? null,
    videoDeviceId: videoTrack?.getSettings().deviceId ?? null,
    audioDeviceId: audioTrack?.getSettings().deviceId ?? null,
    stop() {
      stream.getTracks().forEach((t) => t.stop());
    },
  };
}
