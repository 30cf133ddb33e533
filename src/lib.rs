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
//! - [`app`]: builds the parts below and owns the [`app::AppState`] they share.
//! - [`model`]: the domain types `room` and `rtc` share (tracks, participants, chat messages,
//!   leave reasons, room events); the protocol sends them as they are.
//! - [`http`]: the axum router (`/ws`, `/metrics`, `/healthz`, `/api/*`, the web client) and the
//!   running [`http::Server`].
//! - [`signal`]: the protocol ([`signal::protocol`]) and one session per WebSocket.
//! - [`room`]: the room registry, a room's participants and chat.
//! - [`rtc`]: the media workers and everything that touches the WebRTC stack (str0m, named
//!   nowhere else): peers, SDP, the loop that feeds packets to the core and its decisions to
//!   the stack, panic boundaries, bounded queues to and from the control plane.
//! - [`forward`]: the sans-IO forwarding core: every forwarding decision (a publication's
//!   [`forward::router::Router`], its subscriptions, layer choice, allocation, dynacast).
//! - [`turn_server`]: the embedded TURN server, its credentials and what it may relay to.
//! - [`cluster`]: cluster mode on Redis: the node registry, which node hosts each room, the
//!   node a refused join is sent to, draining.
//! - [`metrics`]: the one Prometheus registry.
//! - [`logging`]: the log filter and format, and the rate limit per log line.
//!
//! Dependencies point one way: `http -> signal -> room -> model`, `signal -> rtc -> forward`,
//! `signal -> turn_server`, `signal -> cluster -> {room, rtc}`;
//! nothing imports `http` (but `main.rs` and the tests), `signal` takes the parts it needs
//! ([`signal::session::Context`]) without importing `app`, and `room` and `rtc` never import
//! `signal` (tests/layering.rs checks all of it).
//!
//! ## Who owns what
//!
//! Each fact has one owner; the others ask it or are told by it.
//! - **Room** (`room/`): who is in a room (identity, name, grants), the track catalogue that
//!   participants see (a track's name, source, layers and **muted** flag), and the chat. A
//!   `mute` request goes to the media worker first (a muted track's Router forwards nothing),
//!   then to the room, which tells the others.
//! - **Media worker** (`rtc/`): a participant's two peer connections, each Publication's media
//!   (where its packets come from, its format, its layers' SSRCs) and the subscriber
//!   connection's offer/answer state. It mints a track's sid when its m-line appears and tells
//!   the session, which adds the track to the room: the room never learns of media any other way.
//!   In a room spread over several workers (`rtc.spread_rooms_at`) the publisher's worker owns
//!   the Publication; each other worker with subscribers of it holds a relayed copy that it
//!   feeds with the packets it relays (`rtc::relay`).
//! - **Router** (`forward/`, one per Publication): its layers' Receivers and its Subscriptions:
//!   which layer each subscriber gets, what was forwarded, when a keyframe is due.
//! - **Allocator** (`forward/`, one per subscriber connection): that connection's bandwidth split.
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

pub mod admission;
pub mod app;
pub mod auth;
pub mod cluster;
pub mod config;
pub mod forward;
pub mod http;
pub mod logging;
pub mod metrics;
pub mod model;
pub mod room;
pub mod rtc;
pub mod signal;
pub mod turn_server;
