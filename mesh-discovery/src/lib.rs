//! Membership for mesh-link: each node publishes its record (address, port, type, values,
//! backups) and keeps a live view of the others, with join, update and leave events.
//!
//! # What this crate does not do
//! It sends no mesh traffic: it only reads and writes node records in a registry. Redis is the
//! phone book, not the wire; when it is down, the last known view is kept and the layers above
//! keep talking.
//!
//! # Pieces
//! - [`Backend`]: where records live, with changes pushed to subscribers. Backends:
//!   [`RedisRegistry`] (fred; key schema and command costs on its docs and in this crate's
//!   README) and [`MemoryRegistry`] (in-process, for tests and the zero-setup example).
//! - [`NodeRecord`]: what a node publishes, read back defensively ([`NodeRecord::decode`]).
//! - [`Membership`]: one node's live view on top of a registry: `nodes()`, `nodes_by_type()`,
//!   `node_value()`, events, `on_update`/`on_updated` hooks, backups and `prepare_nodes()`.
//!
//! # Example
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! use mesh_discovery::{Membership, MembershipConfig, MembershipEvent, MemoryRegistry, NodeKey, NodeRecord};
//!
//! let registry = MemoryRegistry::new();
//! let key = |port| NodeKey::new("127.0.0.1".parse().unwrap(), port);
//! let a = Membership::start(registry.clone(), NodeRecord::new(key(8100), "game", 1, 0), MembershipConfig::default()).await;
//! let mut events = a.events();
//! let b = Membership::start(registry.clone(), NodeRecord::new(key(8101), "chat", 2, 0), MembershipConfig::default()).await;
//! assert!(matches!(events.recv().await.unwrap(), MembershipEvent::Joined(r) if r.key == key(8101)));
//! b.stop().await; // deregisters at once
//! assert!(matches!(events.recv().await.unwrap(), MembershipEvent::Left(r) if r.key == key(8101)));
//! a.stop().await;
//! # }
//! ```

#![forbid(unsafe_code)]
#![warn(missing_docs)]

#[cfg(feature = "node-compat")]
pub mod compat;
mod membership;
mod memory;
mod record;
#[cfg(feature = "redis")]
mod redis;
mod registry;
#[cfg(feature = "testing")]
pub mod testing;

pub use membership::{
    DiscoveryStats, LivenessCheck, Membership, MembershipConfig, MembershipEvent,
};
pub use memory::MemoryRegistry;
pub use record::{NodeKey, NodeRecord, MAX_RECORD_BYTES, RECORD_VERSION};
#[cfg(feature = "redis")]
pub use redis::{RedisRegistry, RedisTopology};
pub use registry::{Backend, Notice};

use thiserror::Error;

/// A registry call failed. Transient unless said otherwise: membership retries with back-off.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum RegistryError {
    /// The registry cannot be reached.
    #[error("registry unavailable: {0}")]
    Unavailable(String),
    /// The record to refresh is gone (it expired): publish it again.
    #[error("record missing")]
    Missing,
    /// The registry's configuration is invalid. Permanent.
    #[error("registry configuration: {0}")]
    Config(String),
}

/// Why a record read from a registry was skipped.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum RecordError {
    /// Larger than [`MAX_RECORD_BYTES`].
    #[error("record of {0} bytes is too large")]
    TooLarge(usize),
    /// Not a record of this format.
    #[error("malformed record: {0}")]
    Malformed(String),
    /// Written by a format version this build does not read.
    #[error("record format version {0} is not supported")]
    Version(u8),
}

/// Errors of the membership API.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum DiscoveryError {
    /// A value could not be represented (for example a map with non-string keys).
    #[error("value cannot be stored: {0}")]
    Value(String),
}

/// The README's examples, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
