//! The wall clock stepped forward and back under a running signaling (with its embedded media
//! proxy), as an NTP correction or a resumed VM does: timers run on the monotonic clock and do
//! not notice (the call is not cut, the registration does not expire), and the CDRs stay sane
//! (times in order, the measured duration, on the wall clock as it now reads).
//!
//! The step is made with libfaketime (`LD_PRELOAD`), which moves `CLOCK_REALTIME` for this one
//! process only and leaves `CLOCK_MONOTONIC` alone (`DONT_FAKE_MONOTONIC`), exactly what a
//! step of the host's clock does; the host's own clock is never touched.
//!
//! Port plan: SIP 25980-25982; SIPp media 18000 and 18100; relay 11600-11699 (below the
//! kernel's ephemeral range).

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

mod common;

use common::calls::{Ports, Service, expect_success, uac, uas};
use common::{Scratch, number};

const HOUR_MS: i64 = 3_600_000;

fn unix_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// Debian's libfaketime (`scripts/test` installs it).
fn libfaketime() -> PathBuf {
    std::fs::read_dir("/usr/lib")
        .unwrap()
        .filter_map(|entry| {
            let path = entry.ok()?.path().join("faketime/libfaketime.so.1");
            path.exists().then_some(path)
        })
        .next()
        .expect("libfaketime is installed (apt-get install libfaketime; scripts/test does it)")
}

/// Waits until the service's log has said `what` `count` times.
fn wait_log(service: &Service, what: &str, count: usize) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while service.log().matches(what).count() < count {
        assert!(
            Instant::now() < deadline,
            "never logged {what:?} {count} times:\n{}",
            service.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// One answered call's row is sane on the clock it was projected on: in order, lasting what
/// the SIPp scenario lasts (5.2 s of audio), ended near `expected_end_ms`, with media both ways.
fn assert_sane(row: &HashMap<String, String>, expected_end_ms: i64) {
    let (start, answer, end) = (
        number(row, "start_time"),
        number(row, "answer_time"),
        number(row, "end_time"),
    );
    assert!(start <= answer && answer <= end, "{row:?}");
    let duration = number(row, "duration_ms");
    assert_eq!(duration, end - answer, "{row:?}");
    assert!((5_000..9_000).contains(&duration), "{row:?}");
    assert!(
        (end - expected_end_ms).abs() < 10_000,
        "ended at {end}, expected about {expected_end_ms}: {row:?}"
    );
    assert_eq!(row["disposition"], "answered", "{row:?}");
    assert_eq!(row["hangup_side"], "caller", "{row:?}");
    assert_eq!(row["media_verdict"], "ok", "{row:?}");
    assert!(number(row, "caller_audio_packets") >= 100, "{row:?}");
    assert!(number(row, "callee_audio_packets") >= 100, "{row:?}");
}

#[test]
fn a_wall_clock_stepped_forward_and_back_leaves_timers_alone_and_cdrs_sane() {
    let ports = Ports {
        sip: 25980,
        uac: 25981,
        uas: 25982,
        uac_media: 18000,
        uas_media: 18100,
        relay: 11600..11700,
    };
    let dir = Scratch::new("sig-e2e-clock");
    let offset = dir.join("faketime");
    std::fs::write(&offset, "+0\n").unwrap();
    let users = dir.join("users.toml");
    std::fs::write(&users, "[users.alice]\npassword = \"secret\"\n").unwrap();
    let (library, offset_path) = (
        libfaketime().display().to_string(),
        offset.display().to_string(),
    );
    let service = Service::start_in(
        dir,
        &ports,
        &["--users", users.to_str().unwrap()],
        &[
            ("LD_PRELOAD", &library),
            ("FAKETIME_TIMESTAMP_FILE", &offset_path),
            ("FAKETIME_CACHE_DURATION", "1"),
            ("DONT_FAKE_MONOTONIC", "1"),
        ],
    );

    let baseline = service.settled();
    // Alice registers (Expires 300, digest) and calls; two seconds into the call the clock
    // jumps an hour ahead.
    let callee = uas(&ports, "uas_pcmu_echo.xml", true, &[]);
    std::thread::sleep(Duration::from_millis(300));
    let caller = uac(&ports, "uac_register_auth_call.xml", &["-inf", "users.csv"]);
    service.wait_call_up();
    std::thread::sleep(Duration::from_secs(2));
    std::fs::write(&offset, "+3600\n").unwrap();
    // Signaling's driver and the embedded proxy's sweep each see it.
    wait_log(&service, "the wall clock stepped", 2);
    expect_success(caller, "UAC", &service);
    expect_success(callee, "UAS", &service);
    service.wait_first_cdr(Duration::from_secs(10), "no CDR");
    // The call ran its course (no timer fired early) and its row is on the new time whole.
    let rows = service.table("cdr");
    assert_sane(&rows[0], unix_ms() + HOUR_MS);
    // The packets' times came from the proxy, on the same time as the row.
    let media = service.table("cdr_media");
    assert!(!media.is_empty());
    for leg in &media {
        let first = number(leg, "first_packet_time");
        assert!(
            first >= number(&rows[0], "start_time") - 1000
                && number(leg, "last_packet_time") <= number(&rows[0], "end_time") + 1000,
            "{leg:?} outside {:?}",
            rows[0]
        );
    }
    // The binding of 300 s lives on: the registrar counts on the monotonic clock.
    let registrations = service.get("/admin/registrations");
    assert!(
        registrations.contains("\"user\": \"alice\""),
        "{registrations}"
    );
    let expires: u32 = registrations
        .split("\"expires_in_s\": ")
        .nth(1)
        .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{registrations}"));
    assert!((250..=300).contains(&expires), "{registrations}");

    // Back to an hour behind the real time: the next call (registering again, with a nonce
    // issued on the new time) is on that time.
    std::fs::write(&offset, "-3600\n").unwrap();
    wait_log(&service, "the wall clock stepped", 4);
    let callee = uas(&ports, "uas_pcmu_echo.xml", true, &[]);
    std::thread::sleep(Duration::from_millis(300));
    let caller = uac(&ports, "uac_register_auth_call.xml", &["-inf", "users.csv"]);
    expect_success(caller, "UAC", &service);
    expect_success(callee, "UAS", &service);
    service.gives_back(baseline);
    let metrics = service.metrics();
    let (rows, log) = service.stop_with_log();
    assert_eq!(rows.len(), 2, "{rows:?}\n{log}");
    let second = rows
        .iter()
        .find(|r| number(r, "start_time") < unix_ms())
        .unwrap_or_else(|| panic!("no row on the clock an hour behind: {rows:?}"));
    assert_sane(second, unix_ms() - HOUR_MS);
    for name in [
        "signaling_clock_steps_total 2",
        "mediaproxy_clock_steps_total",
    ] {
        assert!(metrics.contains(name), "{name}: {metrics}");
    }
    assert!(
        log.contains("step_seconds=3600") && log.contains("step_seconds=-7200"),
        "{log}"
    );
}
