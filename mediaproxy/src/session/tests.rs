use super::*;
use crate::rtp::build_rtp;
use crate::types::Codec;

const CALLER_SDP: &str = "10.0.0.7:17616";
const CALLEE_SDP: &str = "10.1.1.4:16004";

fn addr(text: &str) -> SocketAddr {
    text.parse().unwrap()
}

fn remote(text: &str) -> RemoteMedia {
    let rtp = addr(text);
    RemoteMedia {
        index: 0,
        target: RemoteTarget::Address {
            rtp,
            rtcp: SocketAddr::new(rtp.ip(), rtp.port() + 1),
        },
        codecs: Vec::new(),
        direction: Direction::SendRecv,
        signaling_ip: None,
    }
}

fn rtp_at(leg: Leg) -> SocketRef {
    SocketRef {
        leg,
        media: 0,
        component: Component::Rtp,
    }
}

fn session(now: Instant) -> Session {
    let mut s = Session::new(
        CallId::parse("call-1").unwrap(),
        Owner::parse("sig-1").unwrap(),
        WallClock::now(),
        Timing::default(),
        now,
    );
    s.add_media(Leg::Caller, MediaKind::Audio, 30000);
    s.add_media(Leg::Callee, MediaKind::Audio, 30002);
    s
}

fn started(now: Instant) -> Session {
    let mut s = session(now);
    s.update(now, Leg::Caller, &[remote(CALLER_SDP)]).unwrap();
    s.update(now, Leg::Callee, &[remote(CALLEE_SDP)]).unwrap();
    s
}

fn packet(seq: u16) -> Vec<u8> {
    build_rtp(0, seq, u32::from(seq) * 160, 0x1234, &[0xff; 160])
}

#[test]
fn socket_refs_round_trip_through_their_index() {
    for index in 0..SOCKETS_PER_SESSION {
        assert_eq!(SocketRef::from_index(index).unwrap().index(), index);
    }
    assert!(SocketRef::from_index(SOCKETS_PER_SESSION).is_none());
    // Every socket of a media line, of both legs, sits in one run of four.
    for media in 0..MAX_MEDIA {
        let mut indexes: Vec<usize> = Leg::BOTH
            .iter()
            .flat_map(|&leg| {
                [Component::Rtp, Component::Rtcp].map(|component| {
                    SocketRef {
                        leg,
                        media,
                        component,
                    }
                    .index()
                })
            })
            .collect();
        indexes.sort_unstable();
        assert_eq!(indexes, (media * 4..media * 4 + 4).collect::<Vec<_>>());
    }
}

#[test]
fn packets_before_the_update_are_dropped_and_counted() {
    let now = Instant::now();
    let mut s = session(now);
    let verdict = s.handle_packet(now, rtp_at(Leg::Caller), addr(CALLER_SDP), &packet(1));
    assert_eq!(verdict, Verdict::Drop(DropReason::BeforeLatching));
    let snap = s.snapshot();
    assert_eq!(
        snap.legs[0].media[0].drops[DropReason::BeforeLatching.index()],
        1
    );
}

#[test]
fn relays_to_the_other_legs_sdp_address_until_it_latches() {
    let now = Instant::now();
    let mut s = started(now);
    let verdict = s.handle_packet(now, rtp_at(Leg::Caller), addr(CALLER_SDP), &packet(1));
    assert_eq!(
        verdict,
        Verdict::Forward {
            via: rtp_at(Leg::Callee),
            to: addr(CALLEE_SDP),
            rtcp: false
        }
    );
    // The callee answers from a NAT-rewritten source: it latches there.
    let nat = addr("198.51.100.9:4000");
    let verdict = s.handle_packet(now, rtp_at(Leg::Callee), nat, &packet(1));
    assert!(matches!(verdict, Verdict::Forward { to, .. } if to == addr(CALLER_SDP)));
    let verdict = s.handle_packet(now, rtp_at(Leg::Caller), addr(CALLER_SDP), &packet(2));
    assert!(matches!(verdict, Verdict::Forward { to, .. } if to == nat));
    let kinds: Vec<_> = std::iter::from_fn(|| s.poll_event())
        .map(|e| e.kind)
        .collect();
    assert_eq!(
        kinds,
        vec![
            EventKind::FirstPacket {
                source: addr(CALLER_SDP),
                sdp: Some(addr(CALLER_SDP)),
                rtcp: false
            },
            EventKind::FirstPacket {
                source: nat,
                sdp: Some(addr(CALLEE_SDP)),
                rtcp: false
            },
        ]
    );
}

