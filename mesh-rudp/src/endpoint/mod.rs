//! The sans-IO endpoint: all peers of one UDP socket. Here its state, sending commands,
//! timers and closing; [`recv`] takes datagrams in, [`transmit`] writes them out.

mod recv;
mod transmit;

use std::cell::Cell;
use std::collections::hash_map::Entry;
use std::collections::{BTreeSet, HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use mesh_wire::{SeqRange, UnreliableFrame, CLOSE_NORMAL, HEADER_LEN};
use tracing::{debug, trace_span};

use crate::config::EndpointConfig;
use crate::peer::{Added, KeepaliveGrid, Peer, RecvOutcome};
use crate::time::Tick;
use rand_core::{Rng, SeedableRng};

use crate::pool::BufferPool;
use crate::types::{
    ConfigError, Delivery, DownReason, EndpointStats, Event, MessageId, Payload, PeerStats,
    SendError,
};

/// Close datagrams owed to addresses we hold no state for (bounded).
const MAX_STRAY: usize = 64;

/// A datagram to send, written into the caller's buffer by [`Endpoint::poll_transmit`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Transmit {
    /// Where to send it.
    pub destination: SocketAddr,
    /// Its length: the datagram is `buf[..size]`.
    pub size: usize,
    /// A path-MTU probe, larger than what is known to pass to `destination`: send it on its
    /// own (not in one segmentation-offload batch with others, which the socket would refuse
    /// with it), and if the socket refuses it as too large for the link (`EMSGSIZE`), say so
    /// with [`Endpoint::path_refused`].
    pub probe: bool,
}

#[derive(Debug, Clone, Copy)]
struct Stray {
    to: SocketAddr,
    src: u64,
    dst: u64,
    reason: u8,
}

/// When an [`Endpoint`] starts: the monotonic instant its `now`s are measured from, and the
/// wall-clock time then (as time since the Unix epoch). Authenticated datagrams carry
/// wall-clock time in their packet numbers so that a receiver can refuse an old session
/// replayed at it; a simulation passes a virtual time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct StartTime {
    /// The monotonic reading.
    pub now: Instant,
    /// The wall-clock time at `now`, since the Unix epoch.
    pub unix: Duration,
}

impl StartTime {
    /// A start at `now`, when the wall clock read `unix`.
    pub fn new(now: Instant, unix: Duration) -> Self {
        Self { now, unix }
    }

    /// Reads both clocks of the OS (for drivers and tests: the endpoint never calls it).
    pub fn read() -> Self {
        let unix = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        Self::new(Instant::now(), unix)
    }
}

