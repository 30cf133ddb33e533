//! Connection admission: caps on open TCP connections to the HTTP server, in all and per source
//! address, so no one client (or one address's many) can use up the server's file descriptors
//! and memory before it ever shows a token.
//!
//! An [`Admission`] is the acceptor the HTTP server runs every new connection through. A
//! connection over a cap is refused at once: with a plain-HTTP `503` and a JSON body saying
//! which cap (TLS connections are closed, since their first bytes must be the handshake). An
//! admitted connection holds its place until it closes.
//!
//! When many connections have closed (at least [`RELEASE_AFTER_CLOSED`], and half of those open
//! at the peak), the memory they used is handed back to the system: glibc's allocator keeps
//! freed memory in its arenas, and 5,000 idle sockets that came and went left their ~100 MiB
//! held for ever.

use std::collections::HashMap;
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use axum_server::accept::Accept;
use prometheus::IntCounter;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;

/// Connections that must have closed since the peak before their memory is handed back.
pub const RELEASE_AFTER_CLOSED: usize = 1000;

/// The caps and the connections counted against them.
#[derive(Debug, Default)]
struct Counts {
    max_total: usize,
    max_per_ip: usize,
    total: AtomicUsize,
    per_ip: Mutex<HashMap<IpAddr, usize>>,
    /// Most connections open at once since memory was last handed back.
    peak: AtomicUsize,
    /// Times memory was handed back.
    releases: AtomicUsize,
}

impl Counts {
    /// Takes a place for a connection from `ip`, or says which cap is full.
    fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<Place, &'static str> {
        let mut per_ip = self.per_ip.lock().unwrap_or_else(|e| e.into_inner());
        if self.total.load(Ordering::Relaxed) >= self.max_total {
            return Err("the server has its maximum number of connections (http.max_connections)");
        }
        let from_ip = per_ip.entry(ip).or_insert(0);
        if *from_ip >= self.max_per_ip {
            return Err("too many connections from your address (http.max_connections_per_ip)");
        }
        *from_ip += 1;
        let total = self.total.fetch_add(1, Ordering::Relaxed) + 1;
        self.peak.fetch_max(total, Ordering::Relaxed);
        Ok(Place {
            counts: self.clone(),
            ip,
        })
    }
}

/// One admitted connection's place; given back when the connection is dropped.
#[derive(Debug)]
struct Place {
    counts: Arc<Counts>,
    ip: IpAddr,
}

impl Drop for Place {
    fn drop(&mut self) {
        let mut per_ip = self.counts.per_ip.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = per_ip.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                per_ip.remove(&self.ip);
            }
        }
        let total = self.counts.total.fetch_sub(1, Ordering::Relaxed) - 1;
        let peak = self.counts.peak.load(Ordering::Relaxed);
        if peak.saturating_sub(total) >= RELEASE_AFTER_CLOSED.max(peak / 2) {
            self.counts.peak.store(total, Ordering::Relaxed);
            self.counts.releases.fetch_add(1, Ordering::Relaxed);
            release_free_memory();
        }
    }
}

/// Hands the allocator's free memory back to the system (glibc keeps it otherwise).
fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks the allocator's own free lists; it has no preconditions.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// The acceptor: admits or refuses each new TCP connection.
#[derive(Debug, Clone)]
pub struct Admission {
    counts: Arc<Counts>,
    /// Refuse with a plain-HTTP 503 (false for TLS listeners: just close).
    plain_http: bool,
    refused: IntCounter,
}

impl Admission {
    pub fn new(max_total: usize, max_per_ip: usize, plain_http: bool, refused: IntCounter) -> Self {
        Self {
            counts: Arc::new(Counts {
                max_total,
                max_per_ip,
                ..Counts::default()
            }),
            plain_http,
            refused,
        }
    }
}

impl<S: Send + 'static> Accept<TcpStream, S> for Admission {
    type Stream = Admitted;
    type Service = S;
    type Future =
        Pin<Box<dyn std::future::Future<Output = io::Result<(Admitted, S)>> + Send + 'static>>;

    fn accept(&self, mut stream: TcpStream, service: S) -> Self::Future {
        let admitted = match stream.peer_addr() {
            Ok(peer) => self.counts.admit(peer.ip()),
            Err(_) => Err("no peer address"),
        };
        let plain_http = self.plain_http;
        let refused = self.refused.clone();
        Box::pin(async move {
            match admitted {
                Ok(place) => Ok((
                    Admitted {
                        stream,
                        _place: place,
                    },
                    service,
                )),
                Err(why) => {
                    refused.inc();
                    if plain_http {
                        let body =
                            format!("{{\"code\":\"too_many_connections\",\"message\":\"{why}\"}}");
                        let response = format!(
                            "HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\n\
                             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                            body.len()
                        );
                        // Best effort, bounded: the kernel takes this small write at once.
                        let _ = tokio::time::timeout(
                            std::time::Duration::from_secs(1),
                            stream.write_all(response.as_bytes()),
                        )
                        .await;
                    }
                    Err(io::Error::other(why))
                }
            }
        })
    }
}

/// An admitted connection: the TCP stream, and its place under the caps.
#[derive(Debug)]
pub struct Admitted {
    stream: TcpStream,
    _place: Place,
}

impl AsyncRead for Admitted {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Admitted {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(max_total: usize, max_per_ip: usize) -> Arc<Counts> {
        Arc::new(Counts {
            max_total,
            max_per_ip,
            ..Counts::default()
        })
    }

    #[test]
    fn memory_is_handed_back_once_many_connections_closed() {
        let c = counts(10_000, 10_000);
        let ip: IpAddr = [10, 0, 0, 1].into();
        let mut open: Vec<Place> = (0..3000).map(|_| c.admit(ip).unwrap()).collect();
        // Closing a few is not worth a release.
        open.truncate(2500);
        assert_eq!(c.releases.load(Ordering::Relaxed), 0);
        // Half of the peak gone (and more than RELEASE_AFTER_CLOSED): once.
        open.truncate(1400);
        assert_eq!(c.releases.load(Ordering::Relaxed), 1);
        // The peak starts again from what is left.
        open.clear();
        assert_eq!(c.releases.load(Ordering::Relaxed), 2);
        assert_eq!(c.total.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn caps_hold_per_address_and_in_all_and_places_come_back() {
        let c = counts(3, 2);
        let a: IpAddr = [10, 0, 0, 1].into();
        let b: IpAddr = [10, 0, 0, 2].into();
        let a1 = c.admit(a).unwrap();
        let _a2 = c.admit(a).unwrap();
        assert!(c.admit(a).unwrap_err().contains("per_ip"));
        let _b1 = c.admit(b).unwrap();
        assert!(c.admit(b).unwrap_err().contains("http.max_connections)"));
        drop(a1);
        let _a3 = c
            .admit(a)
            .expect("a closed connection gives its place back");
        assert_eq!(c.total.load(Ordering::Relaxed), 3);
    }
}
