//! What comes out of a peer's `Rtc` as events: a publisher's new m-line becomes a Publication,
//! its packets become core packets for the publication's Router, and feedback (keyframe
//! requests, bandwidth estimates, statistics, ICE state) goes where it decides something.

use std::sync::Arc;
use std::time::Instant;

use rand::distr::{Alphanumeric, SampleString};
use str0m::bwe::BweKind;
use str0m::media::{Direction, KeyframeRequestKind, MediaKind, Mid};
use str0m::rtp::RtpPacket;
use str0m::{Event, IceConnectionState};

use super::peers::Role;
use super::signaling::route_subscriptions;
use super::{track_kind, PeerId, Publication, Source, Worker};
use crate::forward::allocator::Priority;
use crate::forward::packet::Header;
use crate::forward::router::Router;
use crate::forward::selector::MAX_LAYERS;
use crate::forward::{Codec, Packet};
use crate::model::FailureCause;
use crate::model::{TrackInfo, TrackSource};
use crate::rtc::relay::Listing;
use crate::rtc::stack::{codec_of, params_of};
use crate::rtc::MediaEvent;

impl Worker {
    pub(super) fn on_event(&mut self, id: PeerId, event: Event) {
        match event {
            Event::RtpPacket(packet) => self.on_rtp(id, packet),
            Event::MediaAdded(added) => self.on_media_added(id, added.mid, added.kind),
            Event::KeyframeRequest(request) => {
                let fir = matches!(request.kind, KeyframeRequestKind::Fir);
                self.counters.keyframe_requests_in[usize::from(fir)].inc();
                self.on_keyframe_request(id, request.mid)
            }
            Event::MediaEgressStats(stats) => self.on_egress_stats(id, &stats),
            Event::MediaIngressStats(stats) => self.on_ingress_stats(id, &stats),
            Event::IceConnectionStateChange(IceConnectionState::Disconnected) => {
                self.fail_peer(
                    id,
                    FailureCause::IceFailed,
                    "ICE disconnected: no consent check or keepalive from the client for 30 s",
                );
            }
            Event::IceConnectionStateChange(
                IceConnectionState::Connected | IceConnectionState::Completed,
            ) => {
                if let Some(peer) = self.peers.get_mut(&id) {
                    peer.ice_up = true;
                }
            }
            Event::Connected => {
                tracing::debug!(peer = id, "peer connected");
                if let Some(peer) = self.peers.get_mut(&id) {
                    peer.connected = true;
                }
                // The data channel's handshake follows: answered at once, not on a tick.
                self.active_at = Instant::now();
            }
            Event::EgressBitrateEstimate(BweKind::Twcc { estimate, .. }) => {
                self.on_estimate(id, estimate.as_u64(), true)
            }
            Event::EgressBitrateEstimate(BweKind::Remb { estimate, .. }) => {
                self.on_estimate(id, estimate.as_u64(), false)
            }
            _ => {}
        }
    }

    /// A publisher's offer brought a new m-line: a Publication, announced to the room, and
    /// (with auto-subscribe) subscribed by everyone else in it.
    fn on_media_added(&mut self, peer_id: PeerId, mid: Mid, kind: MediaKind) {
        let Some(peer) = self.peers.get(&peer_id) else {
            return;
        };
        if peer.role != Role::Publisher || self.by_mid.contains_key(&(peer_id, mid)) {
            return;
        }
        let owner = peer.owner.clone();
        let Some(media) = peer.rtc.media(mid) else {
            return;
        };
        if !matches!(media.direction(), Direction::RecvOnly | Direction::SendRecv) {
            return;
        }
        let cid = media.track_id().to_string();
        let rids: Vec<String> = match media.rids_rx() {
            str0m::media::Rids::Specific(rids) => rids.iter().map(|r| r.to_string()).collect(),
            _ => Vec::new(),
        };
        let Some(participant) = self.participants.get_mut(&owner) else {
            return;
        };
        let track_kind = track_kind(kind);
        let declared = participant.declared.remove(&cid);
        let source = declared
            .as_ref()
            .and_then(|d| d.source)
            .unwrap_or(TrackSource::default_for(track_kind));
        let sid = format!("TR_{}", Alphanumeric.sample_string(&mut rand::rng(), 12));
        let info = TrackInfo {
            sid: sid.clone(),
            participant: owner.clone(),
            cid,
            kind: track_kind,
            source,
            name: declared.and_then(|d| d.name).unwrap_or_default(),
            muted: false,
            layers: rids.clone(),
        };
        participant.published.push(sid.clone());
        participant.events.send(MediaEvent::TrackPublished(info));
        let room = participant.room.clone();
        tracing::info!(track = %sid, participant = %owner, ?kind, "track published");
        let priority = match (kind, source) {
            (MediaKind::Audio, _) => Priority::Audio,
            (_, TrackSource::Screen) => Priority::Screen,
            _ => Priority::Camera,
        };
        let track: Arc<str> = Arc::from(sid.as_str());
        self.by_mid.insert((peer_id, mid), track.clone());
        self.publications.insert(
            sid.clone(),
            Publication {
                participant: owner.clone(),
                room: room.clone(),
                kind,
                source: Source::Local {
                    publisher: peer_id,
                    mid,
                    ssrcs: [None; MAX_LAYERS],
                    taps: Vec::new(),
                },
                params: None,
                codec: Codec::Other,
                router: Router::new(priority, rids.clone()),
            },
        );
        self.metrics
            .publications
            .with_label_values(&[super::kind_label(kind)])
            .inc();
        self.relay_published(
            &track,
            Listing {
                room: room.clone(),
                participant: owner.clone(),
                kind,
                priority,
                rids,
                worker: self.relay.index,
            },
        );
        self.subscribe_room(&room, &owner, &sid);
    }

