//! [`Outbox`]: many reliable one-way messages, one outcome.

use bytes::Bytes;
use mesh_discovery::NodeKey;
use mesh_rudp::Tally;

use super::send::{buffer_value, json_value, queue_options};
use super::{MeshNode, SendOptions, ToNodeKey};
use crate::core::send_error;
use crate::{typed, DeliveryError, Error, Message, SendReport};

/// An [`Outbox`]'s default window: messages in flight before a queue call waits.
pub const OUTBOX_WINDOW: u64 = 512;

/// Failures an [`OutboxReport`] keeps in detail; past it, only counted (a node that is gone
/// fails every message sent to it, and the sender may go on sending).
pub const OUTBOX_DETAILS: usize = mesh_rudp::TALLY_DETAILS;

/// Reliable one-way messages sent without a future to await each: queued in order, then
/// awaited together with [`flush`](Self::flush), which says how many were acknowledged and
/// which failed. For a stream of messages (state updates, events, logs) where
/// [`send`](MeshNode::send)'s one future per message costs more than the message itself: a
/// message queued here costs no channel, task or allocation of its own.
///
/// Nothing is lost silently: every message queued is counted by the next `flush` as delivered
/// or as failed, with its index (the order it was queued in, from 0) and the node it was for.
/// A queue call waits only while [`window`](Self::window) messages are in flight or the
/// node's send queue is full (back-pressure). Dropping the
/// outbox gives up on learning the outcomes, not on the messages: they are still sent (their
/// failures count in [`NodeStats`](crate::NodeStats)' transport stats).
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), mesh_link::Error> {
/// use mesh_link::{Bytes, MeshNode, Registry};
///
/// let registry = Registry::memory();
/// let a = MeshNode::builder().registry(registry.clone()).bind("127.0.0.1:0").start().await?;
/// let b = MeshNode::builder().registry(registry).bind("127.0.0.1:0").start().await?;
/// b.on_raw(7, |_data: Bytes, _ctx| async { Ok(None) });
///
/// let mut outbox = a.outbox();
/// for i in 0..1000u32 {
///     outbox.send_bytes(7, b.local_key(), Bytes::from(i.to_le_bytes().to_vec())).await?;
/// }
/// let report = outbox.flush().await;
/// assert_eq!((report.delivered, report.failed), (1000, 0));
/// # a.stop().await; b.stop().await;
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct Outbox {
    node: MeshNode,
    options: SendOptions,
    /// Most messages in flight before a queue call waits for half of them to settle.
    window: u64,
    tally: Tally,
    /// The next message's index.
    next: u64,
    /// Outcomes known at once (this node, Node nodes, refusals), not yet reported.
    settled: OutboxReport,
}

/// What an [`Outbox`] learned since its last [`flush`](Outbox::flush).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct OutboxReport {
    /// Messages acknowledged.
    pub delivered: u64,
    /// Messages that failed.
    pub failed: u64,
    /// The first [`OUTBOX_DETAILS`] failures: each message's index, node and error.
    pub failures: Vec<OutboxFailure>,
}

impl OutboxReport {
    /// Whether every message was delivered.
    pub fn is_ok(&self) -> bool {
        self.failed == 0
    }

    fn fail(&mut self, index: u64, node: NodeKey, error: DeliveryError) {
        self.failed += 1;
        if self.failures.len() < OUTBOX_DETAILS {
            self.failures.push(OutboxFailure { index, node, error });
        }
    }

    fn add(&mut self, index: u64, report: SendReport) {
        self.delivered += report.delivered.len() as u64;
        for (node, error) in report.failed {
            self.fail(index, node, error);
        }
    }
}

/// One message of an [`Outbox`] that failed.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct OutboxFailure {
    /// Its index: the order it was queued in, from 0.
    pub index: u64,
    /// The node it was for.
    pub node: NodeKey,
    /// Why.
    pub error: DeliveryError,
}

impl MeshNode {
    /// An [`Outbox`] for many reliable one-way messages awaited together.
    pub fn outbox(&self) -> Outbox {
        Outbox {
            node: self.clone(),
            options: SendOptions::default(),
            window: OUTBOX_WINDOW,
            tally: Tally::new(),
            next: 0,
            settled: OutboxReport::default(),
        }
    }
}

