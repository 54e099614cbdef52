//! rtpengine's ng control protocol on the real binary (`--listen-ng`), as Kamailio's
//! rtpengine module speaks it: bencode and JSON pings, a retransmitted cookie answered from
//! the reply cache byte for byte, rtpengine's error words, garbage counted and dropped, and a
//! non-loopback listener refused without `--ng-allow`.

use std::io::{BufRead, BufReader, Read};
use std::net::UdpSocket;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use testkit::PortBlock;

const BIN: &str = env!("CARGO_BIN_EXE_mediaproxy");

struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The first log line containing each of `needles`, in whatever order they come.
fn wait_for_lines(reader: &mut impl BufRead, needles: &[&str]) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut found: Vec<Option<String>> = vec![None; needles.len()];
    let mut line = String::new();
    while Instant::now() < deadline && found.iter().any(Option::is_none) {
        line.clear();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            std::thread::sleep(Duration::from_millis(20));
            continue;
        }
        for (needle, slot) in needles.iter().zip(&mut found) {
            if slot.is_none() && line.contains(needle) {
                *slot = Some(line.clone());
            }
        }
    }
    found
        .into_iter()
        .zip(needles)
        .map(|(line, needle)| line.unwrap_or_else(|| panic!("no line with {needle:?}")))
        .collect()
}

fn ask(client: &UdpSocket, ng: u16, request: &[u8]) -> Option<Vec<u8>> {
    client.send_to(request, ("127.0.0.1", ng)).unwrap();
    let mut buffer = [0u8; 65_536];
    match client.recv(&mut buffer) {
        Ok(n) => Some(buffer[..n].to_vec()),
        Err(_) => None,
    }
}

fn scrape(metrics: &str) -> String {
    let mut http = std::net::TcpStream::connect(metrics).unwrap();
    std::io::Write::write_all(&mut http, b"GET /metrics HTTP/1.0\r\n\r\n").unwrap();
    let mut body = String::new();
    http.read_to_string(&mut body).unwrap();
    body
}

#[test]
fn the_binary_answers_ng_pings_from_its_cache_and_drops_garbage() {
    let (ng, relay) = (PortBlock::take(2), PortBlock::take(20));
    let child = Command::new(BIN)
        .args(["--grpc", "127.0.0.1:0", "--metrics", "127.0.0.1:0"])
        .args(["--listen-ng", &format!("127.0.0.1:{}", ng.start())])
        .args([
            "--ports",
            &format!("{}-{}", relay.start(), relay.start() + 19),
        ])
        .env("MEDIAPROXY_LOG", "info")
        .env("NO_COLOR", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("binary starts");
    let mut child = Running(child);
    let mut log = BufReader::new(child.0.stdout.take().unwrap());
    let lines = wait_for_lines(
        &mut log,
        &["media proxy listening", "ng control protocol listening"],
    );
    let line = &lines[0];
    let metrics = line
        .split("metrics=")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .unwrap()
        .to_owned();
    let client = UdpSocket::bind("127.0.0.1:0").unwrap();
    client
        .set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let port = ng.start();
    // Kamailio's module start: a bencoded ping.
    assert_eq!(
        ask(&client, port, b"8127_0 d7:command4:pinge").as_deref(),
        Some(&b"8127_0 d6:result4:ponge"[..])
    );
    assert_eq!(
        ask(&client, port, br#"j1 {"command": "ping"}"#).as_deref(),
        Some(&br#"j1 {"result":"pong"}"#[..])
    );
    // A command not taken yet: rtpengine's words; its retransmission: the same bytes.
    let first = ask(&client, port, b"8127_1 d7:command5:querye").unwrap();
    assert!(
        first.ends_with(b"12:error-reason20:Unrecognized commande"),
        "{}",
        String::from_utf8_lossy(&first)
    );
    assert_eq!(
        ask(&client, port, b"8127_1 d7:command5:querye"),
        Some(first)
    );
    // No cookie: nothing to answer under.
    assert_eq!(ask(&client, port, b"garbage"), None);
    let body = scrape(&metrics);
    assert!(
        body.contains("mediaproxy_ng_dropped_total{reason=\"no_cookie\""),
        "{body}"
    );
    let counted = |result: &str| {
        body.lines()
            .find(|l| {
                l.starts_with("mediaproxy_ng_requests_total")
                    && l.contains(&format!("result=\"{result}\""))
            })
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse::<f64>().ok())
    };
    assert_eq!(counted("ok"), Some(2.0), "{body}");
    assert_eq!(counted("cached"), Some(1.0), "{body}");
    let dropped = body
        .lines()
        .find(|l| l.starts_with("mediaproxy_ng_dropped_total{reason=\"no_cookie\""))
        .and_then(|l| l.rsplit(' ').next());
    assert_eq!(dropped, Some("1"), "{body}");
    assert_eq!(counted("error"), Some(1.0), "{body}");
}

#[test]
fn an_ng_listener_beyond_loopback_needs_an_allow_list() {
    let output = Command::new(BIN)
        .args(["--grpc", "127.0.0.1:0", "--listen-ng", "0.0.0.0:22222"])
        .output()
        .expect("binary runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("--ng-allow"), "{stderr}");
}
