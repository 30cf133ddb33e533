//! Signaling protocol v1: every message a client sends and receives, as JSON over WebSocket.
//!
//! docs/protocol.md describes each one with examples; this file is the source of truth for
//! their shape, together with the domain types in `model.rs` that messages carry as they are
//! (tracks, participants, chat messages, reasons): this file only serialises them. A client message is an object with a `type` and an optional `id`; the server
//! answers every such request exactly once, with its response (carrying `request_id`) or an
//! `error` (carrying `request_id`, a stable `code` and a human `message`). Events the server
//! sends on its own carry no `request_id`.

use serde::{Deserialize, Serialize};

use crate::model::{
    ChatMessage, FailureCause, LeaveReason, OfferedTrack, ParticipantInfo, PeerTarget, Quality,
    RoomEvent, Speaker, TrackInfo, TrackKind, TrackSource,
};

/// The protocol version this server speaks. A client may send it in `join`.
pub const PROTOCOL_VERSION: u32 = 1;
/// Longest request id a client may send.
pub const MAX_REQUEST_ID_BYTES: usize = 64;

/// Message types reserved for later versions; answered with `not_supported`.
pub const RESERVED_TYPES: &[&str] = &[];

/// A request from a client, after its envelope (`type`, `id`) is read.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Request {
    /// Join a room. The token may instead come with the upgrade (`/ws?token=`).
    Join {
        #[serde(default)]
        id: Option<String>,
        #[serde(default)]
        token: Option<String>,
        /// When given, must equal the token's room.
        #[serde(default)]
        room: Option<String>,
        #[serde(default)]
        protocol: Option<u32>,
    },
    /// On a new connection, instead of `join`: take over the session whose socket dropped, within
    /// `resume_window_ms` of the drop. `received` counts the messages the client had from that
    /// session, `joined` being the first. The server sends every later one again, in order, then
    /// answers `resumed`.
    Resume {
        #[serde(default)]
        id: Option<String>,
        token: String,
        received: u64,
    },
    /// Leave the room; the server answers `leave{reason:"client_left"}` and closes.
    Leave {
        #[serde(default)]
        id: Option<String>,
    },
    /// Send a chat message to the room.
    Chat {
        #[serde(default)]
        id: Option<String>,
        text: String,
    },
    /// Tell the room this participant is (or stopped) typing. Not stored.
    Typing {
        #[serde(default)]
        id: Option<String>,
        typing: bool,
    },
    /// Sets this participant's metadata (free text for the app, at most 4 KiB); answered, and
    /// announced to the others, with `participant_updated`.
    UpdateMetadata {
        #[serde(default)]
        id: Option<String>,
        metadata: String,
    },
    /// Keepalive; answered with `pong`.
    Ping {
        #[serde(default)]
        id: Option<String>,
    },
    /// Declares a track before it appears in an offer: its source and name. `cid` is the
    /// client's track id, the one in the SDP's `a=msid` line.
    Publish {
        #[serde(default)]
        id: Option<String>,
        cid: String,
        kind: TrackKind,
        #[serde(default)]
        source: Option<TrackSource>,
        #[serde(default)]
        name: Option<String>,
    },
    /// The publisher connection's SDP offer; answered with `answer`.
    Offer {
        #[serde(default)]
        id: Option<String>,
        sdp: String,
    },
    /// The answer to the server's subscriber `offer`.
    Answer {
        #[serde(default)]
        id: Option<String>,
        sdp: String,
    },
    /// A trickled ICE candidate of the client's publisher or subscriber connection.
    Candidate {
        #[serde(default)]
        id: Option<String>,
        target: PeerTarget,
        /// The `candidate:...` attribute value; empty means end of candidates.
        candidate: String,
    },
    /// Stops publishing a track (by its server `sid`).
    Unpublish {
        #[serde(default)]
        id: Option<String>,
        track: String,
    },
    /// Mutes or unmutes one of this participant's tracks.
    Mute {
        #[serde(default)]
        id: Option<String>,
        track: String,
        muted: bool,
    },
    /// Starts forwarding a track to this participant.
    Subscribe {
        #[serde(default)]
        id: Option<String>,
        track: String,
    },
    /// Stops forwarding a track to this participant.
    Unsubscribe {
        #[serde(default)]
        id: Option<String>,
        track: String,
    },
    /// Asks for an ICE restart of the subscriber connection (after a network change): the
    /// server answers `ack`, then sends a subscriber `offer` with new ICE credentials. The
    /// publisher connection restarts the standard way, with an `offer` carrying new ones.
    RestartIce {
        #[serde(default)]
        id: Option<String>,
    },
    /// Chooses the simulcast layer of a video track this participant receives: a quality, or
    /// the size of the element showing it (the server picks the smallest layer that fills it).
    SetQuality {
        #[serde(default)]
        id: Option<String>,
        track: String,
        #[serde(default)]
        quality: Option<Quality>,
        #[serde(default)]
        width: Option<u32>,
        #[serde(default)]
        height: Option<u32>,
    },
}

