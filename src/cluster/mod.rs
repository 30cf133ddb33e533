//! Cluster mode: many nodes behind a load balancer, sharing one Redis (`cluster.redis_url`).
//!
//! What this owns:
//! - The node registry ([`node`]): every `cluster.refresh` each node writes its entry (address,
//!   participants, CPU load, packet rate, draining) with a TTL of `cluster.node_ttl`, and reads
//!   everyone's. A node that stops writing (killed) is gone once its entry expires.
//! - Room placement ([`placement`]): a room lives on one node. A join that reaches another node
//!   is answered `room_on_other_node` with that node's signaling `url`, and clients follow it.
//!   A node over its capacity answers a join for a room it does not host with `node_full` naming
//!   the least-loaded node. The rooms of a node that died or drains can be taken by any node.
//! - Chat history: every chat message also goes to the room's Redis stream (`sfu:chat:<room>`,
//!   capped at `chat.history`), and a node that opens a room takes the history back from it, so
//!   a room that moves (its node drained, restarted or died) keeps its chat.
//! - Healing a split: while Redis is down (or after it restarts empty) a room can open on two
//!   nodes. The node that finds another holding its room's placement sends its participants
//!   there (`leave` with reason `room_moved` and the `url`), so the room is whole again.
//! - Draining: after SIGTERM the node takes no joins (`node_draining` with a `url`), lets go of
//!   its rooms, and its sessions tell their clients to move there.
//!
//! Redis being down never stops a node: requests time out ([`REDIS_TIMEOUT`]), are counted in
//! `sfu_cluster_redis_errors_total` and logged, and a join is then served here. The connection
//! manager reconnects on its own. Without `cluster.redis_url` none of this runs.

pub mod node;
pub mod placement;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::AsyncCommands;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::metrics::Metrics;
use crate::model::{ChatMessage, LeaveReason};
use crate::room::Rooms;
use crate::rtc::MediaEngine;
pub use node::NodeInfo;
use placement::{Holder, CHAT_KEY, NODES_SET, NODE_KEY};

/// How long a room's chat stays in Redis after its last message when no node closes the room
/// (its node died): long enough for anyone to come back.
const CHAT_KEPT: Duration = Duration::from_secs(24 * 3600);
/// Chat messages waiting to be written to Redis; past it they are not kept there (counted as
/// Redis errors).
const CHAT_QUEUE: usize = 1024;

/// The longest a Redis request may hold up a join or a refresh.
pub const REDIS_TIMEOUT: Duration = Duration::from_secs(2);

/// Where a join for a room goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Host {
    /// Serve it here.
    Here,
    /// The room lives on another node: join there.
    Elsewhere { node: String, url: String },
}

/// This node's part in the cluster.
pub struct Cluster {
    me: String,
    url: String,
    redis: ConnectionManager,
    refresh: Duration,
    ttl_ms: u64,
    started_at_ms: u64,
    draining: AtomicBool,
    /// Every live node as last read from Redis (this one included).
    nodes: RwLock<Vec<NodeInfo>>,
    /// Rooms this node took: a room is renewed while it is open here; one taken for a join
    /// that never became a room is let go after a few refreshes.
    claimed: Mutex<HashMap<String, Claim>>,
    /// Chat messages to write to their rooms' streams, in order, by one task.
    chat_tx: mpsc::Sender<(String, ChatMessage)>,
    chat_rx: Mutex<Option<mpsc::Receiver<(String, ChatMessage)>>>,
    chat_history: usize,
    metrics: Arc<Metrics>,
    /// Packets forwarded at the last refresh, for the packet rate.
    last_sent: Mutex<(Instant, u64)>,
    max_participants: usize,
    max_load: f64,
    /// For the admin API's requests to other nodes.
    http: reqwest::Client,
    /// Rooms whose participants were sent to the node that holds them, with its signaling URL.
    moved: Mutex<HashMap<String, String>>,
    /// Random per process, in the entry (see [`NodeInfo::instance`]).
    instance: String,
    /// Whether the last refresh reached Redis. While not, joins do not ask it (a Redis that
    /// accepts connections but never answers would hold every join up for its timeouts).
    healthy: AtomicBool,
    /// The refresh loop, stopped before the node takes itself out of Redis.
    refresher: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

/// A room this node took.
#[derive(Debug, Clone, Copy)]
struct Claim {
    at: Instant,
    /// The room was open here: when it closes, its chat in Redis goes too.
    opened: bool,
}

impl Claim {
    fn new() -> Self {
        Self {
            at: Instant::now(),
            opened: false,
        }
    }
}

/// Why a Redis request failed, for the log.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("redis did not answer within {REDIS_TIMEOUT:?}")]
    Timeout,
}

