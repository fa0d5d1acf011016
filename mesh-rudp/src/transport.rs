//! The tokio driver: one UDP socket, one timer, one [`Endpoint`].

use std::collections::VecDeque;
use std::future::Future;
use std::io::{self, IoSliceMut};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::Bytes;
use parking_lot::Mutex;
use thiserror::Error;
use tokio::net::UdpSocket;
use tokio::sync::{oneshot, Notify};
use tokio::time::{Instant, Sleep};
use tracing::debug;

use crate::{
    ConfigError, Delivery, DownReason, Endpoint, EndpointConfig, EndpointStats, Event, MessageId,
    Payload, PeerStats, SendError, StartTime,
};

/// Fewest datagrams a read asks for (see `Driver::batch`); two or more, so that a read that
/// gets fewer than it asked for knows the queue is empty.
const MIN_BATCH: usize = 4;
/// Most `recvmmsg` calls per turn of the driver before it flushes output.
const RECV_CALLS: usize = 8;
/// Most turns of the driver per poll before it yields to other tasks (a socket that never
/// runs dry must not starve them).
const DRIVE_TURNS: usize = 16;
/// How far ahead the driver's timer is set when the endpoint needs no timer.
const IDLE_TIMER: Duration = Duration::from_secs(3600);
/// Bytes read within one turn of the driver after which it sends what it owes (the
/// acknowledgements) before reading on, rather than once per turn (up to 16 MiB read, which a
/// sender's window must then cover). A third of the window of a socket granted 8 MiB; with a
/// smaller window the sender pauses, the socket drains, and the turn's end acknowledges.
/// Measured with 1 and 16 MiB messages: 1 MiB and 512 KiB no faster, 4 MiB slower, and
/// acknowledging every third of a 312 KiB window (Linux's default `rmem_max`) slower too.
const ACK_FLUSH_BYTES: usize = 2 << 20;
/// Bytes a read is sized to fill (see `next_batch`).
const RECV_BYTES: usize = 512 << 10;
/// Bytes of one receive slot: room for a GRO-coalesced run of datagrams.
const RECV_SLOT: usize = 65_536;
/// Most datagrams gathered before they are handed to the socket.
const SEND_BATCH: usize = 256;
/// Most bytes of one GSO send.
const MAX_GSO_BYTES: usize = 65_000;
/// Most datagram runs held for a socket that would block.
const MAX_BLOCKED_TX: usize = 4096;
/// Peer-down notices kept for [`Transport::next_peer_down`] (oldest dropped past this).
const MAX_PEER_EVENTS: usize = 1024;

/// Settings of a [`Transport`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct TransportConfig {
    /// The protocol settings.
    pub endpoint: EndpointConfig,
    /// Requested socket send and receive buffer size, bytes. Default 8 MiB (the kernel may
    /// grant less): with the default ~208 KiB, bursts lose ~2 % here.
    ///
    /// What the kernel grants also bounds how much a sender keeps in flight toward one peer
    /// (three quarters of it, and never more than [`EndpointConfig::max_cwnd_bytes`]), so a
    /// fast sender does not overflow a slower receiver's socket: the receive window, taken
    /// from our own socket since the peers of a mesh run alike. On Linux the grant is capped
    /// by `net.core.rmem_max` (often 4 MiB, which the kernel doubles: a 6 MiB window).
    pub socket_buffer: usize,
    /// How long [`Transport::close`] waits for queued messages to be acknowledged. Default 2 s.
    pub close_timeout: Duration,
    /// Answer a raw 4-byte `ping` datagram with `PONG\n`, as the original did (so `nc -u`
    /// works). Default false.
    pub answer_raw_ping: bool,
    /// Sends closer together than this are corked: the first goes out at once from the
    /// sender's task; the ones that follow are left to the driver, which runs once the sender
    /// yields and packs them into full datagrams. A lone send or a request (further apart than
    /// this) is never held. Default 5 µs; zero turns corking off.
    pub cork: Duration,
}

impl Default for TransportConfig {
    fn default() -> Self {
        Self {
            endpoint: EndpointConfig::default(),
            socket_buffer: 8 << 20,
            close_timeout: Duration::from_secs(2),
            answer_raw_ping: false,
            cork: Duration::from_micros(5),
        }
    }
}

/// A message received by a [`Transport`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Received {
    /// The sender's address.
    pub from: SocketAddr,
    /// The message.
    pub data: Bytes,
    /// Whether it came reliably.
    pub reliable: bool,
}

/// What [`Transport::close`] could not deliver.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct CloseReport {
    /// Reliable messages still unacknowledged when the close timeout ran out; each also failed
    /// its `send` future with [`SendError::Closed`].
    pub undelivered: Vec<(SocketAddr, MessageId)>,
}

