//! The media proxy client: allocate, update and release over gRPC (`mediaproxy.v1`), with a
//! deadline on every call so a slow proxy never holds SIP processing, and a lease heartbeat.
//! Wire types stay in this module.

use std::net::IpAddr;
use std::time::Duration;

use mediaproxy::grpc::{direction_to_wire, kind_to_wire, leg_to_wire};
use mediaproxy::types::Leg;
use proto::v1 as pb;
use proto::v1::media_proxy_client::MediaProxyClient;
use tonic::transport::{Channel, Endpoint};

use crate::b2bua::MediaPlan;
use crate::sdp::SessionDescription;

/// Deadline of one media proxy request.
const DEADLINE: Duration = Duration::from_secs(2);

/// Final per-leg figures of a released call, for the CDR.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LegFigures {
    pub rtp_packets: u64,
    pub rtp_bytes: u64,
    pub relayed_bytes: u64,
    pub recorded_packets: u64,
    pub sdp_address: String,
    pub latched_source: String,
}

/// What Release returned.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FinalStats {
    pub caller: LegFigures,
    pub callee: LegFigures,
    pub release_reason: String,
}

/// A client of one media proxy node.
#[derive(Clone)]
pub struct MediaClient {
    client: MediaProxyClient<Channel>,
    owner: String,
    pub url: String,
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
async fn retried<T, F, Fut>(mut attempt: F) -> Result<T, String>
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
                .map_err(|s| status_text(&s))
        }
        Err(status) => Err(status_text(&status)),
    }
}

impl MediaClient {
    /// A lazily connecting client: an unreachable proxy fails requests, not start-up.
    pub fn new(url: &str, owner: &str) -> Result<Self, String> {
        let endpoint = Endpoint::from_shared(url.to_owned())
            .map_err(|e| format!("{url}: {e}"))?
            .connect_timeout(DEADLINE)
            .timeout(DEADLINE);
        Ok(Self {
            client: MediaProxyClient::new(endpoint.connect_lazy()),
            owner: owner.to_owned(),
            url: url.to_owned(),
            durations: None,
        })
    }

    /// Times every request into `durations{method}`.
    pub fn with_durations(mut self, durations: prometheus::HistogramVec) -> Self {
        self.durations = Some(durations);
        self
    }

    fn timer(&self, method: &str) -> Option<prometheus::HistogramTimer> {
        self.durations
            .as_ref()
            .map(|h| h.with_label_values(&[method]).start_timer())
    }

    /// The node id of the proxy (its `--node-id`).
    pub async fn node_id(&self) -> Result<String, String> {
        let _timer = self.timer("status");
        self.client
            .clone()
            .status(pb::StatusRequest {})
            .await
            .map(|r| r.into_inner().node_id)
            .map_err(|s| status_text(&s))
    }

    /// Allocates both legs for the offer's media lines and points `offer_leg` (where the
    /// offer came from) at it.
    pub async fn prepare(
        &self,
        call_id: &str,
        offer: &SessionDescription,
        offer_leg: Leg,
    ) -> Result<MediaPlan, String> {
        let media: Vec<i32> = offer.media.iter().map(|m| kind_to_wire(m.kind)).collect();
        let mut ports = Vec::new();
        let mut node = String::new();
        let mut advertised = String::new();
        for leg in [Leg::Caller, Leg::Callee] {
            let _timer = self.timer("allocate");
            let answer = retried(|| {
                let mut client = self.client.clone();
                let request = pb::AllocateRequest {
                    call_id: call_id.to_owned(),
                    leg: leg_to_wire(leg),
                    owner: self.owner.clone(),
                    media: media.clone(),
                    lease_timeout_ms: 0,
                };
                async move { client.allocate(request).await }
            })
            .await?;
            node = answer.node_id;
            advertised = answer.advertised_address;
            ports.push(
                answer
                    .media
                    .iter()
                    .map(|m| m.rtp_port as u16)
                    .collect::<Vec<_>>(),
            );
        }
        self.update(call_id, offer_leg, offer).await?;
        let advertised: IpAddr = advertised
            .parse()
            .map_err(|_| format!("media proxy advertised {advertised:?}"))?;
        let callee_ports = ports.pop().unwrap_or_default();
        let caller_ports = ports.pop().unwrap_or_default();
        Ok(MediaPlan {
            node,
            advertised,
            caller_ports,
            callee_ports,
        })
    }

