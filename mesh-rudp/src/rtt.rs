//! Round-trip estimation and the retransmission timeout (RFC 6298). The bounds and the
//! schedule come from the endpoint's configuration at each use, so a peer stores only its
//! estimate.

use std::time::Duration;

use crate::config::EndpointConfig;

/// SRTT/RTTVAR estimator with exponential backoff, or the original's fixed schedule.
#[derive(Debug, Clone, Default)]
pub(crate) struct Rtt {
    srtt: Option<Duration>,
    rttvar: Duration,
    /// Consecutive timeouts without progress.
    pub(crate) backoff: u32,
}

impl Rtt {
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

    /// The smoothed RTT (the initial RTO before any sample).
    pub(crate) fn srtt(&self, config: &EndpointConfig) -> Duration {
        self.srtt.unwrap_or(config.initial_rto)
    }

    /// Whether any sample has been taken.
    pub(crate) fn measured(&self) -> bool {
        self.srtt.is_some()
    }

    pub(crate) fn rttvar(&self) -> Duration {
        self.rttvar
    }

    /// The current timeout, backoff included, within `min_rto..=effective_max_rto()`.
    pub(crate) fn rto(&self, config: &EndpointConfig, max_ack_delay: Duration) -> Duration {
        if let Some(base) = config.fixed_rto {
            // The original: retransmission k waits k × base (linear), no estimate.
            return base * (self.backoff + 1);
        }
        let base = match self.srtt {
            None => config.initial_rto,
            Some(srtt) => srtt + (self.rttvar * 4).max(Duration::from_micros(100)) + max_ack_delay,
        };
        let backed = base.saturating_mul(1u32 << self.backoff.min(16));
        backed.clamp(config.min_rto, config.effective_max_rto())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn the_first_sample_sets_srtt_and_half_of_it_as_variation() {
        let c = EndpointConfig::default();
        let mut r = Rtt::default();
        assert_eq!(r.rto(&c, Duration::ZERO), c.initial_rto);
        r.sample(ms(40));
        assert_eq!((r.srtt(&c), r.rttvar()), (ms(40), ms(20)));
        // RTO = SRTT + 4 RTTVAR.
        assert_eq!(r.rto(&c, Duration::ZERO), ms(120));
        r.sample(ms(40));
        assert_eq!(r.srtt(&c), ms(40));
        assert_eq!(
            r.rttvar(),
            ms(15),
            "3/4 of the variation, plus a quarter of no error"
        );
    }

    #[test]
    fn backoff_doubles_within_the_bounds() {
        let mut c = EndpointConfig::default();
        c.min_rto(ms(10)).max_rto(ms(500));
        let mut r = Rtt::default();
        r.sample(ms(1));
        assert_eq!(r.rto(&c, Duration::ZERO), ms(10), "floored at min_rto");
        r.sample(ms(50));
        let base = r.rto(&c, Duration::ZERO);
        r.backoff = 1;
        assert_eq!(r.rto(&c, Duration::ZERO), base * 2);
        r.backoff = 30;
        assert_eq!(r.rto(&c, Duration::ZERO), ms(500), "capped at max_rto");
        // The cap also follows peer_timeout (a quarter of it).
        c.peer_timeout(ms(800));
        assert_eq!(r.rto(&c, Duration::ZERO), ms(200));
    }

    #[test]
    fn the_original_schedule_is_linear() {
        let mut c = EndpointConfig::default();
        c.fixed_rto(Some(ms(200)));
        let mut r = Rtt::default();
        r.sample(ms(1));
        for k in 0..4 {
            r.backoff = k;
            assert_eq!(r.rto(&c, Duration::ZERO), ms(200) * (k + 1));
        }
    }
}
