//! The SDP side of a participant's media: the publisher's offers, the subscriber connection's
//! offers and the client's answers, trickled candidates, and subscribing to a track (which is
//! an m-line on the subscriber connection plus a subscription in the track's Router).

use std::collections::HashMap;
use std::time::Instant;

use str0m::change::{SdpAnswer, SdpApi};
use str0m::media::{Direction, MediaKind, Mid};
use str0m::net::Protocol;
use str0m::Candidate;

use super::negotiation::MediaLines;
use super::peers::{Peer, Role};
use super::{Participant, PeerId, Publication, Route, Worker};
use crate::model::FailureCause;
use crate::model::{OfferedTrack, PeerTarget};
use crate::rtc::sdp::{ClientOffer, OfferedMedia};
use crate::rtc::stack::{guard, matching_pt, size_resend_buffer};
use crate::rtc::{MediaError, MediaEvent};

/// Label of the data channel every subscriber connection carries (see `negotiate`).
const SUBSCRIBER_CHANNEL: &str = "sfu";

/// str0m's side of a subscriber offer: each track on a send-only m-line named after the
/// publisher (its stream id) and the track (its track id), as clients match them. A removed
/// track's line goes inactive and a later track of the same kind takes it.
struct Lines<'a> {
    changes: SdpApi<'a>,
    publications: &'a HashMap<String, Publication>,
    /// The media kind of each free (inactive) m-line.
    free: Vec<(Mid, MediaKind)>,
}

impl Lines<'_> {
    fn kind_of(&self, track: &str) -> MediaKind {
        self.publications
            .get(track)
            .map_or(MediaKind::Video, |p| p.kind)
    }
}

impl MediaLines<Mid> for Lines<'_> {
    fn add(&mut self, track: &str) -> Mid {
        let publisher = self
            .publications
            .get(track)
            .map(|p| p.participant.clone())
            .unwrap_or_default();
        self.changes.add_media(
            self.kind_of(track),
            Direction::SendOnly,
            Some(publisher),
            Some(track.to_string()),
            None,
        )
    }

    fn reuse(&mut self, track: &str, mid: Mid) -> bool {
        let suits = self.free.contains(&(mid, self.kind_of(track)));
        if suits {
            self.changes.set_direction(mid, Direction::SendOnly);
        }
        suits
    }

    fn deactivate(&mut self, mid: Mid) {
        self.changes.set_direction(mid, Direction::Inactive);
    }
}

impl Worker {
    /// Makes `participant` receive `track` (on its next subscriber offer).
    pub(super) fn subscribe(&mut self, participant: &str, track: &str) {
        let Some(p) = self.participants.get(participant) else {
            return;
        };
        if !p.can_subscribe || !self.publications.contains_key(track) {
            return;
        }
        let peer = match p.subscriber {
            Some(peer) => peer,
            None => {
                let peer = self.new_peer(participant, Role::Subscriber);
                if let Some(p) = self.participants.get_mut(participant) {
                    p.subscriber = Some(peer);
                }
                peer
            }
        };
        let Some(p) = self.participants.get_mut(participant) else {
            return;
        };
        if !p.negotiation.add(track) {
            return;
        }
        if let Some(publication) = self.publications.get_mut(track) {
            if publication.router.subscribe(peer) {
                self.metrics.subscriptions.inc();
            }
        }
        self.relay_demand(track);
        self.negotiate(participant);
    }

    /// Stops sending `track` to `participant` (on its next subscriber offer).
    pub(super) fn unsubscribe(&mut self, participant: &str, track: &str) {
        let Some(p) = self.participants.get_mut(participant) else {
            return;
        };
        if let (Some(peer), Some(publication)) = (p.subscriber, self.publications.get_mut(track)) {
            if publication.router.unsubscribe(&peer) {
                self.metrics.subscriptions.dec();
            }
        }
        self.relay_demand(track);
        let Some(p) = self.participants.get_mut(participant) else {
            return;
        };
        if p.negotiation.remove(track) {
            self.negotiate(participant);
        }
    }

    /// `participant`'s subscriber connection changed: an offer goes out once the input at
    /// hand is handled, so changes made together (a publisher's three tracks, a leaving
    /// participant's tracks) make one renegotiation, not one each.
    pub(super) fn negotiate(&mut self, participant: &str) {
        if !self.to_offer.contains(participant) {
            self.to_offer.insert(participant.to_string());
        }
    }

