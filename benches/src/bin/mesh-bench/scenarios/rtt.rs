//! Round trips, one at a time or many in flight.

#[allow(
    unused_imports,
    reason = "each scenario takes what it needs from one list"
)]
use super::super::prelude::*;

/// `rtt` and `rtt-concurrent`: each contender's clients, interleaved in rounds.
pub(crate) async fn rtt(args: &Args, concurrency: usize) -> Vec<Row> {
    let name = if concurrency == 1 {
        "rtt"
    } else {
        "rtt-concurrent"
    };
    let (server, client) = mesh_pair().await;
    let udp = udp_echo().await;
    let tcp = tcp_echo().await;
    let http = http_echo().await;
    let (quic, cc) = quic_server(Arc::default()).await;
    let quic_conn = quic_client(quic, cc).await;
    let to = server.local_key();
    let (typed_client, numeric_client) = (client.clone(), client.clone());
    let mesh_clients = mesh_factory(concurrency, move || MeshClient {
        node: client.clone(),
        to,
    });
    let typed_clients = mesh_factory(concurrency, move || MeshTypedClient {
        node: typed_client.clone(),
        to,
    });
    let numeric_clients = mesh_factory(concurrency, move || MeshNumericClient {
        node: numeric_client.clone(),
        to,
    });
    let udp_clients: Factory = Box::pin(async move {
        let mut v: Vec<Box<dyn Client>> = Vec::new();
        for _ in 0..concurrency {
            let s = UdpSocket::bind("127.0.0.1:0").await.expect("udp");
            s.connect(udp).await.expect("connect");
            v.push(Box::new(UdpClient(s, [0; 128])));
        }
        v
    });
    let tcp_clients: Factory = Box::pin(async move {
        let mut v: Vec<Box<dyn Client>> = Vec::new();
        for _ in 0..concurrency {
            let s = TcpStream::connect(tcp).await.expect("tcp");
            s.set_nodelay(true).expect("nodelay");
            v.push(Box::new(TcpClient(s, [0; 64])));
        }
        v
    });
    let http_clients: Factory = Box::pin(async move {
        let mut v: Vec<Box<dyn Client>> = Vec::new();
        for _ in 0..concurrency {
            v.push(Box::new(http_client(http).await));
        }
        v
    });
    let quic_clients: Factory = Box::pin(async move {
        (0..concurrency)
            .map(|_| Box::new(QuicClient(quic_conn.clone())) as Box<dyn Client>)
            .collect()
    });
    let names = [
        "mesh-link request",
        "mesh-link typed ask (Echo64)",
        "mesh-link numeric request (Echo64)",
        "raw UDP ping-pong",
        "TCP ping-pong (nodelay)",
        "HTTP/1.1 keep-alive (hyper)",
        "QUIC bidi stream (quinn)",
    ];
    let mut sets = Vec::new();
    for f in [
        mesh_clients,
        typed_clients,
        numeric_clients,
        udp_clients,
        tcp_clients,
        http_clients,
        quic_clients,
    ] {
        sets.push(f.await);
    }
    let slice = Duration::from_secs(args.duration) / (args.rounds * sets.len() as u32);
    let mut lat: Vec<Vec<Duration>> = vec![Vec::new(); sets.len()];
    let mut spent = vec![Duration::ZERO; sets.len()];
    // Warm up every contender, then interleave.
    for set in &mut sets {
        run_clients(set, Duration::from_millis(100)).await;
    }
    for _ in 0..args.rounds {
        for (i, set) in sets.iter_mut().enumerate() {
            let t = Instant::now();
            lat[i].extend(run_clients(set, slice).await);
            spent[i] += t.elapsed();
        }
    }
    let mut rows: Vec<Row> = names
        .iter()
        .zip(lat)
        .zip(spent)
        .map(|((n, l), s)| Row::new(name, n).latencies(l, s))
        .collect();
    ratios(&mut rows);
    let _ = server.stop().await;
    rows
}

/// `concurrency` mesh-link clients made by `make`, as a factory.
fn mesh_factory<C: Client + 'static>(
    concurrency: usize,
    make: impl Fn() -> C + Send + 'static,
) -> Factory {
    Box::pin(async move {
        (0..concurrency)
            .map(|_| Box::new(make()) as Box<dyn Client>)
            .collect()
    })
}
