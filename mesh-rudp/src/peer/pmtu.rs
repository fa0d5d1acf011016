//! Path-MTU discovery for one peer (DPLPMTUD, RFC 8899, as QUIC does it): the largest datagram
//! the path to the peer carries, found by sending it pings padded to a candidate size and
//! seeing which are answered.
//!
//! A session starts at the base size (`EndpointConfig::mtu`, assumed to pass every path) and
//! searches upward to its ceiling (`max_mtu`, or `loopback_mtu` for a peer on this host): the
//! ceiling first (on a uniform network it passes or the socket refuses it at once), then by
//! halving the interval between the largest size answered and the smallest one refused or
//! unanswered after [`MAX_PROBES`] tries, until they are [`GRANULARITY`] bytes apart. A probe
//! is a datagram of its own, never counted against the congestion window, and its loss is not
//! taken for congestion. Nor the other way round: a probe that goes unanswered while data
//! sent to the peer is being lost too (a congested or lossy path) says nothing about its size,
//! so that try does not count against it; it is sent again, up to [`MAX_SPARED`] times per
//! size. A search that stops below the ceiling is run again after [`RAISE_INTERVAL`], in case
//! the path grew.
//!
//! Black holes: when a retransmission timeout finds the oldest frame in flight larger than the
//! base size would carry, a round of pings checks the path: one at the base size and
//! [`LARGE_PINGS`] at the current size; another round after every further timeout. When
//! [`BLACK_HOLE_CONFIRMED`] timeouts in a row each find no progress while, since the one
//! before, a base-size ping was answered and no current-size one was, datagrams of the current
//! size no longer pass while small ones do: a black hole. Either answer missing starts the
//! count again: an answered large ping shows the path carries the size (the timeouts were
//! loss, as on a congested or lossy path, where small and large datagrams fare alike), an
//! unanswered small one shows nothing, and an answer from before a partition never counts for
//! a timeout during it. Frames already cut to the larger size cannot be cut again (a fragment
//! is numbered among its message's pieces), so the caller ends the session; the next one
//! starts at the base size and searches anew. Silence is not taken for a black hole: a peer
//! that answers nothing is down or unreachable, which the peer timeout handles.

use std::time::Duration;

use crate::time::Tick;

/// Tries of one size before it counts as too large (RFC 8899's `MAX_PROBES`).
pub(crate) const MAX_PROBES: u32 = 3;
/// Further tries of one size, beyond [`MAX_PROBES`], when data was lost too while a try was
/// out (its loss then proves nothing): bounds a search on a path that loses much.
pub(crate) const MAX_SPARED: u8 = 6;
/// The search stops when the largest size answered and the smallest refused are this close.
pub(crate) const GRANULARITY: usize = 16;
/// A search that stopped below the ceiling is retried after this long (RFC 8899's
/// `PMTU_RAISE_TIMER`).
pub(crate) const RAISE_INTERVAL: Duration = Duration::from_secs(600);
/// Retransmission timeouts in a row without progress, each after a round of checks since the
/// timeout before in which the base-size ping was answered and no current-size one was, that
/// make a black hole (three timeouts in all, the first opening the check). More than one:
/// loss can cost a timeout, and what follows a black hole (the session ends) is not undone.
pub(crate) const BLACK_HOLE_CONFIRMED: u8 = 2;
/// Pings at the current size in a round of checks, after the base-size one: on a path that
/// loses a fifth of its datagrams each way, all of them go unanswered in one round out of
/// eight (`0.36²`), and a base-size ping answered with them in about one out of twelve.
pub(crate) const LARGE_PINGS: u8 = 2;
/// Datagrams in a round of checks.
const ROUND: u8 = 1 + LARGE_PINGS;

