//! Transfer by REFER (RFC 3515) handled by the B2BUA: the transferee connected to the target
//! by a new leg and a new media session, the transferor told by NOTIFY and hung up, a record
//! per pairing linked to each other; failures that leave the call up; REFERs refused.

use proto::domain::Leg;

use super::{
    A_FROM, Established, MS, assert_clean, b_dialog, establish, establish_relayed, key,
    last_allocation,
};
use crate::call::sim::{A, B, C, Phone, SDP, Sim, answer, requests, responses, settings};
use crate::call::{CallRecord, HangupSide, Input, MediaPlan, Output, Settings};
use crate::policy::MediaMode;
use crate::sip::message::{Message, Request};

/// The target's SDP offer (its own port).
pub(super) const CAROL_SDP: &str = "v=0\r\no=carol 7 7 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 4300 RTP/AVP 0\r\n";

/// Routes: bob's prefix to B, carol's to C, nothing else.
pub(super) fn routed(mode: MediaMode) -> Settings {
    let mut config = settings();
    config.media_mode = mode;
    config.routes = ["bob=sip:127.0.0.1:5062", "carol=sip:127.0.0.1:5063"]
        .iter()
        .map(|text| {
            let mut route: crate::policy::Route = text.parse().unwrap();
            route.resolve().unwrap();
            route
        })
        .collect();
    config
}

/// The new pairing's media session.
pub(super) fn plan2() -> MediaPlan {
    MediaPlan {
        node: "sim".into(),
        endpoint: "http://sim".into(),
        advertised: "192.0.2.10".parse().unwrap(),
        caller_ports: vec![31_000],
        callee_ports: vec![31_002],
    }
}

/// Bob (the callee) in the callee's dialog.
pub(super) fn bob(call: &Established) -> (String, String, String) {
    let (from, to) = b_dialog(call);
    (call.to_b.call_id().to_owned(), from, to)
}

/// A REFER from bob to `target` with CSeq `cseq`.
pub(super) fn refer(call: &Established, cseq: u32, branch: &str, target: &str) -> String {
    let (call_id, from, to) = bob(call);
    Phone {
        call_id: &call_id,
        from: &from,
        to: &to,
        port: 5062,
    }
    .request("REFER", cseq, branch, "")
    .replace(
        "Max-Forwards: 70\n",
        &format!("Max-Forwards: 70\nRefer-To: <{target}>\nReferred-By: <sip:bob@127.0.0.1>\n"),
    )
}

/// The sipfrag status lines of the NOTIFYs in `messages`, answering each 200.
pub(super) fn notified(sim: &mut Sim, messages: &[Message]) -> Vec<String> {
    let mut lines = Vec::new();
    for notify in requests(messages, "NOTIFY") {
        assert_eq!(
            notify.headers.get("Content-Type"),
            Some("message/sipfrag;version=2.0")
        );
        assert!(notify.headers.get("Event").unwrap().starts_with("refer"));
        let body = String::from_utf8_lossy(&notify.body).trim().to_owned();
        let state = notify.headers.get("Subscription-State").unwrap();
        assert_eq!(
            state.starts_with("terminated"),
            !body.starts_with("SIP/2.0 1"),
            "a final status ends the subscription: {state}"
        );
        lines.push(body);
        sim.send(B, &answer(notify, "200 OK", None, ""));
    }
    lines
}

/// [`notified`] for what reached bob so far.
pub(super) fn notified_at_b(sim: &mut Sim) -> Vec<String> {
    let at_b = sim.take(B);
    notified(sim, &at_b)
}

pub(super) fn text(request: &Request) -> String {
    String::from_utf8_lossy(&request.body).into_owned()
}

/// The media legs pointed at new SDP under `call_id`, with the SDP's first port.
fn updates_of(sim: &Sim, call_id: &str) -> Vec<(Leg, u16)> {
    sim.outputs
        .iter()
        .filter_map(|o| match o {
            Output::UpdateMedia {
                call_id: id,
                leg,
                sdp,
                ..
            } if id.as_str() == call_id => Some((*leg, sdp.media[0].port)),
            _ => None,
        })
        .collect()
}

pub(super) fn transfers(sim: &Sim) -> Vec<&'static str> {
    sim.outputs
        .iter()
        .filter_map(|o| match o {
            Output::Transfer { outcome } => Some(*outcome),
            _ => None,
        })
        .collect()
}

