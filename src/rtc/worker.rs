//! A media worker: one thread, one UDP socket, the peer connections of the rooms it hosts.
//!
//! The loop waits on three things: a datagram, a command from the control plane, or the
//! earliest timeout any peer asked for. Each input goes to one `Rtc`; what comes out is sent
//! (datagrams) or handled (events). Packets from a publisher go through its `Receiver` and each
//! `Subscription` of the forwarding core, then into the subscribers' `Rtc`s. Nothing here takes
//! a lock: the worker owns all of it.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use prometheus::IntCounter;
use rand::distr::{Alphanumeric, SampleString};
use str0m::bwe::{Bitrate, BweKind};
use str0m::change::{SdpAnswer, SdpOffer, SdpPendingOffer};
use str0m::format::PayloadParams;
use str0m::media::{Direction, KeyframeRequestKind, MediaKind, Mid, Pt, Rid};
use str0m::net::{Protocol, Receive};
use str0m::rtp::{ExtensionValues, RtpPacket, RtpWrite, SeqNo, Ssrc, Vp8Descriptor};
use str0m::{Candidate, Event, IceConnectionState, Input, Output, Rtc};
use tokio::sync::mpsc;

use crate::forward::allocator::{Allocator, Demand, Priority};
use crate::forward::audio_level::ActiveSpeakers;
use crate::forward::keyframe::is_keyframe;
use crate::forward::receiver::Receiver;
use crate::forward::selector::{LayerIndex, MAX_LAYERS};
use crate::forward::subscription::{DropReason, Forward, Subscription};
use crate::forward::vp8::Vp8Info;
use crate::forward::{Codec, Packet};
use crate::metrics::{Metrics, KEYFRAME_REQUEST_TYPES, KINDS, LAYERS, SWITCH_REASONS};
use crate::model::{OfferedTrack, PeerTarget, Speaker, TrackInfo, TrackKind, TrackSource};
use crate::rtc::demux::Demux;
use crate::rtc::engine::{codec_of, guard, matching_pt, new_rtc, params_of};
use crate::rtc::{Command, MediaError, MediaEvent, QualityPreference, WorkerStats};

/// Largest datagram we read. Bigger ones are truncated by the kernel and fail to parse.
const RECV_BUFFER: usize = 2048;
/// How often room-wide state (active speakers) is looked at.
const HOUSEKEEPING_INTERVAL: Duration = Duration::from_millis(100);
/// How often each subscriber's bandwidth is re-split and dynacast re-decided, besides every new
/// estimate: layer bitrates drift as publishers' encoders adapt.
const ALLOCATION_INTERVAL: Duration = Duration::from_millis(500);
/// Simulcast rids our clients send, lowest first (LiveKit's names: quarter, half, full).
const LAYER_RIDS: [&str; MAX_LAYERS] = ["q", "h", "f"];
/// What a layer is assumed to cost before it was ever measured: the bitrates browsers give
/// 180p/360p/720p simulcast (a single-layer track counts as the lowest).
const ASSUMED_LAYER_BPS: [u64; MAX_LAYERS] = [150_000, 500_000, 1_500_000];
/// Size of a subscriber's video element when it has not told us: a grid tile.
const DEFAULT_VIEW_AREA: u32 = 640 * 360;

/// Label of the data channel every subscriber connection carries (see `negotiate`).
const SUBSCRIBER_CHANNEL: &str = "sfu";

type PeerId = u64;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Publisher,
    Subscriber,
}

struct Peer {
    rtc: Rtc,
    owner: String,
    role: Role,
    timeout: Instant,
}