/// What the path-MTU state is doing. Sizes are `u16` (datagrams are at most 65 507 bytes):
/// every peer carries this, idle or not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Not searching; the next search starts at `next` (`None`: the ceiling is reached).
    Idle { next: Option<Tick> },
    /// Probing `size`: tried `tries` times, the last at `sent` (`None`: a try is due now);
    /// `clouded`: data was lost while the last try was out; `spared`: tries not counted in
    /// `tries` for that reason.
    Probing {
        size: u16,
        tries: u8,
        sent: Option<Tick>,
        clouded: bool,
        spared: u8,
    },
    /// After a retransmission timeout with large frames in flight: rounds of a base-size ping
    /// and [`LARGE_PINGS`] at the current size, to tell a black hole from silence and from
    /// loss. The last round started at `sent`; `due` of its datagrams are still to go (the
    /// base-size one first); `small` and `large`: whether one of each size was answered since
    /// the last timeout; `confirmed`: the timeouts in a row so far that each followed a small
    /// answer and no large one. Interrupts a search (`searching`), which goes on where it was
    /// when progress ends the check: a timeout during a transfer is as often congestion as a
    /// smaller path.
    Checking {
        sent: Option<Tick>,
        due: u8,
        small: bool,
        large: bool,
        confirmed: u8,
        searching: bool,
    },
}

impl Phase {
    /// A size's first try, due now.
    fn probing(size: u16) -> Self {
        Self::Probing {
            size,
            tries: 0,
            sent: None,
            clouded: false,
            spared: 0,
        }
    }
}

/// One peer's path MTU and its search.
#[derive(Debug, Clone)]
pub(crate) struct PathMtu {
    phase: Phase,
    /// Token of the last probe or check sent; a probe's pong is matched against it.
    token: u64,
    /// Token of the base-size ping of the current round of checks; the round's pings at the
    /// current size follow it, up to `token`.
    round: u64,
    base: u16,
    ceiling: u16,
    /// The largest datagram known to pass.
    current: u16,
    /// The smallest size known (or presumed, after [`MAX_PROBES`] unanswered) not to pass;
    /// `ceiling + 1` before any.
    too_big: u16,
}

/// A datagram [`PathMtu::on_sent`] sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ProbeDatagram {
    /// Its size: the ping is padded to it.
    pub(crate) size: usize,
    /// The ping's token.
    pub(crate) token: u64,
}

/// A size as stored (every size here is at most `MAX_DATAGRAM_LEN`, below `u16::MAX`).
fn narrow(size: usize) -> u16 {
    u16::try_from(size).unwrap_or(u16::MAX - 1)
}

impl PathMtu {
    /// A path at `base`, searching upward to `ceiling`. `token_seed` starts the probes'
    /// tokens (kept apart from keep-alive pings' by the caller).
    pub(crate) fn new(base: usize, ceiling: usize, token_seed: u64) -> Self {
        let (base, ceiling) = (narrow(base), narrow(ceiling.max(base)));
        let mut p = Self {
            phase: Phase::Idle { next: None },
            token: token_seed,
            round: token_seed,
            base,
            ceiling,
            current: base,
            too_big: ceiling + 1,
        };
        p.start_search();
        p
    }

    /// The largest datagram to send now.
    pub(crate) fn current(&self) -> usize {
        self.current.into()
    }

    /// The size every path is assumed to carry.
    pub(crate) fn base(&self) -> usize {
        self.base.into()
    }

    /// The size of the datagram due now, if any. Timers are advanced by
    /// [`on_timeout`](Self::on_timeout), not here.
    pub(crate) fn due(&self) -> Option<usize> {
        match self.phase {
            Phase::Checking { due: ROUND, .. } => Some(self.base.into()),
            Phase::Checking { due: 1.., .. } => Some(self.current.into()),
            Phase::Probing {
                size, sent: None, ..
            } => Some(size.into()),
            _ => None,
        }
    }

    /// Records that the datagram [`due`](Self::due) returned is being sent at `now`; returns
    /// it with its token.
    pub(crate) fn on_sent(&mut self, now: Tick) -> Option<ProbeDatagram> {
        let size = self.due()?;
        self.token = self.token.wrapping_add(1);
        match &mut self.phase {
            Phase::Checking { sent, due, .. } => {
                if *due == ROUND {
                    self.round = self.token;
                    *sent = Some(now);
                }
                *due -= 1;
            }
            Phase::Probing {
                tries,
                sent,
                clouded,
                ..
            } => {
                *tries += 1;
                *sent = Some(now);
                *clouded = false;
            }
            Phase::Idle { .. } => {}
        }
        Some(ProbeDatagram {
            size,
            token: self.token,
        })
    }

