//! How busy each media worker is: the worker counts the time it spends handling what woke it
//! (a datagram burst, a command, timers), a sampler turns that into a load (the busy fraction of
//! wall time, smoothed over a few seconds), and join admission reads it against
//! `rtc.max_worker_load`: a worker past its budget takes no new participant, so the calls it
//! carries keep their CPU.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// How often the sampler turns busy time into a load.
pub const SAMPLE_INTERVAL: Duration = Duration::from_millis(500);
/// The smoothing time constant: a burst of joins (handshakes) weighs little, a load that lasts
/// this long counts fully.
pub const LOAD_WINDOW: Duration = Duration::from_secs(3);

/// One worker's counters, shared between its thread and the sampler.
#[derive(Debug, Default)]
pub struct WorkerLoad {
    busy_ns: AtomicU64,
    /// The smoothed load, an f64's bits.
    load: AtomicU64,
}

impl WorkerLoad {
    /// The worker spent `busy` handling one wake-up.
    pub fn add_busy(&self, busy: Duration) {
        let ns = u64::try_from(busy.as_nanos()).unwrap_or(u64::MAX);
        self.busy_ns.fetch_add(ns, Ordering::Relaxed);
    }

    /// Busy time so far, in nanoseconds.
    pub fn busy_ns(&self) -> u64 {
        self.busy_ns.load(Ordering::Relaxed)
    }

    /// The smoothed busy fraction, 0 (idle) to 1 (never waiting).
    pub fn load(&self) -> f64 {
        f64::from_bits(self.load.load(Ordering::Relaxed))
    }

    fn set_load(&self, load: f64) {
        self.load.store(load.to_bits(), Ordering::Relaxed);
    }
}

/// Turns the workers' busy time into loads, one sample at a time (sans-IO: the caller passes
/// the time).
#[derive(Debug)]
pub struct LoadSampler {
    last_busy: Vec<u64>,
    last_at: Instant,
}

impl LoadSampler {
    pub fn new(workers: &[&WorkerLoad], now: Instant) -> Self {
        Self {
            last_busy: workers.iter().map(|w| w.busy_ns()).collect(),
            last_at: now,
        }
    }

    /// Updates each worker's load with the busy fraction since the last sample: an
    /// exponential moving average with time constant [`LOAD_WINDOW`].
    pub fn sample(&mut self, workers: &[&WorkerLoad], now: Instant) {
        let elapsed = now.saturating_duration_since(self.last_at);
        if elapsed.is_zero() {
            return;
        }
        self.last_at = now;
        let weight = 1.0 - (-elapsed.as_secs_f64() / LOAD_WINDOW.as_secs_f64()).exp();
        for (worker, last) in workers.iter().zip(self.last_busy.iter_mut()) {
            let busy = worker.busy_ns();
            let fraction = (busy.saturating_sub(*last) as f64 / elapsed.as_nanos() as f64).min(1.0);
            *last = busy;
            let load = worker.load() + weight * (fraction - worker.load());
            worker.set_load(load);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lasting_load_counts_fully_and_a_burst_little() {
        let t0 = Instant::now();
        let w = WorkerLoad::default();
        let mut sampler = LoadSampler::new(&[&w], t0);
        // Half of every half second busy, for 15 s: the load settles at one half.
        for i in 1..=30u32 {
            w.add_busy(Duration::from_millis(250));
            sampler.sample(&[&w], t0 + SAMPLE_INTERVAL * i);
        }
        assert!((w.load() - 0.5).abs() < 0.01, "{}", w.load());
        // Idle for 15 s: back near 0.
        for i in 31..=60u32 {
            sampler.sample(&[&w], t0 + SAMPLE_INTERVAL * i);
        }
        assert!(w.load() < 0.01, "{}", w.load());
        // One fully busy half second (a burst of handshakes) moves it by about a sixth only.
        w.add_busy(Duration::from_millis(500));
        sampler.sample(&[&w], t0 + SAMPLE_INTERVAL * 61);
        assert!(w.load() > 0.1 && w.load() < 0.2, "{}", w.load());
    }

    #[test]
    fn busy_time_beyond_the_wall_clock_is_a_full_load() {
        let t0 = Instant::now();
        let w = WorkerLoad::default();
        let mut sampler = LoadSampler::new(&[&w], t0);
        for i in 1..=40u32 {
            w.add_busy(Duration::from_secs(1));
            sampler.sample(&[&w], t0 + SAMPLE_INTERVAL * i);
        }
        assert!(w.load() <= 1.0 && w.load() > 0.99, "{}", w.load());
    }
}
