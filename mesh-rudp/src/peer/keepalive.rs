//! When keep-alive probes go out: on a grid of instants shared by every peer of an endpoint,
//! and by every endpoint whose clock agrees (it is anchored on wall-clock time). A node with a
//! hundred quiet peers then wakes a few times per keep-alive interval to probe them all, and
//! the probes of its peers arrive at it together, instead of a hundred wake-ups each way.

use std::time::{Duration, Instant};

/// Grid steps per keep-alive interval: a probe goes out up to this fraction of the interval
/// early, never late. Each step costs a node with quiet peers about two wake-ups (its own
/// probes, then its peers', which arrive a little later); two steps per interval measured
/// 12 wake-ups/s for a node with 100 quiet peers in another process, four steps 20-25
/// (`mesh-bench idle`), at the same number of probes.
const STEPS: u32 = 2;

/// Instants at multiples of `step` of wall-clock time.
#[derive(Debug, Clone, Copy)]
pub(crate) struct KeepaliveGrid {
    /// An instant on the grid.
    origin: Instant,
    step: Duration,
}

impl KeepaliveGrid {
    /// The grid for `keepalive`, given that `base` read `unix` on the wall clock.
    pub(crate) fn new(keepalive: Duration, base: Instant, unix: Duration) -> Self {
        let step = (keepalive / STEPS).max(Duration::from_millis(1));
        let step_ns = step.as_nanos();
        // How far past a grid point `base` is, in wall-clock time.
        let phase = Duration::from_nanos((unix.as_nanos() % step_ns) as u64);
        let origin = base
            .checked_sub(phase)
            .unwrap_or_else(|| base + (step - phase));
        Self { origin, step }
    }

    /// The grid's step: a [`STEPS`]th of the keep-alive interval.
    pub(crate) fn step(&self) -> Duration {
        self.step
    }

    /// When a peer last heard at `heard` is probed: the last grid point no later than
    /// `heard + keepalive` (at most a step early; `keepalive` is at least a step).
    pub(crate) fn due(&self, heard: Instant, keepalive: Duration) -> Instant {
        let latest = heard + keepalive;
        let Some(since) = latest.checked_duration_since(self.origin) else {
            return latest;
        };
        // In u64 nanoseconds (584 years of uptime): a u128 remainder costs a library call, and
        // this runs for every datagram.
        let step = u64::try_from(self.step.as_nanos()).unwrap_or(u64::MAX);
        let since = u64::try_from(since.as_nanos()).unwrap_or(u64::MAX);
        // Floor to the grid, but never before `heard` (a keep-alive shorter than a step).
        (latest - Duration::from_nanos(since % step)).max(heard)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probes_fall_on_shared_grid_points_never_late_at_most_a_step_early() {
        let k = Duration::from_secs(1);
        let base = Instant::now();
        // Two endpoints started at different moments, with agreeing wall clocks.
        let a = KeepaliveGrid::new(k, base, Duration::from_millis(1_000_123));
        let b = KeepaliveGrid::new(
            k,
            base + Duration::from_millis(77),
            Duration::from_millis(1_000_200),
        );
        for ms in [0u64, 1, 249, 250, 251, 999, 1234, 5000] {
            let heard = base + Duration::from_millis(ms);
            for g in [a, b] {
                let due = g.due(heard, k);
                assert!(due <= heard + k, "late for {ms}");
                assert!(due + g.step > heard + k, "more than a step early for {ms}");
            }
            // The same grid: the same instant for the same moment.
            assert_eq!(a.due(heard, k), b.due(heard, k), "{ms}");
        }
        // Peers heard at different moments within a step are probed together.
        let h = base + Duration::from_millis(10_000);
        let due: Vec<Instant> = (0..5)
            .map(|i| a.due(h + Duration::from_millis(i * 40), k))
            .collect();
        assert!(
            due.windows(2).filter(|w| w[0] != w[1]).count() <= 1,
            "{due:?}"
        );
    }

    #[test]
    fn a_keepalive_shorter_than_a_millisecond_step_is_never_before_hearing() {
        let base = Instant::now();
        let g = KeepaliveGrid::new(Duration::from_micros(100), base, Duration::from_secs(7));
        let heard = base + Duration::from_micros(1500);
        let due = g.due(heard, Duration::from_micros(100));
        assert!(due >= heard && due <= heard + Duration::from_micros(100));
    }
}
