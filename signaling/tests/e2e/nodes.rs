//! End-to-end calls through separately started media proxies: a pool of two, a node lost or
//! killed mid-call (the call moves or ends with an explained CDR), a drained node, a crashed
//! signaling's orphans, and the gRPC link over mutual TLS.
//!
//! Ports: each test takes its own (`Ports::take`, `Ports::grpc`: testkit's port blocks).

use std::process::Command;
use std::time::{Duration, Instant};

use crate::common::calls::{
    MIN_PACKETS, MediaProxy, Ports, Scenario, Service, call, expect_success, start_mediaproxy,
    start_mediaproxy_with, uac, uas,
};
use crate::common::{Pki, number, sibling};

#[test]
fn a_media_proxy_lost_mid_call_with_no_other_node_ends_the_call_with_an_explained_cdr() {
    let ports = Ports::take();
    let (mut proxy, url) = start_mediaproxy(Ports::grpc(), &ports.relay_arg(), "media-lost");
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
    let ports = Ports::take_relay(200);
    let nodes = two_mediaproxies(&ports, Ports::grpc());
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
    let ports = Ports::take_relay(200);
    let [mut a, mut b] = two_mediaproxies(&ports, Ports::grpc());
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
    let ports = Ports::take_relay(200);
    let nodes = two_mediaproxies(&ports, Ports::grpc());
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
        uac: ports.uac + 2,
        uac_media: ports.uac_media + 20,
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
    let ports = Ports::take();
    let (_proxy, url) = start_mediaproxy_with(
        Ports::grpc(),
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
    let ports = Ports::take();
    let fleet = Pki::new("fleet");
    fleet.issue("mediaproxy");
    fleet.issue("signaling-east");
    let rogue = Pki::new("rogue");
    rogue.issue("signaling-east");
    let (_proxy, url) = start_mediaproxy_with(
        Ports::grpc(),
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
    call(
        &ports,
        &service,
        Scenario::new("uas_pcmu_echo.xml").echo(),
        Scenario::new("uac_pcmu_pcap.xml"),
    );
    let rows = service.stop();
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0]["media_node"], "media-tls");
    assert_eq!(rows[0]["media_verdict"], "ok", "{rows:?}");
    assert!(number(&rows[0], "caller_audio_packets") >= MIN_PACKETS);
    // The same name, signed by another CA: the proxy refuses it, so no node is ever up and
    // the call is answered 503 (and still leaves a CDR).
    let fresh = Ports::take_relay(2);
    let stranger_ports = Ports {
        sip: fresh.sip,
        uac: fresh.uac,
        uas: fresh.uas,
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
