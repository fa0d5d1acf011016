//! One [`Registry`] type over the backends a node can be configured with.

use std::time::Duration;

use mesh_discovery::{MemoryRegistry, NodeKey, Notice, RedisRegistry, Registry, RegistryError};
use tokio::sync::broadcast;

/// The registry a node runs on.
#[derive(Debug, Clone)]
pub(crate) enum AnyBackend {
    Memory(MemoryRegistry),
    Redis(RedisRegistry),
}

impl Registry for AnyBackend {
    async fn publish(
        &self,
        key: NodeKey,
        record: Vec<u8>,
        ttl: Duration,
    ) -> Result<(), RegistryError> {
        match self {
            Self::Memory(r) => r.publish(key, record, ttl).await,
            Self::Redis(r) => r.publish(key, record, ttl).await,
        }
    }

    async fn refresh(&self, key: NodeKey, ttl: Duration) -> Result<(), RegistryError> {
        match self {
            Self::Memory(r) => r.refresh(key, ttl).await,
            Self::Redis(r) => r.refresh(key, ttl).await,
        }
    }

    async fn remove(&self, key: NodeKey) -> Result<(), RegistryError> {
        match self {
            Self::Memory(r) => r.remove(key).await,
            Self::Redis(r) => r.remove(key).await,
        }
    }

    async fn get(&self, key: NodeKey) -> Result<Option<Vec<u8>>, RegistryError> {
        match self {
            Self::Memory(r) => r.get(key).await,
            Self::Redis(r) => r.get(key).await,
        }
    }

    async fn snapshot(&self) -> Result<Vec<(NodeKey, Vec<u8>)>, RegistryError> {
        match self {
            Self::Memory(r) => r.snapshot().await,
            Self::Redis(r) => r.snapshot().await,
        }
    }

    fn subscribe(&self) -> broadcast::Receiver<Notice> {
        match self {
            Self::Memory(r) => r.subscribe(),
            Self::Redis(r) => r.subscribe(),
        }
    }
}
