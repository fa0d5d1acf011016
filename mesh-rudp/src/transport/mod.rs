//! The tokio driver: one UDP socket, one timer, one [`Endpoint`].
//!
//! - here: [`Transport`], the handle (sending, receiving, closing) and the state it shares
//!   with the driver under one lock;
//! - [`types`]: settings, received messages, queue options, errors;
//! - [`send`]: queueing messages (the one entry point and its options);
//! - [`driver`]: the [`Driver`] future;
//! - [`io`]: the socket's system calls; [`batch`]: the pure decisions they follow;
//!   [`socket`]: the socket as the reactor watches it (for reading; for room only when needed).

mod batch;
mod driver;
mod far_timer;
mod io;
mod send;
mod socket;
mod tally;
mod types;

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::Waker;

use bytes::Bytes;
use parking_lot::Mutex;
use tokio::net::UdpSocket;
use tokio::sync::{oneshot, Notify};
use tokio::time::{Instant, Sleep};
use tracing::debug;

use self::batch::MIN_BATCH;
use self::driver::IDLE_TIMER;
use self::io::{
    new_socket, quiet_ancillary_data, receive_window, transmit, Run, RECV_SLOT, SEND_BATCH,
};
use self::send::ProgressWait;
use crate::{
    DownReason, Endpoint, EndpointStats, Event, MessageId, PeerStats, SendError, StartTime,
};

pub use self::driver::Driver;
pub use self::tally::{Tally, TallyFailure, TallyReport, TALLY_DETAILS};
pub use self::types::{
    CloseReport, Outcome, QueueOptions, Received, TransportConfig, TransportError,
};

/// Peer-down notices kept for [`Transport::next_peer_down`] (oldest dropped past this).
const MAX_PEER_EVENTS: usize = 1024;

#[derive(Debug)]
struct State {
    endpoint: Endpoint,
    waiters: rustc_hash::FxHashMap<MessageId, Waiter>,
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
    /// Where tokio's timer wheel holds `timer`: at or before `timer_at`, since a reset to a
    /// later deadline leaves it where it was (see [`driver::arm_timer`]); after it only while
    /// `timer` stands aside for the driver's far timer ([`State::timer_aside`]).
    timer_filed: std::time::Instant,
    /// Messages for the intercept hook, which the driver runs after letting the lock go.
    hooked: Vec<Received>,
    /// Whether the parked driver waits for the socket to take blocked output.
    armed_writable: bool,
    /// When a send last flushed from its own task.
    last_inline_flush: Option<std::time::Instant>,
    /// A send left its datagrams for the driver to flush (packed with those that follow).
    flush_wanted: bool,
    /// Whether the driver read datagrams since a send last flushed from its own task.
    received_since_flush: bool,
}

impl State {
    /// Whether `timer` stands aside (filed an hour ahead) while the driver's far timer holds
    /// `timer_at`: the one case in which tokio's wheel holds it later than `timer_at`.
    fn timer_aside(&self) -> bool {
        self.timer_filed > self.timer_at
    }
}

/// Who waits on a tracked message's outcome.
#[derive(Debug)]
enum Waiter {
    /// The receiver [`Transport::queue`] returned.
    One(oneshot::Sender<Result<(), SendError>>),
    /// A [`Tally`] of many messages.
    Tally(tally::TallyEntry),
}

impl Waiter {
    fn settle(self, outcome: Result<(), SendError>) {
        match self {
            Waiter::One(tx) => {
                let _ = tx.send(outcome);
            }
            Waiter::Tally(entry) => entry.settle(outcome),
        }
    }
}

/// A hook that may take a received message before it is queued for [`Transport::recv`]: it
/// returns `None` when it took the message, or gives it back; see
/// [`Transport::set_intercept`].
pub type Intercept = Arc<dyn Fn(Received) -> Option<Received> + Send + Sync>;

/// Which received messages an [`Intercept`] hook is shown, judged from their bytes by the
/// driver as it takes them in (with its lock held: it must be a quick look at the first
/// bytes). See [`Transport::set_intercept_filtered`].
pub type InterceptFilter = fn(&[u8]) -> bool;

/// An installed intercept hook, and the messages it is shown.
struct Hook {
    wants: InterceptFilter,
    hook: Intercept,
}

/// A hook for datagrams of another protocol that shares the socket (they do not start with
/// this protocol's magic): it gets the sender and the bytes, on the driver's task with the
/// transport's state locked, so it must only hand them on (a bounded queue). See
/// [`Transport::set_foreign`].
pub type Foreign = Arc<dyn Fn(SocketAddr, &[u8]) + Send + Sync>;