    /// With auto-subscribe, everyone in `room` on this worker but `owner` subscribes to
    /// `track`.
    pub(super) fn subscribe_room(&mut self, room: &str, owner: &str, track: &str) {
        if !self.settings.auto_subscribe {
            return;
        }
        let others: Vec<String> = self
            .rooms
            .get(room)
            .map(|r| {
                r.participants
                    .iter()
                    .filter(|m| *m != owner)
                    .cloned()
                    .collect()
            })
            .unwrap_or_default();
        for other in others {
            self.subscribe(&other, track);
        }
    }

    /// A publisher's packet: into the core, and out to what the Router decided.
    fn on_rtp(&mut self, peer_id: PeerId, rtp: RtpPacket) {
        let now = Instant::now();
        let ssrc = rtp.header.ssrc;
        let Some(peer) = self.peers.get_mut(&peer_id) else {
            return;
        };
        peer.media_at = now;
        self.active_at = now;
        let Some((mid, rid)) = peer
            .rtc
            .direct_api()
            .stream_rx(&ssrc)
            .map(|s| (s.mid(), s.rid()))
        else {
            return;
        };
        let Some(track) = self.by_mid.get(&(peer_id, mid)) else {
            return;
        };
        let Some(publication) = self.publications.get_mut(&**track) else {
            return;
        };
        let Source::Local { ssrcs, .. } = &mut publication.source else {
            return;
        };
        let layer = rid.map_or(0, |r| publication.router.layer_index(&r));
        if let Some(slot) = ssrcs.get_mut(usize::from(layer)) {
            *slot = Some(ssrc);
        }
        let mut refused = Vec::new();
        if publication.params.is_none() {
            publication.params = params_of(&peer.rtc, rtp.header.payload_type);
            publication.codec = codec_of(&peer.rtc, rtp.header.payload_type);
            // Subscriptions negotiated before the format was known can be routed now.
            refused = route_subscriptions(&self.peers, &self.participants, track, publication);
        }
        let codec = publication.codec;
        let header = Header {
            ssrc: *ssrc,
            seq: *rtp.seq_no,
            timestamp: rtp.header.timestamp,
            marker: rtp.header.marker,
            audio_level: rtp.header.ext_vals.audio_level,
            voice_activity: rtp.header.ext_vals.voice_activity,
        };
        let packet = Packet::new(header, codec, layer, rtp.timestamp, rtp.payload);
        if let Source::Local { taps, .. } = &publication.source {
            // Other workers with subscribers of it get it once each, before this one's fan-out.
            self.relay
                .send_to_taps(taps, track, &packet, publication.params);
        }
        let kind = usize::from(codec.is_video());
        self.counters.rtp_in[kind].inc();
        self.counters.bytes_in[kind].inc_by(packet.payload.len() as u64);
        let track = track.clone();
        for peer in refused {
            self.tell_unsupported(peer, &track);
        }
        self.forward(&track, &packet, now);
    }

    /// A packet of `track` (from its publisher here, or relayed from its worker): into the
    /// publication's Router, and out to what it decided.
    pub(super) fn forward(&mut self, track: &str, packet: &Packet, now: Instant) {
        let Some(publication) = self.publications.get_mut(track) else {
            return;
        };
        let layers_before = publication.router.layer_count();
        publication.router.on_packet(packet, now, &mut self.fanout);
        let local = matches!(publication.source, Source::Local { .. });
        if local && publication.router.layer_count() > layers_before {
            self.metrics.receivers.inc();
        }
        if let (Some(level), Some(room)) =
            (packet.audio_level, self.rooms.get_mut(&publication.room))
        {
            room.speakers
                .observe(publication.participant.clone(), level, now);
        }
        let fanout = std::mem::take(&mut self.fanout);
        self.deliver(track, packet, &fanout);
        self.fanout = fanout;
        self.metrics.forward_latency.observe(
            Instant::now()
                .saturating_duration_since(packet.arrival)
                .as_secs_f64(),
        );
    }

    /// A subscriber asked for a keyframe of the track on its m-line `mid`.
    fn on_keyframe_request(&mut self, peer_id: PeerId, mid: Mid) {
        let Some(peer) = self.peers.get(&peer_id) else {
            return;
        };
        if peer.role != Role::Subscriber {
            return;
        }
        let Some(track) = self
            .participants
            .get(&peer.owner)
            .and_then(|p| p.negotiation.track_at(mid))
            .map(str::to_string)
        else {
            return;
        };
        let Some(publication) = self.publications.get_mut(&track) else {
            return;
        };
        let layers = publication.router.keyframe_for(&peer_id, Instant::now());
        self.request_keyframes(&track, &layers);
    }
}
