//! Session timers (RFC 4028) per leg: the caller's interval checked (422) and answered with
//! who refreshes, a caller that stops refreshing ends the call, our own refreshes of a callee
//! that asked us to (UPDATE, or a re-INVITE with the SDP it has), a failed refresh, and a
//! callee's 422 answered by a new INVITE.

use std::time::Duration;

use super::{A_FROM, MS, answer_all, assert_clean, relay_settings};
use crate::call::sim::{A, B, Phone, SDP, Sim, answer, invite, requests, responses, settings};
use crate::sip::message::Message;

fn with_headers(message: String, headers: &str) -> String {
    message.replace("Content-Length:", &format!("{headers}\nContent-Length:"))
}

#[test]
fn an_interval_below_our_min_se_is_refused_422_naming_it() {
    let mut sim = Sim::new(settings());
    let text = with_headers(invite("st-short", "z9hG4bKsts", SDP), "Session-Expires: 60");
    sim.send(A, &text);
    sim.run(20 * MS);
    let at_a = sim.take(A);
    let refused = responses(&at_a, 422);
    assert_eq!(refused.len(), 1, "{at_a:?}");
    assert_eq!(refused[0].headers.get("Min-SE"), Some("90"));
    assert!(sim.take(B).is_empty(), "no call placed");
    assert_clean(&mut sim);
}

#[test]
fn a_caller_that_refreshes_keeps_its_call_and_one_that_stops_is_hung_up() {
    let mut sim = Sim::new(settings());
    let text = with_headers(
        invite("st-a", "z9hG4bKsta", SDP),
        "Supported: timer\nSession-Expires: 120",
    );
    sim.send(A, &text);
    sim.run(20 * MS);
    let to_b = requests(&sim.take(B), "INVITE")[0].clone();
    assert_eq!(
        to_b.headers.get("Session-Expires"),
        Some("1800"),
        "offered to the callee"
    );
    assert_eq!(to_b.headers.get("Min-SE"), Some("90"));
    // The callee does no timers: its leg keeps the keepalive only.
    sim.send(B, &answer(&to_b, "200 OK", Some("bt"), SDP));
    sim.run(20 * MS);
    let ok = responses(&sim.take(A), 200)[0].clone();
    assert_eq!(ok.headers.get("Session-Expires"), Some("120;refresher=uac"));
    assert!(ok.headers.values("Require").any(|o| o == "timer"));
    let a_to = ok.headers.get("To").unwrap().to_owned();
    let alice = Phone {
        call_id: "st-a",
        from: A_FROM,
        to: &a_to,
        port: 5061,
    };
    sim.send(A, &alice.request("ACK", 1, "z9hG4bKstaack", ""));
    // Refreshes at half the interval keep the call, for longer than one interval.
    for (cseq, branch) in [(2, "z9hG4bKstr1"), (3, "z9hG4bKstr2"), (4, "z9hG4bKstr3")] {
        sim.run(Duration::from_secs(60));
        sim.send(
            A,
            &with_headers(
                alice.request("UPDATE", cseq, branch, ""),
                "Session-Expires: 120;refresher=uac",
            ),
        );
        sim.run(20 * MS);
        let at_a = sim.take(A);
        let refreshed = responses(&at_a, 200);
        assert_eq!(refreshed.len(), 1, "{at_a:?}");
        assert_eq!(
            refreshed[0].headers.get("Session-Expires"),
            Some("120;refresher=uac")
        );
    }
    assert!(
        sim.records().is_empty(),
        "three minutes, refreshed: still up"
    );
    assert!(
        requests(&sim.take(B), "UPDATE").is_empty(),
        "refreshes stay on their leg"
    );
    // Then the caller falls silent: at 120 - 32 s the call ends on both legs.
    sim.run(Duration::from_secs(87));
    assert!(sim.records().is_empty(), "not before the deadline");
    sim.run(Duration::from_secs(2));
    assert_eq!(answer_all(&mut sim, A, "BYE"), 1);
    assert_eq!(answer_all(&mut sim, B, "BYE"), 1);
    let record = sim.records()[0].clone();
    assert!(
        record
            .end_reason
            .contains("the caller stopped refreshing the session"),
        "{}",
        record.end_reason
    );
    assert_clean(&mut sim);
}

