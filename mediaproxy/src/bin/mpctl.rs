//! `mpctl`: the operator's command line for a media proxy, over the same gRPC contract
//! signaling uses (`mediaproxy.v1`). See `mpctl --help` and docs/operations.md.
#![forbid(unsafe_code)]

use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

use clap::{Parser, Subcommand};
use mediaproxy::client::{Connection, run_tool, status_text};
use proto::domain::{Leg, MediaKind};
use proto::v1 as pb;
use proto::v1::media_proxy_client::MediaProxyClient;
use tonic::transport::Channel;

#[derive(Debug, Parser)]
#[command(
    name = "mpctl",
    version,
    about = "Inspect and steer a running media proxy"
)]
struct Cli {
    #[command(flatten)]
    connection: Connection,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Node id, sessions, free ports, packet rate, draining flag.
    Status,
    /// gRPC health of the proxy (exit 0 when SERVING): the container health check and the
    /// Kubernetes probes. The service mediaproxy.v1.MediaProxy stops serving while the node
    /// drains; the empty service name is the process as a whole.
    Health {
        #[arg(long, default_value = "mediaproxy.v1.MediaProxy")]
        service: String,
        /// Give up after this many seconds.
        #[arg(long, default_value_t = 3)]
        timeout: u64,
    },
    /// Every live session: one line per leg and media line with ports, SDP and latched
    /// addresses and live counters.
    Sessions {
        /// Only the sessions of this owner (a signaling instance).
        #[arg(long)]
        owner: Option<String>,
    },
    /// Everything the proxy knows about one call.
    Show { call_id: String },
    /// Stop taking new calls (existing calls go on).
    Drain,
    /// Take new calls again.
    Undrain,
    /// Log every packet of one call in the proxy's log (on), or stop (off).
    Debug {
        call_id: String,
        #[arg(value_parser = ["on", "off"])]
        state: String,
    },
    /// Follow media events (first packets, source changes, timeouts, one-way media, releases)
    /// as they happen.
    Watch {
        /// Only this call's events.
        #[arg(long)]
        call: Option<String>,
    },
    /// Start, pause or stop recording one call, or show where its recording stands.
    Record {
        #[command(subcommand)]
        action: Record,
    },
}

#[derive(Debug, Subcommand)]
enum Record {
    /// Start recording (or resume a paused recording).
    Start {
        call_id: String,
        /// Also write a pcap of the call's RTP and RTCP, both legs.
        #[arg(long)]
        pcap: bool,
        /// File name stem instead of the call id.
        #[arg(long)]
        stem: Option<String>,
    },
    /// Pause: the paused time stays in the files as silence.
    Pause { call_id: String },
    /// Stop and close the files (a later start makes new ones).
    Stop { call_id: String },
    /// Where the recording stands (state, files, packets, length).
    Show { call_id: String },
}

