//! Config: every option of the server, its default, where it comes from and how it is checked.
//!
//! Sources, later ones win: the built-in defaults (the same values `config/sfu.toml` documents,
//! a test keeps the two in agreement), the TOML file given with `--config`, then `SFU_<SECTION>_<KEY>`
//! environment variables (`SFU_HTTP_PORT=8080`, `SFU_RTC_PUBLIC_IPS='["203.0.113.7"]'`).
//! Every error names the key it is about, so an operator can fix it from one line.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The API key used by `--dev`. Printed at start-up so a developer can mint tokens.
pub const DEV_API_KEY: &str = "devkey";
/// The API secret used by `--dev`. Public by design: dev mode is for a laptop, never for production.
pub const DEV_API_SECRET: &str = "devsecret-for-local-development-only";
/// The room the dev-mode demo page offers.
pub const DEV_ROOM: &str = "demo";
/// HS256 is only as strong as its secret; 32 bytes is the size of the hash itself.
pub const MIN_SECRET_BYTES: usize = 32;
/// The largest signaling frame a client may send. Bigger frames are closed with 1009.
pub const MAX_FRAME_BYTES_LIMIT: usize = 1024 * 1024;
/// Highest `signal.max_sdp_bytes` accepted.
pub const MAX_SDP_BYTES_LIMIT: usize = 16 * 1024 * 1024;
/// Environment variable prefix for overrides.
const ENV_PREFIX: &str = "SFU_";
/// Environment variables with the prefix that are not config keys (clap reads them).
const ENV_NOT_KEYS: &[&str] = &["SFU_CONFIG"];

/// A config that failed to load: the key it is about and what is wrong with it.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config file {path}: {message}")]
    File { path: PathBuf, message: String },
    #[error("config key {key}: {message}")]
    Key { key: String, message: String },
}

