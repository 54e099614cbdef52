//! Reliable provisional responses (RFC 3262) on each leg: a caller that requires 100rel gets
//! reliable provisionals whatever the callee does, resent until PRACKed and one at a time; a
//! PRACK naming nothing gets 481; no PRACK at all refuses the call; a callee's reliable
//! provisional is PRACKed once in its early dialog.

use std::time::Duration;

use super::{A_FROM, MS, assert_clean};
use crate::call::sim::{A, B, Phone, SDP, Sim, answer, invite, requests, responses, settings};
use crate::sip::message::{Message, Response};
use crate::transaction::T1;

/// The caller's INVITE with `header` added.
fn invite_with(call_id: &str, header: &str) -> String {
    invite(call_id, &format!("z9hG4bK{call_id}"), SDP).replace(
        "Max-Forwards: 70\n",
        &format!("Max-Forwards: 70\n{header}\n"),
    )
}

/// A response with `headers` added before its Content-Length.
fn with_headers(response: String, headers: &str) -> String {
    response.replace("Content-Length:", &format!("{headers}\nContent-Length:"))
}

fn provisionals(messages: &[Message]) -> Vec<Response> {
    messages
        .iter()
        .filter_map(|m| match m {
            Message::Response(r) if (101..200).contains(&r.status) => Some(r.clone()),
            _ => None,
        })
        .collect()
}

fn rseq(response: &Response) -> u32 {
    response.headers.get("RSeq").unwrap().parse().unwrap()
}

#[test]
fn a_caller_requiring_100rel_gets_reliable_provisionals_resent_until_prack_one_at_a_time() {
    let mut sim = Sim::new(settings());
    sim.send(A, &invite_with("rel", "Require: 100rel"));
    sim.run(20 * MS);
    let to_b = requests(&sim.take(B), "INVITE")[0].clone();
    assert_eq!(
        to_b.headers.get("Supported"),
        Some("100rel, timer"),
        "offered to the callee"
    );
    assert!(to_b.headers.get("Require").is_none(), "not required of it");
    // The callee knows nothing of 100rel: a plain 180, then a plain 183 with early media.
    sim.send(B, &answer(&to_b, "180 Ringing", Some("bt"), ""));
    sim.send(B, &answer(&to_b, "183 Session Progress", Some("bt"), SDP));
    sim.run(20 * MS);
    let first = provisionals(&sim.take(A));
    assert_eq!(first.len(), 1, "one unacknowledged at a time: {first:?}");
    assert_eq!(first[0].status, 180);
    assert_eq!(first[0].headers.get("Require"), Some("100rel"));
    let rseq_180 = rseq(&first[0]);
    // Resent at T1, then 2 x T1 while no PRACK comes.
    sim.run(T1 + 10 * MS);
    assert_eq!(provisionals(&sim.take(A)).len(), 1, "resent after T1");
    sim.run(T1 * 2);
    let again = provisionals(&sim.take(A));
    assert_eq!(again.len(), 1, "resent after 2 x T1");
    assert_eq!(rseq(&again[0]), rseq_180, "the same response");
    let a_to = first[0].headers.get("To").unwrap().to_owned();
    let alice = Phone {
        call_id: "rel",
        from: A_FROM,
        to: &a_to,
        port: 5061,
    };
    let prack = |cseq: u32, rack: &str| {
        alice
            .request("PRACK", cseq, &format!("z9hG4bKprack{cseq}"), "")
            .replace(
                "Max-Forwards: 70\n",
                &format!("Max-Forwards: 70\nRAck: {rack}\n"),
            )
    };
    // A PRACK naming another RSeq matches nothing: 481.
    sim.send(A, &prack(2, &format!("{} 1 INVITE", rseq_180 + 5)));
    sim.run(20 * MS);
    assert_eq!(responses(&sim.take(A), 481).len(), 1);
    sim.send(A, &prack(3, &format!("{rseq_180} 1 INVITE")));
    sim.run(20 * MS);
    let at_a = sim.take(A);
    let ok = responses(&at_a, 200);
    assert_eq!(ok.len(), 1, "{at_a:?}");
    assert_eq!(ok[0].headers.get("CSeq"), Some("3 PRACK"));
    // The 183 went out once the 180 was acknowledged, with the next RSeq and its SDP.
    let next = provisionals(&at_a);
    assert_eq!(next.len(), 1, "{at_a:?}");
    assert_eq!((next[0].status, rseq(&next[0])), (183, rseq_180 + 1));
    assert!(!next[0].body.is_empty(), "early media SDP");
    sim.send(A, &prack(4, &format!("{} 1 INVITE", rseq_180 + 1)));
    sim.run(20 * MS);
    assert_eq!(responses(&sim.take(A), 200).len(), 1);
    sim.run(T1 * 8);
    assert!(
        provisionals(&sim.take(A)).is_empty(),
        "nothing resent once PRACKed"
    );
    sim.send(B, &answer(&to_b, "200 OK", Some("bt"), SDP));
    sim.run(20 * MS);
    assert_eq!(responses(&sim.take(A), 200).len(), 1);
    sim.send(A, &alice.request("ACK", 1, "z9hG4bKrelack", ""));
    sim.send(A, &alice.request("BYE", 5, "z9hG4bKrelbye", ""));
    sim.run(20 * MS);
    for message in sim.take(B) {
        if let Message::Request(request) = message
            && request.method.as_str() == "BYE"
        {
            sim.send(B, &answer(&request, "200 OK", None, ""));
        }
    }
    assert_eq!(sim.records().len(), 1);
    assert_clean(&mut sim);
}

