//! What `deploy/` ships, exercised: both services' `/metrics` pass `promtool check metrics`
//! and hold every series `docs/metrics.md` documents; the Prometheus configuration and rules
//! pass `promtool check` and their unit tests; a real Prometheus scrapes both services and
//! evaluates the rules and every query of the Grafana dashboard; the systemd units verify.
//! (`promtool` and `prometheus` come from Debian's `prometheus` package, which the test
//! script installs.)
//!
//! Port plan (block b = 0 for the catalogue test, 1 for the Prometheus one): signaling SIP
//! 25850 + 20 b, its metrics +1; mediaproxy gRPC +3, metrics +4, relay 35000 + 200 b (100
//! ports; signaling's embedded proxy the next 100); Prometheus 25879.

use std::collections::BTreeSet;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

mod common;

use common::calls::{MediaProxy, Ports, Service, start_mediaproxy_with};
use common::{Scratch, deploy, http_get, must, percent_encode};

const PROMETHEUS: u16 = 25879;

/// Both services, side by side: signaling with its embedded proxy, and a standalone proxy.
struct Both {
    _signaling: Service,
    _proxy: MediaProxy,
    /// Where each serves `/metrics`.
    signaling_metrics: u16,
    proxy_metrics: u16,
}

impl Both {
    /// Starts both on port block `b` (see the port plan).
    fn start(b: u16) -> Self {
        let sip = 25850 + 20 * b;
        let relay = 35000 + 200 * b;
        let ports = Ports {
            sip,
            uac: sip + 1,
            uas: sip + 2,
            uac_media: 0,
            uas_media: 0,
            relay: relay + 100..relay + 200,
        };
        let (signaling_metrics, proxy_metrics) = (sip + 1, sip + 4);
        let metrics = format!("127.0.0.1:{signaling_metrics}");
        let signaling = Service::start(&format!("deploy-{b}"), &ports, &["--metrics", &metrics]);
        let metrics = format!("127.0.0.1:{proxy_metrics}");
        let (proxy, _) = start_mediaproxy_with(
            sip + 3,
            &format!("{relay}-{}", relay + 99),
            "deploy-node",
            &["--metrics", &metrics],
        );
        // Signaling's node gauge exists once its first health check of the embedded node
        // answered (within half a second of the start).
        let up = common::eventually(Duration::from_secs(10), || {
            http_get(signaling_metrics, "/metrics")
                .is_some_and(|m| m.contains("signaling_mediaproxy_up{node=\"embedded\"} 1"))
        });
        assert!(up, "signaling never saw its embedded media proxy up");
        Self {
            _signaling: signaling,
            _proxy: proxy,
            signaling_metrics,
            proxy_metrics,
        }
    }
}

/// The metric names documented in `docs/metrics.md` (first column of its tables).
fn documented_metrics() -> Vec<String> {
    let catalogue = std::fs::read_to_string(deploy("../docs/metrics.md")).unwrap();
    let names: Vec<String> = catalogue
        .lines()
        .filter_map(|line| line.strip_prefix("| `"))
        .filter_map(|rest| rest.split_once('`'))
        .map(|(name, _)| name.to_owned())
        .filter(|name| {
            name.starts_with("mediaproxy_")
                || name.starts_with("signaling_")
                || name.starts_with("process_")
        })
        .collect();
    assert!(
        names.len() > 40,
        "the catalogue lists the metrics: {names:?}"
    );
    names
}

/// Series families in a text exposition (histograms by their base name too).
fn exposed_families(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter_map(|line| line.strip_prefix("# TYPE "))
        .filter_map(|rest| rest.split_whitespace().next())
        .map(str::to_owned)
        .collect()
}

/// Documented series that a fresh service does not expose yet: label values that exist only
/// once their first event names them (a node's sweep, a method's first request timing).
const EXPOSED_ON_FIRST_EVENT: [&str; 3] = [
    "signaling_media_sessions_swept_total",
    "signaling_mediaproxy_request_duration_seconds",
    "mediaproxy_grpc_request_duration_seconds",
];

