//! The `mediaproxy.v1.MediaProxy` gRPC service.
//!
//! Generated protobuf types stop here: requests are converted into domain types (with an
//! `INVALID_ARGUMENT` naming the offending field when they do not convert), answers are built
//! from domain snapshots. Every method's latency lands in
//! `mediaproxy_grpc_request_duration_seconds{method}`.

use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use proto::v1 as pb;
use proto::v1::media_proxy_server::MediaProxy;
use tokio_stream::{
    Stream, StreamExt,
    wrappers::{BroadcastStream, ReceiverStream},
};
use tonic::{Request, Response, Status};

use crate::control::{
    AllocateRequest, Allocation, Control, ControlError, Figures, LocalMedia, Released,
};
use crate::ratelimit::{Charge, Limited, RateLimiter};
use crate::recording::{RecordingInfo, RecordingStatus};
use crate::session::{CallSnapshot, Event, EventKind, MediaSnapshot};
use crate::types::{
    CallId, Codec, Direction, DropReason, Leg, MediaKind, Owner, ReleaseReason, RemoteMedia,
    RemoteTarget,
};
use prost::Message as _;

/// The gRPC service; cheap to clone.
#[derive(Clone)]
pub(crate) struct Service {
    control: Arc<Control>,
    /// Certificate common names of operators (`--tls-operator`).
    operators: Arc<[String]>,
    /// gRPC health, told when a Drain request starts or ends draining.
    health: tonic_health::server::HealthReporter,
    /// Each client's budget of requests (charged by [`limit_requests`]) and allocations.
    limiter: Arc<RateLimiter>,
}

/// Who sent a request: under mutual TLS, its certificate's common name, and whether that
/// name is an operator's, who sees and may act on every owner's calls.
#[derive(Debug, Clone)]
struct Client {
    name: Option<String>,
    operator: bool,
}

impl Client {
    /// Whether the client may see and act on `owner`'s calls.
    fn owns(&self, owner: &Owner) -> bool {
        self.operator || belongs(self.name.as_deref(), owner)
    }
}

impl Service {
    /// The service; clients whose certificate's common name is in `operators` see and may
    /// act on every owner's calls.
    pub(crate) fn new(
        control: Arc<Control>,
        operators: &[String],
        health: tonic_health::server::HealthReporter,
        limiter: Arc<RateLimiter>,
    ) -> Self {
        Self {
            control,
            operators: operators.into(),
            health,
            limiter,
        }
    }

    fn client<T>(&self, request: &Request<T>) -> Client {
        let name = peer_identity(request);
        let operator = name
            .as_ref()
            .is_some_and(|n| self.operators.iter().any(|o| o == n));
        Client { name, operator }
    }

    /// Refuses a request on a call that another client's certificate owns.
    fn check_call(&self, client: &Client, call: &CallId) -> Result<(), Status> {
        match self.control.owner_of(call) {
            Some(owner) if !client.owns(&owner) => Err(Status::permission_denied(format!(
                "call {call} belongs to another client"
            ))),
            _ => Ok(()),
        }
    }

    fn timer(&self, method: &str) -> prometheus::HistogramTimer {
        self.control
            .metrics()
            .grpc_duration
            .with_label_values(&[method])
            .start_timer()
    }
}

impl From<ControlError> for Status {
    fn from(error: ControlError) -> Self {
        let message = error.to_string();
        match error {
            ControlError::InvalidArgument(_) => Self::invalid_argument(message),
            ControlError::NotFound(_) => Self::not_found(message),
            ControlError::FailedPrecondition(_) => Self::failed_precondition(message),
            ControlError::PortsExhausted(_)
            | ControlError::DescriptorsExhausted(_)
            | ControlError::QuotaExceeded { .. } => Self::resource_exhausted(message),
            ControlError::Draining => Self::unavailable(message),
            ControlError::Internal(_) => Self::internal(message),
        }
    }
}

