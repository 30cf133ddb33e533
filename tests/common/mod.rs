//! Shared helpers for integration tests: an in-process server on a free port and a WebSocket
//! signaling client that speaks the JSON protocol.
#![allow(dead_code)]

pub mod media;
pub mod relay;

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use sfu::auth::{Auth, Grants};
use sfu::config::Config;
use sfu::http::Server;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// How long a test waits for a message it expects before failing.
pub const WAIT: Duration = Duration::from_secs(5);

/// A dev-mode config on free ports, changed by `tweak`.
pub fn config(tweak: impl FnOnce(&mut Config)) -> Config {
    let mut config = Config::load(None, std::iter::empty(), true).expect("dev config");
    config.http.bind = [127, 0, 0, 1].into();
    config.http.port = 0;
    config.rtc.bind = [127, 0, 0, 1].into();
    config.rtc.udp_port = 0;
    config.rtc.tcp_port = 0;
    config.turn.udp_port = 0;
    config.rtc.public_ips = vec![[127, 0, 0, 1].into()];
    // A dropped socket is a leave, as most tests expect; the resume tests turn resume on.
    config.signal.resume_window = Duration::ZERO;
    // No CPU budget: a busy test machine must not refuse a test's joins (tests/load.rs tests
    // the budget on its own).
    config.rtc.max_worker_load = 1.0;
    tweak(&mut config);
    config.validate().expect("test config is valid");
    config
}

pub async fn start(tweak: impl FnOnce(&mut Config)) -> Server {
    Server::start(config(tweak)).await.expect("server starts")
}

pub fn auth(server: &Server) -> Auth {
    Auth::new(&server.state.config.auth)
}

pub fn token(server: &Server, room: &str, identity: &str) -> String {
    token_with(server, room, identity, Grants::default())
}

pub fn token_with(server: &Server, room: &str, identity: &str, grants: Grants) -> String {
    auth(server)
        .participant_token(
            room,
            identity,
            Some(&identity.to_uppercase()),
            grants,
            Duration::from_secs(600),
        )
        .expect("token")
}

pub fn admin_token(server: &Server) -> String {
    auth(server)
        .admin_token(Duration::from_secs(600))
        .expect("admin token")
}

pub fn http_url(server: &Server, path: &str) -> String {
    format!("http://{}{}", server.local_addr, path)
}

/// A signaling client over a real WebSocket.
pub struct Client {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    next_id: u32,
    /// Messages received since (and including) the last `joined`: what a `resume` presents.
    pub received: u64,
}

/// How a connection ended, as the client saw it.
#[derive(Debug, PartialEq)]
pub enum Closed {
    Code(u16),
    NoFrame,
}

impl Client {
    pub async fn connect(server: &Server) -> Self {
        Self::connect_url(&format!("ws://{}/ws", server.local_addr)).await
    }

    pub async fn connect_url(url: &str) -> Self {
        let (ws, _) = tokio_tungstenite::connect_async(url)
            .await
            .expect("websocket connects");
        Self {
            ws,
            next_id: 0,
            received: 0,
        }
    }

    /// Connects with a 4 KiB socket receive buffer: once this client stops reading, the
    /// server's writes to it stall within a few frames.
    pub async fn connect_small_buffer(server: &Server) -> Self {
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket.set_recv_buffer_size(4096).expect("receive buffer");
        let stream = socket
            .connect(server.local_addr)
            .await
            .expect("tcp connects");
        let url = format!("ws://{}/ws", server.local_addr);
        let (ws, _) =
            tokio_tungstenite::client_async(url, tokio_tungstenite::MaybeTlsStream::Plain(stream))
                .await
                .expect("websocket connects");
        Self {
            ws,
            next_id: 0,
            received: 0,
        }
    }

    /// Connects and joins `room` as `identity`; returns the client and its `joined` message.
    pub async fn join(server: &Server, room: &str, identity: &str) -> (Self, Value) {
        let mut c = Self::connect(server).await;
        let joined = c
            .request(json!({"type":"join","token":token(server, room, identity)}))
            .await;
        assert_eq!(joined["type"], "joined", "join failed: {joined}");
        (c, joined)
    }

    pub async fn send_text(&mut self, text: String) {
        self.ws
            .send(Message::Text(text.into()))
            .await
            .expect("send");
    }

    /// Sends a raw data frame: `opcode` 1 is text, 3–7 are reserved.
    pub async fn send_frame(&mut self, opcode: u8, payload: Vec<u8>) {
        use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
        use tokio_tungstenite::tungstenite::protocol::frame::Frame;
        let data = match opcode {
            1 => Data::Text,
            2 => Data::Binary,
            n => Data::Reserved(n),
        };
        let frame = Frame::message(payload, OpCode::Data(data), true);
        let _ = self.ws.send(Message::Frame(frame)).await;
    }

    pub async fn send(&mut self, value: Value) {
        self.send_text(value.to_string()).await;
    }

    /// Sends `value` with a fresh id and returns the answer carrying that id; events that
    /// arrive meanwhile are skipped.
    pub async fn request(&mut self, mut value: Value) -> Value {
        self.next_id += 1;
        let id = format!("r{}", self.next_id);
        value["id"] = json!(id);
        self.send(value).await;
        loop {
            let m = self.recv().await;
            if m["request_id"] == json!(id) {
                return m;
            }
        }
    }

    /// The next JSON message, or a panic after `WAIT`.
    pub async fn recv(&mut self) -> Value {
        self.try_recv(WAIT).await.expect("a message in time")
    }