    /// The next instant [`on_timeout`](Self::on_timeout) has work, given the time a probe is
    /// waited for (`wait`: the peer's retransmission timeout, computed only when a probe is
    /// out: this runs for every datagram).
    pub(crate) fn deadline(&self, wait: impl FnOnce() -> Duration) -> Option<Tick> {
        match self.phase {
            Phase::Idle { next } => next,
            Phase::Probing { sent, .. } => sent.map(|t| t + wait()),
            Phase::Checking {
                sent: Some(t),
                due: 0,
                small: false,
                ..
            } => Some(t + wait()),
            Phase::Checking { .. } => None,
        }
    }

    /// Timer work: a probe unanswered for `wait` is tried again or given up; a round of checks
    /// whose base-size ping is unanswered is sent again (silence proves nothing); a search due
    /// starts.
    pub(crate) fn on_timeout(&mut self, now: Tick, wait: Duration) {
        match &mut self.phase {
            Phase::Idle { next: Some(at) } if *at <= now => self.start_search(),
            Phase::Probing {
                size,
                tries,
                sent: sent @ Some(_),
                clouded,
                spared,
            } if sent.is_some_and(|t| t + wait <= now) => {
                if *clouded && *spared < MAX_SPARED {
                    // Data was lost too: this try proves nothing about the size.
                    *spared += 1;
                    *tries -= 1;
                    *sent = None;
                } else if *tries >= MAX_PROBES as u8 {
                    let size = *size;
                    self.refused(size, now);
                } else {
                    *sent = None;
                }
            }
            Phase::Checking {
                sent: Some(t),
                due: due @ 0,
                small: false,
                ..
            } if *t + wait <= now => *due = ROUND,
            _ => {}
        }
    }

    /// The socket refused a datagram of `size` as larger than the link allows: no need to
    /// wait for the probe to be lost.
    pub(crate) fn on_refused(&mut self, size: usize, now: Tick) {
        let size = narrow(size);
        if size <= self.current {
            return;
        }
        match self.phase {
            Phase::Probing { size: probing, .. } if probing == size => self.refused(size, now),
            _ => self.too_big = self.too_big.min(size),
        }
    }

    /// A pong: true if it answered our last probe or a ping of the current round of checks
    /// (the caller then ignores it).
    pub(crate) fn on_pong(&mut self, token: u64, now: Tick) -> bool {
        if let Phase::Checking {
            small, large, due, ..
        } = &mut self.phase
        {
            if *due == ROUND {
                // The round's first ping is not out yet: whatever this answers is older.
                return false;
            }
            // Tokens wrap: measured from the round's first.
            let (k, last) = (
                token.wrapping_sub(self.round),
                self.token.wrapping_sub(self.round),
            );
            if k > last {
                return false;
            }
            if k == 0 {
                *small = true;
            } else {
                *large = true;
            }
            return true;
        }
        if token != self.token {
            return false;
        }
        if let Phase::Probing {
            size,
            sent: Some(_),
            ..
        } = self.phase
        {
            self.current = self.current.max(size);
            self.next_step(now);
        }
        true
    }

    /// An acknowledgement covered something new: the path works at its current size. A
    /// check ends; a search it interrupted goes on (from the largest size answered and the
    /// smallest given up, so far), else the next starts after [`RAISE_INTERVAL`].
    pub(crate) fn on_progress(&mut self, now: Tick) {
        if let Phase::Checking { searching, .. } = self.phase {
            if searching {
                self.next_step(now);
            } else {
                self.settle(now);
            }
        }
    }

