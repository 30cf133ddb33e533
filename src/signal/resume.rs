//! Session resume: the numbered log of what a joined session sent, and the tokens that let a new
//! WebSocket take a session over.
//!
//! A participant whose WebSocket drops is kept for `signal.resume_window`. Every message the
//! server sends it from `joined` on is numbered (joined is 1) and kept in its [`ReplayLog`], also
//! while no socket is there. A client that reconnects sends `resume{token, received}`: the session
//! behind the token takes the new socket over ([`Handover`]) and sends every message numbered above
//! `received` again, in order, then `resumed` with a new token. Tokens are single-use: taking one
//! out of [`ResumeTokens`] is what makes it used. `joined` itself is numbered but its text is
//! not kept: the first token is in it, so a client that can resume has received it (and it is
//! the largest message, with the room's participants and chat history: kept for every
//! participant of a large room, a minute of joins held a square of the room's size).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use axum::extract::ws::{Message, Utf8Bytes, WebSocket};
use dashmap::DashMap;
use futures_util::stream::{SplitSink, SplitStream};
use rand::distr::{Alphanumeric, SampleString};
use tokio::sync::mpsc;

/// The sending half of a session's WebSocket.
pub type Sink = SplitSink<WebSocket, Message>;
/// The receiving half of a session's WebSocket.
pub type Stream = SplitStream<WebSocket>;

/// Messages a log keeps at most; older ones cannot be replayed.
pub const LOG_MESSAGES: usize = 1024;
/// Bytes of message text a log keeps at most (messages shared by a room count fully).
pub const LOG_BYTES: usize = 1 << 20;
/// How long a message written to a live socket is kept: a client learns its socket died well
/// within this (its keepalive pings go unanswered within 25 s, the server's after
/// `signal.ping_timeout`), and anything older it had received. Keeps a long meeting's log short.
pub const LOG_WRITTEN_FOR: Duration = Duration::from_secs(60);

/// A new WebSocket for a session, from the connection that presented its resume token.
pub struct Handover {
    pub sink: Sink,
    pub stream: Stream,
    /// The `resume` request's id, for the `resumed` answer.
    pub request_id: Option<String>,
    /// How many messages the client received from this session (from `joined` on).
    pub received: u64,
}

/// The live resume tokens of this server, each leading to one session.
#[derive(Default)]
pub struct ResumeTokens {
    sessions: DashMap<String, mpsc::Sender<Handover>>,
}

impl ResumeTokens {
    /// A fresh token leading to `session`.
    pub fn issue(&self, session: mpsc::Sender<Handover>) -> String {
        let token = format!("RS_{}", Alphanumeric.sample_string(&mut rand::rng(), 32));
        self.sessions.insert(token.clone(), session);
        token
    }

    /// Uses a token: it leads nowhere afterwards.
    pub fn take(&self, token: &str) -> Option<mpsc::Sender<Handover>> {
        self.sessions.remove(token).map(|(_, session)| session)
    }

    /// Withdraws a token (its session ended or was given a new one).
    pub fn revoke(&self, token: &str) {
        self.sessions.remove(token);
    }

    pub fn len(&self) -> usize {
        self.sessions.len()
    }

    pub fn is_empty(&self) -> bool {
        self.sessions.is_empty()
    }
}

/// Why a log cannot go on or cannot replay.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum ReplayError {
    /// Keeping one more message would drop one the client has not been sent.
    #[error("more than {LOG_MESSAGES} messages or {LOG_BYTES} bytes waited for the client")]
    Overflow,
    /// The client says it received more than was sent.
    #[error("the client says it received {received} messages; {sent} were sent")]
    Ahead { received: u64, sent: u64 },
    /// The client says it missed `joined`, which is never replayed: its token came in it.
    #[error("the client says it received {received} messages; joined (message 1, which carried the token) is never replayed")]
    BeforeJoined { received: u64 },
    /// Messages the client missed are no longer kept.
    #[error("messages after {received} are no longer kept (the oldest kept is {oldest})")]
    Gone { received: u64, oldest: u64 },
}

/// What a joined session sent, numbered from 1, the newest [`LOG_MESSAGES`] / [`LOG_BYTES`].
#[derive(Debug)]
pub struct ReplayLog {
    /// The number of `messages[0]`.
    first: u64,
    /// Each message and when it was logged.
    messages: VecDeque<(Utf8Bytes, Instant)>,
    bytes: usize,
    /// The highest number written to a socket (0: none).
    written: u64,
    /// The highest number logged without its text (0: none): never replayed.
    unreplayable: u64,
}

impl Default for ReplayLog {
    fn default() -> Self {
        Self {
            first: 1,
            messages: VecDeque::new(),
            bytes: 0,
            written: 0,
            unreplayable: 0,
        }
    }
}

impl ReplayLog {
    /// The number of the last message logged (0: none).
    pub fn last(&self) -> u64 {
        self.first + self.messages.len() as u64 - 1
    }

    /// Logs a message at `now` and gives its number. Older messages make room, and written
    /// ones older than [`LOG_WRITTEN_FOR`] go; a message never written to a socket never does.
    pub fn push(&mut self, text: Utf8Bytes, now: Instant) -> Result<u64, ReplayError> {
        self.bytes += text.len();
        self.messages.push_back((text, now));
        while let Some((old, at)) = self.messages.front() {
            let full = self.messages.len() > LOG_MESSAGES || self.bytes > LOG_BYTES;
            let stale = now.saturating_duration_since(*at) > LOG_WRITTEN_FOR;
            let written = self.first <= self.written;
            let evict = full || (stale && written);
            if !evict {
                break;
            }
            if !written {
                return Err(ReplayError::Overflow);
            }
            self.bytes -= old.len();
            self.messages.pop_front();
            self.first += 1;
        }
        Ok(self.last())
    }

