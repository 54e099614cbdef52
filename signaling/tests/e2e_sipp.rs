//! End-to-end calls: the real `signaling` binary (with its embedded media proxy, over real
//! gRPC) between two SIPp instances, RTP included. SIPp comes from Debian's `sip-tester`
//! (`.ci/run` installs it). Scenarios and pcaps live in `tests/sipp/`. The CDR store, several
//! media proxies and recording have end-to-end tests of their own (`e2e_cdr.rs`,
//! `e2e_nodes.rs`, `e2e_recording.rs`).
//!
//! Port plan (one block per test n < 25 across these files, so tests run in parallel):
//! SIP 25000 + 10 x n (signaling), +1 (SIPp UAC), +2 (SIPp UAS); SIPp media 26000 + 40 x n
//! (UAC, +20 for a second UAC), 27000 + 40 x n (UAS); relay ports 28000 + 100 x n. The
//! separate media proxy test uses gRPC port 25600; the TCP limits test has SIP 25820 and
//! relay 34800-34899.

use std::collections::HashMap;
use std::net::UdpSocket;
use std::time::{Duration, Instant};

mod common;

use common::calls::{
    MIN_PACKETS, Ports, Scenario, Service, call, expect_success, ports, sipp, start_mediaproxy,
    strings, traces, uac, uas,
};
use common::{Scratch, number};

