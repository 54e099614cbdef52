//! The data plane: worker threads that own relay sockets and sessions.
//!
//! Each worker is one OS thread running an epoll loop over the sockets of the sessions it
//! owns. A session lives on exactly one worker for its whole life, so the hot path touches
//! only that worker's memory: no lock, no allocation per packet, no await. The control plane
//! talks to a worker through a command channel plus an eventfd that wakes it; answers come
//! back on oneshot channels. Workers count relayed and dropped packets locally and add them to the
//! Prometheus counters once per tick.
//!
//! Datagrams are read with `recvfrom` until the socket is empty, up to a batch of eight, and a
//! batch's run out of one socket leaves in one `sendmmsg` (see
//! [`worker::Worker::drain_socket`]); the verdict per packet is computed by the pure
//! [`Session`](crate::session::Session) core. Sessions are spread over the workers by load.
//! The loop's own system calls (epoll, send, eventfd, timerfd) are rustix's raw calls, not
//! libc's wrappers: in a multi-threaded process glibc makes each of those a cancellation
//! point, two extra calls per system call, and at low load the worker makes three system
//! calls per packet (docs/decisions.md).
//!
//! This file is the control plane's side: the [`Relay`] handle, the commands it sends a
//! worker and what workers tell back ([`Notice`]). The worker thread itself (its loop, socket
//! reading and batching, `sendmmsg`) is `relay/worker.rs`.

use std::io;
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::thread;

use tokio::sync::{broadcast, oneshot};

use crate::metrics::Metrics;
use crate::recording::capture::CaptureSink;
use crate::session::{CallSnapshot, Event, Timing, UpdateError};
use crate::types::{CallId, Leg, MediaKind, Owner, RemoteMedia, WallClock};

mod worker;

use worker::{Worker, WorkerIo};

/// A newly bound media line handed to a worker.
#[derive(Debug)]
pub(crate) struct NewMedia {
    pub(crate) kind: MediaKind,
    pub(crate) rtp_port: u16,
    pub(crate) rtp: std::net::UdpSocket,
    pub(crate) rtcp: std::net::UdpSocket,
}

/// Something a worker tells the control plane.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Notice {
    /// The call had no media for its timeout; the control plane releases it.
    Expired { call_id: CallId },
}

enum Command {
    AddMedia {
        call_id: CallId,
        owner: Owner,
        leg: Leg,
        media: Vec<NewMedia>,
    },
    Update {
        call_id: CallId,
        leg: Leg,
        remotes: Vec<RemoteMedia>,
        reply: oneshot::Sender<Result<(), UpdateError>>,
    },
    Query {
        call_id: CallId,
        reply: oneshot::Sender<Option<CallSnapshot>>,
    },
    List {
        reply: oneshot::Sender<Vec<CallSnapshot>>,
    },
    Debug {
        call_id: CallId,
        enabled: bool,
        reply: oneshot::Sender<bool>,
    },
    Release {
        call_id: CallId,
        reply: oneshot::Sender<Option<CallSnapshot>>,
    },
    Capture {
        call_id: CallId,
        capture: Option<u64>,
        reply: oneshot::Sender<bool>,
    },
    Stop,
}

/// What workers share with the control plane (all thread-safe, none taken per packet).
#[derive(Clone)]
pub(crate) struct Shared {
    pub(crate) metrics: Arc<Metrics>,
    /// Media events; `None` marks the end of the stream (shutdown).
    pub(crate) events: broadcast::Sender<Option<Arc<Event>>>,
    pub(crate) notices: tokio::sync::mpsc::UnboundedSender<Notice>,
    pub(crate) clock: WallClock,
    pub(crate) timing: Timing,
}

struct WorkerHandle {
    commands: mpsc::Sender<Command>,
    /// The worker's eventfd: written after every command.
    waker: Arc<OwnedFd>,
    sessions: Arc<AtomicUsize>,
    thread: Option<thread::JoinHandle<()>>,
}

/// The set of relay workers.
pub(crate) struct Relay {
    workers: Vec<WorkerHandle>,
}

/// The worker thread is gone (it panicked or was stopped).
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("relay worker {0} is not running")]
pub(crate) struct WorkerGone(pub usize);

impl Relay {
    /// Starts one worker thread per capture sink (the recorder made one per worker).
    pub(crate) fn start(shared: &Shared, sinks: Vec<CaptureSink>) -> io::Result<Self> {
        let mut workers = Vec::with_capacity(sinks.len());
        for (index, sink) in sinks.into_iter().enumerate() {
            let io = WorkerIo::new()?;
            let waker = io.waker.clone();
            let (commands, receiver) = mpsc::channel();
            let sessions = Arc::new(AtomicUsize::new(0));
            let worker = Worker::new(index, io, receiver, shared.clone(), sessions.clone(), sink);
            let thread = thread::Builder::new()
                .name(format!("relay-{index}"))
                .spawn(move || worker.run())?;
            workers.push(WorkerHandle {
                commands,
                waker,
                sessions,
                thread: Some(thread),
            });
        }
        Ok(Self { workers })
    }

