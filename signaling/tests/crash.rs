//! Signaling killed with `kill -9` while a call is up: the call still gets its CDR row. At
//! the answer signaling keeps a durable record of the call (`cdr_open`) and records that it
//! is alive every 2 s; the restarted process finds the record its predecessor left, releases
//! the call on its media proxy (which answers the real final figures), and writes the row
//! ended by the system at the predecessor's last sign of life.
//!
//! And a kill in the middle of a database outage: the CDRs waiting for the database are in
//! the outage journal beside the spool file, and the next start writes them.
//!
//! Port plan: SIP 25990-25992, the media proxy's gRPC 25995; SIPp media 17800 and 17900;
//! relay 11400-11599 (below the kernel's ephemeral range). The outage tests: SIP
//! 25996-25998, SIPp media 17820 and 17920, relay 11700-11799; SIP 25983-25985, the media
//! proxy's gRPC 25986, SIPp media 17840 and 17940, relay 11800-11899.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

mod common;

use common::Scratch;
use common::calls::{Ports, Service, start_mediaproxy, uac, uas};

fn unix_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// A row the restarted process completed for a call up at the kill: ended by the system at
/// the last sign of life (every 2 s) before `killed_at`, with the media proxy's real figures.
fn assert_ended_by_the_kill(row: &std::collections::HashMap<String, String>, killed_at: i64) {
    assert_eq!(row["disposition"], "answered", "{row:?}");
    assert_eq!(row["hangup_side"], "system", "{row:?}");
    assert!(
        row["end_reason"].starts_with("signaling stopped with the call up"),
        "{row:?}"
    );
    let (answer, end) = (number(row, "answer_time"), number(row, "end_time"));
    assert!(
        end >= answer && end <= killed_at && end >= killed_at - 2500,
        "answer {answer}, end {end}, killed at {killed_at}"
    );
    assert_eq!(number(row, "duration_ms"), end - answer);
    assert_eq!(row["media_verdict"], "ok", "{row:?}");
    assert!(number(row, "caller_audio_packets") >= 100, "{row:?}");
    assert!(number(row, "callee_audio_packets") >= 100, "{row:?}");
}

fn number(row: &std::collections::HashMap<String, String>, column: &str) -> i64 {
    row[column]
        .parse()
        .unwrap_or_else(|_| panic!("{column}: {row:?}"))
}

#[test]
fn a_call_up_when_signaling_is_killed_gets_its_cdr_with_real_figures_at_the_restart() {
    let ports = Ports {
        sip: 25990,
        uac: 25991,
        uas: 25992,
        uac_media: 17800,
        uas_media: 17900,
        relay: 11500..11600,
    };
    let (_proxy, url) = start_mediaproxy(25995, "11400-11499", "mp-crash");
    let dir = Scratch::new("crash-cdr");
    let cdr = format!("sqlite://{}", dir.join("cdr.db").display());
    let options = [
        "--trusted",
        "127.0.0.0/8",
        "--mediaproxy",
        &url,
        "--cdr",
        &cdr,
    ];
    let mut first = Service::start("crash-first", &ports, &options);
    let _callee = uas(&ports, "uas_pcmu_echo.xml", true, &[]);
    std::thread::sleep(Duration::from_millis(300));
    let _caller = uac(&ports, "uac_pcmu_pcap.xml", &[]);
    // Three seconds into the 5 s of audio, the process dies without a word.
    first.wait_call_up();
    std::thread::sleep(Duration::from_millis(3000));
    let killed_at = unix_ms();
    first.child.kill().unwrap();
    first.child.wait().unwrap();
    assert!(first.table("cdr").is_empty(), "no CDR before the restart");

    let second = Service::start("crash-second", &ports, &options);
    second.wait_first_cdr(
        Duration::from_secs(10),
        "no CDR for the call after the restart",
    );
    let log = second.log();
    let (rows, media, _) = second.stop_all();
    assert_eq!(rows.len(), 1, "{rows:?}");
    // Ended at the last heartbeat before the kill; the media proxy still held the call.
    assert_ended_by_the_kill(&rows[0], killed_at);
    assert_eq!(rows[0]["media_node"], "mp-crash", "{:?}", rows[0]);
    assert_eq!(media.len(), 2, "{media:?}");
    assert!(
        log.contains("calls were up when a signaling process stopped"),
        "{log}"
    );
}

