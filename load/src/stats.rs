//! What a load run measures, shared by every participant task: joins, packets (per subscriber and
//! per kind), loss, latency, errors; and the sequence-number loss counter of one incoming stream.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

/// Most latency samples kept; past that, samples replace older ones at random places so the
/// percentiles still describe the whole run without unbounded memory.
const MAX_LATENCY_SAMPLES: usize = 500_000;
/// Most error messages kept for the report.
const MAX_ERRORS: usize = 20;

/// Audio or video, as a subscriber tells them apart (payload type or codec).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Audio,
    Video,
}

/// What one subscriber received by the time it left.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Received {
    /// Every media packet (RTX excluded), whatever its kind.
    pub packets: u64,
    pub audio: u64,
    pub video: u64,
    pub lost: u64,
}

/// Loss accounting for one incoming SSRC from its 16-bit sequence numbers.
#[derive(Debug, Default)]
pub struct SsrcCounter {
    /// The stream's kind, from the payload type of its first packet (None when unknown).
    pub kind: Option<Kind>,
    /// Extended sequence number of the first and highest packet seen.
    first: Option<u64>,
    highest: u64,
    pub received: u64,
}

impl SsrcCounter {
    pub fn on_packet(&mut self, seq: u16) {
        self.received += 1;
        let Some(_) = self.first else {
            self.first = Some(u64::from(seq));
            self.highest = u64::from(seq);
            return;
        };
        // Extend against the highest: the nearest 64k cycle.
        let cycle = self.highest & !0xffff;
        let mut ext = cycle | u64::from(seq);
        if ext + 0x8000 < self.highest {
            ext += 0x1_0000;
        } else if ext > self.highest + 0x8000 && ext >= 0x1_0000 {
            ext -= 0x1_0000;
        }
        self.highest = self.highest.max(ext);
    }

    /// Packets between the first and the highest that never came.
    pub fn lost(&self) -> u64 {
        let Some(first) = self.first else { return 0 };
        (self.highest - first + 1).saturating_sub(self.received)
    }
}

#[derive(Debug, Default)]
pub struct Stats {
    pub joins_ok: AtomicU64,
    pub joins_failed: AtomicU64,
    join_times: Mutex<Vec<Duration>>,
    pub packets_sent: AtomicU64,
    /// Counted by subscribers when they finish (no-feedback mode) or as frames arrive (feedback).
    pub packets_received: AtomicU64,
    pub packets_lost: AtomicU64,
    /// What each finished subscriber received, for "did everyone receive audio and video".
    per_subscriber: Mutex<Vec<Received>>,
    latencies: Mutex<Vec<Duration>>,
    errors: Mutex<Vec<String>>,
    /// Live count for the progress line: clear-header subscribers report only at the end.
    pub live_received: AtomicU64,
}

impl Stats {
    pub fn join_ok(&self, took: Duration) {
        self.joins_ok.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut t) = self.join_times.lock() {
            t.push(took);
        }
    }

    pub fn join_failed(&self, why: String) {
        self.joins_failed.fetch_add(1, Ordering::Relaxed);
        self.error(why);
    }

    pub fn error(&self, why: String) {
        if let Ok(mut e) = self.errors.lock() {
            if e.len() < MAX_ERRORS {
                e.push(why);
            }
        }
    }

    /// A subscriber with feedback measured one frame's forwarding latency.
    pub fn latency(&self, age: Duration) {
        if let Ok(mut l) = self.latencies.lock() {
            if l.len() < MAX_LATENCY_SAMPLES {
                l.push(age);
            } else {
                let i = rand::random_range(0..l.len());
                l[i] = age;
            }
        }
    }

    pub fn subscriber_done(&self, received: Received) {
        self.packets_received
            .fetch_add(received.packets, Ordering::Relaxed);
        self.packets_lost
            .fetch_add(received.lost, Ordering::Relaxed);
        if let Ok(mut p) = self.per_subscriber.lock() {
            p.push(received);
        }
    }

    pub fn join_times(&self) -> Vec<Duration> {
        self.join_times
            .lock()
            .map(|t| t.clone())
            .unwrap_or_default()
    }

    pub fn latencies(&self) -> Vec<Duration> {
        self.latencies.lock().map(|t| t.clone()).unwrap_or_default()
    }

    pub fn per_subscriber(&self) -> Vec<Received> {
        self.per_subscriber
            .lock()
            .map(|t| t.clone())
            .unwrap_or_default()
    }

    pub fn errors(&self) -> Vec<String> {
        self.errors.lock().map(|t| t.clone()).unwrap_or_default()
    }
}

/// The `p`-th percentile (0..=100) of `samples`, nearest rank.
pub fn percentile(samples: &mut [Duration], p: f64) -> Option<Duration> {
    if samples.is_empty() {
        return None;
    }
    samples.sort_unstable();
    let rank = ((p / 100.0) * samples.len() as f64).ceil() as usize;
    Some(samples[rank.clamp(1, samples.len()) - 1])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loss_counts_gaps_across_the_16_bit_wrap() {
        let mut c = SsrcCounter::default();
        for seq in [65530u16, 65531, 65533, 65535, 0, 1, 3] {
            c.on_packet(seq);
        }
        // 65532, 65534 and 2 are missing.
        assert_eq!(c.received, 7);
        assert_eq!(c.lost(), 3);
        // A late arrival fills its gap.
        c.on_packet(2);
        assert_eq!(c.lost(), 2);
    }

    #[test]
    fn percentiles_by_nearest_rank() {
        let mut v: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(percentile(&mut v, 50.0), Some(Duration::from_millis(50)));
        assert_eq!(percentile(&mut v, 99.0), Some(Duration::from_millis(99)));
        assert_eq!(percentile(&mut [], 50.0), None);
    }
}
