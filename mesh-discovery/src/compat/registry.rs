//! A registry that keeps a node in both schemas at once: ours (a [`RedisRegistry`]) and the
//! original Node.js mesh-link's announce keys, so that Rust and Node nodes sharing one Redis
//! see each other.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::{Arc, Weak};
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::broadcast;
use tracing::{debug, warn};

use super::{ttl_secs, AnnounceKey, NODE_PROTOCOL};
use crate::{Backend, NodeKey, NodeRecord, Notice, RedisRegistry, RegistryError};

/// Notices buffered per subscriber before a slow one lags (and then reconciles).
const NOTICE_BUFFER: usize = 4096;

/// The most announce keys one scan reads: a mesh of the original's size (tens of nodes, each
/// with a key or two while its values change) is far below it.
pub const MAX_NODE_KEYS: usize = 10_000;

/// A [`Backend`] over a [`RedisRegistry`] that also announces this node in the original's
/// schema (an announce key rewritten every update interval, with the original's TTL) and
/// reads the original's nodes from it (`SCAN` every interval), as records with
/// [`protocol`](NodeRecord::protocol) [`NODE_PROTOCOL`].
///
/// What it adds to the original's reading of its own schema:
/// - a node found in both schemas (a Rust node in the same mode) is listed once, by its own
///   record, never as a Node node;
/// - while a node's values change, its old key lives on for its TTL (the original did not
///   delete it): of two keys for one address and port, the one written last (the longer TTL)
///   counts, where the original took whichever `SCAN` returned last;
/// - a scan that does not find this node's own key (Redis restarted empty, or failed over to
///   a replica that had not seen it) proves nothing about the others: the view is kept, and
///   nobody is reported gone;
/// - our previous key is deleted when its name changes (values, type), and at stop.
///
/// Node nodes have no incarnations: a restart on the same address and port is the same node.
#[derive(Clone)]
pub struct CompatRegistry {
    shared: Arc<Shared>,
}

struct Shared {
    redis: RedisRegistry,
    prefix: String,
    update_interval: Duration,
    notices: broadcast::Sender<Notice>,
    /// Our announce key as last written.
    ours: Mutex<Option<String>>,
    /// Node nodes from the last scan: their records, encoded.
    peers: Mutex<HashMap<NodeKey, Vec<u8>>>,
    /// Keys found in the original's schema that have a record of ours: Rust nodes in this
    /// mode, not Node nodes.
    native: Mutex<HashSet<NodeKey>>,
}

impl std::fmt::Debug for CompatRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CompatRegistry")
            .field("prefix", &self.shared.prefix)
            .field("node_peers", &self.shared.peers.lock().len())
            .finish()
    }
}

impl CompatRegistry {
    /// Keeps both schemas of mesh `prefix` on `redis`, announcing and scanning every
    /// `update_interval` (the original's is 1 s, and its keys live 2 s at that interval).
    pub fn new(redis: RedisRegistry, prefix: &str, update_interval: Duration) -> Self {
        let (notices, _) = broadcast::channel(NOTICE_BUFFER);
        let shared = Arc::new(Shared {
            redis,
            prefix: prefix.to_owned(),
            update_interval: update_interval.max(Duration::from_millis(100)),
            notices,
            ours: Mutex::new(None),
            peers: Mutex::new(HashMap::new()),
            native: Mutex::new(HashSet::new()),
        });
        // Our schema's notices, passed on.
        let mut inner = shared.redis.subscribe();
        let out = shared.notices.clone();
        tokio::spawn(async move {
            loop {
                match inner.recv().await {
                    Ok(n) => {
                        let _ = out.send(n);
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        let _ = out.send(Notice::Resync);
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                }
            }
        });
        tokio::spawn(scan_loop(Arc::downgrade(&shared)));
        Self { shared }
    }

    /// The Node nodes of the last scan.
    pub fn node_peers(&self) -> Vec<NodeKey> {
        let mut v: Vec<NodeKey> = self.shared.peers.lock().keys().copied().collect();
        v.sort();
        v
    }
}

impl Shared {
    /// Writes our announce key from our record; deletes the previous one if its name changed.
    async fn announce(&self, record: &[u8]) -> Result<(), RegistryError> {
        let record = NodeRecord::decode(record)
            .map_err(|e| RegistryError::Config(format!("our own record: {e}")))?;
        let name = announce_key(&self.prefix, &record)?;
        self.redis
            .set_empty(&name, ttl_secs(self.update_interval))
            .await?;
        let old = self.ours.lock().replace(name.clone());
        if let Some(old) = old.filter(|o| *o != name) {
            self.redis.delete(&old).await?;
        }
        Ok(())
    }

