//! Model-based properties: reassembly (through the endpoint's public input) against a naive
//! model, with fragments in any order and duplicated. (The range set's model test is a unit
//! test beside it: the type is internal.)

use std::net::SocketAddr;
use std::time::Instant;

use bytes::Bytes;
use mesh_rudp::{Endpoint, EndpointConfig, Event, StartTime};
use mesh_wire::{DataFrame, DatagramWriter, Fragment, Frame, Header};
use proptest::prelude::*;

proptest! {
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
