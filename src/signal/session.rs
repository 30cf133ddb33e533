//! One WebSocket connection, one participant: reads requests, answers each, relays room events.
//!
//! The session owns the socket. It checks every frame (size, JSON, type, fields, rate), answers
//! every request exactly once, and forwards what the room queues for this participant. However it
//! ends (leave, kick, replace, shutdown, resume window over), it sends `leave{reason}` when the
//! socket is still there and takes the participant out of its room.
//!
//! When a joined participant's socket dies, the session outlives it for `signal.resume_window`:
//! the participant stays in the room, what it is sent is logged, and a new connection presenting
//! the resume token takes the session over and gets what it missed ([`super::resume`]).

use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use axum::extract::ws::{close_code, CloseFrame, Message, Utf8Bytes, WebSocket};
use bytes::Bytes;
use futures_util::stream::StreamExt;
use futures_util::SinkExt;
use rand::distr::{Alphanumeric, SampleString};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::auth::{Auth, AuthError, Claims, MAX_NAME_BYTES};
use crate::cluster::{Cluster, Host};
use crate::config::Config;
use crate::metrics::Metrics;
use crate::model::{
    ChatSender, LeaveReason, ParticipantInfo, Permissions, RoomEvent, MAX_METADATA_BYTES,
};
use crate::room::participant::OUTBOUND_QUEUE;
use crate::room::rate_limit::TokenBucket;
use crate::room::{Encoded, Participant, RoomError, RoomRef, Rooms, SessionEnd};
use crate::rtc::sdp::{ClientAnswer, ClientOffer};
use crate::rtc::{
    Command, EventSink, MediaEngine, MediaError, MediaEvent, Placement, QualityPreference,
    MEDIA_EVENT_QUEUE,
};
use crate::signal::protocol::{
    encode, parse_request, ErrorCode, IceServer, Request, ServerInfo, ServerMessage,
    PROTOCOL_VERSION,
};
use crate::signal::resume::{Handover, ReplayLog, ResumeTokens, Sink, Stream};
use crate::turn_server::Turn;

/// Publisher offers a client may send per second, and in a burst above that: a browser offers
/// when its tracks change, not in a loop.
const OFFERS_PER_SECOND: f64 = 1.0;
/// Longest track `cid`: an msid track id is at most 64 characters (RFC 8830).
const MAX_CID_BYTES: usize = 64;
const OFFER_BURST: u32 = 5;

/// What a session needs of the server: the parts it talks to, and nothing of HTTP. The app
/// builds one and hands every session a reference.
pub struct Context {
    pub config: Arc<Config>,
    pub auth: Arc<Auth>,
    pub rooms: Arc<Rooms>,
    pub metrics: Arc<Metrics>,
    pub media: Arc<MediaEngine>,
    /// Cancelled once, when the server starts shutting down.
    pub shutdown: CancellationToken,
    /// The resume tokens of joined sessions.
    pub resumes: ResumeTokens,
    /// The embedded TURN server, when enabled: each participant gets a credential of its own.
    pub turn: Option<Arc<Turn>>,
    /// This node's part in a cluster, or `None` for a single node.
    pub cluster: Option<Arc<Cluster>>,
    /// Cancelled when a cluster node starts draining: every joined session tells its client to
    /// move (`leave` with reason `node_draining` and the `url` of another node).
    pub drain: CancellationToken,
}

/// Why the socket could not take a message: the session ends without a goodbye, or waits for a
/// resume.
struct SocketGone;

/// Why a resume did not take.
enum TakeOver {
    /// The client was told it cannot resume; the participant leaves.
    Refused,
    /// The new socket died too.
    Lost,
}

/// The session's state once it has joined.
struct Joined {
    room: RoomRef,
    me: ChatSender,
    permissions: Permissions,
    /// The media worker hosting the room (this participant's place on it).
    media: Placement,
}

/// What a request did to the session.
enum Next {
    Continue,
    /// The client asked to leave; the answer was sent.
    Leave,
    /// The client presented a resume token: this socket goes to the session behind it.
    HandOver {
        session: mpsc::Sender<Handover>,
        request_id: Option<String>,
        received: u64,
    },
}

struct Session {
    app: Arc<Context>,
    /// The socket's sending half; `None` while a joined session waits to be resumed.
    sink: Option<Sink>,
    /// Everything sent from `joined` on, numbered, for a resume.
    log: ReplayLog,
    /// The token that resumes this session now (joined, and resume enabled).
    resume_token: Option<String>,
    /// Where a connection presenting the token sends its socket.
    handover: mpsc::Sender<Handover>,
    /// False once something was lost that a resume could not give back.
    resumable: bool,
    /// A token checked before the upgrade (`/ws?token=`), used when `join` carries none.
    preauth: Option<Claims>,
    joined: Option<Joined>,
    end: Arc<SessionEnd>,
    outbound_tx: mpsc::Sender<Encoded>,
    limiter: TokenBucket,
    /// Publisher offers: each costs its media worker time in proportion to its m-lines.
    offer_limiter: TokenBucket,
    /// Given to the media worker at join; events come back on the session's receiver.
    media_events: EventSink,
}

