//! Scripted faults: lost first fragment, lost acks, a peer that dies mid-transfer, a peer that
//! restarts on the same address.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use mesh_rudp::sim::{LinkConfig, Sim};
use mesh_rudp::{Delivery, Endpoint, EndpointConfig, Event, SendError, StartTime};

use crate::util::{payload, tag_of, Outcome};

pub(crate) fn pair(seed: u64, config: EndpointConfig) -> (Sim, usize, usize) {
    let mut sim = Sim::new(seed);
    let a = sim.add_endpoint(config.clone());
    let b = sim.add_endpoint(config);
    sim.set_all_links(LinkConfig {
        delay: Duration::from_millis(1),
        ..LinkConfig::default()
    });
    (sim, a, b)
}

/// Hands `to` every datagram `from` has to send at `at`, as from `from_addr`; how many.
fn carry(from: &mut Endpoint, to: &mut Endpoint, from_addr: SocketAddr, at: Instant) -> usize {
    let mut buf = Vec::new();
    let mut n = 0;
    while let Some(t) = from.poll_transmit(at, &mut buf) {
        to.handle_datagram(at, from_addr, &buf[..t.size]);
        n += 1;
    }
    n
}

pub(crate) fn messages(events: &[Event]) -> Vec<u64> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::Message { data, .. } => Some(tag_of(data)),
            _ => None,
        })
        .collect()
}

#[test]
fn first_fragment_lost() {
    let (mut sim, a, b) = pair(1, EndpointConfig::default());
    sim.drop_next(a, b, 1);
    let id = sim
        .send(a, b, payload(7, 50_000), Delivery::Unordered)
        .unwrap();
    sim.run_until_idle(100_000).unwrap();
    assert_eq!(messages(&sim.take_events(b)), vec![7]);
    assert!(sim.take_events(a).contains(&Event::Delivered {
        peer: sim.addr(b),
        id
    }));
    assert!(sim.endpoint(a).stats().retransmitted >= 1);
}

#[test]
fn all_acks_lost_for_a_while() {
    let (mut sim, a, b) = pair(2, EndpointConfig::default());
    sim.set_link(
        b,
        a,
        LinkConfig {
            loss: 1.0,
            ..LinkConfig::default()
        },
    );
    for t in 0..20 {
        sim.send(a, b, payload(t, 300), Delivery::Unordered)
            .unwrap();
    }
    sim.run_for(Duration::from_millis(500), 100_000).unwrap();
    // Everything arrived once, though the sender has heard nothing yet.
    let mut got = messages(&sim.take_events(b));
    got.sort();
    assert_eq!(got, (0..20).collect::<Vec<_>>());
    assert!(
        sim.endpoint(b).stats().duplicates > 0,
        "retransmissions were suppressed"
    );
    sim.set_link(b, a, LinkConfig::default());
    sim.run_until_idle(100_000).unwrap();
    assert!(
        messages(&sim.take_events(b)).is_empty(),
        "no duplicate delivery"
    );
    let mut out = Outcome::default();
    out.absorb(sim.take_events(a));
    assert_eq!(out.delivered.len(), 20);
}

