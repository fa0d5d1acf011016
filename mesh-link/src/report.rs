//! What a node sees and has counted: a [`NodeReport`]. Read locally with
//! [`MeshNode::report`](crate::MeshNode::report), asked of another node over the mesh with
//! [`MeshNode::report_of`](crate::MeshNode::report_of) (the `mesh-link stats` command), and
//! published to the [`metrics`] facade every `Config::metrics_interval` (the `mesh-link node
//! --metrics` exporter serves them to Prometheus).
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), mesh_link::Error> {
//! use mesh_link::{MeshNode, Registry};
//! let registry = Registry::memory();
//! let a = MeshNode::builder().registry(registry.clone()).start().await?;
//! let b = MeshNode::builder().registry(registry).start().await?;
//! a.ping(b.local_key(), std::time::Duration::from_secs(1)).await.unwrap();
//! // b's view of the mesh, asked over the mesh.
//! let report = a.report_of(b.local_key(), std::time::Duration::from_secs(1)).await.unwrap();
//! assert_eq!(report.members.len(), 2);
//! assert!(report.peers.iter().any(|p| p.addr == a.local_key().socket_addr()));
//! assert!(report.counters["transport.datagrams_received"] > 0);
//! # let _ = a.stop().await; let _ = b.stop().await;
//! # Ok(()) }
//! ```

use std::collections::BTreeMap;
use std::net::SocketAddr;

use mesh_discovery::NodeRecord;
use mesh_rudp::PeerStats;
use serde::{Deserialize, Serialize};

/// A node's view of the mesh and its counters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct NodeReport {
    /// The node's own record.
    pub node: NodeRecord,
    /// Milliseconds since it started.
    pub uptime_ms: u64,
    /// The members it sees (itself included), by address.
    pub members: Vec<NodeRecord>,
    /// The peers its transport has sessions with, by address.
    pub peers: Vec<PeerReport>,
    /// Every counter and gauge of every layer, by name (`node.*`, `transport.*`,
    /// `discovery.*`, `shared.*`); [`GAUGES`] lists those that are levels, not totals.
    pub counters: BTreeMap<String, u64>,
}

/// The counters of a [`NodeReport`] that are levels (they go down as well as up).
pub const GAUGES: [&str; 7] = [
    "node.pending_requests",
    "node.running_handlers",
    "node.members",
    "transport.peers",
    "transport.reassembly_bytes",
    "shared.objects",
    "node.uptime_ms",
];

/// One transport session as its node sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct PeerReport {
    /// The peer's address.
    pub addr: SocketAddr,
    /// Smoothed round-trip time, µs; 0 until one is measured (a peer that only sent to this
    /// node, such as a `mesh-link ping` client, has none).
    pub srtt_us: u64,
    /// Round-trip variation, µs.
    pub rttvar_us: u64,
    /// The retransmission timeout now, µs.
    pub rto_us: u64,
    /// Data frames sent (first transmissions).
    pub frames_sent: u64,
    /// Data frames sent again.
    pub retransmitted: u64,
    /// Data frames received.
    pub frames_received: u64,
    /// Duplicates received.
    pub duplicates: u64,
    /// Payload bytes sent.
    pub bytes_sent: u64,
    /// Payload bytes received.
    pub bytes_received: u64,
    /// Frames in flight now.
    pub in_flight_frames: u64,
    /// Bytes in flight now.
    pub in_flight_bytes: u64,
    /// The congestion window, bytes.
    pub cwnd: u64,
    /// Messages queued and not yet acknowledged.
    pub pending_messages: u64,
    /// The largest datagram sent to this peer now, bytes: found by path-MTU discovery (0 in
    /// a report from a build without it).
    #[serde(default)]
    pub mtu: u64,
}

impl PeerReport {
    pub(crate) fn new(addr: SocketAddr, s: &PeerStats) -> Self {
        let us = |d: std::time::Duration| d.as_micros().min(u128::from(u64::MAX)) as u64;
        Self {
            addr,
            srtt_us: if s.rtt_measured { us(s.srtt) } else { 0 },
            rttvar_us: us(s.rttvar),
            rto_us: us(s.rto),
            frames_sent: s.frames_sent,
            retransmitted: s.retransmitted,
            frames_received: s.frames_received,
            duplicates: s.duplicates,
            bytes_sent: s.bytes_sent,
            bytes_received: s.bytes_received,
            in_flight_frames: s.in_flight_frames as u64,
            in_flight_bytes: s.in_flight_bytes as u64,
            cwnd: s.cwnd as u64,
            pending_messages: s.pending_messages as u64,
            mtu: s.mtu as u64,
        }
    }

    /// Retransmissions per frame sent: the loss the sender saw (0 with nothing sent).
    pub fn loss(&self) -> f64 {
        if self.frames_sent == 0 {
            0.0
        } else {
            self.retransmitted as f64 / self.frames_sent as f64
        }
    }
}

/// Publishes `report` to the [`metrics`] facade: each counter as `mesh_<layer>_<name>_total`
/// (gauges without `_total`), members and per-peer round trips as gauges, every series
/// labelled with the node's address. A no-op without an installed recorder.
pub(crate) fn publish(report: &NodeReport) {
    let node = report.node.key.to_string();
    for (name, value) in &report.counters {
        let metric = format!("mesh_{}", name.replace('.', "_"));
        if GAUGES.contains(&name.as_str()) {
            metrics::gauge!(metric, "node" => node.clone()).set(*value as f64);
        } else {
            metrics::counter!(format!("{metric}_total"), "node" => node.clone()).absolute(*value);
        }
    }
    for p in &report.peers {
        let labels = [("node", node.clone()), ("peer", p.addr.to_string())];
        if p.srtt_us > 0 {
            metrics::gauge!("mesh_peer_rtt_seconds", &labels).set(p.srtt_us as f64 / 1e6);
        }
        metrics::gauge!("mesh_peer_in_flight_bytes", &labels).set(p.in_flight_bytes as f64);
        metrics::gauge!("mesh_peer_mtu_bytes", &labels).set(p.mtu as f64);
        metrics::counter!("mesh_peer_retransmitted_total", &labels).absolute(p.retransmitted);
        metrics::counter!("mesh_peer_frames_sent_total", &labels).absolute(p.frames_sent);
    }
}
