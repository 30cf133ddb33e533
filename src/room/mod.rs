//! Rooms and the participants in them: the registry, one room's state, chat and its rate
//! limits.
//!
//! This layer never touches packets or sockets: it decides who is in which room and what each
//! participant is told ([`crate::model::RoomEvent`]), and hands those events, encoded once per
//! broadcast by the encoder it was built with, to the participants' sessions.

pub mod chat;
pub mod participant;
pub mod rate_limit;
#[allow(clippy::module_inception)]
pub mod room;
pub mod rooms;

pub use participant::{EncodeEvent, Encoded, Participant, SessionEnd};
pub use room::{Room, RoomError, RoomRef};
pub use rooms::Rooms;
