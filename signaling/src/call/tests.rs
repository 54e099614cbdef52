//! Call flows on the simulated network ([`super::sim`]): each test scripts the two phones,
//! bends the channel where the flow is interesting (a lost 200, a lost ACK, a CANCEL that
//! crosses a 200, glare, BYEs that cross) and checks what each phone saw, what the core
//! recorded and that nothing is left behind. RFC 3261 sections are cited where the behaviour
//! comes from.

use std::time::Duration;

use proto::domain::Leg;

use super::sim::{A, B, Fault, Phone, SDP, Sim, answer, invite, requests, responses, settings};
use super::{CallId, Disposition, HangupSide, Input, MediaPlan, Output};
use super::{MediaError, RecordingAction};
use crate::policy::MediaMode;
use crate::sip::message::{Message, Request};
use crate::transaction::{T1, TIMEOUT};

/// A call's key, as a test writes it.
fn key(text: &str) -> CallId {
    CallId::parse(text).expect("a valid call id")
}

const MS: Duration = Duration::from_millis(1);

/// What an established call's phones need to speak in its dialogs.
struct Established {
    /// The INVITE the callee received.
    to_b: Request,
    /// The To of the caller's dialog as the caller sees it (with our tag).
    a_to: String,
}

/// A's From in the caller's dialog.
const A_FROM: &str = "<sip:alice@127.0.0.1>;tag=af";

/// A call from A to B, answered and acknowledged, on `sim`.
fn establish(sim: &mut Sim, call_id: &str) -> Established {
    sim.send(A, &invite(call_id, &format!("z9hG4bK{call_id}i"), SDP));
    sim.run(20 * MS);
    let to_b = requests(&sim.take(B), "INVITE")[0].clone();
    sim.send(B, &answer(&to_b, "180 Ringing", Some("bt"), ""));
    sim.send(B, &answer(&to_b, "200 OK", Some("bt"), SDP));
    sim.run(20 * MS);
    let at_a = sim.take(A);
    let ok = responses(&at_a, 200)[0].clone();
    let a_to = ok.headers.get("To").unwrap().to_owned();
    sim.send(
        A,
        &Phone {
            call_id,
            from: A_FROM,
            to: &a_to,
            port: 5061,
        }
        .request("ACK", 1, &format!("z9hG4bK{call_id}a"), ""),
    );
    sim.run(20 * MS);
    assert_eq!(requests(&sim.take(B), "ACK").len(), 1, "B got its ACK");
    Established { to_b, a_to }
}

/// B's From and To in the callee's dialog (B speaks as the UAS of our INVITE).
fn b_dialog(call: &Established) -> (String, String) {
    let to = format!("{};tag=bt", call.to_b.headers.get("To").unwrap());
    let from = call.to_b.headers.get("From").unwrap().to_owned();
    (to, from)
}

/// After every test: once the longest linger has passed, nothing is left.
fn assert_clean(sim: &mut Sim) {
    sim.run(TIMEOUT + Duration::from_secs(6));
    assert_eq!(sim.core.calls_in_memory(), 0, "calls forgotten");
    assert_eq!(sim.core.transactions_alive(), 0, "transactions ended");
    assert_eq!(sim.core.pending_timers(), 0, "no timer left");
    assert_eq!(sim.core.poll_timeout(), None);
}

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
    sim.fault(super::sim::CORE, B, "INVITE", Fault::Drop, 2);
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
    sim.fault(A, super::sim::CORE, "INVITE", Fault::Duplicate, 1);
    sim.fault(super::sim::CORE, A, "180", Fault::Delay(40 * MS), 1);
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
    sim.fault(super::sim::CORE, A, "200 OK", Fault::Drop, 1);
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
    sim.fault(super::sim::CORE, B, "ACK", Fault::Drop, 1);
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
    sim.fault(A, super::sim::CORE, "ACK", Fault::Drop, 100);
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
fn a_reinvite_while_one_is_pending_is_glare_and_gets_491_rfc3261_14_2() {
    let mut sim = Sim::new(settings());
    let call = establish(&mut sim, "glare");
    let hold = SDP.replace("m=audio", "a=sendonly\r\nm=audio");
    sim.send(
        A,
        &Phone {
            call_id: "glare",
            from: A_FROM,
            to: &call.a_to,
            port: 5061,
        }
        .request("INVITE", 2, "z9hG4bKg1", &hold),
    );
    sim.run(20 * MS);
    assert_eq!(responses(&sim.take(A), 100).len(), 1);
    let relayed = requests(&sim.take(B), "INVITE")[0].clone();
    assert_eq!(relayed.call_id(), call.to_b.call_id());
    assert_eq!(relayed.headers.get("CSeq"), Some("2 INVITE"));
    // B re-INVITEs at the same time: glare.
    let (b_from, b_to) = b_dialog(&call);
    sim.send(
        B,
        &Phone {
            call_id: call.to_b.call_id(),
            from: &b_from,
            to: &b_to,
            port: 5062,
        }
        .request("INVITE", 1, "z9hG4bKg2", SDP),
    );
    sim.run(20 * MS);
    let at_b = sim.take(B);
    assert_eq!(responses(&at_b, 491).len(), 1, "glare");
    assert!(sim.take(A).is_empty(), "not relayed");
    // A's re-INVITE completes normally.
    sim.send(B, &answer(&relayed, "200 OK", None, SDP));
    sim.run(20 * MS);
    assert_eq!(requests(&sim.take(B), "ACK").len(), 1);
    let at_a = sim.take(A);
    let ok = responses(&at_a, 200);
    assert_eq!(ok.len(), 1);
    assert_eq!(ok[0].headers.get("CSeq"), Some("2 INVITE"));
}