pub(crate) fn call_id(text: &str) -> Result<CallId, Status> {
    CallId::parse(text).map_err(|e| Status::invalid_argument(e.to_string()))
}

pub(crate) fn owner(text: &str) -> Result<Owner, Status> {
    Owner::parse(text).map_err(|e| Status::invalid_argument(e.to_string()))
}

/// The name a client's request budget is kept under: its certificate's common name under
/// mutual TLS, else the IP address it connects from.
fn budget_key(identity: Option<String>, remote: Option<SocketAddr>) -> String {
    identity
        .or_else(|| remote.map(|a| a.ip().to_string()))
        .unwrap_or_else(|| "unknown".to_owned())
}

impl From<Limited> for Status {
    fn from(limited: Limited) -> Self {
        Self::resource_exhausted(limited.message)
    }
}

/// The service's interceptor: every request takes from its client's budget, and one past it
/// is refused `RESOURCE_EXHAUSTED` before it is decoded further.
pub(crate) fn limit_requests(
    limiter: Arc<RateLimiter>,
) -> impl FnMut(Request<()>) -> Result<Request<()>, Status> + Clone {
    move |request| {
        let key = budget_key(peer_identity(&request), request.remote_addr());
        limiter.charge(&key, Charge::Request, Instant::now())?;
        Ok(request)
    }
}

/// The common name of the client's certificate, under mutual TLS.
fn peer_identity<T>(request: &Request<T>) -> Option<String> {
    let certificates = request.peer_certs()?;
    crate::identity::common_name(certificates.first()?.as_ref())
}

/// The owner a request speaks for: under mutual TLS its certificate's name qualifies the name
/// it sends (`<CN>:<owner>`), so no client can act as another's owner.
pub(crate) fn qualified(identity: Option<&str>, field: &str) -> Result<Owner, Status> {
    match identity {
        Some(name) => owner(&format!("{name}:{field}")),
        None => owner(field),
    }
}

/// Whether `owner` is one of the client's own (always, without mutual TLS).
fn belongs(identity: Option<&str>, owner: &Owner) -> bool {
    identity.is_none_or(|name| {
        owner
            .as_str()
            .strip_prefix(name)
            .is_some_and(|rest| rest.starts_with(':'))
    })
}

/// A wire leg as the domain one; UNSPECIFIED and unknown values are refused.
pub(crate) fn leg_from_wire(value: i32) -> Result<Leg, Status> {
    Leg::from_wire(value).map_err(|e| Status::invalid_argument(e.0))
}

/// A wire media kind as the domain one; UNSPECIFIED is refused naming `field`.
pub(crate) fn kind_from_wire(value: i32, field: &str) -> Result<MediaKind, Status> {
    MediaKind::from_wire(value, field).map_err(|e| Status::invalid_argument(e.0))
}

fn port(value: u32, field: &str) -> Result<u16, Status> {
    u16::try_from(value)
        .map_err(|_| Status::invalid_argument(format!("{field} {value} is not a UDP port")))
}

