//! Client SDP as it enters the media plane: bounded and parsed on the caller's task (the
//! client's signaling session), so a hostile offer costs its own session's time, never a media
//! worker's, whose thread serves other rooms too. An offer's track ids are made explicit here
//! whatever msid form the client used ([`with_track_ids`]). Also the one addition the server
//! makes to its own offers' text: receiver reference times ([`with_rrtr`]).

use str0m::change::{SdpAnswer, SdpOffer};

use crate::rtc::MediaError;

/// Most m-lines a publisher's offer may have: a participant publishes a handful of tracks
/// (2,000 m-lines took a worker 0.76 s).
pub const MAX_OFFER_MEDIA_LINES: usize = 64;

/// Most m-lines an answer may have: it answers the server's own offer, one m-line per track
/// received at once (a full room of 100 with four tracks each, and room to spare).
pub const MAX_ANSWER_MEDIA_LINES: usize = 1024;

/// A publisher connection's offer, checked and parsed.
#[derive(Debug)]
pub struct ClientOffer {
    pub sdp: SdpOffer,
    /// What each m-section offered, read from the text here (not on the worker): for telling
    /// the publisher which m-line the stack refused and what was in it.
    pub media: Vec<OfferedMedia>,
}

/// One m-section of an offer: its mid, its media kind and the codec names of its
/// `a=rtpmap` lines (retransmission and FEC formats left out).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OfferedMedia {
    pub mid: String,
    pub kind: String,
    pub codecs: Vec<String>,
}

/// An answer to a subscriber offer, checked and parsed.
#[derive(Debug)]
pub struct ClientAnswer(pub SdpAnswer);

impl ClientOffer {
    pub fn parse(sdp: &str) -> Result<Self, MediaError> {
        check_media_lines(sdp, MAX_OFFER_MEDIA_LINES)?;
        let parsed = SdpOffer::from_sdp_string(&with_track_ids(sdp))
            .map_err(|e| MediaError::BadSdp(e.to_string()))?;
        Ok(Self {
            sdp: parsed,
            media: offered_media(sdp),
        })
    }
}

/// Stream id written where a client named none (`-`) or no msid at all: the stack keeps a
/// track id only with a stream id, and the server uses the stream id for nothing.
const NO_STREAM: &str = "sfu-nostream";

/// The offer with a media-level `a=msid:STREAM TRACK` in every m-section, so the track id a
/// client gave (its `cid` in `publish`) is the one the server reads:
/// - an `a=msid` with no stream (`-`) gets [`NO_STREAM`] (else the track id would be dropped);
/// - a section with msid only at the SSRC level (`a=ssrc:N msid:S T`, as GStreamer's webrtcbin
///   writes it) gets it at the media level;
/// - a section with no msid at all gets its `a=mid` as the track id, a rule a client can
///   follow (docs/protocol.md).
fn with_track_ids(sdp: &str) -> String {
    let mut out = String::with_capacity(sdp.len() + 64);
    let mut section: Vec<&str> = Vec::new();
    for line in sdp.split_inclusive('\n') {
        if line.starts_with("m=") {
            push_section(&mut out, &section);
            section.clear();
        }
        section.push(line);
    }
    push_section(&mut out, &section);
    out
}

/// Writes one m-section (or the session part before the first) with its msid made explicit.
fn push_section(out: &mut String, lines: &[&str]) {
    let is_media = lines.first().is_some_and(|l| l.starts_with("m="));
    let value = |line: &str, prefix: &str| {
        line.strip_prefix(prefix)
            .map(|v| v.trim_end_matches(['\r', '\n']).to_string())
    };
    let media_msid = lines.iter().find_map(|l| value(l, "a=msid:"));
    let ssrc_msid = lines.iter().find_map(|l| {
        let rest = value(l, "a=ssrc:")?;
        let (_, attr) = rest.split_once(' ')?;
        attr.strip_prefix("msid:").map(str::to_string)
    });
    let mid = lines.iter().find_map(|l| value(l, "a=mid:"));
    let msid = match (media_msid.as_deref(), ssrc_msid, mid) {
        _ if !is_media => None,
        (Some(m), _, _) if !m.starts_with("- ") => None,
        (Some(m), _, _) => Some(m.replacen('-', NO_STREAM, 1)),
        (None, Some(m), _) if m.starts_with("- ") => Some(m.replacen('-', NO_STREAM, 1)),
        (None, Some(m), _) => Some(m),
        (None, None, Some(mid)) => Some(format!("{NO_STREAM} {}", mid.trim())),
        (None, None, None) => None,
    };
    let eol = if lines.first().is_some_and(|l| l.ends_with("\r\n")) {
        "\r\n"
    } else {
        "\n"
    };
    for line in lines {
        if msid.is_some() && line.starts_with("a=msid:") {
            continue;
        }
        out.push_str(line);
    }
    // Last in the section: attributes come after its c= and b= lines.
    if let Some(m) = &msid {
        if !out.ends_with('\n') {
            out.push_str(eol);
        }
        out.push_str(&format!("a=msid:{m}{eol}"));
    }
}

