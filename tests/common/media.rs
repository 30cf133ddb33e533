//! An independent WebRTC client for media tests, built on the webrtc-rs crates: it joins over
//! the real WebSocket, publishes synthetic VP8 and Opus, subscribes, and records what arrives.
//!
//! The server uses str0m; this client shares none of its code, so a test that passes here shows
//! interop, not one implementation agreeing with itself.
#![allow(dead_code)]

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use interceptor::registry::Registry;
use interceptor::stream_info::StreamInfo;
use interceptor::{
    Attributes, Interceptor, InterceptorBuilder, RTCPReader, RTCPWriter, RTPReader, RTPWriter,
};
use serde_json::{json, Value};
use sfu::http::Server;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use webrtc::api::interceptor_registry::register_default_interceptors;
use webrtc::api::media_engine::{MediaEngine, MIME_TYPE_H264, MIME_TYPE_OPUS, MIME_TYPE_VP8};
use webrtc::api::setting_engine::SettingEngine;
use webrtc::api::APIBuilder;
use webrtc::ice::mdns::MulticastDnsMode;
use webrtc::ice::network_type::NetworkType;
use webrtc::ice_transport::ice_server::RTCIceServer;
use webrtc::peer_connection::configuration::RTCConfiguration;
use webrtc::peer_connection::policy::ice_transport_policy::RTCIceTransportPolicy;
use webrtc::peer_connection::sdp::session_description::RTCSessionDescription;
use webrtc::peer_connection::RTCPeerConnection;
use webrtc::rtp_transceiver::rtp_codec::{
    RTCRtpCodecCapability, RTCRtpCodecParameters, RTCRtpHeaderExtensionCapability, RTPCodecType,
};
use webrtc::rtp_transceiver::RTCPFeedback;
use webrtc::track::track_local::track_local_static_rtp::TrackLocalStaticRTP;
use webrtc::track::track_local::{TrackLocal, TrackLocalWriter};

use super::WAIT;

const AUDIO_LEVEL_URI: &str = "urn:ietf:params:rtp-hdrext:ssrc-audio-level";

/// One RTP packet as a subscriber's stack handed it over (after SRTP), with the stream's codec.
#[derive(Debug, Clone)]
pub struct Received {
    pub mime: String,
    pub packet: rtp::packet::Packet,
    /// When the packet came out of the peer connection's receive path.
    pub at: std::time::Instant,
}

/// Every RTP packet a peer connection receives, RTX repair packets included.
pub type Tap = Arc<Mutex<Vec<Received>>>;

/// Records incoming RTP below webrtc-rs's track API, which hides RTX.
struct TapInterceptor {
    tap: Tap,
}

struct TapBuilder {
    tap: Tap,
}

impl InterceptorBuilder for TapBuilder {
    fn build(&self, _id: &str) -> Result<Arc<dyn Interceptor + Send + Sync>, interceptor::Error> {
        Ok(Arc::new(TapInterceptor {
            tap: self.tap.clone(),
        }))
    }
}

struct TapReader {
    tap: Tap,
    mime: String,
    inner: Arc<dyn RTPReader + Send + Sync>,
}

#[async_trait::async_trait]
impl RTPReader for TapReader {
    async fn read(
        &self,
        buf: &mut [u8],
        attributes: &Attributes,
    ) -> Result<(rtp::packet::Packet, Attributes), interceptor::Error> {
        let (packet, attributes) = self.inner.read(buf, attributes).await?;
        if let Ok(mut tap) = self.tap.lock() {
            tap.push(Received {
                mime: self.mime.clone(),
                packet: packet.clone(),
                at: std::time::Instant::now(),
            });
        }
        Ok((packet, attributes))
    }
}

