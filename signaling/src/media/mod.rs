//! The media proxy client: allocate, update and release over gRPC (`mediaproxy.v1`), with a
//! deadline on every call so a slow proxy never holds SIP processing, and a lease heartbeat.
//! Wire types stay in this module; it speaks the `proto` crate's domain types and knows
//! nothing of the proxy's internals. Every failure is a [`MediaError`] that names the SIP
//! status the call gets for it. [`pool`] spreads calls over several nodes and watches them.

#[cfg(test)]
mod faults;
pub(crate) mod pool;

use std::net::IpAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use proto::domain::{Direction, Leg, MediaKind};
use proto::v1 as pb;
use proto::v1::media_proxy_client::MediaProxyClient;
use tonic::transport::{Channel, Endpoint as Dial};

pub(crate) use crate::call::{CallId, Endpoint, MediaError, MediaPlan, RecordingAction};
pub(crate) use crate::cdr::completion::{FinalStats, Recording};
use crate::cdr::diagnosis::{Drops, MediaFigures};
pub(crate) use crate::config::ClientTls;
use crate::sdp::SessionDescription;

/// Deadline of one media proxy request.
const DEADLINE: Duration = Duration::from_secs(2);

/// HTTP/2 PING period on an idle link, and how long an unanswered PING may wait before the
/// connection is dropped. A partitioned node's TCP connection would otherwise live on for
/// the kernel's retransmission timeout (about 15 minutes), holding requests that time out and
/// bytes that arrive, stale, when the network heals; dropped, the next request dials afresh.
const KEEPALIVE: Duration = Duration::from_secs(1);

impl Recording {
    /// The recording a `RecordingState` describes; None for one that never started.
    pub(crate) fn from_wire(state: &pb::RecordingState) -> Option<Self> {
        use pb::recording_state::State;
        let name = match State::try_from(state.state).unwrap_or(State::Unspecified) {
            State::Unspecified | State::Off => return None,
            State::Recording => "recording",
            State::Paused => "paused",
            State::Finished => "finished",
        };
        Some(Self {
            state: name,
            path: state.path.clone(),
            files: state.files.clone(),
            packets: state.packets,
            duration_ms: state.duration_ms,
            sample_rate: state.sample_rate,
            dropped_packets: state.dropped_packets,
            error: state.error.clone(),
        })
    }
}

impl From<tonic::Status> for MediaError {
    fn from(status: tonic::Status) -> Self {
        let text = status_text(&status);
        match status.code() {
            tonic::Code::Unavailable | tonic::Code::DeadlineExceeded | tonic::Code::Cancelled => {
                Self::Unavailable(text)
            }
            tonic::Code::ResourceExhausted => Self::Exhausted(text),
            tonic::Code::InvalidArgument | tonic::Code::FailedPrecondition => Self::Refused(text),
            _ => Self::Failed(text),
        }
    }
}

/// Every media line of every leg of a call, from the wire. A leg or kind this build cannot
/// read is an error: figures filed under a guessed leg would blame the wrong phone.
pub(crate) fn figures_from_wire(stats: &pb::CallStats) -> Result<Vec<MediaFigures>, MediaError> {
    let unreadable = |e: proto::domain::WireError| MediaError::Failed(format!("statistics: {e}"));
    let mut out = Vec::new();
    for leg_stats in &stats.legs {
        let leg = Leg::from_wire(leg_stats.leg).map_err(unreadable)?;
        for m in &leg_stats.media {
            let kind = MediaKind::from_wire(m.kind, "kind").map_err(unreadable)?;
            let mut f = MediaFigures::new(leg, m.index, kind);
            f.local_rtp_port = m.local_rtp_port as u16;
            f.local_rtcp_port = m.local_rtcp_port as u16;
            f.sdp_rtp.clone_from(&m.sdp_rtp_address);
            f.sdp_rtcp.clone_from(&m.sdp_rtcp_address);
            f.latched_rtp.clone_from(&m.latched_rtp_source);
            f.latched_rtcp.clone_from(&m.latched_rtcp_source);
            f.rtp_in = m.rtp_received.unwrap_or_default().into();
            f.rtcp_in = m.rtcp_received.unwrap_or_default().into();
            f.rtp_out = m.rtp_sent.unwrap_or_default().into();
            f.rtcp_out = m.rtcp_sent.unwrap_or_default().into();
            f.quality = m.quality.unwrap_or_default().into();
            let d = m.drops.unwrap_or_default();
            f.drops = Drops {
                unknown_source: d.unknown_source,
                before_latching: d.before_latching,
                too_short: d.too_short,
                not_rtp: d.not_rtp,
                no_destination: d.no_destination,
                send_error: d.send_error,
            };
            f.recorded_packets = m.recorded_packets;
            f.source_changes = m.source_changes;
            f.direction = Direction::from_wire(m.direction);
            out.push(f);
        }
    }
    Ok(out)
}

