//! `mesh-bench <scenario>`: mesh-link against what users would use instead, in one process
//! run, interleaved in rounds (A B A B …) so that no contender gets a quieter machine. Prints
//! a table with the ratio to each baseline (`--json` for machines). All on 127.0.0.1.
//!
//! ```text
//! cargo run --release -p mesh-benches --bin mesh-bench -- all
//! cargo run --release -p mesh-benches --bin mesh-bench -- rtt --duration 10 --json
//! ```
#![allow(
    clippy::print_stdout,
    clippy::print_stderr,
    reason = "a command-line tool prints its results"
)]

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use clap::{Parser, ValueEnum};
use futures_util::future::join_all;
use futures_util::stream::{FuturesUnordered, StreamExt};
use mesh_link::{HandlerError, MeshNode, NodeKey, Registry, SendOptions};
use mesh_rudp::{Delivery, EndpointConfig, Transport, TransportConfig};
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};

/// A boxed future of the bench.
type BenchFuture<'a> = Pin<Box<dyn Future<Output = ()> + Send + 'a>>;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Scenario {
    /// 64-byte request/response, one at a time.
    Rtt,
    /// 64-byte request/response, 100 in flight.
    RttConcurrent,
    /// 64-byte one-way messages per second.
    Oneway,
    /// 1 MiB and 16 MiB messages.
    Bulk,
    /// One message to 10 and 50 nodes, until all acknowledged.
    Fanout,
    /// `oneway` and `rtt` through a lossy relay: adaptive RTO vs the original's fixed 200 ms.
    Lossy,
    /// `rtt`, `oneway` and `bulk` against the original Node.js mesh-link 0.13.6 (needs `node`,
    /// `npm` and `redis-server`; both meshes use a Redis the bench starts).
    NodeCompare,
    /// Every scenario (`node-compare` too, when `node` is installed).
    All,
}

/// mesh-link against raw UDP, TCP, HTTP/1.1 (hyper) and QUIC (quinn), side by side.
#[derive(Debug, Clone, Parser)]
#[command(name = "mesh-bench", version, about)]
struct Args {
    /// What to measure.
    scenario: Scenario,
    /// Seconds per scenario (split over its rounds and contenders).
    #[arg(long, default_value_t = 20)]
    duration: u64,
    /// Rounds of interleaving.
    #[arg(long, default_value_t = 5)]
    rounds: u32,
    /// One JSON object per result line instead of tables.
    #[arg(long)]
    json: bool,
    /// Also draw the latency percentiles (p50 and p99 of every latency row) into this SVG.
    #[arg(long)]
    plot: Option<std::path::PathBuf>,
}

#[derive(Debug, Clone, Serialize)]
struct Row {
    scenario: String,
    contender: String,
    /// Latencies in microseconds, if measured.
    p50_us: Option<f64>,
    p90_us: Option<f64>,
    p99_us: Option<f64>,
    /// Operations (requests, messages) per second, if measured.
    per_sec: Option<f64>,
    /// Megabytes (10^6) per second, if measured.
    mb_per_sec: Option<f64>,
    /// Messages sent but not received (one-way scenarios).
    lost: Option<u64>,
    samples: usize,
    /// mesh-link's figure over this row's (for latency, < 1 is better for mesh-link; for
    /// rates, > 1 is).
    ratio_p50: Option<f64>,
    ratio_p99: Option<f64>,
    ratio_rate: Option<f64>,
}

impl Row {
    fn new(scenario: &str, contender: &str) -> Self {
        Self {
            scenario: scenario.into(),
            contender: contender.into(),
            p50_us: None,
            p90_us: None,
            p99_us: None,
            per_sec: None,
            mb_per_sec: None,
            lost: None,
            samples: 0,
            ratio_p50: None,
            ratio_p99: None,
            ratio_rate: None,
        }
    }

    fn latencies(mut self, mut l: Vec<Duration>, elapsed: Duration) -> Self {
        l.sort();
        let pct = |p: usize| {
            l.get((l.len() * p / 100).min(l.len().saturating_sub(1)))
                .map(|d| d.as_secs_f64() * 1e6)
        };
        self.p50_us = pct(50);
        self.p90_us = pct(90);
        self.p99_us = pct(99);
        self.samples = l.len();
        if !elapsed.is_zero() {
            self.per_sec = Some(l.len() as f64 / elapsed.as_secs_f64());
        }
        self
    }
}

/// Fills in each row's ratios against the first row (mesh-link's).
fn ratios(rows: &mut [Row]) {
    let Some(first) = rows.first().cloned() else {
        return;
    };
    for r in rows.iter_mut() {
        r.ratio_p50 = first.p50_us.zip(r.p50_us).map(|(a, b)| a / b);
        r.ratio_p99 = first.p99_us.zip(r.p99_us).map(|(a, b)| a / b);
        r.ratio_rate = first
            .mb_per_sec
            .zip(r.mb_per_sec)
            .or(first.per_sec.zip(r.per_sec))
            .map(|(a, b)| a / b);
    }
}

fn print(rows: &[Row], json: bool) {
    if json {
        for r in rows {
            println!("{}", serde_json::to_string(r).unwrap_or_default());
        }
        return;
    }
    let f =
        |v: Option<f64>, prec: usize| v.map_or_else(|| "-".to_owned(), |x| format!("{x:.prec$}"));
    println!(
        "\n{:<14} {:<34} {:>9} {:>9} {:>9} {:>11} {:>9} {:>6} {:>8} {:>8} {:>8}",
        "scenario",
        "contender",
        "p50 µs",
        "p90 µs",
        "p99 µs",
        "ops/s",
        "MB/s",
        "lost",
        "×p50",
        "×p99",
        "×rate"
    );
    for r in rows {
        println!(
            "{:<14} {:<34} {:>9} {:>9} {:>9} {:>11} {:>9} {:>6} {:>8} {:>8} {:>8}",
            r.scenario,
            r.contender,
            f(r.p50_us, 1),
            f(r.p90_us, 1),
            f(r.p99_us, 1),
            f(r.per_sec, 0),
            f(r.mb_per_sec, 1),
            r.lost.map_or_else(|| "-".into(), |x| x.to_string()),
            f(r.ratio_p50, 2),
            f(r.ratio_p99, 2),
            f(r.ratio_rate, 2),
        );
    }
}