#[test]
fn caller_hangs_up_and_the_cdr_has_real_packet_counts() {
    let ports = ports(0);
    let service = Service::start("caller-bye", &ports, &["--trusted", "127.0.0.0/8"]);
    // With the embedded proxy, SIP and control threads yield to the relay workers.
    let (control, relay) = (service.nices("tokio-rt"), service.nices("relay-"));
    assert!(
        !control.is_empty() && control.iter().all(|&n| n == 10),
        "{control:?}"
    );
    assert!(
        !relay.is_empty() && relay.iter().all(|&n| n == 0),
        "{relay:?}"
    );
    call(
        &ports,
        &service,
        Scenario::new("uas_pcmu_echo.xml").echo(),
        Scenario::new("uac_pcmu_pcap.xml"),
    );
    // The call's counters land once its media is released (asynchronously): poll briefly.
    let deadline = Instant::now() + Duration::from_secs(5);
    let metrics = loop {
        let body = service.metrics();
        if body.contains("signaling_calls_total{disposition=\"answered\"} 1")
            || Instant::now() > deadline
        {
            break body;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    for expected in [
        "signaling_calls_total{disposition=\"answered\"} 1",
        "signaling_media_verdicts_total{verdict=\"ok\"} 1",
        "signaling_sip_requests_total{method=\"INVITE\"} 1",
        "signaling_sip_requests_total{method=\"BYE\"} 1",
        "signaling_active_calls 0",
        "signaling_mediaproxy_request_duration_seconds_count{method=\"allocate\"} 2",
        "mediaproxy_sessions{node=\"embedded\"} 0",
    ] {
        assert!(
            metrics.contains(expected),
            "missing {expected:?} in:\n{metrics}"
        );
    }
    assert!(
        metrics
            .contains("mediaproxy_packets_total{direction=\"caller_to_callee\",node=\"embedded\"}"),
        "{metrics}"
    );
    let rows = service.stop();
    assert_eq!(rows.len(), 1, "{rows:?}");
    let cdr = &rows[0];
    assert_eq!(cdr["disposition"], "answered");
    assert_eq!(cdr["hangup_side"], "caller");
    assert_eq!(cdr["media_mode"], "relay");
    assert_eq!(cdr["media_node"], "embedded");
    assert_ne!(cdr["call_id"], cdr["b_call_id"]);
    assert!(
        number(cdr, "caller_audio_packets") >= MIN_PACKETS,
        "{cdr:?}"
    );
    assert!(
        number(cdr, "callee_audio_packets") >= MIN_PACKETS,
        "{cdr:?}"
    );
    assert_eq!(
        number(cdr, "caller_audio_bytes"),
        172 * number(cdr, "caller_audio_packets") - extra_dtmf_bytes(cdr)
    );
    assert_eq!(cdr["media_verdict"], "ok");
    assert!(
        cdr["media_diagnosis"].starts_with("both legs sent audio"),
        "{cdr:?}"
    );
    assert_eq!(cdr["end_reason"], "BYE from the caller");
    assert!(number(cdr, "duration_ms") >= 5000, "{cdr:?}");
}

/// The pcap's DTMF packets are 16 bytes (12 + 4), not 172: the byte count must reflect that.
fn extra_dtmf_bytes(cdr: &HashMap<String, String>) -> i64 {
    let packets = number(cdr, "caller_audio_packets");
    let bytes = number(cdr, "caller_audio_bytes");
    // Every packet is either 172 (audio) or 16 (DTMF); solve for the DTMF count.
    let dtmf = (172 * packets - bytes) / 156;
    assert!((0..=20).contains(&dtmf), "{packets} packets, {bytes} bytes");
    156 * dtmf
}

#[test]
fn callee_hangs_up_and_the_relay_is_still_counted_and_released() {
    // docs/architecture.md, "Call identity": a BYE on the callee's Call-ID must end the same
    // media session.
    let ports = ports(1);
    let service = Service::start("callee-bye", &ports, &["--trusted", "127.0.0.0/8"]);
    call(
        &ports,
        &service,
        Scenario::new("uas_echo_then_bye.xml").echo(),
        Scenario::new("uac_pcap_until_bye.xml"),
    );
    let (rows, log) = service.stop_with_log();
    assert_eq!(rows.len(), 1, "{rows:?}");
    let cdr = &rows[0];
    assert_eq!(cdr["hangup_side"], "callee");
    assert_eq!(cdr["disposition"], "answered");
    assert!(
        number(cdr, "caller_audio_packets") >= MIN_PACKETS,
        "{cdr:?}"
    );
    assert!(
        number(cdr, "callee_audio_packets") >= MIN_PACKETS,
        "{cdr:?}"
    );
    assert_eq!(cdr["media_verdict"], "ok");
    assert!(
        log.contains("session released"),
        "the relay was released:\n{log}"
    );
}

#[test]
fn busy_callee_gives_a_busy_cdr() {
    let ports = ports(2);
    let service = Service::start("busy", &ports, &["--trusted", "127.0.0.0/8"]);
    call(
        &ports,
        &service,
        Scenario::new("uas_busy.xml"),
        Scenario::new("uac_expect_busy.xml"),
    );
    let rows = service.stop();
    let cdr = &rows[0];
    assert_eq!(cdr["disposition"], "busy");
    assert_eq!(cdr["sip_status"], "486");
    assert_eq!(cdr["hangup_side"], "callee");
    assert_eq!(cdr["media_verdict"], "not_answered");
    assert_eq!(cdr["answer_time"], "");
}

#[test]
fn cancel_before_answer_cancels_both_legs() {
    let ports = ports(3);
    let service = Service::start("cancel", &ports, &["--trusted", "127.0.0.0/8"]);
    call(
        &ports,
        &service,
        Scenario::new("uas_ring_until_cancel.xml"),
        Scenario::new("uac_cancel.xml"),
    );
    let rows = service.stop();
    assert_eq!(rows.len(), 1, "{rows:?}");
    let cdr = &rows[0];
    assert_eq!(cdr["disposition"], "cancelled");
    assert_eq!(cdr["sip_status"], "487");
    assert_eq!(cdr["hangup_side"], "caller");
    assert_eq!(cdr["media_verdict"], "not_answered");
    assert_eq!(cdr["end_reason"], "CANCEL from the caller");
    assert!(
        cdr["media_diagnosis"].starts_with("not answered: CANCEL from the caller"),
        "{cdr:?}"
    );
}

#[test]
fn register_with_digest_then_call() {
    let ports = ports(4);
    let dir = Scratch::new("sig-e2e-users");
    let users = dir.join("users.toml");
    std::fs::write(
        &users,
        "[users.alice]\npassword = \"secret\"\n[users.bob]\npassword = \"secret\"\n",
    )
    .unwrap();
    // No --trusted: the INVITE is challenged (407) like the REGISTER (401).
    let service = Service::start("register", &ports, &["--users", users.to_str().unwrap()]);
    call(
        &ports,
        &service,
        Scenario::new("uas_pcmu_echo.xml").echo(),
        Scenario::new("uac_register_auth_call.xml").args(&["-inf", "users.csv"]),
    );
    // A guesser: unknown user, made-up response. Challenged again, and counted.
    let guesser = UdpSocket::bind("127.0.0.1:0").unwrap();
    guesser
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    let register = |authorization: &str, cseq: u32| {
        let local = guesser.local_addr().unwrap();
        format!(
            "REGISTER sip:127.0.0.1:{sip} SIP/2.0\r\nVia: SIP/2.0/UDP {local};branch=z9hG4bK-guess-{cseq}\r\n\
             Max-Forwards: 70\r\nFrom: <sip:mallory@127.0.0.1>;tag=g1\r\nTo: <sip:mallory@127.0.0.1>\r\n\
             Call-ID: guess-1\r\nCSeq: {cseq} REGISTER\r\nContact: <sip:mallory@{local}>\r\n{authorization}\
             Content-Length: 0\r\n\r\n",
            sip = ports.sip
        )
    };
    let mut buffer = [0u8; 4096];
    guesser
        .send_to(register("", 1).as_bytes(), ("127.0.0.1", ports.sip))
        .unwrap();
    let (n, _) = guesser.recv_from(&mut buffer).unwrap();
    let challenge = String::from_utf8_lossy(&buffer[..n]).into_owned();
    assert!(challenge.starts_with("SIP/2.0 401"), "{challenge}");
    let param = |name: &str| {
        challenge
            .split(&format!("{name}=\""))
            .nth(1)
            .and_then(|r| r.split('"').next())
            .unwrap_or_else(|| panic!("no {name} in {challenge}"))
            .to_owned()
    };
    let authorization = format!(
        "Authorization: Digest username=\"mallory\", realm=\"{}\", nonce=\"{}\", uri=\"sip:127.0.0.1:{}\", response=\"00000000000000000000000000000000\"\r\n",
        param("realm"),
        param("nonce"),
        ports.sip
    );
    guesser
        .send_to(
            register(&authorization, 2).as_bytes(),
            ("127.0.0.1", ports.sip),
        )
        .unwrap();
    let (n, _) = guesser.recv_from(&mut buffer).unwrap();
    let again = String::from_utf8_lossy(&buffer[..n]).into_owned();
    assert!(again.starts_with("SIP/2.0 401"), "{again}");
    let metrics = service.metrics();
    let metric = |line: &str| metrics.lines().any(|l| l == line);
    assert!(
        metric("signaling_auth_failures_total{method=\"REGISTER\"} 1"),
        "alice's right password is not a failure, mallory's guess is:\n{metrics}"
    );
    assert!(
        metric("signaling_auth_failures_total{method=\"INVITE\"} 0"),
        "{metrics}"
    );
    assert!(
        metric("signaling_call_setup_seconds_count 1"),
        "one answered call:\n{metrics}"
    );
    let log = service.log();
    assert!(
        log.lines()
            .any(|l| l.contains("authentication failed") && l.contains("mallory")),
        "{log}"
    );
    let registrations = service.get("/admin/registrations");
    assert!(
        registrations.contains("\"user\": \"alice\""),
        "{registrations}"
    );
    assert!(
        registrations.contains(&format!("\"source\": \"127.0.0.1:{}\"", ports.uac)),
        "{registrations}"
    );
    let rows = service.stop();
    assert!(log.contains("registered"), "{log}");
    assert_eq!(rows.len(), 1, "{rows:?}");
    let cdr = &rows[0];
    assert_eq!(cdr["caller"], "alice");
    assert_eq!(cdr["callee"], "1000");
    assert_eq!(cdr["disposition"], "answered");
    assert!(
        number(cdr, "caller_audio_packets") >= MIN_PACKETS,
        "{cdr:?}"
    );
}

#[test]
fn direct_mode_leaves_media_end_to_end() {
    let ports = ports(5);
    let service = Service::start(
        "direct",
        &ports,
        &["--trusted", "127.0.0.0/8", "--media-mode", "direct"],
    );
    call(
        &ports,
        &service,
        Scenario::new("uas_pcmu_echo.xml").echo(),
        Scenario::new("uac_pcmu_pcap.xml"),
    );
    let (rows, log) = service.stop_with_log();
    let cdr = &rows[0];
    assert_eq!(cdr["media_mode"], "direct");
    assert_eq!(cdr["media_verdict"], "direct");
    assert_eq!(cdr["caller_audio_packets"], "0");
    assert!(
        !log.contains("session released"),
        "no relay session in direct mode:\n{log}"
    );
}

#[test]
fn malformed_requests_get_a_400_with_the_reason_and_service_goes_on() {
    let ports = ports(6);
    let service = Service::start("malformed", &ports, &["--trusted", "127.0.0.0/8"]);
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(3)))
        .unwrap();
    let target = format!("127.0.0.1:{}", ports.sip);
    let base = "OPTIONS sip:x@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:9;branch=z9hG4bKm1\r\nFrom: <sip:t@127.0.0.1>;tag=1\r\nTo: <sip:x@127.0.0.1>\r\nCall-ID: malformed-1\r\nCSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\n";
    let mut buffer = [0u8; 4096];
    let mut ask = |message: String| {
        socket.send_to(message.as_bytes(), &target).unwrap();
        let (len, _) = socket.recv_from(&mut buffer).expect("an answer");
        String::from_utf8_lossy(&buffer[..len]).into_owned()
    };
    let answer = ask(format!("{base}Content-Length: nine\r\n\r\n"));
    assert!(
        answer.starts_with("SIP/2.0 400 Bad Content-Length\r\n"),
        "{answer}"
    );
    assert!(answer.contains("Call-ID: malformed-1"), "{answer}");
    // Every new request has a branch of its own (RFC 3261 section 8.1.1.7): a request that
    // repeats one is a retransmission and gets the same answer again.
    let answer = ask(format!(
        "{}Content-Length: 0\r\n\r\n",
        base.replace("1 OPTIONS", "1 INVITE")
            .replace("z9hG4bKm1", "z9hG4bKm1i")
    ));
    assert!(
        answer.starts_with("SIP/2.0 400 CSeq method does not match the request\r\n"),
        "{answer}"
    );
    let answer = ask(format!(
        "{}Content-Length: 0\r\n\r\n",
        base.replace("OPTIONS sip", "FROBNICATE sip")
            .replace("1 OPTIONS", "1 FROBNICATE")
            .replace("z9hG4bKm1", "z9hG4bKm1f")
    ));
    assert!(answer.starts_with("SIP/2.0 501 "), "{answer}");
    let answer = ask(format!(
        "{}Content-Length: 0\r\n\r\n",
        base.replace("Max-Forwards: 70", "Max-Forwards: 0")
            .replace("z9hG4bKm1", "z9hG4bKm1z")
    ));
    assert!(answer.starts_with("SIP/2.0 483 "), "{answer}");
    // Garbage without the headers a reply needs is dropped; the service keeps answering.
    socket
        .send_to(b"\x16\x03\x01 not SIP at all\r\n\r\n", &target)
        .unwrap();
    let answer = ask(format!("{base}Content-Length: 0\r\n\r\n"));
    assert!(answer.starts_with("SIP/2.0 200 OK\r\n"), "{answer}");
    assert!(answer.contains("Allow: INVITE"), "{answer}");
    // RFC 3581: a client asking for rport learns the port it was seen from.
    let local_port = socket.local_addr().unwrap().port();
    let answer = ask(format!(
        "{}Content-Length: 0\r\n\r\n",
        base.replace("branch=z9hG4bKm1", "branch=z9hG4bKm2;rport")
    ));
    assert!(
        answer.contains(&format!(";rport={local_port};received=127.0.0.1")),
        "{answer}"
    );
    service.stop();
}

