//! Configuration of `signaling`: flags > `SIGNALING_*` environment > TOML file (`--config`),
//! like the media proxy's. The embedded media proxy (no `--mediaproxy` given) takes the media
//! options (`--media-ip`, `--advertise-ip`, `--ports`, ...) from this command line.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Args, Parser};
#[cfg(feature = "embedded")]
use mediaproxy::config::{MediaConfig, MediaOptions};
use serde::Deserialize;
pub use service_kit::config::ConfigError;
use service_kit::config::{HumanDuration, split_table};
use service_kit::logging::LogFormat;

pub use crate::policy::{Cidr, MediaMode, Route, User};

/// Options of the `signaling` service.
#[derive(Debug, Clone, Default, Args, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Options {
    /// SIP listen address, UDP and TCP on the same port [default: 127.0.0.1:5060].
    #[arg(long, env = "SIGNALING_SIP", value_name = "ADDR")]
    pub sip: Option<SocketAddr>,
    /// gRPC URL of a media proxy; repeatable. None: start an embedded proxy.
    #[arg(
        long = "mediaproxy",
        env = "SIGNALING_MEDIAPROXY",
        value_name = "URL",
        value_delimiter = ','
    )]
    #[serde(default)]
    pub mediaproxy: Vec<String>,
    /// PEM certificate of the CA that signed the media proxies' certificates: needed for
    /// `https://` media proxy URLs (mutual TLS).
    #[arg(long, env = "SIGNALING_MEDIAPROXY_CA", value_name = "FILE")]
    pub mediaproxy_ca: Option<PathBuf>,
    /// PEM client certificate shown to `https://` media proxies; its common name qualifies
    /// this instance's owner name on them.
    #[arg(long, env = "SIGNALING_MEDIAPROXY_CERT", value_name = "FILE")]
    pub mediaproxy_cert: Option<PathBuf>,
    /// PEM private key of --mediaproxy-cert.
    #[arg(long, env = "SIGNALING_MEDIAPROXY_KEY", value_name = "FILE")]
    pub mediaproxy_key: Option<PathBuf>,
    /// Default media mode: direct, relay (alias bypass) or reflect (alias reflecting)
    /// [default: relay].
    #[arg(long, env = "SIGNALING_MEDIA_MODE", value_name = "MODE")]
    pub media_mode: Option<MediaMode>,
    /// Record relayed calls by default.
    #[arg(long, env = "SIGNALING_RECORD", value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    pub record: Option<bool>,
    /// Users and passwords (TOML) for digest authentication of REGISTER and INVITE.
    #[arg(long, env = "SIGNALING_USERS", value_name = "FILE")]
    pub users: Option<PathBuf>,
    /// Static route PREFIX=SIP-URI by Request-URI user prefix; repeatable; longest prefix
    /// wins; an empty prefix is the default route. Registered users are tried first.
    #[arg(
        long = "route",
        env = "SIGNALING_ROUTE",
        value_name = "PREFIX=URI",
        value_delimiter = ','
    )]
    #[serde(default)]
    pub route: Vec<Route>,
    /// Sources allowed to send INVITEs without authentication; repeatable.
    #[arg(
        long = "trusted",
        env = "SIGNALING_TRUSTED",
        value_name = "CIDR",
        value_delimiter = ','
    )]
    #[serde(default)]
    pub trusted: Vec<Cidr>,
    /// CDR store: sqlite://PATH or postgres://... [default: sqlite://cdr.db].
    #[arg(long, env = "SIGNALING_CDR", value_name = "URL")]
    pub cdr: Option<String>,
    /// File where CDRs go that the database did not take (outage at shutdown, queue full);
    /// replayed at the next start [default: the SQLite path + ".spool", or cdr-spool.jsonl].
    #[arg(long, env = "SIGNALING_CDR_SPOOL", value_name = "FILE")]
    pub cdr_spool: Option<PathBuf>,
    /// CDRs kept in memory while the database is unreachable; more go to the spool file
    /// [default: 100000].
    #[arg(long, env = "SIGNALING_CDR_QUEUE", value_name = "N")]
    pub cdr_queue: Option<usize>,
    /// Most calls at once; more INVITEs are answered 503 [default: 2000].
    #[arg(long, env = "SIGNALING_MAX_CALLS", value_name = "N")]
    pub max_calls: Option<usize>,
    /// Requests per second one source address may start outside dialogs (INVITE, REGISTER,
    /// OPTIONS), in bursts of twice that; over it they are answered 503 with Retry-After,
    /// and a source that keeps on is dropped. Trusted sources have no budget. 0 disables
    /// [default: 50].
    #[arg(long, env = "SIGNALING_SOURCE_RATE", value_name = "N")]
    pub source_rate: Option<f64>,
    /// Wrong digest answers from one source before it is banned (and four times that at one
    /// user, from addresses it never used, before the user is guarded). 0 disables
    /// [default: 5].
    #[arg(long, env = "SIGNALING_AUTH_MAX_FAILURES", value_name = "N")]
    pub auth_max_failures: Option<u32>,
    /// The first ban; each further ban of the same source doubles, at most an hour
    /// [default: 60s].
    #[arg(long, env = "SIGNALING_AUTH_BAN", value_name = "DURATION")]
    pub auth_ban: Option<HumanDuration>,
    /// SIP TCP connections one source address may hold at once; the next is closed at
    /// accept. Phones behind one office NAT share an address: size it for the largest site
    /// [default: 256].
    #[arg(long, env = "SIGNALING_TCP_PER_SOURCE", value_name = "N")]
    pub tcp_per_source: Option<usize>,
    /// HTTP listen address for /metrics and the admin endpoints [default: 127.0.0.1:9465].
    #[arg(long, env = "SIGNALING_METRICS", value_name = "ADDR")]
    pub metrics: Option<SocketAddr>,
    /// Bearer token that opens the admin endpoints (/admin/...) to clients that are not on
    /// this host; without it they answer local clients only (16 characters at least).
    #[arg(long, env = "SIGNALING_ADMIN_TOKEN", value_name = "TOKEN")]
    pub admin_token: Option<String>,
    /// Digest realm [default: the --sip host].
    #[arg(long, env = "SIGNALING_REALM", value_name = "REALM")]
    pub realm: Option<String>,
    /// Answer 408 to the caller when the callee does not answer in this time [default: 60s].
    #[arg(long, env = "SIGNALING_RING_TIMEOUT", value_name = "DURATION")]
    pub ring_timeout: Option<HumanDuration>,
    /// End answered calls after this long [default: 4h].
    #[arg(long, env = "SIGNALING_MAX_CALL_DURATION", value_name = "DURATION")]
    pub max_call_duration: Option<HumanDuration>,
    /// Ping both legs of answered calls with in-dialog OPTIONS this often; a leg that answers
    /// 408/481 or not at all within the interval ends the call. 0 disables [default: 30s].
    #[arg(long, env = "SIGNALING_KEEPALIVE", value_name = "DURATION")]
    pub keepalive: Option<HumanDuration>,
    /// Session interval offered and accepted (RFC 4028 session timers, per leg): the side
    /// that refreshes does so every half of it, a call whose refreshes stop ends
    /// [default: 30m].
    #[arg(long, env = "SIGNALING_SESSION_EXPIRES", value_name = "DURATION")]
    pub session_expires: Option<HumanDuration>,
    /// The shortest session interval accepted; shorter requests get 422 with this Min-SE
    /// (at least 90s, RFC 4028) [default: 90s].
    #[arg(long, env = "SIGNALING_MIN_SE", value_name = "DURATION")]
    pub min_se: Option<HumanDuration>,
    /// Log filter, as RUST_LOG [default: info].
    #[arg(long, env = "SIGNALING_LOG", value_name = "FILTER")]
    pub log: Option<String>,
    /// Log lines as `text` or `json` (one JSON object per line, for log collectors)
    /// [default: text].
    #[arg(long, env = "SIGNALING_LOG_FORMAT", value_name = "FORMAT")]
    pub log_format: Option<LogFormat>,
    /// Media options of the embedded media proxy.
    #[cfg(feature = "embedded")]
    #[command(flatten)]
    #[serde(skip)]
    pub media: MediaOptions,
}