    /// Numbers a message without keeping its text: one no resume needs again (`joined`, which
    /// carries the first resume token). A resume from before it is refused
    /// ([`ReplayError::BeforeJoined`]).
    pub fn push_unreplayable(&mut self, now: Instant) -> Result<u64, ReplayError> {
        let seq = self.push(Utf8Bytes::default(), now)?;
        self.unreplayable = seq;
        Ok(seq)
    }

    /// Message `seq` was written to a socket.
    pub fn written(&mut self, seq: u64) {
        self.written = self.written.max(seq);
    }

    /// The messages after the first `received`, in order, for a client that received that many.
    pub fn after(&self, received: u64) -> Result<Vec<(u64, Utf8Bytes)>, ReplayError> {
        let last = self.last();
        if received > last {
            return Err(ReplayError::Ahead {
                received,
                sent: last,
            });
        }
        if received < self.unreplayable {
            return Err(ReplayError::BeforeJoined { received });
        }
        if received + 1 < self.first {
            return Err(ReplayError::Gone {
                received,
                oldest: self.first,
            });
        }
        let skip = (received + 1 - self.first) as usize;
        Ok(self
            .messages
            .iter()
            .skip(skip)
            .enumerate()
            .map(|(i, (text, _))| (received + 1 + i as u64, text.clone()))
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(s: &str) -> Utf8Bytes {
        Utf8Bytes::from(s.to_string())
    }

    /// Logs `s` at `at` and writes it to the (live) socket.
    fn sent(log: &mut ReplayLog, s: &str, at: Instant) -> u64 {
        let seq = log.push(text(s), at).unwrap();
        log.written(seq);
        seq
    }

    #[test]
    fn numbers_from_one_and_replays_what_the_client_missed() {
        let mut log = ReplayLog::default();
        let now = Instant::now();
        assert_eq!(log.last(), 0);
        for (i, s) in ["joined", "chat", "typing"].into_iter().enumerate() {
            assert_eq!(sent(&mut log, s, now), i as u64 + 1);
        }
        let missed = log.after(1).unwrap();
        assert_eq!(
            missed
                .iter()
                .map(|(n, t)| (*n, t.as_str()))
                .collect::<Vec<_>>(),
            vec![(2, "chat"), (3, "typing")]
        );
        assert!(log.after(3).unwrap().is_empty());
        assert_eq!(
            log.after(4),
            Err(ReplayError::Ahead {
                received: 4,
                sent: 3
            })
        );
    }

    #[test]
    fn joined_is_numbered_but_its_text_is_not_kept() {
        let mut log = ReplayLog::default();
        let now = Instant::now();
        let joined = log.push_unreplayable(now).unwrap();
        log.written(joined);
        assert_eq!(joined, 1);
        assert_eq!(sent(&mut log, "chat", now), 2);
        // What the log holds is the messages after it.
        assert_eq!(log.bytes, "chat".len());
        let missed = log.after(1).unwrap();
        assert_eq!(missed.len(), 1);
        assert_eq!(missed[0].0, 2);
        // A resume from before `joined` (its token came in it) would replay an empty message.
        assert_eq!(log.after(0), Err(ReplayError::BeforeJoined { received: 0 }));
    }

    #[test]
    fn old_written_messages_make_room_and_can_no_longer_be_replayed() {
        let mut log = ReplayLog::default();
        let now = Instant::now();
        for _ in 0..LOG_MESSAGES + 10 {
            sent(&mut log, "x", now);
        }
        assert_eq!(log.last(), LOG_MESSAGES as u64 + 10);
        assert_eq!(
            log.after(5),
            Err(ReplayError::Gone {
                received: 5,
                oldest: 11
            })
        );
        assert_eq!(log.after(10).unwrap().len(), LOG_MESSAGES);
    }

    #[test]
    fn written_messages_go_after_a_minute_unwritten_ones_stay() {
        let mut log = ReplayLog::default();
        let start = Instant::now();
        sent(&mut log, "joined", start);
        sent(&mut log, "chat", start);
        // The socket died: these two are not written.
        log.push(text("typing"), start + Duration::from_secs(30))
            .unwrap();
        let later = start + LOG_WRITTEN_FOR + Duration::from_secs(5);
        log.push(text("leave"), later).unwrap();
        assert_eq!(
            log.after(0),
            Err(ReplayError::Gone {
                received: 0,
                oldest: 3
            }),
            "the two written a minute ago are gone"
        );
        let kept: Vec<_> = log.after(2).unwrap().into_iter().map(|(n, _)| n).collect();
        assert_eq!(kept, vec![3, 4], "unwritten ones stay however old");
    }

    #[test]
    fn a_message_never_written_is_never_dropped() {
        let mut log = ReplayLog::default();
        let now = Instant::now();
        sent(&mut log, "joined", now);
        // The socket is gone: nothing more is written.
        let big = "y".repeat(LOG_BYTES / 2);
        for _ in 0..2 {
            log.push(text(&big), now).unwrap();
        }
        assert_eq!(log.push(text(&big), now), Err(ReplayError::Overflow));
    }
}
