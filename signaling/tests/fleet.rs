//! The fleet on real hosts: signaling, two or three media proxies and the two SIPp phones each
//! run in a Linux network namespace of their own, cabled by veth pairs to a bridge, so every
//! gRPC request, SIP message and RTP packet crosses a network between hosts
//! (docs/architecture.md, "Several hosts"; docs/operations.md).
//!
//! Each test builds its own LAN (namespaces named after the test and the process, so tests run
//! in parallel, each on its own 10.77.0.0/24) and tears it down when it ends, passed or not.
//! Hosts use production ports (SIP 5060, gRPC 50051, RTP 40000 up) since nothing else is on
//! their network. Making namespaces needs root and iproute2 (`.ci/run` runs as root); where they
//! cannot be made, each test prints `SKIPPED` with the reason and passes.
//!
//! | host | address |
//! |---|---|
//! | `sig` (signaling, its HTTP endpoint on the host's loopback) | 10.77.0.1 |
//! | `mp1`, `mp2`, `mp3` (media proxies, node id = host name) | 10.77.0.11, .12, .13 |
//! | `uac` (SIPp callers: SIP 5060 media 6000, SIP 5070 media 7000) | 10.77.0.21 |
//! | `uas` (SIPp callee, SIP 5060, media 6000, echoing RTP) | 10.77.0.22 |

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod common;

use testkit::netns::{Host, Lan};

use common::{Pki, Rows, Running, SIGNALING, cdr_table, eventually, number, scenarios, sibling};
use signaling::cdr::Target;

/// 5 s of 20 ms packets (250) plus the DTMF event of the pcap: at least 240 must arrive.
const MIN_PACKETS: i64 = 240;

/// The gRPC URL of a media proxy host.
fn grpc_url(host: &Host, scheme: &str) -> String {
    format!("{scheme}://{}:50051", host.address)
}

