//! The Allocator: splits one subscriber connection's bandwidth estimate across its
//! subscriptions.
//!
//! Priority decides who gets bandwidth first: audio (a meeting survives without video, not
//! without voices), then screen share (unreadable text is worse than a small face), then
//! cameras, larger video elements before smaller. Each video first gets its lowest layer, in
//! priority order; what is left lifts them, in the same order, as high as their preference.
//!
//! A step down lowers the frame rate before the resolution where the stream has temporal
//! layers (VP8 `L1T3`, what browsers send): a layer at half its frame rate comes between that
//! layer and the one below it, and the lowest layer can drop to a quarter before it pauses.
//! People notice fewer frames less than a blurred picture.
//!
//! Estimates wobble. A layer whose bitrate sits near the estimate would be switched up and down
//! every few hundred milliseconds, each switch costing a keyframe and a visible jump. So an
//! upgrade needs [`UPGRADE_HEADROOM`] above the layer's cost, and never comes sooner than
//! [`UPGRADE_HOLD`] after a downgrade of the same subscription. A video being received is
//! paused (no room even for its lowest layer) only once the shortfall has lasted
//! [`PAUSE_AFTER`]; until then it keeps its lowest layer.

use std::collections::HashMap;
use std::hash::Hash;
use std::time::{Duration, Instant};

use crate::forward::selector::{LayerIndex, MAX_LAYERS};
use crate::forward::temporal::{temporal_cost, ALL_TEMPORAL};

/// After a downgrade, no upgrade of that subscription for this long: the estimate that just
/// fell must prove itself before we spend a keyframe going back up.
pub const UPGRADE_HOLD: Duration = Duration::from_secs(2);

/// An upgrade must fit with this much to spare, so an estimate hovering at a layer's bitrate
/// does not move the subscription up and down with every wobble.
pub const UPGRADE_HEADROOM: f64 = 1.15;

/// An estimate that dips a little below what the current allocation costs is noise until it
/// has stayed down this long: a down-switch costs a keyframe and a visible jump, and estimates
/// wobble by a few percent all the time.
pub const DOWNGRADE_AFTER: Duration = Duration::from_millis(1000);

/// A dip to at least this share of what the current allocation costs is treated as noise (for
/// [`DOWNGRADE_AFTER`]); a deeper one is real congestion and is followed at once.
pub const DOWNGRADE_TOLERANCE: f64 = 0.85;

/// A subscription that receives video keeps its lowest layer this long after the estimate
/// stopped leaving room for it, and is paused only if the shortfall lasts: a pause is the most
/// visible change there is, the lowest layer costs little, and an estimate that plunged for a
/// moment (a busy machine's delay spike) is back within a second or two.
pub const PAUSE_AFTER: Duration = Duration::from_secs(2);

/// Assumed bitrate of an audio track whose bitrate is not measured yet (Opus at voice rates).
pub const DEFAULT_AUDIO_BPS: u64 = 64_000;

/// An estimate above this (1 Tbit/s) is read as this: a client's REMB can claim up to 2^81
/// bit/s, which the budget's arithmetic must not wrap on (found by fuzz/ `rtp`).
pub const MAX_ESTIMATE_BPS: u64 = 1_000_000_000_000;

/// What a subscription is, for ordering.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Priority {
    Audio = 0,
    Screen = 1,
    Camera = 2,
}

/// One subscription as the Allocator sees it.
#[derive(Debug, Clone)]
pub struct Demand<K> {
    pub key: K,
    pub priority: Priority,
    /// The highest layer the subscriber wants (`None`: none; quality off).
    pub preferred: Option<LayerIndex>,
    /// Pixels of the subscriber's video element; larger elements get bandwidth first.
    pub area: u32,
    /// Measured bitrate of each layer, bits per second; 0 for a layer that is not being sent.
    pub layer_bps: [u64; MAX_LAYERS],
    /// Temporal layers each layer has (0 or 1: none to leave out).
    pub temporal_layers: u8,
}

