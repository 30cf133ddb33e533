//! Logging: the filter `log.level` names, the output format, and a rate limit per log line.
//!
//! Many log lines are caused by clients (a bad offer, a peer that failed, a refused join). So a
//! client cannot flood the log (and the disk, and the log pipeline behind it), every line of
//! code that logs (a tracing call site) may write [`LINES_PER_WINDOW`] lines per
//! [`WINDOW`]; past that its lines are dropped until the window ends, and counted
//! ([`suppressed`], served as `sfu_log_lines_suppressed_total`). Lines from other call sites
//! are not held up by one noisy one.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tracing::callsite::Identifier;
use tracing::Metadata;
use tracing_subscriber::filter::FilterExt;
use tracing_subscriber::layer::{Context, Filter, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use crate::config::{Config, LogFormat};

/// Lines one call site may write per [`WINDOW`].
pub const LINES_PER_WINDOW: u32 = 50;
/// The window of the rate limit.
pub const WINDOW: Duration = Duration::from_secs(10);

/// Lines dropped by the rate limit since the process started.
static SUPPRESSED: AtomicU64 = AtomicU64::new(0);

/// Lines the rate limit dropped since the process started.
pub fn suppressed() -> u64 {
    SUPPRESSED.load(Ordering::Relaxed)
}

/// Installs the process's logger: `RUST_LOG` if set, else `log.level` (with the WebRTC stack
/// at `error` unless the filter names it), in `log.format`, rate limited per call site.
pub fn init(config: &Config) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        let level = &config.log.level;
        let stack = crate::rtc::STACK_LOG_TARGET;
        if level.contains(stack) {
            EnvFilter::new(level)
        } else {
            EnvFilter::new(format!("{level},{stack}=error"))
        }
    });
    // The level filter first: only lines it lets through count against the rate limit.
    let filter = filter.and(RateLimit::new(LINES_PER_WINDOW, WINDOW));
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let layer = match config.log.format {
        LogFormat::Json => fmt.json().with_filter(filter).boxed(),
        LogFormat::Text => fmt.with_filter(filter).boxed(),
    };
    tracing_subscriber::registry().with(layer).init();
}

/// One call site's current window.
#[derive(Debug)]
struct Window {
    started: Instant,
    lines: u32,
}

/// A per-call-site rate limit for log lines (see the top of this file).
#[derive(Debug)]
pub struct RateLimit {
    per_window: u32,
    window: Duration,
    sites: Mutex<HashMap<Identifier, Window>>,
}

impl RateLimit {
    pub fn new(per_window: u32, window: Duration) -> Self {
        Self {
            per_window,
            window,
            sites: Mutex::new(HashMap::new()),
        }
    }

    /// Whether a line from `site` may be written now.
    fn admit(&self, site: Identifier, now: Instant) -> bool {
        let mut sites = self.sites.lock().unwrap_or_else(|e| e.into_inner());
        let window = sites.entry(site).or_insert(Window {
            started: now,
            lines: 0,
        });
        if now.saturating_duration_since(window.started) >= self.window {
            *window = Window {
                started: now,
                lines: 0,
            };
        }
        if window.lines < self.per_window {
            window.lines += 1;
            return true;
        }
        SUPPRESSED.fetch_add(1, Ordering::Relaxed);
        false
    }
}

impl<S> Filter<S> for RateLimit {
    fn enabled(&self, meta: &Metadata<'_>, _cx: &Context<'_, S>) -> bool {
        // Spans are not lines; only events are limited.
        !meta.is_event() || self.admit(meta.callsite(), Instant::now())
    }

    fn callsite_enabled(&self, _meta: &'static Metadata<'static>) -> tracing::subscriber::Interest {
        // Ask for every event: the answer changes with time.
        tracing::subscriber::Interest::sometimes()
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::sync::{Arc, Mutex};

    use tracing_subscriber::fmt::MakeWriter;

    use super::*;

    #[derive(Clone, Default)]
    struct Lines(Arc<Mutex<Vec<u8>>>);

    impl Write for Lines {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Lines {
        type Writer = Lines;
        fn make_writer(&'a self) -> Self::Writer {
            self.clone()
        }
    }

    #[test]
    fn a_flooding_call_site_is_cut_off_and_others_still_log() {
        let lines = Lines::default();
        // A window longer than any test run: what passes does not depend on the clock.
        let limit = RateLimit::new(5, Duration::from_secs(3600));
        let layer = tracing_subscriber::fmt::layer()
            .with_writer(lines.clone())
            .with_ansi(false)
            .with_filter(limit);
        let subscriber = tracing_subscriber::registry().with(layer);
        let before = suppressed();
        tracing::subscriber::with_default(subscriber, || {
            for i in 0..1000 {
                tracing::warn!(i, "a client's bad offer");
            }
            tracing::warn!("something else went wrong");
        });
        let text = String::from_utf8(lines.0.lock().unwrap().clone()).unwrap();
        assert_eq!(text.matches("a client's bad offer").count(), 5, "{text}");
        assert_eq!(text.matches("something else went wrong").count(), 1);
        // Other tests may log in parallel; ours are counted at least.
        assert!(suppressed() - before >= 995);
    }

    #[test]
    fn a_call_site_logs_again_once_its_window_ends() {
        let limit = RateLimit::new(2, Duration::from_secs(10));
        let site = tracing::callsite::Identifier(&SITE);
        let t0 = Instant::now();
        assert!(limit.admit(site.clone(), t0));
        assert!(limit.admit(site.clone(), t0));
        assert!(!limit.admit(site.clone(), t0 + Duration::from_secs(9)));
        assert!(limit.admit(site, t0 + Duration::from_secs(10)));
    }

    struct Site;
    static SITE: Site = Site;
    impl tracing::callsite::Callsite for Site {
        fn set_interest(&self, _: tracing::subscriber::Interest) {}
        fn metadata(&self) -> &Metadata<'_> {
            unimplemented!("not called by the rate limit")
        }
    }
}