#[test]
fn a_relayed_reinvite_is_resent_and_its_2xx_resent_until_the_ack_rfc3261_17() {
    let mut sim = Sim::new(settings());
    let call = establish(&mut sim, "re-rtx");
    sim.fault(super::sim::CORE, B, "INVITE", Fault::Drop, 1);
    sim.fault(A, super::sim::CORE, "ACK", Fault::Drop, 1);
    sim.send(
        A,
        &Phone {
            call_id: "re-rtx",
            from: A_FROM,
            to: &call.a_to,
            port: 5061,
        }
        .request("INVITE", 2, "z9hG4bKr1", SDP),
    );
    sim.run(T1 + 20 * MS);
    let relayed = requests(&sim.take(B), "INVITE")[0].clone();
    sim.send(B, &answer(&relayed, "200 OK", None, SDP));
    sim.run(20 * MS);
    let ok = responses(&sim.take(A), 200)[0].clone();
    sim.send(
        A,
        &Phone {
            call_id: "re-rtx",
            from: A_FROM,
            to: &call.a_to,
            port: 5061,
        }
        .request("ACK", 2, "z9hG4bKr1a", ""),
    );
    sim.run(T1);
    let again = sim.take(A);
    assert_eq!(responses(&again, 200), [&ok], "the lost ACK: the 2xx again");
    sim.send(
        A,
        &Phone {
            call_id: "re-rtx",
            from: A_FROM,
            to: &call.a_to,
            port: 5061,
        }
        .request("ACK", 2, "z9hG4bKr1b", ""),
    );
    sim.run(Duration::from_secs(10));
    assert!(sim.take(A).is_empty(), "acknowledged");
}

