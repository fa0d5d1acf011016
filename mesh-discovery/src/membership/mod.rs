//! The live view of a mesh, kept by one node on top of a [`Backend`]: here the API and its
//! state; [`sync`] keeps it current.

mod sync;
mod ticker;

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::{Mutex, RwLock};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::{broadcast, Notify};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::warn;

use self::sync::{depart, publish, reconcile, run, Evidence};
use crate::{Backend, DiscoveryError, NodeKey, NodeRecord};

/// Membership events buffered per subscriber.
const EVENT_BUFFER: usize = 4096;
/// Departed nodes whose backup lists are remembered for [`Membership::prepare_nodes`].
const MAX_DEPARTED: usize = 4096;
/// Longest back-off between attempts while the registry fails, in intervals. After an outage
/// every live node has registered again within this plus one record TTL (see
/// [`MembershipConfig::ttl_intervals`]): the grace before a missing record counts as a
/// departure.
const MAX_BACKOFF_INTERVALS: u32 = 10;

/// Asks whether a node whose record is gone from the registry is in fact alive: `true` keeps
/// it in the view (see [`Membership::set_liveness_check`]).
pub type LivenessCheck =
    Arc<dyn Fn(NodeKey) -> Pin<Box<dyn Future<Output = bool> + Send>> + Send + Sync>;

/// How a node keeps its membership.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct MembershipConfig {
    /// How often the node refreshes its liveness and runs the hooks. Default 1 s.
    pub update_interval: Duration,
    /// A record lives this many intervals past its last refresh. Default 3.
    pub ttl_intervals: u32,
    /// A full read of the registry every this many intervals, as a safety net under the
    /// pushed changes. Default 30.
    pub reconcile_every: u32,
    /// Node types whose nodes pick backups, and how many each. Default none.
    pub backups: HashMap<String, usize>,
}

impl Default for MembershipConfig {
    fn default() -> Self {
        Self {
            update_interval: Duration::from_secs(1),
            ttl_intervals: 3,
            reconcile_every: 30,
            backups: HashMap::new(),
        }
    }
}

/// A change in the view.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum MembershipEvent {
    /// A node appeared (or came back with a new incarnation).
    Joined(NodeRecord),
    /// A node's record changed (type, values or backups).
    Updated(NodeRecord),
    /// A node left: it said goodbye, the layer above saw it stop answering
    /// ([`Membership::mark_down`]), or its record expired while the registry was healthy (and,
    /// with a [liveness check](Membership::set_liveness_check), it did not answer either). An
    /// outage or an emptied registry alone never makes one. Its last known record.
    Left(NodeRecord),
}

/// Counters of a membership.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct DiscoveryStats {
    /// Registry calls made.
    pub registry_calls: u64,
    /// Registry calls that failed.
    pub registry_errors: u64,
    /// Records skipped because they could not be read (malformed, foreign, oversized).
    pub skipped_records: u64,
    /// Full reconciliations done.
    pub reconciliations: u64,
}

type UpdateHook = Box<dyn Fn() + Send + Sync>;
type UpdatedHook = Box<dyn Fn(&[NodeRecord]) + Send + Sync>;

struct Shared<R> {
    registry: R,
    config: MembershipConfig,
    local: Mutex<NodeRecord>,
    dirty: AtomicBool,
    view: RwLock<BTreeMap<NodeKey, NodeRecord>>,
    departed: Mutex<VecDeque<(NodeKey, Vec<NodeKey>)>>,
    events: broadcast::Sender<MembershipEvent>,
    on_update: Mutex<Vec<UpdateHook>>,
    on_updated: Mutex<Vec<UpdatedHook>>,
    stats: Mutex<DiscoveryStats>,
    liveness: RwLock<Option<LivenessCheck>>,
    /// Nodes whose record is gone while a liveness check asks whether they are alive.
    suspects: Mutex<HashSet<NodeKey>>,
    wake: Notify,
    stop: Notify,
    stopped: AtomicBool,
}

/// One node's membership: it publishes the node's record and keeps a live view of the others.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// use mesh_discovery::{Membership, MembershipConfig, MemoryRegistry, NodeKey, NodeRecord};
///
/// let registry = MemoryRegistry::new(); // shared by both nodes
/// let a = NodeKey::new("127.0.0.1".parse().unwrap(), 8100);
/// let b = NodeKey::new("127.0.0.1".parse().unwrap(), 8101);
/// let ma = Membership::start(registry.clone(), NodeRecord::new(a, "game", 1, 0), MembershipConfig::default()).await;
/// let mb = Membership::start(registry.clone(), NodeRecord::new(b, "game", 2, 0), MembershipConfig::default()).await;
/// mb.set_value("status", &"online").unwrap();
/// ma.wait_for(|m| m.node_value::<String>(b, "status").is_some()).await;
/// assert_eq!(ma.node_value::<String>(b, "status").as_deref(), Some("online"));
/// assert_eq!(ma.nodes_by_type("game").len(), 2);
/// mb.stop().await;
/// ma.stop().await;
/// # }
/// ```
pub struct Membership<R: Backend> {
    shared: Arc<Shared<R>>,
    task: Mutex<Option<JoinHandle<()>>>,
}

