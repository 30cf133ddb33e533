//! VP8 payload descriptor (RFC 7741 §4.2): the fields a forwarder reads and rewrites.
//!
//! A subscriber switching between simulcast layers moves between independent encoders, each
//! with its own picture ID and TL0PICIDX sequence. The receiver's jitter buffer uses both to find
//! frame boundaries and references; a jump backwards looks like a stream restart or reordering.
//! So the forwarder rewrites them to one continuous sequence ([`PictureIdMunger`]), and the
//! keyframe's header tells the layer's resolution without decoding anything. Frames of a
//! temporal layer the subscriber does not get leave no gap either ([`PictureIdMunger::skip`]).

/// Picture IDs are 15 bits on the wire in their long form.
const PICTURE_ID_MODULO: u16 = 1 << 15;

/// What the forwarding core reads from one VP8 payload descriptor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Vp8Info {
    /// PictureID and whether it is the 15-bit form.
    pub picture_id: Option<(u16, bool)>,
    pub tl0_pic_idx: Option<u8>,
    /// Temporal layer index (TID), when the descriptor carries one.
    pub tid: Option<u8>,
    /// Layer sync (Y bit): this frame depends only on the base temporal layer, so forwarding
    /// of its temporal layer may start here.
    pub layer_sync: bool,
    /// Start of a VP8 frame (S bit with partition 0).
    pub frame_start: bool,
    /// The frame this packet starts is a keyframe (P bit 0 in the VP8 frame header).
    pub keyframe: bool,
    /// Width and height from a keyframe's header, on the packet that starts a keyframe.
    pub keyframe_size: Option<(u16, u16)>,
}

impl Vp8Info {
    /// Parses the payload descriptor; `None` for a payload too short to hold one.
    pub fn parse(p: &[u8]) -> Option<Self> {
        let first = *p.first()?;
        let mut info = Vp8Info {
            frame_start: first & 0x10 != 0 && first & 0x07 == 0,
            ..Default::default()
        };
        let mut i = 1;
        if first & 0x80 != 0 {
            let x = *p.get(i)?;
            i += 1;
            if x & 0x80 != 0 {
                let b = *p.get(i)?;
                if b & 0x80 != 0 {
                    let low = *p.get(i + 1)?;
                    info.picture_id = Some(((u16::from(b & 0x7f) << 8) | u16::from(low), true));
                    i += 2;
                } else {
                    info.picture_id = Some((u16::from(b), false));
                    i += 1;
                }
            }
            if x & 0x40 != 0 {
                info.tl0_pic_idx = Some(*p.get(i)?);
                i += 1;
            }
            if x & 0x30 != 0 {
                let b = *p.get(i)?;
                if x & 0x20 != 0 {
                    info.tid = Some(b >> 6);
                    info.layer_sync = b & 0x20 != 0;
                }
                i += 1;
            }
        }
        if info.frame_start {
            // VP8 frame header (RFC 6386 §9.1): P bit 0 = keyframe; a keyframe's 3-byte tag is
            // followed by the start code 9d 01 2a and 14-bit width and height.
            let h = p.get(i..)?;
            info.keyframe = h.first().is_some_and(|b| b & 0x01 == 0);
            if h.len() >= 10 && h[0] & 0x01 == 0 && h[3..6] == [0x9d, 0x01, 0x2a] {
                let width = u16::from_le_bytes([h[6], h[7]]) & 0x3fff;
                let height = u16::from_le_bytes([h[8], h[9]]) & 0x3fff;
                info.keyframe_size = Some((width, height));
            }
        }
        Some(info)
    }
}

/// Rewritten descriptor fields for one outgoing packet (only those the input had).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Vp8Rewrite {
    pub picture_id: Option<u16>,
    pub tl0_pic_idx: Option<u8>,
}

/// Keeps one subscriber's picture IDs and TL0PICIDX continuous across source switches.
#[derive(Debug, Default)]
pub struct PictureIdMunger {
    /// Added (mod 2^15) to input picture IDs.
    pid_offset: u16,
    /// Added (mod 256) to input TL0PICIDX.
    tl0_offset: u8,
    last_pid: Option<u16>,
    last_tl0: Option<u8>,
    /// The next packet starts a new source.
    switching: bool,
    /// Input picture IDs of frames skipped lately, oldest first: a late packet of a frame
    /// from before a skip must not take the skip's shift.
    skipped: std::collections::VecDeque<u16>,
    /// Highest input picture ID seen from the current source.
    highest_in: Option<u16>,
}

