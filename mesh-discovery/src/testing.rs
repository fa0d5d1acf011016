//! Redis topologies for tests and benches (feature `testing`): `redis-server` processes on
//! free loopback ports, killed (by pid, only the ones started here) when dropped.
//!
//! Needs `redis-server` (and `redis-cli` for a cluster) on `PATH`; panics with a clear message
//! otherwise.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// One `redis-server` process.
#[derive(Debug)]
pub struct RedisServer {
    child: Option<Child>,
    /// Its port on 127.0.0.1.
    pub port: u16,
    dir: PathBuf,
}

/// A TCP port that was free a moment ago (bind to port 0, read it, release it).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

impl RedisServer {
    /// A standalone server on a free port, ready (answers `PING`).
    pub fn start() -> Self {
        Self::start_on(free_port())
    }

    /// A standalone server on `port`, ready.
    pub fn start_on(port: u16) -> Self {
        Self::start_with(port, &[])
    }

    /// Starts a server with extra `--name value` arguments (cluster mode, replicaof, sentinel).
    pub fn start_with(port: u16, extra: &[&str]) -> Self {
        let server = Self::spawn(port, extra);
        let deadline = Instant::now() + Duration::from_secs(10);
        while server.command("PING").as_deref() != Some("+PONG") {
            assert!(
                Instant::now() < deadline,
                "redis-server on {port} did not answer PING"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        server
    }

    fn spawn(port: u16, extra: &[&str]) -> Self {
        let dir = std::env::temp_dir().join(format!("mesh-redis-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let child = Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--protected-mode",
                "no",
                "--repl-diskless-sync-delay",
                "0",
                "--dir",
            ])
            .arg(&dir)
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start redis-server ({e}): these tests need it on PATH \
                     (Debian: apt-get install redis-server; .ci/run installs it)"
                )
            });
        Self {
            child: Some(child),
            port,
            dir,
        }
    }

    /// Waits until `check` holds for this server, or panics after 20 s naming `what`.
    pub fn wait_until(&self, what: &str, mut check: impl FnMut(&Self) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !check(self) {
            assert!(
                Instant::now() < deadline,
                "redis on {}: {what} not reached",
                self.port
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The whole reply to an inline command, read until the server stops sending for 50 ms.
    pub fn full_reply(&self, cmd: &str) -> String {
        let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.port)) else {
            return String::new();
        };
        let _ = s.set_read_timeout(Some(Duration::from_millis(50)));
        if s.write_all(format!("{cmd}\r\n").as_bytes()).is_err() {
            return String::new();
        }
        let mut out = Vec::new();
        let mut buf = [0u8; 8192];
        while let Ok(n) = s.read(&mut buf) {
            if n == 0 {
                break;
            }
            out.extend_from_slice(&buf[..n]);
        }
        String::from_utf8_lossy(&out).into_owned()
    }

    /// A replica of this server on a free port; returns once its link to this master is up.
    pub fn start_replica(&self) -> RedisServer {
        let replica = Self::start_with(
            free_port(),
            &["--replicaof", "127.0.0.1", &self.port.to_string()],
        );
        replica.wait_until("replica link up", |r| {
            r.full_reply("INFO replication")
                .contains("master_link_status:up")
        });
        replica
    }

    /// Its URL.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Sends one inline command; returns the first line of the reply.
    pub fn command(&self, cmd: &str) -> Option<String> {
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
        s.write_all(format!("{cmd}\r\n").as_bytes()).ok()?;
        let mut line = String::new();
        BufReader::new(s).read_line(&mut line).ok()?;
        Some(line.trim_end().to_owned())
    }

    /// Total commands the server has processed (`INFO stats` → `total_commands_processed`).
    pub fn commands_processed(&self) -> u64 {
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        s.write_all(b"INFO stats\r\n").unwrap();
        let mut buf = vec![0u8; 16 * 1024];
        let mut text = String::new();
        while !text.contains("total_commands_processed:") || !text.ends_with("\r\n") {
            let n = s.read(&mut buf).expect("read");
            assert!(n > 0, "connection closed");
            text.push_str(&String::from_utf8_lossy(&buf[..n]));
            if text.contains("total_commands_processed:")
                && text.contains("instantaneous_ops_per_sec")
            {
                break;
            }
        }
        text.lines()
            .find_map(|l| l.strip_prefix("total_commands_processed:"))
            .and_then(|v| v.trim().parse().ok())
            .expect("total_commands_processed")
    }

    /// SIGKILL, as a crash.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Three cluster masters, created with `redis-cli --cluster create`.
#[derive(Debug)]
pub struct RedisCluster {
    /// The masters.
    pub nodes: Vec<RedisServer>,
}

impl RedisCluster {
    /// Starts three masters and creates the cluster; returns once every node says ok.
    pub fn start() -> Self {
        let mut nodes = Vec::new();
        for _ in 0..3 {
            let port = free_port();
            let dir =
                std::env::temp_dir().join(format!("mesh-redis-{}-{port}", std::process::id()));
            let conf = dir.join("nodes.conf");
            let conf = conf.to_string_lossy().into_owned();
            nodes.push(RedisServer::start_with(
                port,
                &[
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    &conf,
                    "--cluster-node-timeout",
                    "2000",
                ],
            ));
        }
        let addrs: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let status = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addrs)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("redis-cli (package redis-tools) is needed for the cluster test");
        assert!(status.success(), "redis-cli --cluster create failed");
        for n in &nodes {
            n.wait_until("cluster_state:ok", |n| {
                let info = n.full_reply("CLUSTER INFO");
                info.contains("cluster_state:ok") && info.contains("cluster_known_nodes:3")
            });
        }
        Self { nodes }
    }

    /// Its `redis-cluster://` URL.
    pub fn url(&self) -> String {
        let mut url = format!("redis-cluster://127.0.0.1:{}", self.nodes[0].port);
        for (i, n) in self.nodes[1..].iter().enumerate() {
            url.push(if i == 0 { '?' } else { '&' });
            url.push_str(&format!("node=127.0.0.1:{}", n.port));
        }
        url
    }
}

