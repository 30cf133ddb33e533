//! A Room: its participants, its chat, and the events they see of each other.
//!
//! All state sits behind one short-held lock; nothing awaits under it. Events are queued to
//! participants while the lock is held, so every participant sees joins, leaves and chat in the
//! same order, and a joiner's snapshot (`joined`) is never older than the events queued after it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use crate::config::ChatConfig;
use crate::model::{ChatMessage, ChatSender, LeaveReason, ParticipantInfo, RoomEvent, TrackInfo};
use crate::room::chat::ChatLog;
use crate::room::participant::{EncodeEvent, Participant};
use crate::room::rate_limit::TokenBucket;

/// Typing indicators an identity may send per second, and in a burst above that: a client
/// sends one when typing starts or stops, not per key.
const TYPING_PER_SECOND: f64 = 2.0;
const TYPING_BURST: u32 = 5;

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RoomError {
    #[error("the room is full ({0} participants)")]
    Full(usize),
    #[error("the server has its maximum number of rooms ({0})")]
    TooManyRooms(usize),
    #[error("the server is full ({0} participants); try again later")]
    ServerFull(usize),
    #[error("the room has closed")]
    Closed,
}

/// Too many chat messages or typing indicators from one identity: not relayed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("too many messages from this identity; slow down")]
pub struct Throttled;

/// What one identity may still send in this room. Kept by identity, not by connection, so
/// leaving and joining again does not refill it.
struct Limits {
    chat: TokenBucket,
    typing: TokenBucket,
}

/// What a participant gets back from joining.
#[derive(Debug)]
pub struct Joined {
    /// Everyone else in the room, in join order.
    pub others: Vec<ParticipantInfo>,
    pub chat_history: Vec<ChatMessage>,
    /// Every track published in the room.
    pub tracks: Vec<TrackInfo>,
    /// The earlier session of the same identity, which this join replaced.
    pub replaced: Option<Participant>,
}

/// A summary for the admin API.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RoomSummary {
    pub name: String,
    pub participants: usize,
    /// Seconds since the room was created.
    pub age_seconds: u64,
}

pub struct Room {
    name: String,
    created: Instant,
    state: Mutex<RoomState>,
}

struct RoomState {
    /// In join order, so snapshots list participants the way they arrived.
    participants: Vec<Participant>,
    by_identity: HashMap<String, usize>,
    chat: ChatLog,
    /// Chat history a joiner gets, at most, in bytes of text.
    history_bytes: usize,
    /// Chat messages per second and burst, per identity.
    chat_rate: (f64, u32),
    limits: HashMap<String, Limits>,
    /// Published tracks, in publication order.
    tracks: Vec<TrackInfo>,
    closed: bool,
    /// When the last participant left; None while anyone is in.
    empty_since: Option<Instant>,
    encode: EncodeEvent,
}

impl RoomState {
    fn limits_of(&mut self, identity: &str) -> &mut Limits {
        // Identities that left are forgotten only once there are many of them: one that comes
        // back soon must find its limits where it left them.
        if !self.limits.contains_key(identity)
            && self.limits.len() >= 2 * self.participants.len() + 64
        {
            let present = &self.by_identity;
            self.limits.retain(|id, _| present.contains_key(id));
        }
        let (rate, burst) = self.chat_rate;
        self.limits.entry(identity.to_string()).or_insert_with(|| {
            let now = Instant::now();
            Limits {
                chat: TokenBucket::new(rate, burst, now),
                typing: TokenBucket::new(TYPING_PER_SECOND, TYPING_BURST, now),
            }
        })
    }

    fn reindex(&mut self) {
        self.by_identity = self
            .participants
            .iter()
            .enumerate()
            .map(|(i, p)| (p.identity().to_string(), i))
            .collect();
    }

    /// Encodes once and queues the same text to every recipient.
    fn broadcast(&self, event: &RoomEvent, except_sid: Option<&str>) {
        let encoded = (self.encode)(event);
        for p in &self.participants {
            if Some(p.sid()) != except_sid {
                p.send(&encoded);
            }
        }
    }