#[async_trait::async_trait]
impl Interceptor for TapInterceptor {
    async fn bind_rtcp_reader(
        &self,
        reader: Arc<dyn RTCPReader + Send + Sync>,
    ) -> Arc<dyn RTCPReader + Send + Sync> {
        reader
    }
    async fn bind_rtcp_writer(
        &self,
        writer: Arc<dyn RTCPWriter + Send + Sync>,
    ) -> Arc<dyn RTCPWriter + Send + Sync> {
        writer
    }
    async fn bind_local_stream(
        &self,
        _info: &StreamInfo,
        writer: Arc<dyn RTPWriter + Send + Sync>,
    ) -> Arc<dyn RTPWriter + Send + Sync> {
        writer
    }
    async fn unbind_local_stream(&self, _info: &StreamInfo) {}
    async fn bind_remote_stream(
        &self,
        info: &StreamInfo,
        reader: Arc<dyn RTPReader + Send + Sync>,
    ) -> Arc<dyn RTPReader + Send + Sync> {
        Arc::new(TapReader {
            tap: self.tap.clone(),
            mime: info.mime_type.to_lowercase(),
            inner: reader,
        })
    }
    async fn unbind_remote_stream(&self, _info: &StreamInfo) {}
    async fn close(&self) -> Result<(), interceptor::Error> {
        Ok(())
    }
}

/// The codecs the test client speaks: Opus, and VP8 with RTX. webrtc-rs's default set has no
/// RTX, and the server resends lost packets only over RTX, as browsers expect.
/// The H.264 format test clients that take H.264 register (constrained baseline, the one every
/// browser has).
pub const H264_FMTP: &str =
    "level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f";

fn register_codecs(media: &mut MediaEngine, h264: bool) {
    let fb = |typ: &str, parameter: &str| RTCPFeedback {
        typ: typ.into(),
        parameter: parameter.into(),
    };
    let codecs = [
        (
            MIME_TYPE_OPUS,
            48_000,
            2,
            "minptime=10;useinbandfec=1",
            111,
            vec![],
            RTPCodecType::Audio,
        ),
        (
            MIME_TYPE_VP8,
            90_000,
            0,
            "",
            96,
            vec![fb("nack", ""), fb("nack", "pli"), fb("ccm", "fir")],
            RTPCodecType::Video,
        ),
        (
            "video/rtx",
            90_000,
            0,
            "apt=96",
            97,
            vec![],
            RTPCodecType::Video,
        ),
    ];
    let h264 = h264.then(|| {
        (
            MIME_TYPE_H264,
            90_000,
            0,
            H264_FMTP,
            102,
            vec![fb("nack", ""), fb("nack", "pli"), fb("ccm", "fir")],
            RTPCodecType::Video,
        )
    });
    for (mime, clock_rate, channels, fmtp, payload_type, rtcp_feedback, kind) in
        codecs.into_iter().chain(h264)
    {
        media
            .register_codec(
                RTCRtpCodecParameters {
                    capability: RTCRtpCodecCapability {
                        mime_type: mime.into(),
                        clock_rate,
                        channels,
                        sdp_fmtp_line: fmtp.into(),
                        rtcp_feedback,
                    },
                    payload_type,
                    ..Default::default()
                },
                kind,
            )
            .expect("codec");
    }
}

/// A peer connection set up for loopback-only tests: host candidates on 127.0.0.1, UDP4, no
/// mDNS, Opus and VP8 with RTX, default interceptors (without TWCC if `!twcc`: a client whose
/// only bandwidth feedback is the REMB it sends itself) plus the tap.
async fn peer_connection(
    tap: Tap,
    h264: bool,
    twcc: bool,
    config: RTCConfiguration,
) -> Arc<RTCPeerConnection> {
    let mut media = MediaEngine::default();
    register_codecs(&mut media, h264);
    // RFC 6464 audio levels, which the server's active-speaker detection reads.
    media
        .register_header_extension(
            RTCRtpHeaderExtensionCapability {
                uri: AUDIO_LEVEL_URI.to_owned(),
            },
            RTPCodecType::Audio,
            None,
        )
        .expect("audio level extension");
    // mid and rid header extensions: how a simulcast publisher names each layer's SSRC.
    for uri in [
        webrtc::sdp::extmap::SDES_MID_URI,
        webrtc::sdp::extmap::SDES_RTP_STREAM_ID_URI,
    ] {
        media
            .register_header_extension(
                RTCRtpHeaderExtensionCapability {
                    uri: uri.to_owned(),
                },
                RTPCodecType::Video,
                None,
            )
            .expect("simulcast header extensions");
    }
    let mut registry = Registry::new();
    registry = if twcc {
        register_default_interceptors(registry, &mut media).expect("interceptors")
    } else {
        let registry = webrtc::api::interceptor_registry::configure_nack(registry, &mut media);
        webrtc::api::interceptor_registry::configure_rtcp_reports(registry)
    };
    registry.add(Box::new(TapBuilder { tap }));
    let mut settings = SettingEngine::default();
    settings.set_include_loopback_candidate(true);
    settings.set_network_types(vec![NetworkType::Udp4]);
    settings.set_ice_multicast_dns_mode(MulticastDnsMode::Disabled);
    let api = APIBuilder::new()
        .with_media_engine(media)
        .with_interceptor_registry(registry)
        .with_setting_engine(settings)
        .build();
    Arc::new(
        api.new_peer_connection(config)
            .await
            .expect("peer connection"),
    )
}