struct Shared {
    state: Mutex<State>,
    intercept: parking_lot::RwLock<Option<Hook>>,
    foreign: parking_lot::RwLock<Option<Foreign>>,
    socket: socket::Socket,
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
        Self::build(socket, config).map(Self::spawn_driver)
    }

    /// Binds a socket on `addr` (port 0 for any) and returns its [`Driver`] for the caller to
    /// poll: received messages come from [`Driver::recv`], never from [`recv`](Self::recv).
    pub async fn bind_with_driver(
        addr: SocketAddr,
        config: TransportConfig,
    ) -> Result<(Self, Driver), TransportError> {
        let socket = new_socket(addr, config.socket_buffer)?;
        Self::build(socket, config)
    }

    /// Wraps an already bound socket and spawns its driver task.
    pub fn with_socket(socket: UdpSocket, config: TransportConfig) -> Result<Self, TransportError> {
        Self::with_socket_and_driver(socket, config).map(Self::spawn_driver)
    }

    /// Wraps an already bound socket and returns its [`Driver`] for the caller to poll.
    pub fn with_socket_and_driver(
        socket: UdpSocket,
        config: TransportConfig,
    ) -> Result<(Self, Driver), TransportError> {
        // Taken out of tokio's registration: the transport registers it its own way.
        Self::build(socket.into_std()?, config)
    }

    fn spawn_driver((t, driver): (Self, Driver)) -> Self {
        *t.driver.lock() = Some(tokio::spawn(driver.run()));
        t
    }

    fn build(
        socket: std::net::UdpSocket,
        mut config: TransportConfig,
    ) -> Result<(Self, Driver), TransportError> {
        if config.endpoint.seed.is_none() {
            config.endpoint.seed(os_seed());
        }
        let (socket, watch) = socket::Socket::new(socket)?;
        if let Ok(granted) = socket2::SockRef::from(socket.raw()).recv_buffer_size() {
            let window = receive_window(granted, &config.endpoint);
            if window < config.endpoint.max_cwnd_bytes {
                config.endpoint.max_cwnd_bytes(window);
            }
        }
        let endpoint = Endpoint::new(config.endpoint.clone(), StartTime::read())?;
        let local_addr = socket.raw().local_addr()?;
        let udp = quinn_udp::UdpSocketState::new(socket.raw().into())?;
        quiet_ancillary_data(socket.raw(), local_addr);
        let idle = Instant::now() + IDLE_TIMER;
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
                timer: Box::pin(tokio::time::sleep_until(idle)),
                timer_at: idle.into_std(),
                timer_filed: idle.into_std(),
                armed_writable: false,
                hooked: Vec::new(),
                last_inline_flush: None,
                flush_wanted: false,
                received_since_flush: false,
            }),
            intercept: parking_lot::RwLock::new(None),
            foreign: parking_lot::RwLock::new(None),
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
            hooked: Vec::new(),
            back: Vec::new(),
            watch,
            far: far_timer::FarTimer::new(),
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
    /// By value, so that the hook can keep the message's bytes without copying them. It exists
    /// so that a layer above can complete waiting work (an answer to a request) without a
    /// hand-off to another task. The driver runs it at the end of a turn, with the transport's
    /// state unlocked: a requester it wakes on another thread (on one CPU, at once) then finds
    /// the lock free, where waking it under the lock made it spin on the lock and switch back
    /// (7.3 context switches per round trip between two processes on one CPU, against 4 for a
    /// plain tokio UDP ping-pong). It must be quick.
    pub fn set_intercept(&self, hook: Option<Intercept>) {
        match hook {
            Some(hook) => self.set_intercept_filtered(|_| true, hook),
            None => *self.shared.intercept.write() = None,
        }
    }

    /// [`set_intercept`](Self::set_intercept) for a hook that wants only some messages:
    /// those whose bytes `wants` accepts. The others go straight to [`recv`](Self::recv),
    /// without the hand-off through the hook (taken out of the state, run, given back), which
    /// costs each message they are most of. A layer that intercepts only answers to requests
    /// looks at the first byte.
    ///
    /// ```
    /// # use std::sync::Arc;
    /// # use mesh_rudp::{Payload, QueueOptions, Transport, TransportConfig};
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let a = Transport::bind("127.0.0.1:0".parse()?, TransportConfig::default()).await?;
    /// # let b = Transport::bind("127.0.0.1:0".parse()?, TransportConfig::default()).await?;
    /// let (tx, mut taken) = tokio::sync::mpsc::unbounded_channel();
    /// // Messages starting with 1 are the hook's; the rest are for `recv`.
    /// b.set_intercept_filtered(
    ///     |bytes| bytes.first() == Some(&1),
    ///     Arc::new(move |m| {
    ///         let _ = tx.send(m);
    ///         None
    ///     }),
    /// );
    /// a.queue(b.local_addr(), Payload::from(&[1u8, 7][..]), QueueOptions::new()).await?;
    /// a.queue(b.local_addr(), Payload::from(&[2u8, 7][..]), QueueOptions::new()).await?;
    /// let wait = std::time::Duration::from_secs(5);
    /// let to_recv = tokio::time::timeout(wait, b.recv()).await?.expect("open");
    /// assert_eq!(&to_recv.data[..], &[2, 7]);
    /// let to_hook = tokio::time::timeout(wait, taken.recv()).await?.expect("open");
    /// assert_eq!(&to_hook.data[..], &[1, 7]);
    /// # a.close().await; b.close().await;
    /// # Ok(()) }
    /// ```
    pub fn set_intercept_filtered(&self, wants: InterceptFilter, hook: Intercept) {
        *self.shared.intercept.write() = Some(Hook { wants, hook });
    }

    /// Installs a hook for datagrams that are not this protocol's (they lack its magic
    /// bytes), so that another protocol can share the port: a node that also speaks the
    /// original Node.js mesh-link's wire uses it. Without a hook such datagrams are counted
    /// as malformed and dropped, as before. Answer them with
    /// [`send_foreign`](Self::send_foreign).
    pub fn set_foreign(&self, hook: Option<Foreign>) {
        *self.shared.foreign.write() = hook;
    }

    /// Sends one datagram of another protocol from this transport's socket, as it is, without
    /// waiting: fails with [`std::io::ErrorKind::WouldBlock`] when the socket's buffer is full
    /// (the other protocol's retransmission is then what recovers, as for a lost datagram).
    pub fn send_foreign(&self, to: SocketAddr, datagram: &[u8]) -> std::io::Result<()> {
        if self.shared.state.lock().shutdown {
            return Err(std::io::Error::new(
                std::io::ErrorKind::NotConnected,
                "transport closed",
            ));
        }
        self.shared.socket.try_send_to(datagram, to).map(|_| ())
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
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

    /// Every peer with state, and its counters and estimates (one lock for all).
    pub fn all_peer_stats(&self) -> Vec<(SocketAddr, PeerStats)> {
        let st = self.shared.state.lock();
        st.endpoint
            .peers()
            .filter_map(|p| st.endpoint.peer_stats(p).map(|s| (p, s)))
            .collect()
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

/// Routes the endpoint's events: messages to the inbox, outcomes to their waiters. Returns
/// whether any message was delivered, and whether any went to the inbox (the rest were taken
/// by the intercept hook).
fn route_events(shared: &Shared, st: &mut State) -> (bool, bool) {
    // Which messages the hook wants (`None`: there is none), read at the first message.
    let mut wants: Option<Option<InterceptFilter>> = None;
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
                let wants =
                    *wants.get_or_insert_with(|| shared.intercept.read().as_ref().map(|h| h.wants));
                if wants.is_some_and(|w| w(&m.data)) {
                    // The hook runs once the lock is let go (see `Driver::hand_over`).
                    st.hooked.push(m);
                    continue;
                }
                st.inbox.push_back(m);
                queued = true;
            }
            Event::Delivered { id, .. } => {
                sent = true;
                if let Some(w) = st.waiters.remove(&id) {
                    w.settle(Ok(()));
                }
            }
            Event::Failed { peer, id, error } => {
                sent = true;
                if error == SendError::Closed {
                    st.failed_on_close.push((peer, id));
                }
                match st.waiters.remove(&id) {
                    Some(w) => w.settle(Err(error)),
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

/// Moves the driver's timer earlier if the endpoint now needs it sooner. The timer keeps the
/// waker of the driver's last poll, so the parked driver is not woken for this.
fn pull_timer_earlier(st: &mut State) {
    if let Some(t) = st.endpoint.poll_timeout() {
        if t < st.timer_at {
            st.timer.as_mut().reset(Instant::from_std(t));
            st.timer_at = t;
            st.timer_filed = st.timer_filed.min(t);
        }
    }
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
