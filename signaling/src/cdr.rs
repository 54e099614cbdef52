//! Call detail records (DESIGN section 6): one row per call in `cdr` and one row per media
//! line and leg in `cdr_media`, in SQLite (`sqlite://PATH`) or PostgreSQL (`postgres://...`)
//! with the same versioned schema.
//!
//! Writes happen on a dedicated thread ([`CdrWriter`]) so that database latency never reaches
//! SIP handling. When the database is down, CDRs wait in memory (up to `queue_limit`; beyond
//! that they go to the spool file) and are retried with backoff; on shutdown whatever could not
//! be written within the grace period goes to the spool file, which the next start replays
//! first. Inserts are idempotent (`call_id`, `start_time` is unique), so a replay after a crash
//! between a commit and the spool cleanup writes nothing twice.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{LazyLock, mpsc};
use std::thread;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::diagnosis::MediaFigures;

/// One `cdr` row (column names in [`CDR_COLUMNS`], explained in docs/cdr.md).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Cdr {
    pub call_id: String,
    pub b_call_id: String,
    pub caller: String,
    pub callee: String,
    pub start_time_ms: i64,
    pub answer_time_ms: Option<i64>,
    pub end_time_ms: i64,
    pub duration_ms: i64,
    pub disposition: String,
    pub sip_status: i64,
    pub hangup_side: String,
    pub media_mode: String,
    pub media_node: Option<String>,
    pub caller_audio_packets: i64,
    pub callee_audio_packets: i64,
    pub caller_audio_bytes: i64,
    pub callee_audio_bytes: i64,
    pub total_bytes_relayed: i64,
    pub recording_packets: i64,
    pub has_recording: bool,
    pub recording_path: Option<String>,
    pub media_verdict: String,
    pub media_diagnosis: String,
    /// Why the call ended, in words ("BYE from the callee", "ring timeout", ...).
    pub end_reason: String,
    /// The media address the proxy advertised in SDP.
    pub media_address: Option<String>,
    /// Per media line and leg.
    pub media: Vec<CdrMedia>,
}

/// A call that is up, kept durably in `cdr_open` from its answer until its CDR is written,
/// so that a crash of signaling still leaves its CDR (completed at the next start).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OpenCall {
    pub call_id: String,
    pub b_call_id: String,
    pub caller: String,
    pub callee: String,
    pub start_time_ms: i64,
    pub answer_time_ms: i64,
    pub media_mode: String,
    pub media_node: Option<String>,
    /// The gRPC URL of the node: where the release of the completion goes.
    pub media_endpoint: Option<String>,
    /// Whether a media session exists to release.
    pub relayed: bool,
    pub media_address: Option<String>,
}

/// One `cdr_media` row: one media line of one leg of a call.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CdrMedia {
    pub leg: String,
    pub media_index: i64,
    pub kind: String,
    pub direction: String,
    pub local_rtp_port: i64,
    pub local_rtcp_port: i64,
    pub sdp_rtp_address: String,
    pub sdp_rtcp_address: String,
    pub latched_rtp_source: String,
    pub latched_rtcp_source: String,
    pub rtp_packets_in: i64,
    pub rtp_bytes_in: i64,
    pub rtcp_packets_in: i64,
    pub rtcp_bytes_in: i64,
    pub rtp_packets_out: i64,
    pub rtp_bytes_out: i64,
    pub rtcp_packets_out: i64,
    pub rtcp_bytes_out: i64,
    pub first_packet_time: Option<i64>,
    pub last_packet_time: Option<i64>,
    pub expected_packets: i64,
    pub lost_packets: i64,
    pub duplicate_packets: i64,
    pub out_of_order_packets: i64,
    pub jitter_ms: f64,
    pub max_jitter_ms: f64,
    pub ssrc: i64,
    pub dropped_unknown_source: i64,
    pub dropped_before_latching: i64,
    pub dropped_too_short: i64,
    pub dropped_not_rtp: i64,
    pub dropped_no_destination: i64,
    pub dropped_send_error: i64,
    pub recorded_packets: i64,
    pub source_changes: i64,
}

impl CdrMedia {
    pub fn from_figures(m: &MediaFigures) -> Self {
        let time = |ms: u64| (ms > 0).then_some(ms as i64);
        let first = [m.rtp_in.first_unix_ms, m.rtcp_in.first_unix_ms]
            .into_iter()
            .filter(|&t| t > 0)
            .min()
            .unwrap_or(0);
        let last = m.rtp_in.last_unix_ms.max(m.rtcp_in.last_unix_ms);
        Self {
            leg: m.leg.as_str().to_owned(),
            media_index: i64::from(m.index),
            kind: m.kind.as_str().to_owned(),
            direction: m.direction.as_str().to_owned(),
            local_rtp_port: i64::from(m.local_rtp_port),
            local_rtcp_port: i64::from(m.local_rtcp_port),
            sdp_rtp_address: m.sdp_rtp.clone(),
            sdp_rtcp_address: m.sdp_rtcp.clone(),
            latched_rtp_source: m.latched_rtp.clone(),
            latched_rtcp_source: m.latched_rtcp.clone(),
            rtp_packets_in: m.rtp_in.packets as i64,
            rtp_bytes_in: m.rtp_in.bytes as i64,
            rtcp_packets_in: m.rtcp_in.packets as i64,
            rtcp_bytes_in: m.rtcp_in.bytes as i64,
            rtp_packets_out: m.rtp_out.packets as i64,
            rtp_bytes_out: m.rtp_out.bytes as i64,
            rtcp_packets_out: m.rtcp_out.packets as i64,
            rtcp_bytes_out: m.rtcp_out.bytes as i64,
            first_packet_time: time(first),
            last_packet_time: time(last),
            expected_packets: m.expected as i64,
            lost_packets: m.lost,
            duplicate_packets: m.duplicates as i64,
            out_of_order_packets: m.out_of_order as i64,
            jitter_ms: m.jitter_ms,
            max_jitter_ms: m.max_jitter_ms,
            ssrc: i64::from(m.ssrc),
            dropped_unknown_source: m.drops.unknown_source as i64,
            dropped_before_latching: m.drops.before_latching as i64,
            dropped_too_short: m.drops.too_short as i64,
            dropped_not_rtp: m.drops.not_rtp as i64,
            dropped_no_destination: m.drops.no_destination as i64,
            dropped_send_error: m.drops.send_error as i64,
            recorded_packets: m.recorded_packets as i64,
            source_changes: i64::from(m.source_changes),
        }
    }
}

