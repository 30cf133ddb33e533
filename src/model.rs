//! The domain model shared by `room/` and `rtc/`: tracks, participants, chat messages, reasons.
//!
//! These are the words of the server, not of one layer: the room keeps participants, tracks and
//! chat in them, media workers describe tracks and speakers with them, and the signaling protocol
//! (`signal/protocol.rs`) sends them as they are. Their serde attributes therefore *are* the wire
//! format of the fields that carry them (docs/protocol.md); change one and the protocol changes.
//! Nothing here depends on another module of the crate.

use serde::{Deserialize, Serialize};

/// A subscriber's choice of video quality; each names a simulcast layer (`q`, `h`, `f`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Quality {
    Off,
    Low,
    Medium,
    High,
}

impl Quality {
    /// The highest layer index (0 = `q`) this quality allows; `None` for off.
    pub fn max_layer(self) -> Option<u8> {
        match self {
            Quality::Off => None,
            Quality::Low => Some(0),
            Quality::Medium => Some(1),
            Quality::High => Some(2),
        }
    }

    pub fn of_layer(layer: Option<u8>) -> Self {
        match layer {
            None => Quality::Off,
            Some(0) => Quality::Low,
            Some(1) => Quality::Medium,
            Some(_) => Quality::High,
        }
    }
}

/// Which of a participant's two peer connections a message is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PeerTarget {
    Publisher,
    Subscriber,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TrackKind {
    Audio,
    Video,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TrackSource {
    Camera,
    Microphone,
    Screen,
    ScreenAudio,
}

impl TrackSource {
    /// What a track is when its publisher did not say.
    pub fn default_for(kind: TrackKind) -> Self {
        match kind {
            TrackKind::Audio => TrackSource::Microphone,
            TrackKind::Video => TrackSource::Camera,
        }
    }
}

/// A published track as every participant sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrackInfo {
    /// Server id of the track ("TR_..."), used in unpublish/mute/subscribe.
    pub sid: String,
    /// Session id of the publishing participant.
    pub participant: String,
    /// The publisher's own track id (`a=msid`), so it can match `track_published` to its track.
    pub cid: String,
    pub kind: TrackKind,
    pub source: TrackSource,
    #[serde(default)]
    pub name: String,
    pub muted: bool,
    /// Simulcast layers (rids) the publisher offered, empty without simulcast.
    #[serde(default)]
    pub layers: Vec<String>,
}

/// What the server forwards of one track now (admin API `GET /api/rooms/{room}`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrackForwarding {
    pub sid: String,
    /// The publisher's participant sid.
    pub participant: String,
    pub kind: TrackKind,
    pub muted: bool,
    pub subscribers: Vec<SubscriberForwarding>,
}

/// One subscriber of a track, as its media worker sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SubscriberForwarding {
    /// The subscriber's participant sid.
    pub participant: String,
    /// The rid of the layer forwarded now (`""` without simulcast), `null` while none is.
    pub layer: Option<String>,
    /// RTP packets forwarded to it so far.
    pub packets: u64,
}

/// One m-line of a subscriber offer: which track it carries.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OfferedTrack {
    pub mid: String,
    pub track: String,
    pub participant: String,
}

/// One entry of `active_speakers`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Speaker {
    pub participant: String,
    /// 0 (loudest) to 127 (silence), RFC 6464 -dBov, smoothed.
    pub level: u8,
}

/// Why a participant left, in `leave` and `participant_left`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LeaveReason {
    /// The client sent `leave`.
    ClientLeft,
    /// The WebSocket closed or went silent.
    Disconnected,
    /// The same identity joined again; the newer session stays.
    Replaced,
    /// Removed through the admin API.
    Kicked,
    /// The server is shutting down.
    ServerShutdown,
    /// The client could not keep up with its messages.
    SlowConsumer,
    /// The client did not join within `signal.join_timeout`.
    JoinTimeout,
    /// The participant's media connection died (ICE/DTLS timeout) or failed.
    MediaFailed,
    /// Cluster mode: this node is draining (SIGTERM); `leave.url` names the node to join.
    NodeDraining,
    /// Cluster mode: the room was open on two nodes at once (Redis lost its placement) and
    /// the other node keeps it; `leave.url` names that node.
    RoomMoved,
}

/// What ended a participant's media, as `media_failed` tells the client (`cause`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureCause {
    /// ICE: the client's consent (checks or keepalives) stopped arriving.
    IceFailed,
    /// DTLS: the handshake failed (certificate type, fingerprint, alert) or the client closed it.
    DtlsFailed,
    /// A fault in the server (a panic in the stack, a restarted media worker).
    Internal,
}

impl FailureCause {
    /// The `reason` label of `sfu_peer_failures_total`.
    pub fn metric_label(self) -> &'static str {
        match self {
            FailureCause::IceFailed => "ice",
            FailureCause::DtlsFailed => "dtls",
            FailureCause::Internal => "panic",
        }
    }
}

/// A participant as others see it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ParticipantInfo {
    /// Session id: new for every join, so a rejoin under the same identity is a new sid.
    pub sid: String,
    pub identity: String,
    pub name: String,
    /// Milliseconds since the Unix epoch.
    pub joined_at: u64,
    pub permissions: Permissions,
    /// What the participant says about itself for the app (`update_metadata`), at most
    /// [`MAX_METADATA_BYTES`]; empty until it does. The server does not read it.
    #[serde(default)]
    pub metadata: String,
}

/// The largest `metadata` a participant may set, in bytes.
pub const MAX_METADATA_BYTES: usize = 4096;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Permissions {
    pub publish: bool,
    pub subscribe: bool,
    pub chat: bool,
}

/// Who sent a chat message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatSender {
    pub sid: String,
    pub identity: String,
    pub name: String,
}

/// One chat message as the server stamped it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatMessage {
    /// Increases by one per message within a room.
    pub id: u64,
    pub sender: ChatSender,
    pub text: String,
    /// Milliseconds since the Unix epoch, by the server's clock.
    pub time: u64,
}

/// What a room tells its participants about each other. The room decides who hears it; the
/// signaling layer turns it into the matching server message (`participant_joined`, ...).
#[derive(Debug, Clone, PartialEq)]
pub enum RoomEvent {
    ParticipantJoined(ParticipantInfo),
    /// A participant changed its metadata.
    ParticipantUpdated(ParticipantInfo),
    ParticipantLeft {
        sid: String,
        identity: String,
        reason: LeaveReason,
    },
    /// A chat message, relayed to everyone but its sender.
    Chat(ChatMessage),
    Typing {
        sid: String,
        identity: String,
        typing: bool,
    },
    TrackPublished(TrackInfo),
    TrackUnpublished {
        track: String,
        participant: String,
    },
    TrackMuted {
        track: String,
        participant: String,
        muted: bool,
    },
}

/// An ICE server a client may use (STUN or TURN), as `joined.ice_servers` lists them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IceServer {
    pub urls: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential: Option<String>,
}
