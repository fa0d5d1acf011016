//! Shared objects over the mesh-rudp simulator: random operations from several replicas, with
//! loss, duplication and reordering on every link, checked after every step.
//!
//! Each node runs an [`Objects`] state machine; a small harness here plays the facade's part
//! (requests, replies, one-way messages) over simulated reliable UDP, with unordered delivery
//! so that changes overtake each other, and re-delivers some changes twice on purpose.

#![allow(clippy::print_stderr, reason = "SIM_TRACE=1 prints a summary per case")]

use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;
use mesh_rudp::sim::{LinkConfig, Sim};
use mesh_rudp::{Delivery, EndpointConfig, Event as NetEvent};
use mesh_shared::{
    Config, Event, Message, Mid, Objects, Op, Output, Prepared, Properties, RemoveReason, Reply,
};
use proptest::prelude::*;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

const MIN: f64 = 0.0;
const MAX: f64 = 100.0;
const MAX_KEYS: usize = 3;

#[derive(Debug, Serialize, Deserialize)]
enum Wire {
    Request(u64, Message),
    Reply(u64, Reply),
    OneWay(Message),
}

struct Node {
    objects: Objects,
    asked: HashMap<u64, (Mid, Message)>,
    updates: usize,
    removed: Vec<RemoveReason>,
    resyncs: usize,
    peer_resets: usize,
    /// Version when this node began to hold the object.
    joined_at: Option<u64>,
    /// The update stream as a user keeps it: the last version seen, the properties reported
    /// at that version, and the latest value of each property.
    stream_version: u64,
    stream_props_at_version: Vec<String>,
    stream_values: HashMap<String, Value>,
}

struct Harness {
    sim: Sim,
    nodes: Vec<Node>,
    next_request: u64,
    rng: rand_pcg::Pcg64Mcg,
    /// Probability (in 1/256) that a delta is handled twice.
    dup: u64,
}

fn encode(w: &Wire) -> Bytes {
    Bytes::from(mesh_wire::codec::encode(w).unwrap())
}

impl Harness {
    fn new(seed: u64, n: usize, link: LinkConfig, gap_timeout: Duration) -> Self {
        let mut sim = Sim::new(seed);
        sim.set_all_links(link);
        let mut nodes = Vec::new();
        for _ in 0..n {
            let mut ec = EndpointConfig::default();
            ec.peer_timeout(Duration::from_secs(3));
            let i = sim.add_endpoint(ec);
            let mut config = Config::default();
            config.gap_timeout = gap_timeout;
            nodes.push(Node {
                objects: Objects::new(sim.addr(i), config),
                asked: HashMap::new(),
                updates: 0,
                removed: Vec::new(),
                resyncs: 0,
                peer_resets: 0,
                joined_at: None,
                stream_version: 0,
                stream_props_at_version: Vec::new(),
                stream_values: HashMap::new(),
            });
        }
        Self {
            sim,
            nodes,
            next_request: 1,
            rng: rand_core::SeedableRng::seed_from_u64(seed),
            dup: 64,
        }
    }

    fn random(&mut self) -> u64 {
        self.rng.next_u64()
    }

    fn index(&self, addr: std::net::SocketAddr) -> usize {
        (0..self.nodes.len())
            .find(|&i| self.sim.addr(i) == addr)
            .expect("a node")
    }

    fn ask(&mut self, from: usize, mid: Mid, message: Message) {
        let id = self.next_request;
        self.next_request += 1;
        self.nodes[from].asked.insert(id, (mid, message.clone()));
        let to = self.index(mid.owner);
        // A send refused or failed is a lost request: the harness, like a caller, lives on.
        let _ = self.sim.send(
            from,
            to,
            encode(&Wire::Request(id, message)),
            Delivery::Unordered,
        );
    }

