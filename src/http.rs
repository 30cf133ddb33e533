//! The HTTP side: the axum router (/ws, /metrics, /healthz, /api/*, the web client) over the
//! shared [`AppState`] (built in `app.rs`), and the running `Server` with its graceful shutdown.
//!
//! Handlers stay small: extract, call the domain, map the error to a status and a JSON body
//! `{code, message}` with the same stable codes signaling uses.

use std::net::SocketAddr;
use std::time::Duration;

use axum::extract::{Path, Query, State, WebSocketUpgrade};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get};
use axum::{Json, Router};
use serde::Deserialize;

use crate::admission::Admission;
use crate::app::AppState;
use crate::auth::{AuthError, Claims, Grants, MAX_NAME_BYTES};
use crate::config::Config;
use crate::model::LeaveReason;
use crate::signal::session;

/// Bytes a WebSocket reads ahead. tungstenite's 128 KiB default made every idle, never-joined
/// socket cost 137 KiB; signaling frames are small (SDP, the large one, still reads fine).
const WS_READ_BUFFER: usize = 8 * 1024;

/// How long shutdown waits for sessions to say goodbye before the process goes on without them.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// Lifetime of tokens the dev-mode page mints.
const DEV_TOKEN_TTL: Duration = Duration::from_secs(6 * 3600);

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/ws", get(ws))
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .route("/api/nodes", get(list_nodes))
        .route("/api/rooms", get(list_rooms))
        .route("/api/rooms/{room}", get(room_detail))
        .route("/api/rooms/{room}/participants/{identity}", delete(kick))
        .route("/api/dev/token", get(dev_token))
        .route("/", get(web_file))
        .route("/{*path}", get(web_file))
        .with_state(state)
}

/// An HTTP error: status plus the JSON body `{code, message}`.
struct ApiError(StatusCode, &'static str, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({ "code": self.1, "message": self.2 });
        (self.0, Json(body)).into_response()
    }
}

impl From<AuthError> for ApiError {
    fn from(e: AuthError) -> Self {
        match e {
            AuthError::NotAdmin => {
                ApiError(StatusCode::FORBIDDEN, "permission_denied", e.to_string())
            }
            AuthError::Expired => {
                ApiError(StatusCode::UNAUTHORIZED, "token_expired", e.to_string())
            }
            AuthError::Missing | AuthError::NotYetValid | AuthError::Invalid(_) => {
                ApiError(StatusCode::UNAUTHORIZED, "unauthorized", e.to_string())
            }
        }
    }
}

#[derive(Deserialize)]
struct WsParams {
    token: Option<String>,
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
}

/// The signaling endpoint. A token in `?token=` or `Authorization: Bearer` is checked before the
/// upgrade (401 with a reason); without one, the client must send it in `join`.
async fn ws(
    State(app): State<AppState>,
    Query(params): Query<WsParams>,
    headers: HeaderMap,
    upgrade: WebSocketUpgrade,
) -> Result<Response, ApiError> {
    if app.shutdown.is_cancelled() {
        return Err(ApiError(
            StatusCode::SERVICE_UNAVAILABLE,
            "server_shutdown",
            "the server is shutting down".into(),
        ));
    }
    let token = params.token.or_else(|| {
        bearer(&headers)
            .and_then(|h| h.strip_prefix("Bearer "))
            .map(str::to_string)
    });
    let preauth: Option<Claims> = match token {
        Some(token) => Some(app.auth.verify_participant(&token)?),
        None => None,
    };
    // Frames over max_frame_bytes (max_sdp_bytes for offers and answers) are refused by our own
    // check with close code 1009; the transport limit above it only stops a client from making us buffer megabytes first.
    let signal = &app.config.signal;
    let transport_limit = (signal.max_frame_bytes * 4)
        .max(1024 * 1024)
        .max(signal.max_sdp_bytes);
    let sessions = app.sessions.clone();
    let context = app.session.clone();
    Ok(upgrade
        .read_buffer_size(WS_READ_BUFFER)
        .max_message_size(transport_limit)
        .max_frame_size(transport_limit)
        .on_upgrade(move |socket| sessions.track_future(session::run(socket, context, preauth))))
}