/// A value bound to a statement or read from a row, the same for both databases.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Value {
    Null,
    Int(i64),
    Real(f64),
    Text(String),
    Bool(bool),
}

impl From<i64> for Value {
    fn from(v: i64) -> Self {
        Self::Int(v)
    }
}
impl From<f64> for Value {
    fn from(v: f64) -> Self {
        Self::Real(v)
    }
}
impl From<bool> for Value {
    fn from(v: bool) -> Self {
        Self::Bool(v)
    }
}
impl From<&str> for Value {
    fn from(v: &str) -> Self {
        Self::Text(v.to_owned())
    }
}
impl From<String> for Value {
    fn from(v: String) -> Self {
        Self::Text(v)
    }
}
impl From<&String> for Value {
    fn from(v: &String) -> Self {
        Self::Text(v.clone())
    }
}
impl<T: Into<Self> + Clone> From<&Option<T>> for Value {
    fn from(v: &Option<T>) -> Self {
        v.clone().map_or(Self::Null, Into::into)
    }
}

/// `cdr` columns in insert order (the `id` key is the database's).
pub const CDR_COLUMNS: &[&str] = &[
    "call_id",
    "b_call_id",
    "caller",
    "callee",
    "start_time",
    "answer_time",
    "end_time",
    "duration_ms",
    "disposition",
    "sip_status",
    "hangup_side",
    "media_mode",
    "media_node",
    "caller_audio_packets",
    "callee_audio_packets",
    "caller_audio_bytes",
    "callee_audio_bytes",
    "total_bytes_relayed",
    "recording_packets",
    "has_recording",
    "recording_path",
    "media_verdict",
    "media_diagnosis",
    "end_reason",
    "media_address",
];

fn cdr_values(c: &Cdr) -> Vec<Value> {
    vec![
        (&c.call_id).into(),
        (&c.b_call_id).into(),
        (&c.caller).into(),
        (&c.callee).into(),
        c.start_time_ms.into(),
        (&c.answer_time_ms).into(),
        c.end_time_ms.into(),
        c.duration_ms.into(),
        (&c.disposition).into(),
        c.sip_status.into(),
        (&c.hangup_side).into(),
        (&c.media_mode).into(),
        (&c.media_node).into(),
        c.caller_audio_packets.into(),
        c.callee_audio_packets.into(),
        c.caller_audio_bytes.into(),
        c.callee_audio_bytes.into(),
        c.total_bytes_relayed.into(),
        c.recording_packets.into(),
        c.has_recording.into(),
        (&c.recording_path).into(),
        (&c.media_verdict).into(),
        (&c.media_diagnosis).into(),
        (&c.end_reason).into(),
        (&c.media_address).into(),
    ]
}

/// `cdr_media` columns in insert order.
pub const CDR_MEDIA_COLUMNS: &[&str] = &[
    "call_id",
    "start_time",
    "leg",
    "media_index",
    "kind",
    "direction",
    "local_rtp_port",
    "local_rtcp_port",
    "sdp_rtp_address",
    "sdp_rtcp_address",
    "latched_rtp_source",
    "latched_rtcp_source",
    "rtp_packets_in",
    "rtp_bytes_in",
    "rtcp_packets_in",
    "rtcp_bytes_in",
    "rtp_packets_out",
    "rtp_bytes_out",
    "rtcp_packets_out",
    "rtcp_bytes_out",
    "first_packet_time",
    "last_packet_time",
    "expected_packets",
    "lost_packets",
    "duplicate_packets",
    "out_of_order_packets",
    "jitter_ms",
    "max_jitter_ms",
    "ssrc",
    "dropped_unknown_source",
    "dropped_before_latching",
    "dropped_too_short",
    "dropped_not_rtp",
    "dropped_no_destination",
    "dropped_send_error",
    "recorded_packets",
    "source_changes",
];

fn media_values(c: &Cdr, m: &CdrMedia) -> Vec<Value> {
    vec![
        (&c.call_id).into(),
        c.start_time_ms.into(),
        (&m.leg).into(),
        m.media_index.into(),
        (&m.kind).into(),
        (&m.direction).into(),
        m.local_rtp_port.into(),
        m.local_rtcp_port.into(),
        (&m.sdp_rtp_address).into(),
        (&m.sdp_rtcp_address).into(),
        (&m.latched_rtp_source).into(),
        (&m.latched_rtcp_source).into(),
        m.rtp_packets_in.into(),
        m.rtp_bytes_in.into(),
        m.rtcp_packets_in.into(),
        m.rtcp_bytes_in.into(),
        m.rtp_packets_out.into(),
        m.rtp_bytes_out.into(),
        m.rtcp_packets_out.into(),
        m.rtcp_bytes_out.into(),
        (&m.first_packet_time).into(),
        (&m.last_packet_time).into(),
        m.expected_packets.into(),
        m.lost_packets.into(),
        m.duplicate_packets.into(),
        m.out_of_order_packets.into(),
        m.jitter_ms.into(),
        m.max_jitter_ms.into(),
        m.ssrc.into(),
        m.dropped_unknown_source.into(),
        m.dropped_before_latching.into(),
        m.dropped_too_short.into(),
        m.dropped_not_rtp.into(),
        m.dropped_no_destination.into(),
        m.dropped_send_error.into(),
        m.recorded_packets.into(),
        m.source_changes.into(),
    ]
}