impl Request {
    /// The request id the answer must carry.
    pub fn id(&self) -> Option<&str> {
        match self {
            Request::Join { id, .. }
            | Request::Resume { id, .. }
            | Request::Leave { id }
            | Request::Chat { id, .. }
            | Request::Typing { id, .. }
            | Request::UpdateMetadata { id, .. }
            | Request::Ping { id }
            | Request::Publish { id, .. }
            | Request::Offer { id, .. }
            | Request::Answer { id, .. }
            | Request::Candidate { id, .. }
            | Request::Unpublish { id, .. }
            | Request::Mute { id, .. }
            | Request::Subscribe { id, .. }
            | Request::Unsubscribe { id, .. }
            | Request::RestartIce { id }
            | Request::SetQuality { id, .. } => id.as_deref(),
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            Request::Join { .. } => "join",
            Request::Resume { .. } => "resume",
            Request::Leave { .. } => "leave",
            Request::Chat { .. } => "chat",
            Request::Typing { .. } => "typing",
            Request::UpdateMetadata { .. } => "update_metadata",
            Request::Ping { .. } => "ping",
            Request::Publish { .. } => "publish",
            Request::Offer { .. } => "offer",
            Request::Answer { .. } => "answer",
            Request::Candidate { .. } => "candidate",
            Request::Unpublish { .. } => "unpublish",
            Request::Mute { .. } => "mute",
            Request::Subscribe { .. } => "subscribe",
            Request::Unsubscribe { .. } => "unsubscribe",
            Request::SetQuality { .. } => "set_quality",
            Request::RestartIce { .. } => "restart_ice",
        }
    }
}

/// Types a client may send, for metric labels and the `unknown_type` check.
pub const REQUEST_TYPES: &[&str] = &[
    "join",
    "resume",
    "leave",
    "chat",
    "typing",
    "update_metadata",
    "ping",
    "publish",
    "offer",
    "answer",
    "candidate",
    "unpublish",
    "mute",
    "subscribe",
    "unsubscribe",
    "set_quality",
    "restart_ice",
];

/// A message that could not be read as a request, with what to answer.
#[derive(Debug, Clone, PartialEq)]
pub struct BadRequest {
    /// The request id, when the message had a readable one.
    pub id: Option<String>,
    /// Its type, when it had a readable one (for metrics: one of a fixed set, or "unknown").
    pub kind: &'static str,
    pub code: ErrorCode,
    pub message: String,
}