    /// The worker with the fewest sessions, for a new call.
    pub(crate) fn pick(&self) -> usize {
        self.workers
            .iter()
            .enumerate()
            .min_by_key(|(_, w)| w.sessions.load(Ordering::Relaxed))
            .map_or(0, |(index, _)| index)
    }

    fn send(&self, worker: usize, command: Command) -> Result<(), WorkerGone> {
        let handle = self.workers.get(worker).ok_or(WorkerGone(worker))?;
        handle
            .commands
            .send(command)
            .map_err(|_| WorkerGone(worker))?;
        // A full counter (EAGAIN) means the worker has a wake-up pending already.
        match rustix::io::write(&*handle.waker, &1u64.to_ne_bytes()) {
            Ok(_) | Err(rustix::io::Errno::AGAIN) => Ok(()),
            Err(_) => Err(WorkerGone(worker)),
        }
    }

    /// Hands bound sockets for new media lines of a leg to a worker.
    pub(crate) fn add_media(
        &self,
        worker: usize,
        call_id: CallId,
        owner: Owner,
        leg: Leg,
        media: Vec<NewMedia>,
    ) -> Result<(), WorkerGone> {
        self.send(
            worker,
            Command::AddMedia {
                call_id,
                owner,
                leg,
                media,
            },
        )
    }

    pub(crate) async fn update(
        &self,
        worker: usize,
        call_id: CallId,
        leg: Leg,
        remotes: Vec<RemoteMedia>,
    ) -> Result<Result<(), UpdateError>, WorkerGone> {
        let (reply, answer) = oneshot::channel();
        self.send(
            worker,
            Command::Update {
                call_id,
                leg,
                remotes,
                reply,
            },
        )?;
        answer.await.map_err(|_| WorkerGone(worker))
    }

    pub(crate) async fn query(
        &self,
        worker: usize,
        call_id: CallId,
    ) -> Result<Option<CallSnapshot>, WorkerGone> {
        let (reply, answer) = oneshot::channel();
        self.send(worker, Command::Query { call_id, reply })?;
        answer.await.map_err(|_| WorkerGone(worker))
    }

    /// Turns per-packet logging of one call on or off; false if the worker has no such call.
    pub(crate) async fn set_debug(
        &self,
        worker: usize,
        call_id: CallId,
        enabled: bool,
    ) -> Result<bool, WorkerGone> {
        let (reply, answer) = oneshot::channel();
        self.send(
            worker,
            Command::Debug {
                call_id,
                enabled,
                reply,
            },
        )?;
        answer.await.map_err(|_| WorkerGone(worker))
    }

    /// Snapshots of every session on every worker.
    pub(crate) async fn list(&self) -> Result<Vec<CallSnapshot>, WorkerGone> {
        let mut all = Vec::new();
        for worker in 0..self.workers.len() {
            let (reply, answer) = oneshot::channel();
            self.send(worker, Command::List { reply })?;
            all.extend(answer.await.map_err(|_| WorkerGone(worker))?);
        }
        Ok(all)
    }

    /// Removes a session, closing its sockets; returns its final statistics.
    pub(crate) async fn release(
        &self,
        worker: usize,
        call_id: CallId,
    ) -> Result<Option<CallSnapshot>, WorkerGone> {
        let (reply, answer) = oneshot::channel();
        self.send(worker, Command::Release { call_id, reply })?;
        answer.await.map_err(|_| WorkerGone(worker))
    }

    /// Starts (`Some`) or stops copying a call's accepted datagrams to the recorder under
    /// capture id `capture`; false if the worker has no such call.
    pub(crate) async fn set_capture(
        &self,
        worker: usize,
        call_id: CallId,
        capture: Option<u64>,
    ) -> Result<bool, WorkerGone> {
        let (reply, answer) = oneshot::channel();
        self.send(
            worker,
            Command::Capture {
                call_id,
                capture,
                reply,
            },
        )?;
        answer.await.map_err(|_| WorkerGone(worker))
    }

    /// Stops every worker and waits for the threads.
    pub(crate) fn stop(&mut self) {
        for index in 0..self.workers.len() {
            let _ = self.send(index, Command::Stop);
        }
        for worker in &mut self.workers {
            if let Some(thread) = worker.thread.take() {
                let _ = thread.join();
            }
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop();
    }
}