/// Schema migrations, applied in order; the index + 1 is the version. `{id}` becomes the
/// database's auto-increment key. Version 1 is the schema of the first release (kept byte for
/// byte so existing databases upgrade).
pub const MIGRATIONS: &[&str] = &[
    "CREATE TABLE cdr (
    {id},
    call_id TEXT NOT NULL,
    b_call_id TEXT NOT NULL,
    caller TEXT NOT NULL,
    callee TEXT NOT NULL,
    start_time BIGINT NOT NULL,
    answer_time BIGINT,
    end_time BIGINT NOT NULL,
    duration_ms BIGINT NOT NULL,
    disposition TEXT NOT NULL,
    sip_status INTEGER NOT NULL,
    hangup_side TEXT NOT NULL,
    media_mode TEXT NOT NULL,
    media_node TEXT,
    caller_audio_packets BIGINT NOT NULL,
    callee_audio_packets BIGINT NOT NULL,
    caller_audio_bytes BIGINT NOT NULL,
    callee_audio_bytes BIGINT NOT NULL,
    total_bytes_relayed BIGINT NOT NULL,
    recording_packets BIGINT NOT NULL,
    has_recording BOOLEAN NOT NULL,
    recording_path TEXT,
    media_verdict TEXT NOT NULL,
    media_diagnosis TEXT NOT NULL
);
CREATE INDEX cdr_call_id ON cdr (call_id);
CREATE INDEX cdr_start_time ON cdr (start_time);",
    "ALTER TABLE cdr ADD COLUMN end_reason TEXT NOT NULL DEFAULT '';
ALTER TABLE cdr ADD COLUMN media_address TEXT;
CREATE UNIQUE INDEX cdr_call_id_start ON cdr (call_id, start_time);
CREATE TABLE cdr_media (
    {id},
    call_id TEXT NOT NULL,
    start_time BIGINT NOT NULL,
    leg TEXT NOT NULL,
    media_index BIGINT NOT NULL,
    kind TEXT NOT NULL,
    direction TEXT NOT NULL,
    local_rtp_port BIGINT NOT NULL,
    local_rtcp_port BIGINT NOT NULL,
    sdp_rtp_address TEXT NOT NULL,
    sdp_rtcp_address TEXT NOT NULL,
    latched_rtp_source TEXT NOT NULL,
    latched_rtcp_source TEXT NOT NULL,
    rtp_packets_in BIGINT NOT NULL,
    rtp_bytes_in BIGINT NOT NULL,
    rtcp_packets_in BIGINT NOT NULL,
    rtcp_bytes_in BIGINT NOT NULL,
    rtp_packets_out BIGINT NOT NULL,
    rtp_bytes_out BIGINT NOT NULL,
    rtcp_packets_out BIGINT NOT NULL,
    rtcp_bytes_out BIGINT NOT NULL,
    first_packet_time BIGINT,
    last_packet_time BIGINT,
    expected_packets BIGINT NOT NULL,
    lost_packets BIGINT NOT NULL,
    duplicate_packets BIGINT NOT NULL,
    out_of_order_packets BIGINT NOT NULL,
    jitter_ms DOUBLE PRECISION NOT NULL,
    max_jitter_ms DOUBLE PRECISION NOT NULL,
    ssrc BIGINT NOT NULL,
    dropped_unknown_source BIGINT NOT NULL,
    dropped_before_latching BIGINT NOT NULL,
    dropped_too_short BIGINT NOT NULL,
    dropped_not_rtp BIGINT NOT NULL,
    dropped_no_destination BIGINT NOT NULL,
    dropped_send_error BIGINT NOT NULL,
    recorded_packets BIGINT NOT NULL,
    source_changes BIGINT NOT NULL
);
CREATE INDEX cdr_media_call_id ON cdr_media (call_id, start_time);",
    "CREATE TABLE cdr_open (
    call_id TEXT NOT NULL,
    start_time BIGINT NOT NULL,
    instance TEXT NOT NULL,
    record TEXT NOT NULL,
    PRIMARY KEY (call_id, start_time)
);
CREATE INDEX cdr_open_instance ON cdr_open (instance);
CREATE TABLE cdr_instance (
    instance TEXT NOT NULL PRIMARY KEY,
    alive_at BIGINT NOT NULL
);",
];

/// A store error; `transient` ones (the database unreachable, a connection broken) are
/// retried, the others are reported as configuration or schema problems.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct StoreError {
    pub message: String,
    pub transient: bool,
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        let transient = matches!(
            e.sqlite_error_code(),
            Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
        );
        Self {
            message: e.to_string(),
            transient,
        }
    }
}

impl From<postgres::Error> for StoreError {
    fn from(e: postgres::Error) -> Self {
        // Errors the server answered (bad password, missing database, SQL errors) are not
        // transient; everything about reaching it is.
        let transient = e.as_db_error().is_none();
        let message = e.as_db_error().map_or_else(
            || {
                let mut text = e.to_string();
                let mut source = std::error::Error::source(&e);
                while let Some(inner) = source {
                    text = format!("{text}: {inner}");
                    source = inner.source();
                }
                text
            },
            |db| format!("{}: {}", db.code().code(), db.message()),
        );
        Self { message, transient }
    }
}

impl rusqlite::ToSql for Value {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        use rusqlite::types::{ToSqlOutput, ValueRef};
        Ok(match self {
            Self::Null => ToSqlOutput::Borrowed(ValueRef::Null),
            Self::Int(v) => ToSqlOutput::from(*v),
            Self::Real(v) => ToSqlOutput::from(*v),
            Self::Text(v) => ToSqlOutput::Borrowed(ValueRef::Text(v.as_bytes())),
            Self::Bool(v) => ToSqlOutput::from(*v),
        })
    }
}

impl postgres::types::ToSql for Value {
    fn to_sql(
        &self,
        ty: &postgres::types::Type,
        out: &mut postgres::types::private::BytesMut,
    ) -> Result<postgres::types::IsNull, Box<dyn std::error::Error + Sync + Send>> {
        use postgres::types::Type;
        match self {
            Self::Null => Ok(postgres::types::IsNull::Yes),
            Self::Int(v) if *ty == Type::INT4 => i32::try_from(*v)?.to_sql(ty, out),
            Self::Int(v) => v.to_sql(ty, out),
            Self::Real(v) => v.to_sql(ty, out),
            Self::Text(v) => v.to_sql(ty, out),
            Self::Bool(v) => v.to_sql(ty, out),
        }
    }

    fn accepts(ty: &postgres::types::Type) -> bool {
        use postgres::types::Type;
        [
            Type::INT8,
            Type::INT4,
            Type::FLOAT8,
            Type::TEXT,
            Type::VARCHAR,
            Type::BOOL,
        ]
        .contains(ty)
    }