#[test]
fn peer_restart_on_same_address_is_a_new_session() {
    for seed in 0..50 {
        let (mut sim, a, b) = pair(100 + seed, EndpointConfig::default());
        sim.set_all_links(LinkConfig {
            loss: 0.1,
            delay: Duration::from_millis(1),
            jitter: Duration::from_millis(1),
            ..LinkConfig::default()
        });
        let mut first = Vec::new();
        for t in 0..30 {
            first.push(
                sim.send(a, b, payload(t, 1500), Delivery::Unordered)
                    .unwrap(),
            );
        }
        sim.run_for(Duration::from_millis(2 + seed % 5), 100_000)
            .unwrap();
        let before_restart = messages(&sim.take_events(b));
        sim.restart(b);
        for t in 100..130 {
            sim.send(a, b, payload(t, 1500), Delivery::Unordered)
                .unwrap();
        }
        sim.run_until_idle(1_000_000)
            .unwrap_or_else(|e| panic!("{e}"));
        let after_restart = messages(&sim.take_events(b));
        // The new process never sees a message of the old session.
        assert!(
            after_restart.iter().all(|t| *t >= 100),
            "seed {seed}: stale delivery"
        );
        let mut out = Outcome::default();
        out.absorb(sim.take_events(a));
        // Every old message was either acknowledged by the old process (and received by it
        // exactly once) or failed.
        for (t, id) in first.iter().enumerate() {
            let got = before_restart.iter().filter(|g| **g == t as u64).count();
            assert!(got <= 1);
            assert!(
                (out.delivered.contains(id) && got == 1) || out.failed.contains_key(id),
                "seed {seed}: old message {t} lost silently"
            );
        }
        // New messages: each delivered once, or failed (only if sent into the old session).
        for t in 100..130u64 {
            assert!(after_restart.iter().filter(|g| **g == t).count() <= 1);
        }
        let delivered_new = after_restart.len();
        let failed = out.failed.len();
        assert!(
            delivered_new + failed >= 30,
            "seed {seed}: new messages unaccounted"
        );
    }
}

#[test]
fn ordered_channels_do_not_block_each_other_and_large_does_not_block_small() {
    let (mut sim, a, b) = pair(5, EndpointConfig::default());
    sim.send(a, b, payload(1, 4 << 20), Delivery::Ordered { channel: 1 })
        .unwrap();
    for t in 2..12 {
        sim.send(a, b, payload(t, 100), Delivery::Ordered { channel: 2 })
            .unwrap();
    }
    sim.run_until_idle(1_000_000).unwrap();
    let got = messages(&sim.take_events(b));
    // Channel 2's small messages were not held behind channel 1's 4 MiB message.
    let big_pos = got.iter().position(|t| *t == 1).unwrap();
    assert_eq!(
        big_pos,
        got.len() - 1,
        "small messages arrived first: {got:?}"
    );
    assert_eq!(&got[..10], &(2..12).collect::<Vec<_>>()[..]);
}

#[test]
fn unreliable_messages_arrive_at_most_once() {
    let (mut sim, a, b) = pair(6, EndpointConfig::default());
    sim.set_all_links(LinkConfig {
        loss: 0.3,
        duplicate: 0.3,
        ..LinkConfig::default()
    });
    // Ten bursts of 200 (each packed into about a dozen datagrams): enough datagrams that
    // 30 % loss shows whatever the seed.
    for burst in 0..10 {
        for t in burst * 200..(burst + 1) * 200 {
            sim.send_unreliable(a, b, payload(t, 64)).unwrap();
        }
        sim.run_for(Duration::from_millis(100), 100_000).unwrap();
    }
    let got = messages(&sim.take_events(b));
    let mut dedup = got.clone();
    dedup.sort();
    dedup.dedup();
    assert!(
        dedup.len() < 2000,
        "some were lost at 30 % loss: {:?}",
        sim.net
    );
    assert!(!got.is_empty());
    // Duplicated datagrams may deliver an unreliable message twice; the contract is only
    // "maybe". What must hold: nothing corrupted (checked by tag_of) and nothing invented.
    assert!(dedup.iter().all(|t| *t < 2000));
    let too_big = vec![0u8; 2000];
    assert!(sim.send_unreliable(a, b, too_big.into()).is_err());
}