#[test]
fn a_caller_that_never_pracks_has_its_call_refused_504_and_the_callee_cancelled() {
    let mut sim = Sim::new(settings());
    sim.send(A, &invite_with("noprack", "Require: 100rel"));
    sim.run(20 * MS);
    let to_b = requests(&sim.take(B), "INVITE")[0].clone();
    sim.send(B, &answer(&to_b, "180 Ringing", Some("bt"), ""));
    sim.run(Duration::from_secs(33));
    let at_a = sim.take(A);
    assert!(
        provisionals(&at_a).len() >= 6,
        "resent, doubling: {}",
        at_a.len()
    );
    assert!(!responses(&at_a, 504).is_empty(), "{at_a:?}");
    let at_b = sim.take(B);
    let cancel = requests(&at_b, "CANCEL");
    assert!(!cancel.is_empty(), "{at_b:?}");
    sim.send(B, &answer(cancel[0], "200 OK", None, ""));
    sim.send(B, &answer(&to_b, "487 Request Terminated", Some("bt"), ""));
    assert!(sim.records()[0].end_reason.contains("PRACK"));
    assert_clean(&mut sim);
}

#[test]
fn a_callees_reliable_provisional_is_pracked_once_in_its_early_dialog() {
    let mut sim = Sim::new(settings());
    // The caller knows nothing of 100rel: it gets the 183 plainly, once.
    sim.send(A, &invite("rel-b", "z9hG4bKrelb", SDP));
    sim.run(20 * MS);
    let to_b = requests(&sim.take(B), "INVITE")[0].clone();
    let reliable = with_headers(
        answer(&to_b, "183 Session Progress", Some("bt"), SDP),
        "Require: 100rel\nRSeq: 7",
    );
    sim.send(B, &reliable);
    sim.run(20 * MS);
    // Its retransmission (no PRACK seen yet by the callee) is not passed on twice.
    sim.send(B, &reliable);
    sim.run(20 * MS);
    let at_b = sim.take(B);
    let prack = requests(&at_b, "PRACK");
    assert_eq!(prack.len(), 1, "{at_b:?}");
    assert_eq!(prack[0].headers.get("RAck"), Some("7 1 INVITE"));
    assert_eq!(prack[0].call_id(), to_b.call_id());
    assert_eq!(
        prack[0].uri, "sip:bob@127.0.0.1:5062",
        "to the 183's Contact"
    );
    assert!(prack[0].headers.get("To").unwrap().contains("tag=bt"));
    sim.send(B, &answer(prack[0], "200 OK", None, ""));
    let at_a = sim.take(A);
    let plain = provisionals(&at_a);
    assert_eq!(plain.len(), 1, "{at_a:?}");
    assert!(
        plain[0].headers.get("RSeq").is_none(),
        "plain to a caller without 100rel"
    );
    sim.send(B, &answer(&to_b, "486 Busy Here", Some("bt"), ""));
    sim.run(20 * MS);
    assert_eq!(responses(&sim.take(A), 486).len(), 1);
    assert_clean(&mut sim);
}
