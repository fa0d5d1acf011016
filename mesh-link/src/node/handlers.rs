//! Registering the handlers that run when messages arrive: typed ones (by message type) and
//! untyped ones (by id), and finding the one a message is for.

use bytes::Bytes;
use mesh_discovery::NodeKey;
use serde::de::DeserializeOwned;
use serde::Serialize;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::Waker;

use parking_lot::{Mutex, RwLock, RwLockReadGuard};

use super::MeshNode;
use crate::handler::{self, Context, Entry, Failure, HandlerFn, Typed};
use crate::{Error, HandlerError, Message, Request};

pub(crate) type Table = rustc_hash::FxHashMap<u16, Entry>;

/// The node's handlers, with a count of changes so that the receive loop can keep a copy and
/// look a message's handler up without a lock or a reference count (see [`Cache`]).
pub(crate) struct Handlers {
    table: RwLock<Table>,
    /// Bumped under the write lock by every change.
    version: AtomicU64,
    /// The receive loop's waker: a change takes it and wakes the loop, so that its copy lets
    /// go of a removed handler (and whatever that holds) at once, not at the next message.
    copier: Mutex<Option<Waker>>,
    /// Whether `copier` holds the loop's waker; set and cleared under its lock, read without
    /// it (the loop's every poll).
    armed: AtomicBool,
}

impl Handlers {
    pub(crate) fn new(table: Table) -> Self {
        Self {
            table: RwLock::new(table),
            version: AtomicU64::new(0),
            copier: Mutex::new(None),
            armed: AtomicBool::new(false),
        }
    }

    /// Changes the table.
    pub(crate) fn edit<R>(&self, f: impl FnOnce(&mut Table) -> R) -> R {
        let r = {
            let mut table = self.table.write();
            let r = f(&mut table);
            self.version.fetch_add(1, Ordering::Release);
            r
        };
        let copier = {
            let mut slot = self.copier.lock();
            self.armed.store(false, Ordering::Release);
            slot.take()
        };
        if let Some(w) = copier {
            w.wake();
        }
        r
    }

    /// The table, to read.
    pub(crate) fn read(&self) -> RwLockReadGuard<'_, Table> {
        self.table.read()
    }

    /// The handler for a message to `id` carrying `fingerprint` (`None`: untyped): `Ok(None)`
    /// if there is none, `Err` for a type it does not serve.
    pub(crate) fn get(
        &self,
        id: u16,
        fingerprint: Option<u64>,
    ) -> Result<Option<HandlerFn>, Failure> {
        lookup(&self.read(), id, fingerprint).map(|h| h.cloned())
    }
}

/// The handler in `table` for a message to `id` carrying `fingerprint` (`None`: untyped):
/// `Ok(None)` if there is none, `Err` for a type it does not serve.
fn lookup(table: &Table, id: u16, fingerprint: Option<u64>) -> Result<Option<&HandlerFn>, Failure> {
    table.get(&id).map(|e| e.pick(fingerprint)).transpose()
}

/// The receive loop's copy of the handler table, taken again when a change is seen: a lookup
/// costs one atomic load instead of a lock and a reference count each way.
#[derive(Default)]
pub(crate) struct Cache {
    /// The version copied, `None` before the first copy.
    version: Option<u64>,
    table: Table,
    /// The waker this copy last left in the table's `copier`.
    registered: Option<Waker>,
}

impl Cache {
    /// Takes the table again if it changed since the copy, and asks to be woken (`cx`) at the
    /// next change. The receive loop calls it on every wake-up; while its registration stands
    /// (no change has taken it) and its waker is the same, that is two atomic loads.
    pub(crate) fn refresh(&mut self, handlers: &Handlers, cx: &std::task::Context<'_>) {
        // A change clears `armed` before it wakes us, so a poll that its wake-up causes
        // sees it cleared, and registers again.
        let standing = handlers.armed.load(Ordering::Acquire)
            && self
                .registered
                .as_ref()
                .is_some_and(|w| w.will_wake(cx.waker()));
        if !standing {
            let waker = cx.waker().clone();
            let mut slot = handlers.copier.lock();
            *slot = Some(waker.clone());
            handlers.armed.store(true, Ordering::Release);
            drop(slot);
            self.registered = Some(waker);
        }
        self.refresh_now(handlers);
    }

    fn refresh_now(&mut self, handlers: &Handlers) {
        let now = handlers.version.load(Ordering::Acquire);
        if self.version != Some(now) {
            let table = handlers.read();
            // Read under the lock: the copy and its version agree.
            self.version = Some(handlers.version.load(Ordering::Acquire));
            self.table.clone_from(&table);
        }
    }

    /// [`Handlers::get`], borrowed from the copy (refreshed first if the table changed).
    pub(crate) fn get(
        &mut self,
        handlers: &Handlers,
        id: u16,
        fingerprint: Option<u64>,
    ) -> Result<Option<&HandlerFn>, Failure> {
        self.refresh_now(handlers);
        lookup(&self.table, id, fingerprint)
    }
}

/// A handler to register: untyped (the numeric API) or typed.
pub(crate) enum Registration {
    Untyped(HandlerFn),
    Typed(Typed),
}