/// Converts one `RemoteMedia`, checking that the relay can reach the address family.
pub(crate) fn remote_from_wire(
    position: usize,
    wire: &pb::RemoteMedia,
    media_ip: IpAddr,
) -> Result<RemoteMedia, Status> {
    let field = |name: &str| format!("media[{position}].{name}");
    let index = usize::try_from(wire.index)
        .map_err(|_| Status::invalid_argument(format!("{} is too large", field("index"))))?;
    let rtp_port = port(wire.rtp_port, &field("rtp_port"))?;
    let target = if rtp_port == 0 {
        RemoteTarget::Disabled
    } else {
        let ip: IpAddr = wire.address.trim().parse().map_err(|_| {
            Status::invalid_argument(format!(
                "{} {:?} is not an IPv4 or IPv6 address",
                field("address"),
                wire.address
            ))
        })?;
        if ip.is_unspecified() {
            RemoteTarget::Hold
        } else {
            if ip.is_ipv4() != media_ip.is_ipv4() && !media_ip.is_unspecified() {
                return Err(Status::invalid_argument(format!(
                    "{} {ip} is not of the relay's address family (--media-ip {media_ip})",
                    field("address")
                )));
            }
            let rtcp_port = match wire.rtcp_port {
                0 => rtp_port.checked_add(1).ok_or_else(|| {
                    Status::invalid_argument(format!(
                        "{} 65535 leaves no room for RTCP on port + 1",
                        field("rtp_port")
                    ))
                })?,
                value => port(value, &field("rtcp_port"))?,
            };
            RemoteTarget::Address {
                rtp: SocketAddr::new(ip, rtp_port),
                rtcp: SocketAddr::new(ip, rtcp_port),
            }
        }
    };
    let codecs = wire
        .codecs
        .iter()
        .enumerate()
        .map(|(i, codec)| {
            Codec::try_from(codec).map_err(|e| {
                Status::invalid_argument(format!("{}.{e}", field(&format!("codecs[{i}]"))))
            })
        })
        .collect::<Result<Vec<_>, Status>>()?;
    Ok(RemoteMedia {
        index,
        target,
        codecs,
        direction: Direction::from_wire(wire.direction),
        signaling_ip: None,
    })
}

/// An update's `signaling_address`: None when empty.
pub(crate) fn signaling_ip(text: &str) -> Result<Option<IpAddr>, Status> {
    let text = text.trim();
    if text.is_empty() {
        return Ok(None);
    }
    text.parse().map(Some).map_err(|_| {
        Status::invalid_argument(format!(
            "signaling_address {text:?} is not an IPv4 or IPv6 address"
        ))
    })
}

fn local_to_wire(media: &[LocalMedia]) -> Vec<pb::LocalMedia> {
    media
        .iter()
        .map(|m| pb::LocalMedia {
            index: m.index as u32,
            kind: m.kind.to_wire(),
            rtp_port: u32::from(m.rtp_port),
            rtcp_port: u32::from(m.rtp_port) + 1,
        })
        .collect()
}

fn address_text(address: Option<SocketAddr>) -> String {
    address.map(|a| a.to_string()).unwrap_or_default()
}

fn media_to_wire(m: &MediaSnapshot) -> pb::MediaStats {
    let drop = |reason: DropReason| m.drops[reason.index()];
    pb::MediaStats {
        index: m.index as u32,
        kind: m.kind.to_wire(),
        local_rtp_port: u32::from(m.local_rtp_port),
        local_rtcp_port: u32::from(m.local_rtcp_port),
        sdp_rtp_address: address_text(m.sdp_rtp),
        sdp_rtcp_address: address_text(m.sdp_rtcp),
        latched_rtp_source: address_text(m.latched_rtp),
        latched_rtcp_source: address_text(m.latched_rtcp),
        rtp_received: Some(m.rtp_received.into()),
        rtcp_received: Some(m.rtcp_received.into()),
        rtp_sent: Some(m.rtp_sent.into()),
        rtcp_sent: Some(m.rtcp_sent.into()),
        quality: Some(m.quality.into()),
        drops: Some(pb::Drops {
            unknown_source: drop(DropReason::UnknownSource),
            before_latching: drop(DropReason::BeforeLatching),
            too_short: drop(DropReason::TooShort),
            not_rtp: drop(DropReason::NotRtp),
            no_destination: drop(DropReason::NoDestination),
            send_error: drop(DropReason::SendError),
        }),
        recorded_packets: m.recorded_packets,
        source_changes: m.source_changes,
        direction: m.direction.to_wire(),
    }
}

