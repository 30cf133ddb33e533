//! What the fuzz targets share: a publication's forwarding core as the media worker drives it
//! (a [`Router`] with five subscribers, their [`Allocator`]), fed RTP datagrams parsed by the
//! stack's header parser and control calls chosen by the fuzzer.

use std::time::{Duration, Instant};

use libfuzzer_sys::arbitrary::{Result, Unstructured};
use sfu::forward::allocator::{Allocator, Cap, Priority};
use sfu::forward::keyframe::KeyframeThrottle;
use sfu::forward::packet::Header;
use sfu::forward::router::{Fanout, Preference, Router};
use sfu::forward::selector::MAX_LAYERS;
use sfu::forward::{Codec, Packet};
use str0m::rtp::{ExtensionMap, RtpHeader};

/// Subscribers of the publication; ids 0..SUBSCRIBERS (a control call may name one more, absent).
const SUBSCRIBERS: u8 = 5;

/// One publication and its subscribers.
pub struct Stage {
    router: Router<u8, u8>,
    fanout: Fanout<u8, u8>,
    allocator: Allocator<u8>,
    throttles: [KeyframeThrottle; MAX_LAYERS],
    exts: ExtensionMap,
    codec: Codec,
    now: Instant,
    /// The highest extended sequence number per layer, to unroll 16-bit ones as the stack does.
    highest: [Option<u64>; MAX_LAYERS],
}

impl Stage {
    /// A publication whose packets carry `codec`, with three simulcast layers or one.
    pub fn new(u: &mut Unstructured) -> Result<Self> {
        let codec = *u.choose(&[
            Codec::Vp8,
            Codec::Vp9,
            Codec::H264,
            Codec::Opus,
            Codec::Other,
        ])?;
        let priority = match codec {
            Codec::Opus => Priority::Audio,
            _ => *u.choose(&[Priority::Camera, Priority::Screen])?,
        };
        let rids = if u.arbitrary()? {
            vec!["q".into(), "h".into(), "f".into()]
        } else {
            Vec::new()
        };
        let mut router = Router::new(priority, rids);
        for s in 0..SUBSCRIBERS {
            router.subscribe(s);
            router.set_route(&s, Some(s));
        }
        Ok(Self {
            router,
            fanout: Fanout::default(),
            allocator: Allocator::default(),
            throttles: Default::default(),
            exts: ExtensionMap::standard(),
            codec,
            now: Instant::now(),
            highest: [None; MAX_LAYERS],
        })
    }

    /// One datagram from the publisher: parsed as the stack parses RTP (any extensions), then
    /// through the core as the worker hands it over.
    pub fn rtp(&mut self, datagram: &[u8]) {
        let Some(header) = RtpHeader::_parse(datagram, &self.exts) else {
            return;
        };
        let Some(payload) = datagram.get(header.header_len..) else {
            return;
        };
        let layer = header
            .ext_vals
            .rid
            .map_or(0, |rid| self.router.layer_index(&rid));
        let seq = self.unroll(layer, header.sequence_number);
        let core_header = Header {
            ssrc: *header.ssrc,
            seq,
            timestamp: header.timestamp,
            marker: header.marker,
            audio_level: header.ext_vals.audio_level,
            voice_activity: header.ext_vals.voice_activity,
        };
        let packet = Packet::new(core_header, self.codec, layer, self.now, payload.into());
        self.router.on_packet(&packet, self.now, &mut self.fanout);
        if let Some(layer) = self.fanout.keyframe_request {
            if let Some(throttle) = self.throttles.get_mut(usize::from(layer)) {
                throttle.allow(self.now);
            }
        }
    }

    /// A subscriber asked for a keyframe (PLI or FIR).
    pub fn keyframe_request(&mut self, subscriber: u8) {
        for layer in self.router.keyframe_for(&subscriber, self.now) {
            if let Some(throttle) = self.throttles.get_mut(usize::from(layer)) {
                throttle.allow(self.now);
            }
        }
    }

    /// A subscriber's connection has a new bandwidth estimate (TWCC or REMB): allocate it.
    pub fn estimate(&mut self, subscriber: u8, bps: u64) {
        let Some(demand) = self.router.demand(&subscriber, subscriber, self.now) else {
            return;
        };
        let _ = Allocator::desired_bps(std::slice::from_ref(&demand));
        for (key, cap) in self.allocator.allocate(bps, &[demand], self.now) {
            self.router.set_cap(&key, cap);
        }
    }

    /// Time passes.
    pub fn advance(&mut self, millis: u64) {
        self.now += Duration::from_millis(millis);
    }

    /// One control call the worker makes on a subscriber's behalf, chosen by the fuzzer.
    pub fn control(&mut self, u: &mut Unstructured) -> Result<()> {
        let s: u8 = u.int_in_range(0..=SUBSCRIBERS)?;
        match u.int_in_range(0..=9)? {
            0 => {
                self.router.subscribe(s);
                self.router.set_route(&s, Some(s));
            }
            1 => {
                self.router.unsubscribe(&s);
            }
            2 => {
                self.router.set_paused(&s, u.arbitrary()?);
            }
            3 => {
                let layer = u.arbitrary::<Option<u8>>()?;
                self.router.set_preference(&s, Preference::Layer(layer));
            }
            4 => {
                let size = Preference::Size(u.arbitrary()?, u.arbitrary()?);
                self.router.set_preference(&s, size);
            }
            5 => {
                let cap = u.arbitrary::<Option<(u8, u8)>>()?;
                let cap = cap.map(|(layer, max_tid)| Cap { layer, max_tid });
                self.router.set_cap(&s, cap);
            }
            6 => self.keyframe_request(s),
            7 => {
                let _ = self.router.keyframe_for_targets(self.now);
                let _ = self.router.dynacast();
            }
            8 => self.estimate(s, u.arbitrary()?),
            _ => {
                let mut counts = [0; MAX_LAYERS + 1];
                self.router.count_layers(&mut counts);
                let _ = (self.router.current_layer(&s), self.router.forwarded(&s));
            }
        }
        Ok(())
    }

    fn unroll(&mut self, layer: u8, seq: u16) -> u64 {
        let slot = &mut self.highest[usize::from(layer).min(MAX_LAYERS - 1)];
        let extended = match *slot {
            None => u64::from(seq) + (1 << 16),
            Some(highest) => {
                let delta = seq.wrapping_sub(highest as u16) as i16;
                highest.saturating_add_signed(i64::from(delta))
            }
        };
        *slot = Some(slot.map_or(extended, |h| h.max(extended)));
        extended
    }
}
