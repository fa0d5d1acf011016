//! Redis is only the phone book: killed, the mesh keeps talking without loss.

use std::time::Duration;

use mesh_discovery::testing::RedisServer;
use mesh_link::Registry;

use crate::common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_while_nodes_exchange_requests() {
    let mut redis = RedisServer::start();
    let registry = Registry::redis(&redis.url()).unwrap();
    let mut nodes = Vec::new();
    for i in 0..3 {
        nodes.push(suite_node(&registry, fast("outage"), &format!("n{i}")).await);
    }
    for (n, _) in &nodes {
        wait_nodes(n, 3).await;
    }
    let keys: Vec<_> = nodes.iter().map(|(n, _)| n.local_key()).collect();
    let exchange = |round: usize| {
        let nodes = &nodes;
        let keys = &keys;
        async move {
            for (i, (n, _)) in nodes.iter().enumerate() {
                let to = keys[(i + 1) % keys.len()];
                let text = format!("round {round} from {i}");
                let r: Msg = n
                    .request(1, to, &msg(&text))
                    .await
                    .expect("request answered");
                assert_eq!(r.message, text + " world");
                let report = n.send(10, keys, &msg("stored")).await.expect("send");
                assert!(report.is_ok(), "{report:?}");
            }
        }
    };
    for round in 0..20 {
        exchange(round).await;
    }
    redis.kill();
    // Well past the record TTL (3 intervals of 100 ms): nobody leaves, nothing is lost.
    for round in 20..60 {
        exchange(round).await;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for (n, mem) in &nodes {
        assert_eq!(n.nodes().len(), 3, "{} still sees everyone", n.local_key());
        wait_runs(mem, 1, 60).await;
        wait_runs(mem, 10, 3 * 60).await;
    }
    for (n, _) in nodes {
        let _ = within("stop without Redis", 20, n.stop()).await;
    }
}

/// Issue 16: an empty Redis restart is not evidence that anyone died. 20 nodes each own an
/// object replicated on all the others; Redis is killed, a 21st node dies silently during the
/// 3 s outage (its runtime is shut down: no goodbye), and Redis comes back empty on the same
/// port. Every survivor reports exactly one departure, the dead node's; no replica of a
/// survivor's object is lost; the dead node's object is gone everywhere.
#[test]
fn an_empty_redis_restart_loses_no_member_and_no_replica() {
    use mesh_link::shared::{Event, Properties, RemoveReason};
    use mesh_link::MembershipEvent;

    const N: usize = 20;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let victim_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let mut redis = RedisServer::start();
    let port = redis.port;
    let registry = Registry::redis(&redis.url()).unwrap();
    let config = || {
        let mut c = fast("restart");
        // Long enough that the transport's default keepalive serves it on every version.
        c.peer_timeout = Duration::from_secs(3);
        c
    };
    let props = |i: usize| Properties::new().number("n", i as f64, ..);
    let (victim, victim_object) = victim_rt.block_on(async {
        let v = suite_node(&registry, config(), "victim").await.0;
        let so = v
            .shared()
            .create(props(N), Duration::from_secs(600), v.local_key())
            .await
            .unwrap();
        (v, so)
    });
    rt.block_on(async {
        let mut nodes = Vec::new();
        for i in 0..N {
            nodes.push(suite_node(&registry, config(), &format!("n{i}")).await.0);
        }
        for n in &nodes {
            wait_nodes(n, N + 1).await;
        }
        let mut owned = Vec::new();
        for (i, n) in nodes.iter().enumerate() {
            let so = n
                .shared()
                .create(props(i), Duration::from_secs(600), n.local_key())
                .await
                .unwrap();
            owned.push(so);
        }
        // replicas[i]: node i's replicas of every other survivor's object, and of the victim's.
        let mut replicas = Vec::new();
        for (i, n) in nodes.iter().enumerate() {
            let mut mine = Vec::new();
            for (j, so) in owned.iter().enumerate() {
                if i != j {
                    let r = n.shared().get(so.mid()).await.unwrap();
                    let events = r.updates();
                    mine.push((r, events));
                }
            }
            let of_victim = n.shared().get(victim_object.mid()).await.unwrap();
            let victim_events = of_victim.updates();
            replicas.push((mine, of_victim, victim_events));
        }
        let mut membership: Vec<_> = nodes.iter().map(|n| n.membership_events()).collect();

        redis.kill();
        let down_at = std::time::Instant::now();
        // The victim dies during the outage, as a killed process does.
        drop(victim_object);
        drop(victim);
        victim_rt.shutdown_background();
        let reconciled: Vec<u64> = nodes
            .iter()
            .map(|n| n.discovery_stats().reconciliations)
            .collect();
        tokio::time::sleep(Duration::from_secs(3).saturating_sub(down_at.elapsed())).await;
        let redis = RedisServer::start_on(port);

        // Recovered: every survivor sees the other survivors and not the victim, and has read
        // the whole registry at least twice since (the first read right after reconnecting,
        // when records are still missing, is where departures were wrongly taken).
        for n in &nodes {
            within("the view recovers", 60, async {
                n.wait_for(|x| x.nodes().len() == N).await;
            })
            .await;
        }
        within("two reconciliations after the restart", 60, async {
            while nodes
                .iter()
                .zip(&reconciled)
                .any(|(n, r0)| n.discovery_stats().reconciliations < r0 + 2)
            {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await;

        let victim_key = {
            let all: Vec<_> = nodes.iter().map(|n| n.local_key()).collect();
            let mut seen = Vec::new();
            let mut false_departures = Vec::new();
            for (n, events) in nodes.iter().zip(&mut membership) {
                while let Ok(e) = events.try_recv() {
                    if let MembershipEvent::Left(r) = e {
                        if all.contains(&r.key) {
                            false_departures.push(format!("{} saw {} leave", n.local_key(), r.key));
                        } else {
                            seen.push(r.key);
                        }
                    }
                }
            }
            assert!(
                false_departures.is_empty(),
                "{} false departures: {false_departures:#?}",
                false_departures.len()
            );
            assert_eq!(
                seen.len(),
                N,
                "each survivor saw the victim leave once: {seen:?}"
            );
            seen[0]
        };
        assert!(nodes.iter().all(|n| !n.node_exists(victim_key)));

        let mut lost = Vec::new();
        for (i, (mine, of_victim, victim_events)) in replicas.iter_mut().enumerate() {
            for (r, events) in mine.iter_mut() {
                let removed = std::iter::from_fn(|| events.try_recv().ok())
                    .any(|e| matches!(e, Event::Removed(_)));
                if removed || !r.exists() {
                    lost.push(format!("n{i}'s replica of {}", r.mid()));
                }
            }
            assert!(!of_victim.exists(), "n{i} dropped the dead node's object");
            let gone = within(
                "the dead owner's object is removed",
                20,
                victim_events.recv(),
            )
            .await
            .unwrap();
            assert_eq!(gone, Event::Removed(RemoveReason::OwnerLost));
        }
        assert!(
            lost.is_empty(),
            "{} of {} replicas lost: {lost:#?}",
            lost.len(),
            N * (N - 1)
        );
        for n in nodes {
            let _ = within("stop", 20, n.stop()).await;
        }
        drop(redis);
    });
}
