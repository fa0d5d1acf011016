//! The [`Driver`]: the future that reads the socket, runs the timers, retries blocked output
//! and hands over what arrived. It owns no protocol state: that is the [`Endpoint`]'s, under
//! the transport's lock.
//!
//! [`Endpoint`]: crate::Endpoint

use std::collections::VecDeque;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::Instant;

use super::batch::next_batch;
use super::far_timer::{FarTimer, FAR_AFTER};
use super::io::{recv_batch, send_blocked, transmit, RECV_SLOT};
use super::socket::WriteWatch;
#[cfg(doc)]
use super::Transport;
use super::{flush, route_events, Received, Shared, State};

/// Most `recvmmsg` calls per turn of the driver before it flushes output.
const RECV_CALLS: usize = 8;
/// Most turns of the driver per poll before it yields to other tasks (a socket that never
/// runs dry must not starve them).
const DRIVE_TURNS: usize = 16;
/// How far ahead the driver's timer is set when the endpoint needs no timer.
pub(super) const IDLE_TIMER: Duration = Duration::from_secs(3600);
/// Bytes read within one turn of the driver after which it sends what it owes (the
/// acknowledgements) before reading on, rather than once per turn (up to 16 MiB read, which a
/// sender's window must then cover). A third of the window of a socket granted 8 MiB; with a
/// smaller window the sender pauses, the socket drains, and the turn's end acknowledges.
/// Measured with 1 and 16 MiB messages: 1 MiB and 512 KiB no faster, 4 MiB slower, and
/// acknowledging every third of a 312 KiB window (Linux's default `rmem_max`) slower too.
const ACK_FLUSH_BYTES: usize = 2 << 20;

/// What a poll of the driver takes from the inbox: it takes what it wants, and says whether it
/// took anything.
type Take<'a> = &'a mut dyn FnMut(&mut VecDeque<Received>) -> bool;

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
#[must_use = "a driver does nothing unless polled: spawn `Driver::run`, or poll it from the task that takes the messages"]
pub struct Driver {
    pub(super) shared: Arc<Shared>,
    pub(super) storage: Vec<u8>,
    pub(super) metas: Vec<quinn_udp::RecvMeta>,
    /// Datagrams the next read asks for: twice what the last one got, within
    /// `MIN_BATCH..=metas.len()`. Preparing a slot costs even when nothing fills it, so a
    /// request-response exchange asks for few and a burst quickly for many.
    pub(super) batch: usize,
    /// The hook's messages of this turn, taken out of the state to run outside its lock.
    pub(super) hooked: Vec<Received>,
    /// What the hook gave back of them, on the way to the inbox (kept: no allocation per turn).
    pub(super) back: Vec<Received>,
    /// Armed while output waits for room in the socket.
    pub(super) watch: WriteWatch,
    /// The timer for far deadlines (`None`: tokio's takes them all; see [`FarTimer`]).
    pub(super) far: Option<FarTimer>,
}

