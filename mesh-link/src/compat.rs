//! Node-compat mode (feature `node-compat`, config `node_compat = true`): a node that joins a
//! mesh of the original Node.js mesh-link 0.13.6, for a rolling migration.
//!
//! The node keeps one UDP port. Datagrams that start with our magic go to our transport as
//! always; every other datagram is the original's wire and comes here. It
//! announces itself in both Redis schemas ([`mesh_discovery::compat::CompatRegistry`]), so Node
//! nodes list it in `getNodes()` and it lists them in [`MeshNode::nodes`], as records with
//! [`protocol`](mesh_discovery::NodeRecord::protocol)
//! [`NODE_PROTOCOL`](mesh_discovery::compat::NODE_PROTOCOL). `send`, `request` and `usend` to
//! such a node take the original's wire, with the message as JSON (serde); a Node node's
//! `send(id, ..)` reaches this node's handler `id`, which gets its data decoded from JSON.
//!
//! What the original did and this does not (all on the compat path; our own wire is as ever):
//! - retransmission: one timer for every message in flight (not one per message), attempts at
//!   0, 200, 600, 1400 and 2600 ms, then the send fails and says so. The original's receivers
//!   forget what they have seen after 2999 ms, so a retransmission we send never runs their
//!   handler twice; theirs to us can come for 18.4 s, and we remember 30 s;
//! - de-duplication by sender and id (not by id alone), bounded ([`SEEN_MAX`]);
//! - partial messages bounded per sender, in all, and in bytes ([`mesh_wire::compat::Limits`]),
//!   expired after 10 s;
//! - an answer is taken only from the node asked, a request to a node without the handler is
//!   answered with an error at once (the original stayed silent), a relay list is forwarded
//!   whether or not the handler exists.

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;
use mesh_discovery::NodeKey;
use mesh_wire::compat::{
    self as wire, Chunk, Datagram, Endpoint, Envelope, Id, Packet, PacketKind, Reassembly,
    Unpacked, Usend, NO_RESPONSE,
};
use parking_lot::Mutex;
use rand_core::{Rng as _, SeedableRng as _};
use serde_json::Value;
use tokio::sync::{mpsc, oneshot, Notify};
use tracing::debug;

use crate::core::Core;
use crate::error::{DeliveryError, RequestError};
use crate::handler::{self, Failure};
use crate::node::Inner;
use crate::MeshNode;

/// When a reliable datagram is sent again, after the first send; the send fails at the
/// first time past the last. All within the original's de-duplication memory (2999 ms).
const RETRIES: [Duration; 4] = [
    Duration::from_millis(200),
    Duration::from_millis(600),
    Duration::from_millis(1400),
    Duration::from_millis(2600),
];
/// When a reliable datagram not acknowledged by then counts as lost for good.
const GIVE_UP: Duration = Duration::from_millis(2950);
/// How often the timer looks at what is in flight (only while something is).
const TICK: Duration = Duration::from_millis(25);
/// How long a (sender, id) is remembered: longer than the original's 18.4 s of retries.
pub const SEEN_FOR: Duration = Duration::from_secs(30);
/// The most (sender, id) pairs remembered; past it the oldest is forgotten (and counted).
pub const SEEN_MAX: usize = 1 << 18;
/// Reliable datagrams in flight at most (chunks waiting for their acknowledgement).
pub const MAX_IN_FLIGHT: usize = 1 << 16;
/// Requests waiting for answers at most.
pub const MAX_WAITING: usize = 1 << 16;
/// Datagrams queued between the socket and the compat task; past it they are dropped (the
/// sender retransmits, as after a loss).
const INBOX: usize = 4096;
/// Partial messages older than this are dropped.
const PARTIAL_FOR: Duration = Duration::from_secs(10);
/// The largest unreliable datagram (one UDP/IPv4 datagram).
const MAX_USEND: usize = 65_507;