#[test]
fn back_pressure_when_the_queue_is_full() {
    let config = EndpointConfig::default()
        .max_message_size(1 << 20)
        .send_queue_per_peer(2 << 20)
        .reassembly_per_peer(2 << 20)
        .clone();
    let (mut sim, a, b) = pair(7, config);
    sim.send(a, b, payload(1, 1 << 20), Delivery::Unordered)
        .unwrap();
    sim.send(a, b, payload(2, 1 << 20), Delivery::Unordered)
        .unwrap();
    assert_eq!(
        sim.send(a, b, payload(3, 10), Delivery::Unordered),
        Err(SendError::QueueFull)
    );
    sim.run_until_idle(1_000_000).unwrap();
    sim.send(a, b, payload(3, 10), Delivery::Unordered).unwrap();
    assert_eq!(
        sim.send(a, b, payload(4, 2 << 20), Delivery::Unordered),
        Err(SendError::TooLarge {
            size: 2 << 20,
            limit: 1 << 20
        })
    );
}

/// Tiny messages are bounded in number, not only in bytes: 64 KiB of 1-byte messages would be
/// 65 536 messages of bookkeeping; the queue takes one per 192 bytes of its limit, then
/// pushes back, and takes more once they are delivered.
#[test]
fn tiny_messages_are_bounded_in_number_too() {
    let config = EndpointConfig::default()
        .max_message_size(1 << 10)
        .send_queue_per_peer(64 << 10)
        .clone();
    let (mut sim, a, b) = pair(8, config);
    let x = || Bytes::from_static(b"x");
    let mut queued = 0u64;
    while sim.send(a, b, x(), Delivery::Unordered).is_ok() {
        queued += 1;
        assert!(queued <= 1 << 16, "never pushed back");
    }
    assert_eq!(queued, (64 << 10) / 192);
    assert_eq!(
        sim.send(a, b, x(), Delivery::Unordered),
        Err(SendError::QueueFull)
    );
    sim.run_until_idle(1_000_000).unwrap();
    sim.send(a, b, x(), Delivery::Unordered).unwrap();
}

#[test]
fn rtt_estimate_tracks_the_link() {
    let (mut sim, a, b) = pair(9, EndpointConfig::default());
    sim.set_all_links(LinkConfig {
        delay: Duration::from_millis(10),
        ..LinkConfig::default()
    });
    for t in 0..50 {
        sim.send(a, b, payload(t, 100), Delivery::Unordered)
            .unwrap();
        sim.run_until_idle(10_000).unwrap();
    }
    let s = {
        let addr = sim.addr(b);
        sim.endpoint(a).peer_stats(addr)
    }
    .unwrap();
    assert!(
        s.srtt >= Duration::from_millis(19) && s.srtt <= Duration::from_millis(25),
        "srtt {:?} for a 20 ms round trip",
        s.srtt
    );
}

/// An answer's acknowledgement waits (up to 5 ms) for something to ride along with; an
/// ordinary message's goes at once. The lazy one is still acknowledged by itself in the end.
#[test]
fn lazy_acks_are_held_and_eager_ones_are_not() {
    let a_addr = "127.0.0.1:4001".parse().unwrap();
    let b_addr = "127.0.0.1:4002".parse().unwrap();
    // A small minimum, so that the timeout shows the allowance for the held ack. No path-MTU
    // probes: this script counts datagrams.
    let mut config = EndpointConfig::default()
        .min_rto(Duration::from_micros(100))
        .max_mtu(1200)
        .loopback_mtu(None)
        .clone();
    let mut a = Endpoint::new(config.clone().seed(Some(1)).clone(), StartTime::read()).unwrap();
    let mut b = Endpoint::new(config.seed(Some(2)).clone(), StartTime::read()).unwrap();
    let now = Instant::now();
    let eager = a
        .send_reliable(
            now,
            b_addr,
            Bytes::from_static(b"request"),
            Delivery::Unordered,
        )
        .unwrap();
    assert_eq!(carry(&mut a, &mut b, a_addr, now), 1);
    assert_eq!(
        carry(&mut b, &mut a, b_addr, now),
        1,
        "acknowledged at once"
    );
    assert!(std::iter::from_fn(|| a.poll_event()).any(|e| e
        == Event::Delivered {
            peer: b_addr,
            id: eager
        }));

    assert!(
        a.peer_stats(b_addr).unwrap().rto < Duration::from_millis(5),
        "nothing lazy in flight"
    );
    let lazy = a
        .send_reliable_lazy(
            now,
            b_addr,
            Bytes::from_static(b"answer"),
            Delivery::Unordered,
        )
        .unwrap();
    assert_eq!(carry(&mut a, &mut b, a_addr, now), 1);
    assert!(
        a.peer_stats(b_addr).unwrap().rto >= Duration::from_millis(5),
        "the sender allows for the held acknowledgement"
    );
    assert_eq!(carry(&mut b, &mut a, b_addr, now), 0, "held");
    let due = b.poll_timeout().expect("a timer for the held ack");
    assert!(due <= now + Duration::from_millis(5));
    b.handle_timeout(due);
    assert_eq!(
        carry(&mut b, &mut a, b_addr, due),
        1,
        "sent when the hold runs out"
    );
    assert!(std::iter::from_fn(|| a.poll_event()).any(|e| e
        == Event::Delivered {
            peer: b_addr,
            id: lazy
        }));
    let delivered: Vec<_> = std::iter::from_fn(|| b.poll_event())
        .filter(|e| matches!(e, Event::Message { .. }))
        .collect();
    assert_eq!(delivered.len(), 2, "both delivered once");
}

