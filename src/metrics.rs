//! The one Prometheus registry and every metric's definition.
//!
//! Names start with `sfu_`, carry their unit, and have no per-participant or per-room labels:
//! label values come from small fixed sets (message types, error codes), so a fleet's series
//! count does not grow with its users. Dashboards in grafana/ query only names defined here.

use prometheus::{
    Encoder, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

/// Track kinds, the `kind` label.
pub const KINDS: [&str; 2] = ["audio", "video"];
/// Simulcast layers (and `off`), the `layer` label of `sfu_video_subscriptions`.
pub const LAYERS: [&str; 4] = ["q", "h", "f", "off"];
/// Why a packet was not forwarded to a subscriber: the media socket's send buffer was full,
/// the subscription waits for a keyframe of its layer, or it came too late (older than the
/// current source).
pub const DROP_REASONS: [&str; 3] = ["socket_full", "waiting_for_keyframe", "late"];
/// Bounded queues that drop what does not fit: commands from the control plane to a media
/// worker, and media events from a worker to one participant's session.
pub const QUEUES: [&str; 3] = ["worker_commands", "media_events", "worker_relay"];
/// Errors from the WebRTC stack or the socket that end nothing but are worth watching: a
/// peer's timer handling failed, a datagram could not be sent (other than a full buffer), a
/// packet could not be written to a subscriber's stream.
/// A panic with no participant to blame (say, in housekeeping) is counted here too.
pub const MEDIA_ERRORS: [&str; 4] = ["timeout", "send", "write", "panic"];
pub const KEYFRAME_REQUEST_TYPES: [&str; 2] = ["pli", "fir"];
/// `sfu_layer_switches_total` reasons, as in `quality_changed`.
pub const SWITCH_REASONS: [&str; 5] = ["start", "request", "bandwidth", "publisher", "layer_lost"];
/// ICE consent lost, DTLS/SRTP or other stack errors, a panic in the stack.
pub const PEER_FAILURE_REASONS: [&str; 3] = ["ice", "dtls", "panic"];
pub const DATAGRAM_DROP_REASONS: [&str; 3] = ["unknown_source", "unparseable", "rejected"];
/// Which part of a peer connection's stack asked for a timeout (str0m's `Reason`, grouped):
/// the per-peer work that runs whether or not media flows.
pub const TIMEOUT_REASONS: [&str; 12] = [
    "ice",
    "dtls",
    "sctp",
    "stats",
    "feedback",
    "nack",
    "twcc",
    "pacer",
    "bwe",
    "send_stream",
    "receive",
    "other",
];
/// What woke a media worker's loop (`sfu_worker_wakeups_total{cause}`), indexed by the
/// worker's `Wake`.
pub const WAKEUP_CAUSES: [&str; 6] = [
    "socket",
    "tcp",
    "command",
    "relay",
    "timers",
    "housekeeping",
];

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
    /// Session resumes by outcome: resumed, refused (bad token or missed messages gone),
    /// expired (the window passed without one).
    pub signal_resumes: IntCounterVec,
    /// Embedded TURN: allocations now, bytes relayed (both ways), requests refused by reason
    /// (peer: not this SFU's media address; quota; credentials: expired or malformed; rate:
    /// datagrams over an allocation's bitrate).
    pub turn_allocations: IntGauge,
    pub turn_relayed_bytes: IntCounter,
    pub turn_refusals: IntCounterVec,
    pub http_connections_refused: IntCounter,
    /// Log lines the per-call-site rate limit dropped (brought up to date at each scrape).
    log_lines_suppressed: IntCounter,
    /// Peer connections (publisher and subscriber) alive now.
    pub peers: IntGauge,
    /// Published tracks now, by kind (audio, video).
    pub publications: IntGaugeVec,
    /// Receivers (one per publication layer that has received packets) now.
    pub receivers: IntGauge,
    /// Subscriptions (a publication forwarded to a subscriber) now.
    pub subscriptions: IntGauge,
    /// Video subscriptions by the layer being sent now (q, h, f, off).
    pub video_subscriptions: IntGaugeVec,
    /// RTP packets received from publishers, by kind.
    pub rtp_packets_received: IntCounterVec,
    /// RTP payload bytes received from publishers, by kind.
    pub rtp_bytes_received: IntCounterVec,
    /// RTP packets forwarded to subscribers, by kind.
    pub rtp_packets_sent: IntCounterVec,
    /// RTP payload bytes forwarded to subscribers, by kind.
    pub rtp_bytes_sent: IntCounterVec,
    /// Gaps in publishers' sequence numbers (upstream loss, before NACK repair), by kind.
    pub rtp_packets_lost: IntCounterVec,
    /// Packets not forwarded to a subscriber, by reason.
    pub rtp_packets_dropped: IntCounterVec,
    /// NACK requests received from subscribers.
    pub nacks_received: IntCounter,
    /// NACK requests sent to publishers.
    pub nacks_sent: IntCounter,
    /// Packets resent to subscribers from the retransmission cache.
    pub retransmissions: IntCounter,
    /// PLI/FIR keyframe requests received from subscribers, by type.
    pub keyframe_requests_received: IntCounterVec,
    /// Keyframe requests sent to publishers (after throttling), by type.
    pub keyframe_requests_sent: IntCounterVec,
    /// Simulcast layer switches, by reason.
    pub layer_switches: IntCounterVec,
    /// Downstream bandwidth estimates of subscriber connections, bits per second.
    pub bwe_estimate: Histogram,
    /// Round trips the stack measured per media stream, by `direction`: `publisher` (from the
    /// publisher's DLRR answers to our receiver reference times), `subscriber` (from the
    /// subscriber's receiver reports).
    pub rtt: HistogramVec,
    /// Items a bounded queue could not take, by queue.
    pub queue_drops: IntCounterVec,
    /// Media worker threads restarted after a fault outside any peer's panic boundary.
    pub worker_restarts: IntCounter,
    /// Times a media worker woke up, by cause: a datagram, a command, peers' timers or
    /// housekeeping.
    pub worker_wakeups: IntCounterVec,
    pub worker_relay_packets: IntCounter,
    /// Cluster mode: live nodes seen in Redis (this one included), failed Redis requests,
    /// joins sent to another node by reason, and whether this node is draining.
    pub cluster_nodes: IntGauge,
    pub cluster_redis_errors: IntCounter,
    pub cluster_redirects: IntCounterVec,
    pub cluster_draining: IntGauge,
    /// Each media worker's load: the fraction of its time spent working, smoothed over ~3 s
    /// (`rtc.max_worker_load` is its budget), by worker index.
    pub worker_load: GaugeVec,
    /// Timeouts handled for peer connections, by the part of the stack that asked.
    pub peer_timeouts: IntCounterVec,
    /// Stack and socket errors that ended nothing, by kind.
    pub media_errors: IntCounterVec,
    /// Time from a packet's arrival to its hand-off to the last subscriber's stack.
    pub forward_latency: Histogram,
    /// Time from a `join` request to its `joined` answer.
    pub join_duration: Histogram,
    /// UDP datagrams the media workers read from their sockets (media, RTCP, STUN, DTLS).
    pub udp_datagrams_received: IntCounter,
    /// UDP datagrams dropped before or by the WebRTC stack, by reason.
    pub udp_datagrams_dropped: IntCounterVec,
    /// Peer connections that failed, by reason (ice, dtls, panic).
    pub peer_failures: IntCounterVec,
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
                "Signaling clients disconnected because their outgoing queue was full or they \
                 stopped reading",
            )
            .expect("valid metric"),
            signal_resumes: IntCounterVec::new(
                Opts::new(
                    "sfu_signal_resumes_total",
                    "Sessions whose socket dropped, by what became of them: resumed, refused, \
                     expired",
                ),
                &["outcome"],
            )
            .expect("valid metric"),
            turn_allocations: IntGauge::new(
                "sfu_turn_allocations",
                "Allocations on the embedded TURN server now",
            )
            .expect("valid metric"),
            turn_relayed_bytes: IntCounter::new(
                "sfu_turn_relayed_bytes_total",
                "Bytes the embedded TURN server relayed, both ways",
            )
            .expect("valid metric"),
            turn_refusals: IntCounterVec::new(
                Opts::new(
                    "sfu_turn_refusals_total",
                    "TURN requests or datagrams refused: peer (not this SFU's media address), \
                     quota, credentials, rate",
                ),
                &["reason"],
            )
            .expect("valid metric"),
            http_connections_refused: IntCounter::new(
                "sfu_http_connections_refused_total",
                "TCP connections refused at http.max_connections or http.max_connections_per_ip",
            )
            .expect("valid metric"),
            log_lines_suppressed: IntCounter::new(
                "sfu_log_lines_suppressed_total",
                "Log lines dropped because their call site wrote more than the rate limit allows",
            )
            .expect("valid metric"),
            peers: IntGauge::new("sfu_peers", "Peer connections alive now").expect("valid metric"),
            publications: IntGaugeVec::new(
                Opts::new("sfu_publications", "Published tracks now, by kind"),
                &["kind"],
            )
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
            video_subscriptions: IntGaugeVec::new(
                Opts::new(
                    "sfu_video_subscriptions",
                    "Video subscriptions by the simulcast layer sent now",
                ),
                &["layer"],
            )
            .expect("valid metric"),
            rtp_packets_received: IntCounterVec::new(
                Opts::new(
                    "sfu_rtp_packets_received_total",
                    "RTP packets received from publishers, by kind",
                ),
                &["kind"],
            )
            .expect("valid metric"),
            rtp_bytes_received: IntCounterVec::new(
                Opts::new(
                    "sfu_rtp_bytes_received_total",
                    "RTP payload bytes received from publishers, by kind",
                ),
                &["kind"],
            )
            .expect("valid metric"),
            rtp_packets_sent: IntCounterVec::new(
                Opts::new(
                    "sfu_rtp_packets_sent_total",
                    "RTP packets forwarded to subscribers, by kind",
                ),
                &["kind"],
            )
            .expect("valid metric"),
            rtp_bytes_sent: IntCounterVec::new(
                Opts::new(
                    "sfu_rtp_bytes_sent_total",
                    "RTP payload bytes forwarded to subscribers, by kind",
                ),
                &["kind"],
            )
            .expect("valid metric"),
            rtp_packets_lost: IntCounterVec::new(
                Opts::new(
                    "sfu_rtp_packets_lost_total",
                    "Sequence number gaps from publishers (upstream loss before repair), by kind",
                ),
                &["kind"],
            )
            .expect("valid metric"),
            rtp_packets_dropped: IntCounterVec::new(
                Opts::new(
                    "sfu_rtp_packets_dropped_total",
                    "Packets not forwarded to a subscriber, by reason",
                ),
                &["reason"],
            )
            .expect("valid metric"),
            nacks_received: IntCounter::new(
                "sfu_nacks_received_total",
                "NACK requests received from subscribers",
            )
            .expect("valid metric"),
            nacks_sent: IntCounter::new("sfu_nacks_sent_total", "NACK requests sent to publishers")
                .expect("valid metric"),
            retransmissions: IntCounter::new(
                "sfu_retransmissions_total",
                "Packets resent to subscribers from the retransmission cache",
            )
            .expect("valid metric"),
            keyframe_requests_received: IntCounterVec::new(
                Opts::new(
                    "sfu_keyframe_requests_received_total",
                    "PLI/FIR keyframe requests received from subscribers, by type",
                ),
                &["type"],
            )
            .expect("valid metric"),
            keyframe_requests_sent: IntCounterVec::new(
                Opts::new(
                    "sfu_keyframe_requests_sent_total",
                    "Keyframe requests sent to publishers after throttling, by type",
                ),
                &["type"],
            )
            .expect("valid metric"),
            layer_switches: IntCounterVec::new(
                Opts::new(
                    "sfu_layer_switches_total",
                    "Simulcast layer switches, by reason",
                ),
                &["reason"],
            )
            .expect("valid metric"),
            bwe_estimate: Histogram::with_opts(
                HistogramOpts::new(
                    "sfu_bwe_estimate_bps",
                    "Downstream bandwidth estimates of subscriber connections, bits per second",
                )
                .buckets(vec![
                    100e3, 200e3, 300e3, 500e3, 750e3, 1e6, 1.5e6, 2e6, 3e6, 5e6, 8e6, 12e6, 20e6,
                ]),
            )
            .expect("valid metric"),
            rtt: HistogramVec::new(
                HistogramOpts::new(
                    "sfu_rtt_seconds",
                    "Round trips measured on media streams, by direction (publisher: upstream, \
                     subscriber: downstream)",
                )
                .buckets(vec![
                    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0,
                ]),
                &["direction"],
            )
            .expect("valid metric"),
            forward_latency: Histogram::with_opts(
                HistogramOpts::new(
                    "sfu_forward_latency_seconds",
                    "Time from a packet's arrival to its hand-off to the last subscriber's stack",
                )
                .buckets(vec![
                    10e-6, 25e-6, 50e-6, 100e-6, 250e-6, 500e-6, 1e-3, 2.5e-3, 5e-3, 10e-3, 25e-3,
                ]),
            )
            .expect("valid metric"),
            join_duration: Histogram::with_opts(
                HistogramOpts::new(
                    "sfu_join_duration_seconds",
                    "Time from a join request to its joined answer",
                )
                .buckets(vec![
                    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
                ]),
            )
            .expect("valid metric"),
            udp_datagrams_received: IntCounter::new(
                "sfu_udp_datagrams_received_total",
                "UDP datagrams the media workers read (media, RTCP, STUN, DTLS)",
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
            peer_failures: IntCounterVec::new(
                Opts::new(
                    "sfu_peer_failures_total",
                    "Peer connections that failed, by reason",
                ),
                &["reason"],
            )
            .expect("valid metric"),
            queue_drops: IntCounterVec::new(
                Opts::new(
                    "sfu_queue_drops_total",
                    "Items a bounded queue between the control plane and media could not take",
                ),
                &["queue"],
            )
            .expect("valid metric"),
            worker_restarts: IntCounter::new(
                "sfu_worker_restarts_total",
                "Media worker threads restarted after a fault",
            )
            .expect("valid metric"),
            worker_wakeups: IntCounterVec::new(
                Opts::new(
                    "sfu_worker_wakeups_total",
                    "Times a media worker woke up, by cause (a datagram, a command, peers' timers, housekeeping)",
                ),
                &["cause"],
            )
            .expect("valid metric"),
            cluster_nodes: IntGauge::new(
                "sfu_cluster_nodes",
                "Live nodes of the cluster seen in Redis, this one included (0: single node)",
            )
            .expect("valid metric"),
            cluster_redis_errors: IntCounter::new(
                "sfu_cluster_redis_errors_total",
                "Cluster requests to Redis that failed (Redis down or slow)",
            )
            .expect("valid metric"),
            cluster_redirects: IntCounterVec::new(
                Opts::new(
                    "sfu_cluster_redirects_total",
                    "Joins sent to another node, by reason (room_on_other_node, node_full, node_draining)",
                ),
                &["reason"],
            )
            .expect("valid metric"),
            cluster_draining: IntGauge::new(
                "sfu_cluster_draining",
                "1 while this node drains after SIGTERM",
            )
            .expect("valid metric"),
            worker_relay_packets: IntCounter::new(
                "sfu_worker_relay_packets_total",
                "Publisher packets handed to another media worker hosting subscribers of the \
                 same room (once per packet per worker)",
            )
            .expect("valid metric"),
            worker_load: GaugeVec::new(
                Opts::new(
                    "sfu_worker_load",
                    "Media worker load: the fraction of its time spent working, smoothed over ~3 s, by worker",
                ),
                &["worker"],
            )
            .expect("valid metric"),
            peer_timeouts: IntCounterVec::new(
                Opts::new(
                    "sfu_peer_timeouts_total",
                    "Timeouts handled for peer connections, by the part of the stack that asked",
                ),
                &["reason"],
            )
            .expect("valid metric"),
            media_errors: IntCounterVec::new(
                Opts::new(
                    "sfu_media_errors_total",
                    "WebRTC stack and media socket errors that ended nothing, by kind",
                ),
                &["kind"],
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
            Box::new(m.signal_resumes.clone()),
            Box::new(m.turn_allocations.clone()),
            Box::new(m.turn_relayed_bytes.clone()),
            Box::new(m.turn_refusals.clone()),
            Box::new(m.http_connections_refused.clone()),
            Box::new(m.log_lines_suppressed.clone()),
            Box::new(m.peers.clone()),
            Box::new(m.publications.clone()),
            Box::new(m.receivers.clone()),
            Box::new(m.subscriptions.clone()),
            Box::new(m.video_subscriptions.clone()),
            Box::new(m.rtp_packets_received.clone()),
            Box::new(m.rtp_bytes_received.clone()),
            Box::new(m.rtp_packets_sent.clone()),
            Box::new(m.rtp_bytes_sent.clone()),
            Box::new(m.rtp_packets_lost.clone()),
            Box::new(m.rtp_packets_dropped.clone()),
            Box::new(m.nacks_received.clone()),
            Box::new(m.nacks_sent.clone()),
            Box::new(m.retransmissions.clone()),
            Box::new(m.keyframe_requests_received.clone()),
            Box::new(m.keyframe_requests_sent.clone()),
            Box::new(m.layer_switches.clone()),
            Box::new(m.bwe_estimate.clone()),
            Box::new(m.rtt.clone()),
            Box::new(m.forward_latency.clone()),
            Box::new(m.join_duration.clone()),
            Box::new(m.udp_datagrams_received.clone()),
            Box::new(m.udp_datagrams_dropped.clone()),
            Box::new(m.peer_failures.clone()),
            Box::new(m.queue_drops.clone()),
            Box::new(m.worker_restarts.clone()),
            Box::new(m.worker_wakeups.clone()),
            Box::new(m.worker_relay_packets.clone()),
            Box::new(m.cluster_nodes.clone()),
            Box::new(m.cluster_redis_errors.clone()),
            Box::new(m.cluster_redirects.clone()),
            Box::new(m.cluster_draining.clone()),
            Box::new(m.worker_load.clone()),
            Box::new(m.peer_timeouts.clone()),
            Box::new(m.media_errors.clone()),
            Box::new(build_info),
            Box::new(ProcessMetrics(
                prometheus::process_collector::ProcessCollector::new(
                    std::process::id() as i32,
                    "sfu",
                ),
            )),
        ];
        for c in collectors {
            m.registry.register(c).expect("metric registered once");
        }
        // Series with labels from a fixed set exist from the start at 0, so dashboards and
        // alerts see "none yet" rather than "no data".
        for kind in KINDS {
            m.publications.with_label_values(&[kind]);
            for v in [
                &m.rtp_packets_received,
                &m.rtp_bytes_received,
                &m.rtp_packets_sent,
                &m.rtp_bytes_sent,
                &m.rtp_packets_lost,
            ] {
                v.with_label_values(&[kind]);
            }
        }
        for layer in LAYERS {
            m.video_subscriptions.with_label_values(&[layer]);
        }
        for reason in ["room_on_other_node", "node_full", "node_draining"] {
            m.cluster_redirects.with_label_values(&[reason]);
        }
        for reason in DROP_REASONS {
            m.rtp_packets_dropped.with_label_values(&[reason]);
        }
        for kind in KEYFRAME_REQUEST_TYPES {
            m.keyframe_requests_received.with_label_values(&[kind]);
            m.keyframe_requests_sent.with_label_values(&[kind]);
        }
        for reason in SWITCH_REASONS {
            m.layer_switches.with_label_values(&[reason]);
        }
        for reason in PEER_FAILURE_REASONS {
            m.peer_failures.with_label_values(&[reason]);
        }
        for reason in DATAGRAM_DROP_REASONS {
            m.udp_datagrams_dropped.with_label_values(&[reason]);
        }
        for queue in QUEUES {
            m.queue_drops.with_label_values(&[queue]);
        }
        for kind in MEDIA_ERRORS {
            m.media_errors.with_label_values(&[kind]);
        }
        for reason in TIMEOUT_REASONS {
            m.peer_timeouts.with_label_values(&[reason]);
        }
        m
    }

    /// The text exposition format served at /metrics.
    pub fn render(&self) -> String {
        let suppressed = crate::logging::suppressed();
        self.log_lines_suppressed
            .inc_by(suppressed.saturating_sub(self.log_lines_suppressed.get()));
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

/// The process collector of the prometheus crate, with CPU time to the clock tick instead of
/// its whole seconds: whole seconds make `rate()` over a dashboard's window jump by 100% of a
/// core at a time.
struct ProcessMetrics(prometheus::process_collector::ProcessCollector);

impl prometheus::core::Collector for ProcessMetrics {
    fn desc(&self) -> Vec<&prometheus::core::Desc> {
        self.0.desc()
    }

    fn collect(&self) -> Vec<prometheus::proto::MetricFamily> {
        let mut families = self.0.collect();
        let Some(seconds) = process_cpu_seconds(std::process::id()) else {
            return families;
        };
        for family in families
            .iter_mut()
            .filter(|f| f.name() == "sfu_process_cpu_seconds_total")
        {
            for metric in family.mut_metric() {
                let mut counter = prometheus::proto::Counter::default();
                counter.set_value(seconds);
                metric.set_counter(counter);
            }
        }
        families
    }
}

/// User plus system CPU seconds of process `pid`, from /proc (Linux), to the clock tick.
pub fn process_cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces): utime is the 14th, stime the 15th.
    let rest = stat.rsplit_once(')')?.1;
    let mut fields = rest.split_whitespace().skip(11);
    let utime: f64 = fields.next()?.parse().ok()?;
    let stime: f64 = fields.next()?.parse().ok()?;
    // Linux reports these in USER_HZ, which is 100 on every architecture Linux supports today.
    Some((utime + stime) / 100.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_time_is_exported_finer_than_whole_seconds() {
        // Burn a little CPU so the reading is above zero.
        let mut x = 0u64;
        let start = std::time::Instant::now();
        while start.elapsed() < std::time::Duration::from_millis(50) {
            x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
        }
        let text = Metrics::new().render();
        let value: f64 = text
            .lines()
            .find_map(|l| l.strip_prefix("sfu_process_cpu_seconds_total "))
            .expect("cpu series")
            .parse()
            .expect("a number");
        assert!(value > 0.0, "{value}");
        let direct = process_cpu_seconds(std::process::id()).expect("/proc readable");
        assert!(direct >= value);
    }
}
