//! Media nodes gone wrong, beside a good one: what the pool does with a node that answers too
//! slowly, answers with what breaks the contract, or shows a certificate that expired or names
//! another host. The faulty node is a gRPC server written for these tests (a real media proxy
//! does not misbehave on purpose); the good node is the real media proxy, in process, and the
//! certificate cases use it too.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use proto::v1 as pb;
use proto::v1::media_proxy_server::{MediaProxy as Contract, MediaProxyServer};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::codegen::tokio_stream::{self, Stream};
use tonic::{Request, Response, Status};

use super::CallId;
use super::pool::{self, HealthReport, NodeState, Pool};
use super::{ClientTls, MediaClient, MediaError};
use crate::call::Input;

/// How the faulty node misbehaves.
#[derive(Debug, Clone, Copy)]
enum Fault {
    /// Every answer comes after this long.
    Slow(Duration),
    /// Status without an instance id and with more ports free than it has.
    MalformedStatus,
    /// Allocations answered with an odd RTP port.
    MalformedAllocation,
    /// A new process (another instance id) from the third status on: it restarted between
    /// two health checks, too fast to miss one, and knows none of its calls.
    Restarts,
}

/// The faulty node: a sane status (unless the fault is in it), and counts of what it got.
struct Faulty {
    fault: Fault,
    releases: Arc<AtomicUsize>,
    statuses: AtomicUsize,
}

type Stream_<T> = std::pin::Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

impl Faulty {
    async fn delay(&self) {
        if let Fault::Slow(delay) = self.fault {
            tokio::time::sleep(delay).await;
        }
    }
}