/// Skips remembered for late packets: far more frames than a jitter buffer reorders.
const SKIPS_REMEMBERED: usize = 64;

impl PictureIdMunger {
    /// The next packet (a keyframe) comes from a new source: continue its numbering after
    /// what the subscriber last saw.
    pub fn switch_source(&mut self) {
        self.switching = true;
        self.skipped.clear();
        self.highest_in = None;
    }

    /// The frame with input picture ID `pid` is not forwarded (a temporal layer the
    /// subscriber does not get): later frames are numbered as if it never existed.
    pub fn skip(&mut self, picture_id: Option<(u16, bool)>) {
        // Only the 15-bit form is renumbered (what browsers send); a 7-bit one keeps its gap.
        let Some((pid, true)) = picture_id else {
            return;
        };
        if self.switching || self.highest_in.is_some_and(|h| !is_newer_pid(h, pid)) {
            // A late frame: those after it are numbered already; it stays a gap.
            return;
        }
        self.highest_in = Some(pid);
        self.pid_offset = self.pid_offset.wrapping_sub(1) % PICTURE_ID_MODULO;
        if self.skipped.len() == SKIPS_REMEMBERED {
            self.skipped.pop_front();
        }
        self.skipped.push_back(pid);
    }

    pub fn rewrite(&mut self, info: &Vp8Info) -> Vp8Rewrite {
        if std::mem::take(&mut self.switching) {
            if let (Some((pid, _)), Some(last)) = (info.picture_id, self.last_pid) {
                let next = (last + 1) % PICTURE_ID_MODULO;
                self.pid_offset = next.wrapping_sub(pid) % PICTURE_ID_MODULO;
            }
            if let (Some(tl0), Some(last)) = (info.tl0_pic_idx, self.last_tl0) {
                self.tl0_offset = last.wrapping_add(1).wrapping_sub(tl0);
            }
        }
        let picture_id = info.picture_id.map(|(pid, long)| {
            let late = match self.highest_in {
                Some(h) if long && !is_newer_pid(h, pid) => true,
                _ => {
                    if long {
                        self.highest_in = Some(pid);
                    }
                    false
                }
            };
            // A late frame's number leaves out only the skips that came before it.
            let undo = if late {
                self.skipped
                    .iter()
                    .filter(|&&s| is_newer_pid(pid, s))
                    .count() as u16
            } else {
                0
            };
            let out = pid.wrapping_add(self.pid_offset).wrapping_add(undo) % PICTURE_ID_MODULO;
            // Keep the last sent in the long form; a 7-bit descriptor carries the low bits.
            self.last_pid = Some(match self.last_pid {
                Some(prev) if is_newer_pid(prev, out) || !long => out,
                Some(prev) => prev,
                None => out,
            });
            if long {
                out
            } else {
                out & 0x7f
            }
        });
        let tl0_pic_idx = info.tl0_pic_idx.map(|tl0| {
            let out = tl0.wrapping_add(self.tl0_offset);
            self.last_tl0 = Some(match self.last_tl0 {
                Some(prev) if out.wrapping_sub(prev) >= 128 => prev,
                _ => out,
            });
            out
        });
        Vp8Rewrite {
            picture_id,
            tl0_pic_idx,
        }
    }

    /// True when nothing has been shifted yet: outgoing fields equal incoming ones.
    pub fn is_identity(&self) -> bool {
        self.pid_offset == 0 && self.tl0_offset == 0 && !self.switching && self.skipped.is_empty()
    }
}

