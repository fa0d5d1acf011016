//! The layout users run: every contender as two processes (this binary again, as `mesh-bench
//! child server|client ...`), on one CPU (both pinned to CPU 0: the two processes take turns,
//! as on a loaded host) or unpinned, interleaved in rounds. The CPU time of both processes per
//! operation is read from `/proc/<pid>/task/*/schedstat` (nanoseconds on a CPU, every thread).

pub(crate) mod child;
mod idle;

pub(crate) use self::idle::idle;

use std::io::{BufRead, BufReader, Write};
use std::net::IpAddr;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::Duration;

use self::child::Contender;
use crate::report::Row;
use crate::Args;

/// Where the two processes of a contender run.
#[derive(Debug, Clone)]
pub(crate) struct Placement {
    /// Pin both to CPU 0.
    pub(crate) one_cpu: bool,
    /// `ip netns exec` prefixes and addresses for the server and the client (the hosts
    /// layout), or none (loopback).
    pub(crate) netns: Option<[(String, IpAddr); 2]>,
}

impl Placement {
    pub(crate) fn loopback(one_cpu: bool) -> Self {
        Self {
            one_cpu,
            netns: None,
        }
    }

    /// Both processes in network namespaces of their own, joined by a veth pair and a
    /// bridge (MTU 1500, checksums on): `net`'s hosts 0 and 1.
    pub(crate) fn hosts(one_cpu: bool, net: &mesh_testbed::Net) -> Self {
        let side = |i: usize| {
            let h = net.host(i);
            (h.ns.clone(), IpAddr::V4(h.v4))
        };
        Self {
            one_cpu,
            netns: Some([side(0), side(1)]),
        }
    }

    fn label(&self) -> &'static str {
        match (self.one_cpu, self.netns.is_some()) {
            (true, false) => "1 CPU",
            (false, false) => "2 CPUs",
            (true, true) => "veth, 1 CPU",
            (false, true) => "veth, 2 CPUs",
        }
    }
}

/// One process of a pair, talking lines over its stdin and stdout.
struct Proc {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl Proc {
    fn spawn(args: &[String], placement: &Placement, side: usize) -> Proc {
        let exe = std::env::current_exe().expect("own path");
        let mut cmd = match &placement.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", &ns[side].0]).arg(exe);
                c
            }
            None => Command::new(exe),
        };
        cmd.arg("child").args(args);
        if placement.one_cpu {
            cmd.args(["--cpu", "0"]);
        }
        if let Some(ns) = &placement.netns {
            cmd.args(["--bind", &ns[side].1.to_string()]);
        }
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("mesh-bench child starts");
        let stdin = child.stdin.take().expect("stdin");
        let stdout = BufReader::new(child.stdout.take().expect("stdout"));
        Proc {
            child,
            stdin,
            stdout,
        }
    }

    fn line(&mut self) -> String {
        let mut l = String::new();
        self.stdout
            .read_line(&mut l)
            .expect("a line from the child");
        assert!(!l.is_empty(), "the child ended early");
        l.trim_end().to_owned()
    }

    fn ask(&mut self, command: &str) -> String {
        writeln!(self.stdin, "{command}").expect("the child reads");
        self.stdin.flush().expect("flush");
        self.line()
    }

    /// Nanoseconds every thread of this process spent on a CPU so far.
    fn cpu_ns(&self) -> u64 {
        cpu_ns(self.child.id())
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        // Only the processes this bench started, by their pids.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Nanoseconds on a CPU of every thread of `pid`.
pub(crate) fn cpu_ns(pid: u32) -> u64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    tasks
        .filter_map(Result::ok)
        .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}

/// A contender's server and client processes.
pub(crate) struct Pair {
    server: Proc,
    client: Proc,
}

impl Pair {
    pub(crate) fn start(contender: Contender, placement: &Placement, extra: &[String]) -> Pair {
        let name = contender_arg(contender);
        let mut args = vec!["server".to_owned(), name.clone()];
        args.extend(extra.iter().cloned());
        let mut server = Proc::spawn(&args, placement, 0);
        let ready = server.line();
        let mut words = ready.split_whitespace().skip(1);
        let addr = words.next().expect("READY <addr>").to_owned();
        let mut args = vec!["client".to_owned(), name, "--to".to_owned(), addr];
        if let Some(cert) = words.next() {
            args.extend(["--cert".to_owned(), cert.to_owned()]);
        }
        args.extend(extra.iter().cloned());
        let mut client = Proc::spawn(&args, placement, 1);
        assert_eq!(client.line(), "READY", "client ready");
        Pair { server, client }
    }

