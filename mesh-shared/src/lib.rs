//! Replicated shared objects for mesh-link (work in progress).
//!
//! This crate will own the state of shared objects and the rules that change them: an owner
//! orders every change, replicas apply versioned deltas and resync on gaps. It does no I/O;
//! the `mesh-link` facade wires it to the transport. Not implemented yet.

#![forbid(unsafe_code)]
#![warn(missing_docs)]