/// The `signaling` command line.
#[derive(Debug, Parser)]
#[command(
    name = "signaling",
    version,
    about = "SIP B2BUA and registrar driving media proxies over gRPC"
)]
pub struct Cli {
    /// TOML file with any of the options below (flags and environment win over it).
    #[arg(long, env = "SIGNALING_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    #[command(flatten)]
    pub options: Options,
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// Commands other than running the service.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum Command {
    /// Write CDRs of a date range as CSV or JSON lines to standard output.
    Export(crate::export::ExportArgs),
    /// Ask a running signaling's /healthz whether it takes calls (exit 0 when it does): the
    /// container health check.
    Health(crate::health::HealthArgs),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct UsersFile {
    #[serde(default)]
    users: BTreeMap<String, User>,
}

/// Mutual TLS towards `https://` media proxies: the CA's certificate and ours (PEM), and the
/// files they came from (watched, and read again when they change).
#[derive(Clone, PartialEq, Eq)]
pub struct ClientTls {
    pub ca: Vec<u8>,
    pub cert: Vec<u8>,
    pub key: Vec<u8>,
    /// `--mediaproxy-ca`, `--mediaproxy-cert`, `--mediaproxy-key`.
    pub paths: [PathBuf; 3],
}

impl ClientTls {
    /// Reads the three files, checking each holds the PEM it must.
    pub fn read(ca: &Path, cert: &Path, key: &Path) -> Result<Self, ConfigError> {
        let pem = service_kit::config::read_pem;
        Ok(Self {
            ca: pem("mediaproxy-ca", ca, "CERTIFICATE")?,
            cert: pem("mediaproxy-cert", cert, "CERTIFICATE")?,
            key: pem("mediaproxy-key", key, "PRIVATE KEY")?,
            paths: [ca.to_owned(), cert.to_owned(), key.to_owned()],
        })
    }