/// An SVG of p50 and p99 per latency row, on a logarithmic axis (hand-written: a chart of
/// bars needs no plotting library).
fn plot(rows: &[Row], path: &std::path::Path) -> std::io::Result<()> {
    use std::fmt::Write as _;
    let rows: Vec<&Row> = rows.iter().filter(|r| r.p50_us.is_some()).collect();
    let (label_w, bar_w, row_h, top) = (330.0, 560.0, 26.0, 40.0);
    let height = top + row_h * rows.len() as f64 + 40.0;
    let max = rows.iter().filter_map(|r| r.p99_us).fold(10.0f64, f64::max);
    let (lo, hi) = (1.0f64.ln(), (max * 1.2).ln());
    let x = |us: f64| label_w + bar_w * ((us.max(1.0).ln() - lo) / (hi - lo));
    let mut svg = String::new();
    let _ = write!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{height}" font-family="sans-serif" font-size="12">
<rect width="100%" height="100%" fill="white"/>
<text x="10" y="20" font-size="14">mesh-bench: latency, p50 (dark) and p99 (light), µs, log scale</text>
"#,
        w = label_w + bar_w + 80.0
    );
    for decade in 0..7 {
        let us = 10f64.powi(decade);
        if us > max * 1.2 {
            break;
        }
        let _ = writeln!(
            svg,
            r##"<line x1="{0}" y1="{top}" x2="{0}" y2="{1}" stroke="#ddd"/><text x="{0}" y="{2}" text-anchor="middle">{us}</text>"##,
            x(us),
            height - 30.0,
            height - 15.0
        );
    }
    for (i, r) in rows.iter().enumerate() {
        let y = top + row_h * i as f64;
        let mine = r.contender.starts_with("mesh-link");
        let (dark, light) = if mine {
            ("#1f6feb", "#9ec5fe")
        } else {
            ("#555", "#bbb")
        };
        let p50 = r.p50_us.unwrap_or(0.0);
        let p99 = r.p99_us.unwrap_or(p50);
        let _ = writeln!(
            svg,
            r#"<text x="{lx}" y="{ty}" text-anchor="end">{s} · {c}</text><rect x="{label_w}" y="{y}" width="{w99}" height="16" fill="{light}"/><rect x="{label_w}" y="{y}" width="{w50}" height="16" fill="{dark}"/><text x="{tx}" y="{ty}">{p50:.0} / {p99:.0}</text>"#,
            lx = label_w - 8.0,
            ty = y + 12.0,
            s = r.scenario,
            c = r.contender,
            w99 = x(p99) - label_w,
            w50 = x(p50) - label_w,
            tx = x(p99) + 4.0,
        );
    }
    svg.push_str("</svg>\n");
    std::fs::write(path, svg)
}

// ----- request/response clients ------------------------------------------------------------

trait Client: Send {
    fn call(&mut self) -> BenchFuture<'_>;
}

const PAYLOAD: [u8; 64] = [7; 64];
const ECHO: u16 = 7;
const SINK: u16 = 8;

struct MeshClient {
    node: MeshNode,
    to: NodeKey,
}

impl Client for MeshClient {
    fn call(&mut self) -> BenchFuture<'_> {
        Box::pin(async move {
            let r: Bytes = self
                .node
                .request_bytes(
                    ECHO,
                    self.to,
                    Bytes::from_static(&PAYLOAD),
                    Duration::from_secs(10),
                    true,
                )
                .await
                .expect("mesh-link answer");
            assert_eq!(r.len(), 64);
        })
    }
}

struct UdpClient(UdpSocket, [u8; 128]);

impl Client for UdpClient {
    fn call(&mut self) -> BenchFuture<'_> {
        Box::pin(async move {
            self.0.send(&PAYLOAD).await.expect("udp send");
            // A lost datagram would hang the bench: give up on it after a second.
            let _ = tokio::time::timeout(Duration::from_secs(1), self.0.recv(&mut self.1)).await;
        })
    }
}

struct TcpClient(TcpStream, [u8; 64]);

impl Client for TcpClient {
    fn call(&mut self) -> BenchFuture<'_> {
        Box::pin(async move {
            self.0.write_all(&PAYLOAD).await.expect("tcp write");
            self.0.read_exact(&mut self.1).await.expect("tcp read");
        })
    }
}

struct HttpClient(hyper::client::conn::http1::SendRequest<http_body_util::Full<Bytes>>);

impl Client for HttpClient {
    fn call(&mut self) -> BenchFuture<'_> {
        Box::pin(async move {
            use http_body_util::BodyExt;
            let req = hyper::Request::post("/echo")
                .header("host", "127.0.0.1")
                .body(http_body_util::Full::new(Bytes::from_static(&PAYLOAD)))
                .expect("request");
            self.0.ready().await.expect("http connection ready");
            let resp = self.0.send_request(req).await.expect("http answer");
            let body = resp
                .into_body()
                .collect()
                .await
                .expect("http body")
                .to_bytes();
            assert_eq!(body.len(), 64);
        })
    }
}

struct QuicClient(quinn::Connection);

impl Client for QuicClient {
    fn call(&mut self) -> BenchFuture<'_> {
        Box::pin(async move {
            let (mut send, mut recv) = self.0.open_bi().await.expect("quic stream");
            send.write_all(&PAYLOAD).await.expect("quic write");
            send.finish().expect("quic finish");
            let back = recv.read_to_end(1024).await.expect("quic read");
            assert_eq!(back.len(), 64);
        })
    }
}

// ----- servers -------------------------------------------------------------------------------

async fn mesh_pair() -> (MeshNode, MeshNode) {
    let registry = Registry::memory();
    let server = mesh_node(&registry).await;
    let client = mesh_node(&registry).await;
    (server, client)
}

