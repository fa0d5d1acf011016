//! The node's lower core: the transport, the requests waiting for answers, and the request and
//! send primitives on them. The node and its system services (shared objects) both build on
//! it; it knows neither, so nothing below the node points back up at it.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::Either;
use futures_util::FutureExt;
use mesh_discovery::NodeKey;
use mesh_rudp::{
    Delivery, Outcome, Payload, QueueOptions, Received, SendError, Transport, TransportError,
};
use mesh_wire::{Envelope, EnvelopeKind, ErrorBody};
use tokio::time::Instant;
use tracing::debug;

use crate::pending::PendingRequests;
use crate::{envelope, RequestError};

/// The node serves and sends.
pub(crate) const RUNNING: u8 = 0;
/// The node is leaving: new requests are answered "shutting down".
pub(crate) const STOPPING: u8 = 1;
/// The node has left.
pub(crate) const STOPPED: u8 = 2;

/// What queueing a message gives: its outcome to wait for (if tracked), or why it failed.
pub(crate) type Queued = Result<Option<Outcome>, TransportError>;

/// The wait for room in a full queue ([`Core::queue`]): `None` if its deadline passed first.
pub(crate) type WaitForRoom<'a> =
    std::pin::Pin<Box<dyn Future<Output = Option<Queued>> + Send + 'a>>;

/// What the node and its services share below them.
pub(crate) struct Core {
    pub(crate) transport: Transport,
    /// This node's key (its bound address).
    pub(crate) local: NodeKey,
    pub(crate) pending: PendingRequests,
    next_id: AtomicU64,
    /// [`RUNNING`], [`STOPPING`] or [`STOPPED`].
    pub(crate) state: AtomicU8,
    /// The default timeout of requests.
    pub(crate) request_timeout: Duration,
    /// Error answers that could not be read.
    pub(crate) malformed_answers: AtomicU64,
    /// Poked by a service whose next timer moved earlier than the one the node's maintenance
    /// task sleeps to (which then looks again).
    pub(crate) timers: tokio::sync::Notify,
    /// Requests asked, and how those that failed failed.
    pub(crate) requests: RequestCounters,
}

/// Requests this node asked, by outcome.
#[derive(Default)]
pub(crate) struct RequestCounters {
    pub(crate) asked: AtomicU64,
    pub(crate) timed_out: AtomicU64,
    pub(crate) undelivered: AtomicU64,
    /// Answered with an error (no handler, handler failed, bad request, overloaded, shutting
    /// down, type mismatch).
    pub(crate) refused: AtomicU64,
    pub(crate) other: AtomicU64,
}

impl std::fmt::Debug for Core {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Core")
            .field("local", &self.local)
            .field("state", &self.state.load(Ordering::Relaxed))
            .field("pending", &self.pending)
            .finish_non_exhaustive()
    }
}

impl Core {
    pub(crate) fn new(
        transport: Transport,
        max_pending: usize,
        request_timeout: Duration,
        first_request_id: u64,
    ) -> Self {
        Self {
            local: NodeKey::from(transport.local_addr()),
            transport,
            pending: PendingRequests::new(max_pending),
            next_id: AtomicU64::new(first_request_id),
            state: AtomicU8::new(RUNNING),
            request_timeout,
            malformed_answers: AtomicU64::new(0),
            timers: tokio::sync::Notify::new(),
            requests: RequestCounters::default(),
        }
    }

    /// Whether the node is leaving or has left.
    pub(crate) fn stopping(&self) -> bool {
        self.state.load(Ordering::Acquire) != RUNNING
    }