/// Reads one text frame. Errors say what was wrong in terms a client developer can act on.
pub fn parse_request(text: &str) -> Result<Request, BadRequest> {
    let value: serde_json::Value = serde_json::from_str(text).map_err(|e| BadRequest {
        id: None,
        kind: "invalid",
        code: ErrorCode::BadJson,
        message: format!("message is not valid JSON: {e}"),
    })?;
    let serde_json::Value::Object(object) = &value else {
        return Err(BadRequest {
            id: None,
            kind: "invalid",
            code: ErrorCode::BadRequest,
            message: "message must be a JSON object".into(),
        });
    };
    let id = match object.get("id") {
        None | Some(serde_json::Value::Null) => None,
        Some(serde_json::Value::String(s)) if s.len() <= MAX_REQUEST_ID_BYTES => Some(s.clone()),
        Some(_) => {
            return Err(BadRequest {
                id: None,
                kind: "invalid",
                code: ErrorCode::BadRequest,
                message: format!("`id` must be a string of at most {MAX_REQUEST_ID_BYTES} bytes"),
            })
        }
    };
    let bad = |kind, code, message: String| BadRequest {
        id: id.clone(),
        kind,
        code,
        message,
    };
    let kind = match object.get("type") {
        Some(serde_json::Value::String(t)) => t.as_str(),
        Some(_) => {
            return Err(bad(
                "invalid",
                ErrorCode::BadRequest,
                "`type` must be a string".into(),
            ))
        }
        None => {
            return Err(bad(
                "invalid",
                ErrorCode::BadRequest,
                "missing field `type`".into(),
            ))
        }
    };
    let Some(known) = REQUEST_TYPES.iter().find(|t| **t == kind) else {
        if let Some(reserved) = RESERVED_TYPES.iter().find(|t| **t == kind) {
            return Err(bad(
                reserved,
                ErrorCode::NotSupported,
                format!("`{kind}` is not supported by this server yet"),
            ));
        }
        return Err(bad(
            "unknown",
            ErrorCode::UnknownType,
            format!("unknown message type `{}`", truncate(kind, 64)),
        ));
    };
    serde_json::from_value(value).map_err(|e| {
        bad(
            known,
            ErrorCode::BadRequest,
            format!("bad `{known}` message: {e}"),
        )
    })
}

fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Stable error codes. Clients branch on these; the text beside them is for people.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The frame is not JSON.
    BadJson,
    /// JSON, but not a valid request: not an object, missing or wrong fields.
    BadRequest,
    /// A `type` this server does not know.
    UnknownType,
    /// A reserved type this server does not implement yet.
    NotSupported,
    /// A request that needs a joined participant, before `join`.
    NotJoined,
    /// A second `join` on one connection.
    AlreadyJoined,
    /// No token, or a forged, malformed or unknown-key token.
    Unauthorized,
    /// The token has expired.
    TokenExpired,
    /// `join.room` differs from the token's room.
    WrongRoom,
    /// The token's grants do not allow this request.
    PermissionDenied,
    /// The room has `room.max_participants` participants.
    RoomFull,
    /// The server has `room.max_rooms` rooms.
    RoomLimit,
    /// The server has `room.max_total_participants` participants in all its rooms.
    ServerFull,
    /// A chat message longer than `chat.max_message_bytes`.
    ChatTooLong,
    /// Empty chat message.
    ChatEmpty,
    /// `update_metadata` with more than 4 KiB of metadata.
    MetadataTooLong,
    /// Sending faster than the chat or signaling rate limit.
    RateLimited,
    /// `join.protocol` is a version this server does not speak.
    UnsupportedProtocol,
    /// An SDP offer or answer the server cannot accept.
    BadSdp,
    /// No track with that sid (or not one of yours, for unpublish/mute).
    TrackNotFound,
    /// Media failed for this participant (its peer connection died or failed).
    MediaFailed,
    /// The media worker hosting the room could not take the request in time; retry later.
    ServerBusy,
    /// The subscriber's answer accepted none of a track's formats.
    CodecNotSupported,
    /// More tracks declared with `publish` than a participant may have waiting.
    TrackLimit,
    /// A `resume` that cannot be honoured (unknown or used token, session over, messages the
    /// client missed no longer kept): join again.
    ResumeFailed,
    /// Cluster mode: the room lives on another node; `url` is its signaling WebSocket.
    RoomOnOtherNode,
    /// Cluster mode: this node is at its capacity and the room is not on it; `url` names a
    /// less-loaded node.
    NodeFull,
    /// Cluster mode: this node is draining; `url` names a node to join instead.
    NodeDraining,
    /// Something failed inside the server; the connection goes on.
    Internal,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadJson => "bad_json",
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::UnknownType => "unknown_type",
            ErrorCode::NotSupported => "not_supported",
            ErrorCode::NotJoined => "not_joined",
            ErrorCode::AlreadyJoined => "already_joined",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::TokenExpired => "token_expired",
            ErrorCode::WrongRoom => "wrong_room",
            ErrorCode::PermissionDenied => "permission_denied",
            ErrorCode::RoomFull => "room_full",
            ErrorCode::RoomLimit => "room_limit",
            ErrorCode::ServerFull => "server_full",
            ErrorCode::ChatTooLong => "chat_too_long",
            ErrorCode::ChatEmpty => "chat_empty",
            ErrorCode::MetadataTooLong => "metadata_too_long",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::UnsupportedProtocol => "unsupported_protocol",
            ErrorCode::BadSdp => "bad_sdp",
            ErrorCode::TrackNotFound => "track_not_found",
            ErrorCode::MediaFailed => "media_failed",
            ErrorCode::ServerBusy => "server_busy",
            ErrorCode::CodecNotSupported => "codec_not_supported",
            ErrorCode::TrackLimit => "track_limit",
            ErrorCode::ResumeFailed => "resume_failed",
            ErrorCode::RoomOnOtherNode => "room_on_other_node",
            ErrorCode::NodeFull => "node_full",
            ErrorCode::NodeDraining => "node_draining",
            ErrorCode::Internal => "internal",
        }
    }
}

