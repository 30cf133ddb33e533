//! STUN (and anything else) into the demux: datagrams of any bytes from a handful of source
//! addresses, routed as a worker's shared socket routes them, while peers come and go and
//! answer checks. Besides not panicking, the demux must keep its one security promise: a
//! datagram that is not STUN reaches a peer only from an address that peer's stack answered
//! (a spoofed check teaches it nothing).
#![no_main]

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};

use libfuzzer_sys::arbitrary::{Result, Unstructured};
use libfuzzer_sys::fuzz_target;
use sfu::rtc::demux::Demux;
use str0m::ice::StunMessage;

const UFRAGS: [&str; 3] = ["ufragA", "ufragB", "ufragC"];

fn run(u: &mut Unstructured) -> Result<()> {
    let sources: Vec<SocketAddr> = (0..4u16)
        .map(|i| SocketAddr::from((Ipv4Addr::new(10, 0, 0, (i + 1) as u8), 5000 + i)))
        .collect();
    let mut demux = Demux::default();
    let mut learned: HashMap<SocketAddr, u8> = HashMap::new();
    for (peer, ufrag) in UFRAGS.iter().enumerate() {
        demux.add((*ufrag).to_string(), peer as u8);
    }
    while !u.is_empty() {
        let source = *u.choose(&sources)?;
        match u.int_in_range(0..=5)? {
            0..=3 => {
                let len = u.int_in_range(0..=600)?;
                let datagram = u.bytes(len)?;
                // The stack's STUN parser sees what the demux routes to it.
                let stun = StunMessage::parse(datagram).ok();
                let _ = stun
                    .as_ref()
                    .map(|m| (m.split_username(), m.is_binding_request()));
                let routed = demux.route(source, datagram);
                let looks_like_stun = datagram.first().is_some_and(|b| *b < 2);
                if let Some(peer) = routed {
                    assert!(
                        looks_like_stun || learned.get(&source) == Some(&peer),
                        "a non-STUN datagram from {source} reached peer {peer}, which never answered it"
                    );
                }
            }
            4 => {
                // The peer's stack answered a check from `source` (its integrity held).
                let peer = u.int_in_range(0..=2)?;
                demux.learn(source, peer);
                learned.insert(source, peer);
            }
            _ => {
                let peer = u.int_in_range(0..=2)?;
                demux.remove(peer);
                learned.retain(|_, p| *p != peer);
                demux.add(UFRAGS[usize::from(peer)].to_string(), peer);
            }
        }
    }
    Ok(())
}

fuzz_target!(|data: &[u8]| {
    let _ = run(&mut Unstructured::new(data));
});
