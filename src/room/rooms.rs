//! The registry of open rooms: created on first join, closed after an empty grace period.
//!
//! Rooms live in a `DashMap` so joins to different rooms never wait on each other. A room that
//! closes is marked closed under its own lock before it leaves the map, so a join racing with the
//! close either lands in the old room before it closes or creates a fresh one.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use dashmap::DashMap;
use tokio_util::sync::CancellationToken;

use crate::config::{ChatConfig, RoomConfig};
use crate::metrics::Metrics;
use crate::model::{ChatMessage, LeaveReason};
use crate::room::participant::{EncodeEvent, Participant};
use crate::room::room::{Joined, Room, RoomError, RoomRef, RoomSummary};

pub struct Rooms {
    rooms: DashMap<String, RoomRef>,
    /// Rooms in the map; kept apart because `DashMap::len` locks every shard.
    count: AtomicUsize,
    /// Participants in all rooms, for `room.max_total_participants`.
    participants: AtomicUsize,
    room_config: RoomConfig,
    chat: ChatConfig,
    /// How room events become messages (the signaling layer's encoder).
    encode: EncodeEvent,
    metrics: Arc<Metrics>,
    /// Cancels the close timers at shutdown.
    shutdown: CancellationToken,
}

impl Rooms {
    pub fn new(
        room_config: RoomConfig,
        chat_config: &ChatConfig,
        metrics: Arc<Metrics>,
        shutdown: CancellationToken,
        encode: EncodeEvent,
    ) -> Arc<Self> {
        Arc::new(Self {
            rooms: DashMap::new(),
            count: AtomicUsize::new(0),
            participants: AtomicUsize::new(0),
            room_config,
            chat: chat_config.clone(),
            encode,
            metrics,
            shutdown,
        })
    }

    /// Joins `participant` to room `name`, creating the room if needed.
    pub fn join(
        self: &Arc<Self>,
        name: &str,
        participant: Participant,
    ) -> Result<(RoomRef, Joined), RoomError> {
        self.join_with_history(name, participant, Vec::new())
    }

    /// [`Rooms::join`] for a room that may have had a chat `history` on another node (cluster
    /// mode): a room without chat of its own takes it back before the participant joins.
    pub fn join_with_history(
        self: &Arc<Self>,
        name: &str,
        participant: Participant,
        history: Vec<ChatMessage>,
    ) -> Result<(RoomRef, Joined), RoomError> {
        // Reserve a place on the server first, so concurrent joins cannot overshoot the budget:
        // past it the server is full, and the calls in progress keep what they have.
        let max_total = self.room_config.max_total_participants;
        if self.participants.fetch_add(1, Ordering::SeqCst) >= max_total {
            self.participants.fetch_sub(1, Ordering::SeqCst);
            return Err(RoomError::ServerFull(max_total));
        }
        let joined = self.join_room(name, participant, history);
        if !matches!(&joined, Ok((_, j)) if j.replaced.is_none()) {
            // Refused, or it took the place of its own earlier session.
            self.participants.fetch_sub(1, Ordering::SeqCst);
        }
        joined
    }

    fn join_room(
        self: &Arc<Self>,
        name: &str,
        participant: Participant,
        mut history: Vec<ChatMessage>,
    ) -> Result<(RoomRef, Joined), RoomError> {
        loop {
            let room = self.get_or_create(name)?;
            if !history.is_empty() {
                room.restore_chat(std::mem::take(&mut history));
            }
            match room.join(participant.clone(), self.room_config.max_participants) {
                Ok(joined) => {
                    if joined.replaced.is_none() {
                        self.metrics.participants.inc();
                    }
                    return Ok((room, joined));
                }
                // Closed between lookup and join: it is leaving the map, make a new one.
                Err(RoomError::Closed) => {
                    self.remove(&room);
                    continue;
                }
                Err(e) => {
                    if room.is_empty() {
                        self.schedule_close(room);
                    }
                    return Err(e);
                }
            }
        }
    }

    fn get_or_create(self: &Arc<Self>, name: &str) -> Result<RoomRef, RoomError> {
        if let Some(room) = self.rooms.get(name) {
            return Ok(room.clone());
        }
        let max = self.room_config.max_rooms;
        // Reserve a slot first so concurrent creations cannot overshoot the limit.
        if self.count.fetch_add(1, Ordering::SeqCst) >= max {
            self.count.fetch_sub(1, Ordering::SeqCst);
            return Err(RoomError::TooManyRooms(max));
        }
        let mut created = false;
        let room = self
            .rooms
            .entry(name.to_string())
            .or_insert_with(|| {
                created = true;
                Arc::new(Room::new(
                    name.to_string(),
                    &self.chat,
                    self.encode,
                    Instant::now(),
                ))
            })
            .clone();
        if created {
            self.metrics.rooms.inc();
            tracing::info!(room = name, "room created");
        } else {
            self.count.fetch_sub(1, Ordering::SeqCst);
        }
        Ok(room)
    }

