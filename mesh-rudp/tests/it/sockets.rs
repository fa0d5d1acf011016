//! Real sockets on 127.0.0.1: many small messages, a 16 MiB message, and everything through
//! an in-process chaos relay that drops, duplicates and reorders.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use mesh_rudp::{Transport, TransportConfig};
use tokio::net::UdpSocket;

use crate::util::{payload, tag_of};

async fn transport() -> Transport {
    transport_with(TransportConfig::default()).await
}

/// A transport on a free loopback port, with `config`.
async fn transport_with(config: TransportConfig) -> Transport {
    Transport::bind("127.0.0.1:0".parse().unwrap(), config)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_thousand_small_messages_and_a_16_mib_one() {
    let a = Arc::new(transport().await);
    let b = transport().await;
    let to = b.local_addr();
    let n = 100_000u64;
    let sender = {
        let a = a.clone();
        tokio::spawn(async move {
            let mut pending = Vec::with_capacity(1024);
            for t in 0..n {
                pending.push(
                    a.queue(to, payload(t, 64), Default::default())
                        .await
                        .unwrap()
                        .expect("tracked"),
                );
                if pending.len() == 1024 {
                    for rx in pending.drain(..) {
                        rx.await.unwrap().unwrap();
                    }
                }
            }
            for rx in pending {
                rx.await.unwrap().unwrap();
            }
            a.send(to, payload(u64::MAX, 16 << 20)).await.unwrap();
        })
    };
    let mut seen = HashSet::new();
    let mut big = false;
    while seen.len() < n as usize || !big {
        let m = tokio::time::timeout(Duration::from_secs(60), b.recv())
            .await
            .expect("messages keep coming")
            .unwrap();
        let t = tag_of(&m.data);
        if t == u64::MAX {
            assert_eq!(m.data.len(), 16 << 20);
            big = true;
        } else {
            assert!(seen.insert(t), "message {t} twice");
        }
    }
    sender.await.unwrap();
    assert!(b.try_recv().is_none(), "nothing extra");
    assert!(a.close().await.undelivered.is_empty());
    b.close().await;
}

/// Relays datagrams between two sockets, dropping, duplicating and reordering them.
async fn chaos_relay(
    a: SocketAddr,
    b: SocketAddr,
    loss: u64,
    seed: u64,
) -> (SocketAddr, SocketAddr, tokio::task::JoinHandle<()>) {
    let to_b = UdpSocket::bind("127.0.0.1:0").await.unwrap(); // a talks to this one
    let to_a = UdpSocket::bind("127.0.0.1:0").await.unwrap(); // b talks to this one
    let (addr_for_a, addr_for_b) = (to_b.local_addr().unwrap(), to_a.local_addr().unwrap());
    let task = tokio::spawn(async move {
        let mut x = seed | 1;
        let mut rnd = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x % 100
        };
        let mut held: Option<(bool, Vec<u8>)> = None;
        let (mut ba, mut bb) = (vec![0u8; 65536], vec![0u8; 65536]);
        loop {
            // A held-back datagram waits for the next one, or 1 ms at most.
            let wait = if held.is_some() {
                Duration::from_millis(1)
            } else {
                Duration::from_secs(3600)
            };
            let next = tokio::time::timeout(wait, async {
                tokio::select! {
                    r = to_b.recv_from(&mut ba) => { let (n, _) = r.unwrap(); (true, ba[..n].to_vec()) }
                    r = to_a.recv_from(&mut bb) => { let (n, _) = r.unwrap(); (false, bb[..n].to_vec()) }
                }
            })
            .await;
            let Ok((from_a, bytes)) = next else {
                if let Some((f, h)) = held.take() {
                    if f {
                        let _ = to_a.try_send_to(&h, b);
                    } else {
                        let _ = to_b.try_send_to(&h, a);
                    }
                }
                continue;
            };
            let roll = rnd();
            if roll < loss {
                continue;
            }
            let send = |from_a: bool, bytes: &[u8]| {
                if from_a {
                    let _ = to_a.try_send_to(bytes, b);
                } else {
                    let _ = to_b.try_send_to(bytes, a);
                }
            };
            if roll < loss + 5 {
                send(from_a, &bytes); // duplicate
            }
            if roll >= 90 {
                // Hold this one back behind the next: reorder.
                if let Some((f, h)) = held.replace((from_a, bytes)) {
                    send(f, &h);
                }
                continue;
            }
            send(from_a, &bytes);
            if let Some((f, h)) = held.take() {
                send(f, &h);
            }
        }
    });
    (addr_for_a, addr_for_b, task)
}

