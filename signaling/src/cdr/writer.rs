//! The writer thread ([`CdrWriter`]): database latency never reaches SIP handling. Through an
//! outage CDRs wait in memory and are retried with backoff; past the queue limit, and at a
//! shutdown that cannot reach the database, they go to the spool file (`spool`), which the
//! next start replays first. It also keeps the durable records of calls that are up and the
//! instance's heartbeat.

mod spool;

use std::collections::{HashSet, VecDeque};
use std::path::PathBuf;
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use super::{Cdr, OpenCall, Store, StoreError, Target, unix_ms_now};

pub use spool::default_spool;

/// Figures the writer publishes (as Prometheus series, see docs/metrics.md).
#[derive(Debug, Clone)]
pub struct WriterMetrics {
    pub queued: prometheus::IntGauge,
    pub written: prometheus::IntCounter,
    pub errors: prometheus::IntCounter,
    pub spooled: prometheus::IntCounter,
}

/// Tuning of the writer.
#[derive(Debug, Clone)]
pub struct WriterOptions {
    /// CDRs kept in memory while the database is unreachable; more go to the spool file.
    pub queue_limit: usize,
    /// Where CDRs go that could not be written (replayed at the next start).
    pub spool: PathBuf,
    /// How long a graceful shutdown keeps trying to reach the database.
    pub close_grace: Duration,
    /// Who this process is among the signaling instances sharing the database (its host and
    /// SIP address): the owner of the open call records it keeps.
    pub instance: String,
}

/// How often the writer records that this instance is alive: a crashed instance's calls end
/// at most this long before it did.
pub const HEARTBEAT: Duration = Duration::from_secs(2);
/// Another instance's open calls whose heartbeat is older than this are taken as orphans.
pub const ORPHANED_AFTER: Duration = Duration::from_secs(60);

enum Message {
    Write(Box<Cdr>),
    /// Keep a durable record of a call that is up (best effort: none while the database is
    /// unreachable).
    Open(Box<OpenCall>),
    /// The open calls a stopped process left, as found when the writer started.
    Orphans(mpsc::Sender<Vec<(OpenCall, i64)>>),
    /// Reply when everything queued before this message is stored (tests, admin).
    Flush(mpsc::Sender<()>),
}

/// A handle to the writer thread. [`CdrWriter::close`] writes what is queued (for up to the
/// close grace) and spools the rest.
pub struct CdrWriter {
    sender: Option<mpsc::Sender<Message>>,
    thread: Option<thread::JoinHandle<()>>,
}