    /// Points a leg at the media of its latest SDP.
    pub async fn update(
        &self,
        call_id: &str,
        leg: Leg,
        sdp: &SessionDescription,
    ) -> Result<(), String> {
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
                codecs: m
                    .codecs
                    .iter()
                    .map(|c| pb::Codec {
                        payload_type: u32::from(c.payload_type),
                        encoding: c.encoding.clone(),
                        clock_rate: c.clock_rate,
                        channels: u32::from(c.channels),
                    })
                    .collect(),
                direction: direction_to_wire(m.direction),
            })
            .collect();
        retried(|| {
            let mut client = self.client.clone();
            let request = pb::UpdateRequest {
                call_id: call_id.to_owned(),
                leg: leg_to_wire(leg),
                media: media.clone(),
            };
            async move { client.update(request).await }
        })
        .await
        .map(|_| ())
    }

    /// Releases a call and returns its final figures.
    pub async fn release(&self, call_id: &str, reason: &str) -> Result<FinalStats, String> {
        let _timer = self.timer("release");
        let answer = retried(|| {
            let mut client = self.client.clone();
            let request = pb::ReleaseRequest {
                call_id: call_id.to_owned(),
                reason: reason.to_owned(),
            };
            async move { client.release(request).await }
        })
        .await?;
        let stats = answer.stats.unwrap_or_default();
        let figures = |leg: pb::Leg| {
            let mut out = LegFigures::default();
            for l in stats.legs.iter().filter(|l| l.leg == leg as i32) {
                for m in &l.media {
                    let rtp = m.rtp_received.unwrap_or_default();
                    let rtcp = m.rtcp_received.unwrap_or_default();
                    if m.kind == pb::MediaKind::Audio as i32 {
                        out.rtp_packets += rtp.packets;
                        out.rtp_bytes += rtp.bytes;
                    }
                    let sent_rtp = m.rtp_sent.unwrap_or_default();
                    let sent_rtcp = m.rtcp_sent.unwrap_or_default();
                    out.relayed_bytes += sent_rtp.bytes + sent_rtcp.bytes;
                    let _ = rtcp;
                    out.recorded_packets += m.recorded_packets;
                    if out.sdp_address.is_empty() {
                        out.sdp_address = m.sdp_rtp_address.clone();
                        out.latched_source = m.latched_rtp_source.clone();
                    }
                }
            }
            out
        };
        Ok(FinalStats {
            caller: figures(pb::Leg::Caller),
            callee: figures(pb::Leg::Callee),
            release_reason: answer.release_reason,
        })
    }

    /// Follows this instance's media events; returns when the stream ends or breaks. Sessions
    /// the proxy released by itself (timeout, lease expiry, shutdown) are passed to `ended`
    /// as (call id, reason).
    pub async fn watch_releases(
        &self,
        mut ended: impl FnMut(String, String),
    ) -> Result<(), String> {
        let mut stream = self
            .client
            .clone()
            .watch_events(pb::WatchEventsRequest {
                owner: self.owner.clone(),
                call_id: String::new(),
            })
            .await
            .map_err(|s| status_text(&s))?
            .into_inner();
        while let Some(event) = stream.message().await.map_err(|s| status_text(&s))? {
            if let Some(pb::event::Kind::SessionReleased(released)) = event.kind
                && released.reason != "released"
            {
                ended(event.call_id, released.reason);
            }
        }
        Ok(())
    }

    /// Renews this signaling instance's lease on the node.
    pub async fn renew(&self) -> Result<u32, String> {
        let _timer = self.timer("renew_lease");
        self.client
            .clone()
            .renew_lease(pb::RenewLeaseRequest {
                owner: self.owner.clone(),
                lease_timeout_ms: 0,
            })
            .await
            .map(|r| r.into_inner().sessions)
            .map_err(|s| status_text(&s))
    }
}
