//! Node-compat mode without Node: the configuration it refuses, and discovery in both
//! schemas against a stand-in for a Node node (its announce key written to Redis as the
//! original writes it, and a socket that answers the original's raw ping). The real Node
//! package is exercised in `benches/tests/node_mixed.rs` and `node_suite.rs`.

use std::net::UdpSocket;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use mesh_discovery::compat::{AnnounceKey, NODE_PROTOCOL};
use mesh_discovery::testing::RedisServer;
use mesh_link::{Error, MeshNode, NodeKey, Registry, Secret};

use crate::common::{fast, within};

fn compat(prefix: &str, redis: &RedisServer) -> mesh_link::Config {
    let mut c = fast(prefix);
    c.redis = Some(redis.url());
    c.node_compat = true;
    c
}

#[tokio::test]
async fn node_compat_needs_redis_and_refuses_a_cluster_key() {
    let mut c = fast("nc-config");
    c.node_compat = true;
    let e = MeshNode::builder()
        .registry(Registry::memory())
        .config(|x| *x = c.clone())
        .start()
        .await
        .unwrap_err();
    assert!(
        matches!(&e, Error::Config(m) if m.contains("needs Redis")),
        "{e}"
    );
    c.cluster_key = Some(Secret::new("0123456789abcdef0123456789abcdef"));
    let e = c.validate().unwrap_err().to_string();
    assert!(
        e.contains("node_compat") && e.contains("cluster_key"),
        "{e}"
    );
}

/// A stand-in for a Node node: its announce key, rewritten every 500 ms while `announce`
/// holds, and a socket answering `ping` with `PONG\n` while `answer` holds.
struct FakeNode {
    key: NodeKey,
    announce: Arc<AtomicBool>,
    answer: Arc<AtomicBool>,
}

impl FakeNode {
    fn start(redis: &RedisServer, prefix: &str) -> Self {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        socket
            .set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let port = socket.local_addr().unwrap().port();
        let key = NodeKey::new("127.0.0.1".parse().unwrap(), port);
        let announce = Arc::new(AtomicBool::new(true));
        let answer = Arc::new(AtomicBool::new(true));
        let mut values = std::collections::BTreeMap::new();
        values.insert("name".to_owned(), serde_json::json!("js-1"));
        let name = AnnounceKey {
            prefix: prefix.to_owned(),
            address: "127.0.0.1".into(),
            port,
            node_type: "js".into(),
            backups: Vec::new(),
            values,
            objects: 0,
        }
        .encode()
        .unwrap();
        let a = announce.clone();
        let redis_port: u16 = redis.url().rsplit(':').next().unwrap().parse().unwrap();
        std::thread::spawn(move || {
            // Bounded: 60 s at most, as every loop of a test.
            for _ in 0..120 {
                if a.load(Ordering::SeqCst) {
                    setex_empty(redis_port, &name);
                }
                std::thread::sleep(Duration::from_millis(500));
            }
        });
        let ans = answer.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 64];
            for _ in 0..600 {
                if let Ok((n, from)) = socket.recv_from(&mut buf) {
                    if &buf[..n] == b"ping" && ans.load(Ordering::SeqCst) {
                        let _ = socket.send_to(b"PONG\n", from);
                    }
                }
            }
        });
        Self {
            key,
            announce,
            answer,
        }
    }
}

/// `SETEX name 2 ""`, as the original announces (RESP, so that the empty value is one).
fn setex_empty(port: u16, name: &str) {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return;
    };
    let cmd = format!(
        "*4\r\n$5\r\nSETEX\r\n${}\r\n{name}\r\n$1\r\n2\r\n$0\r\n\r\n",
        name.len()
    );
    let _ = s.write_all(cmd.as_bytes());
    let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
    let mut ok = [0u8; 5];
    let _ = s.read(&mut ok);
}

#[tokio::test]
async fn node_nodes_are_listed_once_kept_while_they_answer_and_leave_when_they_do_not() {
    let redis = RedisServer::start();
    let prefix = "nc-discovery";
    let a = MeshNode::start(compat(prefix, &redis)).await.unwrap();
    let b = MeshNode::start(compat(prefix, &redis)).await.unwrap();
    let fake = FakeNode::start(&redis, prefix);
    within(
        "a sees b and the Node node",
        20,
        a.wait_for(|n| n.nodes().len() == 3),
    )
    .await;
    let nodes = a.nodes();
    let listed: Vec<NodeKey> = nodes.iter().map(|r| r.key).collect();
    assert_eq!(
        listed.len(),
        3,
        "b, a Rust node in this mode too, is listed once: {listed:?}"
    );
    let js = a.node(fake.key).expect("the Node node is a member");
    assert_eq!(js.protocol, NODE_PROTOCOL);
    assert_eq!(js.node_type, "js");
    assert_eq!(js.values["name"], "js-1");
    assert!(a.is_node_peer(fake.key));
    assert!(!a.is_node_peer(b.local_key()), "b is ours");
    assert_eq!(a.node(b.local_key()).unwrap().protocol, 1);
    let rtt = a.ping(fake.key, Duration::from_secs(1)).await;
    assert!(
        rtt.is_ok(),
        "the Node node answers the original's raw ping: {rtt:?}"
    );

    // Its key expires, but it still answers: absence in Redis is not a departure.
    fake.announce.store(false, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(
        a.node_exists(fake.key),
        "a Node node whose key expired but that answers stays"
    );

    // It stops answering too: it leaves.
    fake.answer.store(false, Ordering::SeqCst);
    within(
        "a sees the Node node leave",
        30,
        a.wait_for(|n| !n.node_exists(fake.key)),
    )
    .await;
    assert!(a.node_exists(b.local_key()), "and only it");
    let _ = b.stop().await;
    let _ = a.stop().await;
}
