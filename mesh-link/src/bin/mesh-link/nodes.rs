//! `mesh-link nodes`: the live nodes of a mesh, as Redis lists them.

use std::process::ExitCode;

use mesh_discovery::{Backend as _, NodeRecord, RedisRegistry};

use crate::{Failure, Outcome};

#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Redis URL (see `node --help`).
    #[arg(long, env = "MESH_REDIS_URL")]
    pub(crate) redis: String,
    /// The mesh's name.
    #[arg(long, default_value = "")]
    pub(crate) prefix: String,
    /// Only nodes of this type.
    #[arg(long = "type")]
    node_type: Option<String>,
    /// One JSON record per line instead of a table.
    #[arg(long)]
    json: bool,
}

/// The records Redis holds for the mesh `prefix`, by address.
pub(crate) async fn records(redis: &str, prefix: &str) -> Result<Vec<NodeRecord>, Failure> {
    let registry = RedisRegistry::connect(redis, prefix).await?;
    let mut records: Vec<NodeRecord> = registry
        .snapshot()
        .await?
        .into_iter()
        .filter_map(|(_, bytes)| NodeRecord::decode(&bytes).ok())
        .collect();
    records.sort_by_key(|r| r.key);
    Ok(records)
}

/// A record's values as `name=value` words.
pub(crate) fn values(r: &NodeRecord) -> String {
    r.values
        .iter()
        .map(|(k, v)| match v {
            serde_json::Value::String(s) => format!("{k}={s}"),
            other => format!("{k}={other}"),
        })
        .collect::<Vec<_>>()
        .join(" ")
}

pub(crate) async fn run(args: Args) -> Outcome {
    let records: Vec<NodeRecord> = records(&args.redis, &args.prefix)
        .await?
        .into_iter()
        .filter(|r| args.node_type.as_ref().is_none_or(|t| &r.node_type == t))
        .collect();
    if args.json {
        for r in &records {
            let line = serde_json::to_string(r).map_err(|e| Failure::Runtime(e.to_string()))?;
            println!("{line}");
        }
        return Ok(ExitCode::SUCCESS);
    }
    let rows: Vec<(String, String, String)> = records
        .iter()
        .map(|r| (r.key.to_string(), r.node_type.clone(), values(r)))
        .collect();
    let w0 = rows.iter().map(|r| r.0.len()).max().unwrap_or(0).max(7);
    let w1 = rows.iter().map(|r| r.1.len()).max().unwrap_or(0).max(4);
    println!("{:<w0$}  {:<w1$}  VALUES", "ADDRESS", "TYPE");
    for (a, t, v) in &rows {
        println!("{a:<w0$}  {t:<w1$}  {v}");
    }
    Ok(ExitCode::SUCCESS)
}
