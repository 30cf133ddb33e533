//! The `sfu` command: `sfu serve` runs the server, `sfu token` mints access tokens, `sfu load`
//! puts a server under load with real WebRTC participants (the workspace crate `sfu-load`, load/).

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use sfu::auth::{Auth, Grants};
use sfu::config::Config;

/// Exit code for a bad config or bad arguments, so scripts can tell it from a crash.
const EXIT_CONFIG: u8 = 2;

#[derive(Parser)]
#[command(
    name = "sfu",
    version,
    about = "A selective forwarding unit (SFU) media server"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Args)]
struct ConfigArgs {
    /// Config file (TOML); see config/sfu.toml for every option. SFU_* variables override it.
    #[arg(long, env = "SFU_CONFIG")]
    config: Option<PathBuf>,
    /// Development mode: no config needed, a fixed dev key/secret, the demo page mints tokens.
    #[arg(long)]
    dev: bool,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server.
    Serve {
        #[command(flatten)]
        config: ConfigArgs,
    },
    /// Print an access token for a participant (or for the admin API with --admin).
    Token {
        #[command(flatten)]
        config: ConfigArgs,
        /// The room the token admits to.
        #[arg(long, required_unless_present = "admin")]
        room: Option<String>,
        /// The participant's identity, unique in the room.
        #[arg(long, required_unless_present = "admin")]
        identity: Option<String>,
        /// Display name (defaults to the identity).
        #[arg(long)]
        name: Option<String>,
        /// How long the token is valid, e.g. 6h, 30m (at most auth.max_token_ttl, 24h by default).
        #[arg(long, default_value = "6h", value_parser = humantime::parse_duration)]
        ttl: Duration,
        /// The participant may not publish tracks.
        #[arg(long)]
        no_publish: bool,
        /// The participant may not subscribe to tracks.
        #[arg(long)]
        no_subscribe: bool,
        /// The participant may not send chat messages.
        #[arg(long)]
        no_chat: bool,
        /// Mint an admin token for the HTTP API instead of a participant token.
        #[arg(long, conflicts_with_all = ["room", "identity", "name"])]
        admin: bool,
    },
    /// Load-test a server with real WebRTC publishers and subscribers.
    ///
    /// Publishers send synthetic VP8 (with --simulcast three layers of about 150k/500k/1.2M
    /// bit/s, 30 fps, a large keyframe every 2 s) and Opus-sized audio at 50 packets/s.
    /// Subscribers behave like browsers: they decrypt everything, send receiver reports, TWCC
    /// feedback and NACKs, ask for a keyframe (PLI) when a frame cannot be decoded, and measure
    /// forwarding latency from send stamps in the payload. With --no-feedback they count RTP
    /// packets from the clear SRTP header instead (sequence gaps are loss) and send no media
    /// feedback: far cheaper for the load generator, but the server then does no bandwidth
    /// estimation, pacing or feedback work for them.
    Load(LoadArgs),
}

#[derive(clap::Args)]
struct LoadArgs {
    /// The server, e.g. ws://127.0.0.1:7880
    #[arg(long, default_value = "ws://127.0.0.1:7880")]
    url: String,
    #[arg(long, default_value = "load")]
    room: String,
    #[arg(long, default_value_t = 1)]
    publishers: usize,
    #[arg(long, default_value_t = 10)]
    subscribers: usize,
    /// Publishers also subscribe to each other (a meeting where everyone sends).
    #[arg(long)]
    publishers_subscribe: bool,
    /// How long media flows once everyone joined, e.g. 60s.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Bitrate of the one video layer without --simulcast, e.g. 1.5M or 800k.
    #[arg(long, default_value = "1.5M", value_parser = parse_bitrate)]
    video_bitrate: u64,
    /// Send three simulcast layers (q, h, f).
    #[arg(long, conflicts_with = "audio_only")]
    simulcast: bool,
    /// Publish audio only.
    #[arg(long)]
    audio_only: bool,
    /// Subscribers count packets from the clear header and send no media feedback (no RTCP
    /// receiver reports, TWCC, NACK or PLI): cheaper for this tool, unlike any real receiver.
    #[arg(long)]
    no_feedback: bool,
    /// Publishers publish their tracks but send no media: what connected peers cost the server
    /// when nothing flows.
    #[arg(long)]
    idle: bool,
    /// Pause between two joins.
    #[arg(long, default_value = "10ms", value_parser = humantime::parse_duration)]
    join_interval: Duration,
    /// Local address for the peers' sockets (their ICE host candidate).
    #[arg(long, default_value = "127.0.0.1")]
    bind: std::net::IpAddr,
    /// API key and secret the server checks tokens with (the dev ones by default).
    #[arg(long, env = "SFU_AUTH_API_KEY", default_value = sfu::config::DEV_API_KEY)]
    api_key: String,
    #[arg(long, env = "SFU_AUTH_API_SECRET", default_value = sfu::config::DEV_API_SECRET, hide_env_values = true)]
    api_secret: String,
    /// pid of a local server: its CPU and memory are read from /proc (else from its /metrics).
    #[arg(long)]
    server_pid: Option<u32>,
    /// Print the summary as JSON.
    #[arg(long)]
    json: bool,
}

