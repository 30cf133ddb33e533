//! Which peer a datagram on a worker's shared UDP socket belongs to, without a scan.
//!
//! ICE connectivity checks (STUN) name the server's ufrag in their USERNAME; that maps to a
//! peer. DTLS and SRTP carry no such name, so they are routed by source address, which ICE has
//! tied to the peer: an address is learned only when the peer's stack answers a check from it
//! ([`Demux::learn`]), that is once str0m verified the check's MESSAGE-INTEGRITY. Learning it
//! from the check itself let anyone who knew a ufrag, with a spoofed source address, steer a
//! victim's media to another peer.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::SocketAddr;

/// Routes datagrams to peers of type `P`.
#[derive(Debug)]
pub struct Demux<P> {
    by_ufrag: HashMap<String, P>,
    by_addr: HashMap<SocketAddr, P>,
}

impl<P> Default for Demux<P> {
    fn default() -> Self {
        Self {
            by_ufrag: HashMap::new(),
            by_addr: HashMap::new(),
        }
    }
}

impl<P: Copy + Eq + Hash> Demux<P> {
    pub fn add(&mut self, local_ufrag: String, peer: P) {
        self.by_ufrag.insert(local_ufrag, peer);
    }

    /// An ICE restart gave `peer` the local ufrag `new`: checks naming it are routed to the
    /// peer from now on, besides those naming `current` (the connection goes on with it until
    /// the restart completes). Any older ufrag of the peer is forgotten, so repeated restarts
    /// leave at most two.
    pub fn rekey(&mut self, peer: P, current: &str, new: String) {
        self.by_ufrag.retain(|u, p| *p != peer || u == current);
        self.by_ufrag.insert(new, peer);
    }

    /// Forgets a peer and every address it used.
    pub fn remove(&mut self, peer: P) {
        self.by_ufrag.retain(|_, p| *p != peer);
        self.by_addr.retain(|_, p| *p != peer);
    }

    /// The peer a datagram from `source` belongs to, if any.
    pub fn route(&self, source: SocketAddr, datagram: &[u8]) -> Option<P> {
        // STUN first: a client may move to a new address, and its check says who it is.
        if let Some(local) = stun_local_ufrag(datagram) {
            if let Some(&peer) = self.by_ufrag.get(local) {
                return Some(peer);
            }
        }
        self.by_addr.get(&source).copied()
    }

    /// `peer`'s stack sent STUN to `destination`: it answered a check from there, so the check
    /// passed its integrity test and the address is the peer's.
    pub fn learn(&mut self, destination: SocketAddr, peer: P) {
        self.by_addr.insert(destination, peer);
    }
}

/// STUN's fixed header: type, length, magic cookie, transaction id.
const STUN_HEADER: usize = 20;
const STUN_MAGIC_COOKIE: [u8; 4] = [0x21, 0x12, 0xa4, 0x42];
const STUN_ATTR_USERNAME: u16 = 0x0006;