/// Counters of the compat path.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct NodeWireStats {
    /// Datagrams received in the original's wire.
    pub datagrams_in: u64,
    /// Datagrams sent in it (retransmissions and acknowledgements included).
    pub datagrams_out: u64,
    /// Reliable datagrams sent again.
    pub retransmitted: u64,
    /// Reliable datagrams never acknowledged (their message failed).
    pub gave_up: u64,
    /// Reliable datagrams received again and not delivered again.
    pub duplicates: u64,
    /// Datagrams, chunks, packets or payloads refused as malformed.
    pub malformed: u64,
    /// Datagrams dropped because the compat task was behind.
    pub dropped: u64,
    /// Requests and messages handed to handlers.
    pub handled: u64,
    /// (sender, id) pairs forgotten early because the memory was full.
    pub forgotten: u64,
}

#[derive(Default)]
struct Counters {
    datagrams_in: AtomicU64,
    datagrams_out: AtomicU64,
    retransmitted: AtomicU64,
    gave_up: AtomicU64,
    duplicates: AtomicU64,
    malformed: AtomicU64,
    dropped: AtomicU64,
    handled: AtomicU64,
    forgotten: AtomicU64,
}

/// The original's wire on this node's socket.
pub(crate) struct NodeWire {
    core: Arc<Core>,
    state: Mutex<State>,
    /// Wakes the timer when something is put in flight.
    busy: Notify,
    counters: Counters,
}

struct State {
    rng: rand_pcg::Pcg64Mcg,
    parts: Reassembly<SocketAddr>,
    last_expiry: Instant,
    seen: Seen,
    in_flight: HashMap<Id, InFlight>,
    waiting: HashMap<Id, Waiting>,
    pongs: HashMap<SocketAddr, Vec<oneshot::Sender<()>>>,
}

/// A reliable datagram waiting for its acknowledgement.
struct InFlight {
    to: SocketAddr,
    datagram: Vec<u8>,
    sent: Instant,
    tries: usize,
    /// With the acknowledgement: the next chunk of a message sent one chunk at a time, or
    /// the message's outcome after its last chunk.
    then: Option<Rest>,
}

/// The rest of a message sent chunk by chunk (the original's receivers want a request's
/// chunks one at a time).
struct Rest {
    chunks: VecDeque<Vec<u8>>,
    done: oneshot::Sender<Result<(), DeliveryError>>,
}

/// A request waiting for its answer.
struct Waiting {
    from: SocketAddr,
    answer: oneshot::Sender<Unpacked>,
}

/// (sender, id) pairs seen lately, oldest first.
#[derive(Default)]
struct Seen {
    set: HashSet<(SocketAddr, Id)>,
    order: VecDeque<(Instant, SocketAddr, Id)>,
}

impl Seen {
    /// Remembers the pair; false if it was already remembered. `forgot` counts pairs dropped
    /// early for room.
    fn insert(&mut self, now: Instant, from: SocketAddr, id: Id, forgot: &AtomicU64) -> bool {
        while let Some(&(t, f, i)) = self.order.front() {
            if now.duration_since(t) < SEEN_FOR && self.order.len() < SEEN_MAX {
                break;
            }
            if now.duration_since(t) < SEEN_FOR {
                forgot.fetch_add(1, Relaxed);
            }
            self.order.pop_front();
            self.set.remove(&(f, i));
        }
        if !self.set.insert((from, id)) {
            return false;
        }
        self.order.push_back((now, from, id));
        true
    }
}

impl NodeWire {
    /// Starts the compat path on `core`'s socket: the hook that takes the original's
    /// datagrams, the task that handles them for `inner`'s handlers, and the retransmission
    /// timer. The tasks end when the node's state is dropped.
    pub(crate) fn start(core: Arc<Core>, inner: Weak<Inner>, seed: u64) -> Arc<Self> {
        let wire = Arc::new(Self {
            core: core.clone(),
            state: Mutex::new(State {
                rng: rand_pcg::Pcg64Mcg::seed_from_u64(seed),
                parts: Reassembly::new(wire::Limits::default()),
                last_expiry: Instant::now(),
                seen: Seen::default(),
                in_flight: HashMap::new(),
                waiting: HashMap::new(),
                pongs: HashMap::new(),
            }),
            busy: Notify::new(),
            counters: Counters::default(),
        });
        let (tx, rx) = mpsc::channel::<(SocketAddr, Bytes)>(INBOX);
        let weak = Arc::downgrade(&wire);
        core.transport
            .set_foreign(Some(Arc::new(move |from: SocketAddr, bytes: &[u8]| {
                if tx.try_send((from, Bytes::copy_from_slice(bytes))).is_err() {
                    if let Some(w) = weak.upgrade() {
                        w.counters.dropped.fetch_add(1, Relaxed);
                    }
                }
            })));
        tokio::spawn(receive(Arc::downgrade(&wire), inner, rx));
        tokio::spawn(timer(Arc::downgrade(&wire)));
        wire
    }

