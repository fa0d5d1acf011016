//! Shared objects across real nodes and sockets: concurrent changes within bounds, the same
//! state everywhere, one event per change, expiry, removal, and an owner that dies.

use std::sync::Arc;
use std::time::Duration;

use mesh_link::shared::{
    Event, Mid, Properties, Rejected, RemoveReason, SharedError, SharedObject,
};
use mesh_link::{MeshNode, Registry};
use serde_json::json;

use crate::common::*;

async fn three(prefix: &str) -> (Registry, Vec<MeshNode>) {
    let registry = Registry::memory();
    let mut nodes = Vec::new();
    for i in 0..3 {
        nodes.push(
            suite_node(&registry, fast(prefix), &format!("n{i}"))
                .await
                .0,
        );
    }
    for n in &nodes {
        wait_nodes(n, 3).await;
    }
    (registry, nodes)
}

/// Waits until every handle shows the owner's version.
async fn converge(handles: &[&SharedObject], version: u64) {
    within("replicas converge", 20, async {
        while !handles.iter().all(|h| h.version() == Some(version)) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_increments_stay_within_bounds_everywhere() {
    let (_r, nodes) = three("so-inc").await;
    let (a, b, c) = (&nodes[0], &nodes[1], &nodes[2]);
    let props = Properties::new()
        .number("counter", 50.0, 0.0..=100.0)
        .map("members")
        .value("name", "Foobar");
    let on_b = b
        .shared()
        .create(props, Duration::from_secs(60), a.local_key())
        .await
        .unwrap();
    let on_c = c.shared().get(on_b.mid()).await.unwrap();
    let on_a = a.shared().get(on_b.mid()).await.unwrap();
    let mut events_c = on_c.updates();

    // 500 increments from b and 500 decrements from c, all in flight at once.
    let ups = (0..500).map(|_| on_b.inc("counter", 1.0));
    let downs = (0..500).map(|_| on_c.inc("counter", -1.0));
    let (ups, downs) = futures_util::future::join(
        futures_util::future::join_all(ups),
        futures_util::future::join_all(downs),
    )
    .await;
    let mut ok = [0i64; 2];
    for (i, results) in [ups, downs].iter().enumerate() {
        for r in results {
            match r {
                Ok(_) => ok[i] += 1,
                Err(SharedError::Rejected(Rejected::OutOfBounds { .. })) => {}
                Err(e) => panic!("unexpected: {e:?}"),
            }
        }
    }
    let version = on_a.version().unwrap();
    assert_eq!(
        version,
        (ok[0] + ok[1]) as u64,
        "one version per applied change"
    );
    converge(&[&on_a, &on_b, &on_c], version).await;
    let expected = 50 + ok[0] - ok[1];
    for h in [&on_a, &on_b, &on_c] {
        let v: f64 = h.get_as("counter").unwrap();
        assert_eq!(v, expected as f64);
        assert!((0.0..=100.0).contains(&v));
    }
    // c saw one update per change, each within bounds.
    let mut seen = 0;
    while let Ok(e) = events_c.try_recv() {
        match e {
            Event::Update { value, .. } => {
                let v = value.as_f64().unwrap();
                assert!((0.0..=100.0).contains(&v), "{v}");
                seen += 1;
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(seen, version);

    // Maps and values, from the owner itself too (the original never propagated those).
    on_a.add("members", "bob", &json!({"name": "Bob"}))
        .await
        .unwrap();
    on_c.add("members", "amy", &"Amy").await.unwrap();
    on_b.del("members", "bob").await.unwrap();
    let e = on_b.del("members", "bob").await.unwrap_err();
    assert!(
        matches!(e, SharedError::Rejected(Rejected::NoSuchKey { .. })),
        "{e:?}"
    );
    on_b.set("name", &"Barfoo").await.unwrap();
    let e = on_c.add("counter", "x", &1).await.unwrap_err();
    assert!(
        matches!(e, SharedError::Rejected(Rejected::WrongKind { .. })),
        "{e:?}"
    );
    let e = on_c.set("counter", &101).await.unwrap_err();
    assert!(
        matches!(e, SharedError::Rejected(Rejected::OutOfBounds { .. })),
        "{e:?}"
    );
    let version = on_a.version().unwrap();
    converge(&[&on_a, &on_b, &on_c], version).await;
    for h in [&on_a, &on_b, &on_c] {
        assert_eq!(h.get("members"), Some(json!({"amy": "Amy"})));
        assert_eq!(h.get("name"), Some(json!("Barfoo")));
    }
    for n in nodes {
        let _ = n.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removal_and_expiry_reach_every_node_once() {
    let (_r, nodes) = three("so-rm").await;
    let (a, b, c) = (&nodes[0], &nodes[1], &nodes[2]);
    // Removal asked by a replica.
    let props = || Properties::new().number("n", 0.0, ..);
    let so = b
        .shared()
        .create(props(), Duration::from_secs(60), a.local_key())
        .await
        .unwrap();
    let on_a = a.shared().get(so.mid()).await.unwrap();
    let on_c = c.shared().get(so.mid()).await.unwrap();
    let mut evs: Vec<_> = [&so, &on_a, &on_c].iter().map(|h| h.updates()).collect();
    c.shared().remove(&on_c).await.unwrap();
    for e in &mut evs {
        let got = within("removed event", 10, e.recv()).await.unwrap();
        assert_eq!(got, Event::Removed(RemoveReason::Removed));
        assert!(
            within("then closed", 10, e.recv()).await.is_err(),
            "nothing after removal"
        );
    }
    assert!(!so.exists() && !on_a.exists() && !on_c.exists());
    let e = so.inc("n", 1.0).await.unwrap_err();
    assert_eq!(e, SharedError::NotFound);

    // Expiry: unchanged for its TTL, gone everywhere, once.
    let so = b
        .shared()
        .create(props(), Duration::from_millis(400), a.local_key())
        .await
        .unwrap();
    let on_c = c.shared().get(so.mid()).await.unwrap();
    let on_a = a.shared().get(so.mid()).await.unwrap();
    let mut evs: Vec<_> = [&so, &on_a, &on_c].iter().map(|h| h.updates()).collect();
    for e in &mut evs {
        let got = within("expired event", 10, e.recv()).await.unwrap();
        assert_eq!(got, Event::Removed(RemoveReason::Expired));
    }
    assert_eq!(a.shared().len(), 0);
    assert_eq!(b.shared().len(), 0);

    // An unknown mid fails fast, as does a mid of a node that is not there.
    let unknown = Mid {
        id: 12345,
        owner: a.local_key().socket_addr(),
    };
    let e = within("get of an unknown mid", 10, c.shared().get(unknown))
        .await
        .unwrap_err();
    assert_eq!(e, SharedError::NotFound);
    let e = within("get of our own unknown mid", 10, a.shared().get(unknown))
        .await
        .unwrap_err();
    assert_eq!(e, SharedError::NotFound);
    for n in nodes {
        let _ = n.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn creating_on_the_local_node_and_dropping_handles() {
    let (_r, nodes) = three("so-local").await;
    let (a, b) = (&nodes[0], &nodes[1]);
    let so = a
        .shared()
        .create(
            Properties::new().map_with("m", Default::default(), Some(1)),
            Duration::from_secs(60),
            a.local_key(),
        )
        .await
        .unwrap();
    so.add("m", "k", &1).await.unwrap();
    let e = so.add("m", "other", &2).await.unwrap_err();
    assert!(
        matches!(e, SharedError::Rejected(Rejected::MapFull { .. })),
        "{e:?}"
    );
    let on_b = b.shared().get(so.mid()).await.unwrap();
    assert_eq!(on_b.get("m"), Some(json!({"k": 1})));
    assert_eq!(b.shared().len(), 1);
    // The last handle on b goes: b stops watching, and the owner drops it as a watcher.
    drop(on_b);
    assert_eq!(b.shared().len(), 0);
    // A change after that does not bring the object back to b.
    so.add("m", "k", &2).await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(b.shared().len(), 0);
    // Invalid creations are refused before anything is sent.
    let e = b
        .shared()
        .create(
            Properties::new().number("n", 5.0, 0.0..=1.0),
            Duration::from_secs(1),
            a.local_key(),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(e, SharedError::Rejected(Rejected::OutOfBounds { .. })),
        "{e:?}"
    );
    // A short-lived object created here, while the node's timers sleep with nothing to do (a
    // long-lived object is the only other one): it still expires on time, for its replica too.
    let short = a
        .shared()
        .create(
            Properties::new().value("v", 1),
            Duration::from_millis(300),
            a.local_key(),
        )
        .await
        .unwrap();
    let on_b = b.shared().get(short.mid()).await.unwrap();
    for mut e in [short.updates(), on_b.updates()] {
        let got = within("the short-lived object expires", 10, e.recv())
            .await
            .unwrap();
        assert_eq!(got, Event::Removed(RemoveReason::Expired));
    }
    assert!(so.exists(), "the long-lived one stays");
    for n in nodes {
        let _ = n.stop().await;
    }
}

#[test]
fn an_owner_that_dies_takes_its_objects_with_it() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let registry = Registry::memory();
    // The owner runs on a runtime of its own, which is then shut down at once: no goodbye,
    // no deregistration, just silence, as when a process is killed.
    let owner_rt = Arc::new(
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap(),
    );
    let owner = owner_rt
        .block_on(suite_node(&registry, fast("so-dead"), "owner"))
        .0;
    rt.block_on(async {
        let b = suite_node(&registry, fast("so-dead"), "b").await.0;
        let c = suite_node(&registry, fast("so-dead"), "c").await.0;
        for n in [&b, &c] {
            wait_nodes(n, 3).await;
        }
        let so = b
            .shared()
            .create(
                Properties::new().number("n", 0.0, ..),
                Duration::from_secs(60),
                owner.local_key(),
            )
            .await
            .unwrap();
        let on_c = c.shared().get(so.mid()).await.unwrap();
        so.inc("n", 1.0).await.unwrap();
        let mut evs = [so.updates(), on_c.updates()];
        let owner_rt = Arc::try_unwrap(owner_rt).expect("one owner runtime");
        owner_rt.shutdown_background();
        for e in &mut evs {
            loop {
                match within("owner lost", 20, e.recv()).await.unwrap() {
                    Event::Removed(r) => {
                        assert_eq!(r, RemoveReason::OwnerLost);
                        break;
                    }
                    Event::Update { .. } => {}
                    other => panic!("{other:?}"),
                }
            }
        }
        let e = so.inc("n", 1.0).await.unwrap_err();
        assert_eq!(e, SharedError::NotFound);
        let _ = b.stop().await;
        let _ = c.stop().await;
    });
    drop(owner);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopping_owner_removes_its_objects_everywhere() {
    let (_r, nodes) = three("so-stop").await;
    let (a, b, c) = (&nodes[0], &nodes[1], &nodes[2]);
    let so = b
        .shared()
        .create(
            Properties::new().value("v", 1),
            Duration::from_secs(60),
            a.local_key(),
        )
        .await
        .unwrap();
    let on_c = c.shared().get(so.mid()).await.unwrap();
    let mut evs = [so.updates(), on_c.updates()];
    let _ = a.stop().await;
    for e in &mut evs {
        let got = within("owner lost", 10, e.recv()).await.unwrap();
        assert_eq!(got, Event::Removed(RemoveReason::OwnerLost));
    }
    let _ = b.stop().await;
    let _ = c.stop().await;
}

/// Issue 16: a replica's update stream must never go back in time. Events used to be taken out
/// of the state under one lock and handed to subscribers later under another, so a change
/// applied by the receive loop and one applied by a reply could reach a stream in either order.
/// Here c owns a counter and a and b each send 500 increments at once, 40 times over: every
/// stream (the owner's and both replicas') shows strictly rising versions and ends at the
/// object's final version.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn update_streams_never_go_back_in_time() {
    let (_r, nodes) = three("so-order").await;
    let (a, b, c) = (&nodes[0], &nodes[1], &nodes[2]);
    let mut out_of_order = Vec::new();
    for round in 0..40 {
        let props = Properties::new().number("counter", 0.0, 0.0..=1000.0);
        let on_c = c
            .shared()
            .create(props, Duration::from_secs(60), c.local_key())
            .await
            .unwrap();
        let on_a = a.shared().get(on_c.mid()).await.unwrap();
        let on_b = b.shared().get(on_c.mid()).await.unwrap();
        let mut streams = [on_a.updates(), on_b.updates(), on_c.updates()];
        let from_a = futures_util::future::join_all((0..500).map(|_| on_a.inc("counter", 1.0)));
        let from_b = futures_util::future::join_all((0..500).map(|_| on_b.inc("counter", 1.0)));
        let (ra, rb) = futures_util::future::join(from_a, from_b).await;
        assert!(ra.iter().chain(&rb).all(Result::is_ok), "every inc applied");
        converge(&[&on_a, &on_b, &on_c], 1000).await;
        for (name, s) in ["a", "b", "c"].iter().zip(&mut streams) {
            let mut last = 0;
            while let Ok(e) = s.try_recv() {
                let Event::Update { version, value, .. } = e else {
                    panic!("round {round}, {name}: {e:?}");
                };
                if version <= last {
                    out_of_order.push(format!("round {round}, {name}: {last} then {version}"));
                }
                last = version;
                assert_eq!(
                    value.as_f64(),
                    Some(version as f64),
                    "the value at {version}"
                );
            }
            if last != 1000 {
                out_of_order.push(format!("round {round}, {name}: last event at {last}"));
            }
        }
        c.shared().remove(&on_c).await.unwrap();
    }
    assert!(
        out_of_order.is_empty(),
        "streams went back in time: {out_of_order:#?}"
    );
    for n in nodes {
        let _ = n.stop().await;
    }
}
