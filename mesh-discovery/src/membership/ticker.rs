//! The membership loop's beat: once per `update_interval`, in one wake-up.
//!
//! tokio's timer wheel files a deadline outside the current 64 ms block in a coarser slot and
//! wakes the runtime at that slot's start, only to file it again finer: an `Interval` of a
//! second wakes an idle process at least twice per tick (a 150 ms interval parks a
//! `current_thread` runtime three times a tick; a `timerfd`, once: this module's test), and
//! the refresh is most of what an idle node alone does. On Linux the beat is a periodic
//! `timerfd`, which the kernel fires when due; elsewhere, and when tokio's clock is paused as
//! the loop starts (`tokio::time::pause`, tests: the kernel's clock would not follow it),
//! tokio's `Interval`.

use std::time::Duration;

use tokio::time::{Instant, Interval, MissedTickBehavior};
#[cfg(target_os = "linux")]
use tracing::debug;

/// Ticks every `every`, the first one `every` from now.
pub(super) enum Ticker {
    #[cfg(target_os = "linux")]
    Kernel(kernel::Periodic, Duration),
    Tokio(Interval),
}

impl Ticker {
    pub(super) fn new(every: Duration) -> Self {
        #[cfg(target_os = "linux")]
        if tokio_clock_is_real() {
            if let Some(p) = kernel::Periodic::new(every) {
                return Self::Kernel(p, every);
            }
        }
        Self::tokio(every)
    }

    fn tokio(every: Duration) -> Self {
        let mut tick = tokio::time::interval_at(Instant::now() + every, every);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        Self::Tokio(tick)
    }

    /// Waits for the next tick. Ticks missed while the loop was busy (a slow registry) are
    /// not made up for: the next comes at most an interval later.
    pub(super) async fn tick(&mut self) {
        #[cfg(target_os = "linux")]
        if let Self::Kernel(p, every) = self {
            match p.tick().await {
                Ok(()) => return,
                Err(e) => {
                    // Not expected of a timerfd; tokio's interval from here on.
                    debug!(error = %e, "reading the timerfd failed; using tokio's interval");
                    *self = Self::tokio(*every);
                }
            }
        }
        #[allow(irrefutable_let_patterns)] // the only kind where there is no timerfd
        if let Self::Tokio(i) = self {
            i.tick().await;
        }
    }
}

/// Whether tokio's clock is the system's (not paused or advanced by `tokio::time`'s test
/// utilities). Unpaused, tokio's `Instant::now()` is the system's reading, so it falls
/// between two readings taken around it; a paused clock stands still, and one advanced runs
/// ahead.
#[cfg(target_os = "linux")]
fn tokio_clock_is_real() -> bool {
    let before = std::time::Instant::now();
    let tokio = Instant::now().into_std();
    let after = std::time::Instant::now();
    before <= tokio && tokio <= after
}

#[cfg(target_os = "linux")]
mod kernel {
    use std::os::fd::{AsFd, AsRawFd, RawFd};
    use std::time::Duration;

    use nix::errno::Errno;
    use nix::sys::time::TimeSpec;
    use nix::sys::timerfd::{ClockId, Expiration, TimerFd, TimerFlags, TimerSetTimeFlags};
    use tokio::io::unix::AsyncFd;
    use tokio::io::Interest;
    use tracing::debug;

    /// The `timerfd`, as tokio's reactor takes it.
    pub(in crate::membership) struct Fd(TimerFd);

    impl AsRawFd for Fd {
        fn as_raw_fd(&self) -> RawFd {
            self.0.as_fd().as_raw_fd()
        }
    }

    /// A periodic monotonic `timerfd` registered with the reactor.
    pub(in crate::membership) struct Periodic(AsyncFd<Fd>);

    impl Periodic {
        /// `None` if the system refuses one (no descriptor to spare): logged, and the caller
        /// uses tokio's interval.
        pub(super) fn new(every: Duration) -> Option<Self> {
            let every = TimeSpec::from_duration(every.max(Duration::from_nanos(1)));
            let made = TimerFd::new(
                ClockId::CLOCK_MONOTONIC,
                TimerFlags::TFD_NONBLOCK | TimerFlags::TFD_CLOEXEC,
            )
            .and_then(|t| {
                t.set(Expiration::Interval(every), TimerSetTimeFlags::empty())
                    .map(|()| t)
            })
            .map_err(std::io::Error::from)
            .and_then(|t| {
                // Deprecated because an arbitrary `AsRawFd` may close or swap its descriptor
                // while registered; a `TimerFd` owns its descriptor, unchanged until dropped
                // (after the `AsyncFd` deregisters it). The replacement is `unsafe`.
                #[allow(deprecated)]
                AsyncFd::with_interest(Fd(t), Interest::READABLE)
            });
            match made {
                Ok(fd) => Some(Self(fd)),
                Err(e) => {
                    debug!(error = %e, "no timerfd; the membership loop uses tokio's interval");
                    None
                }
            }
        }

        /// The next tick, or the error of a read that failed (not `EAGAIN`).
        pub(super) async fn tick(&mut self) -> std::io::Result<()> {
            loop {
                let Ok(mut ready) = self.0.readable().await else {
                    // The reactor is gone (the runtime is shutting down): never tick.
                    return std::future::pending().await;
                };
                // The count of expirations since the last read: one tick for all of them.
                let mut expirations = [0u8; 8];
                match nix::unistd::read(&ready.get_inner().0, &mut expirations) {
                    Ok(_) => return Ok(()),
                    Err(Errno::EAGAIN) => ready.clear_ready(),
                    Err(Errno::EINTR) => {}
                    Err(e) => return Err(e.into()),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(target_os = "linux")]
    #[test]
    fn each_tick_is_one_wake_up_and_none_comes_early() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        use std::sync::Arc;

        let parks = Arc::new(AtomicUsize::new(0));
        let counted = parks.clone();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .on_thread_park(move || {
                counted.fetch_add(1, Ordering::SeqCst);
            })
            .build()
            .expect("runtime");
        rt.block_on(async {
            // 150 ms: beyond tokio's 64 ms block. tokio's interval in its place parks this
            // runtime three times a tick (the assertion below then fails).
            let every = Duration::from_millis(150);
            let start = std::time::Instant::now();
            let mut ticker = Ticker::new(every);
            assert!(matches!(ticker, Ticker::Kernel(..)), "a timerfd");
            let before = parks.load(Ordering::SeqCst);
            for n in 1..=3 {
                ticker.tick().await;
                assert!(start.elapsed() >= every * n, "tick {n} came early");
            }
            assert_eq!(
                parks.load(Ordering::SeqCst) - before,
                3,
                "a wake-up per tick"
            );
        });
    }

    #[tokio::test(start_paused = true)]
    async fn a_paused_clock_ticks_on_tokios_timer() {
        tokio::time::sleep(Duration::from_millis(5)).await;
        let mut ticker = Ticker::new(Duration::from_secs(1));
        assert!(matches!(ticker, Ticker::Tokio(_)));
        let start = Instant::now();
        ticker.tick().await;
        // The paused clock jumped to the tick: it follows tokio's time.
        assert_eq!(start.elapsed(), Duration::from_secs(1));
    }
}
