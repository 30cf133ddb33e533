//! Metric handles resolved once per worker (so the packet path does no label lookups), and
//! str0m's per-stream statistics turned into counter increments.

use std::collections::HashMap;

use prometheus::IntCounter;
use str0m::media::{Mid, Rid};
use str0m::stats::{MediaEgressStats, MediaIngressStats};
use str0m::Reason;

use super::{track_kind, PeerId, Wake, Worker};
use crate::metrics::{
    Metrics, KEYFRAME_REQUEST_TYPES, KINDS, SWITCH_REASONS, TIMEOUT_REASONS, WAKEUP_CAUSES,
};
use crate::model::{SubscriberForwarding, TrackForwarding};
use crate::rtc::batch::Sent;
use crate::rtc::WorkerStats;

/// Metric handles of one worker. Arrays by kind are indexed audio 0, video 1.
pub(super) struct Counters {
    pub rtp_in: [IntCounter; 2],
    pub bytes_in: [IntCounter; 2],
    pub rtp_out: [IntCounter; 2],
    pub bytes_out: [IntCounter; 2],
    pub lost: [IntCounter; 2],
    pub dropped_socket_full: IntCounter,
    pub dropped_waiting_for_keyframe: IntCounter,
    pub dropped_late: IntCounter,
    pub keyframe_requests_in: [IntCounter; 2],
    pub keyframe_requests_out: IntCounter,
    pub switches: [IntCounter; 5],
    pub datagrams_in: IntCounter,
    pub dropped_unknown_source: IntCounter,
    pub dropped_unparseable: IntCounter,
    pub dropped_rejected: IntCounter,
    pub error_timeout: IntCounter,
    pub error_send: IntCounter,
    pub error_write: IntCounter,
    /// A panic with no participant to blame (it ended nothing).
    pub panics: IntCounter,
    /// Indexed like [`WAKEUP_CAUSES`].
    pub wakeups: [IntCounter; WAKEUP_CAUSES.len()],
    /// Indexed like [`TIMEOUT_REASONS`], by [`timeout_reason`].
    pub timeouts: [IntCounter; TIMEOUT_REASONS.len()],
}

impl Counters {
    pub fn new(m: &Metrics) -> Self {
        let by_kind = |v: &prometheus::IntCounterVec| KINDS.map(|k| v.with_label_values(&[k]));
        let dropped = |reason: &str| m.rtp_packets_dropped.with_label_values(&[reason]);
        let datagrams = |reason: &str| m.udp_datagrams_dropped.with_label_values(&[reason]);
        let error = |kind: &str| m.media_errors.with_label_values(&[kind]);
        Self {
            rtp_in: by_kind(&m.rtp_packets_received),
            bytes_in: by_kind(&m.rtp_bytes_received),
            rtp_out: by_kind(&m.rtp_packets_sent),
            bytes_out: by_kind(&m.rtp_bytes_sent),
            lost: by_kind(&m.rtp_packets_lost),
            dropped_socket_full: dropped("socket_full"),
            dropped_waiting_for_keyframe: dropped("waiting_for_keyframe"),
            dropped_late: dropped("late"),
            keyframe_requests_in: KEYFRAME_REQUEST_TYPES
                .map(|t| m.keyframe_requests_received.with_label_values(&[t])),
            keyframe_requests_out: m.keyframe_requests_sent.with_label_values(&["pli"]),
            switches: SWITCH_REASONS.map(|r| m.layer_switches.with_label_values(&[r])),
            datagrams_in: m.udp_datagrams_received.clone(),
            dropped_unknown_source: datagrams("unknown_source"),
            dropped_unparseable: datagrams("unparseable"),
            dropped_rejected: datagrams("rejected"),
            error_timeout: error("timeout"),
            error_send: error("send"),
            error_write: error("write"),
            panics: error("panic"),
            wakeups: WAKEUP_CAUSES.map(|c| m.worker_wakeups.with_label_values(&[c])),
            timeouts: TIMEOUT_REASONS.map(|r| m.peer_timeouts.with_label_values(&[r])),
        }
    }
}

/// Where str0m's reason for a timeout is counted: its index in [`TIMEOUT_REASONS`]. Runs for
/// every timer a peer asks for (two per packet sent), so a plain match, no name lookup; the
/// test below keeps it in step with the names.
pub(super) fn timeout_reason(reason: Reason) -> usize {
    match reason {
        Reason::Ice => 0,
        Reason::DTLS => 1,
        Reason::Sctp | Reason::Channel => 2,
        Reason::Stats => 3,
        Reason::Feedback => 4,
        Reason::Nack => 5,
        Reason::Twcc => 6,
        Reason::Pacer(_) => 7,
        Reason::BweDelayControl | Reason::BweProbeControl | Reason::BweProbeEstimator => 8,
        Reason::SendStream | Reason::Packetize => 9,
        Reason::ReceiveReorder | Reason::PauseCheck => 10,
        _ => 11,
    }
}

/// The last cumulative (nacks, packets) str0m reported per stream, for deltas.
#[derive(Debug, Default)]
pub(super) struct StreamTotals(HashMap<(PeerId, Mid, Option<Rid>), (u64, u64)>);

impl StreamTotals {
    /// How much a cumulative count grew since its last report (`first`: the NACK count).
    fn delta(&mut self, key: (PeerId, Mid, Option<Rid>), first: bool, total: u64) -> u64 {
        let entry = self.0.entry(key).or_default();
        let slot = if first { &mut entry.0 } else { &mut entry.1 };
        let delta = total.saturating_sub(*slot);
        *slot = total.max(*slot);
        delta
    }

    /// Forgets a peer's streams when it goes.
    pub fn forget(&mut self, peer: PeerId) {
        self.0.retain(|(p, _, _), _| *p != peer);
    }
}

