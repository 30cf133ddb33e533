/**
 * Types of the `sfu` browser SDK (sfu.js). Every name exported here is documented in
 * docs/client.md; a test (tests/browser/sdk-docs.test.mjs) keeps the two in step.
 */

/** An error with a stable code (the server's error codes, or the SDK's own) and a sentence for people. */
export class SfuError extends Error {
  readonly name: 'SfuError';
  /** e.g. `permission_denied`, `timeout`, `media_unavailable`, `ice_gathering_failed`. */
  readonly code: string;
  /** The browser's own error, when the browser refused something. */
  readonly cause?: unknown;
  /**
   * Cluster mode: the signaling URL of the node to join instead, with `room_on_other_node`,
   * `node_full` and `node_draining` (the client follows it by itself, up to three times).
   */
  readonly url?: string;
  constructor(code: string, message: string, extra?: Record<string, unknown>);
}

export declare const RoomEvent: {
  readonly ConnectionStateChanged: 'connectionStateChanged';
  readonly Connected: 'connected';
  readonly Reconnecting: 'reconnecting';
  readonly Reconnected: 'reconnected';
  readonly Disconnected: 'disconnected';
  readonly ParticipantConnected: 'participantConnected';
  readonly ParticipantDisconnected: 'participantDisconnected';
  readonly ParticipantMetadataChanged: 'participantMetadataChanged';
  readonly TrackPublished: 'trackPublished';
  readonly TrackUnpublished: 'trackUnpublished';
  readonly TrackSubscribed: 'trackSubscribed';
  readonly TrackUnsubscribed: 'trackUnsubscribed';
  readonly TrackSubscriptionFailed: 'trackSubscriptionFailed';
  readonly TrackMuted: 'trackMuted';
  readonly TrackUnmuted: 'trackUnmuted';
  readonly TrackQualityChanged: 'trackQualityChanged';
  readonly LocalTrackPublished: 'localTrackPublished';
  readonly LocalTrackUnpublished: 'localTrackUnpublished';
  readonly LocalTrackPublicationFailed: 'localTrackPublicationFailed';
  readonly LocalTrackReplaced: 'localTrackReplaced';
  readonly ActiveSpeakersChanged: 'activeSpeakersChanged';
  readonly ChatMessage: 'chatMessage';
  readonly TypingChanged: 'typingChanged';
  readonly ConnectionQualityChanged: 'connectionQualityChanged';
  readonly MediaConnectionStateChanged: 'mediaConnectionStateChanged';
  readonly MediaDevicesChanged: 'mediaDevicesChanged';
  readonly Error: 'error';
};

export declare const ConnectionState: {
  readonly Disconnected: 'disconnected';
  readonly Connecting: 'connecting';
  readonly Connected: 'connected';
  readonly Reconnecting: 'reconnecting';
};
export type ConnectionStateValue = (typeof ConnectionState)[keyof typeof ConnectionState];

export declare const TrackSource: {
  readonly Camera: 'camera';
  readonly Microphone: 'microphone';
  readonly ScreenShare: 'screen';
  readonly ScreenShareAudio: 'screen_audio';
};
export type TrackSourceValue = (typeof TrackSource)[keyof typeof TrackSource];

export declare const VideoQuality: {
  readonly Auto: 'auto';
  readonly Low: 'low';
  readonly Medium: 'medium';
  readonly High: 'high';
  readonly Off: 'off';
};
export type VideoQualityValue = (typeof VideoQuality)[keyof typeof VideoQuality];

export declare const ConnectionQuality: {
  readonly Excellent: 'excellent';
  readonly Good: 'good';
  readonly Poor: 'poor';
  readonly Lost: 'lost';
  readonly Unknown: 'unknown';
};
export type ConnectionQualityValue = (typeof ConnectionQuality)[keyof typeof ConnectionQuality];

/** What the browser measures of one track. Any field may be missing (not measured yet). */
export interface TrackStats {
  width?: number;
  height?: number;
  fps?: number;
  /** bit/s */
  bitrate?: number;
  /** seconds */
  rtt?: number;
  /** The simulcast rid the server forwards (remote video), `off` when paused. */
  layer?: string;
}

/** The layer the server forwards of a remote video, and why it changed. */
export interface LayerInfo {
  quality: 'low' | 'medium' | 'high' | 'off';
  /** `q`, `h`, `f`, `""` without simulcast, `off` when nothing is forwarded. */
  layer: string;
  reason: 'start' | 'request' | 'bandwidth' | 'publisher' | 'layer_lost';
}

export interface ChatMessage {
  id: number;
  text: string;
  timestamp: Date;
  from: { sid: string; identity: string; name: string };
  /** The sender, if still in the room. */
  participant?: Participant;
}

