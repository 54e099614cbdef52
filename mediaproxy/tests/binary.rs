//! The `mediaproxy` binary as an operator runs it: configuration errors, start-up, health,
//! metrics and SIGTERM.

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

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
        body.contains("mediaproxy_ports_total{node=\"bin-test\"} 20"),
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
