//! The driver around [`crate::b2bua::Core`]: SIP over UDP and TCP on one port, timers, the
//! media proxy client, the CDR writer, and (without `--mediaproxy`) an embedded media proxy
//! reached over real gRPC on a loopback port.
//!
//! One task owns the core and performs its outputs. Anything slow (gRPC, the database) runs in
//! spawned tasks that report back through the input channel, so SIP handling never waits.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use mediaproxy::server::MediaProxy;
use mediaproxy::types::Leg;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::admin::AdminQuery;
use crate::auth::DigestAuth;
use crate::b2bua::{CallRecord, Core, Input, Output, Peer, Settings, TimerKind, Transport};
use crate::cdr::{Cdr, CdrMedia, CdrWriter, WriterOptions};
use crate::config::Config;
use crate::diagnosis::{self, Evidence, MediaReport, Verdict};
use crate::media::{MediaClient, MediaEvent};
use crate::metrics::Metrics;
use crate::registrar::{Policy, Registrar};
use crate::sip::message::{Frame, Message, frame, parse};

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
    media: MediaClient,
    cdr: CdrWriter,
}

fn unix_ms(clock: (Instant, u64), at: Instant) -> i64 {
    let (anchor, anchor_ms) = clock;
    match at.checked_duration_since(anchor) {
        Some(after) => (anchor_ms + after.as_millis() as u64) as i64,
        None => anchor_ms.saturating_sub(anchor.duration_since(at).as_millis() as u64) as i64,
    }
}

