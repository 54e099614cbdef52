//! The control plane: which calls exist, who owns them, which ports they hold.
//!
//! Requests arrive here already validated into domain types (the gRPC edge does that). This
//! module binds sockets, hands them to a relay worker, keeps owners' leases, and makes
//! allocate and release idempotent:
//!
//! - allocate is keyed by (call id, leg): a retry returns the ports of the first attempt;
//! - release moves the call to a *tombstone* holding its final statistics for
//!   [`TOMBSTONE_TTL`]; a retried release (or a release after the proxy ended the call itself)
//!   gets the same statistics with `already_released` (the [`crate::tombstone`] module).
//!
//! The state lock is held only for bookkeeping and socket binds, never across an await.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::{broadcast, watch};

use crate::metrics::Metrics;
use crate::ports::{PortPool, PortRange};
use crate::recording::{CallAudioLines, Recorder, RecorderError, RecordingInfo, TapFrame};
use crate::relay::{NewMedia, Relay, WorkerGone};
use crate::session::{CallSnapshot, Event, EventKind, MAX_MEDIA, UpdateError};
pub(crate) use crate::tombstone::{EncodeRelease, Released, TOMBSTONE_BYTES, TOMBSTONE_TTL};
use crate::tombstone::{Tombstone, Tombstones};
use crate::types::{CallId, Codec, Leg, MediaKind, Owner, ReleaseReason, RemoteMedia, WallClock};

/// Settings of the control plane.
#[derive(Debug, Clone)]
pub(crate) struct ControlSettings {
    pub(crate) node_id: String,
    pub(crate) media_ip: IpAddr,
    pub(crate) advertise_ip: IpAddr,
    pub(crate) ports: PortRange,
    pub(crate) port_quarantine: Duration,
    pub(crate) lease_timeout: Duration,
    /// Calls one owner may hold at once (None: no quota).
    pub(crate) max_sessions_per_owner: Option<usize>,
    /// DSCP marked on relayed packets (0 = unmarked).
    pub(crate) dscp: u8,
    /// Socket buffer size in bytes (0 = kernel default).
    pub(crate) socket_buffer: usize,
    /// How a released call's answer is encoded for its tombstone: the gRPC edge's encoding,
    /// handed down so that the control plane never calls up into the edge.
    pub(crate) encode_release: EncodeRelease,
}

/// Errors of control operations, each mapping to one gRPC status.
#[derive(Debug, Clone, thiserror::Error)]
pub(crate) enum ControlError {
    #[error("{0}")]
    InvalidArgument(String),
    #[error("no call {0} on this node")]
    NotFound(CallId),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("no free RTP port pair left in {0}")]
    PortsExhausted(PortRange),
    /// The process ran out of file descriptors (EMFILE/ENFILE): the ports are free, the
    /// sockets cannot be made.
    #[error(
        "out of file descriptors ({0}): the media proxy cannot open the call's sockets; its ports are free. Raise its descriptor limit (LimitNOFILE, ulimit -n) or find what holds descriptors"
    )]
    DescriptorsExhausted(String),
    #[error("node is draining and takes no new calls")]
    Draining,
    /// The owner holds as many calls as its quota allows (`--max-sessions-per-owner`).
    #[error("{owner} holds {limit} calls on this node, its quota (--max-sessions-per-owner)")]
    QuotaExceeded { owner: Owner, limit: usize },
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<WorkerGone> for ControlError {
    fn from(error: WorkerGone) -> Self {
        Self::Internal(error.to_string())
    }
}

/// Why no port pair could be bound.
enum BindFailure {
    /// Every pair of the range is taken (or unbindable).
    Exhausted,
    /// The process has no descriptor left for the sockets.
    Descriptors(String),
}

/// EMFILE (this process's limit) or ENFILE (the system's).
fn out_of_descriptors(error: &std::io::Error) -> bool {
    // Linux: EMFILE 24, ENFILE 23.
    matches!(error.raw_os_error(), Some(23 | 24))
}

/// A media line's local port pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct LocalMedia {
    pub(crate) index: usize,
    pub(crate) kind: MediaKind,
    pub(crate) rtp_port: u16,
}

/// Answer to an allocate or update.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Allocation {
    pub(crate) call_id: CallId,
    pub(crate) leg: Leg,
    pub(crate) advertised: IpAddr,
    pub(crate) media: Vec<LocalMedia>,
    pub(crate) existing: bool,
}

