//! End-to-end CDRs: SIPp calls through the real `signaling` binary into a real PostgreSQL
//! (the private server of `scripts/test`, or `TEST_POSTGRES_URL`), a database outage in the
//! middle of calls, and the `export` command.
//!
//! Ports: each test takes its own (`Ports::take`, testkit's port blocks).

use std::process::Command;
use std::time::Duration;

use crate::common::calls::{MIN_PACKETS, Ports, Scenario, Service, call};
use crate::common::number;
use signaling::cdr::{Store, Target};

const BIN: &str = crate::common::SIGNALING;

#[test]
fn every_disposition_makes_exactly_one_postgres_row() {
    let ports = Ports::take();
    let url = crate::common::postgres_database("e2e_dispositions");
    let service = Service::start(
        "postgres",
        &ports,
        &["--trusted", "127.0.0.0/8", "--cdr", &url],
    );
    // answered (callee hangs up), busy, cancelled, and one nobody routes (404).
    call(
        &ports,
        &service,
        Scenario::new("uas_echo_then_bye.xml").echo(),
        Scenario::new("uac_pcap_until_bye.xml"),
    );
    call(
        &ports,
        &service,
        Scenario::new("uas_busy.xml"),
        Scenario::new("uac_expect_busy.xml"),
    );
    call(
        &ports,
        &service,
        Scenario::new("uas_ring_until_cancel.xml"),
        Scenario::new("uac_cancel.xml"),
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
    let ports = Ports::take();
    let url = crate::common::postgres_database("e2e_outage");
    let gate = crate::common::Gate::new(crate::common::postgres_address(&url));
    let through_gate = gate.url(&url);
    let service = Service::start(
        "outage",
        &ports,
        &["--trusted", "127.0.0.0/8", "--cdr", &through_gate],
    );
    let baseline = service.settled();
    gate.close();
    call(
        &ports,
        &service,
        Scenario::new("uas_busy.xml"),
        Scenario::new("uac_expect_busy.xml"),
    );
    call(
        &ports,
        &service,
        Scenario::new("uas_pcmu_echo.xml").echo(),
        Scenario::new("uac_pcmu_pcap.xml"),
    );
    // Both CDRs wait in the queue while the database is cut off.
    assert!(
        crate::common::eventually(Duration::from_secs(5), || service
            .metrics()
            .contains("signaling_cdr_queue 2")),
        "{}",
        service.metrics()
    );
    assert!(service.log().contains("CDR database unavailable"));
    gate.open();
    assert!(
        crate::common::eventually(Duration::from_secs(20), || service
            .metrics()
            .contains("signaling_cdr_written_total 2")),
        "{}",
        service.metrics()
    );
    // The connection cut by the outage is replaced, not added to.
    service.gives_back(baseline);
    let rows = service.stop();
    let dispositions: Vec<&str> = rows.iter().map(|r| r["disposition"].as_str()).collect();
    assert_eq!(dispositions, ["busy", "answered"], "{rows:?}");
    assert!(number(&rows[1], "caller_audio_packets") >= MIN_PACKETS);
}
