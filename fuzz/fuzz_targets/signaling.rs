//! Signaling message handling: each line of the input is one text frame from a joined client.
//! It is parsed as the session parses it ([`parse_request`]), and what parses is applied to a
//! room of two as the session applies it (chat, typing, track declarations, mute, leave and
//! rejoin), with every broadcast encoded for the wire. Nothing may panic, whatever the frames.
#![no_main]

use std::sync::Arc;
use std::time::Instant;

use libfuzzer_sys::fuzz_target;
use sfu::config::ChatConfig;
use sfu::model::{ChatSender, LeaveReason, ParticipantInfo, Permissions, TrackInfo, TrackSource};
use sfu::room::participant::{Participant, SessionEnd};
use sfu::room::room::Room;
use sfu::signal::protocol::{encode, parse_request, Request, ServerMessage};
use sfu::signal::session::encode_room_event;
use tokio::sync::mpsc;

fn participant(
    sid: &str,
    identity: &str,
) -> (Participant, mpsc::Receiver<sfu::room::participant::Encoded>) {
    let (tx, rx) = mpsc::channel(sfu::room::participant::OUTBOUND_QUEUE);
    let info = ParticipantInfo {
        sid: sid.into(),
        identity: identity.into(),
        name: identity.into(),
        joined_at: 0,
        permissions: Permissions {
            publish: true,
            subscribe: true,
            chat: true,
        },
        metadata: String::new(),
    };
    (
        Participant::new(info, tx, Arc::new(SessionEnd::default())),
        rx,
    )
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let now = Instant::now();
    let room = Room::new(
        "fuzz".into(),
        &ChatConfig::default(),
        encode_room_event,
        now,
    );
    let (me, mut mine) = participant("PA_me", "me");
    let (other, mut theirs) = participant("PA_other", "other");
    let _ = room.join(other, 100);
    let _ = room.join(me.clone(), 100);
    let sender = ChatSender {
        sid: "PA_me".into(),
        identity: "me".into(),
        name: "me".into(),
    };
    for (n, frame) in text.split('\n').enumerate() {
        match parse_request(frame) {
            Err(bad) => {
                let error = ServerMessage::Error {
                    code: bad.code,
                    message: bad.message,
                };
                let _ = encode(&error, bad.id.as_deref());
            }
            Ok(request) => {
                let _ = (request.id(), request.kind());
                match request {
                    Request::Chat { text, .. } => {
                        let _ = room.chat(sender.clone(), text, n as u64);
                    }
                    Request::Typing { typing, .. } => {
                        let _ = room.typing(&sender, typing);
                    }
                    Request::Publish {
                        cid,
                        kind,
                        source,
                        name,
                        ..
                    } => room.add_track(TrackInfo {
                        sid: format!("TR_{n}"),
                        participant: "PA_me".into(),
                        cid,
                        kind,
                        source: source.unwrap_or(TrackSource::default_for(kind)),
                        name: name.unwrap_or_default(),
                        muted: false,
                        layers: vec!["q".into(), "h".into(), "f".into()],
                    }),
                    Request::Mute { track, muted, .. } => {
                        let _ = room.set_muted("PA_me", &track, muted);
                    }
                    Request::Unpublish { track, .. } => {
                        let _ = room.remove_track(&track);
                    }
                    Request::Leave { .. } => {
                        let _ = room.leave("PA_me", LeaveReason::ClientLeft, now);
                        let _ = room.join(me.clone(), 100);
                    }
                    _ => {}
                }
            }
        }
        while mine.try_recv().is_ok() {}
        while theirs.try_recv().is_ok() {}
    }
    let _ = room.summary(now);
});
