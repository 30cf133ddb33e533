//! Fault isolation in the media plane, with real WebRTC peers over loopback: a panic while a
//! worker handles one participant ends that participant's media only, and a worker whose loop
//! dies is restarted, its participants told. Faults are injected with a test-only command that
//! no client request can reach.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use common::media::{send_opus, MediaClient, PublishedTrack};
use sfu::rtc::{Command, Fault};
use webrtc::peer_connection::peer_connection_state::RTCPeerConnectionState;
use webrtc::peer_connection::RTCPeerConnection;

async fn connected(pc: &RTCPeerConnection, who: &str) {
    let ok =
        common::eventually(|| async { pc.connection_state() == RTCPeerConnectionState::Connected })
            .await;
    assert!(ok, "{who} did not connect: {:?}", pc.connection_state());
}

/// Sends Opus on `track` until `stop` is set.
fn keep_talking(track: PublishedTrack, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let (mut seq, mut counter) = (0u16, 0u32);
        while !stop.load(Ordering::Relaxed) {
            (seq, counter) = send_opus(&track, 10, seq, counter).await;
        }
    })
}

/// A room where `speaker` publishes audio that `listener` receives; audio flows once this
/// returns.
async fn talking_room(
    server: &sfu::http::Server,
    room: &str,
    speaker: &str,
    listener: &str,
    stop: &Arc<AtomicBool>,
) -> (MediaClient, MediaClient) {
    let mut speaker = MediaClient::join(server, room, speaker).await;
    let listener = MediaClient::join(server, room, listener).await;
    let mic = speaker.add_track("audio", "mic").await;
    speaker.negotiate_publisher().await;
    speaker.published_sid("mic").await;
    connected(&speaker.publisher, "speaker").await;
    connected(&listener.subscriber, "listener").await;
    keep_talking(mic, stop.clone());
    let flowing =
        common::eventually(|| async { !listener.received_of("audio/opus").is_empty() }).await;
    assert!(flowing, "audio reached the listener in room {room}");
    (speaker, listener)
}

/// Waits until `client` receives `more` audio packets beyond what it has now.
async fn keeps_receiving(client: &MediaClient, more: usize) -> bool {
    let before = client.received_of("audio/opus").len();
    common::eventually(|| async { client.received_of("audio/opus").len() >= before + more }).await
}

async fn inject(server: &sfu::http::Server, room: &str, participant: String, fault: Fault) {
    let media = &server.state.media;
    media
        .workers_of(room)
        .first()
        .and_then(|w| media.handle(*w))
        .expect("the room is placed on a worker")
        .send(Command::InjectFault { participant, fault })
        .await
        .expect("the worker takes the command");
}

async fn media_failed(client: &mut MediaClient) -> bool {
    client
        .recv_matching("error", common::WAIT, |m| m["code"] == "media_failed")
        .await
        .is_some()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_ends_only_the_participant_it_touched() {
    // One media worker: both rooms share it, so only the panic boundary keeps them apart.
    let server = common::start(|c| c.rtc.workers = 1).await;
    let stop = Arc::new(AtomicBool::new(false));
    let (mut alice, _bob) = talking_room(&server, "a", "alice", "bob", &stop).await;
    let (_carol, dave) = talking_room(&server, "b", "carol", "dave", &stop).await;
    let panics_before = common::metric(&server, "sfu_peer_failures_total{reason=\"panic\"}")
        .await
        .unwrap_or(0.0);

    inject(&server, "a", alice.sid(), Fault::Participant).await;

    assert!(
        media_failed(&mut alice).await,
        "alice is told her media failed"
    );
    let counted = common::eventually(|| async {
        common::metric(&server, "sfu_peer_failures_total{reason=\"panic\"}").await
            > Some(panics_before)
    })
    .await;
    assert!(counted, "the panic is counted as a peer failure");
    // Room b, on the same worker, never noticed: a second of audio keeps coming.
    assert!(
        keeps_receiving(&dave, 40).await,
        "dave in the other room keeps receiving"
    );
    assert_eq!(
        common::metric(&server, "sfu_worker_restarts_total").await,
        Some(0.0),
        "the worker itself did not restart"
    );
    stop.store(true, Ordering::Relaxed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_whose_loop_dies_restarts_and_tells_its_participants() {
    let server = common::start(|c| c.rtc.workers = 1).await;
    let stop = Arc::new(AtomicBool::new(false));
    let (mut alice, mut bob) = talking_room(&server, "a", "alice", "bob", &stop).await;

    inject(&server, "a", alice.sid(), Fault::Worker).await;

    assert!(media_failed(&mut alice).await, "alice is told");
    assert!(media_failed(&mut bob).await, "bob is told");
    let restarted = common::eventually(|| async {
        common::metric(&server, "sfu_worker_restarts_total").await == Some(1.0)
    })
    .await;
    assert!(restarted, "the worker restarted once");
    // The restarted worker serves new participants.
    let (_carol, dave) = talking_room(&server, "c", "carol", "dave", &stop).await;
    assert!(
        keeps_receiving(&dave, 10).await,
        "media flows after the restart"
    );
    stop.store(true, Ordering::Relaxed);
}