/// One participant's media state.
struct Member {
    room: String,
    events: mpsc::UnboundedSender<MediaEvent>,
    can_publish: bool,
    can_subscribe: bool,
    publisher: Option<PeerId>,
    subscriber: Option<PeerId>,
    /// Declared with `publish`, matched to offered m-lines by msid track id.
    declared: HashMap<String, (TrackKind, Option<TrackSource>, Option<String>)>,
    /// Track sids this member publishes.
    published: Vec<String>,
    /// Tracks this member should receive, by track sid, and where each stands.
    out: HashMap<String, OutTrack>,
    /// The subscriber offer waiting for the client's answer, and the mids it adds.
    pending: Option<SdpPendingOffer>,
    /// The subscriber connection needs another offer once the pending one is answered.
    dirty: bool,
    /// The subscriber connection's data channel m-line is negotiated (or offered).
    has_channel: bool,
    /// The subscriber connection's latest downstream bandwidth estimate.
    estimate_bps: Option<u64>,
    allocator: Allocator<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OutState {
    /// To be added in the next offer.
    ToAdd,
    /// In an offer not yet answered.
    Negotiating(Mid),
    /// Negotiated; packets flow.
    Open(Mid),
    /// To be removed in the next offer.
    ToRemove(Mid),
    /// Removal offered, not yet answered.
    Removing(Mid),
}

struct OutTrack {
    state: OutState,
}

/// One published track: its layers' receivers and its subscribers.
struct Publication {
    info: TrackInfo,
    room: String,
    publisher_peer: PeerId,
    mid: Mid,
    /// The format the publisher sends, once its first packet arrived.
    params: Option<PayloadParams>,
    codec: Codec,
    /// Receivers by rid (None without simulcast), with the SSRC each layer arrives on.
    layers: HashMap<Option<Rid>, Layer>,
    /// Subscribers by participant sid.
    subscribers: HashMap<String, OutSub>,
    /// The simulcast layers the publisher was last told to send (dynacast).
    active_layers: Option<Vec<String>>,
}

struct Layer {
    ssrc: Ssrc,
    index: LayerIndex,
    receiver: Receiver,
    /// Resolution from the layer's last keyframe.
    size: Option<(u16, u16)>,
    /// Bitrate when last measured live.
    last_bps: u64,
}

struct OutSub {
    subscription: Subscription,
    peer: PeerId,
    /// The subscriber's m-line and payload type, once negotiated.
    route: Option<(Mid, Pt)>,
    paused: bool,
    /// The element size the subscriber reported, if it chose by size.
    view: Option<(u32, u32)>,
}

struct RoomMedia {
    members: Vec<String>,
    speakers: ActiveSpeakers<String>,
}

/// Metric handles resolved once per worker, so the packet path does no label lookups.
/// Arrays by kind are indexed audio 0, video 1.
struct Counters {
    rtp_in: [IntCounter; 2],
    bytes_in: [IntCounter; 2],
    rtp_out: [IntCounter; 2],
    bytes_out: [IntCounter; 2],
    lost: [IntCounter; 2],
    dropped_queue_full: IntCounter,
    dropped_no_layer: IntCounter,
    dropped_late: IntCounter,
    keyframe_requests_in: [IntCounter; 2],
    keyframe_requests_out: IntCounter,
    switches: [IntCounter; 4],
    dropped_unknown_source: IntCounter,
    dropped_unparseable: IntCounter,
    dropped_rejected: IntCounter,
}

impl Counters {
    fn new(m: &Metrics) -> Self {
        let by_kind = |v: &prometheus::IntCounterVec| KINDS.map(|k| v.with_label_values(&[k]));
        Self {
            rtp_in: by_kind(&m.rtp_packets_received),
            bytes_in: by_kind(&m.rtp_bytes_received),
            rtp_out: by_kind(&m.rtp_packets_sent),
            bytes_out: by_kind(&m.rtp_bytes_sent),
            lost: by_kind(&m.rtp_packets_lost),
            dropped_queue_full: m.rtp_packets_dropped.with_label_values(&["queue_full"]),
            dropped_no_layer: m.rtp_packets_dropped.with_label_values(&["no_layer"]),
            dropped_late: m.rtp_packets_dropped.with_label_values(&["late"]),
            keyframe_requests_in: KEYFRAME_REQUEST_TYPES
                .map(|t| m.keyframe_requests_received.with_label_values(&[t])),
            keyframe_requests_out: m.keyframe_requests_sent.with_label_values(&["pli"]),
            switches: SWITCH_REASONS.map(|r| m.layer_switches.with_label_values(&[r])),
            dropped_unknown_source: m
                .udp_datagrams_dropped
                .with_label_values(&["unknown_source"]),
            dropped_unparseable: m.udp_datagrams_dropped.with_label_values(&["unparseable"]),
            dropped_rejected: m.udp_datagrams_dropped.with_label_values(&["rejected"]),
        }
    }
}

struct Worker {
    socket: tokio::net::UdpSocket,
    /// The address clients send to: what `Input::Receive` names as the destination.
    local: SocketAddr,
    candidates: Vec<SocketAddr>,
    auto_subscribe: bool,
    peers: HashMap<PeerId, Peer>,
    next_peer: PeerId,
    demux: Demux<PeerId>,
    members: HashMap<String, Member>,
    rooms: HashMap<String, RoomMedia>,
    publications: HashMap<String, Publication>,
    /// (publisher peer, mid) -> track sid.
    by_mid: HashMap<(PeerId, Mid), String>,
    /// Peers with output to drain after this round.
    dirty: HashSet<PeerId>,
    /// Every peer's next timeout, earliest first. An entry whose time no longer matches its
    /// peer's `timeout` is stale and skipped: pushing is cheaper than finding and updating.
    timers: BinaryHeap<Reverse<(Instant, PeerId)>>,
    metrics: Arc<Metrics>,
    counters: Counters,
    last_allocation: Instant,
    /// Last cumulative (nacks, resent) str0m reported per stream, for deltas.
    stream_totals: HashMap<(PeerId, Mid, Option<Rid>), (u64, u64)>,
    /// Video subscriptions by layer (q, h, f, off) this worker last added to the gauge.
    layer_counts: [i64; 4],
}

/// What a worker is told at start-up.
pub struct Settings {
    /// The addresses (with this worker's port) given to clients as ICE host candidates.
    pub candidates: Vec<SocketAddr>,
    /// Subscribe every member to every publication in its room without being asked.
    pub auto_subscribe: bool,
}

pub fn run(
    socket: std::net::UdpSocket,
    settings: Settings,
    inbox: mpsc::UnboundedReceiver<Command>,
    metrics: Arc<Metrics>,
) {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!("media worker cannot start its runtime: {e}");
            return;
        }
    };
    runtime.block_on(async move {
        let socket = match tokio::net::UdpSocket::from_std(socket) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!("media worker cannot use its socket: {e}");
                return;
            }
        };
        let Settings {
            candidates,
            auto_subscribe,
        } = settings;
        let local = candidates.first().copied().unwrap_or_else(|| {
            socket
                .local_addr()
                .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 0)))
        });
        let counters = Counters::new(&metrics);
        let mut worker = Worker {
            socket,
            local,
            candidates,
            auto_subscribe,
            peers: HashMap::new(),
            next_peer: 1,
            demux: Demux::default(),
            members: HashMap::new(),
            rooms: HashMap::new(),
            publications: HashMap::new(),
            by_mid: HashMap::new(),
            dirty: HashSet::new(),
            timers: BinaryHeap::new(),
            metrics,
            counters,
            last_allocation: Instant::now(),
            stream_totals: HashMap::new(),
            layer_counts: [0; 4],
        };
        worker.run(inbox).await;
        worker.close_all();
    });
}