/// Runs one signaling session to its end.
pub async fn run(socket: WebSocket, app: Arc<Context>, preauth: Option<Claims>) {
    let metrics = app.metrics.clone();
    metrics.signal_connections.inc();
    let (sink, stream) = socket.split();
    let mut stream = Some(stream);
    let (outbound_tx, mut outbound_rx) = mpsc::channel::<Encoded>(OUTBOUND_QUEUE);
    let (media_events, mut media_rx, media_overflow) =
        EventSink::channel(MEDIA_EVENT_QUEUE, &metrics);
    let (handover, mut handover_rx) = mpsc::channel::<Handover>(1);
    let now = Instant::now();
    let signal = &app.config.signal;
    let mut session = Session {
        limiter: TokenBucket::new(signal.rate_per_second, signal.burst, now),
        offer_limiter: TokenBucket::new(OFFERS_PER_SECOND, OFFER_BURST, now),
        app: app.clone(),
        sink: Some(sink),
        log: ReplayLog::default(),
        resume_token: None,
        handover,
        resumable: true,
        preauth,
        joined: None,
        end: Arc::new(SessionEnd::default()),
        outbound_tx,
        media_events,
    };
    let join_deadline = tokio::time::sleep(signal.join_timeout);
    tokio::pin!(join_deadline);
    // Armed when the socket of a joined session dies.
    let resume_deadline = tokio::time::sleep(signal.resume_window);
    tokio::pin!(resume_deadline);
    let mut ping = tokio::time::interval(signal.ping_interval);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_heard = Instant::now();
    let end = session.end.clone();
    // Whether this session holds a socket that `signal_connections` counts.
    let mut counted = true;

    // `Some(reason)`: tell the client why (if its socket is there) and close; `None`: the
    // socket is gone and the session is not kept for a resume.
    let goodbye: Option<LeaveReason> = loop {
        // What ended the socket, if something did in this turn.
        let lost = tokio::select! {
            biased;
            _ = app.shutdown.cancelled() => break Some(LeaveReason::ServerShutdown),
            _ = app.drain.cancelled(), if session.joined.is_some() => break Some(LeaveReason::NodeDraining),
            _ = end.ended() => break Some(end.reason().unwrap_or(LeaveReason::Disconnected)),
            // The media worker never waits for a session: one that let its events pile up
            // is ended like a slow consumer of room events.
            _ = media_overflow.cancelled() => break Some(LeaveReason::SlowConsumer),
            _ = &mut join_deadline, if session.joined.is_none() => break Some(LeaveReason::JoinTimeout),
            _ = &mut resume_deadline, if session.sink.is_none() => {
                metrics.signal_resumes.with_label_values(&["expired"]).inc();
                tracing::info!("signaling client did not resume within resume_window");
                break Some(LeaveReason::Disconnected);
            }
            Some(new) = handover_rx.recv(), if session.joined.is_some() => {
                if !counted {
                    metrics.signal_connections.inc();
                    counted = true;
                }
                stream = Some(new.stream);
                last_heard = Instant::now();
                match session.take_over(new.sink, new.request_id, new.received).await {
                    Ok(()) => false,
                    Err(TakeOver::Refused) => break Some(LeaveReason::Disconnected),
                    Err(TakeOver::Lost) => true,
                }
            }
            Some(event) = outbound_rx.recv() => session.send_encoded(&event).await.is_err(),
            Some(event) = media_rx.recv() => match session.on_media_event(event).await {
                Ok(Next::Leave) => break Some(LeaveReason::MediaFailed),
                Ok(_) => false,
                Err(SocketGone) => true,
            },
            frame = next_frame(&mut stream) => {
                last_heard = Instant::now();
                match frame {
                    Some(Ok(Message::Text(text))) => match session.on_text(&text).await {
                        Ok(Next::Continue) => false,
                        Ok(Next::Leave) => break Some(LeaveReason::ClientLeft),
                        Ok(Next::HandOver { session: to, request_id, received }) => {
                            match session.hand_over(to, &mut stream, request_id, received).await {
                                Ok(()) => break None,
                                Err(SocketGone) => true,
                            }
                        }
                        Err(SocketGone) => true,
                    },
                    Some(Ok(Message::Binary(_))) => {
                        let reply = ServerMessage::error(
                            ErrorCode::BadRequest,
                            "binary frames are not supported; send JSON text",
                        );
                        session.send(&reply, None).await.is_err()
                    }
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => false,
                    // A client that closes its socket means to go: no resume is waited for.
                    Some(Ok(Message::Close(_))) => break None,
                    None => true,
                    Some(Err(e)) => {
                        tracing::debug!(error = %e, "websocket read failed");
                        if let Some((code, reason)) = close_for(e) {
                            session.close(code, reason).await;
                        }
                        true
                    }
                }
            }
            _ = ping.tick(), if session.sink.is_some() => {
                if last_heard.elapsed() > app.config.signal.ping_timeout {
                    tracing::info!("signaling client silent past ping_timeout, disconnecting");
                    true
                } else {
                    session.write(Message::Ping(Default::default())).await.is_err()
                }
            }
        };
        if lost {
            // The socket died (or, for a session waiting to be resumed, its log overflowed).
            stream = None;
            let had_socket = session.sink.take().is_some();
            if !(had_socket && session.resumable()) {
                break None;
            }
            tracing::info!("signaling socket lost; the participant waits for a resume");
            metrics.signal_connections.dec();
            counted = false;
            resume_deadline
                .as_mut()
                .reset(tokio::time::Instant::now() + app.config.signal.resume_window);
        }
    };

    let reason = goodbye.unwrap_or(LeaveReason::Disconnected);
    // Cluster mode: where a client that must move goes.
    let move_to = match (reason, &app.cluster) {
        (LeaveReason::NodeDraining, Some(cluster)) => cluster.redirect("node_draining"),
        (LeaveReason::RoomMoved, Some(cluster)) => session
            .joined
            .as_ref()
            .and_then(|j| cluster.moved_to(j.room.name())),
        _ => None,
    };
    if reason == LeaveReason::SlowConsumer {
        metrics.signal_slow_consumers.inc();
    }
    if let Some(token) = session.resume_token.take() {
        app.resumes.revoke(&token);
    }
    if let Some(joined) = session.joined.take() {
        let leave = Command::Leave {
            participant: joined.me.sid.clone(),
        };
        if let Err(e) = joined.media.handle.send(leave).await {
            tracing::warn!(
                room = joined.room.name(),
                "media worker did not take the leave: {e}"
            );
        }
        app.rooms.leave(&joined.room, &joined.me.sid, reason);
        tracing::info!(room = joined.room.name(), identity = %joined.me.identity, ?reason, "participant left");
    }
    if goodbye.is_some() && session.sink.is_some() {
        // The client's own `leave` was answered already.
        if reason != LeaveReason::ClientLeft {
            let _ = session
                .send(
                    &ServerMessage::Leave {
                        reason,
                        url: move_to,
                    },
                    None,
                )
                .await;
        }
        session.close(close_code::NORMAL, "").await;
    }
    if counted {
        metrics.signal_connections.dec();
    }
}

