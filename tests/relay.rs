//! The media proxy on loopback: real gRPC, real UDP sockets as phones.
//!
//! Each test runs its own proxy on a block of ports of its own (`testkit::ports`: nothing
//! to number by hand), so tests run in parallel.

use std::time::Duration;

use mediaproxy::config::MediaOptions;
use proto::v1 as pb;
use tests::{
    Phone, PortBlock, TestProxy, eventually, g711, local, media_of, metric_value, pcmu_media,
};
use tokio_stream::StreamExt;

const WAIT: Duration = Duration::from_millis(500);
const CALLER: pb::Leg = pb::Leg::Caller;
const CALLEE: pb::Leg = pb::Leg::Callee;

/// A call with both legs allocated and pointed at two phones.
struct Call {
    caller: Phone,
    callee: Phone,
    /// Proxy address the caller sends to (caller leg).
    to_caller_leg: std::net::SocketAddr,
    /// Proxy address the callee sends to (callee leg).
    to_callee_leg: std::net::SocketAddr,
}

async fn call(proxy: &mut TestProxy, id: &str) -> Call {
    let caller = Phone::new().await;
    let callee = Phone::new().await;
    let a = proxy.allocate(id, CALLER, 1).await;
    let b = proxy.allocate(id, CALLEE, 1).await;
    proxy.update(id, CALLER, caller.addr(), None).await;
    proxy.update(id, CALLEE, callee.addr(), None).await;
    Call {
        caller,
        callee,
        to_caller_leg: local(&a, false),
        to_callee_leg: local(&b, false),
    }
}

#[tokio::test]
async fn two_legs_relay_both_ways_with_exact_counts() {
    let mut proxy = TestProxy::start(20, MediaOptions::default()).await;
    let c = call(&mut proxy, "call-both-ways").await;
    for seq in 0..50 {
        c.caller.send(c.to_caller_leg, &g711(seq, 0xaaaa)).await;
    }
    for seq in 0..40 {
        c.callee.send(c.to_callee_leg, &g711(seq, 0xbbbb)).await;
    }
    let at_callee = c.callee.receive(50, WAIT).await;
    let at_caller = c.caller.receive(40, WAIT).await;
    assert_eq!(at_callee.len(), 50);
    assert_eq!(at_caller.len(), 40);
    // Symmetric: each phone hears from the address it sends to, packets are unchanged.
    assert!(at_callee.iter().all(|(_, from)| *from == c.to_callee_leg));
    assert!(at_caller.iter().all(|(_, from)| *from == c.to_caller_leg));
    assert_eq!(at_callee[7].0, g711(7, 0xaaaa));

    let stats = proxy.stats("call-both-ways").await;
    let caller = media_of(&stats, CALLER);
    let callee = media_of(&stats, CALLEE);
    let rx = caller.rtp_received.unwrap();
    assert_eq!((rx.packets, rx.bytes), (50, 50 * 172));
    assert_eq!(callee.rtp_received.unwrap().packets, 40);
    assert_eq!(caller.rtp_sent.unwrap().packets, 40);
    assert_eq!(callee.rtp_sent.unwrap().bytes, 50 * 172);
    assert_eq!(caller.latched_rtp_source, c.caller.addr().to_string());
    assert_eq!(caller.sdp_rtp_address, c.caller.addr().to_string());
    assert!(rx.first_unix_ms > 0 && rx.last_unix_ms >= rx.first_unix_ms);
    let quality = caller.quality.unwrap();
    assert_eq!(
        (quality.expected, quality.lost, quality.ssrc),
        (50, 0, 0xaaaa)
    );

    let released = proxy.release("call-both-ways").await;
    assert!(!released.already_released);
    assert_eq!(released.release_reason, "released");
    let final_stats = released.stats.unwrap();
    assert!(final_stats.released_unix_ms > 0);
    assert_eq!(
        media_of(&final_stats, CALLER).rtp_received.unwrap().packets,
        50
    );
    // A retried release (lost reply) answers the same final statistics.
    let again = proxy.release("call-both-ways").await;
    assert!(again.already_released);
    assert_eq!(again.release_reason, "released");
    assert_eq!(again.stats.unwrap(), final_stats);
    // Kept compact: one tombstone, its encoded answer and bookkeeping under 1 KiB.
    assert_eq!(proxy.metric("mediaproxy_tombstones", &[]).await, Some(1.0));
    let kept = proxy
        .metric("mediaproxy_tombstone_bytes", &[])
        .await
        .unwrap();
    assert!(kept > 100.0 && kept < 1024.0, "{kept}");
    // The ports are closed: nothing is relayed any more.
    c.caller.send(c.to_caller_leg, &g711(99, 0xaaaa)).await;
    c.callee.expect_silence(Duration::from_millis(200)).await;
    proxy.shutdown().await;
}

