//! The `mesh-link` binary, as a user runs it: three `mesh-link node` processes on a real
//! Redis, listed with `mesh-link nodes`, pinged with `mesh-link ping`, one killed with
//! SIGKILL and seen to leave, one stopped with SIGTERM and seen to leave at once.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use mesh_discovery::testing::{free_port, RedisServer};

pub(crate) const BIN: &str = env!("CARGO_BIN_EXE_mesh-link");

pub(crate) fn run(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .output()
        .expect("mesh-link runs")
}

pub(crate) fn text(o: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// A `mesh-link node` process, killed (by its pid, through `Child`) if the test ends early.
pub(crate) struct Node {
    pub(crate) child: Child,
    pub(crate) port: u16,
}

impl Node {
    fn start(redis: &str, prefix: &str, name: &str) -> Node {
        let bind = format!("127.0.0.1:{}", free_port());
        let value = format!("name={name}");
        let args = [
            "--redis", redis, "--prefix", prefix, "--type", "game", "--bind", &bind, "--value",
            &value,
        ];
        let args: Vec<&std::ffi::OsStr> = args.iter().map(|a| a.as_ref()).collect();
        spawn_node(&args)
    }

    pub(crate) fn terminate(&mut self) -> std::process::ExitStatus {
        // Only the process this test started, by its pid.
        let pid = nix::unistd::Pid::from_raw(i32::try_from(self.child.id()).expect("a pid"));
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("SIGTERM sent");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s;
            }
            assert!(Instant::now() < deadline, "node did not stop on SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `mesh-link node` with `args` (and no `MESH_REDIS_URL`), and reads the port it
/// says it listens on.
pub(crate) fn spawn_node(args: &[&std::ffi::OsStr]) -> Node {
    let mut child = Command::new(BIN)
        .arg("node")
        .args(args)
        .env_remove("MESH_REDIS_URL")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("mesh-link node starts");
    // It says where it listens once it is up (the port may have moved up if taken).
    let mut line = String::new();
    BufReader::new(child.stdout.as_mut().unwrap())
        .read_line(&mut line)
        .expect("node prints its address");
    assert!(
        line.starts_with("mesh-link node listening on 127.0.0.1:"),
        "{line:?}"
    );
    let port: u16 = line
        .split_whitespace()
        .nth(4)
        .and_then(|a| a.rsplit(':').next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no port in {line:?}"));
    Node { child, port }
}

/// Polls `mesh-link nodes --json` until `ok` holds of the ports listed (bounded).
fn wait_listed(redis: &str, prefix: &str, what: &str, ok: impl Fn(&[u16]) -> bool) -> Vec<u16> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let o = run(&["nodes", "--redis", redis, "--prefix", prefix, "--json"]);
        assert!(o.status.success(), "{}", text(&o));
        let ports: Vec<u16> = String::from_utf8_lossy(&o.stdout)
            .lines()
            .map(|l| {
                let v: serde_json::Value =
                    serde_json::from_str(l).expect("one JSON record per line");
                v["key"]["port"].as_u64().expect("a port") as u16
            })
            .collect();
        if ok(&ports) {
            return ports;
        }
        assert!(Instant::now() < deadline, "{what}: listed {ports:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn three_node_processes_listed_pinged_killed() {
    let redis = RedisServer::start();
    let url = redis.url();
    let prefix = "cli";
    let mut nodes: Vec<Node> = ["one", "two", "three"]
        .iter()
        .map(|n| Node::start(&url, prefix, n))
        .collect();
    let ports: Vec<u16> = nodes.iter().map(|n| n.port).collect();
    wait_listed(&url, prefix, "three nodes", |l| {
        ports.iter().all(|p| l.contains(p))
    });

    // The table form names each node with its type and values.
    let o = run(&["nodes", "--redis", &url, "--prefix", prefix]);
    assert!(o.status.success(), "{}", text(&o));
    let table = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(table.starts_with("ADDRESS"), "{table}");
    for (p, name) in ports.iter().zip(["one", "two", "three"]) {
        let row = table
            .lines()
            .find(|l| l.contains(&format!("127.0.0.1:{p}")))
            .expect("a row per node");
        assert!(
            row.contains("game") && row.contains(&format!("name={name}")),
            "{row}"
        );
    }
    let o = run(&[
        "nodes", "--redis", &url, "--prefix", prefix, "--type", "other",
    ]);
    assert_eq!(
        String::from_utf8_lossy(&o.stdout).lines().count(),
        1,
        "only the header"
    );

    // Each answers pings.
    for p in &ports {
        let o = run(&[
            "ping",
            "127.0.0.1",
            &p.to_string(),
            "--count",
            "3",
            "--interval",
            "10",
        ]);
        assert!(o.status.success(), "{}", text(&o));
        let out = String::from_utf8_lossy(&o.stdout);
        assert_eq!(
            out.lines()
                .filter(|l| l.starts_with(&format!("PONG from 127.0.0.1:{p} time=")))
                .count(),
            3,
            "{out}"
        );
        assert!(out.contains("3 answers of 3, p50 "), "{out}");
    }

    // SIGKILL one: it leaves when its record expires, and pings to it fail with exit 1.
    let killed = ports[0];
    nodes[0].child.kill().unwrap();
    nodes[0].child.wait().unwrap();
    wait_listed(&url, prefix, "the killed node leaves", |l| {
        !l.contains(&killed) && l.len() == 2
    });
    let o = run(&[
        "ping",
        "127.0.0.1",
        &killed.to_string(),
        "--count",
        "1",
        "--timeout",
        "300",
    ]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("0 answers of 1"),
        "{}",
        text(&o)
    );

    // SIGTERM another: it deregisters at once and exits 0.
    let status = nodes[1].terminate();
    assert!(status.success(), "{status:?}");
    let left = wait_listed(&url, prefix, "the stopped node leaves", |l| l.len() == 1);
    assert_eq!(left, vec![ports[2]]);
}

#[test]
fn a_node_without_redis_runs_alone_and_answers_pings() {
    let bind = format!("127.0.0.1:{}", free_port());
    let mut node = spawn_node(&["--bind".as_ref(), bind.as_ref()]);
    let o = run(&[
        "ping",
        "127.0.0.1",
        &node.port.to_string(),
        "--count",
        "2",
        "--interval",
        "1",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    // Back to back and quiet: only the summary, with its percentiles and CPU time.
    let o = run(&[
        "ping",
        "127.0.0.1",
        &node.port.to_string(),
        "--count",
        "200",
        "--interval",
        "0",
        "--quiet",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert_eq!(out.lines().count(), 1, "{out}");
    assert!(out.starts_with("200 answers of 200, p50 "), "{out}");
    for field in [", p90 ", ", p99 ", ", CPU per ping "] {
        assert!(out.contains(field), "{field:?} in {out}");
    }
    // The original's raw ping.
    let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.send_to(b"ping", ("127.0.0.1", node.port)).unwrap();
    let mut buf = [0u8; 8];
    let n = s.recv(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"PONG\n");
    assert!(node.terminate().success());
}

#[test]
fn help_usage_errors_and_exit_codes() {
    for args in [
        &["--help"][..],
        &["ping", "--help"],
        &["node", "--help"],
        &["nodes", "--help"],
        &["--version"],
    ] {
        let o = run(args);
        assert!(o.status.success(), "{args:?}: {}", text(&o));
        assert!(!o.stdout.is_empty());
    }
    // Usage errors: exit 2, with the problem on stderr.
    for args in [
        &["ping"][..],
        &["ping", "not-an-ip", "1"],
        &["node", "--value", "novalue"],
        &["frobnicate"],
    ] {
        let o = run(args);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", text(&o));
        assert!(!o.stderr.is_empty());
    }
    // Runtime errors: exit 1 with a clear message.
    let dead = format!("redis://127.0.0.1:{}", free_port());
    let o = run(&["nodes", "--redis", &dead]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("registry unavailable"),
        "{}",
        text(&o)
    );
    let o = run(&["node", "--config", "/nonexistent/mesh.toml"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("/nonexistent/mesh.toml"),
        "{}",
        text(&o)
    );
}

#[test]
fn a_keyed_node_answers_only_keyed_pings() {
    let dir = std::env::temp_dir().join(format!("mesh-link-key-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let key = dir.join("key");
    let wrong = dir.join("wrong");
    std::fs::write(&key, "a cluster secret of some length\n").unwrap();
    std::fs::write(&wrong, "another secret\n").unwrap();
    let bind = format!("127.0.0.1:{}", free_port());
    let mut node = spawn_node(&[
        "--bind".as_ref(),
        bind.as_ref(),
        "--key-file".as_ref(),
        key.as_os_str(),
    ]);
    let p = node.port.to_string();
    let ok = Command::new(BIN)
        .args([
            "ping",
            "127.0.0.1",
            &p,
            "--count",
            "2",
            "--interval",
            "1",
            "--key-file",
        ])
        .arg(&key)
        .output()
        .unwrap();
    assert!(ok.status.success(), "{}", text(&ok));
    for extra in [&["--key-file", wrong.to_str().unwrap()][..], &[]] {
        let o = Command::new(BIN)
            .args(["ping", "127.0.0.1", &p, "--count", "1", "--timeout", "300"])
            .args(extra)
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    }
    // No raw PONG from a keyed node: it would be an unauthenticated reply.
    let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    s.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    s.send_to(b"ping", ("127.0.0.1", node.port)).unwrap();
    let mut buf = [0u8; 8];
    assert!(
        s.recv(&mut buf).is_err(),
        "a keyed node answered a raw ping"
    );
    // An empty key file is refused with a clear error.
    let empty = dir.join("empty");
    std::fs::write(&empty, "").unwrap();
    let o = Command::new(BIN)
        .args(["node", "--key-file"])
        .arg(&empty)
        .output()
        .unwrap();
    // A configuration error: exit 2.
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("is empty"),
        "{}",
        text(&o)
    );
    assert!(node.terminate().success());
    let _ = std::fs::remove_dir_all(&dir);
}
