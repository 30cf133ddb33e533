//! The queues between media workers, for a room spread over several (the worker's side is
//! `worker/relay.rs`, which says how a spread room works).
//!
//! Each worker has one bounded queue that every other worker writes [`Crossing`]s to; per pair
//! of workers they keep their order, so a worker never sees a publication's packets before the
//! publication. A packet crosses with its payload's `Arc` shared, never copied. Every worker's
//! publications are listed in one [`Directory`], read when a room first comes to a worker and
//! written on publish and unpublish, never on the packet path.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use prometheus::IntCounter;
use str0m::format::PayloadParams;
use str0m::media::MediaKind;
use tokio::sync::mpsc;

use crate::forward::allocator::Priority;
use crate::forward::selector::LayerIndex;
use crate::forward::Packet;
use crate::metrics::Metrics;

/// Messages one worker's relay queue holds. A worker drains them as they come; a full queue
/// means it is stuck, and what does not fit is dropped and counted
/// (`sfu_queue_drops_total{queue="worker_relay"}`), like a datagram the network lost.
pub const RELAY_QUEUE: usize = 8192;

/// How many waiting crossings a worker takes in one wake-up before it flushes.
const RELAY_BURST: usize = 64;

/// A publication as the other workers need to know it.
#[derive(Debug, Clone)]
pub struct Listing {
    pub room: String,
    /// The publisher's participant sid.
    pub participant: String,
    pub kind: MediaKind,
    pub priority: Priority,
    pub rids: Vec<String>,
    /// The worker its publisher is on.
    pub worker: usize,
}

/// Every worker's publications, by track sid.
pub type Directory = Arc<Mutex<HashMap<String, Listing>>>;

/// What one worker tells another.
#[derive(Debug)]
pub enum Crossing {
    /// A new publication on the sending worker.
    Published { track: Arc<str>, listing: Listing },
    /// That publication ended.
    Unpublished { track: Arc<str> },
    /// Its publisher muted or unmuted it.
    Muted { track: Arc<str>, muted: bool },
    /// One of its packets, and the format it is in.
    Packet {
        track: Arc<str>,
        packet: Packet,
        params: Option<PayloadParams>,
    },
    /// Worker `from`'s subscriptions need the layers of `track` up to `highest`; `None`:
    /// nothing of it any more.
    Demand {
        track: Arc<str>,
        from: usize,
        highest: Option<LayerIndex>,
    },
    /// A subscriber on the sending worker needs a keyframe of these layers (throttled there).
    Keyframe {
        track: Arc<str>,
        layers: Vec<LayerIndex>,
    },
    /// Worker `from` restarted: what it published or asked for is gone.
    Restarted { from: usize },
}

/// One worker's ends of the relay: a queue to every worker and the shared directory.
#[derive(Debug, Clone)]
pub struct Mesh {
    /// This worker's index.
    pub index: usize,
    to: Vec<mpsc::Sender<Crossing>>,
    directory: Directory,
    /// `sfu_worker_relay_packets_total`.
    relayed: IntCounter,
    /// `sfu_queue_drops_total{queue="worker_relay"}`.
    dropped: IntCounter,
}

impl Mesh {
    /// The relay of `workers` workers: each one's mesh and the receiving end of its queue.
    pub fn build(workers: usize, metrics: &Metrics) -> Vec<(Mesh, mpsc::Receiver<Crossing>)> {
        let (to, from): (Vec<_>, Vec<_>) = (0..workers).map(|_| mpsc::channel(RELAY_QUEUE)).unzip();
        let directory = Directory::default();
        from.into_iter()
            .enumerate()
            .map(|(index, rx)| {
                let mesh = Mesh {
                    index,
                    to: to.clone(),
                    directory: directory.clone(),
                    relayed: metrics.worker_relay_packets.clone(),
                    dropped: metrics.queue_drops.with_label_values(&["worker_relay"]),
                };
                (mesh, rx)
            })
            .collect()
    }

    /// Queues `crossing` for worker `to` without waiting. False if it was dropped.
    pub fn send(&self, to: usize, crossing: Crossing) -> bool {
        let Some(tx) = self.to.get(to).filter(|_| to != self.index) else {
            return false;
        };
        match tx.try_send(crossing) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.dropped.inc();
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        }
    }

    /// Hands a packet of `track` to worker `to`, counted as relayed.
    pub fn send_packet(
        &self,
        to: usize,
        track: &Arc<str>,
        packet: &Packet,
        params: Option<PayloadParams>,
    ) -> bool {
        let crossing = Crossing::Packet {
            track: track.clone(),
            packet: packet.clone(),
            params,
        };
        let sent = self.send(to, crossing);
        if sent {
            self.relayed.inc();
        }
        sent
    }

    /// Hands a packet of `track` to each of `taps` (worker, highest layer it needs) that
    /// needs its layer.
    pub fn send_to_taps(
        &self,
        taps: &[(usize, LayerIndex)],
        track: &Arc<str>,
        packet: &Packet,
        params: Option<PayloadParams>,
    ) {
        for &(worker, highest) in taps {
            if packet.layer <= highest {
                self.send_packet(worker, track, packet, params);
            }
        }
    }

    /// Tells every other worker (`send` skips this one).
    pub fn broadcast(&self, make: impl Fn() -> Crossing) {
        for w in 0..self.to.len() {
            self.send(w, make());
        }
    }

    /// The directory, locked.
    pub fn directory(&self) -> std::sync::MutexGuard<'_, HashMap<String, Listing>> {
        // A worker that panicked holding the lock left a whole map: nothing is half-written.
        self.directory
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The publications of `room` on other workers.
    pub fn listed(&self, room: &str) -> Vec<(String, Listing)> {
        self.directory()
            .iter()
            .filter(|(_, l)| l.room == room && l.worker != self.index)
            .map(|(t, l)| (t.clone(), l.clone()))
            .collect()
    }

    /// Whether more than one worker exists (else nothing ever crosses).
    pub fn is_alone(&self) -> bool {
        self.to.len() < 2
    }
}

/// Takes the crossings waiting in `rx`, after `first`, up to [`RELAY_BURST`].
pub fn burst(first: Crossing, rx: &mut mpsc::Receiver<Crossing>) -> Vec<Crossing> {
    let mut all = vec![first];
    while all.len() < RELAY_BURST {
        match rx.try_recv() {
            Ok(c) => all.push(c),
            Err(_) => break,
        }
    }
    all
}
