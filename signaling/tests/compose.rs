//! The compose stack of `deploy/compose.yml`, run for real with rootful podman and
//! podman-compose: images made here without a registry (a debootstrap base, the binaries of
//! this build in the runtime stage), signaling with two media proxies, PostgreSQL and
//! Prometheus; a SIPp call through it with RTP both ways; the CDR row read back from the
//! stack's PostgreSQL, the series from its Prometheus, and every container stopped by
//! SIGTERM with exit status 0. Skipped, saying so, where containers cannot run (not root, or
//! no podman).
//!
//! Port plan: SIP 25900, signaling metrics 25901, media proxy A gRPC 25902 and metrics
//! 25903, B 25904 and 25905, PostgreSQL 25906, Prometheus 25907; relay ports 35400-35499
//! (A) and 35500-35599 (B); SIPp UAC 25910, UAS 25911, media 35600 / 35700.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

mod common;

use common::calls::{Ports, uac, uas};
use common::{
    Scratch, cdr_table, deploy, eventually, http_get, must, number, percent_encode, run, sibling,
};
use signaling::cdr::Target;

const PROJECT: &str = "sipmedia-test";

/// Why containers cannot run here, if they cannot.
fn containers_unavailable() -> Option<String> {
    if !nix_is_root() {
        return Some("not root (the stack runs with rootful podman)".into());
    }
    for tool in ["podman", "podman-compose", "debootstrap", "objcopy"] {
        if Command::new(tool).arg("--version").output().is_err() {
            return Some(format!(
                "{tool} is not installed (scripts/test installs it)"
            ));
        }
    }
    let (ok, info) = run("podman", &["info"], &[]);
    (!ok).then(|| format!("podman cannot run containers here:\n{info}"))
}

fn nix_is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .map(|ids| ids.split_whitespace().next() == Some("0"))
        })
        .unwrap_or(false)
}

/// The images the stack uses: the base and support images once per machine (kept), ours
/// from this build's binaries every run (debug info stripped, as a release would be).
fn build_images(dir: &Scratch) {
    must(deploy("containers/build-base").to_str().unwrap(), &[], &[]);
    let support = deploy("containers/Containerfile.support");
    for target in ["postgres", "prometheus"] {
        let image = format!("localhost/sipmedia/{target}:latest");
        if !run("podman", &["image", "exists", &image], &[]).0 {
            build_image(&support, target, &deploy("containers"), &[]);
        }
    }
    let context = dir.join("context");
    std::fs::create_dir_all(&context).unwrap();
    for binary in ["signaling", "mediaproxy", "mpctl"] {
        must(
            "objcopy",
            &[
                "--strip-debug",
                sibling(binary).to_str().unwrap(),
                context.join(binary).to_str().unwrap(),
            ],
            &[],
        );
    }
    let containerfile = deploy("containers/Containerfile");
    for target in ["signaling", "mediaproxy"] {
        build_image(
            &containerfile,
            target,
            &context,
            &["--build-arg", "BINARIES=prebuilt"],
        );
    }
}

/// `podman build` of one target as `localhost/sipmedia/TARGET:latest` (Docker format, which
/// keeps HEALTHCHECK).
fn build_image(containerfile: &Path, target: &str, context: &Path, extra: &[&str]) {
    let tag = format!("localhost/sipmedia/{target}:latest");
    let mut args = vec![
        "build", "-q", "--format", "docker", "--target", target, "-t", &tag,
    ];
    args.extend_from_slice(extra);
    args.extend([
        "-f",
        containerfile.to_str().unwrap(),
        context.to_str().unwrap(),
    ]);
    must("podman", &args, &[]);
}

/// The stack, taken down with its volumes when dropped.
struct Stack {
    env: Vec<(&'static str, String)>,
}

impl Stack {
    fn compose(&self, args: &[&str]) -> (bool, String) {
        let file = deploy("compose.yml");
        let mut all = vec!["-p", PROJECT, "-f", file.to_str().unwrap()];
        all.extend_from_slice(args);
        run("podman-compose", &all, &self.env)
    }