    /// Data sent to the peer was found lost: a probe out now may have been lost the same way,
    /// whatever its size.
    pub(crate) fn on_data_lost(&mut self) {
        if let Phase::Probing {
            sent: Some(_),
            clouded,
            ..
        } = &mut self.phase
        {
            *clouded = true;
        }
    }

    /// The retransmission timer fired with a frame too large for the base size the oldest in
    /// flight. Returns true when this is a black hole: the [`BLACK_HOLE_CONFIRMED`]th timeout
    /// in a row, without an acknowledgement of anything new, that follows an answered
    /// base-size ping and no answered current-size one. Every timeout sends a new round.
    pub(crate) fn on_rto(&mut self) -> bool {
        if self.current <= self.base {
            return false;
        }
        match &mut self.phase {
            Phase::Checking {
                due,
                small,
                large,
                confirmed,
                ..
            } => {
                *confirmed = if *small && !*large {
                    confirmed.saturating_add(1)
                } else {
                    0
                };
                (*small, *large, *due) = (false, false, ROUND);
                *confirmed >= BLACK_HOLE_CONFIRMED
            }
            _ => {
                let searching = matches!(self.phase, Phase::Probing { .. });
                self.phase = Phase::Checking {
                    sent: None,
                    due: ROUND,
                    small: false,
                    large: false,
                    confirmed: 0,
                    searching,
                };
                false
            }
        }
    }

    /// `size` is presumed too large: search below it.
    fn refused(&mut self, size: u16, now: Tick) {
        self.too_big = self.too_big.min(size);
        self.next_step(now);
    }

    /// A new search, from the current size up to the ceiling (tried first).
    fn start_search(&mut self) {
        self.too_big = self.ceiling + 1;
        self.phase = if self.current >= self.ceiling {
            Phase::Idle { next: None }
        } else {
            Phase::probing(self.ceiling)
        };
    }

    /// No search now: none needed at the ceiling, else one after [`RAISE_INTERVAL`].
    fn settle(&mut self, now: Tick) {
        self.phase = Phase::Idle {
            next: (self.current < self.ceiling).then(|| now + RAISE_INTERVAL),
        };
    }

