//! Everything that touches the WebRTC stack (str0m): media workers, their UDP sockets, the
//! publisher and subscriber peer connections of each participant, and the glue between str0m's
//! events and the sans-IO forwarding core in `forward/`.
//!
//! The control plane talks to media only through [`Command`]s to a worker and [`MediaEvent`]s
//! back to a participant's session. A room lives on one worker (chosen by hashing its name), so
//! a publisher's packets reach its subscribers without crossing threads.

mod demux;
mod engine;
mod worker;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::thread::JoinHandle;

use tokio::sync::{mpsc, oneshot};

use crate::config::Config;
use crate::metrics::Metrics;
use crate::model::{OfferedTrack, PeerTarget, Quality, Speaker, TrackInfo, TrackKind, TrackSource};

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
    #[error("the participant has no media session")]
    NotJoined,
    #[error("the media worker is gone")]
    WorkerGone,
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
        events: mpsc::UnboundedSender<MediaEvent>,
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
    },
    /// The client's publisher offer; the reply is the server's answer SDP.
    PublisherOffer {
        participant: String,
        sdp: String,
        reply: oneshot::Sender<Result<String, MediaError>>,
    },
    /// The client's answer to the last subscriber offer.
    SubscriberAnswer {
        participant: String,
        sdp: String,
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
    Mute {
        participant: String,
        track: String,
        muted: bool,
        reply: oneshot::Sender<Result<(), MediaError>>,
    },
    /// Starts (true) or stops (false) forwarding a track to the participant.
    Subscribe {
        participant: String,
        track: String,
        subscribed: bool,
        reply: oneshot::Sender<Result<(), MediaError>>,
    },
    /// A subscriber's choice of layer for one video track it receives.
    SetQuality {
        participant: String,
        track: String,
        preference: QualityPreference,
        reply: oneshot::Sender<Result<(), MediaError>>,
    },
    /// Counts for tests and the admin API.
    Stats {
        reply: oneshot::Sender<WorkerStats>,
    },
    Shutdown,
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
    /// The layer of a track this participant receives changed (`layer`: 0 = q; `None`: off).
    QualityChanged {
        track: String,
        layer: Option<u8>,
        rid: String,
        reason: &'static str,
    },
    /// Which layers of this participant's track anyone receives (dynacast).
    PublisherLayers {
        track: String,
        active: Vec<String>,
    },
    /// The participant's media died (ICE/DTLS timeout, a fault in the stack).
    Failed(String),
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

/// A handle to the worker that hosts one room.
#[derive(Debug, Clone)]
pub struct MediaHandle {
    tx: mpsc::UnboundedSender<Command>,
}

impl MediaHandle {
    /// Sends a command; false if the worker has stopped.
    pub fn send(&self, command: Command) -> bool {
        self.tx.send(command).is_ok()
    }

    /// Sends a command built around a reply channel and waits for the reply.
    pub async fn ask<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<T, MediaError>>) -> Command,
    ) -> Result<T, MediaError> {
        let (reply, rx) = oneshot::channel();
        if !self.send(make(reply)) {
            return Err(MediaError::WorkerGone);
        }
        rx.await.unwrap_or(Err(MediaError::WorkerGone))
    }
}

struct WorkerThread {
    handle: MediaHandle,
    thread: std::sync::Mutex<Option<JoinHandle<()>>>,
    addr: SocketAddr,
}

/// The media workers: one thread and one UDP socket each.
pub struct MediaEngine {
    workers: Vec<WorkerThread>,
}