impl ConfigError {
    fn key(key: impl Into<String>, message: impl Into<String>) -> Self {
        Self::Key {
            key: key.into(),
            message: message.into(),
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub http: HttpConfig,
    pub rtc: RtcConfig,
    pub auth: AuthConfig,
    pub room: RoomConfig,
    pub chat: ChatConfig,
    pub signal: SignalConfig,
    pub turn: TurnConfig,
    pub log: LogConfig,
    pub cluster: ClusterConfig,
    /// Set by `--dev`, never read from a file: dev key/secret, the dev token endpoint.
    #[serde(skip)]
    pub dev: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Address the HTTP/WebSocket server listens on.
    pub bind: IpAddr,
    /// Port for HTTP, WebSocket signaling, /metrics and the web client.
    pub port: u16,
    /// PEM certificate chain; with `tls_key` the server speaks HTTPS and `wss://`.
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for `tls_cert`.
    pub tls_key: Option<PathBuf>,
    /// Most TCP connections open at once; one more is refused (503).
    pub max_connections: usize,
    /// Most TCP connections open at once from one IP address.
    pub max_connections_per_ip: usize,
    /// A client must send a request's headers within this time, and an idle keep-alive
    /// connection is closed after it.
    #[serde(with = "humantime_serde")]
    pub header_timeout: Duration,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RtcConfig {
    /// Address the media UDP sockets bind to.
    pub bind: IpAddr,
    /// First UDP port for media; media worker N listens on `udp_port + N`.
    pub udp_port: u16,
    /// Media workers; 0 means one per CPU core.
    pub workers: usize,
    /// Addresses advertised to clients as ICE host candidates (public IPs behind NAT).
    /// Empty: the bind address if it is specific, else the machine's first non-loopback address.
    pub public_ips: Vec<IpAddr>,
    /// Subscribe every participant to every publication in its room automatically.
    pub auto_subscribe: bool,
    /// How long a peer connection may take to connect (ICE and DTLS) after its offer and
    /// answer are both set; past it the client gets `media_failed` with the cause.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Also take media over TCP (ICE-TCP, passive candidates of lower priority than UDP), for
    /// clients whose UDP is blocked.
    pub ice_tcp: bool,
    /// First TCP port for ICE-TCP; media worker N listens on `tcp_port + N` (0: any free port).
    pub tcp_port: u16,
    /// A media worker busier than this (the fraction of its time spent working, smoothed over
    /// a few seconds) takes no new participant: joins of its rooms get `server_full`, new rooms
    /// go to another worker. 1 turns the budget off.
    pub max_worker_load: f64,
    /// A room with this many participants spreads over the media workers: newcomers go to the
    /// least-loaded worker, and each publication crosses to every worker with subscribers of
    /// it once. Smaller rooms stay on one worker (no crossing). 0: rooms never spread.
    pub spread_rooms_at: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// Identifies the key pair; tokens carry it as `iss`.
    pub api_key: String,
    /// Signs and verifies access tokens (HS256). At least 32 bytes.
    pub api_secret: String,
    /// Longest a token may be valid: one whose expiry is further from now is refused, so a
    /// leaked token cannot be used for ever.
    #[serde(with = "humantime_serde")]
    pub max_token_ttl: Duration,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            api_key: String::new(),
            api_secret: String::new(),
            max_token_ttl: Duration::from_secs(24 * 3600),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RoomConfig {
    /// Most rooms open at once on this server.
    pub max_rooms: usize,
    /// Most participants in one room.
    pub max_participants: usize,
    /// Most participants in all rooms together: the server's budget. Past it joins get
    /// `server_full` and the calls in progress keep what they have.
    pub max_total_participants: usize,
    /// How long an empty room (and its chat history) is kept before it closes.
    #[serde(with = "humantime_serde")]
    pub empty_timeout: Duration,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ChatConfig {
    /// Largest chat message text, in bytes of UTF-8.
    pub max_message_bytes: usize,
    /// Messages kept per room and sent to each participant on join.
    pub history: usize,
    /// At most this many bytes of chat text go to a joiner (the newest messages that fit).
    pub history_max_bytes: usize,
    /// Sustained chat messages per second per identity in a room (rejoining does not reset it).
    pub rate_per_second: f64,
    /// Chat messages an identity may send in a burst above the sustained rate.
    pub burst: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SignalConfig {
    /// Largest WebSocket message a client may send; bigger ones close the socket with 1009.
    pub max_frame_bytes: usize,
    /// Largest `offer` or `answer` message: SDP grows with every track of a meeting (about
    /// 2 KiB per m-line), and a 20-person meeting's answer passes 64 KiB.
    pub max_sdp_bytes: usize,
    /// A client must send `join` within this time after connecting.
    #[serde(with = "humantime_serde")]
    pub join_timeout: Duration,
    /// The server pings every client this often.
    #[serde(with = "humantime_serde")]
    pub ping_interval: Duration,
    /// A client silent for this long (no message, no pong) is disconnected.
    #[serde(with = "humantime_serde")]
    pub ping_timeout: Duration,
    /// A client that does not take a message within this long (it stopped reading) is
    /// disconnected.
    #[serde(with = "humantime_serde")]
    pub write_timeout: Duration,
    /// Sustained signaling messages per second per client, all kinds together.
    pub rate_per_second: f64,
    /// Signaling messages a client may send in a burst above the sustained rate.
    pub burst: u32,
    /// A participant whose socket drops is kept this long, waiting for the client's `resume`.
    /// Zero turns resume off: a drop is a leave.
    #[serde(with = "humantime_serde")]
    pub resume_window: Duration,
}

/// The embedded TURN server (`src/turn_server.rs`), and other ICE servers clients are given.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TurnConfig {
    /// Run the embedded TURN server (UDP). Off by default; on with `--dev` unless set.
    pub enabled: bool,
    /// Its UDP port (0: any free port).
    pub udp_port: u16,
    /// Its TURN-over-TLS port (0: any free port), served when it has a certificate:
    /// `turn.tls_cert`/`tls_key`, else `http.tls_cert`/`tls_key`.
    pub tls_port: u16,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// The name in its certificate, for `turns:` URLs (else the first advertised address).
    pub domain: Option<String>,
    /// The ports relayed addresses are taken from, inclusive.
    pub relay_port_min: u16,
    pub relay_port_max: u16,
    /// Signs the per-participant credentials (TURN REST: HMAC-SHA1). Empty: derived from
    /// `auth.api_secret`. Set the same one in coturn (`static-auth-secret`) to use both.
    pub secret: String,
    /// How long a participant's TURN credential is valid.
    #[serde(with = "humantime_serde")]
    pub credential_ttl: Duration,
    /// Allocations one credential (participant) may hold at once, and all together.
    pub max_allocations_per_user: usize,
    pub max_allocations: usize,
    /// Bits per second one allocation may relay each way; past it datagrams are dropped.
    pub max_bitrate: u64,
    /// More ICE servers for clients (an operator's STUN or coturn), given in `joined`.
    pub ice_servers: Vec<IceServerConfig>,
}

/// Cluster mode (`src/cluster`): nodes that share room placement and load through Redis.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterConfig {
    /// `redis://host:port/db` of the cluster's Redis. Empty: a single node, nothing shared.
    pub redis_url: String,
    /// This node's name in the cluster. Empty: generated at start-up (`node-` and random hex).
    pub node_id: String,
    /// How clients and the other nodes reach this node's HTTP/WebSocket server, e.g.
    /// `https://sfu-3.example.com` (a refused join names it as `wss://sfu-3.example.com/ws`).
    /// Empty: `http(s)://<http.bind, or 127.0.0.1 for a wildcard>:<http.port>` (https with
    /// `http.tls_cert`).
    pub advertise_url: String,
    /// How often the node writes its load and refreshes its rooms in Redis.
    #[serde(with = "humantime_serde")]
    pub refresh: Duration,
    /// How long a node's entry (and its rooms' placement) lives in Redis without a refresh: a
    /// node that died is forgotten, and its rooms can move, this long after its last write.
    #[serde(with = "humantime_serde")]
    pub node_ttl: Duration,
    /// After SIGTERM, how long a draining node waits for its participants to move before it
    /// exits anyway. Keep it under the orchestrator's grace period (Kubernetes: 30 s).
    #[serde(with = "humantime_serde")]
    pub drain_timeout: Duration,
}

impl ClusterConfig {
    /// Whether the node is part of a cluster.
    pub fn enabled(&self) -> bool {
        !self.redis_url.is_empty()
    }

    fn validate(&self) -> Result<(), ConfigError> {
        if !self.enabled() {
            return Ok(());
        }
        if let Err(e) = redis::Client::open(self.redis_url.as_str()) {
            return Err(ConfigError::key("cluster.redis_url", e.to_string()));
        }
        let url = &self.advertise_url;
        if !(url.is_empty() || url.starts_with("http://") || url.starts_with("https://")) {
            return Err(ConfigError::key(
                "cluster.advertise_url",
                "must be an http:// or https:// URL",
            ));
        }
        if self.refresh.is_zero() {
            return Err(ConfigError::key("cluster.refresh", "must be above 0"));
        }
        if self.node_ttl < self.refresh * 2 {
            return Err(ConfigError::key(
                "cluster.node_ttl",
                "must be at least twice cluster.refresh (a late refresh must not lose the node)",
            ));
        }
        Ok(())
    }
}

impl Default for ClusterConfig {
    fn default() -> Self {
        Self {
            redis_url: String::new(),
            node_id: String::new(),
            advertise_url: String::new(),
            refresh: Duration::from_secs(2),
            node_ttl: Duration::from_secs(10),
            drain_timeout: Duration::from_secs(25),
        }
    }
}

/// An ICE server from the config, passed to clients as it is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IceServerConfig {
    pub urls: Vec<String>,
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub credential: Option<String>,
}

impl Default for TurnConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            udp_port: 3478,
            tls_port: 5349,
            tls_cert: None,
            tls_key: None,
            domain: None,
            relay_port_min: 40000,
            relay_port_max: 40999,
            secret: String::new(),
            credential_ttl: Duration::from_secs(12 * 3600),
            max_allocations_per_user: 8,
            max_allocations: 2000,
            max_bitrate: 10_000_000,
            ice_servers: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// A tracing filter: `info`, `debug`, `sfu=debug,str0m=warn`. `RUST_LOG` overrides it.
    pub level: String,
    /// `text` for people, `json` for log pipelines.
    pub format: LogFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            bind: IpAddr::from([0, 0, 0, 0]),
            port: 7880,
            tls_cert: None,
            tls_key: None,
            max_connections: 20_000,
            max_connections_per_ip: 500,
            header_timeout: Duration::from_secs(10),
        }
    }
}