    /// The next size to probe, halfway between what passed and what did not, or the end of
    /// the search.
    fn next_step(&mut self, now: Tick) {
        if self.current >= self.ceiling || usize::from(self.too_big - self.current) <= GRANULARITY {
            self.settle(now);
        } else {
            self.phase = Phase::probing(self.current + (self.too_big - self.current) / 2);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WAIT: Duration = Duration::from_millis(100);

    /// Runs a search against a path that carries datagrams up to `path` bytes; `refuses`:
    /// the socket refuses larger ones at once (the local link), instead of losing them.
    /// Returns the size found and the probes sent.
    fn search(pmtu: &mut PathMtu, path: usize, refuses: bool, mut now: Tick) -> (usize, u32) {
        let mut probes = 0;
        for _ in 0..1000 {
            if let Some(p) = pmtu.on_sent(now) {
                probes += 1;
                if p.size <= path {
                    assert!(pmtu.on_pong(p.token, now));
                } else if refuses {
                    pmtu.on_refused(p.size, now);
                }
                continue;
            }
            match pmtu.deadline(|| WAIT) {
                Some(at) if at < now + RAISE_INTERVAL / 2 => {
                    now = at;
                    pmtu.on_timeout(now, WAIT);
                }
                _ => return (pmtu.current(), probes),
            }
        }
        panic!("the search did not end");
    }

    #[test]
    fn finds_the_path_within_the_granularity_from_below_and_never_above() {
        let now = Tick::ZERO;
        for (path, refuses) in [(1472, true), (1472, false), (8972, false), (1300, false)] {
            let mut p = PathMtu::new(1200, 8972, 0);
            let (found, probes) = search(&mut p, path, refuses, now);
            assert!(
                found <= path && path - found < GRANULARITY,
                "{path}: {found}"
            );
            // Binary search: about log2(7772 / 16) sizes, each tried at most MAX_PROBES times.
            assert!(probes <= 10 * MAX_PROBES, "{path}: {probes} probes");
        }
        // The ceiling passes: one probe.
        let mut p = PathMtu::new(1200, 32_000, 0);
        assert_eq!(search(&mut p, 65_507, false, now), (32_000, 1));
    }

    #[test]
    fn a_lost_probe_is_tried_three_times_before_the_size_is_given_up() {
        let now = Tick::ZERO;
        let mut p = PathMtu::new(1200, 9000, 0);
        for i in 0..MAX_PROBES {
            let at = now + WAIT * (i + 1);
            assert_eq!(p.on_sent(at).map(|d| d.size), Some(9000));
            assert_eq!(p.due(), None);
            p.on_timeout(at + WAIT, WAIT);
        }
        // The fourth loss moved the search below 9000.
        let next = p.due().unwrap();
        assert!(next < 9000 && next > 1200, "{next}");
        // A late pong of an old probe does not count.
        let old = p.token;
        let d = p.on_sent(now).unwrap();
        assert_ne!(d.token, old);
        assert!(!p.on_pong(old, now));
        assert_eq!(p.current(), 1200);
    }

    /// A timeout during a search (congestion, as often as a smaller path) interrupts it for a
    /// check; progress ends the check, and the search goes on where it was instead of
    /// waiting for the next raise, 10 minutes on: it ends at the path, within the granularity.
    #[test]
    fn a_search_interrupted_by_a_check_goes_on_after_progress() {
        let now = Tick::ZERO;
        let path = 1252;
        let mut p = PathMtu::new(1200, 8972, 0);
        // Probe until a size above the base is answered (the ceiling and some halvings lost).
        let mut t = now;
        for _ in 0..100 {
            if p.current() > 1200 {
                break;
            }
            if let Some(d) = p.on_sent(t) {
                if d.size <= path {
                    assert!(p.on_pong(d.token, t));
                }
                continue;
            }
            t = p.deadline(|| WAIT).expect("searching");
            p.on_timeout(t, WAIT);
        }
        let mid = p.current();
        assert!(mid > 1200 && path - mid >= GRANULARITY, "{mid}");
        // A retransmission timeout with large frames in flight: a check, answered; then the
        // acknowledgements come again.
        assert!(!p.on_rto());
        let c = p.on_sent(t).unwrap();
        assert_eq!(c.size, 1200);
        assert!(p.on_pong(c.token, t));
        p.on_progress(t);
        assert!(p.due().is_some(), "the search goes on at once");
        let (found, _) = search(&mut p, path, false, t);
        assert!(
            found <= path && path - found < GRANULARITY,
            "{found} (was {mid} when interrupted)"
        );
        // Without a search under way, a check that ends leaves the path as it is.
        let mut q = PathMtu::new(1200, 9000, 0);
        let d = q.on_sent(now).unwrap();
        assert!(q.on_pong(d.token, now));
        assert!(!q.on_rto());
        q.on_progress(now);
        assert_eq!(
            (q.current(), q.due(), q.deadline(|| WAIT)),
            (9000, None, None)
        );
    }

    /// A try lost while data was lost too is tried again without counting, at most
    /// `MAX_SPARED` times per size; then tries count again.
    #[test]
    fn a_probe_lost_with_data_is_spared_a_bounded_number_of_times() {
        let mut now = Tick::ZERO;
        let mut p = PathMtu::new(1200, 9000, 0);
        let mut sent = 0;
        // Every try clouded by data loss: MAX_SPARED spared, then MAX_PROBES counted.
        for _ in 0..100 {
            if p.due() != Some(9000) {
                break;
            }
            p.on_sent(now).unwrap();
            sent += 1;
            p.on_data_lost();
            now = now + WAIT;
            p.on_timeout(now, WAIT);
        }
        assert_eq!(sent, u32::from(MAX_SPARED) + MAX_PROBES);
        assert!(p.due().is_some_and(|s| s < 9000));
        // Loss found before a try went out does not spare it.
        let mut q = PathMtu::new(1200, 9000, 0);
        q.on_data_lost();
        for i in 0..MAX_PROBES {
            assert_eq!(q.on_sent(now).map(|d| d.size), Some(9000), "try {i}");
            now = now + WAIT;
            q.on_timeout(now, WAIT);
        }
        assert!(q.due().is_some_and(|s| s < 9000));
    }

    /// A round of checks is a base-size ping and `LARGE_PINGS` at the current size; an
    /// answer to a large one shows the size passes, so the timeouts were loss: no black hole,
    /// however many come in a row.
    #[test]
    fn an_answered_large_ping_shows_loss_not_a_black_hole() {
        let now = Tick::ZERO;
        let mut p = PathMtu::new(1200, 9000, 0);
        let d = p.on_sent(now).unwrap();
        assert!(p.on_pong(d.token, now));
        for _ in 0..10 {
            assert!(!p.on_rto());
            // Before the round goes out, no answer is this round's (here: the last one sent).
            assert!(!p.on_pong(p.token, now));
            let round: Vec<ProbeDatagram> = std::iter::from_fn(|| p.on_sent(now)).collect();
            let sizes: Vec<usize> = round.iter().map(|d| d.size).collect();
            assert_eq!(sizes, [1200, 9000, 9000]);
            // The small one and the second large one answered (the first lost).
            assert!(p.on_pong(round[0].token, now));
            assert!(p.on_pong(round[2].token, now));
        }
        // A pong from an earlier round is not this one's.
        assert!(!p.on_rto());
        let round: Vec<ProbeDatagram> = std::iter::from_fn(|| p.on_sent(now)).collect();
        assert!(p.on_pong(round[0].token, now));
        assert!(!p.on_pong(round[0].token.wrapping_sub(1), now));
        assert!(!p.on_rto(), "one confirmed");
        let _ = std::iter::from_fn(|| p.on_sent(now)).count();
        assert!(!p.on_pong(round[2].token, now), "last round's");
        assert!(p.on_pong(p.round, now));
        assert!(p.on_rto(), "small answered, no large: confirmed twice");
    }

    #[test]
    fn a_black_hole_is_a_timeout_after_an_answered_check_and_silence_is_not() {
        let now = Tick::ZERO;
        let mut p = PathMtu::new(1200, 9000, 0);
        let d = p.on_sent(now).unwrap();
        assert!(p.on_pong(d.token, now));
        assert_eq!(p.current(), 9000);
        // Silence: timeouts with checks unanswered never fall back.
        for _ in 0..5 {
            assert!(!p.on_rto());
            let c = p.on_sent(now).unwrap();
            assert_eq!(c.size, 1200, "a base-size check");
            p.on_timeout(now + WAIT, WAIT);
        }
        // Progress clears the suspicion.
        p.on_progress(now);
        assert!(!p.on_rto());
        let c = p.on_sent(now).unwrap();
        assert!(p.on_pong(c.token, now));
        // Small datagrams pass (each timeout's check answered), and timeouts go on finding no
        // progress: a black hole at the third in a row.
        assert!(!p.on_rto());
        let c = p.on_sent(now).unwrap();
        assert!(p.on_pong(c.token, now));
        assert!(p.on_rto());
        // An answer from before a partition does not count for a timeout during it.
        let mut p = PathMtu::new(1200, 9000, 0);
        let d = p.on_sent(now).unwrap();
        assert!(p.on_pong(d.token, now));
        assert!(!p.on_rto());
        let c = p.on_sent(now).unwrap();
        assert!(p.on_pong(c.token, now));
        assert!(!p.on_rto(), "one confirmed timeout");
        let late = p.on_sent(now).unwrap();
        // The link goes down: checks go unanswered from here; a late pong of an older check
        // is not this one's.
        assert!(!p.on_pong(c.token, now));
        for _ in 0..5 {
            assert!(!p.on_rto());
            let _ = p.on_sent(now);
        }
        let _ = late;
        // At the base size, timeouts are not suspicious.
        let mut q = PathMtu::new(1200, 1200, 0);
        assert!(!q.on_rto());
        assert_eq!(q.due(), None);
        assert_eq!(q.deadline(|| WAIT), None);
    }
}