impl CdrWriter {
    /// Connects once now so a bad URL, path, password or schema stops the start with a clear
    /// error; an unreachable database only warns (CDRs wait for it). Then starts the writer.
    pub fn start(
        target: Target,
        options: WriterOptions,
        metrics: WriterMetrics,
    ) -> Result<Self, StoreError> {
        // The first connection is made on the writer thread (the PostgreSQL client runs its
        // own runtime, which cannot start inside the caller's), and its outcome reported back.
        let (sender, receiver) = mpsc::channel::<Message>();
        let (opened_tx, opened_rx) = mpsc::channel::<Result<(), StoreError>>();
        let thread = thread::Builder::new()
            .name("cdr-writer".into())
            .spawn(move || {
                let store = match Store::open(&target) {
                    Ok(store) => Some(store),
                    Err(error) if error.transient => {
                        tracing::warn!(
                            cdr = %target.display(),
                            %error,
                            "CDR database unreachable at start; CDRs will be queued until it answers"
                        );
                        None
                    }
                    Err(error) => {
                        let _ = opened_tx.send(Err(error));
                        return;
                    }
                };
                let _ = opened_tx.send(Ok(()));
                Worker {
                    target,
                    options,
                    metrics,
                    store,
                    pending: VecDeque::new(),
                    replaying: None,
                    retry_at: Instant::now(),
                    backoff: MIN_BACKOFF,
                    outage_logged: false,
                    orphans: Vec::new(),
                    unsaved: VecDeque::new(),
                    fresh: 0,
                    journaled: false,
                    open_in_file: HashSet::new(),
                    open_orphans_file: None,
                }
                .run(&receiver);
            })
            .map_err(|e| StoreError {
                message: format!("cannot start the CDR writer thread: {e}"),
                transient: false,
            })?;
        match opened_rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(error)) => {
                let _ = thread.join();
                return Err(error);
            }
            Err(_) => {
                let _ = thread.join();
                return Err(StoreError {
                    message: "the CDR writer thread stopped at start".into(),
                    transient: false,
                });
            }
        }
        Ok(Self {
            sender: Some(sender),
            thread: Some(thread),
        })
    }

    /// Queues a CDR; never blocks.
    pub fn write(&self, cdr: Cdr) {
        if let Some(sender) = &self.sender
            && sender.send(Message::Write(Box::new(cdr))).is_err()
        {
            tracing::error!("CDR writer is gone; CDR lost");
        }
    }

    /// Keeps a durable record of a call that is up, until its CDR is written; never blocks.
    pub fn open(&self, call: OpenCall) {
        if let Some(sender) = &self.sender {
            let _ = sender.send(Message::Open(Box::new(call)));
        }
    }

    /// The open calls a stopped process left behind (this instance's predecessor's, and
    /// other instances' whose heartbeat had stopped), as found when the writer started, each
    /// with its last sign of life; taken once (empty afterwards, and when the database could
    /// not be asked).
    pub fn orphans(&self, timeout: Duration) -> Vec<(OpenCall, i64)> {
        let (tx, rx) = mpsc::channel();
        let Some(sender) = &self.sender else {
            return Vec::new();
        };
        if sender.send(Message::Orphans(tx)).is_err() {
            return Vec::new();
        }
        rx.recv_timeout(timeout).unwrap_or_default()
    }

    /// Waits until everything queued so far is stored (or `timeout` passes); false on timeout.
    pub fn flush(&self, timeout: Duration) -> bool {
        let (tx, rx) = mpsc::channel();
        let Some(sender) = &self.sender else {
            return false;
        };
        if sender.send(Message::Flush(tx)).is_err() {
            return false;
        }
        rx.recv_timeout(timeout).is_ok()
    }

    /// Writes what is queued (spooling what the database does not take within the close
    /// grace) and stops.
    pub fn close(mut self) {
        self.sender.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// How long a starting writer watches the heartbeats of other instances whose calls look
/// orphaned: more than two heartbeats, so a live one is seen to move.
const LIVENESS_WATCH: Duration = Duration::from_secs(5);

/// The open calls stopped processes left: `instance`'s own predecessor's, and other
/// instances' whose heartbeat looks older than [`ORPHANED_AFTER`] and does not move while
/// watched for [`LIVENESS_WATCH`]. Judging another instance by its heartbeat's age alone would
/// compare two hosts' clocks: one running more than a minute behind would look dead, and its
/// live calls would be released.
fn find_orphans(store: &mut Store, instance: &str) -> Result<Vec<(OpenCall, i64)>, StoreError> {
    let stale_before = unix_ms_now() - ORPHANED_AFTER.as_millis() as i64;
    let mut found = store.orphans(instance, stale_before)?;
    if found.iter().any(|o| o.instance != instance) {
        let before = store.heartbeats()?;
        thread::sleep(LIVENESS_WATCH);
        let after = store.heartbeats()?;
        found.retain(|orphan| {
            let moved = orphan.instance != instance
                && before.get(&orphan.instance) != after.get(&orphan.instance);
            if moved {
                tracing::warn!(
                    other = %orphan.instance,
                    call_id = %orphan.call.call_id,
                    heartbeat_age_s = (unix_ms_now() - orphan.alive_at_ms) / 1000,
                    "another instance's heartbeat looks old by this host's clock but it is alive: \
                     the hosts' clocks differ (check NTP); its calls are left to it"
                );
            }
            !moved
        });
    }
    Ok(found
        .into_iter()
        .map(|orphan| (orphan.call, orphan.alive_at_ms))
        .collect())
}

const MIN_BACKOFF: Duration = Duration::from_millis(250);
const MAX_BACKOFF: Duration = Duration::from_secs(10);

struct Worker {
    target: Target,
    options: WriterOptions,
    metrics: WriterMetrics,
    store: Option<Store>,
    pending: VecDeque<Cdr>,
    /// The spool file being replayed and how many of its records are still pending.
    replaying: Option<(PathBuf, usize)>,
    retry_at: Instant,
    backoff: Duration,
    outage_logged: bool,
    /// Open calls a stopped process left, found at the start (taken by [`Message::Orphans`]).
    orphans: Vec<(OpenCall, i64)>,
    /// Records of calls that are up which the database has not taken yet (down at the
    /// answer): written once it is back, forgotten when the call's CDR comes first.
    unsaved: VecDeque<OpenCall>,
    /// CDRs added at the back of `pending` since the outage journal last took them (see
    /// [`Worker::journal`]); writes take from the front, so those still waiting are the last
    /// `min(fresh, pending.len())`.
    fresh: usize,
    /// Whether the outage journal file exists.
    journaled: bool,
    /// The records of calls that are up which the open-call journal holds (see
    /// [`Worker::open_journal`]).
    open_in_file: HashSet<(String, i64)>,
    /// Orphans read from the open-call journal a killed predecessor left: that file, removed
    /// once they are handed over.
    open_orphans_file: Option<PathBuf>,
}

impl Worker {
    fn run(mut self, receiver: &mpsc::Receiver<Message>) {
        // Before this instance's first heartbeat: its predecessor's last one is the end of
        // the calls it left.
        if let Some(store) = self.store.as_mut() {
            self.orphans = find_orphans(store, &self.options.instance).unwrap_or_else(|error| {
                tracing::warn!(%error, "cannot read the open call records");
                Vec::new()
            });
        }
        self.load_open_journal();
        self.load_spool();
        let mut flushes: Vec<mpsc::Sender<()>> = Vec::new();
        let mut heartbeat = Instant::now();
        loop {
            self.metrics.queued.set(self.pending.len() as i64);
            if Instant::now() >= heartbeat {
                heartbeat = Instant::now() + HEARTBEAT;
                if let Some(store) = self.store.as_mut()
                    && let Err(error) = store.alive(&self.options.instance, unix_ms_now())
                {
                    tracing::warn!(%error, "cannot mark the open calls alive");
                }
                self.touch_open_journal();
            }
            let wait = if self.pending.is_empty() && self.unsaved.is_empty() {
                HEARTBEAT
            } else {
                self.retry_at.saturating_duration_since(Instant::now())
            }
            .min(heartbeat.saturating_duration_since(Instant::now()));
            match receiver.recv_timeout(wait) {
                Ok(message) => self.accept(message, &mut flushes),
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            }
            // Take whatever else is already queued before touching the database.
            while let Ok(message) = receiver.try_recv() {
                self.accept(message, &mut flushes);
            }
            if Instant::now() >= self.retry_at {
                self.write_pending();
                self.save_open();
            }
            self.journal();
            self.open_journal();
            self.metrics.queued.set(self.pending.len() as i64);
            if self.pending.is_empty() {
                for flush in flushes.drain(..) {
                    let _ = flush.send(());
                }
            }
        }
        // Graceful close: keep trying for the grace period, then spool what is left.
        let deadline = Instant::now() + self.options.close_grace;
        while !self.pending.is_empty() && Instant::now() < deadline {
            if Instant::now() >= self.retry_at {
                self.write_pending();
            } else {
                thread::sleep(
                    self.retry_at
                        .min(deadline)
                        .saturating_duration_since(Instant::now()),
                );
            }
        }
        if !self.pending.is_empty() {
            let left: Vec<Cdr> = self.pending.drain(..).collect();
            self.spool(&left);
        }
        // Everything is stored or spooled: the journal holds nothing of its own.
        self.journal();
        self.open_journal();
        self.metrics.queued.set(0);
    }

    fn accept(&mut self, message: Message, flushes: &mut Vec<mpsc::Sender<()>>) {
        match message {
            Message::Write(cdr) => {
                // Its record is closed with the row; one never written need not be.
                self.unsaved.retain(|open| {
                    open.call_id != cdr.call_id || open.start_time_ms != cdr.start_time_ms
                });
                if self.pending.len() >= self.options.queue_limit {
                    self.spool(std::slice::from_ref(&cdr));
                } else {
                    self.pending.push_back(*cdr);
                    self.fresh += 1;
                }
            }
            Message::Flush(reply) => flushes.push(reply),
            Message::Open(call) => {
                if self.unsaved.len() >= self.options.queue_limit
                    && let Some(dropped) = self.unsaved.pop_front()
                {
                    tracing::warn!(call_id = %dropped.call_id, "too many calls wait for a durable record; the oldest has none");
                }
                self.unsaved.push_back(*call);
                // While the database is down the retry comes with the next attempt.
                if self.store.is_some() {
                    self.save_open();
                }
            }
            Message::Orphans(reply) => {
                let _ = reply.send(std::mem::take(&mut self.orphans));
                if let Some(path) = self.open_orphans_file.take() {
                    let _ = std::fs::remove_file(path);
                }
            }
        }
    }

    /// Opens the database when it is not open; false (a retry scheduled) when it cannot be.
    fn connect(&mut self) -> bool {
        if self.store.is_some() {
            return true;
        }
        match Store::open(&self.target) {
            Ok(store) => {
                if self.outage_logged {
                    tracing::info!(
                        cdr = %self.target.display(),
                        queued = self.pending.len(),
                        open_calls = self.unsaved.len(),
                        "CDR database reachable again; writing the queue"
                    );
                }
                self.store = Some(store);
                true
            }
            Err(error) => {
                self.failed(&error);
                false
            }
        }
    }

    /// Writes the records of calls that are up the database has not taken yet, in order,
    /// until none is left or the database fails.
    fn save_open(&mut self) {
        while !self.unsaved.is_empty() {
            if !self.connect() {
                return;
            }
            let (Some(store), Some(call)) = (self.store.as_mut(), self.unsaved.front()) else {
                return;
            };
            let call_id = call.call_id.clone();
            match store.keep_open(&self.options.instance, call, unix_ms_now()) {
                Ok(()) => {
                    self.unsaved.pop_front();
                    self.backoff = MIN_BACKOFF;
                    self.outage_logged = false;
                }
                Err(error) if !error.transient && self.store_is_alive() => {
                    tracing::warn!(%call_id, %error, "the database refused the durable record of the call");
                    self.unsaved.pop_front();
                }
                Err(error) => {
                    self.store = None;
                    self.failed(&error);
                    return;
                }
            }
        }
    }

    /// Writes pending CDRs in order until the queue is empty or the database fails.
    fn write_pending(&mut self) {
        while let Some(cdr) = self.pending.pop_front() {
            if !self.connect() {
                self.pending.push_front(cdr);
                return;
            }
            let Some(store) = self.store.as_mut() else {
                self.pending.push_front(cdr);
                return;
            };
            match store.insert(&cdr) {
                Ok(inserted) => {
                    if !inserted {
                        tracing::info!(call_id = %cdr.call_id, "CDR already stored; skipped");
                    }
                    self.metrics.written.inc();
                    self.backoff = MIN_BACKOFF;
                    self.outage_logged = false;
                    self.replayed_one();
                }
                Err(error) => {
                    if !error.transient && self.store_is_alive() {
                        // The database rejected this row itself (a constraint, a bad value):
                        // retrying would block every later CDR behind it.
                        tracing::error!(
                            call_id = %cdr.call_id,
                            %error,
                            "CDR rejected by the database; moved to the spool file"
                        );
                        self.metrics.errors.inc();
                        self.spool(&[cdr]);
                        self.replayed_one();
                        continue;
                    }
                    self.pending.push_front(cdr);
                    self.store = None;
                    self.failed(&error);
                    return;
                }
            }
        }
    }

    /// Whether the connection still answers (a failed insert on a dead connection is an
    /// outage, not a bad row).
    fn store_is_alive(&mut self) -> bool {
        match self.store.as_mut() {
            Some(Store::Sqlite(_)) => true,
            Some(Store::Postgres(c)) => c.is_valid(Duration::from_secs(2)).is_ok(),
            None => false,
        }
    }

    fn failed(&mut self, error: &StoreError) {
        self.metrics.errors.inc();
        if !self.outage_logged {
            tracing::error!(
                cdr = %self.target.display(),
                %error,
                queued = self.pending.len(),
                "CDR database unavailable; CDRs are queued and retried"
            );
            self.outage_logged = true;
        }
        self.retry_at = Instant::now() + self.backoff;
        self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
    }
}
