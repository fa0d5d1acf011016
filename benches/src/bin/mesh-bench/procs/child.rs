//! One side of a contender, as a process of its own (`mesh-bench child ...`): a server that
//! serves until its stdin closes, or a client that runs what its stdin asks and prints the
//! result. Both on tokio's default runtime (as a user's `#[tokio::main]` would have),
//! optionally pinned to one CPU first.
//!
//! Lines on stdin → stdout:
//! - server: prints `READY <addr>`; `count` → `COUNT <messages> <bytes>` received so far.
//! - client: prints `READY`; `rtt <ms>` → `LAT <ns> <ns> ...` (back-to-back round trips);
//!   `oneway <ms> [outbox]` → `SENT <messages> <elapsed ns>` (64-byte messages, acknowledged
//!   or fire-and-forget by contender; mesh-link's through an `Outbox` with `outbox`); `bulk <ms> <bytes>` → `SENT <messages> <elapsed ns>`.

use std::io::{BufRead, Write};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::stream::{FuturesUnordered, StreamExt};
use mesh_link::{HandlerError, MeshNode, NodeKey, Registry, SendOptions};

use crate::scenarios::oneway::{mesh_oneway, mesh_outbox_oneway};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::contenders::{
    http_client, http_echo_on, quic_client, quic_client_config, quic_serve, quic_server_config,
    Client, HttpClient, MeshClient, QuicClient, TcpClient, UdpClient, ECHO, PAYLOAD, SINK,
};

/// What a child runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Contender {
    /// mesh-link request/response and reliable one-way messages.
    Mesh,
    /// Blocking `std::net::UdpSocket` ping-pong: the floor.
    UdpStd,
    /// tokio UDP ping-pong, and unacknowledged datagrams.
    UdpTokio,
    /// TCP (nodelay) ping-pong, length-prefixed frames, and a byte stream.
    Tcp,
    /// HTTP/1.1 keep-alive (hyper).
    Http,
    /// QUIC bidirectional streams (quinn).
    Quic,
}

/// `mesh-bench child ...`: the arguments of one side.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct ChildArgs {
    /// `server` or `client`.
    pub(crate) role: String,
    /// What to run.
    #[arg(value_enum)]
    pub(crate) contender: Contender,
    /// The server's address (clients).
    #[arg(long)]
    pub(crate) to: Option<SocketAddr>,
    /// The address a server binds (port 0).
    #[arg(long, default_value = "127.0.0.1")]
    pub(crate) bind: std::net::IpAddr,
    /// Pin this process to one CPU (before any thread starts).
    #[arg(long)]
    pub(crate) cpu: Option<usize>,
    /// mesh-link's base datagram size (the transport's `mtu`; it probes up from it).
    #[arg(long)]
    pub(crate) mtu: Option<usize>,
    /// mesh-link's path-MTU probing ceiling (the transport's `max_mtu`; `--mtu`'s value turns
    /// probing off).
    #[arg(long)]
    pub(crate) max_mtu: Option<usize>,
    /// mesh-link as on a network, on loopback: datagrams of `--mtu` bytes (1200 if not
    /// given), no larger (no path-MTU probing), with checksums, instead of loopback's large
    /// ones.
    #[arg(long)]
    pub(crate) as_network: bool,
    /// The QUIC server's certificate (hex DER), for a QUIC client to trust.
    #[arg(long)]
    pub(crate) cert: Option<String>,
    /// A `current_thread` runtime instead of the default multi-thread one.
    #[arg(long)]
    pub(crate) current_thread: bool,
    /// The Redis the idle roles' nodes register with.
    #[arg(long)]
    pub(crate) redis: Option<String>,
    /// The mesh's name (idle roles).
    #[arg(long, default_value = "idle")]
    pub(crate) prefix: String,
    /// Nodes to run (`idle-peers`) or to wait for (`idle-node`).
    #[arg(long, default_value_t = 0)]
    pub(crate) nodes: usize,
}

fn pin(cpu: usize) {
    use nix::sched::{sched_setaffinity, CpuSet};
    let mut set = CpuSet::new();
    set.set(cpu).expect("a CPU index");
    sched_setaffinity(nix::unistd::Pid::from_raw(0), &set).expect("pinned");
}

pub(crate) fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// Runs a child until its stdin closes.
pub(crate) fn run(args: ChildArgs) {
    if let Some(cpu) = args.cpu {
        pin(cpu);
    }
    // The default runtime: as many workers as CPUs this process may use.
    let mut builder = if args.current_thread {
        tokio::runtime::Builder::new_current_thread()
    } else {
        tokio::runtime::Builder::new_multi_thread()
    };
    let rt = builder.enable_all().build().expect("runtime");
    match args.role.as_str() {
        "server" => server(&rt, &args),
        "client" => client(&rt, &args),
        r if r.starts_with("idle") => super::idle::child(&rt, &args),
        other => panic!("unknown role {other:?}"),
    }
}