/// A reliable-UDP endpoint: the protocol state for every peer of one socket, with no I/O.
///
/// It never reads a clock, a socket or the OS random generator: time comes in as `now`,
/// datagrams come in through [`handle_datagram`](Self::handle_datagram), and everything it
/// wants done comes out of the `poll_*` methods. The same code therefore runs under the tokio
/// driver ([`crate::Transport`]) and under the deterministic simulator (feature `testing`).
///
/// # Methods by kind
/// - **input**: [`handle_datagram`](Self::handle_datagram), [`handle_timeout`](Self::handle_timeout);
/// - **commands**: [`send_reliable`](Self::send_reliable),
///   [`send_unreliable`](Self::send_unreliable), [`close_peer`](Self::close_peer),
///   [`close_all`](Self::close_all);
/// - **output**: [`poll_transmit`](Self::poll_transmit), [`poll_timeout`](Self::poll_timeout),
///   [`poll_event`](Self::poll_event);
/// - **getters**: [`stats`](Self::stats), [`peer_stats`](Self::peer_stats), ...
///
/// # Drain order
/// After any input or command, call [`poll_transmit`](Self::poll_transmit) until it returns
/// `None` (sending each datagram), then [`poll_event`](Self::poll_event) until `None`, then
/// arm a timer for [`poll_timeout`](Self::poll_timeout) and call
/// [`handle_timeout`](Self::handle_timeout) when it passes (a spurious call is harmless).
/// `now` must never go backwards.
///
/// # Example: two endpoints, in memory
/// ```
/// use std::time::Instant;
/// use bytes::Bytes;
/// use mesh_rudp::{Delivery, Endpoint, EndpointConfig, Event, StartTime};
///
/// let a_addr = "127.0.0.1:4001".parse().unwrap();
/// let b_addr = "127.0.0.1:4002".parse().unwrap();
/// let start = StartTime::read();
/// let mut a = Endpoint::new(EndpointConfig::default().seed(Some(1)).clone(), start).unwrap();
/// let mut b = Endpoint::new(EndpointConfig::default().seed(Some(2)).clone(), start).unwrap();
/// let now = start.now;
///
/// let id = a.send_reliable(now, b_addr, Bytes::from_static(b"hello"), Delivery::Unordered).unwrap();
/// let mut buf = Vec::new();
/// // Carry datagrams both ways until both sides are quiet.
/// for _ in 0..4 {
///     while let Some(t) = a.poll_transmit(now, &mut buf) {
///         b.handle_datagram(now, a_addr, &buf[..t.size]);
///     }
///     while let Some(t) = b.poll_transmit(now, &mut buf) {
///         a.handle_datagram(now, b_addr, &buf[..t.size]);
///     }
///     // b's ack is delayed a little to be coalesced: let its timer run.
///     if let Some(t) = b.poll_timeout() { b.handle_timeout(t.min(now + std::time::Duration::from_millis(2))); }
/// }
/// assert_eq!(
///     b.poll_event(),
///     Some(Event::Message { from: a_addr, data: Bytes::from_static(b"hello"), reliable: true })
/// );
/// assert_eq!(a.poll_event(), Some(Event::Delivered { peer: b_addr, id }));
/// ```
#[derive(Debug)]
pub struct Endpoint {
    config: EndpointConfig,
    rng: rand_pcg::Pcg64Mcg,
    /// Boxed: an idle peer then costs its state plus one pointer in the table, not a whole
    /// table slot (with the table's slack) of peer state.
    /// Keyed by what senders choose, so the hasher is seeded per process (foldhash: fast,
    /// minimally DoS-resistant); the map is bounded by `max_peers` either way.
    peers: HashMap<SocketAddr, Box<Peer>, foldhash::fast::RandomState>,
    /// Which peers have datagrams to send and when each needs its timer.
    sched: Schedule,
    events: VecDeque<Event>,
    incoming: usize,
    backlog: usize,
    stray: VecDeque<Stray>,
    next_message_id: u64,
    reassembly_total: usize,
    peer_tokens: Bucket,
    /// Replies to datagrams of unknown sessions, per second: a flood of them must not make
    /// this endpoint reflect a flood.
    stray_tokens: Bucket,
    closing: bool,
    stats: EndpointStats,
    ack_scratch: Vec<SeqRange>,
    /// Sequence numbers an incoming acknowledgement covers (kept here, not per peer).
    acked_scratch: Vec<u64>,
    delivered_scratch: Vec<MessageId>,
    /// Kept between datagrams so that delivering a message does not allocate a list for it.
    recv_scratch: RecvOutcome,
    /// Spare buffers for large messages.
    pool: BufferPool,
    /// The last packet number sent (with a cluster key): the clock in microseconds, or one
    /// more than the last, whichever is larger.
    last_pn: u64,
    /// Wall-clock microseconds at `clock_base`, to read the clock from `now`.
    unix_base: u64,
    /// The instant the endpoint's clock ([`Tick`]) counts from.
    clock_base: Instant,
    /// The last `Instant` turned into a tick, and its tick.
    clock_memo: Cell<(Instant, Tick)>,
    /// The last tick turned into an `Instant`, and its instant.
    deadline_memo: Cell<(Tick, Instant)>,
}

/// A random session id (never 0).
fn nonzero(rng: &mut rand_pcg::Pcg64Mcg) -> u64 {
    loop {
        let v = rng.next_u64();
        if v != 0 {
            return v;
        }
    }
}

/// The endpoint's agenda: peers with datagrams to send, in turn, and each peer's next deadline.
#[derive(Debug)]
struct Schedule {
    ready: VecDeque<SocketAddr>,
    timers: BTreeSet<(Tick, SocketAddr)>,
    /// When keep-alive probes go out.
    grid: KeepaliveGrid,
    /// How much later than its filed timer a peer's deadline may be and still be left filed
    /// when the timers are settled (see [`Endpoint::poll_timeout_settled`]).
    slack: Duration,
}

