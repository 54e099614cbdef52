//! The `mediaproxy` binary as an operator runs it: configuration errors, start-up, health,
//! metrics and SIGTERM.

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use testkit::Pki;
use testkit::pki::Leaf;

const BIN: &str = env!("CARGO_BIN_EXE_mediaproxy");

fn run_to_end(args: &[&str]) -> (i32, String) {
    let output = Command::new(BIN)
        .args(args)
        .env_remove("RUST_LOG")
        .output()
        .expect("binary runs");
    let text = String::from_utf8_lossy(&output.stderr).into_owned();
    (output.status.code().unwrap_or(-1), text)
}

#[test]
fn unknown_config_key_exits_naming_it() {
    let dir = std::env::temp_dir().join(format!("mp-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("bad.toml");
    std::fs::write(&path, "grpc = \"127.0.0.1:0\"\nmedia-ipp = \"127.0.0.1\"\n").unwrap();
    let (code, stderr) = run_to_end(&["--config", path.to_str().unwrap()]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("media-ipp"), "{stderr}");
    assert!(stderr.contains("bad.toml"), "{stderr}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn plaintext_grpc_beyond_loopback_is_refused_unless_asked_for() {
    let (code, stderr) = run_to_end(&["--grpc", "0.0.0.0:0", "--media-ip", "127.0.0.1"]);
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("--grpc") && stderr.contains("--grpc-plaintext"),
        "{stderr}"
    );
    // Asked for explicitly, it starts (and is stopped at once by a bad --ports).
    let (code, stderr) = run_to_end(&[
        "--grpc",
        "0.0.0.0:0",
        "--grpc-plaintext",
        "--ports",
        "40000",
    ]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("--ports"), "got past --grpc: {stderr}");
}

#[test]
fn incomplete_or_unreadable_tls_options_exit_naming_the_option() {
    let (code, stderr) = run_to_end(&["--grpc", "127.0.0.1:0", "--tls-cert", "/nonexistent.pem"]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("--tls-key"), "{stderr}");
    let (code, stderr) = run_to_end(&[
        "--grpc",
        "127.0.0.1:0",
        "--tls-cert",
        "/nonexistent.pem",
        "--tls-key",
        "/nonexistent.key",
        "--tls-client-ca",
        "/nonexistent-ca.pem",
    ]);
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("--tls-cert: cannot read /nonexistent.pem"),
        "{stderr}"
    );
}

#[test]
fn an_operator_without_mutual_tls_exits_naming_the_option() {
    let (code, stderr) = run_to_end(&["--grpc", "127.0.0.1:0", "--tls-operator", "ops"]);
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("--tls-operator: operators are named by their client certificate"),
        "{stderr}"
    );
}

#[test]
fn bad_flag_values_exit_naming_the_option() {
    let (code, stderr) = run_to_end(&["--ports", "40000"]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("--ports"), "{stderr}");
    let (code, stderr) = run_to_end(&["--media-ip", "0.0.0.0", "--grpc", "127.0.0.1:0"]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("--advertise-ip"), "{stderr}");
}

/// Reads the child's log until a line contains `needle`; returns that line.
fn wait_for_line(reader: &mut impl BufRead, needle: &str, limit: Duration) -> String {
    let deadline = Instant::now() + limit;
    let mut line = String::new();
    while Instant::now() < deadline {
        line.clear();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            break;
        }
        if line.contains(needle) {
            return line;
        }
    }
    panic!("no log line with {needle:?}");
}

fn field<'a>(line: &'a str, name: &str) -> &'a str {
    let start = line.find(&format!("{name}=")).expect("field present") + name.len() + 1;
    line[start..].split_whitespace().next().unwrap()
}

struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starts_serves_health_and_stops_on_sigterm() {
    let child = Command::new(BIN)
        .args([
            "--grpc",
            "127.0.0.1:0",
            "--metrics",
            "127.0.0.1:0",
            "--ports",
            "22000-22019",
            "--node-id",
            "bin-test",
            "--advertise-ip",
            "192.0.2.44",
            "--shutdown-grace",
            "1s",
        ])
        .env("MEDIAPROXY_LOG", "info")
        .env("NO_COLOR", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("binary starts");
    let mut child = Running(child);
    let mut log = BufReader::new(child.0.stdout.take().unwrap());
    let warning = wait_for_line(&mut log, "advertise-ip", Duration::from_secs(10));
    assert!(
        warning.contains("WARN") && warning.contains("192.0.2.44"),
        "{warning}"
    );
    let line = wait_for_line(&mut log, "media proxy listening", Duration::from_secs(10));
    let grpc = field(&line, "grpc").to_owned();
    let metrics: std::net::SocketAddr = field(&line, "metrics").parse().unwrap();

    // Control threads yield to the relay workers (--control-nice, default 10). A new thread
    // names itself once it runs, which may be just after the log line: wait for the names.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let threads = loop {
        let threads = thread_nices(child.0.id());
        let named = |prefix: &str| threads.iter().any(|(name, _)| name.starts_with(prefix));
        if (named("tokio-rt") && named("relay-")) || std::time::Instant::now() > deadline {
            break threads;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let nices = |prefix: &str| -> Vec<i64> {
        threads
            .iter()
            .filter(|(name, _)| name.starts_with(prefix))
            .map(|&(_, nice)| nice)
            .collect()
    };
    let (control, relay) = (nices("tokio-rt"), nices("relay-"));
    assert!(!control.is_empty() && !relay.is_empty(), "{threads:?}");
    assert!(control.iter().all(|&n| n == 10), "{threads:?}");
    assert!(relay.iter().all(|&n| n == 0), "{threads:?}");

    let channel = tonic::transport::Endpoint::from_shared(format!("http://{grpc}"))
        .unwrap()
        .connect()
        .await
        .expect("gRPC reachable");
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    let status = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: "mediaproxy.v1.MediaProxy".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .status;
    assert_eq!(
        status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );

    let mut http = std::net::TcpStream::connect(metrics).unwrap();
    std::io::Write::write_all(&mut http, b"GET /metrics HTTP/1.0\r\n\r\n").unwrap();
    let mut body = String::new();
    http.read_to_string(&mut body).unwrap();
    assert!(
        body.contains("mediaproxy_ports_capacity{node=\"bin-test\"} 20"),
        "{body}"
    );

    let pid = child.0.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(status) = child.0.try_wait().unwrap() {
            assert!(status.success(), "exit status {status}");
            break;
        }
        assert!(Instant::now() < deadline, "did not stop after SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Every thread of a process with its nice value, from `/proc/PID/task/*/stat`.
fn thread_nices(pid: u32) -> Vec<(String, i64)> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .map(|task| {
            let stat = std::fs::read_to_string(task.unwrap().path().join("stat")).unwrap();
            // "tid (name) state ppid ...": the name may hold spaces, so split at the last ')';
            // nice is the 19th field, the 17th after the name.
            let (head, rest) = stat.rsplit_once(')').unwrap();
            let name = head.split_once('(').unwrap().1.to_owned();
            let nice = rest.split_whitespace().nth(16).unwrap().parse().unwrap();
            (name, nice)
        })
        .collect()
}

const MPCTL: &str = env!("CARGO_BIN_EXE_mpctl");
const ANALYSER: &str = env!("CARGO_BIN_EXE_mp-analyser");

/// The binary running with its log in `dir/mediaproxy.log`, started (its gRPC address read
/// from the start line).
struct LoggedProxy {
    _child: Running,
    log_path: std::path::PathBuf,
    grpc: String,
}

impl LoggedProxy {
    fn start(dir: &std::path::Path, args: &[&str]) -> Self {
        Self::start_limited(dir, args, None)
    }

    /// [`LoggedProxy::start`] with the descriptor limit (soft and hard) set to `nofile`.
    fn start_limited(dir: &std::path::Path, args: &[&str], nofile: Option<u32>) -> Self {
        std::fs::create_dir_all(dir).unwrap();
        let log_path = dir.join("mediaproxy.log");
        let log_file = std::fs::File::create(&log_path).unwrap();
        let mut command = match nofile {
            None => Command::new(BIN),
            Some(limit) => {
                let mut sh = Command::new("sh");
                sh.args([
                    "-c",
                    &format!("ulimit -n {limit} && exec \"$0\" \"$@\""),
                    BIN,
                ]);
                sh
            }
        };
        let child = command
            .args(["--grpc", "127.0.0.1:0", "--metrics", "127.0.0.1:0"])
            .args(args)
            .env("MEDIAPROXY_LOG", "info")
            .env("NO_COLOR", "1")
            .stdout(log_file)
            .stderr(Stdio::null())
            .spawn()
            .expect("binary starts");
        let mut proxy = Self {
            _child: Running(child),
            log_path,
            grpc: String::new(),
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        let line = loop {
            if let Some(line) = proxy
                .log()
                .lines()
                .find(|l| l.contains("media proxy listening"))
            {
                break line.to_owned();
            }
            assert!(Instant::now() < deadline, "no start line:\n{}", proxy.log());
            std::thread::sleep(Duration::from_millis(50));
        };
        proxy.grpc = field(&line, "grpc").to_owned();
        proxy
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }
}

fn mpctl(grpc: &str, args: &[&str]) -> (bool, String) {
    let url = if grpc.starts_with("http") {
        grpc.to_owned()
    } else {
        format!("http://{grpc}")
    };
    let output = Command::new(MPCTL)
        .args(["--grpc", &url])
        .args(args)
        .output()
        .expect("mpctl runs");
    let mut text = String::from_utf8_lossy(&output.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&output.stderr));
    (output.status.success(), text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mpctl_lists_shows_debugs_and_drains_a_running_proxy() {
    use proto::v1 as pb;
    let dir = std::env::temp_dir().join(format!("mpctl-{}", std::process::id()));
    let proxy = LoggedProxy::start(&dir, &["--ports", "22040-22059", "--node-id", "ctl-test"]);
    let log = || proxy.log();
    let grpc = proxy.grpc.clone();
    let mut client = pb::media_proxy_client::MediaProxyClient::connect(format!("http://{grpc}"))
        .await
        .unwrap();
    // One call, both legs pointed at local sockets.
    let (caller, callee, ports) = phone_call(&mut client, "ctl-call", false, Vec::new()).await;
    let rtp = |seq: u16| {
        let mut packet = vec![0u8; 172];
        packet[0] = 0x80;
        packet[2..4].copy_from_slice(&seq.to_be_bytes());
        packet
    };
    for seq in 0..5 {
        caller.send_to(&rtp(seq), ("127.0.0.1", ports[0])).unwrap();
    }
    callee
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    let mut buffer = [0u8; 512];
    for _ in 0..5 {
        callee.recv_from(&mut buffer).expect("relayed");
    }

    let (ok, sessions) = mpctl(&grpc, &["sessions"]);
    assert!(ok, "{sessions}");
    let caller_line = sessions
        .lines()
        .find(|l| l.contains("ctl-call") && l.contains("caller"))
        .unwrap_or_else(|| panic!("{sessions}"));
    assert!(
        caller_line.contains(&format!("{}/{}", ports[0], ports[0] + 1)),
        "{caller_line}"
    );
    assert!(
        caller_line.contains(&caller.local_addr().unwrap().to_string()),
        "{caller_line}"
    );
    assert!(sessions.contains("1 sessions"), "{sessions}");

    let (ok, shown) = mpctl(&grpc, &["show", "ctl-call"]);
    assert!(ok, "{shown}");
    assert!(shown.contains("rtp in   5 pkts 860 bytes"), "{shown}");
    let (ok, missing) = mpctl(&grpc, &["show", "no-such-call"]);
    assert!(!ok);
    assert!(missing.contains("NotFound"), "{missing}");

    // Per-packet debug: off by default, on for this call.
    assert!(!log().contains("outcome=\"relayed"), "{}", log());
    let (ok, text) = mpctl(&grpc, &["debug", "ctl-call", "on"]);
    assert!(ok && text.contains("per-packet logging on"), "{text}");
    caller.send_to(&rtp(5), ("127.0.0.1", ports[0])).unwrap();
    callee.recv_from(&mut buffer).expect("relayed");
    let deadline = Instant::now() + Duration::from_secs(5);
    while !log().contains("seq=Some(5)") {
        assert!(Instant::now() < deadline, "no packet line:\n{}", log());
        std::thread::sleep(Duration::from_millis(50));
    }
    let packet_line = log()
        .lines()
        .find(|l| l.contains("seq=Some(5)"))
        .unwrap()
        .to_owned();
    assert!(packet_line.contains("call_id=ctl-call"), "{packet_line}");
    assert!(
        packet_line.contains("leg=\"caller\"") || packet_line.contains("leg=caller"),
        "{packet_line}"
    );
    assert!(packet_line.contains("relayed to"), "{packet_line}");

    // Health, the probes' view: serving; a drained node is not ready but alive.
    let (ok, health) = mpctl(&grpc, &["health"]);
    assert!(
        ok && health.contains("mediaproxy.v1.MediaProxy: SERVING"),
        "{health}"
    );
    let (ok, status) = mpctl(&grpc, &["drain"]);
    assert!(ok, "{status}");
    assert!(status.contains("draining    yes"), "{status}");
    assert!(status.contains("node        ctl-test"), "{status}");
    let (ok, health) = mpctl(&grpc, &["health"]);
    assert!(!ok && health.contains("NOT_SERVING"), "{health}");
    let (ok, health) = mpctl(&grpc, &["health", "--service", ""]);
    assert!(ok && health.contains("(process): SERVING"), "{health}");
    let (ok, status) = mpctl(&grpc, &["undrain"]);
    assert!(ok && status.contains("draining    no"), "{status}");
    let (ok, health) = mpctl(&grpc, &["health"]);
    assert!(ok, "serving again after undrain: {health}");
    let (ok, health) = mpctl("127.0.0.1:1", &["health", "--timeout", "1"]);
    assert!(!ok && health.contains("cannot reach"), "{health}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A gRPC client of `url` trusting `ca`, showing `client` (cert, key) if any.
async fn tls_client(
    url: &str,
    ca: &str,
    client: Option<&Leaf>,
) -> Result<
    proto::v1::media_proxy_client::MediaProxyClient<tonic::transport::Channel>,
    tonic::transport::Error,
> {
    let mut tls = tonic::transport::ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(ca))
        .domain_name("localhost");
    if let Some(leaf) = client {
        tls = tls.identity(tonic::transport::Identity::from_pem(
            &leaf.cert_pem,
            &leaf.key_pem,
        ));
    }
    let channel = tonic::transport::Endpoint::from_shared(url.to_owned())
        .unwrap()
        .tls_config(tls)?
        .connect_timeout(Duration::from_secs(3))
        .connect()
        .await?;
    Ok(proto::v1::media_proxy_client::MediaProxyClient::new(
        channel,
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_refuses_strangers_and_keeps_each_clients_calls_its_own() {
    let pki = Pki::new("fleet");
    let rogue = Pki::new("rogue");
    pki.issue("mediaproxy");
    let alice = pki.issue("signaling-a");
    let bob = pki.issue("signaling-b");
    let operator = pki.issue("ops");
    let stranger = rogue.issue("signaling-a");
    let child = Command::new(BIN)
        .args(["--grpc", "127.0.0.1:0", "--metrics", "127.0.0.1:0"])
        .args(["--ports", "22040-22059", "--node-id", "tls-test"])
        .args(["--tls-cert", &pki.path("mediaproxy.pem")])
        .args(["--tls-key", &pki.path("mediaproxy.key")])
        .args(["--tls-client-ca", &pki.path("ca.pem")])
        .args(["--tls-operator", "ops"])
        .env("MEDIAPROXY_LOG", "info")
        .env("NO_COLOR", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("binary starts");
    let mut child = Running(child);
    let mut log = BufReader::new(child.0.stdout.take().unwrap());
    let line = wait_for_line(&mut log, "media proxy listening", Duration::from_secs(10));
    let url = format!("https://{}", field(&line, "grpc"));
    let ca = std::fs::read_to_string(pki.path("ca.pem")).unwrap();
    let status = |client: &mut proto::v1::media_proxy_client::MediaProxyClient<_>| {
        let mut client = client.clone();
        async move { client.status(proto::v1::StatusRequest {}).await }
    };
    // No client certificate, or one of another CA: the handshake is refused.
    for who in [None, Some(&stranger)] {
        let refused = match tls_client(&url, &ca, who).await {
            Err(_) => true,
            Ok(mut client) => status(&mut client).await.is_err(),
        };
        assert!(refused, "a client without a fleet certificate got in");
    }
    let mut a = tls_client(&url, &ca, Some(&alice)).await.unwrap();
    let mut b = tls_client(&url, &ca, Some(&bob)).await.unwrap();
    assert_eq!(
        status(&mut a).await.unwrap().into_inner().node_id,
        "tls-test"
    );
    let allocate = |owner: &str| proto::v1::AllocateRequest {
        call_id: "tls-call".into(),
        leg: proto::v1::Leg::Caller as i32,
        owner: owner.into(),
        media: vec![proto::v1::MediaKind::Audio as i32],
        lease_timeout_ms: 0,
        reflect: false,
    };
    a.allocate(allocate("inst-1")).await.unwrap();
    // The owner is qualified by the certificate: B cannot pass itself off as A's instance.
    let listed = a
        .list_sessions(proto::v1::ListSessionsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.sessions.len(), 1);
    assert_eq!(listed.sessions[0].owner, "signaling-a:inst-1");
    let theirs = b
        .list_sessions(proto::v1::ListSessionsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(theirs.sessions.is_empty(), "B sees none of A's calls");
    for denied in [
        b.allocate(allocate("inst-1")).await.map(|_| ()),
        b.query_stats(proto::v1::QueryStatsRequest {
            call_id: "tls-call".into(),
        })
        .await
        .map(|_| ()),
        b.release(proto::v1::ReleaseRequest {
            call_id: "tls-call".into(),
            reason: "hostile".into(),
        })
        .await
        .map(|_| ()),
    ] {
        assert_eq!(denied.unwrap_err().code(), tonic::Code::PermissionDenied);
    }
    // The operator's certificate (--tls-operator ops) sees and may inspect everyone's calls.
    let mut ops = tls_client(&url, &ca, Some(&operator)).await.unwrap();
    let all = ops
        .list_sessions(proto::v1::ListSessionsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(all.sessions.len(), 1, "the operator sees A's call");
    ops.query_stats(proto::v1::QueryStatsRequest {
        call_id: "tls-call".into(),
    })
    .await
    .expect("the operator may query any call");
    let released = a
        .release(proto::v1::ReleaseRequest {
            call_id: "tls-call".into(),
            reason: "done".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!released.already_released, "A released it, B never did");
    // mpctl speaks the same mutual TLS.
    let tls = [
        "--ca",
        &pki.path("ca.pem"),
        "--cert",
        &pki.path("signaling-a.pem"),
        "--key",
        &pki.path("signaling-a.key"),
    ];
    let (ok, out) = mpctl(&url, &[&tls[..], &["status"]].concat());
    assert!(ok && out.contains("tls-test"), "{out}");
    let (ok, out) = mpctl(&url, &["status"]);
    assert!(!ok && out.contains("--ca is needed"), "{out}");
    // A probe's health check over the same TLS: the certificate is checked against
    // --tls-name, not the address dialled.
    let (ok, out) = mpctl(
        &url,
        &[&tls[..], &["--tls-name", "localhost", "health"]].concat(),
    );
    assert!(ok && out.contains("SERVING"), "{out}");
    let (ok, out) = mpctl(
        &url,
        &[&tls[..], &["--tls-name", "fleet.example", "health"]].concat(),
    );
    assert!(
        !ok,
        "a certificate not naming fleet.example was accepted: {out}"
    );

    // The client CA file is replaced (a CA rotation): within about 2 s the proxy serves with
    // it, on the same port, and the call it holds keeps relaying.
    a.allocate(proto::v1::AllocateRequest {
        call_id: "tls-call-2".into(),
        ..allocate("inst-1")
    })
    .await
    .unwrap();
    std::thread::sleep(Duration::from_millis(1100)); // a later modification time
    std::fs::copy(rogue.path("ca.pem"), pki.path("ca.pem")).unwrap();
    let deadline = Instant::now() + Duration::from_secs(8);
    let mut admitted = loop {
        if let Ok(mut client) = tls_client(&url, &ca, Some(&stranger)).await
            && status(&mut client).await.is_ok()
        {
            break client;
        }
        assert!(
            Instant::now() < deadline,
            "the new client CA was not loaded"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let refused = match tls_client(&url, &ca, Some(&alice)).await {
        Err(_) => true,
        Ok(mut client) => status(&mut client).await.is_err(),
    };
    assert!(refused, "a certificate of the old CA still gets in");
    // Same common name as A (signaling-a): it sees A's call, which survived the restart.
    let listed = admitted
        .list_sessions(proto::v1::ListSessionsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.sessions.len(), 1, "the call survived the reload");
    assert_eq!(listed.sessions[0].call_id, "tls-call-2");
}

/// A call of two phones (local UDP sockets), both legs allocated (`reflect` for a tappable
/// call) and pointed at them with `codecs`; returns the phones and the relay port of each leg.
async fn phone_call(
    client: &mut proto::v1::media_proxy_client::MediaProxyClient<tonic::transport::Channel>,
    call_id: &str,
    reflect: bool,
    codecs: Vec<proto::v1::Codec>,
) -> (std::net::UdpSocket, std::net::UdpSocket, Vec<u16>) {
    use proto::v1 as pb;
    let caller = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let callee = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let mut ports = Vec::new();
    for (leg, phone) in [(pb::Leg::Caller, &caller), (pb::Leg::Callee, &callee)] {
        let answer = client
            .allocate(pb::AllocateRequest {
                call_id: call_id.into(),
                leg: leg as i32,
                owner: "test-owner".into(),
                media: vec![pb::MediaKind::Audio as i32],
                lease_timeout_ms: 0,
                reflect,
            })
            .await
            .unwrap()
            .into_inner();
        ports.push(answer.media[0].rtp_port as u16);
        let address = phone.local_addr().unwrap();
        client
            .update(pb::UpdateRequest {
                call_id: call_id.into(),
                leg: leg as i32,
                media: vec![pb::RemoteMedia {
                    index: 0,
                    address: address.ip().to_string(),
                    rtp_port: u32::from(address.port()),
                    rtcp_port: u32::from(address.port()) + 1,
                    codecs: codecs.clone(),
                    direction: pb::Direction::Sendrecv as i32,
                }],
                ..Default::default()
            })
            .await
            .unwrap();
    }
    (caller, callee, ports)
}

/// 20 ms PCMU packets of a `frequency` tone, sequence `seq` on.
fn pcmu_tone(frequency: f64, seq: u16, ssrc: u32) -> Vec<u8> {
    use audio_codec::Encoder as _;
    let pcm = mediaproxy::audio::analysis::tone_from(
        frequency,
        8000,
        usize::from(seq) * 160,
        160,
        8000.0,
    );
    let mut packet = vec![0x80, 0];
    packet.extend_from_slice(&seq.to_be_bytes());
    packet.extend_from_slice(&(u32::from(seq) * 160).to_be_bytes());
    packet.extend_from_slice(&ssrc.to_be_bytes());
    packet.extend(audio_codec::pcmu::PcmuEncoder::new().encode(&pcm));
    packet
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mpctl_records_and_the_example_analyser_hears_both_legs_of_a_reflect_call() {
    use proto::v1 as pb;
    let dir = std::env::temp_dir().join(format!("mp-analyser-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let recordings = dir.join("recordings");
    let proxy = LoggedProxy::start(
        &dir,
        &[
            "--ports",
            "22060-22079",
            "--recordings",
            recordings.to_str().unwrap(),
        ],
    );
    let grpc = proxy.grpc.clone();
    let mut client = pb::media_proxy_client::MediaProxyClient::connect(format!("http://{grpc}"))
        .await
        .unwrap();
    let pcmu = vec![pb::Codec {
        payload_type: 0,
        encoding: "PCMU".into(),
        clock_rate: 8000,
        channels: 1,
    }];
    let (caller, callee, ports) = phone_call(&mut client, "tap-call", true, pcmu).await;
    let (ok, started) = mpctl(&grpc, &["record", "start", "tap-call", "--pcap"]);
    assert!(ok, "{started}");
    assert!(started.contains("recording   recording"), "{started}");
    let wav = dir.join("heard.wav");
    let analyser = Command::new(ANALYSER)
        .args(["--grpc", &format!("http://{grpc}"), "tap-call"])
        .args([
            "--wav",
            wav.to_str().unwrap(),
            "--rate",
            "16000",
            "--seconds",
            "4",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the analyser runs (it ends by itself after --seconds)");
    std::thread::sleep(Duration::from_millis(300));
    // Three seconds of talk: 440 Hz from the caller, 1 kHz from the callee.
    let start = Instant::now();
    for seq in 0..150u16 {
        caller
            .send_to(&pcmu_tone(440.0, seq, 1), ("127.0.0.1", ports[0]))
            .unwrap();
        callee
            .send_to(&pcmu_tone(1000.0, seq, 2), ("127.0.0.1", ports[1]))
            .unwrap();
        let due = start + Duration::from_millis(20 * (u64::from(seq) + 1));
        std::thread::sleep(due.saturating_duration_since(Instant::now()));
    }
    let (ok, paused) = mpctl(&grpc, &["record", "pause", "tap-call"]);
    assert!(ok && paused.contains("recording   paused"), "{paused}");
    let (ok, stopped) = mpctl(&grpc, &["record", "stop", "tap-call"]);
    assert!(ok, "{stopped}");
    for line in [
        "recording   finished",
        "audio       ",
        "at 8000 Hz, 300 packets",
    ] {
        assert!(stopped.contains(line), "{line:?} in {stopped}");
    }
    let files: Vec<&str> = stopped
        .lines()
        .filter_map(|l| l.strip_prefix("file        "))
        .collect();
    assert_eq!(files.len(), 4, "stereo, mixed, sidecar, pcap: {stopped}");
    assert!(
        files.iter().all(|f| std::path::Path::new(f).exists()),
        "{files:?}"
    );
    let (ok, shown) = mpctl(&grpc, &["record", "show", "tap-call"]);
    assert!(ok && shown.contains("recording   finished"), "{shown}");
    let (ok, missing) = mpctl(&grpc, &["record", "stop", "no-such-call"]);
    assert!(!ok && missing.contains("NotFound"), "{missing}");

    let output = analyser.wait_with_output().unwrap();
    assert!(output.status.success(), "{output:?}");
    let text = String::from_utf8_lossy(&output.stdout);
    let seconds = |leg: &str, tone: &str| {
        text.lines()
            .filter(|l| l.contains(&format!(" {leg} ")) && l.contains(tone))
            .count()
    };
    assert!(seconds("caller", "tone 440 Hz") >= 2, "{text}");
    assert!(seconds("callee", "tone 1000 Hz") >= 2, "{text}");
    assert!(text.contains("PCMU 16000 Hz"), "resampled as asked: {text}");
    assert!(text.contains(&format!("wrote {}", wav.display())), "{text}");
    // What it wrote: 16 kHz stereo, caller left, callee right, about the three seconds.
    let bytes = std::fs::read(&wav).unwrap();
    assert_eq!(u16::from_le_bytes([bytes[22], bytes[23]]), 2);
    assert_eq!(u32::from_le_bytes(bytes[24..28].try_into().unwrap()), 16000);
    let samples: Vec<i16> = bytes[44..]
        .chunks_exact(2)
        .map(|b| i16::from_le_bytes([b[0], b[1]]))
        .collect();
    let seconds_written = samples.len() as f64 / 2.0 / 16000.0;
    assert!(
        (2.7..=4.2).contains(&seconds_written),
        "{seconds_written} s"
    );
    let channel = |c: usize| -> Vec<i16> { samples.iter().skip(c).step_by(2).copied().collect() };
    let (left, right) = (channel(0), channel(1));
    let middle = |s: &[i16]| s[s.len() / 4..s.len() / 2].to_vec();
    use mediaproxy::audio::analysis::level_at;
    assert!(level_at(&middle(&left), 16000, 440.0) > 0.8);
    assert!(level_at(&middle(&right), 16000, 1000.0) > 0.8);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn json_logs_are_one_object_per_line_with_the_same_fields() {
    let child = Command::new(BIN)
        .args(["--grpc", "127.0.0.1:0", "--metrics", "127.0.0.1:0"])
        .args(["--ports", "22080-22099", "--log-format", "json"])
        .env("NO_COLOR", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("binary starts");
    let mut running = Running(child);
    let stdout = running.0.stdout.take().unwrap();
    let mut reader = BufReader::new(stdout);
    let line = wait_for_line(
        &mut reader,
        "media proxy listening",
        Duration::from_secs(10),
    );
    let object: serde_json::Value = serde_json::from_str(&line).expect("a JSON object");
    assert_eq!(object["level"], "INFO", "{line}");
    assert_eq!(
        object["fields"]["message"], "media proxy listening",
        "{line}"
    );
    let grpc = object["fields"]["grpc"].as_str().unwrap_or_default();
    assert!(grpc.starts_with("127.0.0.1:"), "{line}");
    // A format that is neither is refused, naming the option.
    let (code, stderr) = run_to_end(&["--log-format", "xml"]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("--log-format"), "{stderr}");
}

/// Out of file descriptors with its ports free, the proxy says so: the allocation is refused
/// as descriptors exhausted (never "no free RTP port pair"), counted under its own reason,
/// the ports are not quarantined, and once descriptors are back allocations work again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_descriptors_is_told_apart_from_out_of_ports() {
    use proto::v1 as pb;
    let dir = std::env::temp_dir().join(format!("mp-nofile-{}", std::process::id()));
    // 200 ports (100 pairs) but 64 descriptors: the descriptors run out first.
    let proxy = LoggedProxy::start_limited(
        &dir,
        &["--ports", "22100-22299", "--node-id", "fd-test"],
        Some(64),
    );
    let mut client =
        pb::media_proxy_client::MediaProxyClient::connect(format!("http://{}", proxy.grpc))
            .await
            .unwrap();
    let allocate = |n: usize| pb::AllocateRequest {
        call_id: format!("fd-{n}"),
        leg: pb::Leg::Caller as i32,
        owner: "fd".into(),
        media: vec![pb::MediaKind::Audio as i32],
        lease_timeout_ms: 0,
        reflect: false,
    };
    let mut allocated = 0;
    let refusal = loop {
        match client.allocate(allocate(allocated)).await {
            Ok(_) => allocated += 1,
            Err(status) => break status,
        }
        assert!(allocated < 100, "64 descriptors held 100 port pairs?");
    };
    assert!(
        allocated > 0,
        "not even one call: {refusal:?}\n{}",
        proxy.log()
    );
    assert_eq!(
        refusal.code(),
        tonic::Code::ResourceExhausted,
        "{refusal:?}"
    );
    assert!(
        refusal.message().contains("out of file descriptors"),
        "{}",
        refusal.message()
    );
    assert!(
        !refusal.message().contains("no free RTP port pair"),
        "{}",
        refusal.message()
    );
    let status = client
        .status(pb::StatusRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        status.ports_free as usize,
        200 - 2 * allocated,
        "only the allocated calls' ports are taken"
    );
    // A call released gives its descriptors back: the next allocation works.
    client
        .release(pb::ReleaseRequest {
            call_id: "fd-0".into(),
            reason: "done".into(),
        })
        .await
        .unwrap();
    client
        .allocate(allocate(1000))
        .await
        .expect("descriptors back");
    assert!(
        proxy.log().contains("out of file descriptors"),
        "{}",
        proxy.log()
    );
    let _ = std::fs::remove_dir_all(&dir);
}
