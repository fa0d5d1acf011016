//! The driver's timer for far deadlines: on Linux a `timerfd`, which the kernel fires at its
//! deadline, in one wake-up.
//!
//! tokio's timer wheel files a deadline outside the current 64 ms block in a coarser slot and
//! wakes the runtime at that slot's start, only to file it again finer: a far deadline costs
//! an idle process two wake-ups or more, all but the last for nothing (a 300 ms sleep parks a
//! `current_thread` runtime four times; this timer, once: this module's test). An idle
//! node's deadlines are all far (keep-alive probes, most of a second apart), so the driver
//! hands those to this timer and keeps tokio's for the near ones a busy session sets
//! (retransmissions, delayed acknowledgements), which it would move too often for a system
//! call each.
//!
//! Not used (the driver keeps tokio's timer for every deadline) where there is no `timerfd`,
//! or while tokio's clock is paused (`tokio::time::pause`, tests): the kernel's clock would
//! not follow it.

use std::task::{Context, Poll};
use std::time::{Duration, Instant};

/// Deadlines at least this far ahead go to the far timer: beyond tokio's finest level (64
/// slots of 1 ms), and well past the retransmission and acknowledgement timers of a busy
/// session (10 ms and less, by default), so that one is moved by a system call only when the
/// session falls quiet.
pub(super) const FAR_AFTER: Duration = Duration::from_millis(64);

/// Whether tokio's clock is the system's (not paused or advanced by `tokio::time`'s test
/// utilities). Unpaused, tokio's `Instant::now()` is the system's reading, so it falls
/// between two readings taken around it; a paused clock stands still, and one advanced runs
/// ahead.
fn tokio_clock_is_real() -> bool {
    let before = Instant::now();
    let tokio = tokio::time::Instant::now().into_std();
    let after = Instant::now();
    before <= tokio && tokio <= after
}

#[cfg(target_os = "linux")]
pub(super) use self::linux::FarTimer;

#[cfg(target_os = "linux")]
mod linux {
    use std::io;
    use std::os::fd::{AsFd, AsRawFd, RawFd};

    use nix::errno::Errno;
    use nix::sys::time::TimeSpec;
    use nix::sys::timerfd::{ClockId, Expiration, TimerFd, TimerFlags, TimerSetTimeFlags};
    use tokio::io::unix::AsyncFd;
    use tokio::io::Interest;
    use tracing::debug;

    use super::*;

    /// The `timerfd`, as tokio's reactor takes it.
    struct Fd(TimerFd);

    impl AsRawFd for Fd {
        fn as_raw_fd(&self) -> RawFd {
            self.0.as_fd().as_raw_fd()
        }
    }

    /// A one-shot monotonic `timerfd` registered with the reactor.
    pub(in crate::transport) struct FarTimer {
        fd: AsyncFd<Fd>,
        /// The deadline it is set for; `None` once fired (or never set).
        armed: Option<Instant>,
        /// A read failed other than for want of an expiry (not expected of a timerfd): the
        /// timer is not set again, and the driver keeps its deadlines on tokio's.
        broken: bool,
    }

    impl FarTimer {
        /// A far timer, or `None` where the driver keeps tokio's (tokio's clock is paused,
        /// or the process has no descriptor to spare: logged, and nothing else changes).
        pub(in crate::transport) fn new() -> Option<Self> {
            if !tokio_clock_is_real() {
                return None;
            }
            let made = TimerFd::new(
                ClockId::CLOCK_MONOTONIC,
                TimerFlags::TFD_NONBLOCK | TimerFlags::TFD_CLOEXEC,
            )
            .map_err(io::Error::from)
            .and_then(|t| {
                // Deprecated because an arbitrary `AsRawFd` may close or swap its descriptor
                // while registered; a `TimerFd` owns its descriptor, unchanged until dropped
                // (after the `AsyncFd` deregisters it). The replacement is `unsafe`.
                #[allow(deprecated)]
                AsyncFd::with_interest(Fd(t), Interest::READABLE)
            });
            match made {
                Ok(fd) => Some(Self {
                    fd,
                    armed: None,
                    broken: false,
                }),
                Err(e) => {
                    debug!(error = %e, "no timerfd; far deadlines use tokio's timer");
                    None
                }
            }
        }

        /// Sets the timer for `at` (the system's clock, which `std::time::Instant` reads),
        /// unless it is set for it already. `false` if the system refused, or tokio's clock
        /// was paused since (a test's `tokio::time::pause`): the caller then keeps the
        /// deadline on tokio's timer.
        pub(in crate::transport) fn arm(&mut self, at: Instant) -> bool {
            if self.broken || !tokio_clock_is_real() {
                return false;
            }
            if self.armed == Some(at) {
                return true;
            }
            // Relative: `std::time::Instant` does not show its reading. A zero would disarm
            // the timer, so a deadline already passed is a nanosecond away.
            let wait = at
                .saturating_duration_since(Instant::now())
                .max(Duration::from_nanos(1));
            let set = self.fd.get_ref().0.set(
                Expiration::OneShot(TimeSpec::from_duration(wait)),
                TimerSetTimeFlags::empty(),
            );
            self.armed = set.is_ok().then_some(at);
            set.is_ok()
        }

        /// The deadline it is set for, until it fires.
        #[cfg(test)]
        pub(in crate::transport) fn armed(&self) -> Option<Instant> {
            self.armed
        }

        /// `Ready(deadline)` once the timer set for `deadline` fired (once per setting);
        /// otherwise the task is woken when it does.
        pub(in crate::transport) fn poll_fired(&mut self, cx: &mut Context<'_>) -> Poll<Instant> {
            let Some(at) = self.armed else {
                return Poll::Pending;
            };
            loop {
                let Poll::Ready(Ok(mut ready)) = self.fd.poll_read_ready(cx) else {
                    // Pending, or the reactor is gone (the runtime is shutting down).
                    return Poll::Pending;
                };
                let mut expirations = [0u8; 8];
                match nix::unistd::read(&ready.get_inner().0, &mut expirations) {
                    Ok(_) => {
                        self.armed = None;
                        return Poll::Ready(at);
                    }
                    Err(Errno::EAGAIN) => ready.clear_ready(),
                    Err(Errno::EINTR) => {}
                    Err(e) => {
                        // Not expected of a timerfd. Reported as fired, so the deadline is not
                        // lost: the driver looks at its timers, and sets tokio's from here on.
                        debug!(error = %e, "reading the timerfd failed; using tokio's timer");
                        self.armed = None;
                        self.broken = true;
                        return Poll::Ready(at);
                    }
                }
            }
        }
    }
}

/// No far timer here: the driver keeps every deadline on tokio's timer.
#[cfg(not(target_os = "linux"))]
pub(super) enum FarTimer {}

#[cfg(not(target_os = "linux"))]
impl FarTimer {
    pub(super) fn new() -> Option<Self> {
        let _ = tokio_clock_is_real;
        None
    }

    pub(super) fn arm(&mut self, _at: Instant) -> bool {
        match *self {}
    }

    pub(super) fn poll_fired(&mut self, _cx: &mut Context<'_>) -> Poll<Instant> {
        match *self {}
    }
}
