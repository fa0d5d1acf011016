//! Errors and reports.

use std::fmt;
use std::io;
use std::time::Duration;

use mesh_discovery::{DiscoveryError, NodeKey, RegistryError};
use mesh_rudp::{SendError, TransportError};
use mesh_wire::{CodecError, ErrorCode};
use serde::{Deserialize, Serialize};
use thiserror::Error;

/// Errors of starting, configuring and using a [`MeshNode`](crate::MeshNode).
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum Error {
    /// The configuration is invalid; the message names the setting.
    #[error("configuration: {0}")]
    Config(String),
    /// The named network interface does not exist or has no IPv4 address (with `strict`).
    #[error("network interface {0:?} not found or has no IPv4 address")]
    NoInterface(String),
    /// No port of the range could be bound.
    #[error("could not bind {address} on ports {first}..={last}: {source}")]
    Bind {
        /// The address.
        address: std::net::IpAddr,
        /// First port tried.
        first: u16,
        /// Last port tried.
        last: u16,
        /// The last error.
        source: io::Error,
    },
    /// The transport failed to start.
    #[error("transport: {0}")]
    Transport(#[from] TransportError),
    /// The registry could not be reached or is misconfigured.
    #[error(transparent)]
    Registry(#[from] RegistryError),
    /// A value could not be stored in this node's record.
    #[error(transparent)]
    Value(#[from] DiscoveryError),
    /// A message could not be encoded.
    #[error("encoding: {0}")]
    Codec(#[from] CodecError),
    /// A typed message could not be encoded by its codec.
    #[error("encoding: {0}")]
    Encode(String),
    /// The message is larger than the limit (`max_message_size`, or one datagram for
    /// `usend`).
    #[error("message of {size} bytes exceeds the limit of {limit}")]
    TooLarge {
        /// The message's encoded size.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// The handler id is already registered.
    #[error("handler {0} is already registered")]
    DuplicateHandler(u16),
    /// The handler id is in the range reserved for the system (65001..=65535).
    #[error("handler {0} is in the reserved system range 65001..=65535")]
    ReservedHandler(u16),
    /// The node is stopping or stopped.
    #[error("the node is stopped")]
    Stopped,
    /// A reliable message did not reach every node it was sent to (from the forms of `send`
    /// and `tell` that want all; the `_each` forms report instead). The report says who got
    /// it and why the others did not.
    #[error(transparent)]
    NotDelivered(#[from] SendFailed),
}

/// Why one node did not get a message sent with [`MeshNode::send`](crate::MeshNode::send).
#[derive(Debug, Clone, PartialEq, Eq, Error, Serialize, Deserialize)]
#[non_exhaustive]
pub enum DeliveryError {
    /// The node did not acknowledge it (it is down, unreachable, or stopped meanwhile).
    #[error("not acknowledged: {0}")]
    Unreachable(String),
    /// The transport refused it (too large, too many peers).
    #[error("refused: {0}")]
    Refused(String),
    /// A relayed message names a node that is not a live member of the mesh; relays only
    /// reach members.
    #[error("not a live member of the mesh")]
    NotMember,
    /// The node has no handler for the message (reported by relays and local delivery).
    #[error("no handler for the message")]
    NoHandler,
    /// The node's handler does not take the message's type (reported by relays and local
    /// delivery); what it serves.
    #[error("the handler does not take this type: it serves {0}")]
    TypeMismatch(String),
    /// The relay that carried it did not confirm in time; the node may or may not have it.
    #[error("relay did not confirm in time")]
    Timeout,
    /// This node stopped before the message was sent.
    #[error("the sending node stopped")]
    Stopped,
}

impl From<SendError> for DeliveryError {
    fn from(e: SendError) -> Self {
        match e {
            SendError::TooLarge { .. } | SendError::TooManyPeers => Self::Refused(e.to_string()),
            SendError::Closed => Self::Stopped,
            _ => Self::Unreachable(e.to_string()),
        }
    }
}

/// What a send achieved: every node is either delivered or failed, never left out.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
#[must_use = "a send report says which nodes did not get the message"]
pub struct SendReport {
    /// Nodes that acknowledged the message.
    pub delivered: Vec<NodeKey>,
    /// Nodes that did not, and why.
    pub failed: Vec<(NodeKey, DeliveryError)>,
}

impl SendReport {
    /// Whether every node got the message.
    pub fn is_ok(&self) -> bool {
        self.failed.is_empty()
    }

    /// The nodes that did not get it, and why.
    pub fn failures(&self) -> impl Iterator<Item = &(NodeKey, DeliveryError)> {
        self.failed.iter()
    }

    /// `Ok(())` if every node got the message, else the report as an error.
    pub fn into_result(self) -> Result<(), SendFailed> {
        if self.failed.is_empty() {
            Ok(())
        } else {
            Err(SendFailed(self))
        }
    }
}

/// A [`SendReport`] with failures, as an error.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("{} of {} nodes did not get the message (first: {})",
    .0.failed.len(), .0.failed.len() + .0.delivered.len(),
    .0.failed.first().map(|(k, e)| format!("{k}: {e}")).unwrap_or_default())]
pub struct SendFailed(pub SendReport);

/// Why a request got no answer.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum RequestError {
    /// No answer within the timeout.
    #[error("request to handler {handler} on {node} timed out after {after:?}")]
    Timeout {
        /// The handler asked.
        handler: u16,
        /// The node asked.
        node: NodeKey,
        /// The timeout.
        after: Duration,
    },
    /// The node has no handler with this id.
    #[error("node {node} has no handler {handler}")]
    NoHandler {
        /// The handler asked.
        handler: u16,
        /// The node asked.
        node: NodeKey,
    },
    /// The handler failed (returned an error or panicked); its message.
    #[error("handler failed on {node}: {message}")]
    Handler {
        /// The node asked.
        node: NodeKey,
        /// What the handler said.
        message: String,
    },
    /// The node could not decode the request as the handler's message type.
    #[error("node {node} could not decode the request: {message}")]
    BadRequest {
        /// The node asked.
        node: NodeKey,
        /// The decoding error.
        message: String,
    },
    /// The node is too busy to run the handler now.
    #[error("node {0} is overloaded")]
    Overloaded(NodeKey),
    /// The node is shutting down.
    #[error("node {0} is shutting down")]
    ShuttingDown(NodeKey),
    /// The request was not delivered (the node is down, or the transport refused it).
    #[error("request to {node} not delivered: {error}")]
    NotDelivered {
        /// The node asked.
        node: NodeKey,
        /// Why.
        error: DeliveryError,
    },
    /// The answer could not be decoded as the expected type.
    #[error("answer from {node} could not be decoded: {message}")]
    BadResponse {
        /// The node asked.
        node: NodeKey,
        /// The decoding error.
        message: String,
    },
    /// The node's handler does not serve the request's type: another message type under the
    /// same id, another schema version, or a typed request to an untyped handler (or the
    /// reverse). The handler did not run.
    #[error("node {node} handler {handler} does not take {sent}: it serves {served}")]
    TypeMismatch {
        /// The node asked.
        node: NodeKey,
        /// The handler asked.
        handler: u16,
        /// The type sent (`name vN`), or "untyped".
        sent: String,
        /// What the handler serves, as it says.
        served: String,
    },
    /// The request could not be encoded.
    #[error("request could not be encoded: {0}")]
    Encode(String),
    /// No node was given, or none could be asked.
    #[error("no node to ask")]
    NoNodes,
    /// Too many requests are waiting for answers on this node.
    #[error("too many requests in flight")]
    TooManyRequests,
    /// This node is stopping or stopped.
    #[error("the node is stopped")]
    Stopped,
}

impl RequestError {
    /// Maps an error response from `node` to an error. A type mismatch is reported with what
    /// was sent as `"?"`: [`sent_as`](Self::sent_as) fills it in.
    pub(crate) fn from_remote(node: NodeKey, handler: u16, code: ErrorCode, message: &str) -> Self {
        match code {
            ErrorCode::TYPE_MISMATCH => Self::TypeMismatch {
                node,
                handler,
                sent: "?".to_owned(),
                served: message.to_owned(),
            },
            ErrorCode::NO_HANDLER => Self::NoHandler { handler, node },
            ErrorCode::BAD_REQUEST => Self::BadRequest {
                node,
                message: message.to_owned(),
            },
            ErrorCode::OVERLOADED => Self::Overloaded(node),
            ErrorCode::SHUTTING_DOWN => Self::ShuttingDown(node),
            _ => Self::Handler {
                node,
                message: message.to_owned(),
            },
        }
    }
}

impl RequestError {
    /// Names the type a request was sent as in a type mismatch.
    pub(crate) fn sent_as(self, what: impl FnOnce() -> String) -> Self {
        match self {
            Self::TypeMismatch {
                node,
                handler,
                served,
                ..
            } => Self::TypeMismatch {
                node,
                handler,
                sent: what(),
                served,
            },
            other => other,
        }
    }
}

/// An error returned by a handler: its message goes back to the requester as
/// [`RequestError::Handler`]. Build one with [`HandlerError::new`], or with `?` on any
/// standard error.
pub struct HandlerError {
    message: String,
}

impl HandlerError {
    /// An error with this message.
    pub fn new(message: impl fmt::Display) -> Self {
        Self {
            message: message.to_string(),
        }
    }

    /// The message.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl<E: std::error::Error + Send + Sync + 'static> From<E> for HandlerError {
    fn from(e: E) -> Self {
        Self::new(e)
    }
}

impl fmt::Debug for HandlerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("HandlerError").field(&self.message).finish()
    }
}

impl fmt::Display for HandlerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

/// What [`MeshNode::stop`](crate::MeshNode::stop) could not finish.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
#[must_use = "a stop report says what was in flight and did not finish"]
pub struct StopReport {
    /// Reliable messages still unacknowledged when the close timeout ran out (their senders
    /// got an error too): the peer and the transport's message id.
    pub undelivered: Vec<(NodeKey, u64)>,
    /// Requests still waiting for an answer; each failed with [`RequestError::Stopped`].
    pub abandoned_requests: usize,
    /// Handlers still running when the drain timeout ran out; they were cancelled.
    pub cancelled_handlers: usize,
}

impl StopReport {
    /// Whether everything in flight was finished.
    pub fn is_clean(&self) -> bool {
        self.undelivered.is_empty() && self.abandoned_requests == 0 && self.cancelled_handlers == 0
    }
}