/// Receives `n` messages tagged 0..n at `b`, each once, all from `from`.
async fn receive_each_once(b: &Transport, n: u64, from: SocketAddr) {
    let mut seen = HashSet::new();
    while seen.len() < n as usize {
        let m = tokio::time::timeout(Duration::from_secs(60), b.recv())
            .await
            .expect("messages keep coming")
            .unwrap();
        assert_eq!(m.from, from);
        let t = tag_of(&m.data);
        assert!(t < n, "message {t} was never sent");
        assert!(seen.insert(t), "duplicate delivery");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn through_a_chaos_relay_everything_arrives_exactly_once() {
    let a = Arc::new(transport().await);
    let b = Arc::new(transport().await);
    let (via_for_a, via_for_b, relay) = chaos_relay(a.local_addr(), b.local_addr(), 10, 99).await;
    let n = 1_000u64;
    let sizes = [10usize, 500, 3000, 20_000];
    let sender = {
        let a = a.clone();
        tokio::spawn(async move {
            let mut pending = Vec::new();
            for t in 0..n {
                let size = sizes[(t % 4) as usize];
                pending.push(
                    a.queue(via_for_a, payload(t, size), Default::default())
                        .await
                        .unwrap()
                        .expect("tracked"),
                );
            }
            for rx in pending {
                rx.await.unwrap().unwrap();
            }
        })
    };
    // b sees the relay as its peer.
    receive_each_once(&b, n, via_for_b).await;
    sender.await.unwrap();
    let s = a.stats();
    assert!(s.retransmitted > 0, "the relay did drop datagrams");
    relay.abort();
    a.close().await;
    b.close().await;
}

#[tokio::test]
async fn raw_ping_is_answered_when_asked() {
    let mut config = TransportConfig::default();
    config.answer_raw_ping = true;
    let t = transport_with(config).await;
    let probe = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    probe.send_to(b"ping", t.local_addr()).await.unwrap();
    let mut buf = [0u8; 16];
    let (n, _) = tokio::time::timeout(Duration::from_secs(5), probe.recv_from(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&buf[..n], b"PONG\n");
    t.close().await;
}

#[tokio::test]
async fn send_to_a_silent_address_fails_after_the_timeout() {
    let mut config = TransportConfig::default();
    config.endpoint.peer_timeout(Duration::from_millis(300));
    let a = transport_with(config).await;
    // A bound socket that never answers.
    let silent = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let r = a.send(silent.local_addr().unwrap(), &b"anyone?"[..]).await;
    assert!(
        matches!(
            r,
            Err(mesh_rudp::TransportError::Send(
                mesh_rudp::SendError::Timeout
            ))
        ),
        "{r:?}"
    );
    a.close().await;
}

#[tokio::test]
async fn close_reports_what_was_not_delivered_and_fails_those_sends() {
    let mut config = TransportConfig::default();
    config.close_timeout = Duration::from_millis(200);
    let a = transport_with(config).await;
    let b = transport().await;
    // Delivered before the close: not in the report.
    a.send(b.local_addr(), payload(1, 100)).await.unwrap();
    // Never acknowledged: a socket that does not answer.
    let silent = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let pending = a
        .queue(
            silent.local_addr().unwrap(),
            payload(2, 100),
            Default::default(),
        )
        .await
        .unwrap()
        .expect("tracked");
    let report = a.close().await;
    assert_eq!(report.undelivered.len(), 1);
    assert_eq!(report.undelivered[0].0, silent.local_addr().unwrap());
    assert_eq!(pending.await.unwrap(), Err(mesh_rudp::SendError::Closed));
    assert!(matches!(
        a.send(b.local_addr(), payload(3, 10)).await,
        Err(mesh_rudp::TransportError::Send(
            mesh_rudp::SendError::Closed
        ))
    ));
    b.close().await;
}

/// Forwards datagrams from `a` to `b` and back, dropping the first one from `a`.
async fn drop_first_relay(
    a: SocketAddr,
    b: SocketAddr,
) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let to_b = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let to_a = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let via = to_b.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let (mut ba, mut bb) = (vec![0u8; 65536], vec![0u8; 65536]);
        let mut dropped = false;
        loop {
            tokio::select! {
                r = to_b.recv_from(&mut ba) => {
                    let (n, _) = r.unwrap();
                    if dropped {
                        let _ = to_a.send_to(&ba[..n], b).await;
                    }
                    dropped = true;
                }
                r = to_a.recv_from(&mut bb) => {
                    let (n, _) = r.unwrap();
                    let _ = to_b.send_to(&bb[..n], a).await;
                }
            }
        }
    });
    (via, task)
}