    /// Reads the original's schema: the Node nodes, and whether our own key was there.
    async fn scan(&self) -> Result<Scan, RegistryError> {
        let names = self
            .redis
            .scan_names(&AnnounceKey::pattern(&self.prefix), MAX_NODE_KEYS)
            .await?;
        let ours = self.ours.lock().clone();
        let saw_ours = ours.as_ref().is_some_and(|o| names.contains(o));
        let mut by_node: HashMap<NodeKey, Vec<(String, AnnounceKey)>> = HashMap::new();
        for name in names {
            if Some(&name) == ours.as_ref() {
                continue;
            }
            let Some(k) = AnnounceKey::parse(&name) else {
                debug!(key = %name, "skipping a key that is not an announce key");
                continue;
            };
            if k.prefix != self.prefix {
                continue;
            }
            let Ok(address) = k.address.parse::<IpAddr>() else {
                debug!(address = %k.address, "skipping a node with an unreadable address");
                continue;
            };
            by_node
                .entry(NodeKey::new(address, k.port))
                .or_default()
                .push((name, k));
        }
        let mut nodes = HashMap::with_capacity(by_node.len());
        let mut native = HashSet::new();
        let known_native = self.native.lock().clone();
        for (key, mut keys) in by_node {
            // A node of ours in this mode: listed by its own record. Asked once per node
            // found (a `GET`), not every interval: a Node node known from the last scan stays
            // one, a node of ours stays ours.
            let known_node = self.peers.lock().contains_key(&key);
            if known_native.contains(&key) || (!known_node && self.redis.get(key).await?.is_some())
            {
                native.insert(key);
                continue;
            }
            if keys.len() > 1 {
                // Its values changed within a TTL: the key written last lives longest.
                let mut best = (i64::MIN, 0);
                for (i, (name, _)) in keys.iter().enumerate() {
                    let ttl = self.redis.pttl(name).await?;
                    if ttl > best.0 {
                        best = (ttl, i);
                    }
                }
                keys.swap(0, best.1);
            }
            let (_, k) = keys.swap_remove(0);
            nodes.insert(key, node_record(key, k).encode());
        }
        Ok(Scan {
            nodes,
            native,
            saw_ours,
        })
    }