/// Every `m=audio` port in a SIPp message trace.
fn sdp_ports(trace: &str) -> Vec<u16> {
    trace
        .lines()
        .filter_map(|l| l.trim().strip_prefix("m=audio "))
        .filter_map(|rest| rest.split_whitespace().next()?.parse().ok())
        .collect()
}

#[test]
fn hold_and_resume_keep_the_same_relay_ports() {
    let ports = ports(7);
    let service = Service::start("hold", &ports, &["--trusted", "127.0.0.0/8"]);
    let (_traces, uas_trace, uac_trace) = traces("hold");
    call(
        &ports,
        &service,
        Scenario::new("uas_hold_resume.xml").args(&[
            "-trace_msg",
            "-message_file",
            uas_trace.to_str().unwrap(),
        ]),
        Scenario::new("uac_hold_resume.xml").args(&[
            "-trace_msg",
            "-message_file",
            uac_trace.to_str().unwrap(),
        ]),
    );
    let rows = service.stop();
    assert_eq!(rows[0]["disposition"], "answered");
    let relay = &ports.relay;
    let uac_seen: Vec<u16> = sdp_ports(&std::fs::read_to_string(&uac_trace).unwrap())
        .into_iter()
        .filter(|p| relay.contains(p))
        .collect();
    let uas_text = std::fs::read_to_string(&uas_trace).unwrap();
    let uas_seen: Vec<u16> = sdp_ports(&uas_text)
        .into_iter()
        .filter(|p| relay.contains(p))
        .collect();
    assert_eq!(
        uac_seen.len(),
        3,
        "three answers reached the caller: {uac_seen:?}"
    );
    assert_eq!(
        uas_seen.len(),
        3,
        "three offers reached the callee: {uas_seen:?}"
    );
    assert!(
        uac_seen.iter().all(|p| *p == uac_seen[0]),
        "caller-side relay port changed: {uac_seen:?}"
    );
    assert!(
        uas_seen.iter().all(|p| *p == uas_seen[0]),
        "callee-side relay port changed: {uas_seen:?}"
    );
    assert_ne!(uac_seen[0], uas_seen[0]);
    assert!(
        uas_text.contains("a=sendonly"),
        "the hold reached the callee"
    );
}

