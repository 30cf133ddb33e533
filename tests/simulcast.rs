//! Simulcast with real peers over loopback: a webrtc-rs publisher sends three VP8 layers, a
//! webrtc-rs subscriber receives through a UDP relay that can throttle it. The subscriber's
//! layer follows its bandwidth: down when the relay chokes, back up when it opens.

mod common;

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use common::media::{send_simulcast, MediaClient, PublishedTrack};
use common::relay::Relay;
use serde_json::{json, Value};
use webrtc::track::track_local::track_local_static_rtp::TrackLocalStaticRTP;
use webrtc::track::track_local::TrackLocalWriter;

/// Bandwidth estimates move over seconds, and a machine running other tests is slow: give each
/// phase time. These are deadlines for something to happen, not measurements.
const PHASE: Duration = Duration::from_secs(45);

/// How long no packet may arrive before a subscriber's stream counts as stopped: six frames at
/// 30 fps, far longer than loopback delivery or the server's pacer holds anything.
const QUIET: Duration = Duration::from_millis(200);

/// How long a stopped stream is watched to show nothing more arrives.
const OFF_WINDOW: Duration = Duration::from_millis(500);

/// Bandwidth estimation reads delays: these tests run one at a time, so a sibling test's CPU
/// load does not show up as congestion in another's estimate.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Alice publishes a 3-layer camera and Bob joins to receive it: both clients, the layers to
/// send on, and the track's sid.
async fn simulcast_room(
    server: &sfu::http::Server,
) -> (MediaClient, MediaClient, [PublishedTrack; 3], String) {
    let mut alice = MediaClient::join(server, "r", "alice").await;
    let bob = MediaClient::join(server, "r", "bob").await;
    let layers = alice.add_simulcast_video("cam").await;
    alice.negotiate_publisher().await;
    let sid = alice.published_sid("cam").await;
    (alice, bob, layers, sid)
}

