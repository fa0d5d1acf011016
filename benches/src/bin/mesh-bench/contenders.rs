//! The contenders: request/response clients, echo servers, and mesh-link nodes.

#[allow(
    unused_imports,
    reason = "each scenario takes what it needs from one list"
)]
use crate::prelude::*;

// ----- request/response clients ------------------------------------------------------------

pub(crate) trait Client: Send {
    fn call(&mut self) -> BenchFuture<'_>;
}

pub(crate) const PAYLOAD: [u8; 64] = [7; 64];
pub(crate) const ECHO: u16 = 7;
pub(crate) const SINK: u16 = 8;

pub(crate) struct MeshClient {
    pub(crate) node: MeshNode,
    pub(crate) to: NodeKey,
}

impl Client for MeshClient {
    fn call(&mut self) -> BenchFuture<'_> {
        Box::pin(async move {
            let r: Bytes = self
                .node
                .request_bytes(
                    ECHO,
                    self.to,
                    Bytes::from_static(&PAYLOAD),
                    Duration::from_secs(10),
                    true,
                )
                .await
                .expect("mesh-link answer");
            assert_eq!(r.len(), 64);
        })
    }
}

/// The typed request of the `rtt` scenario: 64 bytes, answered with themselves.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub(crate) struct Echo64(pub(crate) Vec<u8>);
mesh_link::request!(Echo64 = 9 => Echo64);

/// The same request through the numeric API (same codec work, no type check).
pub(crate) const ECHO_SERDE: u16 = 10;

/// A client that asks with the typed API ([`MeshNode::ask`]).
pub(crate) struct MeshTypedClient {
    pub(crate) node: MeshNode,
    pub(crate) to: NodeKey,
}

impl Client for MeshTypedClient {
    fn call(&mut self) -> BenchFuture<'_> {
        Box::pin(async move {
            let r = self
                .node
                .ask(self.to, &Echo64(PAYLOAD.to_vec()))
                .await
                .expect("mesh-link typed answer");
            assert_eq!(r.0.len(), 64);
        })
    }
}

/// A client that asks the same with the numeric API ([`MeshNode::request`]).
pub(crate) struct MeshNumericClient {
    pub(crate) node: MeshNode,
    pub(crate) to: NodeKey,
}

impl Client for MeshNumericClient {
    fn call(&mut self) -> BenchFuture<'_> {
        Box::pin(async move {
            let r: Echo64 = self
                .node
                .request(ECHO_SERDE, self.to, &Echo64(PAYLOAD.to_vec()))
                .await
                .expect("mesh-link numeric answer");
            assert_eq!(r.0.len(), 64);
        })
    }
}

pub(crate) struct UdpClient(pub(crate) UdpSocket, pub(crate) [u8; 128]);

impl Client for UdpClient {
    fn call(&mut self) -> BenchFuture<'_> {
        Box::pin(async move {
            self.0.send(&PAYLOAD).await.expect("udp send");
            // A lost datagram would hang the bench: give up on it after a second.
            let _ = tokio::time::timeout(Duration::from_secs(1), self.0.recv(&mut self.1)).await;
        })
    }
}

pub(crate) struct TcpClient(pub(crate) TcpStream, pub(crate) [u8; 64]);

impl Client for TcpClient {
    fn call(&mut self) -> BenchFuture<'_> {
        Box::pin(async move {
            self.0.write_all(&PAYLOAD).await.expect("tcp write");
            self.0.read_exact(&mut self.1).await.expect("tcp read");
        })
    }
}

pub(crate) struct HttpClient(
    pub(crate) hyper::client::conn::http1::SendRequest<http_body_util::Full<Bytes>>,
);

impl Client for HttpClient {
    fn call(&mut self) -> BenchFuture<'_> {
        Box::pin(async move {
            use http_body_util::BodyExt;
            let req = hyper::Request::post("/echo")
                .header("host", "127.0.0.1")
                .body(http_body_util::Full::new(Bytes::from_static(&PAYLOAD)))
                .expect("request");
            self.0.ready().await.expect("http connection ready");
            let resp = self.0.send_request(req).await.expect("http answer");
            let body = resp
                .into_body()
                .collect()
                .await
                .expect("http body")
                .to_bytes();
            assert_eq!(body.len(), 64);
        })
    }
}

