//! `bench`: relays paced RTP for N simultaneous calls through a real relay process and prints
//! what it cost. The relay is ours (`mediaproxy`, set up over its gRPC contract), rtpengine
//! in userspace mode (`--table=-1`, set up over its ng protocol) or the bare forwarder of
//! [`forward`] (the practical ceiling), each pinned the same way and fed by the same
//! generator, so their figures can be read side by side.
//!
//! For each call count of the sweep it starts a fresh proxy pinned to one CPU (`taskset`),
//! pins itself to another, creates the calls (two legs, one audio line each), and sends
//! 172-byte G.711-sized RTP packets at 50 packets/s per direction, receiving what the proxy
//! relays. By default (`--shape shared`) every caller leg's phone is one UDP socket and
//! every callee leg's phone another: the relay tells calls apart by its own ports, so two
//! generator sockets serve any number of calls, and packets leave in `sendmmsg` batches and
//! arrive in `recvmmsg` batches. That keeps the generator's cost per packet well below the
//! relay's, so one generator core can saturate one relay core, but it is the relay's easiest
//! case. `--shape phones` gives every phone leg its own socket as real phones are, and
//! `--generator-netns` moves the phones across a veth pair so that delivery into their
//! sockets is not charged to the relay ([`generator`], [`netns`]). Each packet carries its
//! stream and send time, so the generator
//! measures one-way latency through the proxy; loss and duplicates come from sequence
//! bitmaps; the proxy's CPU time comes from `/proc/<pid>/stat`.
//!
//! Figures: packets relayed per proxy CPU-second (the efficiency figure), loss, latency
//! percentiles, idle RSS per call, the relay's CPU with every call set up and no traffic,
//! and gRPC allocate+update setup latency.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use generator::{Stream, generate};
use measure::{cpu_seconds, nearest_rank, percentile, rss_kib, threads_cpu_seconds};
use proto::v1 as pb;
use proto::v1::media_proxy_client::MediaProxyClient;
use recorded::{Recorded, record_all, recording_totals};
use report::{Row, print_row, print_summary};

mod churn;
mod decode;
mod forward;
mod forward_uring;
mod generator;
mod measure;
mod netns;
mod ng;
mod recorded;
mod report;

/// Which relay a point measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Target {
    /// Our mediaproxy.
    Ours,
    /// rtpengine in userspace mode (Debian package rtpengine-daemon).
    Rtpengine,
    /// The bare one-thread forwarder with a fixed port map.
    Bare,
    /// The same bare forwarder on io_uring instead of epoll + recvfrom/sendto.
    BareUring,
    /// A second mediaproxy build (`--baseline PATH`), to compare two builds of ours.
    Baseline,
    /// Ours, recording every call (stereo and mixed WAV, sidecar) into `--recordings`.
    #[value(name = "ours+rec")]
    OursRecording,
}

impl Target {
    fn name(self) -> &'static str {
        match self {
            Self::Ours => "ours",
            Self::Rtpengine => "rtpengine",
            Self::Bare => "bare",
            Self::BareUring => "bare-uring",
            Self::Baseline => "baseline",
            Self::OursRecording => "ours+rec",
        }
    }
}

