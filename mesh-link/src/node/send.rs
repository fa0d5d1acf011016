//! Sending: reliable one-way messages to one or many nodes (directly or through a relay
//! tree), unreliable datagrams, and requests.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::{join_all, Either};
use futures_util::stream::FuturesUnordered;
use futures_util::FutureExt;
use futures_util::StreamExt;
use mesh_discovery::NodeKey;
use mesh_rudp::{Delivery, Payload, QueueOptions, SendError};
use mesh_wire::{Envelope, EnvelopeKind};
use rand_core::Rng;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;
use tokio::time::Instant;
use tracing::debug;

use super::{system, MeshNode, ToNodeKey};
use crate::core::{send_error, unbudgeted};
use std::sync::atomic::Ordering::Relaxed;

use super::relay;
use crate::{
    envelope, handler, typed, DeliveryError, Error, Message, Request, RequestError, SendFailed,
    SendReport,
};

/// A send to many nodes, this node itself or Node nodes: boxed, so that a send to one node
/// does not carry its state.
type BoxedSend<'a> = Pin<Box<dyn Future<Output = Result<SendReport, Error>> + Send + 'a>>;

/// A send that starts at its first poll, as an `async fn` would: `start` runs then and makes
/// the send's future (or fails). Unlike an `async fn`, which keeps its arguments beside the
/// future it awaits, the whole is the size of the larger of `start` and that future: a caller
/// with thousands of sends in flight holds one of these per message.
fn deferred<'a, F>(
    start: impl FnOnce() -> Result<F, Error> + 'a,
) -> impl Future<Output = Result<SendReport, Error>> + 'a
where
    F: Future<Output = Result<SendReport, Error>> + 'a,
{
    futures_util::future::lazy(move |_| match start() {
        Ok(send) => Either::Left(send),
        Err(e) => Either::Right(futures_util::future::ready(Err(e))),
    })
    .flatten()
}

/// Removes repeated nodes from `targets`, keeping the first of each in place.
fn dedupe(targets: &mut Vec<NodeKey>) {
    if targets.len() < 2 {
        return;
    }
    let mut seen = std::collections::HashSet::with_capacity(targets.len());
    targets.retain(|k| seen.insert(*k));
}

/// Per-call settings of [`MeshNode::send_with`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct SendOptions {
    /// Overrides the node's `relay_limit` for this call (the original's `options.limit`):
    /// `Some(0)` sends directly to every node, `Some(n)` through a relay tree with `n`
    /// branches.
    pub relay_limit: Option<usize>,
    /// Deliver in order with this node's other ordered messages to the same node.
    pub ordered: bool,
}

impl SendOptions {
    /// Sets [`relay_limit`](Self::relay_limit).
    pub fn relay_limit(mut self, limit: usize) -> Self {
        self.relay_limit = Some(limit);
        self
    }

    /// Sets [`ordered`](Self::ordered).
    pub fn ordered(mut self, ordered: bool) -> Self {
        self.ordered = ordered;
        self
    }
}

