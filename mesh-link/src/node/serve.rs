//! Serving: the receive loop that drives the transport, admission of handler runs, and the
//! answers to requests.
//!
//! Everything happens on one task: a request goes from the socket to its handler, and the
//! answer (carrying the acknowledgement) back to the socket, without waking another task.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::task::Poll;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::stream::FuturesUnordered;
use futures_util::{FutureExt, StreamExt};
use mesh_discovery::NodeKey;
use mesh_rudp::{Delivery, Driver, QueueOptions, Received};
use mesh_wire::{EnvelopeKind, ErrorCode};
use tracing::debug;

use super::system::{self, Handled};
use super::{handlers, MeshNode, TaskHandle};
use crate::envelope;
use crate::handler::{self, Failure, Started};

/// Work the receive loop runs: a handler and its answer, a relay, an answer to send.
pub(crate) type Job = BoxFuture<'static, ()>;

/// Where to send an answer.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ReplyTo {
    pub(crate) peer: SocketAddr,
    pub(crate) request_id: u64,
    pub(crate) handler: u16,
    pub(crate) reliable: bool,
}

/// A message for a handler (one-way, or a request with somewhere to answer).
pub(crate) struct Incoming {
    pub(crate) sender: NodeKey,
    pub(crate) handler: u16,
    pub(crate) payload: Bytes,
    pub(crate) reliable: bool,
    pub(crate) reply: Option<ReplyTo>,
}

/// Handler runs in progress and admitted ones waiting for a slot.
struct Jobs {
    running: FuturesUnordered<Job>,
    waiting: VecDeque<Job>,
    max: usize,
}

impl Jobs {
    /// Runs a job until it first waits, and keeps it in `running` only if it does: most
    /// handlers finish in one go (the answer is queued without waiting), and then cost no slot
    /// in the set. A job that waits registered the no-op waker; `running` polls it again at
    /// once (a pushed future is queued to run), which registers the real one.
    fn start(&mut self, mut job: Job) {
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        if job.as_mut().poll(&mut cx).is_pending() {
            self.running.push(job);
        }
    }

    /// Admits a handler run: started if a slot is free; a request past the limit is answered
    /// "overloaded"; a one-way message waits (up to as many again, then the loop stops
    /// reading, which slows the senders).
    fn admit(&mut self, node: &MeshNode, job: Job, reply: Option<ReplyTo>) {
        let inner = &node.inner;
        inner.inflight.fetch_add(1, Ordering::AcqRel);
        if self.running.len() < self.max {
            self.start(job);
        } else if let Some(to) = reply {
            inner.finish_one();
            inner.counters.overloaded.fetch_add(1, Ordering::Relaxed);
            self.running.push(answer_job(
                node,
                to,
                Err(Failure::new(
                    ErrorCode::OVERLOADED,
                    "too many handlers running",
                )),
            ));
        } else {
            self.waiting.push_back(job);
        }
    }
}

/// Most messages taken from the transport at once: one lock, one upgrade of the node's handle
/// for all of them.
const RECV_BATCH: usize = 64;

/// Drives the transport and runs handlers, all in this one task.
pub(crate) async fn receive_loop(handle: TaskHandle, mut driver: Driver) {
    let max = handle.inner().config.max_concurrent_handlers;
    let mut jobs = Jobs {
        running: FuturesUnordered::new(),
        waiting: VecDeque::new(),
        max,
    };
    let mut batch = Vec::with_capacity(RECV_BATCH);
    let mut cache = handlers::Cache::default();
    let closed = std::future::poll_fn(|cx| {
        // A handler removed while the loop slept is let go of now, not at the next message.
        cache.refresh(&handle.inner().handlers, cx);
        loop {
            while jobs.running.len() < max {
                match jobs.waiting.pop_front() {
                    Some(j) => jobs.running.push(j),
                    None => break,
                }
            }
            // Handler runs first: those that finish free their slots for the messages below, and
            // those just pushed get their first poll with the real waker.
            if !jobs.running.is_empty() {
                while let Poll::Ready(Some(())) = jobs.running.poll_next_unpin(cx) {}
            }
            // As many as may still wait for a slot: admission never queues more than `max`.
            let room = max.saturating_sub(jobs.waiting.len()).min(RECV_BATCH);
            match driver.poll_recv_many(cx, &mut batch, room) {
                Poll::Ready(Some(_)) => {
                    let Some(node) = handle.node() else {
                        return Poll::Ready(false);
                    };
                    for m in batch.drain(..) {
                        on_message(&node, m, &mut jobs, &mut cache);
                    }
                }
                Poll::Ready(None) => return Poll::Ready(true),
                Poll::Pending => return Poll::Pending,
            }
        }
    })
    .await;
    if closed {
        // Closed: let what runs finish (stop() cancels them past its deadline by aborting us).
        while jobs.running.next().await.is_some() {}
    }
}