    /// Runs `command` on the client; its answer, and the CPU both processes spent meanwhile.
    fn run(&mut self, command: &str) -> (String, u64) {
        let before = self.server.cpu_ns() + self.client.cpu_ns();
        let answer = self.client.ask(command);
        let spent = self.server.cpu_ns() + self.client.cpu_ns() - before;
        (answer, spent)
    }

    /// Messages and bytes the server has received.
    fn received(&mut self) -> (u64, u64) {
        let a = self.server.ask("count");
        let v: Vec<u64> = a
            .split_whitespace()
            .skip(1)
            .filter_map(|w| w.parse().ok())
            .collect();
        (
            v.first().copied().unwrap_or(0),
            v.get(1).copied().unwrap_or(0),
        )
    }
}

fn contender_arg(c: Contender) -> String {
    clap::ValueEnum::to_possible_value(&c)
        .expect("a name")
        .get_name()
        .to_owned()
}

/// Accumulates a contender's results over the rounds.
#[derive(Default)]
struct Tally {
    latencies: Vec<Duration>,
    ops: u64,
    bytes: u64,
    cpu_ns: u64,
    elapsed: Duration,
    sent: u64,
}

impl Tally {
    fn row(&self, scenario: &str, contender: &str) -> Row {
        let mut row = Row::new(scenario, contender);
        if !self.latencies.is_empty() {
            row = row.latencies(self.latencies.clone(), self.elapsed);
        } else if !self.elapsed.is_zero() {
            row.per_sec = Some(self.ops as f64 / self.elapsed.as_secs_f64());
        }
        if self.bytes > 0 {
            row.mb_per_sec = Some(self.bytes as f64 / 1e6 / self.elapsed.as_secs_f64());
        }
        if self.ops > 0 {
            row.cpu_us_per_op = Some(self.cpu_ns as f64 / 1e3 / self.ops as f64);
        }
        row
    }
}

fn parse_lat(line: &str) -> Vec<Duration> {
    assert!(line.starts_with("LAT"), "{line}");
    line.split_whitespace()
        .skip(1)
        .filter_map(|w| w.parse().ok())
        .map(Duration::from_nanos)
        .collect()
}

fn parse_sent(line: &str) -> (u64, Duration) {
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|w| w.parse().ok())
        .collect();
    (v[0], Duration::from_nanos(v[1]))
}

/// The round-trip contenders, with the first as the reference of the ratios (mesh-link) and
/// the floor (blocking std UDP) second.
const RTT: [(Contender, &str); 6] = [
    (Contender::Mesh, "mesh-link request"),
    (Contender::UdpStd, "raw UDP ping-pong (std, blocking)"),
    (Contender::UdpTokio, "UDP ping-pong (tokio)"),
    (Contender::Tcp, "TCP ping-pong (tokio, nodelay)"),
    (Contender::Http, "HTTP/1.1 keep-alive (hyper)"),
    (Contender::Quic, "QUIC bidi stream (quinn)"),
];

/// `rtt`, as two processes per contender: back-to-back 64-byte round trips, on one CPU and
/// on two.
pub(crate) fn rtt(args: &Args, placements: &[Placement], extra: &[String]) -> Vec<Row> {
    let mut rows = Vec::new();
    for placement in placements {
        let mut pairs: Vec<Pair> = RTT
            .iter()
            .map(|(c, _)| Pair::start(*c, placement, extra))
            .collect();
        let slice = slice(args, pairs.len());
        let mut tallies: Vec<Tally> = RTT.iter().map(|_| Tally::default()).collect();
        for p in &mut pairs {
            let _ = p.run("rtt 200"); // warm up
        }
        let mut ping = PingCli::start(args, placement);
        for _ in 0..args.rounds {
            for (p, t) in pairs.iter_mut().zip(&mut tallies) {
                let (line, cpu) = p.run(&format!("rtt {}", slice.as_millis()));
                let l = parse_lat(&line);
                t.ops += l.len() as u64;
                t.elapsed += l.iter().sum::<Duration>();
                t.latencies.extend(l);
                t.cpu_ns += cpu;
            }
            if let Some(p) = ping.as_mut() {
                p.round();
            }
        }
        let scenario = format!("rtt {}", placement.label());
        let mut group: Vec<Row> = RTT
            .iter()
            .zip(&tallies)
            .map(|((_, name), t)| t.row(&scenario, name))
            .collect();
        drop(pairs);
        if let Some(row) = ping.and_then(|p| p.finish(&scenario)) {
            group.insert(1, row);
        }
        crate::report::ratios(&mut group);
        rows.extend(group);
    }
    rows
}

