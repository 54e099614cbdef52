//! UPDATE (RFC 3311) across the legs: an SDP offer rewritten through the relay like a
//! re-INVITE's and its answer back, glare with a pending offer, a session refresh without
//! SDP answered on its own leg, and an UPDATE before the answer.

use proto::domain::Leg;

use super::{A_FROM, MS, assert_clean, b_dialog, establish, establish_relayed};
use crate::call::Output;
use crate::call::sim::{A, B, Phone, SDP, Sim, answer, invite, requests, responses, settings};
use crate::sip::message::Request;

/// B's new offer: a new port and a new version.
const NEW_SDP: &str = "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 4100 RTP/AVP 0\r\n";

/// The media legs the core pointed at a new SDP, and that SDP's first port, in order.
fn media_updates(sim: &Sim) -> Vec<(Leg, u16)> {
    sim.outputs
        .iter()
        .filter_map(|o| match o {
            Output::UpdateMedia { leg, sdp, .. } => Some((*leg, sdp.media[0].port)),
            _ => None,
        })
        .collect()
}

fn text(request: &Request) -> String {
    String::from_utf8_lossy(&request.body).into_owned()
}

#[test]
fn an_update_offer_is_rewritten_through_the_relay_both_ways_rfc3311() {
    let mut sim = Sim::new(super::relay_settings());
    let call = establish_relayed(&mut sim, "upd");
    let before = media_updates(&sim).len();
    let (b_from, b_to) = b_dialog(&call);
    let bob = Phone {
        call_id: call.to_b.call_id(),
        from: &b_from,
        to: &b_to,
        port: 5062,
    };
    sim.send(B, &bob.request("UPDATE", 1, "z9hG4bKupd1", NEW_SDP));
    sim.run(20 * MS);
    let at_a = sim.take(A);
    let update = requests(&at_a, "UPDATE");
    assert_eq!(update.len(), 1, "{at_a:?}");
    let update = update[0].clone();
    assert_eq!(update.call_id(), "upd", "on the caller's dialog");
    let offer = text(&update);
    assert!(
        offer.contains("c=IN IP4 192.0.2.10") && offer.contains("m=audio 30000"),
        "the caller is offered the relay's caller port: {offer}"
    );
    assert!(update.headers.get("Contact").is_some(), "a target refresh");
    assert_eq!(
        media_updates(&sim)[before..],
        [(Leg::Callee, 4100)],
        "the callee leg points at its new SDP"
    );
    let a_answer = SDP.replace("m=audio 4000", "m=audio 4200");
    sim.send(A, &answer(&update, "200 OK", None, &a_answer));
    sim.run(20 * MS);
    let at_b = sim.take(B);
    let ok = responses(&at_b, 200);
    assert_eq!(ok.len(), 1, "{at_b:?}");
    let body = String::from_utf8_lossy(&ok[0].body).into_owned();
    assert!(
        body.contains("c=IN IP4 192.0.2.10") && body.contains("m=audio 30002"),
        "the answer rewritten for the callee: {body}"
    );
    assert_eq!(ok[0].headers.get("CSeq"), Some("1 UPDATE"));
    assert!(ok[0].headers.get("Contact").is_some());
    assert_eq!(
        media_updates(&sim)[before..],
        [(Leg::Callee, 4100), (Leg::Caller, 4200)],
        "and the caller leg at its answer"
    );
    assert!(sim.records().is_empty(), "the call goes on");
    let alice = Phone {
        call_id: "upd",
        from: A_FROM,
        to: &call.a_to,
        port: 5061,
    };
    sim.send(A, &alice.request("BYE", 2, "z9hG4bKupdbye", ""));
    sim.run(20 * MS);
    let bye = requests(&sim.take(B), "BYE")[0].clone();
    sim.send(B, &answer(&bye, "200 OK", None, ""));
    assert_clean(&mut sim);
}

