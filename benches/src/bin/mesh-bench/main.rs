//! `mesh-bench <scenario>`: mesh-link against what users would use instead, in one process
//! run, interleaved in rounds (A B A B …) so that no contender gets a quieter machine. Prints
//! a table with the ratio to each baseline (`--json` for machines). All on 127.0.0.1.
//!
//! ```text
//! cargo run --release -p mesh-benches --bin mesh-bench -- all
//! cargo run --release -p mesh-benches --bin mesh-bench -- rtt --duration 10 --json
//! ```
#![allow(
    clippy::print_stdout,
    clippy::print_stderr,
    reason = "a command-line tool prints its results"
)]

mod contenders;
mod prelude;
mod procs;
mod report;
mod scenarios;

#[allow(unused_imports, reason = "main takes what it needs from one list")]
use prelude::*;
use scenarios::{bulk::*, fanout::*, lossy::*, node_compare::*, oneway::*, rtt::*};

/// A boxed future of the bench.
pub(crate) type BenchFuture<'a> = Pin<Box<dyn Future<Output = ()> + Send + 'a>>;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum Scenario {
    /// 64-byte request/response, one at a time.
    Rtt,
    /// 64-byte request/response, 100 in flight.
    RttConcurrent,
    /// 64-byte one-way messages per second.
    Oneway,
    /// 1 MiB and 16 MiB messages.
    Bulk,
    /// One message to 10 and 50 nodes, until all acknowledged.
    Fanout,
    /// `oneway` and `rtt` through a lossy relay: adaptive RTO vs the original's fixed 200 ms.
    Lossy,
    /// `rtt`, `oneway` and `bulk` against the original Node.js mesh-link 0.13.6 (needs `node`,
    /// `npm` and `redis-server`; both meshes use a Redis the bench starts).
    NodeCompare,
    /// What an idle node costs: wake-ups per second and CPU, with `--peers` sessions open,
    /// alone, and an idle tokio runtime (needs `redis-server`).
    Idle,
    /// Every scenario (`node-compare` too, when `node` is installed).
    All,
}

/// mesh-link against raw UDP, TCP, HTTP/1.1 (hyper) and QUIC (quinn), side by side.
#[derive(Debug, Clone, Parser)]
#[command(name = "mesh-bench", version, about)]
pub(crate) struct Args {
    /// What to measure.
    pub(crate) scenario: Scenario,
    /// Seconds per scenario (split over its rounds and contenders).
    #[arg(long, default_value_t = 20)]
    pub(crate) duration: u64,
    /// Rounds of interleaving.
    #[arg(long, default_value_t = 5)]
    pub(crate) rounds: u32,
    /// One JSON object per result line instead of tables.
    #[arg(long)]
    pub(crate) json: bool,
    /// Also draw the results into this SVG: one chart per scenario (p50 and p99, or the rate),
    /// mesh-link beside its baselines.
    #[arg(long)]
    pub(crate) plot: Option<std::path::PathBuf>,
    /// Where contenders run: `procs` (the default: every contender as two processes, on one
    /// CPU and on two; `rtt`, `oneway` and `bulk`) or `in-process` (both sides in this
    /// process on one runtime: for profiling, not for claims).
    #[arg(long, value_enum, default_value = "procs")]
    pub(crate) layout: Layout,
    /// Run `rtt`, `oneway` and `bulk` across two network namespaces joined by veth (a real
    /// interface: MTU 1500, checksums on) instead of loopback. Needs root, iproute2, nftables
    /// and redis-server (the test bed's; see the `mesh-testbed` crate).
    #[arg(long)]
    pub(crate) hosts: bool,
    /// The MTU of the two hosts' interfaces with `--hosts` (9000: jumbo frames, as in many
    /// data centres; mesh-link finds it by path-MTU discovery, TCP by its MSS).
    #[arg(long, default_value_t = 1500)]
    pub(crate) host_mtu: u32,
    /// Peers of the idle node (`idle`).
    #[arg(long, default_value_t = 100)]
    pub(crate) peers: usize,
}

/// Where a scenario's contenders run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum Layout {
    /// Two processes per contender.
    Procs,
    /// One process, one runtime.
    InProcess,
}