fn layer_is(m: &Value, layer: &str) -> bool {
    m["layer"] == layer
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_throttled_subscriber_moves_down_and_back_up() {
    let _one = ONE_AT_A_TIME.lock().await;
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
    let _one = ONE_AT_A_TIME.lock().await;
    let server = common::start(|_| {}).await;
    let (mut alice, mut bob, layers, sid) = simulcast_room(&server).await;
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
    let _one = ONE_AT_A_TIME.lock().await;
    // Bob first asks for the low layer of a 3-layer camera (q ≈ 150 kbit/s), then for the
    // top one (f ≈ 1.2 Mbit/s): above the 800 kbit/s an estimate starts at, and far above
    // what flows. His webrtc-rs client sends TWCC feedback; nothing limits the loopback link.
    // An estimator only learns of room it is shown: unless the server probes past what it
    // sends, the estimate stays put and the camera never reaches its top layer.
    let server = common::start(|_| {}).await;
    let (_alice, mut bob, layers, cam) = simulcast_room(&server).await;
    let answer = bob
        .request(json!({"type":"set_quality","track":cam,"quality":"low"}))
        .await;
    assert_eq!(answer["type"], "ack", "{answer}");
    let stop = Arc::new(AtomicBool::new(false));
    let sender = tokio::spawn(send_simulcast(layers.map(|l| l.track), stop.clone()));
    bob.recv_matching("quality_changed", PHASE, |m| layer_is(m, "q"))
        .await
        .expect("bob receives the low layer");
    // Until bob's first estimate the server has nothing to cap him by: wait for it, so the
    // climb to the top layer is the estimate's doing.
    let estimated = common::eventually_within(PHASE, || async {
        common::metric(&server, "sfu_bwe_estimate_bps_count")
            .await
            .unwrap_or(0.0)
            > 0.0
    })
    .await;
    assert!(estimated, "no downstream estimate for bob");

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

/// A VP8 payload with the descriptor browsers send: 15-bit picture ID, TL0PICIDX and TID; on a
/// frame's first packet the VP8 key/delta bit; then `counter`, then padding to `size`.
fn l1t3_payload(counter: u32, pid: u16, tl0: u8, tid: u8, first: bool, key: bool) -> Vec<u8> {
    let mut p = vec![
        0x80 | if first { 0x10 } else { 0 },
        0x80 | 0x40 | 0x20,
        0x80 | (pid >> 8) as u8,
        pid as u8,
        tl0,
        tid << 6,
    ];
    if first {
        p.push(if key { 0x00 } else { 0x01 });
    }
    p.extend_from_slice(&counter.to_be_bytes());
    p.resize(1000, 0x55);
    p
}

/// What a test reads back from a forwarded L1T3 packet: (picture ID, TL0PICIDX, TID).
fn l1t3_fields(payload: &[u8]) -> Option<(u16, u8, u8)> {
    let d = payload.get(..6)?;
    Some((
        u16::from(d[2] & 0x7f) << 8 | u16::from(d[3]),
        d[4],
        d[5] >> 6,
    ))
}

/// Sends one VP8 layer with three temporal layers (TIDs 0 2 1 2 …) at 30 fps, 5 packets of
/// 1000 bytes a frame (1.2 Mbit/s), a keyframe every 60 frames, until `stop`.
async fn send_l1t3(track: Arc<TrackLocalStaticRTP>, stop: Arc<AtomicBool>) {
    let mut tick = tokio::time::interval(Duration::from_millis(33));
    let (mut seq, mut counter) = (0u16, 0u32);
    for frame in 0u32.. {
        if stop.load(std::sync::atomic::Ordering::Relaxed) {
            break;
        }
        tick.tick().await;
        let tid = [0, 2, 1, 2][frame as usize % 4];
        let (pid, tl0) = (frame as u16 & 0x7fff, (frame / 4) as u8);
        for i in 0..5u32 {
            let payload = l1t3_payload(counter, pid, tl0, tid, i == 0, frame % 60 == 0);
            let packet = rtp::packet::Packet {
                header: rtp::header::Header {
                    version: 2,
                    marker: i == 4,
                    sequence_number: seq,
                    timestamp: frame * 3000,
                    ..Default::default()
                },
                payload: payload.into(),
            };
            let _ = track.write_rtp(&packet).await;
            seq = seq.wrapping_add(1);
            counter += 1;
        }
    }
}

/// The (seq, picture ID, TL0PICIDX, TID) of each VP8 packet bob got, in arrival order.
fn l1t3_received(bob: &MediaClient) -> Vec<(u16, u16, u8, u8)> {
    bob.received_of("video/vp8")
        .iter()
        .filter_map(|p| {
            let (pid, tl0, tid) = l1t3_fields(&p.payload)?;
            Some((p.header.sequence_number, pid, tl0, tid))
        })
        .collect()
}

/// Waits until the last 12 frames bob got have TIDs within `max_tid` (and at least one of
/// exactly `max_tid` when `exact`); returns how many packets he had then.
async fn frames_settle(bob: &MediaClient, max_tid: u8, exact: bool) -> Option<usize> {
    let mut at = None;
    let settled = common::eventually_within(PHASE, || {
        let got = l1t3_received(bob);
        let mut frames: Vec<(u16, u8)> = got.iter().map(|p| (p.1, p.3)).collect();
        frames.dedup();
        let tail = &frames[frames.len().saturating_sub(12)..];
        let ok = tail.len() == 12
            && tail.iter().all(|f| f.1 <= max_tid)
            && (!exact || tail.iter().any(|f| f.1 == max_tid));
        if ok {
            at = Some(got.len());
        }
        async move { ok }
    })
    .await;
    settled.then_some(at).flatten()
}

/// No gap in sequence numbers or picture IDs from packet `from` on: frames left out of the
/// stream must not look like losses to the subscriber.
fn assert_continuous(got: &[(u16, u16, u8, u8)], from: usize, what: &str) {
    for w in got[from..].windows(2) {
        let (a, b) = (w[0], w[1]);
        assert_eq!(
            b.0,
            a.0.wrapping_add(1),
            "{what}: sequence gap {a:?} -> {b:?}"
        );
        if b.1 != a.1 {
            assert_eq!(
                b.1,
                (a.1 + 1) & 0x7fff,
                "{what}: picture ID gap {a:?} -> {b:?}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn short_bandwidth_lowers_the_frame_rate_with_no_gap_in_the_numbering() {
    let _one = ONE_AT_A_TIME.lock().await;
    // A single-layer camera with three temporal layers, as browsers send VP8. Bob says (REMB)
    // how much he can take: at 800 kbit/s the 1.2 Mbit/s stream fits at half its frame rate,
    // at 300 kbit/s not even that (a single layer is never paused: a quarter then); with room
    // again, everything. Frames left out must leave no gap in sequence numbers or picture IDs.
    let server = common::start(|_| {}).await;
    let mut alice = MediaClient::join(&server, "r", "alice").await;
    let bob = MediaClient::join_remb_only(&server, "r", "bob").await;
    let cam = alice.add_track("video", "cam").await;
    alice.negotiate_publisher().await;
    let sid = alice.published_sid("cam").await;
    assert!(bob.track_open(&sid).await);
    let stop = Arc::new(AtomicBool::new(false));
    let sender = tokio::spawn(send_l1t3(cam.track.clone(), stop.clone()));
    let remb = Arc::new(std::sync::atomic::AtomicU32::new(800_000));
    let remb_task = {
        let (remb, stop) = (remb.clone(), stop.clone());
        let bob_sub = bob.subscriber.clone();
        tokio::spawn(async move {
            // Browsers send REMB about once a second, more often when it changes.
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let bps = remb.load(std::sync::atomic::Ordering::Relaxed) as f32;
                let mut ssrcs = Vec::new();
                for t in bob_sub.get_transceivers().await {
                    for track in t.receiver().await.tracks().await {
                        ssrcs.push(track.ssrc());
                    }
                }
                let packet = rtcp::payload_feedbacks::receiver_estimated_maximum_bitrate::ReceiverEstimatedMaximumBitrate {
                    sender_ssrc: 1,
                    bitrate: bps,
                    ssrcs,
                };
                let _ = bob_sub.write_rtcp(&[Box::new(packet)]).await;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
    };

    let half = frames_settle(&bob, 1, true)
        .await
        .expect("at 800 kbit/s bob gets TIDs 0 and 1 only");
    remb.store(300_000, std::sync::atomic::Ordering::Relaxed);
    let quarter = frames_settle(&bob, 0, true)
        .await
        .expect("at 300 kbit/s bob gets TID 0 only");
    remb.store(5_000_000, std::sync::atomic::Ordering::Relaxed);
    let full = frames_settle(&bob, 2, true)
        .await
        .expect("with room bob gets every frame again");
    let got = l1t3_received(&bob);
    assert!(half < quarter && quarter < full);
    // Across every change: half rate, down to a quarter, back up to all.
    assert_continuous(
        &got,
        half.saturating_sub(40),
        "lowered and raised frame rates",
    );
    let left_out = got[half..quarter].iter().filter(|p| p.3 == 2).count();
    assert_eq!(left_out, 0, "TID 2 frames forwarded at half rate");

    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let _ = sender.await;
    let _ = remb_task.await;
    server.shutdown().await;
}