#[test]
fn we_refresh_a_callee_that_asks_us_to_and_a_refused_refresh_ends_the_call() {
    let mut sim = Sim::new(relay_settings());
    sim.send(A, &invite("st-b", "z9hG4bKstb", SDP));
    sim.run(20 * MS);
    super::allocated(&mut sim, Ok(super::plan()));
    sim.run(20 * MS);
    let to_b = requests(&sim.take(B), "INVITE")[0].clone();
    // The callee takes timers, 100 s, refreshed by us (the UAC), and allows UPDATE.
    sim.send(
        B,
        &with_headers(
            answer(&to_b, "200 OK", Some("bt"), SDP),
            "Session-Expires: 100;refresher=uac\nRequire: timer\nAllow: INVITE, ACK, BYE, UPDATE",
        ),
    );
    sim.run(20 * MS);
    let ok = responses(&sim.take(A), 200)[0].clone();
    assert!(
        ok.headers.get("Session-Expires").is_none(),
        "the caller asked for no timer"
    );
    let a_to = ok.headers.get("To").unwrap().to_owned();
    let alice = Phone {
        call_id: "st-b",
        from: A_FROM,
        to: &a_to,
        port: 5061,
    };
    sim.send(A, &alice.request("ACK", 1, "z9hG4bKstback", ""));
    sim.run(Duration::from_secs(49));
    assert!(
        requests(&sim.take(B), "UPDATE").is_empty(),
        "not before half the interval"
    );
    sim.run(Duration::from_millis(1_100));
    let at_b = sim.take(B);
    let refresh = requests(&at_b, "UPDATE");
    assert_eq!(refresh.len(), 1, "{at_b:?}");
    assert_eq!(
        refresh[0].headers.get("Session-Expires"),
        Some("100;refresher=uac")
    );
    assert!(refresh[0].body.is_empty());
    sim.send(
        B,
        &with_headers(
            answer(refresh[0], "200 OK", None, ""),
            "Session-Expires: 100;refresher=uac",
        ),
    );
    // The next refresh: the callee now says it no longer knows the dialog.
    sim.run(Duration::from_millis(50_100));
    let at_b = sim.take(B);
    let refresh = requests(&at_b, "UPDATE");
    assert_eq!(refresh.len(), 1, "{at_b:?}");
    sim.send(
        B,
        &answer(refresh[0], "481 Call/Transaction Does Not Exist", None, ""),
    );
    sim.run(20 * MS);
    assert_eq!(answer_all(&mut sim, A, "BYE"), 1);
    answer_all(&mut sim, B, "BYE");
    let record = sim.records()[0].clone();
    assert!(
        record
            .end_reason
            .contains("session refresh (RFC 4028) was answered 481"),
        "{}",
        record.end_reason
    );
    assert_clean(&mut sim);
}

#[test]
fn a_callee_without_update_is_refreshed_by_reinvite_with_the_sdp_it_has() {
    let mut sim = Sim::new(relay_settings());
    sim.send(A, &invite("st-re", "z9hG4bKstre", SDP));
    sim.run(20 * MS);
    super::allocated(&mut sim, Ok(super::plan()));
    sim.run(20 * MS);
    let to_b = requests(&sim.take(B), "INVITE")[0].clone();
    sim.send(
        B,
        &with_headers(
            answer(&to_b, "200 OK", Some("bt"), SDP),
            "Session-Expires: 100;refresher=uac",
        ),
    );
    sim.run(20 * MS);
    let ok = responses(&sim.take(A), 200)[0].clone();
    let a_to = ok.headers.get("To").unwrap().to_owned();
    let alice = Phone {
        call_id: "st-re",
        from: A_FROM,
        to: &a_to,
        port: 5061,
    };
    sim.send(A, &alice.request("ACK", 1, "z9hG4bKstreack", ""));
    sim.run(Duration::from_millis(50_100));
    let at_b = sim.take(B);
    let reinvite = requests(&at_b, "INVITE");
    assert_eq!(reinvite.len(), 1, "{at_b:?}");
    let body = String::from_utf8_lossy(&reinvite[0].body).into_owned();
    assert_eq!(
        body,
        String::from_utf8_lossy(&to_b.body),
        "the same SDP as the callee has: nothing changes but the timer"
    );
    let reinvite = reinvite[0].clone();
    sim.send(B, &answer(&reinvite, "200 OK", None, SDP));
    sim.run(20 * MS);
    assert_eq!(requests(&sim.take(B), "ACK").len(), 1);
    assert!(sim.take(A).is_empty(), "the caller knows nothing of it");
    sim.send(A, &alice.request("BYE", 2, "z9hG4bKstrebye", ""));
    sim.run(20 * MS);
    answer_all(&mut sim, B, "BYE");
    assert_clean(&mut sim);
}

#[test]
fn a_callee_422_gets_a_new_invite_with_its_min_se() {
    let mut sim = Sim::new(settings());
    sim.send(A, &invite("st-422", "z9hG4bKst422", SDP));
    sim.run(20 * MS);
    let first = requests(&sim.take(B), "INVITE")[0].clone();
    sim.send(
        B,
        &with_headers(
            answer(&first, "422 Session Interval Too Small", Some("bt"), ""),
            "Min-SE: 3600",
        ),
    );
    sim.run(20 * MS);
    let at_b = sim.take(B);
    assert_eq!(requests(&at_b, "ACK").len(), 1, "the 422 acknowledged");
    let again = requests(&at_b, "INVITE");
    assert_eq!(again.len(), 1, "{at_b:?}");
    assert_eq!(again[0].headers.get("Session-Expires"), Some("3600"));
    assert_eq!(again[0].headers.get("CSeq"), Some("2 INVITE"));
    assert_eq!(again[0].call_id(), first.call_id());
    assert!(
        sim.take(A)
            .iter()
            .all(|m| !matches!(m, Message::Response(r) if r.status >= 300))
    );
    let again = again[0].clone();
    sim.send(B, &answer(&again, "486 Busy Here", Some("bt2"), ""));
    sim.run(20 * MS);
    assert_eq!(responses(&sim.take(A), 486).len(), 1);
    assert_clean(&mut sim);
}
