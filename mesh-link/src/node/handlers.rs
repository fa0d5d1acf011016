//! Registering the handlers that run when messages arrive.

use bytes::Bytes;
use mesh_discovery::NodeKey;
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::MeshNode;
use crate::handler::{self, Context, HandlerFn};
use crate::{Error, HandlerError};

type Table = rustc_hash::FxHashMap<u16, HandlerFn>;

/// Refuses an id in the system range.
pub(crate) fn check_id(id: u16) -> Result<(), Error> {
    if mesh_wire::is_system_handler(id) {
        Err(Error::ReservedHandler(id))
    } else {
        Ok(())
    }
}

/// The table of handlers registered before start; each id once, none in the system range.
pub(super) fn table(handlers: Vec<(u16, HandlerFn)>) -> Result<Table, Error> {
    let mut table = Table::default();
    for (id, h) in handlers {
        check_id(id)?;
        if table.insert(id, h).is_some() {
            return Err(Error::DuplicateHandler(id));
        }
    }
    Ok(table)
}

impl MeshNode {
    fn register(&self, id: u16, h: HandlerFn) -> Result<(), Error> {
        check_id(id)?;
        let mut t = self.inner.handlers.write();
        if t.contains_key(&id) {
            return Err(Error::DuplicateHandler(id));
        }
        t.insert(id, h);
        Ok(())
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
        self.inner.handlers.write().remove(&id).is_some()
    }

    /// The handler registered for `id`.
    pub(crate) fn handler(&self, id: u16) -> Option<HandlerFn> {
        self.inner.handlers.read().get(&id).cloned()
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
        }
    }
}
