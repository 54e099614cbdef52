//! Recording and the live audio tap: a recorder thread fed by the relay workers.
//!
//! Workers copy the datagrams of recorded or tapped calls into batches and hand them over
//! without blocking ([`capture`]); a full queue drops and counts, so recording never slows
//! relaying. The recorder thread, at a lower priority than the workers, decodes each leg's
//! audio line ([`crate::audio::codec`]), lays it out on the recording's clock
//! ([`crate::audio::timeline`]) and, every [`TICK`], takes out everything older than the
//! jitter window: into the WAV files of a recording (stereo with the caller left and the
//! callee right, and a mixed mono file, at the codec's own rate), and to tap subscribers in
//! 20 ms frames at the rate each asked for. A pcap of the call's datagrams is optional.
//! The batches wait in the queue for the tick (they wake nobody); orders wake the thread,
//! and start, pause and stop are carried out at the tick, after the queue is taken.
//!
//! Here: the handle ([`Recorder`]) and the thread's loop. One call's audio and its files are
//! `call_audio`, the taps `tap`, file names and dates `layout`.
//!
//! A recording's files are written as it goes (headers made valid once a second, so a crash
//! loses at most a second) and closed on stop, on release of the call (BYE, media timeout,
//! lease expiry) and at shutdown. A write error (a full disk) ends the recording's writing,
//! not the call: the error is reported with the recording's state and in its sidecar.
//!
//! # Layout on disk
//!
//! `DIR/YYYY/MM/DD/STEM.wav` (stereo), `STEM-mixed.wav`, `STEM.json` (the sidecar: call,
//! legs, codecs, times, packets, pauses, errors) and `STEM.pcap` when asked for. STEM is the
//! call id (or the stem given to StartRecording) with every character outside
//! `[A-Za-z0-9._-]` replaced by `_`, and `-2`, `-3`, ... added when the name is taken. The
//! date is the recording's start, in UTC.

mod call_audio;
pub(crate) mod capture;
mod layout;
pub(crate) mod pcap;
mod tap;
pub mod wav;

use std::collections::HashMap;
use std::io;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::thread;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc as tokio_mpsc, oneshot};

use self::call_audio::{CallAudio, Flush};
use self::capture::{Batch, CaptureSink, QUEUE_BATCHES};
use self::tap::Tap;
use crate::metrics::Metrics;
use crate::types::{CallId, Codec, Leg, WallClock};

/// How often the recorder takes audio out of the timelines.
pub(crate) const TICK: Duration = Duration::from_millis(20);
/// How long audio waits for late and reordered packets before it is written.
pub(crate) const JITTER_WINDOW: Duration = Duration::from_millis(120);
/// How often WAV headers are brought up to date (the most a crash can lose).
const SYNC_EVERY: Duration = Duration::from_secs(1);
/// Ticks between the periodic flushes of calls nobody taps (recording only).
const FILE_FLUSH_TICKS: u32 = 5;
/// Calls flushed between two looks at the hand-off queue.
const CATCH_UP_EVERY: usize = 32;
/// Tap frames per second (20 ms each).
const FRAMES_PER_SECOND: u32 = 50;
/// Frames a tap subscriber may have unread before new ones are dropped.
pub(crate) const TAP_QUEUE: usize = 100;

/// What the recorder needs to know of the proxy.
#[derive(Debug, Clone)]
pub(crate) struct RecorderSettings {
    /// Where recordings go (`--recordings`).
    pub(crate) directory: PathBuf,
    /// The relay's address, the destination of packets in pcap files.
    pub(crate) media_ip: IpAddr,
    pub(crate) clock: WallClock,
    /// Nice value added to the recorder thread, so relay workers sharing its core win it.
    pub(crate) nice: u8,
}

/// Where a call's recording is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RecordingStatus {
    Off,
    Recording,
    Paused,
    Finished,
}

/// A recording's state, as StartRecording, QueryStats and Release report it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct RecordingInfo {
    pub(crate) status: RecordingStatus,
    /// The stereo WAV file.
    pub(crate) path: Option<PathBuf>,
    /// Every file of the recording (WAVs, sidecar, pcap).
    pub(crate) files: Vec<PathBuf>,
    /// RTP packets whose audio was written.
    pub(crate) packets: u64,
    /// Packets written per leg (caller, callee).
    pub(crate) leg_packets: [u64; 2],
    pub(crate) duration_ms: u64,
    /// Sample rate of the WAV files; 0 before the first audio packet.
    pub(crate) sample_rate: u32,
    /// What went wrong, if anything (the recording is then partial or absent).
    pub(crate) error: Option<String>,
}