/// What one video subscription is given: a layer, and the highest temporal layer of it
/// forwarded ([`ALL_TEMPORAL`]: the full frame rate). Ordered from worst to best.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Cap {
    pub layer: LayerIndex,
    pub max_tid: u8,
}

impl Cap {
    /// A layer at its full frame rate.
    pub fn full(layer: LayerIndex) -> Self {
        Self {
            layer,
            max_tid: ALL_TEMPORAL,
        }
    }
}

impl<K> Demand<K> {
    /// The best layer that is being sent within the preference.
    fn best_layer(&self) -> Option<LayerIndex> {
        let preferred = self.preferred?;
        (0..=preferred.min(MAX_LAYERS as LayerIndex - 1))
            .rev()
            .find(|&l| self.layer_bps[l as usize] > 0)
    }

    fn lowest_layer(&self) -> Option<LayerIndex> {
        let preferred = self.preferred?;
        (0..=preferred.min(MAX_LAYERS as LayerIndex - 1)).find(|&l| self.layer_bps[l as usize] > 0)
    }

    /// Bits per second `cap` takes (0 for none).
    pub fn cost(&self, cap: Option<Cap>) -> u64 {
        cap.map_or(0, |c| {
            temporal_cost(
                self.layer_bps[usize::from(c.layer)],
                self.temporal_layers,
                c.max_tid,
            )
        })
    }

    /// The steps of `layer`, best first: full frame rate, then half (with temporal layers),
    /// then (the lowest layer only, with three) a quarter.
    fn steps(&self, layer: LayerIndex) -> impl Iterator<Item = Cap> {
        let n = self.temporal_layers;
        let half = (n >= 2).then(|| n - 2);
        let quarter = (n >= 3 && Some(layer) == self.lowest_layer()).then_some(0);
        std::iter::once(ALL_TEMPORAL)
            .chain(half)
            .chain(quarter)
            .map(move |max_tid| Cap { layer, max_tid })
    }

    /// Every step from the best within the preference down to the lowest, best first.
    fn ladder(&self) -> Vec<Cap> {
        let (Some(low), Some(best)) = (self.lowest_layer(), self.best_layer()) else {
            return Vec::new();
        };
        (low..=best)
            .rev()
            .filter(|&l| self.layer_bps[usize::from(l)] > 0)
            .flat_map(|l| self.steps(l))
            .collect()
    }
}

#[derive(Debug, Clone, Copy)]
struct Held {
    cap: Option<Cap>,
    last_downgrade: Option<Instant>,
    /// Since when the estimate has left no room even for the lowest layer.
    starved_since: Option<Instant>,
}

/// The Allocator of one subscriber connection. It remembers its last decision per
/// subscription, for the hold after a downgrade, and since when the estimate has been short
/// of what that decision costs.
#[derive(Debug)]
pub struct Allocator<K> {
    held: HashMap<K, Held>,
    short_since: Option<Instant>,
}

impl<K> Default for Allocator<K> {
    fn default() -> Self {
        Self {
            held: HashMap::new(),
            short_since: None,
        }
    }
}

impl<K: Clone + Eq + Hash> Allocator<K> {
    /// Bits per second the subscriber would take if bandwidth were no limit: what the
    /// estimator should probe toward.
    pub fn desired_bps(demands: &[Demand<K>]) -> u64 {
        demands
            .iter()
            .map(|d| match d.priority {
                Priority::Audio => d.layer_bps[0].max(DEFAULT_AUDIO_BPS),
                _ => d.cost(d.best_layer().map(Cap::full)),
            })
            .sum()
    }

