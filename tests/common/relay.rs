//! A UDP relay on loopback that stands in for a bad network (no `tc netem` on these kernels).
//!
//! The client talks to the relay's client-side socket; the relay talks to the server from its
//! server-side socket. Traffic toward the client passes a token bucket: past the rate, datagrams
//! are dropped, as a congested bottleneck drops them. The rate can change while media flows.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use tokio::net::UdpSocket;

/// Burst the bucket allows, in bytes: about one video frame.
const BUCKET_BYTES: f64 = 12_000.0;

pub struct Relay {
    /// Where the client should send (the relay's client side).
    pub client_side: SocketAddr,
    /// Bits per second toward the client; 0 means unlimited.
    limit_bps: Arc<AtomicU64>,
    /// Datagrams dropped toward the client.
    pub dropped: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Relay {
    /// Relays between a client and `server` (a UDP address on loopback).
    pub async fn start(server: SocketAddr) -> Self {
        let client_sock = Arc::new(UdpSocket::bind("127.0.0.1:0").await.expect("bind relay"));
        let server_sock = Arc::new(UdpSocket::bind("127.0.0.1:0").await.expect("bind relay"));
        let client_side = client_sock.local_addr().expect("relay addr");
        let limit_bps = Arc::new(AtomicU64::new(0));
        let dropped = Arc::new(AtomicU64::new(0));
        let (limit, drops) = (limit_bps.clone(), dropped.clone());
        let task = tokio::spawn(async move {
            let mut client: Option<SocketAddr> = None;
            let mut tokens = BUCKET_BYTES;
            let mut last = Instant::now();
            let mut up = vec![0u8; 2048];
            let mut down = vec![0u8; 2048];
            loop {
                tokio::select! {
                    Ok((n, from)) = client_sock.recv_from(&mut up) => {
                        client = Some(from);
                        let _ = server_sock.send_to(&up[..n], server).await;
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
                        let _ = client_sock.send_to(&down[..n], to).await;
                    }
                }
            }
        });
        Self {
            client_side,
            limit_bps,
            dropped,
            task,
        }
    }

    /// Limits traffic toward the client to `bps` (0: unlimited).
    pub fn limit(&self, bps: u64) {
        self.limit_bps.store(bps, Ordering::Relaxed);
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
    }
}