#[test]
fn a_better_source_wins_inside_the_window_and_strangers_lose_after_it() {
    let now = Instant::now();
    let mut s = started(now);
    let stranger = addr("203.0.113.66:9999");
    // A stranger hits first: latched provisionally (rank 0).
    assert!(matches!(
        s.handle_packet(now, rtp_at(Leg::Caller), stranger, &packet(1)),
        Verdict::Forward { .. }
    ));
    // The real phone (exact SDP match) takes over inside the window.
    let t1 = now + Duration::from_millis(500);
    assert!(matches!(
        s.handle_packet(t1, rtp_at(Leg::Caller), addr(CALLER_SDP), &packet(2)),
        Verdict::Forward { .. }
    ));
    // The stranger is now refused, in and after the window.
    assert_eq!(
        s.handle_packet(t1, rtp_at(Leg::Caller), stranger, &packet(3)),
        Verdict::Drop(DropReason::UnknownSource)
    );
    let t2 = now + Duration::from_secs(5);
    let other = addr("10.0.0.7:5555");
    assert_eq!(
        s.handle_packet(t2, rtp_at(Leg::Caller), other, &packet(4)),
        Verdict::Drop(DropReason::UnknownSource)
    );
    let snap = s.snapshot();
    let media = &snap.legs[0].media[0];
    assert_eq!(media.latched_rtp, Some(addr(CALLER_SDP)));
    assert_eq!(media.source_changes, 1);
    assert_eq!(media.drops[DropReason::UnknownSource.index()], 2);
    assert_eq!(media.rtp_received.packets, 2);
}

#[test]
fn a_worse_source_cannot_take_over_and_a_late_one_cannot_either() {
    let now = Instant::now();
    let mut s = started(now);
    let nat = addr("10.0.0.7:40000"); // same IP as SDP, port rewritten: rank 2
    s.handle_packet(now, rtp_at(Leg::Caller), nat, &packet(1));
    let stranger = addr("192.0.2.1:17616"); // same port only: rank 1
    assert_eq!(
        s.handle_packet(now, rtp_at(Leg::Caller), stranger, &packet(2)),
        Verdict::Drop(DropReason::UnknownSource)
    );
    // Exact match after the window: too late, refused.
    let late = now + Duration::from_secs(4);
    assert_eq!(
        s.handle_packet(late, rtp_at(Leg::Caller), addr(CALLER_SDP), &packet(3)),
        Verdict::Drop(DropReason::UnknownSource)
    );
}

#[test]
fn a_stranger_spraying_before_the_phone_cannot_keep_the_port_when_the_phone_comes() {
    let now = Instant::now();
    let mut s = started(now);
    // Before the caller's first packet a stranger sprays its port; it is a guess (rank
    // 0) and is relayed, as a phone behind an address-changing NAT would be.
    let stranger = addr("203.0.113.66:4444");
    assert!(matches!(
        s.handle_packet(now, rtp_at(Leg::Caller), stranger, &packet(1)),
        Verdict::Forward { .. }
    ));
    // The phone answers late, long after the window: from its SDP address it takes over.
    let late = now + Duration::from_secs(10);
    assert!(matches!(
        s.handle_packet(late, rtp_at(Leg::Caller), addr(CALLER_SDP), &packet(2)),
        Verdict::Forward { .. }
    ));
    // From then on the stranger is refused and counted, and cannot come back.
    for seq in 3..6 {
        assert_eq!(
            s.handle_packet(late, rtp_at(Leg::Caller), stranger, &packet(seq)),
            Verdict::Drop(DropReason::UnknownSource)
        );
    }
    let snap = s.snapshot();
    let media = &snap.legs[0].media[0];
    assert_eq!(media.latched_rtp, Some(addr(CALLER_SDP)));
    assert_eq!(media.drops[DropReason::UnknownSource.index()], 3);
    // A phone at the SDP's address with a NAT-rewritten port (rank 2) wins the same way.
    let mut s = started(now);
    s.handle_packet(now, rtp_at(Leg::Caller), stranger, &packet(1));
    let nat = addr("10.0.0.7:40000");
    assert!(matches!(
        s.handle_packet(late, rtp_at(Leg::Caller), nat, &packet(2)),
        Verdict::Forward { .. }
    ));
    assert_eq!(s.snapshot().legs[0].media[0].latched_rtp, Some(nat));
}

