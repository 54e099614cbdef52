//! Entry points for the fuzz targets in `fuzz/` (`cargo fuzz`): what the relay reads of a
//! datagram from anyone, and what the gRPC server converts from a client's request. Not an
//! API; public only so the fuzz crate can reach these paths.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use prost::Message as _;
use proto::v1 as pb;

use crate::session::{Component, Session, SocketRef, Timing, Verdict};
use crate::types::{
    CallId, Codec, Direction, Leg, MediaKind, Owner, RemoteMedia, RemoteTarget, WallClock,
};

fn remote(rtp: SocketAddr) -> RemoteMedia {
    RemoteMedia {
        index: 0,
        target: RemoteTarget::Address {
            rtp,
            rtcp: SocketAddr::new(rtp.ip(), rtp.port() + 1),
        },
        codecs: vec![
            Codec {
                payload_type: 0,
                encoding: "PCMU".into(),
                clock_rate: 8000,
                channels: 1,
            },
            Codec {
                payload_type: 111,
                encoding: "opus".into(),
                clock_rate: 48_000,
                channels: 2,
            },
        ],
        direction: Direction::SendRecv,
        signaling_ip: Some(rtp.ip()),
    }
}

/// `data` as a run of datagrams, each `[selector, length, bytes...]`: the selector picks the
/// socket (leg, RTP or RTCP) and the source (the phone of that leg, a stranger) and how much
/// time passes; every datagram is classified on both kinds of port and fed to a live session,
/// whose timers and figures are then read.
pub fn rtp_packet(data: &[u8]) {
    let _ = crate::rtp::classify(data, false);
    let _ = crate::rtp::classify(data, true);
    let start = Instant::now();
    let mut session = Session::new(
        CallId::parse("fuzz").expect("a call id"),
        Owner::parse("fuzz").expect("an owner"),
        WallClock::now(),
        Timing::default(),
        start,
    );
    let phones: [SocketAddr; 2] = [
        "192.0.2.1:4000".parse().unwrap(),
        "192.0.2.2:5000".parse().unwrap(),
    ];
    let stranger: SocketAddr = "198.51.100.9:6666".parse().unwrap();
    for (leg, phone, port) in [
        (Leg::Caller, phones[0], 30000),
        (Leg::Callee, phones[1], 30002),
    ] {
        session.add_media(leg, MediaKind::Audio, port);
        session
            .update(start, leg, &[remote(phone)])
            .expect("the leg was allocated");
    }
    let mut now = start;
    let mut rest = data;
    while let [selector, length, tail @ ..] = rest {
        let len = usize::from(*length).min(tail.len());
        let (packet, next) = tail.split_at(len);
        rest = next;
        let leg = if selector & 1 == 0 {
            Leg::Caller
        } else {
            Leg::Callee
        };
        let component = if selector & 2 == 0 {
            Component::Rtp
        } else {
            Component::Rtcp
        };
        let source = match (selector >> 2) & 3 {
            0 | 1 => phones[leg.index()],
            2 => SocketAddr::new(phones[leg.index()].ip(), 7000),
            _ => stranger,
        };
        now += Duration::from_millis(u64::from(selector >> 4) * 20);
        let at = SocketRef {
            leg,
            media: 0,
            component,
        };
        if let Verdict::Forward { via, to, rtcp } = session.handle_packet(now, at, source, packet) {
            assert!(
                phones.iter().any(|p| p.ip() == to.ip()) || to == stranger,
                "a forward to {to}, an address neither SDP nor latching gave"
            );
            session.record_sent(now, via, rtcp, packet.len());
        }
        while session.poll_event().is_some() {}
    }
    let _ = session.poll_timers(now + Duration::from_secs(120));
    let _ = session.snapshot();
}

/// `data` as each request the server converts (allocate, update, release, recording): the
/// conversions refuse what they cannot use and never panic.
pub fn grpc_requests(data: &[u8]) {
    use crate::grpc;
    if let Ok(request) = pb::AllocateRequest::decode(data) {
        for (i, kind) in request.media.iter().enumerate() {
            let _ = grpc::kind_from_wire(*kind, &format!("media[{i}]"));
        }
        let _ = grpc::call_id(&request.call_id);
        let _ = grpc::leg_from_wire(request.leg);
        let _ = grpc::qualified(None, &request.owner);
        let _ = grpc::qualified(Some("signaling-1"), &request.owner);
        let _ = grpc::lease_timeout(request.lease_timeout_ms);
    }
    if let Ok(request) = pb::UpdateRequest::decode(data) {
        let _ = grpc::call_id(&request.call_id);
        let _ = grpc::signaling_ip(&request.signaling_address);
        let _ = grpc::leg_from_wire(request.leg);
        for media_ip in ["0.0.0.0", "127.0.0.1", "::1"] {
            let media_ip = media_ip.parse().expect("an address");
            for (i, media) in request.media.iter().enumerate() {
                if let Ok(remote) = grpc::remote_from_wire(i, media, media_ip)
                    && let RemoteTarget::Address { rtp, rtcp } = remote.target
                {
                    assert_eq!(rtp.ip(), rtcp.ip(), "RTP and RTCP on one address");
                    assert!(rtp.port() != 0 && rtcp.port() != 0, "no port 0 to send to");
                }
            }
        }
    }
    if let Ok(request) = pb::ReleaseRequest::decode(data) {
        let _ = grpc::call_id(&request.call_id);
    }
}

/// `data` as an ng datagram, twice from one client and once from another: the reply is the
/// same bytes from the cache, a decoded request re-encodes to what decodes the same, and
/// nothing panics.
pub fn ng_datagram(data: &[u8]) {
    use crate::ng::codec::{decode_bencode, decode_json};
    use crate::ng::{Ng, Outcome};
    let now = std::time::Instant::now();
    let client: std::net::SocketAddr = "127.0.0.1:4000".parse().expect("an address");
    let mut ng = Ng::default();
    let first = ng.handle(now, client, data);
    let again = ng.handle(now, client, data);
    match (&first, &again) {
        (Outcome::Reply { data: reply, .. }, Outcome::Cached(cached)) => {
            assert_eq!(reply, cached, "a retransmission gets the same bytes");
        }
        (Outcome::Dropped(a), Outcome::Dropped(b)) => assert_eq!(a, b),
        other => panic!("a datagram answered, then not from the cache: {other:?}"),
    }
    for value in [decode_bencode(data), decode_json(data)]
        .into_iter()
        .flatten()
    {
        assert_eq!(
            decode_bencode(&value.to_bencode()).as_ref(),
            Ok(&value),
            "bencode round trip"
        );
    }
}