/// "1.5M", "800k", "64000" as bits per second.
fn parse_bitrate(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (number, scale) = match s.chars().last() {
        Some('k' | 'K') => (&s[..s.len() - 1], 1e3),
        Some('m' | 'M') => (&s[..s.len() - 1], 1e6),
        _ => (s, 1.0),
    };
    let v: f64 = number
        .parse()
        .map_err(|_| format!("`{s}` is not a bitrate like 1.5M, 800k or 64000"))?;
    if !v.is_finite() || v <= 0.0 {
        return Err(format!("`{s}`: a bitrate must be above 0"));
    }
    Ok((v * scale) as u64)
}

fn load_config(args: &ConfigArgs) -> Result<Config, ExitCode> {
    Config::load(args.config.as_deref(), std::env::vars(), args.dev).map_err(|e| {
        eprintln!("sfu: {e}");
        ExitCode::from(EXIT_CONFIG)
    })
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve { config } => {
            let config = match load_config(&config) {
                Ok(c) => c,
                Err(code) => return code,
            };
            sfu::logging::init(&config);
            let runtime = match tokio::runtime::Runtime::new() {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("sfu: cannot start the runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            match runtime.block_on(serve(config)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("sfu: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Token {
            config,
            room,
            identity,
            name,
            ttl,
            no_publish,
            no_subscribe,
            no_chat,
            admin,
        } => {
            let config = match load_config(&config) {
                Ok(c) => c,
                Err(code) => return code,
            };
            let auth = Auth::new(&config.auth);
            let token = if admin {
                auth.admin_token(ttl)
            } else {
                let grants = Grants {
                    publish: !no_publish,
                    subscribe: !no_subscribe,
                    chat: !no_chat,
                    admin: false,
                };
                auth.participant_token(
                    room.as_deref().unwrap_or_default(),
                    identity.as_deref().unwrap_or_default(),
                    name.as_deref(),
                    grants,
                    ttl,
                )
            };
            match token {
                Ok(t) => {
                    println!("{t}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("sfu: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Load(args) => load(args),
    }
}

fn load(args: LoadArgs) -> ExitCode {
    let options = sfu_load::LoadOptions {
        url: args.url,
        room: args.room,
        publishers: args.publishers,
        subscribers: args.subscribers,
        publishers_subscribe: args.publishers_subscribe,
        duration: args.duration,
        video_bitrate_bps: args.video_bitrate,
        simulcast: args.simulcast,
        audio_only: args.audio_only,
        feedback: !args.no_feedback,
        idle: args.idle,
        join_interval: args.join_interval,
        bind: args.bind,
        api_key: args.api_key,
        api_secret: args.api_secret,
        server_pid: args.server_pid,
        progress: !args.json,
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("sfu: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(sfu_load::run(options)) {
        Ok(report) => {
            if args.json {
                match serde_json::to_string_pretty(&report) {
                    Ok(j) => println!("{j}"),
                    Err(e) => eprintln!("sfu: {e}"),
                }
            } else {
                print!("{}", report.table());
            }
            if report.joins_failed > 0 {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            }
        }
        Err(e) => {
            eprintln!("sfu: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(config: Config) -> anyhow::Result<()> {
    let dev = config.dev;
    let key = config.auth.api_key.clone();
    let secret = config.auth.api_secret.clone();
    let server = sfu::http::Server::start(config).await?;
    let addr = server.local_addr;
    tracing::info!(%addr, version = env!("CARGO_PKG_VERSION"), "sfu listening");
    if dev {
        let port = addr.port();
        // One write, errors ignored: a closed stdout must not take the server down.
        let banner = format!(
            "sfu dev mode: NOT for production\n\
             \x20 web client   http://localhost:{port}/  (room `{room}`)\n\
             \x20 signaling    ws://localhost:{port}/ws\n\
             \x20 metrics      http://localhost:{port}/metrics\n\
             \x20 api key      {key}\n\
             \x20 api secret   {secret}\n\
             \x20 token        sfu token --dev --room {room} --identity alice\n",
            room = sfu::config::DEV_ROOM,
        );
        let mut out = std::io::stdout().lock();
        let _ = out.write_all(banner.as_bytes()).and_then(|()| out.flush());
    }
    if shutdown_signal().await == Signal::Terminate {
        // A cluster node drains first (a single node has nothing to drain); a second signal
        // stops the drain.
        tokio::select! {
            _ = server.drain() => {}
            _ = shutdown_signal() => tracing::warn!("drain cut short by a second signal"),
        }
    }
    tracing::info!("shutting down: telling every client");
    server.shutdown().await;
    tracing::info!("stopped");
    Ok(())
}

/// The signal that stops the server.
#[derive(Debug, PartialEq, Eq)]
enum Signal {
    /// Ctrl-C: stop now.
    Interrupt,
    /// SIGTERM (an orchestrator): a cluster node drains first.
    Terminate,
}

async fn shutdown_signal() -> Signal {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => Signal::Interrupt,
        _ = term => Signal::Terminate,
    }
}
