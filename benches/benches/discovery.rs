//! Discovery on a real `redis-server` (started here on a free loopback port): how long a join
//! and a leave take to reach another node, and what Redis works per second, with 10, 100 and
//! 1000 nodes registered.
//!
//! ```text
//! cargo bench -p mesh-benches --bench discovery
//! ```
//!
//! The registered nodes are a load generator: one connection that keeps N records alive
//! exactly as N nodes would (3 commands per node per interval). An observer and a joining node
//! are real `Membership`s. The default 1 s interval is used throughout. Latency is wall time
//! from calling `start()` (connect, publish, first full read) or `stop()` to the observer's
//! event; each size takes 7 samples.
#![allow(clippy::print_stdout, reason = "a bench reports its figures")]

use std::sync::Arc;
use std::time::{Duration, Instant};

use mesh_discovery::testing::RedisServer;
use mesh_discovery::{
    Backend, Membership, MembershipConfig, MembershipEvent, NodeKey, NodeRecord, RedisRegistry,
};
use tokio::sync::broadcast;

const SAMPLES: usize = 7;

fn key(port: u16) -> NodeKey {
    NodeKey::new("127.0.0.1".parse().expect("address"), port)
}

async fn wait_event(
    events: &mut broadcast::Receiver<MembershipEvent>,
    want: impl Fn(&MembershipEvent) -> bool,
) {
    loop {
        let e = tokio::time::timeout(Duration::from_secs(10), events.recv())
            .await
            .expect("an event within 10 s")
            .expect("open");
        if want(&e) {
            return;
        }
    }
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

async fn measure(redis: &RedisServer, registered: u16) {
    let prefix = format!("bench{registered}");
    let url = redis.url();
    let interval = MembershipConfig::default().update_interval;
    // The load generator: keeps `registered - 1` records alive (the observer is the last one).
    let filler = Arc::new(RedisRegistry::connect(&url, &prefix).await.expect("redis"));
    let ttl = interval * 3;
    for i in 0..registered - 1 {
        let k = key(20_000 + i);
        filler
            .publish(k, NodeRecord::new(k, "game", 1, 0).encode(), ttl)
            .await
            .expect("publish");
    }
    let keep_alive = {
        let filler = filler.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval);
            loop {
                tick.tick().await;
                for i in 0..registered - 1 {
                    let _ = filler.refresh(key(20_000 + i), ttl).await;
                }
            }
        })
    };
    let observer = Membership::start(
        RedisRegistry::connect(&url, &prefix).await.expect("redis"),
        NodeRecord::new(key(1), "game", 1, 0),
        MembershipConfig::default(),
    )
    .await;
    assert_eq!(observer.nodes().len(), usize::from(registered));
    let mut events = observer.events();
    let (mut joins, mut leaves) = (Vec::new(), Vec::new());
    for s in 0..SAMPLES {
        let k = key(2 + s as u16);
        let registry = RedisRegistry::connect(&url, &prefix).await.expect("redis");
        let t = Instant::now();
        let joiner = Membership::start(
            registry,
            NodeRecord::new(k, "game", 9, 0),
            MembershipConfig::default(),
        )
        .await;
        wait_event(
            &mut events,
            |e| matches!(e, MembershipEvent::Joined(r) if r.key == k),
        )
        .await;
        joins.push(t.elapsed());
        let t = Instant::now();
        joiner.stop().await;
        wait_event(
            &mut events,
            |e| matches!(e, MembershipEvent::Left(r) if r.key == k),
        )
        .await;
        leaves.push(t.elapsed());
    }
    let before = redis.commands_processed();
    let t = Instant::now();
    tokio::time::sleep(interval * 3).await;
    let per_second = (redis.commands_processed() - before) as f64 / t.elapsed().as_secs_f64();
    println!(
        "| {registered} | {:.2} ms | {:.2} ms | {:.2} ms | {:.2} ms | {per_second:.0} |",
        median(joins.clone()).as_secs_f64() * 1e3,
        joins.iter().max().expect("samples").as_secs_f64() * 1e3,
        median(leaves.clone()).as_secs_f64() * 1e3,
        leaves.iter().max().expect("samples").as_secs_f64() * 1e3,
    );
    keep_alive.abort();
    observer.stop().await;
}

fn main() {
    // `cargo bench` passes `--bench`; any other argument (such as a filter) is ignored here.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let redis = RedisServer::start();
        println!("| registered nodes | join seen (median) | join (max) | leave seen (median) | leave (max) | Redis commands/s |");
        println!("|---|---|---|---|---|---|");
        for n in [10u16, 100, 1000] {
            measure(&redis, n).await;
        }
    });
}