impl Default for RtcConfig {
    fn default() -> Self {
        Self {
            bind: IpAddr::from([0, 0, 0, 0]),
            udp_port: 7882,
            workers: 0,
            public_ips: Vec::new(),
            auto_subscribe: true,
            connect_timeout: Duration::from_secs(20),
            ice_tcp: true,
            tcp_port: 7881,
            max_worker_load: 0.9,
            spread_rooms_at: 50,
        }
    }
}

impl Default for RoomConfig {
    fn default() -> Self {
        Self {
            max_rooms: 1000,
            max_participants: 100,
            max_total_participants: 10_000,
            empty_timeout: Duration::from_secs(30),
        }
    }
}

impl Default for ChatConfig {
    fn default() -> Self {
        Self {
            max_message_bytes: 4096,
            history: 100,
            history_max_bytes: 65536,
            rate_per_second: 2.0,
            burst: 10,
        }
    }
}

impl Default for SignalConfig {
    fn default() -> Self {
        Self {
            max_frame_bytes: 64 * 1024,
            max_sdp_bytes: 1024 * 1024,
            join_timeout: Duration::from_secs(10),
            ping_interval: Duration::from_secs(10),
            ping_timeout: Duration::from_secs(30),
            write_timeout: Duration::from_secs(10),
            rate_per_second: 50.0,
            burst: 200,
            resume_window: Duration::from_secs(20),
        }
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            level: "info".into(),
            format: LogFormat::Text,
        }
    }
}

