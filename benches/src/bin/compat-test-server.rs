//! A Rust stand-in for the original mesh-link 0.13.6's `test/server/index.js`, so that the
//! original's own mocha suite can run with one of its three server nodes replaced by a Rust
//! node in node-compat mode (`benches/tests/node_suite.rs` does).
//!
//! ```text
//! MESH_TEST_REDIS=redis://127.0.0.1:6379 compat-test-server <name> <control port>
//! ```
//!
//! Like the original server it registers handlers 1 to 12, announces itself with type
//! `TypeTest` and the value `name` under the prefix `__test__` from port 4000 on (the next
//! free one), and takes commands (`hello2two`, `foo2all`, ...) as datagrams on its control
//! port, answering each to the datagram's sender. What it cannot do: the original's shared
//! objects (handlers 4 and 5, `createSO`, `updateSO`) are not part of node-compat mode, and
//! `pauseAnnouncementOfOne` is a command for node `one`, which this binary does not replace.
#![allow(clippy::print_stderr, reason = "a test server logs to stderr")]

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use mesh_link::{Context, HandlerError, MeshNode, NodeKey, SendOptions};
use parking_lot::Mutex;
use serde_json::{json, Value};
use tokio::net::UdpSocket;

const SO_TTL: Duration = Duration::from_millis(5000);
const BAD_PORT: u16 = 9999;
use mesh_benches::node_original::NO_SHARED_OBJECTS;

struct Server {
    name: String,
    node: MeshNode,
    control: Arc<UdpSocket>,
    remember: Mutex<Said>,
    thing_to_save: Mutex<Value>,
    by_name: Mutex<HashMap<String, NodeKey>>,
}

type Answer = Result<Value, HandlerError>;

/// Handler 2's message and answer, and handler 7's and 8's, as types: `foo2all` and
/// `relayWithOneDefectNode` also ask this node itself, and a message to ourselves takes our
/// codec (bincode), which cannot read a `serde_json::Value`.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
#[serde(default)]
struct Foo {
    message: String,
    addr: String,
    port: u16,
}

#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
#[serde(default)]
struct Said {
    message: String,
}

impl Server {
    /// A node by its `name` value, remembered once found (the original caches too, so that
    /// its tests can address nodes that are gone).
    fn node_named(&self, name: &str) -> Option<NodeKey> {
        if let Some(k) = self.by_name.lock().get(name) {
            return Some(*k);
        }
        let found = self
            .node
            .nodes()
            .into_iter()
            .find(|r| r.values.get("name").and_then(Value::as_str) == Some(name))?;
        self.by_name.lock().insert(name.to_owned(), found.key);
        Some(found.key)
    }

    async fn reply(&self, to: SocketAddr, text: &str) {
        if let Err(e) = self.control.send_to(text.as_bytes(), to).await {
            eprintln!("{}: reply to {to}: {e}", self.name);
        }
    }

    async fn ask(&self, handler: u16, to: NodeKey, data: Value) -> Result<Value, String> {
        self.node
            .request::<Value, Value>(handler, to, &data)
            .await
            .map_err(|e| {
                eprintln!("{}: handler {handler} on {to}: {e}", self.name);
                e.to_string()
            })
    }

    /// `ask`, and the answer (or the error's text) to the client.
    async fn ask_and_reply(
        &self,
        client: SocketAddr,
        handler: u16,
        to: Option<NodeKey>,
        who: &str,
    ) {
        let Some(to) = to else {
            return self
                .reply(client, &format!("node \"{who}\" not found"))
                .await;
        };
        let data = json!({"message": "hello", "from": self.name});
        match self.ask(handler, to, data).await {
            Ok(v) => self.reply(client, &v.to_string()).await,
            Err(e) => self.reply(client, &e).await,
        }
    }

