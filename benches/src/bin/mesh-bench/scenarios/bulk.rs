//! Large messages: bytes per second.

#[allow(
    unused_imports,
    reason = "each scenario takes what it needs from one list"
)]
use super::super::prelude::*;

/// `bulk`: 1 MiB and 16 MiB messages, megabytes per second.
pub(crate) async fn bulk(args: &Args) -> Vec<Row> {
    let mut rows = Vec::new();
    for size in [1usize << 20, 16 << 20] {
        let label = format!("bulk {} MiB", size >> 20);
        let (server, client) = mesh_pair().await;
        let data = Bytes::from(vec![5u8; size]);
        // TCP sink.
        let l = TcpListener::bind("127.0.0.1:0").await.expect("tcp");
        let tcp_addr = l.local_addr().expect("addr");
        let tcp_got = Arc::new(AtomicU64::new(0));
        let tg = tcp_got.clone();
        tokio::spawn(async move {
            let Ok((mut s, _)) = l.accept().await else {
                return;
            };
            let mut buf = vec![0u8; 1 << 20];
            while let Ok(n) = s.read(&mut buf).await {
                if n == 0 {
                    return;
                }
                tg.fetch_add(n as u64, Ordering::Relaxed);
            }
        });
        let mut tcp = TcpStream::connect(tcp_addr).await.expect("tcp");
        // TCP messages: each length-prefixed, received whole into a buffer of its own (what a
        // framed protocol such as tokio-util's `LengthDelimitedCodec` hands its user).
        let l = TcpListener::bind("127.0.0.1:0").await.expect("tcp");
        let framed_addr = l.local_addr().expect("addr");
        let framed_got = Arc::new(AtomicU64::new(0));
        let fg = framed_got.clone();
        tokio::spawn(async move {
            let Ok((mut s, _)) = l.accept().await else {
                return;
            };
            while let Ok(len) = s.read_u32().await {
                let len = len as usize;
                let mut message = BytesMut::with_capacity(len);
                while message.len() < len {
                    match (&mut s)
                        .take((len - message.len()) as u64)
                        .read_buf(&mut message)
                        .await
                    {
                        Ok(0) | Err(_) => return,
                        Ok(_) => {}
                    }
                }
                let message = message.freeze();
                fg.fetch_add(message.len() as u64, Ordering::Relaxed);
            }
        });
        let mut framed = TcpStream::connect(framed_addr).await.expect("tcp");
        let quic_got = Arc::new(AtomicU64::new(0));
        let (quic, cc) = quic_server(quic_got.clone()).await;
        let conn = quic_client(quic, cc).await;
        let slice = Duration::from_secs(args.duration) / (args.rounds * 4 * 2);
        let mut bytes = [0u64; 4];
        let mut spent = [Duration::ZERO; 4];
        let to = server.local_key();
        for _ in 0..args.rounds {
            // mesh-link: up to 4 messages in flight, each resolved on acknowledgement.
            let t = Instant::now();
            let mut inflight = FuturesUnordered::new();
            loop {
                while inflight.len() < 4 && t.elapsed() < slice {
                    let c = client.clone();
                    let d = data.clone();
                    inflight.push(async move {
                        c.send_bytes(SINK, [to], d, SendOptions::default())
                            .await
                            .map(|r| r.is_ok())
                            .unwrap_or(false)
                    });
                }
                match inflight.next().await {
                    Some(true) => bytes[0] += size as u64,
                    Some(false) => {}
                    None => break,
                }
            }
            spent[0] += t.elapsed();
            // TCP: the same bytes down one stream (counted at the reader).
            let before = tcp_got.load(Ordering::Relaxed);
            let t = Instant::now();
            let mut written = 0u64;
            while t.elapsed() < slice {
                tcp.write_all(&data).await.expect("tcp write");
                written += size as u64;
            }
            while tcp_got.load(Ordering::Relaxed) - before < written {
                tokio::time::sleep(Duration::from_micros(200)).await;
            }
            spent[1] += t.elapsed();
            bytes[1] += written;
            // TCP messages: a length, then the message.
            let before = framed_got.load(Ordering::Relaxed);
            let t = Instant::now();
            let mut written = 0u64;
            while t.elapsed() < slice {
                framed.write_u32(size as u32).await.expect("tcp write");
                framed.write_all(&data).await.expect("tcp write");
                written += size as u64;
            }
            while framed_got.load(Ordering::Relaxed) - before < written {
                tokio::time::sleep(Duration::from_micros(200)).await;
            }
            spent[2] += t.elapsed();
            bytes[2] += written;
            // QUIC: one unidirectional stream per message, 4 in flight.
            let before = quic_got.load(Ordering::Relaxed);
            let t = Instant::now();
            let mut written = 0u64;
            while t.elapsed() < slice {
                let sends = (0..4).map(|_| {
                    let conn = conn.clone();
                    let d = data.clone();
                    async move {
                        let mut s = conn.open_uni().await.expect("quic stream");
                        s.write_all(&d).await.expect("quic write");
                        s.finish().expect("quic finish");
                        let _ = s.stopped().await;
                    }
                });
                join_all(sends).await;
                written += 4 * size as u64;
            }
            while quic_got.load(Ordering::Relaxed) - before < written {
                tokio::time::sleep(Duration::from_micros(200)).await;
            }
            spent[3] += t.elapsed();
            bytes[3] += written;
        }
        let names = [
            "mesh-link reliable messages",
            "TCP stream, one reused buffer",
            "TCP messages, each its own buffer",
            "QUIC streams (quinn)",
        ];
        let mut set: Vec<Row> = (0..4)
            .map(|i| {
                let mut r = Row::new(&label, names[i]);
                r.mb_per_sec = Some(bytes[i] as f64 / 1e6 / spent[i].as_secs_f64());
                r.samples = (bytes[i] / size as u64) as usize;
                r
            })
            .collect();
        ratios(&mut set);
        rows.extend(set);
        let _ = server.stop().await;
    }
    rows
}
