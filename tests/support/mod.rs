//! Helpers for the workspace integration tests: a real media proxy on loopback ports, a real
//! tonic client, UDP "phones", and a tiny HTTP client for `/metrics`.

use std::net::SocketAddr;
use std::time::Duration;

use mediaproxy::config::{Config, MediaOptions, Options};
use mediaproxy::server::MediaProxy;
use proto::v1 as pb;
use proto::v1::media_proxy_client::MediaProxyClient;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UdpSocket;
use tonic::transport::Channel;

pub use mediaproxy::rtp::build_rtp;
pub use testkit::{PortBlock, eventually_async as eventually, metric_value};

/// A media proxy started in this process on ephemeral gRPC and metrics ports.
pub struct TestProxy {
    /// The relay's ports.
    pub ports: PortBlock,
    pub grpc: SocketAddr,
    pub metrics: SocketAddr,
    pub client: MediaProxyClient<Channel>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl TestProxy {
    /// Starts a proxy relaying on a block of `ports` ports of its own (see
    /// [`testkit::ports`]: tests run in parallel processes), with `media` overriding other
    /// media options.
    pub async fn start(ports: u16, media: MediaOptions) -> Self {
        Self::start_on(PortBlock::take(ports), media).await
    }

    /// Like [`TestProxy::start`], on a block the test took itself (to hold one of its ports
    /// first, say).
    pub async fn start_on(ports: PortBlock, media: MediaOptions) -> Self {
        let options = Options {
            grpc: Some("127.0.0.1:0".parse().unwrap()),
            metrics: Some("127.0.0.1:0".parse().unwrap()),
            node_id: Some("test-node".into()),
            shutdown_grace: Some("1s".parse().unwrap()),
            media: MediaOptions {
                ports: Some(ports.range_arg().parse().unwrap()),
                workers: media.workers.or(Some(2)),
                port_quarantine: media.port_quarantine.or(Some("200ms".parse().unwrap())),
                ..media
            },
            ..Options::default()
        };
        let config = Config::resolve(options, Options::default()).expect("valid test config");
        let proxy = MediaProxy::bind(&config).await.expect("proxy binds");
        let grpc = proxy.grpc_addr();
        let metrics = proxy.metrics_addr();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            proxy
                .serve(async {
                    let _ = stopped.await;
                })
                .await
                .expect("proxy serves");
        });
        let client = MediaProxyClient::connect(format!("http://{grpc}"))
            .await
            .expect("gRPC connects");
        Self {
            ports,
            grpc,
            metrics,
            client,
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// Triggers the graceful shutdown and waits for it.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.expect("proxy task ends cleanly");
        }
    }

    pub async fn allocate(
        &mut self,
        call: &str,
        leg: pb::Leg,
        media: usize,
    ) -> pb::AllocateResponse {
        self.try_allocate(call, leg, "owner-1", media)
            .await
            .expect("allocate succeeds")
    }

    pub async fn try_allocate(
        &mut self,
        call: &str,
        leg: pb::Leg,
        owner: &str,
        media: usize,
    ) -> Result<pb::AllocateResponse, tonic::Status> {
        let kinds = vec![pb::MediaKind::Audio; media];
        self.allocate_request(call, leg, owner, &kinds).await
    }

    /// Allocates a leg (owner `owner-1`) with one media line per kind, in order.
    pub async fn allocate_kinds(
        &mut self,
        call: &str,
        leg: pb::Leg,
        kinds: &[pb::MediaKind],
    ) -> pb::AllocateResponse {
        self.allocate_request(call, leg, "owner-1", kinds)
            .await
            .expect("allocate succeeds")
    }

    async fn allocate_request(
        &mut self,
        call: &str,
        leg: pb::Leg,
        owner: &str,
        kinds: &[pb::MediaKind],
    ) -> Result<pb::AllocateResponse, tonic::Status> {
        self.client
            .allocate(pb::AllocateRequest {
                call_id: call.into(),
                leg: leg as i32,
                owner: owner.into(),
                media: kinds.iter().map(|&kind| kind as i32).collect(),
                lease_timeout_ms: 0,
                reflect: false,
            })
            .await
            .map(tonic::Response::into_inner)
    }

    /// Points a leg's first media line at `rtp` (RTCP on `rtcp`, or rtp + 1 when None).
    pub async fn update(
        &mut self,
        call: &str,
        leg: pb::Leg,
        rtp: SocketAddr,
        rtcp: Option<SocketAddr>,
    ) {
        self.client
            .update(pb::UpdateRequest {
                call_id: call.into(),
                leg: leg as i32,
                media: vec![pcmu_media(0, rtp, rtcp)],
                ..Default::default()
            })
            .await
            .expect("update succeeds");
    }

    /// Opens a `WatchEvents` stream (empty filters: everything).
    pub async fn events(&mut self, owner: &str, call: &str) -> tonic::Streaming<pb::Event> {
        self.client
            .watch_events(pb::WatchEventsRequest {
                owner: owner.into(),
                call_id: call.into(),
            })
            .await
            .expect("event stream opens")
            .into_inner()
    }

    pub async fn stats(&mut self, call: &str) -> pb::CallStats {
        self.client
            .query_stats(pb::QueryStatsRequest {
                call_id: call.into(),
            })
            .await
            .expect("query succeeds")
            .into_inner()
    }

    pub async fn release(&mut self, call: &str) -> pb::ReleaseResponse {
        self.client
            .release(pb::ReleaseRequest {
                call_id: call.into(),
                reason: "test".into(),
            })
            .await
            .expect("release succeeds")
            .into_inner()
    }

    /// GETs a path of the metrics endpoint; returns (status code, body).
    pub async fn http_get(&self, path: &str) -> (u16, String) {
        http_get(self.metrics, path).await
    }

    /// The value of one sample line of `/metrics`, e.g.
    /// `metric("mediaproxy_packets_total", &[("direction", "caller_to_callee")])`.
    pub async fn metric(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let (_, body) = self.http_get("/metrics").await;
        metric_value(&body, name, labels)
    }
}