#[test]
fn cdrs_waiting_for_a_database_that_is_down_survive_a_kill() {
    let ports = Ports {
        sip: 25996,
        uac: 25997,
        uas: 25998,
        uac_media: 17820,
        uas_media: 17920,
        relay: 11700..11800,
    };
    let url = common::postgres_database("crash_outage");
    let gate = common::Gate::new(common::postgres_address(&url));
    let through_gate = gate.url(&url);
    let dir = Scratch::new("crash-outage");
    let spool = dir.join("cdr.spool").display().to_string();
    let options = [
        "--trusted",
        "127.0.0.0/8",
        "--cdr",
        &through_gate,
        "--cdr-spool",
        &spool,
    ];
    let mut first = Service::start("crash-outage-first", &ports, &options);
    gate.close();
    let callee = uas(&ports, "uas_pcmu_echo.xml", true, &[]);
    std::thread::sleep(Duration::from_millis(300));
    let caller = uac(&ports, "uac_pcmu_pcap.xml", &[]);
    common::calls::expect_success(caller, "UAC", &first);
    common::calls::expect_success(callee, "UAS", &first);
    // The call's CDR waits for the database, in memory and in the journal.
    let journal = dir.join("cdr.queue");
    assert!(
        common::eventually(Duration::from_secs(10), || {
            std::fs::read_to_string(&journal).is_ok_and(|text| text.lines().count() == 1)
        }),
        "the waiting CDR is journaled:\n{}",
        first.log()
    );
    first.child.kill().unwrap();
    first.child.wait().unwrap();
    gate.open();

    let second = Service::start("crash-outage-second", &ports, &options);
    second.wait_first_cdr(
        Duration::from_secs(20),
        "the journaled CDR was not written after the restart",
    );
    let log = second.log();
    let (rows, _, _) = second.stop_all();
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0]["disposition"], "answered", "{:?}", rows[0]);
    assert_eq!(rows[0]["hangup_side"], "caller", "{:?}", rows[0]);
    assert_eq!(rows[0]["media_verdict"], "ok", "{:?}", rows[0]);
    assert!(
        log.contains("replaying CDRs left in the spool file"),
        "{log}"
    );
    assert!(!journal.exists(), "the journal is gone once written");
}

/// Answered while the database is down, then killed: the call's durable record was only in
/// the writer, so it is journaled beside the spool (kept touched every heartbeat), and the
/// next start completes it like its own instance's orphans.
#[test]
fn a_call_answered_during_a_database_outage_and_killed_with_it_up_gets_its_row() {
    let ports = Ports {
        sip: 25983,
        uac: 25984,
        uas: 25985,
        uac_media: 17840,
        uas_media: 17940,
        relay: 11850..11900,
    };
    let (_proxy, mediaproxy) = start_mediaproxy(25986, "11800-11849", "mp-crash-outage");
    let url = common::postgres_database("crash_open_outage");
    let gate = common::Gate::new(common::postgres_address(&url));
    let through_gate = gate.url(&url);
    let dir = Scratch::new("crash-open-outage");
    let spool = dir.join("cdr.spool").display().to_string();
    let options = [
        "--trusted",
        "127.0.0.0/8",
        "--mediaproxy",
        &mediaproxy,
        "--cdr",
        &through_gate,
        "--cdr-spool",
        &spool,
    ];
    let mut first = Service::start("crash-open-outage-first", &ports, &options);
    gate.close();
    let _callee = uas(&ports, "uas_pcmu_echo.xml", true, &[]);
    std::thread::sleep(Duration::from_millis(300));
    let _caller = uac(&ports, "uac_pcmu_pcap.xml", &[]);
    first.wait_call_up();
    let journal = dir.join("cdr.open");
    assert!(
        common::eventually(Duration::from_secs(5), || journal.exists()),
        "the record of the call is journaled:\n{}",
        first.log()
    );
    std::thread::sleep(Duration::from_millis(2500));
    let killed_at = unix_ms();
    first.child.kill().unwrap();
    first.child.wait().unwrap();
    gate.open();

    let second = Service::start("crash-open-outage-second", &ports, &options);
    second.wait_first_cdr(
        Duration::from_secs(20),
        "no CDR for the call up at the kill after the restart",
    );
    let log = second.log();
    let (rows, _, _) = second.stop_all();
    assert_eq!(rows.len(), 1, "{rows:?}");
    // Ended at the journal's last touch before the kill, with the proxy's real figures.
    assert_ended_by_the_kill(&rows[0], killed_at);
    assert!(
        log.contains("a process killed during a database outage left calls that were up"),
        "{log}"
    );
    assert!(!journal.exists() && !dir.join("cdr.open-orphans").exists());
}