#[test]
fn a_natted_phone_is_known_by_its_signaling_address_and_beats_an_earlier_stranger() {
    let now = Instant::now();
    let mut s = session(now);
    // The caller's SDP names its private address; its SIP came from its NAT's public one.
    let mut private = remote("192.168.1.20:4000");
    private.signaling_ip = Some("198.51.100.7".parse().unwrap());
    s.update(now, Leg::Caller, &[private]).unwrap();
    s.update(now, Leg::Callee, &[remote(CALLEE_SDP)]).unwrap();
    let stranger = addr("203.0.113.66:4444");
    s.handle_packet(now, rtp_at(Leg::Caller), stranger, &packet(1));
    // Its media comes from the public address with a port the NAT chose, seconds later.
    let phone = addr("198.51.100.7:61000");
    let late = now + Duration::from_secs(10);
    assert!(matches!(
        s.handle_packet(late, rtp_at(Leg::Caller), phone, &packet(2)),
        Verdict::Forward { .. }
    ));
    assert_eq!(
        s.handle_packet(late, rtp_at(Leg::Caller), stranger, &packet(3)),
        Verdict::Drop(DropReason::UnknownSource)
    );
    assert_eq!(s.snapshot().legs[0].media[0].latched_rtp, Some(phone));
    // Without the signaling address both are guesses: the first keeps the port after
    // the window (what the proxy cannot tell apart, it does not switch).
    let mut s = session(now);
    s.update(now, Leg::Caller, &[remote("192.168.1.20:4000")])
        .unwrap();
    s.update(now, Leg::Callee, &[remote(CALLEE_SDP)]).unwrap();
    s.handle_packet(now, rtp_at(Leg::Caller), stranger, &packet(1));
    assert_eq!(
        s.handle_packet(late, rtp_at(Leg::Caller), phone, &packet(2)),
        Verdict::Drop(DropReason::UnknownSource)
    );
}

#[test]
fn an_update_reopens_the_window_for_a_moved_phone() {
    let now = Instant::now();
    let mut s = started(now);
    s.handle_packet(now, rtp_at(Leg::Caller), addr(CALLER_SDP), &packet(1));
    let later = now + Duration::from_secs(30);
    let moved = addr("198.51.100.20:6000");
    assert_eq!(
        s.handle_packet(later, rtp_at(Leg::Caller), moved, &packet(2)),
        Verdict::Drop(DropReason::UnknownSource)
    );
    s.update(later, Leg::Caller, &[remote(CALLER_SDP)]).unwrap();
    assert!(matches!(
        s.handle_packet(later, rtp_at(Leg::Caller), moved, &packet(3)),
        Verdict::Forward { .. }
    ));
    assert_eq!(s.snapshot().legs[0].media[0].latched_rtp, Some(moved));
}

#[test]
fn hold_stops_sending_to_the_held_leg_and_malformed_input_is_counted() {
    let now = Instant::now();
    let mut s = started(now);
    let mut hold = remote(CALLEE_SDP);
    hold.target = RemoteTarget::Hold;
    hold.direction = Direction::Inactive;
    s.update(now, Leg::Callee, &[hold]).unwrap();
    assert_eq!(
        s.handle_packet(now, rtp_at(Leg::Caller), addr(CALLER_SDP), &packet(1)),
        Verdict::Drop(DropReason::NoDestination)
    );
    assert_eq!(
        s.handle_packet(now, rtp_at(Leg::Caller), addr(CALLER_SDP), &[0x80, 0]),
        Verdict::Drop(DropReason::TooShort)
    );
    assert_eq!(
        s.handle_packet(now, rtp_at(Leg::Caller), addr(CALLER_SDP), &[0u8; 20]),
        Verdict::Drop(DropReason::NotRtp)
    );
    let drops = s.snapshot().legs[0].media[0].drops;
    assert_eq!(drops[DropReason::NoDestination.index()], 1);
    assert_eq!(drops[DropReason::TooShort.index()], 1);
    assert_eq!(drops[DropReason::NotRtp.index()], 1);
}

