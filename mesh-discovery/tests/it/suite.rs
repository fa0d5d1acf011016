//! Behaviours every registry backend must show, written once and run on each (real time,
//! 250 ms intervals): the in-memory registry and Redis pass the same suite.

use std::future::Future;
use std::time::Duration;

use mesh_discovery::{Membership, MembershipConfig, MembershipEvent, NodeKey, NodeRecord};
use tokio::sync::broadcast;

/// Gives each node of one mesh its registry handle.
pub(crate) trait Fixture {
    type R: mesh_discovery::Backend;
    fn registry(&self) -> impl Future<Output = Self::R>;
}

pub(crate) fn key(port: u16) -> NodeKey {
    NodeKey::new("127.0.0.1".parse().unwrap(), port)
}

pub(crate) fn config() -> MembershipConfig {
    let mut c = MembershipConfig::default();
    // 750 ms of liveness: short enough for quick tests, long enough for a loaded 2-core box.
    c.update_interval = Duration::from_millis(250);
    c
}

async fn node<B: Fixture>(b: &B, port: u16, ty: &str) -> Membership<B::R> {
    Membership::start(
        b.registry().await,
        NodeRecord::new(key(port), ty, u64::from(port), 0),
        config(),
    )
    .await
}

async fn next(events: &mut broadcast::Receiver<MembershipEvent>) -> MembershipEvent {
    tokio::time::timeout(Duration::from_secs(10), events.recv())
        .await
        .expect("an event within 10 s")
        .expect("open")
}

pub(crate) async fn join_update_leave<B: Fixture>(b: &B) {
    let a = node(b, 1, "game").await;
    let mut ev = a.events();
    let n2 = node(b, 2, "game").await;
    let n3 = node(b, 3, "chat").await;
    for expected in [2, 3] {
        assert!(
            matches!(next(&mut ev).await, MembershipEvent::Joined(r) if r.key == key(expected))
        );
    }
    assert_eq!(a.nodes().len(), 3);
    assert_eq!(a.nodes_by_type("game").len(), 2);
    n2.set_value("v", &"a`b;c\"\n").unwrap();
    match next(&mut ev).await {
        MembershipEvent::Updated(r) => assert_eq!(r.values["v"], "a`b;c\"\n"),
        other => panic!("{other:?}"),
    }
    n3.set_type("lobby");
    assert!(matches!(next(&mut ev).await, MembershipEvent::Updated(r) if r.node_type == "lobby"));
    n3.stop().await;
    assert!(matches!(next(&mut ev).await, MembershipEvent::Left(r) if r.key == key(3)));
    assert!(!a.node_exists(key(3)));
    n2.stop().await;
    a.stop().await;
}

pub(crate) async fn killed_node_expires<B: Fixture>(b: &B) {
    let a = node(b, 1, "game").await;
    let n2 = node(b, 2, "game").await;
    a.wait_for(|m| m.node_exists(key(2))).await;
    let mut ev = a.events();
    drop(n2); // like SIGKILL: no deregistration; its liveness runs out after 3 intervals
    assert!(matches!(next(&mut ev).await, MembershipEvent::Left(r) if r.key == key(2)));
    a.stop().await;
}

pub(crate) async fn falsy_and_structured_values<B: Fixture>(b: &B) {
    let a = node(b, 1, "game").await;
    let n2 = node(b, 2, "game").await;
    n2.set_value("zero", &0).unwrap();
    n2.set_value("no", &false).unwrap();
    n2.set_value("list", &vec!["x", "y"]).unwrap();
    tokio::time::timeout(
        Duration::from_secs(10),
        a.wait_for(|m| m.node_value::<Vec<String>>(key(2), "list").is_some()),
    )
    .await
    .expect("values arrive");
    assert_eq!(a.node_value::<i32>(key(2), "zero"), Some(0));
    assert_eq!(a.node_value::<bool>(key(2), "no"), Some(false));
    assert_eq!(a.nodes().len(), 2, "one record per node");
    n2.stop().await;
    a.stop().await;
}