#[test]
fn loopback_peers_are_probed_up_to_loopback_mtu_and_others_up_to_max_mtu() {
    // Two endpoints on loopback addresses, datagrams carried between them by hand (no link
    // limit): the largest non-probe datagram from a to b once the search is over.
    let a_addr: SocketAddr = "127.0.0.1:4001".parse().unwrap();
    let b_addr: SocketAddr = "127.0.0.1:4002".parse().unwrap();
    let largest = |loopback_mtu: Option<usize>, max_mtu: usize| {
        let mut config = EndpointConfig::default()
            .loopback_mtu(loopback_mtu)
            .max_mtu(max_mtu)
            .clone();
        let mut a = Endpoint::new(config.clone().seed(Some(1)).clone(), StartTime::read()).unwrap();
        let mut b = Endpoint::new(config.seed(Some(2)).clone(), StartTime::read()).unwrap();
        let now = Instant::now();
        let mut buf = Vec::new();
        let mut largest = 0;
        let mut probes = 0;
        for round in 0..8 {
            a.send_reliable(
                now,
                b_addr,
                Bytes::from(vec![round as u8; 100_000]),
                Delivery::Unordered,
            )
            .unwrap();
            for _ in 0..200 {
                let mut moved = 0;
                while let Some(t) = a.poll_transmit(now, &mut buf) {
                    if t.probe {
                        probes += 1;
                    } else if round > 0 {
                        largest = largest.max(t.size);
                    }
                    b.handle_datagram(now, a_addr, &buf[..t.size]);
                    moved += 1;
                }
                while let Some(t) = b.poll_transmit(now, &mut buf) {
                    a.handle_datagram(now, b_addr, &buf[..t.size]);
                    moved += 1;
                }
                if moved == 0 {
                    break;
                }
            }
            while a.poll_event().is_some() {}
            while b.poll_event().is_some() {}
        }
        let mtu = a.peer_stats(b_addr).unwrap().mtu;
        assert!(largest <= mtu, "{largest} > {mtu}");
        (largest, probes, mtu)
    };
    let (to_local, probes, mtu) = largest(Some(30_000), 9000);
    assert_eq!(mtu, 30_000);
    assert!(
        to_local > 29_000,
        "loopback datagrams up to loopback_mtu: {to_local}"
    );
    assert_eq!(probes, 1, "the ceiling passed at the first probe");
    let (to_local, _, mtu) = largest(None, 5000);
    assert_eq!(mtu, 5000, "loopback like any other when off");
    assert!(to_local > 4900, "{to_local}");
    let (to_local, probes, mtu) = largest(None, 1200);
    assert_eq!((mtu, probes), (1200, 0), "no probing at max_mtu = mtu");
    assert!(to_local <= 1200);
}