    /// The files read again.
    pub fn reread(&self) -> Result<Self, ConfigError> {
        let [ca, cert, key] = &self.paths;
        Self::read(ca, cert, key)
    }

    /// When each file last changed (None where it cannot be read).
    pub fn modified(&self) -> Vec<Option<std::time::SystemTime>> {
        service_kit::config::modified(&self.paths)
    }
}

impl std::fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClientTls { .. }")
    }
}

/// The checked configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub sip: SocketAddr,
    pub mediaproxies: Vec<String>,
    /// Mutual TLS towards `https://` media proxies.
    pub mediaproxy_tls: Option<ClientTls>,
    pub media_mode: MediaMode,
    pub record: bool,
    pub users: BTreeMap<String, User>,
    pub routes: Vec<Route>,
    pub trusted: Vec<Cidr>,
    pub cdr: crate::cdr::Target,
    pub cdr_spool: PathBuf,
    pub cdr_queue: usize,
    pub max_calls: usize,
    /// Per-source request budget and password-guessing bans.
    pub limits: crate::access::guard::Limits,
    /// SIP TCP connections one source may hold.
    pub tcp_per_source: usize,
    pub metrics: SocketAddr,
    /// Opens the admin endpoints to remote clients that present it (`--admin-token`).
    pub admin_token: Option<String>,
    pub realm: String,
    pub ring_timeout: Duration,
    pub max_call_duration: Duration,
    pub keepalive: Duration,
    /// RFC 4028 session interval offered and accepted.
    pub session_expires: Duration,
    /// RFC 4028 shortest session interval accepted.
    pub min_se: Duration,
    pub log: String,
    pub log_format: LogFormat,
    /// Settings of the embedded media proxy (used when `mediaproxies` is empty).
    #[cfg(feature = "embedded")]
    pub media: MediaConfig,
}

