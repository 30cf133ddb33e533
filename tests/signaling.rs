//! Signaling over real WebSocket connections: join, presence, chat, typing, replace, kick,
//! limits, shutdown, and every kind of bad input the protocol documents.

mod common;

use std::time::Duration;

use common::{Client, Closed};
use serde_json::{json, Value};
use sfu::auth::{Claims, Grants};

#[tokio::test]
async fn join_lists_the_others_and_presence_follows() {
    let server = common::start(|_| {}).await;
    let (mut alice, joined) = Client::join(&server, "r", "alice").await;
    assert_eq!(joined["room"], "r");
    assert_eq!(joined["participant"]["identity"], "alice");
    assert_eq!(joined["participant"]["name"], "ALICE");
    assert_eq!(joined["participants"], json!([]));
    assert_eq!(joined["server"]["protocol"], 1);

    let (mut bob, joined) = Client::join(&server, "r", "bob").await;
    assert_eq!(joined["participants"][0]["identity"], "alice");
    let event = alice.recv_type("participant_joined").await;
    assert_eq!(event["participant"]["identity"], "bob");
    assert!(event.get("request_id").is_none());

    // A participant in another room is invisible.
    let (_carol, joined) = Client::join(&server, "other", "carol").await;
    assert_eq!(joined["participants"], json!([]));

    let answer = bob.request(json!({"type":"leave"})).await;
    assert_eq!(answer["type"], "leave");
    assert_eq!(answer["reason"], "client_left");
    let left = alice.recv_type("participant_left").await;
    assert_eq!(
        (left["identity"].clone(), left["reason"].clone()),
        (json!("bob"), json!("client_left"))
    );

    let (dave, _) = Client::join(&server, "r", "dave").await;
    alice.recv_type("participant_joined").await;
    dave.drop_hard();
    let left = alice.recv_type("participant_left").await;
    assert_eq!(
        (left["identity"].clone(), left["reason"].clone()),
        (json!("dave"), json!("disconnected"))
    );
    server.shutdown().await;
}

