//! Header rewriting: sequence numbers and timestamps a subscriber sees as one continuous stream.
//!
//! A subscription's source can change under it: the publisher restarts its encoder (new SSRC or
//! a jump in sequence numbers), or (with simulcast) the subscription switches layers. The
//! subscriber's decoder must see none of that: its sequence numbers go up by one per packet
//! forwarded, and its timestamps keep moving forward at the pace of real time. Packets left out
//! on purpose (frames of a temporal layer the subscriber does not get) leave no gap it would
//! NACK ([`Munger::skip`]). Only the offset arithmetic lives here, with its wrap-around rules.

use std::time::Instant;

/// A jump this large within one SSRC is a restart, not loss: at 1000 packets/s of video it is
/// several seconds of packets, which NACK could never recover anyway.
pub const MAX_SEQ_JUMP: u64 = 3000;

/// What the munger decided for one packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rewrite {
    /// Send with this sequence number and timestamp.
    Send { seq: u64, timestamp: u32 },
    /// Drop: from before the current source began, or a duplicate already forwarded.
    Drop,
}

#[derive(Debug, Default)]
pub struct Munger {
    state: Option<State>,
    /// Treat the next packet as the start of a new source (after a gap we chose to make).
    restart_next: bool,
    /// Input sequence numbers skipped lately, oldest first: a late packet from before a skip
    /// must not take the skip's shift.
    skipped: std::collections::VecDeque<u64>,
}

/// Skips remembered for late packets: more than a jitter buffer reorders.
const SKIPS_REMEMBERED: usize = 256;

#[derive(Debug, Clone, Copy)]
struct State {
    ssrc: u32,
    /// First input sequence number of the current source; anything older is dropped.
    first_in_seq: u64,
    /// Highest input sequence number seen from the current source.
    highest_in_seq: u64,
    /// Added to input sequence numbers (in i128 to allow going down as well as up).
    seq_offset: i128,
    /// Added (wrapping) to input timestamps.
    ts_offset: u32,
    /// Highest output sequence number sent.
    last_out_seq: u64,
    last_out_ts: u32,
    last_out_at: Instant,
}

impl Munger {
    pub fn new() -> Self {
        Self::default()
    }

    /// The next packet starts a new source even if its SSRC and sequence number look
    /// continuous: the packets in between were dropped on purpose (paused, waiting for a
    /// keyframe) and must leave no gap the subscriber would NACK.
    pub fn restart_next(&mut self) {
        self.restart_next = true;
    }

    /// The packet `seq` of `ssrc` is not forwarded on purpose: later packets are numbered as
    /// if it never existed, so the subscriber sees no loss. `same_frame` says the last packet
    /// seen was skipped too, of the same frame: packets missing between the two (lost on the
    /// way in) were of that frame, and are left out with it rather than left as a gap.
    pub fn skip(&mut self, ssrc: u32, seq: u64, same_frame: bool) {
        let Some(state) = &mut self.state else {
            return;
        };
        if self.restart_next || ssrc != state.ssrc || seq <= state.highest_in_seq {
            // A new source renumbers anyway; a late packet's successors are numbered already
            // (it stays a gap).
            return;
        }
        if seq > state.highest_in_seq + MAX_SEQ_JUMP {
            return;
        }
        let from = if same_frame {
            state.highest_in_seq + 1
        } else {
            seq
        };
        state.highest_in_seq = seq;
        for left_out in from..=seq {
            state.seq_offset -= 1;
            if self.skipped.len() == SKIPS_REMEMBERED {
                self.skipped.pop_front();
            }
            self.skipped.push_back(left_out);
        }
    }

    /// The last sequence number sent, if any.
    pub fn last_seq(&self) -> Option<u64> {
        self.state.map(|s| s.last_out_seq)
    }

