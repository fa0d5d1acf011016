//! Model-based properties: the range set against a naive set, and reassembly (through the
//! endpoint's public input) against a naive model, with fragments in any order and duplicated.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::Instant;

use bytes::Bytes;
use mesh_rudp::{Endpoint, EndpointConfig, Event, RangeSet, StartTime};
use mesh_wire::{DataFrame, DatagramWriter, Fragment, Frame, Header};
use proptest::prelude::*;

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

    #[test]
    fn reassembly_in_any_order_matches_the_model(
        sizes in prop::collection::vec(1usize..5000, 1..6),
        shuffle in any::<u64>(),
        dup_every in 2usize..7,
    ) {
        let from: SocketAddr = "127.0.0.1:9".parse().unwrap();
        let mut ep = Endpoint::new(EndpointConfig::default(), StartTime::read()).unwrap();
        let now = Instant::now();
        // Build every fragment of every message as (seq, frame fields).
        let frag = 700usize;
        let mut pieces = Vec::new();
        let mut seq = 0u32;
        let messages: Vec<Vec<u8>> = sizes
            .iter()
            .enumerate()
            .map(|(m, &n)| (0..n).map(|i| (i * 7 + m) as u8).collect())
            .collect();
        for (m, data) in messages.iter().enumerate() {
            let count = data.len().div_ceil(frag) as u32;
            for i in 0..count {
                let start = i as usize * frag;
                let end = (start + frag).min(data.len());
                pieces.push((seq, m as u32, (count > 1).then_some(Fragment { index: i, count }), data[start..end].to_vec()));
                seq += 1;
            }
        }
        // Deterministic shuffle, then duplicate some.
        let mut x = shuffle | 1;
        for i in (1..pieces.len()).rev() {
            x ^= x << 13; x ^= x >> 7; x ^= x << 17;
            pieces.swap(i, (x % (i as u64 + 1)) as usize);
        }
        let dups: Vec<_> = pieces.iter().step_by(dup_every).cloned().collect();
        pieces.extend(dups);
        let mut buf = Vec::new();
        for (seq, message, fragment, payload) in &pieces {
            let mut w = DatagramWriter::new(&mut buf, Header::new(77, 0), 1200);
            w.push(&Frame::Data(DataFrame { lazy_ack: false, channel: 0, seq: *seq, message: *message, order: None, fragment: *fragment, payload })).unwrap();
            let bytes = w.finish().to_vec();
            ep.handle_datagram(now, from, &bytes);
        }
        let mut got = Vec::new();
        while let Some(e) = ep.poll_event() {
            if let Event::Message { data, .. } = e {
                got.push(data);
            }
        }
        let mut want: Vec<Bytes> = messages.into_iter().map(Bytes::from).collect();
        want.sort();
        got.sort();
        prop_assert_eq!(got, want);
        prop_assert_eq!(ep.stats().reassembly_bytes, 0);
    }
}
