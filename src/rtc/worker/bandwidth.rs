//! Bandwidth and quality: each subscriber connection's estimate split across its subscriptions
//! by the Allocator, `set_quality` requests, dynacast, and the layer gauge.
//!
//! The decisions are the core's (`forward::allocator`, each Router's demand, cap and dynacast);
//! this file gathers their inputs from the worker's state and hands the results on.

use std::time::Instant;

use str0m::bwe::Bitrate;

use super::peers::Role;
use super::{PeerId, Source, Worker};
use crate::forward::allocator::Allocator;
use crate::forward::router::Preference;
use crate::forward::selector::{SwitchReason, MAX_LAYERS};
use crate::metrics::LAYERS;
use crate::model::FailureCause;
use crate::model::Quality;
use crate::rtc::stack::guard;
use crate::rtc::{MediaError, MediaEvent, QualityPreference};

/// How far above the subscriptions' unlimited demand the estimator is asked to probe.
const PROBE_HEADROOM: f64 = 1.3;
/// Padding for a subscriber whose wanted video is paused because nothing fits its estimate
/// (libwebrtc's minimum video bitrate). With no media going to it, its estimator would get no
/// feedback and keep the state it paused in, which forbids probing: the video stayed paused
/// after the link recovered.
const STARVED_PADDING_BPS: u64 = 30_000;

impl Worker {
    /// A new downstream estimate for a subscriber connection: our own from its TWCC feedback
    /// (`twcc`), or the client's REMB. A client that sends both would make the estimate jump
    /// between two estimators: once TWCC feedback came, REMB is ignored.
    pub(super) fn on_estimate(&mut self, peer: PeerId, bps: u64, twcc: bool) {
        let owner = match self.peers.get(&peer) {
            Some(p) if p.role == Role::Subscriber => p.owner.clone(),
            _ => return,
        };
        let changed = self.participants.get_mut(&owner).is_some_and(|p| {
            p.twcc_estimates |= twcc;
            if p.twcc_estimates && !twcc {
                return false;
            }
            self.metrics.bwe_estimate.observe(bps as f64);
            let changed = p.estimate_bps != Some(bps);
            p.estimate_bps = Some(bps);
            changed
        });
        if changed {
            self.allocate(&owner, Instant::now());
        }
    }

    pub(super) fn set_quality(
        &mut self,
        participant: &str,
        track: &str,
        preference: QualityPreference,
    ) -> Result<(), MediaError> {
        let subscriber = self
            .participants
            .get(participant)
            .and_then(|p| p.subscriber)
            .ok_or(MediaError::TrackNotFound)?;
        let publication = self
            .publications
            .get_mut(track)
            .ok_or(MediaError::TrackNotFound)?;
        let preference = match preference {
            QualityPreference::Quality(q) => Preference::Layer(q.max_layer()),
            QualityPreference::Size(w, h) => Preference::Size(w, h),
        };
        let turned_off = publication
            .router
            .set_preference(&subscriber, preference)
            .ok_or(MediaError::TrackNotFound)?;
        if turned_off {
            // No packet will carry this change: tell the subscriber here.
            self.tell_off(participant, track, SwitchReason::Request);
        }
        self.allocate(participant, Instant::now());
        self.dynacast(track);
        Ok(())
    }

