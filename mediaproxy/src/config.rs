//! Configuration: command-line flags, `MEDIAPROXY_*` environment variables and a TOML file
//! (`--config FILE`), in that order of precedence. Every option has the same name in all
//! three (`--media-ip`, `MEDIAPROXY_MEDIA_IP`, `media-ip = "..."`).
//!
//! [`Options`] is the raw, all-optional layer; [`Config::resolve`] merges the layers, fills
//! defaults and checks values, failing with a [`ConfigError`] that names the option.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Args, Parser};
use serde::Deserialize;

pub use crate::ports::PortRange;
use crate::session::Timing;
pub use service_kit::config::{ConfigError, HumanDuration};
use service_kit::config::{host_name, invalid, modified, read_pem, split_table};
pub use service_kit::logging::LogFormat;

impl<'de> Deserialize<'de> for PortRange {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// Options of the media relay itself; `signaling` reuses them for its embedded proxy.
#[derive(Debug, Clone, Default, Args, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct MediaOptions {
    /// Address the relay sockets bind to [default: 127.0.0.1].
    #[arg(long, env = "MEDIAPROXY_MEDIA_IP", value_name = "IP")]
    pub media_ip: Option<IpAddr>,
    /// Address put in SDP when it differs from --media-ip (NAT, cloud) [default: --media-ip].
    #[arg(long, env = "MEDIAPROXY_ADVERTISE_IP", value_name = "IP")]
    pub advertise_ip: Option<IpAddr>,
    /// Declare that --advertise-ip is not on a local interface on purpose (1:1 NAT, cloud).
    #[arg(long, env = "MEDIAPROXY_ADVERTISE_EXTERNAL", value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    pub advertise_external: Option<bool>,
    /// RTP port range; RTP on even ports, RTCP on RTP + 1 [default: 30000-39999].
    #[arg(long, env = "MEDIAPROXY_PORTS", value_name = "MIN-MAX")]
    pub ports: Option<PortRange>,
    /// Directory recordings are written to [default: recordings].
    #[arg(long, env = "MEDIAPROXY_RECORDINGS", value_name = "DIR")]
    pub recordings: Option<PathBuf>,
    /// Relay worker threads [default: one per CPU].
    #[arg(long, env = "MEDIAPROXY_WORKERS", value_name = "N")]
    pub workers: Option<usize>,
    /// Learning window for source latching after the first packet or an update [default: 3s].
    #[arg(long, env = "MEDIAPROXY_LATCH_WINDOW", value_name = "DURATION")]
    pub latch_window: Option<HumanDuration>,
    /// Release a call after this long without a packet from either leg [default: 60s].
    #[arg(long, env = "MEDIAPROXY_MEDIA_TIMEOUT", value_name = "DURATION")]
    pub media_timeout: Option<HumanDuration>,
    /// The media timeout while a leg is on hold or inactive [default: 1h].
    #[arg(long, env = "MEDIAPROXY_HOLD_TIMEOUT", value_name = "DURATION")]
    pub hold_timeout: Option<HumanDuration>,
    /// Report one-way media when one leg has been silent this long while the other sent
    /// [default: 10s].
    #[arg(long, env = "MEDIAPROXY_ONE_WAY_AFTER", value_name = "DURATION")]
    pub one_way_after: Option<HumanDuration>,
    /// Release an owner's calls when it has not renewed its lease for this long [default: 30s].
    #[arg(long, env = "MEDIAPROXY_LEASE_TIMEOUT", value_name = "DURATION")]
    pub lease_timeout: Option<HumanDuration>,
    /// Time a released port pair waits before reuse [default: 2s].
    #[arg(long, env = "MEDIAPROXY_PORT_QUARANTINE", value_name = "DURATION")]
    pub port_quarantine: Option<HumanDuration>,
    /// Most calls one owner (a signaling instance) may hold on this node; its next new call
    /// is refused RESOURCE_EXHAUSTED, so signaling places it on another node. 0: no quota
    /// [default: 0].
    #[arg(long, env = "MEDIAPROXY_MAX_SESSIONS_PER_OWNER", value_name = "N")]
    pub max_sessions_per_owner: Option<usize>,
    /// gRPC requests per second one client (its certificate's name under mutual TLS, else
    /// its IP address) may make, with a second's worth at once; past it requests are refused
    /// RESOURCE_EXHAUSTED. 0: no limit [default: 20000].
    #[arg(long, env = "MEDIAPROXY_GRPC_RATE", value_name = "N")]
    pub grpc_rate: Option<u32>,
    /// Allocate requests per second one client may make (a call takes two); past it they are
    /// refused RESOURCE_EXHAUSTED and signaling tries another node. 0: no limit
    /// [default: 4000].
    #[arg(long, env = "MEDIAPROXY_ALLOCATE_RATE", value_name = "N")]
    pub allocate_rate: Option<u32>,
    /// DSCP value marked on relayed packets (IPv4 TOS / IPv6 traffic class); 46 = EF
    /// (expedited forwarding, RFC 3246), 0 = unmarked [default: 46].
    #[arg(long, env = "MEDIAPROXY_DSCP", value_name = "0-63")]
    pub dscp: Option<u8>,
    /// Receive and send buffer size of each relay socket in bytes; 0 keeps the kernel's
    /// default (net.core.rmem_default) [default: 0].
    #[arg(long, env = "MEDIAPROXY_SOCKET_BUFFER", value_name = "BYTES")]
    pub socket_buffer: Option<usize>,
    /// Nice value added to the control threads (gRPC, metrics, and SIP in signaling with an
    /// embedded proxy) so that a relay worker sharing a core with them runs first when packets
    /// arrive; relay workers keep the process's priority. 0 = same priority [default: 10].
    #[arg(long, env = "MEDIAPROXY_CONTROL_NICE", value_name = "0-19")]
    pub control_nice: Option<u8>,
}

