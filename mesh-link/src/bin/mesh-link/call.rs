//! `mesh-link request` and `mesh-link send`: call a handler from the shell.

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use mesh_link::{Bytes, NodeKey, SendOptions};

use crate::client::Target;
use crate::{Failure, Outcome};

#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    #[command(flatten)]
    target: Target,
    /// The handler's id.
    handler: u16,
    /// The payload: text, or `@FILE` for a file's bytes.
    #[arg(long, conflicts_with = "json")]
    data: Option<String>,
    /// The payload as JSON text (checked to be JSON), for a handler that reads JSON.
    #[arg(long)]
    json: Option<String>,
    /// How long to wait for the answer (or the acknowledgement), in milliseconds.
    #[arg(short, long, default_value_t = 5000)]
    timeout: u64,
}

fn payload(args: &Args) -> Result<Bytes, Failure> {
    if let Some(j) = &args.json {
        serde_json::from_str::<serde_json::Value>(j)
            .map_err(|e| Failure::Usage(format!("--json is not JSON: {e}")))?;
        return Ok(Bytes::from(j.clone().into_bytes()));
    }
    match args.data.as_deref() {
        Some(d) if d.starts_with('@') => std::fs::read(&d[1..])
            .map(Bytes::from)
            .map_err(|e| Failure::Usage(format!("--data {d}: {e}"))),
        Some(d) => Ok(Bytes::from(d.to_owned().into_bytes())),
        None => Ok(Bytes::new()),
    }
}

pub(crate) async fn run(args: Args, request: bool) -> Outcome {
    let data = payload(&args)?;
    let to = args.target.resolve().await?;
    let timeout = Duration::from_millis(args.timeout);
    let node = args.target.client(to, timeout).await?;
    let key = NodeKey::from(to);
    let result = if request {
        node.request_bytes(args.handler, key, data, timeout, true)
            .await
            .map(Some)
            .map_err(|e| e.to_string())
    } else {
        match tokio::time::timeout(
            timeout,
            node.send_bytes(args.handler, [key], data, SendOptions::default()),
        )
        .await
        {
            Ok(Ok(r)) if r.is_ok() => Ok(None),
            Ok(Ok(r)) => Err(r
                .failures()
                .map(|(_, e)| e.to_string())
                .collect::<Vec<_>>()
                .join("; ")),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!("not acknowledged within {} ms", args.timeout)),
        }
    };
    let _ = node.stop().await;
    match result {
        Ok(Some(answer)) => {
            let mut out = std::io::stdout().lock();
            // The answer's bytes as they are (text prints as text), ending in a newline on a
            // terminal's behalf when it has none.
            out.write_all(&answer)?;
            if !answer.ends_with(b"\n") && std::str::from_utf8(&answer).is_ok() {
                out.write_all(b"\n")?;
            }
            out.flush()?;
            Ok(ExitCode::SUCCESS)
        }
        Ok(None) => {
            println!("delivered to {to}");
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!("mesh-link: {to}: {e}");
            Ok(ExitCode::FAILURE)
        }
    }
}
