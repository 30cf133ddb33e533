//! Synthetic media for the load generator: VP8 frames shaped like a real encoder's output (a
//! keyframe header with the layer's resolution, large keyframes every 2 s, smaller delta frames)
//! and Opus-sized audio, each stamped with its send time so a subscriber with feedback can measure
//! the forwarding latency.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Video frames per second, like a camera.
pub const FPS: u32 = 30;
/// A keyframe every this many frames (2 s), as browsers send without loss.
pub const KEYFRAME_INTERVAL: u32 = 2 * FPS;
/// A keyframe costs this many delta frames' bytes.
const KEYFRAME_WEIGHT: u32 = 4;
/// Audio packets per second (20 ms Opus frames).
pub const AUDIO_PPS: u32 = 50;
/// Bytes of one Opus frame at a voice bitrate (~32 kbit/s).
const AUDIO_BYTES: usize = 80;
/// Where in a frame the send time is stamped: after a keyframe's 10-byte header.
const STAMP_AT: usize = 10;

/// One video encoding: simulcast rid (if any), resolution and bitrate.
#[derive(Debug, Clone)]
pub struct LayerSpec {
    pub rid: Option<&'static str>,
    pub width: u16,
    pub height: u16,
    pub bitrate_bps: u64,
}

/// The three layers a browser sends for a 720p camera.
pub fn simulcast_layers() -> Vec<LayerSpec> {
    vec![
        LayerSpec {
            rid: Some("q"),
            width: 320,
            height: 180,
            bitrate_bps: 150_000,
        },
        LayerSpec {
            rid: Some("h"),
            width: 640,
            height: 360,
            bitrate_bps: 500_000,
        },
        LayerSpec {
            rid: Some("f"),
            width: 1280,
            height: 720,
            bitrate_bps: 1_200_000,
        },
    ]
}

/// The process-wide time origin of send stamps (publishers and subscribers share a process).
fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

fn stamp(buf: &mut [u8], at: Instant) {
    let ns = at.saturating_duration_since(epoch()).as_nanos() as u64;
    if let Some(slot) = buf.get_mut(STAMP_AT..STAMP_AT + 8) {
        slot.copy_from_slice(&ns.to_be_bytes());
    }
}

/// How long ago the frame or audio packet `data` was stamped.
pub fn age_of(data: &[u8], now: Instant) -> Option<Duration> {
    let ns = u64::from_be_bytes(data.get(STAMP_AT..STAMP_AT + 8)?.try_into().ok()?);
    let sent = epoch() + Duration::from_nanos(ns);
    Some(now.saturating_duration_since(sent))
}

/// VP8 frame `n` of `layer`: a keyframe every [`KEYFRAME_INTERVAL`] frames.
pub fn vp8_frame(layer: &LayerSpec, n: u32, now: Instant) -> Vec<u8> {
    let per_second = layer.bitrate_bps / 8;
    // Per interval: one keyframe of KEYFRAME_WEIGHT units plus the deltas of one unit each.
    let units = u64::from(KEYFRAME_INTERVAL - 1 + KEYFRAME_WEIGHT);
    let delta = (per_second * u64::from(KEYFRAME_INTERVAL) / u64::from(FPS) / units) as usize;
    let key = n.is_multiple_of(KEYFRAME_INTERVAL);
    let size = if key {
        delta * KEYFRAME_WEIGHT as usize
    } else {
        delta
    }
    .max(STAMP_AT + 8 + 2);
    let mut f = vec![0u8; size];
    // Frame tag (RFC 6386 §9.1): bit 0 is 0 for a keyframe; show_frame set.
    f[0] = if key { 0x10 } else { 0x11 };
    if key {
        f[3..6].copy_from_slice(&[0x9d, 0x01, 0x2a]);
        f[6..8].copy_from_slice(&layer.width.to_le_bytes());
        f[8..10].copy_from_slice(&layer.height.to_le_bytes());
    }
    for (i, b) in f.iter_mut().enumerate().skip(STAMP_AT + 8) {
        *b = (i as u32).wrapping_mul(2_654_435_761).wrapping_add(n) as u8;
    }
    stamp(&mut f, now);
    f
}

/// One 20 ms Opus-sized audio payload.
pub fn opus_frame(n: u32, now: Instant) -> Vec<u8> {
    let mut f = vec![0u8; AUDIO_BYTES];
    f[0] = 0xfc;
    for (i, b) in f.iter_mut().enumerate().skip(STAMP_AT + 8) {
        *b = (i as u32 ^ n) as u8;
    }
    stamp(&mut f, now);
    f
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_average_the_layer_bitrate_and_carry_their_stamp() {
        // Stamps count from the process epoch; instants before it cannot be stamped.
        epoch();
        let t = Instant::now();
        for layer in simulcast_layers() {
            let bytes: usize = (0..KEYFRAME_INTERVAL)
                .map(|n| vp8_frame(&layer, n, t).len())
                .sum();
            let bps = bytes as u64 * 8 * u64::from(FPS) / u64::from(KEYFRAME_INTERVAL);
            let error = bps.abs_diff(layer.bitrate_bps) as f64 / layer.bitrate_bps as f64;
            assert!(error < 0.05, "{layer:?}: {bps} bit/s");
        }
        let key = vp8_frame(&simulcast_layers()[2], 0, t);
        assert_eq!(key[0] & 1, 0);
        assert_eq!(&key[3..6], &[0x9d, 0x01, 0x2a]);
        assert_eq!(u16::from_le_bytes([key[6], key[7]]), 1280);
        let later = t + Duration::from_millis(7);
        assert!(age_of(&key, later).unwrap() >= Duration::from_millis(7));
        assert_eq!(vp8_frame(&simulcast_layers()[0], 1, t)[0] & 1, 1);
    }
}
