//! The basic flows: a call from INVITE to BYE, what the channel does to it (lost, duplicated
//! and reordered datagrams, retransmissions until the ACK), CANCEL, crossing BYEs, the
//! timeouts that fail a call, the durable record at the answer, and what a thousand calls
//! leave behind.

use std::time::Duration;

use super::{A_FROM, MS, assert_clean, b_dialog, establish};
use crate::call::sim::{
    A, B, Fault, Phone, SDP, Sim, answer, invite, requests, responses, settings,
};
use crate::call::{Disposition, HangupSide, Output};
use crate::sip::message::{Message, Request};
use crate::transaction::{T1, TIMEOUT};

#[test]
fn a_call_from_invite_to_bye_leaves_one_record_and_nothing_behind() {
    let mut sim = Sim::new(settings());
    let call = establish(&mut sim, "basic");
    assert_ne!(
        call.to_b.call_id(),
        "basic",
        "the callee leg has its own Call-ID"
    );
    sim.send(
        A,
        &Phone {
            call_id: "basic",
            from: A_FROM,
            to: &call.a_to,
            port: 5061,
        }
        .request("BYE", 2, "z9hG4bKbye", ""),
    );
    sim.run(20 * MS);
    assert_eq!(responses(&sim.take(A), 200).len(), 1, "BYE answered");
    let bye = requests(&sim.take(B), "BYE")[0].clone();
    assert_eq!(bye.call_id(), call.to_b.call_id());
    assert_eq!(bye.uri, "sip:bob@127.0.0.1:5062", "to the callee's Contact");
    sim.send(B, &answer(&bye, "200 OK", None, ""));
    sim.run(20 * MS);
    let records = sim.records();
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].disposition, Disposition::Answered);
    assert_eq!(records[0].hangup_side, HangupSide::Caller);
    assert_eq!(records[0].call_id, "basic");
    assert_clean(&mut sim);
}

#[test]
fn a_lost_invite_to_the_callee_is_resent_with_timer_a_doubling_rfc3261_17_1_1_2() {
    let mut sim = Sim::new(settings());
    sim.fault(crate::call::sim::CORE, B, "INVITE", Fault::Drop, 2);
    sim.send(A, &invite("lost-invite", "z9hG4bKli", SDP));
    sim.run(T1 + T1 * 2 - 10 * MS);
    assert!(sim.take(B).is_empty(), "both copies lost so far");
    sim.run(30 * MS);
    let at_b = sim.take(B);
    assert_eq!(requests(&at_b, "INVITE").len(), 1, "third copy at 1.5 s");
    // The caller's own retransmission is absorbed by its transaction: answered again with
    // the last provisional response, never a second INVITE to the callee.
    sim.send(A, &invite("lost-invite", "z9hG4bKli", SDP));
    sim.run(20 * MS);
    let at_a = sim.take(A);
    assert_eq!(responses(&at_a, 100).len(), 2);
    let to_b = requests(&at_b, "INVITE")[0].clone();
    sim.send(B, &answer(&to_b, "180 Ringing", Some("bt"), ""));
    sim.run(Duration::from_secs(10));
    assert!(
        requests(&sim.take(B), "INVITE").is_empty(),
        "no retransmission once proceeding"
    );
}

#[test]
fn duplicated_and_reordered_datagrams_make_one_call() {
    let mut sim = Sim::new(settings());
    sim.fault(A, crate::call::sim::CORE, "INVITE", Fault::Duplicate, 1);
    sim.fault(crate::call::sim::CORE, A, "180", Fault::Delay(40 * MS), 1);
    sim.send(A, &invite("dup", "z9hG4bKdup", SDP));
    sim.run(20 * MS);
    let at_b = sim.take(B);
    assert_eq!(
        requests(&at_b, "INVITE").len(),
        1,
        "the duplicate is absorbed"
    );
    let to_b = requests(&at_b, "INVITE")[0].clone();
    sim.send(B, &answer(&to_b, "180 Ringing", Some("bt"), ""));
    sim.run(5 * MS);
    sim.send(B, &answer(&to_b, "200 OK", Some("bt"), SDP));
    sim.run(100 * MS);
    let at_a = sim.take(A);
    // The delayed 180 arrives after the 200: the phone's problem, but both were sent once.
    let order: Vec<u16> = at_a
        .iter()
        .filter_map(|m| match m {
            Message::Response(r) => Some(r.status),
            Message::Request(_) => None,
        })
        .collect();
    assert_eq!(order, [100, 100, 200, 180]);
    assert_eq!(sim.core.active_calls(), 1);
}