/// Options of the `mediaproxy` service.
#[derive(Debug, Clone, Default, Args, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Options {
    /// gRPC listen address (control, health, reflection) [default: 127.0.0.1:50051].
    #[arg(long, env = "MEDIAPROXY_GRPC", value_name = "ADDR")]
    pub grpc: Option<SocketAddr>,
    /// HTTP listen address for /metrics and /healthz [default: 127.0.0.1:9466].
    #[arg(long, env = "MEDIAPROXY_METRICS", value_name = "ADDR")]
    pub metrics: Option<SocketAddr>,
    /// Name reported to signaling and in metrics labels [default: the host name].
    #[arg(long, env = "MEDIAPROXY_NODE_ID", value_name = "NAME")]
    pub node_id: Option<String>,
    /// On SIGTERM, keep relaying existing calls this long before exiting [default: 30s].
    #[arg(long, env = "MEDIAPROXY_SHUTDOWN_GRACE", value_name = "DURATION")]
    pub shutdown_grace: Option<HumanDuration>,
    /// Log filter, as RUST_LOG [default: info].
    #[arg(long, env = "MEDIAPROXY_LOG", value_name = "FILTER")]
    pub log: Option<String>,
    /// Log lines as `text` or `json` (one JSON object per line, for log collectors)
    /// [default: text].
    #[arg(long, env = "MEDIAPROXY_LOG_FORMAT", value_name = "FORMAT")]
    pub log_format: Option<LogFormat>,
    /// PEM certificate chain of the gRPC server; with --tls-key and --tls-client-ca the gRPC
    /// link is mutually authenticated TLS [default: plaintext].
    #[arg(long, env = "MEDIAPROXY_TLS_CERT", value_name = "FILE")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, env = "MEDIAPROXY_TLS_KEY", value_name = "FILE")]
    pub tls_key: Option<PathBuf>,
    /// Serve gRPC in plaintext on an address that is not loopback. Without TLS and without
    /// this, such a --grpc is refused: anyone who reaches it could allocate and release calls.
    #[arg(long, env = "MEDIAPROXY_GRPC_PLAINTEXT", value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    pub grpc_plaintext: Option<bool>,
    /// PEM certificates of the CAs whose client certificates are accepted; a client without
    /// one is refused. The client certificate's common name qualifies its owner name. The
    /// three files are watched: a change is loaded within about 2 s, without dropping calls.
    #[arg(long, env = "MEDIAPROXY_TLS_CLIENT_CA", value_name = "FILE")]
    pub tls_client_ca: Option<PathBuf>,
    /// Common name of an operator's client certificate (repeatable): that client sees and
    /// may act on every owner's calls (mpctl sessions, show, watch, debug), where any other
    /// sees only its own.
    #[arg(
        long,
        env = "MEDIAPROXY_TLS_OPERATOR",
        value_name = "CN",
        value_delimiter = ','
    )]
    #[serde(default)]
    pub tls_operator: Vec<String>,
    /// Listen for rtpengine's ng control protocol (UDP) on this address, as Kamailio's and
    /// OpenSIPS's rtpengine modules speak it (repeatable; off by default; docs/ng.md).
    #[arg(
        long = "listen-ng",
        env = "MEDIAPROXY_LISTEN_NG",
        value_name = "ADDR",
        value_delimiter = ','
    )]
    #[serde(default)]
    pub listen_ng: Vec<SocketAddr>,
    /// Sources allowed to send ng requests (repeatable); ng has no authentication, so a
    /// --listen-ng on an address that is not loopback needs this list. Loopback sources are
    /// always allowed.
    #[arg(
        long = "ng-allow",
        env = "MEDIAPROXY_NG_ALLOW",
        value_name = "CIDR",
        value_delimiter = ','
    )]
    #[serde(default)]
    pub ng_allow: Vec<service_kit::config::Cidr>,
    #[command(flatten)]
    #[serde(skip)]
    pub media: MediaOptions,
}

