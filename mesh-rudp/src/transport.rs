//! The tokio driver: one UDP socket, one timer, one [`Endpoint`].

use std::collections::{HashMap, VecDeque};
use std::io::{self, IoSliceMut};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use parking_lot::Mutex;
use thiserror::Error;
use tokio::net::UdpSocket;
use tokio::sync::{oneshot, Notify};
use tokio::time::Instant;
use tracing::{debug, warn};

use crate::{
    ConfigError, Delivery, DownReason, Endpoint, EndpointConfig, EndpointStats, Event, MessageId,
    PeerStats, SendError,
};

/// Most `recvmmsg` calls per wake-up before the driver flushes output.
const RECV_CALLS: usize = 8;
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
    pub socket_buffer: usize,
    /// How long [`Transport::close`] waits for queued messages to be acknowledged. Default 2 s.
    pub close_timeout: Duration,
    /// Answer a raw 4-byte `ping` datagram with `PONG\n`, as the original did (so `nc -u`
    /// works). Default false.
    pub answer_raw_ping: bool,
}

impl Default for TransportConfig {
    fn default() -> Self {
        Self {
            endpoint: EndpointConfig::default(),
            socket_buffer: 8 << 20,
            close_timeout: Duration::from_secs(2),
            answer_raw_ping: false,
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
    waiters: HashMap<MessageId, oneshot::Sender<Result<(), SendError>>>,
    inbox: VecDeque<Received>,
    peer_events: VecDeque<(SocketAddr, DownReason)>,
    failed_on_close: Vec<(SocketAddr, MessageId)>,
    blocked_tx: VecDeque<Run>,
    buf: Vec<u8>,
    /// Datagrams gathered for one batch of sends, back to back.
    out: Vec<u8>,
    /// `(destination, length)` of each datagram in `out`.
    out_meta: Vec<(SocketAddr, usize)>,
    shutdown: bool,
}

/// A run of equal-sized datagrams to one destination (the last may be shorter): one GSO send.
#[derive(Debug)]
struct Run {
    to: SocketAddr,
    bytes: Vec<u8>,
    segment: usize,
}

/// A hook that may take a received message before it is queued for [`Transport::recv`]; see
/// [`Transport::set_intercept`].
pub type Intercept = Arc<dyn Fn(&Received) -> bool + Send + Sync>;

struct Shared {
    state: Mutex<State>,
    intercept: parking_lot::RwLock<Option<Intercept>>,
    socket: UdpSocket,
    /// Batched I/O (GSO for sends, GRO and `recvmmsg` for receives) where the OS has it.
    udp: quinn_udp::UdpSocketState,
    /// Wakes the driver: a command changed the timer, or the socket has blocked output.
    wake: Notify,
    /// Wakes receivers and anyone waiting for progress (deliveries, queue space, close).
    progress: Notify,
    config: TransportConfig,
}

/// Reliable UDP over one tokio socket.
///
/// The protocol work runs in the caller's task for sends and in one driver task (spawned by
/// [`bind`](Self::bind)) for receives and timers; both share the [`Endpoint`] under a mutex
/// that is never held across an `.await`. Sends go straight to the socket from the calling
/// task, so a request costs no hand-off to another thread.
#[derive(Debug)]
pub struct Transport {
    shared: Arc<Shared>,
    local_addr: SocketAddr,
    driver: Mutex<Option<tokio::task::JoinHandle<()>>>,
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

/// A seed from the OS, for the endpoint's session ids (the core itself never asks the OS).
fn os_seed() -> u64 {
    use std::collections::hash_map::RandomState;
    use std::hash::{BuildHasher, Hasher};
    let mut h = RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.finish()
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

    /// Wraps an already bound socket.
    pub fn with_socket(
        socket: UdpSocket,
        mut config: TransportConfig,
    ) -> Result<Self, TransportError> {
        if config.endpoint.seed == EndpointConfig::default().seed {
            config.endpoint.seed(os_seed());
        }
        let endpoint = Endpoint::new(config.endpoint.clone())?;
        let local_addr = socket.local_addr()?;
        let udp = quinn_udp::UdpSocketState::new((&socket).into())?;
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                endpoint,
                waiters: HashMap::new(),
                inbox: VecDeque::new(),
                peer_events: VecDeque::new(),
                failed_on_close: Vec::new(),
                blocked_tx: VecDeque::new(),
                buf: Vec::with_capacity(65_536),
                out: Vec::with_capacity(SEND_BATCH * 1500),
                out_meta: Vec::with_capacity(SEND_BATCH),
                shutdown: false,
            }),
            intercept: parking_lot::RwLock::new(None),
            socket,
            udp,
            wake: Notify::new(),
            progress: Notify::new(),
            config,
        });
        let driver = tokio::spawn(drive(shared.clone()));
        Ok(Self {
            shared,
            local_addr,
            driver: Mutex::new(Some(driver)),
        })
    }

    /// Installs a hook that sees each received message first, on the driver's task, and
    /// returns true to take it (it then never reaches [`recv`](Self::recv)). It runs with the
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
    /// Waits while the peer's send queue is full (back-pressure).
    pub async fn send(
        &self,
        peer: SocketAddr,
        data: impl Into<Bytes>,
    ) -> Result<(), TransportError> {
        self.send_with(peer, data, Delivery::Unordered).await
    }

    /// [`send`](Self::send) with a choice of ordering.
    pub async fn send_with(
        &self,
        peer: SocketAddr,
        data: impl Into<Bytes>,
        delivery: Delivery,
    ) -> Result<(), TransportError> {
        let rx = self.queue(peer, data.into(), delivery).await?;
        match rx.await {
            Ok(r) => Ok(r?),
            Err(_) => Err(SendError::Closed.into()),
        }
    }

    /// Queues a reliable message and returns a receiver for its outcome, without waiting for
    /// the acknowledgement (many messages can then be in flight from one task).
    pub async fn queue(
        &self,
        peer: SocketAddr,
        data: Bytes,
        delivery: Delivery,
    ) -> Result<oneshot::Receiver<Result<(), SendError>>, TransportError> {
        loop {
            let progressed = self.shared.progress.notified();
            tokio::pin!(progressed);
            progressed.as_mut().enable();
            {
                let mut st = self.shared.state.lock();
                if st.shutdown {
                    return Err(SendError::Closed.into());
                }
                let now = Instant::now().into_std();
                match st.endpoint.send_reliable(now, peer, data.clone(), delivery) {
                    Ok(id) => {
                        let (tx, rx) = oneshot::channel();
                        st.waiters.insert(id, tx);
                        flush(&self.shared, &mut st);
                        drop(st);
                        self.shared.wake.notify_one();
                        return Ok(rx);
                    }
                    Err(SendError::QueueFull) => {}
                    Err(e) => return Err(e.into()),
                }
            }
            progressed.await;
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
        flush(&self.shared, &mut st);
        drop(st);
        self.shared.wake.notify_one();
        Ok(())
    }

    /// Waits until `take` returns `Some`, checking it under the lock after every change.
    async fn wait_until<T>(&self, mut take: impl FnMut(&mut State) -> Option<T>) -> T {
        loop {
            let progressed = self.shared.progress.notified();
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
        self.wait_until(|st| match st.inbox.pop_front() {
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
        self.wait_until(|st| match st.peer_events.pop_front() {
            Some(e) => Some(Some(e)),
            None => st.shutdown.then_some(None),
        })
        .await
    }

    /// Forgets a peer now (the layer above knows it is gone); its pending sends fail.
    pub fn mark_down(&self, peer: SocketAddr) {
        let mut st = self.shared.state.lock();
        st.endpoint.mark_down(peer);
        flush(&self.shared, &mut st);
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
        {
            let mut st = self.shared.state.lock();
            if st.shutdown {
                return CloseReport::default();
            }
            st.endpoint.start_closing();
        }
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
        let report = {
            let mut st = self.shared.state.lock();
            st.endpoint.close_all();
            flush(&self.shared, &mut st);
            st.shutdown = true;
            CloseReport {
                undelivered: std::mem::take(&mut st.failed_on_close),
            }
        };
        self.shared.wake.notify_one();
        self.shared.progress.notify_waiters();
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

/// Sends what the endpoint has to send and routes its events. Called with the lock held.
fn flush(shared: &Shared, st: &mut State) {
    transmit(shared, st);
    route_events(shared, st);
}

/// Hands every datagram the endpoint has ready to the socket, runs of same-sized datagrams to
/// one destination as one GSO send.
fn transmit(shared: &Shared, st: &mut State) {
    let now = Instant::now().into_std();
    let max_segments = shared.udp.max_gso_segments().max(1);
    loop {
        let State {
            endpoint,
            buf,
            out,
            out_meta,
            blocked_tx,
            ..
        } = &mut *st;
        out.clear();
        out_meta.clear();
        while out_meta.len() < SEND_BATCH {
            let Some(t) = endpoint.poll_transmit(now, buf) else {
                break;
            };
            out.extend_from_slice(&buf[..t.size]);
            out_meta.push((t.destination, t.size));
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
            let bytes = &out[offset..offset + len];
            if blocked_tx.is_empty() {
                let t = quinn_udp::Transmit {
                    destination: to,
                    ecn: None,
                    contents: bytes,
                    segment_size: (j - i > 1).then_some(segment),
                    src_ip: None,
                };
                match shared.socket.try_io(tokio::io::Interest::WRITABLE, || {
                    shared.udp.try_send((&shared.socket).into(), &t)
                }) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => blocked_tx.push_back(Run {
                        to,
                        bytes: bytes.to_vec(),
                        segment,
                    }),
                    // A send error is like a lost datagram: the protocol recovers or reports.
                    Err(e) => debug!(%to, error = %e, "send failed"),
                }
            } else if blocked_tx.len() < MAX_BLOCKED_TX {
                blocked_tx.push_back(Run {
                    to,
                    bytes: bytes.to_vec(),
                    segment,
                });
            }
            offset += len;
            i = j;
        }
    }
}

/// Sends held runs until the socket would block again.
fn send_blocked(shared: &Shared, st: &mut State) {
    while let Some(run) = st.blocked_tx.pop_front() {
        let t = quinn_udp::Transmit {
            destination: run.to,
            ecn: None,
            contents: &run.bytes,
            segment_size: (run.bytes.len() > run.segment).then_some(run.segment),
            src_ip: None,
        };
        match shared.socket.try_io(tokio::io::Interest::WRITABLE, || {
            shared.udp.try_send((&shared.socket).into(), &t)
        }) {
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
/// whether any message was delivered.
fn route_events(shared: &Shared, st: &mut State) -> bool {
    let mut progressed = false;
    let mut messages = false;
    while let Some(e) = st.endpoint.poll_event() {
        progressed = true;
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
                // Either way the application has work: the driver then yields before it
                // flushes, so an answer sent at once carries the acknowledgement.
                messages = true;
                if shared.intercept.read().as_ref().is_some_and(|f| f(&m)) {
                    continue;
                }
                st.inbox.push_back(m);
            }
            Event::Delivered { id, .. } => {
                if let Some(w) = st.waiters.remove(&id) {
                    let _ = w.send(Ok(()));
                }
            }
            Event::Failed { peer, id, error } => {
                if error == SendError::Closed {
                    st.failed_on_close.push((peer, id));
                }
                if let Some(w) = st.waiters.remove(&id) {
                    let _ = w.send(Err(error));
                }
            }
            Event::PeerDown { peer, reason } => {
                if st.peer_events.len() >= MAX_PEER_EVENTS {
                    st.peer_events.pop_front();
                }
                st.peer_events.push_back((peer, reason));
            }
        }
    }
    let n = st.inbox.len();
    st.endpoint.set_backlog(n);
    if progressed {
        shared.progress.notify_waiters();
    }
    messages
}

/// Reads what the socket has (batched, GRO-split), feeding each datagram to the endpoint.
fn receive(shared: &Shared, st: &mut State, storage: &mut [u8], metas: &mut [quinn_udp::RecvMeta]) {
    for _ in 0..RECV_CALLS {
        let r = {
            let mut bufs: Vec<IoSliceMut<'_>> =
                storage.chunks_mut(RECV_SLOT).map(IoSliceMut::new).collect();
            shared.socket.try_io(tokio::io::Interest::READABLE, || {
                shared.udp.recv((&shared.socket).into(), &mut bufs, metas)
            })
        };
        let n = match r {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
            Err(e) => {
                debug!(error = %e, "recv failed");
                return;
            }
        };
        for (meta, slot) in metas.iter().zip(storage.chunks(RECV_SLOT)).take(n) {
            let stride = meta.stride.max(1);
            for d in slot[..meta.len].chunks(stride) {
                on_datagram(shared, st, meta.addr, d);
            }
        }
        if n < metas.len() {
            // The queue was drained: another call would only say so, at a syscall's cost.
            return;
        }
    }
}

/// The driver task: receives, runs timers, retries blocked sends, until shutdown.
async fn drive(shared: Arc<Shared>) {
    let slots = quinn_udp::BATCH_SIZE.max(1);
    let mut storage = vec![0u8; RECV_SLOT * slots];
    let mut metas = vec![quinn_udp::RecvMeta::default(); slots];
    loop {
        let (deadline, blocked) = {
            let st = shared.state.lock();
            if st.shutdown {
                return;
            }
            (st.endpoint.poll_timeout(), !st.blocked_tx.is_empty())
        };
        let sleep = async {
            match deadline {
                Some(t) => tokio::time::sleep_until(Instant::from_std(t)).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            r = shared.socket.readable() => {
                if let Err(e) = r {
                    warn!(error = %e, "socket not readable");
                    continue;
                }
                let delivered = {
                    let mut st = shared.state.lock();
                    receive(&shared, &mut st, &mut storage, &mut metas);
                    route_events(&shared, &mut st)
                };
                if delivered {
                    // Let the application run first: an answer it sends at once carries our
                    // acknowledgement, which then costs no datagram of its own.
                    tokio::task::yield_now().await;
                }
                flush(&shared, &mut shared.state.lock());
            }
            () = sleep => {
                let mut st = shared.state.lock();
                st.endpoint.handle_timeout(Instant::now().into_std());
                flush(&shared, &mut st);
            }
            () = shared.wake.notified() => {}
            r = shared.socket.writable(), if blocked => {
                if let Err(e) = r {
                    warn!(error = %e, "socket not writable");
                }
                let mut st = shared.state.lock();
                send_blocked(&shared, &mut st);
                flush(&shared, &mut st);
            }
        }
    }
}

fn on_datagram(shared: &Shared, st: &mut State, from: SocketAddr, bytes: &[u8]) {
    if shared.config.answer_raw_ping && bytes == b"ping" {
        let _ = shared.socket.try_send_to(b"PONG\n", from);
        return;
    }
    st.endpoint
        .handle_datagram(Instant::now().into_std(), from, bytes);
}
