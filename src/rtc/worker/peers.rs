//! Peers: creating one (publisher or subscriber connection), feeding it datagrams and timeouts,
//! polling what it outputs, and ending it, its participant's media with it.

use std::cmp::Reverse;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use str0m::net::{Protocol, Receive, TcpType};
use str0m::{Candidate, Input, Output, Reason, Rtc, RtcError};

use super::stats::timeout_reason;
use super::{PeerId, Source, Worker};
use crate::model::FailureCause;
use crate::rtc::batch::RecvBatch;
use crate::rtc::stack::{guard, new_rtc};
use crate::rtc::MediaEvent;

/// Timeouts that are due at once handled in one poll of a peer before it waits for the loop's
/// timer like everyone else: 256 packets is a few keyframes, and a few milliseconds of work.
const MAX_IMMEDIATE_TIMEOUTS: u32 = 256;

/// A connected peer with no media in or out for this long is quiet: its routine timers
/// (statistics, RTCP reports, ICE consent, SCTP, the estimator's check for feedback) are
/// handled on the worker's next [`QUIET_TICK`] instead of each at its own instant, so a
/// hundred idle connections wake the worker for timers at most 20 times a second, not
/// hundreds.
const QUIET_AFTER: Duration = Duration::from_secs(1);
/// The grid quiet peers' routine timers are rounded up to: at most this late, which none of
/// them notices (their periods are 0.5 s and more).
pub(super) const QUIET_TICK: Duration = Duration::from_millis(50);

/// Waits until the socket is readable and, when the grid's `epoch` is given (the worker is
/// quiet), until the next tick after that: the datagrams of a quiet worker's clients (RTCP
/// reports, consent checks, about 1.4 a second each) are read together on the tick its quiet
/// peers' timers use, one wake-up for all instead of one each. A timer wake-up that wins the
/// race on that tick reads them ([`Worker::on_timers`]).
pub(super) async fn readable_by(
    socket: &tokio::net::UdpSocket,
    epoch: Option<Instant>,
) -> std::io::Result<()> {
    socket.readable().await?;
    if let Some(epoch) = epoch {
        tokio::time::sleep_until(wake_at(Instant::now(), epoch).into()).await;
    }
    Ok(())
}

/// Which of a participant's two connections a peer is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Role {
    /// The client offers and sends.
    Publisher,
    /// The server offers and sends.
    Subscriber,
}

pub(super) struct Peer {
    pub rtc: Rtc,
    /// The participant sid it belongs to.
    pub owner: String,
    pub role: Role,
    /// When the worker wakes it next: the time str0m last asked for, or for a quiet peer's
    /// routine timer the quiet tick after it ([`wake_at`]).
    pub timeout: Instant,
    /// Which part of the stack asked for it (an index into `TIMEOUT_REASONS`).
    pub timeout_reason: usize,
    /// When both its offer and answer were first set: the connect timeout counts from here.
    pub negotiated: Option<Instant>,
    /// ICE found a working pair (a check from the client was answered).
    pub ice_up: bool,
    /// ICE, DTLS and SRTP are up (str0m's `Connected`).
    pub connected: bool,
    /// When media last went to or came from it (packet arrival times).
    pub media_at: Instant,
}