#[test]
fn a_message_with_a_head_arrives_whole_when_its_fragments_come_backwards() {
    use mesh_rudp::Payload;

    let a_addr: SocketAddr = "10.0.0.1:4001".parse().unwrap();
    let b_addr: SocketAddr = "10.0.0.2:4002".parse().unwrap();
    let mut a = Endpoint::new(
        EndpointConfig::default().seed(Some(1)).clone(),
        StartTime::read(),
    )
    .unwrap();
    let mut b = Endpoint::new(
        EndpointConfig::default().seed(Some(2)).clone(),
        StartTime::read(),
    )
    .unwrap();
    let now = Instant::now();
    let head = Bytes::from_static(b"head:");
    let body: Bytes = (0..10_000u32).map(|i| (i % 251) as u8).collect();
    a.send_reliable(
        now,
        b_addr,
        Payload::with_head(head.clone(), body.clone()),
        Delivery::Unordered,
    )
    .unwrap();
    let mut datagrams = Vec::new();
    let mut buf = Vec::new();
    while let Some(t) = a.poll_transmit(now, &mut buf) {
        datagrams.push(buf[..t.size].to_vec());
    }
    assert!(datagrams.len() >= 8, "fragmented: {}", datagrams.len());
    for d in datagrams.iter().rev() {
        b.handle_datagram(now, a_addr, d);
    }
    // A repeat of a piece already placed changes nothing.
    b.handle_datagram(now, a_addr, &datagrams[0]);
    let got: Vec<Bytes> = std::iter::from_fn(|| b.poll_event())
        .filter_map(|e| match e {
            Event::Message { data, .. } => Some(data),
            _ => None,
        })
        .collect();
    let mut whole = head.to_vec();
    whole.extend_from_slice(&body);
    assert_eq!(got, vec![Bytes::from(whole)]);
    assert_eq!(b.stats().reassembly_bytes, 0, "nothing left held");
}

#[test]
fn a_large_message_reuses_the_buffer_of_one_the_application_dropped() {
    let run = |config: EndpointConfig| {
        let (mut sim, a, b) = pair(9, config);
        // A settled session: the path-MTU probe answered, so every message below is cut to
        // the same size (a buffer is reused only by a message it can hold whole).
        sim.send(a, b, payload(0, 10), Delivery::Unordered).unwrap();
        sim.run_until_idle(1_000_000).unwrap();
        let to = sim.addr(b);
        assert!(sim.endpoint(a).peer_stats(to).unwrap().mtu > 1200);
        sim.take_events(b);
        for t in 1..=3u64 {
            sim.send(a, b, payload(t, 1 << 20), Delivery::Unordered)
                .unwrap();
            sim.run_until_idle(1_000_000).unwrap();
            let got: Vec<_> = sim
                .take_events(b)
                .into_iter()
                .filter_map(|e| match e {
                    Event::Message { data, .. } => Some(data),
                    _ => None,
                })
                .collect();
            assert_eq!(got.len(), 1);
            // Whole, and this message's own content, not the previous one's left in the buffer.
            assert_eq!(tag_of(&got[0]), t);
            assert_eq!(got[0].len(), 1 << 20);
            // Dropped here: its buffer goes back to the pool.
        }
        let stats = sim.endpoint(b).stats();
        assert_eq!(stats.reassembly_bytes, 0);
        stats.recycled_buffers
    };
    assert_eq!(run(EndpointConfig::default()), 2, "messages 2 and 3 reuse");
    assert_eq!(run(EndpointConfig::default().recycle_bytes(0).clone()), 0);
}

