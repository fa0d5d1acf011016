//! mesh-rudp over loopback, each against a baseline measured in the same run:
//!
//! - `rtt`: a 64-byte reliable request and its reliable reply vs a raw tokio UDP ping-pong;
//! - `oneway`: 10 000 reliable 64-byte messages vs 10 000 raw UDP datagrams (time per batch);
//! - `bulk`: 64 MiB as 1 MiB messages vs a tokio TCP stream;
//! - `sim`: virtual time simulated per real second at 20 % loss.
//!
//! ```text
//! cargo bench -p mesh-benches --bench rudp
//! ```
//!
//! Everything runs on one current-thread tokio runtime, so no measurement pays a cross-CPU
//! wake-up the other does not. The ratios are printed at the end.
#![allow(clippy::print_stdout, reason = "a bench reports its ratios")]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use criterion::{criterion_group, Criterion, Throughput};
use mesh_benches::ratio_lines;
use mesh_rudp::sim::{LinkConfig, Sim};
use mesh_rudp::{Delivery, EndpointConfig, Transport, TransportConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::runtime::Runtime;

fn runtime() -> Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

async fn pair() -> (Arc<Transport>, Arc<Transport>) {
    pair_with(TransportConfig::default()).await
}

async fn pair_with(config: TransportConfig) -> (Arc<Transport>, Arc<Transport>) {
    let a = Transport::bind("127.0.0.1:0".parse().unwrap(), config.clone())
        .await
        .unwrap();
    let b = Transport::bind("127.0.0.1:0".parse().unwrap(), config)
        .await
        .unwrap();
    (Arc::new(a), Arc::new(b))
}

/// A task that answers every message with the same bytes.
fn echo(t: Arc<Transport>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        while let Some(m) = t.recv().await {
            if t.queue(m.from, m.data, Delivery::Unordered.into())
                .await
                .is_err()
            {
                return;
            }
        }
    })
}

async fn udp_echo_pair() -> (UdpSocket, SocketAddr, tokio::task::JoinHandle<()>) {
    let a = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let b = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let b_addr = b.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let mut buf = [0u8; 2048];
        while let Ok((n, from)) = b.recv_from(&mut buf).await {
            let _ = b.send_to(&buf[..n], from).await;
        }
    });
    (a, b_addr, task)
}

fn bench_rtt(c: &mut Criterion) {
    let rt = runtime();
    let (a, b, echo_task, udp, udp_peer, udp_task) = rt.block_on(async {
        let (a, b) = pair().await;
        let e = echo(b.clone());
        let (udp, peer, t) = udp_echo_pair().await;
        (a, b, e, udp, peer, t)
    });
    let msg = Bytes::from(vec![7u8; 64]);
    let mut g = c.benchmark_group("rudp_rtt");
    g.measurement_time(Duration::from_secs(4));
    g.bench_function("raw_udp_pingpong", |bch| {
        let mut buf = [0u8; 2048];
        bch.iter(|| {
            rt.block_on(async {
                udp.send_to(&msg, udp_peer).await.unwrap();
                udp.recv_from(&mut buf).await.unwrap();
            })
        })
    });
    let to = b.local_addr();
    g.bench_function("mesh_rudp_request_reply", |bch| {
        bch.iter(|| {
            rt.block_on(async {
                let _ack = a
                    .queue(to, msg.clone(), Delivery::Unordered.into())
                    .await
                    .unwrap()
                    .expect("tracked");
                a.recv().await.unwrap();
            })
        })
    });
    g.finish();
    rt.block_on(async {
        echo_task.abort();
        udp_task.abort();
        a.close().await;
        b.close().await;
    });
}

const ONEWAY_BATCH: u64 = 10_000;

fn bench_oneway(c: &mut Criterion) {
    let rt = runtime();
    let (a, b) = rt.block_on(pair());
    let (tx, rx) = rt.block_on(async {
        let tx = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let rx = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        (tx, rx)
    });
    let rx_addr = rx.local_addr().unwrap();
    let msg = Bytes::from(vec![7u8; 64]);
    let mut g = c.benchmark_group("rudp_oneway");
    g.throughput(Throughput::Elements(ONEWAY_BATCH));
    g.sample_size(20);
    g.measurement_time(Duration::from_secs(5));
    g.bench_function("raw_udp_datagrams", |bch| {
        bch.iter(|| {
            rt.block_on(async {
                // Unbatched: one send_to per datagram; the receiver reads what arrives.
                let mut buf = [0u8; 2048];
                let mut got = 0u64;
                for _ in 0..ONEWAY_BATCH {
                    tx.send_to(&msg, rx_addr).await.unwrap();
                    while rx.try_recv_from(&mut buf).is_ok() {
                        got += 1;
                    }
                }
                while let Ok(Ok(_)) =
                    tokio::time::timeout(Duration::from_millis(1), rx.recv_from(&mut buf)).await
                {
                    got += 1;
                }
                got
            })
        })
    });
    let to = b.local_addr();
    g.bench_function("mesh_rudp_reliable", |bch| {
        bch.iter(|| {
            rt.block_on(async {
                let mut acks = Vec::with_capacity(ONEWAY_BATCH as usize);
                for _ in 0..ONEWAY_BATCH {
                    acks.push(
                        a.queue(to, msg.clone(), Delivery::Unordered.into())
                            .await
                            .unwrap()
                            .expect("tracked"),
                    );
                    while b.try_recv().is_some() {}
                }
                for ack in acks {
                    ack.await.unwrap().unwrap();
                }
                while b.try_recv().is_some() {}
            })
        })
    });
    g.finish();
    rt.block_on(async {
        a.close().await;
        b.close().await;
    });
}

