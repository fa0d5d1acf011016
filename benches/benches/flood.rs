//! Request latency of a healthy peer while its node is flooded, against the same without the
//! flood, in one run: garbage and forged frames (no key), and forged authenticated-looking
//! datagrams (with a cluster key). Prints p50/p99 and their ratios; asserts nothing.
//!
//! ```text
//! cargo bench -p mesh-benches --bench flood
//! ```
#![allow(clippy::print_stdout, reason = "a bench reports what it measured")]

use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mesh_link::{Config, HandlerError, MeshNode, Registry, Secret};
use mesh_rudp::sim::Forger;

const REQUESTS: usize = 5000;

async fn node(registry: &Registry, key: Option<&str>) -> MeshNode {
    let mut c = Config::default();
    c.address = Some("127.0.0.1".parse().unwrap());
    c.port = 0;
    c.cluster_key = key.map(Secret::new);
    MeshNode::builder()
        .config(|x| *x = c)
        .registry(registry.clone())
        .on_request(7, |v: Vec<u8>, _| async move { Ok::<_, HandlerError>(v) })
        .start()
        .await
        .unwrap()
}

/// Sends hostile datagrams at `rate` per second (0: as fast as one thread can) until `stop`.
fn flood(
    victim: SocketAddr,
    fake_auth: bool,
    rate: u64,
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let sockets: Vec<UdpSocket> = (0..8)
            .map(|_| UdpSocket::bind("127.0.0.1:0").unwrap())
            .collect();
        let mut forger = Forger::new(99);
        let payload = vec![0xEE; 600];
        let mut buf = Vec::new();
        let start = Instant::now();
        let mut i = 0u64;
        while !stop.load(Ordering::Relaxed) {
            let n = forger.datagram(&mut buf, &payload, fake_auth);
            if sockets[(i % 8) as usize].send_to(&buf[..n], victim).is_ok() {
                sent.fetch_add(1, Ordering::Relaxed);
            }
            i += 1;
            if rate > 0 && i.is_multiple_of(64) {
                let due = Duration::from_secs_f64(i as f64 / rate as f64);
                if let Some(wait) = due.checked_sub(start.elapsed()) {
                    std::thread::sleep(wait);
                }
            }
        }
    })
}

fn pct(sorted: &[Duration], p: usize) -> Duration {
    sorted[(sorted.len() * p / 100).min(sorted.len() - 1)]
}

async fn measure(client: &MeshNode, victim: &MeshNode) -> Vec<Duration> {
    let data = vec![1u8; 64];
    let mut rtts = Vec::with_capacity(REQUESTS);
    for _ in 0..REQUESTS {
        let t = Instant::now();
        let _: Vec<u8> = client.request(7, victim.local_key(), &data).await.unwrap();
        rtts.push(t.elapsed());
    }
    rtts.sort();
    rtts
}

async fn scenario(name: &str, key: Option<&str>, rate: u64) {
    let registry = Registry::memory();
    let victim = node(&registry, key).await;
    let client = node(&registry, key).await;
    let _ = measure(&client, &victim).await; // warm up
    let calm = measure(&client, &victim).await;
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let t = Instant::now();
    let flooder = flood(
        victim.local_key().socket_addr(),
        key.is_some(),
        rate,
        stop.clone(),
        sent.clone(),
    );
    let flooded = measure(&client, &victim).await;
    stop.store(true, Ordering::Relaxed);
    flooder.join().unwrap();
    let rate = sent.load(Ordering::Relaxed) as f64 / t.elapsed().as_secs_f64();
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    println!(
        "{name}: calm p50 {:.1} µs p99 {:.1} µs | flooded ({:.0} k datagrams/s) p50 {:.1} µs p99 {:.1} µs | ratio p50 {:.2} p99 {:.2}",
        us(pct(&calm, 50)),
        us(pct(&calm, 99)),
        rate / 1e3,
        us(pct(&flooded, 50)),
        us(pct(&flooded, 99)),
        us(pct(&flooded, 50)) / us(pct(&calm, 50)),
        us(pct(&flooded, 99)) / us(pct(&calm, 99)),
    );
    let s = victim.transport_stats();
    println!(
        "  victim dropped: invalid {}, unauthenticated {}, peer limit {}, stale session {}; peers now {}",
        s.dropped_invalid, s.dropped_unauthenticated, s.dropped_peer_limit, s.dropped_stale_session, s.peers
    );
    let _ = client.stop().await;
    let _ = victim.stop().await;
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` would pass nothing: run either way.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        for rate in [20_000, 100_000, 0] {
            scenario("no key, garbage + forged frames", None, rate).await;
        }
        for rate in [20_000, 100_000, 0] {
            let name = "cluster key, forged authenticated datagrams";
            scenario(name, Some("bench secret"), rate).await;
        }
    });
}