impl MeshNode {
    /// Sends the typed message `msg` reliably to every node of `nodes` (at `M::ID`), and
    /// resolves when each acknowledged it: `Ok` with the report only if every node got it,
    /// else [`Error::NotDelivered`] carrying the report. [`tell_each`](Self::tell_each) takes
    /// partial delivery as a result instead. This node, if listed, gets it through its own
    /// handler without the network.
    ///
    /// Like every send here, nothing is sent until the future is first polled; once it has
    /// been, dropping it no longer recalls the message, only the wait for its outcome.
    pub fn tell<'a, M: Message>(
        &'a self,
        nodes: impl IntoIterator<Item = impl ToNodeKey + 'a> + 'a,
        msg: &'a M,
    ) -> impl Future<Output = Result<SendReport, Error>> + 'a {
        self.tell_each(nodes, msg, SendOptions::default())
            .map(|r| r.and_then(all_delivered))
    }

    /// [`tell`](Self::tell) with per-call options, reporting each node's outcome (`Err` only
    /// when nothing could be sent: encoding, size, a stopped node).
    pub fn tell_each<'a, M: Message>(
        &'a self,
        nodes: impl IntoIterator<Item = impl ToNodeKey + 'a> + 'a,
        msg: &'a M,
        options: SendOptions,
    ) -> impl Future<Output = Result<SendReport, Error>> + 'a {
        deferred(move || {
            let data = typed::encode(M::CODEC, msg).map_err(Error::Encode)?;
            self.check_size(data.len())?;
            let fingerprint = const { typed::one_way_fingerprint::<M>() };
            Ok(
                self.send_split(M::ID, Some(fingerprint), nodes, data, options, |_| {
                    json_value(msg)
                }),
            )
        })
    }

    /// Asks `node` with the typed request `req` (at `R::ID`) and waits for its answer, up to
    /// the configured `request_timeout`. The answer's type is the request's: the compiler
    /// pairs them, and the receiving handler checks the type fingerprint, so a request of
    /// another type (or version) fails with [`RequestError::TypeMismatch`] instead of being
    /// decoded into wrong values.
    pub async fn ask<R: Request>(
        &self,
        node: impl ToNodeKey,
        req: &R,
    ) -> Result<R::Answer, RequestError> {
        self.ask_with(node, req, self.inner.config.request_timeout)
            .await
    }

    /// [`ask`](Self::ask) with its own timeout.
    pub async fn ask_with<R: Request>(
        &self,
        node: impl ToNodeKey,
        req: &R,
        timeout: Duration,
    ) -> Result<R::Answer, RequestError> {
        let node = node.node_key();
        #[cfg(feature = "node-compat")]
        if let Some(w) = self.node_wire_to(node) {
            return Box::pin(self.request_node(&w, R::ID, node, req, timeout, true)).await;
        }
        let data = typed::encode(R::CODEC, req).map_err(RequestError::Encode)?;
        self.check_size(data.len())
            .map_err(|e| RequestError::Encode(e.to_string()))?;
        let fingerprint = const { typed::request_fingerprint::<R>() };
        let answer = self
            .request_inner(R::ID, Some(fingerprint), node, data, timeout, true)
            .await
            .map_err(|e| e.sent_as(|| typed::describe(R::NAME, R::VERSION)))?;
        R::CODEC
            .decode(&answer)
            .map_err(|message| RequestError::BadResponse { node, message })
    }

    /// Sends `msg` reliably to untyped handler `id` on every node of `nodes`, and resolves when
    /// each acknowledged it: `Ok` only if every node got it, else [`Error::NotDelivered`]
    /// carrying the report ([`send_each`](Self::send_each) reports partial delivery instead).
    /// This node, if listed, gets it through its own handler without the network.
    ///
    /// With a `relay_limit` (config or [`send_with`](Self::send_with)) the message spreads
    /// through a relay tree; see [`SendOptions`].
    pub fn send<'a, M: Serialize + ?Sized>(
        &'a self,
        id: u16,
        nodes: impl IntoIterator<Item = impl ToNodeKey + 'a> + 'a,
        msg: &'a M,
    ) -> impl Future<Output = Result<SendReport, Error>> + 'a {
        self.send_with(id, nodes, msg, SendOptions::default())
    }

    /// [`send`](Self::send) with per-call options.
    pub fn send_with<'a, M: Serialize + ?Sized>(
        &'a self,
        id: u16,
        nodes: impl IntoIterator<Item = impl ToNodeKey + 'a> + 'a,
        msg: &'a M,
        options: SendOptions,
    ) -> impl Future<Output = Result<SendReport, Error>> + 'a {
        self.send_each(id, nodes, msg, options)
            .map(|r| r.and_then(all_delivered))
    }

    /// [`send_with`](Self::send_with) that takes partial delivery as a result: the report
    /// names every node, delivered or failed and why (`Err` only when nothing could be sent).
    pub fn send_each<'a, M: Serialize + ?Sized>(
        &'a self,
        id: u16,
        nodes: impl IntoIterator<Item = impl ToNodeKey + 'a> + 'a,
        msg: &'a M,
        options: SendOptions,
    ) -> impl Future<Output = Result<SendReport, Error>> + 'a {
        deferred(move || {
            let data = self.encode(msg)?;
            Ok(self.send_split(id, None, nodes, data, options, |_| json_value(msg)))
        })
    }

    /// [`send_each`](Self::send_each) of bytes already encoded.
    pub fn send_bytes<'a>(
        &'a self,
        id: u16,
        nodes: impl IntoIterator<Item = impl ToNodeKey + 'a> + 'a,
        data: Bytes,
        options: SendOptions,
    ) -> impl Future<Output = Result<SendReport, Error>> + 'a {
        deferred(move || {
            self.check_size(data.len())?;
            // Bytes go to a Node node as a buffer.
            let value = |data: &Bytes| Ok(buffer_value(data));
            Ok(self.send_split(id, None, nodes, data, options, value))
        })
    }

    /// Sends to our nodes among `nodes` and, in node-compat mode, to the Node nodes among them
    /// (`value` makes the message's JSON from its bytes, only if there are any).
    ///
    /// Starts at once (its callers run it through [`deferred`], so that is at their first
    /// poll): the common case, one node reached directly, is queued here, and the future
    /// returned holds only what waiting for its acknowledgement needs, under 100 bytes. A
    /// caller with thousands of sends in flight holds one such future per message, and its
    /// size is memory traffic on every message: a send's future was 688 bytes, and the
    /// one-way bench (1024 in flight) spent 15-30 % more CPU per message with it. Many
    /// nodes, this node itself and Node nodes take boxed paths.
    pub(super) fn send_split<'a>(
        &'a self,
        id: u16,
        fingerprint: Option<u64>,
        nodes: impl IntoIterator<Item = impl ToNodeKey>,
        data: Bytes,
        options: SendOptions,
        value: impl FnOnce(&Bytes) -> Result<Value, Error>,
    ) -> impl Future<Output = Result<SendReport, Error>> + Send + 'a {
        let mut nodes = nodes.into_iter().map(|n| n.node_key());
        let first = nodes.next();
        let second = nodes.next();
        if let (Some(k), None) = (first, second) {
            if !self.takes_node_wire(k) {
                if let Some(envelope) = self.direct(k, id, fingerprint, &data) {
                    // The common case: one node, directly; nothing is collected.
                    // A combinator, not an `async` block: that would keep the send's
                    // future twice (once captured, once awaited).
                    let sent = self.send_one(k, envelope, options);
                    return Either::Left(sent.map(move |r| {
                        let mut report = SendReport::default();
                        match r {
                            Ok(()) => report.delivered.push(k),
                            Err(e) => report.failed.push((k, e.into())),
                        }
                        Ok(report)
                    }));
                }
            }
        }
        let (nodes, node_peers) = self.split_targets(first.into_iter().chain(second).chain(nodes));
        let many: BoxedSend<'a> = if node_peers.is_empty() {
            Box::pin(self.send_inner(id, fingerprint, nodes, data, options))
        } else {
            let json = value(&data);
            let ours = self.send_inner(id, fingerprint, nodes, data, options);
            Box::pin(self.alongside_node_peers(id, node_peers, json, ours))
        };
        Either::Right(many)
    }

    /// The envelope of a one-way message to `k` alone, unless it is this node or this node is
    /// stopping. (One node never takes a relay tree: it has a branch for every node.)
    pub(super) fn direct(
        &self,
        k: NodeKey,
        id: u16,
        fingerprint: Option<u64>,
        data: &Bytes,
    ) -> Option<Payload> {
        if self.stopping() || k == self.inner.local() {
            return None;
        }
        let head = envelope::Head::new(EnvelopeKind::OneWay, id, 0).typed(fingerprint);
        Some(envelope::payload(head, data))
    }

    /// Queues `envelope` to `k` now (or, when its queue is full, at the first poll of the
    /// wait for room), and returns the wait for its acknowledgement: a small future, holding
    /// the queue's answer and nothing of the message.
    fn send_one(
        &self,
        k: NodeKey,
        envelope: Payload,
        options: SendOptions,
    ) -> impl Future<Output = Result<(), SendError>> + Send + '_ {
        let queued = self
            .inner
            .core
            .queue(k.socket_addr(), envelope, queue_options(options), None);
        async move {
            let queued = match queued {
                Ok(queued) => queued,
                Err(wait) => match wait.await {
                    Some(queued) => queued,
                    None => unreachable!("no deadline to pass"),
                },
            };
            match queued {
                // Outside tokio's cooperative budget: see `unbudgeted`.
                Ok(Some(rx)) => unbudgeted(rx).await.unwrap_or(Err(SendError::Closed)),
                Ok(None) => unreachable!("a tracked message has an outcome"),
                Err(e) => Err(send_error(e)),
            }
        }
    }

    async fn send_inner(
        &self,
        id: u16,
        fingerprint: Option<u64>,
        mut targets: Vec<NodeKey>,
        data: Bytes,
        options: SendOptions,
    ) -> Result<SendReport, Error> {
        if self.stopping() {
            return Err(Error::Stopped);
        }
        dedupe(&mut targets);
        let mut report = SendReport::default();
        let local = self.inner.local();
        if targets.contains(&local) {
            targets.retain(|k| *k != local);
            match self.deliver_local(id, fingerprint, data.clone(), true, None, local) {
                Ok(()) => report.delivered.push(local),
                Err(e) => report.failed.push((local, e)),
            }
        }
        let limit = options.relay_limit.unwrap_or(self.inner.config.relay_limit);
        if limit == 0 || targets.len() <= limit {
            let head = envelope::Head::new(EnvelopeKind::OneWay, id, 0).typed(fingerprint);
            let envelope = envelope::payload(head, &data);
            let send = |k: NodeKey, envelope: Payload| async move {
                (k, self.send_one(k, envelope, options).await)
            };
            let mut record = |(k, r): (NodeKey, Result<(), SendError>)| match r {
                Ok(()) => report.delivered.push(k),
                Err(e) => report.failed.push((k, e.into())),
            };
            match targets[..] {
                [] => {}
                // The common case, without the machinery of waiting on many.
                [k] => record(send(k, envelope).await),
                _ => join_all(targets.iter().map(|&k| send(k, envelope.clone())))
                    .await
                    .into_iter()
                    .for_each(record),
            }
        } else {
            let fanout = self.inner.rng.lock().next_u64();
            let deadline = Instant::now() + self.inner.config.relay_timeout;
            let message = relay::Relayed {
                handler: id,
                fingerprint,
                data,
            };
            // Boxed: a relay tree's future is large, and a direct send should not carry it.
            let sub =
                Box::pin(self.fan_out(message, targets, limit, local, fanout, deadline)).await;
            report.delivered.extend(sub.delivered);
            report.failed.extend(sub.failed);
        }
        Ok(report)
    }

    /// Runs this node's handler for a message addressed to itself (or relayed to it), in a
    /// task of its own.
    pub(crate) fn deliver_local(
        &self,
        id: u16,
        fingerprint: Option<u64>,
        data: Bytes,
        reliable: bool,
        relayed_by: Option<NodeKey>,
        sender: NodeKey,
    ) -> Result<(), DeliveryError> {
        let counters = &self.inner.counters;
        let h = match self.handler(id, fingerprint) {
            Ok(Some(h)) => h,
            Ok(None) => {
                counters.no_handler.fetch_add(1, Relaxed);
                return Err(DeliveryError::NoHandler);
            }
            Err(f) => {
                counters.type_mismatch.fetch_add(1, Relaxed);
                return Err(DeliveryError::TypeMismatch(f.message));
            }
        };
        let mut ctx = self.context(sender, reliable, id);
        ctx.relayed_by = relayed_by;
        let inner = self.inner.clone();
        inner
            .inflight
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        tokio::spawn(async move {
            if let Err(f) = handler::run(h, data, ctx).await {
                debug!(handler = id, error = %f.message, "one-way handler failed");
            }
            inner.finish_one();
        });
        Ok(())
    }

    /// Sends `msg` to handler `id` on each node as one unreliable datagram: it may be lost,
    /// and nothing says so. Fails if the message does not fit in a datagram. Returns to how
    /// many nodes it was handed (the socket, or this node's own handler); a node the
    /// transport refused (too many peers, closing) is not counted.
    #[must_use = "the count says to how many nodes the datagram went out"]
    pub fn usend<M: Serialize + ?Sized>(
        &self,
        id: u16,
        nodes: impl IntoIterator<Item = impl ToNodeKey>,
        msg: &M,
    ) -> Result<usize, Error> {
        if self.stopping() {
            return Err(Error::Stopped);
        }
        let data = self.encode(msg)?;
        let envelope = envelope::bytes(envelope::Head::new(EnvelopeKind::OneWay, id, 0), &data);
        let transport = &self.inner.core.transport;
        let limit = transport.max_unreliable_size();
        if envelope.len() > limit {
            return Err(Error::TooLarge {
                size: data.len(),
                limit: limit - Envelope::header_len(EnvelopeKind::OneWay, false),
            });
        }
        let mut sent = 0;
        // The message as JSON, made once, for the Node nodes among `nodes` (node-compat mode).
        #[cfg(feature = "node-compat")]
        let mut as_json = None;
        for n in nodes {
            let k = n.node_key();
            #[cfg(feature = "node-compat")]
            if let Some(w) = self.node_wire_to(k) {
                let value = match &as_json {
                    Some(v) => Value::clone(v),
                    None => as_json.insert(json_value(msg)?).clone(),
                };
                match w.usend(k, id, value) {
                    Ok(()) => sent += 1,
                    Err(e) => debug!(node = %k, error = %e, "usend refused"),
                }
                continue;
            }
            let r = if k == self.inner.local() {
                self.deliver_local(id, None, data.clone(), false, None, k)
                    .map_err(|e| e.to_string())
            } else {
                transport
                    .send_unreliable(k.socket_addr(), envelope.clone())
                    .map_err(|e| e.to_string())
            };
            match r {
                Ok(()) => sent += 1,
                Err(e) => debug!(node = %k, error = %e, "usend refused"),
            }
        }
        Ok(sent)
    }

    /// Asks handler `id` on `node` and waits for its answer, up to the configured
    /// `request_timeout`. A node without the handler answers at once with
    /// [`RequestError::NoHandler`]; one that is down fails the request as soon as the
    /// transport sees it.
    pub async fn request<M, R>(
        &self,
        id: u16,
        node: impl ToNodeKey,
        msg: &M,
    ) -> Result<R, RequestError>
    where
        M: Serialize + ?Sized,
        R: DeserializeOwned,
    {
        self.request_with(id, node, msg, self.inner.config.request_timeout)
            .await
    }

    /// [`request`](Self::request) with its own timeout.
    pub async fn request_with<M, R>(
        &self,
        id: u16,
        node: impl ToNodeKey,
        msg: &M,
        timeout: Duration,
    ) -> Result<R, RequestError>
    where
        M: Serialize + ?Sized,
        R: DeserializeOwned,
    {
        self.typed_request(id, node.node_key(), msg, timeout, true)
            .await
    }

    async fn typed_request<M, R>(
        &self,
        id: u16,
        node: NodeKey,
        msg: &M,
        timeout: Duration,
        reliable: bool,
    ) -> Result<R, RequestError>
    where
        M: Serialize + ?Sized,
        R: DeserializeOwned,
    {
        #[cfg(feature = "node-compat")]
        if let Some(w) = self.node_wire_to(node) {
            return Box::pin(self.request_node(&w, id, node, msg, timeout, reliable)).await;
        }
        let data = self.encode_request(msg)?;
        let answer = self
            .request_bytes(id, node, data, timeout, reliable)
            .await?;
        decode_answer(node, &answer)
    }

    /// Asks every node and returns each one's answer or error, in the order given.
    pub async fn request_all<M, R>(
        &self,
        id: u16,
        nodes: impl IntoIterator<Item = impl ToNodeKey>,
        msg: &M,
    ) -> Vec<(NodeKey, Result<R, RequestError>)>
    where
        M: Serialize + ?Sized,
        R: DeserializeOwned,
    {
        let keys: Vec<NodeKey> = nodes.into_iter().map(|n| n.node_key()).collect();
        let data = match self.encode_request(msg) {
            Ok(d) => d,
            Err(e) => return keys.into_iter().map(|k| (k, Err(e.clone()))).collect(),
        };
        let timeout = self.inner.config.request_timeout;
        let asks = keys.iter().map(|&k| {
            let data = data.clone();
            async move {
                #[cfg(feature = "node-compat")]
                if let Some(w) = self.node_wire_to(k) {
                    return (
                        k,
                        Box::pin(self.request_node(&w, id, k, msg, timeout, true)).await,
                    );
                }
                let r = self.request_bytes(id, k, data, timeout, true).await;
                (k, r.and_then(|b| decode_answer(k, &b)))
            }
        });
        join_all(asks).await
    }

    /// Asks every node and returns the first answer (the original's `send` with a callback
    /// to several nodes); fails only if every node fails, with the last error.
    pub async fn request_any<M, R>(
        &self,
        id: u16,
        nodes: impl IntoIterator<Item = impl ToNodeKey>,
        msg: &M,
    ) -> Result<(NodeKey, R), RequestError>
    where
        M: Serialize + ?Sized,
        R: DeserializeOwned,
    {
        let data = self.encode_request(msg)?;
        let timeout = self.inner.config.request_timeout;
        let mut asks: FuturesUnordered<_> = nodes
            .into_iter()
            .map(|n| {
                let k = n.node_key();
                let data = data.clone();
                async move {
                    #[cfg(feature = "node-compat")]
                    if let Some(w) = self.node_wire_to(k) {
                        return (
                            k,
                            Box::pin(self.request_node(&w, id, k, msg, timeout, true)).await,
                        );
                    }
                    let r = self.request_bytes(id, k, data, timeout, true).await;
                    (k, r.and_then(|b| decode_answer::<R>(k, &b)))
                }
            })
            .collect();
        let mut last = RequestError::NoNodes;
        while let Some((k, r)) = asks.next().await {
            match r {
                Ok(v) => return Ok((k, v)),
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    /// Asks handler `id` on `node` by one unreliable datagram; the answer comes back the same
    /// way (or reliably if it does not fit in one). Either may be lost: then the request times
    /// out after `timeout`.
    pub async fn urequest<M, R>(
        &self,
        id: u16,
        node: impl ToNodeKey,
        msg: &M,
        timeout: Duration,
    ) -> Result<R, RequestError>
    where
        M: Serialize + ?Sized,
        R: DeserializeOwned,
    {
        self.typed_request(id, node.node_key(), msg, timeout, false)
            .await
    }

    /// Round-trip time to a node's system ping handler (any mesh-link node answers).
    pub async fn ping(
        &self,
        node: impl ToNodeKey,
        timeout: Duration,
    ) -> Result<Duration, RequestError> {
        let start = Instant::now();
        let node = node.node_key();
        #[cfg(feature = "node-compat")]
        if let Some(w) = self.node_wire_to(node) {
            // A Node node answers the original's raw ping.
            return match Box::pin(w.raw_ping(node, timeout)).await {
                true => Ok(start.elapsed()),
                false => Err(RequestError::Timeout {
                    handler: system::PING,
                    node,
                    after: timeout,
                }),
            };
        }
        self.request_bytes(system::PING, node, Bytes::new(), timeout, true)
            .await?;
        Ok(start.elapsed())
    }

    /// Asks a node's system echo handler to send `data` back.
    pub async fn echo(
        &self,
        node: impl ToNodeKey,
        data: Bytes,
        timeout: Duration,
    ) -> Result<Bytes, RequestError> {
        self.request_bytes(system::ECHO, node.node_key(), data, timeout, true)
            .await
    }

    /// The request machinery on bytes, for untyped handlers: a request to this node itself
    /// runs its handler in this task, without the network.
    pub async fn request_bytes(
        &self,
        id: u16,
        node: NodeKey,
        data: Bytes,
        timeout: Duration,
        reliable: bool,
    ) -> Result<Bytes, RequestError> {
        #[cfg(feature = "node-compat")]
        if let Some(w) = self.node_wire_to(node) {
            // Bytes go to a Node node as a buffer; its answer comes back as its bytes, or
            // as JSON text.
            let data = mesh_wire::compat::buffer_value(&data);
            return match Box::pin(w.request(node, id, data, timeout, reliable)).await? {
                mesh_wire::compat::Unpacked::Empty => Ok(Bytes::new()),
                mesh_wire::compat::Unpacked::Bytes(b) => Ok(Bytes::from(b)),
                mesh_wire::compat::Unpacked::Json(v) => {
                    Ok(Bytes::from(serde_json::to_vec(&v).unwrap_or_default()))
                }
                e @ mesh_wire::compat::Unpacked::Error(_) => {
                    crate::compat::decode_answer::<()>(node, id, e).map(|()| Bytes::new())
                }
            };
        }
        self.request_inner(id, None, node, data, timeout, reliable)
            .await
            .map_err(|e| e.sent_as(|| "untyped".to_owned()))
    }

    async fn request_inner(
        &self,
        id: u16,
        fingerprint: Option<u64>,
        node: NodeKey,
        data: Bytes,
        timeout: Duration,
        reliable: bool,
    ) -> Result<Bytes, RequestError> {
        if self.stopping() {
            return Err(RequestError::Stopped);
        }
        if node == self.inner.local() && !mesh_wire::is_system_handler(id) {
            // Boxed: a handler's run is large, and a request over the network should not
            // carry it.
            return Box::pin(self.request_local(id, fingerprint, data, timeout, reliable)).await;
        }
        self.inner
            .core
            .request(id, fingerprint, node, data, timeout, reliable)
            .await
    }

    /// A request to this node's own handler, without the network.
    async fn request_local(
        &self,
        id: u16,
        fingerprint: Option<u64>,
        data: Bytes,
        timeout: Duration,
        reliable: bool,
    ) -> Result<Bytes, RequestError> {
        let node = self.inner.local();
        let h = match self.handler(id, fingerprint) {
            Ok(Some(h)) => h,
            Ok(None) => return Err(RequestError::NoHandler { handler: id, node }),
            Err(f) => return Err(RequestError::from_remote(node, id, f.code, &f.message)),
        };
        let ctx = self.context(node, reliable, id);
        let run = handler::run(h, data, ctx);
        match tokio::time::timeout(timeout, run).await {
            Ok(Ok(answer)) => Ok(answer.unwrap_or_default()),
            Ok(Err(f)) => Err(RequestError::from_remote(node, id, f.code, &f.message)),
            Err(_) => Err(RequestError::Timeout {
                handler: id,
                node,
                after: timeout,
            }),
        }
    }

    /// Whether `k` is a Node node (node-compat mode), reached over the original's wire.
    pub(super) fn takes_node_wire(&self, k: NodeKey) -> bool {
        #[cfg(feature = "node-compat")]
        return self.inner.node_wire.get().is_some() && self.is_node_peer(k);
        #[cfg(not(feature = "node-compat"))]
        {
            let _ = k;
            false
        }
    }

    /// The targets that take our wire, and (node-compat mode) the Node nodes among them.
    fn split_targets(
        &self,
        nodes: impl IntoIterator<Item = impl ToNodeKey>,
    ) -> (Vec<NodeKey>, Vec<NodeKey>) {
        let nodes: Vec<NodeKey> = nodes.into_iter().map(|n| n.node_key()).collect();
        #[cfg(feature = "node-compat")]
        return self.split_node_peers(nodes);
        #[cfg(not(feature = "node-compat"))]
        (nodes, Vec::new())
    }

    /// Runs `ours` (the send to our nodes) and, at the same time, sends `json` to the Node
    /// nodes (node-compat mode); one report of both. Nothing is sent if `json` is an error.
    async fn alongside_node_peers(
        &self,
        id: u16,
        node_peers: Vec<NodeKey>,
        json: Result<Value, Error>,
        ours: impl Future<Output = Result<SendReport, Error>>,
    ) -> Result<SendReport, Error> {
        let value = json?;
        #[cfg(feature = "node-compat")]
        {
            let mut theirs = SendReport::default();
            let theirs_sent = self.send_node_peers(id, node_peers, value, &mut theirs);
            let (ours, ()) = futures_util::future::join(ours, theirs_sent).await;
            let mut report = ours?;
            report.delivered.extend(theirs.delivered);
            report.failed.extend(theirs.failed);
            Ok(report)
        }
        #[cfg(not(feature = "node-compat"))]
        {
            // Without node-compat there are no Node nodes to send to.
            let _ = (id, node_peers, value);
            ours.await
        }
    }

    fn encode<M: Serialize + ?Sized>(&self, msg: &M) -> Result<Bytes, Error> {
        let v = mesh_wire::codec::encode(msg)?;
        self.check_size(v.len())?;
        Ok(Bytes::from(v))
    }

    fn encode_request<M: Serialize + ?Sized>(&self, msg: &M) -> Result<Bytes, RequestError> {
        self.encode(msg)
            .map_err(|e| RequestError::Encode(e.to_string()))
    }

    pub(super) fn check_size(&self, size: usize) -> Result<(), Error> {
        let limit = self.inner.config.max_message_size;
        if size > limit {
            return Err(Error::TooLarge { size, limit });
        }
        Ok(())
    }
}

/// How a one-way message with `options` is queued: ordered on channel 0, or unordered.
pub(super) fn queue_options(options: SendOptions) -> QueueOptions {
    QueueOptions::from(if options.ordered {
        Delivery::Ordered { channel: 0 }
    } else {
        Delivery::Unordered
    })
}

/// A message as JSON, for a Node node.
pub(super) fn json_value<M: Serialize + ?Sized>(msg: &M) -> Result<Value, Error> {
    serde_json::to_value(msg).map_err(|e| Error::Encode(e.to_string()))
}

/// Bytes as the original's buffer, for a Node node.
pub(super) fn buffer_value(data: &[u8]) -> Value {
    #[cfg(feature = "node-compat")]
    return mesh_wire::compat::buffer_value(data);
    #[cfg(not(feature = "node-compat"))]
    {
        let _ = data;
        Value::Null
    }
}

/// `Ok` if every node got the message, else the report as [`Error::NotDelivered`].
fn all_delivered(report: SendReport) -> Result<SendReport, Error> {
    if report.is_ok() {
        Ok(report)
    } else {
        Err(SendFailed(report).into())
    }
}

fn decode_answer<R: DeserializeOwned>(node: NodeKey, answer: &[u8]) -> Result<R, RequestError> {
    mesh_wire::codec::decode(answer).map_err(|e| RequestError::BadResponse {
        node,
        message: e.to_string(),
    })
}