/// Waits until `log` holds `line`; panics if `process` exits first or 15 s pass.
fn wait_for_line(process: &mut Running, log: &PathBuf, line: &str, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if text.contains(line) {
            return;
        }
        let exited = process.0.try_wait().unwrap();
        assert!(
            exited.is_none(),
            "{what} exited at start ({exited:?}):\n{text}"
        );
        assert!(Instant::now() < deadline, "{what} did not start:\n{text}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Starts a media proxy on `host` (node id = host name, gRPC on its address in plaintext
/// unless `extra` gives TLS files, RTP 40000-40199 on its address).
fn mediaproxy(lan: &Lan, host: &Host, extra: &[&str]) -> Running {
    let log_path = lan.path(&format!("{}.log", host.name));
    let log = std::fs::File::create(&log_path).unwrap();
    let address = host.address.to_string();
    let mut command = host.command(sibling("mediaproxy"));
    command
        .args([
            "--grpc",
            &format!("{address}:50051"),
            "--media-ip",
            &address,
        ])
        .args(["--metrics", "127.0.0.1:9466", "--ports", "40000-40199"])
        .args(["--node-id", &host.name, "--log", "info"]);
    if !extra.contains(&"--tls-cert") {
        command.arg("--grpc-plaintext");
    }
    let mut process = Running(
        command
            .args(extra)
            .env("NO_COLOR", "1")
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap(),
    );
    wait_for_line(&mut process, &log_path, "media proxy listening", &host.name);
    process
}

/// Signaling, running on its host.
/// The bearer token that opens signaling's admin endpoints to the other hosts.
const ADMIN_TOKEN: &str = "fleet-admin-token-0123";

struct Signaling {
    process: Running,
    host: Host,
    log: PathBuf,
    cdr: Target,
}

impl Signaling {
    /// Starts signaling on `host` (SIP on its address, trusting the LAN, routing every call to
    /// the `uas` host, CDRs in a SQLite file of the test) with `extra` options (the pool).
    fn start(lan: &Lan, host: &Host, extra: &[&str]) -> Self {
        let log = lan.path("signaling.log");
        let file = std::fs::File::create(&log).unwrap();
        let database = lan.path("cdr.db");
        let mut process = Running(
            host.command(SIGNALING)
                .args(["--sip", &format!("{}:5060", host.address)])
                .args([
                    "--trusted",
                    "10.77.0.0/24",
                    "--route",
                    "=sip:10.77.0.22:5060",
                ])
                .args(["--cdr", &format!("sqlite://{}", database.display())])
                // Reachable from the other hosts; the admin endpoints open to them only with
                // the token.
                .args(["--metrics", "0.0.0.0:9090", "--log", "info"])
                .args(["--admin-token", ADMIN_TOKEN])
                .args(extra)
                .env("NO_COLOR", "1")
                .stdout(file.try_clone().unwrap())
                .stderr(file)
                .spawn()
                .unwrap(),
        );
        wait_for_line(&mut process, &log, "signaling listening", "signaling");
        Self {
            process,
            host: host.clone(),
            log,
            cdr: Target::Sqlite(database),
        }
    }

    /// GETs a path of signaling's HTTP endpoint (on its host's loopback).
    fn get(&self, path: &str) -> String {
        let output = self
            .host
            .command("curl")
            .args(["-s", "--max-time", "5"])
            .arg(format!("http://127.0.0.1:9090{path}"))
            .output()
            .expect("curl is installed (.ci/run installs it)");
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Polls `/admin/mediaproxies` until `check` holds (10 s at most).
    fn wait_nodes(&self, what: &str, check: impl Fn(&str) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let view = self.get("/admin/mediaproxies");
            if check(&view) {
                return;
            }
            assert!(Instant::now() < deadline, "{what}: {view}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn wait_up(&self, nodes: usize) {
        self.wait_nodes(&format!("{nodes} nodes up"), |view| {
            view.matches("\"state\": \"up\"").count() == nodes
        });
    }

    /// The node `/admin/calls` shows the (only) live call on, among `nodes`.
    fn call_node<'a>(&self, nodes: &'a [Host]) -> &'a Host {
        let calls = self.get("/admin/calls");
        nodes
            .iter()
            .find(|n| calls.contains(&format!("\"media_node\": \"{}\"", n.name)))
            .unwrap_or_else(|| panic!("no call on a node: {calls}"))
    }

    /// SIGTERM, wait for the exit (which flushes the CDRs); the `cdr` and `cdr_media` rows.
    fn stop(mut self) -> (Rows, Rows) {
        let pid = self.process.0.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.process.0.try_wait().unwrap() {
                assert!(
                    status.success(),
                    "signaling exited {status}:\n{}",
                    self.log()
                );
                break;
            }
            assert!(Instant::now() < deadline, "signaling did not stop");
            std::thread::sleep(Duration::from_millis(50));
        }
        (
            cdr_table(&self.cdr, "cdr"),
            cdr_table(&self.cdr, "cdr_media"),
        )
    }

    /// Waits for a SIPp; panics with its error and signaling's log unless it succeeded.
    fn expect(&self, mut sipp: Running, what: &str) {
        if let Err(error) = sipp.finish() {
            panic!("{what} failed ({error})\nsignaling log:\n{}", self.log());
        }
    }
}

/// SIPp on `host` with `scenario` and `args`.
fn sipp(host: &Host, scenario: &str, args: &[String]) -> Running {
    Running(
        host.command("sipp")
            .current_dir(scenarios())
            .args(["-sf", scenario])
            .args(args)
            .args(["-nostdin", "-timeout", "40s", "-timeout_error"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("sipp is installed (apt-get install sip-tester)"),
    )
}

/// The callee: `scenario` on the `uas` host for `calls` calls, echoing RTP.
fn callee(host: &Host, scenario: &str, calls: u32) -> Running {
    let address = host.address.to_string();
    let args = [
        "-i",
        &address,
        "-p",
        "5060",
        "-mi",
        &address,
        "-mp",
        "6000",
        "-rtp_echo",
        "-m",
    ];
    let mut args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    args.push(calls.to_string());
    let running = sipp(host, scenario, &args);
    std::thread::sleep(Duration::from_millis(300));
    running
}

/// A caller on the `uac` host: `calls` calls of `scenario` at 10 per second from SIP `port`
/// (media from `port` + 940: 6000 for 5060) to signaling at `to`.
fn caller(host: &Host, to: &Host, scenario: &str, port: u16, calls: u32) -> Running {
    let address = host.address.to_string();
    let args: Vec<String> = [
        format!("{}:5060", to.address),
        "-i".into(),
        address.clone(),
        "-p".into(),
        port.to_string(),
        "-mi".into(),
        address,
        "-mp".into(),
        (port + 940).to_string(),
        "-s".into(),
        "1000".into(),
        "-m".into(),
        calls.to_string(),
        "-l".into(),
        calls.to_string(),
        "-r".into(),
        "10".into(),
    ]
    .into();
    sipp(host, scenario, &args)
}

/// Runs `mpctl` on `host` against `url` with `args`: its exit status and output.
fn mpctl(host: &Host, url: &str, args: &[&str]) -> (bool, String) {
    let output = host
        .command(sibling("mpctl"))
        .args(["--grpc", url])
        .args(args)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

/// The `sessions` figure of `mpctl status` for the node at `url`, asked from `host`.
fn sessions_on(host: &Host, url: &str) -> u32 {
    let (ok, status) = mpctl(host, url, &["status"]);
    assert!(ok, "{status}");
    status
        .lines()
        .find_map(|l| l.strip_prefix("sessions"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no sessions line: {status}"))
}

/// The LAN with signaling, `nodes` media proxy hosts, and the two phone hosts.
fn fleet(test: &str, nodes: u8) -> Option<(Lan, Host, Vec<Host>, Host, Host)> {
    let mut lan = Lan::new(test)?;
    let sig = lan.host("sig", 1);
    let media = (1..=nodes)
        .map(|i| lan.host(&format!("mp{i}"), 10 + i))
        .collect();
    let uac = lan.host("uac", 21);
    let uas = lan.host("uas", 22);
    Some((lan, sig, media, uac, uas))
}

/// A media proxy on each of `nodes` (plaintext gRPC) and signaling on `sig` pooling them
/// all, once every node is up.
fn pool(lan: &Lan, sig: &Host, nodes: &[Host]) -> (Vec<Running>, Signaling) {
    let proxies = nodes.iter().map(|n| mediaproxy(lan, n, &[])).collect();
    let options: Vec<String> = nodes
        .iter()
        .flat_map(|n| ["--mediaproxy".to_owned(), grpc_url(n, "http")])
        .collect();
    let service = Signaling::start(lan, sig, &strs(&options));
    service.wait_up(nodes.len());
    (proxies, service)
}

fn strs(list: &[String]) -> Vec<&str> {
    list.iter().map(String::as_str).collect()
}

#[test]
fn calls_spread_over_three_hosts_and_a_drained_host_takes_no_new_call() {
    let Some((lan, sig, nodes, uac, uas)) = fleet("spread", 3) else {
        return;
    };
    let (_proxies, service) = pool(&lan, &sig, &nodes);
    let phone = callee(&uas, "uas_pcmu_echo.xml", 6);
    let first = caller(&uac, &sig, "uac_pcmu_pcap.xml", 5060, 3);
    std::thread::sleep(Duration::from_millis(1500));
    // mp1 is drained for maintenance while its call goes on.
    let (ok, status) = mpctl(&sig, &grpc_url(&nodes[0], "http"), &["drain"]);
    assert!(ok && status.contains("draining    yes"), "{status}");
    service.wait_nodes("drain seen", |view| view.contains("\"draining\": true"));
    let second = caller(&uac, &sig, "uac_pcmu_pcap.xml", 5070, 3);
    // From another host the admin endpoints want the token; /metrics does not.
    let from_phone = |path: &str, token: Option<&str>| {
        let mut curl = uac.command("curl");
        curl.args([
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--max-time",
            "5",
        ]);
        if let Some(token) = token {
            curl.args(["-H", &format!("Authorization: Bearer {token}")]);
        }
        let output = curl
            .arg(format!("http://{}:9090{path}", sig.address))
            .output()
            .unwrap();
        String::from_utf8_lossy(&output.stdout).into_owned()
    };
    assert_eq!(from_phone("/admin/calls", None), "401");
    assert_eq!(
        from_phone("/admin/calls", Some("fleet-admin-token-0124")),
        "401"
    );
    assert_eq!(from_phone("/admin/calls", Some(ADMIN_TOKEN)), "200");
    assert_eq!(from_phone("/metrics", None), "200");
    service.expect(first, "first callers");
    service.expect(second, "second callers");
    service.expect(phone, "callee");
    let (mut rows, media) = service.stop();
    assert_eq!(rows.len(), 6, "{rows:?}");
    rows.sort_by_key(|r| number(r, "start_time"));
    let on = |rows: &[std::collections::HashMap<String, String>], node: &str| {
        rows.iter().filter(|r| r["media_node"] == node).count()
    };
    // Equal nodes: each new call goes where the most ports are free, so one call per node.
    for node in ["mp1", "mp2", "mp3"] {
        assert_eq!(on(&rows[..3], node), 1, "{node}: {rows:?}");
    }
    assert_eq!(
        on(&rows[3..], "mp1"),
        0,
        "none on the drained node: {rows:?}"
    );
    for row in &rows {
        assert_eq!(row["media_verdict"], "ok", "{row:?}");
        assert!(
            number(row, "caller_audio_packets") >= MIN_PACKETS,
            "{row:?}"
        );
        assert!(row["media_address"].starts_with("10.77.0.1"), "{row:?}");
    }
    // The relays latched the phones' real addresses across the network.
    let sources: Vec<&str> = media
        .iter()
        .map(|m| m["latched_rtp_source"].as_str())
        .collect();
    assert!(sources.contains(&"10.77.0.21:6000"), "{sources:?}");
    assert!(sources.contains(&"10.77.0.22:6000"), "{sources:?}");
}

#[test]
fn a_host_killed_mid_call_moves_the_call_and_the_cdr_keeps_both_nodes() {
    let Some((lan, sig, nodes, uac, uas)) = fleet("killed", 2) else {
        return;
    };
    let started = Instant::now();
    let (mut proxies, service) = pool(&lan, &sig, &nodes);
    let phone = callee(&uas, "uas_echo_moved.xml", 1);
    let call = caller(&uac, &sig, "uac_pcap_moved.xml", 5060, 1);
    // Let the listing at about 5 s (with the lease renewal) see the call's figures.
    std::thread::sleep(Duration::from_millis(7500).saturating_sub(started.elapsed()));
    let lost = service.call_node(&nodes).clone();
    let kept = nodes.iter().find(|n| n.name != lost.name).unwrap().clone();
    let index = nodes.iter().position(|n| n.name == lost.name).unwrap();
    let killed = Instant::now();
    // kill -9 of the media proxy: the host's process is gone, its sockets with it.
    proxies[index].0.kill().unwrap();
    while !service
        .get("/admin/calls")
        .contains(&format!("\"media_node\": \"{}\"", kept.name))
    {
        assert!(
            killed.elapsed() < Duration::from_secs(2),
            "not moved in 2 s"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    service.expect(call, "caller");
    service.expect(phone, "callee");
    let metrics = service.get("/metrics");
    assert!(
        metrics.contains("signaling_media_moves_total{result=\"moved\"} 1"),
        "{metrics}"
    );
    let (rows, media) = service.stop();
    assert_eq!(rows.len(), 1, "{rows:?}");
    let cdr = &rows[0];
    assert_eq!(cdr["media_node"], kept.name, "{cdr:?}");
    assert_eq!(cdr["media_verdict"], "ok", "{cdr:?}");
    assert_eq!(cdr["media_address"], kept.address.to_string(), "{cdr:?}");
    let diagnosis = &cdr["media_diagnosis"];
    assert!(
        diagnosis.contains(&format!(
            "media moved from {} (stopped answering its health checks) to {}",
            lost.name, kept.name
        )),
        "{diagnosis}"
    );
    assert!(
        diagnosis.contains(&format!("{} had counted caller ", lost.name)),
        "{diagnosis}"
    );
    // The totals hold both nodes' figures; cdr_media holds the new node's own: the second
    // playback, relayed there after the re-INVITE, both ways.
    assert!(
        number(cdr, "caller_audio_packets") >= MIN_PACKETS + 100,
        "{cdr:?}"
    );
    for leg in ["caller", "callee"] {
        let line = media.iter().find(|m| m["leg"] == leg).unwrap();
        assert!(number(line, "rtp_packets_in") >= MIN_PACKETS, "{line:?}");
        assert!(
            number(line, "rtp_packets_in") < number(cdr, &format!("{leg}_audio_packets")),
            "the new node counted only the second half: {line:?} {cdr:?}"
        );
    }
}

#[test]
fn every_host_dead_ends_the_call_with_byes_and_a_cdr() {
    let Some((lan, sig, nodes, uac, uas)) = fleet("alldead", 2) else {
        return;
    };
    let (proxies, service) = pool(&lan, &sig, &nodes);
    let phone = callee(&uas, "uas_pcmu_echo.xml", 1);
    let call = caller(&uac, &sig, "uac_pcap_until_bye.xml", 5060, 1);
    std::thread::sleep(Duration::from_millis(2500));
    let lost = service.call_node(&nodes).name.clone();
    // The whole media fleet dies at once.
    drop(proxies);
    // Both phones get signaling's BYE (their scenarios expect it).
    service.expect(call, "caller");
    service.expect(phone, "callee");
    let metrics = service.get("/metrics");
    assert!(
        metrics.contains("signaling_media_moves_total{result=\"failed\"} 1"),
        "{metrics}"
    );
    let (rows, _) = service.stop();
    assert_eq!(rows.len(), 1, "{rows:?}");
    let cdr = &rows[0];
    assert_eq!(cdr["disposition"], "answered");
    assert_eq!(cdr["hangup_side"], "system");
    assert!(
        cdr["end_reason"].starts_with(&format!(
            "media proxy {lost} lost (stopped answering its health checks); no other node could take the call"
        )),
        "{cdr:?}"
    );
    assert_eq!(cdr["media_node"], lost);
    assert!(
        cdr["media_diagnosis"]
            .starts_with(&format!("media proxy {lost} could not give final figures")),
        "{cdr:?}"
    );
}

#[test]
fn a_partitioned_host_loses_its_call_and_is_cleaned_up_when_it_returns() {
    let Some((lan, sig, nodes, uac, uas)) = fleet("partition", 2) else {
        return;
    };
    let (_proxies, service) = pool(&lan, &sig, &nodes);
    let phone = callee(&uas, "uas_echo_moved.xml", 1);
    let call = caller(&uac, &sig, "uac_pcap_moved.xml", 5060, 1);
    std::thread::sleep(Duration::from_millis(2500));
    let cut = service.call_node(&nodes).clone();
    let kept = nodes.iter().find(|n| n.name != cut.name).unwrap().clone();
    // The node's network goes away; the node itself lives on with the call's session.
    cut.cut();
    let partitioned = Instant::now();
    while !service
        .get("/admin/calls")
        .contains(&format!("\"media_node\": \"{}\"", kept.name))
    {
        assert!(partitioned.elapsed() < Duration::from_secs(3), "not moved");
        std::thread::sleep(Duration::from_millis(50));
    }
    // Longer than the release signaling sent the node after the move takes to give up: two
    // attempts of a 2 s deadline with a pause between (it was 4 s, and a second attempt
    // still in flight at the mend released the session itself now and then, so nothing was
    // left to sweep).
    std::thread::sleep(Duration::from_millis(6500));
    cut.mend();
    service.wait_nodes("the node back", |view| {
        view.matches("\"state\": \"up\"").count() == 2
    });
    // The returned node still holds the moved call's session (nobody could release it);
    // signaling finds it in two listings in a row and releases it, long before the node's
    // own media timeout (60 s).
    let (ok, listing) = mpctl(&sig, &grpc_url(&cut, "http"), &["sessions"]);
    assert!(ok, "{listing}");
    let back = Instant::now();
    while sessions_on(&sig, &grpc_url(&cut, "http")) > 0 {
        assert!(
            back.elapsed() < Duration::from_secs(15),
            "stale session kept on {}: {listing}\n{}",
            cut.name,
            service.log()
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    service.expect(call, "caller");
    service.expect(phone, "callee");
    // Counted when the node's answer to the release arrives, which can be a little after the
    // node shows no session any more.
    let swept = format!(
        "signaling_media_sessions_swept_total{{node=\"{}\"}} 1",
        cut.name
    );
    assert!(
        eventually(Duration::from_secs(3), || service
            .get("/metrics")
            .contains(&swept)),
        "{}",
        service.get("/metrics")
    );
    let (rows, _) = service.stop();
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0]["media_node"], kept.name, "{rows:?}");
    assert_eq!(rows[0]["media_verdict"], "ok", "{rows:?}");
}

#[test]
fn mutual_tls_across_hosts_refuses_strangers_and_rotates_without_a_restart() {
    let Some((lan, sig, nodes, uac, uas)) = fleet("mtls", 1) else {
        return;
    };
    let node = &nodes[0];
    let fleet_ca = Pki::new(&format!("fleet-{}", std::process::id()));
    fleet_ca.issue_for("mp1", &[&node.address.to_string()]);
    fleet_ca.issue_for("signaling-east", &[]);
    fleet_ca.issue_for("ops", &[]);
    let rogue = Pki::new(&format!("rogue-{}", std::process::id()));
    rogue.issue_for("signaling-east", &[]);
    // Files the test replaces later: the node's client CA, signaling's certificate and key.
    let (client_ca, sig_cert, sig_key) = (
        lan.path("client-ca.pem"),
        lan.path("signaling.pem"),
        lan.path("signaling.key"),
    );
    let copy = |from: String, to: &PathBuf| std::fs::copy(from, to).unwrap();
    copy(fleet_ca.path("ca.pem"), &client_ca);
    copy(fleet_ca.path("signaling-east.pem"), &sig_cert);
    copy(fleet_ca.path("signaling-east.key"), &sig_key);
    let path = |p: &PathBuf| p.to_str().unwrap().to_owned();
    let _proxy = mediaproxy(
        &lan,
        node,
        &[
            "--tls-cert",
            &fleet_ca.path("mp1.pem"),
            "--tls-key",
            &fleet_ca.path("mp1.key"),
            "--tls-client-ca",
            &path(&client_ca),
            "--tls-operator",
            "ops",
        ],
    );
    let url = grpc_url(node, "https");
    let service = Signaling::start(
        &lan,
        &sig,
        &[
            "--mediaproxy",
            &url,
            "--mediaproxy-ca",
            &fleet_ca.path("ca.pem"),
            "--mediaproxy-cert",
            &path(&sig_cert),
            "--mediaproxy-key",
            &path(&sig_key),
        ],
    );
    service.wait_up(1);
    let phone = callee(&uas, "uas_pcmu_echo.xml", 1);
    let call = caller(&uac, &sig, "uac_pcmu_pcap.xml", 5060, 1);
    std::thread::sleep(Duration::from_millis(1500));
    // The operator (--tls-operator ops) sees signaling's call; plaintext, no certificate and
    // a certificate of another CA are refused.
    let tls = |pki: &Pki, name: &str| {
        vec![
            "--ca".to_owned(),
            fleet_ca.path("ca.pem"),
            "--cert".to_owned(),
            pki.path(&format!("{name}.pem")),
            "--key".to_owned(),
            pki.path(&format!("{name}.key")),
        ]
    };
    let mut status = tls(&fleet_ca, "ops");
    status.push("status".into());
    let (ok, text) = mpctl(&uac, &url, &strs(&status));
    assert!(ok && text.contains("sessions    1"), "{text}");
    let mut sessions = tls(&fleet_ca, "ops");
    sessions.push("sessions".into());
    let (ok, text) = mpctl(&uac, &url, &strs(&sessions));
    assert!(
        ok && text.contains("@10.77.0.21"),
        "the operator sees the call: {text}"
    );
    let mut stranger = tls(&rogue, "signaling-east");
    stranger.push("status".into());
    let (ok, text) = mpctl(&uac, &url, &strs(&stranger));
    assert!(!ok, "a certificate of another CA: {text}");
    let (ok, text) = mpctl(&uac, &url, &["--ca", &fleet_ca.path("ca.pem"), "status"]);
    assert!(!ok, "no client certificate: {text}");
    let (ok, text) = mpctl(&uac, &grpc_url(node, "http"), &["status"]);
    assert!(!ok, "plaintext: {text}");
    service.expect(call, "caller");
    service.expect(phone, "callee");
    // A client CA rotation, with no restart: the node accepts both CAs, signaling takes a
    // certificate of the new one, the node drops the old CA (its gRPC restarts and every
    // client dials again). Signaling still reaches the node, and the next call relays.
    let next = Pki::new(&format!("next-{}", std::process::id()));
    next.issue_for("signaling-east", &[]);
    let both = std::fs::read_to_string(fleet_ca.path("ca.pem")).unwrap()
        + &std::fs::read_to_string(next.path("ca.pem")).unwrap();
    std::thread::sleep(Duration::from_millis(1100)); // a later modification time
    std::fs::write(&client_ca, both).unwrap();
    std::thread::sleep(Duration::from_millis(3000));
    copy(next.path("signaling-east.key"), &sig_key);
    copy(next.path("signaling-east.pem"), &sig_cert);
    let deadline = Instant::now() + Duration::from_secs(8);
    while !service.log().contains("media proxy TLS files changed") {
        assert!(
            Instant::now() < deadline,
            "signaling kept its old certificate"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(500));
    copy(next.path("ca.pem"), &client_ca);
    std::thread::sleep(Duration::from_millis(4000));
    service.wait_up(1);
    let mut old = tls(&fleet_ca, "signaling-east");
    old.push("status".into());
    let (ok, text) = mpctl(&uac, &url, &strs(&old));
    assert!(!ok, "the old CA's certificate is refused now: {text}");
    let phone = callee(&uas, "uas_pcmu_echo.xml", 1);
    let call = caller(&uac, &sig, "uac_pcmu_pcap.xml", 5060, 1);
    service.expect(call, "caller after the rotation");
    service.expect(phone, "callee after the rotation");
    let (rows, _) = service.stop();
    assert_eq!(rows.len(), 2, "{rows:?}");
    for row in &rows {
        assert_eq!(row["media_node"], "mp1", "{row:?}");
        assert_eq!(row["media_verdict"], "ok", "{row:?}");
    }
}

#[test]
fn nodes_are_found_by_name_and_follow_the_name_as_it_changes() {
    let Some((lan, sig, nodes, uac, uas)) = fleet("dns", 3) else {
        return;
    };
    let _proxies: Vec<Running> = nodes.iter().map(|n| mediaproxy(&lan, n, &[])).collect();
    // Signaling's host resolves media.fleet from its hosts file: two addresses first.
    let name = |hosts: &[&Host]| -> String {
        hosts
            .iter()
            .map(|h| format!("{} media.fleet\n", h.address))
            .collect()
    };
    sig.hosts_file(&name(&[&nodes[0], &nodes[1]]));
    let service = Signaling::start(&lan, &sig, &["--mediaproxy", "http://media.fleet:50051"]);
    service.wait_up(2);
    // The name now gives mp2 and mp3: mp3 is discovered, mp1 retired (within 10 s).
    sig.hosts_file(&name(&[&nodes[1], &nodes[2]]));
    service.wait_nodes("mp3 found, mp1 retired", |view| {
        view.matches("\"state\": \"up\"").count() == 3 && view.contains("\"retired\": true")
    });
    // A name that resolves to nothing changes nothing.
    sig.hosts_file("");
    let failures = || {
        service
            .get("/metrics")
            .lines()
            .find_map(|l| l.strip_prefix("signaling_mediaproxy_dns_failures_total "))
            .map_or(0, |v| v.trim().parse::<u64>().unwrap())
    };
    let deadline = Instant::now() + Duration::from_secs(15);
    while failures() == 0 {
        assert!(Instant::now() < deadline, "no failed resolution counted");
        std::thread::sleep(Duration::from_millis(200));
    }
    let view = service.get("/admin/mediaproxies");
    assert_eq!(view.matches("\"state\": \"up\"").count(), 3, "{view}");
    // Calls go to the nodes the name gave last, never to the retired mp1.
    let phone = callee(&uas, "uas_pcmu_echo.xml", 2);
    let call = caller(&uac, &sig, "uac_pcmu_pcap.xml", 5060, 2);
    service.expect(call, "callers");
    service.expect(phone, "callee");
    let log = service.log();
    assert!(log.contains("media proxy discovered"), "{log}");
    assert!(
        log.contains("name did not resolve; keeping the nodes known"),
        "{log}"
    );
    let (rows, _) = service.stop();
    assert_eq!(rows.len(), 2, "{rows:?}");
    let mut used: Vec<&str> = rows.iter().map(|r| r["media_node"].as_str()).collect();
    used.sort_unstable();
    assert_eq!(used, ["mp2", "mp3"], "{rows:?}");
    for row in &rows {
        assert_eq!(row["media_verdict"], "ok", "{row:?}");
    }
}