fn recording_to_wire(call_id: &str, info: &RecordingInfo, dropped: u64) -> pb::RecordingState {
    use pb::recording_state::State;
    let state = match info.status {
        RecordingStatus::Off => State::Off,
        RecordingStatus::Recording => State::Recording,
        RecordingStatus::Paused => State::Paused,
        RecordingStatus::Finished => State::Finished,
    };
    pb::RecordingState {
        call_id: call_id.to_owned(),
        state: state as i32,
        path: info
            .path
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_default(),
        packets: info.packets,
        error: info.error.clone().unwrap_or_default(),
        files: info.files.iter().map(|f| f.display().to_string()).collect(),
        duration_ms: info.duration_ms,
        sample_rate: info.sample_rate,
        dropped_packets: dropped,
    }
}

/// Statistics on the wire; `recording` None leaves the recording state out (ListSessions).
fn stats_to_wire(
    snapshot: &CallSnapshot,
    recording: Option<&RecordingInfo>,
    node_id: &str,
) -> pb::CallStats {
    pb::CallStats {
        call_id: snapshot.call_id.to_string(),
        owner: snapshot.owner.to_string(),
        node_id: node_id.to_owned(),
        created_unix_ms: snapshot.created_unix_ms,
        released_unix_ms: snapshot.released_unix_ms,
        legs: snapshot
            .legs
            .iter()
            .map(|leg| pb::LegStats {
                leg: leg.leg.to_wire(),
                media: leg.media.iter().map(media_to_wire).collect(),
            })
            .collect(),
        recording: recording.map(|info| {
            recording_to_wire(snapshot.call_id.as_str(), info, snapshot.recorder_dropped)
        }),
    }
}

fn release_to_wire(released: &Released, node_id: &str) -> pb::ReleaseResponse {
    pb::ReleaseResponse {
        stats: Some(stats_to_wire(
            &released.snapshot,
            Some(&released.recording),
            node_id,
        )),
        already_released: false,
        release_reason: released.reason.as_str().to_owned(),
    }
}

/// The compact form a released call's tombstone keeps: the release answer encoded once
/// (protobuf's varints and absent zero fields make it 425 bytes for an audio call, against
/// 1 064 for the figures' structs), decoded again for a retried release.
pub(crate) fn encode_release(released: &Released, node_id: &str) -> Vec<u8> {
    release_to_wire(released, node_id).encode_to_vec()
}

fn event_to_wire(event: &Event, node_id: &str) -> pb::Event {
    use pb::event::Kind;
    let kind = match &event.kind {
        EventKind::FirstPacket { source, sdp, rtcp } => Kind::FirstPacket(pb::FirstPacket {
            source: source.to_string(),
            sdp_address: address_text(*sdp),
            matches_sdp: Some(*source) == *sdp,
            rtcp: *rtcp,
        }),
        EventKind::SourceChanged { from, to, rtcp } => Kind::SourceChanged(pb::SourceChanged {
            from: from.to_string(),
            to: to.to_string(),
            rtcp: *rtcp,
        }),
        EventKind::MediaTimeout { idle } => Kind::MediaTimeout(pb::MediaTimeout {
            idle_ms: idle.as_millis() as u64,
        }),
        EventKind::OneWayMedia { silent_for } => Kind::OneWayMedia(pb::OneWayMedia {
            silent_ms: silent_for.as_millis() as u64,
        }),
        EventKind::RecordingFinished { path, packets } => {
            Kind::RecordingFinished(pb::RecordingFinished {
                path: path.clone(),
                packets: *packets,
            })
        }
        EventKind::SessionReleased { reason } => Kind::SessionReleased(pb::SessionReleased {
            reason: reason.as_str().to_owned(),
        }),
    };
    pb::Event {
        call_id: event.call_id.to_string(),
        leg: event.leg.to_wire(),
        media_index: event.media as u32,
        unix_ms: event.unix_ms,
        node_id: node_id.to_owned(),
        owner: event.owner.to_string(),
        kind: Some(kind),
    }
}