/// The only datagram of a send is lost and nothing else happens: the retransmission timer,
/// which the send armed without waking the driver, must fire by itself. Both ways of driving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lone_lost_datagram_is_retransmitted_by_the_timer() {
    let b = transport().await;
    for spawned in [true, false] {
        let addr: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let (a, driver) = if spawned {
            (
                Transport::bind(addr, TransportConfig::default())
                    .await
                    .unwrap(),
                None,
            )
        } else {
            let (a, d) = Transport::bind_with_driver(addr, TransportConfig::default())
                .await
                .unwrap();
            (a, Some(d))
        };
        // The caller's driver runs on a task of its own here; nothing it receives is expected.
        let driving =
            driver.map(|mut d| tokio::spawn(async move { while d.recv().await.is_some() {} }));
        let (via, relay) = drop_first_relay(a.local_addr(), b.local_addr()).await;
        tokio::time::timeout(Duration::from_secs(10), a.send(via, &b"once"[..]))
            .await
            .expect("retransmitted before the peer timeout")
            .unwrap();
        let m = tokio::time::timeout(Duration::from_secs(10), b.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&m.data[..], b"once");
        assert!(
            a.stats().retransmitted >= 1,
            "the first datagram was dropped"
        );
        relay.abort();
        a.close().await;
        if let Some(d) = driving {
            d.await.unwrap();
        }
    }
    b.close().await;
}

/// Sends in a burst are corked and packed: with a long cork every send after the first is left
/// to the driver, so a hundred small messages take a handful of datagrams, all delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_sends_is_packed_into_few_datagrams() {
    let mut config = TransportConfig::default();
    config.cork = Duration::from_secs(30);
    let a = transport_with(config).await;
    let b = transport().await;
    let mut acks = Vec::new();
    for t in 0..100u64 {
        acks.push(
            a.queue(b.local_addr(), payload(t, 64), Default::default())
                .await
                .unwrap()
                .expect("tracked"),
        );
    }
    for ack in acks {
        tokio::time::timeout(Duration::from_secs(10), ack)
            .await
            .expect("delivered")
            .unwrap()
            .unwrap();
    }
    let mut seen = HashSet::new();
    while let Some(m) = b.try_recv() {
        assert!(seen.insert(tag_of(&m.data)));
    }
    assert_eq!(seen.len(), 100);
    let sent = a.stats().datagrams_sent;
    // Unpacked it would be 100; the driver may flush a part while the burst goes on.
    assert!(sent < 50, "100 messages of 64 bytes took {sent} datagrams");
    a.close().await;
    b.close().await;
}

