//! A mesh-link node for the test bed, as a user's service would run one: its own process, on
//! its host's interface, through the public API. Driven by one command per line on stdin,
//! each answered by one line of JSON on stdout (after `READY <addr>` once started).
//!
//! ```text
//! testbed-node --redis redis://10.99.0.250:6379 [--nic eth0 | --address IP] [--type T]
//!              [--prefix P] [--value NAME=JSON]... [--peer-timeout-ms N] [--update-ms N]
//!              [--request-timeout-ms N] [--socket-buffer BYTES]
//! ```
//!
//! Commands: `nodes`; `ask ADDR TIMEOUT_MS` (an echo request); `send ADDR COUNT SIZE`
//! (reliable messages, up to 256 in flight); `received`; `big ADDR[,ADDR]... SIZE` (one message
//! whose receivers check every byte, to each address at once); `stats`; `fanout SIZE RELAY_LIMIT` (to every other node in the
//! view); `so-create MAX TTL_MS`, `so-get MID`, `so-inc MID DELTA COUNT`, `so-value MID`
//! (shared objects with one number `n` within `0..=MAX`); `quit`.

#![allow(
    clippy::print_stdout,
    clippy::print_stderr,
    reason = "a test bed process talks over stdout"
)]

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, Write};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::stream::{FuturesUnordered, StreamExt};
use mesh_link::shared::{Event, Mid, Properties, SharedObject};
use mesh_link::{HandlerError, MeshNode, NodeKey, Registry, SendOptions};
use serde_json::{json, Value};
use tokio::sync::Mutex;

/// The next sequence number `send` uses.
static NEXT_SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Handler of counted messages.
const SINK: u16 = 10;
/// Handler of large messages checked byte for byte.
const BIG: u16 = 11;

#[derive(Default)]
struct Received {
    total: u64,
    distinct: HashSet<(u64, u64)>,
    big_ok: u64,
    big_bad: u64,
}

/// Min and max of `n` seen on a shared object's handle (events included), and why it was
/// removed, if it was.
#[derive(Default, Clone)]
struct Seen {
    min: f64,
    max: f64,
    any: bool,
    removed: Option<String>,
}

/// The nodes this node saw leave, with when (since it started): shown by `so-value`, so that
/// a replica that went away says what this node believed.
static DEPARTED: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());

struct Handle {
    object: SharedObject,
    /// Updated by the handle's event task.
    seen: Arc<std::sync::Mutex<Seen>>,
}

