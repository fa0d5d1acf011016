//! The mesh-link facade over loopback, each against a raw-socket baseline in the same run:
//!
//! - `mesh_rtt`: a 64-byte typed request and its answer between two `MeshNode`s vs a raw tokio
//!   UDP ping-pong;
//! - `mesh_fanout_50`: one reliable message to 50 nodes (report of all 50 acknowledgements)
//!   sent directly, and through relay trees of 2 and 7 branches, vs 50 raw UDP datagrams each
//!   answered by its receiver (the floor of any acknowledged fan-out);
//! - `mesh_shared`: a shared object's `inc` from a replica until the owner confirmed it, and
//!   until a third node's replica reported the change, vs a typed request/response between the
//!   same nodes.
//!
//! ```text
//! cargo bench -p mesh-benches --bench mesh
//! ```
//!
//! Everything runs on one current-thread tokio runtime (all nodes in one process), so no
//! measurement pays a cross-CPU wake-up the other does not. The ratios are printed at the end.
#![allow(clippy::print_stdout, reason = "a bench reports its ratios")]

use std::net::SocketAddr;
use std::time::Duration;

use criterion::{criterion_group, Criterion};
use mesh_benches::ratio_lines;
use mesh_link::{HandlerError, MeshNode, NodeKey, Registry, SendOptions};
use tokio::net::UdpSocket;
use tokio::runtime::Runtime;

const FANOUT: usize = 50;

fn runtime() -> Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

async fn node(registry: &Registry) -> MeshNode {
    MeshNode::builder()
        .registry(registry.clone())
        .prefix("bench")
        .bind("127.0.0.1:0")
        .on(1, |_: Vec<u8>, _| async {})
        .on_request(2, |v: Vec<u8>, _| async move { Ok::<_, HandlerError>(v) })
        .start()
        .await
        .expect("node starts")
}

/// Raw UDP sockets that answer every datagram with itself.
async fn udp_echoes(n: usize) -> (Vec<SocketAddr>, Vec<tokio::task::JoinHandle<()>>) {
    let mut addrs = Vec::new();
    let mut tasks = Vec::new();
    for _ in 0..n {
        let s = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        addrs.push(s.local_addr().unwrap());
        tasks.push(tokio::spawn(async move {
            let mut buf = [0u8; 2048];
            while let Ok((n, from)) = s.recv_from(&mut buf).await {
                let _ = s.send_to(&buf[..n], from).await;
            }
        }));
    }
    (addrs, tasks)
}

fn bench_rtt(c: &mut Criterion) {
    let rt = runtime();
    let (a, b, udp, echo, tasks) = rt.block_on(async {
        let registry = Registry::memory();
        let a = node(&registry).await;
        let b = node(&registry).await;
        let udp = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let (echo, tasks) = udp_echoes(1).await;
        (a, b, udp, echo[0], tasks)
    });
    let payload = vec![7u8; 64];
    let bk = b.local_key();
    let mut g = c.benchmark_group("mesh_rtt");
    g.measurement_time(Duration::from_secs(4));
    g.bench_function("mesh_link_request", |bench| {
        bench.iter(|| {
            rt.block_on(async {
                let r: Vec<u8> = a.request(2, bk, &payload).await.unwrap();
                assert_eq!(r.len(), 64);
            })
        });
    });
    g.bench_function("raw_udp_pingpong", |bench| {
        bench.iter(|| {
            rt.block_on(async {
                let mut buf = [0u8; 128];
                udp.send_to(&payload, echo).await.unwrap();
                let (n, _) = udp.recv_from(&mut buf).await.unwrap();
                assert_eq!(n, 64);
            })
        });
    });
    g.finish();
    rt.block_on(async {
        let _ = a.stop().await;
        let _ = b.stop().await;
    });
    tasks.iter().for_each(tokio::task::JoinHandle::abort);
}

