//! The media engine: one worker thread and one UDP socket per core, started together, each
//! participant placed on a worker (a room's own while it is small, the least-loaded one once it
//! is big enough to spread), all stopped together.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use tokio::sync::{mpsc, oneshot};

use crate::config::Config;
use crate::metrics::Metrics;
use crate::model::TrackForwarding;
use crate::rtc::load::{LoadSampler, WorkerLoad, SAMPLE_INTERVAL};
use crate::rtc::worker;
use crate::rtc::{Command, MediaHandle, WorkerStats, WORKER_COMMAND_QUEUE};

/// Kernel buffer asked for on a media socket, each way. Publishers' keyframes arrive in bursts
/// (and in a meeting they line up), and a worker fanning one out is briefly not reading: the
/// default ~200 KiB overflows and drops whole frames. The kernel caps it at net.core.rmem_max
/// and wmem_max; raise those to let it take effect fully.
pub const SOCKET_BUFFER_BYTES: usize = 4 * 1024 * 1024;

struct WorkerThread {
    handle: MediaHandle,
    thread: std::sync::Mutex<Option<JoinHandle<()>>>,
    addr: SocketAddr,
    load: Arc<WorkerLoad>,
}

/// A join refused because the worker it would go to is past `rtc.max_worker_load`.
#[derive(Debug, Clone, Copy, PartialEq, thiserror::Error)]
#[error("the server is at its CPU budget (media worker {worker} is {percent:.0}% busy); try again later")]
pub struct Overloaded {
    pub worker: usize,
    pub percent: f64,
}

/// The media workers: one thread and one UDP socket each.
pub struct MediaEngine {
    workers: Vec<WorkerThread>,
    /// The addresses clients are told to reach the workers at.
    advertised: Vec<IpAddr>,
    placements: Arc<Mutex<Placements>>,
    /// `rtc.max_worker_load`.
    max_load: f64,
    /// Set on shutdown: the load sampler thread ends.
    sampler_stop: Arc<std::sync::atomic::AtomicBool>,
}

/// Where each room with participants has them: a room stays on its home worker until it has
/// `rtc.spread_rooms_at` participants; after that each newcomer goes to the least-loaded worker
/// and the relay between workers (`worker::relay`) carries the room's media across.
#[derive(Debug, Default)]
struct Placements {
    rooms: HashMap<String, RoomPlacement>,
    /// `rtc.spread_rooms_at` (0: never spread).
    spread_at: usize,
}

#[derive(Debug, Clone)]
struct RoomPlacement {
    /// Where its first participant went: the room's one worker while it is small.
    home: usize,
    /// Its participants on each worker, by index.
    on: Vec<usize>,
}

impl RoomPlacement {
    fn participants(&self) -> usize {
        self.on.iter().sum()
    }
}

impl Placements {
    fn new(spread_at: usize) -> Self {
        Self {
            rooms: HashMap::new(),
            spread_at,
        }
    }

    /// The worker the next participant of `room` must go to, if the room has one: its home
    /// while it is smaller than `spread_at`. `None`: any worker (a new or a spread room).
    fn home_for_next(&self, room: &str) -> Option<usize> {
        let p = self.rooms.get(room)?;
        (self.spread_at == 0 || p.participants() < self.spread_at).then_some(p.home)
    }

    /// The worker for one more participant of `room`: its home worker while the room is
    /// small; else (a new room, or a room big enough to spread) a worker under its CPU budget
    /// (`over[w]` false) before one past it, then the one with the fewest participants, then
    /// the fewest rooms, then the lowest index.
    fn join(&mut self, room: &str, over: &[bool]) -> usize {
        let workers = over.len().max(1);
        let worker = self.home_for_next(room).unwrap_or_else(|| {
            let mut load = vec![(0usize, 0usize); workers];
            for p in self.rooms.values() {
                for (w, n) in p.on.iter().enumerate() {
                    if *n > 0 {
                        load[w].0 += n;
                        load[w].1 += 1;
                    }
                }
            }
            (0..workers)
                .min_by_key(|&w| (over.get(w).copied().unwrap_or(false), load[w], w))
                .unwrap_or(0)
        });
        let placement = self
            .rooms
            .entry(room.to_string())
            .or_insert_with(|| RoomPlacement {
                home: worker,
                on: vec![0; workers],
            });
        placement.on[worker] += 1;
        worker
    }

    /// One participant of `room` on `worker` is gone; a room with none left is placed anew
    /// next time.
    fn leave(&mut self, room: &str, worker: usize) {
        if let Some(p) = self.rooms.get_mut(room) {
            if let Some(n) = p.on.get_mut(worker) {
                *n = n.saturating_sub(1);
            }
            if p.participants() == 0 {
                self.rooms.remove(room);
            }
        }
    }