/// `oneway`, as two processes: 64-byte reliable messages against UDP datagrams, the rate the
/// receiver counts, and the CPU both processes spent per message received.
pub(crate) fn oneway(args: &Args, placements: &[Placement], extra: &[String]) -> Vec<Row> {
    // (contender, row, the command's suffix): mesh-link both ways a sender may use it, one
    // future per message and an outbox.
    let contenders = [
        (Contender::Mesh, "mesh-link reliable one-way", ""),
        (
            Contender::Mesh,
            "mesh-link reliable one-way, outbox",
            " outbox",
        ),
        (
            Contender::UdpTokio,
            "UDP datagrams (tokio), no acknowledgement",
            "",
        ),
    ];
    let mut rows = Vec::new();
    for placement in placements {
        let mut pairs: Vec<Pair> = contenders
            .iter()
            .map(|(c, _, _)| Pair::start(*c, placement, extra))
            .collect();
        let slice = slice(args, pairs.len());
        let mut tallies: Vec<Tally> = contenders.iter().map(|_| Tally::default()).collect();
        for (p, (_, _, how)) in pairs.iter_mut().zip(&contenders) {
            let _ = p.run(&format!("oneway 200{how}"));
        }
        let mut base: Vec<u64> = pairs.iter_mut().map(|p| p.received().0).collect();
        for _ in 0..args.rounds {
            for (((p, t), b), (_, _, how)) in pairs
                .iter_mut()
                .zip(&mut tallies)
                .zip(&mut base)
                .zip(&contenders)
            {
                let (line, cpu) = p.run(&format!("oneway {}{how}", slice.as_millis()));
                let (sent, took) = parse_sent(&line);
                // Let the receiver finish what is in its socket before counting.
                std::thread::sleep(Duration::from_millis(50));
                let got = p.received().0;
                t.ops += got - *b;
                t.sent += sent;
                *b = got;
                t.elapsed += took;
                t.cpu_ns += cpu;
            }
        }
        let scenario = format!("oneway {}", placement.label());
        let mut group: Vec<Row> = contenders
            .iter()
            .zip(&tallies)
            .map(|((_, name, _), t)| {
                let mut r = t.row(&scenario, name);
                r.lost = Some(t.sent.saturating_sub(t.ops));
                r
            })
            .collect();
        crate::report::ratios(&mut group);
        rows.extend(group);
    }
    rows
}

