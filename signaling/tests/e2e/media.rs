//! End-to-end calls that exercise transports and what the media did: IPv6, a late offer,
//! route sets, keepalives, one-way and silent calls explained, a latched source that differs
//! from the SDP, the admin endpoint, TCP limits. Ports: each test takes its own
//! (`Ports::take`: testkit's port blocks).

use std::net::UdpSocket;
use std::time::{Duration, Instant};

use crate::calls::sdp_ports;
use crate::common::calls::{
    MIN_PACKETS, Ports, Scenario, Service, call, expect_success, sipp, strings, traces, uac, uas,
};
use crate::common::number;

#[test]
fn an_ipv6_call_is_routed_with_its_sdp_rewritten_to_the_ipv6_relay() {
    let ports = Ports::take();
    let route = format!("=sip:[::1]:{}", ports.uas);
    // The harness's own options use IPv4; these later ones win.
    let service = Service::start(
        "ipv6",
        &ports,
        &[
            "--trusted",
            "::1/128",
            "--route",
            &route,
            "--sip",
            &format!("[::1]:{}", ports.sip),
            "--media-ip",
            "::1",
        ],
    );
    let (_traces, trace, _) = traces("ipv6");
    let uas_args = strings(&[
        "-sf",
        "uas_busy.xml",
        "-i",
        "::1",
        "-p",
        &ports.uas.to_string(),
        "-m",
        "1",
        "-trace_msg",
        "-message_file",
        trace.to_str().unwrap(),
    ]);
    let callee = sipp(&uas_args);
    std::thread::sleep(Duration::from_millis(300));
    let uac_args = strings(&[
        "-sf",
        "uac_expect_busy.xml",
        &format!("[::1]:{}", ports.sip),
        "-i",
        "::1",
        "-p",
        &ports.uac.to_string(),
        "-mi",
        "::1",
        "-mp",
        &ports.uac_media.to_string(),
        "-s",
        "1000",
        "-m",
        "1",
    ]);
    expect_success(sipp(&uac_args), "UAC", &service);
    expect_success(callee, "UAS", &service);
    let rows = service.stop();
    assert_eq!(rows[0]["disposition"], "busy");
    let seen = std::fs::read_to_string(&trace).unwrap();
    assert!(seen.contains("c=IN IP6 ::1"), "{seen}");
    let relay = &ports.relay;
    assert!(
        sdp_ports(&seen).iter().any(|p| relay.contains(p)),
        "the callee got a relay port: {seen}"
    );
}

#[test]
fn a_late_offer_is_relayed_offer_in_the_200_answer_in_the_ack() {
    let ports = Ports::take();
    let service = Service::start("late-offer", &ports, &["--trusted", "127.0.0.0/8"]);
    let (_traces, uas_trace, uac_trace) = traces("late-offer");
    call(
        &ports,
        &service,
        Scenario::new("uas_late_offer.xml").args(&[
            "-trace_msg",
            "-message_file",
            uas_trace.to_str().unwrap(),
        ]),
        Scenario::new("uac_late_offer.xml").args(&[
            "-trace_msg",
            "-message_file",
            uac_trace.to_str().unwrap(),
        ]),
    );
    let rows = service.stop();
    assert_eq!(rows[0]["disposition"], "answered");
    assert_eq!(rows[0]["media_mode"], "relay");
    let relay = &ports.relay;
    let uac_seen: Vec<u16> = sdp_ports(&std::fs::read_to_string(&uac_trace).unwrap());
    let uas_seen: Vec<u16> = sdp_ports(&std::fs::read_to_string(&uas_trace).unwrap());
    assert!(
        uac_seen.iter().any(|p| relay.contains(p)),
        "the offer reached the caller through the relay: {uac_seen:?}"
    );
    assert!(
        uas_seen.iter().any(|p| relay.contains(p)),
        "the answer reached the callee through the relay: {uas_seen:?}"
    );
}