async fn mesh_node(registry: &Registry) -> MeshNode {
    MeshNode::builder()
        .registry(registry.clone())
        .prefix("mesh-bench")
        .bind("127.0.0.1:0")
        .config(|c| c.max_message_size = 32 << 20)
        .on_raw(
            ECHO,
            |b: Bytes, _| async move { Ok::<_, HandlerError>(Some(b)) },
        )
        .on_raw(
            SINK,
            |_: Bytes, _| async move { Ok::<_, HandlerError>(None) },
        )
        .start()
        .await
        .expect("mesh node")
}

async fn udp_echo() -> SocketAddr {
    let s = UdpSocket::bind("127.0.0.1:0").await.expect("udp");
    let addr = s.local_addr().expect("addr");
    tokio::spawn(async move {
        let mut buf = [0u8; 2048];
        while let Ok((n, from)) = s.recv_from(&mut buf).await {
            let _ = s.send_to(&buf[..n], from).await;
        }
    });
    addr
}

async fn tcp_echo() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("tcp");
    let addr = l.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let _ = s.set_nodelay(true);
            tokio::spawn(async move {
                let mut buf = [0u8; 64];
                while s.read_exact(&mut buf).await.is_ok() {
                    if s.write_all(&buf).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

async fn http_echo() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("tcp");
    let addr = l.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            let _ = s.set_nodelay(true);
            tokio::spawn(async move {
                let service = hyper::service::service_fn(
                    |req: hyper::Request<hyper::body::Incoming>| async move {
                        use http_body_util::BodyExt;
                        let body = req.into_body().collect().await?.to_bytes();
                        Ok::<_, hyper::Error>(hyper::Response::new(http_body_util::Full::new(body)))
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(s), service)
                    .await;
            });
        }
    });
    addr
}

async fn http_client(addr: SocketAddr) -> HttpClient {
    let s = TcpStream::connect(addr).await.expect("connect");
    s.set_nodelay(true).expect("nodelay");
    let (sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(s))
        .await
        .expect("handshake");
    tokio::spawn(conn);
    HttpClient(sender)
}

fn quic_configs() -> (quinn::ServerConfig, quinn::ClientConfig) {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).expect("cert");
    let der = cert.cert.der().clone();
    let key = rustls::pki_types::PrivatePkcs8KeyDer::from(cert.signing_key.serialize_der());
    let mut server = quinn::ServerConfig::with_single_cert(vec![der.clone()], key.into())
        .expect("server config");
    let mut transport = quinn::TransportConfig::default();
    transport.max_concurrent_bidi_streams(1024u32.into());
    transport.max_concurrent_uni_streams(1024u32.into());
    let transport = Arc::new(transport);
    server.transport_config(transport.clone());
    let mut roots = rustls::RootCertStore::empty();
    roots.add(der).expect("root");
    let mut client =
        quinn::ClientConfig::with_root_certificates(Arc::new(roots)).expect("client config");
    client.transport_config(transport);
    (server, client)
}

/// A QUIC server that echoes each bidirectional stream and drains each unidirectional one,
/// counting the bytes.
async fn quic_server(received: Arc<AtomicU64>) -> (SocketAddr, quinn::ClientConfig) {
    let (sc, cc) = quic_configs();
    let ep =
        quinn::Endpoint::server(sc, "127.0.0.1:0".parse().expect("addr")).expect("quic server");
    let addr = ep.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Some(incoming) = ep.accept().await {
            let received = received.clone();
            tokio::spawn(async move {
                let Ok(conn) = incoming.await else { return };
                loop {
                    tokio::select! {
                        bi = conn.accept_bi() => {
                            let Ok((mut send, mut recv)) = bi else { return };
                            tokio::spawn(async move {
                                if let Ok(data) = recv.read_to_end(1 << 20).await {
                                    let _ = send.write_all(&data).await;
                                    let _ = send.finish();
                                }
                            });
                        }
                        uni = conn.accept_uni() => {
                            let Ok(mut recv) = uni else { return };
                            let received = received.clone();
                            tokio::spawn(async move {
                                if let Ok(data) = recv.read_to_end(64 << 20).await {
                                    received.fetch_add(data.len() as u64, Ordering::Relaxed);
                                }
                            });
                        }
                    }
                }
            });
        }
    });
    (addr, cc)
}

async fn quic_client(addr: SocketAddr, cc: quinn::ClientConfig) -> quinn::Connection {
    let mut ep =
        quinn::Endpoint::client("127.0.0.1:0".parse().expect("addr")).expect("quic client");
    ep.set_default_client_config(cc);
    ep.connect(addr, "localhost")
        .expect("connect")
        .await
        .expect("quic handshake")
}

// ----- runners -------------------------------------------------------------------------------

/// Runs every client in a loop until `slice` is over; the latency of each call.
async fn run_clients(clients: &mut [Box<dyn Client>], slice: Duration) -> Vec<Duration> {
    let deadline = Instant::now() + slice;
    let loops = clients.iter_mut().map(|c| async move {
        let mut l = Vec::new();
        while Instant::now() < deadline {
            let t = Instant::now();
            c.call().await;
            l.push(t.elapsed());
        }
        l
    });
    let all = join_all(loops).await;
    all.into_iter().flatten().collect()
}

type Factory = Pin<Box<dyn Future<Output = Vec<Box<dyn Client>>> + Send>>;