/// Queues a 64-byte message tagged `tag` with one attempt that must succeed (`queue_now`),
/// and returns its outcome.
fn queue_tagged(from: &Transport, to: SocketAddr, tag: u64) -> mesh_rudp::Outcome {
    from.queue_now(to, &mut Some(payload(tag, 64).into()), Default::default())
        .expect("room in an empty queue")
        .expect("queued")
        .expect("tracked")
}

/// Waits up to 20 s for an outcome, which must be a delivery.
async fn settled(rx: mesh_rudp::Outcome) {
    tokio::time::timeout(Duration::from_secs(20), rx)
        .await
        .expect("settled within 20 s")
        .expect("an outcome")
        .expect("delivered")
}

/// A send more than `cork` after the last one that flushed goes out from the sending task
/// at once when something arrived in between (an answer, an acknowledgement: a request loop),
/// and is corked when nothing did and it is within ten times `cork` (a burst whose sender
/// was away, preempted). Seen in `datagrams_sent`, which a flush from the sending task moves
/// before `queue_now` returns; on a current-thread runtime the driver cannot run until the
/// test yields. Long intervals (cork 500 ms) so that a slow machine cannot blur them.
#[tokio::test]
async fn a_send_after_something_arrived_goes_at_once_and_one_after_a_quiet_pause_is_corked() {
    let mut config = TransportConfig::default();
    config.cork = Duration::from_millis(500);
    let a = transport_with(config).await;
    let b = transport().await;
    let to = b.local_addr();
    let queue = |tag| queue_tagged(&a, to, tag);
    // The first send flushes from its task; its acknowledgement arrives while the test waits.
    settled(queue(0)).await;
    // A second later (twice `cork`), after the acknowledgement: at once. The thread sleeps
    // without yielding, so nothing runs in between.
    std::thread::sleep(Duration::from_secs(1));
    let before = a.stats().datagrams_sent;
    let one = queue(1);
    assert!(
        a.stats().datagrams_sent > before,
        "a send after an acknowledgement was held"
    );
    // A second after that, with nothing read since (the acknowledgement of 1 waits in the
    // socket): corked, sent by the driver once the test yields.
    std::thread::sleep(Duration::from_secs(1));
    let before = a.stats().datagrams_sent;
    let two = queue(2);
    assert_eq!(
        a.stats().datagrams_sent,
        before,
        "a send after a quiet pause within ten corks went out from its task"
    );
    settled(one).await;
    settled(two).await;
    let mut tags = Vec::new();
    while tags.len() < 3 {
        let m = tokio::time::timeout(Duration::from_secs(20), b.recv())
            .await
            .expect("arrived within 20 s")
            .expect("open");
        tags.push(tag_of(&m.data));
    }
    assert_eq!(tags, vec![0, 1, 2]);
    a.close().await;
    b.close().await;
}

/// An answer to a message just taken with `recv` goes out at once, however long ago its
/// sender last flushed: the message counts as something received before it is handed over.
/// Current-thread runtime and a 500 ms cork, as above.
#[tokio::test]
async fn an_answer_to_a_message_just_received_goes_at_once() {
    let mut config = TransportConfig::default();
    config.cork = Duration::from_millis(500);
    let a = transport().await;
    let b = transport_with(config).await;
    let (to_a, to_b) = (a.local_addr(), b.local_addr());
    settled(queue_tagged(&b, to_a, 0)).await;
    // A second later (after the acknowledgement): from its task; then nothing is read.
    std::thread::sleep(Duration::from_secs(1));
    let one = queue_tagged(&b, to_a, 1);
    std::thread::sleep(Duration::from_secs(1));
    // A second after b's last flush, a message comes and b answers it at once.
    let request = queue_tagged(&a, to_b, 100);
    let got = tokio::time::timeout(Duration::from_secs(20), b.recv())
        .await
        .expect("arrived within 20 s")
        .expect("open");
    assert_eq!(tag_of(&got.data), 100);
    let before = b.stats().datagrams_sent;
    let answer = queue_tagged(&b, to_a, 101);
    assert!(
        b.stats().datagrams_sent > before,
        "an answer to a message just received was held for the driver"
    );
    for rx in [one, request, answer] {
        settled(rx).await;
    }
    a.close().await;
    b.close().await;
}

