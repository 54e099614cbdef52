//! What a request must be to get in: required extensions (420), RFC 2543 callers, bodies of
//! another type (415), an Accept without SDP (406), banned sources, and a Call-ID that cannot
//! key a call.

use super::{A_FROM, MS, assert_clean};
use crate::call::sim::{A, B, Phone, SDP, Sim, answer, invite, requests, responses, settings};
use crate::call::{Disposition, HangupSide, Output};

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
    use crate::access::auth::Algorithm;
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
            ..Default::default()
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
