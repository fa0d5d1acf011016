//! System services: parts of mesh-link that plug into a node the way a handler does, under a
//! reserved handler id, and that the node also tells about peers, time and shutdown. Shared
//! objects are one. A service builds on the node's [`Core`](crate::core::Core), never on the
//! node itself, so the dependency points one way.

use bytes::Bytes;
use mesh_discovery::NodeKey;

/// What a node dispatches to a service, all from the node's own tasks.
pub(crate) trait Service: Send + Sync {
    /// A message for the service's handler id arrived from `from`. `Some` is the answer to a
    /// request (or, for a one-way message, a complaint about it); `Err` names what was wrong
    /// with the message.
    fn on_message(&self, from: NodeKey, payload: &[u8]) -> Option<Result<Bytes, String>>;

    /// The transport's session with `peer` ended (timed out, closed, restarted): messages
    /// between us may have been lost.
    fn peer_reset(&self, peer: NodeKey);

    /// `node` left the mesh (see `MembershipEvent::Left` for what counts as evidence).
    fn node_left(&self, node: NodeKey);

    /// Timer work due at `now`; returns when the service next has some. The node's
    /// maintenance task sleeps until then, or until the service pokes
    /// [`Core::timers`](crate::core::Core::timers) because a new timer comes sooner: an idle
    /// node wakes for nothing.
    fn maintain(&self, now: std::time::Instant) -> Option<std::time::Instant>;

    /// The node is stopping: queue what other nodes must be told before the transport
    /// closes.
    fn shutdown(&self);
}