/// Two messages that each took a spare buffer sized for the whole message hold all the room
/// the caps leave. Their next pieces land in capacity already charged, so they are taken, and
/// both messages finish: refusing them (as the caps once did) left each message waiting for
/// room only the other could free, until the sender gave up.
#[test]
fn messages_holding_all_the_room_in_spare_buffers_still_finish() {
    use crate::wire::data_datagram;
    use mesh_wire::Fragment;

    const PIECE: usize = 1100;
    const COUNT: u32 = 300;
    const SIZE: usize = PIECE * COUNT as usize; // above the pool's 256 KiB floor
    let config = EndpointConfig::default()
        .max_message_size(SIZE)
        .reassembly_per_peer(2 * SIZE)
        .reassembly_total(2 * SIZE)
        .clone();
    let mut ep = Endpoint::new(config, StartTime::read()).unwrap();
    let from: SocketAddr = "10.0.0.9:4000".parse().unwrap();
    let now = Instant::now();
    let mut seq = 0u32;
    let mut piece = |ep: &mut Endpoint, message: u32, index: u32| {
        let payload = vec![message as u8; PIECE];
        let fragment = Fragment {
            index,
            count: COUNT,
        };
        let datagram = data_datagram(77, seq, message, Some(fragment), &payload);
        seq += 1;
        ep.handle_datagram(now, from, &datagram);
        let mut buf = Vec::new();
        while ep.poll_transmit(now, &mut buf).is_some() {}
    };
    let delivered = |ep: &mut Endpoint| -> Vec<Bytes> {
        std::iter::from_fn(|| ep.poll_event())
            .filter_map(|e| match e {
                Event::Message { data, .. } => {
                    assert!(data.iter().all(|b| *b == data[0]), "one message's bytes");
                    assert_eq!(data.len(), SIZE);
                    Some(data)
                }
                _ => None,
            })
            .collect()
    };
    let tags = |got: &[Bytes]| got.iter().map(|d| d[0]).collect::<Vec<u8>>();
    // Two messages, both held by the application until both arrived; then dropped, they
    // leave two spare buffers.
    let mut held = Vec::new();
    for message in 1..=2 {
        for index in 0..COUNT {
            piece(&mut ep, message, index);
        }
        let got = delivered(&mut ep);
        assert_eq!(tags(&got), vec![message as u8]);
        held.extend(got);
    }
    assert_eq!(ep.stats().recycled_buffers, 0);
    drop(held);
    // Messages 3 and 4 start; each takes a spare buffer, charged whole.
    piece(&mut ep, 3, 0);
    piece(&mut ep, 4, 0);
    assert_eq!(ep.stats().recycled_buffers, 2);
    assert_eq!(
        ep.stats().reassembly_bytes,
        2 * SIZE,
        "all the room is held"
    );
    for index in 1..COUNT {
        piece(&mut ep, 3, index);
        piece(&mut ep, 4, index);
    }
    assert_eq!(tags(&delivered(&mut ep)), vec![3, 4]);
    assert_eq!(ep.stats().dropped_no_room, 0);
    assert_eq!(ep.stats().reassembly_bytes, 0);
}

