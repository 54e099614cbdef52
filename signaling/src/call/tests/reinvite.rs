//! Re-INVITEs relayed from one leg to the other: glare (RFC 3261 section 14.2), retransmission
//! until the 2xx is acknowledged, and a re-INVITE nobody answers.

use std::time::Duration;

use super::{A_FROM, MS, b_dialog, establish};
use crate::call::sim::{A, B, Fault, Phone, SDP, Sim, answer, requests, responses, settings};
use crate::transaction::{T1, TIMEOUT};

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
    sim.fault(crate::call::sim::CORE, B, "INVITE", Fault::Drop, 1);
    sim.fault(A, crate::call::sim::CORE, "ACK", Fault::Drop, 1);
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
    sim.fault(crate::call::sim::CORE, B, "INVITE", Fault::Drop, 100);
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
