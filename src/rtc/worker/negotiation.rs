//! The subscriber connection's offer/answer state machine: which tracks its m-lines carry.
//!
//! The server offers whenever the set of tracks a participant receives changes; only one offer
//! may be in flight (the client answers them in order, and str0m keeps one pending offer).
//! A track goes `ToAdd` → `Offered` → `Open` (packets flow) → `ToRemove` → `Removing` → gone.
//! Changes made while an offer is in flight wait, and a new offer follows the answer.
//!
//! Generic over the m-line id `M`, so it is tested without a WebRTC stack; the worker passes
//! str0m's `Mid` and does the SDP work in the [`MediaLines`] it hands to [`Negotiation::offer`].

use std::collections::HashMap;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TrackState<M> {
    /// To be added in the next offer.
    ToAdd,
    /// In an offer not yet answered.
    Offered(M),
    /// Negotiated; packets flow.
    Open(M),
    /// To be removed in the next offer.
    ToRemove(M),
    /// Removal offered, not yet answered.
    Removing(M),
}

/// The SDP side of an offer: puts a track on a new m-line, or takes an m-line away.
pub trait MediaLines<M> {
    fn add(&mut self, track: &str) -> M;
    fn stop(&mut self, mid: M);
}

/// The tracks of one subscriber connection, by track sid, and where each stands.
#[derive(Debug)]
pub struct Negotiation<M> {
    tracks: HashMap<String, TrackState<M>>,
    /// An offer is waiting for the client's answer.
    in_flight: bool,
    /// Something changed while an offer was in flight: offer again after the answer.
    offer_again: bool,
}

impl<M> Default for Negotiation<M> {
    fn default() -> Self {
        Self {
            tracks: HashMap::new(),
            in_flight: false,
            offer_again: false,
        }
    }
}

impl<M: Copy + Eq> Negotiation<M> {
    /// The track is to be received. False if it already is (or is on its way).
    pub fn add(&mut self, track: &str) -> bool {
        if self.tracks.contains_key(track) {
            return false;
        }
        self.tracks.insert(track.to_string(), TrackState::ToAdd);
        true
    }

    /// The track is no longer to be received. False if it was not.
    pub fn remove(&mut self, track: &str) -> bool {
        let Some(state) = self.tracks.get_mut(track) else {
            return false;
        };
        match *state {
            TrackState::ToAdd => {
                // Never offered: nothing to take back.
                self.tracks.remove(track);
            }
            TrackState::Offered(mid) | TrackState::Open(mid) => *state = TrackState::ToRemove(mid),
            TrackState::ToRemove(_) | TrackState::Removing(_) => return false,
        }
        true
    }

