//! Watching the media proxies: each node's health and lease ([`crate::media::pool::watch`])
//! reported into metrics and the evidence a CDR falls back on, its event stream (sessions a
//! node ends by itself, first packets), new nodes a name resolves to, the mutual TLS files,
//! and the start-up check of the pool's capacity.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use proto::domain::Leg;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::call::{CallId, Input};
use crate::cdr::diagnosis::{Evidence, Snapshot};
use crate::cdr::unix_ms_now;
use crate::media::pool::{HealthReport, Pool};
use crate::media::{MediaClient, MediaEvent};
use crate::metrics::Metrics;

/// First-packet sources per call, from the proxy's events.
pub(super) type EvidenceMap = Arc<Mutex<HashMap<CallId, Evidence>>>;

/// Watches every node of `pool` until `stop`: its health and lease, and its event stream.
/// Sessions a node ends by itself (media timeout, lease expiry) end their calls; first packets
/// are kept in `evidence` in case the node is lost before the call ends. Nodes a name comes to
/// resolve to are watched from their discovery; changed TLS files are taken up; the pool's
/// capacity is checked against `max_calls` once.
pub(super) fn watch(
    tasks: &mut JoinSet<()>,
    pool: &Pool,
    inputs: &mpsc::Sender<Input>,
    metrics: &Arc<Metrics>,
    evidence: &EvidenceMap,
    max_calls: usize,
    stop: &CancellationToken,
) {
    let watch_node = {
        let (inputs, metrics, evidence, stop) = (
            inputs.clone(),
            metrics.clone(),
            evidence.clone(),
            stop.clone(),
        );
        move |node: crate::media::pool::Node| {
            tokio::spawn(crate::media::pool::watch(
                node.clone(),
                inputs.clone(),
                NodeReport {
                    metrics: metrics.clone(),
                    evidence: evidence.clone(),
                },
                stop.clone(),
            ));
            tokio::spawn(watch_events(
                node.client.clone(),
                inputs.clone(),
                evidence.clone(),
                stop.clone(),
            ));
        }
    };
    for node in pool.nodes() {
        watch_node(node);
    }
    if pool.discovers() {
        let (pool, stop) = (pool.clone(), stop.clone());
        tasks.spawn(async move {
            let mut every = tokio::time::interval(crate::media::pool::REFRESH_INTERVAL);
            every.tick().await;
            loop {
                tokio::select! {
                    _ = every.tick() => {}
                    () = stop.cancelled() => return,
                }
                for node in pool.refresh().await {
                    watch_node(node);
                }
            }
        });
    }
    if let Some(tls) = pool.tls() {
        tasks.spawn(watch_tls(pool.clone(), tls, stop.clone()));
    }
    tokio::spawn(check_capacity(pool.clone(), max_calls));
}

/// What the health watch of a node reports: `signaling_mediaproxy_up{node}`, and the live
/// figures of the calls on it into the evidence a CDR falls back on.
struct NodeReport {
    metrics: Arc<Metrics>,
    evidence: EvidenceMap,
}

/// How long the evidence of a call nobody finished is kept (a listing that crossed the
/// call's release leaves one behind).
const EVIDENCE_KEPT: Duration = Duration::from_secs(4 * 3600);

impl HealthReport for NodeReport {
    fn state(&self, node: &str, up: bool) {
        self.metrics
            .mediaproxy_up
            .with_label_values(&[node])
            .set(i64::from(up));
    }

    fn sessions(
        &self,
        node: &str,
        sessions: Vec<(CallId, Vec<crate::cdr::diagnosis::MediaFigures>)>,
    ) {
        let at_unix_ms = unix_ms_now() as u64;
        let mut map = self.evidence.lock().unwrap_or_else(|p| p.into_inner());
        for (call_id, media) in sessions {
            map.entry(call_id).or_default().seen(Snapshot {
                node: node.to_owned(),
                at_unix_ms,
                media,
            });
        }
        let oldest = at_unix_ms.saturating_sub(EVIDENCE_KEPT.as_millis() as u64);
        map.retain(|_, e| {
            e.last_seen.iter().any(|s| s.at_unix_ms >= oldest) || e.last_seen.is_empty()
        });
    }
}