impl RecordingInfo {
    pub(crate) fn off() -> Self {
        Self {
            status: RecordingStatus::Off,
            path: None,
            files: Vec::new(),
            packets: 0,
            leg_packets: [0; 2],
            duration_ms: 0,
            sample_rate: 0,
            error: None,
        }
    }
}

/// 20 ms of one leg's decoded audio, for a tap subscriber.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct TapFrame {
    pub(crate) call_id: CallId,
    pub(crate) leg: Leg,
    pub(crate) media: u8,
    /// Wall-clock time of the frame's first sample.
    pub(crate) unix_ms: u64,
    /// Frames of this leg sent to this subscriber before this one.
    pub(crate) sequence: u32,
    /// Samples of this leg at `sample_rate` before this frame (a timestamp that stays aligned
    /// between the legs).
    pub(crate) position: u64,
    /// The codec the leg's audio was last decoded from ("" before any).
    pub(crate) encoding: &'static str,
    pub(crate) sample_rate: u32,
    pub(crate) pcm: Vec<i16>,
    /// Frames of this subscriber dropped (it read too slowly) before this one.
    pub(crate) dropped_before: u64,
}

/// The audio lines of a call the recorder decodes, and their codecs.
#[derive(Debug, Clone)]
pub(crate) struct CallAudioLines {
    pub(crate) call_id: CallId,
    /// Index of the first audio media line of each leg.
    pub(crate) audio: [Option<u8>; 2],
    /// That line's codec map from each leg's SDP.
    pub(crate) codecs: [Vec<Codec>; 2],
}

/// Why the recorder could not do what was asked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum RecorderError {
    #[error("the recorder is not running")]
    Gone,
    #[error("{0}")]
    Failed(String),
}

enum Order {
    Open {
        capture: u64,
        lines: CallAudioLines,
    },
    Codecs {
        capture: u64,
        leg: Leg,
        codecs: Vec<Codec>,
    },
    Start {
        capture: u64,
        stem: Option<String>,
        pcap: bool,
        reply: oneshot::Sender<Result<RecordingInfo, RecorderError>>,
    },
    Pause {
        capture: u64,
        reply: oneshot::Sender<RecordingInfo>,
    },
    Stop {
        capture: u64,
        reply: oneshot::Sender<RecordingInfo>,
    },
    Query {
        capture: u64,
        reply: oneshot::Sender<RecordingInfo>,
    },
    Subscribe {
        capture: u64,
        leg: Option<Leg>,
        rate: u32,
        frames: tokio_mpsc::Sender<TapFrame>,
    },
    Close {
        capture: u64,
        reply: oneshot::Sender<RecordingInfo>,
    },
    Shutdown,
}

/// The control plane's handle on the recorder thread.
pub(crate) struct Recorder {
    orders: Sender<Order>,
    thread: std::sync::Mutex<Option<thread::JoinHandle<()>>>,
}

impl Recorder {
    /// Starts the recorder thread and returns one capture sink per relay worker.
    pub(crate) fn start(
        workers: usize,
        settings: RecorderSettings,
        metrics: Arc<Metrics>,
    ) -> io::Result<(Self, Vec<CaptureSink>)> {
        let (queue, batches) = mpsc::sync_channel(QUEUE_BATCHES);
        let (orders, order_receiver) = mpsc::channel();
        let mut sinks = Vec::new();
        let mut recycle = Vec::new();
        for worker in 0..workers.max(1) {
            let (back, recycled) = mpsc::channel();
            recycle.push(back);
            sinks.push(CaptureSink::new(worker, queue.clone(), recycled));
        }
        let state = Thread {
            settings,
            metrics,
            calls: HashMap::new(),
            recycle,
            batches,
            orders: order_receiver,
            last_sync: Instant::now(),
            due: Vec::new(),
        };
        let thread = thread::Builder::new()
            .name("recorder".into())
            .spawn(move || {
                service_kit::thread::lower_control_thread(state.settings.nice);
                state.run()
            })?;
        Ok((
            Self {
                orders,
                thread: std::sync::Mutex::new(Some(thread)),
            },
            sinks,
        ))
    }

    fn send(&self, order: Order) -> Result<(), RecorderError> {
        self.orders.send(order).map_err(|_| RecorderError::Gone)
    }

    /// Starts decoding a call's audio (for a recording or a tap).
    pub(crate) fn open(&self, capture: u64, lines: CallAudioLines) -> Result<(), RecorderError> {
        self.send(Order::Open { capture, lines })
    }