#[test]
fn a_blind_transfer_by_the_callee_moves_the_caller_to_the_target_with_a_record_per_pairing() {
    let mut sim = Sim::new(routed(MediaMode::Relay));
    let call = establish_relayed(&mut sim, "xfer");
    sim.send(B, &refer(&call, 1, "z9hG4bKref1", "sip:carol@127.0.0.1"));
    sim.run(20 * MS);
    let at_b = sim.take(B);
    assert_eq!(responses(&at_b, 202).len(), 1, "{at_b:?}");
    assert_eq!(notified(&mut sim, &at_b), ["SIP/2.0 100 Trying"]);
    // A new leg to carol: a late offer from the transferee, Referred-By kept.
    let at_c = sim.take(C);
    let to_c = requests(&at_c, "INVITE");
    assert_eq!(to_c.len(), 1, "{at_c:?}");
    let to_c = to_c[0].clone();
    assert!(to_c.body.is_empty(), "the target offers");
    assert!(to_c.uri.starts_with("sip:carol@"), "{}", to_c.uri);
    assert!(to_c.headers.get("From").unwrap().contains("sip:alice@"));
    assert_eq!(to_c.headers.get("Referred-By"), Some("<sip:bob@127.0.0.1>"));
    assert_ne!(to_c.call_id(), "xfer");
    sim.send(C, &answer(&to_c, "180 Ringing", Some("ct"), ""));
    sim.run(20 * MS);
    assert_eq!(notified_at_b(&mut sim), ["SIP/2.0 180 Ringing"]);
    sim.send(C, &answer(&to_c, "200 OK", Some("ct"), CAROL_SDP));
    sim.run(20 * MS);
    // The new pairing's own media session, offered by carol on bob's (the callee's) leg.
    let (new_call, offer_leg, new_key) = last_allocation(&sim);
    assert_eq!(new_key, key("xfer;transfer=1"));
    assert_eq!(offer_leg, Leg::Callee);
    assert!(
        sim.take(C).is_empty(),
        "carol's ACK waits for alice's answer"
    );
    sim.input(Input::MediaReady {
        call: new_call,
        result: Ok(plan2()),
    });
    sim.run(20 * MS);
    // Alice is re-INVITEd onto the new session with carol's offer.
    let at_a = sim.take(A);
    let reinvite = requests(&at_a, "INVITE");
    assert_eq!(reinvite.len(), 1, "{at_a:?}");
    let reinvite = reinvite[0].clone();
    assert_eq!(reinvite.call_id(), "xfer");
    let offer = text(&reinvite);
    assert!(
        offer.contains("c=IN IP4 192.0.2.10") && offer.contains("m=audio 31000"),
        "{offer}"
    );
    // RFC 3264 section 8: the session alice knows (bob's `o=- 1 1`), one version up; not
    // carol's own origin.
    assert!(offer.contains("o=- 1 2 IN IP4"), "{offer}");
    let alice_answer = SDP.replace("m=audio 4000", "m=audio 4010");
    sim.send(A, &answer(&reinvite, "200 OK", None, &alice_answer));
    sim.run(20 * MS);
    assert_eq!(
        requests(&sim.take(A), "ACK").len(),
        1,
        "alice's 200 acknowledged"
    );
    let at_c = sim.take(C);
    let ack = requests(&at_c, "ACK");
    assert_eq!(ack.len(), 1, "{at_c:?}");
    let ack_sdp = text(ack[0]);
    assert!(
        ack_sdp.contains("c=IN IP4 192.0.2.10") && ack_sdp.contains("m=audio 31002"),
        "carol gets alice's answer through the relay: {ack_sdp}"
    );
    assert_eq!(
        updates_of(&sim, "xfer;transfer=1"),
        [(Leg::Caller, 4010), (Leg::Callee, 4300)],
        "both legs of the new session point at the phones that now talk"
    );
    // Bob is told it worked and hung up.
    let at_b = sim.take(B);
    assert_eq!(notified(&mut sim, &at_b), ["SIP/2.0 200 OK"]);
    let bye = requests(&at_b, "BYE");
    assert_eq!(bye.len(), 1, "{at_b:?}");
    sim.send(B, &answer(bye[0], "200 OK", None, ""));
    // The original pairing's record: transferred by bob, linked to the new one.
    let records: Vec<CallRecord> = sim.records().into_iter().cloned().collect();
    assert_eq!(records.len(), 1, "{records:?}");
    assert_eq!(records[0].call_id, key("xfer"));
    assert_eq!(records[0].hangup_side, HangupSide::Callee);
    assert_eq!(records[0].transferred_to, Some(key("xfer;transfer=1")));
    assert!(
        records[0]
            .end_reason
            .contains("transferred by the callee (bob) to carol"),
        "{}",
        records[0].end_reason
    );
    assert_eq!(transfers(&sim), ["completed"]);
    // A late BYE from bob crossing ours is answered, and does not end the new pairing.
    let (call_id, from, to) = bob(&call);
    let bob_phone = Phone {
        call_id: &call_id,
        from: &from,
        to: &to,
        port: 5062,
    };
    sim.send(B, &bob_phone.request("BYE", 9, "z9hG4bKlatebye", ""));
    sim.run(20 * MS);
    assert_eq!(responses(&sim.take(B), 200).len(), 1);
    assert_eq!(sim.records().len(), 1, "the new pairing goes on");
    // Carol's own re-INVITE (her version up by one) reaches alice as the session she knows.
    let carol_from = format!("{};tag=ct", to_c.headers.get("To").unwrap());
    let carol = Phone {
        call_id: to_c.call_id(),
        from: &carol_from,
        to: to_c.headers.get("From").unwrap(),
        port: 5063,
    };
    let hold = CAROL_SDP.replace("o=carol 7 7", "o=carol 7 8");
    sim.send(C, &carol.request("INVITE", 1, "z9hG4bKcre", &hold));
    sim.run(20 * MS);
    let at_a = sim.take(A);
    let reinvite = requests(&at_a, "INVITE");
    assert_eq!(reinvite.len(), 1, "{at_a:?}");
    assert!(
        text(reinvite[0]).contains("o=- 1 3 IN IP4"),
        "{}",
        text(reinvite[0])
    );
    let reinvite = reinvite[0].clone();
    sim.send(A, &answer(&reinvite, "200 OK", None, &alice_answer));
    sim.run(20 * MS);
    let ok = responses(&sim.take(C), 200)[0].clone();
    sim.send(
        C,
        &carol.request("ACK", 1, "z9hG4bKcreack", "").replace(
            "CSeq: 1 ACK",
            &format!(
                "CSeq: {}",
                ok.headers.get("CSeq").unwrap().replace("INVITE", "ACK")
            ),
        ),
    );
    sim.run(20 * MS);
    sim.take(A);
    // Alice hangs up: carol gets the BYE on its dialog; the new pairing's record.
    let alice = Phone {
        call_id: "xfer",
        from: A_FROM,
        to: &call.a_to,
        port: 5061,
    };
    sim.send(A, &alice.request("BYE", 2, "z9hG4bKxferbye", ""));
    sim.run(20 * MS);
    let at_c = sim.take(C);
    let bye = requests(&at_c, "BYE");
    assert_eq!(bye.len(), 1, "{at_c:?}");
    assert_eq!(bye[0].call_id(), to_c.call_id());
    sim.send(C, &answer(bye[0], "200 OK", None, ""));
    let records: Vec<CallRecord> = sim.records().into_iter().cloned().collect();
    assert_eq!(records.len(), 2);
    let new = &records[1];
    assert_eq!(new.call_id, key("xfer;transfer=1"));
    assert_eq!(new.transferred_from, Some(key("xfer")));
    assert_eq!(
        (new.caller.as_str(), new.callee.as_str()),
        ("alice", "carol")
    );
    assert_eq!(
        new.b_call_id.as_ref().map(|c| c.to_string()),
        Some(to_c.call_id().to_owned())
    );
    assert_eq!(new.hangup_side, HangupSide::Caller);
    assert_eq!(new.media_endpoint, Some("http://sim".into()));
    assert_clean(&mut sim);
}

