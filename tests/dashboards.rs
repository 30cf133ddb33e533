//! The Grafana dashboard against a real Prometheus (Debian's `prometheus`): the server runs a
//! small `sfu load`, Prometheus scrapes it every second, and every query of every panel must
//! return data. A panel naming a metric the server does not export fails here, by name. The key
//! counters must also have grown during the run (a series that exists but stays at zero fails).
//! `promtool check metrics` must accept the server's /metrics.

mod common;

use std::collections::BTreeSet;
use std::io::Write;
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;
use sfu_load::{run, LoadOptions};

const DASHBOARD: &str = include_str!("../grafana/sfu-overview.json");
const PROMETHEUS: &str = "/usr/bin/prometheus";
const PROMTOOL: &str = "/usr/bin/promtool";

/// Counters a load run with chat and one bad request must move, each the sum of its samples
/// matching the name and the one label given: media both ways and by kind, bytes, signaling,
/// joins, chat, errors, CPU, the workers' wake-ups and the timers of packets sent.
const MUST_GROW: &[&str] = &[
    "sfu_rtp_packets_received_total{kind=\"video\"}",
    "sfu_rtp_packets_received_total{kind=\"audio\"}",
    "sfu_rtp_packets_sent_total{kind=\"video\"}",
    "sfu_rtp_packets_sent_total{kind=\"audio\"}",
    "sfu_rtp_bytes_received_total",
    "sfu_rtp_bytes_sent_total",
    "sfu_signal_messages_received_total{type=\"join\"}",
    "sfu_signal_messages_received_total",
    "sfu_signal_messages_sent_total",
    "sfu_signal_errors_total",
    "sfu_chat_messages_total",
    "sfu_join_duration_seconds_count",
    "sfu_process_cpu_seconds_total",
    "sfu_worker_wakeups_total",
    "sfu_peer_timeouts_total{reason=\"pacer\"}",
    "sfu_peer_timeouts_total{reason=\"send_stream\"}",
];

/// Stops Prometheus when the test ends, however it ends.
struct Prometheus {
    child: Child,
    url: String,
    _dir: TempDir,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct TempDir(std::path::PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

fn start_prometheus(target: std::net::SocketAddr) -> Prometheus {
    assert!(
        std::path::Path::new(PROMETHEUS).exists(),
        "{PROMETHEUS} is missing: install Debian's `prometheus` package (tests/run.sh does)"
    );
    let dir = std::env::temp_dir().join(format!("sfu-prometheus-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("data")).expect("temp dir");
    let config = dir.join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  - job_name: sfu\n    static_configs:\n      - targets: [\"{target}\"]\n"
        ),
    )
    .expect("prometheus config");
    let port = free_port();
    let child = Command::new(PROMETHEUS)
        .arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("prometheus starts");
    Prometheus {
        child,
        url: format!("http://127.0.0.1:{port}"),
        _dir: TempDir(dir),
    }
}

/// Every PromQL expression of every panel, with Grafana's variables filled in.
fn dashboard_queries() -> Vec<(String, String)> {
    let dashboard: Value = serde_json::from_str(DASHBOARD).expect("dashboard is JSON");
    let mut out = Vec::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"].as_str().expect("a target has an expr");
            let expr = expr
                .replace("$instance", ".*")
                .replace("$__rate_interval", "30s")
                .replace("$__interval", "5s");
            out.push((panel["title"].as_str().unwrap_or("?").to_string(), expr));
        }
    }
    out
}

/// `sfu_*` metric names an expression uses, as exported (histogram series mapped to their family).
fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let bytes = expr.as_bytes();
    let mut i = 0;
    while let Some(at) = expr[i..].find("sfu_") {
        let start = i + at;
        let mut end = start;
        while end < bytes.len() && (bytes[end].is_ascii_alphanumeric() || bytes[end] == b'_') {
            end += 1;
        }
        let name = &expr[start..end];
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s))
            .unwrap_or(name);
        names.insert(family.to_string());
        i = end;
    }
    names
}

/// The sum of the samples in a /metrics text that match `selector`: a name, or a name and one
/// label (`name{label="value"}`). None when no sample matches.
fn sample_sum(text: &str, selector: &str) -> Option<f64> {
    let (name, label) = match selector.split_once('{') {
        Some((name, label)) => (name, Some(label.trim_end_matches('}'))),
        None => (selector, None),
    };
    let mut sum = None;
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let (series_name, labels) = match series.split_once('{') {
            Some((n, l)) => (n, l.trim_end_matches('}')),
            None => (series, ""),
        };
        if series_name != name || label.is_some_and(|want| !labels.split(',').any(|l| l == want)) {
            continue;
        }
        if let Ok(v) = value.parse::<f64>() {
            *sum.get_or_insert(0.0) += v;
        }
    }
    sum
}

async fn scrape(server: &sfu::http::Server) -> String {
    reqwest::get(common::http_url(server, "/metrics"))
        .await
        .expect("scrape")
        .text()
        .await
        .expect("scrape body")
}

