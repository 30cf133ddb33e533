use std::sync::Arc;
use std::time::Duration;
use std::time::Instant;

use crate::io::DATAGRAM_MAX_PACKET_SIZE;
use crate::packet::Vp8Patch;
use crate::rtp_::{ExtensionValues, MediaTime, Mid, Pt, Rid, RtpHeader, SeqNo, Ssrc};

use super::RtpPacket;
use super::rtx_cache_buf::EvictingBuffer;

const RTX_CACHE_SIZE_QUANTIZER: usize = 25;
const RTX_CACHE_QUANTIZE_SLOTS: usize = DATAGRAM_MAX_PACKET_SIZE / RTX_CACHE_SIZE_QUANTIZER;

#[derive(Debug)]
pub(crate) struct RtxCache {
    // Data, new additions here probably need to be cleared in [`clear`].
    packet_by_seq_no: EvictingBuffer<CachedPacket>,

    // Technically we want [Option<SeqNo>; X] to indicate the absence of
    // a SeqNo. However We can half the storage space by using the sentinel
    // values SeqNo::MAX to indicate None
    seq_no_by_quantized_size: [SeqNo; RTX_CACHE_QUANTIZE_SLOTS],

    // The packet last looked up, rebuilt from its compact form. Lookups hand out a
    // reference to this.
    scratch: RtpPacket,

    // The MID and RID that compact entries' headers carried, when they carried any: the
    // stream's own, the same for every packet, so kept once here instead of in each entry.
    ids: Option<StreamIds>,
}

/// A header's MID and RID.
type StreamIds = (Option<Mid>, Option<Rid>);

/// A sent packet as the cache holds it.
///
/// The cache holds hundreds of packets per stream, and every slot of its buffer is as large
/// as one entry, so entries are kept small: a packet whose header carries only what str0m
/// writes on every send (MID, RID) and audio levels is kept without the rest of
/// [`RtpHeader`] (CSRCs, every other extension value), which is most of an `RtpPacket`'s
/// size; its MID and RID are the stream's, kept once by the cache, and its sequence number
/// is the entry's position. Any other packet is boxed whole.
#[derive(Debug)]
enum CachedPacket {
    Plain(PlainPacket),
    Full(Box<RtpPacket>),
}

#[derive(Debug)]
struct PlainPacket {
    time: MediaTime,
    payload: Arc<[u8]>,
    timestamp: Instant,
    rtp_time: u32,
    ssrc: Ssrc,
    sequence_number: u16,
    header_len: u16,
    payload_type: Pt,
    version: u8,
    marker: bool,
    has_padding: bool,
    has_extension: bool,
    audio_level: Option<i8>,
    voice_activity: Option<bool>,
    /// The header carried the cache's [`StreamIds`] (else no MID and no RID).
    with_ids: bool,
    vp8_patch: Option<Vp8Patch>,
}

impl CachedPacket {
    /// `ids`: the cache's [`StreamIds`], set by the first packet that carries any.
    fn new(packet: RtpPacket, ids: &mut Option<StreamIds>) -> Self {
        let h = &packet.header;
        let v = &h.ext_vals;
        let carried = (v.mid, v.rid);
        let with_ids = carried != (None, None);
        let same_ids = !with_ids || *ids.get_or_insert(carried) == carried;
        let plain_exts = ExtensionValues {
            audio_level: v.audio_level,
            voice_activity: v.voice_activity,
            mid: v.mid,
            rid: v.rid,
            ..Default::default()
        };
        let plain = h.csrc_count == 0
            && h.csrc == [0; 15]
            && *v == plain_exts
            && packet.last_sender_info.is_none()
            && same_ids
            && u16::try_from(h.header_len).is_ok();
        if !plain {
            return Self::Full(Box::new(packet));
        }
        Self::Plain(PlainPacket {
            time: packet.time,
            timestamp: packet.timestamp,
            rtp_time: h.timestamp,
            ssrc: h.ssrc,
            sequence_number: h.sequence_number,
            header_len: h.header_len as u16,
            payload_type: h.payload_type,
            version: h.version,
            marker: h.marker,
            has_padding: h.has_padding,
            has_extension: h.has_extension,
            audio_level: v.audio_level,
            voice_activity: v.voice_activity,
            with_ids,
            vp8_patch: packet.vp8_patch,
            payload: packet.payload,
        })
    }

