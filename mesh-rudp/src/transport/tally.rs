//! [`Tally`]: one outcome for many messages, instead of a receiver each.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::sync::Notify;

#[cfg(doc)]
use super::Transport;
use crate::SendError;

/// Failures a [`Tally`] keeps in detail between two [`take`](Tally::take)s; past it, only
/// counted (a peer that is gone fails every message sent to it, and the caller may go on
/// sending).
pub const TALLY_DETAILS: usize = 1024;

/// The outcome of many reliable messages queued with [`Transport::queue_tallied`]: how many
/// were acknowledged, which failed, and a wait until none is left in flight. Costs no channel,
/// future or allocation per message, where [`Transport::queue`]'s receiver costs one each.
///
/// Clones share the tally. Every message queued on it is counted exactly once, as delivered
/// or as failed; a message whose transport is dropped before its outcome is known counts as
/// failed with [`SendError::Closed`].
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use mesh_rudp::{QueueOptions, Tally, Transport, TransportConfig};
/// let a = Transport::bind("127.0.0.1:0".parse()?, TransportConfig::default()).await?;
/// let b = Transport::bind("127.0.0.1:0".parse()?, TransportConfig::default()).await?;
/// let tally = Tally::new();
/// for i in 0..100u8 {
///     a.queue_tallied(b.local_addr(), vec![i], QueueOptions::new(), &tally, u64::from(i))
///         .await?;
/// }
/// tally.settled().await;
/// let report = tally.take();
/// assert_eq!((report.delivered, report.failed), (100, 0));
/// # a.close().await; b.close().await;
/// # Ok(()) }
/// ```
#[derive(Clone, Default)]
pub struct Tally {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    /// Queued and not yet settled.
    pending: AtomicU64,
    delivered: AtomicU64,
    failures: Mutex<Failures>,
    /// Wakes [`Tally::settled`] and [`Tally::at_most`] when `pending` falls to `wake_at`.
    settled: Notify,
    /// The count of pending messages at which a waiter of [`Tally::at_most`] wants waking
    /// (0: only when none is left).
    wake_at: AtomicU64,
}

#[derive(Default)]
struct Failures {
    count: u64,
    details: Vec<TallyFailure>,
}

impl std::fmt::Debug for Tally {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tally")
            .field("pending", &self.pending())
            .field("delivered", &self.inner.delivered.load(Ordering::Relaxed))
            .field("failed", &self.inner.failures.lock().count)
            .finish()
    }
}

/// One message of a [`Tally`] that failed.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct TallyFailure {
    /// The tag it was queued with.
    pub tag: u64,
    /// The peer it was for.
    pub peer: SocketAddr,
    /// Why.
    pub error: SendError,
}

/// What a [`Tally`] counted since it was made or last [taken](Tally::take).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct TallyReport {
    /// Messages acknowledged.
    pub delivered: u64,
    /// Messages failed.
    pub failed: u64,
    /// The first [`TALLY_DETAILS`] failures, in the order they failed.
    pub failures: Vec<TallyFailure>,
}

impl Tally {
    /// A tally with nothing counted.
    pub fn new() -> Self {
        Self::default()
    }

    /// Messages queued on it and not yet delivered or failed.
    pub fn pending(&self) -> u64 {
        self.inner.pending.load(Ordering::Acquire)
    }

    /// Waits until no message queued on it is in flight: each was delivered or failed.
    pub async fn settled(&self) {
        self.at_most(0).await;
    }

    /// Waits until at most `n` messages queued on it are in flight: a window over a stream of
    /// messages, which keeps the sender from queueing far ahead of the network. (One task at
    /// a time should wait with an `n` above 0: the tally keeps one such threshold.)
    pub async fn at_most(&self, n: u64) {
        if self.pending() <= n {
            return;
        }
        self.inner.wake_at.store(n, Ordering::Release);
        loop {
            let notified = self.inner.settled.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.pending() <= n {
                break;
            }
            notified.await;
        }
        self.inner.wake_at.store(0, Ordering::Release);
    }

    /// Takes what was counted so far (the messages still pending are counted later).
    pub fn take(&self) -> TallyReport {
        let mut f = self.inner.failures.lock();
        TallyReport {
            delivered: self.inner.delivered.swap(0, Ordering::AcqRel),
            failed: std::mem::take(&mut f.count),
            failures: std::mem::take(&mut f.details),
        }
    }