async fn healthz(State(app): State<AppState>) -> Response {
    if app.shutdown.is_cancelled() {
        return (StatusCode::SERVICE_UNAVAILABLE, "shutting down\n").into_response();
    }
    // A draining node: the load balancer must stop sending clients here.
    if app.cluster.as_ref().is_some_and(|c| c.is_draining()) {
        return (StatusCode::SERVICE_UNAVAILABLE, "draining\n").into_response();
    }
    "ok\n".into_response()
}

/// The cluster's nodes as Redis has them (admin): each node's address, load and state. A
/// single node lists nothing and says `cluster: false`.
async fn list_nodes(State(app): State<AppState>, headers: HeaderMap) -> Result<Response, ApiError> {
    app.auth.verify_admin(bearer(&headers))?;
    let Some(cluster) = &app.cluster else {
        return Ok(Json(serde_json::json!({ "cluster": false, "nodes": [] })).into_response());
    };
    let nodes = cluster.nodes().await.map_err(|e| {
        ApiError(
            StatusCode::SERVICE_UNAVAILABLE,
            "cluster_unavailable",
            format!("the cluster's Redis cannot be read: {e}"),
        )
    })?;
    Ok(Json(serde_json::json!({
        "cluster": true,
        "node": cluster.node_id(),
        "nodes": nodes,
    }))
    .into_response())
}

async fn metrics(State(app): State<AppState>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        app.metrics.render(),
    )
        .into_response()
}

#[derive(Deserialize)]
struct ListParams {
    /// `node`: this node's rooms only, never another node's (what nodes ask each other).
    scope: Option<String>,
}

/// The rooms and their participant counts. In cluster mode every node's, each with the `node`
/// that hosts it (asked of each node, with the caller's token); nodes that did not answer are
/// listed in `unreachable`.
async fn list_rooms(
    State(app): State<AppState>,
    Query(params): Query<ListParams>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    app.auth.verify_admin(bearer(&headers))?;
    let local = app.rooms.list();
    let cluster = app
        .cluster
        .as_ref()
        .filter(|_| params.scope.as_deref() != Some("node"));
    let Some(cluster) = cluster else {
        return Ok(Json(serde_json::json!({ "rooms": local })).into_response());
    };
    let tagged = |mut room: serde_json::Value, node: &str| {
        room["node"] = node.into();
        room
    };
    let mut rooms: Vec<serde_json::Value> = local
        .iter()
        .filter_map(|r| serde_json::to_value(r).ok())
        .map(|r| tagged(r, cluster.node_id()))
        .collect();
    let asks = cluster.others().into_iter().map(|node| {
        let request = cluster
            .http()
            .get(format!("{}/api/rooms?scope=node", node.url))
            .headers(authorization(&headers));
        async move {
            let answer = async {
                let response = request.send().await?.error_for_status()?;
                response.json::<serde_json::Value>().await
            };
            (node.id, answer.await)
        }
    });
    let mut unreachable = Vec::new();
    for (node, answer) in futures_util::future::join_all(asks).await {
        match answer {
            Ok(listed) => rooms.extend(
                listed["rooms"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|r| tagged(r.clone(), &node)),
            ),
            Err(e) => {
                tracing::warn!(%node, "cluster: the node did not list its rooms: {e}");
                unreachable.push(serde_json::json!({ "node": node, "error": e.to_string() }));
            }
        }
    }
    rooms.sort_by(|a, b| a["name"].as_str().cmp(&b["name"].as_str()));
    Ok(Json(serde_json::json!({ "rooms": rooms, "unreachable": unreachable })).into_response())
}

/// The caller's `Authorization` header, to pass on to another node.
fn authorization(headers: &HeaderMap) -> reqwest::header::HeaderMap {
    let mut out = reqwest::header::HeaderMap::new();
    if let Some(value) = headers.get(header::AUTHORIZATION) {
        out.insert(reqwest::header::AUTHORIZATION, value.clone());
    }
    out
}

