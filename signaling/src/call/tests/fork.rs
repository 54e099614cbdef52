//! Where a call rings: every registered device of the user at once (q-values: equal ones
//! together, lower ones after), the first 2xx winning and the others CANCELled, a late
//! second 2xx hung up; 3xx redirects followed (loops and unroutable targets passed on);
//! forwarding on busy and on no answer from the users file.

use std::time::Duration;

use super::{A_FROM, MS, assert_clean};
use crate::call::sim::{A, B, C, Phone, SDP, Sim, answer, invite, requests, responses, settings};
use crate::call::{Disposition, Settings};
use crate::sip::Peer;
use crate::sip::message::{Message, Request};

/// No static routes: only registered users are reachable.
fn registrar_only() -> Settings {
    let mut config = settings();
    config.routes.clear();
    config
}

/// The INVITE that reached `peer`, if one did.
fn invite_at(sim: &mut Sim, peer: Peer) -> Option<Request> {
    requests(&sim.take(peer), "INVITE")
        .first()
        .map(|r| (*r).clone())
}

/// Answers the CANCELs that reached `peer` with 200 and their INVITE with 487.
fn answer_cancel(sim: &mut Sim, peer: Peer, invite: &Request) -> usize {
    let mut cancels = 0;
    for message in sim.take(peer) {
        if let Message::Request(request) = message
            && request.method.as_str() == "CANCEL"
        {
            cancels += 1;
            sim.send(peer, &answer(&request, "200 OK", None, ""));
        }
    }
    if cancels > 0 {
        sim.send(
            peer,
            &answer(invite, "487 Request Terminated", Some("x"), ""),
        );
    }
    cancels
}

fn hang_up(sim: &mut Sim, call_id: &str, a_to: &str, callee: Peer) {
    let alice = Phone {
        call_id,
        from: A_FROM,
        to: a_to,
        port: 5061,
    };
    sim.send(
        A,
        &alice.request("ACK", 1, &format!("z9hG4bK{call_id}ack"), ""),
    );
    sim.send(
        A,
        &alice.request("BYE", 2, &format!("z9hG4bK{call_id}bye"), ""),
    );
    sim.run(20 * MS);
    for message in sim.take(callee) {
        if let Message::Request(request) = message
            && request.method.as_str() == "BYE"
        {
            sim.send(callee, &answer(&request, "200 OK", None, ""));
        }
    }
}

#[test]
fn every_device_rings_the_first_answer_wins_and_a_late_second_answer_is_hung_up() {
    let mut sim = Sim::new(registrar_only());
    sim.register("bob", &[(B, 1.0), (C, 1.0)]);
    sim.send(A, &invite("fork", "z9hG4bKfork", SDP));
    sim.run(20 * MS);
    let (desk, mobile) = (
        invite_at(&mut sim, B).unwrap(),
        invite_at(&mut sim, C).unwrap(),
    );
    assert_eq!(desk.call_id(), mobile.call_id(), "one dialog, forked");
    assert_ne!(
        desk.headers.get("Via"),
        mobile.headers.get("Via"),
        "each branch its own transaction"
    );
    assert!(desk.uri.ends_with(":5062") && mobile.uri.ends_with(":5063"));
    // Both ring; the mobile brings early media; the desk phone answers.
    sim.send(B, &answer(&desk, "180 Ringing", Some("desk"), ""));
    sim.send(
        C,
        &answer(&mobile, "183 Session Progress", Some("mob"), SDP),
    );
    sim.run(20 * MS);
    let at_a = sim.take(A);
    assert_eq!(responses(&at_a, 180).len() + responses(&at_a, 183).len(), 2);
    sim.send(B, &answer(&desk, "200 OK", Some("desk"), SDP));
    sim.run(20 * MS);
    let ok = responses(&sim.take(A), 200)[0].clone();
    assert_eq!(requests(&sim.take(B), "ACK").len(), 1);
    // The mobile is cancelled; it answered all the same (the 200 crossed the CANCEL).
    let at_c = sim.take(C);
    let cancel = requests(&at_c, "CANCEL");
    assert_eq!(cancel.len(), 1, "{at_c:?}");
    sim.send(C, &answer(cancel[0], "200 OK", None, ""));
    sim.send(C, &answer(&mobile, "200 OK", Some("mob"), SDP));
    sim.run(20 * MS);
    let at_c = sim.take(C);
    assert_eq!(requests(&at_c, "ACK").len(), 1, "the late 2xx acknowledged");
    let bye = requests(&at_c, "BYE");
    assert_eq!(bye.len(), 1, "and hung up: {at_c:?}");
    assert!(bye[0].headers.get("To").unwrap().contains("tag=mob"));
    sim.send(C, &answer(bye[0], "200 OK", None, ""));
    assert!(
        sim.take(A)
            .iter()
            .all(|m| !matches!(m, Message::Request(_))),
        "the caller saw one call"
    );
    let a_to = ok.headers.get("To").unwrap().to_owned();
    hang_up(&mut sim, "fork", &a_to, B);
    let record = sim.records()[0].clone();
    assert_eq!(record.disposition, Disposition::Answered);
    assert_eq!(
        record.callee_contact.as_deref(),
        Some("sip:bob@127.0.0.1:5062")
    );
    assert_clean(&mut sim);
}