    async fn command(self: Arc<Self>, cmd: String, client: SocketAddr) {
        match cmd.as_str() {
            "hello2two" | "Uhello2two" => {
                self.ask_and_reply(client, 1, self.node_named("two"), "two")
                    .await;
            }
            "responseTimeout" => {
                self.ask_and_reply(client, 3, self.node_named("three"), "three")
                    .await;
            }
            "foo2all" | "Ufoo2all" => {
                let nodes: Vec<NodeKey> = self.node.nodes().iter().map(|r| r.key).collect();
                if nodes.is_empty() {
                    return self.reply(client, "nodes not found").await;
                }
                let data = Foo {
                    message: "foo".into(),
                    addr: client.ip().to_string(),
                    port: client.port(),
                };
                // Every node's handler tells the client, and one answer comes back (the
                // original, with `relayLimit: 1`, has the head of its relay chain answer).
                match self.node.request_any::<Foo, Said>(2, nodes, &data).await {
                    Ok((_, v)) => self.reply(client, &json!(v).to_string()).await,
                    Err(e) => self.reply(client, &e.to_string()).await,
                }
            }
            "createSO" | "updateSO" | "pauseAnnouncementOfOne" => {
                self.reply(client, NO_SHARED_OBJECTS).await;
            }
            "noSO" => {
                tokio::time::sleep(SO_TTL).await;
                let mut nums = Vec::new();
                for name in ["one", "two", "three"] {
                    let Some(k) = self.node_named(name) else {
                        return self
                            .reply(client, &format!("node \"{name}\" not found"))
                            .await;
                    };
                    match self.ask(6, k, json!({})).await {
                        Ok(v) => nums.push(v["num"].clone()),
                        Err(e) => return self.reply(client, &e).await,
                    }
                }
                self.reply(client, &Value::from(nums).to_string()).await;
            }
            "relayWithOneDefectNode" => {
                let names = ["one", "two", "three"];
                let mut nodes = vec![NodeKey::new([127, 0, 0, 1].into(), BAD_PORT)];
                nodes.extend(names.iter().filter_map(|n| self.node_named(n)));
                // Sent in the background, as the original's `send` returns at once: the send
                // to the defect node ends only at the peer timeout.
                let (node, targets, me) = (self.node.clone(), nodes.clone(), self.name.clone());
                tokio::spawn(async move {
                    let data = Said {
                        message: "GOOD".into(),
                    };
                    let report = node
                        .send_each(7, targets, &data, SendOptions::default())
                        .await;
                    eprintln!("{me}: handler 7 sent: {report:?}");
                });
                tokio::time::sleep(Duration::from_secs(3)).await;
                let mut messages = Vec::new();
                for k in &nodes[1..] {
                    match self.node.request::<(), Said>(8, *k, &()).await {
                        Ok(v) => messages.push(v.message),
                        Err(e) => return self.reply(client, &e.to_string()).await,
                    }
                }
                self.reply(client, &Value::from(messages).to_string()).await;
            }
            "saveOnBackupNodes" => {
                let message = "I have a dream";
                if let Some(one) = self.node_named("one") {
                    let _ = self.node.send(9, [one], &json!({"message": message})).await;
                }
                tokio::time::sleep(Duration::from_secs(3)).await;
                self.reply(client, message).await;
            }
            "getThingFromBackup" => {
                let Some(one) = self.node_named("one") else {
                    return self.reply(client, "node \"one\" not found").await;
                };
                let to = self
                    .node
                    .prepare_nodes(&self.node.node_type(), &[one])
                    .first()
                    .copied()
                    .unwrap_or(one);
                match self.ask(11, to, json!({})).await {
                    Ok(v) => self.reply(client, &v.to_string()).await,
                    Err(e) => self.reply(client, &e).await,
                }
            }
            "getSender" => {
                let Some(one) = self.node_named("one") else {
                    return self.reply(client, "node \"one\" not found").await;
                };
                match self.ask(12, one, json!({})).await {
                    Ok(v) => self.reply(client, &v.to_string()).await,
                    Err(e) => self.reply(client, &e).await,
                }
            }
            other => eprintln!("{}: unknown command {other:?}", self.name),
        }
    }
}