    /// Sends a new subscriber offer if something changed and no offer is in flight.
    pub(super) fn offer(&mut self, participant: &str) {
        let Some(p) = self.participants.get_mut(participant) else {
            return;
        };
        let Some(peer_id) = p.subscriber else {
            return;
        };
        let Some(peer) = self.peers.get_mut(&peer_id) else {
            return;
        };
        if p.negotiation.busy() {
            return;
        }
        let free = p
            .negotiation
            .free()
            .iter()
            .filter_map(|&mid| Some((mid, peer.rtc.media(mid)?.kind())))
            .collect();
        let mut lines = Lines {
            changes: peer.rtc.sdp_api(),
            publications: &self.publications,
            free,
        };
        let restart = std::mem::take(&mut p.restart_ice).then(|| {
            // The server's candidates stay; the client checks them with the new credentials.
            lines.changes.ice_restart(true).ufrag
        });
        if !p.has_channel {
            // An m-line that is never stopped. When the last track goes, its m-line is
            // stopped (port 0, out of BUNDLE); with nothing left in the BUNDLE group, browsers
            // close the transport and a later track could not be received. LiveKit keeps a
            // data channel in the subscriber connection for the same reason.
            lines.changes.add_channel(SUBSCRIBER_CHANNEL.to_string());
            p.has_channel = true;
        }
        p.negotiation.offer(&mut lines);
        let offer = if lines.changes.has_changes() {
            lines.changes.apply()
        } else {
            None
        };
        p.negotiation.sent(offer.is_some());
        let Some((offer, pending)) = offer else {
            return;
        };
        if let Some(ufrag) = restart {
            // Checks with the new ufrag may come before the answer: route them from now.
            let current = peer.rtc.direct_api().local_ice_credentials().ufrag;
            self.demux.rekey(peer_id, &current, ufrag);
        }
        p.pending = Some(pending);
        let tracks: Vec<OfferedTrack> = p
            .negotiation
            .offered()
            .filter_map(|(track, mid)| {
                Some(OfferedTrack {
                    mid: mid.to_string(),
                    track: track.to_string(),
                    participant: self.publications.get(track)?.participant.clone(),
                })
            })
            .collect();
        p.events.send(MediaEvent::SubscriberOffer {
            sdp: crate::rtc::sdp::with_rrtr(&name_lines(&offer.to_sdp_string(), &tracks)),
            tracks,
        });
        self.to_poll.insert(peer_id);
    }

    pub(super) fn on_subscriber_answer(
        &mut self,
        participant: &str,
        answer: SdpAnswer,
    ) -> Result<(), MediaError> {
        let p = self
            .participants
            .get_mut(participant)
            .ok_or(MediaError::NotJoined)?;
        let peer_id = p.subscriber.ok_or(MediaError::NoPendingOffer)?;
        let pending = p.pending.take().ok_or(MediaError::NoPendingOffer)?;
        let peer = self.peers.get_mut(&peer_id).ok_or(MediaError::NotJoined)?;
        match guard(|| peer.rtc.sdp_api().accept_answer(pending, answer)) {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(MediaError::BadSdp(e.to_string())),
            Err(panic) => {
                self.fail_peer(peer_id, FailureCause::Internal, &panic);
                return Err(MediaError::BadSdp("the answer broke the connection".into()));
            }
        }
        self.to_poll.insert(peer_id);
        peer.negotiated.get_or_insert_with(Instant::now);
        let answered = p.negotiation.answered();
        // An ICE restart asked for while that offer was out goes in the next one.
        let offer_again = answered.offer_again || p.restart_ice;
        for &mid in &answered.freed {
            // The next track on this line starts afresh: a new SSRC, so the client's receiver
            // sees a new stream rather than a jump in the old one.
            if let Err(panic) = guard(|| renew_ssrc(&mut peer.rtc, mid)) {
                self.fail_peer(peer_id, FailureCause::Internal, &panic);
                return Err(MediaError::BadSdp("the answer broke the connection".into()));
            }
        }
        let now = Instant::now();
        for (track, mid) in answered.opened {
            let Some(publication) = self.publications.get_mut(&track) else {
                continue;
            };
            let routed = route(&self.peers, publication, peer_id, mid);
            publication.router.set_route(&peer_id, routed.ok());
            if let Some(peer) = self.peers.get_mut(&peer_id) {
                let video = publication.kind == MediaKind::Video;
                if let Err(panic) = guard(|| size_resend_buffer(&mut peer.rtc, mid, video)) {
                    self.fail_peer(peer_id, FailureCause::Internal, &panic);
                    return Err(MediaError::BadSdp("the answer broke the connection".into()));
                }
            }
            if routed == Err(NoRoute::Refused) {
                self.tell_unsupported(peer_id, &track);
                continue;
            }
            // The new subscriber can decode nothing until a keyframe: ask for one now.
            let layers = publication.router.keyframe_for_targets(now);
            self.request_keyframes(&track, &layers);
        }
        if offer_again {
            self.negotiate(participant);
        }
        Ok(())
    }

