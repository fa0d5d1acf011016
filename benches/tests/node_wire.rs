//! mesh-wire's `compat` module against the real Node.js mesh-link 0.13.6 (installed from npm
//! into `benches/node-original`): a Rust socket speaking the original's wire asks a Node node's
//! handlers and reads its answers, small and 100 KiB, reliable and `usend`. Needs `node`,
//! `npm` (and the npm registry once) and `redis-server`; fails saying which is missing.

#![allow(clippy::print_stderr, reason = "the test says what it observed")]

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use mesh_benches::node_original::{install, node_harness, read_json_line};
use mesh_discovery::compat::{ttl_secs, AnnounceKey};
use mesh_discovery::testing::{free_port, RedisServer};
use mesh_wire::compat::*;
use serde_json::{json, Value};

/// A compat peer on a plain UDP socket: fresh ids, acknowledgements, reassembly.
struct Peer {
    socket: UdpSocket,
    node: SocketAddr,
    next: u64,
    parts: Reassembly<SocketAddr>,
}

impl Peer {
    fn new(node: SocketAddr) -> Self {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        socket
            .set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        Self {
            socket,
            node,
            next: u64::from(std::process::id()) << 32,
            parts: Reassembly::new(Limits::default()),
        }
    }

    fn id(&mut self) -> Id {
        self.next += 1;
        let mut id = [0x5a; 16];
        id[..8].copy_from_slice(&self.next.to_be_bytes());
        id
    }

    fn recv(&self) -> Option<Vec<u8>> {
        let mut buf = vec![0u8; 65536];
        match self.socket.recv_from(&mut buf) {
            Ok((n, from)) if from == self.node => Some(buf[..n].to_vec()),
            _ => None,
        }
    }

    /// Sends `packet` reliably, chunk by chunk, each once acknowledged (retransmitted every
    /// 200 ms, for at most 5 s), as the original's requests go. Reliable datagrams that come
    /// meanwhile are acknowledged and kept.
    fn send(&mut self, packet: &[u8], got: &mut Vec<Vec<u8>>) {
        let message = self.id();
        for chunk in split(message, packet, SPLIT_SIZE).unwrap() {
            let id = self.id();
            let datagram = Datagram::Send { id, chunk: &chunk }.encode();
            let t0 = Instant::now();
            'acked: loop {
                assert!(
                    t0.elapsed() < Duration::from_secs(5),
                    "chunk never acknowledged"
                );
                self.socket.send_to(&datagram, self.node).unwrap();
                let wait = Instant::now();
                while wait.elapsed() < Duration::from_millis(200) {
                    let Some(d) = self.recv() else { continue };
                    match Datagram::decode(&d).expect("the original's datagram") {
                        Datagram::Ack { acked, .. } if acked == id => break 'acked,
                        Datagram::Ack { .. } => {}
                        Datagram::Send { .. } | Datagram::Usend(_) => {
                            self.take(&d, got);
                        }
                    }
                }
            }
        }
    }

    /// Acknowledges a reliable datagram and reassembles its chunk; a complete packet goes to
    /// `got`.
    fn take(&mut self, d: &[u8], got: &mut Vec<Vec<u8>>) {
        if let Ok(Datagram::Send { id, chunk }) = Datagram::decode(d) {
            let ack = Datagram::Ack {
                ack_id: self.id(),
                acked: id,
            }
            .encode();
            self.socket.send_to(&ack, self.node).unwrap();
            let c = Chunk::decode(chunk).expect("the original's chunk");
            if let Some(whole) = self.parts.push(self.node, c, Instant::now()).unwrap() {
                got.push(whole);
            }
        }
    }

    /// Waits (at most 10 s) for the response to `rid`, acknowledging what comes.
    fn response(&mut self, rid: Id, mut got: Vec<Vec<u8>>) -> Unpacked {
        let t0 = Instant::now();
        loop {
            if let Some(i) = got.iter().position(|p| {
                Packet::decode(p).is_ok_and(|p| p.kind == PacketKind::Response && p.rid == rid)
            }) {
                let p = got.swap_remove(i);
                return unpack(Packet::decode(&p).unwrap().payload);
            }
            assert!(t0.elapsed() < Duration::from_secs(10), "no response");
            if let Some(d) = self.recv() {
                self.take(&d, &mut got);
            }
        }
    }

    /// Asks handler `handler` with `data` and returns the answer.
    fn ask(&mut self, handler: u16, data: Value) -> Unpacked {
        let rid = self.id();
        let payload = serde_json::to_vec(&Envelope::new(data, handler)).unwrap();
        let packet = Packet {
            kind: PacketKind::Request,
            rid,
            handler,
            payload: &payload,
        }
        .encode();
        let mut got = Vec::new();
        self.send(&packet, &mut got);
        self.response(rid, got)
    }
}