/// The `mediaproxy` command line.
#[derive(Debug, Parser)]
#[command(
    name = "mediaproxy",
    version,
    about = "RTP relay driven over gRPC (mediaproxy.v1)"
)]
pub struct Cli {
    /// TOML file with any of the options below (flags and environment win over it).
    #[arg(long, env = "MEDIAPROXY_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    #[command(flatten)]
    pub options: Options,
}

/// The checked media relay settings.
#[derive(Debug, Clone, PartialEq)]
pub struct MediaConfig {
    pub media_ip: IpAddr,
    pub advertise_ip: IpAddr,
    pub advertise_external: bool,
    pub ports: PortRange,
    pub recordings: PathBuf,
    pub workers: usize,
    pub(crate) timing: Timing,
    pub lease_timeout: Duration,
    pub port_quarantine: Duration,
    /// Calls one owner may hold at once (None: no quota).
    pub max_sessions_per_owner: Option<usize>,
    /// Requests per second of one gRPC client.
    pub(crate) client_rates: crate::ratelimit::ClientRates,
    /// DSCP of relayed packets (0 = unmarked).
    pub dscp: u8,
    /// Socket buffer size in bytes (0 = kernel default).
    pub socket_buffer: usize,
    /// Nice value added to the control threads (0 = none).
    pub control_nice: u8,
}

/// The checked configuration of the `mediaproxy` service.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub grpc: SocketAddr,
    pub metrics: SocketAddr,
    pub node_id: String,
    pub shutdown_grace: Duration,
    pub log: String,
    pub log_format: LogFormat,
    pub media: MediaConfig,
    /// Mutual TLS on the gRPC link; None is plaintext.
    pub tls: Option<TlsFiles>,
    /// rtpengine ng listeners (UDP).
    pub listen_ng: Vec<SocketAddr>,
    /// Sources besides loopback that may send ng requests.
    pub ng_allow: Vec<service_kit::config::Cidr>,
}

/// The PEM contents of the gRPC server's mutual TLS, read and checked at start, the files
/// they came from (re-read when they change), and the operators' names.
#[derive(Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: Vec<u8>,
    pub key: Vec<u8>,
    pub client_ca: Vec<u8>,
    /// `--tls-cert`, `--tls-key`, `--tls-client-ca`.
    pub paths: [PathBuf; 3],
    /// `--tls-operator`: client certificate common names that see every owner's calls.
    pub operators: Vec<String>,
}

