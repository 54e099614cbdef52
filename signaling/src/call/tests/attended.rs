//! Attended transfer (RFC 3891 `Replaces` in the REFER's `Refer-To`): bob talks to alice and,
//! in a second call, to carol, then joins them; both his legs are hung up, carol's dialog
//! moves into alice's call on a new media session, and each of the three pairings leaves its
//! row. A `Replaces` that names no dialog of bob's is refused 481 and changes nothing.

use std::time::Duration;

use proto::domain::Leg;

use super::transfer::{CAROL_SDP, notified, plan2, refer, routed, text, transfers};
use super::{A_FROM, MS, allocated, assert_clean, establish_relayed, key, last_allocation, plan};
use crate::call::sim::{A, B, C, Phone, SDP, Sim, answer, invite, requests, responses};
use crate::call::{HangupSide, Input, MediaPlan};
use crate::policy::MediaMode;
use crate::sip::message::Message;

/// Bob's second call, to carol, answered: (the To of bob's dialog, with our tag).
fn bob_calls_carol(sim: &mut Sim) -> String {
    let text = invite("att2", "z9hG4bKatt2", SDP)
        .replace("INVITE sip:bob@", "INVITE sip:carol@")
        .replace("To: <sip:bob@", "To: <sip:carol@")
        .replace(
            "From: <sip:alice@127.0.0.1>;tag=af",
            "From: <sip:bob@127.0.0.1>;tag=bf",
        )
        .replace("127.0.0.1:5061", "127.0.0.1:5062");
    sim.send(B, &text);
    sim.run(20 * MS);
    allocated(
        sim,
        Ok(MediaPlan {
            caller_ports: vec![32_000],
            callee_ports: vec![32_002],
            ..plan()
        }),
    );
    sim.run(20 * MS);
    let to_c = requests(&sim.take(C), "INVITE")[0].clone();
    sim.send(C, &answer(&to_c, "200 OK", Some("ct"), CAROL_SDP));
    sim.run(20 * MS);
    let ok = responses(&sim.take(B), 200)[0].clone();
    let to = ok.headers.get("To").unwrap().to_owned();
    let bob = Phone {
        call_id: "att2",
        from: "<sip:bob@127.0.0.1>;tag=bf",
        to: &to,
        port: 5062,
    };
    sim.send(B, &bob.request("ACK", 1, "z9hG4bKatt2ack", ""));
    sim.run(20 * MS);
    assert_eq!(requests(&sim.take(C), "ACK").len(), 1);
    to
}

fn our_tag(to: &str) -> String {
    to.split("tag=").nth(1).unwrap().to_owned()
}