fn now_unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
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
            },
            metrics.cdr.clone(),
        )
        .map_err(|e| StartError::Cdr {
            url: config.cdr.display(),
            message: e.to_string(),
        })?;
        let owner = format!("signaling-{}-{}", address.port(), std::process::id());
        let (embedded, url) = match config.mediaproxies.first() {
            Some(url) => (None, url.clone()),
            None => {
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
                (Some(proxy), url)
            }
        };
        let media = MediaClient::new(&url, &owner)
            .map_err(StartError::MediaProxy)?
            .with_durations(metrics.mediaproxy_duration.clone());
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
            media,
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

    /// The media proxy URL in use (the embedded one's loopback URL when embedded).
    pub fn mediaproxy_url(&self) -> &str {
        &self.media.url
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
            media,
            cdr,
        } = self;
        let stop = CancellationToken::new();
        let mut tasks = tokio::task::JoinSet::new();
        let mut registries = vec![metrics.registry.clone()];
        if let Some(proxy) = &embedded {
            registries.push(proxy.control().metrics().registry.clone());
        }
        let draining = Arc::new(AtomicBool::new(false));
        let http_stop = stop.clone();
        let http_draining = draining.clone();
        let (admin_tx, mut admin_rx) = mpsc::channel::<AdminQuery>(64);
        let admin = crate::admin::router(admin_tx, media.clone());
        tasks.spawn(async move {
            if let Err(error) = mediaproxy::metrics::serve_http_with(
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
        tasks.spawn(accept_tcp(
            tcp,
            inputs.clone(),
            connections.clone(),
            stop.clone(),
        ));
        let heartbeat_media = media.clone();
        let heartbeat_stop = stop.clone();
        let heartbeat_metrics = metrics.clone();
        tasks.spawn(async move {
            let mut interval = tokio::time::interval(Duration::from_secs(10));
            let mut node = String::from("unknown");
            loop {
                tokio::select! {
                    _ = interval.tick() => {
                        if let Ok(id) = heartbeat_media.node_id().await {
                            if id != node {
                                let _ = heartbeat_metrics.mediaproxy_up.remove_label_values(&[&node]);
                            }
                            node = id;
                        }
                        match heartbeat_media.renew().await {
                            Ok(_) => heartbeat_metrics.mediaproxy_up.with_label_values(&[&node]).set(1),
                            Err(error) => {
                                heartbeat_metrics.mediaproxy_up.with_label_values(&[&node]).set(0);
                                tracing::warn!(%error, "media proxy lease renewal failed");
                            }
                        }
                    }
                    () = heartbeat_stop.cancelled() => return,
                }
            }
        });

        // Start-up check of the media proxy: reachable, and with ports for --max-calls.
        let check_media = media.clone();
        let max_calls = config.max_calls;
        tokio::spawn(async move {
            match check_media.status().await {
                Ok(status) => {
                    let pairs = status.ports_total / 2;
                    if (pairs as usize) < 2 * max_calls {
                        tracing::warn!(
                            node = %status.node_id,
                            pairs,
                            max_calls,
                            "the media proxy has fewer RTP port pairs than --max-calls needs \
                             (2 per relayed audio call): calls beyond {} will fail with 503",
                            pairs / 2
                        );
                    }
                    if status.draining {
                        tracing::warn!(node = %status.node_id, "the media proxy is draining: relayed calls will fail with 503");
                    }
                    tracing::info!(node = %status.node_id, advertised = %status.advertised_address, "media proxy reachable");
                }
                Err(error) => tracing::error!(
                    url = %check_media.url,
                    %error,
                    "media proxy unreachable at start: relayed calls get 503 until it answers"
                ),
            }
        });

        // Sessions the proxy ends by itself (media timeout, lease expiry) end their calls; first
        // packets are kept as evidence in case the proxy is lost before the call ends.
        let evidence: EvidenceMap = Arc::default();
        let watch_media = media.clone();
        let watch_inputs = inputs.clone();
        let watch_stop = stop.clone();
        let watch_evidence = evidence.clone();
        tasks.spawn(async move {
            loop {
                let inputs = watch_inputs.clone();
                let evidence = watch_evidence.clone();
                let watch = watch_media.watch_events(move |event| match event {
                    MediaEvent::Released { call_id, reason } => {
                        if reason != "released" {
                            let _ = inputs.try_send(Input::MediaEnded { call_id, reason });
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
                            tracing::debug!(%error, "media event stream ended; reconnecting");
                        }
                    }
                    () = watch_stop.cancelled() => return,
                }
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_secs(1)) => {}
                    () = watch_stop.cancelled() => return,
                }
            }
        });
        let realm = config.realm.clone();
        let auth = DigestAuth::new(&realm, 300)
            .map_err(|e| anyhow::anyhow!("random nonce secret: {e}"))?;
        let mut core = Core::new(
            Settings {
                local,
                routes: config.routes.clone(),
                trusted: config.trusted.clone(),
                users: config.users.clone(),
                media_mode: config.media_mode,
                ring_timeout: config.ring_timeout,
                max_call_duration: config.max_call_duration,
                keepalive: config.keepalive,
                max_calls: config.max_calls,
            },
            auth,
            Registrar::new(Policy::default()),
        );
        let clock = (Instant::now(), now_unix_ms());
        let mut timers: BinaryHeap<Reverse<(Instant, u64)>> = BinaryHeap::new();
        let mut timer_kinds: HashMap<u64, (u64, TimerKind)> = HashMap::new();
        let mut timer_seq = 0u64;
        let mut finishing = tokio::task::JoinSet::new();
        let cdr = Arc::new(cdr);
        let mut shutdown = std::pin::pin!(shutdown);
        let mut draining_until: Option<Instant> = None;

        loop {
            let next_timer = timers.peek().map(|Reverse((at, _))| *at);
            let sleep_until = next_timer
                .unwrap_or_else(|| Instant::now() + Duration::from_secs(3600))
                .min(
                    draining_until.map_or(Instant::now() + Duration::from_secs(3600), |d| {
                        d.min(Instant::now() + Duration::from_millis(100))
                    }),
                );
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
                    }
                    None
                }
                () = tokio::time::sleep_until(sleep_until.into()) => None,
                () = &mut shutdown, if draining_until.is_none() => {
                    tracing::info!(calls = core.active_calls(), "shutting down: draining");
                    core.set_draining(true);
                    draining.store(true, Ordering::Relaxed);
                    draining_until = Some(Instant::now() + Duration::from_secs(10));
                    None
                }
            };
            let now = Instant::now();
            let unix = now_unix_ms() / 1000;
            let mut batch = Vec::new();
            if let Some(input) = input {
                batch.push(input);
            }
            while let Some(Reverse((at, seq))) = timers.peek().copied() {
                if at > now {
                    break;
                }
                timers.pop();
                if let Some((call, kind)) = timer_kinds.remove(&seq) {
                    batch.push(Input::Timer { call, kind });
                }
            }
            for input in batch {
                if let Input::Message {
                    message: Message::Request(request),
                    ..
                } = &input
                {
                    metrics.request(request.method.as_str());
                }
                for output in core.handle(now, unix, input) {
                    match output {
                        Output::Send { to, data } => {
                            metrics.response(&data);
                            send(&udp, &connections, &inputs, to, data).await;
                        }
                        Output::Timer { call, kind, after } => {
                            timer_seq += 1;
                            timers.push(Reverse((now + after, timer_seq)));
                            timer_kinds.insert(timer_seq, (call, kind));
                        }
                        Output::Allocate {
                            call,
                            call_id,
                            offer,
                            offer_leg,
                        } => {
                            let media = media.clone();
                            let inputs = inputs.clone();
                            tokio::spawn(async move {
                                let result = media.prepare(&call_id, &offer, offer_leg).await;
                                let _ = inputs.send(Input::MediaReady { call, result }).await;
                            });
                        }
                        Output::UpdateMedia { call_id, leg, sdp } => {
                            let media = media.clone();
                            tokio::spawn(async move {
                                if let Err(error) = media.update(&call_id, leg, &sdp).await {
                                    tracing::warn!(%call_id, leg = leg.as_str(), %error, "media update failed");
                                }
                            });
                        }
                        Output::Finish(record) => {
                            let media = media.clone();
                            let cdr = cdr.clone();
                            let metrics = metrics.clone();
                            let evidence = evidence.clone();
                            finishing.spawn(async move {
                                let row = complete_record(&media, &evidence, clock, record).await;
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
                            });
                        }
                    }
                }
            }
            metrics.active_calls.set(core.active_calls() as i64);
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

