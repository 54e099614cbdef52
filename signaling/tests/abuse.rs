//! Attacked the way the internet attacks a SIP server: SIPVicious (`sipvicious_svcrack`,
//! `sipvicious_svwar`, PyPI `sipvicious`) against the real binary, and a REGISTER flood
//! beside real SIPp users. The tools get `-b`, `-x`, `-P` and `-p`, so they touch nothing but
//! this test's signaling on 127.0.0.1. SIPVicious 0.3.8 ignores `-b` when it binds, so svcrack sends
//! from 127.0.0.1; the real user of that test sends from 127.0.0.4, the flooder from
//! 127.0.0.3.
//!
//! Port plan: SIP 25950 (svcrack, +3 the control without bans), 25960 (svwar), 25970
//! (flood); SIPp media 17000-17799 by test; relay 10800-11399 (below the kernel's ephemeral
//! range); attacker source ports
//! 25955-25959, 25965-25969, 25975.

use std::net::UdpSocket;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

mod common;

use common::calls::{Ports, Scenario, Service, call, expect_success, sipp, strings, uas};
use common::{Scratch, eventually};

const USERS: &str = "[users.alice]\npassword = \"secret\"\n[users.bob]\npassword = \"secret\"\n";

fn users_file(dir: &Scratch) -> String {
    let path = dir.join("users.toml");
    std::fs::write(&path, USERS).unwrap();
    path.display().to_string()
}

/// Runs a SIPVicious tool; its whole output.
fn sipvicious(tool: &str, args: &[&str]) -> String {
    let output = Command::new(tool).args(args).output().unwrap_or_else(|e| {
        panic!("{tool} runs (pip install sipvicious; scripts/test installs it): {e}")
    });
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

fn metric(metrics: &str, line: &str) -> bool {
    metrics.lines().any(|l| l == line)
}

/// svcrack against a user whose password is the 31st of its dictionary.
fn svcrack(dir: &Scratch, sip: u16, source_port: u16) -> String {
    let dictionary = dir.join(&format!("passwords-{sip}.txt"));
    let mut words: Vec<String> = (1..=30).map(|n| format!("guess{n}")).collect();
    words.push("secret".into());
    words.extend((31..40).map(|n| format!("guess{n}")));
    std::fs::write(&dictionary, words.join("\n") + "\n").unwrap();
    sipvicious(
        "sipvicious_svcrack",
        &[
            "-u",
            "alice",
            "-d",
            dictionary.to_str().unwrap(),
            "-b",
            "127.0.0.2",
            "-x",
            "127.0.0.2",
            "-P",
            &source_port.to_string(),
            "-p",
            &sip.to_string(),
            "--maximumtime",
            "4",
            "127.0.0.1",
        ],
    )
}

#[test]
fn a_password_guesser_is_banned_before_it_finds_the_password_and_the_real_user_still_calls() {
    let dir = Scratch::new("abuse-svcrack");
    let users = users_file(&dir);
    // Control: without bans the guesser finds the password, so the tool and the dictionary
    // are what this test says they are.
    let open = Ports {
        sip: 25953,
        uac: 25954,
        uas: 25958,
        uac_media: 17000,
        uas_media: 17100,
        relay: 10800..10900,
    };
    let unguarded = Service::start(
        "svcrack-open",
        &open,
        &["--users", &users, "--auth-max-failures", "0"],
    );
    let found = svcrack(&dir, open.sip, 25956);
    assert!(
        found.contains("secret"),
        "without bans svcrack finds the password:\n{found}"
    );
    drop(unguarded.stop());

    let ports = Ports {
        sip: 25950,
        uac: 25951,
        uas: 25952,
        uac_media: 17200,
        uas_media: 17300,
        relay: 10900..11000,
    };
    let service = Service::start("svcrack", &ports, &["--users", &users]);
    let output = svcrack(&dir, ports.sip, 25955);
    assert!(
        !output.contains("secret"),
        "the guesser must not find the password:\n{output}"
    );
    assert!(
        eventually(Duration::from_secs(3), || {
            let metrics = service.metrics();
            metric(&metrics, "signaling_auth_bans_total{scope=\"source\"} 1")
                && metric(&metrics, "signaling_banned_sources 1")
        }),
        "one source banned:\n{}",
        service.metrics()
    );
    let metrics = service.metrics();
    assert!(
        metric(
            &metrics,
            "signaling_auth_failures_total{method=\"REGISTER\"} 5"
        ),
        "five guesses were checked, the rest dropped unread:\n{metrics}"
    );
    let log = service.log();
    let bans = log.lines().filter(|l| l.contains("source banned")).count();
    assert_eq!(bans, 1, "logged once, as it began:\n{log}");
    assert!(
        log.lines()
            .any(|l| l.contains("source banned") && l.contains("source=127.0.0.1")),
        "{log}"
    );
    // The real user, from its own address, registers and calls while the guesser is banned.
    let callee = uas(&ports, "uas_pcmu_echo.xml", true, &[]);
    std::thread::sleep(Duration::from_millis(300));
    let caller = sipp(&strings(&[
        "-sf",
        "uac_register_auth_call.xml",
        &format!("127.0.0.1:{}", ports.sip),
        "-i",
        "127.0.0.4",
        "-p",
        &ports.uac.to_string(),
        "-mi",
        "127.0.0.4",
        "-mp",
        &ports.uac_media.to_string(),
        "-inf",
        "users.csv",
        "-m",
        "1",
    ]));
    expect_success(caller, "UAC", &service);
    expect_success(callee, "UAS", &service);
    let rows = service.stop();
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0]["caller"], "alice");
    assert_eq!(rows[0]["disposition"], "answered");
}