    fn payload(&self) -> &Arc<[u8]> {
        match self {
            Self::Plain(p) => &p.payload,
            Self::Full(p) => &p.payload,
        }
    }

    /// The packet as it was cached, in `scratch` unless it was kept whole. `seq_no` is its
    /// position, `ids` the cache's.
    fn restore<'a>(
        &'a mut self,
        seq_no: SeqNo,
        ids: Option<StreamIds>,
        scratch: &'a mut RtpPacket,
    ) -> &'a mut RtpPacket {
        let p = match self {
            Self::Full(p) => return p,
            Self::Plain(p) => p,
        };
        let (mid, rid) = ids.filter(|_| p.with_ids).unwrap_or_default();
        *scratch = RtpPacket {
            seq_no,
            time: p.time,
            header: RtpHeader {
                version: p.version,
                has_padding: p.has_padding,
                has_extension: p.has_extension,
                csrc_count: 0,
                marker: p.marker,
                payload_type: p.payload_type,
                sequence_number: p.sequence_number,
                timestamp: p.rtp_time,
                ssrc: p.ssrc,
                csrc: [0; 15],
                ext_vals: ExtensionValues {
                    audio_level: p.audio_level,
                    voice_activity: p.voice_activity,
                    mid,
                    rid,
                    ..Default::default()
                },
                header_len: usize::from(p.header_len),
            },
            payload: p.payload.clone(),
            vp8_patch: p.vp8_patch,
            timestamp: p.timestamp,
            last_sender_info: None,
            nackable: true,
        };
        scratch
    }
}

impl RtxCache {
    pub fn new(max_packet_count: usize, max_packet_age: Duration) -> Self {
        Self {
            packet_by_seq_no: EvictingBuffer::new(10, max_packet_age, max_packet_count),
            seq_no_by_quantized_size: [SeqNo::MAX; RTX_CACHE_QUANTIZE_SLOTS],
            scratch: RtpPacket::blank(),
            ids: None,
        }
    }

    pub fn cache_sent_packet(&mut self, packet: RtpPacket, now: Instant) {
        assert!(packet.nackable);
        let seq_no = packet.seq_no;
        let quantized_size = packet.payload.len() / RTX_CACHE_SIZE_QUANTIZER;
        let cached = CachedPacket::new(packet, &mut self.ids);
        self.packet_by_seq_no.push(*seq_no, now, cached);
        self.seq_no_by_quantized_size[quantized_size] = seq_no;
        self.remove_old_packets(now);
    }

    pub fn last_cached_seq_no(&self) -> Option<SeqNo> {
        Some(self.packet_by_seq_no.last_position()?.into())
    }

    /// The payload size of a cached packet, without restoring it.
    pub fn cached_payload_len(&self, seq_no: SeqNo) -> Option<usize> {
        Some(self.packet_by_seq_no.get(*seq_no)?.payload().len())
    }

    pub fn get_cached_packet_by_seq_no(&mut self, seq_no: SeqNo) -> Option<&mut RtpPacket> {
        let cached = self.packet_by_seq_no.get_mut(*seq_no)?;
        Some(cached.restore(seq_no, self.ids, &mut self.scratch))
    }

    pub fn get_cached_packet_smaller_than(&mut self, max_size: usize) -> Option<&mut RtpPacket> {
        let quantized_size = max_size / RTX_CACHE_SIZE_QUANTIZER;

        let seq_no = self.seq_no_by_quantized_size[..quantized_size]
            .iter()
            .rev()
            .filter(|seq_no| !seq_no.is_max())
            .find(|seq_no| self.packet_by_seq_no.contains(***seq_no))?;

        self.get_cached_packet_by_seq_no(*seq_no)
    }

    fn remove_old_packets(&mut self, now: Instant) {
        self.packet_by_seq_no.maybe_evict(now);
    }

    pub(crate) fn last_packet(&self) -> Option<&[u8]> {
        let packet = self.packet_by_seq_no.last()?;
        Some(packet.payload().as_ref())
    }

