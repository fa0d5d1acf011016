//! The node record: what a node publishes about itself, and how it is read back defensively.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};

use serde::{Deserialize, Serialize};

use crate::RecordError;

/// The largest record accepted from a registry. Larger ones are skipped and counted.
pub const MAX_RECORD_BYTES: usize = 64 * 1024;
/// The record format written by this version.
pub const RECORD_VERSION: u8 = 1;

/// A node's identity: its address and port. A restarted node keeps it but gets a new
/// [`NodeRecord::incarnation`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct NodeKey {
    /// The address other nodes reach it at.
    pub address: IpAddr,
    /// Its UDP port.
    pub port: u16,
}

impl NodeKey {
    /// A key from its parts.
    pub fn new(address: IpAddr, port: u16) -> Self {
        Self { address, port }
    }

    /// As a socket address.
    pub fn socket_addr(&self) -> SocketAddr {
        SocketAddr::new(self.address, self.port)
    }
}

impl From<SocketAddr> for NodeKey {
    fn from(a: SocketAddr) -> Self {
        Self::new(a.ip(), a.port())
    }
}

impl fmt::Display for NodeKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.socket_addr().fmt(f)
    }
}

/// Everything a node publishes about itself.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct NodeRecord {
    /// Format version ([`RECORD_VERSION`]).
    pub version: u8,
    /// Address and port.
    pub key: NodeKey,
    /// Distinguishes runs of a node on the same address: a restarted node is a new member.
    pub incarnation: u64,
    /// The node's type (free text, such as `"game"`).
    pub node_type: String,
    /// Values set with `set_value`, as JSON values: any serde value, any characters.
    pub values: BTreeMap<String, serde_json::Value>,
    /// The nodes this node chose as its backups.
    pub backups: Vec<NodeKey>,
    /// Milliseconds since the Unix epoch when the node started.
    pub started_ms: u64,
    /// The mesh protocol version the node speaks.
    pub protocol: u8,
}

impl NodeRecord {
    /// A record for a node starting now.
    pub fn new(
        key: NodeKey,
        node_type: impl Into<String>,
        incarnation: u64,
        started_ms: u64,
    ) -> Self {
        Self {
            version: RECORD_VERSION,
            key,
            incarnation,
            node_type: node_type.into(),
            values: BTreeMap::new(),
            backups: Vec::new(),
            started_ms,
            protocol: 1,
        }
    }

    /// The record's bytes as stored in a registry (JSON, so operators can read it).
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Reads a record from a registry. Never panics; refuses oversized, malformed, foreign
    /// (another format version) and inconsistent records.
    pub fn decode(bytes: &[u8]) -> Result<Self, RecordError> {
        if bytes.len() > MAX_RECORD_BYTES {
            return Err(RecordError::TooLarge(bytes.len()));
        }
        let r: NodeRecord =
            serde_json::from_slice(bytes).map_err(|e| RecordError::Malformed(e.to_string()))?;
        if r.version != RECORD_VERSION {
            return Err(RecordError::Version(r.version));
        }
        if r.key.port == 0 || r.key.address.is_unspecified() {
            return Err(RecordError::Malformed("unusable address".into()));
        }
        Ok(r)
    }
}