    /// Asks handler `id` on `node` over the network and waits for the answer, up to `timeout`.
    /// Reliable requests fail as soon as the transport sees the node go; unreliable ones (one
    /// datagram each way) only by the timeout.
    ///
    /// Starts at once (its callers are `async fn`s that await it where they call it): the
    /// request is registered and queued here, and the future returned holds only the wait
    /// for the answer (and, if the node's queue is full, for room), not the arguments.
    pub(crate) fn request(
        &self,
        id: u16,
        fingerprint: Option<u64>,
        node: NodeKey,
        data: Bytes,
        timeout: Duration,
        reliable: bool,
    ) -> impl Future<Output = Result<Bytes, RequestError>> + Send + '_ {
        let c = &self.requests;
        c.asked.fetch_add(1, Ordering::Relaxed);
        let asked = match self.start_request(id, fingerprint, node, data, timeout, reliable) {
            Ok(wait) => Either::Left(wait),
            Err(e) => Either::Right(std::future::ready(Err(e))),
        };
        asked.map(move |r| {
            if let Err(e) = &r {
                let bucket = match e {
                    RequestError::Timeout { .. } => &c.timed_out,
                    RequestError::NotDelivered { .. } => &c.undelivered,
                    RequestError::NoHandler { .. }
                    | RequestError::Handler { .. }
                    | RequestError::BadRequest { .. }
                    | RequestError::Overloaded(_)
                    | RequestError::ShuttingDown(_)
                    | RequestError::TypeMismatch { .. } => &c.refused,
                    _ => &c.other,
                };
                bucket.fetch_add(1, Ordering::Relaxed);
            }
            r
        })
    }

    /// Registers the request and queues it (or takes the wait for room in a full queue); the
    /// wait for its answer.
    fn start_request(
        &self,
        id: u16,
        fingerprint: Option<u64>,
        node: NodeKey,
        data: Bytes,
        timeout: Duration,
        reliable: bool,
    ) -> Result<impl Future<Output = Result<Bytes, RequestError>> + Send + '_, RequestError> {
        if self.stopping() {
            return Err(RequestError::Stopped);
        }
        let request_id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let now = Instant::now();
        let registered = self
            .pending
            .insert(request_id, node.socket_addr(), id, now, timeout)?;
        if registered.wake_expiry {
            self.pending.wake_expiry();
        }
        // Removes the entry however this ends (answered, failed, timed out, dropped, or
        // refused here: dropped on return).
        let cleanup = PendingGuard(&self.pending, request_id, true);
        let head = envelope::Head::new(EnvelopeKind::Request, id, request_id).typed(fingerprint);
        let envelope = envelope::payload(head, &data);
        let mut wait = None;
        if reliable {
            // No waiter for the request's acknowledgement: the answer implies it, and the
            // transport gives up on a message only when its peer's session ends, which the
            // node's peer watcher turns into a failure of every request to that peer.
            let options = QueueOptions::new().track(false);
            let deadline = now.checked_add(timeout);
            match self.queue(node.socket_addr(), envelope, options, deadline) {
                Ok(queued) => request_queued(node, queued)?,
                Err(w) => wait = Some(w),
            }
        } else {
            let limit = self.transport.max_unreliable_size();
            if envelope.len() > limit {
                return Err(not_delivered(
                    node,
                    SendError::TooLarge {
                        size: envelope.len(),
                        limit,
                    },
                ));
            }
            self.transport
                .send_unreliable(node.socket_addr(), envelope.to_bytes())
                .map_err(|e| not_delivered(node, send_error(e)))?;
        }
        let answer = registered.answer;
        Ok(async move {
            // The whole guard, not only its flag (a closure would capture just the field it
            // names, and the guard would drop, and remove the entry, right here).
            let mut cleanup = cleanup;
            if let Some(wait) = wait {
                let Some(queued) = wait.await else {
                    return Err(RequestError::Timeout {
                        handler: id,
                        node,
                        after: timeout,
                    });
                };
                request_queued(node, queued)?;
            }
            let answer = unbudgeted(answer).await;
            // Whoever completed or dropped the answer's sender removed the entry.
            cleanup.2 = false;
            answer.unwrap_or(Err(RequestError::Stopped))
        })
    }

    /// Queues `data` to `peer` now (`Ok`), or, when its queue is full, hands back the wait
    /// for room (until `deadline`, if any: it yields `None` when that passed first). The wait
    /// comes boxed and this is no `async fn`, so that the future of every send and request,
    /// which a caller may hold thousands of, carries neither.
    pub(crate) fn queue(
        &self,
        peer: SocketAddr,
        data: Payload,
        options: QueueOptions,
        deadline: Option<Instant>,
    ) -> Result<Queued, WaitForRoom<'_>> {
        let mut data = Some(data);
        if let Some(queued) = self.transport.queue_now(peer, &mut data, options) {
            return Ok(queued);
        }
        let Some(data) = data.take() else {
            unreachable!("queue_now keeps the data when it queues nothing")
        };
        let queue = self.transport.queue(peer, data, options);
        Err(Box::pin(async move {
            match deadline {
                Some(d) => tokio::time::timeout_at(d, queue).await.ok(),
                None => Some(queue.await),
            }
        }))
    }

    /// Queues a one-way message for a system handler on another node without waiting, so that
    /// it keeps its place behind the ones queued before it (see
    /// [`Transport::try_queue`](mesh_rudp::Transport::try_queue)).
    pub(crate) fn try_send_system(
        &self,
        to: SocketAddr,
        handler: u16,
        body: &[u8],
        delivery: Delivery,
    ) -> Result<(), TransportError> {
        self.transport
            .try_queue(
                to,
                envelope::one_way(handler, body),
                QueueOptions::from(delivery).track(false),
            )
            .map(|_| ())
    }

    /// An answer arrived: it completes the request it answers, if the node asked is the one
    /// answering. False if it was unreadable (counted in `malformed_answers`).
    pub(crate) fn resolve_answer(
        &self,
        from: SocketAddr,
        env: &Envelope<'_>,
        payload: Bytes,
    ) -> bool {
        let answer = if env.kind == EnvelopeKind::Response {
            Ok(payload)
        } else {
            match ErrorBody::decode(&payload) {
                Ok(b) => Err(RequestError::from_remote(
                    NodeKey::from(from),
                    env.handler,
                    b.code,
                    b.message,
                )),
                Err(_) => {
                    self.malformed_answers.fetch_add(1, Ordering::Relaxed);
                    return false;
                }
            }
        };
        if !self
            .pending
            .resolve(env.request_id, from, env.handler, answer)
        {
            debug!(%from, "answer to no request of ours dropped");
        }
        true
    }
}

