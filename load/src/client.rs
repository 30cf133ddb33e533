//! One load-test participant: a WebSocket signaling session and up to two str0m peers, a
//! publisher sending synthetic VP8 (optionally three simulcast layers) and Opus, and a subscriber
//! counting what the server forwards, audio and video apart.
//!
//! A subscriber with `feedback` (the default) behaves like a browser: everything goes through
//! str0m, which sends receiver reports, TWCC feedback and NACKs; a video frame that cannot be
//! decoded (packets lost for good before it) makes it ask for a keyframe (PLI), at most once per
//! [`PLI_INTERVAL`] per stream; the frames' send stamps give the forwarding latency.
//! Without `feedback`, once its DTLS is up, RTP datagrams are counted from their clear header
//! (SSRC, sequence number) and never reach str0m, so measuring costs far less than forwarding,
//! but no media feedback goes back. A clear packet's kind comes from its payload type, looked up
//! in the m-lines of the server's offers.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use str0m::change::{SdpAnswer, SdpOffer, SdpPendingOffer};
use str0m::format::Codec as StrCodec;
use str0m::media::SimulcastLayer;
use str0m::media::{
    Direction, Frequency, KeyframeRequestKind, MediaKind, MediaTime, Mid, Pt, Rid, Simulcast,
};
use str0m::net::{Protocol, Receive};
use str0m::{Candidate, Event, Input, Output, Rtc, RtcConfig};
use tokio::net::UdpSocket;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

use crate::media::{age_of, opus_frame, vp8_frame, LayerSpec, AUDIO_PPS, FPS};
use crate::stats::{Kind, Received, SsrcCounter, Stats};

/// How long a join (WebSocket connect and `joined`) may take before it counts as failed.
const JOIN_TIMEOUT: Duration = Duration::from_secs(15);
/// Keepalive pings, well inside the server's idle timeout.
const PING_INTERVAL: Duration = Duration::from_secs(10);
/// The least time between two keyframe requests for one stream, like a browser's throttle.
const PLI_INTERVAL: Duration = Duration::from_millis(500);

/// What one participant does.
#[derive(Debug, Clone)]
pub struct Role {
    pub identity: String,
    pub token: String,
    pub publish: bool,
    pub subscribe: bool,
    /// Video encodings to send; empty for audio only.
    pub layers: Vec<LayerSpec>,
    /// Receive like a browser (decrypt, RTCP feedback, PLI) rather than count clear headers.
    pub feedback: bool,
    /// Publish the tracks but send no media.
    pub idle: bool,
}

/// One of the participant's peer connections.
struct Peer {
    rtc: Rtc,
    socket: UdpSocket,
    local: SocketAddr,
    timeout: Instant,
    connected: bool,
}

impl Peer {
    async fn new(bind: IpAddr) -> anyhow::Result<Self> {
        let socket = UdpSocket::from_std(crate::sys::bind_udp(SocketAddr::new(bind, 0))?)?;
        let local = socket.local_addr()?;
        let mut rtc = RtcConfig::new().build(Instant::now());
        rtc.add_local_candidate(Candidate::host(local, "udp")?);
        Ok(Self {
            rtc,
            socket,
            local,
            timeout: Instant::now(),
            connected: false,
        })
    }

    fn input(&mut self, from: SocketAddr, datagram: &[u8]) {
        let Ok(contents) = datagram.try_into() else {
            return;
        };
        let _ = self.rtc.handle_input(Input::Receive(
            Instant::now(),
            Receive {
                proto: Protocol::Udp,
                source: from,
                destination: self.local,
                contents,
            },
        ));
    }

