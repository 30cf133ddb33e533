//! # sfu-load: the load generator behind `sfu load`, like LiveKit's `lk load-test`
//!
//! A client of the server, so a crate of its own in the workspace: the `sfu` binary depends on
//! it, and it depends on nothing of the server's package. It speaks the signaling protocol
//! (docs/protocol.md) and WebRTC like any other client would.
//!
//! Publishers join a room over the signaling protocol and send synthetic VP8 (one layer, or three
//! simulcast layers at browser-like sizes) and Opus-sized audio through str0m peers; subscribers
//! receive what the server forwards. The run ends with a [`Report`]: joins, packets (per
//! subscriber, audio and video apart), loss, latency (subscribers with feedback) and the server's CPU and
//! memory. This file owns the run ([`run`], [`LoadOptions`], [`Report`]); the parts:
//! - [`client`]: one participant (signaling, str0m peers, how subscribers count cheaply).
//! - [`media`]: synthetic VP8 and Opus payloads with send stamps.
//! - [`stats`]: the counters every participant task shares.
//! - [`token`]: access tokens with the claims the server verifies.
//! - [`sys`]: UDP sockets with large buffers; a local process's CPU and memory from /proc.
//!
//! docs/performance.md has the results on our machines.

pub mod client;
pub mod media;
pub mod stats;
pub mod sys;
pub mod token;

use std::net::IpAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

use crate::client::Role;
use crate::media::{simulcast_layers, LayerSpec};
use crate::stats::{percentile, Received, Stats};
use crate::token::{Grants, Minter};

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
    /// Subscribers behave like browsers (the default): they decrypt everything through str0m,
    /// send receiver reports, TWCC feedback and NACKs, ask for a keyframe (PLI) when a frame
    /// cannot be decoded, and measure latency. Without it they count packets from the clear
    /// header and send no media feedback: far cheaper for the load generator, but the server
    /// then runs no bandwidth estimation, pacing or feedback work for them.
    pub feedback: bool,
    /// Publishers publish their tracks but send no media: what connected peers cost when
    /// nothing flows.
    pub idle: bool,
    /// Pause between two joins, so the server is not hit by a thundering herd.
    pub join_interval: Duration,
    /// Local address the peers bind (their host candidate).
    pub bind: IpAddr,
    pub api_key: String,
    pub api_secret: String,
    /// A local server's pid, to read its CPU and memory from /proc; without it they come from
    /// the server's /metrics. A server running in this process (the integration tests) is
    /// `std::process::id()`, and then the reading includes the load generator's own work.
    pub server_pid: Option<u32>,
    /// Print a live progress line on stderr.
    pub progress: bool,
}

/// What a run measured.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// `feedback` (subscribers behave like browsers) or `no-feedback` (clear-header counting).
    pub subscriber_mode: &'static str,
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
    /// Subscribers that received nothing at all (one that never finished counts too).
    pub subscribers_without_packets: usize,
    /// Media packets received by kind (RTX excluded), over every subscriber.
    pub audio_packets_received: u64,
    pub video_packets_received: u64,
    /// Subscribers that received no video packet / no audio packet.
    pub subscribers_without_video: usize,
    pub subscribers_without_audio: usize,
    /// The fewest video / audio packets any subscriber received (None without subscribers).
    pub min_video_packets_per_subscriber: Option<u64>,
    pub min_audio_packets_per_subscriber: Option<u64>,
    pub latency_p50_ms: Option<f64>,
    pub latency_p99_ms: Option<f64>,
    /// Server CPU over the measured window, percent of one core.
    pub server_cpu_percent: Option<f64>,
    pub server_rss_mib: Option<f64>,
    /// Where the server's CPU and memory were read: `pid N` (/proc) or the /metrics URL.
    pub server_measured_from: String,
    pub errors: Vec<String>,
}

