//! Real networks: a client whose network changes (ICE restarts on both of its connections, with
//! media going on), and clients that reach the media only through the embedded TURN server,
//! which relays to this SFU and nothing else. (ICE over TCP and session resume have their
//! tests in tests/browser and tests/signaling.rs.)

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

/// What `read` reads of the local candidate of the connection's nominated ICE pair.
async fn nominated_local_candidate<T>(
    pc: &RTCPeerConnection,
    read: impl Fn(&webrtc::stats::ICECandidateStats) -> T,
) -> Option<T> {
    let stats = pc.get_stats().await;
    stats.reports.values().find_map(|r| match r {
        webrtc::stats::StatsReportType::CandidatePair(p) if p.nominated => {
            match stats.reports.get(&p.local_candidate_id)? {
                webrtc::stats::StatsReportType::LocalCandidate(c) => Some(read(c)),
                _ => None,
            }
        }
        _ => None,
    })
}

/// The local port of the connection's selected ICE pair: a restart of webrtc-rs's ICE agent
/// gathers on new sockets, so the server sees the client come from a new address.
async fn local_port(pc: &RTCPeerConnection) -> Option<u16> {
    nominated_local_candidate(pc, |c| c.port).await
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

/// Alice publishes a microphone in room `r` and Bob, there too, hears it (checked).
async fn alice_heard_by_bob(
    server: &sfu::http::Server,
) -> (MediaClient, MediaClient, common::media::PublishedTrack) {
    let mut alice = MediaClient::join(server, "r", "alice").await;
    let bob = MediaClient::join(server, "r", "bob").await;
    let audio = alice.add_track("audio", "mic").await;
    alice.negotiate_publisher().await;
    alice.published_sid("mic").await;
    assert!(connected(&alice.publisher).await, "alice publishes");
    assert!(connected(&bob.subscriber).await, "bob subscribes");
    let alice_sid = alice.sid();
    let open = common::eventually(|| async { bob.open_tracks_from(&alice_sid) == 1 }).await;
    assert!(open, "bob has alice's track");
    assert!(audio_flows(&audio, &bob, 100, 1_000).await, "audio before");
    (alice, bob, audio)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ice_restarts_on_both_connections_keep_media_flowing() {
    let server = common::start(|_| {}).await;
    let (mut alice, mut bob, audio) = alice_heard_by_bob(&server).await;

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
    // The first packets may be sent while the path switches; 90% of 2 s of audio must arrive.
    let before = received_bytes(&bob.subscriber).await;
    send_opus(&audio, 100, 300, 3_000).await;
    let payloads = 100 * common::media::opus_payload(0).len();
    let reached = common::eventually(|| async {
        received_bytes(&bob.subscriber).await >= before + payloads * 9 / 10
    })
    .await;
    assert!(
        reached,
        "the audio after the subscriber's restart reaches bob's connection: {} of {payloads} bytes",
        received_bytes(&bob.subscriber).await - before
    );
    server.shutdown().await;
}

/// The embedded TURN server's address and a participant's credential, from the ICE servers
/// `joined` gave it.
fn turn_credential(ice_servers: &serde_json::Value) -> (String, String, String) {
    let server = &ice_servers[0];
    let url = server["urls"][0]
        .as_str()
        .unwrap_or_else(|| panic!("no TURN url in {ice_servers}"));
    let addr = url
        .strip_prefix("turn:")
        .and_then(|u| u.split('?').next())
        .expect("turn:HOST:PORT?transport=udp")
        .to_string();
    (
        addr,
        server["username"].as_str().unwrap().to_string(),
        server["credential"].as_str().unwrap().to_string(),
    )
}

/// The ICE servers `identity` is given on joining `room` (signaling only; it leaves again).
async fn ice_servers_for(
    server: &sfu::http::Server,
    room: &str,
    identity: &str,
) -> serde_json::Value {
    let (client, joined) = common::Client::join(server, room, identity).await;
    client.close().await;
    joined["ice_servers"].clone()
}

/// The candidate type of the local side of a connection's nominated pair.
async fn local_candidate_type(pc: &RTCPeerConnection) -> Option<String> {
    nominated_local_candidate(pc, |c| c.candidate_type.to_string()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_only_clients_publish_and_receive_through_the_embedded_turn_server() {
    let server = common::start(|c| c.turn.enabled = true).await;
    let alice_ice = ice_servers_for(&server, "r", "alice").await;
    let (addr, username, _) = turn_credential(&alice_ice);
    assert!(addr.starts_with("127.0.0.1:"), "TURN at {addr}");
    assert!(username.ends_with(":alice"), "username {username}");
    let bob_ice = ice_servers_for(&server, "r", "bob").await;

    let mut alice = MediaClient::join_relayed(&server, "r", "alice", &alice_ice).await;
    let bob = MediaClient::join_relayed(&server, "r", "bob", &bob_ice).await;
    let video = alice.add_track("video", "cam").await;
    alice.negotiate_publisher().await;
    let sid = alice.published_sid("cam").await;
    assert!(
        connected(&alice.publisher).await,
        "alice's publisher never connected"
    );
    assert!(bob.track_open(&sid).await, "bob never got alice's camera");
    assert!(
        connected(&bob.subscriber).await,
        "bob's subscriber never connected"
    );
    let (_, counter, _) = common::media::send_vp8(&video, 20, 2, 10, 1, 0, 0).await;
    let got = common::eventually(|| async {
        bob.received_of("video/vp8")
            .iter()
            .any(|p| common::media::counter_of(&p.payload).is_some_and(|c| c + 1 >= counter))
    })
    .await;
    assert!(got, "bob never received alice's video through the relay");
    for (who, pc) in [("alice", &alice.publisher), ("bob", &bob.subscriber)] {
        assert_eq!(
            local_candidate_type(pc).await.as_deref(),
            Some("relay"),
            "{who}'s connection is not relayed"
        );
    }
    let relayed = common::metric(&server, "sfu_turn_relayed_bytes_total").await;
    assert!(
        relayed.unwrap_or(0.0) > 20_000.0,
        "relayed bytes: {relayed:?}"
    );
    let allocations = common::metric(&server, "sfu_turn_allocations").await;
    assert!(
        allocations.unwrap_or(0.0) >= 2.0,
        "allocations: {allocations:?}"
    );
    server.shutdown().await;
}

/// A TURN client of the webrtc-rs family (the independent side of the protocol).
async fn turn_client(addr: &str, username: &str, password: &str) -> turn::client::Client {
    let conn = tokio::net::UdpSocket::bind("127.0.0.1:0")
        .await
        .expect("udp");
    let client = turn::client::Client::new(turn::client::ClientConfig {
        stun_serv_addr: addr.to_string(),
        turn_serv_addr: addr.to_string(),
        username: username.to_string(),
        password: password.to_string(),
        realm: String::new(),
        software: String::new(),
        rto_in_ms: 0,
        conn: std::sync::Arc::new(conn),
        vnet: None,
    })
    .await
    .expect("turn client");
    client.listen().await.expect("listen");
    client
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_turn_server_relays_to_this_sfu_only_for_valid_credentials_within_its_caps() {
    use webrtc_util::Conn;
    let server = common::start(|c| {
        c.turn.enabled = true;
        c.turn.max_allocations_per_user = 2;
    })
    .await;
    let ice = ice_servers_for(&server, "r", "alice").await;
    let (addr, username, password) = turn_credential(&ice);
    let refusals = |reason: &'static str| {
        let server = &server;
        async move {
            common::metric(
                server,
                &format!(r#"sfu_turn_refusals_total{{reason="{reason}"}}"#),
            )
            .await
            .unwrap_or(0.0)
        }
    };

    // A valid credential allocates; the relay reaches the SFU's media port, nothing else.
    let client = turn_client(&addr, &username, &password).await;
    let relay = client
        .allocate()
        .await
        .expect("alice's credential allocates");
    let media = server.state.media.media_addrs()[0];
    relay
        .send_to(b"hello", media)
        .await
        .expect("a permission for the SFU's media address");
    let elsewhere: std::net::SocketAddr = "127.0.0.99:9".parse().unwrap();
    assert!(
        relay.send_to(b"hello", elsewhere).await.is_err(),
        "a permission for another address was granted: an open relay"
    );
    assert!(refusals("peer").await >= 1.0);

    // Caps: two allocations per credential.
    let second = turn_client(&addr, &username, &password).await;
    let _second_relay = second.allocate().await.expect("a second allocation");
    let third = turn_client(&addr, &username, &password).await;
    assert!(
        third.allocate().await.is_err(),
        "a third allocation passed the cap of 2"
    );
    assert!(refusals("quota").await >= 1.0);

    // Wrong password, someone else's, expired.
    let wrong = turn_client(&addr, &username, "not-the-password").await;
    assert!(
        wrong.allocate().await.is_err(),
        "a wrong password allocated"
    );
    let bob = ice_servers_for(&server, "r", "bob").await;
    let (_, _, bobs_password) = turn_credential(&bob);
    let borrowed = turn_client(&addr, &username, &bobs_password).await;
    assert!(
        borrowed.allocate().await.is_err(),
        "bob's password worked for alice"
    );
    let secret = sfu::turn_server::derive_secret(&common::config(|_| {}).auth.api_secret);
    let expired_user = "1000:alice";
    let expired = sfu::turn_server::password(&secret, expired_user);
    let stale = turn_client(&addr, expired_user, &expired).await;
    assert!(
        stale.allocate().await.is_err(),
        "an expired credential allocated"
    );
    assert!(refusals("credentials").await >= 1.0);

    for c in [client, second, third, wrong, borrowed, stale] {
        let _ = c.close().await;
    }
    server.shutdown().await;
}

/// Runs coturn's TURN test client (Debian's `coturn` package) against `turn` (host:port),
/// sending ten 100-byte messages to `peer`, over TLS with `tls`; returns its output, stdout
/// and stderr together.
async fn turnutils_uclient(
    turn: &str,
    username: &str,
    password: &str,
    peer: std::net::SocketAddr,
    tls: bool,
) -> String {
    let (host, port) = turn.rsplit_once(':').expect("host:port");
    let (peer_ip, peer_port) = (peer.ip().to_string(), peer.port().to_string());
    let mut args: Vec<&str> = if tls { vec!["-t", "-S"] } else { Vec::new() };
    args.extend([
        "-u", username, "-w", password, "-p", port, "-e", &peer_ip, "-r", &peer_port, "-n", "10",
        "-l", "100", "-c", "-X", host,
    ]);
    let run = tokio::process::Command::new("turnutils_uclient")
        .args(&args)
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(std::time::Duration::from_secs(30), run)
        .await
        .expect("turnutils_uclient finished within 30 s")
        .expect("turnutils_uclient runs (tests/run.sh installs Debian's coturn)");
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coturns_test_client_relays_to_the_sfu_through_it_and_nowhere_else() {
    let server = common::start(|c| c.turn.enabled = true).await;
    let ice = ice_servers_for(&server, "r", "alice").await;
    let (addr, username, password) = turn_credential(&ice);
    let media = server.state.media.media_addrs()[0];
    let out = turnutils_uclient(&addr, &username, &password, media, false).await;
    assert!(
        out.contains("tot_send_msgs=10"),
        "uclient did not send through an allocation:\n{out}"
    );
    let relayed = common::metric(&server, "sfu_turn_relayed_bytes_total").await;
    assert!(
        relayed.unwrap_or(0.0) >= 1000.0,
        "relayed {relayed:?} bytes of uclient's 1000:\n{out}"
    );

    let elsewhere: std::net::SocketAddr = "127.0.0.99:9".parse().unwrap();
    let out = turnutils_uclient(&addr, &username, &password, elsewhere, false).await;
    assert!(
        out.contains("403"),
        "uclient was not refused another peer:\n{out}"
    );
    let refused = common::metric(&server, r#"sfu_turn_refusals_total{reason="peer"}"#).await;
    assert!(refused.unwrap_or(0.0) >= 1.0, "refusals: {refused:?}");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn turn_over_tls_relays_coturns_test_client_to_the_sfu() {
    let dir = std::env::temp_dir().join(format!("sfu-turn-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_string()])
        .expect("a self-signed certificate");
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert, certified.cert.pem()).expect("cert");
    std::fs::write(&key, certified.key_pair.serialize_pem()).expect("key");
    let server = common::start(|c| {
        c.turn.enabled = true;
        c.turn.tls_port = 0;
        c.turn.tls_cert = Some(cert.clone());
        c.turn.tls_key = Some(key.clone());
        c.turn.domain = Some("localhost".into());
    })
    .await;
    let ice = ice_servers_for(&server, "r", "alice").await;
    let urls: Vec<String> = serde_json::from_value(ice[0]["urls"].clone()).expect("urls");
    let turns = urls
        .iter()
        .find_map(|u| u.strip_prefix("turns:localhost:"))
        .and_then(|u| u.strip_suffix("?transport=tcp"))
        .unwrap_or_else(|| panic!("no turns: url in {urls:?}"));
    let (_, username, password) = turn_credential(&ice);
    let media = server.state.media.media_addrs()[0];
    let out = turnutils_uclient(
        &format!("127.0.0.1:{turns}"),
        &username,
        &password,
        media,
        true,
    )
    .await;
    assert!(
        out.contains("tot_send_msgs=10"),
        "uclient did not send over TLS:\n{out}"
    );
    let relayed = common::metric(&server, "sfu_turn_relayed_bytes_total").await;
    assert!(
        relayed.unwrap_or(0.0) >= 1000.0,
        "relayed {relayed:?} bytes over TLS:\n{out}"
    );
    server.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// A STUN Binding Request naming `username`, with a MESSAGE-INTEGRITY nobody can have computed
/// (20 bytes of junk): what an attacker who knows a server ufrag, but no password, can send.
fn forged_binding_request(username: &str, n: u32) -> Vec<u8> {
    let mut attrs = Vec::new();
    let name = username.as_bytes();
    attrs.extend_from_slice(&0x0006u16.to_be_bytes());
    attrs.extend_from_slice(&(name.len() as u16).to_be_bytes());
    attrs.extend_from_slice(name);
    attrs.resize(attrs.len().div_ceil(4) * 4, 0);
    attrs.extend_from_slice(&0x0008u16.to_be_bytes());
    attrs.extend_from_slice(&20u16.to_be_bytes());
    attrs.extend_from_slice(&[0xAB; 20]);
    let mut msg = Vec::with_capacity(20 + attrs.len());
    msg.extend_from_slice(&0x0001u16.to_be_bytes());
    msg.extend_from_slice(&(attrs.len() as u16).to_be_bytes());
    msg.extend_from_slice(&0x2112_A442u32.to_be_bytes());
    msg.extend_from_slice(&[0x5A; 8]);
    msg.extend_from_slice(&n.to_be_bytes());
    msg.extend_from_slice(&attrs);
    msg
}

/// A raw IPv4 socket that writes whole IP packets: it can put any source address on them.
/// Needs CAP_NET_RAW (root in the test namespace).
fn raw_ipv4_socket() -> socket2::Socket {
    socket2::Socket::new(
        socket2::Domain::IPV4,
        socket2::Type::RAW,
        Some(socket2::Protocol::from(libc::IPPROTO_RAW)),
    )
    .expect("a raw socket (run the tests as root, as tests/run.sh does)")
}

/// `payload` in a UDP datagram from `from` to `to`, in an IPv4 packet (the kernel fills in the
/// IP checksum and length; a UDP checksum of 0 means none, as IPv4 allows).
fn spoofed_udp(
    from: std::net::SocketAddrV4,
    to: std::net::SocketAddrV4,
    payload: &[u8],
) -> Vec<u8> {
    let udp_len = 8 + payload.len();
    let mut p = Vec::with_capacity(20 + udp_len);
    p.extend_from_slice(&[0x45, 0, 0, 0, 0, 0, 0, 0, 64, 17, 0, 0]);
    p.extend_from_slice(&from.ip().octets());
    p.extend_from_slice(&to.ip().octets());
    p.extend_from_slice(&from.port().to_be_bytes());
    p.extend_from_slice(&to.port().to_be_bytes());
    p.extend_from_slice(&(udp_len as u16).to_be_bytes());
    p.extend_from_slice(&[0, 0]);
    p.extend_from_slice(payload);
    p
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checks_spoofed_from_a_victims_address_do_not_steal_its_media() {
    // One worker: every peer shares its socket and demux, as the attack needs.
    let server = common::start(|c| c.rtc.workers = 1).await;
    let media = server.state.media.addrs()[0];
    let media = std::net::SocketAddrV4::new([127, 0, 0, 1].into(), media.port());
    let (alice, bob, audio) = alice_heard_by_bob(&server).await;
    // Mallory publishes too: the server's ufrag for her publisher is in her answer.
    let mut mallory = MediaClient::join(&server, "r", "mallory").await;
    mallory.add_track("audio", "mic").await;
    mallory.negotiate_publisher().await;
    mallory.published_sid("mic").await;

    // The victim's address: where alice's publisher sends from.
    let port = local_port(&alice.publisher).await.expect("alice's pair");
    let victim = std::net::SocketAddrV4::new([127, 0, 0, 1].into(), port);
    let mallory_ufrag = ufrag(
        &mallory
            .publisher
            .remote_description()
            .await
            .expect("answer")
            .sdp,
    );
    assert!(!mallory_ufrag.is_empty());

    // While alice sends 3 s of audio, checks for mallory's peer come "from" alice's address
    // every 5 ms. Were their source learned before their integrity is verified, alice's packets
    // would go to mallory's peer and be lost.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let attacker = {
        let stop = stop.clone();
        let username = format!("{mallory_ufrag}:evil");
        std::thread::spawn(move || {
            let socket = raw_ipv4_socket();
            let to = socket2::SockAddr::from(std::net::SocketAddr::V4(media));
            let mut sent = 0u32;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let packet = spoofed_udp(victim, media, &forged_binding_request(&username, sent));
                socket.send_to(&packet, &to).expect("a spoofed datagram");
                sent += 1;
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            sent
        })
    };
    let before = bob.received_of("audio/opus").len();
    send_opus(&audio, 150, 200, 2_000).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let forged = attacker.join().expect("the attacker thread");
    assert!(forged > 100, "only {forged} forged checks were sent");
    // Everything alice sent reaches bob (loopback loses nothing; allow a packet or two).
    let arrived =
        common::eventually(|| async { bob.received_of("audio/opus").len() >= before + 147 }).await;
    let got = bob.received_of("audio/opus").len() - before;
    assert!(
        arrived,
        "bob got {got} of alice's 150 packets while {forged} forged checks came from her address"
    );
    // And after the attack, her media still flows.
    assert!(audio_flows(&audio, &bob, 400, 4_000).await, "audio after");
    server.shutdown().await;
}