fn register(s: &Arc<Server>) -> Result<(), mesh_link::Error> {
    let node = &s.node;
    node.on_request(1, |d: Value, _| async move {
        let m = d["message"].as_str().unwrap_or_default();
        Answer::Ok(json!({"message": format!("{m} world")}))
    })?;
    let srv = s.clone();
    node.on_request(2, move |d: Foo, _| {
        let srv = srv.clone();
        async move {
            let res = Said {
                message: format!("{} bar", d.message),
            };
            // As the original: the answer, and the same straight to the client.
            if let Ok(ip) = d.addr.parse() {
                srv.reply(SocketAddr::new(ip, d.port), &json!(res).to_string())
                    .await;
            }
            Ok::<_, HandlerError>(res)
        }
    })?;
    // Never answers, as the original's handler 3 (its requester times out).
    node.on_request(3, |_: Value, _| std::future::pending::<Answer>())?;
    for id in [4u16, 5] {
        node.on_request(id, |_: Value, _| async {
            Answer::Err(HandlerError::new(NO_SHARED_OBJECTS))
        })?;
    }
    node.on_request(6, |_: Value, _| async { Answer::Ok(json!({"num": 0})) })?;
    let srv = s.clone();
    node.on(7, move |d: Said, _| {
        let srv = srv.clone();
        async move {
            *srv.remember.lock() = d;
        }
    })?;
    let srv = s.clone();
    node.on_request(8, move |(): (), _| {
        let v = srv.remember.lock().clone();
        async move { Ok::<_, HandlerError>(v) }
    })?;
    let srv = s.clone();
    node.on_request(9, move |d: Value, ctx: Context| {
        let srv = srv.clone();
        async move {
            *srv.thing_to_save.lock() = d.clone();
            let node = ctx.node();
            let backups = node.backup_nodes(node.local_key());
            eprintln!("----> Save on backups also: {d} {backups:?}");
            let _ = node.send(10, backups, &d).await;
            Answer::Ok(Value::Null)
        }
    })?;
    let srv = s.clone();
    node.on(10, move |d: Value, _| {
        let srv = srv.clone();
        async move {
            *srv.thing_to_save.lock() = d;
        }
    })?;
    let srv = s.clone();
    node.on_request(11, move |_: Value, ctx: Context| {
        let thing = srv.thing_to_save.lock().clone();
        let me = ctx.node().local_key();
        async move {
            Answer::Ok(json!({"thing": thing, "info": {"address": me.address.to_string(), "port": me.port}}))
        }
    })?;
    node.on_request(12, |_: Value, ctx: Context| async move {
        Answer::Ok(json!({
            "address": ctx.address().to_string(),
            "port": ctx.port(),
            "isLocal": ctx.is_local(),
        }))
    })?;
    Ok(())
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [name, port] = &args[..] else {
        eprintln!("usage: MESH_TEST_REDIS=URL compat-test-server <name> <control port>");
        std::process::exit(2);
    };
    let redis =
        std::env::var("MESH_TEST_REDIS").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let control = match UdpSocket::bind(("127.0.0.1", port.parse::<u16>().unwrap_or(0))).await {
        Ok(s) => Arc::new(s),
        Err(e) => {
            eprintln!("{name} {port} failed to start: {e}");
            std::process::exit(1);
        }
    };
    let mut values = BTreeMap::new();
    values.insert("name".to_owned(), json!(name));
    let node = MeshNode::builder()
        .bind("127.0.0.1:4000")
        .node_type("TypeTest")
        .prefix("__test__")
        .config(|c| {
            c.redis = Some(redis);
            c.node_compat = true;
            c.values = values;
            c.backups.insert("TypeTest".to_owned(), 3);
            c.request_timeout = Duration::from_secs(10);
        })
        .start()
        .await;
    let node = match node {
        Ok(n) => n,
        Err(e) => {
            eprintln!("{name}: {e}");
            std::process::exit(1);
        }
    };
    let server = Arc::new(Server {
        name: name.clone(),
        node,
        control,
        remember: Mutex::new(Said::default()),
        thing_to_save: Mutex::new(Value::Null),
        by_name: Mutex::new(HashMap::new()),
    });
    if let Err(e) = register(&server) {
        eprintln!("{name}: {e}");
        std::process::exit(1);
    }
    eprintln!(
        "server \"{name}\" at port {port} ready (Rust, mesh port {})",
        server.node.local_key().port
    );
    let mut buf = vec![0u8; 2048];
    let mut term =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("signal");
    loop {
        tokio::select! {
            r = server.control.recv_from(&mut buf) => match r {
                Ok((n, from)) => {
                    let cmd = String::from_utf8_lossy(&buf[..n]).into_owned();
                    tokio::spawn(server.clone().command(cmd, from));
                }
                Err(e) => eprintln!("{name}: control socket: {e}"),
            },
            _ = term.recv() => break,
            _ = tokio::signal::ctrl_c() => break,
        }
    }
    let report = server.node.stop().await;
    eprintln!("{name}: stopped: {report:?}");
}
