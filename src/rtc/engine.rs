//! The media engine: one worker thread and one UDP socket per core, started together, each
//! room placed on one worker by its name, all stopped together.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::thread::JoinHandle;

use tokio::sync::{mpsc, oneshot};

use crate::config::Config;
use crate::metrics::Metrics;
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
            let (tx, rx) = mpsc::channel(WORKER_COMMAND_QUEUE);
            let settings = worker::Settings {
                candidates,
                auto_subscribe: config.rtc.auto_subscribe,
                connect_timeout: config.rtc.connect_timeout,
            };
            let worker_metrics = metrics.clone();
            let thread = std::thread::Builder::new()
                .name(format!("sfu-media-{index}"))
                .spawn(move || worker::run(socket, settings, rx, worker_metrics))?;
            tracing::info!(%addr, ?advertised, "media worker {index} listening");
            workers.push(WorkerThread {
                handle: MediaHandle::new(tx, &metrics),
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
            if w.handle.send(Command::Stats { reply }).await.is_ok() {
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
    fn worker_ports_count_up_and_never_wrap() {
        assert_eq!(worker_port(7882, 0).ok(), Some(7882));
        assert_eq!(worker_port(7882, 3).ok(), Some(7885));
        assert_eq!(worker_port(0, 5).ok(), Some(0));
        assert_eq!(worker_port(65535, 0).ok(), Some(65535));
        assert!(worker_port(65535, 1).is_err());
        assert!(worker_port(1, 1 << 20).is_err());
    }
}
