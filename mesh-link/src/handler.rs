//! Handlers: what runs when a message arrives, and what it is told about it.

use std::fmt;
use std::future::{ready, Future};
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;

use bytes::Bytes;
use futures_util::future::{BoxFuture, Either};
use futures_util::FutureExt;
use mesh_discovery::NodeKey;
use mesh_wire::ErrorCode;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::{HandlerError, MeshNode, Message, Request};

/// Why a handler produced no answer: sent back to a requester as an error response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Failure {
    pub(crate) code: ErrorCode,
    pub(crate) message: String,
}

impl Failure {
    pub(crate) fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}

/// What a handler's run comes to: maybe an answer, or why there is none.
pub(crate) type Outcome = Result<Option<Bytes>, Failure>;

/// A handler with its types erased: bytes in, maybe bytes out.
pub(crate) type HandlerFn = Arc<dyn Handle>;

/// How a handler with its types erased runs.
pub(crate) trait Handle: Send + Sync {
    /// A run, as a future of its own.
    fn call(&self, data: Bytes, ctx: Context) -> BoxFuture<'static, Outcome>;

    /// A run, polled once here (with the no-op waker): its outcome if it finished, or the rest
    /// of it. See [`start`].
    fn start(&self, data: Bytes, ctx: Context) -> Started;
}

/// A handler made of a function that returns its run's future. A run is polled first in an
/// allocation the handler keeps for the next run when this one finishes at once (most do): a
/// handled message costs no allocation for its handler's future (before, a box allocated and
/// freed per message: about 190 instructions, a tenth of receiving a small one-way message).
struct FnHandler<F, Fut> {
    f: F,
    /// The allocation of the last run that finished at once, empty.
    spare: parking_lot::Mutex<Option<Pin<Box<Option<Fut>>>>>,
}

/// Erases a handler's types (see [`FnHandler`]).
fn handler<F, Fut>(f: F) -> HandlerFn
where
    F: Fn(Bytes, Context) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Outcome> + Send + 'static,
{
    Arc::new(FnHandler {
        f,
        spare: parking_lot::Mutex::new(None),
    })
}

impl<F, Fut> Handle for FnHandler<F, Fut>
where
    F: Fn(Bytes, Context) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Outcome> + Send + 'static,
{
    fn call(&self, data: Bytes, ctx: Context) -> BoxFuture<'static, Outcome> {
        (self.f)(data, ctx).boxed()
    }

    fn start(&self, data: Bytes, ctx: Context) -> Started {
        let spare = self.spare.lock().take();
        let mut slot = spare.unwrap_or_else(|| Box::pin(None));
        slot.as_mut().set(Some((self.f)(data, ctx)));
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        let polled = slot.as_mut().as_pin_mut().map(|run| run.poll(&mut cx));
        match polled {
            Some(Poll::Ready(r)) => {
                slot.as_mut().set(None);
                *self.spare.lock() = Some(slot);
                Started::Done(r)
            }
            // (`None` cannot be: the run was just put there.)
            _ => Started::Waiting(Box::pin(Slot(slot))),
        }
    }
}

/// A run that waited, in the allocation it started in.
struct Slot<Fut>(Pin<Box<Option<Fut>>>);

impl<Fut: Future<Output = Outcome>> Future for Slot<Fut> {
    type Output = Outcome;

    fn poll(self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<Outcome> {
        match self.get_mut().0.as_mut().as_pin_mut() {
            Some(run) => run.poll(cx),
            // Never: a slot waits only with the run it started, and is dropped when done.
            None => Poll::Pending,
        }
    }
}

/// A handler registered for a typed message: what it serves, and how.
#[derive(Clone)]
pub(crate) struct Typed {
    pub(crate) fingerprint: u64,
    pub(crate) name: &'static str,
    pub(crate) version: u32,
    pub(crate) run: HandlerFn,
}

/// What is registered under one handler id: an untyped handler (the numeric API), or typed
/// handlers, one per message type (version) served, chosen by fingerprint.
#[derive(Clone)]
pub(crate) enum Entry {
    Untyped(HandlerFn),
    Typed(Vec<Typed>),
}

impl Entry {
    /// The handler for a message that carries `fingerprint` (`None`: untyped), or the
    /// mismatch to answer with.
    pub(crate) fn pick(&self, fingerprint: Option<u64>) -> Result<&HandlerFn, Failure> {
        match (self, fingerprint) {
            (Entry::Untyped(h), None) => Ok(h),
            (Entry::Untyped(_), Some(_)) => Err(Failure::new(
                ErrorCode::TYPE_MISMATCH,
                "untyped handler (a typed message cannot be checked against it)",
            )),
            (Entry::Typed(served), f) => served
                .iter()
                .find(|t| Some(t.fingerprint) == f)
                .map(|t| &t.run)
                .ok_or_else(|| Failure::new(ErrorCode::TYPE_MISMATCH, self.served())),
        }
    }

