//! `mesh-link node`: run a node until SIGINT or SIGTERM.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use mesh_link::{Config, MeshNode, Secret};
use tracing::info;

use crate::{Failure, Outcome};

#[derive(Debug, clap::Args)]
pub(crate) struct Args {
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
    /// Address and first port to bind (the next ports are tried if it is taken). The
    /// address is announced to the others: not 0.0.0.0.
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
    /// Serve Prometheus metrics on this address (GET /metrics), published every second.
    #[arg(long)]
    metrics: Option<SocketAddr>,
    /// Node-compat mode: also join a mesh of the original Node.js mesh-link 0.13.6 on the
    /// same Redis and prefix (its schema and its wire, on this node's port).
    #[arg(long)]
    node_compat: bool,
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

fn secret(path: &std::path::Path) -> Result<Secret, Failure> {
    Secret::from_file(path).map_err(|e| Failure::Usage(format!("{}: {e}", path.display())))
}

/// The configuration: the file's, then the flags.
fn config(args: &Args) -> Result<Config, Failure> {
    let mut config: Config = match &args.config {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| Failure::Usage(format!("config file {}: {e}", path.display())))?;
            toml::from_str(&text)
                .map_err(|e| Failure::Usage(format!("config file {}: {e}", path.display())))?
        }
        None => Config::default(),
    };
    if args.redis.is_some() {
        config.redis.clone_from(&args.redis);
    }
    if let Some(p) = &args.prefix {
        config.prefix.clone_from(p);
    }
    if let Some(t) = &args.node_type {
        config.node_type.clone_from(t);
    }
    if let Some(b) = args.bind {
        config.address = Some(b.ip());
        config.port = b.port();
    }
    config.values.extend(args.values.iter().cloned());
    if let Some(path) = &args.key_file {
        config.cluster_key = Some(secret(path)?);
    }
    if let Some(path) = &args.previous_key_file {
        config.previous_cluster_key = Some(secret(path)?);
    }
    if args.metrics.is_some() {
        config.metrics_interval = Some(std::time::Duration::from_secs(1));
    }
    config.node_compat |= args.node_compat;
    if config.node_compat && config.redis.is_none() {
        return Err(Failure::Usage(
            "--node-compat needs --redis: the original's nodes are found in its Redis".into(),
        ));
    }
    // Bad values are usage errors, before anything starts.
    config
        .validate()
        .map_err(|e| Failure::Usage(e.to_string()))?;
    Ok(config)
}

pub(crate) async fn run(args: Args) -> Outcome {
    let config = config(&args)?;
    if let Some(addr) = args.metrics {
        metrics_exporter_prometheus::PrometheusBuilder::new()
            .with_http_listener(addr)
            .install()
            .map_err(|e| Failure::Runtime(format!("metrics on {addr}: {e}")))?;
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
    if let Some(addr) = args.metrics {
        println!("metrics on http://{addr}/metrics");
    }
    wait_for_signal().await?;
    info!("signal received: leaving the mesh");
    let report = node.stop().await;
    if report.is_clean() {
        println!("stopped");
    } else {
        println!(
            "stopped: {} messages unacknowledged, {} requests abandoned, {} handlers cancelled",
            report.undelivered.len(),
            report.abandoned_requests,
            report.cancelled_handlers
        );
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(unix)]
async fn wait_for_signal() -> Result<(), Failure> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r?,
        _ = term.recv() => {}
    }
    Ok(())
}

#[cfg(not(unix))]
async fn wait_for_signal() -> Result<(), Failure> {
    tokio::signal::ctrl_c().await?;
    Ok(())
}