    fn container(service: &str) -> String {
        format!("{PROJECT}_{service}_1")
    }

    fn logs(service: &str) -> String {
        run("podman", &["logs", &Self::container(service)], &[]).1
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        let _ = self.compose(&["down", "-v", "-t", "5"]);
    }
}

/// The value of a PromQL query's first sample, if any.
fn prometheus_value(query: &str) -> Option<f64> {
    let body = http_get(
        25907,
        &format!("/api/v1/query?query={}", percent_encode(query)),
    )?;
    let answer: serde_json::Value = serde_json::from_str(&body).ok()?;
    answer["data"]["result"][0]["value"][1]
        .as_str()?
        .parse()
        .ok()
}

#[test]
fn the_compose_stack_carries_a_call_into_postgres_and_prometheus() {
    if let Some(why) = containers_unavailable() {
        eprintln!("SKIPPED the compose stack test: {why}");
        return;
    }
    let dir = Scratch::new("compose-stack");
    build_images(&dir);

    // The stack's Prometheus configuration with this test's ports and a 1 s interval.
    let shipped = std::fs::read_to_string(deploy("prometheus/compose.yml")).unwrap();
    let config = shipped
        .replace("15s", "1s")
        .replace("127.0.0.1:9465", "127.0.0.1:25901")
        .replace("127.0.0.1:9466", "127.0.0.1:25903")
        .replace("127.0.0.1:9467", "127.0.0.1:25905");
    for port in [25901, 25903, 25905] {
        assert!(config.contains(&format!("127.0.0.1:{port}")), "{config}");
    }
    let prometheus_config = dir.join("prometheus.yml");
    std::fs::write(&prometheus_config, config).unwrap();

    let _ = run(
        "podman-compose",
        &[
            "-p",
            PROJECT,
            "-f",
            deploy("compose.yml").to_str().unwrap(),
            "down",
            "-v",
        ],
        &[],
    );
    let stack = Stack {
        env: vec![
            ("SIP_PORT", "25900".into()),
            ("SIGNALING_METRICS_PORT", "25901".into()),
            ("MEDIA_A_GRPC", "25902".into()),
            ("MEDIA_A_METRICS", "25903".into()),
            ("MEDIA_B_GRPC", "25904".into()),
            ("MEDIA_B_METRICS", "25905".into()),
            ("PG_PORT", "25906".into()),
            ("PROMETHEUS_PORT", "25907".into()),
            ("MEDIA_A_PORTS", "35400-35499".into()),
            ("MEDIA_B_PORTS", "35500-35599".into()),
            ("DEFAULT_ROUTE", "127.0.0.1:25911".into()),
            ("PROMETHEUS_CONFIG", prometheus_config.display().to_string()),
        ],
    };
    let (ok, text) = stack.compose(&["up", "-d"]);
    assert!(ok, "podman-compose up:\n{text}");

    // Signaling answers /healthz once both nodes are up (it takes calls from then on).
    let ready = eventually(Duration::from_secs(60), || {
        http_get(25901, "/metrics").is_some_and(|m| {
            m.contains("signaling_mediaproxy_up{node=\"media-a\"} 1")
                && m.contains("signaling_mediaproxy_up{node=\"media-b\"} 1")
        }) && http_get(25901, "/healthz").is_some()
    });
    assert!(
        ready,
        "the stack did not come up:\n{}\n{}",
        Stack::logs("signaling"),
        Stack::logs("mediaproxy-a")
    );
    // The images' own health checks (podman runs them on demand without systemd timers).
    for service in ["signaling", "mediaproxy-a", "mediaproxy-b", "postgres"] {
        let healthy = eventually(Duration::from_secs(30), || {
            run(
                "podman",
                &["healthcheck", "run", &Stack::container(service)],
                &[],
            )
            .0
        });
        assert!(
            healthy,
            "{service} is not healthy:\n{}",
            Stack::logs(service)
        );
    }
    // The named volumes are writable by the unprivileged user (recordings, CDR spool).
    let proxy_log = Stack::logs("mediaproxy-a");
    assert!(!proxy_log.contains("not writable"), "{proxy_log}");
    // No process of ours runs as root in its container.
    for service in ["signaling", "mediaproxy-a"] {
        let user = must(
            "podman",
            &[
                "exec",
                &Stack::container(service),
                "/usr/local/bin/mpctl",
                "--version",
            ],
            &[],
        );
        assert!(user.contains("mpctl"), "{user}");
        let inspect = must(
            "podman",
            &[
                "inspect",
                "--format",
                "{{.Config.User}}",
                &Stack::container(service),
            ],
            &[],
        );
        assert_eq!(inspect.trim(), "10001:10001", "{service}");
    }

    // A call through the stack, RTP both ways (the callee echoes the caller's pcap).
    let ports = Ports {
        sip: 25900,
        uac: 25910,
        uas: 25911,
        uac_media: 35600,
        uas_media: 35700,
        relay: 35400..35600,
    };
    let mut callee = uas(&ports, "uas_pcmu_echo.xml", true, &[]);
    std::thread::sleep(Duration::from_millis(300));
    let mut caller = uac(&ports, "uac_pcmu_pcap.xml", &[]);
    if let Err(error) = caller.finish().and_then(|()| callee.finish()) {
        panic!("the call failed ({error}):\n{}", Stack::logs("signaling"));
    }

    // Its CDR, in the stack's PostgreSQL, with the relay's figures for both legs.
    let cdr = Target::parse("postgres://cdr:cdr-secret@127.0.0.1:25906/cdr").unwrap();
    let mut rows = Vec::new();
    let written = eventually(Duration::from_secs(15), || {
        rows = cdr_table(&cdr, "cdr");
        !rows.is_empty()
    });
    assert!(written, "no CDR row:\n{}", Stack::logs("signaling"));
    assert_eq!(rows.len(), 1, "{rows:?}");
    let row = &rows[0];
    assert_eq!(row["disposition"], "answered", "{row:?}");
    assert_eq!(row["media_verdict"], "ok", "{row:?}");
    assert!(
        row["media_node"] == "media-a" || row["media_node"] == "media-b",
        "{row:?}"
    );
    assert!(number(row, "caller_audio_packets") >= 240, "{row:?}");
    assert!(number(row, "callee_audio_packets") >= 240, "{row:?}");

    // And in the stack's Prometheus: all three targets up, the call counted, its packets
    // relayed, the recording rules evaluated.
    let scraped = eventually(Duration::from_secs(30), || {
        prometheus_value("count(up == 1)") == Some(3.0)
            && prometheus_value("sum(signaling_calls_total{disposition=\"answered\"})") == Some(1.0)
            && prometheus_value("sum(mediaproxy_packets_total)").is_some_and(|p| p >= 480.0)
            && prometheus_value("count(mediaproxy:ports_free:ratio)") == Some(2.0)
    });
    assert!(
        scraped,
        "Prometheus did not see the call: up {:?}, answered {:?}, packets {:?}\n{}",
        prometheus_value("count(up == 1)"),
        prometheus_value("sum(signaling_calls_total{disposition=\"answered\"})"),
        prometheus_value("sum(mediaproxy_packets_total)"),
        Stack::logs("prometheus")
    );

    // A stop is a SIGTERM to the service itself (PID 1): it drains and exits 0.
    let started = Instant::now();
    let (ok, text) = stack.compose(&["stop"]);
    assert!(ok, "podman-compose stop:\n{text}");
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "the services took {:?} to stop: SIGTERM was not handled",
        started.elapsed()
    );
    for service in ["signaling", "mediaproxy-a", "mediaproxy-b", "postgres"] {
        let code = must(
            "podman",
            &[
                "inspect",
                "--format",
                "{{.State.ExitCode}}",
                &Stack::container(service),
            ],
            &[],
        );
        assert_eq!(
            code.trim(),
            "0",
            "{service} exit status:\n{}",
            Stack::logs(service)
        );
    }
    assert!(Stack::logs("mediaproxy-a").contains("shutting down: draining"));
    assert!(Stack::logs("signaling").contains("shutting down: draining"));
    drop(stack);
}