    postgres::types::to_sql_checked!();
}

/// Forgets a call's open record once its CDR is written (in the same transaction).
const CLOSE_SQL: &str = "DELETE FROM cdr_open WHERE call_id = $1 AND start_time = $2";

/// The wall clock in milliseconds since the Unix epoch.
pub(crate) fn unix_ms_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// The idempotent insert of one row of `table` (`$1..$n` works on both databases).
fn insert_sql(table: &str, columns: &[&str]) -> String {
    let marks: Vec<String> = (1..=columns.len()).map(|i| format!("${i}")).collect();
    format!(
        "INSERT INTO {table} ({}) VALUES ({}) ON CONFLICT DO NOTHING",
        columns.join(", "),
        marks.join(", ")
    )
}

/// Where CDRs live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Sqlite(PathBuf),
    Postgres(String),
}

impl Target {
    /// Parses a `--cdr` URL.
    pub fn parse(url: &str) -> Result<Self, String> {
        if let Some(path) = url.strip_prefix("sqlite://") {
            if path.is_empty() {
                return Err("sqlite:// needs a file path, e.g. sqlite://cdr.db".into());
            }
            return Ok(Self::Sqlite(PathBuf::from(path)));
        }
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            postgres::Config::from_str(url).map_err(|e| format!("bad PostgreSQL URL: {e}"))?;
            return Ok(Self::Postgres(url.to_owned()));
        }
        Err("expected sqlite://PATH or postgres://USER@HOST/DB".into())
    }

    /// The URL without a password, for logs.
    pub fn display(&self) -> String {
        match self {
            Self::Sqlite(path) => format!("sqlite://{}", path.display()),
            Self::Postgres(url) => match (url.find("://"), url.rfind('@')) {
                (Some(scheme), Some(at)) if at > scheme => {
                    let userinfo = &url[scheme + 3..at];
                    let user = userinfo.split(':').next().unwrap_or("");
                    format!("{}{user}:***{}", &url[..scheme + 3], &url[at..])
                }
                _ => url.clone(),
            },
        }
    }
}

/// An open, migrated CDR database.
pub enum Store {
    Sqlite(rusqlite::Connection),
    Postgres(Box<postgres::Client>),
}

impl Store {
    /// Connects (creating the SQLite file if needed) and applies pending migrations.
    pub fn open(target: &Target) -> Result<Self, StoreError> {
        let mut store = match target {
            Target::Sqlite(path) => {
                let connection = rusqlite::Connection::open(path)?;
                connection.pragma_update(None, "journal_mode", "WAL")?;
                connection.pragma_update(None, "synchronous", "NORMAL")?;
                connection.busy_timeout(Duration::from_secs(5))?;
                Self::Sqlite(connection)
            }
            Target::Postgres(url) => {
                let mut config = postgres::Config::from_str(url).map_err(|e| StoreError {
                    message: e.to_string(),
                    transient: false,
                })?;
                if config.get_connect_timeout().is_none() {
                    config.connect_timeout(Duration::from_secs(3));
                }
                config
                    .keepalives(true)
                    .keepalives_idle(Duration::from_secs(30))
                    .tcp_user_timeout(Duration::from_secs(15))
                    .application_name("signaling-cdr");
                Self::Postgres(Box::new(config.connect(postgres::NoTls)?))
            }
        };
        store.migrate()?;
        Ok(store)
    }

