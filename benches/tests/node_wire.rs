//! mesh-wire's `compat` module against the real Node.js mesh-link 0.13.6 (installed from npm
//! into `benches/node-original`): a Rust socket speaking the original's wire asks a Node node's
//! handlers and reads its answers, small and 100 KiB, reliable and `usend`. Needs `node`,
//! `npm` (and the npm registry once) and `redis-server`; fails saying which is missing.

#![allow(clippy::print_stderr, reason = "the test says what it observed")]

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use mesh_benches::node_original::{install, node_harness, read_json_line};
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
