//! A three-node mesh in one process: one-way messages, requests, fan-out (direct and through
//! a relay tree) and unreliable datagrams, with measured round trips.
//!
//! ```text
//! cargo run --release -p mesh-link --example quickstart
//! MESH_REDIS_URL=redis://127.0.0.1:6379 cargo run --release -p mesh-link --example quickstart
//! ```
//!
//! Without `MESH_REDIS_URL` the nodes find each other through an in-memory registry.

#![allow(clippy::print_stdout, reason = "an example prints what it shows")]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mesh_link::{Context, HandlerError, MeshNode, Registry, SendOptions};
use serde::{Deserialize, Serialize};

const HELLO: u16 = 1; // one-way
const GREET: u16 = 2; // request/response

#[derive(Debug, Serialize, Deserialize)]
struct Hello {
    message: String,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .init();
    let (registry, what) = match std::env::var("MESH_REDIS_URL") {
        Ok(url) => (Registry::redis(&url)?, format!("Redis at {url}")),
        Err(_) => (Registry::memory(), "an in-memory registry".to_owned()),
    };
    let prefix = format!("quickstart-{}", std::process::id());
    println!("starting 3 nodes on 127.0.0.1 with {what} (mesh {prefix:?})");

    let received = Arc::new(AtomicUsize::new(0));
    let mut nodes = Vec::new();
    for name in ["one", "two", "three"] {
        let got = received.clone();
        let node = MeshNode::builder()
            .registry(registry.clone())
            .prefix(prefix.clone())
            .node_type("demo")
            .bind("127.0.0.1:0")
            .config(|c| {
                c.values.insert("name".into(), name.into());
            })
            .on(HELLO, move |msg: Hello, ctx: Context| {
                let got = got.clone();
                async move {
                    got.fetch_add(1, Ordering::Relaxed);
                    tracing::info!(from = %ctx.sender(), relayed_by = ?ctx.relayed_by(), "{}", msg.message);
                }
            })
            .on_request(GREET, move |msg: Hello, ctx: Context| async move {
                Ok::<_, HandlerError>(Hello {
                    message: format!("{} world, from {} (you are {})", msg.message, name, ctx.sender()),
                })
            })
            .start()
            .await?;
        println!("  node {name} listening on {}", node.local_key());
        nodes.push(node);
    }
    let (one, two) = (&nodes[0], &nodes[1]);
    // Every node, not only the sender, must see the others: a relay tree passes the message
    // through them, and a relay forwards only to nodes it knows.
    for node in &nodes {
        tokio::time::timeout(
            Duration::from_secs(10),
            node.wait_for(|n| n.nodes_by_type("demo").len() == 3),
        )
        .await?;
    }
    let all = one.nodes_by_type("demo");
    println!("node one sees {} nodes of type demo", all.len());

    // One-way to one node.
    let report = one
        .send(
            HELLO,
            [two.local_key()],
            &Hello {
                message: "hello two".into(),
            },
        )
        .await?;
    println!(
        "send to two: delivered to {} node(s)",
        report.delivered.len()
    );
    report.into_result()?;

    // Request/response.
    let reply: Hello = one
        .request(
            GREET,
            two.local_key(),
            &Hello {
                message: "hello".into(),
            },
        )
        .await?;
    println!("request to two answered: {:?}", reply.message);

    // Fan-out: directly, then through a relay tree of 1 branch (a chain, the original's default).
    let report = one
        .send(
            HELLO,
            &all,
            &Hello {
                message: "hello all".into(),
            },
        )
        .await?;
    println!(
        "direct fan-out to {} nodes: {} delivered",
        all.len(),
        report.delivered.len()
    );
    report.into_result()?;
    let report = one
        .send_with(
            HELLO,
            &all,
            &Hello {
                message: "hello via relays".into(),
            },
            SendOptions::default().relay_limit(1),
        )
        .await?;
    println!(
        "relay-tree fan-out to {} nodes: {} delivered",
        all.len(),
        report.delivered.len()
    );
    report.into_result()?;

    // Every node's answer.
    for (node, r) in one
        .request_all::<_, Hello>(
            GREET,
            &all,
            &Hello {
                message: "hi".into(),
            },
        )
        .await
    {
        println!("  {node} answered {:?}", r?.message);
    }

    // Unreliable datagrams: may be lost, so nothing waits for them.
    one.usend(
        HELLO,
        &all,
        &Hello {
            message: "maybe".into(),
        },
    )?;

    // Round trips, measured, from a task of the runtime: `main` runs on tokio's `block_on`
    // thread, outside the worker pool, and every answer would have to wake that thread.
    let (client, to) = (one.clone(), two.local_key());
    let rtts = tokio::spawn(async move {
        let mut rtts = Vec::new();
        for _ in 0..1000 {
            let t = Instant::now();
            let _: Hello = client
                .request(
                    GREET,
                    to,
                    &Hello {
                        message: "x".into(),
                    },
                )
                .await?;
            rtts.push(t.elapsed());
        }
        rtts.sort();
        Ok::<_, mesh_link::RequestError>(rtts)
    })
    .await??;
    println!(
        "1000 requests one -> two: p50 {:?}, p99 {:?}, max {:?}",
        rtts[rtts.len() / 2],
        rtts[rtts.len() * 99 / 100],
        rtts[rtts.len() - 1]
    );
    let ping = one.ping(two.local_key(), Duration::from_secs(1)).await?;
    println!("system ping one -> two: {ping:?}");

    tokio::time::sleep(Duration::from_millis(50)).await;
    println!(
        "handlers saw {} one-way messages (1 + 3 + 3 reliable, up to 3 datagrams)",
        received.load(Ordering::Relaxed)
    );
    for node in &nodes {
        let report = node.stop().await;
        if !report.is_clean() {
            println!("  {} stopped with work left: {report:?}", node.local_key());
        }
    }
    println!("all nodes stopped");
    Ok(())
}
