//! The one Prometheus registry and every metric's definition.
//!
//! Names start with `sfu_`, carry their unit, and have no per-participant or per-room labels:
//! label values come from small fixed sets (message types, error codes), so a fleet's series
//! count does not grow with its users. Dashboards in grafana/ query only names defined here.

use prometheus::{
    Encoder, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

/// Every metric the server exports.
pub struct Metrics {
    registry: Registry,
    /// Rooms open now.
    pub rooms: IntGauge,
    /// Participants joined now, all rooms together.
    pub participants: IntGauge,
    /// WebSocket signaling connections open now (joined or not).
    pub signal_connections: IntGauge,
    /// Signaling messages received from clients, by message type.
    pub signal_messages_received: IntCounterVec,
    /// Signaling messages sent to clients, by message type.
    pub signal_messages_sent: IntCounterVec,
    /// Error answers sent to clients, by error code.
    pub signal_errors: IntCounterVec,
    /// Chat messages relayed.
    pub chat_messages: IntCounter,
    /// Signaling clients disconnected because they could not keep up with their messages.
    pub signal_slow_consumers: IntCounter,
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let m = Self {
            rooms: IntGauge::new("sfu_rooms", "Rooms open now").expect("valid metric"),
            participants: IntGauge::new("sfu_participants", "Participants joined now")
                .expect("valid metric"),
            signal_connections: IntGauge::new(
                "sfu_signal_connections",
                "WebSocket signaling connections open now",
            )
            .expect("valid metric"),
            signal_messages_received: IntCounterVec::new(
                Opts::new(
                    "sfu_signal_messages_received_total",
                    "Signaling messages received from clients, by type",
                ),
                &["type"],
            )
            .expect("valid metric"),
            signal_messages_sent: IntCounterVec::new(
                Opts::new(
                    "sfu_signal_messages_sent_total",
                    "Signaling messages sent to clients, by type",
                ),
                &["type"],
            )
            .expect("valid metric"),
            signal_errors: IntCounterVec::new(
                Opts::new(
                    "sfu_signal_errors_total",
                    "Error answers sent to signaling clients, by code",
                ),
                &["code"],
            )
            .expect("valid metric"),
            chat_messages: IntCounter::new("sfu_chat_messages_total", "Chat messages relayed")
                .expect("valid metric"),
            signal_slow_consumers: IntCounter::new(
                "sfu_signal_slow_consumers_total",
                "Signaling clients disconnected because their outgoing queue was full",
            )
            .expect("valid metric"),
            registry,
        };
        let build_info = IntGaugeVec::new(
            Opts::new(
                "sfu_build_info",
                "Build of the running server; value is always 1",
            ),
            &["version"],
        )
        .expect("valid metric");
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        let collectors: Vec<Box<dyn prometheus::core::Collector>> = vec![
            Box::new(m.rooms.clone()),
            Box::new(m.participants.clone()),
            Box::new(m.signal_connections.clone()),
            Box::new(m.signal_messages_received.clone()),
            Box::new(m.signal_messages_sent.clone()),
            Box::new(m.signal_errors.clone()),
            Box::new(m.chat_messages.clone()),
            Box::new(m.signal_slow_consumers.clone()),
            Box::new(build_info),
            Box::new(prometheus::process_collector::ProcessCollector::new(
                std::process::id() as i32,
                "sfu",
            )),
        ];
        for c in collectors {
            m.registry.register(c).expect("metric registered once");
        }
        m
    }

    /// The text exposition format served at /metrics.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        // Encoding into a Vec only fails on invalid metric families, which `new` rules out.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8(out).unwrap_or_default()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