    pub(crate) fn clear(&mut self) {
        self.packet_by_seq_no.clear();
        self.seq_no_by_quantized_size = [SeqNo::MAX; RTX_CACHE_QUANTIZE_SLOTS];
        self.scratch = RtpPacket::blank();
        self.ids = None;
    }
}

#[cfg(test)]
mod test {
    use crate::rtp_::MediaTime;
    use crate::rtp_::RtpHeader;

    use super::*;

    fn after(now: Instant, millis: u64) -> Instant {
        now + Duration::from_millis(millis)
    }

    fn packet(now: Instant, seq_no: u64, millis: u64) -> RtpPacket {
        RtpPacket {
            header: RtpHeader::default(),
            seq_no: seq_no.into(),
            time: MediaTime::from_90khz(0),
            payload: millis.to_be_bytes().into(),
            vp8_patch: None,
            timestamp: after(now, millis),
            last_sender_info: None,
            nackable: true,
        }
    }

    #[test]
    fn rtx_cache_0_sized() {
        let now = Instant::now();
        let mut rtx_cache = RtxCache::new(0, Duration::from_secs(3));
        rtx_cache.cache_sent_packet(packet(now, 1, 10), after(now, 10));
        assert_eq!(
            Some(&mut packet(now, 1, 10)),
            rtx_cache.get_cached_packet_by_seq_no(1.into())
        );
        assert_eq!(
            Some(&mut packet(now, 1, 10)),
            rtx_cache.get_cached_packet_smaller_than(1000)
        );
    }

    #[test]
    fn compact_entries_restore_mid_rid_and_seq_no() {
        let now = Instant::now();
        let mut rtx_cache = RtxCache::new(10, Duration::from_secs(3));
        let with_ids = |seq_no: u64, mid: &str| {
            let mut p = packet(now, seq_no, 10);
            p.header.ext_vals.mid = Some(mid.into());
            p.header.ext_vals.rid = Some("h".into());
            p
        };
        // Before the receiver bound the stream: MID and RID on every packet.
        rtx_cache.cache_sent_packet(with_ids(1, "v"), now);
        // After: none.
        rtx_cache.cache_sent_packet(packet(now, 2, 10), now);
        // Other ids than the stream's first: kept whole.
        rtx_cache.cache_sent_packet(with_ids(3, "w"), now);
        assert!(matches!(
            rtx_cache.packet_by_seq_no.get(1),
            Some(CachedPacket::Plain(_))
        ));
        assert!(matches!(
            rtx_cache.packet_by_seq_no.get(3),
            Some(CachedPacket::Full(_))
        ));
        let expected = [
            (1, with_ids(1, "v")),
            (2, packet(now, 2, 10)),
            (3, with_ids(3, "w")),
        ];
        for (seq_no, mut expected) in expected {
            let got = rtx_cache.get_cached_packet_by_seq_no(seq_no.into());
            assert_eq!(Some(&mut expected), got, "seq_no {seq_no}");
        }
    }

    #[test]
    fn rtx_cache_0_duration() {
        let now = Instant::now();
        let mut rtx_cache = RtxCache::new(10, Duration::from_secs(0));
        rtx_cache.cache_sent_packet(packet(now, 1, 10), after(now, 10));
        assert_eq!(None, rtx_cache.get_cached_packet_by_seq_no(1.into()));
        assert_eq!(None, rtx_cache.get_cached_packet_smaller_than(1000));
    }

    #[test]
    fn rtx_cache_1_sized() {
        let now = Instant::now();
        let mut rtx_cache = RtxCache::new(1, Duration::from_secs(3));
        rtx_cache.cache_sent_packet(packet(now, 1, 10), after(now, 10));
        assert_eq!(
            Some(&mut packet(now, 1, 10)),
            rtx_cache.get_cached_packet_by_seq_no(1.into())
        );
        assert_eq!(
            Some(&mut packet(now, 1, 10)),
            rtx_cache.get_cached_packet_smaller_than(1000)
        );
        assert_eq!(
            Some(&mut packet(now, 1, 10)),
            rtx_cache.get_cached_packet_smaller_than(25)
        );
        assert_eq!(None, rtx_cache.get_cached_packet_smaller_than(24));
        rtx_cache.cache_sent_packet(packet(now, 2, 20), after(now, 20));
        assert_eq!(
            Some(&mut packet(now, 2, 20)),
            rtx_cache.get_cached_packet_by_seq_no(2.into())
        );
    }

