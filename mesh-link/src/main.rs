//! The `mesh-link` command: run a node, list the nodes of a mesh, ping a node.

#![allow(
    clippy::print_stdout,
    clippy::print_stderr,
    reason = "a command-line tool talks on stdout and stderr"
)]

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use mesh_discovery::{Backend as _, NodeRecord, RedisRegistry};
use mesh_link::{Config, MeshNode, NodeKey, Registry, RequestError, Secret};

/// Server processes that find each other through Redis and talk over reliable UDP.
#[derive(Debug, Parser)]
#[command(name = "mesh-link", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Ping a node: prints PONG with the round-trip time of each answer, then a summary
    /// (p50, p90, p99 and this process's CPU time per ping). Exits 1 if the node never answers.
    Ping {
        /// The node's address.
        address: IpAddr,
        /// The node's port.
        port: u16,
        /// How many pings.
        #[arg(short, long, default_value_t = 4)]
        count: u32,
        /// Pause between pings, in milliseconds; 0 sends each ping as soon as the last is
        /// answered.
        #[arg(short, long, default_value_t = 200)]
        interval: u64,
        /// Print only the summary.
        #[arg(short, long)]
        quiet: bool,
        /// How long to wait for each answer, in milliseconds.
        #[arg(short, long, default_value_t = 1000)]
        timeout: u64,
        /// The cluster's secret, for a mesh that has one (the file's contents).
        #[arg(long)]
        key_file: Option<PathBuf>,
    },
    /// Run a node until SIGINT or SIGTERM, then leave the mesh gracefully. Without --redis it
    /// runs alone on an in-memory registry (and still answers pings).
    Node {
        /// Redis URL: redis://host:port, redis://host:port?replicas=true,
        /// redis-sentinel://host:port?sentinelServiceName=NAME, redis-cluster://host:port.
        #[arg(long, env = "MESH_REDIS_URL")]
        redis: Option<String>,
        /// The mesh's name.
        #[arg(long)]
        prefix: Option<String>,
        /// This node's type.
        #[arg(long = "type")]
        node_type: Option<String>,
        /// Address and first port to bind (the next ports are tried if it is taken).
        #[arg(long)]
        bind: Option<SocketAddr>,
        /// A value to publish, NAME=VALUE (VALUE is JSON if it parses as JSON, else text).
        /// Repeatable.
        #[arg(long = "value", value_parser = parse_value)]
        values: Vec<(String, serde_json::Value)>,
        /// A TOML file with any `Config` setting; the flags above override it.
        #[arg(long)]
        config: Option<PathBuf>,
        /// The cluster's secret (the file's contents): every datagram is then authenticated.
        #[arg(long)]
        key_file: Option<PathBuf>,
        /// During a key rollover: the previous secret, still accepted.
        #[arg(long, requires = "key_file")]
        previous_key_file: Option<PathBuf>,
    },
    /// List the live nodes of a mesh, as a table or as JSON lines.
    Nodes {
        /// Redis URL (see `node --help`).
        #[arg(long, env = "MESH_REDIS_URL")]
        redis: String,
        /// The mesh's name.
        #[arg(long, default_value = "")]
        prefix: String,
        /// Only nodes of this type.
        #[arg(long = "type")]
        node_type: Option<String>,
        /// One JSON record per line instead of a table.
        #[arg(long)]
        json: bool,
    },
}

