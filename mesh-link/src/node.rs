//! [`MeshNode`]: one process's membership of a mesh, its handlers and its messaging.

use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures_util::future::{join_all, BoxFuture};
use futures_util::stream::FuturesUnordered;
use futures_util::{FutureExt, StreamExt};
use mesh_discovery::{
    DiscoveryStats, Membership, MembershipConfig, MembershipEvent, NodeKey, NodeRecord,
    RedisRegistry,
};
use mesh_rudp::{
    Delivery, DownReason, Driver, EndpointStats, Payload, Received, SendError, Transport,
    TransportConfig, TransportError,
};
use mesh_wire::{DecodeError, Envelope, EnvelopeKind, ErrorBody, ErrorCode};
use parking_lot::{Mutex, RwLock};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::{broadcast, oneshot, Notify};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::backend::Backend;
use crate::handler::{self, Context, Failure, HandlerFn};
use crate::relay::{self, RelayHeader, RelayReport, Seen};
use crate::{
    Config, DeliveryError, Error, HandlerError, Registry, RequestError, SendReport, StopReport,
};

/// Handler ids reserved for mesh-link itself.
pub mod system {
    /// Answers with nothing: `mesh-link ping` and [`MeshNode::ping`](crate::MeshNode::ping).
    pub const PING: u16 = 65_001;
    /// Answers with the request's bytes, for tools that measure a node.
    pub const ECHO: u16 = 65_002;
    /// A relayed message (a relay tree's branch).
    pub const RELAY: u16 = 65_003;
    /// Shared objects: requests to an owner, and its changes to watchers.
    pub const SHARED: u16 = 65_010;
}

const RUNNING: u8 = 0;
const STOPPING: u8 = 1;
const STOPPED: u8 = 2;

/// Room for the envelope and a relay header above the largest user message.
const HEADROOM: usize = 1 << 20;

/// Anything that names a node: a [`NodeKey`], a [`NodeRecord`], a socket address.
pub trait ToNodeKey {
    /// The node's key.
    fn node_key(&self) -> NodeKey;
}

impl ToNodeKey for NodeKey {
    fn node_key(&self) -> NodeKey {
        *self
    }
}

impl ToNodeKey for NodeRecord {
    fn node_key(&self) -> NodeKey {
        self.key
    }
}

impl ToNodeKey for SocketAddr {
    fn node_key(&self) -> NodeKey {
        NodeKey::from(*self)
    }
}

impl<T: ToNodeKey + ?Sized> ToNodeKey for &T {
    fn node_key(&self) -> NodeKey {
        (**self).node_key()
    }
}

/// Per-call settings of [`MeshNode::send_with`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct SendOptions {
    /// Overrides the node's `relay_limit` for this call (the original's `options.limit`):
    /// `Some(0)` sends directly to every node, `Some(n)` through a relay tree with `n`
    /// branches.
    pub relay_limit: Option<usize>,
    /// Deliver in order with this node's other ordered messages to the same node.
    pub ordered: bool,
}

impl SendOptions {
    /// Sets [`relay_limit`](Self::relay_limit).
    pub fn relay_limit(mut self, limit: usize) -> Self {
        self.relay_limit = Some(limit);
        self
    }

    /// Sets [`ordered`](Self::ordered).
    pub fn ordered(mut self, ordered: bool) -> Self {
        self.ordered = ordered;
        self
    }
}

struct Pending {
    peer: SocketAddr,
    handler: u16,
    /// When [`expire_requests`] fails it with `Timeout` (`None`: a timeout too long to
    /// represent, so never).
    deadline: Option<Instant>,
    after: Duration,
    tx: oneshot::Sender<Result<Bytes, RequestError>>,
}

/// Where to send an answer.
#[derive(Debug, Clone, Copy)]
struct ReplyTo {
    peer: SocketAddr,
    request_id: u64,
    handler: u16,
    reliable: bool,
}

pub(crate) struct Inner {
    pub(crate) transport: Transport,
    pub(crate) membership: Membership<Backend>,
    local: NodeKey,
    config: Config,
    handlers: RwLock<rustc_hash::FxHashMap<u16, HandlerFn>>,
    pending: Mutex<rustc_hash::FxHashMap<u64, Pending>>,
    /// When [`expire_requests`] next looks at the pending requests, in microseconds since
    /// `epoch` (`u64::MAX`: not before a request wakes it). Written and read with `pending`
    /// locked; a request due earlier wakes the task through `expiry`.
    expiry_at: AtomicU64,
    expiry: Notify,
    epoch: Instant,
    next_id: AtomicU64,
    rng: Mutex<u64>,
    seen: Mutex<Seen>,
    state: AtomicU8,
    /// Handler runs started and not finished (those waiting included).
    inflight: AtomicUsize,
    drained: Notify,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    counters: Counters,
    pub(crate) shared: Mutex<crate::shared::SharedState>,
    /// The user handles' guard, for tasks that need a full handle now and then.
    guard: std::sync::OnceLock<std::sync::Weak<Guard>>,
}

impl Inner {
    pub(crate) fn config_request_timeout(&self) -> Duration {
        self.config.request_timeout
    }
}

#[derive(Default)]
struct Counters {
    malformed: AtomicU64,
    no_handler: AtomicU64,
    overloaded: AtomicU64,
}

/// Counters of a node's messaging layer.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct NodeStats {
    /// Messages dropped because they could not be read.
    pub malformed: u64,
    /// Messages for a handler this node does not have.
    pub no_handler: u64,
    /// Requests refused because too many handlers were running.
    pub overloaded: u64,
    /// Requests of this node waiting for answers now.
    pub pending_requests: usize,
    /// Handler runs in progress now.
    pub running_handlers: usize,
}

/// Stops the node's tasks when the last handle goes without [`MeshNode::stop`].
struct Guard(Arc<Inner>);

impl Drop for Guard {
    fn drop(&mut self) {
        if self.0.state.load(Ordering::Acquire) != STOPPED {
            warn!(node = %self.0.local, "MeshNode dropped without stop(): aborting its tasks");
            for t in self.0.tasks.lock().drain(..) {
                t.abort();
            }
            self.0.handlers.write().clear();
        }
    }
}

/// A member of a mesh: it announces itself, sees the others, runs handlers for the messages
/// it receives, and sends messages, requests and datagrams to other nodes.
///
/// Handles are cheap to clone and all refer to the same node. Call [`stop`](Self::stop) to
/// leave the mesh gracefully; dropping every handle instead aborts the node's tasks.
///
/// ```
/// use mesh_link::{HandlerError, MeshNode, Registry};
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), mesh_link::Error> {
/// let registry = Registry::memory();
/// let a = MeshNode::builder().registry(registry.clone()).bind("127.0.0.1:0")
///     .on_request(1, |name: String, _ctx| async move { Ok::<_, HandlerError>(format!("hello {name}")) })
///     .start().await?;
/// let b = MeshNode::builder().registry(registry).bind("127.0.0.1:0").start().await?;
/// let answer: String = b.request(1, a.local_key(), &"b".to_string()).await.unwrap();
/// assert_eq!(answer, "hello b");
/// b.stop().await;
/// a.stop().await;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct MeshNode {
    pub(crate) inner: Arc<Inner>,
    _guard: Arc<Guard>,
}

impl std::fmt::Debug for MeshNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MeshNode")
            .field("local", &self.inner.local)
            .field("state", &self.inner.state.load(Ordering::Relaxed))
            .finish()
    }
}

