//! The replay window of an authenticated session: which packet numbers it has seen.

/// The packet numbers a session has seen: the highest, and which of the 64 below it (more
/// reordering than that is refused and recovered by retransmission).
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct ReplayWindow {
    pub(crate) highest: u64,
    seen: u64,
}

impl ReplayWindow {
    /// Records `pn`; false if it was seen, or is too far below the highest to tell.
    pub(crate) fn accept(&mut self, pn: u64) -> bool {
        if pn > self.highest {
            let shift = pn - self.highest;
            self.seen = if shift >= 64 { 0 } else { self.seen << shift };
            self.seen |= 1;
            self.highest = pn;
            return true;
        }
        let back = self.highest - pn;
        if back >= 64 || self.seen & (1 << back) != 0 {
            return false;
        }
        self.seen |= 1 << back;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::ReplayWindow;

    #[test]
    fn replays_and_ancient_numbers_are_refused() {
        let mut w = ReplayWindow::default();
        assert!(w.accept(1000));
        assert!(!w.accept(1000));
        assert!(w.accept(1002));
        assert!(w.accept(1001), "reordered but new");
        assert!(!w.accept(1001));
        assert!(w.accept(1100));
        assert!(!w.accept(1002), "too far below the highest");
        assert!(w.accept(1050));
        assert!(!w.accept(1050));
        assert!(w.accept(u64::MAX));
        assert!(!w.accept(u64::MAX));
    }
}