/// `promtool check metrics` accepts both services' expositions (names, types, suffixes,
/// help strings), both carry the process metrics and their build_info, and every metric the
/// catalogue documents is exposed, so dashboards and alerts built from the catalogue find
/// their series.
#[test]
fn both_services_expose_every_documented_metric_and_pass_promtool() {
    let both = Both::start(0);
    let signaling = http_get(both.signaling_metrics, "/metrics").expect("signaling's metrics");
    let proxy = http_get(both.proxy_metrics, "/metrics").expect("the proxy's metrics");
    for (service, text) in [("signaling", &signaling), ("mediaproxy", &proxy)] {
        let mut check = Command::new("promtool")
            .args(["check", "metrics"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("promtool is installed (apt-get install prometheus)");
        std::io::Write::write_all(check.stdin.as_mut().unwrap(), text.as_bytes()).unwrap();
        let output = check.wait_with_output().unwrap();
        assert!(
            output.status.success() && output.stdout.is_empty() && output.stderr.is_empty(),
            "promtool check metrics on {service}:\n{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        for process in [
            "process_cpu_seconds_total",
            "process_resident_memory_bytes",
            "process_open_fds",
            "process_max_fds",
            "process_start_time_seconds",
        ] {
            assert!(
                text.lines().any(|l| l.starts_with(&format!("{process} "))),
                "{service} lacks {process}"
            );
        }
        assert!(
            text.contains(&format!(
                "{service}_build_info{{version=\"{}\"}} 1",
                env!("CARGO_PKG_VERSION")
            )),
            "{service} lacks its build_info"
        );
        // One process, one set: signaling's embedded proxy adds no second one.
        assert_eq!(
            text.matches("\nprocess_open_fds ").count(),
            1,
            "{service}: process metrics once"
        );
    }
    assert!(
        !proxy.contains("mediaproxy_ports_total"),
        "renamed to mediaproxy_ports_capacity"
    );
    assert!(proxy.contains("mediaproxy_ports_capacity{node=\"deploy-node\"} 100"));
    let (signaling_families, proxy_families) =
        (exposed_families(&signaling), exposed_families(&proxy));
    for name in documented_metrics() {
        if EXPOSED_ON_FIRST_EVENT.contains(&name.as_str()) {
            continue;
        }
        let families = if name.starts_with("signaling_") {
            &signaling_families
        } else {
            &proxy_families
        };
        assert!(
            families.contains(&name),
            "{name} is documented but not exposed; exposed: {families:?}"
        );
        if name.starts_with("mediaproxy_") && name != "mediaproxy_build_info" {
            // signaling's embedded proxy serves the proxy's series on signaling's endpoint.
            assert!(
                signaling_families.contains(&name),
                "{name} not on signaling's endpoint"
            );
        }
    }
    // And nothing exposed is left out of the catalogue.
    let documented: BTreeSet<String> = documented_metrics().into_iter().collect();
    for family in signaling_families.iter().chain(&proxy_families) {
        assert!(
            documented.contains(family),
            "{family} is exposed but not in docs/metrics.md"
        );
    }
    drop(both);
}

/// `promtool` accepts the shipped configuration and rules, and the rules' unit tests (each
/// alert firing on the situation it names, and staying quiet below its threshold) pass.
#[test]
fn prometheus_configuration_and_rules_pass_promtool_and_their_unit_tests() {
    let rules = deploy("prometheus/rules.yml");
    let tests = deploy("prometheus/rules_test.yml");
    // Hosts, the compose stack, Kubernetes: each configuration loads the rules.
    for config in ["prometheus.yml", "compose.yml", "kubernetes.yml"] {
        let path = deploy(&format!("prometheus/{config}"));
        let out = must(
            "promtool",
            &["check", "config", path.to_str().unwrap()],
            &[],
        );
        assert!(
            out.contains("SUCCESS: 1 rule files found"),
            "{config}: {out}"
        );
    }
    let out = must(
        "promtool",
        &["check", "rules", rules.to_str().unwrap()],
        &[],
    );
    assert!(out.contains("SUCCESS"), "{out}");
    let out = must("promtool", &["test", "rules", tests.to_str().unwrap()], &[]);
    assert!(out.contains("SUCCESS"), "{out}");
    // Every alert the operations guide promises is defined.
    let text = std::fs::read_to_string(&rules).unwrap();
    for alert in [
        "AnsweredCallsWithoutMedia",
        "OneWayCalls",
        "MediaPortsNearlyExhausted",
        "MediaProxyDown",
        "SignalingDown",
        "CdrQueueGrowing",
        "DigestFailures",
    ] {
        assert!(
            text.contains(&format!("alert: {alert}\n")),
            "{alert} missing"
        );
        let guide = std::fs::read_to_string(deploy("../docs/operations.md")).unwrap();
        assert!(
            guide.contains(&format!("`{alert}`")),
            "docs/operations.md does not explain {alert}"
        );
    }
}

/// The Grafana dashboard's PromQL queries (every `expr` of every panel).
fn dashboard_queries() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(deploy("grafana/dashboards/sipmedia.json")).unwrap();
    let dashboard: serde_json::Value = serde_json::from_str(&text).expect("valid JSON");
    assert!(dashboard["uid"].is_string() && dashboard["title"].is_string());
    let mut queries = Vec::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        let title = panel["title"].as_str().unwrap_or_default().to_owned();
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"].as_str().expect("a PromQL target").to_owned();
            queries.push((title.clone(), expr));
        }
    }
    queries
}

