//! Membership for mesh-link (work in progress).
//!
//! This crate will own discovery: each node publishes its record (address, port, type, values,
//! backups) and keeps a live view of the others, with join/leave/update events, behind a
//! `Registry` trait with a Redis backend (fred) and an in-memory one. Not implemented yet.

#![forbid(unsafe_code)]
#![warn(missing_docs)]