#[test]
fn rtcp_follows_multiplexing_of_the_receiving_leg() {
    let now = Instant::now();
    let mut s = started(now);
    let rr = [0x80, 201, 0, 1, 0, 0, 0, 1];
    let rtcp_at = SocketRef {
        leg: Leg::Caller,
        media: 0,
        component: Component::Rtcp,
    };
    let caller_rtcp = addr("10.0.0.7:17617");
    let verdict = s.handle_packet(now, rtcp_at, caller_rtcp, &rr);
    let callee_rtcp = addr("10.1.1.4:16005");
    assert_eq!(
        verdict,
        Verdict::Forward {
            via: SocketRef {
                leg: Leg::Callee,
                media: 0,
                component: Component::Rtcp
            },
            to: callee_rtcp,
            rtcp: true
        }
    );
    // The callee switches to rtcp-mux: RTCP now goes to its RTP port via the RTP socket.
    let mut mux = remote(CALLEE_SDP);
    mux.target = RemoteTarget::Address {
        rtp: addr(CALLEE_SDP),
        rtcp: addr(CALLEE_SDP),
    };
    s.update(now, Leg::Callee, &[mux]).unwrap();
    let verdict = s.handle_packet(now, rtcp_at, caller_rtcp, &rr);
    assert_eq!(
        verdict,
        Verdict::Forward {
            via: rtp_at(Leg::Callee),
            to: addr(CALLEE_SDP),
            rtcp: true
        }
    );
    assert_eq!(s.snapshot().legs[0].media[0].rtcp_received.packets, 2);
}

#[test]
fn media_timeout_and_one_way_detection() {
    let now = Instant::now();
    let mut s = started(now);
    let timing = Timing::default();
    for i in 0..20u16 {
        let t = now + Duration::from_millis(u64::from(i) * 600);
        s.handle_packet(t, rtp_at(Leg::Caller), addr(CALLER_SDP), &packet(i));
        assert_eq!(s.poll_timers(t), None);
    }
    let events: Vec<_> = std::iter::from_fn(|| s.poll_event()).collect();
    let one_way: Vec<_> = events
        .iter()
        .filter(|e| matches!(e.kind, EventKind::OneWayMedia { .. }))
        .collect();
    assert_eq!(one_way.len(), 1, "{events:?}");
    assert_eq!(one_way[0].leg, Leg::Callee);
    let last = now + Duration::from_millis(19 * 600);
    assert_eq!(
        s.poll_timers(last + timing.media_timeout - Duration::from_millis(1)),
        None
    );
    let expired = s.poll_timers(last + timing.media_timeout);
    assert_eq!(
        expired,
        Some(Expired {
            idle: timing.media_timeout
        })
    );
    // Reported once.
    assert_eq!(s.poll_timers(last + timing.media_timeout * 2), None);
}

#[test]
fn hold_uses_the_longer_timeout() {
    let now = Instant::now();
    let mut s = started(now);
    let mut hold = remote(CALLEE_SDP);
    hold.direction = Direction::Inactive;
    s.update(now, Leg::Callee, &[hold]).unwrap();
    let timing = Timing::default();
    assert_eq!(s.poll_timers(now + timing.media_timeout), None);
    assert!(s.poll_timers(now + timing.hold_timeout).is_some());
}

#[test]
fn sequence_quality_reaches_the_snapshot() {
    let now = Instant::now();
    let mut s = started(now);
    for seq in [1u16, 2, 4, 3, 3, 7] {
        s.handle_packet(now, rtp_at(Leg::Caller), addr(CALLER_SDP), &packet(seq));
    }
    let q = s.snapshot().legs[0].media[0].quality;
    assert_eq!(
        (q.expected, q.lost, q.duplicates, q.out_of_order),
        (7, 2, 1, 1)
    );
}

