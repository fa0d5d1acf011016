//! The [`Builder`], and how a [`Config`] becomes the settings of the layers below: pure
//! functions, tested here, so that what a setting does to the transport or to membership can
//! be read in one place.

use std::net::{IpAddr, SocketAddr};

use bytes::Bytes;
use mesh_discovery::MembershipConfig;
use mesh_rudp::{Driver, Transport, TransportConfig, TransportError};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tracing::debug;

use super::handlers::Registration;
use super::MeshNode;
use crate::handler::{self, Context};
use crate::{Config, Error, HandlerError, Message, Registry, Request};

/// Room for the envelope and a relay header above the largest user message.
pub(crate) const HEADROOM: usize = 1 << 20;

/// Builds a [`MeshNode`]: every [`Config`] setting, plus the registry and handlers.
#[must_use]
pub struct Builder {
    config: Config,
    registry: Option<Registry>,
    handlers: Vec<(u16, Registration)>,
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

    /// Registers the handler of typed requests `R` (see [`MeshNode::serve`]).
    pub fn serve<R, F, Fut>(mut self, f: F) -> Self
    where
        R: Request,
        F: Fn(R, Context) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = Result<R::Answer, HandlerError>> + Send + 'static,
    {
        self.handlers
            .push((R::ID, Registration::Typed(handler::serve(f))));
        self
    }