/// Builds a [`MeshNode`]: every [`Config`] setting, plus the registry and handlers.
#[must_use]
pub struct Builder {
    config: Config,
    registry: Option<Registry>,
    handlers: Vec<(u16, HandlerFn)>,
    bind: Option<Result<SocketAddr, String>>,
}

impl std::fmt::Debug for Builder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Builder")
            .field("config", &self.config)
            .field("registry", &self.registry)
            .field("handlers", &self.handlers.len())
            .finish()
    }
}

impl Builder {
    /// Starts from a configuration.
    pub fn from_config(config: Config) -> Self {
        Self {
            config,
            registry: None,
            handlers: Vec::new(),
            bind: None,
        }
    }

    /// The registry, overriding `config.redis`.
    pub fn registry(mut self, registry: Registry) -> Self {
        self.registry = Some(registry);
        self
    }

    /// This node's type.
    pub fn node_type(mut self, t: impl Into<String>) -> Self {
        self.config.node_type = t.into();
        self
    }

    /// The mesh's name.
    pub fn prefix(mut self, p: impl Into<String>) -> Self {
        self.config.prefix = p.into();
        self
    }

    /// Address and first port to bind, as `"ip:port"` (port 0 for any free port).
    pub fn bind(mut self, addr: &str) -> Self {
        self.bind = Some(addr.parse().map_err(|e| format!("bind {addr:?}: {e}")));
        self
    }

    /// Changes any other setting.
    pub fn config(mut self, f: impl FnOnce(&mut Config)) -> Self {
        f(&mut self.config);
        self
    }

    /// Registers a one-way handler of typed messages (see [`MeshNode::on`]).
    pub fn on<M, F, Fut>(mut self, id: u16, f: F) -> Self
    where
        M: DeserializeOwned + Send + 'static,
        F: Fn(M, Context) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        self.handlers.push((id, handler::typed(f)));
        self
    }

    /// Registers a request handler (see [`MeshNode::on_request`]).
    pub fn on_request<M, R, F, Fut>(mut self, id: u16, f: F) -> Self
    where
        M: DeserializeOwned + Send + 'static,
        R: Serialize + Send + 'static,
        F: Fn(M, Context) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = Result<R, HandlerError>> + Send + 'static,
    {
        self.handlers.push((id, handler::typed_request(f)));
        self
    }

    /// Registers a raw-bytes handler (see [`MeshNode::on_raw`]).
    pub fn on_raw<F, Fut>(mut self, id: u16, f: F) -> Self
    where
        F: Fn(Bytes, Context) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = Result<Option<Bytes>, HandlerError>> + Send + 'static,
    {
        self.handlers.push((id, handler::raw(f)));
        self
    }

    /// Binds, joins the mesh and starts serving.
    pub async fn start(mut self) -> Result<MeshNode, Error> {
        if let Some(b) = self.bind.take() {
            let a = b.map_err(Error::Config)?;
            self.config.address = Some(a.ip());
            self.config.port = a.port();
        }
        MeshNode::start_with(self.config, self.registry, self.handlers).await
    }
}

fn check_id(id: u16) -> Result<(), Error> {
    if mesh_wire::is_system_handler(id) {
        Err(Error::ReservedHandler(id))
    } else {
        Ok(())
    }
}