    pub(crate) fn stats(&self) -> NodeWireStats {
        let c = &self.counters;
        NodeWireStats {
            datagrams_in: c.datagrams_in.load(Relaxed),
            datagrams_out: c.datagrams_out.load(Relaxed),
            retransmitted: c.retransmitted.load(Relaxed),
            gave_up: c.gave_up.load(Relaxed),
            duplicates: c.duplicates.load(Relaxed),
            malformed: c.malformed.load(Relaxed),
            dropped: c.dropped.load(Relaxed),
            handled: c.handled.load(Relaxed),
            forgotten: c.forgotten.load(Relaxed),
        }
    }

    fn transmit(&self, to: SocketAddr, datagram: &[u8]) {
        self.counters.datagrams_out.fetch_add(1, Relaxed);
        if let Err(e) = self.core.transport.send_foreign(to, datagram) {
            // Lost like a datagram on the way: retransmission recovers reliable ones.
            debug!(%to, error = %e, "compat send failed");
        }
    }

    /// Puts one chunk in flight as a reliable datagram.
    fn put_in_flight(&self, st: &mut State, to: SocketAddr, chunk: Vec<u8>, then: Option<Rest>) {
        let id = fresh(&mut st.rng);
        let datagram = Datagram::Send { id, chunk: &chunk }.encode();
        self.transmit(to, &datagram);
        st.in_flight.insert(
            id,
            InFlight {
                to,
                datagram,
                sent: Instant::now(),
                tries: 0,
                then,
            },
        );
    }

    /// Sends a packet reliably. Chunk by chunk (each after the last one's acknowledgement)
    /// when `one_at_a_time` (requests: the original's receivers want them so), else all at
    /// once (answers). Resolves when the last chunk is acknowledged, or with why not.
    fn send_packet(
        &self,
        to: SocketAddr,
        packet: &[u8],
        one_at_a_time: bool,
    ) -> oneshot::Receiver<Result<(), DeliveryError>> {
        let (done, rx) = oneshot::channel();
        let mut st = self.state.lock();
        let message = fresh(&mut st.rng);
        let chunks = match wire::split(message, packet, wire::SPLIT_SIZE) {
            Ok(c) => c,
            Err(e) => {
                let _ = done.send(Err(DeliveryError::Refused(e.to_string())));
                return rx;
            }
        };
        let room = MAX_IN_FLIGHT.saturating_sub(st.in_flight.len());
        let needs = if one_at_a_time { 1 } else { chunks.len() };
        if needs > room {
            let _ = done.send(Err(DeliveryError::Refused(format!(
                "{MAX_IN_FLIGHT} datagrams in flight to Node nodes already"
            ))));
            return rx;
        }
        let mut chunks: VecDeque<Vec<u8>> = chunks.into();
        if one_at_a_time {
            let first = chunks.pop_front().unwrap_or_default();
            self.put_in_flight(&mut st, to, first, Some(Rest { chunks, done }));
        } else {
            let last = chunks.pop_back().unwrap_or_default();
            for c in chunks {
                self.put_in_flight(&mut st, to, c, None);
            }
            let rest = Rest {
                chunks: VecDeque::new(),
                done,
            };
            self.put_in_flight(&mut st, to, last, Some(rest));
        }
        drop(st);
        self.busy.notify_one();
        rx
    }

    fn on_ack(&self, acked: Id) {
        let mut st = self.state.lock();
        let Some(f) = st.in_flight.remove(&acked) else {
            return;
        };
        let Some(mut rest) = f.then else { return };
        match rest.chunks.pop_front() {
            Some(next) => {
                self.put_in_flight(&mut st, f.to, next, Some(rest));
                drop(st);
                self.busy.notify_one();
            }
            None => {
                let _ = rest.done.send(Ok(()));
            }
        }
    }