impl Session {
    async fn send(
        &mut self,
        message: &ServerMessage,
        request_id: Option<&str>,
    ) -> Result<(), SocketGone> {
        if let ServerMessage::Error { code, .. } = message {
            self.app
                .metrics
                .signal_errors
                .with_label_values(&[code.as_str()])
                .inc();
        }
        self.app
            .metrics
            .signal_messages_sent
            .with_label_values(&[message.kind()])
            .inc();
        let text = encode(message, request_id);
        // `joined` carries the first resume token: a client that can resume has it.
        let replayable = !matches!(message, ServerMessage::Joined { .. });
        self.deliver(text.into(), replayable).await
    }

    /// Sends one message. Once joined, every message is logged with its number first, and a
    /// session without a socket keeps it there for the client's resume (a message that is
    /// not `replayable` is numbered, its text not kept).
    async fn deliver(&mut self, text: Utf8Bytes, replayable: bool) -> Result<(), SocketGone> {
        if self.joined.is_none() {
            return self.write(Message::Text(text)).await;
        }
        let now = Instant::now();
        let logged = if replayable {
            self.log.push(text.clone(), now)
        } else {
            self.log.push_unreplayable(now)
        };
        let seq = match logged {
            Ok(seq) => seq,
            Err(e) => {
                tracing::info!("signaling client cannot resume: {e}");
                self.resumable = false;
                return Err(SocketGone);
            }
        };
        if self.sink.is_none() {
            return Ok(());
        }
        self.write(Message::Text(text)).await?;
        self.log.written(seq);
        Ok(())
    }

    /// Whether the socket's loss leaves the participant waiting for a resume.
    fn resumable(&self) -> bool {
        self.resumable && self.joined.is_some() && self.resume_token.is_some()
    }

    /// Takes over a new socket for this session: sends what the client missed, then `resumed`
    /// with a new token.
    async fn take_over(
        &mut self,
        sink: Sink,
        request_id: Option<String>,
        received: u64,
    ) -> Result<(), TakeOver> {
        // An old socket still there (the client saw it die first) is dropped, unannounced.
        self.sink = Some(sink);
        let missed = match self.log.after(received) {
            Ok(missed) => missed,
            Err(e) => {
                let message = format!("this session cannot be resumed: {e}; join again");
                return match self.refuse_resume(message, request_id.as_deref()).await {
                    Ok(_) => Err(TakeOver::Refused),
                    Err(SocketGone) => Err(TakeOver::Lost),
                };
            }
        };
        let replayed = missed.len() as u64;
        for (seq, text) in missed {
            self.write(Message::Text(text))
                .await
                .map_err(|SocketGone| TakeOver::Lost)?;
            self.log.written(seq);
        }
        if let Some(old) = self.resume_token.take() {
            self.app.resumes.revoke(&old);
        }
        let token = self.app.resumes.issue(self.handover.clone());
        self.resume_token = Some(token.clone());
        self.app
            .metrics
            .signal_resumes
            .with_label_values(&["resumed"])
            .inc();
        if let Some(joined) = &self.joined {
            tracing::info!(room = joined.room.name(), identity = %joined.me.identity, replayed, "participant resumed");
        }
        let reply = ServerMessage::Resumed {
            resume_token: token,
            replayed,
        };
        self.send(&reply, request_id.as_deref())
            .await
            .map_err(|SocketGone| TakeOver::Lost)
    }

    /// Gives this connection's socket to the session behind a resume token. On failure the
    /// socket stays here and the client is told.
    async fn hand_over(
        &mut self,
        to: mpsc::Sender<Handover>,
        stream: &mut Option<Stream>,
        request_id: Option<String>,
        received: u64,
    ) -> Result<(), SocketGone> {
        let (Some(sink), Some(read)) = (self.sink.take(), stream.take()) else {
            return Err(SocketGone);
        };
        let handover = Handover {
            sink,
            stream: read,
            request_id,
            received,
        };
        match to.send(handover).await {
            Ok(()) => Ok(()),
            Err(mpsc::error::SendError(back)) => {
                self.sink = Some(back.sink);
                *stream = Some(back.stream);
                self.refuse_resume(
                    "that session has ended; join again",
                    back.request_id.as_deref(),
                )
                .await
                .map(|_| ())
            }
        }
    }

    /// Answers a `resume` that cannot be honoured.
    async fn refuse_resume(
        &mut self,
        message: impl Into<String>,
        request_id: Option<&str>,
    ) -> Result<Next, SocketGone> {
        self.app
            .metrics
            .signal_resumes
            .with_label_values(&["refused"])
            .inc();
        self.error(ErrorCode::ResumeFailed, message, request_id)
            .await
    }

