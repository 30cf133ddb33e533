//! The relay between workers: one room over several media workers.
//!
//! A room with more participants than `rtc.spread_rooms_at` takes new participants on the
//! least-loaded worker, so its fan-out uses every core. Each worker then holds, besides its
//! own publications, a *relayed* publication for every publication of the room on another
//! worker: the same Router, fed by packets that crossed from the publisher's worker instead of
//! by a peer. A publisher's packet crosses to each worker that has subscribers of it **once**
//! (a [`Crossing::Packet`] sharing the payload's `Arc`; no copy per worker), and only for the
//! layers that worker's subscriptions need; that worker fans it out to its own subscribers.
//! What flows back to the publisher's worker: each worker's layer demand (which decides which
//! layers cross and feeds dynacast) and keyframe requests.
//!
//! Every worker lists its publications in the shared directory and tells the others of changes
//! (`rtc::relay`: the queues and the messages).

use std::sync::Arc;
use std::time::Instant;

use str0m::format::PayloadParams;

use super::{Publication, Source, Worker};
use crate::forward::router::Router;
use crate::forward::selector::{LayerIndex, MAX_LAYERS};
use crate::forward::{Codec, Packet};
use crate::rtc::relay::{Crossing, Listing};

impl Worker {
    /// A local publication is new: listed, and told to the other workers.
    pub(super) fn relay_published(&mut self, track: &Arc<str>, listing: Listing) {
        if self.relay.is_alone() {
            return;
        }
        self.relay
            .directory()
            .insert(track.to_string(), listing.clone());
        self.relay.broadcast(|| Crossing::Published {
            track: track.clone(),
            listing: listing.clone(),
        });
    }

    /// A local publication ended.
    pub(super) fn relay_unpublished(&mut self, track: &str) {
        if self.relay.is_alone() {
            return;
        }
        self.relay.directory().remove(track);
        let track: Arc<str> = Arc::from(track);
        self.relay.broadcast(|| Crossing::Unpublished {
            track: track.clone(),
        });
    }

    /// A local publication was muted or unmuted.
    pub(super) fn relay_muted(&mut self, track: &str, muted: bool) {
        if self.relay.is_alone() {
            return;
        }
        let track: Arc<str> = Arc::from(track);
        self.relay.broadcast(|| Crossing::Muted {
            track: track.clone(),
            muted,
        });
    }

    /// This worker (re)started: whatever an earlier run of it listed is gone, and the others
    /// forget what it published or asked for.
    pub(super) fn relay_restarted(&mut self) {
        if self.relay.is_alone() {
            return;
        }
        let me = self.relay.index;
        self.relay.directory().retain(|_, l| l.worker != me);
        self.relay.broadcast(|| Crossing::Restarted { from: me });
    }

    /// A room came to this worker: the room's publications on other workers become relayed
    /// publications here.
    pub(super) fn relay_room_arrived(&mut self, room: &str) {
        if self.relay.is_alone() {
            return;
        }
        for (track, listing) in self.relay.listed(room) {
            self.add_relayed(Arc::from(track.as_str()), listing);
        }
    }

    /// A room left this worker: its relayed publications go (their subscribers went with it).
    pub(super) fn relay_room_left(&mut self, room: &str) {
        let relayed: Vec<String> = self
            .publications
            .iter()
            .filter(|(_, p)| p.room == room && matches!(p.source, Source::Relayed { .. }))
            .map(|(t, _)| t.clone())
            .collect();
        for track in relayed {
            self.remove_publication(&track);
        }
    }

    /// A publication of another worker, for a room with participants here.
    fn add_relayed(&mut self, track: Arc<str>, listing: Listing) {
        if self.publications.contains_key(&*track) || !self.rooms.contains_key(&listing.room) {
            return;
        }
        let room = listing.room.clone();
        let owner = listing.participant.clone();
        self.publications.insert(
            track.to_string(),
            Publication {
                participant: listing.participant,
                room: listing.room,
                kind: listing.kind,
                source: Source::Relayed {
                    worker: listing.worker,
                    demanded: None,
                },
                params: None,
                codec: Codec::Other,
                router: Router::new(listing.priority, listing.rids),
            },
        );
        self.subscribe_room(&room, &owner, &track);
    }

