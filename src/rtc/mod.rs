//! Everything that touches the WebRTC stack (str0m): media workers, their UDP sockets, the
//! publisher and subscriber peer connections of each participant, and the glue between str0m's
//! events and the sans-IO forwarding core in `forward/`. No other module names str0m.
//!
//! The control plane talks to media only through [`Command`]s to a worker (a bounded queue:
//! [`MediaHandle`]) and [`MediaEvent`]s back to a participant's session (a bounded queue too:
//! [`EventSink`]). A room lives on one worker (the least loaded when it starts), so a
//! publisher's packets reach its subscribers without crossing threads, until it reaches
//! `rtc.spread_rooms_at` participants: then newcomers go to the least-loaded worker and each
//! publication crosses to every worker with subscribers of it once (`worker::relay`).
//!
//! - [`engine`]: starts the workers and their sockets, places participants on workers, stops
//!   them.
//! - `worker/`: one worker's loop and its jobs (peers, negotiation, ingress, egress, ...).
//! - [`stack`]: one `Rtc` as we configure it, and the panic boundary around str0m calls.
//! - `batch`: the datagrams of a worker's flush sent with `sendmmsg`.
//! - [`relay`]: the queues between workers that carry a spread room's media.
//! - [`demux`]: which peer a datagram on a worker's shared socket belongs to.
//! - [`sdp`]: client SDP, bounded and parsed before it reaches a worker.
//!
//! `stack`, `demux` and `sdp` are public for the fuzz targets (fuzz/), which feed them
//! hostile input as a worker would.

mod batch;
pub mod demux;
pub mod engine;
pub mod load;
pub mod relay;
pub mod sdp;
pub mod stack;
pub mod tcp;
mod worker;

use std::time::Duration;

use prometheus::IntCounter;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;
use crate::model::{
    OfferedTrack, PeerTarget, Quality, Speaker, TrackForwarding, TrackInfo, TrackKind, TrackSource,
};

pub use engine::{bind_media_socket, MediaEngine, Placement, SOCKET_BUFFER_BYTES};

/// Commands a worker's queue holds. A worker drains hundreds of commands in a millisecond;
/// a full queue means it is stuck or flooded, and senders wait (up to
/// [`COMMAND_SEND_TIMEOUT`]) rather than pile up memory.
pub const WORKER_COMMAND_QUEUE: usize = 4096;
/// How long a session waits for room in its worker's queue before answering `server_busy`.
pub const COMMAND_SEND_TIMEOUT: Duration = Duration::from_secs(5);
/// Media events one session's queue holds. A session forwards them as they come; one that
/// lets this many pile up is not reading, and is ended rather than buffered without bound.
pub const MEDIA_EVENT_QUEUE: usize = 256;

/// What a subscriber asked for with `set_quality`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QualityPreference {
    Quality(Quality),
    /// The size of the element showing the video, in CSS pixels times device pixel ratio.
    Size(u32, u32),
}

/// What went wrong with a media request, mapped to a signaling error code by the session.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MediaError {
    #[error("bad SDP: {0}")]
    BadSdp(String),
    #[error("no such track")]
    TrackNotFound,
    #[error("no subscriber offer is waiting for an answer")]
    NoPendingOffer,
    #[error("there is no subscriber connection yet: nothing to restart")]
    NoSubscriberConnection,
    #[error("the participant has no media session")]
    NotJoined,
    #[error("the media worker is gone")]
    WorkerGone,
    #[error("the media worker is overloaded; try again")]
    WorkerBusy,
    #[error(
        "{MAX_DECLARED_TRACKS} declared tracks already wait for their m-lines; send the offer"
    )]
    TooManyTracks,
}

/// The WebRTC stack's log target. It warns about every malformed packet or SDP a client sends,
/// so unless the configured filter names it, it logs errors only: no client floods the log.
pub const STACK_LOG_TARGET: &str = "str0m";

/// Tracks a participant may declare with `publish` before its offer brings their m-lines.
pub const MAX_DECLARED_TRACKS: usize = 16;

/// A fault a test injects into a worker (see [`Command::InjectFault`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// A panic while handling a command about one participant: only its media ends.
    Participant,
    /// A panic in the worker's loop itself, outside every boundary: the worker restarts.
    Worker,
}

