//! Round-trip estimation and the retransmission timeout (RFC 6298).

use std::time::Duration;

/// SRTT/RTTVAR estimator with exponential backoff, or the original's fixed schedule.
#[derive(Debug, Clone)]
pub(crate) struct Rtt {
    srtt: Option<Duration>,
    rttvar: Duration,
    initial: Duration,
    min: Duration,
    max: Duration,
    fixed: Option<Duration>,
    /// Consecutive timeouts without progress.
    pub(crate) backoff: u32,
}

impl Rtt {
    pub(crate) fn new(
        initial: Duration,
        min: Duration,
        max: Duration,
        fixed: Option<Duration>,
    ) -> Self {
        Self {
            srtt: None,
            rttvar: Duration::ZERO,
            initial,
            min,
            max,
            fixed,
            backoff: 0,
        }
    }

    /// Feeds a sample (already corrected for the peer's ack delay). Karn's rule is applied by
    /// the caller: samples come only from frames sent once.
    pub(crate) fn sample(&mut self, rtt: Duration) {
        match self.srtt {
            None => {
                self.srtt = Some(rtt);
                self.rttvar = rtt / 2;
            }
            Some(srtt) => {
                let err = srtt.abs_diff(rtt);
                self.rttvar = (self.rttvar * 3 + err) / 4;
                self.srtt = Some((srtt * 7 + rtt) / 8);
            }
        }
    }

    pub(crate) fn srtt(&self) -> Duration {
        self.srtt.unwrap_or(self.initial)
    }

    pub(crate) fn rttvar(&self) -> Duration {
        self.rttvar
    }

    /// The current timeout, backoff included.
    pub(crate) fn rto(&self, max_ack_delay: Duration) -> Duration {
        if let Some(base) = self.fixed {
            // The original: retransmission k waits k × base (linear), no estimate.
            return base * (self.backoff + 1);
        }
        let base = match self.srtt {
            None => self.initial,
            Some(srtt) => srtt + (self.rttvar * 4).max(Duration::from_micros(100)) + max_ack_delay,
        };
        let backed = base.saturating_mul(1u32 << self.backoff.min(16));
        backed.clamp(self.min, self.max)
    }

    pub(crate) fn is_fixed(&self) -> bool {
        self.fixed.is_some()
    }
}
