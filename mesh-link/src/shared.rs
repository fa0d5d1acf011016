//! Shared objects over the mesh: the `mesh-shared` state machine wired to the transport.
//!
//! Every node runs one [`Objects`] state machine in a shared-object service of
//! the node. Requests to an owner (create, get, change, remove) go as system requests; the
//! owner's changes reach watchers as one-way messages. See `mesh-shared/PROTOCOL.md`.

use std::collections::HashMap;
use std::sync::{Arc, Weak};
use std::time::Duration;

use bytes::Bytes;
use mesh_discovery::NodeKey;
use mesh_rudp::Delivery;
use mesh_shared::{Message, Objects, Op, Output, Prepared, Reply};
use parking_lot::Mutex;
use rand_core::{Rng, SeedableRng};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;
use thiserror::Error;
use tokio::sync::broadcast;
use tokio::time::Instant;
use tracing::{debug, warn};

pub use mesh_shared::{Event, Kind, Mid, Properties, Rejected, RemoveReason};

use crate::core::Core;
use crate::service::Service;
use crate::{RequestError, ToNodeKey};

/// The system handler id of shared objects (`mesh_link::system::SHARED`).
const HANDLER: u16 = 65_010;

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

struct SharedState {
    objects: Objects,
    channels: HashMap<Mid, Channel>,
    rng: rand_pcg::Pcg64Mcg,
    /// The instant the node's maintenance task sleeps until for us (`None`: no timer).
    armed: Option<std::time::Instant>,
}

impl SharedState {
    /// Hands out what the state machine produced, in the order it produced it, while the
    /// caller still holds the lock under which it was produced: events to this node's
    /// subscribers, messages to the transport's queues. Handing them out after the lock is let
    /// go lets another thread's newer outputs overtake them (update streams went back in
    /// time). Returns the resyncs to start: they are requests, which wait.
    fn flush(&mut self, core: &Core) -> Vec<Mid> {
        self.poke(core);
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
                Output::Send { to, message } => send_now(core, to, &message),
                Output::Resync { mid } => resyncs.push(mid),
                _ => {}
            }
        }
        resyncs
    }

    /// Wakes the maintenance task if a timer was set sooner than the one it sleeps to.
    fn poke(&mut self, core: &Core) {
        if let Some(at) = self.objects.take_new_deadline() {
            if self.armed.is_none_or(|a| at < a) {
                self.armed = Some(at);
                core.timers.notify_one();
            }
        }
    }

    fn next_id(&mut self) -> u128 {
        // Ids need to be unique, not secret.
        u128::from(self.rng.next_u64()) << 64 | u128::from(self.rng.next_u64())
    }
}

/// A node's shared objects: its state machine, the local subscribers, and the node's core to
/// reach other nodes with. Owned and dispatched by the node as a [`Service`].
pub(crate) struct SharedService {
    core: Arc<Core>,
    state: Mutex<SharedState>,
    /// Itself, for the resync tasks it starts.
    me: Weak<SharedService>,
}

impl SharedService {
    pub(crate) fn new(core: Arc<Core>, seed: u64) -> Arc<Self> {
        let state = SharedState {
            objects: Objects::new(core.local.socket_addr(), mesh_shared::Config::default()),
            channels: HashMap::new(),
            rng: rand_pcg::Pcg64Mcg::seed_from_u64(seed),
            armed: None,
        };
        Arc::new_cyclic(|me| Self {
            core,
            state: Mutex::new(state),
            me: me.clone(),
        })
    }

    /// Runs `f` on the state machine and hands out what it produced (under the same lock),
    /// then starts the resyncs it asked for.
    fn with<T>(&self, f: impl FnOnce(&mut Objects) -> T) -> T {
        let (r, resyncs) = {
            let mut st = self.state.lock();
            let r = f(&mut st.objects);
            (r, st.flush(&self.core))
        };
        if !resyncs.is_empty() {
            self.resync(resyncs);
        }
        r
    }

    /// Asks the owners of replicas that missed changes for a snapshot, each in a task of its
    /// own.
    fn resync(&self, mids: Vec<Mid>) {
        let Some(service) = self.me.upgrade() else {
            return;
        };
        for mid in mids {
            let service = service.clone();
            tokio::spawn(async move {
                debug!(%mid, "resyncing a replica");
                let _ = service.ask_owner(mid, Message::Get { id: mid.id }).await;
            });
        }
    }

