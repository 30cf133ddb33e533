//! The forwarding core's hot path, without a network: what one packet costs per subscriber.
//!
//! Run with `cargo bench --bench forward`. Besides criterion's times it prints allocations per
//! packet, counted by a wrapping global allocator, so a change that adds a per-subscriber
//! allocation shows up as a number, not a hunch.

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

mod common;

use common::allocations_per_call;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use sfu::forward::allocator::{Allocator, Demand, Priority};
use sfu::forward::keyframe::is_keyframe;
use sfu::forward::munger::Munger;
use sfu::forward::receiver::Receiver;
use sfu::forward::router::{Fanout, Router};
use sfu::forward::subscription::{Forward, Subscription};
use sfu::forward::vp8::Vp8Info;
use sfu::forward::{Codec, Packet};

/// A 1100-byte VP8 packet, the size a 720p stream mostly sends.
fn vp8_packet(seq: u64, keyframe: bool, arrival: Instant) -> Packet {
    let mut payload = vec![0u8; 1100];
    // Descriptor with a 15-bit picture ID, as browsers send, then the VP8 frame tag.
    let pid = (seq / 4) as u16 & 0x7fff;
    payload[0] = 0x90;
    payload[1] = 0x80;
    payload[2] = 0x80 | (pid >> 8) as u8;
    payload[3] = pid as u8;
    payload[4] = if keyframe { 0x00 } else { 0x01 };
    let vp8 = Vp8Info::parse(&payload);
    Packet {
        ssrc: 0x1234_5678,
        seq,
        timestamp: (seq as u32) * 3000,
        marker: seq % 4 == 3,
        codec: Codec::Vp8,
        keyframe,
        audio_level: None,
        voice_activity: None,
        arrival,
        payload: Arc::from(payload),
        layer: 0,
        vp8,
    }
}

fn subscription_forward(c: &mut Criterion) {
    let t0 = Instant::now();
    let key = vp8_packet(0, true, t0);
    let delta = vp8_packet(1, false, t0);
    let mut group = c.benchmark_group("subscription");
    group.throughput(Throughput::Elements(1));
    group.bench_function("forward_one_packet", |b| {
        let mut s = Subscription::new(Codec::Vp8);
        let _ = s.on_packet(&key, t0);
        let mut seq = 1;
        let mut p = delta.clone();
        b.iter(|| {
            seq += 1;
            p.seq = seq;
            black_box(s.on_packet(black_box(&p), t0))
        })
    });
    group.finish();

    let mut s = Subscription::new(Codec::Vp8);
    let _ = s.on_packet(&key, t0);
    let mut p = delta.clone();
    let allocs = allocations_per_call(100_000, |i| {
        p.seq = 2 + i;
        if let Forward::Send(o) = s.on_packet(&p, t0) {
            black_box(o);
        }
    });
    println!("allocations per packet per subscription: {allocs:.3}");
}

/// One publisher packet through its publication's Router to `n` subscriptions: what the worker
/// does per packet before the stack writes (receiver accounting, every subscription's decision,
/// the deliveries gathered into a reused fan-out).
fn fan_out(c: &mut Criterion) {
    let t0 = Instant::now();
    let mut group = c.benchmark_group("fan_out");
    for n in [10u32, 100, 1000] {
        let mut router: Router<u32, u32> = Router::new(Priority::Camera, Vec::new());
        for s in 0..n {
            router.subscribe(s);
            router.set_route(&s, Some(s));
        }
        let mut out = Fanout::default();
        router.on_packet(&vp8_packet(0, true, t0), t0, &mut out);
        assert_eq!(
            out.deliveries.len(),
            n as usize,
            "every subscription forwards"
        );
        group.throughput(Throughput::Elements(u64::from(n)));
        let mut seq = 1u64;
        let mut p = vp8_packet(1, false, t0);
        group.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, _| {
            b.iter(|| {
                seq += 1;
                p.seq = seq;
                p.keyframe = is_keyframe(Codec::Vp8, &p.payload);
                router.on_packet(&p, t0, &mut out);
                black_box(out.deliveries.len());
            })
        });
        let allocs = allocations_per_call(1000, |i| {
            p.seq = seq + 1 + i;
            router.on_packet(&p, t0, &mut out);
            black_box(out.deliveries.len());
        });
        println!(
            "fan-out to {n}: allocations per packet per subscriber: {:.4}",
            allocs / f64::from(n)
        );
    }
    group.finish();
}