/// Errors of the tokio driver.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum TransportError {
    /// The socket could not be created or bound.
    #[error("socket: {0}")]
    Io(#[from] io::Error),
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The message was refused or not acknowledged.
    #[error(transparent)]
    Send(#[from] SendError),
}

#[derive(Debug)]
struct State {
    endpoint: Endpoint,
    waiters: rustc_hash::FxHashMap<MessageId, oneshot::Sender<Result<(), SendError>>>,
    inbox: VecDeque<Received>,
    peer_events: VecDeque<(SocketAddr, DownReason)>,
    failed_on_close: Vec<(SocketAddr, MessageId)>,
    blocked_tx: VecDeque<Run>,
    /// Datagrams gathered for one batch of sends, back to back.
    out: Vec<u8>,
    /// `(destination, length)` of each datagram of the batch; its first `out_heads[i]` bytes
    /// are in `out`, the rest is `out_tails[i]` (a payload sent from where it lies).
    out_meta: Vec<(SocketAddr, usize)>,
    out_heads: Vec<usize>,
    out_tails: Vec<Option<Bytes>>,
    shutdown: bool,
    /// The parked driver's waker; a command takes it when the driver must act sooner than it
    /// planned (an earlier timer, output to retry, shutdown).
    driver_waker: Option<Waker>,
    /// The driver's timer. A command that needs it sooner resets it in place: the timer keeps
    /// the waker of the driver's last poll, so the driver is not woken just to re-arm it.
    timer: Pin<Box<Sleep>>,
    /// When `timer` fires.
    timer_at: std::time::Instant,
    /// Whether the parked driver waits for the socket to take blocked output.
    armed_writable: bool,
    /// When a send last flushed from its own task.
    last_inline_flush: Option<std::time::Instant>,
    /// A send left its datagrams for the driver to flush (packed with those that follow).
    flush_wanted: bool,
}

/// A run of equal-sized datagrams to one destination (the last may be shorter): one GSO send.
#[derive(Debug)]
struct Run {
    to: SocketAddr,
    bytes: Vec<u8>,
    segment: usize,
}

/// A hook that may take a received message before it is queued for [`Transport::recv`]: it
/// returns `None` when it took the message, or gives it back; see
/// [`Transport::set_intercept`].
pub type Intercept = Arc<dyn Fn(Received) -> Option<Received> + Send + Sync>;

struct Shared {
    state: Mutex<State>,
    intercept: parking_lot::RwLock<Option<Intercept>>,
    socket: UdpSocket,
    /// Batched I/O (GSO for sends, GRO and `recvmmsg` for receives) where the OS has it.
    udp: quinn_udp::UdpSocketState,
    /// Wakes whoever waits for sends to progress (queue space, acknowledgements for close).
    progress: Notify,
    /// Tasks waiting on `progress` (see [`ProgressWait`]); with none, an acknowledgement
    /// notifies nobody (a notification takes a lock, on every acknowledgement otherwise).
    progress_waiters: AtomicUsize,
    /// Wakes [`Transport::recv`].
    arrived: Notify,
    /// Wakes [`Transport::next_peer_down`].
    peer_down: Notify,
    config: TransportConfig,
}

/// Reliable UDP over one tokio socket.
///
/// The protocol work runs in the caller's task for sends and in the [`Driver`] for receives
/// and timers; both share the [`Endpoint`] under a mutex that is never held across an
/// `.await`. Sends go straight to the socket from the calling task, so a request costs no
/// hand-off to another thread.
///
/// [`bind`](Self::bind) spawns the driver as a task of its own and queues what it receives for
/// [`recv`](Self::recv). [`bind_with_driver`](Self::bind_with_driver) hands the driver to the
/// caller instead, to poll on the task that consumes the messages: a message then goes from
/// the socket to its consumer, and the consumer's answer back to the socket, without waking
/// another task.
#[derive(Debug)]
pub struct Transport {
    shared: Arc<Shared>,
    local_addr: SocketAddr,
    driver: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

/// Drives a [`Transport`] made by [`Transport::bind_with_driver`]: reads the socket, runs the
/// timers, retries blocked output, and yields the received messages.
///
/// Poll it from one task, for as long as the transport is open: nothing is received,
/// acknowledged or retransmitted while nobody polls it. The acknowledgement of a message it
/// returns is sent by the next poll (or carried by an answer sent before it).
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use mesh_rudp::{Transport, TransportConfig};
///
/// let a = Transport::bind("127.0.0.1:0".parse()?, TransportConfig::default()).await?;
/// let (b, mut driver) =
///     Transport::bind_with_driver("127.0.0.1:0".parse()?, TransportConfig::default()).await?;
/// let to = b.local_addr();
/// let sender = tokio::spawn(async move { a.send(to, &b"hi"[..]).await.map(|()| a) });
/// let msg = driver.recv().await.expect("open");
/// assert_eq!(&msg.data[..], b"hi");
/// // Go on driving while `b` closes: the driver ends when the transport is closed.
/// let (_report, ()) = tokio::join!(b.close(), async {
///     while driver.recv().await.is_some() {}
/// });
/// sender.await??.close().await;
/// # Ok(()) }
/// ```
pub struct Driver {
    shared: Arc<Shared>,
    storage: Vec<u8>,
    metas: Vec<quinn_udp::RecvMeta>,
    /// Datagrams the next read asks for: twice what the last one got, within
    /// `MIN_BATCH..=metas.len()`. Preparing a slot costs even when nothing fills it, so a
    /// request-response exchange asks for few and a burst quickly for many.
    batch: usize,
}

impl std::fmt::Debug for Driver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Driver").finish_non_exhaustive()
    }
}

/// The most bytes a sender keeps unacknowledged toward a peer, given the receive buffer the
/// kernel granted this socket (`granted`, as `SO_RCVBUF` reads back): three quarters of it,
/// the rest left for the kernel's per-datagram bookkeeping, which it counts against the same
/// buffer. A sender that never has more in flight than the receiver's socket can queue cannot
/// overflow it, however slowly the receiver reads: TCP's receive window, for a receiver that
/// is always reading. Peers of one mesh run alike, so our buffer stands for theirs. Never
/// below four of the largest datagrams, so a tiny buffer slows a transfer rather than stalls it.
fn receive_window(granted: usize, config: &EndpointConfig) -> usize {
    let largest = config.mtu.max(config.loopback_mtu.unwrap_or(0));
    (granted / 4 * 3).max(4 * largest)
}

fn new_socket(addr: SocketAddr, buffer: usize) -> io::Result<UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    // The kernel caps these; asking for more is harmless.
    let _ = socket.set_recv_buffer_size(buffer);
    let _ = socket.set_send_buffer_size(buffer);
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    UdpSocket::from_std(socket.into())
}

/// quinn-udp asks the kernel for a receive timestamp, the TOS byte and the destination address
/// of every datagram; the driver reads none of them, and each costs the kernel a control message
/// per datagram (the timestamp, a clock read too). Turned off where the OS allows; GRO stays.
#[cfg(target_os = "linux")]
fn quiet_ancillary_data(socket: &UdpSocket, local: SocketAddr) {
    use nix::sys::socket::{setsockopt, sockopt};
    let off = |r: nix::Result<()>| {
        if let Err(e) = r {
            debug!(error = %e, "ancillary data left on");
        }
    };
    off(setsockopt(socket, sockopt::ReceiveTimestampns, &false));
    if local.is_ipv4() {
        off(setsockopt(socket, sockopt::IpRecvTos, &false));
        off(setsockopt(socket, sockopt::Ipv4PacketInfo, &false));
    } else {
        off(setsockopt(socket, sockopt::Ipv6RecvTClass, &false));
        off(setsockopt(socket, sockopt::Ipv6RecvPacketInfo, &false));
        // Set for the IPv4-mapped side of a dual-stack socket; refused on a v6-only one.
        let _ = setsockopt(socket, sockopt::IpRecvTos, &false);
    }
}

