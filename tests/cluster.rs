//! Cluster mode against a real `redis-server` (started by each test on a free loopback port):
//! room placement and redirects between nodes, a full node naming another, draining (in-process
//! and by SIGTERM), a node killed with -9, and Redis restarting under a running cluster.

mod common;

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{admin_token, eventually_within, metric, token, Client};
use serde_json::{json, Value};
use sfu::cluster::placement;
use sfu::config::Config;
use sfu::http::Server;

const SFU: &str = env!("CARGO_BIN_EXE_sfu");
/// Short refresh and TTL so node loss shows within a test's patience.
const REFRESH: Duration = Duration::from_millis(200);
const NODE_TTL: Duration = Duration::from_secs(1);

/// A `redis-server` of the test's own, on a free loopback port, without persistence.
struct Redis {
    child: Child,
    port: u16,
}

impl Redis {
    async fn start() -> Self {
        Self::start_on(free_port()).await
    }

    async fn start_on(port: u16) -> Self {
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server runs (tests/run.sh installs Debian's redis-server)");
        let mut redis = Self { child, port };
        let listening = eventually_within(Duration::from_secs(10), || async {
            tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
        })
        .await;
        assert!(listening, "redis-server did not listen");
        // The port answered: it must be ours, not another test's Redis that took the port.
        assert!(
            matches!(redis.child.try_wait(), Ok(None)),
            "redis-server exited: port {port} is someone else's"
        );
        redis
    }

    /// A key's value, read by a client of the test's own.
    fn get(&self, key: &str) -> Option<String> {
        let mut connection = redis::Client::open(self.url())
            .ok()?
            .get_connection()
            .ok()?;
        redis::cmd("GET").arg(key).query(&mut connection).ok()?
    }

    /// Entries in a stream.
    fn stream_len(&self, key: &str) -> usize {
        let Some(mut connection) = redis::Client::open(self.url())
            .ok()
            .and_then(|c| c.get_connection().ok())
        else {
            return 0;
        };
        redis::cmd("XLEN")
            .arg(key)
            .query(&mut connection)
            .unwrap_or(0)
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    fn stop(mut self) -> u16 {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.port
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

fn cluster(config: &mut Config, redis: &Redis, node: &str) {
    config.cluster.redis_url = redis.url();
    config.cluster.node_id = node.into();
    config.cluster.refresh = REFRESH;
    config.cluster.node_ttl = NODE_TTL;
}

async fn node(redis: &Redis, id: &str, tweak: impl FnOnce(&mut Config)) -> Server {
    common::start(|c| {
        cluster(c, redis, id);
        tweak(c);
    })
    .await
}

fn signal_url(server: &Server) -> String {
    format!("ws://{}/ws", server.local_addr)
}

/// Waits until `server` has read `n` live nodes from Redis.
async fn sees_nodes(server: &Server, n: f64) -> bool {
    process_sees_nodes(server.local_addr.port(), n).await
}

/// Waits until the node serving HTTP on `port` has read `n` live nodes from Redis.
async fn process_sees_nodes(port: u16, n: f64) -> bool {
    eventually_within(Duration::from_secs(10), || async {
        let url = format!("http://127.0.0.1:{port}/metrics");
        let Ok(response) = reqwest::get(url).await else {
            return false;
        };
        let text = response.text().await.unwrap_or_default();
        common::sample(&text, "sfu_cluster_nodes") == Some(n)
    })
    .await
}

async fn join_at(url: &str, token: &str) -> (Client, Value) {
    let mut client = Client::connect_url(url).await;
    let answer = client.request(json!({"type":"join","token":token})).await;
    (client, answer)
}

/// `method path` on `server`'s admin API, with an admin token.
async fn admin(server: &Server, method: reqwest::Method, path: &str) -> reqwest::Response {
    reqwest::Client::new()
        .request(method, common::http_url(server, path))
        .bearer_auth(admin_token(server))
        .send()
        .await
        .expect("api answers")
}

/// `GET path` of `server`'s admin API, as JSON.
async fn admin_json(server: &Server, path: &str) -> Value {
    admin(server, reqwest::Method::GET, path)
        .await
        .json()
        .await
        .expect("json")
}

async fn nodes(server: &Server) -> Value {
    admin_json(server, "/api/nodes").await
}

#[tokio::test]
async fn a_join_on_any_node_is_sent_to_the_node_that_hosts_its_room() {
    let redis = Redis::start().await;
    let a = node(&redis, "node-a", |_| {}).await;
    let b = node(&redis, "node-b", |_| {}).await;
    assert!(sees_nodes(&b, 2.0).await, "b never saw both nodes");

    let (mut alice, joined) = join_at(&signal_url(&a), &token(&a, "standup", "alice")).await;
    assert_eq!(joined["type"], "joined", "{joined}");

    // Bob's load balancer sent him to b: b names a, where the room lives.
    let bob_token = token(&b, "standup", "bob");
    let (_, refused) = join_at(&signal_url(&b), &bob_token).await;
    assert_eq!(refused["code"], "room_on_other_node", "{refused}");
    assert_eq!(refused["url"], json!(signal_url(&a)), "{refused}");
    let (mut bob, joined) = join_at(refused["url"].as_str().unwrap(), &bob_token).await;
    assert_eq!(joined["type"], "joined", "{joined}");
    assert_eq!(joined["participants"][0]["identity"], "alice", "{joined}");
    alice.recv_type("participant_joined").await;
    bob.request(json!({"type":"chat","text":"hi"})).await;
    assert_eq!(alice.recv_type("chat").await["message"]["text"], "hi");
    assert_eq!(
        metric(
            &b,
            "sfu_cluster_redirects_total{reason=\"room_on_other_node\"}"
        )
        .await,
        Some(1.0)
    );

    // Another room started on b stays on b.
    let (_carol, joined) = join_at(&signal_url(&b), &token(&b, "retro", "carol")).await;
    assert_eq!(joined["type"], "joined", "{joined}");

    // The admin API of any node lists every node's rooms, shows and kicks in any of them.
    let listed = admin_json(&b, "/api/rooms").await;
    let rooms: Vec<(String, String, u64)> = listed["rooms"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|r| {
            (
                r["name"].as_str().unwrap_or("").into(),
                r["node"].as_str().unwrap_or("").into(),
                r["participants"].as_u64().unwrap_or(0),
            )
        })
        .collect();
    assert_eq!(
        rooms,
        vec![
            ("retro".into(), "node-b".into(), 1),
            ("standup".into(), "node-a".into(), 2)
        ],
        "{listed}"
    );
    let detail = admin_json(&b, "/api/rooms/standup").await;
    assert_eq!(detail["node"], "node-a", "{detail}");
    assert_eq!(detail["participants"].as_array().map(Vec::len), Some(2));
    let kicked = admin(
        &b,
        reqwest::Method::DELETE,
        "/api/rooms/standup/participants/bob",
    )
    .await;
    assert_eq!(kicked.status(), 204);
    assert_eq!(bob.recv_type("leave").await["reason"], "kicked");
    let missing = admin(&b, reqwest::Method::GET, "/api/rooms/nowhere").await;
    assert_eq!(missing.status(), 404);

    // The admin API of either node lists both, with their load.
    assert!(
        eventually_within(Duration::from_secs(10), || async {
            let listed = nodes(&b).await;
            let of = |id: &str| {
                listed["nodes"]
                    .as_array()
                    .and_then(|n| n.iter().find(|n| n["id"] == id).cloned())
                    .unwrap_or_default()
            };
            listed["cluster"] == true
                && of("node-a")["participants"] == 1
                && of("node-b")["participants"] == 1
                && of("node-a")["signal_url"] == json!(signal_url(&a))
        })
        .await,
        "nodes as listed: {}",
        nodes(&b).await
    );
}

#[tokio::test]
async fn a_full_node_names_a_less_loaded_node_and_keeps_serving_its_rooms() {
    let redis = Redis::start().await;
    let a = node(&redis, "node-a", |c| c.room.max_total_participants = 2).await;
    let b = node(&redis, "node-b", |_| {}).await;
    assert!(sees_nodes(&a, 2.0).await, "a never saw b");

    let (_alice, joined) = join_at(&signal_url(&a), &token(&a, "one", "alice")).await;
    assert_eq!(joined["type"], "joined");
    let (_bob, joined) = join_at(&signal_url(&a), &token(&a, "one", "bob")).await;
    assert_eq!(joined["type"], "joined");

    // A new room on a full node: it names b.
    let dave_token = token(&a, "two", "dave");
    let (_, refused) = join_at(&signal_url(&a), &dave_token).await;
    assert_eq!(refused["code"], "node_full", "{refused}");
    assert_eq!(refused["url"], json!(signal_url(&b)), "{refused}");
    let (_dave, joined) = join_at(refused["url"].as_str().unwrap(), &dave_token).await;
    assert_eq!(joined["type"], "joined", "{joined}");
    // The refused join let go of the room: it lives on b now.
    let (_, refused) = join_at(&signal_url(&a), &token(&a, "two", "erin")).await;
    assert_eq!(refused["code"], "room_on_other_node", "{refused}");
    assert_eq!(refused["url"], json!(signal_url(&b)));

    // A room a full node hosts cannot move: a join for it is plainly refused.
    let (_, refused) = join_at(&signal_url(&a), &token(&a, "one", "frank")).await;
    assert_eq!(refused["code"], "server_full", "{refused}");
    assert!(refused.get("url").is_none(), "{refused}");
}

#[tokio::test]
async fn a_draining_node_sends_its_clients_and_new_joins_to_another_node() {
    let redis = Redis::start().await;
    let a = node(&redis, "node-a", |c| {
        c.cluster.drain_timeout = Duration::from_secs(20);
    })
    .await;
    let b = node(&redis, "node-b", |_| {}).await;
    assert!(sees_nodes(&a, 2.0).await, "a never saw b");
    let alice_token = token(&a, "standup", "alice");
    let (mut alice, joined) = join_at(&signal_url(&a), &alice_token).await;
    assert_eq!(joined["type"], "joined");
    alice
        .request(json!({"type":"chat","text":"before the move"}))
        .await;
    // Kept in Redis as it goes, not at the drain.
    assert!(
        eventually_within(Duration::from_secs(5), || async {
            redis.stream_len("sfu:chat:standup") == 1
        })
        .await
    );

    let health = |server: &Server| {
        let url = common::http_url(server, "/healthz");
        async move { reqwest::get(url).await.map(|r| r.status().as_u16()).ok() }
    };
    assert_eq!(health(&a).await, Some(200));
    let started = Instant::now();
    let moved = async {
        let leave = alice.recv_type("leave").await;
        assert_eq!(leave["reason"], "node_draining", "{leave}");
        assert_eq!(leave["url"], json!(signal_url(&b)), "{leave}");
        assert_eq!(
            health(&a).await,
            Some(503),
            "a draining node fails its health check"
        );
        let (_, refused) = join_at(&signal_url(&a), &token(&a, "fresh", "zoe")).await;
        assert_eq!(refused["code"], "node_draining", "{refused}");
        assert_eq!(refused["url"], json!(signal_url(&b)));
        // Alice moves: the room was let go, so b takes it.
        join_at(leave["url"].as_str().unwrap(), &alice_token).await
    };
    let ((), (_alice, joined)) = tokio::join!(a.drain(), moved);
    assert_eq!(joined["type"], "joined", "{joined}");
    assert_eq!(
        joined["chat_history"][0]["text"], "before the move",
        "the room's chat moved with it: {joined}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "drain waited for its timeout ({:?}) instead of the node emptying",
        started.elapsed()
    );
    assert_eq!(metric(&a, "sfu_cluster_draining").await, Some(1.0));
    a.shutdown().await;
    assert!(sees_nodes(&b, 1.0).await, "a stopped but b still lists it");
}

/// `sfu serve --dev` in cluster mode, as its own process; returns it and its HTTP port once
/// it sees `nodes` live nodes (itself included).
async fn spawn_node(redis: &Redis, id: &str, nodes: f64) -> (Child, u16) {
    let mut child = Command::new(SFU)
        .args(["serve", "--dev"])
        .envs([
            ("SFU_HTTP_PORT", "0"),
            ("SFU_HTTP_BIND", "127.0.0.1"),
            ("SFU_RTC_BIND", "127.0.0.1"),
            ("SFU_RTC_UDP_PORT", "0"),
            ("SFU_RTC_TCP_PORT", "0"),
            ("SFU_RTC_PUBLIC_IPS", "[\"127.0.0.1\"]"),
            ("SFU_TURN_ENABLED", "false"),
            ("SFU_CLUSTER_REDIS_URL", &redis.url()),
            ("SFU_CLUSTER_NODE_ID", id),
            ("SFU_CLUSTER_REFRESH", "200ms"),
            ("SFU_CLUSTER_NODE_TTL", "1s"),
            ("SFU_CLUSTER_DRAIN_TIMEOUT", "20s"),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("sfu starts");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut lines = BufReader::new(stdout).lines().map_while(Result::ok);
        let port = lines.by_ref().find_map(|l| {
            let rest = l.split("http://localhost:").nth(1)?;
            rest.split('/').next()?.parse::<u16>().ok()
        });
        let _ = tx.send(port);
        // Keep reading so the banner's pipe never fills.
        lines.for_each(drop);
    });
    // Waited for off the runtime: the in-process nodes must go on refreshing meanwhile.
    let port = tokio::task::spawn_blocking(move || rx.recv_timeout(Duration::from_secs(30)))
        .await
        .ok()
        .and_then(|r| r.ok())
        .flatten()
        .expect("the node prints its URL");
    assert!(
        process_sees_nodes(port, nodes).await,
        "node {id} never saw {nodes} nodes"
    );
    (child, port)
}

#[tokio::test]
async fn sigterm_drains_a_node_process_and_it_exits() {
    let redis = Redis::start().await;
    let b = node(&redis, "node-b", |_| {}).await;
    let (mut child, port) = spawn_node(&redis, "node-a", 2.0).await;
    assert!(sees_nodes(&b, 2.0).await, "b never saw the node process");
    let a_url = format!("ws://127.0.0.1:{port}/ws");
    let alice_token = token(&b, "standup", "alice");
    let (mut alice, joined) = join_at(&a_url, &alice_token).await;
    assert_eq!(joined["type"], "joined", "{joined}");

    let kill = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(kill.success());
    let leave = alice.recv_type("leave").await;
    assert_eq!(leave["reason"], "node_draining", "{leave}");
    assert_eq!(leave["url"], json!(signal_url(&b)), "{leave}");
    let (_alice, joined) = join_at(leave["url"].as_str().unwrap(), &alice_token).await;
    assert_eq!(joined["type"], "joined", "{joined}");
    let exit = tokio::task::spawn_blocking(move || child.wait())
        .await
        .expect("wait")
        .expect("exit status");
    assert!(exit.success(), "{exit:?}");
    assert!(sees_nodes(&b, 1.0).await);
}

#[tokio::test]
async fn a_node_killed_with_sigkill_is_forgotten_and_its_rooms_move() {
    let redis = Redis::start().await;
    let b = node(&redis, "node-b", |_| {}).await;
    let (mut child, port) = spawn_node(&redis, "node-a", 2.0).await;
    assert!(sees_nodes(&b, 2.0).await, "b never saw the node process");
    let a_url = format!("ws://127.0.0.1:{port}/ws");
    let (mut alice, joined) = join_at(&a_url, &token(&b, "standup", "alice")).await;
    assert_eq!(joined["type"], "joined", "{joined}");
    for text in ["one", "two", "three"] {
        let sent = alice.request(json!({"type":"chat","text":text})).await;
        assert_eq!(sent["type"], "chat", "{sent}");
    }
    let bob_token = token(&b, "standup", "bob");
    let (_, refused) = join_at(&signal_url(&b), &bob_token).await;
    assert_eq!(refused["code"], "room_on_other_node", "{refused}");

    // The node keeps its chat in Redis as it goes (not at exit, which a kill -9 skips).
    assert!(
        eventually_within(Duration::from_secs(5), || async {
            redis.stream_len("sfu:chat:standup") == 3
        })
        .await
    );
    child.kill().expect("kill -9");
    let killed = Instant::now();
    let _ = child.wait();
    // Within the TTL (plus a few seconds) b forgets a, and the room can be joined on b.
    assert!(
        sees_nodes(&b, 1.0).await,
        "b still lists the killed node: {}",
        nodes(&b).await
    );
    let (mut bob, joined) = join_at(&signal_url(&b), &bob_token).await;
    assert_eq!(joined["type"], "joined", "{joined}");
    // The chat of the dead node's room is all there, and numbering goes on.
    let history: Vec<(u64, String)> = joined["chat_history"]
        .as_array()
        .map(|h| {
            h.iter()
                .map(|m| {
                    (
                        m["id"].as_u64().unwrap_or(0),
                        m["text"].as_str().unwrap_or("").into(),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    assert_eq!(
        history,
        vec![(1, "one".into()), (2, "two".into()), (3, "three".into())]
    );
    let next = bob.request(json!({"type":"chat","text":"four"})).await;
    assert_eq!(next["message"]["id"], 4, "{next}");
    assert!(
        killed.elapsed() < NODE_TTL + Duration::from_secs(5),
        "took {:?}",
        killed.elapsed()
    );
}

#[tokio::test]
async fn nodes_go_on_while_redis_restarts_and_find_each_other_again() {
    let redis = Redis::start().await;
    let a = node(&redis, "node-a", |_| {}).await;
    let b = node(&redis, "node-b", |_| {}).await;
    assert!(sees_nodes(&a, 2.0).await);
    let (mut alice, _) = Client::join(&a, "standup", "alice").await;
    let (mut bob, _) = Client::join(&a, "standup", "bob").await;

    let port = redis.stop();
    assert!(
        eventually_within(Duration::from_secs(10), || async {
            metric(&a, "sfu_cluster_redis_errors_total")
                .await
                .unwrap_or(0.0)
                > 0.0
        })
        .await,
        "a never noticed redis was gone"
    );
    // The call goes on, and a new room is served where it is asked for.
    bob.request(json!({"type":"chat","text":"still here"}))
        .await;
    assert_eq!(
        alice.recv_type("chat").await["message"]["text"],
        "still here"
    );
    let (_, joined) = join_at(&signal_url(&b), &token(&b, "during", "carol")).await;
    assert_eq!(joined["type"], "joined", "{joined}");

    // Redis comes back empty: both nodes write themselves and their rooms again.
    let redis = Redis::start_on(port).await;
    assert!(
        eventually_within(Duration::from_secs(10), || async {
            redis.get("sfu:room:standup").as_deref() == Some("node-a")
                && redis.get("sfu:node:node-a").is_some()
                && redis.get("sfu:node:node-b").is_some()
        })
        .await,
        "the nodes did not write themselves and their rooms again"
    );
    let (_, refused) = join_at(&signal_url(&b), &token(&b, "standup", "dave")).await;
    assert_eq!(refused["code"], "room_on_other_node", "{refused}");
    assert_eq!(refused["url"], json!(signal_url(&a)));
}

#[tokio::test]
async fn a_room_that_closes_lets_go_of_its_node_and_its_chat() {
    let redis = Redis::start().await;
    let a = node(&redis, "node-a", |c| {
        c.room.empty_timeout = Duration::from_millis(100)
    })
    .await;
    let b = node(&redis, "node-b", |_| {}).await;
    assert!(sees_nodes(&b, 2.0).await);
    let (mut alice, _) = join_at(&signal_url(&a), &token(&a, "standup", "alice")).await;
    alice.request(json!({"type":"chat","text":"bye"})).await;
    assert!(
        eventually_within(Duration::from_secs(5), || async {
            redis.stream_len("sfu:chat:standup") == 1
        })
        .await
    );
    alice.close().await;
    assert!(
        eventually_within(Duration::from_secs(10), || async {
            redis.get("sfu:room:standup").is_none() && redis.stream_len("sfu:chat:standup") == 0
        })
        .await,
        "the closed room's placement ({:?}) or chat ({} messages) stayed in redis",
        redis.get("sfu:room:standup"),
        redis.stream_len("sfu:chat:standup")
    );
    // The next one to open it may be any node, and starts without the old chat.
    let (_, joined) = join_at(&signal_url(&b), &token(&b, "standup", "bob")).await;
    assert_eq!(joined["type"], "joined", "{joined}");
    assert_eq!(joined["chat_history"], json!([]), "{joined}");
}

#[tokio::test]
async fn a_chat_message_reaches_redis_only_while_its_node_holds_the_room() {
    // A message written after its room closed here (or moved) must not bring the room's chat
    // stream back: a later room of the same name would start with it.
    let redis = Redis::start().await;
    let client = redis::Client::open(redis.url()).expect("redis url");
    let mut connection = redis::aio::ConnectionManager::new(client)
        .await
        .expect("connects to the test's redis");
    let keep = |connection: &mut redis::aio::ConnectionManager, node: &'static str| {
        let mut connection = connection.clone();
        async move {
            placement::keep_chat(
                &mut connection,
                "late",
                node,
                r#"{"text":"hi"}"#,
                10,
                60_000,
            )
            .await
            .expect("the script runs")
        }
    };
    assert!(
        !keep(&mut connection, "node-a").await,
        "no one holds the room"
    );
    assert_eq!(redis.stream_len("sfu:chat:late"), 0);
    let held = placement::claim(&mut connection, "late", "node-a", 60_000)
        .await
        .expect("claim");
    assert_eq!(held, placement::Holder::Here);
    assert!(keep(&mut connection, "node-a").await);
    assert!(
        !keep(&mut connection, "node-b").await,
        "node-b does not hold it"
    );
    assert_eq!(redis.stream_len("sfu:chat:late"), 1);
    placement::close(&mut connection, &["late".to_string()], "node-a")
        .await
        .expect("close");
    assert!(!keep(&mut connection, "node-a").await, "the room closed");
    assert_eq!(redis.stream_len("sfu:chat:late"), 0);
}

/// The first `leave` any of `clients` receives within 15 s: (index, message).
async fn first_leave(clients: &mut [&mut Client]) -> Option<(usize, Value)> {
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        for (i, client) in clients.iter_mut().enumerate() {
            if let Some(m) = client.try_recv(Duration::from_millis(20)).await {
                if m["type"] == "leave" {
                    return Some((i, m));
                }
            }
        }
    }
    None
}

#[tokio::test]
async fn a_room_split_while_redis_was_down_is_made_whole_again() {
    let redis = Redis::start().await;
    let a = node(&redis, "node-a", |_| {}).await;
    let b = node(&redis, "node-b", |_| {}).await;
    assert!(sees_nodes(&a, 2.0).await);
    let alice_token = token(&a, "standup", "alice");
    let (mut alice, _) = join_at(&signal_url(&a), &alice_token).await;
    let port = redis.stop();
    // With no Redis to ask, b serves the join itself: the room is open on both nodes.
    let dave_token = token(&b, "standup", "dave");
    let (mut dave, joined) = join_at(&signal_url(&b), &dave_token).await;
    assert_eq!(joined["type"], "joined", "{joined}");
    assert_eq!(joined["participants"], json!([]), "b's half of the room");

    // Redis comes back empty; whichever node writes the room first keeps it, and the other
    // sends its participants there.
    let redis = Redis::start_on(port).await;
    let (moved, leave) = first_leave(&mut [&mut alice, &mut dave])
        .await
        .expect("neither half of the room was told to move");
    assert_eq!(leave["reason"], "room_moved", "{leave}");
    let (staying, token) = if moved == 0 {
        (&b, &alice_token)
    } else {
        (&a, &dave_token)
    };
    assert_eq!(leave["url"], json!(signal_url(staying)), "{leave}");
    let (_moved, joined) = join_at(leave["url"].as_str().unwrap(), token).await;
    assert_eq!(joined["type"], "joined", "{joined}");
    let (kept_by, stayed) = if moved == 0 {
        ("node-b", &mut dave)
    } else {
        ("node-a", &mut alice)
    };
    assert_eq!(redis.get("sfu:room:standup").as_deref(), Some(kept_by));
    // The half that stays is not sent anywhere (a few refreshes later still not).
    let quiet = stayed.try_recv(REFRESH * 4).await;
    assert!(
        quiet.as_ref().is_none_or(|m| m["type"] != "leave"),
        "the staying half was told to leave too: {quiet:?}"
    );
    let others: Vec<&str> = joined["participants"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| p["identity"].as_str())
        .collect();
    assert_eq!(
        others,
        vec![if moved == 0 { "dave" } else { "alice" }],
        "{joined}"
    );
}

#[tokio::test]
async fn sfu_load_publishers_on_one_node_and_subscribers_sent_to_another_meet() {
    let redis = Redis::start().await;
    let a = node(&redis, "node-a", |_| {}).await;
    let b = node(&redis, "node-b", |_| {}).await;
    assert!(sees_nodes(&b, 2.0).await);
    // One run publishes on a (the room opens there); another, subscribers only, is pointed
    // at b and waits there for the room's tracks.
    let mut publishers = common::load_options(&a, "webinar");
    publishers.subscribers = 0;
    // Long enough to outlast the wait below and the whole subscriber run on a slow machine.
    publishers.duration = Duration::from_secs(15);
    publishers.server_pid = None;
    let publishing = tokio::spawn(sfu_load::run(publishers));
    assert!(
        eventually_within(Duration::from_secs(10), || async {
            metric(&a, "sfu_publications{kind=\"video\"}").await == Some(2.0)
        })
        .await,
        "the publishers never published on a"
    );
    let mut subscribers = common::load_options(&b, "webinar");
    subscribers.publishers = 0;
    subscribers.server_pid = None;
    let report = sfu_load::run(subscribers).await.expect("load runs");
    let table = report.table();
    assert_eq!(report.joins_failed, 0, "{table}");
    assert_eq!(report.subscribers_without_packets, 0, "{table}");
    assert!(report.packets_received > 0, "{table}");
    assert!(report.loss_percent < 2.0, "{table}");
    // Every subscriber was sent on to a, and a carried the media.
    assert_eq!(
        metric(
            &b,
            "sfu_cluster_redirects_total{reason=\"room_on_other_node\"}"
        )
        .await,
        Some(report.subscribers as f64),
        "{table}"
    );
    assert_eq!(
        metric(&b, "sfu_rtp_packets_sent_total{kind=\"video\"}").await,
        Some(0.0)
    );
    let published = publishing.await.expect("task").expect("load runs");
    assert_eq!(published.joins_failed, 0, "{}", published.table());
}
