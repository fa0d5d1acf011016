//! A node's settings: [`Config`] (serde, for TOML or environment loaders) and [`Registry`].

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use mesh_discovery::MemoryRegistry;
#[cfg(feature = "redis")]
use mesh_discovery::RedisTopology;
use serde::{Deserialize, Serialize};

use crate::Error;

/// Everything a [`MeshNode`](crate::MeshNode) can be told, with the original's option names
/// where they still mean the same thing. Every field has a default, unknown keys are
/// rejected by name, and durations are written like `"1s"` or `"250ms"`:
///
/// ```
/// let config: mesh_link::Config = toml::from_str(r#"
///     redis = "redis://127.0.0.1:6379"
///     prefix = "myapp"
///     node_type = "game"
///     address = "127.0.0.1"
///     port = 8100
///     update_interval = "1s"
///     request_timeout = "2s"
///     [backups]
///     game = 2
///     [values]
///     status = "online"
/// "#).unwrap();
/// assert_eq!(config.port, 8100);
/// assert!(toml::from_str::<mesh_link::Config>("prot = 1").is_err()); // a typo is an error
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct Config {
    /// The registry: a Redis URL (see `RedisTopology::from_url`: standalone, master with
    /// replicas, Sentinel, Cluster). `None` (the default) runs on a private in-memory registry:
    /// the node is alone, which suits tools and tests (see [`Registry::memory`] to share one
    /// in a process).
    pub redis: Option<String>,
    /// The mesh's name: nodes only see nodes with the same prefix. Default `""`.
    pub prefix: String,
    /// This node's type (free text). Default `"node"`.
    pub node_type: String,
    /// The address to bind and announce. Default: the first IPv4 address of [`nic`](Self::nic)
    /// if one is named, else `127.0.0.1`. It must be an address others can reach: an
    /// unspecified address (`0.0.0.0`) is refused, since it cannot be announced.
    pub address: Option<IpAddr>,
    /// A network interface whose first IPv4 address is used when `address` is not given.
    pub nic: Option<String>,
    /// With `nic` named but missing: `true` (default) fails to start, `false` falls back to
    /// `127.0.0.1` with a warning.
    pub strict: bool,
    /// The first port to try; if taken, the next ones are tried (see
    /// [`port_attempts`](Self::port_attempts)). 0 asks the OS for any free port. Default 8100.
    pub port: u16,
    /// How many consecutive ports to try from `port`. Default 100 (the original had no bound).
    pub port_attempts: u16,
    /// How often liveness is refreshed and the update hooks run. Default 1 s.
    #[serde(with = "humantime_serde")]
    pub update_interval: Duration,
    /// Backups per node type (the original's `backups`): a node of that type picks this many
    /// nodes of its type as backups. Default none.
    pub backups: HashMap<String, usize>,
    /// Values published with this node's record at start.
    pub values: BTreeMap<String, serde_json::Value>,
    /// Default fan-out: 0 (the default) sends to every node directly; `n > 0` sends to `n`
    /// branch heads that relay to the rest (a relay tree, the original's `relayLimit`). The
    /// original's default of 1 made a chain of N hops; here a chain is only had by asking.
    pub relay_limit: usize,
    /// How long a relaying node waits before it forwards (the original's `relayDelay`).
    /// Default 0.
    #[serde(with = "humantime_serde")]
    pub relay_delay: Duration,
    /// How long a sender waits for a relay tree to confirm before it re-routes what is
    /// missing. Default 10 s.
    #[serde(with = "humantime_serde")]
    pub relay_timeout: Duration,
    /// Hold small messages this long to pack more per datagram (the original's
    /// `sendInterval`, which it never implemented). Default none: send at once; messages
    /// queued together are packed anyway.
    #[serde(with = "humantime_serde")]
    pub send_interval: Option<Duration>,
    /// The base datagram size, header included (the original's split size): assumed to pass
    /// every path; sessions start at it and fall back to it. Default 1200.
    pub mtu: usize,
    /// The largest datagram probed for (path-MTU discovery): each session finds the largest
    /// size between `mtu` and this that reaches the other node, and sends bulk data in
    /// datagrams of that size (see `mesh_rudp::EndpointConfig::max_mtu`). Default (`None`)
    /// 8972 (a jumbo frame), or `mtu` when that is larger; equal to `mtu` turns probing off.
    pub max_mtu: Option<usize>,
    /// `max_mtu` for a node on a loopback address (another process on this host); `None`
    /// treats those nodes like any other. Default 32 000 on Linux, whose loopback carries
    /// 64 KiB datagrams (bulk transfers between co-located nodes run about 3× faster than at
    /// 1200), `None` elsewhere.
    pub loopback_mtu: Option<usize>,
    /// Whether datagrams to nodes on a loopback address carry a CRC-32. Default true: leaving
    /// it out bought nothing measurable (see `mesh_rudp::EndpointConfig::loopback_checksum`).
    pub loopback_checksum: bool,
    /// Largest message, in bytes. Default 16 MiB. Above that, the transport's per-peer
    /// buffers grow to hold two such messages.
    pub max_message_size: usize,
    /// Bytes of spare buffers kept to reassemble large messages in (a message of 256 KiB or
    /// more hands its buffer back when dropped). Default 64 MiB; 0 keeps none. See
    /// `mesh_rudp::EndpointConfig::recycle_bytes`.
    pub recycle_bytes: usize,
    /// Socket send and receive buffer size to ask the OS for, in bytes. Default 8 MiB. What
    /// the OS grants (Linux caps it at `net.core.rmem_max`) also bounds how much this node
    /// keeps unacknowledged toward one peer: three quarters of it, so a fast sender does not
    /// overflow a slower receiver's socket. Raise `rmem_max` and this together for fast links
    /// with long round trips. See `mesh_rudp::TransportConfig::socket_buffer`.
    pub socket_buffer: usize,
    /// How long a request waits for its answer unless told otherwise. Default 5 s.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// A peer that stops acknowledging for this long is reported down: its messages and
    /// requests fail and it leaves this node's view. Default 5 s.
    #[serde(with = "humantime_serde")]
    pub peer_timeout: Duration,
    /// Handlers running at once on this node. Past it, requests are answered "overloaded"
    /// and one-way messages wait (up to as many again) before the node stops reading, which
    /// slows senders down. Default 4096.
    pub max_concurrent_handlers: usize,
    /// Requests of this node waiting for answers. Default 65 536.
    pub max_pending_requests: usize,
    /// How long [`stop`](crate::MeshNode::stop) waits for running handlers and for
    /// unacknowledged messages. Default 2 s.
    #[serde(with = "humantime_serde")]
    pub stop_timeout: Duration,
    /// Answer a raw 4-byte `ping` datagram with `PONG\n`, as the original did (so `nc -u`
    /// works). Default true; never with a cluster key.
    pub answer_raw_ping: bool,
    /// Publish this node's [`NodeReport`](crate::report::NodeReport) to the `metrics` facade
    /// this often (and time handler runs and requests into histograms). Default `None`: no
    /// task, no clock reads. Install a recorder (such as `metrics-exporter-prometheus`, or
    /// `mesh-link node --metrics`) before the node starts.
    #[serde(with = "humantime_serde")]
    pub metrics_interval: Option<Duration>,
    /// The cluster's shared secret. With it, every datagram is authenticated (keyed BLAKE3)
    /// and numbered against replays; datagrams without a valid tag are dropped before any
    /// state exists. Every node of the mesh needs the same one. It is never written to the
    /// registry. Default none. See `SECURITY.md`.
    pub cluster_key: Option<Secret>,
    /// During a key rollover: the previous secret, still accepted but never used to send.
    pub previous_cluster_key: Option<Secret>,
    /// Node-compat mode (feature `node-compat`): also announce in, and read, the original
    /// Node.js mesh-link 0.13.6's Redis schema, and speak its wire to its nodes on this
    /// node's port, so that Node and Rust nodes sharing a Redis and a `prefix` see and call
    /// each other (see [`crate::compat`]). Needs Redis; not with a `cluster_key` (the
    /// original's wire has no authentication). Default false.
    pub node_compat: bool,
    /// Seed of the node's random choices (request ids, its incarnation, session ids, object
    /// ids), to replay a test. Default `None`: drawn from the OS. Two nodes must never share
    /// one.
    pub seed: Option<u64>,
}

