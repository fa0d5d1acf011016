//! The frames in flight to one peer, by sequence number: a ring of slots from the oldest
//! unacknowledged frame to the newest sent. Sequence numbers are given out in order and leave
//! mostly in order, so a ring does what an ordered map did (a B-tree: ~12 % of a bulk sender's
//! time in its inserts and removals) with an index instead of a search.
//!
//! The ring ends at the next sequence number to send, which the caller keeps (so the ring
//! stores no base of its own); slots of frames acknowledged out of order are empty until the
//! older ones leave, and empty slots at the front are dropped at once.

use std::collections::VecDeque;
use std::ops::Range;

use super::recovery::Sent;

/// Slots an empty ring may keep allocated (~45 KB): one that grew past it for a burst is freed
/// when the burst is all acknowledged, so a peer's memory follows its traffic.
const MAX_IDLE_SLOTS: usize = 512;

/// The frames in flight. Every method takes `next`, the sequence number the next frame sent
/// will get: the ring covers `next - len .. next`.
#[derive(Debug, Default)]
pub(crate) struct Flight {
    slots: VecDeque<Option<Sent>>,
}

impl Flight {
    fn base(&self, next: u64) -> u64 {
        next - self.slots.len() as u64
    }

    /// The slots of the sequence numbers in `range` clipped to the ring, and the first number.
    fn clip(&self, range: Range<u64>, next: u64) -> (Range<usize>, u64) {
        let base = self.base(next);
        let (start, end) = (range.start.max(base), range.end.min(next));
        if start < end {
            ((start - base) as usize..(end - base) as usize, start)
        } else {
            (0..0, start)
        }
    }

    fn index(&self, seq: u64, next: u64) -> Option<usize> {
        let base = self.base(next);
        (seq >= base && seq < next).then(|| (seq - base) as usize)
    }

    /// Records frame `next` (the caller then counts `next` up by one).
    pub(crate) fn push(&mut self, s: Sent) {
        self.slots.push_back(Some(s));
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    pub(crate) fn get(&self, seq: u64, next: u64) -> Option<&Sent> {
        self.slots.get(self.index(seq, next)?)?.as_ref()
    }

    pub(crate) fn get_mut(&mut self, seq: u64, next: u64) -> Option<&mut Sent> {
        let i = self.index(seq, next)?;
        self.slots.get_mut(i)?.as_mut()
    }

    /// Takes frame `seq` out, if in flight; empty slots left at the front go.
    pub(crate) fn remove(&mut self, seq: u64, next: u64) -> Option<Sent> {
        let i = self.index(seq, next)?;
        let s = self.slots.get_mut(i)?.take();
        while matches!(self.slots.front(), Some(None)) {
            self.slots.pop_front();
        }
        if self.slots.is_empty() && self.slots.capacity() > MAX_IDLE_SLOTS {
            self.slots = VecDeque::new();
        }
        s
    }

    /// The sequence numbers in flight within `range` (clipped to the ring), in order. Costs a
    /// step per slot in the clipped range, empty or not: the caller clips what it asks for
    /// (see `Recovery::on_ack`), so that input from the network cannot make it walk the ring
    /// more than once per datagram.
    pub(crate) fn keys_in(&self, range: Range<u64>, next: u64) -> impl Iterator<Item = u64> + '_ {
        let (slots, start) = self.clip(range, next);
        self.slots
            .range(slots)
            .zip(start..)
            .filter_map(|(s, seq)| s.as_ref().map(|_| seq))
    }

    /// The frames in flight within `range` (clipped to the ring), in order, to change.
    pub(crate) fn iter_mut_in(
        &mut self,
        range: Range<u64>,
        next: u64,
    ) -> impl Iterator<Item = (u64, &mut Sent)> + '_ {
        let (slots, start) = self.clip(range, next);
        self.slots
            .range_mut(slots)
            .zip(start..)
            .filter_map(|(s, seq)| s.as_mut().map(|s| (seq, s)))
    }
}

#[cfg(test)]
mod tests {
    use crate::time::Tick;

    use bytes::Bytes;

    use super::*;
    use crate::types::MessageId;

    fn sent(tag: u8) -> Sent {
        Sent::new(
            MessageId(u64::from(tag)),
            0,
            0,
            None,
            None,
            Bytes::from(vec![tag; 4]),
            Tick::ZERO,
            false,
        )
    }

    #[test]
    fn slots_follow_the_sequence_numbers_and_the_front_never_starts_empty() {
        let mut f = Flight::default();
        let mut next = 100;
        for tag in 0..5 {
            f.push(sent(tag));
            next += 1;
        }
        // 100..105 in flight.
        assert_eq!(
            f.keys_in(0..u64::MAX, next).collect::<Vec<_>>(),
            [100, 101, 102, 103, 104]
        );
        assert!(f.get(99, next).is_none() && f.get(105, next).is_none());
        // Out of order: 102 leaves, its slot stays empty.
        assert_eq!(f.remove(102, next).unwrap().id, MessageId(2));
        assert!(f.remove(102, next).is_none());
        assert_eq!(f.keys_in(101..104, next).collect::<Vec<_>>(), [101, 103]);
        // The oldest leave: the empty slot behind them goes too.
        f.remove(100, next);
        f.remove(101, next);
        assert_eq!(f.slots.len(), 2);
        assert_eq!(f.get(103, next).unwrap().id, MessageId(3));
        for (seq, s) in f.iter_mut_in(0..u64::MAX, next) {
            s.retransmitted = seq == 104;
        }
        assert!(f.get(104, next).unwrap().retransmitted);
        f.remove(104, next);
        f.remove(103, next);
        assert!(f.is_empty());
        // Ranges outside the ring, or backwards, are empty.
        f.push(sent(9));
        next += 1;
        assert_eq!(f.keys_in(0..50, next).count(), 0);
        let (high, low) = (200, 100);
        assert_eq!(f.keys_in(high..low, next).count(), 0);
        assert_eq!(f.keys_in(next..u64::MAX, next).count(), 0);
        f.remove(next - 1, next);
        // A burst's ring is freed once it is all acknowledged; a small one is kept.
        for _ in 0..2000 {
            f.push(sent(1));
            next += 1;
        }
        for seq in next - 2000..next {
            f.remove(seq, next);
        }
        assert_eq!(f.slots.capacity(), 0);
        f.push(sent(1));
        next += 1;
        f.remove(next - 1, next);
        assert!(f.slots.capacity() > 0);
    }
}