/// A request from the control plane to a media worker.
#[derive(Debug)]
pub enum Command {
    /// A participant joined: set up its media state (its peer connections come with offers).
    Join {
        room: String,
        participant: String,
        can_publish: bool,
        can_subscribe: bool,
        events: EventSink,
    },
    /// The participant left: close both peer connections, unpublish, unsubscribe.
    Leave {
        participant: String,
    },
    /// Metadata for a track the participant is about to offer, keyed by its msid track id.
    Publish {
        participant: String,
        cid: String,
        kind: TrackKind,
        source: Option<TrackSource>,
        name: Option<String>,
        reply: oneshot::Sender<Result<(), MediaError>>,
    },
    /// The client's publisher offer; the reply is the server's answer SDP.
    PublisherOffer {
        participant: String,
        sdp: sdp::ClientOffer,
        reply: oneshot::Sender<Result<String, MediaError>>,
    },
    /// The client's answer to the last subscriber offer.
    SubscriberAnswer {
        participant: String,
        sdp: sdp::ClientAnswer,
        reply: oneshot::Sender<Result<(), MediaError>>,
    },
    /// A trickled client candidate.
    Candidate {
        participant: String,
        target: PeerTarget,
        candidate: String,
    },
    Unpublish {
        participant: String,
        track: String,
        reply: oneshot::Sender<Result<(), MediaError>>,
    },
    /// Starts (true) or stops (false) forwarding a track to the participant.
    Subscribe {
        participant: String,
        track: String,
        subscribed: bool,
        reply: oneshot::Sender<Result<(), MediaError>>,
    },
    /// The publisher muted (true) or unmuted one of its tracks: forwarding stops, or resumes
    /// at a keyframe it is asked for.
    SetMuted {
        participant: String,
        track: String,
        muted: bool,
        reply: oneshot::Sender<Result<(), MediaError>>,
    },
    /// A subscriber's choice of layer for one video track it receives.
    SetQuality {
        participant: String,
        track: String,
        preference: QualityPreference,
        reply: oneshot::Sender<Result<(), MediaError>>,
    },
    /// An ICE restart of the participant's subscriber connection: a new offer with new
    /// credentials follows.
    RestartIce {
        participant: String,
        reply: oneshot::Sender<Result<(), MediaError>>,
    },
    /// Counts for tests and the admin API.
    Stats {
        reply: oneshot::Sender<WorkerStats>,
    },
    /// What is forwarded of each track of `room` to whom (admin API).
    Forwarding {
        room: String,
        reply: oneshot::Sender<Vec<TrackForwarding>>,
    },
    /// For tests of fault isolation only; no client request leads here.
    #[doc(hidden)]
    InjectFault {
        participant: String,
        fault: Fault,
    },
    Shutdown,
}

impl Command {
    /// The participant a command is about: a panic while handling it ends that one's media.
    pub fn participant(&self) -> Option<&str> {
        match self {
            Command::Join { participant, .. }
            | Command::Leave { participant }
            | Command::Publish { participant, .. }
            | Command::PublisherOffer { participant, .. }
            | Command::SubscriberAnswer { participant, .. }
            | Command::Candidate { participant, .. }
            | Command::Unpublish { participant, .. }
            | Command::Subscribe { participant, .. }
            | Command::SetMuted { participant, .. }
            | Command::SetQuality { participant, .. }
            | Command::RestartIce { participant, .. }
            | Command::InjectFault { participant, .. } => Some(participant),
            Command::Stats { .. } | Command::Forwarding { .. } | Command::Shutdown => None,
        }
    }
}

/// What a media worker tells one participant's session.
#[derive(Debug, Clone)]
pub enum MediaEvent {
    /// A new offer for the subscriber connection.
    SubscriberOffer {
        sdp: String,
        tracks: Vec<OfferedTrack>,
    },
    /// A track of this participant is now published; the room should announce it.
    TrackPublished(TrackInfo),
    /// A track of this participant ended (its m-line went away).
    TrackUnpublished(String),
    ActiveSpeakers(Vec<Speaker>),
    /// The layer of a track this participant receives changed (`rid`: the layer's rid, `""`
    /// without simulcast, `"off"`).
    QualityChanged {
        track: String,
        quality: Quality,
        rid: String,
        reason: &'static str,
    },
    /// This participant's answer accepted none of `track`'s formats (`codec` is what the
    /// publisher sends): it receives nothing of it.
    TrackUnsupported {
        track: String,
        codec: String,
    },
    /// To a publisher: an m-line of its offer the server refused, because it offered no codec
    /// the server forwards. Nothing of it is published.
    PublicationRefused {
        mid: String,
        cid: String,
        kind: String,
        offered: Vec<String>,
    },
    /// Which layers of this participant's track anyone receives (dynacast).
    PublisherLayers {
        track: String,
        active: Vec<String>,
    },
    /// The participant's media died (ICE/DTLS failure, a fault in the stack or the worker).
    Failed {
        cause: crate::model::FailureCause,
        message: String,
    },
}

/// Where a media worker sends one participant's events: a bounded queue to its session. The
/// worker never waits on a session: an event that does not fit is dropped and counted
/// (`sfu_queue_drops_total{queue="media_events"}`), and `overflow` is cancelled so the session
/// ends as a slow consumer instead of missing events silently.
#[derive(Debug, Clone)]
pub struct EventSink {
    tx: mpsc::Sender<MediaEvent>,
    overflow: CancellationToken,
    dropped: IntCounter,
}