impl Config {
    /// The certificate and key TURN over TLS serves with, if any.
    pub fn turn_tls(&self) -> Option<(&Path, &Path)> {
        match (&self.turn.tls_cert, &self.turn.tls_key) {
            (Some(c), Some(k)) => Some((c, k)),
            _ => match (&self.http.tls_cert, &self.http.tls_key) {
                (Some(c), Some(k)) => Some((c, k)),
                _ => None,
            },
        }
    }

    /// Loads the config as `sfu serve` does: defaults, then the file, then the environment.
    pub fn load(
        path: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
        dev: bool,
    ) -> Result<Self, ConfigError> {
        let mut table = match path {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|e| ConfigError::File {
                    path: path.to_owned(),
                    message: e.to_string(),
                })?;
                text.parse::<toml::Table>().map_err(|e| ConfigError::File {
                    path: path.to_owned(),
                    message: e.message().to_string(),
                })?
            }
            None => toml::Table::new(),
        };
        apply_env(&mut table, env)?;
        let bind_chosen = table
            .get("http")
            .and_then(|http| http.get("bind"))
            .is_some();
        let turn_chosen = table
            .get("turn")
            .and_then(|turn| turn.get("enabled"))
            .is_some();
        let mut config = Self::from_table(table)?;
        config.dev = dev;
        if dev {
            // Dev mode prints its secret and hands out tokens to anyone at /api/dev/token: it
            // signs with the public dev secret only, never one from the file or environment,
            // and listens on loopback unless told where.
            config.auth.api_key = DEV_API_KEY.into();
            config.auth.api_secret = DEV_API_SECRET.into();
            if !bind_chosen {
                config.http.bind = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);
            }
            if !turn_chosen {
                config.turn.enabled = true;
            }
        }
        config.validate()?;
        Ok(config)
    }

    /// Parses a TOML document into a config, without validation.
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        let table = text.parse::<toml::Table>().map_err(|e| ConfigError::File {
            path: PathBuf::from("<toml>"),
            message: e.message().to_string(),
        })?;
        Self::from_table(table)
    }

    fn from_table(table: toml::Table) -> Result<Self, ConfigError> {
        serde_path_to_error::deserialize(toml::Value::Table(table)).map_err(|e| {
            let key = e.path().to_string();
            let message = e.into_inner().to_string();
            // serde reports an unknown key one level up; name the key itself.
            match message.strip_prefix("unknown field `") {
                Some(rest) => {
                    let field = rest.split('`').next().unwrap_or_default();
                    let full = if key == "." {
                        field.to_string()
                    } else {
                        format!("{key}.{field}")
                    };
                    ConfigError::key(full, "unknown key")
                }
                None => ConfigError::key(key, message),
            }
        })
    }

    /// Checks what types cannot: ranges, pairs of options, secrets.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.http.tls_cert.is_some() != self.http.tls_key.is_some() {
            let missing = if self.http.tls_cert.is_some() {
                "http.tls_key"
            } else {
                "http.tls_cert"
            };
            return Err(ConfigError::key(
                missing,
                "tls_cert and tls_key must be set together",
            ));
        }
        if self.auth.api_key.is_empty() {
            return Err(ConfigError::key(
                "auth.api_key",
                "must be set (or run `sfu serve --dev` for local development)",
            ));
        }
        if self.auth.api_secret.len() < MIN_SECRET_BYTES {
            return Err(ConfigError::key(
                "auth.api_secret",
                format!(
                    "must be at least {MIN_SECRET_BYTES} bytes (or run `sfu serve --dev` for local development)"
                ),
            ));
        }
        positive("http.max_connections", self.http.max_connections)?;
        positive(
            "http.max_connections_per_ip",
            self.http.max_connections_per_ip,
        )?;
        positive("room.max_rooms", self.room.max_rooms)?;
        positive("room.max_participants", self.room.max_participants)?;
        positive(
            "room.max_total_participants",
            self.room.max_total_participants,
        )?;
        if !(self.rtc.max_worker_load > 0.0 && self.rtc.max_worker_load <= 1.0) {
            return Err(ConfigError::key(
                "rtc.max_worker_load",
                "must be above 0 and at most 1 (1: no budget)",
            ));
        }
        positive("chat.max_message_bytes", self.chat.max_message_bytes)?;
        if !(self.chat.rate_per_second > 0.0 && self.chat.rate_per_second.is_finite()) {
            return Err(ConfigError::key(
                "chat.rate_per_second",
                "must be a positive number",
            ));
        }
        positive("chat.burst", self.chat.burst as usize)?;
        if !(self.signal.rate_per_second > 0.0 && self.signal.rate_per_second.is_finite()) {
            return Err(ConfigError::key(
                "signal.rate_per_second",
                "must be a positive number",
            ));
        }
        positive("signal.burst", self.signal.burst as usize)?;
        if self.signal.max_frame_bytes < 1024 || self.signal.max_frame_bytes > MAX_FRAME_BYTES_LIMIT
        {
            return Err(ConfigError::key(
                "signal.max_frame_bytes",
                format!("must be between 1024 and {MAX_FRAME_BYTES_LIMIT}"),
            ));
        }
        if self.signal.max_sdp_bytes < self.signal.max_frame_bytes
            || self.signal.max_sdp_bytes > MAX_SDP_BYTES_LIMIT
        {
            return Err(ConfigError::key(
                "signal.max_sdp_bytes",
                format!("must be between signal.max_frame_bytes and {MAX_SDP_BYTES_LIMIT}"),
            ));
        }
        if self.chat.max_message_bytes + 512 > self.signal.max_frame_bytes {
            return Err(ConfigError::key(
                "chat.max_message_bytes",
                "must be at least 512 bytes below signal.max_frame_bytes",
            ));
        }
        if self.signal.ping_interval.is_zero() {
            return Err(ConfigError::key("signal.ping_interval", "must be above 0"));
        }
        if self.signal.ping_timeout <= self.signal.ping_interval {
            return Err(ConfigError::key(
                "signal.ping_timeout",
                "must be longer than signal.ping_interval",
            ));
        }
        if self.turn.relay_port_min == 0 || self.turn.relay_port_min > self.turn.relay_port_max {
            return Err(ConfigError::key(
                "turn.relay_port_min",
                "must be above 0 and at most turn.relay_port_max",
            ));
        }
        positive(
            "turn.max_allocations_per_user",
            self.turn.max_allocations_per_user,
        )?;
        positive("turn.max_allocations", self.turn.max_allocations)?;
        if self.turn.max_bitrate < 8 {
            return Err(ConfigError::key(
                "turn.max_bitrate",
                "must be at least 8 (bits per second)",
            ));
        }
        if self.signal.join_timeout.is_zero() {
            return Err(ConfigError::key("signal.join_timeout", "must be above 0"));
        }
        if self
            .log
            .level
            .parse::<tracing_subscriber::EnvFilter>()
            .is_err()
        {
            return Err(ConfigError::key(
                "log.level",
                format!("`{}` is not a valid log filter", self.log.level),
            ));
        }
        self.cluster.validate()
    }

    /// Number of media workers this config asks for.
    pub fn media_workers(&self) -> usize {
        if self.rtc.workers > 0 {
            self.rtc.workers
        } else {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        }
    }
}