#[tokio::test]
async fn a_burst_larger_than_a_batch_and_the_read_budget_arrives_whole_and_in_order() {
    let mut proxy = TestProxy::start(20, MediaOptions::default()).await;
    let c = call(&mut proxy, "call-burst").await;
    // Back to back, so the proxy finds many datagrams queued on one socket: several
    // recvmmsg batches and a revisit after the per-socket read budget.
    for seq in 0..120 {
        c.caller.send(c.to_caller_leg, &g711(seq, 0xcccc)).await;
    }
    let at_callee = c.callee.receive(120, WAIT).await;
    assert_eq!(at_callee.len(), 120);
    for (seq, (packet, _)) in at_callee.iter().enumerate() {
        assert_eq!(packet, &g711(seq as u16, 0xcccc), "packet {seq}");
    }
    let stats = proxy.stats("call-burst").await;
    assert_eq!(media_of(&stats, CALLER).rtp_received.unwrap().packets, 120);
    assert_eq!(media_of(&stats, CALLEE).rtp_sent.unwrap().packets, 120);
    proxy.shutdown().await;
}

#[tokio::test]
async fn latches_a_nat_rewritten_source_in_the_window_and_refuses_a_late_stranger() {
    let media = MediaOptions {
        latch_window: Some("400ms".parse().unwrap()),
        ..MediaOptions::default()
    };
    let mut proxy = TestProxy::start(20, media).await;
    let mut events = proxy.events("", "call-nat").await;
    // The caller's SDP names an address it never sends from (its private side of a NAT).
    let sdp_only = Phone::new().await;
    let nat = Phone::new().await;
    let callee = Phone::new().await;
    let a = proxy.allocate("call-nat", CALLER, 1).await;
    let b = proxy.allocate("call-nat", CALLEE, 1).await;
    proxy
        .update("call-nat", CALLER, sdp_only.addr(), None)
        .await;
    proxy.update("call-nat", CALLEE, callee.addr(), None).await;

    nat.send(local(&a, false), &g711(1, 1)).await;
    assert_eq!(callee.receive(1, WAIT).await.len(), 1);
    // Media for the caller now goes to the latched NAT address, not to the SDP address.
    callee.send(local(&b, false), &g711(1, 2)).await;
    assert_eq!(nat.receive(1, WAIT).await.len(), 1);
    sdp_only.expect_silence(Duration::from_millis(100)).await;

    let first = tokio::time::timeout(WAIT, events.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let Some(pb::event::Kind::FirstPacket(first_packet)) = first.kind else {
        panic!("expected first packet, got {first:?}");
    };
    assert_eq!(first.leg, CALLER as i32);
    assert_eq!(first_packet.source, nat.addr().to_string());
    assert_eq!(first_packet.sdp_address, sdp_only.addr().to_string());
    assert!(!first_packet.matches_sdp);

    // After the window a stranger cannot take the stream over.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let stranger = Phone::new().await;
    for seq in 0..5 {
        stranger.send(local(&a, false), &g711(seq, 666)).await;
    }
    callee.expect_silence(Duration::from_millis(200)).await;
    // Nor is it answered: the relay sends only where SDP or latching pointed (no reflector).
    callee.send(local(&b, false), &g711(3, 2)).await;
    assert_eq!(nat.receive(1, WAIT).await.len(), 1);
    stranger.expect_silence(Duration::from_millis(100)).await;
    nat.send(local(&a, false), &g711(2, 1)).await;
    assert_eq!(callee.receive(1, WAIT).await.len(), 1);
    let caller = media_of(&proxy.stats("call-nat").await, CALLER).clone();
    assert_eq!(caller.latched_rtp_source, nat.addr().to_string());
    assert_eq!(caller.drops.unwrap().unknown_source, 5);
    assert_eq!(caller.rtp_received.unwrap().packets, 2);
    let dropped = eventually(Duration::from_secs(2), || async {
        proxy
            .metric(
                "mediaproxy_packets_dropped_total",
                &[("reason", "unknown_source")],
            )
            .await
            .filter(|v| *v == 5.0)
    })
    .await;
    assert_eq!(dropped, Some(5.0));
    proxy.shutdown().await;
}

#[tokio::test]
async fn rtcp_is_relayed_between_the_rtcp_ports() {
    let mut proxy = TestProxy::start(20, MediaOptions::default()).await;
    let caller_rtp = Phone::new().await;
    let caller_rtcp = Phone::new().await;
    let callee_rtp = Phone::new().await;
    let callee_rtcp = Phone::new().await;
    let a = proxy.allocate("call-rtcp", CALLER, 1).await;
    let b = proxy.allocate("call-rtcp", CALLEE, 1).await;
    proxy
        .update(
            "call-rtcp",
            CALLER,
            caller_rtp.addr(),
            Some(caller_rtcp.addr()),
        )
        .await;
    proxy
        .update(
            "call-rtcp",
            CALLEE,
            callee_rtp.addr(),
            Some(callee_rtcp.addr()),
        )
        .await;
    let receiver_report = [
        0x81, 201, 0, 7, 0, 0, 0, 1, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
        0, 0, 0,
    ];
    caller_rtcp.send(local(&a, true), &receiver_report).await;
    let got = callee_rtcp.receive(1, WAIT).await;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].0, receiver_report);
    assert_eq!(got[0].1, local(&b, true));
    callee_rtp.expect_silence(Duration::from_millis(100)).await;
    let stats = proxy.stats("call-rtcp").await;
    let caller = media_of(&stats, CALLER);
    assert_eq!(caller.rtcp_received.unwrap().packets, 1);
    assert_eq!(caller.rtp_received.unwrap().packets, 0);
    assert_eq!(caller.latched_rtcp_source, caller_rtcp.addr().to_string());
    assert_eq!(media_of(&stats, CALLEE).rtcp_sent.unwrap().packets, 1);
    proxy.shutdown().await;
}

