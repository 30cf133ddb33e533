//! Signaling: the JSON protocol over WebSocket and the session that speaks it for one client.
//!
//! `signal/` never touches packets; it turns requests into room (and later media) operations and
//! room events into messages.

pub mod protocol;
pub mod resume;
pub mod session;