fn os_random() -> u64 {
    use std::collections::hash_map::RandomState;
    use std::hash::{BuildHasher, Hasher};
    let mut h = RandomState::new().build_hasher();
    h.write_u128(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.finish() | 1
}

async fn bind_range(
    address: IpAddr,
    config: &Config,
    tc: TransportConfig,
) -> Result<(Transport, Driver), Error> {
    let first = config.port;
    let last = if first == 0 {
        0
    } else {
        first.saturating_add(config.port_attempts - 1)
    };
    let mut port = first;
    loop {
        match Transport::bind_with_driver(SocketAddr::new(address, port), tc.clone()).await {
            Ok(t) => return Ok(t),
            Err(TransportError::Io(e))
                if e.kind() == std::io::ErrorKind::AddrInUse && port < last =>
            {
                debug!(port, "port taken, trying the next");
                port += 1;
            }
            Err(TransportError::Io(source)) => {
                return Err(Error::Bind {
                    address,
                    first,
                    last,
                    source,
                })
            }
            Err(e) => return Err(e.into()),
        }
    }
}

impl MeshNode {
    /// A builder with the default [`Config`].
    pub fn builder() -> Builder {
        Builder::from_config(Config::default())
    }

    /// Starts a node from a configuration (the registry from `config.redis`).
    pub async fn start(config: Config) -> Result<Self, Error> {
        Self::start_with(config, None, Vec::new()).await
    }

    async fn start_with(
        config: Config,
        registry: Option<Registry>,
        handlers: Vec<(u16, HandlerFn)>,
    ) -> Result<Self, Error> {
        config.validate()?;
        let mut table = rustc_hash::FxHashMap::default();
        for (id, h) in handlers {
            check_id(id)?;
            if table.insert(id, h).is_some() {
                return Err(Error::DuplicateHandler(id));
            }
        }
        let registry = match registry {
            Some(r) => r,
            None => match &config.redis {
                Some(url) => Registry::redis(url)?,
                None => Registry::memory(),
            },
        };
        let address = config.resolve_address()?;
        let mut tc = TransportConfig::default();
        let largest = config.max_message_size.saturating_add(HEADROOM);
        if largest > 16 << 20 {
            // The transport's buffers hold two of the largest message (its defaults suit
            // messages up to 16 MiB); the caps scale with the message, never below defaults.
            tc.endpoint
                .reassembly_per_peer(largest.saturating_mul(2))
                .reassembly_total(largest.saturating_mul(4).max(256 << 20))
                .send_queue_per_peer(largest.saturating_mul(2).max(64 << 20));
        }
        tc.endpoint
            .mtu(config.mtu)
            .loopback_mtu(config.loopback_mtu)
            .loopback_checksum(config.loopback_checksum)
            .max_message_size(largest)
            .recycle_bytes(config.recycle_bytes)
            .peer_timeout(config.peer_timeout)
            .flush_interval(config.send_interval);
        tc.close_timeout = config.stop_timeout;
        tc.socket_buffer = config.socket_buffer;
        tc.answer_raw_ping = config.answer_raw_ping && config.cluster_key.is_none();
        if let Some(secret) = &config.cluster_key {
            let mut key = mesh_wire::ClusterKey::from_secret(secret.expose());
            if let Some(previous) = &config.previous_cluster_key {
                key = key.with_previous(previous.expose());
            }
            tc.endpoint.cluster_key(Some(key));
        }
        let (transport, driver) = bind_range(address, &config, tc).await?;
        let local = NodeKey::from(transport.local_addr());
        let backend = match registry {
            Registry::Memory(m) => Backend::Memory(m),
            Registry::Redis(t) => match RedisRegistry::connect_to(&t, &config.prefix).await {
                Ok(r) => Backend::Redis(r),
                Err(e) => {
                    transport.close().await;
                    return Err(e.into());
                }
            },
        };
        let started_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let mut record = NodeRecord::new(local, config.node_type.clone(), os_random(), started_ms);
        record.values = config.values.clone();
        let mut mc = MembershipConfig::default();
        mc.update_interval = config.update_interval;
        mc.backups = config.backups.clone();
        let membership = Membership::start(backend, record, mc).await;
        let inner = Arc::new(Inner {
            transport,
            membership,
            local,
            config,
            handlers: RwLock::new(table),
            pending: Mutex::new(rustc_hash::FxHashMap::default()),
            expiry_at: AtomicU64::new(u64::MAX),
            expiry: Notify::new(),
            epoch: Instant::now(),
            next_id: AtomicU64::new(os_random() >> 1),
            rng: Mutex::new(os_random()),
            seen: Mutex::new(Seen::default()),
            state: AtomicU8::new(RUNNING),
            inflight: AtomicUsize::new(0),
            drained: Notify::new(),
            tasks: Mutex::new(Vec::new()),
            counters: Counters::default(),
            shared: Mutex::new(crate::shared::SharedState::new(local, os_random())),
            guard: std::sync::OnceLock::new(),
        });
        let node = Self {
            _guard: Arc::new(Guard(inner.clone())),
            inner,
        };
        let _ = node.inner.guard.set(Arc::downgrade(&node._guard));
        node.inner
            .transport
            .set_intercept(Some(intercept_answers(Arc::downgrade(&node.inner))));
        node.inner
            .membership
            .set_liveness_check(Some(ping_before_departure(Arc::downgrade(&node.inner))));
        let receiver = tokio::spawn(receive_loop(node.downgrade_for_task(), driver));
        let watcher = tokio::spawn(watch_peers(node.inner.clone()));
        let maintainer = tokio::spawn(maintain_shared(node.downgrade_for_task()));
        let expiry = tokio::spawn(expire_requests(node.inner.clone()));
        node.inner
            .tasks
            .lock()
            .extend([receiver, watcher, maintainer, expiry]);
        info!(node = %local, "mesh node started");
        Ok(node)
    }

    /// A full handle from the node's state, while any user handle exists.
    pub(crate) fn from_inner(inner: &Arc<Inner>) -> Option<Self> {
        Some(Self {
            inner: inner.clone(),
            _guard: inner.guard.get()?.upgrade()?,
        })
    }

    /// A handle for the node's own tasks: it does not keep the node alive (no guard).
    fn downgrade_for_task(&self) -> TaskHandle {
        TaskHandle(self.inner.clone(), Arc::downgrade(&self._guard))
    }

    fn stopping(&self) -> bool {
        self.inner.state.load(Ordering::Acquire) != RUNNING
    }

    // ----- handlers -----------------------------------------------------------------------

    fn register(&self, id: u16, h: HandlerFn) -> Result<(), Error> {
        check_id(id)?;
        let mut t = self.inner.handlers.write();
        if t.contains_key(&id) {
            return Err(Error::DuplicateHandler(id));
        }
        t.insert(id, h);
        Ok(())
    }

    /// Registers a one-way handler: `f` gets each message of type `M` sent to `id`. A
    /// request to it is answered with `()` once `f` returns. Ids 65001..=65535 are reserved,
    /// and an id can be registered once.
    ///
    /// Handlers run on the node's receive task, which also drives the socket: long
    /// computation without an `.await` belongs in `tokio::task::spawn_blocking`.
    pub fn on<M, F, Fut>(&self, id: u16, f: F) -> Result<(), Error>
    where
        M: DeserializeOwned + Send + 'static,
        F: Fn(M, Context) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        self.register(id, handler::typed(f))
    }

    /// Registers a request handler: its `Ok` value is the answer, its `Err` reaches the
    /// requester as [`RequestError::Handler`]. A panic is answered the same way, and the node
    /// keeps serving.
    pub fn on_request<M, R, F, Fut>(&self, id: u16, f: F) -> Result<(), Error>
    where
        M: DeserializeOwned + Send + 'static,
        R: Serialize + Send + 'static,
        F: Fn(M, Context) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = Result<R, HandlerError>> + Send + 'static,
    {
        self.register(id, handler::typed_request(f))
    }

    /// Registers a handler of raw bytes; `Ok(Some(bytes))` is the answer to a request.
    pub fn on_raw<F, Fut>(&self, id: u16, f: F) -> Result<(), Error>
    where
        F: Fn(Bytes, Context) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = Result<Option<Bytes>, HandlerError>> + Send + 'static,
    {
        self.register(id, handler::raw(f))
    }

    /// Removes a handler; true if there was one.
    pub fn remove_handler(&self, id: u16) -> bool {
        self.inner.handlers.write().remove(&id).is_some()
    }

    fn context(&self, sender: NodeKey, local: bool, reliable: bool, handler: u16) -> Context {
        Context {
            node: self.clone(),
            sender,
            relayed_by: None,
            local,
            reliable,
            handler,
        }
    }

    // ----- sending ------------------------------------------------------------------------

    /// Sends `msg` reliably to handler `id` on every node of `nodes`, and resolves when each
    /// acknowledged it or failed. The report names every node: delivered or failed, and why.
    /// This node, if listed, gets it through its own handler without the network.
    ///
    /// With a `relay_limit` (config or [`send_with`](Self::send_with)) the message spreads
    /// through a relay tree; see [`SendOptions`].
    pub async fn send<M: Serialize + ?Sized>(
        &self,
        id: u16,
        nodes: impl IntoIterator<Item = impl ToNodeKey>,
        msg: &M,
    ) -> Result<SendReport, Error> {
        self.send_with(id, nodes, msg, SendOptions::default()).await
    }

    /// [`send`](Self::send) with per-call options.
    pub async fn send_with<M: Serialize + ?Sized>(
        &self,
        id: u16,
        nodes: impl IntoIterator<Item = impl ToNodeKey>,
        msg: &M,
        options: SendOptions,
    ) -> Result<SendReport, Error> {
        let data = self.encode(msg)?;
        self.send_bytes(id, nodes, data, options).await
    }

    /// [`send_with`](Self::send_with) of bytes already encoded.
    pub async fn send_bytes(
        &self,
        id: u16,
        nodes: impl IntoIterator<Item = impl ToNodeKey>,
        data: Bytes,
        options: SendOptions,
    ) -> Result<SendReport, Error> {
        if self.stopping() {
            return Err(Error::Stopped);
        }
        self.check_size(data.len())?;
        let mut targets: Vec<NodeKey> = Vec::new();
        for n in nodes {
            let k = n.node_key();
            if !targets.contains(&k) {
                targets.push(k);
            }
        }
        let mut report = SendReport::default();
        let local = self.inner.local;
        if targets.contains(&local) {
            targets.retain(|k| *k != local);
            match self.deliver_local(id, data.clone(), true, None, local) {
                Ok(()) => report.delivered.push(local),
                Err(e) => report.failed.push((local, e)),
            }
        }
        let limit = options.relay_limit.unwrap_or(self.inner.config.relay_limit);
        if limit == 0 || targets.len() <= limit {
            let delivery = if options.ordered {
                Delivery::Ordered { channel: 0 }
            } else {
                Delivery::Unordered
            };
            let envelope = envelope_payload(EnvelopeKind::OneWay, id, 0, &data);
            let send = |k: NodeKey, envelope: Payload| async move {
                let r = match self
                    .inner
                    .transport
                    .queue(k.socket_addr(), envelope, delivery)
                    .await
                {
                    // Outside tokio's cooperative budget: see `unbudgeted`.
                    Ok(rx) => unbudgeted(rx).await.unwrap_or(Err(SendError::Closed)),
                    Err(TransportError::Send(e)) => Err(e),
                    Err(e) => Err(SendError::Closed).inspect_err(|_| debug!(error = %e, "send")),
                };
                (k, r)
            };
            let outcomes = match targets[..] {
                [] => Vec::new(),
                // The common case, without the machinery of waiting on many.
                [k] => vec![send(k, envelope).await],
                _ => join_all(targets.iter().map(|&k| send(k, envelope.clone()))).await,
            };
            for (k, r) in outcomes {
                match r {
                    Ok(()) => report.delivered.push(k),
                    Err(e) => report.failed.push((k, e.into())),
                }
            }
        } else {
            let fanout = {
                let mut r = self.inner.rng.lock();
                *r = xorshift(*r);
                *r
            };
            let deadline = Instant::now() + self.inner.config.relay_timeout;
            let sub = self
                .fan_out(id, data, targets, limit, local, fanout, deadline)
                .await;
            report.delivered.extend(sub.delivered);
            report.failed.extend(sub.failed);
        }
        Ok(report)
    }

    /// Spreads a message to `targets` (none of them this node) through a relay tree.
    #[allow(
        clippy::too_many_arguments,
        reason = "an internal step with its whole context"
    )]
    fn fan_out(
        &self,
        id: u16,
        data: Bytes,
        targets: Vec<NodeKey>,
        limit: usize,
        origin: NodeKey,
        fanout: u64,
        deadline: Instant,
    ) -> BoxFuture<'_, RelayReport> {
        async move {
            let mut report = RelayReport::default();
            let mut work = Vec::with_capacity(targets.len());
            for t in targets {
                if t == self.inner.local || work.contains(&t) {
                    continue;
                }
                if self.inner.membership.node_exists(t) {
                    work.push(t);
                } else {
                    report.failed.push((t, DeliveryError::NotMember));
                }
            }
            // Each round loses at least one node (a failed head), so this ends.
            let rounds = work.len() + 1;
            for _ in 0..rounds {
                if work.is_empty() {
                    break;
                }
                let now = Instant::now();
                if now >= deadline {
                    report
                        .failed
                        .extend(work.drain(..).map(|k| (k, DeliveryError::Timeout)));
                    break;
                }
                let remaining = deadline - now;
                let child_budget = (remaining.as_millis() as u64 * 4 / 5).min(u32::MAX as u64) as u32;
                let buckets = relay::branch(&work, limit);
                work.clear();
                let asks = buckets.into_iter().map(|bucket| {
                    let data = data.clone();
                    async move {
                        let head = bucket[0];
                        let rest = bucket[1..].to_vec();
                        let header = RelayHeader {
                            fanout,
                            origin,
                            handler: id,
                            limit: limit as u16,
                            budget_ms: child_budget,
                            nodes: rest.clone(),
                        };
                        let r = match relay::encode(&header, &data) {
                            Ok(body) => {
                                self.request_bytes(system::RELAY, head, body, remaining, true)
                                    .await
                            }
                            Err(e) => Err(RequestError::Encode(e.to_string())),
                        };
                        (head, rest, r)
                    }
                });
                for (head, rest, r) in join_all(asks).await {
                    match r.map(|b| mesh_wire::codec::decode::<RelayReport>(&b)) {
                        Ok(Ok(sub)) => {
                            report.delivered.extend(sub.delivered);
                            report.failed.extend(sub.failed);
                        }
                        Ok(Err(e)) => {
                            warn!(%head, error = %e, "unreadable relay report; re-routing its share");
                            report
                                .failed
                                .push((head, DeliveryError::Unreachable(format!("bad relay report: {e}"))));
                            work.extend(rest);
                        }
                        Err(e) => {
                            debug!(%head, error = %e, "relay head failed; re-routing its share");
                            report.failed.push((head, delivery_error(e)));
                            work.extend(rest);
                        }
                    }
                }
            }
            report
        }
        .boxed()
    }

    /// Runs this node's handler for a message addressed to itself.
    fn deliver_local(
        &self,
        id: u16,
        data: Bytes,
        reliable: bool,
        relayed_by: Option<NodeKey>,
        sender: NodeKey,
    ) -> Result<(), DeliveryError> {
        let Some(h) = self.inner.handlers.read().get(&id).cloned() else {
            self.inner
                .counters
                .no_handler
                .fetch_add(1, Ordering::Relaxed);
            return Err(DeliveryError::NoHandler);
        };
        let mut ctx = self.context(sender, sender == self.inner.local, reliable, id);
        ctx.relayed_by = relayed_by;
        let inner = self.inner.clone();
        inner.inflight.fetch_add(1, Ordering::AcqRel);
        tokio::spawn(async move {
            if let Err(f) = handler::run(h, data, ctx).await {
                debug!(handler = id, error = %f.message, "one-way handler failed");
            }
            finish_one(&inner);
        });
        Ok(())
    }

    /// Sends `msg` to handler `id` on each node as one unreliable datagram: it may be lost,
    /// and nothing says so. Fails if the message does not fit in a datagram.
    pub fn usend<M: Serialize + ?Sized>(
        &self,
        id: u16,
        nodes: impl IntoIterator<Item = impl ToNodeKey>,
        msg: &M,
    ) -> Result<(), Error> {
        if self.stopping() {
            return Err(Error::Stopped);
        }
        let data = self.encode(msg)?;
        let envelope = envelope(EnvelopeKind::OneWay, id, 0, &data);
        let limit = self.inner.transport.max_unreliable_size();
        if envelope.len() > limit {
            return Err(Error::TooLarge {
                size: data.len(),
                limit: limit - Envelope::header_len(EnvelopeKind::OneWay),
            });
        }
        for n in nodes {
            let k = n.node_key();
            if k == self.inner.local {
                let _ = self.deliver_local(id, data.clone(), false, None, k);
            } else if let Err(e) = self
                .inner
                .transport
                .send_unreliable(k.socket_addr(), envelope.clone())
            {
                debug!(node = %k, error = %e, "usend refused");
            }
        }
        Ok(())
    }

    /// Asks handler `id` on `node` and waits for its answer, up to the configured
    /// `request_timeout`. A node without the handler answers at once with
    /// [`RequestError::NoHandler`]; one that is down fails the request as soon as the
    /// transport sees it.
    pub async fn request<M, R>(
        &self,
        id: u16,
        node: impl ToNodeKey,
        msg: &M,
    ) -> Result<R, RequestError>
    where
        M: Serialize + ?Sized,
        R: DeserializeOwned,
    {
        self.request_with(id, node, msg, self.inner.config.request_timeout)
            .await
    }

    /// [`request`](Self::request) with its own timeout.
    pub async fn request_with<M, R>(
        &self,
        id: u16,
        node: impl ToNodeKey,
        msg: &M,
        timeout: Duration,
    ) -> Result<R, RequestError>
    where
        M: Serialize + ?Sized,
        R: DeserializeOwned,
    {
        self.typed_request(id, node.node_key(), msg, timeout, true)
            .await
    }

    async fn typed_request<M, R>(
        &self,
        id: u16,
        node: NodeKey,
        msg: &M,
        timeout: Duration,
        reliable: bool,
    ) -> Result<R, RequestError>
    where
        M: Serialize + ?Sized,
        R: DeserializeOwned,
    {
        let data = self.encode_request(msg)?;
        let answer = self
            .request_bytes(id, node, data, timeout, reliable)
            .await?;
        decode_answer(node, &answer)
    }

    /// Asks every node and returns each one's answer or error, in the order given.
    pub async fn request_all<M, R>(
        &self,
        id: u16,
        nodes: impl IntoIterator<Item = impl ToNodeKey>,
        msg: &M,
    ) -> Vec<(NodeKey, Result<R, RequestError>)>
    where
        M: Serialize + ?Sized,
        R: DeserializeOwned,
    {
        let keys: Vec<NodeKey> = nodes.into_iter().map(|n| n.node_key()).collect();
        let data = match self.encode_request(msg) {
            Ok(d) => d,
            Err(e) => return keys.into_iter().map(|k| (k, Err(e.clone()))).collect(),
        };
        let timeout = self.inner.config.request_timeout;
        let asks = keys.iter().map(|&k| {
            let data = data.clone();
            async move {
                let r = self.request_bytes(id, k, data, timeout, true).await;
                (k, r.and_then(|b| decode_answer(k, &b)))
            }
        });
        join_all(asks).await
    }

    /// Asks every node and returns the first answer (the original's `send` with a callback
    /// to several nodes); fails only if every node fails, with the last error.
    pub async fn request_any<M, R>(
        &self,
        id: u16,
        nodes: impl IntoIterator<Item = impl ToNodeKey>,
        msg: &M,
    ) -> Result<(NodeKey, R), RequestError>
    where
        M: Serialize + ?Sized,
        R: DeserializeOwned,
    {
        let data = self.encode_request(msg)?;
        let timeout = self.inner.config.request_timeout;
        let mut asks: FuturesUnordered<_> = nodes
            .into_iter()
            .map(|n| {
                let k = n.node_key();
                let data = data.clone();
                async move {
                    let r = self.request_bytes(id, k, data, timeout, true).await;
                    (k, r.and_then(|b| decode_answer::<R>(k, &b)))
                }
            })
            .collect();
        let mut last = RequestError::NoNodes;
        while let Some((k, r)) = asks.next().await {
            match r {
                Ok(v) => return Ok((k, v)),
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    /// Asks handler `id` on `node` by one unreliable datagram; the answer comes back the same
    /// way (or reliably if it does not fit in one). Either may be lost: then the request times
    /// out after `timeout`.
    pub async fn urequest<M, R>(
        &self,
        id: u16,
        node: impl ToNodeKey,
        msg: &M,
        timeout: Duration,
    ) -> Result<R, RequestError>
    where
        M: Serialize + ?Sized,
        R: DeserializeOwned,
    {
        self.typed_request(id, node.node_key(), msg, timeout, false)
            .await
    }

    /// Round-trip time to a node's system ping handler (any mesh-link node answers).
    pub async fn ping(
        &self,
        node: impl ToNodeKey,
        timeout: Duration,
    ) -> Result<Duration, RequestError> {
        let start = Instant::now();
        self.request_bytes(system::PING, node.node_key(), Bytes::new(), timeout, true)
            .await?;
        Ok(start.elapsed())
    }

    /// Asks a node's system echo handler to send `data` back.
    pub async fn echo(
        &self,
        node: impl ToNodeKey,
        data: Bytes,
        timeout: Duration,
    ) -> Result<Bytes, RequestError> {
        self.request_bytes(system::ECHO, node.node_key(), data, timeout, true)
            .await
    }

    /// The request machinery on bytes: local nodes run the handler in this task.
    pub async fn request_bytes(
        &self,
        id: u16,
        node: NodeKey,
        data: Bytes,
        timeout: Duration,
        reliable: bool,
    ) -> Result<Bytes, RequestError> {
        if self.stopping() {
            return Err(RequestError::Stopped);
        }
        if node == self.inner.local && !mesh_wire::is_system_handler(id) {
            let Some(h) = self.inner.handlers.read().get(&id).cloned() else {
                return Err(RequestError::NoHandler { handler: id, node });
            };
            let ctx = self.context(node, true, reliable, id);
            let run = handler::run(h, data, ctx);
            return match tokio::time::timeout(timeout, run).await {
                Ok(Ok(answer)) => Ok(answer.unwrap_or_default()),
                Ok(Err(f)) => Err(RequestError::from_remote(node, id, f.code, &f.message)),
                Err(_) => Err(RequestError::Timeout {
                    handler: id,
                    node,
                    after: timeout,
                }),
            };
        }
        let request_id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        // No timer of its own: `expire_requests` fails the request at its deadline.
        let deadline = Instant::now().checked_add(timeout);
        let wake_expiry = {
            let mut p = self.inner.pending.lock();
            if p.len() >= self.inner.config.max_pending_requests {
                return Err(RequestError::TooManyRequests);
            }
            p.insert(
                request_id,
                Pending {
                    peer: node.socket_addr(),
                    handler: id,
                    deadline,
                    after: timeout,
                    tx,
                },
            );
            // Due before the expiry task's next look: wake it to plan again.
            deadline.is_some_and(|d| {
                let due = micros_since(self.inner.epoch, d);
                if due < self.inner.expiry_at.load(Ordering::Relaxed) {
                    self.inner.expiry_at.store(due, Ordering::Relaxed);
                    true
                } else {
                    false
                }
            })
        };
        if wake_expiry {
            self.inner.expiry.notify_one();
        }
        // Removes the entry however this future ends (answered, failed, timed out, dropped).
        let mut cleanup = PendingGuard(&self.inner, request_id, true);
        let envelope = envelope_payload(EnvelopeKind::Request, id, request_id, &data);
        let not_delivered = |e: SendError| RequestError::NotDelivered {
            node,
            error: e.into(),
        };
        let timed_out = || RequestError::Timeout {
            handler: id,
            node,
            after: timeout,
        };
        if reliable {
            // No waiter for the request's acknowledgement: the answer implies it, and the
            // transport gives up on a message only when its peer's session ends, which
            // `watch_peers` turns into a failure of every request to that peer.
            let queue = self.inner.transport.queue_unwatched(
                node.socket_addr(),
                envelope,
                Delivery::Unordered,
            );
            let queued = match deadline {
                Some(deadline) => tokio::time::timeout_at(deadline, queue)
                    .await
                    .map_err(|_| timed_out())?,
                None => queue.await,
            };
            match queued {
                Ok(()) => {}
                Err(TransportError::Send(e)) => return Err(not_delivered(e)),
                Err(_) => return Err(not_delivered(SendError::Closed)),
            }
            let answer = unbudgeted(rx).await;
            // Whoever completed or dropped the answer's sender removed the entry.
            cleanup.2 = false;
            answer.unwrap_or(Err(RequestError::Stopped))
        } else {
            if envelope.len() > self.inner.transport.max_unreliable_size() {
                return Err(not_delivered(SendError::TooLarge {
                    size: envelope.len(),
                    limit: self.inner.transport.max_unreliable_size(),
                }));
            }
            self.inner
                .transport
                .send_unreliable(node.socket_addr(), envelope.to_bytes())
                .map_err(|e| match e {
                    TransportError::Send(e) => not_delivered(e),
                    _ => not_delivered(SendError::Closed),
                })?;
            let answer = unbudgeted(rx).await;
            cleanup.2 = false;
            answer.unwrap_or(Err(RequestError::Stopped))
        }
    }

    fn encode<M: Serialize + ?Sized>(&self, msg: &M) -> Result<Bytes, Error> {
        let v = mesh_wire::codec::encode(msg)?;
        self.check_size(v.len())?;
        Ok(Bytes::from(v))
    }

    fn encode_request<M: Serialize + ?Sized>(&self, msg: &M) -> Result<Bytes, RequestError> {
        self.encode(msg)
            .map_err(|e| RequestError::Encode(e.to_string()))
    }

    fn check_size(&self, size: usize) -> Result<(), Error> {
        let limit = self.inner.config.max_message_size;
        if size > limit {
            return Err(Error::TooLarge { size, limit });
        }
        Ok(())
    }

    // ----- membership ---------------------------------------------------------------------

    /// This node's key (address and bound port).
    pub fn local_key(&self) -> NodeKey {
        self.inner.local
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
        node.node_key() == self.inner.local
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

    /// Joins, updates and leaves of other nodes, from now on. A receiver that falls more
    /// than 4096 events behind gets `Lagged` and should re-read [`nodes`](Self::nodes).
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
            malformed: c.malformed.load(Ordering::Relaxed),
            no_handler: c.no_handler.load(Ordering::Relaxed),
            overloaded: c.overloaded.load(Ordering::Relaxed),
            pending_requests: self.inner.pending.lock().len(),
            running_handlers: self.inner.inflight.load(Ordering::Relaxed),
        }
    }

    /// Counters of the transport.
    pub fn transport_stats(&self) -> EndpointStats {
        self.inner.transport.stats()
    }

    /// Counters of discovery.
    pub fn discovery_stats(&self) -> DiscoveryStats {
        self.inner.membership.stats()
    }

    // ----- stopping -----------------------------------------------------------------------

    /// Leaves the mesh gracefully: deregisters at once (others see this node leave within an
    /// update interval), answers new requests with "shutting down", lets running handlers
    /// finish and unacknowledged messages be acknowledged (each up to `stop_timeout`), then
    /// closes. The report says what did not finish. Calling it again returns an empty report.
    pub async fn stop(&self) -> StopReport {
        if self
            .inner
            .state
            .compare_exchange(RUNNING, STOPPING, Ordering::SeqCst, Ordering::Acquire)
            .is_err()
        {
            return StopReport::default();
        }
        let inner = &self.inner;
        inner.membership.stop().await;
        let deadline = Instant::now() + inner.config.stop_timeout;
        loop {
            let drained = inner.drained.notified();
            tokio::pin!(drained);
            drained.as_mut().enable();
            // SeqCst with `finish_one`: either it sees STOPPING and notifies, or this sees
            // its decrement.
            if inner.inflight.load(Ordering::SeqCst) == 0 {
                break;
            }
            if tokio::time::timeout_at(deadline, drained).await.is_err() {
                break;
            }
        }
        let cancelled_handlers = inner.inflight.load(Ordering::Acquire);
        // Objects owned here die with the node: watchers are told before the transport closes
        // (which waits for them to be acknowledged); replicas are released.
        crate::shared::shutdown(inner);
        let close = inner.transport.close().await;
        let abandoned: Vec<Pending> = inner.pending.lock().drain().map(|(_, p)| p).collect();
        let abandoned_requests = abandoned.len();
        for p in abandoned {
            let _ = p.tx.send(Err(RequestError::Stopped));
        }
        for t in inner.tasks.lock().drain(..) {
            t.abort();
        }
        inner.handlers.write().clear();
        inner.state.store(STOPPED, Ordering::Release);
        info!(node = %inner.local, "mesh node stopped");
        StopReport {
            undelivered: close
                .undelivered
                .into_iter()
                .map(|(a, id)| (NodeKey::from(a), id.0))
                .collect(),
            abandoned_requests,
            cancelled_handlers,
        }
    }
}

/// Waits on `f` outside tokio's cooperative budget. A send or request awaits one outcome
/// once, never in a loop, so it cannot starve its task; but inside a budget, a caller that
/// polls thousands of them from one task (a `FuturesUnordered` of sends) exhausts the budget,
/// and every later poll then returns "not yet" and re-wakes itself: the work per outcome grew
/// with the number in flight (one-way throughput fell from 550k to 51k messages/s between
/// 512 and 16384 in flight).
fn unbudgeted<F: std::future::Future>(f: F) -> tokio::task::Unconstrained<F> {
    tokio::task::unconstrained(f)
}

fn xorshift(mut x: u64) -> u64 {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    x
}

fn decode_answer<R: DeserializeOwned>(node: NodeKey, answer: &[u8]) -> Result<R, RequestError> {
    mesh_wire::codec::decode(answer).map_err(|e| RequestError::BadResponse {
        node,
        message: e.to_string(),
    })
}

fn delivery_error(e: RequestError) -> DeliveryError {
    match e {
        RequestError::NotDelivered { error, .. } => error,
        RequestError::Timeout { .. } => DeliveryError::Timeout,
        RequestError::Stopped => DeliveryError::Stopped,
        other => DeliveryError::Unreachable(other.to_string()),
    }
}

/// Bodies at least this long go to the transport behind their envelope header rather than
/// copied into one buffer with it: below it, one small copy is cheaper than two buffers.
const COPY_LIMIT: usize = 4096;

/// An envelope for the transport: see [`COPY_LIMIT`].
fn envelope_payload(kind: EnvelopeKind, handler: u16, request_id: u64, body: &Bytes) -> Payload {
    if body.len() < COPY_LIMIT {
        return envelope(kind, handler, request_id, body).into();
    }
    let mut head = Vec::with_capacity(Envelope::header_len(kind));
    Envelope::encode_header(kind, handler, request_id, &mut head);
    Payload::with_head(Bytes::from(head), body.clone())
}

fn envelope(kind: EnvelopeKind, handler: u16, request_id: u64, payload: &[u8]) -> Bytes {
    let mut out = Vec::with_capacity(Envelope::header_len(kind) + payload.len());
    Envelope::encode_header(kind, handler, request_id, &mut out);
    out.extend_from_slice(payload);
    Bytes::from(out)
}

/// A one-way envelope for a system handler.
pub(crate) fn envelope_bytes(handler: u16, payload: &[u8]) -> Bytes {
    envelope(EnvelopeKind::OneWay, handler, 0, payload)
}

fn error_envelope(handler: u16, request_id: u64, code: ErrorCode, message: &str) -> Bytes {
    let mut out = Vec::new();
    Envelope::encode_header(EnvelopeKind::ErrorResponse, handler, request_id, &mut out);
    ErrorBody { code, message }.encode(&mut out);
    Bytes::from(out)
}

/// Removes a request's entry however its future ends, unless disarmed (`.2`) by one that
/// knows the entry is gone already.
struct PendingGuard<'a>(&'a Inner, u64, bool);

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        if self.2 {
            self.0.pending.lock().remove(&self.1);
        }
    }
}