impl Worker {
    async fn run(&mut self, mut inbox: mpsc::UnboundedReceiver<Command>) {
        let mut buf = vec![0u8; RECV_BUFFER];
        let mut housekeeping = tokio::time::interval(HOUSEKEEPING_INTERVAL);
        housekeeping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let next = self
                .timers
                .peek()
                .map(|Reverse((at, _))| *at)
                .unwrap_or_else(|| Instant::now() + Duration::from_secs(1));
            tokio::select! {
                received = self.socket.recv_from(&mut buf) => match received {
                    Ok((n, source)) => self.on_datagram(source, &buf[..n]),
                    Err(e) => tracing::debug!("media socket read: {e}"),
                },
                command = inbox.recv() => match command {
                    None | Some(Command::Shutdown) => return,
                    Some(command) => self.on_command(command),
                },
                _ = tokio::time::sleep_until(next.into()) => self.on_timeouts(),
                _ = housekeeping.tick() => self.housekeeping(),
            }
            self.flush();
        }
    }

    fn on_datagram(&mut self, source: SocketAddr, datagram: &[u8]) {
        let Some(peer_id) = self.demux.route(source, datagram) else {
            self.counters.dropped_unknown_source.inc();
            return;
        };
        let Ok(contents) = datagram.try_into() else {
            self.counters.dropped_unparseable.inc();
            return;
        };
        let input = Input::Receive(
            Instant::now(),
            Receive {
                proto: Protocol::Udp,
                source,
                destination: self.local,
                contents,
            },
        );
        let Some(peer) = self.peers.get_mut(&peer_id) else {
            return;
        };
        match guard(|| peer.rtc.handle_input(input)) {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                // A packet str0m refuses (bad SRTP, bad RTCP, ...) costs nothing but a count.
                tracing::debug!(peer = peer_id, "input rejected: {e}");
                self.counters.dropped_rejected.inc();
            }
            Err(panic) => return self.fail_peer(peer_id, "panic", &panic),
        }
        self.dirty.insert(peer_id);
    }

    fn on_timeouts(&mut self) {
        let now = Instant::now();
        while let Some(&Reverse((at, id))) = self.timers.peek() {
            if at > now {
                break;
            }
            self.timers.pop();
            let Some(peer) = self.peers.get_mut(&id) else {
                continue;
            };
            if peer.timeout != at {
                // Superseded by a later timeout of the same peer (still in the heap).
                continue;
            }
            match guard(|| peer.rtc.handle_input(Input::Timeout(now))) {
                Ok(_) => {
                    self.dirty.insert(id);
                }
                Err(panic) => self.fail_peer(id, "panic", &panic),
            }
        }
    }

    /// Drains every peer that had input until none has output left. Events can write to other
    /// peers (forwarded packets), which makes those dirty in turn.
    fn flush(&mut self) {
        // In rounds: draining one peer can make others dirty (forwarded packets).
        while !self.dirty.is_empty() {
            let round: Vec<PeerId> = self.dirty.drain().collect();
            for id in round {
                self.drain(id);
            }
        }
    }

    fn drain(&mut self, id: PeerId) {
        loop {
            let Some(peer) = self.peers.get_mut(&id) else {
                return;
            };
            let output = match guard(|| peer.rtc.poll_output()) {
                Ok(Ok(output)) => output,
                Ok(Err(e)) => {
                    tracing::info!(peer = id, "peer failed: {e}");
                    return self.fail_peer(id, "dtls", &e.to_string());
                }
                Err(panic) => return self.fail_peer(id, "panic", &panic),
            };
            match output {
                Output::Timeout(t) => {
                    if peer.timeout != t {
                        peer.timeout = t;
                        self.timers.push(Reverse((t, id)));
                    }
                    if !peer.rtc.is_alive() {
                        self.fail_peer(id, "dtls", "connection closed");
                    }
                    return;
                }
                Output::Transmit(t) => {
                    // UDP is lossy anyway: a full send buffer drops like the network would.
                    if let Err(e) = self.socket.try_send_to(&t.contents, t.destination) {
                        if e.kind() == std::io::ErrorKind::WouldBlock {
                            self.counters.dropped_queue_full.inc();
                        }
                    }
                }
                Output::Event(event) => self.on_event(id, event),
            }
        }
    }

    fn on_event(&mut self, id: PeerId, event: Event) {
        match event {
            Event::RtpPacket(packet) => self.on_rtp(id, packet),
            Event::MediaAdded(added) => self.on_media_added(id, added.mid, added.kind),
            Event::KeyframeRequest(request) => {
                let fir = matches!(request.kind, KeyframeRequestKind::Fir);
                self.counters.keyframe_requests_in[usize::from(fir)].inc();
                self.on_keyframe_request(id, request.mid)
            }
            Event::MediaEgressStats(stats) => {
                let nacks = self.stats_delta(id, stats.mid, stats.rid, true, stats.nacks);
                self.metrics.nacks_received.inc_by(nacks);
                let forwarded = self.forwarded_on(id, stats.mid);
                let resent = self.stats_delta(
                    id,
                    stats.mid,
                    stats.rid,
                    false,
                    stats.packets.saturating_sub(forwarded),
                );
                self.metrics.retransmissions.inc_by(resent);
            }
            Event::MediaIngressStats(stats) => {
                let nacks = self.stats_delta(id, stats.mid, stats.rid, true, stats.nacks);
                self.metrics.nacks_sent.inc_by(nacks);
            }
            Event::IceConnectionStateChange(IceConnectionState::Disconnected) => {
                self.fail_peer(id, "ice", "ICE disconnected (consent timed out)");
            }
            Event::Connected => tracing::debug!(peer = id, "peer connected"),
            Event::EgressBitrateEstimate(estimate) => {
                let bps = match estimate {
                    BweKind::Twcc { estimate, .. } | BweKind::Remb { estimate, .. } => {
                        estimate.as_u64()
                    }
                    _ => return,
                };
                let owner = match self.peers.get(&id) {
                    Some(p) if p.role == Role::Subscriber => p.owner.clone(),
                    _ => return,
                };
                let changed = self.members.get_mut(&owner).is_some_and(|m| {
                    let changed = m.estimate_bps != Some(bps);
                    m.estimate_bps = Some(bps);
                    changed
                });
                self.metrics.bwe_estimate.observe(bps as f64);
                if changed {
                    self.allocate(&owner, Instant::now());
                }
            }
            _ => {}
        }
    }

    // ---- media ----

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
        let layers: Vec<String> = match media.rids_rx() {
            str0m::media::Rids::Specific(rids) => rids.iter().map(|r| r.to_string()).collect(),
            _ => Vec::new(),
        };
        let Some(member) = self.members.get_mut(&owner) else {
            return;
        };
        let kind = match kind {
            MediaKind::Audio => TrackKind::Audio,
            MediaKind::Video => TrackKind::Video,
        };
        let (source, name) = match member.declared.get(&cid) {
            Some((_, source, name)) => (*source, name.clone()),
            None => (None, None),
        };
        let sid = format!("TR_{}", Alphanumeric.sample_string(&mut rand::rng(), 12));
        let info = TrackInfo {
            sid: sid.clone(),
            participant: owner.clone(),
            cid,
            kind,
            source: source.unwrap_or(TrackSource::default_for(kind)),
            name: name.unwrap_or_default(),
            muted: false,
            layers,
        };
        member.published.push(sid.clone());
        let _ = member.events.send(MediaEvent::TrackPublished(info.clone()));
        let room = member.room.clone();
        tracing::info!(track = %sid, participant = %owner, ?kind, "track published");
        self.by_mid.insert((peer_id, mid), sid.clone());
        self.publications.insert(
            sid.clone(),
            Publication {
                info,
                room: room.clone(),
                publisher_peer: peer_id,
                mid,
                params: None,
                codec: Codec::Other,
                layers: HashMap::new(),
                subscribers: HashMap::new(),
                active_layers: None,
            },
        );
        self.metrics
            .publications
            .with_label_values(&[kind_label(kind)])
            .inc();
        if !self.auto_subscribe {
            return;
        }
        // Everyone else in the room receives it.
        let others: Vec<String> = self
            .rooms
            .get(&room)
            .map(|r| r.members.iter().filter(|m| **m != owner).cloned().collect())
            .unwrap_or_default();
        for other in others {
            self.subscribe(&other, &sid);
        }
    }

    fn on_rtp(&mut self, peer_id: PeerId, rtp: RtpPacket) {
        let now = Instant::now();
        let ssrc = rtp.header.ssrc;
        let Some(peer) = self.peers.get_mut(&peer_id) else {
            return;
        };
        let (mid, rid) = match peer.rtc.direct_api().stream_rx(&ssrc) {
            Some(stream) => (stream.mid(), stream.rid()),
            None => return,
        };
        let Some(sid) = self.by_mid.get(&(peer_id, mid)) else {
            return;
        };
        let Some(publication) = self.publications.get_mut(sid) else {
            return;
        };
        if publication.params.is_none() {
            publication.params = params_of(&peer.rtc, rtp.header.payload_type);
            publication.codec = codec_of(&peer.rtc, rtp.header.payload_type);
            // Subscriptions made before the first packet did not know the codec, and the codec
            // decides their rules (keyframe gating, layers): start them afresh.
            for out in publication.subscribers.values_mut() {
                out.subscription = Subscription::new(publication.codec);
            }
        }
        let codec = publication.codec;
        let vp8 = match codec {
            Codec::Vp8 => Vp8Info::parse(&rtp.payload),
            _ => None,
        };
        let layer_names = &publication.info.layers;
        let layer = publication.layers.entry(rid).or_insert_with(|| {
            self.metrics.receivers.inc();
            Layer {
                ssrc,
                index: rid.map_or(0, |r| layer_index(&r, layer_names)),
                receiver: Receiver::new(codec),
                size: None,
                last_bps: 0,
            }
        });
        let packet = Packet {
            ssrc: *ssrc,
            seq: *rtp.seq_no,
            timestamp: rtp.header.timestamp,
            marker: rtp.header.marker,
            codec,
            keyframe: is_keyframe(codec, &rtp.payload),
            // str0m gives the level as a negative dBov; the core works in RFC 6464's 0..=127.
            audio_level: rtp
                .header
                .ext_vals
                .audio_level
                .map(|l| l.unsigned_abs().min(127) as i8),
            voice_activity: rtp.header.ext_vals.voice_activity,
            arrival: rtp.timestamp,
            payload: rtp.payload,
            layer: layer.index,
            vp8,
        };
        layer.ssrc = ssrc;
        if let Some(size) = vp8.and_then(|v| v.keyframe_size) {
            layer.size = Some(size);
        }
        let kind = usize::from(codec.is_video());
        self.counters.rtp_in[kind].inc();
        self.counters.bytes_in[kind].inc_by(packet.payload.len() as u64);
        let lost = layer.receiver.on_packet(&packet, now);
        if lost > 0 {
            self.counters.lost[kind].inc_by(lost);
        }
        if let (Some(level), Some(room)) =
            (packet.audio_level, self.rooms.get_mut(&publication.room))
        {
            room.speakers
                .observe(publication.info.participant.clone(), level, now);
        }
        // Parsed by str0m once per packet, only if some subscriber's picture IDs are shifted.
        let mut descriptor: Option<Option<Vp8Descriptor>> = None;
        let mut want_keyframe = false;
        let params = publication.params;
        for (member_sid, out) in publication.subscribers.iter_mut() {
            if out.route.is_none() {
                // Negotiated before the publisher's format was known: resolve it now.
                out.route = resolve_route(
                    &self.members,
                    &self.peers,
                    member_sid,
                    sid,
                    out.peer,
                    params,
                );
            }
            let Some((out_mid, pt)) = out.route else {
                continue;
            };
            if out.paused {
                continue;
            }
            match out.subscription.on_packet(&packet, now) {
                Forward::Send(o) => {
                    if let Some((_, reason)) = o.switched {
                        self.counters.switches[reason as usize].inc();
                    }
                    if let (Some((index, reason)), Some(member)) =
                        (o.switched, self.members.get(member_sid))
                    {
                        let _ = member.events.send(MediaEvent::QualityChanged {
                            track: sid.clone(),
                            layer: Some(index),
                            rid: rid_name(index, &publication.info.layers),
                            reason: reason.as_str(),
                        });
                    }
                    let Some(sub_peer) = self.peers.get_mut(&out.peer) else {
                        continue;
                    };
                    // Subscribers see the publisher's audio level (their own speaker UI uses it).
                    let ext = ExtensionValues {
                        audio_level: packet.audio_level.map(|l| -l),
                        voice_activity: packet
                            .audio_level
                            .map(|_| packet.voice_activity.unwrap_or(true)),
                        ..Default::default()
                    };
                    let mut write = RtpWrite::new(
                        pt,
                        SeqNo::from(o.seq),
                        o.timestamp,
                        packet.arrival,
                        o.payload,
                    )
                    .marker(o.marker)
                    .ext_vals(ext);
                    if let Some(rewrite) = o.vp8 {
                        let parsed = *descriptor
                            .get_or_insert_with(|| Vp8Descriptor::parse(&packet.payload).ok());
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
                    let written = guard(|| {
                        match sub_peer.rtc.direct_api().stream_tx_by_mid(out_mid, None) {
                            Some(tx) => {
                                // str0m resends only over RTX: without an RTX stream a NACK
                                // for a nackable packet would have nothing to go out on.
                                let nackable = codec.is_video() && tx.rtx().is_some();
                                tx.write_rtp(write.nackable(nackable));
                                true
                            }
                            None => false,
                        }
                    });
                    match written {
                        Ok(true) => {
                            self.counters.rtp_out[kind].inc();
                            self.counters.bytes_out[kind].inc_by(packet.payload.len() as u64);
                            self.dirty.insert(out.peer);
                        }
                        Ok(false) => {}
                        Err(panic) => tracing::warn!("write to subscriber failed: {panic}"),
                    }
                }
                Forward::Drop(DropReason::WaitingForKeyframe) => {
                    self.counters.dropped_no_layer.inc();
                    want_keyframe = true;
                }
                Forward::Drop(DropReason::Late) => self.counters.dropped_late.inc(),
                Forward::Drop(_) => {}
            }
        }
        self.metrics.forward_latency.observe(
            Instant::now()
                .saturating_duration_since(packet.arrival)
                .as_secs_f64(),
        );
        if want_keyframe {
            self.request_keyframe(sid.clone(), Some(rid), now);
        }
    }

    /// Asks the publisher of `track` for a keyframe of layer `rid` (`None`: the layers its
    /// subscribers receive), throttled per layer.
    fn request_keyframe(&mut self, track: String, rid: Option<Option<Rid>>, now: Instant) {
        let Some(publication) = self.publications.get_mut(&track) else {
            return;
        };
        let rids: Vec<Option<Rid>> = match rid {
            Some(rid) => vec![rid],
            None => {
                let wanted: HashSet<LayerIndex> = publication
                    .subscribers
                    .values()
                    .filter_map(|o| o.subscription.selector().target())
                    .collect();
                publication
                    .layers
                    .iter()
                    .filter(|(_, l)| wanted.is_empty() || wanted.contains(&l.index))
                    .map(|(r, _)| *r)
                    .collect()
            }
        };
        let peer_id = publication.publisher_peer;
        let mut ssrcs = Vec::new();
        for rid in rids {
            if let Some(layer) = publication.layers.get_mut(&rid) {
                if layer.receiver.want_keyframe(now) {
                    ssrcs.push(layer.ssrc);
                }
            }
        }
        let Some(peer) = self.peers.get_mut(&peer_id) else {
            return;
        };
        for ssrc in ssrcs {
            let sent = guard(|| {
                if let Some(stream) = peer.rtc.direct_api().stream_rx(&ssrc) {
                    stream.request_keyframe(KeyframeRequestKind::Pli);
                    true
                } else {
                    false
                }
            });
            if matches!(sent, Ok(true)) {
                self.counters.keyframe_requests_out.inc();
                self.dirty.insert(peer_id);
            }
        }
    }

    fn on_keyframe_request(&mut self, peer_id: PeerId, mid: Mid) {
        let Some(peer) = self.peers.get(&peer_id) else {
            return;
        };
        if peer.role != Role::Subscriber {
            return;
        }
        let Some(member) = self.members.get(&peer.owner) else {
            return;
        };
        let track = member
            .out
            .iter()
            .find(|(_, o)| o.state == OutState::Open(mid))
            .map(|(t, _)| t.clone());
        let Some(track) = track else {
            return;
        };
        // The keyframe must come from the layer this subscriber is being sent.
        let owner = peer.owner.clone();
        let rid = self.publications.get(&track).and_then(|p| {
            let current = p
                .subscribers
                .get(&owner)?
                .subscription
                .selector()
                .current()?;
            p.layers
                .iter()
                .find(|(_, l)| l.index == current)
                .map(|(rid, _)| *rid)
        });
        self.request_keyframe(track, rid, Instant::now());
    }

    // ---- subscriptions and negotiation ----

    /// Makes `member` receive `track` (on its next subscriber offer).
    fn subscribe(&mut self, member_sid: &str, track: &str) {
        let Some(member) = self.members.get_mut(member_sid) else {
            return;
        };
        if !member.can_subscribe || member.out.contains_key(track) {
            return;
        }
        let Some(publication) = self.publications.get_mut(track) else {
            return;
        };
        let peer = match member.subscriber {
            Some(p) => p,
            None => {
                let id = self.next_peer;
                self.next_peer += 1;
                let mut rtc = new_rtc(Instant::now(), true);
                for c in &self.candidates {
                    if let Ok(candidate) = Candidate::host(*c, "udp") {
                        rtc.add_local_candidate(candidate);
                    }
                }
                let ufrag = rtc.direct_api().local_ice_credentials().ufrag;
                self.demux.add(ufrag, id);
                let now = Instant::now();
                self.timers.push(Reverse((now, id)));
                self.peers.insert(
                    id,
                    Peer {
                        rtc,
                        owner: member_sid.to_string(),
                        role: Role::Subscriber,
                        timeout: now,
                    },
                );
                self.metrics.peers.inc();
                member.subscriber = Some(id);
                id
            }
        };
        member.out.insert(
            track.to_string(),
            OutTrack {
                state: OutState::ToAdd,
            },
        );
        let mut subscription = Subscription::new(publication.codec);
        for layer in publication.layers.values() {
            if let Some(at) = layer.receiver.last_packet() {
                subscription.layer_seen(layer.index, at);
            }
        }
        publication.subscribers.insert(
            member_sid.to_string(),
            OutSub {
                subscription,
                peer,
                route: None,
                paused: false,
                view: None,
            },
        );
        self.metrics.subscriptions.inc();
        self.negotiate(member_sid);
    }

    /// Stops sending `track` to `member` (on its next subscriber offer).
    fn unsubscribe(&mut self, member_sid: &str, track: &str) {
        if let Some(publication) = self.publications.get_mut(track) {
            if publication.subscribers.remove(member_sid).is_some() {
                self.metrics.subscriptions.dec();
            }
        }
        let Some(member) = self.members.get_mut(member_sid) else {
            return;
        };
        let Some(out) = member.out.get_mut(track) else {
            return;
        };
        match out.state {
            OutState::ToAdd => {
                member.out.remove(track);
            }
            OutState::Open(mid) | OutState::Negotiating(mid) => {
                out.state = OutState::ToRemove(mid);
            }
            OutState::ToRemove(_) | OutState::Removing(_) => {}
        }
        self.negotiate(member_sid);
    }

    /// Sends a new subscriber offer if something changed and no offer is in flight.
    fn negotiate(&mut self, member_sid: &str) {
        let Some(member) = self.members.get_mut(member_sid) else {
            return;
        };
        if member.pending.is_some() {
            member.dirty = true;
            return;
        }
        let Some(peer_id) = member.subscriber else {
            return;
        };
        let Some(peer) = self.peers.get_mut(&peer_id) else {
            return;
        };
        let mut changes = peer.rtc.sdp_api();
        if !member.has_channel {
            // An m-line that is never stopped. When the last track goes, its m-line is
            // stopped (port 0, out of BUNDLE); with nothing left in the BUNDLE group, browsers
            // close the transport and a later track could not be received. LiveKit keeps a
            // data channel in the subscriber connection for the same reason.
            changes.add_channel(SUBSCRIBER_CHANNEL.to_string());
            member.has_channel = true;
        }
        for (track, out) in member.out.iter_mut() {
            match out.state {
                OutState::ToAdd => {
                    let Some(p) = self.publications.get(track) else {
                        continue;
                    };
                    let kind = match p.info.kind {
                        TrackKind::Audio => MediaKind::Audio,
                        TrackKind::Video => MediaKind::Video,
                    };
                    let mid = changes.add_media(
                        kind,
                        Direction::SendOnly,
                        Some(p.info.participant.clone()),
                        Some(track.clone()),
                        None,
                    );
                    out.state = OutState::Negotiating(mid);
                }
                OutState::ToRemove(mid) => {
                    changes.stop_media(mid);
                    out.state = OutState::Removing(mid);
                }
                _ => {}
            }
        }
        member.dirty = false;
        if !changes.has_changes() {
            return;
        }
        let Some((offer, pending)) = changes.apply() else {
            return;
        };
        member.pending = Some(pending);
        let tracks = member
            .out
            .iter()
            .filter_map(|(track, out)| {
                let mid = match out.state {
                    OutState::Negotiating(m) | OutState::Open(m) => m,
                    _ => return None,
                };
                let participant = self.publications.get(track)?.info.participant.clone();
                Some(OfferedTrack {
                    mid: mid.to_string(),
                    track: track.clone(),
                    participant,
                })
            })
            .collect();
        let _ = member.events.send(MediaEvent::SubscriberOffer {
            sdp: offer.to_sdp_string(),
            tracks,
        });
        self.dirty.insert(peer_id);
    }

    fn on_subscriber_answer(&mut self, member_sid: &str, sdp: &str) -> Result<(), MediaError> {
        let member = self
            .members
            .get_mut(member_sid)
            .ok_or(MediaError::NotJoined)?;
        let peer_id = member.subscriber.ok_or(MediaError::NoPendingOffer)?;
        let pending = member.pending.take().ok_or(MediaError::NoPendingOffer)?;
        let answer =
            SdpAnswer::from_sdp_string(sdp).map_err(|e| MediaError::BadSdp(e.to_string()))?;
        let peer = self.peers.get_mut(&peer_id).ok_or(MediaError::NotJoined)?;
        match guard(|| peer.rtc.sdp_api().accept_answer(pending, answer)) {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(MediaError::BadSdp(e.to_string())),
            Err(panic) => {
                self.fail_peer(peer_id, "panic", &panic);
                return Err(MediaError::BadSdp("the answer broke the connection".into()));
            }
        }
        self.dirty.insert(peer_id);
        let mut opened = Vec::new();
        member.out.retain(|track, out| match out.state {
            OutState::Negotiating(mid) => {
                out.state = OutState::Open(mid);
                opened.push((track.clone(), mid));
                true
            }
            OutState::Removing(_) => false,
            _ => true,
        });
        let dirty = member.dirty;
        let now = Instant::now();
        for (track, _mid) in opened {
            // Packets route once the first one arrives (see `resolve_route`); the new
            // subscriber can decode nothing until a keyframe, so ask for one now.
            self.request_keyframe(track, None, now);
        }
        if dirty {
            self.negotiate(member_sid);
        }
        Ok(())
    }

    // ---- commands ----

    fn on_command(&mut self, command: Command) {
        match command {
            Command::Join {
                room,
                participant,
                can_publish,
                can_subscribe,
                events,
            } => {
                self.members.insert(
                    participant.clone(),
                    Member {
                        room: room.clone(),
                        events,
                        can_publish,
                        can_subscribe,
                        publisher: None,
                        subscriber: None,
                        declared: HashMap::new(),
                        published: Vec::new(),
                        out: HashMap::new(),
                        pending: None,
                        dirty: false,
                        has_channel: false,
                        estimate_bps: None,
                        allocator: Allocator::default(),
                    },
                );
                let room_media = self.rooms.entry(room.clone()).or_insert_with(|| RoomMedia {
                    members: Vec::new(),
                    speakers: ActiveSpeakers::default(),
                });
                room_media.members.push(participant.clone());
                if !self.auto_subscribe {
                    return;
                }
                let existing: Vec<String> = self
                    .publications
                    .values()
                    .filter(|p| p.room == room && p.info.participant != participant)
                    .map(|p| p.info.sid.clone())
                    .collect();
                for track in existing {
                    self.subscribe(&participant, &track);
                }
            }
            Command::Leave { participant } => self.remove_member(&participant),
            Command::Publish {
                participant,
                cid,
                kind,
                source,
                name,
            } => {
                if let Some(m) = self.members.get_mut(&participant) {
                    m.declared.insert(cid, (kind, source, name));
                }
            }
            Command::PublisherOffer {
                participant,
                sdp,
                reply,
            } => {
                let _ = reply.send(self.on_publisher_offer(&participant, &sdp));
            }
            Command::SubscriberAnswer {
                participant,
                sdp,
                reply,
            } => {
                let _ = reply.send(self.on_subscriber_answer(&participant, &sdp));
            }
            Command::Candidate {
                participant,
                target,
                candidate,
            } => self.on_candidate(&participant, target, &candidate),
            Command::Unpublish {
                participant,
                track,
                reply,
            } => {
                let owned = self
                    .publications
                    .get(&track)
                    .is_some_and(|p| p.info.participant == participant);
                if owned {
                    self.remove_publication(&track);
                    let _ = reply.send(Ok(()));
                } else {
                    let _ = reply.send(Err(MediaError::TrackNotFound));
                }
            }
            Command::Mute {
                participant,
                track,
                muted,
                reply,
            } => {
                let result = match self.publications.get_mut(&track) {
                    Some(p) if p.info.participant == participant => {
                        p.info.muted = muted;
                        Ok(())
                    }
                    _ => Err(MediaError::TrackNotFound),
                };
                let _ = reply.send(result);
            }
            Command::Subscribe {
                participant,
                track,
                subscribed,
                reply,
            } => {
                let result = match self.publications.get_mut(&track) {
                    Some(p) if p.info.participant != participant => {
                        match p.subscribers.get_mut(&participant) {
                            Some(out) => {
                                out.paused = !subscribed;
                                out.subscription.set_paused(!subscribed);
                                Ok(())
                            }
                            None if subscribed => {
                                self.subscribe(&participant, &track);
                                Ok(())
                            }
                            None => Ok(()),
                        }
                    }
                    _ => Err(MediaError::TrackNotFound),
                };
                if result.is_ok() && subscribed {
                    self.request_keyframe(track, None, Instant::now());
                }
                let _ = reply.send(result);
            }
            Command::SetQuality {
                participant,
                track,
                preference,
                reply,
            } => {
                let result = self.set_quality(&participant, &track, preference);
                let _ = reply.send(result);
            }
            Command::Stats { reply } => {
                let _ = reply.send(WorkerStats {
                    participants: self.members.len(),
                    peers: self.peers.len(),
                    receivers: self.publications.values().map(|p| p.layers.len()).sum(),
                    subscriptions: self
                        .publications
                        .values()
                        .map(|p| p.subscribers.len())
                        .sum(),
                });
            }
            Command::Shutdown => {}
        }
    }

    fn on_publisher_offer(&mut self, member_sid: &str, sdp: &str) -> Result<String, MediaError> {
        let offer =
            SdpOffer::from_sdp_string(sdp).map_err(|e| MediaError::BadSdp(e.to_string()))?;
        let member = self
            .members
            .get_mut(member_sid)
            .ok_or(MediaError::NotJoined)?;
        if !member.can_publish {
            return Err(MediaError::BadSdp(
                "this participant may not publish".into(),
            ));
        }
        let peer_id = match member.publisher {
            Some(p) => p,
            None => {
                let id = self.next_peer;
                self.next_peer += 1;
                let mut rtc = new_rtc(Instant::now(), false);
                for c in &self.candidates {
                    if let Ok(candidate) = Candidate::host(*c, "udp") {
                        rtc.add_local_candidate(candidate);
                    }
                }
                let ufrag = rtc.direct_api().local_ice_credentials().ufrag;
                self.demux.add(ufrag, id);
                let now = Instant::now();
                self.timers.push(Reverse((now, id)));
                self.peers.insert(
                    id,
                    Peer {
                        rtc,
                        owner: member_sid.to_string(),
                        role: Role::Publisher,
                        timeout: now,
                    },
                );
                self.metrics.peers.inc();
                member.publisher = Some(id);
                id
            }
        };
        let peer = self.peers.get_mut(&peer_id).ok_or(MediaError::NotJoined)?;
        let answer = match guard(|| peer.rtc.sdp_api().accept_offer(offer)) {
            Ok(Ok(answer)) => answer,
            Ok(Err(e)) => return Err(MediaError::BadSdp(e.to_string())),
            Err(panic) => {
                self.fail_peer(peer_id, "panic", &panic);
                return Err(MediaError::BadSdp("the offer broke the connection".into()));
            }
        };
        self.dirty.insert(peer_id);
        Ok(answer.to_sdp_string())
    }

    fn on_candidate(&mut self, member_sid: &str, target: PeerTarget, candidate: &str) {
        let candidate = candidate.trim();
        if candidate.is_empty() {
            return;
        }
        let Some(member) = self.members.get(member_sid) else {
            return;
        };
        let peer_id = match target {
            PeerTarget::Publisher => member.publisher,
            PeerTarget::Subscriber => member.subscriber,
        };
        let Some(peer) = peer_id.and_then(|id| self.peers.get_mut(&id)) else {
            return;
        };
        let text = candidate.strip_prefix("a=").unwrap_or(candidate);
        match Candidate::from_sdp_string(text) {
            Ok(c) => {
                let _ = guard(|| peer.rtc.add_remote_candidate(c));
            }
            Err(e) => tracing::debug!("ignoring candidate `{text}`: {e}"),
        }
    }

    // ---- teardown ----

    fn remove_publication(&mut self, track: &str) {
        let Some(publication) = self.publications.remove(track) else {
            return;
        };
        self.by_mid
            .remove(&(publication.publisher_peer, publication.mid));
        self.metrics
            .publications
            .with_label_values(&[kind_label(publication.info.kind)])
            .dec();
        self.metrics.receivers.sub(publication.layers.len() as i64);
        self.metrics
            .subscriptions
            .sub(publication.subscribers.len() as i64);
        if let Some(owner) = self.members.get_mut(&publication.info.participant) {
            owner.published.retain(|t| t != track);
        }
        if let Some(room) = self.rooms.get_mut(&publication.room) {
            room.speakers.remove(&publication.info.participant);
        }
        for subscriber in publication.subscribers.keys() {
            // The publication is gone already; this only renegotiates the m-line away.
            self.unsubscribe(subscriber, track);
        }
    }

    fn remove_member(&mut self, sid: &str) {
        let Some(member) = self.members.get(sid) else {
            return;
        };
        let published = member.published.clone();
        let outgoing: Vec<String> = member.out.keys().cloned().collect();
        for track in published {
            self.remove_publication(&track);
        }
        for track in outgoing {
            if let Some(p) = self.publications.get_mut(&track) {
                if p.subscribers.remove(sid).is_some() {
                    self.metrics.subscriptions.dec();
                }
            }
        }
        let Some(member) = self.members.remove(sid) else {
            return;
        };
        for id in [member.publisher, member.subscriber].into_iter().flatten() {
            if let Some(mut peer) = self.peers.remove(&id) {
                let _ = guard(|| peer.rtc.disconnect());
                self.metrics.peers.dec();
            }
            self.demux.remove(id);
            self.dirty.remove(&id);
            self.stream_totals.retain(|(peer, _, _), _| *peer != id);
        }
        if let Some(room) = self.rooms.get_mut(&member.room) {
            room.members.retain(|m| m != sid);
            room.speakers.remove(&sid.to_string());
            if room.members.is_empty() {
                self.rooms.remove(&member.room);
            }
        }
        tracing::debug!(participant = sid, "media state removed");
    }

    /// A peer died: its participant's media is over. The session hears of it and leaves,
    /// which removes the member.
    /// `kind` is the metric's reason: `ice`, `dtls` (and other stack errors) or `panic`.
    fn fail_peer(&mut self, id: PeerId, kind: &'static str, reason: &str) {
        let Some(peer) = self.peers.get(&id) else {
            return;
        };
        let owner = peer.owner.clone();
        tracing::info!(peer = id, participant = %owner, "media failed: {reason}");
        self.metrics.peer_failures.with_label_values(&[kind]).inc();
        if let Some(member) = self.members.get(&owner) {
            let _ = member.events.send(MediaEvent::Failed(reason.to_string()));
        }
        self.remove_member(&owner);
    }

    fn housekeeping(&mut self) {
        let now = Instant::now();
        if now.saturating_duration_since(self.last_allocation) >= ALLOCATION_INTERVAL {
            self.last_allocation = now;
            let members: Vec<String> = self.members.keys().cloned().collect();
            for m in members {
                self.allocate(&m, now);
            }
            let tracks: Vec<String> = self.publications.keys().cloned().collect();
            for t in tracks {
                self.dynacast(&t);
            }
            self.count_layers();
        }
        for room in self.rooms.values_mut() {
            let Some(list) = room.speakers.poll(now) else {
                continue;
            };
            let speakers: Vec<Speaker> = list
                .into_iter()
                .map(|(participant, level)| Speaker { participant, level })
                .collect();
            for m in &room.members {
                if let Some(member) = self.members.get(m) {
                    let _ = member
                        .events
                        .send(MediaEvent::ActiveSpeakers(speakers.clone()));
                }
            }
        }
    }

    // ---- statistics ----

    /// How much a cumulative per-stream count from str0m's stats grew since its last report.
    fn stats_delta(
        &mut self,
        peer: PeerId,
        mid: Mid,
        rid: Option<Rid>,
        first: bool,
        total: u64,
    ) -> u64 {
        let entry = self.stream_totals.entry((peer, mid, rid)).or_default();
        let slot = if first { &mut entry.0 } else { &mut entry.1 };
        let delta = total.saturating_sub(*slot);
        *slot = total.max(*slot);
        delta
    }

    /// Packets this worker wrote to `peer`'s m-line `mid` (a subscriber's track).
    fn forwarded_on(&self, peer: PeerId, mid: Mid) -> u64 {
        let Some(owner) = self.peers.get(&peer).map(|p| &p.owner) else {
            return 0;
        };
        let Some(member) = self.members.get(owner) else {
            return 0;
        };
        member
            .out
            .iter()
            .find(|(_, o)| o.state == OutState::Open(mid))
            .and_then(|(track, _)| self.publications.get(track)?.subscribers.get(owner))
            .map_or(0, |o| o.subscription.forwarded)
    }

    // ---- layers and bandwidth ----

    fn set_quality(
        &mut self,
        member_sid: &str,
        track: &str,
        preference: QualityPreference,
    ) -> Result<(), MediaError> {
        let publication = self
            .publications
            .get_mut(track)
            .ok_or(MediaError::TrackNotFound)?;
        let layer_sizes: Vec<(LayerIndex, (u16, u16))> = publication
            .layers
            .values()
            .filter_map(|l| Some((l.index, l.size?)))
            .collect();
        let out = publication
            .subscribers
            .get_mut(member_sid)
            .ok_or(MediaError::TrackNotFound)?;
        let layer = match preference {
            QualityPreference::Quality(q) => {
                out.view = None;
                q.max_layer()
            }
            QualityPreference::Size(w, h) => {
                out.view = Some((w, h));
                Some(layer_for_size(w, h, &layer_sizes))
            }
        };
        let before = out.subscription.selector().current();
        out.subscription.set_preferred(layer);
        if layer.is_none() && before.is_some() {
            if let Some(member) = self.members.get(member_sid) {
                let _ = member.events.send(MediaEvent::QualityChanged {
                    track: track.to_string(),
                    layer: None,
                    rid: "off".into(),
                    reason: "request",
                });
            }
        }
        let now = Instant::now();
        self.allocate(member_sid, now);
        self.dynacast(track);
        Ok(())
    }

    /// Splits `member_sid`'s downstream estimate across what it receives and tells the
    /// estimator how far to probe.
    fn allocate(&mut self, member_sid: &str, now: Instant) {
        let Some(member) = self.members.get(member_sid) else {
            return;
        };
        let Some(estimate) = member.estimate_bps else {
            return;
        };
        let Some(peer_id) = member.subscriber else {
            return;
        };
        let mut demands = Vec::with_capacity(member.out.len());
        for track in member.out.keys() {
            let Some(p) = self.publications.get_mut(track) else {
                continue;
            };
            let Some(out) = p.subscribers.get(member_sid) else {
                continue;
            };
            if out.paused {
                continue;
            }
            // Every layer the publisher offered has a cost, measured while it flows, else
            // remembered or assumed: a layer dynacast paused must still be allocatable, or
            // nobody would ever ask for it again.
            let offered = p.info.layers.len().clamp(1, MAX_LAYERS);
            let mut layer_bps = [0u64; MAX_LAYERS];
            layer_bps[..offered].copy_from_slice(&ASSUMED_LAYER_BPS[..offered]);
            if p.info.kind == TrackKind::Audio {
                layer_bps[0] = 0;
            }
            for layer in p.layers.values_mut() {
                let i = usize::from(layer.index).min(MAX_LAYERS - 1);
                if layer.receiver.is_live(now) {
                    layer.last_bps = layer.receiver.bitrate_bps(now).max(1);
                }
                if layer.last_bps > 0 {
                    layer_bps[i] = layer.last_bps;
                }
            }
            let priority = match (p.info.kind, p.info.source) {
                (TrackKind::Audio, _) => Priority::Audio,
                (_, TrackSource::Screen) => Priority::Screen,
                _ => Priority::Camera,
            };
            demands.push(Demand {
                key: track.clone(),
                priority,
                preferred: out.subscription.selector().preferred(),
                area: out
                    .view
                    .map_or(DEFAULT_VIEW_AREA, |(w, h)| w.saturating_mul(h)),
                layer_bps,
            });
        }
        let desired = Allocator::desired_bps(&demands);
        let Some(member) = self.members.get_mut(member_sid) else {
            return;
        };
        let caps = member.allocator.allocate(estimate, &demands, now);
        let mut allocated = 0u64;
        for (track, mut cap) in caps {
            if let Some(p) = self.publications.get_mut(&track) {
                if p.info.layers.len() < 2 {
                    // Without simulcast there is no smaller layer to fall back to; pausing
                    // would only trade a congested picture for none. The publisher's own
                    // congestion control is what adapts such a track.
                    cap = Some(0);
                }
                if let Some(out) = p.subscribers.get_mut(member_sid) {
                    out.subscription.set_cap(cap);
                }
            }
            if let (Some(cap), Some(d)) = (cap, demands.iter().find(|d| d.key == track)) {
                allocated += d.layer_bps[usize::from(cap)];
            }
        }
        if let Some(peer) = self.peers.get_mut(&peer_id) {
            // Probe toward what the subscriber wants; keep at least what it gets now.
            let _ = guard(|| {
                peer.rtc.bwe().set_bitrate(
                    Bitrate::bps(allocated),
                    Bitrate::bps(desired.max(allocated)),
                )
            });
            self.dirty.insert(peer_id);
        }
    }

    /// Updates `sfu_video_subscriptions{layer}` by this worker's share.
    fn count_layers(&mut self) {
        let mut counts = [0i64; 4];
        for p in self.publications.values() {
            if p.info.kind != TrackKind::Video {
                continue;
            }
            for out in p.subscribers.values() {
                let i = out.subscription.selector().current().map_or(3, |l| {
                    if p.info.layers.len() < 2 {
                        0
                    } else {
                        usize::from(l).min(2)
                    }
                });
                counts[i] += 1;
            }
        }
        for (i, layer) in LAYERS.iter().enumerate() {
            let delta = counts[i] - self.layer_counts[i];
            if delta != 0 {
                self.metrics
                    .video_subscriptions
                    .with_label_values(&[layer])
                    .add(delta);
            }
        }
        self.layer_counts = counts;
    }

    /// Tells the publisher of `track` which simulcast layers anyone receives, when that
    /// changes. The lowest layer always stays on: a new subscriber starts on it at once.
    fn dynacast(&mut self, track: &str) {
        let Some(p) = self.publications.get_mut(track) else {
            return;
        };
        if p.info.layers.len() < 2 {
            return;
        }
        let highest = p
            .subscribers
            .values()
            .filter(|o| !o.paused)
            .filter_map(|o| o.subscription.selector().desired())
            .max()
            .unwrap_or(0);
        let active: Vec<String> = p
            .info
            .layers
            .iter()
            .filter(|name| {
                let rid = Rid::from(name.as_str());
                layer_index(&rid, &p.info.layers) <= highest
            })
            .cloned()
            .collect();
        if p.active_layers.as_ref() == Some(&active) {
            return;
        }
        p.active_layers = Some(active.clone());
        if let Some(member) = self.members.get(&p.info.participant) {
            let _ = member.events.send(MediaEvent::PublisherLayers {
                track: track.to_string(),
                active,
            });
        }
    }

    fn close_all(&mut self) {
        let members: Vec<String> = self.members.keys().cloned().collect();
        for m in members {
            self.remove_member(&m);
        }
    }
}

