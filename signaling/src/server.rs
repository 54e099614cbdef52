//! The driver around [`crate::call::Core`]: SIP over UDP and TCP on one port, timers, the
//! media proxy client, the CDR writer, and (without `--mediaproxy`) an embedded media proxy
//! reached over real gRPC on a loopback port.
//!
//! One task owns the core and performs its outputs. Anything slow (gRPC, the database) runs in
//! spawned tasks that report back through the input channel, so SIP handling never waits.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mediaproxy::server::MediaProxy;
use proto::domain::Leg;
use service_kit::clock::WallClock;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::admin::{AdminQuery, RecordingError};
use crate::auth::DigestAuth;
use crate::call::{CallId, CallRecord, Core, Endpoint, Input, Output, RecordingTarget, Settings};
use crate::cdr::{Cdr, CdrWriter, OpenCall, WriterOptions, unix_ms_now};
use crate::completion::{Release, cdr_row};
use crate::config::Config;
use crate::diagnosis::{Evidence, Snapshot};
use crate::ids::Ids;
use crate::media::pool::{HealthReport, Pool};
use crate::media::{MediaClient, MediaError, MediaEvent, Recording, RecordingAction};
use crate::metrics::Metrics;
use crate::registrar::{Policy, Registrar};
use crate::sip::message::{Frame, Message, frame, parse};
use crate::sip::{Peer, SipCallId, Transport};

/// Why signaling could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen for SIP on {address}: {source}")]
    Sip {
        address: SocketAddr,
        source: std::io::Error,
    },
    #[error("--cdr {url}: {message}")]
    Cdr { url: String, message: String },
    #[error("embedded media proxy: {0}")]
    Embedded(String),
    #[error("--mediaproxy: {0}")]
    MediaProxy(String),
    #[error("cannot listen for metrics on {address}: {source}")]
    Metrics {
        address: SocketAddr,
        source: std::io::Error,
    },
}

type Connections = Arc<Mutex<HashMap<SocketAddr, mpsc::Sender<Vec<u8>>>>>;

/// A bound, not yet serving, signaling service.
pub struct Signaling {
    config: Config,
    udp: Arc<UdpSocket>,
    tcp: TcpListener,
    http: TcpListener,
    metrics: Arc<Metrics>,
    embedded: Option<MediaProxy>,
    pool: Pool,
    cdr: CdrWriter,
}

impl Signaling {
    pub async fn bind(config: Config) -> Result<Self, StartError> {
        let sip_error = |source| StartError::Sip {
            address: config.sip,
            source,
        };
        let udp = UdpSocket::bind(config.sip).await.map_err(sip_error)?;
        // TCP on the very port UDP got (matters when --sip asks for port 0).
        let address = udp.local_addr().map_err(sip_error)?;
        let tcp = TcpListener::bind(address).await.map_err(sip_error)?;
        let metrics = Arc::new(Metrics::new());
        let cdr = CdrWriter::start(
            config.cdr.clone(),
            WriterOptions {
                queue_limit: config.cdr_queue,
                spool: config.cdr_spool.clone(),
                close_grace: Duration::from_secs(5),
                instance: format!(
                    "{}/{address}",
                    service_kit::config::host_name().unwrap_or_else(|| "signaling".to_owned())
                ),
            },
            metrics.cdr.clone(),
        )
        .map_err(|e| StartError::Cdr {
            url: config.cdr.display(),
            message: e.to_string(),
        })?;
        let owner = format!("signaling-{}-{}", address.port(), std::process::id());
        let (embedded, urls) = if config.mediaproxies.is_empty() {
            let grpc = TcpListener::bind("127.0.0.1:0")
                .await
                .map_err(|e| StartError::Embedded(e.to_string()))?;
            let metrics = TcpListener::bind("127.0.0.1:0")
                .await
                .map_err(|e| StartError::Embedded(e.to_string()))?;
            let proxy = MediaProxy::with_listeners(
                "embedded",
                &config.media,
                Duration::from_secs(5),
                grpc,
                metrics,
            )
            .map_err(|e| StartError::Embedded(e.to_string()))?;
            let url = format!("http://{}", proxy.grpc_addr());
            (Some(proxy), vec![url])
        } else {
            (None, config.mediaproxies.clone())
        };
        let pool = Pool::new(
            &urls,
            &owner,
            &metrics.mediaproxy_duration,
            config.mediaproxy_tls.clone(),
        )
        .map_err(|e| StartError::MediaProxy(e.to_string()))?
        .with_dns_failures(metrics.dns_failures.clone());
        let pool = if embedded.is_some() {
            pool.in_process()
        } else {
            pool
        };
        // Names are resolved now, so the first calls have nodes; a name that does not resolve
        // yet only warns (its nodes come with a later refresh).
        pool.refresh().await;
        let http =
            TcpListener::bind(config.metrics)
                .await
                .map_err(|source| StartError::Metrics {
                    address: config.metrics,
                    source,
                })?;
        Ok(Self {
            config,
            udp: Arc::new(udp),
            tcp,
            http,
            metrics,
            embedded,
            pool,
            cdr,
        })
    }