#[test]
fn a_lost_200_to_the_caller_is_resent_until_its_ack_rfc3261_13_3_1_4() {
    let mut sim = Sim::new(settings());
    sim.fault(crate::call::sim::CORE, A, "200 OK", Fault::Drop, 1);
    sim.send(A, &invite("lost-200", "z9hG4bKl2", SDP));
    sim.run(20 * MS);
    let to_b = requests(&sim.take(B), "INVITE")[0].clone();
    sim.send(B, &answer(&to_b, "200 OK", Some("bt"), SDP));
    sim.run(T1 - 20 * MS);
    assert!(
        responses(&sim.take(A), 200).is_empty(),
        "the first 200 was lost"
    );
    sim.run(40 * MS);
    let ok = responses(&sim.take(A), 200)[0].clone();
    // The caller, not having its 200, retransmits the INVITE: absorbed (RFC 6026 Accepted).
    sim.send(A, &invite("lost-200", "z9hG4bKl2", SDP));
    sim.run(20 * MS);
    assert!(responses(&sim.take(A), 200).is_empty());
    let a_to = ok.headers.get("To").unwrap().to_owned();
    sim.send(
        A,
        &Phone {
            call_id: "lost-200",
            from: A_FROM,
            to: &a_to,
            port: 5061,
        }
        .request("ACK", 1, "z9hG4bKl2a", ""),
    );
    sim.run(Duration::from_secs(10));
    assert!(sim.take(A).is_empty(), "acknowledged: no more 200s");
    assert_eq!(sim.records().len(), 0, "the call goes on");
    assert_eq!(requests(&sim.take(B), "INVITE").len(), 0);
}

#[test]
fn a_lost_ack_to_the_callee_is_resent_for_its_retransmitted_200_rfc3261_13_2_2_4() {
    let mut sim = Sim::new(settings());
    sim.fault(crate::call::sim::CORE, B, "ACK", Fault::Drop, 1);
    sim.send(A, &invite("lost-ack", "z9hG4bKla", SDP));
    sim.run(20 * MS);
    let to_b = requests(&sim.take(B), "INVITE")[0].clone();
    let ok = answer(&to_b, "200 OK", Some("bt"), SDP);
    sim.send(B, &ok);
    sim.run(20 * MS);
    assert!(requests(&sim.take(B), "ACK").is_empty(), "lost");
    assert_eq!(responses(&sim.take(A), 200).len(), 1);
    // The callee resends its 200 (its Timer G): the core acknowledges it again, and the
    // caller does not see a second 200.
    sim.send(B, &ok);
    sim.run(20 * MS);
    let acks = sim.take(B);
    let acks = requests(&acks, "ACK");
    assert_eq!(acks.len(), 1);
    assert_eq!(acks[0].headers.get("CSeq"), Some("1 ACK"));
    assert!(responses(&sim.take(A), 200).is_empty());
}

#[test]
fn a_caller_that_never_acks_is_hung_up_on_both_legs_rfc3261_13_3_1_4() {
    let mut sim = Sim::new(settings());
    sim.fault(A, crate::call::sim::CORE, "ACK", Fault::Drop, 100);
    let _ = establish_without_ack(&mut sim, "no-ack");
    sim.run(TIMEOUT - Duration::from_secs(1));
    let resent = sim.take(A);
    assert!(
        responses(&resent, 200).len() >= 7,
        "the 200 is resent (T1, 2T1, 4T1, then every T2): {}",
        responses(&resent, 200).len()
    );
    assert!(sim.records().is_empty());
    sim.run(Duration::from_secs(1) + 30 * MS);
    assert_eq!(requests(&sim.take(A), "BYE").len(), 1);
    assert_eq!(requests(&sim.take(B), "BYE").len(), 1);
    let records = sim.records();
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].hangup_side, HangupSide::System);
    assert!(records[0].end_reason.contains("never acknowledged"));
}

/// A call answered by B whose 200 reached A (the ACK is up to the test).
fn establish_without_ack(sim: &mut Sim, call_id: &str) -> Request {
    sim.send(A, &invite(call_id, &format!("z9hG4bK{call_id}i"), SDP));
    sim.run(20 * MS);
    let to_b = requests(&sim.take(B), "INVITE")[0].clone();
    sim.send(B, &answer(&to_b, "200 OK", Some("bt"), SDP));
    sim.run(20 * MS);
    to_b
}