export interface RoomOptions {
  /** Tell the server the size of the elements remote videos are attached to (default true). */
  adaptiveStream?: boolean;
  /** Resume, or else rejoin, on its own after the socket drops (default true). */
  reconnect?: boolean;
  maxReconnectAttempts?: number;
  /** ms to wait for the server's answer to a request (default 10000). */
  requestTimeout?: number;
  /** ms between keepalive pings (default 15000; 0 disables them). */
  pingInterval?: number;
  /** `relay`: media only through TURN (default `all`). */
  iceTransportPolicy?: 'all' | 'relay';
}

export interface CameraOptions {
  simulcast?: boolean;
  deviceId?: string;
  resolution?: { width?: number; height?: number; frameRate?: number };
  name?: string;
}

export interface MicrophoneOptions {
  deviceId?: string;
  echoCancellation?: boolean;
  noiseSuppression?: boolean;
  autoGainControl?: boolean;
  name?: string;
}

export interface ScreenShareOptions {
  audio?: boolean;
  name?: string;
}

export interface TrackOptions {
  source?: TrackSourceValue;
  name?: string;
  simulcast?: boolean;
}

export interface LocalPreview {
  stream: MediaStream;
  videoTrack: MediaStreamTrack | null;
  audioTrack: MediaStreamTrack | null;
  videoDeviceId: string | null;
  audioDeviceId: string | null;
  stop(): void;
}

export class Track {
  readonly kind: 'audio' | 'video';
  readonly source: TrackSourceValue;
  /** The track's sid on the server. */
  sid: string | null;
  mediaStreamTrack: MediaStreamTrack;
  mediaStream: MediaStream;
  readonly attachedElements: Set<HTMLMediaElement>;
  attach<E extends HTMLMediaElement>(element?: E): E;
  detach(element?: HTMLMediaElement): HTMLMediaElement[];
}
export class LocalTrack extends Track {}
export class RemoteTrack extends Track {}

export class TrackPublication {
  readonly trackSid: string;
  readonly kind: 'audio' | 'video';
  readonly source: TrackSourceValue;
  readonly trackName: string;
  readonly isMuted: boolean;
  /** The simulcast rids the publisher sends (`q`, `h`, `f`), empty without simulcast. */
  readonly simulcastLayers: string[];
  readonly participant: Participant;
  readonly track: Track | null;
  readonly isSubscribed: boolean;
}

export class LocalTrackPublication extends TrackPublication {
  readonly track: LocalTrack;
  mute(): Promise<void>;
  unmute(): Promise<void>;
  unpublish(): Promise<void>;
  getStats(): Promise<TrackStats | null>;
}

export class RemoteTrackPublication extends TrackPublication {
  readonly track: RemoteTrack | null;
  readonly videoQuality: VideoQualityValue;
  readonly currentLayer: LayerInfo | null;
  setSubscribed(subscribed: boolean): Promise<void>;
  setVideoQuality(quality: VideoQualityValue): Promise<void>;
  getStats(): Promise<TrackStats | null>;
}

export class Participant {
  readonly sid: string;
  readonly identity: string;
  readonly name: string;
  readonly joinedAt: Date | null;
  /** The app's text about this participant, `''` until set. */
  readonly metadata: string;
  readonly isLocal: boolean;
  readonly permissions: { canPublish: boolean; canSubscribe: boolean; canChat: boolean };
  readonly trackPublications: Map<string, TrackPublication>;
  readonly isSpeaking: boolean;
  /** 0 (silence) to 1 (loudest) while speaking. */
  readonly audioLevel: number;
  readonly connectionQuality: ConnectionQualityValue;
  readonly audioTrackPublications: TrackPublication[];
  readonly videoTrackPublications: TrackPublication[];
  readonly isCameraEnabled: boolean;
  readonly isMicrophoneEnabled: boolean;
  readonly isScreenShareEnabled: boolean;
  getTrackPublication(source: TrackSourceValue): TrackPublication | undefined;
}

export class RemoteParticipant extends Participant {
  readonly trackPublications: Map<string, RemoteTrackPublication>;
  getTrackPublication(source: TrackSourceValue): RemoteTrackPublication | undefined;
}

