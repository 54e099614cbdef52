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

pub mod capture;
pub mod pcap;
pub mod wav;

use std::collections::{BTreeSet, HashMap};
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::thread;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc as tokio_mpsc, oneshot};

use self::capture::{Batch, CaptureSink, Captured, QUEUE_BATCHES};
use self::pcap::PcapWriter;
use self::wav::WavWriter;
use crate::audio::codec::{AudioCodec, Decoder, resolve, rtp_payload};
use crate::audio::resample::Resampler;
use crate::audio::timeline::{Placement, Timeline};
use crate::metrics::Metrics;
use crate::rtp::{Datagram, classify};
use crate::types::{CallId, Codec, Leg, WallClock};

/// How often the recorder takes audio out of the timelines.
pub const TICK: Duration = Duration::from_millis(20);
/// How long audio waits for late and reordered packets before it is written.
pub const JITTER_WINDOW: Duration = Duration::from_millis(120);
/// How often WAV headers are brought up to date (the most a crash can lose).
const SYNC_EVERY: Duration = Duration::from_secs(1);
/// Ticks between the periodic flushes of calls nobody taps (recording only).
const FILE_FLUSH_TICKS: u32 = 5;
/// Calls flushed between two looks at the hand-off queue.
const CATCH_UP_EVERY: usize = 32;
/// Tap frames per second (20 ms each).
const FRAMES_PER_SECOND: u32 = 50;
/// Frames a tap subscriber may have unread before new ones are dropped.
pub const TAP_QUEUE: usize = 100;

/// What the recorder needs to know of the proxy.
#[derive(Debug, Clone)]
pub struct RecorderSettings {
    /// Where recordings go (`--recordings`).
    pub directory: PathBuf,
    /// The relay's address, the destination of packets in pcap files.
    pub media_ip: IpAddr,
    pub clock: WallClock,
    /// Nice value added to the recorder thread, so relay workers sharing its core win it.
    pub nice: u8,
}

/// Where a call's recording is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordingStatus {
    Off,
    Recording,
    Paused,
    Finished,
}

/// A recording's state, as StartRecording, QueryStats and Release report it.
#[derive(Debug, Clone, PartialEq)]
pub struct RecordingInfo {
    pub status: RecordingStatus,
    /// The stereo WAV file.
    pub path: Option<PathBuf>,
    /// Every file of the recording (WAVs, sidecar, pcap).
    pub files: Vec<PathBuf>,
    /// RTP packets whose audio was written.
    pub packets: u64,
    /// Packets written per leg (caller, callee).
    pub leg_packets: [u64; 2],
    pub duration_ms: u64,
    /// Sample rate of the WAV files; 0 before the first audio packet.
    pub sample_rate: u32,
    /// What went wrong, if anything (the recording is then partial or absent).
    pub error: Option<String>,
}