/// `rtt` and `rtt-concurrent`: each contender's clients, interleaved in rounds.
async fn rtt(args: &Args, concurrency: usize) -> Vec<Row> {
    let name = if concurrency == 1 {
        "rtt"
    } else {
        "rtt-concurrent"
    };
    let (server, client) = mesh_pair().await;
    let udp = udp_echo().await;
    let tcp = tcp_echo().await;
    let http = http_echo().await;
    let (quic, cc) = quic_server(Arc::default()).await;
    let quic_conn = quic_client(quic, cc).await;
    let to = server.local_key();
    let mesh_clients: Factory = Box::pin(async move {
        (0..concurrency)
            .map(|_| {
                Box::new(MeshClient {
                    node: client.clone(),
                    to,
                }) as Box<dyn Client>
            })
            .collect()
    });
    let udp_clients: Factory = Box::pin(async move {
        let mut v: Vec<Box<dyn Client>> = Vec::new();
        for _ in 0..concurrency {
            let s = UdpSocket::bind("127.0.0.1:0").await.expect("udp");
            s.connect(udp).await.expect("connect");
            v.push(Box::new(UdpClient(s, [0; 128])));
        }
        v
    });
    let tcp_clients: Factory = Box::pin(async move {
        let mut v: Vec<Box<dyn Client>> = Vec::new();
        for _ in 0..concurrency {
            let s = TcpStream::connect(tcp).await.expect("tcp");
            s.set_nodelay(true).expect("nodelay");
            v.push(Box::new(TcpClient(s, [0; 64])));
        }
        v
    });
    let http_clients: Factory = Box::pin(async move {
        let mut v: Vec<Box<dyn Client>> = Vec::new();
        for _ in 0..concurrency {
            v.push(Box::new(http_client(http).await));
        }
        v
    });
    let quic_clients: Factory = Box::pin(async move {
        (0..concurrency)
            .map(|_| Box::new(QuicClient(quic_conn.clone())) as Box<dyn Client>)
            .collect()
    });
    let names = [
        "mesh-link request",
        "raw UDP ping-pong",
        "TCP ping-pong (nodelay)",
        "HTTP/1.1 keep-alive (hyper)",
        "QUIC bidi stream (quinn)",
    ];
    let mut sets = Vec::new();
    for f in [
        mesh_clients,
        udp_clients,
        tcp_clients,
        http_clients,
        quic_clients,
    ] {
        sets.push(f.await);
    }
    let slice = Duration::from_secs(args.duration) / (args.rounds * sets.len() as u32);
    let mut lat: Vec<Vec<Duration>> = vec![Vec::new(); sets.len()];
    let mut spent = vec![Duration::ZERO; sets.len()];
    // Warm up every contender, then interleave.
    for set in &mut sets {
        run_clients(set, Duration::from_millis(100)).await;
    }
    for _ in 0..args.rounds {
        for (i, set) in sets.iter_mut().enumerate() {
            let t = Instant::now();
            lat[i].extend(run_clients(set, slice).await);
            spent[i] += t.elapsed();
        }
    }
    let mut rows: Vec<Row> = names
        .iter()
        .zip(lat)
        .zip(spent)
        .map(|((n, l), s)| Row::new(name, n).latencies(l, s))
        .collect();
    ratios(&mut rows);
    server.stop().await;
    rows
}

/// Sends 64-byte reliable one-way messages from `client` to `to` for `slice`, up to 4096
/// unacknowledged: how many were sent, and the time taken.
async fn mesh_oneway(client: &MeshNode, to: NodeKey, slice: Duration) -> (u64, Duration) {
    let t = Instant::now();
    let mut sent = 0u64;
    let mut inflight = FuturesUnordered::new();
    loop {
        while inflight.len() < 4096 && t.elapsed() < slice {
            let c = client.clone();
            inflight.push(async move {
                c.send_bytes(
                    SINK,
                    [to],
                    Bytes::from_static(&PAYLOAD),
                    SendOptions::default(),
                )
                .await
                .is_ok_and(|r| r.is_ok())
            });
            sent += 1;
        }
        if inflight.next().await.is_none() {
            break;
        }
    }
    (sent, t.elapsed())
}

/// `oneway`: 64-byte messages per second, received and counted by the other side.
async fn oneway(args: &Args) -> Vec<Row> {
    let (server, client) = mesh_pair().await;
    let received = Arc::new(AtomicU64::new(0));
    let r = received.clone();
    server.remove_handler(SINK);
    server
        .on_raw(SINK, move |_: Bytes, _| {
            r.fetch_add(1, Ordering::Relaxed);
            async { Ok::<_, HandlerError>(None) }
        })
        .expect("sink");
    // Raw UDP: a counting receiver.
    let udp_rx = UdpSocket::bind("127.0.0.1:0").await.expect("udp");
    let udp_addr = udp_rx.local_addr().expect("addr");
    let udp_count = Arc::new(AtomicU64::new(0));
    let uc = udp_count.clone();
    tokio::spawn(async move {
        let mut buf = [0u8; 2048];
        while udp_rx.recv(&mut buf).await.is_ok() {
            uc.fetch_add(1, Ordering::Relaxed);
        }
    });
    let udp_tx = UdpSocket::bind("127.0.0.1:0").await.expect("udp");
    udp_tx.connect(udp_addr).await.expect("connect");
    // TCP: length-prefixed frames, counted by the reader.
    let l = TcpListener::bind("127.0.0.1:0").await.expect("tcp");
    let tcp_addr = l.local_addr().expect("addr");
    let tcp_count = Arc::new(AtomicU64::new(0));
    let tc = tcp_count.clone();
    tokio::spawn(async move {
        let Ok((s, _)) = l.accept().await else { return };
        let mut r = tokio::io::BufReader::with_capacity(1 << 16, s);
        let mut frame = [0u8; 66];
        while r.read_exact(&mut frame).await.is_ok() {
            tc.fetch_add(1, Ordering::Relaxed);
        }
    });
    let tcp = TcpStream::connect(tcp_addr).await.expect("tcp");
    let mut tcp = tokio::io::BufWriter::with_capacity(1 << 16, tcp);

    let slice = Duration::from_secs(args.duration) / (args.rounds * 3);
    let mut sent = [0u64; 3];
    let mut got = [0u64; 3];
    let mut spent = [Duration::ZERO; 3];
    let to = server.local_key();
    for _ in 0..args.rounds {
        // mesh-link: reliable sends, up to 4096 unacknowledged.
        let before = received.load(Ordering::Relaxed);
        let (n, took) = mesh_oneway(&client, to, slice).await;
        sent[0] += n;
        spent[0] += took;
        // Let the handlers count the last ones.
        tokio::time::sleep(Duration::from_millis(50)).await;
        got[0] += received.load(Ordering::Relaxed) - before;

        // Raw UDP: one send per datagram, as fast as the socket takes them.
        let before = udp_count.load(Ordering::Relaxed);
        let t = Instant::now();
        while t.elapsed() < slice {
            for _ in 0..64 {
                if udp_tx.send(&PAYLOAD).await.is_ok() {
                    sent[1] += 1;
                }
            }
        }
        spent[1] += t.elapsed();
        tokio::time::sleep(Duration::from_millis(50)).await;
        got[1] += udp_count.load(Ordering::Relaxed) - before;

        // TCP frames.
        let before = tcp_count.load(Ordering::Relaxed);
        let t = Instant::now();
        let mut frame = [7u8; 66];
        frame[..2].copy_from_slice(&64u16.to_be_bytes());
        while t.elapsed() < slice {
            for _ in 0..64 {
                tcp.write_all(&frame).await.expect("tcp write");
                sent[2] += 1;
            }
        }
        tcp.flush().await.expect("flush");
        spent[2] += t.elapsed();
        tokio::time::sleep(Duration::from_millis(50)).await;
        got[2] += tcp_count.load(Ordering::Relaxed) - before;
    }
    let names = [
        "mesh-link reliable one-way",
        "raw UDP datagrams",
        "TCP length-prefixed frames",
    ];
    let mut rows: Vec<Row> = (0..3)
        .map(|i| {
            let mut r = Row::new("oneway", names[i]);
            r.per_sec = Some(got[i] as f64 / spent[i].as_secs_f64());
            r.lost = Some(sent[i].saturating_sub(got[i]));
            r.samples = got[i] as usize;
            r
        })
        .collect();
    ratios(&mut rows);
    server.stop().await;
    rows
}

