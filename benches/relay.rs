//! The relay between media workers: one publisher packet crossing to another worker's queue,
//! as a room spread over workers does once per packet per worker (never per subscriber).
//!
//! Run with `cargo bench --bench relay`. `crossing/one_thread` is the cost of a crossing
//! itself (send and take on one thread); `crossing/two_threads` is a producer and a consumer
//! thread, as two workers are: packets per second through one queue. It also prints
//! allocations per crossing.

use std::hint::black_box;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

mod common;

use common::allocations_per_call;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use sfu::forward::packet::Header;
use sfu::forward::{Codec, Packet};
use sfu::metrics::Metrics;
use sfu::rtc::relay::{Crossing, Mesh};

/// A 1100-byte VP8 delta packet.
fn packet() -> Packet {
    let mut payload = vec![0u8; 1100];
    payload[0] = 0x10;
    payload[1] = 0x01;
    let header = Header {
        ssrc: 1,
        seq: 1,
        timestamp: 3000,
        marker: false,
        audio_level: None,
        voice_activity: None,
    };
    Packet::new(header, Codec::Vp8, 0, Instant::now(), Arc::from(payload))
}

fn crossing(c: &mut Criterion) {
    let metrics = Metrics::new();
    let mut ends = Mesh::build(2, &metrics).into_iter();
    let (from, _own) = ends.next().expect("worker 0");
    let (_to, mut rx) = ends.next().expect("worker 1");
    let track: Arc<str> = Arc::from("TR_bench");
    let p = packet();

    let mut group = c.benchmark_group("crossing");
    group.throughput(Throughput::Elements(1));
    group.bench_function("one_thread", |b| {
        b.iter(|| {
            assert!(from.send_packet(1, &track, black_box(&p), None));
            black_box(rx.try_recv().ok())
        })
    });
    let per = allocations_per_call(100_000, |_| {
        from.send_packet(1, &track, &p, None);
        black_box(rx.try_recv().ok());
    });
    println!("allocations per crossing: {per:.3}");

    // Two threads: the consumer takes packets as a worker's loop does, a burst at a time.
    let taken = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let consumer = {
        let (taken, stop) = (taken.clone(), stop.clone());
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .build()
                .expect("runtime");
            runtime.block_on(async {
                while !stop.load(Ordering::Relaxed) {
                    let Some(first) = rx.recv().await else { break };
                    let burst = sfu::rtc::relay::burst(first, &mut rx);
                    let packets = burst
                        .iter()
                        .filter(|c| matches!(c, Crossing::Packet { .. }))
                        .count();
                    taken.fetch_add(packets as u64, Ordering::Release);
                }
            })
        })
    };
    group.bench_function("two_threads", |b| {
        b.iter_custom(|iters| {
            let start = taken.load(Ordering::Acquire);
            let t = Instant::now();
            for _ in 0..iters {
                // A full queue drops (and counts) like the worker would; here, wait instead.
                while !from.send_packet(1, &track, &p, None) {
                    std::hint::spin_loop();
                }
            }
            while taken.load(Ordering::Acquire) < start + iters {
                std::hint::spin_loop();
            }
            t.elapsed()
        })
    });
    group.finish();
    stop.store(true, Ordering::Relaxed);
    // Wakes the consumer so it sees `stop`.
    from.send(1, Crossing::Restarted { from: 0 });
    let _ = consumer.join();
}

criterion_group!(benches, crossing);
criterion_main!(benches);
