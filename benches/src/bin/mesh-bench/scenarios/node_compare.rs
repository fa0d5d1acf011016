//! Against the original Node.js mesh-link 0.13.6.

#[allow(
    unused_imports,
    reason = "each scenario takes what it needs from one list"
)]
use super::super::prelude::*;
use super::oneway::mesh_oneway;

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
    let registry = Registry::redis(&redis.url()).expect("redis url");
    let server = mesh_node(&registry).await;
    let client = mesh_node(&registry).await;
    let received = Arc::new(AtomicU64::new(0));
    let r = received.clone();
    server.remove_handler(SINK);
    server
        .on_raw(SINK, move |b: Bytes, _| {
            r.fetch_add(b.len() as u64, Ordering::Relaxed);
            async { Ok::<_, HandlerError>(None) }
        })
        .expect("sink");
    let to = server.local_key();
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
        // mesh-link, the same scenario for the same time.
        let mut rust_row = Row::new(
            &format!("vs node {scenario}"),
            "mesh-link (Rust, both nodes in this process)",
        );
        let slice = Duration::from_secs(secs);
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
                let mut c: Vec<Box<dyn Client>> = vec![Box::new(MeshClient {
                    node: client.clone(),
                    to,
                })];
                let t = Instant::now();
                let l = run_clients(&mut c, slice).await;
                rust_row = rust_row.latencies(l, t.elapsed());
            }
            "oneway" => {
                let got = counts["oneway"].as_u64().unwrap_or(0);
                node_row.per_sec = Some(got as f64 / node_secs);
                node_row.lost = Some(result["ops"].as_u64().unwrap_or(0).saturating_sub(got));
                node_row.samples = got as usize;
                let before = received.load(Ordering::Relaxed);
                let (sent, spent) = mesh_oneway(&client, to, slice).await;
                tokio::time::sleep(Duration::from_millis(50)).await;
                let got = (received.load(Ordering::Relaxed) - before) / 64;
                rust_row.per_sec = Some(got as f64 / spent.as_secs_f64());
                rust_row.lost = Some(sent.saturating_sub(got));
                rust_row.samples = got as usize;
            }
            _ => {
                let bytes = counts["bulkBytes"].as_u64().unwrap_or(0);
                node_row.mb_per_sec = Some(bytes as f64 / 1e6 / node_secs);
                node_row.samples = result["ops"].as_u64().unwrap_or(0) as usize;
                let data = Bytes::from(vec![5u8; 1 << 20]);
                let t = Instant::now();
                let mut n = 0usize;
                while t.elapsed() < slice {
                    let r = client
                        .send_bytes(SINK, [to], data.clone(), SendOptions::default())
                        .await
                        .expect("send");
                    assert!(r.is_ok());
                    n += 1;
                }
                rust_row.mb_per_sec = Some((n << 20) as f64 / 1e6 / t.elapsed().as_secs_f64());
                rust_row.samples = n;
            }
        }
        let mut set = vec![rust_row, node_row];
        ratios(&mut set);
        rows.extend(set);
    }
    let _ = client.stop().await;
    let _ = server.stop().await;
    rows
}