    /// Routes what node `i`'s state machine wants done, checking every event on the way.
    fn outputs(&mut self, i: usize, mid: Mid) {
        while let Some(o) = self.nodes[i].objects.poll_output() {
            match o {
                Output::Send { to, message } => {
                    let to = self.index(to);
                    let _ =
                        self.sim
                            .send(i, to, encode(&Wire::OneWay(message)), Delivery::Unordered);
                }
                Output::Event { event, .. } => match event {
                    Event::Update {
                        prop,
                        value,
                        version,
                    } => {
                        assert!(
                            self.nodes[i].removed.is_empty(),
                            "node {i}: an update after removal"
                        );
                        // The stream never goes back in time: versions rise, and one version
                        // reports a property at most once (a resync reports several
                        // properties at the version it jumped to).
                        let n = &mut self.nodes[i];
                        if version > n.stream_version {
                            n.stream_version = version;
                            n.stream_props_at_version.clear();
                        } else {
                            assert!(
                                version == n.stream_version
                                    && !n.stream_props_at_version.contains(&prop),
                                "seed {}: node {i}'s stream went from version {} back to {version} ({prop})",
                                self.sim.seed(),
                                n.stream_version
                            );
                        }
                        n.stream_props_at_version.push(prop.clone());
                        n.stream_values.insert(prop.clone(), value.clone());
                        if prop == "counter" {
                            let v = value.as_f64().unwrap();
                            assert!((MIN..=MAX).contains(&v), "node {i}: counter {v}");
                        }
                        self.nodes[i].updates += 1;
                    }
                    Event::Removed(reason) => self.nodes[i].removed.push(reason),
                    _ => {}
                },
                Output::Resync { mid } => {
                    self.nodes[i].resyncs += 1;
                    self.ask(i, mid, Message::Get { id: mid.id });
                }
                _ => {}
            }
        }
        // At every step, wherever the object is held, the bound holds.
        if let Some(Value::Number(n)) = self.nodes[i].objects.value(mid, "counter") {
            let v = n.as_f64().unwrap();
            assert!((MIN..=MAX).contains(&v), "node {i} holds counter {v}");
        }
    }

    fn handle(&mut self, i: usize, from: std::net::SocketAddr, data: &[u8], mid: Mid) {
        let now = self.sim.now();
        let wire: Wire = mesh_wire::codec::decode(data).expect("our own bytes");
        match wire {
            Wire::Request(id, m) => {
                if let Some(reply) = self.nodes[i].objects.handle(now, from, m) {
                    let back = self.index(from);
                    let _ = self.sim.send(
                        i,
                        back,
                        encode(&Wire::Reply(id, reply)),
                        Delivery::Unordered,
                    );
                }
            }
            Wire::Reply(id, reply) => {
                if let Some((m, asked)) = self.nodes[i].asked.remove(&id) {
                    let r = self.nodes[i].objects.reply(now, m, &asked, reply);
                    if matches!(asked, Message::Get { .. } | Message::Create { .. })
                        && self.nodes[i].joined_at.is_none()
                    {
                        self.nodes[i].joined_at = r.ok();
                    }
                }
            }
            Wire::OneWay(m) => {
                let twice = matches!(m, Message::Delta { .. }) && self.random() % 256 < self.dup;
                if twice {
                    self.nodes[i].objects.handle(now, from, m.clone());
                }
                self.nodes[i].objects.handle(now, from, m);
            }
        }
        self.outputs(i, mid);
    }

    /// What the facade does when the transport reports a session with `peer` ended: the
    /// requests to it fail (their callers get an error), and replicas it owns resync.
    fn peer_down(&mut self, i: usize, peer: std::net::SocketAddr, mid: Mid) {
        let now = self.sim.now();
        let node = &mut self.nodes[i];
        let lost: Vec<u64> = node
            .asked
            .iter()
            .filter(|(_, (m, _))| m.owner == peer)
            .map(|(id, _)| *id)
            .collect();
        for id in lost {
            if let Some((m, Message::Get { .. })) = node.asked.remove(&id) {
                node.objects.resync_failed(now, m);
            }
        }
        node.peer_resets += 1;
        node.objects.peer_reset(peer);
        self.outputs(i, mid);
    }