#[test]
fn an_attended_transfer_joins_the_transferee_and_the_target_and_hangs_up_the_transferor() {
    let mut sim = Sim::new(routed(MediaMode::Relay));
    let call = establish_relayed(&mut sim, "att1");
    let to = bob_calls_carol(&mut sim);
    // A Replaces with a wrong tag names no dialog of bob's: 481, nothing changes.
    let wrong = format!(
        "sip:carol@127.0.0.1?Replaces=att2%3Bto-tag%3D{}%3Bfrom-tag%3Dnot-bob",
        our_tag(&to)
    );
    sim.send(B, &refer(&call, 1, "z9hG4bKattbad", &wrong));
    sim.run(20 * MS);
    assert_eq!(responses(&sim.take(B), 481).len(), 1);
    assert!(sim.take(C).is_empty());
    // The right one: carol is re-INVITEd without SDP on her own dialog.
    let target = format!(
        "sip:carol@127.0.0.1?Replaces=att2%3Bto-tag%3D{}%3Bfrom-tag%3Dbf",
        our_tag(&to)
    );
    sim.send(B, &refer(&call, 2, "z9hG4bKattok", &target));
    sim.run(20 * MS);
    let at_b = sim.take(B);
    assert_eq!(responses(&at_b, 202).len(), 1, "{at_b:?}");
    assert_eq!(notified(&mut sim, &at_b), ["SIP/2.0 100 Trying"]);
    let at_c = sim.take(C);
    let reinvite = requests(&at_c, "INVITE");
    assert_eq!(reinvite.len(), 1, "{at_c:?}");
    let reinvite = reinvite[0].clone();
    assert!(reinvite.body.is_empty(), "carol offers");
    assert!(
        reinvite.headers.get("To").unwrap().contains("tag=ct"),
        "on her dialog"
    );
    let carol_offer = CAROL_SDP.replace("o=carol 7 7", "o=carol 7 8");
    sim.send(C, &answer(&reinvite, "200 OK", None, &carol_offer));
    sim.run(20 * MS);
    let (new_call, offer_leg, new_key) = last_allocation(&sim);
    assert_eq!(new_key, key("att1;transfer=1"));
    assert_eq!(
        offer_leg,
        Leg::Callee,
        "carol takes bob's place in alice's call"
    );
    sim.input(Input::MediaReady {
        call: new_call,
        result: Ok(plan2()),
    });
    sim.run(20 * MS);
    let alice_reinvite = requests(&sim.take(A), "INVITE")[0].clone();
    assert!(text(&alice_reinvite).contains("m=audio 31000"));
    sim.send(A, &answer(&alice_reinvite, "200 OK", None, SDP));
    sim.run(20 * MS);
    let at_c = sim.take(C);
    let ack = requests(&at_c, "ACK");
    assert_eq!(ack.len(), 1, "{at_c:?}");
    assert!(text(ack[0]).contains("m=audio 31002"), "{}", text(ack[0]));
    assert!(requests(&at_c, "BYE").is_empty(), "carol stays");
    // Bob: told it worked, hung up on both calls.
    let at_b = sim.take(B);
    assert_eq!(notified(&mut sim, &at_b), ["SIP/2.0 200 OK"]);
    let byes = requests(&at_b, "BYE");
    let mut bye_calls: Vec<&str> = byes.iter().map(|b| b.call_id()).collect();
    bye_calls.sort_unstable();
    assert_eq!(bye_calls.len(), 2, "{at_b:?}");
    assert!(bye_calls.contains(&"att2"));
    for bye in byes {
        sim.send(B, &answer(bye, "200 OK", None, ""));
    }
    assert_eq!(transfers(&sim), ["refused", "completed"]);
    let records: Vec<_> = sim.records().into_iter().cloned().collect();
    assert_eq!(records.len(), 2, "{records:?}");
    let (first, second) = (&records[0], &records[1]);
    assert_eq!(first.call_id, key("att1"));
    assert_eq!(first.transferred_to, Some(key("att1;transfer=1")));
    assert_eq!(second.call_id, key("att2"));
    assert_eq!(second.transferred_to, Some(key("att1;transfer=1")));
    assert_eq!(second.hangup_side, HangupSide::Caller);
    assert!(
        second
            .end_reason
            .contains("transferred (attended) by the caller (bob)"),
        "{}",
        second.end_reason
    );
    // Alice hangs up: carol gets the BYE on the dialog she had with bob's call.
    let alice = Phone {
        call_id: "att1",
        from: A_FROM,
        to: &call.a_to,
        port: 5061,
    };
    sim.send(A, &alice.request("BYE", 2, "z9hG4bKattbye", ""));
    sim.run(20 * MS);
    let at_c = sim.take(C);
    let bye = requests(&at_c, "BYE");
    assert_eq!(bye.len(), 1, "{at_c:?}");
    assert_eq!(bye[0].call_id(), reinvite.call_id());
    sim.send(C, &answer(bye[0], "200 OK", None, ""));
    let new = sim.records()[2].clone();
    assert_eq!(new.call_id, key("att1;transfer=1"));
    assert_eq!(
        (new.caller.as_str(), new.callee.as_str()),
        ("alice", "carol")
    );
    assert_eq!(new.transferred_from, Some(key("att1")));
    for message in sim.take(B) {
        assert!(!matches!(message, Message::Request(_)), "bob is out of it");
    }
    assert_clean(&mut sim);
}

/// Dave's INVITE replacing bob's dialog of `call` (`replaces` as written), with his offer.
fn replacing_invite(call_id: &str, replaces: &str) -> String {
    let sdp = "v=0\r\no=dave 3 3 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 4500 RTP/AVP 0\r\n";
    invite(call_id, &format!("z9hG4bK{call_id}"), sdp)
        .replace(
            "From: <sip:alice@127.0.0.1>;tag=af",
            "From: <sip:dave@127.0.0.1>;tag=df",
        )
        .replace("127.0.0.1:5061", "127.0.0.1:5063")
        .replace(
            "Max-Forwards: 70\n",
            &format!("Max-Forwards: 70\nReplaces: {replaces}\n"),
        )
}