    /// Sends a request or a one-way message (`rid` = [`NO_RESPONSE`]) to handler `handler`
    /// of the Node node at `to`, chunk by chunk as the original sends requests.
    fn send_request(
        &self,
        to: SocketAddr,
        rid: Id,
        handler: u16,
        data: Value,
    ) -> oneshot::Receiver<Result<(), DeliveryError>> {
        let envelope = Envelope::new(data, handler);
        let payload = serde_json::to_vec(&envelope).unwrap_or_default();
        let packet = Packet {
            kind: PacketKind::Request,
            rid,
            handler,
            payload: &payload,
        };
        self.send_packet(to, &packet.encode(), true)
    }

    /// A one-way message, resolved when the Node node acknowledged all of it.
    pub(crate) async fn send(
        &self,
        to: NodeKey,
        handler: u16,
        data: Value,
    ) -> Result<(), DeliveryError> {
        self.send_request(to.socket_addr(), NO_RESPONSE, handler, data)
            .await
            .unwrap_or(Err(DeliveryError::Stopped))
    }

    /// A request (by `usend` unless `reliable`; the answer comes reliably either way); the
    /// answer as the original packed it.
    pub(crate) async fn request(
        &self,
        to: NodeKey,
        handler: u16,
        data: Value,
        timeout: Duration,
        reliable: bool,
    ) -> Result<Unpacked, RequestError> {
        let addr = to.socket_addr();
        let (tx, answer) = oneshot::channel();
        let rid = {
            let mut st = self.state.lock();
            if st.waiting.len() >= MAX_WAITING {
                return Err(RequestError::TooManyRequests);
            }
            let rid = fresh(&mut st.rng);
            st.waiting.insert(
                rid,
                Waiting {
                    from: addr,
                    answer: tx,
                },
            );
            rid
        };
        let _forget = Forget(self, rid);
        let mut sent = if reliable {
            self.send_request(addr, rid, handler, data)
        } else {
            let datagram = Usend::new(rid, Envelope::new(data, handler)).encode();
            if datagram.len() > MAX_USEND {
                return Err(RequestError::Encode(format!(
                    "a usend to a Node node is one datagram: {} bytes, at most {MAX_USEND}",
                    datagram.len()
                )));
            }
            self.transmit(addr, &datagram);
            let (done, rx) = oneshot::channel();
            let _ = done.send(Ok(()));
            rx
        };
        let answer = async {
            tokio::pin!(answer);
            tokio::select! {
                a = &mut answer => a.ok(),
                s = &mut sent => match s {
                    Ok(Ok(())) => answer.await.ok(),
                    Ok(Err(error)) => return Err(RequestError::NotDelivered { node: to, error }),
                    Err(_) => None,
                },
            }
            .ok_or(RequestError::Stopped)
        };
        match tokio::time::timeout(timeout, answer).await {
            Ok(r) => r,
            Err(_) => Err(RequestError::Timeout {
                handler,
                node: to,
                after: timeout,
            }),
        }
    }

    /// An unreliable message (`usend`): one datagram, not fragmented, as the original sends it.
    pub(crate) fn usend(&self, to: NodeKey, handler: u16, data: Value) -> Result<(), String> {
        let datagram = Usend::new(NO_RESPONSE, Envelope::new(data, handler)).encode();
        if datagram.len() > MAX_USEND {
            return Err(format!(
                "a usend to a Node node is one datagram: {} bytes, at most {MAX_USEND}",
                datagram.len()
            ));
        }
        self.transmit(to.socket_addr(), &datagram);
        Ok(())
    }

    /// Whether the node at `to` answers the original's raw `ping` within `timeout`.
    pub(crate) async fn raw_ping(&self, to: NodeKey, timeout: Duration) -> bool {
        let (tx, rx) = oneshot::channel();
        let addr = to.socket_addr();
        {
            let mut st = self.state.lock();
            let waiting = st.pongs.entry(addr).or_default();
            if waiting.len() >= 64 {
                return true; // enough asking already; unknown counts as alive
            }
            waiting.push(tx);
        }
        self.transmit(addr, wire::RAW_PING);
        let alive = tokio::time::timeout(timeout, rx)
            .await
            .is_ok_and(|r| r.is_ok());
        let mut st = self.state.lock();
        if let Some(w) = st.pongs.get_mut(&addr) {
            w.retain(|s| !s.is_closed());
            if w.is_empty() {
                st.pongs.remove(&addr);
            }
        }
        alive
    }

