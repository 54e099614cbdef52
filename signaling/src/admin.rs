//! Signaling's admin endpoints, served beside `/metrics` (JSON):
//!
//! - `GET /admin/calls`: calls in progress (ids of both legs, parties, state, media node,
//!   relay ports, age);
//! - `GET /admin/calls/{call_id}`: one call (by either leg's Call-ID) with the media proxy's
//!   live per-leg figures, its recording, and the verdict and diagnosis the call would get if
//!   it ended now;
//! - `GET /admin/registrations`: live registrations;
//! - `GET /admin/mediaproxies`: the media proxy nodes as this instance sees them (state,
//!   sessions, free ports, draining), in `--mediaproxy` order;
//! - `POST /admin/calls/{call_id}/recording/{start|pause|stop}` (`?pcap=1` on start also
//!   writes a pcap): the one endpoint that changes something; it answers where the recording
//!   stands on the media proxy (state, path, packets), 404 for no such call, 409 for a call
//!   that cannot be recorded (direct mode, no media session yet, the proxy cannot write),
//!   503/502 when the proxy could not be asked.
//!
//! The SIP core is owned by one task; handlers ask it through a channel ([`AdminQuery`]),
//! so reading state never takes a lock the SIP path could wait on.
//!
//! The endpoints show who is registered where and who calls whom, and one of them starts
//! recordings, so they answer clients on this host only, unless `--admin-token` is set: then
//! a remote client that presents it (`Authorization: Bearer TOKEN`, compared in constant
//! time) is answered too. Others get 403 (no token configured) or 401. `/metrics` and
//! `/healthz` beside them carry no identities and stay open to whoever reaches the listener.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::Router;
use axum::extract::{ConnectInfo, Path, RawQuery, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Serialize;
use subtle::ConstantTimeEq;
use tokio::sync::{mpsc, oneshot};

use crate::access::registrar::RegistrationSummary;
use crate::call::{CallId, CallSummary, Endpoint, RecordingRefused};
use crate::cdr::CdrMedia;
use crate::cdr::diagnosis::{self, MediaReport};
use crate::media::pool::Pool;
use crate::media::{MediaError, Recording, RecordingAction};

/// A question for the task that owns the SIP core.
#[derive(Debug)]
pub(crate) enum AdminQuery {
    Calls(oneshot::Sender<Vec<CallSummary>>),
    Registrations(oneshot::Sender<Vec<RegistrationSummary>>),
    /// Start, pause or stop a call's recording (by either leg's Call-ID).
    Recording {
        call_id: String,
        action: RecordingAction,
        reply: oneshot::Sender<Result<Option<Recording>, RecordingError>>,
    },
}

/// Why a recording request from the admin endpoint did nothing.
#[derive(Debug, thiserror::Error)]
pub(crate) enum RecordingError {
    /// The core refused it (no such call, direct mode, no session yet).
    #[error(transparent)]
    Refused(RecordingRefused),
    /// The media proxy refused or could not be asked.
    #[error(transparent)]
    Media(MediaError),
}

impl RecordingError {
    fn status(&self) -> StatusCode {
        match self {
            Self::Refused(RecordingRefused::NoCall(_)) => StatusCode::NOT_FOUND,
            Self::Refused(_) | Self::Media(MediaError::Refused(_)) => StatusCode::CONFLICT,
            Self::Media(MediaError::Unavailable(_) | MediaError::Exhausted(_)) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            Self::Media(MediaError::Failed(_)) => StatusCode::BAD_GATEWAY,
        }
    }
}

#[derive(Clone)]
struct AdminState {
    queries: mpsc::Sender<AdminQuery>,
    pool: Pool,
}

/// The admin routes, behind [`gate`].
pub(crate) fn router(
    queries: mpsc::Sender<AdminQuery>,
    pool: Pool,
    token: Option<String>,
) -> Router {
    Router::new()
        .route("/admin/calls", get(calls))
        .route("/admin/calls/{call_id}", get(call))
        .route("/admin/registrations", get(registrations))
        .route("/admin/mediaproxies", get(mediaproxies))
        .route("/admin/calls/{call_id}/recording/{action}", post(recording))
        .with_state(AdminState { queries, pool })
        .layer(middleware::from_fn_with_state(
            token.map(Arc::<str>::from),
            gate,
        ))
}

/// Whether a client may use the admin endpoints.
#[derive(Debug, PartialEq, Eq)]
enum Admission {
    Pass,
    /// Remote, and no token is configured: 403.
    LocalOnly,
    /// Remote without the right token: 401.
    Unauthorized,
}

fn admission(token: Option<&str>, peer: IpAddr, authorization: Option<&str>) -> Admission {
    let local = peer.is_loopback()
        || matches!(peer, IpAddr::V6(v6) if v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback()));
    if local {
        return Admission::Pass;
    }
    let Some(token) = token else {
        return Admission::LocalOnly;
    };
    let presented = authorization
        .and_then(|value| value.strip_prefix("Bearer "))
        .map(str::trim);
    match presented {
        Some(presented) if bool::from(presented.as_bytes().ct_eq(token.as_bytes())) => {
            Admission::Pass
        }
        _ => Admission::Unauthorized,
    }
}

