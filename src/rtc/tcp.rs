//! ICE over TCP for one media worker (RFC 6544, passive candidates): its listener and its
//! clients' connections, each carrying datagrams framed by a 2-byte length (RFC 4571).
//!
//! A client whose UDP is blocked connects to the worker's TCP port and sends its ICE checks,
//! DTLS and SRTP over that connection. Each connection has a reader task, which cuts the stream
//! into datagrams and hands them to the worker's loop as [`TcpInput::Datagram`], and a writer
//! task, which takes framed datagrams from a bounded queue: a connection that cannot keep up
//! loses datagrams as UDP would, and never stalls the worker. Which peer a datagram belongs to
//! is the worker's demux's to say, as for UDP; a connection whose first datagram belongs to no
//! peer is closed.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::AbortHandle;

/// Connections a worker keeps open at most; more are refused.
pub const MAX_CONNECTIONS: usize = 4096;
/// Framed datagrams waiting to be written to one connection; more are dropped.
const WRITE_QUEUE: usize = 512;
/// Datagrams read from all connections waiting for the worker's loop.
const READ_QUEUE: usize = 1024;
/// A connection must send its first datagram (an ICE check) within this long.
const FIRST_DATAGRAM: Duration = Duration::from_secs(10);

/// What the worker's loop gets from its TCP side.
#[derive(Debug)]
pub enum TcpInput {
    /// A client connected.
    Accepted(TcpStream, SocketAddr),
    /// One datagram from the connection of this remote address.
    Datagram(SocketAddr, Vec<u8>),
    /// The connection of this remote address ended.
    Closed(SocketAddr),
}

struct Connection {
    writer: mpsc::Sender<Vec<u8>>,
    reader: AbortHandle,
    /// A datagram of it reached a peer.
    routed: bool,
}

/// A worker's TCP listener and open connections, by remote address.
pub struct TcpConnections {
    listener: TcpListener,
    /// The address clients connect to (the advertised candidate).
    pub local: SocketAddr,
    connections: HashMap<SocketAddr, Connection>,
    input_tx: mpsc::Sender<TcpInput>,
    input: mpsc::Receiver<TcpInput>,
}

impl TcpConnections {
    /// Takes over a bound listener; must run inside the worker's runtime.
    pub fn new(listener: std::net::TcpListener, local: SocketAddr) -> io::Result<Self> {
        listener.set_nonblocking(true)?;
        let (input_tx, input) = mpsc::channel(READ_QUEUE);
        Ok(Self {
            listener: TcpListener::from_std(listener)?,
            local,
            connections: HashMap::new(),
            input_tx,
            input,
        })
    }