/// The server's half of a STUN USERNAME ("server:client", RFC 8445 7.2.2), if the datagram
/// is STUN (RFC 7983: first byte 0..=3, with the magic cookie) and carries one. Only the
/// attribute walk is done here; str0m checks the message's integrity.
fn stun_local_ufrag(d: &[u8]) -> Option<&str> {
    if d.len() < STUN_HEADER || d[0] > 3 || d[4..8] != STUN_MAGIC_COOKIE {
        return None;
    }
    let length = usize::from(u16::from_be_bytes([d[2], d[3]]));
    let body = d.get(STUN_HEADER..STUN_HEADER + length)?;
    let mut i = 0;
    while i + 4 <= body.len() {
        let kind = u16::from_be_bytes([body[i], body[i + 1]]);
        let len = usize::from(u16::from_be_bytes([body[i + 2], body[i + 3]]));
        let value = body.get(i + 4..i + 4 + len)?;
        if kind == STUN_ATTR_USERNAME {
            let username = std::str::from_utf8(value).ok()?;
            return username.split(':').next();
        }
        // Attributes are padded to 4 bytes.
        i += 4 + len.div_ceil(4) * 4;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn binding_request(username: &str) -> Vec<u8> {
        // Header: binding request, length, magic cookie, transaction id; then USERNAME.
        let mut attr = Vec::new();
        attr.extend_from_slice(&0x0006u16.to_be_bytes());
        attr.extend_from_slice(&(username.len() as u16).to_be_bytes());
        attr.extend_from_slice(username.as_bytes());
        while attr.len() % 4 != 0 {
            attr.push(0);
        }
        let mut m = Vec::new();
        m.extend_from_slice(&0x0001u16.to_be_bytes());
        m.extend_from_slice(&(attr.len() as u16).to_be_bytes());
        m.extend_from_slice(&0x2112_a442u32.to_be_bytes());
        m.extend_from_slice(&[7u8; 12]);
        m.extend_from_slice(&attr);
        m
    }

    #[test]
    fn stun_names_the_peer_then_its_address_routes_the_rest() {
        let mut d = Demux::default();
        d.add("srv1".into(), 1u32);
        d.add("srv2".into(), 2u32);
        let a: SocketAddr = "127.0.0.1:5000".parse().unwrap();
        let b: SocketAddr = "127.0.0.1:5001".parse().unwrap();
        // DTLS from an unknown address goes nowhere.
        assert_eq!(d.route(a, &[22, 254, 253]), None);
        assert_eq!(d.route(a, &binding_request("srv2:cli")), Some(2));
        // A check alone (its integrity not yet verified) ties no address to the peer.
        assert_eq!(d.route(a, &[22, 254, 253]), None);
        // Peer 2's stack answered it: now the address is its.
        d.learn(a, 2);
        assert_eq!(d.route(a, &[22, 254, 253]), Some(2));
        assert_eq!(d.route(b, &binding_request("nobody:cli")), None);
        assert_eq!(d.route(b, &[0x80, 0x60]), None);
        d.remove(2);
        assert_eq!(d.route(a, &[22, 254, 253]), None);
    }

    #[test]
    fn a_spoofed_check_does_not_steal_an_address() {
        // Peer 1 (the victim) owns address v. An attacker who knows peer 2's ufrag sends a
        // check from a spoofed source v: v's media must still go to peer 1.
        let mut d = Demux::default();
        d.add("victim".into(), 1u32);
        d.add("attacker".into(), 2u32);
        let v: SocketAddr = "127.0.0.1:6000".parse().unwrap();
        d.learn(v, 1);
        assert_eq!(d.route(v, &binding_request("attacker:x")), Some(2));
        assert_eq!(
            d.route(v, &[0x80, 0x60]),
            Some(1),
            "SRTP from v still goes to peer 1"
        );
    }

    #[test]
    fn an_ice_restart_routes_the_new_ufrag_and_keeps_at_most_two() {
        let mut demux = Demux::default();
        demux.add("first".into(), 1u32);
        demux.add("other".into(), 2u32);
        let check = |ufrag: &str| binding_request(&format!("{ufrag}:cli"));
        demux.rekey(1, "first", "second".into());
        let nowhere: SocketAddr = "127.0.0.9:9".parse().unwrap();
        assert_eq!(demux.route(nowhere, &check("second")), Some(1));
        assert_eq!(
            demux.route(nowhere, &check("first")),
            Some(1),
            "still in use"
        );
        demux.rekey(1, "second", "third".into());
        assert_eq!(demux.route(nowhere, &check("third")), Some(1));
        assert_eq!(demux.route(nowhere, &check("second")), Some(1));
        assert_eq!(demux.route(nowhere, &check("first")), None, "forgotten");
        assert_eq!(
            demux.route(nowhere, &check("other")),
            Some(2),
            "others untouched"
        );
    }
}
