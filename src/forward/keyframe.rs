//! Keyframes: spotting them in a payload without decoding, and throttling requests for them.
//!
//! A subscriber that joins, loses packets it cannot recover, or switches layers needs a keyframe
//! before it can decode again, and asks with PLI/FIR. Many subscribers of one publisher ask at
//! once; every request that reaches the publisher costs it a large frame and bandwidth. So the
//! server sends at most one request per publication layer per [`KEYFRAME_REQUEST_INTERVAL`]:
//! the keyframe that answers it serves every subscriber that asked.

use std::time::{Duration, Instant};

use crate::forward::packet::Codec;
use crate::forward::vp8::Vp8Info;

/// At most one keyframe request per publication layer in this interval. A keyframe takes a
/// round trip plus encoding time to arrive; asking again sooner only makes the encoder produce
/// keyframes back to back.
pub const KEYFRAME_REQUEST_INTERVAL: Duration = Duration::from_millis(500);

/// Throttles keyframe requests toward one publication layer.
#[derive(Debug, Default)]
pub struct KeyframeThrottle {
    last_sent: Option<Instant>,
}

impl KeyframeThrottle {
    /// True if a request may go upstream now; the caller then sends exactly one.
    pub fn allow(&mut self, now: Instant) -> bool {
        match self.last_sent {
            Some(t) if now.saturating_duration_since(t) < KEYFRAME_REQUEST_INTERVAL => false,
            _ => {
                self.last_sent = Some(now);
                true
            }
        }
    }
}

/// Does this RTP payload start a keyframe? Only the first packet of a keyframe says so.
pub fn is_keyframe(codec: Codec, payload: &[u8]) -> bool {
    match codec {
        // RFC 7741: the descriptor, then on a frame's first packet the VP8 header, P bit 0.
        Codec::Vp8 => Vp8Info::parse(payload).is_some_and(|v| v.keyframe),
        Codec::Vp9 => vp9_keyframe(payload),
        Codec::H264 => h264_keyframe(payload),
        Codec::Opus | Codec::Other => false,
    }
}

/// VP9 (RFC 9628 flexible or not): P=0 (not inter-predicted) and B=1 (start of a frame) on
/// the base spatial layer.
fn vp9_keyframe(p: &[u8]) -> bool {
    let Some(&first) = p.first() else {
        return false;
    };
    let inter_predicted = first & 0x40 != 0;
    let begins_frame = first & 0x08 != 0;
    !inter_predicted && begins_frame
}

/// H.264 (RFC 6184): an IDR slice (5) or SPS (7), alone, in a STAP-A, or starting a FU-A.
fn h264_keyframe(p: &[u8]) -> bool {
    let Some(&first) = p.first() else {
        return false;
    };
    match first & 0x1f {
        5 | 7 => true,
        // STAP-A: 2-byte size then NAL unit, repeated.
        24 => {
            let mut i = 1;
            while i + 2 < p.len() {
                let size = usize::from(u16::from_be_bytes([p[i], p[i + 1]]));
                if matches!(p[i + 2] & 0x1f, 5 | 7) {
                    return true;
                }
                i += 2 + size;
            }
            false
        }
        // FU-A: start bit and the fragmented NAL's type.
        28 => p
            .get(1)
            .is_some_and(|h| h & 0x80 != 0 && matches!(h & 0x1f, 5 | 7)),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vp8_key_and_delta_frames() {
        // S=1, partition 0, no extension; VP8 header P bit 0 = keyframe.
        assert!(is_keyframe(Codec::Vp8, &[0x10, 0x00, 0x9d]));
        assert!(!is_keyframe(Codec::Vp8, &[0x10, 0x01, 0x9d]));
        // Not the start of the frame.
        assert!(!is_keyframe(Codec::Vp8, &[0x00, 0x00]));
        // Extended with a 15-bit picture id, TL0PICIDX and TID.
        assert!(is_keyframe(
            Codec::Vp8,
            &[0x90, 0xe0, 0x81, 0x23, 0x05, 0x20, 0x00]
        ));
        assert!(!is_keyframe(
            Codec::Vp8,
            &[0x90, 0xe0, 0x81, 0x23, 0x05, 0x20, 0x01]
        ));
        // Truncated input is never a keyframe and never a panic.
        assert!(!is_keyframe(Codec::Vp8, &[0x90, 0xe0, 0x81]));
        assert!(!is_keyframe(Codec::Vp8, &[]));
    }

    #[test]
    fn h264_idr_in_every_packetization() {
        assert!(is_keyframe(Codec::H264, &[0x65, 0x88]));
        assert!(is_keyframe(Codec::H264, &[0x67, 0x42]));
        assert!(!is_keyframe(Codec::H264, &[0x41, 0x9a]));
        assert!(is_keyframe(
            Codec::H264,
            &[0x78, 0x00, 0x02, 0x67, 0x42, 0x00, 0x01, 0x68]
        ));
        assert!(is_keyframe(Codec::H264, &[0x7c, 0x85, 0x00]));
        assert!(!is_keyframe(Codec::H264, &[0x7c, 0x05, 0x00]));
        assert!(!is_keyframe(Codec::H264, &[0x78, 0xff]));
    }

    #[test]
    fn vp9_keyframe_flag() {
        assert!(is_keyframe(Codec::Vp9, &[0x08]));
        assert!(!is_keyframe(Codec::Vp9, &[0x48]));
    }

    #[test]
    fn throttle_allows_one_request_per_interval() {
        let t = Instant::now();
        let mut k = KeyframeThrottle::default();
        let allowed = (0..20)
            .filter(|i| k.allow(t + Duration::from_millis(50 * i)))
            .count();
        // 20 requests over 1 s: at 0, 500 ms (and none in between).
        assert_eq!(allowed, 2);
    }
}