impl std::fmt::Debug for Driver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Driver").finish_non_exhaustive()
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
        let mut got = None;
        let mut take_one = |inbox: &mut VecDeque<Received>| {
            got = inbox.pop_front();
            got.is_some()
        };
        let taker: Option<Take<'_>> = if take { Some(&mut take_one) } else { None };
        match self.drive(cx, taker) {
            Poll::Ready(true) => Poll::Ready(got),
            Poll::Ready(false) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }

    /// [`poll_recv`](Self::poll_recv) that takes up to `max` messages at once, appended to
    /// `out`, for the price of taking one: `Ready(Some(n))` with the number taken (at least
    /// one), `Ready(None)` once the transport is closed. With `max` 0 it only drives, as
    /// `poll_recv` without `take` does.
    pub fn poll_recv_many(
        &mut self,
        cx: &mut Context<'_>,
        out: &mut Vec<Received>,
        max: usize,
    ) -> Poll<Option<usize>> {
        let before = out.len();
        let mut take_many = |inbox: &mut VecDeque<Received>| {
            // One by one: cheaper than `extend(drain(..))` for the one or few of most turns.
            while out.len() - before < max {
                let Some(m) = inbox.pop_front() else { break };
                out.push(m);
            }
            out.len() > before
        };
        let taker: Option<Take<'_>> = if max > 0 { Some(&mut take_many) } else { None };
        match self.drive(cx, taker) {
            Poll::Ready(true) => Poll::Ready(Some(out.len() - before)),
            Poll::Ready(false) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }

    /// The driver's turn: `take` (if given) takes what it wants of the inbox, and says whether
    /// it took anything (`Ready(true)`); `Ready(false)` once the transport is closed.
    fn drive(&mut self, cx: &mut Context<'_>, mut take: Option<Take<'_>>) -> Poll<bool> {
        let Self {
            shared,
            storage,
            metas,
            batch,
            hooked,
            back,
            watch,
            far,
        } = self;
        let shared = &**shared;
        // Read once per turn and once per batch received: the clock is not free on every
        // machine (virtual ones especially).
        let mut now;
        // Whether the hook has messages waiting in the state, as seen under the turn's locks:
        // without, the hand-over is skipped (a lock fewer per turn).
        let mut for_hook;
        for _ in 0..DRIVE_TURNS {
            {
                let mut st = shared.state.lock();
                if let Some(take) = take.as_mut() {
                    if take(&mut st.inbox) {
                        let n = st.inbox.len();
                        st.endpoint.set_backlog(n);
                        // Not flushed yet: the consumer's answer can carry the acknowledgement.
                        return Poll::Ready(true);
                    }
                }
                if st.shutdown {
                    st.driver_waker = None;
                    drop(st);
                    hand_over(shared, hooked, back);
                    return Poll::Ready(false);
                }
                st.flush_wanted = false;
                now = Instant::now().into_std();
                flush(shared, &mut st, Some(now));
                if !st.blocked_tx.is_empty() && watch.poll_writable(&shared.socket, cx).is_ready() {
                    send_blocked(shared, &mut st);
                    flush(shared, &mut st, Some(now));
                }
                if st.endpoint.poll_timeout().is_some_and(|t| t <= now) {
                    st.endpoint.handle_timeout(now);
                    continue;
                }
                for_hook = !st.hooked.is_empty();
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
                // Whatever it holds, a send that follows it is not mid-burst (see
                // `flush_or_cork`): set before the messages are handed over and answered.
                st.received_since_flush = true;
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
                for_hook |= !st.hooked.is_empty();
                if n < asked {
                    // The queue was drained: another call would only say so, at a syscall's
                    // cost.
                    drained = true;
                    break;
                }
            }
            // The hook's messages first, before anything is flushed: an answer it takes wakes
            // its requester now, and a message it gives back is handed to the consumer below
            // before the acknowledgement it owes is sent alone. Whatever routed them (this
            // turn's reads or its first flush).
            if for_hook && hand_over(shared, hooked, back) {
                queued = true;
            }
            if delivered && take.is_none() {
                // Let the application run first: an answer it sends at once carries our
                // acknowledgement, which then costs no datagram of its own. The next poll
                // flushes first thing.
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            if (queued && take.is_some()) || !drained {
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
            if st.flush_wanted || shared.socket.poll_read_ready(cx).is_ready() {
                continue;
            }
            st.armed_writable = !st.blocked_tx.is_empty();
            if !st.armed_writable {
                watch.disarm();
            } else if watch.poll_writable(&shared.socket, cx).is_ready() {
                continue;
            }
            // The turn's clock reading: at most a read of the socket old.
            let at = st
                .endpoint
                .poll_timeout_settled()
                .unwrap_or(now + IDLE_TIMER);
            // A far deadline goes to the far timer (one wake-up, where tokio's wheel takes
            // two), and tokio's stands aside; a near one to tokio's.
            let far_set = at >= now + FAR_AFTER && far.as_mut().is_some_and(|f| f.arm(at));
            if far_set {
                if !st.timer_aside() {
                    arm_timer(&mut st, now + IDLE_TIMER);
                }
                st.timer_at = at;
            } else if st.timer_at != at || st.timer_aside() {
                // The far timer, if set, stays (unpolled): it wakes the driver at most once
                // for nothing, and the next far deadline sets it anew.
                arm_timer(&mut st, at);
            }
            if st.timer.as_mut().poll(cx).is_ready() {
                // Due (tokio's clock rounds up, so `now` may still be a little short of it).
                st.endpoint.handle_timeout(now.max(at));
                arm_timer(&mut st, now + IDLE_TIMER);
                continue;
            }
            // Only when it holds the deadline: a busy session's parks (near deadlines) skip
            // it (about 80 instructions a round trip, callgrind).
            let far_fired = far.as_mut().filter(|_| far_set).map(|f| f.poll_fired(cx));
            if let Some(Poll::Ready(due)) = far_fired {
                // `now` is the turn's reading, a little before the timer fired.
                st.endpoint.handle_timeout(now.max(due));
                continue;
            }
            match &st.driver_waker {
                Some(w) if w.will_wake(cx.waker()) => {}
                _ => st.driver_waker = Some(cx.waker().clone()),
            }
            return Poll::Pending;
        }
        // Still busy after a full budget: give other tasks a turn, then go on.
        hand_over(shared, hooked, back);
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

/// How much later than where tokio's timer wheel holds the driver's timer a new deadline must
/// be for [`arm_timer`] to file the timer anew rather than move it.
const REFILE_LATER: Duration = Duration::from_millis(1);

/// Points the driver's timer at `at`, from the driver's task. tokio moves a sleep's deadline
/// later lazily: its timer wheel keeps the entry where it was and wakes the runtime there, to
/// find nothing due and file it again. An idle node woke that way once more after every
/// keep-alive exchange (the probes' retransmission deadline, pushed back by the answers). A
/// deadline `REFILE_LATER` or more past where the wheel holds the timer gets a new sleep,
/// filed where it is due (in place: no allocation); a smaller move, as a busy session's
/// deadlines make datagram by datagram, stays lazy.
pub(super) fn arm_timer(st: &mut State, at: std::time::Instant) {
    if at >= st.timer_filed + REFILE_LATER {
        st.timer
            .set(tokio::time::sleep_until(Instant::from_std(at)));
        st.timer_filed = at;
    } else {
        st.timer.as_mut().reset(Instant::from_std(at));
        st.timer_filed = st.timer_filed.min(at);
    }
    st.timer_at = at;
}

/// Takes the turn's messages for the hook out of the state and runs the hook on them with the
/// state unlocked; the messages it gives back go to the inbox (through `back`, kept between
/// turns). True if any did.
fn hand_over(shared: &Shared, hooked: &mut Vec<Received>, back: &mut Vec<Received>) -> bool {
    {
        let mut st = shared.state.lock();
        if st.hooked.is_empty() {
            return false;
        }
        std::mem::swap(&mut st.hooked, hooked);
    }
    let hook = shared.intercept.read().as_ref().map(|h| h.hook.clone());
    for m in hooked.drain(..) {
        match &hook {
            Some(h) => back.extend(h(m)),
            None => back.push(m),
        }
    }
    if back.is_empty() {
        return false;
    }
    let mut st = shared.state.lock();
    // One by one: cheaper than `extend(drain(..))` for the one or few of most turns.
    for m in back.drain(..) {
        st.inbox.push_back(m);
    }
    let n = st.inbox.len();
    st.endpoint.set_backlog(n);
    drop(st);
    shared.arrived.notify_waiters();
    true
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
    if !bytes.starts_with(&mesh_wire::MAGIC) {
        if let Some(hook) = &*shared.foreign.read() {
            hook(from, bytes);
            return;
        }
    }
    st.endpoint.handle_datagram(now, from, bytes);
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;
    use crate::{Transport, TransportConfig};

    /// Parks of a paused-clock runtime while the driver's timer, filed in tokio's wheel at
    /// `first` (if given) and then moved to `due`, is awaited. The paused clock jumps straight
    /// to each instant the wheel wakes at, so every wake-up is one park: the wheel's own steps
    /// for a far deadline, and any for nothing.
    fn parks_until_due(first: Option<Duration>, due: Duration) -> usize {
        let (rt, parks) = counted_runtime(true);
        rt.block_on(async {
            let config = TransportConfig::default();
            let (t, driver) = Transport::bind_with_driver("127.0.0.1:0".parse().unwrap(), config)
                .await
                .expect("bind");
            let shared = driver.shared.clone();
            let start = Instant::now().into_std();
            if let Some(first) = first {
                // Filed in the wheel, as the driver's poll before parking files it.
                std::future::poll_fn(|cx| {
                    let mut st = shared.state.lock();
                    arm_timer(&mut st, start + first);
                    assert!(st.timer.as_mut().poll(cx).is_pending());
                    Poll::Ready(())
                })
                .await;
            }
            // Moved (an acknowledgement came), then waited for.
            arm_timer(&mut shared.state.lock(), start + due);
            let before = parks.load(Ordering::SeqCst);
            std::future::poll_fn(|cx| shared.state.lock().timer.as_mut().poll(cx)).await;
            assert!(Instant::now().into_std() >= start + due, "fired when due");
            let parked = parks.load(Ordering::SeqCst) - before;
            drop((driver, t));
            parked
        })
    }

    #[test]
    fn a_timer_pushed_far_back_does_not_wake_the_runtime_at_its_old_deadline() {
        // tokio's lazy reset left it in the wheel at 10 ms: one wake-up more, for nothing.
        let far = Duration::from_secs(5);
        assert_eq!(
            parks_until_due(Some(Duration::from_millis(10)), far),
            parks_until_due(None, far)
        );
    }

    #[test]
    fn a_timer_pushed_back_a_little_stays_lazy_and_fires_when_due() {
        // Under REFILE_LATER the wheel wakes at the old deadline, files the timer again, and it
        // fires at the new one: the wake-up the far case saves, which this count can see.
        let near = Duration::from_micros(10_500);
        assert_eq!(
            parks_until_due(Some(Duration::from_millis(10)), near),
            parks_until_due(None, near) + 1
        );
    }

    /// A `current_thread` runtime, its clock paused or the system's, and a count of its
    /// parks (each a wake-up).
    fn counted_runtime(paused: bool) -> (tokio::runtime::Runtime, Arc<AtomicUsize>) {
        let parks = Arc::new(AtomicUsize::new(0));
        let counted = parks.clone();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(paused)
            .on_thread_park(move || {
                counted.fetch_add(1, Ordering::SeqCst);
            })
            .build()
            .expect("runtime");
        (rt, parks)
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn a_far_timer_wakes_the_runtime_once_when_due() {
        let (rt, parks) = counted_runtime(false);
        rt.block_on(async {
            let mut far = FarTimer::new().expect("a timerfd, on tokio's unpaused clock");
            // 300 ms: beyond tokio's 64 ms block. A tokio sleep in its place parks this
            // runtime four times (the assertion below then fails).
            let due = std::time::Instant::now() + Duration::from_millis(300);
            assert!(far.arm(due));
            assert_eq!(far.armed(), Some(due));
            let before = parks.load(Ordering::SeqCst);
            let fired = std::future::poll_fn(|cx| far.poll_fired(cx)).await;
            assert_eq!(fired, due);
            assert!(std::time::Instant::now() >= due, "fired when due");
            assert_eq!(parks.load(Ordering::SeqCst) - before, 1, "one wake-up");
            assert_eq!(far.armed(), None, "fires once per setting");
        });
    }

    #[test]
    fn a_paused_clock_keeps_every_deadline_on_tokios_timer() {
        // The kernel's clock would not follow tokio's.
        let (rt, _parks) = counted_runtime(true);
        rt.block_on(async {
            tokio::time::sleep(Duration::from_millis(5)).await;
            assert!(FarTimer::new().is_none());
        });
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn a_clock_paused_after_the_far_timer_was_made_takes_the_deadlines_back() {
        let (rt, _parks) = counted_runtime(false);
        rt.block_on(async {
            let mut far = FarTimer::new().expect("a timerfd, on tokio's unpaused clock");
            let due = std::time::Instant::now() + Duration::from_secs(1);
            assert!(far.arm(due));
            tokio::time::pause();
            tokio::time::advance(Duration::from_millis(5)).await;
            assert!(
                !far.arm(due + Duration::from_secs(1)),
                "tokio's timer takes it"
            );
        });
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn a_quiet_drivers_far_deadline_is_on_the_far_timer_and_tokios_stands_aside() {
        let (rt, _parks) = counted_runtime(false);
        rt.block_on(async {
            let config = TransportConfig::default();
            let a = Transport::bind("127.0.0.1:0".parse().unwrap(), config.clone())
                .await
                .expect("bind");
            let (b, mut driver) =
                Transport::bind_with_driver("127.0.0.1:0".parse().unwrap(), config)
                    .await
                    .expect("bind");
            let to = b.local_addr();
            let sent = tokio::spawn(async move { a.send(to, &b"hi"[..]).await.map(|()| a) });
            assert_eq!(&driver.recv().await.expect("open").data[..], b"hi");
            // Drive until `a` has its acknowledgement: then `b` owes nothing, and its next
            // deadline is the keep-alive, most of a second ahead.
            let a = tokio::select! {
                a = sent => a.expect("task").expect("acknowledged"),
                _ = driver.recv() => unreachable!("nothing more was sent"),
            };
            std::future::poll_fn(|cx| {
                assert!(driver.poll_recv(cx, false).is_pending());
                Poll::Ready(())
            })
            .await;
            let st = driver.shared.state.lock();
            let at = st.endpoint.poll_timeout().expect("a keep-alive");
            assert!(at >= Instant::now().into_std() + FAR_AFTER, "{at:?}");
            assert!(st.timer_aside(), "tokio's timer stands aside");
            assert_eq!(
                driver.far.as_ref().and_then(FarTimer::armed),
                Some(st.timer_at)
            );
            drop(st);
            drop(a);
        });
    }
}
