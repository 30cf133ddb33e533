//! A media worker: one thread, one UDP socket (and an ICE-TCP listener, `rtc::tcp`), the peer
//! connections of the rooms it hosts.
//!
//! The loop waits on a datagram, a command from the control plane, the earliest timeout any
//! peer asked for, or housekeeping; each input goes to one `Rtc`, and what comes out is sent
//! (datagrams, batched per flush: `rtc::batch`) or handled (events). Nothing here takes a
//! lock: the worker owns all of it.
//! Every forwarding decision is the core's (`forward::Router` per publication); the worker
//! translates between str0m and those decisions. Its jobs, one file each:
//!
//! - this file: the loop (wait, handle, flush), panic boundaries, and the supervisor that
//!   restarts a worker whose loop died;
//! - [`peers`]: creating peers, feeding them datagrams and timeouts, polling their output,
//!   their failure and a participant's end;
//! - [`negotiation`]: the subscriber connection's offer/answer state machine;
//! - [`signaling`]: offers, answers and candidates, subscribe and unsubscribe;
//! - [`ingress`]: str0m events in (a packet → core packet → the publication's Router);
//! - [`egress`]: the Router's deliveries out (str0m writes), keyframe requests upstream,
//!   active speakers;
//! - [`commands`]: the control plane's commands;
//! - [`bandwidth`]: allocation of each subscriber's estimate, quality requests, dynacast;
//! - [`relay`]: the relay between workers, for a room spread over several;
//! - [`stats`]: metric handles and per-stream statistics.

mod bandwidth;
mod commands;
mod egress;
mod ingress;
mod negotiation;
mod peers;
mod relay;
mod signaling;
mod stats;

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet};
use std::net::SocketAddr;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::time::{Duration, Instant};

use str0m::change::SdpPendingOffer;
use str0m::format::PayloadParams;
use str0m::media::{MediaKind, Mid, Pt};
use str0m::net::Protocol;
use str0m::rtp::Ssrc;
use tokio::sync::mpsc;

use crate::forward::allocator::Allocator;
use crate::forward::audio_level::ActiveSpeakers;
use crate::forward::router::{Fanout, Router};
use crate::forward::selector::{LayerIndex, MAX_LAYERS};
use crate::forward::Codec;
use crate::metrics::Metrics;
use crate::model::{FailureCause, TrackKind, TrackSource};
use crate::rtc::batch::{RecvBatch, SendBatch};
use crate::rtc::demux::Demux;
use crate::rtc::load::WorkerLoad;
use crate::rtc::relay::{burst, Crossing, Mesh};
use crate::rtc::stack::panic_message;
use crate::rtc::tcp::{self, TcpConnections, TcpInput};
use crate::rtc::{Command, EventSink, Fault};
use negotiation::Negotiation;
use peers::Peer;
use stats::Counters;
use tokio::io::Interest;

/// How often room-wide state (active speakers) is looked at.
const HOUSEKEEPING_INTERVAL: Duration = Duration::from_millis(100);
/// How often each subscriber's bandwidth is re-split and dynacast re-decided, besides every new
/// estimate: layer bitrates drift as publishers' encoders adapt.
const ALLOCATION_INTERVAL: Duration = Duration::from_millis(500);
/// A worker whose loop keeps dying is not restarted faster than this: a fault that recurs at
/// once must not turn into a busy loop.
const RESTART_BACKOFF: Duration = Duration::from_millis(100);

type PeerId = u64;

/// Where a subscriber's packets of one track go: its m-line and the payload type it uses.
type Route = (Mid, Pt);

/// What a worker is told at start-up.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The addresses (with this worker's port) given to clients as ICE host candidates.
    pub candidates: Vec<SocketAddr>,
    /// The same, with this worker's ICE-TCP port (passive TCP candidates); empty without.
    pub tcp_candidates: Vec<SocketAddr>,
    /// Subscribe every participant to every publication in its room without being asked.
    pub auto_subscribe: bool,
    /// How long a peer may take to connect once negotiated (`rtc.connect_timeout`).
    pub connect_timeout: Duration,
}

/// What woke the worker's loop.
enum Wake {
    Socket(std::io::Result<()>),
    Tcp(TcpInput),
    Command(Option<Command>),
    Relay(Option<Crossing>),
    Timers,
    Housekeeping,
}

/// A track declared with `publish` before its m-line arrives, keyed by msid track id.
struct Declared {
    source: Option<TrackSource>,
    name: Option<String>,
}