    fn id_column(&self) -> &'static str {
        match self {
            Self::Sqlite(_) => "id INTEGER PRIMARY KEY",
            Self::Postgres(_) => "id BIGSERIAL PRIMARY KEY",
        }
    }

    /// The schema version the database is at.
    pub fn version(&mut self) -> Result<usize, StoreError> {
        let sql = "SELECT COALESCE(MAX(version), 0) FROM schema_version";
        Ok(match self {
            Self::Sqlite(c) => c.query_row(sql, [], |r| r.get::<_, i64>(0))? as usize,
            Self::Postgres(c) => c.query_one(sql, &[])?.get::<_, i32>(0) as usize,
        })
    }

    /// Applies pending migrations, each in its own transaction. Several signaling instances
    /// sharing one PostgreSQL database serialise on an advisory lock.
    pub fn migrate(&mut self) -> Result<(), StoreError> {
        self.migrate_to(MIGRATIONS.len())
    }

    /// Applies migrations up to `version` (tests build older schemas with it).
    pub fn migrate_to(&mut self, version: usize) -> Result<(), StoreError> {
        let create = "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)";
        let id = self.id_column();
        match self {
            Self::Sqlite(c) => {
                c.execute_batch(create)?;
                let current: i64 = c.query_row(
                    "SELECT COALESCE(MAX(version), 0) FROM schema_version",
                    [],
                    |r| r.get(0),
                )?;
                for (index, migration) in MIGRATIONS
                    .iter()
                    .enumerate()
                    .take(version)
                    .skip(current as usize)
                {
                    let transaction = c.transaction()?;
                    transaction.execute_batch(&migration.replace("{id}", id))?;
                    transaction.execute(
                        "INSERT INTO schema_version (version) VALUES (?1)",
                        [index as i64 + 1],
                    )?;
                    transaction.commit()?;
                }
            }
            Self::Postgres(c) => {
                let mut transaction = c.transaction()?;
                transaction.execute("SELECT pg_advisory_xact_lock(7411)", &[])?;
                transaction.batch_execute(create)?;
                let current: i32 = transaction
                    .query_one("SELECT COALESCE(MAX(version), 0) FROM schema_version", &[])?
                    .get(0);
                for (index, migration) in MIGRATIONS
                    .iter()
                    .enumerate()
                    .take(version)
                    .skip(current as usize)
                {
                    transaction.batch_execute(&migration.replace("{id}", id))?;
                    transaction.execute(
                        "INSERT INTO schema_version (version) VALUES ($1)",
                        &[&(index as i32 + 1)],
                    )?;
                }
                transaction.commit()?;
            }
        }
        Ok(())
    }

    /// Inserts a call's `cdr` row and its `cdr_media` rows in one transaction. Returns false
    /// when the call was already stored (same `call_id` and `start_time`): nothing is written
    /// twice.
    pub fn insert(&mut self, cdr: &Cdr) -> Result<bool, StoreError> {
        static CDR_SQL: LazyLock<String> = LazyLock::new(|| insert_sql("cdr", CDR_COLUMNS));
        static MEDIA_SQL: LazyLock<String> =
            LazyLock::new(|| insert_sql("cdr_media", CDR_MEDIA_COLUMNS));
        let (cdr_sql, media_sql) = (CDR_SQL.as_str(), MEDIA_SQL.as_str());
        match self {
            Self::Sqlite(c) => {
                let transaction = c.transaction()?;
                let values = cdr_values(cdr);
                let inserted = transaction
                    .prepare_cached(cdr_sql)?
                    .execute(rusqlite::params_from_iter(values.iter()))?;
                if inserted > 0 {
                    for m in &cdr.media {
                        let values = media_values(cdr, m);
                        transaction
                            .prepare_cached(media_sql)?
                            .execute(rusqlite::params_from_iter(values.iter()))?;
                    }
                }
                transaction
                    .prepare_cached(CLOSE_SQL)?
                    .execute(rusqlite::params![cdr.call_id, cdr.start_time_ms])?;
                transaction.commit()?;
                Ok(inserted > 0)
            }
            Self::Postgres(c) => {
                let mut transaction = c.transaction()?;
                let values = cdr_values(cdr);
                let refs: Vec<&(dyn postgres::types::ToSql + Sync)> =
                    values.iter().map(|v| v as _).collect();
                let inserted = transaction.execute(cdr_sql, &refs)? > 0;
                if inserted {
                    for m in &cdr.media {
                        let values = media_values(cdr, m);
                        let refs: Vec<&(dyn postgres::types::ToSql + Sync)> =
                            values.iter().map(|v| v as _).collect();
                        transaction.execute(media_sql, &refs)?;
                    }
                }
                transaction.execute(CLOSE_SQL, &[&cdr.call_id, &cdr.start_time_ms])?;
                transaction.commit()?;
                Ok(inserted)
            }
        }
    }

    /// Keeps (or updates) the durable record of a call that is up, as `instance`'s.
    pub fn keep_open(
        &mut self,
        instance: &str,
        call: &OpenCall,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        let record = serde_json::to_string(call).map_err(|e| StoreError {
            message: e.to_string(),
            transient: false,
        })?;
        const SQL: &str = "INSERT INTO cdr_open (call_id, start_time, instance, record) \
             VALUES ($1, $2, $3, $4) ON CONFLICT (call_id, start_time) \
             DO UPDATE SET record = excluded.record";
        match self {
            Self::Sqlite(c) => {
                c.prepare_cached(SQL)?.execute(rusqlite::params![
                    call.call_id,
                    call.start_time_ms,
                    instance,
                    record
                ])?;
            }
            Self::Postgres(c) => {
                c.execute(
                    SQL,
                    &[&call.call_id, &call.start_time_ms, &instance, &record],
                )?;
            }
        }
        self.alive(instance, now_ms)
    }

    /// Records that `instance` is alive at `now_ms` (its heartbeat: one row per instance).
    pub fn alive(&mut self, instance: &str, now_ms: i64) -> Result<(), StoreError> {
        const SQL: &str = "INSERT INTO cdr_instance (instance, alive_at) VALUES ($1, $2) \
             ON CONFLICT (instance) DO UPDATE SET alive_at = excluded.alive_at";
        match self {
            Self::Sqlite(c) => {
                c.prepare_cached(SQL)?
                    .execute(rusqlite::params![instance, now_ms])?;
            }
            Self::Postgres(c) => {
                c.execute(SQL, &[&instance, &now_ms])?;
            }
        }
        Ok(())
    }

    /// Open calls left by a process that stopped without ending them: `instance`'s own (this
    /// process is its successor; ask before its first heartbeat) and any whose instance's
    /// heartbeat is older than `stale_before_ms` (another instance that died). Each with the
    /// last time its instance was known alive.
    pub fn orphans(
        &mut self,
        instance: &str,
        stale_before_ms: i64,
    ) -> Result<Vec<(OpenCall, i64)>, StoreError> {
        const SQL: &str = "SELECT o.record, COALESCE(i.alive_at, 0) FROM cdr_open o \
             LEFT JOIN cdr_instance i ON i.instance = o.instance \
             WHERE o.instance = $1 OR COALESCE(i.alive_at, 0) < $2 ORDER BY o.start_time";
        let rows: Vec<(String, i64)> = match self {
            Self::Sqlite(c) => {
                let mut statement = c.prepare_cached(SQL)?;
                statement
                    .query_map(rusqlite::params![instance, stale_before_ms], |row| {
                        Ok((row.get(0)?, row.get(1)?))
                    })?
                    .collect::<Result<Vec<_>, _>>()?
            }
            Self::Postgres(c) => c
                .query(SQL, &[&instance, &stale_before_ms])?
                .iter()
                .map(|row| (row.get(0), row.get(1)))
                .collect(),
        };
        Ok(rows
            .into_iter()
            .filter_map(|(record, alive_at)| match serde_json::from_str(&record) {
                Ok(call) => Some((call, alive_at)),
                Err(error) => {
                    tracing::error!(%error, "unreadable open call record skipped");
                    None
                }
            })
            .collect())
    }

    /// Rows of `table` (`cdr` or `cdr_media`) whose `start_time` is in `[from_ms, to_ms)`, in
    /// start order, each as (column, value) pairs without the internal `id`.
    pub fn rows(
        &mut self,
        table: &str,
        from_ms: i64,
        to_ms: i64,
    ) -> Result<(Vec<String>, Vec<Vec<Value>>), StoreError> {
        let columns = match table {
            "cdr" => CDR_COLUMNS,
            "cdr_media" => CDR_MEDIA_COLUMNS,
            other => {
                return Err(StoreError {
                    message: format!("unknown table {other}"),
                    transient: false,
                });
            }
        };
        let sql = format!(
            "SELECT {} FROM {table} WHERE start_time >= $1 AND start_time < $2 ORDER BY start_time, id",
            columns.join(", ")
        );
        let names = columns.iter().map(|c| (*c).to_owned()).collect();
        let mut out = Vec::new();
        match self {
            Self::Sqlite(c) => {
                let mut statement = c.prepare(&sql)?;
                let mut rows = statement.query(rusqlite::params![from_ms, to_ms])?;
                while let Some(row) = rows.next()? {
                    let mut values = Vec::with_capacity(columns.len());
                    for i in 0..columns.len() {
                        use rusqlite::types::ValueRef;
                        values.push(match row.get_ref(i)? {
                            ValueRef::Null => Value::Null,
                            ValueRef::Integer(v) => Value::Int(v),
                            ValueRef::Real(v) => Value::Real(v),
                            ValueRef::Text(t) | ValueRef::Blob(t) => {
                                Value::Text(String::from_utf8_lossy(t).into_owned())
                            }
                        });
                    }
                    out.push(values);
                }
            }
            Self::Postgres(c) => {
                use postgres::types::Type;
                for row in c.query(sql.as_str(), &[&from_ms, &to_ms])? {
                    let mut values = Vec::with_capacity(columns.len());
                    for (i, column) in row.columns().iter().enumerate() {
                        let t = column.type_();
                        let value = if *t == Type::INT8 {
                            row.get::<_, Option<i64>>(i).map(Value::Int)
                        } else if *t == Type::INT4 {
                            row.get::<_, Option<i32>>(i).map(|v| Value::Int(v.into()))
                        } else if *t == Type::FLOAT8 {
                            row.get::<_, Option<f64>>(i).map(Value::Real)
                        } else if *t == Type::BOOL {
                            row.get::<_, Option<bool>>(i).map(Value::Bool)
                        } else {
                            row.get::<_, Option<String>>(i).map(Value::Text)
                        };
                        values.push(value.unwrap_or(Value::Null));
                    }
                    out.push(values);
                }
            }
        }
        Ok((names, out))
    }
}

