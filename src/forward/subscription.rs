//! A Subscription: one publication forwarded to one subscriber.
//!
//! It decides per packet whether to forward it and with which sequence number, timestamp and
//! (VP8) picture ID (the decision is a value; the worker sends it). Video gets every packet of
//! every simulcast layer offered and forwards one layer, chosen by its [`Selector`]; it starts
//! and switches only at a keyframe: anything else would show the subscriber garbage. Within
//! that layer, a [`TemporalFilter`] may leave out the frames of upper temporal layers (a lower
//! frame rate), with no gap in the numbering.

use std::sync::Arc;
use std::time::Instant;

use crate::forward::munger::{Munger, Rewrite};
use crate::forward::packet::{Codec, Packet};
use crate::forward::selector::{LayerIndex, Selector, SwitchReason, Verdict};
use crate::forward::temporal::{Admit, TemporalFilter};
use crate::forward::vp8::{PictureIdMunger, Vp8Rewrite};

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
    /// VP8 descriptor fields to patch; `None` when they go out as they came in.
    pub vp8: Option<Vp8Rewrite>,
    /// Set on the first packet of a newly selected layer.
    pub switched: Option<(LayerIndex, SwitchReason)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// Video of the layer to forward, before its keyframe; the caller should ask the
    /// publisher for a keyframe of this packet's layer.
    WaitingForKeyframe,
    /// A simulcast layer, or a temporal layer, this subscriber does not receive now.
    NotSelected,
    /// Older than the current source, or a duplicate.
    Late,
    /// The subscriber paused this subscription (muted or not visible), asked for quality
    /// off, or has no bandwidth left for it.
    Paused,
}

#[derive(Debug)]
pub struct Subscription {
    codec: Codec,
    munger: Munger,
    selector: Selector,
    picture_ids: PictureIdMunger,
    temporal: TemporalFilter,
    waiting_for_keyframe: bool,
    paused: bool,
    pub forwarded: u64,
}

impl Subscription {
    pub fn new(codec: Codec) -> Self {
        Self {
            codec,
            munger: Munger::new(),
            selector: Selector::default(),
            picture_ids: PictureIdMunger::default(),
            temporal: TemporalFilter::default(),
            waiting_for_keyframe: codec.is_video(),
            paused: false,
            forwarded: 0,
        }
    }

    /// The layer choice, for the Allocator and for reporting.
    pub fn selector(&self) -> &Selector {
        &self.selector
    }

    /// The subscriber asks for at most `layer` (`None`: quality off).
    pub fn set_preferred(&mut self, layer: Option<LayerIndex>) {
        self.selector.set_preferred(layer);
    }

    /// Tells the layer choice that `layer` of the publication was live at `at`.
    pub fn layer_seen(&mut self, layer: LayerIndex, at: Instant) {
        self.selector.layer_seen(layer, at);
    }

    /// The Allocator caps this subscription at `layer` (`None`: no bandwidth for it).
    pub fn set_cap(&mut self, layer: Option<LayerIndex>) {
        self.selector.set_cap(layer);
    }