    /// Splits `estimate_bps` across `demands`: the cap for each video subscription (`None`:
    /// not enough for even its lowest layer). Audio is always allowed and not listed.
    pub fn allocate(
        &mut self,
        estimate_bps: u64,
        demands: &[Demand<K>],
        now: Instant,
    ) -> Vec<(K, Option<Cap>)> {
        let estimate_bps = estimate_bps.min(MAX_ESTIMATE_BPS);
        if let Some(kept) = self.ride_out_a_dip(estimate_bps, demands, now) {
            return kept;
        }
        let mut budget = estimate_bps as i64;
        let mut video: Vec<&Demand<K>> = Vec::new();
        for d in demands {
            match d.priority {
                Priority::Audio => budget -= d.layer_bps[0].max(DEFAULT_AUDIO_BPS) as i64,
                _ => video.push(d),
            }
        }
        video.sort_by(|a, b| a.priority.cmp(&b.priority).then(b.area.cmp(&a.area)));
        let ladders: Vec<Vec<Cap>> = video.iter().map(|d| d.ladder()).collect();
        let mut caps: Vec<Option<Cap>> = vec![None; video.len()];
        // Everyone's lowest layer first, in priority order: at its full frame rate if it fits,
        // else at a lower one.
        for (i, d) in video.iter().enumerate() {
            let Some(low) = d.lowest_layer() else {
                continue;
            };
            if let Some(step) = d.steps(low).find(|&c| d.cost(Some(c)) as i64 <= budget) {
                caps[i] = Some(step);
                budget -= d.cost(Some(step)) as i64;
            }
        }
        // Then lift each as far as the rest allows.
        for (i, d) in video.iter().enumerate() {
            let Some(from) = caps[i] else { continue };
            let held = self.held.get(&d.key).copied();
            let previous = held.and_then(|h| h.cap);
            let hold_over = held
                .and_then(|h| h.last_downgrade)
                .is_none_or(|t| now.saturating_duration_since(t) >= UPGRADE_HOLD);
            for &step in ladders[i].iter().take_while(|&&c| c > from) {
                let extra = d.cost(Some(step)) as i64 - d.cost(Some(from)) as i64;
                let upgrade = previous.is_none_or(|p| step > p);
                let fits = if upgrade {
                    hold_over && (extra as f64) * UPGRADE_HEADROOM <= budget as f64
                } else {
                    extra <= budget
                };
                if fits {
                    caps[i] = Some(step);
                    budget -= extra;
                    break;
                }
            }
        }
        let mut out = Vec::with_capacity(video.len());
        for (d, mut cap) in video.iter().zip(caps) {
            let entry = self.held.entry(d.key.clone()).or_insert(Held {
                cap,
                last_downgrade: None,
                starved_since: None,
            });
            // The cheapest step: the lowest layer at its lowest frame rate.
            let lowest = d.lowest_layer().and_then(|l| d.steps(l).last());
            if cap.is_none() && lowest.is_some() && entry.cap.is_some() {
                // No room for video it is receiving: keep the lowest layer until the
                // shortfall has lasted.
                let since = *entry.starved_since.get_or_insert(now);
                if now.saturating_duration_since(since) < PAUSE_AFTER {
                    cap = lowest;
                }
            } else {
                entry.starved_since = None;
            }
            // Only bandwidth's cuts start the hold: a cap that follows the subscriber's own
            // preference down must not keep it from going back up when it asks again.
            let by_bandwidth = cap < d.best_layer().map(Cap::full);
            let lower = by_bandwidth
                && match (cap, entry.cap) {
                    (None, Some(_)) => true,
                    (Some(new), Some(old)) => new < old,
                    _ => false,
                };
            if lower {
                entry.last_downgrade = Some(now);
            }
            entry.cap = cap;
            out.push((d.key.clone(), cap));
        }
        self.held.retain(|k, _| demands.iter().any(|d| d.key == *k));
        out
    }