    /// Sends what str0m has to send; returns its events. `rtp_sent` counts RTP datagrams.
    fn drain(&mut self, rtp_sent: &mut u64) -> Vec<Event> {
        let mut events = Vec::new();
        loop {
            match self.rtc.poll_output() {
                Ok(Output::Transmit(t)) => {
                    if is_rtp(&t.contents) {
                        *rtp_sent += 1;
                    }
                    let _ = self.socket.try_send_to(&t.contents, t.destination);
                }
                Ok(Output::Timeout(t)) => {
                    self.timeout = t;
                    return events;
                }
                Ok(Output::Event(e)) => {
                    if matches!(e, Event::Connected) {
                        self.connected = true;
                    }
                    events.push(e);
                }
                Err(_) => {
                    self.timeout = Instant::now() + Duration::from_secs(1);
                    return events;
                }
            }
        }
    }
}

/// An RTP (not RTCP, STUN or DTLS) datagram: version 2, and a second byte that is not an RTCP
/// packet type (RFC 5761 §4).
fn is_rtp(d: &[u8]) -> bool {
    d.len() >= 12 && d[0] >> 6 == 2 && !(192..=223).contains(&d[1])
}

/// What the publisher sends on.
struct Outgoing {
    video: Option<(Mid, Pt)>,
    audio: Option<(Mid, Pt)>,
    frame: u32,
    audio_n: u32,
    next_video: Instant,
    next_audio: Instant,
}