    /// Fails everything in flight and waiting (the node stops).
    pub(crate) fn close(&self) {
        let mut st = self.state.lock();
        for (_, f) in st.in_flight.drain() {
            if let Some(rest) = f.then {
                let _ = rest.done.send(Err(DeliveryError::Stopped));
            }
        }
        st.waiting.clear();
        drop(st);
        self.core.transport.set_foreign(None);
    }

    /// How many messages are in flight to Node nodes.
    pub(crate) fn in_flight(&self) -> usize {
        self.state.lock().in_flight.len()
    }
}

impl MeshNode {
    /// The compat wire, if `key` is a Node node (a record read from the original's schema).
    pub(crate) fn node_wire_to(&self, key: NodeKey) -> Option<Arc<NodeWire>> {
        let wire = self.inner.node_wire.get()?;
        self.is_node_peer(key).then(|| wire.clone())
    }

    /// Whether `node` is a live node of the original Node.js package (node-compat mode): a
    /// record read from its Redis schema, whose messages take its wire.
    pub fn is_node_peer(&self, node: impl crate::ToNodeKey) -> bool {
        self.inner
            .membership
            .node(node.node_key())
            .is_some_and(|r| r.protocol == mesh_discovery::compat::NODE_PROTOCOL)
    }

    /// Counters of the original's wire (node-compat mode), or `None` without it.
    pub fn node_wire_stats(&self) -> Option<NodeWireStats> {
        self.inner.node_wire.get().map(|w| w.stats())
    }

    /// Splits targets into our nodes and Node nodes.
    pub(crate) fn split_node_peers(&self, nodes: Vec<NodeKey>) -> (Vec<NodeKey>, Vec<NodeKey>) {
        if self.inner.node_wire.get().is_none() {
            return (nodes, Vec::new());
        }
        nodes.into_iter().partition(|k| !self.is_node_peer(*k))
    }

    /// A request to a Node node: `msg` as JSON, the answer decoded from JSON.
    pub(crate) async fn request_node<M, R>(
        &self,
        wire: &NodeWire,
        id: u16,
        node: NodeKey,
        msg: &M,
        timeout: Duration,
        reliable: bool,
    ) -> Result<R, RequestError>
    where
        M: serde::Serialize + ?Sized,
        R: serde::de::DeserializeOwned,
    {
        let data = serde_json::to_value(msg).map_err(|e| RequestError::Encode(e.to_string()))?;
        let answer = wire.request(node, id, data, timeout, reliable).await?;
        decode_answer(node, id, answer)
    }

    /// One-way messages to Node nodes, each resolved by its acknowledgements.
    pub(crate) async fn send_node_peers(
        &self,
        id: u16,
        nodes: Vec<NodeKey>,
        data: Value,
        report: &mut crate::SendReport,
    ) {
        let Some(wire) = self.inner.node_wire.get() else {
            return;
        };
        let sends = nodes.into_iter().map(|k| {
            let data = data.clone();
            async move { (k, wire.send(k, id, data).await) }
        });
        for (k, r) in futures_util::future::join_all(sends).await {
            match r {
                Ok(()) => report.delivered.push(k),
                Err(e) => report.failed.push((k, e)),
            }
        }
    }
}

/// Forgets a request's waiting entry however its future ends.
struct Forget<'a>(&'a NodeWire, Id);

impl Drop for Forget<'_> {
    fn drop(&mut self) {
        self.0.state.lock().waiting.remove(&self.1);
    }
}

fn fresh(rng: &mut rand_pcg::Pcg64Mcg) -> Id {
    let mut id = [0u8; 16];
    rng.fill_bytes(&mut id);
    // UUIDv4's version and variant bits, as the original's ids have them.
    id[6] = (id[6] & 0x0f) | 0x40;
    id[8] = (id[8] & 0x3f) | 0x80;
    id
}