/// `bulk`: 1 MiB and 16 MiB messages, megabytes per second.
async fn bulk(args: &Args) -> Vec<Row> {
    let mut rows = Vec::new();
    for size in [1usize << 20, 16 << 20] {
        let label = format!("bulk {} MiB", size >> 20);
        let (server, client) = mesh_pair().await;
        let data = Bytes::from(vec![5u8; size]);
        // TCP sink.
        let l = TcpListener::bind("127.0.0.1:0").await.expect("tcp");
        let tcp_addr = l.local_addr().expect("addr");
        let tcp_got = Arc::new(AtomicU64::new(0));
        let tg = tcp_got.clone();
        tokio::spawn(async move {
            let Ok((mut s, _)) = l.accept().await else {
                return;
            };
            let mut buf = vec![0u8; 1 << 20];
            while let Ok(n) = s.read(&mut buf).await {
                if n == 0 {
                    return;
                }
                tg.fetch_add(n as u64, Ordering::Relaxed);
            }
        });
        let mut tcp = TcpStream::connect(tcp_addr).await.expect("tcp");
        // TCP messages: each length-prefixed, received whole into a buffer of its own (what a
        // framed protocol such as tokio-util's `LengthDelimitedCodec` hands its user).
        let l = TcpListener::bind("127.0.0.1:0").await.expect("tcp");
        let framed_addr = l.local_addr().expect("addr");
        let framed_got = Arc::new(AtomicU64::new(0));
        let fg = framed_got.clone();
        tokio::spawn(async move {
            let Ok((mut s, _)) = l.accept().await else {
                return;
            };
            while let Ok(len) = s.read_u32().await {
                let len = len as usize;
                let mut message = BytesMut::with_capacity(len);
                while message.len() < len {
                    match (&mut s)
                        .take((len - message.len()) as u64)
                        .read_buf(&mut message)
                        .await
                    {
                        Ok(0) | Err(_) => return,
                        Ok(_) => {}
                    }
                }
                let message = message.freeze();
                fg.fetch_add(message.len() as u64, Ordering::Relaxed);
            }
        });
        let mut framed = TcpStream::connect(framed_addr).await.expect("tcp");
        let quic_got = Arc::new(AtomicU64::new(0));
        let (quic, cc) = quic_server(quic_got.clone()).await;
        let conn = quic_client(quic, cc).await;
        let slice = Duration::from_secs(args.duration) / (args.rounds * 4 * 2);
        let mut bytes = [0u64; 4];
        let mut spent = [Duration::ZERO; 4];
        let to = server.local_key();
        for _ in 0..args.rounds {
            // mesh-link: up to 4 messages in flight, each resolved on acknowledgement.
            let t = Instant::now();
            let mut inflight = FuturesUnordered::new();
            loop {
                while inflight.len() < 4 && t.elapsed() < slice {
                    let c = client.clone();
                    let d = data.clone();
                    inflight.push(async move {
                        c.send_bytes(SINK, [to], d, SendOptions::default())
                            .await
                            .map(|r| r.is_ok())
                            .unwrap_or(false)
                    });
                }
                match inflight.next().await {
                    Some(true) => bytes[0] += size as u64,
                    Some(false) => {}
                    None => break,
                }
            }
            spent[0] += t.elapsed();
            // TCP: the same bytes down one stream (counted at the reader).
            let before = tcp_got.load(Ordering::Relaxed);
            let t = Instant::now();
            let mut written = 0u64;
            while t.elapsed() < slice {
                tcp.write_all(&data).await.expect("tcp write");
                written += size as u64;
            }
            while tcp_got.load(Ordering::Relaxed) - before < written {
                tokio::time::sleep(Duration::from_micros(200)).await;
            }
            spent[1] += t.elapsed();
            bytes[1] += written;
            // TCP messages: a length, then the message.
            let before = framed_got.load(Ordering::Relaxed);
            let t = Instant::now();
            let mut written = 0u64;
            while t.elapsed() < slice {
                framed.write_u32(size as u32).await.expect("tcp write");
                framed.write_all(&data).await.expect("tcp write");
                written += size as u64;
            }
            while framed_got.load(Ordering::Relaxed) - before < written {
                tokio::time::sleep(Duration::from_micros(200)).await;
            }
            spent[2] += t.elapsed();
            bytes[2] += written;
            // QUIC: one unidirectional stream per message, 4 in flight.
            let before = quic_got.load(Ordering::Relaxed);
            let t = Instant::now();
            let mut written = 0u64;
            while t.elapsed() < slice {
                let sends = (0..4).map(|_| {
                    let conn = conn.clone();
                    let d = data.clone();
                    async move {
                        let mut s = conn.open_uni().await.expect("quic stream");
                        s.write_all(&d).await.expect("quic write");
                        s.finish().expect("quic finish");
                        let _ = s.stopped().await;
                    }
                });
                join_all(sends).await;
                written += 4 * size as u64;
            }
            while quic_got.load(Ordering::Relaxed) - before < written {
                tokio::time::sleep(Duration::from_micros(200)).await;
            }
            spent[3] += t.elapsed();
            bytes[3] += written;
        }
        let names = [
            "mesh-link reliable messages",
            "TCP stream, one reused buffer",
            "TCP messages, each its own buffer",
            "QUIC streams (quinn)",
        ];
        let mut set: Vec<Row> = (0..4)
            .map(|i| {
                let mut r = Row::new(&label, names[i]);
                r.mb_per_sec = Some(bytes[i] as f64 / 1e6 / spent[i].as_secs_f64());
                r.samples = (bytes[i] / size as u64) as usize;
                r
            })
            .collect();
        ratios(&mut set);
        rows.extend(set);
        server.stop().await;
    }
    rows
}