    /// One simulator step, then everything each node received and every due timer.
    fn step(&mut self, mid: Mid) -> bool {
        let more = self.sim.step();
        let now = self.sim.now();
        for i in 0..self.nodes.len() {
            for e in self.sim.take_events(i) {
                match e {
                    NetEvent::Message { from, data, .. } => self.handle(i, from, &data, mid),
                    NetEvent::PeerDown { peer, .. } => self.peer_down(i, peer, mid),
                    _ => {}
                }
            }
            if self.nodes[i]
                .objects
                .poll_timeout()
                .is_some_and(|t| t <= now)
            {
                self.nodes[i].objects.handle_timeout(now);
            }
            self.outputs(i, mid);
        }
        more
    }

    /// Steps for `d` of virtual time, routing everything.
    fn run_virtual(&mut self, d: Duration, mid: Mid) {
        let end = self.sim.elapsed() + d;
        for _ in 0..1_000_000 {
            if self.sim.elapsed() >= end || !self.step(mid) {
                return;
            }
        }
    }

    /// Settles, then lets time pass so that lost sessions are noticed and replicas resync,
    /// until every node holds what the owner holds (bounded).
    fn converge(&mut self, mid: Mid) {
        for _ in 0..20 {
            self.settle(mid);
            if self.converged(mid) {
                return;
            }
            self.run_virtual(Duration::from_secs(4), mid);
        }
        self.settle(mid);
    }

    fn converged(&self, mid: Mid) -> bool {
        let owner = self.nodes[0].objects.props(mid);
        self.nodes
            .iter()
            .all(|n| n.objects.props(mid) == owner && n.asked.is_empty())
    }

    fn settle(&mut self, mid: Mid) {
        for _ in 0..200_000 {
            if !self.step(mid) {
                return;
            }
            if self.nodes.iter().all(|n| n.asked.is_empty()) && self.sim_idle() {
                return;
            }
        }
        panic!("seed {}: did not settle", self.sim.seed());
    }

    fn sim_idle(&mut self) -> bool {
        (0..self.nodes.len()).all(|i| self.sim.endpoint(i).is_idle())
    }

    /// Node 1 creates the object on node 0; every other node gets a replica.
    fn setup(&mut self) -> Mid {
        let now = self.sim.now();
        let props = Properties::new()
            .number("counter", 50.0, MIN..=MAX)
            .map_with("members", Default::default(), Some(MAX_KEYS))
            .value("name", "Foobar");
        let owner = self.sim.addr(0);
        let (mid, ask) = self.nodes[1]
            .objects
            .create(now, 0xfeed, props, Duration::from_secs(3600), owner)
            .unwrap();
        let create = ask.unwrap();
        self.nodes[0].joined_at = Some(0);
        // A request can be lost with its session (the harness does not retry, like a caller
        // that got an error): ask again until every node holds the object.
        for _ in 0..50 {
            for i in 1..self.nodes.len() {
                if self.nodes[i].objects.contains(mid) || !self.nodes[i].asked.is_empty() {
                    continue;
                }
                let m = if i == 1 && !self.nodes[0].objects.contains(mid) {
                    create.clone()
                } else {
                    self.nodes[i].objects.get(mid).unwrap()
                };
                self.ask(i, mid, m);
            }
            self.settle(mid);
            if self.nodes.iter().all(|n| n.objects.contains(mid)) {
                return mid;
            }
        }
        panic!("seed {}: setup did not finish", self.sim.seed());
    }

    fn op(&mut self, node: usize, mid: Mid, op: Op) {
        let now = self.sim.now();
        match self.nodes[node].objects.prepare(now, mid, op) {
            Ok(Prepared::Ask(m)) => self.ask(node, mid, m),
            Ok(Prepared::Applied { .. }) | Err(_) => {}
            Ok(_) => unreachable!(),
        }
        self.outputs(node, mid);
    }
}

fn random_op(k: u8, arg: i8) -> Op {
    match k % 4 {
        0 | 1 => Op::Inc {
            prop: "counter".into(),
            delta: f64::from(arg % 40),
        },
        2 => Op::Add {
            prop: "members".into(),
            key: format!("m{}", arg.rem_euclid(5)),
            value: json!(arg).into(),
        },
        _ => {
            if arg % 3 == 0 {
                Op::Set {
                    prop: "name".into(),
                    value: json!(format!("n{arg}")).into(),
                }
            } else {
                Op::Del {
                    prop: "members".into(),
                    key: format!("m{}", arg.rem_euclid(5)),
                }
            }
        }
    }
}

