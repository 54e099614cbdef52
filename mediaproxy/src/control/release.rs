//! Release, leases and the sweep: a released call's final figures go to its tombstone (kept
//! for a retried release), owners' leases are renewed, and the periodic sweep releases the
//! calls of owners whose lease ran out and forgets old tombstones.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use super::{
    CallEntry, Control, ControlError, Figures, Lease, LeaseState, ReleaseOutcome, Released,
    TOMBSTONE_TTL,
};
use crate::recording::RecordingInfo;
use crate::session::{CallSnapshot, EventKind};
use crate::tombstone::{Tombstone, Tombstones};
use crate::types::{CallId, Owner, ReleaseReason};

impl Control {
    /// Ends a call (idempotent, see the `control` module docs).
    pub(crate) async fn release(
        &self,
        call_id: &CallId,
        reason: ReleaseReason,
    ) -> Result<ReleaseOutcome, ControlError> {
        enum Found {
            Live(CallEntry, watch::Sender<Option<Arc<Released>>>),
            Pending(watch::Receiver<Option<Arc<Released>>>),
            Done(Arc<[u8]>),
        }
        let found = {
            let mut state = self.lock();
            match state.calls.remove(call_id) {
                Some(entry) => {
                    let (done, pending) = watch::channel(None);
                    state.tombstones.pending(call_id, pending);
                    if let Some(lease) = state.leases.get_mut(&entry.owner) {
                        lease.calls = lease.calls.saturating_sub(1);
                    }
                    self.metrics.sessions.set(state.calls.len() as i64);
                    Found::Live(entry, done)
                }
                None => match state.tombstones.get(call_id) {
                    Some(Tombstone::Done { answer, .. }) => Found::Done(answer.clone()),
                    Some(Tombstone::Pending(pending)) => Found::Pending(pending.clone()),
                    None => return Err(ControlError::NotFound(call_id.clone())),
                },
            }
        };
        let (entry, done) = match found {
            Found::Live(entry, done) => (entry, done),
            Found::Done(answer) => {
                return Ok(ReleaseOutcome {
                    figures: Figures::Kept(answer),
                    already_released: true,
                });
            }
            Found::Pending(mut pending) => {
                let released = pending
                    .wait_for(Option::is_some)
                    .await
                    .map_err(|_| ControlError::Internal("release abandoned".into()))?
                    .clone()
                    .expect("waited for Some");
                return Ok(ReleaseOutcome {
                    figures: Figures::Fresh(released),
                    already_released: true,
                });
            }
        };
        let result = self.relay.release(entry.worker, call_id.clone()).await;
        // The worker handed over its last captured packets before answering.
        let recording = match entry.capture {
            Some(capture) => self.recorder.close(capture).await.unwrap_or_else(|error| {
                let mut info = RecordingInfo::off();
                info.error = Some(error.to_string());
                info
            }),
            None => RecordingInfo::off(),
        };
        let now = Instant::now();
        let snapshot = match result {
            Ok(Some(mut snapshot)) => {
                fill_recorded(&mut snapshot, &entry.audio_lines(), &recording);
                snapshot
            }
            // The worker had no such session (it could not have been created): report empty
            // statistics rather than fail the release.
            Ok(None) | Err(_) => CallSnapshot {
                call_id: call_id.clone(),
                owner: entry.owner.clone(),
                created_unix_ms: 0,
                released_unix_ms: self.clock.unix_ms(now),
                legs: Vec::new(),
                recorder_dropped: 0,
            },
        };
        if let Some(path) = &recording.path {
            self.publish(
                call_id,
                &entry.owner,
                now,
                EventKind::RecordingFinished {
                    path: path.display().to_string(),
                    packets: recording.packets,
                },
            );
        }
        let released = Arc::new(Released {
            snapshot,
            reason,
            recording,
        });
        {
            let mut state = self.lock();
            for leg in &entry.legs {
                for media in leg {
                    state.pool.release(now, media.rtp_port);
                }
            }
            self.refresh_port_gauge(&mut state.pool, now);
            let tombstone = Tombstone::Done {
                owner: entry.owner.clone(),
                answer: (self.settings.encode_release)(&released, &self.settings.node_id).into(),
                at: now,
            };
            let evicted = state.tombstones.keep(now, call_id, tombstone);
            if evicted > 0 {
                self.metrics.tombstones_evicted.inc_by(evicted);
            }
            self.publish_tombstones(&state.tombstones);
        }
        let _ = done.send(Some(released.clone()));
        self.metrics
            .released
            .with_label_values(&[reason.as_str()])
            .inc();
        self.metrics
            .events
            .with_label_values(&["session_released"])
            .inc();
        self.publish(
            call_id,
            &entry.owner,
            now,
            EventKind::SessionReleased { reason },
        );
        tracing::info!(%call_id, reason = reason.as_str(), "session released");
        Ok(ReleaseOutcome {
            figures: Figures::Fresh(released),
            already_released: false,
        })
    }