/// One participant's media state on this worker: its two peer connections and what they carry.
/// The room (in `room/`) owns who the participant is and what others are told of its tracks.
struct Participant {
    room: String,
    events: EventSink,
    can_publish: bool,
    can_subscribe: bool,
    publisher: Option<PeerId>,
    subscriber: Option<PeerId>,
    declared: HashMap<String, Declared>,
    /// Track sids this participant publishes.
    published: Vec<String>,
    /// The tracks its subscriber connection carries, and their offer/answer state.
    negotiation: Negotiation<Mid>,
    /// The subscriber offer waiting for the client's answer.
    pending: Option<SdpPendingOffer>,
    /// The subscriber connection's data channel m-line is negotiated (or offered).
    has_channel: bool,
    /// The client asked for an ICE restart of its subscriber connection: the next offer
    /// carries new credentials.
    restart_ice: bool,
    /// The subscriber connection's latest downstream bandwidth estimate.
    estimate_bps: Option<u64>,
    /// Estimates come from TWCC feedback (then REMB is ignored).
    twcc_estimates: bool,
    allocator: Allocator<String>,
}

/// One published track's media: where it comes from and its Router (which also knows whether
/// it is muted: then nothing is forwarded). What it is called, and telling others it is muted,
/// is the room's.
struct Publication {
    /// The publisher's participant sid.
    participant: String,
    room: String,
    kind: MediaKind,
    source: Source,
    /// The format the publisher sends, once its first packet arrived.
    params: Option<PayloadParams>,
    codec: Codec,
    /// Subscriptions keyed by subscriber peer.
    router: Router<PeerId, Route>,
}

/// Where a publication's packets come from.
enum Source {
    /// A publisher peer on this worker.
    Local {
        publisher: PeerId,
        mid: Mid,
        /// The SSRC each layer arrives on, for keyframe requests.
        ssrcs: [Option<Ssrc>; MAX_LAYERS],
        /// Other workers with subscribers of it, and the highest layer each needs (`relay`).
        taps: Vec<(usize, LayerIndex)>,
    },
    /// The publisher is on worker `worker`, which relays its packets here (`relay`).
    Relayed {
        worker: usize,
        /// What this worker last asked that worker for.
        demanded: Option<LayerIndex>,
    },
}

/// The participants of one room on this worker, and who is speaking.
struct RoomMedia {
    participants: Vec<String>,
    speakers: ActiveSpeakers<String>,
}

struct Worker {
    socket: tokio::net::UdpSocket,
    /// ICE-TCP connections, when `rtc.ice_tcp` is on.
    tcp: Option<TcpConnections>,
    /// Datagrams of the current flush, sent together.
    batch: SendBatch,
    /// The one buffer str0m encrypts packets into, lent to the peer being polled.
    spare_datagram: Option<str0m::net::DatagramSend>,
    /// The address clients send to: what `Input::Receive` names as the destination.
    local: SocketAddr,
    settings: Settings,
    /// Boxed: a peer is ~10 KiB; inline, the map's empty slots (up to half) were that big.
    peers: HashMap<PeerId, Box<Peer>>,
    next_peer: PeerId,
    demux: Demux<PeerId>,
    participants: HashMap<String, Participant>,
    rooms: HashMap<String, RoomMedia>,
    /// By track sid.
    publications: HashMap<String, Publication>,
    /// (publisher peer, mid) -> track sid, shared so a packet's path copies no string.
    by_mid: HashMap<(PeerId, Mid), Arc<str>>,
    /// Peers whose output must be polled before the loop waits again.
    to_poll: HashSet<PeerId>,
    /// Participants whose subscriber connection needs an offer before the loop waits again.
    to_offer: HashSet<String>,
    /// Every peer's next timeout, earliest first. An entry whose time no longer matches its
    /// peer's `timeout` is stale and skipped: pushing is cheaper than finding and updating.
    timers: BinaryHeap<Reverse<(Instant, PeerId)>>,
    /// Where the grid of quiet peers' wake-ups starts (`peers::QUIET_TICK`).
    quiet_epoch: Instant,
    /// The last media in or out, command, peer made or connected: a second on, it is quiet.
    active_at: Instant,
    /// The last read filled its batch: the rest is read at once, quiet or not.
    read_now: bool,
    metrics: Arc<Metrics>,
    counters: Counters,
    last_allocation: Instant,
    stream_totals: stats::StreamTotals,
    /// Video subscriptions by layer (q, h, f, off) this worker last added to the gauge.
    layer_counts: [i64; MAX_LAYERS + 1],
    /// The fan-out of the packet being forwarded, reused so forwarding allocates nothing.
    fanout: Fanout<PeerId, Route>,
    /// A test asked this worker's loop to die (see [`Fault::Worker`]).
    crash: bool,
    /// Where the time spent working is counted (`rtc.max_worker_load`).
    load: Arc<WorkerLoad>,
    /// The other workers, for rooms spread over several.
    relay: Mesh,
}

