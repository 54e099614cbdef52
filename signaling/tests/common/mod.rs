//! Helpers shared by the signaling integration tests: a fresh PostgreSQL database per test
//! (on the server `.ci/postgres` starts) and a TCP gate that can cut a database off.

#![allow(dead_code, unreachable_pub)]

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub mod calls;

/// The URL of the test PostgreSQL server: `TEST_POSTGRES_URL`, or the private server
/// `.ci/postgres start` runs (started on first use).
pub fn postgres_server() -> String {
    if let Ok(url) = std::env::var("TEST_POSTGRES_URL") {
        return url;
    }
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.ci/postgres");
    let output = Command::new("bash")
        .arg(&script)
        .arg("start")
        .output()
        .expect("run .ci/postgres");
    assert!(
        output.status.success(),
        "PostgreSQL for the tests could not start (install the `postgresql` package; .ci/run does): {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap().trim().to_owned()
}

/// Creates an empty database for one test and returns its URL (same server, own database,
/// so tests run in parallel without seeing each other's rows).
pub fn postgres_database(name: &str) -> String {
    let server = postgres_server();
    let database = format!("t_{}_{}", name, std::process::id());
    let mut client = postgres::Client::connect(&server, postgres::NoTls).expect("connect");
    client
        .batch_execute(&format!("DROP DATABASE IF EXISTS {database}"))
        .unwrap();
    client
        .batch_execute(&format!("CREATE DATABASE {database}"))
        .unwrap();
    let (base, _) = server.rsplit_once('/').unwrap();
    format!("{base}/{database}")
}

/// A TCP forwarder in front of a server; `close()` cuts every connection and refuses new
/// ones (the way a database outage looks to a client), `open()` lets them through again.
pub struct Gate {
    pub address: SocketAddr,
    open: Arc<AtomicBool>,
    streams: Arc<Mutex<Vec<TcpStream>>>,
}

impl Gate {
    pub fn new(target: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap();
        let open = Arc::new(AtomicBool::new(true));
        let streams: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
        let (open2, streams2) = (open.clone(), streams.clone());
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                if !open2.load(Ordering::SeqCst) {
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                }
                let Ok(server) = TcpStream::connect(target) else {
                    continue;
                };
                {
                    let mut list = streams2.lock().unwrap();
                    list.push(client.try_clone().unwrap());
                    list.push(server.try_clone().unwrap());
                }
                pipe(client.try_clone().unwrap(), server.try_clone().unwrap());
                pipe(server, client);
            }
        });
        Self {
            address,
            open,
            streams,
        }
    }

    /// The URL of `url`'s database through this gate.
    pub fn url(&self, url: &str) -> String {
        let (scheme_user, rest) = url.split_once('@').unwrap();
        let (_, path) = rest.split_once('/').unwrap();
        format!("{scheme_user}@{}/{path}", self.address)
    }

    pub fn close(&self) {
        self.open.store(false, Ordering::SeqCst);
        for stream in self.streams.lock().unwrap().drain(..) {
            let _ = stream.shutdown(Shutdown::Both);
        }
    }

    pub fn open(&self) {
        self.open.store(true, Ordering::SeqCst);
    }
}

fn pipe(mut from: TcpStream, mut to: TcpStream) {
    std::thread::spawn(move || {
        let mut buffer = [0u8; 16384];
        loop {
            match from.read(&mut buffer) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if to.write_all(&buffer[..n]).is_err() {
                        break;
                    }
                }
            }
        }
        let _ = to.shutdown(Shutdown::Both);
    });
}

/// The socket address of a postgres:// URL's host:port.
pub fn postgres_address(url: &str) -> SocketAddr {
    let rest = url.split_once('@').unwrap().1;
    rest.split('/').next().unwrap().parse().unwrap()
}

// Not every test binary uses all of them.
#[allow(unused_imports)]
pub use testkit::{Pki, Scratch, eventually};

/// The `signaling` binary under test.
pub const SIGNALING: &str = env!("CARGO_BIN_EXE_signaling");