/// A message larger than the peer's whole send queue is refused as too large at once, not
/// left waiting for room that can never come.
#[tokio::test]
async fn a_message_larger_than_the_send_queue_is_refused_not_held() {
    let mut config = TransportConfig::default();
    config
        .endpoint
        .max_message_size(1 << 20)
        .send_queue_per_peer(1 << 20);
    let a = transport_with(config).await;
    let b = transport().await;
    // The peer is known first, with its queue empty.
    a.send(b.local_addr(), &b"hello"[..]).await.unwrap();
    let big = bytes::Bytes::from(vec![1u8; 2 << 20]);
    let r = tokio::time::timeout(
        Duration::from_secs(10),
        a.queue(b.local_addr(), big, Default::default()),
    )
    .await
    .expect("refused at once, not held waiting for room");
    assert!(
        matches!(
            r,
            Err(mesh_rudp::TransportError::Send(
                mesh_rudp::SendError::TooLarge { .. }
            ))
        ),
        "{r:?}"
    );
}

/// A sender that fills the peer's send queue waits for room and is woken when acknowledgements
/// free it: more than a queue's worth goes through, each wait bounded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_send_queue_waits_and_is_woken_by_acknowledgements() {
    let mut config = TransportConfig::default();
    config
        .endpoint
        .max_message_size(512 << 10)
        .send_queue_per_peer(1 << 20);
    let a = transport_with(config).await;
    let b = transport().await;
    let to = b.local_addr();
    for i in 0..8u8 {
        let m = bytes::Bytes::from(vec![i; 512 << 10]);
        tokio::time::timeout(Duration::from_secs(10), a.queue(to, m, Default::default()))
            .await
            .expect("woken when room was freed")
            .unwrap();
    }
    let mut tags = Vec::new();
    for _ in 0..8 {
        let m = tokio::time::timeout(Duration::from_secs(10), b.recv())
            .await
            .expect("arrives")
            .unwrap();
        assert_eq!(m.data.len(), 512 << 10);
        assert!(
            m.data.iter().all(|x| *x == m.data[0]),
            "one message's bytes"
        );
        tags.push(m.data[0]);
    }
    tags.sort_unstable();
    assert_eq!(tags, (0..8).collect::<Vec<u8>>());
}

/// A sender keeps no more in flight than the receive window its socket's buffer allows: with
/// a small buffer, its window stays under three quarters of what the kernel granted, where
/// congestion control alone would grow it past the 8 MiB sent here.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_socket_buffer_caps_what_is_in_flight() {
    let socket = socket2::Socket::new(
        socket2::Domain::IPV4,
        socket2::Type::DGRAM,
        Some(socket2::Protocol::UDP),
    )
    .unwrap();
    socket.set_recv_buffer_size(256 << 10).unwrap();
    socket.set_nonblocking(true).unwrap();
    socket
        .bind(&"127.0.0.1:0".parse::<SocketAddr>().unwrap().into())
        .unwrap();
    let granted = socket.recv_buffer_size().unwrap();
    let config = TransportConfig::default();
    let largest = mesh_rudp::DEFAULT_LOOPBACK_MTU.unwrap_or(1200);
    let window = (granted / 4 * 3).max(4 * largest);
    assert!(window < 8 << 20, "the kernel granted {granted} bytes");
    let a = Transport::with_socket(UdpSocket::from_std(socket.into()).unwrap(), config).unwrap();
    let b = transport().await;
    let to = b.local_addr();
    let receiver = tokio::spawn(async move {
        let mut seen = HashSet::new();
        while seen.len() < 8 {
            let m = tokio::time::timeout(Duration::from_secs(30), b.recv())
                .await
                .expect("messages keep coming")
                .unwrap();
            assert_eq!(m.data.len(), 1 << 20);
            assert!(seen.insert(tag_of(&m.data)));
        }
        b
    });
    let mut pending = Vec::new();
    for t in 0..8 {
        pending.push(
            a.queue(to, payload(t, 1 << 20), Default::default())
                .await
                .unwrap()
                .expect("tracked"),
        );
    }
    let mut largest_cwnd = 0;
    for rx in pending {
        rx.await.unwrap().unwrap();
        largest_cwnd = largest_cwnd.max(a.peer_stats(to).unwrap().cwnd);
    }
    receiver.await.unwrap();
    assert!(
        largest_cwnd <= window,
        "congestion window {largest_cwnd} above the receive window {window}"
    );
}