fn allocation_to_wire(allocation: Allocation, node_id: &str) -> pb::AllocateResponse {
    pb::AllocateResponse {
        call_id: allocation.call_id.to_string(),
        leg: allocation.leg.to_wire(),
        node_id: node_id.to_owned(),
        advertised_address: allocation.advertised.to_string(),
        media: local_to_wire(&allocation.media),
        existing: allocation.existing,
    }
}

pub(crate) fn lease_timeout(ms: u64) -> Option<Duration> {
    (ms > 0).then(|| Duration::from_millis(ms))
}

type EventStream = Pin<Box<dyn Stream<Item = Result<pb::Event, Status>> + Send>>;
type AudioStream = Pin<Box<dyn Stream<Item = Result<pb::AudioFrame, Status>> + Send>>;

#[tonic::async_trait]
impl MediaProxy for Service {
    async fn allocate(
        &self,
        request: Request<pb::AllocateRequest>,
    ) -> Result<Response<pb::AllocateResponse>, Status> {
        let _timer = self.timer("allocate");
        let client = self.client(&request);
        let key = budget_key(client.name.clone(), request.remote_addr());
        self.limiter
            .charge(&key, Charge::Allocation, Instant::now())?;
        let request = request.into_inner();
        let media = request
            .media
            .iter()
            .enumerate()
            .map(|(i, kind)| kind_from_wire(*kind, &format!("media[{i}]")))
            .collect::<Result<Vec<_>, _>>()?;
        let id = call_id(&request.call_id)?;
        self.check_call(&client, &id)?;
        let allocation = self.control.allocate(AllocateRequest {
            call_id: id,
            leg: leg_from_wire(request.leg)?,
            owner: qualified(client.name.as_deref(), &request.owner)?,
            media,
            lease_timeout: lease_timeout(request.lease_timeout_ms),
            reflect: request.reflect,
        })?;
        Ok(Response::new(allocation_to_wire(
            allocation,
            &self.control.settings().node_id,
        )))
    }

