//! Soak: SIPp calls at a steady 20 calls/s with RTP both ways (5 s of G.711 each, echoed by
//! the callee) through signaling and its embedded media proxy, while the process's memory,
//! descriptors, media sessions, free ports and CDR rows are sampled every 10 s. Nothing may
//! leak: at the end every call has its CDR (answered, verdict ok), sessions are 0, every port
//! is free again, descriptors are back to where they started. Runs 60 s by default (CI); the
//! long run is `SOAK_SECONDS=900 cargo test -p signaling --test soak -- --nocapture`, which
//! also checks that memory stays flat within 5 % once the proxy's 10-minute retention of
//! released calls' figures has passed (docs/reliability.md has its figures).
//!
//! Port plan: SIP 25996-25998; the callee's media 11900, the callers' 12000 up (SIPp's
//! `[auto_media_port]` moves 4 ports a call, modulo 10 000); relay 10000-10799. All below the
//! kernel's ephemeral range (32768 up): a port that sees this traffic must never be a port
//! another test's phone was given.

use std::time::{Duration, Instant};

mod common;

use common::calls::{Ports, Service, strings};
use common::{Running, scenarios};

fn seconds() -> u64 {
    std::env::var("SOAK_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60)
}

/// SIPp with its own overall timeout (the shared helper's 40 s is shorter than a soak).
fn sipp(args: &[String], timeout_s: u64) -> Running {
    Running(
        std::process::Command::new("sipp")
            .current_dir(scenarios())
            .args(args)
            .args([
                "-nostdin",
                "-timeout",
                &format!("{timeout_s}s"),
                "-timeout_error",
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("sipp is installed (apt-get install sip-tester)"),
    )
}

#[derive(Debug, Clone, Copy)]
struct Sample {
    at_s: u64,
    rss_kib: u64,
    descriptors: usize,
    sessions: i64,
    ports_free: i64,
    cdrs: usize,
}

fn status_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

fn sample(service: &Service, started: Instant) -> Sample {
    let held = service.held();
    Sample {
        at_s: started.elapsed().as_secs(),
        rss_kib: status_kib(service.child.id(), "VmRSS:"),
        descriptors: held.descriptors,
        sessions: held.sessions,
        ports_free: held.ports_free,
        cdrs: service.table("cdr").len(),
    }
}

#[test]
fn steady_calls_with_media_leak_nothing_and_lose_no_cdr() {
    let seconds = seconds();
    let rate = 20;
    let calls = rate * seconds;
    let ports = Ports {
        sip: 25996,
        uac: 25997,
        uas: 25998,
        uac_media: 12000,
        uas_media: 11900,
        relay: 10000..10800,
    };
    let service = Service::start(
        "soak",
        &ports,
        &["--trusted", "127.0.0.0/8", "--max-calls", "190"],
    );
    let started = Instant::now();
    let baseline = sample(&service, started);
    let timeout = seconds + 120;
    let mut callee = sipp(
        &strings(&[
            "-sf",
            "uas_pcmu_echo.xml",
            "-i",
            "127.0.0.1",
            "-p",
            &ports.uas.to_string(),
            "-mi",
            "127.0.0.1",
            "-mp",
            &ports.uas_media.to_string(),
            "-rtp_echo",
            "-m",
            &calls.to_string(),
        ]),
        timeout,
    );
    std::thread::sleep(Duration::from_millis(300));
    let mut caller = sipp(
        &strings(&[
            "-sf",
            "uac_pcmu_pcap.xml",
            &format!("127.0.0.1:{}", ports.sip),
            "-i",
            "127.0.0.1",
            "-p",
            &ports.uac.to_string(),
            "-mi",
            "127.0.0.1",
            "-mp",
            &ports.uac_media.to_string(),
            "-s",
            "1000",
            "-r",
            &rate.to_string(),
            "-l",
            "190",
            "-m",
            &calls.to_string(),
        ]),
        timeout,
    );
    let mut samples = vec![baseline];
    let mut next = started + Duration::from_secs(10);
    while caller.0.try_wait().unwrap().is_none() {
        assert!(
            started.elapsed() < Duration::from_secs(timeout + 30),
            "the caller never finished"
        );
        if Instant::now() >= next {
            samples.push(sample(&service, started));
            next += Duration::from_secs(10);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let caller_result = caller.finish();
    let callee_result = callee.finish();
    // Every CDR written, then the ports' quarantine (2 s) over.
    let deadline = Instant::now() + Duration::from_secs(30);
    while service.table("cdr").len() < calls as usize && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    std::thread::sleep(Duration::from_secs(3));
    let last = sample(&service, started);
    samples.push(last);
    println!("at_s  rss_kib  descriptors  sessions  ports_free  cdrs");
    for s in &samples {
        println!(
            "{:>4}  {:>7}  {:>11}  {:>8}  {:>10}  {:>4}",
            s.at_s, s.rss_kib, s.descriptors, s.sessions, s.ports_free, s.cdrs
        );
    }
    caller_result.expect("every call of the caller succeeded");
    callee_result.expect("every call of the callee succeeded");
    let rows = service.stop();
    assert_eq!(rows.len(), calls as usize, "no CDR lost");
    let not_ok: Vec<_> = rows
        .iter()
        .filter(|r| r["disposition"] != "answered" || r["media_verdict"] != "ok")
        .collect();
    assert!(
        not_ok.is_empty(),
        "{} calls not ok: {:?}",
        not_ok.len(),
        not_ok.first()
    );
    assert_eq!(last.sessions, 0, "sessions back to 0");
    assert_eq!(
        last.ports_free, baseline.ports_free,
        "every port free again"
    );
    assert!(
        last.descriptors <= baseline.descriptors + 8,
        "descriptors back to the baseline: {} against {}",
        last.descriptors,
        baseline.descriptors
    );
    // Past the proxy's 10-minute retention of released calls' figures, memory is flat.
    let settled: Vec<u64> = samples
        .iter()
        .filter(|s| s.at_s >= 660 && s.at_s <= seconds)
        .map(|s| s.rss_kib)
        .collect();
    if settled.len() >= 3 {
        let (low, high) = (
            *settled.iter().min().unwrap(),
            *settled.iter().max().unwrap(),
        );
        assert!(
            high * 100 <= low * 105,
            "memory grew past the retention horizon: {low} to {high} KiB"
        );
    }
}
