//! `mp-analyser`: an example analyser of a `reflect` call's live audio. It subscribes to the
//! media proxy's `TapAudio` stream (the way a speech-to-text or AI service would), prints
//! every second per leg the level, the strongest tone and how many frames came and were lost,
//! and can write what it received to a WAV file (stereo: caller left, callee right; mono for
//! one leg), frames placed by their timestamps so the legs stay aligned and lost frames
//! become silence. It ends when the call is released, or after `--seconds`.
#![forbid(unsafe_code)]

use std::collections::VecDeque;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Parser;
use mediaproxy::audio::analysis;
use mediaproxy::client::{Connection, run_tool, status_text};
use mediaproxy::wav::WavWriter;
use proto::v1 as pb;

#[derive(Debug, Parser)]
#[command(
    name = "mp-analyser",
    version,
    about = "Example analyser: live levels (and a WAV) of a reflect call's audio"
)]
struct Cli {
    #[command(flatten)]
    connection: Connection,
    /// The call (its caller's Call-ID, the media proxy's session id).
    call_id: String,
    /// One leg only (caller or callee); both by default.
    #[arg(long, value_parser = ["caller", "callee"])]
    leg: Option<String>,
    /// Sample rate wanted, 8000 to 48000; 0 for the call's own.
    #[arg(long, default_value_t = 0)]
    rate: u32,
    /// Write what arrives to this WAV file.
    #[arg(long, value_name = "FILE")]
    wav: Option<PathBuf>,
    /// Stop after this many seconds (default: when the call ends).
    #[arg(long)]
    seconds: Option<u64>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    run_tool("mp-analyser", run(cli))
}

/// What one leg brought in the current second, and in all.
#[derive(Default)]
struct LegLevels {
    block: Vec<i16>,
    /// Seconds reported so far.
    seconds: u64,
    frames: u64,
    lost: u64,
    encoding: String,
}

impl LegLevels {
    /// Adds a frame; returns the report line of each second it completes.
    fn add(&mut self, name: &str, frame: &pb::AudioFrame, samples: &[i16]) -> Vec<String> {
        self.frames += 1;
        self.lost += frame.dropped_before;
        self.encoding.clone_from(&frame.encoding);
        self.block.extend_from_slice(samples);
        let second = frame.sample_rate as usize;
        let mut lines = Vec::new();
        while second > 0 && self.block.len() >= second {
            let block: Vec<i16> = self.block.drain(..second).collect();
            self.seconds += 1;
            lines.push(report(name, self, &block, frame.sample_rate));
        }
        lines
    }
}

/// One second of one leg, in words.
fn report(name: &str, leg: &LegLevels, block: &[i16], rate: u32) -> String {
    let level = analysis::dbfs(block);
    let tone = match analysis::dominant(block, rate, 100.0, 4000.0, 10.0) {
        Some((frequency, share)) if share > 0.5 => format!("tone {frequency:.0} Hz ({share:.2})"),
        Some(_) => "no tone".to_owned(),
        None => "silent".to_owned(),
    };
    let level = if level.is_finite() {
        format!("{level:6.1} dBFS")
    } else {
        "  -inf dBFS".to_owned()
    };
    format!(
        "{:>4} s  {name:<6}  {level}  {tone}  frames {} lost {}  {} {rate} Hz",
        leg.seconds, leg.frames, leg.lost, leg.encoding
    )
}

/// The WAV being written: per channel, samples from `written` on, waiting for the other leg.
struct WavOut {
    writer: WavWriter,
    channels: Vec<VecDeque<i16>>,
    /// Samples per channel written so far.
    written: u64,
    rate: u32,
}

impl WavOut {
    /// Places a frame's samples at `position` (samples since the first frame) of `channel`.
    fn place(&mut self, channel: usize, position: u64, samples: &[i16]) -> std::io::Result<()> {
        let Some(offset) = position.checked_sub(self.written) else {
            return Ok(()); // older than what was written: too late
        };
        let queue = &mut self.channels[channel];
        let offset = offset as usize;
        if queue.len() < offset {
            queue.resize(offset, 0); // a lost frame: silence of its length
        }
        for (i, &sample) in samples.iter().enumerate() {
            match queue.get_mut(offset + i) {
                Some(slot) => *slot = sample,
                None => queue.push_back(sample),
            }
        }
        // Write what every channel has; a channel more than a second behind (a silent leg)
        // is padded with silence rather than holding the file back.
        let longest = self.channels.iter().map(VecDeque::len).max().unwrap_or(0);
        let shortest = self.channels.iter().map(VecDeque::len).min().unwrap_or(0);
        let ready = shortest.max(longest.saturating_sub(self.rate as usize));
        self.write(ready)
    }