pub(crate) fn commands() -> impl Iterator<Item = String> {
    std::io::stdin().lock().lines().map_while(Result::ok)
}

// ----- servers --------------------------------------------------------------------------

fn server(rt: &tokio::runtime::Runtime, args: &ChildArgs) {
    let count = Arc::new((AtomicU64::new(0), AtomicU64::new(0)));
    let mut cert = String::new();
    let addr = rt.block_on(async {
        match args.contender {
            Contender::Mesh => mesh_server(args, count.clone()).await,
            Contender::UdpStd => std_udp_server(args.bind),
            Contender::UdpTokio => udp_echo_counting(args.bind, count.clone()).await,
            Contender::Tcp => tcp_server(args.bind, count.clone()).await,
            Contender::Http => http_echo_on(args.bind).await,
            Contender::Quic => {
                let (sc, der) = quic_server_config();
                cert = hex::encode(der);
                quic_serve(sc, SocketAddr::new(args.bind, 0), Arc::default())
            }
        }
    });
    say(format!("READY {addr} {cert}").trim_end());
    // Commands on a thread of their own, while this one drives the runtime (a
    // `current_thread` runtime runs only inside `block_on`).
    let (done_tx, done_rx) = tokio::sync::oneshot::channel::<()>();
    std::thread::spawn(move || {
        for c in commands() {
            if c.trim() == "count" {
                let (m, b) = (&count.0, &count.1);
                say(&format!(
                    "COUNT {} {}",
                    m.load(Ordering::Relaxed),
                    b.load(Ordering::Relaxed)
                ));
            }
        }
        let _ = done_tx.send(());
    });
    let _ = rt.block_on(done_rx);
}

type Counts = Arc<(AtomicU64, AtomicU64)>;

/// A mesh-link node as both sides of the bench run it: in-memory registry, bound to
/// `--bind`, large messages, and `--mtu`/`--as-network` applied.
fn mesh_builder(args: &ChildArgs) -> mesh_link::Builder {
    let (mtu, max_mtu, as_network) = (args.mtu, args.max_mtu, args.as_network);
    MeshNode::builder()
        .registry(Registry::memory())
        .bind(&SocketAddr::new(args.bind, 0).to_string())
        .config(move |c| {
            c.max_message_size = 32 << 20;
            if let Some(m) = mtu {
                c.mtu = m;
            }
            if let Some(m) = max_mtu {
                c.max_mtu = Some(m);
            }
            if as_network {
                c.loopback_mtu = None;
                c.max_mtu = Some(c.mtu);
                c.loopback_checksum = true;
            }
        })
}

async fn mesh_server(args: &ChildArgs, count: Counts) -> SocketAddr {
    let node = mesh_builder(args)
        .on_raw(
            ECHO,
            |b: Bytes, _| async move { Ok::<_, HandlerError>(Some(b)) },
        )
        .on_raw(SINK, move |b: Bytes, _| {
            count.0.fetch_add(1, Ordering::Relaxed);
            count.1.fetch_add(b.len() as u64, Ordering::Relaxed);
            async { Ok::<_, HandlerError>(None) }
        })
        .start()
        .await
        .expect("mesh node");
    let addr = node.local_key().socket_addr();
    // Held for the process's life.
    std::mem::forget(node);
    addr
}

fn std_udp_server(bind: std::net::IpAddr) -> SocketAddr {
    let s = std::net::UdpSocket::bind((bind, 0)).expect("udp");
    let addr = s.local_addr().expect("addr");
    std::thread::spawn(move || {
        let mut buf = [0u8; 2048];
        while let Ok((n, from)) = s.recv_from(&mut buf) {
            let _ = s.send_to(&buf[..n], from);
        }
    });
    addr
}

/// A tokio UDP socket that counts what it gets and echoes it, but for `oneway`'s datagrams
/// (which start with `S`).
async fn udp_echo_counting(bind: std::net::IpAddr, count: Counts) -> SocketAddr {
    let s = tokio::net::UdpSocket::bind((bind, 0)).await.expect("udp");
    let addr = s.local_addr().expect("addr");
    tokio::spawn(async move {
        let mut buf = [0u8; 2048];
        while let Ok((n, from)) = s.recv_from(&mut buf).await {
            count.0.fetch_add(1, Ordering::Relaxed);
            count.1.fetch_add(n as u64, Ordering::Relaxed);
            if buf[..n].first() != Some(&b'S') {
                let _ = s.send_to(&buf[..n], from).await;
            }
        }
    });
    addr
}

