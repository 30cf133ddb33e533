//! `sfu load`: a load generator of real WebRTC participants, like LiveKit's `lk load-test`.
//!
//! Publishers join a room over the signaling protocol and send synthetic VP8 (one layer, or three
//! simulcast layers at browser-like sizes) and Opus-sized audio through str0m peers; subscribers
//! receive what the server forwards. The run ends with a summary: joins, packets, loss, latency
//! (when decrypting) and the server's CPU and memory. See [`client`] for how subscribers count
//! cheaply, and docs/performance.md for the results on our machines.

pub mod client;
pub mod media;
pub mod stats;

use std::net::IpAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

use crate::auth::{Auth, Grants};
use crate::config::AuthConfig;
use crate::load::client::Role;
use crate::load::media::{simulcast_layers, LayerSpec};
use crate::load::stats::{percentile, Stats};

/// How a run is shaped.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// The server's base URL (`ws://host:port`; `/ws` is added when missing).
    pub url: String,
    pub room: String,
    pub publishers: usize,
    pub subscribers: usize,
    /// Publishers also subscribe to every other publisher (a meeting where everyone talks).
    pub publishers_subscribe: bool,
    /// How long media flows once everyone has joined.
    pub duration: Duration,
    /// Bitrate of the single video layer without simulcast.
    pub video_bitrate_bps: u64,
    pub simulcast: bool,
    pub audio_only: bool,
    /// Subscribers decrypt and measure latency instead of counting clear headers.
    pub decrypt: bool,
    /// Pause between two joins, so the server is not hit by a thundering herd.
    pub join_interval: Duration,
    /// Local address the peers bind (their host candidate).
    pub bind: IpAddr,
    pub api_key: String,
    pub api_secret: String,
    /// A local server's pid, to read its CPU and memory from /proc.
    pub server_pid: Option<u32>,
    /// Print a live progress line on stderr.
    pub progress: bool,
}

/// What a run measured.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub publishers: usize,
    pub subscribers: usize,
    pub duration_s: f64,
    pub joins_ok: u64,
    pub joins_failed: u64,
    pub join_p50_ms: Option<f64>,
    pub join_p99_ms: Option<f64>,
    pub packets_sent: u64,
    pub packets_received: u64,
    pub packets_lost: u64,
    pub loss_percent: f64,
    /// Subscribers that received nothing at all.
    pub subscribers_without_packets: usize,
    pub latency_p50_ms: Option<f64>,
    pub latency_p99_ms: Option<f64>,
    /// Server CPU over the measured window, percent of one core.
    pub server_cpu_percent: Option<f64>,
    pub server_rss_mib: Option<f64>,
    pub errors: Vec<String>,
}

/// Runs the load and returns what it measured.
pub async fn run(options: LoadOptions) -> anyhow::Result<Report> {
    let url = if options.url.trim_end_matches('/').ends_with("/ws") {
        options.url.clone()
    } else {
        format!("{}/ws", options.url.trim_end_matches('/'))
    };
    let auth = Auth::new(&AuthConfig {
        api_key: options.api_key.clone(),
        api_secret: options.api_secret.clone(),
    });
    let ttl = options.duration + Duration::from_secs(3600);
    let layers: Vec<LayerSpec> = if options.audio_only {
        Vec::new()
    } else if options.simulcast {
        simulcast_layers()
    } else {
        vec![LayerSpec {
            rid: None,
            width: 1280,
            height: 720,
            bitrate_bps: options.video_bitrate_bps,
        }]
    };
    let mut roles = Vec::new();
    for i in 0..options.publishers {
        let identity = format!("load-pub-{i}");
        let grants = Grants {
            subscribe: options.publishers_subscribe,
            ..Grants::default()
        };
        roles.push(Role {
            token: auth.participant_token(&options.room, &identity, None, grants, ttl)?,
            identity,
            publish: true,
            subscribe: options.publishers_subscribe,
            layers: layers.clone(),
            decrypt: options.decrypt,
        });
    }
    for i in 0..options.subscribers {
        let identity = format!("load-sub-{i}");
        let grants = Grants {
            publish: false,
            chat: false,
            ..Grants::default()
        };
        roles.push(Role {
            token: auth.participant_token(&options.room, &identity, None, grants, ttl)?,
            identity,
            publish: false,
            subscribe: true,
            layers: Vec::new(),
            decrypt: options.decrypt,
        });
    }
    let total = roles.len();
    let stats = Arc::new(Stats::default());
    let stop = CancellationToken::new();
    let progress = options.progress.then(|| {
        let stats = stats.clone();
        let stop = stop.clone();
        tokio::spawn(async move { progress_line(&stats, total, stop).await })
    });
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(total);
    for role in roles {
        tasks.push(tokio::spawn(client::run(
            role,
            url.clone(),
            options.bind,
            stats.clone(),
            stop.clone(),
        )));
        tokio::time::sleep(options.join_interval).await;
    }
    // Let the last joiners connect before the measured window starts.
    tokio::time::sleep(Duration::from_secs(2).min(options.duration)).await;
    let cpu_before = server_cpu_seconds(&options, &url).await;
    let window = Instant::now();
    tokio::time::sleep(options.duration).await;
    let cpu_after = server_cpu_seconds(&options, &url).await;
    let rss = server_rss_bytes(&options, &url).await;
    let measured = window.elapsed();
    stop.cancel();
    for t in tasks {
        let _ = t.await;
    }
    if let Some(p) = progress {
        let _ = p.await;
    }
    let mut joins = stats.join_times();
    let mut latencies = stats.latencies();
    let ms = |d: Option<Duration>| d.map(|d| d.as_secs_f64() * 1000.0);
    let received = stats.packets_received.load(Ordering::Relaxed);
    let lost = stats.packets_lost.load(Ordering::Relaxed);
    let expected_subscribers = options.subscribers
        + if options.publishers_subscribe {
            options.publishers
        } else {
            0
        };
    let per_subscriber = stats.per_subscriber();
    let without = per_subscriber.iter().filter(|&&n| n == 0).count()
        + expected_subscribers.saturating_sub(per_subscriber.len());
    Ok(Report {
        publishers: options.publishers,
        subscribers: options.subscribers,
        duration_s: started.elapsed().as_secs_f64(),
        joins_ok: stats.joins_ok.load(Ordering::Relaxed),
        joins_failed: stats.joins_failed.load(Ordering::Relaxed),
        join_p50_ms: ms(percentile(&mut joins, 50.0)),
        join_p99_ms: ms(percentile(&mut joins, 99.0)),
        packets_sent: stats.packets_sent.load(Ordering::Relaxed),
        packets_received: received,
        packets_lost: lost,
        loss_percent: if received + lost == 0 {
            0.0
        } else {
            lost as f64 * 100.0 / (received + lost) as f64
        },
        subscribers_without_packets: without,
        latency_p50_ms: ms(percentile(&mut latencies, 50.0)),
        latency_p99_ms: ms(percentile(&mut latencies, 99.0)),
        server_cpu_percent: match (cpu_before, cpu_after) {
            (Some(a), Some(b)) => Some((b - a) * 100.0 / measured.as_secs_f64()),
            _ => None,
        },
        server_rss_mib: rss.map(|b| b / (1024.0 * 1024.0)),
        errors: stats.errors(),
    })
}

