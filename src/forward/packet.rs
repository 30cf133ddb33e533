//! The packet the forwarding core works on: a parsed RTP header and a shared payload.
//!
//! The payload is an `Arc<[u8]>`: a publisher's packet is allocated once when it arrives and
//! every subscription that forwards it shares that allocation.

use std::sync::Arc;
use std::time::Instant;

use crate::forward::keyframe::is_keyframe;
use crate::forward::selector::LayerIndex;
use crate::forward::vp8::Vp8Info;

/// The codecs the forwarding core knows how to inspect (keyframes, picture ids).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Codec {
    Opus,
    Vp8,
    Vp9,
    H264,
    /// Forwarded whole, never inspected.
    Other,
}

impl Codec {
    pub fn is_video(self) -> bool {
        matches!(self, Codec::Vp8 | Codec::Vp9 | Codec::H264)
    }

    /// RTP clock rate: 48 kHz for Opus, 90 kHz for video.
    pub fn clock_rate(self) -> u32 {
        match self {
            Codec::Opus => 48_000,
            _ => 90_000,
        }
    }
}

/// One RTP packet from a publisher, as the forwarding core sees it.
#[derive(Debug, Clone)]
pub struct Packet {
    pub ssrc: u32,
    /// Extended sequence number (no 16-bit wrap), as the receiving stack unrolled it.
    pub seq: u64,
    pub timestamp: u32,
    pub marker: bool,
    pub codec: Codec,
    /// True when this packet starts a keyframe (see [`crate::forward::keyframe::is_keyframe`]).
    pub keyframe: bool,
    /// RFC 6464 audio level in -dBov, 0 (loudest) to 127 (silence), when the publisher sent one.
    pub audio_level: Option<i8>,
    /// RFC 6464 voice activity flag, sent with the level.
    pub voice_activity: Option<bool>,
    pub arrival: Instant,
    pub payload: Arc<[u8]>,
    /// Simulcast layer the packet belongs to (0 without simulcast).
    pub layer: LayerIndex,
    /// The VP8 payload descriptor, for VP8.
    pub vp8: Option<Vp8Info>,
}

/// An RTP header's fields as the receiving stack parsed them, before the core looks inside.
#[derive(Debug, Clone, Copy)]
pub struct Header {
    pub ssrc: u32,
    /// Extended sequence number (no 16-bit wrap).
    pub seq: u64,
    pub timestamp: u32,
    pub marker: bool,
    /// The audio level extension as sent: -127..=0 dBov (the sign is dropped, so either works).
    pub audio_level: Option<i8>,
    pub voice_activity: Option<bool>,
}

impl Packet {
    /// The core's packet for a payload of `codec` on `layer`: looks inside it (keyframe, VP8
    /// descriptor) and never fails, whatever the bytes.
    pub fn new(
        header: Header,
        codec: Codec,
        layer: LayerIndex,
        arrival: Instant,
        payload: Arc<[u8]>,
    ) -> Self {
        let vp8 = match codec {
            Codec::Vp8 => Vp8Info::parse(&payload),
            _ => None,
        };
        Self {
            ssrc: header.ssrc,
            seq: header.seq,
            timestamp: header.timestamp,
            marker: header.marker,
            codec,
            // VP8's descriptor is parsed once, above, for this too.
            keyframe: match codec {
                Codec::Vp8 => vp8.is_some_and(|v| v.keyframe),
                _ => is_keyframe(codec, &payload),
            },
            // RFC 6464's 0..=127; some stacks hand the level over as a negative dBov.
            audio_level: header.audio_level.map(|l| l.unsigned_abs().min(127) as i8),
            voice_activity: header.voice_activity,
            arrival,
            payload,
            layer,
            vp8,
        }
    }
}