/// A participant with media: signaling, a publisher and a subscriber peer connection.
pub struct MediaClient {
    outgoing: mpsc::UnboundedSender<Value>,
    incoming: mpsc::UnboundedReceiver<Value>,
    /// Messages read while waiting for something else, oldest first.
    backlog: VecDeque<Value>,
    next_id: u32,
    pub joined: Value,
    pub publisher: Arc<RTCPeerConnection>,
    pub subscriber: Arc<RTCPeerConnection>,
    /// What the subscriber connection receives.
    pub received: Tap,
    /// Keyframe requests (PLI) the publisher connection received, per track cid.
    pub plis: Arc<Mutex<HashMap<String, usize>>>,
    /// The tracks the server sends on the subscriber connection (track sid -> publisher sid):
    /// those of the last subscriber offer whose answer the server accepted.
    pub open_tracks: Arc<Mutex<HashMap<String, String>>>,
    task: tokio::task::JoinHandle<()>,
}

/// A track this client publishes, with a log of every payload it sent.
pub struct PublishedTrack {
    pub cid: String,
    pub track: Arc<TrackLocalStaticRTP>,
    /// Payloads by the counter stamped in them.
    pub sent: Arc<Mutex<HashMap<u32, Bytes>>>,
    /// When `send_vp8` wrote each packet, by counter.
    pub sent_at: Arc<Mutex<HashMap<u32, std::time::Instant>>>,
}

impl MediaClient {
    pub async fn join(server: &Server, room: &str, identity: &str) -> Self {
        Self::join_via(server, room, identity, None).await
    }

    /// Joins as a client whose connections also take H.264 (the default client knows VP8 only).
    pub async fn join_with_h264(server: &Server, room: &str, identity: &str) -> Self {
        Self::join_inner(server, room, identity, None, true, true, Default::default()).await
    }

    /// Joins as a client that sends no TWCC feedback: the server learns its bandwidth only
    /// from the REMB the test sends (`send_remb`).
    pub async fn join_remb_only(server: &Server, room: &str, identity: &str) -> Self {
        Self::join_inner(
            server,
            room,
            identity,
            None,
            false,
            false,
            Default::default(),
        )
        .await
    }

    /// Joins with the subscriber connection's media going through `via`: `(the server's media
    /// address, the relay address to use instead)`, swapped in the server's candidates.
    pub async fn join_via(
        server: &Server,
        room: &str,
        identity: &str,
        via: Option<(std::net::SocketAddr, std::net::SocketAddr)>,
    ) -> Self {
        Self::join_inner(server, room, identity, via, false, true, Default::default()).await
    }