#[test]
fn an_offer_while_an_update_offer_is_pending_is_glare_491_and_a_refresh_without_sdp_is_answered_here()
 {
    let mut sim = Sim::new(super::relay_settings());
    let call = establish_relayed(&mut sim, "upd-glare");
    let (b_from, b_to) = b_dialog(&call);
    let bob = Phone {
        call_id: call.to_b.call_id(),
        from: &b_from,
        to: &b_to,
        port: 5062,
    };
    let alice = Phone {
        call_id: "upd-glare",
        from: A_FROM,
        to: &call.a_to,
        port: 5061,
    };
    sim.send(B, &bob.request("UPDATE", 1, "z9hG4bKug1", NEW_SDP));
    sim.run(20 * MS);
    let update = requests(&sim.take(A), "UPDATE")[0].clone();
    // The caller offers too, by re-INVITE and by UPDATE, while B's offer is pending.
    sim.send(A, &alice.request("INVITE", 2, "z9hG4bKug2", SDP));
    sim.send(A, &alice.request("UPDATE", 3, "z9hG4bKug3", SDP));
    sim.run(20 * MS);
    let at_a = sim.take(A);
    assert_eq!(responses(&at_a, 491).len(), 2, "{at_a:?}");
    assert!(sim.take(B).is_empty(), "neither reaches the callee");
    sim.send(A, &answer(&update, "200 OK", None, SDP));
    sim.run(20 * MS);
    assert_eq!(responses(&sim.take(B), 200).len(), 1);
    // A session refresh: UPDATE without SDP refreshes its own leg only, answered here (a
    // callee that does not take UPDATE must not fail the caller's refresh).
    sim.send(A, &alice.request("UPDATE", 4, "z9hG4bKug4", ""));
    sim.run(20 * MS);
    assert!(requests(&sim.take(B), "UPDATE").is_empty(), "not relayed");
    let at_a = sim.take(A);
    let ok = responses(&at_a, 200);
    assert_eq!(ok.len(), 1, "{at_a:?}");
    assert!(ok[0].headers.get("Contact").is_some());
    sim.send(A, &alice.request("BYE", 5, "z9hG4bKugbye", ""));
    sim.run(20 * MS);
    let bye = requests(&sim.take(B), "BYE")[0].clone();
    sim.send(B, &answer(&bye, "200 OK", None, ""));
    // After the call: the dialog is gone (481).
    sim.send(A, &alice.request("UPDATE", 6, "z9hG4bKugafter", ""));
    sim.run(20 * MS);
    assert_eq!(responses(&sim.take(A), 481).len(), 1);
    assert_clean(&mut sim);
}

#[test]
fn an_update_before_the_answer_gets_500_with_an_offer_and_200_without() {
    let mut sim = Sim::new(settings());
    sim.send(A, &invite("upd-early", "z9hG4bKue", SDP));
    sim.run(20 * MS);
    let to_b = requests(&sim.take(B), "INVITE")[0].clone();
    sim.send(B, &answer(&to_b, "180 Ringing", Some("bt"), ""));
    sim.run(20 * MS);
    let ringing = responses(&sim.take(A), 180)[0].clone();
    let a_to = ringing.headers.get("To").unwrap().to_owned();
    let alice = Phone {
        call_id: "upd-early",
        from: A_FROM,
        to: &a_to,
        port: 5061,
    };
    sim.send(A, &alice.request("UPDATE", 2, "z9hG4bKue1", SDP));
    sim.send(A, &alice.request("UPDATE", 3, "z9hG4bKue2", ""));
    sim.run(20 * MS);
    let at_a = sim.take(A);
    let refused = responses(&at_a, 500);
    assert_eq!(refused.len(), 1, "{at_a:?}");
    assert_eq!(refused[0].headers.get("CSeq"), Some("2 UPDATE"));
    assert!(refused[0].headers.get("Retry-After").is_some());
    let ok = responses(&at_a, 200);
    assert_eq!(ok.len(), 1, "{at_a:?}");
    assert_eq!(ok[0].headers.get("CSeq"), Some("3 UPDATE"));
    assert!(requests(&sim.take(B), "UPDATE").is_empty());
    sim.send(B, &answer(&to_b, "200 OK", Some("bt"), SDP));
    sim.run(20 * MS);
    sim.take(A);
    sim.send(A, &alice.request("ACK", 1, "z9hG4bKueack", ""));
    sim.send(A, &alice.request("BYE", 4, "z9hG4bKuebye", ""));
    sim.run(20 * MS);
    for message in sim.take(B) {
        if let crate::sip::message::Message::Request(request) = message
            && request.method.as_str() == "BYE"
        {
            sim.send(B, &answer(&request, "200 OK", None, ""));
        }
    }
    assert_clean(&mut sim);
}

#[test]
fn the_direct_mode_relays_an_update_offer_untouched() {
    let mut sim = Sim::new(settings());
    let call = establish(&mut sim, "upd-direct");
    let alice = Phone {
        call_id: "upd-direct",
        from: A_FROM,
        to: &call.a_to,
        port: 5061,
    };
    sim.send(A, &alice.request("UPDATE", 2, "z9hG4bKud1", NEW_SDP));
    sim.run(20 * MS);
    let at_b = sim.take(B);
    let update = requests(&at_b, "UPDATE");
    assert_eq!(update.len(), 1, "{at_b:?}");
    assert_eq!(update[0].body, NEW_SDP.as_bytes());
    assert_eq!(update[0].call_id(), call.to_b.call_id());
}