#[test]
fn loopback_datagrams_may_go_without_checksum_and_only_loopback_may_send_those() {
    use mesh_wire::{Datagram, FLAG_NO_CHECKSUM};

    let now = Instant::now();
    let local: SocketAddr = "127.0.0.1:4001".parse().unwrap();
    let mapped: SocketAddr = "[::ffff:127.0.0.1]:4001".parse().unwrap();
    let remote: SocketAddr = "10.0.0.7:4001".parse().unwrap();
    let first = |config: EndpointConfig, to: SocketAddr| {
        let mut a = Endpoint::new(config, StartTime::read()).unwrap();
        a.send_reliable(now, to, Bytes::from_static(b"hi"), Delivery::Unordered)
            .unwrap();
        let mut buf = Vec::new();
        let t = a.poll_transmit(now, &mut buf).unwrap();
        buf.truncate(t.size);
        buf
    };
    // By default every datagram carries its checksum, to this host's peers too.
    for to in [local, remote] {
        let d = first(EndpointConfig::default(), to);
        assert_eq!(Datagram::decode_header(&d).unwrap().flags, 0, "to {to}");
    }
    let unchecked = EndpointConfig::default().loopback_checksum(false).clone();
    let to_local = first(unchecked.clone(), local);
    let header = Datagram::decode_header(&to_local).unwrap();
    assert_ne!(
        header.flags & FLAG_NO_CHECKSUM,
        0,
        "no checksum over loopback when asked"
    );
    let to_remote = first(unchecked, remote);
    assert_eq!(Datagram::decode_header(&to_remote).unwrap().flags, 0);
    // A receiver takes the unchecked datagram from a loopback address (an IPv4 one seen
    // through a dual-stack socket too), and drops it from any other.
    for (from, taken) in [(local, true), (mapped, true), (remote, false)] {
        let mut b = Endpoint::new(EndpointConfig::default(), StartTime::read()).unwrap();
        b.handle_datagram(now, from, &to_local);
        let got = std::iter::from_fn(|| b.poll_event())
            .filter(|e| matches!(e, Event::Message { .. }))
            .count();
        assert_eq!(got, usize::from(taken), "from {from}");
        assert_eq!(b.stats().dropped_invalid, u64::from(!taken), "from {from}");
    }
}

/// At 20 % loss each way, an acknowledgement that finally covers a frame deemed lost long ago
/// (its own acknowledgement lost, the one that arrives sent for another frame) must not be
/// timed as a round trip: that inflated the estimate to the retransmission cap, and 20 000
/// small messages took 5 to 83 s of virtual time at a 0.2 ms round trip (now about 1 s).
#[test]
fn lost_acknowledgements_do_not_inflate_the_round_trip_estimate() {
    for seed in 0..4u64 {
        let mut sim = Sim::new(seed);
        let a = sim.add_endpoint(EndpointConfig::default());
        let b = sim.add_endpoint(EndpointConfig::default());
        sim.set_all_links(LinkConfig {
            loss: 0.2,
            delay: Duration::from_micros(100),
            ..LinkConfig::default()
        });
        for i in 0..10_000u64 {
            sim.send(a, b, payload(i, 64), Delivery::Unordered).unwrap();
            sim.send(b, a, payload(i, 64), Delivery::Unordered).unwrap();
        }
        sim.run_until_idle(5_000_000).unwrap();
        for i in [a, b] {
            let mut out = Outcome::default();
            out.absorb(sim.take_events(i));
            assert_eq!(out.delivered.len(), 10_000, "seed {seed}");
            assert!(out.failed.is_empty(), "seed {seed}");
        }
        assert!(
            sim.elapsed() < Duration::from_secs(4),
            "seed {seed}: {:?} of virtual time",
            sim.elapsed()
        );
        let (addr_b, addr_a) = (sim.addr(b), sim.addr(a));
        for (i, peer) in [(a, addr_b), (b, addr_a)] {
            let srtt = sim.endpoint(i).peer_stats(peer).expect("a peer").srtt;
            assert!(
                srtt < Duration::from_millis(5),
                "seed {seed}: srtt {srtt:?} for a 0.2 ms round trip"
            );
        }
    }
}

/// With `flush_interval`, a send to an idle session is held at most that long: the flush's
/// deadline moves the peer's timer earlier than the keep-alive it had filed (a send files no
/// timer unless what it added comes first).
#[test]
fn a_held_send_to_an_idle_session_goes_when_its_interval_ends() {
    let hold = Duration::from_millis(20);
    let mut config = EndpointConfig::default();
    config.flush_interval(Some(hold));
    let (mut sim, a, b) = pair(31, config);
    sim.send(a, b, payload(1, 10), Delivery::Unordered).unwrap();
    sim.run_until_idle(10_000).unwrap();
    assert_eq!(messages(&sim.take_events(b)), [1]);
    // Idle: the next deadline is a keep-alive, far off.
    let now = sim.now();
    let filed = sim.endpoint(a).poll_timeout().expect("a keep-alive");
    assert!(filed > now + hold * 10, "{:?}", filed - now);
    sim.send(a, b, payload(2, 10), Delivery::Unordered).unwrap();
    let due = sim.endpoint(a).poll_timeout().expect("the flush");
    assert!(due <= now + hold, "{:?}", due - now);
    // Held, then sent: there within the hold and a one-way delay.
    sim.run_for(hold + Duration::from_millis(5), 10_000)
        .unwrap();
    assert_eq!(messages(&sim.take_events(b)), [2]);
}