    /// Joins as a client whose connections may use relayed candidates only (ICE transport
    /// policy `relay`), through `ice_servers` as a `joined` message lists them.
    pub async fn join_relayed(
        server: &Server,
        room: &str,
        identity: &str,
        ice_servers: &Value,
    ) -> Self {
        let ice_servers = ice_servers
            .as_array()
            .expect("ice_servers is a list")
            .iter()
            .map(|s| RTCIceServer {
                urls: serde_json::from_value(s["urls"].clone()).expect("urls"),
                username: s["username"].as_str().unwrap_or_default().to_string(),
                credential: s["credential"].as_str().unwrap_or_default().to_string(),
            })
            .collect();
        let config = RTCConfiguration {
            ice_servers,
            ice_transport_policy: RTCIceTransportPolicy::Relay,
            ..Default::default()
        };
        Self::join_inner(server, room, identity, None, false, true, config).await
    }

    async fn join_inner(
        server: &Server,
        room: &str,
        identity: &str,
        via: Option<(std::net::SocketAddr, std::net::SocketAddr)>,
        h264: bool,
        twcc: bool,
        config: RTCConfiguration,
    ) -> Self {
        let url = format!("ws://{}/ws", server.local_addr);
        let (ws, _) = tokio_tungstenite::connect_async(&url)
            .await
            .expect("connect");
        let (mut sink, mut stream) = ws.split();
        let received: Tap = Arc::default();
        let publisher = peer_connection(Arc::default(), h264, true, config.clone()).await;
        let subscriber = peer_connection(received.clone(), h264, twcc, config).await;
        // The tap sees packets as the application reads them: read every track to its end.
        subscriber.on_track(Box::new(|track, _receiver, _transceiver| {
            Box::pin(async move {
                tokio::spawn(async move { while track.read_rtp().await.is_ok() {} });
            })
        }));
        let (out_tx, mut out_rx) = mpsc::unbounded_channel::<Value>();
        let (in_tx, in_rx) = mpsc::unbounded_channel::<Value>();
        let sub = subscriber.clone();
        let answer_tx = out_tx.clone();
        let open_tracks: Arc<Mutex<HashMap<String, String>>> = Arc::default();
        let open = open_tracks.clone();
        let task = tokio::spawn(async move {
            // Each answer gets its own id, so the server's ack names the offer it settles.
            let mut answers = 0u32;
            let mut offered: HashMap<String, HashMap<String, String>> = HashMap::new();
            loop {
                tokio::select! {
                    Some(message) = out_rx.recv() => {
                        if sink.send(Message::Text(message.to_string().into())).await.is_err() {
                            return;
                        }
                    }
                    frame = stream.next() => {
                        let Some(Ok(Message::Text(text))) = frame else {
                            if matches!(frame, Some(Ok(_))) { continue; }
                            return;
                        };
                        let Ok(value) = serde_json::from_str::<Value>(&text) else { continue };
                        if value["type"] == "offer" {
                            let mut sdp = value["sdp"].as_str().unwrap_or_default().to_string();
                            if let Some((server, relay)) = via {
                                sdp = sdp.replace(
                                    &format!("{} {} typ host", server.ip(), server.port()),
                                    &format!("{} {} typ host", relay.ip(), relay.port()),
                                );
                            }
                            let answer = answer_offer(&sub, sdp).await;
                            answers += 1;
                            let id = format!("sub-answer-{answers}");
                            offered.insert(id.clone(), offered_tracks(&value));
                            let _ = answer_tx.send(json!({"type":"answer","id":id,"sdp":answer}));
                        }
                        if let Some(tracks) = value["request_id"].as_str().and_then(|id| offered.remove(id)) {
                            if value["type"] == "ack" {
                                *open.lock().unwrap() = tracks;
                            }
                        }
                        let _ = in_tx.send(value);
                    }
                }
            }
        });
        let mut client = Self {
            outgoing: out_tx,
            incoming: in_rx,
            backlog: VecDeque::new(),
            next_id: 0,
            joined: Value::Null,
            publisher,
            subscriber,
            received,
            plis: Arc::default(),
            open_tracks,
            task,
        };
        let token = super::token(server, room, identity);
        client.joined = client.request(json!({"type":"join","token":token})).await;
        assert_eq!(client.joined["type"], "joined", "{}", client.joined);
        client
    }