#[test]
fn lower_q_devices_ring_only_after_the_higher_ones_failed() {
    let mut sim = Sim::new(registrar_only());
    sim.register("bob", &[(B, 1.0), (C, 0.5)]);
    sim.send(A, &invite("fork-q", "z9hG4bKforkq", SDP));
    sim.run(20 * MS);
    let desk = invite_at(&mut sim, B).unwrap();
    assert!(invite_at(&mut sim, C).is_none(), "q=0.5 waits");
    sim.send(
        B,
        &answer(&desk, "480 Temporarily Unavailable", Some("desk"), ""),
    );
    sim.run(20 * MS);
    assert!(
        sim.take(A)
            .iter()
            .all(|m| !matches!(m, Message::Response(r) if r.status >= 300)),
        "not over yet"
    );
    let mobile = invite_at(&mut sim, C).expect("the next group rings");
    sim.send(C, &answer(&mobile, "486 Busy Here", Some("mob"), ""));
    sim.run(20 * MS);
    // Every device failed: the caller gets the best answer of the lowest class (the first
    // 4xx: 480).
    let at_a = sim.take(A);
    assert_eq!(responses(&at_a, 480).len(), 1, "{at_a:?}");
    assert_clean(&mut sim);
}

#[test]
fn a_redirect_is_followed_and_a_loop_or_an_unroutable_target_goes_to_the_caller() {
    let mut config = registrar_only();
    config.routes = ["carol=sip:127.0.0.1:5063"]
        .iter()
        .map(|text| {
            let mut route: crate::policy::Route = text.parse().unwrap();
            route.resolve().unwrap();
            route
        })
        .collect();
    let mut sim = Sim::new(config);
    sim.register("bob", &[(B, 1.0)]);
    sim.send(A, &invite("redir", "z9hG4bKredir", SDP));
    sim.run(20 * MS);
    let to_bob = invite_at(&mut sim, B).unwrap();
    let moved = answer(&to_bob, "302 Moved Temporarily", Some("bt"), "").replace(
        "Contact: <sip:bob@127.0.0.1:5062>",
        "Contact: <sip:carol@198.51.100.7>",
    );
    sim.send(B, &moved);
    sim.run(20 * MS);
    assert_eq!(
        requests(&sim.take(B), "ACK").len(),
        1,
        "the 302 acknowledged"
    );
    let to_carol = invite_at(&mut sim, C).expect("the redirect followed");
    assert!(to_carol.uri.starts_with("sip:carol@"));
    // Carol redirects back to bob: a loop, so her 302 goes to the caller, Contact and all.
    let back = answer(&to_carol, "302 Moved Temporarily", Some("ct"), "").replace(
        "Contact: <sip:bob@127.0.0.1:5062>",
        "Contact: <sip:bob@127.0.0.1>",
    );
    sim.send(C, &back);
    sim.run(20 * MS);
    assert!(invite_at(&mut sim, B).is_none(), "bob is not tried twice");
    let at_a = sim.take(A);
    let redirected = responses(&at_a, 302);
    assert_eq!(redirected.len(), 1, "{at_a:?}");
    assert_eq!(
        redirected[0].headers.get("Contact"),
        Some("<sip:bob@127.0.0.1>")
    );
    let record = sim.records()[0].clone();
    assert!(
        record
            .end_reason
            .contains("redirected by bob (302 Moved Temporarily) to carol"),
        "{}",
        record.end_reason
    );
    assert_clean(&mut sim);
}