async fn gate(
    State(token): State<Option<Arc<str>>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    request: Request,
    next: Next,
) -> Response {
    let authorization = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    match admission(token.as_deref(), peer.ip(), authorization) {
        Admission::Pass => next.run(request).await,
        Admission::LocalOnly => {
            tracing::info!(%peer, path = %request.uri().path(), "admin request from another host refused: no --admin-token is set");
            (
                StatusCode::FORBIDDEN,
                "the admin endpoints answer clients on this host only; set --admin-token to open them to others\n",
            )
                .into_response()
        }
        Admission::Unauthorized => {
            tracing::info!(%peer, path = %request.uri().path(), "admin request without the right token refused");
            (
                StatusCode::UNAUTHORIZED,
                [(header::WWW_AUTHENTICATE, "Bearer")],
                "a bearer token is required\n",
            )
                .into_response()
        }
    }
}

fn json(value: &impl Serialize) -> Response {
    match serde_json::to_string_pretty(value) {
        Ok(mut text) => {
            text.push('\n');
            ([(header::CONTENT_TYPE, "application/json")], text).into_response()
        }
        Err(error) => (StatusCode::INTERNAL_SERVER_ERROR, error.to_string()).into_response(),
    }
}

/// One media proxy node of the pool.
#[derive(Debug, Serialize)]
struct NodeView {
    url: String,
    /// `unknown` (not asked yet), `up`, `down`.
    state: &'static str,
    node_id: Option<String>,
    advertised_address: Option<String>,
    sessions: Option<u32>,
    ports_free: Option<u32>,
    ports_total: Option<u32>,
    draining: Option<bool>,
    /// Health checks missed in a row.
    misses: u32,
    /// The `--mediaproxy` name it was discovered from.
    source: Option<String>,
    /// Its address left the name's answer: it takes no new calls.
    retired: bool,
}

async fn mediaproxies(State(state): State<AdminState>) -> Response {
    let nodes: Vec<NodeView> = state
        .pool
        .nodes()
        .iter()
        .map(|node| {
            let health = node.health();
            let status = health.status.as_ref();
            NodeView {
                url: node.endpoint().to_string(),
                state: health.state.as_str(),
                node_id: status.map(|s| s.node_id.clone()),
                advertised_address: status.map(|s| s.advertised_address.clone()),
                sessions: status.map(|s| s.sessions),
                ports_free: status.map(|s| s.ports_free),
                ports_total: status.map(|s| s.ports_total),
                draining: status.map(|s| s.draining),
                misses: health.misses,
                source: node.source.clone(),
                retired: health.retired,
            }
        })
        .collect();
    json(&nodes)
}

fn unavailable() -> Response {
    (StatusCode::SERVICE_UNAVAILABLE, "signaling is stopping\n").into_response()
}

async fn ask<T>(
    state: &AdminState,
    query: impl FnOnce(oneshot::Sender<T>) -> AdminQuery,
) -> Option<T> {
    let (reply, answer) = oneshot::channel();
    state.queries.send(query(reply)).await.ok()?;
    answer.await.ok()
}

async fn calls(State(state): State<AdminState>) -> Response {
    match ask(&state, AdminQuery::Calls).await {
        Some(calls) => json(&calls),
        None => unavailable(),
    }
}

async fn registrations(State(state): State<AdminState>) -> Response {
    match ask(&state, AdminQuery::Registrations).await {
        Some(list) => json(&list),
        None => unavailable(),
    }
}

/// One call with its live media figures.
#[derive(Serialize)]
struct CallDetail {
    #[serde(flatten)]
    call: CallSummary,
    /// The verdict and diagnosis if the call ended now (answered, relayed calls).
    verdict_now: Option<&'static str>,
    diagnosis_now: Option<String>,
    /// Per leg and media line, live from the media proxy (same fields as `cdr_media`).
    media: Vec<CdrMedia>,
    /// Why `media` is empty when the proxy could not be asked.
    media_error: Option<String>,
    /// The call's recording on its media proxy (state, path, packets), if one was started.
    recording: Option<Recording>,
}