impl<R: Backend> std::fmt::Debug for Membership<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Membership")
            .field("local", &self.shared.local.lock().key)
            .field("nodes", &self.shared.view.read().len())
            .finish()
    }
}

impl<R: Backend> Membership<R> {
    /// Publishes `local` and starts keeping the view. A registry that is down at start is
    /// retried with back-off; the node works with what it knows meanwhile.
    pub async fn start(registry: R, local: NodeRecord, config: MembershipConfig) -> Self {
        let shared = Arc::new(Shared {
            registry,
            config,
            local: Mutex::new(local),
            dirty: AtomicBool::new(true),
            view: RwLock::new(BTreeMap::new()),
            departed: Mutex::new(VecDeque::new()),
            events: broadcast::channel(EVENT_BUFFER).0,
            on_update: Mutex::new(Vec::new()),
            on_updated: Mutex::new(Vec::new()),
            stats: Mutex::new(DiscoveryStats::default()),
            liveness: RwLock::new(None),
            suspects: Mutex::new(HashSet::new()),
            wake: Notify::new(),
            stop: Notify::new(),
            stopped: AtomicBool::new(false),
        });
        let notices = shared.registry.subscribe();
        // First publish and read before returning, so the view is useful at once. A node that
        // starts on a healthy registry may take absences as evidence at once (it has seen no
        // outage); one that starts on a failing registry waits for the grace after recovery.
        let mut evidence = Evidence {
            from: Some(Instant::now()),
            recheck: false,
        };
        let ok = publish(&shared).await.is_ok() && reconcile(&shared, &mut evidence).await.is_ok();
        if !ok {
            evidence.outage();
        }
        let task = tokio::spawn(run(shared.clone(), notices, ok, evidence));
        Self {
            shared,
            task: Mutex::new(Some(task)),
        }
    }

    /// This node's key.
    pub fn local_key(&self) -> NodeKey {
        self.shared.local.lock().key
    }

    /// This node's record as published.
    pub fn info(&self) -> NodeRecord {
        self.shared.local.lock().clone()
    }

    /// This node's type.
    pub fn node_type(&self) -> String {
        self.shared.local.lock().node_type.clone()
    }

    /// Changes this node's type; published at once.
    pub fn set_type(&self, node_type: impl Into<String>) {
        self.shared.local.lock().node_type = node_type.into();
        self.changed();
    }

    /// Sets a value others read with [`node_value`](Self::node_value); published at once.
    pub fn set_value<T: Serialize + ?Sized>(
        &self,
        name: &str,
        value: &T,
    ) -> Result<(), DiscoveryError> {
        let v = serde_json::to_value(value).map_err(|e| DiscoveryError::Value(e.to_string()))?;
        self.shared.local.lock().values.insert(name.to_owned(), v);
        self.changed();
        Ok(())
    }

    /// Removes a value; published at once.
    pub fn remove_value(&self, name: &str) {
        self.shared.local.lock().values.remove(name);
        self.changed();
    }

    fn changed(&self) {
        self.shared.dirty.store(true, Ordering::Release);
        self.shared.wake.notify_one();
    }

    /// Every live node, this one included, ordered by key.
    pub fn nodes(&self) -> Vec<NodeRecord> {
        let local = self.shared.local.lock().clone();
        let view = self.shared.view.read();
        let mut all: Vec<NodeRecord> = view.values().cloned().collect();
        all.push(local);
        all.sort_by_key(|r| r.key);
        all
    }

    /// Live nodes of a type, this one included if it has that type.
    pub fn nodes_by_type(&self, node_type: &str) -> Vec<NodeRecord> {
        self.nodes()
            .into_iter()
            .filter(|r| r.node_type == node_type)
            .collect()
    }

    /// A node's value, decoded as `T`; `None` if the node or value is unknown or is not a `T`.
    /// Falsy values (0, false, "") come back as themselves, unlike the original.
    pub fn node_value<T: DeserializeOwned>(&self, key: NodeKey, name: &str) -> Option<T> {
        let v = if self.is_local(key) {
            self.shared.local.lock().values.get(name).cloned()
        } else {
            self.shared.view.read().get(&key)?.values.get(name).cloned()
        }?;
        serde_json::from_value(v).ok()
    }

    /// One live node's record (this one included), without copying the whole view.
    pub fn node(&self, key: NodeKey) -> Option<NodeRecord> {
        if self.is_local(key) {
            return Some(self.info());
        }
        self.shared.view.read().get(&key).cloned()
    }

