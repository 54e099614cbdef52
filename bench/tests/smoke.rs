//! The benchmark binary end to end, small: our relay and both bare forwarders (epoll and
//! io_uring) relay every packet of 20 calls, each to the right stream (the generator checks
//! stream and sequence of every packet it receives), with no loss and no duplicates. Speed is
//! not asserted here; figures live in `bench` runs (docs/performance.md).

use std::process::Command;

/// Runs `bench ARGS` for one second per point, unpinned (tests share the machine), on the
/// proxy port range `ports`; returns its stdout, panicking with both outputs if it failed.
fn run_bench(args: &[&str], ports: &str) -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_bench"))
        .args(args)
        .args(["--seconds", "1", "--proxy-cpus", "none"])
        .args(["--generator-cpus", "none", "--proxy-ports", ports])
        .output()
        .expect("run bench");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "bench failed:\n{stdout}\n{stderr}");
    stdout
}

/// Runs `bench ARGS`, which must fail; returns its stderr.
fn bench_refuses(args: &[&str]) -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_bench"))
        .args(args)
        .output()
        .expect("run bench");
    assert!(!output.status.success(), "bench accepted {args:?}");
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// One row of the table: (relay, offered packets/s, relayed packets/s, loss %, duplicates).
fn rows(output: &str) -> Vec<(String, f64, f64, f64, u64)> {
    output
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.len() < 6 || fields[1].parse::<usize>().is_err() {
                return None;
            }
            Some((
                fields[0].to_string(),
                fields[2].parse().ok()?,
                fields[3].parse().ok()?,
                fields[4].parse().ok()?,
                fields[5].parse().ok()?,
            ))
        })
        .collect()
}

#[test]
fn every_relay_delivers_every_packet_of_every_stream() {
    let stdout = run_bench(
        &["--targets", "ours,bare,bare-uring", "--calls", "20"],
        "23000-23199",
    );
    let rows = rows(&stdout);
    let names: Vec<&str> = rows.iter().map(|row| row.0.as_str()).collect();
    assert_eq!(names, ["ours", "bare", "bare-uring"], "{stdout}");
    for (relay, offered, relayed, loss, duplicates) in rows {
        // 20 calls, two streams each, 50 packets/s, over one second.
        assert!(offered >= 1990.0, "{relay} offered {offered}:\n{stdout}");
        assert_eq!(relayed, offered, "{relay} lost packets:\n{stdout}");
        assert_eq!((loss, duplicates), (0.0, 0), "{relay}:\n{stdout}");
    }
}

/// The production shape (`--shape phones`): a socket of its own per phone leg, so the relay
/// sends every leg's packets to a distinct address, as it does to real phones. Every packet of
/// every stream still arrives once, through ours and the bare forwarder, and the header says
/// which shape was measured.
#[test]
fn every_phone_has_its_own_socket_and_gets_every_packet() {
    let stdout = run_bench(
        &[
            "--targets",
            "ours,bare",
            "--calls",
            "30",
            "--shape",
            "phones",
        ],
        "24400-24599",
    );
    assert!(
        stdout.contains("load shape: phones (a socket of its own per phone leg"),
        "{stdout}"
    );
    assert!(stdout.contains("sends every 200 us"), "{stdout}");
    let rows = rows(&stdout);
    let names: Vec<&str> = rows.iter().map(|row| row.0.as_str()).collect();
    assert_eq!(names, ["ours", "bare"], "{stdout}");
    for (relay, offered, relayed, loss, duplicates) in rows {
        assert!(offered >= 2990.0, "{relay} offered {offered}:\n{stdout}");
        assert_eq!(relayed, offered, "{relay} lost packets:\n{stdout}");
        assert_eq!((loss, duplicates), (0.0, 0), "{relay}:\n{stdout}");
    }
}

/// `--generator-netns`: the phones in a namespace of their own across a veth pair (root
/// only; elsewhere the test says it skipped). Every packet still arrives, and the namespace
/// and its veth pair are gone afterwards.
#[test]
fn the_generator_in_its_own_namespace_gets_every_packet_and_cleans_up() {
    if !std::process::Command::new("ip")
        .args(["netns", "add", "bench-probe-smoke"])
        .status()
        .is_ok_and(|s| s.success())
    {
        eprintln!("SKIPPED: network namespaces cannot be made here (not root?)");
        return;
    }
    let _ = std::process::Command::new("ip")
        .args(["netns", "del", "bench-probe-smoke"])
        .status();
    let stdout = run_bench(
        &[
            "--targets",
            "ours,bare",
            "--calls",
            "20",
            "--shape",
            "phones",
            "--generator-netns",
        ],
        "24600-24799",
    );
    assert!(
        stdout.contains("network: veth between namespaces"),
        "{stdout}"
    );
    for (relay, offered, relayed, loss, duplicates) in rows(&stdout) {
        assert!(offered >= 1990.0, "{relay} offered {offered}:\n{stdout}");
        assert_eq!(relayed, offered, "{relay} lost packets:\n{stdout}");
        assert_eq!((loss, duplicates), (0.0, 0), "{relay}:\n{stdout}");
    }
    let namespaces = std::process::Command::new("ip")
        .args(["netns", "list"])
        .output()
        .unwrap();
    assert!(
        !String::from_utf8_lossy(&namespaces.stdout).contains("benchgen-"),
        "a namespace of the run was left behind"
    );
}

