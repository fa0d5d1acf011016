//! mesh-wire encode and decode of a 64-byte and a 1200-byte data frame, against a `memcpy` of
//! the same number of bytes measured in the same run.
//!
//! ```text
//! cargo bench -p mesh-benches --bench wire
//! ```
//!
//! Criterion prints each group's timings side by side; the ratio of `encode`/`decode` to
//! `memcpy` is the cost of the format over moving the bytes at all; it is printed at the end.
#![allow(clippy::print_stdout, reason = "a bench reports its ratios")]

use std::hint::black_box;

use criterion::{criterion_group, BenchmarkId, Criterion, Throughput};
use mesh_wire::{DataFrame, Datagram, DatagramWriter, Frame, Header, HEADER_LEN};

/// Datagram sizes: a small message, and a full 1200-byte datagram.
const SIZES: [usize; 2] = [64, 1200];

fn payload_len(datagram_len: usize) -> usize {
    datagram_len - HEADER_LEN - DataFrame::overhead(false, false)
}

fn encode(buf: &mut Vec<u8>, payload: &[u8]) -> usize {
    let mut w = DatagramWriter::new(buf, Header::new(0xA5A5, 0x5A5A), 1200);
    w.push(&Frame::Data(DataFrame {
        lazy_ack: false,
        channel: 0,
        seq: 12345,
        message: 678,
        order: None,
        fragment: None,
        payload,
    }))
    .expect("fits");
    w.finish().len()
}

fn bench_wire(c: &mut Criterion) {
    let mut group = c.benchmark_group("wire");
    for size in SIZES {
        let payload: Vec<u8> = (0..payload_len(size)).map(|i| i as u8).collect();
        let mut buf = Vec::with_capacity(2048);
        assert_eq!(encode(&mut buf, &payload), size);
        let datagram = buf.clone();
        group.throughput(Throughput::Bytes(size as u64));

        let src = vec![7u8; size];
        let mut dst = vec![0u8; size];
        group.bench_with_input(BenchmarkId::new("memcpy", size), &size, |b, _| {
            b.iter(|| {
                dst.copy_from_slice(black_box(&src));
                black_box(&dst);
            })
        });
        group.bench_with_input(BenchmarkId::new("encode", size), &size, |b, _| {
            b.iter(|| black_box(encode(&mut buf, black_box(&payload))))
        });
        group.bench_with_input(BenchmarkId::new("decode", size), &size, |b, _| {
            b.iter(|| {
                let d = Datagram::decode(black_box(&datagram)).expect("valid");
                let mut n = 0;
                for f in d.frames() {
                    if let Frame::Data(f) = f {
                        n += f.payload.len();
                    }
                }
                black_box(n)
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench_wire);

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
    println!("\n== ratios to memcpy of the same bytes (time; lower is better) ==");
    for size in SIZES {
        let base = format!("memcpy/{size}");
        for l in mesh_benches::ratio_lines(
            "wire",
            &[
                (&format!("encode/{size}"), &base),
                (&format!("decode/{size}"), &base),
            ],
        ) {
            println!("{l}");
        }
    }
}