impl Wake {
    /// Its index in [`WAKEUP_CAUSES`](crate::metrics::WAKEUP_CAUSES).
    pub(super) fn cause(&self) -> usize {
        match self {
            Wake::Socket(_) => 0,
            Wake::Tcp(_) => 1,
            Wake::Command(_) => 2,
            Wake::Relay(_) => 3,
            Wake::Timers => 4,
            Wake::Housekeeping => 5,
        }
    }
}

impl Worker {
    /// Counts what became of datagrams handed to the socket. UDP is lossy anyway: a full send
    /// buffer drops like the network would.
    pub(super) fn count_sent(&self, sent: Sent) {
        if sent.dropped_full > 0 {
            self.counters
                .dropped_socket_full
                .inc_by(sent.dropped_full as u64);
        }
        if sent.failed > 0 {
            self.counters.error_send.inc_by(sent.failed as u64);
        }
    }

    /// A subscriber stream's statistics: NACKs it received, packets it resent (what it sent
    /// beyond what we forwarded on it), and its round trip.
    pub(super) fn on_egress_stats(&mut self, id: PeerId, stats: &MediaEgressStats) {
        let key = (id, stats.mid, stats.rid);
        let nacks = self.stream_totals.delta(key, true, stats.nacks);
        self.metrics.nacks_received.inc_by(nacks);
        let forwarded = self.forwarded_on(id, stats.mid);
        let resent = self
            .stream_totals
            .delta(key, false, stats.packets.saturating_sub(forwarded));
        self.metrics.retransmissions.inc_by(resent);
        if let Some(rtt) = stats.rtt {
            self.metrics
                .rtt
                .with_label_values(&["subscriber"])
                .observe(rtt.as_secs_f64());
        }
    }

    /// A publisher stream's statistics: NACKs we sent it, and its round trip (the stack NACKs
    /// again after one; without a measure, after 100 ms).
    pub(super) fn on_ingress_stats(&mut self, id: PeerId, stats: &MediaIngressStats) {
        let nacks = self
            .stream_totals
            .delta((id, stats.mid, stats.rid), true, stats.nacks);
        self.metrics.nacks_sent.inc_by(nacks);
        if let Some(rtt) = stats.rtt {
            self.metrics
                .rtt
                .with_label_values(&["publisher"])
                .observe(rtt.as_secs_f64());
        }
    }

    /// Packets this worker wrote to subscriber peer `peer`'s m-line `mid`.
    fn forwarded_on(&self, peer: PeerId, mid: Mid) -> u64 {
        self.peers
            .get(&peer)
            .and_then(|p| self.participants.get(&p.owner))
            .and_then(|p| p.negotiation.track_at(mid))
            .and_then(|track| self.publications.get(track))
            .map_or(0, |p| p.router.forwarded(&peer))
    }

    /// What is forwarded of each track of `room`, to whom, on which layer, how much so far.
    pub(super) fn forwarding(&self, room: &str) -> Vec<TrackForwarding> {
        let mut tracks: Vec<TrackForwarding> = self
            .publications
            .iter()
            .filter(|(_, p)| p.room == room)
            .map(|(sid, p)| {
                let mut subscribers: Vec<SubscriberForwarding> = p
                    .router
                    .subscribers()
                    .filter_map(|peer| {
                        let owner = &self.peers.get(&peer)?.owner;
                        Some(SubscriberForwarding {
                            participant: owner.clone(),
                            layer: p
                                .router
                                .current_layer(&peer)
                                .map(|l| p.router.rid_name(l).to_string()),
                            packets: p.router.forwarded(&peer),
                        })
                    })
                    .collect();
                subscribers.sort_by(|a, b| a.participant.cmp(&b.participant));
                TrackForwarding {
                    sid: sid.clone(),
                    participant: p.participant.clone(),
                    kind: track_kind(p.kind),
                    muted: p.router.is_muted(),
                    subscribers,
                }
            })
            .collect();
        tracks.sort_by(|a, b| a.sid.cmp(&b.sid));
        tracks
    }

    /// Live object counts.
    pub(super) fn stats(&self) -> WorkerStats {
        WorkerStats {
            participants: self.participants.len(),
            peers: self.peers.len(),
            receivers: self
                .publications
                .values()
                .filter(|p| matches!(p.source, super::Source::Local { .. }))
                .map(|p| p.router.layer_count())
                .sum(),
            subscriptions: self
                .publications
                .values()
                .map(|p| p.router.subscription_count())
                .sum(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use str0m::PacerReason;

    #[test]
    fn each_timeout_reason_is_counted_under_its_name() {
        let name = |r: Reason| TIMEOUT_REASONS[timeout_reason(r)];
        assert_eq!(name(Reason::Ice), "ice");
        assert_eq!(name(Reason::DTLS), "dtls");
        assert_eq!(name(Reason::Sctp), "sctp");
        assert_eq!(name(Reason::Channel), "sctp");
        assert_eq!(name(Reason::Stats), "stats");
        assert_eq!(name(Reason::Feedback), "feedback");
        assert_eq!(name(Reason::Nack), "nack");
        assert_eq!(name(Reason::Twcc), "twcc");
        assert_eq!(name(Reason::Pacer(PacerReason::Paced)), "pacer");
        assert_eq!(name(Reason::BweDelayControl), "bwe");
        assert_eq!(name(Reason::BweProbeEstimator), "bwe");
        assert_eq!(name(Reason::SendStream), "send_stream");
        assert_eq!(name(Reason::Packetize), "send_stream");
        assert_eq!(name(Reason::ReceiveReorder), "receive");
        assert_eq!(name(Reason::PauseCheck), "receive");
        assert_eq!(name(Reason::NotHappening), "other");
    }
}