    /// A leg's audio line has a new codec map (a new SDP).
    pub(crate) fn codecs(
        &self,
        capture: u64,
        leg: Leg,
        codecs: Vec<Codec>,
    ) -> Result<(), RecorderError> {
        self.send(Order::Codecs {
            capture,
            leg,
            codecs,
        })
    }

    /// Starts (or resumes) recording a call.
    pub(crate) async fn start_recording(
        &self,
        capture: u64,
        stem: Option<String>,
        pcap: bool,
    ) -> Result<RecordingInfo, RecorderError> {
        let (reply, answer) = oneshot::channel();
        self.send(Order::Start {
            capture,
            stem,
            pcap,
            reply,
        })?;
        answer.await.map_err(|_| RecorderError::Gone)?
    }

    async fn ask(
        &self,
        order: impl FnOnce(oneshot::Sender<RecordingInfo>) -> Order,
    ) -> Result<RecordingInfo, RecorderError> {
        let (reply, answer) = oneshot::channel();
        self.send(order(reply))?;
        answer.await.map_err(|_| RecorderError::Gone)
    }

    pub(crate) async fn pause(&self, capture: u64) -> Result<RecordingInfo, RecorderError> {
        self.ask(|reply| Order::Pause { capture, reply }).await
    }

    pub(crate) async fn stop(&self, capture: u64) -> Result<RecordingInfo, RecorderError> {
        self.ask(|reply| Order::Stop { capture, reply }).await
    }

    pub(crate) async fn query(&self, capture: u64) -> Result<RecordingInfo, RecorderError> {
        self.ask(|reply| Order::Query { capture, reply }).await
    }

    /// Ends a call's audio: closes its recording and its tap streams.
    pub(crate) async fn close(&self, capture: u64) -> Result<RecordingInfo, RecorderError> {
        self.ask(|reply| Order::Close { capture, reply }).await
    }

    /// Subscribes to a call's decoded audio (one leg, or both), at `rate` Hz (0: the codec's).
    pub(crate) fn subscribe(
        &self,
        capture: u64,
        leg: Option<Leg>,
        rate: u32,
    ) -> Result<tokio_mpsc::Receiver<TapFrame>, RecorderError> {
        let (frames, receiver) = tokio_mpsc::channel(TAP_QUEUE);
        self.send(Order::Subscribe {
            capture,
            leg,
            rate,
            frames,
        })?;
        Ok(receiver)
    }

    /// Closes every recording and stops the thread.
    pub(crate) fn shutdown(&self) {
        let _ = self.orders.send(Order::Shutdown);
        let thread = self.thread.lock().map(|mut t| t.take()).unwrap_or(None);
        if let Some(thread) = thread {
            let _ = thread.join();
        }
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.shutdown();
    }
}

struct Thread {
    settings: RecorderSettings,
    metrics: Arc<Metrics>,
    calls: HashMap<u64, CallAudio>,
    recycle: Vec<Sender<Batch>>,
    batches: Receiver<Batch>,
    orders: Receiver<Order>,
    last_sync: Instant,
    /// Scratch: the calls a tick flushes.
    due: Vec<u64>,
}

