//! A set of `u64` sequence numbers stored as disjoint half-open ranges.

use std::collections::BTreeMap;
use std::ops::Range;

/// Disjoint, non-adjacent ranges, keyed by start. Memory is one map node per range.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct RangeSet {
    map: BTreeMap<u64, u64>,
}

impl RangeSet {
    /// An empty set.
    #[cfg(test)]
    pub(crate) fn new() -> Self {
        Self::default()
    }

    /// Whether `x` is in the set.
    pub(crate) fn contains(&self, x: u64) -> bool {
        self.map
            .range(..=x)
            .next_back()
            .is_some_and(|(_, &end)| x < end)
    }

    /// Adds `x`; returns whether it was new.
    pub(crate) fn insert(&mut self, x: u64) -> bool {
        self.insert_range(x..x + 1)
    }

    /// Adds a range; returns whether any of it was new.
    pub(crate) fn insert_range(&mut self, r: Range<u64>) -> bool {
        if r.start >= r.end {
            return false;
        }
        let (mut start, mut end) = (r.start, r.end);
        // Merge with a range that starts at or before `start` and reaches it.
        if let Some((&s, &e)) = self.map.range(..=start).next_back() {
            if e >= end {
                return false;
            }
            if e >= start {
                start = s;
                end = end.max(e);
                self.map.remove(&s);
            }
        }
        // Swallow every range starting within [start, end].
        while let Some((&s, &e)) = self.map.range(start..=end).next() {
            end = end.max(e);
            self.map.remove(&s);
        }
        self.map.insert(start, end);
        true
    }

    /// Removes everything below `x`.
    pub(crate) fn remove_below(&mut self, x: u64) {
        while let Some((&s, &e)) = self.map.first_key_value() {
            if s >= x {
                break;
            }
            self.map.remove(&s);
            if e > x {
                self.map.insert(x, e);
                break;
            }
        }
    }

    /// The first range, if any.
    pub(crate) fn first(&self) -> Option<Range<u64>> {
        self.map.first_key_value().map(|(&s, &e)| s..e)
    }

    /// The ranges in ascending order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = Range<u64>> + '_ {
        self.map.iter().map(|(&s, &e)| s..e)
    }

    /// Number of ranges.
    pub(crate) fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether the set is empty.
    pub(crate) fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

/// Maps a 32-bit wire sequence number to the 64-bit value closest to `expected`.
pub(crate) fn unwrap_seq(wire: u32, expected: u64) -> u64 {
    let candidate = (expected & !0xFFFF_FFFF) | u64::from(wire);
    let span = 1u64 << 32;
    let best = [
        candidate.checked_sub(span),
        Some(candidate),
        candidate.checked_add(span),
    ];
    best.into_iter()
        .flatten()
        .min_by_key(|&c| c.abs_diff(expected))
        .unwrap_or(candidate)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unwrap_picks_the_closest() {
        assert_eq!(unwrap_seq(5, 3), 5);
        assert_eq!(unwrap_seq(0xFFFF_FFFF, 1 << 32), 0xFFFF_FFFF);
        assert_eq!(unwrap_seq(2, 0xFFFF_FFF0), (1 << 32) + 2);
        assert_eq!(unwrap_seq(0, 0), 0);
    }

    #[test]
    fn merges_and_removes() {
        let mut s = RangeSet::new();
        assert!(s.insert(5));
        assert!(s.insert(7));
        assert!(!s.insert(5));
        assert_eq!(s.len(), 2);
        assert!(s.insert(6));
        assert_eq!(s.iter().collect::<Vec<_>>(), vec![5..8]);
        s.remove_below(6);
        assert_eq!(s.first(), Some(6..8));
        assert!(s.contains(7) && !s.contains(5) && !s.contains(8));
    }

    mod model {
        use std::collections::BTreeSet;

        use proptest::prelude::*;

        use super::super::RangeSet;

        #[derive(Debug, Clone)]
        enum Op {
            Insert(u64),
            InsertRange(u64, u64),
            RemoveBelow(u64),
        }

        fn op() -> impl Strategy<Value = Op> {
            prop_oneof![
                (0u64..200).prop_map(Op::Insert),
                (0u64..200, 0u64..20).prop_map(|(s, l)| Op::InsertRange(s, s + l)),
                (0u64..200).prop_map(Op::RemoveBelow),
            ]
        }

        proptest! {
            #[test]
            fn range_set_matches_a_naive_set(ops in prop::collection::vec(op(), 0..200)) {
                let mut set = RangeSet::new();
                let mut model = BTreeSet::new();
                for op in ops {
                    match op {
                        Op::Insert(x) => {
                            prop_assert_eq!(set.insert(x), model.insert(x));
                        }
                        Op::InsertRange(s, e) => {
                            let mut new = false;
                            for x in s..e {
                                new |= model.insert(x);
                            }
                            prop_assert_eq!(set.insert_range(s..e), new);
                        }
                        Op::RemoveBelow(x) => {
                            set.remove_below(x);
                            model.retain(|&v| v >= x);
                        }
                    }
                    // Same members, and ranges disjoint, non-adjacent, ascending.
                    let flat: BTreeSet<u64> = set.iter().flatten().collect();
                    prop_assert_eq!(&flat, &model);
                    let ranges: Vec<_> = set.iter().collect();
                    for w in ranges.windows(2) {
                        prop_assert!(w[0].end < w[1].start);
                    }
                    for x in 0..220 {
                        prop_assert_eq!(set.contains(x), model.contains(&x));
                    }
                }
            }
        }
    }
}
