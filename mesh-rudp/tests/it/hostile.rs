//! Floods of garbage and of valid-looking frames from unknown senders leave state bounded.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use mesh_rudp::sim::Sim;
use mesh_rudp::{Delivery, EndpointConfig, Event};
use mesh_wire::{
    AckFrame, AckRanges, DataFrame, DatagramWriter, Fragment, Frame, Header, SeqRange,
};

use crate::util::payload;

struct Xorshift(u64);
impl Xorshift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

fn attacker(i: u64) -> SocketAddr {
    SocketAddr::new(
        IpAddr::V4(Ipv4Addr::new(127, 1, (i >> 8) as u8, i as u8)),
        20_000 + (i % 1000) as u16,
    )
}

#[test]
fn garbage_flood_creates_no_state() {
    let mut sim = Sim::new(11);
    let victim = sim.add_endpoint(EndpointConfig::default());
    let mut rng = Xorshift(42);
    for i in 0..20_000u64 {
        let len = (rng.next() % 1400) as usize;
        let bytes: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
        sim.inject(attacker(i), victim, &bytes);
    }
    let s = sim.endpoint(victim).stats();
    assert_eq!(s.peers, 0);
    assert_eq!(s.dropped_invalid, 20_000);
    assert!(sim.take_events(victim).is_empty());
}

fn forged(rng: &mut Xorshift, buf: &mut Vec<u8>) -> usize {
    let mut w = DatagramWriter::new(buf, Header::new(rng.next() | 1, 0), 1200);
    let ranges = [SeqRange {
        start: rng.next() as u32,
        end: rng.next() as u32,
    }];
    let body = vec![0xEE; (rng.next() % 900) as usize];
    let count = (rng.next() as u32).max(2);
    let frames = [
        Frame::Data(DataFrame {
            channel: rng.next() as u8,
            seq: rng.next() as u32,
            message: rng.next() as u32,
            order: (rng.next() % 2 == 0).then(|| rng.next() as u32),
            fragment: Some(Fragment {
                index: rng.next() as u32 % count,
                count,
            }),
            payload: &body,
        }),
        Frame::Ack(AckFrame {
            cumulative: rng.next() as u32,
            delay_micros: rng.next() as u32,
            ranges: AckRanges::List(&ranges),
        }),
    ];
    let _ = w.push(&frames[(rng.next() % 2) as usize]);
    let _ = w.push(&frames[0]);
    w.finish().len()
}

#[test]
fn forged_frame_flood_stays_bounded_and_healthy_peer_is_served() {
    let config = EndpointConfig::default()
        .max_peers(256)
        .new_peers_per_second(100)
        .clone();
    let mut sim = Sim::new(12);
    let victim = sim.add_endpoint(config.clone());
    let healthy = sim.add_endpoint(config);
    // The healthy peer is established before the flood starts.
    sim.send(healthy, victim, payload(0, 10), Delivery::Unordered)
        .unwrap();
    sim.run_until_idle(10_000).unwrap();
    let mut rng = Xorshift(7);
    let mut buf = Vec::new();
    let mut tag = 0;
    for round in 0..50u64 {
        // 400 forged datagrams from 400 addresses, then some healthy traffic.
        for i in 0..400u64 {
            let n = forged(&mut rng, &mut buf);
            let bytes = buf[..n].to_vec();
            sim.inject(attacker(round * 400 + i), victim, &bytes);
        }
        for _ in 0..5 {
            tag += 1;
            sim.send(healthy, victim, payload(tag, 3000), Delivery::Unordered)
                .unwrap();
        }
        sim.run_for(Duration::from_millis(100), 100_000).unwrap();
        let s = sim.endpoint(victim).stats();
        assert!(s.peers <= 256, "peers {}", s.peers);
        assert!(s.reassembly_bytes <= 256 << 20);
    }
    sim.run_until_idle(1_000_000).unwrap();
    let got = sim
        .take_events(victim)
        .into_iter()
        .filter(|e| matches!(e, Event::Message { from, .. } if *from == sim.addr(healthy)))
        .count();
    assert_eq!(got, tag as usize + 1, "every healthy message arrived");
    let s = sim.endpoint(victim).stats();
    assert!(s.dropped_peer_limit > 0, "the new-peer rate limit engaged");
    // Forged peers that never answer are eventually dropped.
    sim.run_for(Duration::from_secs(6), 1_000_000).unwrap();
    let s = sim.endpoint(victim).stats();
    assert!(s.peers <= 1, "forged peers linger: {}", s.peers);
    assert_eq!(s.reassembly_bytes, 0);
}