    pub fn sid(&self) -> String {
        self.joined["participant"]["sid"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    pub fn send(&self, value: Value) {
        let _ = self.outgoing.send(value);
    }

    async fn next(&mut self) -> Value {
        if let Some(v) = self.backlog.pop_front() {
            return v;
        }
        tokio::time::timeout(WAIT, self.incoming.recv())
            .await
            .expect("a signaling message in time")
            .expect("signaling open")
    }

    /// Sends a request and waits for its answer; other messages stay in the backlog.
    pub async fn request(&mut self, mut value: Value) -> Value {
        self.next_id += 1;
        let id = format!("m{}", self.next_id);
        value["id"] = json!(id);
        self.send(value);
        let mut skipped = Vec::new();
        let answer = loop {
            let m = tokio::time::timeout(WAIT, self.incoming.recv())
                .await
                .expect("an answer in time")
                .expect("signaling open");
            if m["request_id"] == json!(id) {
                break m;
            }
            skipped.push(m);
        };
        self.backlog.extend(skipped);
        answer
    }

    /// Waits up to `limit` for a message of `kind` that satisfies `matches`, keeping nothing
    /// it skips. `None` if none came.
    pub async fn recv_matching(
        &mut self,
        kind: &str,
        limit: Duration,
        matches: impl Fn(&Value) -> bool,
    ) -> Option<Value> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let m = match self.backlog.pop_front() {
                Some(m) => m,
                None => tokio::time::timeout_at(deadline, self.incoming.recv())
                    .await
                    .ok()??,
            };
            if m["type"] == kind && matches(&m) {
                return Some(m);
            }
        }
    }

    /// Adds a VP8 track sent as three simulcast layers (rids q, h, f) and declares it.
    pub async fn add_simulcast_video(&mut self, cid: &str) -> [PublishedTrack; 3] {
        let capability = RTCRtpCodecCapability {
            mime_type: MIME_TYPE_VP8.to_owned(),
            clock_rate: 90_000,
            ..Default::default()
        };
        let layer = |rid: &str| {
            Arc::new(TrackLocalStaticRTP::new_with_rid(
                capability.clone(),
                cid.to_owned(),
                rid.to_owned(),
                "stream".to_owned(),
            ))
        };
        let (q, h, f) = (layer("q"), layer("h"), layer("f"));
        let transceiver = self
            .publisher
            .add_transceiver_from_track(
                Arc::clone(&q) as Arc<dyn TrackLocal + Send + Sync>,
                Some(webrtc::rtp_transceiver::RTCRtpTransceiverInit {
                    direction:
                        webrtc::rtp_transceiver::rtp_transceiver_direction::RTCRtpTransceiverDirection::Sendonly,
                    send_encodings: vec![],
                }),
            )
            .await
            .expect("simulcast transceiver");
        let sender = transceiver.sender().await;
        for t in [&h, &f] {
            sender
                .add_encoding(Arc::clone(t) as Arc<dyn TrackLocal + Send + Sync>)
                .await
                .expect("simulcast encoding");
        }
        tokio::spawn(async move { while sender.read_rtcp().await.is_ok() {} });
        let answer = self
            .request(json!({"type":"publish","cid":cid,"kind":"video"}))
            .await;
        assert_eq!(answer["type"], "ack", "{answer}");
        [q, h, f].map(|track| PublishedTrack {
            cid: cid.to_string(),
            track,
            sent: Arc::default(),
            sent_at: Arc::default(),
        })
    }

    /// Waits for the next message of `kind`, keeping nothing it skips.
    pub async fn recv_type(&mut self, kind: &str) -> Value {
        loop {
            let m = self.next().await;
            if m["type"] == kind {
                return m;
            }
        }
    }

    /// Adds a track to the publisher connection and declares it with `publish`: VP8 video or
    /// Opus audio.
    pub async fn add_track(&mut self, kind: &str, cid: &str) -> PublishedTrack {
        let capability = if kind == "video" {
            RTCRtpCodecCapability {
                mime_type: MIME_TYPE_VP8.to_owned(),
                clock_rate: 90_000,
                ..Default::default()
            }
        } else {
            RTCRtpCodecCapability {
                mime_type: MIME_TYPE_OPUS.to_owned(),
                clock_rate: 48_000,
                channels: 2,
                ..Default::default()
            }
        };
        self.add_track_of(kind, cid, capability).await
    }

