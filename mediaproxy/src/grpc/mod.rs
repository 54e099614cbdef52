//! The `mediaproxy.v1.MediaProxy` gRPC service.
//!
//! Generated protobuf types stop here: requests are converted into domain types (with an
//! `INVALID_ARGUMENT` naming the offending field when they do not convert), answers are built
//! from domain snapshots. Every method's latency lands in
//! `mediaproxy_grpc_request_duration_seconds{method}`.
//!
//! This file is the service: its methods, who a client is and which calls it may act on, its
//! request budget, draining. The conversions between wire and domain types, both ways, are
//! `grpc/convert.rs`.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use proto::v1 as pb;
use proto::v1::media_proxy_server::MediaProxy;
use tokio_stream::{
    Stream, StreamExt,
    wrappers::{BroadcastStream, ReceiverStream},
};
use tonic::{Request, Response, Status};

use crate::control::{AllocateRequest, Control, Figures};
use crate::ratelimit::{Charge, RateLimiter};
use crate::types::{CallId, Owner, ReleaseReason};
use prost::Message as _;

mod convert;

use convert::{
    allocation_to_wire, event_to_wire, local_to_wire, owner, recording_to_wire, release_to_wire,
    stats_to_wire, status_to_wire,
};
pub(crate) use convert::{
    call_id, encode_release, kind_from_wire, lease_timeout, leg_from_wire, remote_from_wire,
    signaling_ip,
};

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

/// The name a client's request budget is kept under: its certificate's common name under
/// mutual TLS, else the IP address it connects from.
fn budget_key(identity: Option<String>, remote: Option<SocketAddr>) -> String {
    identity
        .or_else(|| remote.map(|a| a.ip().to_string()))
        .unwrap_or_else(|| "unknown".to_owned())
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