/// One message to each of many peers at once, in one send batch of the driver (one
/// `sendmmsg` on Linux): every one arrives with its own content, and when some destinations
/// in the batch are ports nobody listens on, or addresses the socket cannot send to at all
/// (IPv6 from an IPv4 socket: the system call stops there), the live ones still get theirs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_message_to_each_of_many_peers_at_once() {
    // Retransmissions only after 5 s: a live peer's datagram that the batch skipped would
    // show as one (the message would still arrive, retransmitted).
    let rto = Duration::from_secs(5);
    let mut config = TransportConfig::default();
    config
        .endpoint
        .initial_rto(rto)
        .min_rto(rto)
        .max_rto(rto)
        .peer_timeout(Duration::from_secs(30));
    let a = transport_with(config).await;
    let mut peers = Vec::new();
    for _ in 0..24 {
        peers.push(transport().await);
    }
    // Ports nobody listens on any more, between the live ones.
    let mut closed = Vec::new();
    for _ in 0..4 {
        let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        closed.push(s.local_addr().unwrap());
    }
    for round in 0..4u64 {
        let mut outcomes = Vec::new();
        for (i, p) in peers.iter().enumerate() {
            if round >= 2 && i % 6 == 0 {
                let dead = closed[i / 6];
                let _ = a.try_queue(dead, payload(round, 40), Default::default());
            }
            if round >= 1 && i % 6 == 3 {
                let v6 = SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, closed[i / 6].port()));
                let _ = a.try_queue(v6, payload(round, 40), Default::default());
            }
            let tag = round * 100 + i as u64;
            let rx = a
                .try_queue(p.local_addr(), payload(tag, 40), Default::default())
                .expect("room in an empty queue")
                .expect("tracked");
            outcomes.push(rx);
        }
        for (i, (p, rx)) in peers.iter().zip(outcomes).enumerate() {
            let got = tokio::time::timeout(Duration::from_secs(20), p.recv())
                .await
                .expect("arrived within 20 s")
                .expect("open");
            assert_eq!(tag_of(&got.data), round * 100 + i as u64, "round {round}");
            tokio::time::timeout(Duration::from_secs(20), rx)
                .await
                .expect("acknowledged within 20 s")
                .expect("an outcome")
                .expect("delivered");
        }
    }
    for p in &peers {
        let sent = a.peer_stats(p.local_addr()).expect("a live peer has state");
        assert_eq!(
            (sent.frames_sent, sent.retransmitted),
            (4, 0),
            "each live peer's four messages went out once each, at first try"
        );
    }
    a.close().await;
    for p in peers {
        p.close().await;
    }
}

