//! Temporal layers: which frames of a VP8 stream a subscription forwards when its frame rate
//! is lowered instead of its resolution.
//!
//! Browsers send each VP8 simulcast layer with three temporal layers (`L1T3`): frames of TID 0
//! at a quarter of the frame rate, TID 1 adding the next quarter, TID 2 the other half. A frame
//! depends only on frames of its own or a lower TID, so leaving out every frame above a TID
//! leaves a stream the decoder plays at a lower frame rate. Going down can happen at any frame;
//! going up must wait for a frame the decoder can use without what it missed: a TID 0 frame, a
//! keyframe, or one marked layer-sync.
//!
//! The filter decides once per frame (frames are told apart by RTP timestamp), so every packet
//! of a frame shares its fate. Streams without temporal layers pass untouched.

use crate::forward::vp8::Vp8Info;

/// Every temporal layer: no frame is left out.
pub const ALL_TEMPORAL: u8 = u8::MAX;

/// Share of a layer's bitrate its temporal layers up to TID `i` take, for `n` temporal layers
/// (`SHARE[n - 1][i]`): libwebrtc's VP8 rate split (TL0 40%, TL1 20%, TL2 40% for three).
const SHARE: [[f64; 3]; 3] = [[1.0, 1.0, 1.0], [0.6, 1.0, 1.0], [0.4, 0.6, 1.0]];

/// The bitrate of a layer that costs `full_bps` with all of its `layers` temporal layers, when
/// only those up to `max_tid` are forwarded.
pub fn temporal_cost(full_bps: u64, layers: u8, max_tid: u8) -> u64 {
    if layers <= 1 || max_tid >= layers - 1 {
        return full_bps;
    }
    let share = SHARE[usize::from(layers.min(3)) - 1][usize::from(max_tid.min(2))];
    (full_bps as f64 * share) as u64
}

/// Which frames one subscription forwards.
#[derive(Debug)]
pub struct TemporalFilter {
    /// Highest TID wanted.
    target: u8,
    /// Highest TID forwarded now.
    current: u8,
    /// The frame being decided: its RTP timestamp and whether it is forwarded.
    frame: Option<(u32, bool)>,
}

impl Default for TemporalFilter {
    fn default() -> Self {
        Self {
            target: ALL_TEMPORAL,
            current: ALL_TEMPORAL,
            frame: None,
        }
    }
}

/// The filter's word on one packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    Forward,
    /// Left out; `first` on the first packet seen of its frame.
    Skip {
        first: bool,
    },
}

impl TemporalFilter {
    /// Forward temporal layers up to `max_tid` ([`ALL_TEMPORAL`]: all).
    pub fn set_target(&mut self, max_tid: u8) {
        self.target = max_tid;
    }

    /// The source changes (a new simulcast layer, starting at a keyframe): start at the target.
    pub fn restart(&mut self) {
        self.current = self.target;
        self.frame = None;
    }

    pub fn admit(&mut self, timestamp: u32, info: Option<&Vp8Info>, keyframe: bool) -> Admit {
        let Some(tid) = info.and_then(|i| i.tid) else {
            return Admit::Forward;
        };
        if let Some((ts, forward)) = self.frame {
            if ts == timestamp {
                return if forward {
                    Admit::Forward
                } else {
                    Admit::Skip { first: false }
                };
            }
        }
        // A new frame: the place to change the frame rate.
        let sync = keyframe || tid == 0 || info.is_some_and(|i| i.layer_sync);
        if self.target < self.current || (self.target > self.current && sync) {
            self.current = self.target;
        }
        let forward = tid <= self.current;
        self.frame = Some((timestamp, forward));
        if forward {
            Admit::Forward
        } else {
            Admit::Skip { first: true }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The L1T3 pattern: TIDs 0 2 1 2 0 2 1 2 ...
    fn tid_of(frame: u32) -> u8 {
        match frame % 4 {
            0 => 0,
            2 => 1,
            _ => 2,
        }
    }

    fn info(tid: u8) -> Vp8Info {
        Vp8Info {
            tid: Some(tid),
            ..Default::default()
        }
    }

    /// Runs frames `from..to` of two packets each; returns the frames forwarded.
    fn run(f: &mut TemporalFilter, from: u32, to: u32) -> Vec<u32> {
        let mut out = Vec::new();
        for frame in from..to {
            let i = info(tid_of(frame));
            let first = f.admit(frame * 3000, Some(&i), false);
            let second = f.admit(frame * 3000, Some(&i), false);
            match (first, second) {
                (Admit::Forward, Admit::Forward) => out.push(frame),
                (Admit::Skip { first: true }, Admit::Skip { first: false }) => {}
                other => panic!("frame {frame}: packets disagree: {other:?}"),
            }
        }
        out
    }

    #[test]
    fn everything_passes_by_default_and_without_temporal_layers() {
        let mut f = TemporalFilter::default();
        assert_eq!(run(&mut f, 0, 8), (0..8).collect::<Vec<_>>());
        f.set_target(0);
        assert_eq!(f.admit(1, None, false), Admit::Forward);
        assert_eq!(f.admit(2, Some(&Vp8Info::default()), false), Admit::Forward);
    }

    #[test]
    fn down_at_the_next_frame_up_only_at_a_base_layer_frame() {
        let mut f = TemporalFilter::default();
        run(&mut f, 0, 3);
        f.set_target(1);
        // Frame 3 is TID 2: left out at once.
        assert_eq!(run(&mut f, 3, 8), vec![4, 6]);
        f.set_target(0);
        assert_eq!(run(&mut f, 8, 13), vec![8, 12]);
        // Up again: frame 13 (TID 2) and 14 (TID 1) may reference frames not sent; wait for
        // frame 16 (TID 0).
        f.set_target(ALL_TEMPORAL);
        assert_eq!(run(&mut f, 13, 19), vec![16, 17, 18]);
    }

    #[test]
    fn a_layer_sync_frame_or_a_keyframe_also_lets_it_up() {
        let mut f = TemporalFilter::default();
        f.set_target(0);
        run(&mut f, 0, 2);
        f.set_target(ALL_TEMPORAL);
        let synced = Vp8Info {
            layer_sync: true,
            ..info(1)
        };
        assert_eq!(f.admit(2 * 3000, Some(&synced), false), Admit::Forward);
        f.set_target(0);
        run(&mut f, 3, 4);
        f.set_target(ALL_TEMPORAL);
        assert_eq!(f.admit(5 * 3000, Some(&info(2)), true), Admit::Forward);
    }

    #[test]
    fn a_restart_starts_at_the_target() {
        let mut f = TemporalFilter::default();
        f.set_target(1);
        f.restart();
        assert_eq!(run(&mut f, 0, 4), vec![0, 2]);
    }

    #[test]
    fn costs_follow_the_rate_split() {
        assert_eq!(temporal_cost(1_000_000, 3, ALL_TEMPORAL), 1_000_000);
        assert_eq!(temporal_cost(1_000_000, 3, 1), 600_000);
        assert_eq!(temporal_cost(1_000_000, 3, 0), 400_000);
        assert_eq!(temporal_cost(1_000_000, 2, 0), 600_000);
        assert_eq!(temporal_cost(1_000_000, 1, 0), 1_000_000);
        assert_eq!(temporal_cost(1_000_000, 0, 0), 1_000_000);
    }
}