#[derive(Debug, Parser)]
#[command(
    name = "bench",
    about = "Relay benchmark: paced RTP through a real mediaproxy"
)]
struct Args {
    /// Relays to measure, comma separated, each over the whole sweep.
    #[arg(long, value_delimiter = ',', value_enum, default_value = "ours")]
    targets: Vec<Target>,
    /// The rtpengine binary.
    #[arg(long, default_value = "rtpengine")]
    rtpengine: String,
    /// Internal: run as the bare forwarder with this many sockets.
    #[arg(long, hide = true)]
    forward_sockets: Option<usize>,
    /// Internal: the bare forwarder uses io_uring.
    #[arg(long, hide = true)]
    forward_uring: bool,
    /// Call counts to sweep, comma separated.
    #[arg(long, value_delimiter = ',', default_value = "100,500,1000")]
    calls: Vec<usize>,
    /// Measured seconds per point (after one second of warm-up).
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Relay worker threads of the proxy.
    #[arg(long, default_value_t = 1)]
    workers: usize,
    /// Packets per second per stream (two streams per call).
    #[arg(long, default_value_t = 50)]
    pps: u32,
    /// The mediaproxy binary [default: next to this executable].
    #[arg(long)]
    mediaproxy: Option<PathBuf>,
    /// CPU list the proxy is pinned to (taskset); "none" disables pinning.
    #[arg(long, default_value = "1")]
    proxy_cpus: String,
    /// CPU list the generator pins itself to; "none" disables pinning.
    #[arg(long, default_value = "0")]
    generator_cpus: String,
    /// UDP port range the relay under test allocates from (ours and rtpengine).
    #[arg(long, default_value = "10000-32767")]
    proxy_ports: String,
    /// The generator sends what is due every this many microseconds, together
    /// [default: 100 for --shape shared, 200 for phones].
    #[arg(long)]
    tick_us: Option<u64>,
    /// The phones: `shared` (two generator sockets in all, batched sends: the relay's
    /// easiest case, comparable with earlier figures) or `phones` (a socket of its own per
    /// phone leg, one send per packet, bursts per tick: production's shape).
    #[arg(long, value_enum, default_value = "shared")]
    shape: generator::Shape,
    /// Put the generator in a network namespace of its own, joined to the relay by a veth
    /// pair with receive packet steering to each side's CPU, so that delivering packets into
    /// the phones' sockets is not charged to the relay as it is on loopback (needs root).
    #[arg(long)]
    generator_netns: bool,
    /// Internal: the bare forwarder binds its sockets to this address.
    #[arg(long, hide = true, default_value = "127.0.0.1")]
    forward_bind: Ipv4Addr,
    /// Set up from --generator-netns at the start.
    #[arg(skip)]
    network: netns::Network,
    /// Measure every point this many times, the targets in a rotated order each round, and
    /// print the median of each with its paired ratio to the reference relay (the machine's
    /// other tenants make single runs swing by 15 % or more).
    #[arg(long, default_value_t = 1)]
    rounds: usize,
    /// The mediaproxy binary measured as target `baseline`.
    #[arg(long)]
    baseline: Option<PathBuf>,
    /// Further calls per second set up and released (each lives one second) over the relay's
    /// control protocol while the measured calls carry traffic: does call setup disturb live
    /// media? Adds the churned calls, their setup p99 and failures to each row. Ours,
    /// baseline and rtpengine only (the bare forwarders have a fixed port map).
    #[arg(long, default_value_t = 0)]
    churn: u32,
    /// Print what decoding a recorded call's audio costs per codec (no relay is run), then
    /// exit; the value is the seconds measured per codec.
    #[arg(long, value_name = "SECONDS", num_args = 0..=1, default_missing_value = "2")]
    decode_cost: Option<u64>,
    /// Where target ours+rec writes its recordings (emptied after each point)
    /// [default: a directory in the system's temporary directory].
    #[arg(long, value_name = "DIR")]
    recordings: Option<PathBuf>,
}

impl Args {
    /// The generator's tick in microseconds.
    fn tick_us(&self) -> u64 {
        self.tick_us.unwrap_or(self.shape.default_tick_us())
    }

    /// The recordings directory of target ours+rec for this run.
    fn recordings_dir(&self) -> PathBuf {
        self.recordings.clone().unwrap_or_else(|| {
            std::env::temp_dir().join(format!("bench-recordings-{}", std::process::id()))
        })
    }
}

const PACKET_LEN: usize = 172;
/// How long the idle cost of the calls is measured before traffic starts.
const IDLE_SPAN: Duration = Duration::from_secs(2);

