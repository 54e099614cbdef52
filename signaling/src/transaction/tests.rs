//! The four transaction state machines, driven directly with a virtual clock (RFC 3261
//! section 17 and RFC 6026).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::{Expired, Received, T1, T2, T4, TIMEOUT, Transactions, Transmit};
use crate::sip::message::{Message, Method, Request, Response, parse};
use crate::sip::{Peer, Transport};

fn peer(transport: Transport) -> Peer {
    Peer {
        transport,
        addr: SocketAddr::from(([192, 0, 2, 7], 5060)),
    }
}

fn request(method: &str, branch: &str) -> Request {
    let text = format!(
        "{method} sip:bob@192.0.2.7 SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.1:5060;branch={branch}\r\nFrom: <sip:a@192.0.2.1>;tag=f\r\nTo: <sip:bob@192.0.2.7>\r\nCall-ID: tx-test\r\nCSeq: 1 {method}\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
    );
    match parse(text.as_bytes()).unwrap() {
        Message::Request(r) => r,
        Message::Response(_) => unreachable!(),
    }
}

fn response_to(request: &Request, status: u16) -> Response {
    let mut headers = crate::sip::message::Headers::new();
    for name in ["Via", "From", "Call-ID", "CSeq"] {
        headers.push(name, request.headers.get(name).unwrap());
    }
    headers.push(
        "To",
        format!("{};tag=t", request.headers.get("To").unwrap()),
    );
    Response {
        status,
        reason: "X".into(),
        headers,
        body: Vec::new(),
    }
}

/// Runs every deadline up to `until`, collecting what was sent and what expired.
fn run(
    layer: &mut Transactions<u8>,
    from: Instant,
    until: Instant,
) -> (Vec<(Duration, Transmit)>, Vec<Expired<u8>>) {
    let mut sent = Vec::new();
    let mut expired = Vec::new();
    while let Some(at) = layer.poll_timeout().filter(|at| *at <= until) {
        expired.extend(layer.handle_timeout(at));
        sent.extend(layer.drain_transmits().map(|t| (at - from, t)));
    }
    (sent, expired)
}

#[test]
fn a_non_invite_request_is_resent_doubling_to_t2_then_times_out_rfc3261_17_1_2_2() {
    let start = Instant::now();
    let mut layer = Transactions::default();
    let bye = request("BYE", "z9hG4bKnb");
    let tx = layer.send(start, peer(Transport::Udp), bye, 7);
    assert_eq!(layer.drain_transmits().count(), 1);
    let (sent, expired) = run(&mut layer, start, start + TIMEOUT);
    let times: Vec<Duration> = sent.iter().map(|(at, _)| *at).collect();
    let mut expected = Vec::new();
    let (mut at, mut interval) = (T1, T1);
    while at < TIMEOUT {
        expected.push(at);
        interval = (interval * 2).min(T2);
        at += interval;
    }
    assert_eq!(times, expected, "Timer E: 0.5, 1.5, 3.5, 7.5, 11.5 ... s");
    assert_eq!(
        expired,
        [Expired::NoResponse {
            tx,
            tag: 7,
            method: Method::Bye
        }]
    );
    assert_eq!((layer.len(), layer.timers()), (0, 0));
}

#[test]
fn over_tcp_nothing_is_resent_and_completed_transactions_end_at_once() {
    let start = Instant::now();
    let mut layer = Transactions::default();
    let options = request("OPTIONS", "z9hG4bKto");
    layer.send(start, peer(Transport::Tcp), options.clone(), 1);
    layer.drain_transmits().for_each(drop);
    let (sent, _) = run(&mut layer, start, start + Duration::from_secs(10));
    assert!(sent.is_empty(), "no Timer E over TCP");
    let answer = layer
        .on_response(start, response_to(&options, 200))
        .unwrap();
    assert_eq!(answer.tag, 1);
    assert_eq!(layer.len(), 0, "no Timer K over TCP");
}

#[test]
fn a_server_transaction_answers_retransmissions_from_its_last_response_rfc3261_17_2_2() {
    let start = Instant::now();
    let mut layer: Transactions<u8> = Transactions::default();
    let register = request("REGISTER", "z9hG4bKsr");
    let from = peer(Transport::Udp);
    let Received::Request { tx, .. } = layer.on_request(start, from, register.clone()) else {
        panic!("a new request");
    };
    assert!(matches!(
        layer.on_request(start, from, register.clone()),
        Received::Absorbed
    ));
    assert_eq!(layer.drain_transmits().count(), 0, "nothing to repeat yet");
    let ok = response_to(&register, 200);
    assert!(layer.respond(start, tx, &ok));
    let first = layer.drain_transmits().next().unwrap();
    assert!(matches!(
        layer.on_request(start + T1, from, register.clone()),
        Received::Absorbed
    ));
    assert_eq!(
        layer.drain_transmits().next().unwrap(),
        first,
        "the same 200"
    );
    run(&mut layer, start, start + TIMEOUT);
    assert_eq!(layer.len(), 0, "Timer J ended it");
    assert!(matches!(
        layer.on_request(start + TIMEOUT, from, register),
        Received::Request { .. }
    ));
}