    /// Removes a participant and its tracks; others see its tracks go, then it.
    fn remove_at(&mut self, index: usize, reason: LeaveReason, now: Instant) -> Participant {
        let p = self.participants.remove(index);
        self.reindex();
        let sid = p.info.sid.clone();
        let (gone, kept): (Vec<_>, Vec<_>) = std::mem::take(&mut self.tracks)
            .into_iter()
            .partition(|t| t.participant == sid);
        self.tracks = kept;
        for t in gone {
            self.broadcast(
                &RoomEvent::TrackUnpublished {
                    track: t.sid,
                    participant: sid.clone(),
                },
                None,
            );
        }
        self.broadcast(
            &RoomEvent::ParticipantLeft {
                sid,
                identity: p.info.identity.clone(),
                reason,
            },
            None,
        );
        if self.participants.is_empty() {
            self.empty_since = Some(now);
        }
        p
    }
}

impl Room {
    pub fn new(name: String, chat: &ChatConfig, encode: EncodeEvent, now: Instant) -> Self {
        Self {
            name,
            created: now,
            state: Mutex::new(RoomState {
                participants: Vec::new(),
                by_identity: HashMap::new(),
                chat: ChatLog::new(chat.history),
                history_bytes: chat.history_max_bytes,
                chat_rate: (chat.rate_per_second, chat.burst),
                limits: HashMap::new(),
                tracks: Vec::new(),
                closed: false,
                empty_since: Some(now),
                encode,
            }),
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    fn state(&self) -> MutexGuard<'_, RoomState> {
        // A panic while holding this lock cannot leave the state half-changed in a way that
        // matters more than losing the room, so keep serving it.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds a participant. A participant with the same identity is replaced: it is removed
    /// (others see it leave with reason `replaced`) and returned so its session can be ended.
    pub fn join(
        &self,
        participant: Participant,
        max_participants: usize,
    ) -> Result<Joined, RoomError> {
        let mut state = self.state();
        if state.closed {
            return Err(RoomError::Closed);
        }
        let replaced = state
            .by_identity
            .get(participant.identity())
            .copied()
            .map(|index| state.remove_at(index, LeaveReason::Replaced, Instant::now()));
        if state.participants.len() >= max_participants {
            return Err(RoomError::Full(max_participants));
        }
        state.broadcast(
            &RoomEvent::ParticipantJoined(participant.info.clone()),
            None,
        );
        let others = state.participants.iter().map(|p| p.info.clone()).collect();
        let chat_history = state.chat.history(state.history_bytes);
        let tracks = state.tracks.clone();
        state.participants.push(participant);
        state.reindex();
        state.empty_since = None;
        Ok(Joined {
            others,
            chat_history,
            tracks,
            replaced,
        })
    }

    /// Removes the participant with session `sid`, if it is still here, and tells the others.
    /// Returns the removed participant.
    pub fn leave(&self, sid: &str, reason: LeaveReason, now: Instant) -> Option<Participant> {
        let mut state = self.state();
        let index = state.participants.iter().position(|p| p.sid() == sid)?;
        Some(state.remove_at(index, reason, now))
    }

    /// Records a track a participant published and tells everyone, its publisher included
    /// (which learns the track's sid this way). Ignored if the publisher has left.
    pub fn add_track(&self, track: TrackInfo) {
        let mut state = self.state();
        if !state
            .participants
            .iter()
            .any(|p| p.sid() == track.participant)
        {
            return;
        }
        state.broadcast(&RoomEvent::TrackPublished(track.clone()), None);
        state.tracks.push(track);
    }

    /// Removes a track and tells everyone. Returns false if there was no such track.
    pub fn remove_track(&self, track_sid: &str) -> bool {
        let mut state = self.state();
        let Some(index) = state.tracks.iter().position(|t| t.sid == track_sid) else {
            return false;
        };
        let t = state.tracks.remove(index);
        state.broadcast(
            &RoomEvent::TrackUnpublished {
                track: t.sid,
                participant: t.participant,
            },
            None,
        );
        true
    }

    /// Sets a track's muted flag and tells everyone if it changed.
    /// False if `participant` publishes no such track. The room is where a track's muted
    /// flag lives: the media plane forwards muted tracks as it does any other.
    pub fn set_muted(&self, participant: &str, track_sid: &str, muted: bool) -> bool {
        let mut state = self.state();
        let Some(t) = state
            .tracks
            .iter_mut()
            .find(|t| t.sid == track_sid && t.participant == participant)
        else {
            return false;
        };
        if t.muted != muted {
            t.muted = muted;
            let message = RoomEvent::TrackMuted {
                track: t.sid.clone(),
                participant: t.participant.clone(),
                muted,
            };
            state.broadcast(&message, None);
        }
        true
    }

    /// A track by sid.
    pub fn track(&self, track_sid: &str) -> Option<TrackInfo> {
        self.state()
            .tracks
            .iter()
            .find(|t| t.sid == track_sid)
            .cloned()
    }

    /// Finds the participant with `identity`.
    pub fn participant(&self, identity: &str) -> Option<Participant> {
        let state = self.state();
        let index = *state.by_identity.get(identity)?;
        state.participants.get(index).cloned()
    }

    /// Takes back the chat history the room had on another node (see [`ChatLog::restore`]).
    pub fn restore_chat(&self, messages: Vec<ChatMessage>) {
        self.state().chat.restore(messages);
    }

    /// Stamps and relays a chat message to everyone but its sender, whose session answers it;
    /// refused past the sender identity's rate.
    pub fn chat(
        &self,
        sender: ChatSender,
        text: String,
        time_ms: u64,
    ) -> Result<ChatMessage, Throttled> {
        let mut state = self.state();
        if !state
            .limits_of(&sender.identity)
            .chat
            .try_take(Instant::now())
        {
            return Err(Throttled);
        }
        let message = state.chat.post(sender, text, time_ms);
        state.broadcast(&RoomEvent::Chat(message.clone()), Some(&message.sender.sid));
        Ok(message)
    }

    /// Relays that `sender` started or stopped typing; refused past its identity's rate.
    pub fn typing(&self, sender: &ChatSender, typing: bool) -> Result<(), Throttled> {
        let mut state = self.state();
        if !state
            .limits_of(&sender.identity)
            .typing
            .try_take(Instant::now())
        {
            return Err(Throttled);
        }
        state.broadcast(
            &RoomEvent::Typing {
                sid: sender.sid.clone(),
                identity: sender.identity.clone(),
                typing,
            },
            Some(&sender.sid),
        );
        Ok(())
    }

    /// Sets participant `sid`'s metadata and tells everyone else; refused past its identity's
    /// rate (shared with typing indicators). `None`: `sid` is not in the room.
    pub fn update_metadata(
        &self,
        sid: &str,
        metadata: String,
    ) -> Result<Option<ParticipantInfo>, Throttled> {
        let mut state = self.state();
        let Some(index) = state.participants.iter().position(|p| p.sid() == sid) else {
            return Ok(None);
        };
        let identity = state.participants[index].identity().to_string();
        if !state.limits_of(&identity).typing.try_take(Instant::now()) {
            return Err(Throttled);
        }
        state.participants[index].info.metadata = metadata;
        let info = state.participants[index].info.clone();
        state.broadcast(&RoomEvent::ParticipantUpdated(info.clone()), Some(sid));
        Ok(Some(info))
    }

    /// Tells everyone but `except_sid` about `event`.
    pub fn broadcast(&self, event: &RoomEvent, except_sid: Option<&str>) {
        self.state().broadcast(event, except_sid);
    }

    pub fn participants(&self) -> Vec<ParticipantInfo> {
        self.state()
            .participants
            .iter()
            .map(|p| p.info.clone())
            .collect()
    }

    pub fn len(&self) -> usize {
        self.state().participants.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Closes the room if it has been empty for at least `grace`. A closed room takes no joins.
    pub fn close_if_idle(&self, grace: std::time::Duration, now: Instant) -> bool {
        let mut state = self.state();
        match state.empty_since {
            Some(since) if !state.closed && now.saturating_duration_since(since) >= grace => {
                state.closed = true;
                true
            }
            _ => false,
        }
    }

    /// Ends every participant's session with `reason`.
    pub fn end_all(&self, reason: LeaveReason) {
        for p in &self.state().participants {
            p.end(reason);
        }
    }

    pub fn summary(&self, now: Instant) -> RoomSummary {
        RoomSummary {
            name: self.name.clone(),
            participants: self.len(),
            age_seconds: now.saturating_duration_since(self.created).as_secs(),
        }
    }
}

/// Shared handle to a room.
pub type RoomRef = Arc<Room>;

#[cfg(test)]
mod tests {
    use std::sync::Barrier;
    use std::time::Duration;

    use super::*;
    use crate::room::participant::test_encode;

    fn participant(identity: &str, sid: &str) -> Participant {
        Participant::detached(identity, sid)
    }

    fn chat_config() -> ChatConfig {
        ChatConfig {
            history: 10,
            ..ChatConfig::default()
        }
    }

    #[test]
    fn a_closed_room_refuses_joins_and_stays_empty() {
        let t0 = Instant::now();
        let room = Room::new("r".into(), &chat_config(), test_encode, t0);
        assert!(room.close_if_idle(Duration::ZERO, t0));
        assert_eq!(
            room.join(participant("alice", "s1"), 10).map(|_| ()),
            Err(RoomError::Closed)
        );
        assert!(room.is_empty(), "a refused joiner is not in the room");
        assert!(
            !room.close_if_idle(Duration::ZERO, t0),
            "a room closes once; the second closer has nothing to remove"
        );
    }

    #[test]
    fn a_room_with_someone_in_it_does_not_close() {
        let t0 = Instant::now();
        let room = Room::new("r".into(), &chat_config(), test_encode, t0);
        room.join(participant("alice", "s1"), 10).expect("joins");
        let much_later = t0 + Duration::from_secs(3600);
        assert!(!room.close_if_idle(Duration::ZERO, much_later));
        assert!(room.join(participant("bob", "s2"), 10).is_ok());
    }

    #[test]
    fn the_grace_period_counts_from_the_last_leave() {
        let t0 = Instant::now();
        let grace = Duration::from_secs(30);
        let room = Room::new("r".into(), &chat_config(), test_encode, t0);
        room.join(participant("alice", "s1"), 10).expect("joins");
        let left = t0 + Duration::from_secs(100);
        room.leave("s1", LeaveReason::ClientLeft, left);
        assert!(
            !room.close_if_idle(grace, left + grace - Duration::from_millis(1)),
            "still within the grace period"
        );
        assert!(room.close_if_idle(grace, left + grace));
    }

    /// A join and a close of an idle room, started together from two threads many times: exactly
    /// one of them wins. Either the joiner is in a room that stays open, or the room closed and
    /// the joiner was refused (and `Rooms` makes a new room for it). Never both, never neither.
    #[test]
    fn a_join_racing_a_close_either_lands_or_is_refused() {
        for round in 0..500 {
            let room = Room::new("r".into(), &chat_config(), test_encode, Instant::now());
            let start = Barrier::new(2);
            let (joined, closed) = std::thread::scope(|s| {
                let joiner = s.spawn(|| {
                    start.wait();
                    room.join(participant("alice", "s1"), 10).is_ok()
                });
                let closer = s.spawn(|| {
                    start.wait();
                    room.close_if_idle(Duration::ZERO, Instant::now())
                });
                (joiner.join().unwrap(), closer.join().unwrap())
            });
            assert!(
                joined != closed,
                "round {round}: joined {joined}, closed {closed}"
            );
            assert_eq!(room.len(), usize::from(joined), "round {round}");
        }
    }
}
