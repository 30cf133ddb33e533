//! A CI-sized run of `sfu load` against an in-process server: real str0m publishers and
//! subscribers over loopback. It checks that everyone joins and every subscriber gets media,
//! never how fast (machines running tests are shared and noisy).

mod common;

use sfu::load::{run, LoadOptions, Report};

fn assert_everyone_served(report: &Report, subscribers: usize) {
    assert_eq!(report.joins_failed, 0, "{}", report.table());
    assert_eq!(
        report.joins_ok as usize,
        report.publishers + report.subscribers
    );
    assert_eq!(
        report.subscribers_without_packets,
        0,
        "every one of {subscribers} subscribers got packets\n{}",
        report.table()
    );
    assert!(report.packets_sent > 0 && report.packets_received > 0);
    assert!(report.errors.is_empty(), "{:?}", report.errors);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simulcast_publishers_reach_every_subscriber() {
    let server = common::start(|_| {}).await;
    let report = run(LoadOptions {
        simulcast: true,
        ..common::load_options(&server, "load-simulcast")
    })
    .await
    .expect("load run");
    assert_everyone_served(&report, 4);
    // The clear-header counter saw the server's streams, so a CPU reading exists too.
    assert!(report.server_cpu_percent.is_some());
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_audio_only_meeting_where_everyone_sends_and_decrypts() {
    let server = common::start(|_| {}).await;
    let report = run(LoadOptions {
        audio_only: true,
        publishers: 3,
        subscribers: 1,
        publishers_subscribe: true,
        decrypt: true,
        ..common::load_options(&server, "load-meeting")
    })
    .await
    .expect("load run");
    // Three publishers that also subscribe, and one listener.
    assert_everyone_served(&report, 4);
    assert!(
        report.latency_p50_ms.is_some(),
        "decrypting measures latency"
    );
    server.shutdown().await;
}