    fn write(&mut self, count: usize) -> std::io::Result<()> {
        if count == 0 {
            return Ok(());
        }
        let mut interleaved = Vec::with_capacity(count * self.channels.len());
        for _ in 0..count {
            for queue in &mut self.channels {
                interleaved.push(queue.pop_front().unwrap_or(0));
            }
        }
        self.written += count as u64;
        self.writer.write(&interleaved)
    }

    fn finish(mut self) -> std::io::Result<u64> {
        let rest = self.channels.iter().map(VecDeque::len).max().unwrap_or(0);
        self.write(rest)?;
        self.writer.finish()
    }
}

async fn run(cli: Cli) -> Result<(), String> {
    let mut client = cli.connection.connect().await?;
    let leg = match cli.leg.as_deref() {
        Some("caller") => pb::Leg::Caller,
        Some("callee") => pb::Leg::Callee,
        _ => pb::Leg::Unspecified,
    };
    let mut stream = client
        .tap_audio(pb::TapAudioRequest {
            call_id: cli.call_id.clone(),
            leg: leg as i32,
            sample_rate: cli.rate,
        })
        .await
        .map_err(|s| status_text(&s))?
        .into_inner();
    let names = ["caller", "callee"];
    let mut levels = [LegLevels::default(), LegLevels::default()];
    let mut wav: Option<WavOut> = None;
    let mut first: Option<u32> = None;
    let deadline = cli.seconds.map(|s| Instant::now() + Duration::from_secs(s));
    loop {
        let wait = deadline.map_or(Duration::from_secs(3600), |d| {
            d.saturating_duration_since(Instant::now())
        });
        let frame = match tokio::time::timeout(wait, stream.message()).await {
            Err(_) => break, // --seconds reached
            Ok(Ok(Some(frame))) => frame,
            Ok(Ok(None)) => {
                println!("the call ended");
                break;
            }
            Ok(Err(status)) => return Err(status_text(&status)),
        };
        let index = match pb::Leg::try_from(frame.leg) {
            Ok(pb::Leg::Caller) => 0,
            Ok(pb::Leg::Callee) => 1,
            _ => continue,
        };
        let samples: Vec<i16> = frame
            .pcm
            .chunks_exact(2)
            .map(|b| i16::from_le_bytes([b[0], b[1]]))
            .collect();
        for line in levels[index].add(names[index], &frame, &samples) {
            println!("{line}");
        }
        if let Some(path) = &cli.wav {
            if wav.is_none() {
                let channels = if leg == pb::Leg::Unspecified { 2 } else { 1 };
                let writer = WavWriter::create(path, channels, frame.sample_rate)
                    .map_err(|e| format!("--wav {}: {e}", path.display()))?;
                wav = Some(WavOut {
                    writer,
                    channels: vec![VecDeque::new(); usize::from(channels)],
                    written: 0,
                    rate: frame.sample_rate,
                });
            }
            let start = *first.get_or_insert(frame.rtp_timestamp);
            // Both legs count samples from one instant: equal timestamps are simultaneous.
            let position = frame.rtp_timestamp.wrapping_sub(start);
            if let Some(out) = wav.as_mut()
                && position < u32::MAX / 2
            {
                let channel = if leg == pb::Leg::Unspecified {
                    index
                } else {
                    0
                };
                out.place(channel, u64::from(position), &samples)
                    .map_err(|e| format!("--wav: {e}"))?;
            }
        }
    }
    for (name, leg) in names.iter().zip(&levels) {
        println!("{name}: {} frames, {} lost", leg.frames, leg.lost);
    }
    if let (Some(out), Some(path)) = (wav, &cli.wav) {
        let rate = out.rate;
        let bytes = out.finish().map_err(|e| format!("--wav: {e}"))?;
        println!("wrote {} ({bytes} bytes at {rate} Hz)", path.display());
    }
    Ok(())
}
