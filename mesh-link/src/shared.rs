//! Shared objects over the mesh: the `mesh-shared` state machine wired to the transport.
//!
//! Every node runs one [`Objects`] state machine. Requests to an owner (create, get, change,
//! remove) go as system requests; the owner's changes reach watchers as one-way messages.
//! See `mesh-shared/PROTOCOL.md`.

use std::collections::HashMap;
use std::sync::{Arc, Weak};
use std::time::Duration;

use bytes::Bytes;
use mesh_discovery::{MembershipEvent, NodeKey};
use mesh_rudp::Delivery;
use mesh_shared::{Message, Objects, Op, Output, Prepared, Reply};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;
use thiserror::Error;
use tokio::sync::broadcast;
use tokio::time::Instant;
use tracing::{debug, warn};

pub use mesh_shared::{Event, Kind, Mid, Properties, Rejected, RemoveReason};

use crate::node::system;
use crate::{MeshNode, RequestError, ToNodeKey};

/// Events buffered per object for each subscriber.
const EVENT_BUFFER: usize = 1024;

/// Why a shared-object call failed.
#[derive(Debug, Clone, PartialEq, Error)]
#[non_exhaustive]
pub enum SharedError {
    /// The owner refused the change or creation (a bound, a kind, a missing key, …).
    #[error("rejected: {0}")]
    Rejected(Rejected),
    /// The object does not exist (any more): removed, expired, or its owner is gone.
    #[error("no such shared object")]
    NotFound,
    /// The owner did not answer (down, unreachable, or past the request timeout).
    #[error("owner unreachable: {0}")]
    OwnerUnreachable(RequestError),
    /// A value could not be encoded as JSON.
    #[error("value not representable: {0}")]
    Value(String),
    /// This node is stopped.
    #[error("the node is stopped")]
    Stopped,
}

impl From<Rejected> for SharedError {
    fn from(r: Rejected) -> Self {
        match r {
            Rejected::NotFound => Self::NotFound,
            other => Self::Rejected(other),
        }
    }
}

/// One object's local users: its event channel, and the token its handles share.
struct Channel {
    events: broadcast::Sender<Event>,
    token: Weak<Token>,
}

pub(crate) struct SharedState {
    objects: Objects,
    channels: HashMap<Mid, Channel>,
    rng: u128,
}

impl SharedState {
    pub(crate) fn new(local: NodeKey, seed: u64) -> Self {
        Self {
            objects: Objects::new(local.socket_addr(), mesh_shared::Config::default()),
            channels: HashMap::new(),
            rng: u128::from(seed) << 64 | u128::from(seed.rotate_left(17)) | 1,
        }
    }

    /// Hands out what the state machine produced, in the order it produced it, while the
    /// caller still holds the lock under which it was produced: events to this node's
    /// subscribers, messages to the transport's queues. Handing them out after the lock is let
    /// go lets another thread's newer outputs overtake them (update streams went back in
    /// time). Returns the resyncs to start: they are requests, which wait.
    fn flush(&mut self, transport: &mesh_rudp::Transport) -> Vec<Mid> {
        let mut resyncs = Vec::new();
        while let Some(o) = self.objects.poll_output() {
            match o {
                Output::Event { mid, event } => {
                    let removed = matches!(event, Event::Removed(_));
                    if let Some(c) = self.channels.get(&mid) {
                        let _ = c.events.send(event);
                    }
                    if removed {
                        self.channels.remove(&mid);
                    }
                }
                Output::Send { to, message } => send_now(transport, to, &message),
                Output::Resync { mid } => resyncs.push(mid),
                _ => {}
            }
        }
        resyncs
    }

    fn next_id(&mut self) -> u128 {
        // xorshift on both halves: ids need to be unique, not secret.
        let mut x = self.rng;
        x ^= x << 35;
        x ^= x >> 59;
        x ^= x << 21;
        self.rng = x;
        x
    }
}

/// Shared by every handle of one object on this node; the last one dropped stops watching.
struct Token {
    node: Weak<crate::node::Inner>,
    mid: Mid,
}

