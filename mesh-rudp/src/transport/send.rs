//! Sending: the one way a reliable message is queued ([`Transport::queue`] with
//! [`QueueOptions`], and [`Transport::send`] for the common case), and unreliable datagrams.
//! The first send of a burst goes to the socket from the caller's task; the ones that follow
//! closely are corked and left to the driver, which packs them.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::task::Waker;

use bytes::Bytes;
use tokio::sync::oneshot;
use tokio::time::Instant;

use super::{
    driver_to_wake, flush, pull_timer_earlier, Outcome, QueueOptions, Shared, State, Tally,
    Transport, TransportError, Waiter,
};
#[cfg(doc)]
use crate::{Endpoint, EndpointStats};
use crate::{Payload, SendError};

impl Transport {
    /// Sends a reliable, unordered message and resolves when the peer acknowledged all of it.
    /// Waits while the peer's send queue is full (back-pressure). For ordering, lazy
    /// acknowledgements, or many messages in flight from one task, see [`queue`](Self::queue).
    pub async fn send(
        &self,
        peer: SocketAddr,
        data: impl Into<Payload>,
    ) -> Result<(), TransportError> {
        let rx = self.queue(peer, data, QueueOptions::new()).await?;
        let rx = rx.expect("a tracked message has an outcome");
        // Outside tokio's cooperative budget: one outcome, awaited once (a caller polling many
        // sends from one task would otherwise exhaust the budget and spin on spurious wakes).
        match tokio::task::unconstrained(rx).await {
            Ok(r) => Ok(r?),
            Err(_) => Err(SendError::Closed.into()),
        }
    }

    /// Queues a reliable message, waiting while the peer's send queue is full (back-pressure),
    /// and returns without waiting for the acknowledgement, so many messages can be in flight
    /// from one task. With [`QueueOptions::track`] (the default) it returns a receiver of the
    /// message's outcome; untracked, nothing waits on it: a failure is counted in
    /// [`EndpointStats::messages_failed`] and logged at debug level, and the transport gives up
    /// on a message only when its peer's session ends, which
    /// [`next_peer_down`](Self::next_peer_down) reports.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use mesh_rudp::{Delivery, QueueOptions, Transport, TransportConfig};
    /// let a = Transport::bind("127.0.0.1:0".parse()?, TransportConfig::default()).await?;
    /// let b = Transport::bind("127.0.0.1:0".parse()?, TransportConfig::default()).await?;
    /// let ordered = QueueOptions::new().delivery(Delivery::Ordered { channel: 1 });
    /// let first = a.queue(b.local_addr(), &b"one"[..], ordered).await?.expect("tracked");
    /// let second = a.queue(b.local_addr(), &b"two"[..], ordered).await?.expect("tracked");
    /// first.await??;
    /// second.await??;
    /// assert_eq!(&b.recv().await.unwrap().data[..], b"one");
    /// assert_eq!(&b.recv().await.unwrap().data[..], b"two");
    /// # a.close().await; b.close().await;
    /// # Ok(()) }
    /// ```
    pub async fn queue(
        &self,
        peer: SocketAddr,
        data: impl Into<Payload>,
        options: QueueOptions,
    ) -> Result<Option<Outcome>, TransportError> {
        // The common case takes the lock once and registers no waiter.
        let mut data = Some(data.into());
        if let Some(r) = self.try_queue_inner(peer, &mut data, options, None) {
            return r;
        }
        // The peer's queue is full. Boxed: the wait is rare, and its state inline would make
        // every send's future larger (a caller may hold thousands of them).
        Box::pin(self.wait_for_room(peer, data, options, None)).await
    }

