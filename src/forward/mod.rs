//! The forwarding core, sans-IO: what to do with each packet and each piece of feedback.
//!
//! Nothing here knows tokio, sockets or the WebRTC stack. Inputs are packets (a parsed header and
//! a shared payload), feedback (keyframe requests, audio levels) and the current time passed in;
//! outputs are rewritten packets to send and actions (request a keyframe upstream). Every rule is
//! unit-tested with a fake clock.
//!
//! - [`router`]: one publication: hands each packet to its subscriptions and gathers their
//!   decisions (deliveries, one keyframe request, counts); keyframe targeting, layer costs for
//!   the Allocator, dynacast.
//! - [`receiver`]: one published track's incoming stream: keyframes, bitrate, liveness.
//! - [`subscription`]: one publication forwarded to one subscriber: gating, rewriting.
//! - [`munger`]: sequence number and timestamp rewrite arithmetic.
//! - [`keyframe`]: keyframe detection per codec, the keyframe request throttle.
//! - [`audio_level`]: active speakers.
//! - [`selector`]: which simulcast layer a subscription forwards (preferred, target, current).
//! - [`allocator`]: splits a subscriber's bandwidth estimate across its subscriptions.
//! - [`layers`]: rid ↔ layer index, element size → layer, assumed layer costs.
//! - [`dynacast`]: which layers anyone needs, so the publisher can stop the others.
//! - [`vp8`]: VP8 payload descriptor reading and picture ID / TL0PICIDX continuity.
//! - [`temporal`]: which frames a subscription forwards at a lowered frame rate (VP8 TIDs).
//!
//! The retransmission cache the design map lists as `packet_cache.rs` is str0m's: each outgoing
//! stream keeps what it sent and answers NACKs over RTX, and each incoming stream NACKs its
//! publisher's losses. The core marks which packets may be resent (video with RTX negotiated).

pub mod allocator;
pub mod audio_level;
pub mod dynacast;
pub mod keyframe;
pub mod layers;
pub mod munger;
pub mod packet;
pub mod receiver;
pub mod router;
pub mod selector;
pub mod subscription;
pub mod temporal;
pub mod vp8;

pub use packet::{Codec, Packet};
