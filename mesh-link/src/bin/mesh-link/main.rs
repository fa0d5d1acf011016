//! The `mesh-link` command: run a node, list a mesh's nodes, ping a node, ask a node what it
//! sees (`stats`), watch a whole mesh (`top`), and call a handler from the shell.
//!
//! Exit codes: 0 success; 1 a failure at run time (no answer, Redis unreachable, ports
//! taken); 2 a usage or configuration error (a bad flag or value, an address that cannot be
//! announced, a missing config file, an unknown or mistyped config key).

#![allow(
    clippy::print_stdout,
    clippy::print_stderr,
    reason = "a command-line tool talks on stdout and stderr"
)]

mod call;
mod client;
mod node;
mod nodes;
mod ping;
mod stats;
mod top;

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

/// Server processes that find each other through Redis and talk over reliable UDP.
#[derive(Debug, Parser)]
#[command(
    name = "mesh-link",
    version,
    about,
    after_help = "Logs go to stderr: `node` logs at info (joins, leaves, registry outages, \
                  stop), the other commands at warn. RUST_LOG overrides it (for example \
                  RUST_LOG=debug or RUST_LOG=mesh_discovery=debug); --log-format json writes \
                  one JSON object per line for log shippers.\n\nExit codes: 0 success, 1 \
                  failure at run time, 2 usage or configuration error."
)]
struct Cli {
    /// How log lines are written: `text` (colour only on a terminal) or `json`.
    #[arg(long, global = true, value_enum, default_value = "text")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a node until SIGINT or SIGTERM, then leave the mesh gracefully. Without --redis it
    /// runs alone on an in-memory registry (and still answers pings).
    Node(node::Args),
    /// List the live nodes of a mesh from Redis, as a table or as JSON lines.
    Nodes(nodes::Args),
    /// Ping a node: prints PONG with the round-trip time of each answer, then a summary
    /// (p50, p90, p99 and this process's CPU time per ping). Exits 1 if the node never
    /// answers. --raw sends the original's 4-byte `ping` datagram instead (a Node.js node
    /// answers it too).
    Ping(ping::Args),
    /// Ask a node what it sees: its members, its transport sessions (round trip, loss,
    /// retransmissions, flight) and its counters, over the mesh itself.
    Stats(stats::Args),
    /// A live view of a whole mesh, one row per node, refreshed every second. q or Ctrl-C
    /// quits.
    Top(top::Args),
    /// Call a handler that takes raw bytes or JSON text and print its answer.
    Request(call::Args),
    /// Send a reliable one-way message to a handler; exits 0 once the node acknowledged it.
    Send(call::Args),
}

/// How a command failed.
#[derive(Debug)]
pub(crate) enum Failure {
    /// A usage or configuration error: exit 2.
    Usage(String),
    /// A failure at run time: exit 1.
    Runtime(String),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Usage(m) | Self::Runtime(m) => f.write_str(m),
        }
    }
}

impl From<mesh_link::Error> for Failure {
    fn from(e: mesh_link::Error) -> Self {
        match e {
            mesh_link::Error::Config(_) | mesh_link::Error::NoInterface(_) => {
                Self::Usage(e.to_string())
            }
            other => Self::Runtime(other.to_string()),
        }
    }
}

impl From<mesh_discovery::RegistryError> for Failure {
    fn from(e: mesh_discovery::RegistryError) -> Self {
        match e {
            mesh_discovery::RegistryError::Config(_) => Self::Usage(e.to_string()),
            other => Self::Runtime(other.to_string()),
        }
    }
}

impl From<std::io::Error> for Failure {
    fn from(e: std::io::Error) -> Self {
        Self::Runtime(e.to_string())
    }
}

/// A command's result: its exit code, or how it failed.
pub(crate) type Outcome = Result<ExitCode, Failure>;

fn init_logs(format: LogFormat, default: &str) {
    // fred logs every failed command of an outage; discovery logs the outage once (and its
    // end). Its lines are shown only when RUST_LOG names it.
    let filter = match std::env::var("RUST_LOG") {
        Ok(f) if f.contains("fred") => f,
        Ok(f) => format!("{f},fred=off"),
        Err(_) => format!("{default},fred=off"),
    };
    let filter = tracing_subscriber::EnvFilter::try_new(&filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(filter);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.with_ansi(std::io::stderr().is_terminal()).init(),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let default_level = if matches!(cli.command, Command::Node(_)) {
        "info"
    } else {
        "warn"
    };
    init_logs(cli.log_format, default_level);
    // Commands that wait on one answer at a time run on one thread: an answer the
    // transport's driver resolves wakes the waiting loop without a hand-off between threads.
    // A node serves others, on every core.
    let runtime = if matches!(cli.command, Command::Node(_) | Command::Top(_)) {
        tokio::runtime::Runtime::new()
    } else {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
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
            Command::Node(a) => node::run(a).await,
            Command::Nodes(a) => nodes::run(a).await,
            Command::Ping(a) => ping::run(a).await,
            Command::Stats(a) => stats::run(a).await,
            Command::Top(a) => top::run(a).await,
            Command::Request(a) => call::run(a, true).await,
            Command::Send(a) => call::run(a, false).await,
        }
    });
    match result {
        Ok(code) => code,
        Err(Failure::Usage(m)) => {
            eprintln!("mesh-link: {m}");
            ExitCode::from(2)
        }
        Err(Failure::Runtime(m)) => {
            eprintln!("mesh-link: {m}");
            ExitCode::FAILURE
        }
    }
}