    /// Queues a reliable message whose outcome is counted in `tally` (under `tag`, which the
    /// tally reports if it fails), waiting while the peer's queue is full. For many messages
    /// awaited together: no receiver, future or allocation per message. `options.track` is
    /// not read: the tally tracks the message.
    pub async fn queue_tallied(
        &self,
        peer: SocketAddr,
        data: impl Into<Payload>,
        options: QueueOptions,
        tally: &Tally,
        tag: u64,
    ) -> Result<(), TransportError> {
        let mut data = Some(data.into());
        let r = match self.try_queue_inner(peer, &mut data, options, Some((tally, tag))) {
            Some(r) => r,
            None => Box::pin(self.wait_for_room(peer, data, options, Some((tally, tag)))).await,
        };
        r.map(|_| ())
    }

    /// [`queue`](Self::queue) once the peer's queue was found full: waits for the driver's
    /// progress until `data` fits.
    async fn wait_for_room(
        &self,
        peer: SocketAddr,
        mut data: Option<Payload>,
        options: QueueOptions,
        tally: Option<(&Tally, u64)>,
    ) -> Result<Option<Outcome>, TransportError> {
        let _waiting = ProgressWait::new(&self.shared);
        loop {
            let progressed = self.shared.progress.notified();
            tokio::pin!(progressed);
            progressed.as_mut().enable();
            if let Some(r) = self.try_queue_inner(peer, &mut data, options, tally) {
                return r;
            }
            progressed.await;
        }
    }

    /// [`queue`](Self::queue) without waiting: a full queue to the peer fails at once with
    /// [`SendError::QueueFull`]. For a caller that must hand messages over in the order it made
    /// them while it holds a lock of its own (an `.await` there would let later messages
    /// overtake).
    pub fn try_queue(
        &self,
        peer: SocketAddr,
        data: impl Into<Payload>,
        options: QueueOptions,
    ) -> Result<Option<Outcome>, TransportError> {
        let mut data = Some(data.into());
        match self.try_queue_inner(peer, &mut data, options, None) {
            Some(r) => r,
            None => Err(SendError::QueueFull.into()),
        }
    }

    /// One attempt of [`queue`](Self::queue) that never waits: `None` while the peer's queue
    /// is full, `data` left in place for the caller to wait with `queue`; otherwise `queue`'s
    /// result, `data` taken. For a caller that keeps the future of every send small: the
    /// wait's state is needed only when the queue is full. `data` holds the payload on entry
    /// (an empty `data` queues nothing and reads as a full queue).
    ///
    /// ```
    /// # use mesh_rudp::{Payload, QueueOptions, Transport, TransportConfig};
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let a = Transport::bind("127.0.0.1:0".parse()?, TransportConfig::default()).await?;
    /// # let b = Transport::bind("127.0.0.1:0".parse()?, TransportConfig::default()).await?;
    /// let to = b.local_addr();
    /// let mut data = Some(Payload::from(&b"hello"[..]));
    /// let outcome = match a.queue_now(to, &mut data, QueueOptions::new()) {
    ///     Some(queued) => queued?,
    ///     // Full: wait for room, in a box of its own.
    ///     None => Box::pin(a.queue(to, data.take().expect("kept"), QueueOptions::new())).await?,
    /// };
    /// outcome.expect("tracked").await??;
    /// assert_eq!(&b.recv().await.unwrap().data[..], b"hello");
    /// # a.close().await; b.close().await;
    /// # Ok(()) }
    /// ```
    pub fn queue_now(
        &self,
        peer: SocketAddr,
        data: &mut Option<Payload>,
        options: QueueOptions,
    ) -> Option<Result<Option<Outcome>, TransportError>> {
        self.try_queue_inner(peer, data, options, None)
    }