fn on_message(node: &MeshNode, m: Received, jobs: &mut Jobs, cache: &mut handlers::Cache) {
    let inner = &node.inner;
    let Ok((env, payload)) = envelope::split(m.data) else {
        inner.counters.malformed.fetch_add(1, Ordering::Relaxed);
        debug!(from = %m.from, "unreadable envelope dropped");
        return;
    };
    if matches!(
        env.kind,
        EnvelopeKind::Response | EnvelopeKind::ErrorResponse
    ) {
        // Answers are normally taken by the transport's intercept hook; this is the rest.
        if !inner.core.resolve_answer(m.from, &env, payload) {
            debug!(from = %m.from, "unreadable error answer dropped");
        }
        return;
    }
    let reply = (env.kind == EnvelopeKind::Request).then_some(ReplyTo {
        peer: m.from,
        request_id: env.request_id,
        handler: env.handler,
        reliable: m.reliable,
    });
    if let Some(to) = reply {
        if node.stopping() {
            let shutting = Failure::new(ErrorCode::SHUTTING_DOWN, "shutting down");
            jobs.running.push(answer_job(node, to, Err(shutting)));
            return;
        }
    }
    let incoming = Incoming {
        sender: NodeKey::from(m.from),
        handler: env.handler,
        payload,
        reliable: m.reliable,
        reply,
    };
    if let Some(system) = system::lookup(env.handler) {
        match system(node, incoming) {
            Handled::Answer(r) => {
                if let Some(to) = reply {
                    jobs.running.push(answer_job(node, to, r));
                }
            }
            Handled::Job(job) => {
                let inner = inner.clone();
                let job = async move {
                    job.await;
                    inner.finish_one();
                }
                .boxed();
                jobs.admit(node, job, reply);
            }
            Handled::Done => {}
        }
        return;
    }
    let h = match cache.get(&inner.handlers, env.handler, env.fingerprint) {
        Ok(Some(h)) => h,
        Ok(None) => {
            inner.counters.no_handler.fetch_add(1, Ordering::Relaxed);
            match reply {
                Some(to) => jobs.running.push(answer_job(
                    node,
                    to,
                    Err(Failure::new(
                        ErrorCode::NO_HANDLER,
                        format!("no handler {}", env.handler),
                    )),
                )),
                None => {
                    debug!(handler = env.handler, from = %m.from, "message for no handler dropped");
                }
            }
            return;
        }
        Err(mismatch) => {
            // The handler never runs with a value of another type.
            inner.counters.type_mismatch.fetch_add(1, Ordering::Relaxed);
            match reply {
                Some(to) => jobs.running.push(answer_job(node, to, Err(mismatch))),
                None => debug!(
                    handler = env.handler,
                    from = %m.from,
                    serves = %mismatch.message,
                    "message of a type the handler does not take dropped"
                ),
            }
            return;
        }
    };
    let ctx = node.context(incoming.sender, incoming.reliable, env.handler);
    if jobs.running.len() >= jobs.max {
        // No slot free: admission decides (the run waits, or the request is answered
        // "overloaded").
        let node2 = node.clone();
        let h = h.clone();
        let job = async move {
            let t0 = started_at(&node2);
            let r = handler::run(h, incoming.payload, ctx).await;
            conclude(&node2, reply, r, t0).await;
        }
        .boxed();
        jobs.admit(node, job, reply);
        return;
    }
    // A slot is free: the handler runs here until it first waits. Most finish at once, and
    // then cost no box or slot of their own (the answer is queued without waiting).
    let t0 = started_at(node);
    inner.inflight.fetch_add(1, Ordering::AcqRel);
    match handler::start(h, incoming.payload, ctx) {
        Started::Done(r) => {
            if let Some(answer) = handled(node, reply, r, t0) {
                inner.inflight.fetch_add(1, Ordering::AcqRel);
                let inner = inner.clone();
                jobs.running.push(
                    async move {
                        answer.await;
                        inner.finish_one();
                    }
                    .boxed(),
                );
            }
            inner.finish_one();
        }
        Started::Waiting(run) => {
            let node2 = node.clone();
            let id = env.handler;
            jobs.running.push(
                async move {
                    let r = handler::finish(run, id).await;
                    conclude(&node2, reply, r, t0).await;
                }
                .boxed(),
            );
        }
    }
}