/// `b` comes after `a` in 15-bit picture ID order.
fn is_newer_pid(a: u16, b: u16) -> bool {
    let d = b.wrapping_sub(a) % PICTURE_ID_MODULO;
    d != 0 && d < PICTURE_ID_MODULO / 2
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A descriptor with a 15-bit picture ID, TL0PICIDX and TID, then (on a keyframe start)
    /// a VP8 keyframe header of the given size.
    pub fn payload(pid: u16, tl0: u8, tid: u8, key: Option<(u16, u16)>) -> Vec<u8> {
        let start = key.is_some();
        let mut p = vec![
            0x80 | if start { 0x10 } else { 0 },
            0x80 | 0x40 | 0x20,
            0x80 | (pid >> 8) as u8,
            pid as u8,
            tl0,
            tid << 6,
        ];
        if let Some((w, h)) = key {
            p.extend_from_slice(&[0x00, 0x00, 0x00, 0x9d, 0x01, 0x2a]);
            p.extend_from_slice(&w.to_le_bytes());
            p.extend_from_slice(&h.to_le_bytes());
        }
        p.extend_from_slice(&[0u8; 20]);
        p
    }

    #[test]
    fn reads_picture_id_tl0_tid_and_keyframe_size() {
        let info = Vp8Info::parse(&payload(0x1234, 9, 2, Some((1280, 720)))).unwrap();
        assert_eq!(info.picture_id, Some((0x1234, true)));
        assert_eq!(info.tl0_pic_idx, Some(9));
        assert_eq!(info.tid, Some(2));
        assert!(info.frame_start);
        assert_eq!(info.keyframe_size, Some((1280, 720)));
        let delta = Vp8Info::parse(&payload(5, 1, 0, None)).unwrap();
        assert_eq!(delta.keyframe_size, None);
        assert!(Vp8Info::parse(&[]).is_none());
        assert!(Vp8Info::parse(&[0x80, 0x80, 0x81]).is_none(), "truncated");
    }

    #[test]
    fn reads_the_layer_sync_bit() {
        let mut p = payload(7, 1, 1, None);
        assert!(!Vp8Info::parse(&p).unwrap().layer_sync);
        p[5] |= 0x20;
        let info = Vp8Info::parse(&p).unwrap();
        assert!(info.layer_sync);
        assert_eq!(info.tid, Some(1));
    }

    fn pid_out(m: &mut PictureIdMunger, pid: u16) -> u16 {
        let info = Vp8Info::parse(&payload(pid, 0, 0, None)).unwrap();
        m.rewrite(&info).picture_id.unwrap()
    }

    #[test]
    fn skipped_frames_leave_no_gap_and_late_frames_keep_their_place() {
        let mut m = PictureIdMunger::default();
        assert_eq!(pid_out(&mut m, 0x7ffd), 0x7ffd);
        m.skip(Some((0x7ffe, true)));
        assert_eq!(pid_out(&mut m, 0x7fff), 0x7ffe);
        m.skip(Some((0, true)));
        // Across the wrap, two skips behind.
        assert_eq!(pid_out(&mut m, 1), 0x7fff);
        assert_eq!(pid_out(&mut m, 2), 0);
        assert!(!m.is_identity());
        // A late packet of the frame before the first skip keeps its own number.
        assert_eq!(pid_out(&mut m, 0x7ffd), 0x7ffd);
        // A late skip (its successors are out already) changes nothing.
        m.skip(Some((0x7fff, true)));
        assert_eq!(pid_out(&mut m, 3), 1);
    }

    #[test]
    fn a_switch_continues_the_numbering_across_wraparound() {
        let mut m = PictureIdMunger::default();
        let a = Vp8Info::parse(&payload(0x7ffe, 255, 0, None)).unwrap();
        assert_eq!(m.rewrite(&a).picture_id, Some(0x7ffe));
        let a = Vp8Info::parse(&payload(0x7fff, 0, 0, None)).unwrap();
        assert_eq!(
            m.rewrite(&a),
            Vp8Rewrite {
                picture_id: Some(0x7fff),
                tl0_pic_idx: Some(0)
            }
        );
        assert!(m.is_identity());
        // Another encoder, numbered far away.
        m.switch_source();
        let b = Vp8Info::parse(&payload(100, 77, 0, Some((320, 180)))).unwrap();
        assert_eq!(
            m.rewrite(&b),
            Vp8Rewrite {
                picture_id: Some(0),
                tl0_pic_idx: Some(1)
            }
        );
        let b = Vp8Info::parse(&payload(101, 78, 0, None)).unwrap();
        assert_eq!(
            m.rewrite(&b),
            Vp8Rewrite {
                picture_id: Some(1),
                tl0_pic_idx: Some(2)
            }
        );
        assert!(!m.is_identity());
    }
}
