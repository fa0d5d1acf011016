//! Against a real `redis-server` that each test starts on a free port: the shared suite, and
//! what only Redis has (outages, prefixes, foreign keys, command counts).

use std::time::Duration;

use mesh_discovery::{Membership, MembershipConfig, NodeRecord, RedisRegistry};

use crate::suite;
use mesh_discovery::testing::{RedisCluster, RedisSentinels, RedisServer};

use crate::suite::{config as fast, key};

async fn node(url: &str, prefix: &str, port: u16) -> Membership<RedisRegistry> {
    node_with(url, prefix, port, fast()).await
}

async fn node_with(
    url: &str,
    prefix: &str,
    port: u16,
    config: MembershipConfig,
) -> Membership<RedisRegistry> {
    let reg = RedisRegistry::connect(url, prefix)
        .await
        .expect("redis reachable");
    Membership::start(
        reg,
        NodeRecord::new(key(port), "game", u64::from(port), 0),
        config,
    )
    .await
}

/// Connects, retrying every 200 ms for up to 100 attempts (20 s and the attempts' own time).
async fn connect_retrying(url: &str) -> RedisRegistry {
    let mut last = None;
    for _ in 0..100 {
        match RedisRegistry::connect(url, "suite").await {
            Ok(r) => return r,
            Err(e) => last = Some(e),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("no connection through the sentinels after 100 attempts: {last:?}");
}

/// The shared suite on Redis: every node gets its own connection.
struct Redis(String);

impl suite::Fixture for Redis {
    type R = RedisRegistry;
    async fn registry(&self) -> RedisRegistry {
        RedisRegistry::connect(&self.0, "suite")
            .await
            .expect("redis reachable")
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn suite_join_update_leave_on_redis() {
    let redis = RedisServer::start();
    suite::join_update_leave(&Redis(redis.url())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn suite_killed_node_expires_on_redis() {
    let redis = RedisServer::start();
    suite::killed_node_expires(&Redis(redis.url())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn suite_values_on_redis() {
    let redis = RedisServer::start();
    suite::falsy_and_structured_values(&Redis(redis.url())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefixes_isolate_meshes() {
    let redis = RedisServer::start();
    let a = node(&redis.url(), "one", 1).await;
    let b = node(&redis.url(), "two", 2).await;
    let c = node(&redis.url(), "one", 3).await;
    a.wait_for(|m| m.node_exists(key(3))).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!a.node_exists(key(2)) && !b.node_exists(key(1)) && !b.node_exists(key(3)));
    for m in [a, b, c] {
        m.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_and_restarted() {
    let mut redis = RedisServer::start();
    let port = redis.port;
    let url = redis.url();
    let a = node(&url, "t", 1).await;
    let b = node(&url, "t", 2).await;
    a.wait_for(|m| m.node_exists(key(2))).await;
    redis.kill();
    // fred retries each command for up to its 2 s timeout before membership sees an error.
    for _ in 0..100 {
        if a.stats().registry_errors > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(a.stats().registry_errors > 0, "the outage was noticed");
    assert!(
        a.node_exists(key(2)) && b.node_exists(key(1)),
        "last known view kept"
    );
    // A fresh, empty Redis on the same port: both re-register without a restart.
    let redis = RedisServer::start_on(port);
    let c = node(&url, "t", 3).await;
    tokio::time::timeout(
        Duration::from_secs(20),
        c.wait_for(|m| m.node_exists(key(1)) && m.node_exists(key(2))),
    )
    .await
    .expect("a and b re-registered");
    a.wait_for(|m| m.node_exists(key(3))).await;
    for m in [a, b, c] {
        m.stop().await;
    }
    drop(redis);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_records_in_redis_are_skipped() {
    let redis = RedisServer::start();
    // Foreign writers: a bad record under the mesh's keys, listed in its index.
    redis.command("SET {ml:t}:n:127.0.0.1:77 not-json");
    redis.command("ZADD {ml:t}:idx 99999999999999 127.0.0.1:77");
    redis.command("ZADD {ml:t}:idx 99999999999999 garbage-member");
    let a = node(&redis.url(), "t", 1).await;
    let b = node(&redis.url(), "t", 2).await;
    a.wait_for(|m| m.node_exists(key(2))).await;
    assert!(a.stats().skipped_records >= 1);
    assert_eq!(a.nodes().len(), 2);
    a.stop().await;
    b.stop().await;
}

/// Commands Redis processes per update interval, for `n` nodes in one process. The interval
/// is 500 ms: hundreds of nodes share two cores here, and a shorter one (hence a shorter TTL)
/// would make them miss their refreshes.
async fn commands_per_interval(redis: &RedisServer, n: u16) -> f64 {
    let prefix = format!("scale{n}");
    let mut config = MembershipConfig::default();
    config.update_interval = Duration::from_millis(500);
    let mut nodes = Vec::new();
    for i in 0..n {
        nodes.push(node_with(&redis.url(), &prefix, 1000 + i, config.clone()).await);
    }
    for m in &nodes {
        if tokio::time::timeout(
            Duration::from_secs(30),
            m.wait_for(|m| m.nodes().len() == n as usize),
        )
        .await
        .is_err()
        {
            let counts: Vec<usize> = nodes.iter().map(|m| m.nodes().len()).collect();
            panic!(
                "not every node sees every other: {counts:?} {:?}",
                m.stats()
            );
        }
    }
    let intervals = 10u32;
    let before = redis.commands_processed();
    tokio::time::sleep(config.update_interval * intervals).await;
    let after = redis.commands_processed();
    for m in nodes {
        m.stop().await;
    }
    (after - before) as f64 / f64::from(intervals)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[allow(
    clippy::print_stderr,
    reason = "the measured figures are shown with --nocapture"
)]
async fn redis_commands_per_interval_grow_linearly() {
    let redis = RedisServer::start();
    let c50 = commands_per_interval(&redis, 50).await;
    let c100 = commands_per_interval(&redis, 100).await;
    let c200 = commands_per_interval(&redis, 200).await;
    eprintln!(
        "redis commands per interval: 50 nodes {c50:.0} ({:.2}/node), 100 nodes {c100:.0} ({:.2}/node), 200 nodes {c200:.0} ({:.2}/node)",
        c50 / 50.0,
        c100 / 100.0,
        c200 / 200.0
    );
    // Linear: doubling the nodes doubles the load (quadratic would quadruple it).
    for (small, big) in [(c50, c100), (c100, c200)] {
        let ratio = big / small;
        assert!(
            ratio > 1.4 && ratio < 2.8,
            "load grew {ratio:.2}x for 2x nodes"
        );
    }
    assert!(
        c200 / 200.0 < 6.0,
        "per-node cost stays a few commands per interval"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn suite_on_a_redis_cluster() {
    let cluster = RedisCluster::start();
    // One hash tag per mesh: every key in one slot, so MGET and the index work on a cluster.
    suite::join_update_leave(&Redis(cluster.url())).await;
    suite::falsy_and_structured_values(&Redis(cluster.url())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sentinel_failover_during_the_test() {
    let mut topo = RedisSentinels::start();
    let url = topo.url();
    suite::join_update_leave(&Redis(url.clone())).await;
    let backend = Redis(url.clone());
    let a = Membership::start(
        suite::Fixture::registry(&backend).await,
        NodeRecord::new(key(11), "game", 11, 0),
        fast(),
    )
    .await;
    let b = Membership::start(
        suite::Fixture::registry(&backend).await,
        NodeRecord::new(key(12), "game", 12, 0),
        fast(),
    )
    .await;
    a.wait_for(|m| m.node_exists(key(12))).await;
    // The master dies; the sentinels promote the replica; fred follows them.
    topo.master.kill();
    assert!(
        a.node_exists(key(12)),
        "last known view kept through the failover"
    );
    b.set_value("after", &"failover").unwrap();
    tokio::time::timeout(
        Duration::from_secs(30),
        a.wait_for(|m| m.node_value::<String>(key(12), "after").is_some()),
    )
    .await
    .expect("changes flow again once a replica is promoted");
    // Just after a failover a sentinel may still name the dead master, and a new connection is
    // refused until they agree: a caller retries, and so does this one (bounded).
    let c = Membership::start(
        connect_retrying(&url).await,
        NodeRecord::new(key(13), "game", 13, 0),
        fast(),
    )
    .await;
    tokio::time::timeout(
        Duration::from_secs(30),
        c.wait_for(|m| m.nodes().len() == 3),
    )
    .await
    .expect("a node joining after the failover sees the others");
    for m in [a, b, c] {
        m.stop().await;
    }
    drop(topo.replica);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn suite_on_master_and_replica_reads_from_the_replica() {
    let master = RedisServer::start();
    let replica = master.start_replica();
    let url = format!("{}?replicas=true", master.url());
    suite::join_update_leave(&Redis(url.clone())).await;
    suite::falsy_and_structured_values(&Redis(url)).await;
    let master_stats = master.full_reply("INFO commandstats");
    assert!(
        master_stats.contains("cmdstat_set:"),
        "writes went to the master"
    );
    assert!(
        master_stats.contains("cmdstat_wait:"),
        "writes waited for the replica"
    );
    let replica_stats = replica.full_reply("INFO commandstats");
    assert!(
        replica_stats.contains("cmdstat_get:") || replica_stats.contains("cmdstat_mget:"),
        "reads went to the replica: {replica_stats}"
    );
}

#[test]
fn topology_url_forms() {
    use mesh_discovery::RedisTopology as T;
    assert_eq!(
        T::from_url("redis://127.0.0.1:6379").unwrap(),
        T::Standalone {
            host: "127.0.0.1".into(),
            port: 6379
        }
    );
    assert_eq!(
        T::from_url("redis://10.0.0.5:7000?replicas=true").unwrap(),
        T::MasterReplica {
            host: "10.0.0.5".into(),
            port: 7000
        }
    );
    assert_eq!(
        T::from_url("redis-sentinel://h1:26379?sentinelServiceName=svc&node=h2:26380").unwrap(),
        T::Sentinel {
            sentinels: vec![("h1".into(), 26379), ("h2".into(), 26380)],
            service: "svc".into()
        }
    );
    assert_eq!(
        T::from_url("redis-cluster://a:1?node=b:2&node=c:3").unwrap(),
        T::Cluster {
            seeds: vec![("a".into(), 1), ("b".into(), 2), ("c".into(), 3)]
        }
    );
    for bad in [
        "127.0.0.1:6379",
        "redis://nohost",
        "redis://h:notaport",
        "redis-sentinel://h:1",
        "redis://h:1?unknown=1",
        "http://h:1",
    ] {
        assert!(T::from_url(bad).is_err(), "{bad} accepted");
    }
}
