//! When keep-alive probes go out: on a grid of instants shared by every peer of an endpoint,
//! and by every endpoint whose clock agrees (it is anchored on wall-clock time). A node with a
//! hundred quiet peers then wakes a few times per keep-alive interval to probe them all, and
//! the probes of its peers arrive at it together, instead of a hundred wake-ups each way.

use std::time::Duration;

use crate::time::{nanos, Tick};

/// Grid steps per keep-alive interval: a probe goes out up to this fraction of the interval
/// early, never late. Each step costs a node with quiet peers about two wake-ups (its own
/// probes, then its peers', which arrive a little later); two steps per interval measured
/// 12 wake-ups/s for a node with 100 quiet peers in another process, four steps 20-25
/// (`mesh-bench idle`), at the same number of probes.
const STEPS: u32 = 2;

/// Instants at multiples of `step` of wall-clock time.
#[derive(Debug, Clone, Copy)]
pub(crate) struct KeepaliveGrid {
    /// The step in nanoseconds (at most `u64::MAX / 2`).
    step: u64,
    /// Grid points are the ticks `t` with `(t + offset) % step == 0`; `offset < step`.
    offset: u64,
}

impl KeepaliveGrid {
    /// The grid for `keepalive`, given that the endpoint's clock read `base` when the wall
    /// clock read `unix`.
    pub(crate) fn new(keepalive: Duration, base: Tick, unix: Duration) -> Self {
        let step = nanos((keepalive / STEPS).max(Duration::from_millis(1))).min(u64::MAX / 2);
        // How far past a grid point `base` is, in wall-clock time; the grid point before it
        // is then `phase - base` (mod step) before the clock's start.
        let phase = (unix.as_nanos() % u128::from(step)) as u64;
        let offset = (phase + step - base.as_nanos() % step) % step;
        Self { step, offset }
    }

    /// The grid's step: a [`STEPS`]th of the keep-alive interval.
    pub(crate) fn step(&self) -> Duration {
        Duration::from_nanos(self.step)
    }

    /// When a peer last heard at `heard` is probed: the last grid point no later than
    /// `heard + keepalive` (at most a step early; `keepalive` is at least a step).
    pub(crate) fn due(&self, heard: Tick, keepalive: Duration) -> Tick {
        let latest = (heard + keepalive).as_nanos();
        // Both terms are below `step`, itself at most half of `u64::MAX`.
        let past = (latest % self.step + self.offset) % self.step;
        // Floor to the grid, but never before `heard` (a keep-alive shorter than a step).
        Tick::from_nanos(latest.saturating_sub(past)).max(heard)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probes_fall_on_shared_grid_points_never_late_at_most_a_step_early() {
        let k = Duration::from_secs(1);
        let base = Tick::ZERO;
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
                assert!(
                    due + g.step() > heard + k,
                    "more than a step early for {ms}"
                );
            }
            // The same grid: the same instant for the same moment.
            assert_eq!(a.due(heard, k), b.due(heard, k), "{ms}");
        }
        // Peers heard at different moments within a step are probed together.
        let h = base + Duration::from_millis(10_000);
        let due: Vec<Tick> = (0..5)
            .map(|i| a.due(h + Duration::from_millis(i * 40), k))
            .collect();
        assert!(
            due.windows(2).filter(|w| w[0] != w[1]).count() <= 1,
            "{due:?}"
        );
    }

    #[test]
    fn a_keepalive_shorter_than_a_millisecond_step_is_never_before_hearing() {
        let base = Tick::ZERO;
        let g = KeepaliveGrid::new(Duration::from_micros(100), base, Duration::from_secs(7));
        let heard = base + Duration::from_micros(1500);
        let due = g.due(heard, Duration::from_micros(100));
        assert!(due >= heard && due <= heard + Duration::from_micros(100));
    }
}