#[test]
fn record_route_is_echoed_and_route_sets_are_followed_on_both_legs() {
    let ports = Ports::take();
    let service = Service::start("record-route", &ports, &["--trusted", "127.0.0.0/8"]);
    let (_traces, uas_trace, uac_trace) = traces("record-route");
    call(
        &ports,
        &service,
        Scenario::new("uas_record_routed.xml").echo().args(&[
            "-trace_msg",
            "-message_file",
            uas_trace.to_str().unwrap(),
        ]),
        Scenario::new("uac_record_routed.xml").args(&[
            "-trace_msg",
            "-message_file",
            uac_trace.to_str().unwrap(),
        ]),
    );
    service.stop();
    let uac_text = std::fs::read_to_string(&uac_trace).unwrap();
    let uas_text = std::fs::read_to_string(&uas_trace).unwrap();
    let caller_route = format!("<sip:127.0.0.1:{};lr>", ports.uac);
    let callee_route = format!("<sip:127.0.0.1:{};lr>", ports.uas);
    // Our 200 to the caller echoes its Record-Route; our BYE to the caller follows it.
    assert!(
        uac_text.contains(&format!("Record-Route: {caller_route}")),
        "{uac_text}"
    );
    let bye_to_caller = uac_text
        .split("BYE sip:")
        .nth(1)
        .expect("the caller received our BYE");
    assert!(
        bye_to_caller.contains(&format!("Route: {caller_route}")),
        "{bye_to_caller}"
    );
    // Our ACK to the callee follows the route set from its 200.
    let ack_to_callee = uas_text
        .split("ACK sip:")
        .nth(1)
        .expect("the callee received our ACK");
    assert!(
        ack_to_callee.contains(&format!("Route: {callee_route}")),
        "{ack_to_callee}"
    );
}

#[test]
fn keepalives_end_a_call_whose_callee_vanished() {
    let ports = Ports::take();
    // Direct media: no media timeout can notice; only the in-dialog OPTIONS keepalive does.
    let service = Service::start(
        "keepalive-gone",
        &ports,
        &[
            "--trusted",
            "127.0.0.0/8",
            "--media-mode",
            "direct",
            "--keepalive",
            "1s",
        ],
    );
    let callee = uas(&ports, "uas_answer_then_vanish.xml", false, &[]);
    std::thread::sleep(Duration::from_millis(300));
    let started = Instant::now();
    // -aa: SIPp answers our keepalive OPTIONS on the caller side.
    let caller = uac(&ports, "uac_silent_until_bye.xml", &["-aa"]);
    expect_success(callee, "UAS", &service);
    expect_success(caller, "UAC", &service);
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "ended after {:?}",
        started.elapsed()
    );
    let rows = service.stop();
    assert_eq!(rows[0]["hangup_side"], "system");
    assert_eq!(rows[0]["disposition"], "answered");
    assert!(
        number(&rows[0], "duration_ms") >= 2000,
        "two missed keepalives: {:?}",
        rows[0]
    );
}

#[test]
fn answered_keepalives_do_not_disturb_a_healthy_call() {
    let ports = Ports::take();
    let service = Service::start(
        "keepalive-ok",
        &ports,
        &["--trusted", "127.0.0.0/8", "--keepalive", "1s"],
    );
    // -aa: SIPp answers our keepalive OPTIONS on both sides.
    call(
        &ports,
        &service,
        Scenario::new("uas_pcmu_echo.xml").echo().args(&["-aa"]),
        Scenario::new("uac_pcmu_pcap.xml").args(&["-aa"]),
    );
    let (rows, log) = service.stop_with_log();
    assert_eq!(rows[0]["hangup_side"], "caller", "{log}");
    assert_eq!(rows[0]["media_verdict"], "ok");
    assert!(number(&rows[0], "duration_ms") >= 5000);
}