/// The series names a PromQL expression reads: identifiers with our prefixes, and `up`.
fn series_in(expr: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut word = String::new();
    let mut in_string = false;
    for c in expr.chars().chain([' ']) {
        if c == '"' {
            in_string = !in_string;
        }
        if !in_string && (c.is_ascii_alphanumeric() || c == '_' || c == ':') {
            word.push(c);
            continue;
        }
        if word.starts_with("signaling")
            || word.starts_with("mediaproxy")
            || word.starts_with("process_")
        {
            names.insert(word.clone());
        }
        word.clear();
    }
    names
}

/// The dashboard names only series that exist: in the services' expositions (histograms by
/// their `_bucket`), or recording rules of rules.yml; and it has the panels operators look
/// for.
#[test]
fn the_dashboard_is_valid_json_naming_only_existing_series() {
    let queries = dashboard_queries();
    let titles: BTreeSet<&str> = queries.iter().map(|(t, _)| t.as_str()).collect();
    for wanted in [
        "Calls in progress",
        "Call rate by disposition",
        "Call setup time",
        "Media verdicts",
        "Packets relayed per node",
        "Packets dropped per node",
        "Ports free per node",
        "CDR queue",
    ] {
        assert!(titles.contains(wanted), "no panel {wanted:?} in {titles:?}");
    }
    let rules = std::fs::read_to_string(deploy("prometheus/rules.yml")).unwrap();
    let recorded: BTreeSet<String> = rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- record: "))
        .map(str::to_owned)
        .collect();
    let documented: BTreeSet<String> = documented_metrics().into_iter().collect();
    for (title, expr) in &queries {
        let names = series_in(expr);
        assert!(!names.is_empty(), "{title}: {expr} reads no series of ours");
        for name in names {
            let base = name
                .strip_suffix("_bucket")
                .or_else(|| name.strip_suffix("_count"))
                .or_else(|| name.strip_suffix("_sum"))
                .unwrap_or(&name);
            assert!(
                recorded.contains(&name) || documented.contains(base),
                "panel {title:?} reads {name}, which no service exposes and no rule records"
            );
        }
    }
}