/// The most a settled timer may be early: [`Schedule::slack`] is this, or an eighth of
/// `min_rto` if that is less.
const SETTLE_SLACK: Duration = Duration::from_millis(1);

impl Schedule {
    /// Re-evaluates a peer after a change: transmit readiness and its timer. For a caller that
    /// holds the peer already (no second lookup).
    fn touch(&mut self, config: &EndpointConfig, p: &mut Peer, addr: SocketAddr, now: Tick) {
        self.mark_ready(p, addr, now);
        self.retime(p, addr, config);
    }

    /// Puts the peer in the transmit queue if it has something to send and is not there.
    fn mark_ready(&mut self, p: &mut Peer, addr: SocketAddr, now: Tick) {
        if !p.in_ready && p.wants_transmit(now) {
            p.in_ready = true;
            self.ready.push_back(addr);
        }
    }

    /// [`touch`](Self::touch) after a change that moved no deadline but added `added` (see
    /// [`Peer::queue_reliable`]): the timer filed is earlier than every deadline the peer had,
    /// so it is refiled only if `added` comes before it (a send computes no deadline).
    fn touch_added(
        &mut self,
        config: &EndpointConfig,
        p: &mut Peer,
        addr: SocketAddr,
        now: Tick,
        added: Added,
    ) {
        self.mark_ready(p, addr, now);
        match (p.timer, added) {
            (Some(filed), None) => self.check_filed(p, filed, config),
            (Some(filed), Some(t)) if filed <= t => self.check_filed(p, filed, config),
            _ => self.retime(p, addr, config),
        }
    }

    /// In debug builds (every test), that a timer left as it was is no later than the peer's
    /// deadline: what [`touch_added`](Self::touch_added) relies on.
    fn check_filed(&self, p: &Peer, filed: Tick, config: &EndpointConfig) {
        debug_assert!(
            filed <= p.deadline(config, &self.grid),
            "a send moved the peer's deadline before its filed timer"
        );
    }

    /// Files the peer's next deadline in `timers` if it moved earlier. A deadline that moved
    /// later (an acknowledgement cleared the retransmission timer, a datagram pushed the
    /// keep-alive back) stays filed where it was: it fires early, finds nothing due, and is
    /// filed anew then. Most datagrams move the deadline later, so this saves a removal and an
    /// insertion in the timer set for nearly every one, at the cost of an occasional spurious
    /// wake-up (at most one per retransmission timeout or keep-alive interval per peer).
    fn retime(&mut self, p: &mut Peer, addr: SocketAddr, config: &EndpointConfig) {
        let deadline = p.deadline(config, &self.grid);
        match p.timer {
            Some(filed) if filed <= deadline => return,
            Some(filed) => {
                self.timers.remove(&(filed, addr));
            }
            None => {}
        }
        p.timer = Some(deadline);
        self.timers.insert((deadline, addr));
    }
}

impl Endpoint {
    /// An endpoint with no peers, created at `start` (the endpoint reads no clock: time comes
    /// in with every call, and the wall-clock time once, here).
    pub fn new(config: EndpointConfig, start: StartTime) -> Result<Self, ConfigError> {
        config.validate()?;
        let unix_base = u64::try_from(start.unix.as_micros()).unwrap_or(u64::MAX);
        let seed = config.seed.unwrap_or(unix_base);
        let grid = KeepaliveGrid::new(config.keepalive(), Tick::ZERO, start.unix);
        let slack = SETTLE_SLACK.min(config.min_rto / 8);
        Ok(Self {
            rng: rand_pcg::Pcg64Mcg::seed_from_u64(seed),
            pool: BufferPool::new(config.recycle_bytes),
            peer_tokens: Bucket::default(),
            stray_tokens: Bucket::default(),
            config,
            peers: HashMap::default(),
            sched: Schedule {
                ready: VecDeque::new(),
                timers: BTreeSet::new(),
                grid,
                slack,
            },
            events: VecDeque::new(),
            incoming: 0,
            backlog: 0,
            stray: VecDeque::new(),
            next_message_id: 0,
            reassembly_total: 0,
            closing: false,
            stats: EndpointStats::default(),
            ack_scratch: Vec::new(),
            acked_scratch: Vec::new(),
            delivered_scratch: Vec::new(),
            recv_scratch: RecvOutcome::default(),
            last_pn: 0,
            // Packet numbers carry wall-clock time so a receiver can refuse old sessions
            // replayed at it.
            unix_base,
            clock_base: start.now,
            clock_memo: Cell::new((start.now, Tick::ZERO)),
            deadline_memo: Cell::new((Tick::ZERO, start.now)),
        })
    }

