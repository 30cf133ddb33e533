//! Client SDP through the media engine's path: bounded and parsed as a session does it
//! ([`ClientOffer`], [`ClientAnswer`]), then applied to a peer connection configured as a
//! worker configures it (a publisher's offer accepted; an answer to a subscriber offer of
//! audio and video accepted), and the connection polled for what it does next. The first byte
//! picks offer or answer.
#![no_main]

use std::time::Instant;

use libfuzzer_sys::fuzz_target;
use sfu::rtc::sdp::{ClientAnswer, ClientOffer};
use sfu::rtc::stack::{codec_of, guard, new_rtc, params_of};
use str0m::media::{Direction, MediaKind};
use str0m::{Event, Output, Rtc};

/// Polls what the connection does next; a new m-line's codecs are looked up as the worker does.
fn drain(rtc: &mut Rtc) {
    for _ in 0..100 {
        match rtc.poll_output() {
            Ok(Output::Timeout(_)) | Err(_) => break,
            Ok(Output::Event(Event::MediaAdded(added))) => {
                if let Some(media) = rtc.media(added.mid) {
                    for pt in media.remote_pts().to_vec() {
                        let _ = (codec_of(rtc, pt), params_of(rtc, pt));
                    }
                }
            }
            Ok(_) => {}
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&which, rest)) = data.split_first() else {
        return;
    };
    let Ok(text) = std::str::from_utf8(rest) else {
        return;
    };
    let now = Instant::now();
    if which & 1 == 0 {
        let Ok(offer) = ClientOffer::parse(text) else {
            return;
        };
        let mut rtc = new_rtc(now, false);
        if let Ok(Ok(answer)) = guard(|| rtc.sdp_api().accept_offer(offer.sdp)) {
            let _ = answer.to_sdp_string();
            drain(&mut rtc);
        }
    } else {
        let Ok(answer) = ClientAnswer::parse(text) else {
            return;
        };
        let mut rtc = new_rtc(now, true);
        let mut api = rtc.sdp_api();
        api.add_media(MediaKind::Audio, Direction::SendOnly, None, None, None);
        api.add_media(MediaKind::Video, Direction::SendOnly, None, None, None);
        let Some((_, pending)) = api.apply() else {
            return;
        };
        if let Ok(Ok(())) = guard(|| rtc.sdp_api().accept_answer(pending, answer.0)) {
            drain(&mut rtc);
        }
    }
});
