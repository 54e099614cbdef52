//! A call's media moving when its node is lost (both legs offered the new relay, no node to
//! take it, a call still ringing, a 491 to our move), and stale sessions swept from a node.

use std::time::Duration;

use proto::domain::Leg;

use super::{A_FROM, MS, allocated, key, plan, relay_settings, relocation};
use crate::call::MediaError;
use crate::call::sim::{A, B, Phone, SDP, Sim, answer, invite, requests, responses};
use crate::call::{HangupSide, Input, MediaPlan, Output};
use crate::sip::message::Request;

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