    /// Writes one frame, giving up after `signal.write_timeout`: a client that stops reading
    /// fills its socket, and a write that never ends would keep the session (and the
    /// participant) alive for ever, its room events piling up.
    async fn write(&mut self, message: Message) -> Result<(), SocketGone> {
        let timeout = self.app.config.signal.write_timeout;
        let Some(sink) = self.sink.as_mut() else {
            return Err(SocketGone);
        };
        match tokio::time::timeout(timeout, sink.send(message)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(SocketGone),
            Err(_) => {
                tracing::info!("signaling client not reading past write_timeout, disconnecting");
                self.app.metrics.signal_slow_consumers.inc();
                Err(SocketGone)
            }
        }
    }

    async fn send_encoded(&mut self, event: &Encoded) -> Result<(), SocketGone> {
        self.app
            .metrics
            .signal_messages_sent
            .with_label_values(&[event.kind])
            .inc();
        let Some(text) = shared_text(event) else {
            tracing::error!(kind = event.kind, "room event is not UTF-8; not sent");
            return Ok(());
        };
        self.deliver(text, true).await
    }

    async fn error(
        &mut self,
        code: ErrorCode,
        message: impl Into<String>,
        request_id: Option<&str>,
    ) -> Result<Next, SocketGone> {
        self.send(&ServerMessage::error(code, message), request_id)
            .await?;
        Ok(Next::Continue)
    }

    /// Refuses a join for `room`. In cluster mode the room's placement is let go unless the
    /// room is open here, and a node that is full or draining names another node to join
    /// (`node_full` / `node_draining` with its `url`), when there is one that takes people.
    async fn refuse(
        &mut self,
        code: ErrorCode,
        message: impl Into<String>,
        room: &str,
        request_id: Option<&str>,
    ) -> Result<Next, SocketGone> {
        let Some(cluster) = self.app.cluster.clone() else {
            return self.error(code, message, request_id).await;
        };
        cluster.unplace(room, &self.app.rooms).await;
        let message = message.into();
        let open_here = self.app.rooms.get(room).is_some();
        let redirect = match code {
            // A full node still serves the rooms it hosts: it cannot send one of them away.
            ErrorCode::ServerFull if !open_here => Some((ErrorCode::NodeFull, "node_full")),
            ErrorCode::NodeDraining => Some((ErrorCode::NodeDraining, "node_draining")),
            _ => None,
        };
        match redirect.and_then(|(code, reason)| Some((code, cluster.redirect(reason)?))) {
            Some((code, url)) => {
                let message = format!("{message}; join at {url}");
                self.send(&ServerMessage::redirect(code, message, url), request_id)
                    .await?;
                Ok(Next::Continue)
            }
            None => self.error(code, message, request_id).await,
        }
    }

    async fn close(&mut self, code: u16, reason: &'static str) {
        let frame = Message::Close(Some(CloseFrame {
            code,
            reason: Utf8Bytes::from_static(reason),
        }));
        if self.write(frame).await.is_ok() {
            let timeout = self.app.config.signal.write_timeout;
            if let Some(sink) = self.sink.as_mut() {
                let _ = tokio::time::timeout(timeout, sink.close()).await;
            }
        }
    }

    async fn on_text(&mut self, text: &str) -> Result<Next, SocketGone> {
        let metrics = self.app.metrics.clone();
        let signal = &self.app.config.signal;
        // SDP is the one thing that legitimately grows past the frame limit, with the meeting.
        let limit = if text.len() > signal.max_frame_bytes && carries_sdp(text) {
            signal.max_sdp_bytes
        } else {
            signal.max_frame_bytes
        };
        if text.len() > limit {
            metrics
                .signal_errors
                .with_label_values(&["frame_too_large"])
                .inc();
            self.close(close_code::SIZE, "message too big").await;
            return Err(SocketGone);
        }
        let request = match parse_request(text) {
            Ok(request) => request,
            Err(bad) => {
                metrics
                    .signal_messages_received
                    .with_label_values(&[bad.kind])
                    .inc();
                return self.error(bad.code, bad.message, bad.id.as_deref()).await;
            }
        };
        metrics
            .signal_messages_received
            .with_label_values(&[request.kind()])
            .inc();
        if !self.limiter.try_take(Instant::now()) {
            let id = request.id().map(str::to_string);
            return self
                .error(
                    ErrorCode::RateLimited,
                    "too many messages; slow down",
                    id.as_deref(),
                )
                .await;
        }
        match request {
            Request::Join {
                id,
                token,
                room,
                protocol,
            } => {
                let started = std::time::Instant::now();
                let was_joined = self.joined.is_some();
                let next = self.on_join(id.as_deref(), token, room, protocol).await;
                if !was_joined && self.joined.is_some() {
                    self.app
                        .metrics
                        .join_duration
                        .observe(started.elapsed().as_secs_f64());
                }
                next
            }
            Request::Leave { id } => {
                self.send(
                    &ServerMessage::Leave {
                        reason: LeaveReason::ClientLeft,
                        url: None,
                    },
                    id.as_deref(),
                )
                .await?;
                Ok(Next::Leave)
            }
            Request::Ping { id } => {
                self.send(&ServerMessage::Pong { time: unix_ms() }, id.as_deref())
                    .await?;
                Ok(Next::Continue)
            }
            Request::Chat { id, text } => self.on_chat(id.as_deref(), text).await,
            Request::Resume {
                id,
                token,
                received,
            } => {
                if self.joined.is_some() {
                    return self
                        .error(
                            ErrorCode::AlreadyJoined,
                            "this connection has joined already",
                            id.as_deref(),
                        )
                        .await;
                }
                match self.app.resumes.take(&token) {
                    Some(session) => Ok(Next::HandOver {
                        session,
                        request_id: id,
                        received,
                    }),
                    None => {
                        self.refuse_resume(
                            "unknown or used resume token, or its session has ended; join again",
                            id.as_deref(),
                        )
                        .await
                    }
                }
            }
            Request::Typing { id, typing } => self.on_typing(id.as_deref(), typing).await,
            Request::UpdateMetadata { id, metadata } => {
                self.on_update_metadata(id.as_deref(), metadata).await
            }
            other => self.on_media_request(other).await,
        }
    }