    /// Adds an H.264 video track (the client must have joined with H.264).
    pub async fn add_h264_track(&mut self, cid: &str) -> PublishedTrack {
        let capability = RTCRtpCodecCapability {
            mime_type: MIME_TYPE_H264.to_owned(),
            clock_rate: 90_000,
            sdp_fmtp_line: H264_FMTP.to_owned(),
            ..Default::default()
        };
        self.add_track_of("video", cid, capability).await
    }

    async fn add_track_of(
        &mut self,
        kind: &str,
        cid: &str,
        capability: RTCRtpCodecCapability,
    ) -> PublishedTrack {
        let track = Arc::new(TrackLocalStaticRTP::new(
            capability,
            cid.to_owned(),
            "stream".to_owned(),
        ));
        let sender = self
            .publisher
            .add_track(Arc::clone(&track) as Arc<dyn TrackLocal + Send + Sync>)
            .await
            .expect("add track");
        let plis = self.plis.clone();
        let key = cid.to_string();
        tokio::spawn(async move {
            while let Ok((packets, _)) = sender.read_rtcp().await {
                for p in packets {
                    let any = p.as_any();
                    if any
                        .downcast_ref::<rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication>()
                        .is_some()
                    {
                        *plis.lock().unwrap().entry(key.clone()).or_default() += 1;
                    }
                }
            }
        });
        let answer = self
            .request(json!({"type":"publish","cid":cid,"kind":kind}))
            .await;
        assert_eq!(answer["type"], "ack", "{answer}");
        PublishedTrack {
            cid: cid.to_string(),
            track,
            sent: Arc::default(),
            sent_at: Arc::default(),
        }
    }

    /// Offers the publisher connection's tracks and applies the server's answer.
    pub async fn negotiate_publisher(&mut self) {
        let offer = self.publisher.create_offer(None).await.expect("offer");
        let mut gathered = self.publisher.gathering_complete_promise().await;
        self.publisher
            .set_local_description(offer)
            .await
            .expect("local offer");
        let _ = gathered.recv().await;
        let local = self.publisher.local_description().await.expect("local sdp");
        let mut answer = self.request(json!({"type":"offer","sdp":local.sdp})).await;
        // The server takes one offer a second after a burst of five; a client waits its turn.
        while answer["code"] == "rate_limited" {
            tokio::time::sleep(Duration::from_millis(250)).await;
            answer = self.request(json!({"type":"offer","sdp":local.sdp})).await;
        }
        assert_eq!(answer["type"], "answer", "{answer}");
        let sdp = answer["sdp"].as_str().expect("answer sdp").to_string();
        self.publisher
            .set_remote_description(RTCSessionDescription::answer(sdp).expect("answer"))
            .await
            .expect("remote answer");
    }

    /// The header extension id negotiated for audio levels on the publisher connection.
    pub async fn audio_level_id(&self) -> Option<u8> {
        let sdp = self.publisher.local_description().await?.sdp;
        sdp.lines().find_map(|l| {
            let rest = l.strip_prefix("a=extmap:")?;
            let (id, uri) = rest.split_once(' ')?;
            (uri.trim() == AUDIO_LEVEL_URI).then(|| id.split('/').next()?.parse().ok())?
        })
    }

    /// Waits until `track_published` names our track `cid`; returns its sid.
    pub async fn published_sid(&mut self, cid: &str) -> String {
        loop {
            let m = self.recv_type("track_published").await;
            if m["track"]["cid"] == cid && m["track"]["participant"] == json!(self.sid()) {
                return m["track"]["sid"].as_str().unwrap().to_string();
            }
        }
    }

    /// Waits until the server has accepted this client's answer to a subscriber offer that
    /// carries `track` (a track sid): from then on the server forwards the track's packets here.
    /// False if that did not happen within `WAIT`.
    pub async fn track_open(&self, track: &str) -> bool {
        super::eventually(|| async { self.open_tracks.lock().unwrap().contains_key(track) }).await
    }

