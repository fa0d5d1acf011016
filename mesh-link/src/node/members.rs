//! What a node sees of the mesh (its view, kept by `mesh-discovery`) and its counters.

use std::sync::atomic::Ordering;

use mesh_discovery::{DiscoveryStats, MembershipEvent, NodeKey, NodeRecord};
use mesh_rudp::EndpointStats;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::broadcast;

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;

use super::{MeshNode, NodeStats, ToNodeKey};
use crate::report::{NodeReport, PeerReport};
use crate::shared::SharedObjects;
use crate::{Error, RequestError};

impl MeshNode {
    /// This node's shared objects.
    ///
    /// ```
    /// use std::time::Duration;
    /// use mesh_link::{MeshNode, Registry};
    /// use mesh_link::shared::Properties;
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let registry = Registry::memory();
    /// let a = MeshNode::builder().registry(registry.clone()).bind("127.0.0.1:0").start().await?;
    /// let b = MeshNode::builder().registry(registry).bind("127.0.0.1:0").start().await?;
    ///
    /// // b creates an object owned by a; a fetches it by its mid.
    /// let props = Properties::new().number("counter", 0.0, 0.0..=100.0).map("members");
    /// let so = b.shared().create(props, Duration::from_secs(60), a.local_key()).await?;
    /// so.inc("counter", 10.0).await?;
    /// so.add("members", "bob", &"Bob").await?;
    /// assert!(so.inc("counter", 500.0).await.is_err()); // past max: refused, not clamped
    ///
    /// let on_a = a.shared().get(so.mid()).await?;
    /// assert_eq!(on_a.get_as::<f64>("counter"), Some(10.0));
    /// # b.stop().await; a.stop().await;
    /// # Ok(()) }
    /// ```
    pub fn shared(&self) -> SharedObjects {
        SharedObjects::new(self.inner.shared.clone(), self.keepalive())
    }

    /// This node's key (address and bound port).
    pub fn local_key(&self) -> NodeKey {
        self.inner.local()
    }

    /// This node's record as published (address, port, type, values, backups).
    pub fn info(&self) -> NodeRecord {
        self.inner.membership.info()
    }

    /// This node's type.
    pub fn node_type(&self) -> String {
        self.inner.membership.node_type()
    }

    /// Changes this node's type; others see it within an update interval.
    pub fn set_type(&self, node_type: impl Into<String>) {
        self.inner.membership.set_type(node_type);
    }

    /// Publishes a value others read with [`node_value`](Self::node_value).
    pub fn set_value<T: Serialize + ?Sized>(&self, name: &str, value: &T) -> Result<(), Error> {
        Ok(self.inner.membership.set_value(name, value)?)
    }

    /// Removes a published value.
    pub fn remove_value(&self, name: &str) {
        self.inner.membership.remove_value(name);
    }

    /// A node's value decoded as `T`: `None` if the node or value is unknown or not a `T`.
    pub fn node_value<T: DeserializeOwned>(&self, node: impl ToNodeKey, name: &str) -> Option<T> {
        self.inner.membership.node_value(node.node_key(), name)
    }

    /// Every live node, this one included, ordered by key.
    pub fn nodes(&self) -> Vec<NodeRecord> {
        self.inner.membership.nodes()
    }

    /// Live nodes of a type, this one included if it has the type.
    pub fn nodes_by_type(&self, node_type: &str) -> Vec<NodeRecord> {
        self.inner.membership.nodes_by_type(node_type)
    }

    /// One live node's record.
    pub fn node(&self, node: impl ToNodeKey) -> Option<NodeRecord> {
        self.inner.membership.node(node.node_key())
    }

    /// Whether a node is a live member (this one included).
    pub fn node_exists(&self, node: impl ToNodeKey) -> bool {
        self.inner.membership.node_exists(node.node_key())
    }

    /// Whether `node` is this node.
    pub fn is_local_node(&self, node: impl ToNodeKey) -> bool {
        node.node_key() == self.inner.local()
    }

    /// The backups a node chose (this node's own with `local_key()`).
    pub fn backup_nodes(&self, node: impl ToNodeKey) -> Vec<NodeKey> {
        self.inner.membership.backups_of(node.node_key())
    }

    /// Replaces dead nodes by their first live backup of `node_type`; a dead node without
    /// one is left out (the original returned the dead node).
    pub fn prepare_nodes(&self, node_type: &str, nodes: &[NodeKey]) -> Vec<NodeKey> {
        self.inner.membership.prepare_nodes(node_type, nodes)
    }

    /// Runs `f` at the start of each update interval, before this node publishes.
    pub fn on_update(&self, f: impl Fn() + Send + Sync + 'static) {
        self.inner.membership.on_update(f);
    }

    /// Runs `f` after each update interval with every live node.
    pub fn on_updated(&self, f: impl Fn(&[NodeRecord]) + Send + Sync + 'static) {
        self.inner.membership.on_updated(f);
    }

    /// Joins, updates and leaves of other nodes, from now on, in the order the view changed.
    /// A receiver that falls more than 4096 events behind gets `Lagged` and should re-read
    /// [`nodes`](Self::nodes).
    pub fn membership_events(&self) -> broadcast::Receiver<MembershipEvent> {
        self.inner.membership.events()
    }

