//! One Rust node of a mixed mesh test (node-compat mode), driven over stdin and stdout with
//! the protocol of `benches/node-original/peer.js`:
//!
//! ```text
//! compat-peer <redisPort> <prefix> <port> <name>
//! ```
//!
//! Type `rust`, value `name`. Handlers: 1 answers with what it got; 2 counts one-way messages
//! (and their JSON bytes); 3 counts usends. Commands, one JSON object per line on stdin, each
//! answered by one JSON line on stdout: `nodes`, `request`, `send`, `usend`, `counts`, `stop`
//! (see `peer.js`). Here `send` answers once the message is acknowledged (or not), and
//! `nodes` also says which nodes are Node nodes.
#![allow(
    clippy::print_stdout,
    clippy::print_stderr,
    reason = "the binary answers its commands on stdout"
)]

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

use mesh_link::{MeshNode, NodeKey, SendOptions};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, BufReader};

/// What the test sends: the same fields both ways, so that our nodes (bincode) and Node
/// nodes (JSON) carry it alike.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
struct Msg {
    message: String,
    from: String,
    blob: String,
}

#[derive(Default)]
struct Counts {
    oneway: AtomicU64,
    oneway_bytes: AtomicU64,
    usend: AtomicU64,
}

fn say(v: &Value) {
    println!("{v}");
}

fn key(to: &Value) -> Option<NodeKey> {
    Some(NodeKey::new(
        to.get("address")?.as_str()?.parse().ok()?,
        u16::try_from(to.get("port")?.as_u64()?).ok()?,
    ))
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [redis_port, prefix, port, name] = &args[..] else {
        eprintln!("usage: compat-peer <redisPort> <prefix> <port> <name>");
        std::process::exit(2);
    };
    let mut values = std::collections::BTreeMap::new();
    values.insert("name".to_owned(), json!(name));
    let node = MeshNode::builder()
        .bind(&format!("127.0.0.1:{port}"))
        .node_type("rust")
        .prefix(prefix.clone())
        .config(|c| {
            c.redis = Some(format!("redis://127.0.0.1:{redis_port}"));
            c.node_compat = true;
            c.values = values;
        })
        .start()
        .await;
    let node = match node {
        Ok(n) => n,
        Err(e) => {
            eprintln!("compat-peer: {e}");
            std::process::exit(1);
        }
    };
    let counts = Arc::new(Counts::default());
    node.on_request(
        1,
        |m: Msg, _| async move { Ok::<_, mesh_link::HandlerError>(m) },
    )
    .expect("handler 1");
    let c = counts.clone();
    node.on(2, move |m: Msg, _| {
        let c = c.clone();
        async move {
            c.oneway.fetch_add(1, Relaxed);
            let bytes = serde_json::to_vec(&m).map_or(0, |b| b.len() as u64);
            c.oneway_bytes.fetch_add(bytes, Relaxed);
        }
    })
    .expect("handler 2");
    let c = counts.clone();
    node.on(3, move |_: Msg, _| {
        let c = c.clone();
        async move {
            c.usend.fetch_add(1, Relaxed);
        }
    })
    .expect("handler 3");
    say(&json!({"ready": true, "port": node.local_key().port}));

    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        let Ok(c) = serde_json::from_str::<Value>(&line) else {
            say(&json!({"error": "bad command"}));
            continue;
        };
        let to = c.get("to").and_then(key);
        let handler = c.get("handler").and_then(Value::as_u64).unwrap_or(0) as u16;
        let data: Msg = c
            .get("data")
            .and_then(|d| serde_json::from_value(d.clone()).ok())
            .unwrap_or_default();
        match (c["op"].as_str().unwrap_or(""), to) {
            ("nodes", _) => {
                let nodes: Vec<Value> = node
                    .nodes()
                    .iter()
                    .map(|r| {
                        json!({
                            "address": r.key.address.to_string(),
                            "port": r.key.port,
                            "type": r.node_type,
                            "name": r.values.get("name"),
                            "node_js": node.is_node_peer(r.key),
                        })
                    })
                    .collect();
                say(&json!({ "nodes": nodes }));
            }
            ("counts", _) => say(&json!({
                "oneway": counts.oneway.load(Relaxed),
                "oneway_bytes": counts.oneway_bytes.load(Relaxed),
                "usend": counts.usend.load(Relaxed),
            })),
            ("request", Some(to)) => match node.request::<Msg, Msg>(handler, to, &data).await {
                Ok(answer) => say(&json!({"ok": true, "answer": answer})),
                Err(e) => say(&json!({"ok": false, "error": e.to_string()})),
            },
            ("send", Some(to)) => {
                match node
                    .send_with(handler, [to], &data, SendOptions::default())
                    .await
                {
                    Ok(_) => say(&json!({"ok": true})),
                    Err(e) => say(&json!({"ok": false, "error": e.to_string()})),
                }
            }
            ("usend", Some(to)) => match node.usend(handler, [to], &data) {
                Ok(n) => say(&json!({"ok": n == 1})),
                Err(e) => say(&json!({"ok": false, "error": e.to_string()})),
            },
            ("stats", _) => say(&json!({
                "node_wire": node.node_wire_stats().map(|s| json!({
                    "duplicates": s.duplicates,
                    "malformed": s.malformed,
                    "gave_up": s.gave_up,
                    "handled": s.handled,
                })),
            })),
            ("stop", _) => {
                let report = node.stop().await;
                say(&json!({"stopped": true, "report": format!("{report:?}")}));
                return;
            }
            (op, _) => say(&json!({"error": format!("unknown op {op:?} or no `to`")})),
        }
    }
    let _ = node.stop().await;
}
