//! The in-memory registry: shared by every node of one process (tests, the zero-setup example).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::broadcast;
use tokio::time::Instant;

use crate::{Backend, NodeKey, Notice, RegistryError};

/// Notices buffered per subscriber before a slow one lags (and then reconciles).
const NOTICE_BUFFER: usize = 4096;

#[derive(Debug)]
struct Entry {
    bytes: Vec<u8>,
    expires: Instant,
}

#[derive(Debug)]
struct Inner {
    entries: Mutex<HashMap<NodeKey, Entry>>,
    notices: broadcast::Sender<Notice>,
    down: Mutex<bool>,
}

/// A registry in this process's memory. Clone it to give several nodes the same mesh; give
/// another mesh its own. Liveness uses tokio's clock, so paused-time tests run instantly.
///
/// It can also play a dead Redis: [`set_down`](Self::set_down) makes every call fail.
#[derive(Debug, Clone)]
pub struct MemoryRegistry {
    inner: Arc<Inner>,
}

impl Default for MemoryRegistry {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryRegistry {
    /// An empty registry.
    pub fn new() -> Self {
        Self {
            inner: Arc::new(Inner {
                entries: Mutex::new(HashMap::new()),
                notices: broadcast::channel(NOTICE_BUFFER).0,
                down: Mutex::new(false),
            }),
        }
    }

    /// Makes every call fail with [`RegistryError::Unavailable`] (or work again).
    pub fn set_down(&self, down: bool) {
        *self.inner.down.lock() = down;
    }

    /// Forgets every record at once, without a notice: what a Redis restarted empty looks
    /// like (for tests).
    pub fn clear(&self) {
        self.inner.entries.lock().clear();
    }

    /// Writes raw bytes under a key, as a foreign or broken writer could (for tests).
    pub fn insert_raw(&self, key: NodeKey, bytes: Vec<u8>, ttl: Duration) {
        self.inner.entries.lock().insert(
            key,
            Entry {
                bytes,
                expires: Instant::now() + ttl,
            },
        );
        let _ = self.inner.notices.send(Notice::Changed(key));
    }

    fn check(&self) -> Result<(), RegistryError> {
        if *self.inner.down.lock() {
            return Err(RegistryError::Unavailable(
                "in-memory registry set down".into(),
            ));
        }
        // Expire lazily: every live node calls in once per interval, so expiry is noticed
        // within an interval of the deadline.
        let now = Instant::now();
        let mut entries = self.inner.entries.lock();
        let expired: Vec<NodeKey> = entries
            .iter()
            .filter(|(_, e)| e.expires <= now)
            .map(|(k, _)| *k)
            .collect();
        for k in expired {
            entries.remove(&k);
            let _ = self.inner.notices.send(Notice::Expired(k));
        }
        Ok(())
    }
}

impl Backend for MemoryRegistry {
    async fn publish(
        &self,
        key: NodeKey,
        record: Vec<u8>,
        ttl: Duration,
    ) -> Result<(), RegistryError> {
        self.check()?;
        self.insert_raw(key, record, ttl);
        Ok(())
    }

    async fn refresh(&self, key: NodeKey, ttl: Duration) -> Result<(), RegistryError> {
        self.check()?;
        match self.inner.entries.lock().get_mut(&key) {
            Some(e) => {
                e.expires = Instant::now() + ttl;
                Ok(())
            }
            None => Err(RegistryError::Missing),
        }
    }

    async fn remove(&self, key: NodeKey) -> Result<(), RegistryError> {
        self.check()?;
        if self.inner.entries.lock().remove(&key).is_some() {
            let _ = self.inner.notices.send(Notice::Removed(key));
        }
        Ok(())
    }

    async fn get(&self, key: NodeKey) -> Result<Option<Vec<u8>>, RegistryError> {
        self.check()?;
        Ok(self.inner.entries.lock().get(&key).map(|e| e.bytes.clone()))
    }

    async fn snapshot(&self) -> Result<Vec<(NodeKey, Vec<u8>)>, RegistryError> {
        self.check()?;
        Ok(self
            .inner
            .entries
            .lock()
            .iter()
            .map(|(k, e)| (*k, e.bytes.clone()))
            .collect())
    }

    fn subscribe(&self) -> broadcast::Receiver<Notice> {
        self.inner.notices.subscribe()
    }
}
