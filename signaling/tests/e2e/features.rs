//! Call features inside an answered call, end to end between SIPp phones: what business
//! phones and IVRs send while talking (docs/architecture.md). Ports: each test takes its own
//! (`Ports::take`: testkit's port blocks).

use crate::common::calls::{
    MIN_PACKETS, Ports, Scenario, Service, call, expect_success, sipp, strings,
};
use crate::common::number;

#[test]
fn an_info_a_message_and_an_update_cross_the_call_and_their_answers_come_back() {
    let ports = Ports::take();
    let service = Service::start("info", &ports, &["--trusted", "127.0.0.0/8"]);
    // The callee checks the INFO's DTMF body and type and refuses the MESSAGE with 415; the
    // caller's scenario fails unless it gets the 200 and the 415 back.
    call(
        &ports,
        &service,
        Scenario::new("uas_info.xml"),
        Scenario::new("uac_info.xml"),
    );
    let metrics = service.metrics();
    for method in ["INFO", "MESSAGE", "UPDATE"] {
        let sample = format!("signaling_sip_requests_total{{method=\"{method}\"}} ");
        let counted = metrics
            .lines()
            .find_map(|l| l.strip_prefix(&sample))
            .and_then(|v| v.parse::<f64>().ok());
        assert!(counted >= Some(1.0), "{method}: {counted:?}\n{metrics}");
    }
    let rows = service.stop();
    assert_eq!(rows.len(), 1, "{rows:?}");
    let cdr = &rows[0];
    assert_eq!(cdr["disposition"], "answered", "{cdr:?}");
    assert_eq!(cdr["hangup_side"], "caller", "{cdr:?}");
    assert_eq!(number(cdr, "sip_status"), 200);
}

/// A blind transfer between three SIPp phones with RTP: alice calls bob and talks, bob
/// transfers her to carol by REFER, she talks to carol, and hangs up. Two CDR rows, linked,
/// each with its own media figures.
#[test]
fn a_blind_transfer_moves_the_audio_to_the_target_with_a_cdr_row_per_pairing() {
    let ports = Ports::take();
    // Carol: the SIP port after the callee's, media 20 above the callee's.
    let (carol, carol_media) = (ports.uas + 1, ports.uas_media + 20);
    let carol_route = format!("carol=sip:127.0.0.1:{carol}");
    let service = Service::start(
        "transfer",
        &ports,
        &["--trusted", "127.0.0.0/8", "--route", &carol_route],
    );
    let target = extra_phone("uas_transfer_target.xml", carol, carol_media);
    call(
        &ports,
        &service,
        Scenario::new("uas_transferor.xml").echo(),
        Scenario::new("uac_transferee.xml"),
    );
    expect_success(target, "transfer target", &service);
    let metrics = service.metrics();
    assert_eq!(
        testkit::metric_value(
            &metrics,
            "signaling_transfers_total",
            &[("outcome", "completed")]
        ),
        Some(1.0),
        "{metrics}"
    );
    let rows = service.stop();
    assert_eq!(rows.len(), 2, "{rows:?}");
    let (old, new) = (&rows[0], &rows[1]);
    assert_eq!(old["disposition"], "answered", "{old:?}");
    assert_eq!(old["hangup_side"], "callee", "{old:?}");
    assert!(
        old["end_reason"].contains("transferred by the callee"),
        "{old:?}"
    );
    assert_eq!(old["transferred_to"], new["call_id"], "{rows:?}");
    assert_eq!(new["transferred_from"], old["call_id"], "{rows:?}");
    assert_eq!(new["callee"], "carol", "{new:?}");
    assert_eq!(new["hangup_side"], "caller", "{new:?}");
    // Each pairing's own figures: alice's tone echoed by bob, then by carol.
    for row in [old, new] {
        assert!(number(row, "caller_audio_packets") >= 50, "{row:?}");
        assert!(number(row, "callee_audio_packets") >= 50, "{row:?}");
        assert_eq!(row["media_verdict"], "ok", "{row:?}");
    }
    assert!(
        number(new, "caller_audio_packets") >= MIN_PACKETS,
        "the whole second tone reached carol: {new:?}"
    );
}