/// What the server tells about itself in `joined`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServerInfo {
    pub version: String,
    pub protocol: u32,
}

/// An ICE server a client may use, as `joined` lists them.
pub use crate::model::IceServer;

/// Every message the server sends.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerMessage {
    /// The answer to `join`.
    Joined {
        server: ServerInfo,
        room: String,
        /// This participant.
        participant: ParticipantInfo,
        /// Everyone else in the room.
        participants: Vec<ParticipantInfo>,
        /// The room's last messages, oldest first.
        chat_history: Vec<ChatMessage>,
        /// Every track published in the room now.
        tracks: Vec<TrackInfo>,
        ice_servers: Vec<IceServer>,
        /// Presented in `resume` after the socket drops; absent when resume is off.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        resume_token: Option<String>,
        /// How long after a drop the session waits for the resume (0: resume is off).
        resume_window_ms: u64,
    },
    /// The answer to `resume`, after the messages the client missed.
    Resumed {
        /// The token for the next resume (the one presented is used up).
        resume_token: String,
        /// How many messages were sent again before this answer.
        replayed: u64,
    },
    ParticipantJoined {
        participant: ParticipantInfo,
    },
    /// A participant changed its metadata (the sender's copy is its answer).
    ParticipantUpdated {
        participant: ParticipantInfo,
    },
    ParticipantLeft {
        sid: String,
        identity: String,
        reason: LeaveReason,
    },
    /// A chat message; the sender's copy is its answer and carries its `request_id`.
    Chat {
        message: ChatMessage,
    },
    Typing {
        sid: String,
        identity: String,
        typing: bool,
    },
    /// The answer to a request that has no other response (`typing`, `publish`, ...).
    Ack,
    /// The server's answer to the client's publisher offer.
    Answer {
        sdp: String,
    },
    /// An offer for the subscriber connection; the client answers with `answer`.
    Offer {
        sdp: String,
        tracks: Vec<OfferedTrack>,
    },
    TrackPublished {
        track: TrackInfo,
    },
    TrackUnpublished {
        track: String,
        participant: String,
    },
    TrackMuted {
        track: String,
        participant: String,
        muted: bool,
    },
    /// Who is speaking, loudest first; sent at most every 300 ms, when it changes.
    ActiveSpeakers {
        speakers: Vec<Speaker>,
    },
    /// The layer of a video track this subscriber receives changed.
    QualityChanged {
        track: String,
        quality: Quality,
        /// The simulcast rid now forwarded (`q`, `h`, `f`; `""` without simulcast), or
        /// `"off"` when nothing is.
        layer: String,
        /// `start`, `request`, `bandwidth`, `publisher` or `layer_lost`.
        reason: String,
    },
    /// A track this subscriber cannot receive: its answer accepted none of the track's formats
    /// (a VP8-only answer for an H.264 track). Nothing of it is forwarded.
    SubscriptionFailed {
        track: String,
        code: ErrorCode,
        message: String,
    },
    /// To a publisher: an m-line of its offer the server refused (`codec_not_supported`: none
    /// of its codecs is one the server forwards). Nothing of it is published.
    PublicationFailed {
        cid: String,
        mid: String,
        kind: String,
        code: ErrorCode,
        message: String,
    },
    /// To a publisher: which simulcast layers of its track anyone receives. The client should
    /// stop encoding the others (dynacast) until they are listed again.
    PublisherLayers {
        track: String,
        active: Vec<String>,
    },
    Pong {
        /// Server time, milliseconds since the Unix epoch.
        time: u64,
    },
    /// The session ends; the server closes the socket after it.
    Leave {
        reason: LeaveReason,
        /// With `node_draining`: the signaling URL of the node to join instead.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        url: Option<String>,
    },
    Error {
        code: ErrorCode,
        message: String,
        /// What ended the media, with `media_failed` only.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        cause: Option<FailureCause>,
        /// Where to join instead: the signaling URL of another node (cluster mode), with
        /// `room_on_other_node`, `node_full` and `node_draining`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        url: Option<String>,
    },
}

