//! The running pieces of an end-to-end test: the `signaling` binary (with its embedded media
//! proxy unless told otherwise), a separately started `mediaproxy` binary, and SIPp as the
//! phones (Debian's `sip-tester`; scenarios and pcaps in `tests/sipp/`).

use std::collections::HashMap;
use std::io::Read;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use signaling::cdr::Target;

use testkit::PortBlock;

use super::{Rows, Running, Scratch, cdr_table, eventually, scenarios, sibling};

const BIN: &str = super::SIGNALING;

/// 5 s of 20 ms packets (250) plus the DTMF event of the pcap: at least 240 must arrive.
pub const MIN_PACKETS: i64 = 240;

pub struct Ports {
    pub sip: u16,
    pub uac: u16,
    pub uas: u16,
    pub uac_media: u16,
    pub uas_media: u16,
    /// The media proxy's port range for this test.
    pub relay: std::ops::Range<u16>,
}

impl Ports {
    /// Ports for one test's calls, from testkit's port blocks (no test numbers its ports by
    /// hand): SIP for signaling, the SIPp caller and callee, and room for a second caller 5
    /// above the first; 40 media ports for each SIPp side (a second caller's 20 above the
    /// first's); 100 relay ports for the embedded proxy (50 pairs: the 20 calls the test
    /// service allows, both legs).
    pub fn take() -> Self {
        Self::take_relay(100)
    }

    /// [`Ports::take`] with `relay` relay ports (two media proxies of 100 each, say).
    pub fn take_relay(relay: u16) -> Self {
        let sip = PortBlock::take(8);
        let (uac_media, uas_media) = (PortBlock::take(40), PortBlock::take(40));
        Self {
            sip: sip.port(0),
            uac: sip.port(1),
            uas: sip.port(2),
            uac_media: uac_media.start(),
            uas_media: uas_media.start(),
            relay: PortBlock::take(relay).range(),
        }
    }

    /// Two consecutive ports for the gRPC listeners of one or two separate media proxies.
    pub fn grpc() -> u16 {
        PortBlock::take(2).start()
    }

    /// The relay range as `--ports` takes it.
    pub fn relay_arg(&self) -> String {
        format!("{}-{}", self.relay.start, self.relay.end - 1)
    }
}

/// What a running service holds that calls take and must give back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Held {
    /// Open file descriptors of the process.
    pub descriptors: usize,
    /// `mediaproxy_sessions` of the embedded proxy.
    pub sessions: i64,
    /// `mediaproxy_ports_free` of the embedded proxy.
    pub ports_free: i64,
}

/// The value of the first series of metric `name` in a scrape (-1 when absent).
pub fn metric(metrics: &str, name: &str) -> i64 {
    testkit::metric_value(metrics, name, &[]).map_or(-1, |v| v as i64)
}

/// The signaling binary, running.
pub struct Service {
    pub child: Child,
    pub dir: Scratch,
    pub cdr: Target,
}

impl Service {
    pub fn start(name: &str, ports: &Ports, extra: &[&str]) -> Self {
        Self::start_in(Scratch::new(&format!("sig-e2e-{name}")), ports, extra, &[])
    }