/// Asks the gRPC health service about `service`; Ok when it is SERVING.
async fn health(connection: &Connection, service: &str) -> Result<(), String> {
    use tonic_health::pb::health_check_response::ServingStatus;
    let channel = connection.channel().await?;
    let reply = tonic_health::pb::health_client::HealthClient::new(channel)
        .check(tonic_health::pb::HealthCheckRequest {
            service: service.to_owned(),
        })
        .await
        .map_err(|s| status_text(&s))?
        .into_inner();
    let name = if service.is_empty() {
        "(process)"
    } else {
        service
    };
    match ServingStatus::try_from(reply.status) {
        Ok(ServingStatus::Serving) => {
            println!("{name}: SERVING");
            Ok(())
        }
        Ok(other) => Err(format!("{name}: {}", other.as_str_name())),
        Err(_) => Err(format!("{name}: unknown status {}", reply.status)),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    run_tool("mpctl", run(cli))
}

async fn run(cli: Cli) -> Result<(), String> {
    if let Command::Health { service, timeout } = &cli.command {
        let timeout = std::time::Duration::from_secs((*timeout).max(1));
        return tokio::time::timeout(timeout, health(&cli.connection, service))
            .await
            .unwrap_or_else(|_| Err(format!("no answer within {}s", timeout.as_secs())));
    }
    let mut client = cli.connection.connect().await?;
    let status = |s: tonic::Status| status_text(&s);
    match cli.command {
        Command::Health { .. } => unreachable!("answered before connecting"),
        Command::Status => {
            let reply = client
                .status(pb::StatusRequest {})
                .await
                .map_err(status)?
                .into_inner();
            print_status(&reply);
        }
        Command::Drain | Command::Undrain => {
            let drain = matches!(cli.command, Command::Drain);
            let reply = client
                .drain(pb::DrainRequest { drain })
                .await
                .map_err(status)?
                .into_inner();
            print_status(&reply);
        }
        Command::Sessions { owner } => {
            let reply = client
                .list_sessions(pb::ListSessionsRequest {
                    owner: owner.unwrap_or_default(),
                })
                .await
                .map_err(status)?
                .into_inner();
            print!("{}", sessions_table(&reply.sessions, now_ms()));
        }
        Command::Show { call_id } => {
            let reply = client
                .query_stats(pb::QueryStatsRequest { call_id })
                .await
                .map_err(status)?
                .into_inner();
            print!("{}", show(&reply, now_ms()));
        }
        Command::Debug { call_id, state } => {
            let reply = client
                .set_debug(pb::SetDebugRequest {
                    call_id,
                    enabled: state == "on",
                })
                .await
                .map_err(status)?
                .into_inner();
            println!(
                "per-packet logging {} for {} (see the media proxy's log)",
                if reply.enabled { "on" } else { "off" },
                reply.call_id
            );
        }
        Command::Watch { call } => watch(&mut client, call.unwrap_or_default()).await?,
        Command::Record { action } => {
            let control = |call_id: String| pb::RecordingControlRequest { call_id };
            let state = match action {
                Record::Start {
                    call_id,
                    pcap,
                    stem,
                } => client
                    .start_recording(pb::StartRecordingRequest {
                        call_id,
                        file_stem: stem.unwrap_or_default(),
                        pcap,
                    })
                    .await
                    .map_err(status)?
                    .into_inner(),
                Record::Pause { call_id } => client
                    .pause_recording(control(call_id))
                    .await
                    .map_err(status)?
                    .into_inner(),
                Record::Stop { call_id } => client
                    .stop_recording(control(call_id))
                    .await
                    .map_err(status)?
                    .into_inner(),
                Record::Show { call_id } => client
                    .query_stats(pb::QueryStatsRequest { call_id })
                    .await
                    .map_err(status)?
                    .into_inner()
                    .recording
                    .unwrap_or_default(),
            };
            print!("{}", recording_text(&state));
        }
    }
    Ok(())
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn print_status(s: &pb::StatusResponse) {
    println!("node        {}", s.node_id);
    println!("instance    {}", s.instance_id);
    println!("version     {}", s.version);
    println!("advertised  {}", s.advertised_address);
    println!("uptime      {} s", s.uptime_seconds);
    println!("sessions    {}", s.sessions);
    println!("owners      {}", s.owners);
    println!("ports       {} free of {}", s.ports_free, s.ports_total);
    println!("packets/s   {:.0}", s.packets_per_second);
    println!("draining    {}", if s.draining { "yes" } else { "no" });
}

/// A recording's state, one `name value` line each.
fn recording_text(r: &pb::RecordingState) -> String {
    use pb::recording_state::State;
    let state = match State::try_from(r.state).unwrap_or(State::Unspecified) {
        State::Unspecified | State::Off => "off",
        State::Recording => "recording",
        State::Paused => "paused",
        State::Finished => "finished",
    };
    let mut text = format!("call        {}\nrecording   {state}\n", r.call_id);
    if !r.path.is_empty() {
        text += &format!("path        {}\n", r.path);
    }
    for file in &r.files {
        text += &format!("file        {file}\n");
    }
    if r.sample_rate != 0 {
        text += &format!(
            "audio       {:.1} s at {} Hz, {} packets\n",
            r.duration_ms as f64 / 1000.0,
            r.sample_rate,
            r.packets
        );
    }
    if r.dropped_packets != 0 {
        text += &format!(
            "dropped     {} packets (the recorder fell behind)\n",
            r.dropped_packets
        );
    }
    if !r.error.is_empty() {
        text += &format!("error       {}\n", r.error);
    }
    text
}

fn leg_name(leg: i32) -> &'static str {
    Leg::from_wire(leg).map_or("?", Leg::as_str)
}

fn kind_name(kind: i32) -> &'static str {
    MediaKind::from_wire(kind, "kind").map_or("?", MediaKind::as_str)
}

