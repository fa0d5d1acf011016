//! A deterministic network simulator for [`Endpoint`]s (feature `testing`).
//!
//! Virtual clock, any number of endpoints, and per-link seeded loss, duplication, corruption,
//! delay with jitter (which reorders), an MTU, and partitions. Nothing sleeps: time jumps to the
//! next arrival or timer, so thousands of virtual seconds run per real second. Every random
//! choice comes from one seed, printed in every [`SimError`], so a failing run can be replayed.
//!
//! ```
//! use std::time::Duration;
//! use bytes::Bytes;
//! use mesh_rudp::sim::{LinkConfig, Sim};
//! use mesh_rudp::{Delivery, EndpointConfig, Event};
//!
//! let mut sim = Sim::new(7);
//! let a = sim.add_endpoint(EndpointConfig::default());
//! let b = sim.add_endpoint(EndpointConfig::default());
//! sim.set_all_links(LinkConfig { loss: 0.2, ..LinkConfig::default() });
//! for i in 0..100u32 {
//!     sim.send(a, b, Bytes::from(i.to_le_bytes().to_vec()), Delivery::Unordered).unwrap();
//! }
//! sim.run_until_idle(100_000).unwrap();
//! let got = sim.take_events(b).into_iter().filter(|e| matches!(e, Event::Message { .. })).count();
//! assert_eq!(got, 100);
//! ```

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::{Delivery, Endpoint, EndpointConfig, Event, MessageId, SendError, StartTime};
use rand_core::{Rng, SeedableRng};

/// Faults and timing of one direction of one link.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LinkConfig {
    /// Probability that a datagram is dropped.
    pub loss: f64,
    /// Probability that a datagram is delivered twice.
    pub duplicate: f64,
    /// Probability that one random bit of a datagram is flipped.
    pub corrupt: f64,
    /// One-way delay.
    pub delay: Duration,
    /// Extra delay drawn uniformly from `0..jitter` per datagram; reorders them.
    pub jitter: Duration,
    /// Datagrams larger than this are dropped.
    pub mtu: usize,
}

impl Default for LinkConfig {
    fn default() -> Self {
        Self {
            loss: 0.0,
            duplicate: 0.0,
            corrupt: 0.0,
            delay: Duration::from_micros(250),
            jitter: Duration::ZERO,
            mtu: 65_535,
        }
    }
}

/// The simulation did not settle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimError {
    /// The seed to replay it.
    pub seed: u64,
    /// What happened.
    pub what: String,
}

impl fmt::Display for SimError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (replay with seed {})", self.what, self.seed)
    }
}

impl std::error::Error for SimError {}

#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
struct InFlight {
    at: Instant,
    order: u64,
    to: usize,
    from: SocketAddr,
    bytes: Vec<u8>,
}

/// One simulated endpoint.
#[derive(Debug)]
struct Node {
    addr: SocketAddr,
    endpoint: Endpoint,
    config: EndpointConfig,
    events: Vec<Event>,
    /// Distinct instants at which this endpoint had work: a datagram, or a timer due.
    wakes: u64,
    /// The last such instant.
    last_wake: Option<Instant>,
}

/// Counters of what the simulated network did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct NetStats {
    /// Datagrams handed to the network.
    pub sent: u64,
    /// Datagrams delivered (duplicates included).
    pub delivered: u64,
    /// Datagrams dropped (loss, MTU, partition).
    pub dropped: u64,
    /// Datagrams duplicated.
    pub duplicated: u64,
    /// Datagrams corrupted.
    pub corrupted: u64,
}

/// The simulated network and its endpoints.
#[derive(Debug)]
pub struct Sim {
    seed: u64,
    rng: rand_pcg::Pcg64Mcg,
    start: Instant,
    now: Instant,
    nodes: Vec<Node>,
    queue: BinaryHeap<Reverse<InFlight>>,
    order: u64,
    default_link: LinkConfig,
    links: HashMap<(usize, usize), LinkConfig>,
    cut: HashSet<(usize, usize)>,
    drop_next: HashMap<(usize, usize), usize>,
    buf: Vec<u8>,
    /// What the network did so far.
    pub net: NetStats,
}

impl Node {
    fn woke(&mut self, now: Instant) {
        if self.last_wake != Some(now) {
            self.last_wake = Some(now);
            self.wakes += 1;
        }
    }
}