fn main() -> anyhow::Result<()> {
    let mut args = Args::parse();
    let _ = rlimit::increase_nofile_limit(u64::MAX);
    if let Some(seconds) = args.decode_cost {
        return decode::run(seconds.max(1));
    }
    if let Some(sockets) = args.forward_sockets {
        return if args.forward_uring {
            forward_uring::run(sockets, args.forward_bind)
        } else {
            forward::run(sockets, args.forward_bind)
        };
    }
    if args.generator_cpus != "none" {
        let pid = std::process::id().to_string();
        let pinned = Command::new("taskset")
            .args(["-a", "-p", "-c", &args.generator_cpus, &pid])
            .stdout(Stdio::null())
            .status()
            .context("taskset (util-linux) is needed for pinning; pass --generator-cpus none")?;
        if !pinned.success() {
            bail!(
                "taskset could not pin the generator to {}",
                args.generator_cpus
            );
        }
    }
    let binary = match &args.mediaproxy {
        Some(path) => path.clone(),
        None => std::env::current_exe()?
            .parent()
            .context("executable has a directory")?
            .join("mediaproxy"),
    };
    if !binary.exists() {
        bail!(
            "{} not found: build it first (cargo build --release -p mediaproxy)",
            binary.display()
        );
    }
    args.network =
        netns::Network::new(args.generator_netns, &args.proxy_cpus, &args.generator_cpus)?;
    let clock_ticks: f64 =
        String::from_utf8(Command::new("getconf").arg("CLK_TCK").output()?.stdout)?
            .trim()
            .parse()?;
    println!(
        "relay benchmark: {} workers (ours and rtpengine), {} pps per stream, {} B packets, {} s per point, proxy on CPU {}, generator on CPU {}",
        args.workers, args.pps, PACKET_LEN, args.seconds, args.proxy_cpus, args.generator_cpus
    );
    println!(
        "load shape: {} ({}), sends every {} us",
        args.shape.name(),
        match args.shape {
            generator::Shape::Shared =>
                "two generator sockets, callers on one and callees on the other, batched sends",
            generator::Shape::Phones => "a socket of its own per phone leg, one send per packet",
        },
        args.tick_us()
    );
    println!("network: {}", args.network.describe());
    let mut header = format!(
        "{:<9} {:>6} {:>9} {:>9} {:>8} {:>5} {:>8} {:>8} {:>9} {:>7} {:>12} {:>9} {:>6} {:>9} {:>8}",
        "relay",
        "calls",
        "offered",
        "relayed",
        "loss%",
        "dups",
        "p50 us",
        "p99 us",
        "p99.9 us",
        "cpu%",
        "pkt/cpu-s",
        "KiB/call",
        "idle%",
        "setup99",
        "lag99"
    );
    if args.churn > 0 {
        println!(
            "churn: {} further calls per second set up and released during each point (churned calls, churn99 = their setup p99, cfail = failed setups and releases)",
            args.churn
        );
        header += &format!(" {:>8} {:>9} {:>5}", "churned", "churn99", "cfail");
    }
    println!("{header}");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let baseline = match (&args.baseline, args.targets.contains(&Target::Baseline)) {
        (Some(path), _) => path.clone(),
        (None, true) => bail!("target baseline needs --baseline PATH (a mediaproxy binary)"),
        (None, false) => binary.clone(),
    };
    if args.churn > 0
        && let Some(bare) = args
            .targets
            .iter()
            .find(|t| matches!(t, Target::Bare | Target::BareUring))
    {
        bail!(
            "--churn needs a relay with a control protocol (ours, baseline, rtpengine), not {}",
            bare.name()
        );
    }
    let rounds = args.rounds.max(1);
    for &calls in &args.calls {
        let mut rows: Vec<Vec<Row>> = args.targets.iter().map(|_| Vec::new()).collect();
        for round in 0..rounds {
            for turn in 0..args.targets.len() {
                // Rotated each round, so no relay always runs right after the same other one.
                let slot = (turn + round) % args.targets.len();
                let target = args.targets[slot];
                let program = if target == Target::Baseline {
                    &baseline
                } else {
                    &binary
                };
                let row =
                    runtime.block_on(run_point(&args, target, program, calls, clock_ticks))?;
                print_row(target, calls, &row);
                rows[slot].push(row);
            }
        }
        if rounds > 1 {
            print_summary(&args.targets, calls, &rows);
        }
    }
    Ok(())
}