/// Runs a media worker until `Shutdown`, restarting it when its loop dies of a panic: its
/// participants are told their media failed (they leave and may rejoin); every other worker
/// goes on untouched.
pub fn run(
    socket: std::net::UdpSocket,
    tcp: Option<std::net::TcpListener>,
    settings: Settings,
    mut inbox: mpsc::Receiver<Command>,
    (relay, mut crossings): (Mesh, mpsc::Receiver<Crossing>),
    metrics: Arc<Metrics>,
    load: Arc<WorkerLoad>,
) {
    loop {
        let runtime = match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(rt) => rt,
            Err(e) => {
                tracing::error!("media worker cannot start its runtime: {e}");
                return;
            }
        };
        let socket = match socket
            .try_clone()
            .and_then(|s| runtime.block_on(async { tokio::net::UdpSocket::from_std(s) }))
        {
            Ok(s) => s,
            Err(e) => {
                tracing::error!("media worker cannot use its socket: {e}");
                return;
            }
        };
        let tcp = match tcp.as_ref().map(|l| {
            let local = settings.tcp_candidates.first().copied();
            let local = local.map_or_else(|| l.local_addr(), Ok)?;
            let _guard = runtime.enter();
            TcpConnections::new(l.try_clone()?, local)
        }) {
            Some(Ok(tcp)) => Some(tcp),
            Some(Err(e)) => {
                tracing::error!("media worker cannot use its ICE-TCP listener: {e}");
                return;
            }
            None => None,
        };
        let mut worker = Worker::new(
            socket,
            tcp,
            settings.clone(),
            metrics.clone(),
            load.clone(),
            relay.clone(),
        );
        worker.relay_restarted();
        let ended = catch_unwind(AssertUnwindSafe(|| {
            runtime.block_on(worker.run(&mut inbox, &mut crossings));
        }));
        match ended {
            Ok(()) => {
                worker.close_all();
                return;
            }
            Err(panic) => {
                let reason = panic_message(panic.as_ref());
                tracing::error!("media worker died ({reason}); restarting it");
                metrics.worker_restarts.inc();
                // Whatever state the panic left, nobody is served by it any more.
                let _ = catch_unwind(AssertUnwindSafe(|| worker.abandon()));
                drop(runtime);
                std::thread::sleep(RESTART_BACKOFF);
            }
        }
    }
}