/// A media proxy URL that is not a URL.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub(crate) struct InvalidUrl(pub String);

/// What `Status` says of a node, as far as signaling uses it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct NodeStatus {
    pub(crate) node_id: String,
    /// Ports in the node's range (two per RTP/RTCP pair).
    pub(crate) ports_total: u32,
    pub(crate) draining: bool,
    pub(crate) advertised_address: String,
    /// Random id of the proxy process: a new one means the node restarted without its calls.
    pub(crate) instance_id: String,
    pub(crate) sessions: u32,
    pub(crate) ports_free: u32,
}

/// A media event signaling acts on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum MediaEvent {
    /// The proxy released a session (by itself when `reason` is not `released`).
    Released { call_id: CallId, reason: String },
    /// The first RTP packet of a leg arrived from `source`.
    FirstPacket {
        call_id: CallId,
        leg: Leg,
        source: String,
    },
}

/// A client of one media proxy node.
#[derive(Clone)]
pub(crate) struct MediaClient {
    /// Shared by every clone, so [`MediaClient::reconnect`] reaches them all.
    client: Arc<RwLock<MediaProxyClient<Channel>>>,
    owner: String,
    pub(crate) url: Endpoint,
    durations: Option<prometheus::HistogramVec>,
}

fn status_text(status: &tonic::Status) -> String {
    format!("{:?}: {}", status.code(), status.message())
}

/// Pause before the one retry of a request.
const RETRY_PAUSE: Duration = Duration::from_millis(100);

/// Runs a request, retrying once when the proxy was unreachable or too slow
/// (`UNAVAILABLE`, `DEADLINE_EXCEEDED`). Safe because the proxy's allocate, update and release
/// are idempotent: a retry after a lost reply neither leaks nor double-frees ports.
async fn retried<T, F, Fut>(mut attempt: F) -> Result<T, MediaError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
{
    match attempt().await {
        Ok(response) => Ok(response.into_inner()),
        Err(status)
            if matches!(
                status.code(),
                tonic::Code::Unavailable | tonic::Code::DeadlineExceeded
            ) =>
        {
            tracing::debug!(error = %status_text(&status), "media proxy request retried");
            tokio::time::sleep(RETRY_PAUSE).await;
            attempt()
                .await
                .map(tonic::Response::into_inner)
                .map_err(MediaError::from)
        }
        Err(status) => Err(status.into()),
    }
}

impl MediaClient {
    /// A lazily connecting client: an unreachable proxy fails requests, not start-up.
    pub(crate) fn new(url: &str, owner: &str, tls: Option<&ClientTls>) -> Result<Self, InvalidUrl> {
        Ok(Self {
            client: Arc::new(RwLock::new(Self::connect(url, tls)?)),
            owner: owner.to_owned(),
            url: Endpoint::new(url),
            durations: None,
        })
    }

    /// Swaps in a channel made with `tls` (new client certificate or CA): requests from now
    /// on dial with it; those in flight finish on the old channel.
    pub(crate) fn reconnect(&self, tls: &ClientTls) -> Result<(), InvalidUrl> {
        let fresh = Self::connect(self.url.as_str(), Some(tls))?;
        *self.client.write().unwrap_or_else(|p| p.into_inner()) = fresh;
        Ok(())
    }