pub(crate) struct QuicClient(pub(crate) quinn::Connection);

impl Client for QuicClient {
    fn call(&mut self) -> BenchFuture<'_> {
        Box::pin(async move {
            let (mut send, mut recv) = self.0.open_bi().await.expect("quic stream");
            send.write_all(&PAYLOAD).await.expect("quic write");
            send.finish().expect("quic finish");
            let back = recv.read_to_end(1024).await.expect("quic read");
            assert_eq!(back.len(), 64);
        })
    }
}

// ----- servers -------------------------------------------------------------------------------

pub(crate) async fn mesh_pair() -> (MeshNode, MeshNode) {
    let registry = Registry::memory();
    let server = mesh_node(&registry).await;
    let client = mesh_node(&registry).await;
    (server, client)
}

pub(crate) async fn mesh_node(registry: &Registry) -> MeshNode {
    MeshNode::builder()
        .registry(registry.clone())
        .prefix("mesh-bench")
        .bind("127.0.0.1:0")
        .config(|c| c.max_message_size = 32 << 20)
        .on_raw(
            ECHO,
            |b: Bytes, _| async move { Ok::<_, HandlerError>(Some(b)) },
        )
        .on_raw(
            SINK,
            |_: Bytes, _| async move { Ok::<_, HandlerError>(None) },
        )
        .serve(|m: Echo64, _| async move { Ok::<_, HandlerError>(m) })
        .on_request(ECHO_SERDE, |m: Echo64, _| async move {
            Ok::<_, HandlerError>(m)
        })
        .start()
        .await
        .expect("mesh node")
}

pub(crate) async fn udp_echo() -> SocketAddr {
    let s = UdpSocket::bind("127.0.0.1:0").await.expect("udp");
    let addr = s.local_addr().expect("addr");
    tokio::spawn(async move {
        let mut buf = [0u8; 2048];
        while let Ok((n, from)) = s.recv_from(&mut buf).await {
            let _ = s.send_to(&buf[..n], from).await;
        }
    });
    addr
}

pub(crate) async fn tcp_echo() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("tcp");
    let addr = l.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let _ = s.set_nodelay(true);
            tokio::spawn(async move {
                let mut buf = [0u8; 64];
                while s.read_exact(&mut buf).await.is_ok() {
                    if s.write_all(&buf).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

pub(crate) async fn http_echo() -> SocketAddr {
    http_echo_on("127.0.0.1".parse().expect("an address")).await
}

/// An HTTP/1.1 server on `bind` that answers each request with its body.
pub(crate) async fn http_echo_on(bind: std::net::IpAddr) -> SocketAddr {
    let l = TcpListener::bind((bind, 0)).await.expect("tcp");
    let addr = l.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            let _ = s.set_nodelay(true);
            tokio::spawn(async move {
                let service = hyper::service::service_fn(
                    |req: hyper::Request<hyper::body::Incoming>| async move {
                        use http_body_util::BodyExt;
                        let body = req.into_body().collect().await?.to_bytes();
                        Ok::<_, hyper::Error>(hyper::Response::new(http_body_util::Full::new(body)))
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(s), service)
                    .await;
            });
        }
    });
    addr
}

pub(crate) async fn http_client(addr: SocketAddr) -> HttpClient {
    let s = TcpStream::connect(addr).await.expect("connect");
    s.set_nodelay(true).expect("nodelay");
    let (sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(s))
        .await
        .expect("handshake");
    tokio::spawn(conn);
    HttpClient(sender)
}

pub(crate) fn quic_configs() -> (quinn::ServerConfig, quinn::ClientConfig) {
    let (server, der) = quic_server_config();
    (server, quic_client_config(der))
}

fn quic_transport() -> Arc<quinn::TransportConfig> {
    let mut transport = quinn::TransportConfig::default();
    transport.max_concurrent_bidi_streams(1024u32.into());
    transport.max_concurrent_uni_streams(1024u32.into());
    Arc::new(transport)
}

/// A server configuration with a fresh self-signed certificate, and that certificate (DER).
pub(crate) fn quic_server_config() -> (quinn::ServerConfig, Vec<u8>) {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).expect("cert");
    let der = cert.cert.der().to_vec();
    let key = rustls::pki_types::PrivatePkcs8KeyDer::from(cert.signing_key.serialize_der());
    let mut server = quinn::ServerConfig::with_single_cert(
        vec![rustls::pki_types::CertificateDer::from(der.clone())],
        key.into(),
    )
    .expect("server config");
    server.transport_config(quic_transport());
    (server, der)
}

