//! End-to-end calls: the real `signaling` binary (with its embedded media proxy, over real
//! gRPC) between two SIPp instances, RTP included. SIPp comes from Debian's `sip-tester`
//! (`.ci/run` installs it). Scenarios and pcaps live in `tests/sipp/`.
//!
//! Port plan (one block per test n < 25, so tests run in parallel): SIP 25000 + 10 x n
//! (signaling), +1 (SIPp UAC), +2 (SIPp UAS); SIPp media 26000 + 40 x n (UAC, +20 for a second
//! UAC), 27000 + 40 x n (UAS); relay ports 28000 + 100 x n. Tests with a separate media
//! proxy use gRPC ports 25600 and 25610; the lost-proxy test has its own block (SIP 25710,
//! media 30600 / 30700, relay 31000-31099), and so have the two-proxy tests (SIP 25720 and
//! 25730, media 30800 / 30900 and 31400 / 31500, relay 31100-31299 and 31600-31799, gRPC
//! 25620-25621 and 25630-25631), the drain test (SIP 25740, second UAC 25743, media 32000 /
//! 32020 / 32100, relay 32200-32399, gRPC 25640-25641), the orphan test (SIP 25750, media
//! 32500 / 32600, relay 32700-32799, gRPC 25650), the mutual TLS test (SIP 25760 and
//! 25770, media 32900 / 33000, relay 33100-33199, gRPC 25660) and the recording tests (SIP
//! 25780, 25790, 25800 and 25810, media 33300 / 33400, 33600 / 33700, 34000 / 34100 and
//! 34400 / 34500, relay 33500-33599, 33800-33899, 34200-34299 and 34600-34699), and the TCP
//! limits test (SIP 25820, relay 34800-34899).

use std::collections::HashMap;
use std::net::UdpSocket;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod common;

use common::calls::{
    MediaProxy, Ports, Service, call_between, expect_success, ports, sipp, start_mediaproxy,
    start_mediaproxy_with, strings, traces, uac, uas,
};
use common::{Pki, Scratch, number, sibling};
use signaling::cdr::{Store, Target};

const BIN: &str = common::SIGNALING;

