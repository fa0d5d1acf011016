//! One-way messages per second.

#[allow(
    unused_imports,
    reason = "each scenario takes what it needs from one list"
)]
use super::super::prelude::*;

/// Messages the one-future-per-message sender keeps unacknowledged. 1024, not the 4096 of
/// earlier runs: fewer in flight cost less CPU per message on both sides, as two processes
/// pinned to 1 CPU and unpinned alike (2.1-2.8 vs 3.1-3.4 µs, 4.2 vs 5.0-5.4 µs,
/// 2026-12-06), and an outbox's default window is of that order too.
const IN_FLIGHT: usize = 1024;

/// Sends 64-byte reliable one-way messages from `client` to `to` for `slice`, up to
/// [`IN_FLIGHT`] unacknowledged: how many were sent, and the time taken.
pub(crate) async fn mesh_oneway(
    client: &MeshNode,
    to: NodeKey,
    slice: Duration,
) -> (u64, Duration) {
    let t = Instant::now();
    let mut sent = 0u64;
    let mut inflight = FuturesUnordered::new();
    // The clock is read once per 64 messages, as the UDP baseline's loop does.
    let mut open = true;
    let mut done = 0u32;
    loop {
        while open && inflight.len() < IN_FLIGHT {
            inflight.push(async move {
                client
                    .send_bytes(
                        SINK,
                        [to],
                        Bytes::from_static(&PAYLOAD),
                        SendOptions::default(),
                    )
                    .await
                    .is_ok_and(|r| r.is_ok())
            });
            sent += 1;
        }
        if inflight.next().await.is_none() {
            break;
        }
        done += 1;
        if open && done.is_multiple_of(64) {
            open = t.elapsed() < slice;
        }
    }
    (sent, t.elapsed())
}

/// The same through an [`Outbox`](mesh_link::Outbox): no future per message, one flush at
/// the end (the transport's send queue is the only limit on what is in flight). How many were
/// delivered (by the flush's count), and the time taken, flush included.
pub(crate) async fn mesh_outbox_oneway(
    client: &MeshNode,
    to: NodeKey,
    slice: Duration,
) -> (u64, Duration) {
    let t = Instant::now();
    // The outbox's default window.
    let mut outbox = client.outbox();
    // The clock is read once per 64 messages, as the loop above does.
    while t.elapsed() < slice {
        for _ in 0..64 {
            if outbox
                .send_bytes(SINK, to, Bytes::from_static(&PAYLOAD))
                .await
                .is_err()
            {
                break;
            }
        }
    }
    let report = outbox.flush().await;
    (report.delivered, t.elapsed())
}

/// `oneway`: 64-byte messages per second, received and counted by the other side.
pub(crate) async fn oneway(args: &Args) -> Vec<Row> {
    let (server, client) = mesh_pair().await;
    let received = Arc::new(AtomicU64::new(0));
    let r = received.clone();
    server.remove_handler(SINK);
    server
        .on_raw(SINK, move |_: Bytes, _| {
            r.fetch_add(1, Ordering::Relaxed);
            async { Ok::<_, HandlerError>(None) }
        })
        .expect("sink");
    // Raw UDP: a counting receiver.
    let udp_rx = UdpSocket::bind("127.0.0.1:0").await.expect("udp");
    let udp_addr = udp_rx.local_addr().expect("addr");
    let udp_count = Arc::new(AtomicU64::new(0));
    let uc = udp_count.clone();
    tokio::spawn(async move {
        let mut buf = [0u8; 2048];
        while udp_rx.recv(&mut buf).await.is_ok() {
            uc.fetch_add(1, Ordering::Relaxed);
        }
    });
    let udp_tx = UdpSocket::bind("127.0.0.1:0").await.expect("udp");
    udp_tx.connect(udp_addr).await.expect("connect");
    // TCP: length-prefixed frames, counted by the reader.
    let l = TcpListener::bind("127.0.0.1:0").await.expect("tcp");
    let tcp_addr = l.local_addr().expect("addr");
    let tcp_count = Arc::new(AtomicU64::new(0));
    let tc = tcp_count.clone();
    tokio::spawn(async move {
        let Ok((s, _)) = l.accept().await else { return };
        let mut r = tokio::io::BufReader::with_capacity(1 << 16, s);
        let mut frame = [0u8; 66];
        while r.read_exact(&mut frame).await.is_ok() {
            tc.fetch_add(1, Ordering::Relaxed);
        }
    });
    let tcp = TcpStream::connect(tcp_addr).await.expect("tcp");
    let mut tcp = tokio::io::BufWriter::with_capacity(1 << 16, tcp);

    let slice = Duration::from_secs(args.duration) / (args.rounds * 3);
    let mut sent = [0u64; 3];
    let mut got = [0u64; 3];
    let mut spent = [Duration::ZERO; 3];
    let to = server.local_key();
    for _ in 0..args.rounds {
        // mesh-link: reliable sends, up to `IN_FLIGHT` unacknowledged.
        let before = received.load(Ordering::Relaxed);
        let (n, took) = mesh_oneway(&client, to, slice).await;
        sent[0] += n;
        spent[0] += took;
        // Let the handlers count the last ones.
        tokio::time::sleep(Duration::from_millis(50)).await;
        got[0] += received.load(Ordering::Relaxed) - before;

        // Raw UDP: one send per datagram, as fast as the socket takes them.
        let before = udp_count.load(Ordering::Relaxed);
        let t = Instant::now();
        while t.elapsed() < slice {
            for _ in 0..64 {
                if udp_tx.send(&PAYLOAD).await.is_ok() {
                    sent[1] += 1;
                }
            }
        }
        spent[1] += t.elapsed();
        tokio::time::sleep(Duration::from_millis(50)).await;
        got[1] += udp_count.load(Ordering::Relaxed) - before;

        // TCP frames.
        let before = tcp_count.load(Ordering::Relaxed);
        let t = Instant::now();
        let mut frame = [7u8; 66];
        frame[..2].copy_from_slice(&64u16.to_be_bytes());
        while t.elapsed() < slice {
            for _ in 0..64 {
                tcp.write_all(&frame).await.expect("tcp write");
                sent[2] += 1;
            }
        }
        tcp.flush().await.expect("flush");
        spent[2] += t.elapsed();
        tokio::time::sleep(Duration::from_millis(50)).await;
        got[2] += tcp_count.load(Ordering::Relaxed) - before;
    }
    let names = [
        "mesh-link reliable one-way",
        "raw UDP datagrams",
        "TCP length-prefixed frames",
    ];
    let mut rows: Vec<Row> = (0..3)
        .map(|i| {
            let mut r = Row::new("oneway", names[i]);
            r.per_sec = Some(got[i] as f64 / spent[i].as_secs_f64());
            r.lost = Some(sent[i].saturating_sub(got[i]));
            r.samples = got[i] as usize;
            r
        })
        .collect();
    ratios(&mut rows);
    let _ = server.stop().await;
    rows
}