#[test]
fn a_cancel_crossing_the_200_leaves_the_callee_acked_and_hung_up_rfc3261_9_1() {
    let mut sim = Sim::new(settings());
    sim.send(A, &invite("race", "z9hG4bKrace", SDP));
    sim.run(20 * MS);
    let to_b = requests(&sim.take(B), "INVITE")[0].clone();
    sim.send(B, &answer(&to_b, "180 Ringing", Some("bt"), ""));
    sim.run(20 * MS);
    sim.take(A);
    // A cancels; at the same moment B answers: the CANCEL and the 200 cross on the wire.
    sim.send(
        A,
        "CANCEL sip:bob@127.0.0.1 SIP/2.0\nVia: SIP/2.0/UDP 127.0.0.1:5061;branch=z9hG4bKrace\nFrom: <sip:alice@127.0.0.1>;tag=af\nTo: <sip:bob@127.0.0.1>\nCall-ID: race\nCSeq: 1 CANCEL\nMax-Forwards: 70\nContent-Length: 0\n\n",
    );
    sim.send(B, &answer(&to_b, "200 OK", Some("bt"), SDP));
    sim.run(20 * MS);
    let at_a = sim.take(A);
    let at_b = sim.take(B);
    assert_eq!(responses(&at_a, 200).len(), 1, "the CANCEL's own 200");
    assert_eq!(
        responses(&at_a, 200)[0].headers.get("CSeq"),
        Some("1 CANCEL")
    );
    assert_eq!(responses(&at_a, 487).len(), 1, "the INVITE is terminated");
    let cancel = requests(&at_b, "CANCEL");
    assert_eq!(cancel.len(), 1);
    assert_eq!(
        cancel[0]
            .headers
            .get("Via")
            .unwrap()
            .split(";branch=")
            .nth(1),
        to_b.headers.get("Via").unwrap().split(";branch=").nth(1),
        "a CANCEL carries its INVITE's branch"
    );
    // B's 200 came after the call was over: it is acknowledged and the callee hung up.
    assert_eq!(requests(&at_b, "ACK").len(), 1);
    let bye = requests(&at_b, "BYE");
    assert_eq!(bye.len(), 1);
    assert_eq!(
        bye[0].headers.get("To").unwrap(),
        format!("{};tag=bt", to_b.headers.get("To").unwrap())
    );
    let records = sim.records();
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].disposition, Disposition::Cancelled);
    sim.send(B, &answer(cancel[0], "200 OK", None, ""));
    sim.send(B, &answer(bye[0], "200 OK", None, ""));
    assert_clean(&mut sim);
}

#[test]
fn a_cancel_before_any_provisional_waits_for_one_rfc3261_9_1() {
    let mut sim = Sim::new(settings());
    sim.send(A, &invite("early-cancel", "z9hG4bKec", SDP));
    sim.run(20 * MS);
    let to_b = requests(&sim.take(B), "INVITE")[0].clone();
    sim.send(
        A,
        "CANCEL sip:bob@127.0.0.1 SIP/2.0\nVia: SIP/2.0/UDP 127.0.0.1:5061;branch=z9hG4bKec\nFrom: <sip:alice@127.0.0.1>;tag=af\nTo: <sip:bob@127.0.0.1>\nCall-ID: early-cancel\nCSeq: 1 CANCEL\nMax-Forwards: 70\nContent-Length: 0\n\n",
    );
    sim.run(20 * MS);
    assert_eq!(responses(&sim.take(A), 487).len(), 1);
    assert!(
        requests(&sim.take(B), "CANCEL").is_empty(),
        "no CANCEL before a provisional response"
    );
    sim.send(B, &answer(&to_b, "100 Trying", None, ""));
    sim.run(20 * MS);
    let at_b = sim.take(B);
    let cancel = requests(&at_b, "CANCEL");
    assert_eq!(cancel.len(), 1, "sent on the first provisional");
    sim.send(B, &answer(cancel[0], "200 OK", None, ""));
    sim.send(B, &answer(&to_b, "487 Request Terminated", Some("bt"), ""));
    sim.run(20 * MS);
    assert_eq!(
        requests(&sim.take(B), "ACK").len(),
        1,
        "the 487 is acknowledged"
    );
    assert_clean(&mut sim);
}