/// A master, one replica, and three sentinels (quorum 2) watching service `mymaster`.
#[derive(Debug)]
pub struct RedisSentinels {
    /// The master at start.
    pub master: RedisServer,
    /// Its replica.
    pub replica: RedisServer,
    /// The sentinels.
    pub sentinels: Vec<RedisServer>,
}

impl RedisSentinels {
    /// Starts the topology; returns once every sentinel sees the replica and the others.
    pub fn start() -> Self {
        let master = RedisServer::start();
        let replica = master.start_replica();
        let mut sentinels = Vec::new();
        for _ in 0..3 {
            let port = free_port();
            let dir =
                std::env::temp_dir().join(format!("mesh-redis-{}-{port}", std::process::id()));
            std::fs::create_dir_all(&dir).expect("temp dir");
            let conf = dir.join("sentinel.conf");
            std::fs::write(
                &conf,
                format!(
                    "port {port}\nbind 127.0.0.1\nprotected-mode no\ndir {}\n\
                     sentinel monitor mymaster 127.0.0.1 {} 2\n\
                     sentinel down-after-milliseconds mymaster 1500\n\
                     sentinel failover-timeout mymaster 2000\n\
                     sentinel parallel-syncs mymaster 1\n",
                    dir.display(),
                    master.port
                ),
            )
            .expect("sentinel config");
            let s = RedisServer::spawn_sentinel(port, &conf.to_string_lossy(), dir);
            s.wait_until("sentinel answers", |s| {
                s.command("PING").as_deref() == Some("+PONG")
            });
            s.command("SENTINEL DEBUG info-period 1000 publish-period 500");
            sentinels.push(s);
        }
        for s in &sentinels {
            s.wait_until("sentinel sees the replica and the other sentinels", |s| {
                let reply = s.full_reply("SENTINEL MASTER mymaster");
                // A flat list of bulk strings: field, value, field, value ...
                let items: Vec<&str> = reply
                    .split("\r\n")
                    .filter(|l| !l.starts_with('$') && !l.starts_with('*'))
                    .collect();
                let field = |name: &str| {
                    items
                        .iter()
                        .position(|i| *i == name)
                        .and_then(|p| items.get(p + 1).copied())
                };
                field("num-slaves") == Some("1") && field("num-other-sentinels") == Some("2")
            });
        }
        Self {
            master,
            replica,
            sentinels,
        }
    }

    /// Its `redis-sentinel://` URL.
    pub fn url(&self) -> String {
        let mut url = format!(
            "redis-sentinel://127.0.0.1:{}?sentinelServiceName=mymaster",
            self.sentinels[0].port
        );
        for s in &self.sentinels[1..] {
            url.push_str(&format!("&node=127.0.0.1:{}", s.port));
        }
        url
    }
}

impl RedisServer {
    fn spawn_sentinel(port: u16, conf: &str, dir: PathBuf) -> Self {
        let child = Command::new("redis-server")
            .args([conf, "--sentinel"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server --sentinel");
        Self {
            child: Some(child),
            port,
            dir,
        }
    }
}
