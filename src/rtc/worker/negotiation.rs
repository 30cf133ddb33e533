//! The subscriber connection's offer/answer state machine: which tracks its m-lines carry.
//!
//! The server offers whenever the set of tracks a participant receives changes; only one offer
//! may be in flight (the client answers them in order, and str0m keeps one pending offer).
//! A track goes `ToAdd` → `Offered` → `Open` (packets flow) → `ToRemove` → `Removing` → gone.
//! Changes made while an offer is in flight wait, and a new offer follows the answer.
//!
//! A removed track's m-line goes inactive and, once the client answered that, is free: the
//! next track of its media kind takes it instead of a new m-line. A long meeting's SDP so has
//! as many m-lines as tracks were ever received at once, not as tracks ever received.
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

/// The SDP side of an offer: puts a track on an m-line, or takes it off.
pub trait MediaLines<M> {
    /// Puts `track` on a new m-line.
    fn add(&mut self, track: &str) -> M;
    /// Puts `track` on the free m-line `mid` if that line's media kind suits it.
    fn reuse(&mut self, track: &str, mid: M) -> bool;
    /// Takes the track off `mid`: the line stays, inactive.
    fn deactivate(&mut self, mid: M);
}

/// What the client's answer settled.
#[derive(Debug, PartialEq, Eq)]
pub struct Answered<M> {
    /// Tracks whose m-line is negotiated now: packets may flow.
    pub opened: Vec<(String, M)>,
    /// m-lines whose track is gone: free for a later track.
    pub freed: Vec<M>,
    /// Something changed while the offer was in flight: another offer is due.
    pub offer_again: bool,
}

/// The tracks of one subscriber connection, by track sid, and where each stands.
#[derive(Debug)]
pub struct Negotiation<M> {
    tracks: HashMap<String, TrackState<M>>,
    /// Inactive m-lines, oldest first, for the next tracks to take.
    free: Vec<M>,
    /// An offer is waiting for the client's answer.
    in_flight: bool,
    /// Something changed while an offer was in flight: offer again after the answer.
    offer_again: bool,
}

