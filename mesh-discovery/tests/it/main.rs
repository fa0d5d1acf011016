//! mesh-discovery behaviour, on the in-memory registry (tokio's paused clock: intervals pass
//! instantly and deterministically), and against real `redis-server` processes (`redis`).

mod redis;
mod suite;

use std::collections::HashMap;
use std::time::Duration;

use mesh_discovery::{
    Membership, MembershipConfig, MembershipEvent, MemoryRegistry, NodeKey, NodeRecord,
};
use proptest::prelude::*;
use tokio::sync::broadcast;

fn key(port: u16) -> NodeKey {
    NodeKey::new("127.0.0.1".parse().unwrap(), port)
}

async fn node(reg: &MemoryRegistry, port: u16, ty: &str) -> Membership<MemoryRegistry> {
    node_with(reg, port, ty, MembershipConfig::default()).await
}

async fn node_with(
    reg: &MemoryRegistry,
    port: u16,
    ty: &str,
    config: MembershipConfig,
) -> Membership<MemoryRegistry> {
    Membership::start(
        reg.clone(),
        NodeRecord::new(key(port), ty, u64::from(port), 0),
        config,
    )
    .await
}

/// The next event, waiting at most `secs` of (virtual) time.
async fn next(events: &mut broadcast::Receiver<MembershipEvent>, secs: u64) -> MembershipEvent {
    tokio::time::timeout(Duration::from_secs(secs), events.recv())
        .await
        .expect("an event in time")
        .expect("open")
}

/// The shared suite on the in-memory backend.
struct Memory(MemoryRegistry);

impl suite::Fixture for Memory {
    type R = MemoryRegistry;
    async fn registry(&self) -> MemoryRegistry {
        self.0.clone()
    }
}

#[tokio::test]
async fn suite_join_update_leave_in_memory() {
    suite::join_update_leave(&Memory(MemoryRegistry::new())).await;
}

#[tokio::test]
async fn suite_killed_node_expires_in_memory() {
    suite::killed_node_expires(&Memory(MemoryRegistry::new())).await;
}

#[tokio::test]
async fn suite_values_in_memory() {
    suite::falsy_and_structured_values(&Memory(MemoryRegistry::new())).await;
}