impl ServerMessage {
    pub fn kind(&self) -> &'static str {
        match self {
            ServerMessage::Joined { .. } => "joined",
            ServerMessage::Resumed { .. } => "resumed",
            ServerMessage::ParticipantJoined { .. } => "participant_joined",
            ServerMessage::ParticipantUpdated { .. } => "participant_updated",
            ServerMessage::ParticipantLeft { .. } => "participant_left",
            ServerMessage::Chat { .. } => "chat",
            ServerMessage::Typing { .. } => "typing",
            ServerMessage::Ack => "ack",
            ServerMessage::Answer { .. } => "answer",
            ServerMessage::Offer { .. } => "offer",
            ServerMessage::TrackPublished { .. } => "track_published",
            ServerMessage::TrackUnpublished { .. } => "track_unpublished",
            ServerMessage::TrackMuted { .. } => "track_muted",
            ServerMessage::ActiveSpeakers { .. } => "active_speakers",
            ServerMessage::QualityChanged { .. } => "quality_changed",
            ServerMessage::PublisherLayers { .. } => "publisher_layers",
            ServerMessage::SubscriptionFailed { .. } => "subscription_failed",
            ServerMessage::PublicationFailed { .. } => "publication_failed",
            ServerMessage::Pong { .. } => "pong",
            ServerMessage::Leave { .. } => "leave",
            ServerMessage::Error { .. } => "error",
        }
    }

    pub fn error(code: ErrorCode, message: impl Into<String>) -> Self {
        ServerMessage::Error {
            code,
            message: message.into(),
            cause: None,
            url: None,
        }
    }

    /// An error that names the node to join instead.
    pub fn redirect(code: ErrorCode, message: impl Into<String>, url: String) -> Self {
        ServerMessage::Error {
            code,
            message: message.into(),
            cause: None,
            url: Some(url),
        }
    }

    /// `media_failed` with what ended the media.
    pub fn media_failed(cause: FailureCause, message: impl Into<String>) -> Self {
        ServerMessage::Error {
            code: ErrorCode::MediaFailed,
            message: message.into(),
            cause: Some(cause),
            url: None,
        }
    }
}

