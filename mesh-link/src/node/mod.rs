//! [`MeshNode`]: one process's membership of a mesh, its handlers and its messaging.
//!
//! The rooms of this module:
//! - here: the handle, what it holds, starting and stopping, and the node's background tasks;
//! - [`builder`]: the [`Builder`] and the pure mapping from [`Config`] to the settings of the
//!   transport and of membership;
//! - [`handlers`]: registering handlers; [`members`]: what the node sees of the mesh;
//! - [`send`]: one-way messages, datagrams and requests;
//! - [`serve`]: the receive loop, admission, and answers; [`system`]: the system handlers,
//!   as a dispatch table; [`relay`]: relay trees.
//!
//! Below the node sits [`Core`](crate::core::Core) (transport, pending requests, the request
//! primitive), which the shared-object [service](crate::service) uses too.

pub(crate) mod builder;
mod handlers;
mod members;
mod outbox;
pub(crate) mod relay;
mod send;
mod serve;
pub mod system;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use mesh_discovery::{Membership, MembershipEvent, NodeKey, NodeRecord};
use mesh_rudp::DownReason;
use parking_lot::Mutex;
use rand_core::{Rng, SeedableRng};
use tokio::sync::{broadcast, Notify};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::backend::AnyBackend;
use crate::core::{Core, RUNNING, STOPPED, STOPPING};
use crate::service::Service;
use crate::shared::SharedService;
use crate::{Config, DeliveryError, Error, Registry, RequestError, StopReport};

pub use builder::Builder;
pub use outbox::{Outbox, OutboxFailure, OutboxReport, OUTBOX_DETAILS, OUTBOX_WINDOW};
pub use send::SendOptions;

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

/// The node's state, shared by its handles and its tasks.
pub(crate) struct Inner {
    pub(crate) core: Arc<Core>,
    pub(crate) membership: Membership<AnyBackend>,
    pub(crate) config: Config,
    pub(crate) handlers: handlers::Handlers,
    /// Names relay fan-outs.
    pub(crate) rng: Mutex<rand_pcg::Pcg64Mcg>,
    pub(crate) seen: Mutex<relay::Seen>,
    /// Handler runs started and not finished (those waiting included).
    pub(crate) inflight: AtomicUsize,
    pub(crate) drained: Notify,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    pub(crate) counters: Counters,
    /// Handler run times, with `metrics_interval` set.
    pub(crate) timings: Option<Timings>,
    /// When the node started.
    pub(crate) started: std::time::Instant,
    /// The system services the node owns and dispatches to (shared objects).
    pub(crate) shared: Arc<SharedService>,
    /// The user handles' guard, for tasks that need a full handle now and then.
    guard: OnceLock<Weak<Guard>>,
    /// The original Node.js wire, in node-compat mode.
    #[cfg(feature = "node-compat")]
    pub(crate) node_wire: OnceLock<Arc<crate::compat::NodeWire>>,
}

impl Inner {
    pub(crate) fn local(&self) -> NodeKey {
        self.core.local
    }

    /// The services, each with its system handler id.
    fn services(&self) -> [(u16, &dyn Service); 1] {
        [(system::SHARED, &*self.shared as &dyn Service)]
    }

    /// A handler run ended. Only `stop` waits for the last one, so only a stopping node pays
    /// for the notification (it takes a lock, and a sequence of requests would pay it for
    /// every one).
    pub(crate) fn finish_one(&self) {
        if self.inflight.fetch_sub(1, Ordering::SeqCst) == 1
            && self.core.state.load(Ordering::SeqCst) != RUNNING
        {
            self.drained.notify_waiters();
        }
    }
}

#[derive(Default)]
pub(crate) struct Counters {
    pub(crate) type_mismatch: AtomicU64,
    pub(crate) malformed: AtomicU64,
    pub(crate) no_handler: AtomicU64,
    pub(crate) overloaded: AtomicU64,
    /// Handler runs finished, and those that failed.
    pub(crate) handled: AtomicU64,
    pub(crate) handler_failed: AtomicU64,
    /// Members that joined and left this node's view.
    pub(crate) joined: AtomicU64,
    pub(crate) left: AtomicU64,
}

