//! One call's audio in the recorder: each leg decoded and laid on its time line, taken out
//! into the recording's files (stereo and mixed WAV, sidecar, pcap) and to the taps.

use std::collections::BTreeSet;
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Instant;

use super::capture::Captured;
use super::layout::{append, civil_date, sanitise, unique_stem};
use super::pcap::PcapWriter;
use super::tap::{Chunk, Tap};
use super::wav::WavWriter;
use super::{
    CallAudioLines, JITTER_WINDOW, RecorderError, RecorderSettings, RecordingInfo, RecordingStatus,
};
use crate::audio::codec::{AudioCodec, Decoder, resolve, rtp_payload};
use crate::audio::resample::Resampler;
use crate::audio::timeline::{Placement, Timeline};
use crate::metrics::Metrics;
use crate::rtp::{Datagram, classify};
use crate::types::{CallId, Codec};

/// One leg's decoding state.
#[derive(Debug)]
pub(super) struct LegAudio {
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
pub(super) struct CallAudio {
    call_id: CallId,
    audio: [Option<u8>; 2],
    pub(super) codecs: [Vec<Codec>; 2],
    legs: [LegAudio; 2],
    /// The file rate and the arrival of the first audio packet (position 0).
    clock: Option<(u32, Instant)>,
    recording: Option<Recording>,
    /// The last recording that ended, reported until a new one starts.
    finished: Option<RecordingInfo>,
    pub(super) taps: Vec<Tap>,
    unknown_payload: u64,
    undecodable: u64,
    not_audio: u64,
    left: Vec<i16>,
    right: Vec<i16>,
}

/// A recording being written.
pub(super) struct Recording {
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
pub(super) enum Flush {
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
    pub(super) fn new(lines: CallAudioLines) -> Self {
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

    pub(super) fn ingest(
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
    pub(super) fn flush(
        &mut self,
        now: Instant,
        how: Flush,
        settings: &RecorderSettings,
        metrics: &Metrics,
    ) {
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
            let chunk = Chunk {
                call_id: &self.call_id,
                rate,
                taken,
                origin_unix_ms,
                audio: [&self.left, &self.right],
                encodings,
                media,
            };
            let open = tap.feed(&chunk, metrics);
            if !open {
                metrics.tap_subscribers.dec();
            }
            open
        });
    }

    pub(super) fn sync(&mut self, metrics: &Metrics) {
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

    pub(super) fn start(
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

    pub(super) fn pause(
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

    pub(super) fn stop(&mut self, settings: &RecorderSettings, metrics: &Metrics) -> RecordingInfo {
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

    pub(super) fn info(&self) -> RecordingInfo {
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