#[test]
fn a_user_name_scan_learns_no_user_names() {
    let dir = Scratch::new("abuse-svwar");
    let users = users_file(&dir);
    let ports = Ports {
        sip: 25960,
        uac: 25961,
        uas: 25962,
        uac_media: 17400,
        uas_media: 17500,
        relay: 11000..11100,
    };
    let service = Service::start("svwar", &ports, &["--users", &users]);
    let names = dir.join("names.txt");
    std::fs::write(&names, "admin\nalice\n100\nbob\ncarol\n1000\ntest\n").unwrap();
    for (method, source_port) in [
        ("REGISTER", "25965"),
        ("INVITE", "25966"),
        ("OPTIONS", "25967"),
    ] {
        let output = sipvicious(
            "sipvicious_svwar",
            &[
                // svwar gives up on a server that challenges an unknown name (as this one
                // does); --force makes it scan every name anyway.
                "--force",
                "-d",
                names.to_str().unwrap(),
                "-m",
                method,
                "-b",
                "127.0.0.2",
                "-x",
                "127.0.0.2",
                "-P",
                source_port,
                "-p",
                &ports.sip.to_string(),
                "127.0.0.1",
            ],
        );
        for user in ["alice", "bob"] {
            assert!(
                !output.contains(&format!("| {user} ")),
                "svwar with {method} must not learn {user}:\n{output}"
            );
        }
        assert!(
            output.contains("found nothing"),
            "svwar with {method} scanned and found nothing:\n{output}"
        );
    }
    drop(service.stop());
}

/// A REGISTER that starts something (no To tag), from the flooder.
fn flood_register(local: std::net::SocketAddr, sip: u16, n: u64) -> Vec<u8> {
    format!(
        "REGISTER sip:127.0.0.1:{sip} SIP/2.0\r\nVia: SIP/2.0/UDP {local};branch=z9hG4bK-flood-{n}\r\n\
         Max-Forwards: 70\r\nFrom: <sip:user{n}@127.0.0.1>;tag=f{n}\r\nTo: <sip:user{n}@127.0.0.1>\r\n\
         Call-ID: flood-{n}\r\nCSeq: 1 REGISTER\r\nContact: <sip:user{n}@{local}>\r\n\
         User-Agent: friendly-scanner\r\nContent-Length: 0\r\n\r\n"
    )
    .into_bytes()
}

