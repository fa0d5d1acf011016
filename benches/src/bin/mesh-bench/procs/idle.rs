//! `idle`: what a node costs when nothing is asked of it. One node in a process of its own,
//! with sessions open to `--peers` nodes that run in a second process (all through a Redis the
//! bench starts), measured for wake-ups (voluntary context switches of every thread: each is
//! a sleep that something ended) and CPU time, beside an idle tokio runtime in the same run.
//!
//! Child roles: `idle-peers` runs `--nodes` nodes; `idle-node` runs one node, waits until it
//! sees `--nodes` others, pings each once, spread over a second (so that every session
//! exists, as after real traffic), and prints `READY`; `idle-runtime` is the baseline, a multi-thread runtime with
//! nothing on it. All stay until their stdin closes.

use std::time::{Duration, Instant};

use mesh_link::{MeshNode, Registry};

use super::child::ChildArgs;
use super::{Placement, Proc};
use crate::report::Row;
use crate::Args;

/// Runs one of the idle roles in this (child) process.
pub(crate) fn child(rt: &tokio::runtime::Runtime, args: &ChildArgs) {
    let url = args.redis.as_deref();
    let nodes = match args.role.as_str() {
        "idle-peers" => rt.block_on(async {
            let mut v = Vec::new();
            for _ in 0..args.nodes {
                v.push(start(url.expect("--redis"), &args.prefix, "peer").await);
            }
            v
        }),
        "idle-node" => rt.block_on(async {
            let node = start(url.expect("--redis"), &args.prefix, "idle").await;
            let want = args.nodes + 1;
            let seen = tokio::time::timeout(
                Duration::from_secs(60),
                node.wait_for(|n| n.nodes().len() >= want),
            )
            .await;
            assert!(
                seen.is_ok(),
                "the idle node saw {} nodes",
                node.nodes().len()
            );
            // Spread over a second, as sessions that started with real traffic would be.
            let gap = Duration::from_millis(1000) / (args.nodes.max(1) as u32);
            for r in node.nodes() {
                if !node.is_local_node(r.key) {
                    tokio::time::sleep(gap).await;
                    node.ping(r.key, Duration::from_secs(5))
                        .await
                        .expect("a peer answers");
                }
            }
            vec![node]
        }),
        "idle-runtime" => Vec::new(),
        other => panic!("unknown role {other:?}"),
    };
    super::child::say("READY");
    // Until the bench closes stdin; the runtime's workers meanwhile run the nodes.
    for _ in super::child::commands() {}
    rt.block_on(async {
        for n in nodes {
            let _ = n.stop().await;
        }
    });
}

async fn start(url: &str, prefix: &str, node_type: &str) -> MeshNode {
    MeshNode::builder()
        .registry(Registry::redis(url).expect("a redis URL"))
        .bind("127.0.0.1:0")
        .config(|c| {
            c.prefix = prefix.into();
            c.node_type = node_type.into();
        })
        .start()
        .await
        .expect("mesh node")
}

/// Voluntary context switches of every thread of `pid` so far.
fn wakeups(pid: u32) -> u64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    tasks
        .filter_map(Result::ok)
        .filter_map(|t| std::fs::read_to_string(t.path().join("status")).ok())
        .filter_map(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
                .and_then(|v| v.trim().parse::<u64>().ok())
        })
        .sum()
}

/// `idle`: an idle node with 0 and with `peers` sessions, and an idle tokio runtime.
pub(crate) fn idle(args: &Args, peers: usize) -> Vec<Row> {
    let redis = mesh_discovery::testing::RedisServer::start();
    let url = redis.url();
    let placement = Placement::loopback(false);
    let measure = Duration::from_secs(args.duration.max(3));
    let mut rows = Vec::new();
    let cases: [(&str, usize, String); 3] = [
        ("idle-node", peers, format!("mesh-link node, {peers} peers")),
        ("idle-node", 0, "mesh-link node, alone".to_owned()),
        ("idle-runtime", 0, "tokio runtime, nothing on it".to_owned()),
    ];
    for (i, (role, n, name)) in cases.iter().enumerate() {
        let prefix = format!("idle{i}-{}", std::process::id());
        let common = |role: &str, nodes: usize| {
            vec![
                role.to_owned(),
                "mesh".to_owned(),
                "--redis".to_owned(),
                url.clone(),
                "--prefix".to_owned(),
                prefix.clone(),
                "--nodes".to_owned(),
                nodes.to_string(),
            ]
        };
        let mut others = None;
        if *n > 0 {
            let mut p = Proc::spawn(&common("idle-peers", *n), &placement, 1);
            assert_eq!(p.line(), "READY", "peers ready");
            others = Some(p);
        }
        let mut node = Proc::spawn(&common(role, *n), &placement, 0);
        assert_eq!(node.line(), "READY", "{name} ready");
        // Let start-up work (first refreshes, acknowledgements of the pings) finish.
        std::thread::sleep(Duration::from_secs(2));
        let pid = node.child.id();
        let (w0, c0, t0) = (wakeups(pid), node.cpu_ns(), Instant::now());
        std::thread::sleep(measure);
        let (w1, c1, secs) = (wakeups(pid), node.cpu_ns(), t0.elapsed().as_secs_f64());
        let mut row = Row::new(&format!("idle, {}", placement.label()), name);
        row.wakeups_per_sec = Some((w1 - w0) as f64 / secs);
        row.cpu_percent = Some((c1 - c0) as f64 / 1e9 / secs * 100.0);
        rows.push(row);
        drop(node);
        drop(others);
    }
    rows
}
