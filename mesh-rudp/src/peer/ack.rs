//! The receiving side's acknowledgement state: which sequence numbers arrived (a cumulative
//! point and ranges above it), and when to say so.

use mesh_wire::{AckFrame, AckRanges, DatagramWriter, Frame, SeqRange};

use super::{Refused, LAZY_ACK_DELAY};
use crate::config::EndpointConfig;
use crate::ranges::{unwrap_seq, RangeSet};
use crate::time::Tick;

/// Sequence numbers a receiver accepts beyond its cumulative point (> `MAX_INFLIGHT_FRAMES`).
pub(crate) const RECV_WINDOW: u64 = 8192;
/// Most disjoint ranges a receiver tracks above its cumulative point.
const MAX_RECV_RANGES: usize = 256;
/// Most selective ranges written in one ack.
const ACK_RANGES_SENT: usize = 16;
/// Lazy-ack frames a receiver holds unacknowledged at most.
const LAZY_ACK_FRAMES: u32 = 16;

/// What one peer has received, and what it owes in acknowledgements.
#[derive(Debug, Default)]
pub(crate) struct AckState {
    /// Every sequence number below this arrived.
    cum: u64,
    /// Those above `cum` that arrived.
    above: RangeSet,
    /// Something arrived that no ack has covered yet.
    pending: bool,
    /// An ack must go out with the next datagram.
    pub(crate) now: bool,
    /// When a held ack must go out.
    pub(crate) deadline: Option<Tick>,
    /// When the oldest unacknowledged frame arrived (the ack's delay field).
    since: Option<Tick>,
    /// Frames asking for a prompt ack since the last ack.
    count: u32,
    /// Lazy-ack frames since the last ack.
    lazy_count: u32,
}

impl AckState {
    /// The full sequence number of a frame's wire number.
    pub(crate) fn unwrap(&self, wire: u32) -> u64 {
        unwrap_seq(wire, self.cum)
    }

    /// Whether frame `seq` can be taken: not seen before, within the window, and not one
    /// range too many.
    pub(crate) fn admit(&self, seq: u64) -> Result<(), Refused> {
        if seq < self.cum || self.above.contains(seq) {
            return Err(Refused::Duplicate);
        }
        if seq >= self.cum + RECV_WINDOW {
            return Err(Refused::OutOfWindow);
        }
        if seq != self.cum && self.above.len() >= MAX_RECV_RANGES {
            return Err(Refused::NoRoom);
        }
        Ok(())
    }

    /// A duplicate arrived: the sender missed our ack; send one at once.
    pub(crate) fn on_duplicate(&mut self) {
        self.now = true;
    }

    /// Frame `seq` was taken at `now`; `lazy` if its sender asked for a lazy ack. Decides when
    /// the ack goes out: at once for out-of-order data and every second frame (or always with
    /// no ack delay configured); lazy frames are held up to [`LAZY_ACK_DELAY`] or
    /// `LAZY_ACK_FRAMES` of them.
    pub(crate) fn on_received(&mut self, now: Tick, seq: u64, lazy: bool, config: &EndpointConfig) {
        if seq == self.cum {
            self.cum += 1;
            if let Some(r) = self.above.first() {
                if r.start == self.cum {
                    self.cum = r.end;
                    self.above.remove_below(r.end);
                }
            }
        } else {
            self.above.insert(seq);
            self.now = true;
        }
        self.pending = true;
        if self.since.is_none() {
            self.since = Some(now);
        }
        let delay = if lazy {
            // Nobody waits on it: held for something else to carry it, within limits.
            self.lazy_count += 1;
            if self.lazy_count >= LAZY_ACK_FRAMES {
                self.now = true;
            }
            config.max_ack_delay.max(LAZY_ACK_DELAY)
        } else {
            self.count += 1;
            if self.count >= 2 || config.max_ack_delay.is_zero() {
                self.now = true;
            }
            config.max_ack_delay
        };
        if !self.above.is_empty() {
            self.now = true;
        }
        if !self.now {
            let t = now + delay;
            self.deadline = Some(self.deadline.map_or(t, |d| d.min(t)));
        }
    }

    /// Whether an ack is owed (now or later).
    pub(crate) fn owed(&self) -> bool {
        self.pending || self.now
    }

    /// The held ack's time came.
    pub(crate) fn on_timeout(&mut self, now: Tick) {
        if self.deadline.is_some_and(|t| t <= now) {
            self.now = true;
            self.deadline = None;
        }
    }