#[cfg(not(target_os = "linux"))]
fn quiet_ancillary_data(_: &UdpSocket, _: SocketAddr) {}

/// Where a queued message's outcome arrives: `Ok` once the peer acknowledged all of it.
pub type Outcome = oneshot::Receiver<Result<(), SendError>>;

/// How [`Transport::queue`] sends one message. `Default` (and [`new`](Self::new)): unordered,
/// acknowledged at once, outcome tracked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct QueueOptions {
    /// Ordered on a channel, or not.
    pub delivery: Delivery,
    /// Ask the receiver to hold the acknowledgement a few milliseconds for something else to
    /// carry (an answer nobody waits on soon): see [`Endpoint::send_reliable_lazy`].
    pub lazy_ack: bool,
    /// Return a receiver of the outcome. Untracked messages register no waiter.
    pub track: bool,
}

impl Default for QueueOptions {
    fn default() -> Self {
        Self::new()
    }
}

impl From<Delivery> for QueueOptions {
    fn from(delivery: Delivery) -> Self {
        Self::new().delivery(delivery)
    }
}

impl QueueOptions {
    /// Unordered, acknowledged at once, tracked.
    pub const fn new() -> Self {
        Self {
            delivery: Delivery::Unordered,
            lazy_ack: false,
            track: true,
        }
    }

    /// Sets [`delivery`](Self::delivery).
    #[must_use]
    pub const fn delivery(mut self, delivery: Delivery) -> Self {
        self.delivery = delivery;
        self
    }

    /// Sets [`lazy_ack`](Self::lazy_ack).
    #[must_use]
    pub const fn lazy_ack(mut self, lazy: bool) -> Self {
        self.lazy_ack = lazy;
        self
    }

    /// Sets [`track`](Self::track).
    #[must_use]
    pub const fn track(mut self, track: bool) -> Self {
        self.track = track;
        self
    }
}

/// A seed from the OS, for the endpoint's session ids (the core itself never asks the OS).
/// Without one, the endpoint derives its seed from the wall-clock time it starts at.
fn os_seed() -> Option<u64> {
    getrandom::u64()
        .inspect_err(|e| debug!(error = %e, "no OS randomness; seeding from the clock"))
        .ok()
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("intercept", &self.intercept.read().is_some())
            .finish_non_exhaustive()
    }
}

impl Transport {
    /// Binds a socket on `addr` (port 0 for any) and spawns the driver task on the current
    /// tokio runtime.
    pub async fn bind(addr: SocketAddr, config: TransportConfig) -> Result<Self, TransportError> {
        let socket = new_socket(addr, config.socket_buffer)?;
        Self::with_socket(socket, config)
    }

    /// Binds a socket on `addr` (port 0 for any) and returns its [`Driver`] for the caller to
    /// poll: received messages come from [`Driver::recv`], never from [`recv`](Self::recv).
    pub async fn bind_with_driver(
        addr: SocketAddr,
        config: TransportConfig,
    ) -> Result<(Self, Driver), TransportError> {
        let socket = new_socket(addr, config.socket_buffer)?;
        Self::with_socket_and_driver(socket, config)
    }

    /// Wraps an already bound socket and spawns its driver task.
    pub fn with_socket(socket: UdpSocket, config: TransportConfig) -> Result<Self, TransportError> {
        let (t, driver) = Self::with_socket_and_driver(socket, config)?;
        *t.driver.lock() = Some(tokio::spawn(driver.run()));
        Ok(t)
    }