/// Cluster mode, for a room not open here: the answer of the node that hosts it to the same
/// admin request (`path` under its base URL). `None` when no other node hosts it.
async fn ask_host(
    app: &AppState,
    room: &str,
    method: reqwest::Method,
    path: &[&str],
    headers: &HeaderMap,
) -> Option<Result<Response, ApiError>> {
    let cluster = app.cluster.as_ref()?;
    let host = cluster.host_of(room).await?;
    // A request one node passed on is answered by the node it reached, never passed again
    // (a placement that changes under it must not bounce it between nodes).
    let unreachable = |e: String| {
        ApiError(
            StatusCode::BAD_GATEWAY,
            "node_unreachable",
            format!(
                "room `{room}` is on node {}, which did not answer: {e}",
                host.id
            ),
        )
    };
    let mut url = match reqwest::Url::parse(&host.url) {
        Ok(url) => url,
        Err(e) => return Some(Err(unreachable(e.to_string()))),
    };
    if let Ok(mut segments) = url.path_segments_mut() {
        segments.pop_if_empty().extend(path);
    }
    url.set_query(Some("scope=node"));
    let request = cluster
        .http()
        .request(method, url)
        .headers(authorization(headers));
    let answer = async {
        let response = request.send().await?;
        let status = response.status().as_u16();
        let body = response.bytes().await?;
        Ok::<_, reqwest::Error>((status, body))
    };
    Some(match answer.await {
        Ok((status, body)) => Ok((
            StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY),
            [(header::CONTENT_TYPE, "application/json")],
            body,
        )
            .into_response()),
        Err(e) => Err(unreachable(e.to_string())),
    })
}

fn room_not_found(room: &str) -> ApiError {
    ApiError(
        StatusCode::NOT_FOUND,
        "room_not_found",
        format!("no room named `{room}`"),
    )
}

async fn room_detail(
    State(app): State<AppState>,
    Path(room): Path<String>,
    Query(params): Query<ListParams>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    app.auth.verify_admin(bearer(&headers))?;
    let Some(r) = app.rooms.get(&room) else {
        if params.scope.as_deref() == Some("node") {
            return Err(room_not_found(&room));
        }
        let path = ["api", "rooms", room.as_str()];
        return match ask_host(&app, &room, reqwest::Method::GET, &path, &headers).await {
            Some(answer) => answer,
            None => Err(room_not_found(&room)),
        };
    };
    let tracks = app.media.forwarding(r.name()).await;
    Ok(Json(serde_json::json!({
        "name": r.name(),
        "node": app.cluster.as_ref().map(|c| c.node_id()),
        "participants": r.participants(),
        "tracks": tracks,
    }))
    .into_response())
}