    /// One attempt of [`queue`](Self::queue): `None` while the peer's queue is full. Takes
    /// `data` only when it queues it (moved, not cloned: cloning a `Bytes` made from a `Vec`
    /// allocates). With a tally, the outcome is counted there (and `None` returned as the
    /// receiver).
    fn try_queue_inner(
        &self,
        peer: SocketAddr,
        data: &mut Option<Payload>,
        options: QueueOptions,
        tally: Option<(&Tally, u64)>,
    ) -> Option<Result<Option<Outcome>, TransportError>> {
        let mut st = self.shared.state.lock();
        if st.shutdown {
            return Some(Err(SendError::Closed.into()));
        }
        let now = Instant::now().into_std();
        let queued =
            st.endpoint
                .send_reliable_kept(now, peer, data, options.delivery, options.lazy_ack);
        match queued {
            Ok(id) => {
                let rx = match tally {
                    Some((t, tag)) => {
                        st.waiters.insert(id, Waiter::Tally(t.entry(tag, peer)));
                        None
                    }
                    None => options.track.then(|| {
                        let (tx, rx) = oneshot::channel();
                        st.waiters.insert(id, Waiter::One(tx));
                        rx
                    }),
                };
                let w = flush_or_cork(&self.shared, &mut st, now);
                drop(st);
                if let Some(w) = w {
                    w.wake();
                }
                Some(Ok(rx))
            }
            // `data` is still there: the caller waits for room.
            Err(SendError::QueueFull) => None,
            Err(e) => Some(Err(e.into())),
        }
    }

    /// Sends an unreliable message: once, maybe lost, never retransmitted.
    pub fn send_unreliable(
        &self,
        peer: SocketAddr,
        data: impl Into<Bytes>,
    ) -> Result<(), TransportError> {
        let mut st = self.shared.state.lock();
        if st.shutdown {
            return Err(SendError::Closed.into());
        }
        let now = Instant::now().into_std();
        st.endpoint.send_unreliable(now, peer, data.into())?;
        let w = flush_or_cork(&self.shared, &mut st, now);
        drop(st);
        if let Some(w) = w {
            w.wake();
        }
        Ok(())
    }
}

/// Counts a task in `progress_waiters` while it lives (dropped futures included).
pub(super) struct ProgressWait<'a>(&'a Shared);

impl<'a> ProgressWait<'a> {
    pub(super) fn new(shared: &'a Shared) -> Self {
        shared.progress_waiters.fetch_add(1, Ordering::SeqCst);
        Self(shared)
    }
}

impl Drop for ProgressWait<'_> {
    fn drop(&mut self) {
        self.0.progress_waiters.fetch_sub(1, Ordering::SeqCst);
    }
}

/// How many times [`TransportConfig::cork`] a send still counts as part of a burst when
/// nothing was received since the last send that flushed from its task (see
/// [`flush_or_cork`]).
const CORK_QUIET: u32 = 10;

/// After a send: flushes from the caller's task, or corks (see [`TransportConfig::cork`]) and
/// returns the driver's waker so that it flushes once the caller yields. Called with the lock
/// held.
///
/// A send is part of a burst, and corked, when it comes within `cork` of the last send that
/// flushed from its task, or within `CORK_QUIET` times that when nothing arrived in between.
/// A sender whose process shares a CPU with its receiver is preempted by the receiver each
/// time it flushes, and comes back tens of microseconds later: with `cork` alone, every such
/// return flushed again, a datagram or two at a time, each flush another preemption (one-way
/// messages through an `Outbox`, both processes on one CPU: 1.57-1.84 µs of CPU per message
/// against 0.90-1.13 with this rule). A request, or a send after an answer or an
/// acknowledgement, follows something received and still goes at once.
fn flush_or_cork(shared: &Shared, st: &mut State, now: std::time::Instant) -> Option<Waker> {
    let cork = shared.config.cork;
    let burst = st.last_inline_flush.is_some_and(|t| {
        let since = now.saturating_duration_since(t);
        since < cork || (!st.received_since_flush && since < cork.saturating_mul(CORK_QUIET))
    });
    if burst {
        st.flush_wanted = true;
        pull_timer_earlier(st);
        return st.driver_waker.take();
    }
    flush(shared, st, Some(now));
    st.received_since_flush = false;
    // Measured after the flush: a burst's sends follow one another closely only in between.
    st.last_inline_flush = Some(Instant::now().into_std());
    driver_to_wake(st)
}
