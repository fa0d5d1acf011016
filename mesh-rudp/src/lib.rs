//! Reliable UDP for mesh-link (work in progress).
//!
//! This crate will own the transport: a sans-IO protocol core (`Endpoint`: sequence numbers,
//! selective acknowledgements, one retransmission timer per peer, fragmentation with bounded
//! reassembly, congestion control, liveness) and a thin tokio driver that owns the socket and
//! the clock. It builds on `mesh-wire` for every byte it sends. Not implemented yet.

#![forbid(unsafe_code)]
#![warn(missing_docs)]