    /// Sends a request to the owner and feeds its reply to the state machine.
    async fn ask_owner(&self, mid: Mid, ask: Message) -> Result<u64, SharedError> {
        let body = mesh_wire::codec::encode(&ask).map_err(|e| SharedError::Value(e.to_string()))?;
        let core = &self.core;
        let answer = core
            .request(
                HANDLER,
                None,
                NodeKey::from(mid.owner),
                Bytes::from(body),
                core.request_timeout,
                true,
            )
            .await;
        let answer = match answer {
            Ok(a) => a,
            Err(RequestError::Stopped) => return Err(SharedError::Stopped),
            Err(e) => {
                if matches!(ask, Message::Get { .. }) {
                    let now = Instant::now().into_std();
                    self.with(|o| o.resync_failed(now, mid));
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
        Ok(self.with(|o| o.reply(now, mid, &ask, reply))?)
    }
}

impl std::fmt::Debug for SharedService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedService")
            .field("objects", &self.state.lock().objects.len())
            .finish()
    }
}

/// Shared by every handle of one object on this node; the last one dropped stops watching.
struct Token {
    service: Weak<SharedService>,
    mid: Mid,
}

impl Drop for Token {
    fn drop(&mut self) {
        let Some(service) = self.service.upgrade() else {
            return;
        };
        let mut st = service.state.lock();
        if st
            .channels
            .get(&self.mid)
            .is_some_and(|c| c.token.strong_count() > 0)
        {
            return; // a new handle took over meanwhile
        }
        st.channels.remove(&self.mid);
        if let Some(m) = st.objects.release(self.mid) {
            send_now(&service.core, self.mid.owner, &m);
        }
    }
}

/// The shared objects of a node: create, fetch and remove them. From
/// [`MeshNode::shared`](crate::MeshNode::shared).
#[derive(Clone)]
pub struct SharedObjects {
    service: Arc<SharedService>,
    /// Keeps the node running while this is held.
    node: Arc<dyn Send + Sync>,
}

impl std::fmt::Debug for SharedObjects {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedObjects")
            .field("service", &self.service)
            .finish()
    }
}

/// A handle on a shared object. Reads are local and cheap; changes go to the owner and
/// resolve once it applied them. Clones share one subscription; when the last handle on
/// this node is dropped, the node stops watching the object (an owner keeps it).
#[derive(Clone)]
pub struct SharedObject {
    service: Arc<SharedService>,
    /// Keeps the node running while this is held.
    _node: Arc<dyn Send + Sync>,
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

impl SharedObjects {
    pub(crate) fn new(service: Arc<SharedService>, node: Arc<dyn Send + Sync>) -> Self {
        Self { service, node }
    }

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
        let (mid, ask) = {
            let mut st = self.service.state.lock();
            let id = st.next_id();
            let created = st
                .objects
                .create(now, id, props, ttl, owner.socket_addr())?;
            st.poke(&self.service.core);
            created
        };
        if let Some(ask) = ask {
            self.service.ask_owner(mid, ask).await?;
        }
        Ok(self.handle(mid))
    }

    /// A handle on the object named `mid`: the one this node holds, or a replica fetched from
    /// its owner (which then sends this node every change). Fails fast with
    /// [`SharedError::NotFound`] if the owner does not have it.
    pub async fn get(&self, mid: Mid) -> Result<SharedObject, SharedError> {
        let ask = self.service.state.lock().objects.get(mid);
        if let Some(ask) = ask {
            if mid.owner == self.service.core.local.socket_addr() {
                return Err(SharedError::NotFound);
            }
            self.service.ask_owner(mid, ask).await?;
        }
        Ok(self.handle(mid))
    }

    /// Removes an object everywhere; every node holding it reports [`Event::Removed`] once.
    pub async fn remove(&self, so: &SharedObject) -> Result<(), SharedError> {
        let ask = self.service.with(|o| o.remove(so.mid))?;
        if let Some(ask) = ask {
            self.service.ask_owner(so.mid, ask).await?;
        }
        Ok(())
    }

    /// Objects this node holds: owned plus replicas (the original's `getNumOfSharedObjects`).
    pub fn len(&self) -> usize {
        self.service.state.lock().objects.len()
    }

    /// Whether this node holds none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn handle(&self, mid: Mid) -> SharedObject {
        let mut st = self.service.state.lock();
        let channel = st.channels.entry(mid).or_insert_with(|| Channel {
            events: broadcast::channel(EVENT_BUFFER).0,
            token: Weak::new(),
        });
        let token = channel.token.upgrade().unwrap_or_else(|| {
            let t = Arc::new(Token {
                service: Arc::downgrade(&self.service),
                mid,
            });
            channel.token = Arc::downgrade(&t);
            t
        });
        SharedObject {
            service: self.service.clone(),
            _node: self.node.clone(),
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
        self.service.state.lock().objects.value(self.mid, prop)
    }

