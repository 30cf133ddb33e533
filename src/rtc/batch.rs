//! Batched UDP: the datagrams a worker produces in one flush leave in `sendmmsg(2)` calls of up
//! to [`BATCH`] datagrams, not one `sendto(2)` each, and the datagrams waiting when it wakes
//! are read by `recvmmsg(2)`, [`RECV_BATCH`] at a time, not one `recvfrom(2)` each. Owns the
//! batch buffers (allocated once per worker, no allocation per datagram) and the unsafe calls
//! that hand them to the kernel.
//!
//! UDP is lossy anyway: a datagram the socket cannot take now (its send buffer is full) is
//! dropped and counted, as one `sendto` returning `EWOULDBLOCK` was before.

use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::{AsRawFd, RawFd};

use socket2::SockAddr;

/// Datagrams in one `sendmmsg` call (the kernel caps a call at 1024).
pub const BATCH: usize = 64;
/// Room for one datagram: str0m's largest (its MTU is far below).
const SLOT: usize = 2000;

/// What became of the datagrams of one [`SendBatch::flush`].
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Sent {
    pub datagrams: usize,
    /// The socket's send buffer was full.
    pub dropped_full: usize,
    /// Refused for another reason (the first error's datagram; the rest were retried).
    pub failed: usize,
    /// `sendmmsg` calls made.
    pub calls: usize,
}

impl Sent {
    fn add(&mut self, other: Sent) {
        self.datagrams += other.datagrams;
        self.dropped_full += other.dropped_full;
        self.failed += other.failed;
        self.calls += other.calls;
    }
}

/// Datagrams waiting to be sent, each copied into a fixed slot.
pub struct SendBatch {
    data: Box<[u8]>,
    lens: [usize; BATCH],
    to: Vec<SockAddr>,
}

impl Default for SendBatch {
    fn default() -> Self {
        Self {
            data: vec![0u8; BATCH * SLOT].into_boxed_slice(),
            lens: [0; BATCH],
            to: Vec::with_capacity(BATCH),
        }
    }
}

impl SendBatch {
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.to.len()
    }

    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.to.is_empty()
    }

    /// Adds a datagram; when the batch is full it is sent first, through `socket`. A datagram
    /// larger than a slot goes out on its own at once.
    pub fn push(&mut self, socket: &impl AsRawFd, datagram: &[u8], to: SocketAddr) -> Sent {
        if datagram.len() > SLOT {
            let mut sent = self.flush(socket);
            let mut single = SendBatch {
                data: datagram.to_vec().into_boxed_slice(),
                lens: [0; BATCH],
                to: Vec::with_capacity(1),
            };
            single.lens[0] = datagram.len();
            single.to.push(to.into());
            sent.add(single.send(socket, datagram.len()));
            return sent;
        }
        let mut sent = Sent::default();
        if self.to.len() == BATCH {
            sent = self.flush(socket);
        }
        let i = self.to.len();
        self.data[i * SLOT..i * SLOT + datagram.len()].copy_from_slice(datagram);
        self.lens[i] = datagram.len();
        self.to.push(to.into());
        sent
    }

    /// Sends every waiting datagram.
    pub fn flush(&mut self, socket: &impl AsRawFd) -> Sent {
        self.send(socket, SLOT)
    }

    fn send(&mut self, socket: &impl AsRawFd, slot: usize) -> Sent {
        let mut sent = Sent::default();
        let count = self.to.len();
        let mut next = 0;
        while next < count {
            sent.calls += 1;
            match send_many(
                socket.as_raw_fd(),
                &self.data,
                slot,
                &self.lens,
                &self.to,
                next,
            ) {
                Ok(n) => {
                    sent.datagrams += n;
                    next += n;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    sent.dropped_full += count - next;
                    break;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    tracing::debug!("media send to {:?}: {e}", self.to[next].as_socket());
                    sent.failed += 1;
                    next += 1;
                }
            }
        }
        self.to.clear();
        sent
    }
}