    /// Tells the publisher's worker what this worker's subscriptions of relayed `track` need,
    /// when that changed: every layer up to dynacast's highest while anyone here subscribes,
    /// nothing once nobody does.
    pub(super) fn relay_demand(&mut self, track: &str) {
        let Some(publication) = self.publications.get_mut(track) else {
            return;
        };
        let Source::Relayed { worker, demanded } = &mut publication.source else {
            return;
        };
        let want = (publication.router.subscription_count() > 0).then(|| {
            publication
                .router
                .dynacast_highest()
                .unwrap_or(MAX_LAYERS as LayerIndex - 1)
        });
        if *demanded == want {
            return;
        }
        *demanded = want;
        let worker = *worker;
        self.relay.send(
            worker,
            Crossing::Demand {
                track: Arc::from(track),
                from: self.relay.index,
                highest: want,
            },
        );
    }

    /// Asks the publisher's worker of relayed `track` for keyframes of `layers`.
    pub(super) fn relay_keyframe(&self, track: &str, worker: usize, layers: &[LayerIndex]) {
        if layers.is_empty() {
            return;
        }
        self.relay.send(
            worker,
            Crossing::Keyframe {
                track: Arc::from(track),
                layers: layers.to_vec(),
            },
        );
    }

    /// What another worker told this one.
    pub(super) fn on_crossing(&mut self, crossing: Crossing) {
        match crossing {
            Crossing::Published { track, listing } => self.add_relayed(track, listing),
            Crossing::Unpublished { track } => {
                if self.is_relayed(&track) {
                    self.remove_publication(&track);
                }
            }
            Crossing::Muted { track, muted } => {
                if self.is_relayed(&track) {
                    self.mute_publication(&track, muted);
                }
            }
            Crossing::Packet {
                track,
                packet,
                params,
            } => self.on_relayed_packet(track, packet, params),
            Crossing::Demand {
                track,
                from,
                highest,
            } => self.on_demand(&track, from, highest),
            Crossing::Keyframe { track, layers } => {
                if !self.is_relayed(&track) {
                    self.request_keyframes(&track, &layers);
                }
            }
            Crossing::Restarted { from } => self.forget_worker(from),
        }
    }

    fn is_relayed(&self, track: &str) -> bool {
        self.publications
            .get(track)
            .is_some_and(|p| matches!(p.source, Source::Relayed { .. }))
    }

    /// A packet of a relayed publication: through its Router to this worker's subscribers.
    fn on_relayed_packet(
        &mut self,
        track: Arc<str>,
        packet: Packet,
        params: Option<PayloadParams>,
    ) {
        let Some(publication) = self.publications.get_mut(&*track) else {
            return;
        };
        if !matches!(publication.source, Source::Relayed { .. }) {
            return;
        }
        let mut refused = Vec::new();
        if publication.params.is_none() && params.is_some() {
            publication.params = params;
            publication.codec = packet.codec;
            refused = super::signaling::route_subscriptions(
                &self.peers,
                &self.participants,
                &track,
                publication,
            );
        }
        for peer in refused {
            self.tell_unsupported(peer, &track);
        }
        self.forward(&track, &packet, Instant::now());
    }

    /// Worker `from` wants (or no longer wants) the packets of local `track`.
    fn on_demand(&mut self, track: &str, from: usize, highest: Option<LayerIndex>) {
        let Some(publication) = self.publications.get_mut(track) else {
            return;
        };
        publication.set_tap(from, highest);
        self.dynacast(track);
    }

    /// Worker `from` restarted: its relayed publications here and its taps of ours go.
    fn forget_worker(&mut self, from: usize) {
        let mut gone = Vec::new();
        let mut changed = Vec::new();
        for (track, p) in self.publications.iter_mut() {
            match &mut p.source {
                Source::Relayed { worker, .. } if *worker == from => gone.push(track.clone()),
                Source::Local { .. } => {
                    if p.set_tap(from, None) {
                        changed.push(track.clone());
                    }
                }
                Source::Relayed { .. } => {}
            }
        }
        for track in gone {
            self.remove_publication(&track);
        }
        for track in changed {
            self.dynacast(&track);
        }
    }
}

impl Publication {
    /// What worker `from` needs of this local publication: the layers up to `highest`, or
    /// (`None`) nothing. Dynacast keeps the highest any worker needs. True if that changed.
    fn set_tap(&mut self, from: usize, highest: Option<LayerIndex>) -> bool {
        let Source::Local { taps, .. } = &mut self.source else {
            return false;
        };
        let old = taps
            .iter()
            .position(|(w, _)| *w == from)
            .map(|i| taps.remove(i).1);
        if let Some(h) = highest {
            taps.push((from, h));
        }
        let remote = taps.iter().map(|(_, h)| *h).max();
        self.router.set_remote_highest(remote);
        old != highest
    }
}
