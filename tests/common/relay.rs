//! A UDP relay on loopback that stands in for a bad network (no `tc netem` on these kernels).
//!
//! The client talks to the relay's client-side socket; the relay talks to the server from its
//! server-side socket. Traffic toward the client passes a token bucket: past the rate, datagrams
//! are dropped, as a congested bottleneck drops them. The rate can change while media flows.
//! An [`Impairment`] adds loss (random and in bursts) and jitter to both directions.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::net::UdpSocket;

/// Burst the bucket allows, in bytes: about one video frame.
const BUCKET_BYTES: f64 = 12_000.0;

/// A bad network's losses and delay, applied to each direction on its own.
#[derive(Debug, Clone, Copy, Default)]
pub struct Impairment {
    /// Chance that a datagram is lost on its own.
    pub loss: f64,
    /// Share of datagrams lost in bursts: a burst starts with chance `burst_loss / burst_len`.
    pub burst_loss: f64,
    /// Datagrams a burst drops in a row.
    pub burst_len: u32,
    /// Each datagram is held for a uniformly random time up to this (so some are reordered).
    pub jitter: Duration,
}

/// One direction's loss state: how much of a burst is left.
#[derive(Debug, Default)]
struct Lossy {
    burst_left: u32,
}

impl Lossy {
    fn drops(&mut self, impairment: &Impairment) -> bool {
        if self.burst_left > 0 {
            self.burst_left -= 1;
            return true;
        }
        if impairment.burst_len > 0
            && rand::random::<f64>() < impairment.burst_loss / f64::from(impairment.burst_len)
        {
            self.burst_left = impairment.burst_len - 1;
            return true;
        }
        rand::random::<f64>() < impairment.loss
    }
}

pub struct Relay {
    /// Where the client should send (the relay's client side).
    pub client_side: SocketAddr,
    /// Bits per second toward the client; 0 means unlimited.
    limit_bps: Arc<AtomicU64>,
    impairment: Arc<Mutex<Impairment>>,
    /// Datagrams dropped toward the client by the rate limit.
    pub dropped: Arc<AtomicU64>,
    /// Datagrams the impairment dropped, both directions.
    pub impaired: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

/// Sends `datagram` now, or after a random part of the jitter.
async fn deliver(socket: &Arc<UdpSocket>, datagram: &[u8], to: SocketAddr, jitter: Duration) {
    if jitter.is_zero() {
        let _ = socket.send_to(datagram, to).await;
        return;
    }
    let (socket, datagram) = (socket.clone(), datagram.to_vec());
    let hold = jitter.mul_f64(rand::random::<f64>());
    tokio::spawn(async move {
        tokio::time::sleep(hold).await;
        let _ = socket.send_to(&datagram, to).await;
    });
}

impl Relay {
    /// Relays between a client and `server` (a UDP address on loopback).
    pub async fn start(server: SocketAddr) -> Self {
        let client_sock = Arc::new(UdpSocket::bind("127.0.0.1:0").await.expect("bind relay"));
        let server_sock = Arc::new(UdpSocket::bind("127.0.0.1:0").await.expect("bind relay"));
        let client_side = client_sock.local_addr().expect("relay addr");
        let limit_bps = Arc::new(AtomicU64::new(0));
        let impairment = Arc::new(Mutex::new(Impairment::default()));
        let dropped = Arc::new(AtomicU64::new(0));
        let impaired = Arc::new(AtomicU64::new(0));
        let (limit, drops) = (limit_bps.clone(), dropped.clone());
        let (impair, impaired_count) = (impairment.clone(), impaired.clone());
        let task = tokio::spawn(async move {
            let (mut lossy_up, mut lossy_down) = (Lossy::default(), Lossy::default());
            let current = || *impair.lock().unwrap_or_else(|e| e.into_inner());
            let mut client: Option<SocketAddr> = None;
            let mut tokens = BUCKET_BYTES;
            let mut last = Instant::now();
            let mut up = vec![0u8; 2048];
            let mut down = vec![0u8; 2048];
            loop {
                tokio::select! {
                    Ok((n, from)) = client_sock.recv_from(&mut up) => {
                        client = Some(from);
                        let impairment = current();
                        if lossy_up.drops(&impairment) {
                            impaired_count.fetch_add(1, Ordering::Relaxed);
                            continue;
                        }
                        deliver(&server_sock, &up[..n], server, impairment.jitter).await;
                    }
                    Ok((n, _)) = server_sock.recv_from(&mut down) => {
                        let Some(to) = client else { continue };
                        let rate = limit.load(Ordering::Relaxed);
                        if rate > 0 {
                            let now = Instant::now();
                            let elapsed = now.duration_since(last).as_secs_f64();
                            last = now;
                            tokens = (tokens + elapsed * rate as f64 / 8.0).min(BUCKET_BYTES);
                            if tokens < n as f64 {
                                drops.fetch_add(1, Ordering::Relaxed);
                                continue;
                            }
                            tokens -= n as f64;
                        }
                        let impairment = current();
                        if lossy_down.drops(&impairment) {
                            impaired_count.fetch_add(1, Ordering::Relaxed);
                            continue;
                        }
                        deliver(&client_sock, &down[..n], to, impairment.jitter).await;
                    }
                }
            }
        });
        Self {
            client_side,
            limit_bps,
            impairment,
            dropped,
            impaired,
            task,
        }
    }

    /// Limits traffic toward the client to `bps` (0: unlimited).
    pub fn limit(&self, bps: u64) {
        self.limit_bps.store(bps, Ordering::Relaxed);
    }

    /// Loses and delays datagrams both ways from now on.
    pub fn impair(&self, impairment: Impairment) {
        *self.impairment.lock().unwrap_or_else(|e| e.into_inner()) = impairment;
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
    }
}