    /// A random non-zero id (a session id, a stray's reply).
    fn next_id(&mut self) -> u64 {
        nonzero(&mut self.rng)
    }

    /// `now` on the endpoint's clock. A driver passes the same `now` to several calls in a
    /// row; the last conversion is kept (each costs a subtraction of `Instant`s, ~50
    /// instructions).
    fn tick(&self, now: Instant) -> Tick {
        let (at, tick) = self.clock_memo.get();
        if at == now {
            return tick;
        }
        let tick = Tick::since(self.clock_base, now);
        self.clock_memo.set((now, tick));
        tick
    }

    /// `t` as an `Instant`; the last conversion is kept, as in [`tick`](Self::tick).
    fn instant(&self, t: Tick) -> Instant {
        let (tick, at) = self.deadline_memo.get();
        if tick == t {
            return at;
        }
        let at = t.instant(self.clock_base);
        self.deadline_memo.set((t, at));
        at
    }

    fn unix_micros(&self, now: Tick) -> u64 {
        self.unix_base.saturating_add(now.as_nanos() / 1000)
    }

    fn next_packet_number(&mut self, now: Tick) -> u64 {
        self.last_pn = (self.last_pn + 1).max(self.unix_micros(now));
        self.last_pn
    }

    /// The configuration.
    pub fn config(&self) -> &EndpointConfig {
        &self.config
    }

    /// Largest unreliable message that fits one datagram.
    pub fn max_unreliable_size(&self) -> usize {
        let trailer = if self.config.cluster_key.is_some() {
            mesh_wire::AUTH_TRAILER_LEN
        } else {
            0
        };
        self.config.mtu - HEADER_LEN - UnreliableFrame::OVERHEAD - trailer
    }

    /// Queues a reliable message. The returned id comes back in exactly one
    /// [`Event::Delivered`] or [`Event::Failed`].
    pub fn send_reliable(
        &mut self,
        now: Instant,
        peer: SocketAddr,
        data: impl Into<Payload>,
        delivery: Delivery,
    ) -> Result<MessageId, SendError> {
        self.send_reliable_kept(now, peer, &mut Some(data.into()), delivery, false)
    }

    /// [`send_reliable`](Self::send_reliable) for a message whose acknowledgement nobody waits
    /// on soon, such as the answer to a request (the requester's next message can carry it):
    /// the peer may hold the acknowledgement up to 5 ms to send it with something else, which
    /// saves a datagram per exchange. Its delivery is still reported.
    pub fn send_reliable_lazy(
        &mut self,
        now: Instant,
        peer: SocketAddr,
        data: impl Into<Payload>,
        delivery: Delivery,
    ) -> Result<MessageId, SendError> {
        self.send_reliable_kept(now, peer, &mut Some(data.into()), delivery, true)
    }