/// The end of a handler run that waited: its result handled and answered (waiting for room
/// if need be), and the run counted finished.
async fn conclude(
    node: &MeshNode,
    reply: Option<ReplyTo>,
    r: Result<Option<Bytes>, Failure>,
    t0: Option<std::time::Instant>,
) {
    if let Some(answer) = handled(node, reply, r, t0) {
        answer.await;
    }
    node.inner.finish_one();
}

/// When a handler's run starts, if the node times its handlers.
fn started_at(node: &MeshNode) -> Option<std::time::Instant> {
    node.inner
        .timings
        .as_ref()
        .map(|_| std::time::Instant::now())
}

/// A handler's result: counted, timed, and answered. Returns the answer's job when the answer
/// must wait for room in the requester's send queue.
fn handled(
    node: &MeshNode,
    reply: Option<ReplyTo>,
    r: Result<Option<Bytes>, Failure>,
    t0: Option<std::time::Instant>,
) -> Option<Job> {
    let c = &node.inner.counters;
    c.handled.fetch_add(1, Ordering::Relaxed);
    if r.is_err() {
        c.handler_failed.fetch_add(1, Ordering::Relaxed);
    }
    if let (Some(t), Some(t0)) = (&node.inner.timings, t0) {
        t.handler.record(t0.elapsed().as_secs_f64());
    }
    match reply {
        Some(to) => answer_now(node, to, r),
        None => {
            if let Err(f) = r {
                debug!(error = %f.message, "one-way handler failed");
            }
            None
        }
    }
}

pub(crate) fn answer_job(node: &MeshNode, to: ReplyTo, r: Result<Option<Bytes>, Failure>) -> Job {
    let node = node.clone();
    async move { send_answer(&node, to, r).await }.boxed()
}

/// Sends an answer the way its request came: reliably, or as one datagram if it fits.
pub(crate) async fn send_answer(node: &MeshNode, to: ReplyTo, r: Result<Option<Bytes>, Failure>) {
    if let Some(wait) = answer_now(node, to, r) {
        wait.await;
    }
}

/// [`send_answer`] without waiting: the answer is sent or queued now, unless the requester's
/// send queue is full; then the job that waits for room is returned.
fn answer_now(node: &MeshNode, to: ReplyTo, r: Result<Option<Bytes>, Failure>) -> Option<Job> {
    let bytes = match r {
        Ok(answer) => envelope::payload(
            envelope::Head::new(EnvelopeKind::Response, to.handler, to.request_id),
            &answer.unwrap_or_default(),
        ),
        Err(f) => envelope::error(to.handler, to.request_id, f.code, &f.message).into(),
    };
    let t = &node.inner.core.transport;
    if !to.reliable && bytes.len() <= t.max_unreliable_size() {
        if let Err(e) = t.send_unreliable(to.peer, bytes.to_bytes()) {
            debug!(to = %to.peer, error = %e, "answer not sent");
        }
        return None;
    }
    // Queued, not awaited: the answer's fate is the requester's to see (or time out on).
    // Lazy: the requester's next message can carry the acknowledgement.
    let options = QueueOptions::new()
        .delivery(Delivery::Unordered)
        .lazy_ack(true)
        .track(false);
    let mut data = Some(bytes);
    let r = match t.queue_now(to.peer, &mut data, options) {
        Some(r) => r,
        None => {
            let bytes = data.take()?;
            let node = node.clone();
            return Some(
                async move {
                    let t = &node.inner.core.transport;
                    if let Err(e) = t.queue(to.peer, bytes, options).await {
                        debug!(to = %to.peer, error = %e, "answer not sent");
                    }
                }
                .boxed(),
            );
        }
    };
    if let Err(e) = r {
        debug!(to = %to.peer, error = %e, "answer not sent");
    }
    None
}