#[test]
fn jitter_uses_the_sdp_clock_rate_and_ignores_telephone_events() {
    let start = Instant::now();
    let mut s = session(start);
    let mut caller = remote(CALLER_SDP);
    caller.codecs = vec![
        Codec {
            payload_type: 96,
            encoding: "opus".into(),
            clock_rate: 48000,
            channels: 2,
        },
        Codec {
            payload_type: 101,
            encoding: "telephone-event".into(),
            clock_rate: 8000,
            channels: 1,
        },
    ];
    s.update(start, Leg::Caller, &[caller]).unwrap();
    s.update(start, Leg::Callee, &[remote(CALLEE_SDP)]).unwrap();
    let jitter = |s: &Session| s.snapshot().legs[0].media[0].quality.jitter_ms;
    // Opus every 20 ms (960 units at 48 kHz), one packet 10 ms late: A.8 gives 10/16 ms.
    for (seq, late_ms) in [(1u16, 0u64), (2, 0), (3, 10)] {
        let at = start + Duration::from_millis(20 * u64::from(seq) + late_ms);
        let rtp = build_rtp(96, seq, u32::from(seq) * 960, 0x1234, &[0; 80]);
        s.handle_packet(at, rtp_at(Leg::Caller), addr(CALLER_SDP), &rtp);
    }
    assert!((jitter(&s) - 0.625).abs() < 1e-6, "{}", jitter(&s));
    // DTMF events repeat one timestamp for the whole key press: no jitter from them.
    for seq in 4u16..10 {
        let at = start + Duration::from_millis(20 * u64::from(seq));
        let rtp = build_rtp(101, seq, 7777, 0x1234, &[0; 4]);
        s.handle_packet(at, rtp_at(Leg::Caller), addr(CALLER_SDP), &rtp);
    }
    assert!((jitter(&s) - 0.625).abs() < 1e-6, "{}", jitter(&s));
}

#[test]
fn a_new_sdp_for_the_same_payload_type_changes_its_clock_rate() {
    let start = Instant::now();
    let mut s = session(start);
    let codec = |encoding: &str, clock_rate| Codec {
        payload_type: 96,
        encoding: encoding.into(),
        clock_rate,
        channels: 1,
    };
    let mut caller = remote(CALLER_SDP);
    caller.codecs = vec![codec("telephone-event", 8000)];
    s.update(start, Leg::Caller, &[caller.clone()]).unwrap();
    s.update(start, Leg::Callee, &[remote(CALLEE_SDP)]).unwrap();
    let jitter = |s: &Session| s.snapshot().legs[0].media[0].quality.jitter_ms;
    let send = |s: &mut Session, seq: u16, late_ms: u64| {
        let at = start + Duration::from_millis(20 * u64::from(seq) + late_ms);
        let rtp = build_rtp(96, seq, u32::from(seq) * 960, 0x1234, &[0; 80]);
        s.handle_packet(at, rtp_at(Leg::Caller), addr(CALLER_SDP), &rtp);
    };
    // As telephone-event, payload type 96 is not judged for jitter, however late.
    for (seq, late_ms) in [(1, 0), (2, 0), (3, 10)] {
        send(&mut s, seq, late_ms);
    }
    assert_eq!(jitter(&s), 0.0);
    // A re-INVITE makes 96 Opus at 48 kHz: the rate the packet path remembered for 96 is
    // forgotten, and the same lateness now counts.
    caller.codecs = vec![codec("opus", 48000)];
    s.update(start, Leg::Caller, &[caller]).unwrap();
    for (seq, late_ms) in [(4, 0), (5, 0), (6, 10)] {
        send(&mut s, seq, late_ms);
    }
    assert!((jitter(&s) - 0.625).abs() < 1e-6, "{}", jitter(&s));
}

#[test]
fn update_errors_name_what_is_missing() {
    let now = Instant::now();
    let mut s = session(now);
    let mut far = remote(CALLER_SDP);
    far.index = 3;
    assert_eq!(
        s.update(now, Leg::Caller, &[far]),
        Err(UpdateError::MediaNotAllocated {
            leg: "caller",
            index: 3,
            allocated: 1
        })
    );
    let mut lone = Session::new(
        CallId::parse("c").unwrap(),
        Owner::parse("o").unwrap(),
        WallClock::now(),
        Timing::default(),
        now,
    );
    assert_eq!(
        lone.update(now, Leg::Callee, &[]),
        Err(UpdateError::LegNotAllocated("callee"))
    );
}