/// A secret: shown as `Secret(..)` in debug output and logs.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// A secret from text (use at least 16 random bytes' worth, e.g. 32 hex digits).
    pub fn new(secret: impl Into<String>) -> Self {
        Self(secret.into())
    }

    /// A secret read from a file, without its trailing newline. An empty file is an error.
    pub fn from_file(path: &std::path::Path) -> Result<Self, Error> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::Config(format!("key file {}: {e}", path.display())))?;
        let secret = text.trim_end_matches(['\n', '\r']);
        if secret.is_empty() {
            return Err(Error::Config(format!(
                "key file {} is empty",
                path.display()
            )));
        }
        Ok(Self(secret.to_owned()))
    }

    /// The secret's bytes.
    pub fn expose(&self) -> &[u8] {
        self.0.as_bytes()
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            redis: None,
            prefix: String::new(),
            node_type: "node".to_owned(),
            address: None,
            nic: None,
            strict: true,
            port: 8100,
            port_attempts: 100,
            update_interval: Duration::from_secs(1),
            backups: HashMap::new(),
            values: BTreeMap::new(),
            relay_limit: 0,
            relay_delay: Duration::ZERO,
            relay_timeout: Duration::from_secs(10),
            send_interval: None,
            mtu: 1200,
            max_mtu: None,
            loopback_mtu: mesh_rudp::DEFAULT_LOOPBACK_MTU,
            loopback_checksum: true,
            max_message_size: 16 << 20,
            recycle_bytes: 64 << 20,
            socket_buffer: 8 << 20,
            request_timeout: Duration::from_secs(5),
            peer_timeout: Duration::from_secs(5),
            max_concurrent_handlers: 4096,
            max_pending_requests: 65_536,
            stop_timeout: Duration::from_secs(2),
            answer_raw_ping: true,
            metrics_interval: None,
            cluster_key: None,
            previous_cluster_key: None,
            node_compat: false,
            seed: None,
        }
    }
}

