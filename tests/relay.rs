//! The media proxy on loopback: real gRPC, real UDP sockets as phones.
//!
//! Each test runs its own proxy on a block of ports of its own (`testkit::ports`: nothing
//! to number by hand), so tests run in parallel.

use std::time::Duration;

use mediaproxy::config::MediaOptions;
use proto::v1 as pb;
use tests::{Phone, TestProxy, call, eventually, g711, local, media_of, pcmu_media};
use tokio_stream::StreamExt;

const WAIT: Duration = Duration::from_millis(500);
const CALLER: pb::Leg = pb::Leg::Caller;
const CALLEE: pb::Leg = pb::Leg::Callee;

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