    /// Tells the subscriber behind `peer` that it refused every format of `track`.
    pub(super) fn tell_unsupported(&self, peer: PeerId, track: &str) {
        let Some(publication) = self.publications.get(track) else {
            return;
        };
        let codec = publication
            .params
            .map_or_else(|| "unknown".to_string(), |p| p.spec().codec.to_string());
        tracing::info!(track, %codec, "a subscriber's answer refused the track's format");
        if let Some(p) = self
            .peers
            .get(&peer)
            .and_then(|p| self.participants.get(&p.owner))
        {
            p.events.send(MediaEvent::TrackUnsupported {
                track: track.to_string(),
                codec,
            });
        }
    }

    pub(super) fn on_publisher_offer(
        &mut self,
        participant: &str,
        offer: ClientOffer,
    ) -> Result<String, MediaError> {
        let p = self
            .participants
            .get(participant)
            .ok_or(MediaError::NotJoined)?;
        if !p.can_publish {
            return Err(MediaError::BadSdp(
                "this participant may not publish".into(),
            ));
        }
        let peer_id = match p.publisher {
            Some(peer) => peer,
            None => {
                let peer = self.new_peer(participant, Role::Publisher);
                if let Some(p) = self.participants.get_mut(participant) {
                    p.publisher = Some(peer);
                }
                peer
            }
        };
        let peer = self.peers.get_mut(&peer_id).ok_or(MediaError::NotJoined)?;
        let ClientOffer {
            sdp: offer,
            media: offered,
        } = offer;
        let ufrag = peer.rtc.direct_api().local_ice_credentials().ufrag;
        let answer = match guard(|| peer.rtc.sdp_api().accept_offer(offer)) {
            Ok(Ok(answer)) => answer,
            Ok(Err(e)) => return Err(MediaError::BadSdp(e.to_string())),
            Err(panic) => {
                self.fail_peer(peer_id, FailureCause::Internal, &panic);
                return Err(MediaError::BadSdp("the offer broke the connection".into()));
            }
        };
        peer.negotiated.get_or_insert_with(Instant::now);
        let restarted = peer.rtc.direct_api().local_ice_credentials().ufrag;
        if restarted != ufrag {
            // The client restarted ICE (new credentials in its offer, so new ones in our
            // answer): its checks name the new ufrag, from the new address it may have.
            self.demux.rekey(peer_id, &ufrag, restarted);
        }
        self.to_poll.insert(peer_id);
        self.tell_refused(participant, peer_id, offered);
        Ok(answer.to_sdp_string())
    }

    /// The client asked to restart ICE on its subscriber connection (its network changed):
    /// the next offer carries new credentials, now if no offer is in flight, else right after
    /// the answer to that one.
    pub(super) fn restart_ice(&mut self, participant: &str) -> Result<(), MediaError> {
        let p = self
            .participants
            .get_mut(participant)
            .ok_or(MediaError::NotJoined)?;
        if p.subscriber.is_none() {
            return Err(MediaError::NoSubscriberConnection);
        }
        p.restart_ice = true;
        self.negotiate(participant);
        Ok(())
    }

