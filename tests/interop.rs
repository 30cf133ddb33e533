//! Other WebRTC stacks than browsers and webrtc-rs: GStreamer's webrtcbin as it comes (an RSA
//! DTLS certificate, libnice's keepalives, msid only at the SSRC level), and what a client
//! whose connection fails is told.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::media::MediaClient;
use serde_json::{json, Value};
use webrtc::peer_connection::sdp::session_description::RTCSessionDescription;

/// How long each webrtcbin client stays: past the server's ICE consent expiry (30 s) with
/// room to spare, so a connection kept only by its first checks would have died before the end.
const GST_SECONDS: u64 = 40;

/// A Debian python3 with GStreamer's bindings (PyGObject); not a virtualenv's.
const PYTHON: &str = "/usr/bin/python3";

fn gst_client(server: &sfu::http::Server, room: &str, identity: &str) -> Child {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/gstreamer/client.py");
    Command::new(PYTHON)
        .arg(script)
        .args(["--url", &format!("ws://{}/ws", server.local_addr)])
        .args(["--token", &common::token(server, room, identity)])
        .args(["--room", room])
        .args(["--seconds", &GST_SECONDS.to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("python3 with GStreamer (tests/run.sh installs it)")
}

/// Every JSON line the client printed, once it has ended.
fn lines_of(mut child: Child) -> Vec<Value> {
    let stdout = child.stdout.take().expect("stdout");
    let lines: Vec<Value> = BufReader::new(stdout)
        .lines()
        .map_while(Result::ok)
        .filter_map(|l| serde_json::from_str(&l).ok())
        .collect();
    let status = child.wait().expect("client ends");
    assert!(status.success(), "webrtcbin client failed: {status}");
    lines
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stock_gstreamer_webrtcbin_publishes_and_subscribes() {
    let server = common::start(|_| {}).await;
    let a = gst_client(&server, "gst", "ga");
    let b = gst_client(&server, "gst", "gb");
    let (a, b) = tokio::task::spawn_blocking(move || (lines_of(a), lines_of(b)))
        .await
        .expect("clients");

    for (who, lines) in [("ga", &a), ("gb", &b)] {
        let summary = lines
            .iter()
            .find(|l| l["event"] == "summary")
            .unwrap_or_else(|| panic!("{who} printed no summary: {lines:?}"));
        // DTLS with webrtcbin's RSA certificate: without it nothing is published or received.
        assert_eq!(summary["errors"], json!([]), "{who}: {summary}");
        // SSRC-level msid: each track published under the cid the client declared, with the
        // name it gave (a random cid and an empty name otherwise).
        let published = summary["published"].as_array().expect("published");
        assert_eq!(published.len(), 2, "{who}: {summary}");
        for track in published {
            assert_eq!(track["declared"], true, "{who}: cid not matched: {track}");
            assert_eq!(track["name"], track["expected_name"], "{who}: {track}");
        }
        // The other's VP8 and Opus decoded, and still arriving at the end: past the consent
        // expiry, kept alive by libnice's binding indications.
        let frames = summary["video_frames"].as_u64().unwrap_or(0);
        let audio = summary["audio_buffers"].as_u64().unwrap_or(0);
        assert!(
            frames > 300,
            "{who}: {frames} video frames decoded: {summary}"
        );
        assert!(
            audio > 500,
            "{who}: {audio} audio buffers decoded: {summary}"
        );
        let last = summary["last_video_at"].as_f64().unwrap_or(0.0);
        let ended = summary["ended_at"].as_f64().unwrap_or(0.0);
        assert!(
            last > 32.0 && ended - last < 3.0,
            "{who}: video stopped at {last} s of {ended} s: {summary}"
        );
    }
    server.shutdown().await;
}

/// Waits for `media_failed` and checks its cause, that its message names the publisher
/// connection and says `says`, and that the failure was counted under `metric_reason`.
async fn expect_media_failed(
    server: &sfu::http::Server,
    client: &mut MediaClient,
    cause: &str,
    says: &str,
    metric_reason: &str,
) {
    // Within common::WAIT (5 s): not when ICE consent runs out (30 s).
    let failed = client
        .recv_matching("error", common::WAIT, |m| m["code"] == "media_failed")
        .await
        .unwrap_or_else(|| panic!("media_failed ({cause}) within 5 s"));
    assert_eq!(failed["cause"], cause, "{failed}");
    let message = failed["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("publisher connection") && message.contains(says),
        "the message names the connection and the reason: {message}"
    );
    let series = format!("sfu_peer_failures_total{{reason=\"{metric_reason}\"}}");
    let counted =
        common::eventually(|| async { common::metric(server, &series).await >= Some(1.0) }).await;
    assert!(counted, "the failure is counted as {series}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_whose_dtls_fails_is_told_why_at_once() {
    let server = common::start(|_| {}).await;
    let mut alice = MediaClient::join(&server, "r", "alice").await;
    let _video = alice.add_track("video", "cam").await;
    let offer = alice.publisher.create_offer(None).await.expect("offer");
    let mut gathered = alice.publisher.gathering_complete_promise().await;
    alice
        .publisher
        .set_local_description(offer)
        .await
        .expect("local offer");
    let _ = gathered.recv().await;
    let local = alice.publisher.local_description().await.expect("local");
    // The offer names a certificate the client does not have: the server must refuse the one
    // it presents in the handshake.
    let wrong = local
        .sdp
        .lines()
        .map(|l| {
            if l.starts_with("a=fingerprint:sha-256 ") {
                format!("a=fingerprint:sha-256 {}", vec!["AB"; 32].join(":"))
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\r\n")
        + "\r\n";
    assert_ne!(wrong, local.sdp, "the offer has a sha-256 fingerprint");
    let answer = alice.request(json!({"type":"offer","sdp":wrong})).await;
    assert_eq!(answer["type"], "answer", "{answer}");
    let sdp = answer["sdp"].as_str().expect("sdp").to_string();
    alice
        .publisher
        .set_remote_description(RTCSessionDescription::answer(sdp).expect("answer"))
        .await
        .expect("remote answer");

    expect_media_failed(&server, &mut alice, "dtls_failed", "fingerprint", "dtls").await;
    let left = alice
        .recv_matching("leave", common::WAIT, |_| true)
        .await
        .expect("leave");
    assert_eq!(left["reason"], "media_failed", "{left}");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publisher_is_told_which_m_line_has_no_codec_the_server_forwards() {
    let server = common::start(|_| {}).await;
    let mut alice = MediaClient::join(&server, "r", "alice").await;
    let _mic = alice.add_track("audio", "mic").await;
    let _cam = alice.add_track("video", "cam").await;
    let offer = alice.publisher.create_offer(None).await.expect("offer");
    alice
        .publisher
        .set_local_description(offer.clone())
        .await
        .expect("local offer");
    // The camera offered in a codec the server does not forward (say, a stack that only
    // encodes AV1); the microphone as usual.
    let av1 = offer.sdp.replace("VP8/90000", "AV1/90000");
    assert_ne!(av1, offer.sdp);
    let answer = alice.request(json!({"type":"offer","sdp":av1})).await;
    assert_eq!(answer["type"], "answer", "{answer}");
    // The rest of the offer stands: the answer takes the microphone in Opus and refuses the
    // camera's m-line (port 0).
    let sdp = answer["sdp"].as_str().expect("sdp");
    let audio = sdp
        .lines()
        .find(|l| l.starts_with("m=audio"))
        .expect("audio");
    let video = sdp
        .lines()
        .find(|l| l.starts_with("m=video"))
        .expect("video");
    assert!(
        !audio.starts_with("m=audio 0 ") && sdp.contains("opus/48000"),
        "{sdp}"
    );
    assert!(video.starts_with("m=video 0 "), "{sdp}");

    let failed = alice
        .recv_matching("publication_failed", common::WAIT, |_| true)
        .await
        .expect("publication_failed for the camera");
    assert_eq!(failed["cid"], "cam", "{failed}");
    assert_eq!(failed["mid"], mid_of(&av1, "m=video"), "{failed}");
    assert_eq!(failed["kind"], "video", "{failed}");
    assert_eq!(failed["code"], "codec_not_supported", "{failed}");
    assert!(
        failed["message"]
            .as_str()
            .unwrap_or_default()
            .contains("AV1"),
        "the message says what was offered: {failed}"
    );
    server.shutdown().await;
}

/// The `a=mid` of the first m-section whose line starts with `m_line`.
fn mid_of(sdp: &str, m_line: &str) -> String {
    sdp.split("\r\nm=")
        .find(|section| format!("m={section}").starts_with(m_line))
        .and_then(|section| section.lines().find_map(|l| l.strip_prefix("a=mid:")))
        .unwrap_or_default()
        .trim()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_whose_checks_never_arrive_is_told_its_udp_is_blocked() {
    // One second instead of 20, so the test does not wait for the default.
    let server = common::start(|c| c.rtc.connect_timeout = Duration::from_secs(1)).await;
    let mut alice = MediaClient::join(&server, "r", "alice").await;
    let _mic = alice.add_track("audio", "mic").await;
    // The offer goes out, the answer comes back, but the client never applies it: it sends no
    // connectivity check, as a client whose UDP is blocked would not get one through.
    let offer = alice.publisher.create_offer(None).await.expect("offer");
    let answer = alice.request(json!({"type":"offer","sdp":offer.sdp})).await;
    assert_eq!(answer["type"], "answer", "{answer}");

    expect_media_failed(&server, &mut alice, "ice_failed", "blocked", "ice").await;
    server.shutdown().await;
}