#[test]
fn byes_crossing_are_both_answered_and_make_one_record_rfc3261_15() {
    let mut sim = Sim::new(settings());
    let call = establish(&mut sim, "crossing");
    let (b_from, b_to) = b_dialog(&call);
    sim.send(
        A,
        &Phone {
            call_id: "crossing",
            from: A_FROM,
            to: &call.a_to,
            port: 5061,
        }
        .request("BYE", 2, "z9hG4bKx1", ""),
    );
    sim.send(
        B,
        &Phone {
            call_id: call.to_b.call_id(),
            from: &b_from,
            to: &b_to,
            port: 5062,
        }
        .request("BYE", 1, "z9hG4bKx2", ""),
    );
    sim.run(20 * MS);
    let at_a = sim.take(A);
    let at_b = sim.take(B);
    assert_eq!(responses(&at_a, 200).len(), 1);
    assert_eq!(responses(&at_b, 200).len(), 1, "B's BYE answered, not 481");
    let bye = requests(&at_b, "BYE");
    assert_eq!(bye.len(), 1, "the core's own BYE to B");
    assert!(requests(&at_a, "BYE").is_empty(), "A hung up itself");
    sim.send(B, &answer(bye[0], "200 OK", None, ""));
    let records = sim.records();
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].hangup_side, HangupSide::Caller);
    assert_clean(&mut sim);
}

#[test]
fn a_silent_callee_fails_the_call_with_timer_b_rfc3261_17_1_1_2() {
    let mut sim = Sim::new(settings());
    sim.fault(crate::call::sim::CORE, B, "INVITE", Fault::Drop, 100);
    sim.send(A, &invite("silent", "z9hG4bKs", SDP));
    sim.run(TIMEOUT - Duration::from_secs(1));
    assert!(responses(&sim.take(A), 408).is_empty());
    sim.run(Duration::from_secs(1) + 30 * MS);
    let at_a = sim.take(A);
    assert_eq!(responses(&at_a, 408).len(), 1);
    let records = sim.records();
    assert_eq!(records[0].disposition, Disposition::Failed);
    assert!(records[0].end_reason.contains("Timer B"));
    // A acknowledges the 408 (the ACK of an error is the INVITE transaction's own).
    let to = responses(&at_a, 408)[0]
        .headers
        .get("To")
        .unwrap()
        .to_owned();
    sim.send(
        A,
        &Phone {
            call_id: "silent",
            from: A_FROM,
            to: &to,
            port: 5061,
        }
        .request("ACK", 1, "z9hG4bKs", "")
        .replace("ACK sip:127.0.0.1:5060", "ACK sip:bob@127.0.0.1"),
    );
    sim.run(20 * MS);
    assert!(sim.take(A).is_empty());
    assert_clean(&mut sim);
}

#[test]
fn the_ring_timeout_cancels_the_callee_and_answers_408() {
    let mut config = settings();
    config.ring_timeout = Duration::from_secs(3);
    let mut sim = Sim::new(config);
    sim.send(A, &invite("ring", "z9hG4bKring", SDP));
    sim.run(20 * MS);
    let to_b = requests(&sim.take(B), "INVITE")[0].clone();
    sim.send(B, &answer(&to_b, "180 Ringing", Some("bt"), ""));
    sim.run(Duration::from_secs(3) - 20 * MS);
    assert!(sim.take(B).is_empty(), "still ringing");
    sim.run(40 * MS);
    let at_b = sim.take(B);
    let cancel = requests(&at_b, "CANCEL");
    assert_eq!(cancel.len(), 1);
    assert_eq!(responses(&sim.take(A), 408).len(), 1);
    sim.send(B, &answer(cancel[0], "200 OK", None, ""));
    sim.send(B, &answer(&to_b, "487 Request Terminated", Some("bt"), ""));
    sim.run(20 * MS);
    assert_eq!(requests(&sim.take(B), "ACK").len(), 1);
    assert_eq!(sim.records()[0].disposition, Disposition::NoAnswer);
    assert_clean(&mut sim);
}