    /// The handler for a message from a Node node (node-compat mode), which carries no
    /// fingerprint: the untyped one, or the newest version of the typed ones.
    #[cfg(feature = "node-compat")]
    pub(crate) fn pick_any(&self) -> HandlerFn {
        match self {
            Entry::Untyped(h) => h.clone(),
            Entry::Typed(served) => served
                .iter()
                .max_by_key(|t| t.version)
                .map(|t| t.run.clone())
                .unwrap_or_else(|| handler(|_, _| ready(Ok(None)))),
        }
    }

    /// What this entry serves, as a mismatch names it.
    fn served(&self) -> String {
        match self {
            Entry::Untyped(_) => "untyped handler".to_owned(),
            Entry::Typed(served) => served
                .iter()
                .map(|t| crate::typed::describe(t.name, t.version))
                .collect::<Vec<_>>()
                .join(", "),
        }
    }
}

/// What a handler is told about the message it handles.
#[derive(Clone)]
pub struct Context {
    pub(crate) node: MeshNode,
    pub(crate) sender: NodeKey,
    pub(crate) relayed_by: Option<NodeKey>,
    pub(crate) local: bool,
    pub(crate) reliable: bool,
    pub(crate) handler: u16,
    /// The message came from a Node node (node-compat mode): its data is JSON, and so must
    /// the answer be.
    pub(crate) json: bool,
}

impl Context {
    /// The node that sent the message (for a relayed message, the node it started from).
    pub fn sender(&self) -> NodeKey {
        self.sender
    }

    /// The sender's address.
    pub fn address(&self) -> std::net::IpAddr {
        self.sender.address
    }

    /// The sender's port.
    pub fn port(&self) -> u16 {
        self.sender.port
    }

    /// The sender's node type, if it is a live member of the mesh.
    pub fn node_type(&self) -> Option<String> {
        self.node.inner.membership.node_type_of(self.sender)
    }

    /// Whether the message came from this node itself (delivered without the network).
    pub fn is_local(&self) -> bool {
        self.local
    }

    /// Whether the message came reliably (`send`, `request`) rather than by `usend`.
    pub fn is_reliable(&self) -> bool {
        self.reliable
    }

    /// The node that relayed the message here, if it came through a relay tree.
    pub fn relayed_by(&self) -> Option<NodeKey> {
        self.relayed_by
    }

    /// The handler id the message was sent to.
    pub fn handler(&self) -> u16 {
        self.handler
    }

    /// The node the handler runs on, to send further messages from the handler.
    pub fn node(&self) -> &MeshNode {
        &self.node
    }
}

impl fmt::Debug for Context {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Context")
            .field("sender", &self.sender)
            .field("relayed_by", &self.relayed_by)
            .field("local", &self.local)
            .field("reliable", &self.reliable)
            .field("handler", &self.handler)
            .finish()
    }
}

/// A one-way handler of typed messages; its answer to a request is `()`.
pub(crate) fn typed<M, F, Fut>(f: F) -> HandlerFn
where
    M: DeserializeOwned + Send + 'static,
    F: Fn(M, Context) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    handler(move |data: Bytes, ctx: Context| {
        let msg = match decode::<M>(&data, ctx.json) {
            Ok(m) => m,
            Err(e) => return refused(e),
        };
        // Called here, not in the future: it holds `f`'s future, not `f` (no reference count
        // per message).
        let run = f(msg, ctx);
        Either::Right(async move {
            run.await;
            Ok(None)
        })
    })
}

/// A request handler of typed messages with a typed answer.
pub(crate) fn typed_request<M, R, F, Fut>(f: F) -> HandlerFn
where
    M: DeserializeOwned + Send + 'static,
    R: Serialize + Send + 'static,
    F: Fn(M, Context) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<R, HandlerError>> + Send + 'static,
{
    handler(move |data: Bytes, ctx: Context| {
        let json = ctx.json;
        let msg = match decode::<M>(&data, json) {
            Ok(m) => m,
            Err(e) => return refused(e),
        };
        let run = f(msg, ctx);
        Either::Right(async move {
            let reply = run
                .await
                .map_err(|e| Failure::new(ErrorCode::HANDLER_FAILED, e.message()))?;
            let encoded = if json {
                serde_json::to_vec(&reply).map_err(|e| e.to_string())
            } else {
                mesh_wire::codec::encode(&reply).map_err(|e| e.to_string())
            };
            let bytes = encoded.map_err(|e| {
                Failure::new(
                    ErrorCode::HANDLER_FAILED,
                    format!("answer not encodable: {e}"),
                )
            })?;
            Ok(Some(Bytes::from(bytes)))
        })
    })
}

/// A handler of raw bytes.
pub(crate) fn raw<F, Fut>(f: F) -> HandlerFn
where
    F: Fn(Bytes, Context) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Option<Bytes>, HandlerError>> + Send + 'static,
{
    handler(move |data: Bytes, ctx: Context| {
        let run = f(data, ctx);
        async move {
            run.await
                .map_err(|e| Failure::new(ErrorCode::HANDLER_FAILED, e.message()))
        }
    })
}