/// The subscriber m-line and payload type for forwarding a track to a member, once the
/// subscriber connection has negotiated it and the publisher's format is known.
fn resolve_route(
    members: &HashMap<String, Member>,
    peers: &HashMap<PeerId, Peer>,
    member_sid: &str,
    track: &str,
    peer: PeerId,
    params: Option<PayloadParams>,
) -> Option<(Mid, Pt)> {
    let OutState::Open(mid) = members.get(member_sid)?.out.get(track)?.state else {
        return None;
    };
    let pt = matching_pt(&peers.get(&peer)?.rtc, &params?)?;
    Some((mid, pt))
}

fn kind_label(kind: TrackKind) -> &'static str {
    match kind {
        TrackKind::Audio => "audio",
        TrackKind::Video => "video",
    }
}

/// A layer's index (0 = lowest) from its rid: our clients' `q`/`h`/`f`, or else its place in
/// the publisher's offer, which lists layers lowest first by convention.
fn layer_index(rid: &Rid, names: &[String]) -> LayerIndex {
    let name: &str = rid;
    if let Some(i) = LAYER_RIDS.iter().position(|r| *r == name) {
        return i as LayerIndex;
    }
    names
        .iter()
        .position(|n| n == name)
        .map_or(0, |i| i.min(MAX_LAYERS - 1) as LayerIndex)
}

/// The smallest layer whose resolution fills a `width` × `height` element; the highest known
/// layer if none does; by convention (q ≈ 320 wide, h ≈ 640, f above) while sizes are unknown.
fn layer_for_size(width: u32, height: u32, sizes: &[(LayerIndex, (u16, u16))]) -> LayerIndex {
    let mut known: Vec<&(LayerIndex, (u16, u16))> = sizes.iter().collect();
    known.sort_by_key(|(i, _)| *i);
    if known.is_empty() {
        return match width.max(height * 16 / 9) {
            0..=400 => 0,
            401..=800 => 1,
            _ => 2,
        };
    }
    known
        .iter()
        .find(|(_, (w, h))| u32::from(*w) >= width || u32::from(*h) >= height)
        .or(known.last())
        .map_or(0, |(i, _)| *i)
}

/// The rid of layer `index` among `names` (empty without simulcast).
fn rid_name(index: LayerIndex, names: &[String]) -> String {
    if names.is_empty() {
        return String::new();
    }
    let by_convention = LAYER_RIDS[usize::from(index).min(MAX_LAYERS - 1)];
    if names.iter().any(|n| n == by_convention) {
        return by_convention.to_string();
    }
    names.get(usize::from(index)).cloned().unwrap_or_default()
}