/// A handler run ended. Only `stop` waits for the last one, so only a stopping node pays for
/// the notification (it takes a lock, and a sequence of requests would pay it for every one).
fn finish_one(inner: &Inner) {
    if inner.inflight.fetch_sub(1, Ordering::SeqCst) == 1
        && inner.state.load(Ordering::SeqCst) != RUNNING
    {
        inner.drained.notify_waiters();
    }
}

/// A handle held by the node's own tasks; it lends a full [`MeshNode`] only while a user
/// handle exists.
struct TaskHandle(Arc<Inner>, std::sync::Weak<Guard>);

impl TaskHandle {
    fn node(&self) -> Option<MeshNode> {
        Some(MeshNode {
            inner: self.0.clone(),
            _guard: self.1.upgrade()?,
        })
    }
}

type Job = BoxFuture<'static, ()>;

/// Runs a job until it first waits, and keeps it in `running` only if it does: most handlers
/// finish in one go (the answer is queued without waiting), and then cost no slot in the set.
/// A job that waits registered the no-op waker; `running` polls it again at once (a pushed
/// future is queued to run), which registers the real one.
fn start_job(running: &mut FuturesUnordered<Job>, mut job: Job) {
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    if job.as_mut().poll(&mut cx).is_pending() {
        running.push(job);
    }
}

