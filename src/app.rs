//! The application: builds the parts (config, metrics, rooms, auth, media engine) and owns the
//! [`AppState`] that every HTTP handler and signaling session shares.
//!
//! This is where the layers are wired together, so none of them has to know the others' owner:
//! the rooms get the signaling layer's encoder for their events, the media workers get the
//! metrics, everything gets the one shutdown token. In cluster mode it starts the node's part
//! in the cluster (`cluster`).

use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::Auth;
use crate::cluster::Cluster;
use crate::config::Config;
use crate::metrics::Metrics;
use crate::room::Rooms;
use crate::rtc::MediaEngine;
use crate::signal::session::{self, encode_room_event};
use crate::turn_server::{self, Turn};

/// What every handler and session shares.
#[derive(Clone)]
pub struct AppState(Arc<AppInner>);

pub struct AppInner {
    pub config: Arc<Config>,
    pub auth: Arc<Auth>,
    pub rooms: Arc<Rooms>,
    pub metrics: Arc<Metrics>,
    /// Cancelled once, when the server starts shutting down.
    pub shutdown: CancellationToken,
    /// Every signaling session, so shutdown can wait for their goodbyes.
    pub sessions: TaskTracker,
    /// The media workers.
    pub media: Arc<MediaEngine>,
    /// The parts a signaling session uses, shared by every session.
    pub session: Arc<session::Context>,
    /// This node's part in a cluster (`cluster.redis_url`), or `None` for a single node.
    pub cluster: Option<Arc<Cluster>>,
}

impl std::ops::Deref for AppState {
    type Target = AppInner;
    fn deref(&self) -> &AppInner {
        &self.0
    }
}

impl AppState {
    /// Builds every part; starts the media workers (binding their UDP sockets) and the TURN
    /// server, when enabled, and the cluster's refresh loop. `http_port` is the port the HTTP
    /// server listens on (the one a cluster node advertises when none is configured).
    pub async fn new(config: Config, http_port: u16) -> anyhow::Result<Self> {
        let metrics = Arc::new(Metrics::new());
        let cluster = Cluster::new(&config, http_port, metrics.clone())?;
        let media = MediaEngine::start(&config, metrics.clone())?;
        let shutdown = CancellationToken::new();
        let rooms = Rooms::new(
            config.room.clone(),
            &config.chat,
            metrics.clone(),
            shutdown.clone(),
            encode_room_event,
        );
        let config = Arc::new(config);
        let auth = Arc::new(Auth::new(&config.auth));
        let media = Arc::new(media);
        let turn = if config.turn.enabled {
            let secret = if config.turn.secret.is_empty() {
                turn_server::derive_secret(&config.auth.api_secret)
            } else {
                config.turn.secret.as_bytes().to_vec()
            };
            let started = Turn::start(
                &config.turn,
                config.rtc.bind,
                media.advertised_ips(),
                media.media_addrs(),
                secret,
                config.turn_tls(),
                metrics.clone(),
            )
            .await;
            match started {
                Ok(turn) => Some(Arc::new(turn)),
                // Dev mode turns TURN on by itself: a port in use (a coturn on this machine)
                // must not keep the server from starting.
                Err(e) if config.dev => {
                    tracing::warn!("dev mode runs without its TURN server: {e}");
                    None
                }
                Err(e) => return Err(e),
            }
        } else {
            None
        };
        let session = Arc::new(session::Context {
            config: config.clone(),
            auth: auth.clone(),
            rooms: rooms.clone(),
            metrics: metrics.clone(),
            media: media.clone(),
            shutdown: shutdown.clone(),
            resumes: Default::default(),
            turn,
            cluster: cluster.clone(),
            drain: CancellationToken::new(),
        });
        if let Some(cluster) = &cluster {
            cluster.start(rooms.clone(), media.clone(), shutdown.clone());
        }
        Ok(Self(Arc::new(AppInner {
            auth,
            config,
            rooms,
            metrics,
            shutdown,
            sessions: TaskTracker::new(),
            media,
            session,
            cluster,
        })))
    }
}