/// A request/response exchange moves the requester's retransmission deadline back by a round
/// trip each time. The timer an endpoint settles on stays where it was filed while its
/// deadline moved back by less than a millisecond (it may be that early: a timeout then finds
/// nothing due and files the true deadline), and follows the deadline once it moved further.
#[test]
fn a_timer_moved_back_less_than_the_slack_stays_filed_and_fires_when_due() {
    let a_addr = "127.0.0.1:4101".parse().unwrap();
    let b_addr = "127.0.0.1:4102".parse().unwrap();
    // No path-MTU probes: their timers are not what this looks at.
    let mut config = EndpointConfig::default()
        .max_mtu(1200)
        .loopback_mtu(None)
        .clone();
    let mut a = Endpoint::new(config.clone().seed(Some(1)).clone(), StartTime::read()).unwrap();
    let mut b = Endpoint::new(config.seed(Some(2)).clone(), StartTime::read()).unwrap();
    let t0 = Instant::now();
    let at = |us: u64| t0 + Duration::from_micros(us);
    // At `us`: the acknowledgement of the last request reaches `a`, which sends the next one.
    // Returns the deadline that request's retransmission has.
    let exchange = |a: &mut Endpoint, b: &mut Endpoint, us: u64| {
        carry(b, a, b_addr, at(us));
        a.send_reliable(
            at(us),
            b_addr,
            Bytes::from_static(b"req"),
            Delivery::Unordered,
        )
        .unwrap();
        assert_eq!(carry(a, b, a_addr, at(us)), 1);
        at(us) + a.peer_stats(b_addr).unwrap().rto
    };
    exchange(&mut a, &mut b, 0);
    // Round trips of 0.4 ms: the timeout is the minimum from the first sample on.
    let filed = exchange(&mut a, &mut b, 400);
    assert_eq!(
        a.poll_timeout_settled(),
        Some(filed),
        "moved earlier: filed at once"
    );
    let due = exchange(&mut a, &mut b, 800);
    assert_eq!(due - filed, Duration::from_micros(400));
    assert_eq!(
        a.poll_timeout_settled(),
        Some(filed),
        "0.4 ms later: left filed"
    );
    exchange(&mut a, &mut b, 1_200);
    assert_eq!(
        a.poll_timeout_settled(),
        Some(filed),
        "0.8 ms later: left filed"
    );
    let due = exchange(&mut a, &mut b, 1_600);
    assert_eq!(due - filed, Duration::from_micros(1_200));
    assert_eq!(a.poll_timeout_settled(), Some(due), "1.2 ms later: refiled");

    // The last request goes unanswered. Its timer, left 0.4 ms early, finds nothing due, and
    // the true deadline is filed; there, the request is sent again.
    let filed = due;
    let due = exchange(&mut a, &mut b, 2_000);
    assert_eq!(a.poll_timeout_settled(), Some(filed));
    let mut buf = Vec::new();
    a.handle_timeout(filed);
    assert!(
        a.poll_transmit(filed, &mut buf).is_none(),
        "nothing due early"
    );
    assert_eq!(a.poll_timeout_settled(), Some(due));
    a.handle_timeout(due);
    assert!(
        a.poll_transmit(due, &mut buf).is_some(),
        "retransmitted when due"
    );
}
