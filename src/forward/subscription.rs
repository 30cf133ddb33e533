//! A Subscription: one publication forwarded to one subscriber.
//!
//! It decides per packet whether to forward it and with which sequence number and timestamp
//! (the decision is a value; the worker sends it). Video starts only at a keyframe: anything
//! before it would only show the subscriber garbage or nothing, and cost bandwidth.

use std::sync::Arc;
use std::time::Instant;

use crate::forward::munger::{Munger, Rewrite};
use crate::forward::packet::{Codec, Packet};

/// What to do with one packet for this subscriber.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Forward {
    Send(Outgoing),
    Drop(DropReason),
}

/// A packet ready for the subscriber's stream: rewritten header fields and the shared payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outgoing {
    pub seq: u64,
    pub timestamp: u32,
    pub marker: bool,
    pub payload: Arc<[u8]>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// Video before its first keyframe; the caller should ask for one.
    WaitingForKeyframe,
    /// Older than the current source, or a duplicate.
    Late,
    /// The subscriber paused this subscription (muted or not visible).
    Paused,
}

#[derive(Debug)]
pub struct Subscription {
    codec: Codec,
    munger: Munger,
    waiting_for_keyframe: bool,
    paused: bool,
    pub forwarded: u64,
}

impl Subscription {
    pub fn new(codec: Codec) -> Self {
        Self {
            codec,
            munger: Munger::new(),
            waiting_for_keyframe: codec.is_video(),
            paused: false,
            forwarded: 0,
        }
    }

    /// True until video has seen its first keyframe: the caller asks the publisher for one.
    pub fn needs_keyframe(&self) -> bool {
        self.waiting_for_keyframe
    }

    pub fn set_paused(&mut self, paused: bool) {
        if self.paused && !paused && self.codec.is_video() {
            // Resuming mid-stream: the decoder needs a fresh keyframe.
            self.waiting_for_keyframe = true;
        }
        self.paused = paused;
    }

    pub fn on_packet(&mut self, packet: &Packet, now: Instant) -> Forward {
        if self.paused {
            return Forward::Drop(DropReason::Paused);
        }
        if self.waiting_for_keyframe {
            if !packet.keyframe {
                return Forward::Drop(DropReason::WaitingForKeyframe);
            }
            self.waiting_for_keyframe = false;
            if self.forwarded > 0 {
                self.munger.restart_next();
            }
        }
        match self.munger.rewrite(
            packet.ssrc,
            packet.seq,
            packet.timestamp,
            self.codec.clock_rate(),
            now,
        ) {
            Rewrite::Send { seq, timestamp } => {
                self.forwarded += 1;
                Forward::Send(Outgoing {
                    seq,
                    timestamp,
                    marker: packet.marker,
                    payload: packet.payload.clone(),
                })
            }
            Rewrite::Drop => Forward::Drop(DropReason::Late),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vp8(seq: u64, key: bool) -> Packet {
        Packet {
            ssrc: 7,
            seq,
            timestamp: seq as u32 * 3000,
            marker: true,
            codec: Codec::Vp8,
            keyframe: key,
            audio_level: None,
            voice_activity: None,
            arrival: Instant::now(),
            payload: Arc::from(vec![seq as u8; 10]),
        }
    }

    #[test]
    fn video_starts_at_a_keyframe_and_shares_the_payload() {
        let t = Instant::now();
        let mut s = Subscription::new(Codec::Vp8);
        assert!(s.needs_keyframe());
        assert_eq!(
            s.on_packet(&vp8(1, false), t),
            Forward::Drop(DropReason::WaitingForKeyframe)
        );
        let key = vp8(2, true);
        let Forward::Send(out) = s.on_packet(&key, t) else {
            panic!("keyframe forwarded")
        };
        assert!(Arc::ptr_eq(&out.payload, &key.payload));
        assert!(!s.needs_keyframe());
        assert!(matches!(s.on_packet(&vp8(3, false), t), Forward::Send(o) if o.seq == 3));
    }

    #[test]
    fn audio_flows_from_the_first_packet() {
        let mut p = vp8(1, false);
        p.codec = Codec::Opus;
        let mut s = Subscription::new(Codec::Opus);
        assert!(matches!(s.on_packet(&p, Instant::now()), Forward::Send(_)));
    }

    #[test]
    fn resuming_waits_for_a_keyframe() {
        let t = Instant::now();
        let mut s = Subscription::new(Codec::Vp8);
        assert!(matches!(s.on_packet(&vp8(1, true), t), Forward::Send(_)));
        s.set_paused(true);
        assert_eq!(
            s.on_packet(&vp8(2, false), t),
            Forward::Drop(DropReason::Paused)
        );
        s.set_paused(false);
        assert_eq!(
            s.on_packet(&vp8(3, false), t),
            Forward::Drop(DropReason::WaitingForKeyframe)
        );
        // The subscriber sees no gap where packets were held back.
        assert!(matches!(s.on_packet(&vp8(4, true), t), Forward::Send(o) if o.seq == 2));
    }
}
