//! Liveness in virtual time: a peer that stops answering is reported down, and its messages
//! fail, within the peer timeout; a quiet peer that still answers is never taken for dead.

use std::time::Duration;

use mesh_rudp::{Delivery, DownReason, EndpointConfig, Event, SendError};

use crate::scenarios::{messages, pair};
use crate::util::{payload, Outcome};

#[test]
fn peer_dies_mid_transfer_sender_gets_errors_within_timeout() {
    let timeout = Duration::from_secs(3);
    let (mut sim, a, b) = pair(3, EndpointConfig::default().peer_timeout(timeout).clone());
    let mut ids = Vec::new();
    for t in 0..5 {
        ids.push(
            sim.send(a, b, payload(t, 2_000_000), Delivery::Unordered)
                .unwrap(),
        );
    }
    sim.run_for(Duration::from_millis(4), 100_000).unwrap();
    let cut_at = sim.elapsed();
    sim.partition(a, b, true);
    sim.run_until(1_000_000, |s| s.endpoint(a).pending_messages() == 0)
        .unwrap();
    let failed_after = sim.elapsed() - cut_at;
    assert!(
        failed_after <= timeout + Duration::from_millis(100),
        "failed {failed_after:?} after the cut"
    );
    let events = sim.take_events(a);
    let mut out = Outcome::default();
    out.absorb(events.clone());
    for id in ids {
        assert!(
            out.delivered.contains(&id) || out.failed.get(&id) == Some(&SendError::Timeout),
            "{id:?}"
        );
    }
    assert!(!out.failed.is_empty());
    assert!(events.contains(&Event::PeerDown {
        peer: sim.addr(b),
        reason: DownReason::Timeout
    }));
}

#[test]
fn send_to_a_peer_that_never_answers_fails() {
    let timeout = Duration::from_secs(2);
    let (mut sim, a, b) = pair(4, EndpointConfig::default().peer_timeout(timeout).clone());
    sim.partition(a, b, true);
    let id = sim.send(a, b, payload(1, 10), Delivery::Unordered).unwrap();
    sim.run_until(100_000, |s| s.endpoint(a).pending_messages() == 0)
        .unwrap();
    assert!(sim.elapsed() <= timeout + Duration::from_millis(50));
    let events = sim.take_events(a);
    assert!(events.contains(&Event::Failed {
        peer: sim.addr(b),
        id,
        error: SendError::Timeout
    }));
}

#[test]
fn idle_peers_are_probed_and_dead_idle_peers_reported() {
    let timeout = Duration::from_secs(3);
    let (mut sim, a, b) = pair(8, EndpointConfig::default().peer_timeout(timeout).clone());
    sim.send(a, b, payload(1, 10), Delivery::Unordered).unwrap();
    sim.run_until_idle(10_000).unwrap();
    // Idle but alive: pings keep the session up well past the timeout.
    sim.run_for(Duration::from_secs(10), 100_000).unwrap();
    assert!({
        let addr = sim.addr(b);
        sim.endpoint(a).peer_stats(addr)
    }
    .is_some());
    sim.take_events(a);
    sim.partition(a, b, true);
    sim.run_for(timeout + Duration::from_secs(2), 100_000)
        .unwrap();
    assert!({
        let addr = sim.addr(b);
        sim.endpoint(a).peer_stats(addr)
    }
    .is_none());
    assert!(sim.take_events(a).contains(&Event::PeerDown {
        peer: sim.addr(b),
        reason: DownReason::Timeout
    }));
}

#[test]
fn ordered_messages_held_behind_a_lost_one_are_not_reported_delivered() {
    // Message 1 is large and its path breaks after message 2 and 3 (small, same channel)
    // got through. The receiver holds 2 and 3 behind 1, so the sender must not call them
    // delivered; when the peer is declared down all three fail.
    let timeout = Duration::from_secs(2);
    let (mut sim, a, b) = pair(10, EndpointConfig::default().peer_timeout(timeout).clone());
    let ch = Delivery::Ordered { channel: 4 };
    let m1 = sim.send(a, b, payload(1, 200_000), ch).unwrap();
    let m2 = sim.send(a, b, payload(2, 10), ch).unwrap();
    let m3 = sim.send(a, b, payload(3, 10), ch).unwrap();
    // The first datagrams carry message 2 and 3 (small first) and the start of 1; then cut.
    sim.run_for(Duration::from_micros(2500), 1000).unwrap();
    let acked = sim.endpoint(a).stats().datagrams_received;
    assert!(
        acked > 0,
        "acknowledgements of 2 and 3 reached the sender before the cut"
    );
    sim.partition(a, b, true);
    sim.run_until(100_000, |s| s.endpoint(a).pending_messages() == 0)
        .unwrap();
    let mut out = Outcome::default();
    out.absorb(sim.take_events(a));
    assert!(
        messages(&sim.take_events(b)).is_empty(),
        "nothing delivered out of order"
    );
    for id in [m1, m2, m3] {
        assert_eq!(out.failed.get(&id), Some(&SendError::Timeout), "{id:?}");
    }
    assert!(out.delivered.is_empty());
}

/// The keepalive follows `peer_timeout`: with a short timeout (and no keepalive set), two quiet
/// peers stay up for ten times the timeout, and a peer cut off is reported down within one
/// timeout of the cut (virtual time: the bound is exact, not a measurement).
#[test]
fn keepalive_follows_a_short_peer_timeout() {
    for timeout in [Duration::from_millis(20), Duration::from_millis(100)] {
        let config = EndpointConfig::default().peer_timeout(timeout).clone();
        assert!(
            config.keepalive() * 3 <= timeout,
            "{:?}",
            config.keepalive()
        );
        let (mut sim, a, b) = pair(11, config);
        sim.send(a, b, payload(1, 10), Delivery::Unordered).unwrap();
        sim.run_until_idle(10_000).unwrap();
        sim.run_for(timeout * 10, 100_000).unwrap();
        for (x, y) in [(a, b), (b, a)] {
            let events = sim.take_events(x);
            assert!(
                !events.iter().any(|e| matches!(e, Event::PeerDown { .. })),
                "{timeout:?}: a quiet peer was taken for dead: {events:?}"
            );
            let addr = sim.addr(y);
            assert!(sim.endpoint(x).peer_stats(addr).is_some());
        }
        let cut = sim.elapsed();
        sim.partition(a, b, true);
        let addr = sim.addr(b);
        sim.run_until(100_000, |s| s.endpoint(a).peer_stats(addr).is_none())
            .unwrap();
        let found = sim.elapsed() - cut;
        assert!(
            found <= timeout,
            "{timeout:?}: down {found:?} after the cut"
        );
        assert!(sim.take_events(a).contains(&Event::PeerDown {
            peer: addr,
            reason: DownReason::Timeout
        }));
    }
}

#[test]
fn a_keepalive_that_cannot_serve_the_peer_timeout_is_refused() {
    let mut config = EndpointConfig::default();
    config
        .peer_timeout(Duration::from_millis(500))
        .keepalive_interval(Duration::from_secs(1));
    let e = config.validate().unwrap_err().to_string();
    assert!(
        e.contains("keepalive_interval (1s)") && e.contains("peer_timeout (500ms)"),
        "{e}"
    );
    config.keepalive_interval(Duration::from_millis(150));
    config.validate().unwrap();
}