/// `bulk`, as two processes: 1 MiB messages against a TCP byte stream written from one reused
/// buffer.
pub(crate) fn bulk(args: &Args, placements: &[Placement], extra: &[String]) -> Vec<Row> {
    let size = 1usize << 20;
    // On loopback, mesh-link also runs as it would on a network: datagrams of an Ethernet
    // path's size (1472 bytes) with checksums, instead of loopback's 32 KB ones. That row,
    // not the first, says what to expect between hosts (a veth pair between two network
    // namespaces measured within 20% of it).
    // Across network namespaces, the same library with path-MTU discovery off (1200-byte
    // datagrams, as before it): what the discovery buys, in the same run.
    let hosts = placements.iter().any(|p| p.netns.is_some());
    let contenders = [
        (Contender::Mesh, "mesh-link 1 MiB messages", &[][..], true),
        (
            Contender::Mesh,
            "mesh-link 1 MiB, 1472-B datagrams, checksums",
            &["--as-network", "--mtu", "1472"][..],
            !hosts,
        ),
        (
            Contender::Mesh,
            "mesh-link 1 MiB, no path-MTU probing (1200 B)",
            &["--max-mtu", "1200"][..],
            hosts,
        ),
        (Contender::Tcp, "TCP stream, 1 MiB writes", &[][..], true),
    ];
    let contenders: Vec<_> = contenders
        .into_iter()
        .filter(|c| c.3)
        .map(|(c, name, args, _)| (c, name, args))
        .collect();
    let mut rows = Vec::new();
    for placement in placements {
        let mut pairs: Vec<Pair> = contenders
            .iter()
            .map(|(c, _, args)| {
                let mut all = extra.to_vec();
                all.extend(args.iter().map(|a| (*a).to_owned()));
                Pair::start(*c, placement, &all)
            })
            .collect();
        let slice = slice(args, pairs.len());
        let mut tallies: Vec<Tally> = contenders.iter().map(|_| Tally::default()).collect();
        for p in &mut pairs {
            let _ = p.run(&format!("bulk 300 {size}"));
        }
        let mut base: Vec<u64> = pairs.iter_mut().map(|p| p.received().1).collect();
        for _ in 0..args.rounds {
            for ((p, t), b) in pairs.iter_mut().zip(&mut tallies).zip(&mut base) {
                let (line, cpu) = p.run(&format!("bulk {} {size}", slice.as_millis()));
                let (_, took) = parse_sent(&line);
                std::thread::sleep(Duration::from_millis(50));
                let got = p.received().1;
                t.bytes += got - *b;
                t.ops += (got - *b) / size as u64;
                *b = got;
                t.elapsed += took;
                t.cpu_ns += cpu;
            }
        }
        let scenario = format!("bulk 1 MiB {}", placement.label());
        let mut group: Vec<Row> = contenders
            .iter()
            .zip(&tallies)
            .map(|((_, name, _), t)| t.row(&scenario, name))
            .collect();
        crate::report::ratios(&mut group);
        rows.extend(group);
    }
    rows
}

/// The `mesh-link` binary beside this one (`cargo build --release -p mesh-link --features
/// cli`), if it was built.
fn mesh_link_binary() -> Option<std::path::PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let bin = exe.parent()?.join("mesh-link");
    bin.exists().then_some(bin)
}

/// One run of `mesh-link ping`: its p50, p90 and p99 (µs), and the CPU time of both processes
/// per ping (µs).
struct PingRun {
    percentiles: [f64; 3],
    cpu_us: f64,
}

/// `mesh-link ping --interval 0` against a `mesh-link node`, both the real command-line tool
/// as a user runs them: the median over the rounds of each run's percentiles, and the CPU
/// time of both processes per ping. Its rounds run between the other contenders' (see
/// [`rtt`]), so that its ratios to them come from the same minutes.
struct PingCli {
    bin: std::path::PathBuf,
    one_cpu: bool,
    port: u16,
    server: Child,
    /// Pings per round.
    count: u64,
    rounds: Vec<PingRun>,
}

