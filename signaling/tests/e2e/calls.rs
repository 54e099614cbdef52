//! End-to-end calls: the real `signaling` binary (with its embedded media proxy, over real
//! gRPC) between two SIPp instances, RTP included. SIPp comes from Debian's `sip-tester`
//! (`.ci/run` installs it). Scenarios and pcaps live in `tests/sipp/`. The CDR store, several
//! media proxies and recording have modules of their own (`cdr.rs`, `nodes.rs`,
//! `recording.rs`).
//!
//! Ports: each test takes its own from testkit's port blocks (`Ports::take`), so tests run
//! in parallel with nothing numbered by hand.

use std::collections::HashMap;
use std::net::UdpSocket;
use std::time::{Duration, Instant};

use crate::common::calls::{
    MIN_PACKETS, Ports, Scenario, Service, call, expect_success, sipp, start_mediaproxy, strings,
    traces, uac, uas,
};
use crate::common::{Scratch, number};

#[test]
fn caller_hangs_up_and_the_cdr_has_real_packet_counts() {
    let ports = Ports::take();
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
    let ports = Ports::take();
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
    let ports = Ports::take();
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
    let ports = Ports::take();
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
    let ports = Ports::take();
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
    let ports = Ports::take();
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
    let ports = Ports::take();
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
pub(crate) fn sdp_ports(trace: &str) -> Vec<u16> {
    trace
        .lines()
        .filter_map(|l| l.trim().strip_prefix("m=audio "))
        .filter_map(|rest| rest.split_whitespace().next()?.parse().ok())
        .collect()
}

#[test]
fn hold_and_resume_keep_the_same_relay_ports() {
    let ports = Ports::take();
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
    let ports = Ports::take();
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
    let ports = Ports::take();
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
    let ports = Ports::take();
    let (mut proxy, url) = start_mediaproxy(Ports::grpc(), &ports.relay_arg(), "media-7");
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
    let ports = Ports::take();
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
    let ports = Ports::take();
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
    let ports = Ports::take();
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
