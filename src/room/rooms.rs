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
use crate::model::LeaveReason;
use crate::room::participant::{EncodeEvent, Participant};
use crate::room::room::{Joined, Room, RoomError, RoomRef, RoomSummary};

pub struct Rooms {
    rooms: DashMap<String, RoomRef>,
    /// Rooms in the map; kept apart because `DashMap::len` locks every shard.
    count: AtomicUsize,
    room_config: RoomConfig,
    chat_history: usize,
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
            room_config,
            chat_history: chat_config.history,
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
        loop {
            let room = self.get_or_create(name)?;
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
                    self.chat_history,
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
