//! Wires the media proxy together: relay workers, control plane, gRPC (service, health,
//! reflection), the metrics endpoint and the background tasks (timeouts, leases).
//!
//! [`MediaProxy::bind`] binds every listener first, so callers (tests, `signaling`'s embedded
//! proxy) can ask for port 0 and read the real addresses before serving.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use proto::v1::media_proxy_server::MediaProxyServer;
use tokio::net::TcpListener;
use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::TcpListenerStream;
use tokio_util::sync::CancellationToken;
use tonic::service::interceptor::InterceptedService;

use crate::config::{Config, MediaConfig};
use crate::control::{Control, ControlSettings};
use crate::grpc::{Service, limit_requests};
use crate::metrics::{Metrics, serve_http};
use crate::ratelimit::{ClientRates, RateLimiter};
use crate::recording::{Recorder, RecorderSettings};
use crate::relay::{Notice, Relay, Shared};
use crate::types::{ReleaseReason, WallClock};

/// Why the proxy could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot listen for {what} on {address}: {source}")]
    Listen {
        what: &'static str,
        address: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot start relay workers: {0}")]
    Workers(std::io::Error),
    #[error("gRPC server failed: {0}")]
    Grpc(#[from] tonic::transport::Error),
    #[error("metrics server failed: {0}")]
    Http(std::io::Error),
}

/// A bound, not yet serving, media proxy.
pub struct MediaProxy {
    control: Arc<Control>,
    notices: mpsc::UnboundedReceiver<Notice>,
    grpc: TcpListener,
    metrics: TcpListener,
    shutdown_grace: Duration,
    lease_timeout: Duration,
    /// Mutual TLS of the gRPC link; None is plaintext.
    tls: Option<crate::config::TlsFiles>,
    /// Requests per second of one gRPC client.
    client_rates: ClientRates,
    /// rtpengine ng listeners and the sources besides loopback they answer.
    ng: Vec<tokio::net::UdpSocket>,
    ng_allow: Vec<service_kit::config::Cidr>,
}

/// Largest gRPC request message accepted; larger ones are refused RESOURCE_EXHAUSTED.
pub const MAX_REQUEST_BYTES: usize = 64 * 1024;
/// gRPC requests served at once on one connection.
const REQUESTS_PER_CONNECTION: usize = 1024;

async fn listen(what: &'static str, address: SocketAddr) -> Result<TcpListener, ServerError> {
    TcpListener::bind(address)
        .await
        .map_err(|source| ServerError::Listen {
            what,
            address,
            source,
        })
}

impl MediaProxy {
    /// Binds the gRPC and metrics listeners and starts the relay workers.
    pub async fn bind(config: &Config) -> Result<Self, ServerError> {
        let grpc = listen("gRPC", config.grpc).await?;
        let metrics = listen("metrics", config.metrics).await?;
        let mut ng = Vec::new();
        for &address in &config.listen_ng {
            let socket = tokio::net::UdpSocket::bind(address)
                .await
                .map_err(|source| ServerError::Listen {
                    what: "ng",
                    address,
                    source,
                })?;
            ng.push(socket);
        }
        Self::with_listeners(
            &config.node_id,
            &config.media,
            config.shutdown_grace,
            grpc,
            metrics,
        )
        .map(|proxy| {
            proxy
                .with_tls(config.tls.clone())
                .with_ng(ng, config.ng_allow.clone())
        })
    }

    /// Answers rtpengine's ng protocol on these sockets, from loopback and `allow`.
    pub fn with_ng(
        mut self,
        sockets: Vec<tokio::net::UdpSocket>,
        allow: Vec<service_kit::config::Cidr>,
    ) -> Self {
        self.ng = sockets;
        self.ng_allow = allow;
        self
    }

    /// The addresses the ng listeners are bound to.
    pub fn ng_addrs(&self) -> Vec<SocketAddr> {
        self.ng.iter().filter_map(|s| s.local_addr().ok()).collect()
    }

    /// Serves gRPC over mutual TLS with these certificates (None: plaintext).
    pub fn with_tls(mut self, tls: Option<crate::config::TlsFiles>) -> Self {
        self.tls = tls;
        self
    }

    /// Builds the proxy on listeners the caller bound.
    pub fn with_listeners(
        node_id: &str,
        media: &MediaConfig,
        shutdown_grace: Duration,
        grpc: TcpListener,
        metrics_listener: TcpListener,
    ) -> Result<Self, ServerError> {
        let metrics = Arc::new(Metrics::new(node_id));
        let (events, _) = broadcast::channel(4096);
        let (notice_tx, notices) = mpsc::unbounded_channel();
        let clock = WallClock::now();
        let shared = Shared {
            metrics: metrics.clone(),
            events: events.clone(),
            notices: notice_tx,
            clock: clock.clone(),
            timing: media.timing,
        };
        let (recorder, sinks) = Recorder::start(
            media.workers,
            RecorderSettings {
                directory: media.recordings.clone(),
                media_ip: if media.media_ip.is_unspecified() {
                    media.advertise_ip
                } else {
                    media.media_ip
                },
                clock: clock.clone(),
                nice: media.control_nice,
            },
            metrics.clone(),
        )
        .map_err(ServerError::Workers)?;
        let relay = Relay::start(&shared, sinks).map_err(ServerError::Workers)?;
        let control = Control::new(
            ControlSettings {
                node_id: node_id.to_owned(),
                media_ip: media.media_ip,
                advertise_ip: media.advertise_ip,
                ports: media.ports,
                port_quarantine: media.port_quarantine,
                lease_timeout: media.lease_timeout,
                max_sessions_per_owner: media.max_sessions_per_owner,
                dscp: media.dscp,
                socket_buffer: media.socket_buffer,
                encode_release: crate::grpc::encode_release,
            },
            relay,
            recorder,
            metrics,
            events,
            clock,
        );
        Ok(Self {
            control: Arc::new(control),
            notices,
            grpc,
            metrics: metrics_listener,
            shutdown_grace,
            lease_timeout: media.lease_timeout,
            tls: None,
            client_rates: media.client_rates,
            ng: Vec::new(),
            ng_allow: Vec::new(),
        })
    }

    pub fn grpc_addr(&self) -> SocketAddr {
        self.grpc
            .local_addr()
            .expect("bound listener has an address")
    }

    pub fn metrics_addr(&self) -> SocketAddr {
        self.metrics
            .local_addr()
            .expect("bound listener has an address")
    }

    /// The proxy's metrics, for an embedder that serves them on its own `/metrics`.
    pub fn registry(&self) -> prometheus::Registry {
        self.control.metrics().registry.clone()
    }

    /// Serves until `shutdown` completes, then drains: new allocations are refused, existing
    /// calls keep relaying until they end or the shutdown grace runs out, and whatever is
    /// left is released with reason `shutdown`.
    pub async fn serve(self, shutdown: impl Future<Output = ()> + Send) -> Result<(), ServerError> {
        let Self {
            control,
            mut notices,
            grpc,
            metrics,
            shutdown_grace,
            lease_timeout,
            tls,
            client_rates,
            ng,
            ng_allow,
        } = self;
        let stop = CancellationToken::new();
        let mut tasks = tokio::task::JoinSet::new();
        for socket in ng {
            let metrics = control.metrics().clone();
            let (allow, stop) = (ng_allow.clone(), stop.clone());
            tasks.spawn(serve_ng(socket, allow, metrics, stop));
        }

        let timeouts = control.clone();
        tasks.spawn(async move {
            while let Some(Notice::Expired { call_id }) = notices.recv().await {
                let _ = timeouts.release(&call_id, ReleaseReason::Timeout).await;
            }
        });
        let sweeper = control.clone();
        let sweep_stop = stop.clone();
        let every = (lease_timeout / 4).clamp(Duration::from_millis(50), Duration::from_secs(1));
        tasks.spawn(async move {
            let mut interval = tokio::time::interval(every);
            interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = interval.tick() => sweeper.sweep().await,
                    () = sweep_stop.cancelled() => return,
                }
            }
        });

        let (health, health_service) = tonic_health::server::health_reporter();
        health.set_serving::<MediaProxyServer<Service>>().await;
        let grpc_server = {
            let stop = stop.clone();
            let limiter = Arc::new(RateLimiter::new(client_rates, control.metrics().clone()));
            let server = serve_grpc(
                grpc,
                tls,
                control.clone(),
                limiter,
                (health_service, health.clone()),
                stop.clone(),
            );
            // A graceful stop waits for every stream to finish; a client that stopped reading
            // (a stuck analyser on the tap) would hold it open for ever.
            async move {
                tokio::select! {
                    result = server => result,
                    () = async {
                        stop.cancelled().await;
                        tokio::time::sleep(GRPC_STOP_GRACE).await;
                    } => {
                        tracing::warn!(grace = ?GRPC_STOP_GRACE, "gRPC streams still open at shutdown; closing them");
                        Ok(())
                    }
                }
            }
        };
        let http_stop = stop.clone();
        let http_server = serve_http(
            metrics,
            vec![
                control.metrics().registry.clone(),
                service_kit::metrics::process::registry("mediaproxy", env!("CARGO_PKG_VERSION")),
            ],
            control.draining_flag(),
            async move { http_stop.cancelled().await },
        );
        let drain = async {
            shutdown.await;
            tracing::info!(grace = ?shutdown_grace, sessions = control.session_count(), "shutting down: draining");
            crate::grpc::set_draining(&control, &health, true).await;
            let deadline = Instant::now() + shutdown_grace;
            while control.session_count() > 0 && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            control.release_all(ReleaseReason::Shutdown).await;
            control.stop_recorder();
            // Streaming RPCs would hold the gRPC server's graceful shutdown open forever.
            control.close_event_streams();
            stop.cancel();
        };
        let (grpc_result, http_result, ()) = tokio::join!(grpc_server, http_server, drain);
        tasks.abort_all();
        grpc_result?;
        http_result.map_err(ServerError::Http)?;
        tracing::info!("media proxy stopped");
        Ok(())
    }
}