    /// Every track the connection carries or will carry, in no order.
    pub fn tracks(&self) -> impl Iterator<Item = &str> {
        self.tracks.keys().map(String::as_str)
    }

    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.tracks.is_empty()
    }

    /// The negotiated m-line of `track`, once the client answered for it.
    pub fn open_mid(&self, track: &str) -> Option<M> {
        match self.tracks.get(track)? {
            TrackState::Open(mid) => Some(*mid),
            _ => None,
        }
    }

    /// The track an open m-line carries.
    pub fn track_at(&self, mid: M) -> Option<&str> {
        self.tracks
            .iter()
            .find(|(_, s)| **s == TrackState::Open(mid))
            .map(|(t, _)| t.as_str())
    }

    /// The tracks in the offer made last, with their m-lines: what the client is told with it.
    pub fn offered(&self) -> impl Iterator<Item = (&str, M)> {
        self.tracks.iter().filter_map(|(t, s)| match s {
            TrackState::Offered(mid) | TrackState::Open(mid) => Some((t.as_str(), *mid)),
            _ => None,
        })
    }

    /// True if an offer is in flight: no new one may go out, and another is due after the
    /// answer.
    pub fn busy(&mut self) -> bool {
        if self.in_flight {
            self.offer_again = true;
        }
        self.in_flight
    }

    /// Writes what changed since the last offer into `lines`: new tracks on new m-lines,
    /// removed ones stopped. The caller then makes the offer and reports it with [`sent`].
    ///
    /// [`sent`]: Negotiation::sent
    pub fn offer(&mut self, lines: &mut impl MediaLines<M>) {
        for (track, state) in self.tracks.iter_mut() {
            match *state {
                TrackState::ToAdd => *state = TrackState::Offered(lines.add(track)),
                TrackState::ToRemove(mid) => {
                    lines.stop(mid);
                    *state = TrackState::Removing(mid);
                }
                _ => {}
            }
        }
        self.offer_again = false;
    }

    /// The offer went out and waits for its answer (`true`), or had nothing to say.
    pub fn sent(&mut self, made: bool) {
        self.in_flight = made;
    }

    /// Whether an offer waits for its answer.
    #[cfg(test)]
    pub fn in_flight(&self) -> bool {
        self.in_flight
    }

    /// The client answered the offer in flight: offered tracks open, removed ones go. Returns
    /// the tracks that opened, and whether another offer is due.
    pub fn answered(&mut self) -> (Vec<(String, M)>, bool) {
        self.in_flight = false;
        let mut opened = Vec::new();
        self.tracks.retain(|track, state| match *state {
            TrackState::Offered(mid) => {
                *state = TrackState::Open(mid);
                opened.push((track.clone(), mid));
                true
            }
            TrackState::Removing(_) => false,
            _ => true,
        });
        (opened, self.offer_again)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fake SDP side: hands out m-line ids and records what was stopped.
    #[derive(Default)]
    struct Sdp {
        next: u32,
        stopped: Vec<u32>,
    }

    impl MediaLines<u32> for Sdp {
        fn add(&mut self, _track: &str) -> u32 {
            self.next += 1;
            self.next
        }
        fn stop(&mut self, mid: u32) {
            self.stopped.push(mid);
        }
    }

    /// Offers if none is in flight; true if an offer went out.
    fn offer(n: &mut Negotiation<u32>, sdp: &mut Sdp) -> bool {
        if n.busy() {
            return false;
        }
        let before = (sdp.next, sdp.stopped.len());
        n.offer(sdp);
        let made = before != (sdp.next, sdp.stopped.len());
        n.sent(made);
        made
    }

    fn sorted<'a>(it: impl Iterator<Item = (&'a str, u32)>) -> Vec<(String, u32)> {
        let mut v: Vec<(String, u32)> = it.map(|(t, m)| (t.to_string(), m)).collect();
        v.sort();
        v
    }

    #[test]
    fn a_track_opens_when_its_offer_is_answered() {
        let mut n = Negotiation::default();
        let mut sdp = Sdp::default();
        assert!(n.add("a"));
        assert!(!n.add("a"), "added once");
        assert!(offer(&mut n, &mut sdp));
        assert_eq!(sorted(n.offered()), vec![("a".into(), 1)]);
        assert_eq!(n.open_mid("a"), None, "not before the answer");
        let (opened, again) = n.answered();
        assert_eq!(opened, vec![("a".to_string(), 1)]);
        assert!(!again);
        assert_eq!(n.open_mid("a"), Some(1));
        assert_eq!(n.track_at(1), Some("a"));
    }

    #[test]
    fn changes_during_an_offer_wait_for_its_answer() {
        let mut n = Negotiation::default();
        let mut sdp = Sdp::default();
        n.add("a");
        assert!(offer(&mut n, &mut sdp));
        n.add("b");
        assert!(!offer(&mut n, &mut sdp), "one offer in flight");
        assert_eq!(sorted(n.offered()), vec![("a".into(), 1)]);
        let (opened, again) = n.answered();
        assert_eq!(opened.len(), 1);
        assert!(again, "b still needs an offer");
        assert!(offer(&mut n, &mut sdp));
        let (opened, again) = n.answered();
        assert_eq!(opened, vec![("b".to_string(), 2)]);
        assert!(!again);
    }

    #[test]
    fn removal_stops_the_m_line_and_forgets_the_track_on_answer() {
        let mut n = Negotiation::default();
        let mut sdp = Sdp::default();
        n.add("a");
        offer(&mut n, &mut sdp);
        n.answered();
        assert!(n.remove("a"));
        assert!(!n.remove("a"), "removed once");
        assert_eq!(n.open_mid("a"), None);
        assert!(offer(&mut n, &mut sdp));
        assert_eq!(sdp.stopped, vec![1]);
        n.answered();
        assert!(n.is_empty());
        // And it may come back, on a new m-line.
        n.add("a");
        offer(&mut n, &mut sdp);
        n.answered();
        assert_eq!(n.open_mid("a"), Some(2));
    }

    #[test]
    fn a_track_removed_before_it_was_offered_leaves_no_trace() {
        let mut n = Negotiation::default();
        let mut sdp = Sdp::default();
        n.add("a");
        assert!(n.remove("a"));
        assert!(n.is_empty());
        assert!(!offer(&mut n, &mut sdp), "nothing to offer");
        assert!(!n.in_flight());
    }

    #[test]
    fn a_track_removed_while_offered_is_stopped_in_the_next_offer() {
        let mut n = Negotiation::default();
        let mut sdp = Sdp::default();
        n.add("a");
        offer(&mut n, &mut sdp);
        n.remove("a");
        assert!(!offer(&mut n, &mut sdp));
        let (opened, again) = n.answered();
        assert!(opened.is_empty(), "it was taken back before opening");
        assert!(again);
        offer(&mut n, &mut sdp);
        assert_eq!(sdp.stopped, vec![1]);
        n.answered();
        assert!(n.is_empty());
    }
}
