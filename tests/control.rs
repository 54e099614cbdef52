//! The media proxy's control plane on loopback, through real gRPC: leases, quotas and rate
//! limits, port exhaustion and quarantine, idempotent allocation, bad requests, metrics and
//! health, draining and shutdown, reflection. The relay's data path is `relay.rs`'s.
//!
//! Each test runs its own proxy on a block of ports of its own (`testkit::ports`), so tests
//! run in parallel.

use std::time::Duration;

use mediaproxy::config::MediaOptions;
use proto::v1 as pb;
use tests::{PortBlock, TestProxy, call, eventually, g711, media_of, metric_value};
use tokio_stream::StreamExt;

const WAIT: Duration = Duration::from_millis(500);
const CALLER: pb::Leg = pb::Leg::Caller;
const CALLEE: pb::Leg = pb::Leg::Callee;

#[tokio::test]
async fn an_owner_that_stops_renewing_loses_its_calls_and_one_that_renews_keeps_them() {
    let media = MediaOptions {
        lease_timeout: Some("800ms".parse().unwrap()),
        ..MediaOptions::default()
    };
    let mut proxy = TestProxy::start(20, media).await;
    proxy
        .try_allocate("call-lost", CALLER, "crashed-sig", 1)
        .await
        .unwrap();
    proxy
        .try_allocate("call-kept", CALLER, "live-sig", 1)
        .await
        .unwrap();
    for _ in 0..8 {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let lease = proxy
            .client
            .renew_lease(pb::RenewLeaseRequest {
                owner: "live-sig".into(),
                lease_timeout_ms: 0,
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(lease.sessions, 1);
        assert_eq!(lease.lease_timeout_ms, 800);
        assert!(!lease.instance_id.is_empty());
    }
    let lost = proxy.release("call-lost").await;
    assert!(lost.already_released);
    assert_eq!(lost.release_reason, "lease_expired");
    let kept = proxy.stats("call-kept").await;
    assert_eq!(kept.owner, "live-sig");
    assert_eq!(
        proxy
            .metric(
                "mediaproxy_sessions_released_total",
                &[("reason", "lease_expired")]
            )
            .await,
        Some(1.0)
    );
    proxy.shutdown().await;
}

#[tokio::test]
async fn exhaustion_is_refused_and_counted_and_ports_come_back_after_quarantine() {
    // Two pairs: one call with two legs fills the range.
    let media = MediaOptions {
        port_quarantine: Some("300ms".parse().unwrap()),
        ..MediaOptions::default()
    };
    let mut proxy = TestProxy::start(4, media).await;
    let a = proxy.allocate("call-a", CALLER, 1).await;
    proxy.allocate("call-a", CALLEE, 1).await;
    let refused = proxy
        .try_allocate("call-b", CALLER, "owner-1", 1)
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::ResourceExhausted);
    assert!(
        refused.message().contains(&proxy.ports.range_arg()),
        "{}",
        refused.message()
    );
    assert_eq!(
        proxy
            .metric(
                "mediaproxy_allocation_failures_total",
                &[("reason", "ports_exhausted")]
            )
            .await,
        Some(1.0)
    );
    assert_eq!(proxy.metric("mediaproxy_ports_free", &[]).await, Some(0.0));
    proxy.release("call-a").await;
    // Quarantined: not yet reusable.
    let early = proxy
        .try_allocate("call-b", CALLER, "owner-1", 1)
        .await
        .unwrap_err();
    assert_eq!(early.code(), tonic::Code::ResourceExhausted);
    tokio::time::sleep(Duration::from_millis(400)).await;
    let b = proxy.allocate("call-b", CALLER, 1).await;
    // Either freed pair (the pool draws at random).
    assert!(
        [proxy.ports.port(0), proxy.ports.port(2)].contains(&(b.media[0].rtp_port as u16)),
        "{} (call-a had {})",
        b.media[0].rtp_port,
        a.media[0].rtp_port
    );
    assert_eq!(
        proxy.metric("mediaproxy_ports_capacity", &[]).await,
        Some(4.0)
    );
    proxy.shutdown().await;
}

#[tokio::test]
async fn a_port_held_by_another_process_is_skipped_not_leaked() {
    let ports = PortBlock::take(4);
    let squatter = std::net::UdpSocket::bind(("127.0.0.1", ports.port(0))).unwrap();
    let mut proxy = TestProxy::start_on(ports, MediaOptions::default()).await;
    let first = proxy.allocate("call-skip", CALLER, 1).await;
    assert_eq!(first.media[0].rtp_port, u32::from(proxy.ports.port(2)));
    // The skipped pair is not lost: once the other process lets go it is handed out again.
    drop(squatter);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let second = proxy.allocate("call-skip-2", CALLER, 1).await;
    assert_eq!(second.media[0].rtp_port, u32::from(proxy.ports.port(0)));
    proxy.shutdown().await;
}

#[tokio::test]
async fn allocate_is_idempotent_and_extends_with_new_media_lines() {
    let mut proxy = TestProxy::start(20, MediaOptions::default()).await;
    let first = proxy.allocate("call-idem", CALLER, 1).await;
    let retry = proxy.allocate("call-idem", CALLER, 1).await;
    assert!(!first.existing);
    assert!(retry.existing);
    assert_eq!(first.media, retry.media);
    let video = proxy
        .allocate_kinds(
            "call-idem",
            CALLER,
            &[pb::MediaKind::Audio, pb::MediaKind::Video],
        )
        .await;
    assert_eq!(video.media.len(), 2);
    assert_eq!(video.media[0], first.media[0]);
    assert_eq!(video.media[1].kind, pb::MediaKind::Video as i32);
    assert_eq!(video.media[1].rtcp_port, video.media[1].rtp_port + 1);
    assert_eq!(video.media[1].rtp_port % 2, 0);
    // Another owner cannot take the call.
    let stolen = proxy
        .try_allocate("call-idem", CALLEE, "other", 1)
        .await
        .unwrap_err();
    assert_eq!(stolen.code(), tonic::Code::FailedPrecondition);
    proxy.shutdown().await;
}

#[tokio::test]
async fn bad_requests_get_clear_errors_and_bad_packets_are_counted_drops() {
    let mut proxy = TestProxy::start(20, MediaOptions::default()).await;
    let c = call(&mut proxy, "call-good").await;
    let bad_address = proxy
        .client
        .update(pb::UpdateRequest {
            call_id: "call-good".into(),
            leg: CALLER as i32,
            media: vec![pb::RemoteMedia {
                index: 0,
                address: "300.1.1.1".into(),
                rtp_port: 4000,
                ..Default::default()
            }],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(bad_address.code(), tonic::Code::InvalidArgument);
    assert!(
        bad_address.message().contains("media[0].address"),
        "{}",
        bad_address.message()
    );
    let bad_port = proxy
        .client
        .update(pb::UpdateRequest {
            call_id: "call-good".into(),
            leg: CALLER as i32,
            media: vec![pb::RemoteMedia {
                index: 0,
                address: "127.0.0.1".into(),
                rtp_port: 70000,
                ..Default::default()
            }],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert!(
        bad_port.message().contains("rtp_port"),
        "{}",
        bad_port.message()
    );
    let missing_media = proxy
        .client
        .update(pb::UpdateRequest {
            call_id: "call-good".into(),
            leg: CALLER as i32,
            media: vec![pb::RemoteMedia {
                index: 5,
                address: "127.0.0.1".into(),
                rtp_port: 4000,
                ..Default::default()
            }],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(missing_media.code(), tonic::Code::InvalidArgument);
    let unknown = proxy
        .client
        .query_stats(pb::QueryStatsRequest {
            call_id: "no-such-call".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), tonic::Code::NotFound);
    let no_leg = proxy
        .try_allocate("call-x", pb::Leg::Unspecified, "owner-1", 1)
        .await
        .unwrap_err();
    assert_eq!(no_leg.code(), tonic::Code::InvalidArgument);
    let no_id = proxy
        .try_allocate("", CALLER, "owner-1", 1)
        .await
        .unwrap_err();
    assert!(no_id.message().contains("call_id"), "{}", no_id.message());

    // Garbage from the phone: counted, not relayed, and the call keeps working.
    c.caller.send(c.to_caller_leg, &[0x80, 0x00, 0x01]).await;
    c.caller
        .send(c.to_caller_leg, b"\x00\x01\x00\x00STUN-ish")
        .await;
    c.caller.send(c.to_caller_leg, &g711(1, 5)).await;
    let got = c.callee.receive(2, Duration::from_millis(300)).await;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].0, g711(1, 5));
    let drops = media_of(&proxy.stats("call-good").await, CALLER)
        .drops
        .unwrap();
    assert_eq!((drops.too_short, drops.not_rtp), (1, 1));
    proxy.shutdown().await;
}

#[tokio::test]
async fn metrics_and_health_match_what_was_relayed() {
    let mut proxy = TestProxy::start(20, MediaOptions::default()).await;
    let c = call(&mut proxy, "call-metrics").await;
    for seq in 0..30 {
        c.caller.send(c.to_caller_leg, &g711(seq, 1)).await;
    }
    for seq in 0..20 {
        c.callee.send(c.to_callee_leg, &g711(seq, 2)).await;
    }
    assert_eq!(c.callee.receive(30, WAIT).await.len(), 30);
    assert_eq!(c.caller.receive(20, WAIT).await.len(), 20);
    let body = eventually(Duration::from_secs(2), || async {
        let (_, body) = proxy.http_get("/metrics").await;
        (metric_value(
            &body,
            "mediaproxy_packets_total",
            &[("direction", "callee_to_caller")],
        ) == Some(20.0))
        .then_some(body)
    })
    .await
    .expect("counters published");
    let value = |name: &str, labels: &[(&str, &str)]| metric_value(&body, name, labels);
    assert_eq!(
        value(
            "mediaproxy_packets_total",
            &[("direction", "caller_to_callee")]
        ),
        Some(30.0)
    );
    assert_eq!(
        value(
            "mediaproxy_bytes_total",
            &[("direction", "caller_to_callee")]
        ),
        Some(30.0 * 172.0)
    );
    assert_eq!(
        value(
            "mediaproxy_bytes_total",
            &[("direction", "callee_to_caller")]
        ),
        Some(20.0 * 172.0)
    );
    assert_eq!(value("mediaproxy_sessions", &[]), Some(1.0));
    assert_eq!(value("mediaproxy_ports_capacity", &[]), Some(20.0));
    assert_eq!(value("mediaproxy_ports_free", &[]), Some(16.0));
    assert_eq!(value("mediaproxy_recordings", &[]), Some(0.0));
    assert_eq!(
        value(
            "mediaproxy_packets_dropped_total",
            &[("reason", "unknown_source")]
        ),
        Some(0.0)
    );
    assert!(body.contains("mediaproxy_grpc_request_duration_seconds_bucket{method=\"allocate\""));
    assert!(body.contains("node=\"test-node\""));
    assert_eq!(proxy.http_get("/healthz").await, (200, "ok\n".to_owned()));
    proxy.shutdown().await;
}

#[tokio::test]
async fn draining_refuses_new_calls_and_keeps_relaying_existing_ones() {
    let mut proxy = TestProxy::start(20, MediaOptions::default()).await;
    let c = call(&mut proxy, "call-before-drain").await;
    let status = proxy
        .client
        .drain(pb::DrainRequest { drain: true })
        .await
        .unwrap()
        .into_inner();
    assert!(status.draining);
    assert_eq!(status.sessions, 1);
    assert_eq!(status.node_id, "test-node");
    assert_eq!(status.ports_total, 20);
    let refused = proxy
        .try_allocate("call-after-drain", CALLER, "owner-1", 1)
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unavailable);
    // A retried allocate of an existing call is still answered.
    proxy.allocate("call-before-drain", CALLER, 1).await;
    c.caller.send(c.to_caller_leg, &g711(1, 1)).await;
    assert_eq!(c.callee.receive(1, WAIT).await.len(), 1);
    assert_eq!(proxy.http_get("/healthz").await.0, 503);
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", proxy.grpc))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    use tonic_health::pb::health_check_response::ServingStatus;
    let mut status_of = async |service: &str| {
        health
            .check(tonic_health::pb::HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner()
            .status
    };
    // Draining is not ready (a readiness probe takes the node out of its Service), but the
    // process as a whole still serves (a liveness probe leaves it running).
    assert_eq!(
        status_of("mediaproxy.v1.MediaProxy").await,
        ServingStatus::NotServing as i32
    );
    assert_eq!(status_of("").await, ServingStatus::Serving as i32);
    let undrained = proxy
        .client
        .drain(pb::DrainRequest { drain: false })
        .await
        .unwrap()
        .into_inner();
    assert!(!undrained.draining);
    assert_eq!(
        status_of("mediaproxy.v1.MediaProxy").await,
        ServingStatus::Serving as i32
    );
    proxy.allocate("call-after-drain", CALLER, 1).await;
    proxy.shutdown().await;
}

#[tokio::test]
async fn shutdown_releases_what_is_left_after_the_grace() {
    let mut proxy = TestProxy::start(20, MediaOptions::default()).await;
    let _c = call(&mut proxy, "call-at-shutdown").await;
    let mut events = proxy.events("", "").await;
    proxy.shutdown().await;
    let mut released = None;
    while let Ok(Some(Ok(event))) =
        tokio::time::timeout(Duration::from_secs(3), events.next()).await
    {
        if let Some(pb::event::Kind::SessionReleased(r)) = event.kind {
            released = Some(r.reason);
        }
    }
    assert_eq!(released.as_deref(), Some("shutdown"));
}

/// Reflection answers in both versions, each listing the proxy's services: v1 for current
/// tools, v1alpha for the older grpcurl and grpcui, Postman and Evans, which ask only that.
#[tokio::test]
async fn reflection_lists_the_services_in_v1_and_v1alpha() {
    let proxy = TestProxy::start(20, MediaOptions::default()).await;
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", proxy.grpc))
        .unwrap()
        .connect()
        .await
        .unwrap();
    // The two versions' types differ only by module: one body for both.
    macro_rules! list_services {
        ($version:ident) => {{
            use tonic_reflection::pb::$version::ServerReflectionRequest;
            use tonic_reflection::pb::$version::server_reflection_client::ServerReflectionClient;
            use tonic_reflection::pb::$version::server_reflection_request::MessageRequest;
            use tonic_reflection::pb::$version::server_reflection_response::MessageResponse;
            let request = ServerReflectionRequest {
                host: String::new(),
                message_request: Some(MessageRequest::ListServices(String::new())),
            };
            let mut responses = ServerReflectionClient::new(channel.clone())
                .server_reflection_info(tokio_stream::once(request))
                .await
                .unwrap()
                .into_inner();
            let response = responses.next().await.unwrap().unwrap();
            let Some(MessageResponse::ListServicesResponse(list)) = response.message_response
            else {
                panic!("unexpected {} reflection answer", stringify!($version));
            };
            list.service.into_iter().map(|s| s.name).collect::<Vec<_>>()
        }};
    }
    let v1 = list_services!(v1);
    let v1alpha = list_services!(v1alpha);
    for names in [&v1, &v1alpha] {
        for service in ["mediaproxy.v1.MediaProxy", "grpc.health.v1.Health"] {
            assert!(
                names.contains(&service.to_owned()),
                "{service} not in {names:?}"
            );
        }
    }
    proxy.shutdown().await;
}

#[tokio::test]
async fn an_owner_past_its_quota_is_refused_new_calls_and_others_are_not() {
    let mut proxy = TestProxy::start(
        20,
        MediaOptions {
            max_sessions_per_owner: Some(2),
            ..MediaOptions::default()
        },
    )
    .await;
    proxy
        .try_allocate("quota-1", CALLER, "sig-a", 1)
        .await
        .unwrap();
    proxy
        .try_allocate("quota-2", CALLER, "sig-a", 1)
        .await
        .unwrap();
    let refused = proxy
        .try_allocate("quota-3", CALLER, "sig-a", 1)
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::ResourceExhausted);
    assert!(
        refused.message().contains("sig-a holds 2 calls")
            && refused.message().contains("--max-sessions-per-owner"),
        "{}",
        refused.message()
    );
    // The other leg of a call it holds is no new call; another owner has its own quota.
    proxy
        .try_allocate("quota-2", CALLEE, "sig-a", 1)
        .await
        .unwrap();
    proxy
        .try_allocate("quota-b", CALLER, "sig-b", 1)
        .await
        .unwrap();
    assert_eq!(
        proxy
            .metric(
                "mediaproxy_allocation_failures_total",
                &[("reason", "owner_quota")]
            )
            .await,
        Some(1.0)
    );
    // A released call frees a place.
    proxy.release("quota-1").await;
    proxy
        .try_allocate("quota-3", CALLER, "sig-a", 1)
        .await
        .unwrap();
    proxy.shutdown().await;
}

#[tokio::test]
async fn an_oversized_request_is_refused_before_it_is_read() {
    let mut proxy = TestProxy::start(10, MediaOptions::default()).await;
    let huge = "x".repeat(mediaproxy::server::MAX_REQUEST_BYTES);
    let refused = proxy
        .try_allocate(&huge, CALLER, "owner-1", 1)
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::OutOfRange, "{refused:?}");
    assert!(refused.message().contains("too large"), "{refused:?}");
    // The connection and the node go on serving.
    proxy.allocate("after-huge", CALLER, 1).await;
    proxy.shutdown().await;
}

#[tokio::test]
async fn a_client_past_its_rates_is_refused_and_others_are_not() {
    let mut proxy = TestProxy::start(
        20,
        MediaOptions {
            grpc_rate: Some(10),
            allocate_rate: Some(3),
            ..MediaOptions::default()
        },
    )
    .await;
    // A second's worth of allocations at once; the next is refused, naming the flag.
    for n in 0..3 {
        proxy
            .try_allocate(&format!("rate-{n}"), CALLER, "sig-a", 1)
            .await
            .unwrap();
    }
    let refused = proxy
        .try_allocate("rate-3", CALLER, "sig-a", 1)
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::ResourceExhausted);
    assert!(
        refused.message().contains("client 127.0.0.1")
            && refused.message().contains("--allocate-rate"),
        "{}",
        refused.message()
    );
    // Another client (another address) has a budget of its own.
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", proxy.grpc))
        .unwrap()
        .local_address(Some("127.0.0.2".parse().unwrap()))
        .connect()
        .await
        .unwrap();
    let mut other = pb::media_proxy_client::MediaProxyClient::new(channel.clone());
    other
        .allocate(pb::AllocateRequest {
            call_id: "rate-other".into(),
            leg: CALLER as i32,
            owner: "sig-b".into(),
            media: vec![pb::MediaKind::Audio as i32],
            ..pb::AllocateRequest::default()
        })
        .await
        .unwrap();
    // Any request: of a burst of 60 against 10 per second (4 already taken), what passes is
    // what was left plus what the burst's length refilled.
    let started = std::time::Instant::now();
    let mut passed = 0;
    let mut limited = 0;
    for _ in 0..60 {
        match proxy
            .client
            .list_sessions(pb::ListSessionsRequest {
                owner: "sig-a".into(),
            })
            .await
        {
            Ok(_) => passed += 1,
            Err(status) if status.code() == tonic::Code::ResourceExhausted => {
                assert!(status.message().contains("--grpc-rate"), "{status:?}");
                limited += 1;
            }
            Err(status) => panic!("{status:?}"),
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    let budget = 6 + (10.0 * elapsed).ceil() as u32;
    assert!(
        passed >= 6 && passed <= budget && limited >= 20,
        "{passed} passed, {limited} limited in {elapsed:.2} s"
    );
    // Health checks are never limited.
    let mut health = tonic_health::pb::health_client::HealthClient::new(
        tonic::transport::Endpoint::from_shared(format!("http://{}", proxy.grpc))
            .unwrap()
            .connect()
            .await
            .unwrap(),
    );
    health
        .check(tonic_health::pb::HealthCheckRequest::default())
        .await
        .unwrap();
    assert_eq!(
        proxy
            .metric(
                "mediaproxy_grpc_rate_limited_total",
                &[("kind", "allocation")]
            )
            .await,
        Some(1.0)
    );
    assert_eq!(
        proxy
            .metric("mediaproxy_grpc_rate_limited_total", &[("kind", "request")])
            .await,
        Some(f64::from(limited))
    );
    // A second later the budget is back.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    proxy
        .try_allocate("rate-3", CALLER, "sig-a", 1)
        .await
        .unwrap();
    proxy.shutdown().await;
}
