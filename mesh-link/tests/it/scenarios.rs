//! The original suite's scenarios (reference §6.2, shared-object ones aside: those belong to
//! mesh-shared), on real sockets and a real `redis-server`, with the assertions made strict:
//! exact error types instead of exact strings, and backups actually checked.

use std::time::Duration;

use mesh_discovery::testing::RedisServer;
use mesh_link::{DeliveryError, NodeKey, Registry, RequestError, SendOptions};

use crate::common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn original_suite_on_redis() {
    let redis = RedisServer::start();
    let registry = Registry::redis(&redis.url()).unwrap();
    let mut config = fast("__test__");
    config.backups.insert("TypeTest".into(), 2);

    // #1-#3: start one and two; they find each other.
    let (one, one_mem) = suite_node(&registry, config.clone(), "one").await;
    let (two, two_mem) = suite_node(&registry, config.clone(), "two").await;
    wait_nodes(&one, 2).await;
    wait_nodes(&two, 2).await;
    assert_eq!(
        one.node_value::<String>(two.local_key(), "name").as_deref(),
        Some("two")
    );

    // #4: request/response one -> two.
    let r: Msg = one
        .request(1, two.local_key(), &msg("hello"))
        .await
        .unwrap();
    assert_eq!(r.message, "hello world");

    // #5, done for real this time: the request by datagram (usend with a response).
    let r: Msg = one
        .urequest(1, two.local_key(), &msg("hello"), Duration::from_secs(2))
        .await
        .unwrap();
    assert_eq!(r.message, "hello world");

    // #6: three joins.
    let (three, three_mem) = suite_node(&registry, config.clone(), "three").await;
    for n in [&one, &two, &three] {
        wait_nodes(n, 3).await;
    }
    let all = three.nodes();
    assert_eq!(all.len(), 3);

    // #11/#12 (foo2all): three asks handler 2 on every node, itself included, and gets every
    // answer exactly once (the original's callback fired once per branch, plus a spurious error).
    let answers = three.request_all::<_, Msg>(2, &all, &msg("foo")).await;
    assert_eq!(answers.len(), 3);
    for (_, a) in &answers {
        assert_eq!(a.as_ref().unwrap().message, "foo bar");
    }
    for m in [&one_mem, &two_mem, &three_mem] {
        assert_eq!(runs(m, 2), 1);
    }

    // #13: relay with a "defect" node (not a mesh member) through a chain, relay limit 1: it
    // is skipped and reported; every member gets the message once.
    let stranger = NodeKey::new("127.0.0.1".parse().unwrap(), 9999);
    let mut targets: Vec<NodeKey> = vec![stranger];
    targets.extend(all.iter().map(|r| r.key));
    let report = three
        .send_each(
            7,
            &targets,
            &msg("GOOD"),
            SendOptions::default().relay_limit(1),
        )
        .await
        .unwrap();
    assert_eq!(report.failed, vec![(stranger, DeliveryError::NotMember)]);
    assert_eq!(report.delivered.len(), 3);
    for m in [&one_mem, &two_mem, &three_mem] {
        wait_runs(m, 7, 1).await;
    }
    let mut good = Vec::new();
    for n in &all {
        let r: Option<Msg> = three.request(8, n.key, &()).await.unwrap();
        good.push(r.unwrap().message);
    }
    assert_eq!(good, ["GOOD", "GOOD", "GOOD"]);

    // #14: response timeout, typed: handler, node and timeout are all in the error.
    let after = Duration::from_millis(300);
    let e = two
        .request_with::<_, ()>(3, three.local_key(), &msg("x"), after)
        .await
        .unwrap_err();
    assert_eq!(
        e,
        RequestError::Timeout {
            handler: 3,
            node: three.local_key(),
            after
        }
    );

    // #15: sender info, remote.
    let info: SenderInfo = three.request(12, one.local_key(), &()).await.unwrap();
    assert_eq!(info.address, "127.0.0.1");
    assert_eq!(info.port, three.local_key().port);
    assert!(!info.is_local);
    assert_eq!(info.node_type.as_deref(), Some("TypeTest"));

    // #16: sender info, local.
    let info: SenderInfo = one.request(12, one.local_key(), &()).await.unwrap();
    assert_eq!(info.port, one.local_key().port);
    assert!(info.is_local);

    // #17: save on backups, checked on the backups themselves.
    within(
        "one chose 2 backups",
        10,
        one.wait_for(|n| n.backup_nodes(n.local_key()).len() == 2),
    )
    .await;
    let backups = one.backup_nodes(one.local_key());
    assert!(backups.contains(&two.local_key()) && backups.contains(&three.local_key()));
    let report = two
        .send(9, [one.local_key()], &msg("I have a dream"))
        .await
        .unwrap();
    assert!(report.is_ok());
    within("both backups stored it", 10, async {
        while runs(&two_mem, 10) + runs(&three_mem, 10) < 2 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert_eq!(two_mem.lock().stored, Some(msg("I have a dream")));
    assert_eq!(three_mem.lock().stored, Some(msg("I have a dream")));

    // #18/#19, done for real: one really leaves; two learns it, and prepare_nodes gives one of
    // one's backups, which has the data.
    let one_key = one.local_key();
    within(
        "one is seen with its backups",
        10,
        two.wait_for(|n| n.backup_nodes(one_key).len() == 2),
    )
    .await;
    let _ = one.stop().await;
    within(
        "two sees one leave",
        10,
        two.wait_for(|n| !n.node_exists(one_key)),
    )
    .await;
    let prepared = two.prepare_nodes("TypeTest", &[one_key]);
    assert_eq!(prepared.len(), 1);
    assert_ne!(prepared[0], one_key);
    let thing: Option<Msg> = two.request(11, prepared[0], &()).await.unwrap();
    assert_eq!(thing.unwrap().message, "I have a dream");

    // #20: stop all. Three still runs handler 3 (it never answers): stop cancels it and says so.
    let report = three.stop().await;
    assert_eq!(report.cancelled_handlers, 1, "{report:?}");
    assert!(report.undelivered.is_empty(), "{report:?}");
    let report = two.stop().await;
    assert!(
        report.undelivered.is_empty() && report.abandoned_requests == 0,
        "{report:?}"
    );
}