/// Runs one participant until `stop`; everything it sees goes into `stats`.
pub async fn run(
    role: Role,
    url: String,
    bind: IpAddr,
    stats: Arc<Stats>,
    stop: CancellationToken,
) {
    let started = Instant::now();
    let joined = tokio::time::timeout(JOIN_TIMEOUT, join(&url, &role.token)).await;
    let ws = match joined {
        Ok(Ok(ws)) => ws,
        Ok(Err(e)) => return stats.join_failed(format!("{}: {e}", role.identity)),
        Err(_) => return stats.join_failed(format!("{}: join timed out", role.identity)),
    };
    stats.join_ok(started.elapsed());
    if let Err(e) = session(role.clone(), ws, bind, &stats, stop).await {
        stats.error(format!("{}: {e}", role.identity));
    }
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Cluster refusals that name the node to join instead (`url`); followed like the web client
/// follows them, at most [`MAX_REDIRECTS`] times.
const REDIRECTS: [&str; 3] = ["room_on_other_node", "node_full", "node_draining"];
const MAX_REDIRECTS: usize = 3;

async fn join(url: &str, token: &str) -> anyhow::Result<Ws> {
    let mut url = url.to_string();
    for _ in 0..=MAX_REDIRECTS {
        match join_at(&url, token).await? {
            Joined::Here(ws) => return Ok(*ws),
            Joined::Elsewhere(next) => url = next,
        }
    }
    anyhow::bail!("join refused: sent on more than {MAX_REDIRECTS} times")
}

enum Joined {
    Here(Box<Ws>),
    /// A cluster node named another node's signaling URL.
    Elsewhere(String),
}

async fn join_at(url: &str, token: &str) -> anyhow::Result<Joined> {
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await?;
    let join = json!({"type":"join","id":"join","token":token});
    ws.send(Message::Text(join.to_string().into())).await?;
    while let Some(frame) = ws.next().await {
        let Message::Text(text) = frame? else {
            continue;
        };
        let v: Value = serde_json::from_str(&text)?;
        match v["type"].as_str() {
            Some("joined") => return Ok(Joined::Here(Box::new(ws))),
            Some("error") => {
                let redirect = REDIRECTS.contains(&v["code"].as_str().unwrap_or_default());
                if let (true, Some(next)) = (redirect, v["url"].as_str()) {
                    let _ = ws.close(None).await;
                    return Ok(Joined::Elsewhere(next.to_string()));
                }
                anyhow::bail!("join refused: {}", v["message"])
            }
            _ => {}
        }
    }
    anyhow::bail!("the server closed the connection during join")
}

async fn send(ws: &mut Ws, v: Value) -> anyhow::Result<()> {
    ws.send(Message::Text(v.to_string().into())).await?;
    Ok(())
}

async fn session(
    role: Role,
    mut ws: Ws,
    bind: IpAddr,
    stats: &Stats,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    let mut publisher: Option<(Peer, SdpPendingOffer)> = None;
    let mut pub_peer: Option<Peer> = None;
    let mut out = Outgoing {
        video: None,
        audio: None,
        frame: 0,
        audio_n: 0,
        next_video: Instant::now(),
        next_audio: Instant::now(),
    };
    let mut video_mid = None;
    let mut audio_mid = None;
    if role.publish {
        let mut peer = Peer::new(bind).await?;
        let mut api = peer.rtc.sdp_api();
        if !role.layers.is_empty() {
            let simulcast = (role.layers.len() > 1).then(|| {
                let mut s = Simulcast::new();
                for l in &role.layers {
                    s.add_send_layer(SimulcastLayer::new(l.rid.unwrap_or("f")));
                }
                s
            });
            video_mid = Some(api.add_media(
                MediaKind::Video,
                Direction::SendOnly,
                Some("load".into()),
                Some("cam".into()),
                simulcast,
            ));
        }
        audio_mid = Some(api.add_media(
            MediaKind::Audio,
            Direction::SendOnly,
            Some("load".into()),
            Some("mic".into()),
            None,
        ));
        let (offer, pending) = api
            .apply()
            .ok_or_else(|| anyhow::anyhow!("no publisher offer"))?;
        if video_mid.is_some() {
            send(
                &mut ws,
                json!({"type":"publish","cid":"cam","kind":"video"}),
            )
            .await?;
        }
        send(
            &mut ws,
            json!({"type":"publish","cid":"mic","kind":"audio"}),
        )
        .await?;
        send(
            &mut ws,
            json!({"type":"offer","id":"pub-offer","sdp":offer.to_sdp_string()}),
        )
        .await?;
        publisher = Some((peer, pending));
    }
    let mut sub_peer: Option<Peer> = None;
    let mut rtx_ssrcs: HashSet<u32> = HashSet::new();
    let mut kinds: HashMap<u8, Kind> = HashMap::new();
    let mut counters: HashMap<u32, SsrcCounter> = HashMap::new();
    let mut decrypted_highest: HashMap<(Mid, Option<Rid>), u64> = HashMap::new();
    let mut pub_buf = vec![0u8; 2048];
    let mut sub_buf = vec![0u8; 2048];
    let mut ping = tokio::time::interval(PING_INTERVAL);
    let mut rtp_sent = 0u64;
    let mut received_now = 0u64;
    let mut decrypted = Received::default();
    let mut keyframe_asked: HashMap<(Mid, Option<Rid>), Instant> = HashMap::new();

    loop {
        let now = Instant::now();
        let mut wake = now + Duration::from_secs(1);
        for p in [pub_peer.as_ref(), sub_peer.as_ref()].into_iter().flatten() {
            wake = wake.min(p.timeout);
        }
        if !role.idle && pub_peer.as_ref().is_some_and(|p| p.connected) {
            if out.video.is_some() {
                wake = wake.min(out.next_video);
            }
            wake = wake.min(out.next_audio);
        }
        tokio::select! {
            _ = stop.cancelled() => break,
            frame = ws.next() => {
                let frame = match frame {
                    Some(Ok(frame)) => frame,
                    Some(Err(e)) => anyhow::bail!("signaling failed: {e}"),
                    None => anyhow::bail!("signaling closed by the server"),
                };
                let Message::Text(text) = frame else { continue };
                let Ok(v) = serde_json::from_str::<Value>(&text) else { continue };
                match v["type"].as_str() {
                    Some("answer") if v["request_id"] == "pub-offer" => {
                        let (mut peer, pending) = publisher
                            .take()
                            .ok_or_else(|| anyhow::anyhow!("unexpected answer"))?;
                        let answer = SdpAnswer::from_sdp_string(v["sdp"].as_str().unwrap_or(""))?;
                        peer.rtc.sdp_api().accept_answer(pending, answer)?;
                        pub_peer = Some(peer);
                    }
                    Some("offer") => {
                        let sdp = v["sdp"].as_str().unwrap_or("");
                        rtx_ssrcs.extend(rtx_ssrcs_of(sdp));
                        kinds.extend(payload_kinds_of(sdp));
                        let offer = SdpOffer::from_sdp_string(sdp)?;
                        if sub_peer.is_none() {
                            sub_peer = Some(Peer::new(bind).await?);
                        }
                        if let Some(peer) = sub_peer.as_mut() {
                            let answer = peer.rtc.sdp_api().accept_offer(offer)?;
                            send(&mut ws, json!({"type":"answer","sdp":answer.to_sdp_string()}))
                                .await?;
                        }
                    }
                    Some("error") => stats.error(format!("{}: {}", role.identity, v["message"])),
                    _ => {}
                }
            }
            received = recv(pub_peer.as_ref(), &mut pub_buf) => {
                if let (Ok((n, from)), Some(p)) = (received, pub_peer.as_mut()) {
                    p.input(from, &pub_buf[..n]);
                }
            }
            received = recv(sub_peer.as_ref(), &mut sub_buf) => {
                if let (Ok((n, from)), Some(p)) = (received, sub_peer.as_mut()) {
                    let d = &sub_buf[..n];
                    if !role.feedback && p.connected && is_rtp(d) {
                        received_now += u64::from(count_clear(d, &rtx_ssrcs, &kinds, &mut counters));
                    } else {
                        p.input(from, d);
                    }
                }
            }
            _ = ping.tick() => send(&mut ws, json!({"type":"ping"})).await?,
            _ = tokio::time::sleep_until(wake.into()) => {}
        }
        let now = Instant::now();
        if let Some(p) = pub_peer.as_mut() {
            if p.connected {
                if out.video.is_none() && out.audio.is_none() {
                    out.video = video_mid.and_then(|m| pt_of(&mut p.rtc, m, StrCodec::Vp8));
                    out.audio = audio_mid.and_then(|m| pt_of(&mut p.rtc, m, StrCodec::Opus));
                    out.next_video = now;
                    out.next_audio = now;
                }
                if !role.idle {
                    send_media(p, &role.layers, &mut out, now);
                }
            }
            if p.timeout <= now {
                let _ = p.rtc.handle_input(Input::Timeout(now));
            }
            p.drain(&mut rtp_sent);
        }
        if let Some(p) = sub_peer.as_mut() {
            if p.timeout <= now {
                let _ = p.rtc.handle_input(Input::Timeout(now));
            }
            for e in p.drain(&mut 0) {
                if let Event::MediaData(d) = e {
                    let (packets, lost) = count_decrypted(&d, &mut decrypted_highest);
                    decrypted.packets += packets;
                    decrypted.lost += lost;
                    let codec = d.params.spec().codec;
                    if codec.is_audio() {
                        decrypted.audio += packets;
                    } else if codec.is_video() {
                        decrypted.video += packets;
                    }
                    received_now += packets;
                    if let Some(age) = age_of(&d.data, now) {
                        stats.latency(age);
                    }
                    if codec.is_video() && !d.contiguous {
                        ask_keyframe(&mut p.rtc, d.mid, d.rid, now, &mut keyframe_asked);
                    }
                }
            }
        }
        // Shared counters once per wake-up, not per packet.
        if rtp_sent > 0 {
            stats.packets_sent.fetch_add(rtp_sent, Ordering::Relaxed);
            rtp_sent = 0;
        }
        if received_now > 0 {
            stats
                .live_received
                .fetch_add(received_now, Ordering::Relaxed);
            received_now = 0;
        }
    }
    let _ = send(&mut ws, json!({"type":"leave"})).await;
    let _ = ws.close(None).await;
    if role.subscribe {
        let received = if role.feedback {
            decrypted
        } else {
            counters.values().fold(Received::default(), |mut r, c| {
                r.packets += c.received;
                r.lost += c.lost();
                match c.kind {
                    Some(Kind::Audio) => r.audio += c.received,
                    Some(Kind::Video) => r.video += c.received,
                    None => {}
                }
                r
            })
        };
        stats.subscriber_done(received);
    }
    Ok(())
}

/// Asks for a keyframe of a stream whose frame could not be decoded, unless one was asked for
/// within [`PLI_INTERVAL`].
fn ask_keyframe(
    rtc: &mut Rtc,
    mid: Mid,
    rid: Option<Rid>,
    now: Instant,
    asked: &mut HashMap<(Mid, Option<Rid>), Instant>,
) {
    if asked
        .get(&(mid, rid))
        .is_some_and(|at| now.duration_since(*at) < PLI_INTERVAL)
    {
        return;
    }
    if let Some(mut writer) = rtc.writer(mid) {
        if writer
            .request_keyframe(rid, KeyframeRequestKind::Pli)
            .is_ok()
        {
            asked.insert((mid, rid), now);
        }
    }
}

async fn recv(peer: Option<&Peer>, buf: &mut [u8]) -> std::io::Result<(usize, SocketAddr)> {
    match peer {
        Some(p) => p.socket.recv_from(buf).await,
        None => std::future::pending().await,
    }
}

/// The payload type negotiated for `codec` on `mid`.
fn pt_of(rtc: &mut Rtc, mid: Mid, codec: StrCodec) -> Option<(Mid, Pt)> {
    let writer = rtc.writer(mid)?;
    let pt = writer
        .payload_params()
        .find(|p| p.spec().codec == codec)?
        .pt();
    Some((mid, pt))
}

/// Writes every frame that is due.
fn send_media(p: &mut Peer, layers: &[LayerSpec], out: &mut Outgoing, now: Instant) {
    let frame_interval = Duration::from_secs(1) / FPS;
    if let Some((mid, pt)) = out.video {
        while out.next_video <= now {
            let time = MediaTime::new(u64::from(out.frame) * 3000, Frequency::NINETY_KHZ);
            for layer in layers {
                let data = vp8_frame(layer, out.frame, now);
                let Some(mut writer) = p.rtc.writer(mid) else {
                    break;
                };
                if let Some(rid) = layer.rid.filter(|_| layers.len() > 1) {
                    writer = writer.rid(Rid::from(rid));
                }
                let _ = writer.write(pt, now, time, data);
            }
            out.frame += 1;
            out.next_video += frame_interval;
        }
    }
    if let Some((mid, pt)) = out.audio {
        let audio_interval = Duration::from_secs(1) / AUDIO_PPS;
        while out.next_audio <= now {
            let time = MediaTime::new(u64::from(out.audio_n) * 960, Frequency::FORTY_EIGHT_KHZ);
            if let Some(writer) = p.rtc.writer(mid) {
                let _ = writer.write(pt, now, time, opus_frame(out.audio_n, now));
            }
            out.audio_n += 1;
            out.next_audio += audio_interval;
        }
    }
}

/// Counts one SRTP datagram (at least 12 bytes: [`is_rtp`]) from its clear header; false for a
/// resend or probe (RTX).
fn count_clear(
    d: &[u8],
    rtx: &HashSet<u32>,
    kinds: &HashMap<u8, Kind>,
    counters: &mut HashMap<u32, SsrcCounter>,
) -> bool {
    let seq = u16::from_be_bytes([d[2], d[3]]);
    let ssrc = u32::from_be_bytes([d[8], d[9], d[10], d[11]]);
    if rtx.contains(&ssrc) {
        return false;
    }
    let counter = counters.entry(ssrc).or_default();
    if counter.kind.is_none() {
        counter.kind = kinds.get(&(d[1] & 0x7f)).copied();
    }
    counter.on_packet(seq);
    true
}

/// Payload type -> kind, from the m-lines of an SDP (`m=video 9 UDP/TLS/RTP/SAVPF 96 97`). One
/// BUNDLE transport never gives audio and video the same payload type.
fn payload_kinds_of(sdp: &str) -> Vec<(u8, Kind)> {
    let mut out = Vec::new();
    for line in sdp.lines() {
        let Some(m) = line.strip_prefix("m=") else {
            continue;
        };
        let mut fields = m.split_whitespace();
        let kind = match fields.next() {
            Some("audio") => Kind::Audio,
            Some("video") => Kind::Video,
            _ => continue,
        };
        // Port and protocol, then the payload types.
        out.extend(
            fields
                .skip(2)
                .filter_map(|pt| pt.parse().ok())
                .map(|pt| (pt, kind)),
        );
    }
    out
}

/// (packets, lost before them) of one decrypted frame.
fn count_decrypted(
    d: &str0m::media::MediaData,
    highest: &mut HashMap<(Mid, Option<Rid>), u64>,
) -> (u64, u64) {
    let (start, end) = (**d.seq_range.start(), **d.seq_range.end());
    let packets = end.saturating_sub(start) + 1;
    let key = (d.mid, d.rid);
    let lost = match highest.get(&key) {
        Some(&h) if start > h + 1 => start - h - 1,
        _ => 0,
    };
    if highest.get(&key).is_none_or(|&h| end > h) {
        highest.insert(key, end);
    }
    (packets, lost)
}

/// RTX SSRCs of an offer (`a=ssrc-group:FID main rtx`): resends and probes, not new packets.
fn rtx_ssrcs_of(sdp: &str) -> Vec<u32> {
    sdp.lines()
        .filter_map(|l| l.strip_prefix("a=ssrc-group:FID "))
        .filter_map(|rest| rest.split_whitespace().nth(1)?.parse().ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tells_rtp_from_rtcp_and_finds_rtx_ssrcs() {
        let mut rtp = [0u8; 12];
        rtp[0] = 0x80;
        rtp[1] = 96;
        assert!(is_rtp(&rtp));
        rtp[1] = 200; // sender report
        assert!(!is_rtp(&rtp));
        assert!(!is_rtp(&[0x16, 0xfe, 0xfd]), "DTLS");
        let sdp = "a=ssrc-group:FID 1111 2222\r\na=ssrc:1111 cname:x\r\n";
        assert_eq!(rtx_ssrcs_of(sdp), vec![2222]);
    }

    #[test]
    fn counts_clear_packets_by_the_kind_of_their_payload_type() {
        let sdp = "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:0\r\n\
                   m=video 9 UDP/TLS/RTP/SAVPF 96 97\r\na=mid:1\r\n\
                   m=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\n";
        let kinds: HashMap<u8, Kind> = payload_kinds_of(sdp).into_iter().collect();
        assert_eq!(kinds.len(), 3);
        let rtx: HashSet<u32> = [7].into();
        let mut counters = HashMap::new();
        let packet = |pt: u8, seq: u16, ssrc: u32| {
            let mut p = [0u8; 20];
            p[0] = 0x80;
            p[1] = 0x80 | pt; // marker bit set: the kind comes from the low 7 bits
            p[2..4].copy_from_slice(&seq.to_be_bytes());
            p[8..12].copy_from_slice(&ssrc.to_be_bytes());
            p
        };
        assert!(count_clear(&packet(111, 1, 1), &rtx, &kinds, &mut counters));
        assert!(count_clear(&packet(96, 10, 2), &rtx, &kinds, &mut counters));
        assert!(count_clear(&packet(96, 12, 2), &rtx, &kinds, &mut counters));
        assert!(
            !count_clear(&packet(97, 5, 7), &rtx, &kinds, &mut counters),
            "RTX"
        );
        assert!(count_clear(&packet(100, 1, 3), &rtx, &kinds, &mut counters));
        assert_eq!(counters[&1].kind, Some(Kind::Audio));
        assert_eq!(counters[&2].kind, Some(Kind::Video));
        assert_eq!(counters[&2].lost(), 1);
        assert_eq!(counters[&3].kind, None, "a payload type no m-line names");
    }
}