/// `fanout`: one message to 10 and 50 nodes, until every one acknowledged.
async fn fanout(args: &Args) -> Vec<Row> {
    let mut rows = Vec::new();
    for n in [10usize, 50] {
        let scenario = format!("fanout {n}");
        let registry = Registry::memory();
        let sender = mesh_node(&registry).await;
        let mut nodes = Vec::new();
        for _ in 0..n {
            nodes.push(mesh_node(&registry).await);
        }
        let _ = tokio::time::timeout(
            Duration::from_secs(30),
            sender.wait_for(|s| s.nodes().len() == n + 1),
        )
        .await;
        let targets: Vec<NodeKey> = nodes.iter().map(MeshNode::local_key).collect();
        let udp = UdpSocket::bind("127.0.0.1:0").await.expect("udp");
        let mut echoes = Vec::new();
        for _ in 0..n {
            echoes.push(udp_echo().await);
        }
        let tcp_addr = tcp_echo().await;
        let mut conns = Vec::new();
        for _ in 0..n {
            let s = TcpStream::connect(tcp_addr).await.expect("tcp");
            s.set_nodelay(true).expect("nodelay");
            conns.push(s);
        }
        let slice = Duration::from_secs(args.duration) / (args.rounds * 4 * 2);
        let mut lat: Vec<Vec<Duration>> = vec![Vec::new(); 4];
        let mut spent = [Duration::ZERO; 4];
        for _ in 0..args.rounds {
            for (i, limit) in [(0, 0usize), (1, 7)] {
                let t = Instant::now();
                while t.elapsed() < slice {
                    let s = Instant::now();
                    let r = sender
                        .send_bytes(
                            SINK,
                            &targets,
                            Bytes::from_static(&PAYLOAD),
                            SendOptions::default().relay_limit(limit),
                        )
                        .await
                        .expect("send");
                    assert!(r.is_ok(), "fan-out failed: {r:?}");
                    lat[i].push(s.elapsed());
                }
                spent[i] += t.elapsed();
            }
            let t = Instant::now();
            let mut buf = [0u8; 128];
            while t.elapsed() < slice {
                let s = Instant::now();
                for e in &echoes {
                    udp.send_to(&PAYLOAD, e).await.expect("udp");
                }
                for _ in 0..n {
                    if tokio::time::timeout(Duration::from_secs(1), udp.recv_from(&mut buf))
                        .await
                        .is_err()
                    {
                        break;
                    }
                }
                lat[2].push(s.elapsed());
            }
            spent[2] += t.elapsed();
            let t = Instant::now();
            let mut buf = [0u8; 64];
            while t.elapsed() < slice {
                let s = Instant::now();
                for c in &mut conns {
                    c.write_all(&PAYLOAD).await.expect("tcp");
                }
                for c in &mut conns {
                    c.read_exact(&mut buf).await.expect("tcp");
                }
                lat[3].push(s.elapsed());
            }
            spent[3] += t.elapsed();
        }
        let names = [
            "mesh-link direct",
            "mesh-link relay tree of 7",
            "raw UDP, each answered",
            "TCP connections, each answered",
        ];
        let mut set: Vec<Row> = names
            .iter()
            .zip(lat)
            .zip(spent)
            .map(|((nm, l), s)| Row::new(&scenario, nm).latencies(l, s))
            .collect();
        ratios(&mut set);
        rows.extend(set);
        sender.stop().await;
        for n in nodes {
            n.stop().await;
        }
    }
    rows
}

/// A relay between two transports that drops each datagram with probability `loss`.
async fn lossy_relay(
    a: SocketAddr,
    b: SocketAddr,
    loss: f64,
    seed: u64,
) -> (SocketAddr, SocketAddr) {
    let for_a = Arc::new(UdpSocket::bind("127.0.0.1:0").await.expect("udp"));
    let for_b = Arc::new(UdpSocket::bind("127.0.0.1:0").await.expect("udp"));
    let (fa, fb) = (
        for_a.local_addr().expect("addr"),
        for_b.local_addr().expect("addr"),
    );
    for (from, to, dest, seed) in [
        (for_a.clone(), for_b.clone(), b, seed),
        (for_b, for_a, a, seed ^ 0xABCD),
    ] {
        tokio::spawn(async move {
            let mut rng = seed | 1;
            let mut buf = vec![0u8; 65_536];
            while let Ok((n, _)) = from.recv_from(&mut buf).await {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                if (rng % 1_000_000) as f64 >= loss * 1e6 {
                    let _ = to.send_to(&buf[..n], dest).await;
                }
            }
        });
    }
    (fa, fb)
}

