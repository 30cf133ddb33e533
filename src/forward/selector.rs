//! Simulcast layer choice for one subscription: preferred, target and current layer.
//!
//! Like mediasoup's SimulcastConsumer, the three are separate and each has one reason to change:
//! - **preferred**: what the subscriber asked for (`set_quality`, or its video element's size);
//! - **target**: the preferred layer capped by the Allocator's share of the bandwidth estimate,
//!   then moved to a layer the publisher is actually sending;
//! - **current**: the layer being forwarded now.
//!
//! Current follows target only at a keyframe of the target layer: simulcast layers are
//! independent encodings, and a decoder fed a delta frame from another encoder shows garbage.
//! Until that keyframe arrives the old layer keeps flowing, so switching never freezes the
//! picture, unless the old layer itself died.

use std::time::{Duration, Instant};

/// Spatial layer index: 0 is the lowest resolution (rid `q`), 2 the highest (`f`).
pub type LayerIndex = u8;

/// Most simulcast layers a publication has (q, h, f).
pub const MAX_LAYERS: usize = 3;

/// A layer that sent nothing for this long is down: the publisher stopped encoding it (its
/// uplink shrank, or dynacast turned it off). At 30 fps even the smallest layer sends several
/// packets in this time.
pub const LAYER_DOWN_AFTER: Duration = Duration::from_secs(1);

/// A layer that fell silent while a lower layer of the same publication kept arriving for this
/// long is down sooner: the publisher dropped it (browsers stop their top layer when their
/// uplink estimate falls), and waiting the whole [`LAYER_DOWN_AFTER`] froze its subscribers
/// that long before the switch down even began. The layers of one frame arrive within
/// milliseconds of each other; what could be mistaken is a top layer whose encoder skipped 10
/// frames in a row (at 20 fps) while the others went on. A mistake costs a keyframe request
/// for the layer below and, if that keyframe comes before the top layer's next packet, a
/// switch down and a keyframe to come back up; the layer is live again with its next packet.
pub const LAYER_DOWN_BESIDE_LOWER: Duration = Duration::from_millis(500);

/// Why the layer a subscriber receives changed; reported to the client and counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SwitchReason {
    /// The first layer this subscription sent.
    Start,
    /// The subscriber asked for another quality.
    Request,
    /// The Allocator moved it to fit the subscriber's bandwidth estimate.
    Bandwidth,
    /// The publisher started sending a better layer within the preference (its uplink grew,
    /// or dynacast turned the layer back on).
    Publisher,
    /// The layer being sent stopped arriving; a lower one took its place.
    LayerLost,
}

impl SwitchReason {
    pub fn as_str(self) -> &'static str {
        match self {
            SwitchReason::Start => "start",
            SwitchReason::Request => "request",
            SwitchReason::Bandwidth => "bandwidth",
            SwitchReason::Publisher => "publisher",
            SwitchReason::LayerLost => "layer_lost",
        }
    }
}

/// The selector's verdict on one packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Forward it. `switched` is set on the first packet of a new current layer.
    Forward { switched: Option<SwitchReason> },
    /// The packet is from the target layer, which needs a keyframe first: ask for one.
    NeedKeyframe,
    /// Not a layer this subscriber receives now.
    Skip,
    /// Nothing is to be sent (quality off, or no bandwidth for even the lowest layer).
    Off,
}

#[derive(Debug)]
pub struct Selector {
    preferred: Option<LayerIndex>,
    /// The Allocator's cap; `None` pauses the video for lack of bandwidth.
    cap: Option<LayerIndex>,
    target: Option<LayerIndex>,
    current: Option<LayerIndex>,
    last_seen: [Option<Instant>; MAX_LAYERS],
    /// Why the target last changed by request or allocation: what the next switch is reported
    /// as. Without one, a switch follows a layer going down or coming back.
    pending_reason: Option<SwitchReason>,
    /// The subscriber asked for a layer it has not reached yet: every step up on the way is
    /// the request's doing (the estimate may let it climb one layer at a time), until it gets
    /// there or bandwidth cuts it.
    climbing_to_request: bool,
    /// Some layer was ever forwarded.
    started: bool,
}