impl MediaEngine {
    /// Binds every worker's socket and starts its thread.
    pub fn start(config: &Config, metrics: Arc<Metrics>) -> anyhow::Result<Self> {
        let count = config.media_workers();
        let advertised = advertised_ips(config);
        let mut workers = Vec::with_capacity(count);
        for index in 0..count {
            let port = if config.rtc.udp_port == 0 {
                0
            } else {
                config.rtc.udp_port + index as u16
            };
            let bind = SocketAddr::new(config.rtc.bind, port);
            let socket = bind_media_socket(bind).map_err(|e| {
                anyhow::anyhow!("cannot bind media UDP {bind} (rtc.bind, rtc.udp_port): {e}")
            })?;
            let addr = socket.local_addr()?;
            let candidates: Vec<SocketAddr> = advertised
                .iter()
                .map(|ip| SocketAddr::new(*ip, addr.port()))
                .collect();
            let (tx, rx) = mpsc::unbounded_channel();
            let metrics = metrics.clone();
            let settings = worker::Settings {
                candidates,
                auto_subscribe: config.rtc.auto_subscribe,
            };
            let thread = std::thread::Builder::new()
                .name(format!("sfu-media-{index}"))
                .spawn(move || worker::run(socket, settings, rx, metrics))?;
            tracing::info!(%addr, ?advertised, "media worker {index} listening");
            workers.push(WorkerThread {
                handle: MediaHandle { tx },
                thread: std::sync::Mutex::new(Some(thread)),
                addr,
            });
        }
        Ok(Self { workers })
    }

    /// The worker that hosts `room`.
    pub fn for_room(&self, room: &str) -> MediaHandle {
        // FNV-1a: stable across runs and processes, so a room always lands on the same worker.
        let hash = room.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
        });
        self.workers[(hash % self.workers.len() as u64) as usize]
            .handle
            .clone()
    }

    /// The UDP addresses the workers listen on.
    pub fn addrs(&self) -> Vec<SocketAddr> {
        self.workers.iter().map(|w| w.addr).collect()
    }

    /// Object counts summed over all workers.
    pub async fn stats(&self) -> WorkerStats {
        let mut total = WorkerStats::default();
        for w in &self.workers {
            let (reply, rx) = oneshot::channel();
            if w.handle.send(Command::Stats { reply }) {
                if let Ok(s) = rx.await {
                    total = total + s;
                }
            }
        }
        total
    }

    /// Stops every worker and waits for its thread (blocking; call it off the runtime).
    pub fn shutdown(&self) {
        for w in &self.workers {
            w.handle.send(Command::Shutdown);
        }
        for w in &self.workers {
            let thread = w.thread.lock().ok().and_then(|mut t| t.take());
            if let Some(t) = thread {
                let _ = t.join();
            }
        }
    }
}

impl Drop for MediaEngine {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Kernel buffer asked for on a media socket, each way. Publishers' keyframes arrive in bursts
/// (and in a meeting they line up), and a worker fanning one out is briefly not reading: the
/// default ~200 KiB overflows and drops whole frames. The kernel caps it at net.core.rmem_max
/// and wmem_max; raise those to let it take effect fully.
pub const SOCKET_BUFFER_BYTES: usize = 4 * 1024 * 1024;

/// A non-blocking UDP socket with [`SOCKET_BUFFER_BYTES`] of kernel buffer each way.
pub fn bind_media_socket(addr: SocketAddr) -> std::io::Result<std::net::UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    // Best effort: a smaller buffer than asked is still a working socket.
    let _ = socket.set_recv_buffer_size(SOCKET_BUFFER_BYTES);
    let _ = socket.set_send_buffer_size(SOCKET_BUFFER_BYTES);
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    Ok(socket.into())
}

/// The addresses given to clients as ICE host candidates.
fn advertised_ips(config: &Config) -> Vec<IpAddr> {
    if !config.rtc.public_ips.is_empty() {
        return config.rtc.public_ips.clone();
    }
    if !config.rtc.bind.is_unspecified() {
        return vec![config.rtc.bind];
    }
    tracing::warn!(
        "rtc.public_ips is empty and rtc.bind is unspecified: advertising 127.0.0.1, \
         which only clients on this machine can reach; set rtc.public_ips"
    );
    vec![IpAddr::from([127, 0, 0, 1])]
}