/// Retransmits what is due, fails what is past saving. Sleeps while nothing is in flight.
async fn timer(wire: Weak<NodeWire>) {
    loop {
        let Some(w) = wire.upgrade() else { return };
        if w.state.lock().in_flight.is_empty() {
            let idle = w.busy.notified();
            tokio::pin!(idle);
            idle.as_mut().enable();
            if w.state.lock().in_flight.is_empty() {
                // Re-checked now and then, so the task ends (within a second) with the node.
                let _ = tokio::time::timeout(Duration::from_secs(1), idle).await;
                continue;
            }
        }
        drop(w);
        tokio::time::sleep(TICK).await;
        let Some(w) = wire.upgrade() else { return };
        let now = Instant::now();
        let mut again = Vec::new();
        let mut failed = Vec::new();
        {
            let mut st = w.state.lock();
            st.in_flight.retain(|_, f| {
                let age = now.duration_since(f.sent);
                if age >= GIVE_UP {
                    failed.extend(f.then.take());
                    return false;
                }
                if f.tries < RETRIES.len() && age >= RETRIES[f.tries] {
                    f.tries += 1;
                    again.push((f.to, f.datagram.clone()));
                }
                true
            });
        }
        w.counters
            .retransmitted
            .fetch_add(again.len() as u64, Relaxed);
        for (to, d) in again {
            w.transmit(to, &d);
        }
        for rest in failed {
            w.counters.gave_up.fetch_add(1, Relaxed);
            let _ = rest.done.send(Err(DeliveryError::Unreachable(format!(
                "no acknowledgement from the Node node within {GIVE_UP:?}"
            ))));
        }
    }
}

/// Handles the original's datagrams, in the order they came.
async fn receive(
    wire: Weak<NodeWire>,
    inner: Weak<Inner>,
    mut rx: mpsc::Receiver<(SocketAddr, Bytes)>,
) {
    while let Some((from, bytes)) = rx.recv().await {
        let Some(w) = wire.upgrade() else { return };
        w.counters.datagrams_in.fetch_add(1, Relaxed);
        let Some(node) = inner.upgrade().as_ref().and_then(MeshNode::from_inner) else {
            return;
        };
        on_datagram(&w, &node, from, &bytes);
    }
}

fn malformed(w: &NodeWire, from: SocketAddr, what: &str, e: impl std::fmt::Display) {
    w.counters.malformed.fetch_add(1, Relaxed);
    debug!(%from, error = %e, "{what} from a Node node refused");
}

fn on_datagram(w: &Arc<NodeWire>, node: &MeshNode, from: SocketAddr, bytes: &[u8]) {
    if bytes == wire::RAW_PING {
        w.transmit(from, wire::RAW_PONG);
        return;
    }
    if bytes == wire::RAW_PONG {
        if let Some(waiting) = w.state.lock().pongs.remove(&from) {
            for s in waiting {
                let _ = s.send(());
            }
        }
        return;
    }
    let d = match Datagram::decode(bytes) {
        Ok(d) => d,
        Err(e) => return malformed(w, from, "a datagram", e),
    };
    match d {
        Datagram::Usend(json) => match Usend::decode(json) {
            Ok(u) => {
                let rid = u.rid().unwrap_or(NO_RESPONSE);
                on_request(w, node, from, rid, u.handler_id, u.data, false);
            }
            Err(e) => malformed(w, from, "a usend", e),
        },
        Datagram::Ack { acked, .. } => w.on_ack(acked),
        Datagram::Send { id, chunk } => {
            // Acknowledged always (a lost acknowledgement brings the datagram again),
            // delivered once.
            let (ack_id, taken) = w.take_chunk(from, id, chunk);
            w.transmit(from, &Datagram::Ack { ack_id, acked: id }.encode());
            match taken {
                Ok(Some(whole)) => on_packet(w, node, from, &whole),
                Ok(None) => {}
                Err(e) => malformed(w, from, "a chunk", e),
            }
        }
    }
}