    /// A property's value decoded as `T`.
    pub fn get_as<T: DeserializeOwned>(&self, prop: &str) -> Option<T> {
        serde_json::from_value(self.get(prop)?).ok()
    }

    /// The object's version as this node sees it: the number of changes applied.
    pub fn version(&self) -> Option<u64> {
        self.service.state.lock().objects.version(self.mid)
    }

    /// Whether this node still holds the object.
    pub fn exists(&self) -> bool {
        self.service.state.lock().objects.contains(self.mid)
    }

    /// Every change from now on, once each, as [`Event::Update`]; then one
    /// [`Event::Removed`] when the object goes. A receiver more than 1024 events behind gets
    /// `Lagged` and should re-read with [`get`](Self::get).
    pub fn updates(&self) -> broadcast::Receiver<Event> {
        let st = self.service.state.lock();
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
        match self.service.with(|o| o.prepare(now, self.mid, op))? {
            Prepared::Applied { version } => Ok(version),
            Prepared::Ask(ask) => self.service.ask_owner(self.mid, ask).await,
            _ => Err(SharedError::Rejected(Rejected::Invalid(
                "unexpected".into(),
            ))),
        }
    }
}

fn json<T: Serialize + ?Sized>(v: &T) -> Result<Value, SharedError> {
    serde_json::to_value(v).map_err(|e| SharedError::Value(e.to_string()))
}

/// Queues a message to another node without waiting, so that it keeps its place behind the
/// ones made before it. Changes to one watcher go in order on their own channel; one that
/// cannot be queued (the watcher's queue is full: it has not acknowledged 64 MiB) is counted
/// and logged, and the watcher repairs the gap by resync when the next change arrives, or
/// when its session with us ends.
fn send_now(core: &Core, to: std::net::SocketAddr, message: &Message) {
    let body = match mesh_wire::codec::encode(message) {
        Ok(b) => b,
        Err(e) => {
            warn!(%to, error = %e, "shared-object message not encodable");
            return;
        }
    };
    let untracked = Delivery::Ordered { channel: 1 };
    if let Err(e) = core.try_send_system(to, HANDLER, &body, untracked) {
        warn!(%to, error = %e, "shared-object message not sent");
    }
}

impl Service for SharedService {
    fn on_message(&self, from: NodeKey, payload: &[u8]) -> Option<Result<Bytes, String>> {
        let message: Message = match mesh_wire::codec::decode(payload) {
            Ok(m) => m,
            Err(e) => return Some(Err(format!("unreadable shared-object message: {e}"))),
        };
        let now = Instant::now().into_std();
        let reply = self.with(|o| o.handle(now, from.socket_addr(), message));
        reply.map(|r| {
            mesh_wire::codec::encode(&r)
                .map(Bytes::from)
                .map_err(|e| e.to_string())
        })
    }

    /// Replicas the peer owns resync: changes may have been lost with the session.
    fn peer_reset(&self, peer: NodeKey) {
        self.with(|o| o.peer_reset(peer.socket_addr()));
    }

    /// What the node owned is gone; it watches nothing of ours any more.
    fn node_left(&self, node: NodeKey) {
        self.with(|o| o.node_left(node.socket_addr()));
    }

    /// Expires objects and resyncs stalled replicas on time.
    fn maintain(&self, now: std::time::Instant) -> Option<std::time::Instant> {
        let (resyncs, next) = {
            let mut st = self.state.lock();
            if st.objects.poll_timeout().is_some_and(|t| t <= now) {
                st.objects.handle_timeout(now);
            }
            // Every timer set so far is in `poll_timeout`: it is the new arming (and the
            // flush below has nothing to poke about).
            let _ = st.objects.take_new_deadline();
            let next = st.objects.poll_timeout();
            st.armed = next;
            (st.flush(&self.core), next)
        };
        if !resyncs.is_empty() {
            self.resync(resyncs);
        }
        next
    }

    /// Objects owned here are removed everywhere (watchers told, subscribers here too),
    /// replicas released; nothing resyncs on a node that is leaving.
    fn shutdown(&self) {
        let mut st = self.state.lock();
        st.objects.shutdown();
        let _ = st.flush(&self.core);
        st.channels.clear();
    }
}
