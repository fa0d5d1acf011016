//! The live view of a mesh, kept by one node on top of a [`Backend`].

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::future::Future;
use std::hash::{Hash, Hasher};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::{Mutex, RwLock};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::{broadcast, Notify};
use tokio::task::JoinHandle;
use tokio::time::{Instant, MissedTickBehavior};
use tracing::{debug, warn};

use crate::{Backend, DiscoveryError, NodeKey, NodeRecord, Notice, RegistryError};

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

fn ttl<R>(shared: &Shared<R>) -> Duration {
    shared.config.update_interval * shared.config.ttl_intervals.max(1)
}

/// How long after the registry comes back a missing record still proves nothing: every live
/// node has re-registered by then, however far it had backed off.
fn grace<R>(shared: &Shared<R>) -> Duration {
    ttl(shared) + shared.config.update_interval * MAX_BACKOFF_INTERVALS
}

/// Whether a missing record may be taken as evidence now, and what to do when it may not.
#[derive(Debug, Clone, Copy)]
struct Evidence {
    /// From when a record missing from a healthy registry means its node is gone; `None`
    /// while the registry fails (nothing it lacks means anything then).
    from: Option<Instant>,
    /// Absences were set aside: read everything again once `from` has passed.
    recheck: bool,
}

impl Evidence {
    fn usable(&mut self, now: Instant) -> bool {
        let ok = self.from.is_some_and(|t| now >= t);
        if !ok {
            self.recheck = true;
        }
        ok
    }

    /// The registry failed: until it recovers, and for a grace after, absences wait.
    fn outage(&mut self) {
        self.from = None;
    }

    /// The registry works again, or lost its data (our own record was missing, the push
    /// channel reconnected): absences wait for the grace.
    fn recovered<R>(&mut self, shared: &Shared<R>, now: Instant) {
        let until = now + grace(shared);
        self.from = Some(self.from.map_or(until, |t| t.max(until)));
    }
}

fn count<R>(shared: &Shared<R>, r: &Result<impl Sized, RegistryError>) {
    let mut s = shared.stats.lock();
    s.registry_calls += 1;
    if r.is_err() {
        s.registry_errors += 1;
    }
}

async fn publish<R: Backend>(shared: &Shared<R>) -> Result<(), RegistryError> {
    let (key, bytes) = {
        let l = shared.local.lock();
        (l.key, l.encode())
    };
    shared.dirty.store(false, Ordering::Release);
    let r = shared.registry.publish(key, bytes, ttl(shared)).await;
    count(shared, &r);
    if r.is_err() {
        shared.dirty.store(true, Ordering::Release);
    }
    r
}

/// Refreshes liveness, or publishes when the record changed or went missing. `Ok(true)`:
/// our own record was gone (the registry lost it: a restart, a flush, an expiry we could not
/// prevent), so others may be missing theirs for the same reason.
async fn keep_alive<R: Backend>(shared: &Shared<R>) -> Result<bool, RegistryError> {
    if shared.dirty.load(Ordering::Acquire) {
        return publish(shared).await.map(|()| false);
    }
    let key = shared.local.lock().key;
    let r = shared.registry.refresh(key, ttl(shared)).await;
    count(shared, &r);
    match r {
        Err(RegistryError::Missing) => publish(shared).await.map(|()| true),
        other => other.map(|()| false),
    }
}

/// Applies one record read from the registry.
fn upsert<R>(shared: &Shared<R>, key: NodeKey, bytes: &[u8]) {
    let record = match NodeRecord::decode(bytes) {
        Ok(r) if r.key == key => r,
        Ok(_) | Err(_) => {
            debug!(%key, "skipping unreadable record");
            shared.stats.lock().skipped_records += 1;
            return;
        }
    };
    if key == shared.local.lock().key {
        return;
    }
    shared.suspects.lock().remove(&key);
    // Events go out with the view still locked: the order subscribers see is the order the
    // view changed in, whichever task changed it (`mark_down` runs on the caller's).
    let mut view = shared.view.write();
    let event = match view.insert(key, record.clone()) {
        None => Some(MembershipEvent::Joined(record)),
        Some(old) if old.incarnation != record.incarnation => {
            let _ = shared.events.send(MembershipEvent::Left(old));
            Some(MembershipEvent::Joined(record))
        }
        Some(old) if old != record => Some(MembershipEvent::Updated(record)),
        Some(_) => None,
    };
    if let Some(e) = event {
        let _ = shared.events.send(e);
    }
}