impl Drop for Token {
    fn drop(&mut self) {
        let Some(inner) = self.node.upgrade() else {
            return;
        };
        let mut st = inner.shared.lock();
        if st
            .channels
            .get(&self.mid)
            .is_some_and(|c| c.token.strong_count() > 0)
        {
            return; // a new handle took over meanwhile
        }
        st.channels.remove(&self.mid);
        if let Some(m) = st.objects.release(self.mid) {
            send_now(&inner.transport, self.mid.owner, &m);
        }
    }
}

/// The shared objects of a node: create, fetch and remove them. From [`MeshNode::shared`].
#[derive(Debug, Clone)]
pub struct SharedObjects {
    node: MeshNode,
}

/// A handle on a shared object. Reads are local and cheap; changes go to the owner and
/// resolve once it applied them. Clones share one subscription; when the last handle on
/// this node is dropped, the node stops watching the object (an owner keeps it).
#[derive(Clone)]
pub struct SharedObject {
    node: MeshNode,
    mid: Mid,
    /// Held, not read: the last handle's drop stops watching.
    _token: Arc<Token>,
}

impl std::fmt::Debug for SharedObject {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedObject")
            .field("mid", &self.mid)
            .finish()
    }
}

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
        SharedObjects { node: self.clone() }
    }
}

impl SharedObjects {
    /// Creates an object owned by `owner` (this node or another), living until it is removed
    /// or unchanged for `ttl`. Resolves once the owner holds it.
    pub async fn create(
        &self,
        props: Properties,
        ttl: Duration,
        owner: impl ToNodeKey,
    ) -> Result<SharedObject, SharedError> {
        let owner = owner.node_key();
        let now = Instant::now().into_std();
        let inner = &self.node.inner;
        let (mid, ask, resyncs) = {
            let mut st = inner.shared.lock();
            let id = st.next_id();
            let (mid, ask) = st
                .objects
                .create(now, id, props, ttl, owner.socket_addr())?;
            (mid, ask, st.flush(&inner.transport))
        };
        resync(&self.node, resyncs);
        if let Some(ask) = ask {
            ask_owner(&self.node, mid, ask).await?;
        }
        Ok(self.handle(mid))
    }

    /// A handle on the object named `mid`: the one this node holds, or a replica fetched from
    /// its owner (which then sends this node every change). Fails fast with
    /// [`SharedError::NotFound`] if the owner does not have it.
    pub async fn get(&self, mid: Mid) -> Result<SharedObject, SharedError> {
        let ask = self.node.inner.shared.lock().objects.get(mid);
        if let Some(ask) = ask {
            if mid.owner == self.node.local_key().socket_addr() {
                return Err(SharedError::NotFound);
            }
            ask_owner(&self.node, mid, ask).await?;
        }
        Ok(self.handle(mid))
    }

    /// Removes an object everywhere; every node holding it reports [`Event::Removed`] once.
    pub async fn remove(&self, so: &SharedObject) -> Result<(), SharedError> {
        let (ask, resyncs) = {
            let inner = &self.node.inner;
            let mut st = inner.shared.lock();
            let ask = st.objects.remove(so.mid)?;
            (ask, st.flush(&inner.transport))
        };
        resync(&self.node, resyncs);
        if let Some(ask) = ask {
            ask_owner(&self.node, so.mid, ask).await?;
        }
        Ok(())
    }

    /// Objects this node holds: owned plus replicas (the original's `getNumOfSharedObjects`).
    pub fn len(&self) -> usize {
        self.node.inner.shared.lock().objects.len()
    }

    /// Whether this node holds none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn handle(&self, mid: Mid) -> SharedObject {
        let mut st = self.node.inner.shared.lock();
        let channel = st.channels.entry(mid).or_insert_with(|| Channel {
            events: broadcast::channel(EVENT_BUFFER).0,
            token: Weak::new(),
        });
        let token = channel.token.upgrade().unwrap_or_else(|| {
            let t = Arc::new(Token {
                node: Arc::downgrade(&self.node.inner),
                mid,
            });
            channel.token = Arc::downgrade(&t);
            t
        });
        SharedObject {
            node: self.node.clone(),
            mid,
            _token: token,
        }
    }
}

impl SharedObject {
    /// The object's name, to pass to [`SharedObjects::get`] on other nodes.
    pub fn mid(&self) -> Mid {
        self.mid
    }