/// Start-up check of the pool: reachable nodes, and ports enough for `--max-calls`.
async fn check_capacity(pool: Pool, max_calls: usize) {
    let mut pairs = 0u64;
    for node in pool.nodes() {
        match node.client.status().await {
            Ok(status) => {
                pairs += u64::from(status.ports_total / 2);
                if status.draining {
                    tracing::warn!(node = %status.node_id, "the media proxy is draining: it takes no new calls");
                }
                tracing::info!(node = %status.node_id, url = %node.endpoint(), advertised = %status.advertised_address, "media proxy reachable");
            }
            Err(error) => tracing::error!(
                url = %node.endpoint(),
                %error,
                "media proxy unreachable at start: it takes no calls until it answers"
            ),
        }
    }
    if pairs > 0 && (pairs as usize) < 2 * max_calls {
        tracing::warn!(
            pairs,
            max_calls,
            "the media proxies have fewer RTP port pairs than --max-calls needs \
             (2 per relayed audio call): calls beyond {} will fail with 503",
            pairs / 2
        );
    }
}

/// Follows one node's events until `stop`, reconnecting when the stream breaks.
async fn watch_events(
    client: MediaClient,
    inputs: mpsc::Sender<Input>,
    evidence: EvidenceMap,
    stop: CancellationToken,
) {
    loop {
        let endpoint = client.url.clone();
        let inputs = inputs.clone();
        let evidence = evidence.clone();
        let watch = client.watch_events(move |event| match event {
            MediaEvent::Released { call_id, reason } => {
                if reason != "released" {
                    let _ = inputs.try_send(Input::MediaEnded {
                        endpoint: endpoint.clone(),
                        call_id,
                        reason,
                    });
                }
            }
            MediaEvent::FirstPacket {
                call_id,
                leg,
                source,
            } => {
                let mut map = evidence.lock().unwrap_or_else(|p| p.into_inner());
                let entry = map.entry(call_id).or_default();
                let slot = if leg == Leg::Caller {
                    &mut entry.caller_first_source
                } else {
                    &mut entry.callee_first_source
                };
                slot.get_or_insert(source);
            }
        });
        tokio::select! {
            result = watch => {
                if let Err(error) = result {
                    tracing::debug!(url = %client.url, %error, "media event stream ended; reconnecting");
                }
            }
            () = stop.cancelled() => return,
        }
        tokio::select! {
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
            () = stop.cancelled() => return,
        }
    }
}

/// How often the mutual TLS files are checked for a change.
const TLS_POLL: Duration = Duration::from_secs(2);

/// Watches signaling's own mutual TLS files (`--mediaproxy-ca/-cert/-key`) until `stop`: when
/// they change and still parse, every node is dialled with them from then on (a renewed
/// client certificate, a rotated CA) without a restart; requests in flight and calls are
/// untouched. Files that do not parse keep the old ones in force, with a warning.
async fn watch_tls(pool: Pool, mut tls: crate::media::ClientTls, stop: CancellationToken) {
    let mut seen = tls.modified();
    let mut every = tokio::time::interval(TLS_POLL);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = every.tick() => {}
            () = stop.cancelled() => return,
        }
        let now = tls.modified();
        if now == seen {
            continue;
        }
        seen = now;
        let loaded = tls.reread().map_err(|e| e.to_string()).and_then(|fresh| {
            pool.reload_tls(fresh.clone())
                .map(|()| fresh)
                .map_err(|e| e.to_string())
        });
        match loaded {
            Ok(fresh) => {
                tracing::info!(
                    "media proxy TLS files changed: nodes are dialled with them from now on"
                );
                tls = fresh;
            }
            Err(error) => {
                tracing::warn!(%error, "media proxy TLS files changed but cannot be used; keeping the ones in force");
            }
        }
    }
}