    /// The next JSON message within `wait`, None if none came or the socket closed.
    pub async fn try_recv(&mut self, wait: Duration) -> Option<Value> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let frame = tokio::time::timeout_at(deadline, self.ws.next())
                .await
                .ok()??;
            match frame {
                Ok(Message::Text(t)) => {
                    let message: Value = serde_json::from_str(&t).expect("server sends JSON");
                    if message["type"] == "joined" {
                        self.received = 0;
                    }
                    self.received += 1;
                    return Some(message);
                }
                Ok(Message::Close(_)) | Err(_) => return None,
                Ok(_) => continue,
            }
        }
    }

    /// Waits for the next message of `kind`, skipping others.
    pub async fn recv_type(&mut self, kind: &str) -> Value {
        loop {
            let m = self.recv().await;
            if m["type"] == kind {
                return m;
            }
        }
    }

    /// Reads until the server closes; returns the close code.
    pub async fn closed(&mut self) -> Closed {
        loop {
            match tokio::time::timeout(WAIT, self.ws.next())
                .await
                .expect("closed in time")
            {
                Some(Ok(Message::Close(Some(frame)))) => {
                    return Closed::Code(u16::from(frame.code))
                }
                Some(Ok(Message::Close(None))) | None | Some(Err(_)) => return Closed::NoFrame,
                Some(Ok(_)) => continue,
            }
        }
    }

    pub async fn close(mut self) {
        let _ = self.ws.close(None).await;
    }

    /// Drops the TCP connection without a close frame, like a crashed client.
    pub fn drop_hard(self) {
        drop(self.ws);
    }
}

pub fn close_code_too_big() -> u16 {
    u16::from(CloseCode::Size)
}

/// Reads a metric's value (first sample with that exact name and labels) from /metrics.
pub async fn metric(server: &Server, series: &str) -> Option<f64> {
    sample(&scrape(server).await?, series)
}

/// How many of the peers' str0m timers for `reason` (`stats`, `pacer`, `bwe`...) have fired.
pub async fn peer_timeouts(server: &Server, reason: &str) -> f64 {
    let series = format!("sfu_peer_timeouts_total{{reason=\"{reason}\"}}");
    metric(server, &series).await.unwrap_or(0.0)
}

/// All the peers' str0m timers handled, whatever asked for them.
pub async fn all_peer_timeouts(server: &Server) -> f64 {
    let text = scrape(server).await.unwrap_or_default();
    text.lines()
        .filter(|l| l.starts_with("sfu_peer_timeouts_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// The peers' routine timers handled (statistics, RTCP reports, ICE, SCTP): a few a second
/// per connection whether media flows or not, a clock to measure the others by.
pub async fn routine_peer_timeouts(server: &Server) -> f64 {
    let mut sum = 0.0;
    for reason in ["stats", "feedback", "ice", "sctp"] {
        sum += peer_timeouts(server, reason).await;
    }
    sum
}

/// Waits (up to 20 s) until the count `read` gives has grown by `n` from what it reads now,
/// e.g. `grows_by(|| routine_peer_timeouts(&server), 9.0)`.
pub async fn grows_by<F, Fut>(mut read: F, n: f64) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = f64>,
{
    let start = read().await;
    eventually_within(Duration::from_secs(20), || {
        let count = read();
        async move { count.await >= start + n }
    })
    .await
}

/// How often the media workers woke for `cause` (`timers`, `socket`, `housekeeping`...).
pub async fn worker_wakeups(server: &Server, cause: &str) -> f64 {
    let series = format!("sfu_worker_wakeups_total{{cause=\"{cause}\"}}");
    metric(server, &series).await.unwrap_or(0.0)
}

/// The server's /metrics text, for reading several samples taken at one moment.
pub async fn scrape(server: &Server) -> Option<String> {
    reqwest::get(http_url(server, "/metrics"))
        .await
        .ok()?
        .text()
        .await
        .ok()
}

/// The value of a sample (exact name and labels) in a /metrics text.
pub fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        let (name, value) = l.rsplit_once(' ')?;
        (name == series).then(|| value.parse().ok())?
    })
}

/// Polls `check` until it holds or `WAIT` passes.
pub async fn eventually<F, Fut>(check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    eventually_within(WAIT, check).await
}

/// Polls `check` until it holds or `limit` passes.
pub async fn eventually_within<F, Fut>(limit: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + limit;
    while tokio::time::Instant::now() < deadline {
        if check().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

/// A small `sfu load` run against `server`: 2 publishers (one 500 kbit/s VP8 layer and audio),
/// 4 subscribers, 3 s of media, no progress line. Tests change what they need.
pub fn load_options(server: &Server, room: &str) -> sfu_load::LoadOptions {
    let auth = &server.state.config.auth;
    sfu_load::LoadOptions {
        url: format!("ws://{}", server.local_addr),
        room: room.into(),
        publishers: 2,
        subscribers: 4,
        publishers_subscribe: false,
        duration: Duration::from_secs(3),
        video_bitrate_bps: 500_000,
        simulcast: false,
        audio_only: false,
        feedback: true,
        idle: false,
        join_interval: Duration::from_millis(10),
        bind: [127, 0, 0, 1].into(),
        api_key: auth.api_key.clone(),
        api_secret: auth.api_secret.clone(),
        server_pid: Some(std::process::id()),
        progress: false,
    }
}