    /// Tells a publisher which audio/video m-lines of the offer just answered were refused
    /// (the stack found no codec it forwards among those `offered`): they publish nothing,
    /// and without this the client would wait for `track_published` forever.
    fn tell_refused(&mut self, participant: &str, peer_id: PeerId, offered: Vec<OfferedMedia>) {
        let Some(peer) = self.peers.get(&peer_id) else {
            return;
        };
        let mut refused = Vec::new();
        for OfferedMedia { mid, kind, codecs } in offered {
            if kind != "audio" && kind != "video" {
                continue;
            }
            let Some(media) = peer.rtc.media(Mid::from(mid.as_str())) else {
                continue;
            };
            let receiving = matches!(media.direction(), Direction::RecvOnly | Direction::SendRecv);
            if receiving && media.remote_pts().is_empty() {
                refused.push((mid, media.track_id().to_string(), kind, codecs));
            }
        }
        let Some(p) = self.participants.get_mut(participant) else {
            return;
        };
        for (mid, cid, kind, offered) in refused {
            tracing::info!(
                participant,
                mid,
                ?offered,
                "refused a publisher m-line: no codec"
            );
            p.declared.remove(&cid);
            p.events.send(MediaEvent::PublicationRefused {
                mid,
                cid,
                kind,
                offered,
            });
        }
    }

    pub(super) fn on_candidate(&mut self, participant: &str, target: PeerTarget, candidate: &str) {
        let candidate = candidate.trim();
        if candidate.is_empty() {
            return;
        }
        let Some(p) = self.participants.get(participant) else {
            return;
        };
        let peer_id = match target {
            PeerTarget::Publisher => p.publisher,
            PeerTarget::Subscriber => p.subscriber,
        };
        let Some((id, peer)) = peer_id.and_then(|id| Some((id, self.peers.get_mut(&id)?))) else {
            return;
        };
        let text = candidate.strip_prefix("a=").unwrap_or(candidate);
        match Candidate::from_sdp_string(text) {
            // A client's TCP candidates are active (`127.0.0.1 9 typ host tcptype active`): it
            // connects to our passive one, and ICE-lite learns its address from its checks on
            // that connection. Added, one that pairs with nothing left ICE with a candidate
            // and no pair, and it gave the connection up.
            Ok(c) if c.proto() != Protocol::Udp => {
                tracing::debug!("ignoring non-UDP candidate `{text}`");
            }
            Ok(c) => {
                match guard(|| peer.rtc.add_remote_candidate(c)) {
                    // A new candidate may change ICE's state: poll, as after any input.
                    Ok(()) => {
                        self.to_poll.insert(id);
                    }
                    Err(panic) => self.fail_peer(id, FailureCause::Internal, &panic),
                }
            }
            Err(e) => tracing::debug!("ignoring candidate `{text}`: {e}"),
        }
    }
}

/// Gives the send stream of m-line `mid` a new SSRC (and RTX SSRC if it has one).
fn renew_ssrc(rtc: &mut str0m::Rtc, mid: Mid) {
    let mut api = rtc.direct_api();
    let Some(has_rtx) = api.stream_tx_by_mid(mid, None).map(|tx| tx.rtx().is_some()) else {
        return;
    };
    let (ssrc, rtx) = (api.new_ssrc(), api.new_ssrc());
    api.reset_stream_tx(mid, None, ssrc, has_rtx.then_some(rtx));
}

/// Names each offered m-line after the track it carries now: `a=msid` and the `a=ssrc` msid
/// and cname lines. str0m names a line after its first track for good, and a reused line
/// carries another; clients that match by msid must see the current one.
fn name_lines(sdp: &str, tracks: &[OfferedTrack]) -> String {
    let mut out = String::with_capacity(sdp.len() + 256);
    // Sections start at each `m=` line; the session part before the first has no `a=mid`.
    let mut sections = sdp.split("\r\nm=");
    let mut first = true;
    for section in sections.by_ref() {
        if !first {
            out.push_str("\r\nm=");
        }
        first = false;
        let named = section
            .split("\r\n")
            .find_map(|l| l.strip_prefix("a=mid:"))
            .and_then(|mid| tracks.iter().find(|t| t.mid == mid));
        let Some(t) = named else {
            out.push_str(section);
            continue;
        };
        for (i, line) in section.split("\r\n").enumerate() {
            if i > 0 {
                out.push_str("\r\n");
            }
            out.push_str(&name_line(line, &t.participant, &t.track));
        }
    }
    out
}

/// One SDP line with its msid or cname set to `stream`/`track`; other lines as they are.
fn name_line(line: &str, stream: &str, track: &str) -> String {
    if line.starts_with("a=msid:") {
        return format!("a=msid:{stream} {track}");
    }
    if let Some(rest) = line.strip_prefix("a=ssrc:") {
        if let Some((ssrc, attr)) = rest.split_once(' ') {
            if attr.starts_with("msid:") {
                return format!("a=ssrc:{ssrc} msid:{stream} {track}");
            }
            if attr.starts_with("cname:") {
                return format!("a=ssrc:{ssrc} cname:{track}");
            }
        }
    }
    line.to_string()
}

