//! Floods against a node that is serving a healthy peer, over real loopback sockets: garbage,
//! forged frames (valid framing, random sessions, huge fragment counts, wrapping sequence
//! numbers, acknowledgements of nothing), and, with a cluster key, forged and replayed
//! datagrams. Its own test binary, so the memory it measures is the flood's alone.
//!
//! Asserted: every healthy request succeeds; state stays within its caps; resident memory
//! grows by less than [`MEMORY_BOUND`]; with a key, nothing forged or replayed reaches a
//! handler. Latency under flood is measured by `cargo bench -p mesh-benches --bench flood`.

#![allow(
    clippy::print_stdout,
    reason = "the flood tests report what they measured"
)]

use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use mesh_link::{Config, HandlerError, MeshNode, Registry, Secret};
use mesh_rudp::sim::Forger;
use mesh_wire::{ClusterKey, DataFrame, DatagramWriter, Envelope, EnvelopeKind, Frame, Header};

/// Most resident memory a flood may add (the caps allow far more only with 4096 established
/// peers each holding its reassembly allowance, which a flood cannot establish).
const MEMORY_BOUND: usize = 32 << 20;
/// Datagrams per flood.
const FLOOD: u64 = 150_000;
/// Healthy requests made during a flood.
const REQUESTS: usize = 1500;

fn rss() -> usize {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse::<usize>().ok())
        .unwrap_or(0)
        * 4096
}

fn config(key: Option<&str>) -> Config {
    let mut c = Config::default();
    c.prefix = "flood".into();
    c.address = Some("127.0.0.1".parse().unwrap());
    c.port = 0;
    c.update_interval = Duration::from_millis(200);
    c.request_timeout = Duration::from_secs(10);
    c.cluster_key = key.map(Secret::new);
    c
}

async fn node(registry: &Registry, key: Option<&str>, runs: Arc<AtomicUsize>) -> MeshNode {
    MeshNode::builder()
        .config(|c| *c = config(key))
        .registry(registry.clone())
        .on_request(7, move |v: Vec<u8>, _| {
            runs.fetch_add(1, Ordering::Relaxed);
            async move { Ok::<_, HandlerError>(v) }
        })
        .start()
        .await
        .expect("node starts")
}