/// `lossy`: the transport through a lossy relay, adaptive RTO vs the original's fixed 200 ms.
async fn lossy(args: &Args) -> Vec<Row> {
    let mut rows = Vec::new();
    for loss in [0.01, 0.05, 0.20] {
        let mut pairs = Vec::new();
        for fixed in [false, true] {
            let mut ec = EndpointConfig::default();
            if fixed {
                ec.fixed_rto(Some(Duration::from_millis(200)));
            }
            ec.peer_timeout(Duration::from_secs(30));
            let mut tc = TransportConfig::default();
            tc.endpoint = ec;
            let a = Arc::new(
                Transport::bind("127.0.0.1:0".parse().expect("addr"), tc.clone())
                    .await
                    .expect("bind"),
            );
            let b = Arc::new(
                Transport::bind("127.0.0.1:0".parse().expect("addr"), tc)
                    .await
                    .expect("bind"),
            );
            // a reaches b at `to_b`; b sees a as `seen_a` and answers there.
            let (to_b, _) = lossy_relay(a.local_addr(), b.local_addr(), loss, 42).await;
            let echo = b.clone();
            tokio::spawn(async move {
                while let Some(m) = echo.recv().await {
                    if m.data.len() == 64 && m.data[0] == 1 {
                        let _ = echo.queue(m.from, m.data, Delivery::Unordered.into()).await;
                    }
                }
            });
            pairs.push((a, to_b));
        }
        let slice = Duration::from_secs(args.duration) / (args.rounds * 2 * 2 * 3);
        let mut lat: Vec<Vec<Duration>> = vec![Vec::new(); 2];
        let mut spent_rtt = [Duration::ZERO; 2];
        let mut delivered = [0u64; 2];
        let mut spent_ow = [Duration::ZERO; 2];
        for _ in 0..args.rounds {
            for (i, (a, to_b)) in pairs.iter().enumerate() {
                // rtt: a reliable request and its reliable echo.
                let t = Instant::now();
                while t.elapsed() < slice {
                    let s = Instant::now();
                    let mut req = vec![0u8; 64];
                    req[0] = 1;
                    let _ = a
                        .queue(*to_b, Bytes::from(req), Delivery::Unordered.into())
                        .await;
                    if tokio::time::timeout(Duration::from_secs(30), a.recv())
                        .await
                        .is_err()
                    {
                        break;
                    }
                    lat[i].push(s.elapsed());
                }
                spent_rtt[i] += t.elapsed();
                // oneway goodput: 1000 messages in flight, acknowledged ones counted.
                let t = Instant::now();
                let mut inflight = FuturesUnordered::new();
                loop {
                    while inflight.len() < 1000 && t.elapsed() < slice {
                        let a = a.clone();
                        let to = *to_b;
                        inflight.push(async move {
                            a.send(to, Bytes::from_static(&[2u8; 64])).await.is_ok()
                        });
                    }
                    match inflight.next().await {
                        Some(true) => delivered[i] += 1,
                        Some(false) => {}
                        None => break,
                    }
                }
                spent_ow[i] += t.elapsed();
            }
        }
        let pct = (loss * 100.0).round();
        let names = [
            "mesh-link adaptive RTO",
            "mesh-link fixed 200 ms RTO (original)",
        ];
        let mut r_rtt: Vec<Row> = (0..2)
            .map(|i| {
                Row::new(&format!("lossy {pct}% rtt"), names[i])
                    .latencies(lat[i].clone(), spent_rtt[i])
            })
            .collect();
        ratios(&mut r_rtt);
        let mut r_ow: Vec<Row> = (0..2)
            .map(|i| {
                let mut r = Row::new(&format!("lossy {pct}% oneway"), names[i]);
                r.per_sec = Some(delivered[i] as f64 / spent_ow[i].as_secs_f64());
                r.samples = delivered[i] as usize;
                r
            })
            .collect();
        ratios(&mut r_ow);
        rows.extend(r_rtt);
        rows.extend(r_ow);
    }
    rows
}

/// Runs `harness.js` of `benches/node-original` with `args`.
fn node_harness(args: &[String]) -> std::process::Child {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("node-original");
    std::process::Command::new("node")
        .arg(dir.join("harness.js"))
        .args(args)
        .current_dir(&dir)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit())
        .spawn()
        .expect("node runs")
}

fn read_json_line(child: &mut std::process::Child) -> serde_json::Value {
    use std::io::BufRead;
    let mut line = String::new();
    let out = child.stdout.as_mut().expect("piped");
    std::io::BufReader::new(out)
        .read_line(&mut line)
        .expect("a line");
    serde_json::from_str(&line).unwrap_or(serde_json::Value::Null)
}