impl Default for Selector {
    fn default() -> Self {
        Self {
            preferred: Some(MAX_LAYERS as LayerIndex - 1),
            cap: Some(MAX_LAYERS as LayerIndex - 1),
            target: None,
            current: None,
            last_seen: [None; MAX_LAYERS],
            pending_reason: None,
            climbing_to_request: false,
            started: false,
        }
    }
}

impl Selector {
    pub fn preferred(&self) -> Option<LayerIndex> {
        self.preferred
    }

    pub fn current(&self) -> Option<LayerIndex> {
        self.current
    }

    pub fn target(&self) -> Option<LayerIndex> {
        self.target
    }

    /// The layer the subscriber would receive if the publisher sent every layer: what dynacast
    /// must keep the publisher encoding.
    pub fn desired(&self) -> Option<LayerIndex> {
        // A layer past the last one asks for the best there is (found by fuzz/ `rtp`: an
        // index out of range used to panic).
        Some(
            self.preferred?
                .min(self.cap?)
                .min(MAX_LAYERS as LayerIndex - 1),
        )
    }

    /// The subscriber asks for at most `layer` (`None`: nothing).
    pub fn set_preferred(&mut self, layer: Option<LayerIndex>) {
        if self.preferred != layer {
            self.preferred = layer;
            self.pending_reason = Some(SwitchReason::Request);
            // Already on (or above) it, there is nothing to climb: a later step up is the
            // publisher's (its layer came back), not this request's.
            self.climbing_to_request =
                layer.is_some_and(|preferred| self.current.is_none_or(|c| c < preferred));
        }
    }

    /// The Allocator's cap (`None`: no bandwidth for this video).
    pub fn set_cap(&mut self, cap: Option<LayerIndex>) {
        let before = self.desired();
        self.cap = cap;
        let after = self.desired();
        // A cap that follows the preference down (or stays above it) changes nothing the
        // subscriber sees; only a cap that moves the desired layer is a bandwidth decision.
        // A cap that lets a requested layer through (the request raised it) is the request's
        // doing: the subscriber sees what it asked for, and is told so.
        let follows_request = self.pending_reason == Some(SwitchReason::Request)
            && after.is_some()
            && after >= before;
        if after != before && !follows_request {
            self.pending_reason = Some(SwitchReason::Bandwidth);
        }
        if after < before {
            self.climbing_to_request = false;
        }
    }

    /// `layer` was receiving packets at `at`: what a new subscription learns from the
    /// publication, so its first packets go straight to the right layer instead of starting
    /// on whichever layer's packet happened to come first.
    pub fn layer_seen(&mut self, layer: LayerIndex, at: Instant) {
        if let Some(seen) = self.last_seen.get_mut(usize::from(layer)) {
            *seen = Some(seen.map_or(at, |t| t.max(at)));
        }
    }

    fn is_live(&self, layer: LayerIndex, now: Instant) -> bool {
        let Some(seen) = self.last_seen[layer as usize] else {
            return false;
        };
        now.saturating_duration_since(seen) < LAYER_DOWN_AFTER
            && !self.last_seen[..layer as usize].iter().any(|lower| {
                lower.is_some_and(|t| t.saturating_duration_since(seen) >= LAYER_DOWN_BESIDE_LOWER)
            })
    }

    /// The layer to aim for now: the best live layer within the desired one, or failing that
    /// the lowest live layer above it (something beats nothing), or the desired one itself
    /// while nothing is live.
    fn effective_target(&self, now: Instant) -> Option<LayerIndex> {
        let desired = self.desired()?;
        let live_within = (0..=desired).rev().find(|&l| self.is_live(l, now));
        let live_above = (desired + 1..MAX_LAYERS as LayerIndex).find(|&l| self.is_live(l, now));
        Some(live_within.or(live_above).unwrap_or(desired))
    }