/// A client configuration that trusts the certificate `der`.
pub(crate) fn quic_client_config(der: Vec<u8>) -> quinn::ClientConfig {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(rustls::pki_types::CertificateDer::from(der))
        .expect("root");
    let mut client =
        quinn::ClientConfig::with_root_certificates(Arc::new(roots)).expect("client config");
    client.transport_config(quic_transport());
    client
}

/// A QUIC server that echoes each bidirectional stream and drains each unidirectional one,
/// counting the bytes.
pub(crate) async fn quic_server(received: Arc<AtomicU64>) -> (SocketAddr, quinn::ClientConfig) {
    let (sc, cc) = quic_configs();
    let addr = quic_serve(sc, "127.0.0.1:0".parse().expect("addr"), received);
    (addr, cc)
}

/// Serves `sc` on `bind`: echoes each bidirectional stream, drains and counts each
/// unidirectional one.
pub(crate) fn quic_serve(
    sc: quinn::ServerConfig,
    bind: SocketAddr,
    received: Arc<AtomicU64>,
) -> SocketAddr {
    let ep = quinn::Endpoint::server(sc, bind).expect("quic server");
    let addr = ep.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Some(incoming) = ep.accept().await {
            let received = received.clone();
            tokio::spawn(async move {
                let Ok(conn) = incoming.await else { return };
                loop {
                    tokio::select! {
                        bi = conn.accept_bi() => {
                            let Ok((mut send, mut recv)) = bi else { return };
                            tokio::spawn(async move {
                                if let Ok(data) = recv.read_to_end(1 << 20).await {
                                    let _ = send.write_all(&data).await;
                                    let _ = send.finish();
                                }
                            });
                        }
                        uni = conn.accept_uni() => {
                            let Ok(mut recv) = uni else { return };
                            let received = received.clone();
                            tokio::spawn(async move {
                                if let Ok(data) = recv.read_to_end(64 << 20).await {
                                    received.fetch_add(data.len() as u64, Ordering::Relaxed);
                                }
                            });
                        }
                    }
                }
            });
        }
    });
    addr
}

pub(crate) async fn quic_client(addr: SocketAddr, cc: quinn::ClientConfig) -> quinn::Connection {
    let local: SocketAddr = if addr.is_ipv4() {
        "0.0.0.0:0".parse().expect("addr")
    } else {
        "[::]:0".parse().expect("addr")
    };
    let mut ep = quinn::Endpoint::client(local).expect("quic client");
    ep.set_default_client_config(cc);
    ep.connect(addr, "localhost")
        .expect("connect")
        .await
        .expect("quic handshake")
}

// ----- runners -------------------------------------------------------------------------------

/// Runs every client in a loop until `slice` is over; the latency of each call.
pub(crate) async fn run_clients(clients: &mut [Box<dyn Client>], slice: Duration) -> Vec<Duration> {
    let deadline = Instant::now() + slice;
    let loops = clients.iter_mut().map(|c| async move {
        let mut l = Vec::new();
        while Instant::now() < deadline {
            let t = Instant::now();
            c.call().await;
            l.push(t.elapsed());
        }
        l
    });
    let all = join_all(loops).await;
    all.into_iter().flatten().collect()
}

pub(crate) type Factory = Pin<Box<dyn Future<Output = Vec<Box<dyn Client>>> + Send>>;