/// TCP: the first byte of a connection says what it is (`E` echo of 64-byte frames, `S` a
/// stream counted and dropped).
async fn tcp_server(bind: std::net::IpAddr, count: Counts) -> SocketAddr {
    let l = TcpListener::bind((bind, 0)).await.expect("tcp");
    let addr = l.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let _ = s.set_nodelay(true);
            let count = count.clone();
            tokio::spawn(async move {
                let Ok(kind) = s.read_u8().await else { return };
                if kind == b'E' {
                    let mut buf = [0u8; 64];
                    while s.read_exact(&mut buf).await.is_ok() {
                        if s.write_all(&buf).await.is_err() {
                            return;
                        }
                    }
                } else {
                    let mut buf = vec![0u8; 1 << 20];
                    while let Ok(n) = s.read(&mut buf).await {
                        if n == 0 {
                            return;
                        }
                        count.1.fetch_add(n as u64, Ordering::Relaxed);
                    }
                }
            });
        }
    });
    addr
}

// ----- clients --------------------------------------------------------------------------

fn client(rt: &tokio::runtime::Runtime, args: &ChildArgs) {
    let to = args.to.expect("--to");
    if args.contender == Contender::UdpStd {
        return std_udp_client(args, to);
    }
    let mesh = rt.block_on(async {
        (args.contender == Contender::Mesh).then_some(())?;
        Some(mesh_builder(args).start().await.expect("mesh node"))
    });
    let mut rtt: Option<Box<dyn Client>> = None;
    let mut tcp_stream: Option<TcpStream> = None;
    let udp = rt.block_on(async {
        let s = tokio::net::UdpSocket::bind((args.bind, 0)).await.ok()?;
        s.connect(to).await.ok()?;
        Some(Arc::new(s))
    });
    say("READY");
    for c in commands() {
        let words: Vec<&str> = c.split_whitespace().collect();
        let ms = |i: usize| {
            Duration::from_millis(words.get(i).and_then(|w| w.parse().ok()).unwrap_or(1000))
        };
        match words.first().copied() {
            Some("rtt") => {
                let slice = ms(1);
                if rtt.is_none() {
                    let cert = args.cert.as_deref();
                    rtt = Some(rt.block_on(rtt_client(args.contender, mesh.as_ref(), to, cert)));
                }
                // The loop runs in a task, on a worker, as a service's own code does: the
                // thread in `block_on` is outside the worker pool, and every answer would
                // otherwise be a hand-off to it.
                let mut c = rtt.take().expect("a client");
                let (c, lat) = rt
                    .block_on(rt.spawn(async move {
                        let deadline = Instant::now() + slice;
                        let mut l = Vec::new();
                        while Instant::now() < deadline {
                            let t = Instant::now();
                            c.call().await;
                            l.push(t.elapsed());
                        }
                        (c, l)
                    }))
                    .expect("the rtt task");
                rtt = Some(c);
                say(&lat_line(&lat));
            }
            Some("oneway") => {
                let slice = ms(1);
                let (m, u) = (mesh.clone(), udp.clone());
                let contender = args.contender;
                let outbox = words.get(2) == Some(&"outbox");
                let (sent, took) = rt
                    .block_on(rt.spawn(async move {
                        match contender {
                            Contender::Mesh if outbox => {
                                let m = m.as_ref().expect("mesh");
                                mesh_outbox_oneway(m, NodeKey::from(to), slice).await
                            }
                            Contender::Mesh => {
                                mesh_oneway(m.as_ref().expect("mesh"), NodeKey::from(to), slice)
                                    .await
                            }
                            Contender::UdpTokio => {
                                udp_oneway(u.as_deref().expect("udp"), slice).await
                            }
                            _ => (0, slice),
                        }
                    }))
                    .expect("the oneway task");
                say(&format!("SENT {sent} {}", took.as_nanos()));
            }
            Some("bulk") => {
                let slice = ms(1);
                let size: usize = words.get(2).and_then(|w| w.parse().ok()).unwrap_or(1 << 20);
                let m = mesh.clone();
                let contender = args.contender;
                let mut stream = tcp_stream.take();
                let ((sent, took), stream) = rt
                    .block_on(rt.spawn(async move {
                        let r = match contender {
                            Contender::Mesh => {
                                mesh_bulk(m.as_ref().expect("mesh"), NodeKey::from(to), size, slice)
                                    .await
                            }
                            Contender::Tcp => {
                                if stream.is_none() {
                                    let mut s = TcpStream::connect(to).await.expect("tcp");
                                    s.write_u8(b'S').await.expect("tcp");
                                    stream = Some(s);
                                }
                                tcp_bulk(stream.as_mut().expect("tcp"), size, slice).await
                            }
                            _ => (0, slice),
                        };
                        (r, stream)
                    }))
                    .expect("the bulk task");
                tcp_stream = stream;
                say(&format!("SENT {sent} {}", took.as_nanos()));
            }
            _ => {}
        }
    }
    if let Some(m) = mesh {
        let _ = rt.block_on(m.stop());
    }
}

