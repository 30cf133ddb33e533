//! The Router's decisions out: each delivery written to its subscriber's str0m stream (with
//! the rewritten sequence number, timestamp and VP8 picture ID), layer switches told to the
//! subscriber, keyframe requests sent to the publisher (or, for a relayed publication, to its
//! worker); active speakers told to rooms.

use str0m::media::KeyframeRequestKind;
use str0m::rtp::{ExtensionValues, RtpWrite, SeqNo, Vp8Descriptor};

use super::{PeerId, Route, Source, Worker};
use crate::forward::router::Fanout;
use crate::forward::selector::LayerIndex;
use crate::forward::Packet;
use crate::model::{Quality, Speaker};
use crate::rtc::stack::guard;
use crate::rtc::MediaEvent;

impl Worker {
    /// Sends what the Router decided for one packet of `track`.
    pub(super) fn deliver(&mut self, track: &str, packet: &Packet, fanout: &Fanout<PeerId, Route>) {
        // Media on this worker (a relayed packet included): its reads stay prompt.
        self.active_at = packet.arrival;
        let kind = usize::from(packet.codec.is_video());
        if fanout.lost > 0 {
            self.counters.lost[kind].inc_by(fanout.lost);
        }
        if fanout.waiting_for_keyframe > 0 {
            self.counters
                .dropped_waiting_for_keyframe
                .inc_by(u64::from(fanout.waiting_for_keyframe));
        }
        if fanout.late > 0 {
            self.counters.dropped_late.inc_by(u64::from(fanout.late));
        }
        // Subscribers see the publisher's audio level (their own speaker UI uses it).
        let ext = ExtensionValues {
            audio_level: packet.audio_level.map(|l| -l),
            voice_activity: packet
                .audio_level
                .map(|_| packet.voice_activity.unwrap_or(true)),
            ..Default::default()
        };
        // Parsed by str0m once per packet, only if some subscriber's picture IDs are shifted.
        let mut descriptor: Option<Option<Vp8Descriptor>> = None;
        // Counted here and added to the shared counters once per packet, not per subscriber.
        let (mut sent, mut bytes) = (0u64, 0u64);
        for d in &fanout.deliveries {
            if let Some((layer, reason)) = d.packet.switched {
                self.counters.switches[reason as usize].inc();
                self.tell_switch(track, d.subscriber, layer, reason.as_str());
            }
            let Some(peer) = self.peers.get_mut(&d.subscriber) else {
                continue;
            };
            peer.media_at = packet.arrival;
            let (mid, pt) = d.route;
            let out = &d.packet;
            let mut write = RtpWrite::new(
                pt,
                SeqNo::from(out.seq),
                out.timestamp,
                packet.arrival,
                out.payload.clone(),
            )
            .marker(out.marker)
            .ext_vals(ext.clone());
            if let Some(rewrite) = out.vp8 {
                let parsed =
                    *descriptor.get_or_insert_with(|| Vp8Descriptor::parse(&packet.payload).ok());
                if let Some(d) = parsed {
                    let mut patch = d.patch();
                    if let Some(pid) = rewrite.picture_id {
                        patch = patch.picture_id(pid);
                    }
                    if let Some(tl0) = rewrite.tl0_pic_idx {
                        patch = patch.tl0_pic_idx(tl0);
                    }
                    if let Ok(patch) = patch.build() {
                        write = write.vp8_patch(patch);
                    }
                }
            }
            let video = packet.codec.is_video();
            let written = guard(|| match peer.rtc.direct_api().stream_tx_by_mid(mid, None) {
                Some(tx) => {
                    // A forwarded packet leaves now, whatever the bandwidth estimate: the
                    // publisher paced it already, and when it does not fit the answer is a
                    // lower layer (the Allocator's), never seconds in a queue. (str0m paces
                    // video to 1.1x its estimate by default; audio is unpaced already.)
                    tx.set_unpaced(true);
                    // str0m resends only over RTX: without an RTX stream a NACK for a
                    // nackable packet would have nothing to go out on.
                    let nackable = video && tx.rtx().is_some();
                    tx.write_rtp(write.nackable(nackable));
                    true
                }
                None => false,
            });
            match written {
                Ok(true) => {
                    sent += 1;
                    bytes += out.payload.len() as u64;
                    self.to_poll.insert(d.subscriber);
                }
                Ok(false) => self.counters.error_write.inc(),
                Err(panic) => {
                    tracing::warn!(peer = d.subscriber, "write to subscriber panicked: {panic}");
                    self.counters.error_write.inc();
                }
            }
        }
        if sent > 0 {
            self.counters.rtp_out[kind].inc_by(sent);
            self.counters.bytes_out[kind].inc_by(bytes);
        }
        if let Some(layer) = fanout.keyframe_request {
            self.request_keyframes(track, &[layer]);
        }
    }

    /// Tells the subscriber behind peer `subscriber` that its layer of `track` changed.
    fn tell_switch(
        &self,
        track: &str,
        subscriber: PeerId,
        layer: LayerIndex,
        reason: &'static str,
    ) {
        let Some(publication) = self.publications.get(track) else {
            return;
        };
        let Some(participant) = self
            .peers
            .get(&subscriber)
            .and_then(|p| self.participants.get(&p.owner))
        else {
            return;
        };
        // Without simulcast the one layer there is is the best there is.
        let quality = if publication.router.rids().len() < 2 {
            Quality::High
        } else {
            Quality::of_layer(Some(layer))
        };
        participant.events.send(MediaEvent::QualityChanged {
            track: track.to_string(),
            quality,
            rid: publication.router.rid_name(layer).to_string(),
            reason,
        });
    }

    /// Asks the publisher of `track` for a keyframe of each of `layers` (already throttled by
    /// the Router).
    pub(super) fn request_keyframes(&mut self, track: &str, layers: &[LayerIndex]) {
        let Some(publication) = self.publications.get(track) else {
            return;
        };
        let (publisher, ssrcs) = match &publication.source {
            Source::Local {
                publisher, ssrcs, ..
            } => (*publisher, *ssrcs),
            Source::Relayed { worker, .. } => {
                // The publisher's worker sends the request; this one throttled it already.
                self.relay_keyframe(track, *worker, layers);
                return;
            }
        };
        let Some(peer) = self.peers.get_mut(&publisher) else {
            return;
        };
        for layer in layers {
            let Some(ssrc) = ssrcs.get(usize::from(*layer)).copied().flatten() else {
                continue;
            };
            let sent = guard(|| match peer.rtc.direct_api().stream_rx(&ssrc) {
                Some(stream) => {
                    stream.request_keyframe(KeyframeRequestKind::Pli);
                    true
                }
                None => false,
            });
            if matches!(sent, Ok(true)) {
                self.counters.keyframe_requests_out.inc();
                self.to_poll.insert(publisher);
            }
        }
    }
}

impl Worker {
    /// Tells each room's participants who speaks, when that changed.
    pub(super) fn announce_speakers(&mut self, now: std::time::Instant) {
        for room in self.rooms.values_mut() {
            let Some(list) = room.speakers.poll(now) else {
                continue;
            };
            let speakers: Vec<Speaker> = list
                .into_iter()
                .map(|(participant, level)| Speaker { participant, level })
                .collect();
            for sid in &room.participants {
                if let Some(p) = self.participants.get(sid) {
                    p.events.send(MediaEvent::ActiveSpeakers(speakers.clone()));
                }
            }
        }
    }
}