fn depart<R>(shared: &Shared<R>, key: NodeKey) {
    shared.suspects.lock().remove(&key);
    let backups = {
        let mut view = shared.view.write();
        let Some(old) = view.remove(&key) else {
            return;
        };
        let backups = old.backups.clone();
        // With the view locked, as in `upsert`.
        let _ = shared.events.send(MembershipEvent::Left(old));
        backups
    };
    // After the view's lock (`prepare_nodes` reads the view while it holds this one).
    let mut d = shared.departed.lock();
    if d.len() >= MAX_DEPARTED {
        d.pop_front();
    }
    d.push_back((key, backups));
}

/// The registry no longer has `key`'s record, while it was healthy. Without a liveness check
/// that is the node's departure; with one, the node is asked first (in a task of its own, one
/// at a time per node) and departs only if it does not answer and no record came meanwhile.
fn registry_lost<R: Backend>(shared: &Arc<Shared<R>>, key: NodeKey) {
    if !shared.view.read().contains_key(&key) {
        return;
    }
    let Some(check) = shared.liveness.read().clone() else {
        depart(shared, key);
        return;
    };
    if !shared.suspects.lock().insert(key) {
        return; // already being asked
    }
    let weak = Arc::downgrade(shared);
    tokio::spawn(async move {
        let alive = check(key).await;
        let Some(shared) = weak.upgrade() else {
            return;
        };
        let still_suspect = shared.suspects.lock().remove(&key);
        if still_suspect && !alive {
            debug!(%key, "record gone and the node does not answer: departed");
            depart(&shared, key);
        } else if still_suspect {
            debug!(%key, "record gone but the node answers: kept");
        }
    });
}

/// A full read: adds what is missing, and takes what is gone for departed when the registry
/// has been healthy long enough for its absence to mean something (see [`Evidence`]).
async fn reconcile<R: Backend>(
    shared: &Arc<Shared<R>>,
    evidence: &mut Evidence,
) -> Result<(), RegistryError> {
    let r = shared.registry.snapshot().await;
    count(shared, &r);
    let all = r?;
    shared.stats.lock().reconciliations += 1;
    let local = shared.local.lock().key;
    let live: Vec<NodeKey> = all.iter().map(|(k, _)| *k).collect();
    for (k, bytes) in &all {
        if *k != local {
            upsert(shared, *k, bytes);
        }
    }
    let gone: Vec<NodeKey> = shared
        .view
        .read()
        .keys()
        .filter(|k| !live.contains(k))
        .copied()
        .collect();
    if !gone.is_empty() && evidence.usable(Instant::now()) {
        for k in gone {
            registry_lost(shared, k);
        }
    } else if !gone.is_empty() {
        debug!(
            missing = gone.len(),
            "records missing soon after a registry outage: not taken as departures yet"
        );
    }
    Ok(())
}

/// Rendezvous score: every node ranks candidates differently, spreading backup load.
fn score(me: NodeKey, candidate: NodeKey) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (me, candidate).hash(&mut h);
    h.finish()
}

/// Keeps this node's backups: live ones stay, gaps are filled by rendezvous ranking.
fn choose_backups<R>(shared: &Shared<R>) {
    let (me, my_type, current) = {
        let l = shared.local.lock();
        (l.key, l.node_type.clone(), l.backups.clone())
    };
    let want = shared.config.backups.get(&my_type).copied().unwrap_or(0);
    let view = shared.view.read();
    let mut candidates: Vec<NodeKey> = view
        .values()
        .filter(|r| r.node_type == my_type && r.key != me)
        .map(|r| r.key)
        .collect();
    drop(view);
    let mut chosen: Vec<NodeKey> = current
        .into_iter()
        .filter(|k| candidates.contains(k))
        .take(want)
        .collect();
    candidates.sort_by_key(|c| score(me, *c));
    for c in candidates {
        if chosen.len() >= want {
            break;
        }
        if !chosen.contains(&c) {
            chosen.push(c);
        }
    }
    let mut l = shared.local.lock();
    if l.backups != chosen {
        l.backups = chosen;
        shared.dirty.store(true, Ordering::Release);
    }
}

