//! Benchmarks for mesh-link.
//!
//! The criterion benches in `benches/` are the micro view, one per layer, each measuring a
//! baseline (a `memcpy`, a raw socket) in the same run and reporting the ratio. The
//! `mesh-bench` binary is the macro view: mesh-link against raw UDP, TCP, HTTP/1.1 (hyper),
//! QUIC (quinn) and the original Node.js mesh-link, interleaved in rounds in one process
//! (`cargo run --release -p mesh-benches --bin mesh-bench -- all`).
//!
//! ```text
//! cargo bench -p mesh-benches --bench wire
//! cargo bench -p mesh-benches --bench rudp
//! ```
//!
//! This library holds what the benches share: reading criterion's estimates back to print
//! the ratio of each measurement to its baseline.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

use std::path::PathBuf;

/// The median of a criterion benchmark of this run, in nanoseconds, read from
/// `target/criterion/<group>/<id>/new/estimates.json`.
pub fn median_ns(group: &str, id: &str) -> Option<f64> {
    let dir = criterion_dir()?;
    // Criterion nests `function/parameter` ids as directories.
    let path = dir.join(group).join(id).join("new/estimates.json");
    let text = std::fs::read_to_string(path).ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    v["median"]["point_estimate"].as_f64()
}

fn criterion_dir() -> Option<PathBuf> {
    if let Ok(d) = std::env::var("CRITERION_HOME") {
        return Some(PathBuf::from(d));
    }
    let target = std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"));
    Some(target.join("criterion"))
}

/// Nanoseconds in the unit that suits them.
fn human(ns: f64) -> String {
    if ns < 1e3 {
        format!("{ns:.1} ns")
    } else if ns < 1e6 {
        format!("{:.1} µs", ns / 1e3)
    } else {
        format!("{:.1} ms", ns / 1e6)
    }
}

/// Lines comparing each `(candidate, baseline)` pair of one group: medians and their ratio.
pub fn ratio_lines(group: &str, pairs: &[(&str, &str)]) -> Vec<String> {
    pairs
        .iter()
        .map(|(c, b)| match (median_ns(group, c), median_ns(group, b)) {
            (Some(x), Some(y)) => format!(
                "{group}: {c} {} vs {b} {}: ratio {:.2}",
                human(x),
                human(y),
                x / y
            ),
            _ => format!("{group}: {c} vs {b}: no estimate (bench filtered out?)"),
        })
        .collect()
}