impl Config {
    /// Checks the values, naming the first bad one.
    pub fn validate(&self) -> Result<(), Error> {
        let bad = |s: &str| Err(Error::Config(s.to_owned()));
        if self.port_attempts == 0 {
            return bad("port_attempts must be at least 1");
        }
        if self.update_interval < Duration::from_millis(10) {
            return bad("update_interval must be at least 10ms");
        }
        if self.request_timeout.is_zero() {
            return bad("request_timeout must be more than 0");
        }
        if self.relay_timeout.is_zero() {
            return bad("relay_timeout must be more than 0");
        }
        if self.peer_timeout < Duration::from_millis(100) {
            return bad("peer_timeout must be at least 100ms");
        }
        if self.max_concurrent_handlers == 0 {
            return bad("max_concurrent_handlers must be at least 1");
        }
        if self.socket_buffer == 0 {
            return bad("socket_buffer must be more than 0");
        }
        if self.max_pending_requests == 0 {
            return bad("max_pending_requests must be at least 1");
        }
        if self.relay_limit > u16::MAX as usize {
            return bad("relay_limit must be at most 65535");
        }
        if self.previous_cluster_key.is_some() && self.cluster_key.is_none() {
            return bad("previous_cluster_key needs a cluster_key");
        }
        if self.node_compat {
            if !cfg!(feature = "node-compat") {
                return bad("node_compat needs mesh-link built with the feature `node-compat`");
            }
            if self.cluster_key.is_some() {
                return bad(
                    "node_compat and cluster_key cannot be used together: the original's wire \
                     has no authentication, so its datagrams would bypass the key",
                );
            }
        }
        if let Some(a) = self.address {
            if a.is_unspecified() {
                return bad("address must be one others can reach, not 0.0.0.0 or ::");
            }
        }
        Ok(())
    }

    /// The address to bind: `address`, else `nic`'s first IPv4 address, else `127.0.0.1`.
    pub(crate) fn resolve_address(&self) -> Result<IpAddr, Error> {
        if let Some(a) = self.address {
            return Ok(a);
        }
        let Some(nic) = &self.nic else {
            return Ok(IpAddr::V4(Ipv4Addr::LOCALHOST));
        };
        let found = if_addrs::get_if_addrs()
            .ok()
            .into_iter()
            .flatten()
            .filter(|i| &i.name == nic)
            .map(|i| i.ip())
            .find(IpAddr::is_ipv4);
        match found {
            Some(a) => Ok(a),
            None if self.strict => Err(Error::NoInterface(nic.clone())),
            None => {
                tracing::warn!(%nic, "network interface not found; using 127.0.0.1");
                Ok(IpAddr::V4(Ipv4Addr::LOCALHOST))
            }
        }
    }
}

/// Where a node finds the others.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Registry {
    /// An in-memory registry: nodes built with clones of the same one see each other (in one
    /// process). For tests and the zero-setup example.
    Memory(MemoryRegistry),
    /// Redis, in any topology (feature `redis`).
    #[cfg(feature = "redis")]
    Redis(RedisTopology),
}

impl Registry {
    /// A new in-memory registry. Clone it to start several nodes on it.
    pub fn memory() -> Self {
        Self::Memory(MemoryRegistry::new())
    }

    /// Redis at a URL: `redis://host:port`, `redis://host:port?replicas=true`,
    /// `redis-sentinel://host:port?sentinelServiceName=NAME&node=host:port`,
    /// `redis-cluster://host:port?node=host:port`.
    /// Without the `redis` feature, an error that says so.
    pub fn redis(url: &str) -> Result<Self, Error> {
        #[cfg(feature = "redis")]
        return Ok(Self::Redis(RedisTopology::from_url(url)?));
        #[cfg(not(feature = "redis"))]
        Err(Error::Config(format!(
            "redis {url:?}: this build of mesh-link has no Redis support (feature `redis`)"
        )))
    }
}
