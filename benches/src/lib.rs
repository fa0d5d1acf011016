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

/// The original Node.js mesh-link 0.13.6, run by `benches/node-original/harness.js`: for
/// `mesh-bench node-compare` and the wire-compatibility tests.
pub mod node_original {
    use std::path::PathBuf;
    use std::process::{Child, Command, Stdio};

    fn dir() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("node-original")
    }

    /// What the `compat-test-server` stand-in answers where the original's suite asks for its
    /// shared objects.
    pub const NO_SHARED_OBJECTS: &str =
        "the original's shared objects are not part of mesh-link's node-compat mode";

    /// Checks that `node` and `npm` exist and installs `mesh-link@0.13.6` (and mocha 5.2.0,
    /// which runs its own test suite) for the harness if they are not there yet; says what is missing otherwise. One install at a time in this
    /// process (tests run in parallel, and two `npm install`s in one directory collide).
    pub fn install() -> Result<(), String> {
        static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());
        let _guard = ONE_AT_A_TIME
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let ok = |cmd: &str| {
            Command::new(cmd)
                .arg("--version")
                .output()
                .is_ok_and(|o| o.status.success())
        };
        for cmd in ["node", "npm"] {
            if !ok(cmd) {
                return Err(format!(
                    "`{cmd}` is not installed (Debian: apt-get install nodejs npm)"
                ));
            }
        }
        if ["mesh-link", "mocha"]
            .iter()
            .all(|m| dir().join("node_modules").join(m).exists())
        {
            return Ok(());
        }
        let out = Command::new("npm")
            .args(["install", "--no-audit", "--no-fund"])
            .current_dir(dir())
            .output()
            .map_err(|e| format!("npm install: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "npm install (mesh-link@0.13.6) in {} failed: {}",
                dir().display(),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        Ok(())
    }

    /// The path of a script in `benches/node-original` (run it with `node`).
    pub fn node_script(name: &str) -> PathBuf {
        dir().join(name)
    }

    /// Runs `harness.js` with `args` (stdout piped: it answers in JSON lines).
    pub fn node_harness(args: &[String]) -> Child {
        Command::new("node")
            .arg(node_script("harness.js"))
            .args(args)
            .current_dir(dir())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("node runs")
    }

    /// One JSON line of the harness (`null` if it printed something else).
    pub fn read_json_line(child: &mut Child) -> serde_json::Value {
        use std::io::BufRead;
        let mut line = String::new();
        let out = child.stdout.as_mut().expect("piped");
        std::io::BufReader::new(out)
            .read_line(&mut line)
            .expect("a line");
        serde_json::from_str(&line).unwrap_or(serde_json::Value::Null)
    }
}