/// First-packet sources per call, from the proxy's events.
type EvidenceMap = Arc<Mutex<HashMap<String, Evidence>>>;

/// Releases the call's media (if relayed) and builds its CDR row with the verdict and the
/// diagnosis.
async fn complete_record(
    media: &MediaClient,
    evidence: &EvidenceMap,
    clock: (Instant, u64),
    record: CallRecord,
) -> Cdr {
    let seen = evidence
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .remove(&record.call_id)
        .unwrap_or_default();
    let mut row = Cdr {
        call_id: record.call_id.clone(),
        b_call_id: record.b_call_id.clone(),
        caller: record.caller.clone(),
        callee: record.callee.clone(),
        start_time_ms: unix_ms(clock, record.start),
        answer_time_ms: record.answer.map(|a| unix_ms(clock, a)),
        end_time_ms: unix_ms(clock, record.end),
        duration_ms: record.answer.map_or(0, |a| {
            record.end.saturating_duration_since(a).as_millis() as i64
        }),
        disposition: record.disposition.as_str().to_owned(),
        sip_status: i64::from(record.sip_status),
        hangup_side: record.hangup_side.as_str().to_owned(),
        media_mode: record.media_mode.as_str().to_owned(),
        media_node: record.media_node.clone(),
        end_reason: record.end_reason.clone(),
        media_address: record.media_address.map(|a| a.to_string()),
        ..Cdr::default()
    };
    let answered = record.answer.is_some();
    let released = if record.relayed {
        Some(
            media
                .release(&record.call_id, record.hangup_side.as_str())
                .await,
        )
    } else {
        None
    };
    let (verdict, diagnosis) = match released {
        None if answered => (
            Verdict::Direct,
            "direct mode: media went end to end, not through a proxy; not measured".to_owned(),
        ),
        None => (
            Verdict::NotAnswered,
            format!("not answered: {}", record.end_reason),
        ),
        Some(Ok(stats)) => {
            let report = MediaReport {
                advertised: record.media_address,
                media: stats.media,
            };
            let (caller, callee) = (report.audio_in(Leg::Caller), report.audio_in(Leg::Callee));
            row.caller_audio_packets = caller.packets as i64;
            row.callee_audio_packets = callee.packets as i64;
            row.caller_audio_bytes = caller.bytes as i64;
            row.callee_audio_bytes = callee.bytes as i64;
            row.total_bytes_relayed = report
                .media
                .iter()
                .map(|m| m.rtp_out.bytes + m.rtcp_out.bytes)
                .sum::<u64>() as i64;
            row.recording_packets =
                report.media.iter().map(|m| m.recorded_packets).sum::<u64>() as i64;
            row.media = report.media.iter().map(CdrMedia::from_figures).collect();
            if answered {
                let (verdict, mut text) = diagnosis::diagnose(&report);
                if !stats.released_now {
                    text = format!(
                        "{text}; the proxy had already ended the session ({})",
                        stats.release_reason
                    );
                }
                (verdict, text)
            } else {
                (
                    Verdict::NotAnswered,
                    format!(
                        "not answered: {}; early media: caller sent {} RTP packets, callee {}",
                        record.end_reason, row.caller_audio_packets, row.callee_audio_packets
                    ),
                )
            }
        }
        Some(Err(error)) => {
            tracing::error!(call_id = %record.call_id, %error, "media release failed; CDR without final counts");
            let node = record.media_node.as_deref().unwrap_or("(unknown)");
            if answered {
                diagnosis::diagnose_lost(node, &error, &seen)
            } else {
                (
                    Verdict::NotAnswered,
                    format!(
                        "not answered: {}; media proxy {node} could not release the call ({error})",
                        record.end_reason
                    ),
                )
            }
        }
    };
    row.media_verdict = verdict.as_str().to_owned();
    row.media_diagnosis = diagnosis;
    row
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
    stop: CancellationToken,
) {
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = stop.cancelled() => return,
        };
        if let Ok((stream, addr)) = accepted {
            run_connection(
                stream,
                addr,
                inputs.clone(),
                connections.clone(),
                stop.clone(),
            );
        }
    }
}

/// Starts the reader and writer of one TCP connection; returns its send queue.
fn run_connection(
    stream: TcpStream,
    addr: SocketAddr,
    inputs: mpsc::Sender<Input>,
    connections: Connections,
    stop: CancellationToken,
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
        'read: loop {
            let read = tokio::select! {
                read = reader.read(&mut chunk) => read,
                () = stop.cancelled() => break,
            };
            match read {
                Ok(0) | Err(_) => break,
                Ok(n) => buffer.extend_from_slice(&chunk[..n]),
            }
            loop {
                match frame(&buffer) {
                    Frame::Complete(len) => {
                        let input = match parse(&buffer[..len]) {
                            Ok(message) => Input::Message { from, message },
                            Err(error) => Input::Malformed { from, error },
                        };
                        buffer.drain(..len);
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
                        break 'read;
                    }
                }
            }
        }
        connections
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&addr);
    });
    sender
}