/// A tally counts every message once: through a lossy relay each is delivered exactly once,
/// those to a silent address fail with their tags, and those still in flight at close fail
/// as closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tally_counts_each_message_once_through_loss_silence_and_close() {
    let mut config = TransportConfig::default();
    config.endpoint.peer_timeout(Duration::from_millis(500));
    config.close_timeout = Duration::from_millis(100);
    let a = transport_with(config).await;
    let b = transport().await;
    let (via_for_a, via_for_b, relay) = chaos_relay(a.local_addr(), b.local_addr(), 10, 7).await;
    let silent = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let silent = silent.local_addr().unwrap();
    let tally = mesh_rudp::Tally::new();
    let options = mesh_rudp::QueueOptions::new();
    let n = 3_000u64;
    for t in 0..n {
        a.queue_tallied(via_for_a, payload(t, 100), options, &tally, t)
            .await
            .unwrap();
    }
    for t in n..n + 5 {
        a.queue_tallied(silent, payload(t, 100), options, &tally, t)
            .await
            .unwrap();
    }
    receive_each_once(&b, n, via_for_b).await;
    tokio::time::timeout(Duration::from_secs(60), tally.settled())
        .await
        .expect("every message settles");
    let r = tally.take();
    assert_eq!((r.delivered, r.failed), (n, 5));
    let mut failed: Vec<_> = r
        .failures
        .iter()
        .map(|f| (f.tag, f.peer, f.error))
        .collect();
    failed.sort_by_key(|f| f.0);
    let want: Vec<_> = (n..n + 5)
        .map(|t| (t, silent, mesh_rudp::SendError::Timeout))
        .collect();
    assert_eq!(failed, want);
    assert!(a.stats().retransmitted > 0, "the relay did drop datagrams");

    // In flight at close: failed as closed, counted once.
    for t in 0..3 {
        a.queue_tallied(silent, payload(t, 100), options, &tally, t)
            .await
            .unwrap();
    }
    assert_eq!(tally.pending(), 3);
    a.close().await;
    tally.settled().await;
    let r = tally.take();
    assert_eq!((r.delivered, r.failed), (0, 3));
    assert!(r
        .failures
        .iter()
        .all(|f| f.error == mesh_rudp::SendError::Closed));
    relay.abort();
    b.close().await;
}

/// `poll_recv_many` hands over what arrived in batches of at most `max`, each message once,
/// in the order sent, and says when the transport is closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_driver_hands_messages_over_in_bounded_batches() {
    let a = transport().await;
    let (b, mut driver) =
        Transport::bind_with_driver("127.0.0.1:0".parse().unwrap(), TransportConfig::default())
            .await
            .unwrap();
    let to = b.local_addr();
    const N: u32 = 200;
    let sending = tokio::spawn(async move {
        for i in 0..N {
            let q = mesh_rudp::QueueOptions::new()
                .delivery(mesh_rudp::Delivery::Ordered { channel: 0 })
                .track(false);
            a.queue(to, i.to_be_bytes().to_vec(), q)
                .await
                .expect("queued");
        }
        a
    });
    let mut got = Vec::new();
    let mut batch = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while got.len() < N as usize {
        let n = tokio::time::timeout_at(
            deadline,
            std::future::poll_fn(|cx| driver.poll_recv_many(cx, &mut batch, 7)),
        )
        .await
        .expect("all messages within 20 s")
        .expect("open");
        assert_eq!(n, batch.len(), "the count is of messages appended");
        assert!((1..=7).contains(&n), "a batch of {n}");
        got.extend(
            batch
                .drain(..)
                .map(|m| u32::from_be_bytes(m.data[..].try_into().expect("four bytes"))),
        );
    }
    assert_eq!(got, (0..N).collect::<Vec<_>>(), "each once, in order");
    let a = sending.await.unwrap();
    let (_report, after) = tokio::join!(b.close(), async {
        std::future::poll_fn(|cx| driver.poll_recv_many(cx, &mut batch, 7)).await
    });
    assert_eq!(
        after, None,
        "the close is reported, and nothing more arrived"
    );
    a.close().await;
}
