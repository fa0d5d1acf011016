//! mesh-link: server processes find each other through Redis and talk directly over reliable
//! UDP — one-way messages, request/response, unreliable datagrams, fan-out to many nodes, and
//! [shared objects](shared) that stay in sync across nodes.
//!
//! A [`MeshNode`] announces itself in a registry (Redis in any topology, or in memory), keeps a
//! live view of the other nodes, and runs handlers for what they send it. Messages go node to
//! node over `mesh-rudp`; Redis is only the phone book, and the mesh keeps working while it
//! is down.
//!
//! ```
//! use mesh_link::{Context, HandlerError, MeshNode, Registry};
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Serialize, Deserialize)]
//! struct Hello { message: String }
//! mesh_link::message!(Hello = 1000); // one-way, handler id 1000
//!
//! #[derive(Serialize, Deserialize)]
//! struct Echo { message: String }
//! mesh_link::request!(Echo = 2000 => String); // a request and its answer's type
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let registry = Registry::memory(); // or Registry::redis("redis://127.0.0.1:6379")?
//! let start = || MeshNode::builder()
//!     .registry(registry.clone())
//!     .node_type("game")
//!     .bind("127.0.0.1:0")
//!     .listen(|msg: Hello, ctx: Context| async move {
//!         tracing::info!(from = %ctx.sender(), "{}", msg.message);
//!     })
//!     .serve(|req: Echo, _ctx: Context| async move {
//!         Ok::<_, HandlerError>(req.message + "!!!")
//!     })
//!     .start();
//! let a = start().await?;
//! let b = start().await?;
//! a.wait_for(|n| n.nodes_by_type("game").len() == 2).await;
//!
//! let games = a.nodes_by_type("game");
//! a.tell(&games, &Hello { message: "hi".into() }).await?; // Err unless every node got it
//!
//! let reply: String = a.ask(b.local_key(), &Echo { message: "ping".into() }).await?;
//! assert_eq!(reply, "ping!!!");
//!
//! assert!(b.stop().await.is_clean());
//! let _ = a.stop().await;
//! # Ok(()) }
//! ```
//!
//! Typed messages first ([`typed`], [`Message`], [`Request`]): the compiler pairs a request
//! with its answer, and a fingerprint on the wire keeps a handler from running with another
//! type's bytes. The numeric API (`on`, `on_request`, `send`, `request`, ...) stays for
//! dynamic use and raw bytes.
//!
//! The pieces, each usable alone: `mesh-wire` (bytes), `mesh-rudp` (the transport),
//! `mesh-discovery` (membership). The `mesh-link` binary runs a node, lists nodes, and pings.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod backend;
#[cfg(feature = "node-compat")]
pub mod compat;
mod config;
mod core;
mod envelope;
mod error;
#[doc(hidden)]
pub mod fuzzing;
mod handler;
mod node;
mod pending;
pub mod report;
mod service;
pub mod shared;
pub mod typed;

pub use config::{Config, Registry, Secret};
pub use error::{
    DeliveryError, Error, HandlerError, RequestError, SendFailed, SendReport, StopReport,
};
pub use handler::Context;
pub use node::{
    system, Builder, MeshNode, NodeStats, Outbox, OutboxFailure, OutboxReport, SendOptions,
    ToNodeKey, OUTBOX_DETAILS, OUTBOX_WINDOW,
};
pub use typed::{Codec, Message, Request};

pub use bytes::Bytes;
#[cfg(feature = "redis")]
pub use mesh_discovery::RedisTopology;
pub use mesh_discovery::{DiscoveryStats, MembershipEvent, NodeKey, NodeRecord};
pub use mesh_rudp::{EndpointStats, PeerStats};

/// The workspace README's examples, compiled as doctests so they stay true.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
pub struct ReadmeDoctests;