impl NodeWire {
    /// A fresh acknowledgement id for reliable datagram `id` from `from`, and its chunk: the
    /// whole packet if it completed one, nothing if it did not or was seen before.
    fn take_chunk(
        &self,
        from: SocketAddr,
        id: Id,
        chunk: &[u8],
    ) -> (Id, Result<Option<Vec<u8>>, wire::CompatError>) {
        let mut st = self.state.lock();
        let ack_id = fresh(&mut st.rng);
        let now = Instant::now();
        if !st.seen.insert(now, from, id, &self.counters.forgotten) {
            self.counters.duplicates.fetch_add(1, Relaxed);
            return (ack_id, Ok(None));
        }
        let chunk = match Chunk::decode(chunk) {
            Ok(c) => c,
            Err(e) => return (ack_id, Err(e)),
        };
        if now.duration_since(st.last_expiry) >= Duration::from_secs(1) {
            st.last_expiry = now;
            if let Some(before) = now.checked_sub(PARTIAL_FOR) {
                st.parts.expire(before);
            }
        }
        (ack_id, st.parts.push(from, chunk, now))
    }
}

fn on_packet(w: &Arc<NodeWire>, node: &MeshNode, from: SocketAddr, whole: &[u8]) {
    let p = match Packet::decode(whole) {
        Ok(p) => p,
        Err(e) => return malformed(w, from, "a packet", e),
    };
    match p.kind {
        PacketKind::Request => match serde_json::from_slice::<Envelope>(p.payload) {
            Ok(envelope) => on_request(w, node, from, p.rid, p.handler, envelope, true),
            Err(e) => malformed(w, from, "a request's envelope", e),
        },
        PacketKind::Response => {
            let mut st = w.state.lock();
            // Only from the node asked (the original took an answer from anyone).
            if st.waiting.get(&p.rid).is_some_and(|x| x.from == from) {
                if let Some(x) = st.waiting.remove(&p.rid) {
                    drop(st);
                    let _ = x.answer.send(wire::unpack(p.payload));
                }
            }
        }
    }
}

/// A request or message from a Node node (or a Rust node in this mode): relayed on, then
/// handed to the handler in a task of its own; its answer goes back as the original's.
fn on_request(
    w: &Arc<NodeWire>,
    node: &MeshNode,
    from: SocketAddr,
    rid: Id,
    handler_id: u16,
    envelope: Envelope,
    reliable: bool,
) {
    let Envelope { data, nodes, .. } = envelope;
    for n in nodes {
        relay(w, &n, handler_id, data.clone());
    }
    let answer_to = (rid != NO_RESPONSE).then_some(rid);
    let handler = node
        .inner
        .handlers
        .read()
        .get(&handler_id)
        .map(|e| e.pick_any());
    let Some(h) = handler else {
        debug!(%from, handler = handler_id, "no handler for a Node node's message");
        if let Some(rid) = answer_to {
            let message = format!("no handler {handler_id} on {}", node.local_key());
            answer(w, from, rid, handler_id, wire::pack_error(&message));
        }
        return;
    };
    w.counters.handled.fetch_add(1, Relaxed);
    let mut ctx = node.context(NodeKey::from(from), reliable, handler_id);
    ctx.json = true;
    let input = match wire::buffer_of(&data) {
        Some(bytes) => Bytes::from(bytes),
        None => Bytes::from(serde_json::to_vec(&data).unwrap_or_default()),
    };
    let inner = node.inner.clone();
    inner
        .inflight
        .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
    let w = w.clone();
    tokio::spawn(async move {
        let r = handler::run(h, input, ctx).await;
        if let Some(rid) = answer_to {
            answer(&w, from, rid, handler_id, packed_answer(r));
        } else if let Err(f) = r {
            debug!(handler = handler_id, error = %f.message, "handler failed on a Node node's message");
        }
        inner.finish_one();
    });
}

/// A handler's answer as the original packs it: JSON, a buffer for bytes that are not JSON,
/// an error tag for a failure.
fn packed_answer(r: Result<Option<Bytes>, Failure>) -> Vec<u8> {
    match r {
        Ok(None) => Vec::new(),
        Ok(Some(b)) => match serde_json::from_slice::<Value>(&b) {
            Ok(v) => wire::pack(&v),
            Err(_) => b.to_vec(),
        },
        Err(f) => wire::pack_error(&f.message),
    }
}

