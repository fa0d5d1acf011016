//! The Redis registry (fred): one key per node, an expiry index, and pushed changes.
//!
//! Key schema (every key of one mesh shares the hash tag `{ml:<prefix>}`, so the same commands
//! work on Redis Cluster):
//!
//! | key | type | holds |
//! |---|---|---|
//! | `{ml:P}:n:<addr:port>` | string, `PX` = 3 intervals | the node's record (JSON) |
//! | `{ml:P}:idx` | sorted set | member `<addr:port>`, score = expiry in ms since the epoch |
//! | `{ml:P}:ev` | pub/sub channel | `C <addr:port>` (written), `R <addr:port>` (removed by its node) and `E <addr:port>` (expired) |
//!
//! Cost per node per update interval: `PEXPIRE` + `ZADD XX` (refresh) + `ZRANGEBYSCORE`
//! (finds expired members) = 3 commands in one pipelined round trip, so the mesh's total grows
//! linearly with its size. A
//! change costs `SET` + `ZADD` + `PUBLISH`; every other node then does one `GET`. A full
//! reconciliation (`ZRANGEBYSCORE` + `MGET`) runs every 30 intervals per node.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fred::prelude::{
    Builder, Client, ClientLike, Config, EventInterface, Expiration, KeysInterface, Options,
    PubsubInterface, ReconnectPolicy, Server, ServerConfig, ServerInterface, SetOptions,
    SortedSetsInterface,
};
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;
use tracing::{debug, warn};

use crate::{Backend, NodeKey, Notice, RegistryError};

/// Notices buffered per subscriber before a slow one lags (and then reconciles).
const NOTICE_BUFFER: usize = 4096;
/// Members read per expiry check.
const EXPIRED_BATCH: i64 = 64;

fn unavailable(e: fred::error::Error) -> RegistryError {
    RegistryError::Unavailable(cause(&e))
}

/// A fred error as a sentence: an I/O error's message (`Connection refused (os error 111)`)
/// instead of its `Debug` form (`Os { code: 111, kind: ConnectionRefused, .. }`).
fn cause(e: &fred::error::Error) -> String {
    let details = e.details();
    if let Some(start) = details.find("message: \"") {
        let rest = &details[start + 10..];
        if let Some(end) = rest.find('"') {
            return rest[..end].to_owned();
        }
    }
    if details.is_empty() {
        format!("{:?}", e.kind()).to_lowercase()
    } else {
        details.to_owned()
    }
}