    /// Wraps an already bound socket and returns its [`Driver`] for the caller to poll.
    pub fn with_socket_and_driver(
        socket: UdpSocket,
        mut config: TransportConfig,
    ) -> Result<(Self, Driver), TransportError> {
        if config.endpoint.seed.is_none() {
            config.endpoint.seed(os_seed());
        }
        if let Ok(granted) = socket2::SockRef::from(&socket).recv_buffer_size() {
            let window = receive_window(granted, &config.endpoint);
            if window < config.endpoint.max_cwnd_bytes {
                config.endpoint.max_cwnd_bytes(window);
            }
        }
        let endpoint = Endpoint::new(config.endpoint.clone(), StartTime::read())?;
        let local_addr = socket.local_addr()?;
        let udp = quinn_udp::UdpSocketState::new((&socket).into())?;
        quiet_ancillary_data(&socket, local_addr);
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                endpoint,
                waiters: rustc_hash::FxHashMap::default(),
                inbox: VecDeque::new(),
                peer_events: VecDeque::new(),
                failed_on_close: Vec::new(),
                blocked_tx: VecDeque::new(),
                out: Vec::with_capacity(SEND_BATCH * 1500),
                out_meta: Vec::with_capacity(SEND_BATCH),
                out_heads: Vec::with_capacity(SEND_BATCH),
                out_tails: Vec::with_capacity(SEND_BATCH),
                shutdown: false,
                driver_waker: None,
                timer: Box::pin(tokio::time::sleep(IDLE_TIMER)),
                timer_at: (Instant::now() + IDLE_TIMER).into_std(),
                armed_writable: false,
                last_inline_flush: None,
                flush_wanted: false,
            }),
            intercept: parking_lot::RwLock::new(None),
            socket,
            udp,
            progress: Notify::new(),
            progress_waiters: AtomicUsize::new(0),
            arrived: Notify::new(),
            peer_down: Notify::new(),
            config,
        });
        let slots = quinn_udp::BATCH_SIZE.max(1);
        let driver = Driver {
            shared: shared.clone(),
            storage: vec![0u8; RECV_SLOT * slots],
            metas: vec![quinn_udp::RecvMeta::default(); slots],
            batch: MIN_BATCH.min(slots),
        };
        Ok((
            Self {
                shared,
                local_addr,
                driver: Mutex::new(None),
            },
            driver,
        ))
    }

    /// Installs a hook that sees each received message first, on the driver's task, and
    /// takes it (returns `None`: it then never reaches [`recv`](Self::recv)) or gives it back.
    /// By value, so that the hook can keep the message's bytes without copying them. It runs with the
    /// transport's state locked, so it must be quick and must not call this transport; it
    /// exists so that a layer above can complete waiting work (an answer to a request) without
    /// a hand-off to another task.
    pub fn set_intercept(&self, hook: Option<Intercept>) {
        *self.shared.intercept.write() = hook;
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Sends a reliable, unordered message and resolves when the peer acknowledged all of it.
    /// Waits while the peer's send queue is full (back-pressure). For ordering, lazy
    /// acknowledgements, or many messages in flight from one task, see [`queue`](Self::queue).
    pub async fn send(
        &self,
        peer: SocketAddr,
        data: impl Into<Payload>,
    ) -> Result<(), TransportError> {
        let rx = self.queue(peer, data, QueueOptions::new()).await?;
        let rx = rx.expect("a tracked message has an outcome");
        // Outside tokio's cooperative budget: one outcome, awaited once (a caller polling many
        // sends from one task would otherwise exhaust the budget and spin on spurious wakes).
        match tokio::task::unconstrained(rx).await {
            Ok(r) => Ok(r?),
            Err(_) => Err(SendError::Closed.into()),
        }
    }

    /// Queues a reliable message, waiting while the peer's send queue is full (back-pressure),
    /// and returns without waiting for the acknowledgement, so many messages can be in flight
    /// from one task. With [`QueueOptions::track`] (the default) it returns a receiver of the
    /// message's outcome; untracked, nothing waits on it: a failure is counted in
    /// [`EndpointStats::messages_failed`] and logged at debug level, and the transport gives up
    /// on a message only when its peer's session ends, which
    /// [`next_peer_down`](Self::next_peer_down) reports.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use mesh_rudp::{Delivery, QueueOptions, Transport, TransportConfig};
    /// let a = Transport::bind("127.0.0.1:0".parse()?, TransportConfig::default()).await?;
    /// let b = Transport::bind("127.0.0.1:0".parse()?, TransportConfig::default()).await?;
    /// let ordered = QueueOptions::new().delivery(Delivery::Ordered { channel: 1 });
    /// let first = a.queue(b.local_addr(), &b"one"[..], ordered).await?.expect("tracked");
    /// let second = a.queue(b.local_addr(), &b"two"[..], ordered).await?.expect("tracked");
    /// first.await??;
    /// second.await??;
    /// assert_eq!(&b.recv().await.unwrap().data[..], b"one");
    /// assert_eq!(&b.recv().await.unwrap().data[..], b"two");
    /// # a.close().await; b.close().await;
    /// # Ok(()) }
    /// ```
    pub async fn queue(
        &self,
        peer: SocketAddr,
        data: impl Into<Payload>,
        options: QueueOptions,
    ) -> Result<Option<Outcome>, TransportError> {
        // The common case takes the lock once and registers no waiter.
        let mut data = Some(data.into());
        if let Some(r) = self.try_queue_inner(peer, &mut data, options) {
            return r;
        }
        let _waiting = ProgressWait::new(&self.shared);
        loop {
            let progressed = self.shared.progress.notified();
            tokio::pin!(progressed);
            progressed.as_mut().enable();
            if let Some(r) = self.try_queue_inner(peer, &mut data, options) {
                return r;
            }
            progressed.await;
        }
    }

    /// [`queue`](Self::queue) without waiting: a full queue to the peer fails at once with
    /// [`SendError::QueueFull`]. For a caller that must hand messages over in the order it made
    /// them while it holds a lock of its own (an `.await` there would let later messages
    /// overtake).
    pub fn try_queue(
        &self,
        peer: SocketAddr,
        data: impl Into<Payload>,
        options: QueueOptions,
    ) -> Result<Option<Outcome>, TransportError> {
        let mut data = Some(data.into());
        match self.try_queue_inner(peer, &mut data, options) {
            Some(r) => r,
            None => Err(SendError::QueueFull.into()),
        }
    }

    /// One attempt of [`queue`](Self::queue): `None` while the peer's queue is full. Takes
    /// `data` only when it queues it (moved, not cloned: cloning a `Bytes` made from a `Vec`
    /// allocates).
    fn try_queue_inner(
        &self,
        peer: SocketAddr,
        data: &mut Option<Payload>,
        options: QueueOptions,
    ) -> Option<Result<Option<Outcome>, TransportError>> {
        let mut st = self.shared.state.lock();
        if st.shutdown {
            return Some(Err(SendError::Closed.into()));
        }
        if !st
            .endpoint
            .has_room(peer, data.as_ref().map_or(0, Payload::len))
        {
            return None;
        }
        let data = data.take()?;
        let now = Instant::now().into_std();
        let queued = if options.lazy_ack {
            st.endpoint
                .send_reliable_lazy(now, peer, data, options.delivery)
        } else {
            st.endpoint.send_reliable(now, peer, data, options.delivery)
        };
        match queued {
            Ok(id) => {
                let rx = options.track.then(|| {
                    let (tx, rx) = oneshot::channel();
                    st.waiters.insert(id, tx);
                    rx
                });
                let w = flush_or_cork(&self.shared, &mut st, now);
                drop(st);
                if let Some(w) = w {
                    w.wake();
                }
                Some(Ok(rx))
            }
            Err(e) => Some(Err(e.into())),
        }
    }

    /// Sends an unreliable message: once, maybe lost, never retransmitted.
    pub fn send_unreliable(
        &self,
        peer: SocketAddr,
        data: impl Into<Bytes>,
    ) -> Result<(), TransportError> {
        let mut st = self.shared.state.lock();
        if st.shutdown {
            return Err(SendError::Closed.into());
        }
        let now = Instant::now().into_std();
        st.endpoint.send_unreliable(now, peer, data.into())?;
        let w = flush_or_cork(&self.shared, &mut st, now);
        drop(st);
        if let Some(w) = w {
            w.wake();
        }
        Ok(())
    }

    /// Waits until `take` returns `Some`, checking it under the lock whenever `notify` fires.
    async fn wait_until<T>(
        &self,
        notify: &Notify,
        mut take: impl FnMut(&mut State) -> Option<T>,
    ) -> T {
        loop {
            let progressed = notify.notified();
            tokio::pin!(progressed);
            progressed.as_mut().enable();
            if let Some(v) = take(&mut self.shared.state.lock()) {
                return v;
            }
            progressed.await;
        }
    }

    /// The next received message, or `None` once the transport is closed.
    pub async fn recv(&self) -> Option<Received> {
        self.wait_until(&self.shared.arrived, |st| match st.inbox.pop_front() {
            Some(m) => {
                let n = st.inbox.len();
                st.endpoint.set_backlog(n);
                Some(Some(m))
            }
            None => st.shutdown.then_some(None),
        })
        .await
    }

    /// A received message if one is waiting.
    pub fn try_recv(&self) -> Option<Received> {
        let mut st = self.shared.state.lock();
        let m = st.inbox.pop_front();
        let n = st.inbox.len();
        st.endpoint.set_backlog(n);
        m
    }

    /// The next peer reported down (timed out, closed, restarted), or `None` once closed.
    pub async fn next_peer_down(&self) -> Option<(SocketAddr, DownReason)> {
        self.wait_until(&self.shared.peer_down, |st| {
            match st.peer_events.pop_front() {
                Some(e) => Some(Some(e)),
                None => st.shutdown.then_some(None),
            }
        })
        .await
    }

    /// Forgets a peer now (the layer above knows it is gone); its pending sends fail.
    pub fn mark_down(&self, peer: SocketAddr) {
        let mut st = self.shared.state.lock();
        st.endpoint.mark_down(peer);
        flush(&self.shared, &mut st, None);
        let w = driver_to_wake(&mut st);
        drop(st);
        if let Some(w) = w {
            w.wake();
        }
    }

    /// Largest message [`send_unreliable`](Self::send_unreliable) takes (one datagram).
    pub fn max_unreliable_size(&self) -> usize {
        self.shared.state.lock().endpoint.max_unreliable_size()
    }

    /// Counters over all peers.
    pub fn stats(&self) -> EndpointStats {
        self.shared.state.lock().endpoint.stats()
    }

    /// Counters and estimates for one peer.
    pub fn peer_stats(&self, peer: SocketAddr) -> Option<PeerStats> {
        self.shared.state.lock().endpoint.peer_stats(peer)
    }

    /// Closes gracefully: refuses new sends, waits up to the configured close timeout for
    /// queued messages to be acknowledged, then tells every peer and stops. Returns what could
    /// not be delivered (those sends also fail with [`SendError::Closed`]).
    pub async fn close(&self) -> CloseReport {
        let deadline = Instant::now() + self.shared.config.close_timeout;
        let w = {
            let mut st = self.shared.state.lock();
            if st.shutdown {
                return CloseReport::default();
            }
            st.endpoint.start_closing();
            driver_to_wake(&mut st)
        };
        if let Some(w) = w {
            w.wake();
        }
        let _waiting = ProgressWait::new(&self.shared);
        loop {
            let progressed = self.shared.progress.notified();
            tokio::pin!(progressed);
            progressed.as_mut().enable();
            if self.shared.state.lock().endpoint.is_idle() {
                break;
            }
            if tokio::time::timeout_at(deadline, progressed).await.is_err() {
                break;
            }
        }
        let (report, w) = {
            let mut st = self.shared.state.lock();
            // What was received is acknowledged before the goodbye.
            flush(&self.shared, &mut st, None);
            st.endpoint.close_all();
            flush(&self.shared, &mut st, None);
            st.shutdown = true;
            let report = CloseReport {
                undelivered: std::mem::take(&mut st.failed_on_close),
            };
            (report, st.driver_waker.take())
        };
        if let Some(w) = w {
            w.wake();
        }
        self.shared.progress.notify_waiters();
        self.shared.arrived.notify_waiters();
        self.shared.peer_down.notify_waiters();
        let driver = self.driver.lock().take();
        if let Some(d) = driver {
            let _ = d.await;
        }
        report
    }
}

