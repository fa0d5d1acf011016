//! What an operator meets: the exit-code table, `ping --raw` against something that is not a
//! mesh-link node, `stats` and `request`/`send` from the shell against a running node, the
//! Prometheus endpoint of `mesh-link node --metrics`, and the node's logs (joins and leaves
//! named, no colour codes in a file, JSON on request).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpStream, UdpSocket};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use mesh_discovery::testing::{free_port, RedisServer};
use mesh_link::{Bytes, HandlerError, MeshNode, NodeKey, Registry, SendOptions};

use crate::cli::{run, spawn_node, text, BIN};

fn code(args: &[&str]) -> (Option<i32>, String) {
    let o = run(args);
    (o.status.code(), text(&o))
}

#[test]
fn exit_codes_follow_the_table() {
    let dir = std::env::temp_dir().join(format!("mesh-link-ops-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let typo = dir.join("typo.toml");
    std::fs::write(&typo, "peer_timout = \"2s\"\n").unwrap();
    let typo = typo.to_str().unwrap().to_owned();
    let bad_duration = dir.join("bad.toml");
    std::fs::write(&bad_duration, "update_interval = 1000\n").unwrap();
    let bad_duration = bad_duration.to_str().unwrap().to_owned();

    // 2: the command line or the configuration is wrong; nothing was tried.
    let usage: [&[&str]; 10] = [
        &["ping"],
        &["ping", "127.0.0.1", "99999"],
        &["frobnicate"],
        &["node", "--value", "novalue"],
        &["node", "--bind", "0.0.0.0:8100"],
        &["node", "--config", "/nonexistent/mesh.toml"],
        &["node", "--config", &typo],
        &["node", "--config", &bad_duration],
        &["request", "127.0.0.1", "9", "7", "--json", "{not json"],
        &[
            "request",
            "127.0.0.1",
            "9",
            "7",
            "--data",
            "@/nonexistent/payload",
        ],
    ];
    for args in usage {
        let (c, out) = code(args);
        assert_eq!(c, Some(2), "{args:?}: {out}");
    }
    let (_, out) = code(&["node", "--config", &typo]);
    assert!(
        out.contains("peer_timout"),
        "the mistyped key is named: {out}"
    );
    let (_, out) = code(&["node", "--bind", "0.0.0.0:8100"]);
    assert!(out.contains("0.0.0.0"), "{out}");

    // 1: tried, and the world said no. Redis errors name the address, not a Rust debug dump.
    let dead_port = free_port();
    let dead = format!("redis://127.0.0.1:{dead_port}");
    for args in [
        &["nodes", "--redis", &dead][..],
        &["node", "--redis", &dead],
    ] {
        let (c, out) = code(args);
        assert_eq!(c, Some(1), "{args:?}: {out}");
        assert!(out.contains(&format!("127.0.0.1:{dead_port}")), "{out}");
        assert!(!out.contains("Os {"), "no debug output: {out}");
    }
    let silent = free_port().to_string();
    for args in [
        &["ping", "127.0.0.1", &silent, "-c", "1", "-t", "200"][..],
        &[
            "ping",
            "127.0.0.1",
            &silent,
            "-c",
            "1",
            "-t",
            "200",
            "--raw",
        ],
        &["request", "127.0.0.1", &silent, "7", "-t", "300"],
        &["stats", "127.0.0.1", &silent, "-t", "300"],
    ] {
        let (c, out) = code(args);
        assert_eq!(c, Some(1), "{args:?}: {out}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn raw_ping_reaches_anything_that_answers_pong() {
    // What a Node.js mesh-link node does with a 4-byte `ping`: answer `PONG\n`.
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let port = socket.local_addr().unwrap().port();
    let answered = std::thread::spawn(move || {
        let mut buf = [0u8; 64];
        let mut n = 0;
        while n < 3 {
            let Ok((len, from)) = socket.recv_from(&mut buf) else {
                break;
            };
            if &buf[..len] == b"ping" {
                socket.send_to(b"PONG\n", from).unwrap();
                n += 1;
            }
        }
        n
    });
    // By host name, as an operator types it.
    let o = run(&[
        "ping",
        "localhost",
        &port.to_string(),
        "--raw",
        "-c",
        "3",
        "-i",
        "0",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert_eq!(out.matches("PONG from 127.0.0.1:").count(), 3, "{out}");
    assert_eq!(answered.join().unwrap(), 3);
}

/// Three nodes in this process that have pinged each other.
async fn three_nodes() -> Vec<MeshNode> {
    let registry = Registry::memory();
    let mut nodes = Vec::new();
    for name in ["a", "b", "c"] {
        let node = MeshNode::builder()
            .config(|c| {
                c.node_type = "svc".into();
                c.values.insert("name".into(), name.into());
            })
            .registry(registry.clone())
            .start()
            .await
            .unwrap();
        nodes.push(node);
    }
    for a in &nodes {
        for b in &nodes {
            if a.local_key() != b.local_key() {
                a.ping(b.local_key(), Duration::from_secs(2)).await.unwrap();
            }
        }
    }
    nodes
}

async fn cli(args: Vec<String>) -> std::process::Output {
    tokio::process::Command::new(BIN)
        .args(&args)
        .env_remove("RUST_LOG")
        .output()
        .await
        .expect("mesh-link runs")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_shows_a_nodes_view_of_the_mesh() {
    let nodes = three_nodes().await;
    let port = nodes[0].local_key().socket_addr().port().to_string();
    let o = cli(vec![
        "stats".into(),
        "127.0.0.1".into(),
        port.clone(),
        "--json".into(),
    ])
    .await;
    assert!(o.status.success(), "{}", text(&o));
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).expect("one JSON object");
    assert_eq!(r["members"].as_array().unwrap().len(), 3, "{r}");
    let peers = r["peers"].as_array().unwrap();
    for other in &nodes[1..] {
        let addr = other.local_key().socket_addr().to_string();
        let p = peers
            .iter()
            .find(|p| p["addr"] == addr.as_str())
            .unwrap_or_else(|| panic!("no session with {addr}: {r}"));
        assert!(p["srtt_us"].as_u64().unwrap() > 0, "{p}");
        assert!(p["frames_sent"].as_u64().unwrap() >= 1, "{p}");
    }
    // It pinged the two others, and was pinged by them (system handlers are not counted as
    // the application's).
    assert_eq!(r["counters"]["node.requests"], 2, "{r}");
    assert!(
        r["counters"]["transport.messages_received"]
            .as_u64()
            .unwrap()
            >= 2,
        "{r}"
    );

    // The text form names the members with their values.
    let o = cli(vec!["stats".into(), "127.0.0.1".into(), port]).await;
    assert!(o.status.success(), "{}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    for section in ["MEMBERS", "SESSIONS", "COUNTERS", "name=b", "(itself)"] {
        assert!(out.contains(section), "{section}: {out}");
    }
    for n in nodes {
        let _ = n.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_and_send_call_handlers_from_the_shell() {
    const SHOUT: u16 = 7;
    const COUNT: u16 = 8;
    let counted = Arc::new(AtomicU64::new(0));
    let c2 = counted.clone();
    let node = MeshNode::builder()
        .registry(Registry::memory())
        .on_raw(SHOUT, |b: Bytes, _| async move {
            Ok::<_, HandlerError>(Some(Bytes::from(b.to_ascii_uppercase())))
        })
        .on_raw(COUNT, move |b: Bytes, _| {
            c2.fetch_add(b.len() as u64, Ordering::SeqCst);
            async { Ok::<_, HandlerError>(None) }
        })
        .start()
        .await
        .unwrap();
    let port = node.local_key().socket_addr().port().to_string();
    let args = |rest: &[&str]| -> Vec<String> {
        let mut v: Vec<String> = rest[..1].iter().map(|s| s.to_string()).collect();
        v.push("127.0.0.1".into());
        v.push(port.clone());
        v.extend(rest[1..].iter().map(|s| s.to_string()));
        v
    };
    let o = cli(args(&["request", "7", "--data", "hello"])).await;
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(o.stdout, b"HELLO\n");

    let file = std::env::temp_dir().join(format!("mesh-link-payload-{}", std::process::id()));
    std::fs::write(&file, b"from a file").unwrap();
    let at = format!("@{}", file.display());
    let o = cli(args(&["request", "7", "--data", &at])).await;
    assert_eq!(o.stdout, b"FROM A FILE\n", "{}", text(&o));
    std::fs::remove_file(&file).unwrap();

    let o = cli(args(&["request", "7", "--json", r#"{"k":"v"}"#])).await;
    assert_eq!(o.stdout, b"{\"K\":\"V\"}\n", "{}", text(&o));

    // A handler the node does not have: a failure at run time, said as such.
    let o = cli(args(&["request", "99", "--data", "x", "-t", "2000"])).await;
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("99"),
        "{}",
        text(&o)
    );

    let o = cli(args(&["send", "8", "--data", "12345"])).await;
    assert!(o.status.success(), "{}", text(&o));
    assert!(String::from_utf8_lossy(&o.stdout).starts_with("delivered to"));
    let t0 = Instant::now();
    while counted.load(Ordering::SeqCst) < 5 && t0.elapsed() < Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(counted.load(Ordering::SeqCst), 5);
    let _ = node.stop().await;
}

/// `GET /metrics` of a Prometheus endpoint, as text.
fn scrape(port: u16) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("the metrics endpoint");
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(
        s,
        "GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut body = String::new();
    s.read_to_string(&mut body).unwrap();
    assert!(body.starts_with("HTTP/1.1 200"), "{body}");
    body
}

/// The value of the first series of `metric` in a scrape (0 when absent).
fn value(scrape: &str, metric: &str) -> u64 {
    scrape
        .lines()
        .find(|l| l.starts_with(metric) && l[metric.len()..].starts_with(['{', ' ']))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<f64>().ok())
        .map_or(0, |v| v as u64)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_node_serves_its_metrics_to_prometheus() {
    let metrics_port = free_port();
    let listen = format!("127.0.0.1:{metrics_port}");
    let args: Vec<std::ffi::OsString> = vec!["--metrics".into(), listen.into()];
    let args: Vec<&std::ffi::OsStr> = args.iter().map(|a| a.as_os_str()).collect();
    let mut served = spawn_node(&args);
    let to = NodeKey::from(std::net::SocketAddr::from(([127, 0, 0, 1], served.port)));

    // Published every second: wait for the first publication.
    let first = tokio::task::spawn_blocking(move || {
        let t0 = Instant::now();
        loop {
            let s = scrape(metrics_port);
            if s.contains("mesh_node_members") || t0.elapsed() > Duration::from_secs(10) {
                return s;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    })
    .await
    .unwrap();
    assert!(first.contains("mesh_node_members"), "{first}");
    let before = value(&first, "mesh_node_no_handler_total");

    // Messages for a handler the node does not have: each counted once.
    const N: u64 = 25;
    let client = MeshNode::builder()
        .registry(Registry::memory())
        .start()
        .await
        .unwrap();
    // Pings: the node answers, so it measures a round trip to the client.
    for _ in 0..3 {
        client.ping(to, Duration::from_secs(2)).await.unwrap();
    }
    for i in 0..N {
        let r = client
            .send_bytes(
                4242,
                [to],
                Bytes::from(vec![i as u8]),
                SendOptions::default(),
            )
            .await
            .unwrap();
        assert!(r.is_ok(), "{r:?}");
    }
    let last = tokio::task::spawn_blocking(move || {
        let t0 = Instant::now();
        loop {
            let s = scrape(metrics_port);
            if value(&s, "mesh_node_no_handler_total") >= before + N
                || t0.elapsed() > Duration::from_secs(10)
            {
                return s;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    })
    .await
    .unwrap();
    assert_eq!(
        value(&last, "mesh_node_no_handler_total") - before,
        N,
        "{last}"
    );
    // The transport's and the per-peer series are there too.
    for series in [
        "mesh_transport_datagrams_received_total",
        "mesh_peer_rtt_seconds",
        "mesh_discovery_",
    ] {
        assert!(last.contains(series), "{series}: {last}");
    }
    let _ = client.stop().await;
    assert!(served.terminate().success());
}

/// A node whose stderr (its log) is read line by line into a channel.
fn logging_node(redis: &str, extra: &[&str]) -> (std::process::Child, u16, mpsc::Receiver<String>) {
    let port = free_port();
    let bind = format!("127.0.0.1:{port}");
    let mut child = Command::new(BIN)
        .args(extra)
        .args([
            "node", "--redis", redis, "--prefix", "logs", "--bind", &bind,
        ])
        .args(["--type", "logger"])
        .env_remove("RUST_LOG")
        .env_remove("MESH_REDIS_URL")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("mesh-link node starts");
    let (tx, rx) = mpsc::channel();
    let stderr = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    (child, port, rx)
}

/// Log lines until one contains every one of `words` (bounded), all of them returned.
fn lines_until(rx: &mpsc::Receiver<String>, words: &[&str], seen: &mut Vec<String>) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => {
                let done = words.iter().all(|w| line.contains(w));
                seen.push(line);
                if done {
                    return;
                }
            }
            Err(_) => panic!(
                "no log line with {words:?}; the log was:\n{}",
                seen.join("\n")
            ),
        }
    }
}

#[test]
fn the_log_names_joins_and_leaves_in_plain_text_or_json() {
    let redis = RedisServer::start();
    let url = redis.url();
    let (mut a, _, a_log) = logging_node(&url, &[]);
    let mut seen = Vec::new();
    lines_until(&a_log, &["mesh node started"], &mut seen);

    let (mut b, b_port, b_log) = logging_node(&url, &["--log-format", "json"]);
    let b_addr = format!("127.0.0.1:{b_port}");
    lines_until(&a_log, &["node joined", &b_addr, "logger"], &mut seen);
    // b's own log is JSON, one object per line.
    let mut b_seen = Vec::new();
    lines_until(&b_log, &["node joined"], &mut b_seen);
    for line in &b_seen {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert!(v["fields"]["message"].is_string(), "{line}");
    }

    // Killed without a goodbye: a's log says it left.
    b.kill().unwrap();
    b.wait().unwrap();
    lines_until(&a_log, &["node left", &b_addr], &mut seen);

    // Not a terminal: no colour codes.
    for line in &seen {
        assert!(!line.contains('\u{1b}'), "an escape code in {line:?}");
    }
    let pid = nix::unistd::Pid::from_raw(i32::try_from(a.id()).unwrap());
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    assert!(a.wait().unwrap().success());
    let rest: Vec<String> = a_log.iter().collect();
    assert!(
        rest.iter().any(|l| l.contains("mesh node stopped")),
        "{rest:?}"
    );
}

#[test]
fn top_once_prints_a_row_per_node() {
    let redis = RedisServer::start();
    let url = redis.url();
    let mut nodes: Vec<crate::cli::Node> = (0..2)
        .map(|_| {
            let bind = format!("127.0.0.1:{}", free_port());
            let args = [
                "--redis", &url, "--prefix", "top", "--type", "game", "--bind", &bind,
            ];
            let args: Vec<&std::ffi::OsStr> = args.iter().map(|a| a.as_ref()).collect();
            spawn_node(&args)
        })
        .collect();
    let want: Vec<String> = nodes
        .iter()
        .map(|n| format!("127.0.0.1:{}", n.port))
        .collect();
    // Until both are registered (bounded), then one frame.
    let t0 = Instant::now();
    let screen = loop {
        let o = run(&[
            "top",
            "--redis",
            &url,
            "--prefix",
            "top",
            "--once",
            "--interval",
            "200",
        ]);
        assert!(o.status.success(), "{}", text(&o));
        let screen = String::from_utf8_lossy(&o.stdout).to_string();
        if want.iter().all(|w| screen.contains(w.as_str())) || t0.elapsed().as_secs() > 20 {
            break screen;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(screen.contains("ADDRESS"), "{screen}");
    for (w, line) in want.iter().map(|w| {
        let line = screen
            .lines()
            .find(|l| l.contains(w.as_str()))
            .unwrap_or_default();
        (w, line.to_owned())
    }) {
        assert!(line.contains("game"), "{w}: {screen}");
        assert!(line.contains("µs"), "a round trip to {w}: {screen}");
    }
    // Without a terminal and without --once: a usage error.
    let o = run(&["top", "--redis", &url, "--prefix", "top"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    for n in &mut nodes {
        assert!(n.terminate().success());
    }
}
