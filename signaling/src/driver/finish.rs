//! Finishing calls: releasing a call's media and writing its CDR row, the durable record of a
//! call that is up (`cdr_open`), and completing the CDRs of calls a stopped process left up.

use std::sync::Arc;
use std::time::Duration;

use service_kit::clock::WallClock;

use super::nodes::EvidenceMap;
use crate::call::{CallId, CallRecord, Endpoint};
use crate::cdr::completion::{Release, cdr_row};
use crate::cdr::{Cdr, CdrWriter, OpenCall};
use crate::media::MediaError;
use crate::media::pool::Pool;
use crate::metrics::Metrics;
use crate::sip::SipCallId;

/// Releases the call's media (if relayed) and builds its CDR row ([`cdr_row`]).
pub(super) async fn complete_record(
    pool: &Pool,
    evidence: &EvidenceMap,
    clock: &WallClock,
    record: CallRecord,
) -> Cdr {
    let seen = evidence
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .remove(&record.call_id)
        .unwrap_or_default();
    let node = record.media_endpoint.as_ref().and_then(|e| pool.node(e));
    let release = match (record.relayed, node, record.media_endpoint.as_ref()) {
        (true, Some(node), _) => match node
            .client
            .release(&record.call_id, record.hangup_side.as_str())
            .await
        {
            Ok(stats) => Release::Released(stats),
            Err(error) => {
                tracing::error!(call_id = %record.call_id, %error, "media release failed; CDR without final counts");
                Release::Failed(error)
            }
        },
        // A call a stopped process left: its node is not one of this process's (an embedded
        // proxy dies with its process).
        (true, None, Some(endpoint)) => Release::Failed(MediaError::Unavailable(format!(
            "{endpoint} is not a media proxy of this process"
        ))),
        _ => Release::NotRelayed,
    };
    cdr_row(&record, &release, &seen, clock)
}

/// The durable record of a call that is up (`cdr_open`).
pub(super) fn open_call(record: &CallRecord, clock: &WallClock) -> OpenCall {
    OpenCall {
        call_id: record.call_id.to_string(),
        b_call_id: record.b_call_id_text(),
        caller: record.caller.clone(),
        callee: record.callee.clone(),
        start_time_ms: clock.unix_ms(record.start) as i64,
        answer_time_ms: clock.unix_ms(record.answer.unwrap_or(record.end)) as i64,
        media_mode: record.media_mode.as_str().to_owned(),
        media_node: record.media_node.clone(),
        media_endpoint: record.media_endpoint.as_ref().map(ToString::to_string),
        relayed: record.relayed,
        media_address: record.media_address.map(|a| a.to_string()),
        transferred_from: record.transferred_from.as_ref().map(ToString::to_string),
    }
}

/// The record of a call a stopped process left up, ended at its last sign of life.
///
/// None for a record whose call id cannot be a call's key: none is ever written (the key was
/// checked when the call's INVITE arrived), so such a row was not written by signaling.
fn orphan_record(call: &OpenCall, alive_at_ms: i64, clock: &WallClock) -> Option<CallRecord> {
    let at = |unix_ms: i64| clock.at(u64::try_from(unix_ms).unwrap_or(0));
    let answer = at(call.answer_time_ms);
    let call_id = match CallId::parse(&call.call_id) {
        Ok(call_id) => call_id,
        Err(error) => {
            tracing::error!(call_id = %call.call_id, %error, "a durable call record with an unusable call id; skipped");
            return None;
        }
    };
    Some(CallRecord {
        call_id,
        b_call_id: (!call.b_call_id.is_empty()).then(|| SipCallId::new(&call.b_call_id)),
        caller: call.caller.clone(),
        callee: call.callee.clone(),
        start: at(call.start_time_ms),
        answer: Some(answer),
        end: at(alive_at_ms.max(call.answer_time_ms)),
        disposition: crate::call::Disposition::Answered,
        sip_status: 200,
        hangup_side: crate::call::HangupSide::System,
        media_mode: call
            .media_mode
            .parse()
            .unwrap_or(crate::config::MediaMode::Relay),
        media_node: call.media_node.clone(),
        media_endpoint: call.media_endpoint.as_deref().map(Endpoint::new),
        media_moves: Vec::new(),
        relayed: call.relayed,
        media_address: call.media_address.as_deref().and_then(|a| a.parse().ok()),
        end_reason: crate::call::CRASHED.to_owned(),
        recording: crate::call::RecordingIntent::default(),
        transferred_from: call
            .transferred_from
            .as_deref()
            .and_then(|k| CallId::parse(k).ok()),
        transferred_to: None,
        callee_contact: None,
    })
}

/// Completes the CDRs of the calls a stopped signaling process left up: its own
/// predecessor's (this instance after a crash or kill -9) and those of other instances whose
/// heartbeat stopped. Each is released on its node if this process knows the node (which
/// then answers the final figures it kept), and written ended by the system at its last
/// sign of life.
pub(super) async fn complete_orphans(
    pool: &Pool,
    cdr: &Arc<CdrWriter>,
    metrics: &Metrics,
    evidence: &EvidenceMap,
    clock: &WallClock,
) {
    let reader = cdr.clone();
    let orphans = tokio::task::spawn_blocking(move || reader.orphans(Duration::from_secs(10)))
        .await
        .unwrap_or_default();
    if orphans.is_empty() {
        return;
    }
    tracing::warn!(
        calls = orphans.len(),
        "calls were up when a signaling process stopped; completing their CDRs"
    );
    for (call, alive_at_ms) in orphans {
        let Some(record) = orphan_record(&call, alive_at_ms, clock) else {
            continue;
        };
        let row = complete_record(pool, evidence, clock, record).await;
        write_row(metrics, cdr, row);
    }
}

/// Counts a finished call's row, logs its verdict and hands it to the CDR writer.
pub(super) fn write_row(metrics: &Metrics, cdr: &CdrWriter, row: Cdr) {
    metrics.calls.with_label_values(&[&row.disposition]).inc();
    metrics
        .verdicts
        .with_label_values(&[&row.media_verdict])
        .inc();
    tracing::info!(
        call_id = %row.call_id,
        disposition = %row.disposition,
        verdict = %row.media_verdict,
        caller_packets = row.caller_audio_packets,
        callee_packets = row.callee_audio_packets,
        diagnosis = %row.media_diagnosis,
        "media verdict"
    );
    cdr.write(row);
}
