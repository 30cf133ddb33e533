//! A node as the cluster sees it: the entry each node writes to Redis (its address, load and
//! state), and the choice of the node a refused client is sent to.

use serde::{Deserialize, Serialize};

/// One node's entry in Redis (`sfu:node:<id>`, JSON), rewritten every `cluster.refresh` with a
/// TTL of `cluster.node_ttl`: a node whose entry expired is gone.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct NodeInfo {
    pub id: String,
    /// Random per process: two processes configured with one `node_id` tell each other apart.
    pub instance: String,
    /// The node's HTTP base URL (`cluster.advertise_url`): its admin API and web client.
    pub url: String,
    /// Its signaling WebSocket, the `url` a refused join names.
    pub signal_url: String,
    pub version: String,
    /// Participants joined now, and the most it takes (`room.max_total_participants`).
    pub participants: usize,
    pub max_participants: usize,
    pub rooms: usize,
    /// The busiest media worker's load (0..1), and the load past which it takes no one more
    /// (`rtc.max_worker_load`; 1: no budget).
    pub load: f64,
    pub max_load: f64,
    /// RTP packets forwarded per second over the last refresh.
    pub packets_per_second: f64,
    /// Draining after SIGTERM: takes no joins, its rooms may move.
    pub draining: bool,
    pub started_at_ms: u64,
    pub updated_at_ms: u64,
}

impl NodeInfo {
    /// Whether the node takes new participants: not draining, under its participant cap and
    /// its CPU budget.
    pub fn has_room(&self) -> bool {
        !self.draining
            && self.participants < self.max_participants
            && (self.max_load >= 1.0 || self.load < self.max_load)
    }

    /// How full the node is, 0..1: the larger of its participant share and its CPU share.
    pub fn fullness(&self) -> f64 {
        let people = self.participants as f64 / self.max_participants.max(1) as f64;
        let cpu = self.load / self.max_load.clamp(0.01, 1.0);
        people.max(cpu)
    }
}

/// The node to send a client to instead of `me`: the least full of the others that take new
/// participants, or none.
pub fn least_loaded<'a>(nodes: &'a [NodeInfo], me: &str) -> Option<&'a NodeInfo> {
    nodes
        .iter()
        .filter(|n| n.id != me && n.has_room())
        .min_by(|a, b| a.fullness().total_cmp(&b.fullness()))
}

/// The signaling WebSocket URL of a node reached at `http_url`: `https://h` -> `wss://h/ws`.
pub fn signal_url(http_url: &str) -> String {
    let base = http_url.trim_end_matches('/');
    match base.strip_prefix("https://") {
        Some(rest) => format!("wss://{rest}/ws"),
        None => format!("ws://{}/ws", base.trim_start_matches("http://")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: &str, participants: usize, load: f64, draining: bool) -> NodeInfo {
        NodeInfo {
            id: id.into(),
            instance: String::new(),
            url: format!("http://{id}:7880"),
            signal_url: signal_url(&format!("http://{id}:7880")),
            version: "0".into(),
            participants,
            max_participants: 100,
            rooms: 1,
            load,
            max_load: 0.9,
            packets_per_second: 0.0,
            draining,
            started_at_ms: 0,
            updated_at_ms: 0,
        }
    }

    #[test]
    fn a_client_is_sent_to_the_least_full_node_that_takes_it() {
        let nodes = vec![
            node("me", 10, 0.1, false),
            node("busy", 90, 0.2, false),
            node("hot", 10, 0.8, false),
            node("calm", 40, 0.3, false),
            node("leaving", 0, 0.0, true),
            node("full", 100, 0.0, false),
            node("over-budget", 0, 0.95, false),
        ];
        // calm: 40% of its participants, 33% of its CPU budget; hot is at 89% of its budget.
        assert_eq!(
            least_loaded(&nodes, "me").map(|n| n.id.as_str()),
            Some("calm")
        );
        assert_eq!(least_loaded(&nodes[..1], "me"), None, "never itself");
        assert_eq!(least_loaded(&nodes[4..], "me"), None);
    }

    #[test]
    fn signal_urls_follow_the_scheme() {
        assert_eq!(signal_url("http://10.0.0.3:7880"), "ws://10.0.0.3:7880/ws");
        assert_eq!(
            signal_url("https://sfu-3.example.com/"),
            "wss://sfu-3.example.com/ws"
        );
    }
}