/// Each m-section of an SDP, in order.
fn offered_media(sdp: &str) -> Vec<OfferedMedia> {
    let mut out: Vec<OfferedMedia> = Vec::new();
    for line in sdp.lines() {
        let line = line.trim_end();
        if let Some(rest) = line.strip_prefix("m=") {
            out.push(OfferedMedia {
                mid: String::new(),
                kind: rest.split(' ').next().unwrap_or_default().to_string(),
                codecs: Vec::new(),
            });
        } else if let Some(OfferedMedia { mid, codecs, .. }) = out.last_mut() {
            if let Some(m) = line.strip_prefix("a=mid:") {
                *mid = m.trim().to_string();
            } else if let Some(map) = line.strip_prefix("a=rtpmap:") {
                let name = map.split([' ', '/']).nth(1).unwrap_or_default();
                // Retransmission and FEC formats are not what a track is encoded in.
                if !matches!(
                    name.to_ascii_lowercase().as_str(),
                    "rtx" | "red" | "ulpfec" | ""
                ) && !codecs.iter().any(|c| c == name)
                {
                    codecs.push(name.to_string());
                }
            }
        }
    }
    out
}

impl ClientAnswer {
    pub fn parse(sdp: &str) -> Result<Self, MediaError> {
        check_media_lines(sdp, MAX_ANSWER_MEDIA_LINES)?;
        SdpAnswer::from_sdp_string(sdp)
            .map(Self)
            .map_err(|e| MediaError::BadSdp(e.to_string()))
    }
}

/// The server's offer to a subscriber with `a=rtcp-fb:PT rrtr` after each `a=rtcp-fb:PT nack`
/// line: the subscriber may send RTCP XR receiver reference times (RFC 3611 section 4.4),
/// which the stack answers with DLRR blocks. That is how a connection that only receives learns
/// its round trip; without it, Chromium repeats the NACK for a retransmission that was lost
/// too only after its default 100 ms, and a packet lost twice freezes the picture.
pub fn with_rrtr(offer: &str) -> String {
    let mut out = String::with_capacity(offer.len() + 128);
    for line in offer.split_inclusive("\r\n") {
        out.push_str(line);
        let Some(pt) = line
            .strip_prefix("a=rtcp-fb:")
            .and_then(|rest| rest.strip_suffix(" nack\r\n"))
        else {
            continue;
        };
        let rrtr = format!("a=rtcp-fb:{pt} rrtr\r\n");
        if !offer.contains(&rrtr) {
            out.push_str(&rrtr);
        }
    }
    out
}

