//! What the tests share: a fast configuration, the original suite's handlers, bounded waits.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use mesh_link::{Config, Context, HandlerError, MeshNode, Registry};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

/// Timings scaled down so that joins, leaves and timeouts take a fraction of a second.
pub(crate) fn fast(prefix: &str) -> Config {
    let mut c = Config::default();
    c.prefix = prefix.to_owned();
    c.node_type = "TypeTest".into();
    c.address = Some("127.0.0.1".parse().unwrap());
    c.port = 0;
    c.update_interval = Duration::from_millis(100);
    c.peer_timeout = Duration::from_millis(600);
    c.request_timeout = Duration::from_secs(3);
    c.stop_timeout = Duration::from_millis(500);
    c
}

/// Bounds a wait that should end by itself; a hang fails the test with `what`.
pub(crate) async fn within<T>(what: &str, secs: u64, f: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(secs), f)
        .await
        .unwrap_or_else(|_| panic!("{what}: not done within {secs} s"))
}

/// Waits until `node` sees `n` nodes.
pub(crate) async fn wait_nodes(node: &MeshNode, n: usize) {
    within(
        &format!("{} sees {n} nodes", node.local_key()),
        20,
        node.wait_for(|x| x.nodes().len() == n),
    )
    .await;
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Msg {
    pub(crate) message: String,
}

pub(crate) fn msg(s: &str) -> Msg {
    Msg {
        message: s.to_owned(),
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct SenderInfo {
    pub(crate) address: String,
    pub(crate) port: u16,
    pub(crate) is_local: bool,
    pub(crate) node_type: Option<String>,
}

/// What a node's handlers remember.
#[derive(Debug, Default)]
pub(crate) struct Memory {
    /// Handler 7's last message.
    pub(crate) remembered: Option<Msg>,
    /// Handlers 9 and 10's last message.
    pub(crate) stored: Option<Msg>,
    /// How many times each handler ran.
    pub(crate) runs: HashMap<u16, usize>,
}

pub(crate) type Shared = Arc<Mutex<Memory>>;

/// A node with the original test suite's handlers (§6.1 of the reference):
/// 1 answers `message + " world"`; 2 answers `message + " bar"`; 3 never answers;
/// 7 remembers; 8 answers what 7 remembered; 9 stores and forwards to this node's backups
/// with 10; 10 stores; 11 answers what was stored; 12 answers the sender's info;
/// 13 fails; 14 panics.
pub(crate) async fn suite_node(
    registry: &Registry,
    config: Config,
    name: &str,
) -> (MeshNode, Shared) {
    let mem: Shared = Arc::default();
    let mut config = config;
    config.values.insert("name".into(), name.into());
    let m = |id: u16, mem: &Shared| {
        *mem.lock().runs.entry(id).or_default() += 1;
    };
    let (m1, m2, m7, m8, m9, m10) = (
        mem.clone(),
        mem.clone(),
        mem.clone(),
        mem.clone(),
        mem.clone(),
        mem.clone(),
    );
    let m11 = mem.clone();
    let node = MeshNode::builder()
        .config(|c| *c = config)
        .registry(registry.clone())
        .on_request(1, move |d: Msg, _c: Context| {
            m(1, &m1);
            async move { Ok::<_, HandlerError>(msg(&(d.message + " world"))) }
        })
        .on_request(2, move |d: Msg, _c: Context| {
            m(2, &m2);
            async move { Ok::<_, HandlerError>(msg(&(d.message + " bar"))) }
        })
        .on_request(3, |_d: Msg, _c: Context| async move {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            Ok::<_, HandlerError>(())
        })
        .on(7, move |d: Msg, _c: Context| {
            m(7, &m7);
            m7.lock().remembered = Some(d);
            async {}
        })
        .on_request(8, move |(): (), _c: Context| {
            let r = m8.lock().remembered.clone();
            async move { Ok::<_, HandlerError>(r) }
        })
        .on(9, move |d: Msg, ctx: Context| {
            m(9, &m9);
            m9.lock().stored = Some(d.clone());
            async move {
                let node = ctx.node();
                let backups = node.backup_nodes(node.local_key());
                let report = node.send(10, &backups, &d).await.expect("send to backups");
                assert!(report.is_ok(), "backups got it: {report:?}");
            }
        })
        .on(10, move |d: Msg, _c: Context| {
            m(10, &m10);
            m10.lock().stored = Some(d);
            async {}
        })
        .on_request(11, move |(): (), _c: Context| {
            let r = m11.lock().stored.clone();
            async move { Ok::<_, HandlerError>(r) }
        })
        .on_request(12, |(): (), c: Context| async move {
            Ok::<_, HandlerError>(SenderInfo {
                address: c.address().to_string(),
                port: c.port(),
                is_local: c.is_local(),
                node_type: c.node_type(),
            })
        })
        .on_request(13, |(): (), _c: Context| async move {
            Err::<(), _>(HandlerError::new("no such thing"))
        })
        .on_request(14, |(): (), _c: Context| async move {
            if true {
                panic!("handler 14 always panics");
            }
            Ok::<_, HandlerError>(())
        })
        .start()
        .await
        .expect("node starts");
    (node, mem)
}

pub(crate) fn runs(mem: &Shared, id: u16) -> usize {
    mem.lock().runs.get(&id).copied().unwrap_or(0)
}

/// Waits until handler `id` ran `n` times on a node (handlers run after the acknowledgement
/// that resolves `send`, so a count is eventually, not immediately, right).
pub(crate) async fn wait_runs(mem: &Shared, id: u16, n: usize) {
    within(&format!("handler {id} ran {n} times"), 20, async {
        while runs(mem, id) < n {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    })
    .await;
    assert_eq!(runs(mem, id), n, "handler {id} ran more than {n} times");
}
