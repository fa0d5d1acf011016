//! A mesh of real hosts on one machine, for tests and benches that must see what users see:
//! separate processes behind real interfaces (checksums, a 1500-byte MTU), on networks that
//! lose packets and partition.
//!
//! A [`Net`] is a set of Linux network namespaces: a switch (a bridge), `N` hosts each joined
//! to it by a veth pair with an IPv4 and an IPv6 address, and a host for Redis. Faults are
//! made in the kernel, not in our code: loss and one-way blocks with `nft` rules on a host,
//! a host's link set down, rate limits with `tc tbf`. Nodes are processes of their own (the
//! `testbed-node` binary of this crate, driven over its stdin: see [`Node`]).
//!
//! Everything a `Net` creates is named after this process and a counter, and removed when it
//! is dropped (a failing test's unwinding too), by the names it created, never by a pattern.
//! Needs root, `ip` (iproute2), `nft` (nftables) and `redis-server`; [`Net::new`] says which
//! one is missing rather than skipping anything.
//!
//! ```no_run
//! let net = mesh_testbed::Net::new(2, &[]).unwrap();
//! let redis = net.redis_url();
//! let mut a = net.node(0, &["--redis", &redis]);
//! let b = net.node(1, &["--redis", &redis]);
//! a.wait_nodes(2);
//! assert!(a.ask(&b.addr(), 1000).is_ok());
//! net.set_loss(1, 5).unwrap(); // 5 % of host 1's datagrams, both ways
//! ```

#![forbid(unsafe_code)]