impl Drop for Transport {
    fn drop(&mut self) {
        if let Some(d) = self.driver.lock().take() {
            d.abort();
        }
    }
}

/// Sends what the endpoint has to send and routes its events, at `now` when the caller has
/// read the clock already. Called with the lock held.
fn flush(shared: &Shared, st: &mut State, now: Option<std::time::Instant>) {
    transmit(shared, st, now);
    route_events(shared, st);
}

/// Hands every datagram the endpoint has ready to the socket, runs of same-sized datagrams to
/// one destination as one GSO send.
fn transmit(shared: &Shared, st: &mut State, now: Option<std::time::Instant>) {
    if !st.endpoint.has_transmit() {
        return;
    }
    let now = now.unwrap_or_else(|| Instant::now().into_std());
    let max_segments = shared.udp.max_gso_segments().max(1);
    loop {
        let State {
            endpoint,
            out,
            out_meta,
            out_heads,
            out_tails,
            blocked_tx,
            ..
        } = &mut *st;
        out.clear();
        out_meta.clear();
        out_heads.clear();
        out_tails.clear();
        while out_meta.len() < SEND_BATCH {
            let mut tail = None;
            let t = if GATHER {
                endpoint.poll_transmit_gather(now, out, &mut tail)
            } else {
                endpoint.poll_transmit_append(now, out)
            };
            let Some(t) = t else {
                break;
            };
            out_meta.push((t.destination, t.size + tail.as_ref().map_or(0, Bytes::len)));
            out_heads.push(t.size);
            out_tails.push(tail);
        }
        if out_meta.is_empty() {
            return;
        }
        let mut offset = 0;
        let mut i = 0;
        while i < out_meta.len() {
            let (to, segment) = out_meta[i];
            // Extend the run while the destination and size match; a shorter datagram ends it.
            let mut len = segment;
            let mut j = i + 1;
            while j < out_meta.len()
                && j - i < max_segments
                && out_meta[j].0 == to
                && out_meta[j].1 <= segment
                && len + out_meta[j].1 <= MAX_GSO_BYTES
            {
                len += out_meta[j].1;
                j += 1;
                if out_meta[j - 1].1 < segment {
                    break;
                }
            }
            let heads: usize = out_heads[i..j].iter().sum();
            let gathered = out_tails[i..j].iter().any(Option::is_some);
            let gso = (j - i > 1).then_some(segment);
            let contiguous = || {
                if !gathered {
                    return out[offset..offset + len].to_vec();
                }
                let mut v = Vec::with_capacity(len);
                let mut at = offset;
                for (head, tail) in out_heads[i..j].iter().zip(&out_tails[i..j]) {
                    v.extend_from_slice(&out[at..at + head]);
                    v.extend_from_slice(tail.as_deref().unwrap_or_default());
                    at += head;
                }
                v
            };
            if blocked_tx.is_empty() {
                let sent = if gathered {
                    send_gathered(
                        shared,
                        to,
                        &out[offset..offset + heads],
                        &out_heads[i..j],
                        &out_tails[i..j],
                        gso,
                    )
                } else {
                    send_run(shared, to, &out[offset..offset + len], gso)
                };
                match sent {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => blocked_tx.push_back(Run {
                        to,
                        bytes: contiguous(),
                        segment,
                    }),
                    // A send error is like a lost datagram: the protocol recovers or reports.
                    Err(e) => debug!(%to, error = %e, "send failed"),
                }
            } else if blocked_tx.len() < MAX_BLOCKED_TX {
                blocked_tx.push_back(Run {
                    to,
                    bytes: contiguous(),
                    segment,
                });
            }
            offset += heads;
            i = j;
        }
    }
}