    /// A property's value as this node sees it (`None` if unknown or the object is gone).
    pub fn get(&self, prop: &str) -> Option<Value> {
        self.node.inner.shared.lock().objects.value(self.mid, prop)
    }

    /// A property's value decoded as `T`.
    pub fn get_as<T: DeserializeOwned>(&self, prop: &str) -> Option<T> {
        serde_json::from_value(self.get(prop)?).ok()
    }

    /// The object's version as this node sees it: the number of changes applied.
    pub fn version(&self) -> Option<u64> {
        self.node.inner.shared.lock().objects.version(self.mid)
    }

    /// Whether this node still holds the object.
    pub fn exists(&self) -> bool {
        self.node.inner.shared.lock().objects.contains(self.mid)
    }

    /// Every change from now on, once each, as [`Event::Update`]; then one
    /// [`Event::Removed`] when the object goes. A receiver more than 1024 events behind gets
    /// `Lagged` and should re-read with [`get`](Self::get).
    pub fn updates(&self) -> broadcast::Receiver<Event> {
        let st = self.node.inner.shared.lock();
        match st.channels.get(&self.mid) {
            Some(c) => c.events.subscribe(),
            None => broadcast::channel(1).1, // gone: closed at once
        }
    }

    /// Adds `delta` to a number; resolves with the object's version once the owner applied it.
    pub async fn inc(&self, prop: &str, delta: f64) -> Result<u64, SharedError> {
        self.change(Op::Inc {
            prop: prop.to_owned(),
            delta,
        })
        .await
    }

    /// Replaces a property's value (a number within bounds, an object for a map, any value).
    pub async fn set<T: Serialize + ?Sized>(
        &self,
        prop: &str,
        value: &T,
    ) -> Result<u64, SharedError> {
        self.change(Op::Set {
            prop: prop.to_owned(),
            value: json(value)?.into(),
        })
        .await
    }

    /// Puts one key of a map.
    pub async fn add<T: Serialize + ?Sized>(
        &self,
        prop: &str,
        key: &str,
        value: &T,
    ) -> Result<u64, SharedError> {
        self.change(Op::Add {
            prop: prop.to_owned(),
            key: key.to_owned(),
            value: json(value)?.into(),
        })
        .await
    }

    /// Removes one key of a map.
    pub async fn del(&self, prop: &str, key: &str) -> Result<u64, SharedError> {
        self.change(Op::Del {
            prop: prop.to_owned(),
            key: key.to_owned(),
        })
        .await
    }

    async fn change(&self, op: Op) -> Result<u64, SharedError> {
        let now = Instant::now().into_std();
        let (prepared, resyncs) = {
            let inner = &self.node.inner;
            let mut st = inner.shared.lock();
            let p = st.objects.prepare(now, self.mid, op);
            (p, st.flush(&inner.transport))
        };
        resync(&self.node, resyncs);
        match prepared? {
            Prepared::Applied { version } => Ok(version),
            Prepared::Ask(ask) => ask_owner(&self.node, self.mid, ask).await,
            _ => Err(SharedError::Rejected(Rejected::Invalid(
                "unexpected".into(),
            ))),
        }
    }
}

fn json<T: Serialize + ?Sized>(v: &T) -> Result<Value, SharedError> {
    serde_json::to_value(v).map_err(|e| SharedError::Value(e.to_string()))
}

/// Sends a request to the owner and feeds its reply to the state machine.
async fn ask_owner(node: &MeshNode, mid: Mid, ask: Message) -> Result<u64, SharedError> {
    let body = mesh_wire::codec::encode(&ask).map_err(|e| SharedError::Value(e.to_string()))?;
    let timeout = node.inner.config_request_timeout();
    let answer = node
        .request_bytes(
            system::SHARED,
            NodeKey::from(mid.owner),
            Bytes::from(body),
            timeout,
            true,
        )
        .await;
    let answer = match answer {
        Ok(a) => a,
        Err(RequestError::Stopped) => return Err(SharedError::Stopped),
        Err(e) => {
            if matches!(ask, Message::Get { .. }) {
                let now = Instant::now().into_std();
                node.inner.shared.lock().objects.resync_failed(now, mid);
            }
            return Err(SharedError::OwnerUnreachable(e));
        }
    };
    let reply: Reply = mesh_wire::codec::decode(&answer).map_err(|e| {
        SharedError::OwnerUnreachable(RequestError::BadResponse {
            node: NodeKey::from(mid.owner),
            message: e.to_string(),
        })
    })?;
    let now = Instant::now().into_std();
    let (r, resyncs) = {
        let mut st = node.inner.shared.lock();
        let r = st.objects.reply(now, mid, &ask, reply);
        (r, st.flush(&node.inner.transport))
    };
    resync(node, resyncs);
    Ok(r?)
}

