//! A relay worker thread: its epoll loop, the commands it runs, reading a socket's datagrams
//! in batches, asking the [`Session`] core for each one's verdict, and sending the forwards
//! out (a run through one socket in one `sendmmsg`). The control plane's handle on the
//! workers is [`Relay`](super::Relay), in `relay/mod.rs`.

use std::collections::HashMap;
use std::io;
use std::io::IoSlice;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::socket::{ControlMessage, MsgFlags, MultiHeaders, SockaddrStorage, sendmmsg};
use rustix::buffer::spare_capacity;
use rustix::event::epoll;
use rustix::net::{RecvFlags, SendFlags};
use rustix::time::{Itimerspec, TimerfdClockId, TimerfdFlags, TimerfdTimerFlags, Timespec};

use super::{Command, NewMedia, Notice, Shared};
use crate::recording::capture::{CaptureSink, Origin};
use crate::session::{
    CallSnapshot, Component, Event, SOCKETS_PER_SESSION, Session, SocketRef, UpdateError, Verdict,
};
use crate::types::{CallId, DropReason, Leg, Owner};

/// Event data of the worker's eventfd (commands are waiting).
const WAKER: u64 = u64::MAX;
/// Event data of the worker's timerfd (time for [`Worker::tick`]).
const TICKER: u64 = u64::MAX - 1;
/// How often workers run session timers and publish their counters.
const TICK: Duration = Duration::from_millis(100);
/// Ready sockets taken per `epoll_wait`.
const EVENTS: usize = 1024;
/// Largest datagram a worker receives (the UDP maximum).
const BUFFER_LEN: usize = 65_536;
/// Datagrams read from one socket before they are relayed together (a run of them out of
/// one socket in one `sendmmsg`).
const BATCH: usize = 8;
/// Datagrams read from one socket before the worker serves the others: a flooded port
/// (a stranger, a looping peer) must not starve the rest of the worker's calls.
const READ_BUDGET: usize = 64;

/// Per-worker counters, published every tick.
#[derive(Default)]
struct LocalCounters {
    packets: [u64; 2],
    bytes: [u64; 2],
    dropped: [u64; DropReason::ALL.len()],
}

/// One call on a worker. A media line's four sockets are adjacent in `sockets` (see
/// [`SocketRef::index`]).
struct Slot {
    session: Session,
    sockets: [Option<UdpSocket>; SOCKETS_PER_SESSION],
    /// Log every packet of this call (operator debugging, `SetDebug`).
    debug: bool,
    /// Copy accepted datagrams to the recorder under this capture id.
    capture: Option<u64>,
    /// Captured datagrams the recorder's queue had no room for.
    capture_dropped: u64,
}

impl Slot {
    fn snapshot(&self) -> CallSnapshot {
        let mut snapshot = self.session.snapshot();
        snapshot.recorder_dropped = self.capture_dropped;
        snapshot
    }
}

/// A worker's kernel objects: the epoll set of its sockets, the eventfd the control plane
/// writes after every command, and the timerfd of its tick (a timer in the poll set rather
/// than a timeout on every wait, which would arm and cancel a kernel timer per packet).
pub(super) struct WorkerIo {
    epoll: OwnedFd,
    pub(super) waker: Arc<OwnedFd>,
    ticker: OwnedFd,
}

impl WorkerIo {
    pub(super) fn new() -> io::Result<Self> {
        use rustix::event::{EventfdFlags, eventfd};
        let epoll = epoll::create(epoll::CreateFlags::CLOEXEC)?;
        let waker = eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK)?;
        let ticker = rustix::time::timerfd_create(
            TimerfdClockId::Monotonic,
            TimerfdFlags::CLOEXEC | TimerfdFlags::NONBLOCK,
        )?;
        let period = Timespec {
            tv_sec: TICK.as_secs() as i64,
            tv_nsec: i64::from(TICK.subsec_nanos()),
        };
        rustix::time::timerfd_settime(
            &ticker,
            TimerfdTimerFlags::empty(),
            &Itimerspec {
                it_interval: period,
                it_value: period,
            },
        )?;
        let readable = epoll::EventFlags::IN | epoll::EventFlags::ET;
        epoll::add(&epoll, &waker, epoll::EventData::new_u64(WAKER), readable)?;
        epoll::add(&epoll, &ticker, epoll::EventData::new_u64(TICKER), readable)?;
        Ok(Self {
            epoll,
            waker: Arc::new(waker),
            ticker,
        })
    }

    /// Watches a relay socket; closing the socket takes it out of the set.
    fn watch(&self, socket: &UdpSocket, token: usize) -> io::Result<()> {
        epoll::add(
            &self.epoll,
            socket,
            epoll::EventData::new_u64(token as u64),
            epoll::EventFlags::IN | epoll::EventFlags::ET,
        )?;
        Ok(())
    }
}