const KEYS: [&str; 28] = [
    "session-expires",
    "min-se",
    "admin-token",
    "tcp-per-source",
    "source-rate",
    "auth-max-failures",
    "auth-ban",
    "mediaproxy-ca",
    "mediaproxy-cert",
    "mediaproxy-key",
    "keepalive",
    "cdr-spool",
    "cdr-queue",
    "max-calls",
    "sip",
    "mediaproxy",
    "media-mode",
    "record",
    "users",
    "route",
    "trusted",
    "cdr",
    "metrics",
    "realm",
    "ring-timeout",
    "max-call-duration",
    "log",
    "log-format",
];

fn file_error(path: &Path, message: impl ToString) -> ConfigError {
    ConfigError::File {
        path: path.to_owned(),
        message: message.to_string().trim_end().to_owned(),
    }
}

/// A list option: the upper layer's when it gave any, else the lower one's.
fn pick<T>(upper: Vec<T>, lower: Vec<T>) -> Vec<T> {
    if upper.is_empty() { lower } else { upper }
}

/// Reads the users file.
pub fn read_users(path: &Path) -> Result<BTreeMap<String, User>, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| file_error(path, e))?;
    let file: UsersFile = toml::from_str(&text).map_err(|e| file_error(path, e))?;
    for (name, user) in &file.users {
        let hex = |value: &Option<String>, field: &str, len: usize| match value {
            Some(v) if v.len() != len || !v.bytes().all(|b| b.is_ascii_hexdigit()) => Err(
                file_error(path, format!("users.{name}.{field}: not {len} hex digits")),
            ),
            _ => Ok(()),
        };
        hex(&user.ha1, "ha1", 32)?;
        hex(&user.ha1_sha256, "ha1-sha256", 64)?;
        for (field, target) in [
            ("forward", &user.forward),
            ("forward-busy", &user.forward_busy),
            ("forward-no-answer", &user.forward_no_answer),
        ] {
            if target.as_deref().is_some_and(|t| t.trim().is_empty()) {
                return Err(file_error(
                    path,
                    format!("users.{name}.{field}: empty (a user name, number or SIP URI)"),
                ));
            }
        }
        if user
            .forward_no_answer_after
            .is_some_and(|s| !(1..=600).contains(&s))
        {
            return Err(file_error(
                path,
                format!("users.{name}.forward-no-answer-after: seconds from 1 to 600"),
            ));
        }
        if user.password.is_none() && user.ha1.is_none() && user.ha1_sha256.is_none() {
            return Err(file_error(
                path,
                format!("users.{name}: needs password, ha1 or ha1-sha256"),
            ));
        }
    }
    Ok(file.users)
}

impl Options {
    /// Parses the TOML form; an unknown key is an error that names it.
    pub fn from_toml(text: &str) -> Result<Self, String> {
        let table: toml::Table = toml::from_str(text).map_err(|e| e.to_string())?;
        let (own, rest) = split_table(table, &KEYS);
        #[cfg_attr(not(feature = "embedded"), allow(unused_mut))]
        let mut options: Self = own.try_into().map_err(|e: toml::de::Error| e.to_string())?;
        #[cfg(feature = "embedded")]
        {
            options.media = rest
                .try_into()
                .map_err(|e: toml::de::Error| e.to_string())?;
        }
        #[cfg(not(feature = "embedded"))]
        if let Some(key) = rest.keys().next() {
            return Err(format!(
                "unknown field `{key}` (a media option: this build has no embedded media proxy)"
            ));
        }
        Ok(options)
    }
}