#[test]
fn an_invite_error_is_resent_until_its_ack_then_absorbed_for_timer_i_rfc3261_17_2_1() {
    let start = Instant::now();
    let mut layer: Transactions<u8> = Transactions::default();
    let invite = request("INVITE", "z9hG4bKsi");
    let from = peer(Transport::Udp);
    let Received::Request { tx, .. } = layer.on_request(start, from, invite.clone()) else {
        panic!("a new request");
    };
    layer.respond(start, tx, &response_to(&invite, 486));
    layer.drain_transmits().for_each(drop);
    let (sent, _) = run(&mut layer, start, start + T1 * 3);
    assert_eq!(sent.len(), 2, "Timer G at 0.5 s and 1.5 s");
    let mut ack = invite.clone();
    ack.method = Method::Ack;
    ack.headers.set("CSeq", "1 ACK");
    assert!(matches!(
        layer.on_request(start + T1 * 3, from, ack.clone()),
        Received::Absorbed
    ));
    let (sent, _) = run(
        &mut layer,
        start,
        start + T1 * 3 + T4 - Duration::from_millis(1),
    );
    assert!(sent.is_empty(), "the ACK stopped Timer G");
    assert!(matches!(
        layer.on_request(start + T1 * 4, from, ack),
        Received::Absorbed
    ));
    run(&mut layer, start, start + T1 * 3 + T4);
    assert_eq!(layer.len(), 0, "Timer I ended it");
}

#[test]
fn an_invite_client_acknowledges_errors_itself_and_passes_up_only_the_first_rfc3261_17_1_1_3() {
    let start = Instant::now();
    let mut layer = Transactions::default();
    let invite = request("INVITE", "z9hG4bKci");
    layer.send(start, peer(Transport::Udp), invite.clone(), 3);
    layer.drain_transmits().for_each(drop);
    let busy = response_to(&invite, 486);
    let answer = layer.on_response(start, busy.clone()).expect("passed up");
    assert_eq!(answer.response.status, 486);
    let ack = layer.drain_transmits().next().unwrap();
    let Ok(Message::Request(ack)) = parse(&ack.data) else {
        panic!("an ACK")
    };
    assert_eq!(ack.method, Method::Ack);
    assert_eq!(
        ack.headers.get("Via"),
        invite.headers.get("Via"),
        "same branch"
    );
    assert_eq!(
        ack.headers.get("To"),
        busy.headers.get("To"),
        "the response's To"
    );
    assert_eq!(ack.headers.get("CSeq"), Some("1 ACK"));
    assert!(
        layer.on_response(start, busy).is_none(),
        "retransmission absorbed"
    );
    assert_eq!(layer.drain_transmits().count(), 1, "and acknowledged again");
    let (_, expired) = run(&mut layer, start, start + Duration::from_secs(33));
    assert!(expired.is_empty());
    assert_eq!(layer.len(), 0, "Timer D ended it");
}

#[test]
fn a_2xx_is_resent_until_the_dialog_reports_its_ack_rfc6026() {
    let start = Instant::now();
    let mut layer: Transactions<u8> = Transactions::default();
    let invite = request("INVITE", "z9hG4bKa2");
    let from = peer(Transport::Tcp);
    let Received::Request { tx, .. } = layer.on_request(start, from, invite.clone()) else {
        panic!("a new request");
    };
    layer.set_tag(tx, 9);
    layer.respond(start, tx, &response_to(&invite, 200));
    layer.drain_transmits().for_each(drop);
    let (sent, _) = run(&mut layer, start, start + T1 * 3);
    assert_eq!(sent.len(), 2, "over TCP too (RFC 3261 13.3.1.4)");
    assert!(matches!(
        layer.on_request(start, from, invite.clone()),
        Received::Absorbed
    ));
    layer.acknowledge(start + T1 * 3, tx);
    let (sent, expired) = run(&mut layer, start, start + TIMEOUT);
    assert!(sent.is_empty() && expired.is_empty());
    assert_eq!(layer.len(), 0, "Timer L ended it");
    // Without the ACK, Timer L reports it.
    let Received::Request { tx, .. } =
        layer.on_request(start, from, request("INVITE", "z9hG4bKa3"))
    else {
        panic!("a new request");
    };
    layer.set_tag(tx, 4);
    layer.respond(start, tx, &response_to(&invite, 200));
    let (_, expired) = run(&mut layer, start, start + TIMEOUT);
    assert_eq!(expired, [Expired::NoAck { tx, tag: Some(4) }]);
}