impl Worker {
    /// A new peer connection for `owner`: ICE-lite with this worker's host candidates, and
    /// datagrams routed to it by its ICE ufrag.
    pub(super) fn new_peer(&mut self, owner: &str, role: Role) -> PeerId {
        let id = self.next_peer;
        self.next_peer += 1;
        let now = Instant::now();
        let mut rtc = new_rtc(now, role == Role::Subscriber);
        for c in &self.settings.candidates {
            if let Ok(candidate) = Candidate::host(*c, "udp") {
                rtc.add_local_candidate(candidate);
            }
        }
        // Passive: clients connect to us. ICE ranks TCP host candidates below UDP ones.
        for c in &self.settings.tcp_candidates {
            let candidate = Candidate::builder()
                .tcp()
                .host(*c)
                .tcptype(TcpType::Passive)
                .build();
            if let Ok(candidate) = candidate {
                rtc.add_local_candidate(candidate);
            }
        }
        let ufrag = rtc.direct_api().local_ice_credentials().ufrag;
        self.demux.add(ufrag, id);
        self.timers.push(Reverse((now, id)));
        self.peers.insert(
            id,
            Box::new(Peer {
                rtc,
                owner: owner.to_string(),
                role,
                timeout: now,
                timeout_reason: timeout_reason(Reason::NotHappening),
                negotiated: None,
                ice_up: false,
                connected: false,
                media_at: now,
            }),
        );
        self.active_at = now;
        self.metrics.peers.inc();
        id
    }

    /// Hands a datagram to the peer it belongs to; that peer, if any, must be polled next.
    pub(super) fn on_datagram(
        &mut self,
        source: SocketAddr,
        datagram: &[u8],
        proto: Protocol,
    ) -> Option<PeerId> {
        let Some(peer_id) = self.demux.route(source, datagram) else {
            self.counters.dropped_unknown_source.inc();
            return None;
        };
        let Ok(contents) = datagram.try_into() else {
            self.counters.dropped_unparseable.inc();
            return None;
        };
        let input = Input::Receive(
            Instant::now(),
            Receive {
                proto,
                source,
                destination: match (proto, &self.tcp) {
                    (Protocol::Tcp, Some(tcp)) => tcp.local,
                    _ => self.local,
                },
                contents,
            },
        );
        let peer = self.peers.get_mut(&peer_id)?;
        match guard(|| peer.rtc.handle_input(input)) {
            Ok(Ok(())) => {}
            Ok(Err(RtcError::Dtls(e))) if !peer.rtc.is_connected() => {
                // The handshake failed (dimpl sent its fatal alert and closed): no later
                // datagram can mend it. Said now, not when consent runs out.
                self.fail_peer(
                    peer_id,
                    FailureCause::DtlsFailed,
                    &format!(
                        "DTLS handshake failed: {e} (client certificates may be ECDSA P-256 or \
                         P-384, or RSA of 2048 to 8192 bits)"
                    ),
                );
                return None;
            }
            Ok(Err(e)) => {
                // A packet str0m refuses (bad SRTP, bad RTCP, ...) costs nothing but a count.
                tracing::debug!(peer = peer_id, "input rejected: {e}");
                self.counters.dropped_rejected.inc();
            }
            Err(panic) => {
                self.fail_peer(peer_id, FailureCause::Internal, &panic);
                return None;
            }
        }
        Some(peer_id)
    }