#[test]
fn an_unanswered_relayed_reinvite_gets_408_and_the_call_goes_on() {
    let mut sim = Sim::new(settings());
    let call = establish(&mut sim, "re-408");
    sim.fault(super::sim::CORE, B, "INVITE", Fault::Drop, 100);
    sim.send(
        A,
        &Phone {
            call_id: "re-408",
            from: A_FROM,
            to: &call.a_to,
            port: 5061,
        }
        .request("INVITE", 2, "z9hG4bKt1", SDP),
    );
    sim.run(TIMEOUT + 100 * MS);
    let at_a = sim.take(A);
    let timeout = responses(&at_a, 408);
    assert_eq!(timeout.len(), 1);
    assert_eq!(timeout[0].headers.get("CSeq"), Some("2 INVITE"));
    assert!(sim.records().is_empty(), "the call itself goes on");
    sim.send(
        A,
        &Phone {
            call_id: "re-408",
            from: A_FROM,
            to: &call.a_to,
            port: 5061,
        }
        .request("INVITE", 3, "z9hG4bKt2", SDP),
    );
    sim.run(20 * MS);
    assert_eq!(
        responses(&sim.take(A), 100).len(),
        1,
        "a new re-INVITE is taken (not 491)"
    );
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
    sim.fault(super::sim::CORE, B, "INVITE", Fault::Drop, 100);
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

/// Relay mode, with the media proxy's answer given by the test.
fn relay_settings() -> super::Settings {
    let mut config = settings();
    config.media_mode = MediaMode::Relay;
    config
}

fn plan() -> MediaPlan {
    MediaPlan {
        node: "sim".into(),
        endpoint: "http://sim".into(),
        advertised: "192.0.2.10".parse().unwrap(),
        caller_ports: vec![30_000],
        callee_ports: vec![30_002],
    }
}

/// Answers the last allocation the core asked for.
fn allocated(sim: &mut Sim, result: Result<MediaPlan, MediaError>) -> Leg {
    let (call, leg, signaling_ip) = sim
        .outputs
        .iter()
        .rev()
        .find_map(|o| match o {
            Output::Allocate {
                call,
                offer_leg,
                offer,
                ..
            } => Some((*call, *offer_leg, offer.signaling_ip)),
            _ => None,
        })
        .expect("an allocation");
    // The proxy is told where the offering leg's SIP came from (its NAT's public side).
    assert_eq!(
        signaling_ip,
        Some(std::net::IpAddr::from([127, 0, 0, 1])),
        "the offer's signaling address"
    );
    sim.input(Input::MediaReady { call, result });
    leg
}

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

/// A relayed call on node `node-1` (`http://n1`), answered and acknowledged.
fn relayed_call(sim: &mut Sim, call_id: &str) -> (Request, String) {
    sim.send(A, &invite(call_id, &format!("z9hG4bK{call_id}"), SDP));
    sim.run(20 * MS);
    let first = MediaPlan {
        node: "node-1".into(),
        endpoint: "http://n1".into(),
        ..plan()
    };
    allocated(sim, Ok(first));
    sim.run(20 * MS);
    let to_b = requests(&sim.take(B), "INVITE")[0].clone();
    sim.send(
        B,
        &answer(&to_b, "200 OK", Some("bt"), &SDP.replace("4000", "5000")),
    );
    sim.run(20 * MS);
    let ok = responses(&sim.take(A), 200)[0].clone();
    let a_to = ok.headers.get("To").unwrap().to_owned();
    let ack = Phone {
        call_id,
        from: A_FROM,
        to: &a_to,
        port: 5061,
    }
    .request("ACK", 1, &format!("z9hG4bK{call_id}a"), "");
    sim.send(A, &ack);
    sim.run(20 * MS);
    sim.take(B);
    (to_b, a_to)
}

fn relocation(sim: &Sim) -> Option<(super::CallRef, u16, u16, String)> {
    sim.outputs.iter().rev().find_map(|o| match o {
        Output::Relocate {
            call,
            caller,
            callee,
            lost,
            ..
        } => Some((
            *call,
            caller.media[0].port,
            callee.media[0].port,
            lost.as_ref().map(ToString::to_string).unwrap_or_default(),
        )),
        _ => None,
    })
}

#[test]
fn a_call_on_a_lost_node_moves_and_both_legs_are_offered_the_new_relay() {
    let mut sim = Sim::new(relay_settings());
    relayed_call(&mut sim, "moved");
    sim.input(Input::MediaNodeLost {
        endpoint: "http://n1".into(),
        reason: "stopped answering its health checks".into(),
    });
    let (call, caller_port, callee_port, lost) = relocation(&sim).expect("a relocation");
    assert_eq!(
        (caller_port, callee_port, lost.as_str()),
        (4000, 5000, "http://n1"),
        "each leg's own last SDP, and the node to avoid"
    );
    let second = MediaPlan {
        node: "node-2".into(),
        endpoint: "http://n2".into(),
        advertised: "192.0.2.20".parse().unwrap(),
        caller_ports: vec![40_000],
        callee_ports: vec![40_002],
    };
    sim.input(Input::Relocated {
        call,
        result: Ok(second),
    });
    sim.run(20 * MS);
    let at_a = sim.take(A);
    let at_b = sim.take(B);
    let to_a = requests(&at_a, "INVITE")[0].clone();
    let to_b = requests(&at_b, "INVITE")[0].clone();
    let offer_a = String::from_utf8(to_a.body.clone()).unwrap();
    let offer_b = String::from_utf8(to_b.body.clone()).unwrap();
    assert!(offer_a.contains("c=IN IP4 192.0.2.20") && offer_a.contains("m=audio 40000"));
    assert!(offer_b.contains("c=IN IP4 192.0.2.20") && offer_b.contains("m=audio 40002"));
    assert!(
        offer_a.contains("o=- 1 2 IN IP4") && offer_b.contains("o=- 1 2 IN IP4"),
        "a new offer raises the o= version (RFC 3264 section 8): {offer_a}"
    );
    assert_eq!(to_a.call_id(), "moved");
    assert_eq!(
        to_a.headers.get("CSeq"),
        Some("1 INVITE"),
        "our first request to A"
    );
    // The callee re-INVITEs while the move is out: glare, 491 (RFC 3261 section 14.2).
    let (b_from, b_to) = (
        to_b.headers.get("To").unwrap().to_owned(),
        to_b.headers.get("From").unwrap().to_owned(),
    );
    let glare = Phone {
        call_id: to_b.call_id(),
        from: &b_from,
        to: &b_to,
        port: 5062,
    }
    .request("INVITE", 1, "z9hG4bKmovedglare", SDP);
    sim.send(B, &glare);
    sim.run(20 * MS);
    assert_eq!(responses(&sim.take(B), 491).len(), 1);
    sim.send(A, &answer(&to_a, "200 OK", None, SDP));
    sim.send(
        B,
        &answer(&to_b, "200 OK", None, &SDP.replace("4000", "5000")),
    );
    sim.run(20 * MS);
    assert_eq!(requests(&sim.take(A), "ACK").len(), 1);
    assert_eq!(requests(&sim.take(B), "ACK").len(), 1);
    let updates: Vec<(String, Leg)> = sim
        .outputs
        .iter()
        .filter_map(|o| match o {
            Output::UpdateMedia { endpoint, leg, .. } => Some((endpoint.to_string(), *leg)),
            _ => None,
        })
        .filter(|(endpoint, _)| endpoint == "http://n2")
        .collect();
    assert_eq!(
        updates.len(),
        2,
        "both legs' answers go to the new node: {updates:?}"
    );
    // The lost node timing out its abandoned session says nothing about the call.
    sim.input(Input::MediaEnded {
        endpoint: "http://n1".into(),
        call_id: key("moved"),
        reason: "timeout".into(),
    });
    sim.run(20 * MS);
    assert!(sim.records().is_empty(), "the call goes on");
    let a_to = to_a.headers.get("From").unwrap().to_owned();
    let bye = Phone {
        call_id: "moved",
        from: A_FROM,
        to: &a_to,
        port: 5061,
    }
    .request("BYE", 2, "z9hG4bKmovedbye", "");
    sim.send(A, &bye);
    sim.run(20 * MS);
    let records = sim.records();
    assert_eq!(records.len(), 1);
    let record = records[0];
    assert_eq!(record.media_node.as_deref(), Some("node-2"));
    assert_eq!(
        record.media_endpoint.as_ref().map(|e| e.as_str()),
        Some("http://n2"),
        "released there"
    );
    assert_eq!(record.media_moves.len(), 1);
    assert_eq!(record.media_moves[0].from, "node-1");
    assert_eq!(record.media_moves[0].to.as_deref(), Some("node-2"));
}

#[test]
fn a_call_no_node_can_take_ends_on_both_legs_naming_the_lost_node() {
    let mut sim = Sim::new(relay_settings());
    relayed_call(&mut sim, "stranded");
    sim.input(Input::MediaNodeLost {
        endpoint: "http://n1".into(),
        reason: "restarted without its calls".into(),
    });
    let (call, ..) = relocation(&sim).expect("a relocation");
    sim.input(Input::Relocated {
        call,
        result: Err(MediaError::Unavailable("no media proxy node is up".into())),
    });
    sim.run(20 * MS);
    assert_eq!(requests(&sim.take(A), "BYE").len(), 1);
    assert_eq!(requests(&sim.take(B), "BYE").len(), 1);
    let records = sim.records();
    assert_eq!(records[0].hangup_side, HangupSide::System);
    assert!(
        records[0]
            .end_reason
            .starts_with("media proxy node-1 lost (restarted without its calls); no other node could take the call"),
        "{}",
        records[0].end_reason
    );
    assert_eq!(records[0].media_moves[0].to, None);
}

#[test]
fn a_call_still_ringing_on_a_lost_node_fails_with_503_and_cancels_the_callee() {
    let mut sim = Sim::new(relay_settings());
    sim.send(A, &invite("ringing", "z9hG4bKringing", SDP));
    sim.run(20 * MS);
    let first = MediaPlan {
        endpoint: "http://n1".into(),
        ..plan()
    };
    allocated(&mut sim, Ok(first));
    sim.run(20 * MS);
    let to_b = requests(&sim.take(B), "INVITE")[0].clone();
    sim.send(B, &answer(&to_b, "180 Ringing", Some("bt"), ""));
    sim.run(20 * MS);
    sim.take(A);
    sim.input(Input::MediaNodeLost {
        endpoint: "http://n1".into(),
        reason: "stopped answering its health checks".into(),
    });
    sim.run(20 * MS);
    assert_eq!(responses(&sim.take(A), 503).len(), 1);
    assert_eq!(requests(&sim.take(B), "CANCEL").len(), 1);
    assert!(relocation(&sim).is_none());
    // A node the call is not on changes nothing.
    let mut sim = Sim::new(relay_settings());
    relayed_call(&mut sim, "elsewhere");
    sim.input(Input::MediaNodeLost {
        endpoint: "http://n9".into(),
        reason: "stopped answering its health checks".into(),
    });
    assert!(relocation(&sim).is_none());
}

#[test]
fn a_491_to_our_move_is_retried_after_the_rfc3261_14_1_delay() {
    let mut sim = Sim::new(relay_settings());
    relayed_call(&mut sim, "glare-move");
    sim.input(Input::MediaNodeLost {
        endpoint: "http://n1".into(),
        reason: "stopped answering its health checks".into(),
    });
    let (call, ..) = relocation(&sim).expect("a relocation");
    let second = MediaPlan {
        node: "node-2".into(),
        endpoint: "http://n2".into(),
        ..plan()
    };
    sim.input(Input::Relocated {
        call,
        result: Ok(second),
    });
    sim.run(20 * MS);
    let first = requests(&sim.take(A), "INVITE")[0].clone();
    let to_b = requests(&sim.take(B), "INVITE")[0].clone();
    sim.send(B, &answer(&to_b, "200 OK", None, SDP));
    // The caller is busy with a re-INVITE of its own: 491.
    sim.send(A, &answer(&first, "491 Request Pending", None, ""));
    sim.run(20 * MS);
    assert_eq!(
        requests(&sim.take(A), "ACK").len(),
        1,
        "the 491 is acknowledged"
    );
    // Not the caller's dialog's Call-ID owner: the retry comes within 0-2 s.
    sim.run(Duration::from_secs(2));
    let at_a = sim.take(A);
    let again = requests(&at_a, "INVITE");
    let branches: std::collections::HashSet<_> =
        again.iter().map(|r| r.headers.get("Via")).collect();
    assert_eq!(
        branches.len(),
        1,
        "offered again, once (Timer A resends it unanswered)"
    );
    assert_eq!(again[0].headers.get("CSeq"), Some("2 INVITE"));
    assert_ne!(
        again[0].headers.get("Via"),
        first.headers.get("Via"),
        "a new transaction"
    );
    assert_eq!(again[0].body, first.body, "the same offer");
    sim.send(A, &answer(again[0], "200 OK", None, SDP));
    sim.run(20 * MS);
    assert_eq!(requests(&sim.take(A), "ACK").len(), 1);
    assert!(sim.records().is_empty(), "the call goes on, on node-2");
    assert!(
        sim.core.calls.values().all(|c| c.relocating.is_none()),
        "the move is done"
    );
}

fn stale_releases(sim: &Sim) -> Vec<(String, String)> {
    sim.outputs
        .iter()
        .filter_map(|o| match o {
            Output::ReleaseStale { endpoint, call_id } => {
                Some((endpoint.to_string(), call_id.to_string()))
            }
            _ => None,
        })
        .collect()
}

#[test]
fn a_session_listed_twice_on_a_node_where_no_call_of_ours_is_gets_released() {
    let mut sim = Sim::new(relay_settings());
    relayed_call(&mut sim, "here");
    let listing = |endpoint: &str, ids: &[&str]| Input::MediaSessions {
        endpoint: endpoint.into(),
        call_ids: ids.iter().map(|s| key(s)).collect(),
    };
    // n1 carries "here"; "gone" is no call of ours; n2 holds "here" too (left behind).
    sim.input(listing("http://n1", &["here", "gone"]));
    sim.input(listing("http://n2", &["here"]));
    assert_eq!(stale_releases(&sim), [], "one listing is not enough");
    sim.input(listing("http://n1", &["here", "gone"]));
    sim.input(listing("http://n2", &["here"]));
    assert_eq!(
        stale_releases(&sim),
        [
            ("http://n1".to_owned(), "gone".to_owned()),
            ("http://n2".to_owned(), "here".to_owned()),
        ],
        "the live call's own session stays"
    );
    // Released: it takes two more listings to be released again.
    sim.input(listing("http://n1", &["gone"]));
    assert_eq!(stale_releases(&sim).len(), 2);
}

/// Recording requests the core asked for, in order: (endpoint, call id, action, file stem).
fn recording_requests(sim: &Sim) -> Vec<(String, String, RecordingAction, String)> {
    sim.outputs
        .iter()
        .filter_map(|o| match o {
            Output::Recording { target, action } => Some((
                target.endpoint.to_string(),
                target.call_id.to_string(),
                *action,
                target.file_stem.clone(),
            )),
            _ => None,
        })
        .collect()
}

#[test]
fn policy_records_from_the_answer_and_a_moved_call_records_on_in_new_files() {
    let mut config = relay_settings();
    config.record = true;
    let mut sim = Sim::new(config);
    sim.send(A, &invite("rec", "z9hG4bKrec", SDP));
    sim.run(20 * MS);
    allocated(
        &mut sim,
        Ok(MediaPlan {
            node: "node-1".into(),
            endpoint: "http://n1".into(),
            ..plan()
        }),
    );
    sim.run(20 * MS);
    let to_b = requests(&sim.take(B), "INVITE")[0].clone();
    sim.send(B, &answer(&to_b, "183 Session Progress", Some("bt"), SDP));
    sim.run(20 * MS);
    assert!(
        recording_requests(&sim).is_empty(),
        "early media is not recorded"
    );
    sim.send(B, &answer(&to_b, "200 OK", Some("bt"), SDP));
    sim.run(20 * MS);
    let ok = responses(&sim.take(A), 200)[0].clone();
    let a_to = ok.headers.get("To").unwrap().to_owned();
    let start = RecordingAction::Start { pcap: false };
    assert_eq!(
        recording_requests(&sim),
        [("http://n1".into(), "rec".into(), start, String::new())],
        "started once, at the answer, on the call's node, named by the caller's Call-ID"
    );
    // An operator pauses it (by the callee leg's Call-ID).
    let b_call_id = to_b.call_id().to_owned();
    let target = sim
        .core
        .recording_request(&b_call_id, RecordingAction::Pause)
        .unwrap();
    assert_eq!(
        (target.endpoint.as_str(), target.call_id.as_str()),
        ("http://n1", "rec")
    );
    sim.input(Input::RecordingDone {
        call: target.call,
        action: RecordingAction::Pause,
        result: Ok(()),
    });
    // The node is lost; the call moves, and its paused recording is set up again there.
    sim.input(Input::MediaNodeLost {
        endpoint: "http://n1".into(),
        reason: "stopped answering its health checks".into(),
    });
    let (call, ..) = relocation(&sim).expect("a relocation");
    sim.input(Input::Relocated {
        call,
        result: Ok(MediaPlan {
            node: "node-2".into(),
            endpoint: "http://n2".into(),
            ..plan()
        }),
    });
    let stem = "rec-moved-1".to_owned();
    assert_eq!(
        recording_requests(&sim)[1..],
        [
            ("http://n2".into(), "rec".into(), start, stem.clone()),
            (
                "http://n2".into(),
                "rec".into(),
                RecordingAction::Pause,
                stem
            ),
        ],
        "new files on the new node, paused as it was"
    );
    sim.input(Input::RecordingDone {
        call,
        action: start,
        result: Err(MediaError::Refused("disk full".into())),
    });
    sim.send(
        A,
        &Phone {
            call_id: "rec",
            from: A_FROM,
            to: &a_to,
            port: 5061,
        }
        .request("BYE", 2, "z9hG4bKrecbye", ""),
    );
    sim.run(20 * MS);
    let record = sim.records()[0].clone();
    assert_eq!(record.recording.last, Some(RecordingAction::Pause));
    assert_eq!(record.recording.restarts, 1);
    assert_eq!(
        record.recording.failure.as_deref(),
        Some("start failed: media proxy refused the media: disk full"),
        "kept for the CDR's diagnosis"
    );
}

#[test]
fn recording_policy_user_beats_route_beats_default_and_direct_calls_cannot_be_recorded() {
    let mut config = settings();
    config.record = true;
    config.users.insert(
        "alice".into(),
        crate::policy::User {
            password: Some("x".into()),
            ha1: None,
            ha1_sha256: None,
            media_mode: None,
            record: Some(true),
        },
    );
    config.users.insert(
        "carol".into(),
        crate::policy::User {
            password: Some("x".into()),
            ha1: None,
            ha1_sha256: None,
            media_mode: None,
            record: None,
        },
    );
    let sim = Sim::new(config);
    assert!(
        sim.core.records("alice", Some(false)),
        "the user's own setting"
    );
    assert!(!sim.core.records("carol", Some(false)), "the route's");
    assert!(sim.core.records("carol", None), "--record");
    assert!(sim.core.records("nobody", None));
    // A direct call (these settings' default) has no session to record.
    let mut sim = Sim::new(settings());
    sim.send(A, &invite("direct", "z9hG4bKdirect", SDP));
    sim.run(20 * MS);
    assert_eq!(
        sim.core
            .recording_request("direct", RecordingAction::Start { pcap: false }),
        Err(super::RecordingRefused::Direct("direct".into()))
    );
    assert_eq!(
        sim.core.recording_request("nobody", RecordingAction::Stop),
        Err(super::RecordingRefused::NoCall("nobody".into()))
    );
    assert!(recording_requests(&sim).is_empty());
}

/// RFC 3261 section 8.2.2.3: an INVITE requiring an extension we do not implement gets 420
/// with an Unsupported header naming it (Proxy-Require too), and no call starts.
#[test]
fn an_unknown_required_extension_is_refused_with_420_naming_it() {
    let mut sim = Sim::new(settings());
    let text = invite("ext", "z9hG4bKext", SDP).replace(
        "Max-Forwards: 70\n",
        "Max-Forwards: 70\nRequire: nothingknown\nProxy-Require: foo, bar\n",
    );
    sim.send(A, &text);
    sim.run(20 * MS);
    let at_a = sim.take(A);
    let refused = responses(&at_a, 420);
    assert_eq!(refused.len(), 1, "{at_a:?}");
    assert_eq!(
        refused[0].headers.get("Unsupported"),
        Some("nothingknown, foo, bar")
    );
    assert!(
        requests(&sim.take(B), "INVITE").is_empty(),
        "no call placed"
    );
    assert!(sim.records().is_empty());
    assert_clean(&mut sim);
}

/// RFC 3261 section 12.2.1.1 keeps RFC 2543 callers working: an INVITE whose From has no tag
/// is a call like any other, answered and hung up, not refused 400.
#[test]
fn an_rfc2543_invite_without_a_from_tag_is_a_call() {
    let mut sim = Sim::new(settings());
    let text = invite("old", "z9hG4bKold", SDP).replace(
        "From: <sip:alice@127.0.0.1>;tag=af",
        "From: <sip:alice@127.0.0.1>",
    );
    sim.send(A, &text);
    sim.run(20 * MS);
    assert!(responses(&sim.take(A), 400).is_empty());
    let to_b = requests(&sim.take(B), "INVITE")[0].clone();
    sim.send(B, &answer(&to_b, "200 OK", Some("bt"), SDP));
    sim.run(20 * MS);
    let ok = responses(&sim.take(A), 200)[0].clone();
    assert!(
        !ok.headers.get("From").unwrap().contains("tag="),
        "the From as sent"
    );
    assert!(
        ok.headers.get("To").unwrap().contains("tag="),
        "our tag on the To"
    );
    let a_to = ok.headers.get("To").unwrap().to_owned();
    let caller = Phone {
        call_id: "old",
        from: "<sip:alice@127.0.0.1>",
        to: &a_to,
        port: 5061,
    };
    sim.send(A, &caller.request("ACK", 1, "z9hG4bKolda", ""));
    sim.send(A, &caller.request("BYE", 2, "z9hG4bKoldb", ""));
    sim.run(20 * MS);
    assert_eq!(responses(&sim.take(A), 200).len(), 1, "BYE answered");
    let bye = requests(&sim.take(B), "BYE")[0].clone();
    sim.send(B, &answer(&bye, "200 OK", None, ""));
    sim.run(20 * MS);
    let records = sim.records();
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].disposition, Disposition::Answered);
    assert_clean(&mut sim);
}