    /// The last decision again, if the estimate is only a little short of what it costs and
    /// has not been for long (slow on noise, fast on congestion). `None`: decide afresh.
    fn ride_out_a_dip(
        &mut self,
        estimate_bps: u64,
        demands: &[Demand<K>],
        now: Instant,
    ) -> Option<Vec<(K, Option<Cap>)>> {
        let mut cost = 0u64;
        let mut kept = Vec::new();
        for d in demands {
            match d.priority {
                Priority::Audio => cost += d.layer_bps[0].max(DEFAULT_AUDIO_BPS),
                _ => {
                    // A subscription never decided, or a layer gone: nothing to keep.
                    let cap = self.held.get(&d.key)?.cap;
                    if cap.is_some_and(|c| d.layer_bps[usize::from(c.layer)] == 0) {
                        self.short_since = None;
                        return None;
                    }
                    cost += d.cost(cap);
                    kept.push((d.key.clone(), cap));
                }
            }
        }
        if estimate_bps >= cost {
            self.short_since = None;
            return None;
        }
        let since = *self.short_since.get_or_insert(now);
        let mild = estimate_bps as f64 >= cost as f64 * DOWNGRADE_TOLERANCE;
        if mild && now.saturating_duration_since(since) < DOWNGRADE_AFTER {
            return Some(kept);
        }
        self.short_since = None;
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    const LAYERS: [u64; 3] = [150_000, 500_000, 1_200_000];

    fn camera(key: u32, preferred: LayerIndex) -> Demand<u32> {
        Demand {
            key,
            priority: Priority::Camera,
            preferred: Some(preferred),
            area: 640 * 360,
            layer_bps: LAYERS,
            temporal_layers: 0,
        }
    }

    /// A camera whose layers each have three temporal layers, as browsers send.
    fn l1t3_camera(key: u32, preferred: LayerIndex) -> Demand<u32> {
        Demand {
            temporal_layers: 3,
            ..camera(key, preferred)
        }
    }

    /// The layer given to `key`.
    fn cap_of(out: &[(u32, Option<Cap>)], key: u32) -> Option<LayerIndex> {
        step_of(out, key).map(|c| c.layer)
    }

    fn step_of(out: &[(u32, Option<Cap>)], key: u32) -> Option<Cap> {
        out.iter().find(|(k, _)| *k == key).and_then(|(_, c)| *c)
    }

    fn at(layer: LayerIndex, max_tid: u8) -> Option<Cap> {
        Some(Cap { layer, max_tid })
    }

    #[test]
    fn an_absurd_estimate_is_plenty_not_an_overflow() {
        let mut a = Allocator::default();
        let out = a.allocate(u64::MAX, &[camera(1, 2), camera(2, 2)], Instant::now());
        assert_eq!(cap_of(&out, 1), Some(2));
        assert_eq!(cap_of(&out, 2), Some(2));
    }

    #[test]
    fn the_frame_rate_goes_down_before_the_resolution() {
        let t = Instant::now();
        let demands = [l1t3_camera(1, 2)];
        // h costs 500k at full rate, 300k at half; q 150k. 400k: h at half rate, not q.
        let mut a = Allocator::default();
        assert_eq!(step_of(&a.allocate(400_000, &demands, t), 1), at(1, 1));
        // f at half rate (720k) comes before h at full rate (500k).
        let mut a = Allocator::default();
        assert_eq!(step_of(&a.allocate(1_000_000, &demands, t), 1), at(2, 1));
        let mut a = Allocator::default();
        assert_eq!(
            step_of(&a.allocate(3_000_000, &demands, t), 1),
            Some(Cap::full(2))
        );
        // The lowest layer drops to half (90k), then a quarter (60k) of its rate before
        // anything pauses.
        let mut a = Allocator::default();
        assert_eq!(step_of(&a.allocate(100_000, &demands, t), 1), at(0, 1));
        let mut a = Allocator::default();
        assert_eq!(step_of(&a.allocate(70_000, &demands, t), 1), at(0, 0));
        let mut a = Allocator::default();
        assert_eq!(step_of(&a.allocate(50_000, &demands, t), 1), None);
    }

    #[test]
    fn a_starved_video_keeps_the_cheapest_step_until_the_pause() {
        let t = Instant::now();
        let mut a = Allocator::default();
        let demands = [l1t3_camera(1, 2)];
        assert_eq!(
            step_of(&a.allocate(3_000_000, &demands, t), 1),
            Some(Cap::full(2))
        );
        assert_eq!(step_of(&a.allocate(10_000, &demands, t + MS), 1), at(0, 0));
        assert_eq!(
            step_of(&a.allocate(10_000, &demands, t + MS + PAUSE_AFTER), 1),
            None
        );
    }

    #[test]
    fn without_temporal_layers_there_are_no_frame_rate_steps() {
        let t = Instant::now();
        let mut a = Allocator::default();
        assert_eq!(
            step_of(&a.allocate(400_000, &[camera(1, 2)], t), 1),
            Some(Cap::full(0))
        );
    }

    #[test]
    fn a_low_estimate_ends_on_the_low_layer_and_a_high_one_goes_back_up() {
        let t = Instant::now();
        let mut a = Allocator::default();
        let demands = [camera(1, 2)];
        assert_eq!(cap_of(&a.allocate(3_000_000, &demands, t), 1), Some(2));
        assert_eq!(cap_of(&a.allocate(300_000, &demands, t), 1), Some(0));
        // Back up only once the hold is over.
        let soon = t + Duration::from_millis(500);
        assert_eq!(cap_of(&a.allocate(3_000_000, &demands, soon), 1), Some(0));
        let later = t + UPGRADE_HOLD;
        assert_eq!(cap_of(&a.allocate(3_000_000, &demands, later), 1), Some(2));
    }

    #[test]
    fn never_above_the_preference() {
        let t = Instant::now();
        let mut a = Allocator::default();
        assert_eq!(
            cap_of(&a.allocate(10_000_000, &[camera(1, 1)], t), 1),
            Some(1)
        );
        let mut off = camera(2, 0);
        off.preferred = None;
        assert_eq!(cap_of(&a.allocate(10_000_000, &[off], t), 2), None);
    }

    #[test]
    fn an_estimate_oscillating_around_a_layer_does_not_flap() {
        let t = Instant::now();
        let mut a = Allocator::default();
        let demands = [camera(1, 2)];
        // The high layer needs 1.2 Mbit/s more than nothing; the estimate wobbles ±8% around
        // what the high layer costs.
        let mut caps = Vec::new();
        for i in 0..40u64 {
            let wobble = if i % 2 == 0 { 0.92 } else { 1.08 };
            let estimate = (LAYERS[2] as f64 * wobble) as u64;
            let now = t + Duration::from_millis(250 * i);
            caps.push(cap_of(&a.allocate(estimate, &demands, now), 1));
        }
        let switches = caps.windows(2).filter(|w| w[0] != w[1]).count();
        assert!(switches <= 1, "switched {switches} times: {caps:?}");
    }

    #[test]
    fn a_short_small_dip_keeps_the_layer_and_a_lasting_one_does_not() {
        let t = Instant::now();
        let mut a = Allocator::default();
        let demands = [camera(1, 2)];
        assert_eq!(cap_of(&a.allocate(3_000_000, &demands, t), 1), Some(2));
        // 10% below what the high layer costs: noise, for a while.
        let dip = (LAYERS[2] as f64 * 0.9) as u64;
        assert_eq!(cap_of(&a.allocate(dip, &demands, t + 100 * MS), 1), Some(2));
        assert_eq!(cap_of(&a.allocate(dip, &demands, t + 900 * MS), 1), Some(2));
        // Still down after DOWNGRADE_AFTER: real, follow it.
        let later = t + 100 * MS + DOWNGRADE_AFTER;
        assert_eq!(cap_of(&a.allocate(dip, &demands, later), 1), Some(1));
    }

    #[test]
    fn lowering_the_preference_does_not_hold_back_raising_it_again() {
        let t = Instant::now();
        let mut a = Allocator::default();
        assert_eq!(
            cap_of(&a.allocate(3_000_000, &[camera(1, 2)], t), 1),
            Some(2)
        );
        // The subscriber asks for low, then high again a moment later: no hold, it was no
        // bandwidth decision.
        assert_eq!(
            cap_of(&a.allocate(3_000_000, &[camera(1, 0)], t + MS), 1),
            Some(0)
        );
        assert_eq!(
            cap_of(&a.allocate(3_000_000, &[camera(1, 2)], t + 2 * MS), 1),
            Some(2)
        );
    }

    #[test]
    fn a_plunge_shorter_than_the_pause_delay_keeps_the_lowest_layer() {
        let t = Instant::now();
        let mut a = Allocator::default();
        let demands = [camera(1, 2)];
        assert_eq!(cap_of(&a.allocate(3_000_000, &demands, t), 1), Some(2));
        // The estimate plunges below the lowest layer for 1.5 s: down to it, never off.
        for ms in (100..1600).step_by(250) {
            let cap = cap_of(&a.allocate(50_000, &demands, t + MS * ms), 1);
            assert_eq!(cap, Some(0), "at {ms} ms");
        }
        assert_eq!(
            cap_of(&a.allocate(3_000_000, &demands, t + MS * 1700), 1),
            Some(0)
        );
        // A second plunge counts afresh, and one that lasts pauses the video.
        let start = t + MS * 2000;
        assert_eq!(cap_of(&a.allocate(50_000, &demands, start), 1), Some(0));
        assert_eq!(
            cap_of(&a.allocate(50_000, &demands, start + MS * 1900), 1),
            Some(0)
        );
        assert_eq!(
            cap_of(&a.allocate(50_000, &demands, start + PAUSE_AFTER), 1),
            None
        );
    }

    #[test]
    fn a_video_never_received_is_not_started_without_room() {
        let t = Instant::now();
        let mut a = Allocator::default();
        assert_eq!(cap_of(&a.allocate(50_000, &[camera(1, 2)], t), 1), None);
    }

    #[test]
    fn a_deep_drop_is_followed_at_once() {
        let t = Instant::now();
        let mut a = Allocator::default();
        let demands = [camera(1, 2)];
        assert_eq!(cap_of(&a.allocate(3_000_000, &demands, t), 1), Some(2));
        assert_eq!(
            cap_of(&a.allocate(600_000, &demands, t + 100 * MS), 1),
            Some(1)
        );
    }

    #[test]
    fn a_dip_that_recovers_forgets_it_began() {
        let t = Instant::now();
        let mut a = Allocator::default();
        let demands = [camera(1, 2)];
        a.allocate(3_000_000, &demands, t);
        let dip = (LAYERS[2] as f64 * 0.9) as u64;
        a.allocate(dip, &demands, t + 100 * MS);
        a.allocate(3_000_000, &demands, t + 500 * MS);
        // A new dip starts its own clock.
        assert_eq!(
            cap_of(&a.allocate(dip, &demands, t + 1200 * MS), 1),
            Some(2)
        );
    }

    #[test]
    fn audio_then_screen_then_larger_cameras_first() {
        let t = Instant::now();
        let mut a = Allocator::default();
        let audio = Demand {
            key: 0,
            priority: Priority::Audio,
            preferred: Some(0),
            area: 0,
            layer_bps: [50_000, 0, 0],
            temporal_layers: 0,
        };
        let mut screen = camera(1, 2);
        screen.priority = Priority::Screen;
        screen.area = 100;
        let mut big = camera(2, 2);
        big.area = 1280 * 720;
        let small = camera(3, 2);
        // Audio 50k; lowest layers 3 × 150k = 450k; 1.5M left lifts the screen to high
        // (1.05M extra with headroom), then the big camera to medium (350k extra).
        let out = a.allocate(2_000_000, &[small.clone(), audio, big, screen], t);
        assert_eq!(cap_of(&out, 1), Some(2), "screen first");
        assert_eq!(cap_of(&out, 2), Some(1), "then the larger camera");
        assert_eq!(
            cap_of(&out, 3),
            Some(0),
            "the small one keeps its low layer"
        );
        // Too little for everyone's low layer: the lowest priority goes without.
        let out = a.allocate(
            300_000,
            &[
                small,
                camera(4, 2),
                Demand {
                    key: 0,
                    priority: Priority::Audio,
                    preferred: Some(0),
                    area: 0,
                    layer_bps: [50_000, 0, 0],
                    temporal_layers: 0,
                },
            ],
            t,
        );
        assert_eq!(out.iter().filter(|(_, c)| c.is_some()).count(), 1);
    }

    #[test]
    fn desired_bitrate_is_what_the_preferences_would_take() {
        assert_eq!(
            Allocator::desired_bps(&[camera(1, 2), camera(2, 0)]),
            1_200_000 + 150_000
        );
    }
}