fn parse_value(s: &str) -> Result<(String, serde_json::Value), String> {
    let (name, value) = s
        .split_once('=')
        .ok_or_else(|| format!("expected NAME=VALUE, got {s:?}"))?;
    if name.is_empty() {
        return Err("the value's name is empty".into());
    }
    let v = serde_json::from_str(value).unwrap_or_else(|_| serde_json::Value::String(value.into()));
    Ok((name.to_owned(), v))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .init();
    // Ping waits on one answer at a time: on one thread, an answer the transport's driver
    // resolves wakes the waiting loop without a hand-off between threads. A node serves
    // others, on every core.
    let runtime = if matches!(cli.command, Command::Ping { .. }) {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Runtime::new()
    };
    let runtime = match runtime {
        Ok(r) => r,
        Err(e) => {
            eprintln!("mesh-link: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Ping {
                address,
                port,
                count,
                interval,
                quiet,
                timeout,
                key_file,
            } => {
                let args = PingArgs {
                    target: SocketAddr::new(address, port),
                    count,
                    interval,
                    quiet,
                    timeout,
                    key_file,
                };
                ping(args).await
            }
            Command::Node {
                redis,
                prefix,
                node_type,
                bind,
                values,
                config,
                key_file,
                previous_key_file,
            } => {
                let args = NodeArgs {
                    redis,
                    prefix,
                    node_type,
                    bind,
                    values,
                    file: config,
                    key_file,
                    previous_key_file,
                };
                node(args).await
            }
            Command::Nodes {
                redis,
                prefix,
                node_type,
                json,
            } => nodes(&redis, &prefix, node_type.as_deref(), json).await,
        }
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("mesh-link: {e}");
            ExitCode::FAILURE
        }
    }
}

type Fallible<T> = Result<T, Box<dyn std::error::Error>>;

/// The local address the OS would use to reach `target` (no packet is sent).
fn source_for(target: SocketAddr) -> Fallible<IpAddr> {
    let any: SocketAddr = if target.is_ipv4() {
        "0.0.0.0:0".parse()?
    } else {
        "[::]:0".parse()?
    };
    let s = UdpSocket::bind(any)?;
    s.connect(target)?;
    Ok(s.local_addr()?.ip())
}

fn micros(d: Duration) -> String {
    format!("{:.1} µs", d.as_secs_f64() * 1e6)
}

/// The `ping` command's arguments.
struct PingArgs {
    target: SocketAddr,
    count: u32,
    interval: u64,
    quiet: bool,
    timeout: u64,
    key_file: Option<PathBuf>,
}

/// CPU time (user and system) this process has used so far.
fn cpu_time() -> Duration {
    use nix::sys::resource::{getrusage, UsageWho};
    match getrusage(UsageWho::RUSAGE_SELF) {
        Ok(u) => {
            let t = |v: nix::sys::time::TimeVal| {
                Duration::new(v.tv_sec().max(0) as u64, (v.tv_usec().max(0) as u32) * 1000)
            };
            t(u.user_time()) + t(u.system_time())
        }
        Err(_) => Duration::ZERO,
    }
}

async fn ping(args: PingArgs) -> Fallible<ExitCode> {
    let PingArgs {
        target,
        count,
        interval,
        quiet,
        timeout,
        key_file,
    } = args;
    let mut config = Config::default();
    if let Some(path) = key_file {
        config.cluster_key = Some(Secret::from_file(&path)?);
    }
    config.address = Some(source_for(target)?);
    config.port = 0;
    config.node_type = "mesh-link-ping".into();
    // Give up on the peer after the answer timeout rather than the default 5 s.
    config.peer_timeout = Duration::from_millis(timeout.max(100));
    let node = MeshNode::builder()
        .config(|c| *c = config)
        .registry(Registry::memory())
        .start()
        .await?;
    let mut rtts = Vec::with_capacity(count.min(1 << 20) as usize);
    let cpu_before = cpu_time();
    for i in 0..count {
        if i > 0 && interval > 0 {
            tokio::time::sleep(Duration::from_millis(interval)).await;
        }
        match node
            .ping(NodeKey::from(target), Duration::from_millis(timeout))
            .await
        {
            Ok(rtt) => {
                if !quiet {
                    println!("PONG from {target} time={}", micros(rtt));
                }
                rtts.push(rtt);
            }
            Err(RequestError::Timeout { .. }) => {
                println!("no answer from {target} within {timeout} ms")
            }
            Err(e) => println!("no answer from {target}: {e}"),
        }
    }
    let cpu = cpu_time().saturating_sub(cpu_before);
    let _ = node.stop().await;
    if rtts.is_empty() {
        println!("0 answers of {count}");
        return Ok(ExitCode::FAILURE);
    }
    rtts.sort();
    let pct = |p: usize| rtts[(rtts.len() * p / 100).min(rtts.len() - 1)];
    println!(
        "{} answers of {count}, p50 {}, p90 {}, p99 {}, CPU per ping {}",
        rtts.len(),
        micros(pct(50)),
        micros(pct(90)),
        micros(pct(99)),
        micros(cpu / count.max(1)),
    );
    Ok(ExitCode::SUCCESS)
}