    #[test]
    fn rtx_cache_100_sized_backwards() {
        let now = Instant::now();
        let mut rtx_cache = RtxCache::new(100, Duration::from_secs(3));

        for i in 1..=200 {
            let seq_no = 201 - i;
            let pkt = packet(now, seq_no, (201 - i) * 10);
            let now = after(now, i * 10);
            rtx_cache.cache_sent_packet(pkt, now);
        }

        assert_eq!(
            Some(&mut packet(now, 200, 2000)),
            rtx_cache.get_cached_packet_by_seq_no(200.into())
        );
        assert_eq!(None, rtx_cache.get_cached_packet_by_seq_no(100.into()));
        assert_eq!(None, rtx_cache.get_cached_packet_by_seq_no(101.into()));
    }

    #[test]
    fn rtx_cache_eviction() {
        let now = Instant::now();
        // Cache can take all entries
        let mut rtx_cache = RtxCache::new(400, Duration::from_secs(1));
        for i in 1..=200 {
            let seq_no = i;
            let pkt = packet(now, seq_no, i * 10);
            let now = after(now, i * 10);
            rtx_cache.cache_sent_packet(pkt, now);
        }

        assert_eq!(None, rtx_cache.get_cached_packet_by_seq_no(99.into()));

        assert_eq!(
            Some(&mut packet(now, 100, 1000)),
            rtx_cache.get_cached_packet_by_seq_no(100.into())
        );
        assert_eq!(
            Some(&mut packet(now, 200, 2000)),
            rtx_cache.get_cached_packet_by_seq_no(200.into())
        );
    }

    #[test]
    fn rtx_cache_keeps_a_plain_packet_compact() {
        // A slot of the cache's buffer is as large as its largest entry; a full RtpPacket
        // is several hundred bytes, and a video stream's cache holds hundreds of them.
        assert!(
            std::mem::size_of::<CachedPacket>() <= 96,
            "{} bytes",
            std::mem::size_of::<CachedPacket>()
        );
        let now = Instant::now();
        let mut pkt = packet(now, 7, 10);
        pkt.header.marker = true;
        pkt.header.timestamp = 90_000;
        pkt.header.ext_vals.audio_level = Some(-30);
        pkt.header.ext_vals.mid = Some("1".into());
        assert!(matches!(
            CachedPacket::new(clone(&pkt), &mut None),
            CachedPacket::Plain(_)
        ));
        let mut rtx_cache = RtxCache::new(10, Duration::from_secs(3));
        rtx_cache.cache_sent_packet(clone(&pkt), after(now, 10));
        assert_eq!(Some(&mut pkt), rtx_cache.get_cached_packet_by_seq_no(7.into()));
        assert_eq!(Some(8), rtx_cache.cached_payload_len(7.into()));
    }

    #[test]
    fn rtx_cache_keeps_any_other_packet_whole() {
        let now = Instant::now();
        let mut pkt = packet(now, 7, 10);
        pkt.header.csrc_count = 1;
        pkt.header.csrc[0] = 42;
        pkt.header.ext_vals.video_orientation = Some(crate::rtp_::VideoOrientation::Deg90);
        assert!(matches!(CachedPacket::new(clone(&pkt), &mut None), CachedPacket::Full(_)));
        let mut rtx_cache = RtxCache::new(10, Duration::from_secs(3));
        rtx_cache.cache_sent_packet(clone(&pkt), after(now, 10));
        assert_eq!(Some(&mut pkt), rtx_cache.get_cached_packet_by_seq_no(7.into()));
    }

    fn clone(p: &RtpPacket) -> RtpPacket {
        RtpPacket {
            seq_no: p.seq_no,
            time: p.time,
            header: p.header.clone(),
            payload: p.payload.clone(),
            vp8_patch: p.vp8_patch,
            timestamp: p.timestamp,
            last_sender_info: p.last_sender_info,
            nackable: p.nackable,
        }
    }
}
