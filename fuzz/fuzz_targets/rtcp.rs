//! RTCP compound packets into the feedback path. The stack parses a subscriber's compound
//! packet (SR/RR/SDES/BYE/NACK/PLI/FIR/TWCC/REMB, any lengths and padding); what it yields for
//! the core (keyframe requests, REMB estimates) goes to a publication's Router and its
//! Allocator the way the worker passes it, between RTP that keeps the subscriptions busy.
#![no_main]

use libfuzzer_sys::arbitrary::{Result, Unstructured};
use libfuzzer_sys::fuzz_target;
use sfu_fuzz::Stage;
use str0m::rtp::rtcp::Rtcp;

/// Splits a compound packet as the stack does (each header's length, padding removed) and
/// parses each part.
fn parts(mut buf: &[u8]) -> Vec<Rtcp> {
    let mut out = Vec::new();
    while buf.len() >= 4 {
        let words = usize::from(u16::from_be_bytes([buf[2], buf[3]])) + 1;
        let Some(part) = buf.get(..words * 4) else {
            break;
        };
        let unpadded = if buf[0] & 0x20 != 0 {
            part.len().checked_sub(usize::from(part[part.len() - 1]))
        } else {
            Some(part.len())
        };
        if let Some(rtcp) = unpadded.and_then(|n| Rtcp::try_from(&part[..n]).ok()) {
            out.push(rtcp);
        }
        buf = &buf[part.len()..];
    }
    out
}

fn run(u: &mut Unstructured) -> Result<()> {
    let mut stage = Stage::new(u)?;
    while !u.is_empty() {
        match u.int_in_range(0..=4)? {
            0 => {
                let len = u.int_in_range(0..=1500)?;
                let compound = u.bytes(len)?;
                // The stack's own path (its parser and its feedback conversion)...
                let _ = str0m::_internal_test_exports::fuzz::rtcp(compound);
                // ...and what of it reaches the core.
                for rtcp in parts(compound) {
                    match rtcp {
                        Rtcp::Pli(pli) => stage.keyframe_request((*pli.ssrc % 6) as u8),
                        Rtcp::Fir(fir) => {
                            for entry in fir.reports.iter() {
                                stage.keyframe_request((*entry.ssrc % 6) as u8);
                            }
                        }
                        Rtcp::Remb(remb) => {
                            stage.estimate((*remb.ssrc % 6) as u8, remb.bitrate.max(0.0) as u64)
                        }
                        _ => {}
                    }
                }
            }
            1 => {
                let len = u.int_in_range(0..=1300)?;
                stage.rtp(u.bytes(len)?);
            }
            2 => stage.advance(u.int_in_range(0..=3000)?),
            _ => stage.control(u)?,
        }
    }
    Ok(())
}

fuzz_target!(|data: &[u8]| {
    let _ = run(&mut Unstructured::new(data));
});