#[tokio::test]
async fn loss_duplicates_reordering_and_jitter_from_crafted_sequences() {
    let mut proxy = TestProxy::start(20, MediaOptions::default()).await;
    let c = call(&mut proxy, "call-quality").await;
    for seq in [1u16, 2, 4, 3, 3, 7, 8, 10] {
        c.caller.send(c.to_caller_leg, &g711(seq, 42)).await;
    }
    assert_eq!(c.callee.receive(8, WAIT).await.len(), 8);
    let quality = media_of(&proxy.stats("call-quality").await, CALLER)
        .quality
        .unwrap();
    assert_eq!(quality.expected, 10);
    assert_eq!(quality.lost, 3, "5, 6 and 9 never came");
    assert_eq!(quality.duplicates, 1);
    assert_eq!(quality.out_of_order, 1);

    // 20 packets stamped 20 ms apart but sent back to back: each transit differs by 160
    // units, so the A.8 estimate climbs towards 20 ms (about 14 ms after 19 steps).
    for seq in 0..20u16 {
        c.callee.send(c.to_callee_leg, &g711(seq, 43)).await;
    }
    assert_eq!(c.caller.receive(20, WAIT).await.len(), 20);
    let quality = media_of(&proxy.stats("call-quality").await, CALLEE)
        .quality
        .unwrap();
    assert!(
        (8.0..20.0).contains(&quality.jitter_ms),
        "jitter {} ms",
        quality.jitter_ms
    );
    assert!(quality.max_jitter_ms >= quality.jitter_ms);
    proxy.shutdown().await;
}