fn or_dash(text: &str) -> &str {
    if text.is_empty() { "-" } else { text }
}

/// Seconds since a unix-ms time, or "-" when it never happened.
fn ago(now: u64, at: u64) -> String {
    if at == 0 {
        "-".to_owned()
    } else {
        format!("{:.1}s", now.saturating_sub(at) as f64 / 1000.0)
    }
}

/// The `sessions` table: one line per leg and media line.
fn sessions_table(sessions: &[pb::CallStats], now: u64) -> String {
    let mut out = format!(
        "{:<36} {:<6} {:<7} {:>11} {:<22} {:<22} {:>8} {:>8} {:>6} {:>8}\n",
        "CALL-ID", "LEG", "MEDIA", "LOCAL", "SDP", "LATCHED", "IN", "OUT", "LOST", "LAST-IN"
    );
    for call in sessions {
        for leg in &call.legs {
            for m in &leg.media {
                let received = m.rtp_received.unwrap_or_default();
                let sent = m.rtp_sent.unwrap_or_default();
                let quality = m.quality.unwrap_or_default();
                out.push_str(&format!(
                    "{:<36} {:<6} {:<7} {:>11} {:<22} {:<22} {:>8} {:>8} {:>6} {:>8}\n",
                    call.call_id,
                    leg_name(leg.leg),
                    format!("{}:{}", m.index, kind_name(m.kind)),
                    format!("{}/{}", m.local_rtp_port, m.local_rtcp_port),
                    or_dash(&m.sdp_rtp_address),
                    or_dash(&m.latched_rtp_source),
                    received.packets,
                    sent.packets,
                    quality.lost,
                    ago(now, received.last_unix_ms),
                ));
            }
        }
    }
    out.push_str(&format!("{} sessions\n", sessions.len()));
    out
}

/// The `show` report of one call.
fn show(call: &pb::CallStats, now: u64) -> String {
    let mut out = format!(
        "call {}\n  owner {}  node {}  age {}\n",
        call.call_id,
        call.owner,
        call.node_id,
        ago(now, call.created_unix_ms)
    );
    for leg in &call.legs {
        for m in &leg.media {
            let counters = |c: Option<pb::Counters>| {
                let c = c.unwrap_or_default();
                format!(
                    "{} pkts {} bytes (last {})",
                    c.packets,
                    c.bytes,
                    ago(now, c.last_unix_ms)
                )
            };
            let q = m.quality.unwrap_or_default();
            let d = m.drops.unwrap_or_default();
            out.push_str(&format!(
                "  {} media {} ({}) local {}/{}\n    sdp      rtp {}  rtcp {}\n    latched  rtp {}  rtcp {}  (source changes {})\n    rtp in   {}\n    rtp out  {}\n    rtcp in  {}\n    rtcp out {}\n    quality  ssrc {:08x} expected {} lost {} dup {} reordered {} jitter {:.1} ms (max {:.1}) pt {}\n    dropped  unknown-source {} before-latching {} too-short {} not-rtp {} no-destination {} send-error {}\n",
                leg_name(leg.leg),
                m.index,
                kind_name(m.kind),
                m.local_rtp_port,
                m.local_rtcp_port,
                or_dash(&m.sdp_rtp_address),
                or_dash(&m.sdp_rtcp_address),
                or_dash(&m.latched_rtp_source),
                or_dash(&m.latched_rtcp_source),
                m.source_changes,
                counters(m.rtp_received),
                counters(m.rtp_sent),
                counters(m.rtcp_received),
                counters(m.rtcp_sent),
                q.ssrc,
                q.expected,
                q.lost,
                q.duplicates,
                q.out_of_order,
                q.jitter_ms,
                q.max_jitter_ms,
                q.last_payload_type,
                d.unknown_source,
                d.before_latching,
                d.too_short,
                d.not_rtp,
                d.no_destination,
                d.send_error,
            ));
        }
    }
    out
}