#[test]
fn an_unreachable_media_proxy_turns_into_503_not_a_hang() {
    let ports = ports(8);
    // Nothing listens on port 9 (discard) on loopback here: connections are refused.
    let service = Service::start(
        "no-proxy",
        &ports,
        &[
            "--trusted",
            "127.0.0.0/8",
            "--mediaproxy",
            "http://127.0.0.1:9",
        ],
    );
    let started = Instant::now();
    let caller = uac(&ports, "uac_expect_503.xml", &[]);
    expect_success(caller, "UAC", &service);
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "503 took {:?}",
        started.elapsed()
    );
    let (rows, log) = service.stop_with_log();
    assert_eq!(rows[0]["disposition"], "failed");
    assert_eq!(rows[0]["sip_status"], "503");
    assert_eq!(rows[0]["hangup_side"], "system");
    assert!(
        rows[0]["media_diagnosis"].contains("media proxy unavailable"),
        "{:?}",
        rows[0]
    );
    assert!(
        log.contains("media proxy unreachable at start"),
        "the start-up check says so:\n{log}"
    );
}

#[test]
fn a_callee_that_never_answers_times_out_as_no_answer() {
    let ports = ports(9);
    let service = Service::start(
        "ring-timeout",
        &ports,
        &["--trusted", "127.0.0.0/8", "--ring-timeout", "1s"],
    );
    call(
        &ports,
        &service,
        Scenario::new("uas_ring_until_cancel.xml"),
        Scenario::new("uac_expect_408.xml"),
    );
    let rows = service.stop();
    assert_eq!(rows[0]["disposition"], "no_answer");
    assert_eq!(rows[0]["sip_status"], "408");
    assert_eq!(rows[0]["hangup_side"], "system");
}