/// A caller that requires 100rel and a callee that sends its early media reliably: each leg
/// PRACKs its own reliable 183 (the B2BUA both sends one and PRACKs one), then the call
/// carries audio and leaves an ordinary CDR.
#[test]
fn reliable_provisionals_are_pracked_on_both_legs_and_the_call_carries_audio() {
    let ports = Ports::take();
    let service = Service::start("100rel", &ports, &["--trusted", "127.0.0.0/8"]);
    call(
        &ports,
        &service,
        Scenario::new("uas_100rel.xml").echo(),
        Scenario::new("uac_100rel.xml"),
    );
    let rows = service.stop();
    assert_eq!(rows.len(), 1, "{rows:?}");
    let cdr = &rows[0];
    assert_eq!(cdr["disposition"], "answered", "{cdr:?}");
    assert!(
        number(cdr, "caller_audio_packets") >= MIN_PACKETS,
        "{cdr:?}"
    );
    assert!(
        number(cdr, "callee_audio_packets") >= MIN_PACKETS,
        "{cdr:?}"
    );
    assert_eq!(cdr["media_verdict"], "ok", "{cdr:?}");
}

/// SIPp playing one more phone at `port` (RTP at `media`), echoing what it gets.
fn extra_phone(scenario: &str, port: u16, media: u16) -> crate::common::Running {
    sipp(&strings(&[
        "-sf",
        scenario,
        "-i",
        "127.0.0.1",
        "-p",
        &port.to_string(),
        "-mi",
        "127.0.0.1",
        "-mp",
        &media.to_string(),
        "-m",
        "1",
        "-rtp_echo",
    ]))
}

/// A callee that redirects (302 to carol): the B2BUA follows it, carol answers and the call
/// carries audio; the CDR names where the call went.
#[test]
fn a_redirect_is_followed_to_the_contact_it_names() {
    let ports = Ports::take();
    let (carol, carol_media) = (ports.uas + 1, ports.uas_media + 20);
    let carol_route = format!("carol=sip:127.0.0.1:{carol}");
    let service = Service::start(
        "redirect",
        &ports,
        &["--trusted", "127.0.0.0/8", "--route", &carol_route],
    );
    let answering = extra_phone("uas_pcmu_echo.xml", carol, carol_media);
    call(
        &ports,
        &service,
        Scenario::new("uas_redirect.xml"),
        Scenario::new("uac_pcmu_pcap.xml"),
    );
    expect_success(answering, "carol", &service);
    let rows = service.stop();
    assert_eq!(rows.len(), 1, "{rows:?}");
    let cdr = &rows[0];
    assert_eq!(cdr["disposition"], "answered", "{cdr:?}");
    assert!(cdr["end_reason"].contains("redirected by"), "{cdr:?}");
    assert_eq!(
        cdr["callee_contact"],
        format!("sip:carol@127.0.0.1:{carol}"),
        "{cdr:?}"
    );
    assert!(
        number(cdr, "caller_audio_packets") >= MIN_PACKETS,
        "{cdr:?}"
    );
    assert!(
        number(cdr, "callee_audio_packets") >= MIN_PACKETS,
        "{cdr:?}"
    );
    assert_eq!(cdr["media_verdict"], "ok", "{cdr:?}");
}

