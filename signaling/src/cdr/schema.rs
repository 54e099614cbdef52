//! The CDR tables: their columns in insert order, the values bound to them (the same for
//! both databases) and the versioned migrations that create them.

use serde::Serialize;

use super::{Cdr, CdrMedia};

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
    "transferred_from",
    "transferred_to",
    "callee_contact",
];

pub(super) fn cdr_values(c: &Cdr) -> Vec<Value> {
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
        (&c.transferred_from).into(),
        (&c.transferred_to).into(),
        (&c.callee_contact).into(),
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

pub(super) fn media_values(c: &Cdr, m: &CdrMedia) -> Vec<Value> {
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
    "ALTER TABLE cdr ADD COLUMN transferred_from TEXT;
ALTER TABLE cdr ADD COLUMN transferred_to TEXT;
ALTER TABLE cdr ADD COLUMN callee_contact TEXT;",
];

/// Forgets a call's open record once its CDR is written (in the same transaction).
pub(super) const CLOSE_SQL: &str = "DELETE FROM cdr_open WHERE call_id = $1 AND start_time = $2";

/// The idempotent insert of one row of `table` (`$1..$n` works on both databases).
pub(super) fn insert_sql(table: &str, columns: &[&str]) -> String {
    let marks: Vec<String> = (1..=columns.len()).map(|i| format!("${i}")).collect();
    format!(
        "INSERT INTO {table} ({}) VALUES ({}) ON CONFLICT DO NOTHING",
        columns.join(", "),
        marks.join(", ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

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