impl Cluster {
    /// The cluster part of `config`, or `None` for a single node. Connects lazily: a node starts
    /// while Redis is down.
    pub fn new(
        config: &Config,
        http_port: u16,
        metrics: Arc<Metrics>,
    ) -> anyhow::Result<Option<Arc<Self>>> {
        let cluster = &config.cluster;
        if !cluster.enabled() {
            return Ok(None);
        }
        let client = redis::Client::open(cluster.redis_url.as_str())?;
        let manager_config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(REDIS_TIMEOUT))
            .set_response_timeout(Some(REDIS_TIMEOUT))
            .set_max_delay(Duration::from_secs(2));
        let redis = ConnectionManager::new_lazy_with_config(client, manager_config)?;
        let me = if cluster.node_id.is_empty() {
            format!("node-{:08x}", rand::random::<u32>())
        } else {
            cluster.node_id.clone()
        };
        if cluster.advertise_url.is_empty() && config.http.bind.is_unspecified() {
            tracing::warn!(
                "cluster.advertise_url is empty and http.bind is a wildcard: other nodes and \
                 clients sent here are told http://127.0.0.1:{http_port}, which works on one \
                 host only; set cluster.advertise_url"
            );
        }
        let url = if cluster.advertise_url.is_empty() {
            let host = if config.http.bind.is_unspecified() {
                "127.0.0.1".to_string()
            } else {
                match config.http.bind {
                    std::net::IpAddr::V6(ip) => format!("[{ip}]"),
                    ip => ip.to_string(),
                }
            };
            let scheme = if config.http.tls_cert.is_some() {
                "https"
            } else {
                "http"
            };
            format!("{scheme}://{host}:{http_port}")
        } else {
            cluster.advertise_url.trim_end_matches('/').to_string()
        };
        let sent = packets_sent(&metrics);
        let (chat_tx, chat_rx) = mpsc::channel(CHAT_QUEUE);
        Ok(Some(Arc::new(Self {
            chat_tx,
            chat_rx: Mutex::new(Some(chat_rx)),
            chat_history: config.chat.history,
            me,
            url,
            redis,
            refresh: cluster.refresh,
            ttl_ms: cluster.node_ttl.as_millis() as u64,
            started_at_ms: unix_ms(),
            draining: AtomicBool::new(false),
            nodes: RwLock::new(Vec::new()),
            claimed: Mutex::new(HashMap::new()),
            metrics,
            last_sent: Mutex::new((Instant::now(), sent)),
            max_participants: config.room.max_total_participants,
            max_load: config.rtc.max_worker_load,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(5))
                .build()?,
            moved: Mutex::new(HashMap::new()),
            instance: format!("{:016x}", rand::random::<u64>()),
            healthy: AtomicBool::new(true),
            refresher: Mutex::new(None),
        })))
    }

    pub fn node_id(&self) -> &str {
        &self.me
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// Starts the refresh loop; it ends with `shutdown` (then [`Cluster::leave`] takes this
    /// node out of Redis).
    pub fn start(
        self: &Arc<Self>,
        rooms: Arc<Rooms>,
        media: Arc<MediaEngine>,
        shutdown: CancellationToken,
    ) {
        let chat = self.chat_rx.lock().ok().and_then(|mut rx| rx.take());
        if let Some(chat) = chat {
            tokio::spawn(self.clone().write_chat(chat));
        }
        let cluster = self.clone();
        let refresher = tokio::spawn(async move {
            tracing::info!(node = %cluster.me, url = %cluster.url, "cluster node started");
            let mut tick = tokio::time::interval(cluster.refresh);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut healthy = true;
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tick.tick() => {}
                }
                match cluster.refresh_once(&rooms, &media).await {
                    Ok(()) if !healthy => {
                        tracing::info!("cluster: redis reachable again");
                        healthy = true;
                    }
                    Ok(()) => {}
                    Err(e) => {
                        cluster.metrics.cluster_redis_errors.inc();
                        if healthy {
                            tracing::warn!("cluster: refresh failed, serving on alone until redis answers: {e}");
                        }
                        healthy = false;
                    }
                }
                cluster.healthy.store(healthy, Ordering::Relaxed);
            }
        });
        if let Ok(mut slot) = self.refresher.lock() {
            *slot = Some(refresher);
        }
    }

    /// Writes this node's entry, renews its rooms, lets go of rooms no longer here, and reads
    /// every node's entry.
    async fn refresh_once(&self, rooms: &Rooms, media: &MediaEngine) -> Result<(), ClusterError> {
        let entry = self.entry(media);
        let json = serde_json::to_string(&entry).unwrap_or_default();
        let mut redis = self.redis.clone();
        let previous = timed(placement::announce(
            &mut redis,
            &self.me,
            &json,
            self.ttl_ms,
        ))
        .await?;
        // Redis answers again: joins ask it from now on, not only once the whole refresh is
        // done (a join in between would open here a room another node holds).
        self.healthy.store(true, Ordering::Relaxed);
        if let Ok(previous) = serde_json::from_str::<NodeInfo>(&previous) {
            if previous.instance != self.instance {
                tracing::error!(
                    node = %self.me,
                    "cluster: another process writes its entry under this node_id; each node \
                     needs its own cluster.node_id (rooms would be served by both)"
                );
            }
        }

        let (renew, release) = self.sort_claims(rooms);
        let lost = if self.is_draining() {
            Vec::new()
        } else {
            timed(placement::renew(&mut redis, &renew, &self.me, self.ttl_ms)).await?
        };
        // A room that closed here ends its chat, as on a single node; one only taken for a
        // join that did not happen just lets go. Claims stay until Redis took the change.
        let (closed, unused): (Vec<_>, Vec<_>) = release.iter().partition(|(_, c)| c.opened);
        let names = |list: Vec<&(String, Claim)>| {
            list.into_iter().map(|(r, _)| r.clone()).collect::<Vec<_>>()
        };
        let released = async {
            placement::close(&mut redis, &names(closed), &self.me).await?;
            placement::release(&mut redis, &names(unused), &self.me).await
        };
        if let Err(e) = timed(released).await {
            let mut claimed = lock(&self.claimed);
            for (room, claim) in release {
                claimed.entry(room).or_insert(claim);
            }
            return Err(e);
        }

        let nodes = self.read_nodes().await?;
        self.remember(nodes);
        for room in lost {
            self.give_up(&room, rooms).await;
        }
        Ok(())
    }

    /// Another node holds the placement of `room`, open here too (a split while Redis was
    /// down or after it came back empty): the room goes on there. Its participants here are
    /// told to join that node (`room_moved` with its url) and the room is no longer renewed.
    async fn give_up(&self, room: &str, rooms: &Rooms) {
        lock(&self.claimed).remove(room);
        let Some(host) = self.host_of(room).await else {
            return;
        };
        let Some(open) = rooms.get(room) else {
            return;
        };
        tracing::warn!(
            %room,
            node = %host.id,
            participants = open.len(),
            "cluster: the room is open on another node too; its participants here move there"
        );
        lock(&self.moved).insert(room.to_string(), host.signal_url);
        open.end_all(LeaveReason::RoomMoved);
    }

    /// Where the participants of `room` were sent by [`Cluster::give_up`], for their `leave`.
    pub fn moved_to(&self, room: &str) -> Option<String> {
        lock(&self.moved).get(room).cloned()
    }

    /// Splits the rooms this node took into those to renew (open here, or taken moments ago for
    /// a join under way) and those to let go; forgets the latter. A draining node let go of
    /// everything already.
    fn sort_claims(&self, rooms: &Rooms) -> (Vec<String>, Vec<(String, Claim)>) {
        if self.is_draining() {
            return (Vec::new(), Vec::new());
        }
        let grace = self.refresh * 2;
        let mut claimed = lock(&self.claimed);
        let mut moved = lock(&self.moved);
        // A room given up here is forgotten once it closed here.
        moved.retain(|room, _| rooms.get(room).is_some());
        for name in rooms.names() {
            // A room given up to another node is not taken back while it closes here.
            if !moved.contains_key(&name) {
                claimed.entry(name).or_insert_with(Claim::new).opened = true;
            }
        }
        drop(moved);
        let (mut renew, mut release) = (Vec::new(), Vec::new());
        claimed.retain(|room, claim| {
            if rooms.get(room).is_some() || claim.at.elapsed() < grace {
                renew.push(room.clone());
                true
            } else {
                release.push((room.clone(), *claim));
                false
            }
        });
        (renew, release)
    }

    /// Keeps a chat message in its room's stream (written in order by one task; a full queue
    /// drops it from Redis only, the room has it).
    pub fn save_chat(&self, room: &str, message: &ChatMessage) {
        if self.chat_history == 0 {
            return;
        }
        if self
            .chat_tx
            .try_send((room.to_string(), message.clone()))
            .is_err()
        {
            self.metrics.cluster_redis_errors.inc();
        }
    }

    async fn write_chat(self: Arc<Self>, mut queue: mpsc::Receiver<(String, ChatMessage)>) {
        let mut redis = self.redis.clone();
        while let Some((room, message)) = queue.recv().await {
            let json = serde_json::to_string(&message).unwrap_or_default();
            let kept = placement::keep_chat(
                &mut redis,
                &room,
                &self.me,
                &json,
                self.chat_history,
                CHAT_KEPT.as_millis() as u64,
            );
            match timed(kept).await {
                Ok(true) => {}
                // The room closed here, or another node holds it now: its history is theirs.
                Ok(false) => tracing::debug!(%room, "cluster: chat of a room not held here"),
                Err(e) => {
                    self.metrics.cluster_redis_errors.inc();
                    tracing::debug!(%room, "cluster: chat message not kept in redis: {e}");
                }
            }
        }
    }

    /// The chat history `room` has in Redis (oldest first), for a node that opens the room.
    pub async fn chat_history(&self, room: &str) -> Vec<ChatMessage> {
        if self.chat_history == 0 || !self.is_healthy() {
            return Vec::new();
        }
        let mut redis = self.redis.clone();
        let mut command = redis::cmd("XREVRANGE");
        command
            .arg(format!("{CHAT_KEY}{room}"))
            .arg("+")
            .arg("-")
            .arg("COUNT")
            .arg(self.chat_history);
        let read = command.query_async::<Vec<(String, HashMap<String, String>)>>(&mut redis);
        match timed(read).await {
            Ok(entries) => {
                let mut messages: Vec<ChatMessage> = entries
                    .into_iter()
                    .filter_map(|(_, fields)| serde_json::from_str(fields.get("m")?).ok())
                    .collect();
                messages.reverse();
                messages
            }
            Err(e) => {
                self.metrics.cluster_redis_errors.inc();
                tracing::warn!(%room, "cluster: the room's chat history could not be read: {e}");
                Vec::new()
            }
        }
    }

    fn entry(&self, media: &MediaEngine) -> NodeInfo {
        let now = Instant::now();
        let sent = packets_sent(&self.metrics);
        let packets_per_second = {
            let mut last = lock(&self.last_sent);
            let secs = now.duration_since(last.0).as_secs_f64();
            let rate = if secs > 0.0 {
                sent.saturating_sub(last.1) as f64 / secs
            } else {
                0.0
            };
            *last = (now, sent);
            rate
        };
        NodeInfo {
            id: self.me.clone(),
            instance: self.instance.clone(),
            url: self.url.clone(),
            signal_url: node::signal_url(&self.url),
            version: env!("CARGO_PKG_VERSION").into(),
            participants: self.metrics.participants.get().max(0) as usize,
            max_participants: self.max_participants,
            rooms: self.metrics.rooms.get().max(0) as usize,
            load: media.loads().into_iter().fold(0.0, f64::max),
            max_load: self.max_load,
            packets_per_second,
            draining: self.is_draining(),
            started_at_ms: self.started_at_ms,
            updated_at_ms: unix_ms(),
        }
    }

    /// Every live node's entry, read from Redis; ids whose entry expired are dropped from the
    /// set of nodes.
    async fn read_nodes(&self) -> Result<Vec<NodeInfo>, ClusterError> {
        let mut redis = self.redis.clone();
        let ids: Vec<String> = timed(redis.smembers(NODES_SET)).await?;
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let keys: Vec<String> = ids.iter().map(|id| format!("{NODE_KEY}{id}")).collect();
        let entries: Vec<Option<String>> =
            timed(redis::cmd("MGET").arg(&keys).query_async(&mut redis)).await?;
        let mut nodes = Vec::new();
        let mut gone = Vec::new();
        for (id, entry) in ids.into_iter().zip(entries) {
            match entry.and_then(|e| serde_json::from_str::<NodeInfo>(&e).ok()) {
                Some(info) => nodes.push(info),
                None => gone.push(id),
            }
        }
        if !gone.is_empty() {
            tracing::info!(nodes = ?gone, "cluster: nodes gone (their entries expired)");
            timed(redis.srem::<_, _, ()>(NODES_SET, &gone)).await?;
        }
        nodes.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(nodes)
    }

    /// The client for requests to other nodes' HTTP APIs.
    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// The other live nodes, as of the last refresh.
    pub fn others(&self) -> Vec<NodeInfo> {
        self.nodes
            .read()
            .map(|nodes| nodes.iter().filter(|n| n.id != self.me).cloned().collect())
            .unwrap_or_default()
    }

    /// The live node other than this one that hosts `room`, if one does.
    pub async fn host_of(&self, room: &str) -> Option<NodeInfo> {
        let mut redis = self.redis.clone();
        let key = format!("{}{room}", placement::ROOM_KEY);
        let host: Option<String> = match timed(redis.get(key)).await {
            Ok(host) => host,
            Err(e) => {
                self.metrics.cluster_redis_errors.inc();
                tracing::warn!(%room, "cluster: the room's node cannot be read: {e}");
                None
            }
        };
        let host = host.filter(|h| *h != self.me)?;
        self.others().into_iter().find(|n| n.id == host)
    }

    /// Keeps the nodes just read from Redis, for redirects, and shows how many there are.
    fn remember(&self, nodes: Vec<NodeInfo>) {
        self.metrics.cluster_nodes.set(nodes.len() as i64);
        if let Ok(mut cached) = self.nodes.write() {
            *cached = nodes;
        }
    }

    /// Forgets every room this node took, returning their names (to let go of in Redis).
    fn take_claims(&self) -> Vec<String> {
        lock(&self.claimed).drain().map(|(room, _)| room).collect()
    }

    /// Every live node, read now (the admin API).
    pub async fn nodes(&self) -> Result<Vec<NodeInfo>, ClusterError> {
        self.read_nodes().await.inspect_err(|_| {
            self.metrics.cluster_redis_errors.inc();
        })
    }

    /// Where a join for `room` goes: here when this node hosts it or takes it now (also when
    /// Redis cannot be asked), else the node that hosts it.
    pub async fn place(&self, room: &str) -> Host {
        if !self.is_healthy() {
            return self.here_without_redis(room);
        }
        let mut redis = self.redis.clone();
        match timed(placement::claim(&mut redis, room, &self.me, self.ttl_ms)).await {
            Ok(Holder::Here) => {
                lock(&self.moved).remove(room);
                let mut claimed = lock(&self.claimed);
                claimed
                    .entry(room.to_string())
                    .or_insert_with(Claim::new)
                    .at = Instant::now();
                Host::Here
            }
            Ok(Holder::Elsewhere { node, entry }) => {
                let url = serde_json::from_str::<NodeInfo>(&entry)
                    .map(|n| n.signal_url)
                    .unwrap_or_default();
                if url.is_empty() {
                    // An entry this node cannot read names no place to go.
                    self.metrics.cluster_redis_errors.inc();
                    tracing::warn!(%room, %node, "cluster: the room's node has no usable entry; serving it here");
                    return self.here_without_redis(room);
                }
                self.metrics
                    .cluster_redirects
                    .with_label_values(&["room_on_other_node"])
                    .inc();
                Host::Elsewhere { node, url }
            }
            Err(e) => {
                self.metrics.cluster_redis_errors.inc();
                tracing::warn!(%room, "cluster: room placement unknown, serving it here: {e}");
                self.here_without_redis(room)
            }
        }
    }

    /// Serves `room` here without a placement from Redis (Redis down, or no usable answer).
    fn here_without_redis(&self, room: &str) -> Host {
        lock(&self.moved).remove(room);
        Host::Here
    }

    /// Whether the last refresh reached Redis.
    fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    /// A participant joined `room` here: when the room closes, its chat goes too (a room
    /// can open and close between two refreshes).
    pub fn opened(&self, room: &str) {
        if let Some(claim) = lock(&self.claimed).get_mut(room) {
            claim.opened = true;
        }
    }

    /// A join for `room` was not served here after [`Cluster::place`] took it: let it go now
    /// unless the room is open here.
    pub async fn unplace(&self, room: &str, rooms: &Rooms) {
        if rooms.get(room).is_some() || !self.is_healthy() {
            return;
        }
        lock(&self.claimed).remove(room);
        let mut redis = self.redis.clone();
        if let Err(e) = timed(placement::release(
            &mut redis,
            &[room.to_string()],
            &self.me,
        ))
        .await
        {
            self.metrics.cluster_redis_errors.inc();
            tracing::warn!(%room, "cluster: could not let go of the room: {e}");
        }
    }

    /// The signaling URL of the node a client refused here should go to, counted under
    /// `reason`: the least-loaded other node that takes participants.
    pub fn redirect(&self, reason: &'static str) -> Option<String> {
        let nodes = self.nodes.read().ok()?;
        let target = node::least_loaded(&nodes, &self.me)?;
        self.metrics
            .cluster_redirects
            .with_label_values(&[reason])
            .inc();
        Some(target.signal_url.clone())
    }

    /// Starts draining: joins are sent elsewhere from now on, the entry says so at once, and
    /// every room is let go so the clients that move can take it on another node.
    pub async fn drain(&self, media: &MediaEngine) {
        self.draining.store(true, Ordering::Relaxed);
        self.metrics.cluster_draining.set(1);
        let rooms = self.take_claims();
        let json = serde_json::to_string(&self.entry(media)).unwrap_or_default();
        let mut redis = self.redis.clone();
        let written = async {
            placement::announce(&mut redis, &self.me, &json, self.ttl_ms).await?;
            placement::release(&mut redis, &rooms, &self.me).await
        };
        // Where the clients go is read now, not from the last refresh.
        let read = async {
            timed(written).await?;
            self.read_nodes().await
        };
        match read.await {
            Ok(nodes) => {
                self.remember(nodes);
                tracing::info!(rooms = rooms.len(), "cluster: draining; rooms let go");
            }
            Err(e) => {
                self.metrics.cluster_redis_errors.inc();
                tracing::warn!("cluster: draining, but redis was not told: {e}");
            }
        }
    }

    /// Takes this node out of Redis at shutdown (its entry and its rooms), so the others need
    /// not wait for its entry to expire.
    pub async fn leave(&self) {
        // A refresh under way must not write the entry back after it is removed.
        let refresher = self.refresher.lock().ok().and_then(|mut r| r.take());
        if let Some(refresher) = refresher {
            refresher.abort();
            let _ = refresher.await;
        }
        let rooms = self.take_claims();
        let mut redis = self.redis.clone();
        let key = format!("{NODE_KEY}{}", self.me);
        let removed = async {
            let mut pipe = redis::pipe();
            pipe.del(&key).ignore().srem(NODES_SET, &self.me).ignore();
            pipe.query_async::<()>(&mut redis).await?;
            placement::release(&mut redis, &rooms, &self.me).await
        };
        match timed(removed).await {
            Ok(()) => tracing::info!(node = %self.me, "cluster: node left"),
            Err(e) => tracing::warn!("cluster: could not remove this node from redis: {e}"),
        }
    }
}

/// The value behind `mutex`; one left by a thread that panicked holding it is whole (every
/// change to these maps is one call).
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// A Redis request bounded by [`REDIS_TIMEOUT`].
async fn timed<T>(
    request: impl std::future::Future<Output = redis::RedisResult<T>>,
) -> Result<T, ClusterError> {
    match tokio::time::timeout(REDIS_TIMEOUT, request).await {
        Ok(result) => Ok(result?),
        Err(_) => Err(ClusterError::Timeout),
    }
}

fn packets_sent(metrics: &Metrics) -> u64 {
    ["audio", "video"]
        .iter()
        .map(|kind| metrics.rtp_packets_sent.with_label_values(&[*kind]).get())
        .sum()
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