#[tokio::test]
async fn chat_is_relayed_stamped_and_its_history_is_sent_on_join() {
    let server = common::start(|c| c.chat.history = 2).await;
    let (mut alice, _) = Client::join(&server, "r", "alice").await;
    let (mut bob, _) = Client::join(&server, "r", "bob").await;
    alice.recv_type("participant_joined").await;

    let mut ids = Vec::new();
    for text in ["one", "two", "three"] {
        let echo = alice.request(json!({"type":"chat","text":text})).await;
        assert_eq!(echo["type"], "chat", "{echo}");
        assert_eq!(echo["message"]["text"], text);
        assert_eq!(echo["message"]["sender"]["identity"], "alice");
        assert!(echo["message"]["time"].as_u64().unwrap() > 1_600_000_000_000);
        ids.push(echo["message"]["id"].as_u64().unwrap());
        let relayed = bob.recv_type("chat").await;
        assert_eq!(relayed["message"], echo["message"]);
        assert!(relayed.get("request_id").is_none());
    }
    assert_eq!(ids, vec![1, 2, 3]);

    let (_carol, joined) = Client::join(&server, "r", "carol").await;
    let history: Vec<_> = joined["chat_history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["text"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(history, vec!["two", "three"]);
    assert_eq!(
        common::metric(&server, "sfu_chat_messages_total").await,
        Some(3.0)
    );
    server.shutdown().await;
}

#[tokio::test]
async fn typing_reaches_the_others_only() {
    let server = common::start(|_| {}).await;
    let (mut alice, _) = Client::join(&server, "r", "alice").await;
    let (mut bob, _) = Client::join(&server, "r", "bob").await;
    alice.recv_type("participant_joined").await;
    let ack = alice.request(json!({"type":"typing","typing":true})).await;
    assert_eq!(ack["type"], "ack");
    let typing = bob.recv_type("typing").await;
    assert_eq!(
        (typing["identity"].clone(), typing["typing"].clone()),
        (json!("alice"), json!(true))
    );
    // Alice gets no typing event of her own: the next thing she sees is her pong.
    alice.send(json!({"type":"ping","id":"p"})).await;
    assert_eq!(alice.recv().await["type"], "pong");
    server.shutdown().await;
}

#[tokio::test]
async fn metadata_reaches_everyone_and_joiners_find_it() {
    let server = common::start(|_| {}).await;
    let (mut alice, _) = Client::join(&server, "r", "alice").await;
    let (mut bob, _) = Client::join(&server, "r", "bob").await;
    alice.recv_type("participant_joined").await;
    let answer = alice
        .request(json!({"type":"update_metadata","metadata":"{\"hand\":true}"}))
        .await;
    assert_eq!(answer["type"], "participant_updated", "{answer}");
    assert_eq!(answer["participant"]["metadata"], "{\"hand\":true}");
    let event = bob.recv_type("participant_updated").await;
    assert_eq!(
        (
            &event["participant"]["identity"],
            &event["participant"]["metadata"]
        ),
        (&json!("alice"), &json!("{\"hand\":true}"))
    );
    // Too long: refused with its own code, nothing changes, and the session goes on.
    let long = "x".repeat(4097);
    let refused = alice
        .request(json!({"type":"update_metadata","metadata":long}))
        .await;
    assert_eq!(refused["code"], "metadata_too_long", "{refused}");
    let (_carol, joined) = Client::join(&server, "r", "carol").await;
    let metadata: Vec<(String, String)> = joined["participants"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["identity"].as_str().unwrap().to_string(),
                p["metadata"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        metadata,
        vec![
            ("alice".to_string(), "{\"hand\":true}".to_string()),
            ("bob".to_string(), String::new())
        ]
    );
    // Past the rate (2 per second, bursts of 5): refused, not relayed.
    let mut refused = 0;
    for i in 0..8 {
        let answer = bob
            .request(json!({"type":"update_metadata","metadata":format!("m{i}")}))
            .await;
        if answer["code"] == "rate_limited" {
            refused += 1;
        }
    }
    assert!(refused >= 2, "{refused} of 8 quick updates refused");
    server.shutdown().await;
}

#[tokio::test]
async fn rejoining_with_the_same_identity_replaces_the_old_session() {
    let server = common::start(|_| {}).await;
    let (mut alice, _) = Client::join(&server, "r", "alice").await;
    let (mut old_bob, first) = Client::join(&server, "r", "bob").await;
    alice.recv_type("participant_joined").await;
    let (mut new_bob, second) = Client::join(&server, "r", "bob").await;
    assert_ne!(first["participant"]["sid"], second["participant"]["sid"]);
    assert_eq!(
        second["participants"].as_array().unwrap().len(),
        1,
        "only alice besides bob"
    );

    let leave = old_bob.recv_type("leave").await;
    assert_eq!(leave["reason"], "replaced");
    assert_eq!(old_bob.closed().await, Closed::Code(1000));

    let left = alice.recv_type("participant_left").await;
    assert_eq!(
        (left["sid"].clone(), left["reason"].clone()),
        (first["participant"]["sid"].clone(), json!("replaced"))
    );
    let joined = alice.recv_type("participant_joined").await;
    assert_eq!(joined["participant"]["sid"], second["participant"]["sid"]);

    // The new session works, and the old one's end did not take it out of the room.
    let echo = new_bob
        .request(json!({"type":"chat","text":"still here"}))
        .await;
    assert_eq!(echo["type"], "chat");
    assert_eq!(
        alice.recv_type("chat").await["message"]["text"],
        "still here"
    );
    assert_eq!(common::metric(&server, "sfu_participants").await, Some(2.0));
    server.shutdown().await;
}

#[tokio::test]
async fn admin_can_kick_and_others_cannot() {
    let server = common::start(|_| {}).await;
    let (mut alice, _) = Client::join(&server, "r", "alice").await;
    let (mut bob, _) = Client::join(&server, "r", "bob").await;
    alice.recv_type("participant_joined").await;
    let http = reqwest::Client::new();
    let url = common::http_url(&server, "/api/rooms/r/participants/bob");

    let res = http.delete(&url).send().await.unwrap();
    assert_eq!(res.status(), 401);
    assert_eq!(res.json::<Value>().await.unwrap()["code"], "unauthorized");
    let participant = common::token(&server, "r", "alice");
    let res = http
        .delete(&url)
        .bearer_auth(&participant)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 403);
    assert_eq!(
        res.json::<Value>().await.unwrap()["code"],
        "permission_denied"
    );
    let forged = common::token(&server, "r", "alice").replace('.', ".x");
    let res = http.delete(&url).bearer_auth(forged).send().await.unwrap();
    assert_eq!(res.status(), 401);

    let admin = common::admin_token(&server);
    let rooms: Value = http
        .get(common::http_url(&server, "/api/rooms"))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(rooms["rooms"][0]["name"], "r");
    assert_eq!(rooms["rooms"][0]["participants"], 2);

    let res = http.delete(&url).bearer_auth(&admin).send().await.unwrap();
    assert_eq!(res.status(), 204);
    assert_eq!(bob.recv_type("leave").await["reason"], "kicked");
    let left = alice.recv_type("participant_left").await;
    assert_eq!(
        (left["identity"].clone(), left["reason"].clone()),
        (json!("bob"), json!("kicked"))
    );

    let res = http.delete(&url).bearer_auth(&admin).send().await.unwrap();
    assert_eq!(res.status(), 404);
    assert_eq!(
        res.json::<Value>().await.unwrap()["code"],
        "participant_not_found"
    );
    let detail: Value = http
        .get(common::http_url(&server, "/api/rooms/r"))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(detail["participants"].as_array().unwrap().len(), 1);
    server.shutdown().await;
}

#[tokio::test]
async fn room_and_server_limits_are_enforced() {
    let server = common::start(|c| {
        c.room.max_participants = 2;
        c.room.max_rooms = 1;
    })
    .await;
    let (_a, _) = Client::join(&server, "r", "a").await;
    let (_b, _) = Client::join(&server, "r", "b").await;
    let mut c = Client::connect(&server).await;
    let full = c
        .request(json!({"type":"join","token":common::token(&server, "r", "c")}))
        .await;
    assert_eq!(full["code"], "room_full");
    let limit = c
        .request(json!({"type":"join","token":common::token(&server, "r2", "c")}))
        .await;
    assert_eq!(limit["code"], "room_limit");
    // The refused connection stays usable.
    assert_eq!(c.request(json!({"type":"ping"})).await["type"], "pong");
    server.shutdown().await;
}

#[tokio::test]
async fn empty_room_closes_after_its_grace_period() {
    let server = common::start(|c| c.room.empty_timeout = Duration::from_millis(200)).await;
    let (alice, _) = Client::join(&server, "r", "alice").await;
    assert_eq!(common::metric(&server, "sfu_rooms").await, Some(1.0));
    alice.close().await;
    assert!(
        common::eventually(|| async { common::metric(&server, "sfu_rooms").await == Some(0.0) })
            .await,
        "the empty room never closed: sfu_rooms {:?}",
        common::metric(&server, "sfu_rooms").await
    );
    assert_eq!(common::metric(&server, "sfu_participants").await, Some(0.0));
    // A new join opens a fresh room with no history.
    let (_bob, joined) = Client::join(&server, "r", "bob").await;
    assert_eq!(joined["chat_history"], json!([]));
    server.shutdown().await;
}

#[tokio::test]
async fn shutdown_tells_every_client_why() {
    let server = common::start(|_| {}).await;
    let (mut alice, _) = Client::join(&server, "r", "alice").await;
    let mut unjoined = Client::connect(&server).await;
    assert_eq!(
        unjoined.request(json!({"type":"ping"})).await["type"],
        "pong"
    );
    server.shutdown().await;
    assert_eq!(alice.recv_type("leave").await["reason"], "server_shutdown");
    assert_eq!(alice.closed().await, Closed::Code(1000));
    assert_eq!(
        unjoined.recv_type("leave").await["reason"],
        "server_shutdown"
    );
}

#[tokio::test]
async fn a_client_that_never_joins_is_disconnected() {
    let server = common::start(|c| c.signal.join_timeout = Duration::from_millis(300)).await;
    let mut c = Client::connect(&server).await;
    assert_eq!(c.recv_type("leave").await["reason"], "join_timeout");
    server.shutdown().await;
}

#[tokio::test]
async fn malformed_messages_get_errors_and_the_connection_goes_on() {
    let server = common::start(|_| {}).await;
    let (mut alice, _) = Client::join(&server, "r", "alice").await;
    let (mut bob, _) = Client::join(&server, "r", "bob").await;
    alice.recv_type("participant_joined").await;

    let cases: &[(&str, &str)] = &[
        ("{not json", "bad_json"),
        ("[1,2]", "bad_request"),
        (r#"{"id":"x"}"#, "bad_request"),
        (r#"{"type":"teleport","id":"x"}"#, "unknown_type"),
        (r#"{"type":"chat","id":"x"}"#, "bad_request"),
        (
            r#"{"type":"typing","id":"x","typing":"yes"}"#,
            "bad_request",
        ),
        (r#"{"type":"chat","id":"x","text":"   "}"#, "chat_empty"),
        (
            r#"{"type":"join","id":"x","token":"abc"}"#,
            "already_joined",
        ),
        (r#"{"type":"set_quality","id":"x"}"#, "bad_request"),
        (
            r#"{"type":"set_quality","id":"x","track":"TR_x","quality":"ultra"}"#,
            "bad_request",
        ),
        (
            r#"{"type":"set_quality","id":"x","track":"TR_x","width":640}"#,
            "bad_request",
        ),
        (
            r#"{"type":"set_quality","id":"x","track":"TR_nope","quality":"low"}"#,
            "track_not_found",
        ),
        (r#"{"type":"ping","id":7}"#, "bad_request"),
    ];
    for (frame, code) in cases {
        alice.send_text(frame.to_string()).await;
        let answer = alice.recv_type("error").await;
        assert_eq!(answer["code"], *code, "{frame}: {answer}");
        assert!(!answer["message"].as_str().unwrap().is_empty());
        if frame.contains(r#""id":"x""#) {
            assert_eq!(answer["request_id"], "x", "{frame}");
        }
    }
    // Still connected, still in the room.
    alice
        .send(json!({"type":"chat","text":"after all that"}))
        .await;
    assert_eq!(
        bob.recv_type("chat").await["message"]["text"],
        "after all that"
    );
    let errors = common::metric(&server, "sfu_signal_errors_total{code=\"bad_json\"}").await;
    assert_eq!(errors, Some(1.0));
    server.shutdown().await;
}

#[tokio::test]
async fn requests_before_join_are_refused() {
    let server = common::start(|_| {}).await;
    let mut c = Client::connect(&server).await;
    let answer = c.request(json!({"type":"chat","text":"hi"})).await;
    assert_eq!(answer["code"], "not_joined");
    let answer = c.request(json!({"type":"join"})).await;
    assert_eq!(answer["code"], "unauthorized");
    let answer = c
        .request(json!({"type":"join","token":common::token(&server, "r", "a"),"protocol":2}))
        .await;
    assert_eq!(answer["code"], "unsupported_protocol");
    server.shutdown().await;
}

#[tokio::test]
async fn oversized_frame_closes_with_1009_and_the_room_goes_on() {
    let server = common::start(|_| {}).await;
    let (mut alice, _) = Client::join(&server, "r", "alice").await;
    let (mut bob, _) = Client::join(&server, "r", "bob").await;
    alice.recv_type("participant_joined").await;
    let big = json!({"type":"chat","text":"x".repeat(70 * 1024)}).to_string();
    bob.send_text(big).await;
    assert_eq!(
        bob.closed().await,
        Closed::Code(common::close_code_too_big())
    );
    let left = alice.recv_type("participant_left").await;
    assert_eq!(left["identity"], "bob");
    // A frame past even the transport limit is cut off too, without taking the server down.
    let (mut carol, _) = Client::join(&server, "r", "carol").await;
    carol.send_text("y".repeat(2 * 1024 * 1024)).await;
    assert!(matches!(
        carol.closed().await,
        Closed::Code(_) | Closed::NoFrame
    ));
    assert_eq!(alice.request(json!({"type":"ping"})).await["type"], "pong");
    // SDP grows with the meeting: an answer past the frame limit is read (and judged as SDP).
    let sdp = format!("v=0\r\n{}", "a=x\r\n".repeat(20_000));
    let answer = alice.request(json!({"type":"answer","sdp":sdp})).await;
    assert_eq!(answer["code"], "bad_sdp", "{answer}");
    assert_eq!(alice.request(json!({"type":"ping"})).await["type"], "pong");
    server.shutdown().await;
}

#[tokio::test]
async fn chat_over_the_size_limit_is_refused() {
    let server = common::start(|c| c.chat.max_message_bytes = 1000).await;
    let (mut alice, _) = Client::join(&server, "r", "alice").await;
    let answer = alice
        .request(json!({"type":"chat","text":"é".repeat(501)}))
        .await;
    assert_eq!(answer["code"], "chat_too_long");
    let answer = alice
        .request(json!({"type":"chat","text":"é".repeat(500)}))
        .await;
    assert_eq!(answer["type"], "chat");
    server.shutdown().await;
}

#[tokio::test]
async fn chat_flood_is_rate_limited_without_dropping_the_sender() {
    let server = common::start(|c| {
        c.chat.burst = 5;
        c.chat.rate_per_second = 1.0;
    })
    .await;
    let (mut alice, _) = Client::join(&server, "r", "alice").await;
    let (mut bob, _) = Client::join(&server, "r", "bob").await;
    alice.recv_type("participant_joined").await;
    let mut sent = 0;
    let mut limited = 0;
    for i in 0..30 {
        let answer = alice
            .request(json!({"type":"chat","text":format!("spam {i}")}))
            .await;
        match answer["type"].as_str() {
            Some("chat") => sent += 1,
            _ => {
                assert_eq!(answer["code"], "rate_limited");
                limited += 1;
            }
        }
    }
    assert!(
        (5..=7).contains(&sent),
        "burst of 5 (+ refill) got through, got {sent}"
    );
    assert_eq!(sent + limited, 30);
    // Bob saw exactly the messages that got through.
    for _ in 0..sent {
        bob.recv_type("chat").await;
    }
    // Nothing more: only a window of time can show that no further chat is relayed. Alice's
    // requests were all answered, so anything relayed would already be on its way.
    let extra = bob.try_recv(Duration::from_millis(300)).await;
    assert!(
        extra.is_none(),
        "bob got more than what got through: {extra:?}"
    );
    assert_eq!(alice.request(json!({"type":"ping"})).await["type"], "pong");
    server.shutdown().await;
}

#[tokio::test]
async fn signaling_flood_is_rate_limited() {
    let server = common::start(|c| {
        c.signal.burst = 10;
        c.signal.rate_per_second = 1.0;
    })
    .await;
    let mut c = Client::connect(&server).await;
    let mut limited = 0;
    for _ in 0..20 {
        if c.request(json!({"type":"ping"})).await["code"] == "rate_limited" {
            limited += 1;
        }
    }
    assert!(limited >= 9, "{limited}");
    server.shutdown().await;
}

#[tokio::test]
async fn bad_tokens_are_refused_with_their_reason() {
    let server = common::start(|_| {}).await;
    let auth = common::auth(&server);
    let expired = auth
        .sign(&Claims {
            iss: server.state.config.auth.api_key.clone(),
            sub: "a".into(),
            name: None,
            room: Some("r".into()),
            grants: Grants::default(),
            iat: 1,
            nbf: None,
            exp: 2,
        })
        .unwrap();
    let other = sfu::auth::Auth::new(&sfu::config::AuthConfig {
        api_key: server.state.config.auth.api_key.clone(),
        api_secret: "a-completely-different-secret-of-32b".into(),
        ..Default::default()
    });
    let forged = other
        .participant_token("r", "a", None, Grants::default(), Duration::from_secs(60))
        .unwrap();
    let admin = common::admin_token(&server);

    let mut c = Client::connect(&server).await;
    let cases = [
        (json!({"type":"join","token":expired}), "token_expired"),
        (json!({"type":"join","token":forged}), "unauthorized"),
        (json!({"type":"join","token":"not.a.jwt"}), "unauthorized"),
        (json!({"type":"join","token":admin}), "unauthorized"),
        (
            json!({"type":"join","token":common::token(&server, "r", "a"),"room":"elsewhere"}),
            "wrong_room",
        ),
    ];
    for (request, code) in cases {
        let answer = c.request(request.clone()).await;
        assert_eq!(answer["code"], code, "{request}: {answer}");
    }
    // The same connection can still join with a good token.
    let answer = c
        .request(json!({"type":"join","token":common::token(&server, "r", "a"),"room":"r"}))
        .await;
    assert_eq!(answer["type"], "joined");

    // A token in the URL is checked before the upgrade.
    let res = reqwest::Client::new()
        .get(common::http_url(&server, &format!("/ws?token={forged}")))
        .header("connection", "upgrade")
        .header("upgrade", "websocket")
        .header("sec-websocket-version", "13")
        .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);
    assert_eq!(res.json::<Value>().await.unwrap()["code"], "unauthorized");
    let good = common::token(&server, "r", "urlguest");
    let mut by_url =
        Client::connect_url(&format!("ws://{}/ws?token={good}", server.local_addr)).await;
    assert_eq!(
        by_url.request(json!({"type":"join"})).await["type"],
        "joined"
    );
    server.shutdown().await;
}

#[tokio::test]
async fn chat_needs_the_chat_grant() {
    let server = common::start(|_| {}).await;
    let grants = Grants {
        chat: false,
        ..Grants::default()
    };
    let mut c = Client::connect(&server).await;
    let token = common::token_with(&server, "r", "mute", grants);
    assert_eq!(
        c.request(json!({"type":"join","token":token})).await["type"],
        "joined"
    );
    let answer = c.request(json!({"type":"chat","text":"hi"})).await;
    assert_eq!(answer["code"], "permission_denied");
    let answer = c.request(json!({"type":"typing","typing":true})).await;
    assert_eq!(answer["code"], "permission_denied");
    server.shutdown().await;
}

#[tokio::test]
async fn health_metrics_and_web_page_are_served() {
    let server = common::start(|_| {}).await;
    let (_alice, _) = Client::join(&server, "r", "alice").await;
    let health = reqwest::get(common::http_url(&server, "/healthz"))
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    let metrics = reqwest::get(common::http_url(&server, "/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for name in [
        "sfu_rooms 1",
        "sfu_participants 1",
        "sfu_signal_connections 1",
        "sfu_signal_messages_received_total{type=\"join\"} 1",
        "sfu_build_info{version=",
        "sfu_process_resident_memory_bytes",
    ] {
        assert!(metrics.contains(name), "missing {name} in\n{metrics}");
    }
    let page = reqwest::get(common::http_url(&server, "/")).await.unwrap();
    assert_eq!(page.status(), 200);
    assert!(page.text().await.unwrap().contains("<html"));
    let missing = reqwest::get(common::http_url(&server, "/nope.js"))
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
    let dev: Value = reqwest::get(common::http_url(
        &server,
        "/api/dev/token?room=demo&name=Zoe",
    ))
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    let claims = common::auth(&server)
        .verify_participant(dev["token"].as_str().unwrap())
        .unwrap();
    assert_eq!(
        (claims.room.as_deref(), claims.display_name()),
        (Some("demo"), "Zoe")
    );
    server.shutdown().await;
}

#[tokio::test]
async fn rejoining_does_not_refill_the_chat_limit() {
    // The chat limit is the identity's in its room: a new connection as the same identity
    // finds it where the old one left it (it was 214 messages/s by reconnecting).
    let server = common::start(|c| {
        c.chat.burst = 3;
        c.chat.rate_per_second = 0.1;
    })
    .await;
    let (mut alice, _) = Client::join(&server, "r", "alice").await;
    let mut sent = 0;
    while alice.request(json!({"type":"chat","text":"spam"})).await["type"] == "chat" {
        sent += 1;
    }
    assert_eq!(sent, 3, "the burst");
    alice.close().await;
    let (mut again, _) = Client::join(&server, "r", "alice").await;
    let answer = again.request(json!({"type":"chat","text":"more"})).await;
    assert_eq!(answer["code"], "rate_limited", "{answer}");
    // Someone else in the room has a limit of their own.
    let (mut bob, _) = Client::join(&server, "r", "bob").await;
    assert_eq!(
        bob.request(json!({"type":"chat","text":"hi"})).await["type"],
        "chat"
    );
    server.shutdown().await;
}

#[tokio::test]
async fn typing_indicators_are_rate_limited() {
    let server = common::start(|_| {}).await;
    let (mut alice, _) = Client::join(&server, "r", "alice").await;
    let (mut bob, _) = Client::join(&server, "r", "bob").await;
    alice.recv_type("participant_joined").await;
    let mut relayed = 0;
    let mut limited = 0;
    for i in 0..40 {
        let answer = alice
            .request(json!({"type":"typing","typing": i % 2 == 0}))
            .await;
        match answer["type"].as_str() {
            Some("ack") => relayed += 1,
            _ => {
                assert_eq!(answer["code"], "rate_limited", "{answer}");
                limited += 1;
            }
        }
    }
    assert!(relayed <= 8, "{relayed} of 40 typing indicators relayed");
    assert!(limited >= 32);
    for _ in 0..relayed {
        bob.recv_type("typing").await;
    }
    server.shutdown().await;
}

#[tokio::test]
async fn a_full_chat_history_does_not_make_joined_huge() {
    let server = common::start(|c| {
        c.chat.burst = 1000;
        c.chat.history_max_bytes = 16 * 1024;
    })
    .await;
    let (mut alice, _) = Client::join(&server, "r", "alice").await;
    for i in 0..100 {
        let text = format!("{i:04}").repeat(1000);
        assert_eq!(
            alice.request(json!({"type":"chat","text":text})).await["type"],
            "chat"
        );
    }
    let (_bob, joined) = Client::join(&server, "r", "bob").await;
    let history = joined["chat_history"].as_array().expect("history");
    assert_eq!(history.len(), 4, "the newest 4 KB messages within 16 KiB");
    assert!(history[3]["text"].as_str().unwrap().starts_with("0099"));
    let size = joined.to_string().len();
    assert!(size < 20 * 1024, "joined is {size} bytes");
    server.shutdown().await;
}

#[tokio::test]
async fn a_client_that_stops_reading_is_disconnected() {
    // Bob joins, then reads nothing more while the room's chat pours in. The server's writes
    // to him stall; after write_timeout he is gone from the room (he stayed for ever when a
    // stalled write kept his session waiting).
    let server = common::start(|c| {
        c.signal.write_timeout = Duration::from_secs(1);
        c.chat.max_message_bytes = 60_000;
        c.chat.burst = 100_000;
        c.signal.burst = 100_000;
        c.chat.history = 0;
    })
    .await;
    let (mut alice, _) = Client::join(&server, "r", "alice").await;
    let mut bob = Client::connect_small_buffer(&server).await;
    let joined = bob
        .request(json!({"type":"join","token":common::token(&server, "r", "bob")}))
        .await;
    assert_eq!(joined["type"], "joined", "{joined}");
    alice.recv_type("participant_joined").await;
    let participants = || async { common::metric(&server, "sfu_participants").await };
    assert_eq!(participants().await, Some(2.0));
    let text = "x".repeat(50_000);
    for i in 0..2000 {
        let answer = alice.request(json!({"type":"chat","text":text})).await;
        assert_eq!(answer["type"], "chat", "{answer}");
        if i % 50 == 49 && participants().await == Some(1.0) {
            break;
        }
    }
    let gone = common::eventually_within(Duration::from_secs(15), || async {
        participants().await == Some(1.0)
    })
    .await;
    assert!(gone, "bob, who reads nothing, is still in the room");
    let slow = common::metric(&server, "sfu_signal_slow_consumers_total").await;
    assert!(
        slow.unwrap_or(0.0) >= 1.0,
        "counted as a slow consumer: {slow:?}"
    );
    drop(bob);
    server.shutdown().await;
}

#[tokio::test]
async fn offers_and_declared_tracks_are_bounded() {
    let server = common::start(|_| {}).await;
    let (mut alice, _) = Client::join(&server, "r", "alice").await;
    // 2,000 m-lines took a media worker 0.76 s and stalled every room on it: refused before
    // any parsing.
    let mut sdp = String::from("v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\n");
    for i in 0..2000 {
        sdp.push_str(&format!("m=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:{i}\r\n"));
    }
    let answer = alice.request(json!({"type":"offer","sdp":sdp})).await;
    assert_eq!(answer["code"], "bad_sdp", "{answer}");
    assert!(
        answer["message"]
            .as_str()
            .unwrap_or_default()
            .contains("2000 m-lines"),
        "{answer}"
    );
    // Offers come at most once a second, bursts of 5: the burst (one spent above) runs out.
    let mut limited = 0;
    for _ in 0..10 {
        let answer = alice.request(json!({"type":"offer","sdp":"v=0"})).await;
        if answer["code"] == "rate_limited" {
            limited += 1;
        } else {
            assert_eq!(answer["code"], "bad_sdp", "{answer}");
        }
    }
    assert!(limited >= 5, "{limited} of 10 offers rate limited");

    // Declared tracks: 16 may wait for their m-lines, each with a bounded cid.
    for i in 0..16 {
        let answer = alice
            .request(json!({"type":"publish","cid":format!("cam{i}"),"kind":"video"}))
            .await;
        assert_eq!(answer["type"], "ack", "{answer}");
    }
    let answer = alice
        .request(json!({"type":"publish","cid":"one-too-many","kind":"video"}))
        .await;
    assert_eq!(answer["code"], "track_limit", "{answer}");
    // Declaring one again is no new track.
    let answer = alice
        .request(json!({"type":"publish","cid":"cam3","kind":"video","name":"Camera"}))
        .await;
    assert_eq!(answer["type"], "ack", "{answer}");
    let answer = alice
        .request(json!({"type":"publish","cid":"x".repeat(60_000),"kind":"video"}))
        .await;
    assert_eq!(answer["code"], "bad_request", "{answer}");
    let answer = alice
        .request(json!({"type":"publish","cid":"mic","kind":"audio","name":"n".repeat(200)}))
        .await;
    assert_eq!(answer["code"], "bad_request", "{answer}");
    assert_eq!(alice.request(json!({"type":"ping"})).await["type"], "pong");
    server.shutdown().await;
}

#[tokio::test]
async fn bad_frames_close_with_the_code_for_what_was_wrong() {
    let server = common::start(|_| {}).await;
    let (mut alice, _) = Client::join(&server, "r", "alice").await;
    let (mut bob, _) = Client::join(&server, "r", "bob").await;
    bob.send_frame(1, vec![b'{', 0xff, 0xfe, b'}']).await;
    assert_eq!(bob.closed().await, Closed::Code(1007), "invalid UTF-8");
    let (mut carol, _) = Client::join(&server, "r", "carol").await;
    carol.send_frame(3, b"{}".to_vec()).await;
    assert_eq!(carol.closed().await, Closed::Code(1002), "reserved opcode");
    // The room goes on.
    assert_eq!(alice.request(json!({"type":"ping"})).await["type"], "pong");
    server.shutdown().await;
}

#[tokio::test]
async fn new_rooms_go_to_the_least_loaded_media_worker() {
    let server = common::start(|c| c.rtc.workers = 2).await;
    // Two room names that a hash of the name (FNV-1a modulo the workers, how rooms used to be
    // placed) would put on the same worker.
    let fnv = |s: &str| {
        s.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
        })
    };
    let names: Vec<String> = (0..)
        .map(|i| format!("room-{i}"))
        .filter(|n| fnv(n) % 2 == 0)
        .take(2)
        .collect();
    let media = &server.state.media;
    let (alice, _) = Client::join(&server, &names[0], "alice").await;
    let (bob, _) = Client::join(&server, &names[1], "bob").await;
    let (first, second) = (media.workers_of(&names[0]), media.workers_of(&names[1]));
    assert!(
        first.len() == 1 && second.len() == 1,
        "both rooms are placed"
    );
    assert_ne!(first, second, "the second room went to the idle worker");
    // Another participant of the first room joins that room's worker.
    let (carol, _) = Client::join(&server, &names[0], "carol").await;
    assert_eq!(media.workers_of(&names[0]), first);
    // When everyone has left, the rooms hold no place any more.
    for c in [alice, bob, carol] {
        c.close().await;
    }
    let freed = common::eventually(|| async {
        media.workers_of(&names[0]).is_empty() && media.workers_of(&names[1]).is_empty()
    })
    .await;
    assert!(
        freed,
        "the places are given back when the participants leave"
    );
}

/// Joins `room` as `identity` on a server with resume on; returns the client, its resume token.
async fn join_resumable(
    server: &sfu::http::Server,
    room: &str,
    identity: &str,
) -> (Client, String) {
    let (client, joined) = Client::join(server, room, identity).await;
    assert_eq!(joined["resume_window_ms"], 20_000, "{joined}");
    let token = joined["resume_token"]
        .as_str()
        .expect("joined carries a resume token")
        .to_string();
    (client, token)
}

#[tokio::test]
async fn a_dropped_socket_resumes_the_session_with_what_it_missed() {
    let server = common::start(|c| c.signal.resume_window = Duration::from_secs(20)).await;
    let (mut alice, token) = join_resumable(&server, "r", "alice").await;
    let (mut bob, _) = Client::join(&server, "r", "bob").await;
    alice.recv_type("participant_joined").await;
    let sid = alice.request(json!({"type":"ping"})).await;
    assert_eq!(sid["type"], "pong");
    let received = alice.received;
    assert_eq!(received, 3, "joined, participant_joined, pong");
    alice.drop_hard();

    // While alice has no socket, the room goes on: a chat, a typing indicator, a newcomer.
    bob.request(json!({"type":"chat","text":"while you were away"}))
        .await;
    bob.request(json!({"type":"typing","typing":true})).await;
    let (_carol, joined) = Client::join(&server, "r", "carol").await;
    let others: Vec<_> = joined["participants"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["identity"].as_str().unwrap().to_string())
        .collect();
    assert!(
        others.contains(&"alice".to_string()),
        "alice is still in the room: {others:?}"
    );

    let mut back = Client::connect(&server).await;
    back.received = received;
    back.send(json!({"type":"resume","id":"x","token":token,"received":received}))
        .await;
    let mut kinds = Vec::new();
    let resumed = loop {
        let m = back.recv().await;
        if m["request_id"] == "x" {
            break m;
        }
        kinds.push(m["type"].as_str().unwrap().to_string());
        if m["type"] == "chat" {
            assert_eq!(m["message"]["text"], "while you were away");
        }
    };
    assert_eq!(resumed["type"], "resumed", "{resumed}");
    assert_eq!(kinds, ["chat", "typing", "participant_joined"]);
    assert_eq!(resumed["replayed"], 3);
    assert_eq!(back.received, received + 4, "three replayed and resumed");
    let new_token = resumed["resume_token"].as_str().unwrap().to_string();
    assert_ne!(new_token, token);
    assert_eq!(
        common::metric(&server, r#"sfu_signal_resumes_total{outcome="resumed"}"#).await,
        Some(1.0)
    );

    // The same session: alice's chat reaches bob from the sid she joined with, and bob never
    // saw her leave.
    back.request(json!({"type":"chat","text":"back"})).await;
    loop {
        let m = bob.recv().await;
        assert_ne!(m["type"], "participant_left", "bob saw a leave: {m}");
        if m["type"] == "chat" && m["message"]["text"] == "back" {
            assert_eq!(m["message"]["sender"]["identity"], "alice");
            break;
        }
    }

    // A token works once.
    let mut again = Client::connect(&server).await;
    let refused = again
        .request(json!({"type":"resume","token":token,"received":0}))
        .await;
    assert_eq!(refused["code"], "resume_failed", "{refused}");

    // The new token takes the session over even while its socket is alive (the client saw a
    // dead network first); the old socket is dropped.
    let received = back.received;
    let mut third = Client::connect(&server).await;
    let resumed = third
        .request(json!({"type":"resume","token":new_token,"received":received}))
        .await;
    assert_eq!(resumed["type"], "resumed", "{resumed}");
    assert_eq!(resumed["replayed"], 0);
    assert!(
        back.try_recv(common::WAIT).await.is_none(),
        "the old socket is closed"
    );
    assert_eq!(common::metric(&server, "sfu_participants").await, Some(3.0));
    server.shutdown().await;
}

/// `identity` joins, its socket dies and a resume claiming `received` messages is refused:
/// `bob`, in the room, sees it leave at once. Returns the refusal.
async fn refused_resume(
    server: &sfu::http::Server,
    bob: &mut Client,
    identity: &str,
    received: u64,
) -> Value {
    let (client, token) = join_resumable(server, "r", identity).await;
    bob.recv_type("participant_joined").await;
    client.drop_hard();
    let mut back = Client::connect(server).await;
    let refused = back
        .request(json!({"type":"resume","token":token,"received":received}))
        .await;
    assert_eq!(refused["code"], "resume_failed", "{refused}");
    let left = bob.recv_type("participant_left").await;
    assert_eq!(left["identity"], identity);
    refused
}

#[tokio::test]
async fn sessions_that_cannot_be_resumed_leave() {
    let server = common::start(|c| c.signal.resume_window = Duration::from_secs(20)).await;
    let (mut bob, _) = Client::join(&server, "r", "bob").await;

    // Claiming more messages than were sent: refused, and the participant leaves at once
    // (not at the end of the window).
    refused_resume(&server, &mut bob, "dave", 99).await;

    // Claiming to have received nothing, not even `joined` (which carried the token): the
    // log numbers `joined` but does not keep its text, so there is nothing to replay.
    let refused = refused_resume(&server, &mut bob, "frank", 0).await;
    assert!(
        refused["message"]
            .as_str()
            .is_some_and(|m| m.contains("never replayed")),
        "{refused}"
    );

    // A client that closes its socket means to leave: nobody waits for a resume.
    let (erin, _) = join_resumable(&server, "r", "erin").await;
    bob.recv_type("participant_joined").await;
    erin.close().await;
    let left = bob.recv_type("participant_left").await;
    assert_eq!(left["identity"], "erin");
    server.shutdown().await;
}

#[tokio::test]
async fn a_session_not_resumed_within_the_window_leaves() {
    let server = common::start(|c| c.signal.resume_window = Duration::from_secs(1)).await;
    let (mut bob, _) = Client::join(&server, "r", "bob").await;
    let (alice, joined) = Client::join(&server, "r", "alice").await;
    let token = joined["resume_token"].as_str().unwrap().to_string();
    bob.recv_type("participant_joined").await;
    alice.drop_hard();
    let left = bob.recv_type("participant_left").await;
    assert_eq!(
        (left["identity"].clone(), left["reason"].clone()),
        (json!("alice"), json!("disconnected"))
    );
    assert_eq!(
        common::metric(&server, r#"sfu_signal_resumes_total{outcome="expired"}"#).await,
        Some(1.0)
    );
    let mut late = Client::connect(&server).await;
    let refused = late
        .request(json!({"type":"resume","token":token,"received":1}))
        .await;
    assert_eq!(refused["code"], "resume_failed", "{refused}");
    server.shutdown().await;
}