    /// [`send_reliable`](Self::send_reliable), or [`send_reliable_lazy`] with `lazy`, that
    /// takes `data` only when it queues it: on [`SendError::QueueFull`] it is left in place,
    /// for the caller to send once there is room (an empty `data` reads as a full queue).
    /// One look at the peer instead of [`has_room`](Self::has_room)'s and the send's.
    ///
    /// [`send_reliable_lazy`]: Self::send_reliable_lazy
    pub(crate) fn send_reliable_kept(
        &mut self,
        now: Instant,
        peer: SocketAddr,
        data: &mut Option<Payload>,
        delivery: Delivery,
        lazy: bool,
    ) -> Result<MessageId, SendError> {
        let now = self.tick(now);
        if self.closing {
            return Err(SendError::Closed);
        }
        let Some(len) = data.as_ref().map(Payload::len) else {
            return Err(SendError::QueueFull);
        };
        if len > self.config.max_message_size {
            return Err(SendError::TooLarge {
                size: len,
                limit: self.config.max_message_size,
            });
        }
        let id = MessageId(self.next_message_id);
        let (p, sched, config) = self.peer_for_send(now, peer)?;
        if !p.queue_has_room(len, config) {
            return Err(SendError::QueueFull);
        }
        let data = data.take().expect("looked at above");
        let added = p.queue_reliable(now, id, data, delivery, lazy, config);
        sched.touch_added(config, p, peer, now, added);
        self.next_message_id += 1;
        Ok(id)
    }

    /// Whether a reliable send of `len` bytes to `peer` would not fail with
    /// [`SendError::QueueFull`] now. A send refused for another reason (too large, closing)
    /// counts as having room: waiting would not change its fate.
    pub fn has_room(&self, peer: SocketAddr, len: usize) -> bool {
        self.closing
            || len > self.config.max_message_size
            || self
                .peers
                .get(&peer)
                .is_none_or(|p| p.queue_has_room(len, &self.config))
    }

    /// Queues an unreliable message: sent once, never retransmitted, maybe lost. It must fit
    /// one datagram ([`max_unreliable_size`](Self::max_unreliable_size)). When the peer's
    /// unreliable queue is full the oldest queued message is dropped (counted).
    pub fn send_unreliable(
        &mut self,
        now: Instant,
        peer: SocketAddr,
        data: Bytes,
    ) -> Result<(), SendError> {
        let now = self.tick(now);
        if self.closing {
            return Err(SendError::Closed);
        }
        if data.len() > self.max_unreliable_size() {
            return Err(SendError::TooLarge {
                size: data.len(),
                limit: self.max_unreliable_size(),
            });
        }
        let (p, sched, config) = self.peer_for_send(now, peer)?;
        let (kept, added) = p.queue_unreliable(now, data, config);
        sched.touch_added(config, p, peer, now, added);
        if !kept {
            self.stats.dropped_unreliable += 1;
        }
        Ok(())
    }

    /// The peer to queue a message to, its session opened if there is none (one lookup: this
    /// runs for every message sent). Returned with the fields a send needs besides it.
    fn peer_for_send(
        &mut self,
        now: Tick,
        peer: SocketAddr,
    ) -> Result<(&mut Peer, &mut Schedule, &EndpointConfig), SendError> {
        let n = self.peers.len();
        let p = match self.peers.entry(peer) {
            Entry::Occupied(e) => e.into_mut(),
            Entry::Vacant(e) => {
                if n >= self.config.max_peers {
                    return Err(SendError::TooManyPeers);
                }
                let id = nonzero(&mut self.rng);
                self.stats.peers = n + 1;
                e.insert(Box::new(Peer::new(
                    id,
                    0,
                    self.config.ceiling_for(peer),
                    now,
                    &self.config,
                )))
            }
        };
        Ok((p, &mut self.sched, &self.config))
    }

    fn update_timer(&mut self, addr: SocketAddr) {
        if let Some(p) = self.peers.get_mut(&addr) {
            self.sched.retime(p, addr, &self.config);
        }
    }

    fn take_new_peer_token(&mut self, now: Tick) -> bool {
        self.peer_tokens.take(now, self.config.new_peers_per_second)
    }

    fn push_stray(&mut self, s: Stray) {
        if self.stray.len() < MAX_STRAY {
            self.stray.push_back(s);
        }
    }