/// Drives the transport and runs handlers, all in this one task: a request goes from the
/// socket to its handler, and the answer (carrying the acknowledgement) back to the socket,
/// without waking another task.
async fn receive_loop(handle: TaskHandle, mut driver: Driver) {
    let inner = handle.0.clone();
    let max = inner.config.max_concurrent_handlers;
    let mut running: FuturesUnordered<Job> = FuturesUnordered::new();
    let mut waiting: VecDeque<Job> = VecDeque::new();
    loop {
        while running.len() < max {
            match waiting.pop_front() {
                Some(j) => running.push(j),
                None => break,
            }
        }
        let can_read = waiting.len() < max;
        tokio::select! {
            biased;
            Some(()) = running.next(), if !running.is_empty() => {}
            m = std::future::poll_fn(|cx| driver.poll_recv(cx, can_read)) => match m {
                Some(m) => {
                    let Some(node) = handle.node() else { return };
                    on_message(&node, m, &mut running, &mut waiting, max);
                }
                None => break,
            },
        }
    }
    // Closed: let what runs finish (stop() cancels them past its deadline by aborting us).
    while running.next().await.is_some() {}
}

fn on_message(
    node: &MeshNode,
    m: Received,
    running: &mut FuturesUnordered<Job>,
    waiting: &mut VecDeque<Job>,
    max: usize,
) {
    let inner = &node.inner;
    let Ok((env, payload)) = split_envelope(m.data) else {
        inner.counters.malformed.fetch_add(1, Ordering::Relaxed);
        debug!(from = %m.from, "unreadable envelope dropped");
        return;
    };
    match env.kind {
        EnvelopeKind::Response | EnvelopeKind::ErrorResponse => {
            resolve_answer(inner, m.from, &env, payload);
        }
        _ => {
            let reply = (env.kind == EnvelopeKind::Request).then_some(ReplyTo {
                peer: m.from,
                request_id: env.request_id,
                handler: env.handler,
                reliable: m.reliable,
            });
            let sender = NodeKey::from(m.from);
            if let Some(to) = reply {
                if node.stopping() {
                    running.push(answer_job(
                        node,
                        to,
                        Err(Failure::new(ErrorCode::SHUTTING_DOWN, "shutting down")),
                    ));
                    return;
                }
                match env.handler {
                    system::PING => {
                        running.push(answer_job(node, to, Ok(None)));
                        return;
                    }
                    system::ECHO => {
                        running.push(answer_job(node, to, Ok(Some(payload))));
                        return;
                    }
                    _ => {}
                }
            }
            if env.handler == system::SHARED {
                let r = crate::shared::on_message(node, sender, &payload);
                match (reply, r) {
                    (Some(to), Some(Ok(bytes))) => {
                        running.push(answer_job(node, to, Ok(Some(bytes))))
                    }
                    (Some(to), Some(Err(e))) => {
                        inner.counters.malformed.fetch_add(1, Ordering::Relaxed);
                        running.push(answer_job(
                            node,
                            to,
                            Err(Failure::new(ErrorCode::BAD_REQUEST, e)),
                        ));
                    }
                    (Some(to), None) => running.push(answer_job(
                        node,
                        to,
                        Err(Failure::new(
                            ErrorCode::BAD_REQUEST,
                            "a one-way message sent as a request",
                        )),
                    )),
                    (None, Some(Err(e))) => {
                        inner.counters.malformed.fetch_add(1, Ordering::Relaxed);
                        debug!(from = %m.from, error = %e, "shared-object message dropped");
                    }
                    (None, _) => {}
                }
                return;
            }
            let job = if env.handler == system::RELAY {
                let Some(to) = reply else {
                    inner.counters.malformed.fetch_add(1, Ordering::Relaxed);
                    return;
                };
                if !inner.membership.node_exists(sender) {
                    // Relays spread only among members: a stranger cannot make the mesh
                    // amplify its message.
                    running.push(answer_job(
                        node,
                        to,
                        Err(Failure::new(
                            ErrorCode::BAD_REQUEST,
                            "relay from a node that is not a member",
                        )),
                    ));
                    return;
                }
                let Some((header, data)) = relay::decode(&payload) else {
                    inner.counters.malformed.fetch_add(1, Ordering::Relaxed);
                    running.push(answer_job(
                        node,
                        to,
                        Err(Failure::new(ErrorCode::BAD_REQUEST, "unreadable relay")),
                    ));
                    return;
                };
                let inner2 = inner.clone();
                let relay = relay_job(node.clone(), to, sender, header, data);
                async move {
                    relay.await;
                    finish_one(&inner2);
                }
                .boxed()
            } else {
                let h = inner.handlers.read().get(&env.handler).cloned();
                let Some(h) = h else {
                    inner.counters.no_handler.fetch_add(1, Ordering::Relaxed);
                    match reply {
                        Some(to) => running.push(answer_job(
                            node,
                            to,
                            Err(Failure::new(
                                ErrorCode::NO_HANDLER,
                                format!("no handler {}", env.handler),
                            )),
                        )),
                        None => {
                            debug!(handler = env.handler, from = %m.from, "message for no handler dropped")
                        }
                    }
                    return;
                };
                let ctx = node.context(sender, false, m.reliable, env.handler);
                let node2 = node.clone();
                // One box for the handler's run and its bookkeeping (a job per request).
                async move {
                    let r = handler::run(h, payload, ctx).await;
                    match reply {
                        Some(to) => send_answer(&node2, to, r).await,
                        None => {
                            if let Err(f) = r {
                                debug!(error = %f.message, "one-way handler failed");
                            }
                        }
                    }
                    finish_one(&node2.inner);
                }
                .boxed()
            };
            inner.inflight.fetch_add(1, Ordering::AcqRel);
            if running.len() < max {
                start_job(running, job);
            } else if let Some(to) = reply {
                finish_one(inner);
                inner.counters.overloaded.fetch_add(1, Ordering::Relaxed);
                running.push(answer_job(
                    node,
                    to,
                    Err(Failure::new(
                        ErrorCode::OVERLOADED,
                        "too many handlers running",
                    )),
                ));
            } else {
                waiting.push_back(job);
            }
        }
    }
}

