//! One message to many nodes, directly and through a relay tree.

#[allow(
    unused_imports,
    reason = "each scenario takes what it needs from one list"
)]
use super::super::prelude::*;

/// `fanout`: one message to 10 and 50 nodes, until every one acknowledged.
pub(crate) async fn fanout(args: &Args) -> Vec<Row> {
    let mut rows = Vec::new();
    for n in [10usize, 50] {
        let scenario = format!("fanout {n}");
        let registry = Registry::memory();
        let sender = mesh_node(&registry).await;
        let mut nodes = Vec::new();
        for _ in 0..n {
            nodes.push(mesh_node(&registry).await);
        }
        let _ = tokio::time::timeout(
            Duration::from_secs(30),
            sender.wait_for(|s| s.nodes().len() == n + 1),
        )
        .await;
        let targets: Vec<NodeKey> = nodes.iter().map(MeshNode::local_key).collect();
        let udp = UdpSocket::bind("127.0.0.1:0").await.expect("udp");
        let mut echoes = Vec::new();
        for _ in 0..n {
            echoes.push(udp_echo().await);
        }
        let tcp_addr = tcp_echo().await;
        let mut conns = Vec::new();
        for _ in 0..n {
            let s = TcpStream::connect(tcp_addr).await.expect("tcp");
            s.set_nodelay(true).expect("nodelay");
            conns.push(s);
        }
        let slice = Duration::from_secs(args.duration) / (args.rounds * 4 * 2);
        let mut lat: Vec<Vec<Duration>> = vec![Vec::new(); 4];
        let mut spent = [Duration::ZERO; 4];
        for _ in 0..args.rounds {
            for (i, limit) in [(0, 0usize), (1, 7)] {
                let t = Instant::now();
                while t.elapsed() < slice {
                    let s = Instant::now();
                    let r = sender
                        .send_bytes(
                            SINK,
                            &targets,
                            Bytes::from_static(&PAYLOAD),
                            SendOptions::default().relay_limit(limit),
                        )
                        .await
                        .expect("send");
                    assert!(r.is_ok(), "fan-out failed: {r:?}");
                    lat[i].push(s.elapsed());
                }
                spent[i] += t.elapsed();
            }
            let t = Instant::now();
            let mut buf = [0u8; 128];
            while t.elapsed() < slice {
                let s = Instant::now();
                for e in &echoes {
                    udp.send_to(&PAYLOAD, e).await.expect("udp");
                }
                for _ in 0..n {
                    if tokio::time::timeout(Duration::from_secs(1), udp.recv_from(&mut buf))
                        .await
                        .is_err()
                    {
                        break;
                    }
                }
                lat[2].push(s.elapsed());
            }
            spent[2] += t.elapsed();
            let t = Instant::now();
            let mut buf = [0u8; 64];
            while t.elapsed() < slice {
                let s = Instant::now();
                for c in &mut conns {
                    c.write_all(&PAYLOAD).await.expect("tcp");
                }
                for c in &mut conns {
                    c.read_exact(&mut buf).await.expect("tcp");
                }
                lat[3].push(s.elapsed());
            }
            spent[3] += t.elapsed();
        }
        let names = [
            "mesh-link direct",
            "mesh-link relay tree of 7",
            "raw UDP, each answered",
            "TCP connections, each answered",
        ];
        let mut set: Vec<Row> = names
            .iter()
            .zip(lat)
            .zip(spent)
            .map(|((nm, l), s)| Row::new(&scenario, nm).latencies(l, s))
            .collect();
        ratios(&mut set);
        rows.extend(set);
        let _ = sender.stop().await;
        for n in nodes {
            let _ = n.stop().await;
        }
    }
    rows
}