/// Answers ng datagrams on `socket` until `stop`: the protocol is `crate::ng`'s, this only
/// moves bytes and counts.
async fn serve_ng(
    socket: tokio::net::UdpSocket,
    allow: Vec<service_kit::config::Cidr>,
    metrics: Arc<crate::metrics::Metrics>,
    stop: CancellationToken,
) {
    use crate::ng::{Ng, Outcome};
    if let Ok(address) = socket.local_addr() {
        tracing::info!(%address, "ng control protocol listening");
    }
    let mut ng = Ng::default();
    let mut buffer = vec![0u8; 65_536];
    loop {
        let (len, from) = tokio::select! {
            received = socket.recv_from(&mut buffer) => match received {
                Ok(received) => received,
                Err(error) => {
                    tracing::warn!(%error, "ng socket receive failed");
                    continue;
                }
            },
            () = stop.cancelled() => return,
        };
        if !from.ip().is_loopback() && !allow.iter().any(|c| c.contains(from.ip())) {
            metrics.ng_dropped.with_label_values(&["not_allowed"]).inc();
            continue;
        }
        let (reply, result) = match ng.handle(Instant::now(), from, &buffer[..len]) {
            Outcome::Reply { data, result, .. } => (data, result),
            Outcome::Cached(data) => (data, "cached"),
            Outcome::Dropped(why) => {
                metrics.ng_dropped.with_label_values(&[why.as_str()]).inc();
                continue;
            }
        };
        metrics.ng_requests.with_label_values(&[result]).inc();
        if let Err(error) = socket.send_to(&reply, from).await {
            tracing::warn!(peer = %from, %error, "ng reply not sent");
        }
    }
}

