//! What the load generator takes from the operating system: UDP sockets for its peers (with large
//! kernel buffers, as the server binds its media sockets) and a local server's CPU time and
//! resident memory from /proc (Linux).
//!
//! These mirror the server's `rtc::bind_media_socket` and `metrics::process_cpu_seconds`; they are
//! copied, not imported, because this crate must not depend on the server's package.

use std::net::SocketAddr;

/// Kernel buffer asked for each way on a peer's socket: a burst of keyframe packets to many
/// subscribers must not overflow it (the server's `rtc::SOCKET_BUFFER_BYTES`).
pub const SOCKET_BUFFER_BYTES: usize = 4 * 1024 * 1024;

/// A non-blocking UDP socket bound to `addr` with [`SOCKET_BUFFER_BYTES`] of buffer each way.
pub fn bind_udp(addr: SocketAddr) -> std::io::Result<std::net::UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    // Best effort: a smaller buffer than asked is still a working socket.
    let _ = socket.set_recv_buffer_size(SOCKET_BUFFER_BYTES);
    let _ = socket.set_send_buffer_size(SOCKET_BUFFER_BYTES);
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    Ok(socket.into())
}

/// User plus system CPU seconds of process `pid`, from /proc/PID/stat, to the clock tick (the
/// same reading the server exports as `sfu_process_cpu_seconds_total`).
pub fn process_cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    cpu_seconds_of_stat(&stat)
}

/// utime + stime of a /proc/PID/stat line, in seconds.
fn cpu_seconds_of_stat(stat: &str) -> Option<f64> {
    // Fields after the command name (which may hold spaces and parentheses): utime is the 14th
    // field of the line, stime the 15th.
    let rest = stat.rsplit_once(')')?.1;
    let mut fields = rest.split_whitespace().skip(11);
    let utime: f64 = fields.next()?.parse().ok()?;
    let stime: f64 = fields.next()?.parse().ok()?;
    // Linux reports these in USER_HZ, which is 100 on every architecture Linux supports today.
    Some((utime + stime) / 100.0)
}

/// Resident memory of process `pid` in bytes, from /proc/PID/status (`VmRSS`).
pub fn process_rss_bytes(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    Some(kib * 1024.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_utime_and_stime_past_a_command_name_with_spaces() {
        // pid (comm) state ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt utime stime
        let stat = "42 (a (weird) name) S 1 42 42 0 -1 4194560 100 0 0 0 250 75 0 0 20 0 1";
        assert_eq!(cpu_seconds_of_stat(stat), Some(3.25));
        assert_eq!(cpu_seconds_of_stat("42 (truncated) S 1"), None);
    }

    #[test]
    fn reads_this_process_and_not_a_missing_one() {
        let mut x = 0u64;
        let start = std::time::Instant::now();
        while start.elapsed() < std::time::Duration::from_millis(30) {
            x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
        }
        let cpu = process_cpu_seconds(std::process::id()).expect("/proc readable");
        assert!(cpu > 0.0, "{cpu}");
        assert!(process_rss_bytes(std::process::id()).is_some_and(|b| b > 0.0));
        // pid_max is at most 2^22 on Linux.
        assert_eq!(process_cpu_seconds(u32::MAX), None);
        assert_eq!(process_rss_bytes(u32::MAX), None);
    }
}