/// The value after the last `name` in `args`: a later flag overrides an earlier one, as the
/// test bed's scenarios rely on (their extra flags come after the common ones).
fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .rposition(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

fn ms(args: &[String], name: &str) -> Option<Duration> {
    arg(args, name)
        .and_then(|v| v.parse().ok())
        .map(Duration::from_millis)
}

/// FNV-1a over `data`: the big message's check.
fn fnv(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

fn say(v: &Value) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{v}");
    let _ = out.flush();
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let received = Arc::new(std::sync::Mutex::new(Received::default()));
    let node = rt.block_on(start(&args, received.clone()));
    let node = match node {
        Ok(n) => n,
        Err(e) => {
            println!("ERROR {e}");
            std::process::exit(1);
        }
    };
    let mut events = node.membership_events();
    let started = Instant::now();
    rt.spawn(async move {
        loop {
            match events.recv().await {
                Ok(mesh_link::MembershipEvent::Left(r)) => {
                    let mut d = DEPARTED.lock().expect("lock");
                    if d.len() < 100 {
                        d.push(format!("{} at {:?}", r.key, started.elapsed()));
                    }
                }
                Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
            }
        }
    });
    println!("READY {}", node.local_key().socket_addr());
    let _ = std::io::stdout().flush();
    let objects: Arc<Mutex<HashMap<String, Handle>>> = Arc::default();
    for line in std::io::stdin().lock().lines().map_while(Result::ok) {
        let words: Vec<&str> = line.split_whitespace().collect();
        if words.first() == Some(&"quit") {
            break;
        }
        let answer = rt.block_on(command(&node, &words, &received, &objects));
        say(&answer);
    }
    rt.block_on(async {
        objects.lock().await.clear();
        let _ = node.stop().await;
    });
}

async fn start(
    args: &[String],
    received: Arc<std::sync::Mutex<Received>>,
) -> Result<MeshNode, mesh_link::Error> {
    let redis = arg(args, "--redis").unwrap_or_default();
    let mut values = Vec::new();
    for (i, a) in args.iter().enumerate() {
        if a == "--value" {
            if let Some((k, v)) = args.get(i + 1).and_then(|v| v.split_once('=')) {
                let v: Value = serde_json::from_str(v).unwrap_or(Value::String(v.into()));
                values.push((k.to_owned(), v));
            }
        }
    }
    let sink = received.clone();
    MeshNode::builder()
        .registry(Registry::redis(&redis)?)
        .config(|c| {
            c.prefix = arg(args, "--prefix").unwrap_or_else(|| "tb".into());
            c.node_type = arg(args, "--type").unwrap_or_else(|| "node".into());
            c.nic = arg(args, "--nic");
            c.address = arg(args, "--address").and_then(|a| a.parse().ok());
            c.port = 7000;
            if let Some(t) = ms(args, "--peer-timeout-ms") {
                c.peer_timeout = t;
            }
            if let Some(t) = ms(args, "--update-ms") {
                c.update_interval = t;
            }
            if let Some(t) = ms(args, "--request-timeout-ms") {
                c.request_timeout = t;
            }
            if let Some(b) = arg(args, "--socket-buffer").and_then(|b| b.parse().ok()) {
                c.socket_buffer = b;
            }
            c.max_message_size = 17 << 20;
            for (k, v) in values {
                c.values.insert(k, v);
            }
        })
        .on_raw(SINK, move |b: Bytes, _| {
            let mut r = sink.lock().expect("lock");
            r.total += 1;
            if b.len() >= 16 {
                let tag = u64::from_le_bytes(b[..8].try_into().expect("8 bytes"));
                let seq = u64::from_le_bytes(b[8..16].try_into().expect("8 bytes"));
                r.distinct.insert((tag, seq));
            }
            async { Ok::<_, HandlerError>(None) }
        })
        .on_raw(BIG, move |b: Bytes, _| {
            let ok = b.len() >= 8
                && u64::from_le_bytes(b[..8].try_into().expect("8 bytes")) == fnv(&b[8..]);
            let mut r = received.lock().expect("lock");
            if ok {
                r.big_ok += 1;
            } else {
                r.big_bad += 1;
            }
            async { Ok::<_, HandlerError>(None) }
        })
        .start()
        .await
}

fn key(addr: &str) -> Option<NodeKey> {
    addr.parse::<SocketAddr>().ok().map(NodeKey::from)
}

fn err(e: impl std::fmt::Display) -> Value {
    json!({"ok": false, "error": e.to_string()})
}

async fn command(
    node: &MeshNode,
    words: &[&str],
    received: &std::sync::Mutex<Received>,
    objects: &Mutex<HashMap<String, Handle>>,
) -> Value {
    let num = |i: usize| -> u64 { words.get(i).and_then(|w| w.parse().ok()).unwrap_or(0) };
    match words.first().copied().unwrap_or("") {
        "nodes" => {
            let v: Vec<Value> = node
                .nodes()
                .into_iter()
                .map(|r| {
                    json!({
                        "key": r.key.socket_addr().to_string(),
                        "type": r.node_type,
                        "values": r.values,
                    })
                })
                .collect();
            Value::Array(v)
        }
        "ask" => {
            let Some(to) = words.get(1).and_then(|a| key(a)) else {
                return err("ask ADDR TIMEOUT_MS");
            };
            let t0 = Instant::now();
            match node
                .echo(
                    to,
                    Bytes::from(vec![7u8; 64]),
                    Duration::from_millis(num(2)),
                )
                .await
            {
                Ok(b) if b.len() == 64 => {
                    json!({"ok": true, "us": t0.elapsed().as_micros() as u64})
                }
                Ok(b) => err(format!("echo of {} bytes", b.len())),
                Err(e) => {
                    json!({"ok": false, "error": e.to_string(), "us": t0.elapsed().as_micros() as u64})
                }
            }
        }
        "send" => {
            let Some(to) = words.get(1).and_then(|a| key(a)) else {
                return err("send ADDR COUNT SIZE");
            };
            let (count, size) = (num(2), (num(3) as usize).max(16));
            let tag = u64::from(node.local_key().socket_addr().port())
                | u64::from(u32::from_be_bytes(
                    match node.local_key().socket_addr().ip() {
                        std::net::IpAddr::V4(v) => v.octets(),
                        std::net::IpAddr::V6(v) => {
                            let o = v.octets();
                            [o[12], o[13], o[14], o[15]]
                        }
                    },
                )) << 16;
            let t0 = Instant::now();
            let (mut ok, mut failed, mut first) = (0u64, 0u64, None);
            let mut inflight = FuturesUnordered::new();
            // Sequence numbers go on from the last command's: every message is distinct.
            let mut next = NEXT_SEQ.fetch_add(count, std::sync::atomic::Ordering::Relaxed);
            let end = next + count;
            loop {
                while next < end && inflight.len() < 256 {
                    let mut p = vec![0u8; size];
                    p[..8].copy_from_slice(&tag.to_le_bytes());
                    p[8..16].copy_from_slice(&next.to_le_bytes());
                    next += 1;
                    let data = Bytes::from(p);
                    inflight.push(async move {
                        node.send_bytes(SINK, [to], data, SendOptions::default())
                            .await
                    });
                }
                let Some(r) = inflight.next().await else {
                    break;
                };
                match r {
                    Ok(report) if report.is_ok() => ok += 1,
                    Ok(report) => {
                        failed += 1;
                        first.get_or_insert_with(|| format!("{:?}", report.failed));
                    }
                    Err(e) => {
                        failed += 1;
                        first.get_or_insert_with(|| e.to_string());
                    }
                }
            }
            json!({"ok": ok, "failed": failed, "first_error": first,
                   "ms": t0.elapsed().as_millis() as u64})
        }
        "received" => {
            let r = received.lock().expect("lock");
            json!({"total": r.total, "distinct": r.distinct.len(),
                   "big_ok": r.big_ok, "big_bad": r.big_bad})
        }
        "big" => {
            let to: Option<Vec<NodeKey>> = words
                .get(1)
                .map(|list| list.split(',').map(key).collect())
                .unwrap_or_default();
            let Some(to) = to.filter(|t| !t.is_empty()) else {
                return err("big ADDR[,ADDR]... SIZE");
            };
            let size = (num(2) as usize).max(8);
            let mut p: Vec<u8> = (0..size).map(|i| (i * 31 % 251) as u8).collect();
            let h = fnv(&p[8..]);
            p[..8].copy_from_slice(&h.to_le_bytes());
            match node
                .send_bytes(BIG, to, Bytes::from(p), SendOptions::default())
                .await
            {
                Ok(r) if r.is_ok() => json!({"ok": true}),
                Ok(r) => err(format!("{:?}", r.failed)),
                Err(e) => err(e),
            }
        }
        "stats" => {
            let t = node.transport_stats();
            // Each session's path MTU, by peer address.
            let mtu: serde_json::Map<String, Value> = node
                .report()
                .peers
                .iter()
                .map(|p| (p.addr.to_string(), json!(p.mtu)))
                .collect();
            json!({"retransmitted": t.retransmitted, "datagrams_sent": t.datagrams_sent,
                   "datagrams_received": t.datagrams_received, "duplicates": t.duplicates,
                   "messages_failed": t.messages_failed, "peers": t.peers,
                   "sends_held": t.sends_held, "mtu": mtu})
        }
        "fanout" => {
            let size = (num(1) as usize).max(16);
            let limit = num(2) as usize;
            let me = node.local_key();
            let targets: Vec<NodeKey> = node
                .nodes()
                .into_iter()
                .map(|r| r.key)
                .filter(|k| *k != me)
                .collect();
            let mut p = vec![0u8; size];
            p[..8].copy_from_slice(&u64::MAX.to_le_bytes());
            p[8..16].copy_from_slice(&1u64.to_le_bytes());
            let opts = SendOptions::default().relay_limit(limit);
            match node.send_bytes(SINK, targets, Bytes::from(p), opts).await {
                Ok(r) => json!({
                    "delivered": r.delivered.iter().map(|k| k.socket_addr().to_string()).collect::<Vec<_>>(),
                    "failed": r.failed.iter().map(|(k, e)| json!([k.socket_addr().to_string(), e.to_string()])).collect::<Vec<_>>(),
                }),
                Err(e) => err(e),
            }
        }
        "so-create" => {
            let props = Properties::new().number("n", 0.0, 0.0..=(num(1) as f64));
            let ttl = Duration::from_millis(num(2).max(1));
            match node.shared().create(props, ttl, node.local_key()).await {
                Ok(o) => {
                    let mid = o.mid().to_string();
                    objects.lock().await.insert(mid.clone(), watch(o));
                    json!({"ok": true, "mid": mid})
                }
                Err(e) => err(e),
            }
        }
        "so-get" => {
            let Some(mid) = words.get(1).and_then(|m| m.parse::<Mid>().ok()) else {
                return err("so-get MID");
            };
            match node.shared().get(mid).await {
                Ok(o) => {
                    objects.lock().await.insert(mid.to_string(), watch(o));
                    json!({"ok": true})
                }
                Err(e) => err(e),
            }
        }
        "so-inc" => {
            let delta: f64 = words.get(2).and_then(|w| w.parse().ok()).unwrap_or(1.0);
            let object = match objects
                .lock()
                .await
                .get(words.get(1).copied().unwrap_or(""))
            {
                Some(h) => h.object.clone(),
                None => return err("no such handle"),
            };
            let results: Vec<_> = (0..num(3))
                .map(|_| object.inc("n", delta))
                .collect::<FuturesUnordered<_>>()
                .collect()
                .await;
            let ok = results.iter().filter(|r| r.is_ok()).count();
            let first = results
                .iter()
                .find_map(|r| r.as_ref().err().map(|e| e.to_string()));
            json!({"ok": ok, "failed": results.len() - ok, "first_error": first})
        }
        "so-value" => {
            let objects = objects.lock().await;
            let Some(h) = objects.get(words.get(1).copied().unwrap_or("")) else {
                return err("no such handle");
            };
            let seen = h.seen.lock().expect("lock").clone();
            let departed = DEPARTED.lock().expect("lock").clone();
            json!({"exists": h.object.exists(), "value": h.object.get("n"),
                   "version": h.object.version(), "min_seen": seen.min, "max_seen": seen.max,
                   "removed": seen.removed, "departed": departed})
        }
        other => err(format!("unknown command {other:?}")),
    }
}

/// Keeps `object`, and the least and greatest `n` its events ever showed.
fn watch(object: SharedObject) -> Handle {
    let seen = Arc::new(std::sync::Mutex::new(Seen::default()));
    let mut events = object.updates();
    let s = seen.clone();
    let s2 = seen.clone();
    let note = move |v: f64| {
        let mut s = s.lock().expect("lock");
        if !s.any || v < s.min {
            s.min = v;
        }
        if !s.any || v > s.max {
            s.max = v;
        }
        s.any = true;
    };
    if let Some(v) = object.get("n").and_then(|v| v.as_f64()) {
        note(v);
    }
    tokio::spawn(async move {
        while let Ok(e) = events.recv().await {
            match e {
                Event::Update { value, .. } => {
                    if let Some(v) = value.as_f64() {
                        note(v);
                    }
                }
                Event::Removed(reason) => {
                    s2.lock().expect("lock").removed = Some(format!("{reason:?}"));
                }
                _ => {}
            }
        }
    });
    Handle { object, seen }
}
