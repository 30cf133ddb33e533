//! The `sfu` command: `sfu serve` runs the server, `sfu token` mints access tokens.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use sfu::auth::{Auth, Grants};
use sfu::config::{Config, LogFormat};

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
        /// How long the token is valid, e.g. 6h, 30m, 7d.
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
}

fn load_config(args: &ConfigArgs) -> Result<Config, ExitCode> {
    Config::load(args.config.as_deref(), std::env::vars(), args.dev).map_err(|e| {
        eprintln!("sfu: {e}");
        ExitCode::from(EXIT_CONFIG)
    })
}

fn init_logging(config: &Config) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&config.log.level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match config.log.format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve { config } => {
            let config = match load_config(&config) {
                Ok(c) => c,
                Err(code) => return code,
            };
            init_logging(&config);
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
    shutdown_signal().await;
    tracing::info!("shutting down: telling every client");
    server.shutdown().await;
    tracing::info!("stopped");
    Ok(())
}

async fn shutdown_signal() {
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
        _ = ctrl_c => {}
        _ = term => {}
    }
}