/// The `node` command's arguments.
struct NodeArgs {
    redis: Option<String>,
    prefix: Option<String>,
    node_type: Option<String>,
    bind: Option<SocketAddr>,
    values: Vec<(String, serde_json::Value)>,
    file: Option<PathBuf>,
    key_file: Option<PathBuf>,
    previous_key_file: Option<PathBuf>,
}

async fn node(args: NodeArgs) -> Fallible<ExitCode> {
    let NodeArgs {
        redis,
        prefix,
        node_type,
        bind,
        values,
        file,
        key_file,
        previous_key_file,
    } = args;
    let mut config: Config = match &file {
        Some(path) => {
            let text =
                std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
            toml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?
        }
        None => Config::default(),
    };
    if redis.is_some() {
        config.redis = redis;
    }
    if let Some(p) = prefix {
        config.prefix = p;
    }
    if let Some(t) = node_type {
        config.node_type = t;
    }
    if let Some(b) = bind {
        config.address = Some(b.ip());
        config.port = b.port();
    }
    config.values.extend(values);
    if let Some(path) = key_file {
        config.cluster_key = Some(Secret::from_file(&path)?);
    }
    if let Some(path) = previous_key_file {
        config.previous_cluster_key = Some(Secret::from_file(&path)?);
    }
    let registry = config
        .redis
        .clone()
        .unwrap_or_else(|| "memory (alone)".into());
    let node = MeshNode::start(config.clone()).await?;
    println!(
        "mesh-link node listening on {} (type {:?}, prefix {:?}, registry {registry})",
        node.local_key(),
        config.node_type,
        config.prefix
    );
    wait_for_signal().await?;
    println!("stopping");
    let report = node.stop().await;
    if report.is_clean() {
        println!("stopped");
    } else {
        println!("stopped with work left: {report:?}");
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(unix)]
async fn wait_for_signal() -> Fallible<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r?,
        _ = term.recv() => {}
    }
    Ok(())
}

#[cfg(not(unix))]
async fn wait_for_signal() -> Fallible<()> {
    tokio::signal::ctrl_c().await?;
    Ok(())
}

async fn nodes(
    redis: &str,
    prefix: &str,
    node_type: Option<&str>,
    json: bool,
) -> Fallible<ExitCode> {
    let registry = RedisRegistry::connect(redis, prefix).await?;
    let mut records: Vec<NodeRecord> = registry
        .snapshot()
        .await?
        .into_iter()
        .filter_map(|(_, bytes)| NodeRecord::decode(&bytes).ok())
        .filter(|r| node_type.is_none_or(|t| r.node_type == t))
        .collect();
    records.sort_by_key(|r| r.key);
    if json {
        for r in &records {
            println!("{}", serde_json::to_string(r)?);
        }
        return Ok(ExitCode::SUCCESS);
    }
    let rows: Vec<(String, String, String)> = records
        .iter()
        .map(|r| {
            let values = r
                .values
                .iter()
                .map(|(k, v)| match v {
                    serde_json::Value::String(s) => format!("{k}={s}"),
                    other => format!("{k}={other}"),
                })
                .collect::<Vec<_>>()
                .join(" ");
            (r.key.to_string(), r.node_type.clone(), values)
        })
        .collect();
    let w0 = rows.iter().map(|r| r.0.len()).max().unwrap_or(0).max(7);
    let w1 = rows.iter().map(|r| r.1.len()).max().unwrap_or(0).max(4);
    println!("{:<w0$}  {:<w1$}  VALUES", "ADDRESS", "TYPE");
    for (a, t, v) in &rows {
        println!("{a:<w0$}  {t:<w1$}  {v}");
    }
    Ok(ExitCode::SUCCESS)
}