    /// Waits until `cond` holds, re-checked after every membership change and every update
    /// interval. Bound it with `tokio::time::timeout`.
    pub async fn wait_for(&self, mut cond: impl FnMut(&MeshNode) -> bool) {
        self.inner.membership.wait_for(|_| cond(self)).await;
    }

    /// Counters of the messaging layer.
    pub fn stats(&self) -> NodeStats {
        let c = &self.inner.counters;
        NodeStats {
            malformed: c.malformed.load(Ordering::Relaxed)
                + self.inner.core.malformed_answers.load(Ordering::Relaxed),
            no_handler: c.no_handler.load(Ordering::Relaxed),
            type_mismatch: c.type_mismatch.load(Ordering::Relaxed),
            overloaded: c.overloaded.load(Ordering::Relaxed),
            pending_requests: self.inner.core.pending.len(),
            running_handlers: self.inner.inflight.load(Ordering::Relaxed),
        }
    }

    /// Counters of the transport.
    pub fn transport_stats(&self) -> EndpointStats {
        self.inner.core.transport.stats()
    }

    /// Counters of discovery.
    pub fn discovery_stats(&self) -> DiscoveryStats {
        self.inner.membership.stats()
    }

    /// This node's view of the mesh (members; transport sessions with their round trips,
    /// retransmissions and flight) and every layer's counters. Other nodes read it with
    /// [`report_of`](Self::report_of); see [`crate::report`].
    pub fn report(&self) -> NodeReport {
        let n = self.stats();
        let t = self.transport_stats();
        let d = self.discovery_stats();
        let c = &self.inner.counters;
        let load = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
        let mut members = self.nodes();
        members.sort_by_key(|r| r.key);
        let mut peers: Vec<PeerReport> = self
            .inner
            .core
            .transport
            .all_peer_stats()
            .iter()
            .map(|(a, s)| PeerReport::new(*a, s))
            .collect();
        peers.sort_by_key(|p| p.addr);
        let uptime_ms = self.inner.started.elapsed().as_millis() as u64;
        let counters: BTreeMap<String, u64> = [
            ("node.malformed", n.malformed),
            ("node.type_mismatch", n.type_mismatch),
            ("node.no_handler", n.no_handler),
            ("node.overloaded", n.overloaded),
            ("node.pending_requests", n.pending_requests as u64),
            ("node.running_handlers", n.running_handlers as u64),
            ("node.handled", load(&c.handled)),
            ("node.handler_failed", load(&c.handler_failed)),
            ("node.joined", load(&c.joined)),
            ("node.requests", load(&self.inner.core.requests.asked)),
            (
                "node.requests_timed_out",
                load(&self.inner.core.requests.timed_out),
            ),
            (
                "node.requests_undelivered",
                load(&self.inner.core.requests.undelivered),
            ),
            (
                "node.requests_refused",
                load(&self.inner.core.requests.refused),
            ),
            (
                "node.requests_failed_other",
                load(&self.inner.core.requests.other),
            ),
            ("node.left", load(&c.left)),
            ("node.members", members.len() as u64),
            ("node.uptime_ms", uptime_ms),
            ("transport.datagrams_sent", t.datagrams_sent),
            ("transport.bytes_sent", t.bytes_sent),
            ("transport.datagrams_received", t.datagrams_received),
            ("transport.bytes_received", t.bytes_received),
            ("transport.dropped_invalid", t.dropped_invalid),
            (
                "transport.dropped_unauthenticated",
                t.dropped_unauthenticated,
            ),
            ("transport.dropped_replay", t.dropped_replay),
            ("transport.dropped_stale_session", t.dropped_stale_session),
            ("transport.dropped_peer_limit", t.dropped_peer_limit),
            ("transport.dropped_no_room", t.dropped_no_room),
            ("transport.dropped_out_of_window", t.dropped_out_of_window),
            ("transport.dropped_unreliable", t.dropped_unreliable),
            ("transport.peers", t.peers as u64),
            ("transport.reassembly_bytes", t.reassembly_bytes as u64),
            ("transport.messages_received", t.messages_received),
            ("transport.messages_delivered", t.messages_delivered),
            ("transport.messages_failed", t.messages_failed),
            ("transport.retransmitted", t.retransmitted),
            ("transport.duplicates", t.duplicates),
            ("transport.sends_held", t.sends_held),
            ("discovery.registry_calls", d.registry_calls),
            ("discovery.registry_errors", d.registry_errors),
            ("discovery.skipped_records", d.skipped_records),
            ("discovery.reconciliations", d.reconciliations),
            ("shared.objects", self.shared().len() as u64),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        NodeReport {
            node: self.info(),
            uptime_ms,
            members,
            peers,
            counters,
        }
    }

    /// Asks `node` for its [`report`](Self::report), over the mesh (its system handler
    /// [`STATS`](crate::system::STATS)): what `mesh-link stats` prints.
    pub async fn report_of(
        &self,
        node: impl ToNodeKey,
        timeout: Duration,
    ) -> Result<NodeReport, RequestError> {
        let node = node.node_key();
        let answer = self
            .request_bytes(super::system::STATS, node, Bytes::new(), timeout, true)
            .await?;
        serde_json::from_slice(&answer).map_err(|e| RequestError::BadResponse {
            node,
            message: format!("not a report: {e}"),
        })
    }
}
