//! Round trips and one-way messages through a lossy relay: the adaptive RTO against the original's fixed schedule.

#[allow(
    unused_imports,
    reason = "each scenario takes what it needs from one list"
)]
use super::super::prelude::*;

/// A relay between two transports that drops each datagram with probability `loss`.
pub(crate) async fn lossy_relay(
    a: SocketAddr,
    b: SocketAddr,
    loss: f64,
    seed: u64,
) -> (SocketAddr, SocketAddr) {
    let for_a = Arc::new(UdpSocket::bind("127.0.0.1:0").await.expect("udp"));
    let for_b = Arc::new(UdpSocket::bind("127.0.0.1:0").await.expect("udp"));
    let (fa, fb) = (
        for_a.local_addr().expect("addr"),
        for_b.local_addr().expect("addr"),
    );
    for (from, to, dest, seed) in [
        (for_a.clone(), for_b.clone(), b, seed),
        (for_b, for_a, a, seed ^ 0xABCD),
    ] {
        tokio::spawn(async move {
            let mut rng = seed | 1;
            let mut buf = vec![0u8; 65_536];
            while let Ok((n, _)) = from.recv_from(&mut buf).await {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                if (rng % 1_000_000) as f64 >= loss * 1e6 {
                    let _ = to.send_to(&buf[..n], dest).await;
                }
            }
        });
    }
    (fa, fb)
}

/// `lossy`: the transport through a lossy relay, adaptive RTO vs the original's fixed 200 ms.
pub(crate) async fn lossy(args: &Args) -> Vec<Row> {
    let mut rows = Vec::new();
    for loss in [0.01, 0.05, 0.20] {
        let mut pairs = Vec::new();
        for fixed in [false, true] {
            let mut ec = EndpointConfig::default();
            if fixed {
                ec.fixed_rto(Some(Duration::from_millis(200)));
            }
            ec.peer_timeout(Duration::from_secs(30));
            let mut tc = TransportConfig::default();
            tc.endpoint = ec;
            let a = Arc::new(
                Transport::bind("127.0.0.1:0".parse().expect("addr"), tc.clone())
                    .await
                    .expect("bind"),
            );
            let b = Arc::new(
                Transport::bind("127.0.0.1:0".parse().expect("addr"), tc)
                    .await
                    .expect("bind"),
            );
            // a reaches b at `to_b`; b sees a as `seen_a` and answers there.
            let (to_b, _) = lossy_relay(a.local_addr(), b.local_addr(), loss, 42).await;
            let echo = b.clone();
            tokio::spawn(async move {
                while let Some(m) = echo.recv().await {
                    if m.data.len() == 64 && m.data[0] == 1 {
                        let _ = echo.queue(m.from, m.data, Delivery::Unordered.into()).await;
                    }
                }
            });
            pairs.push((a, to_b));
        }
        let slice = Duration::from_secs(args.duration) / (args.rounds * 2 * 2 * 3);
        let mut lat: Vec<Vec<Duration>> = vec![Vec::new(); 2];
        let mut spent_rtt = [Duration::ZERO; 2];
        let mut delivered = [0u64; 2];
        let mut spent_ow = [Duration::ZERO; 2];
        for _ in 0..args.rounds {
            for (i, (a, to_b)) in pairs.iter().enumerate() {
                // rtt: a reliable request and its reliable echo.
                let t = Instant::now();
                while t.elapsed() < slice {
                    let s = Instant::now();
                    let mut req = vec![0u8; 64];
                    req[0] = 1;
                    let _ = a
                        .queue(*to_b, Bytes::from(req), Delivery::Unordered.into())
                        .await;
                    if tokio::time::timeout(Duration::from_secs(30), a.recv())
                        .await
                        .is_err()
                    {
                        break;
                    }
                    lat[i].push(s.elapsed());
                }
                spent_rtt[i] += t.elapsed();
                // oneway goodput: 1000 messages in flight, acknowledged ones counted.
                let t = Instant::now();
                let mut inflight = FuturesUnordered::new();
                loop {
                    while inflight.len() < 1000 && t.elapsed() < slice {
                        let a = a.clone();
                        let to = *to_b;
                        inflight.push(async move {
                            a.send(to, Bytes::from_static(&[2u8; 64])).await.is_ok()
                        });
                    }
                    match inflight.next().await {
                        Some(true) => delivered[i] += 1,
                        Some(false) => {}
                        None => break,
                    }
                }
                spent_ow[i] += t.elapsed();
            }
        }
        let pct = (loss * 100.0).round();
        let names = [
            "mesh-link adaptive RTO",
            "mesh-link fixed 200 ms RTO (original)",
        ];
        let mut r_rtt: Vec<Row> = (0..2)
            .map(|i| {
                Row::new(&format!("lossy {pct}% rtt"), names[i])
                    .latencies(lat[i].clone(), spent_rtt[i])
            })
            .collect();
        ratios(&mut r_rtt);
        let mut r_ow: Vec<Row> = (0..2)
            .map(|i| {
                let mut r = Row::new(&format!("lossy {pct}% oneway"), names[i]);
                r.per_sec = Some(delivered[i] as f64 / spent_ow[i].as_secs_f64());
                r.samples = delivered[i] as usize;
                r
            })
            .collect();
        ratios(&mut r_ow);
        rows.extend(r_rtt);
        rows.extend(r_ow);
    }
    rows
}