    /// Runs the timers that are due: delayed acks, retransmissions, keep-alives, timeouts.
    pub fn handle_timeout(&mut self, now: Instant) {
        let now = self.tick(now);
        // Take every due peer first: each is processed once per call, even if its next
        // deadline is also already due.
        let mut due = Vec::new();
        while let Some(&(at, addr)) = self.sched.timers.first() {
            if at > now {
                break;
            }
            self.sched.timers.pop_first();
            due.push(addr);
        }
        for addr in due {
            let _span = trace_span!("peer", peer = %addr).entered();
            let Some(p) = self.peers.get_mut(&addr) else {
                continue;
            };
            p.timer = None;
            match p.on_timeout(now, &self.config, &self.sched.grid) {
                None => {}
                Some(DownReason::Timeout) => {
                    debug!(peer = %addr, "peer timed out");
                    self.peer_down(addr, DownReason::Timeout);
                    continue;
                }
                Some(reason) => {
                    // No Close to the peer: it would take that for this node leaving. Our next
                    // datagram opens a new session, which it takes for a reset.
                    debug!(peer = %addr, ?reason, "session ended");
                    self.peer_down(addr, reason);
                    continue;
                }
            }
            self.sched.touch(&self.config, p, addr, now);
        }
    }

    /// Removes a peer's state, failing everything pending to it.
    fn peer_down(&mut self, addr: SocketAddr, reason: DownReason) {
        let Some(p) = self.peers.remove(&addr) else {
            return;
        };
        if let Some(t) = p.timer {
            self.sched.timers.remove(&(t, addr));
        }
        self.reassembly_total = self.reassembly_total.saturating_sub(p.reassembly_bytes);
        let error = match reason {
            DownReason::Timeout => SendError::Timeout,
            DownReason::LocalClose if self.closing => SendError::Closed,
            other => SendError::PeerGone(other),
        };
        let mut ids: Vec<MessageId> = p.pending_ids().collect();
        ids.sort_unstable();
        for id in ids {
            self.stats.messages_failed += 1;
            self.events.push_back(Event::Failed {
                peer: addr,
                id,
                error,
            });
        }
        self.events
            .push_back(Event::PeerDown { peer: addr, reason });
        self.stats.peers = self.peers.len();
    }

    fn close_peer_with(&mut self, addr: SocketAddr, code: u8, reason: DownReason) {
        if let Some(p) = self.peers.get(&addr) {
            let (src, dst) = (p.local_id, p.remote_id);
            self.push_stray(Stray {
                to: addr,
                src,
                dst,
                reason: code,
            });
            self.peer_down(addr, reason);
        }
    }

    /// The socket refused a datagram of `size` bytes to `peer` as larger than the link
    /// carries (`EMSGSIZE`): for a [`Transmit::probe`], the path-MTU search moves on at once
    /// instead of waiting for the probe to be lost.
    pub fn path_refused(&mut self, now: Instant, peer: SocketAddr, size: usize) {
        let now = self.tick(now);
        if let Some(p) = self.peers.get_mut(&peer) {
            p.on_refused(size, now);
            self.sched.touch(&self.config, p, peer, now);
        }
    }

    /// Ends the session with a peer now: tells it so, and fails what is still pending to it.
    pub fn close_peer(&mut self, peer: SocketAddr) {
        self.close_peer_with(peer, CLOSE_NORMAL, DownReason::LocalClose);
    }

    /// Refuses new sends from now on; what is queued keeps going. Use
    /// [`is_idle`](Self::is_idle) to see when all is acknowledged, then
    /// [`close_all`](Self::close_all).
    pub fn start_closing(&mut self) {
        self.closing = true;
    }

    /// Closes every session now, failing what is still pending (each gets
    /// [`Event::Failed`] with [`SendError::Closed`]).
    pub fn close_all(&mut self) {
        self.closing = true;
        let addrs: Vec<SocketAddr> = self.peers.keys().copied().collect();
        for a in addrs {
            self.close_peer_with(a, CLOSE_NORMAL, DownReason::LocalClose);
        }
    }

    /// Whether no reliable message is queued or unacknowledged to any peer.
    pub fn is_idle(&self) -> bool {
        self.peers.values().all(|p| !p.has_outstanding())
    }

    /// Messages queued or in flight, over all peers.
    pub fn pending_messages(&self) -> usize {
        self.peers.values().map(|p| p.pending_ids().count()).sum()
    }

