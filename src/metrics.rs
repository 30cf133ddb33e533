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
    /// Peer connections (publisher and subscriber) alive now.
    pub peers: IntGauge,
    /// Published tracks now.
    pub publications: IntGauge,
    /// Receivers (one per publication layer that has received packets) now.
    pub receivers: IntGauge,
    /// Subscriptions (a publication forwarded to a subscriber) now.
    pub subscriptions: IntGauge,
    /// RTP packets received from publishers.
    pub rtp_packets_received: IntCounter,
    /// RTP packets forwarded to subscribers.
    pub rtp_packets_sent: IntCounter,
    /// PLI/FIR keyframe requests received from subscribers.
    pub keyframe_requests_received: IntCounter,
    /// Keyframe requests sent to publishers (after throttling).
    pub keyframe_requests_sent: IntCounter,
    /// UDP datagrams dropped before or by the WebRTC stack, by reason.
    pub udp_datagrams_dropped: IntCounterVec,
    /// Participants whose media failed (ICE/DTLS timeout, a fault in the stack).
    pub media_failures: IntCounter,
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
            peers: IntGauge::new("sfu_peers", "Peer connections alive now").expect("valid metric"),
            publications: IntGauge::new("sfu_publications", "Published tracks now")
                .expect("valid metric"),
            receivers: IntGauge::new(
                "sfu_receivers",
                "Receivers (publication layers receiving packets) now",
            )
            .expect("valid metric"),
            subscriptions: IntGauge::new(
                "sfu_subscriptions",
                "Publications forwarded to subscribers now",
            )
            .expect("valid metric"),
            rtp_packets_received: IntCounter::new(
                "sfu_rtp_packets_received_total",
                "RTP packets received from publishers",
            )
            .expect("valid metric"),
            rtp_packets_sent: IntCounter::new(
                "sfu_rtp_packets_sent_total",
                "RTP packets forwarded to subscribers",
            )
            .expect("valid metric"),
            keyframe_requests_received: IntCounter::new(
                "sfu_keyframe_requests_received_total",
                "PLI/FIR keyframe requests received from subscribers",
            )
            .expect("valid metric"),
            keyframe_requests_sent: IntCounter::new(
                "sfu_keyframe_requests_sent_total",
                "Keyframe requests sent to publishers after throttling",
            )
            .expect("valid metric"),
            udp_datagrams_dropped: IntCounterVec::new(
                Opts::new(
                    "sfu_udp_datagrams_dropped_total",
                    "Media datagrams dropped, by reason",
                ),
                &["reason"],
            )
            .expect("valid metric"),
            media_failures: IntCounter::new(
                "sfu_media_failures_total",
                "Participants whose media connection failed",
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
            Box::new(m.peers.clone()),
            Box::new(m.publications.clone()),
            Box::new(m.receivers.clone()),
            Box::new(m.subscriptions.clone()),
            Box::new(m.rtp_packets_received.clone()),
            Box::new(m.rtp_packets_sent.clone()),
            Box::new(m.keyframe_requests_received.clone()),
            Box::new(m.keyframe_requests_sent.clone()),
            Box::new(m.udp_datagrams_dropped.clone()),
            Box::new(m.media_failures.clone()),
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