/// Registers `user` (password `secret`) at 127.0.0.1:`port` with digest, from that port: the
/// binding's source is where its calls go.
fn register(sip: u16, user: &str, port: u16) {
    use md5::{Digest, Md5};
    let socket = std::net::UdpSocket::bind(("127.0.0.1", port)).unwrap();
    socket
        .set_read_timeout(Some(std::time::Duration::from_secs(3)))
        .unwrap();
    let uri = format!("sip:127.0.0.1:{sip}");
    let request = |cseq: u32, authorization: &str| {
        format!(
            "REGISTER {uri} SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:{port};branch=z9hG4bK-reg-{port}-{cseq}\r\n\
             Max-Forwards: 70\r\nFrom: <sip:{user}@127.0.0.1>;tag=r{port}\r\nTo: <sip:{user}@127.0.0.1>\r\n\
             Call-ID: reg-{port}\r\nCSeq: {cseq} REGISTER\r\nContact: <sip:{user}@127.0.0.1:{port}>\r\n\
             Expires: 300\r\n{authorization}Content-Length: 0\r\n\r\n"
        )
    };
    let exchange = |text: String| {
        socket.send_to(text.as_bytes(), ("127.0.0.1", sip)).unwrap();
        let mut buffer = [0u8; 4096];
        loop {
            let (n, _) = socket
                .recv_from(&mut buffer)
                .expect("an answer to REGISTER");
            let answer = String::from_utf8_lossy(&buffer[..n]).into_owned();
            if !answer.starts_with("SIP/2.0 100") {
                return answer;
            }
        }
    };
    let challenge = exchange(request(1, ""));
    assert!(challenge.starts_with("SIP/2.0 401"), "{challenge}");
    let param = |name: &str| {
        challenge
            .split(&format!("{name}=\""))
            .nth(1)
            .and_then(|r| r.split('"').next())
            .unwrap()
            .to_owned()
    };
    let hex = |text: String| {
        Md5::digest(text.as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    };
    let (realm, nonce) = (param("realm"), param("nonce"));
    let ha1 = hex(format!("{user}:{realm}:secret"));
    let ha2 = hex(format!("REGISTER:{uri}"));
    let response = hex(format!("{ha1}:{nonce}:00000001:0a4f113b:auth:{ha2}"));
    let authorization = format!(
        "Authorization: Digest username=\"{user}\", realm=\"{realm}\", nonce=\"{nonce}\", uri=\"{uri}\", \
         response=\"{response}\", algorithm=MD5, qop=auth, nc=00000001, cnonce=\"0a4f113b\"\r\n"
    );
    let ok = exchange(request(2, &authorization));
    assert!(ok.starts_with("SIP/2.0 200"), "{ok}");
}

/// A user with two registered devices: both ring, one only rings (and is CANCELled), the
/// other answers and carries the audio; the CDR names the device that answered.
#[test]
fn a_call_rings_every_device_of_the_user_and_the_one_that_answers_takes_it() {
    let ports = Ports::take();
    let (mobile, mobile_media) = (ports.uas + 1, ports.uas_media + 20);
    let dir = crate::common::Scratch::new("sig-e2e-fork-users");
    let users = dir.join("users.toml");
    std::fs::write(&users, "[users.bob]\npassword = \"secret\"\n").unwrap();
    let service = Service::start(
        "fork",
        &ports,
        &[
            "--trusted",
            "127.0.0.0/8",
            "--users",
            users.to_str().unwrap(),
        ],
    );
    register(ports.sip, "bob", ports.uas);
    register(ports.sip, "bob", mobile);
    let answering = extra_phone("uas_pcmu_echo.xml", mobile, mobile_media);
    call(
        &ports,
        &service,
        Scenario::new("uas_ring_until_cancel.xml"),
        Scenario::new("uac_pcmu_pcap.xml").args(&["-s", "bob"]),
    );
    expect_success(answering, "the device that answers", &service);
    let rows = service.stop();
    assert_eq!(rows.len(), 1, "{rows:?}");
    let cdr = &rows[0];
    assert_eq!(cdr["disposition"], "answered", "{cdr:?}");
    assert_eq!(cdr["callee"], "bob", "{cdr:?}");
    assert_eq!(
        cdr["callee_contact"],
        format!("sip:bob@127.0.0.1:{mobile}"),
        "{cdr:?}"
    );
    assert!(
        number(cdr, "caller_audio_packets") >= MIN_PACKETS,
        "{cdr:?}"
    );
    assert!(
        number(cdr, "callee_audio_packets") >= MIN_PACKETS,
        "{cdr:?}"
    );
}

/// Session timers on both legs with SIPp: the caller is granted its 90 s and refreshes by
/// UPDATE, the callee refreshes on its own leg; neither refresh crosses to the other leg, and
/// the call carries audio to an ordinary CDR.
#[test]
fn session_timers_are_negotiated_and_refreshed_on_each_leg() {
    let ports = Ports::take();
    let service = Service::start("timer", &ports, &["--trusted", "127.0.0.0/8"]);
    call(
        &ports,
        &service,
        Scenario::new("uas_timer.xml").echo(),
        Scenario::new("uac_timer.xml"),
    );
    let rows = service.stop();
    assert_eq!(rows.len(), 1, "{rows:?}");
    let cdr = &rows[0];
    assert_eq!(cdr["disposition"], "answered", "{cdr:?}");
    assert_eq!(cdr["hangup_side"], "caller", "{cdr:?}");
    assert_eq!(cdr["media_verdict"], "ok", "{cdr:?}");
}