#[tokio::test]
async fn media_timeout_releases_the_call_and_says_so() {
    let media = MediaOptions {
        media_timeout: Some("700ms".parse().unwrap()),
        ..MediaOptions::default()
    };
    let mut proxy = TestProxy::start(20, media).await;
    let mut events = proxy.events("", "").await;
    let _c = call(&mut proxy, "call-silent").await;
    let mut kinds = Vec::new();
    while kinds.len() < 2 {
        let event = tokio::time::timeout(Duration::from_secs(3), events.next())
            .await
            .expect("events arrive")
            .unwrap()
            .unwrap();
        assert_eq!(event.call_id, "call-silent");
        assert_eq!(event.owner, "owner-1");
        assert_eq!(event.node_id, "test-node");
        kinds.push(event.kind.unwrap());
    }
    assert!(matches!(kinds[0], pb::event::Kind::MediaTimeout(ref t) if t.idle_ms >= 700));
    assert!(matches!(kinds[1], pb::event::Kind::SessionReleased(ref r) if r.reason == "timeout"));
    // The owner's later release still gets the final statistics.
    let released = proxy.release("call-silent").await;
    assert!(released.already_released);
    assert_eq!(released.release_reason, "timeout");
    assert_eq!(
        proxy
            .metric(
                "mediaproxy_sessions_released_total",
                &[("reason", "timeout")]
            )
            .await,
        Some(1.0)
    );
    proxy.shutdown().await;
}

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
async fn reused_ports_carry_no_crosstalk_from_the_old_call() {
    let mut proxy = TestProxy::start(4, MediaOptions::default()).await;
    let old = call(&mut proxy, "call-old").await;
    proxy.release("call-old").await;
    // Late packets of the old call during the quarantine reach nobody: the port is closed.
    old.caller.send(old.to_caller_leg, &g711(50, 6)).await;
    old.callee.expect_silence(Duration::from_millis(100)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let new = call(&mut proxy, "call-new").await;
    // The range holds two pairs, so the new call has both again (in the pool's random
    // order).
    let mut reused = [new.to_caller_leg.port(), new.to_callee_leg.port()];
    let mut before = [old.to_caller_leg.port(), old.to_callee_leg.port()];
    reused.sort_unstable();
    before.sort_unstable();
    assert_eq!(reused, before, "the pairs were reused");
    new.caller.send(new.to_caller_leg, &g711(1, 7)).await;
    assert_eq!(new.callee.receive(1, WAIT).await.len(), 1);
    old.callee.expect_silence(Duration::from_millis(100)).await;
    let stats = proxy.stats("call-new").await;
    assert_eq!(media_of(&stats, CALLER).rtp_received.unwrap().packets, 1);
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
async fn many_calls_relay_at_once_without_crosstalk() {
    let mut proxy = TestProxy::start(400, MediaOptions::default()).await;
    let mut calls = Vec::new();
    for i in 0..40 {
        calls.push(call(&mut proxy, &format!("call-many-{i}")).await);
    }
    for round in 0..10u16 {
        for (i, c) in calls.iter().enumerate() {
            c.caller.send(c.to_caller_leg, &g711(round, i as u32)).await;
            c.callee
                .send(c.to_callee_leg, &g711(round, 1000 + i as u32))
                .await;
        }
    }
    for (i, c) in calls.iter().enumerate() {
        let at_callee = c.callee.receive(10, WAIT).await;
        let at_caller = c.caller.receive(10, WAIT).await;
        assert_eq!((at_callee.len(), at_caller.len()), (10, 10), "call {i}");
        // Each packet carries its call's SSRC: nothing crossed between calls.
        assert!(
            at_callee
                .iter()
                .all(|(p, _)| p[8..12] == (i as u32).to_be_bytes())
        );
        assert!(
            at_caller
                .iter()
                .all(|(p, _)| p[8..12] == (1000 + i as u32).to_be_bytes())
        );
    }
    let sessions = proxy
        .client
        .list_sessions(pb::ListSessionsRequest {
            owner: "owner-1".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .sessions;
    assert_eq!(sessions.len(), 40);
    assert!(
        sessions
            .iter()
            .all(|s| media_of(s, CALLER).rtp_received.unwrap().packets == 10)
    );
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

#[tokio::test]
async fn a_silent_leg_is_reported_as_one_way_media() {
    let media = MediaOptions {
        one_way_after: Some("400ms".parse().unwrap()),
        ..MediaOptions::default()
    };
    let mut proxy = TestProxy::start(20, media).await;
    let mut events = proxy.events("owner-1", "").await;
    let c = call(&mut proxy, "call-one-way").await;
    // The caller talks for a second; the callee never sends.
    for seq in 0..50 {
        c.caller.send(c.to_caller_leg, &g711(seq, 9)).await;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut one_way = Vec::new();
    while let Ok(Some(Ok(event))) =
        tokio::time::timeout(Duration::from_millis(300), events.next()).await
    {
        if let Some(pb::event::Kind::OneWayMedia(silence)) = event.kind {
            one_way.push((event.leg, silence.silent_ms));
        }
    }
    assert_eq!(one_way.len(), 1, "reported once: {one_way:?}");
    assert_eq!(one_way[0].0, CALLEE as i32, "the silent leg is the callee");
    assert!(one_way[0].1 >= 400);
    proxy.shutdown().await;
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

/// Every media line of a call is its own relay: three lines per leg (audio, video, audio),
/// RTP and RTCP on each, each line's packets reach only the same line of the other leg, out
/// of that line's own ports, and each line counts only its own.
#[tokio::test]
async fn each_media_line_relays_to_the_same_line_of_the_other_leg() {
    const LINES: usize = 3;
    let mut proxy = TestProxy::start(20, MediaOptions::default()).await;
    let kinds = [
        pb::MediaKind::Audio,
        pb::MediaKind::Video,
        pb::MediaKind::Audio,
    ];
    let mut allocations = Vec::new();
    let mut phones = Vec::new();
    for leg in [CALLER, CALLEE] {
        let allocation = proxy.allocate_kinds("call-lines", leg, &kinds).await;
        assert_eq!(allocation.media.len(), LINES);
        // One phone per line and component: [line] -> (rtp, rtcp).
        let mut leg_phones = Vec::new();
        for _ in 0..LINES {
            leg_phones.push((Phone::new().await, Phone::new().await));
        }
        let media = leg_phones
            .iter()
            .enumerate()
            .map(|(index, (rtp, rtcp))| pcmu_media(index as u32, rtp.addr(), Some(rtcp.addr())))
            .collect();
        proxy
            .client
            .update(pb::UpdateRequest {
                call_id: "call-lines".into(),
                leg: leg as i32,
                media,
                ..Default::default()
            })
            .await
            .unwrap();
        allocations.push(allocation);
        phones.push(leg_phones);
    }
    let port = |leg: usize, line: usize, rtcp: bool| {
        let media = &allocations[leg].media[line];
        let port = if rtcp {
            media.rtcp_port
        } else {
            media.rtp_port
        };
        std::net::SocketAddr::new(
            allocations[leg].advertised_address.parse().unwrap(),
            port as u16,
        )
    };
    let receiver_report = [
        0x81, 201, 0, 7, 0, 0, 0, 1, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
        0, 0, 0,
    ];
    // Line i: the caller sends 5 + i RTP packets with SSRC 0x100 + i and one RTCP report; the
    // callee answers 2 RTP packets with SSRC 0x200 + i.
    for (line, ((rtp, rtcp), (callee_rtp, _))) in phones[0].iter().zip(&phones[1]).enumerate() {
        for seq in 0..(5 + line as u16) {
            rtp.send(port(0, line, false), &g711(seq, 0x100 + line as u32))
                .await;
        }
        rtcp.send(port(0, line, true), &receiver_report).await;
        for seq in 0..2 {
            callee_rtp
                .send(port(1, line, false), &g711(seq, 0x200 + line as u32))
                .await;
        }
    }
    for (line, ((caller_rtp, caller_rtcp), (callee_rtp, callee_rtcp))) in
        phones[0].iter().zip(&phones[1]).enumerate()
    {
        let got = callee_rtp.receive(5 + line, WAIT).await;
        assert_eq!(got.len(), 5 + line, "line {line}");
        for (packet, from) in &got {
            assert_eq!(
                *from,
                port(1, line, false),
                "line {line} leaves by its own port"
            );
            assert_eq!(
                packet[8..12],
                (0x100 + line as u32).to_be_bytes(),
                "line {line}"
            );
        }
        let reports = callee_rtcp.receive(1, WAIT).await;
        assert_eq!(reports.len(), 1, "line {line}");
        assert_eq!(reports[0].1, port(1, line, true));
        let back = caller_rtp.receive(2, WAIT).await;
        assert_eq!(back.len(), 2, "line {line}");
        assert!(
            back.iter()
                .all(|(packet, from)| *from == port(0, line, false)
                    && packet[8..12] == (0x200 + line as u32).to_be_bytes())
        );
        caller_rtcp.expect_silence(Duration::from_millis(50)).await;
    }
    for (callee_rtp, _) in &phones[1] {
        callee_rtp.expect_silence(Duration::from_millis(50)).await;
    }
    let stats = proxy.stats("call-lines").await;
    let leg = |leg: pb::Leg| {
        &stats
            .legs
            .iter()
            .find(|l| l.leg == leg as i32)
            .expect("leg present")
            .media
    };
    for line in 0..LINES {
        let caller = &leg(CALLER)[line];
        let callee = &leg(CALLEE)[line];
        assert_eq!(caller.rtp_received.unwrap().packets, 5 + line as u64);
        assert_eq!(caller.rtcp_received.unwrap().packets, 1);
        assert_eq!(caller.rtp_sent.unwrap().packets, 2);
        assert_eq!(callee.rtp_sent.unwrap().packets, 5 + line as u64);
        assert_eq!(callee.rtcp_sent.unwrap().packets, 1);
        assert_eq!(callee.rtp_received.unwrap().packets, 2);
        assert_eq!(caller.quality.unwrap().ssrc, 0x100 + line as u32);
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