    /// One live node's type (this one included).
    pub fn node_type_of(&self, key: NodeKey) -> Option<String> {
        if self.is_local(key) {
            return Some(self.node_type());
        }
        self.shared
            .view
            .read()
            .get(&key)
            .map(|r| r.node_type.clone())
    }

    /// Whether a node is live (this one included).
    pub fn node_exists(&self, key: NodeKey) -> bool {
        self.is_local(key) || self.shared.view.read().contains_key(&key)
    }

    /// Whether `key` is this node.
    pub fn is_local(&self, key: NodeKey) -> bool {
        self.shared.local.lock().key == key
    }

    /// The backups a node chose (empty if unknown).
    pub fn backups_of(&self, key: NodeKey) -> Vec<NodeKey> {
        if self.is_local(key) {
            return self.shared.local.lock().backups.clone();
        }
        self.shared
            .view
            .read()
            .get(&key)
            .map(|r| r.backups.clone())
            .unwrap_or_default()
    }

    /// Replaces dead nodes by their first live backup of `node_type` (the original's
    /// `prepareNodes`). Live nodes are kept; a dead node with no live backup is left out
    /// (the original returned the dead node); duplicates are removed.
    pub fn prepare_nodes(&self, node_type: &str, nodes: &[NodeKey]) -> Vec<NodeKey> {
        let mut out: Vec<NodeKey> = Vec::with_capacity(nodes.len());
        for &n in nodes {
            let pick = if self.node_exists(n) {
                Some(n)
            } else {
                let departed = self.shared.departed.lock();
                departed
                    .iter()
                    .rev()
                    .find(|(k, _)| *k == n)
                    .and_then(|(_, backups)| {
                        backups.iter().copied().find(|b| {
                            self.nodes()
                                .iter()
                                .any(|r| r.key == *b && r.node_type == node_type)
                        })
                    })
            };
            if let Some(p) = pick {
                if !out.contains(&p) {
                    out.push(p);
                }
            }
        }
        out
    }

    /// A stream of joins, updates and leaves of other nodes.
    pub fn events(&self) -> broadcast::Receiver<MembershipEvent> {
        self.shared.events.subscribe()
    }

    /// Runs `f` at the start of every update, before this node publishes (the original's
    /// `onUpdate`): a place to refresh values.
    pub fn on_update(&self, f: impl Fn() + Send + Sync + 'static) {
        self.shared.on_update.lock().push(Box::new(f));
    }

    /// Runs `f` after every update with every live node (the original's `onUpdated`).
    pub fn on_updated(&self, f: impl Fn(&[NodeRecord]) + Send + Sync + 'static) {
        self.shared.on_updated.lock().push(Box::new(f));
    }

    /// The transport saw `key` stop answering: drop it from the view now (a `Left` event)
    /// rather than when its record expires. A live node reappears at the next reconciliation.
    pub fn mark_down(&self, key: NodeKey) {
        depart(&self.shared, key);
    }

    /// Installs a check run before a node is taken for gone on the registry's word alone (its
    /// record expired, or is missing from a full read): `true` (alive) keeps it in the view
    /// with its last known record. mesh-link pings the node over the mesh, so a node that lost
    /// the registry but not the network stays a member. A goodbye and
    /// [`mark_down`](Self::mark_down) need no check.
    pub fn set_liveness_check(&self, check: Option<LivenessCheck>) {
        *self.shared.liveness.write() = check;
    }

    /// Counters.
    pub fn stats(&self) -> DiscoveryStats {
        self.shared.stats.lock().clone()
    }

    /// Waits until `cond` holds, re-checking after every change (for tests and tools).
    pub async fn wait_for(&self, mut cond: impl FnMut(&Self) -> bool) {
        let mut events = self.events();
        let mut tick = tokio::time::interval(self.shared.config.update_interval);
        while !cond(self) {
            tokio::select! {
                _ = events.recv() => {}
                _ = tick.tick() => {}
            }
        }
    }

    /// Deregisters at once (others see `Left` within an interval) and stops.
    pub async fn stop(&self) {
        if self.shared.stopped.swap(true, Ordering::AcqRel) {
            return;
        }
        self.shared.stop.notify_one();
        let task = self.task.lock().take();
        if let Some(mut t) = task {
            // The loop may be inside a registry call that an outage holds up (fred's command
            // timeout): give it one interval, then stop it where it is.
            if tokio::time::timeout(self.shared.config.update_interval, &mut t)
                .await
                .is_err()
            {
                t.abort();
            }
        }
        let key = self.local_key();
        if let Err(e) = self.shared.registry.remove(key).await {
            warn!(error = %e, "could not deregister; the record will expire");
        }
    }
}

impl<R: Backend> Drop for Membership<R> {
    fn drop(&mut self) {
        // Dropped without stop(): like a killed process, the record simply expires.
        if let Some(t) = self.task.lock().take() {
            t.abort();
        }
    }
}