fn main() {
    // `mesh-bench child ...`: one side of a contender in the processes layout.
    if std::env::args().nth(1).as_deref() == Some("child") {
        #[derive(Parser)]
        struct ChildCli {
            #[command(flatten)]
            args: procs::child::ChildArgs,
        }
        let cli = ChildCli::parse_from(std::env::args().skip(1));
        procs::child::run(cli.args);
        return;
    }
    let args = Args::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let scenarios: Vec<Scenario> = match args.scenario {
        Scenario::All => vec![
            Scenario::Rtt,
            Scenario::RttConcurrent,
            Scenario::Oneway,
            Scenario::Bulk,
            Scenario::Fanout,
            Scenario::Lossy,
            Scenario::NodeCompare,
            Scenario::Idle,
        ],
        s => vec![s],
    };
    let mut everything = Vec::new();
    for s in scenarios {
        let started = Instant::now();
        let progress = Progress::start(s, &args);
        // Every contender runs on a task of the runtime, as a service's own code does: the
        // thread that calls `block_on` is outside the worker pool, and every wake-up of it
        // would be a thread wake-up that no contender's design chose.
        let task_args = args.clone();
        let rows = rt
            .block_on(rt.spawn(async move {
                let args = &task_args;
                let net = args.hosts.then(|| {
                    mesh_testbed::Net::new(2, &[(0, args.host_mtu), (1, args.host_mtu)])
                        .unwrap_or_else(|e| panic!("--hosts needs the test bed: {e}"))
                });
                let placements = match &net {
                    Some(net) => [
                        procs::Placement::hosts(true, net),
                        procs::Placement::hosts(false, net),
                    ],
                    None => [
                        procs::Placement::loopback(true),
                        procs::Placement::loopback(false),
                    ],
                };
                let procs = args.layout == Layout::Procs;
                let blocking = |f: fn(&Args, &[procs::Placement], &[String]) -> Vec<Row>| {
                    let (args, placements) = (args.clone(), placements.clone());
                    tokio::task::spawn_blocking(move || f(&args, &placements, &[]))
                };
                match s {
                    Scenario::Rtt if procs => blocking(procs::rtt).await.expect("rtt"),
                    Scenario::Oneway if procs => blocking(procs::oneway).await.expect("oneway"),
                    Scenario::Bulk if procs => blocking(procs::bulk).await.expect("bulk"),
                    Scenario::Idle => {
                        let (args, peers) = (args.clone(), args.peers);
                        tokio::task::spawn_blocking(move || procs::idle(&args, peers))
                            .await
                            .expect("idle")
                    }
                    Scenario::Rtt => rtt(args, 1).await,
                    Scenario::RttConcurrent => rtt(args, 100).await,
                    Scenario::Oneway => oneway(args).await,
                    Scenario::Bulk => bulk(args).await,
                    Scenario::Fanout => fanout(args).await,
                    Scenario::Lossy => lossy(args).await,
                    Scenario::NodeCompare => node_compare(args).await,
                    Scenario::All => Vec::new(),
                }
            }))
            .expect("scenario task");
        progress.finish();
        if !args.json {
            eprintln!("{s:?} took {:.1} s", started.elapsed().as_secs_f64());
        }
        print(&rows, args.json);
        everything.extend(rows);
    }
    if let Some(path) = &args.plot {
        match plot(&everything, path) {
            Ok(()) => eprintln!("plot written to {}", path.display()),
            Err(e) => eprintln!("plot not written to {}: {e}", path.display()),
        }
    }
    rt.shutdown_timeout(Duration::from_secs(1));
}

/// A progress bar for one scenario on stderr, against the time it is expected to take
/// (indicatif draws nothing when stderr is not a terminal).
struct Progress {
    bar: indicatif::ProgressBar,
    done: Arc<std::sync::atomic::AtomicBool>,
    ticker: Option<std::thread::JoinHandle<()>>,
}

impl Progress {
    fn start(s: Scenario, args: &Args) -> Self {
        // Scenarios of the processes layout run on one CPU and then on two.
        let placements = match s {
            Scenario::Rtt | Scenario::Oneway | Scenario::Bulk if args.layout == Layout::Procs => 2,
            _ => 1,
        };
        let expected = args.duration * placements;
        let bar = indicatif::ProgressBar::new(expected * 10);
        if let Ok(style) = indicatif::ProgressStyle::with_template(
            "{prefix:>14} {wide_bar} {elapsed} of about {msg}",
        ) {
            bar.set_style(style);
        }
        bar.set_prefix(format!("{s:?}"));
        bar.set_message(format!("{expected} s"));
        let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (b, d) = (bar.clone(), done.clone());
        let ticker = std::thread::spawn(move || {
            let t0 = Instant::now();
            while !d.load(Ordering::Relaxed) {
                // Never full before the scenario is.
                let tenths = (t0.elapsed().as_millis() / 100) as u64;
                b.set_position(tenths.min(b.length().unwrap_or(0).saturating_sub(1)));
                std::thread::sleep(Duration::from_millis(200));
            }
        });
        Self {
            bar,
            done,
            ticker: Some(ticker),
        }
    }

    fn finish(mut self) {
        self.done.store(true, Ordering::Relaxed);
        if let Some(t) = self.ticker.take() {
            let _ = t.join();
        }
        self.bar.finish_and_clear();
    }
}