impl Outbox {
    /// Sends with `options` (ordered delivery; the relay limit does not apply, each message
    /// goes to one node).
    #[must_use]
    pub fn with_options(mut self, options: SendOptions) -> Self {
        self.options = options;
        self
    }

    /// At most `n` messages (at least 1) in flight, queued and not yet acknowledged; past it,
    /// a queue call waits until half of them have settled. Default [`OUTBOX_WINDOW`]. A
    /// wider window lets more wait in the node's send queue (bounded by
    /// `send_queue_per_peer` bytes per node), which a slow receiver turns into latency. The
    /// window counts messages to every node: a node that stops answering holds its messages
    /// in it until `peer_timeout` fails them, and with them the others' turn. Keep an outbox
    /// per node where one node's silence must not slow the rest.
    #[must_use]
    pub fn window(mut self, n: u64) -> Self {
        self.window = n.max(1);
        self
    }

    /// Queues the typed message `msg` to `node` (at `M::ID`); returns its index. `Err` only
    /// when it could not be queued at all (encoding, size, a stopped node); its delivery is
    /// reported by [`flush`](Self::flush).
    pub async fn tell<M: Message>(&mut self, node: impl ToNodeKey, msg: &M) -> Result<u64, Error> {
        let data = typed::encode(M::CODEC, msg).map_err(Error::Encode)?;
        let fingerprint = const { typed::one_way_fingerprint::<M>() };
        self.queue(M::ID, Some(fingerprint), node.node_key(), data, |_| {
            json_value(msg)
        })
        .await
    }

    /// Queues bytes already encoded to handler `id` on `node`; returns the message's index.
    /// As [`tell`](Self::tell).
    pub async fn send_bytes(
        &mut self,
        id: u16,
        node: impl ToNodeKey,
        data: Bytes,
    ) -> Result<u64, Error> {
        self.queue(id, None, node.node_key(), data, |d| Ok(buffer_value(d)))
            .await
    }

    /// Messages queued and not yet delivered or failed.
    pub fn pending(&self) -> u64 {
        self.tally.pending()
    }

    /// Waits until every message queued so far was delivered or failed, and reports them
    /// (each once: the next flush reports only what is queued after this one).
    pub async fn flush(&mut self) -> OutboxReport {
        self.tally.settled().await;
        let taken = self.tally.take();
        let mut report = std::mem::take(&mut self.settled);
        report.delivered += taken.delivered;
        // Failures past the tally's detail limit: counted, not described.
        report.failed += taken.failed - taken.failures.len() as u64;
        for f in taken.failures {
            report.fail(f.tag, NodeKey::from(f.peer), f.error.into());
        }
        report
    }

    async fn queue(
        &mut self,
        id: u16,
        fingerprint: Option<u64>,
        k: NodeKey,
        data: Bytes,
        value: impl FnOnce(&Bytes) -> Result<serde_json::Value, Error>,
    ) -> Result<u64, Error> {
        let node = &self.node;
        node.check_size(data.len())?;
        if self.tally.pending() >= self.window {
            self.tally.at_most(self.window / 2).await;
        }
        let index = self.next;
        let direct = if node.takes_node_wire(k) {
            None
        } else {
            node.direct(k, id, fingerprint, &data)
        };
        let Some(envelope) = direct else {
            // This node, a Node node, or a stopping node: the ordinary path, awaited here.
            let report = node
                .send_split(id, fingerprint, [k], data, self.options, value)
                .await?;
            self.next += 1;
            self.settled.add(index, report);
            return Ok(index);
        };
        // Queued now, or (the node's queue full) after a wait for room, boxed inside.
        let queued = node
            .inner
            .core
            .transport
            .queue_tallied(
                k.socket_addr(),
                envelope,
                queue_options(self.options),
                &self.tally,
                index,
            )
            .await;
        self.next += 1;
        if let Err(e) = queued {
            self.settled.fail(index, k, send_error(e).into());
        }
        Ok(index)
    }
}