    /// How many tracks published by `participant` (a participant sid) the server sends here.
    pub fn open_tracks_from(&self, participant: &str) -> usize {
        self.open_tracks
            .lock()
            .unwrap()
            .values()
            .filter(|p| *p == participant)
            .count()
    }

    /// Received packets of one codec (lowercase mime, e.g. "video/vp8"), in arrival order.
    /// The packets of `mime` received, with when each arrived.
    pub fn arrivals_of(&self, mime: &str) -> Vec<(rtp::packet::Packet, std::time::Instant)> {
        self.received
            .lock()
            .unwrap()
            .iter()
            .filter(|r| r.mime == mime)
            .map(|r| (r.packet.clone(), r.at))
            .collect()
    }

    pub fn received_of(&self, mime: &str) -> Vec<rtp::packet::Packet> {
        self.received
            .lock()
            .unwrap()
            .iter()
            .filter(|r| r.mime == mime)
            .map(|r| r.packet.clone())
            .collect()
    }

    pub async fn close(self) {
        let _ = self.publisher.close().await;
        let _ = self.subscriber.close().await;
        self.task.abort();
    }

    /// Drops signaling and media without a goodbye, like a killed process.
    pub fn kill(self) {
        self.task.abort();
        let publisher = self.publisher.clone();
        let subscriber = self.subscriber.clone();
        tokio::spawn(async move {
            let _ = publisher.close().await;
            let _ = subscriber.close().await;
        });
    }
}

/// The tracks a subscriber `offer` message lists: track sid -> publisher sid.
fn offered_tracks(offer: &Value) -> HashMap<String, String> {
    offer["tracks"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|t| {
            Some((
                t["track"].as_str()?.to_string(),
                t["participant"].as_str()?.to_string(),
            ))
        })
        .collect()
}

async fn answer_offer(pc: &Arc<RTCPeerConnection>, sdp: String) -> String {
    let offer = RTCSessionDescription::offer(sdp).expect("offer sdp");
    pc.set_remote_description(offer)
        .await
        .expect("remote offer");
    let answer = pc.create_answer(None).await.expect("answer");
    let mut gathered = pc.gathering_complete_promise().await;
    pc.set_local_description(answer)
        .await
        .expect("local answer");
    let _ = tokio::time::timeout(Duration::from_secs(5), gathered.recv()).await;
    pc.local_description().await.expect("local sdp").sdp
}

/// A synthetic VP8 packet payload: a real payload descriptor (start of partition 0 on the first
/// packet of a frame, with the VP8 key/delta bit), then a counter that names the packet.
pub fn vp8_payload(counter: u32, first_of_frame: bool, keyframe: bool, size: usize) -> Bytes {
    let mut p = Vec::with_capacity(size.max(8));
    if first_of_frame {
        p.push(0x10);
        p.push(if keyframe { 0x00 } else { 0x01 });
    } else {
        p.push(0x00);
        p.push(0xff);
    }
    p.extend_from_slice(&counter.to_be_bytes());
    while p.len() < size {
        p.push((p.len() as u8).wrapping_mul(31) ^ (counter as u8));
    }
    Bytes::from(p)
}

/// The counter `vp8_payload` or `opus_payload` stamped in a payload.
pub fn counter_of(payload: &[u8]) -> Option<u32> {
    Some(u32::from_be_bytes(payload.get(2..6)?.try_into().ok()?))
}

pub fn opus_payload(counter: u32) -> Bytes {
    let mut p = vec![0xfc, 0xff];
    p.extend_from_slice(&counter.to_be_bytes());
    p.extend(std::iter::repeat_n(0x55, 60));
    Bytes::from(p)
}

