//! mesh-link end to end: real sockets, a real `redis-server` per test where Redis is needed,
//! and the `mesh-link` binary for the multi-process tests.

mod cli;
mod common;
mod liveness;
mod messaging;
mod node_compat;
mod operators;
mod outage;
mod relay;
mod scenarios;
mod shared;
mod typed;