#[test]
fn a_busy_user_forwards_on_busy_and_a_silent_one_on_no_answer() {
    let mut config = registrar_only();
    config.users.insert(
        "bob".into(),
        crate::policy::User {
            password: Some("x".into()),
            forward_busy: Some("carol".into()),
            forward_no_answer: Some("sip:carol@example.com".into()),
            forward_no_answer_after: Some(10),
            ..Default::default()
        },
    );
    let mut sim = Sim::new(config);
    sim.register("bob", &[(B, 1.0)]);
    sim.register("carol", &[(C, 1.0)]);
    // Busy: carol rings at once and answers.
    sim.send(A, &invite("fwd-busy", "z9hG4bKfwdb", SDP));
    sim.run(20 * MS);
    let to_bob = invite_at(&mut sim, B).unwrap();
    sim.send(B, &answer(&to_bob, "486 Busy Here", Some("bt"), ""));
    sim.run(20 * MS);
    let to_carol = invite_at(&mut sim, C).expect("forwarded on busy");
    sim.send(C, &answer(&to_carol, "200 OK", Some("ct"), SDP));
    sim.run(20 * MS);
    let ok = responses(&sim.take(A), 200)[0].clone();
    hang_up(&mut sim, "fwd-busy", ok.headers.get("To").unwrap(), C);
    let record = sim.records()[0].clone();
    assert_eq!(record.callee, "bob", "the call was for bob");
    assert_eq!(
        record.callee_contact.as_deref(),
        Some("sip:carol@127.0.0.1:5063")
    );
    assert!(
        record
            .end_reason
            .contains("forwarded on busy from bob to carol"),
        "{}",
        record.end_reason
    );
    // No answer: bob rings 10 s, is cancelled, carol rings.
    sim.send(A, &invite("fwd-na", "z9hG4bKfwdna", SDP));
    sim.run(20 * MS);
    let to_bob = invite_at(&mut sim, B).unwrap();
    sim.send(B, &answer(&to_bob, "180 Ringing", Some("bt2"), ""));
    sim.run(Duration::from_secs(9));
    assert!(invite_at(&mut sim, C).is_none(), "not before 10 s");
    sim.run(Duration::from_millis(1_100));
    assert_eq!(answer_cancel(&mut sim, B, &to_bob), 1);
    let to_carol = invite_at(&mut sim, C).expect("forwarded on no answer");
    sim.run(20 * MS);
    assert!(
        sim.take(A)
            .iter()
            .all(|m| !matches!(m, Message::Response(r) if r.status >= 300)),
        "bob's 487 is not the caller's answer"
    );
    sim.send(C, &answer(&to_carol, "200 OK", Some("ct2"), SDP));
    sim.run(20 * MS);
    let ok = responses(&sim.take(A), 200)[0].clone();
    hang_up(&mut sim, "fwd-na", ok.headers.get("To").unwrap(), C);
    let record = sim.records()[1].clone();
    assert!(
        record
            .end_reason
            .contains("forwarded on no answer from bob to carol"),
        "{}",
        record.end_reason
    );
    assert_clean(&mut sim);
}
