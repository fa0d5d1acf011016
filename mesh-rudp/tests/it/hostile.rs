//! Floods of garbage and of valid-looking frames from unknown senders leave state bounded.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use mesh_rudp::sim::{Forger, Sim};
use mesh_rudp::{Delivery, EndpointConfig, Event, StartTime};

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
    let mut forger = Forger::new(7);
    let body = vec![0xEE; 700];
    let mut buf = Vec::new();
    let mut tag = 0;
    for round in 0..50u64 {
        // 400 forged datagrams from 400 addresses, then some healthy traffic.
        for i in 0..400u64 {
            let n = forger.datagram(&mut buf, &body, false);
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

fn keyed(secret: &[u8]) -> EndpointConfig {
    EndpointConfig::default()
        .cluster_key(Some(mesh_wire::ClusterKey::from_secret(secret)))
        .clone()
}

#[test]
fn with_a_cluster_key_forged_and_replayed_datagrams_are_refused() {
    use std::time::Instant;

    use mesh_rudp::Endpoint;

    let (a_addr, b_addr): (SocketAddr, SocketAddr) = (
        "127.0.0.1:1".parse().unwrap(),
        "127.0.0.1:2".parse().unwrap(),
    );
    let mut a = Endpoint::new(keyed(b"cluster").seed(Some(1)).clone(), StartTime::read()).unwrap();
    let mut b = Endpoint::new(keyed(b"cluster").seed(Some(2)).clone(), StartTime::read()).unwrap();
    let now = Instant::now();
    a.send_reliable(now, b_addr, payload(1, 100), Delivery::Unordered)
        .unwrap();
    let mut buf = Vec::new();
    let t = a.poll_transmit(now, &mut buf).unwrap();
    let captured = buf[..t.size].to_vec();
    b.handle_datagram(now, a_addr, &captured);
    // The same datagram again, and again later: refused as replays.
    for _ in 0..10 {
        b.handle_datagram(now, a_addr, &captured);
    }
    b.handle_datagram(now + Duration::from_secs(1), a_addr, &captured);
    let mut messages = 0;
    while let Some(e) = b.poll_event() {
        if matches!(e, Event::Message { .. }) {
            messages += 1;
        }
    }
    assert_eq!(messages, 1, "delivered once");
    assert_eq!(b.stats().dropped_replay, 11);

    // Forged: unkeyed, keyed with another secret, and a keyed datagram with a flipped bit.
    let mut other = Endpoint::new(
        keyed(b"not the cluster").seed(Some(3)).clone(),
        StartTime::read(),
    )
    .unwrap();
    let mut plain = Endpoint::new(
        EndpointConfig::default().seed(Some(4)).clone(),
        StartTime::read(),
    )
    .unwrap();
    for (i, ep) in [&mut other, &mut plain].into_iter().enumerate() {
        ep.send_reliable(now, b_addr, payload(2, 10), Delivery::Unordered)
            .unwrap();
        let t = ep.poll_transmit(now, &mut buf).unwrap();
        b.handle_datagram(now, attacker(i as u64), &buf[..t.size]);
    }
    let mut flipped = captured.clone();
    let last = flipped.len() - 1;
    flipped[last] ^= 1;
    // A forger fixes the checksum up (it guards against noise, not forgery): the flipped bit
    // fails the tag.
    mesh_wire::reseal(&mut flipped);
    b.handle_datagram(now, attacker(9), &flipped);
    let s = b.stats();
    assert_eq!(s.dropped_unauthenticated, 3, "{s:?}");
    assert_eq!(s.dropped_invalid, 0, "{s:?}");
    assert_eq!(s.peers, 1, "no state for forgers");
    assert!(b.poll_event().is_none(), "nothing reached the application");

    // A datagram numbered far in the past (an old capture) from an unknown address is refused.
    let mut old =
        Endpoint::new(keyed(b"cluster").seed(Some(5)).clone(), StartTime::read()).unwrap();
    old.send_reliable(now, b_addr, payload(3, 10), Delivery::Unordered)
        .unwrap();
    let t = old.poll_transmit(now, &mut buf).unwrap();
    let replay_later = buf[..t.size].to_vec();
    b.handle_datagram(now + Duration::from_secs(600), attacker(10), &replay_later);
    assert_eq!(b.stats().dropped_replay, 12);
    assert_eq!(b.stats().peers, 1);
}

#[test]
fn keyed_endpoints_deliver_exactly_once_under_loss() {
    use mesh_rudp::sim::LinkConfig;

    let mut sim = Sim::new(21);
    sim.set_all_links(LinkConfig {
        loss: 0.2,
        duplicate: 0.2,
        jitter: Duration::from_millis(3),
        ..LinkConfig::default()
    });
    let a = sim.add_endpoint(keyed(b"k"));
    let b = sim.add_endpoint(keyed(b"k"));
    for i in 0..200 {
        sim.send(a, b, payload(i, 2000), Delivery::Unordered)
            .unwrap();
    }
    sim.run_until_idle(1_000_000).unwrap();
    let got = sim
        .take_events(b)
        .into_iter()
        .filter(|e| matches!(e, Event::Message { .. }))
        .count();
    assert_eq!(got, 200);
    let s = sim.endpoint(b).stats();
    assert!(
        s.dropped_replay > 0,
        "the network's duplicates were refused as replays"
    );
    assert_eq!(s.dropped_unauthenticated, 0);
}

#[test]
fn keyed_and_unkeyed_endpoints_do_not_talk() {
    let mut sim = Sim::new(22);
    let a = sim.add_endpoint(keyed(b"k"));
    let b = sim.add_endpoint(EndpointConfig::default());
    sim.send(a, b, payload(1, 10), Delivery::Unordered).unwrap();
    sim.run_for(Duration::from_secs(7), 1_000_000).unwrap();
    let failed = sim
        .take_events(a)
        .into_iter()
        .any(|e| matches!(e, Event::Failed { .. }));
    assert!(failed, "the send fails instead of hanging");
    assert!(sim.endpoint(b).stats().dropped_unauthenticated > 0);
    assert!(sim.take_events(b).is_empty());
}

/// A datagram for the session `h` names, holding `frames` and then `tail` (raw bytes), with
/// a right checksum: what a faulty peer, or anyone who read the session ids, could send.
fn crafted(h: mesh_wire::Header, frames: &[mesh_wire::Frame<'_>], tail: &[u8]) -> Vec<u8> {
    let mut buf = Vec::new();
    let header = mesh_wire::Header::new(h.src_session, h.dst_session);
    let mut w = mesh_wire::DatagramWriter::new(&mut buf, header, 1200);
    for f in frames {
        w.push(f).unwrap();
    }
    let mut out = w.finish().to_vec();
    out.extend_from_slice(tail);
    mesh_wire::reseal(&mut out);
    out
}

/// An unknown frame type: the frame, and the datagram holding it, are malformed.
const MALFORMED: &[u8] = &[0xEE, 1, 2, 3];

/// The pongs in what `e` sends next.
fn pongs_sent(e: &mut mesh_rudp::Endpoint, now: std::time::Instant) -> Vec<u64> {
    let mut buf = Vec::new();
    let mut tokens = Vec::new();
    while let Some(t) = e.poll_transmit(now, &mut buf) {
        let d = mesh_wire::Datagram::decode_from(&buf[..t.size], None, true).unwrap();
        for f in d.frames() {
            if let mesh_wire::Frame::Pong { token } = f {
                tokens.push(token);
            }
        }
    }
    tokens
}

#[test]
fn a_datagram_with_a_malformed_frame_from_a_new_sender_creates_no_peer() {
    use mesh_rudp::Endpoint;
    use mesh_wire::{Frame, Header};

    let mut b = Endpoint::new(
        EndpointConfig::default().seed(Some(2)).clone(),
        StartTime::read(),
    )
    .unwrap();
    let now = std::time::Instant::now();
    // A new session (no destination id yet) whose first frame is well-formed.
    let bytes = crafted(
        Header::new(0x5eed, 0),
        &[Frame::Ping { token: 7 }],
        MALFORMED,
    );
    b.handle_datagram(now, attacker(1), &bytes);
    let s = b.stats();
    assert_eq!((s.peers, s.dropped_invalid), (0, 1), "{s:?}");
    assert!(pongs_sent(&mut b, now).is_empty());
    // The same without the malformed tail is a new peer, answered.
    let bytes = crafted(Header::new(0x5eed, 0), &[Frame::Ping { token: 7 }], &[]);
    b.handle_datagram(now, attacker(1), &bytes);
    assert_eq!(b.stats().peers, 1);
    assert_eq!(pongs_sent(&mut b, now), [7]);
}

#[test]
fn a_malformed_frame_from_a_known_peer_ends_its_datagram_there() {
    use mesh_rudp::Endpoint;
    use mesh_wire::{Datagram, Frame};

    let (a_addr, b_addr): (SocketAddr, SocketAddr) = (
        "127.0.0.1:1".parse().unwrap(),
        "127.0.0.1:2".parse().unwrap(),
    );
    let config = |seed| EndpointConfig::default().seed(Some(seed)).clone();
    let mut a = Endpoint::new(config(1), StartTime::read()).unwrap();
    let mut b = Endpoint::new(config(2), StartTime::read()).unwrap();
    let now = std::time::Instant::now();
    // A session both ways: a message from a, answered by b, so a learns b's id.
    a.send_reliable(now, b_addr, payload(1, 10), Delivery::Unordered)
        .unwrap();
    let mut buf = Vec::new();
    let t = a.poll_transmit(now, &mut buf).unwrap();
    b.handle_datagram(now, a_addr, &buf[..t.size]);
    let t = b.poll_transmit(now, &mut buf).unwrap();
    a.handle_datagram(now, b_addr, &buf[..t.size]);
    a.send_reliable(now, b_addr, payload(2, 10), Delivery::Unordered)
        .unwrap();
    let t = a.poll_transmit(now, &mut buf).unwrap();
    let h = Datagram::decode_from(&buf[..t.size], None, true)
        .unwrap()
        .header();
    assert_ne!(h.dst_session, 0, "a knows b's id");
    b.handle_datagram(now, a_addr, &buf[..t.size]);
    while b.poll_event().is_some() {}
    let _ = pongs_sent(&mut b, now);
    let invalid = b.stats().dropped_invalid;

    // Two pings, a malformed frame, then a ping after it.
    let after = crafted(h, &[Frame::Ping { token: 3 }], &[]);
    let body = &after[mesh_wire::HEADER_LEN..];
    let mut tail = MALFORMED.to_vec();
    tail.extend_from_slice(body);
    let bytes = crafted(
        h,
        &[Frame::Ping { token: 1 }, Frame::Ping { token: 2 }],
        &tail,
    );
    b.handle_datagram(now, a_addr, &bytes);
    let s = b.stats();
    assert_eq!(s.dropped_invalid, invalid + 1, "{s:?}");
    assert_eq!(s.peers, 1, "the session goes on");
    assert_eq!(
        pongs_sent(&mut b, now),
        [1, 2],
        "acted on up to the malformed frame"
    );
}
