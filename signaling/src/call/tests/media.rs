//! Relayed media: a late offer's keepalives, media proxy failures answered with the status
//! they name, and a callee answer that cannot be rewritten for the relay.

use std::time::Duration;

use proto::domain::Leg;

use super::{A_FROM, MS, allocated, plan, relay_settings};
use crate::call::MediaError;
use crate::call::sim::{A, B, Phone, SDP, Sim, answer, invite, requests, responses};

#[test]
fn a_late_offer_call_gets_one_keepalive_chain() {
    let mut config = relay_settings();
    config.keepalive = Duration::from_secs(10);
    let mut sim = Sim::new(config);
    sim.send(A, &invite("late", "z9hG4bKlate", ""));
    sim.run(20 * MS);
    let to_b = requests(&sim.take(B), "INVITE")[0].clone();
    assert!(to_b.body.is_empty(), "no offer to the callee");
    sim.send(B, &answer(&to_b, "200 OK", Some("bt"), SDP));
    sim.run(20 * MS);
    assert_eq!(
        allocated(&mut sim, Ok(plan())),
        Leg::Callee,
        "the callee offers"
    );
    sim.run(20 * MS);
    let ok = responses(&sim.take(A), 200)[0].clone();
    let body = String::from_utf8(ok.body.clone()).unwrap();
    assert!(body.contains("c=IN IP4 192.0.2.10") && body.contains("m=audio 30000"));
    assert!(
        sim.take(B).is_empty(),
        "the callee's ACK waits for the caller's answer"
    );
    let a_to = ok.headers.get("To").unwrap().to_owned();
    sim.send(
        A,
        &Phone {
            call_id: "late",
            from: A_FROM,
            to: &a_to,
            port: 5061,
        }
        .request("ACK", 1, "z9hG4bKlatea", SDP),
    );
    sim.run(20 * MS);
    let acks = sim.take(B);
    let ack = requests(&acks, "ACK")[0];
    let answer_sdp = String::from_utf8(ack.body.clone()).unwrap();
    assert!(
        answer_sdp.contains("m=audio 30002"),
        "the answer rewritten for B"
    );
    // Keepalives: one OPTIONS per leg per interval. Before the fix the late-offer path armed
    // two chains, so each leg got two per interval.
    for round in 1..=3 {
        sim.run(Duration::from_secs(10));
        let at_a = sim.take(A);
        let at_b = sim.take(B);
        let pings = (requests(&at_a, "OPTIONS"), requests(&at_b, "OPTIONS"));
        assert_eq!((pings.0.len(), pings.1.len()), (1, 1), "round {round}");
        sim.send(A, &answer(pings.0[0], "200 OK", None, ""));
        sim.send(B, &answer(pings.1[0], "200 OK", None, ""));
    }
    assert!(sim.records().is_empty(), "answered pings keep the call");
}

#[test]
fn a_media_failure_answers_the_status_its_error_names() {
    for (error, status) in [
        (MediaError::Unavailable("connection refused".into()), 503),
        (MediaError::Exhausted("no free port pair".into()), 503),
        (MediaError::Refused("address family".into()), 488),
        (MediaError::Failed("advertised \"x\"".into()), 500),
    ] {
        let mut sim = Sim::new(relay_settings());
        sim.send(A, &invite("media-fail", "z9hG4bKmf", SDP));
        sim.run(20 * MS);
        allocated(&mut sim, Err(error.clone()));
        sim.run(20 * MS);
        assert_eq!(responses(&sim.take(A), status).len(), 1, "{error}");
        assert!(sim.take(B).is_empty(), "no INVITE to the callee");
        let records = sim.records();
        assert_eq!(records[0].end_reason, error.to_string());
        assert!(records[0].relayed, "the allocation is released");
    }
}

#[test]
fn a_callee_answer_that_cannot_be_rewritten_is_refused_not_passed_through() {
    let mut sim = Sim::new(relay_settings());
    sim.send(A, &invite("bad-answer", "z9hG4bKba", SDP));
    sim.run(20 * MS);
    allocated(&mut sim, Ok(plan()));
    sim.run(20 * MS);
    let to_b = requests(&sim.take(B), "INVITE")[0].clone();
    assert!(String::from_utf8_lossy(&to_b.body).contains("m=audio 30002"));
    let broken = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio notaport RTP/AVP 0\r\n";
    sim.send(B, &answer(&to_b, "200 OK", Some("bt"), broken));
    sim.run(20 * MS);
    let at_a = sim.take(A);
    assert_eq!(
        responses(&at_a, 502).len(),
        1,
        "502: the callee sent garbage"
    );
    assert!(
        responses(&at_a, 200).is_empty(),
        "the phone's own SDP never reaches the caller"
    );
    let at_b = sim.take(B);
    assert_eq!(requests(&at_b, "ACK").len(), 1);
    assert_eq!(requests(&at_b, "BYE").len(), 1);
    assert!(sim.records()[0].end_reason.contains("SDP answer unusable"));
}