#[tokio::test(start_paused = true)]
async fn join_update_and_leave_are_pushed() {
    let reg = MemoryRegistry::new();
    let a = node(&reg, 1, "game").await;
    let mut ev = a.events();
    let b = node(&reg, 2, "game").await;
    let c = node(&reg, 3, "chat").await;
    assert!(matches!(next(&mut ev, 1).await, MembershipEvent::Joined(r) if r.key == key(2)));
    assert!(matches!(next(&mut ev, 1).await, MembershipEvent::Joined(r) if r.key == key(3)));
    assert_eq!(a.nodes().len(), 3);
    assert_eq!(a.nodes_by_type("game").len(), 2);
    assert!(a.node_exists(key(3)) && a.is_local(key(1)) && !a.is_local(key(2)));

    b.set_value("status", &"online").unwrap();
    match next(&mut ev, 1).await {
        MembershipEvent::Updated(r) => assert_eq!(r.values["status"], "online"),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        a.node_value::<String>(key(2), "status").as_deref(),
        Some("online")
    );

    c.stop().await;
    assert!(matches!(next(&mut ev, 1).await, MembershipEvent::Left(r) if r.key == key(3)));
    assert!(!a.node_exists(key(3)));
    b.stop().await;
    a.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_killed_node_expires_within_its_ttl() {
    let reg = MemoryRegistry::new();
    let a = node(&reg, 1, "game").await;
    let b = node(&reg, 2, "game").await;
    a.wait_for(|m| m.node_exists(key(2))).await;
    let mut ev = a.events();
    let killed_at = tokio::time::Instant::now();
    drop(b); // like SIGKILL: no deregistration
    assert!(matches!(next(&mut ev, 10).await, MembershipEvent::Left(r) if r.key == key(2)));
    // Three intervals of liveness, noticed at the next interval: virtual time, not wall time.
    assert!(
        killed_at.elapsed() <= Duration::from_secs(4),
        "{:?}",
        killed_at.elapsed()
    );
    a.stop().await;
}

#[tokio::test(start_paused = true)]
async fn registry_down_keeps_the_view_and_recovers() {
    let reg = MemoryRegistry::new();
    let a = node(&reg, 1, "game").await;
    let b = node(&reg, 2, "game").await;
    a.wait_for(|m| m.node_exists(key(2))).await;
    reg.set_down(true);
    tokio::time::sleep(Duration::from_secs(20)).await;
    assert!(a.node_exists(key(2)), "last known view kept");
    assert!(a.stats().registry_errors > 0);
    // While it was down, records expired; when it returns, both re-register.
    reg.set_down(false);
    tokio::time::sleep(Duration::from_secs(40)).await;
    let c = node(&reg, 3, "game").await;
    c.wait_for(|m| m.node_exists(key(1)) && m.node_exists(key(2)))
        .await;
    a.wait_for(|m| m.node_exists(key(3))).await;
    for m in [&a, &b, &c] {
        m.stop().await;
    }
}

#[tokio::test(start_paused = true)]
async fn unreadable_records_are_skipped_and_counted() {
    let reg = MemoryRegistry::new();
    let a = node(&reg, 1, "game").await;
    reg.insert_raw(key(50), b"not json".to_vec(), Duration::from_secs(60));
    reg.insert_raw(key(51), vec![b'x'; 100_000], Duration::from_secs(60));
    let mut foreign = NodeRecord::new(key(52), "game", 1, 0);
    foreign.version = 9;
    reg.insert_raw(key(52), foreign.encode(), Duration::from_secs(60));
    // A record stored under another node's key.
    reg.insert_raw(
        key(53),
        NodeRecord::new(key(54), "game", 1, 0).encode(),
        Duration::from_secs(60),
    );
    let b = node(&reg, 2, "game").await;
    a.wait_for(|m| m.node_exists(key(2))).await;
    assert!(a.stats().skipped_records >= 4);
    assert_eq!(a.nodes().len(), 2, "only the real nodes");
    a.stop().await;
    b.stop().await;
}

#[tokio::test(start_paused = true)]
async fn values_hold_any_characters_and_falsy_values() {
    let reg = MemoryRegistry::new();
    let a = node(&reg, 1, "game").await;
    let b = node(&reg, 2, "game").await;
    let tricky = "a`b;c\"d\n{e}";
    b.set_value("tricky", &tricky).unwrap();
    b.set_value("zero", &0).unwrap();
    b.set_value("no", &false).unwrap();
    b.set_value("empty", &"").unwrap();
    b.set_value("map", &HashMap::from([("k", vec![1, 2])]))
        .unwrap();
    a.wait_for(|m| m.node_value::<String>(key(2), "empty").is_some())
        .await;
    assert_eq!(
        a.node_value::<String>(key(2), "tricky").as_deref(),
        Some(tricky)
    );
    assert_eq!(a.node_value::<i32>(key(2), "zero"), Some(0));
    assert_eq!(a.node_value::<bool>(key(2), "no"), Some(false));
    assert_eq!(
        a.node_value::<HashMap<String, Vec<i32>>>(key(2), "map"),
        Some(HashMap::from([("k".to_owned(), vec![1, 2])]))
    );
    assert_eq!(
        a.node_value::<i32>(key(2), "tricky"),
        None,
        "wrong type is None"
    );
    // One record per node: changing values rewrites it, no stale duplicates.
    b.set_value("zero", &1).unwrap();
    a.wait_for(|m| m.node_value::<i32>(key(2), "zero") == Some(1))
        .await;
    assert_eq!(a.nodes().len(), 2);
    a.stop().await;
    b.stop().await;
}

#[tokio::test(start_paused = true)]
async fn backups_are_stable_replaced_and_used_by_prepare_nodes() {
    let reg = MemoryRegistry::new();
    let mut config = MembershipConfig::default();
    config.backups.insert("game".to_owned(), 2);
    let mut nodes = Vec::new();
    for port in 1..=5 {
        nodes.push(node_with(&reg, port, "game", config.clone()).await);
    }
    let chat = node(&reg, 9, "chat").await;
    let a = nodes.remove(0);
    a.wait_for(|m| m.backups_of(m.local_key()).len() == 2).await;
    let first = a.backups_of(key(1));
    assert!(
        first.iter().all(|k| *k != key(1) && *k != key(9)),
        "same type, not self"
    );
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert_eq!(a.backups_of(key(1)), first, "stable while they live");
    // Others learn a's backups from its record.
    chat.wait_for(|m| m.backups_of(key(1)) == first).await;

    // One backup leaves: it is replaced, the other is kept.
    let gone = first[0];
    let idx = nodes.iter().position(|m| m.local_key() == gone).unwrap();
    nodes.remove(idx).stop().await;
    a.wait_for(|m| {
        let b = m.backups_of(key(1));
        b.len() == 2 && !b.contains(&gone)
    })
    .await;
    assert!(a.backups_of(key(1)).contains(&first[1]));

    // The original's prepareNodes: a dead node is replaced by its first live backup.
    let a_backups = a.backups_of(key(1));
    chat.wait_for(|m| m.backups_of(key(1)) == a_backups).await;
    a.stop().await;
    chat.wait_for(|m| !m.node_exists(key(1))).await;
    let prepared = chat.prepare_nodes("game", &[key(1), key(9)]);
    assert_eq!(prepared, vec![a_backups[0], key(9)]);
    assert!(
        chat.prepare_nodes("game", &[key(77)]).is_empty(),
        "unknown and dead: left out"
    );
    for m in nodes {
        m.stop().await;
    }
    chat.stop().await;
}

#[tokio::test(start_paused = true)]
async fn mark_down_removes_now_and_a_live_node_comes_back() {
    let reg = MemoryRegistry::new();
    let mut config = MembershipConfig::default();
    config.reconcile_every = 2;
    let a = node_with(&reg, 1, "game", config).await;
    let b = node(&reg, 2, "game").await;
    a.wait_for(|m| m.node_exists(key(2))).await;
    let mut ev = a.events();
    a.mark_down(key(2));
    assert!(!a.node_exists(key(2)));
    assert!(matches!(next(&mut ev, 1).await, MembershipEvent::Left(_)));
    // b is in fact alive: the next reconciliation brings it back.
    assert!(matches!(next(&mut ev, 5).await, MembershipEvent::Joined(r) if r.key == key(2)));
    a.stop().await;
    b.stop().await;
}

#[tokio::test(start_paused = true)]
async fn set_type_is_published() {
    let reg = MemoryRegistry::new();
    let a = node(&reg, 1, "game").await;
    let b = node(&reg, 2, "game").await;
    b.set_type("lobby");
    a.wait_for(|m| m.nodes_by_type("lobby").len() == 1).await;
    assert_eq!(b.node_type(), "lobby");
    a.stop().await;
    b.stop().await;
}

proptest! {
    #[test]
    fn record_decoding_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = NodeRecord::decode(&bytes);
    }

    #[test]
    fn records_round_trip(ty in ".{0,16}", name in ".{0,8}", v in any::<i64>(), port in 1u16..) {
        let mut r = NodeRecord::new(key(port), ty, 7, 9);
        r.values.insert(name, serde_json::json!(v));
        prop_assert_eq!(NodeRecord::decode(&r.encode()).unwrap(), r);
    }
}