/// A binary the workspace builds beside `signaling` (`mediaproxy`, `mpctl`).
pub fn sibling(name: &str) -> PathBuf {
    let binary = PathBuf::from(SIGNALING).with_file_name(name);
    assert!(
        binary.exists(),
        "{} is built by the workspace test command",
        binary.display()
    );
    binary
}

/// The SIPp scenarios and pcaps (`tests/sipp`); SIPp runs in it, as pcap paths are relative.
pub fn scenarios() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/sipp")
}

/// Table rows as column -> text.
pub type Rows = Vec<std::collections::HashMap<String, String>>;

/// Rows of a CDR table (`cdr`, `cdr_media`) as column -> text, read with the product's own
/// store code (SQLite or PostgreSQL alike).
pub fn cdr_table(target: &signaling::cdr::Target, table: &str) -> Rows {
    use signaling::cdr::{Store, Value};
    let mut store = Store::open(target).unwrap();
    let (names, rows) = store.rows(table, 0, i64::MAX).unwrap();
    rows.into_iter()
        .map(|row| {
            names
                .iter()
                .cloned()
                .zip(row.into_iter().map(|value| match value {
                    Value::Null => String::new(),
                    Value::Int(i) => i.to_string(),
                    Value::Real(f) => f.to_string(),
                    Value::Text(t) => t,
                    Value::Bool(b) => i64::from(b).to_string(),
                }))
                .collect()
        })
        .collect()
}

/// A column of a row as a number.
pub fn number(row: &std::collections::HashMap<String, String>, column: &str) -> i64 {
    row[column]
        .parse()
        .unwrap_or_else(|_| panic!("{column} = {:?}", row[column]))
}

/// A child process (SIPp, a media proxy), killed if a test ends before it does (so a failed test
/// cannot leave it holding the ports of the next run).
pub struct Running(pub std::process::Child);

impl Running {
    /// Waits up to 60 s for the exit: `Err` with the exit status and standard error unless
    /// it exited 0.
    pub fn finish(&mut self) -> Result<(), String> {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = self.0.try_wait().unwrap() {
                let mut stderr = String::new();
                if let Some(mut pipe) = self.0.stderr.take() {
                    let _ = pipe.read_to_string(&mut stderr);
                }
                return if status.success() {
                    Ok(())
                } else {
                    Err(format!("{status}: {stderr}"))
                };
            }
            if std::time::Instant::now() > deadline {
                return Err("did not finish within 60 s".into());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A file of the workspace's `deploy/` folder.
pub fn deploy(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy")
        .join(path)
}

/// Runs a command to its end with `env` added: (success, stdout then stderr).
pub fn run(program: &str, args: &[&str], env: &[(&str, String)]) -> (bool, String) {
    let output = command_output(program, args, env);
    let mut text = String::from_utf8_lossy(&output.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&output.stderr));
    (output.status.success(), text)
}

/// Runs a command that must succeed (panicking with both outputs if not); its stdout.
pub fn must(program: &str, args: &[&str], env: &[(&str, String)]) -> String {
    let output = command_output(program, args, env);
    assert!(
        output.status.success(),
        "{program} {args:?} failed:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn command_output(program: &str, args: &[&str], env: &[(&str, String)]) -> std::process::Output {
    Command::new(program)
        .args(args)
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .output()
        .unwrap_or_else(|e| panic!("{program} cannot run ({e}): is it installed?"))
}

/// The body of a `GET path` on 127.0.0.1:`port` answered 200; None when it cannot connect
/// or the answer is not a 200.
pub fn http_get(port: u16, path: &str) -> Option<String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream
        .write_all(format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").as_bytes())
        .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let (head, body) = response.split_once("\r\n\r\n")?;
    (head.starts_with("HTTP/1.") && head.contains(" 200 ")).then(|| body.to_owned())
}

/// Percent-encodes a query parameter (everything but RFC 3986's unreserved characters).
pub fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