fn lat_line(lat: &[Duration]) -> String {
    let mut s = String::with_capacity(lat.len() * 6 + 4);
    s.push_str("LAT");
    for d in lat {
        s.push(' ');
        s.push_str(&d.as_nanos().to_string());
    }
    s
}

async fn rtt_client(
    contender: Contender,
    mesh: Option<&MeshNode>,
    to: SocketAddr,
    cert: Option<&str>,
) -> Box<dyn Client> {
    match contender {
        Contender::Mesh => Box::new(MeshClient {
            node: mesh.expect("mesh").clone(),
            to: NodeKey::from(to),
        }),
        Contender::UdpTokio => {
            let s = tokio::net::UdpSocket::bind(SocketAddr::new(local_for(to), 0))
                .await
                .expect("udp");
            s.connect(to).await.expect("connect");
            Box::new(UdpClient(s, [0; 128]))
        }
        Contender::Tcp => {
            let mut s = TcpStream::connect(to).await.expect("tcp");
            s.set_nodelay(true).expect("nodelay");
            s.write_u8(b'E').await.expect("tcp");
            Box::new(TcpClient(s, [0; 64]))
        }
        Contender::Http => {
            let c: HttpClient = http_client(to).await;
            Box::new(c)
        }
        Contender::Quic => {
            let der = hex::decode(cert.expect("--cert")).expect("hex");
            Box::new(QuicClient(quic_client(to, quic_client_config(der)).await))
        }
        Contender::UdpStd => unreachable!("a blocking client"),
    }
}

fn local_for(to: SocketAddr) -> std::net::IpAddr {
    if to.is_ipv4() {
        std::net::Ipv4Addr::UNSPECIFIED.into()
    } else {
        std::net::Ipv6Addr::UNSPECIFIED.into()
    }
}

/// The floor: blocking sockets, one thread, no runtime in the way.
fn std_udp_client(args: &ChildArgs, to: SocketAddr) {
    let s = std::net::UdpSocket::bind((args.bind, 0)).expect("udp");
    s.connect(to).expect("connect");
    let mut buf = [0u8; 128];
    say("READY");
    for c in commands() {
        let words: Vec<&str> = c.split_whitespace().collect();
        if words.first() != Some(&"rtt") {
            continue;
        }
        let slice =
            Duration::from_millis(words.get(1).and_then(|w| w.parse().ok()).unwrap_or(1000));
        let deadline = Instant::now() + slice;
        let mut l = Vec::new();
        while Instant::now() < deadline {
            let t = Instant::now();
            s.send(&PAYLOAD).expect("send");
            let n = s.recv(&mut buf).expect("recv");
            assert_eq!(n, 64);
            l.push(t.elapsed());
        }
        say(&lat_line(&l));
    }
}

/// 64-byte datagrams as fast as the socket takes them (no acknowledgement: some are lost).
async fn udp_oneway(s: &tokio::net::UdpSocket, slice: Duration) -> (u64, Duration) {
    let t = Instant::now();
    let mut sent = 0u64;
    let mut buf = PAYLOAD;
    buf[0] = b'S';
    while t.elapsed() < slice {
        for _ in 0..64 {
            if s.send(&buf).await.is_ok() {
                sent += 1;
            }
        }
    }
    (sent, t.elapsed())
}

/// `size`-byte reliable messages for `slice`, four in flight: how many were acknowledged.
async fn mesh_bulk(
    client: &MeshNode,
    to: NodeKey,
    size: usize,
    slice: Duration,
) -> (u64, Duration) {
    let data = Bytes::from(vec![5u8; size]);
    let t = Instant::now();
    let mut done = 0u64;
    let mut inflight = FuturesUnordered::new();
    loop {
        while inflight.len() < 4 && t.elapsed() < slice {
            let (c, d) = (client.clone(), data.clone());
            inflight.push(async move {
                c.send_bytes(SINK, [to], d, SendOptions::default())
                    .await
                    .is_ok_and(|r| r.is_ok())
            });
        }
        match inflight.next().await {
            Some(ok) => done += u64::from(ok),
            None => break,
        }
    }
    (done, t.elapsed())
}

/// A TCP byte stream, `size` bytes per write from one reused buffer, for `slice`.
async fn tcp_bulk(s: &mut TcpStream, size: usize, slice: Duration) -> (u64, Duration) {
    let data = vec![5u8; size];
    let t = Instant::now();
    let mut done = 0u64;
    while t.elapsed() < slice {
        s.write_all(&data).await.expect("tcp");
        done += 1;
    }
    s.flush().await.expect("tcp");
    (done, t.elapsed())
}