fn positive(key: &str, value: usize) -> Result<(), ConfigError> {
    if value == 0 {
        return Err(ConfigError::key(key, "must be above 0"));
    }
    Ok(())
}

/// Writes `SFU_SECTION_KEY=value` variables into the table as `section.key = value`.
/// A value is read as TOML when it parses as one (numbers, booleans, arrays), else as a string.
fn apply_env(
    table: &mut toml::Table,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<(), ConfigError> {
    const SECTIONS: &[&str] = &[
        "http", "rtc", "auth", "room", "chat", "signal", "turn", "log", "cluster",
    ];
    for (name, value) in env {
        let Some(rest) = name.strip_prefix(ENV_PREFIX) else {
            continue;
        };
        if ENV_NOT_KEYS.contains(&name.as_str()) {
            continue;
        }
        let rest = rest.to_ascii_lowercase();
        let Some((section, key)) = rest.split_once('_') else {
            return Err(ConfigError::key(
                name,
                "not a config key (SFU_<SECTION>_<KEY>)",
            ));
        };
        if !SECTIONS.contains(&section) {
            return Err(ConfigError::key(
                name,
                format!("unknown section `{section}`, expected one of {SECTIONS:?}"),
            ));
        }
        let parsed = format!("v = {value}")
            .parse::<toml::Table>()
            .ok()
            .and_then(|mut t| t.remove("v"))
            .unwrap_or(toml::Value::String(value));
        let entry = table
            .entry(section.to_string())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        match entry {
            toml::Value::Table(t) => {
                t.insert(key.to_string(), parsed);
            }
            _ => return Err(ConfigError::key(section, "must be a table")),
        }
    }
    Ok(())
}

/// Durations as humantime strings ("30s", "1m 30s") in TOML and the environment.
mod humantime_serde {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*d).to_string())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        humantime::parse_duration(&text)
            .map_err(|e| serde::de::Error::custom(format!("`{text}` is not a duration ({e})")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOCUMENTED: &str = include_str!("../config/sfu.toml");

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn documented_config_matches_built_in_defaults() {
        let documented = Config::from_toml(DOCUMENTED).expect("config/sfu.toml parses");
        assert_eq!(documented, Config::default());
    }

    #[test]
    fn dev_mode_needs_no_config() {
        let config = Config::load(None, env(&[]), true).expect("dev config");
        assert_eq!(config.auth.api_key, DEV_API_KEY);
        assert_eq!(config.http.port, 7880);
    }

    #[test]
    fn dev_mode_never_uses_a_real_secret_and_listens_on_loopback() {
        let real = "a-production-secret-of-at-least-32-bytes";
        let config = Config::load(
            None,
            env(&[("SFU_AUTH_API_KEY", "prod"), ("SFU_AUTH_API_SECRET", real)]),
            true,
        )
        .expect("dev config");
        assert_eq!(config.auth.api_key, DEV_API_KEY);
        assert_eq!(config.auth.api_secret, DEV_API_SECRET);
        assert_eq!(config.http.bind, IpAddr::from([127, 0, 0, 1]));
        // Asked for, it listens elsewhere; without --dev the default stays every interface.
        let config = Config::load(None, env(&[("SFU_HTTP_BIND", "0.0.0.0")]), true).unwrap();
        assert_eq!(config.http.bind, IpAddr::from([0, 0, 0, 0]));
        let config = Config::load(
            None,
            env(&[("SFU_AUTH_API_KEY", "prod"), ("SFU_AUTH_API_SECRET", real)]),
            false,
        )
        .unwrap();
        assert_eq!(config.http.bind, IpAddr::from([0, 0, 0, 0]));
        assert_eq!(config.auth.api_secret, real);
    }

    #[test]
    fn missing_secret_names_the_key() {
        let err = Config::load(None, env(&[]), false).unwrap_err().to_string();
        assert!(err.contains("auth.api_key"), "{err}");
        let err = Config::load(None, env(&[("SFU_AUTH_API_KEY", "k")]), false)
            .unwrap_err()
            .to_string();
        assert!(err.contains("auth.api_secret"), "{err}");
    }

    #[test]
    fn environment_overrides_file_values() {
        let config = Config::load(
            None,
            env(&[
                ("SFU_HTTP_PORT", "9000"),
                ("SFU_RTC_PUBLIC_IPS", "[\"203.0.113.7\"]"),
                ("SFU_ROOM_EMPTY_TIMEOUT", "5s"),
                ("SFU_CONFIG", "/ignored"),
                ("PATH", "/bin"),
            ]),
            true,
        )
        .expect("config");
        assert_eq!(config.http.port, 9000);
        assert_eq!(config.rtc.public_ips, vec![IpAddr::from([203, 0, 113, 7])]);
        assert_eq!(config.room.empty_timeout, Duration::from_secs(5));
    }

    #[test]
    fn bad_values_name_their_key() {
        let cases = [
            ("SFU_HTTP_PORT", "seventy", "http.port"),
            ("SFU_HTTP_PORT", "70000", "http.port"),
            ("SFU_ROOM_EMPTY_TIMEOUT", "soon", "room.empty_timeout"),
            ("SFU_HTTP_PROT", "1", "http.prot"),
            ("SFU_NOPE_X", "1", "SFU_NOPE_X"),
            ("SFU_CHAT_MAX_MESSAGE_BYTES", "0", "chat.max_message_bytes"),
            ("SFU_LOG_FORMAT", "yaml", "log.format"),
            ("SFU_HTTP_TLS_CERT", "/c.pem", "http.tls_key"),
        ];
        for (var, value, key) in cases {
            let err = Config::load(None, env(&[(var, value)]), true)
                .unwrap_err()
                .to_string();
            assert!(err.contains(key), "{var}={value}: {err}");
        }
    }

    #[test]
    fn cluster_settings_are_checked_only_in_cluster_mode() {
        let redis = ("SFU_CLUSTER_REDIS_URL", "redis://127.0.0.1:6379/0");
        let cases = [
            (
                vec![("SFU_CLUSTER_REDIS_URL", "not a url")],
                "cluster.redis_url",
            ),
            (
                vec![("SFU_CLUSTER_REDIS_URL", "rediss://r:6380/")],
                "cluster.redis_url",
            ),
            (
                vec![redis, ("SFU_CLUSTER_ADVERTISE_URL", "ftp://x")],
                "cluster.advertise_url",
            ),
            (
                vec![redis, ("SFU_CLUSTER_REFRESH", "0s")],
                "cluster.refresh",
            ),
            (
                vec![
                    redis,
                    ("SFU_CLUSTER_REFRESH", "5s"),
                    ("SFU_CLUSTER_NODE_TTL", "8s"),
                ],
                "cluster.node_ttl",
            ),
        ];
        for (vars, key) in cases {
            let err = Config::load(None, env(&vars), true)
                .unwrap_err()
                .to_string();
            assert!(err.contains(key), "{vars:?}: {err}");
        }
        // Without a Redis URL the rest is not looked at.
        let single = Config::load(None, env(&[("SFU_CLUSTER_REFRESH", "0s")]), true).unwrap();
        assert!(!single.cluster.enabled());
        let cluster = Config::load(None, env(&[redis]), true).unwrap();
        assert!(cluster.cluster.enabled());
    }

    #[test]
    fn unknown_key_in_file_is_named() {
        let err = Config::from_toml("[chat]\nhistroy = 5\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("chat.histroy"), "{err}");
    }
}
