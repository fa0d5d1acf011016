//! Replicated shared objects for mesh-link, as a sans-IO state machine.
//!
//! A shared object lives on the node it was created on, its **owner**, which orders every
//! change. Other nodes hold **replicas** and learn changes as numbered deltas. This crate holds
//! the state and the rules ([`Objects`]); it does no I/O. The `mesh-link` facade carries its
//! [`Message`]s over the transport and exposes `SharedObject` handles. The protocol is in
//! `PROTOCOL.md`.
//!
//! What it guarantees:
//! - changes travel as intents (`inc` carries its delta; `add`/`del` one key), so concurrent
//!   increments never overwrite each other;
//! - a number never leaves `[min, max]` anywhere: the owner checks each change against its
//!   current value and refuses (never clamps) one that would;
//! - replicas apply versioned changes in order, exactly once, and resync with a snapshot when
//!   a change goes missing;
//! - each node reports one `Update` per applied change and one `Removed` per object.
//!
//! ```
//! use std::time::{Duration, Instant};
//! use mesh_shared::{Event, Message, Objects, Op, Output, Prepared, Properties, Reply};
//!
//! let (a, b) = ("127.0.0.1:1".parse().unwrap(), "127.0.0.1:2".parse().unwrap());
//! let (mut owner, mut replica) = (Objects::new(a, Default::default()), Objects::new(b, Default::default()));
//! let now = Instant::now();
//!
//! // b creates an object owned by a.
//! let props = Properties::new().number("hp", 10.0, 0.0..=10.0);
//! let (mid, ask) = replica.create(now, 42, props, Duration::from_secs(60), a).unwrap();
//! let ask = ask.unwrap();
//! let reply = owner.handle(now, b, ask.clone()).unwrap();
//! replica.reply(now, mid, &ask, reply).unwrap();
//!
//! // b asks for -3: the owner applies it as version 1, and b applies the answer.
//! let Prepared::Ask(ask) = replica.prepare(now, mid, Op::Inc { prop: "hp".into(), delta: -3.0 }).unwrap()
//!     else { unreachable!() };
//! let reply = owner.handle(now, b, ask.clone()).unwrap();
//! assert_eq!(replica.reply(now, mid, &ask, reply), Ok(1));
//! assert_eq!(replica.value(mid, "hp"), owner.value(mid, "hp"));
//!
//! // +5 would pass the max: refused, nothing changes.
//! let Prepared::Ask(ask) = replica.prepare(now, mid, Op::Inc { prop: "hp".into(), delta: 5.0 }).unwrap()
//!     else { unreachable!() };
//! let reply = owner.handle(now, b, ask.clone()).unwrap();
//! assert!(replica.reply(now, mid, &ask, reply).is_err());
//! assert_eq!(owner.value(mid, "hp"), Some(serde_json::json!(7.0)));
//! ```

#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod model;
mod objects;
mod wire;

pub use model::{Change, Kind, Op, Properties, Property, Rejected};
pub use objects::{Config, Event, Objects, Output, Prepared};
pub use wire::{BadMid, Json, Message, Mid, RemoveReason, Reply};

/// The README's examples, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