async fn watch(client: &mut MediaProxyClient<Channel>, call_id: String) -> Result<(), String> {
    let mut stream = client
        .watch_events(pb::WatchEventsRequest {
            owner: String::new(),
            call_id,
        })
        .await
        .map_err(|s| format!("{:?}: {}", s.code(), s.message()))?
        .into_inner();
    while let Some(event) = stream
        .message()
        .await
        .map_err(|s| format!("{:?}: {}", s.code(), s.message()))?
    {
        let what = match &event.kind {
            Some(pb::event::Kind::FirstPacket(f)) => format!(
                "first {} packet from {} (SDP said {}{})",
                if f.rtcp { "RTCP" } else { "RTP" },
                f.source,
                or_dash(&f.sdp_address),
                if f.matches_sdp { "" } else { ": differs" }
            ),
            Some(pb::event::Kind::SourceChanged(c)) => {
                format!("source changed from {} to {}", c.from, c.to)
            }
            Some(pb::event::Kind::MediaTimeout(t)) => {
                format!("media timeout after {} ms without packets", t.idle_ms)
            }
            Some(pb::event::Kind::OneWayMedia(o)) => {
                format!("one-way media: silent for {} ms", o.silent_ms)
            }
            Some(pb::event::Kind::RecordingFinished(r)) => {
                format!("recording finished: {} ({} packets)", r.path, r.packets)
            }
            Some(pb::event::Kind::SessionReleased(r)) => format!("released ({})", r.reason),
            None => "unknown event".to_owned(),
        };
        println!(
            "{} {} {} media {}: {what}",
            event.unix_ms,
            event.call_id,
            leg_name(event.leg),
            event.media_index
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call() -> pb::CallStats {
        pb::CallStats {
            call_id: "abc@host".into(),
            owner: "sig-1".into(),
            node_id: "mp-1".into(),
            created_unix_ms: 1_000,
            legs: vec![pb::LegStats {
                leg: pb::Leg::Caller as i32,
                media: vec![pb::MediaStats {
                    index: 0,
                    kind: pb::MediaKind::Audio as i32,
                    local_rtp_port: 30000,
                    local_rtcp_port: 30001,
                    sdp_rtp_address: "10.0.0.7:17616".into(),
                    latched_rtp_source: "198.51.100.9:4000".into(),
                    rtp_received: Some(pb::Counters {
                        packets: 250,
                        bytes: 43_000,
                        first_unix_ms: 1_500,
                        last_unix_ms: 6_000,
                    }),
                    ..pb::MediaStats::default()
                }],
            }],
            ..pb::CallStats::default()
        }
    }

    #[test]
    fn sessions_table_has_one_line_per_leg_and_media() {
        let table = sessions_table(&[call()], 7_000);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 3, "{table}");
        assert!(lines[0].starts_with("CALL-ID"));
        for expected in [
            "abc@host",
            "caller",
            "0:audio",
            "30000/30001",
            "10.0.0.7:17616",
            "198.51.100.9:4000",
            "250",
            "1.0s",
        ] {
            assert!(lines[1].contains(expected), "{expected} in {}", lines[1]);
        }
        assert_eq!(lines[2], "1 sessions");
    }

    #[test]
    fn a_recordings_state_names_its_files_length_and_trouble() {
        let text = recording_text(&pb::RecordingState {
            call_id: "abc@host".into(),
            state: pb::recording_state::State::Finished as i32,
            path: "/r/2026/12/02/abc_host.wav".into(),
            packets: 500,
            error: "stereo WAV write failed: No space left on device".into(),
            files: vec![
                "/r/2026/12/02/abc_host.wav".into(),
                "/r/2026/12/02/abc_host.json".into(),
            ],
            duration_ms: 5_020,
            sample_rate: 8000,
            dropped_packets: 3,
        });
        for line in [
            "recording   finished",
            "path        /r/2026/12/02/abc_host.wav",
            "file        /r/2026/12/02/abc_host.json",
            "audio       5.0 s at 8000 Hz, 500 packets",
            "dropped     3 packets",
            "error       stereo WAV write failed: No space left on device",
        ] {
            assert!(text.contains(line), "{line:?} in {text}");
        }
        let off = recording_text(&pb::RecordingState::default());
        assert_eq!(off, "call        \nrecording   off\n");
    }

    #[test]
    fn show_names_addresses_counters_and_drops() {
        let text = show(&call(), 7_000);
        assert!(text.contains("call abc@host"));
        assert!(text.contains("owner sig-1  node mp-1  age 6.0s"));
        assert!(text.contains("sdp      rtp 10.0.0.7:17616  rtcp -"));
        assert!(text.contains("latched  rtp 198.51.100.9:4000"));
        assert!(text.contains("rtp in   250 pkts 43000 bytes (last 1.0s)"));
        assert!(text.contains("dropped  unknown-source 0"));
    }
}