/// Histograms of a node with `metrics_interval` set (registered once, at start).
pub(crate) struct Timings {
    pub(crate) handler: metrics::Histogram,
}

/// Counters of a node's messaging layer.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct NodeStats {
    /// Messages dropped because they could not be read.
    pub malformed: u64,
    /// Typed messages (and untyped ones to typed handlers) whose type the handler does not
    /// serve: requests answered `TypeMismatch`, one-way messages dropped.
    pub type_mismatch: u64,
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
pub(crate) struct Guard(Arc<Inner>);

impl Drop for Guard {
    fn drop(&mut self) {
        if self.0.core.state.load(Ordering::Acquire) != STOPPED {
            warn!(node = %self.0.local(), "MeshNode dropped without stop(): aborting its tasks");
            for t in self.0.tasks.lock().drain(..) {
                t.abort();
            }
            self.0.handlers.edit(|t| t.clear());
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
            .field("local", &self.inner.local())
            .field("state", &self.inner.core.state.load(Ordering::Relaxed))
            .finish()
    }
}

/// A seed from the OS for the node's random choices (ids, incarnations).
pub(crate) fn os_seed() -> u64 {
    getrandom::u64().unwrap_or_else(|e| {
        // No entropy source: the clock still makes starts differ.
        warn!(error = %e, "no OS randomness; seeding from the clock");
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64)
    })
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
        handlers: Vec<(u16, handlers::Registration)>,
    ) -> Result<Self, Error> {
        config.validate()?;
        let table = handlers::table(handlers)?;
        let registry = match registry {
            Some(r) => r,
            None => match &config.redis {
                Some(url) => Registry::redis(url)?,
                None => Registry::memory(),
            },
        };
        let mut rng = rand_pcg::Pcg64Mcg::seed_from_u64(config.seed.unwrap_or_else(os_seed));
        let address = config.resolve_address()?;
        let tc = builder::transport_config(&config, rng.next_u64());
        let (transport, driver) = builder::bind_range(address, &config, tc).await?;
        let core = Arc::new(Core::new(
            transport,
            config.max_pending_requests,
            config.request_timeout,
            rng.next_u64() >> 1,
        ));
        let local = core.local;
        let backend = match registry {
            Registry::Memory(m) => AnyBackend::Memory(m),
            #[cfg(feature = "redis")]
            Registry::Redis(t) => {
                match mesh_discovery::RedisRegistry::connect_to(&t, &config.prefix).await {
                    #[cfg(feature = "node-compat")]
                    Ok(r) if config.node_compat => {
                        AnyBackend::Compat(mesh_discovery::compat::CompatRegistry::new(
                            r,
                            &config.prefix,
                            config.update_interval,
                        ))
                    }
                    Ok(r) => AnyBackend::Redis(r),
                    Err(e) => {
                        core.transport.close().await;
                        return Err(e.into());
                    }
                }
            }
        };
        // (`validate` refused `node_compat` in a build without the feature.)
        #[cfg(feature = "node-compat")]
        let both_schemas = matches!(backend, AnyBackend::Compat(_));
        #[cfg(not(feature = "node-compat"))]
        let both_schemas = false;
        if config.node_compat && !both_schemas {
            core.transport.close().await;
            return Err(Error::Config(
                "node_compat needs Redis as the registry: the original's nodes are found there"
                    .to_owned(),
            ));
        }
        let started_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let mut record = NodeRecord::new(
            local,
            config.node_type.clone(),
            rng.next_u64() | 1,
            started_ms,
        );
        record.values = config.values.clone();
        let membership =
            Membership::start(backend, record, builder::membership_config(&config)).await;
        let shared = SharedService::new(core.clone(), rng.next_u64());
        let timings = config.metrics_interval.map(|_| Timings {
            handler: metrics::histogram!("mesh_handler_seconds", "node" => local.to_string()),
        });
        let inner = Arc::new(Inner {
            core,
            membership,
            config,
            handlers: handlers::Handlers::new(table),
            rng: Mutex::new(rng),
            seen: Mutex::new(relay::Seen::default()),
            inflight: AtomicUsize::new(0),
            drained: Notify::new(),
            tasks: Mutex::new(Vec::new()),
            counters: Counters::default(),
            timings,
            started: std::time::Instant::now(),
            shared,
            guard: OnceLock::new(),
            #[cfg(feature = "node-compat")]
            node_wire: OnceLock::new(),
        });
        let node = Self {
            _guard: Arc::new(Guard(inner.clone())),
            inner,
        };
        let _ = node.inner.guard.set(Arc::downgrade(&node._guard));
        let core = &node.inner.core;
        core.transport.set_intercept_filtered(
            crate::core::is_answer,
            crate::core::intercept_answers(Arc::downgrade(core)),
        );
        #[cfg(feature = "node-compat")]
        if node.inner.config.node_compat {
            let wire = crate::compat::NodeWire::start(
                core.clone(),
                Arc::downgrade(&node.inner),
                node.inner.rng.lock().next_u64(),
            );
            let _ = node.inner.node_wire.set(wire);
        }
        node.inner
            .membership
            .set_liveness_check(Some(ping_before_departure(Arc::downgrade(&node.inner))));
        let receiver = tokio::spawn(serve::receive_loop(node.downgrade_for_task(), driver));
        let watcher = tokio::spawn(watch_peers(node.inner.clone()));
        let maintainer = tokio::spawn(maintain(node.inner.clone()));
        let expiry = {
            let core = core.clone();
            tokio::spawn(async move { core.pending.run_expiry().await })
        };
        node.inner
            .tasks
            .lock()
            .extend([receiver, watcher, maintainer, expiry]);
        if let Some(every) = node.inner.config.metrics_interval {
            let weak = Arc::downgrade(&node._guard);
            let inner = node.inner.clone();
            let publisher = tokio::spawn(async move {
                let mut tick = tokio::time::interval(every.max(Duration::from_millis(10)));
                loop {
                    tick.tick().await;
                    let Some(guard) = weak.upgrade() else { return };
                    let node = MeshNode {
                        inner: inner.clone(),
                        _guard: guard,
                    };
                    crate::report::publish(&node.report());
                }
            });
            node.inner.tasks.lock().push(publisher);
        }
        let registry = match &node.inner.config.redis {
            Some(url) => redact(url),
            None => "in memory".to_owned(),
        };
        info!(
            node = %local,
            node_type = %node.inner.config.node_type,
            prefix = %node.inner.config.prefix,
            %registry,
            "mesh node started"
        );
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

    /// What keeps this node running while it is held (a shared object's handle holds it).
    pub(crate) fn keepalive(&self) -> Arc<dyn Send + Sync> {
        self._guard.clone()
    }

    pub(crate) fn stopping(&self) -> bool {
        self.inner.core.stopping()
    }

    /// Leaves the mesh gracefully: deregisters at once (others see this node leave within an
    /// update interval), answers new requests with "shutting down", lets running handlers
    /// finish and unacknowledged messages be acknowledged (each up to `stop_timeout`), then
    /// closes. The report says what did not finish. Calling it again returns an empty report.
    pub async fn stop(&self) -> StopReport {
        let inner = &self.inner;
        let core = &inner.core;
        if core
            .state
            .compare_exchange(RUNNING, STOPPING, Ordering::SeqCst, Ordering::Acquire)
            .is_err()
        {
            return StopReport::default();
        }
        info!(node = %core.local, "mesh node stopping");
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
        // Services tell other nodes what leaves with this one (objects owned here die with
        // it), before the transport closes, which waits for that to be acknowledged.
        for (_, s) in inner.services() {
            s.shutdown();
        }
        #[cfg(feature = "node-compat")]
        if let Some(w) = inner.node_wire.get() {
            // Answers and messages to Node nodes still unacknowledged: a while to finish.
            let until = Instant::now() + inner.config.stop_timeout;
            while w.in_flight() > 0 && Instant::now() < until {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            w.close();
        }
        let close = core.transport.close().await;
        let abandoned_requests = core.pending.drain(|| RequestError::Stopped);
        for t in inner.tasks.lock().drain(..) {
            t.abort();
        }
        inner.handlers.edit(|t| t.clear());
        core.state.store(STOPPED, Ordering::Release);
        let report = StopReport {
            undelivered: close
                .undelivered
                .into_iter()
                .map(|(a, id)| (NodeKey::from(a), id.0))
                .collect(),
            abandoned_requests,
            cancelled_handlers,
        };
        info!(
            node = %core.local,
            undelivered = report.undelivered.len(),
            abandoned_requests,
            cancelled_handlers,
            "mesh node stopped"
        );
        report
    }
}

/// A handle held by the node's own tasks; it lends a full [`MeshNode`] only while a user
/// handle exists.
pub(crate) struct TaskHandle(Arc<Inner>, Weak<Guard>);

impl TaskHandle {
    pub(crate) fn inner(&self) -> &Arc<Inner> {
        &self.0
    }

    pub(crate) fn node(&self) -> Option<MeshNode> {
        Some(MeshNode {
            inner: self.0.clone(),
            _guard: self.1.upgrade()?,
        })
    }
}

/// A node the registry no longer lists is pinged over the mesh before it is taken for gone: a
/// node that lost the registry (an outage on its side, a registry restarted empty that it has
/// not written to yet) but not the network stays a member. Only a failure that the transport
/// or the timeout saw counts as dead; anything else (this node stopping, too many requests)
/// keeps it.
fn ping_before_departure(inner: Weak<Inner>) -> mesh_discovery::LivenessCheck {
    Arc::new(move |key: NodeKey| {
        let inner = inner.clone();
        Box::pin(async move {
            let Some(node) = inner.upgrade().as_ref().and_then(MeshNode::from_inner) else {
                return true;
            };
            let timeout = node.inner.config.peer_timeout.saturating_mul(2);
            #[cfg(feature = "node-compat")]
            if let Some(wire) = node.node_wire_to(key) {
                // The original answers its raw ping, not ours.
                return wire.raw_ping(key, timeout).await;
            }
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

/// Tells membership, the services and waiting requests about peers the transport saw go.
async fn watch_peers(inner: Arc<Inner>) {
    let core = &inner.core;
    while let Some((peer, reason)) = core.transport.next_peer_down().await {
        let key = NodeKey::from(peer);
        for (_, s) in inner.services() {
            // Messages between us may have been lost with the session.
            s.peer_reset(key);
        }
        if matches!(reason, DownReason::Timeout | DownReason::Closed) {
            // A member, said at info; a session with anything else (a `mesh-link ping` or
            // `stats` client that closed) only at debug.
            if inner.membership.node_exists(key) {
                info!(node = %key, ?reason, "node marked down by the transport: leaving the view");
            } else {
                debug!(peer = %key, ?reason, "session ended with a peer that is not a member");
            }
            inner.membership.mark_down(key);
        }
        core.pending.fail_peer(peer, || RequestError::NotDelivered {
            node: key,
            error: DeliveryError::Unreachable(format!("peer down ({reason:?})")),
        });
    }
}

/// A registry URL without its password, for logs.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => format!("{}://…@{}", &url[..s], &url[at + 1..]),
        _ => url.to_owned(),
    }
}

/// The longest the maintenance task sleeps with no timer set (it is poked sooner when one is).
const MAINTAIN_IDLE: Duration = Duration::from_secs(3600);

/// Runs the services' timers, each when it is due (an idle node does not wake for them), and
/// tells the services who left the mesh.
async fn maintain(inner: Arc<Inner>) {
    let mut events = inner.membership.events();
    loop {
        let now = Instant::now();
        let next = inner
            .services()
            .iter()
            .filter_map(|(_, s)| s.maintain(now.into_std()))
            .min()
            .map_or(now + MAINTAIN_IDLE, Instant::from_std);
        tokio::select! {
            _ = tokio::time::sleep_until(next) => {}
            _ = inner.core.timers.notified() => {}
            e = events.recv() => match e {
                Ok(MembershipEvent::Left(r)) => {
                    inner.counters.left.fetch_add(1, Ordering::Relaxed);
                    for (_, s) in inner.services() {
                        s.node_left(r.key);
                    }
                }
                Ok(MembershipEvent::Joined(_)) => {
                    inner.counters.joined.fetch_add(1, Ordering::Relaxed);
                }
                Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => return,
            },
        }
    }
}