/// Asks the owners of replicas that missed changes for a snapshot, each in a task of its own.
fn resync(node: &MeshNode, mids: Vec<Mid>) {
    for mid in mids {
        let node = node.clone();
        tokio::spawn(async move {
            debug!(%mid, "resyncing a replica");
            let _ = ask_owner(&node, mid, Message::Get { id: mid.id }).await;
        });
    }
}

/// Queues a message to another node without waiting, so that it keeps its place behind the
/// ones made before it. Changes to one watcher go in order on their own channel; one that
/// cannot be queued (the watcher's queue is full: it has not acknowledged 64 MiB) is counted
/// and logged, and the watcher repairs the gap by resync when the next change arrives, or
/// when its session with us ends.
fn send_now(transport: &mesh_rudp::Transport, to: std::net::SocketAddr, message: &Message) {
    let body = match mesh_wire::codec::encode(message) {
        Ok(b) => b,
        Err(e) => {
            warn!(%to, error = %e, "shared-object message not encodable");
            return;
        }
    };
    let env = crate::node::envelope_bytes(system::SHARED, &body);
    if let Err(e) = transport.try_queue(to, env, Delivery::Ordered { channel: 1 }) {
        warn!(%to, error = %e, "shared-object message not sent");
    }
}

/// A request or message about shared objects arrived from `from`: the reply, if any.
pub(crate) fn on_message(
    node: &MeshNode,
    from: NodeKey,
    payload: &[u8],
) -> Option<Result<Bytes, String>> {
    let message: Message = match mesh_wire::codec::decode(payload) {
        Ok(m) => m,
        Err(e) => return Some(Err(format!("unreadable shared-object message: {e}"))),
    };
    let now = Instant::now().into_std();
    let (reply, resyncs) = {
        let mut st = node.inner.shared.lock();
        let r = st.objects.handle(now, from.socket_addr(), message);
        (r, st.flush(&node.inner.transport))
    };
    resync(node, resyncs);
    reply.map(|r| {
        mesh_wire::codec::encode(&r)
            .map(Bytes::from)
            .map_err(|e| e.to_string())
    })
}

/// Expires objects and resyncs stalled replicas on time; follows membership and sessions.
pub(crate) async fn maintain(node: MeshNode) {
    let mut events = node.membership_events();
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {
                let now = Instant::now().into_std();
                let resyncs = {
                    let mut st = node.inner.shared.lock();
                    if st.objects.poll_timeout().is_some_and(|t| t <= now) {
                        st.objects.handle_timeout(now);
                    }
                    st.flush(&node.inner.transport)
                };
                resync(&node, resyncs);
            }
            e = events.recv() => match e {
                Ok(MembershipEvent::Left(r)) => {
                    let resyncs = {
                        let mut st = node.inner.shared.lock();
                        st.objects.node_left(r.key.socket_addr());
                        st.flush(&node.inner.transport)
                    };
                    resync(&node, resyncs);
                }
                Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => return,
            },
        }
    }
}

/// The transport's session with `peer` ended: replicas it owns resync.
pub(crate) fn peer_reset(node: &MeshNode, peer: NodeKey) {
    let resyncs = {
        let mut st = node.inner.shared.lock();
        st.objects.peer_reset(peer.socket_addr());
        st.flush(&node.inner.transport)
    };
    resync(node, resyncs);
}

/// The node is stopping: owned objects are removed everywhere (watchers told, subscribers
/// here too), replicas released; the notices are queued before the transport closes, which
/// waits for them to be acknowledged.
pub(crate) fn shutdown(inner: &Arc<crate::node::Inner>) {
    let mut st = inner.shared.lock();
    st.objects.shutdown();
    // Nothing resyncs on a node that is leaving.
    let _ = st.flush(&inner.transport);
    st.channels.clear();
}