/// One `sendmmsg` of the datagrams `from..to.len()`: datagram `i` is `lens[i]` bytes at
/// `data[i * slot..]`, for `to[i]`. Returns how many the kernel took (at least one).
fn send_many(
    fd: RawFd,
    data: &[u8],
    slot: usize,
    lens: &[usize],
    to: &[SockAddr],
    from: usize,
) -> io::Result<usize> {
    let n = to.len() - from;
    let mut iovecs = [libc::iovec {
        iov_base: std::ptr::null_mut(),
        iov_len: 0,
    }; BATCH];
    // SAFETY: mmsghdr is a plain C struct for which all-zero bytes are a valid value.
    let mut headers: [libc::mmsghdr; BATCH] = unsafe { std::mem::zeroed() };
    for k in 0..n {
        let i = from + k;
        let start = i * slot;
        let bytes = &data[start..start + lens[i]];
        iovecs[k] = libc::iovec {
            iov_base: bytes.as_ptr() as *mut libc::c_void,
            iov_len: bytes.len(),
        };
        headers[k].msg_hdr.msg_name = to[i].as_ptr() as *mut libc::c_void;
        headers[k].msg_hdr.msg_namelen = to[i].len();
        headers[k].msg_hdr.msg_iov = &mut iovecs[k];
        headers[k].msg_hdr.msg_iovlen = 1;
    }
    // SAFETY: `headers[..n]` point at `iovecs` and `to`, which outlive the call, and each
    // iovec at `lens[i]` bytes inside `data`; the kernel only reads them (and writes msg_len).
    let sent = unsafe { libc::sendmmsg(fd, headers.as_mut_ptr(), n as libc::c_uint, 0) };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(sent as usize)
}

/// Datagrams in one `recvmmsg` call.
pub const RECV_BATCH: usize = 32;

/// Datagrams read in one `recvmmsg` call, each in a fixed slot with its source address.
pub struct RecvBatch {
    data: Box<[u8]>,
    lens: [usize; RECV_BATCH],
    from: Box<[libc::sockaddr_storage; RECV_BATCH]>,
    count: usize,
}

impl Default for RecvBatch {
    fn default() -> Self {
        Self {
            data: vec![0u8; RECV_BATCH * SLOT].into_boxed_slice(),
            lens: [0; RECV_BATCH],
            // SAFETY: sockaddr_storage is a plain C struct; all-zero bytes are a valid value.
            from: Box::new(unsafe { std::mem::zeroed() }),
            count: 0,
        }
    }
}