/// Sends `frames` VP8 frames of `packets_per_frame` packets at 30 fps, a keyframe every
/// `keyframe_every` frames (and first; 0: delta frames only), starting at sequence number `seq`
/// and counter `counter`.
/// Returns the next (seq, counter, timestamp).
pub async fn send_vp8(
    track: &PublishedTrack,
    frames: u32,
    packets_per_frame: u32,
    keyframe_every: u32,
    mut seq: u16,
    mut counter: u32,
    mut timestamp: u32,
) -> (u16, u32, u32) {
    let mut tick = tokio::time::interval(Duration::from_millis(33));
    for frame in 0..frames {
        tick.tick().await;
        let keyframe = keyframe_every > 0 && frame % keyframe_every == 0;
        for i in 0..packets_per_frame {
            let payload = vp8_payload(counter, i == 0, keyframe, if keyframe { 1100 } else { 600 });
            track.sent.lock().unwrap().insert(counter, payload.clone());
            let packet = rtp::packet::Packet {
                header: rtp::header::Header {
                    version: 2,
                    marker: i + 1 == packets_per_frame,
                    sequence_number: seq,
                    timestamp,
                    ..Default::default()
                },
                payload,
            };
            track
                .sent_at
                .lock()
                .unwrap()
                .insert(counter, std::time::Instant::now());
            let _ = track.track.write_rtp(&packet).await;
            seq = seq.wrapping_add(1);
            counter += 1;
        }
        timestamp = timestamp.wrapping_add(3000);
    }
    (seq, counter, timestamp)
}

/// Sends `packets` Opus packets every 20 ms.
pub async fn send_opus(track: &PublishedTrack, packets: u32, seq: u16, counter: u32) -> (u16, u32) {
    send_opus_with_level(track, packets, seq, counter, None).await
}

/// Sends Opus packets carrying an RFC 6464 audio level (`(extension id, level)`, 0 = loudest).
pub async fn send_opus_with_level(
    track: &PublishedTrack,
    packets: u32,
    mut seq: u16,
    mut counter: u32,
    level: Option<(u8, u8)>,
) -> (u16, u32) {
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    let mut timestamp = 0u32;
    for _ in 0..packets {
        tick.tick().await;
        let payload = opus_payload(counter);
        track.sent.lock().unwrap().insert(counter, payload.clone());
        let mut header = rtp::header::Header {
            version: 2,
            sequence_number: seq,
            timestamp,
            ..Default::default()
        };
        if let Some((id, level)) = level {
            // Voice activity bit set, then the level in -dBov.
            let _ = header.set_extension(id, Bytes::from(vec![0x80 | (level & 0x7f)]));
        }
        let packet = rtp::packet::Packet { header, payload };
        let _ = track.track.write_rtp(&packet).await;
        seq = seq.wrapping_add(1);
        counter += 1;
        timestamp = timestamp.wrapping_add(960);
    }
    (seq, counter)
}

/// Sends three simulcast layers of synthetic VP8 at 30 fps until `stop` is set, each at about
/// the bitrate browsers give it (q ≈ 150 kbit/s, h ≈ 500 kbit/s, f ≈ 1.2 Mbit/s), with a
/// keyframe on every layer each half second so layer switches need not wait long.
pub async fn send_simulcast(
    layers: [Arc<TrackLocalStaticRTP>; 3],
    stop: Arc<std::sync::atomic::AtomicBool>,
) {
    let shape = [(1u32, 600usize), (2, 1000), (5, 1000)];
    let mut seq = [0u16, 10_000, 20_000];
    let mut counter = 0u32;
    let mut timestamp = [0u32, 1_000_000, 2_000_000];
    let mut tick = tokio::time::interval(Duration::from_millis(33));
    let mut frame = 0u32;
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        tick.tick().await;
        let keyframe = frame.is_multiple_of(15);
        for (l, track) in layers.iter().enumerate() {
            let (packets, size) = shape[l];
            for i in 0..packets {
                let payload = vp8_payload(counter, i == 0, keyframe, size);
                let packet = rtp::packet::Packet {
                    header: rtp::header::Header {
                        version: 2,
                        marker: i + 1 == packets,
                        sequence_number: seq[l],
                        timestamp: timestamp[l],
                        ..Default::default()
                    },
                    payload,
                };
                let _ = track.write_rtp(&packet).await;
                seq[l] = seq[l].wrapping_add(1);
                counter += 1;
            }
            timestamp[l] = timestamp[l].wrapping_add(3000);
        }
        frame += 1;
    }
}