/// What an allocate asks for.
#[derive(Debug, Clone)]
pub(crate) struct AllocateRequest {
    pub(crate) call_id: CallId,
    pub(crate) leg: Leg,
    pub(crate) owner: Owner,
    pub(crate) media: Vec<MediaKind>,
    pub(crate) lease_timeout: Option<Duration>,
    /// The call is in `reflect` mode: analysers may tap its audio.
    pub(crate) reflect: bool,
}

/// Answer to a release.
#[derive(Debug, Clone)]
pub(crate) struct ReleaseOutcome {
    pub(crate) figures: Figures,
    pub(crate) already_released: bool,
}

/// Node status.
#[derive(Debug, Clone)]
pub(crate) struct Status {
    pub(crate) node_id: String,
    pub(crate) instance_id: String,
    pub(crate) advertised: IpAddr,
    pub(crate) sessions: usize,
    pub(crate) ports_free: usize,
    pub(crate) ports_total: usize,
    pub(crate) packets_per_second: f64,
    pub(crate) draining: bool,
    pub(crate) uptime: Duration,
    pub(crate) owners: usize,
}

/// Answer to a lease renewal.
#[derive(Debug, Clone)]
pub(crate) struct LeaseState {
    pub(crate) sessions: usize,
    pub(crate) timeout: Duration,
    pub(crate) instance_id: String,
}

struct CallEntry {
    owner: Owner,
    worker: usize,
    legs: [Vec<LocalMedia>; 2],
    /// Codec map of each leg's first audio line, from its latest SDP.
    codecs: [Vec<Codec>; 2],
    /// The recorder's id for this call's audio, once recorded or tapped.
    capture: Option<u64>,
    /// The call's worker copies its packets to the recorder (off again when a recording of a
    /// call that cannot be tapped stops: the relay then does no recording work for it).
    copying: bool,
    reflect: bool,
}

impl CallEntry {
    /// Index of each leg's first audio line.
    fn audio_lines(&self) -> [Option<u8>; 2] {
        self.legs.each_ref().map(|media| {
            media
                .iter()
                .find(|m| m.kind == MediaKind::Audio)
                .map(|m| m.index as u8)
        })
    }
}

struct Lease {
    renewed: Instant,
    timeout: Duration,
    calls: usize,
}

/// The final figures a release answers with.
#[derive(Debug, Clone)]
pub(crate) enum Figures {
    /// Taken from the call as it ended.
    Fresh(Arc<Released>),
    /// Kept in a tombstone: the release answer as first encoded.
    Kept(Arc<[u8]>),
}

struct State {
    calls: HashMap<CallId, CallEntry>,
    pool: PortPool,
    leases: HashMap<Owner, Lease>,
    tombstones: Tombstones,
}

/// The control plane of one media proxy.
pub(crate) struct Control {
    settings: ControlSettings,
    relay: Relay,
    recorder: Recorder,
    next_capture: AtomicU64,
    state: Mutex<State>,
    metrics: Arc<Metrics>,
    events: broadcast::Sender<Option<Arc<Event>>>,
    draining: Arc<AtomicBool>,
    instance_id: String,
    started: Instant,
    clock: WallClock,
    /// Packets per second (f64 bits), refreshed by [`Control::sample_rate`].
    packet_rate: AtomicU64,
    rate_sample: Mutex<(Instant, u64)>,
}