/// A body that is not SDP is not read as SDP: 415 with Accept naming what we take, and the
/// refused call still leaves its record.
#[test]
fn a_body_of_another_type_is_refused_415_with_accept() {
    let mut sim = Sim::new(settings());
    let text = invite("text", "z9hG4bKtext", SDP).replace(
        "Content-Type: application/sdp",
        "Content-Type: text/nonsense",
    );
    sim.send(A, &text);
    sim.run(20 * MS);
    let at_a = sim.take(A);
    let refused = responses(&at_a, 415);
    assert_eq!(refused.len(), 1, "{at_a:?}");
    assert_eq!(refused[0].headers.get("Accept"), Some("application/sdp"));
    assert!(requests(&sim.take(B), "INVITE").is_empty());
    let records = sim.records();
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].sip_status, 415);
    // SDP with parameters on its type is SDP.
    let text = invite("sdp-params", "z9hG4bKsdpp", SDP).replace(
        "Content-Type: application/sdp",
        "Content-Type: Application/SDP; charset=utf-8",
    );
    sim.send(A, &text);
    sim.run(20 * MS);
    assert_eq!(requests(&sim.take(B), "INVITE").len(), 1, "placed");
}

/// A caller whose Accept leaves out SDP cannot take our answer: 406 before anything else.
/// Wildcards and SDP among other types are accepted.
#[test]
fn a_caller_that_accepts_no_sdp_gets_406() {
    let mut sim = Sim::new(settings());
    let with_accept = |call_id: &str, accept: &str| {
        invite(call_id, &format!("z9hG4bK{call_id}"), SDP).replace(
            "Max-Forwards: 70\n",
            &format!("Max-Forwards: 70\nAccept: {accept}\n"),
        )
    };
    sim.send(A, &with_accept("nonsense", "text/nonsense"));
    sim.run(20 * MS);
    assert_eq!(responses(&sim.take(A), 406).len(), 1);
    assert!(requests(&sim.take(B), "INVITE").is_empty());
    for (call_id, accept) in [
        ("several", "text/html, application/sdp;level=1"),
        ("wild", "*/*"),
        ("app", "application/*"),
    ] {
        sim.send(A, &with_accept(call_id, accept));
        sim.run(20 * MS);
        assert!(responses(&sim.take(A), 406).is_empty(), "{accept}");
        assert_eq!(requests(&sim.take(B), "INVITE").len(), 1, "{accept}");
    }
}