    /// Forward temporal layers up to `max_tid` (`temporal::ALL_TEMPORAL`: all of them).
    pub fn set_max_temporal(&mut self, max_tid: u8) {
        self.temporal.set_target(max_tid);
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
            // Still told which layers arrive, so a resume does not judge them by an old view
            // (a top layer last seen before the pause would read as stopped).
            self.selector.layer_seen(packet.layer, now);
            return Forward::Drop(DropReason::Paused);
        }
        let mut switched = None;
        if self.codec.is_video() {
            match self.selector.on_packet(packet.layer, packet.keyframe, now) {
                Verdict::Forward { switched: None } if !self.waiting_for_keyframe => {}
                Verdict::Forward { switched: reason } => {
                    if !packet.keyframe {
                        return Forward::Drop(DropReason::WaitingForKeyframe);
                    }
                    // A new layer, or the same one after a pause: a new source for the
                    // subscriber, which must see neither a gap nor time going back.
                    self.waiting_for_keyframe = false;
                    self.temporal.restart();
                    if self.forwarded > 0 {
                        self.munger.restart_next();
                        self.picture_ids.switch_source();
                    }
                    switched = reason.map(|r| (packet.layer, r));
                }
                Verdict::NeedKeyframe => return Forward::Drop(DropReason::WaitingForKeyframe),
                Verdict::Skip => return Forward::Drop(DropReason::NotSelected),
                Verdict::Off => {
                    // Whatever comes back after this must start at a keyframe.
                    self.waiting_for_keyframe = true;
                    return Forward::Drop(DropReason::Paused);
                }
            }
            let vp8 = packet.vp8.as_ref();
            if let Admit::Skip { first } =
                self.temporal.admit(packet.timestamp, vp8, packet.keyframe)
            {
                self.munger.skip(packet.ssrc, packet.seq, !first);
                if first {
                    self.picture_ids.skip(vp8.and_then(|v| v.picture_id));
                }
                return Forward::Drop(DropReason::NotSelected);
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
                let vp8 = packet.vp8.as_ref().and_then(|info| {
                    let rewrite = self.picture_ids.rewrite(info);
                    (!self.picture_ids.is_identity()).then_some(rewrite)
                });
                Forward::Send(Outgoing {
                    seq,
                    timestamp,
                    marker: packet.marker,
                    payload: packet.payload.clone(),
                    vp8,
                    switched,
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
            layer: 0,
            vp8: None,
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
    fn a_paused_subscription_keeps_track_of_the_layers_so_its_resume_starts_on_the_best() {
        use crate::forward::selector::LAYER_DOWN_BESIDE_LOWER;
        let t = Instant::now();
        let layer = |layer: LayerIndex, seq: u64, key: bool| Packet {
            layer,
            ssrc: 7 + u32::from(layer),
            ..vp8(seq, key)
        };
        let mut s = Subscription::new(Codec::Vp8);
        assert!(matches!(
            s.on_packet(&layer(2, 1, true), t),
            Forward::Send(_)
        ));
        s.set_paused(true);
        // Paused while every layer keeps arriving.
        let mut at = t;
        for seq in 2..20 {
            at += LAYER_DOWN_BESIDE_LOWER / 10;
            s.on_packet(&layer(0, seq, false), at);
            s.on_packet(&layer(2, seq, false), at);
        }
        s.set_paused(false);
        // The first packet after the resume is of the lowest layer: the top one is still
        // live, so that is what it waits for.
        assert_eq!(
            s.on_packet(
                &layer(0, 20, true),
                at + std::time::Duration::from_millis(1)
            ),
            Forward::Drop(DropReason::NotSelected)
        );
        assert_eq!(s.selector().target(), Some(2));
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

    #[test]
    fn a_lowered_frame_rate_leaves_no_gap_in_numbers() {
        // One L1T3 layer, two packets a frame: TIDs 0 2 1 2 0 2 1 2 ...
        let t = Instant::now();
        let mut s = Subscription::new(Codec::Vp8);
        let mut out = Vec::new();
        for frame in 0u32..16 {
            if frame == 4 {
                s.set_max_temporal(0);
            }
            if frame == 9 {
                s.set_max_temporal(crate::forward::temporal::ALL_TEMPORAL);
            }
            let tid = [0, 2, 1, 2][frame as usize % 4];
            for i in 0..2u64 {
                let mut p = vp8(u64::from(frame) * 2 + i + 1, frame == 0);
                p.timestamp = frame * 3000;
                p.vp8 = Some(crate::forward::vp8::Vp8Info {
                    picture_id: Some((100 + frame as u16, true)),
                    tl0_pic_idx: Some((frame / 4) as u8),
                    tid: Some(tid),
                    frame_start: i == 0,
                    ..Default::default()
                });
                if let Forward::Send(o) = s.on_packet(&p, t) {
                    let pid = o
                        .vp8
                        .and_then(|v| v.picture_id)
                        .unwrap_or(100 + frame as u16);
                    out.push((frame, o.seq, pid));
                }
            }
        }
        let frames: Vec<u32> = out.iter().step_by(2).map(|o| o.0).collect();
        // Frames 4..8 at TID 0 only (4 and 8); back to all at the next TID 0 frame (12).
        assert_eq!(frames, vec![0, 1, 2, 3, 4, 8, 12, 13, 14, 15]);
        let seqs: Vec<u64> = out.iter().map(|o| o.1).collect();
        assert_eq!(seqs, (1..=20).collect::<Vec<_>>(), "no sequence gap");
        let pids: Vec<u16> = out.iter().step_by(2).map(|o| o.2).collect();
        assert_eq!(pids, (100..110).collect::<Vec<_>>(), "no picture ID gap");
    }

    /// A synthetic 3-layer VP8 simulcast publisher: each layer its own SSRC, sequence numbers,
    /// timestamps and picture IDs, as three independent encoders have.
    struct Simulcast {
        seq: [u64; 3],
        pid: [u16; 3],
        ts: [u32; 3],
        t0: Instant,
    }

    impl Simulcast {
        fn new(t0: Instant) -> Self {
            Self {
                seq: [100, 20_000, 60_000],
                pid: [5, 3000, 32_000],
                ts: [1_000, 500_000, 4_000_000_000],
                t0,
            }
        }

        /// Frame `n` (30 fps) of `layer`: two packets, the first a keyframe start if `key`.
        fn frame(&mut self, layer: usize, n: u32, key: bool) -> Vec<Packet> {
            let at = self.t0 + std::time::Duration::from_millis(u64::from(n) * 33);
            let pid = self.pid[layer];
            self.pid[layer] = (pid + 1) % 0x8000;
            let ts = self.ts[layer];
            self.ts[layer] = ts.wrapping_add(3000);
            (0..2)
                .map(|i| {
                    let seq = self.seq[layer];
                    self.seq[layer] += 1;
                    let mut payload = vec![0x80, 0x80, 0x80 | (pid >> 8) as u8, pid as u8];
                    if i == 0 {
                        payload[0] |= 0x10;
                        payload.extend_from_slice(&[if key { 0x00 } else { 0x01 }, 0, 0]);
                        if key {
                            let w = 320u16 << layer;
                            payload.extend_from_slice(&[0x9d, 0x01, 0x2a]);
                            payload.extend_from_slice(&w.to_le_bytes());
                            payload.extend_from_slice(&(w * 9 / 16).to_le_bytes());
                        }
                    }
                    payload.extend_from_slice(&[layer as u8; 40]);
                    Packet {
                        ssrc: 1000 + layer as u32,
                        seq,
                        timestamp: ts,
                        marker: i == 1,
                        codec: Codec::Vp8,
                        keyframe: i == 0 && key,
                        audio_level: None,
                        voice_activity: None,
                        arrival: at,
                        vp8: crate::forward::vp8::Vp8Info::parse(&payload),
                        payload: Arc::from(payload),
                        layer: layer as u8,
                    }
                })
                .collect()
        }
    }

    /// What the subscriber's stream looked like: per packet the layer it came from, the
    /// outgoing seq/ts/picture ID, and whether it was a keyframe.
    #[derive(Debug, Clone, Copy)]
    struct Sent {
        layer: u8,
        seq: u64,
        ts: u32,
        pid: u16,
        keyframe: bool,
        frame_start: bool,
    }

    /// Runs frames `range` of all three layers through `s` (layers in `alive`, keyframes on
    /// frames where `key(layer, n)`), collecting what is sent and the keyframe requests.
    fn run(
        s: &mut Subscription,
        src: &mut Simulcast,
        range: std::ops::Range<u32>,
        alive: [bool; 3],
        key: impl Fn(usize, u32) -> bool,
        out: &mut Vec<Sent>,
        requests: &mut Vec<(u32, u8)>,
    ) {
        for n in range {
            for (layer, _) in alive.iter().enumerate().filter(|(_, on)| **on) {
                for p in src.frame(layer, n, key(layer, n)) {
                    match s.on_packet(&p, p.arrival) {
                        Forward::Send(o) => {
                            let info = p.vp8.unwrap();
                            let pid = o
                                .vp8
                                .and_then(|r| r.picture_id)
                                .unwrap_or(info.picture_id.unwrap().0);
                            out.push(Sent {
                                layer: p.layer,
                                seq: o.seq,
                                ts: o.timestamp,
                                pid,
                                keyframe: p.keyframe,
                                frame_start: info.frame_start,
                            })
                        }
                        Forward::Drop(DropReason::WaitingForKeyframe) => {
                            requests.push((n, p.layer))
                        }
                        Forward::Drop(_) => {}
                    }
                }
            }
        }
    }

    /// Sequence numbers +1 each packet, timestamps never backwards and +0 within a frame,
    /// picture IDs +1 each frame, and every change of layer starts at a keyframe.
    fn assert_continuous(sent: &[Sent]) {
        for w in sent.windows(2) {
            let (a, b) = (w[0], w[1]);
            assert_eq!(b.seq, a.seq + 1, "seq continuity: {a:?} -> {b:?}");
            let dt = b.ts.wrapping_sub(a.ts);
            assert!(dt < u32::MAX / 2, "timestamp went back: {a:?} -> {b:?}");
            if b.frame_start {
                assert!(dt > 0, "a new frame has a new timestamp: {a:?} -> {b:?}");
                assert_eq!(b.pid, (a.pid + 1) % 0x8000, "picture ID: {a:?} -> {b:?}");
            } else {
                assert_eq!((dt, b.pid), (0, a.pid), "same frame: {a:?} -> {b:?}");
            }
            if b.layer != a.layer {
                assert!(b.keyframe, "switch {a:?} -> {b:?} not at a keyframe");
            }
        }
    }

    #[test]
    fn requesting_low_or_high_forwards_only_that_layer() {
        for want in [0u8, 2] {
            let t = Instant::now();
            let mut src = Simulcast::new(t);
            let mut s = Subscription::new(Codec::Vp8);
            // The publication is running: all three layers are live when the subscriber comes.
            for layer in 0..3 {
                s.layer_seen(layer, t);
            }
            s.set_preferred(Some(want));
            let (mut out, mut req) = (Vec::new(), Vec::new());
            run(
                &mut s,
                &mut src,
                0..60,
                [true; 3],
                |_, n| n % 30 == 0,
                &mut out,
                &mut req,
            );
            assert!(out[0].keyframe);
            assert!(out.iter().all(|p| p.layer == want), "only layer {want}");
            assert_eq!(out.len(), 120, "every packet of it");
            assert_continuous(&out);
        }
    }

    #[test]
    fn switches_happen_exactly_at_keyframes_with_continuous_output() {
        let t = Instant::now();
        let mut src = Simulcast::new(t);
        let mut s = Subscription::new(Codec::Vp8);
        s.set_preferred(Some(0));
        // Keyframes at different frames per layer, as independent encoders produce them.
        let key = |layer: usize, n: u32| n == 0 || n % 25 == 7 * layer as u32 + 3;
        let (mut out, mut req) = (Vec::new(), Vec::new());
        run(&mut s, &mut src, 0..20, [true; 3], key, &mut out, &mut req);
        s.set_preferred(Some(2));
        run(&mut s, &mut src, 20..60, [true; 3], key, &mut out, &mut req);
        s.set_preferred(Some(1));
        run(
            &mut s,
            &mut src,
            60..100,
            [true; 3],
            key,
            &mut out,
            &mut req,
        );
        let layers: Vec<u8> = out.iter().map(|p| p.layer).collect();
        let mut order = layers.clone();
        order.dedup();
        assert_eq!(order, vec![0, 2, 1], "low, then high, then medium");
        // The up-switch came at layer 2's first keyframe after the request (frame 42), and
        // layer 0 kept flowing until then: no freeze.
        let first_high = out.iter().position(|p| p.layer == 2).unwrap();
        assert!(out[first_high].keyframe);
        assert_eq!(out[first_high - 1].layer, 0);
        assert!(
            req.iter().any(|(n, l)| *n >= 20 && *l == 2),
            "a keyframe was asked for"
        );
        assert_continuous(&out);
    }

    #[test]
    fn a_lost_layer_falls_back_within_a_second() {
        let t = Instant::now();
        let mut src = Simulcast::new(t);
        let mut s = Subscription::new(Codec::Vp8);
        let (mut out, mut req) = (Vec::new(), Vec::new());
        // Keyframes arrive on request: every frame after a request is a keyframe candidate.
        run(
            &mut s,
            &mut src,
            0..30,
            [true; 3],
            |_, n| n == 0,
            &mut out,
            &mut req,
        );
        assert_eq!(out.last().unwrap().layer, 2);
        // The high layer stops at frame 30; the medium layer answers keyframe requests.
        let asked = std::cell::Cell::new(None::<u32>);
        let mut frames = Vec::new();
        for n in 30..90 {
            let before = out.len();
            let key = |layer: usize, m: u32| layer == 1 && asked.get().is_some_and(|a| m > a);
            let mut new_req = Vec::new();
            run(
                &mut s,
                &mut src,
                n..n + 1,
                [true, true, false],
                key,
                &mut out,
                &mut new_req,
            );
            if asked.get().is_none() && new_req.iter().any(|(_, l)| *l == 1) {
                asked.set(Some(n));
            }
            if out.len() > before {
                frames.push(n);
            }
        }
        let first_medium = out
            .iter()
            .find(|p| p.layer == 1)
            .expect("fell back to medium");
        assert!(first_medium.keyframe);
        let resumed = frames[0];
        // Layer 2 last sent at frame 29 (t = 957 ms); the fallback frame is within 1 s of the
        // layer being declared down (1 s after its last packet), plus one frame for the keyframe.
        let resumed_at_ms = u64::from(resumed) * 33;
        assert!(
            resumed_at_ms <= 957 + 1000 + 2 * 33,
            "resumed at frame {resumed} ({resumed_at_ms} ms)"
        );
        assert_continuous(&out);
    }

    #[test]
    fn the_allocator_moves_a_subscriber_down_and_back_up_at_a_keyframe() {
        use crate::forward::allocator::{Allocator, Demand, Priority, UPGRADE_HOLD};
        let t = Instant::now();
        let mut src = Simulcast::new(t);
        let mut s = Subscription::new(Codec::Vp8);
        let mut a = Allocator::default();
        let demand = |preferred| Demand {
            key: 1u32,
            priority: Priority::Camera,
            preferred,
            area: 640 * 360,
            layer_bps: [150_000, 500_000, 1_200_000],
            temporal_layers: 0,
        };
        let key = |layer: usize, n: u32| n % 40 == 10 * layer as u32;
        let (mut out, mut req) = (Vec::new(), Vec::new());
        let cap_layer = |c: Option<crate::forward::allocator::Cap>| c.map(|c| c.layer);
        let cap = |a: &mut Allocator<u32>, bps, at| {
            cap_layer(a.allocate(bps, &[demand(Some(2))], at)[0].1)
        };
        s.set_cap(cap(&mut a, 3_000_000, t));
        run(&mut s, &mut src, 0..30, [true; 3], key, &mut out, &mut req);
        assert_eq!(out.last().unwrap().layer, 2);
        s.set_cap(cap(&mut a, 300_000, t + std::time::Duration::from_secs(1)));
        run(&mut s, &mut src, 30..70, [true; 3], key, &mut out, &mut req);
        assert_eq!(
            out.last().unwrap().layer,
            0,
            "300 kbps ends on the low layer"
        );
        let up_at = t + std::time::Duration::from_secs(1) + UPGRADE_HOLD;
        s.set_cap(cap(&mut a, 3_000_000, up_at));
        let before = out.len();
        run(
            &mut s,
            &mut src,
            70..130,
            [true; 3],
            key,
            &mut out,
            &mut req,
        );
        let back = &out[before..];
        let first_high = back
            .iter()
            .position(|p| p.layer == 2)
            .expect("back up to high");
        assert!(
            back[first_high].keyframe,
            "at the next keyframe of the high layer"
        );
        assert!(back[..first_high].iter().all(|p| p.layer == 0));
        assert_continuous(&out);
        // Never above the preference, whatever the estimate.
        s.set_preferred(Some(1));
        s.set_cap(cap_layer(
            a.allocate(50_000_000, &[demand(Some(1))], up_at)[0].1,
        ));
        let before = out.len();
        run(
            &mut s,
            &mut src,
            130..200,
            [true; 3],
            key,
            &mut out,
            &mut req,
        );
        assert_eq!(out.last().unwrap().layer, 1);
        assert!(out[before..].iter().all(|p| p.layer != 2));
    }
}
