//! `mesh-link ping`: round trips to a node's system ping handler, or with `--raw` the
//! original's 4-byte `ping` datagram (answered `PONG\n`, by a Node.js node too).

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use mesh_link::{NodeKey, RequestError};

use crate::client::{cpu_time, micros, Target};
use crate::{Failure, Outcome};

#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    #[command(flatten)]
    target: Target,
    /// How many pings.
    #[arg(short, long, default_value_t = 4)]
    count: u32,
    /// Pause between pings, in milliseconds; 0 sends each ping as soon as the last is
    /// answered.
    #[arg(short, long, default_value_t = 200)]
    interval: u64,
    /// How long to wait for each answer, in milliseconds.
    #[arg(short, long, default_value_t = 1000)]
    timeout: u64,
    /// Print only the summary.
    #[arg(short, long)]
    quiet: bool,
    /// Send the original's raw `ping` datagram and wait for `PONG\n` (no mesh session).
    #[arg(long)]
    raw: bool,
}

pub(crate) async fn run(args: Args) -> Outcome {
    let to = args.target.resolve().await?;
    let timeout = Duration::from_millis(args.timeout);
    let mut rtts = Vec::with_capacity(args.count.min(1 << 20) as usize);
    let mut pinger = Pinger::new(&args, to, timeout).await?;
    let cpu_before = cpu_time();
    for i in 0..args.count {
        if i > 0 && args.interval > 0 {
            tokio::time::sleep(Duration::from_millis(args.interval)).await;
        }
        match pinger.once().await {
            Ok(rtt) => {
                if !args.quiet {
                    println!("PONG from {to} time={}", micros(rtt));
                }
                rtts.push(rtt);
            }
            Err(why) => println!("no answer from {to}: {why}"),
        }
    }
    let cpu = cpu_time().saturating_sub(cpu_before);
    pinger.close().await;
    if rtts.is_empty() {
        println!("0 answers of {}", args.count);
        return Ok(ExitCode::FAILURE);
    }
    rtts.sort();
    let pct = |p: usize| rtts[(rtts.len() * p / 100).min(rtts.len() - 1)];
    println!(
        "{} answers of {}, p50 {}, p90 {}, p99 {}, CPU per ping {}",
        rtts.len(),
        args.count,
        micros(pct(50)),
        micros(pct(90)),
        micros(pct(99)),
        micros(cpu / args.count.max(1)),
    );
    Ok(ExitCode::SUCCESS)
}

enum Pinger {
    Mesh {
        node: mesh_link::MeshNode,
        to: SocketAddr,
        timeout: Duration,
    },
    Raw {
        socket: tokio::net::UdpSocket,
        timeout: Duration,
    },
}

impl Pinger {
    async fn new(args: &Args, to: SocketAddr, timeout: Duration) -> Result<Self, Failure> {
        if args.raw {
            let local = crate::client::source_for(to)?;
            let socket = tokio::net::UdpSocket::bind(SocketAddr::new(local, 0)).await?;
            socket.connect(to).await?;
            return Ok(Self::Raw { socket, timeout });
        }
        // Give up on the peer after the answer timeout rather than the default 5 s.
        let node = args.target.client(to, timeout).await?;
        Ok(Self::Mesh { node, to, timeout })
    }

    async fn once(&mut self) -> Result<Duration, String> {
        match self {
            Self::Mesh { node, to, timeout } => {
                match node.ping(NodeKey::from(*to), *timeout).await {
                    Ok(rtt) => Ok(rtt),
                    Err(RequestError::Timeout { .. }) => {
                        Err(format!("none within {} ms", timeout.as_millis()))
                    }
                    Err(e) => Err(e.to_string()),
                }
            }
            Self::Raw { socket, timeout } => {
                let t0 = Instant::now();
                socket.send(b"ping").await.map_err(|e| e.to_string())?;
                let mut buf = [0u8; 64];
                let deadline = t0 + *timeout;
                loop {
                    let n = tokio::time::timeout_at(deadline.into(), socket.recv(&mut buf))
                        .await
                        .map_err(|_| format!("none within {} ms", timeout.as_millis()))?
                        .map_err(|e| e.to_string())?;
                    // Anything else (a late answer to an earlier ping is also PONG) is not it.
                    if &buf[..n] == b"PONG\n" {
                        return Ok(t0.elapsed());
                    }
                }
            }
        }
    }

    async fn close(self) {
        if let Self::Mesh { node, .. } = self {
            let _ = node.stop().await;
        }
    }
}