/// The same, naming where Redis was looked for.
fn unavailable_at(topology: &RedisTopology, e: fred::error::Error) -> RegistryError {
    RegistryError::Unavailable(format!("redis at {}: {}", topology.describe(), cause(&e)))
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Where a mesh's Redis is. Deserialisable (for config files) and parsed from a URL by
/// [`RedisTopology::from_url`]:
///
/// | topology | URL form |
/// |---|---|
/// | standalone | `redis://127.0.0.1:6379` |
/// | master with read replicas | `redis://127.0.0.1:6379?replicas=true` |
/// | Sentinel | `redis-sentinel://127.0.0.1:26379?sentinelServiceName=mymaster&node=127.0.0.1:26380` |
/// | Cluster | `redis-cluster://127.0.0.1:7000?node=127.0.0.1:7001&node=127.0.0.1:7002` |
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
#[non_exhaustive]
pub enum RedisTopology {
    /// One server.
    Standalone {
        /// Host name or address.
        host: String,
        /// Port.
        port: u16,
    },
    /// A master and its replicas (found through `ROLE`): writes go to the master, reads to a
    /// replica (the master if none is up), and each write waits (up to 100 ms) for a replica
    /// to have it before it is announced, so a reader told of a change finds it there.
    MasterReplica {
        /// The master's host.
        host: String,
        /// The master's port.
        port: u16,
    },
    /// Sentinels watching a service: the client follows failovers.
    Sentinel {
        /// The sentinels' addresses.
        sentinels: Vec<(String, u16)>,
        /// The monitored service name.
        service: String,
    },
    /// A Redis Cluster, from a few seed nodes.
    Cluster {
        /// Seed nodes.
        seeds: Vec<(String, u16)>,
    },
}

fn host_port(s: &str) -> Result<(String, u16), RegistryError> {
    let bad = || RegistryError::Config(format!("not host:port: {s:?}"));
    let (h, p) = s.rsplit_once(':').ok_or_else(bad)?;
    let port = p.parse().map_err(|_| bad())?;
    if h.is_empty() {
        return Err(bad());
    }
    Ok((h.trim_matches(['[', ']']).to_owned(), port))
}

impl RedisTopology {
    /// Parses one of the URL forms in the table above.
    pub fn from_url(url: &str) -> Result<Self, RegistryError> {
        let (scheme, rest) = url
            .split_once("://")
            .ok_or_else(|| RegistryError::Config(format!("not a URL: {url:?}")))?;
        let (first, query) = rest.split_once('?').unwrap_or((rest, ""));
        let first = host_port(first.trim_end_matches('/'))?;
        let mut nodes = vec![first.clone()];
        let mut service = None;
        let mut replicas = false;
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            match pair.split_once('=') {
                Some(("node", v)) => nodes.push(host_port(v)?),
                Some(("sentinelServiceName", v)) => service = Some(v.to_owned()),
                Some(("replicas", "true")) => replicas = true,
                _ => {
                    return Err(RegistryError::Config(format!(
                        "unknown URL parameter {pair:?}"
                    )))
                }
            }
        }
        match scheme {
            "redis" if replicas => Ok(Self::MasterReplica {
                host: first.0,
                port: first.1,
            }),
            "redis" => Ok(Self::Standalone {
                host: first.0,
                port: first.1,
            }),
            "redis-sentinel" => Ok(Self::Sentinel {
                sentinels: nodes,
                service: service.ok_or_else(|| {
                    RegistryError::Config("sentinel URL needs sentinelServiceName".into())
                })?,
            }),
            "redis-cluster" => Ok(Self::Cluster { seeds: nodes }),
            other => Err(RegistryError::Config(format!("unknown scheme {other:?}"))),
        }
    }

    /// Where this topology's servers are, for messages: `host:port`, or the seeds.
    pub fn describe(&self) -> String {
        match self {
            Self::Standalone { host, port } | Self::MasterReplica { host, port } => {
                format!("{host}:{port}")
            }
            Self::Sentinel { sentinels, service } => {
                let s: Vec<String> = sentinels.iter().map(|(h, p)| format!("{h}:{p}")).collect();
                format!("sentinels {} (service {service})", s.join(", "))
            }
            Self::Cluster { seeds } => {
                let s: Vec<String> = seeds.iter().map(|(h, p)| format!("{h}:{p}")).collect();
                format!("cluster {}", s.join(", "))
            }
        }
    }

    fn server_config(&self) -> ServerConfig {
        match self {
            Self::Standalone { host, port } | Self::MasterReplica { host, port } => {
                ServerConfig::new_centralized(host.clone(), *port)
            }
            Self::Sentinel { sentinels, service } => {
                ServerConfig::new_sentinel(sentinels.clone(), service.clone())
            }
            Self::Cluster { seeds } => ServerConfig::new_clustered(seeds.clone()),
        }
    }
}

/// A registry in Redis, on any [`RedisTopology`].
#[derive(Debug, Clone)]
pub struct RedisRegistry {
    client: Client,
    notices: broadcast::Sender<Notice>,
    tag: String,
    subscriber: Client,
    /// With a master and replicas: the master, whose replicas serve reads.
    replica_reads: Option<Options>,
}

impl RedisRegistry {
    /// Connects for the mesh named `prefix`, from a URL ([`RedisTopology::from_url`]).
    pub async fn connect(url: &str, prefix: &str) -> Result<Self, RegistryError> {
        Self::connect_to(&RedisTopology::from_url(url)?, prefix).await
    }