    /// Judges one packet of `layer`.
    pub fn on_packet(&mut self, layer: LayerIndex, keyframe: bool, now: Instant) -> Verdict {
        let layer = layer.min(MAX_LAYERS as LayerIndex - 1);
        self.last_seen[layer as usize] = Some(now);
        let target = self.effective_target(now);
        self.target = target;
        let Some(target) = target else {
            self.current = None;
            return Verdict::Off;
        };
        if Some(layer) == self.current {
            // Still the current layer: keep it flowing until the target's keyframe arrives.
            return Verdict::Forward { switched: None };
        }
        if layer != target {
            return Verdict::Skip;
        }
        if !keyframe {
            return Verdict::NeedKeyframe;
        }
        let reason = if self.started {
            // Nobody asked for this switch: the publisher's layers changed under it.
            let by_publisher = match self.current {
                Some(current) if layer > current => SwitchReason::Publisher,
                _ => SwitchReason::LayerLost,
            };
            let up = self.current.is_none_or(|c| layer > c);
            let pending = self.pending_reason.take();
            if self.climbing_to_request && up {
                SwitchReason::Request
            } else if !up && Some(layer) != self.desired() {
                // Down to a layer below the one asked for or allotted: that one stopped
                // arriving, whatever request or cap came before. (A step up on the way to a
                // new cap or request is that change's.)
                by_publisher
            } else {
                pending.unwrap_or(by_publisher)
            }
        } else {
            self.pending_reason = None;
            SwitchReason::Start
        };
        self.started = true;
        self.current = Some(layer);
        if self.preferred.is_none_or(|p| layer >= p) {
            self.climbing_to_request = false;
        }
        Verdict::Forward {
            switched: Some(reason),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn a_layer_past_the_last_means_the_best_there_is() {
        let t = Instant::now();
        let mut s = Selector::default();
        s.set_preferred(Some(200));
        s.set_cap(Some(255));
        assert_eq!(s.desired(), Some(MAX_LAYERS as LayerIndex - 1));
        s.on_packet(0, true, t);
        assert_eq!(
            s.on_packet(2, true, t + MS),
            Verdict::Forward {
                switched: Some(SwitchReason::Request)
            }
        );
        assert_eq!(s.current(), Some(2));
    }

    #[test]
    fn starts_on_the_best_live_layer_at_its_keyframe() {
        let t = Instant::now();
        let mut s = Selector::default();
        assert_eq!(s.on_packet(0, false, t), Verdict::NeedKeyframe);
        assert_eq!(
            s.on_packet(0, true, t),
            Verdict::Forward {
                switched: Some(SwitchReason::Start)
            }
        );
        // The high layer appears: it becomes the target, the low one flows until its keyframe.
        assert_eq!(s.on_packet(2, false, t + MS), Verdict::NeedKeyframe);
        assert_eq!(
            s.on_packet(0, false, t + MS),
            Verdict::Forward { switched: None }
        );
        assert_eq!(
            s.on_packet(2, true, t + 2 * MS),
            Verdict::Forward {
                switched: Some(SwitchReason::Publisher)
            }
        );
    }

    #[test]
    fn an_up_switch_waits_for_the_target_keyframe_and_keeps_the_old_layer_meanwhile() {
        let t = Instant::now();
        let mut s = Selector::default();
        s.set_preferred(Some(0));
        s.on_packet(0, true, t);
        s.on_packet(2, false, t);
        assert_eq!(s.current(), Some(0));
        s.set_preferred(Some(2));
        assert_eq!(s.on_packet(2, false, t + MS), Verdict::NeedKeyframe);
        assert_eq!(
            s.on_packet(0, false, t + 2 * MS),
            Verdict::Forward { switched: None },
            "the low layer keeps flowing until the switch"
        );
        assert_eq!(
            s.on_packet(2, true, t + 3 * MS),
            Verdict::Forward {
                switched: Some(SwitchReason::Request)
            }
        );
        assert_eq!(s.on_packet(0, false, t + 4 * MS), Verdict::Skip);
    }

    #[test]
    fn every_step_up_toward_a_requested_layer_is_the_request() {
        let t = Instant::now();
        let mut s = Selector::default();
        s.set_preferred(Some(0));
        s.set_cap(Some(0));
        for layer in 0..3 {
            s.on_packet(layer, true, t);
        }
        assert_eq!(s.current(), Some(0));
        s.set_preferred(Some(2));
        // The estimate lets it climb one layer at a time.
        s.set_cap(Some(1));
        assert_eq!(
            s.on_packet(1, true, t + MS),
            Verdict::Forward {
                switched: Some(SwitchReason::Request)
            }
        );
        s.set_cap(Some(2));
        assert_eq!(
            s.on_packet(2, true, t + 2 * MS),
            Verdict::Forward {
                switched: Some(SwitchReason::Request)
            }
        );
        // Arrived: from now on a step is bandwidth's again.
        s.set_cap(Some(1));
        assert_eq!(
            s.on_packet(1, true, t + 3 * MS),
            Verdict::Forward {
                switched: Some(SwitchReason::Bandwidth)
            }
        );
        s.set_cap(Some(2));
        assert_eq!(
            s.on_packet(2, true, t + 4 * MS),
            Verdict::Forward {
                switched: Some(SwitchReason::Bandwidth)
            }
        );
    }

    #[test]
    fn a_dead_layer_falls_back_to_the_best_live_one() {
        let t = Instant::now();
        let mut s = Selector::default();
        s.on_packet(2, true, t);
        s.on_packet(1, false, t);
        assert_eq!(s.current(), Some(2));
        // Layer 2 stops; layer 1 keeps coming.
        let later = t + LAYER_DOWN_AFTER;
        assert_eq!(s.on_packet(1, false, later), Verdict::NeedKeyframe);
        assert_eq!(
            s.on_packet(1, true, later + MS),
            Verdict::Forward {
                switched: Some(SwitchReason::LayerLost)
            }
        );
    }

    #[test]
    fn a_layer_lost_after_a_request_already_met_says_layer_lost_and_its_return_publisher() {
        let t = Instant::now();
        let mut s = Selector::default();
        s.on_packet(2, true, t);
        s.on_packet(1, false, t);
        assert_eq!(s.current(), Some(2));
        // The subscriber asks again for the layer it already gets (say auto, then high):
        // nothing to switch, so nothing is pending on the request's account.
        s.set_preferred(Some(1));
        s.set_preferred(Some(2));
        down_to_1_then_back_to_2(&mut s, t + LAYER_DOWN_AFTER);
    }

    /// Layer 2 has stopped and layer 1 flows: at `at` layer 1's keyframe takes its place
    /// (`layer_lost`); then layer 2 comes back, live with its first packet, and takes over at
    /// its keyframe (`publisher`).
    fn down_to_1_then_back_to_2(s: &mut Selector, at: Instant) {
        assert_eq!(s.on_packet(1, false, at), Verdict::NeedKeyframe);
        assert_eq!(
            s.on_packet(1, true, at + MS),
            Verdict::Forward {
                switched: Some(SwitchReason::LayerLost)
            }
        );
        assert_eq!(s.on_packet(2, false, at + 2 * MS), Verdict::NeedKeyframe);
        assert_eq!(
            s.on_packet(2, true, at + 3 * MS),
            Verdict::Forward {
                switched: Some(SwitchReason::Publisher)
            }
        );
    }

    #[test]
    fn a_layer_silent_while_a_lower_one_flows_is_down_before_the_timeout() {
        let t = Instant::now();
        let mut s = Selector::default();
        s.on_packet(2, true, t);
        s.on_packet(1, false, t);
        assert_eq!(s.current(), Some(2));
        // Layer 2 stops; layer 1 keeps coming: not yet down just short of the limit.
        let short = t + LAYER_DOWN_BESIDE_LOWER - MS;
        assert_eq!(s.on_packet(1, false, short), Verdict::Skip);
        assert!(LAYER_DOWN_BESIDE_LOWER < LAYER_DOWN_AFTER);
        down_to_1_then_back_to_2(&mut s, t + LAYER_DOWN_BESIDE_LOWER);
    }

    #[test]
    fn a_silent_layer_with_nothing_else_flowing_waits_the_whole_timeout() {
        let t = Instant::now();
        let mut s = Selector::default();
        s.on_packet(2, true, t);
        // Nothing lower is arriving (the publisher sends its top layer only): a pause of it
        // alone does not move the subscriber before LAYER_DOWN_AFTER.
        let later = t + LAYER_DOWN_BESIDE_LOWER + 100 * MS;
        assert_eq!(
            s.on_packet(2, false, later),
            Verdict::Forward { switched: None }
        );
        assert_eq!(s.target(), Some(2));
    }

    #[test]
    fn an_up_switch_after_a_request_says_request_even_when_the_cap_follows() {
        let t = Instant::now();
        let mut s = Selector::default();
        s.set_preferred(Some(0));
        s.set_cap(Some(0));
        s.on_packet(0, true, t);
        s.on_packet(2, false, t);
        // The subscriber asks for high; the Allocator then lifts its cap to match.
        s.set_preferred(Some(2));
        s.set_cap(Some(2));
        assert_eq!(
            s.on_packet(2, true, t + MS),
            Verdict::Forward {
                switched: Some(SwitchReason::Request)
            }
        );
        // A cap that then lowers it is bandwidth's.
        s.set_cap(Some(0));
        assert_eq!(
            s.on_packet(0, true, t + 2 * MS),
            Verdict::Forward {
                switched: Some(SwitchReason::Bandwidth)
            }
        );
    }

    #[test]
    fn a_resume_or_a_climb_onto_a_layer_below_the_new_cap_is_the_bandwidth() {
        let t = Instant::now();
        let mut s = Selector::default();
        s.on_packet(0, true, t);
        s.on_packet(1, false, t);
        // Paused for bandwidth, then the cap opens to the top while only q and h arrive
        // (dynacast had stopped f): the resume lands below the cap, and is the bandwidth's.
        s.set_cap(None);
        assert_eq!(s.on_packet(0, true, t + MS), Verdict::Off);
        s.set_cap(Some(2));
        assert_eq!(
            s.on_packet(1, true, t + 2 * MS),
            Verdict::Forward {
                switched: Some(SwitchReason::Bandwidth)
            }
        );
        // Capped at q, then at f while f has not restarted yet: the step to h is the cap's.
        s.set_cap(Some(0));
        assert_eq!(
            s.on_packet(0, true, t + 3 * MS),
            Verdict::Forward {
                switched: Some(SwitchReason::Bandwidth)
            }
        );
        s.set_cap(Some(2));
        assert_eq!(
            s.on_packet(1, true, t + 4 * MS),
            Verdict::Forward {
                switched: Some(SwitchReason::Bandwidth)
            }
        );
    }

    #[test]
    fn off_and_no_bandwidth_send_nothing() {
        let t = Instant::now();
        let mut s = Selector::default();
        s.on_packet(1, true, t);
        s.set_preferred(None);
        assert_eq!(s.on_packet(1, true, t), Verdict::Off);
        assert_eq!(s.current(), None);
        s.set_preferred(Some(2));
        s.set_cap(None);
        assert_eq!(s.on_packet(1, true, t), Verdict::Off);
        s.set_cap(Some(1));
        assert_eq!(
            s.on_packet(1, true, t),
            Verdict::Forward {
                switched: Some(SwitchReason::Bandwidth)
            }
        );
    }
}