impl RecvBatch {
    /// Reads the datagrams waiting on `socket`, without blocking: `WouldBlock` when there are
    /// none. A datagram longer than a slot is cut to it (str0m's are far smaller: the kernel
    /// flags such a one and it is left out).
    pub fn recv(&mut self, socket: &impl AsRawFd) -> io::Result<usize> {
        self.count = 0;
        let mut iovecs = [libc::iovec {
            iov_base: std::ptr::null_mut(),
            iov_len: 0,
        }; RECV_BATCH];
        // SAFETY: mmsghdr is a plain C struct for which all-zero bytes are a valid value.
        let mut headers: [libc::mmsghdr; RECV_BATCH] = unsafe { std::mem::zeroed() };
        for (i, chunk) in self.data.chunks_exact_mut(SLOT).enumerate() {
            iovecs[i] = libc::iovec {
                iov_base: chunk.as_mut_ptr() as *mut libc::c_void,
                iov_len: SLOT,
            };
            headers[i].msg_hdr.msg_name = &mut self.from[i] as *mut _ as *mut libc::c_void;
            headers[i].msg_hdr.msg_namelen =
                std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            headers[i].msg_hdr.msg_iov = &mut iovecs[i];
            headers[i].msg_hdr.msg_iovlen = 1;
        }
        // SAFETY: each header points at one iovec (a SLOT-sized chunk of `data`) and one
        // sockaddr_storage of `from`, all of which outlive the call; the kernel writes at most
        // SLOT bytes and one address per header, and the lengths in msg_len / msg_namelen.
        let n = unsafe {
            libc::recvmmsg(
                socket.as_raw_fd(),
                headers.as_mut_ptr(),
                RECV_BATCH as libc::c_uint,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let n = n as usize;
        for (i, header) in headers.iter().enumerate().take(n) {
            let truncated = header.msg_hdr.msg_flags & libc::MSG_TRUNC != 0;
            self.lens[i] = if truncated {
                0
            } else {
                header.msg_len as usize
            };
        }
        self.count = n;
        Ok(n)
    }

    /// The datagrams of the last [`RecvBatch::recv`], in arrival order, with their sources
    /// (a truncated one, or one from an address family other than IP, is left out).
    pub fn datagrams(&self) -> impl Iterator<Item = (SocketAddr, &[u8])> {
        (0..self.count).filter_map(|i| {
            let source = socket_addr(&self.from[i])?;
            let bytes = &self.data[i * SLOT..i * SLOT + self.lens[i]];
            (!bytes.is_empty()).then_some((source, bytes))
        })
    }
}

/// The IPv4 or IPv6 address the kernel wrote into `storage`.
fn socket_addr(storage: &libc::sockaddr_storage) -> Option<SocketAddr> {
    match libc::c_int::from(storage.ss_family) {
        libc::AF_INET => {
            // SAFETY: the family says the storage holds a sockaddr_in, which fits in it.
            let a = unsafe { &*(storage as *const _ as *const libc::sockaddr_in) };
            let ip = Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr));
            Some(SocketAddrV4::new(ip, u16::from_be(a.sin_port)).into())
        }
        libc::AF_INET6 => {
            // SAFETY: the family says the storage holds a sockaddr_in6, which fits in it.
            let a = unsafe { &*(storage as *const _ as *const libc::sockaddr_in6) };
            let ip = Ipv6Addr::from(a.sin6_addr.s6_addr);
            let port = u16::from_be(a.sin6_port);
            Some(SocketAddrV6::new(ip, port, a.sin6_flowinfo, a.sin6_scope_id).into())
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::UdpSocket;

    fn receiver() -> (UdpSocket, SocketAddr) {
        let socket = UdpSocket::bind("127.0.0.1:0").expect("bind");
        socket
            .set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .expect("timeout");
        let addr = socket.local_addr().expect("addr");
        (socket, addr)
    }

    fn recv(socket: &UdpSocket) -> Vec<u8> {
        let mut buf = [0u8; 4096];
        let n = socket.recv(&mut buf).expect("a datagram");
        buf[..n].to_vec()
    }

    #[test]
    fn datagrams_to_many_addresses_leave_in_one_call_in_order() {
        let sender = UdpSocket::bind("127.0.0.1:0").expect("bind");
        let (a, a_addr) = receiver();
        let (b, b_addr) = receiver();
        let mut batch = SendBatch::default();
        let mut sent = Sent::default();
        sent.add(batch.push(&sender, b"one", a_addr));
        sent.add(batch.push(&sender, b"two", b_addr));
        sent.add(batch.push(&sender, &[7u8; 1200], a_addr));
        assert_eq!(sent.calls, 0, "nothing leaves before the flush");
        assert_eq!(batch.len(), 3);
        sent.add(batch.flush(&sender));
        assert_eq!(sent.calls, 1);
        assert_eq!(sent.datagrams, 3);
        assert!(batch.is_empty());
        assert_eq!(recv(&a), b"one");
        assert_eq!(recv(&a), vec![7u8; 1200]);
        assert_eq!(recv(&b), b"two");
    }

    #[test]
    fn a_full_batch_is_sent_before_the_next_datagram_and_big_ones_go_alone() {
        let sender = UdpSocket::bind("127.0.0.1:0").expect("bind");
        let (a, a_addr) = receiver();
        let mut batch = SendBatch::default();
        let mut sent = Sent::default();
        for i in 0..=BATCH {
            sent.add(batch.push(&sender, &[i as u8; 10], a_addr));
        }
        assert_eq!((sent.calls, sent.datagrams), (1, BATCH));
        assert_eq!(batch.len(), 1);
        sent.add(batch.push(&sender, &[9u8; SLOT + 1], a_addr));
        assert_eq!(
            sent.datagrams,
            BATCH + 2,
            "the waiting one first, then the big one"
        );
        for i in 0..=BATCH {
            assert_eq!(recv(&a), vec![i as u8; 10]);
        }
        assert_eq!(recv(&a), vec![9u8; SLOT + 1]);
    }

    #[test]
    fn an_unreachable_destination_costs_its_datagram_only() {
        let sender = UdpSocket::bind("127.0.0.1:0").expect("bind");
        let (a, a_addr) = receiver();
        let mut batch = SendBatch::default();
        // An IPv6 destination from an IPv4 socket is refused by the kernel (EAFNOSUPPORT or
        // EINVAL): the datagrams after it still go.
        let _ = batch.push(&sender, b"bad", "[::1]:9".parse().expect("addr"));
        let _ = batch.push(&sender, b"good", a_addr);
        let sent = batch.flush(&sender);
        assert_eq!(sent.failed, 1);
        assert_eq!(sent.datagrams, 1);
        assert_eq!(recv(&a), b"good");
    }

    #[test]
    fn waiting_datagrams_are_read_in_one_call_with_their_sources() {
        let (receiver, to) = receiver();
        receiver.set_nonblocking(true).expect("nonblocking");
        let mut batch = RecvBatch::default();
        let none = batch.recv(&receiver).expect_err("nothing waits");
        assert_eq!(none.kind(), io::ErrorKind::WouldBlock);

        let a = UdpSocket::bind("127.0.0.1:0").expect("bind");
        let b = UdpSocket::bind("127.0.0.1:0").expect("bind");
        for i in 0..(RECV_BATCH as u8 + 3) {
            let from = if i % 2 == 0 { &a } else { &b };
            from.send_to(&[i; 100], to).expect("send");
        }
        // Loopback delivers at once; the first call takes a full batch, the next the rest.
        let first = batch.recv(&receiver).expect("a batch");
        assert_eq!(first, RECV_BATCH);
        let got: Vec<(SocketAddr, Vec<u8>)> =
            batch.datagrams().map(|(s, d)| (s, d.to_vec())).collect();
        assert_eq!(got.len(), RECV_BATCH);
        for (i, (source, bytes)) in got.iter().enumerate() {
            let expected = if i % 2 == 0 { &a } else { &b };
            assert_eq!(*source, expected.local_addr().expect("addr"));
            assert_eq!(bytes, &vec![i as u8; 100]);
        }
        assert_eq!(batch.recv(&receiver).expect("the rest"), 3);
        let rest: Vec<u8> = batch.datagrams().map(|(_, d)| d[0]).collect();
        assert_eq!(rest, vec![32, 33, 34]);
    }

    #[test]
    fn an_oversized_datagram_is_left_out() {
        let (receiver, to) = receiver();
        receiver.set_nonblocking(true).expect("nonblocking");
        let sender = UdpSocket::bind("127.0.0.1:0").expect("bind");
        sender.send_to(&vec![1u8; SLOT + 1], to).expect("send");
        sender.send_to(&[2u8; 10], to).expect("send");
        let mut batch = RecvBatch::default();
        let mut seen = Vec::new();
        while let Ok(n) = batch.recv(&receiver) {
            assert!(n > 0);
            seen.extend(batch.datagrams().map(|(_, d)| d.to_vec()));
        }
        assert_eq!(seen, vec![vec![2u8; 10]]);
    }
}
