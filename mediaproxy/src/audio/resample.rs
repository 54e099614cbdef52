//! Sample-rate conversion between the rates telephony uses (8, 12, 16, 24, 32, 44.1 and
//! 48 kHz), for a recording whose codec changed mid-call and for tap subscribers that ask
//! for another rate.
//!
//! A streaming windowed-sinc interpolator: the ratio is reduced to `to / from` in lowest
//! terms, so output samples fall on a finite set of input phases, and one kernel per phase is
//! computed up front (no trigonometry per sample). Downsampling moves the cut-off down to the
//! output's Nyquist rate (less a guard band) so higher frequencies do not fold back. The
//! converter delays its output by [`Resampler::delay`] input samples (the kernel's
//! look-ahead).

use std::collections::VecDeque;

/// Zero crossings of the kernel on each side of its centre, at the lower of the two rates.
const ZERO_CROSSINGS: usize = 12;
/// Cut-off as a fraction of the lower rate's Nyquist frequency.
const PASS_BAND: f64 = 0.92;

/// Converts one mono stream from one rate to another.
#[derive(Debug, Clone)]
pub struct Resampler {
    from: u32,
    to: u32,
    /// Input advance per output sample, in units of 1 / `phases` input samples.
    step: usize,
    phases: usize,
    /// Kernel half-width in input samples.
    half: usize,
    /// `phases` kernels of `2 * half` taps each.
    kernels: Vec<f32>,
    history: VecDeque<f32>,
    phase: usize,
}

fn gcd(a: u32, b: u32) -> u32 {
    if b == 0 { a } else { gcd(b, a % b) }
}

impl Resampler {
    /// A converter from `from` Hz to `to` Hz (both positive).
    pub fn new(from: u32, to: u32) -> Self {
        let (from, to) = (from.max(1), to.max(1));
        let g = gcd(from, to);
        let (step, phases) = ((from / g) as usize, (to / g) as usize);
        // Relative to the input rate: 1 when upsampling, to/from when downsampling.
        let cutoff = (f64::from(to) / f64::from(from)).min(1.0) * PASS_BAND;
        let half = if from == to {
            0
        } else {
            (ZERO_CROSSINGS as f64 / cutoff).ceil() as usize
        };
        let mut kernels = Vec::with_capacity(phases * 2 * half);
        for phase in 0..phases {
            let fraction = phase as f64 / phases as f64;
            let mut sum = 0.0;
            let start = kernels.len();
            for tap in 0..2 * half {
                // Distance of input sample (i - half + 1 + tap) from position i + fraction.
                let distance = tap as f64 - half as f64 + 1.0 - fraction;
                let x = distance / half as f64;
                // Blackman window over [-1, 1].
                let window = if x.abs() >= 1.0 {
                    0.0
                } else {
                    0.42 + 0.5 * (std::f64::consts::PI * x).cos()
                        + 0.08 * (2.0 * std::f64::consts::PI * x).cos()
                };
                let t = std::f64::consts::PI * cutoff * distance;
                let sinc = if t.abs() < 1e-12 { 1.0 } else { t.sin() / t };
                let weight = cutoff * sinc * window;
                sum += weight;
                kernels.push(weight as f32);
            }
            // Unity gain at DC for every phase.
            for weight in &mut kernels[start..] {
                *weight = (f64::from(*weight) / sum) as f32;
            }
        }
        let mut history = VecDeque::new();
        history.extend(std::iter::repeat_n(0.0, half.saturating_sub(1)));
        Self {
            from,
            to,
            step,
            phases,
            half,
            kernels,
            history,
            phase: 0,
        }
    }

    pub fn from_rate(&self) -> u32 {
        self.from
    }

    pub fn to_rate(&self) -> u32 {
        self.to
    }

    /// Input samples by which the output lags the input.
    pub fn delay(&self) -> usize {
        self.half
    }

    /// Converts `input`, appending what can be computed so far to `out`.
    pub fn process(&mut self, input: &[i16], out: &mut Vec<i16>) {
        if self.from == self.to {
            out.extend_from_slice(input);
            return;
        }
        self.history.extend(input.iter().map(|&s| f32::from(s)));
        let taps = 2 * self.half;
        // history[0..taps] are the taps of the current output sample.
        while self.history.len() >= taps {
            let kernel = &self.kernels[self.phase * taps..(self.phase + 1) * taps];
            let (a, b) = self.history.as_slices();
            let value: f32 = a
                .iter()
                .chain(b)
                .zip(kernel)
                .map(|(sample, weight)| sample * weight)
                .sum();
            out.push(value.round().clamp(-32768.0, 32767.0) as i16);
            self.phase += self.step;
            let advance = self.phase / self.phases;
            self.phase %= self.phases;
            let advance = advance.min(self.history.len());
            self.history.drain(..advance);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audio::analysis::{level_at, tone};

    fn convert(from: u32, to: u32, frequency: f64, seconds: f64) -> Vec<i16> {
        let input = tone(
            frequency,
            from,
            (f64::from(from) * seconds) as usize,
            10_000.0,
        );
        let mut resampler = Resampler::new(from, to);
        let mut out = Vec::new();
        // In packet-sized pieces, as the recorder feeds it.
        for chunk in input.chunks((from / 50) as usize) {
            resampler.process(chunk, &mut out);
        }
        out
    }

    #[test]
    fn a_tone_keeps_its_frequency_and_level_up_and_down() {
        for (from, to) in [
            (8000, 48000),
            (48000, 8000),
            (16000, 8000),
            (8000, 16000),
            (44100, 48000),
        ] {
            let out = convert(from, to, 440.0, 1.0);
            let expected = (f64::from(to) * 1.0) as usize;
            assert!(
                out.len().abs_diff(expected) <= Resampler::new(from, to).delay() * 6 + 2,
                "{from}->{to}: {} samples",
                out.len()
            );
            let steady = &out[out.len() / 4..];
            let at = level_at(steady, to, 440.0);
            let off = level_at(steady, to, 1000.0);
            assert!(at > 0.9 && at < 1.1, "{from}->{to}: 440 Hz level {at}");
            assert!(off < 0.02, "{from}->{to}: energy off the tone {off}");
        }
    }

    #[test]
    fn downsampling_removes_what_the_lower_rate_cannot_carry() {
        // 6 kHz fits 48 kHz but would fold to 2 kHz at 8 kHz.
        let out = convert(48000, 8000, 6000.0, 0.5);
        let steady = &out[out.len() / 4..];
        assert!(level_at(steady, 8000, 2000.0) < 0.01);
        assert!(crate::audio::analysis::rms(steady) < 200.0);
    }

    #[test]
    fn equal_rates_pass_through() {
        let mut r = Resampler::new(8000, 8000);
        let mut out = Vec::new();
        r.process(&[1, 2, 3], &mut out);
        assert_eq!(out, [1, 2, 3]);
        assert_eq!(r.delay(), 0);
    }
}
