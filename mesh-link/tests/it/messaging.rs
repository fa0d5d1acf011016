//! Messaging on the in-memory registry and real sockets: sizes, errors, local delivery,
//! datagrams, binding, stopping.

use std::net::UdpSocket;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use mesh_link::{
    Bytes, Config, DeliveryError, Error, HandlerError, MembershipEvent, MeshNode, NodeKey,
    Registry, RequestError, SendFailed, SendOptions,
};

use crate::common::*;

async fn pair() -> (Registry, MeshNode, Shared, MeshNode, Shared) {
    let registry = Registry::memory();
    let (a, am) = suite_node(&registry, fast("m"), "a").await;
    let (b, bm) = suite_node(&registry, fast("m"), "b").await;
    wait_nodes(&a, 2).await;
    wait_nodes(&b, 2).await;
    (registry, a, am, b, bm)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_messages_both_ways() {
    let (_r, a, _am, b, _bm) = pair().await;
    b.on_request(100, |v: Vec<u8>, _c| async move {
        Ok::<_, HandlerError>(v.iter().rev().copied().collect::<Vec<u8>>())
    })
    .unwrap();
    for size in [0usize, 1, 1300, 1301, 100_000, 2_000_000] {
        let data: Vec<u8> = (0..size).map(|i| (i * 7 % 251) as u8).collect();
        let back: Vec<u8> = a.request(100, b.local_key(), &data).await.unwrap();
        assert_eq!(back.len(), size);
        assert!(back.iter().rev().eq(data.iter()), "size {size}");
    }
    let e = a
        .request::<_, ()>(100, b.local_key(), &vec![0u8; 17 << 20])
        .await
        .unwrap_err();
    assert!(matches!(e, RequestError::Encode(_)), "{e:?}");
    let _ = a.stop().await;
    let _ = b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_come_back_typed_and_the_node_keeps_serving() {
    let (_r, a, _am, b, _bm) = pair().await;
    let bk = b.local_key();
    // No handler: an answer, not a timeout (the request's timeout is far longer than the test).
    let e = within(
        "no-handler answer",
        10,
        a.request_with::<_, ()>(999, bk, &(), Duration::from_secs(3600)),
    )
    .await
    .unwrap_err();
    assert_eq!(
        e,
        RequestError::NoHandler {
            handler: 999,
            node: bk
        }
    );
    assert_eq!(b.stats().no_handler, 1);
    // The same locally.
    let e = a
        .request::<_, ()>(999, a.local_key(), &())
        .await
        .unwrap_err();
    assert_eq!(
        e,
        RequestError::NoHandler {
            handler: 999,
            node: a.local_key()
        }
    );
    // A handler's error, and a panic.
    let e = a.request::<_, ()>(13, bk, &()).await.unwrap_err();
    assert_eq!(
        e,
        RequestError::Handler {
            node: bk,
            message: "no such thing".into()
        }
    );
    for _ in 0..3 {
        let e = a.request::<_, ()>(14, bk, &()).await.unwrap_err();
        assert!(
            matches!(&e, RequestError::Handler { message, .. } if message.contains("panicked")),
            "{e:?}"
        );
    }
    let e = a
        .request::<_, ()>(14, a.local_key(), &())
        .await
        .unwrap_err();
    assert!(
        matches!(&e, RequestError::Handler { message, .. } if message.contains("panicked")),
        "{e:?}"
    );
    // A request the handler cannot decode.
    let e = a.request::<_, Msg>(1, bk, &42u8).await.unwrap_err();
    assert!(matches!(e, RequestError::BadRequest { .. }), "{e:?}");
    // An answer of another type than expected.
    let e = a
        .request::<_, [u64; 16]>(1, bk, &msg("x"))
        .await
        .unwrap_err();
    assert!(matches!(e, RequestError::BadResponse { .. }), "{e:?}");
    // Still serving.
    let r: Msg = a.request(1, bk, &msg("still")).await.unwrap();
    assert_eq!(r.message, "still world");
    let _ = a.stop().await;
    let _ = b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handler_ids_are_checked() {
    let (_r, a, _am, b, _bm) = pair().await;
    assert!(matches!(
        a.on(1, |_: (), _| async {}),
        Err(Error::DuplicateHandler(1))
    ));
    assert!(matches!(
        a.on(65_001, |_: (), _| async {}),
        Err(Error::ReservedHandler(65_001))
    ));
    assert!(a.on(65_000, |_: (), _| async {}).is_ok());
    let e = MeshNode::builder()
        .config(|c| *c = fast("ids"))
        .on(5, |_: (), _| async {})
        .on(5, |_: (), _| async {})
        .start()
        .await
        .unwrap_err();
    assert!(matches!(e, Error::DuplicateHandler(5)), "{e:?}");
    // Removing a handler: requests to it get NoHandler.
    assert!(b.remove_handler(1));
    let e = a
        .request::<_, Msg>(1, b.local_key(), &msg("x"))
        .await
        .unwrap_err();
    assert!(matches!(e, RequestError::NoHandler { .. }));
    let _ = a.stop().await;
    let _ = b.stop().await;
}

/// The receive loop keeps its own copy of the handler table: a handler registered, removed
/// or replaced while it runs serves (or stops serving) the very next message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handler_changes_apply_to_the_next_message() {
    let (_r, a, _am, b, _bm) = pair().await;
    let answering = |n: u32| move |_: (), _| async move { Ok::<_, HandlerError>(n) };
    let ask = || a.request::<_, u32>(200, b.local_key(), &());
    assert!(matches!(
        ask().await.unwrap_err(),
        RequestError::NoHandler { .. }
    ));
    b.on_request(200, answering(1)).unwrap();
    assert_eq!(ask().await.unwrap(), 1);
    assert_eq!(ask().await.unwrap(), 1);
    assert!(b.remove_handler(200));
    assert!(matches!(
        ask().await.unwrap_err(),
        RequestError::NoHandler { .. }
    ));
    b.on_request(200, answering(2)).unwrap();
    assert_eq!(ask().await.unwrap(), 2);
    let _ = a.stop().await;
    let _ = b.stop().await;
}

/// A removed handler is let go of (with whatever it holds) though no message comes after:
/// the receive loop's copy of the table does not keep it alive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_handler_is_dropped_without_another_message() {
    let (_r, a, _am, b, _bm) = pair().await;
    let (held, released) = tokio::sync::oneshot::channel::<()>();
    b.on_request(201, move |_: (), _| {
        let _held = &held;
        async { Ok::<_, HandlerError>(()) }
    })
    .unwrap();
    // The loop copies the table to serve this.
    a.request::<_, ()>(201, b.local_key(), &()).await.unwrap();
    assert!(b.remove_handler(201));
    let dropped = tokio::time::timeout(Duration::from_secs(10), released).await;
    assert!(
        matches!(dropped, Ok(Err(_))),
        "the handler's captures were not dropped: {dropped:?}"
    );
    let _ = a.stop().await;
    let _ = b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_delivery_skips_the_network() {
    let registry = Registry::memory();
    let (a, am) = suite_node(&registry, fast("local"), "a").await;
    let before = a.transport_stats();
    let report = a.send(7, [a.local_key()], &msg("self")).await.unwrap();
    assert_eq!(report.delivered, vec![a.local_key()]);
    wait_runs(&am, 7, 1).await;
    let r: Option<Msg> = a.request(8, a.local_key(), &()).await.unwrap();
    assert_eq!(r, Some(msg("self")));
    let report = a
        .send_each(4242, [a.local_key()], &(), SendOptions::default())
        .await
        .unwrap();
    assert_eq!(
        report.failed,
        vec![(a.local_key(), DeliveryError::NoHandler)]
    );
    assert_eq!(
        a.transport_stats(),
        before,
        "nothing went through the transport"
    );
    let _ = a.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usend_and_urequest() {
    let (_r, a, _am, b, bm) = pair().await;
    a.usend(7, [b.local_key()], &msg("datagram")).unwrap();
    within("the datagram arrives (loopback)", 10, async {
        while runs(&bm, 7) == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    assert_eq!(bm.lock().remembered, Some(msg("datagram")));
    let e = a
        .usend(7, [b.local_key()], &msg(&"x".repeat(5000)))
        .unwrap_err();
    assert!(matches!(e, Error::TooLarge { .. }), "{e:?}");
    let r: Msg = a
        .urequest(1, b.local_key(), &msg("u"), Duration::from_secs(2))
        .await
        .unwrap();
    assert_eq!(r.message, "u world");
    // An answer too big for a datagram comes back reliably.
    b.on_request(101, |n: usize, _c| async move {
        Ok::<_, HandlerError>(vec![1u8; n])
    })
    .unwrap();
    let big: Vec<u8> = a
        .urequest(101, b.local_key(), &50_000usize, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(big.len(), 50_000);
    let _ = a.stop().await;
    let _ = b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_ping_ping_and_echo() {
    let (_r, a, _am, b, _bm) = pair().await;
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.send_to(b"ping", b.local_key().socket_addr()).unwrap();
    let mut buf = [0u8; 16];
    let (n, from) = s.recv_from(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"PONG\n");
    assert_eq!(from, b.local_key().socket_addr());
    a.ping(b.local_key(), Duration::from_secs(2)).await.unwrap();
    let data = Bytes::from_static(b"echo me");
    assert_eq!(
        a.echo(b.local_key(), data.clone(), Duration::from_secs(2))
            .await
            .unwrap(),
        data
    );
    let _ = a.stop().await;
    let _ = b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_to_a_dead_node_fail_within_the_timeout() {
    let registry = Registry::memory();
    let (a, _am) = suite_node(&registry, fast("dead"), "a").await;
    // A socket that never answers: a node that died without a word.
    let silent = UdpSocket::bind("127.0.0.1:0").unwrap();
    let dead = NodeKey::from(silent.local_addr().unwrap());
    let timeout = Duration::from_secs(2);
    let e = within(
        "request to a dead node",
        10,
        a.request_with::<_, ()>(1, dead, &msg("x"), timeout),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(
            e,
            RequestError::NotDelivered { .. } | RequestError::Timeout { .. }
        ),
        "{e:?}"
    );
    // The one-line form cannot look like success: `?` on it is an error, carrying the report.
    let e = within("send to a dead node", 10, a.send(7, [dead], &msg("x")))
        .await
        .unwrap_err();
    let Error::NotDelivered(SendFailed(report)) = e else {
        panic!("{e:?}");
    };
    assert_eq!((report.delivered.len(), report.failed.len()), (0, 1));
    // The explicit form takes partial delivery as a result.
    let report = within(
        "send_each to a dead node",
        10,
        a.send_each(7, [dead], &msg("x"), SendOptions::default()),
    )
    .await
    .unwrap();
    assert_eq!(report.failed.len(), 1);
    assert!(
        matches!(report.failed[0].1, DeliveryError::Unreachable(_)),
        "{report:?}"
    );
    let _ = a.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_node_is_seen_leaving_and_fails_requests_at_once() {
    let (_r, a, _am, b, _bm) = pair().await;
    let mut events = a.membership_events();
    let bk = b.local_key();
    let report = b.stop().await;
    assert!(report.is_clean(), "{report:?}");
    within("a sees b leave", 10, async {
        loop {
            if let Ok(MembershipEvent::Left(r)) = events.recv().await {
                if r.key == bk {
                    break;
                }
            }
        }
    })
    .await;
    let e = within(
        "request to a stopped node",
        10,
        a.request_with::<_, Msg>(1, bk, &msg("x"), Duration::from_secs(3600)),
    )
    .await
    .unwrap_err();
    assert!(matches!(e, RequestError::NotDelivered { .. }), "{e:?}");
    // A stopped node refuses work with a typed error, and a second stop is a no-op.
    assert!(matches!(
        b.send(7, [a.local_key()], &()).await,
        Err(Error::Stopped)
    ));
    assert!(matches!(
        b.request::<_, ()>(1, a.local_key(), &()).await,
        Err(RequestError::Stopped)
    ));
    assert!(b.stop().await.is_clean());
    let _ = a.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_waits_for_running_handlers() {
    let (_r, a, _am, b, _bm) = pair().await;
    let done = Arc::new(AtomicUsize::new(0));
    let d = done.clone();
    b.on(200, move |(): (), _c| {
        let d = d.clone();
        async move {
            tokio::time::sleep(Duration::from_millis(100)).await;
            d.fetch_add(1, Ordering::SeqCst);
        }
    })
    .unwrap();
    let report = a.send(200, [b.local_key()], &()).await.unwrap();
    assert!(report.is_ok());
    let stop = b.stop().await;
    assert!(stop.is_clean(), "{stop:?}");
    assert_eq!(
        done.load(Ordering::SeqCst),
        1,
        "the handler finished before stop returned"
    );
    let _ = a.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binding_follows_the_configuration() {
    // A taken first port: the next one is used.
    let taken = UdpSocket::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let mut c = fast("bind");
    c.port = port;
    match MeshNode::builder().config(|x| *x = c.clone()).start().await {
        Ok(n) => {
            assert!(n.local_key().port > port && n.local_key().port < port.saturating_add(100));
            let _ = n.stop().await;
        }
        // The next 99 ports may all be taken on a busy machine: then the error says which.
        Err(Error::Bind { first, .. }) => assert_eq!(first, port),
        Err(e) => panic!("{e:?}"),
    }
    // Only one port allowed, and it is taken.
    c.port_attempts = 1;
    let e = MeshNode::builder()
        .config(|x| *x = c.clone())
        .start()
        .await
        .unwrap_err();
    assert!(matches!(e, Error::Bind { .. }), "{e:?}");
    // An unspecified address cannot be announced.
    let mut c = fast("bind");
    c.address = Some("0.0.0.0".parse().unwrap());
    assert!(matches!(MeshNode::start(c).await, Err(Error::Config(_))));
    // Nor can a socket have no buffer.
    let mut c = fast("bind");
    c.socket_buffer = 0;
    assert!(matches!(MeshNode::start(c).await, Err(Error::Config(_))));
    // A named interface: the loopback's address; a missing one fails or falls back.
    let mut c = fast("bind");
    c.address = None;
    c.nic = Some("lo".into());
    let n = MeshNode::start(c.clone()).await.unwrap();
    assert!(n.local_key().address.is_loopback());
    let _ = n.stop().await;
    c.nic = Some("no-such-nic0".into());
    assert!(matches!(
        MeshNode::start(c.clone()).await,
        Err(Error::NoInterface(_))
    ));
    c.strict = false;
    let n = MeshNode::start(c).await.unwrap();
    assert!(n.local_key().address.is_loopback());
    let _ = n.stop().await;
}

#[tokio::test]
async fn config_from_toml_and_unknown_redis() {
    let c: Config = toml::from_str(
        r#"
        prefix = "t"
        node_type = "game"
        address = "127.0.0.1"
        port = 0
        request_timeout = "250ms"
        send_interval = "1ms"
        relay_limit = 2
        "#,
    )
    .unwrap();
    assert_eq!(c.request_timeout, Duration::from_millis(250));
    let n = MeshNode::start(c).await.unwrap();
    assert_eq!(n.node_type(), "game");
    let _ = n.stop().await;
    // No Redis there: start fails with a registry error, and frees its port.
    let mut c = fast("t");
    c.redis = Some(format!(
        "redis://127.0.0.1:{}",
        mesh_discovery::testing::free_port()
    ));
    let e = MeshNode::start(c).await.unwrap_err();
    assert!(matches!(e, Error::Registry(_)), "{e:?}");
    let mut c = fast("t");
    c.redis = Some("http://x".into());
    assert!(matches!(MeshNode::start(c).await, Err(Error::Registry(_))));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_keys_must_match() {
    let registry = Registry::memory();
    let keyed = |secret: &str| {
        let mut c = fast("keyed");
        c.cluster_key = Some(mesh_link::Secret::new(secret));
        c
    };
    let (a, _) = suite_node(&registry, keyed("one secret"), "a").await;
    let (b, _) = suite_node(&registry, keyed("one secret"), "b").await;
    let (c, _) = suite_node(&registry, keyed("another secret"), "c").await;
    let (d, _) = suite_node(&registry, fast("keyed"), "d").await;
    let r: Msg = a.request(1, b.local_key(), &msg("keyed")).await.unwrap();
    assert_eq!(r.message, "keyed world");
    for other in [&c, &d] {
        let e = within(
            "mismatched keys fail",
            10,
            a.request::<_, Msg>(1, other.local_key(), &msg("x")),
        )
        .await
        .unwrap_err();
        assert!(
            matches!(
                e,
                RequestError::NotDelivered { .. } | RequestError::Timeout { .. }
            ),
            "{e:?}"
        );
    }
    assert!(c.transport_stats().dropped_unauthenticated > 0);
    assert!(d.transport_stats().dropped_unauthenticated > 0);
    // The secret never shows in debug output.
    let dbg = format!("{:?}", keyed("one secret"));
    assert!(!dbg.contains("one secret"), "{dbg}");
    for n in [a, b, c, d] {
        let _ = n.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_larger_message_limit_just_works() {
    // Found by mesh-bench: a 32 MiB limit used to fail at start (transport caps too small).
    let registry = Registry::memory();
    let mut c = fast("big");
    c.max_message_size = 32 << 20;
    c.peer_timeout = Duration::from_secs(20); // a debug build moves 17 MiB slowly
    let (a, _) = suite_node(&registry, c.clone(), "a").await;
    let (b, _) = suite_node(&registry, c, "b").await;
    b.on_request(100, |v: Vec<u8>, _| async move {
        Ok::<_, HandlerError>(v.len())
    })
    .unwrap();
    let n: usize = a
        .request(100, b.local_key(), &vec![1u8; 20 << 20])
        .await
        .unwrap();
    assert_eq!(n, 20 << 20);
    let _ = a.stop().await;
    let _ = b.stop().await;
}

/// Registers on `node` a request handler `id` that answers a number of milliseconds with
/// itself after that many (at most 5 s).
fn answer_after_asked_ms(node: &MeshNode, id: u16) {
    node.on_request(id, |ms: u64, _c| async move {
        tokio::time::sleep(Duration::from_millis(ms.min(5_000))).await;
        Ok::<_, HandlerError>(ms)
    })
    .unwrap();
}

/// Asks `answer_after_asked_ms`'s handler `id` on `to` for an answer after 1 ms, which must
/// come (within 10 s) and be 1.
async fn quick_answer(from: &MeshNode, id: u16, to: NodeKey, what: &str) {
    let v: u64 = within(
        what,
        10,
        from.request_with(id, to, &1u64, Duration::from_secs(5)),
    )
    .await
    .unwrap();
    assert_eq!(v, 1, "{what}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_answer_times_out_and_later_requests_still_do() {
    let (_r, a, _am, b, _bm) = pair().await;
    let bk = b.local_key();
    answer_after_asked_ms(&b, 40);
    for round in 0..3 {
        let timeout = Duration::from_millis(100);
        let e = within(
            "a request that times out",
            10,
            a.request_with::<_, u64>(40, bk, &3_000u64, timeout),
        )
        .await
        .unwrap_err();
        assert_eq!(
            e,
            RequestError::Timeout {
                handler: 40,
                node: bk,
                after: timeout
            },
            "round {round}"
        );
        assert_eq!(a.stats().pending_requests, 0, "the entry is gone");
        // With nothing pending, the expiry task rests; the next request must wake it, and a
        // quick answer must still come back well inside its own timeout.
        tokio::time::sleep(Duration::from_millis(50)).await;
        quick_answer(&a, 40, bk, "a quick answer").await;
    }
    let _ = a.stop().await;
    let _ = b.stop().await;
}

/// A request's entry lives exactly as long as its future waits: there while it waits for a
/// slow answer, gone when the future is dropped, and never left behind by one refused when
/// it is sent (an unreliable request too large for a datagram) or by one answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_entry_lives_as_long_as_its_future_waits() {
    let (_r, a, _am, b, _bm) = pair().await;
    let bk = b.local_key();
    answer_after_asked_ms(&b, 41);
    let slow = a.request_with::<_, u64>(41, bk, &3_000u64, Duration::from_secs(10));
    let mut slow = Box::pin(slow);
    // Polled until it waits (bounded): its entry is there.
    let waited = tokio::time::timeout(Duration::from_millis(300), &mut slow).await;
    assert!(waited.is_err(), "still waiting for the 3 s answer");
    assert_eq!(a.stats().pending_requests, 1, "the waiting request's entry");
    drop(slow);
    assert_eq!(
        a.stats().pending_requests,
        0,
        "dropped, and its entry with it"
    );
    let big = vec![0u8; 64 * 1024];
    let refused = a
        .urequest::<_, u64>(41, bk, &big, Duration::from_secs(1))
        .await
        .unwrap_err();
    assert!(
        matches!(refused, RequestError::NotDelivered { .. }),
        "{refused:?}"
    );
    assert_eq!(a.stats().pending_requests, 0, "refused, and no entry left");
    quick_answer(&a, 41, bk, "an answer").await;
    assert_eq!(a.stats().pending_requests, 0, "answered, and no entry left");
    let _ = a.stop().await;
    let _ = b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_returns_as_soon_as_the_running_handlers_finish() {
    let registry = Registry::memory();
    let (a, _am) = suite_node(&registry, fast("drain"), "a").await;
    let mut config = fast("drain");
    // Far longer than the test may take: stop must be woken by the handler's end, not wait
    // this out.
    config.stop_timeout = Duration::from_secs(60);
    let (b, _bm) = suite_node(&registry, config, "b").await;
    wait_nodes(&a, 2).await;
    b.on_request(41, |ms: u64, _c| async move {
        tokio::time::sleep(Duration::from_millis(ms)).await;
        Ok::<_, HandlerError>(ms)
    })
    .unwrap();
    let bk = b.local_key();
    let asker = a.clone();
    let answer = tokio::spawn(async move {
        asker
            .request_with::<_, u64>(41, bk, &300u64, Duration::from_secs(30))
            .await
    });
    // The handler is running once the node counts it.
    within("the handler starts", 10, async {
        while b.stats().running_handlers == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    let report = within("stop after the handler", 10, b.stop()).await;
    assert_eq!(report.cancelled_handlers, 0, "{report:?}");
    assert_eq!(within("the answer", 10, answer).await.unwrap(), Ok(300));
    let _ = a.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_timeout_fires_while_a_longer_request_waits() {
    let (_r, a, _am, b, _bm) = pair().await;
    let bk = b.local_key();
    b.on_request(42, |ms: u64, _c| async move {
        tokio::time::sleep(Duration::from_millis(ms.min(5_000))).await;
        Ok::<_, HandlerError>(ms)
    })
    .unwrap();
    // Pending with a 60 s timeout: the expiry task plans its next look a minute ahead.
    let asker = a.clone();
    let long = tokio::spawn(async move {
        asker
            .request_with::<_, u64>(42, bk, &400u64, Duration::from_secs(60))
            .await
    });
    within("the long request is pending", 10, async {
        while a.stats().pending_requests == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    // A request due far sooner must wake it, not wait for that look.
    let timeout = Duration::from_millis(100);
    let e = within(
        "the short request times out",
        5,
        a.request_with::<_, u64>(42, bk, &300u64, timeout),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(e, RequestError::Timeout { after, .. } if after == timeout),
        "{e:?}"
    );
    // (Handlers here answer within the test config's 600 ms peer timeout.)
    assert_eq!(within("the long answer", 10, long).await.unwrap(), Ok(400));
    let _ = a.stop().await;
    let _ = b.stop().await;
}

/// What a caller holds per message in flight: a send's future is at most 128 bytes (it was
/// 688: a user may hold thousands, and their size is memory traffic on every message), a
/// request's under a kilobyte (above 1 KB glibc's allocator also takes a slower path for
/// each); all can move to another task. The rare paths (a relay tree, Node nodes, a full
/// queue, this node's own handler) box their state instead of making every future larger.
#[tokio::test]
async fn futures_of_sends_and_requests_stay_small() {
    fn size<F: std::future::Future + Send>(_: &F) -> usize {
        size_of::<F>()
    }
    #[derive(serde::Serialize, serde::Deserialize)]
    struct Note(u32);
    mesh_link::request!(Note = 30 => u32);
    let (_r, a, _am, b, _bm) = pair().await;
    let to = b.local_key();
    let sends = [
        ("tell", size(&a.tell([to], &Note(7)))),
        (
            "tell_each",
            size(&a.tell_each([to], &Note(7), SendOptions::default())),
        ),
        (
            "send_bytes",
            size(&a.send_bytes(1, [to], Bytes::new(), SendOptions::default())),
        ),
        ("send", size(&a.send(1, [to], &7u32))),
        (
            "send_each to a Vec",
            size(&a.send_each(1, vec![to], &7u32, SendOptions::default())),
        ),
    ];
    for (what, bytes) in sends {
        assert!(bytes <= 128, "{what}'s future is {bytes} bytes");
    }
    let sizes = [
        ("ask", size(&a.ask(to, &Note(7)))),
        (
            "request_bytes",
            size(&a.request_bytes(1, to, Bytes::new(), Duration::from_secs(1), true)),
        ),
        ("request", size(&a.request::<_, u32>(1, to, &7u32))),
        ("ping", size(&a.ping(to, Duration::from_secs(1)))),
    ];
    for (what, bytes) in sizes {
        assert!(bytes <= 1024, "{what}'s future is {bytes} bytes");
    }
}

/// An outbox reports every message once: delivered to a live node (each run once, in order
/// when asked), to this node itself through its handler, and failed, with its index and node,
/// to a node that never answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outbox_reports_each_message_once_with_its_index() {
    let (_r, a, _am, b, _bm) = pair().await;
    let got = Arc::new(parking_lot::Mutex::new(Vec::new()));
    for node in [&a, &b] {
        let got = got.clone();
        node.on_raw(40, move |data: Bytes, ctx| {
            let got = got.clone();
            async move {
                let i = u32::from_le_bytes(data[..4].try_into().unwrap());
                got.lock().push((ctx.sender() == ctx.node().local_key(), i));
                Ok(None)
            }
        })
        .unwrap();
    }
    let n = 5_000u32;
    let mut outbox = a
        .outbox()
        .with_options(SendOptions::default().ordered(true));
    for i in 0..n {
        let index = outbox
            .send_bytes(40, b.local_key(), Bytes::from(i.to_le_bytes().to_vec()))
            .await
            .unwrap();
        assert_eq!(index, u64::from(i));
    }
    // This node itself: through its own handler.
    outbox
        .send_bytes(40, a.local_key(), Bytes::from(n.to_le_bytes().to_vec()))
        .await
        .unwrap();
    let report = within("the outbox's flush", 30, outbox.flush()).await;
    assert_eq!((report.delivered, report.failed), (u64::from(n) + 1, 0));
    assert!(report.is_ok());
    let seen = std::mem::take(&mut *got.lock());
    let remote: Vec<u32> = seen.iter().filter(|s| !s.0).map(|s| s.1).collect();
    assert_eq!(remote, (0..n).collect::<Vec<_>>(), "each once, in order");
    assert_eq!(seen.iter().filter(|s| s.0).count(), 1);
    assert_eq!(outbox.flush().await, Default::default(), "reported once");

    // A node that never answers: each message fails, with its index.
    let silent = UdpSocket::bind("127.0.0.1:0").unwrap();
    let dead = NodeKey::from(silent.local_addr().unwrap());
    let mut indexes = Vec::new();
    for i in 0..3u32 {
        let to = if i == 1 { dead } else { b.local_key() };
        indexes.push(
            outbox
                .send_bytes(40, to, Bytes::from(i.to_le_bytes().to_vec()))
                .await
                .unwrap(),
        );
    }
    let report = within("the flush of a dead node's message", 30, outbox.flush()).await;
    assert_eq!((report.delivered, report.failed), (2, 1));
    let f = &report.failures[0];
    assert_eq!((f.index, f.node), (indexes[1], dead));
    assert!(matches!(f.error, DeliveryError::Unreachable(_)), "{f:?}");
    let _ = a.stop().await;
    let _ = b.stop().await;
}

/// A handler whose runs sometimes finish at once and sometimes wait (its allocation kept for
/// the next run in the first case, handed to the waiting run in the second) answers every
/// request with its own answer, in sequence and with many in flight, and keeps serving after
/// a run that panicked or was refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handlers_that_finish_at_once_or_wait_answer_every_request_right() {
    let (_r, a, _am, b, _bm) = pair().await;
    let bk = b.local_key();
    b.on_request(21, |n: u64, _c| async move {
        if n % 3 == 1 {
            tokio::task::yield_now().await;
        }
        if n % 3 == 2 && n.is_multiple_of(7) {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        if n == 500 {
            panic!("the five hundredth");
        }
        Ok::<_, HandlerError>(n * 3 + 1)
    })
    .unwrap();
    for n in 0..300u64 {
        let got: u64 = a.request(21, bk, &n).await.unwrap();
        assert_eq!(got, n * 3 + 1, "request {n}");
    }
    let many = (300..700u64).map(|n| {
        let a = a.clone();
        async move { (n, a.request::<_, u64>(21, bk, &n).await) }
    });
    for (n, r) in futures_util::future::join_all(many).await {
        match (n, r) {
            (500, Err(RequestError::Handler { message, .. })) => {
                assert!(message.contains("panicked"), "{message}")
            }
            (n, r) => assert_eq!(r.unwrap(), n * 3 + 1, "request {n}"),
        }
    }
    // Refused (undecodable), then served again.
    let e = a
        .request::<_, u64>(21, bk, &"not a number")
        .await
        .unwrap_err();
    assert!(matches!(e, RequestError::BadRequest { .. }), "{e:?}");
    let got: u64 = a.request(21, bk, &7u64).await.unwrap();
    assert_eq!(got, 22);
    let _ = a.stop().await;
    let _ = b.stop().await;
}