    pub fn sip_addr(&self) -> SocketAddr {
        self.udp.local_addr().expect("bound socket has an address")
    }

    /// Where `/metrics` is served.
    pub fn metrics_addr(&self) -> SocketAddr {
        self.http
            .local_addr()
            .expect("bound listener has an address")
    }

    /// The media proxy URLs in use, comma-separated (the embedded one's loopback URL when
    /// embedded).
    pub fn mediaproxy_url(&self) -> String {
        self.pool
            .nodes()
            .iter()
            .map(|n| n.endpoint().to_string())
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Serves until `shutdown`, then answers new INVITEs 503 while calls finish (up to 10 s),
    /// writes the remaining CDRs and stops.
    pub async fn serve(self, shutdown: impl Future<Output = ()> + Send) -> anyhow::Result<()> {
        let Self {
            config,
            udp,
            tcp,
            http,
            metrics,
            embedded,
            pool,
            cdr,
        } = self;
        let stop = CancellationToken::new();
        let mut tasks = tokio::task::JoinSet::new();
        let mut registries = vec![
            metrics.registry.clone(),
            service_kit::metrics::process::registry("signaling", env!("CARGO_PKG_VERSION")),
        ];
        if let Some(proxy) = &embedded {
            registries.push(proxy.registry());
        }
        let draining = Arc::new(AtomicBool::new(false));
        let http_stop = stop.clone();
        let http_draining = draining.clone();
        let (admin_tx, mut admin_rx) = mpsc::channel::<AdminQuery>(64);
        let admin = crate::admin::router(admin_tx, pool.clone(), config.admin_token.clone());
        tasks.spawn(async move {
            if let Err(error) = service_kit::metrics::serve_http_with(
                http,
                registries,
                http_draining,
                admin,
                http_stop.cancelled_owned(),
            )
            .await
            {
                tracing::error!(%error, "metrics server failed");
            }
        });
        if let Some(proxy) = embedded {
            let proxy_stop = stop.clone();
            tasks.spawn(async move {
                if let Err(error) = proxy.serve(proxy_stop.cancelled_owned()).await {
                    tracing::error!(%error, "embedded media proxy failed");
                }
            });
        }
        let local = udp.local_addr()?;
        let (inputs, mut input_rx) = mpsc::channel::<Input>(8192);
        let connections: Connections = Arc::default();
        tasks.spawn(receive_udp(udp.clone(), inputs.clone(), stop.clone()));
        let nofile = rlimit::Resource::NOFILE
            .get()
            .map_or(1024, |(soft, _)| soft);
        let limits = crate::tcp::Limits::new(
            config.tcp_per_source,
            crate::tcp::global_cap(nofile, config.max_calls),
            metrics.tcp_connections.clone(),
            metrics.tcp_closed.clone(),
        );
        tasks.spawn(accept_tcp(
            tcp,
            inputs.clone(),
            connections.clone(),
            limits,
            stop.clone(),
        ));
        // Each node: health and lease (media::pool::watch), and its event stream. Sessions a
        // node ends by itself (media timeout, lease expiry) end their calls; first packets are
        // kept as evidence in case the node is lost before the call ends.
        let evidence: EvidenceMap = Arc::default();
        let watch_node = {
            let (inputs, metrics, evidence, stop) = (
                inputs.clone(),
                metrics.clone(),
                evidence.clone(),
                stop.clone(),
            );
            move |node: crate::media::pool::Node| {
                tokio::spawn(crate::media::pool::watch(
                    node.clone(),
                    inputs.clone(),
                    NodeReport {
                        metrics: metrics.clone(),
                        evidence: evidence.clone(),
                    },
                    stop.clone(),
                ));
                tokio::spawn(watch_events(
                    node.client.clone(),
                    inputs.clone(),
                    evidence.clone(),
                    stop.clone(),
                ));
            }
        };
        for node in pool.nodes() {
            watch_node(node);
        }
        if pool.discovers() {
            let (pool, stop) = (pool.clone(), stop.clone());
            tasks.spawn(async move {
                let mut every = tokio::time::interval(crate::media::pool::REFRESH_INTERVAL);
                every.tick().await;
                loop {
                    tokio::select! {
                        _ = every.tick() => {}
                        () = stop.cancelled() => return,
                    }
                    for node in pool.refresh().await {
                        watch_node(node);
                    }
                }
            });
        }
        if let Some(tls) = pool.tls() {
            tasks.spawn(watch_tls(pool.clone(), tls, stop.clone()));
        }
        tokio::spawn(check_capacity(pool.clone(), config.max_calls));
        let realm = config.realm.clone();
        let auth = DigestAuth::new(&realm, 300)
            .map_err(|e| anyhow::anyhow!("random nonce secret: {e}"))?;
        let ids = Ids::from_os().map_err(|e| anyhow::anyhow!("random identifiers: {e}"))?;
        let mut core = Core::new(
            Settings {
                local,
                routes: config.routes.clone(),
                trusted: config.trusted.clone(),
                users: config.users.clone(),
                media_mode: config.media_mode,
                record: config.record,
                ring_timeout: config.ring_timeout,
                max_call_duration: config.max_call_duration,
                keepalive: config.keepalive,
                max_calls: config.max_calls,
                limits: config.limits,
            },
            auth,
            Registrar::new(Policy::default()),
            ids,
        );
        let clock = WallClock::now();
        let mut finishing = tokio::task::JoinSet::new();
        let cdr = Arc::new(cdr);
        // Calls a stopped process left up: their CDRs are completed now.
        {
            let (pool, cdr, metrics, evidence, clock) = (
                pool.clone(),
                cdr.clone(),
                metrics.clone(),
                evidence.clone(),
                clock.clone(),
            );
            finishing.spawn(async move {
                complete_orphans(&pool, &cdr, &metrics, &evidence, &clock).await;
            });
        }
        let mut shutdown = std::pin::pin!(shutdown);
        let mut draining_until: Option<Instant> = None;
        let mut guard_ticked: Option<Instant> = None;
        let idle = Duration::from_secs(3600);

        loop {
            // The core owns every deadline; the driver only sleeps until the next one.
            let mut wake = core.poll_timeout().unwrap_or_else(|| Instant::now() + idle);
            if let Some(deadline) = draining_until {
                wake = wake
                    .min(deadline)
                    .min(Instant::now() + Duration::from_millis(100));
            }
            let input = tokio::select! {
                input = input_rx.recv() => input,
                Some(query) = admin_rx.recv() => {
                    let now = Instant::now();
                    match query {
                        AdminQuery::Calls(reply) => {
                            let _ = reply.send(core.calls_summary(now));
                        }
                        AdminQuery::Registrations(reply) => {
                            let _ = reply.send(core.registrations(now));
                        }
                        AdminQuery::Recording { call_id, action, reply } => {
                            match core.recording_request(&call_id, action) {
                                Ok(target) => {
                                    let (pool, metrics, inputs) =
                                        (pool.clone(), metrics.clone(), inputs.clone());
                                    tokio::spawn(async move {
                                        let result =
                                            recording(&pool, &metrics, &inputs, target, action)
                                                .await;
                                        let _ = reply.send(result.map_err(RecordingError::Media));
                                    });
                                }
                                Err(refused) => {
                                    let _ = reply.send(Err(RecordingError::Refused(refused)));
                                }
                            }
                        }
                    }
                    None
                }
                () = tokio::time::sleep_until(wake.into()) => None,
                () = &mut shutdown, if draining_until.is_none() => {
                    tracing::info!(calls = core.active_calls(), "shutting down: draining");
                    core.set_draining(true);
                    draining.store(true, Ordering::Relaxed);
                    draining_until = Some(Instant::now() + Duration::from_secs(10));
                    None
                }
            };
            let now = Instant::now();
            let unix_ms = unix_ms_now() as u64;
            if let Some(step) = clock.follow_at(now, unix_ms) {
                // Timers run on the monotonic clock and do not notice; the CDRs' times follow
                // the new wall clock, their durations stay the measured ones.
                tracing::warn!(
                    step_seconds = step as f64 / 1000.0,
                    "the wall clock stepped; CDR times follow it from now on"
                );
                metrics.clock_steps.inc();
            }
            let unix = unix_ms / 1000;
            if let Some(input) = input {
                if let Input::Message {
                    message: Message::Request(request),
                    ..
                } = &input
                {
                    metrics.request(request.method.as_str());
                }
                core.handle(now, unix, input);
            }
            if core.poll_timeout().is_some_and(|at| at <= now) {
                core.handle_timeout(now);
            }
            while let Some(output) = core.poll_output() {
                match output {
                    Output::Send { to, data } => {
                        metrics.response(&data);
                        send(&udp, &connections, &inputs, to, data).await;
                    }
                    Output::Allocate {
                        call,
                        call_id,
                        offer,
                        offer_leg,
                        reflect,
                    } => {
                        let pool = pool.clone();
                        let inputs = inputs.clone();
                        tokio::spawn(async move {
                            let result = pool.place(&call_id, &offer, offer_leg, reflect).await;
                            let _ = inputs.send(Input::MediaReady { call, result }).await;
                        });
                    }
                    Output::Relocate {
                        call,
                        call_id,
                        caller,
                        callee,
                        lost,
                        reflect,
                    } => {
                        let pool = pool.clone();
                        let inputs = inputs.clone();
                        let metrics = metrics.clone();
                        tokio::spawn(async move {
                            let result = pool
                                .relocate(&call_id, &caller, &callee, lost.as_ref(), reflect)
                                .await;
                            let outcome = if result.is_ok() { "moved" } else { "failed" };
                            metrics.media_moves.with_label_values(&[outcome]).inc();
                            let _ = inputs.send(Input::Relocated { call, result }).await;
                            // The session left behind: freed now if the node is only cut off
                            // (a dead node's release just fails; its lease covers it).
                            if let Some(old) = lost.and_then(|lost| pool.node(&lost)) {
                                let _ = old.client.release(&call_id, "released").await;
                            }
                        });
                    }
                    Output::UpdateMedia {
                        endpoint,
                        call_id,
                        leg,
                        sdp,
                    } => {
                        let Some(node) = pool.node(&endpoint) else {
                            continue;
                        };
                        tokio::spawn(async move {
                            if let Err(error) = node.client.update(&call_id, leg, &sdp).await {
                                tracing::warn!(%call_id, leg = leg.as_str(), %error, "media update failed");
                            }
                        });
                    }
                    Output::ReleaseStale { endpoint, call_id } => {
                        let Some(node) = pool.node(&endpoint) else {
                            continue;
                        };
                        let metrics = metrics.clone();
                        tokio::spawn(async move {
                            let name = node.name();
                            match node.client.release(&call_id, "stale").await {
                                Ok(_) => {
                                    tracing::info!(%call_id, node = %name, "stale media session released (no call of ours is on that node)");
                                    metrics.sessions_swept.with_label_values(&[&name]).inc();
                                }
                                Err(error) => {
                                    tracing::warn!(%call_id, node = %name, %error, "release of a stale media session failed");
                                }
                            }
                        });
                    }
                    Output::ReleaseMedia { endpoint, call_id } => {
                        let Some(node) = pool.node(&endpoint) else {
                            continue;
                        };
                        tokio::spawn(async move {
                            if let Err(error) = node.client.release(&call_id, "released").await {
                                tracing::warn!(%call_id, %error, "release of an orphaned media session failed");
                            }
                        });
                    }
                    Output::Recording { target, action } => {
                        let (pool, metrics, inputs) =
                            (pool.clone(), metrics.clone(), inputs.clone());
                        tokio::spawn(async move {
                            let _ = recording(&pool, &metrics, &inputs, target, action).await;
                        });
                    }
                    Output::AuthFailed { method } => {
                        metrics.auth_failures.with_label_values(&[method]).inc();
                    }
                    Output::Banned { scope } => {
                        metrics.auth_bans.with_label_values(&[scope]).inc();
                    }
                    Output::Limited { action } => {
                        metrics.requests_limited.with_label_values(&[action]).inc();
                    }
                    Output::Answered(record) => cdr.open(open_call(&record, &clock)),
                    Output::Finish(record) => {
                        if let Some(answer) = record.answer {
                            metrics
                                .setup
                                .observe(answer.duration_since(record.start).as_secs_f64());
                        }
                        let pool = pool.clone();
                        let cdr = cdr.clone();
                        let metrics = metrics.clone();
                        let evidence = evidence.clone();
                        let clock = clock.clone();
                        finishing.spawn(async move {
                            let row = complete_record(&pool, &evidence, &clock, record).await;
                            write_row(&metrics, &cdr, row);
                        });
                    }
                }
            }
            metrics.active_calls.set(core.active_calls() as i64);
            metrics.calls_in_memory.set(core.calls_in_memory() as i64);
            metrics.transactions.set(core.transactions_alive() as i64);
            metrics.timers.set(core.pending_timers() as i64);
            if guard_ticked
                .is_none_or(|at| now.saturating_duration_since(at) >= Duration::from_secs(1))
            {
                metrics.banned_sources.set(core.guard_tick(now) as i64);
                guard_ticked = Some(now);
            }
            while finishing.try_join_next().is_some() {}
            if let Some(deadline) = draining_until
                && (core.active_calls() == 0 || now >= deadline)
            {
                break;
            }
        }
        while finishing.join_next().await.is_some() {}
        stop.cancel();
        while tasks.join_next().await.is_some() {}
        if let Ok(cdr) = Arc::try_unwrap(cdr) {
            cdr.close();
        }
        tracing::info!("signaling stopped");
        Ok(())
    }
}

/// Starts, pauses or stops a call's recording on its node, counts the request, and tells the
/// core how it went (for the CDR's diagnosis).
async fn recording(
    pool: &Pool,
    metrics: &Metrics,
    inputs: &mpsc::Sender<Input>,
    target: RecordingTarget,
    action: RecordingAction,
) -> Result<Option<Recording>, MediaError> {
    let result = match pool.node(&target.endpoint) {
        Some(node) => {
            node.client
                .recording(&target.call_id, action, &target.file_stem)
                .await
        }
        None => Err(MediaError::Unavailable(format!(
            "media proxy {} left the pool",
            target.endpoint
        ))),
    };
    let outcome = if result.is_ok() { "ok" } else { "failed" };
    metrics
        .recording_requests
        .with_label_values(&[action.as_str(), outcome])
        .inc();
    match &result {
        Ok(state) => tracing::info!(
            call_id = %target.call_id,
            action = action.as_str(),
            path = state.as_ref().map_or("", |s| s.path.as_str()),
            "recording request done"
        ),
        Err(error) => {
            tracing::warn!(call_id = %target.call_id, action = action.as_str(), %error, "recording request failed");
        }
    }
    let _ = inputs
        .send(Input::RecordingDone {
            call: target.call,
            action,
            result: result.as_ref().map(|_| ()).map_err(Clone::clone),
        })
        .await;
    result
}

/// First-packet sources per call, from the proxy's events.
type EvidenceMap = Arc<Mutex<HashMap<CallId, Evidence>>>;

/// Releases the call's media (if relayed) and builds its CDR row ([`cdr_row`]).
async fn complete_record(
    pool: &Pool,
    evidence: &EvidenceMap,
    clock: &WallClock,
    record: CallRecord,
) -> Cdr {
    let seen = evidence
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .remove(&record.call_id)
        .unwrap_or_default();
    let node = record.media_endpoint.as_ref().and_then(|e| pool.node(e));
    let release = match (record.relayed, node, record.media_endpoint.as_ref()) {
        (true, Some(node), _) => match node
            .client
            .release(&record.call_id, record.hangup_side.as_str())
            .await
        {
            Ok(stats) => Release::Released(stats),
            Err(error) => {
                tracing::error!(call_id = %record.call_id, %error, "media release failed; CDR without final counts");
                Release::Failed(error)
            }
        },
        // A call a stopped process left: its node is not one of this process's (an embedded
        // proxy dies with its process).
        (true, None, Some(endpoint)) => Release::Failed(MediaError::Unavailable(format!(
            "{endpoint} is not a media proxy of this process"
        ))),
        _ => Release::NotRelayed,
    };
    cdr_row(&record, &release, &seen, clock)
}

/// The durable record of a call that is up (`cdr_open`).
fn open_call(record: &CallRecord, clock: &WallClock) -> OpenCall {
    OpenCall {
        call_id: record.call_id.to_string(),
        b_call_id: record
            .b_call_id
            .as_ref()
            .map(ToString::to_string)
            .unwrap_or_default(),
        caller: record.caller.clone(),
        callee: record.callee.clone(),
        start_time_ms: clock.unix_ms(record.start) as i64,
        answer_time_ms: clock.unix_ms(record.answer.unwrap_or(record.end)) as i64,
        media_mode: record.media_mode.as_str().to_owned(),
        media_node: record.media_node.clone(),
        media_endpoint: record.media_endpoint.as_ref().map(ToString::to_string),
        relayed: record.relayed,
        media_address: record.media_address.map(|a| a.to_string()),
    }
}

/// The record of a call a stopped process left up, ended at its last sign of life.
///
/// None for a record whose call id cannot be a call's key: none is ever written (the key was
/// checked when the call's INVITE arrived), so such a row was not written by signaling.
fn orphan_record(call: &OpenCall, alive_at_ms: i64, clock: &WallClock) -> Option<CallRecord> {
    let at = |unix_ms: i64| clock.at(u64::try_from(unix_ms).unwrap_or(0));
    let answer = at(call.answer_time_ms);
    let call_id = match CallId::parse(&call.call_id) {
        Ok(call_id) => call_id,
        Err(error) => {
            tracing::error!(call_id = %call.call_id, %error, "a durable call record with an unusable call id; skipped");
            return None;
        }
    };
    Some(CallRecord {
        call_id,
        b_call_id: (!call.b_call_id.is_empty()).then(|| SipCallId::new(&call.b_call_id)),
        caller: call.caller.clone(),
        callee: call.callee.clone(),
        start: at(call.start_time_ms),
        answer: Some(answer),
        end: at(alive_at_ms.max(call.answer_time_ms)),
        disposition: crate::call::Disposition::Answered,
        sip_status: 200,
        hangup_side: crate::call::HangupSide::System,
        media_mode: call
            .media_mode
            .parse()
            .unwrap_or(crate::config::MediaMode::Relay),
        media_node: call.media_node.clone(),
        media_endpoint: call.media_endpoint.as_deref().map(Endpoint::new),
        media_moves: Vec::new(),
        relayed: call.relayed,
        media_address: call.media_address.as_deref().and_then(|a| a.parse().ok()),
        end_reason: crate::call::CRASHED.to_owned(),
        recording: crate::call::RecordingIntent::default(),
    })
}

/// Completes the CDRs of the calls a stopped signaling process left up: its own
/// predecessor's (this instance after a crash or kill -9) and those of other instances whose
/// heartbeat stopped. Each is released on its node if this process knows the node (which
/// then answers the final figures it kept), and written ended by the system at its last
/// sign of life.
async fn complete_orphans(
    pool: &Pool,
    cdr: &Arc<CdrWriter>,
    metrics: &Metrics,
    evidence: &EvidenceMap,
    clock: &WallClock,
) {
    let reader = cdr.clone();
    let orphans = tokio::task::spawn_blocking(move || reader.orphans(Duration::from_secs(10)))
        .await
        .unwrap_or_default();
    if orphans.is_empty() {
        return;
    }
    tracing::warn!(
        calls = orphans.len(),
        "calls were up when a signaling process stopped; completing their CDRs"
    );
    for (call, alive_at_ms) in orphans {
        let Some(record) = orphan_record(&call, alive_at_ms, clock) else {
            continue;
        };
        let row = complete_record(pool, evidence, clock, record).await;
        write_row(metrics, cdr, row);
    }
}

/// Counts a finished call's row, logs its verdict and hands it to the CDR writer.
fn write_row(metrics: &Metrics, cdr: &CdrWriter, row: Cdr) {
    metrics.calls.with_label_values(&[&row.disposition]).inc();
    metrics
        .verdicts
        .with_label_values(&[&row.media_verdict])
        .inc();
    tracing::info!(
        call_id = %row.call_id,
        disposition = %row.disposition,
        verdict = %row.media_verdict,
        caller_packets = row.caller_audio_packets,
        callee_packets = row.callee_audio_packets,
        diagnosis = %row.media_diagnosis,
        "media verdict"
    );
    cdr.write(row);
}

/// What the health watch of a node reports: `signaling_mediaproxy_up{node}`, and the live
/// figures of the calls on it into the evidence a CDR falls back on.
struct NodeReport {
    metrics: Arc<Metrics>,
    evidence: EvidenceMap,
}

/// How long the evidence of a call nobody finished is kept (a listing that crossed the
/// call's release leaves one behind).
const EVIDENCE_KEPT: Duration = Duration::from_secs(4 * 3600);

impl HealthReport for NodeReport {
    fn state(&self, node: &str, up: bool) {
        self.metrics
            .mediaproxy_up
            .with_label_values(&[node])
            .set(i64::from(up));
    }