impl Control {
    pub(crate) fn new(
        settings: ControlSettings,
        relay: Relay,
        recorder: Recorder,
        metrics: Arc<Metrics>,
        events: broadcast::Sender<Option<Arc<Event>>>,
        clock: WallClock,
    ) -> Self {
        let pool = PortPool::new(settings.ports, settings.port_quarantine);
        metrics.ports_capacity.set((pool.total_pairs() * 2) as i64);
        metrics.ports_free.set((pool.total_pairs() * 2) as i64);
        let now = Instant::now();
        Self {
            settings,
            relay,
            recorder,
            next_capture: AtomicU64::new(1),
            state: Mutex::new(State {
                calls: HashMap::new(),
                pool,
                leases: HashMap::new(),
                tombstones: Tombstones::new(TOMBSTONE_BYTES),
            }),
            metrics,
            events,
            draining: Arc::new(AtomicBool::new(false)),
            instance_id: instance_id(),
            started: now,
            clock,
            packet_rate: AtomicU64::new(0),
            rate_sample: Mutex::new((now, 0)),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves bookkeeping that is still consistent enough
        // to serve releases; keep going rather than poisoning every later request.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub(crate) fn settings(&self) -> &ControlSettings {
        &self.settings
    }

    pub(crate) fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    pub(crate) fn draining_flag(&self) -> Arc<AtomicBool> {
        self.draining.clone()
    }

    /// Media events as they happen; `None` marks the end (the proxy is stopping).
    pub(crate) fn subscribe(&self) -> broadcast::Receiver<Option<Arc<Event>>> {
        self.events.subscribe()
    }

    /// Ends every event stream after the events already queued.
    pub(crate) fn close_event_streams(&self) {
        let _ = self.events.send(None);
    }

    /// The owner of a call, live or released (None when the proxy does not know it).
    pub(crate) fn owner_of(&self, call_id: &CallId) -> Option<Owner> {
        let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(entry) = state.calls.get(call_id) {
            return Some(entry.owner.clone());
        }
        match state.tombstones.get(call_id) {
            Some(Tombstone::Done { owner, .. }) => Some(owner.clone()),
            _ => None,
        }
    }

    /// Allocates port pairs for one leg (idempotent, see the module docs).
    pub(crate) fn allocate(&self, request: AllocateRequest) -> Result<Allocation, ControlError> {
        let AllocateRequest {
            call_id,
            leg,
            owner,
            media,
            lease_timeout,
            reflect,
        } = request;
        if media.is_empty() || media.len() > MAX_MEDIA {
            return Err(ControlError::InvalidArgument(format!(
                "media must list 1 to {MAX_MEDIA} media lines, got {}",
                media.len()
            )));
        }
        let now = Instant::now();
        let mut state = self.lock();
        let state = &mut *state;
        let (worker, existing_media) = match state.calls.get(&call_id) {
            Some(entry) if entry.owner != owner => {
                return Err(ControlError::FailedPrecondition(format!(
                    "call {call_id} is owned by {}, not {owner}",
                    entry.owner
                )));
            }
            Some(entry) => (entry.worker, entry.legs[leg.index()].clone()),
            None => {
                if self.draining.load(Ordering::Relaxed) {
                    self.metrics
                        .allocation_failures
                        .with_label_values(&["draining"])
                        .inc();
                    return Err(ControlError::Draining);
                }
                if let Some(limit) = self.settings.max_sessions_per_owner
                    && state.leases.get(&owner).is_some_and(|l| l.calls >= limit)
                {
                    self.metrics
                        .allocation_failures
                        .with_label_values(&["owner_quota"])
                        .inc();
                    tracing::warn!(%call_id, %owner, limit, "allocation refused: the owner's quota is used up");
                    return Err(ControlError::QuotaExceeded { owner, limit });
                }
                (self.relay.pick(), Vec::new())
            }
        };
        let lease = renew(
            &mut state.leases,
            &owner,
            now,
            self.settings.lease_timeout,
            lease_timeout,
        );
        if media.len() <= existing_media.len() {
            return Ok(Allocation {
                call_id,
                leg,
                advertised: self.settings.advertise_ip,
                media: existing_media[..media.len()].to_vec(),
                existing: true,
            });
        }
        // Bind the missing lines; on exhaustion give back what this request took.
        let mut bound = Vec::new();
        for &kind in &media[existing_media.len()..] {
            match self.bind_pair(&mut state.pool, now) {
                Ok((rtp_port, rtp, rtcp)) => bound.push(NewMedia {
                    kind,
                    rtp_port,
                    rtp,
                    rtcp,
                }),
                Err(failure) => {
                    for new in bound {
                        state.pool.release(now, new.rtp_port);
                    }
                    let (reason, error) = match failure {
                        BindFailure::Exhausted => (
                            "ports_exhausted",
                            ControlError::PortsExhausted(self.settings.ports),
                        ),
                        BindFailure::Descriptors(why) => (
                            "descriptors_exhausted",
                            ControlError::DescriptorsExhausted(why),
                        ),
                    };
                    self.metrics
                        .allocation_failures
                        .with_label_values(&[reason])
                        .inc();
                    self.refresh_port_gauge(&mut state.pool, now);
                    tracing::warn!(%call_id, range = %self.settings.ports, "allocation refused: {error}");
                    return Err(error);
                }
            }
        }
        let entry = state.calls.entry(call_id.clone()).or_insert_with(|| {
            lease.calls += 1;
            CallEntry {
                owner: owner.clone(),
                worker,
                legs: [Vec::new(), Vec::new()],
                codecs: [Vec::new(), Vec::new()],
                capture: None,
                copying: false,
                reflect,
            }
        });
        entry.reflect |= reflect;
        let leg_media = &mut entry.legs[leg.index()];
        for new in &bound {
            leg_media.push(LocalMedia {
                index: leg_media.len(),
                kind: new.kind,
                rtp_port: new.rtp_port,
            });
        }
        let all = leg_media.clone();
        let was_existing = !existing_media.is_empty();
        state.tombstones.forget(&call_id, None);
        self.metrics.sessions.set(state.calls.len() as i64);
        self.refresh_port_gauge(&mut state.pool, now);
        self.relay
            .add_media(worker, call_id.clone(), owner, leg, bound)?;
        tracing::debug!(%call_id, leg = leg.as_str(), ports = ?all, "allocated");
        Ok(Allocation {
            call_id,
            leg,
            advertised: self.settings.advertise_ip,
            media: all,
            existing: was_existing,
        })
    }

    /// Takes pairs from the pool until both ports bind; a pair another process holds is
    /// skipped (and retried after the quarantine), never leaked. Out of descriptors, the pair
    /// goes back at once and the search stops: every other pair would fail the same way,
    /// and the range is not what is exhausted.
    fn bind_pair(
        &self,
        pool: &mut PortPool,
        now: Instant,
    ) -> Result<(u16, std::net::UdpSocket, std::net::UdpSocket), BindFailure> {
        for _ in 0..pool.total_pairs() {
            let port = pool.take(now).ok_or(BindFailure::Exhausted)?;
            let rtp = bind_udp(
                SocketAddr::new(self.settings.media_ip, port),
                &self.settings,
            );
            let rtcp = bind_udp(
                SocketAddr::new(self.settings.media_ip, port + 1),
                &self.settings,
            );
            match (rtp, rtcp) {
                (Ok(rtp), Ok(rtcp)) => return Ok((port, rtp, rtcp)),
                (rtp, rtcp) => {
                    let error = rtp.err().or(rtcp.err());
                    if let Some(error) = error.as_ref().filter(|e| out_of_descriptors(e)) {
                        pool.give_back(port);
                        return Err(BindFailure::Descriptors(error.to_string()));
                    }
                    tracing::info!(port, ?error, "RTP port pair unavailable, skipped");
                    pool.skip(now, port);
                }
            }
        }
        Err(BindFailure::Exhausted)
    }

    fn publish_tombstones(&self, tombstones: &Tombstones) {
        self.metrics.tombstones.set(tombstones.len() as i64);
        self.metrics.tombstone_bytes.set(tombstones.bytes() as i64);
    }

    fn refresh_port_gauge(&self, pool: &mut PortPool, now: Instant) {
        self.metrics
            .ports_free
            .set((pool.free_pairs(now) * 2) as i64);
    }

    fn entry_worker(&self, call_id: &CallId) -> Result<usize, ControlError> {
        self.lock()
            .calls
            .get(call_id)
            .map(|entry| entry.worker)
            .ok_or_else(|| ControlError::NotFound(call_id.clone()))
    }

    /// Applies a leg's SDP and starts relaying towards it.
    pub(crate) async fn update(
        &self,
        call_id: CallId,
        leg: Leg,
        remotes: Vec<RemoteMedia>,
    ) -> Result<Allocation, ControlError> {
        let (worker, media) = {
            let mut state = self.lock();
            let entry = state
                .calls
                .get_mut(&call_id)
                .ok_or_else(|| ControlError::NotFound(call_id.clone()))?;
            let audio = entry.audio_lines()[leg.index()];
            if let Some(remote) = remotes.iter().find(|r| Some(r.index as u8) == audio) {
                entry.codecs[leg.index()] = remote.codecs.clone();
                if let Some(capture) = entry.capture {
                    let _ = self.recorder.codecs(capture, leg, remote.codecs.clone());
                }
            }
            (entry.worker, entry.legs[leg.index()].clone())
        };
        if media.is_empty() {
            return Err(ControlError::FailedPrecondition(format!(
                "leg {} of call {call_id} has no ports allocated",
                leg.as_str()
            )));
        }
        self.relay
            .update(worker, call_id.clone(), leg, remotes)
            .await?
            .map_err(|error| match error {
                UpdateError::MediaNotAllocated { .. } => {
                    ControlError::InvalidArgument(error.to_string())
                }
                UpdateError::LegNotAllocated(_) => {
                    ControlError::FailedPrecondition(error.to_string())
                }
            })?;
        Ok(Allocation {
            call_id,
            leg,
            advertised: self.settings.advertise_ip,
            media,
            existing: true,
        })
    }

    /// Live statistics of one call.
    pub(crate) async fn query(&self, call_id: &CallId) -> Result<CallSnapshot, ControlError> {
        let worker = self.entry_worker(call_id)?;
        self.relay
            .query(worker, call_id.clone())
            .await?
            .ok_or_else(|| ControlError::NotFound(call_id.clone()))
    }

    /// Turns per-packet debug logging of one call on or off.
    pub(crate) async fn set_debug(
        &self,
        call_id: &CallId,
        enabled: bool,
    ) -> Result<(), ControlError> {
        let worker = self.entry_worker(call_id)?;
        if self
            .relay
            .set_debug(worker, call_id.clone(), enabled)
            .await?
        {
            Ok(())
        } else {
            Err(ControlError::NotFound(call_id.clone()))
        }
    }

    /// Live statistics of every call, optionally of one owner.
    pub(crate) async fn list(
        &self,
        owner: Option<&Owner>,
    ) -> Result<Vec<CallSnapshot>, ControlError> {
        let mut all = self.relay.list().await?;
        if let Some(owner) = owner {
            all.retain(|snapshot| &snapshot.owner == owner);
        }
        all.sort_by(|a, b| a.call_id.cmp(&b.call_id));
        Ok(all)
    }

    /// Ends a call (idempotent, see the module docs).
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

    /// Sends a call-wide event (about the call, not one leg's media line) to watchers.
    fn publish(&self, call_id: &CallId, owner: &Owner, now: Instant, kind: EventKind) {
        let _ = self.events.send(Some(Arc::new(Event {
            call_id: call_id.clone(),
            owner: owner.clone(),
            leg: Leg::Caller,
            media: 0,
            unix_ms: self.clock.unix_ms(now),
            kind,
        })));
    }

    /// The recorder's id of a call's audio, opening it on first use, with the call's worker
    /// told to copy its packets.
    async fn capture(&self, call_id: &CallId) -> Result<u64, ControlError> {
        let (worker, capture, copying) = {
            let mut state = self.lock();
            let entry = state
                .calls
                .get_mut(call_id)
                .ok_or_else(|| ControlError::NotFound(call_id.clone()))?;
            let capture = match entry.capture {
                Some(capture) => capture,
                None => {
                    let capture = self.next_capture.fetch_add(1, Ordering::Relaxed);
                    self.recorder
                        .open(
                            capture,
                            CallAudioLines {
                                call_id: call_id.clone(),
                                audio: entry.audio_lines(),
                                codecs: entry.codecs.clone(),
                            },
                        )
                        .map_err(recorder_error)?;
                    entry.capture = Some(capture);
                    capture
                }
            };
            let copying = std::mem::replace(&mut entry.copying, true);
            (entry.worker, capture, copying)
        };
        if !copying && !self.copy(worker, call_id, Some(capture)).await? {
            return Err(ControlError::NotFound(call_id.clone()));
        }
        Ok(capture)
    }

    /// Tells a call's worker to copy its packets to the recorder under `capture`, or to stop;
    /// false when the worker no longer has the call.
    async fn copy(
        &self,
        worker: usize,
        call_id: &CallId,
        capture: Option<u64>,
    ) -> Result<bool, ControlError> {
        Ok(self
            .relay
            .set_capture(worker, call_id.clone(), capture)
            .await?)
    }

    /// Starts or resumes recording a call; `stem` names its files (default: the call id).
    pub(crate) async fn start_recording(
        &self,
        call_id: &CallId,
        stem: Option<String>,
        pcap: bool,
    ) -> Result<RecordingInfo, ControlError> {
        let capture = self.capture(call_id).await?;
        self.recorder
            .start_recording(capture, stem, pcap)
            .await
            .map_err(recorder_error)
    }

    /// Pauses a call's recording (the paused time is silent in the files).
    pub(crate) async fn pause_recording(
        &self,
        call_id: &CallId,
    ) -> Result<RecordingInfo, ControlError> {
        match self.existing_capture(call_id)? {
            Some(capture) => self.recorder.pause(capture).await.map_err(recorder_error),
            None => Ok(RecordingInfo::off()),
        }
    }

    /// Stops a call's recording and closes its files. A call that cannot be tapped stops
    /// being copied to the recorder (a later start copies it again).
    pub(crate) async fn stop_recording(
        &self,
        call_id: &CallId,
    ) -> Result<RecordingInfo, ControlError> {
        let Some(capture) = self.existing_capture(call_id)? else {
            return Ok(RecordingInfo::off());
        };
        let info = self.recorder.stop(capture).await.map_err(recorder_error)?;
        let idle_worker = {
            let mut state = self.lock();
            state
                .calls
                .get_mut(call_id)
                .filter(|entry| !entry.reflect && entry.copying)
                .map(|entry| {
                    entry.copying = false;
                    entry.worker
                })
        };
        if let Some(worker) = idle_worker {
            self.copy(worker, call_id, None).await?;
        }
        Ok(info)
    }

    /// The recording state of a call.
    pub(crate) async fn recording(&self, call_id: &CallId) -> Result<RecordingInfo, ControlError> {
        match self.existing_capture(call_id)? {
            Some(capture) => self.recorder.query(capture).await.map_err(recorder_error),
            None => Ok(RecordingInfo::off()),
        }
    }

    /// Subscribes to a `reflect` call's decoded audio.
    pub(crate) async fn tap(
        &self,
        call_id: &CallId,
        leg: Option<Leg>,
        rate: u32,
    ) -> Result<tokio::sync::mpsc::Receiver<TapFrame>, ControlError> {
        let reflect = {
            let state = self.lock();
            state
                .calls
                .get(call_id)
                .ok_or_else(|| ControlError::NotFound(call_id.clone()))?
                .reflect
        };
        if !reflect {
            return Err(ControlError::FailedPrecondition(format!(
                "call {call_id} is not in reflect mode; only reflect calls can be tapped"
            )));
        }
        let capture = self.capture(call_id).await?;
        self.recorder
            .subscribe(capture, leg, rate)
            .map_err(recorder_error)
    }

    fn existing_capture(&self, call_id: &CallId) -> Result<Option<u64>, ControlError> {
        let state = self.lock();
        let entry = state
            .calls
            .get(call_id)
            .ok_or_else(|| ControlError::NotFound(call_id.clone()))?;
        Ok(entry.capture)
    }

    /// Stops the recorder, closing every recording still open (after the calls' release at
    /// shutdown, nothing should be).
    pub(crate) fn stop_recorder(&self) {
        self.recorder.shutdown();
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

    fn sample_rate(&self, now: Instant) {
        let total: u64 = crate::metrics::DIRECTIONS
            .iter()
            .map(|d| self.metrics.packets.with_label_values(&[*d]).get())
            .sum();
        let mut sample = self
            .rate_sample
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let elapsed = now.saturating_duration_since(sample.0).as_secs_f64();
        if elapsed >= 1.0 {
            let rate = total.saturating_sub(sample.1) as f64 / elapsed;
            self.packet_rate.store(rate.to_bits(), Ordering::Relaxed);
            *sample = (now, total);
        }
    }

    /// Releases every call (shutdown).
    pub(crate) async fn release_all(&self, reason: ReleaseReason) {
        let calls: Vec<CallId> = self.lock().calls.keys().cloned().collect();
        for call_id in calls {
            let _ = self.release(&call_id, reason).await;
        }
    }

    pub(crate) fn session_count(&self) -> usize {
        self.lock().calls.len()
    }

    pub(crate) fn status(&self) -> Status {
        let now = Instant::now();
        let mut state = self.lock();
        let owners = state
            .leases
            .values()
            .filter(|lease| {
                lease.calls > 0 || now.saturating_duration_since(lease.renewed) < lease.timeout
            })
            .count();
        Status {
            node_id: self.settings.node_id.clone(),
            instance_id: self.instance_id.clone(),
            advertised: self.settings.advertise_ip,
            sessions: state.calls.len(),
            ports_free: state.pool.free_pairs(now) * 2,
            ports_total: state.pool.total_pairs() * 2,
            packets_per_second: f64::from_bits(self.packet_rate.load(Ordering::Relaxed)),
            draining: self.draining.load(Ordering::Relaxed),
            uptime: now.saturating_duration_since(self.started),
            owners,
        }
    }

    pub(crate) fn set_draining(&self, draining: bool) {
        if self.draining.swap(draining, Ordering::Relaxed) != draining {
            tracing::info!(draining, "drain state changed");
        }
    }
}

/// Renews (creating if needed) an owner's lease; `timeout` replaces its timeout when given.
fn renew<'a>(
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

/// Binds one non-blocking UDP socket, without `SO_REUSEADDR`/`SO_REUSEPORT`, so that no two
/// sessions (or processes) can share a port; marks what it sends with the DSCP and sizes its
/// buffers as configured.
fn bind_udp(
    address: SocketAddr,
    settings: &ControlSettings,
) -> std::io::Result<std::net::UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(
        Domain::for_address(address),
        Type::DGRAM,
        Some(Protocol::UDP),
    )?;
    socket.set_nonblocking(true)?;
    let tos = u32::from(settings.dscp) << 2;
    if tos != 0 {
        if address.is_ipv4() {
            socket.set_tos_v4(tos)?;
        } else {
            socket.set_tclass_v6(tos)?;
        }
    }
    if settings.socket_buffer > 0 {
        socket.set_recv_buffer_size(settings.socket_buffer)?;
        socket.set_send_buffer_size(settings.socket_buffer)?;
    }
    socket.bind(&address.into())?;
    Ok(socket.into())
}

fn recorder_error(error: RecorderError) -> ControlError {
    match error {
        RecorderError::Gone => ControlError::Internal(error.to_string()),
        RecorderError::Failed(text) => {
            ControlError::FailedPrecondition(format!("recording: {text}"))
        }
    }
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

/// A random-enough id for this process: time and pid, hex.
fn instance_id() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("{:x}-{:x}", nanos as u64, std::process::id())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(dscp: u8, socket_buffer: usize) -> ControlSettings {
        ControlSettings {
            node_id: "t".into(),
            media_ip: IpAddr::from([127, 0, 0, 1]),
            advertise_ip: IpAddr::from([127, 0, 0, 1]),
            ports: PortRange { min: 0, max: 0 },
            port_quarantine: Duration::ZERO,
            lease_timeout: Duration::ZERO,
            max_sessions_per_owner: None,
            dscp,
            socket_buffer,
            encode_release: crate::grpc::encode_release,
        }
    }

    #[test]
    fn relay_sockets_carry_the_dscp_and_the_buffer_size() {
        let socket = bind_udp("127.0.0.1:0".parse().unwrap(), &settings(46, 1 << 20)).unwrap();
        let socket = socket2::SockRef::from(&socket);
        assert_eq!(socket.tos_v4().unwrap(), 46 << 2, "EF");
        // Linux caps the request at rmem_max, then doubles it for its bookkeeping.
        let rmem_max: usize = std::fs::read_to_string("/proc/sys/net/core/rmem_max")
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        assert_eq!(
            socket.recv_buffer_size().unwrap(),
            2 * rmem_max.min(1 << 20)
        );
        let plain = bind_udp("127.0.0.1:0".parse().unwrap(), &settings(0, 0)).unwrap();
        assert_eq!(socket2::SockRef::from(&plain).tos_v4().unwrap(), 0);
        let v6 = bind_udp("[::1]:0".parse().unwrap(), &settings(46, 0)).unwrap();
        assert_eq!(socket2::SockRef::from(&v6).tclass_v6().unwrap(), 46 << 2);
    }

    #[test]
    fn a_bound_port_cannot_be_bound_again() {
        let first = bind_udp("127.0.0.1:0".parse().unwrap(), &settings(46, 0)).unwrap();
        let taken = first.local_addr().unwrap();
        assert!(
            bind_udp(taken, &settings(46, 0)).is_err(),
            "no SO_REUSEADDR/PORT sharing"
        );
    }
}