impl Worker {
    fn new(
        socket: tokio::net::UdpSocket,
        tcp: Option<TcpConnections>,
        settings: Settings,
        metrics: Arc<Metrics>,
        load: Arc<WorkerLoad>,
        relay: Mesh,
    ) -> Self {
        let local = settings.candidates.first().copied().unwrap_or_else(|| {
            socket
                .local_addr()
                .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 0)))
        });
        Self {
            socket,
            tcp,
            batch: SendBatch::default(),
            spare_datagram: None,
            local,
            settings,
            peers: HashMap::new(),
            next_peer: 1,
            demux: Demux::default(),
            participants: HashMap::new(),
            rooms: HashMap::new(),
            publications: HashMap::new(),
            by_mid: HashMap::new(),
            to_poll: HashSet::new(),
            to_offer: HashSet::new(),
            timers: BinaryHeap::new(),
            quiet_epoch: Instant::now(),
            active_at: Instant::now(),
            read_now: false,
            counters: Counters::new(&metrics),
            metrics,
            last_allocation: Instant::now(),
            stream_totals: stats::StreamTotals::default(),
            layer_counts: [0; MAX_LAYERS + 1],
            fanout: Fanout::default(),
            crash: false,
            load,
            relay,
        }
    }

    async fn run(
        &mut self,
        inbox: &mut mpsc::Receiver<Command>,
        crossings: &mut mpsc::Receiver<Crossing>,
    ) {
        let mut received = RecvBatch::default();
        let mut housekeeping = tokio::time::interval(HOUSEKEEPING_INTERVAL);
        housekeeping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let next = self
                .timers
                .peek()
                .map(|Reverse((at, _))| *at)
                .unwrap_or_else(|| Instant::now() + Duration::from_secs(1));
            let woke = tokio::select! {
                ready = peers::readable_by(&self.socket, self.read_epoch()) => Wake::Socket(ready),
                input = tcp::next_input(&mut self.tcp) => Wake::Tcp(input),
                command = inbox.recv() => Wake::Command(command),
                crossing = crossings.recv() => Wake::Relay(crossing),
                _ = tokio::time::sleep_until(next.into()) => Wake::Timers,
                _ = housekeeping.tick() => Wake::Housekeeping,
            };
            // What the worker does from here until it waits again is its load.
            let started = Instant::now();
            self.counters.wakeups[woke.cause()].inc();
            match woke {
                Wake::Socket(Ok(())) => self.drain_socket(&mut received),
                Wake::Socket(Err(e)) => tracing::debug!("media socket read: {e}"),
                Wake::Tcp(input) => self.on_tcp(input),
                Wake::Command(None | Some(Command::Shutdown)) => return,
                Wake::Command(Some(command)) => self.on_command_isolated(command),
                Wake::Relay(None) => {}
                Wake::Relay(Some(first)) => {
                    for crossing in burst(first, crossings) {
                        self.isolated(None, |w| w.on_crossing(crossing));
                    }
                }
                Wake::Timers => self.on_timers(&mut received),
                Wake::Housekeeping => self.isolated(None, |w| w.housekeeping()),
            }
            self.flush();
            self.load.add_busy(started.elapsed());
            if self.crash {
                panic!("media worker fault injected by a test");
            }
        }
    }

    /// Takes the datagrams waiting on the socket, up to
    /// [`RECV_BATCH`](crate::rtc::batch::RECV_BATCH) in one `recvmmsg`, before the peers they
    /// were forwarded to are polled. A video frame arrives as a burst of packets: each
    /// subscriber's stack then takes the burst in one pass, not one per packet.
    fn drain_socket(&mut self, batch: &mut RecvBatch) {
        // A burst, not an unbounded backlog: timers and commands get their turn between.
        let read = self
            .socket
            .try_io(Interest::READABLE, || batch.recv(&self.socket));
        match read {
            Ok(read) => {
                self.counters.datagrams_in.inc_by(read as u64);
                self.read_now = read == crate::rtc::batch::RECV_BATCH;
                for (source, datagram) in batch.datagrams() {
                    self.take_datagram(source, datagram);
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => tracing::debug!("media socket read: {e}"),
        }
    }

    /// One datagram into its peer, whose output is then taken at once: str0m holds what an
    /// input produced (a received packet) until it is polled, and the next input would find
    /// it there. What the packet was forwarded to waits for the flush.
    fn take_datagram(&mut self, source: SocketAddr, datagram: &[u8]) {
        if let Some(id) = self.on_datagram(source, datagram, Protocol::Udp) {
            self.poll_isolated(id);
        }
    }

    /// A connection or datagram of ICE-TCP. A connection whose first datagram belongs to no
    /// peer is closed: it is nobody's.
    fn on_tcp(&mut self, input: TcpInput) {
        let Some(tcp) = self.tcp.as_mut() else {
            return;
        };
        match input {
            TcpInput::Accepted(stream, addr) => {
                if !tcp.open(stream, addr) {
                    self.counters.dropped_unknown_source.inc();
                }
            }
            TcpInput::Datagram(addr, datagram) => {
                match self.on_datagram(addr, &datagram, Protocol::Tcp) {
                    Some(id) => {
                        if let Some(tcp) = self.tcp.as_mut() {
                            tcp.routed(addr);
                        }
                        self.poll_isolated(id);
                    }
                    None => {
                        if let Some(tcp) = self.tcp.as_mut() {
                            if !tcp.is_routed(addr) {
                                tcp.close(addr);
                            }
                        }
                    }
                }
            }
            TcpInput::Closed(addr) => tcp.close(addr),
        }
    }

    /// Runs `f` under a panic boundary. A panic ends `participant`'s media (the input was
    /// about it) and nothing else; with no participant to blame it is only counted.
    fn isolated(&mut self, participant: Option<&str>, f: impl FnOnce(&mut Self)) {
        if let Err(panic) = catch_unwind(AssertUnwindSafe(|| f(self))) {
            let reason = panic_message(panic.as_ref());
            tracing::error!(?participant, "panic in the media worker: {reason}");
            match participant {
                Some(p) => self.fail_participant(p, FailureCause::Internal, &reason),
                None => self.counters.panics.inc(),
            }
        }
    }

    fn on_command_isolated(&mut self, command: Command) {
        let participant = command.participant().map(str::to_string);
        self.active_at = Instant::now();
        self.isolated(participant.as_deref(), |w| w.on_command(command));
    }

    /// Makes the subscriber offers the input just handled called for, one per participant.
    fn make_offers(&mut self) {
        if self.to_offer.is_empty() {
            return;
        }
        let due: Vec<String> = self.to_offer.drain().collect();
        for participant in due {
            self.isolated(Some(&participant), |w| w.offer(&participant));
        }
    }

    /// Drains every peer that had input until none has output left. Events can write to other
    /// peers (forwarded packets), which must then be polled in turn.
    fn flush(&mut self) {
        // In rounds: draining one peer can give others output (forwarded packets) or call for
        // offers (a publisher's new track).
        loop {
            self.make_offers();
            if self.to_poll.is_empty() {
                let sent = self.batch.flush(&self.socket);
                self.count_sent(sent);
                return;
            }
            let round: Vec<PeerId> = self.to_poll.drain().collect();
            for id in round {
                self.poll_isolated(id);
            }
        }
    }

    /// Polls one peer under a panic boundary that ends its participant.
    fn poll_isolated(&mut self, id: PeerId) {
        if let Err(panic) = catch_unwind(AssertUnwindSafe(|| self.poll_peer(id))) {
            let reason = panic_message(panic.as_ref());
            tracing::error!(peer = id, "panic while handling a peer's output: {reason}");
            self.fail_peer(id, FailureCause::Internal, &reason);
        }
    }

    fn housekeeping(&mut self) {
        let now = Instant::now();
        if now.saturating_duration_since(self.last_allocation) >= ALLOCATION_INTERVAL {
            self.last_allocation = now;
            let participants: Vec<String> = self.participants.keys().cloned().collect();
            for p in participants {
                self.isolated(Some(&p), |w| w.allocate(&p, now));
            }
            let tracks: Vec<String> = self.publications.keys().cloned().collect();
            for t in tracks {
                self.dynacast(&t);
            }
            self.count_layers();
        }
        self.announce_speakers(now);
        self.fail_unconnected(now);
    }

    /// A test-only fault (see [`Fault`]).
    fn inject(&mut self, fault: Fault) {
        match fault {
            Fault::Participant => panic!("media fault injected by a test"),
            Fault::Worker => self.crash = true,
        }
    }

    fn close_all(&mut self) {
        let participants: Vec<String> = self.participants.keys().cloned().collect();
        for p in participants {
            self.remove_participant(&p);
        }
    }

    /// The loop died: tell every participant its media is gone. No state is trusted; what
    /// the gauges counted for this worker is given back.
    fn abandon(&mut self) {
        for participant in self.participants.values() {
            participant.events.send(crate::rtc::MediaEvent::Failed {
                cause: FailureCause::Internal,
                message: "the media worker restarted".into(),
            });
        }
        self.metrics.peers.sub(self.peers.len() as i64);
        let subscriptions: usize = self
            .publications
            .values()
            .map(|p| p.router.subscription_count())
            .sum();
        let local = || {
            self.publications
                .values()
                .filter(|p| matches!(p.source, Source::Local { .. }))
        };
        let receivers: usize = local().map(|p| p.router.layer_count()).sum();
        self.metrics.subscriptions.sub(subscriptions as i64);
        self.metrics.receivers.sub(receivers as i64);
        for p in local() {
            self.metrics
                .publications
                .with_label_values(&[kind_label(p.kind)])
                .dec();
        }
        self.clear_layer_counts();
    }
}

fn kind_label(kind: MediaKind) -> &'static str {
    match kind {
        MediaKind::Audio => "audio",
        MediaKind::Video => "video",
    }
}

fn track_kind(kind: MediaKind) -> TrackKind {
    match kind {
        MediaKind::Audio => TrackKind::Audio,
        MediaKind::Video => TrackKind::Video,
    }
}
