//! A Receiver: one published track's incoming stream (one simulcast layer of it).
//!
//! It measures what arrives (packets, bytes, bitrate over a sliding window, liveness), notes
//! keyframes, and decides when a keyframe request may go upstream. It never reaches into the
//! subscriptions it feeds: the worker hands each packet to them.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::forward::keyframe::KeyframeThrottle;
use crate::forward::munger::MAX_SEQ_JUMP;
use crate::forward::packet::{Codec, Packet};

/// Bitrate is averaged over this window: long enough to span a keyframe and the small frames
/// after it, short enough to follow a publisher that changes its encoding.
pub const BITRATE_WINDOW: Duration = Duration::from_secs(1);
/// A layer with no packet for this long is down (the publisher stopped encoding it, or lost it).
pub const LIVENESS_TIMEOUT: Duration = Duration::from_secs(1);
/// A stream younger than the window is measured over its age, but never less than this: its
/// first keyframe alone must not read as a huge bitrate.
const MIN_MEASURED_SPAN: Duration = Duration::from_millis(200);

#[derive(Debug)]
pub struct Receiver {
    codec: Codec,
    throttle: KeyframeThrottle,
    /// (arrival, bytes) of the packets inside the bitrate window.
    window: VecDeque<(Instant, usize)>,
    window_bytes: usize,
    /// When the stream (re)started: its first packet after a silence longer than the window.
    started: Option<Instant>,
    last_packet: Option<Instant>,
    last_keyframe: Option<Instant>,
    highest_seq: Option<u64>,
    pub packets: u64,
    pub bytes: u64,
}

impl Receiver {
    pub fn new(codec: Codec) -> Self {
        Self {
            codec,
            throttle: KeyframeThrottle::default(),
            window: VecDeque::new(),
            window_bytes: 0,
            started: None,
            last_packet: None,
            last_keyframe: None,
            highest_seq: None,
            packets: 0,
            bytes: 0,
        }
    }

    pub fn codec(&self) -> Codec {
        self.codec
    }

    /// Accounts for one packet. Returns how many packets its sequence number skipped: upstream
    /// loss (NACK may repair it later; a restart's jump is not counted as loss).
    pub fn on_packet(&mut self, packet: &Packet, now: Instant) -> u64 {
        let lost = match self.highest_seq {
            Some(h) if packet.seq > h + 1 && packet.seq - h <= MAX_SEQ_JUMP => packet.seq - h - 1,
            _ => 0,
        };
        if self.highest_seq.is_none_or(|h| packet.seq > h) {
            self.highest_seq = Some(packet.seq);
        }
        let size = packet.payload.len();
        self.packets += 1;
        self.bytes += size as u64;
        if self
            .last_packet
            .is_none_or(|t| now.saturating_duration_since(t) > BITRATE_WINDOW)
        {
            self.started = Some(now);
        }
        self.last_packet = Some(now);
        if packet.keyframe {
            self.last_keyframe = Some(now);
        }
        self.window.push_back((now, size));
        self.window_bytes += size;
        self.expire(now);
        lost
    }

    fn expire(&mut self, now: Instant) {
        while let Some(&(t, size)) = self.window.front() {
            if now.saturating_duration_since(t) <= BITRATE_WINDOW {
                break;
            }
            self.window.pop_front();
            self.window_bytes -= size;
        }
    }

    /// Payload bitrate over the last [`BITRATE_WINDOW`] (or the stream's age, if younger), in
    /// bits per second. Dividing a young stream's bytes by the whole window read its layer as a
    /// fraction of its cost, and the Allocator handed out a layer the estimate could not carry.
    pub fn bitrate_bps(&mut self, now: Instant) -> u64 {
        self.expire(now);
        let age = self
            .started
            .map_or(BITRATE_WINDOW, |t| now.saturating_duration_since(t));
        let span = age.clamp(MIN_MEASURED_SPAN, BITRATE_WINDOW);
        (self.window_bytes as u64 * 8 * 1000) / span.as_millis() as u64
    }

    /// Packets arrived within [`LIVENESS_TIMEOUT`].
    pub fn is_live(&self, now: Instant) -> bool {
        self.last_packet
            .is_some_and(|t| now.saturating_duration_since(t) < LIVENESS_TIMEOUT)
    }

    pub fn last_packet(&self) -> Option<Instant> {
        self.last_packet
    }

    pub fn last_keyframe(&self) -> Option<Instant> {
        self.last_keyframe
    }

    /// A subscriber needs a keyframe. True if a request should go to the publisher now; false
    /// if one went out recently enough that its keyframe will serve this subscriber too.
    pub fn want_keyframe(&mut self, now: Instant) -> bool {
        self.codec.is_video() && self.throttle.allow(now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn packet(seq: u64, size: usize, at: Instant) -> Packet {
        Packet {
            ssrc: 1,
            seq,
            timestamp: 0,
            marker: false,
            codec: Codec::Vp8,
            keyframe: false,
            audio_level: None,
            voice_activity: None,
            arrival: at,
            payload: Arc::from(vec![0u8; size]),
            layer: 0,
            vp8: None,
        }
    }

    #[test]
    fn bitrate_and_liveness_follow_the_stream() {
        let t = Instant::now();
        let mut r = Receiver::new(Codec::Vp8);
        assert!(!r.is_live(t));
        // 100 packets of 1250 bytes over one second: 1 Mbit/s.
        for i in 0..100u64 {
            let at = t + Duration::from_millis(10 * i);
            r.on_packet(&packet(i, 1250, at), at);
        }
        let end = t + Duration::from_millis(1000);
        assert_eq!(r.bitrate_bps(end), 1_000_000);
        assert!(r.is_live(end));
        assert!(!r.is_live(end + LIVENESS_TIMEOUT));
        assert_eq!(r.on_packet(&packet(103, 10, end), end), 3, "100..=102 lost");
        assert_eq!(
            r.on_packet(&packet(101, 10, end), end),
            0,
            "a late one is no loss"
        );
        assert_eq!(r.bitrate_bps(end + Duration::from_secs(2)), 0);
    }

    #[test]
    fn a_young_stream_is_measured_over_its_age() {
        let t = Instant::now();
        let mut r = Receiver::new(Codec::Vp8);
        // 1 Mbit/s for 300 ms reads 1 Mbit/s, not 300 kbit/s.
        for i in 0..30u64 {
            let at = t + Duration::from_millis(10 * i);
            r.on_packet(&packet(i, 1250, at), at);
        }
        assert_eq!(r.bitrate_bps(t + Duration::from_millis(300)), 1_000_000);
        // The first 50 ms (a keyframe's burst) count over at least 200 ms.
        let mut young = Receiver::new(Codec::Vp8);
        young.on_packet(&packet(0, 12_500, t), t);
        assert_eq!(young.bitrate_bps(t + Duration::from_millis(50)), 500_000);
        // After a silence the stream counts as new again.
        let back = t + Duration::from_secs(5);
        for i in 0..30u64 {
            let at = back + Duration::from_millis(10 * i);
            r.on_packet(&packet(1000 + i, 1250, at), at);
        }
        assert_eq!(r.bitrate_bps(back + Duration::from_millis(300)), 1_000_000);
    }

    #[test]
    fn audio_never_asks_for_keyframes() {
        let t = Instant::now();
        assert!(!Receiver::new(Codec::Opus).want_keyframe(t));
        let mut v = Receiver::new(Codec::Vp8);
        assert!(v.want_keyframe(t));
        assert!(!v.want_keyframe(t + Duration::from_millis(100)));
    }
}
