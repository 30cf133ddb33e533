//! Client SDP as it enters the media plane: bounded and parsed on the caller's task (the
//! client's signaling session), so a hostile offer costs its own session's time, never a media
//! worker's, whose thread serves other rooms too.

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
pub struct ClientOffer(pub SdpOffer);

/// An answer to a subscriber offer, checked and parsed.
#[derive(Debug)]
pub struct ClientAnswer(pub SdpAnswer);

impl ClientOffer {
    pub fn parse(sdp: &str) -> Result<Self, MediaError> {
        check_media_lines(sdp, MAX_OFFER_MEDIA_LINES)?;
        SdpOffer::from_sdp_string(sdp)
            .map(Self)
            .map_err(|e| MediaError::BadSdp(e.to_string()))
    }
}

impl ClientAnswer {
    pub fn parse(sdp: &str) -> Result<Self, MediaError> {
        check_media_lines(sdp, MAX_ANSWER_MEDIA_LINES)?;
        SdpAnswer::from_sdp_string(sdp)
            .map(Self)
            .map_err(|e| MediaError::BadSdp(e.to_string()))
    }
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
    fn garbage_is_bad_sdp() {
        assert!(matches!(
            ClientOffer::parse("not sdp"),
            Err(MediaError::BadSdp(_))
        ));
    }
}
