//! The backend trait: where records live and how changes are pushed.

use std::future::Future;
use std::time::Duration;

use tokio::sync::broadcast;

use crate::{NodeKey, RegistryError};

/// A change in a registry, pushed to every subscriber.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Notice {
    /// A record was written (a join or an update): read it with [`Backend::get`].
    Changed(NodeKey),
    /// A record was removed by its node (a graceful stop): the node said goodbye.
    Removed(NodeKey),
    /// A record expired: its node stopped refreshing it. Weaker evidence than a goodbye: the
    /// node may only have lost the registry (see [`crate::Membership`]).
    Expired(NodeKey),
    /// Notices may have been missed (a reconnect, a slow subscriber): read everything again.
    Resync,
}

/// Where node records live. Implemented by [`crate::MemoryRegistry`] and (later) the Redis
/// backend; [`crate::Membership`] builds the live view on top of any of them.
///
/// Records are bytes here: reading them is [`crate::NodeRecord::decode`]'s job, so every backend
/// gets the same defensive parsing.
pub trait Backend: Send + Sync + 'static {
    /// Writes (or rewrites) a record, live for `ttl`.
    fn publish(
        &self,
        key: NodeKey,
        record: Vec<u8>,
        ttl: Duration,
    ) -> impl Future<Output = Result<(), RegistryError>> + Send;

    /// Extends a record's liveness without rewriting it. Fails with
    /// [`RegistryError::Missing`] when the record is gone (then publish it again).
    fn refresh(
        &self,
        key: NodeKey,
        ttl: Duration,
    ) -> impl Future<Output = Result<(), RegistryError>> + Send;

    /// Removes a record at once (a graceful stop).
    fn remove(&self, key: NodeKey) -> impl Future<Output = Result<(), RegistryError>> + Send;

    /// One record's bytes, if it is live.
    fn get(
        &self,
        key: NodeKey,
    ) -> impl Future<Output = Result<Option<Vec<u8>>, RegistryError>> + Send;

    /// Every live record: the full read used to reconcile now and then.
    fn snapshot(
        &self,
    ) -> impl Future<Output = Result<Vec<(NodeKey, Vec<u8>)>, RegistryError>> + Send;

    /// Subscribes to changes.
    fn subscribe(&self) -> broadcast::Receiver<Notice>;
}
