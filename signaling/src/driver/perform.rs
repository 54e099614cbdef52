//! Performing the core's outputs: SIP to send, media proxy requests (allocations, moves,
//! updates, releases, recordings) in spawned tasks that report back as inputs, counters, and
//! finished calls handed to [`super::finish`]; and answering the admin endpoints' queries.

use std::sync::Arc;
use std::time::Instant;

use service_kit::clock::WallClock;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use super::finish::{complete_record, open_call, write_row};
use super::nodes::EvidenceMap;
use super::transport::{Connections, send};
use crate::admin::{AdminQuery, RecordingError};
use crate::call::{Core, Input, Output, RecordingTarget};
use crate::cdr::CdrWriter;
use crate::media::pool::Pool;
use crate::media::{MediaError, Recording, RecordingAction};
use crate::metrics::Metrics;

/// What performing the core's outputs uses, borrowed from the serving loop: the SIP
/// transports, the input channel that spawned work reports back on, the media proxies, the
/// metrics, and what finishing a call needs.
pub(super) struct Performer<'a> {
    pub(super) udp: &'a UdpSocket,
    pub(super) connections: &'a Connections,
    pub(super) inputs: &'a mpsc::Sender<Input>,
    pub(super) pool: &'a Pool,
    pub(super) metrics: &'a Arc<Metrics>,
    pub(super) cdr: &'a Arc<CdrWriter>,
    pub(super) evidence: &'a EvidenceMap,
    pub(super) clock: &'a WallClock,
}