impl Sim {
    /// An empty network whose random choices all derive from `seed`.
    pub fn new(seed: u64) -> Self {
        let start = Instant::now();
        Self {
            seed,
            rng: rand_pcg::Pcg64Mcg::seed_from_u64(seed),
            start,
            now: start,
            nodes: Vec::new(),
            queue: BinaryHeap::new(),
            order: 0,
            default_link: LinkConfig::default(),
            links: HashMap::new(),
            cut: HashSet::new(),
            drop_next: HashMap::new(),
            buf: Vec::with_capacity(65_536),
            net: NetStats::default(),
        }
    }

    /// The seed.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// Adds an endpoint at `10.0.0.1:(10000 + index)` (not loopback: a simulated network
    /// follows `mtu`); its seed is derived from the sim's.
    pub fn add_endpoint(&mut self, mut config: EndpointConfig) -> usize {
        let i = self.nodes.len();
        config.seed(Some(self.rng.next_u64()));
        let endpoint = Endpoint::new(config.clone(), self.start_time()).expect("valid config");
        self.nodes.push(Node {
            addr: SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)), 10_000 + i as u16),
            endpoint,
            config,
            events: Vec::new(),
            wakes: 0,
            last_wake: None,
        });
        i
    }

    /// Replaces endpoint `i` with a fresh one at the same address: a process restart.
    pub fn restart(&mut self, i: usize) {
        let mut config = self.nodes[i].config.clone();
        config.seed(Some(self.rng.next_u64()));
        self.nodes[i].endpoint = Endpoint::new(config, self.start_time()).expect("valid config");
        self.nodes[i].events.clear();
    }

    /// Virtual time for an endpoint created now: the virtual clock, and a wall clock that
    /// runs with it from a fixed date (2026-01-01), the same for every endpoint.
    fn start_time(&self) -> StartTime {
        StartTime::new(
            self.now,
            Duration::from_secs(1_767_225_600) + self.elapsed(),
        )
    }

    /// Distinct instants so far at which endpoint `i` had work (a datagram arrived, a timer
    /// was due): the wake-ups a real endpoint's driver would have.
    pub fn wakes(&self, i: usize) -> u64 {
        self.nodes[i].wakes
    }

    /// The address of endpoint `i`.
    pub fn addr(&self, i: usize) -> SocketAddr {
        self.nodes[i].addr
    }

    /// Endpoint `i`.
    pub fn endpoint(&mut self, i: usize) -> &mut Endpoint {
        &mut self.nodes[i].endpoint
    }

    /// The virtual time now.
    pub fn now(&self) -> Instant {
        self.now
    }

    /// Virtual time elapsed since the start.
    pub fn elapsed(&self) -> Duration {
        self.now - self.start
    }

    /// Sets every link that has no link of its own.
    pub fn set_all_links(&mut self, link: LinkConfig) {
        self.default_link = link;
    }

    /// Sets the direction `from → to`.
    pub fn set_link(&mut self, from: usize, to: usize, link: LinkConfig) {
        self.links.insert((from, to), link);
    }

    /// Cuts (or heals) both directions between `a` and `b`.
    pub fn partition(&mut self, a: usize, b: usize, cut: bool) {
        for k in [(a, b), (b, a)] {
            if cut {
                self.cut.insert(k);
            } else {
                self.cut.remove(&k);
            }
        }
    }

    /// Drops the next `count` datagrams sent `from → to` (scripted loss).
    pub fn drop_next(&mut self, from: usize, to: usize, count: usize) {
        self.drop_next.insert((from, to), count);
    }

    /// Queues a reliable message from `from` to `to`.
    pub fn send(
        &mut self,
        from: usize,
        to: usize,
        data: Bytes,
        delivery: Delivery,
    ) -> Result<MessageId, SendError> {
        let dest = self.nodes[to].addr;
        let now = self.now;
        self.nodes[from]
            .endpoint
            .send_reliable(now, dest, data, delivery)
    }

    /// Queues an unreliable message from `from` to `to`.
    pub fn send_unreliable(
        &mut self,
        from: usize,
        to: usize,
        data: Bytes,
    ) -> Result<(), SendError> {
        let dest = self.nodes[to].addr;
        let now = self.now;
        self.nodes[from].endpoint.send_unreliable(now, dest, data)
    }

    /// Injects raw bytes as if `from` had sent them to endpoint `to` (for hostile input).
    pub fn inject(&mut self, from: SocketAddr, to: usize, bytes: &[u8]) {
        let now = self.now;
        self.nodes[to].endpoint.handle_datagram(now, from, bytes);
    }

    /// Events endpoint `i` has produced so far, taken.
    pub fn take_events(&mut self, i: usize) -> Vec<Event> {
        std::mem::take(&mut self.nodes[i].events)
    }

    fn index_of(&self, addr: SocketAddr) -> Option<usize> {
        self.nodes.iter().position(|n| n.addr == addr)
    }

    /// Moves every pending transmit onto the network and every event into the node's list.
    fn drain(&mut self) {
        for i in 0..self.nodes.len() {
            let now = self.now;
            while let Some(t) = self.nodes[i].endpoint.poll_transmit(now, &mut self.buf) {
                self.net.sent += 1;
                let Some(to) = self.index_of(t.destination) else {
                    self.net.dropped += 1;
                    continue;
                };
                let link = *self.links.get(&(i, to)).unwrap_or(&self.default_link);
                if let Some(n) = self.drop_next.get_mut(&(i, to)).filter(|n| **n > 0) {
                    *n -= 1;
                    self.net.dropped += 1;
                    continue;
                }
                if self.cut.contains(&(i, to)) || t.size > link.mtu || self.chance(link.loss) {
                    self.net.dropped += 1;
                    continue;
                }
                let copies = if self.chance(link.duplicate) {
                    self.net.duplicated += 1;
                    2
                } else {
                    1
                };
                for _ in 0..copies {
                    let mut bytes = self.buf[..t.size].to_vec();
                    if self.chance(link.corrupt) && !bytes.is_empty() {
                        let bit = self.rng.next_u64() as usize % (bytes.len() * 8);
                        bytes[bit / 8] ^= 1 << (bit % 8);
                        self.net.corrupted += 1;
                    }
                    let jitter = if link.jitter.is_zero() {
                        Duration::ZERO
                    } else {
                        Duration::from_nanos(self.rng.next_u64() % link.jitter.as_nanos() as u64)
                    };
                    self.order += 1;
                    let from = self.nodes[i].addr;
                    self.queue.push(Reverse(InFlight {
                        at: now + link.delay + jitter,
                        order: self.order,
                        to,
                        from,
                        bytes,
                    }));
                }
            }
            while let Some(e) = self.nodes[i].endpoint.poll_event() {
                self.nodes[i].events.push(e);
            }
        }
    }

    fn chance(&mut self, p: f64) -> bool {
        p > 0.0 && (self.rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64 <= p
    }

    /// Drains output, then advances virtual time to the next arrival or timer and processes
    /// it. Returns false when nothing at all is scheduled.
    pub fn step(&mut self) -> bool {
        self.drain();
        let next_arrival = self.queue.peek().map(|Reverse(f)| f.at);
        // As the transport's driver does before it sleeps: a timer that moved later since it
        // was filed does not wake the endpoint.
        let next_timer = self
            .nodes
            .iter_mut()
            .filter_map(|n| n.endpoint.poll_timeout_settled())
            .min();
        let Some(next) = [next_arrival, next_timer].into_iter().flatten().min() else {
            return false;
        };
        self.now = self.now.max(next);
        while let Some(Reverse(f)) = self.queue.peek() {
            if f.at > self.now {
                break;
            }
            let Reverse(f) = self.queue.pop().expect("peeked");
            self.net.delivered += 1;
            let now = self.now;
            let n = &mut self.nodes[f.to];
            n.woke(now);
            n.endpoint.handle_datagram(now, f.from, &f.bytes);
        }
        for n in &mut self.nodes {
            if n.endpoint
                .poll_timeout_settled()
                .is_some_and(|t| t <= self.now)
            {
                n.woke(self.now);
                n.endpoint.handle_timeout(self.now);
            }
        }
        self.drain();
        true
    }

    /// Steps until `done(self)` holds. Fails after `max_steps` steps (livelock or a stuck
    /// protocol), naming the seed.
    pub fn run_until(
        &mut self,
        max_steps: usize,
        mut done: impl FnMut(&mut Sim) -> bool,
    ) -> Result<(), SimError> {
        for _ in 0..max_steps {
            if done(self) {
                return Ok(());
            }
            if !self.step() {
                break;
            }
        }
        if done(self) {
            return Ok(());
        }
        Err(SimError {
            seed: self.seed,
            what: format!(
                "not settled after {max_steps} steps ({:?} virtual)",
                self.elapsed()
            ),
        })
    }

    /// Steps until no datagram is in flight and no endpoint has a reliable message pending.
    pub fn run_until_idle(&mut self, max_steps: usize) -> Result<(), SimError> {
        self.run_until(max_steps, |s| {
            s.drain();
            s.queue.is_empty() && s.nodes.iter().all(|n| n.endpoint.is_idle())
        })
    }

    /// Steps until `duration` of virtual time has passed; time jumps to the end when nothing
    /// is scheduled before it.
    pub fn run_for(&mut self, duration: Duration, max_steps: usize) -> Result<(), SimError> {
        let until = self.now + duration;
        for _ in 0..max_steps {
            self.drain();
            let next = [
                self.queue.peek().map(|Reverse(f)| f.at),
                self.nodes
                    .iter_mut()
                    .filter_map(|n| n.endpoint.poll_timeout_settled())
                    .min(),
            ]
            .into_iter()
            .flatten()
            .min();
            match next {
                Some(t) if t <= until => {
                    self.step();
                }
                _ => {
                    self.now = until;
                    return Ok(());
                }
            }
        }
        Err(SimError {
            seed: self.seed,
            what: format!("{max_steps} steps did not cover {duration:?}"),
        })
    }
}