    /// The workers with participants of `room`.
    fn workers_of(&self, room: &str) -> Vec<usize> {
        self.rooms.get(room).map_or_else(Vec::new, |p| {
            (0..p.on.len()).filter(|&w| p.on[w] > 0).collect()
        })
    }
}

/// One participant's place on a media worker, held while the participant is in the room.
/// Dropping it frees the place.
pub struct Placement {
    pub handle: MediaHandle,
    /// The worker's index.
    pub worker: usize,
    room: String,
    placements: Arc<Mutex<Placements>>,
}

impl Drop for Placement {
    fn drop(&mut self) {
        if let Ok(mut p) = self.placements.lock() {
            p.leave(&self.room, self.worker);
        }
    }
}

impl MediaEngine {
    /// Binds every worker's socket and starts its thread.
    pub fn start(config: &Config, metrics: Arc<Metrics>) -> anyhow::Result<Self> {
        let count = config.media_workers();
        let advertised = advertised_ips(config);
        let mut workers = Vec::with_capacity(count);
        let mut meshes = crate::rtc::relay::Mesh::build(count, &metrics).into_iter();
        for index in 0..count {
            let relay = meshes
                .next()
                .ok_or_else(|| anyhow::anyhow!("no relay for media worker {index}"))?;
            let port = worker_port(config.rtc.udp_port, index)?;
            let bind = SocketAddr::new(config.rtc.bind, port);
            let socket = bind_media_socket(bind).map_err(|e| {
                anyhow::anyhow!("cannot bind media UDP {bind} (rtc.bind, rtc.udp_port): {e}")
            })?;
            let addr = socket.local_addr()?;
            let candidates: Vec<SocketAddr> = advertised
                .iter()
                .map(|ip| SocketAddr::new(*ip, addr.port()))
                .collect();
            let tcp = if config.rtc.ice_tcp {
                let port = worker_port(config.rtc.tcp_port, index)?;
                let bind = SocketAddr::new(config.rtc.bind, port);
                let listener = std::net::TcpListener::bind(bind).map_err(|e| {
                    anyhow::anyhow!("cannot bind ICE-TCP {bind} (rtc.bind, rtc.tcp_port): {e}")
                })?;
                Some(listener)
            } else {
                None
            };
            let tcp_candidates: Vec<SocketAddr> = match &tcp {
                Some(listener) => {
                    let port = listener.local_addr()?.port();
                    advertised
                        .iter()
                        .map(|ip| SocketAddr::new(*ip, port))
                        .collect()
                }
                None => Vec::new(),
            };
            let (tx, rx) = mpsc::channel(WORKER_COMMAND_QUEUE);
            let settings = worker::Settings {
                candidates,
                tcp_candidates,
                auto_subscribe: config.rtc.auto_subscribe,
                connect_timeout: config.rtc.connect_timeout,
            };
            let worker_metrics = metrics.clone();
            let load = Arc::new(WorkerLoad::default());
            let worker_load = load.clone();
            let thread = std::thread::Builder::new()
                .name(format!("sfu-media-{index}"))
                .spawn(move || {
                    worker::run(
                        socket,
                        tcp,
                        settings,
                        rx,
                        relay,
                        worker_metrics,
                        worker_load,
                    )
                })?;
            tracing::info!(%addr, ?advertised, "media worker {index} listening");
            workers.push(WorkerThread {
                handle: MediaHandle::new(tx, &metrics),
                thread: std::sync::Mutex::new(Some(thread)),
                addr,
                load,
            });
        }
        let sampler_stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let loads: Vec<Arc<WorkerLoad>> = workers.iter().map(|w| w.load.clone()).collect();
        let stop = sampler_stop.clone();
        std::thread::Builder::new()
            .name("sfu-load".into())
            .spawn(move || sample_loads(&loads, &stop, &metrics))?;
        Ok(Self {
            workers,
            advertised,
            placements: Arc::new(Mutex::new(Placements::new(config.rtc.spread_rooms_at))),
            max_load: config.rtc.max_worker_load,
            sampler_stop,
        })
    }

    /// Whether one more participant of `room` may join: not if the worker it must go to (a
    /// small room's), or for a new or spread room every worker, is past
    /// `rtc.max_worker_load`.
    pub fn admit(&self, room: &str) -> Result<(), Overloaded> {
        let home = self
            .placements
            .lock()
            .ok()
            .and_then(|p| p.home_for_next(room));
        let refusal = match home {
            Some(w) => self.overloaded(w),
            // Some(first refusal) only if every worker refuses.
            None => (0..self.workers.len())
                .map(|w| self.overloaded(w))
                .collect::<Option<Vec<_>>>()
                .and_then(|all| all.first().copied()),
        };
        refusal.map_or(Ok(()), Err)
    }