/// A handler of typed one-way messages `M`.
pub(crate) fn listen<M, F, Fut>(f: F) -> Typed
where
    M: Message,
    F: Fn(M, Context) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let run: HandlerFn = handler(move |data: Bytes, ctx: Context| {
        let msg: M = match decode_typed(M::CODEC, &data, ctx.json) {
            Ok(m) => m,
            Err(e) => return refused(e),
        };
        let run = f(msg, ctx);
        Either::Right(async move {
            run.await;
            Ok(None)
        })
    });
    Typed {
        fingerprint: const { crate::typed::one_way_fingerprint::<M>() },
        name: M::NAME,
        version: M::VERSION,
        run,
    }
}

/// A handler of typed requests `R`, answering `R::Answer` in `R`'s codec.
pub(crate) fn serve<R, F, Fut>(f: F) -> Typed
where
    R: Request,
    F: Fn(R, Context) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<R::Answer, HandlerError>> + Send + 'static,
{
    let run: HandlerFn = handler(move |data: Bytes, ctx: Context| {
        let json = ctx.json;
        let msg: R = match decode_typed(R::CODEC, &data, json) {
            Ok(m) => m,
            Err(e) => return refused(e),
        };
        let run = f(msg, ctx);
        Either::Right(async move {
            let answer = run
                .await
                .map_err(|e| Failure::new(ErrorCode::HANDLER_FAILED, e.message()))?;
            let encoded = if json {
                serde_json::to_vec(&answer)
                    .map(Bytes::from)
                    .map_err(|e| e.to_string())
            } else {
                crate::typed::encode(R::CODEC, &answer)
            };
            let bytes = encoded.map_err(|e| {
                Failure::new(
                    ErrorCode::HANDLER_FAILED,
                    format!("answer not encodable: {e}"),
                )
            })?;
            Ok(Some(bytes))
        })
    });
    Typed {
        fingerprint: const { crate::typed::request_fingerprint::<R>() },
        name: R::NAME,
        version: R::VERSION,
        run,
    }
}

/// Decodes a message: bincode from our nodes, JSON from Node nodes (node-compat mode).
fn decode<M: DeserializeOwned>(data: &[u8], json: bool) -> Result<M, Failure> {
    let r = if json {
        serde_json::from_slice(data).map_err(|e| e.to_string())
    } else {
        mesh_wire::codec::decode(data).map_err(|e| e.to_string())
    };
    r.map_err(|e| Failure::new(ErrorCode::BAD_REQUEST, e))
}

/// A typed message in `codec`, or JSON from a Node node (node-compat mode).
fn decode_typed<M: DeserializeOwned>(
    codec: crate::Codec,
    data: &[u8],
    json: bool,
) -> Result<M, Failure> {
    if json {
        decode(data, true)
    } else {
        codec
            .decode(data)
            .map_err(|e| Failure::new(ErrorCode::BAD_REQUEST, e))
    }
}

/// The run of a handler refused before it started (its message unreadable).
fn refused<R>(f: Failure) -> Either<std::future::Ready<Outcome>, R> {
    Either::Left(ready(Err(f)))
}

/// Runs a handler, turning a panic into a failure: the node keeps serving.
pub(crate) async fn run(h: HandlerFn, data: Bytes, ctx: Context) -> Result<Option<Bytes>, Failure> {
    let id = ctx.handler;
    match AssertUnwindSafe(async move { h.call(data, ctx).await })
        .catch_unwind()
        .await
    {
        Ok(r) => r,
        Err(panic) => Err(panicked(id, &*panic)),
    }
}

/// A handler's run that waited: the rest of it.
pub(crate) type Running = BoxFuture<'static, Outcome>;

/// A handler's run, started by [`start`].
pub(crate) enum Started {
    /// It finished without waiting (most do): its result.
    Done(Result<Option<Bytes>, Failure>),
    /// It waits: [`finish`] runs the rest.
    Waiting(Running),
}

/// Starts a handler and runs it until it first waits, on the caller's task: a handler that
/// does not wait costs no task, and no allocation (its future runs in one the handler keeps
/// from run to run). A panic is a failure. A run that waits registered the no-op waker: poll
/// it again at once (a future pushed into a `FuturesUnordered` is), which registers the real
/// one.
pub(crate) fn start(h: &HandlerFn, data: Bytes, ctx: Context) -> Started {
    let id = ctx.handler;
    let r = std::panic::catch_unwind(AssertUnwindSafe(|| h.start(data, ctx)));
    r.unwrap_or_else(|panic| Started::Done(Err(panicked(id, &*panic))))
}

/// Runs the rest of a handler that [`start`] left waiting; a panic is a failure.
pub(crate) async fn finish(run: Running, id: u16) -> Result<Option<Bytes>, Failure> {
    match AssertUnwindSafe(run).catch_unwind().await {
        Ok(r) => r,
        Err(panic) => Err(panicked(id, &*panic)),
    }
}

/// A handler's panic, logged, as the failure its requester is told.
fn panicked(id: u16, panic: &(dyn std::any::Any + Send)) -> Failure {
    let what = panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a non-string payload".to_owned());
    tracing::error!(handler = id, panic = %what, "handler panicked");
    Failure::new(
        ErrorCode::HANDLER_FAILED,
        format!("handler panicked: {what}"),
    )
}