/// Sends one datagram, or with `segment` a run of them as one GSO send. A lone datagram goes
/// out by plain `sendto`: quinn-udp always adds a TOS control message, and the kernel parses
/// it and looks the route up again for every datagram that carries one.
fn send_run(
    shared: &Shared,
    to: SocketAddr,
    bytes: &[u8],
    segment: Option<usize>,
) -> io::Result<()> {
    if segment.is_none() {
        return shared.socket.try_send_to(bytes, to).map(|_| ());
    }
    let t = quinn_udp::Transmit {
        destination: to,
        ecn: None,
        contents: bytes,
        segment_size: segment,
        src_ip: None,
    };
    shared.socket.try_io(tokio::io::Interest::WRITABLE, || {
        shared.udp.try_send((&shared.socket).into(), &t)
    })
}

/// Counts a task in `progress_waiters` while it lives (dropped futures included).
struct ProgressWait<'a>(&'a Shared);

impl<'a> ProgressWait<'a> {
    fn new(shared: &'a Shared) -> Self {
        shared.progress_waiters.fetch_add(1, Ordering::SeqCst);
        Self(shared)
    }
}

impl Drop for ProgressWait<'_> {
    fn drop(&mut self) {
        self.0.progress_waiters.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Whether datagrams are sent with scatter-gather I/O, their large payloads straight from the
/// messages (Linux, through `sendmsg`); elsewhere they are copied into the send batch.
const GATHER: bool = cfg!(target_os = "linux");

/// Sends a run of datagrams, each `heads[k]` bytes of `heads_bytes` followed by `tails[k]`,
/// as one `sendmsg` (with `segment`, one GSO send): the payloads go to the kernel from where
/// they lie, never copied into the batch.
#[cfg(target_os = "linux")]
fn send_gathered(
    shared: &Shared,
    to: SocketAddr,
    heads_bytes: &[u8],
    heads: &[usize],
    tails: &[Option<Bytes>],
    segment: Option<usize>,
) -> io::Result<()> {
    use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags, SockaddrStorage};
    use std::io::IoSlice;
    use std::os::fd::AsRawFd;
    let mut iov = Vec::with_capacity(2 * heads.len());
    let mut at = 0;
    for (&head, tail) in heads.iter().zip(tails) {
        iov.push(IoSlice::new(&heads_bytes[at..at + head]));
        if let Some(t) = tail {
            iov.push(IoSlice::new(t));
        }
        at += head;
    }
    let addr = SockaddrStorage::from(to);
    // The segment size fits: datagrams are at most 65 507 bytes.
    let size = segment.map(|s| s as u16);
    let cmsg = size.as_ref().map(ControlMessage::UdpGsoSegments);
    let cmsgs = cmsg.as_slice();
    shared.socket.try_io(tokio::io::Interest::WRITABLE, || {
        sendmsg(
            shared.socket.as_raw_fd(),
            &iov,
            cmsgs,
            MsgFlags::empty(),
            Some(&addr),
        )
        .map(|_| ())
        .map_err(io::Error::from)
    })
}

#[cfg(not(target_os = "linux"))]
fn send_gathered(
    _: &Shared,
    _: SocketAddr,
    _: &[u8],
    _: &[usize],
    _: &[Option<Bytes>],
    _: Option<usize>,
) -> io::Result<()> {
    unreachable!("GATHER is off here: no datagram has a tail")
}

/// Sends held runs until the socket would block again.
fn send_blocked(shared: &Shared, st: &mut State) {
    while let Some(run) = st.blocked_tx.pop_front() {
        let segment = (run.bytes.len() > run.segment).then_some(run.segment);
        match send_run(shared, run.to, &run.bytes, segment) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                st.blocked_tx.push_front(run);
                return;
            }
            Err(e) => debug!(to = %run.to, error = %e, "send failed"),
        }
    }
}