    /// Connects for the mesh named `prefix`. Fails if Redis cannot be reached now; once
    /// connected, outages are survived (fred reconnects every 100 ms, membership backs off).
    pub async fn connect_to(topology: &RedisTopology, prefix: &str) -> Result<Self, RegistryError> {
        let config = Config {
            server: topology.server_config(),
            ..Config::default()
        };
        // fred 10.1 routes a replica read by the command's node (outside Cluster mode it has
        // no other way to pick a primary, and would fall back to it): name the master.
        let replica_reads = match topology {
            RedisTopology::MasterReplica { host, port } => Some(Options {
                cluster_node: Some(Server::new(host.clone(), *port)),
                ..Options::default()
            }),
            _ => None,
        };
        let build = || {
            let mut b = Builder::from_config(config.clone());
            b.set_policy(ReconnectPolicy::new_constant(0, 100))
                .with_connection_config(|c| {
                    c.connection_timeout = Duration::from_secs(1);
                    c.internal_command_timeout = Duration::from_secs(1);
                    c.max_command_attempts = 3;
                    c.replica.lazy_connections = false;
                    c.replica.primary_fallback = true;
                })
                .with_performance_config(|p| {
                    p.default_command_timeout = Duration::from_secs(2);
                });
            b.build()
        };
        let at = |e| unavailable_at(topology, e);
        let client = build().map_err(at)?;
        client.init().await.map_err(at)?;
        if replica_reads.is_some() {
            // Find the master's replicas (ROLE) now; reads fall back to the master meanwhile.
            client.replicas().sync(true).await.map_err(at)?;
        }
        let subscriber = build().map_err(at)?;
        subscriber.init().await.map_err(at)?;
        let tag = format!("{{ml:{prefix}}}");
        let (notices, _) = broadcast::channel(NOTICE_BUFFER);
        let registry = Self {
            client,
            notices,
            tag,
            subscriber,
            replica_reads,
        };
        registry.start_subscriber().await?;
        Ok(registry)
    }

    fn node_key(&self, key: NodeKey) -> String {
        format!("{}:n:{key}", self.tag)
    }

    fn index(&self) -> String {
        format!("{}:idx", self.tag)
    }

    fn channel(&self) -> String {
        format!("{}:ev", self.tag)
    }