    /// Counts a message queued: an entry that settles it once.
    pub(super) fn entry(&self, tag: u64, peer: SocketAddr) -> TallyEntry {
        self.inner.pending.fetch_add(1, Ordering::AcqRel);
        TallyEntry {
            tally: Some(self.clone()),
            tag,
            peer,
        }
    }

    fn settle(&self, tag: u64, peer: SocketAddr, outcome: Result<(), SendError>) {
        let inner = &*self.inner;
        match outcome {
            Ok(()) => {
                inner.delivered.fetch_add(1, Ordering::AcqRel);
            }
            Err(error) => {
                let mut f = inner.failures.lock();
                f.count += 1;
                if f.details.len() < TALLY_DETAILS {
                    f.details.push(TallyFailure { tag, peer, error });
                }
            }
        }
        let left = inner.pending.fetch_sub(1, Ordering::AcqRel) - 1;
        if left == 0 || left == inner.wake_at.load(Ordering::Acquire) {
            inner.settled.notify_waiters();
        }
    }
}

/// A message's place in its tally, held by the transport until the message settles. Dropped
/// unsettled (the transport gone), it counts the message failed as closed.
#[derive(Debug)]
pub(super) struct TallyEntry {
    tally: Option<Tally>,
    tag: u64,
    peer: SocketAddr,
}

impl TallyEntry {
    pub(super) fn settle(mut self, outcome: Result<(), SendError>) {
        if let Some(t) = self.tally.take() {
            t.settle(self.tag, self.peer, outcome);
        }
    }
}

impl Drop for TallyEntry {
    fn drop(&mut self) {
        if let Some(t) = self.tally.take() {
            t.settle(self.tag, self.peer, Err(SendError::Closed));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr() -> SocketAddr {
        "127.0.0.1:9".parse().unwrap()
    }

    #[test]
    fn each_entry_counts_once_and_a_dropped_one_as_closed() {
        let t = Tally::new();
        let a = t.entry(1, addr());
        let b = t.entry(2, addr());
        let c = t.entry(3, addr());
        assert_eq!(t.pending(), 3);
        a.settle(Ok(()));
        b.settle(Err(SendError::Timeout));
        drop(c);
        assert_eq!(t.pending(), 0);
        let r = t.take();
        assert_eq!((r.delivered, r.failed), (1, 2));
        let tags: Vec<_> = r.failures.iter().map(|f| (f.tag, f.error)).collect();
        assert_eq!(
            tags,
            [(2, SendError::Timeout), (3, SendError::Closed)].to_vec()
        );
        assert_eq!(t.take(), TallyReport::default(), "taken");
    }

    #[test]
    fn failures_past_the_detail_limit_are_only_counted() {
        let t = Tally::new();
        let n = TALLY_DETAILS as u64 + 10;
        for tag in 0..n {
            t.entry(tag, addr()).settle(Err(SendError::Closed));
        }
        let r = t.take();
        assert_eq!(r.failed, n);
        assert_eq!(r.failures.len(), TALLY_DETAILS);
        assert_eq!(
            r.failures.last().map(|f| f.tag),
            Some(TALLY_DETAILS as u64 - 1)
        );
    }

    #[tokio::test]
    async fn at_most_wakes_when_the_window_has_room() {
        let t = Tally::new();
        let mut entries: Vec<_> = (0..4).map(|i| t.entry(i, addr())).collect();
        let waiter = tokio::spawn({
            let t = t.clone();
            async move { t.at_most(2).await }
        });
        tokio::task::yield_now().await;
        entries.pop().unwrap().settle(Ok(()));
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished(), "three in flight");
        entries.pop().unwrap().settle(Ok(()));
        waiter.await.unwrap();
        assert_eq!(t.pending(), 2);
    }

    #[tokio::test]
    async fn settled_waits_for_the_last_entry() {
        let t = Tally::new();
        t.settled().await; // nothing pending
        let e = t.entry(0, addr());
        let waiter = tokio::spawn({
            let t = t.clone();
            async move { t.settled().await }
        });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished(), "one message in flight");
        e.settle(Ok(()));
        waiter.await.unwrap();
        assert_eq!(t.take().delivered, 1);
    }
}
