//! Call detail records (docs/cdr.md): one row per call in `cdr` and one row per media
//! line and leg in `cdr_media`, in SQLite (`sqlite://PATH`) or PostgreSQL (`postgres://...`)
//! with the same versioned schema.
//!
//! Writes happen on a dedicated thread ([`CdrWriter`]) so that database latency never reaches
//! SIP handling. When the database is down, CDRs wait in memory (up to `queue_limit`; beyond
//! that they go to the spool file) and are retried with backoff; on shutdown whatever could not
//! be written within the grace period goes to the spool file, which the next start replays
//! first. Inserts are idempotent (`call_id`, `start_time` is unique), so a replay after a crash
//! between a commit and the spool cleanup writes nothing twice.
//!
//! The module is laid out as the store is: `schema` (columns, bound values, migrations),
//! `store` (the target, the open database and its queries on SQLite and PostgreSQL),
//! `writer` (the thread that writes, queues through outages and keeps the open calls'
//! records) and its spool file.

pub(crate) mod completion;
pub mod diagnosis;
mod schema;
mod store;
mod writer;

use serde::{Deserialize, Serialize};

use crate::cdr::diagnosis::MediaFigures;

pub use schema::{CDR_COLUMNS, CDR_MEDIA_COLUMNS, MIGRATIONS, Value};
pub use store::{Orphan, Store, StoreError, Target};
pub use writer::{
    CdrWriter, HEARTBEAT, ORPHANED_AFTER, WriterMetrics, WriterOptions, default_spool,
};

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
    /// The `call_id` of the call this pairing was transferred out of (docs/call-features.md).
    #[serde(default)]
    pub transferred_from: Option<String>,
    /// The `call_id` of the pairing this call was transferred into.
    #[serde(default)]
    pub transferred_to: Option<String>,
    /// The contact that answered on the callee side (one device of a user, a redirect's or a
    /// forward's target).
    #[serde(default)]
    pub callee_contact: Option<String>,
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
    /// The `call_id` of the call this pairing was transferred out of.
    #[serde(default)]
    pub transferred_from: Option<String>,
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
            expected_packets: m.quality.expected as i64,
            lost_packets: m.quality.lost,
            duplicate_packets: m.quality.duplicates as i64,
            out_of_order_packets: m.quality.out_of_order as i64,
            jitter_ms: m.quality.jitter_ms,
            max_jitter_ms: m.quality.max_jitter_ms,
            ssrc: i64::from(m.quality.ssrc),
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

/// The wall clock in milliseconds since the Unix epoch.
pub(crate) fn unix_ms_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}