    /// Forwards pub/sub messages as notices; after a reconnect, resubscribes and asks every
    /// membership to reconcile (messages may have been missed meanwhile).
    async fn start_subscriber(&self) -> Result<(), RegistryError> {
        let channel = self.channel();
        self.subscriber
            .subscribe(channel.clone())
            .await
            .map_err(unavailable)?;
        let mut messages = self.subscriber.message_rx();
        let mut reconnects = self.subscriber.reconnect_rx();
        let notices = self.notices.clone();
        let subscriber = self.subscriber.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    m = messages.recv() => match m {
                        Ok(m) => {
                            let text: Option<String> = m.value.convert().ok();
                            match text.as_deref().and_then(parse_notice) {
                                Some(n) => { let _ = notices.send(n); }
                                None => debug!("ignoring a foreign message on the mesh channel"),
                            }
                        }
                        Err(broadcast::error::RecvError::Lagged(_)) => { let _ = notices.send(Notice::Resync); }
                        Err(broadcast::error::RecvError::Closed) => return,
                    },
                    r = reconnects.recv() => match r {
                        Ok(_) => {
                            if let Err(e) = subscriber.subscribe(channel.clone()).await {
                                warn!(error = %e, "resubscribe failed");
                            }
                            let _ = notices.send(Notice::Resync);
                        }
                        Err(broadcast::error::RecvError::Lagged(_)) => {}
                        Err(broadcast::error::RecvError::Closed) => return,
                    },
                }
            }
        });
        Ok(())
    }

    /// Records in the expiry index when `key` expires, `ms` from now (`XX`: only if listed).
    async fn index_expiry(
        &self,
        key: NodeKey,
        ms: i64,
        options: Option<SetOptions>,
    ) -> Result<(), RegistryError> {
        let _: i64 = self
            .client
            .zadd(
                self.index(),
                options,
                None,
                false,
                false,
                ((now_ms() + ms as u64) as f64, key.to_string()),
            )
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    /// Tells every node of the mesh: `C <key>` (written), `R <key>` (removed by its node) or
    /// `E <key>` (expired). A node of an earlier version ignores `E` and finds the expiry at its
    /// next full read.
    async fn announce(&self, kind: char, key: NodeKey) -> Result<(), RegistryError> {
        let _: i64 = self
            .client
            .publish(self.channel(), format!("{kind} {key}"))
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    /// Removes index members whose records expired in Redis, and tells everyone.
    /// Announces the expiry of the index members in `due` (read as past their expiry) whose
    /// records Redis no longer has, and drops them from the index.
    async fn expire_members(&self, due: Vec<String>) -> Result<(), RegistryError> {
        for member in due {
            let Some(key) = parse_key(&member) else {
                let _: i64 = self
                    .client
                    .zrem(self.index(), member)
                    .await
                    .map_err(unavailable)?;
                continue;
            };
            // The index score is the writer's clock; the key's TTL is Redis's: trust Redis.
            let exists: i64 = self
                .client
                .exists(self.node_key(key))
                .await
                .map_err(unavailable)?;
            if exists == 1 {
                continue;
            }
            let removed: i64 = self
                .client
                .zrem(self.index(), member)
                .await
                .map_err(unavailable)?;
            if removed == 1 {
                // Only the node that won the ZREM announces it.
                self.announce('E', key).await?;
            }
        }
        Ok(())
    }
}

fn parse_key(s: &str) -> Option<NodeKey> {
    s.parse::<std::net::SocketAddr>().ok().map(NodeKey::from)
}

fn parse_notice(s: &str) -> Option<Notice> {
    let (kind, key) = s.split_once(' ')?;
    let key = parse_key(key)?;
    match kind {
        "C" => Some(Notice::Changed(key)),
        "R" => Some(Notice::Removed(key)),
        "E" => Some(Notice::Expired(key)),
        _ => None,
    }
}

/// Plain key commands for the original Node.js schema ([`crate::compat::CompatRegistry`]),
/// whose keys are not this registry's.
#[cfg(feature = "node-compat")]
impl RedisRegistry {
    /// `SET name "" EX secs`.
    pub(crate) async fn set_empty(&self, name: &str, secs: u64) -> Result<(), RegistryError> {
        let secs = i64::try_from(secs.max(1)).unwrap_or(i64::MAX);
        self.client
            .set::<(), _, _>(name, "", Some(Expiration::EX(secs)), None, false)
            .await
            .map_err(unavailable)
    }

    /// `DEL name`.
    pub(crate) async fn delete(&self, name: &str) -> Result<(), RegistryError> {
        self.client
            .del::<i64, _>(name)
            .await
            .map(drop)
            .map_err(unavailable)
    }

    /// Key names matching `pattern` (`SCAN ... MATCH pattern COUNT 1000`), at most `max`:
    /// past that the read fails rather than grow without bound.
    pub(crate) async fn scan_names(
        &self,
        pattern: &str,
        max: usize,
    ) -> Result<Vec<String>, RegistryError> {
        use futures_util::TryStreamExt as _;
        let mut keys = std::pin::pin!(self.client.scan_buffered(pattern, Some(1000), None));
        let mut out = Vec::new();
        while let Some(k) = keys.try_next().await.map_err(unavailable)? {
            if out.len() >= max {
                return Err(RegistryError::Unavailable(format!(
                    "more than {max} keys match {pattern:?}"
                )));
            }
            if let Some(name) = k.into_string() {
                out.push(name);
            }
        }
        Ok(out)
    }

    /// Milliseconds `name` has left to live (negative: none, or no such key).
    pub(crate) async fn pttl(&self, name: &str) -> Result<i64, RegistryError> {
        self.client.pttl(name).await.map_err(unavailable)
    }
}

impl Backend for RedisRegistry {
    async fn publish(
        &self,
        key: NodeKey,
        record: Vec<u8>,
        ttl: Duration,
    ) -> Result<(), RegistryError> {
        let ms = ttl.as_millis() as i64;
        let _: () = self
            .client
            .set(
                self.node_key(key),
                record,
                Some(Expiration::PX(ms)),
                None,
                false,
            )
            .await
            .map_err(unavailable)?;
        self.index_expiry(key, ms, None).await?;
        if self.replica_reads.is_some() {
            // Readers go to a replica: let it have the record before anyone is told.
            let _: i64 = self.client.wait(1, 100).await.map_err(unavailable)?;
        }
        self.announce('C', key).await?;
        Ok(())
    }

    async fn refresh(&self, key: NodeKey, ttl: Duration) -> Result<(), RegistryError> {
        // One round trip, not three (an idle node wakes for each answer): extend the record,
        // its index entry (`XX`: only if listed), and read the index's expired members. Every
        // live node refreshes once per interval, so expired members are found within an
        // interval of their expiry.
        let ms = ttl.as_millis() as i64;
        let pipeline = self.client.pipeline();
        let queued = async {
            let _: () = pipeline.pexpire(self.node_key(key), ms, None).await?;
            let _: () = pipeline
                .zadd(
                    self.index(),
                    Some(SetOptions::XX),
                    None,
                    false,
                    false,
                    ((now_ms() + ms as u64) as f64, key.to_string()),
                )
                .await?;
            pipeline
                .zrangebyscore::<(), _, _, _>(
                    self.index(),
                    "-inf",
                    now_ms() as f64,
                    false,
                    Some((0, EXPIRED_BATCH)),
                )
                .await
        };
        queued.await.map_err(unavailable)?;
        let (extended, _, due): (i64, i64, Vec<String>) =
            pipeline.all().await.map_err(unavailable)?;
        if extended == 0 {
            return Err(RegistryError::Missing);
        }
        self.expire_members(due).await
    }

    async fn remove(&self, key: NodeKey) -> Result<(), RegistryError> {
        let _: i64 = self
            .client
            .del(self.node_key(key))
            .await
            .map_err(unavailable)?;
        let _: i64 = self
            .client
            .zrem(self.index(), key.to_string())
            .await
            .map_err(unavailable)?;
        self.announce('R', key).await?;
        Ok(())
    }

    async fn get(&self, key: NodeKey) -> Result<Option<Vec<u8>>, RegistryError> {
        if let Some(opts) = &self.replica_reads {
            let found: Option<Vec<u8>> = self
                .client
                .with_options(opts)
                .replicas()
                .get(self.node_key(key))
                .await
                .map_err(unavailable)?;
            if found.is_some() {
                return Ok(found);
            }
            // A replica can lag past the write's wait for it (a loaded machine): a record we were
            // told of but the replica lacks is read from the master, so a join is not missed
            // until the next reconciliation. Only misses cost a master read.
        }
        self.client
            .get(self.node_key(key))
            .await
            .map_err(unavailable)
    }

    async fn snapshot(&self) -> Result<Vec<(NodeKey, Vec<u8>)>, RegistryError> {
        let members: Vec<String> = self
            .client
            .zrangebyscore(self.index(), "-inf", "+inf", false, None)
            .await
            .map_err(unavailable)?;
        let keys: Vec<NodeKey> = members.iter().filter_map(|m| parse_key(m)).collect();
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let names: Vec<String> = keys.iter().map(|k| self.node_key(*k)).collect();
        let values: Vec<Option<Vec<u8>>> = if let Some(opts) = &self.replica_reads {
            self.client.with_options(opts).replicas().mget(names).await
        } else {
            self.client.mget(names).await
        }
        .map_err(unavailable)?;
        Ok(keys
            .into_iter()
            .zip(values)
            .filter_map(|(k, v)| v.map(|v| (k, v)))
            .collect())
    }

    fn subscribe(&self) -> broadcast::Receiver<Notice> {
        self.notices.subscribe()
    }
}