/// `--rounds` measures every target that many times and prints a summary per call count: the
/// reference relay (here the last target) has a ratio of exactly 1 to itself, and target
/// `baseline` runs the binary named by `--baseline` through the same gRPC contract as ours.
#[test]
fn rounds_print_a_summary_with_paired_ratios() {
    let mediaproxy =
        std::path::PathBuf::from(env!("CARGO_BIN_EXE_bench")).with_file_name("mediaproxy");
    let stdout = run_bench(
        &[
            "--targets",
            "ours,baseline",
            "--calls",
            "10",
            "--rounds",
            "2",
            "--baseline",
            mediaproxy.to_str().unwrap(),
        ],
        "23200-23399",
    );
    let names: Vec<String> = rows(&stdout).into_iter().map(|row| row.0).collect();
    // Round two starts with the other target.
    assert_eq!(names, ["ours", "baseline", "baseline", "ours"], "{stdout}");
    assert!(
        stdout.contains("summary   10 calls, 2 rounds") && stdout.contains("ratio to baseline"),
        "{stdout}"
    );
    let baseline = stdout
        .lines()
        .find(|line| line.trim_start().starts_with("baseline ") && line.contains(" x"))
        .unwrap_or_else(|| panic!("no summary line for baseline:\n{stdout}"));
    assert!(baseline.contains("x1.00 (1.00-1.00)"), "{baseline}");
    assert!(baseline.contains(" p99 "), "{baseline}");
    let ours = stdout
        .lines()
        .find(|line| line.trim_start().starts_with("ours ") && line.contains(" x"))
        .unwrap_or_else(|| panic!("no summary line for ours:\n{stdout}"));
    assert!(ours.contains("loss 0.000"), "{ours}");
}

#[test]
fn target_baseline_without_a_path_is_refused() {
    let stderr = bench_refuses(&["--targets", "baseline", "--calls", "1", "--seconds", "1"]);
    assert!(stderr.contains("--baseline PATH"), "{stderr}");
}

/// `--churn` sets up and releases further calls through the gRPC contract while the measured
/// calls carry traffic; the measured calls still lose nothing, and the row says how many
/// calls were churned (about 20 per second over one second of warm-up and one measured) and
/// that none failed. The port range has room for the churned calls' ports in the proxy's
/// 2 s quarantine after release.
#[test]
fn churned_calls_come_and_go_while_the_measured_calls_relay_everything() {
    let stdout = run_bench(
        &["--targets", "ours", "--calls", "10", "--churn", "20"],
        "23400-23999",
    );
    let rows = rows(&stdout);
    assert_eq!(rows.len(), 1, "{stdout}");
    let (_, offered, relayed, loss, duplicates) = rows[0].clone();
    assert!(offered >= 990.0, "{stdout}");
    assert_eq!((relayed, loss, duplicates), (offered, 0.0, 0), "{stdout}");
    let row = stdout
        .lines()
        .find(|line| line.starts_with("ours "))
        .expect("row");
    let fields: Vec<&str> = row.split_whitespace().collect();
    let (churned, failures): (usize, u64) = (
        fields[fields.len() - 3].parse().expect("churned"),
        fields[fields.len() - 1].parse().expect("cfail"),
    );
    // 20/s over the 2.3 s of traffic is 46 at most (the churn never bursts past its rate);
    // on a loaded 2-core machine (the other tests, the generator's busy core) setups run
    // slower than 50 ms and fewer happen: the rate is a benchmark figure, not asserted here.
    assert!((10..=50).contains(&churned), "churned {churned}:\n{stdout}");
    assert_eq!(failures, 0, "{stdout}");
}

#[test]
fn churn_is_refused_for_the_bare_forwarder() {
    let stderr = bench_refuses(&["--targets", "ours,bare", "--churn", "5", "--calls", "1"]);
    assert!(
        stderr.contains("--churn needs a relay with a control protocol") && stderr.contains("bare"),
        "{stderr}"
    );
}

/// Target `ours+rec` records every call while relaying: every packet is still relayed, and
/// every recording runs and takes every packet (the recorder is never behind at this load).
#[test]
fn ours_recording_every_call_relays_and_records_every_packet() {
    let dir = std::env::temp_dir().join(format!("bench-smoke-rec-{}", std::process::id()));
    let stdout = run_bench(
        &[
            "--targets",
            "ours+rec",
            "--calls",
            "10",
            "--recordings",
            dir.to_str().unwrap(),
        ],
        "24300-24399",
    );
    let rows = rows(&stdout);
    assert_eq!(rows.len(), 1, "{stdout}");
    let (_, offered, relayed, _, _) = rows[0];
    assert!(offered >= 990.0 && relayed == offered, "{stdout}");
    let line = stdout
        .lines()
        .find(|l| l.contains("^ recorded"))
        .unwrap_or_else(|| panic!("{stdout}"));
    assert!(line.contains("recorded 10 calls"), "{line}");
    assert!(line.contains(" 0 dropped by the recorder"), "{line}");
    assert!(!dir.exists(), "the recordings are removed after the point");
}

/// `--decode-cost` prints one row per codec with the file rate and a positive cost.
#[test]
fn decode_cost_covers_every_recorded_codec() {
    let output = Command::new(env!("CARGO_BIN_EXE_bench"))
        .args(["--decode-cost", "1"])
        .output()
        .expect("run bench");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}");
    for (codec, rate) in [
        ("PCMU", 8000),
        ("PCMA", 8000),
        ("G722", 16000),
        ("opus", 48000),
    ] {
        let row = stdout
            .lines()
            .find(|l| l.starts_with(codec))
            .unwrap_or_else(|| panic!("no {codec} row:\n{stdout}"));
        let fields: Vec<&str> = row.split_whitespace().collect();
        assert_eq!(fields[1], rate.to_string(), "{row}");
        let micros: f64 = fields[2].parse().unwrap();
        assert!(micros > 0.0, "{row}");
    }
}