/// 5 s of 20 ms packets (250) plus the DTMF event of the pcap: at least 240 must arrive.
const MIN_PACKETS: i64 = 240;

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
    call_between(
        &ports,
        &service,
        "uas_pcmu_echo.xml",
        true,
        &[],
        "uac_pcmu_pcap.xml",
        &[],
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
    // DESIGN section 5: a BYE on the callee's Call-ID must end the same media session.
    let ports = ports(1);
    let service = Service::start("callee-bye", &ports, &["--trusted", "127.0.0.0/8"]);
    call_between(
        &ports,
        &service,
        "uas_echo_then_bye.xml",
        true,
        &[],
        "uac_pcap_until_bye.xml",
        &[],
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
    call_between(
        &ports,
        &service,
        "uas_busy.xml",
        false,
        &[],
        "uac_expect_busy.xml",
        &[],
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
    call_between(
        &ports,
        &service,
        "uas_ring_until_cancel.xml",
        false,
        &[],
        "uac_cancel.xml",
        &[],
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
    call_between(
        &ports,
        &service,
        "uas_pcmu_echo.xml",
        true,
        &[],
        "uac_register_auth_call.xml",
        &["-inf", "users.csv"],
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
    call_between(
        &ports,
        &service,
        "uas_pcmu_echo.xml",
        true,
        &[],
        "uac_pcmu_pcap.xml",
        &[],
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
    call_between(
        &ports,
        &service,
        "uas_hold_resume.xml",
        false,
        &["-trace_msg", "-message_file", uas_trace.to_str().unwrap()],
        "uac_hold_resume.xml",
        &["-trace_msg", "-message_file", uac_trace.to_str().unwrap()],
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
    call_between(
        &ports,
        &service,
        "uas_ring_until_cancel.xml",
        false,
        &[],
        "uac_expect_408.xml",
        &[],
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
    call_between(
        &ports,
        &service,
        "uas_pcmu_echo.xml",
        true,
        &[],
        "uac_pcmu_pcap.xml",
        &[],
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
    call_between(
        &ports,
        &service,
        "uas_late_offer.xml",
        false,
        &["-trace_msg", "-message_file", uas_trace.to_str().unwrap()],
        "uac_late_offer.xml",
        &["-trace_msg", "-message_file", uac_trace.to_str().unwrap()],
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
    call_between(
        &ports,
        &service,
        "uas_record_routed.xml",
        true,
        &["-trace_msg", "-message_file", uas_trace.to_str().unwrap()],
        "uac_record_routed.xml",
        &["-trace_msg", "-message_file", uac_trace.to_str().unwrap()],
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
    call_between(
        &ports,
        &service,
        "uas_pcmu_echo.xml",
        true,
        &["-aa"],
        "uac_pcmu_pcap.xml",
        &["-aa"],
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
    call_between(
        &ports,
        &service,
        "uas_pcmu_echo.xml",
        false,
        &[],
        "uac_pcmu_pcap.xml",
        &[],
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
    call_between(
        &ports,
        &service,
        "uas_echo_then_bye.xml",
        false,
        &[],
        "uac_silent_until_bye.xml",
        &[],
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
fn every_disposition_makes_exactly_one_postgres_row() {
    let ports = ports(22);
    let url = common::postgres_database("e2e_dispositions");
    let service = Service::start(
        "postgres",
        &ports,
        &["--trusted", "127.0.0.0/8", "--cdr", &url],
    );
    // answered (callee hangs up), busy, cancelled, and one nobody routes (404).
    call_between(
        &ports,
        &service,
        "uas_echo_then_bye.xml",
        true,
        &[],
        "uac_pcap_until_bye.xml",
        &[],
    );
    call_between(
        &ports,
        &service,
        "uas_busy.xml",
        false,
        &[],
        "uac_expect_busy.xml",
        &[],
    );
    call_between(
        &ports,
        &service,
        "uas_ring_until_cancel.xml",
        false,
        &[],
        "uac_cancel.xml",
        &[],
    );
    let rows = service.stop();
    let dispositions: Vec<&str> = rows.iter().map(|r| r["disposition"].as_str()).collect();
    assert_eq!(dispositions, ["answered", "busy", "cancelled"], "{rows:?}");
    let verdicts: Vec<&str> = rows.iter().map(|r| r["media_verdict"].as_str()).collect();
    assert_eq!(verdicts, ["ok", "not_answered", "not_answered"], "{rows:?}");
    // The callee hung up: real counts on both legs (the Call-ID mapping bug stays dead).
    assert_eq!(rows[0]["hangup_side"], "callee");
    assert!(
        number(&rows[0], "caller_audio_packets") >= MIN_PACKETS,
        "{:?}",
        rows[0]
    );
    assert!(
        number(&rows[0], "callee_audio_packets") >= MIN_PACKETS,
        "{:?}",
        rows[0]
    );
    let mut store = Store::open(&Target::parse(&url).unwrap()).unwrap();
    let (_, media) = store.rows("cdr_media", 0, i64::MAX).unwrap();
    assert_eq!(media.len(), 2 * 3, "two legs per relayed call: {media:?}");
    // The export command reads the same rows back, as CSV.
    let (ok, csv, stderr) = export(&["--cdr", &url, "--from", "2020-01-01"]);
    assert!(ok, "{stderr}");
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines.len(), 4, "{csv}");
    assert!(
        lines[0].starts_with("call_id,b_call_id,caller,callee,start_time,"),
        "{csv}"
    );
    assert!(lines[2].contains(",busy,486,callee,"), "{csv}");
    let (ok, jsonl, stderr) = export(&["--cdr", &url, "--format", "jsonl", "--table", "cdr_media"]);
    assert!(ok, "{stderr}");
    assert_eq!(jsonl.lines().count(), 6, "{jsonl}");
    let first: serde_json::Value = serde_json::from_str(jsonl.lines().next().unwrap()).unwrap();
    assert_eq!(first["leg"], "caller");
    assert!(
        first["rtp_packets_in"].as_i64().unwrap() >= MIN_PACKETS,
        "{first}"
    );
    // A range with no call exports only the header.
    let (ok, csv, _) = export(&["--cdr", &url, "--to", "2020-01-01"]);
    assert!(ok);
    assert_eq!(csv.lines().count(), 1, "{csv}");
}

/// Runs `signaling export ARGS`; (success, stdout, stderr).
fn export(args: &[&str]) -> (bool, String, String) {
    let output = Command::new(BIN)
        .arg("export")
        .args(args)
        .env_remove("SIGNALING_CDR")
        .output()
        .unwrap();
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn export_refuses_what_it_cannot_read() {
    let (ok, _, stderr) = export(&["--cdr", "sqlite:///nonexistent/cdr.db"]);
    assert!(!ok);
    assert!(
        stderr.contains("--cdr") && stderr.contains("no such file"),
        "{stderr}"
    );
    let (ok, _, stderr) = export(&["--cdr", "sqlite://x.db", "--from", "yesterday"]);
    assert!(!ok);
    assert!(stderr.contains("--from \"yesterday\""), "{stderr}");
}

#[test]
fn a_database_outage_during_calls_loses_no_cdr() {
    let ports = ports(23);
    let url = common::postgres_database("e2e_outage");
    let gate = common::Gate::new(common::postgres_address(&url));
    let through_gate = gate.url(&url);
    let service = Service::start(
        "outage",
        &ports,
        &["--trusted", "127.0.0.0/8", "--cdr", &through_gate],
    );
    let baseline = service.held();
    gate.close();
    call_between(
        &ports,
        &service,
        "uas_busy.xml",
        false,
        &[],
        "uac_expect_busy.xml",
        &[],
    );
    call_between(
        &ports,
        &service,
        "uas_pcmu_echo.xml",
        true,
        &[],
        "uac_pcmu_pcap.xml",
        &[],
    );
    // Both CDRs wait in the queue while the database is cut off.
    assert!(
        common::eventually(Duration::from_secs(5), || service
            .metrics()
            .contains("signaling_cdr_queue 2")),
        "{}",
        service.metrics()
    );
    assert!(service.log().contains("CDR database unavailable"));
    gate.open();
    assert!(
        common::eventually(Duration::from_secs(20), || service
            .metrics()
            .contains("signaling_cdr_written_total 2")),
        "{}",
        service.metrics()
    );
    // The connection cut by the outage is replaced, not added to.
    service.gives_back(baseline, 0);
    let rows = service.stop();
    let dispositions: Vec<&str> = rows.iter().map(|r| r["disposition"].as_str()).collect();
    assert_eq!(dispositions, ["busy", "answered"], "{rows:?}");
    assert!(number(&rows[1], "caller_audio_packets") >= MIN_PACKETS);
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

#[test]
fn a_media_proxy_lost_mid_call_with_no_other_node_ends_the_call_with_an_explained_cdr() {
    // Outside the numbered blocks: SIP 25710.., media 30600/30700, relay 31000-31099.
    let ports = Ports {
        sip: 25710,
        uac: 25711,
        uas: 25712,
        uac_media: 30600,
        uas_media: 30700,
        relay: 31000..31100,
    };
    let (mut proxy, url) = start_mediaproxy(25610, &ports.relay_arg(), "media-lost");
    let service = Service::start(
        "lost-proxy",
        &ports,
        &["--trusted", "127.0.0.0/8", "--mediaproxy", &url],
    );
    let callee = uas(&ports, "uas_pcmu_echo.xml", true, &[]);
    std::thread::sleep(Duration::from_millis(300));
    // The caller plays its pcap and takes the BYE signaling sends when the call cannot move.
    let caller = uac(&ports, "uac_pcap_until_bye.xml", &[]);
    // Media flows for a while, then the proxy host dies: no other node can take the call.
    std::thread::sleep(Duration::from_millis(2500));
    proxy.kill();
    expect_success(caller, "UAC", &service);
    expect_success(callee, "UAS", &service);
    let rows = service.stop();
    assert_eq!(rows.len(), 1, "{rows:?}");
    let cdr = &rows[0];
    assert_eq!(cdr["disposition"], "answered");
    assert_eq!(cdr["hangup_side"], "system");
    assert!(
        cdr["end_reason"].starts_with(
            "media proxy media-lost lost (stopped answering its health checks); no other node could take the call"
        ),
        "{cdr:?}"
    );
    assert_eq!(cdr["media_node"], "media-lost");
    // Judged from the first-packet events seen while the proxy lived.
    assert_eq!(cdr["media_verdict"], "ok", "{cdr:?}");
    let diagnosis = &cdr["media_diagnosis"];
    assert!(
        diagnosis.starts_with("media proxy media-lost could not give final figures"),
        "{diagnosis}"
    );
    assert!(diagnosis.contains("packet counts unknown"), "{diagnosis}");
    assert!(
        diagnosis.contains(&format!("caller sent from 127.0.0.1:{}", ports.uac_media)),
        "{diagnosis}"
    );
}

/// Two separately started media proxies, each with half of `ports.relay`, on gRPC ports
/// `grpc` and `grpc + 1`.
fn two_mediaproxies(ports: &Ports, grpc: u16) -> [(MediaProxy, String, &'static str); 2] {
    let middle = ports.relay.start + (ports.relay.end - ports.relay.start) / 2;
    let (a, url_a) = start_mediaproxy(
        grpc,
        &format!("{}-{}", ports.relay.start, middle - 1),
        "media-a",
    );
    let (b, url_b) = start_mediaproxy(
        grpc + 1,
        &format!("{}-{}", middle, ports.relay.end - 1),
        "media-b",
    );
    [(a, url_a, "media-a"), (b, url_b, "media-b")]
}

/// Signaling (trusting loopback) with a pool of the two media proxies at `urls`, once
/// both nodes are up.
fn pool_service(name: &str, ports: &Ports, urls: [&str; 2]) -> Service {
    let service = Service::start(
        name,
        ports,
        &[
            "--trusted",
            "127.0.0.0/8",
            "--mediaproxy",
            urls[0],
            "--mediaproxy",
            urls[1],
        ],
    );
    wait_nodes_up(&service, 2);
    service
}

/// Waits until `/admin/mediaproxies` shows every node up.
fn wait_nodes_up(service: &Service, nodes: usize) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let view = service.get("/admin/mediaproxies");
        if view.matches("\"state\": \"up\"").count() == nodes {
            return;
        }
        assert!(Instant::now() < deadline, "nodes not up: {view}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn calls_spread_over_a_pool_of_two_media_proxies() {
    let ports = Ports {
        sip: 25720,
        uac: 25721,
        uas: 25722,
        uac_media: 30800,
        uas_media: 30900,
        relay: 31100..31300,
    };
    let nodes = two_mediaproxies(&ports, 25620);
    let service = pool_service("pool-spread", &ports, [&nodes[0].1, &nodes[1].1]);
    let callee = uas(&ports, "uas_pcmu_echo.xml", true, &["-m", "4"]);
    std::thread::sleep(Duration::from_millis(300));
    let caller = uac(
        &ports,
        "uac_pcmu_pcap.xml",
        &["-m", "4", "-l", "4", "-r", "20"],
    );
    expect_success(caller, "UAC", &service);
    expect_success(callee, "UAS", &service);
    let rows = service.stop();
    assert_eq!(rows.len(), 4, "{rows:?}");
    // The exact split depends on when each node's status poll lands within the burst (the
    // policy itself is unit-tested in media::pool); both nodes take calls.
    let on = |node: &str| rows.iter().filter(|r| r["media_node"] == node).count();
    assert_eq!(on("media-a") + on("media-b"), 4, "{rows:?}");
    assert!(on("media-a") >= 1 && on("media-b") >= 1, "{rows:?}");
    for row in &rows {
        assert_eq!(row["media_verdict"], "ok", "{row:?}");
        assert!(
            number(row, "caller_audio_packets") >= MIN_PACKETS,
            "{row:?}"
        );
    }
}

#[test]
fn a_media_proxy_killed_mid_call_moves_the_call_and_audio_resumes_on_the_other() {
    let ports = Ports {
        sip: 25730,
        uac: 25731,
        uas: 25732,
        uac_media: 31400,
        uas_media: 31500,
        relay: 31600..31800,
    };
    let [mut a, mut b] = two_mediaproxies(&ports, 25630);
    let started = Instant::now();
    let service = pool_service("pool-failover", &ports, [&a.1, &b.1]);
    let callee = uas(&ports, "uas_echo_moved.xml", true, &[]);
    std::thread::sleep(Duration::from_millis(300));
    let caller = uac(&ports, "uac_pcap_moved.xml", &[]);
    // Signaling lists each node's calls every 5 s (with the lease renewal): let the one at
    // about 5 s see the call, so its CDR keeps what the lost node had counted.
    std::thread::sleep(Duration::from_millis(7500).saturating_sub(started.elapsed()));
    let calls = service.get("/admin/calls");
    let (lost, kept) = if calls.contains("\"media_node\": \"media-a\"") {
        (&mut a, &b)
    } else {
        assert!(calls.contains("\"media_node\": \"media-b\""), "{calls}");
        (&mut b, &a)
    };
    let killed_at = Instant::now();
    lost.0.kill();
    // Audio back within 2 s: the call is on the other node, both legs re-INVITEd.
    loop {
        let calls = service.get("/admin/calls");
        if calls.contains(&format!("\"media_node\": \"{}\"", kept.2)) {
            break;
        }
        assert!(
            killed_at.elapsed() < Duration::from_secs(2),
            "not moved: {calls}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    expect_success(caller, "UAC", &service);
    expect_success(callee, "UAS", &service);
    let metrics = service.metrics();
    assert!(
        metrics.contains("signaling_media_moves_total{result=\"moved\"} 1"),
        "{metrics}"
    );
    let rows = service.stop();
    assert_eq!(rows.len(), 1, "{rows:?}");
    let cdr = &rows[0];
    assert_eq!(cdr["disposition"], "answered");
    assert_eq!(cdr["media_node"], kept.2, "{cdr:?}");
    assert_eq!(cdr["media_verdict"], "ok", "{cdr:?}");
    // The second playback (5 s) went to the new node and came back echoed; the totals also
    // hold what the lost node had counted of the first one when last listed.
    assert!(
        number(cdr, "caller_audio_packets") >= MIN_PACKETS + 100,
        "{cdr:?}"
    );
    assert!(
        number(cdr, "callee_audio_packets") >= MIN_PACKETS + 100,
        "{cdr:?}"
    );
    let diagnosis = &cdr["media_diagnosis"];
    let lost_name = if kept.2 == "media-a" {
        "media-b"
    } else {
        "media-a"
    };
    assert!(
        diagnosis.contains(&format!(
            "media moved from {lost_name} (stopped answering its health checks) to {}",
            kept.2
        )),
        "{diagnosis}"
    );
    assert!(
        diagnosis.contains(&format!("{lost_name} had counted caller ")),
        "{diagnosis}"
    );
    assert!(
        diagnosis.ends_with("packet counts add those last-seen figures (listed every 5 s) to the last node's final ones"),
        "{diagnosis}"
    );
}

/// Runs `mpctl` against a media proxy; returns its standard output.
fn mpctl(url: &str, args: &[&str]) -> String {
    let output = Command::new(sibling("mpctl"))
        .args(["--grpc", url])
        .args(args)
        .output()
        .expect("mpctl is built by the workspace test command");
    assert!(output.status.success(), "mpctl {args:?}: {output:?}");
    String::from_utf8(output.stdout).unwrap()
}

/// The `sessions` figure of `mpctl status`.
fn sessions_on(url: &str) -> u32 {
    let status = mpctl(url, &["status"]);
    status
        .lines()
        .find_map(|l| l.strip_prefix("sessions"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no sessions line: {status}"))
}

#[test]
fn a_drained_node_finishes_its_call_and_the_next_call_goes_elsewhere() {
    let ports = Ports {
        sip: 25740,
        uac: 25741,
        uas: 25742,
        uac_media: 32000,
        uas_media: 32100,
        relay: 32200..32400,
    };
    let nodes = two_mediaproxies(&ports, 25640);
    let service = pool_service("pool-drain", &ports, [&nodes[0].1, &nodes[1].1]);
    let callee = uas(&ports, "uas_pcmu_echo.xml", true, &["-m", "2"]);
    std::thread::sleep(Duration::from_millis(300));
    let first = uac(&ports, "uac_pcmu_pcap.xml", &[]);
    std::thread::sleep(Duration::from_millis(1000));
    let calls = service.get("/admin/calls");
    let (drained, other) = if calls.contains("\"media_node\": \"media-a\"") {
        (&nodes[0], &nodes[1])
    } else {
        (&nodes[1], &nodes[0])
    };
    let status = mpctl(&drained.1, &["drain"]);
    assert!(status.contains("draining    yes"), "{status}");
    // Signaling sees the drain at its next status poll (0.5 s).
    let deadline = Instant::now() + Duration::from_secs(3);
    while !service
        .get("/admin/mediaproxies")
        .contains("\"draining\": true")
    {
        assert!(Instant::now() < deadline, "drain not seen");
        std::thread::sleep(Duration::from_millis(100));
    }
    let second_ports = Ports {
        uac: 25743,
        uac_media: 32020,
        relay: ports.relay.clone(),
        ..ports
    };
    let second = uac(&second_ports, "uac_pcmu_pcap.xml", &[]);
    expect_success(first, "first UAC", &service);
    expect_success(second, "second UAC", &service);
    expect_success(callee, "UAS", &service);
    let mut rows = service.stop();
    rows.sort_by_key(|r| number(r, "start_time"));
    assert_eq!(rows.len(), 2, "{rows:?}");
    assert_eq!(
        rows[0]["media_node"], drained.2,
        "the first call stayed: {rows:?}"
    );
    assert_eq!(
        rows[0]["media_verdict"], "ok",
        "and kept its media: {rows:?}"
    );
    assert_eq!(
        rows[1]["media_node"], other.2,
        "the second went elsewhere: {rows:?}"
    );
    assert_eq!(rows[1]["media_verdict"], "ok", "{rows:?}");
}

#[test]
fn a_crashed_signaling_leaves_no_orphaned_session_once_its_lease_expires() {
    let ports = Ports {
        sip: 25750,
        uac: 25751,
        uas: 25752,
        uac_media: 32500,
        uas_media: 32600,
        relay: 32700..32800,
    };
    let (_proxy, url) = start_mediaproxy_with(
        25650,
        &ports.relay_arg(),
        "media-orphans",
        // Above signaling's renewal period (5 s), as it must be.
        &["--lease-timeout", "6s"],
    );
    let mut service = Service::start(
        "orphans",
        &ports,
        &["--trusted", "127.0.0.0/8", "--mediaproxy", &url],
    );
    let _callee = uas(&ports, "uas_pcmu_echo.xml", true, &[]);
    std::thread::sleep(Duration::from_millis(300));
    let _caller = uac(&ports, "uac_pcmu_pcap.xml", &[]);
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(sessions_on(&url), 1, "the call is up");
    // The signaling host dies: nobody renews the lease or releases the call.
    service.child.kill().unwrap();
    service.child.wait().unwrap();
    let killed = Instant::now();
    std::thread::sleep(Duration::from_millis(1000));
    assert_eq!(sessions_on(&url), 1, "nothing but the lease ends it");
    while sessions_on(&url) > 0 {
        assert!(
            killed.elapsed() < Duration::from_secs(10),
            "the orphaned session was not released"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn calls_relay_through_a_media_proxy_over_mutual_tls_and_a_stranger_gets_503() {
    let ports = Ports {
        sip: 25760,
        uac: 25761,
        uas: 25762,
        uac_media: 32900,
        uas_media: 33000,
        relay: 33100..33200,
    };
    let fleet = Pki::new("fleet");
    fleet.issue("mediaproxy");
    fleet.issue("signaling-east");
    let rogue = Pki::new("rogue");
    rogue.issue("signaling-east");
    let (_proxy, url) = start_mediaproxy_with(
        25660,
        &ports.relay_arg(),
        "media-tls",
        &[
            "--tls-cert",
            &fleet.path("mediaproxy.pem"),
            "--tls-key",
            &fleet.path("mediaproxy.key"),
            "--tls-client-ca",
            &fleet.path("ca.pem"),
        ],
    );
    let url = url.replace("http://", "https://");
    let tls = |pki: &Pki| {
        [
            "--mediaproxy-ca".to_owned(),
            fleet.path("ca.pem"),
            "--mediaproxy-cert".to_owned(),
            pki.path("signaling-east.pem"),
            "--mediaproxy-key".to_owned(),
            pki.path("signaling-east.key"),
        ]
    };
    let args = tls(&fleet);
    let mut options: Vec<&str> = vec!["--trusted", "127.0.0.0/8", "--mediaproxy", &url];
    options.extend(args.iter().map(String::as_str));
    let service = Service::start("mtls", &ports, &options);
    wait_nodes_up(&service, 1);
    call_between(
        &ports,
        &service,
        "uas_pcmu_echo.xml",
        true,
        &[],
        "uac_pcmu_pcap.xml",
        &[],
    );
    let rows = service.stop();
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0]["media_node"], "media-tls");
    assert_eq!(rows[0]["media_verdict"], "ok", "{rows:?}");
    assert!(number(&rows[0], "caller_audio_packets") >= MIN_PACKETS);
    // The same name, signed by another CA: the proxy refuses it, so no node is ever up and
    // the call is answered 503 (and still leaves a CDR).
    let stranger_ports = Ports {
        sip: 25770,
        uac: 25771,
        uas: 25772,
        relay: ports.relay.clone(),
        ..ports
    };
    let args = tls(&rogue);
    let mut options: Vec<&str> = vec!["--trusted", "127.0.0.0/8", "--mediaproxy", &url];
    options.extend(args.iter().map(String::as_str));
    let service = Service::start("mtls-stranger", &stranger_ports, &options);
    std::thread::sleep(Duration::from_millis(1500));
    let view = service.get("/admin/mediaproxies");
    assert!(view.contains("\"state\": \"down\""), "{view}");
    let caller = uac(&stranger_ports, "uac_expect_503.xml", &[]);
    expect_success(caller, "UAC", &service);
    let rows = service.stop();
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0]["sip_status"], "503", "{rows:?}");
}

/// The port block of a recording test: SIP `sip` (+1 UAC, +2 UAS), SIPp media `media` (UAC)
/// and `media + 100` (UAS), relay ports `relay..relay + 100`.
fn recording_ports(sip: u16, media: u16, relay: u16) -> Ports {
    Ports {
        sip,
        uac: sip + 1,
        uas: sip + 2,
        uac_media: media,
        uas_media: media + 100,
        relay: relay..relay + 100,
    }
}

/// Signaling trusting loopback, recordings under `directory`, `--record` when `record`.
fn recording_service(
    name: &str,
    ports: &Ports,
    directory: &std::path::Path,
    record: bool,
) -> Service {
    let mut args = vec![
        "--trusted",
        "127.0.0.0/8",
        "--recordings",
        directory.to_str().unwrap(),
    ];
    if record {
        args.push("--record");
    }
    Service::start(name, ports, &args)
}

/// A WAV file's channels, sample rate and length in milliseconds (canonical 44-byte header,
/// as the media proxy writes it).
fn wav_shape(path: &str) -> (u16, u32, u64) {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    assert_eq!(&bytes[0..4], b"RIFF", "{path}");
    assert_eq!(&bytes[8..12], b"WAVE", "{path}");
    let channels = u16::from_le_bytes([bytes[22], bytes[23]]);
    let rate = u32::from_le_bytes(bytes[24..28].try_into().unwrap());
    let data = u32::from_le_bytes(bytes[40..44].try_into().unwrap());
    assert_eq!(
        data as usize,
        bytes.len() - 44,
        "{path}: header matches the data"
    );
    let millis = u64::from(data) * 1000 / (u64::from(rate) * 2 * u64::from(channels));
    (channels, rate, millis)
}

/// The stereo recording's sidecar JSON (`STEM.json` beside `STEM.wav`).
fn sidecar(stereo: &str) -> serde_json::Value {
    let path = stereo.strip_suffix(".wav").expect("a .wav path").to_owned() + ".json";
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_json::from_str(&text).unwrap()
}

#[test]
fn record_policy_records_a_call_the_callee_hangs_up_into_playable_files() {
    let ports = recording_ports(25780, 33300, 33500);
    let recordings = Scratch::new("sig-e2e-record-files");
    let directory = recordings.join("calls");
    let service = recording_service("record", &ports, &directory, true);
    call_between(
        &ports,
        &service,
        "uas_echo_then_bye.xml",
        true,
        &[],
        "uac_pcap_until_bye.xml",
        &[],
    );
    let metrics = service.metrics();
    let (rows, media, log) = service.stop_all();
    assert_eq!(rows.len(), 1, "{rows:?}");
    let cdr = &rows[0];
    assert_eq!(cdr["hangup_side"], "callee");
    assert_eq!(number(cdr, "has_recording"), 1, "{cdr:?}");
    let path = cdr["recording_path"].clone();
    assert!(
        path.starts_with(directory.to_str().unwrap()) && path.ends_with(".wav"),
        "{path}"
    );
    // Both legs' audio was written: the caller's pcap and the callee's echo of it.
    let packets = number(cdr, "recording_packets");
    assert!(packets >= 2 * MIN_PACKETS, "{cdr:?}");
    assert!(
        cdr["media_diagnosis"].contains("; recorded ") && cdr["media_diagnosis"].ends_with(&path),
        "{cdr:?}"
    );
    // Playable files at G.711's 8 kHz: stereo (caller left, callee right) and mixed mono. They
    // cover the recorded time, answer to hang-up (the second of silence after the caller's 5 s
    // pcap included: time compressed away would misplace what follows), so they hold all the
    // media and last as long as the answered call, within 100 ms (the start request's round
    // trip and the first packet's arrival, the release after the BYE).
    let (channels, rate, millis) = wav_shape(&path);
    assert_eq!((channels, rate), (2, 8000));
    let times = |column: &str| -> Vec<i64> {
        media
            .iter()
            .filter_map(|m| m.get(column).and_then(|v| v.parse().ok()))
            .collect()
    };
    let span = times("last_packet_time").into_iter().max().unwrap()
        - times("first_packet_time").into_iter().min().unwrap();
    let answered = number(cdr, "duration_ms");
    assert!(
        millis as i64 >= span && (millis as i64 - answered).abs() <= 100,
        "the file holds {millis} ms, the media lasted {span} ms, the answered call {answered} ms"
    );
    let mixed = path.replace(".wav", "-mixed.wav");
    let (channels, rate, mixed_millis) = wav_shape(&mixed);
    assert_eq!((channels, rate, mixed_millis), (1, 8000, millis));
    let json = sidecar(&path);
    assert_eq!(json["state"], "complete", "{json}");
    assert_eq!(
        json["call_id"],
        cdr["call_id"].as_str(),
        "named by the caller's Call-ID"
    );
    assert_eq!(json["packets"].as_i64(), Some(packets));
    assert!(
        metrics.contains("signaling_recording_requests_total{action=\"start\",result=\"ok\"} 1"),
        "{metrics}"
    );
    assert!(log.contains("recording request done"), "{log}");
}

#[test]
fn an_operator_starts_pauses_and_stops_a_recording_over_the_admin_endpoint() {
    let ports = recording_ports(25790, 33600, 33800);
    let recordings = Scratch::new("sig-e2e-admin-record-files");
    let directory = recordings.join("calls");
    let service = recording_service("admin-record", &ports, &directory, false);
    let callee = uas(&ports, "uas_echo_then_bye.xml", true, &[]);
    std::thread::sleep(Duration::from_millis(300));
    let caller = uac(&ports, "uac_pcap_until_bye.xml", &[]);
    let (call_id, _) = answered_call(&service);
    let post = |action: &str| -> (String, serde_json::Value) {
        let answer = service.http(
            "POST",
            &format!("/admin/calls/{call_id}/recording/{action}"),
        );
        let (head, body) = answer.split_once("\r\n\r\n").unwrap();
        let status = head.lines().next().unwrap().to_owned();
        (
            status,
            serde_json::from_str(body).unwrap_or(serde_json::Value::Null),
        )
    };
    let (status, started) = post("start?pcap=1");
    assert!(status.contains(" 200 "), "{status}");
    assert_eq!(started["recording"]["state"], "recording", "{started}");
    let detail = service.get(&format!("/admin/calls/{call_id}"));
    let body = detail.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    let detail: serde_json::Value = serde_json::from_str(body).unwrap();
    assert_eq!(detail["recording"]["state"], "recording", "{detail}");
    // Its files so far: the sidecar at once (the WAVs with the first audio written).
    let files = detail["recording"]["files"].as_array().unwrap();
    assert!(
        files.iter().any(|f| f.as_str().unwrap().ends_with(".json")),
        "{detail}"
    );
    std::thread::sleep(Duration::from_millis(1000));
    let (status, paused) = post("pause");
    assert!(status.contains(" 200 "), "{status}");
    assert_eq!(paused["recording"]["state"], "paused", "{paused}");
    std::thread::sleep(Duration::from_millis(1000));
    let (_, resumed) = post("start");
    assert_eq!(resumed["recording"]["state"], "recording", "{resumed}");
    std::thread::sleep(Duration::from_millis(1000));
    let (_, stopped) = post("stop");
    assert_eq!(stopped["recording"]["state"], "finished", "{stopped}");
    // What cannot be done is said, with the status that fits.
    let unknown = service.http("POST", "/admin/calls/nobody/recording/start");
    assert!(unknown.starts_with("HTTP/1.0 404"), "{unknown}");
    let nonsense = service.http("POST", &format!("/admin/calls/{call_id}/recording/rewind"));
    assert!(nonsense.starts_with("HTTP/1.0 404"), "{nonsense}");
    expect_success(caller, "UAC", &service);
    expect_success(callee, "UAS", &service);
    let rows = service.stop();
    let cdr = &rows[0];
    assert_eq!(number(cdr, "has_recording"), 1, "{cdr:?}");
    let path = cdr["recording_path"].clone();
    let json = sidecar(&path);
    assert_eq!(json["state"], "complete", "{json}");
    let pauses = json["pauses_ms"].as_array().unwrap();
    assert_eq!(pauses.len(), 1, "{json}");
    let (from, to) = (
        pauses[0][0].as_u64().unwrap(),
        pauses[0][1].as_u64().unwrap(),
    );
    assert!(
        (800..=1300).contains(&(to - from)),
        "paused for about a second: {json}"
    );
    // Three seconds of the call were recorded (one of them paused, kept as silence).
    let (_, _, millis) = wav_shape(&path);
    assert!((2700..=3400).contains(&millis), "{millis} ms");
    let pcap = path.replace(".wav", ".pcap");
    assert!(
        std::fs::metadata(&pcap).is_ok_and(|m| m.len() > 24),
        "{pcap}"
    );
}

#[test]
fn a_full_recordings_disk_ends_the_recording_not_the_call_and_the_cdr_says_so() {
    let recordings = Scratch::new("sig-e2e-full-disk-files");
    let mount = recordings.join("disk");
    std::fs::create_dir_all(&mount).unwrap();
    // 96 KiB: the stereo and mixed WAVs at 8 kHz take 48 KiB a second, full after about 2 s.
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=96k", "tmpfs"])
        .arg(&mount)
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !mounted {
        println!("SKIPPED: mounting a small tmpfs needs root");
        return;
    }
    struct Unmount(PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg(&self.0).status();
        }
    }
    let _unmount = Unmount(mount.clone());
    let ports = recording_ports(25800, 34000, 34200);
    let service = recording_service("full-disk", &ports, &mount, true);
    let baseline = service.held();
    call_between(
        &ports,
        &service,
        "uas_echo_then_bye.xml",
        true,
        &[],
        "uac_pcap_until_bye.xml",
        &[],
    );
    // The failed recording's files are closed, the call's ports and session given back.
    service.gives_back(baseline, 0);
    let rows = service.stop();
    assert_eq!(rows.len(), 1, "the CDR is written: {rows:?}");
    let cdr = &rows[0];
    // The call went on: both legs' audio relayed the whole time.
    assert_eq!(cdr["media_verdict"], "ok", "{cdr:?}");
    assert!(
        number(cdr, "caller_audio_packets") >= MIN_PACKETS,
        "{cdr:?}"
    );
    assert!(
        number(cdr, "callee_audio_packets") >= MIN_PACKETS,
        "{cdr:?}"
    );
    // The recording stopped where the disk filled; what reached it still plays.
    assert_eq!(number(cdr, "has_recording"), 1, "{cdr:?}");
    let diagnosis = &cdr["media_diagnosis"];
    assert!(
        diagnosis.contains("; recording failed: ") && diagnosis.contains("No space left on device"),
        "{diagnosis}"
    );
    let packets = number(cdr, "recording_packets");
    assert!(packets > 0 && packets < 2 * MIN_PACKETS, "{cdr:?}");

    let (channels, rate, millis) = wav_shape(&cdr["recording_path"]);
    assert_eq!((channels, rate), (2, 8000));
    assert!((500..=2500).contains(&millis), "{millis} ms kept");
}

/// The one call in progress once answered, from `/admin/calls`: (call id, media endpoint).
fn answered_call(service: &Service) -> (String, String) {
    let mut found = None;
    let answered = common::eventually(Duration::from_secs(5), || {
        let answer = service.get("/admin/calls");
        let body = answer.split("\r\n\r\n").nth(1).unwrap_or("[]");
        let calls: serde_json::Value = serde_json::from_str(body).unwrap_or_default();
        match calls.get(0) {
            Some(call) if !call["answered_s"].is_null() => {
                found = Some((
                    call["call_id"].as_str().unwrap_or_default().to_owned(),
                    call["media_endpoint"]
                        .as_str()
                        .unwrap_or_default()
                        .to_owned(),
                ));
                true
            }
            _ => false,
        }
    });
    assert!(answered, "the call was answered:\n{}", service.log());
    found.unwrap()
}

#[test]
fn a_reflect_call_is_tapped_live_by_an_analyser_over_grpc() {
    use proto::v1 as pb;
    let ports = recording_ports(25810, 34400, 34600);
    let recordings = Scratch::new("sig-e2e-reflect-files");
    let service = Service::start(
        "reflect",
        &ports,
        &[
            "--trusted",
            "127.0.0.0/8",
            "--media-mode",
            "reflect",
            "--recordings",
            recordings.join("calls").to_str().unwrap(),
        ],
    );
    let callee = uas(&ports, "uas_echo_then_bye.xml", true, &[]);
    std::thread::sleep(Duration::from_millis(300));
    let caller = uac(&ports, "uac_pcap_until_bye.xml", &[]);
    let (call_id, endpoint) = answered_call(&service);
    // An analyser subscribes to the call's node, as signaling's reflect mode allows.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let frames: Vec<pb::AudioFrame> = runtime.block_on(async {
        let mut client = pb::media_proxy_client::MediaProxyClient::connect(endpoint)
            .await
            .expect("the call's media proxy");
        let mut stream = client
            .tap_audio(pb::TapAudioRequest {
                call_id: call_id.clone(),
                leg: pb::Leg::Unspecified as i32,
                sample_rate: 16000,
            })
            .await
            .expect("a reflect call can be tapped")
            .into_inner();
        let mut frames = Vec::new();
        while frames.len() < 100 {
            match tokio::time::timeout(Duration::from_secs(3), stream.message()).await {
                Ok(Ok(Some(frame))) => frames.push(frame),
                other => panic!("the tap ended early: {other:?}"),
            }
        }
        frames
    });
    expect_success(caller, "UAC", &service);
    expect_success(callee, "UAS", &service);
    // Both legs' frames: 20 ms at the 16 kHz asked for, from PCMU, with the caller's audio in
    // them (the pcap's speech, and the callee's echo of it).
    for leg in [pb::Leg::Caller, pb::Leg::Callee] {
        let of_leg: Vec<&pb::AudioFrame> = frames.iter().filter(|f| f.leg == leg as i32).collect();
        assert!(of_leg.len() >= 40, "{leg:?}: {} frames", of_leg.len());
        for frame in &of_leg {
            assert_eq!(frame.call_id, call_id);
            assert_eq!(
                (frame.sample_rate, frame.pcm.len()),
                (16000, 640),
                "{leg:?}"
            );
            assert_eq!(frame.encoding, "PCMU");
        }
        let loud = of_leg.iter().any(|f| {
            f.pcm
                .chunks_exact(2)
                .any(|b| i16::from_le_bytes([b[0], b[1]]).unsigned_abs() > 1000)
        });
        assert!(loud, "{leg:?} frames carry audio");
    }
    let rows = service.stop();
    assert_eq!(rows[0]["media_mode"], "reflect");
    assert_eq!(rows[0]["media_verdict"], "ok", "{:?}", rows[0]);
}

/// SIP over TCP cannot be used to take signaling's descriptors: a connection that brings no
/// complete message (nothing, or half of one) is closed 10 s after its accept, one that
/// leaves a later message half sent 10 s after it began; one source holds at most 32
/// connections and the 33rd is closed at once; a connection that speaks SIP stays. Each is
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
    let service = Service::start("tcp-limits", &ports, &[]);
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