#[tonic::async_trait]
impl Contract for Faulty {
    async fn allocate(
        &self,
        request: Request<pb::AllocateRequest>,
    ) -> Result<Response<pb::AllocateResponse>, Status> {
        self.delay().await;
        let lines = request.into_inner().media.len();
        let port = match self.fault {
            Fault::MalformedAllocation => 40_001,
            _ => 40_000,
        };
        Ok(Response::new(pb::AllocateResponse {
            node_id: "faulty".into(),
            advertised_address: "127.0.0.1".into(),
            media: (0..lines)
                .map(|_| pb::LocalMedia {
                    rtp_port: port,
                    rtcp_port: port + 1,
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }))
    }

    async fn update(
        &self,
        _request: Request<pb::UpdateRequest>,
    ) -> Result<Response<pb::UpdateResponse>, Status> {
        self.delay().await;
        Ok(Response::new(pb::UpdateResponse::default()))
    }

    async fn release(
        &self,
        _request: Request<pb::ReleaseRequest>,
    ) -> Result<Response<pb::ReleaseResponse>, Status> {
        self.releases.fetch_add(1, Ordering::SeqCst);
        Ok(Response::new(pb::ReleaseResponse::default()))
    }

    async fn query_stats(
        &self,
        _request: Request<pb::QueryStatsRequest>,
    ) -> Result<Response<pb::CallStats>, Status> {
        Err(Status::not_found("no such call"))
    }

    async fn list_sessions(
        &self,
        _request: Request<pb::ListSessionsRequest>,
    ) -> Result<Response<pb::ListSessionsResponse>, Status> {
        self.delay().await;
        Ok(Response::new(pb::ListSessionsResponse::default()))
    }

    async fn renew_lease(
        &self,
        _request: Request<pb::RenewLeaseRequest>,
    ) -> Result<Response<pb::RenewLeaseResponse>, Status> {
        self.delay().await;
        Ok(Response::new(pb::RenewLeaseResponse::default()))
    }

    async fn start_recording(
        &self,
        _request: Request<pb::StartRecordingRequest>,
    ) -> Result<Response<pb::RecordingState>, Status> {
        Err(Status::unimplemented("not here"))
    }

    async fn pause_recording(
        &self,
        _request: Request<pb::RecordingControlRequest>,
    ) -> Result<Response<pb::RecordingState>, Status> {
        Err(Status::unimplemented("not here"))
    }

    async fn stop_recording(
        &self,
        _request: Request<pb::RecordingControlRequest>,
    ) -> Result<Response<pb::RecordingState>, Status> {
        Err(Status::unimplemented("not here"))
    }

    type WatchEventsStream = Stream_<pb::Event>;

    async fn watch_events(
        &self,
        _request: Request<pb::WatchEventsRequest>,
    ) -> Result<Response<Self::WatchEventsStream>, Status> {
        Ok(Response::new(Box::pin(tokio_stream::pending())))
    }

    type TapAudioStream = Stream_<pb::AudioFrame>;

    async fn tap_audio(
        &self,
        _request: Request<pb::TapAudioRequest>,
    ) -> Result<Response<Self::TapAudioStream>, Status> {
        Err(Status::unimplemented("not here"))
    }

    async fn status(
        &self,
        _request: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::StatusResponse>, Status> {
        self.delay().await;
        let malformed = matches!(self.fault, Fault::MalformedStatus);
        let restarted = matches!(self.fault, Fault::Restarts)
            && self.statuses.fetch_add(1, Ordering::SeqCst) >= 2;
        Ok(Response::new(pb::StatusResponse {
            node_id: "faulty".into(),
            instance_id: match (malformed, restarted) {
                (true, _) => String::new(),
                (false, true) => "i-2".into(),
                (false, false) => "i-1".into(),
            },
            ports_total: 10_000,
            // Far more headroom than the good node: placement tries it first.
            ports_free: if malformed { 20_000 } else { 10_000 },
            advertised_address: "127.0.0.1".into(),
            ..Default::default()
        }))
    }

    async fn drain(
        &self,
        _request: Request<pb::DrainRequest>,
    ) -> Result<Response<pb::StatusResponse>, Status> {
        Err(Status::unimplemented("not here"))
    }

    async fn set_debug(
        &self,
        _request: Request<pb::SetDebugRequest>,
    ) -> Result<Response<pb::SetDebugResponse>, Status> {
        Err(Status::unimplemented("not here"))
    }
}

/// Serves a faulty node on loopback until the test ends; its URL and release count.
async fn faulty(fault: Fault) -> (String, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let releases = Arc::new(AtomicUsize::new(0));
    let node = Faulty {
        fault,
        releases: releases.clone(),
        statuses: AtomicUsize::new(0),
    };
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(MediaProxyServer::new(node))
            .serve_with_incoming(
                tonic::codegen::tokio_stream::wrappers::TcpListenerStream::new(listener),
            ),
    );
    (url, releases)
}

/// A real media proxy in process (node id `good`, 20 ports from `first_port`), with `tls`.
async fn good(first_port: u16, tls: Option<mediaproxy::config::TlsFiles>) -> String {
    let media = mediaproxy::config::MediaOptions {
        ports: Some(mediaproxy::config::PortRange {
            min: first_port,
            max: first_port + 19,
        }),
        ..Default::default()
    }
    .resolve()
    .unwrap();
    let grpc = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let metrics = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let proxy = mediaproxy::server::MediaProxy::with_listeners(
        "good",
        &media,
        Duration::from_secs(1),
        grpc,
        metrics,
    )
    .unwrap()
    .with_tls(tls);
    let url = format!("http://{}", proxy.grpc_addr());
    tokio::spawn(proxy.serve(std::future::pending()));
    url
}

fn pool(urls: &[String], tls: Option<ClientTls>) -> Pool {
    let durations =
        prometheus::HistogramVec::new(prometheus::HistogramOpts::new("t", "t"), &["method"])
            .unwrap();
    Pool::new(urls, "faults-test", &durations, tls).unwrap()
}

struct Quiet;

impl HealthReport for Quiet {
    fn state(&self, _node: &str, _up: bool) {}
}

/// Watches every node of `pool` until the returned token is cancelled.
fn watch_all(pool: &Pool) -> (CancellationToken, tokio::sync::mpsc::Receiver<Input>) {
    let stop = CancellationToken::new();
    let (inputs, lost) = tokio::sync::mpsc::channel(16);
    for node in pool.nodes() {
        tokio::spawn(pool::watch(node, inputs.clone(), Quiet, stop.clone()));
    }
    (stop, lost)
}

fn state_of(pool: &Pool, url: &str) -> NodeState {
    pool.node(&url.into()).unwrap().health().state
}

async fn wait_state(pool: &Pool, url: &str, state: NodeState) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while state_of(pool, url) != state {
        assert!(Instant::now() < deadline, "{url} never {state:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

const OFFER: &str = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_node_is_marked_down_within_a_second_and_calls_go_to_the_good_one() {
    let (slow, _) = faulty(Fault::Slow(Duration::from_secs(3))).await;
    let good = good(22_200, None).await;
    let pool = pool(&[slow.clone(), good.clone()], None);
    let (stop, _lost) = watch_all(&pool);
    wait_state(&pool, &good, NodeState::Up).await;
    let started = Instant::now();
    wait_state(&pool, &slow, NodeState::Down).await;
    assert!(
        started.elapsed() < Duration::from_millis(1500),
        "two missed checks of 0.5 s"
    );
    // A call placed now does not wait for the slow node.
    let offer = crate::sdp::parse(OFFER).unwrap();
    let placing = Instant::now();
    let plan = pool
        .place(
            &CallId::parse("slow-1").unwrap(),
            &offer,
            proto::domain::Leg::Caller,
            false,
        )
        .await
        .unwrap();
    assert_eq!(plan.node, "good");
    assert!(placing.elapsed() < Duration::from_millis(500));
    stop.cancel();
}

/// Found by the soak test: with the machine's CPU taken by other work, the embedded proxy
/// (in the same process) answered two health checks late, was declared lost, and its calls
/// were ended. A node in this process lives and dies with it: late answers are not a loss.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_embedded_proxy_answering_late_is_never_declared_lost() {
    let (slow, _) = faulty(Fault::Slow(Duration::from_secs(3))).await;
    let pool = pool(std::slice::from_ref(&slow), None).in_process();
    let (stop, mut lost) = watch_all(&pool);
    tokio::time::sleep(Duration::from_millis(1600)).await;
    assert_ne!(state_of(&pool, &slow), NodeState::Down);
    assert!(
        pool.node(&slow.as_str().into()).unwrap().health().misses >= 2,
        "the checks did miss"
    );
    assert!(lost.try_recv().is_err(), "nobody was told it was lost");
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_status_counts_as_a_missed_check() {
    let (broken, _) = faulty(Fault::MalformedStatus).await;
    let client = MediaClient::new(&broken, "faults-test", None).unwrap();
    let error = client.status().await.unwrap_err();
    assert!(
        matches!(&error, MediaError::Failed(m) if m.contains("malformed status") && m.contains("no instance id")),
        "{error}"
    );
    let pool = pool(std::slice::from_ref(&broken), None);
    let (stop, _lost) = watch_all(&pool);
    tokio::time::sleep(Duration::from_millis(1600)).await;
    assert_eq!(state_of(&pool, &broken), NodeState::Down, "never up");
    assert!(pool.node(&broken.as_str().into()).unwrap().health().misses >= 2);
    assert!(pool.candidates(None).is_empty(), "no call goes to it");
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_allocation_moves_the_call_to_the_next_node_and_releases_the_first() {
    let (broken, releases) = faulty(Fault::MalformedAllocation).await;
    let good = good(22_220, None).await;
    let pool = pool(&[broken.clone(), good.clone()], None);
    let (stop, _lost) = watch_all(&pool);
    wait_state(&pool, &broken, NodeState::Up).await;
    wait_state(&pool, &good, NodeState::Up).await;
    let candidates: Vec<String> = pool
        .candidates(None)
        .iter()
        .map(|n| n.endpoint().to_string())
        .collect();
    assert_eq!(candidates[0], broken, "the broken node looks best");
    let offer = crate::sdp::parse(OFFER).unwrap();
    let plan = pool
        .place(
            &CallId::parse("odd-1").unwrap(),
            &offer,
            proto::domain::Leg::Caller,
            false,
        )
        .await
        .unwrap();
    assert_eq!(plan.node, "good");
    assert_eq!(plan.caller_ports.len(), 1);
    assert_eq!(plan.caller_ports[0] % 2, 0);
    let deadline = Instant::now() + Duration::from_secs(2);
    while releases.load(Ordering::SeqCst) == 0 {
        assert!(
            Instant::now() < deadline,
            "what the broken node gave was not released"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.cancel();
}

/// A CA's files, a node's server certificate for `names` (expired if `expired`) and a client
/// certificate, in a fresh folder (kept as long as the returned [`testkit::Pki`], since the
/// TLS settings watch their files); the node's and the client's TLS settings.
fn certificates(
    test: &str,
    names: &[&str],
    expired: bool,
) -> (testkit::Pki, mediaproxy::config::TlsFiles, ClientTls) {
    let pki = testkit::Pki::new(&format!("signaling-faults-{test}"));
    let node = pki.ca().leaf("node").names(names);
    pki.write("node", if expired { node.expired() } else { node }.sign());
    pki.write("client", pki.ca().leaf("client").sign());
    let file = |name: &str| std::path::PathBuf::from(pki.path(name));
    let server =
        mediaproxy::config::TlsFiles::read(&file("node.pem"), &file("node.key"), &file("ca.pem"))
            .unwrap();
    let client =
        ClientTls::read(&file("ca.pem"), &file("client.pem"), &file("client.key")).unwrap();
    (pki, server, client)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_certificate_that_expired_or_names_another_host_is_refused_with_the_reason() {
    for (test, names, expired, port, reason) in [
        ("expired", ["127.0.0.1"], true, 22_240, "expired"),
        (
            "misnamed",
            ["10.9.9.9"],
            false,
            22_260,
            "not valid for name",
        ),
    ] {
        let (_pki, server, client) = certificates(test, &names, expired);
        let url = good(port, Some(server))
            .await
            .replace("http://", "https://");
        let node = MediaClient::new(&url, "faults-test", Some(&client)).unwrap();
        let error = node.status().await.unwrap_err();
        assert!(
            matches!(error, MediaError::Unavailable(_)),
            "{test}: {error}"
        );
        assert!(
            error.to_string().to_lowercase().contains(reason),
            "{test}: the reason is in the error (and so in `media node down`): {error}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_restarted_between_two_checks_is_reported_lost_at_once() {
    let (node, _) = faulty(Fault::Restarts).await;
    let pool = pool(std::slice::from_ref(&node), None);
    let (stop, mut inputs) = watch_all(&pool);
    let lost = tokio::time::timeout(Duration::from_secs(3), async {
        loop {
            match inputs.recv().await {
                Some(Input::MediaNodeLost { endpoint, reason }) => break (endpoint, reason),
                Some(_) => {}
                None => panic!("the watch ended"),
            }
        }
    })
    .await
    .expect("the restart was reported");
    assert_eq!(
        lost,
        (
            node.as_str().into(),
            "restarted without its calls".to_owned()
        )
    );
    assert_eq!(
        state_of(&pool, &node),
        NodeState::Up,
        "it answers: up, new calls may go"
    );
    stop.cancel();
}
