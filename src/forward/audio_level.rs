//! Active speakers from RFC 6464 audio levels, without decoding any audio.
//!
//! Each audio packet may carry the publisher's measured level (0 = loudest, 127 = silence, in
//! -dBov). A speaker's loudness is smoothed over recent packets; the room hears who is speaking,
//! loudest first, at most once per [`ACTIVE_SPEAKER_INTERVAL`] and only when the list changed.

use std::collections::HashMap;
use std::hash::Hash;
use std::time::{Duration, Instant};

/// At most one `active_speakers` event per room in this interval: UIs highlight the speaker,
/// and faster changes only make the highlight flicker.
pub const ACTIVE_SPEAKER_INTERVAL: Duration = Duration::from_millis(300);
/// Louder than -60 dBov on average counts as speaking: room noise and comfort noise sit below.
pub const SPEAKING_LEVEL: f32 = 60.0;
/// A speaker with no audio packet this long (muted, DTX silence, gone) is not speaking.
pub const SPEAKER_TIMEOUT: Duration = Duration::from_millis(1000);
/// Weight of each new packet's level in the smoothed level: about 20 packets (400 ms of Opus).
const SMOOTHING: f32 = 0.05;

#[derive(Debug)]
struct Speaker {
    /// Smoothed level in -dBov (lower is louder).
    level: f32,
    last_packet: Instant,
}

/// Tracks the speakers of one room.
#[derive(Debug)]
pub struct ActiveSpeakers<K> {
    speakers: HashMap<K, Speaker>,
    last_sent: Option<Instant>,
    last_list: Vec<K>,
}

impl<K: Clone + Eq + Hash> Default for ActiveSpeakers<K> {
    fn default() -> Self {
        Self {
            speakers: HashMap::new(),
            last_sent: None,
            last_list: Vec::new(),
        }
    }
}

impl<K: Clone + Eq + Hash> ActiveSpeakers<K> {
    /// Records one audio packet's level from `speaker`.
    pub fn observe(&mut self, speaker: K, level: i8, now: Instant) {
        let level = f32::from(level.clamp(0, 127));
        self.speakers
            .entry(speaker)
            .and_modify(|s| {
                s.level += (level - s.level) * SMOOTHING;
                s.last_packet = now;
            })
            .or_insert(Speaker {
                level,
                last_packet: now,
            });
    }

    /// Forgets a speaker (left, unpublished).
    pub fn remove(&mut self, speaker: &K) {
        self.speakers.remove(speaker);
    }

    /// The speakers to announce, loudest first with their level (0 loudest .. 127), if the
    /// interval has passed and the list changed since the last announcement.
    pub fn poll(&mut self, now: Instant) -> Option<Vec<(K, u8)>> {
        if self
            .last_sent
            .is_some_and(|t| now.saturating_duration_since(t) < ACTIVE_SPEAKER_INTERVAL)
        {
            return None;
        }
        self.speakers
            .retain(|_, s| now.saturating_duration_since(s.last_packet) < SPEAKER_TIMEOUT * 10);
        let mut speaking: Vec<(K, f32)> = self
            .speakers
            .iter()
            .filter(|(_, s)| {
                s.level <= SPEAKING_LEVEL
                    && now.saturating_duration_since(s.last_packet) < SPEAKER_TIMEOUT
            })
            .map(|(k, s)| (k.clone(), s.level))
            .collect();
        speaking.sort_by(|a, b| a.1.total_cmp(&b.1));
        let list: Vec<K> = speaking.iter().map(|(k, _)| k.clone()).collect();
        if list == self.last_list {
            return None;
        }
        self.last_list = list;
        self.last_sent = Some(now);
        Some(
            speaking
                .into_iter()
                .map(|(k, l)| (k, l.round() as u8))
                .collect(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loudest_first_at_most_every_interval() {
        let t = Instant::now();
        let mut a = ActiveSpeakers::default();
        for i in 0..10 {
            let now = t + Duration::from_millis(20 * i);
            a.observe("quiet", 40, now);
            a.observe("loud", 10, now);
            a.observe("silent", 127, now);
        }
        let now = t + Duration::from_millis(200);
        let list = a.poll(now).expect("first announcement");
        let names: Vec<_> = list.iter().map(|(k, _)| *k).collect();
        assert_eq!(names, vec!["loud", "quiet"]);
        // Unchanged list: nothing to say.
        assert!(a.poll(now + Duration::from_millis(400)).is_none());
        // Loud goes quiet (no packets): announced, but not before the interval.
        a.observe("quiet", 40, now + Duration::from_millis(1500));
        assert!(a.poll(now + Duration::from_millis(100)).is_none());
        let list = a.poll(now + Duration::from_millis(1600)).expect("change");
        assert_eq!(list.len(), 1);
        assert_eq!(list[0].0, "quiet");
    }
}