use std::io::{BufRead, BufReader, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::Value;

/// Redis's port inside its namespace.
pub const REDIS_PORT: u16 = 6379;

/// What a test bed needs and did not find, or a command that failed.
#[derive(Debug)]
pub struct Missing(pub String);

impl std::fmt::Display for Missing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Missing {}

/// Runs a command to completion; its stderr in the error.
fn run(program: &str, args: &[&str]) -> Result<String, Missing> {
    let out = Command::new(program)
        .args(args)
        .output()
        .map_err(|e| Missing(format!("cannot run `{program}`: {e}")))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(Missing(format!(
            "`{program} {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

fn have(program: &str, package: &str) -> Result<(), Missing> {
    match Command::new(program)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
    {
        Ok(_) => Ok(()),
        Err(_) => Err(Missing(format!(
            "the test bed needs `{program}` (Debian package {package}): not found on PATH"
        ))),
    }
}

/// One host: its namespace and addresses.
#[derive(Debug, Clone)]
pub struct Host {
    /// The namespace's name.
    pub ns: String,
    /// Its IPv4 address.
    pub v4: Ipv4Addr,
    /// Its IPv6 address.
    pub v6: Ipv6Addr,
}

/// The virtual network. See the crate's documentation.
#[derive(Debug)]
pub struct Net {
    switch: String,
    hosts: Vec<Host>,
    redis_host: Host,
    redis: Mutex<Option<Child>>,
    /// Host indexes whose nft table exists.
    tables: Mutex<Vec<usize>>,
}

static NETS: AtomicU32 = AtomicU32::new(0);

/// The IPv4 address of host `i` (Redis's host is 250).
fn v4(i: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 99, 0, i)
}

fn v6(i: u8) -> Ipv6Addr {
    Ipv6Addr::new(0xfd00, 0x99, 0, 0, 0, 0, 0, u16::from(i))
}

impl Net {
    /// `hosts` hosts and a Redis host, joined by a bridge; MTU 1500 except the hosts listed in
    /// `mtu` (index, MTU). Redis is started in its namespace.
    pub fn new(hosts: usize, mtu: &[(usize, u32)]) -> Result<Net, Missing> {
        Self::preflight()?;
        let id = format!(
            "mlt{}-{}",
            std::process::id(),
            NETS.fetch_add(1, Ordering::Relaxed)
        );
        let switch = format!("{id}-sw");
        let mut net = Net {
            switch: switch.clone(),
            hosts: Vec::new(),
            redis_host: Host {
                ns: format!("{id}-redis"),
                v4: v4(250),
                v6: v6(250),
            },
            redis: Mutex::new(None),
            tables: Mutex::new(Vec::new()),
        };
        run("ip", &["netns", "add", &switch])?;
        let sw = |args: &[&str]| {
            let mut a = vec!["-n", switch.as_str()];
            a.extend_from_slice(args);
            run("ip", &a)
        };
        sw(&[
            "link",
            "add",
            "br0",
            "type",
            "bridge",
            "mcast_snooping",
            "0",
        ])?;
        sw(&["link", "set", "br0", "up"])?;
        for i in 0..hosts {
            let host = Host {
                ns: format!("{id}-h{i}"),
                v4: v4(10 + i as u8),
                v6: v6(10 + i as u8),
            };
            let m = mtu.iter().find(|(h, _)| *h == i).map_or(1500, |(_, m)| *m);
            net.attach(&host, &format!("v{i}"), m)?;
            net.hosts.push(host);
        }
        let r = net.redis_host.clone();
        net.attach(&r, "vr", 1500)?;
        net.start_redis()?;
        Ok(net)
    }

    fn preflight() -> Result<(), Missing> {
        have("ip", "iproute2")?;
        have("nft", "nftables")?;
        have("redis-server", "redis-server")?;
        let uid = run("id", &["-u"])?;
        if uid.trim() != "0" {
            return Err(Missing(format!(
                "the test bed creates network namespaces: it needs root (uid 0), not uid {}",
                uid.trim()
            )));
        }
        Ok(())
    }

    /// Creates `host`'s namespace and its veth pair to the bridge (`port` on the switch side,
    /// `eth0` on the host's).
    fn attach(&self, host: &Host, port: &str, mtu: u32) -> Result<(), Missing> {
        run("ip", &["netns", "add", &host.ns])?;
        let mtu = mtu.to_string();
        let sw = self.switch.as_str();
        run(
            "ip",
            &[
                "-n", sw, "link", "add", port, "mtu", &mtu, "type", "veth", "peer", "name", "eth0",
                "mtu", &mtu, "netns", &host.ns,
            ],
        )?;
        run(
            "ip",
            &["-n", sw, "link", "set", port, "master", "br0", "up"],
        )?;
        let h = |args: &[&str]| {
            let mut a = vec!["-n", host.ns.as_str()];
            a.extend_from_slice(args);
            run("ip", &a)
        };
        // A link set down keeps its IPv6 address (Linux drops it by default), so that healing
        // a partition is setting it up again.
        for conf in ["all", "default"] {
            run(
                "ip",
                &[
                    "netns",
                    "exec",
                    &host.ns,
                    "sysctl",
                    "-qw",
                    &format!("net.ipv6.conf.{conf}.keep_addr_on_down=1"),
                ],
            )?;
        }
        h(&["addr", "add", &format!("{}/24", host.v4), "dev", "eth0"])?;
        h(&[
            "addr",
            "add",
            &format!("{}/64", host.v6),
            "dev",
            "eth0",
            "nodad",
        ])?;
        h(&["link", "set", "lo", "up"])?;
        h(&["link", "set", "eth0", "up"])?;
        Ok(())
    }

    fn start_redis(&self) -> Result<(), Missing> {
        let dir = std::env::temp_dir().join(&self.redis_host.ns);
        std::fs::create_dir_all(&dir).map_err(|e| Missing(format!("temp dir: {e}")))?;
        let child = Command::new("ip")
            .args(["netns", "exec", &self.redis_host.ns, "redis-server"])
            .args(["--port", &REDIS_PORT.to_string()])
            .args(["--bind", &self.redis_host.v4.to_string()])
            .args(["--save", "", "--appendonly", "no", "--protected-mode", "no"])
            .arg("--dir")
            .arg(&dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| Missing(format!("cannot start redis-server: {e}")))?;
        *self.redis.lock().expect("lock") = Some(child);
        // Ready when it accepts a connection, from inside its namespace.
        let deadline = Instant::now() + Duration::from_secs(10);
        let addr = format!("{}:{REDIS_PORT}", self.redis_host.v4);
        loop {
            let ok = Command::new("ip")
                .args(["netns", "exec", &self.redis_host.ns])
                .args(["redis-cli", "-h", &self.redis_host.v4.to_string()])
                .args(["-p", &REDIS_PORT.to_string(), "ping"])
                .output()
                .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("PONG"));
            if ok {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(Missing(format!("redis-server on {addr} did not answer")));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The hosts.
    pub fn hosts(&self) -> &[Host] {
        &self.hosts
    }

    /// Host `i`.
    pub fn host(&self, i: usize) -> &Host {
        &self.hosts[i]
    }

    /// The Redis URL, as the hosts reach it.
    pub fn redis_url(&self) -> String {
        format!("redis://{}:{REDIS_PORT}", self.redis_host.v4)
    }

    /// Starts a `testbed-node` on host `i` with `args` (see the binary's documentation), and
    /// waits for its `READY`.
    pub fn node(&self, i: usize, args: &[&str]) -> Node {
        Node::spawn(&self.hosts[i].ns, args)
    }

    /// Runs `args` with `ip -n <host i>`.
    pub fn ip(&self, i: usize, args: &[&str]) -> Result<String, Missing> {
        let mut a = vec!["-n", self.hosts[i].ns.as_str()];
        a.extend_from_slice(args);
        run("ip", &a)
    }

    /// Sets host `i`'s link down (a partition from everything, Redis included) or up.
    pub fn set_link(&self, i: usize, up: bool) -> Result<(), Missing> {
        self.ip(i, &["link", "set", "eth0", if up { "up" } else { "down" }])
            .map(|_| ())
    }

    /// Runs `nft` in host `i`'s namespace.
    fn nft(&self, i: usize, args: &[&str]) -> Result<(), Missing> {
        let mut a = vec!["netns", "exec", self.hosts[i].ns.as_str(), "nft"];
        a.extend_from_slice(args);
        run("ip", &a).map(|_| ())
    }

    /// Host `i`'s filter table (`inet mltb`, an input and an output chain), created once.
    fn table(&self, i: usize) -> Result<(), Missing> {
        let mut t = self.tables.lock().expect("lock");
        if t.contains(&i) {
            return Ok(());
        }
        self.nft(i, &["add", "table", "inet", "mltb"])?;
        for (chain, hook) in [("in", "input"), ("out", "output")] {
            self.nft(
                i,
                &[
                    "add",
                    "chain",
                    "inet",
                    "mltb",
                    chain,
                    &format!("{{ type filter hook {hook} priority 0; }}"),
                ],
            )?;
        }
        t.push(i);
        Ok(())
    }

    /// Drops `percent` % of the UDP datagrams host `i` sends and of those it receives
    /// (`nft ... numgen random mod 100 < P drop`), on top of any rule already there.
    pub fn set_loss(&self, i: usize, percent: u32) -> Result<(), Missing> {
        self.table(i)?;
        for chain in ["in", "out"] {
            self.nft(
                i,
                &[
                    "add",
                    "rule",
                    "inet",
                    "mltb",
                    chain,
                    "meta",
                    "l4proto",
                    "udp",
                    "numgen",
                    "random",
                    "mod",
                    "100",
                    "<",
                    &percent.to_string(),
                    "drop",
                ],
            )?;
        }
        Ok(())
    }

    /// Host `i` can no longer send to host `j` (both address families); `j` still reaches
    /// `i`: an asymmetric partition.
    pub fn block_to(&self, i: usize, j: usize) -> Result<(), Missing> {
        self.table(i)?;
        let h = &self.hosts[j];
        for (family, addr) in [("ip", h.v4.to_string()), ("ip6", h.v6.to_string())] {
            self.nft(
                i,
                &[
                    "add", "rule", "inet", "mltb", "out", family, "daddr", &addr, "drop",
                ],
            )?;
        }
        Ok(())
    }

    /// Host `i` can no longer reach Redis (both ways); everything else still flows.
    pub fn block_redis(&self, i: usize) -> Result<(), Missing> {
        self.table(i)?;
        let r = self.redis_host.v4.to_string();
        self.nft(
            i,
            &[
                "add", "rule", "inet", "mltb", "out", "ip", "daddr", &r, "drop",
            ],
        )?;
        self.nft(
            i,
            &[
                "add", "rule", "inet", "mltb", "in", "ip", "saddr", &r, "drop",
            ],
        )
    }

    /// Removes every nft rule of host `i` (loss, blocks): its network is whole again.
    pub fn clear_rules(&self, i: usize) -> Result<(), Missing> {
        self.table(i)?;
        self.nft(i, &["flush", "table", "inet", "mltb"])
    }

    /// Limits what host `i` sends to `rate` (a `tc` rate such as `"10mbit"`) with a token
    /// bucket filter.
    pub fn set_rate(&self, i: usize, rate: &str) -> Result<(), Missing> {
        let ns = self.hosts[i].ns.as_str();
        run(
            "tc",
            &[
                "-n", ns, "qdisc", "replace", "dev", "eth0", "root", "tbf", "rate", rate, "burst",
                "32kbit", "latency", "50ms",
            ],
        )
        .map(|_| ())
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        if let Some(mut r) = self.redis.lock().map(|mut g| g.take()).ok().flatten() {
            let _ = r.kill();
            let _ = r.wait();
        }
        let _ = std::fs::remove_dir_all(std::env::temp_dir().join(&self.redis_host.ns));
        // Deleting a namespace removes its interfaces (and the veth pairs with them).
        for ns in self
            .hosts
            .iter()
            .map(|h| h.ns.clone())
            .chain([self.redis_host.ns.clone(), self.switch.clone()])
        {
            let _ = run("ip", &["netns", "del", &ns]);
        }
    }
}

/// A `testbed-node` process on one host, driven by one-line commands, each answered by one
/// line of JSON. Killed (by its pid) when dropped.
#[derive(Debug)]
pub struct Node {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    addr: String,
}

impl Node {
    fn spawn(ns: &str, args: &[&str]) -> Node {
        let mut child = Command::new("ip")
            .args(["netns", "exec", ns])
            .arg(node_binary())
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("testbed-node starts");
        let stdin = child.stdin.take().expect("stdin");
        let stdout = BufReader::new(child.stdout.take().expect("stdout"));
        let mut n = Node {
            child,
            stdin,
            stdout,
            addr: String::new(),
        };
        let ready = n.line();
        let addr = ready
            .strip_prefix("READY ")
            .unwrap_or_else(|| panic!("testbed-node on {ns}: {ready}"));
        n.addr = addr.to_owned();
        n
    }

    fn line(&mut self) -> String {
        let mut l = String::new();
        let _ = self.stdout.read_line(&mut l);
        assert!(!l.is_empty(), "testbed-node {} ended", self.addr);
        l.trim_end().to_owned()
    }

    /// The node's address (`ip:port`).
    pub fn addr(&self) -> String {
        self.addr.clone()
    }

    /// The process's pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends a command and reads its one-line JSON answer.
    pub fn cmd(&mut self, command: &str) -> Value {
        writeln!(self.stdin, "{command}").expect("the node reads its commands");
        self.stdin.flush().expect("flush");
        let l = self.line();
        serde_json::from_str(&l).unwrap_or_else(|e| panic!("{command}: {e}: {l}"))
    }

    /// The nodes in this node's view, as `(address, type, values)`.
    pub fn nodes(&mut self) -> Vec<(String, String, Value)> {
        let v = self.cmd("nodes");
        v.as_array()
            .expect("an array")
            .iter()
            .map(|r| {
                (
                    r["key"].as_str().unwrap_or_default().to_owned(),
                    r["type"].as_str().unwrap_or_default().to_owned(),
                    r["values"].clone(),
                )
            })
            .collect()
    }

    /// Waits (up to 30 s) until this node's view has `n` nodes, itself included.
    pub fn wait_nodes(&mut self, n: usize) {
        self.wait_view(&format!("{n} nodes"), |v| v.len() == n);
    }

    /// Waits (up to 30 s) until `cond` holds for this node's view; how long that took.
    pub fn wait_view(
        &mut self,
        what: &str,
        mut cond: impl FnMut(&[(String, String, Value)]) -> bool,
    ) -> Duration {
        let t0 = Instant::now();
        loop {
            let v = self.nodes();
            if cond(&v) {
                return t0.elapsed();
            }
            assert!(
                t0.elapsed() < Duration::from_secs(30),
                "{}: view never had {what}: {v:?}",
                self.addr
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// One echo request to `addr`, waiting up to `timeout_ms`: `Ok` with the round trip, or
    /// the error's text.
    pub fn ask(&mut self, addr: &str, timeout_ms: u64) -> Result<Duration, String> {
        let v = self.cmd(&format!("ask {addr} {timeout_ms}"));
        if v["ok"].as_bool() == Some(true) {
            Ok(Duration::from_micros(v["us"].as_u64().unwrap_or(0)))
        } else {
            Err(v["error"].as_str().unwrap_or("?").to_owned())
        }
    }

    /// Asks the process to leave the mesh and exit.
    pub fn stop(mut self) {
        let _ = writeln!(self.stdin, "quit");
        let _ = self.stdin.flush();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        // Only the process this handle started, by its pid.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The `testbed-node` binary: beside the running executable, or one directory up (where
/// cargo puts a package's binaries for its integration tests, which run from `deps/`).
fn node_binary() -> std::path::PathBuf {
    let exe = std::env::current_exe().expect("own path");
    let dirs = exe.ancestors().skip(1).take(2);
    for d in dirs {
        let bin = d.join("testbed-node");
        if bin.exists() {
            return bin;
        }
    }
    panic!(
        "testbed-node not found beside {}: build it (cargo build -p mesh-testbed)",
        exe.display()
    )
}

/// Parses a JSON number field as `u64` (0 if absent).
pub fn num(v: &Value, field: &str) -> u64 {
    v[field].as_u64().unwrap_or(0)
}

/// An address of host `i`'s node for the other family: `ip` replaced, port kept.
pub fn with_ip(addr: &str, ip: IpAddr) -> String {
    let port = addr.rsplit(':').next().unwrap_or("0");
    match ip {
        IpAddr::V4(v) => format!("{v}:{port}"),
        IpAddr::V6(v) => format!("[{v}]:{port}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_tool_is_named_with_its_package() {
        let e = have("mesh-testbed-no-such-tool", "some-package").unwrap_err();
        assert!(e.0.contains("`mesh-testbed-no-such-tool`"), "{e}");
        assert!(e.0.contains("some-package"), "{e}");
    }

    #[test]
    fn addresses_follow_the_plan() {
        assert_eq!(v4(10).to_string(), "10.99.0.10");
        assert_eq!(v6(10).to_string(), "fd00:99::a");
        assert_eq!(
            with_ip("10.99.0.10:7000", IpAddr::V6(v6(11))),
            "[fd00:99::b]:7000"
        );
    }
}

/// The README's examples, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