#[test]
fn an_invite_with_replaces_takes_the_named_partys_place_and_a_wrong_one_gets_481() {
    let mut sim = Sim::new(routed(MediaMode::Relay));
    let call = establish_relayed(&mut sim, "rep1");
    let b_call_id = call.to_b.call_id().to_owned();
    let our_b_tag = our_tag(call.to_b.headers.get("From").unwrap());
    // Wrong tags, and no SDP: 481 and 488, nothing changes.
    sim.send(
        C,
        &replacing_invite("rep-bad", &format!("{b_call_id};to-tag=nope;from-tag=bt")),
    );
    let no_offer = replacing_invite(
        "rep-late",
        &format!("{b_call_id};to-tag={our_b_tag};from-tag=bt"),
    );
    let head = &no_offer[..no_offer.find("Content-Type:").unwrap()];
    let no_offer = format!("{head}Content-Length: 0\n\n");
    sim.send(C, &no_offer);
    sim.run(20 * MS);
    let at_c = sim.take(C);
    assert_eq!(responses(&at_c, 481).len(), 1, "{at_c:?}");
    assert_eq!(responses(&at_c, 488).len(), 1, "{at_c:?}");
    assert!(sim.take(A).is_empty() && sim.take(B).is_empty());
    // The right one: dave takes bob's place.
    sim.send(
        C,
        &replacing_invite(
            "rep-dave",
            &format!("{b_call_id};to-tag={our_b_tag};from-tag=bt"),
        ),
    );
    sim.run(20 * MS);
    let (new_call, offer_leg, new_key) = last_allocation(&sim);
    assert_eq!((offer_leg, new_key), (Leg::Callee, key("rep1;transfer=1")));
    sim.input(Input::MediaReady {
        call: new_call,
        result: Ok(plan2()),
    });
    sim.run(20 * MS);
    let reinvite = requests(&sim.take(A), "INVITE")[0].clone();
    let offer = text(&reinvite);
    assert!(
        offer.contains("m=audio 31000") && offer.contains("o=- 1 2 IN IP4"),
        "{offer}"
    );
    sim.send(A, &answer(&reinvite, "200 OK", None, SDP));
    sim.run(20 * MS);
    let at_c = sim.take(C);
    let ok = responses(&at_c, 200);
    assert_eq!(ok.len(), 1, "{at_c:?}");
    let ok = ok[0].clone();
    assert_eq!(ok.call_id(), "rep-dave");
    assert!(String::from_utf8_lossy(&ok.body).contains("m=audio 31002"));
    let bye = requests(&sim.take(B), "BYE")[0].clone();
    sim.send(B, &answer(&bye, "200 OK", None, ""));
    let dave_to = ok.headers.get("To").unwrap().to_owned();
    let dave = Phone {
        call_id: "rep-dave",
        from: "<sip:dave@127.0.0.1>;tag=df",
        to: &dave_to,
        port: 5063,
    };
    sim.send(C, &dave.request("ACK", 1, "z9hG4bKrepack", ""));
    sim.run(Duration::from_secs(2));
    assert!(
        responses(&sim.take(C), 200).is_empty(),
        "the 200 is not resent once ACKed"
    );
    let old = sim.records()[0].clone();
    assert_eq!(old.transferred_to, Some(key("rep1;transfer=1")));
    assert!(
        old.end_reason
            .contains("replaced by dave (INVITE with Replaces)"),
        "{}",
        old.end_reason
    );
    // Dave hangs up: alice gets the BYE; the new pairing's row.
    sim.send(C, &dave.request("BYE", 2, "z9hG4bKrepbye", ""));
    sim.run(20 * MS);
    let bye = requests(&sim.take(A), "BYE")[0].clone();
    sim.send(A, &answer(&bye, "200 OK", None, ""));
    let new = sim.records()[1].clone();
    assert_eq!(
        (new.caller.as_str(), new.callee.as_str()),
        ("alice", "dave")
    );
    assert_eq!(new.hangup_side, HangupSide::Callee);
    assert_clean(&mut sim);
}