#[test]
fn no_timer_outlives_its_call_after_a_thousand_calls() {
    let mut config = settings();
    config.keepalive = Duration::from_secs(30);
    let mut sim = Sim::new(config);
    for i in 0..1000 {
        let id = format!("many-{i}");
        let call = establish(&mut sim, &id);
        sim.send(
            A,
            &Phone {
                call_id: &id,
                from: A_FROM,
                to: &call.a_to,
                port: 5061,
            }
            .request("BYE", 2, &format!("z9hG4bKb{i}"), ""),
        );
        sim.run(20 * MS);
        sim.take(A);
        let at_b = sim.take(B);
        let bye = requests(&at_b, "BYE")[0].clone();
        sim.send(B, &answer(&bye, "200 OK", None, ""));
        sim.run(20 * MS);
    }
    assert_eq!(sim.records().len(), 1000);
    assert_eq!(sim.core.active_calls(), 0);
    // Every ended call keeps exactly one timer of its own (its linger), not a maximum
    // duration or a keepalive chain; the rest are the transactions' own, all bounded.
    assert_eq!(sim.core.timers.len(), sim.core.calls_in_memory());
    let latest = sim.core.poll_timeout().unwrap();
    assert!(latest <= sim.now + TIMEOUT);
    assert_clean(&mut sim);
    assert!(sim.elapsed() < Duration::from_secs(200), "virtual time");
}

#[test]
fn identifiers_are_random_not_counters_rfc3261_19_3() {
    let mut sim = Sim::new(settings());
    let first = establish(&mut sim, "ids-1");
    let second = establish(&mut sim, "ids-2");
    let branch = |r: &Request| {
        r.headers
            .get("Via")
            .unwrap()
            .split(";branch=")
            .nth(1)
            .unwrap()
            .split(';')
            .next()
            .unwrap()
            .to_owned()
    };
    for call in [&first, &second] {
        let tag = call.a_to.split("tag=").nth(1).unwrap();
        assert_eq!(tag.len(), 16, "64-bit tags: {tag}");
        assert!(branch(&call.to_b).len() >= 7 + 32);
        assert!(call.to_b.call_id().len() >= 32);
    }
    assert_ne!(first.to_b.call_id(), second.to_b.call_id());
    assert_ne!(branch(&first.to_b), branch(&second.to_b));
    // The ACKs of two 2xx never share a branch (each is a transaction of its own).
    let mut sim = Sim::new(settings());
    let mut acks = Vec::new();
    for id in ["ack-1", "ack-2", "ack-3"] {
        let to_b = establish_without_ack(&mut sim, id);
        sim.send(B, &answer(&to_b, "200 OK", Some("bt"), SDP));
        sim.run(20 * MS);
        let at_b = sim.take(B);
        acks.extend(requests(&at_b, "ACK").into_iter().map(branch));
    }
    let distinct: std::collections::HashSet<_> = acks.iter().collect();
    assert_eq!(distinct.len(), 3, "{acks:?}");
}

/// At the answer the core asks for a durable record of the call (so a crash still leaves its
/// CDR), once; the record ends "now" by the system, and the finished call's own record
/// replaces it.
#[test]
fn an_answered_call_is_recorded_durably_once_at_the_answer() {
    let mut sim = Sim::new(settings());
    let call = establish(&mut sim, "durable");
    let open: Vec<&crate::call::CallRecord> = sim
        .outputs
        .iter()
        .filter_map(|o| match o {
            Output::Answered(record) => Some(record),
            _ => None,
        })
        .collect();
    assert_eq!(open.len(), 1);
    assert_eq!(open[0].call_id, "durable");
    assert!(open[0].answer.is_some());
    assert_eq!(open[0].hangup_side, HangupSide::System);
    assert_eq!(open[0].disposition, Disposition::Answered);
    assert_eq!(open[0].end_reason, crate::call::CRASHED);
    assert!(sim.records().is_empty(), "no CDR while the call is up");
    let bye = Phone {
        call_id: "durable",
        from: A_FROM,
        to: &call.a_to,
        port: 5061,
    }
    .request("BYE", 2, "z9hG4bKdurableb", "");
    sim.send(A, &bye);
    sim.run(20 * MS);
    let to_b = requests(&sim.take(B), "BYE")[0].clone();
    sim.send(B, &answer(&to_b, "200 OK", None, ""));
    sim.run(20 * MS);
    assert_eq!(sim.records().len(), 1);
    assert_eq!(sim.records()[0].hangup_side, HangupSide::Caller);
    assert_clean(&mut sim);
}