/// Refuses SDP with more than `max` m-lines before anything parses it.
fn check_media_lines(sdp: &str, max: usize) -> Result<(), MediaError> {
    let lines = sdp
        .split('\n')
        .filter(|l| l.trim_start().starts_with("m="))
        .count();
    if lines > max {
        return Err(MediaError::BadSdp(format!(
            "{lines} m-lines; at most {max} are accepted"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_format_with_nack_gets_receiver_reference_times_once() {
        let offer = "v=0\r\nm=video 9 UDP/TLS/RTP/SAVPF 96 97 98\r\na=mid:1\r\n\
            a=rtcp-fb:96 nack\r\na=rtcp-fb:96 nack pli\r\na=rtcp-fb:96 transport-cc\r\n\
            a=rtcp-fb:98 nack\r\na=rtcp-fb:98 rrtr\r\na=rtpmap:97 rtx/90000\r\n";
        let with = with_rrtr(offer);
        assert_eq!(
            with,
            offer
                .replace("96 nack\r\n", "96 nack\r\na=rtcp-fb:96 rrtr\r\n")
                .as_str(),
            "one rrtr after 96's nack; 98 had one already, 97 (rtx) has no nack"
        );
        assert_eq!(with_rrtr(&with), with);
    }

    #[test]
    fn too_many_media_lines_are_refused_before_parsing() {
        let sdp = |lines: usize| {
            let mut sdp = String::from("v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\n");
            for i in 0..lines {
                sdp.push_str(&format!("m=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:{i}\r\n"));
            }
            sdp
        };
        let err = ClientOffer::parse(&sdp(MAX_OFFER_MEDIA_LINES + 1)).unwrap_err();
        assert!(err.to_string().contains("m-lines"), "{err}");
        let err = ClientAnswer::parse(&sdp(MAX_ANSWER_MEDIA_LINES + 1)).unwrap_err();
        assert!(err.to_string().contains("m-lines"), "{err}");
        // Within the bound it is up to the parser.
        let err = ClientOffer::parse(&sdp(MAX_OFFER_MEDIA_LINES)).unwrap_err();
        assert!(!err.to_string().contains("at most"), "{err}");
    }

    #[test]
    fn codecs_are_listed_per_mid_without_retransmission_formats() {
        let sdp = "v=0\r\ns=-\r\nm=video 9 UDP/TLS/RTP/SAVPF 45 46\r\na=mid:v\r\n\
                   a=rtpmap:45 AV1/90000\r\na=rtpmap:46 rtx/90000\r\n\
                   m=audio 9 UDP/TLS/RTP/SAVPF 0 8\r\na=mid:a\r\na=rtpmap:0 PCMU/8000\r\n\
                   a=rtpmap:8 PCMA/8000\r\n";
        let media = |mid: &str, kind: &str, codecs: &[&str]| OfferedMedia {
            mid: mid.to_string(),
            kind: kind.to_string(),
            codecs: codecs.iter().map(|c| c.to_string()).collect(),
        };
        assert_eq!(
            offered_media(sdp),
            vec![
                media("v", "video", &["AV1"]),
                media("a", "audio", &["PCMU", "PCMA"]),
            ]
        );
    }

    /// An offer of one video m-section with `attrs` after its `a=mid:0`.
    fn offer_with(attrs: &str) -> String {
        format!(
            "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\na=group:BUNDLE 0\r\n\
             m=video 9 UDP/TLS/RTP/SAVPF 96\r\nc=IN IP4 0.0.0.0\r\n\
             a=ice-ufrag:abcd\r\na=ice-pwd:abcdefghijklmnopqrstuvwx\r\n\
             a=fingerprint:sha-256 00:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD:EE:FF:00:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD:EE:FF\r\n\
             a=setup:actpass\r\na=mid:0\r\na=sendonly\r\na=rtcp-mux\r\n\
             a=rtpmap:96 VP8/90000\r\n{attrs}"
        )
    }

    /// The track id a publisher connection (configured as the worker's) takes from the offer's
    /// m-section: what the worker reports as the track's `cid`.
    fn track_id(sdp: &str) -> String {
        let offer = ClientOffer::parse(sdp).expect("offer parses");
        let mut rtc = crate::rtc::stack::new_rtc(std::time::Instant::now(), false);
        rtc.sdp_api()
            .accept_offer(offer.sdp)
            .expect("offer accepted");
        let mid = str0m::media::Mid::from("0");
        rtc.media(mid).expect("the m-line").track_id().to_string()
    }

    #[test]
    fn the_track_id_is_read_from_any_msid_form_or_else_is_the_mid() {
        // Browsers: media level, with a stream.
        let sdp = offer_with("a=msid:stream-a cam-1\r\n");
        assert_eq!(track_id(&sdp), "cam-1");
        assert_eq!(with_track_ids(&sdp), sdp, "a usual offer is left as it is");
        // No stream (`-`): the stack would drop the track id with it.
        assert_eq!(track_id(&offer_with("a=msid:- cam-2\r\n")), "cam-2");
        // SSRC level only (GStreamer's webrtcbin).
        let ssrc_only = "a=ssrc:1234 cname:x\r\na=ssrc:1234 msid:stream-b cam-3\r\n";
        assert_eq!(track_id(&offer_with(ssrc_only)), "cam-3");
        assert_eq!(track_id(&offer_with("a=ssrc:1 msid:- cam-4\r\n")), "cam-4");
        // None at all: the mid.
        assert_eq!(track_id(&offer_with("")), "0");
    }

    #[test]
    fn garbage_is_bad_sdp() {
        assert!(matches!(
            ClientOffer::parse("not sdp"),
            Err(MediaError::BadSdp(_))
        ));
    }
}