impl EventSink {
    /// A queue of `capacity` events: the worker's end, the session's end, and the token the
    /// session watches for overflow.
    pub fn channel(
        capacity: usize,
        metrics: &Metrics,
    ) -> (Self, mpsc::Receiver<MediaEvent>, CancellationToken) {
        let (tx, rx) = mpsc::channel(capacity);
        let overflow = CancellationToken::new();
        let sink = Self {
            tx,
            overflow: overflow.clone(),
            dropped: metrics.queue_drops.with_label_values(&["media_events"]),
        };
        (sink, rx, overflow)
    }

    /// Queues `event` without waiting. False if it was dropped (queue full, or the session
    /// is gone).
    pub fn send(&self, event: MediaEvent) -> bool {
        match self.tx.try_send(event) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.dropped.inc();
                self.overflow.cancel();
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        }
    }
}

/// Live object counts of one worker.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WorkerStats {
    pub participants: usize,
    pub peers: usize,
    pub receivers: usize,
    pub subscriptions: usize,
}

impl std::ops::Add for WorkerStats {
    type Output = Self;
    fn add(self, o: Self) -> Self {
        Self {
            participants: self.participants + o.participants,
            peers: self.peers + o.peers,
            receivers: self.receivers + o.receivers,
            subscriptions: self.subscriptions + o.subscriptions,
        }
    }
}

/// A handle to the worker that hosts one room: the sending end of its bounded command queue.
#[derive(Debug, Clone)]
pub struct MediaHandle {
    tx: mpsc::Sender<Command>,
    /// `sfu_queue_drops_total{queue="worker_commands"}`.
    dropped: IntCounter,
}

impl MediaHandle {
    fn new(tx: mpsc::Sender<Command>, metrics: &Metrics) -> Self {
        Self {
            tx,
            dropped: metrics.queue_drops.with_label_values(&["worker_commands"]),
        }
    }

    /// Queues a command, waiting up to [`COMMAND_SEND_TIMEOUT`] for room. A command that
    /// does not get in is counted and answered `WorkerBusy`.
    pub async fn send(&self, command: Command) -> Result<(), MediaError> {
        match tokio::time::timeout(COMMAND_SEND_TIMEOUT, self.tx.send(command)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(MediaError::WorkerGone),
            Err(_) => {
                self.dropped.inc();
                Err(MediaError::WorkerBusy)
            }
        }
    }

    /// Queues a command if there is room now (for callers that cannot wait).
    pub fn try_send(&self, command: Command) -> Result<(), MediaError> {
        self.tx.try_send(command).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => {
                self.dropped.inc();
                MediaError::WorkerBusy
            }
            mpsc::error::TrySendError::Closed(_) => MediaError::WorkerGone,
        })
    }

    /// Sends a command built around a reply channel and waits for the reply.
    pub async fn ask<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<T, MediaError>>) -> Command,
    ) -> Result<T, MediaError> {
        let (reply, rx) = oneshot::channel();
        self.send(make(reply)).await?;
        rx.await.unwrap_or(Err(MediaError::WorkerGone))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drops(metrics: &Metrics, queue: &str) -> u64 {
        metrics.queue_drops.with_label_values(&[queue]).get()
    }

    #[test]
    fn a_full_event_queue_drops_counts_and_ends_the_session() {
        let metrics = Metrics::new();
        let (sink, mut rx, overflow) = EventSink::channel(2, &metrics);
        assert!(sink.send(MediaEvent::TrackUnpublished("a".into())));
        assert!(sink.send(MediaEvent::TrackUnpublished("b".into())));
        assert!(!overflow.is_cancelled());
        assert!(!sink.send(MediaEvent::TrackUnpublished("c".into())));
        assert!(overflow.is_cancelled(), "the session is told to end");
        assert_eq!(drops(&metrics, "media_events"), 1);
        // What was queued is still delivered, in order.
        assert!(matches!(rx.try_recv(), Ok(MediaEvent::TrackUnpublished(t)) if t == "a"));
        // A session that is gone is not an overflow.
        drop(rx);
        let (sink, rx, overflow) = EventSink::channel(1, &metrics);
        drop(rx);
        assert!(!sink.send(MediaEvent::TrackUnpublished("x".into())));
        assert!(!overflow.is_cancelled());
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_command_queue_answers_busy_and_counts() {
        let metrics = Metrics::new();
        let (tx, mut rx) = mpsc::channel(1);
        let handle = MediaHandle::new(tx, &metrics);
        let leave = || Command::Leave {
            participant: "p".into(),
        };
        assert_eq!(handle.send(leave()).await, Ok(()));
        // Nobody drains the queue: the next command waits its time, then gives up.
        assert_eq!(handle.send(leave()).await, Err(MediaError::WorkerBusy));
        assert_eq!(handle.try_send(leave()), Err(MediaError::WorkerBusy));
        assert_eq!(drops(&metrics, "worker_commands"), 2);
        // Drained, it takes commands again.
        assert!(rx.recv().await.is_some());
        assert_eq!(handle.try_send(leave()), Ok(()));
        drop(rx);
        assert_eq!(handle.try_send(leave()), Err(MediaError::WorkerGone));
    }
}