/// The `Authorization` value answering `challenge` (a `WWW-`/`Proxy-Authenticate` value)
/// for `user` with `password`, MD5 and `qop=auth`.
fn digest(challenge: &str, method: &str, uri: &str, user: &str, password: &str) -> String {
    use crate::auth::Algorithm;
    let field = |name: &str| {
        let start = challenge.find(&format!("{name}=\"")).unwrap() + name.len() + 2;
        challenge[start..].split('"').next().unwrap().to_owned()
    };
    let (realm, nonce) = (field("realm"), field("nonce"));
    let ha1 = Algorithm::Md5.hash(&format!("{user}:{realm}:{password}"));
    let ha2 = Algorithm::Md5.hash(&format!("{method}:{uri}"));
    let response = Algorithm::Md5.hash(&format!("{ha1}:{nonce}:00000001:c0ffee:auth:{ha2}"));
    format!(
        "Digest username=\"{user}\", realm=\"{realm}\", nonce=\"{nonce}\", uri=\"{uri}\", \
         response=\"{response}\", algorithm=MD5, qop=auth, nc=00000001, cnonce=\"c0ffee\""
    )
}

#[test]
fn a_banned_source_gets_nothing_through_whatever_tags_it_writes_but_its_call_that_is_up_goes_on() {
    use crate::sip::{Peer, Transport};
    // A guesser at its own address, not trusted, that has a call up as alice.
    let guesser = Peer {
        transport: Transport::Udp,
        addr: "192.0.2.7:5061".parse().unwrap(),
    };
    let mut config = settings();
    config.trusted.clear();
    config.users.insert(
        "alice".into(),
        crate::policy::User {
            password: Some("secret".into()),
            ha1: None,
            ha1_sha256: None,
            media_mode: None,
            record: None,
        },
    );
    let mut sim = Sim::new(config);
    sim.send(guesser, &invite("up", "z9hG4bKup1", SDP));
    sim.run(20 * MS);
    let challenge = responses(&sim.take(guesser), 407)[0]
        .headers
        .get("Proxy-Authenticate")
        .unwrap()
        .to_owned();
    let authorized = invite("up", "z9hG4bKup2", SDP).replace(
        "CSeq: 1 INVITE\n",
        &format!(
            "CSeq: 2 INVITE\nProxy-Authorization: {}\n",
            digest(&challenge, "INVITE", "sip:bob@127.0.0.1", "alice", "secret")
        ),
    );
    sim.send(guesser, &authorized);
    sim.run(20 * MS);
    let to_b = requests(&sim.take(B), "INVITE")[0].clone();
    sim.send(B, &answer(&to_b, "200 OK", Some("bt"), SDP));
    sim.run(20 * MS);
    let a_to = responses(&sim.take(guesser), 200)[0]
        .headers
        .get("To")
        .unwrap()
        .to_owned();
    let dialog = Phone {
        call_id: "up",
        from: A_FROM,
        to: &a_to,
        port: 5061,
    };
    sim.send(guesser, &dialog.request("ACK", 2, "z9hG4bKupa", ""));
    sim.run(20 * MS);

    // Nine wrong passwords for alice: four forgiven as typing mistakes at her own address,
    // the fifth forgets the pair and counts against the address, four more ban it.
    let register = |n: u32, to_tag: &str, authorization: &str| {
        format!(
            "REGISTER sip:127.0.0.1 SIP/2.0\nVia: SIP/2.0/UDP 192.0.2.7:5061;branch=z9hG4bKreg{n}\n\
             From: <sip:alice@127.0.0.1>;tag=r{n}\nTo: <sip:alice@127.0.0.1>{to_tag}\nCall-ID: reg{n}\n\
             CSeq: 1 REGISTER\nContact: <sip:alice@192.0.2.7:5061>\nMax-Forwards: 70\n\
             {authorization}Content-Length: 0\n\n"
        )
    };
    for n in 0..9 {
        sim.send(guesser, &register(n, "", ""));
        sim.run(20 * MS);
        let challenge = responses(&sim.take(guesser), 401)[0]
            .headers
            .get("WWW-Authenticate")
            .unwrap()
            .to_owned();
        let guess = digest(
            &challenge,
            "REGISTER",
            "sip:127.0.0.1",
            "alice",
            &format!("guess{n}"),
        );
        sim.send(
            guesser,
            &register(100 + n, "", &format!("Authorization: {guess}\n")),
        );
        sim.run(20 * MS);
        assert_eq!(
            responses(&sim.take(guesser), 401).len(),
            1,
            "guess {n} is checked and refused"
        );
    }
    assert!(
        sim.outputs
            .iter()
            .any(|o| matches!(o, Output::Banned { scope: "source" })),
        "the address is banned"
    );

    // Banned: a REGISTER, with or without a To tag of its own making, and an OPTIONS
    // claiming a dialog, all go unanswered and unread.
    sim.send(guesser, &register(200, "", ""));
    sim.send(guesser, &register(201, ";tag=forged", ""));
    sim.send(
        guesser,
        &Phone {
            call_id: "no-such-call",
            from: "<sip:mallory@192.0.2.7>;tag=m",
            to: "<sip:bob@127.0.0.1>;tag=forged",
            port: 5061,
        }
        .request("OPTIONS", 1, "z9hG4bKopt", ""),
    );
    sim.run(20 * MS);
    assert!(
        sim.take(guesser).is_empty(),
        "nothing answered while banned"
    );
    let dropped = sim
        .outputs
        .iter()
        .filter(|o| matches!(o, Output::Limited { action: "dropped" }))
        .count();
    assert_eq!(dropped, 3);

    // Its call that was up goes on: its BYE reaches the callee and is answered.
    sim.send(guesser, &dialog.request("BYE", 3, "z9hG4bKupb", ""));
    sim.run(20 * MS);
    let bye = requests(&sim.take(B), "BYE")[0].clone();
    sim.send(B, &answer(&bye, "200 OK", None, ""));
    sim.run(20 * MS);
    assert_eq!(responses(&sim.take(guesser), 200).len(), 1, "BYE answered");
    assert_eq!(sim.records().len(), 1);
    assert_eq!(sim.records()[0].hangup_side, HangupSide::Caller);
    assert_clean(&mut sim);
}

