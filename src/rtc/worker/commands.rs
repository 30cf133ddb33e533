//! The control plane's commands: a participant joins or leaves, declares, offers, answers,
//! subscribes, asks for a quality; counts for the admin API; faults for tests.

use std::collections::HashMap;
use std::time::Instant;

use super::negotiation::Negotiation;
use super::{Declared, Participant, RoomMedia, Source, Worker};
use crate::forward::allocator::Allocator;
use crate::forward::audio_level::ActiveSpeakers;
use crate::rtc::{Command, MediaError, MAX_DECLARED_TRACKS};

impl Worker {
    pub(super) fn on_command(&mut self, command: Command) {
        match command {
            Command::Join {
                room,
                participant,
                can_publish,
                can_subscribe,
                events,
            } => self.join(room, participant, can_publish, can_subscribe, events),
            Command::Leave { participant } => self.remove_participant(&participant),
            Command::Publish {
                participant,
                cid,
                kind: _,
                source,
                name,
                reply,
            } => {
                let declared = match self.participants.get_mut(&participant) {
                    Some(p)
                        if p.declared.len() >= MAX_DECLARED_TRACKS
                            && !p.declared.contains_key(&cid) =>
                    {
                        Err(MediaError::TooManyTracks)
                    }
                    Some(p) => {
                        p.declared.insert(cid, Declared { source, name });
                        Ok(())
                    }
                    None => Err(MediaError::NotJoined),
                };
                let _ = reply.send(declared);
            }
            Command::PublisherOffer {
                participant,
                sdp,
                reply,
            } => {
                let _ = reply.send(self.on_publisher_offer(&participant, sdp));
            }
            Command::SubscriberAnswer {
                participant,
                sdp,
                reply,
            } => {
                let _ = reply.send(self.on_subscriber_answer(&participant, sdp.0));
            }
            Command::Candidate {
                participant,
                target,
                candidate,
            } => self.on_candidate(&participant, target, &candidate),
            Command::Unpublish {
                participant,
                track,
                reply,
            } => {
                let owned = self
                    .publications
                    .get(&track)
                    .is_some_and(|p| p.participant == participant);
                if owned {
                    self.remove_publication(&track);
                    let _ = reply.send(Ok(()));
                } else {
                    let _ = reply.send(Err(MediaError::TrackNotFound));
                }
            }
            Command::Subscribe {
                participant,
                track,
                subscribed,
                reply,
            } => {
                let _ = reply.send(self.set_subscribed(&participant, &track, subscribed));
            }
            Command::SetMuted {
                participant,
                track,
                muted,
                reply,
            } => {
                let _ = reply.send(self.set_muted(&participant, &track, muted));
            }
            Command::SetQuality {
                participant,
                track,
                preference,
                reply,
            } => {
                let _ = reply.send(self.set_quality(&participant, &track, preference));
            }
            Command::RestartIce { participant, reply } => {
                let _ = reply.send(self.restart_ice(&participant));
            }
            Command::Stats { reply } => {
                let _ = reply.send(self.stats());
            }
            Command::Forwarding { room, reply } => {
                let _ = reply.send(self.forwarding(&room));
            }
            Command::InjectFault { fault, .. } => self.inject(fault),
            Command::Shutdown => {}
        }
    }

    fn join(
        &mut self,
        room: String,
        participant: String,
        can_publish: bool,
        can_subscribe: bool,
        events: crate::rtc::EventSink,
    ) {
        self.participants.insert(
            participant.clone(),
            Participant {
                room: room.clone(),
                events,
                can_publish,
                can_subscribe,
                publisher: None,
                subscriber: None,
                declared: HashMap::new(),
                published: Vec::new(),
                negotiation: Negotiation::default(),
                pending: None,
                has_channel: false,
                restart_ice: false,
                estimate_bps: None,
                twcc_estimates: false,
                allocator: Allocator::default(),
            },
        );
        let arrived = !self.rooms.contains_key(&room);
        self.rooms
            .entry(room.clone())
            .or_insert_with(|| RoomMedia {
                participants: Vec::new(),
                speakers: ActiveSpeakers::default(),
            })
            .participants
            .push(participant.clone());
        if arrived {
            // Subscribes this participant (auto-subscribe) to each; the loop below finds
            // them subscribed already.
            self.relay_room_arrived(&room);
        }
        if !self.settings.auto_subscribe {
            return;
        }
        let existing: Vec<String> = self
            .publications
            .iter()
            .filter(|(_, p)| p.room == room && p.participant != participant)
            .map(|(sid, _)| sid.clone())
            .collect();
        for track in existing {
            self.subscribe(&participant, &track);
        }
    }

    /// The publisher muted or unmuted `track`; unmuted video is asked for a keyframe at once,
    /// so subscribers see it again without waiting for the next one.
    fn set_muted(&mut self, participant: &str, track: &str, muted: bool) -> Result<(), MediaError> {
        let local = self
            .publications
            .get(track)
            .filter(|p| p.participant == participant)
            .is_some_and(|p| matches!(p.source, Source::Local { .. }));
        if !local {
            return Err(MediaError::TrackNotFound);
        }
        self.mute_publication(track, muted);
        self.relay_muted(track, muted);
        Ok(())
    }

    /// Mutes or unmutes `track`'s Router here.
    pub(super) fn mute_publication(&mut self, track: &str, muted: bool) {
        let Some(publication) = self.publications.get_mut(track) else {
            return;
        };
        if publication.router.set_muted(muted) && !muted {
            let layers = publication.router.keyframe_for_targets(Instant::now());
            self.request_keyframes(track, &layers);
        }
    }

    /// `subscribe` (true) or `unsubscribe` (false) from the client: a subscription that exists
    /// is paused or resumed (its m-line stays); a new one is negotiated.
    fn set_subscribed(
        &mut self,
        participant: &str,
        track: &str,
        subscribed: bool,
    ) -> Result<(), MediaError> {
        let subscriber = self
            .participants
            .get(participant)
            .and_then(|p| p.subscriber);
        let publication = self
            .publications
            .get_mut(track)
            .filter(|p| p.participant != participant)
            .ok_or(MediaError::TrackNotFound)?;
        let existing = subscriber.filter(|s| publication.router.is_subscribed(s));
        match existing {
            Some(s) => {
                publication.router.set_paused(&s, !subscribed);
            }
            None if subscribed => self.subscribe(participant, track),
            None => return Ok(()),
        }
        if subscribed {
            if let Some(publication) = self.publications.get_mut(track) {
                let layers = publication.router.keyframe_for_targets(Instant::now());
                self.request_keyframes(track, &layers);
            }
        }
        Ok(())
    }
}