impl<M> Default for Negotiation<M> {
    fn default() -> Self {
        Self {
            tracks: HashMap::new(),
            free: Vec::new(),
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

    /// The inactive m-lines free for new tracks.
    pub fn free(&self) -> &[M] {
        &self.free
    }

    /// Writes what changed since the last offer into `lines`: new tracks on free m-lines (or
    /// new ones), removed ones deactivated. The caller then makes the offer and reports it
    /// with [`sent`].
    ///
    /// [`sent`]: Negotiation::sent
    pub fn offer(&mut self, lines: &mut impl MediaLines<M>) {
        // Removals first, adds in a stable order: offers are reproducible.
        let mut adds = Vec::new();
        for (track, state) in self.tracks.iter_mut() {
            match *state {
                TrackState::ToAdd => adds.push(track.clone()),
                TrackState::ToRemove(mid) => {
                    lines.deactivate(mid);
                    *state = TrackState::Removing(mid);
                }
                _ => {}
            }
        }
        adds.sort();
        for track in adds {
            let reused = self
                .free
                .iter()
                .position(|&mid| lines.reuse(&track, mid))
                .map(|i| self.free.remove(i));
            let mid = reused.unwrap_or_else(|| lines.add(&track));
            self.tracks.insert(track, TrackState::Offered(mid));
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

    /// The client answered the offer in flight: offered tracks open, removed ones go and
    /// free their m-lines.
    pub fn answered(&mut self) -> Answered<M> {
        self.in_flight = false;
        let mut opened = Vec::new();
        let mut freed = Vec::new();
        self.tracks.retain(|track, state| match *state {
            TrackState::Offered(mid) => {
                *state = TrackState::Open(mid);
                opened.push((track.clone(), mid));
                true
            }
            TrackState::Removing(mid) => {
                freed.push(mid);
                false
            }
            _ => true,
        });
        self.free.extend_from_slice(&freed);
        Answered {
            opened,
            freed,
            offer_again: self.offer_again,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fake SDP side: m-lines with the media kind of their first track (the track name's
    /// first letter: "a…" audio, "v…" video), and what was done to them.
    #[derive(Default)]
    struct Sdp {
        kinds: Vec<char>,
        stopped: Vec<u32>,
        reused: Vec<u32>,
    }

    impl MediaLines<u32> for Sdp {
        fn add(&mut self, track: &str) -> u32 {
            self.kinds.push(track.chars().next().unwrap_or('v'));
            self.kinds.len() as u32
        }
        fn reuse(&mut self, track: &str, mid: u32) -> bool {
            let suits = self.kinds[mid as usize - 1] == track.chars().next().unwrap_or('v');
            if suits {
                self.reused.push(mid);
            }
            suits
        }
        fn deactivate(&mut self, mid: u32) {
            self.stopped.push(mid);
        }
    }

    /// Offers if none is in flight; true if an offer went out.
    fn offer(n: &mut Negotiation<u32>, sdp: &mut Sdp) -> bool {
        if n.busy() {
            return false;
        }
        let before = (sdp.kinds.len(), sdp.stopped.len(), sdp.reused.len());
        n.offer(sdp);
        let made = before != (sdp.kinds.len(), sdp.stopped.len(), sdp.reused.len());
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
        let answered = n.answered();
        assert_eq!(answered.opened, vec![("a".to_string(), 1)]);
        assert!(!answered.offer_again);
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
        let answered = n.answered();
        assert_eq!(answered.opened.len(), 1);
        assert!(answered.offer_again, "b still needs an offer");
        assert!(offer(&mut n, &mut sdp));
        let answered = n.answered();
        assert_eq!(answered.opened, vec![("b".to_string(), 2)]);
        assert!(!answered.offer_again);
    }

    #[test]
    fn removal_deactivates_the_m_line_and_frees_it_on_answer() {
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
        assert!(n.free().is_empty(), "not free before the client agreed");
        let answered = n.answered();
        assert_eq!(answered.freed, vec![1]);
        assert!(n.is_empty());
        // And it may come back, on its old m-line.
        n.add("a");
        offer(&mut n, &mut sdp);
        n.answered();
        assert_eq!(n.open_mid("a"), Some(1));
        assert_eq!(sdp.kinds.len(), 1, "no new m-line");
    }

    #[test]
    fn a_new_track_takes_a_free_m_line_of_its_kind() {
        let mut n = Negotiation::default();
        let mut sdp = Sdp::default();
        n.add("a1");
        n.add("v1");
        offer(&mut n, &mut sdp);
        n.answered();
        n.remove("a1");
        n.remove("v1");
        offer(&mut n, &mut sdp);
        n.answered();
        n.add("v2");
        offer(&mut n, &mut sdp);
        let answered = n.answered();
        assert_eq!(
            answered.opened,
            vec![("v2".to_string(), 2)],
            "the video line"
        );
        n.add("v3");
        offer(&mut n, &mut sdp);
        n.answered();
        assert_eq!(
            n.open_mid("v3"),
            Some(3),
            "the free audio line does not suit video"
        );
        assert_eq!(n.free(), &[1]);
    }

    #[test]
    fn a_line_freed_in_the_same_offer_is_not_taken_before_the_answer() {
        let mut n = Negotiation::default();
        let mut sdp = Sdp::default();
        n.add("v1");
        offer(&mut n, &mut sdp);
        n.answered();
        // One offer takes v1 away and brings v2: the client still shows v1 on line 1 until
        // it answers, so v2 needs a line of its own.
        n.remove("v1");
        n.add("v2");
        offer(&mut n, &mut sdp);
        n.answered();
        assert_eq!(n.open_mid("v2"), Some(2));
    }

    #[test]
    fn tracks_coming_and_going_need_no_more_lines_than_were_ever_live_at_once() {
        let mut n = Negotiation::default();
        let mut sdp = Sdp::default();
        // 20 video tracks, each live alongside the next (at most 2 at once), plus audio.
        n.add("a0");
        offer(&mut n, &mut sdp);
        n.answered();
        for i in 0..20 {
            n.add(&format!("v{i}"));
            offer(&mut n, &mut sdp);
            n.answered();
            if i > 0 {
                n.remove(&format!("v{}", i - 1));
                offer(&mut n, &mut sdp);
                n.answered();
            }
        }
        assert_eq!(
            sdp.kinds.len(),
            3,
            "audio + two video lines: {:?}",
            sdp.kinds
        );
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
        let answered = n.answered();
        assert!(
            answered.opened.is_empty(),
            "it was taken back before opening"
        );
        assert!(answered.offer_again);
        offer(&mut n, &mut sdp);
        assert_eq!(sdp.stopped, vec![1]);
        n.answered();
        assert!(n.is_empty());
    }
}