    /// Removes a participant session from its room; an emptied room closes after the grace period.
    pub fn leave(self: &Arc<Self>, room: &RoomRef, sid: &str, reason: LeaveReason) {
        if room.leave(sid, reason, Instant::now()).is_some() {
            self.metrics.participants.dec();
            self.participants.fetch_sub(1, Ordering::SeqCst);
            if room.is_empty() {
                self.schedule_close(room.clone());
            }
        }
    }

    /// Called when a join replaced an earlier session: that one is gone from the room already.
    pub fn replaced(&self, old: &Participant) {
        old.end(LeaveReason::Replaced);
    }

    fn schedule_close(self: &Arc<Self>, room: RoomRef) {
        let rooms = Arc::clone(self);
        let grace = self.room_config.empty_timeout;
        let shutdown = self.shutdown.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = tokio::time::sleep(grace) => {}
                _ = shutdown.cancelled() => return,
            }
            rooms.close_if_idle(&room);
        });
    }

    fn close_if_idle(&self, room: &RoomRef) {
        if room.close_if_idle(self.room_config.empty_timeout, Instant::now()) {
            self.remove(room);
        }
    }

    /// Takes a closed room out of the map, once, whoever gets there first.
    fn remove(&self, room: &RoomRef) {
        if self
            .rooms
            .remove_if(room.name(), |_, current| Arc::ptr_eq(current, room))
            .is_some()
        {
            self.count.fetch_sub(1, Ordering::SeqCst);
            self.metrics.rooms.dec();
            tracing::info!(room = room.name(), "room closed");
        }
    }

    pub fn get(&self, name: &str) -> Option<RoomRef> {
        self.rooms.get(name).map(|r| r.clone())
    }

    /// The names of the rooms open now.
    pub fn names(&self) -> Vec<String> {
        self.rooms.iter().map(|r| r.key().clone()).collect()
    }

    pub fn list(&self) -> Vec<RoomSummary> {
        let now = Instant::now();
        let mut list: Vec<_> = self.rooms.iter().map(|r| r.summary(now)).collect();
        list.sort_by(|a, b| a.name.cmp(&b.name));
        list
    }

    /// Ends every session in every room (server shutdown).
    pub fn end_all(&self, reason: LeaveReason) {
        for room in self.rooms.iter() {
            room.end_all(reason);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Barrier, Mutex};
    use std::time::Duration;

    use super::*;

    /// A registry whose empty rooms may close at once (no grace period).
    fn registry(tweak: impl FnOnce(&mut RoomConfig)) -> Arc<Rooms> {
        let mut config = RoomConfig {
            empty_timeout: Duration::ZERO,
            ..RoomConfig::default()
        };
        tweak(&mut config);
        Rooms::new(
            config,
            &ChatConfig::default(),
            Arc::new(Metrics::new()),
            CancellationToken::new(),
            crate::room::participant::test_encode,
        )
    }

    fn participant(identity: &str, sid: &str) -> Participant {
        Participant::detached(identity, sid)
    }

    /// The room a participant is in is the one the registry lists under its name, so everyone
    /// who joins that name later meets them.
    fn assert_listed(rooms: &Rooms, room: &RoomRef) {
        let listed = rooms.get(room.name()).expect("the joiner's room is listed");
        assert!(
            Arc::ptr_eq(&listed, room),
            "the joiner is in a room that is no longer listed"
        );
    }

    /// The registry's count and the `sfu_rooms` gauge agree with the rooms it lists.
    fn assert_books_balance(rooms: &Rooms) {
        let listed = rooms.rooms.len();
        assert_eq!(rooms.count.load(Ordering::SeqCst), listed, "room count");
        assert_eq!(rooms.metrics.rooms.get(), listed as i64, "sfu_rooms gauge");
    }

    /// Empties `room` as a session's leave does, without starting its close timer.
    fn empty(room: &RoomRef, sid: &str) {
        room.leave(sid, LeaveReason::ClientLeft, Instant::now())
            .expect("was in the room");
    }

    #[test]
    fn a_join_after_the_room_closed_opens_a_fresh_room() {
        let rooms = registry(|_| {});
        let (old, _) = rooms.join("r", participant("alice", "s1")).unwrap();
        empty(&old, "s1");
        rooms.close_if_idle(&old);
        assert!(rooms.get("r").is_none(), "the idle room closed");

        let (new, joined) = rooms.join("r", participant("bob", "s2")).unwrap();
        assert!(!Arc::ptr_eq(&old, &new), "bob is not in the closed room");
        assert!(joined.others.is_empty());
        assert_listed(&rooms, &new);
        assert_books_balance(&rooms);
    }

    /// The close timer marks the room closed, then takes it out of the map. A join between the
    /// two steps still finds the old room listed: it must not join it (it is about to vanish)
    /// but open a new one, and the closer's second step must leave the new one alone.
    #[test]
    fn a_join_between_the_two_steps_of_a_close_lands_in_a_fresh_listed_room() {
        let rooms = registry(|_| {});
        let (old, _) = rooms.join("r", participant("alice", "s1")).unwrap();
        empty(&old, "s1");
        assert!(old.close_if_idle(Duration::ZERO, Instant::now()));
        assert!(rooms.get("r").is_some(), "closed but not yet removed");

        let (new, _) = rooms.join("r", participant("bob", "s2")).unwrap();
        assert!(!Arc::ptr_eq(&old, &new), "bob is not in the closing room");
        rooms.remove(&old);
        assert_listed(&rooms, &new);
        assert_eq!(new.len(), 1);
        assert_books_balance(&rooms);
    }

    #[test]
    fn a_closing_room_gives_its_slot_to_the_room_that_replaces_it() {
        let rooms = registry(|c| c.max_rooms = 1);
        let (old, _) = rooms.join("r", participant("alice", "s1")).unwrap();
        // The server is full: a join to another room fails and leaves nothing behind.
        assert!(matches!(
            rooms.join("other", participant("carol", "s3")),
            Err(RoomError::TooManyRooms(1))
        ));
        assert!(rooms.get("other").is_none());
        empty(&old, "s1");
        assert!(old.close_if_idle(Duration::ZERO, Instant::now()));

        let (new, _) = rooms
            .join("r", participant("bob", "s2"))
            .expect("the closing room's slot is free for its successor");
        rooms.remove(&old);
        assert_listed(&rooms, &new);
        assert_books_balance(&rooms);
    }

    #[test]
    fn a_room_someone_is_in_stays_listed() {
        let rooms = registry(|_| {});
        let (room, _) = rooms.join("r", participant("alice", "s1")).unwrap();
        rooms.close_if_idle(&room);
        assert_listed(&rooms, &room);
        assert_books_balance(&rooms);
    }

    /// Rounds of three joiners arriving at once at an empty room while a fourth thread tries to
    /// close it, and the rooms' own close timers (no grace period) close it between rounds. The
    /// closer lingers between marking the room closed and removing it, to widen the window a
    /// join can fall into. Every joiner must be in the listed room for as long as it stays, and
    /// the books must balance at the end. Threads record what went wrong instead of panicking,
    /// so one failure cannot leave the others waiting at the barrier.
    #[test]
    fn joins_racing_closes_always_land_in_the_listed_room() {
        const JOINERS: usize = 3;
        const ROUNDS: usize = 300;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_time()
            .build()
            .expect("runtime for the close timers");
        let rooms = registry(|_| {});
        let round = Barrier::new(JOINERS + 1);
        let problems = Mutex::new(Vec::<String>::new());
        let rooms_used = Mutex::new(Vec::<RoomRef>::new());
        let listed = |room: &RoomRef| rooms.get("r").is_some_and(|l| Arc::ptr_eq(&l, room));
        std::thread::scope(|s| {
            s.spawn(|| {
                for _ in 0..ROUNDS {
                    round.wait();
                    if let Some(room) = rooms.get("r") {
                        if room.close_if_idle(Duration::ZERO, Instant::now()) {
                            for _ in 0..10 {
                                std::thread::yield_now();
                            }
                            rooms.remove(&room);
                        }
                    }
                    round.wait();
                }
            });
            for t in 0..JOINERS {
                let (rooms, runtime, round, problems, rooms_used, listed) =
                    (&rooms, &runtime, &round, &problems, &rooms_used, &listed);
                s.spawn(move || {
                    let _timers = runtime.enter();
                    let identity = format!("p{t}");
                    let problem = |p: String| problems.lock().unwrap().push(p);
                    for i in 0..ROUNDS {
                        round.wait();
                        let sid = format!("{identity}-{i}");
                        match rooms.join("r", participant(&identity, &sid)) {
                            Ok((room, _)) => {
                                if !listed(&room) {
                                    problem(format!("round {i}: {identity} joined an unlisted room"));
                                }
                                let mut used = rooms_used.lock().unwrap();
                                if !used.iter().any(|r| Arc::ptr_eq(r, &room)) {
                                    used.push(room.clone());
                                }
                                drop(used);
                                std::thread::yield_now();
                                if !listed(&room) {
                                    problem(format!(
                                        "round {i}: {identity}'s room was unlisted while it was in it"
                                    ));
                                }
                                rooms.leave(&room, &sid, LeaveReason::ClientLeft);
                            }
                            Err(e) => problem(format!("round {i}: {identity} could not join: {e}")),
                        }
                        round.wait();
                    }
                });
            }
        });
        // Stops the close timers; one running finishes its (synchronous) close first.
        drop(runtime);
        let problems = problems.into_inner().unwrap();
        assert!(problems.is_empty(), "{problems:#?}");
        assert!(
            rooms_used.into_inner().unwrap().len() > 1,
            "no room ever closed between rounds; the test raced nothing"
        );
        assert_books_balance(&rooms);
        if let Some(room) = rooms.get("r") {
            assert!(room.is_empty());
            rooms.close_if_idle(&room);
        }
        assert!(rooms.get("r").is_none());
        assert_books_balance(&rooms);
        assert_eq!(rooms.metrics.participants.get(), 0, "sfu_participants");
    }
}