/// An answer arrived: it completes the request it answers, if the node asked is the one
/// answering.
fn resolve_answer(inner: &Inner, from: SocketAddr, env: &Envelope<'_>, payload: Bytes) {
    let answer = if env.kind == EnvelopeKind::Response {
        Ok(payload)
    } else {
        match ErrorBody::decode(&payload) {
            Ok(b) => Err(RequestError::from_remote(
                NodeKey::from(from),
                env.handler,
                b.code,
                b.message,
            )),
            Err(_) => {
                inner.counters.malformed.fetch_add(1, Ordering::Relaxed);
                return;
            }
        }
    };
    let mut pending = inner.pending.lock();
    // Only the node asked may answer (the original took any answer with the id).
    match pending.get(&env.request_id) {
        Some(p) if p.peer == from && p.handler == env.handler => {
            if let Some(p) = pending.remove(&env.request_id) {
                let _ = p.tx.send(answer);
            }
        }
        _ => debug!(%from, "answer to no request of ours dropped"),
    }
}

/// Takes answers straight from the transport's task: the waiting request is woken without a
/// hand-off through the receive loop. Everything else goes on to the loop.
fn intercept_answers(inner: std::sync::Weak<Inner>) -> mesh_rudp::Intercept {
    Arc::new(move |m: Received| {
        let head = match Envelope::decode(&m.data) {
            Ok(env)
                if matches!(
                    env.kind,
                    EnvelopeKind::Response | EnvelopeKind::ErrorResponse
                ) =>
            {
                without_payload(&env)
            }
            _ => return Some(m),
        };
        let Some(inner) = inner.upgrade() else {
            return Some(m);
        };
        let mut payload = m.data;
        bytes::Buf::advance(&mut payload, Envelope::header_len(head.kind));
        resolve_answer(&inner, m.from, &head, payload);
        None
    })
}