#[test]
fn a_transfer_the_target_refuses_leaves_the_call_up_and_says_so_in_the_notify_and_the_cdr() {
    let mut sim = Sim::new(routed(MediaMode::Direct));
    let call = establish(&mut sim, "xfer-busy");
    sim.send(B, &refer(&call, 1, "z9hG4bKrb1", "sip:carol@127.0.0.1"));
    sim.run(20 * MS);
    let at_b = sim.take(B);
    assert_eq!(responses(&at_b, 202).len(), 1);
    notified(&mut sim, &at_b);
    let to_c = requests(&sim.take(C), "INVITE")[0].clone();
    sim.send(C, &answer(&to_c, "486 Busy Here", Some("ct"), ""));
    sim.run(20 * MS);
    assert_eq!(
        requests(&sim.take(C), "ACK").len(),
        1,
        "the 486 acknowledged"
    );
    assert_eq!(notified_at_b(&mut sim), ["SIP/2.0 486 Busy Here"]);
    assert!(sim.take(A).is_empty(), "alice never noticed");
    assert!(sim.records().is_empty(), "the call goes on");
    assert_eq!(transfers(&sim), ["failed"]);
    // The call is still alice and bob's: a BYE from alice reaches bob.
    let alice = Phone {
        call_id: "xfer-busy",
        from: A_FROM,
        to: &call.a_to,
        port: 5061,
    };
    sim.send(A, &alice.request("BYE", 2, "z9hG4bKrbbye", ""));
    sim.run(20 * MS);
    let bye = requests(&sim.take(B), "BYE")[0].clone();
    sim.send(B, &answer(&bye, "200 OK", None, ""));
    let record = sim.records()[0].clone();
    assert!(
        record.end_reason.contains(
            "a transfer to carol by the callee failed: the target answered 486 Busy Here"
        ),
        "{}",
        record.end_reason
    );
    assert_eq!(record.transferred_to, None);
    assert_clean(&mut sim);
}

