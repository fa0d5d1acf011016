//! Memory held by an endpoint, counted by a global allocator (dhat, in testing mode).
//!
//! An idle endpoint that knows 1000 peers, each of which sent it one reliable message, holds
//! under 1 KiB per peer; once traffic has finished, memory is back where it was after the
//! first burst: nothing accumulates from one burst to the next; unfinished messages stay
//! within the reassembly cap, and tiny messages queued to a silent peer within the send
//! queue's.

#![allow(
    clippy::print_stdout,
    reason = "the measured figures are shown with --nocapture"
)]

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use bytes::Bytes;
use mesh_rudp::sim::Sim;
use mesh_rudp::{Delivery, Endpoint, EndpointConfig, StartTime};
use mesh_wire::Fragment;

#[path = "it/wire.rs"]
mod wire;
use wire::data_datagram;

#[global_allocator]
static ALLOC: dhat::Alloc = dhat::Alloc;

fn heap() -> usize {
    dhat::HeapStats::get().curr_bytes
}

fn peer(i: u32) -> SocketAddr {
    SocketAddr::new(
        IpAddr::V4(Ipv4Addr::new(127, 2, (i >> 8) as u8, i as u8)),
        7000,
    )
}

#[test]
fn memory() {
    // One profiler per process: both checks run in this one test.
    let _profiler = dhat::Profiler::builder().testing().build();
    idle_peers_cost_under_1_kib_each();
    traffic_leaves_no_growth();
    unfinished_messages_stay_within_the_reassembly_cap();
    tiny_messages_stay_within_the_send_queue();
}

fn idle_peers_cost_under_1_kib_each() {
    let config = EndpointConfig::default()
        .new_peers_per_second(10_000)
        .clone();
    let mut ep = Endpoint::new(config, StartTime::read()).unwrap();
    let now = Instant::now();
    let mut buf = Vec::new();
    // Warm up the endpoint's own scratch buffers with one peer, then measure 1000 more.
    let mut add = |ep: &mut Endpoint, i: u32| {
        let bytes = data_datagram(u64::from(i) + 1, 0, 0, None, b"hello");
        ep.handle_datagram(now, peer(i), &bytes);
        while ep.poll_transmit(now, &mut buf).is_some() {}
        while ep.poll_event().is_some() {}
    };
    add(&mut ep, 100_000);
    let before = heap();
    for i in 0..1000 {
        add(&mut ep, i);
    }
    let per_peer = (heap() - before) / 1000;
    assert_eq!(ep.stats().peers, 1001);
    println!("idle state per peer: {per_peer} bytes");
    assert!(per_peer < 1024, "{per_peer} bytes per idle peer");
}

fn traffic_leaves_no_growth() {
    let mut sim = Sim::new(3);
    let a = sim.add_endpoint(EndpointConfig::default());
    let b = sim.add_endpoint(EndpointConfig::default());
    let round = |sim: &mut Sim, r: u8| {
        for i in 0..200u32 {
            let size = [10usize, 3000, 100_000][(i % 3) as usize];
            sim.send(
                a,
                b,
                Bytes::from(vec![r; size]),
                Delivery::Ordered { channel: 1 },
            )
            .unwrap();
        }
        sim.run_until_idle(1_000_000).unwrap();
        sim.run_for(Duration::from_millis(10), 10_000).unwrap();
        sim.take_events(a);
        sim.take_events(b);
    };
    // The first rounds grow every queue (the simulator's included) to its working size: two,
    // because the first is cut to the base datagram size until the path-MTU probe is
    // answered, and the next to the larger size found.
    round(&mut sim, 0);
    round(&mut sim, 1);
    let settled = heap();
    for r in 2..5 {
        round(&mut sim, r);
    }
    let after = heap();
    println!("after 3 more rounds (~20 MB through): {after} bytes vs {settled} settled");
    // What must not stay is the traffic itself: nothing accumulates from round to round.
    assert!(
        after < settled + 64 * 1024,
        "memory grew by {} bytes over three rounds",
        after.saturating_sub(settled)
    );
}

/// Senders that start many large messages and never finish them: what the endpoint allocates
/// for them (buffers grown ahead of the pieces included) stays within `reassembly_total`.
fn unfinished_messages_stay_within_the_reassembly_cap() {
    const CAP: usize = 1 << 20;
    let config = EndpointConfig::default()
        .max_message_size(CAP)
        .reassembly_per_peer(CAP)
        .reassembly_total(CAP)
        .send_queue_per_peer(CAP)
        .loopback_mtu(None)
        .new_peers_per_second(10_000)
        .clone();
    let mut ep = Endpoint::new(config, StartTime::read()).unwrap();
    let now = Instant::now();
    let mut buf = Vec::new();
    let piece = vec![7u8; 1100];
    let before = heap();
    let mut refused = 0;
    for p in 0..4u32 {
        let mut seq = 0u32;
        for message in 0..64u32 {
            // Claims 900 pieces (under the size limit); sends the first six, in order, so the
            // message's buffer grows several times.
            for index in 0..6u32 {
                let bytes = data_datagram(
                    u64::from(p) + 1,
                    seq,
                    message,
                    Some(Fragment { index, count: 900 }),
                    &piece,
                );
                seq += 1;
                let dropped = ep.stats().dropped_no_room;
                ep.handle_datagram(now, peer(200 + p), &bytes);
                refused += ep.stats().dropped_no_room - dropped;
                while ep.poll_transmit(now, &mut buf).is_some() {}
            }
        }
    }
    let grown = heap() - before;
    println!("unfinished messages: {grown} bytes held, {refused} pieces refused");
    assert!(refused > 0, "the cap was reached");
    assert!(ep.stats().reassembly_bytes <= CAP, "charged within the cap");
    assert!(
        grown < CAP + 256 * 1024,
        "{grown} bytes held for unfinished messages under a {CAP}-byte cap"
    );
}

/// A sender of 1-byte messages to a peer that never answers: what it holds stays within about
/// its send queue's byte limit, bookkeeping included (the queue takes one message per 192
/// bytes of the limit; counted in bytes alone, it would take a million of them here).
fn tiny_messages_stay_within_the_send_queue() {
    const CAP: usize = 1 << 20;
    let config = EndpointConfig::default()
        .max_message_size(1 << 10)
        .send_queue_per_peer(CAP)
        .clone();
    let mut ep = Endpoint::new(config, StartTime::read()).unwrap();
    let now = Instant::now();
    let mut buf = Vec::new();
    let before = heap();
    let mut queued = 0usize;
    while ep
        .send_reliable(
            now,
            peer(900),
            Bytes::from_static(b"x"),
            Delivery::Unordered,
        )
        .is_ok()
    {
        queued += 1;
        while ep.poll_transmit(now, &mut buf).is_some() {}
        assert!(queued <= CAP, "never pushed back");
    }
    let grown = heap() - before;
    println!("{queued} tiny messages queued: {grown} bytes held");
    assert_eq!(queued, CAP / 192);
    assert!(
        grown < CAP + CAP / 4,
        "{grown} bytes held for {queued} tiny messages under a {CAP}-byte queue"
    );
}