impl Config {
    pub fn load(cli: Cli) -> Result<Self, ConfigError> {
        let file = match &cli.config {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|e| file_error(path, e))?;
                Options::from_toml(&text).map_err(|e| file_error(path, e))?
            }
            None => Options::default(),
        };
        Self::resolve(cli.options, file)
    }

    pub fn resolve(upper: Options, lower: Options) -> Result<Self, ConfigError> {
        let invalid = |option, message: String| ConfigError::Invalid { option, message };
        let sip = upper
            .sip
            .or(lower.sip)
            .unwrap_or(SocketAddr::from(([127, 0, 0, 1], 5060)));
        let mediaproxies: Vec<String> = pick(upper.mediaproxy, lower.mediaproxy);
        for url in &mediaproxies {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return Err(invalid(
                    "mediaproxy",
                    format!("{url:?} must be an http:// or https:// URL"),
                ));
            }
        }
        let mediaproxy_tls = match (
            upper.mediaproxy_ca.or(lower.mediaproxy_ca),
            upper.mediaproxy_cert.or(lower.mediaproxy_cert),
            upper.mediaproxy_key.or(lower.mediaproxy_key),
        ) {
            (None, None, None) => None,
            (Some(ca), Some(cert), Some(key)) => Some(ClientTls::read(&ca, &cert, &key)?),
            (ca, cert, _) => {
                let missing = if ca.is_none() {
                    "mediaproxy-ca"
                } else if cert.is_none() {
                    "mediaproxy-cert"
                } else {
                    "mediaproxy-key"
                };
                return Err(invalid(
                    missing,
                    "mutual TLS needs --mediaproxy-ca, --mediaproxy-cert and --mediaproxy-key together"
                        .to_owned(),
                ));
            }
        };
        if mediaproxy_tls.is_none()
            && let Some(url) = mediaproxies.iter().find(|u| u.starts_with("https://"))
        {
            return Err(invalid(
                "mediaproxy-ca",
                format!(
                    "{url} is https://: give --mediaproxy-ca, --mediaproxy-cert and --mediaproxy-key"
                ),
            ));
        }
        let mut routes = pick(upper.route, lower.route);
        for route in &mut routes {
            route
                .resolve()
                .map_err(|message| invalid("route", format!("{}: {message}", route.target)))?;
        }
        let users = match upper.users.or(lower.users) {
            Some(path) => read_users(&path)?,
            None => BTreeMap::new(),
        };
        let cdr = upper
            .cdr
            .or(lower.cdr)
            .unwrap_or_else(|| "sqlite://cdr.db".to_owned());
        let cdr = crate::cdr::Target::parse(&cdr)
            .map_err(|message| invalid("cdr", format!("{cdr:?}: {message}")))?;
        let cdr_spool = upper
            .cdr_spool
            .or(lower.cdr_spool)
            .unwrap_or_else(|| crate::cdr::default_spool(&cdr));
        let cdr_queue = upper.cdr_queue.or(lower.cdr_queue).unwrap_or(100_000);
        if cdr_queue == 0 {
            return Err(invalid("cdr-queue", "must be at least 1".into()));
        }
        let max_calls = upper.max_calls.or(lower.max_calls).unwrap_or(2000);
        if max_calls == 0 {
            return Err(invalid("max-calls", "must be at least 1".into()));
        }
        let min_se = upper
            .min_se
            .or(lower.min_se)
            .map_or(Duration::from_secs(90), |d| d.0);
        if min_se < Duration::from_secs(90) {
            return Err(invalid(
                "min-se",
                "must be at least 90s (RFC 4028 section 4)".into(),
            ));
        }
        let session_expires = upper
            .session_expires
            .or(lower.session_expires)
            .map_or(Duration::from_secs(1800), |d| d.0);
        if session_expires < min_se {
            return Err(invalid(
                "session-expires",
                format!("must be at least --min-se ({}s)", min_se.as_secs()),
            ));
        }
        let admin_token = upper.admin_token.or(lower.admin_token);
        if let Some(token) = &admin_token
            && (token.len() < 16 || !token.bytes().all(|b| b.is_ascii_graphic()))
        {
            return Err(invalid(
                "admin-token",
                "must be 16 or more printable characters without spaces".into(),
            ));
        }
        let defaults = crate::access::guard::Limits::default();
        let source_rate = upper
            .source_rate
            .or(lower.source_rate)
            .unwrap_or(defaults.source_rate);
        if !source_rate.is_finite() || source_rate < 0.0 {
            return Err(invalid(
                "source-rate",
                format!("{source_rate}: must be 0 (no budget) or a positive rate"),
            ));
        }
        let limits = crate::access::guard::Limits {
            source_rate,
            max_failures: upper
                .auth_max_failures
                .or(lower.auth_max_failures)
                .unwrap_or(defaults.max_failures),
            ban: upper
                .auth_ban
                .or(lower.auth_ban)
                .map_or(defaults.ban, |d| d.0),
        };
        if limits.max_failures > 0 && limits.ban.is_zero() {
            return Err(invalid("auth-ban", "must be longer than 0s".into()));
        }
        let tcp_per_source = upper
            .tcp_per_source
            .or(lower.tcp_per_source)
            .unwrap_or(crate::tcp::PER_SOURCE);
        if tcp_per_source == 0 {
            return Err(invalid(
                "tcp-per-source",
                "must be 1 or more (0 would refuse every TCP connection)".into(),
            ));
        }
        #[cfg(not(feature = "embedded"))]
        if mediaproxies.is_empty() {
            return Err(invalid(
                "mediaproxy",
                "this build has no embedded media proxy (cargo feature `embedded`): give the \
                 URL of at least one"
                    .into(),
            ));
        }
        #[cfg(feature = "embedded")]
        let media = upper.media.or(lower.media).resolve()?;
        #[cfg(feature = "embedded")]
        if mediaproxies.is_empty() && media.ports.contains(sip.port()) && media.media_ip == sip.ip()
        {
            return Err(invalid(
                "ports",
                format!("{} contains the SIP port {}", media.ports, sip.port()),
            ));
        }
        // Every relayed call holds one pair per leg and media line: the embedded proxy's range
        // must at least hold --max-calls audio calls.
        #[cfg(feature = "embedded")]
        if mediaproxies.is_empty() && media.ports.pair_count() < 2 * max_calls {
            return Err(invalid(
                "ports",
                format!(
                    "{} holds {} RTP/RTCP pairs, too few for --max-calls {max_calls} \
                     (each relayed audio call takes 2 pairs, one per leg): widen the range or \
                     lower --max-calls",
                    media.ports,
                    media.ports.pair_count()
                ),
            ));
        }
        Ok(Self {
            sip,
            mediaproxies,
            mediaproxy_tls,
            media_mode: upper
                .media_mode
                .or(lower.media_mode)
                .unwrap_or(MediaMode::Relay),
            record: upper.record.or(lower.record).unwrap_or(false),
            users,
            routes,
            trusted: pick(upper.trusted, lower.trusted),
            cdr,
            cdr_spool,
            cdr_queue,
            max_calls,
            limits,
            tcp_per_source,
            metrics: upper
                .metrics
                .or(lower.metrics)
                .unwrap_or(SocketAddr::from(([127, 0, 0, 1], 9465))),
            admin_token,
            realm: upper
                .realm
                .or(lower.realm)
                .unwrap_or_else(|| sip.ip().to_string()),
            ring_timeout: upper
                .ring_timeout
                .or(lower.ring_timeout)
                .map_or(Duration::from_secs(60), |d| d.0),
            max_call_duration: upper
                .max_call_duration
                .or(lower.max_call_duration)
                .map_or(Duration::from_secs(4 * 3600), |d| d.0),
            keepalive: upper
                .keepalive
                .or(lower.keepalive)
                .map_or(Duration::from_secs(30), |d| d.0),
            session_expires,
            min_se,
            log: upper.log.or(lower.log).unwrap_or_else(|| "info".to_owned()),
            log_format: upper.log_format.or(lower.log_format).unwrap_or_default(),
            #[cfg(feature = "embedded")]
            media,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("signaling").chain(args.iter().copied()))
    }

    #[test]
    fn media_mode_aliases_of_the_earlier_system() {
        assert_eq!("bypass".parse::<MediaMode>().unwrap(), MediaMode::Relay);
        assert_eq!(
            "reflecting".parse::<MediaMode>().unwrap(),
            MediaMode::Reflect
        );
        assert!("loud".parse::<MediaMode>().is_err());
    }

    #[test]
    fn session_timer_bounds_are_checked_naming_the_field() {
        let resolve =
            |args: &[&str]| Config::resolve(parse(args).unwrap().options, Options::default());
        let error = resolve(&["--min-se", "30s"]).unwrap_err().to_string();
        assert!(error.contains("min-se") && error.contains("90"), "{error}");
        let error = resolve(&["--min-se", "120s", "--session-expires", "100s"])
            .unwrap_err()
            .to_string();
        assert!(error.contains("session-expires"), "{error}");
        let config = resolve(&[]).unwrap();
        assert_eq!(
            (config.session_expires.as_secs(), config.min_se.as_secs()),
            (1800, 90)
        );
    }

    #[test]
    fn routes_trusted_and_defaults() {
        let cli = parse(&[
            "--route",
            "44=sip:uk-gw@192.0.2.1:5060",
            "--route",
            "=sip:default@192.0.2.2",
            "--trusted",
            "127.0.0.0/8",
        ])
        .unwrap();
        let config = Config::resolve(cli.options, Options::default()).unwrap();
        assert_eq!(config.routes.len(), 2);
        assert_eq!(config.routes[0].prefix, "44");
        assert_eq!(config.routes[0].media_mode, None);
        let direct: Route = "9=sip:10.0.0.5:5060;transport=tcp;media=direct"
            .parse()
            .unwrap();
        assert_eq!(direct.media_mode, Some(MediaMode::Direct));
        assert_eq!(direct.target.to_string(), "sip:10.0.0.5:5060;transport=tcp");
        assert!("9=sip:10.0.0.5;media=loud".parse::<Route>().is_err());
        assert_eq!(direct.record, None);
        let recorded: Route = "8=sip:10.0.0.6;record=yes;media=reflect".parse().unwrap();
        assert_eq!(recorded.record, Some(true));
        assert_eq!(recorded.media_mode, Some(MediaMode::Reflect));
        assert_eq!(recorded.target.to_string(), "sip:10.0.0.6");
        let bare: Route = "8=sip:10.0.0.6;record".parse().unwrap();
        assert_eq!(bare.record, Some(true));
        let off: Route = "8=sip:10.0.0.6;record=OFF".parse().unwrap();
        assert_eq!(off.record, Some(false));
        let error = "8=sip:10.0.0.6;record=maybe".parse::<Route>().unwrap_err();
        assert!(error.contains("record=maybe"), "{error}");
        assert_eq!(
            config.routes[0].address,
            Some("192.0.2.1:5060".parse().unwrap())
        );
        let mut named: Route = "=sip:localhost:5070".parse().unwrap();
        named.resolve().unwrap();
        assert!(named.address.unwrap().ip().is_loopback());
        assert_eq!(named.address.unwrap().port(), 5070);
        let cli = parse(&["--route", "=sip:no-such-host.invalid"]).unwrap();
        let error = Config::resolve(cli.options, Options::default())
            .unwrap_err()
            .to_string();
        assert!(error.starts_with("--route"), "{error}");
        assert!(config.trusted[0].contains("127.0.0.9".parse().unwrap()));
        assert!(!config.trusted[0].contains("10.0.0.1".parse().unwrap()));
        assert_eq!(config.media_mode, MediaMode::Relay);
        assert_eq!(config.log_format, LogFormat::Text);
        assert_eq!(config.cdr, crate::cdr::Target::Sqlite("cdr.db".into()));
        assert_eq!(config.cdr_spool, PathBuf::from("cdr.db.spool"));
        assert_eq!(config.max_calls, 2000);
    }

    #[test]
    fn json_logs_are_chosen_by_flag_or_file() {
        let cli = parse(&["--log-format", "json"]).unwrap();
        let config = Config::resolve(cli.options, Options::default()).unwrap();
        assert_eq!(config.log_format, LogFormat::Json);
        let file = Options::from_toml("log-format = \"json\"\n").unwrap();
        let config = Config::resolve(Options::default(), file).unwrap();
        assert_eq!(config.log_format, LogFormat::Json);
        assert!(
            parse(&["--log-format", "xml"])
                .unwrap_err()
                .to_string()
                .contains("--log-format")
        );
    }

    #[test]
    fn bad_values_name_the_option() {
        assert!(
            parse(&["--route", "nope"])
                .unwrap_err()
                .to_string()
                .contains("--route")
        );
        assert!(
            parse(&["--trusted", "10.0.0.0/40"])
                .unwrap_err()
                .to_string()
                .contains("--trusted")
        );
        let cli = parse(&["--ports", "30000-30099", "--max-calls", "100"]).unwrap();
        let error = Config::resolve(cli.options, Options::default())
            .unwrap_err()
            .to_string();
        assert!(
            error.starts_with(
                "--ports: 30000-30099 holds 50 RTP/RTCP pairs, too few for --max-calls 100"
            ),
            "{error}"
        );
        let cli = parse(&["--ports", "30000-30099", "--max-calls", "25"]).unwrap();
        assert!(Config::resolve(cli.options, Options::default()).is_ok());
        let cli = parse(&["--max-calls", "0"]).unwrap();
        assert!(
            Config::resolve(cli.options, Options::default())
                .unwrap_err()
                .to_string()
                .starts_with("--max-calls")
        );
        let cli = parse(&["--cdr", "mysql://x"]).unwrap();
        assert!(
            Config::resolve(cli.options, Options::default())
                .unwrap_err()
                .to_string()
                .starts_with("--cdr")
        );
        let cli = parse(&["--mediaproxy", "10.0.0.1:50051"]).unwrap();
        assert!(
            Config::resolve(cli.options, Options::default())
                .unwrap_err()
                .to_string()
                .starts_with("--mediaproxy")
        );
        assert!(
            Options::from_toml("sip = \"127.0.0.1:5060\"\nsipp = 1\n")
                .unwrap_err()
                .contains("sipp")
        );
        for (options, option) in [
            (&["--admin-token", "short"][..], "--admin-token"),
            (&["--source-rate=-1"][..], "--source-rate"),
            (&["--auth-ban", "0s"][..], "--auth-ban"),
            (&["--tcp-per-source", "0"][..], "--tcp-per-source"),
        ] {
            let cli = parse(options).unwrap();
            let error = Config::resolve(cli.options, Options::default())
                .unwrap_err()
                .to_string();
            assert!(error.starts_with(option), "{error}");
        }
        let cli = parse(&["--admin-token", "a-long-enough-token"]).unwrap();
        let config = Config::resolve(cli.options, Options::default()).unwrap();
        assert_eq!(config.admin_token.as_deref(), Some("a-long-enough-token"));
    }

    #[test]
    fn forwarding_in_the_users_file_is_checked_naming_the_field() {
        let dir = std::env::temp_dir().join(format!("users-fwd-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("users.toml");
        for (text, field) in [
            (
                "[users.bob]\npassword = \"x\"\nforward-busy = \" \"\n",
                "users.bob.forward-busy",
            ),
            (
                "[users.bob]\npassword = \"x\"\nforward-no-answer-after = 0\n",
                "users.bob.forward-no-answer-after",
            ),
            (
                "[users.bob]\npassword = \"x\"\nforward-sometimes = \"carol\"\n",
                "forward-sometimes",
            ),
        ] {
            std::fs::write(&path, text).unwrap();
            let error = read_users(&path).unwrap_err().to_string();
            assert!(error.contains(field), "{error}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn shipped_examples_parse() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy");
        let users = read_users(&dir.join("users.toml")).unwrap();
        assert_eq!(users.len(), 3);
        assert!(
            users
                .values()
                .any(|u| u.password.is_none() && u.ha1.is_some())
        );
        assert_eq!(users["bob"].forward_busy.as_deref(), Some("carol"));
        assert_eq!(users["bob"].forward_no_answer_after, Some(20));
        let text = std::fs::read_to_string(dir.join("signaling.toml")).unwrap();
        let mut options = Options::from_toml(&text).unwrap();
        options.users = Some(dir.join("users.toml"));
        Config::resolve(Options::default(), options).unwrap();
    }
}
