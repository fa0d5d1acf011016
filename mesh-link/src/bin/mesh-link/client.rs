//! What the commands that talk to one node share: finding it (a host name or an address),
//! and a short-lived node of their own to talk from.

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::time::Duration;

use mesh_link::{Config, MeshNode, Registry, Secret};

use crate::Failure;

/// The node to talk to, and how.
#[derive(Debug, clap::Args)]
pub(crate) struct Target {
    /// The node's host name or address.
    pub(crate) host: String,
    /// The node's port.
    pub(crate) port: u16,
    /// The cluster's secret, for a mesh that has one (the file's contents).
    #[arg(long)]
    pub(crate) key_file: Option<PathBuf>,
}

impl Target {
    /// The node's address: `host` resolved (IPv4 first), with `port`.
    pub(crate) async fn resolve(&self) -> Result<SocketAddr, Failure> {
        if let Ok(ip) = self.host.parse::<IpAddr>() {
            return Ok(SocketAddr::new(ip, self.port));
        }
        let found: Vec<SocketAddr> = tokio::net::lookup_host((self.host.as_str(), self.port))
            .await
            .map_err(|e| Failure::Usage(format!("cannot resolve host {:?}: {e}", self.host)))?
            .collect();
        found
            .iter()
            .find(|a| a.is_ipv4())
            .or(found.first())
            .copied()
            .ok_or_else(|| Failure::Usage(format!("host {:?} has no address", self.host)))
    }

    /// A node of our own on an in-memory registry (it joins no mesh), on the address the OS
    /// would use to reach `to`, giving up on the peer after `peer_timeout`.
    pub(crate) async fn client(
        &self,
        to: SocketAddr,
        peer_timeout: Duration,
    ) -> Result<MeshNode, Failure> {
        let mut config = Config::default();
        if let Some(path) = &self.key_file {
            config.cluster_key = Some(
                Secret::from_file(path)
                    .map_err(|e| Failure::Usage(format!("{}: {e}", path.display())))?,
            );
        }
        config.address = Some(source_for(to)?);
        config.port = 0;
        config.node_type = "mesh-link-cli".into();
        config.peer_timeout = peer_timeout.max(Duration::from_millis(100));
        Ok(MeshNode::builder()
            .config(|c| *c = config)
            .registry(Registry::memory())
            .start()
            .await?)
    }
}

/// The local address the OS would use to reach `target` (no packet is sent).
pub(crate) fn source_for(target: SocketAddr) -> Result<IpAddr, Failure> {
    let any = if target.is_ipv4() {
        SocketAddr::from(([0, 0, 0, 0], 0))
    } else {
        SocketAddr::from(([0u16; 8], 0))
    };
    let s = UdpSocket::bind(any)?;
    s.connect(target)
        .map_err(|e| Failure::Runtime(format!("no route to {target}: {e}")))?;
    Ok(s.local_addr()?.ip())
}

pub(crate) fn micros(d: Duration) -> String {
    format!("{:.1} µs", d.as_secs_f64() * 1e6)
}

/// CPU time (user and system) this process has used so far.
pub(crate) fn cpu_time() -> Duration {
    use nix::sys::resource::{getrusage, UsageWho};
    match getrusage(UsageWho::RUSAGE_SELF) {
        Ok(u) => {
            let t = |v: nix::sys::time::TimeVal| {
                Duration::new(v.tv_sec().max(0) as u64, (v.tv_usec().max(0) as u32) * 1000)
            };
            t(u.user_time()) + t(u.system_time())
        }
        Err(_) => Duration::ZERO,
    }
}