/// Whether `node` and `npm` exist, installing the harness's dependencies if needed.
fn node_ready() -> bool {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("node-original");
    let ok = |cmd: &str| {
        std::process::Command::new(cmd)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if !ok("node") || !ok("npm") {
        eprintln!("node-compare: `node` and `npm` are needed; skipped");
        return false;
    }
    if !dir.join("node_modules/mesh-link").exists() {
        eprintln!(
            "node-compare: npm install (mesh-link@0.13.6) in {}",
            dir.display()
        );
        let s = std::process::Command::new("npm")
            .args(["install", "--no-audit", "--no-fund"])
            .current_dir(&dir)
            .status();
        if !s.is_ok_and(|s| s.success()) {
            eprintln!("node-compare: npm install failed; skipped");
            return false;
        }
    }
    true
}

/// `node-compare`: the same `rtt`, `oneway` and `bulk` against two Node mesh-link processes and
/// two Rust nodes, all on one Redis, in one run.
async fn node_compare(args: &Args) -> Vec<Row> {
    use mesh_discovery::testing::{free_port, RedisServer};
    if !node_ready() {
        return Vec::new();
    }
    let redis = RedisServer::start();
    let redis_port = redis.url().rsplit(':').next().unwrap_or("6379").to_owned();
    let secs = (args.duration / 6).max(2);
    let mut rows = Vec::new();
    let registry = Registry::redis(&redis.url()).expect("redis url");
    let server = mesh_node(&registry).await;
    let client = mesh_node(&registry).await;
    let received = Arc::new(AtomicU64::new(0));
    let r = received.clone();
    server.remove_handler(SINK);
    server
        .on_raw(SINK, move |b: Bytes, _| {
            r.fetch_add(b.len() as u64, Ordering::Relaxed);
            async { Ok::<_, HandlerError>(None) }
        })
        .expect("sink");
    let to = server.local_key();
    for scenario in ["rtt", "oneway", "bulk"] {
        // The original: a server process and a client process.
        let sport = free_port();
        let mut srv = node_harness(&[
            "server".into(),
            redis_port.clone(),
            "nodecmp".into(),
            sport.to_string(),
        ]);
        let ready = read_json_line(&mut srv);
        let sport = ready["port"]
            .as_u64()
            .unwrap_or(u64::from(sport))
            .to_string();
        let mut cli = node_harness(&[
            "client".into(),
            redis_port.clone(),
            "nodecmp".into(),
            free_port().to_string(),
            sport,
            scenario.into(),
            secs.to_string(),
        ]);
        let result = tokio::task::spawn_blocking(move || {
            let r = read_json_line(&mut cli);
            let _ = cli.wait();
            r
        })
        .await
        .expect("client");
        // Ask the server for its counts (SIGTERM makes it print them).
        tokio::time::sleep(Duration::from_millis(500)).await;
        let pid = nix::unistd::Pid::from_raw(srv.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let counts = tokio::task::spawn_blocking(move || {
            let c = read_json_line(&mut srv);
            let _ = srv.wait();
            c
        })
        .await
        .expect("server");
        let node_secs = result["seconds"].as_f64().unwrap_or(secs as f64);
        let mut node_row = Row::new(&format!("vs node {scenario}"), "Node mesh-link 0.13.6");
        // mesh-link, the same scenario for the same time.
        let mut rust_row = Row::new(&format!("vs node {scenario}"), "mesh-link (Rust)");
        let slice = Duration::from_secs(secs);
        match scenario {
            "rtt" => {
                let lat: Vec<Duration> = result["latencies_us"]
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .filter_map(|v| v.as_f64())
                            .map(|us| Duration::from_secs_f64(us / 1e6))
                            .collect()
                    })
                    .unwrap_or_default();
                node_row = node_row.latencies(lat, Duration::from_secs_f64(node_secs));
                let mut c: Vec<Box<dyn Client>> = vec![Box::new(MeshClient {
                    node: client.clone(),
                    to,
                })];
                let t = Instant::now();
                let l = run_clients(&mut c, slice).await;
                rust_row = rust_row.latencies(l, t.elapsed());
            }
            "oneway" => {
                let got = counts["oneway"].as_u64().unwrap_or(0);
                node_row.per_sec = Some(got as f64 / node_secs);
                node_row.lost = Some(result["ops"].as_u64().unwrap_or(0).saturating_sub(got));
                node_row.samples = got as usize;
                let before = received.load(Ordering::Relaxed);
                let (sent, spent) = mesh_oneway(&client, to, slice).await;
                tokio::time::sleep(Duration::from_millis(50)).await;
                let got = (received.load(Ordering::Relaxed) - before) / 64;
                rust_row.per_sec = Some(got as f64 / spent.as_secs_f64());
                rust_row.lost = Some(sent.saturating_sub(got));
                rust_row.samples = got as usize;
            }
            _ => {
                let bytes = counts["bulkBytes"].as_u64().unwrap_or(0);
                node_row.mb_per_sec = Some(bytes as f64 / 1e6 / node_secs);
                node_row.samples = result["ops"].as_u64().unwrap_or(0) as usize;
                let data = Bytes::from(vec![5u8; 1 << 20]);
                let t = Instant::now();
                let mut n = 0usize;
                while t.elapsed() < slice {
                    let r = client
                        .send_bytes(SINK, [to], data.clone(), SendOptions::default())
                        .await
                        .expect("send");
                    assert!(r.is_ok());
                    n += 1;
                }
                rust_row.mb_per_sec = Some((n << 20) as f64 / 1e6 / t.elapsed().as_secs_f64());
                rust_row.samples = n;
            }
        }
        let mut set = vec![rust_row, node_row];
        ratios(&mut set);
        rows.extend(set);
    }
    client.stop().await;
    server.stop().await;
    rows
}

fn main() {
    let args = Args::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let scenarios: Vec<Scenario> = match args.scenario {
        Scenario::All => vec![
            Scenario::Rtt,
            Scenario::RttConcurrent,
            Scenario::Oneway,
            Scenario::Bulk,
            Scenario::Fanout,
            Scenario::Lossy,
            Scenario::NodeCompare,
        ],
        s => vec![s],
    };
    let mut everything = Vec::new();
    for s in scenarios {
        let started = Instant::now();
        // Every contender runs on a task of the runtime, as a service's own code does: the
        // thread that calls `block_on` is outside the worker pool, and every wake-up of it
        // would be a thread wake-up that no contender's design chose.
        let task_args = args.clone();
        let rows = rt
            .block_on(rt.spawn(async move {
                let args = &task_args;
                match s {
                    Scenario::Rtt => rtt(args, 1).await,
                    Scenario::RttConcurrent => rtt(args, 100).await,
                    Scenario::Oneway => oneway(args).await,
                    Scenario::Bulk => bulk(args).await,
                    Scenario::Fanout => fanout(args).await,
                    Scenario::Lossy => lossy(args).await,
                    Scenario::NodeCompare => node_compare(args).await,
                    Scenario::All => Vec::new(),
                }
            }))
            .expect("scenario task");
        if !args.json {
            eprintln!("{s:?} took {:.1} s", started.elapsed().as_secs_f64());
        }
        print(&rows, args.json);
        everything.extend(rows);
    }
    if let Some(path) = &args.plot {
        match plot(&everything, path) {
            Ok(()) => eprintln!("plot written to {}", path.display()),
            Err(e) => eprintln!("plot not written to {}: {e}", path.display()),
        }
    }
    rt.shutdown_timeout(Duration::from_secs(1));
}