#[test]
fn sample_sum_adds_the_matching_series() {
    let text = "# TYPE a_total counter\n\
                a_total{kind=\"audio\"} 2\n\
                a_total{kind=\"video\",x=\"y\"} 5\n\
                a_totally 100\n\
                b_count 3\n";
    assert_eq!(sample_sum(text, "a_total"), Some(7.0));
    assert_eq!(sample_sum(text, "a_total{kind=\"video\"}"), Some(5.0));
    assert_eq!(sample_sum(text, "a_total{kind=\"screen\"}"), None);
    assert_eq!(sample_sum(text, "b_count"), Some(3.0));
    assert_eq!(sample_sum(text, "c_total"), None);
}

async fn query(client: &reqwest::Client, prometheus: &str, expr: &str) -> Option<Value> {
    let body: Value = client
        .get(format!("{prometheus}/api/v1/query"))
        .query(&[("query", expr)])
        .send()
        .await
        .ok()?
        .json()
        .await
        .ok()?;
    Some(body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_dashboard_query_returns_data_from_a_real_prometheus() {
    let server = common::start(|_| {}).await;
    let prometheus = start_prometheus(server.local_addr);
    let client = reqwest::Client::new();
    let before = scrape(&server).await;

    // Load while Prometheus scrapes: simulcast publishers and subscribers, then a bit of chat
    // and a bad request so the signaling panels have something to show.
    let report = run(LoadOptions {
        publishers: 2,
        subscribers: 3,
        duration: Duration::from_secs(6),
        simulcast: true,
        server_pid: None,
        ..common::load_options(&server, "dashboards")
    })
    .await
    .expect("load run");
    assert_eq!(report.joins_failed, 0, "{}", report.table());
    let (mut chatter, _) = common::Client::join(&server, "dashboards", "chatter").await;
    let sent = chatter
        .request(serde_json::json!({"type":"chat","text":"hello dashboards"}))
        .await;
    assert_eq!(sent["type"], "chat", "{sent}");
    chatter.send_text("{not json".into()).await;
    let refused = chatter.recv_type("error").await;
    assert_eq!(refused["code"], "bad_json", "{refused}");

    // Every key counter moved during the run: scraped before the load and after it.
    let after = scrape(&server).await;
    let mut still = Vec::new();
    for selector in MUST_GROW {
        let (b, a) = (sample_sum(&before, selector), sample_sum(&after, selector));
        match a {
            None => still.push(format!("{selector}: not exported after the run")),
            Some(a) if a <= b.unwrap_or(0.0) => {
                still.push(format!("{selector}: {b:?} before the run, {a} after"))
            }
            Some(_) => {}
        }
    }
    assert!(
        still.is_empty(),
        "counters that did not grow during the load run:\n{}\n{}",
        still.join("\n"),
        report.table()
    );

    // Enough scrapes for every rate() to have two samples after the load: counted on the
    // series the run created last (the bad request's error), since on a fast machine the
    // server's older series may already have ten samples before the run ended.
    let count = |selector: &'static str| {
        let client = &client;
        let url = &prometheus.url;
        async move {
            let v = query(client, url, &format!("count_over_time({selector}[1m])")).await;
            v.and_then(|v| {
                v["data"]["result"][0]["value"][1]
                    .as_str()?
                    .parse::<f64>()
                    .ok()
            })
            .unwrap_or(0.0)
        }
    };
    let scraped = common::eventually_within(Duration::from_secs(60), || async {
        count("sfu_build_info").await >= 10.0
            && count(r#"sfu_signal_errors_total{code="bad_json"}"#).await >= 3.0
    })
    .await;
    assert!(scraped, "Prometheus scraped the server");

    let exported = scrape(&server).await;
    let families: BTreeSet<&str> = exported
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .collect();

    let mut missing = Vec::new();
    let mut empty = Vec::new();
    let queries = dashboard_queries();
    assert!(queries.len() >= 30, "the dashboard has its panels");
    for (title, expr) in &queries {
        for name in metric_names(expr) {
            if !families.contains(name.as_str()) {
                missing.push(format!("{title}: `{name}` is not exported"));
            }
        }
        let answer = query(&client, &prometheus.url, expr).await;
        let ok = answer.as_ref().is_some_and(|v| {
            v["status"] == "success"
                && v["data"]["result"]
                    .as_array()
                    .is_some_and(|r| !r.is_empty())
        });
        if !ok {
            empty.push(format!("{title}: {expr} -> {answer:?}"));
        }
    }
    assert!(
        missing.is_empty(),
        "dashboard names unknown metrics:\n{}",
        missing.join("\n")
    );
    assert!(
        empty.is_empty(),
        "queries without data:\n{}",
        empty.join("\n")
    );
    server.shutdown().await;
}

#[tokio::test]
async fn promtool_accepts_the_metrics() {
    assert!(
        std::path::Path::new(PROMTOOL).exists(),
        "{PROMTOOL} is missing: install Debian's `prometheus` package (tests/run.sh does)"
    );
    let server = common::start(|_| {}).await;
    let scrape = reqwest::get(common::http_url(&server, "/metrics"))
        .await
        .expect("scrape")
        .text()
        .await
        .expect("body");
    let mut child = Command::new(PROMTOOL)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool runs");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(scrape.as_bytes())
        .expect("feed promtool");
    let out = child.wait_with_output().expect("promtool finishes");
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    server.shutdown().await;
}
