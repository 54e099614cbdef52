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

use axum::Router;
use axum::extract::{Path, RawQuery, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Serialize;
use tokio::sync::{mpsc, oneshot};

use crate::call::{CallSummary, RecordingRefused};
use crate::cdr::CdrMedia;
use crate::diagnosis::{self, MediaReport};
use crate::media::pool::Pool;
use crate::media::{MediaError, Recording, RecordingAction};
use crate::registrar::RegistrationSummary;

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

/// The admin routes.
pub(crate) fn router(queries: mpsc::Sender<AdminQuery>, pool: Pool) -> Router {
    Router::new()
        .route("/admin/calls", get(calls))
        .route("/admin/calls/{call_id}", get(call))
        .route("/admin/registrations", get(registrations))
        .route("/admin/mediaproxies", get(mediaproxies))
        .route("/admin/calls/{call_id}/recording/{action}", post(recording))
        .with_state(AdminState { queries, pool })
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
                url: node.endpoint().to_owned(),
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
        .and_then(|e| state.pool.node(e));
    if let Some(node) = node {
        match node.client.query(&detail.call.call_id).await {
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
