//! Simulcast with real peers over loopback: a webrtc-rs publisher sends three VP8 layers, a
//! webrtc-rs subscriber receives through a UDP relay that can throttle it. The subscriber's
//! layer follows its bandwidth: down when the relay chokes, back up when it opens.

mod common;

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use common::media::{send_simulcast, MediaClient};
use common::relay::Relay;
use serde_json::{json, Value};

/// Bandwidth estimates move over seconds, and a machine running other tests is slow: give each
/// phase time. These are deadlines for something to happen, not measurements.
const PHASE: Duration = Duration::from_secs(45);

/// How long no packet may arrive before a subscriber's stream counts as stopped: six frames at
/// 30 fps, far longer than loopback delivery or the server's pacer holds anything.
const QUIET: Duration = Duration::from_millis(200);

/// How long a stopped stream is watched to show nothing more arrives.
const OFF_WINDOW: Duration = Duration::from_millis(500);

fn layer_is(m: &Value, layer: &str) -> bool {
    m["layer"] == layer
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_throttled_subscriber_moves_down_and_back_up() {
    // One media worker, so the relay knows the one port the room's media uses.
    let server = common::start(|c| c.rtc.workers = 1).await;
    let media_addr = server.state.media.addrs()[0];
    let media_addr = std::net::SocketAddr::new([127, 0, 0, 1].into(), media_addr.port());
    let relay = Relay::start(media_addr).await;

    let mut alice = MediaClient::join(&server, "r", "alice").await;
    let mut bob =
        MediaClient::join_via(&server, "r", "bob", Some((media_addr, relay.client_side))).await;
    let layers = alice.add_simulcast_video("cam").await;
    alice.negotiate_publisher().await;
    let sid = alice.published_sid("cam").await;
    let published = bob.recv_type("track_published").await;
    assert_eq!(published["track"]["layers"], json!(["q", "h", "f"]));
    let stop = Arc::new(AtomicBool::new(false));
    let sender = tokio::spawn(send_simulcast(layers.map(|l| l.track), stop.clone()));

    // Open network: the estimate grows until the high layer fits.
    let high = bob
        .recv_matching("quality_changed", PHASE, |m| {
            m["track"] == json!(sid) && layer_is(m, "f")
        })
        .await;
    assert!(
        high.is_some(),
        "bob reaches the high layer on an open network"
    );

    // A 350 kbit/s bottleneck: only the low layer fits.
    relay.limit(350_000);
    let low = bob
        .recv_matching("quality_changed", PHASE, |m| layer_is(m, "q"))
        .await
        .expect("bob moves down to the low layer when throttled");
    assert_eq!(low["reason"], "bandwidth", "{low}");
    assert!(relay.dropped.load(std::sync::atomic::Ordering::Relaxed) > 0);

    // 80 kbit/s: not even the low layer fits. The video pauses, and bob is told why instead
    // of looking at a frozen picture.
    relay.limit(80_000);
    let off = bob
        .recv_matching("quality_changed", PHASE, |m| m["quality"] == "off")
        .await
        .expect("bob is told his video is paused");
    assert_eq!(off["reason"], "bandwidth", "{off}");
    assert_eq!(off["layer"], "off", "{off}");

    // Open again: back up.
    relay.limit(0);
    let up = bob
        .recv_matching("quality_changed", PHASE, |m| layer_is(m, "f"))
        .await
        .expect("bob moves back up when the relay opens");
    assert_eq!(up["reason"], "bandwidth", "{up}");

    let switches = common::metric(&server, "sfu_layer_switches_total{reason=\"bandwidth\"}")
        .await
        .unwrap_or(0.0);
    assert!(switches >= 2.0, "switches counted: {switches}");
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let _ = sender.await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_quality_picks_the_layer_and_dynacast_tells_the_publisher() {
    let server = common::start(|_| {}).await;
    let mut alice = MediaClient::join(&server, "r", "alice").await;
    let mut bob = MediaClient::join(&server, "r", "bob").await;
    let layers = alice.add_simulcast_video("cam").await;
    alice.negotiate_publisher().await;
    let sid = alice.published_sid("cam").await;
    let stop = Arc::new(AtomicBool::new(false));
    let sender = tokio::spawn(send_simulcast(layers.map(|l| l.track), stop.clone()));
    assert!(
        bob.recv_matching("quality_changed", PHASE, |m| m["track"] == json!(sid))
            .await
            .is_some(),
        "bob starts receiving"
    );

    let answer = bob
        .request(json!({"type":"set_quality","track":sid,"quality":"low"}))
        .await;
    assert_eq!(answer["type"], "ack", "{answer}");
    let low = bob
        .recv_matching("quality_changed", PHASE, |m| layer_is(m, "q"))
        .await
        .expect("bob is moved to the low layer");
    assert_eq!(low["reason"], "request", "{low}");
    assert_eq!(low["quality"], "low");
    // Nobody needs more than the low layer now: the publisher hears so.
    let active = alice
        .recv_matching("publisher_layers", PHASE, |m| m["active"] == json!(["q"]))
        .await;
    assert!(active.is_some(), "alice is told only q is needed");

    // A large element asks for the best layer by size; the publisher may send all again.
    let answer = bob
        .request(json!({"type":"set_quality","track":sid,"width":1280,"height":720}))
        .await;
    assert_eq!(answer["type"], "ack", "{answer}");
    let active = alice
        .recv_matching("publisher_layers", PHASE, |m| {
            m["active"] == json!(["q", "h", "f"])
        })
        .await;
    assert!(
        active.is_some(),
        "alice is told every layer is needed again"
    );
    let high = bob
        .recv_matching("quality_changed", PHASE, |m| layer_is(m, "f"))
        .await
        .expect("bob is back on the high layer");
    // The allocator lifted its cap because bob asked: the switch is the request's doing.
    assert_eq!(high["reason"], "request", "{high}");
    assert_eq!(high["quality"], "high", "{high}");

    let answer = bob
        .request(json!({"type":"set_quality","track":sid,"quality":"off"}))
        .await;
    assert_eq!(answer["type"], "ack");
    let off = bob
        .recv_matching("quality_changed", PHASE, |m| m["quality"] == "off")
        .await
        .expect("off is confirmed");
    assert_eq!(off["layer"], "off");
    let video = || bob.received_of("video/vp8").len();
    let before = video();
    // Packets already in flight (or in the server's pacer) may land; then nothing more.
    let mut last = before;
    let mut quiet_since = tokio::time::Instant::now();
    let went_quiet = common::eventually(|| {
        let now = video();
        if now != last {
            last = now;
            quiet_since = tokio::time::Instant::now();
        }
        let quiet_for = quiet_since.elapsed();
        async move { quiet_for >= QUIET }
    })
    .await;
    assert!(
        went_quiet,
        "video kept arriving after off: {} packets since",
        video() - before
    );
    let settled = video();
    assert!(settled >= before);
    // Absence can only be shown over a window of time: a layer keyframes every half second and
    // sends 30 frames a second, so anything still forwarded would show within this one.
    let leaked = common::eventually_within(OFF_WINDOW, || async { video() > settled }).await;
    assert!(
        !leaked,
        "off sends nothing, yet {} packets arrived",
        video() - settled
    );

    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let _ = sender.await;
    server.shutdown().await;
}

/// Estimates above `bound` bits per second so far (observations past that bucket bound).
async fn estimates_above(server: &sfu::http::Server, bound: &str) -> f64 {
    let count = common::metric(server, "sfu_bwe_estimate_bps_count").await;
    let below = common::metric(
        server,
        &format!("sfu_bwe_estimate_bps_bucket{{le=\"{bound}\"}}"),
    )
    .await;
    count.unwrap_or(0.0) - below.unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probing_lifts_the_estimate_to_what_the_subscriptions_want() {
    // Bob first asks for the low layer of a 3-layer camera (q ≈ 150 kbit/s), then for the
    // top one (f ≈ 1.2 Mbit/s): above the 800 kbit/s an estimate starts at, and far above
    // what flows. His webrtc-rs client sends TWCC feedback; nothing limits the loopback link.
    // An estimator only learns of room it is shown: unless the server probes past what it
    // sends, the estimate stays put and the camera never reaches its top layer.
    let server = common::start(|_| {}).await;
    let mut alice = MediaClient::join(&server, "r", "alice").await;
    let mut bob = MediaClient::join(&server, "r", "bob").await;
    let layers = alice.add_simulcast_video("cam").await;
    alice.negotiate_publisher().await;
    let cam = alice.published_sid("cam").await;
    let answer = bob
        .request(json!({"type":"set_quality","track":cam,"quality":"low"}))
        .await;
    assert_eq!(answer["type"], "ack", "{answer}");
    let stop = Arc::new(AtomicBool::new(false));
    let sender = tokio::spawn(send_simulcast(layers.map(|l| l.track), stop.clone()));
    bob.recv_matching("quality_changed", PHASE, |m| layer_is(m, "q"))
        .await
        .expect("bob receives the low layer");

    let answer = bob
        .request(json!({"type":"set_quality","track":cam,"quality":"high"}))
        .await;
    assert_eq!(answer["type"], "ack", "{answer}");
    let asked = tokio::time::Instant::now();
    let high = bob
        .recv_matching("quality_changed", PHASE, |m| layer_is(m, "f"))
        .await;
    assert!(
        high.is_some(),
        "the camera never reached its top layer (estimates above 1 Mbit/s: {})",
        estimates_above(&server, "1000000").await
    );
    eprintln!("top layer {:?} after asking", asked.elapsed());
    assert!(estimates_above(&server, "1000000").await > 0.0);

    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let _ = sender.await;
    server.shutdown().await;
}