    /// Requests about tracks and peer connections, answered once the media worker has.
    async fn on_media_request(&mut self, request: Request) -> Result<Next, SocketGone> {
        let id = request.id().map(str::to_string);
        let id = id.as_deref();
        let Some(joined) = &self.joined else {
            return self
                .error(ErrorCode::NotJoined, "join a room first", id)
                .await;
        };
        let media = joined.media.handle.clone();
        let room = joined.room.clone();
        let me = joined.me.sid.clone();
        let permissions = joined.permissions;
        let participant = me.clone();
        let result: Result<Option<ServerMessage>, MediaError> = match request {
            Request::Publish {
                cid,
                kind,
                source,
                name,
                ..
            } => {
                if !permissions.publish {
                    return self
                        .error(
                            ErrorCode::PermissionDenied,
                            "your token does not allow publishing",
                            id,
                        )
                        .await;
                }
                if cid.is_empty() || cid.len() > MAX_CID_BYTES {
                    return self
                        .error(
                            ErrorCode::BadRequest,
                            format!("`cid` must be 1 to {MAX_CID_BYTES} bytes (an msid track id)"),
                            id,
                        )
                        .await;
                }
                if name.as_ref().is_some_and(|n| n.len() > MAX_NAME_BYTES) {
                    return self
                        .error(
                            ErrorCode::BadRequest,
                            format!("a track `name` is at most {MAX_NAME_BYTES} bytes"),
                            id,
                        )
                        .await;
                }
                media
                    .ask(|reply| Command::Publish {
                        participant,
                        cid,
                        kind,
                        source,
                        name,
                        reply,
                    })
                    .await
                    .map(|()| None)
            }
            Request::Offer { sdp, .. } => {
                if !permissions.publish {
                    return self
                        .error(
                            ErrorCode::PermissionDenied,
                            "your token does not allow publishing",
                            id,
                        )
                        .await;
                }
                if !self.offer_limiter.try_take(Instant::now()) {
                    return self
                        .error(
                            ErrorCode::RateLimited,
                            "too many offers; renegotiate when your tracks change",
                            id,
                        )
                        .await;
                }
                // Parsed here, on this session's time: a media worker serves other rooms too.
                match ClientOffer::parse(&sdp) {
                    Ok(sdp) => media
                        .ask(|reply| Command::PublisherOffer {
                            participant,
                            sdp,
                            reply,
                        })
                        .await
                        .map(|sdp| Some(ServerMessage::Answer { sdp })),
                    Err(e) => Err(e),
                }
            }
            Request::Answer { sdp, .. } => match ClientAnswer::parse(&sdp) {
                Ok(sdp) => media
                    .ask(|reply| Command::SubscriberAnswer {
                        participant,
                        sdp,
                        reply,
                    })
                    .await
                    .map(|()| None),
                Err(e) => Err(e),
            },
            Request::Candidate {
                target, candidate, ..
            } => media
                .send(Command::Candidate {
                    participant,
                    target,
                    candidate,
                })
                .await
                .map(|()| None),
            Request::Unpublish { track, .. } => {
                let r = media
                    .ask(|reply| Command::Unpublish {
                        participant,
                        track: track.clone(),
                        reply,
                    })
                    .await;
                if r.is_ok() {
                    room.remove_track(&track);
                }
                r.map(|()| None)
            }
            // The media worker stops forwarding (or resumes at a keyframe); the room tells the
            // others.
            Request::Mute { track, muted, .. } => {
                let forwarding = media
                    .ask(|reply| Command::SetMuted {
                        participant: participant.clone(),
                        track: track.clone(),
                        muted,
                        reply,
                    })
                    .await;
                match forwarding {
                    Ok(()) if room.set_muted(&participant, &track, muted) => Ok(None),
                    Ok(()) => Err(MediaError::TrackNotFound),
                    Err(e) => Err(e),
                }
            }
            Request::Subscribe { track, .. }
            | Request::Unsubscribe { track, .. }
            | Request::SetQuality { track, .. }
                if !permissions.subscribe =>
            {
                let _ = track;
                return self
                    .error(
                        ErrorCode::PermissionDenied,
                        "your token does not allow subscribing",
                        id,
                    )
                    .await;
            }
            Request::Subscribe { track, .. } => media
                .ask(|reply| Command::Subscribe {
                    participant,
                    track,
                    subscribed: true,
                    reply,
                })
                .await
                .map(|()| None),
            Request::Unsubscribe { track, .. } => media
                .ask(|reply| Command::Subscribe {
                    participant,
                    track,
                    subscribed: false,
                    reply,
                })
                .await
                .map(|()| None),
            Request::SetQuality {
                track,
                quality,
                width,
                height,
                ..
            } => {
                let preference = match (quality, width, height) {
                    (Some(q), None, None) => QualityPreference::Quality(q),
                    (None, Some(w), Some(h)) if w > 0 && h > 0 => QualityPreference::Size(w, h),
                    _ => {
                        return self
                            .error(
                                ErrorCode::BadRequest,
                                "set_quality needs either `quality` (low, medium, high, off) \
                                 or `width` and `height` (both above 0), not both",
                                id,
                            )
                            .await
                    }
                };
                media
                    .ask(|reply| Command::SetQuality {
                        participant,
                        track,
                        preference,
                        reply,
                    })
                    .await
                    .map(|()| None)
            }
            Request::RestartIce { .. } => media
                .ask(|reply| Command::RestartIce { participant, reply })
                .await
                .map(|()| None),
            // Join, leave, chat, typing and ping never get here.
            _ => Ok(None),
        };
        match result {
            Ok(Some(message)) => self.send(&message, id).await.map(|()| Next::Continue),
            Ok(None) => self
                .send(&ServerMessage::Ack, id)
                .await
                .map(|()| Next::Continue),
            Err(e) => {
                let code = match e {
                    MediaError::BadSdp(_) | MediaError::NoPendingOffer => ErrorCode::BadSdp,
                    MediaError::TrackNotFound => ErrorCode::TrackNotFound,
                    MediaError::NoSubscriberConnection => ErrorCode::BadRequest,
                    MediaError::NotJoined | MediaError::WorkerGone => ErrorCode::MediaFailed,
                    MediaError::WorkerBusy => ErrorCode::ServerBusy,
                    MediaError::TooManyTracks => ErrorCode::TrackLimit,
                };
                self.error(code, e.to_string(), id).await
            }
        }
    }