    fn publish_tombstones(&self, tombstones: &Tombstones) {
        self.metrics.tombstones.set(tombstones.len() as i64);
        self.metrics.tombstone_bytes.set(tombstones.bytes() as i64);
    }

    /// Renews every call of an owner.
    pub(crate) fn renew_lease(&self, owner: &Owner, timeout: Option<Duration>) -> LeaseState {
        let now = Instant::now();
        let mut state = self.lock();
        let lease = renew(
            &mut state.leases,
            owner,
            now,
            self.settings.lease_timeout,
            timeout,
        );
        LeaseState {
            sessions: lease.calls,
            timeout: lease.timeout,
            instance_id: self.instance_id.clone(),
        }
    }

    /// Follows a step of the wall clock, releases the calls of owners whose lease ran out and
    /// forgets old tombstones. Run periodically by the server.
    pub(crate) async fn sweep(&self) {
        if let Some(step) = self.clock.follow() {
            tracing::warn!(
                step_seconds = step as f64 / 1000.0,
                "the wall clock stepped; reported times follow it from now on"
            );
            self.metrics.clock_steps.inc();
        }
        let now = Instant::now();
        let expired: Vec<CallId> = {
            let mut state = self.lock();
            let state = &mut *state;
            let expired_owners: Vec<Owner> = state
                .leases
                .iter()
                .filter(|(_, lease)| now.saturating_duration_since(lease.renewed) >= lease.timeout)
                .map(|(owner, _)| owner.clone())
                .collect();
            for owner in &expired_owners {
                if state.leases.get(owner).is_some_and(|l| l.calls > 0) {
                    tracing::warn!(%owner, "lease expired; releasing the owner's calls");
                }
                state.leases.remove(owner);
            }
            state.tombstones.expire(now, TOMBSTONE_TTL);
            self.publish_tombstones(&state.tombstones);
            self.refresh_port_gauge(&mut state.pool, now);
            state
                .calls
                .iter()
                .filter(|(_, entry)| expired_owners.contains(&entry.owner))
                .map(|(call_id, _)| call_id.clone())
                .collect()
        };
        for call_id in expired {
            let _ = self.release(&call_id, ReleaseReason::LeaseExpired).await;
        }
        self.sample_rate(now);
    }

    /// Releases every call (shutdown).
    pub(crate) async fn release_all(&self, reason: ReleaseReason) {
        let calls: Vec<CallId> = self.lock().calls.keys().cloned().collect();
        for call_id in calls {
            let _ = self.release(&call_id, reason).await;
        }
    }
}

/// Renews (creating if needed) an owner's lease; `timeout` replaces its timeout when given.
pub(super) fn renew<'a>(
    leases: &'a mut HashMap<Owner, Lease>,
    owner: &Owner,
    now: Instant,
    default_timeout: Duration,
    timeout: Option<Duration>,
) -> &'a mut Lease {
    let lease = leases.entry(owner.clone()).or_insert(Lease {
        renewed: now,
        timeout: default_timeout,
        calls: 0,
    });
    lease.renewed = now;
    if let Some(timeout) = timeout {
        lease.timeout = timeout;
    }
    lease
}

/// Puts the recorder's per-leg packet counts on each leg's audio line.
fn fill_recorded(snapshot: &mut CallSnapshot, audio: &[Option<u8>; 2], recording: &RecordingInfo) {
    for leg in &mut snapshot.legs {
        let Some(line) = audio[leg.leg.index()] else {
            continue;
        };
        if let Some(media) = leg.media.iter_mut().find(|m| m.index == usize::from(line)) {
            media.recorded_packets = recording.leg_packets[leg.leg.index()];
        }
    }
}