impl PingCli {
    /// Starts the node and warms it up; `None` (said why) when the tool is not built, the
    /// placement is across namespaces, or the node does not answer.
    fn start(args: &Args, placement: &Placement) -> Option<Self> {
        if placement.netns.is_some() {
            // The node and ping run on loopback; across namespaces the mesh-link request row
            // stands for them.
            return None;
        }
        let Some(bin) = mesh_link_binary() else {
            eprintln!(
                "mesh-link ping row skipped: build the tool first (cargo build --release -p \
                 mesh-link --features cli)"
            );
            return None;
        };
        let port = mesh_discovery::testing::free_port();
        let one_cpu = placement.one_cpu;
        let server = Self::command(&bin, one_cpu)
            .args(["node", "--bind", &format!("127.0.0.1:{port}")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .ok()?;
        let cli = Self {
            bin,
            one_cpu,
            port,
            server,
            count: (slice(args, RTT.len() + 1).as_micros() / 40).max(1000) as u64,
            rounds: Vec::new(),
        };
        // Until the node answers (it registers on its in-memory registry first).
        let ready = (0..100).any(|_| {
            std::thread::sleep(Duration::from_millis(50));
            cli.ping(1).is_some()
        });
        if !ready {
            eprintln!("mesh-link ping row skipped: the node did not answer");
            return None;
        }
        let _ = cli.ping(2000); // warm up
        Some(cli)
    }

    /// The tool, pinned to CPU 0 on the one-CPU placement.
    fn command(bin: &std::path::Path, one_cpu: bool) -> Command {
        if one_cpu {
            let mut t = Command::new("taskset");
            t.args(["-c", "0"]).arg(bin);
            t
        } else {
            Command::new(bin)
        }
    }

    /// One run of `count` pings.
    fn ping(&self, count: u64) -> Option<PingRun> {
        let before = cpu_ns(self.server.id());
        let out = Self::command(&self.bin, self.one_cpu)
            .args([
                "ping",
                "127.0.0.1",
                &self.port.to_string(),
                "--interval",
                "0",
            ])
            .args(["--quiet", "--count", &count.to_string()])
            .output()
            .ok()?;
        let server_ns = cpu_ns(self.server.id()) - before;
        let text = String::from_utf8_lossy(&out.stdout);
        // "N answers of N, p50 X µs, p90 Y µs, p99 Z µs, CPU per ping W µs"
        let nums: Vec<f64> = text
            .split([',', ' '])
            .filter_map(|w| w.parse::<f64>().ok())
            .collect();
        let [n, _, p50, p90, p99, cpu] = nums[..] else {
            eprintln!("mesh-link ping said: {text}");
            return None;
        };
        Some(PingRun {
            percentiles: [p50, p90, p99],
            cpu_us: cpu + server_ns as f64 / 1e3 / n,
        })
    }

    /// One measured round.
    fn round(&mut self) {
        if let Some(r) = self.ping(self.count) {
            self.rounds.push(r);
        }
    }

    /// The row, if any round answered (the node stops when `self` drops).
    fn finish(self, scenario: &str) -> Option<Row> {
        if self.rounds.is_empty() {
            eprintln!("mesh-link ping row skipped: the node did not answer");
            return None;
        }
        let rounds = &self.rounds;
        let median = |f: fn(&PingRun) -> f64| {
            let mut v: Vec<f64> = rounds.iter().map(f).collect();
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        };
        let mut row = Row::new(scenario, "mesh-link ping CLI (--interval 0)");
        row.p50_us = Some(median(|r| r.percentiles[0]));
        row.p90_us = Some(median(|r| r.percentiles[1]));
        row.p99_us = Some(median(|r| r.percentiles[2]));
        row.cpu_us_per_op = Some(median(|r| r.cpu_us));
        row.samples = rounds.len();
        Some(row)
    }
}

impl Drop for PingCli {
    fn drop(&mut self) {
        // Ours, by its pid (through the handle).
        let _ = self.server.kill();
        let _ = self.server.wait();
    }
}

/// What node-compare runs: mesh-link as two processes (unpinned, loopback, as the Node
/// original's two processes run), one `scenario` (`rtt`, `oneway` or `bulk`) for `secs`.
pub(crate) fn mesh_pair_row(scenario: &str, secs: u64, contender: &str) -> Row {
    let mut pair = Pair::start(Contender::Mesh, &Placement::loopback(false), &[]);
    let size = 1usize << 20;
    let command = |ms: u64| match scenario {
        "rtt" => format!("rtt {ms}"),
        "oneway" => format!("oneway {ms}"),
        _ => format!("bulk {ms} {size}"),
    };
    let _ = pair.run(&command(200)); // warm up
    let base = pair.received();
    let (line, cpu) = pair.run(&command(secs * 1000));
    let mut t = Tally {
        cpu_ns: cpu,
        ..Tally::default()
    };
    let scenario_name = format!("vs node {scenario}");
    if scenario == "rtt" {
        let l = parse_lat(&line);
        t.ops = l.len() as u64;
        t.elapsed = l.iter().sum();
        t.latencies = l;
        return t.row(&scenario_name, contender);
    }
    let (sent, took) = parse_sent(&line);
    std::thread::sleep(Duration::from_millis(50));
    let got = pair.received();
    t.elapsed = took;
    if scenario == "oneway" {
        t.ops = got.0 - base.0;
        let mut row = t.row(&scenario_name, contender);
        row.lost = Some(sent.saturating_sub(t.ops));
        row
    } else {
        t.bytes = got.1 - base.1;
        t.ops = t.bytes / size as u64;
        t.row(&scenario_name, contender)
    }
}

fn slice(args: &Args, contenders: usize) -> Duration {
    Duration::from_secs(args.duration) / (args.rounds * contenders as u32).max(1)
}