export class LocalParticipant extends Participant {
  readonly trackPublications: Map<string, LocalTrackPublication>;
  getTrackPublication(source: TrackSourceValue): LocalTrackPublication | undefined;
  publishCamera(options?: CameraOptions): Promise<LocalTrackPublication>;
  publishMicrophone(options?: MicrophoneOptions): Promise<LocalTrackPublication>;
  publishScreen(options?: ScreenShareOptions): Promise<{ video: LocalTrackPublication; audio: LocalTrackPublication | null }>;
  publishTrack(track: MediaStreamTrack, options?: TrackOptions): Promise<LocalTrackPublication>;
  unpublishTrack(publication: LocalTrackPublication): Promise<void>;
  setMetadata(metadata: string): Promise<void>;
  setCameraEnabled(enabled: boolean, options?: CameraOptions): Promise<LocalTrackPublication | null>;
  setMicrophoneEnabled(enabled: boolean, options?: MicrophoneOptions): Promise<LocalTrackPublication | null>;
  setScreenShareEnabled(enabled: boolean, options?: ScreenShareOptions): Promise<LocalTrackPublication | null>;
}

/** The payload of each Room event. */
export interface RoomEventMap {
  connectionStateChanged: { state: ConnectionStateValue };
  connected: Record<string, never>;
  reconnecting: { attempt: number; maxAttempts: number | null; delayMs: number; resume: boolean; message: string };
  reconnected: { resumed: boolean; replayed?: number };
  disconnected: { reason: string; code: string; message: string; error: SfuError | null };
  participantConnected: { participant: RemoteParticipant };
  participantDisconnected: { participant: RemoteParticipant; reason: string };
  participantMetadataChanged: { participant: Participant; previous: string };
  trackPublished: { publication: RemoteTrackPublication; participant: RemoteParticipant };
  trackUnpublished: { publication: RemoteTrackPublication; participant: RemoteParticipant };
  trackSubscribed: { track: RemoteTrack; publication: RemoteTrackPublication; participant: RemoteParticipant };
  trackUnsubscribed: { track: RemoteTrack; publication: RemoteTrackPublication; participant: RemoteParticipant };
  trackSubscriptionFailed: { trackSid: string; publication?: RemoteTrackPublication; participant?: RemoteParticipant; error: SfuError };
  trackMuted: { publication: TrackPublication; participant: Participant };
  trackUnmuted: { publication: TrackPublication; participant: Participant };
  trackQualityChanged: { publication: RemoteTrackPublication; participant: RemoteParticipant } & LayerInfo;
  localTrackPublished: { publication: LocalTrackPublication; participant: LocalParticipant };
  localTrackUnpublished: { publication: LocalTrackPublication; participant: LocalParticipant };
  localTrackPublicationFailed: { kind: 'audio' | 'video'; source?: TrackSourceValue; error: SfuError };
  localTrackReplaced: { publication: LocalTrackPublication; track: LocalTrack };
  activeSpeakersChanged: { speakers: Participant[] };
  chatMessage: { message: ChatMessage; participant?: Participant; own: boolean };
  typingChanged: { participant: Participant; typing: boolean };
  connectionQualityChanged: { participant: Participant; quality: ConnectionQualityValue };
  mediaConnectionStateChanged: { target: 'publisher' | 'subscriber'; state: RTCPeerConnectionState };
  mediaDevicesChanged: Record<string, never>;
  error: { error: SfuError };
}

export class Room {
  constructor(options?: RoomOptions);
  readonly options: RoomOptions;
  readonly state: ConnectionStateValue;
  readonly name: string;
  readonly serverInfo: { version: string; protocol: number } | null;
  readonly localParticipant: LocalParticipant;
  readonly remoteParticipants: Map<string, RemoteParticipant>;
  readonly activeSpeakers: Participant[];
  readonly chatHistory: ChatMessage[];
  connect(url: string, token: string, options?: { room?: string }): Promise<void>;
  disconnect(): Promise<void>;
  getParticipantBySid(sid: string): Participant | undefined;
  getParticipantByIdentity(identity: string): Participant | undefined;
  sendChatMessage(text: string): Promise<ChatMessage>;
  setTyping(typing: boolean): Promise<void>;
  restartIce(): Promise<void>;
  getActiveDevice(kind: MediaDeviceKind): string | undefined;
  switchActiveDevice(kind: MediaDeviceKind, deviceId: string): Promise<void>;
  on<E extends keyof RoomEventMap>(event: E, listener: (payload: RoomEventMap[E]) => void): this;
  off<E extends keyof RoomEventMap>(event: E, listener: (payload: RoomEventMap[E]) => void): this;
  once<E extends keyof RoomEventMap>(event: E, listener: (payload: RoomEventMap[E]) => void): this;
  static getLocalDevices(kind?: MediaDeviceKind): Promise<MediaDeviceInfo[]>;
}

/** Loss fraction (0–1) and round-trip time (s) to a connection quality. */
export function qualityOf(loss: number, rtt: number): 'excellent' | 'good' | 'poor';

/** Opens camera and/or microphone for a preview before joining. */
export function createLocalPreview(options?: {
  video?: boolean;
  audio?: boolean;
  videoDeviceId?: string;
  audioDeviceId?: string;
}): Promise<LocalPreview>;