    pub(super) fn on_timeouts(&mut self) {
        let now = Instant::now();
        while let Some(&Reverse((at, id))) = self.timers.peek() {
            if at > now {
                break;
            }
            self.timers.pop();
            let Some(peer) = self.peers.get_mut(&id) else {
                continue;
            };
            if peer.timeout != at {
                // Superseded by a later timeout of the same peer (still in the heap).
                continue;
            }
            self.counters.timeouts[peer.timeout_reason].inc();
            match guard(|| peer.rtc.handle_input(Input::Timeout(now))) {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    tracing::debug!(peer = id, "timeout handling failed: {e}");
                    self.counters.error_timeout.inc();
                }
                Err(panic) => {
                    self.fail_peer(id, FailureCause::Internal, &panic);
                    continue;
                }
            }
            self.to_poll.insert(id);
        }
    }

    /// Whether the worker reads its socket on the [`QUIET_TICK`]s (the grid's epoch, if so):
    /// once no media went in or out and no command came for [`QUIET_AFTER`], every peer is
    /// connected (a handshake or a new peer keeps every datagram prompt) and the last read
    /// left nothing behind. The first packet of media after a quiet second waits at most a
    /// tick, once.
    pub(super) fn read_epoch(&self) -> Option<Instant> {
        let quiet = !self.read_now
            && self.active_at.elapsed() >= QUIET_AFTER
            && self.peers.values().all(|p| p.connected);
        quiet.then_some(self.quiet_epoch)
    }

    /// Due timers, and on a quiet worker the socket too: its read waits for the same tick.
    pub(super) fn on_timers(&mut self, received: &mut RecvBatch) {
        self.on_timeouts();
        if self.read_epoch().is_some() {
            self.drain_socket(received);
        }
    }

    /// Takes everything a peer has to output: datagrams go to the socket, events are handled
    /// (which may write to other peers and give them output), and its next timeout is noted.
    pub(super) fn poll_peer(&mut self, id: PeerId) {
        let mut immediate = 0;
        // The worker's one datagram buffer: str0m encrypts this peer's next packet into it
        // (each is given back once copied, below), and it comes back once the peer waits.
        if let Some(peer) = self.peers.get_mut(&id) {
            if let Some(spare) = self.spare_datagram.take() {
                peer.rtc.recycle_datagram(spare);
            }
        }
        loop {
            let Some(peer) = self.peers.get_mut(&id) else {
                return;
            };
            let output = match guard(|| peer.rtc.poll_output()) {
                Ok(Ok(output)) => output,
                Ok(Err(e)) => {
                    return self.fail_peer(id, FailureCause::DtlsFailed, &e.to_string());
                }
                Err(panic) => return self.fail_peer(id, FailureCause::Internal, &panic),
            };
            match output {
                Output::Timeout(t) => {
                    if !peer.rtc.is_alive() {
                        return self.fail_peer(id, FailureCause::DtlsFailed, "connection closed");
                    }
                    // str0m's send queue hands out one packet per timeout it asks for, at once
                    // (1 µs later); the loop's timer wheel would round that up to the next
                    // millisecond, so a keyframe of 60 packets would take 60 ms. Due now:
                    // handle it now, up to a bound that lets other peers have their turn.
                    let now = Instant::now();
                    let reason = timeout_reason(peer.rtc.last_timeout_reason());
                    if t <= now && immediate < MAX_IMMEDIATE_TIMEOUTS {
                        immediate += 1;
                        self.counters.timeouts[reason].inc();
                        match guard(|| peer.rtc.handle_input(Input::Timeout(now))) {
                            Ok(Ok(())) => continue,
                            Ok(Err(e)) => {
                                tracing::debug!(peer = id, "timeout handling failed: {e}");
                                self.counters.error_timeout.inc();
                            }
                            Err(panic) => {
                                return self.fail_peer(id, FailureCause::Internal, &panic)
                            }
                        }
                    }
                    peer.timeout_reason = reason;
                    let quiet = peer.connected
                        && now.saturating_duration_since(peer.media_at) >= QUIET_AFTER;
                    let wake = if quiet && routine(peer.rtc.last_timeout_reason()) {
                        wake_at(t, self.quiet_epoch)
                    } else {
                        t
                    };
                    if peer.timeout != wake {
                        peer.timeout = wake;
                        self.timers.push(Reverse((wake, id)));
                    }
                    // The worker's buffer, back for the next peer polled.
                    if let Some(spare) = peer.rtc.take_spare_datagram() {
                        self.spare_datagram = Some(spare);
                    }
                    return;
                }
                Output::Transmit(t) => {
                    // STUN (first byte 0-3, RFC 7983) from an ICE-lite agent is an answer to a
                    // check str0m verified: the address is this peer's from now on.
                    if t.contents.first().is_some_and(|&b| b < 4) {
                        self.demux.learn(t.destination, id);
                    }
                    if t.proto == Protocol::Tcp {
                        // Queued on its connection; a full queue drops, as UDP would.
                        let queued = self
                            .tcp
                            .as_mut()
                            .is_some_and(|tcp| tcp.send(t.destination, &t.contents));
                        if !queued {
                            self.counters.dropped_socket_full.inc();
                        }
                        // Copied: str0m encrypts a later packet into the same buffer.
                        peer.rtc.recycle_datagram(t.contents);
                        continue;
                    }
                    // Leaves with the flush's other datagrams (or when the batch is full), a
                    // copy: str0m encrypts a later packet into the same buffer.
                    let sent = self.batch.push(&self.socket, &t.contents, t.destination);
                    peer.rtc.recycle_datagram(t.contents);
                    self.count_sent(sent);
                }
                Output::Event(event) => self.on_event(id, event),
            }
        }
    }

    /// Peers negotiated longer than `connect_timeout` ago that never connected: their client's
    /// checks are not reaching us (UDP blocked, no usable candidate) or its DTLS stalled.
    pub(super) fn fail_unconnected(&mut self, now: Instant) {
        let limit = self.settings.connect_timeout;
        let late: Vec<(PeerId, bool)> = self
            .peers
            .iter()
            .filter(|(_, p)| {
                !p.connected
                    && p.negotiated
                        .is_some_and(|t| now.saturating_duration_since(t) > limit)
            })
            .map(|(&id, p)| (id, p.ice_up))
            .collect();
        let secs = limit.as_secs_f32();
        for (id, ice_up) in late {
            if ice_up {
                let reason = format!("ICE connected but DTLS did not finish within {secs} s");
                self.fail_peer(id, FailureCause::DtlsFailed, &reason);
            } else {
                let addrs: Vec<String> = self
                    .settings
                    .candidates
                    .iter()
                    .map(ToString::to_string)
                    .collect();
                let reason = format!(
                    "no ICE connectivity check reached the server within {secs} s: UDP to {} \
                     is likely blocked, or the client has no usable candidate",
                    addrs.join(", ")
                );
                self.fail_peer(id, FailureCause::IceFailed, &reason);
            }
        }
    }

    /// A peer died: its participant's media is over. The message names the connection.
    pub(super) fn fail_peer(&mut self, id: PeerId, cause: FailureCause, reason: &str) {
        let Some((owner, role)) = self.peers.get(&id).map(|p| (p.owner.clone(), p.role)) else {
            return;
        };
        let connection = match role {
            Role::Publisher => "publisher",
            Role::Subscriber => "subscriber",
        };
        self.fail_participant(&owner, cause, &format!("{connection} connection: {reason}"));
    }

    /// A participant's media is over: the session hears of it (`media_failed` with its
    /// cause) and leaves; its peers, publications and subscriptions go now. Logged at warn
    /// once, here: a client's failed connection is worth an operator's look.
    pub(super) fn fail_participant(&mut self, sid: &str, cause: FailureCause, reason: &str) {
        tracing::warn!(participant = %sid, ?cause, "media failed: {reason}");
        self.metrics
            .peer_failures
            .with_label_values(&[cause.metric_label()])
            .inc();
        if let Some(participant) = self.participants.get(sid) {
            participant.events.send(MediaEvent::Failed {
                cause,
                message: reason.to_string(),
            });
        }
        self.remove_participant(sid);
    }

    /// Everything of a participant's media goes: its publications (and so everyone's
    /// subscriptions to them), its subscriptions, both peer connections.
    pub(super) fn remove_participant(&mut self, sid: &str) {
        let Some(participant) = self.participants.get(sid) else {
            return;
        };
        let published = participant.published.clone();
        let receiving: Vec<String> = participant
            .negotiation
            .tracks()
            .map(str::to_string)
            .collect();
        let subscriber = participant.subscriber;
        for track in published {
            self.remove_publication(&track);
        }
        if let Some(subscriber) = subscriber {
            for track in receiving {
                if let Some(p) = self.publications.get_mut(&track) {
                    if p.router.unsubscribe(&subscriber) {
                        self.metrics.subscriptions.dec();
                    }
                }
                self.relay_demand(&track);
            }
        }
        let Some(participant) = self.participants.remove(sid) else {
            return;
        };
        for id in [participant.publisher, participant.subscriber]
            .into_iter()
            .flatten()
        {
            if let Some(mut peer) = self.peers.remove(&id) {
                let _ = guard(|| peer.rtc.disconnect());
                self.metrics.peers.dec();
            }
            self.demux.remove(id);
            self.to_poll.remove(&id);
            self.stream_totals.forget(id);
        }
        if let Some(room) = self.rooms.get_mut(&participant.room) {
            room.participants.retain(|m| m != sid);
            room.speakers.remove(&sid.to_string());
            if room.participants.is_empty() {
                self.rooms.remove(&participant.room);
                self.relay_room_left(&participant.room);
            }
        }
        tracing::debug!(participant = sid, "media state removed");
    }

    /// A publication ends (or, relayed, leaves this worker): its subscribers' m-lines are
    /// renegotiated away.
    pub(super) fn remove_publication(&mut self, track: &str) {
        let Some(publication) = self.publications.remove(track) else {
            return;
        };
        if let Source::Local { publisher, mid, .. } = publication.source {
            self.by_mid.remove(&(publisher, mid));
            self.metrics
                .publications
                .with_label_values(&[super::kind_label(publication.kind)])
                .dec();
            self.metrics
                .receivers
                .sub(publication.router.layer_count() as i64);
            self.relay_unpublished(track);
        }
        self.metrics
            .subscriptions
            .sub(publication.router.subscription_count() as i64);
        if let Some(owner) = self.participants.get_mut(&publication.participant) {
            owner.published.retain(|t| t != track);
        }
        if let Some(room) = self.rooms.get_mut(&publication.room) {
            room.speakers.remove(&publication.participant);
        }
        for subscriber in publication.router.subscribers() {
            let Some(owner) = self.peers.get(&subscriber).map(|p| p.owner.clone()) else {
                continue;
            };
            // The publication is gone already; this only renegotiates the m-line away.
            self.unsubscribe(&owner, track);
        }
    }
}