    /// Worker `w`'s refusal, if it is past `rtc.max_worker_load` (1: never).
    fn overloaded(&self, w: usize) -> Option<Overloaded> {
        let load = self.workers[w].load.load();
        (self.max_load < 1.0 && load >= self.max_load).then_some(Overloaded {
            worker: w,
            percent: load * 100.0,
        })
    }

    /// Each worker's smoothed load (busy fraction), by index.
    pub fn loads(&self) -> Vec<f64> {
        self.workers.iter().map(|w| w.load.load()).collect()
    }

    /// A place for one more participant of `room`: on the worker that hosts the room while it
    /// is small, else on the least-loaded worker (see [`Placements`]).
    pub fn place(&self, room: &str) -> Placement {
        let over: Vec<bool> = (0..self.workers.len())
            .map(|w| self.overloaded(w).is_some())
            .collect();
        let worker = self
            .placements
            .lock()
            .map(|mut p| p.join(room, &over))
            .unwrap_or(0);
        Placement {
            handle: self.workers[worker].handle.clone(),
            worker,
            room: room.to_string(),
            placements: self.placements.clone(),
        }
    }

    /// The indexes of the workers with participants of `room`.
    pub fn workers_of(&self, room: &str) -> Vec<usize> {
        self.placements
            .lock()
            .map(|p| p.workers_of(room))
            .unwrap_or_default()
    }

    /// Worker `worker`'s command queue (tests inject faults through it).
    pub fn handle(&self, worker: usize) -> Option<MediaHandle> {
        self.workers.get(worker).map(|w| w.handle.clone())
    }

    /// The UDP addresses the workers listen on.
    pub fn addrs(&self) -> Vec<SocketAddr> {
        self.workers.iter().map(|w| w.addr).collect()
    }

    /// The addresses clients are told to reach this machine's media at.
    pub fn advertised_ips(&self) -> &[IpAddr] {
        &self.advertised
    }

    /// The UDP media addresses clients send to: each advertised address with each worker's port.
    pub fn media_addrs(&self) -> Vec<SocketAddr> {
        self.advertised
            .iter()
            .flat_map(|ip| {
                self.workers
                    .iter()
                    .map(|w| SocketAddr::new(*ip, w.addr.port()))
            })
            .collect()
    }

    /// Object counts summed over all workers.
    pub async fn stats(&self) -> WorkerStats {
        let mut total = WorkerStats::default();
        for w in &self.workers {
            let (reply, rx) = oneshot::channel();
            if w.handle.send(Command::Stats { reply }).await.is_ok() {
                if let Ok(s) = rx.await {
                    total = total + s;
                }
            }
        }
        total
    }

    /// What is forwarded of each track of `room` to whom; empty while nobody is in it. A
    /// room spread over workers has its subscribers of a track on each: they are put together.
    pub async fn forwarding(&self, room: &str) -> Vec<TrackForwarding> {
        let mut tracks: Vec<TrackForwarding> = Vec::new();
        for w in self.workers_of(room) {
            let (reply, rx) = oneshot::channel();
            let command = Command::Forwarding {
                room: room.to_string(),
                reply,
            };
            if self.workers[w].handle.send(command).await.is_err() {
                continue;
            }
            for track in rx.await.unwrap_or_default() {
                match tracks.iter_mut().find(|t| t.sid == track.sid) {
                    Some(t) => t.subscribers.extend(track.subscribers),
                    None => tracks.push(track),
                }
            }
        }
        for t in &mut tracks {
            t.subscribers
                .sort_by(|a, b| a.participant.cmp(&b.participant));
        }
        tracks.sort_by(|a, b| a.sid.cmp(&b.sid));
        tracks
    }