fn munger(c: &mut Criterion) {
    let t0 = Instant::now();
    c.bench_function("munger_rewrite", |b| {
        let mut m = Munger::new();
        let mut seq = 0u64;
        b.iter(|| {
            seq += 1;
            black_box(m.rewrite(1, seq, seq as u32 * 3000, 90_000, t0))
        })
    });
    c.bench_function("munger_source_switch", |b| {
        let mut m = Munger::new();
        let mut seq = 0u64;
        let mut ssrc = 0u32;
        b.iter(|| {
            seq += 1;
            ssrc = ssrc.wrapping_add(1);
            black_box(m.rewrite(ssrc, seq, 0, 90_000, t0 + Duration::from_millis(seq)))
        })
    });
}

fn receiver(c: &mut Criterion) {
    let t0 = Instant::now();
    c.bench_function("receiver_on_packet_with_keyframe_check", |b| {
        let mut r = Receiver::new(Codec::Vp8);
        let mut p = vp8_packet(0, false, t0);
        let mut i = 0u64;
        b.iter(|| {
            i += 1;
            p.seq = i;
            p.keyframe = is_keyframe(Codec::Vp8, &p.payload);
            r.on_packet(black_box(&p), t0 + Duration::from_micros(i * 300));
        })
    });
}

/// One Allocator pass for a subscriber receiving 50 tracks (a large meeting's grid): what runs
/// on every bandwidth estimate and every half second per subscriber connection.
fn allocator(c: &mut Criterion) {
    let t0 = Instant::now();
    let demands: Vec<Demand<u32>> = (0..50u32)
        .map(|i| Demand {
            key: i,
            priority: match i % 10 {
                0 => Priority::Audio,
                1 => Priority::Screen,
                _ => Priority::Camera,
            },
            preferred: Some((i % 3) as u8),
            area: 320 * 180 * (1 + i % 4),
            layer_bps: [150_000, 500_000, 1_200_000],
            // What browsers send: every layer with three temporal layers.
            temporal_layers: 3,
        })
        .collect();
    let mut a = Allocator::default();
    let mut i = 0u64;
    c.bench_function("allocator_pass_50_subscriptions", |b| {
        b.iter(|| {
            i += 1;
            // An estimate that moves, so decisions and holds change.
            let estimate = 2_000_000 + (i % 7) * 1_000_000;
            black_box(a.allocate(estimate, black_box(&demands), t0 + Duration::from_millis(i)))
        })
    });
    let allocs = allocations_per_call(1000, |n| {
        black_box(a.allocate(3_000_000, &demands, t0 + Duration::from_millis(n)));
    });
    println!("allocator pass over 50: allocations per pass: {allocs:.1}");
}

/// A simulcast subscription switching layers: the selector and the VP8 picture ID munger on
/// every packet of three layers, with a switch every 30 frames.
fn simulcast_select(c: &mut Criterion) {
    let t0 = Instant::now();
    let mut s = Subscription::new(Codec::Vp8);
    let mut packets: Vec<Packet> = (0..3u8)
        .map(|layer| {
            let mut p = vp8_packet(u64::from(layer) * 10_000, false, t0);
            p.layer = layer;
            p.ssrc += u32::from(layer);
            p
        })
        .collect();
    let mut n = 0u64;
    c.bench_function("simulcast_packet_of_three_layers", |b| {
        b.iter(|| {
            n += 1;
            let p = &mut packets[(n % 3) as usize];
            p.seq += 1;
            p.keyframe = n % 90 < 3;
            if n.is_multiple_of(90) {
                s.set_preferred(Some(((n / 90) % 3) as u8));
            }
            black_box(s.on_packet(p, t0 + Duration::from_micros(n * 100)))
        })
    });
}

criterion_group!(
    benches,
    subscription_forward,
    fan_out,
    munger,
    receiver,
    allocator,
    simulcast_select
);
criterion_main!(benches);