/// Found by the `discovery_record` fuzz target: a number with more digits than an `f64` holds
/// was parsed with a rounding error, so the record read back from its own encoding differed
/// (and a node republishing it would flap). Numbers now parse exactly (`float_roundtrip`).
#[test]
fn long_numbers_survive_a_round_trip() {
    let text = format!(
        r#"{{"version":1,"key":{{"address":"127.0.0.1","port":8100}},"incarnation":7,"node_type":"game","values":{{"n":7{}}},"backups":[],"started_ms":0,"protocol":1}}"#,
        "4".repeat(99)
    );
    let r = NodeRecord::decode(text.as_bytes()).unwrap();
    assert_eq!(NodeRecord::decode(&r.encode()).unwrap(), r);
}

/// Events reach subscribers in the order the view changed, even when two tasks change it at
/// once (the membership task applies b's updates while another thread marks b down): a
/// subscriber never sees b updated while it is out of the view, joined while in it, or left
/// twice. Events used to be sent after the view's lock was let go, so they could cross.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_follow_the_view_under_concurrent_changes() {
    let reg = MemoryRegistry::new();
    let a = std::sync::Arc::new(node(&reg, 1, "game").await);
    let b = node(&reg, 2, "game").await;
    tokio::time::timeout(
        Duration::from_secs(20),
        a.wait_for(|m| m.node_exists(key(2))),
    )
    .await
    .unwrap();
    let mut events = a.events();
    let checker = tokio::spawn(async move {
        let mut in_view = true;
        let mut seen = 0u64;
        loop {
            let e = match events.recv().await {
                Ok(e) => e,
                Err(broadcast::error::RecvError::Closed) => return seen,
                Err(e) => panic!("{e}"),
            };
            seen += 1;
            match e {
                MembershipEvent::Joined(_) => {
                    assert!(!in_view, "event {seen}: joined while in view")
                }
                MembershipEvent::Updated(_) => assert!(in_view, "event {seen}: updated while out"),
                MembershipEvent::Left(_) => assert!(in_view, "event {seen}: left while out"),
                _ => {}
            }
            in_view = !matches!(e, MembershipEvent::Left(_));
        }
    });
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let marker = {
        let (a, done) = (a.clone(), done.clone());
        std::thread::spawn(move || {
            for _ in 0..10_000_000 {
                if done.load(std::sync::atomic::Ordering::Relaxed) {
                    break;
                }
                a.mark_down(key(2));
            }
        })
    };
    for i in 0..3000 {
        b.set_value("i", &i).unwrap();
        if i % 4 == 0 {
            tokio::time::sleep(Duration::from_micros(100)).await;
        }
    }
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    marker.join().unwrap();
    b.stop().await;
    let a = std::sync::Arc::into_inner(a).expect("one handle left");
    a.stop().await;
    drop(a);
    let seen = tokio::time::timeout(Duration::from_secs(20), checker)
        .await
        .expect("checker ends")
        .expect("no disorder");
    assert!(
        seen > 10,
        "the view changed under both tasks ({seen} events)"
    );
}