#[test]
fn only_the_caller_sends_one_way_names_the_silent_callee() {
    let ports = Ports::take();
    let service = Service::start("one-way", &ports, &["--trusted", "127.0.0.0/8"]);
    // The callee answers but sends nothing (no echo).
    call(
        &ports,
        &service,
        Scenario::new("uas_pcmu_echo.xml"),
        Scenario::new("uac_pcmu_pcap.xml"),
    );
    let (rows, log) = service.stop_with_log();
    assert_eq!(rows.len(), 1, "{rows:?}");
    let cdr = &rows[0];
    assert_eq!(cdr["media_verdict"], "one_way", "{cdr:?}");
    assert!(number(cdr, "caller_audio_packets") >= MIN_PACKETS);
    assert_eq!(number(cdr, "callee_audio_packets"), 0);
    let diagnosis = &cdr["media_diagnosis"];
    assert!(
        diagnosis.starts_with("one way: only the caller sent audio"),
        "{diagnosis}"
    );
    // The callee leg's relay port, as the callee's SDP got it, and what it had announced.
    let callee_port: u16 = diagnosis
        .split("no packet reached 127.0.0.1:")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|port| port.parse().ok())
        .unwrap_or_else(|| panic!("a relay port in {diagnosis}"));
    assert!(
        ports.relay.contains(&callee_port) && callee_port.is_multiple_of(2),
        "{callee_port} is an RTP port of the relay range"
    );
    assert!(
        diagnosis.contains(&format!(
            "no packet reached 127.0.0.1:{callee_port} from the callee (SDP said 127.0.0.1:{})",
            ports.uas_media
        )),
        "{diagnosis}"
    );
    assert!(
        diagnosis.contains(&format!("UDP {callee_port}-{} is open", callee_port + 1)),
        "{diagnosis}"
    );
    assert!(
        log.contains("media verdict") && log.contains("verdict=one_way"),
        "the verdict is logged:\n{log}"
    );
}

#[test]
fn neither_side_sends_no_media_with_both_legs_explained() {
    let ports = Ports::take();
    let service = Service::start("no-media", &ports, &["--trusted", "127.0.0.0/8"]);
    call(
        &ports,
        &service,
        Scenario::new("uas_echo_then_bye.xml"),
        Scenario::new("uac_silent_until_bye.xml"),
    );
    let (rows, media, log) = service.stop_all();
    let cdr = &rows[0];
    assert_eq!(cdr["media_verdict"], "no_media", "{cdr:?}");
    assert_eq!(cdr["hangup_side"], "callee");
    let diagnosis = &cdr["media_diagnosis"];
    assert!(
        diagnosis.starts_with("no media: neither leg sent audio"),
        "{diagnosis}"
    );
    assert!(
        diagnosis.contains("from the caller (SDP said 127.0.0.1:"),
        "{diagnosis}"
    );
    assert!(
        diagnosis.contains("from the callee (SDP said 127.0.0.1:"),
        "{diagnosis}"
    );
    assert!(
        diagnosis.contains("advertised media address 127.0.0.1"),
        "{diagnosis}"
    );
    assert!(log.contains("verdict=no_media"), "{log}");
    assert_eq!(media.len(), 2, "{media:?}");
    assert!(
        media.iter().all(|m| m["rtp_packets_in"] == "0"),
        "{media:?}"
    );
}

