//! The edge of the WebRTC stack: one `Rtc` as this server wants it (ICE-lite, RTP mode, the
//! codecs we forward), codec and payload-type lookups, and the panic boundary around str0m
//! calls.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::{Duration, Instant};

use str0m::bwe::Bitrate;
use str0m::format::{Codec as StrCodec, PayloadParams};
use str0m::media::{Mid, Pt};
use str0m::{Rtc, RtcConfig};

use crate::forward::Codec;

/// Where a subscriber connection's bandwidth estimate starts, before feedback arrives: enough
/// for a medium layer and audio, so a new subscriber sees a picture at once and probing lifts it.
pub const INITIAL_SUBSCRIBER_ESTIMATE_KBPS: u64 = 800;

/// How often str0m reports per-stream statistics.
const STATS_INTERVAL: Duration = Duration::from_secs(1);

/// A new peer connection. Both directions use the same codecs: what a publisher may send us and
/// so what we can forward. A subscriber connection also estimates its downstream bandwidth from
/// the client's TWCC feedback (REMB-only clients are read as estimates too).
pub fn new_rtc(now: Instant, subscriber: bool) -> Rtc {
    let config = RtcConfig::new();
    let config = if subscriber {
        config.enable_bwe(Some(Bitrate::kbps(INITIAL_SUBSCRIBER_ESTIMATE_KBPS)))
    } else {
        config
    };
    config
        // Cumulative NACK and packet counts per stream, for the metrics (see the worker).
        .set_stats_interval(Some(STATS_INTERVAL))
        .set_ice_lite(true)
        .set_rtp_mode(true)
        .clear_codecs()
        .enable_opus(true, false)
        .enable_vp8(true)
        .enable_h264(true)
        .enable_vp9(true)
        .build(now)
}

/// How long a sent packet stays in a subscriber stream's resend buffer: str0m's 3 s. Shorter
/// was tried: at 1 s (and at 2 s, less often) a receiver behind 5% loss both ways, bursts and
/// jitter (tests/media.rs) was left with holes that retransmission could no longer fill.
pub const RESEND_BUFFER_AGE: Duration = Duration::from_secs(3);
/// The most packets a video stream's resend buffer holds: 3 s of a layer up to ~1.5 Mbit/s,
/// 1 s of a 5 Mbit/s one (str0m's default is 1,000, each a copy of the packet).
pub const RESEND_BUFFER_VIDEO: usize = 500;
/// The same for audio: a second of 20 ms frames (str0m's default).
pub const RESEND_BUFFER_AUDIO: usize = 50;
/// The most a stream's resends may be of its bytes in the last second (resent / (resent +
/// sent)); past it str0m drops every queued resend. str0m's default, 15%, is about what a link
/// losing 5% with bursts needs once lost resends are asked for again: Chromium behind issue
/// 13's network froze about twice as often with it (docs/reliability.md). Half still bounds
/// what a subscriber asking for everything can draw (as much again as its stream).
const RESEND_RATIO_CAP: Option<f32> = Some(0.5);

/// Sizes the resend (NACK) buffer of the send stream on m-line `mid` by what NACK needs, and
/// so the memory each subscription costs. A stream whose SSRC was renewed starts with str0m's
/// defaults again, so this runs whenever a track is put on a line.
pub fn size_resend_buffer(rtc: &mut Rtc, mid: Mid, video: bool) {
    let packets = if video {
        RESEND_BUFFER_VIDEO
    } else {
        RESEND_BUFFER_AUDIO
    };
    if let Some(tx) = rtc.direct_api().stream_tx_by_mid(mid, None) {
        tx.set_rtx_cache(packets, RESEND_BUFFER_AGE, RESEND_RATIO_CAP);
    }
}

/// Runs a str0m call; a panic in str0m (it panics on internal bugs by design) becomes an Err
/// so it ends one peer, never the worker.
pub fn guard<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    catch_unwind(AssertUnwindSafe(f)).map_err(|e| panic_message(e.as_ref()))
}

/// The text a panic carried, for logs and the participant's `media_failed`.
pub fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "panic in the media worker".into())
}

/// Our codec for a payload type negotiated on `rtc`.
pub fn codec_of(rtc: &Rtc, pt: Pt) -> Codec {
    match rtc
        .codec_config()
        .find(|p| p.pt() == pt)
        .map(|p| p.spec().codec)
    {
        Some(StrCodec::Opus) => Codec::Opus,
        Some(StrCodec::Vp8) => Codec::Vp8,
        Some(StrCodec::Vp9) => Codec::Vp9,
        Some(StrCodec::H264) => Codec::H264,
        _ => Codec::Other,
    }
}

/// The payload parameters of `pt` on `rtc`, to find the same format on another peer.
pub fn params_of(rtc: &Rtc, pt: Pt) -> Option<PayloadParams> {
    rtc.codec_config().find(|p| p.pt() == pt).copied()
}

/// The payload type `rtc` uses for the format `params` describes (codec, and for H.264 its
/// profile and packetization mode): a subscriber gets the publisher's format, or nothing.
pub fn matching_pt(rtc: &Rtc, params: &PayloadParams) -> Option<Pt> {
    rtc.codec_config().match_params(*params).map(|p| p.pt())
}