#[test]
fn a_rust_peer_speaks_the_originals_wire_to_a_node_node() {
    install().unwrap_or_else(|e| panic!("the Node original cannot run here: {e}"));
    let redis = RedisServer::start();
    let redis_port = redis.url().rsplit(':').next().unwrap().to_owned();
    let mut server = node_harness(&[
        "server".into(),
        redis_port,
        "wire".into(),
        free_port().to_string(),
    ]);
    let ready = read_json_line(&mut server);
    let port = ready["port"].as_u64().expect("the harness's ready line") as u16;
    let node = SocketAddr::from(([127, 0, 0, 1], port));
    let mut peer = Peer::new(node);

    // The raw probe.
    peer.socket.send_to(RAW_PING, node).unwrap();
    let pong = (0..25).find_map(|_| peer.recv()).expect("PONG");
    assert_eq!(pong, RAW_PONG);

    // Handler 1 echoes: a small request, and 100 KiB each way (79 chunks of 1300 bytes; the
    // answer comes back as a burst of chunks).
    let small = json!({"message": "hello", "n": [1, 2, 3]});
    assert_eq!(peer.ask(1, small.clone()), Unpacked::Json(small));
    let big = Value::String("x".repeat(100 << 10));
    let t0 = Instant::now();
    assert_eq!(peer.ask(1, big.clone()), Unpacked::Json(big));
    eprintln!("100 KiB echoed by the Node node in {:?}", t0.elapsed());
    // A buffer inside the data comes back tagged, as the original tags it.
    let blob = json!({"blob": buffer_value(b"\x00\x01\xfe\xff")});
    let Unpacked::Json(back) = peer.ask(1, blob) else {
        panic!("json")
    };
    assert_eq!(buffer_of(&back["blob"]), Some(vec![0, 1, 0xfe, 0xff]));
    assert!(peer.parts.is_empty());

    // Handler 2 counts: one reliable message without an answer, three usends.
    let payload = serde_json::to_vec(&Envelope::new(json!("one way"), 2)).unwrap();
    let packet = Packet {
        kind: PacketKind::Request,
        rid: NO_RESPONSE,
        handler: 2,
        payload: &payload,
    }
    .encode();
    peer.send(&packet, &mut Vec::new());
    for _ in 0..3 {
        let u = Usend::new(NO_RESPONSE, Envelope::new(json!({"u": 1}), 2)).encode();
        peer.socket.send_to(&u, node).unwrap();
    }
    std::thread::sleep(Duration::from_millis(300));
    let pid = nix::unistd::Pid::from_raw(i32::try_from(server.id()).unwrap());
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    let counts = read_json_line(&mut server);
    let _ = server.wait();
    assert_eq!(counts["oneway"], 4, "{counts}");
}