/// Drains what arrived so far.
fn drained(events: &mut broadcast::Receiver<MembershipEvent>) -> Vec<MembershipEvent> {
    std::iter::from_fn(|| events.try_recv().ok()).collect()
}

fn lefts(events: &[MembershipEvent]) -> Vec<NodeKey> {
    events
        .iter()
        .filter_map(|e| match e {
            MembershipEvent::Left(r) => Some(r.key),
            _ => None,
        })
        .collect()
}

/// An outage, then a registry that comes back empty (a Redis restarted without persistence):
/// nobody is taken for gone while the survivors re-register, however far they backed off,
/// while a node that really died during the outage still leaves once the grace is over.
#[tokio::test(start_paused = true)]
async fn an_emptied_registry_is_not_evidence_of_death() {
    let reg = MemoryRegistry::new();
    let a = node(&reg, 1, "game").await;
    let b = node(&reg, 2, "game").await;
    let c = node(&reg, 3, "game").await;
    a.wait_for(|m| m.node_exists(key(2)) && m.node_exists(key(3)))
        .await;
    let mut ev = a.events();
    for outage in [Duration::from_secs(3), Duration::from_secs(40)] {
        reg.set_down(true);
        tokio::time::sleep(outage).await;
        reg.clear();
        reg.set_down(false);
        // Long enough for every back-off to end and every record to be rewritten.
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert!(
            lefts(&drained(&mut ev)).is_empty(),
            "after a {outage:?} outage"
        );
        assert!(a.node_exists(key(2)) && a.node_exists(key(3)));
    }
    // Now c dies during an outage (no goodbye), and the registry comes back empty.
    reg.set_down(true);
    tokio::time::sleep(Duration::from_secs(3)).await;
    drop(c);
    reg.clear();
    reg.set_down(false);
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert_eq!(
        lefts(&drained(&mut ev)),
        vec![key(3)],
        "only the dead node left"
    );
    assert!(a.node_exists(key(2)) && !a.node_exists(key(3)));
    a.stop().await;
    b.stop().await;
}

/// With a liveness check, a node whose record is gone stays while it answers (it lost the
/// registry, not the network) and leaves once it does not.
#[tokio::test(start_paused = true)]
async fn a_liveness_check_keeps_a_node_that_answers() {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::Arc;
    let reg = MemoryRegistry::new();
    let a = node(&reg, 1, "game").await;
    let b = node(&reg, 2, "game").await;
    a.wait_for(|m| m.node_exists(key(2))).await;
    let answers = Arc::new(AtomicBool::new(true));
    let asked = Arc::new(AtomicUsize::new(0));
    {
        let (answers, asked) = (answers.clone(), asked.clone());
        a.set_liveness_check(Some(Arc::new(move |k| {
            assert_eq!(k, key(2));
            asked.fetch_add(1, Ordering::Relaxed);
            let alive = answers.load(Ordering::Relaxed);
            Box::pin(async move {
                tokio::time::sleep(Duration::from_millis(500)).await;
                alive
            })
        })));
    }
    let mut ev = a.events();
    // b stops refreshing (its membership task is gone) but "answers" the check.
    drop(b);
    tokio::time::sleep(Duration::from_secs(20)).await;
    assert!(asked.load(Ordering::Relaxed) > 0, "the check ran");
    assert!(lefts(&drained(&mut ev)).is_empty());
    assert!(a.node_exists(key(2)), "kept while it answers");
    // It stops answering: the next full read finds it missing, asks, and it departs.
    answers.store(false, Ordering::Relaxed);
    tokio::time::sleep(Duration::from_secs(40)).await;
    assert_eq!(lefts(&drained(&mut ev)), vec![key(2)]);
    a.stop().await;
}