    /// Relays what the media worker says about this participant.
    async fn on_media_event(&mut self, event: MediaEvent) -> Result<Next, SocketGone> {
        let Some(joined) = &self.joined else {
            return Ok(Next::Continue);
        };
        let room = joined.room.clone();
        match event {
            MediaEvent::SubscriberOffer { sdp, tracks } => {
                self.send(&ServerMessage::Offer { sdp, tracks }, None)
                    .await?;
            }
            MediaEvent::TrackPublished(track) => room.add_track(track),
            MediaEvent::TrackUnpublished(track) => {
                room.remove_track(&track);
            }
            MediaEvent::ActiveSpeakers(speakers) => {
                self.send(&ServerMessage::ActiveSpeakers { speakers }, None)
                    .await?;
            }
            MediaEvent::QualityChanged {
                track,
                quality,
                rid,
                reason,
            } => {
                let message = ServerMessage::QualityChanged {
                    track,
                    quality,
                    layer: rid,
                    reason: reason.to_string(),
                };
                self.send(&message, None).await?;
            }
            MediaEvent::TrackUnsupported { track, codec } => {
                let message = ServerMessage::SubscriptionFailed {
                    message: format!(
                        "your answer accepts none of the formats of track {track} ({codec}); \
                         nothing of it is forwarded"
                    ),
                    track,
                    code: ErrorCode::CodecNotSupported,
                };
                self.send(&message, None).await?;
            }
            MediaEvent::PublicationRefused {
                mid,
                cid,
                kind,
                offered,
            } => {
                let message = format!(
                    "the {kind} m-line {mid} offers {} and the server forwards none of them \
                     (audio: Opus; video: VP8, VP9, H.264); nothing of it is published",
                    if offered.is_empty() {
                        "no codec".to_string()
                    } else {
                        offered.join(", ")
                    }
                );
                let message = ServerMessage::PublicationFailed {
                    cid,
                    mid,
                    kind,
                    code: ErrorCode::CodecNotSupported,
                    message,
                };
                self.send(&message, None).await?;
            }
            MediaEvent::PublisherLayers { track, active } => {
                self.send(&ServerMessage::PublisherLayers { track, active }, None)
                    .await?;
            }
            MediaEvent::Failed { cause, message } => {
                // The worker logged it (warn, once).
                self.send(&ServerMessage::media_failed(cause, message), None)
                    .await?;
                return Ok(Next::Leave);
            }
        }
        Ok(Next::Continue)
    }

