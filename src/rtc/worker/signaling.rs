//! The SDP side of a participant's media: the publisher's offers, the subscriber connection's
//! offers and the client's answers, trickled candidates, and subscribing to a track (which is
//! an m-line on the subscriber connection plus a subscription in the track's Router).

use std::collections::HashMap;
use std::time::Instant;

use str0m::change::{SdpAnswer, SdpApi, SdpOffer};
use str0m::media::{Direction, MediaKind, Mid};
use str0m::Candidate;

use super::negotiation::MediaLines;
use super::peers::{Peer, Role};
use super::{Participant, PeerId, Publication, Route, Worker};
use crate::model::{OfferedTrack, PeerTarget};
use crate::rtc::stack::{guard, matching_pt};
use crate::rtc::{MediaError, MediaEvent};

/// Label of the data channel every subscriber connection carries (see `negotiate`).
const SUBSCRIBER_CHANNEL: &str = "sfu";

/// str0m's side of a subscriber offer: each track on a send-only m-line named after the
/// publisher (its stream id) and the track (its track id), as clients match them.
struct Lines<'a> {
    changes: SdpApi<'a>,
    publications: &'a HashMap<String, Publication>,
}

impl MediaLines<Mid> for Lines<'_> {
    fn add(&mut self, track: &str) -> Mid {
        let (kind, publisher) = self
            .publications
            .get(track)
            .map_or((MediaKind::Video, String::new()), |p| {
                (p.kind, p.participant.clone())
            });
        self.changes.add_media(
            kind,
            Direction::SendOnly,
            Some(publisher),
            Some(track.to_string()),
            None,
        )
    }

    fn stop(&mut self, mid: Mid) {
        self.changes.stop_media(mid);
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
        let mut lines = Lines {
            changes: peer.rtc.sdp_api(),
            publications: &self.publications,
        };
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
        p.pending = Some(pending);
        let tracks = p
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
            sdp: offer.to_sdp_string(),
            tracks,
        });
        self.to_poll.insert(peer_id);
    }

    pub(super) fn on_subscriber_answer(
        &mut self,
        participant: &str,
        sdp: &str,
    ) -> Result<(), MediaError> {
        let p = self
            .participants
            .get_mut(participant)
            .ok_or(MediaError::NotJoined)?;
        let peer_id = p.subscriber.ok_or(MediaError::NoPendingOffer)?;
        let pending = p.pending.take().ok_or(MediaError::NoPendingOffer)?;
        let answer =
            SdpAnswer::from_sdp_string(sdp).map_err(|e| MediaError::BadSdp(e.to_string()))?;
        let peer = self.peers.get_mut(&peer_id).ok_or(MediaError::NotJoined)?;
        match guard(|| peer.rtc.sdp_api().accept_answer(pending, answer)) {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(MediaError::BadSdp(e.to_string())),
            Err(panic) => {
                self.fail_peer(peer_id, "panic", &panic);
                return Err(MediaError::BadSdp("the answer broke the connection".into()));
            }
        }
        self.to_poll.insert(peer_id);
        let (opened, offer_again) = p.negotiation.answered();
        let now = Instant::now();
        for (track, mid) in opened {
            let Some(publication) = self.publications.get_mut(&track) else {
                continue;
            };
            let routed = route(&self.peers, publication, peer_id, mid);
            publication.router.set_route(&peer_id, routed.ok());
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
        sdp: &str,
    ) -> Result<String, MediaError> {
        let offer =
            SdpOffer::from_sdp_string(sdp).map_err(|e| MediaError::BadSdp(e.to_string()))?;
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
        let answer = match guard(|| peer.rtc.sdp_api().accept_offer(offer)) {
            Ok(Ok(answer)) => answer,
            Ok(Err(e)) => return Err(MediaError::BadSdp(e.to_string())),
            Err(panic) => {
                self.fail_peer(peer_id, "panic", &panic);
                return Err(MediaError::BadSdp("the offer broke the connection".into()));
            }
        };
        self.to_poll.insert(peer_id);
        Ok(answer.to_sdp_string())
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
            Ok(c) => {
                if let Err(panic) = guard(|| peer.rtc.add_remote_candidate(c)) {
                    self.fail_peer(id, "panic", &panic);
                }
            }
            Err(e) => tracing::debug!("ignoring candidate `{text}`: {e}"),
        }
    }
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
    peers: &HashMap<PeerId, Peer>,
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
    peers: &HashMap<PeerId, Peer>,
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