struct Proxy(Child);

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_udp_port() -> anyhow::Result<u16> {
    Ok(std::net::UdpSocket::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn free_tcp_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// How the benchmark sets calls up on the relay under test.
enum Control {
    /// Our gRPC contract, with the URL it was reached at.
    Grpc(MediaProxyClient<tonic::transport::Channel>, String),
    /// rtpengine's ng protocol, with the address of its ng port.
    Ng(ng::NgClient, String),
    Bare(
        std::process::ChildStdin,
        std::io::BufReader<std::process::ChildStdout>,
    ),
}

fn pinned(args: &Args, program: &std::path::Path) -> Command {
    if args.proxy_cpus == "none" {
        Command::new(program)
    } else {
        let mut c = Command::new("taskset");
        c.args(["-c", &args.proxy_cpus]).arg(program);
        c
    }
}

/// Starts the relay under test and connects its control channel.
async fn start(
    args: &Args,
    target: Target,
    binary: &std::path::Path,
    calls: usize,
) -> anyhow::Result<(Proxy, Control)> {
    match target {
        Target::Ours | Target::Baseline | Target::OursRecording => {
            let grpc_port = free_tcp_port()?;
            let metrics_port = free_tcp_port()?;
            let mut command = pinned(args, binary);
            if target == Target::OursRecording {
                command.arg("--recordings").arg(args.recordings_dir());
            }
            command
                .args(["--grpc", &format!("127.0.0.1:{grpc_port}")])
                .args(["--metrics", &format!("127.0.0.1:{metrics_port}")])
                .args(["--ports", &args.proxy_ports])
                .args(["--media-ip", &args.network.relay_ip().to_string()])
                .args(["--workers", &args.workers.to_string()])
                .args(["--media-timeout", "1h", "--lease-timeout", "1h"])
                .args([
                    "--log",
                    "warn",
                    "--shutdown-grace",
                    "1s",
                    "--node-id",
                    "bench",
                ])
                .stdout(Stdio::null())
                .stderr(Stdio::inherit());
            let proxy = Proxy(command.spawn().context("start mediaproxy")?);
            for _ in 0..100 {
                let url = format!("http://127.0.0.1:{grpc_port}");
                if let Ok(c) = MediaProxyClient::connect(url.clone()).await {
                    return Ok((proxy, Control::Grpc(c, url)));
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            bail!("mediaproxy did not come up")
        }
        Target::Rtpengine => {
            let ng_port = free_udp_port()?;
            let (min, max) = args.proxy_ports.split_once('-').context("--proxy-ports")?;
            let mut command = pinned(args, std::path::Path::new(&args.rtpengine));
            command
                .args([
                    "--config-file=none",
                    "--table=-1",
                    "--foreground",
                    "--log-stderr",
                ])
                .arg(format!("--interface={}", args.network.relay_ip()))
                .arg(format!("--listen-ng=127.0.0.1:{ng_port}"))
                .arg(format!("--port-min={min}"))
                .arg(format!("--port-max={max}"))
                .arg(format!("--num-threads={}", args.workers))
                .args(["--timeout=3600", "--silent-timeout=3600", "--log-level=3"])
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            let proxy = Proxy(command.spawn().context(
                "start rtpengine (apt-get install rtpengine-daemon, or pass --rtpengine PATH)",
            )?);
            let address = format!("127.0.0.1:{ng_port}");
            let mut client = ng::NgClient::connect(&address)?;
            client.wait_ready(50)?;
            Ok((proxy, Control::Ng(client, address)))
        }
        Target::Bare | Target::BareUring => {
            let me = std::env::current_exe()?;
            let mut command = pinned(args, &me);
            if target == Target::BareUring {
                command.arg("--forward-uring");
            }
            command
                .args(["--forward-sockets", &(calls * 2).to_string()])
                .args(["--forward-bind", &args.network.relay_ip().to_string()])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit());
            let mut child = command.spawn().context("start the bare forwarder")?;
            let stdin = child.stdin.take().context("stdin")?;
            let stdout = std::io::BufReader::new(child.stdout.take().context("stdout")?);
            Ok((Proxy(child), Control::Bare(stdin, stdout)))
        }
    }
}

/// Creates one call per entry of `phones`, the ports (on 127.0.0.1) of that call's
/// caller-side and callee-side phone. Returns, per call, the relay address each side sends
/// to, with each call's setup time.
async fn allocate(
    control: &mut Control,
    network: &netns::Network,
    phones: &[[u16; 2]],
) -> anyhow::Result<(Vec<[SocketAddrV4; 2]>, Vec<Duration>)> {
    let calls = phones.len();
    let phone_ip = network.phone_ip();
    let mut out = Vec::with_capacity(calls);
    let mut setup = Vec::with_capacity(calls);
    let relay = |port: u16| SocketAddrV4::new(network.relay_ip(), port);
    match control {
        Control::Grpc(client, _) => {
            for (call, &ports) in phones.iter().enumerate() {
                let began = Instant::now();
                let call_id = format!("bench-{call}");
                out.push(grpc_call(client, &call_id, phone_ip, ports).await?);
                setup.push(began.elapsed());
            }
        }
        Control::Ng(client, _) => {
            for (call, &ports) in phones.iter().enumerate() {
                let began = Instant::now();
                let call_id = format!("bench-{call}");
                out.push(ng_call(client, &call_id, network, ports)?);
                setup.push(began.elapsed());
            }
        }
        Control::Bare(stdin, stdout) => {
            use std::io::{BufRead, Write};
            let began = Instant::now();
            let mut line = String::new();
            stdout.read_line(&mut line)?;
            let ports: Vec<u16> = line
                .split_whitespace()
                .map(str::parse)
                .collect::<Result<_, _>>()?;
            anyhow::ensure!(ports.len() == calls * 2, "forwarder sockets");
            let mut destinations = Vec::with_capacity(calls * 2);
            for call in 0..calls {
                // Socket 2c takes the caller's packets to the callee, 2c+1 the reverse.
                destinations.push(SocketAddrV4::new(phone_ip, phones[call][1]).to_string());
                destinations.push(SocketAddrV4::new(phone_ip, phones[call][0]).to_string());
                out.push([relay(ports[2 * call]), relay(ports[2 * call + 1])]);
            }
            writeln!(stdin, "{}", destinations.join(" "))?;
            stdin.flush()?;
            line.clear();
            stdout.read_line(&mut line)?;
            anyhow::ensure!(line.trim() == "ready", "forwarder said {line:?}");
            let each = began.elapsed() / calls.max(1) as u32;
            setup = vec![each; calls];
        }
    }
    Ok((out, setup))
}

/// Sets up one call through our gRPC contract: both legs allocated and pointed at the phone
/// ports. Returns the relay address each side sends to (caller side first).
async fn grpc_call(
    client: &mut MediaProxyClient<tonic::transport::Channel>,
    call_id: &str,
    phone_ip: Ipv4Addr,
    phones: [u16; 2],
) -> anyhow::Result<[SocketAddrV4; 2]> {
    let mut to = [SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0); 2];
    for (side, leg) in [pb::Leg::Caller, pb::Leg::Callee].into_iter().enumerate() {
        let allocation = client
            .allocate(pb::AllocateRequest {
                call_id: call_id.into(),
                leg: leg as i32,
                owner: "bench".into(),
                media: vec![pb::MediaKind::Audio as i32],
                lease_timeout_ms: 0,
                reflect: false,
            })
            .await?
            .into_inner();
        to[side] = SocketAddrV4::new(
            allocation.advertised_address.parse()?,
            allocation.media[0].rtp_port as u16,
        );
        client
            .update(pb::UpdateRequest {
                call_id: call_id.into(),
                leg: leg as i32,
                media: vec![pb::RemoteMedia {
                    index: 0,
                    address: phone_ip.to_string(),
                    rtp_port: u32::from(phones[side]),
                    rtcp_port: 0,
                    codecs: vec![pb::Codec {
                        payload_type: 0,
                        encoding: "PCMU".into(),
                        clock_rate: 8000,
                        channels: 1,
                    }],
                    direction: pb::Direction::Sendrecv as i32,
                }],
                ..Default::default()
            })
            .await?;
    }
    Ok(to)
}

/// Sets up one call through rtpengine's ng protocol (offer, answer). Returns the relay
/// address each side sends to (caller side first).
fn ng_call(
    client: &mut ng::NgClient,
    call_id: &str,
    network: &netns::Network,
    phones: [u16; 2],
) -> anyhow::Result<[SocketAddrV4; 2]> {
    let offered = client.request(&[
        ("command", "offer"),
        ("call-id", call_id),
        ("from-tag", "caller"),
        ("sdp", &ng::sdp(network.phone_ip(), phones[0])),
    ])?;
    let answered = client.request(&[
        ("command", "answer"),
        ("call-id", call_id),
        ("from-tag", "caller"),
        ("to-tag", "callee"),
        ("sdp", &ng::sdp(network.phone_ip(), phones[1])),
    ])?;
    let port = |reply: &ng::Bencode| {
        reply
            .get_text("sdp")
            .and_then(|sdp| ng::audio_port(&sdp))
            .context("rtpengine's SDP has no audio port")
    };
    // The offer's SDP goes to the callee (it sends there); the answer's to the caller.
    let relay = |port: u16| SocketAddrV4::new(network.relay_ip(), port);
    Ok([relay(port(&answered)?), relay(port(&offered)?)])
}

async fn run_point(
    args: &Args,
    target: Target,
    binary: &std::path::Path,
    calls: usize,
    clock_ticks: f64,
) -> anyhow::Result<Row> {
    let (proxy, mut control) = start(args, target, binary, calls).await?;
    let pid = proxy.0.id().to_string();
    // taskset execs the relay, so the pid is the relay's own.
    std::thread::sleep(Duration::from_millis(200));
    let rss_before = rss_kib(&pid)?;

    let (phones, phone_ports) = args
        .network
        .in_generator(|| generator::phones(args.shape, args.network.phone_ip(), calls))?;
    let mut streams: Vec<Stream> = Vec::with_capacity(calls * 2);
    let start = Instant::now();
    let interval = Duration::from_secs(1) / args.pps;
    let total_streams = calls * 2;
    let bits = (args.pps as usize * (args.seconds as usize + 3)) / 64 + 1;
    let (relays, mut setup) = allocate(&mut control, &args.network, &phone_ports).await?;
    for (call, relay) in relays.into_iter().enumerate() {
        for (side, to) in relay.into_iter().enumerate() {
            let index = streams.len();
            let offset = interval * index as u32 / total_streams as u32;
            streams.push(Stream {
                socket: generator::socket_of(args.shape, call, side),
                to,
                offset,
                due: start,
                sequence: 0,
                received: vec![0; bits],
            });
        }
    }
    setup.sort();
    let setup_p99 = nearest_rank(&setup, 0.99);
    if target == Target::OursRecording {
        record_all(&mut control, calls).await?;
    }
    std::thread::sleep(Duration::from_millis(300));
    let rss_idle = rss_kib(&pid)?;
    // What the calls cost with no traffic at all: timers, statistics, keep-alive work.
    let idle_from = (Instant::now(), cpu_seconds(&pid, clock_ticks)?);
    std::thread::sleep(IDLE_SPAN);
    let idle_cpu_percent = 100.0 * (cpu_seconds(&pid, clock_ticks)? - idle_from.1)
        / idle_from.0.elapsed().as_secs_f64();

    let churn = if args.churn > 0 {
        let endpoint = match &control {
            Control::Grpc(_, url) => churn::Endpoint::Grpc(url.clone()),
            Control::Ng(_, address) => churn::Endpoint::Ng(address.clone()),
            Control::Bare(..) => bail!("--churn needs a relay with a control protocol"),
        };
        Some(churn::Churn::start(endpoint, args.churn, phone_ports[0]))
    } else {
        None
    };
    let traffic = generate(args, &phones, &mut streams, &pid, clock_ticks);
    let churn = churn.map(churn::Churn::finish).transpose()?;
    let traffic = traffic?;
    let recorded = if target == Target::OursRecording {
        Some(recording_totals(&mut control, calls, &args.recordings_dir()).await?)
    } else {
        None
    };
    drop(control);
    drop(proxy);
    if target == Target::OursRecording {
        let _ = std::fs::remove_dir_all(args.recordings_dir());
    }

    let measured = args.seconds as f64;
    let offered = traffic.sent_in_window as f64 / measured;
    let mut latencies = traffic.latencies_us;
    latencies.sort_unstable();
    let mut lags = traffic.lag_us;
    lags.sort_unstable();
    Ok(Row {
        offered_pps: offered,
        relayed_pps: traffic.received_in_window as f64 / measured,
        loss_percent: if traffic.sent_in_window == 0 {
            0.0
        } else {
            100.0
                * (traffic
                    .sent_in_window
                    .saturating_sub(traffic.received_in_window)) as f64
                / traffic.sent_in_window as f64
        },
        duplicates: traffic.duplicates,
        p50_us: percentile(&latencies, 0.50),
        p99_us: percentile(&latencies, 0.99),
        p999_us: percentile(&latencies, 0.999),
        proxy_cpu_percent: 100.0 * traffic.proxy_cpu / traffic.cpu_span,
        packets_per_cpu_second: if traffic.proxy_cpu > 0.0 {
            traffic.received_in_window as f64 / traffic.proxy_cpu
        } else {
            f64::INFINITY
        },
        rss_kib_per_call: (rss_idle - rss_before) / calls as f64,
        idle_cpu_percent,
        setup_p99_ms: setup_p99.as_secs_f64() * 1000.0,
        lag99_us: percentile(&lags, 0.99),
        intended_pps: (calls * 2) as f64 * f64::from(args.pps),
        recorded,
        threads: matches!(
            target,
            Target::Ours | Target::OursRecording | Target::Baseline
        )
        .then(|| {
            (
                100.0 * traffic.relay_threads_cpu / traffic.cpu_span,
                100.0 * traffic.recorder_cpu / traffic.cpu_span,
            )
        }),
        churn: churn.map(|figures| {
            let mut setups = figures.setups;
            setups.sort();
            let p99 = nearest_rank(&setups, 0.99);
            ChurnRow {
                calls: setups.len(),
                setup_p99_ms: p99.as_secs_f64() * 1000.0,
                failures: figures.failures,
                first_error: figures.first_error,
            }
        }),
    })
}

/// What `--churn` did during one point.
struct ChurnRow {
    /// Calls set up.
    calls: usize,
    setup_p99_ms: f64,
    /// Setups and releases that failed.
    failures: u64,
    first_error: Option<String>,
}