fn bench_fanout(c: &mut Criterion) {
    let rt = runtime();
    let (sender, nodes, targets, udp, echoes, tasks) = rt.block_on(async {
        let registry = Registry::memory();
        let sender = node(&registry).await;
        let mut nodes = Vec::new();
        for _ in 0..FANOUT {
            nodes.push(node(&registry).await);
        }
        let wait = sender.wait_for(|n| n.nodes().len() == FANOUT + 1);
        tokio::time::timeout(Duration::from_secs(30), wait)
            .await
            .expect("all nodes seen");
        let targets: Vec<NodeKey> = nodes.iter().map(MeshNode::local_key).collect();
        let udp = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let (echoes, tasks) = udp_echoes(FANOUT).await;
        (sender, nodes, targets, udp, echoes, tasks)
    });
    let payload = vec![7u8; 64];
    let mut g = c.benchmark_group("mesh_fanout_50");
    g.sample_size(30);
    g.measurement_time(Duration::from_secs(5));
    for (name, limit) in [("direct", 0usize), ("tree_2", 2), ("tree_7", 7)] {
        g.bench_function(name, |bench| {
            bench.iter(|| {
                rt.block_on(async {
                    let report = sender
                        .send_with(
                            1,
                            &targets,
                            &payload,
                            SendOptions::default().relay_limit(limit),
                        )
                        .await
                        .unwrap();
                    assert_eq!(report.delivered.len(), FANOUT, "{report:?}");
                })
            });
        });
    }
    g.bench_function("raw_udp_acked", |bench| {
        bench.iter(|| {
            rt.block_on(async {
                for e in &echoes {
                    udp.send_to(&payload, e).await.unwrap();
                }
                let mut buf = [0u8; 128];
                for _ in 0..FANOUT {
                    udp.recv_from(&mut buf).await.unwrap();
                }
            })
        });
    });
    g.finish();
    rt.block_on(async {
        let _ = sender.stop().await;
        for n in nodes {
            let _ = n.stop().await;
        }
    });
    tasks.iter().for_each(tokio::task::JoinHandle::abort);
}

fn bench_shared(c: &mut Criterion) {
    use mesh_link::shared::{Event, Properties};
    let rt = runtime();
    let (owner, b, c2, on_b, on_c) = rt.block_on(async {
        let registry = Registry::memory();
        let owner = node(&registry).await;
        let b = node(&registry).await;
        let c2 = node(&registry).await;
        let props = Properties::new().number("counter", 0.0, ..);
        let on_b = b
            .shared()
            .create(props, Duration::from_secs(3600), owner.local_key())
            .await
            .unwrap();
        let on_c = c2.shared().get(on_b.mid()).await.unwrap();
        (owner, b, c2, on_b, on_c)
    });
    let payload = vec![7u8; 64];
    let ok = owner.local_key();
    let mut g = c.benchmark_group("mesh_shared");
    g.measurement_time(Duration::from_secs(4));
    g.bench_function("request_reply", |bench| {
        bench.iter(|| {
            rt.block_on(async {
                let r: Vec<u8> = b.request(2, ok, &payload).await.unwrap();
                assert_eq!(r.len(), 64);
            })
        });
    });
    g.bench_function("inc_confirmed", |bench| {
        bench.iter(|| rt.block_on(async { on_b.inc("counter", 1.0).await.unwrap() }));
    });
    let mut seen = on_c.updates();
    g.bench_function("inc_seen_by_other_replica", |bench| {
        bench.iter(|| {
            rt.block_on(async {
                let v = on_b.inc("counter", 1.0).await.unwrap();
                loop {
                    match seen.recv().await.unwrap() {
                        Event::Update { version, .. } if version >= v => break,
                        _ => {}
                    }
                }
            })
        });
    });
    g.finish();
    rt.block_on(async {
        drop((on_b, on_c));
        let _ = b.stop().await;
        let _ = c2.stop().await;
        let _ = owner.stop().await;
    });
}

criterion_group!(benches, bench_rtt, bench_fanout, bench_shared);

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
    let lines = [
        ratio_lines("mesh_rtt", &[("mesh_link_request", "raw_udp_pingpong")]),
        ratio_lines(
            "mesh_fanout_50",
            &[
                ("direct", "raw_udp_acked"),
                ("tree_2", "raw_udp_acked"),
                ("tree_7", "raw_udp_acked"),
                ("tree_7", "direct"),
            ],
        ),
        ratio_lines(
            "mesh_shared",
            &[
                ("inc_confirmed", "request_reply"),
                ("inc_seen_by_other_replica", "request_reply"),
            ],
        ),
    ];
    println!("\n== ratios (time, lower is better; < 1 means faster than the baseline) ==");
    for l in lines.iter().flatten() {
        println!("{l}");
    }
}