/// A minimal Redis client for the test: one command, its reply as text (arrays flattened to
/// one element per line).
fn redis(port: u16, args: &[&str]) -> Vec<String> {
    use std::io::{BufRead, BufReader, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("redis");
    let mut cmd = format!("*{}\r\n", args.len());
    for a in args {
        cmd.push_str(&format!("${}\r\n{a}\r\n", a.len()));
    }
    s.write_all(cmd.as_bytes()).unwrap();
    let mut r = BufReader::new(s);
    let mut line = String::new();
    let mut read = |r: &mut BufReader<std::net::TcpStream>| {
        line.clear();
        r.read_line(&mut line).unwrap();
        line.trim_end().to_owned()
    };
    let first = read(&mut r);
    let bulk = |r: &mut BufReader<std::net::TcpStream>, head: &str| -> String {
        let n: usize = head[1..].parse().unwrap();
        let mut buf = vec![0u8; n + 2];
        std::io::Read::read_exact(r, &mut buf).unwrap();
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    match first.as_bytes()[0] {
        b'*' => {
            let n: usize = first[1..].parse().unwrap();
            (0..n)
                .map(|_| {
                    let head = read(&mut r);
                    bulk(&mut r, &head)
                })
                .collect()
        }
        b'$' => vec![bulk(&mut r, &first)],
        _ => vec![first],
    }
}

/// Answers requests on the original's wire: each reliable chunk acknowledged, each complete
/// request answered with its envelope's data (an echo), until `stop`.
fn serve_echo(peer: &mut Peer, stop: &std::sync::atomic::AtomicBool) -> u64 {
    let mut answered = 0;
    let mut parts: Reassembly<SocketAddr> = Reassembly::new(Limits::default());
    let mut buf = vec![0u8; 65536];
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        let Ok((n, from)) = peer.socket.recv_from(&mut buf) else {
            continue;
        };
        let Ok(Datagram::Send { id, chunk }) = Datagram::decode(&buf[..n]) else {
            continue;
        };
        let ack = Datagram::Ack {
            ack_id: peer.id(),
            acked: id,
        }
        .encode();
        peer.socket.send_to(&ack, from).unwrap();
        let Ok(c) = Chunk::decode(chunk) else {
            continue;
        };
        let Ok(Some(whole)) = parts.push(from, c, Instant::now()) else {
            continue;
        };
        let p = Packet::decode(&whole).expect("the original's packet");
        if p.kind != PacketKind::Request || p.rid == NO_RESPONSE {
            continue;
        }
        let envelope: Envelope = serde_json::from_slice(p.payload).expect("an envelope");
        let answer = pack(&envelope.data);
        let packet = Packet {
            kind: PacketKind::Response,
            rid: p.rid,
            handler: p.handler,
            payload: &answer,
        }
        .encode();
        // Responses go out as a burst, as the original sends them.
        for chunk in split(peer.id(), &packet, SPLIT_SIZE).unwrap() {
            let d = Datagram::Send {
                id: peer.id(),
                chunk: &chunk,
            }
            .encode();
            peer.socket.send_to(&d, from).unwrap();
        }
        answered += 1;
    }
    answered
}

#[test]
fn node_and_rust_see_each_other_in_the_originals_redis_schema_and_node_asks_rust() {
    install().unwrap_or_else(|e| panic!("the Node original cannot run here: {e}"));
    let redis_server = RedisServer::start();
    let redis_port: u16 = redis_server
        .url()
        .rsplit(':')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let prefix = "mixed";
    let mut server = node_harness(&[
        "server".into(),
        redis_port.to_string(),
        prefix.into(),
        free_port().to_string(),
    ]);
    let node_port = read_json_line(&mut server)["port"].as_u64().expect("ready") as u16;

    // The Node node, as Rust reads it from Redis.
    let t0 = Instant::now();
    let seen = loop {
        let keys = redis(redis_port, &["KEYS", &AnnounceKey::pattern(prefix)]);
        if let Some(k) = keys.iter().filter_map(|k| AnnounceKey::parse(k)).next() {
            break k;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "no announce key: {keys:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!((seen.address.as_str(), seen.port), ("127.0.0.1", node_port));
    assert_eq!(seen.prefix, prefix);

    // A Rust peer announced in the original's schema, refreshed every second as the original
    // does, answering on the original's wire.
    let mut peer = Peer::new(SocketAddr::from(([127, 0, 0, 1], node_port)));
    let rust_port = peer.socket.local_addr().unwrap().port();
    let mut values = std::collections::BTreeMap::new();
    values.insert("lang".to_owned(), json!("rust"));
    let key = AnnounceKey {
        prefix: prefix.into(),
        address: "127.0.0.1".into(),
        port: rust_port,
        node_type: "rust".into(),
        backups: Vec::new(),
        values,
        objects: 0,
    }
    .encode()
    .unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let announcer = {
        let (stop, key) = (stop.clone(), key.clone());
        std::thread::spawn(move || {
            let ttl = ttl_secs(Duration::from_secs(1)).to_string();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                redis(redis_port, &["SETEX", &key, &ttl, ""]);
                std::thread::sleep(Duration::from_millis(500));
            }
            redis(redis_port, &["DEL", &key]);
        })
    };
    let server_thread = {
        let stop = stop.clone();
        std::thread::spawn(move || serve_echo(&mut peer, &stop))
    };

    // A Node client process: it waits until its discovery lists the Rust peer (the original
    // only sends to nodes it knows), then makes echo requests to it for 2 s.
    let mut client = node_harness(&[
        "client".into(),
        redis_port.to_string(),
        prefix.into(),
        free_port().to_string(),
        rust_port.to_string(),
        "rtt".into(),
        "2".into(),
    ]);
    let result = read_json_line(&mut client);
    let _ = client.wait();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let answered = server_thread.join().unwrap();
    announcer.join().unwrap();
    let ops = result["ops"].as_u64().unwrap_or(0);
    eprintln!("a Node client made {ops} requests to the Rust peer; it answered {answered}");
    assert!(ops > 0, "the Node client got no answer: {result}");
    assert!(answered >= ops, "{answered} answered, {ops} completed");
    let pid = nix::unistd::Pid::from_raw(i32::try_from(server.id()).unwrap());
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    let _ = server.wait();
}