fn answer(w: &NodeWire, to: SocketAddr, rid: Id, handler: u16, payload: Vec<u8>) {
    let packet = Packet {
        kind: PacketKind::Response,
        rid,
        handler,
        payload: &payload,
    };
    // Nobody waits for the outcome: the requester times out if it is lost.
    drop(w.send_packet(to, &packet.encode(), false));
}

/// Forwards a message to one node of its relay list, reliably and without an answer, as
/// the original's receivers do.
fn relay(w: &NodeWire, to: &Endpoint, handler: u16, data: Value) {
    let Ok(ip) = to.address.parse() else {
        debug!(address = %to.address, "relay to an unreadable address skipped");
        return;
    };
    drop(w.send_request(SocketAddr::new(ip, to.port), NO_RESPONSE, handler, data));
}

/// A JSON value from the answer of a Node node, decoded as `R`.
pub(crate) fn decode_answer<R: serde::de::DeserializeOwned>(
    node: NodeKey,
    handler: u16,
    answer: Unpacked,
) -> Result<R, RequestError> {
    let value = match answer {
        Unpacked::Empty => Value::Null,
        Unpacked::Json(v) => v,
        Unpacked::Bytes(b) => wire::buffer_value(&b),
        Unpacked::Error(message) => {
            return Err(
                if message.starts_with(&format!("no handler {handler} on ")) {
                    RequestError::NoHandler { handler, node }
                } else {
                    RequestError::Handler { node, message }
                },
            )
        }
    };
    serde_json::from_value(value.clone())
        .or_else(|e| match value {
            // The original sends falsy answers as nothing: `0`, `false`, `""` read back
            // as null; let a type that has a zero take it.
            Value::Null => serde_json::from_value(Value::Bool(false))
                .or_else(|_| serde_json::from_value(Value::from(0)))
                .or_else(|_| serde_json::from_value(Value::from("")))
                .map_err(|_| e),
            _ => Err(e),
        })
        .map_err(|e| RequestError::BadResponse {
            node,
            message: e.to_string(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seen_remembers_by_sender_and_id_and_forgets_the_oldest_when_full() {
        let forgot = AtomicU64::new(0);
        let mut s = Seen::default();
        let t = Instant::now();
        let a: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let b: SocketAddr = "127.0.0.1:2".parse().unwrap();
        assert!(s.insert(t, a, [1; 16], &forgot));
        assert!(!s.insert(t, a, [1; 16], &forgot));
        assert!(
            s.insert(t, b, [1; 16], &forgot),
            "another sender's id is its own"
        );
        // Past the window the pair is forgotten (not counted: that is its time).
        assert!(s.insert(t + SEEN_FOR, a, [1; 16], &forgot));
        assert_eq!(forgot.load(Relaxed), 0);
    }

    #[test]
    fn answers_decode_as_the_original_sent_them() {
        let k = NodeKey::new("127.0.0.1".parse().unwrap(), 1);
        let n: i64 = decode_answer(k, 1, Unpacked::Empty).unwrap();
        assert_eq!(n, 0, "a falsy answer comes as nothing");
        let s: String = decode_answer(k, 1, Unpacked::Json(serde_json::json!("x"))).unwrap();
        assert_eq!(s, "x");
        let e = decode_answer::<Value>(k, 1, Unpacked::Error("boom".into())).unwrap_err();
        assert!(matches!(e, RequestError::Handler { message, .. } if message == "boom"));
        let e = decode_answer::<Value>(k, 7, Unpacked::Error("no handler 7 on x".into()));
        assert!(matches!(e, Err(RequestError::NoHandler { handler: 7, .. })));
        let b: Value = decode_answer(k, 1, Unpacked::Bytes(vec![1, 2])).unwrap();
        assert_eq!(wire::buffer_of(&b), Some(vec![1, 2]));
    }

    #[test]
    fn retransmissions_end_before_the_originals_memory_does() {
        assert!(RETRIES.windows(2).all(|w| w[0] < w[1]));
        assert!(*RETRIES.last().unwrap() < GIVE_UP);
        assert!(GIVE_UP < Duration::from_millis(2999));
    }
}
