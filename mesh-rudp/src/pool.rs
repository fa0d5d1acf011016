//! Buffers of large reassembled messages, handed back when the application drops them.
//!
//! A message of many fragments is written into one buffer as its pieces arrive. A fresh
//! allocation of a megabyte or more is served by the kernel page by page: every page faults on
//! first write, is zeroed, and is unmapped again when freed. Measured on bulk transfers, those
//! faults cost more than the copy itself. A buffer whose message the application has dropped
//! comes back here and the next large message is written into it: mapped, and often cached.
//!
//! Bounded: the pool holds at most [`EndpointConfig::recycle_bytes`](crate::EndpointConfig)
//! bytes in at most [`MAX_BUFFERS`] buffers; a buffer that does not fit is freed as usual.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};

use bytes::Bytes;

/// Buffers below this size are left to the allocator, which serves them well.
pub(crate) const MIN_RECYCLED: usize = 256 << 10;
/// Most buffers held at once.
pub(crate) const MAX_BUFFERS: usize = 8;

#[derive(Debug, Default)]
struct Held {
    buffers: Vec<Vec<u8>>,
    bytes: usize,
    limit: usize,
    reused: u64,
}

/// A bounded set of spare message buffers, shared with the messages that will return them.
#[derive(Debug, Clone)]
pub(crate) struct BufferPool(Arc<Mutex<Held>>);

impl BufferPool {
    /// A pool that holds at most `limit` bytes of spare buffers (0: none).
    pub(crate) fn new(limit: usize) -> Self {
        Self(Arc::new(Mutex::new(Held {
            limit,
            ..Held::default()
        })))
    }

    /// The smallest held buffer whose capacity is within `min..=max`, emptied.
    pub(crate) fn take(&self, min: usize, max: usize) -> Option<Vec<u8>> {
        if min < MIN_RECYCLED {
            return None;
        }
        let mut held = lock(&self.0);
        let (i, _) = held
            .buffers
            .iter()
            .enumerate()
            .filter(|(_, b)| (min..=max).contains(&b.capacity()))
            .min_by_key(|(_, b)| b.capacity())?;
        let mut buf = held.buffers.swap_remove(i);
        held.bytes -= buf.capacity();
        held.reused += 1;
        buf.clear();
        Some(buf)
    }

    /// `buf` as a message; a large one returns its buffer here when the last handle is dropped.
    pub(crate) fn wrap(&self, buf: Vec<u8>) -> Bytes {
        if buf.capacity() < MIN_RECYCLED || lock(&self.0).limit < buf.capacity() {
            return Bytes::from(buf);
        }
        Bytes::from_owner(Recycled {
            buf,
            pool: Arc::downgrade(&self.0),
        })
    }

    /// Buffers taken for reuse so far.
    pub(crate) fn reused(&self) -> u64 {
        lock(&self.0).reused
    }

    /// Bytes held in spare buffers.
    #[cfg(test)]
    pub(crate) fn held_bytes(&self) -> usize {
        lock(&self.0).bytes
    }
}

/// The pool's lock. The std mutex (the sans-IO core has no `parking_lot`); no code panics while
/// holding it, and the held buffers stay valid if one did.
fn lock(held: &Mutex<Held>) -> MutexGuard<'_, Held> {
    held.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A message's buffer on its way back to the pool.
struct Recycled {
    buf: Vec<u8>,
    pool: Weak<Mutex<Held>>,
}

impl AsRef<[u8]> for Recycled {
    fn as_ref(&self) -> &[u8] {
        &self.buf
    }
}

impl Drop for Recycled {
    fn drop(&mut self) {
        let Some(pool) = self.pool.upgrade() else {
            return;
        };
        let mut held = lock(&pool);
        let cap = self.buf.capacity();
        if held.buffers.len() < MAX_BUFFERS && held.bytes + cap <= held.limit {
            held.bytes += cap;
            held.buffers.push(std::mem::take(&mut self.buf));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dropped_message_returns_its_buffer_within_the_limit() {
        let pool = BufferPool::new(3 << 20);
        let a = pool.wrap(vec![1u8; 1 << 20]);
        let b = pool.wrap(vec![2u8; 1 << 20]);
        let c = pool.wrap(vec![3u8; 2 << 20]);
        let small = pool.wrap(vec![4u8; 1000]);
        assert_eq!(&a[..3], &[1, 1, 1]);
        let a2 = a.clone();
        drop(a);
        assert_eq!(pool.held_bytes(), 0, "a clone still holds the buffer");
        drop(a2);
        assert_eq!(pool.held_bytes(), 1 << 20);
        drop(b);
        drop(c); // over the limit: freed
        drop(small); // too small to keep
        assert_eq!(pool.held_bytes(), 2 << 20);
        assert!(pool.take(3 << 20, 4 << 20).is_none(), "none large enough");
        let got = pool.take(1 << 20, 8 << 20).expect("a buffer");
        assert!(got.is_empty() && got.capacity() >= 1 << 20);
        assert_eq!(pool.held_bytes(), 1 << 20);
    }

    #[test]
    fn a_message_outliving_its_pool_frees_its_buffer() {
        let pool = BufferPool::new(8 << 20);
        let m = pool.wrap(vec![0u8; 1 << 20]);
        drop(pool);
        assert_eq!(m.len(), 1 << 20);
        drop(m);
    }
}