/// Figures the writer publishes (as Prometheus series, see docs/metrics.md).
#[derive(Debug, Clone)]
pub struct WriterMetrics {
    pub queued: prometheus::IntGauge,
    pub written: prometheus::IntCounter,
    pub errors: prometheus::IntCounter,
    pub spooled: prometheus::IntCounter,
}

/// Tuning of the writer.
#[derive(Debug, Clone)]
pub struct WriterOptions {
    /// CDRs kept in memory while the database is unreachable; more go to the spool file.
    pub queue_limit: usize,
    /// Where CDRs go that could not be written (replayed at the next start).
    pub spool: PathBuf,
    /// How long a graceful shutdown keeps trying to reach the database.
    pub close_grace: Duration,
    /// Who this process is among the signaling instances sharing the database (its host and
    /// SIP address): the owner of the open call records it keeps.
    pub instance: String,
}

/// How often the writer records that this instance is alive: a crashed instance's calls end
/// at most this long before it did.
pub const HEARTBEAT: Duration = Duration::from_secs(2);
/// Another instance's open calls whose heartbeat is older than this are taken as orphans.
pub const ORPHANED_AFTER: Duration = Duration::from_secs(60);

enum Message {
    Write(Box<Cdr>),
    /// Keep a durable record of a call that is up (best effort: none while the database is
    /// unreachable).
    Open(Box<OpenCall>),
    /// The open calls a stopped process left, as found when the writer started.
    Orphans(mpsc::Sender<Vec<(OpenCall, i64)>>),
    /// Reply when everything queued before this message is stored (tests, admin).
    Flush(mpsc::Sender<()>),
}

/// A handle to the writer thread. [`CdrWriter::close`] writes what is queued (for up to the
/// close grace) and spools the rest.
pub struct CdrWriter {
    sender: Option<mpsc::Sender<Message>>,
    thread: Option<thread::JoinHandle<()>>,
}