    /// Like [`Service::start`], in `dir`, with `env` set for the process.
    pub fn start_in(dir: Scratch, ports: &Ports, extra: &[&str], env: &[(&str, &str)]) -> Self {
        let log = std::fs::File::create(dir.join("signaling.log")).unwrap();
        let mut command = Command::new(BIN);
        command.envs(env.iter().copied());
        if !extra.contains(&"--sip") {
            command.args(["--sip", &format!("127.0.0.1:{}", ports.sip)]);
        }
        let cdr = match extra.iter().position(|a| *a == "--cdr") {
            Some(i) => Target::parse(extra[i + 1]).unwrap(),
            None => {
                let target = Target::Sqlite(dir.join("cdr.db"));
                command.args([
                    "--cdr",
                    &format!("sqlite://{}", dir.join("cdr.db").display()),
                ]);
                target
            }
        };
        if !extra.contains(&"--cdr-spool") {
            command.args(["--cdr-spool", &dir.join("cdr.spool").display().to_string()]);
        }
        let child = command
            .args(["--ports", &ports.relay_arg()])
            .args(if extra.contains(&"--max-calls") {
                &[][..]
            } else {
                &["--max-calls", "20"][..]
            })
            .args(["--route", &format!("=sip:127.0.0.1:{}", ports.uas)])
            .args(["--log", "info"])
            .args(if extra.contains(&"--metrics") {
                &[][..]
            } else {
                &["--metrics", "127.0.0.1:0"][..]
            })
            .args(extra)
            .env("NO_COLOR", "1")
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("signaling starts");
        let mut service = Self { child, dir, cdr };
        let deadline = Instant::now() + Duration::from_secs(15);
        while !service.log().contains("signaling listening") {
            let exited = service.child.try_wait().unwrap().is_some();
            assert!(!exited, "signaling exited at start:\n{}", service.log());
            assert!(
                Instant::now() < deadline,
                "signaling did not start:\n{}",
                service.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        service
    }

    /// Nice values of the service's threads whose name starts with `prefix` (waiting up to
    /// 5 s for one: a new thread names itself once it runs).
    pub fn nices(&self, prefix: &str) -> Vec<i64> {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let tasks = std::fs::read_dir(format!("/proc/{}/task", self.child.id())).unwrap();
            let nices: Vec<i64> = tasks
                .filter_map(|task| {
                    let stat = std::fs::read_to_string(task.ok()?.path().join("stat")).ok()?;
                    // "tid (name) state ...": nice is the 17th field after the name.
                    let (head, rest) = stat.rsplit_once(')')?;
                    let name = head.split_once('(')?.1;
                    name.starts_with(prefix)
                        .then(|| rest.split_whitespace().nth(16)?.parse().ok())?
                })
                .collect();
            if !nices.is_empty() || Instant::now() > deadline {
                return nices;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// GETs `/metrics` of the running service.
    pub fn metrics(&self) -> String {
        self.get("/metrics")
    }

    /// Waits until a call is up (confirmed), as `/admin/calls` shows it.
    pub fn wait_call_up(&self) {
        let up = eventually(Duration::from_secs(10), || {
            self.get("/admin/calls")
                .contains("\"state\": \"confirmed\"")
        });
        assert!(up, "no call up:\n{}", self.log());
    }

    /// Waits up to `timeout` until the `cdr` table holds a row; `what` says which.
    pub fn wait_first_cdr(&self, timeout: Duration, what: &str) {
        let written = eventually(timeout, || !self.table("cdr").is_empty());
        assert!(written, "{what}:\n{}", self.log());
    }

    /// What the service holds now that calls take and must give back.
    pub fn held(&self) -> Held {
        let metrics = self.metrics();
        Held {
            descriptors: std::fs::read_dir(format!("/proc/{}/fd", self.child.id()))
                .map(|d| d.count())
                .unwrap_or(0),
            sessions: metric(&metrics, "mediaproxy_sessions"),
            ports_free: metric(&metrics, "mediaproxy_ports_free"),
        }
    }

    /// What the service holds once it has settled after its start: its links to the media
    /// proxy made (a gRPC connection is two descriptors in an embedded proxy's process) and
    /// the descriptor count the same over a second. A baseline taken before then can miss a
    /// connection still being made on a loaded machine.
    pub fn settled(&self) -> Held {
        let mut last = self.held();
        let mut steady = 0;
        eventually(Duration::from_secs(10), || {
            std::thread::sleep(Duration::from_millis(250));
            let now = self.held();
            steady = if now == last && now.ports_free > 0 {
                steady + 1
            } else {
                0
            };
            last = now;
            steady >= 4
        });
        last
    }

    /// Waits until the service holds no more than at `baseline`: no media session, every
    /// port free again (released ports sit out a quarantine first), descriptors back to the
    /// baseline.
    pub fn gives_back(&self, baseline: Held) {
        let mut now = self.held();
        let given_back = eventually(Duration::from_secs(15), || {
            now = self.held();
            now.sessions == 0
                && now.ports_free == baseline.ports_free
                && now.descriptors <= baseline.descriptors
        });
        assert!(
            given_back,
            "the service holds {now:?} against {baseline:?} at the start:\n{}",
            self.log()
        );
    }

    /// GETs a path of the HTTP endpoint (`--metrics`); returns the whole response.
    pub fn get(&self, path: &str) -> String {
        self.http("GET", path)
    }

    /// The relay port the callee was given in SDP for the one call up now (the pool hands
    /// ports out in random order), read from `/admin/calls`.
    pub fn callee_relay_port(&self) -> u16 {
        let calls = self.get("/admin/calls");
        calls
            .split("\"callee_ports\": [")
            .nth(1)
            .and_then(|rest| rest.split([']', ',']).next())
            .and_then(|port| port.trim().parse().ok())
            .unwrap_or_else(|| panic!("a call with callee ports: {calls}"))
    }

    /// Sends `method path` to the HTTP endpoint (`--metrics`); returns the whole response.
    pub fn http(&self, method: &str, path: &str) -> String {
        let log = self.log();
        let line = log
            .lines()
            .find(|l| l.contains("signaling listening"))
            .expect("start line");
        let address = line
            .split("metrics=")
            .nth(1)
            .and_then(|r| r.split_whitespace().next())
            .expect("metrics address");
        let mut stream = std::net::TcpStream::connect(address).expect("metrics endpoint");
        std::io::Write::write_all(
            &mut stream,
            format!("{method} {path} HTTP/1.0\r\n\r\n").as_bytes(),
        )
        .unwrap();
        let mut body = String::new();
        stream.read_to_string(&mut body).unwrap();
        body
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("signaling.log")).unwrap_or_default()
    }

    /// Sends SIGTERM (the service drains: new INVITEs get 503, calls finish).
    pub fn terminate(&self) {
        let pid = self.child.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    }

    /// SIGTERM, wait for the exit (which flushes the CDRs), return the CDR rows.
    pub fn stop(self) -> Vec<HashMap<String, String>> {
        self.terminate();
        self.wait_rows()
    }

    /// Like [`Service::stop`], also returning the whole log (written until the exit: media
    /// releases happen asynchronously after the last SIP message).
    pub fn stop_with_log(mut self) -> (Vec<HashMap<String, String>>, String) {
        self.terminate();
        self.wait_exit();
        // Read before `self` (and its scratch directory) goes.
        (self.table("cdr"), self.log())
    }

    /// SIGTERM, wait for the exit; the `cdr` rows, the `cdr_media` rows and the whole log.
    pub fn stop_all(mut self) -> (Rows, Rows, String) {
        self.terminate();
        self.wait_exit();
        (self.table("cdr"), self.table("cdr_media"), self.log())
    }

    /// Waits for the exit, returns the CDR rows.
    pub fn wait_rows(mut self) -> Vec<HashMap<String, String>> {
        self.wait_exit();
        self.table("cdr")
    }

    pub fn wait_exit(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                assert!(
                    status.success(),
                    "signaling exited with {status}:\n{}",
                    self.log()
                );
                break;
            }
            assert!(
                Instant::now() < deadline,
                "signaling did not stop:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn table(&self, table: &str) -> Rows {
        cdr_table(&self.cdr, table)
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Owned copies of argument strings.
pub fn strings(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

/// Starts SIPp in the scenarios directory (pcap paths are relative to it).
pub fn sipp(args: &[String]) -> Running {
    let child = Command::new("sipp")
        .current_dir(scenarios())
        .args(args)
        .args(["-nostdin", "-timeout", "40s", "-timeout_error"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("sipp is installed (apt-get install sip-tester)");
    Running(child)
}

pub fn uas(ports: &Ports, scenario: &str, echo: bool, extra: &[&str]) -> Running {
    let mut args: Vec<String> = vec![
        "-sf".into(),
        scenario.into(),
        "-i".into(),
        "127.0.0.1".into(),
        "-p".into(),
        ports.uas.to_string(),
        "-mi".into(),
        "127.0.0.1".into(),
        "-mp".into(),
        ports.uas_media.to_string(),
        "-m".into(),
        "1".into(),
    ];
    if echo {
        args.push("-rtp_echo".into());
    }
    args.extend(extra.iter().map(|s| s.to_string()));
    sipp(&args)
}

pub fn uac(ports: &Ports, scenario: &str, extra: &[&str]) -> Running {
    let mut args: Vec<String> = vec![
        "-sf".into(),
        scenario.into(),
        format!("127.0.0.1:{}", ports.sip),
        "-i".into(),
        "127.0.0.1".into(),
        "-p".into(),
        ports.uac.to_string(),
        "-mi".into(),
        "127.0.0.1".into(),
        "-mp".into(),
        ports.uac_media.to_string(),
        "-s".into(),
        "1000".into(),
        "-m".into(),
        "1".into(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    sipp(&args)
}

/// Waits for a SIPp process; panics with its stderr unless it exited 0.
pub fn expect_success(mut sipp: Running, what: &str, service: &Service) {
    if let Err(error) = sipp.finish() {
        panic!("{what} failed ({error})\nsignaling log:\n{}", service.log());
    }
}

/// One SIPp side of a test call: its scenario file (in `signaling/tests/sipp/`), whether it
/// echoes the RTP it gets, and its further arguments.
pub struct Scenario {
    file: String,
    echo: bool,
    args: Vec<String>,
}

impl Scenario {
    pub fn new(file: &str) -> Self {
        Self {
            file: file.to_owned(),
            echo: false,
            args: Vec::new(),
        }
    }

    /// Sends back every RTP packet it gets (`-rtp_echo`): a callee that talks as much as its
    /// caller.
    pub fn echo(mut self) -> Self {
        self.echo = true;
        self
    }

    /// More SIPp arguments (`-inf users.csv`, `-trace_msg -message_file FILE`, ...).
    pub fn args(mut self, args: &[&str]) -> Self {
        self.args.extend(args.iter().map(|a| (*a).to_owned()));
        self
    }

    fn extra(&self) -> Vec<&str> {
        self.args.iter().map(String::as_str).collect()
    }
}

/// One call through `service`: SIPp plays `callee` (started first) and then `caller`; waits
/// until both ran their scenario to the end, or panics with signaling's log.
pub fn call(ports: &Ports, service: &Service, callee: Scenario, caller: Scenario) {
    let answering = uas(ports, &callee.file, callee.echo, &callee.extra());
    std::thread::sleep(Duration::from_millis(300));
    let calling = uac(ports, &caller.file, &caller.extra());
    expect_success(calling, "UAC", service);
    expect_success(answering, "UAS", service);
}

/// A directory and paths in it for the SIPp message traces (`-trace_msg -message_file`) of one
/// test's UAS and UAC.
pub fn traces(name: &str) -> (Scratch, PathBuf, PathBuf) {
    let dir = Scratch::new(&format!("sig-e2e-{name}-traces"));
    let (uas, uac) = (dir.join("uas.msg"), dir.join("uac.msg"));
    (dir, uas, uac)
}

pub fn start_mediaproxy(grpc_port: u16, relay: &str, node_id: &str) -> (MediaProxy, String) {
    start_mediaproxy_with(grpc_port, relay, node_id, &[])
}

/// [`start_mediaproxy`] with more options.
pub fn start_mediaproxy_with(
    grpc_port: u16,
    relay: &str,
    node_id: &str,
    extra: &[&str],
) -> (MediaProxy, String) {
    let binary = sibling("mediaproxy");
    let mut proxy = MediaProxy(
        Command::new(&binary)
            .args(["--grpc", &format!("127.0.0.1:{grpc_port}")])
            .args(if extra.contains(&"--metrics") {
                &[][..]
            } else {
                &["--metrics", "127.0.0.1:0"][..]
            })
            .args(["--ports", relay])
            .args(["--node-id", node_id, "--log", "warn"])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", grpc_port)).is_err() {
        assert!(Instant::now() < deadline, "mediaproxy did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    // A listener that is not ours (a stray proxy on the port) would make the test judge the
    // wrong process: ours must still be running once the port answers.
    assert!(
        proxy.0.try_wait().unwrap().is_none(),
        "mediaproxy exited at start (is 127.0.0.1:{grpc_port} taken?)"
    );
    (proxy, format!("http://127.0.0.1:{grpc_port}"))
}

/// A separately started mediaproxy, killed when dropped so a failed test cannot leave it
/// holding its ports for the next run.
pub struct MediaProxy(pub Child);

impl MediaProxy {
    /// Kills it now (a proxy host that dies).
    pub fn kill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for MediaProxy {
    fn drop(&mut self) {
        self.kill();
    }
}