fn without_payload(env: &Envelope<'_>) -> Envelope<'static> {
    Envelope {
        kind: env.kind,
        handler: env.handler,
        request_id: env.request_id,
        payload: &[],
    }
}

/// Splits a received message into its envelope (with an empty payload) and the payload, which
/// keeps the message's buffer: moving its start past the header allocates nothing, where
/// slicing a buffer made from a `Vec` allocates a shared handle.
fn split_envelope(data: Bytes) -> Result<(Envelope<'static>, Bytes), DecodeError> {
    let head = without_payload(&Envelope::decode(&data)?);
    let mut payload = data;
    bytes::Buf::advance(&mut payload, Envelope::header_len(head.kind));
    Ok((head, payload))
}

/// A relay head's work: run the handler here (once per fan-out), spread to the rest, report.
fn relay_job(node: MeshNode, to: ReplyTo, from: NodeKey, header: RelayHeader, data: Bytes) -> Job {
    async move {
        let inner = &node.inner;
        let local = inner.local;
        let fresh = inner.seen.lock().insert(header.origin, header.fanout);
        let here = if fresh {
            node.deliver_local(
                header.handler,
                data.clone(),
                true,
                Some(from),
                header.origin,
            )
        } else {
            Ok(())
        };
        let mut report = RelayReport::default();
        match here {
            Ok(()) => report.delivered.push(local),
            Err(e) => report.failed.push((local, e)),
        }
        if !header.nodes.is_empty() {
            if !inner.config.relay_delay.is_zero() {
                tokio::time::sleep(inner.config.relay_delay).await;
            }
            let deadline = Instant::now() + Duration::from_millis(u64::from(header.budget_ms));
            let sub = node
                .fan_out(
                    header.handler,
                    data,
                    header.nodes,
                    usize::from(header.limit.max(1)),
                    header.origin,
                    header.fanout,
                    deadline,
                )
                .await;
            report.delivered.extend(sub.delivered);
            report.failed.extend(sub.failed);
        }
        let r = mesh_wire::codec::encode(&report)
            .map(|v| Some(Bytes::from(v)))
            .map_err(|e| Failure::new(ErrorCode::HANDLER_FAILED, e.to_string()));
        send_answer(&node, to, r).await;
    }
    .boxed()
}

fn answer_job(node: &MeshNode, to: ReplyTo, r: Result<Option<Bytes>, Failure>) -> Job {
    let node = node.clone();
    async move { send_answer(&node, to, r).await }.boxed()
}

async fn send_answer(node: &MeshNode, to: ReplyTo, r: Result<Option<Bytes>, Failure>) {
    let bytes = match r {
        Ok(answer) => envelope_payload(
            EnvelopeKind::Response,
            to.handler,
            to.request_id,
            &answer.unwrap_or_default(),
        ),
        Err(f) => error_envelope(to.handler, to.request_id, f.code, &f.message).into(),
    };
    let t = &node.inner.transport;
    if !to.reliable && bytes.len() <= t.max_unreliable_size() {
        if let Err(e) = t.send_unreliable(to.peer, bytes.to_bytes()) {
            debug!(to = %to.peer, error = %e, "answer not sent");
        }
        return;
    }
    // Queued, not awaited: the answer's fate is the requester's to see (or time out on).
    // Lazy: the requester's next message can carry the acknowledgement.
    if let Err(e) = t.queue_lazy(to.peer, bytes, Delivery::Unordered).await {
        debug!(to = %to.peer, error = %e, "answer not sent");
    }
}

/// Runs the shared objects' timers and follows membership, while the node has users.
async fn maintain_shared(handle: TaskHandle) {
    if let Some(node) = handle.node() {
        crate::shared::maintain(node).await;
    }
}

/// Fails requests whose time is up. One task and one timer serve all of a node's requests, so
/// a request registers no timer of its own (that cost about 3 % of a round trip's
/// instructions): it stores its deadline in its pending entry, and this task sleeps until the
/// earliest deadline, fails what is due and plans again. A request due before the planned look
/// wakes it; with the same timeout for every request that happens only when none was pending,
/// so a steady stream of requests costs this task about one wake-up per timeout.
async fn expire_requests(inner: Arc<Inner>) {
    let mut expired = Vec::new();
    loop {
        let next = {
            let now = Instant::now();
            let mut p = inner.pending.lock();
            let due: Vec<u64> = p
                .iter()
                .filter(|(_, v)| v.deadline.is_some_and(|d| d <= now))
                .map(|(k, _)| *k)
                .collect();
            expired.extend(due.into_iter().filter_map(|id| p.remove(&id)));
            let next = p.values().filter_map(|v| v.deadline).min();
            inner.expiry_at.store(
                next.map_or(u64::MAX, |d| micros_since(inner.epoch, d)),
                Ordering::Relaxed,
            );
            next
        };
        for p in expired.drain(..) {
            let _ = p.tx.send(Err(RequestError::Timeout {
                handler: p.handler,
                node: NodeKey::from(p.peer),
                after: p.after,
            }));
        }
        // A request due earlier than planned notifies; the permit is kept if this has not
        // started waiting yet.
        match next {
            Some(at) => {
                tokio::select! {
                    () = tokio::time::sleep_until(at) => {}
                    () = inner.expiry.notified() => {}
                }
            }
            None => inner.expiry.notified().await,
        }
    }
}

/// Microseconds from `epoch` to `t` (0 before it), saturating.
fn micros_since(epoch: Instant, t: Instant) -> u64 {
    u64::try_from(t.saturating_duration_since(epoch).as_micros()).unwrap_or(u64::MAX - 1)
}

/// A node the registry no longer lists is pinged over the mesh before it is taken for gone: a
/// node that lost the registry (an outage on its side, a registry restarted empty that it has
/// not written to yet) but not the network stays a member. Only a failure that the transport
/// or the timeout saw counts as dead; anything else (this node stopping, too many requests)
/// keeps it.
fn ping_before_departure(inner: std::sync::Weak<Inner>) -> mesh_discovery::LivenessCheck {
    Arc::new(move |key: NodeKey| {
        let inner = inner.clone();
        Box::pin(async move {
            let Some(node) = inner.upgrade().as_ref().and_then(MeshNode::from_inner) else {
                return true;
            };
            let timeout = node.inner.config.peer_timeout.saturating_mul(2);
            match node.ping(key, timeout).await {
                Ok(_) => true,
                Err(RequestError::NotDelivered { .. } | RequestError::Timeout { .. }) => false,
                Err(e) => {
                    debug!(node = %key, error = %e, "liveness unknown: kept");
                    true
                }
            }
        })
    })
}

/// Tells membership and waiting requests about peers the transport saw go.
async fn watch_peers(inner: Arc<Inner>) {
    while let Some((peer, reason)) = inner.transport.next_peer_down().await {
        let key = NodeKey::from(peer);
        if let Some(node) = MeshNode::from_inner(&inner) {
            // Messages between us may have been lost with the session: replicas resync.
            crate::shared::peer_reset(&node, key);
        }
        if matches!(reason, DownReason::Timeout | DownReason::Closed) {
            debug!(node = %key, ?reason, "peer down: leaving the view");
            inner.membership.mark_down(key);
        }
        let failed: Vec<Pending> = {
            let mut p = inner.pending.lock();
            let ids: Vec<u64> = p
                .iter()
                .filter(|(_, v)| v.peer == peer)
                .map(|(k, _)| *k)
                .collect();
            ids.into_iter().filter_map(|id| p.remove(&id)).collect()
        };
        for p in failed {
            let _ = p.tx.send(Err(RequestError::NotDelivered {
                node: key,
                error: DeliveryError::Unreachable(format!("peer down ({reason:?})")),
            }));
        }
    }
}