    /// Rewrites one packet of `ssrc`. `clock_rate` converts the wall time since the last
    /// packet sent into timestamp ticks when the source changes.
    pub fn rewrite(
        &mut self,
        ssrc: u32,
        seq: u64,
        timestamp: u32,
        clock_rate: u32,
        now: Instant,
    ) -> Rewrite {
        let Some(state) = &mut self.state else {
            // First packet ever: keep the source's 16-bit sequence number and timestamp, but
            // start the extended count in the first rollover: SRTP's rollover counter is not
            // signaled, so a fresh subscriber must begin at ROC 0.
            let out_seq = seq & 0xffff;
            self.state = Some(State {
                ssrc,
                first_in_seq: seq,
                highest_in_seq: seq,
                seq_offset: i128::from(out_seq) - i128::from(seq),
                ts_offset: 0,
                last_out_seq: out_seq,
                last_out_ts: timestamp,
                last_out_at: now,
            });
            return Rewrite::Send {
                seq: out_seq,
                timestamp,
            };
        };
        let restarted = std::mem::take(&mut self.restart_next)
            || ssrc != state.ssrc
            || seq > state.highest_in_seq + MAX_SEQ_JUMP
            || seq + MAX_SEQ_JUMP < state.first_in_seq;
        if restarted {
            // New source: continue right after what the subscriber last got. The timestamp
            // moves on by the wall time elapsed (at least one tick) so the decoder neither
            // sees time go back nor a frame with the previous one's timestamp.
            let elapsed = now.saturating_duration_since(state.last_out_at);
            let ticks = (elapsed.as_secs_f64() * f64::from(clock_rate)) as u64;
            let ticks = ticks.clamp(1, u64::from(u32::MAX / 2)) as u32;
            let out_seq = state.last_out_seq + 1;
            let out_ts = state.last_out_ts.wrapping_add(ticks);
            self.skipped.clear();
            *state = State {
                ssrc,
                first_in_seq: seq,
                highest_in_seq: seq,
                seq_offset: i128::from(out_seq) - i128::from(seq),
                ts_offset: out_ts.wrapping_sub(timestamp),
                last_out_seq: out_seq,
                last_out_ts: out_ts,
                last_out_at: now,
            };
            return Rewrite::Send {
                seq: out_seq,
                timestamp: out_ts,
            };
        }
        if seq < state.first_in_seq {
            return Rewrite::Drop;
        }
        // A late packet's number leaves out only the skips that came before it.
        let undo = if seq < state.highest_in_seq {
            self.skipped.iter().filter(|&&s| s > seq).count() as i128
        } else {
            0
        };
        let out_seq = (i128::from(seq) + state.seq_offset + undo) as u64;
        let out_ts = timestamp.wrapping_add(state.ts_offset);
        if seq > state.highest_in_seq {
            state.highest_in_seq = seq;
        }
        if out_seq > state.last_out_seq {
            state.last_out_seq = out_seq;
            state.last_out_ts = out_ts;
            state.last_out_at = now;
        }
        Rewrite::Send {
            seq: out_seq,
            timestamp: out_ts,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn send(r: Rewrite) -> (u64, u32) {
        match r {
            Rewrite::Send { seq, timestamp } => (seq, timestamp),
            Rewrite::Drop => panic!("dropped"),
        }
    }

    #[test]
    fn a_single_source_passes_through_unchanged() {
        let mut m = Munger::new();
        let t = Instant::now();
        for i in 0..10u64 {
            let out = send(m.rewrite(1, 100 + i, 9000 * i as u32, 90_000, t));
            assert_eq!(out, (100 + i, 9000 * i as u32));
        }
    }

    #[test]
    fn a_new_ssrc_continues_sequence_and_time() {
        let mut m = Munger::new();
        let t = Instant::now();
        send(m.rewrite(1, 500, 1_000, 90_000, t));
        let (s, ts) = send(m.rewrite(1, 501, 4_000, 90_000, t));
        assert_eq!((s, ts), (501, 4_000));
        // 100 ms later a restarted publisher starts from scratch with a new SSRC.
        let later = t + Duration::from_millis(100);
        let (s2, ts2) = send(m.rewrite(2, 7, 123, 90_000, later));
        assert_eq!(s2, 502);
        assert_eq!(ts2, 4_000 + 9_000);
        let (s3, ts3) = send(m.rewrite(2, 8, 123 + 3000, 90_000, later));
        assert_eq!((s3, ts3), (503, 4_000 + 9_000 + 3000));
    }

    #[test]
    fn a_big_jump_in_one_ssrc_is_a_restart() {
        let mut m = Munger::new();
        let t = Instant::now();
        send(m.rewrite(1, 10, 0, 48_000, t));
        let (s, _) = send(m.rewrite(1, 10 + MAX_SEQ_JUMP * 10, 5, 48_000, t));
        assert_eq!(s, 11);
    }

    #[test]
    fn a_late_joiner_starts_in_the_first_rollover() {
        let mut m = Munger::new();
        let t = Instant::now();
        let (s, _) = send(m.rewrite(1, 3 * 65_536 + 65_535, 0, 90_000, t));
        assert_eq!(s, 65_535);
        let (s, _) = send(m.rewrite(1, 4 * 65_536, 0, 90_000, t));
        assert_eq!(s, 65_536);
    }

    #[test]
    fn timestamps_wrap_at_32_bits() {
        let mut m = Munger::new();
        let t = Instant::now();
        send(m.rewrite(1, 1, u32::MAX - 10, 90_000, t));
        let (_, ts) = send(m.rewrite(2, 1000, 50, 90_000, t + Duration::from_millis(1)));
        assert_eq!(ts, (u32::MAX - 10).wrapping_add(90));
        let (_, ts) = send(m.rewrite(2, 1001, 60, 90_000, t));
        assert_eq!(ts, (u32::MAX - 10).wrapping_add(100));
    }

    #[test]
    fn skipped_packets_leave_no_gap_and_late_ones_keep_their_place() {
        let mut m = Munger::new();
        let t = Instant::now();
        assert_eq!(send(m.rewrite(1, 100, 0, 90_000, t)).0, 100);
        m.skip(1, 101, false);
        m.skip(1, 102, true);
        assert_eq!(send(m.rewrite(1, 103, 0, 90_000, t)).0, 101);
        // 104 is late: it will come after 106, and keeps the number between 103's and 106's.
        m.skip(1, 105, false);
        assert_eq!(send(m.rewrite(1, 106, 0, 90_000, t)).0, 103);
        assert_eq!(send(m.rewrite(1, 104, 0, 90_000, t)).0, 102);
        assert_eq!(send(m.rewrite(1, 107, 0, 90_000, t)).0, 104);
        // A late skip changes nothing.
        m.skip(1, 99, false);
        assert_eq!(send(m.rewrite(1, 108, 0, 90_000, t)).0, 105);
    }

    #[test]
    fn a_packet_lost_inside_a_skipped_frame_leaves_no_gap() {
        let mut m = Munger::new();
        let t = Instant::now();
        assert_eq!(send(m.rewrite(1, 100, 0, 90_000, t)).0, 100);
        // A skipped frame of 101..=104; 102 never arrives.
        m.skip(1, 101, false);
        m.skip(1, 103, true);
        m.skip(1, 104, true);
        assert_eq!(send(m.rewrite(1, 105, 0, 90_000, t)).0, 101);
        // Its retransmission, late, changes nothing.
        m.skip(1, 102, false);
        assert_eq!(send(m.rewrite(1, 106, 0, 90_000, t)).0, 102);
        // Where a skipped frame begins after a gap, the gap may be the forwarded frame's
        // tail: it stays, for NACK to fill.
        m.skip(1, 108, false);
        assert_eq!(send(m.rewrite(1, 109, 0, 90_000, t)).0, 104);
        assert_eq!(send(m.rewrite(1, 107, 0, 90_000, t)).0, 103);
    }

    #[test]
    fn packets_from_before_a_switch_are_dropped() {
        let mut m = Munger::new();
        let t = Instant::now();
        send(m.rewrite(1, 100, 0, 90_000, t));
        send(m.rewrite(2, 50, 0, 90_000, t));
        assert_eq!(m.rewrite(2, 49, 0, 90_000, t), Rewrite::Drop);
        // Reordered packets of the current source keep their relative order.
        send(m.rewrite(2, 52, 0, 90_000, t));
        assert_eq!(send(m.rewrite(2, 51, 0, 90_000, t)).0, 102);
    }
}