/// Starts the `mediaproxy` binary on a gRPC port; returns it and its URL once it listens.
#[test]
fn a_separately_started_mediaproxy_relays_the_call_over_grpc() {
    let ports = ports(10);
    let (mut proxy, url) = start_mediaproxy(25600, &ports.relay_arg(), "media-7");
    let service = Service::start(
        "separate-proxy",
        &ports,
        &["--trusted", "127.0.0.0/8", "--mediaproxy", &url],
    );
    // No relay in this process: nothing to yield to.
    let control = service.nices("tokio-rt");
    assert!(
        !control.is_empty() && control.iter().all(|&n| n == 0),
        "{control:?}"
    );
    call(
        &ports,
        &service,
        Scenario::new("uas_pcmu_echo.xml").echo(),
        Scenario::new("uac_pcmu_pcap.xml"),
    );
    let rows = service.stop();
    proxy.kill();
    let cdr = &rows[0];
    assert_eq!(cdr["media_node"], "media-7");
    assert_eq!(cdr["media_verdict"], "ok");
    assert!(
        number(cdr, "caller_audio_packets") >= MIN_PACKETS,
        "{cdr:?}"
    );
    assert!(
        number(cdr, "callee_audio_packets") >= MIN_PACKETS,
        "{cdr:?}"
    );
}

#[test]
fn a_call_without_media_is_ended_by_the_media_timeout_on_both_legs() {
    let ports = ports(11);
    let service = Service::start(
        "media-timeout",
        &ports,
        &["--trusted", "127.0.0.0/8", "--media-timeout", "2s"],
    );
    // The callee waits for a BYE (from us, since the caller never hangs up); no RTP anywhere.
    let callee = uas(&ports, "uas_pcmu_echo.xml", false, &[]);
    std::thread::sleep(Duration::from_millis(300));
    let started = Instant::now();
    let caller = uac(&ports, "uac_silent_until_bye.xml", &[]);
    expect_success(caller, "UAC", &service);
    expect_success(callee, "UAS", &service);
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "ended after {:?}",
        started.elapsed()
    );
    let rows = service.stop();
    let cdr = &rows[0];
    assert_eq!(cdr["hangup_side"], "system");
    assert_eq!(cdr["disposition"], "answered");
    assert_eq!(cdr["media_verdict"], "no_media");
    assert_eq!(cdr["caller_audio_packets"], "0");
    assert!(number(cdr, "duration_ms") >= 2000, "{cdr:?}");
}