fn lossy(seed: u64) -> LinkConfig {
    LinkConfig {
        loss: [0.0, 0.1, 0.3][(seed % 3) as usize],
        duplicate: 0.1,
        jitter: Duration::from_millis(5),
        ..LinkConfig::default()
    }
}

fn assert_converged(h: &Harness, mid: Mid) {
    let owner = h.nodes[0]
        .objects
        .props(mid)
        .expect("owner holds it")
        .clone();
    let version = h.nodes[0].objects.version(mid).unwrap();
    for (i, n) in h.nodes.iter().enumerate() {
        assert_eq!(
            n.objects.props(mid),
            Some(&owner),
            "seed {}: node {i} differs",
            h.sim.seed()
        );
        assert_eq!(n.objects.version(mid), Some(version));
    }
}

proptest! {
    // A fixed seed, so CI runs the same cases every time; `PROPTEST_CASES=5000` runs more.
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(32),
        rng_seed: proptest::test_runner::RngSeed::Fixed(0x5eed),
        .. ProptestConfig::default()
    })]

    /// Random operations from every node at random moments: all replicas end equal to the
    /// owner, no number leaves its bounds at any step, each node reports exactly one update
    /// per change applied after it joined, and one removal.
    #[test]
    fn replicas_converge_within_bounds(
        seed in any::<u64>(),
        ops in prop::collection::vec((0usize..4, any::<u8>(), any::<i8>(), 0usize..6), 1..80),
    ) {
        let mut h = Harness::new(seed, 4, lossy(seed), Duration::from_secs(3600));
        let mid = h.setup();
        for (node, k, arg, steps) in ops {
            h.op(node, mid, random_op(k, arg));
            for _ in 0..steps {
                h.step(mid);
            }
        }
        h.converge(mid);
        assert_converged(&h, mid);
        let version = h.nodes[0].objects.version(mid).unwrap();
        if std::env::var_os("SIM_TRACE").is_some() {
            let r: Vec<usize> = h.nodes.iter().map(|n| n.resyncs).collect();
            let u: Vec<usize> = h.nodes.iter().map(|n| n.updates).collect();
            eprintln!("version {version} resyncs {r:?} updates {u:?} net {:?} elapsed {:?}", h.sim.net, h.sim.elapsed());
        }
        for (i, n) in h.nodes.iter().enumerate() {
            // What a user kept as "the latest value from the stream" is the final state, and
            // the stream's last version is the object's once no change is missing.
            for (prop, value) in &n.stream_values {
                let now = n.objects.value(mid, prop);
                prop_assert_eq!(
                    Some(value),
                    now.as_ref(),
                    "node {}: the stream's last {} is stale",
                    i,
                    prop
                );
            }
            let joined = n.joined_at.expect("joined");
            if n.resyncs == 0 && version > joined {
                prop_assert_eq!(n.stream_version, version, "node {} stream's last version", i);
            }
            if n.resyncs == 0 {
                // Change by change: exactly one update per change.
                prop_assert_eq!(n.updates as u64, version - joined, "node {} update count", i);
            } else {
                // A resync reports each property that differs once, not each missed change.
                prop_assert!(n.updates as u64 <= version - joined, "node {} update count", i);
            }
        }
        // Removal from a replica: every node reports it exactly once (the request is asked
        // again if its session is lost before the answer).
        for _ in 0..20 {
            if !h.nodes[2].objects.contains(mid) {
                break;
            }
            if h.nodes[2].asked.is_empty() {
                let ask = h.nodes[2].objects.remove(mid).unwrap().unwrap();
                h.ask(2, mid, ask);
            }
            h.settle(mid);
            h.run_virtual(Duration::from_secs(4), mid);
        }
        h.settle(mid);
        for (i, n) in h.nodes.iter().enumerate() {
            prop_assert_eq!(&n.removed, &vec![RemoveReason::Removed], "node {}", i);
            prop_assert!(!n.objects.contains(mid));
        }
    }
}