async fn call(State(state): State<AdminState>, Path(call_id): Path<String>) -> Response {
    let Some(calls) = ask(&state, AdminQuery::Calls).await else {
        return unavailable();
    };
    let Some(call) = calls
        .into_iter()
        .find(|c| c.call_id == call_id || c.b_call_id == call_id)
    else {
        return (StatusCode::NOT_FOUND, format!("no call {call_id:?}\n")).into_response();
    };
    let mut detail = CallDetail {
        verdict_now: None,
        diagnosis_now: None,
        media: Vec::new(),
        media_error: None,
        recording: None,
        call,
    };
    let node = detail
        .call
        .media_endpoint
        .as_deref()
        .and_then(|e| state.pool.node(&Endpoint::new(e)));
    // The summary's call id is the call's key, checked when the call began.
    let key = CallId::parse(&detail.call.call_id).ok();
    if let (Some(node), Some(key)) = (node, key) {
        match node.client.query(&key).await {
            Ok((figures, recording)) => {
                detail.recording = recording;
                detail.media = figures.iter().map(CdrMedia::from_figures).collect();
                if detail.call.answered_s.is_some() {
                    let report = MediaReport {
                        advertised: detail
                            .call
                            .media_address
                            .as_deref()
                            .and_then(|a| a.parse().ok()),
                        media: figures,
                    };
                    let (verdict, text) = diagnosis::diagnose(&report);
                    detail.verdict_now = Some(verdict.as_str());
                    detail.diagnosis_now = Some(text);
                }
            }
            Err(error) => detail.media_error = Some(error.to_string()),
        }
    }
    json(&detail)
}

/// The answer to a recording request.
#[derive(Serialize)]
struct RecordingView {
    call_id: String,
    action: &'static str,
    /// Where the recording stands on the media proxy; null when it never started.
    recording: Option<Recording>,
}

async fn recording(
    State(state): State<AdminState>,
    Path((call_id, action)): Path<(String, String)>,
    RawQuery(query): RawQuery,
) -> Response {
    let pcap = query.as_deref().is_some_and(|q| {
        q.split('&')
            .any(|pair| matches!(pair, "pcap" | "pcap=1" | "pcap=true" | "pcap=yes"))
    });
    let action = match action.as_str() {
        "start" => RecordingAction::Start { pcap },
        "pause" => RecordingAction::Pause,
        "stop" => RecordingAction::Stop,
        other => {
            let text = format!("{other:?} is not start, pause or stop\n");
            return (StatusCode::NOT_FOUND, text).into_response();
        }
    };
    let asked = ask(&state, |reply| AdminQuery::Recording {
        call_id: call_id.clone(),
        action,
        reply,
    })
    .await;
    match asked {
        None => unavailable(),
        Some(Ok(recording)) => json(&RecordingView {
            call_id,
            action: action.as_str(),
            recording,
        }),
        Some(Err(error)) => (error.status(), format!("{error}\n")).into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOKEN: &str = "0123456789abcdef-token";

    #[test]
    fn local_clients_pass_and_remote_ones_need_the_token() {
        let local: IpAddr = "127.0.0.1".parse().unwrap();
        let local6: IpAddr = "::1".parse().unwrap();
        let mapped: IpAddr = "::ffff:127.0.0.1".parse().unwrap();
        let remote: IpAddr = "192.0.2.10".parse().unwrap();
        for peer in [local, local6, mapped] {
            assert_eq!(admission(None, peer, None), Admission::Pass);
            assert_eq!(admission(Some(TOKEN), peer, None), Admission::Pass);
        }
        assert_eq!(admission(None, remote, None), Admission::LocalOnly);
        assert_eq!(
            admission(None, remote, Some(&format!("Bearer {TOKEN}"))),
            Admission::LocalOnly,
            "no token configured: nothing a client says opens it"
        );
        assert_eq!(
            admission(Some(TOKEN), remote, None),
            Admission::Unauthorized
        );
        assert_eq!(
            admission(Some(TOKEN), remote, Some("Bearer 0123456789abcdef-tokem")),
            Admission::Unauthorized
        );
        assert_eq!(
            admission(Some(TOKEN), remote, Some(TOKEN)),
            Admission::Unauthorized,
            "the scheme is part of it"
        );
        assert_eq!(
            admission(Some(TOKEN), remote, Some(&format!("Bearer {TOKEN}"))),
            Admission::Pass
        );
    }
}
