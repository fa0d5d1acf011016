//! Congestion control: how much a sender may have in flight. One trait, so that another
//! algorithm can replace NewReno without touching loss detection or the send queue.

use std::fmt;

/// Smallest window, in datagrams.
const MIN_WINDOW_DATAGRAMS: usize = 2;

/// A congestion controller, told about acknowledgements and losses by sequence number.
pub(crate) trait Controller: fmt::Debug + Send + Sync {
    /// Bytes that may be in flight now.
    fn window(&self) -> usize;

    /// `bytes` were newly acknowledged, the largest of them sequence number `largest`.
    fn on_ack(&mut self, largest: u64, bytes: usize);

    /// Frames from sequence number `first_lost` on were found lost by later acknowledgements
    /// (fast retransmit); `next_seq` is the next number to be sent.
    fn on_loss(&mut self, first_lost: u64, next_seq: u64);

    /// The retransmission timer fired: everything in flight is presumed lost.
    fn on_rto(&mut self, next_seq: u64);

    /// The largest datagram changed (path-MTU discovery): growth and the minimum window
    /// count in datagrams of this size from now on.
    fn on_mtu(&mut self, mtu: usize);
}

/// NewReno (RFC 6582 in spirit, counted in bytes): slow start to `ssthresh`, then one datagram
/// per window acknowledged; a loss halves the window once per round trip (losses of frames
/// sent before the cut do not cut again); a timeout drops it to the minimum.
#[derive(Debug, Clone)]
pub(crate) struct NewReno {
    cwnd: usize,
    ssthresh: usize,
    /// Frames below this were sent before the last cut: their losses do not cut again.
    recovery_until: u64,
    mtu: usize,
    max: usize,
}

impl NewReno {
    pub(crate) fn new(initial: usize, mtu: usize, max: usize) -> Self {
        Self {
            cwnd: initial,
            ssthresh: usize::MAX,
            recovery_until: 0,
            mtu,
            max,
        }
    }

    fn cut(&mut self, timeout: bool, next_seq: u64) {
        let min = MIN_WINDOW_DATAGRAMS * self.mtu;
        self.ssthresh = (self.cwnd / 2).max(min);
        self.cwnd = if timeout { min } else { self.ssthresh };
        self.recovery_until = next_seq;
    }
}

impl Controller for NewReno {
    fn window(&self) -> usize {
        self.cwnd
    }

    fn on_ack(&mut self, largest: u64, bytes: usize) {
        // Outside recovery only: acknowledgements of frames sent before the cut say nothing
        // about the reduced window.
        if largest < self.recovery_until {
            return;
        }
        if self.cwnd < self.ssthresh {
            self.cwnd += bytes;
        } else {
            self.cwnd += (self.mtu * bytes / self.cwnd).max(1);
        }
        self.cwnd = self.cwnd.min(self.max);
    }

    fn on_loss(&mut self, first_lost: u64, next_seq: u64) {
        if first_lost >= self.recovery_until {
            self.cut(false, next_seq);
        }
    }

    fn on_rto(&mut self, next_seq: u64) {
        self.cut(true, next_seq);
    }

    /// The window keeps its bytes (frames already queued keep the size they were cut to, so
    /// more datagrams' worth would let a burst out), but never below the minimum of two
    /// datagrams of the new size.
    fn on_mtu(&mut self, mtu: usize) {
        self.mtu = mtu;
        let min = MIN_WINDOW_DATAGRAMS * mtu;
        self.cwnd = self.cwnd.max(min);
        if self.ssthresh != usize::MAX {
            self.ssthresh = self.ssthresh.max(min);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MTU: usize = 1200;

    fn reno() -> NewReno {
        NewReno::new(10 * MTU, MTU, 1 << 20)
    }

    #[test]
    fn slow_start_grows_by_what_is_acknowledged() {
        let mut c = reno();
        c.on_ack(1, 3 * MTU);
        assert_eq!(c.window(), 13 * MTU);
    }

    #[test]
    fn a_loss_halves_the_window_once_per_round_trip() {
        let mut c = reno();
        c.on_loss(5, 20);
        assert_eq!(c.window(), 5 * MTU);
        // Another frame sent before the cut is lost: no second cut.
        c.on_loss(12, 21);
        assert_eq!(c.window(), 5 * MTU);
        // Acks of frames from before the cut do not grow it either.
        c.on_ack(19, MTU);
        assert_eq!(c.window(), 5 * MTU);
        // A loss among frames sent after the cut cuts again.
        c.on_loss(20, 30);
        assert_eq!(c.window(), 5 * MTU / 2);
    }

    #[test]
    fn congestion_avoidance_adds_about_a_datagram_per_window() {
        let mut c = reno();
        c.on_loss(0, 1); // ssthresh = cwnd = 5 datagrams
        let start = c.window();
        // A whole window acknowledged, a datagram at a time.
        for seq in 1..=5 {
            c.on_ack(seq, MTU);
        }
        let grown = c.window() - start;
        assert!((MTU - 200..=MTU).contains(&grown), "grew {grown}");
    }

    #[test]
    fn a_timeout_drops_to_the_minimum_and_slow_start_resumes() {
        let mut c = reno();
        c.on_rto(7);
        assert_eq!(c.window(), MIN_WINDOW_DATAGRAMS * MTU);
        c.on_ack(7, MTU);
        assert_eq!(c.window(), 3 * MTU, "below ssthresh: slow start");
    }

    #[test]
    fn a_new_mtu_keeps_the_window_bytes_but_not_below_two_datagrams() {
        let mut c = reno();
        c.on_mtu(4 * MTU);
        assert_eq!(c.window(), 10 * MTU);
        c.on_rto(1);
        assert_eq!(c.window(), 8 * MTU, "two datagrams of the new size");
        // At ssthresh (also two large datagrams): growth in the new size's datagrams, a
        // datagram per window acknowledged.
        c.on_ack(2, 4 * MTU);
        assert_eq!(c.window(), 10 * MTU);
        c.on_mtu(MTU);
        assert_eq!(c.window(), 10 * MTU);
    }

    #[test]
    fn the_window_never_leaves_its_bounds() {
        let mut c = NewReno::new(4 * MTU, MTU, 8 * MTU);
        c.on_ack(1, 100 * MTU);
        assert_eq!(c.window(), 8 * MTU);
        for seq in 0..20 {
            c.on_loss(seq * 10, seq * 10 + 1);
        }
        assert_eq!(c.window(), MIN_WINDOW_DATAGRAMS * MTU);
    }
}