    fn channel(&self) -> MediaProxyClient<Channel> {
        self.client
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// A lazily connecting channel to `url`.
    fn connect(
        url: &str,
        tls: Option<&ClientTls>,
    ) -> Result<MediaProxyClient<Channel>, InvalidUrl> {
        let mut endpoint =
            Dial::from_shared(url.to_owned()).map_err(|e| InvalidUrl(format!("{url}: {e}")))?;
        if let (Some(tls), true) = (tls, url.starts_with("https://")) {
            let config = tonic::transport::ClientTlsConfig::new()
                .ca_certificate(tonic::transport::Certificate::from_pem(&tls.ca))
                .identity(tonic::transport::Identity::from_pem(&tls.cert, &tls.key));
            endpoint = endpoint
                .tls_config(config)
                .map_err(|e| InvalidUrl(format!("{url}: TLS: {e}")))?;
        }
        let endpoint = endpoint
            .connect_timeout(DEADLINE)
            .timeout(DEADLINE)
            .http2_keep_alive_interval(KEEPALIVE)
            .keep_alive_timeout(KEEPALIVE)
            .keep_alive_while_idle(true);
        Ok(MediaProxyClient::new(endpoint.connect_lazy()))
    }

    /// Times every request into `durations{method}`.
    pub(crate) fn with_durations(mut self, durations: prometheus::HistogramVec) -> Self {
        self.durations = Some(durations);
        self
    }

    fn timer(&self, method: &str) -> Option<prometheus::HistogramTimer> {
        self.durations
            .as_ref()
            .map(|h| h.with_label_values(&[method]).start_timer())
    }

    /// Allocates both legs for the offer's media lines and points `offer_leg` (where the
    /// offer came from) at it.
    pub(crate) async fn prepare(
        &self,
        call_id: &CallId,
        offer: &SessionDescription,
        offer_leg: Leg,
        reflect: bool,
    ) -> Result<MediaPlan, MediaError> {
        let plan = self.allocate_both(call_id, offer, reflect).await?;
        self.update(call_id, offer_leg, offer).await?;
        Ok(plan)
    }

    /// Sets up a call that moves here from a lost node: both legs allocated for the caller's
    /// media lines, each pointed at its last SDP.
    pub(crate) async fn take_over(
        &self,
        call_id: &CallId,
        caller: &SessionDescription,
        callee: &SessionDescription,
        reflect: bool,
    ) -> Result<MediaPlan, MediaError> {
        let plan = self.allocate_both(call_id, caller, reflect).await?;
        self.update(call_id, Leg::Caller, caller).await?;
        self.update(call_id, Leg::Callee, callee).await?;
        Ok(plan)
    }

    /// `reflect`: the call's decoded audio may be tapped (`TapAudio`).
    async fn allocate_both(
        &self,
        call_id: &CallId,
        offer: &SessionDescription,
        reflect: bool,
    ) -> Result<MediaPlan, MediaError> {
        let media: Vec<i32> = offer.media.iter().map(|m| m.kind.to_wire()).collect();
        let mut ports = Vec::new();
        let mut node = String::new();
        let mut advertised = String::new();
        for leg in [Leg::Caller, Leg::Callee] {
            let _timer = self.timer("allocate");
            let answer = retried(|| {
                let mut client = self.channel();
                let request = pb::AllocateRequest {
                    call_id: call_id.to_string(),
                    leg: leg.to_wire(),
                    owner: self.owner.clone(),
                    media: media.clone(),
                    lease_timeout_ms: 0,
                    reflect,
                };
                async move { client.allocate(request).await }
            })
            .await?;
            let malformed = |what: String| {
                MediaError::Failed(format!(
                    "malformed allocation answer from {}: {what}",
                    self.url
                ))
            };
            if answer.node_id.is_empty() {
                return Err(malformed("no node id".into()));
            }
            if answer.media.len() != media.len() {
                return Err(malformed(format!(
                    "{} media lines for the {} asked",
                    answer.media.len(),
                    media.len()
                )));
            }
            let mut leg_ports = Vec::with_capacity(answer.media.len());
            for line in &answer.media {
                // RTP on an even port, RTCP on the next (RFC 3550 section 11).
                match u16::try_from(line.rtp_port) {
                    Ok(port) if port != 0 && port % 2 == 0 && port < u16::MAX => {
                        leg_ports.push(port);
                    }
                    _ => return Err(malformed(format!("RTP port {}", line.rtp_port))),
                }
            }
            node = answer.node_id;
            advertised = answer.advertised_address;
            ports.push(leg_ports);
        }
        let advertised: IpAddr = advertised
            .parse()
            .map_err(|_| MediaError::Failed(format!("it advertised {advertised:?}")))?;
        let callee_ports = ports.pop().unwrap_or_default();
        let caller_ports = ports.pop().unwrap_or_default();
        Ok(MediaPlan {
            node,
            endpoint: self.url.clone(),
            advertised,
            caller_ports,
            callee_ports,
        })
    }

    /// Points a leg at the media of its latest SDP.
    pub(crate) async fn update(
        &self,
        call_id: &CallId,
        leg: Leg,
        sdp: &SessionDescription,
    ) -> Result<(), MediaError> {
        let _timer = self.timer("update");
        let media: Vec<pb::RemoteMedia> = sdp
            .media
            .iter()
            .enumerate()
            .map(|(index, m)| pb::RemoteMedia {
                index: index as u32,
                address: m.address.map(|a| a.to_string()).unwrap_or_default(),
                rtp_port: u32::from(m.port),
                rtcp_port: u32::from(m.rtcp_port),
                codecs: m.codecs.iter().map(pb::Codec::from).collect(),
                direction: m.direction.to_wire(),
            })
            .collect();
        retried(|| {
            let mut client = self.channel();
            let request = pb::UpdateRequest {
                call_id: call_id.to_string(),
                leg: leg.to_wire(),
                media: media.clone(),
                signaling_address: sdp
                    .signaling_ip
                    .map(|ip| ip.to_string())
                    .unwrap_or_default(),
            };
            async move { client.update(request).await }
        })
        .await
        .map(|_| ())
    }

    /// Releases a call and returns its final figures.
    pub(crate) async fn release(
        &self,
        call_id: &CallId,
        reason: &str,
    ) -> Result<FinalStats, MediaError> {
        let _timer = self.timer("release");
        let answer = retried(|| {
            let mut client = self.channel();
            let request = pb::ReleaseRequest {
                call_id: call_id.to_string(),
                reason: reason.to_owned(),
            };
            async move { client.release(request).await }
        })
        .await?;
        let stats = answer.stats.unwrap_or_default();
        Ok(FinalStats {
            media: figures_from_wire(&stats)?,
            release_reason: answer.release_reason,
            released_now: !answer.already_released,
            recording: stats.recording.as_ref().and_then(Recording::from_wire),
        })
    }

    /// Starts, pauses or stops a call's recording; returns where it stands after.
    /// `file_stem` names the files (empty: the call id).
    pub(crate) async fn recording(
        &self,
        call_id: &CallId,
        action: RecordingAction,
        file_stem: &str,
    ) -> Result<Option<Recording>, MediaError> {
        let _timer = self.timer(match action {
            RecordingAction::Start { .. } => "start_recording",
            RecordingAction::Pause => "pause_recording",
            RecordingAction::Stop => "stop_recording",
        });
        let mut client = self.channel();
        let control = pb::RecordingControlRequest {
            call_id: call_id.to_string(),
        };
        // Not retried: a start whose reply was lost is seen in the next statistics, and a
        // second one would change nothing anyway.
        let state = match action {
            RecordingAction::Start { pcap } => {
                client
                    .start_recording(pb::StartRecordingRequest {
                        call_id: call_id.to_string(),
                        file_stem: file_stem.to_owned(),
                        pcap,
                    })
                    .await?
            }
            RecordingAction::Pause => client.pause_recording(control).await?,
            RecordingAction::Stop => client.stop_recording(control).await?,
        };
        Ok(Recording::from_wire(&state.into_inner()))
    }

    /// Follows this instance's media events; returns when the stream ends or breaks.
    pub(crate) async fn watch_events(
        &self,
        mut seen: impl FnMut(MediaEvent),
    ) -> Result<(), MediaError> {
        let mut stream = self
            .channel()
            .watch_events(pb::WatchEventsRequest {
                owner: self.owner.clone(),
                call_id: String::new(),
            })
            .await?
            .into_inner();
        while let Some(event) = stream.message().await? {
            let Ok(call_id) = CallId::parse(&event.call_id) else {
                tracing::debug!(
                    call_id = event.call_id,
                    "media event of an unreadable call id"
                );
                continue;
            };
            let leg = Leg::from_wire(event.leg);
            match event.kind {
                Some(pb::event::Kind::SessionReleased(released)) => seen(MediaEvent::Released {
                    call_id,
                    reason: released.reason,
                }),
                Some(pb::event::Kind::FirstPacket(first)) if !first.rtcp => {
                    let Ok(leg) = leg else {
                        tracing::debug!(leg = event.leg, "first-packet event of an unknown leg");
                        continue;
                    };
                    seen(MediaEvent::FirstPacket {
                        call_id,
                        leg,
                        source: first.source,
                    });
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// Live statistics of one call, and its recording if one was ever started.
    pub(crate) async fn query(
        &self,
        call_id: &CallId,
    ) -> Result<(Vec<MediaFigures>, Option<Recording>), MediaError> {
        let _timer = self.timer("query_stats");
        let stats = self
            .channel()
            .query_stats(pb::QueryStatsRequest {
                call_id: call_id.to_string(),
            })
            .await?
            .into_inner();
        let recording = stats.recording.as_ref().and_then(Recording::from_wire);
        Ok((figures_from_wire(&stats)?, recording))
    }

    /// Live statistics of every call this instance owns on the node, by call id.
    pub(crate) async fn list_sessions(
        &self,
    ) -> Result<Vec<(CallId, Vec<MediaFigures>)>, MediaError> {
        let _timer = self.timer("list_sessions");
        let answer = self
            .channel()
            .list_sessions(pb::ListSessionsRequest {
                owner: self.owner.clone(),
            })
            .await?
            .into_inner();
        answer
            .sessions
            .iter()
            .map(|stats| {
                let call_id = CallId::parse(&stats.call_id).map_err(|e| {
                    MediaError::Failed(format!("session listing from {}: {e}", self.url))
                })?;
                Ok((call_id, figures_from_wire(stats)?))
            })
            .collect()
    }

    /// The node's status (id, sessions, ports).
    pub(crate) async fn status(&self) -> Result<NodeStatus, MediaError> {
        let _timer = self.timer("status");
        let status = self
            .channel()
            .status(pb::StatusRequest {})
            .await?
            .into_inner();
        let malformed = |what: &str| {
            Err(MediaError::Failed(format!(
                "malformed status from {}: {what}",
                self.url
            )))
        };
        if status.node_id.is_empty() {
            return malformed("no node id");
        }
        if status.instance_id.is_empty() {
            return malformed("no instance id (a restart could not be told)");
        }
        if status.ports_free > status.ports_total {
            return malformed("more ports free than it has");
        }
        Ok(NodeStatus {
            node_id: status.node_id,
            ports_total: status.ports_total,
            draining: status.draining,
            advertised_address: status.advertised_address,
            instance_id: status.instance_id,
            sessions: status.sessions,
            ports_free: status.ports_free,
        })
    }

    /// Renews this signaling instance's lease on the node.
    pub(crate) async fn renew(&self) -> Result<u32, MediaError> {
        let _timer = self.timer("renew_lease");
        let answer = self
            .channel()
            .renew_lease(pb::RenewLeaseRequest {
                owner: self.owner.clone(),
                lease_timeout_ms: 0,
            })
            .await?;
        Ok(answer.into_inner().sessions)
    }
}