    /// The earliest instant [`handle_timeout`](Self::handle_timeout) has work to do.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let &(t, _) = self.sched.timers.first()?;
        Some(self.instant(t))
    }

    /// [`poll_timeout`](Self::poll_timeout), after refiling the earliest timers that moved
    /// later since they were filed (an acknowledgement cleared a retransmission timer, a
    /// datagram pushed a keep-alive back: see `Schedule::retime`). For a caller about to sleep
    /// until then: a stale timer would wake it for nothing (an idle node did, a retransmission
    /// timeout after every keep-alive probe).
    ///
    /// A timer whose peer's deadline moved later by less than a millisecond (an eighth of
    /// `min_rto`, if less) stays where it is: the instant returned may be that much early
    /// (a call of `handle_timeout` then finds nothing due, and refiles it). A request/response
    /// exchange pushes its retransmission deadline back by a round trip each time; refiling
    /// it each time (a removal and an insertion in the timer set, and the caller's own timer
    /// moved) cost a serving process about 3 % of its instructions per round trip (callgrind).
    pub fn poll_timeout_settled(&mut self) -> Option<Instant> {
        let t = self.settle_timers()?;
        Some(self.instant(t))
    }

    /// The earliest timer, after refiling those that moved later (see
    /// [`poll_timeout_settled`](Self::poll_timeout_settled)).
    fn settle_timers(&mut self) -> Option<Tick> {
        // The peer just refiled, whose deadline is known: no second look if it is first again
        // (the common case: one peer, its timer pushed back by the exchange just done).
        let mut refiled = None;
        while let Some(&(filed, addr)) = self.sched.timers.first() {
            if refiled == Some(addr) {
                return Some(filed);
            }
            let Some(p) = self.peers.get_mut(&addr) else {
                self.sched.timers.pop_first();
                continue;
            };
            let due = p.deadline(&self.config, &self.sched.grid);
            if due <= filed + self.sched.slack {
                return Some(filed);
            }
            // Strictly later each time: every timer is refiled at most once.
            self.sched.timers.pop_first();
            p.timer = Some(due);
            self.sched.timers.insert((due, addr));
            refiled = Some(addr);
        }
        None
    }

    /// The next event for the application.
    pub fn poll_event(&mut self) -> Option<Event> {
        let e = self.events.pop_front()?;
        if matches!(e, Event::Message { .. }) {
            self.incoming -= 1;
        }
        Some(e)
    }

    /// Tells the endpoint how many received messages the layer above holds and has not
    /// consumed yet. They count against `max_incoming_messages` with the undrained events, so a
    /// slow application slows its senders instead of growing a queue.
    pub fn set_backlog(&mut self, messages: usize) {
        self.backlog = messages;
    }

    /// Counters over all peers.
    pub fn stats(&self) -> EndpointStats {
        let mut s = self.stats.clone();
        s.peers = self.peers.len();
        s.reassembly_bytes = self.reassembly_total;
        s.recycled_buffers = self.pool.reused();
        s
    }

    /// Counts a send the socket refused for lack of room (the transport's I/O).
    #[cfg(feature = "tokio")]
    pub(crate) fn count_held_send(&mut self) {
        self.stats.sends_held += 1;
    }

    /// Counters and estimates for one peer, if it has state.
    pub fn peer_stats(&self, peer: SocketAddr) -> Option<PeerStats> {
        self.peers
            .get(&peer)
            .map(|p| p.snapshot_stats(&self.config))
    }

    /// Peers with state.
    pub fn peers(&self) -> impl Iterator<Item = SocketAddr> + '_ {
        self.peers.keys().copied()
    }

    /// Forgets a peer at once, as if it had timed out (the layer above learned from elsewhere
    /// that it is gone). Pending messages fail with [`SendError::Timeout`].
    pub fn mark_down(&mut self, peer: SocketAddr) {
        self.peer_down(peer, DownReason::Timeout);
    }
}

/// A budget of `per_second` events, refilled each second.
#[derive(Debug, Default)]
struct Bucket {
    tokens: u32,
    refilled: Option<Tick>,
}

impl Bucket {
    fn take(&mut self, now: Tick, per_second: u32) -> bool {
        if self
            .refilled
            .is_none_or(|t| now.saturating_duration_since(t).as_secs() >= 1)
        {
            self.tokens = per_second;
            self.refilled = Some(now);
        }
        if self.tokens == 0 {
            return false;
        }
        self.tokens -= 1;
        true
    }
}