/// Adds a handler for `id` to `table`: one untyped handler per id, or typed handlers of
/// distinct types (versions) under one id, never both.
pub(crate) fn add(table: &mut Table, id: u16, r: Registration) -> Result<(), Error> {
    check_id(id)?;
    match (table.get_mut(&id), r) {
        (None, Registration::Untyped(h)) => {
            table.insert(id, Entry::Untyped(h));
        }
        (None, Registration::Typed(t)) => {
            table.insert(id, Entry::Typed(vec![t]));
        }
        (Some(Entry::Typed(served)), Registration::Typed(t))
            if served.iter().all(|s| s.fingerprint != t.fingerprint) =>
        {
            served.push(t);
        }
        (Some(_), _) => return Err(Error::DuplicateHandler(id)),
    }
    Ok(())
}

/// Refuses an id in the system range.
pub(crate) fn check_id(id: u16) -> Result<(), Error> {
    if mesh_wire::is_system_handler(id) {
        Err(Error::ReservedHandler(id))
    } else {
        Ok(())
    }
}

/// The table of handlers registered before start.
pub(super) fn table(handlers: Vec<(u16, Registration)>) -> Result<Table, Error> {
    let mut table = Table::default();
    for (id, r) in handlers {
        add(&mut table, id, r)?;
    }
    Ok(table)
}

impl MeshNode {
    fn register(&self, id: u16, h: HandlerFn) -> Result<(), Error> {
        self.inner
            .handlers
            .edit(|t| add(t, id, Registration::Untyped(h)))
    }

    /// Registers the handler of typed requests `R` (at `R::ID`): `f` gets each request whose
    /// type fingerprint is `R`'s and returns its answer. Several versions of one message can be
    /// served under one id, each by its own handler; any other type, and untyped requests, are
    /// answered [`RequestError::TypeMismatch`](crate::RequestError::TypeMismatch). A panic is
    /// answered as a handler failure, and the node keeps serving.
    pub fn serve<R, F, Fut>(&self, f: F) -> Result<(), Error>
    where
        R: Request,
        F: Fn(R, Context) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = Result<R::Answer, HandlerError>> + Send + 'static,
    {
        let t = handler::serve(f);
        self.inner
            .handlers
            .edit(|table| add(table, R::ID, Registration::Typed(t)))
    }

    /// Registers the handler of typed one-way messages `M` (at `M::ID`); messages of any other
    /// type sent there are dropped and counted in [`NodeStats::type_mismatch`](super::NodeStats).
    pub fn listen<M, F, Fut>(&self, f: F) -> Result<(), Error>
    where
        M: Message,
        F: Fn(M, Context) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        let t = handler::listen(f);
        self.inner
            .handlers
            .edit(|table| add(table, M::ID, Registration::Typed(t)))
    }

    /// Registers a one-way handler: `f` gets each message of type `M` sent to `id`. A
    /// request to it is answered with `()` once `f` returns. Ids 65001..=65535 are reserved,
    /// and an id can be registered once.
    ///
    /// Handlers run on the node's receive task, which also drives the socket: long
    /// computation without an `.await` belongs in `tokio::task::spawn_blocking`.
    pub fn on<M, F, Fut>(&self, id: u16, f: F) -> Result<(), Error>
    where
        M: DeserializeOwned + Send + 'static,
        F: Fn(M, Context) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        self.register(id, handler::typed(f))
    }

    /// Registers a request handler: its `Ok` value is the answer, its `Err` reaches the
    /// requester as [`RequestError::Handler`](crate::RequestError::Handler). A panic is
    /// answered the same way, and the node keeps serving.
    pub fn on_request<M, R, F, Fut>(&self, id: u16, f: F) -> Result<(), Error>
    where
        M: DeserializeOwned + Send + 'static,
        R: Serialize + Send + 'static,
        F: Fn(M, Context) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = Result<R, HandlerError>> + Send + 'static,
    {
        self.register(id, handler::typed_request(f))
    }

    /// Registers a handler of raw bytes; `Ok(Some(bytes))` is the answer to a request.
    pub fn on_raw<F, Fut>(&self, id: u16, f: F) -> Result<(), Error>
    where
        F: Fn(Bytes, Context) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = Result<Option<Bytes>, HandlerError>> + Send + 'static,
    {
        self.register(id, handler::raw(f))
    }

    /// Removes a handler; true if there was one.
    pub fn remove_handler(&self, id: u16) -> bool {
        self.inner.handlers.edit(|t| t.remove(&id).is_some())
    }

    /// The handler for a message to `id` carrying `fingerprint` (`None`: untyped): `Ok(None)`
    /// if there is none, `Err` for a type it does not serve.
    pub(crate) fn handler(
        &self,
        id: u16,
        fingerprint: Option<u64>,
    ) -> Result<Option<HandlerFn>, Failure> {
        self.inner.handlers.get(id, fingerprint)
    }

    /// What a handler is told about a message from `sender`.
    pub(crate) fn context(&self, sender: NodeKey, reliable: bool, handler: u16) -> Context {
        Context {
            node: self.clone(),
            sender,
            relayed_by: None,
            local: sender == self.inner.local(),
            reliable,
            handler,
            json: false,
        }
    }
}
