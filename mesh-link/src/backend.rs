//! One [`Registry`] type over the backends a node can be configured with.

use std::time::Duration;

#[cfg(feature = "redis")]
use mesh_discovery::RedisRegistry;
use mesh_discovery::{Backend, MemoryRegistry, NodeKey, Notice, RegistryError};
use tokio::sync::broadcast;

/// The registry a node runs on.
#[derive(Debug, Clone)]
pub(crate) enum AnyBackend {
    Memory(MemoryRegistry),
    #[cfg(feature = "redis")]
    Redis(RedisRegistry),
    /// Redis in both schemas, ours and the original Node.js package's (node-compat mode).
    #[cfg(feature = "node-compat")]
    Compat(mesh_discovery::compat::CompatRegistry),
}

impl Backend for AnyBackend {
    async fn publish(
        &self,
        key: NodeKey,
        record: Vec<u8>,
        ttl: Duration,
    ) -> Result<(), RegistryError> {
        match self {
            Self::Memory(r) => r.publish(key, record, ttl).await,
            #[cfg(feature = "redis")]
            Self::Redis(r) => r.publish(key, record, ttl).await,
            #[cfg(feature = "node-compat")]
            Self::Compat(r) => r.publish(key, record, ttl).await,
        }
    }

    async fn refresh(&self, key: NodeKey, ttl: Duration) -> Result<(), RegistryError> {
        match self {
            Self::Memory(r) => r.refresh(key, ttl).await,
            #[cfg(feature = "redis")]
            Self::Redis(r) => r.refresh(key, ttl).await,
            #[cfg(feature = "node-compat")]
            Self::Compat(r) => r.refresh(key, ttl).await,
        }
    }

    async fn remove(&self, key: NodeKey) -> Result<(), RegistryError> {
        match self {
            Self::Memory(r) => r.remove(key).await,
            #[cfg(feature = "redis")]
            Self::Redis(r) => r.remove(key).await,
            #[cfg(feature = "node-compat")]
            Self::Compat(r) => r.remove(key).await,
        }
    }

    async fn get(&self, key: NodeKey) -> Result<Option<Vec<u8>>, RegistryError> {
        match self {
            Self::Memory(r) => r.get(key).await,
            #[cfg(feature = "redis")]
            Self::Redis(r) => r.get(key).await,
            #[cfg(feature = "node-compat")]
            Self::Compat(r) => r.get(key).await,
        }
    }

    async fn snapshot(&self) -> Result<Vec<(NodeKey, Vec<u8>)>, RegistryError> {
        match self {
            Self::Memory(r) => r.snapshot().await,
            #[cfg(feature = "redis")]
            Self::Redis(r) => r.snapshot().await,
            #[cfg(feature = "node-compat")]
            Self::Compat(r) => r.snapshot().await,
        }
    }

    fn subscribe(&self) -> broadcast::Receiver<Notice> {
        match self {
            Self::Memory(r) => r.subscribe(),
            #[cfg(feature = "redis")]
            Self::Redis(r) => r.subscribe(),
            #[cfg(feature = "node-compat")]
            Self::Compat(r) => r.subscribe(),
        }
    }
}