    async fn on_join(
        &mut self,
        id: Option<&str>,
        token: Option<String>,
        room: Option<String>,
        protocol: Option<u32>,
    ) -> Result<Next, SocketGone> {
        if self.joined.is_some() {
            return self
                .error(
                    ErrorCode::AlreadyJoined,
                    "this connection has joined already",
                    id,
                )
                .await;
        }
        if let Some(version) = protocol {
            if version != PROTOCOL_VERSION {
                return self
                    .error(
                        ErrorCode::UnsupportedProtocol,
                        format!("this server speaks protocol {PROTOCOL_VERSION}, not {version}"),
                        id,
                    )
                    .await;
            }
        }
        let claims = match token {
            Some(token) => self.app.auth.verify_participant(&token),
            None => self.preauth.clone().ok_or(AuthError::Missing),
        };
        let claims = match claims {
            Ok(claims) => claims,
            Err(e) => {
                let code = match e {
                    AuthError::Expired => ErrorCode::TokenExpired,
                    _ => ErrorCode::Unauthorized,
                };
                return self.error(code, e.to_string(), id).await;
            }
        };
        let token_room = claims.room.clone().unwrap_or_default();
        if let Some(asked) = room {
            if asked != token_room {
                return self
                    .error(
                        ErrorCode::WrongRoom,
                        format!("the token is for room `{token_room}`, not `{asked}`"),
                        id,
                    )
                    .await;
            }
        }
        let permissions = Permissions {
            publish: claims.grants.publish,
            subscribe: claims.grants.subscribe,
            chat: claims.grants.chat,
        };
        let info = ParticipantInfo {
            sid: new_sid(),
            identity: claims.identity().to_string(),
            name: claims.display_name().to_string(),
            joined_at: unix_ms(),
            permissions,
            metadata: String::new(),
        };
        // Cluster mode: the room may live on another node, or this one may be draining.
        if let Some(cluster) = self.app.cluster.clone() {
            if cluster.is_draining() {
                return self
                    .refuse(
                        ErrorCode::NodeDraining,
                        "this node is draining",
                        &token_room,
                        id,
                    )
                    .await;
            }
            if let Host::Elsewhere { node, url } = cluster.place(&token_room).await {
                let message = format!("room `{token_room}` is on node {node}: join it at {url}");
                self.send(
                    &ServerMessage::redirect(ErrorCode::RoomOnOtherNode, message, url),
                    id,
                )
                .await?;
                return Ok(Next::Continue);
            }
        }
        // A worker past its CPU budget takes no one more: the calls it carries keep their CPU.
        if let Err(overloaded) = self.app.media.admit(&token_room) {
            tracing::warn!(room = %token_room, "join refused: {overloaded}");
            return self
                .refuse(
                    ErrorCode::ServerFull,
                    overloaded.to_string(),
                    &token_room,
                    id,
                )
                .await;
        }
        // A room opening on this node takes back the chat it had on another (cluster mode).
        let history = match &self.app.cluster {
            Some(cluster) if self.app.rooms.get(&token_room).is_none() => {
                cluster.chat_history(&token_room).await
            }
            _ => Vec::new(),
        };
        let participant =
            Participant::new(info.clone(), self.outbound_tx.clone(), self.end.clone());
        let joined = self
            .app
            .rooms
            .join_with_history(&token_room, participant, history);
        let (room, joined) = match joined {
            Ok(ok) => ok,
            Err(e) => {
                let code = match e {
                    RoomError::Full(_) => ErrorCode::RoomFull,
                    RoomError::TooManyRooms(_) => ErrorCode::RoomLimit,
                    RoomError::ServerFull(_) => ErrorCode::ServerFull,
                    RoomError::Closed => ErrorCode::Internal,
                };
                return self.refuse(code, e.to_string(), &token_room, id).await;
            }
        };
        if let Some(old) = &joined.replaced {
            self.app.rooms.replaced(old);
        }
        if let Some(cluster) = &self.app.cluster {
            cluster.opened(room.name());
        }
        let media = self.app.media.place(room.name());
        let join = Command::Join {
            room: room.name().to_string(),
            participant: info.sid.clone(),
            can_publish: permissions.publish,
            can_subscribe: permissions.subscribe,
            events: self.media_events.clone(),
        };
        if let Err(e) = media.handle.send(join).await {
            // Without media state the participant could do nothing: it does not stay.
            self.app
                .rooms
                .leave(&room, &info.sid, LeaveReason::MediaFailed);
            let code = match e {
                MediaError::WorkerBusy => ErrorCode::ServerBusy,
                _ => ErrorCode::MediaFailed,
            };
            return self.error(code, e.to_string(), id).await;
        }
        tracing::info!(room = room.name(), identity = %info.identity, sid = %info.sid, "participant joined");
        let resume_window = self.app.config.signal.resume_window;
        if !resume_window.is_zero() {
            self.resume_token = Some(self.app.resumes.issue(self.handover.clone()));
        }
        self.joined = Some(Joined {
            room: room.clone(),
            me: ChatSender {
                sid: info.sid.clone(),
                identity: info.identity.clone(),
                name: info.name.clone(),
            },
            permissions,
            media,
        });
        let ice_servers = self.ice_servers(&info.identity);
        let reply = ServerMessage::Joined {
            server: ServerInfo {
                version: env!("CARGO_PKG_VERSION").into(),
                protocol: PROTOCOL_VERSION,
            },
            room: room.name().to_string(),
            participant: info,
            participants: joined.others,
            chat_history: joined.chat_history,
            tracks: joined.tracks,
            ice_servers,
            resume_token: self.resume_token.clone(),
            resume_window_ms: resume_window.as_millis() as u64,
        };
        self.send(&reply, id).await?;
        Ok(Next::Continue)
    }

    /// The ICE servers a participant is given: the embedded TURN server with a credential of
    /// its own, then the configured ones.
    fn ice_servers(&self, identity: &str) -> Vec<IceServer> {
        let own = self.app.turn.iter().map(|t| t.ice_server(identity));
        let configured = self.app.config.turn.ice_servers.iter().map(|s| IceServer {
            urls: s.urls.clone(),
            username: s.username.clone(),
            credential: s.credential.clone(),
        });
        own.chain(configured).collect()
    }

    /// The joined state, or a `not_joined` answer.
    fn require_joined(&self) -> Option<(&RoomRef, &ChatSender, Permissions)> {
        self.joined
            .as_ref()
            .map(|j| (&j.room, &j.me, j.permissions))
    }

    async fn on_chat(&mut self, id: Option<&str>, text: String) -> Result<Next, SocketGone> {
        let Some((room, me, permissions)) = self.require_joined() else {
            return self
                .error(ErrorCode::NotJoined, "join a room first", id)
                .await;
        };
        let (room, me) = (room.clone(), me.clone());
        if !permissions.chat {
            return self
                .error(
                    ErrorCode::PermissionDenied,
                    "your token does not allow chat",
                    id,
                )
                .await;
        }
        if text.trim().is_empty() {
            return self
                .error(ErrorCode::ChatEmpty, "chat text is empty", id)
                .await;
        }
        let max = self.app.config.chat.max_message_bytes;
        if text.len() > max {
            return self
                .error(
                    ErrorCode::ChatTooLong,
                    format!("chat text is {} bytes; the limit is {max}", text.len()),
                    id,
                )
                .await;
        }
        let Ok(message) = room.chat(me, text, unix_ms()) else {
            return self
                .error(
                    ErrorCode::RateLimited,
                    "too many chat messages; this one was not sent",
                    id,
                )
                .await;
        };
        self.app.metrics.chat_messages.inc();
        if let Some(cluster) = &self.app.cluster {
            cluster.save_chat(room.name(), &message);
        }
        self.send(&ServerMessage::Chat { message }, id).await?;
        Ok(Next::Continue)
    }