    /// Writes the ack (the cumulative point and up to 16 ranges, as room allows) into `w`.
    pub(crate) fn write(
        &mut self,
        now: Tick,
        w: &mut DatagramWriter<'_>,
        scratch: &mut Vec<SeqRange>,
    ) {
        scratch.clear();
        let room = w.remaining().saturating_sub(10) / 8;
        for r in self.above.iter().take(ACK_RANGES_SENT.min(room)) {
            scratch.push(SeqRange {
                start: r.start as u32,
                end: r.end as u32,
            });
        }
        let delay = self
            .since
            .map_or(0, |t| now.saturating_duration_since(t).as_micros())
            .min(u128::from(u32::MAX)) as u32;
        let frame = Frame::Ack(AckFrame {
            cumulative: self.cum as u32,
            delay_micros: delay,
            ranges: AckRanges::List(scratch),
        });
        if w.push(&frame).is_ok() {
            self.pending = false;
            self.now = false;
            self.deadline = None;
            self.since = None;
            self.count = 0;
            self.lazy_count = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use mesh_wire::{Datagram, Header};

    use super::*;

    fn written(a: &mut AckState, now: Tick) -> (u32, Vec<SeqRange>) {
        let mut buf = Vec::new();
        let mut w = DatagramWriter::new(&mut buf, Header::new(1, 2), 1200);
        a.write(now, &mut w, &mut Vec::new());
        let bytes = w.finish().to_vec();
        let d = Datagram::decode(&bytes).unwrap();
        let Some(Frame::Ack(f)) = d.frames().next() else {
            panic!("an ack")
        };
        (f.cumulative, f.ranges.iter().collect())
    }

    #[test]
    fn ranges_above_the_cumulative_point_are_encoded_and_merge_when_filled() {
        let c = EndpointConfig::default();
        let t = Tick::ZERO;
        let mut a = AckState::default();
        for seq in [0, 1, 3, 4, 7] {
            a.admit(seq).unwrap();
            a.on_received(t, seq, false, &c);
        }
        assert_eq!(a.admit(1), Err(Refused::Duplicate));
        assert!(a.now, "out-of-order data is acknowledged at once");
        let (cum, ranges) = written(&mut a, t);
        assert_eq!(cum, 2);
        assert_eq!(
            ranges,
            vec![SeqRange { start: 3, end: 5 }, SeqRange { start: 7, end: 8 }]
        );
        assert!(!a.owed());
        // The gap fills: the cumulative point jumps over the first range.
        a.on_received(t, 2, false, &c);
        let (cum, ranges) = written(&mut a, t);
        assert_eq!(cum, 5);
        assert_eq!(ranges, vec![SeqRange { start: 7, end: 8 }]);
    }

    #[test]
    fn the_window_and_the_range_count_are_bounded() {
        let c = EndpointConfig::default();
        let t = Tick::ZERO;
        let mut a = AckState::default();
        assert_eq!(a.admit(RECV_WINDOW), Err(Refused::OutOfWindow));
        for i in 0..MAX_RECV_RANGES as u64 {
            a.on_received(t, 2 + 2 * i, false, &c);
        }
        assert_eq!(a.admit(1_000), Err(Refused::NoRoom));
        assert_eq!(a.admit(0), Ok(()), "the next in order always fits");
    }

    #[test]
    fn lazy_frames_are_held_until_their_delay_or_their_count() {
        let c = EndpointConfig::default();
        let t = Tick::ZERO;
        let mut a = AckState::default();
        a.on_received(t, 0, true, &c);
        assert!(!a.now && a.owed());
        assert_eq!(a.deadline, Some(t + LAZY_ACK_DELAY));
        a.on_timeout(t + Duration::from_millis(1));
        assert!(!a.now);
        a.on_timeout(t + LAZY_ACK_DELAY);
        assert!(a.now);
        written(&mut a, t);
        for seq in 1..LAZY_ACK_FRAMES as u64 {
            a.on_received(t, seq, true, &c);
            assert!(!a.now);
        }
        a.on_received(t, LAZY_ACK_FRAMES as u64, true, &c);
        assert!(a.now, "the 16th lazy frame is acknowledged at once");
        // A frame in order asking for a prompt ack, with no ack delay configured: at once.
        written(&mut a, t);
        a.on_received(t, LAZY_ACK_FRAMES as u64 + 1, false, &c);
        assert!(a.now);
    }
}
