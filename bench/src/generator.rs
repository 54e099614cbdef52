//! The load generator: phones that send paced RTP to the relay under test and receive what
//! it relays, measuring loss, duplicates, one-way latency and the relay's CPU meanwhile.
//!
//! Two shapes ([`Shape`]): `shared`, every caller leg's phone one socket and every callee
//! leg's another (packets in `sendmmsg` / `recvmmsg` batches: the cheapest generator, the
//! relay's easiest case), and `phones`, a socket of its own per phone leg, as distinct
//! phones are (one send per packet, the packets of a tick leaving together, the relayed
//! ones found by epoll).

use std::io::{IoSlice, IoSliceMut};
use std::net::SocketAddrV4;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::socket::{
    ControlMessage, MsgFlags, MultiHeaders, SockaddrIn, recvmmsg, sendmmsg, setsockopt, sockopt,
};

use crate::{Args, PACKET_LEN, cpu_seconds, threads_cpu_seconds};

/// How the generator's phones are laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Shape {
    /// Two sockets in all: every caller leg shares one, every callee leg the other; packets
    /// leave in `sendmmsg` batches and arrive in `recvmmsg` batches.
    Shared,
    /// One socket (own port) per phone leg, as distinct phones are: one send per packet,
    /// the packets due in a tick leaving together, relayed packets found by epoll.
    Phones,
}

impl Shape {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::Shared => "shared",
            Self::Phones => "phones",
        }
    }

    /// The generator's tick when `--tick-us` is not given: 100 us for the shared sockets'
    /// even pacing, 200 us bursts for phones.
    pub(crate) fn default_tick_us(self) -> u64 {
        match self {
            Self::Shared => 100,
            Self::Phones => 200,
        }
    }
}

/// The sockets of `calls` calls' phones in `shape`, and per call the ports of its caller-side
/// and callee-side phone.
pub(crate) fn phones(
    shape: Shape,
    ip: std::net::Ipv4Addr,
    calls: usize,
) -> anyhow::Result<(Vec<std::net::UdpSocket>, Vec<[u16; 2]>)> {
    let sockets = match shape {
        Shape::Shared => vec![phone_socket(ip, calls)?, phone_socket(ip, calls)?],
        Shape::Phones => (0..calls * 2)
            .map(|_| {
                // A phone's socket: the kernel's default buffers.
                let socket = std::net::UdpSocket::bind((ip, 0))?;
                socket.set_nonblocking(true)?;
                Ok(socket)
            })
            .collect::<std::io::Result<_>>()?,
    };
    let ports: Vec<u16> = sockets
        .iter()
        .map(|s| s.local_addr().map(|a| a.port()))
        .collect::<std::io::Result<_>>()?;
    let per_call = (0..calls)
        .map(|call| [0, 1].map(|side| ports[socket_of(shape, call, side)]))
        .collect();
    Ok((sockets, per_call))
}

/// The socket index that sends side `side` (0 caller, 1 callee) of call `call`.
pub(crate) fn socket_of(shape: Shape, call: usize, side: usize) -> usize {
    match shape {
        Shape::Shared => side,
        Shape::Phones => 2 * call + side,
    }
}

pub(crate) struct Stream {
    /// Which of the generator's sockets sends this stream (and receives its peer's).
    pub(crate) socket: usize,
    pub(crate) to: SocketAddrV4,
    /// Send offset inside each interval; streams are staggered evenly and in index order.
    pub(crate) offset: Duration,
    pub(crate) due: Instant,
    pub(crate) sequence: u16,
    /// Bit per sequence number received from this stream (by its peer).
    pub(crate) received: Vec<u64>,
}

