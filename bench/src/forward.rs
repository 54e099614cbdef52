//! The bare forwarders: the practical ceiling of a userspace relay on this machine. One
//! thread, two sockets per call and a fixed port map: a packet received on socket `i` goes out
//! of socket `i ^ 1` to destination `i`. No latching, no parsing, no counters. Two flavours:
//! [`run`] waits with one mio poll and uses `recvfrom`/`sendto` (two system calls per packet
//! plus the empty read), [`crate::forward_uring::run`] keeps one receive per socket queued in
//! io_uring and submits the sends in batches (system calls per wake-up, not per packet).
//!
//! Protocol with the benchmark (stdin/stdout): it binds `sockets` UDP sockets on the address
//! it is given, prints their ports on one line, reads one line with a destination address
//! (`IP:PORT`) per socket, prints `ready` and forwards until killed.

use std::io::{BufRead, Write};
use std::net::SocketAddr;

use anyhow::Context;
use mio::net::UdpSocket;
use mio::{Events, Interest, Poll, Token};

/// Binds the sockets, tells the benchmark their ports and reads back one destination per
/// socket.
pub(crate) fn handshake(
    sockets: usize,
    bind: std::net::Ipv4Addr,
) -> anyhow::Result<(Vec<std::net::UdpSocket>, Vec<SocketAddr>)> {
    let mut bound = Vec::with_capacity(sockets);
    for _ in 0..sockets {
        let socket = std::net::UdpSocket::bind((bind, 0))?;
        socket.set_nonblocking(true)?;
        bound.push(socket);
    }
    let ports: Vec<String> = bound
        .iter()
        .map(|s| s.local_addr().map(|a| a.port().to_string()))
        .collect::<Result<_, _>>()?;
    let stdout = std::io::stdout();
    writeln!(stdout.lock(), "{}", ports.join(" "))?;
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line)?;
    let destinations: Vec<SocketAddr> = line
        .split_whitespace()
        .map(str::parse::<SocketAddr>)
        .collect::<Result<_, _>>()
        .context("destination addresses")?;
    anyhow::ensure!(destinations.len() == sockets, "one destination per socket");
    writeln!(stdout.lock(), "ready")?;
    Ok((bound, destinations))
}

/// The epoll flavour.
pub(crate) fn run(sockets: usize, bind: std::net::Ipv4Addr) -> anyhow::Result<()> {
    let (bound, destinations) = handshake(sockets, bind)?;
    let mut poll = Poll::new()?;
    let mut bound: Vec<UdpSocket> = bound.into_iter().map(UdpSocket::from_std).collect();
    for (index, socket) in bound.iter_mut().enumerate() {
        poll.registry()
            .register(socket, Token(index), Interest::READABLE)?;
    }
    let mut events = Events::with_capacity(1024);
    let mut buffer = [0u8; 2048];
    loop {
        poll.poll(&mut events, None)?;
        for event in &events {
            let index = event.token().0;
            while let Ok((len, _)) = bound[index].recv_from(&mut buffer) {
                let _ = bound[index ^ 1].send_to(&buffer[..len], destinations[index]);
            }
        }
    }
}