#[test]
fn a_register_flood_from_one_source_leaves_real_users_at_full_success() {
    let dir = Scratch::new("abuse-flood");
    let users = users_file(&dir);
    let ports = Ports {
        sip: 25970,
        uac: 25971,
        uas: 25972,
        uac_media: 17600,
        uas_media: 17700,
        relay: 11100..11400,
    };
    let service = Service::start("flood", &ports, &["--users", &users]);
    let stop = Arc::new(AtomicBool::new(false));
    let (sent, answered, refused) = (
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
    );
    let flooder = {
        let (stop, sent, answered, refused) = (
            stop.clone(),
            sent.clone(),
            answered.clone(),
            refused.clone(),
        );
        let sip = ports.sip;
        std::thread::spawn(move || {
            let socket = UdpSocket::bind("127.0.0.3:25975").unwrap();
            socket.set_nonblocking(true).unwrap();
            let local = socket.local_addr().unwrap();
            let mut buffer = [0u8; 4096];
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                // About 4 000 requests a second: far over any budget, and still leaving the
                // two cores to the service and the real users.
                for _ in 0..40 {
                    n += 1;
                    let _ = socket.send_to(&flood_register(local, sip, n), ("127.0.0.1", sip));
                }
                while let Ok((len, _)) = socket.recv_from(&mut buffer) {
                    answered.fetch_add(1, Ordering::Relaxed);
                    let text = String::from_utf8_lossy(&buffer[..len]);
                    if text.starts_with("SIP/2.0 503") && text.contains("Retry-After:") {
                        refused.fetch_add(1, Ordering::Relaxed);
                    }
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            sent.store(n, Ordering::Relaxed);
        })
    };
    std::thread::sleep(Duration::from_secs(1));
    let started = Instant::now();
    // Six real calls (REGISTER with digest, then an authenticated INVITE, 5 s of RTP) from
    // 127.0.0.1 during the flood: every one must succeed.
    call(
        &ports,
        &service,
        Scenario::new("uas_pcmu_echo.xml").echo().args(&["-m", "6"]),
        Scenario::new("uac_register_auth_call.xml").args(&[
            "-inf",
            "users.csv",
            "-m",
            "6",
            "-l",
            "6",
            "-r",
            "2",
        ]),
    );
    let flooding = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    flooder.join().unwrap();
    let (sent, answered, refused) = (
        sent.load(Ordering::Relaxed),
        answered.load(Ordering::Relaxed),
        refused.load(Ordering::Relaxed),
    );
    let metrics = service.metrics();
    let log = service.log();
    let rows = service.stop();
    assert_eq!(rows.len(), 6, "{rows:?}");
    for row in &rows {
        assert_eq!(row["disposition"], "answered", "{row:?}");
        assert_eq!(row["media_verdict"], "ok", "{row:?}");
    }
    assert!(
        sent > 10_000,
        "the flood was a flood: {sent} sent in {flooding:?}"
    );
    assert!(
        refused >= 1,
        "the first requests over the budget get 503 with Retry-After"
    );
    // The budget is 50/s in bursts of 100: everything the flooder got back is the burst, the
    // 401s its rate allowed, and the 503s before it was dropped.
    let allowed = 100 + 50 * (flooding.as_secs() + 2) + 200;
    assert!(
        answered <= allowed,
        "{answered} of {sent} flood requests were answered, at most {allowed} expected"
    );
    let dropped = metrics
        .lines()
        .find_map(|l| l.strip_prefix("signaling_requests_limited_total{action=\"dropped\"} "))
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0);
    assert!(
        dropped > sent / 2,
        "{dropped} of {sent} dropped:\n{metrics}"
    );
    let warnings = log
        .lines()
        .filter(|l| l.contains("over its request budget"))
        .count();
    assert!(
        (1..=3).contains(&warnings),
        "logged when the source goes over, not per request: {warnings}\n"
    );
}