/// A real Prometheus, started here with the shipped rules, scrapes both services: both
/// targets are up, the documented series are stored, the recording rules evaluate, and every
/// query of the dashboard is valid PromQL that Prometheus answers.
#[test]
fn a_real_prometheus_scrapes_both_services_and_answers_the_dashboard() {
    let both = Both::start(1);
    let dir = Scratch::new("deploy-prometheus");
    std::fs::copy(deploy("prometheus/rules.yml"), dir.join("rules.yml")).unwrap();
    // The shipped configuration with this test's targets and a 1 s interval.
    let shipped = std::fs::read_to_string(deploy("prometheus/prometheus.yml")).unwrap();
    let config = shipped
        .replace("scrape_interval: 15s", "scrape_interval: 1s")
        .replace("evaluation_interval: 15s", "evaluation_interval: 1s")
        .replace(
            "\"10.0.0.10:9465\"",
            &format!("\"127.0.0.1:{}\"", both.signaling_metrics),
        )
        .replace(
            "\"10.0.1.11:9466\", \"10.0.1.12:9466\"",
            &format!("\"127.0.0.1:{}\"", both.proxy_metrics),
        );
    for port in [both.signaling_metrics, both.proxy_metrics] {
        assert!(
            config.contains(&format!("\"127.0.0.1:{port}\"")),
            "{config}"
        );
    }
    std::fs::write(dir.join("prometheus.yml"), config).unwrap();
    let log = std::fs::File::create(dir.join("prometheus.log")).unwrap();
    let server = Prometheus(
        Command::new("prometheus")
            .arg(format!(
                "--config.file={}",
                dir.join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{PROMETHEUS}"))
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("prometheus is installed (apt-get install prometheus)"),
    );
    let query = |promql: &str| -> serde_json::Value {
        let path = format!("/api/v1/query?query={}", percent_encode(promql));
        let body = http_get(PROMETHEUS, &path).expect("Prometheus answers 200");
        serde_json::from_str(&body).expect("a JSON answer")
    };
    let results = |promql: &str| -> usize {
        query(promql)["data"]["result"]
            .as_array()
            .map_or(0, Vec::len)
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let up = std::net::TcpStream::connect(("127.0.0.1", PROMETHEUS)).is_ok()
            && results("up == 1") == 2
            && results("mediaproxy:ports_free:ratio") >= 2;
        if up {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "Prometheus did not scrape both services:\n{}",
            std::fs::read_to_string(dir.join("prometheus.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    // The standalone proxy's pool is whole: the recording rule says 1.
    let ratio = query("mediaproxy:ports_free:ratio{node=\"deploy-node\"}");
    assert_eq!(ratio["data"]["result"][0]["value"][1], "1", "{ratio}");
    for name in documented_metrics() {
        if EXPOSED_ON_FIRST_EVENT.contains(&name.as_str()) {
            continue;
        }
        let selector = format!("{{__name__=~\"{name}|{name}_bucket\"}}");
        assert!(results(&selector) > 0, "Prometheus stored no {name}");
    }
    for job in ["signaling", "mediaproxy"] {
        assert_eq!(
            results(&format!("process_open_fds{{job=\"{job}\"}}")),
            1,
            "{job}"
        );
    }
    for (title, expr) in dashboard_queries() {
        let answer = query(&expr.replace("$__rate_interval", "1m"));
        assert_eq!(
            answer["status"], "success",
            "panel {title:?}: {expr}: {answer}"
        );
    }
    drop(server);
    drop(both);
}

/// A Prometheus server, stopped when dropped.
struct Prometheus(Child);

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Both systemd units pass `systemd-analyze verify` (where systemd is installed), name
/// binaries and configuration where docs/deploying.md says to install them, and stop by SIGTERM
/// with a stop timeout longer than the drain grace.
#[test]
fn the_systemd_units_verify() {
    for (unit, binary) in [
        ("signaling.service", "/usr/local/bin/signaling"),
        ("mediaproxy.service", "/usr/local/bin/mediaproxy"),
    ] {
        let path = deploy(unit);
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(
            text.contains(&format!("ExecStart={binary} --config /etc/")),
            "{unit}"
        );
        assert!(text.contains("KillSignal=SIGTERM"), "{unit}");
        assert!(text.contains("NoNewPrivileges=yes"), "{unit}");
        if Command::new("systemd-analyze")
            .arg("--version")
            .output()
            .is_err()
        {
            eprintln!("SKIPPED systemd-analyze verify of {unit}: systemd-analyze is not installed");
            continue;
        }
        // verify wants the binary to exist: point ExecStart at a binary that does.
        let dir = Scratch::new(&format!("deploy-unit-{unit}"));
        let built = common::sibling(binary.rsplit('/').next().unwrap());
        let local = text.replace(binary, &built.display().to_string());
        let copy = dir.join(unit);
        std::fs::write(&copy, local).unwrap();
        let output = Command::new("systemd-analyze")
            .args(["verify", copy.to_str().unwrap()])
            .output()
            .unwrap();
        let complaints = String::from_utf8_lossy(&output.stderr).into_owned();
        assert!(
            output.status.success() && !complaints.contains(unit),
            "systemd-analyze verify {unit}:\n{complaints}"
        );
    }
}

/// The manifests of `deploy/kubernetes/`, in order.
fn kubernetes_files() -> Vec<String> {
    let mut files: Vec<String> = std::fs::read_dir(deploy("kubernetes"))
        .unwrap()
        .map(|e| e.unwrap().path().display().to_string())
        .filter(|p| p.ends_with(".yaml"))
        .collect();
    files.sort();
    files
}

/// Every document of the Kubernetes manifests, as JSON (read with PyYAML, which
/// kubernetes-validate brings).
fn kubernetes_documents(files: &[String]) -> Vec<serde_json::Value> {
    let script = "import sys, yaml, json\n\
                  print(json.dumps([d for f in sys.argv[1:] for d in yaml.safe_load_all(open(f)) if d]))";
    let mut args = vec!["-c", script];
    args.extend(files.iter().map(String::as_str));
    serde_json::from_str(&must("python3", &args, &[])).expect("JSON from PyYAML")
}

fn duration_seconds(text: &str) -> u64 {
    let (number, unit) = text.split_at(text.find(|c: char| !c.is_ascii_digit()).unwrap());
    let number: u64 = number.parse().unwrap();
    number
        * match unit {
            "s" => 1,
            "m" => 60,
            "h" => 3600,
            other => panic!("unit {other}"),
        }
}

/// The Kubernetes manifests pass `kubernetes-validate --strict` (the API's own schemas,
/// unknown fields refused), their embedded configuration files parse with the services' own
/// parsers, and they keep the promises operators rely on: media on the host's network with
/// its port range, probes on gRPC health, a grace period longer than the drain, a headless
/// Service for signaling's pool, a disruption budget.
#[test]
fn the_kubernetes_manifests_validate_and_keep_their_promises() {
    let files = kubernetes_files();
    let mut args = vec!["--strict"];
    args.extend(files.iter().map(String::as_str));
    let out = Command::new("kubernetes-validate")
        .args(&args)
        .output()
        .expect("kubernetes-validate is installed (pip install kubernetes-validate)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let documents = kubernetes_documents(&files);
    assert!(out.status.success(), "kubernetes-validate:\n{text}");
    assert_eq!(
        text.matches(" passed for resource ").count(),
        documents.len(),
        "every document validated:\n{text}"
    );
    let find = |kind: &str, name: &str| -> &serde_json::Value {
        documents
            .iter()
            .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
            .unwrap_or_else(|| panic!("no {kind} {name}"))
    };
    // The configuration files parse as the services read them.
    let media_toml = find("ConfigMap", "mediaproxy")["data"]["mediaproxy.toml"]
        .as_str()
        .unwrap();
    mediaproxy::config::Options::from_toml(media_toml).expect("mediaproxy.toml");
    let signaling_toml = find("ConfigMap", "signaling")["data"]["signaling.toml"]
        .as_str()
        .unwrap();
    signaling::config::Options::from_toml(signaling_toml).expect("signaling.toml");
    assert!(signaling_toml.contains("mediaproxy.sipmedia.svc.cluster.local:50051"));

    let proxies = find("DaemonSet", "mediaproxy");
    let pod = &proxies["spec"]["template"]["spec"];
    assert_eq!(pod["hostNetwork"], true, "RTP on the host's own ports");
    let grace = media_toml
        .lines()
        .find_map(|l| l.strip_prefix("shutdown-grace = \""))
        .and_then(|r| r.split('"').next())
        .map(duration_seconds)
        .expect("shutdown-grace");
    assert!(
        pod["terminationGracePeriodSeconds"].as_u64().unwrap() > grace,
        "the pod outlives the drain of {grace} s"
    );
    let container = &pod["containers"][0];
    assert_eq!(
        container["readinessProbe"]["exec"]["command"],
        serde_json::json!(["mpctl", "health"])
    );
    assert_eq!(
        container["livenessProbe"]["exec"]["command"],
        serde_json::json!(["mpctl", "health", "--service", ""])
    );
    assert!(container["resources"]["requests"]["cpu"].is_string());
    assert_eq!(
        container["securityContext"]["allowPrivilegeEscalation"],
        false
    );
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    let headless = find("Service", "mediaproxy");
    assert_eq!(headless["spec"]["clusterIP"], "None");
    assert_eq!(headless["spec"]["ports"][0]["port"], 50051);
    find("PodDisruptionBudget", "mediaproxy");

    let signaling = find("Deployment", "signaling");
    let pod = &signaling["spec"]["template"]["spec"];
    let container = &pod["containers"][0];
    assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/healthz");
    assert!(pod["terminationGracePeriodSeconds"].as_u64().unwrap() > 10 + 5);
    // Secrets are referenced, never inlined in the Deployment.
    let env = container["env"].as_array().unwrap();
    assert!(env.iter().any(|e| e["name"] == "SIGNALING_CDR"
        && e["valueFrom"]["secretKeyRef"]["name"] == "signaling-cdr"));
}