async fn progress_line(stats: &Stats, total: usize, stop: CancellationToken) {
    let started = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut last_received = 0;
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tick.tick() => {}
        }
        let received = stats.live_received.load(Ordering::Relaxed);
        eprint!(
            "\r{:>4} s  joined {}/{} (failed {})  sent {} pkts  received {} pkts ({}/s)   ",
            started.elapsed().as_secs(),
            stats.joins_ok.load(Ordering::Relaxed),
            total,
            stats.joins_failed.load(Ordering::Relaxed),
            stats.packets_sent.load(Ordering::Relaxed),
            received,
            received - last_received,
        );
        last_received = received;
    }
    eprintln!();
}

/// Server CPU seconds so far: from /proc for a local pid, else from its /metrics.
async fn server_cpu_seconds(options: &LoadOptions, url: &str) -> Option<f64> {
    if let Some(pid) = options.server_pid {
        return crate::metrics::process_cpu_seconds(pid);
    }
    metric(url, "sfu_process_cpu_seconds_total").await
}

async fn server_rss_bytes(options: &LoadOptions, url: &str) -> Option<f64> {
    if let Some(pid) = options.server_pid {
        let status = tokio::fs::read_to_string(format!("/proc/{pid}/status"))
            .await
            .ok()?;
        let kib: f64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))?
            .split_whitespace()
            .next()?
            .parse()
            .ok()?;
        return Some(kib * 1024.0);
    }
    metric(url, "sfu_process_resident_memory_bytes").await
}

/// One unlabelled sample from the server's /metrics, over plain HTTP/1.0.
async fn metric(ws_url: &str, name: &str) -> Option<f64> {
    let rest = ws_url
        .strip_prefix("ws://")
        .or_else(|| ws_url.strip_prefix("http://"))?;
    let host = rest.split('/').next()?;
    let mut stream = tokio::net::TcpStream::connect(host).await.ok()?;
    let request = format!("GET /metrics HTTP/1.0\r\nHost: {host}\r\n\r\n");
    stream.write_all(request.as_bytes()).await.ok()?;
    let mut body = String::new();
    stream.read_to_string(&mut body).await.ok()?;
    body.lines().find_map(|l| {
        let (n, v) = l.split_once(' ')?;
        (n == name).then(|| v.trim().parse().ok())?
    })
}

impl Report {
    /// The human summary printed at the end of a run.
    pub fn table(&self) -> String {
        let opt =
            |v: Option<f64>, unit: &str| v.map_or("-".to_string(), |v| format!("{v:.1} {unit}"));
        let mut out = String::new();
        let rows = [
            (
                "publishers / subscribers",
                format!("{} / {}", self.publishers, self.subscribers),
            ),
            ("run time", format!("{:.1} s", self.duration_s)),
            (
                "joins ok / failed",
                format!("{} / {}", self.joins_ok, self.joins_failed),
            ),
            (
                "join time p50 / p99",
                format!(
                    "{} / {}",
                    opt(self.join_p50_ms, "ms"),
                    opt(self.join_p99_ms, "ms")
                ),
            ),
            ("packets sent (publishers)", self.packets_sent.to_string()),
            (
                "packets received (subscribers)",
                self.packets_received.to_string(),
            ),
            (
                "packets lost",
                format!("{} ({:.3} %)", self.packets_lost, self.loss_percent),
            ),
            (
                "subscribers that got nothing",
                self.subscribers_without_packets.to_string(),
            ),
            (
                "latency p50 / p99",
                format!(
                    "{} / {}",
                    opt(self.latency_p50_ms, "ms"),
                    opt(self.latency_p99_ms, "ms")
                ),
            ),
            ("server CPU", opt(self.server_cpu_percent, "% of a core")),
            ("server RSS", opt(self.server_rss_mib, "MiB")),
        ];
        for (k, v) in rows {
            out.push_str(&format!("{k:<32} {v}\n"));
        }
        for e in &self.errors {
            out.push_str(&format!("error: {e}\n"));
        }
        out
    }
}