/// A replica cut off long enough for its peer state to be dropped misses changes for good;
/// the changes after the cut reveal the gap and it resyncs to the owner's state.
#[test]
fn a_replica_that_missed_changes_resyncs() {
    for seed in 0..8u64 {
        let mut h = Harness::new(seed, 3, lossy(seed), Duration::from_millis(500));
        let mid = h.setup();
        h.sim.partition(0, 2, true);
        for i in 0..20 {
            h.op(1, mid, random_op(0, (i % 7) as i8));
            for _ in 0..5 {
                h.step(mid);
            }
        }
        // Long past the peer timeout: the owner's deltas to node 2 failed.
        h.sim.run_for(Duration::from_secs(5), 1_000_000).unwrap();
        for i in 0..h.nodes.len() {
            for e in h.sim.take_events(i) {
                // The ends of sessions are dropped (node 2 must find its gap by itself), but
                // not the messages that arrived meanwhile: a request dropped here would never
                // be answered, and whether one arrives in this window depends on timing.
                if let NetEvent::Message { from, data, .. } = e {
                    h.handle(i, from, &data, mid);
                }
            }
        }
        h.sim.partition(0, 2, false);
        for i in 0..10 {
            h.op(1, mid, random_op(2, i));
            for _ in 0..5 {
                h.step(mid);
            }
        }
        h.settle(mid);
        // Let the gap timer fire and the snapshot come back.
        for _ in 0..5 {
            h.sim
                .run_for(Duration::from_millis(600), 1_000_000)
                .unwrap();
            h.step(mid);
            h.settle(mid);
        }
        assert!(h.nodes[2].resyncs >= 1, "seed {seed}: node 2 resynced");
        assert_converged(&h, mid);
    }
}

/// The owner leaving: every replica reports the object removed (owner lost), once.
#[test]
fn owner_lost_removes_replicas() {
    let mut h = Harness::new(7, 3, LinkConfig::default(), Duration::from_secs(1));
    let mid = h.setup();
    let owner = h.sim.addr(0);
    for i in 1..3 {
        h.nodes[i].objects.node_left(owner);
        h.outputs(i, mid);
        assert_eq!(h.nodes[i].removed, vec![RemoveReason::OwnerLost]);
        assert!(!h.nodes[i].objects.contains(mid));
    }
}

/// TTL counts from the last change; expiry removes the object everywhere, once.
#[test]
fn expiry_removes_everywhere_once() {
    let mut h = Harness::new(3, 3, LinkConfig::default(), Duration::from_secs(1));
    let now = h.sim.now();
    let owner = h.sim.addr(0);
    let props = Properties::new().number("counter", 1.0, MIN..=MAX);
    let (mid, ask) = h.nodes[1]
        .objects
        .create(now, 9, props, Duration::from_secs(2), owner)
        .unwrap();
    h.ask(1, mid, ask.unwrap());
    h.settle(mid);
    let get = h.nodes[2].objects.get(mid).unwrap();
    h.ask(2, mid, get);
    h.settle(mid);
    // A change at 1.5 s pushes expiry to 3.5 s.
    h.sim
        .run_for(Duration::from_millis(1500), 1_000_000)
        .unwrap();
    h.op(2, mid, random_op(0, 1));
    h.settle(mid);
    h.sim
        .run_for(Duration::from_millis(1000), 1_000_000)
        .unwrap();
    let now = h.sim.now();
    h.nodes[0].objects.handle_timeout(now);
    assert!(
        h.nodes[0].objects.contains(mid),
        "not expired 1 s after a change"
    );
    h.sim
        .run_for(Duration::from_millis(1500), 1_000_000)
        .unwrap();
    let now = h.sim.now();
    h.nodes[0].objects.handle_timeout(now);
    h.outputs(0, mid);
    h.settle(mid);
    for (i, n) in h.nodes.iter().enumerate() {
        assert_eq!(n.removed, vec![RemoveReason::Expired], "node {i}");
    }
}