    fn sessions(&self, node: &str, sessions: Vec<(CallId, Vec<crate::diagnosis::MediaFigures>)>) {
        let at_unix_ms = unix_ms_now() as u64;
        let mut map = self.evidence.lock().unwrap_or_else(|p| p.into_inner());
        for (call_id, media) in sessions {
            map.entry(call_id).or_default().seen(Snapshot {
                node: node.to_owned(),
                at_unix_ms,
                media,
            });
        }
        let oldest = at_unix_ms.saturating_sub(EVIDENCE_KEPT.as_millis() as u64);
        map.retain(|_, e| {
            e.last_seen.iter().any(|s| s.at_unix_ms >= oldest) || e.last_seen.is_empty()
        });
    }
}

/// Start-up check of the pool: reachable nodes, and ports enough for `--max-calls`.
async fn check_capacity(pool: Pool, max_calls: usize) {
    let mut pairs = 0u64;
    for node in pool.nodes() {
        match node.client.status().await {
            Ok(status) => {
                pairs += u64::from(status.ports_total / 2);
                if status.draining {
                    tracing::warn!(node = %status.node_id, "the media proxy is draining: it takes no new calls");
                }
                tracing::info!(node = %status.node_id, url = %node.endpoint(), advertised = %status.advertised_address, "media proxy reachable");
            }
            Err(error) => tracing::error!(
                url = %node.endpoint(),
                %error,
                "media proxy unreachable at start: it takes no calls until it answers"
            ),
        }
    }
    if pairs > 0 && (pairs as usize) < 2 * max_calls {
        tracing::warn!(
            pairs,
            max_calls,
            "the media proxies have fewer RTP port pairs than --max-calls needs \
             (2 per relayed audio call): calls beyond {} will fail with 503",
            pairs / 2
        );
    }
}

/// Follows one node's events until `stop`, reconnecting when the stream breaks.
async fn watch_events(
    client: MediaClient,
    inputs: mpsc::Sender<Input>,
    evidence: EvidenceMap,
    stop: CancellationToken,
) {
    loop {
        let endpoint = client.url.clone();
        let inputs = inputs.clone();
        let evidence = evidence.clone();
        let watch = client.watch_events(move |event| match event {
            MediaEvent::Released { call_id, reason } => {
                if reason != "released" {
                    let _ = inputs.try_send(Input::MediaEnded {
                        endpoint: endpoint.clone(),
                        call_id,
                        reason,
                    });
                }
            }
            MediaEvent::FirstPacket {
                call_id,
                leg,
                source,
            } => {
                let mut map = evidence.lock().unwrap_or_else(|p| p.into_inner());
                let entry = map.entry(call_id).or_default();
                let slot = if leg == Leg::Caller {
                    &mut entry.caller_first_source
                } else {
                    &mut entry.callee_first_source
                };
                slot.get_or_insert(source);
            }
        });
        tokio::select! {
            result = watch => {
                if let Err(error) = result {
                    tracing::debug!(url = %client.url, %error, "media event stream ended; reconnecting");
                }
            }
            () = stop.cancelled() => return,
        }
        tokio::select! {
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
            () = stop.cancelled() => return,
        }
    }
}

async fn send(
    udp: &UdpSocket,
    connections: &Connections,
    inputs: &mpsc::Sender<Input>,
    to: Peer,
    data: Vec<u8>,
) {
    match to.transport {
        Transport::Udp => {
            if let Err(error) = udp.send_to(&data, to.addr).await {
                tracing::warn!(peer = %to.addr, %error, "SIP send failed");
            }
        }
        Transport::Tcp => {
            let existing = connections
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(&to.addr)
                .cloned();
            match existing {
                Some(sender) => {
                    if sender.try_send(data).is_err() {
                        tracing::warn!(peer = %to.addr, "TCP connection congested or closed; message dropped");
                    }
                }
                None => {
                    let connections = connections.clone();
                    let inputs = inputs.clone();
                    tokio::spawn(async move {
                        match TcpStream::connect(to.addr).await {
                            Ok(stream) => {
                                let sender = run_connection(
                                    stream,
                                    to.addr,
                                    inputs,
                                    connections,
                                    CancellationToken::new(),
                                    None,
                                );
                                let _ = sender.send(data).await;
                            }
                            Err(error) => {
                                tracing::warn!(peer = %to.addr, %error, "TCP connect failed")
                            }
                        }
                    });
                }
            }
        }
    }
}

async fn receive_udp(udp: Arc<UdpSocket>, inputs: mpsc::Sender<Input>, stop: CancellationToken) {
    let mut buffer = vec![0u8; 65_536];
    loop {
        let received = tokio::select! {
            received = udp.recv_from(&mut buffer) => received,
            () = stop.cancelled() => return,
        };
        let Ok((len, addr)) = received else { continue };
        let data = &buffer[..len];
        if data.iter().all(|b| b.is_ascii_whitespace()) {
            continue; // keep-alive
        }
        let from = Peer {
            transport: Transport::Udp,
            addr,
        };
        let input = match parse(data) {
            Ok(message) => Input::Message { from, message },
            Err(error) => Input::Malformed { from, error },
        };
        if inputs.send(input).await.is_err() {
            return;
        }
    }
}

async fn accept_tcp(
    listener: TcpListener,
    inputs: mpsc::Sender<Input>,
    connections: Connections,
    limits: Arc<crate::tcp::Limits>,
    stop: CancellationToken,
) {
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = stop.cancelled() => return,
        };
        match accepted {
            Ok((stream, addr)) => match limits.admit(addr.ip(), Instant::now()) {
                Ok(slot) => {
                    run_connection(
                        stream,
                        addr,
                        inputs.clone(),
                        connections.clone(),
                        stop.clone(),
                        Some(slot),
                    );
                }
                // Closed at once: its descriptor is back before the next accept.
                Err(_) => drop(stream),
            },
            Err(error) => {
                // Out of descriptors (EMFILE) or the like: say what it is, and let the
                // process breathe instead of spinning on the error.
                tracing::warn!(%error, "cannot accept a TCP connection");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Starts the reader and writer of one TCP connection; returns its send queue. An inbound
/// connection holds its `slot` (its place under the connection limits) until it closes, and
/// must bring its first message in time; every connection must finish a message it started
/// and show some sign of life (crate::tcp).
fn run_connection(
    stream: TcpStream,
    addr: SocketAddr,
    inputs: mpsc::Sender<Input>,
    connections: Connections,
    stop: CancellationToken,
    slot: Option<crate::tcp::Slot>,
) -> mpsc::Sender<Vec<u8>> {
    let (mut reader, mut writer) = stream.into_split();
    let (sender, mut queue) = mpsc::channel::<Vec<u8>>(256);
    connections
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(addr, sender.clone());
    tokio::spawn(async move {
        while let Some(data) = queue.recv().await {
            if writer.write_all(&data).await.is_err() {
                break;
            }
        }
    });
    tokio::spawn(async move {
        let from = Peer {
            transport: Transport::Tcp,
            addr,
        };
        let mut buffer = Vec::with_capacity(8192);
        let mut chunk = vec![0u8; 16_384];
        let accepted = Instant::now();
        let (mut got_message, mut partial_since, mut last_activity) = (false, None, accepted);
        'read: loop {
            let (deadline, why) = crate::tcp::deadline(
                slot.is_some(),
                accepted,
                got_message,
                partial_since,
                last_activity,
            );
            let read = tokio::select! {
                read = reader.read(&mut chunk) => read,
                () = stop.cancelled() => break,
                () = tokio::time::sleep_until(deadline.into()) => {
                    tracing::info!(peer = %addr, why, "closing TCP connection: timed out");
                    if let Some(slot) = &slot {
                        slot.closed(why);
                    }
                    break;
                }
            };
            let now = Instant::now();
            match read {
                Ok(0) | Err(_) => break,
                Ok(n) => buffer.extend_from_slice(&chunk[..n]),
            }
            last_activity = now;
            loop {
                match frame(&buffer) {
                    Frame::Complete(len) => {
                        let input = match parse(&buffer[..len]) {
                            Ok(message) => Input::Message { from, message },
                            Err(error) => Input::Malformed { from, error },
                        };
                        buffer.drain(..len);
                        got_message = true;
                        partial_since = None;
                        if inputs.send(input).await.is_err() {
                            break 'read;
                        }
                    }
                    Frame::KeepAlive(len) => {
                        buffer.drain(..len);
                    }
                    Frame::Incomplete => break,
                    Frame::Invalid(why) => {
                        tracing::info!(peer = %addr, why, "closing TCP connection: cannot frame");
                        if let Some(slot) = &slot {
                            slot.closed("unframeable");
                        }
                        break 'read;
                    }
                }
            }
            if buffer.is_empty() {
                partial_since = None;
            } else if partial_since.is_none() {
                partial_since = Some(now);
            }
        }
        connections
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&addr);
        drop(slot);
    });
    sender
}

/// How often the mutual TLS files are checked for a change.
const TLS_POLL: Duration = Duration::from_secs(2);

/// Watches signaling's own mutual TLS files (`--mediaproxy-ca/-cert/-key`) until `stop`: when
/// they change and still parse, every node is dialled with them from then on (a renewed
/// client certificate, a rotated CA) without a restart; requests in flight and calls are
/// untouched. Files that do not parse keep the old ones in force, with a warning.
async fn watch_tls(pool: Pool, mut tls: crate::media::ClientTls, stop: CancellationToken) {
    let mut seen = tls.modified();
    let mut every = tokio::time::interval(TLS_POLL);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = every.tick() => {}
            () = stop.cancelled() => return,
        }
        let now = tls.modified();
        if now == seen {
            continue;
        }
        seen = now;
        let loaded = tls.reread().map_err(|e| e.to_string()).and_then(|fresh| {
            pool.reload_tls(fresh.clone())
                .map(|()| fresh)
                .map_err(|e| e.to_string())
        });
        match loaded {
            Ok(fresh) => {
                tracing::info!(
                    "media proxy TLS files changed: nodes are dialled with them from now on"
                );
                tls = fresh;
            }
            Err(error) => {
                tracing::warn!(%error, "media proxy TLS files changed but cannot be used; keeping the ones in force");
            }
        }
    }
}
