//! SIP over UDP and TCP on one port: receiving datagrams, accepting connections under the
//! connection limits ([`crate::tcp`]), cutting streams into messages, and sending, on an open
//! connection or a new one.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::call::Input;
use crate::config::Config;
use crate::metrics::Metrics;
use crate::sip::message::{Frame, frame, parse};
use crate::sip::{Peer, Transport};

/// The open TCP connections, by peer: each one's send queue.
pub(super) type Connections = Arc<Mutex<HashMap<SocketAddr, mpsc::Sender<Vec<u8>>>>>;

/// The limits on inbound TCP connections: per source (`--tcp-per-source`), and overall from the
/// open file limit and `--max-calls`.
pub(super) fn limits(config: &Config, metrics: &Metrics) -> Arc<crate::tcp::Limits> {
    let nofile = rlimit::Resource::NOFILE
        .get()
        .map_or(1024, |(soft, _)| soft);
    crate::tcp::Limits::new(
        config.tcp_per_source,
        crate::tcp::global_cap(nofile, config.max_calls),
        metrics.tcp_connections.clone(),
        metrics.tcp_closed.clone(),
    )
}

pub(super) async fn send(
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

pub(super) async fn receive_udp(
    udp: Arc<UdpSocket>,
    inputs: mpsc::Sender<Input>,
    stop: CancellationToken,
) {
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

pub(super) async fn accept_tcp(
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