const BULK_BYTES: usize = 64 << 20;
const BULK_MESSAGE: usize = 1 << 20;

fn bench_bulk(c: &mut Criterion) {
    // Two workers: bulk transfer is throughput-bound, and each side may use its own CPU (the
    // kernel does the same for TCP).
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let (a, b) = rt.block_on(pair());
    let (mut tcp_tx, tcp_task) = rt.block_on(async {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let tx = TcpStream::connect(addr).await.unwrap();
        tx.set_nodelay(true).unwrap();
        let (mut rx, _) = l.accept().await.unwrap();
        let task = tokio::spawn(async move {
            let mut buf = vec![0u8; 1 << 20];
            let mut total = 0usize;
            loop {
                match rx.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => {
                        total += n;
                        if total >= BULK_BYTES {
                            total -= BULK_BYTES;
                            let _ = rx.write_all(b"k").await;
                        }
                    }
                }
            }
        });
        (tx, task)
    });
    let chunk = Bytes::from(vec![9u8; BULK_MESSAGE]);
    let mut g = c.benchmark_group("rudp_bulk");
    g.throughput(Throughput::Bytes(BULK_BYTES as u64));
    g.sample_size(10);
    g.measurement_time(Duration::from_secs(10));
    g.bench_function("tcp_stream", |bch| {
        bch.iter(|| {
            rt.block_on(async {
                for _ in 0..BULK_BYTES / BULK_MESSAGE {
                    tcp_tx.write_all(&chunk).await.unwrap();
                }
                let mut k = [0u8; 1];
                tcp_tx.read_exact(&mut k).await.unwrap();
            })
        })
    });
    // The defaults (on Linux, 32 000-byte datagrams between loopback peers), and the 1200-byte
    // MTU every other peer gets, which is what loopback peers get with `loopback_mtu(None)`.
    let mut small_mtu = TransportConfig::default();
    small_mtu.endpoint.loopback_mtu(None);
    let (c_, d_) = rt.block_on(pair_with(small_mtu));
    for (name, (tx, rx)) in [
        ("mesh_rudp_1mib_messages", (&a, &b)),
        ("mesh_rudp_1mib_messages_mtu1200", (&c_, &d_)),
    ] {
        let to = rx.local_addr();
        g.bench_function(name, |bch| {
            bch.iter(|| {
                rt.block_on(async {
                    let mut acks = Vec::new();
                    for _ in 0..BULK_BYTES / BULK_MESSAGE {
                        acks.push(
                            tx.queue(to, chunk.clone(), Delivery::Unordered.into())
                                .await
                                .unwrap()
                                .expect("tracked"),
                        );
                        while rx.try_recv().is_some() {}
                    }
                    for ack in acks {
                        ack.await.unwrap().unwrap();
                        while rx.try_recv().is_some() {}
                    }
                })
            })
        });
    }
    g.finish();
    rt.block_on(async {
        tcp_task.abort();
        for t in [a, b, c_, d_] {
            t.close().await;
        }
    });
}

/// Virtual seconds per real second at 20 % loss, reported as a line (criterion measures the
/// real time of a fixed virtual workload).
fn bench_sim(c: &mut Criterion) {
    let virtual_time = std::cell::Cell::new(Duration::ZERO);
    let mut g = c.benchmark_group("rudp_sim");
    g.sample_size(10);
    g.bench_function("lossy_20pct_1000_messages", |bch| {
        bch.iter(|| {
            let mut sim = Sim::new(1);
            let a = sim.add_endpoint(EndpointConfig::default());
            let b = sim.add_endpoint(EndpointConfig::default());
            sim.set_all_links(LinkConfig {
                loss: 0.2,
                delay: Duration::from_millis(5),
                jitter: Duration::from_millis(5),
                ..LinkConfig::default()
            });
            for i in 0..1000u32 {
                sim.send(a, b, Bytes::from(vec![i as u8; 500]), Delivery::Unordered)
                    .unwrap();
            }
            sim.run_until_idle(10_000_000).unwrap();
            virtual_time.set(sim.elapsed());
        })
    });
    g.finish();
    if let Some(real) = mesh_benches::median_ns("rudp_sim", "lossy_20pct_1000_messages") {
        println!(
            "rudp_sim: {:.0} virtual seconds per real second ({:?} virtual in {:.1} ms)",
            virtual_time.get().as_secs_f64() / (real / 1e9),
            virtual_time.get(),
            real / 1e6
        );
    }
}

criterion_group!(benches, bench_rtt, bench_oneway, bench_bulk, bench_sim);

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
    let lines = [
        ratio_lines(
            "rudp_rtt",
            &[("mesh_rudp_request_reply", "raw_udp_pingpong")],
        ),
        ratio_lines(
            "rudp_oneway",
            &[("mesh_rudp_reliable", "raw_udp_datagrams")],
        ),
        ratio_lines(
            "rudp_bulk",
            &[
                ("mesh_rudp_1mib_messages", "tcp_stream"),
                ("mesh_rudp_1mib_messages_mtu1200", "tcp_stream"),
            ],
        ),
    ];
    println!("\n== ratios (time, lower is better; < 1 means faster than the baseline) ==");
    for l in lines.iter().flatten() {
        println!("{l}");
    }
}