#[test]
fn a_transferor_that_hangs_up_at_once_still_transfers_and_a_failure_then_hangs_up_the_transferee() {
    let mut sim = Sim::new(routed(MediaMode::Direct));
    let call = establish(&mut sim, "xfer-gone");
    sim.send(B, &refer(&call, 1, "z9hG4bKrg1", "sip:carol@127.0.0.1"));
    sim.run(20 * MS);
    notified_at_b(&mut sim);
    let (call_id, from, to) = bob(&call);
    let bob_phone = Phone {
        call_id: &call_id,
        from: &from,
        to: &to,
        port: 5062,
    };
    sim.send(B, &bob_phone.request("BYE", 2, "z9hG4bKrgbye", ""));
    sim.run(20 * MS);
    assert_eq!(responses(&sim.take(B), 200).len(), 1, "bob's BYE answered");
    assert!(
        sim.take(A).is_empty(),
        "alice is not hung up: she is being transferred"
    );
    let to_c = requests(&sim.take(C), "INVITE")[0].clone();
    sim.send(C, &answer(&to_c, "603 Decline", Some("ct"), ""));
    sim.run(20 * MS);
    assert!(
        sim.take(B).is_empty(),
        "no NOTIFY to a transferor that left"
    );
    let at_a = sim.take(A);
    let bye = requests(&at_a, "BYE");
    assert_eq!(bye.len(), 1, "alice is hung up: {at_a:?}");
    sim.send(A, &answer(bye[0], "200 OK", None, ""));
    let record = sim.records()[0].clone();
    assert_eq!(record.hangup_side, HangupSide::Callee);
    assert!(
        record.end_reason.contains("603 Decline")
            && record.end_reason.contains("hung up to transfer"),
        "{}",
        record.end_reason
    );
    assert_clean(&mut sim);
}

#[test]
fn refers_that_cannot_be_taken_are_refused_with_the_status_that_says_why() {
    let mut sim = Sim::new(routed(MediaMode::Direct));
    let call = establish(&mut sim, "xfer-bad");
    let (call_id, from, to) = bob(&call);
    // Unroutable target (no route, not registered): a REFER is no way around the routes.
    sim.send(
        B,
        &refer(&call, 1, "z9hG4bKrx1", "sip:mallory@203.0.113.66"),
    );
    // No Refer-To at all.
    let bare = Phone {
        call_id: &call_id,
        from: &from,
        to: &to,
        port: 5062,
    }
    .request("REFER", 2, "z9hG4bKrx2", "");
    sim.send(B, &bare);
    // Tags that are not the dialog's: someone who knows the Call-ID only.
    let stranger =
        refer(&call, 3, "z9hG4bKrx3", "sip:carol@127.0.0.1").replace(";tag=bt", ";tag=evil");
    sim.send(B, &stranger);
    sim.run(20 * MS);
    let at_b = sim.take(B);
    let statuses: Vec<(u16, String)> = at_b
        .iter()
        .filter_map(|m| match m {
            Message::Response(r) => Some((r.status, r.headers.get("CSeq").unwrap().to_owned())),
            _ => None,
        })
        .collect();
    assert_eq!(
        statuses,
        [
            (404, "1 REFER".to_owned()),
            (400, "2 REFER".to_owned()),
            (481, "3 REFER".to_owned())
        ]
    );
    assert!(sim.take(C).is_empty(), "nobody was called");
    // One under way makes a second one 491.
    sim.send(B, &refer(&call, 4, "z9hG4bKrx4", "sip:carol@127.0.0.1"));
    sim.send(B, &refer(&call, 5, "z9hG4bKrx5", "sip:carol@127.0.0.1"));
    sim.run(20 * MS);
    let at_b = sim.take(B);
    assert_eq!(responses(&at_b, 202).len(), 1, "{at_b:?}");
    assert_eq!(responses(&at_b, 491).len(), 1, "{at_b:?}");
    let to_c = requests(&sim.take(C), "INVITE")[0].clone();
    sim.send(C, &answer(&to_c, "180 Ringing", Some("ct"), ""));
    sim.run(20 * MS);
    assert_eq!(transfers(&sim), ["refused", "refused", "refused"]);
    // The call ends while the target rings: the target is cancelled.
    let alice = Phone {
        call_id: "xfer-bad",
        from: A_FROM,
        to: &call.a_to,
        port: 5061,
    };
    sim.send(A, &alice.request("BYE", 2, "z9hG4bKrxbye", ""));
    sim.run(20 * MS);
    let at_c = sim.take(C);
    let cancel = requests(&at_c, "CANCEL");
    assert_eq!(cancel.len(), 1, "{at_c:?}");
    sim.send(C, &answer(cancel[0], "200 OK", None, ""));
    sim.send(C, &answer(&to_c, "487 Request Terminated", Some("ct"), ""));
    for message in sim.take(B) {
        if let Message::Request(request) = message
            && request.method.as_str() == "BYE"
        {
            sim.send(B, &answer(&request, "200 OK", None, ""));
        }
    }
    assert_clean(&mut sim);
}

