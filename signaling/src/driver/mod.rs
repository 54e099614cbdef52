//! The driver around [`crate::call::Core`]: SIP over UDP and TCP on one port, timers, the
//! media proxy client, the CDR writer, and (without `--mediaproxy`) an embedded media proxy
//! reached over real gRPC on a loopback port.
//!
//! One task owns the core and performs its outputs. Anything slow (gRPC, the database) runs in
//! spawned tasks that report back through the input channel, so SIP handling never waits.
//!
//! # Layout
//!
//! - this file: [`Signaling`], binding its sockets, and serving: the start of the tasks
//!   around the core, and the loop that feeds the core and sleeps until its next deadline.
//! - [`perform`]: performing the core's outputs, and answering the admin endpoints.
//! - [`transport`]: SIP over UDP and TCP: receiving, framing, connections and sending.
//! - [`nodes`]: watching the media proxies: health and lease reports, event streams, the
//!   evidence kept for CDRs, TLS files, the start-up capacity check.
//! - [`finish`]: finishing calls: media release and CDR rows, durable records of calls that
//!   are up, completing those a stopped process left.

mod embedded;
mod finish;
mod nodes;
mod perform;
mod transport;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use service_kit::clock::WallClock;
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use self::embedded::Embedded;
use self::finish::complete_orphans;
use self::nodes::EvidenceMap;
use self::perform::Performer;
use self::transport::Connections;
use crate::access::auth::DigestAuth;
use crate::access::registrar::{Policy, Registrar};
use crate::admin::AdminQuery;
use crate::call::{Core, Input, Settings};
use crate::cdr::{CdrWriter, WriterOptions, unix_ms_now};
use crate::config::Config;
use crate::ids::Ids;
use crate::media::pool::Pool;
use crate::metrics::Metrics;
use crate::sip::message::Message;

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

/// A bound, not yet serving, signaling service.
pub struct Signaling {
    config: Config,
    udp: Arc<UdpSocket>,
    tcp: TcpListener,
    http: TcpListener,
    metrics: Arc<Metrics>,
    embedded: Option<Embedded>,
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
            let (proxy, url) = Embedded::bind(&config).await?;
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
                if let Err(error) = proxy.serve(proxy_stop).await {
                    tracing::error!(%error, "embedded media proxy failed");
                }
            });
        }
        let local = udp.local_addr()?;
        let (inputs, mut input_rx) = mpsc::channel::<Input>(8192);
        let connections: Connections = Arc::default();
        tasks.spawn(transport::receive_udp(
            udp.clone(),
            inputs.clone(),
            stop.clone(),
        ));
        tasks.spawn(transport::accept_tcp(
            tcp,
            inputs.clone(),
            connections.clone(),
            transport::limits(&config, &metrics),
            stop.clone(),
        ));
        // Each node: health and lease (media::pool::watch), and its event stream. Sessions a
        // node ends by itself (media timeout, lease expiry) end their calls; first packets are
        // kept as evidence in case the node is lost before the call ends.
        let evidence: EvidenceMap = Arc::default();
        nodes::watch(
            &mut tasks,
            &pool,
            &inputs,
            &metrics,
            &evidence,
            config.max_calls,
            &stop,
        );
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
                session_expires: config.session_expires,
                min_se: config.min_se,
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
        let performer = Performer {
            udp: &udp,
            connections: &connections,
            inputs: &inputs,
            pool: &pool,
            metrics: &metrics,
            cdr: &cdr,
            evidence: &evidence,
            clock: &clock,
        };
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
                    performer.answer(&mut core, query);
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
                performer.perform(output, &mut finishing).await;
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
