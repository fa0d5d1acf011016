//! Against the original Node.js mesh-link 0.13.6.

#[allow(
    unused_imports,
    reason = "each scenario takes what it needs from one list"
)]
use super::super::prelude::*;

use mesh_benches::node_original::{node_harness, read_json_line};

/// Whether `node` and `npm` exist, with the harness's dependencies installed.
fn node_ready() -> bool {
    match mesh_benches::node_original::install() {
        Ok(()) => true,
        Err(e) => {
            eprintln!("node-compare skipped: {e}");
            false
        }
    }
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
