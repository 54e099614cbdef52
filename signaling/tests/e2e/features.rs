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
    let target = sipp(&strings(&[
        "-sf",
        "uas_transfer_target.xml",
        "-i",
        "127.0.0.1",
        "-p",
        &carol.to_string(),
        "-mi",
        "127.0.0.1",
        "-mp",
        &carol_media.to_string(),
        "-m",
        "1",
        "-rtp_echo",
    ]));
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
