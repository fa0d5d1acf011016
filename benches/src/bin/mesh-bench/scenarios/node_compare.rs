//! Against the original Node.js mesh-link 0.13.6.

#[allow(
    unused_imports,
    reason = "each scenario takes what it needs from one list"
)]
use super::super::prelude::*;

/// Runs `harness.js` of `benches/node-original` with `args`.
pub(crate) fn node_harness(args: &[String]) -> std::process::Child {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("node-original");
    std::process::Command::new("node")
        .arg(dir.join("harness.js"))
        .args(args)
        .current_dir(&dir)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit())
        .spawn()
        .expect("node runs")
}

pub(crate) fn read_json_line(child: &mut std::process::Child) -> serde_json::Value {
    use std::io::BufRead;
    let mut line = String::new();
    let out = child.stdout.as_mut().expect("piped");
    std::io::BufReader::new(out)
        .read_line(&mut line)
        .expect("a line");
    serde_json::from_str(&line).unwrap_or(serde_json::Value::Null)
}

/// Whether `node` and `npm` exist, installing the harness's dependencies if needed.
pub(crate) fn node_ready() -> bool {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("node-original");
    let ok = |cmd: &str| {
        std::process::Command::new(cmd)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if !ok("node") || !ok("npm") {
        eprintln!("node-compare: `node` and `npm` are needed; skipped");
        return false;
    }
    if !dir.join("node_modules/mesh-link").exists() {
        eprintln!(
            "node-compare: npm install (mesh-link@0.13.6) in {}",
            dir.display()
        );
        let s = std::process::Command::new("npm")
            .args(["install", "--no-audit", "--no-fund"])
            .current_dir(&dir)
            .status();
        if !s.is_ok_and(|s| s.success()) {
            eprintln!("node-compare: npm install failed; skipped");
            return false;
        }
    }
    true
}

/// `node-compare`: the same `rtt`, `oneway` and `bulk` against two Node mesh-link processes and
/// two Rust nodes, all on one Redis, in one run.
pub(crate) async fn node_compare(args: &Args) -> Vec<Row> {
    use mesh_discovery::testing::{free_port, RedisServer};
    if !node_ready() {
        return Vec::new();
    }
    let redis = RedisServer::start();
    let redis_port = redis.url().rsplit(':').next().unwrap_or("6379").to_owned();
    let secs = (args.duration / 6).max(2);
    let mut rows = Vec::new();
    for scenario in ["rtt", "oneway", "bulk"] {
        // The original: a server process and a client process.
        let sport = free_port();
        let mut srv = node_harness(&[
            "server".into(),
            redis_port.clone(),
            "nodecmp".into(),
            sport.to_string(),
        ]);
        let ready = read_json_line(&mut srv);
        let sport = ready["port"]
            .as_u64()
            .unwrap_or(u64::from(sport))
            .to_string();
        let mut cli = node_harness(&[
            "client".into(),
            redis_port.clone(),
            "nodecmp".into(),
            free_port().to_string(),
            sport,
            scenario.into(),
            secs.to_string(),
        ]);
        let result = tokio::task::spawn_blocking(move || {
            let r = read_json_line(&mut cli);
            let _ = cli.wait();
            r
        })
        .await
        .expect("client");
        // Ask the server for its counts (SIGTERM makes it print them).
        tokio::time::sleep(Duration::from_millis(500)).await;
        let pid = nix::unistd::Pid::from_raw(srv.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let counts = tokio::task::spawn_blocking(move || {
            let c = read_json_line(&mut srv);
            let _ = srv.wait();
            c
        })
        .await
        .expect("server");
        let node_secs = result["seconds"].as_f64().unwrap_or(secs as f64);
        let mut node_row = Row::new(&format!("vs node {scenario}"), "Node mesh-link 0.13.6");
        match scenario {
            "rtt" => {
                let lat: Vec<Duration> = result["latencies_us"]
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .filter_map(|v| v.as_f64())
                            .map(|us| Duration::from_secs_f64(us / 1e6))
                            .collect()
                    })
                    .unwrap_or_default();
                node_row = node_row.latencies(lat, Duration::from_secs_f64(node_secs));
            }
            "oneway" => {
                let got = counts["oneway"].as_u64().unwrap_or(0);
                node_row.per_sec = Some(got as f64 / node_secs);
                node_row.lost = Some(result["ops"].as_u64().unwrap_or(0).saturating_sub(got));
                node_row.samples = got as usize;
            }
            _ => {
                let bytes = counts["bulkBytes"].as_u64().unwrap_or(0);
                node_row.mb_per_sec = Some(bytes as f64 / 1e6 / node_secs);
                node_row.samples = result["ops"].as_u64().unwrap_or(0) as usize;
            }
        }
        // mesh-link, the same scenario for the same time, as two processes too.
        let rust_row = tokio::task::spawn_blocking(move || {
            crate::procs::mesh_pair_row(scenario, secs, "mesh-link (Rust), two processes")
        })
        .await
        .expect("mesh-link pair");
        let mut set = vec![rust_row, node_row];
        ratios(&mut set);
        rows.extend(set);
    }
    rows
}
