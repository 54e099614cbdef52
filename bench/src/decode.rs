//! `bench --decode-cost`: what decoding one leg of a recorded or tapped call costs, per codec,
//! with the recorder's own decoders (`mediaproxy::audio`), on one core. The input is a 1 kHz
//! tone over speech-like level changes, encoded as a phone would send it (G.711 and G.722 by
//! their definitions: any byte is a valid code; Opus by `opus-pure`'s encoder, 20 ms frames).
//! Prints microseconds per 20 ms frame and the share of one core a recorded call (two legs,
//! 50 frames a second each) takes to decode, with the resampling to a 48 kHz tap added.

use std::time::Instant;

use mediaproxy::audio::analysis::tone_from;
use mediaproxy::audio::codec::{AudioCodec, Decoder};
use mediaproxy::audio::resample::Resampler;

/// 20 ms frames of `codec` carrying the test signal.
fn frames(codec: AudioCodec, count: usize) -> anyhow::Result<Vec<Vec<u8>>> {
    let rate = codec.sample_rate().unwrap_or(8000);
    let per_frame = rate as usize / 50;
    let pcm = |n: usize| {
        let level = 2000.0 + 6000.0 * ((n % 50) as f64 / 50.0);
        tone_from(1000.0, rate, n * per_frame, per_frame, level)
    };
    Ok(match codec {
        AudioCodec::Opus => {
            let mut encoder = opus_pure::OpusEncoder::new(48_000, 1, opus_pure::Application::Voip)
                .map_err(|e| anyhow::anyhow!("opus encoder: {e:?}"))?;
            let mut out = Vec::with_capacity(count);
            let mut packet = vec![0u8; 1500];
            for n in 0..count {
                let len = encoder
                    .encode_s16(&pcm(n), per_frame, &mut packet)
                    .map_err(|e| anyhow::anyhow!("opus encode: {e:?}"))?;
                out.push(packet[..len].to_vec());
            }
            out
        }
        // Every byte is a code of these: the tone's samples' high bytes make a varied stream.
        AudioCodec::G722 => (0..count)
            .map(|n| pcm(n).iter().step_by(2).map(|s| (*s >> 4) as u8).collect())
            .collect(),
        _ => (0..count)
            .map(|n| pcm(n).iter().map(|s| (*s >> 6) as u8).collect())
            .collect(),
    })
}

/// Runs the decode-cost table.
pub(crate) fn run(seconds: u64) -> anyhow::Result<()> {
    let count = 500;
    println!(
        "decode cost per leg (one core, {seconds} s per codec, mediaproxy's decoders), a recorded call = 2 legs x 50 frames/s"
    );
    println!(
        "{:<6} {:>9} {:>12} {:>16} {:>18} {:>16}",
        "codec", "file Hz", "us/frame", "core%/rec call", "+48k tap us/frame", "calls/core"
    );
    for codec in [
        AudioCodec::Pcmu,
        AudioCodec::Pcma,
        AudioCodec::G722,
        AudioCodec::Opus,
    ] {
        let input = frames(codec, count)?;
        let rate = codec.sample_rate().unwrap_or(8000);
        let mut decoder = Decoder::new(codec).expect("an audio codec");
        let mut resampler = (rate != 48_000).then(|| Resampler::new(rate, 48_000));
        let mut out = Vec::with_capacity(2048);
        let mut resampled = Vec::with_capacity(4096);
        let time = |resample: bool,
                    decoder: &mut Decoder,
                    resampler: &mut Option<Resampler>,
                    out: &mut Vec<i16>,
                    resampled: &mut Vec<i16>|
         -> anyhow::Result<f64> {
            let began = Instant::now();
            let mut decoded = 0u64;
            while began.elapsed().as_secs() < seconds {
                for frame in &input {
                    out.clear();
                    decoder
                        .decode(frame, out)
                        .map_err(|e| anyhow::anyhow!("{e}"))?;
                    if resample && let Some(resampler) = resampler.as_mut() {
                        resampled.clear();
                        resampler.process(out, resampled);
                    }
                    decoded += 1;
                }
            }
            Ok(began.elapsed().as_secs_f64() * 1e6 / decoded as f64)
        };
        let plain = time(
            false,
            &mut decoder,
            &mut resampler,
            &mut out,
            &mut resampled,
        )?;
        let tapped = time(true, &mut decoder, &mut resampler, &mut out, &mut resampled)?;
        let share = plain * 100.0 / 1e6 * 100.0; // 100 frames a second per call
        println!(
            "{:<6} {:>9} {:>12.2} {:>16.3} {:>18.2} {:>16.0}",
            codec.name(),
            rate,
            plain,
            share,
            tapped,
            100.0 / share
        );
    }
    Ok(())
}