/// Routes the endpoint's events: messages to the inbox, outcomes to their waiters. Returns
/// whether any message was delivered, and whether any went to the inbox (the rest were taken
/// by the intercept hook).
fn route_events(shared: &Shared, st: &mut State) -> (bool, bool) {
    // Each kind of waiter is woken only for its own kind of news: a task that waits for peer
    // events is not scheduled for every message (a spurious wake can cost a thread wake-up).
    let (mut sent, mut queued, mut down) = (false, false, false);
    let mut messages = false;
    while let Some(e) = st.endpoint.poll_event() {
        match e {
            Event::Message {
                from,
                data,
                reliable,
            } => {
                let m = Received {
                    from,
                    data,
                    reliable,
                };
                // Either way the application has work: the driver lets it run before it
                // flushes, so an answer sent at once carries the acknowledgement.
                messages = true;
                let m = match shared.intercept.read().as_ref() {
                    Some(hook) => match hook(m) {
                        Some(m) => m,
                        None => continue,
                    },
                    None => m,
                };
                st.inbox.push_back(m);
                queued = true;
            }
            Event::Delivered { id, .. } => {
                sent = true;
                if let Some(w) = st.waiters.remove(&id) {
                    let _ = w.send(Ok(()));
                }
            }
            Event::Failed { peer, id, error } => {
                sent = true;
                if error == SendError::Closed {
                    st.failed_on_close.push((peer, id));
                }
                match st.waiters.remove(&id) {
                    Some(w) => {
                        let _ = w.send(Err(error));
                    }
                    None => debug!(%peer, %error, "a message nobody waits on failed"),
                }
            }
            Event::PeerDown { peer, reason } => {
                down = true;
                if st.peer_events.len() >= MAX_PEER_EVENTS {
                    st.peer_events.pop_front();
                }
                st.peer_events.push_back((peer, reason));
            }
        }
    }
    let n = st.inbox.len();
    st.endpoint.set_backlog(n);
    // The lock held here orders this read after a waiter's registration (made before it
    // took the lock to check its condition): a waiter is either counted or sees the news.
    if sent && shared.progress_waiters.load(Ordering::SeqCst) > 0 {
        shared.progress.notify_waiters();
    }
    if queued {
        shared.arrived.notify_waiters();
    }
    if down {
        shared.peer_down.notify_waiters();
    }
    (messages, queued)
}

/// How many slots the next read asks for, after one that filled `n` slots with `bytes`:
/// twice as many, so a busy socket is read in few calls, but no more than [`RECV_BYTES`] hold
/// at the sizes that came, so what the kernel writes is still in cache when it is copied out
/// (32 slots of GRO-coalesced 64 KiB runs fill a core's L2: bulk went 5.8 -> 8.0 GB/s with 8).
fn next_batch(n: usize, bytes: usize, most: usize) -> usize {
    let fit = RECV_BYTES
        .saturating_mul(n)
        .checked_div(bytes)
        .unwrap_or(most);
    (2 * n).min(fit).clamp(MIN_BATCH.min(most), most)
}