/// At the answer the core asks for a durable record of the call (so a crash still leaves its
/// CDR), once; the record ends "now" by the system, and the finished call's own record
/// replaces it.
#[test]
fn an_answered_call_is_recorded_durably_once_at_the_answer() {
    let mut sim = Sim::new(settings());
    let call = establish(&mut sim, "durable");
    let open: Vec<&super::CallRecord> = sim
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
    assert_eq!(open[0].end_reason, super::CRASHED);
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

#[test]
fn an_invite_whose_call_id_cannot_key_a_call_is_refused_before_anything_is_kept() {
    let mut sim = Sim::new(settings());
    // Legal SIP, but 300 characters: more than a media session key may hold.
    let long = "k".repeat(300);
    sim.send(A, &invite(&long, "z9hG4bKlong", SDP));
    sim.run(20 * MS);
    let at_a = sim.take(A);
    let refused = responses(&at_a, 400);
    assert_eq!(refused.len(), 1, "{at_a:?}");
    assert_eq!(refused[0].reason, "Bad Request (Call-ID unusable)");
    assert!(sim.take(B).is_empty(), "the callee is never asked");
    assert!(sim.records().is_empty(), "nothing was kept, so no record");
    // A Call-ID at the limit still makes a call.
    let at_limit = "k".repeat(256);
    sim.send(A, &invite(&at_limit, "z9hG4bKlimit", SDP));
    sim.run(20 * MS);
    assert_eq!(requests(&sim.take(B), "INVITE").len(), 1);
}
