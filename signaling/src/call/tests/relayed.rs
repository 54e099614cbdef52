//! INFO, MESSAGE and NOTIFY relayed across the legs of an answered call (RFC 6086, RFC 3428,
//! RFC 6665): each reaches the other leg on that leg's dialog with its body and headers, and
//! the other leg's final answer comes back to the sender.

use std::time::Duration;

use super::{A_FROM, MS, assert_clean, b_dialog, establish};
use crate::call::sim::{A, B, Phone, Sim, answer, invite, requests, responses, settings};
use crate::sip::message::Message;
use crate::transaction::T1;

const DTMF: &str = "Signal=5\r\nDuration=160\r\n";

/// `request` with its body's Content-Type set to `content_type`.
fn typed(request: String, content_type: &str) -> String {
    request.replace(
        "Content-Type: application/sdp",
        &format!("Content-Type: {content_type}"),
    )
}

#[test]
fn an_info_and_a_message_cross_the_call_and_their_answers_come_back() {
    let mut sim = Sim::new(settings());
    let call = establish(&mut sim, "info");
    let alice = Phone {
        call_id: "info",
        from: A_FROM,
        to: &call.a_to,
        port: 5061,
    };
    sim.send(
        A,
        &typed(
            alice.request("INFO", 2, "z9hG4bKinfo1", DTMF),
            "application/dtmf-relay",
        ),
    );
    sim.run(20 * MS);
    let at_b = sim.take(B);
    let info = requests(&at_b, "INFO");
    assert_eq!(info.len(), 1, "{at_b:?}");
    let info = info[0].clone();
    assert_eq!(
        info.call_id(),
        call.to_b.call_id(),
        "on the callee's dialog"
    );
    assert_eq!(info.body, DTMF.as_bytes(), "the body untouched");
    assert_eq!(
        info.headers.get("Content-Type"),
        Some("application/dtmf-relay")
    );
    assert!(
        sim.take(A).is_empty(),
        "the caller waits for the callee's answer"
    );
    sim.send(B, &answer(&info, "200 OK", None, ""));
    sim.run(20 * MS);
    let at_a = sim.take(A);
    let ok = responses(&at_a, 200);
    assert_eq!(ok.len(), 1, "{at_a:?}");
    assert_eq!(ok[0].headers.get("CSeq"), Some("2 INFO"));
    assert_eq!(ok[0].call_id(), "info");

    // The other way, with a refusal: the caller's answer is what the callee gets.
    let (b_from, b_to) = b_dialog(&call);
    let bob = Phone {
        call_id: call.to_b.call_id(),
        from: &b_from,
        to: &b_to,
        port: 5062,
    };
    sim.send(
        B,
        &typed(
            bob.request("MESSAGE", 1, "z9hG4bKmsg1", "hello"),
            "text/plain",
        ),
    );
    sim.run(20 * MS);
    let at_a = sim.take(A);
    let message = requests(&at_a, "MESSAGE");
    assert_eq!(message.len(), 1, "{at_a:?}");
    let message = message[0].clone();
    assert_eq!(message.call_id(), "info", "on the caller's dialog");
    assert_eq!(message.body, b"hello");
    sim.send(A, &answer(&message, "415 Unsupported Media Type", None, ""));
    sim.run(20 * MS);
    let at_b = sim.take(B);
    assert_eq!(responses(&at_b, 415).len(), 1, "{at_b:?}");
    assert!(sim.records().is_empty(), "the call goes on");
    sim.send(A, &alice.request("BYE", 3, "z9hG4bKinfobye", ""));
    sim.run(20 * MS);
    let bye = requests(&sim.take(B), "BYE")[0].clone();
    sim.send(B, &answer(&bye, "200 OK", None, ""));
    assert_clean(&mut sim);
}

#[test]
fn a_relayed_request_the_other_leg_never_answers_gets_408_and_one_pending_at_the_bye_487() {
    let mut sim = Sim::new(settings());
    let call = establish(&mut sim, "silent-info");
    let alice = Phone {
        call_id: "silent-info",
        from: A_FROM,
        to: &call.a_to,
        port: 5061,
    };
    sim.send(A, &alice.request("INFO", 2, "z9hG4bKsi1", ""));
    sim.run(20 * MS);
    assert_eq!(requests(&sim.take(B), "INFO").len(), 1);
    // Timer F (64 x T1): the callee never answered.
    sim.run(T1 * 64 + Duration::from_millis(100));
    sim.take(B);
    let at_a = sim.take(A);
    assert_eq!(responses(&at_a, 408).len(), 1, "{at_a:?}");
    // Another, still waiting when the caller hangs up.
    sim.send(A, &alice.request("INFO", 3, "z9hG4bKsi2", ""));
    sim.run(20 * MS);
    sim.send(A, &alice.request("BYE", 4, "z9hG4bKsibye", ""));
    sim.run(20 * MS);
    let at_a = sim.take(A);
    let terminated: Vec<_> = at_a
        .iter()
        .filter_map(|m| match m {
            Message::Response(r) if r.status == 487 => r.headers.get("CSeq"),
            _ => None,
        })
        .collect();
    assert_eq!(terminated, ["3 INFO"], "{at_a:?}");
    assert_eq!(responses(&at_a, 200).len(), 1, "the BYE answered");
    let bye = requests(&sim.take(B), "BYE")[0].clone();
    sim.send(B, &answer(&bye, "200 OK", None, ""));
    assert_clean(&mut sim);
}

#[test]
fn before_the_answer_and_for_unknown_methods_requests_are_not_relayed() {
    let mut sim = Sim::new(settings());
    sim.send(A, &invite("early", "z9hG4bKearly", super::super::sim::SDP));
    sim.run(20 * MS);
    let to_b = requests(&sim.take(B), "INVITE")[0].clone();
    sim.send(B, &answer(&to_b, "180 Ringing", Some("bt"), ""));
    sim.run(20 * MS);
    let ringing = responses(&sim.take(A), 180)[0].clone();
    let a_to = ringing.headers.get("To").unwrap().to_owned();
    let alice = Phone {
        call_id: "early",
        from: A_FROM,
        to: &a_to,
        port: 5061,
    };
    sim.send(A, &alice.request("INFO", 2, "z9hG4bKe1", ""));
    sim.send(A, &alice.request("FROBNICATE", 3, "z9hG4bKe2", ""));
    sim.run(20 * MS);
    let at_a = sim.take(A);
    assert_eq!(responses(&at_a, 501).len(), 2, "{at_a:?}");
    assert!(requests(&sim.take(B), "INFO").is_empty());
    sim.send(A, &alice.request("CANCEL", 1, "z9hG4bKearly", ""));
    sim.run(20 * MS);
    for message in sim.take(B) {
        if let Message::Request(request) = message
            && request.method.as_str() == "CANCEL"
        {
            sim.send(B, &answer(&request, "200 OK", None, ""));
            sim.send(B, &answer(&to_b, "487 Request Terminated", Some("bt"), ""));
        }
    }
    assert_clean(&mut sim);
}