/// One batched read (`recvmmsg`, GRO where the OS has them) into `storage`: how many slots
/// were filled (0 when nothing was waiting). Takes no lock.
fn recv_batch(shared: &Shared, storage: &mut [u8], metas: &mut [quinn_udp::RecvMeta]) -> usize {
    // On the stack: this runs for every wake-up of the driver. Only the slots asked for are
    // pointed at buffers (a read asks for few when traffic is light).
    let mut bufs: [IoSliceMut<'_>; quinn_udp::BATCH_SIZE] =
        std::array::from_fn(|_| IoSliceMut::new(&mut []));
    let batch = bufs.len().min(metas.len());
    for (b, slot) in bufs[..batch].iter_mut().zip(storage.chunks_mut(RECV_SLOT)) {
        *b = IoSliceMut::new(slot);
    }
    let mut drained = 0;
    match shared.socket.try_io(tokio::io::Interest::READABLE, || {
        let n = shared
            .udp
            .recv((&shared.socket).into(), &mut bufs[..batch], metas)?;
        if n < batch {
            // Fewer than asked for: the queue is empty now. Saying "would block" clears the
            // readiness, which saves the syscall that would only learn so. A datagram that
            // arrives meanwhile is a new readiness event, which tokio keeps.
            drained = n;
            return Err(io::ErrorKind::WouldBlock.into());
        }
        Ok(n)
    }) {
        Ok(n) => n,
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => drained,
        Err(e) => {
            debug!(error = %e, "recv failed");
            0
        }
    }
}

/// Moves the driver's timer earlier if the endpoint now needs it sooner. The timer keeps the
/// waker of the driver's last poll, so the parked driver is not woken for this.
fn pull_timer_earlier(st: &mut State) {
    if let Some(t) = st.endpoint.poll_timeout() {
        if t < st.timer_at {
            st.timer.as_mut().reset(Instant::from_std(t));
            st.timer_at = t;
        }
    }
}

/// After a send: flushes from the caller's task, or corks (see [`TransportConfig::cork`]) and
/// returns the
/// driver's waker so that it flushes once the caller yields. Called with the lock held.
fn flush_or_cork(shared: &Shared, st: &mut State, now: std::time::Instant) -> Option<Waker> {
    let burst = st
        .last_inline_flush
        .is_some_and(|t| now.saturating_duration_since(t) < shared.config.cork);
    if burst {
        st.flush_wanted = true;
        pull_timer_earlier(st);
        return st.driver_waker.take();
    }
    flush(shared, st, Some(now));
    // Measured after the flush: a burst's sends follow one another closely only in between.
    st.last_inline_flush = Some(Instant::now().into_std());
    driver_to_wake(st)
}

/// After a command: moves the driver's timer earlier if the endpoint now needs it sooner, and
/// returns the driver's waker if the command left output the socket would not take. Called
/// with the lock held; the caller wakes the waker after releasing the lock.
fn driver_to_wake(st: &mut State) -> Option<Waker> {
    pull_timer_earlier(st);
    if !st.blocked_tx.is_empty() && !st.armed_writable {
        st.driver_waker.take()
    } else {
        None
    }
}

impl Driver {
    /// Drives the transport and returns the next received message, or `None` once the
    /// transport is closed.
    pub async fn recv(&mut self) -> Option<Received> {
        std::future::poll_fn(|cx| self.poll_recv(cx, true)).await
    }

    /// Drives the transport until it is closed, queueing what arrives for
    /// [`Transport::recv`]. What [`Transport::bind`] spawns.
    pub async fn run(mut self) {
        std::future::poll_fn(|cx| self.poll_recv(cx, false)).await;
    }

    /// Drives the transport: reads the socket, runs due timers, retries blocked output and
    /// flushes what the endpoint has to send. With `take`, returns the next received message;
    /// without, leaves messages queued (for [`Transport::recv`], or for later when the caller
    /// cannot take more: they then count against the endpoint's incoming limit, which slows
    /// the senders). `Ready(None)` once the transport is closed.
    pub fn poll_recv(&mut self, cx: &mut Context<'_>, take: bool) -> Poll<Option<Received>> {
        let Self {
            shared,
            storage,
            metas,
            batch,
        } = self;
        let shared = &**shared;
        // Read once per turn and once per batch received: the clock is not free on every
        // machine (virtual ones especially).
        let mut now;
        for _ in 0..DRIVE_TURNS {
            {
                let mut st = shared.state.lock();
                if take {
                    if let Some(m) = st.inbox.pop_front() {
                        let n = st.inbox.len();
                        st.endpoint.set_backlog(n);
                        // Not flushed yet: the consumer's answer can carry the acknowledgement.
                        return Poll::Ready(Some(m));
                    }
                }
                if st.shutdown {
                    st.driver_waker = None;
                    return Poll::Ready(None);
                }
                st.flush_wanted = false;
                now = Instant::now().into_std();
                flush(shared, &mut st, Some(now));
                if !st.blocked_tx.is_empty() && shared.socket.poll_send_ready(cx).is_ready() {
                    send_blocked(shared, &mut st);
                    flush(shared, &mut st, Some(now));
                }
                if st.endpoint.poll_timeout().is_some_and(|t| t <= now) {
                    st.endpoint.handle_timeout(now);
                    continue;
                }
            }
            // The socket is read without the lock, so senders are not held up by the syscall.
            let mut received = 0;
            let (mut delivered, mut queued, mut drained) = (false, false, false);
            // The first batch is stamped with the turn's reading, taken just before (late by at
            // most the flush's sends: noise in an RTT sample, and the RTO has a floor of
            // milliseconds); later batches follow processing, and read the clock again.
            let mut stamp = Some(now);
            let mut read_unacked = 0;
            for _ in 0..RECV_CALLS {
                let asked = *batch;
                let n = recv_batch(shared, storage, &mut metas[..asked]);
                let bytes = metas[..n].iter().map(|m| m.len).sum();
                *batch = next_batch(n, bytes, metas.len());
                if n == 0 {
                    drained = true;
                    break;
                }
                received += n;
                read_unacked += bytes;
                let mut st = shared.state.lock();
                let now = stamp.take().unwrap_or_else(|| Instant::now().into_std());
                for (meta, slot) in metas.iter().zip(storage.chunks(RECV_SLOT)).take(n) {
                    let stride = meta.stride.max(1);
                    for d in slot[..meta.len].chunks(stride) {
                        on_datagram(shared, &mut st, now, meta.addr, d);
                    }
                }
                if read_unacked >= ACK_FLUSH_BYTES {
                    // A bulk sender is waiting on these acknowledgements to send more: let it
                    // have them now rather than after the turn's last read.
                    transmit(shared, &mut st, Some(now));
                    read_unacked = 0;
                }
                let (m, q) = route_events(shared, &mut st);
                delivered |= m;
                queued |= q;
                if n < asked {
                    // The queue was drained: another call would only say so, at a syscall's
                    // cost.
                    drained = true;
                    break;
                }
            }
            if delivered && !take {
                // Let the application run first: an answer it sends at once carries our
                // acknowledgement, which then costs no datagram of its own. The next poll
                // flushes first thing.
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            if (queued && take) || !drained {
                // A message to hand over, or more to read.
                continue;
            }
            // Nothing more to do now: sleep until the socket, the timer or a command wakes us.
            let mut st = shared.state.lock();
            if received > 0 {
                // What the datagrams just read owe (acknowledgements), without another turn
                // (the socket is drained, and answers taken by the intercept hook are with
                // their requesters already).
                flush(shared, &mut st, None);
            }
            if st.flush_wanted || shared.socket.poll_recv_ready(cx).is_ready() {
                continue;
            }
            st.armed_writable = !st.blocked_tx.is_empty();
            if st.armed_writable && shared.socket.poll_send_ready(cx).is_ready() {
                continue;
            }
            // The turn's clock reading: at most a read of the socket old.
            let at = st.endpoint.poll_timeout().unwrap_or(now + IDLE_TIMER);
            if st.timer_at != at {
                st.timer.as_mut().reset(Instant::from_std(at));
                st.timer_at = at;
            }
            if st.timer.as_mut().poll(cx).is_ready() {
                // Due (tokio's clock rounds up, so `now` may still be a little short of it).
                st.endpoint.handle_timeout(now.max(at));
                let idle = now + IDLE_TIMER;
                st.timer.as_mut().reset(Instant::from_std(idle));
                st.timer_at = idle;
                continue;
            }
            match &st.driver_waker {
                Some(w) if w.will_wake(cx.waker()) => {}
                _ => st.driver_waker = Some(cx.waker().clone()),
            }
            return Poll::Pending;
        }
        // Still busy after a full budget: give other tasks a turn, then go on.
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

fn on_datagram(
    shared: &Shared,
    st: &mut State,
    now: std::time::Instant,
    from: SocketAddr,
    bytes: &[u8],
) {
    if shared.config.answer_raw_ping && bytes == b"ping" {
        let _ = shared.socket.try_send_to(b"PONG\n", from);
        return;
    }
    st.endpoint.handle_datagram(now, from, bytes);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_read_asks_for_twice_what_came_within_its_byte_budget() {
        // Small datagrams: twice as many slots, up to all of them.
        assert_eq!(next_batch(4, 4 * 100, 32), 8);
        assert_eq!(next_batch(32, 32 * 1200, 32), 32);
        // GRO runs of 64,000 bytes: as many as RECV_BYTES holds, however many came.
        assert_eq!(next_batch(32, 32 * 64_000, 32), RECV_BYTES / 64_000);
        assert_eq!(next_batch(2, 2 * 64_000, 32), 4);
        // Never below the floor, nor above what there is.
        assert_eq!(next_batch(0, 0, 32), MIN_BATCH);
        assert_eq!(next_batch(1, 65_536, 32), MIN_BATCH);
        assert_eq!(next_batch(8, 8, 2), 2);
    }

    #[test]
    fn the_window_is_three_quarters_of_the_granted_buffer() {
        let config = EndpointConfig::default();
        let largest = crate::DEFAULT_LOOPBACK_MTU.unwrap_or(1200);
        // Linux doubles what it grants: 4 MiB of `rmem_max` reads back as 8 MiB.
        assert_eq!(receive_window(8 << 20, &config), 6 << 20);
        // The default `rmem_max` (208 KiB, doubled).
        assert_eq!(receive_window(425_984, &config), 319_488);
        // Never below four of the largest datagrams.
        assert_eq!(receive_window(1000, &config), 4 * largest);
    }
}