impl TlsFiles {
    /// Reads the three files, checking each holds the PEM it must.
    pub fn read(cert: &Path, key: &Path, client_ca: &Path) -> Result<Self, ConfigError> {
        Ok(Self {
            cert: read_pem("tls-cert", cert, "CERTIFICATE")?,
            key: read_pem("tls-key", key, "PRIVATE KEY")?,
            client_ca: read_pem("tls-client-ca", client_ca, "CERTIFICATE")?,
            paths: [cert.to_owned(), key.to_owned(), client_ca.to_owned()],
            operators: Vec::new(),
        })
    }

    /// The files read again (the operators stay).
    pub fn reread(&self) -> Result<Self, ConfigError> {
        let [cert, key, ca] = &self.paths;
        Ok(Self {
            operators: self.operators.clone(),
            ..Self::read(cert, key, ca)?
        })
    }

    /// When each file last changed (None where it cannot be read).
    pub fn modified(&self) -> Vec<Option<std::time::SystemTime>> {
        modified(&self.paths)
    }
}

impl std::fmt::Debug for TlsFiles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TlsFiles { .. }")
    }
}

/// Reads a TOML options file.
pub fn read_file(path: &Path) -> Result<Options, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError::File {
        path: path.to_owned(),
        message: e.to_string(),
    })?;
    Options::from_toml(&text).map_err(|message| ConfigError::File {
        path: path.to_owned(),
        message,
    })
}

impl Options {
    /// Keys of [`Options`] itself; every other key belongs to [`MediaOptions`].
    const KEYS: [&str; 13] = [
        "listen-ng",
        "ng-allow",
        "grpc",
        "metrics",
        "node-id",
        "shutdown-grace",
        "log",
        "log-format",
        "tls-cert",
        "tls-key",
        "tls-client-ca",
        "tls-operator",
        "grpc-plaintext",
    ];

    /// Parses the TOML form; an unknown key is an error that names it.
    pub fn from_toml(text: &str) -> Result<Self, String> {
        let table: toml::Table =
            toml::from_str(text).map_err(|e| e.to_string().trim_end().to_owned())?;
        let (own, rest) = split_table(table, &Self::KEYS);
        let mut options: Self = own
            .try_into()
            .map_err(|e: toml::de::Error| e.to_string().trim_end().to_owned())?;
        options.media = rest
            .try_into()
            .map_err(|e: toml::de::Error| e.to_string().trim_end().to_owned())?;
        Ok(options)
    }
}

impl MediaOptions {
    /// Fills unset options from `lower` (a lower-precedence layer).
    pub fn or(self, lower: Self) -> Self {
        Self {
            media_ip: self.media_ip.or(lower.media_ip),
            advertise_ip: self.advertise_ip.or(lower.advertise_ip),
            advertise_external: self.advertise_external.or(lower.advertise_external),
            ports: self.ports.or(lower.ports),
            recordings: self.recordings.or(lower.recordings),
            workers: self.workers.or(lower.workers),
            latch_window: self.latch_window.or(lower.latch_window),
            media_timeout: self.media_timeout.or(lower.media_timeout),
            hold_timeout: self.hold_timeout.or(lower.hold_timeout),
            one_way_after: self.one_way_after.or(lower.one_way_after),
            lease_timeout: self.lease_timeout.or(lower.lease_timeout),
            port_quarantine: self.port_quarantine.or(lower.port_quarantine),
            max_sessions_per_owner: self.max_sessions_per_owner.or(lower.max_sessions_per_owner),
            grpc_rate: self.grpc_rate.or(lower.grpc_rate),
            allocate_rate: self.allocate_rate.or(lower.allocate_rate),
            dscp: self.dscp.or(lower.dscp),
            socket_buffer: self.socket_buffer.or(lower.socket_buffer),
            control_nice: self.control_nice.or(lower.control_nice),
        }
    }