impl Thread {
    fn run(mut self) {
        let mut next_tick = Instant::now() + TICK;
        // Every packet that arrived before this instant has been ingested: audio is taken out
        // up to here (less the jitter window), never up to a wall clock the recorder has not
        // caught up with, so a recorder running behind delays its files and loses nothing.
        let mut caught_up = Instant::now();
        let mut ticks: u32 = 0;
        let mut deferred = Vec::new();
        loop {
            // Orders wake the recorder at once; batches do not: they wait in the queue for
            // the next tick, so the relay's hand-offs cost no wake-up (a context switch per
            // relay wake-up cost more than the recording itself).
            let wait = next_tick.saturating_duration_since(Instant::now());
            match self.orders.recv_timeout(wait) {
                // A start, pause or stop waits for the tick: what the phones sent just before
                // it is then on its side of it (the relay's hand-off is immediate, but the
                // datagrams may still have been on their way to the relay).
                Ok(order @ (Order::Start { .. } | Order::Pause { .. } | Order::Stop { .. })) => {
                    deferred.push(order);
                    continue;
                }
                Ok(order) => {
                    if !self.handle(order) {
                        self.close_all();
                        return;
                    }
                    continue;
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => {
                    self.close_all();
                    return;
                }
            }
            let before = Instant::now();
            self.catch_up();
            caught_up = caught_up.max(before);
            for order in deferred.drain(..) {
                self.handle(order);
            }
            let now = Instant::now();
            if now >= next_tick {
                next_tick = now + TICK;
                ticks = ticks.wrapping_add(1);
                let sync = now.duration_since(self.last_sync) >= SYNC_EVERY;
                if sync {
                    self.last_sync = now;
                }
                // Taps get their 20 ms frames every tick; files take audio in larger steps,
                // which costs less per sample.
                let files_too = ticks.is_multiple_of(FILE_FLUSH_TICKS) || sync;
                // The calls due this tick, into a list kept between ticks.
                let mut due = std::mem::take(&mut self.due);
                due.clear();
                due.extend(
                    self.calls
                        .iter()
                        .filter(|(_, call)| files_too || !call.taps.is_empty())
                        .map(|(id, _)| *id),
                );
                for (n, id) in due.iter().enumerate() {
                    // A flush of many calls takes a while: the workers' batches are taken in
                    // between, so the hand-off queue never fills behind it.
                    if n % CATCH_UP_EVERY == CATCH_UP_EVERY - 1 {
                        self.catch_up();
                    }
                    let Some(call) = self.calls.get_mut(id) else {
                        continue;
                    };
                    call.flush(caught_up, Flush::Waited, &self.settings, &self.metrics);
                    if sync {
                        call.sync(&self.metrics);
                    }
                }
                self.due = due;
            }
        }
    }

    /// Takes every batch already handed over, so an order about a call sees all its packets.
    fn catch_up(&mut self) {
        while let Ok(batch) = self.batches.try_recv() {
            self.ingest(batch);
        }
    }

    fn ingest(&mut self, mut batch: Batch) {
        for packet in &batch.packets {
            if let Some(call) = self.calls.get_mut(&packet.capture) {
                call.ingest(packet, batch.data(packet), &self.settings, &self.metrics);
            }
        }
        batch.clear();
        if let Some(back) = self.recycle.get(batch.worker) {
            let _ = back.send(batch);
        }
    }

    /// Handles one order; false on shutdown.
    fn handle(&mut self, order: Order) -> bool {
        match order {
            Order::Open { capture, lines } => {
                self.calls
                    .entry(capture)
                    .or_insert_with(|| CallAudio::new(lines));
            }
            Order::Codecs {
                capture,
                leg,
                codecs,
            } => {
                if let Some(call) = self.calls.get_mut(&capture) {
                    call.codecs[leg.index()] = codecs;
                }
            }
            Order::Start {
                capture,
                stem,
                pcap,
                reply,
            } => {
                self.catch_up();
                let result = match self.calls.get_mut(&capture) {
                    Some(call) => call.start(stem, pcap, &self.settings, &self.metrics),
                    None => Err(RecorderError::Failed("no such call".into())),
                };
                let _ = reply.send(result);
            }
            Order::Pause { capture, reply } => {
                self.catch_up();
                let info = self.with_call(capture, |call, settings, metrics| {
                    call.pause(Instant::now(), settings, metrics)
                });
                let _ = reply.send(info);
            }
            Order::Stop { capture, reply } => {
                self.catch_up();
                let info = self.with_call(capture, |call, settings, metrics| {
                    call.stop(settings, metrics)
                });
                let _ = reply.send(info);
            }
            Order::Query { capture, reply } => {
                let info = self.with_call(capture, |call, _, _| call.info());
                let _ = reply.send(info);
            }
            Order::Subscribe {
                capture,
                leg,
                rate,
                frames,
            } => {
                if let Some(call) = self.calls.get_mut(&capture) {
                    self.metrics.tap_subscribers.inc();
                    call.taps.push(Tap::new(leg, rate, frames));
                }
                // Otherwise the sender is dropped here: the subscriber's stream ends at once.
            }
            Order::Close { capture, reply } => {
                self.catch_up();
                let info = match self.calls.remove(&capture) {
                    Some(mut call) => {
                        let info = call.stop(&self.settings, &self.metrics);
                        self.metrics.tap_subscribers.sub(call.taps.len() as i64);
                        info
                    }
                    None => RecordingInfo::off(),
                };
                let _ = reply.send(info);
            }
            Order::Shutdown => return false,
        }
        true
    }

    fn with_call(
        &mut self,
        capture: u64,
        f: impl FnOnce(&mut CallAudio, &RecorderSettings, &Metrics) -> RecordingInfo,
    ) -> RecordingInfo {
        match self.calls.get_mut(&capture) {
            Some(call) => f(call, &self.settings, &self.metrics),
            None => RecordingInfo::off(),
        }
    }

    fn close_all(&mut self) {
        self.catch_up();
        for (_, mut call) in self.calls.drain() {
            call.stop(&self.settings, &self.metrics);
            self.metrics.tap_subscribers.sub(call.taps.len() as i64);
        }
    }
}
