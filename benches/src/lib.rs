//! Benchmarks for mesh-link.
//!
//! The criterion benches in `benches/` are the micro view, one per layer, each measuring a
//! baseline (a `memcpy`, a raw socket) in the same run and reporting the ratio. The
//! `mesh-bench` comparison binary (the macro view) will live here too.
//!
//! ```text
//! cargo bench -p mesh-benches --bench wire
//! ```

#![forbid(unsafe_code)]
#![warn(missing_docs)]