/// Empties an eventfd or a timerfd (8 bytes: a counter), so the next write or expiry makes a
/// new edge.
fn clear(fd: &OwnedFd) {
    let mut counter = [0u8; 8];
    let _ = rustix::io::read(fd, &mut counter);
}

/// A datagram of a receive batch to be sent on: out of which socket, to where, and which
/// buffer of the batch holds it.
#[derive(Clone, Copy)]
struct Forward {
    via: SocketRef,
    to: SocketAddr,
    rtcp: bool,
    buffer: usize,
    len: usize,
}

impl Forward {
    const NONE: Self = Self {
        via: SocketRef {
            leg: Leg::Caller,
            media: 0,
            component: Component::Rtp,
        },
        to: SocketAddr::V4(std::net::SocketAddrV4::new(
            std::net::Ipv4Addr::UNSPECIFIED,
            0,
        )),
        rtcp: false,
        buffer: 0,
        len: 0,
    };
}

/// Sends a run of datagrams out of one socket; how many left (the first ones: a full send
/// buffer or an error stops the run, and the rest count as send errors, as a failed
/// `sendto` does).
fn send_run(
    out: &UdpSocket,
    headers: &mut MultiHeaders<SockaddrStorage>,
    buffers: &[[u8; BUFFER_LEN]],
    run: &[Forward],
) -> usize {
    if let [one] = run {
        let data = &buffers[one.buffer][..one.len];
        return usize::from(rustix::net::sendto(out, data, SendFlags::empty(), &one.to).is_ok());
    }
    let slices: [[IoSlice<'_>; 1]; BATCH] = std::array::from_fn(|n| {
        [IoSlice::new(
            run.get(n).map_or(&[][..], |f| &buffers[f.buffer][..f.len]),
        )]
    });
    let addresses: [Option<SockaddrStorage>; BATCH] =
        std::array::from_fn(|n| run.get(n).map(|f| SockaddrStorage::from(f.to)));
    let no_control: [ControlMessage<'_>; 0] = [];
    loop {
        match sendmmsg(
            out.as_raw_fd(),
            headers,
            &slices[..run.len()],
            &addresses[..run.len()],
            no_control,
            MsgFlags::MSG_DONTWAIT,
        ) {
            Ok(results) => return results.count(),
            Err(Errno::EINTR) => {}
            Err(_) => return 0,
        }
    }
}

pub(super) struct Worker {
    index: usize,
    io: WorkerIo,
    commands: mpsc::Receiver<Command>,
    shared: Shared,
    session_count: Arc<AtomicUsize>,
    slots: Vec<Option<Slot>>,
    free_slots: Vec<usize>,
    by_call: HashMap<CallId, usize>,
    counters: LocalCounters,
    /// One receive buffer per datagram of a batch.
    buffers: Box<[[u8; BUFFER_LEN]; BATCH]>,
    /// Sockets that still had datagrams when their read budget ran out (edge-triggered
    /// polling will not report them again), served on the next loop turn.
    unfinished: Vec<usize>,
    /// Datagrams of recorded and tapped calls, handed to the recorder once per wake-up.
    capture: CaptureSink,
}

impl Worker {
    pub(super) fn new(
        index: usize,
        io: WorkerIo,
        commands: mpsc::Receiver<Command>,
        shared: Shared,
        session_count: Arc<AtomicUsize>,
        capture: CaptureSink,
    ) -> Self {
        Self {
            capture,
            index,
            io,
            commands,
            shared,
            session_count,
            slots: Vec::new(),
            free_slots: Vec::new(),
            by_call: HashMap::new(),
            counters: LocalCounters::default(),
            buffers: vec![[0u8; BUFFER_LEN]; BATCH]
                .into_boxed_slice()
                .try_into()
                .expect("BATCH buffers"),
            unfinished: Vec::new(),
        }
    }

    pub(super) fn run(mut self) {
        let mut events: Vec<epoll::Event> = Vec::with_capacity(EVENTS);
        // sendmmsg message headers (raw pointers inside, so made on this thread).
        let mut send_headers = MultiHeaders::<SockaddrStorage>::preallocate(BATCH, None);
        let mut revisit = Vec::new();
        let no_wait = Timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        loop {
            // Sleep until a socket, a command or the tick; not at all while a socket's read
            // budget ran out before its queue did.
            let timeout = (!self.unfinished.is_empty()).then_some(&no_wait);
            std::mem::swap(&mut revisit, &mut self.unfinished);
            events.clear();
            match epoll::wait(&self.io.epoll, spare_capacity(&mut events), timeout) {
                Ok(_) | Err(rustix::io::Errno::INTR) => {}
                Err(error) => {
                    tracing::error!(worker = self.index, %error, "relay poll failed; worker stops");
                    return;
                }
            }
            // The one clock reading of this wake-up: every packet it brought is stamped with it.
            let now = Instant::now();
            for event in &events {
                let data = event.data;
                match data.u64() {
                    WAKER => {
                        clear(&self.io.waker);
                        if !self.handle_commands(now) {
                            self.publish_counters();
                            return;
                        }
                    }
                    TICKER => {
                        clear(&self.io.ticker);
                        self.tick(now);
                    }
                    token => {
                        self.drain_socket(&mut send_headers, token as usize, now);
                    }
                }
            }
            for token in revisit.drain(..) {
                self.drain_socket(&mut send_headers, token, now);
            }
            self.hand_off_capture();
        }
    }

    /// Hands this wake-up's captured datagrams to the recorder; counts what it had no room
    /// for.
    fn hand_off_capture(&mut self) {
        let Self {
            capture,
            slots,
            shared,
            ..
        } = self;
        let mut dropped = 0;
        capture.hand_off(|packet| {
            dropped += 1;
            if let Some(Some(slot)) = slots.get_mut(packet.slot as usize) {
                slot.capture_dropped += 1;
            }
        });
        if dropped > 0 {
            shared.metrics.recorder_dropped.inc_by(dropped);
        }
    }

    /// Receives the datagrams waiting on one socket (up to [`READ_BUDGET`]) and relays or
    /// drops each, in batches of up to [`BATCH`]: the socket is read until it is empty
    /// (edge-triggered polling reports it again only when a new datagram arrives), and each
    /// batch's forwards leave together.
    fn drain_socket(
        &mut self,
        send_headers: &mut MultiHeaders<SockaddrStorage>,
        token: usize,
        now: Instant,
    ) {
        let slot_index = token / SOCKETS_PER_SESSION;
        let socket_index = token % SOCKETS_PER_SESSION;
        let Some(at) = SocketRef::from_index(socket_index) else {
            return;
        };
        let Self {
            slots,
            buffers,
            counters,
            unfinished,
            capture,
            ..
        } = self;
        let Some(Some(slot)) = slots.get_mut(slot_index) else {
            return;
        };
        let direction = at.leg.index();
        let mut drained = false;
        let mut read = 0;
        while read < READ_BUDGET {
            let Some(socket) = slot.sockets[socket_index].as_ref() else {
                return;
            };
            // One recvfrom per datagram until the queue is empty: a relay socket usually holds
            // one datagram per wake-up (a phone sends every 20 ms), and then two recvfrom
            // cost less than one recvmmsg, which copies a message header per slot and makes
            // its own empty read (measured: docs/decisions.md, 2026-12-07).
            let mut received = [(0usize, None::<SocketAddr>); BATCH];
            let mut count = 0;
            while count < BATCH {
                match rustix::net::recvfrom(socket, &mut buffers[count][..], RecvFlags::DONTWAIT) {
                    Ok((_, len, source)) => {
                        received[count] = (
                            len.min(BUFFER_LEN),
                            source.and_then(|a| SocketAddr::try_from(a).ok()),
                        );
                        count += 1;
                    }
                    Err(rustix::io::Errno::AGAIN) => {
                        drained = true;
                        break;
                    }
                    Err(rustix::io::Errno::INTR) => {}
                    Err(error) => {
                        // ICMP errors queued on the socket surface here; the next read goes on.
                        tracing::debug!(%error, "relay receive error");
                        read += 1;
                        break;
                    }
                }
            }
            read += count;
            let mut forwards = [Forward::NONE; BATCH];
            let mut forwarding = 0;
            for (index, &(len, source)) in received[..count].iter().enumerate() {
                let Some(source) = source else { continue };
                let data = &buffers[index][..len];
                let verdict = slot.session.handle_packet(now, at, source, data);
                if slot.debug {
                    log_packet(slot.session.call_id(), at, source, data, &verdict);
                }
                if let Some(id) = slot.capture
                    && matches!(
                        verdict,
                        Verdict::Forward { .. } | Verdict::Drop(DropReason::NoDestination)
                    )
                {
                    let origin = Origin {
                        capture: id,
                        slot: slot_index as u32,
                        leg: at.leg,
                        media: at.media as u8,
                        rtcp: matches!(verdict, Verdict::Forward { rtcp: true, .. })
                            || at.component == Component::Rtcp,
                        source,
                        local_port: slot.session.local_port(at),
                    };
                    capture.push(origin, now, data);
                }
                match verdict {
                    Verdict::Forward { via, to, rtcp } => {
                        forwards[forwarding] = Forward {
                            via,
                            to,
                            rtcp,
                            buffer: index,
                            len,
                        };
                        forwarding += 1;
                    }
                    Verdict::Drop(reason) => counters.dropped[reason.index()] += 1,
                }
            }
            // The batch's forwards leave together: a run of them through one socket (a burst
            // from one phone, a video frame) in one sendmmsg, a lone one by sendto.
            let mut start = 0;
            while start < forwarding {
                let via = forwards[start].via;
                let end = forwards[start..forwarding]
                    .iter()
                    .position(|f| f.via != via)
                    .map_or(forwarding, |n| start + n);
                let run = &forwards[start..end];
                let sent = slot.sockets[via.index()]
                    .as_ref()
                    .map_or(0, |out| send_run(out, send_headers, &buffers[..], run));
                for (n, forward) in run.iter().enumerate() {
                    if n < sent {
                        slot.session
                            .record_sent(now, via, forward.rtcp, forward.len);
                        counters.packets[direction] += 1;
                        counters.bytes[direction] += forward.len as u64;
                    } else {
                        slot.session.record_send_error(at);
                        counters.dropped[DropReason::SendError.index()] += 1;
                    }
                }
                start = end;
            }
            if drained {
                break;
            }
        }
        if !drained {
            unfinished.push(token);
        }
        Self::publish_events(&self.shared, &mut slot.session);
    }

    fn publish_events(shared: &Shared, session: &mut Session) {
        while let Some(event) = session.poll_event() {
            shared
                .metrics
                .events
                .with_label_values(&[event_kind_label(&event)])
                .inc();
            // No subscriber is not an error: events are advisory.
            let _ = shared.events.send(Some(Arc::new(event)));
        }
    }

    fn tick(&mut self, now: Instant) {
        for slot in self.slots.iter_mut().flatten() {
            if slot.session.poll_timers(now).is_some() {
                let call_id = slot.session.call_id().clone();
                let _ = self.shared.notices.send(Notice::Expired { call_id });
            }
            Self::publish_events(&self.shared, &mut slot.session);
        }
        self.publish_counters();
    }

    fn publish_counters(&mut self) {
        let metrics = &self.shared.metrics;
        let counters = std::mem::take(&mut self.counters);
        for (direction, label) in crate::metrics::DIRECTIONS.iter().enumerate() {
            if counters.packets[direction] > 0 {
                metrics
                    .packets
                    .with_label_values(&[*label])
                    .inc_by(counters.packets[direction]);
                metrics
                    .bytes
                    .with_label_values(&[*label])
                    .inc_by(counters.bytes[direction]);
            }
        }
        for reason in DropReason::ALL {
            let count = counters.dropped[reason.index()];
            if count > 0 {
                metrics
                    .dropped
                    .with_label_values(&[reason.as_str()])
                    .inc_by(count);
            }
        }
    }

    /// Runs every queued command; false when told to stop.
    fn handle_commands(&mut self, now: Instant) -> bool {
        // Whatever a command does to a capture, the recorder has every packet before it.
        self.hand_off_capture();
        while let Ok(command) = self.commands.try_recv() {
            match command {
                Command::AddMedia {
                    call_id,
                    owner,
                    leg,
                    media,
                } => self.add_media(now, call_id, owner, leg, media),
                Command::Update {
                    call_id,
                    leg,
                    remotes,
                    reply,
                } => {
                    let result = match self.slot_mut(&call_id) {
                        Some(slot) => slot.session.update(now, leg, &remotes),
                        None => Err(UpdateError::LegNotAllocated(leg.as_str())),
                    };
                    let _ = reply.send(result);
                }
                Command::Debug {
                    call_id,
                    enabled,
                    reply,
                } => {
                    let found = match self.slot_mut(&call_id) {
                        Some(slot) => {
                            slot.debug = enabled;
                            true
                        }
                        None => false,
                    };
                    if found {
                        tracing::info!(call_id = %call_id.as_str(), enabled, "per-packet debug logging");
                    }
                    let _ = reply.send(found);
                }
                Command::Query { call_id, reply } => {
                    let snapshot = self.slot_mut(&call_id).map(|slot| slot.snapshot());
                    let _ = reply.send(snapshot);
                }
                Command::List { reply } => {
                    let all = self.slots.iter().flatten().map(Slot::snapshot).collect();
                    let _ = reply.send(all);
                }
                Command::Capture {
                    call_id,
                    capture,
                    reply,
                } => {
                    let found = match self.slot_mut(&call_id) {
                        Some(slot) => {
                            slot.capture = capture;
                            true
                        }
                        None => false,
                    };
                    let _ = reply.send(found);
                }
                Command::Release { call_id, reply } => {
                    let snapshot = self.remove(&call_id).map(|mut slot| {
                        Self::publish_events(&self.shared, &mut slot.session);
                        let mut snapshot = slot.snapshot();
                        snapshot.released_unix_ms = self.shared.clock.unix_ms(now);
                        snapshot
                        // Dropping the slot closes its sockets, which leaves the epoll set.
                    });
                    let _ = reply.send(snapshot);
                }
                Command::Stop => return false,
            }
        }
        true
    }

    fn slot_mut(&mut self, call_id: &CallId) -> Option<&mut Slot> {
        let index = *self.by_call.get(call_id)?;
        self.slots.get_mut(index)?.as_mut()
    }

    fn add_media(
        &mut self,
        now: Instant,
        call_id: CallId,
        owner: Owner,
        leg: Leg,
        media: Vec<NewMedia>,
    ) {
        let slot_index = match self.by_call.get(&call_id) {
            Some(&index) => index,
            None => {
                let session = Session::new(
                    call_id.clone(),
                    owner,
                    self.shared.clock.clone(),
                    self.shared.timing,
                    now,
                );
                let slot = Slot {
                    session,
                    sockets: std::array::from_fn(|_| None),
                    debug: false,
                    capture: None,
                    capture_dropped: 0,
                };
                let index = match self.free_slots.pop() {
                    Some(index) => {
                        self.slots[index] = Some(slot);
                        index
                    }
                    None => {
                        self.slots.push(Some(slot));
                        self.slots.len() - 1
                    }
                };
                self.by_call.insert(call_id.clone(), index);
                self.session_count.fetch_add(1, Ordering::Relaxed);
                index
            }
        };
        let Some(Some(slot)) = self.slots.get_mut(slot_index) else {
            return;
        };
        for new in media {
            let Some(media_index) = slot.session.add_media(leg, new.kind, new.rtp_port) else {
                tracing::warn!(%call_id, "media line beyond the per-leg limit ignored");
                continue;
            };
            for (component, socket) in [(Component::Rtp, new.rtp), (Component::Rtcp, new.rtcp)] {
                let at = SocketRef {
                    leg,
                    media: media_index,
                    component,
                };
                let token = slot_index * SOCKETS_PER_SESSION + at.index();
                if let Err(error) = self.io.watch(&socket, token) {
                    tracing::error!(%call_id, %error, "cannot watch a relay socket");
                    continue;
                }
                slot.sockets[at.index()] = Some(socket);
            }
        }
    }

    fn remove(&mut self, call_id: &CallId) -> Option<Slot> {
        let index = self.by_call.remove(call_id)?;
        let slot = self.slots.get_mut(index)?.take()?;
        self.free_slots.push(index);
        self.session_count.fetch_sub(1, Ordering::Relaxed);
        Some(slot)
    }
}

/// One line per packet of a call under debug: where it came from, what it looked like, what
/// the relay did with it.
fn log_packet(call_id: &CallId, at: SocketRef, source: SocketAddr, data: &[u8], verdict: &Verdict) {
    let (seq, pt) = if data.len() >= 12 && data[0] >> 6 == 2 {
        (
            Some(u16::from_be_bytes([data[2], data[3]])),
            Some(data[1] & 0x7f),
        )
    } else {
        (None, None)
    };
    let outcome = match verdict {
        Verdict::Forward { to, .. } => format!("relayed to {to}"),
        Verdict::Drop(reason) => format!("dropped ({})", reason.as_str()),
    };
    tracing::info!(
        call_id = %call_id.as_str(),
        leg = at.leg.as_str(),
        media = at.media,
        rtcp = matches!(at.component, crate::session::Component::Rtcp),
        from = %source,
        bytes = data.len(),
        seq = ?seq,
        pt = ?pt,
        outcome,
        "packet"
    );
}

fn event_kind_label(event: &Event) -> &'static str {
    use crate::session::EventKind;
    match event.kind {
        EventKind::FirstPacket { .. } => "first_packet",
        EventKind::SourceChanged { .. } => "source_changed",
        EventKind::MediaTimeout { .. } => "media_timeout",
        EventKind::OneWayMedia { .. } => "one_way_media",
        EventKind::RecordingFinished { .. } => "recording_finished",
        EventKind::SessionReleased { .. } => "session_released",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn forward(buffer: usize, len: usize, to: SocketAddr, media: usize) -> Forward {
        Forward {
            via: SocketRef {
                leg: Leg::Callee,
                media,
                component: Component::Rtp,
            },
            to,
            rtcp: false,
            buffer,
            len,
        }
    }

    #[test]
    fn a_run_leaves_in_order_in_one_send_and_a_lone_datagram_by_itself() {
        let out = UdpSocket::bind("127.0.0.1:0").unwrap();
        let (one, two) = (
            UdpSocket::bind("127.0.0.1:0").unwrap(),
            UdpSocket::bind("127.0.0.1:0").unwrap(),
        );
        for phone in [&one, &two] {
            phone
                .set_read_timeout(Some(Duration::from_secs(2)))
                .unwrap();
        }
        let mut buffers = vec![[0u8; BUFFER_LEN]; BATCH];
        for (n, buffer) in buffers.iter_mut().enumerate() {
            buffer[..4].copy_from_slice(&[n as u8; 4]);
        }
        let mut headers = MultiHeaders::<SockaddrStorage>::preallocate(BATCH, None);
        // A run of five, the fourth to another destination: each goes where it was told.
        let (to_one, to_two) = (one.local_addr().unwrap(), two.local_addr().unwrap());
        let run: Vec<Forward> = (0..5)
            .map(|n| forward(n, 4 + n, if n == 3 { to_two } else { to_one }, 0))
            .collect();
        assert_eq!(send_run(&out, &mut headers, &buffers, &run), 5);
        let mut received = [0u8; 64];
        for n in [0, 1, 2, 4] {
            let (len, from) = one.recv_from(&mut received).unwrap();
            assert_eq!((len, from), (4 + n, out.local_addr().unwrap()));
            assert_eq!(received[0], n as u8, "in order");
        }
        let (len, _) = two.recv_from(&mut received).unwrap();
        assert_eq!((len, received[0]), (7, 3));
        // A lone one.
        assert_eq!(
            send_run(&out, &mut headers, &buffers, &[forward(6, 4, to_one, 0)]),
            1
        );
        assert_eq!(one.recv_from(&mut received).unwrap().0, 4);
        assert_eq!(received[0], 6);
    }
}