    /// Stops every worker and waits for its thread (blocking; call it off the runtime).
    pub fn shutdown(&self) {
        self.sampler_stop
            .store(true, std::sync::atomic::Ordering::Relaxed);
        for w in &self.workers {
            // A full queue still ends: the worker stops when its handles are gone too.
            let _ = w.handle.try_send(Command::Shutdown);
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

/// The load sampler's thread: every [`SAMPLE_INTERVAL`] the workers' busy time becomes their
/// load, shown as `sfu_worker_load{worker}`, until `stop` is set.
fn sample_loads(
    loads: &[Arc<WorkerLoad>],
    stop: &std::sync::atomic::AtomicBool,
    metrics: &Metrics,
) {
    let refs: Vec<&WorkerLoad> = loads.iter().map(Arc::as_ref).collect();
    let gauges: Vec<_> = (0..loads.len())
        .map(|w| metrics.worker_load.with_label_values(&[&w.to_string()]))
        .collect();
    let mut sampler = LoadSampler::new(&refs, std::time::Instant::now());
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        std::thread::sleep(SAMPLE_INTERVAL);
        sampler.sample(&refs, std::time::Instant::now());
        for (gauge, load) in gauges.iter().zip(&refs) {
            gauge.set(load.load());
        }
    }
}

/// Worker `index`'s UDP port: `rtc.udp_port` and up, or any free port for 0.
fn worker_port(first: u16, index: usize) -> anyhow::Result<u16> {
    if first == 0 {
        return Ok(0);
    }
    u16::try_from(index)
        .ok()
        .and_then(|i| first.checked_add(i))
        .ok_or_else(|| {
            anyhow::anyhow!(
                "rtc.udp_port {first} + {index} media workers passes port 65535; \
                 lower rtc.udp_port or rtc.workers"
            )
        })
}

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_room_goes_to_the_least_loaded_worker_and_stays_there() {
        const FREE: [bool; 3] = [false; 3];
        let mut p = Placements::new(0);
        // A big room on worker 0, then a small one on 1.
        for _ in 0..5 {
            assert_eq!(p.join("big", &FREE), 0);
        }
        assert_eq!(p.join("small", &FREE), 1);
        assert_eq!(p.join("other", &FREE), 2);
        assert_eq!(
            p.join("other", &FREE),
            2,
            "a room's participants share its worker"
        );
        // Loads 5 / 1 / 2: the next new room goes to worker 1.
        assert_eq!(p.join("next", &FREE), 1);
        // The big room empties: it is forgotten, and worker 0 is the least loaded again.
        for _ in 0..5 {
            p.leave("big", 0);
        }
        assert_eq!(p.rooms.get("big").map(|r| r.home), None);
        assert_eq!(p.join("again", &FREE), 0);
        // A leave for an unknown room changes nothing.
        p.leave("nowhere", 0);
        assert_eq!(p.rooms.len(), 4);
    }

    #[test]
    fn a_new_room_avoids_a_worker_past_its_cpu_budget() {
        let mut p = Placements::new(0);
        // Worker 0 is idle by participants but past its budget: the room goes to 1.
        assert_eq!(p.join("a", &[true, false]), 1);
        // A room already on a worker stays there whatever its load (admission refuses instead).
        assert_eq!(p.join("a", &[false, true]), 1);
        assert_eq!(p.home_for_next("a"), Some(1));
        // Every worker past budget: the least loaded by participants still.
        assert_eq!(p.join("b", &[true, true]), 0);
    }

    #[test]
    fn a_room_at_the_spread_size_takes_newcomers_on_the_least_loaded_worker() {
        const FREE: [bool; 2] = [false; 2];
        let mut p = Placements::new(3);
        // Another room makes worker 1 busier.
        for _ in 0..2 {
            assert_eq!(p.join("other", &[true, false]), 1);
        }
        // Small: all on its home worker.
        for _ in 0..3 {
            assert_eq!(p.join("big", &FREE), 0);
        }
        assert_eq!(p.home_for_next("big"), None, "three in: it spreads");
        // Loads 3 / 2, then 3 / 3, then 4 / 3 ...: newcomers even the workers out.
        assert_eq!(p.join("big", &FREE), 1);
        assert_eq!(p.join("big", &FREE), 0);
        assert_eq!(p.join("big", &FREE), 1);
        assert_eq!(p.workers_of("big"), vec![0, 1]);
        // A worker past its budget takes no newcomer while another is under it.
        assert_eq!(p.join("big", &[false, true]), 0);
        // Leaves are counted on the worker they were on; below the spread size again, the
        // room's home takes newcomers.
        for _ in 0..3 {
            p.leave("big", 1);
        }
        assert_eq!(p.workers_of("big"), vec![0]);
        for _ in 0..3 {
            p.leave("big", 0);
        }
        assert_eq!(p.home_for_next("big"), Some(0));
        p.leave("big", 0);
        p.leave("big", 0);
        assert_eq!(p.workers_of("big"), Vec::<usize>::new());
        assert!(!p.rooms.contains_key("big"));
    }

    #[test]
    fn worker_ports_count_up_and_never_wrap() {
        assert_eq!(worker_port(7882, 0).ok(), Some(7882));
        assert_eq!(worker_port(7882, 3).ok(), Some(7885));
        assert_eq!(worker_port(0, 5).ok(), Some(0));
        assert_eq!(worker_port(65535, 0).ok(), Some(65535));
        assert!(worker_port(65535, 1).is_err());
        assert!(worker_port(1, 1 << 20).is_err());
    }
}