    /// Defaults and checks.
    pub fn resolve(self) -> Result<MediaConfig, ConfigError> {
        let defaults = Timing::default();
        let media_ip = self.media_ip.unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST));
        let advertise_ip = match self.advertise_ip {
            Some(ip) if ip.is_unspecified() => {
                return Err(invalid(
                    "advertise-ip",
                    format!("{ip} cannot be put in SDP"),
                ));
            }
            Some(ip) => ip,
            None if media_ip.is_unspecified() => {
                return Err(invalid(
                    "advertise-ip",
                    format!(
                        "required when --media-ip is {media_ip} (which address should phones send to?)"
                    ),
                ));
            }
            None => media_ip,
        };
        if advertise_ip.is_ipv4() != media_ip.is_ipv4() && !media_ip.is_unspecified() {
            return Err(invalid(
                "advertise-ip",
                format!(
                    "{advertise_ip} and --media-ip {media_ip} are of different address families"
                ),
            ));
        }
        let workers = self
            .workers
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
        if workers == 0 || workers > 256 {
            return Err(invalid(
                "workers",
                format!("{workers} is not between 1 and 256"),
            ));
        }
        let positive = |option: &'static str, value: Option<HumanDuration>, default: Duration| {
            let value = value.map_or(default, |d| d.0);
            if value.is_zero() {
                Err(invalid(option, "must be longer than 0"))
            } else {
                Ok(value)
            }
        };
        let timing = Timing {
            latch_window: positive("latch-window", self.latch_window, defaults.latch_window)?,
            media_timeout: positive("media-timeout", self.media_timeout, defaults.media_timeout)?,
            hold_timeout: positive("hold-timeout", self.hold_timeout, defaults.hold_timeout)?,
            one_way_after: positive("one-way-after", self.one_way_after, defaults.one_way_after)?,
        };
        Ok(MediaConfig {
            media_ip,
            advertise_ip,
            advertise_external: self.advertise_external.unwrap_or(false),
            ports: self.ports.unwrap_or(PortRange {
                min: 30000,
                max: 39999,
            }),
            recordings: self
                .recordings
                .unwrap_or_else(|| PathBuf::from("recordings")),
            workers,
            timing,
            lease_timeout: positive("lease-timeout", self.lease_timeout, Duration::from_secs(30))?,
            port_quarantine: self.port_quarantine.map_or(Duration::from_secs(2), |d| d.0),
            max_sessions_per_owner: self.max_sessions_per_owner.filter(|&n| n > 0),
            client_rates: {
                let default = crate::ratelimit::ClientRates::DEFAULT;
                crate::ratelimit::ClientRates {
                    requests: self
                        .grpc_rate
                        .map_or(default.requests, std::num::NonZeroU32::new),
                    allocations: self
                        .allocate_rate
                        .map_or(default.allocations, std::num::NonZeroU32::new),
                }
            },
            dscp: match self.dscp.unwrap_or(46) {
                dscp @ 0..=63 => dscp,
                other => return Err(invalid("dscp", format!("{other} is not between 0 and 63"))),
            },
            socket_buffer: self.socket_buffer.unwrap_or(0),
            control_nice: match self.control_nice.unwrap_or(10) {
                nice @ 0..=19 => nice,
                other => {
                    return Err(invalid(
                        "control-nice",
                        format!("{other} is not between 0 and 19"),
                    ));
                }
            },
        })
    }
}

impl MediaConfig {
    /// A warning when the advertised address is not on a local interface and was not declared
    /// external: phones would send media to an address this host may never receive on.
    pub fn advertise_warning(&self) -> Option<String> {
        if self.advertise_external || self.advertise_ip == self.media_ip {
            return None;
        }
        match UdpSocket::bind(SocketAddr::new(self.advertise_ip, 0)) {
            Ok(_) => None,
            Err(_) => Some(format!(
                "--advertise-ip {} is not an address of this host and --advertise-external is not set: \
                 phones will send RTP there; if that address does not forward to --media-ip {} \
                 every relayed call will have no audio",
                self.advertise_ip, self.media_ip
            )),
        }
    }
}

