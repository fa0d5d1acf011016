//! mesh-link: server processes find each other through Redis and talk directly over reliable
//! UDP (work in progress).
//!
//! This crate will be the facade users depend on: `MeshNode` with handlers, `send`, `request`,
//! `usend`, fan-out, membership queries and shared objects, plus the `mesh-link` command-line
//! tool. It composes `mesh-rudp`, `mesh-discovery` and `mesh-shared`. Not implemented yet; the
//! wire format it will speak is in `mesh-wire`.

#![forbid(unsafe_code)]
#![warn(missing_docs)]
