//! A mixed mesh: two processes of the original Node.js mesh-link 0.13.6 (npm, run by
//! `benches/node-original/peer.js`) and two Rust processes in node-compat mode (the
//! `compat-peer` binary), on one Redis. Membership seen both ways, requests and one-way
//! messages both ways (small and 100 KiB), `usend` both ways, a killed Node node seen leaving
//! by the Rust nodes, a stopped Rust node seen leaving by the Node nodes. Needs `node`, `npm`
//! (and the npm registry once) and `redis-server`; fails saying which is missing.

#![allow(clippy::print_stderr, reason = "the test says what it observed")]

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use mesh_benches::node_original::{install, node_script};
use mesh_discovery::testing::{free_port, RedisServer};
use serde_json::{json, Value};

/// How long one command may take before the test fails naming it.
const ANSWER_WITHIN: Duration = Duration::from_secs(30);

/// One node process, driven by JSON lines.
struct Peer {
    name: &'static str,
    port: u16,
    child: Child,
    stdin: ChildStdin,
    lines: mpsc::Receiver<Value>,
}

impl Peer {
    fn start(mut cmd: Command, name: &'static str, port: u16) -> Self {
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("{name}: cannot start: {e}"));
        let stdin = child.stdin.take().expect("piped");
        let out = child.stdout.take().expect("piped");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { return };
                // The original logs to stdout too: only JSON objects are answers.
                if let Ok(v @ Value::Object(_)) = serde_json::from_str::<Value>(&line) {
                    if tx.send(v).is_err() {
                        return;
                    }
                }
            }
        });
        let mut p = Self {
            name,
            port,
            child,
            stdin,
            lines,
        };
        let ready = p.next_line("start");
        assert_eq!(ready["ready"], true, "{name} did not start: {ready}");
        assert_eq!(ready["port"], port, "{name} bound another port: {ready}");
        p
    }

    fn node(redis: u16, prefix: &str, name: &'static str) -> Self {
        let port = free_port();
        let mut cmd = Command::new("node");
        cmd.arg(node_script("peer.js"))
            .args([redis.to_string(), prefix.to_owned(), port.to_string()])
            .arg(name);
        Self::start(cmd, name, port)
    }

    fn rust(redis: u16, prefix: &str, name: &'static str) -> Self {
        let port = free_port();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_compat-peer"));
        cmd.args([redis.to_string(), prefix.to_owned(), port.to_string()])
            .arg(name)
            .env("RUST_LOG", "mesh_link=info");
        Self::start(cmd, name, port)
    }

    fn next_line(&mut self, what: &str) -> Value {
        self.lines
            .recv_timeout(ANSWER_WITHIN)
            .unwrap_or_else(|e| panic!("{}: no answer to {what} ({e})", self.name))
    }

    fn ask(&mut self, command: Value) -> Value {
        writeln!(self.stdin, "{command}").expect("the peer reads commands");
        self.stdin.flush().unwrap();
        let what = command["op"].to_string();
        self.next_line(&what)
    }

    fn to(&self) -> Value {
        json!({"address": "127.0.0.1", "port": self.port})
    }

    /// The ports this peer lists (Node lists can hold duplicates: the original's defect D1).
    fn listed(&mut self) -> Vec<Value> {
        let v = self.ask(json!({"op": "nodes"}));
        v["nodes"].as_array().cloned().unwrap_or_default()
    }

    fn ports(&mut self) -> Vec<u16> {
        let mut p: Vec<u16> = self
            .listed()
            .iter()
            .filter_map(|n| n["port"].as_u64())
            .map(|p| p as u16)
            .collect();
        p.sort_unstable();
        p.dedup();
        p
    }

    /// Polls until this peer lists exactly `ports` (bounded).
    fn wait_for_ports(&mut self, ports: &[u16], why: &str) {
        let mut want = ports.to_vec();
        want.sort_unstable();
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut last = Vec::new();
        while Instant::now() < deadline {
            last = self.ports();
            if last == want {
                return;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        panic!("{}: {why}: lists {last:?}, expected {want:?}", self.name);
    }

    fn counts(&mut self) -> Value {
        self.ask(json!({"op": "counts"}))
    }

    /// Polls until `counts[field]` reaches `n` (bounded), and returns it (exactly `n` or more).
    fn wait_count(&mut self, field: &str, n: u64) -> u64 {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let c = self.counts()[field].as_u64().unwrap_or(0);
            if c >= n || Instant::now() >= deadline {
                return c;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn msg(from: &str, blob: usize) -> Value {
    json!({"message": "hello", "from": from, "blob": "x".repeat(blob)})
}

#[test]
fn two_node_and_two_rust_processes_form_one_mesh() {
    if let Err(e) = install() {
        panic!("the mixed mesh needs the original package: {e}");
    }
    let redis = RedisServer::start();
    let redis_port: u16 = redis.url().rsplit(':').next().unwrap().parse().unwrap();
    let prefix = "mixed";
    let mut peers = vec![
        Peer::node(redis_port, prefix, "n1"),
        Peer::node(redis_port, prefix, "n2"),
        Peer::rust(redis_port, prefix, "r1"),
        Peer::rust(redis_port, prefix, "r2"),
    ];
    let ports: Vec<u16> = peers.iter().map(|p| p.port).collect();

    // Membership, both ways: everyone lists all four (itself included).
    for p in &mut peers {
        p.wait_for_ports(&ports, "membership");
    }
    for p in peers.iter_mut().skip(2) {
        let listed = p.listed();
        assert_eq!(
            listed.len(),
            4,
            "{}: one entry per node: {listed:?}",
            p.name
        );
        for n in &listed {
            let node_js = n["node_js"].as_bool().unwrap();
            let name = n["name"].as_str().unwrap();
            let expected_type = if node_js { "nodejs" } else { "rust" };
            assert_eq!(n["type"], expected_type, "{}: {n}", p.name);
            assert_eq!(node_js, name.starts_with('n'), "{}: {n}", p.name);
        }
    }
    for p in peers.iter_mut().take(2) {
        for n in p.listed() {
            let name = n["name"].as_str().unwrap_or_default().to_owned();
            let expected_type = if name.starts_with('r') {
                "rust"
            } else {
                "nodejs"
            };
            assert_eq!(n["type"], expected_type, "{}: {n}", p.name);
        }
    }

    // Requests, every pair, both ways, small and 100 KiB.
    let mut asked = 0;
    for a in 0..4 {
        for b in 0..4 {
            if a == b {
                continue;
            }
            for blob in [0, 100 * 1024] {
                let to = peers[b].to();
                let data = msg(peers[a].name, blob);
                let r =
                    peers[a].ask(json!({"op": "request", "to": to, "handler": 1, "data": data}));
                assert_eq!(
                    r["ok"], true,
                    "{} asked {} ({blob} bytes): {r}",
                    peers[a].name, peers[b].name
                );
                assert_eq!(r["answer"]["from"], peers[a].name, "{r}");
                assert_eq!(r["answer"]["blob"].as_str().map(str::len), Some(blob));
                asked += 1;
            }
        }
    }
    eprintln!("{asked} requests answered across the mixed mesh");

    // One-way messages, every pair, both ways: 3 small and 1 of 100 KiB each.
    let mut expected_bytes = [0u64; 4];
    for a in 0..4 {
        for b in 0..4 {
            if a == b {
                continue;
            }
            for blob in [0, 0, 0, 100 * 1024] {
                let to = peers[b].to();
                let data = msg(peers[a].name, blob);
                expected_bytes[b] += serde_json::to_vec(&data).unwrap().len() as u64;
                let r = peers[a].ask(json!({"op": "send", "to": to, "handler": 2, "data": data}));
                assert_eq!(
                    r["ok"], true,
                    "{} sent to {}: {r}",
                    peers[a].name, peers[b].name
                );
            }
        }
    }
    for (b, p) in peers.iter_mut().enumerate() {
        let n = p.wait_count("oneway", 12);
        let c = p.counts();
        assert_eq!(n, 12, "{}: one-way messages: {c}", p.name);
        assert_eq!(c["oneway_bytes"], expected_bytes[b], "{}: {c}", p.name);
    }

    // usend, every pair, both ways: 5 each.
    for a in 0..4 {
        for b in 0..4 {
            if a == b {
                continue;
            }
            for _ in 0..5 {
                let to = peers[b].to();
                let data = msg(peers[a].name, 10);
                let r = peers[a].ask(json!({"op": "usend", "to": to, "handler": 3, "data": data}));
                assert_eq!(r["ok"], true, "{}: {r}", peers[a].name);
            }
        }
    }
    for p in &mut peers {
        let n = p.wait_count("usend", 15);
        assert_eq!(n, 15, "{}: usends received", p.name);
    }

    // A Node node killed: the Rust nodes see it leave, and only it.
    let n2 = peers.remove(1);
    let n2_port = n2.port;
    drop(n2); // SIGKILL
    let left: Vec<u16> = ports.iter().copied().filter(|p| *p != n2_port).collect();
    for p in peers.iter_mut().filter(|p| p.name.starts_with('r')) {
        p.wait_for_ports(&left, "after n2 was killed");
    }

    // A Rust node stopped: the Node node (and the other Rust node) see it leave.
    let mut r2 = peers.pop().unwrap();
    let stopped = r2.ask(json!({"op": "stop"}));
    assert_eq!(stopped["stopped"], true, "r2: {stopped}");
    let left: Vec<u16> = left.into_iter().filter(|p| *p != r2.port).collect();
    for p in &mut peers {
        p.wait_for_ports(&left, "after r2 stopped");
    }

    // Nothing on the compat path was refused or delivered twice.
    let stats = peers[1].ask(json!({"op": "stats"}));
    eprintln!("r1's compat path: {stats}");
    assert_eq!(stats["node_wire"]["malformed"], 0, "{stats}");
    assert_eq!(stats["node_wire"]["gave_up"], 0, "{stats}");
}