    async fn update(
        &self,
        request: Request<pb::UpdateRequest>,
    ) -> Result<Response<pb::UpdateResponse>, Status> {
        let _timer = self.timer("update");
        let client = self.client(&request);
        let request = request.into_inner();
        let id = call_id(&request.call_id)?;
        self.check_call(&client, &id)?;
        let media_ip = self.control.settings().media_ip;
        let signaling = signaling_ip(&request.signaling_address)?;
        let remotes = request
            .media
            .iter()
            .enumerate()
            .map(|(i, m)| {
                remote_from_wire(i, m, media_ip).map(|mut remote| {
                    remote.signaling_ip = signaling;
                    remote
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let allocation = self
            .control
            .update(id, leg_from_wire(request.leg)?, remotes)
            .await?;
        Ok(Response::new(pb::UpdateResponse {
            call_id: allocation.call_id.to_string(),
            leg: allocation.leg.to_wire(),
            media: local_to_wire(&allocation.media),
            advertised_address: allocation.advertised.to_string(),
        }))
    }

    async fn release(
        &self,
        request: Request<pb::ReleaseRequest>,
    ) -> Result<Response<pb::ReleaseResponse>, Status> {
        let _timer = self.timer("release");
        let client = self.client(&request);
        let request = request.into_inner();
        let id = call_id(&request.call_id)?;
        self.check_call(&client, &id)?;
        let outcome = self.control.release(&id, ReleaseReason::Released).await?;
        if !outcome.already_released {
            tracing::debug!(call_id = %id, reason = %request.reason.chars().take(64).collect::<String>(), "released by owner");
        }
        let mut answer = match outcome.figures {
            Figures::Fresh(released) => {
                release_to_wire(&released, &self.control.settings().node_id)
            }
            Figures::Kept(encoded) => pb::ReleaseResponse::decode(&encoded[..])
                .map_err(|e| Status::internal(format!("a kept release answer: {e}")))?,
        };
        answer.already_released = outcome.already_released;
        Ok(Response::new(answer))
    }

    async fn query_stats(
        &self,
        request: Request<pb::QueryStatsRequest>,
    ) -> Result<Response<pb::CallStats>, Status> {
        let _timer = self.timer("query_stats");
        let client = self.client(&request);
        let id = call_id(&request.into_inner().call_id)?;
        self.check_call(&client, &id)?;
        let snapshot = self.control.query(&id).await?;
        let recording = self.control.recording(&id).await?;
        Ok(Response::new(stats_to_wire(
            &snapshot,
            Some(&recording),
            &self.control.settings().node_id,
        )))
    }

    async fn set_debug(
        &self,
        request: Request<pb::SetDebugRequest>,
    ) -> Result<Response<pb::SetDebugResponse>, Status> {
        let _timer = self.timer("set_debug");
        let client = self.client(&request);
        let request = request.into_inner();
        let id = call_id(&request.call_id)?;
        self.check_call(&client, &id)?;
        self.control.set_debug(&id, request.enabled).await?;
        Ok(Response::new(pb::SetDebugResponse {
            call_id: request.call_id,
            enabled: request.enabled,
        }))
    }

    async fn list_sessions(
        &self,
        request: Request<pb::ListSessionsRequest>,
    ) -> Result<Response<pb::ListSessionsResponse>, Status> {
        let _timer = self.timer("list_sessions");
        let client = self.client(&request);
        let request = request.into_inner();
        let filter = if request.owner.is_empty() {
            None
        } else {
            Some(qualified(client.name.as_deref(), &request.owner)?)
        };
        let node = &self.control.settings().node_id;
        let sessions = self
            .control
            .list(filter.as_ref())
            .await?
            .iter()
            .filter(|s| client.owns(&s.owner))
            .map(|s| stats_to_wire(s, None, node))
            .collect();
        Ok(Response::new(pb::ListSessionsResponse { sessions }))
    }

    async fn renew_lease(
        &self,
        request: Request<pb::RenewLeaseRequest>,
    ) -> Result<Response<pb::RenewLeaseResponse>, Status> {
        let _timer = self.timer("renew_lease");
        let client = self.client(&request);
        let request = request.into_inner();
        let state = self.control.renew_lease(
            &qualified(client.name.as_deref(), &request.owner)?,
            lease_timeout(request.lease_timeout_ms),
        );
        Ok(Response::new(pb::RenewLeaseResponse {
            sessions: state.sessions as u32,
            lease_timeout_ms: state.timeout.as_millis() as u64,
            instance_id: state.instance_id,
        }))
    }

    async fn start_recording(
        &self,
        request: Request<pb::StartRecordingRequest>,
    ) -> Result<Response<pb::RecordingState>, Status> {
        let _timer = self.timer("start_recording");
        let client = self.client(&request);
        let request = request.into_inner();
        let id = call_id(&request.call_id)?;
        self.check_call(&client, &id)?;
        let stem = (!request.file_stem.is_empty()).then_some(request.file_stem);
        let info = self
            .control
            .start_recording(&id, stem, request.pcap)
            .await?;
        Ok(Response::new(recording_to_wire(id.as_str(), &info, 0)))
    }

    async fn pause_recording(
        &self,
        request: Request<pb::RecordingControlRequest>,
    ) -> Result<Response<pb::RecordingState>, Status> {
        let _timer = self.timer("pause_recording");
        let client = self.client(&request);
        let id = call_id(&request.into_inner().call_id)?;
        self.check_call(&client, &id)?;
        let info = self.control.pause_recording(&id).await?;
        Ok(Response::new(recording_to_wire(id.as_str(), &info, 0)))
    }

    async fn stop_recording(
        &self,
        request: Request<pb::RecordingControlRequest>,
    ) -> Result<Response<pb::RecordingState>, Status> {
        let _timer = self.timer("stop_recording");
        let client = self.client(&request);
        let id = call_id(&request.into_inner().call_id)?;
        self.check_call(&client, &id)?;
        let info = self.control.stop_recording(&id).await?;
        Ok(Response::new(recording_to_wire(id.as_str(), &info, 0)))
    }

    type WatchEventsStream = EventStream;

    async fn watch_events(
        &self,
        request: Request<pb::WatchEventsRequest>,
    ) -> Result<Response<Self::WatchEventsStream>, Status> {
        let _timer = self.timer("watch_events");
        let client = self.client(&request);
        let request = request.into_inner();
        let owner_filter = if request.owner.is_empty() {
            None
        } else {
            Some(qualified(client.name.as_deref(), &request.owner)?)
        };
        let call_filter = if request.call_id.is_empty() {
            None
        } else {
            Some(call_id(&request.call_id)?)
        };
        let node_id = self.control.settings().node_id.clone();
        let stream = BroadcastStream::new(self.control.subscribe())
            .take_while(|item| !matches!(item, Ok(None)))
            .filter_map(move |item| match item {
                Ok(Some(event)) => {
                    let wanted = owner_filter.as_ref().is_none_or(|o| *o == event.owner)
                        && client.owns(&event.owner)
                        && call_filter.as_ref().is_none_or(|c| *c == event.call_id);
                    wanted.then(|| Ok(event_to_wire(&event, &node_id)))
                }
                Ok(None) => None,
                Err(tokio_stream::wrappers::errors::BroadcastStreamRecvError::Lagged(missed)) => {
                    tracing::warn!(missed, "event watcher too slow; events skipped");
                    None
                }
            });
        Ok(Response::new(Box::pin(stream)))
    }

    type TapAudioStream = AudioStream;

    async fn tap_audio(
        &self,
        request: Request<pb::TapAudioRequest>,
    ) -> Result<Response<Self::TapAudioStream>, Status> {
        let _timer = self.timer("tap_audio");
        let client = self.client(&request);
        let request = request.into_inner();
        let id = call_id(&request.call_id)?;
        self.check_call(&client, &id)?;
        let leg = match request.leg {
            0 => None,
            _ => Some(leg_from_wire(request.leg)?),
        };
        if request.sample_rate != 0 && !(8000..=48000).contains(&request.sample_rate) {
            return Err(Status::invalid_argument(format!(
                "sample_rate {} is outside 8000-48000 (0 for the call's own)",
                request.sample_rate
            )));
        }
        let frames = self.control.tap(&id, leg, request.sample_rate).await?;
        let stream = ReceiverStream::new(frames).map(|frame| {
            let mut pcm = Vec::with_capacity(frame.pcm.len() * 2);
            for sample in &frame.pcm {
                pcm.extend_from_slice(&sample.to_le_bytes());
            }
            Ok(pb::AudioFrame {
                call_id: frame.call_id.to_string(),
                leg: frame.leg.to_wire(),
                media_index: u32::from(frame.media),
                unix_ms: frame.unix_ms,
                sequence: frame.sequence,
                rtp_timestamp: frame.position as u32,
                encoding: frame.encoding.to_owned(),
                sample_rate: frame.sample_rate,
                pcm,
                dropped_before: frame.dropped_before,
            })
        });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn status(
        &self,
        _request: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::StatusResponse>, Status> {
        let _timer = self.timer("status");
        Ok(Response::new(status_to_wire(&self.control)))
    }

    async fn drain(
        &self,
        request: Request<pb::DrainRequest>,
    ) -> Result<Response<pb::StatusResponse>, Status> {
        let _timer = self.timer("drain");
        set_draining(&self.control, &self.health, request.into_inner().drain).await;
        Ok(Response::new(status_to_wire(&self.control)))
    }
}

/// Starts or ends draining (a Drain request, or SIGTERM): new calls are refused, and gRPC
/// health says `mediaproxy.v1.MediaProxy` is NOT_SERVING while the node drains (readiness
/// probes and load balancers stop sending it new calls); the process's own status ("")
/// stays SERVING.
pub(crate) async fn set_draining(
    control: &Control,
    health: &tonic_health::server::HealthReporter,
    draining: bool,
) {
    use proto::v1::media_proxy_server::MediaProxyServer;
    control.set_draining(draining);
    if draining {
        health.set_not_serving::<MediaProxyServer<Service>>().await;
    } else {
        health.set_serving::<MediaProxyServer<Service>>().await;
    }
}

fn status_to_wire(control: &Control) -> pb::StatusResponse {
    let status = control.status();
    pb::StatusResponse {
        node_id: status.node_id,
        instance_id: status.instance_id,
        version: env!("CARGO_PKG_VERSION").to_owned(),
        advertised_address: status.advertised.to_string(),
        sessions: status.sessions as u32,
        ports_free: status.ports_free as u32,
        ports_total: status.ports_total as u32,
        packets_per_second: status.packets_per_second,
        draining: status.draining,
        uptime_seconds: status.uptime.as_secs(),
        owners: status.owners as u32,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wire(address: &str, rtp: u32, rtcp: u32) -> pb::RemoteMedia {
        pb::RemoteMedia {
            index: 0,
            address: address.into(),
            rtp_port: rtp,
            rtcp_port: rtcp,
            codecs: vec![],
            direction: 0,
        }
    }

    const V4: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

    #[test]
    fn remote_media_converts_hold_disabled_and_rtcp_defaults() {
        let r = remote_from_wire(0, &wire("10.0.0.1", 4000, 0), V4).unwrap();
        assert_eq!(
            r.target,
            RemoteTarget::Address {
                rtp: "10.0.0.1:4000".parse().unwrap(),
                rtcp: "10.0.0.1:4001".parse().unwrap()
            }
        );
        assert_eq!(
            remote_from_wire(0, &wire("0.0.0.0", 4000, 0), V4)
                .unwrap()
                .target,
            RemoteTarget::Hold
        );
        assert_eq!(
            remote_from_wire(0, &wire("", 0, 0), V4).unwrap().target,
            RemoteTarget::Disabled
        );
    }

    #[test]
    fn remote_media_errors_name_the_field() {
        let error = remote_from_wire(2, &wire("not-an-ip", 4000, 0), V4).unwrap_err();
        assert!(
            error.message().contains("media[2].address"),
            "{}",
            error.message()
        );
        let error = remote_from_wire(0, &wire("10.0.0.1", 70000, 0), V4).unwrap_err();
        assert!(
            error.message().contains("media[0].rtp_port"),
            "{}",
            error.message()
        );
        let error = remote_from_wire(0, &wire("10.0.0.1", 65535, 0), V4).unwrap_err();
        assert!(error.message().contains("RTCP"), "{}", error.message());
        let error = remote_from_wire(0, &wire("::1", 4000, 0), V4).unwrap_err();
        assert!(
            error.message().contains("address family"),
            "{}",
            error.message()
        );
        let mut bad_codec = wire("10.0.0.1", 4000, 0);
        bad_codec.codecs.push(pb::Codec {
            payload_type: 200,
            encoding: "x".into(),
            clock_rate: 8000,
            channels: 1,
        });
        let error = remote_from_wire(0, &bad_codec, V4).unwrap_err();
        assert!(
            error.message().contains("codecs[0].payload_type"),
            "{}",
            error.message()
        );
    }

    #[test]
    fn legs_and_kinds_must_be_specified() {
        assert!(leg_from_wire(0).is_err());
        assert_eq!(leg_from_wire(2).unwrap(), Leg::Callee);
        assert!(
            kind_from_wire(0, "media[0]")
                .unwrap_err()
                .message()
                .contains("media[0]")
        );
    }
}