/// Floods `victim` from several sockets until `FLOOD` datagrams are sent or `stop` is set.
fn flood(
    victim: SocketAddr,
    fake_auth: bool,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<u64> {
    std::thread::spawn(move || {
        let sockets: Vec<UdpSocket> = (0..8)
            .map(|_| UdpSocket::bind("127.0.0.1:0").unwrap())
            .collect();
        let mut forger = Forger::new(0x5eed);
        let mut payload = Vec::new();
        Envelope::encode_header(EnvelopeKind::Request, 7, 1, None, &mut payload);
        payload.resize(600, 0xEE);
        let mut buf = Vec::new();
        let mut sent = 0;
        let count = std::env::var("FLOOD_DATAGRAMS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(FLOOD);
        for i in 0..count {
            if stop.load(Ordering::Relaxed) {
                break;
            }
            let n = forger.datagram(&mut buf, &payload, fake_auth);
            if sockets[(i % 8) as usize].send_to(&buf[..n], victim).is_ok() {
                sent += 1;
            }
            if i % 256 == 0 {
                // Leave the loopback some room, so the flood is sustained, not one burst.
                std::thread::sleep(Duration::from_micros(200));
            }
        }
        sent
    })
}

async fn healthy_requests(client: &MeshNode, victim: &MeshNode) {
    for i in 0..REQUESTS {
        let data = vec![(i % 251) as u8; 64];
        let back: Vec<u8> = client
            .request(7, victim.local_key(), &data)
            .await
            .unwrap_or_else(|e| panic!("healthy request {i} failed under flood: {e}"));
        assert_eq!(back, data);
    }
}

/// One test, so the two floods never run at once: resident memory is per process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn floods() {
    floods_do_not_hurt_a_healthy_peer().await;
    with_a_cluster_key_nothing_forged_or_replayed_reaches_a_handler().await;
}

async fn floods_do_not_hurt_a_healthy_peer() {
    let registry = Registry::memory();
    let runs = Arc::new(AtomicUsize::new(0));
    let victim = node(&registry, None, runs.clone()).await;
    let client = node(&registry, None, Arc::new(AtomicUsize::new(0))).await;
    // Warm up: the healthy session exists before the flood.
    let _: Vec<u8> = client
        .request(7, victim.local_key(), &vec![0u8; 64])
        .await
        .unwrap();
    let before = rss();
    let stop = Arc::new(AtomicBool::new(false));
    let flooder = flood(victim.local_key().socket_addr(), false, stop.clone());
    healthy_requests(&client, &victim).await;
    stop.store(true, Ordering::Relaxed);
    let sent = flooder.join().unwrap();
    let grown = rss().saturating_sub(before);
    let s = victim.transport_stats();
    println!(
        "flood: {sent} datagrams; victim {s:?}; rss grew {} KiB",
        grown >> 10
    );
    assert!(s.peers <= 4096, "peer cap");
    assert!(s.reassembly_bytes <= 256 << 20, "reassembly cap");
    assert!(s.dropped_invalid > 0, "garbage was dropped and counted");
    assert!(grown < MEMORY_BOUND, "memory grew by {grown} bytes");
    assert!(
        runs.load(Ordering::Relaxed) > REQUESTS,
        "the healthy requests ran"
    );
    let _ = client.stop().await;
    let _ = victim.stop().await;
}

async fn with_a_cluster_key_nothing_forged_or_replayed_reaches_a_handler() {
    let registry = Registry::memory();
    let runs = Arc::new(AtomicUsize::new(0));
    let victim = node(&registry, Some("the cluster secret"), runs.clone()).await;
    let client = node(
        &registry,
        Some("the cluster secret"),
        Arc::new(AtomicUsize::new(0)),
    )
    .await;
    let stop = Arc::new(AtomicBool::new(false));
    let flooder = flood(victim.local_key().socket_addr(), true, stop.clone());

    // A replay: one genuine datagram (built with the key, as if captured on the wire) sent
    // once, then 5000 more times.
    let key = ClusterKey::from_secret(b"the cluster secret");
    let mut buf = Vec::new();
    let mut payload = Vec::new();
    Envelope::encode_header(EnvelopeKind::OneWay, 7, 0, None, &mut payload);
    payload.extend_from_slice(&mesh_wire::codec::encode(&vec![1u8; 8]).unwrap());
    let mut w = DatagramWriter::new_authenticated(&mut buf, Header::new(0xABCD, 0), 1200);
    w.push(&Frame::Data(DataFrame {
        lazy_ack: false,
        channel: 0,
        seq: 0,
        message: 0,
        order: None,
        fragment: None,
        payload: &payload,
    }))
    .unwrap();
    let now_micros = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_micros() as u64;
    let captured = w.finish_authenticated(now_micros, &key).to_vec();
    let replayer = UdpSocket::bind("127.0.0.1:0").unwrap();
    for _ in 0..5001 {
        replayer
            .send_to(&captured, victim.local_key().socket_addr())
            .unwrap();
    }

    healthy_requests(&client, &victim).await;
    stop.store(true, Ordering::Relaxed);
    flooder.join().unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let s = victim.transport_stats();
    println!("keyed flood: victim {s:?}");
    // The handler ran for the warm-up-free healthy requests and the one genuine copy only.
    assert_eq!(runs.load(Ordering::Relaxed), REQUESTS + 1);
    assert!(s.dropped_unauthenticated > 0, "forged datagrams counted");
    assert!(
        s.dropped_replay >= 5000,
        "replays counted: {}",
        s.dropped_replay
    );
    assert!(s.peers <= 2, "no state for forgers: {} peers", s.peers);
    let _ = client.stop().await;
    let _ = victim.stop().await;
}