impl Performer<'_> {
    /// Performs one output of the core. SIP is sent before the next output is taken; anything
    /// slow runs in a spawned task (a finished call's in `finishing`, which the end of serving
    /// waits for).
    pub(super) async fn perform(&self, output: Output, finishing: &mut JoinSet<()>) {
        let Self {
            udp,
            connections,
            inputs,
            pool,
            metrics,
            cdr,
            evidence,
            clock,
        } = *self;
        match output {
            Output::Send { to, data } => {
                metrics.response(&data);
                send(udp, connections, inputs, to, data).await;
            }
            Output::Allocate {
                call,
                call_id,
                offer,
                offer_leg,
                reflect,
            } => {
                let pool = pool.clone();
                let inputs = inputs.clone();
                tokio::spawn(async move {
                    let result = pool.place(&call_id, &offer, offer_leg, reflect).await;
                    let _ = inputs.send(Input::MediaReady { call, result }).await;
                });
            }
            Output::Relocate {
                call,
                call_id,
                caller,
                callee,
                lost,
                reflect,
            } => {
                let pool = pool.clone();
                let inputs = inputs.clone();
                let metrics = metrics.clone();
                tokio::spawn(async move {
                    let result = pool
                        .relocate(&call_id, &caller, &callee, lost.as_ref(), reflect)
                        .await;
                    let outcome = if result.is_ok() { "moved" } else { "failed" };
                    metrics.media_moves.with_label_values(&[outcome]).inc();
                    let _ = inputs.send(Input::Relocated { call, result }).await;
                    // The session left behind: freed now if the node is only cut off
                    // (a dead node's release just fails; its lease covers it).
                    if let Some(old) = lost.and_then(|lost| pool.node(&lost)) {
                        let _ = old.client.release(&call_id, "released").await;
                    }
                });
            }
            Output::UpdateMedia {
                endpoint,
                call_id,
                leg,
                sdp,
            } => {
                let Some(node) = pool.node(&endpoint) else {
                    return;
                };
                tokio::spawn(async move {
                    if let Err(error) = node.client.update(&call_id, leg, &sdp).await {
                        tracing::warn!(%call_id, leg = leg.as_str(), %error, "media update failed");
                    }
                });
            }
            Output::ReleaseStale { endpoint, call_id } => {
                let Some(node) = pool.node(&endpoint) else {
                    return;
                };
                let metrics = metrics.clone();
                tokio::spawn(async move {
                    let name = node.name();
                    match node.client.release(&call_id, "stale").await {
                        Ok(_) => {
                            tracing::info!(%call_id, node = %name, "stale media session released (no call of ours is on that node)");
                            metrics.sessions_swept.with_label_values(&[&name]).inc();
                        }
                        Err(error) => {
                            tracing::warn!(%call_id, node = %name, %error, "release of a stale media session failed");
                        }
                    }
                });
            }
            Output::ReleaseMedia { endpoint, call_id } => {
                let Some(node) = pool.node(&endpoint) else {
                    return;
                };
                tokio::spawn(async move {
                    if let Err(error) = node.client.release(&call_id, "released").await {
                        tracing::warn!(%call_id, %error, "release of an orphaned media session failed");
                    }
                });
            }
            Output::Recording { target, action } => {
                let (pool, metrics, inputs) = (pool.clone(), metrics.clone(), inputs.clone());
                tokio::spawn(async move {
                    let _ = recording(&pool, &metrics, &inputs, target, action).await;
                });
            }
            Output::AuthFailed { method } => {
                metrics.auth_failures.with_label_values(&[method]).inc();
            }
            Output::Banned { scope } => {
                metrics.auth_bans.with_label_values(&[scope]).inc();
            }
            Output::Limited { action } => {
                metrics.requests_limited.with_label_values(&[action]).inc();
            }
            Output::Transfer { outcome } => {
                metrics.transfers.with_label_values(&[outcome]).inc();
            }
            Output::Answered(record) => cdr.open(open_call(&record, clock)),
            Output::Finish(record) => {
                if let Some(answer) = record.answer {
                    metrics
                        .setup
                        .observe(answer.duration_since(record.start).as_secs_f64());
                }
                let pool = pool.clone();
                let cdr = cdr.clone();
                let metrics = metrics.clone();
                let evidence = evidence.clone();
                let clock = clock.clone();
                finishing.spawn(async move {
                    let row = complete_record(&pool, &evidence, &clock, record).await;
                    write_row(&metrics, &cdr, row);
                });
            }
        }
    }

    /// Answers an admin endpoint's query from the core; a recording request goes to the
    /// call's node in a task of its own.
    pub(super) fn answer(&self, core: &mut Core, query: AdminQuery) {
        let Self {
            pool,
            metrics,
            inputs,
            ..
        } = *self;
        let now = Instant::now();
        match query {
            AdminQuery::Calls(reply) => {
                let _ = reply.send(core.calls_summary(now));
            }
            AdminQuery::Registrations(reply) => {
                let _ = reply.send(core.registrations(now));
            }
            AdminQuery::Recording {
                call_id,
                action,
                reply,
            } => match core.recording_request(&call_id, action) {
                Ok(target) => {
                    let (pool, metrics, inputs) = (pool.clone(), metrics.clone(), inputs.clone());
                    tokio::spawn(async move {
                        let result = recording(&pool, &metrics, &inputs, target, action).await;
                        let _ = reply.send(result.map_err(RecordingError::Media));
                    });
                }
                Err(refused) => {
                    let _ = reply.send(Err(RecordingError::Refused(refused)));
                }
            },
        }
    }
}

/// Starts, pauses or stops a call's recording on its node, counts the request, and tells the
/// core how it went (for the CDR's diagnosis).
async fn recording(
    pool: &Pool,
    metrics: &Metrics,
    inputs: &mpsc::Sender<Input>,
    target: RecordingTarget,
    action: RecordingAction,
) -> Result<Option<Recording>, MediaError> {
    let result = match pool.node(&target.endpoint) {
        Some(node) => {
            node.client
                .recording(&target.call_id, action, &target.file_stem)
                .await
        }
        None => Err(MediaError::Unavailable(format!(
            "media proxy {} left the pool",
            target.endpoint
        ))),
    };
    let outcome = if result.is_ok() { "ok" } else { "failed" };
    metrics
        .recording_requests
        .with_label_values(&[action.as_str(), outcome])
        .inc();
    match &result {
        Ok(state) => tracing::info!(
            call_id = %target.call_id,
            action = action.as_str(),
            path = state.as_ref().map_or("", |s| s.path.as_str()),
            "recording request done"
        ),
        Err(error) => {
            tracing::warn!(call_id = %target.call_id, action = action.as_str(), %error, "recording request failed");
        }
    }
    let _ = inputs
        .send(Input::RecordingDone {
            call: target.call,
            action,
            result: result.as_ref().map(|_| ()).map_err(Clone::clone),
        })
        .await;
    result
}
