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
//!
//! One file per concern, each adding its part of [`Control`]'s methods:
//!
//! - `control/mod.rs` (this file): the [`Control`] type, its settings, errors and shared
//!   state, and what only reads it (queries, listings, status, draining);
//! - `control/allocate.rs`: allocate and update, binding the sockets of a call's port pairs;
//! - `control/release.rs`: release, owners' leases, the periodic sweep, tombstones;
//! - `control/recording.rs`: starting, pausing and stopping a call's recording, and the tap.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::broadcast;

use crate::metrics::Metrics;
use crate::ports::{PortPool, PortRange};
use crate::recording::Recorder;
use crate::relay::{Relay, WorkerGone};
use crate::session::{CallSnapshot, Event, EventKind};
pub(crate) use crate::tombstone::{EncodeRelease, Released, TOMBSTONE_BYTES, TOMBSTONE_TTL};
use crate::tombstone::{Tombstone, Tombstones};
use crate::types::{CallId, Codec, Leg, MediaKind, Owner, WallClock};

mod allocate;
mod recording;
mod release;

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

/// A random-enough id for this process: time and pid, hex.
fn instance_id() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("{:x}-{:x}", nanos as u64, std::process::id())
}
