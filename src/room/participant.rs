//! A joined participant as its room holds it: who it is, and how to reach its session.
//!
//! The room never touches the WebSocket. It queues encoded messages for the session, and it can
//! end the session (kicked, replaced, server shutdown); the session owns the socket and acts on both.
//! The room does not know the wire format either: it is given an [`EncodeEvent`] that turns its
//! [`RoomEvent`]s into messages, once per broadcast, whoever receives them.

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::model::{LeaveReason, ParticipantInfo, RoomEvent};

/// Messages queued per participant before it counts as a slow consumer and is disconnected.
pub const OUTBOUND_QUEUE: usize = 256;

/// An encoded server message, shared by every recipient of a broadcast.
#[derive(Debug, Clone)]
pub struct Encoded {
    /// The message type, for metrics.
    pub kind: &'static str,
    /// The message's UTF-8 text. Every recipient's socket and resume log hold this one
    /// buffer (a clone copies no bytes): a join in a room of N is N references, not N copies.
    pub text: Bytes,
}

/// Turns a room event into the message its recipients are sent. Given to the rooms by whoever
/// builds them (the signaling layer's encoder), so `room/` stays free of the wire format.
pub type EncodeEvent = fn(&RoomEvent) -> Encoded;

/// Ends a session once, remembering why.
#[derive(Debug, Default)]
pub struct SessionEnd {
    token: CancellationToken,
    reason: Mutex<Option<LeaveReason>>,
}

impl SessionEnd {
    /// Ends the session with `reason`, unless it already ended for another reason.
    pub fn end(&self, reason: LeaveReason) {
        if let Ok(mut r) = self.reason.lock() {
            r.get_or_insert(reason);
        }
        self.token.cancel();
    }

    pub fn reason(&self) -> Option<LeaveReason> {
        self.reason.lock().ok().and_then(|r| *r)
    }

    pub async fn ended(&self) {
        self.token.cancelled().await
    }
}

/// The room's handle on one participant.
#[derive(Debug, Clone)]
pub struct Participant {
    pub info: ParticipantInfo,
    outbound: mpsc::Sender<Encoded>,
    end: Arc<SessionEnd>,
}

impl Participant {
    pub fn new(
        info: ParticipantInfo,
        outbound: mpsc::Sender<Encoded>,
        end: Arc<SessionEnd>,
    ) -> Self {
        Self {
            info,
            outbound,
            end,
        }
    }

    pub fn sid(&self) -> &str {
        &self.info.sid
    }

    pub fn identity(&self) -> &str {
        &self.info.identity
    }

    /// Queues a message. A participant whose queue is full cannot keep up: its session ends,
    /// so one slow client never holds up its room. Returns false in that case.
    pub fn send(&self, message: &Encoded) -> bool {
        match self.outbound.try_send(message.clone()) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.end.end(LeaveReason::SlowConsumer);
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        }
    }

    /// Ends the participant's session; it sends `leave{reason}` and closes.
    pub fn end(&self, reason: LeaveReason) {
        self.end.end(reason);
    }
}

/// An encoder for tests of room state: the event's debug form, tagged `test`.
#[cfg(test)]
pub(crate) fn test_encode(event: &RoomEvent) -> Encoded {
    Encoded {
        kind: "test",
        text: Bytes::from(format!("{event:?}")),
    }
}

#[cfg(test)]
impl Participant {
    /// A participant with every permission whose session nobody reads: for tests of room state.
    pub(crate) fn detached(identity: &str, sid: &str) -> Self {
        let (outbound, _) = mpsc::channel(1);
        Self::new(
            ParticipantInfo {
                sid: sid.into(),
                identity: identity.into(),
                name: identity.to_uppercase(),
                joined_at: 0,
                permissions: crate::model::Permissions {
                    publish: true,
                    subscribe: true,
                    chat: true,
                },
                metadata: String::new(),
            },
            outbound,
            Arc::new(SessionEnd::default()),
        )
    }
}