    /// Applies a scan: records it, and tells subscribers what changed. Departures only when
    /// the scan saw our own key (else Redis may have lost everyone's, ours included).
    fn apply(&self, scan: Scan) {
        *self.native.lock() = scan.native;
        let mut peers = self.peers.lock();
        let mut changed = Vec::new();
        let mut gone = Vec::new();
        for (k, rec) in &scan.nodes {
            if peers.get(k) != Some(rec) {
                changed.push(*k);
            }
        }
        if scan.saw_ours {
            gone.extend(
                peers
                    .keys()
                    .filter(|k| !scan.nodes.contains_key(k))
                    .copied(),
            );
            *peers = scan.nodes;
        } else {
            peers.extend(scan.nodes);
        }
        drop(peers);
        for k in changed {
            let _ = self.notices.send(Notice::Changed(k));
        }
        for k in gone {
            let _ = self.notices.send(Notice::Expired(k));
        }
    }
}

struct Scan {
    nodes: HashMap<NodeKey, Vec<u8>>,
    native: HashSet<NodeKey>,
    saw_ours: bool,
}

/// Our record as the original's announce key.
fn announce_key(prefix: &str, record: &NodeRecord) -> Result<String, RegistryError> {
    let mut values = record.values.clone();
    // A value the original's format cannot carry (a `;` or a backtick) is left out of the
    // key (Node nodes do not see it), rather than shifting every value after it.
    values.retain(|name, v| {
        let one = std::iter::once((name.clone(), v.clone())).collect();
        let ok = super::encode_values(&one).is_ok();
        if !ok {
            debug!(value = %name, "a value the original's schema cannot carry: not announced");
        }
        ok
    });
    let key = AnnounceKey {
        prefix: prefix.to_owned(),
        address: record.key.address.to_string(),
        port: record.key.port,
        node_type: record.node_type.clone(),
        backups: record
            .backups
            .iter()
            .map(|b| (b.address.to_string(), b.port))
            .collect(),
        values,
        objects: 0,
    };
    key.encode().map_err(|e| {
        RegistryError::Config(format!("not announceable in the original's schema: {e}"))
    })
}

/// A Node node as a record of ours.
fn node_record(key: NodeKey, k: AnnounceKey) -> NodeRecord {
    let mut r = NodeRecord::new(key, k.node_type, 1, 0);
    r.protocol = NODE_PROTOCOL;
    r.values = k.values;
    r.backups = k
        .backups
        .into_iter()
        .filter_map(|(a, p)| Some(NodeKey::new(a.parse().ok()?, p)))
        .collect();
    r
}

async fn scan_loop(shared: Weak<Shared>) {
    let every = match shared.upgrade() {
        Some(s) => s.update_interval,
        None => return,
    };
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failing = false;
    loop {
        tick.tick().await;
        let Some(s) = shared.upgrade() else { return };
        match s.scan().await {
            Ok(scan) => {
                failing = false;
                s.apply(scan);
            }
            Err(e) if !failing => {
                failing = true;
                warn!(error = %e, "reading the original's schema failed; keeping its nodes");
            }
            Err(e) => debug!(error = %e, "reading the original's schema still fails"),
        }
    }
}

impl Backend for CompatRegistry {
    async fn publish(
        &self,
        key: NodeKey,
        record: Vec<u8>,
        ttl: Duration,
    ) -> Result<(), RegistryError> {
        let s = &self.shared;
        s.redis.publish(key, record.clone(), ttl).await?;
        s.announce(&record).await
    }

    async fn refresh(&self, key: NodeKey, ttl: Duration) -> Result<(), RegistryError> {
        let s = &self.shared;
        s.redis.refresh(key, ttl).await?;
        // The announce key lives two intervals: rewrite it every one.
        let ours = s.ours.lock().clone();
        match ours {
            Some(name) => s.redis.set_empty(&name, ttl_secs(s.update_interval)).await,
            None => Err(RegistryError::Missing),
        }
    }

    async fn remove(&self, key: NodeKey) -> Result<(), RegistryError> {
        let s = &self.shared;
        let ours = s.ours.lock().take();
        if let Some(name) = ours {
            s.redis.delete(&name).await?;
        }
        s.redis.remove(key).await
    }

    async fn get(&self, key: NodeKey) -> Result<Option<Vec<u8>>, RegistryError> {
        if let Some(r) = self.shared.peers.lock().get(&key) {
            return Ok(Some(r.clone()));
        }
        self.shared.redis.get(key).await
    }

    async fn snapshot(&self) -> Result<Vec<(NodeKey, Vec<u8>)>, RegistryError> {
        let s = &self.shared;
        let mut all = s.redis.snapshot().await?;
        let scan = s.scan().await?;
        // Without our own key in the scan, what we knew still stands (see `apply`).
        s.apply(scan);
        all.extend(s.peers.lock().iter().map(|(k, r)| (*k, r.clone())));
        Ok(all)
    }

    fn subscribe(&self) -> broadcast::Receiver<Notice> {
        self.shared.notices.subscribe()
    }
}