/// Sends `count` PCMU RTP packets (172 bytes, 20 ms apart) from `from` to `to`.
fn send_rtp(from: UdpSocket, to: std::net::SocketAddr, count: u16) {
    for seq in 0..count {
        let mut packet = vec![0u8; 172];
        packet[0] = 0x80;
        packet[2..4].copy_from_slice(&seq.to_be_bytes());
        packet[4..8].copy_from_slice(&(u32::from(seq) * 160).to_be_bytes());
        packet[8..12].copy_from_slice(&0x5eed_cafe_u32.to_be_bytes());
        let _ = from.send_to(&packet, to);
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_callee_sending_from_another_port_than_its_sdp_is_latched_and_named() {
    let ports = Ports::take();
    let service = Service::start("latched", &ports, &["--trusted", "127.0.0.0/8"]);
    // The callee (SIPp, not echoing) announces its -mp port; its RTP comes from 10 ports
    // higher, the way a phone behind a port-translating NAT looks to the proxy.
    let callee = uas(&ports, "uas_pcmu_echo.xml", false, &[]);
    std::thread::sleep(Duration::from_millis(300));
    let caller = uac(&ports, "uac_pcmu_pcap.xml", &[]);
    let natted = UdpSocket::bind(("127.0.0.1", ports.uas_media + 10)).unwrap();
    std::thread::sleep(Duration::from_millis(800));
    let callee_relay_port = service.callee_relay_port();
    send_rtp(natted, ([127, 0, 0, 1], callee_relay_port).into(), 150);
    expect_success(caller, "UAC", &service);
    expect_success(callee, "UAS", &service);
    let (rows, media, _) = service.stop_all();
    let cdr = &rows[0];
    // The relay latched on the real source, so audio flowed both ways.
    assert_eq!(cdr["media_verdict"], "ok", "{cdr:?}");
    assert_eq!(number(cdr, "callee_audio_packets"), 150, "{cdr:?}");
    let row = media
        .iter()
        .find(|m| m["leg"] == "callee")
        .expect("callee row");
    let announced = format!("127.0.0.1:{}", ports.uas_media);
    let real = format!("127.0.0.1:{}", ports.uas_media + 10);
    assert_eq!(row["sdp_rtp_address"], announced);
    assert_eq!(row["latched_rtp_source"], real);
    assert_eq!(row["rtp_packets_in"], "150");
    assert!(
        cdr["media_diagnosis"].contains(&format!(
            "callee sent from {real} while SDP said {announced} (same address, other port: a NAT \
             or a phone sending from another port); latched"
        )),
        "{cdr:?}"
    );
}

#[test]
fn the_admin_endpoint_shows_live_calls_with_their_media() {
    let ports = Ports::take();
    let service = Service::start("admin", &ports, &["--trusted", "127.0.0.0/8"]);
    let callee = uas(&ports, "uas_pcmu_echo.xml", true, &[]);
    std::thread::sleep(Duration::from_millis(300));
    let caller = uac(&ports, "uac_pcmu_pcap.xml", &[]);
    std::thread::sleep(Duration::from_millis(2500));
    let calls = service.get("/admin/calls");
    assert!(
        calls.starts_with("HTTP/1.0 200") || calls.starts_with("HTTP/1.1 200"),
        "{calls}"
    );
    assert!(calls.contains("\"state\": \"confirmed\""), "{calls}");
    assert!(calls.contains("\"media_node\": \"embedded\""), "{calls}");
    let call_id = calls
        .split("\"call_id\": \"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .expect("a call id")
        .to_owned();
    let detail = service.get(&format!("/admin/calls/{call_id}"));
    assert!(detail.contains("\"verdict_now\": \"ok\""), "{detail}");
    assert!(detail.contains("\"leg\": \"caller\""), "{detail}");
    let packets: Vec<i64> = detail
        .split("\"rtp_packets_in\": ")
        .skip(1)
        .map(|rest| rest.split(',').next().unwrap().trim().parse().unwrap())
        .collect();
    assert_eq!(packets.len(), 2, "{detail}");
    assert!(packets.iter().all(|&p| p > 0), "live counters: {detail}");
    let missing = service.get("/admin/calls/nope");
    assert!(missing.contains(" 404 "), "{missing}");
    expect_success(caller, "UAC", &service);
    expect_success(callee, "UAS", &service);
    let calls = service.get("/admin/calls");
    assert!(calls.trim_end().ends_with("[]"), "no call left: {calls}");
}

/// SIP over TCP cannot be used to take signaling's descriptors: a connection that brings no
/// complete message (nothing, or half of one) is closed 10 s after its accept, one that
/// leaves a later message half sent 10 s after it began; one source holds at most
/// `--tcp-per-source` (32 here) connections and the 33rd is closed at once; a connection that speaks SIP stays. Each is
/// counted by reason.
#[test]
fn tcp_connections_that_bring_nothing_or_half_a_message_are_closed_and_a_source_is_capped() {
    use std::io::{Read, Write};
    use std::net::TcpStream;
    let ports = Ports::take();
    let service = Service::start("tcp-limits", &ports, &["--tcp-per-source", "32"]);
    let connect = || TcpStream::connect(("127.0.0.1", ports.sip)).expect("connect");
    let options = |stream: &mut TcpStream, n: u32| {
        let local = stream.local_addr().unwrap();
        write!(
            stream,
            "OPTIONS sip:127.0.0.1:{} SIP/2.0\r\nVia: SIP/2.0/TCP {local};branch=z9hG4bKtcp{n}\r\n\
             Max-Forwards: 70\r\nFrom: <sip:probe@127.0.0.1>;tag=p{n}\r\nTo: <sip:127.0.0.1>\r\n\
             Call-ID: tcp-limits-{n}\r\nCSeq: {n} OPTIONS\r\nContent-Length: 0\r\n\r\n",
            ports.sip
        )
        .unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let mut answer = [0u8; 2048];
        let n = stream.read(&mut answer).expect("an answer");
        assert!(answer[..n].starts_with(b"SIP/2.0 "), "{:?}", &answer[..n]);
    };
    // Closed by the server: the read ends (EOF or reset), it does not time out.
    let closed_within = |stream: &mut TcpStream, limit: Duration| {
        stream.set_read_timeout(Some(limit)).unwrap();
        let mut byte = [0u8; 1];
        match stream.read(&mut byte) {
            Ok(0) => true,
            Ok(_) => false,
            Err(error) => !matches!(
                error.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ),
        }
    };
    let mut good = connect();
    options(&mut good, 1);
    let mut stalled = connect();
    options(&mut stalled, 3);
    stalled
        .write_all(
            b"OPTIONS sip:127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/TCP 127.0.0.1:9;branch=z9hG4bKst\r\n",
        )
        .unwrap();
    let mut silent: Vec<TcpStream> = (0..29).map(|_| connect()).collect();
    let mut half = connect();
    half.write_all(
        b"OPTIONS sip:127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/TCP 127.0.0.1:9;branch=z9hG4bKhalf\r\n",
    )
    .unwrap();
    // 32 held from 127.0.0.1: the next one is closed at once.
    std::thread::sleep(Duration::from_millis(300));
    let mut extra = connect();
    assert!(
        closed_within(&mut extra, Duration::from_secs(2)),
        "the 33rd connection of one source was kept"
    );
    let started = Instant::now();
    assert!(
        closed_within(&mut half, Duration::from_secs(15)),
        "half a message kept open"
    );
    for stream in &mut silent {
        assert!(
            closed_within(stream, Duration::from_secs(15)),
            "a silent connection kept open"
        );
    }
    assert!(
        started.elapsed() >= Duration::from_secs(8),
        "closed after the 10 s allowance, not before: {:?}",
        started.elapsed()
    );
    // The connection that spoke SIP is still there and still answered.
    options(&mut good, 2);
    let metrics = service.metrics();
    for line in [
        "signaling_tcp_connections_closed_total{reason=\"no_message\"} 30",
        "signaling_tcp_connections_closed_total{reason=\"partial_message\"} 1",
        "signaling_tcp_connections_closed_total{reason=\"per_source_limit\"} 1",
        "signaling_tcp_connections 1",
    ] {
        assert!(
            metrics.lines().any(|l| l == line),
            "no {line:?} in:\n{metrics}"
        );
    }
    let log = service.log();
    assert_eq!(
        log.matches("TCP connection refused").count(),
        1,
        "logged once for the source:\n{log}"
    );
}