impl From<&RoomEvent> for ServerMessage {
    fn from(event: &RoomEvent) -> Self {
        match event.clone() {
            RoomEvent::ParticipantJoined(participant) => {
                ServerMessage::ParticipantJoined { participant }
            }
            RoomEvent::ParticipantUpdated(participant) => {
                ServerMessage::ParticipantUpdated { participant }
            }
            RoomEvent::ParticipantLeft {
                sid,
                identity,
                reason,
            } => ServerMessage::ParticipantLeft {
                sid,
                identity,
                reason,
            },
            RoomEvent::Chat(message) => ServerMessage::Chat { message },
            RoomEvent::Typing {
                sid,
                identity,
                typing,
            } => ServerMessage::Typing {
                sid,
                identity,
                typing,
            },
            RoomEvent::TrackPublished(track) => ServerMessage::TrackPublished { track },
            RoomEvent::TrackUnpublished { track, participant } => {
                ServerMessage::TrackUnpublished { track, participant }
            }
            RoomEvent::TrackMuted {
                track,
                participant,
                muted,
            } => ServerMessage::TrackMuted {
                track,
                participant,
                muted,
            },
        }
    }
}

/// A server message with the id of the request it answers, as sent on the wire.
#[derive(Debug, Serialize)]
struct Envelope<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    request_id: Option<&'a str>,
    #[serde(flatten)]
    message: &'a ServerMessage,
}

/// Serializes a message for the wire; `request_id` marks it as the answer to that request.
/// The text has no spare capacity: sockets and resume logs keep it as it is, for a minute.
pub fn encode(message: &ServerMessage, request_id: Option<&str>) -> String {
    // Serializing these plain structs cannot fail: no maps with non-string keys, no floats.
    let mut text = serde_json::to_string(&Envelope {
        request_id,
        message,
    })
    .unwrap_or_else(|_| r#"{"type":"error","code":"internal","message":"encode failed"}"#.into());
    // serde_json grows its buffer by doubling: an offer of 5 KB sat in 8 KB.
    text.shrink_to_fit();
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_parse_with_and_without_id() {
        assert_eq!(
            parse_request(r#"{"type":"chat","id":"7","text":"hi"}"#),
            Ok(Request::Chat {
                id: Some("7".into()),
                text: "hi".into()
            })
        );
        assert_eq!(
            parse_request(r#"{"type":"ping"}"#),
            Ok(Request::Ping { id: None })
        );
    }

    #[test]
    fn bad_frames_get_codes_and_keep_the_id() {
        assert_eq!(parse_request("{nope").unwrap_err().code, ErrorCode::BadJson);
        assert_eq!(
            parse_request("[1]").unwrap_err().code,
            ErrorCode::BadRequest
        );
        let e = parse_request(r#"{"type":"dance","id":"x"}"#).unwrap_err();
        assert_eq!(
            (e.code, e.id.as_deref()),
            (ErrorCode::UnknownType, Some("x"))
        );
        let e = parse_request(r#"{"type":"chat","id":"y"}"#).unwrap_err();
        assert_eq!(e.code, ErrorCode::BadRequest);
        assert!(e.message.contains("text"), "{}", e.message);
        assert_eq!(e.id.as_deref(), Some("y"));
        let e = parse_request(r#"{"type":"set_quality"}"#).unwrap_err();
        assert_eq!(e.code, ErrorCode::BadRequest);
        let e = parse_request(r#"{"id":"z"}"#).unwrap_err();
        assert_eq!(e.code, ErrorCode::BadRequest);
    }

    #[test]
    fn answers_carry_the_request_id() {
        let text = encode(&ServerMessage::Pong { time: 5 }, Some("r1"));
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["type"], "pong");
        assert_eq!(v["request_id"], "r1");
        let text = encode(&ServerMessage::Ack, None);
        assert_eq!(text, r#"{"type":"ack"}"#);
    }

    #[test]
    fn room_events_reach_the_wire_as_their_messages() {
        let muted = RoomEvent::TrackMuted {
            track: "TR_1".into(),
            participant: "PA_1".into(),
            muted: true,
        };
        assert_eq!(
            encode(&ServerMessage::from(&muted), None),
            r#"{"type":"track_muted","track":"TR_1","participant":"PA_1","muted":true}"#
        );
        let left = RoomEvent::ParticipantLeft {
            sid: "PA_1".into(),
            identity: "bob".into(),
            reason: LeaveReason::Kicked,
        };
        assert_eq!(
            encode(&ServerMessage::from(&left), None),
            r#"{"type":"participant_left","sid":"PA_1","identity":"bob","reason":"kicked"}"#
        );
    }
}