impl Drop for TestProxy {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// A phone's media line `index` in an `Update`: PCMU, send and receive, RTP at `rtp`, RTCP at
/// `rtcp` (none: RTP port + 1).
pub fn pcmu_media(index: u32, rtp: SocketAddr, rtcp: Option<SocketAddr>) -> pb::RemoteMedia {
    pb::RemoteMedia {
        index,
        address: rtp.ip().to_string(),
        rtp_port: u32::from(rtp.port()),
        rtcp_port: rtcp.map_or(0, |a| u32::from(a.port())),
        codecs: vec![pb::Codec {
            payload_type: 0,
            encoding: "PCMU".into(),
            clock_rate: 8000,
            channels: 1,
        }],
        direction: pb::Direction::Sendrecv as i32,
    }
}

/// A minimal HTTP/1.0 GET.
pub async fn http_get(address: SocketAddr, path: &str) -> (u16, String) {
    let mut stream = tokio::net::TcpStream::connect(address)
        .await
        .expect("HTTP connects");
    let request = format!("GET {path} HTTP/1.0\r\nHost: {address}\r\n\r\n");
    stream
        .write_all(request.as_bytes())
        .await
        .expect("HTTP request");
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .await
        .expect("HTTP response");
    let status = response
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or(0);
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// A UDP endpoint standing in for a phone's RTP (or RTCP) socket.
pub struct Phone {
    pub socket: UdpSocket,
}

impl Phone {
    pub async fn new() -> Self {
        Self {
            socket: UdpSocket::bind("127.0.0.1:0").await.expect("phone binds"),
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.socket.local_addr().unwrap()
    }

    pub async fn send(&self, to: SocketAddr, data: &[u8]) {
        self.socket.send_to(data, to).await.expect("phone sends");
    }

    /// Receives until `count` datagrams arrived or `wait` passed with nothing new.
    pub async fn receive(&self, count: usize, wait: Duration) -> Vec<(Vec<u8>, SocketAddr)> {
        let mut got = Vec::new();
        let mut buffer = vec![0u8; 2048];
        while got.len() < count {
            match tokio::time::timeout(wait, self.socket.recv_from(&mut buffer)).await {
                Ok(Ok((len, from))) => got.push((buffer[..len].to_vec(), from)),
                _ => break,
            }
        }
        got
    }

    /// Asserts nothing arrives within `wait`.
    pub async fn expect_silence(&self, wait: Duration) {
        let got = self.receive(1, wait).await;
        assert!(
            got.is_empty(),
            "expected no datagram, got {} from {}",
            got.len(),
            got[0].1
        );
    }
}

/// The proxy's address for one leg's first media line.
pub fn local(allocation: &pb::AllocateResponse, rtcp: bool) -> SocketAddr {
    let media = &allocation.media[0];
    let port = if rtcp {
        media.rtcp_port
    } else {
        media.rtp_port
    };
    SocketAddr::new(allocation.advertised_address.parse().unwrap(), port as u16)
}

/// A 172-byte G.711 packet (12 header + 160 payload).
pub fn g711(sequence: u16, ssrc: u32) -> Vec<u8> {
    build_rtp(0, sequence, u32::from(sequence) * 160, ssrc, &[0xd5; 160])
}

/// First media line of a leg in call statistics.
pub fn media_of(stats: &pb::CallStats, leg: pb::Leg) -> &pb::MediaStats {
    &stats
        .legs
        .iter()
        .find(|l| l.leg == leg as i32)
        .expect("leg present")
        .media[0]
}

/// A call with both legs allocated and pointed at two phones.
pub struct Call {
    pub caller: Phone,
    pub callee: Phone,
    /// Proxy address the caller sends to (caller leg).
    pub to_caller_leg: std::net::SocketAddr,
    /// Proxy address the callee sends to (callee leg).
    pub to_callee_leg: std::net::SocketAddr,
}

/// Allocates both legs of call `id` (one audio line each) and points them at two new
/// phones.
pub async fn call(proxy: &mut TestProxy, id: &str) -> Call {
    let caller = Phone::new().await;
    let callee = Phone::new().await;
    let a = proxy.allocate(id, pb::Leg::Caller, 1).await;
    let b = proxy.allocate(id, pb::Leg::Callee, 1).await;
    proxy.update(id, pb::Leg::Caller, caller.addr(), None).await;
    proxy.update(id, pb::Leg::Callee, callee.addr(), None).await;
    Call {
        caller,
        callee,
        to_caller_leg: local(&a, false),
        to_callee_leg: local(&b, false),
    }
}
