//! # sfu: a selective forwarding unit for multi-party meetings
//!
//! A **Room** is a meeting: its participants, their published tracks and its chat. A
//! **Participant** is one joined client, speaking JSON over one WebSocket (`/ws`, see
//! docs/protocol.md) with an access token that names its room, identity and grants
//! ([`auth`]). Each participant sends one WebRTC upstream of **Publications** and receives the
//! others' tracks; the server forwards RTP without decoding, choosing for every
//! **Subscription** the simulcast **Layer** its subscriber asked for and can take.
//!
//! The parts, as docs and code name them:
//! - [`config`]: every option, its default, `SFU_*` overrides, validation naming the key.
//! - [`http`]: the axum router (`/ws`, `/metrics`, `/healthz`, `/api/*`, the web client) and the
//!   running [`http::Server`].
//! - [`signal`]: the protocol ([`signal::protocol`]) and one session per WebSocket.
//! - [`room`]: the room registry, a room's participants and chat.
//! - [`metrics`]: the one Prometheus registry.
//!
//! This library is the server only. The load generator behind `sfu load` is a client, so it is
//! the workspace's other crate, `sfu-load` (load/), which the `sfu` binary uses and which uses
//! nothing of this crate.
//!
//! Running a server in-process, as the integration tests do:
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! let mut config = sfu::config::Config::load(None, std::iter::empty(), true)?; // --dev
//! config.http.port = 0; // any free port
//! let server = sfu::http::Server::start(config).await?;
//! println!("signaling at ws://{}/ws", server.local_addr);
//! server.shutdown().await; // every client gets leave{reason:"server_shutdown"}
//! # Ok(()) }
//! ```

pub mod auth;
pub mod config;
pub mod forward;
pub mod http;
pub mod metrics;
pub mod room;
pub mod rtc;
pub mod signal;