    /// Registers the handler of typed one-way messages `M` (see [`MeshNode::listen`]).
    pub fn listen<M, F, Fut>(mut self, f: F) -> Self
    where
        M: Message,
        F: Fn(M, Context) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        self.handlers
            .push((M::ID, Registration::Typed(handler::listen(f))));
        self
    }

    /// Registers a one-way handler of untyped messages, by id (see [`MeshNode::on`]).
    pub fn on<M, F, Fut>(mut self, id: u16, f: F) -> Self
    where
        M: DeserializeOwned + Send + 'static,
        F: Fn(M, Context) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        self.handlers
            .push((id, Registration::Untyped(handler::typed(f))));
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
        self.handlers
            .push((id, Registration::Untyped(handler::typed_request(f))));
        self
    }

    /// Registers a raw-bytes handler (see [`MeshNode::on_raw`]).
    pub fn on_raw<F, Fut>(mut self, id: u16, f: F) -> Self
    where
        F: Fn(Bytes, Context) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = Result<Option<Bytes>, HandlerError>> + Send + 'static,
    {
        self.handlers
            .push((id, Registration::Untyped(handler::raw(f))));
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

/// The transport's settings for a node configured with `config`; `seed` for its random
/// choices.
pub(crate) fn transport_config(config: &Config, seed: u64) -> TransportConfig {
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
    if let Some(m) = config.max_mtu {
        tc.endpoint.max_mtu(m);
    }
    tc.endpoint
        .mtu(config.mtu)
        .loopback_mtu(config.loopback_mtu)
        .loopback_checksum(config.loopback_checksum)
        .max_message_size(largest)
        .recycle_bytes(config.recycle_bytes)
        .peer_timeout(config.peer_timeout)
        .flush_interval(config.send_interval)
        .seed(Some(seed));
    tc.close_timeout = config.stop_timeout;
    tc.socket_buffer = config.socket_buffer;
    // The raw probe has no tag: a keyed mesh answers nothing unauthenticated.
    tc.answer_raw_ping = config.answer_raw_ping && config.cluster_key.is_none();
    if let Some(secret) = &config.cluster_key {
        let mut key = mesh_wire::ClusterKey::from_secret(secret.expose());
        if let Some(previous) = &config.previous_cluster_key {
            key = key.with_previous(previous.expose());
        }
        tc.endpoint.cluster_key(Some(key));
    }
    tc
}

/// Membership's settings for a node configured with `config`.
pub(crate) fn membership_config(config: &Config) -> MembershipConfig {
    let mut mc = MembershipConfig::default();
    mc.update_interval = config.update_interval;
    mc.backups = config.backups.clone();
    mc
}

/// Binds the first free port of the configured range (`port`, then up to `port_attempts`
/// more; port 0 asks the OS for any).
pub(crate) async fn bind_range(
    address: IpAddr,
    config: &Config,
    tc: TransportConfig,
) -> Result<(Transport, Driver), Error> {
    let (first, last) = port_range(config);
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

/// The ports [`bind_range`] tries, first and last.
fn port_range(config: &Config) -> (u16, u16) {
    let first = config.port;
    let last = if first == 0 {
        0
    } else {
        first.saturating_add(config.port_attempts.saturating_sub(1))
    };
    (first, last)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::Secret;

    /// Settings compared by their debug form: `EndpointConfig` has setters only.
    fn same(a: &mesh_rudp::EndpointConfig, b: &mesh_rudp::EndpointConfig) {
        assert_eq!(format!("{a:?}"), format!("{b:?}"));
    }

    #[test]
    fn defaults_reach_the_transport() {
        let c = Config::default();
        let tc = transport_config(&c, 7);
        let mut want = mesh_rudp::EndpointConfig::default();
        let largest = (16 << 20) + HEADROOM;
        want.mtu(1200)
            .loopback_mtu(mesh_rudp::DEFAULT_LOOPBACK_MTU)
            .loopback_checksum(true)
            // 17 MiB exceeds the transport's 16 MiB defaults: the caps hold two messages.
            .reassembly_per_peer(2 * largest)
            .reassembly_total((4 * largest).max(256 << 20))
            .send_queue_per_peer((2 * largest).max(64 << 20))
            .max_message_size(largest)
            .recycle_bytes(64 << 20)
            .peer_timeout(c.peer_timeout)
            .flush_interval(None)
            .seed(Some(7));
        same(&tc.endpoint, &want);
        assert_eq!(tc.endpoint.keepalive(), Duration::from_secs(5) / 2);
        assert_eq!(tc.close_timeout, c.stop_timeout);
        assert_eq!(tc.socket_buffer, c.socket_buffer);
        assert!(tc.answer_raw_ping);
        tc.endpoint.validate().unwrap();
    }

    #[test]
    fn small_messages_keep_the_transport_defaults() {
        let c = Config {
            max_message_size: 1 << 20,
            ..Config::default()
        };
        let tc = transport_config(&c, 1);
        let mut want = mesh_rudp::EndpointConfig::default();
        want.max_message_size((1 << 20) + HEADROOM)
            .peer_timeout(c.peer_timeout)
            .seed(Some(1));
        same(&tc.endpoint, &want);
        tc.endpoint.validate().unwrap();
    }

    #[test]
    fn a_cluster_key_turns_the_raw_ping_off_and_keys_the_transport() {
        let mut c = Config::default();
        let plain = transport_config(&c, 1);
        c.cluster_key = Some(Secret::new("0123456789abcdef0123456789abcdef"));
        c.previous_cluster_key = Some(Secret::new("fedcba9876543210fedcba9876543210"));
        let tc = transport_config(&c, 1);
        assert!(plain.answer_raw_ping && !tc.answer_raw_ping);
        assert_ne!(
            format!("{:?}", plain.endpoint),
            format!("{:?}", tc.endpoint)
        );
    }

    #[test]
    fn a_short_peer_timeout_brings_the_keepalive_down() {
        let c = Config {
            peer_timeout: Duration::from_millis(100),
            ..Config::default()
        };
        let tc = transport_config(&c, 1);
        assert_eq!(tc.endpoint.keepalive(), Duration::from_millis(100) / 2);
        tc.endpoint.validate().unwrap();
    }

    #[test]
    fn membership_gets_the_interval_and_backups() {
        let mut c = Config {
            update_interval: Duration::from_millis(250),
            ..Config::default()
        };
        c.backups.insert("game".into(), 2);
        let mc = membership_config(&c);
        assert_eq!(mc.update_interval, Duration::from_millis(250));
        assert_eq!(mc.backups.get("game"), Some(&2));
    }

    #[test]
    fn the_port_range_is_bounded() {
        let mut c = Config {
            port: 8100,
            port_attempts: 3,
            ..Config::default()
        };
        assert_eq!(port_range(&c), (8100, 8102));
        c.port = u16::MAX - 1;
        assert_eq!(port_range(&c), (u16::MAX - 1, u16::MAX));
        c.port = 0;
        assert_eq!(port_range(&c), (0, 0));
    }
}