    async fn on_typing(&mut self, id: Option<&str>, typing: bool) -> Result<Next, SocketGone> {
        let Some((room, me, permissions)) = self.require_joined() else {
            return self
                .error(ErrorCode::NotJoined, "join a room first", id)
                .await;
        };
        if !permissions.chat {
            return self
                .error(
                    ErrorCode::PermissionDenied,
                    "your token does not allow chat",
                    id,
                )
                .await;
        }
        if room.typing(me, typing).is_err() {
            return self
                .error(
                    ErrorCode::RateLimited,
                    "too many typing indicators; send one when typing starts or stops",
                    id,
                )
                .await;
        }
        self.send(&ServerMessage::Ack, id).await?;
        Ok(Next::Continue)
    }

    /// Sets this participant's metadata; the others get `participant_updated`, and so does
    /// the sender, as the answer.
    async fn on_update_metadata(
        &mut self,
        id: Option<&str>,
        metadata: String,
    ) -> Result<Next, SocketGone> {
        let Some((room, me, _)) = self.require_joined() else {
            return self
                .error(ErrorCode::NotJoined, "join a room first", id)
                .await;
        };
        let (room, sid) = (room.clone(), me.sid.clone());
        if metadata.len() > MAX_METADATA_BYTES {
            return self
                .error(
                    ErrorCode::MetadataTooLong,
                    format!(
                        "metadata is {} bytes; the limit is {MAX_METADATA_BYTES}",
                        metadata.len()
                    ),
                    id,
                )
                .await;
        }
        match room.update_metadata(&sid, metadata) {
            Ok(Some(participant)) => {
                self.send(&ServerMessage::ParticipantUpdated { participant }, id)
                    .await?;
            }
            Ok(None) => {
                return self
                    .error(ErrorCode::NotJoined, "you are no longer in the room", id)
                    .await;
            }
            Err(_) => {
                return self
                    .error(
                        ErrorCode::RateLimited,
                        "too many metadata updates; this one was not applied",
                        id,
                    )
                    .await;
            }
        }
        Ok(Next::Continue)
    }
}

/// The rooms' encoder ([`crate::room::EncodeEvent`]): a room event as the server message every
/// recipient is sent, encoded once per broadcast.
pub fn encode_room_event(event: &RoomEvent) -> Encoded {
    let message = ServerMessage::from(event);
    Encoded {
        kind: message.kind(),
        text: Bytes::from(encode(&message, None)),
    }
}

/// A room event's text as a WebSocket message: the broadcast's one buffer, checked to be
/// UTF-8 (the room encoded it from a String), not copied.
fn shared_text(event: &Encoded) -> Option<Utf8Bytes> {
    Utf8Bytes::try_from(event.text.clone()).ok()
}

/// The close code for a frame the WebSocket layer refused (RFC 6455 §7.4.1), if the socket is
/// still there to be told.
fn close_for(error: axum::Error) -> Option<(u16, &'static str)> {
    let Ok(error) = error.into_inner().downcast::<tungstenite::Error>() else {
        return Some((close_code::PROTOCOL, "protocol error"));
    };
    match *error {
        tungstenite::Error::Capacity(_) => Some((close_code::SIZE, "message too big")),
        tungstenite::Error::Utf8(_) => Some((close_code::INVALID, "text is not UTF-8")),
        tungstenite::Error::Protocol(_) => Some((close_code::PROTOCOL, "protocol error")),
        _ => None,
    }
}

/// The next frame of the socket; never, while there is none.
async fn next_frame(stream: &mut Option<Stream>) -> Option<Result<Message, axum::Error>> {
    match stream {
        Some(stream) => stream.next().await,
        None => std::future::pending().await,
    }
}

/// A new session id: "PA_" and 12 random alphanumerics.
fn new_sid() -> String {
    format!("PA_{}", Alphanumeric.sample_string(&mut rand::rng(), 12))
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Is this (large) frame an `offer` or `answer`, whose SDP may exceed the frame limit?
fn carries_sdp(text: &str) -> bool {
    #[derive(serde::Deserialize)]
    struct Kind<'a> {
        #[serde(borrow, rename = "type")]
        kind: Option<&'a str>,
    }
    serde_json::from_str::<Kind>(text)
        .ok()
        .and_then(|k| k.kind)
        .is_some_and(|k| k == "offer" || k == "answer")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_room_event_reaches_every_recipient_without_a_copy() {
        let event = encode_room_event(&RoomEvent::Typing {
            sid: "PA_1".into(),
            identity: "alice".into(),
            typing: true,
        });
        let (Some(bob), Some(carol)) = (shared_text(&event), shared_text(&event)) else {
            panic!("a room event is UTF-8");
        };
        assert!(bob.as_str().contains("alice"), "{}", bob.as_str());
        // Every recipient's message (and resume log entry) is the room's one buffer.
        assert_eq!(bob.as_str().as_ptr(), event.text.as_ptr());
        assert_eq!(carol.as_str().as_ptr(), event.text.as_ptr());
    }
}