async fn run<R: Backend>(
    shared: Arc<Shared<R>>,
    mut notices: broadcast::Receiver<Notice>,
    healthy: bool,
    mut evidence: Evidence,
) {
    let mut tick = tokio::time::interval(shared.config.update_interval);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    tick.tick().await; // the first tick is immediate; start() already published
    let mut cycle: u64 = 0;
    let mut need_full = !healthy;
    let mut failures: u32 = 0;
    let mut skip: u32 = 0;
    loop {
        tokio::select! {
            () = shared.stop.notified() => return,
            _ = tick.tick() => {
                cycle += 1;
                for f in shared.on_update.lock().iter() {
                    f();
                }
                choose_backups(&shared);
                if skip > 0 {
                    skip -= 1;
                    continue;
                }
                let now = Instant::now();
                let mut r = keep_alive(&shared).await.map(|lost_ours| {
                    if failures > 0 || lost_ours {
                        // Back, or back empty: others may not have re-registered yet.
                        evidence.recovered(&shared, now);
                        need_full = true;
                    }
                });
                if evidence.recheck && evidence.from.is_some_and(|t| now >= t) {
                    evidence.recheck = false;
                    need_full = true;
                }
                if r.is_ok() && (need_full || cycle % u64::from(shared.config.reconcile_every.max(1)) == 0) {
                    r = reconcile(&shared, &mut evidence).await;
                }
                match r {
                    Ok(()) => {
                        if failures > 0 {
                            debug!("registry reachable again");
                        }
                        failures = 0;
                        need_full = false;
                    }
                    Err(e) => {
                        failures += 1;
                        evidence.outage();
                        // Back off: skip 1, 3, 7 ... intervals, then reconcile on recovery.
                        skip = (1u32 << failures.min(5)).min(MAX_BACKOFF_INTERVALS) - 1;
                        need_full = true;
                        shared.dirty.store(true, Ordering::Release);
                        warn!(error = %e, failures, "registry unavailable; keeping the last known view");
                    }
                }
                let all = {
                    let view = shared.view.read();
                    let mut all: Vec<NodeRecord> = view.values().cloned().collect();
                    all.push(shared.local.lock().clone());
                    all
                };
                for f in shared.on_updated.lock().iter() {
                    f(&all);
                }
            }
            n = notices.recv() => match n {
                Ok(Notice::Changed(k)) => {
                    if k != shared.local.lock().key {
                        let r = shared.registry.get(k).await;
                        count(&shared, &r);
                        match r {
                            Ok(Some(bytes)) => upsert(&shared, k, &bytes),
                            // Removed since, or not yet on the replica we read: a removal comes
                            // as its own notice, and reconciliation catches the rest.
                            Ok(None) => {}
                            Err(_) => need_full = true,
                        }
                    }
                }
                // A goodbye: the node itself removed its record.
                Ok(Notice::Removed(k)) => depart(&shared, k),
                Ok(Notice::Expired(k)) => {
                    if k != shared.local.lock().key && evidence.usable(Instant::now()) {
                        registry_lost(&shared, k);
                    }
                }
                // The push channel reconnected: there was an outage, whatever our own calls saw.
                Ok(Notice::Resync) => {
                    evidence.recovered(&shared, Instant::now());
                    need_full = true;
                }
                Err(broadcast::error::RecvError::Lagged(_)) => need_full = true,
                Err(broadcast::error::RecvError::Closed) => {
                    notices = shared.registry.subscribe();
                    need_full = true;
                }
            },
            () = shared.wake.notified() => {
                if failures == 0 && shared.dirty.load(Ordering::Acquire) {
                    let _ = publish(&shared).await;
                }
            }
        }
    }
}
