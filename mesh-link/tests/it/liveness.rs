//! How fast a node notices a peer is gone, and that it never takes a quiet peer for a dead
//! one: the transport's keepalive follows `peer_timeout`, whatever it is set to.

use std::sync::mpsc;
use std::time::Duration;

use mesh_link::{MembershipEvent, MeshNode, Registry, RequestError};

use crate::common::*;

/// The smallest `peer_timeout` the configuration accepts.
const SHORTEST: Duration = Duration::from_millis(100);

fn short(prefix: &str) -> mesh_link::Config {
    let mut c = fast(prefix);
    c.peer_timeout = SHORTEST;
    c.request_timeout = Duration::from_secs(30);
    c
}

async fn start(registry: &Registry, config: mesh_link::Config) -> MeshNode {
    MeshNode::builder()
        .config(|c| *c = config)
        .registry(registry.clone())
        .start()
        .await
        .expect("node starts")
}

#[tokio::test]
async fn a_peer_timeout_below_the_smallest_is_refused() {
    let mut c = short("too-short");
    c.peer_timeout = SHORTEST - Duration::from_millis(1);
    let e = MeshNode::builder()
        .config(|x| *x = c)
        .registry(Registry::memory())
        .start()
        .await
        .unwrap_err();
    assert!(e.to_string().contains("peer_timeout"), "{e}");
}

/// Issue 16: with `peer_timeout` at its smallest, two healthy nodes that fall silent after
/// talking stay in each other's view for ten times that timeout (the keepalive used to stay at
/// 1 s, so a quiet peer timed out before the first probe was even sent).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shortest_peer_timeout_keeps_quiet_healthy_peers() {
    let registry = Registry::memory();
    let a = start(&registry, short("quiet")).await;
    let b = start(&registry, short("quiet")).await;
    for n in [&a, &b] {
        wait_nodes(n, 2).await;
    }
    let mut events = [a.membership_events(), b.membership_events()];
    a.ping(b.local_key(), Duration::from_secs(5)).await.unwrap();
    b.ping(a.local_key(), Duration::from_secs(5)).await.unwrap();
    tokio::time::sleep(SHORTEST * 10).await;
    for (n, e) in [&a, &b].iter().zip(&mut events) {
        let left: Vec<_> = std::iter::from_fn(|| e.try_recv().ok())
            .filter(|e| matches!(e, MembershipEvent::Left(_)))
            .collect();
        assert!(
            left.is_empty(),
            "{} saw a healthy peer leave: {left:?}",
            n.local_key()
        );
        assert_eq!(n.nodes().len(), 2, "{} still sees both", n.local_key());
        assert_eq!(n.transport_stats().peers, 1, "the session lives on");
    }
    // And they still talk, without a new session.
    a.ping(b.local_key(), Duration::from_secs(5)).await.unwrap();
    let _ = b.stop().await;
    let _ = a.stop().await;
}

/// A peer that freezes (its runtime's one thread blocked: no reads, no acknowledgements, as a
/// stopped process) is found dead by the transport: a request to it fails as undelivered long
/// before its 30 s timeout, and it leaves the view.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_peer_is_found_by_the_transport() {
    let registry = Registry::memory();
    let mut config = short("frozen");
    // Its record outlives the freeze by far: only the transport can tell.
    config.update_interval = Duration::from_secs(5);
    let a = start(&registry, config.clone()).await;
    let (key_tx, key_rx) = mpsc::channel();
    let (freeze_tx, freeze_rx) = mpsc::channel::<()>();
    let (thaw_tx, thaw_rx) = mpsc::channel::<()>();
    let (frozen_tx, frozen_rx) = mpsc::channel::<()>();
    let frozen = {
        let registry = registry.clone();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                let b = start(&registry, config).await;
                key_tx.send(b.local_key()).unwrap();
                while freeze_rx.try_recv().is_err() {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                // Frozen: this blocks the runtime's only thread.
                frozen_tx.send(()).unwrap();
                let _ = thaw_rx.recv_timeout(Duration::from_secs(60));
                let _ = b.stop().await;
            });
        })
    };
    let b = key_rx.recv_timeout(Duration::from_secs(20)).unwrap();
    within("a sees b", 20, a.wait_for(|n| n.node_exists(b))).await;
    let mut events = a.membership_events();
    a.ping(b, Duration::from_secs(5)).await.unwrap();
    freeze_tx.send(()).unwrap();
    frozen_rx.recv_timeout(Duration::from_secs(20)).unwrap();
    let e = within(
        "a request to the frozen node fails",
        20,
        a.ping(b, Duration::from_secs(30)),
    )
    .await
    .unwrap_err();
    assert!(matches!(e, RequestError::NotDelivered { .. }), "{e:?}");
    within("the frozen node leaves the view", 20, async {
        loop {
            if let MembershipEvent::Left(r) = events.recv().await.unwrap() {
                assert_eq!(r.key, b);
                break;
            }
        }
    })
    .await;
    thaw_tx.send(()).unwrap();
    frozen.join().unwrap();
    let _ = a.stop().await;
}