impl RecordingInfo {
    pub fn off() -> Self {
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
pub struct TapFrame {
    pub call_id: CallId,
    pub leg: Leg,
    pub media: u8,
    /// Wall-clock time of the frame's first sample.
    pub unix_ms: u64,
    /// Frames of this leg sent to this subscriber before this one.
    pub sequence: u32,
    /// Samples of this leg at `sample_rate` before this frame (a timestamp that stays aligned
    /// between the legs).
    pub position: u64,
    /// The codec the leg's audio was last decoded from ("" before any).
    pub encoding: &'static str,
    pub sample_rate: u32,
    pub pcm: Vec<i16>,
    /// Frames of this subscriber dropped (it read too slowly) before this one.
    pub dropped_before: u64,
}

/// The audio lines of a call the recorder decodes, and their codecs.
#[derive(Debug, Clone)]
pub struct CallAudioLines {
    pub call_id: CallId,
    /// Index of the first audio media line of each leg.
    pub audio: [Option<u8>; 2],
    /// That line's codec map from each leg's SDP.
    pub codecs: [Vec<Codec>; 2],
}

/// Why the recorder could not do what was asked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecorderError {
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
pub struct Recorder {
    orders: Sender<Order>,
    thread: std::sync::Mutex<Option<thread::JoinHandle<()>>>,
}

impl Recorder {
    /// Starts the recorder thread and returns one capture sink per relay worker.
    pub fn start(
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
        };
        let thread = thread::Builder::new()
            .name("recorder".into())
            .spawn(move || {
                crate::relay::lower_control_thread(state.settings.nice);
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
    pub fn open(&self, capture: u64, lines: CallAudioLines) -> Result<(), RecorderError> {
        self.send(Order::Open { capture, lines })
    }

    /// A leg's audio line has a new codec map (a new SDP).
    pub fn codecs(&self, capture: u64, leg: Leg, codecs: Vec<Codec>) -> Result<(), RecorderError> {
        self.send(Order::Codecs {
            capture,
            leg,
            codecs,
        })
    }

    /// Starts (or resumes) recording a call.
    pub async fn start_recording(
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

    pub async fn pause(&self, capture: u64) -> Result<RecordingInfo, RecorderError> {
        self.ask(|reply| Order::Pause { capture, reply }).await
    }

    pub async fn stop(&self, capture: u64) -> Result<RecordingInfo, RecorderError> {
        self.ask(|reply| Order::Stop { capture, reply }).await
    }

    pub async fn query(&self, capture: u64) -> Result<RecordingInfo, RecorderError> {
        self.ask(|reply| Order::Query { capture, reply }).await
    }

    /// Ends a call's audio: closes its recording and its tap streams.
    pub async fn close(&self, capture: u64) -> Result<RecordingInfo, RecorderError> {
        self.ask(|reply| Order::Close { capture, reply }).await
    }

    /// Subscribes to a call's decoded audio (one leg, or both), at `rate` Hz (0: the codec's).
    pub fn subscribe(
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
    pub fn shutdown(&self) {
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
                let ids: Vec<u64> = self.calls.keys().copied().collect();
                for (n, id) in ids.iter().enumerate() {
                    // A flush of many calls takes a while: the workers' batches are taken in
                    // between, so the hand-off queue never fills behind it.
                    if n % CATCH_UP_EVERY == CATCH_UP_EVERY - 1 {
                        self.catch_up();
                    }
                    let Some(call) = self.calls.get_mut(id) else {
                        continue;
                    };
                    if !files_too && call.taps.is_empty() {
                        continue;
                    }
                    call.flush(caught_up, Flush::Waited, &self.settings, &self.metrics);
                    if sync {
                        call.sync(&self.metrics);
                    }
                }
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

/// One leg's decoding state.
#[derive(Debug)]
struct LegAudio {
    decoder: Option<(AudioCodec, Decoder, Option<Resampler>)>,
    timeline: Option<Timeline>,
    decoded: Vec<i16>,
    resampled: Vec<i16>,
    /// Codecs seen on this leg, for the sidecar.
    codecs_seen: BTreeSet<&'static str>,
}

impl LegAudio {
    fn new() -> Self {
        Self {
            decoder: None,
            timeline: None,
            decoded: Vec::new(),
            resampled: Vec::new(),
            codecs_seen: BTreeSet::new(),
        }
    }

    fn encoding(&self) -> &'static str {
        self.decoder
            .as_ref()
            .map_or("", |(codec, _, _)| codec.name())
    }
}

/// A call whose audio is being decoded.
struct CallAudio {
    call_id: CallId,
    audio: [Option<u8>; 2],
    codecs: [Vec<Codec>; 2],
    legs: [LegAudio; 2],
    /// The file rate and the arrival of the first audio packet (position 0).
    clock: Option<(u32, Instant)>,
    recording: Option<Recording>,
    /// The last recording that ended, reported until a new one starts.
    finished: Option<RecordingInfo>,
    taps: Vec<Tap>,
    unknown_payload: u64,
    undecodable: u64,
    not_audio: u64,
    left: Vec<i16>,
    right: Vec<i16>,
}

/// A recording being written.
struct Recording {
    stem: PathBuf,
    stereo_path: PathBuf,
    mixed_path: PathBuf,
    sidecar_path: PathBuf,
    pcap_path: Option<PathBuf>,
    stereo: Option<WavWriter>,
    mixed: Option<WavWriter>,
    pcap: Option<PcapWriter>,
    paused_since: Option<u64>,
    /// (from, to) in milliseconds of the file.
    pauses: Vec<(u64, u64)>,
    started_unix_ms: u64,
    /// Where on the call's time line (samples since its first audio packet) the files begin:
    /// audio of a call recorded again after a stop that waited in the jitter window from
    /// before this start is not written.
    begins_at: u64,
    packets: u64,
    leg_packets: [u64; 2],
    /// Samples per channel written.
    samples: u64,
    rate: u32,
    error: Option<String>,
    bytes_counted: u64,
    /// Scratch of the interleaved and the mixed samples of a flush, kept between flushes.
    stereo_samples: Vec<i16>,
    mixed_samples: Vec<i16>,
}

impl Recording {
    fn millis(&self) -> u64 {
        if self.rate == 0 {
            0
        } else {
            self.samples * 1000 / u64::from(self.rate)
        }
    }

    fn bytes(&self) -> u64 {
        self.stereo.as_ref().map_or(0, WavWriter::data_bytes)
            + self.mixed.as_ref().map_or(0, WavWriter::data_bytes)
            + self.pcap.as_ref().map_or(0, PcapWriter::bytes)
    }

    fn fail(&mut self, what: &str, error: &io::Error, metrics: &Metrics) {
        if self.error.is_none() {
            tracing::warn!(file = %self.stem.display(), %error, "recording failed: {what}");
            self.error = Some(format!("{what}: {error}"));
        }
        self.count_bytes(metrics);
        // Keep what was written: make the headers cover what reached the disk.
        for wav in [self.stereo.take(), self.mixed.take()]
            .into_iter()
            .flatten()
        {
            if let Err(error) = wav.salvage() {
                tracing::warn!(file = %self.stem.display(), %error, "cannot repair a WAV header");
            }
        }
        if let Some(pcap) = self.pcap.take() {
            let _ = pcap.finish();
        }
    }

    fn count_bytes(&mut self, metrics: &Metrics) {
        let bytes = self.bytes().max(self.bytes_counted);
        metrics.recording_bytes.inc_by(bytes - self.bytes_counted);
        self.bytes_counted = bytes;
    }

    fn files(&self) -> Vec<PathBuf> {
        let mut files = vec![
            self.stereo_path.clone(),
            self.mixed_path.clone(),
            self.sidecar_path.clone(),
        ];
        files.extend(self.pcap_path.clone());
        files
    }
}

fn decode_error(metrics: &Metrics, reason: &str) {
    metrics.decode_errors.with_label_values(&[reason]).inc();
}

/// How far [`CallAudio::flush`] takes audio out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flush {
    /// What has waited the jitter window (a packet placed later still finds its place).
    Waited,
    /// Everything placed, at least what has waited (pause and resume: the recording goes
    /// on, and packets still on their way within the window must not fall behind it).
    Placed,
    /// Everything placed and the time up to now, silent where nothing arrived (stop: a
    /// recording that ends after a silent stretch keeps it).
    Ended,
}

/// Samples at `rate` between `origin` and `at`.
fn position(origin: Instant, at: Instant, rate: u32) -> i64 {
    let elapsed = at.saturating_duration_since(origin);
    (elapsed.as_secs_f64() * f64::from(rate)) as i64
}

impl CallAudio {
    fn new(lines: CallAudioLines) -> Self {
        Self {
            call_id: lines.call_id,
            audio: lines.audio,
            codecs: lines.codecs,
            legs: [LegAudio::new(), LegAudio::new()],
            clock: None,
            recording: None,
            finished: None,
            taps: Vec::new(),
            unknown_payload: 0,
            undecodable: 0,
            not_audio: 0,
            left: Vec::new(),
            right: Vec::new(),
        }
    }

    fn writing(&self) -> bool {
        self.recording
            .as_ref()
            .is_some_and(|r| r.paused_since.is_none() && r.error.is_none())
    }

    fn ingest(
        &mut self,
        packet: &Captured,
        data: &[u8],
        settings: &RecorderSettings,
        metrics: &Metrics,
    ) {
        if self.writing()
            && let Some(recording) = self.recording.as_mut()
            && let Some(pcap) = recording.pcap.as_mut()
        {
            let destination = SocketAddr::new(settings.media_ip, packet.local_port);
            let unix_us = settings.clock.unix_us(packet.at);
            if let Err(error) = pcap.write(unix_us, packet.source, destination, data) {
                recording.fail("pcap write failed", &error, metrics);
            }
        }
        let leg = packet.leg.index();
        if packet.rtcp || self.audio[leg] != Some(packet.media) {
            return;
        }
        // The relay's own reading of the header; RTCP multiplexed on the RTP port is skipped.
        let Ok(Datagram::Rtp(header)) = classify(data, false) else {
            return;
        };
        let Some(payload) = rtp_payload(data) else {
            self.undecodable += 1;
            decode_error(metrics, "undecodable");
            return;
        };
        let other = packet.leg.other().index();
        let Some(codec) = resolve(header.payload_type, &self.codecs[leg], &self.codecs[other])
        else {
            self.unknown_payload += 1;
            decode_error(metrics, "unknown_payload_type");
            return;
        };
        let Some(codec_rate) = codec.sample_rate() else {
            // Telephone events and comfort noise: their time stays silent.
            self.not_audio += 1;
            return;
        };
        let (rate, origin) = *self.clock.get_or_insert((codec_rate, packet.at));
        let state = &mut self.legs[leg];
        if state.decoder.as_ref().map(|(c, _, _)| *c) != Some(codec) {
            let Some(decoder) = Decoder::new(codec) else {
                return;
            };
            let resampler = (codec_rate != rate).then(|| Resampler::new(codec_rate, rate));
            state.decoder = Some((codec, decoder, resampler));
            state.codecs_seen.insert(codec.name());
        }
        let Some((_, decoder, resampler)) = state.decoder.as_mut() else {
            return;
        };
        state.decoded.clear();
        if decoder.decode(payload, &mut state.decoded).is_err() {
            self.undecodable += 1;
            decode_error(metrics, "undecodable");
            return;
        }
        let samples = match resampler {
            Some(resampler) => {
                state.resampled.clear();
                resampler.process(&state.decoded, &mut state.resampled);
                &state.resampled
            }
            None => &state.decoded,
        };
        let timeline = state.timeline.get_or_insert_with(|| Timeline::new(rate));
        let arrival = position(origin, packet.at, rate);
        let placed = timeline.place(
            arrival,
            header.ssrc,
            header.timestamp,
            codec.clock_rate(),
            samples,
        );
        let writing = self.writing();
        if let Some(recording) = self.recording.as_mut()
            && writing
            && placed != Placement::Late
        {
            recording.packets += 1;
            recording.leg_packets[leg] += 1;
        }
    }

    /// Takes out audio up to what `how` says, into the recording and the taps.
    fn flush(&mut self, now: Instant, how: Flush, settings: &RecorderSettings, metrics: &Metrics) {
        let Some((rate, origin)) = self.clock else {
            return;
        };
        for leg in &mut self.legs {
            leg.timeline.get_or_insert_with(|| Timeline::new(rate));
        }
        let taken = self.legs[0].timeline.as_ref().map_or(0, Timeline::taken);
        let window = position(origin, origin + JITTER_WINDOW, rate);
        let waited = (position(origin, now, rate) - window).max(0) as u64;
        let placed = || {
            self.legs
                .iter()
                .filter_map(|l| l.timeline.as_ref().map(Timeline::end))
                .max()
                .unwrap_or(taken)
        };
        let upto = match how {
            Flush::Waited => waited,
            Flush::Placed => placed().max(waited),
            Flush::Ended => placed().max(position(origin, now, rate).max(0) as u64),
        };
        if upto <= taken {
            return;
        }
        self.left.clear();
        self.right.clear();
        if let Some(t) = self.legs[0].timeline.as_mut() {
            t.take(upto, &mut self.left);
        }
        if let Some(t) = self.legs[1].timeline.as_mut() {
            t.take(upto, &mut self.right);
        }
        if let Some(recording) = self.recording.as_mut() {
            let skip = |samples: &[i16]| {
                (recording.begins_at.saturating_sub(taken) as usize).min(samples.len())
            };
            let (left, right) = (skip(&self.left), skip(&self.right));
            write_recording(
                recording,
                rate,
                &self.left[left..],
                &self.right[right..],
                metrics,
            );
        }
        let origin_unix_ms = settings.clock.unix_ms(origin);
        let encodings = [self.legs[0].encoding(), self.legs[1].encoding()];
        let media = [self.audio[0].unwrap_or(0), self.audio[1].unwrap_or(0)];
        self.taps.retain_mut(|tap| {
            let open = tap.feed(
                &self.call_id,
                rate,
                taken,
                origin_unix_ms,
                [&self.left, &self.right],
                encodings,
                media,
                metrics,
            );
            if !open {
                metrics.tap_subscribers.dec();
            }
            open
        });
    }

    fn sync(&mut self, metrics: &Metrics) {
        let Some(recording) = self.recording.as_mut() else {
            return;
        };
        let mut failure = None;
        if let Some(writer) = recording.stereo.as_mut()
            && let Err(error) = writer.sync()
        {
            failure = Some(("stereo WAV write failed", error));
        } else if let Some(writer) = recording.mixed.as_mut()
            && let Err(error) = writer.sync()
        {
            failure = Some(("mixed WAV write failed", error));
        } else if let Some(pcap) = recording.pcap.as_mut()
            && let Err(error) = pcap.flush()
        {
            failure = Some(("pcap write failed", error));
        }
        match failure {
            Some((what, error)) => recording.fail(what, &error, metrics),
            None => recording.count_bytes(metrics),
        }
    }

    fn start(
        &mut self,
        stem: Option<String>,
        pcap: bool,
        settings: &RecorderSettings,
        metrics: &Metrics,
    ) -> Result<RecordingInfo, RecorderError> {
        if self.recording.is_some() {
            // Resume a paused recording; a running one is left as it is. What arrived during
            // the pause is written (as silence) before the pause ends.
            if self
                .recording
                .as_ref()
                .is_some_and(|r| r.paused_since.is_some())
            {
                self.flush(Instant::now(), Flush::Placed, settings, metrics);
            }
            if let Some(recording) = self.recording.as_mut()
                && let Some(since) = recording.paused_since.take()
            {
                let now_ms = recording.millis();
                recording.pauses.push((since, now_ms));
            }
            return Ok(self.info());
        }
        let now = Instant::now();
        let unix_ms = settings.clock.unix_ms(now);
        let (year, month, day) = civil_date(unix_ms / 86_400_000);
        let directory = settings
            .directory
            .join(format!("{year:04}"))
            .join(format!("{month:02}"))
            .join(format!("{day:02}"));
        std::fs::create_dir_all(&directory).map_err(|error| {
            RecorderError::Failed(format!(
                "cannot create the recordings directory {}: {error}",
                directory.display()
            ))
        })?;
        let base = sanitise(stem.as_deref().unwrap_or(self.call_id.as_str()));
        let stem = unique_stem(&directory, &base);
        let mut recording = Recording {
            stereo_path: append(&stem, ".wav"),
            mixed_path: append(&stem, "-mixed.wav"),
            sidecar_path: append(&stem, ".json"),
            pcap_path: pcap.then(|| append(&stem, ".pcap")),
            stem,
            stereo: None,
            mixed: None,
            pcap: None,
            paused_since: None,
            pauses: Vec::new(),
            started_unix_ms: unix_ms,
            begins_at: self.clock.map_or(0, |(rate, origin)| {
                position(origin, now, rate).max(0) as u64
            }),
            packets: 0,
            leg_packets: [0; 2],
            samples: 0,
            rate: 0,
            error: None,
            bytes_counted: 0,
            stereo_samples: Vec::new(),
            mixed_samples: Vec::new(),
        };
        if let Some(path) = recording.pcap_path.clone() {
            recording.pcap = Some(PcapWriter::create(&path).map_err(|error| {
                RecorderError::Failed(format!("cannot create {}: {error}", path.display()))
            })?);
        }
        // The sidecar first: a recording that cannot even write it does not start.
        if let Err(error) = self.write_sidecar(&recording, None) {
            let _ = std::fs::remove_file(&recording.sidecar_path);
            return Err(RecorderError::Failed(format!(
                "cannot write the recording's sidecar {}: {error}",
                recording.sidecar_path.display()
            )));
        }
        metrics.recordings.inc();
        tracing::info!(call_id = %self.call_id, file = %recording.stereo_path.display(), "recording started");
        self.finished = None;
        self.recording = Some(recording);
        Ok(self.info())
    }

    fn pause(
        &mut self,
        now: Instant,
        settings: &RecorderSettings,
        metrics: &Metrics,
    ) -> RecordingInfo {
        // What arrived before the pause is written before it.
        self.flush(now, Flush::Placed, settings, metrics);
        if let Some(recording) = self.recording.as_mut()
            && recording.paused_since.is_none()
        {
            recording.paused_since = Some(recording.millis());
        }
        self.info()
    }

    fn stop(&mut self, settings: &RecorderSettings, metrics: &Metrics) -> RecordingInfo {
        self.flush(Instant::now(), Flush::Ended, settings, metrics);
        let Some(mut recording) = self.recording.take() else {
            return self.info();
        };
        if let Some(since) = recording.paused_since.take() {
            recording.pauses.push((since, recording.millis()));
        }
        for (name, wav) in [
            ("stereo", recording.stereo.take()),
            ("mixed", recording.mixed.take()),
        ] {
            if let Some(writer) = wav
                && let Err(error) = writer.finish()
            {
                recording.fail(&format!("{name} WAV write failed"), &error, metrics);
            }
        }
        if let Some(pcap) = recording.pcap.take()
            && let Err(error) = pcap.finish()
        {
            recording.fail("pcap write failed", &error, metrics);
        }
        let outcome = if recording.error.is_some() {
            "failed"
        } else if recording.samples == 0 {
            "no_audio"
        } else {
            "complete"
        };
        metrics.recordings.dec();
        metrics
            .recordings_finished
            .with_label_values(&[outcome])
            .inc();
        let info = self.describe(&recording, RecordingStatus::Finished);
        if let Err(error) = self.write_sidecar(&recording, Some(outcome)) {
            tracing::warn!(call_id = %self.call_id, %error, "cannot write the recording's sidecar");
        }
        recording.count_bytes(metrics);
        tracing::info!(call_id = %self.call_id, outcome, packets = info.packets, duration_ms = info.duration_ms, "recording finished");
        self.finished = Some(info.clone());
        info
    }

    fn describe(&self, recording: &Recording, status: RecordingStatus) -> RecordingInfo {
        let written = recording.samples > 0;
        RecordingInfo {
            status,
            path: written.then(|| recording.stereo_path.clone()),
            files: recording
                .files()
                .into_iter()
                .filter(|f| f.exists())
                .collect(),
            packets: recording.packets,
            leg_packets: recording.leg_packets,
            duration_ms: recording.millis(),
            sample_rate: recording.rate,
            error: recording.error.clone(),
        }
    }

    fn info(&self) -> RecordingInfo {
        match &self.recording {
            Some(recording) => {
                let status = if recording.paused_since.is_some() {
                    RecordingStatus::Paused
                } else {
                    RecordingStatus::Recording
                };
                self.describe(recording, status)
            }
            None => self.finished.clone().unwrap_or_else(RecordingInfo::off),
        }
    }

    /// Writes a recording's sidecar JSON (`outcome` None while it runs).
    fn write_sidecar(&self, recording: &Recording, outcome: Option<&str>) -> io::Result<()> {
        let leg = |index: usize| {
            serde_json::json!({
                "channel": if index == 0 { "left" } else { "right" },
                "media_index": self.audio[index],
                "codecs": self.legs[index].codecs_seen.iter().collect::<Vec<_>>(),
                "packets": recording.leg_packets[index],
                "late_samples": self.legs[index].timeline.as_ref().map_or(0, |t| t.late_samples),
            })
        };
        let sidecar = serde_json::json!({
            "call_id": self.call_id.as_str(),
            "state": outcome.unwrap_or("recording"),
            "started_unix_ms": recording.started_unix_ms,
            "sample_rate": recording.rate,
            "duration_ms": recording.millis(),
            "packets": recording.packets,
            "legs": { "caller": leg(0), "callee": leg(1) },
            "files": {
                "stereo": recording.stereo_path.file_name().map(|n| n.to_string_lossy()),
                "mixed": recording.mixed_path.file_name().map(|n| n.to_string_lossy()),
                "pcap": recording.pcap_path.as_ref().and_then(|p| p.file_name()).map(|n| n.to_string_lossy()),
            },
            "pauses_ms": recording.pauses,
            "skipped_packets": {
                "unknown_payload_type": self.unknown_payload,
                "undecodable": self.undecodable,
                "not_audio": self.not_audio,
            },
            "error": recording.error,
        });
        let text = serde_json::to_vec_pretty(&sidecar).map_err(io::Error::other)?;
        let temporary = append(&recording.stem, ".json.tmp");
        std::fs::write(&temporary, text)?;
        std::fs::rename(&temporary, &recording.sidecar_path)
    }
}

/// Writes one flush's audio of both legs into a recording's files.
fn write_recording(
    recording: &mut Recording,
    rate: u32,
    left: &[i16],
    right: &[i16],
    metrics: &Metrics,
) {
    if recording.error.is_some() {
        return;
    }
    if recording.stereo.is_none() {
        let created = WavWriter::create(&recording.stereo_path, 2, rate).and_then(|stereo| {
            WavWriter::create(&recording.mixed_path, 1, rate).map(|mixed| (stereo, mixed))
        });
        match created {
            Ok((stereo, mixed)) => {
                recording.stereo = Some(stereo);
                recording.mixed = Some(mixed);
                recording.rate = rate;
            }
            Err(error) => {
                recording.fail("cannot create the WAV files", &error, metrics);
                return;
            }
        }
    }
    let paused = recording.paused_since.is_some();
    let (stereo, mixed) = (&mut recording.stereo_samples, &mut recording.mixed_samples);
    stereo.clear();
    mixed.clear();
    stereo.resize(left.len() * 2, 0);
    mixed.resize(left.len(), 0);
    if !paused {
        for (((pair, mix), &l), &r) in stereo
            .chunks_exact_mut(2)
            .zip(mixed.iter_mut())
            .zip(left)
            .zip(right)
        {
            pair[0] = l;
            pair[1] = r;
            *mix = l.saturating_add(r);
        }
    }
    let result = recording
        .stereo
        .as_mut()
        .map_or(Ok(()), |w| w.write(stereo))
        .map_err(|e| ("stereo WAV write failed", e))
        .and_then(|()| {
            recording
                .mixed
                .as_mut()
                .map_or(Ok(()), |w| w.write(mixed))
                .map_err(|e| ("mixed WAV write failed", e))
        });
    match result {
        Ok(()) => recording.samples += left.len() as u64,
        Err((what, error)) => recording.fail(what, &error, metrics),
    }
}

/// One tap subscriber.
struct Tap {
    leg: Option<Leg>,
    /// Requested rate; 0 until the call's rate is known, if it asked for the codec's.
    rate: u32,
    frames: tokio_mpsc::Sender<TapFrame>,
    legs: [TapLeg; 2],
    dropped: u64,
}

#[derive(Default)]
struct TapLeg {
    resampler: Option<Resampler>,
    pending: Vec<i16>,
    converted: Vec<i16>,
    sequence: u32,
    /// Samples at the tap's rate sent so far, and the timeline position they started at.
    sent: u64,
    start: Option<u64>,
}

impl Tap {
    fn new(leg: Option<Leg>, rate: u32, frames: tokio_mpsc::Sender<TapFrame>) -> Self {
        Self {
            leg,
            rate,
            frames,
            legs: [TapLeg::default(), TapLeg::default()],
            dropped: 0,
        }
    }

    /// Feeds one flush of both legs; false when the subscriber has gone.
    #[allow(clippy::too_many_arguments)]
    fn feed(
        &mut self,
        call_id: &CallId,
        rate: u32,
        taken: u64,
        origin_unix_ms: u64,
        audio: [&[i16]; 2],
        encodings: [&'static str; 2],
        media: [u8; 2],
        metrics: &Metrics,
    ) -> bool {
        if self.rate == 0 {
            self.rate = rate;
        }
        let frame_len = (self.rate / FRAMES_PER_SECOND) as usize;
        for leg in Leg::BOTH {
            if self.leg.is_some_and(|wanted| wanted != leg) {
                continue;
            }
            let state = &mut self.legs[leg.index()];
            state.start.get_or_insert(taken);
            if rate == self.rate {
                state.pending.extend_from_slice(audio[leg.index()]);
            } else {
                let resampler = state
                    .resampler
                    .get_or_insert_with(|| Resampler::new(rate, self.rate));
                state.converted.clear();
                resampler.process(audio[leg.index()], &mut state.converted);
                state.pending.extend_from_slice(&state.converted);
            }
            let mut offset = 0;
            while state.pending.len() - offset >= frame_len {
                let pcm = state.pending[offset..offset + frame_len].to_vec();
                offset += frame_len;
                let start_ms = state.start.unwrap_or(0) * 1000 / u64::from(rate.max(1));
                let frame = TapFrame {
                    call_id: call_id.clone(),
                    leg,
                    media: media[leg.index()],
                    unix_ms: origin_unix_ms + start_ms + state.sent * 1000 / u64::from(self.rate),
                    sequence: state.sequence,
                    position: state.sent,
                    encoding: encodings[leg.index()],
                    sample_rate: self.rate,
                    pcm,
                    dropped_before: self.dropped,
                };
                state.sequence = state.sequence.wrapping_add(1);
                state.sent += frame_len as u64;
                match self.frames.try_send(frame) {
                    Ok(()) => {}
                    Err(tokio_mpsc::error::TrySendError::Full(_)) => {
                        self.dropped += 1;
                        metrics.tap_frames_dropped.inc();
                    }
                    Err(tokio_mpsc::error::TrySendError::Closed(_)) => return false,
                }
            }
            state.pending.drain(..offset);
        }
        !self.frames.is_closed()
    }
}

/// `path` with `suffix` appended to its file name.
fn append(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

/// A file name stem from a call id: characters outside `[A-Za-z0-9._-]` become `_`, and a
/// leading dot is not kept (no hidden files, no `..`).
fn sanitise(text: &str) -> String {
    let mut stem: String = text
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect();
    while stem.starts_with('.') {
        stem.replace_range(..1, "_");
    }
    stem.truncate(200);
    if stem.is_empty() {
        stem.push_str("recording");
    }
    stem
}

/// `directory/base`, or `directory/base-N` with the first N whose files do not exist.
fn unique_stem(directory: &Path, base: &str) -> PathBuf {
    let taken = |stem: &Path| append(stem, ".json").exists() || append(stem, ".wav").exists();
    let first = directory.join(base);
    if !taken(&first) {
        return first;
    }
    (2..)
        .map(|n| directory.join(format!("{base}-{n}")))
        .find(|stem| !taken(stem))
        .expect("an unused name")
}

/// Year, month and day of a count of days since 1970-01-01 (the proleptic Gregorian
/// calendar, after Howard Hinnant's `civil_from_days`).
fn civil_date(days: u64) -> (i64, u32, u32) {
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let shifted_month = (5 * day_of_year + 2) / 153;
    let day = (day_of_year - (153 * shifted_month + 2) / 5 + 1) as u32;
    let month = if shifted_month < 10 {
        shifted_month + 3
    } else {
        shifted_month - 9
    } as u32;
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_and_names_are_what_the_layout_promises() {
        assert_eq!(civil_date(0), (1970, 1, 1));
        // 2026-12-02 is day 20 789; 2024-02-29 is day 19 782.
        assert_eq!(civil_date(20_789), (2026, 12, 2));
        assert_eq!(civil_date(19_782), (2024, 2, 29));
        assert_eq!(
            sanitise("a84b4c76e66710@pc33.atlanta.com"),
            "a84b4c76e66710_pc33.atlanta.com"
        );
        assert_eq!(sanitise("../../etc/passwd"), "_._.._etc_passwd");
        assert_eq!(sanitise(""), "recording");
        let dir = std::env::temp_dir().join(format!("stem-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("call.example.com.wav"), b"").unwrap();
        std::fs::write(dir.join("call.example.com-2.json"), b"").unwrap();
        assert_eq!(
            unique_stem(&dir, "call.example.com"),
            dir.join("call.example.com-3")
        );
        assert_eq!(unique_stem(&dir, "other"), dir.join("other"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