    /// The next connection or datagram.
    pub async fn next(&mut self) -> TcpInput {
        loop {
            tokio::select! {
                accepted = self.listener.accept() => match accepted {
                    Ok((stream, addr)) => return TcpInput::Accepted(stream, addr),
                    Err(e) => {
                        // Out of file descriptors, most likely: wait instead of spinning.
                        tracing::debug!("ICE-TCP accept: {e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                },
                Some(input) = self.input.recv() => return input,
            }
        }
    }

    /// Starts serving an accepted connection; false (and it is closed) past
    /// [`MAX_CONNECTIONS`].
    pub fn open(&mut self, stream: TcpStream, addr: SocketAddr) -> bool {
        if self.connections.len() >= MAX_CONNECTIONS {
            return false;
        }
        let _ = stream.set_nodelay(true);
        let (read, write) = stream.into_split();
        let (writer, queue) = mpsc::channel(WRITE_QUEUE);
        let reader = tokio::spawn(read_datagrams(read, addr, self.input_tx.clone()));
        tokio::spawn(write_datagrams(write, queue));
        self.connections.insert(
            addr,
            Connection {
                writer,
                reader: reader.abort_handle(),
                routed: false,
            },
        );
        true
    }

    /// A datagram of `addr`'s connection reached a peer.
    pub fn routed(&mut self, addr: SocketAddr) {
        if let Some(c) = self.connections.get_mut(&addr) {
            c.routed = true;
        }
    }

    /// Whether `addr`'s connection has carried a datagram of a peer.
    pub fn is_routed(&self, addr: SocketAddr) -> bool {
        self.connections.get(&addr).is_some_and(|c| c.routed)
    }

    /// Queues one datagram to `to`; false if there is no such connection or its queue is full.
    pub fn send(&mut self, to: SocketAddr, datagram: &[u8]) -> bool {
        let Some(connection) = self.connections.get(&to) else {
            return false;
        };
        let Ok(len) = u16::try_from(datagram.len()) else {
            return false;
        };
        let mut framed = Vec::with_capacity(2 + datagram.len());
        framed.extend_from_slice(&len.to_be_bytes());
        framed.extend_from_slice(datagram);
        connection.writer.try_send(framed).is_ok()
    }

    /// Closes `addr`'s connection (what was queued for it is still written).
    pub fn close(&mut self, addr: SocketAddr) {
        if let Some(c) = self.connections.remove(&addr) {
            c.reader.abort();
        }
    }

    pub fn len(&self) -> usize {
        self.connections.len()
    }

    pub fn is_empty(&self) -> bool {
        self.connections.is_empty()
    }
}

impl Drop for TcpConnections {
    fn drop(&mut self) {
        for c in self.connections.values() {
            c.reader.abort();
        }
    }
}

/// The next TCP input of a worker that has a TCP side; never, for one that has none.
pub async fn next_input(tcp: &mut Option<TcpConnections>) -> TcpInput {
    match tcp {
        Some(tcp) => tcp.next().await,
        None => std::future::pending().await,
    }
}

/// Cuts a connection's stream into datagrams (RFC 4571: a 2-byte length, then that many bytes).
async fn read_datagrams(mut read: OwnedReadHalf, addr: SocketAddr, input: mpsc::Sender<TcpInput>) {
    let mut first = true;
    loop {
        let mut len = [0u8; 2];
        let header = read.read_exact(&mut len);
        let header = if first {
            match tokio::time::timeout(FIRST_DATAGRAM, header).await {
                Ok(r) => r,
                Err(_) => break,
            }
        } else {
            header.await
        };
        if header.is_err() {
            break;
        }
        let mut datagram = vec![0u8; usize::from(u16::from_be_bytes(len))];
        if read.read_exact(&mut datagram).await.is_err() {
            break;
        }
        first = false;
        if input
            .send(TcpInput::Datagram(addr, datagram))
            .await
            .is_err()
        {
            return;
        }
    }
    let _ = input.send(TcpInput::Closed(addr)).await;
}

/// Writes framed datagrams until the connection is closed or forgotten.
async fn write_datagrams(mut write: OwnedWriteHalf, mut queue: mpsc::Receiver<Vec<u8>>) {
    while let Some(framed) = queue.recv().await {
        if write.write_all(&framed).await.is_err() {
            return;
        }
    }
    let _ = write.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn pair() -> (TcpConnections, TcpStream) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let mut tcp = TcpConnections::new(listener, addr).unwrap();
        let client = TcpStream::connect(addr).await.unwrap();
        let TcpInput::Accepted(stream, remote) = tcp.next().await else {
            panic!("no connection");
        };
        assert!(tcp.open(stream, remote));
        (tcp, client)
    }

    #[tokio::test]
    async fn frames_datagrams_both_ways() {
        let (mut tcp, mut client) = pair().await;
        let remote = client.local_addr().unwrap();
        // Two datagrams in one write, and one split over two: framing, not reads, cuts them.
        client
            .write_all(&[0, 3, 1, 2, 3, 0, 1, 9, 0])
            .await
            .unwrap();
        client.write_all(&[2, 7, 7]).await.unwrap();
        for expected in [vec![1, 2, 3], vec![9], vec![7, 7]] {
            match tcp.next().await {
                TcpInput::Datagram(from, d) => assert_eq!((from, d), (remote, expected)),
                other => panic!("{other:?}"),
            }
        }
        assert!(tcp.send(remote, &[4, 5]));
        let mut got = [0u8; 4];
        client.read_exact(&mut got).await.unwrap();
        assert_eq!(got, [0, 2, 4, 5]);
        assert!(
            !tcp.send("127.0.0.1:1".parse().unwrap(), &[1]),
            "no such connection"
        );
        drop(client);
        assert!(matches!(tcp.next().await, TcpInput::Closed(a) if a == remote));
    }

    #[tokio::test]
    async fn closing_a_connection_ends_it_for_the_client() {
        let (mut tcp, mut client) = pair().await;
        let remote = client.local_addr().unwrap();
        tcp.close(remote);
        assert_eq!(tcp.len(), 0);
        let mut buf = [0u8; 1];
        assert_eq!(
            client.read(&mut buf).await.unwrap(),
            0,
            "the server closed it"
        );
    }
}
