//! `mesh-link stats`: a node's own view of the mesh and its counters, asked over the mesh.

use std::process::ExitCode;
use std::time::Duration;

use mesh_link::report::NodeReport;

use crate::client::Target;
use crate::nodes::values;
use crate::{Failure, Outcome};

#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    #[command(flatten)]
    target: Target,
    /// The report as one JSON object.
    #[arg(long)]
    json: bool,
    /// How long to wait for the answer, in milliseconds.
    #[arg(short, long, default_value_t = 2000)]
    timeout: u64,
}

pub(crate) async fn run(args: Args) -> Outcome {
    let to = args.target.resolve().await?;
    let timeout = Duration::from_millis(args.timeout);
    let node = args.target.client(to, timeout).await?;
    let report = node.report_of(to, timeout).await;
    let _ = node.stop().await;
    let report = report.map_err(|e| Failure::Runtime(format!("no report from {to}: {e}")))?;
    if args.json {
        let json = serde_json::to_string(&report).map_err(|e| Failure::Runtime(e.to_string()))?;
        println!("{json}");
    } else {
        print!("{}", render(&report));
    }
    Ok(ExitCode::SUCCESS)
}

/// µs for a measured time, `-` for none (0).
fn micros(us: u64) -> String {
    if us == 0 {
        "-".to_owned()
    } else {
        format!("{us} µs")
    }
}

/// The report as text: the node, its members, its sessions, its counters.
pub(crate) fn render(r: &NodeReport) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "node {} (type {:?}, up {:.1} s): {} members, {} sessions",
        r.node.key,
        r.node.node_type,
        r.uptime_ms as f64 / 1000.0,
        r.members.len(),
        r.peers.len()
    );
    let _ = writeln!(out, "\nMEMBERS\n{:<24} {:<12} VALUES", "ADDRESS", "TYPE");
    for m in &r.members {
        let me = if m.key == r.node.key { " (itself)" } else { "" };
        let addr = format!("{}{me}", m.key);
        let _ = writeln!(out, "{addr:<24} {:<12} {}", m.node_type, values(m));
    }
    let _ = writeln!(
        out,
        "\nSESSIONS\n{:<24} {:>10} {:>10} {:>10} {:>10} {:>7} {:>10} {:>6}",
        "PEER", "RTT", "RTTVAR", "SENT", "RESENT", "LOSS", "IN FLIGHT", "MTU"
    );
    for p in &r.peers {
        let _ = writeln!(
            out,
            "{:<24} {:>10} {:>10} {:>10} {:>10} {:>6.2}% {:>10} {:>6}",
            p.addr.to_string(),
            micros(p.srtt_us),
            micros(p.rttvar_us),
            p.frames_sent,
            p.retransmitted,
            p.loss() * 100.0,
            p.in_flight_frames,
            p.mtu
        );
    }
    let _ = writeln!(out, "\nCOUNTERS");
    for (k, v) in &r.counters {
        let _ = writeln!(out, "{k:<36} {v}");
    }
    out
}
