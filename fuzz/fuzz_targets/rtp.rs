//! RTP into a Receiver and through Subscriptions: datagrams of any bytes and any header
//! extensions, parsed as the stack parses them, through a publication's Router to five
//! subscribers whose preferences, caps, pauses and keyframe requests change in between.
#![no_main]

use libfuzzer_sys::arbitrary::{Result, Unstructured};
use libfuzzer_sys::fuzz_target;
use sfu_fuzz::Stage;

fn run(u: &mut Unstructured) -> Result<()> {
    let mut stage = Stage::new(u)?;
    while !u.is_empty() {
        match u.int_in_range(0..=5)? {
            0..=2 => {
                let len = u.int_in_range(0..=1500)?;
                stage.rtp(u.bytes(len)?);
            }
            3 => stage.advance(u.int_in_range(0..=3000)?),
            _ => stage.control(u)?,
        }
    }
    Ok(())
}

fuzz_target!(|data: &[u8]| {
    let _ = run(&mut Unstructured::new(data));
});