/// One phone socket of the generator: nonblocking, with buffers big enough for a burst of
/// every stream at once (forced past `rmem_max` when the process may, as root can).
fn phone_socket(ip: std::net::Ipv4Addr, streams: usize) -> anyhow::Result<std::net::UdpSocket> {
    let socket = std::net::UdpSocket::bind((ip, 0))?;
    socket.set_nonblocking(true)?;
    let bytes = (streams * 4096).clamp(1 << 20, 256 << 20);
    if setsockopt(&socket, sockopt::RcvBufForce, &bytes).is_err() {
        setsockopt(&socket, sockopt::RcvBuf, &bytes)?;
    }
    if setsockopt(&socket, sockopt::SndBufForce, &bytes).is_err() {
        setsockopt(&socket, sockopt::SndBuf, &bytes)?;
    }
    Ok(socket)
}

pub(crate) struct Traffic {
    pub(crate) sent_in_window: u64,
    pub(crate) received_in_window: u64,
    pub(crate) duplicates: u64,
    pub(crate) latencies_us: Vec<u32>,
    /// How late each in-window packet left against its schedule.
    pub(crate) lag_us: Vec<u32>,
    pub(crate) proxy_cpu: f64,
    /// Of that, the relay worker threads' and the recorder thread's (ours only).
    pub(crate) relay_threads_cpu: f64,
    pub(crate) recorder_cpu: f64,
    /// Wall seconds over which the CPU times were taken.
    pub(crate) cpu_span: f64,
}

/// Datagrams per `sendmmsg` / `recvmmsg` of the generator.
const GENERATOR_BATCH: usize = 64;
/// Receive buffer per datagram: more than a generated packet, so a longer one shows as such.
const RECEIVE_LEN: usize = 512;

/// Packets built for one phone socket, waiting for the next `sendmmsg`.
struct Outgoing {
    packets: Vec<[u8; PACKET_LEN]>,
    to: Vec<Option<SockaddrIn>>,
    in_window: Vec<bool>,
}

impl Outgoing {
    fn new(capacity: usize) -> Self {
        Self {
            packets: Vec::with_capacity(capacity),
            to: Vec::with_capacity(capacity),
            in_window: Vec::with_capacity(capacity),
        }
    }