/// A request that could not be sent to `node`.
fn not_delivered(node: NodeKey, e: SendError) -> RequestError {
    RequestError::NotDelivered {
        node,
        error: e.into(),
    }
}

/// What queueing a request to `node` came to: queued, or why it was not.
fn request_queued(node: NodeKey, queued: Queued) -> Result<(), RequestError> {
    queued
        .map(|_| ())
        .map_err(|e| not_delivered(node, send_error(e)))
}

/// Why the transport refused to queue a message, as a send's error (the transport refuses
/// only with a `SendError`; anything else means it is gone).
pub(crate) fn send_error(e: TransportError) -> SendError {
    match e {
        TransportError::Send(e) => e,
        e => {
            debug!(error = %e, "send");
            SendError::Closed
        }
    }
}

/// Removes a request's entry however its future ends, unless disarmed (`.2`) by one that
/// knows the entry is gone already.
struct PendingGuard<'a>(&'a PendingRequests, u64, bool);

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        if self.2 {
            self.0.remove(self.1);
        }
    }
}

/// Waits on `f` outside tokio's cooperative budget. A send or request awaits one outcome
/// once, never in a loop, so it cannot starve its task; but inside a budget, a caller that
/// polls thousands of them from one task (a `FuturesUnordered` of sends) exhausts the budget,
/// and every later poll then returns "not yet" and re-wakes itself: the work per outcome grew
/// with the number in flight (one-way throughput fell from 550k to 51k messages/s between
/// 512 and 16384 in flight).
pub(crate) fn unbudgeted<F: Future>(f: F) -> tokio::task::Unconstrained<F> {
    tokio::task::unconstrained(f)
}

/// Whether a received message is an answer to a request, by its first byte (the envelope's
/// kind): the transport shows only these to [`intercept_answers`], and hands the rest (one-way
/// messages, requests) straight to the receive loop, without a hand-off through the hook for
/// each (measured: 8 % of the receiving process's instructions per one-way message).
pub(crate) fn is_answer(bytes: &[u8]) -> bool {
    bytes.first().is_some_and(|&b| {
        matches!(
            EnvelopeKind::from_byte(b & !mesh_wire::TYPED),
            Ok(EnvelopeKind::Response | EnvelopeKind::ErrorResponse)
        )
    })
}

/// Takes answers straight from the transport's task: the waiting request is woken without a
/// hand-off through the receive loop. Everything else goes on to the loop.
pub(crate) fn intercept_answers(core: Weak<Core>) -> mesh_rudp::Intercept {
    Arc::new(move |m: Received| {
        let head = match Envelope::decode(&m.data) {
            Ok(env)
                if matches!(
                    env.kind,
                    EnvelopeKind::Response | EnvelopeKind::ErrorResponse
                ) =>
            {
                envelope::head_of(&env)
            }
            _ => return Some(m),
        };
        let Some(core) = core.upgrade() else {
            return Some(m);
        };
        let mut payload = m.data;
        bytes::Buf::advance(&mut payload, Envelope::header_len(head.kind, false));
        if !core.resolve_answer(m.from, &head, payload) {
            debug!(from = %m.from, "unreadable error answer dropped");
        }
        None
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_answers_are_shown_to_the_intercept_hook() {
        for (kind, answer) in [
            (EnvelopeKind::OneWay, false),
            (EnvelopeKind::Request, false),
            (EnvelopeKind::Response, true),
            (EnvelopeKind::ErrorResponse, true),
        ] {
            for fingerprint in [None, Some(0x1234_5678_9abc_def0)] {
                let mut v = Vec::new();
                Envelope::encode_header(kind, 7, 1, fingerprint, &mut v);
                v.extend_from_slice(b"payload");
                assert_eq!(is_answer(&v), answer, "{kind:?} {fingerprint:?}");
                // The filter agrees with a full decode.
                let decoded = Envelope::decode(&v).expect("valid");
                assert_eq!(decoded.kind, kind);
            }
        }
        // Nothing, or an unknown kind: not an answer (the loop reports it).
        assert!(!is_answer(&[]));
        assert!(!is_answer(&[0x7f, 0, 1]));
        assert!(!is_answer(&[0xff]));
    }
}
