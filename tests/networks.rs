//! A client whose network changes: ICE restarts on both of its connections, with media going
//! on. (TURN, ICE over TCP and session resume are not built yet.)

mod common;

use common::media::{send_opus, MediaClient};
use serde_json::json;
use webrtc::peer_connection::offer_answer_options::RTCOfferOptions;
use webrtc::peer_connection::peer_connection_state::RTCPeerConnectionState;
use webrtc::peer_connection::sdp::session_description::RTCSessionDescription;
use webrtc::peer_connection::RTCPeerConnection;

async fn connected(pc: &RTCPeerConnection) -> bool {
    common::eventually(|| async { pc.connection_state() == RTCPeerConnectionState::Connected })
        .await
}

fn ufrag(sdp: &str) -> String {
    sdp.lines()
        .find_map(|l| l.strip_prefix("a=ice-ufrag:"))
        .unwrap_or_default()
        .trim()
        .to_string()
}

/// The local port of the connection's selected ICE pair: a restart of webrtc-rs's ICE agent
/// gathers on new sockets, so the server sees the client come from a new address.
async fn local_port(pc: &RTCPeerConnection) -> Option<u16> {
    let stats = pc.get_stats().await;
    stats.reports.values().find_map(|r| match r {
        webrtc::stats::StatsReportType::CandidatePair(p) if p.nominated => {
            let local = stats.reports.get(&p.local_candidate_id)?;
            match local {
                webrtc::stats::StatsReportType::LocalCandidate(c) => Some(c.port),
                _ => None,
            }
        }
        _ => None,
    })
}

async fn received_bytes(pc: &RTCPeerConnection) -> usize {
    let stats = pc.get_stats().await;
    stats
        .reports
        .values()
        .map(|r| match r {
            webrtc::stats::StatsReportType::Transport(t) => t.bytes_received,
            _ => 0,
        })
        .sum()
}

/// Audio from alice arriving at bob: packets received after `before`.
async fn audio_flows(
    alice: &common::media::PublishedTrack,
    bob: &MediaClient,
    seq: u16,
    counter: u32,
) -> bool {
    let before = bob.received_of("audio/opus").len();
    send_opus(alice, 25, seq, counter).await;
    common::eventually(|| async { bob.received_of("audio/opus").len() >= before + 20 }).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ice_restarts_on_both_connections_keep_media_flowing() {
    let server = common::start(|_| {}).await;
    let mut alice = MediaClient::join(&server, "r", "alice").await;
    let mut bob = MediaClient::join(&server, "r", "bob").await;
    let audio = alice.add_track("audio", "mic").await;
    alice.negotiate_publisher().await;
    alice.published_sid("mic").await;
    assert!(connected(&alice.publisher).await, "alice publishes");
    assert!(connected(&bob.subscriber).await, "bob subscribes");
    let alice_sid = alice.sid();
    let open = common::eventually(|| async { bob.open_tracks_from(&alice_sid) == 1 }).await;
    assert!(open, "bob has alice's track");
    assert!(audio_flows(&audio, &bob, 100, 1_000).await, "audio before");

    // The publisher restarts ICE the standard way: an offer with new credentials, gathered on
    // new sockets.
    let old_port = local_port(&alice.publisher).await;
    let first_answer = alice
        .publisher
        .remote_description()
        .await
        .expect("answer")
        .sdp;
    let offer = alice
        .publisher
        .create_offer(Some(RTCOfferOptions {
            ice_restart: true,
            ..Default::default()
        }))
        .await
        .expect("restart offer");
    alice
        .publisher
        .set_local_description(offer.clone())
        .await
        .expect("local offer");
    let answer = alice.request(json!({"type":"offer","sdp":offer.sdp})).await;
    assert_eq!(answer["type"], "answer", "{answer}");
    let sdp = answer["sdp"].as_str().expect("sdp").to_string();
    assert_ne!(ufrag(&sdp), ufrag(&first_answer), "new server credentials");
    alice
        .publisher
        .set_remote_description(RTCSessionDescription::answer(sdp).expect("answer"))
        .await
        .expect("remote answer");
    let moved = common::eventually(|| async {
        let port = local_port(&alice.publisher).await;
        port.is_some() && port != old_port
    })
    .await;
    assert!(moved, "alice's connection moved to a new local port");
    assert!(
        audio_flows(&audio, &bob, 200, 2_000).await,
        "audio after the publisher's restart"
    );

    // The subscriber asks; the server re-offers with new credentials; the client's answer
    // (with its own new ones) restarts it.
    let old_sub_ufrag = ufrag(
        &bob.subscriber
            .remote_description()
            .await
            .expect("offer")
            .sdp,
    );
    let ack = bob.request(json!({"type":"restart_ice"})).await;
    assert_eq!(ack["type"], "ack", "{ack}");
    let restarted = common::eventually(|| async {
        bob.subscriber
            .remote_description()
            .await
            .is_some_and(|d| ufrag(&d.sdp) != old_sub_ufrag && !ufrag(&d.sdp).is_empty())
    })
    .await;
    assert!(restarted, "a subscriber offer with new credentials came");
    // webrtc-rs hands no RTP to its tracks after it restarted ICE as the answerer (its
    // transport gets the packets, its receivers do not), so the check is at its transport: the
    // audio sent after the restart reaches the connection, on the new pair.
    let before = received_bytes(&bob.subscriber).await;
    send_opus(&audio, 50, 300, 3_000).await;
    let payloads = 50 * common::media::opus_payload(0).len();
    let reached =
        common::eventually(|| async { received_bytes(&bob.subscriber).await >= before + payloads })
            .await;
    assert!(
        reached,
        "the audio after the subscriber's restart reaches bob's connection: {} of {payloads} bytes",
        received_bytes(&bob.subscriber).await - before
    );
    server.shutdown().await;
}