#[test]
fn a_transfer_by_the_caller_puts_the_target_in_the_callers_place() {
    let mut sim = Sim::new(routed(MediaMode::Relay));
    let call = establish_relayed(&mut sim, "xfer-a");
    let alice = Phone {
        call_id: "xfer-a",
        from: A_FROM,
        to: &call.a_to,
        port: 5061,
    };
    let refer = alice.request("REFER", 2, "z9hG4bKra1", "").replace(
        "Max-Forwards: 70\n",
        "Max-Forwards: 70\nRefer-To: sip:carol@127.0.0.1\nRefer-Sub: false\n",
    );
    sim.send(A, &refer);
    sim.run(20 * MS);
    let at_a = sim.take(A);
    let accepted = responses(&at_a, 202);
    assert_eq!(accepted.len(), 1, "{at_a:?}");
    assert_eq!(accepted[0].headers.get("Refer-Sub"), Some("false"));
    assert!(
        requests(&at_a, "NOTIFY").is_empty(),
        "no subscription asked"
    );
    let to_c = requests(&sim.take(C), "INVITE")[0].clone();
    assert!(
        to_c.headers.get("From").unwrap().contains("sip:bob@"),
        "from the transferee"
    );
    sim.send(C, &answer(&to_c, "200 OK", Some("ct"), CAROL_SDP));
    sim.run(20 * MS);
    let (new_call, offer_leg) = sim
        .outputs
        .iter()
        .rev()
        .find_map(|o| match o {
            Output::Allocate {
                call, offer_leg, ..
            } => Some((*call, *offer_leg)),
            _ => None,
        })
        .unwrap();
    assert_eq!(offer_leg, Leg::Caller, "carol takes the caller's leg");
    sim.input(Input::MediaReady {
        call: new_call,
        result: Ok(plan2()),
    });
    sim.run(20 * MS);
    let reinvite = requests(&sim.take(B), "INVITE")[0].clone();
    assert_eq!(reinvite.call_id(), call.to_b.call_id());
    assert!(text(&reinvite).contains("m=audio 31002"));
    sim.send(B, &answer(&reinvite, "200 OK", None, SDP));
    sim.run(20 * MS);
    let ack = requests(&sim.take(C), "ACK")[0].clone();
    assert!(text(&ack).contains("m=audio 31000"), "{}", text(&ack));
    let bye = requests(&sim.take(A), "BYE")[0].clone();
    sim.send(A, &answer(&bye, "200 OK", None, ""));
    assert_eq!(sim.records()[0].hangup_side, HangupSide::Caller);
    // Carol hangs up: bob gets the BYE.
    let carol_from = format!("{};tag=ct", to_c.headers.get("To").unwrap());
    let carol = Phone {
        call_id: to_c.call_id(),
        from: &carol_from,
        to: to_c.headers.get("From").unwrap(),
        port: 5063,
    };
    sim.send(C, &carol.request("BYE", 1, "z9hG4bKcbye", ""));
    sim.run(20 * MS);
    assert_eq!(responses(&sim.take(C), 200).len(), 1);
    let bye = requests(&sim.take(B), "BYE")[0].clone();
    sim.send(B, &answer(&bye, "200 OK", None, ""));
    let new = sim.records()[1].clone();
    assert_eq!((new.caller.as_str(), new.callee.as_str()), ("carol", "bob"));
    assert_eq!(new.hangup_side, HangupSide::Caller);
    assert_clean(&mut sim);
}