/// Removes a participant: its session gets `leave{reason:"kicked"}`, the room sees it leave.
async fn kick(
    State(app): State<AppState>,
    Path((room, identity)): Path<(String, String)>,
    Query(params): Query<ListParams>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    app.auth.verify_admin(bearer(&headers))?;
    let Some(r) = app.rooms.get(&room) else {
        if params.scope.as_deref() == Some("node") {
            return Err(room_not_found(&room));
        }
        let path = ["api", "rooms", &room, "participants", &identity];
        return match ask_host(&app, &room, reqwest::Method::DELETE, &path, &headers).await {
            Some(answer) => answer,
            None => Err(room_not_found(&room)),
        };
    };
    let participant = r.participant(&identity).ok_or_else(|| {
        ApiError(
            StatusCode::NOT_FOUND,
            "participant_not_found",
            format!("no participant `{identity}` in room `{room}`"),
        )
    })?;
    participant.end(LeaveReason::Kicked);
    app.rooms.leave(&r, participant.sid(), LeaveReason::Kicked);
    tracing::info!(room, identity, "participant kicked");
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[derive(Deserialize)]
struct DevTokenParams {
    room: Option<String>,
    identity: Option<String>,
    name: Option<String>,
}

/// Dev mode only: mints a participant token so the demo page can join without a backend.
async fn dev_token(
    State(app): State<AppState>,
    Query(p): Query<DevTokenParams>,
) -> Result<Response, ApiError> {
    if !app.config.dev {
        return Err(ApiError(
            StatusCode::NOT_FOUND,
            "not_found",
            "token minting is only available with `sfu serve --dev`".into(),
        ));
    }
    let room = p.room.unwrap_or_else(|| crate::config::DEV_ROOM.into());
    let name = p.name.filter(|n| !n.trim().is_empty());
    let identity = p
        .identity
        .filter(|i| !i.trim().is_empty())
        .or_else(|| name.clone())
        .unwrap_or_else(|| format!("guest-{}", rand::random::<u16>()));
    for (key, value) in [("room", &room), ("identity", &identity)] {
        if value.is_empty() || value.len() > MAX_NAME_BYTES {
            return Err(ApiError(
                StatusCode::BAD_REQUEST,
                "bad_request",
                format!("`{key}` must be 1 to {MAX_NAME_BYTES} bytes"),
            ));
        }
    }
    let token = app.auth.participant_token(
        &room,
        &identity,
        name.as_deref(),
        Grants::default(),
        DEV_TOKEN_TTL,
    )?;
    Ok(
        Json(serde_json::json!({ "token": token, "room": room, "identity": identity }))
            .into_response(),
    )
}

/// The browser client (web/), built into the binary so one file is the whole server.
const WEB_FILES: &[(&str, &str, &str)] = &[
    (
        "index.html",
        "text/html; charset=utf-8",
        include_str!("../web/index.html"),
    ),
    (
        // Browsers refuse to run a module script served with a non-JavaScript type.
        "sfu-client.js",
        "text/javascript; charset=utf-8",
        include_str!("../web/sfu-client.js"),
    ),
    (
        "sfu.js",
        "text/javascript; charset=utf-8",
        include_str!("../web/sfu.js"),
    ),
    (
        // The SDK's types, for editors and TypeScript apps that import sfu.js from here.
        "sfu.d.ts",
        "application/typescript; charset=utf-8",
        include_str!("../web/sfu.d.ts"),
    ),
    (
        "favicon.svg",
        "image/svg+xml",
        include_str!("../web/favicon.svg"),
    ),
    (
        // Browsers ask for /favicon.ico on their own; an SVG served as such is shown too.
        "favicon.ico",
        "image/svg+xml",
        include_str!("../web/favicon.svg"),
    ),
];

async fn web_file(path: Option<Path<String>>) -> Response {
    let path = path.map(|Path(p)| p).unwrap_or_default();
    let path = if path.is_empty() {
        "index.html"
    } else {
        path.as_str()
    };
    match WEB_FILES.iter().find(|(name, _, _)| *name == path) {
        // Any origin may load these public files: an app elsewhere imports /sfu.js as a module,
        // and browsers fetch module scripts (and their imports) in CORS mode.
        Some((_, content_type, body)) => (
            [
                (header::CONTENT_TYPE, *content_type),
                (header::ACCESS_CONTROL_ALLOW_ORIGIN, "*"),
            ],
            *body,
        )
            .into_response(),
        None => ApiError(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no file `/{path}`"),
        )
        .into_response(),
    }
}

/// A server that is running, with the address it listens on.
pub struct Server {
    pub state: AppState,
    pub local_addr: SocketAddr,
    handle: axum_server::Handle<SocketAddr>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Server {
    /// Binds and starts serving. Port 0 in the config picks a free port (tests use it).
    pub async fn start(config: Config) -> anyhow::Result<Self> {
        // One TLS crypto provider for the process (HTTPS), chosen here rather than left to
        // whichever crate features happen to be on.
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let addr = SocketAddr::new(config.http.bind, config.http.port);
        let listener = std::net::TcpListener::bind(addr)
            .map_err(|e| anyhow::anyhow!("cannot listen on {addr} (http.bind, http.port): {e}"))?;
        listener.set_nonblocking(true)?;
        let local_addr = listener.local_addr()?;
        let tls = match (&config.http.tls_cert, &config.http.tls_key) {
            (Some(cert), Some(key)) => Some(
                axum_server::tls_rustls::RustlsConfig::from_pem_file(cert, key)
                    .await
                    .map_err(|e| anyhow::anyhow!("http.tls_cert / http.tls_key: {e}"))?,
            ),
            _ => None,
        };
        raise_open_file_limit();
        let http = config.http.clone();
        let state = AppState::new(config, local_addr.port()).await?;
        let app = router(state.clone()).into_make_service();
        let handle = axum_server::Handle::new();
        let refused = state.metrics.http_connections_refused.clone();
        let admission = |plain_http| {
            Admission::new(
                http.max_connections,
                http.max_connections_per_ip,
                plain_http,
                refused.clone(),
            )
        };
        let task = match tls {
            Some(tls) => {
                let mut server = axum_server::from_tcp_rustls(listener, tls)?
                    .map(|tls| tls.acceptor(admission(false)))
                    .handle(handle.clone());
                limit_slow_clients(server.http_builder(), http.header_timeout);
                tokio::spawn(async move { server.serve(app).await })
            }
            None => {
                let mut server = axum_server::from_tcp(listener)?
                    .acceptor(admission(true))
                    .handle(handle.clone());
                limit_slow_clients(server.http_builder(), http.header_timeout);
                tokio::spawn(async move { server.serve(app).await })
            }
        };
        Ok(Self {
            state,
            local_addr,
            handle,
            task,
        })
    }

    /// Cluster mode: drains the node (SIGTERM). Joins are sent to other nodes, `/healthz`
    /// answers 503, every joined client is told to move (`leave{reason:"node_draining", url}`);
    /// returns when no participant is left or after `cluster.drain_timeout`. A single node
    /// returns at once.
    pub async fn drain(&self) {
        let state = &self.state;
        let Some(cluster) = &state.cluster else {
            return;
        };
        tracing::info!("draining: telling every client to move to another node");
        cluster.drain(&state.media).await;
        state.session.drain.cancel();
        let timeout = state.config.cluster.drain_timeout;
        let empty = async {
            while state.metrics.participants.get() > 0 {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        };
        match tokio::time::timeout(timeout, empty).await {
            Ok(()) => tracing::info!("drained: no participant left"),
            Err(_) => tracing::warn!(
                participants = state.metrics.participants.get(),
                "cluster.drain_timeout passed with participants still here"
            ),
        }
    }

    /// Says goodbye to every client (`leave{reason:"server_shutdown"}`), then stops serving.
    pub async fn shutdown(self) {
        let state = &self.state;
        state.shutdown.cancel();
        state.rooms.end_all(LeaveReason::ServerShutdown);
        state.sessions.close();
        if tokio::time::timeout(SHUTDOWN_GRACE, state.sessions.wait())
            .await
            .is_err()
        {
            tracing::warn!("some signaling sessions did not close in time");
        }
        self.handle.graceful_shutdown(Some(Duration::from_secs(1)));
        let _ = self.task.await;
        if let Some(turn) = &state.session.turn {
            turn.close().await;
        }
        if let Some(cluster) = &state.cluster {
            cluster.leave().await;
        }
        let state = self.state.clone();
        let _ = tokio::task::spawn_blocking(move || state.media.shutdown()).await;
    }
}

/// Slow clients: a request's headers must arrive within `timeout` (slowloris connections that
/// trickle a header byte now and then are closed), and idle keep-alive connections close too.
fn limit_slow_clients(
    builder: &mut hyper_util::server::conn::auto::Builder<hyper_util::rt::TokioExecutor>,
    timeout: Duration,
) {
    builder
        .http1()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(timeout);
}

/// Raises this process's open-file limit to its hard limit: every client costs a socket, and
/// the usual soft limit of 1024 let 1,100 idle connections starve everyone else. The headroom
/// is in /metrics (`sfu_process_open_fds`, `sfu_process_max_fds`).
fn raise_open_file_limit() {
    #[cfg(unix)]
    {
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit and setrlimit only read and write the struct passed by pointer.
        unsafe {
            if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0
                && limit.rlim_cur < limit.rlim_max
            {
                let wanted = libc::rlimit {
                    rlim_cur: limit.rlim_max,
                    rlim_max: limit.rlim_max,
                };
                if libc::setrlimit(libc::RLIMIT_NOFILE, &wanted) != 0 {
                    tracing::warn!(
                        soft = limit.rlim_cur,
                        "could not raise the open-file limit; clients past it are refused"
                    );
                }
            }
        }
    }
}
