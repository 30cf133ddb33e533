//! The HTTP server's own defences, before any token is seen: slow clients are closed, and
//! connections are capped per address and in all, with a clear refusal.

mod common;

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Reads until the server closes the connection (or `limit` passes); returns what it sent.
async fn read_to_close(stream: &mut TcpStream, limit: Duration) -> Option<String> {
    let mut out = Vec::new();
    let read = tokio::time::timeout(limit, stream.read_to_end(&mut out)).await;
    read.ok()
        .map(|_| String::from_utf8_lossy(&out).into_owned())
}

#[tokio::test]
async fn a_client_that_never_finishes_its_headers_is_closed() {
    let server = common::start(|c| c.http.header_timeout = Duration::from_secs(1)).await;
    let mut slow = TcpStream::connect(server.local_addr)
        .await
        .expect("connect");
    // Slowloris: a request line and one header, then nothing.
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .await
        .expect("write");
    let closed = read_to_close(&mut slow, Duration::from_secs(10)).await;
    assert!(closed.is_some(), "the server kept a half-sent request open");
    server.shutdown().await;
}

#[tokio::test]
async fn connections_over_the_per_address_cap_are_refused_with_503() {
    let server = common::start(|c| c.http.max_connections_per_ip = 3).await;
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(
            TcpStream::connect(server.local_addr)
                .await
                .expect("connect"),
        );
    }
    // The fourth from this address gets a 503 that says why, and is closed.
    let mut fourth = TcpStream::connect(server.local_addr)
        .await
        .expect("connect");
    let refusal = read_to_close(&mut fourth, Duration::from_secs(5))
        .await
        .expect("refused at once");
    assert!(refusal.starts_with("HTTP/1.1 503"), "{refusal}");
    assert!(refusal.contains("too_many_connections"), "{refusal}");
    assert!(refusal.contains("http.max_connections_per_ip"), "{refusal}");
    // A closed connection gives its place back: the next one is served.
    drop(held.pop());
    let served = common::eventually(|| async {
        let Ok(mut c) = TcpStream::connect(server.local_addr).await else {
            return false;
        };
        let request = b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
        if c.write_all(request).await.is_err() {
            return false;
        }
        read_to_close(&mut c, Duration::from_secs(5))
            .await
            .is_some_and(|r| r.starts_with("HTTP/1.1 200"))
    })
    .await;
    assert!(
        served,
        "a place freed by a closed connection is not given back"
    );
    let refused = common::metric(&server, "sfu_http_connections_refused_total").await;
    assert!(refused >= Some(1.0), "refusals counted: {refused:?}");
    server.shutdown().await;
}

#[tokio::test]
async fn the_open_file_limit_is_raised_to_its_hard_limit() {
    let server = common::start(|_| {}).await;
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes the struct passed by pointer.
    assert_eq!(
        unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) },
        0
    );
    assert_eq!(
        limit.rlim_cur, limit.rlim_max,
        "soft limit raised to the hard one"
    );
    let max_fds = common::metric(&server, "sfu_process_max_fds").await;
    assert_eq!(
        max_fds,
        Some(limit.rlim_max as f64),
        "the headroom is in /metrics"
    );
    server.shutdown().await;
}