/// Runs the load and returns what it measured.
pub async fn run(options: LoadOptions) -> anyhow::Result<Report> {
    let url = if options.url.trim_end_matches('/').ends_with("/ws") {
        options.url.clone()
    } else {
        format!("{}/ws", options.url.trim_end_matches('/'))
    };
    let minter = Minter::new(&options.api_key, &options.api_secret);
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
            publish: true,
            subscribe: options.publishers_subscribe,
            chat: true,
            admin: false,
        };
        roles.push(Role {
            token: minter.participant_token(&options.room, &identity, grants, ttl)?,
            identity,
            publish: true,
            subscribe: options.publishers_subscribe,
            layers: layers.clone(),
            feedback: options.feedback,
            idle: options.idle,
        });
    }
    for i in 0..options.subscribers {
        let identity = format!("load-sub-{i}");
        let grants = Grants {
            publish: false,
            subscribe: true,
            chat: false,
            admin: false,
        };
        roles.push(Role {
            token: minter.participant_token(&options.room, &identity, grants, ttl)?,
            identity,
            publish: false,
            subscribe: true,
            layers: Vec::new(),
            feedback: options.feedback,
            idle: options.idle,
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
    let by_kind = ByKind::of(&per_subscriber, expected_subscribers);
    Ok(Report {
        subscriber_mode: if options.feedback {
            "feedback"
        } else {
            "no-feedback"
        },
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
        subscribers_without_packets: by_kind.without_packets,
        audio_packets_received: by_kind.audio,
        video_packets_received: by_kind.video,
        subscribers_without_video: by_kind.without_video,
        subscribers_without_audio: by_kind.without_audio,
        min_video_packets_per_subscriber: by_kind.min_video,
        min_audio_packets_per_subscriber: by_kind.min_audio,
        latency_p50_ms: ms(percentile(&mut latencies, 50.0)),
        latency_p99_ms: ms(percentile(&mut latencies, 99.0)),
        server_cpu_percent: match (cpu_before, cpu_after) {
            (Some(a), Some(b)) => Some((b - a) * 100.0 / measured.as_secs_f64()),
            _ => None,
        },
        server_rss_mib: rss.map(|b| b / (1024.0 * 1024.0)),
        server_measured_from: match options.server_pid {
            Some(pid) => format!("pid {pid}"),
            None => metrics_url(&url).unwrap_or_default(),
        },
        errors: stats.errors(),
    })
}

/// What the subscribers received, summed and at its least, audio and video apart.
#[derive(Debug, Default, PartialEq, Eq)]
struct ByKind {
    audio: u64,
    video: u64,
    without_packets: usize,
    without_video: usize,
    without_audio: usize,
    min_video: Option<u64>,
    min_audio: Option<u64>,
}

impl ByKind {
    /// `expected` subscribers should have finished; those that did not received nothing.
    fn of(finished: &[Received], expected: usize) -> Self {
        let missing = expected.saturating_sub(finished.len());
        let zero_if_missing = |min: Option<u64>| if missing > 0 { Some(0) } else { min };
        Self {
            audio: finished.iter().map(|r| r.audio).sum(),
            video: finished.iter().map(|r| r.video).sum(),
            without_packets: finished.iter().filter(|r| r.packets == 0).count() + missing,
            without_video: finished.iter().filter(|r| r.video == 0).count() + missing,
            without_audio: finished.iter().filter(|r| r.audio == 0).count() + missing,
            min_video: zero_if_missing(finished.iter().map(|r| r.video).min()),
            min_audio: zero_if_missing(finished.iter().map(|r| r.audio).min()),
        }
    }
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
        return sys::process_cpu_seconds(pid);
    }
    metric(url, "sfu_process_cpu_seconds_total").await
}

async fn server_rss_bytes(options: &LoadOptions, url: &str) -> Option<f64> {
    if let Some(pid) = options.server_pid {
        return sys::process_rss_bytes(pid);
    }
    metric(url, "sfu_process_resident_memory_bytes").await
}

/// The host (`host:port`) of a `ws://` or `http://` URL; None for TLS or other schemes.
fn plain_host(ws_url: &str) -> Option<&str> {
    let rest = ws_url
        .strip_prefix("ws://")
        .or_else(|| ws_url.strip_prefix("http://"))?;
    rest.split('/').next()
}

/// `http://host/metrics` of a server's signaling URL.
fn metrics_url(ws_url: &str) -> Option<String> {
    Some(format!("http://{}/metrics", plain_host(ws_url)?))
}

/// One unlabelled sample from the server's /metrics, over plain HTTP/1.0.
async fn metric(ws_url: &str, name: &str) -> Option<f64> {
    let host = plain_host(ws_url)?;
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
        let count = |v: Option<u64>| v.map_or("-".to_string(), |v| v.to_string());
        let mut out = String::new();
        let rows = [
            (
                "publishers / subscribers",
                format!("{} / {}", self.publishers, self.subscribers),
            ),
            ("subscribers", self.subscriber_mode.to_string()),
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
                "video / audio packets received",
                format!(
                    "{} / {}",
                    self.video_packets_received, self.audio_packets_received
                ),
            ),
            (
                "subscribers without video / audio",
                format!(
                    "{} / {}",
                    self.subscribers_without_video, self.subscribers_without_audio
                ),
            ),
            (
                "fewest video / audio per subscriber",
                format!(
                    "{} / {}",
                    count(self.min_video_packets_per_subscriber),
                    count(self.min_audio_packets_per_subscriber)
                ),
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
            ("server measured from", self.server_measured_from.clone()),
        ];
        for (k, v) in rows {
            out.push_str(&format!("{k:<36} {v}\n"));
        }
        for e in &self.errors {
            out.push_str(&format!("error: {e}\n"));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_subscriber_without_video_or_that_never_finished_is_counted() {
        let r = |audio, video| Received {
            packets: audio + video,
            audio,
            video,
            lost: 0,
        };
        let all_served = ByKind::of(&[r(100, 900), r(90, 800)], 2);
        assert_eq!(all_served.without_video, 0);
        assert_eq!(all_served.min_video, Some(800));
        assert_eq!(all_served.min_audio, Some(90));
        assert_eq!((all_served.audio, all_served.video), (190, 1700));

        let audio_only = ByKind::of(&[r(100, 900), r(90, 0)], 2);
        assert_eq!(audio_only.without_video, 1);
        assert_eq!(audio_only.without_packets, 0);
        assert_eq!(audio_only.min_video, Some(0));

        let one_missing = ByKind::of(&[r(100, 900)], 2);
        assert_eq!(one_missing.without_packets, 1);
        assert_eq!(one_missing.without_video, 1);
        assert_eq!(one_missing.min_audio, Some(0));

        assert_eq!(ByKind::of(&[], 0).min_video, None);
    }

    #[test]
    fn metrics_url_of_a_signaling_url() {
        assert_eq!(
            metrics_url("ws://127.0.0.1:7880/ws").as_deref(),
            Some("http://127.0.0.1:7880/metrics")
        );
        assert_eq!(metrics_url("wss://example.org/ws"), None);
    }
}