/// Why a subscription has no route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum NoRoute {
    /// Not yet: the publisher's format is unknown (no packet yet).
    Pending,
    /// Never: the subscriber's answer accepted none of the publication's formats on this
    /// m-line. Sending anyway would be packets of a payload type it never agreed to.
    Refused,
}

/// Where packets of a publication go on subscriber peer `peer`'s m-line `mid`: the payload
/// type that m-line negotiated for the publisher's format.
fn route(
    peers: &HashMap<PeerId, Box<Peer>>,
    publication: &Publication,
    peer: PeerId,
    mid: Mid,
) -> Result<Route, NoRoute> {
    let (Some(params), Some(peer)) = (publication.params.as_ref(), peers.get(&peer)) else {
        return Err(NoRoute::Pending);
    };
    matching_pt(&peer.rtc, params)
        .filter(|pt| {
            peer.rtc
                .media(mid)
                .is_some_and(|m| m.remote_pts().contains(pt))
        })
        .map(|pt| (mid, pt))
        .ok_or(NoRoute::Refused)
}

/// Routes every subscription of `publication` (track `track`) whose m-line is negotiated: what
/// waited for the publisher's format once its first packet is in. Returns the subscribers
/// that refused the format (they must be told).
pub(super) fn route_subscriptions(
    peers: &HashMap<PeerId, Box<Peer>>,
    participants: &HashMap<String, Participant>,
    track: &str,
    publication: &mut Publication,
) -> Vec<PeerId> {
    let mut refused = Vec::new();
    let subscribers: Vec<PeerId> = publication.router.subscribers().collect();
    for peer in subscribers {
        let mid = peers
            .get(&peer)
            .and_then(|p| participants.get(&p.owner))
            .and_then(|p| p.negotiation.open_mid(track));
        let Some(mid) = mid else { continue };
        let routed = route(peers, publication, peer, mid);
        if routed == Err(NoRoute::Refused) {
            refused.push(peer);
        }
        publication.router.set_route(&peer, routed.ok());
    }
    refused
}

#[cfg(test)]
mod tests {
    use super::*;

    const OFFER: &str = "v=0\r\no=- 1 2 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\n\
        a=group:BUNDLE 0 1\r\n\
        m=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:0\r\na=sendonly\r\n\
        a=msid:PA_old TR_old\r\na=ssrc:11 cname:TR_old\r\na=ssrc:11 msid:PA_old TR_old\r\n\
        m=video 9 UDP/TLS/RTP/SAVPF 96\r\na=mid:1\r\na=sendonly\r\n\
        a=msid:PA_b TR_b\r\na=ssrc:22 cname:TR_b\r\na=ssrc:22 msid:PA_b TR_b\r\n";

    fn offered(mid: &str, participant: &str, track: &str) -> OfferedTrack {
        OfferedTrack {
            mid: mid.into(),
            track: track.into(),
            participant: participant.into(),
        }
    }

    #[test]
    fn a_reused_line_is_named_after_the_track_it_carries_now() {
        let tracks = [
            offered("0", "PA_new", "TR_new"),
            offered("1", "PA_b", "TR_b"),
        ];
        let sdp = name_lines(OFFER, &tracks);
        let audio = &sdp[sdp.find("m=audio").unwrap()..sdp.find("m=video").unwrap()];
        assert!(audio.contains("a=msid:PA_new TR_new\r\n"), "{audio}");
        assert!(audio.contains("a=ssrc:11 cname:TR_new\r\n"), "{audio}");
        assert!(
            audio.contains("a=ssrc:11 msid:PA_new TR_new\r\n"),
            "{audio}"
        );
        assert!(!sdp.contains("old"), "{sdp}");
        assert_eq!(
            sdp.replace("PA_new TR_new", "PA_old TR_old")
                .replace("cname:TR_new", "cname:TR_old"),
            OFFER,
            "nothing else changes"
        );
    }

    #[test]
    fn lines_not_offered_stay_as_they_are() {
        assert_eq!(name_lines(OFFER, &[]), OFFER);
    }
}