impl CdrWriter {
    /// Connects once now so a bad URL, path, password or schema stops the start with a clear
    /// error; an unreachable database only warns (CDRs wait for it). Then starts the writer.
    pub fn start(
        target: Target,
        options: WriterOptions,
        metrics: WriterMetrics,
    ) -> Result<Self, StoreError> {
        // The first connection is made on the writer thread (the PostgreSQL client runs its
        // own runtime, which cannot start inside the caller's), and its outcome reported back.
        let (sender, receiver) = mpsc::channel::<Message>();
        let (opened_tx, opened_rx) = mpsc::channel::<Result<(), StoreError>>();
        let thread = thread::Builder::new()
            .name("cdr-writer".into())
            .spawn(move || {
                let store = match Store::open(&target) {
                    Ok(store) => Some(store),
                    Err(error) if error.transient => {
                        tracing::warn!(
                            cdr = %target.display(),
                            %error,
                            "CDR database unreachable at start; CDRs will be queued until it answers"
                        );
                        None
                    }
                    Err(error) => {
                        let _ = opened_tx.send(Err(error));
                        return;
                    }
                };
                let _ = opened_tx.send(Ok(()));
                Worker {
                    target,
                    options,
                    metrics,
                    store,
                    pending: VecDeque::new(),
                    replaying: None,
                    retry_at: Instant::now(),
                    backoff: MIN_BACKOFF,
                    outage_logged: false,
                    orphans: Vec::new(),
                }
                .run(&receiver);
            })
            .map_err(|e| StoreError {
                message: format!("cannot start the CDR writer thread: {e}"),
                transient: false,
            })?;
        match opened_rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(error)) => {
                let _ = thread.join();
                return Err(error);
            }
            Err(_) => {
                let _ = thread.join();
                return Err(StoreError {
                    message: "the CDR writer thread stopped at start".into(),
                    transient: false,
                });
            }
        }
        Ok(Self {
            sender: Some(sender),
            thread: Some(thread),
        })
    }

    /// Queues a CDR; never blocks.
    pub fn write(&self, cdr: Cdr) {
        if let Some(sender) = &self.sender
            && sender.send(Message::Write(Box::new(cdr))).is_err()
        {
            tracing::error!("CDR writer is gone; CDR lost");
        }
    }

    /// Keeps a durable record of a call that is up, until its CDR is written; never blocks.
    pub fn open(&self, call: OpenCall) {
        if let Some(sender) = &self.sender {
            let _ = sender.send(Message::Open(Box::new(call)));
        }
    }

    /// The open calls a stopped process left behind (this instance's predecessor's, and
    /// other instances' whose heartbeat had stopped), as found when the writer started, each
    /// with its last sign of life; taken once (empty afterwards, and when the database could
    /// not be asked).
    pub fn orphans(&self, timeout: Duration) -> Vec<(OpenCall, i64)> {
        let (tx, rx) = mpsc::channel();
        let Some(sender) = &self.sender else {
            return Vec::new();
        };
        if sender.send(Message::Orphans(tx)).is_err() {
            return Vec::new();
        }
        rx.recv_timeout(timeout).unwrap_or_default()
    }

    /// Waits until everything queued so far is stored (or `timeout` passes); false on timeout.
    pub fn flush(&self, timeout: Duration) -> bool {
        let (tx, rx) = mpsc::channel();
        let Some(sender) = &self.sender else {
            return false;
        };
        if sender.send(Message::Flush(tx)).is_err() {
            return false;
        }
        rx.recv_timeout(timeout).is_ok()
    }

    /// Writes what is queued (spooling what the database does not take within the close
    /// grace) and stops.
    pub fn close(mut self) {
        self.sender.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

const MIN_BACKOFF: Duration = Duration::from_millis(250);
const MAX_BACKOFF: Duration = Duration::from_secs(10);

struct Worker {
    target: Target,
    options: WriterOptions,
    metrics: WriterMetrics,
    store: Option<Store>,
    pending: VecDeque<Cdr>,
    /// The spool file being replayed and how many of its records are still pending.
    replaying: Option<(PathBuf, usize)>,
    retry_at: Instant,
    backoff: Duration,
    outage_logged: bool,
    /// Open calls a stopped process left, found at the start (taken by [`Message::Orphans`]).
    orphans: Vec<(OpenCall, i64)>,
}

impl Worker {
    fn run(mut self, receiver: &mpsc::Receiver<Message>) {
        // Before this instance's first heartbeat: its predecessor's last one is the end of
        // the calls it left.
        if let Some(store) = self.store.as_mut() {
            let stale_before = unix_ms_now() - ORPHANED_AFTER.as_millis() as i64;
            self.orphans = store
                .orphans(&self.options.instance, stale_before)
                .unwrap_or_else(|error| {
                    tracing::warn!(%error, "cannot read the open call records");
                    Vec::new()
                });
        }
        self.load_spool();
        let mut flushes: Vec<mpsc::Sender<()>> = Vec::new();
        let mut heartbeat = Instant::now();
        loop {
            self.metrics.queued.set(self.pending.len() as i64);
            if Instant::now() >= heartbeat {
                heartbeat = Instant::now() + HEARTBEAT;
                if let Some(store) = self.store.as_mut()
                    && let Err(error) = store.alive(&self.options.instance, unix_ms_now())
                {
                    tracing::warn!(%error, "cannot mark the open calls alive");
                }
            }
            let wait = if self.pending.is_empty() {
                HEARTBEAT
            } else {
                self.retry_at.saturating_duration_since(Instant::now())
            }
            .min(heartbeat.saturating_duration_since(Instant::now()));
            match receiver.recv_timeout(wait) {
                Ok(message) => self.accept(message, &mut flushes),
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            }
            // Take whatever else is already queued before touching the database.
            while let Ok(message) = receiver.try_recv() {
                self.accept(message, &mut flushes);
            }
            if Instant::now() >= self.retry_at {
                self.write_pending();
            }
            self.metrics.queued.set(self.pending.len() as i64);
            if self.pending.is_empty() {
                for flush in flushes.drain(..) {
                    let _ = flush.send(());
                }
            }
        }
        // Graceful close: keep trying for the grace period, then spool what is left.
        let deadline = Instant::now() + self.options.close_grace;
        while !self.pending.is_empty() && Instant::now() < deadline {
            if Instant::now() >= self.retry_at {
                self.write_pending();
            } else {
                thread::sleep(
                    self.retry_at
                        .min(deadline)
                        .saturating_duration_since(Instant::now()),
                );
            }
        }
        if !self.pending.is_empty() {
            let left: Vec<Cdr> = self.pending.drain(..).collect();
            self.spool(&left);
        }
        self.metrics.queued.set(0);
    }

    fn accept(&mut self, message: Message, flushes: &mut Vec<mpsc::Sender<()>>) {
        match message {
            Message::Write(cdr) => {
                if self.pending.len() >= self.options.queue_limit {
                    self.spool(std::slice::from_ref(&cdr));
                } else {
                    self.pending.push_back(*cdr);
                }
            }
            Message::Flush(reply) => flushes.push(reply),
            Message::Open(call) => {
                let Some(store) = self.store.as_mut() else {
                    tracing::debug!(call_id = %call.call_id, "database unreachable: no durable record of the call");
                    return;
                };
                if let Err(error) = store.keep_open(&self.options.instance, &call, unix_ms_now()) {
                    tracing::warn!(call_id = %call.call_id, %error, "cannot keep a durable record of the call");
                }
            }
            Message::Orphans(reply) => {
                let _ = reply.send(std::mem::take(&mut self.orphans));
            }
        }
    }

    /// Writes pending CDRs in order until the queue is empty or the database fails.
    fn write_pending(&mut self) {
        while let Some(cdr) = self.pending.pop_front() {
            if self.store.is_none() {
                match Store::open(&self.target) {
                    Ok(store) => {
                        if self.outage_logged {
                            tracing::info!(
                                cdr = %self.target.display(),
                                queued = self.pending.len(),
                                "CDR database reachable again; writing the queue"
                            );
                        }
                        self.store = Some(store);
                    }
                    Err(error) => {
                        self.pending.push_front(cdr);
                        self.failed(&error);
                        return;
                    }
                }
            }
            let Some(store) = self.store.as_mut() else {
                self.pending.push_front(cdr);
                return;
            };
            match store.insert(&cdr) {
                Ok(inserted) => {
                    if !inserted {
                        tracing::info!(call_id = %cdr.call_id, "CDR already stored; skipped");
                    }
                    self.metrics.written.inc();
                    self.backoff = MIN_BACKOFF;
                    self.outage_logged = false;
                    self.replayed_one();
                }
                Err(error) => {
                    if !error.transient && self.store_is_alive() {
                        // The database rejected this row itself (a constraint, a bad value):
                        // retrying would block every later CDR behind it.
                        tracing::error!(
                            call_id = %cdr.call_id,
                            %error,
                            "CDR rejected by the database; moved to the spool file"
                        );
                        self.metrics.errors.inc();
                        self.spool(&[cdr]);
                        self.replayed_one();
                        continue;
                    }
                    self.pending.push_front(cdr);
                    self.store = None;
                    self.failed(&error);
                    return;
                }
            }
        }
    }

    /// Whether the connection still answers (a failed insert on a dead connection is an
    /// outage, not a bad row).
    fn store_is_alive(&mut self) -> bool {
        match self.store.as_mut() {
            Some(Store::Sqlite(_)) => true,
            Some(Store::Postgres(c)) => c.is_valid(Duration::from_secs(2)).is_ok(),
            None => false,
        }
    }

    fn failed(&mut self, error: &StoreError) {
        self.metrics.errors.inc();
        if !self.outage_logged {
            tracing::error!(
                cdr = %self.target.display(),
                %error,
                queued = self.pending.len(),
                "CDR database unavailable; CDRs are queued and retried"
            );
            self.outage_logged = true;
        }
        self.retry_at = Instant::now() + self.backoff;
        self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
    }

    /// Appends CDRs to the spool file (one JSON object per line).
    fn spool(&self, cdrs: &[Cdr]) {
        let result = (|| -> std::io::Result<()> {
            let mut file = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.options.spool)?;
            for cdr in cdrs {
                let line = serde_json::to_string(cdr).map_err(std::io::Error::other)?;
                writeln!(file, "{line}")?;
            }
            file.sync_data()
        })();
        match result {
            Ok(()) => {
                self.metrics.spooled.inc_by(cdrs.len() as u64);
                tracing::warn!(
                    count = cdrs.len(),
                    spool = %self.options.spool.display(),
                    "CDRs written to the spool file; the next start replays them"
                );
            }
            Err(error) => {
                for cdr in cdrs {
                    // Last resort: the record in the log, whole.
                    tracing::error!(
                        spool = %self.options.spool.display(),
                        %error,
                        cdr = %serde_json::to_string(cdr).unwrap_or_default(),
                        "CDR could not be stored or spooled"
                    );
                }
            }
        }
    }

    /// Moves a spool file left by an earlier run into the queue. The file is renamed first
    /// and removed once every record from it is stored, so a crash meanwhile loses nothing.
    fn load_spool(&mut self) {
        let spool = &self.options.spool;
        let replay = spool.with_extension("replaying");
        let mut sources = Vec::new();
        if replay.exists() {
            sources.push(replay.clone());
        }
        if spool.exists() {
            sources.push(spool.clone());
        }
        if sources.is_empty() {
            return;
        }
        let mut records = Vec::new();
        for path in &sources {
            let Ok(file) = File::open(path) else {
                continue;
            };
            for line in BufReader::new(file).lines().map_while(Result::ok) {
                match serde_json::from_str::<Cdr>(&line) {
                    Ok(cdr) => records.push(cdr),
                    Err(error) if !line.trim().is_empty() => {
                        tracing::error!(%error, line, "unreadable line in the CDR spool file; kept in the log only");
                    }
                    Err(_) => {}
                }
            }
        }
        // One file to replay from now on.
        let merged = (|| -> std::io::Result<()> {
            let mut file = File::create(replay.with_extension("replaying.tmp"))?;
            for cdr in &records {
                let line = serde_json::to_string(cdr).map_err(std::io::Error::other)?;
                writeln!(file, "{line}")?;
            }
            file.sync_data()?;
            std::fs::rename(replay.with_extension("replaying.tmp"), &replay)?;
            if spool.exists() {
                std::fs::remove_file(spool)?;
            }
            Ok(())
        })();
        if let Err(error) = merged {
            tracing::error!(%error, spool = %spool.display(), "cannot prepare the CDR spool replay; will retry at next start");
            return;
        }
        tracing::info!(
            count = records.len(),
            spool = %spool.display(),
            "replaying CDRs left in the spool file"
        );
        self.replaying = Some((replay, records.len()));
        self.pending.extend(records);
        if self.replaying.as_ref().is_some_and(|(_, n)| *n == 0) {
            self.replayed_one();
        }
    }

    fn replayed_one(&mut self) {
        if let Some((path, left)) = self.replaying.as_mut() {
            *left = left.saturating_sub(1);
            if *left == 0 {
                let _ = std::fs::remove_file(&*path);
                self.replaying = None;
            }
        }
    }
}