#[test]
fn a_call_over_tcp_on_both_legs() {
    let ports = ports(12);
    // The default route is replaced by a TCP one; SIPp speaks TCP on both sides (-t t1).
    let route = format!("=sip:127.0.0.1:{};transport=tcp", ports.uas);
    let service = Service::start(
        "tcp",
        &ports,
        &["--trusted", "127.0.0.0/8", "--route", &route],
    );
    let uas_args = strings(&[
        "-sf",
        "uas_pcmu_echo.xml",
        "-t",
        "t1",
        "-i",
        "127.0.0.1",
        "-p",
        &ports.uas.to_string(),
        "-mi",
        "127.0.0.1",
        "-mp",
        &ports.uas_media.to_string(),
        "-m",
        "1",
        "-rtp_echo",
    ]);
    let callee = sipp(&uas_args);
    std::thread::sleep(Duration::from_millis(300));
    let caller = uac(&ports, "uac_pcmu_pcap.xml", &["-t", "t1"]);
    expect_success(caller, "UAC", &service);
    expect_success(callee, "UAS", &service);
    let rows = service.stop();
    let cdr = &rows[0];
    assert_eq!(cdr["disposition"], "answered");
    assert_eq!(cdr["media_verdict"], "ok");
    assert!(
        number(cdr, "caller_audio_packets") >= MIN_PACKETS,
        "{cdr:?}"
    );
}

#[test]
fn sigterm_drains_new_calls_get_503_and_the_live_call_keeps_its_cdr() {
    let ports = ports(13);
    let service = Service::start("drain", &ports, &["--trusted", "127.0.0.0/8"]);
    let callee = uas(&ports, "uas_pcmu_echo.xml", true, &[]);
    std::thread::sleep(Duration::from_millis(300));
    let caller = uac(&ports, "uac_pcmu_pcap.xml", &[]);
    std::thread::sleep(Duration::from_millis(2000));
    service.terminate();
    std::thread::sleep(Duration::from_millis(200));
    // A second caller on its own SIP and media ports while draining.
    let late_args = strings(&[
        "-sf",
        "uac_expect_503.xml",
        &format!("127.0.0.1:{}", ports.sip),
        "-i",
        "127.0.0.1",
        "-p",
        &(ports.uac + 5).to_string(),
        "-mi",
        "127.0.0.1",
        "-mp",
        &(ports.uac_media + 20).to_string(),
        "-s",
        "1000",
        "-m",
        "1",
    ]);
    expect_success(sipp(&late_args), "late UAC (503)", &service);
    expect_success(caller, "UAC", &service);
    expect_success(callee, "UAS", &service);
    let rows = service.wait_rows();
    assert_eq!(rows.len(), 2, "the live call and the refused one: {rows:?}");
    assert_eq!(rows[0]["disposition"], "answered");
    assert_eq!(rows[0]["hangup_side"], "caller");
    assert!(
        number(&rows[0], "caller_audio_packets") >= MIN_PACKETS,
        "{:?}",
        rows[0]
    );
    // The refused INVITE is a call too: one row, saying why.
    assert_eq!(rows[1]["disposition"], "failed");
    assert_eq!(rows[1]["sip_status"], "503");
    assert_eq!(rows[1]["media_verdict"], "not_answered");
    assert!(
        rows[1]["media_diagnosis"].contains("shutting down"),
        "{:?}",
        rows[1]
    );
}

#[test]
fn an_ipv6_call_is_routed_with_its_sdp_rewritten_to_the_ipv6_relay() {
    let ports = ports(14);
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
    let ports = ports(15);
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
    let ports = ports(16);
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
    let ports = ports(17);
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
    let ports = ports(18);
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
    let ports = ports(19);
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
    let ports = ports(20);
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
    let ports = ports(21);
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
    let ports = ports(24);
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
    let ports = Ports {
        sip: 25820,
        uac: 25821,
        uas: 25822,
        uac_media: 34700,
        uas_media: 34720,
        relay: 34800..34900,
    };
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