impl MediaConfig {
    /// Why recordings could not be written to `--recordings`, if they could not: the
    /// directory is created when missing and a probe file is written and removed.
    pub fn recordings_problem(&self) -> Option<String> {
        let dir = &self.recordings;
        let probe = dir.join(format!(".write-probe-{}", std::process::id()));
        let result = std::fs::create_dir_all(dir)
            .and_then(|()| std::fs::write(&probe, b"probe"))
            .and_then(|()| std::fs::remove_file(&probe));
        result.err().map(|error| {
            format!(
                "--recordings {}: not writable ({error}); recordings of calls would fail",
                dir.display()
            )
        })
    }
}

impl Config {
    /// Merges flags/env (`cli`) over the file named by `--config`, then checks.
    pub fn load(cli: Cli) -> Result<Self, ConfigError> {
        let file = match &cli.config {
            Some(path) => read_file(path)?,
            None => Options::default(),
        };
        Self::resolve(cli.options, file)
    }

    /// Merges two layers (`upper` wins) and checks.
    pub fn resolve(upper: Options, lower: Options) -> Result<Self, ConfigError> {
        let media = upper.media.or(lower.media).resolve()?;
        let node_id = upper
            .node_id
            .or(lower.node_id)
            .unwrap_or_else(default_node_id);
        if node_id.is_empty()
            || node_id.len() > 64
            || !node_id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        {
            return Err(invalid(
                "node-id",
                format!("{node_id:?} must be 1 to 64 letters, digits, '-', '_' or '.'"),
            ));
        }
        let grpc = upper
            .grpc
            .or(lower.grpc)
            .unwrap_or(SocketAddr::from(([127, 0, 0, 1], 50051)));
        let plaintext = upper
            .grpc_plaintext
            .or(lower.grpc_plaintext)
            .unwrap_or(false);
        let tls_given = upper.tls_cert.is_some()
            || lower.tls_cert.is_some()
            || upper.tls_key.is_some()
            || lower.tls_key.is_some()
            || upper.tls_client_ca.is_some()
            || lower.tls_client_ca.is_some();
        let operators = if upper.tls_operator.is_empty() {
            lower.tls_operator.clone()
        } else {
            upper.tls_operator.clone()
        };
        if !operators.is_empty() && !tls_given {
            return Err(invalid(
                "tls-operator",
                "operators are named by their client certificate: it needs mutual TLS \
                 (--tls-cert, --tls-key, --tls-client-ca)",
            ));
        }
        if let Some(empty) = operators.iter().find(|o| o.trim().is_empty()) {
            return Err(invalid(
                "tls-operator",
                format!("{empty:?} is no certificate common name"),
            ));
        }
        let listen_ng = if upper.listen_ng.is_empty() {
            lower.listen_ng.clone()
        } else {
            upper.listen_ng.clone()
        };
        let ng_allow = if upper.ng_allow.is_empty() {
            lower.ng_allow.clone()
        } else {
            upper.ng_allow.clone()
        };
        if let Some(open) = listen_ng.iter().find(|a| !a.ip().is_loopback())
            && ng_allow.is_empty()
        {
            return Err(invalid(
                "ng-allow",
                format!(
                    "--listen-ng {open} is not a loopback address and ng has no authentication: \
                     name the clients that may use it (--ng-allow CIDR, e.g. your Kamailio hosts)"
                ),
            ));
        }
        if !grpc.ip().is_loopback() && !tls_given && !plaintext {
            return Err(invalid(
                "grpc",
                format!(
                    "{grpc} is not a loopback address: gRPC there in plaintext lets anyone who \
                     reaches it allocate and release calls; give --tls-cert, --tls-key and \
                     --tls-client-ca, or --grpc-plaintext to accept that (a private network)"
                ),
            ));
        }
        Ok(Self {
            grpc,
            metrics: upper
                .metrics
                .or(lower.metrics)
                .unwrap_or(SocketAddr::from(([127, 0, 0, 1], 9466))),
            node_id,
            shutdown_grace: upper
                .shutdown_grace
                .or(lower.shutdown_grace)
                .map_or(Duration::from_secs(30), |d| d.0),
            log: upper.log.or(lower.log).unwrap_or_else(|| "info".to_owned()),
            log_format: upper.log_format.or(lower.log_format).unwrap_or_default(),
            listen_ng,
            ng_allow,
            media,
            tls: match (
                upper.tls_cert.or(lower.tls_cert),
                upper.tls_key.or(lower.tls_key),
                upper.tls_client_ca.or(lower.tls_client_ca),
            ) {
                (None, None, None) => None,
                (Some(cert), Some(key), Some(ca)) => Some(TlsFiles {
                    operators,
                    ..TlsFiles::read(&cert, &key, &ca)?
                }),
                (cert, key, _) => {
                    let missing = if cert.is_none() {
                        "tls-cert"
                    } else if key.is_none() {
                        "tls-key"
                    } else {
                        "tls-client-ca"
                    };
                    return Err(invalid(
                        missing,
                        "mutual TLS needs --tls-cert, --tls-key and --tls-client-ca together",
                    ));
                }
            },
        })
    }
}