    /// Splits `participant`'s downstream estimate across what it receives and tells the
    /// estimator how far to probe.
    pub(super) fn allocate(&mut self, participant: &str, now: Instant) {
        let Some(p) = self.participants.get(participant) else {
            return;
        };
        let (Some(estimate), Some(peer_id)) = (p.estimate_bps, p.subscriber) else {
            return;
        };
        let mut demands = Vec::new();
        // Tracks with packets coming in: only they are worth probing for. A track whose
        // publisher sends nothing (yet) is allocated on assumed layer rates, but probing for
        // it would send the subscriber padding bursts every few seconds for nothing.
        let mut flowing = Vec::new();
        for track in p.negotiation.tracks() {
            if let Some(publication) = self.publications.get_mut(track) {
                if let Some(d) = publication.router.demand(&peer_id, track.to_string(), now) {
                    if publication.router.is_flowing(now) {
                        flowing.push(d.clone());
                    }
                    demands.push(d);
                }
            }
        }
        let desired = Allocator::desired_bps(&flowing);
        let Some(p) = self.participants.get_mut(participant) else {
            return;
        };
        let caps = p.allocator.allocate(estimate, &demands, now);
        let mut allocated = 0u64;
        let mut starved = false;
        let mut paused = Vec::new();
        for (track, cap) in caps {
            let Some(publication) = self.publications.get_mut(&track) else {
                continue;
            };
            let (cap, paused_now) = publication.router.set_cap(&peer_id, cap);
            if let Some(d) = flowing.iter().find(|d| d.key == track) {
                allocated += d.cost(cap);
                starved |= cap.is_none() && d.preferred.is_some();
            }
            if paused_now {
                paused.push(track);
            }
        }
        for track in paused {
            // Not even the lowest layer fits: a frozen picture must come with its reason.
            self.tell_off(participant, &track, SwitchReason::Bandwidth);
        }
        if let Some(peer) = self.peers.get_mut(&peer_id) {
            // The estimator probes up to twice this: past what every subscription would take
            // unlimited, so the estimate can climb to show room for the next layer. No padding
            // floor beyond str0m's own unless a wanted video is paused (STARVED_PADDING_BPS):
            // filling the link just to measure it costs the subscriber's bandwidth all the
            // time; probes cost it now and then.
            let target = (desired as f64 * PROBE_HEADROOM) as u64;
            let floor = if starved { STARVED_PADDING_BPS } else { 0 };
            let probed = guard(|| {
                peer.rtc
                    .bwe()
                    .set_bitrate(Bitrate::bps(floor), Bitrate::bps(target.max(allocated)))
            });
            match probed {
                Ok(()) => {
                    self.to_poll.insert(peer_id);
                }
                Err(panic) => self.fail_peer(peer_id, FailureCause::Internal, &panic),
            }
        }
    }

    /// Tells `participant` that its video of `track` is off now, and why.
    fn tell_off(&self, participant: &str, track: &str, reason: SwitchReason) {
        if let Some(p) = self.participants.get(participant) {
            p.events.send(MediaEvent::QualityChanged {
                track: track.to_string(),
                quality: Quality::Off,
                rid: "off".into(),
                reason: reason.as_str(),
            });
        }
    }

    /// Tells the publisher of `track` which simulcast layers anyone receives, when that
    /// changes.
    pub(super) fn dynacast(&mut self, track: &str) {
        let Some(publication) = self.publications.get_mut(track) else {
            return;
        };
        if matches!(publication.source, Source::Relayed { .. }) {
            // Its publisher's worker decides, from every worker's demand: this one's goes there.
            publication.router.dynacast();
            self.relay_demand(track);
            return;
        }
        let Some(active) = publication.router.dynacast() else {
            return;
        };
        if let Some(p) = self.participants.get(&publication.participant) {
            p.events.send(MediaEvent::PublisherLayers {
                track: track.to_string(),
                active,
            });
        }
    }

    /// Updates `sfu_video_subscriptions{layer}` by this worker's share.
    pub(super) fn count_layers(&mut self) {
        let mut counts = [0i64; MAX_LAYERS + 1];
        for p in self.publications.values() {
            p.router.count_layers(&mut counts);
        }
        self.set_layer_counts(counts);
    }

    /// Takes this worker's share out of the layer gauge (its state is being abandoned).
    pub(super) fn clear_layer_counts(&mut self) {
        self.set_layer_counts([0; MAX_LAYERS + 1]);
    }

    fn set_layer_counts(&mut self, counts: [i64; MAX_LAYERS + 1]) {
        for (i, layer) in LAYERS.iter().enumerate() {
            let delta = counts[i] - self.layer_counts[i];
            if delta != 0 {
                self.metrics
                    .video_subscriptions
                    .with_label_values(&[layer])
                    .add(delta);
            }
        }
        self.layer_counts = counts;
    }
}
