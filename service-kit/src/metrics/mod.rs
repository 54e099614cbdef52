//! The Prometheus plumbing both services share: registering metrics, rendering several
//! registries as one exposition, the `/metrics` and `/healthz` HTTP server, and the
//! process-wide series ([`process`]).

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus::{Encoder, IntCounterVec, Opts, Registry, TextEncoder};

pub mod process;

/// Registers a metric and hands it back (every metric here is registered exactly once, so a
/// clash is a programming error).
pub fn registered<M: prometheus::core::Collector + Clone + 'static>(
    registry: &Registry,
    metric: M,
) -> M {
    registry
        .register(Box::new(metric.clone()))
        .expect("unique metric");
    metric
}

/// Registers a counter family with one label, every expected label value present from the
/// start (at 0), so dashboards see the series before the first event.
pub fn counter_vec(
    registry: &Registry,
    name: &str,
    help: &str,
    label: &str,
    values: &[&str],
) -> IntCounterVec {
    let vec = IntCounterVec::new(Opts::new(name, help), &[label]).expect("valid metric");
    for value in values {
        vec.with_label_values(&[*value]);
    }
    registered(registry, vec)
}

/// The Prometheus text exposition of several registries (names must not clash).
pub fn render(registries: &[Registry]) -> String {
    let families: Vec<_> = registries.iter().flat_map(Registry::gather).collect();
    let mut out = Vec::new();
    TextEncoder::new()
        .encode(&families, &mut out)
        .expect("text encoding into a Vec cannot fail");
    String::from_utf8(out).expect("the text format is UTF-8")
}

#[derive(Clone)]
struct HttpState {
    registries: Arc<Vec<Registry>>,
    draining: Arc<AtomicBool>,
}

/// Serves `/metrics` (every registry given) and `/healthz` (200 "ok", or 503 "draining" once
/// draining started, so a load balancer stops sending new work) until `shutdown` completes.
pub async fn serve_http(
    listener: tokio::net::TcpListener,
    registries: Vec<Registry>,
    draining: Arc<AtomicBool>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    serve_http_with(listener, registries, draining, Router::new(), shutdown).await
}

/// Like [`serve_http`], with more routes (signaling's admin endpoints) beside the two.
pub async fn serve_http_with(
    listener: tokio::net::TcpListener,
    registries: Vec<Registry>,
    draining: Arc<AtomicBool>,
    extra: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = Router::new()
        .route("/metrics", get(render_metrics))
        .route("/healthz", get(health))
        .with_state(HttpState {
            registries: Arc::new(registries),
            draining,
        })
        .merge(extra);
    // The client's address reaches handlers that ask for it (signaling's admin gate).
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<std::net::SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown)
    .await
}

async fn render_metrics(State(state): State<HttpState>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        render(&state.registries),
    )
}

async fn health(State(state): State<HttpState>) -> impl IntoResponse {
    if state.draining.load(Ordering::Relaxed) {
        (StatusCode::SERVICE_UNAVAILABLE, "draining\n")
    } else {
        (StatusCode::OK, "ok\n")
    }
}