/// Path of the spool file beside `--cdr` when none is configured.
pub fn default_spool(target: &Target) -> PathBuf {
    match target {
        Target::Sqlite(path) => {
            let mut name = path.file_name().unwrap_or_default().to_os_string();
            name.push(".spool");
            path.with_file_name(name)
        }
        Target::Postgres(_) => Path::new("cdr-spool.jsonl").to_path_buf(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_parse_and_hide_passwords() {
        assert_eq!(
            Target::parse("sqlite://cdr.db").unwrap(),
            Target::Sqlite("cdr.db".into())
        );
        assert_eq!(
            Target::parse("sqlite:///var/lib/x.db").unwrap(),
            Target::Sqlite("/var/lib/x.db".into())
        );
        assert!(Target::parse("sqlite://").is_err());
        assert!(Target::parse("mysql://x").is_err());
        let pg = Target::parse("postgres://cdr:secret@db.example:5432/calls").unwrap();
        assert_eq!(pg.display(), "postgres://cdr:***@db.example:5432/calls");
        assert_eq!(
            default_spool(&Target::Sqlite("/data/cdr.db".into())),
            PathBuf::from("/data/cdr.db.spool")
        );
    }

    #[test]
    fn values_bind_options_as_null() {
        assert_eq!(Value::from(&None::<i64>), Value::Null);
        assert_eq!(Value::from(&Some(5i64)), Value::Int(5));
        assert_eq!(cdr_values(&Cdr::default()).len(), CDR_COLUMNS.len());
        assert_eq!(
            media_values(&Cdr::default(), &CdrMedia::default()).len(),
            CDR_MEDIA_COLUMNS.len()
        );
    }
}
