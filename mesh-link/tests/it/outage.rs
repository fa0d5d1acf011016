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
        within("stop without Redis", 20, n.stop()).await;
    }
}