/// How long a stopping gRPC server waits for its streams to finish.
const GRPC_STOP_GRACE: Duration = Duration::from_secs(3);

/// How often the TLS files are checked for a change.
const TLS_POLL: Duration = Duration::from_secs(2);

/// Serves gRPC on `listener` until `stop`. Under mutual TLS the certificate files are watched;
/// when they change (and still parse) the server is restarted on the same socket with them:
/// event streams are ended first (they would hold the graceful stop open; their clients
/// reconnect), unary requests in flight finish, and relay sessions are untouched.
async fn serve_grpc<H: tonic_health::pb::health_server::Health>(
    listener: TcpListener,
    mut tls: Option<crate::config::TlsFiles>,
    control: Arc<Control>,
    limiter: Arc<RateLimiter>,
    (health, reporter): (
        tonic_health::pb::health_server::HealthServer<H>,
        tonic_health::server::HealthReporter,
    ),
    stop: CancellationToken,
) -> Result<(), ServerError> {
    let address = listener
        .local_addr()
        .expect("bound listener has an address");
    let failed = |source| ServerError::Listen {
        what: "gRPC",
        address,
        source,
    };
    let socket = listener.into_std().map_err(failed)?;
    loop {
        let listener = socket
            .try_clone()
            .and_then(TcpListener::from_std)
            .map_err(failed)?;
        // Requests in progress per connection (event and tap streams included): a client
        // past it waits instead of piling work on the node.
        let mut builder = tonic::transport::Server::builder()
            .concurrency_limit_per_connection(REQUESTS_PER_CONNECTION);
        if let Some(files) = &tls {
            // A client must show a certificate of one of these CAs (tonic refuses the
            // handshake otherwise); its common name qualifies its owner (grpc/mod.rs).
            let config = tonic::transport::ServerTlsConfig::new()
                .identity(tonic::transport::Identity::from_pem(
                    &files.cert,
                    &files.key,
                ))
                .client_ca_root(tonic::transport::Certificate::from_pem(&files.client_ca));
            builder = builder.tls_config(config)?;
        }
        // Reflection in both versions: grpcurl and grpcui of before 2024, Postman and Evans
        // ask v1alpha only, current tools ask v1 first.
        let reflection = || {
            tonic_reflection::server::Builder::configure()
                .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
                .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        };
        let reflection_v1alpha = reflection()
            .build_v1alpha()
            .expect("the embedded descriptor set is valid");
        let reflection = reflection()
            .build_v1()
            .expect("the embedded descriptor set is valid");
        let restart = CancellationToken::new();
        let server = builder
            .add_service(health.clone())
            .add_service(reflection)
            .add_service(reflection_v1alpha)
            .add_service(InterceptedService::new(
                MediaProxyServer::new(Service::new(
                    control.clone(),
                    tls.as_ref().map_or(&[][..], |t| &t.operators),
                    reporter.clone(),
                    limiter.clone(),
                ))
                // The largest real request (an update of 8 media lines with every codec of
                // their SDP) is a few KiB; tonic's default would take 4 MiB per message.
                .max_decoding_message_size(MAX_REQUEST_BYTES),
                limit_requests(limiter.clone()),
            ))
            .serve_with_incoming_shutdown(TcpListenerStream::new(listener), {
                let (restart, stop) = (restart.clone(), stop.clone());
                async move {
                    tokio::select! {
                        () = restart.cancelled() => {}
                        () = stop.cancelled() => {}
                    }
                }
            });
        let mut server = std::pin::pin!(server);
        let Some(files) = tls.clone() else {
            return server.await.map_err(ServerError::from);
        };
        let seen = files.modified();
        let changed = async {
            loop {
                tokio::time::sleep(TLS_POLL).await;
                if files.modified() == seen {
                    continue;
                }
                match files.reread() {
                    Ok(new) => return new,
                    Err(error) => {
                        tracing::warn!(%error, "TLS files changed but cannot be used; keeping the certificates in force")
                    }
                }
            }
        };
        tokio::select! {
            result = &mut server => return result.map_err(ServerError::from),
            new = changed => {
                tracing::info!("TLS files changed: the gRPC server restarts with them (calls keep relaying)");
                tls = Some(new);
                control.close_event_streams();
                restart.cancel();
                server.await?;
            }
        }
    }
}