fn default_node_id() -> String {
    host_name().unwrap_or_else(|| "mediaproxy".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("mediaproxy").chain(args.iter().copied()))
    }

    #[test]
    fn plaintext_grpc_beyond_loopback_needs_tls_or_saying_so() {
        let resolve =
            |args: &[&str]| Config::resolve(parse(args).unwrap().options, Options::default());
        let base = ["--media-ip", "127.0.0.1", "--grpc", "10.0.0.5:50051"];
        let error = resolve(&base).unwrap_err().to_string();
        assert!(
            error.starts_with("--grpc: 10.0.0.5:50051 is not a loopback address"),
            "{error}"
        );
        let config = resolve(&[&base[..], &["--grpc-plaintext"]].concat()).unwrap();
        assert_eq!(config.grpc, "10.0.0.5:50051".parse().unwrap());
        assert!(config.tls.is_none());
        assert!(
            resolve(&["--grpc", "127.0.0.1:50051"]).is_ok(),
            "loopback stays plaintext"
        );
        assert!(resolve(&["--grpc", "[::1]:50051"]).is_ok());
        let from_file = Options::from_toml(
            "grpc = \"10.0.0.5:1\"\nmedia-ip = \"127.0.0.1\"\ngrpc-plaintext = true\n",
        )
        .unwrap();
        assert!(
            Config::resolve(Options::default(), from_file).is_ok(),
            "the TOML key"
        );
    }

    #[test]
    fn dscp_defaults_to_ef_and_is_checked() {
        let cli = parse(&[]).unwrap();
        let config = Config::resolve(cli.options, Options::default()).unwrap();
        assert_eq!((config.media.dscp, config.media.socket_buffer), (46, 0));
        let cli = parse(&["--dscp", "64"]).unwrap();
        let error = Config::resolve(cli.options, Options::default()).unwrap_err();
        assert!(error.to_string().starts_with("--dscp"), "{error}");
    }

    #[test]
    fn control_nice_defaults_to_ten_and_is_checked() {
        let cli = parse(&[]).unwrap();
        let config = Config::resolve(cli.options, Options::default()).unwrap();
        assert_eq!(config.media.control_nice, 10);
        let cli = parse(&["--control-nice", "0"]).unwrap();
        let config = Config::resolve(cli.options, Options::default()).unwrap();
        assert_eq!(config.media.control_nice, 0);
        let cli = parse(&["--control-nice", "20"]).unwrap();
        let error = Config::resolve(cli.options, Options::default()).unwrap_err();
        assert!(error.to_string().starts_with("--control-nice"), "{error}");
    }

    #[test]
    fn recordings_directory_is_probed() {
        let dir = std::env::temp_dir().join(format!("mp-rec-{}", std::process::id()));
        let cli = parse(&["--recordings", dir.to_str().unwrap()]).unwrap();
        let config = Config::resolve(cli.options, Options::default()).unwrap();
        assert_eq!(config.media.recordings_problem(), None);
        assert!(dir.is_dir(), "created when missing");
        let cli = parse(&["--recordings", "/dev/null/recordings"]).unwrap();
        let config = Config::resolve(cli.options, Options::default()).unwrap();
        let problem = config.media.recordings_problem().expect("not writable");
        assert!(
            problem.starts_with("--recordings /dev/null/recordings: not writable"),
            "{problem}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn operators_come_from_the_file_or_the_flags_and_need_tls() {
        let file = Options::from_toml("tls-operator = [\"ops\", \"oncall\"]\n").unwrap();
        assert_eq!(file.tls_operator, ["ops", "oncall"]);
        let flags = parse(&["--tls-operator", "a,b"]).unwrap();
        assert_eq!(flags.options.tls_operator, ["a", "b"]);
        let error = Config::resolve(flags.options, file)
            .unwrap_err()
            .to_string();
        assert!(error.starts_with("--tls-operator: "), "{error}");
    }

    #[test]
    fn flags_win_over_the_file_and_defaults_fill_the_rest() {
        let cli = parse(&["--ports", "40000-40099", "--node-id", "edge-1"]).unwrap();
        let file = Options::from_toml(
            "ports = \"50000-50099\"\ngrpc = \"127.0.0.1:7000\"\nmedia-timeout = \"90s\"\n",
        )
        .unwrap();
        let config = Config::resolve(cli.options, file).unwrap();
        assert_eq!(
            config.media.ports,
            PortRange {
                min: 40000,
                max: 40099
            }
        );
        assert_eq!(config.grpc, "127.0.0.1:7000".parse().unwrap());
        assert_eq!(config.media.timing.media_timeout, Duration::from_secs(90));
        assert_eq!(config.node_id, "edge-1");
        assert_eq!(config.media.advertise_ip, config.media.media_ip);
    }

    #[test]
    fn unknown_file_keys_are_refused_by_name() {
        let error = Options::from_toml("grpc = \"127.0.0.1:1\"\nmedia-port = 5\n").unwrap_err();
        assert!(error.contains("media-port"), "{error}");
        let error = Options::from_toml("grpc = 5\n").unwrap_err();
        assert!(error.contains("grpc"), "{error}");
    }

    #[test]
    fn bad_values_name_the_option() {
        let error = parse(&["--ports", "9-3"]).unwrap_err().to_string();
        assert!(error.contains("--ports"), "{error}");
        let cli = parse(&["--media-ip", "0.0.0.0"]).unwrap();
        let error = Config::resolve(cli.options, Options::default())
            .unwrap_err()
            .to_string();
        assert!(error.starts_with("--advertise-ip"), "{error}");
        let cli = parse(&["--workers", "0"]).unwrap();
        let error = Config::resolve(cli.options, Options::default())
            .unwrap_err()
            .to_string();
        assert!(error.starts_with("--workers"), "{error}");
        let cli = parse(&["--node-id", "a b"]).unwrap();
        let error = Config::resolve(cli.options, Options::default())
            .unwrap_err()
            .to_string();
        assert!(error.starts_with("--node-id"), "{error}");
    }

    #[test]
    fn a_foreign_advertise_ip_warns_unless_declared_external() {
        let options = MediaOptions {
            advertise_ip: Some("203.0.113.10".parse().unwrap()),
            ..MediaOptions::default()
        };
        let media = options.clone().resolve().unwrap();
        assert!(media.advertise_warning().unwrap().contains("203.0.113.10"));
        let declared = MediaOptions {
            advertise_external: Some(true),
            ..options
        };
        assert_eq!(declared.resolve().unwrap().advertise_warning(), None);
    }

    #[test]
    fn shipped_example_configs_parse() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy");
        let path = dir.join("mediaproxy.toml");
        let options = read_file(&path).unwrap();
        Config::resolve(Options::default(), options).unwrap();
    }
}