    /// Sends what is queued; returns how many in-window packets left. A full send buffer
    /// drops the rest (counted as not sent, so not as loss).
    fn flush(
        &mut self,
        socket: &std::net::UdpSocket,
        headers: &mut MultiHeaders<SockaddrIn>,
    ) -> u64 {
        let mut sent = 0;
        while sent < self.packets.len() {
            let slices: Vec<[IoSlice<'_>; 1]> = self.packets[sent..]
                .iter()
                .map(|packet| [IoSlice::new(packet)])
                .collect();
            let no_control: [ControlMessage<'_>; 0] = [];
            match sendmmsg(
                socket.as_raw_fd(),
                headers,
                &slices,
                &self.to[sent..],
                no_control,
                MsgFlags::MSG_DONTWAIT,
            ) {
                Ok(results) => match results.count() {
                    0 => break,
                    count => sent += count,
                },
                Err(Errno::EINTR) => {}
                Err(_) => break,
            }
        }
        let in_window = self.in_window[..sent.min(self.packets.len())]
            .iter()
            .filter(|&&w| w)
            .count();
        self.packets.clear();
        self.to.clear();
        self.in_window.clear();
        in_window as u64
    }
}

/// Sends paced packets on every stream and receives the relayed ones: one second of
/// warm-up, then the measured window, then a short drain.
///
/// The generator busy-polls its sockets (all of them with two, the ready ones by a zero-timeout
/// epoll with many) instead of sleeping: a sleeping receiver would
/// make the relay pay a wake-up per relayed packet, which is the generator's cost, not the
/// relay's. Sends go out every `--tick-us` in `sendmmsg` batches; each packet carries the
/// time it was built, and the lateness of sends against their schedule is reported (`lag99`)
/// so a generator that cannot keep up is visible.
pub(crate) fn generate(
    args: &Args,
    phones: &[std::net::UdpSocket],
    streams: &mut [Stream],
    pid: &str,
    clock_ticks: f64,
) -> anyhow::Result<Traffic> {
    let epoch = Instant::now();
    let interval = Duration::from_secs(1) / args.pps;
    let tick = Duration::from_micros(args.tick_us());
    for stream in streams.iter_mut() {
        stream.due = epoch + stream.offset;
    }
    let window_start = epoch + Duration::from_secs(1);
    let window_end = window_start + Duration::from_secs(args.seconds);
    let stop_sending = window_end;
    let drain_until = window_end + Duration::from_millis(300);
    let mut template = [0u8; PACKET_LEN];
    template[0] = 0x80;
    // A queue per socket; the ones a tick filled are flushed at its end.
    let batch = if phones.len() > 2 { 2 } else { GENERATOR_BATCH };
    let mut outgoing: Vec<Outgoing> = phones.iter().map(|_| Outgoing::new(batch)).collect();
    let mut touched: Vec<usize> = Vec::with_capacity(phones.len());
    // Many sockets are not polled one by one: epoll says which have packets.
    let mut poll = (phones.len() > 2).then(mio::Poll::new).transpose()?;
    let mut events = mio::Events::with_capacity(1024);
    if let Some(poll) = &poll {
        for (index, phone) in phones.iter().enumerate() {
            poll.registry().register(
                &mut mio::unix::SourceFd(&phone.as_raw_fd()),
                mio::Token(index),
                mio::Interest::READABLE,
            )?;
        }
    }
    let mut send_headers = MultiHeaders::<SockaddrIn>::preallocate(GENERATOR_BATCH, None);
    let mut receive_headers = MultiHeaders::<SockaddrIn>::preallocate(GENERATOR_BATCH, None);
    let mut buffers = Box::new([[0u8; RECEIVE_LEN]; GENERATOR_BATCH]);
    let mut next = 0usize;
    let mut next_tick = epoch;
    let mut traffic = Traffic {
        sent_in_window: 0,
        received_in_window: 0,
        duplicates: 0,
        latencies_us: Vec::with_capacity(
            (args.seconds as usize) * streams.len() * args.pps as usize,
        ),
        lag_us: Vec::with_capacity((args.seconds as usize) * streams.len() * args.pps as usize),
        proxy_cpu: 0.0,
        relay_threads_cpu: 0.0,
        recorder_cpu: 0.0,
        cpu_span: args.seconds as f64,
    };
    let mut proxy_cpu_start = None;
    let mut measured_from = window_start;
    let mut threads_start = (0.0, 0.0);
    // Streams are due in a fixed rotation (offsets staggered over one interval, in index
    // order), so one cursor walks them in order.
    let count = streams.len();
    loop {
        let now = Instant::now();
        if proxy_cpu_start.is_none() && now >= window_start {
            measured_from = now;
            proxy_cpu_start = Some(cpu_seconds(pid, clock_ticks)?);
            threads_start = (
                threads_cpu_seconds(pid, "relay-", clock_ticks),
                threads_cpu_seconds(pid, "recorder", clock_ticks),
            );
        }
        if now >= window_end && traffic.proxy_cpu == 0.0 {
            traffic.relay_threads_cpu =
                threads_cpu_seconds(pid, "relay-", clock_ticks) - threads_start.0;
            traffic.recorder_cpu =
                threads_cpu_seconds(pid, "recorder", clock_ticks) - threads_start.1;
            traffic.proxy_cpu = cpu_seconds(pid, clock_ticks)? - proxy_cpu_start.unwrap_or(0.0);
            traffic.cpu_span = now.duration_since(measured_from).as_secs_f64();
        }
        if now >= drain_until {
            break;
        }
        if now < stop_sending && now >= next_tick {
            next_tick = now + tick;
            let nanos = now.duration_since(epoch).as_nanos() as u64;
            while streams[next].due <= now {
                let stream = &mut streams[next];
                let in_window = stream.due >= window_start && stream.due < window_end;
                if in_window {
                    let lag = now.duration_since(stream.due).as_micros();
                    traffic.lag_us.push(lag.min(u128::from(u32::MAX)) as u32);
                }
                let mut packet = template;
                packet[2..4].copy_from_slice(&stream.sequence.to_be_bytes());
                packet[4..8].copy_from_slice(&(u32::from(stream.sequence) * 160).to_be_bytes());
                packet[8..12].copy_from_slice(&(next as u32).to_be_bytes());
                packet[12..20].copy_from_slice(&nanos.to_be_bytes());
                packet[20] = u8::from(in_window);
                let socket = stream.socket;
                let queue = &mut outgoing[socket];
                if queue.packets.is_empty() {
                    touched.push(socket);
                }
                queue.packets.push(packet);
                queue.to.push(Some(SockaddrIn::from(stream.to)));
                queue.in_window.push(in_window);
                if queue.packets.len() == GENERATOR_BATCH {
                    traffic.sent_in_window += queue.flush(&phones[socket], &mut send_headers);
                }
                stream.sequence = stream.sequence.wrapping_add(1);
                stream.due += interval;
                next = (next + 1) % count;
            }
            for socket in touched.drain(..) {
                traffic.sent_in_window +=
                    outgoing[socket].flush(&phones[socket], &mut send_headers);
            }
        }
        match &mut poll {
            None => {
                for phone in phones {
                    receive(
                        phone,
                        &mut receive_headers,
                        &mut buffers,
                        epoch,
                        streams,
                        &mut traffic,
                    );
                }
            }
            Some(poll) => {
                // Edge-triggered: each ready socket is drained to empty.
                poll.poll(&mut events, Some(Duration::ZERO))?;
                for event in &events {
                    receive(
                        &phones[event.token().0],
                        &mut receive_headers,
                        &mut buffers,
                        epoch,
                        streams,
                        &mut traffic,
                    );
                }
            }
        }
    }
    Ok(traffic)
}

/// Drains one phone socket in `recvmmsg` batches, marking each in-window packet in its
/// stream's bitmap and recording its latency.
fn receive(
    phone: &std::net::UdpSocket,
    headers: &mut MultiHeaders<SockaddrIn>,
    buffers: &mut [[u8; RECEIVE_LEN]; GENERATOR_BATCH],
    epoch: Instant,
    streams: &mut [Stream],
    traffic: &mut Traffic,
) {
    loop {
        let mut lengths = [0usize; GENERATOR_BATCH];
        let count = {
            // Made per call on the stack: the busy loop polls continuously, so no allocation.
            let mut slices = buffers.each_mut().map(|buffer| [IoSliceMut::new(buffer)]);
            match recvmmsg(
                phone.as_raw_fd(),
                headers,
                slices.iter_mut(),
                MsgFlags::MSG_DONTWAIT,
                None,
            ) {
                Ok(results) => {
                    let mut count = 0;
                    for (length, message) in lengths.iter_mut().zip(results) {
                        *length = message.bytes;
                        count += 1;
                    }
                    count
                }
                Err(Errno::EINTR) => continue,
                Err(_) => return,
            }
        };
        let received_at = Instant::now().duration_since(epoch).as_nanos() as u64;
        for (buffer, &len) in buffers.iter().zip(&lengths[..count]) {
            if len != PACKET_LEN {
                continue;
            }
            let sender = u32::from_be_bytes(buffer[8..12].try_into().unwrap()) as usize;
            let sequence = usize::from(u16::from_be_bytes([buffer[2], buffer[3]]));
            let sent_nanos = u64::from_be_bytes(buffer[12..20].try_into().unwrap());
            if buffer[20] != 1 || sender >= streams.len() {
                continue;
            }
            let bitmap = &mut streams[sender].received;
            let (word, bit) = (sequence / 64, 1u64 << (sequence % 64));
            if word >= bitmap.len() {
                continue;
            }
            if bitmap[word] & bit != 0 {
                traffic.duplicates += 1;
            } else {
                bitmap[word] |= bit;
                traffic.received_in_window += 1;
                let latency = received_at.saturating_sub(sent_nanos) / 1000;
                traffic
                    .latencies_us
                    .push(latency.min(u64::from(u32::MAX)) as u32);
            }
        }
        if count < GENERATOR_BATCH {
            return;
        }
    }
}