/// Hostile datagrams, for abuse tests and flood benches: garbage, and valid framing around
/// hostile frames (random sessions, huge fragment counts, sequence numbers about to wrap,
/// acknowledgements of nothing), optionally dressed up as authenticated.
#[derive(Debug, Clone)]
pub struct Forger {
    rng: rand_pcg::Pcg64Mcg,
}

impl Forger {
    /// A forger whose choices all derive from `seed`.
    pub fn new(seed: u64) -> Self {
        Self {
            rng: rand_pcg::Pcg64Mcg::seed_from_u64(seed),
        }
    }

    /// The next pseudo-random number.
    pub fn next_u64(&mut self) -> u64 {
        self.rng.next_u64()
    }

    /// Writes one hostile datagram into `buf` (cleared first) and returns its length: a third
    /// are random bytes; the rest are well framed, carry `payload` in their data frames, and
    /// pass the checksum. With `fake_auth` they are flagged authenticated, with a packet
    /// number and a made-up tag: what an attacker without the cluster key can send.
    pub fn datagram(&mut self, buf: &mut Vec<u8>, payload: &[u8], fake_auth: bool) -> usize {
        use mesh_wire::{
            AckFrame, AckRanges, DataFrame, DatagramWriter, Fragment, Frame, Header, SeqRange,
        };
        if self.next_u64().is_multiple_of(3) {
            buf.clear();
            let len = (self.next_u64() % 1400) as usize;
            for _ in 0..len {
                let b = self.next_u64() as u8;
                buf.push(b);
            }
            return len;
        }
        let header = Header::new(self.next_u64() | 1, self.next_u64() % 2);
        let ranges = [SeqRange {
            start: self.next_u64() as u32,
            end: self.next_u64() as u32,
        }];
        let count = (self.next_u64() as u32).max(2);
        let frames = [
            Frame::Data(DataFrame {
                lazy_ack: false,
                channel: self.next_u64() as u8,
                seq: u32::MAX - (self.next_u64() % 4) as u32,
                message: self.next_u64() as u32,
                order: self
                    .next_u64()
                    .is_multiple_of(2)
                    .then(|| self.next_u64() as u32),
                fragment: Some(Fragment {
                    index: self.next_u64() as u32 % count,
                    count,
                }),
                payload,
            }),
            Frame::Data(DataFrame {
                lazy_ack: false,
                channel: 0,
                seq: self.next_u64() as u32,
                message: self.next_u64() as u32,
                order: None,
                fragment: None,
                payload,
            }),
            Frame::Ack(AckFrame {
                cumulative: self.next_u64() as u32,
                delay_micros: self.next_u64() as u32,
                ranges: AckRanges::List(&ranges),
            }),
        ];
        let (first, second) = (
            (self.next_u64() % 3) as usize,
            (self.next_u64() % 3) as usize,
        );
        let mut w = DatagramWriter::new(buf, header, 1200);
        let _ = w.push(&frames[first]);
        let _ = w.push(&frames[second]);
        let len = w.finish().len();
        if !fake_auth {
            return len;
        }
        buf[3] |= mesh_wire::FLAG_AUTH;
        let pn = self.next_u64();
        buf.extend_from_slice(&pn.to_le_bytes());
        for _ in 0..2 {
            let noise = self.next_u64();
            buf.extend_from_slice(&noise.to_le_bytes());
        }
        mesh_wire::reseal(buf);
        buf.len()
    }
}