/// Timers that recur on their own (and nothing waits on): a quiet peer's may be late by a
/// [`QUIET_TICK`]. A pacer, NACK, TWCC or probe timer is never rounded: media waits on it.
fn routine(reason: Reason) -> bool {
    matches!(
        reason,
        Reason::Stats
            | Reason::Feedback
            | Reason::Ice
            | Reason::Sctp
            | Reason::Channel
            | Reason::BweDelayControl
            | Reason::NotHappening
    )
}

/// The first [`QUIET_TICK`] from `epoch` at or after `t`: every quiet peer of a worker wakes
/// on the same ticks.
fn wake_at(t: Instant, epoch: Instant) -> Instant {
    let tick = QUIET_TICK.as_nanos();
    let since = t.saturating_duration_since(epoch).as_nanos();
    let ticks = since.div_ceil(tick);
    epoch + Duration::from_nanos(u64::try_from(ticks * tick).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_quiet_timer_is_rounded_up_to_the_next_tick_and_no_further() {
        let epoch = Instant::now();
        let tick = QUIET_TICK;
        assert_eq!(wake_at(epoch, epoch), epoch);
        assert_eq!(wake_at(epoch + tick, epoch), epoch + tick);
        let t = epoch + tick * 7 + Duration::from_micros(1);
        assert_eq!(wake_at(t, epoch), epoch + tick * 8);
        let t = epoch + tick * 3 - Duration::from_micros(1);
        assert_eq!(wake_at(t, epoch), epoch + tick * 3);
        // Before the epoch (a timer already due): the epoch, as due as it was.
        assert_eq!(wake_at(epoch - tick, epoch), epoch);
    }

    #[test]
    fn media_timers_are_never_rounded() {
        assert!(routine(Reason::Stats) && routine(Reason::Feedback) && routine(Reason::Ice));
        assert!(!routine(Reason::Nack));
        assert!(!routine(Reason::Twcc));
        assert!(!routine(Reason::BweProbeControl));
        assert!(!routine(Reason::SendStream));
    }
}
