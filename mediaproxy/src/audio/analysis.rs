//! Measuring audio: the level of one frequency (Goertzel) and the RMS of a block. Used by the
//! example analyser, by tests that check recordings and tap frames carry the right tones, and
//! by the benchmark.

/// Root mean square of `samples`.
pub fn rms(samples: &[i16]) -> f64 {
    if samples.is_empty() {
        return 0.0;
    }
    let sum: f64 = samples.iter().map(|&s| f64::from(s).powi(2)).sum();
    (sum / samples.len() as f64).sqrt()
}

/// Amplitude of the `frequency` component of `samples` (at `rate` Hz), as a fraction of the
/// block's overall amplitude (its RMS times the square root of 2): about 1 for a pure tone at
/// that frequency, about 0 for a tone elsewhere or silence. A Hann window keeps a tone's
/// leakage into frequencies a few hundred hertz away negligible.
pub fn level_at(samples: &[i16], rate: u32, frequency: f64) -> f64 {
    let n = samples.len();
    let overall = rms(samples) * std::f64::consts::SQRT_2;
    if n < 2 || overall < 1.0 {
        return 0.0;
    }
    let omega = 2.0 * std::f64::consts::PI * frequency / f64::from(rate);
    let coefficient = 2.0 * omega.cos();
    let (mut s1, mut s2) = (0.0, 0.0);
    let mut window_sum = 0.0;
    for (i, &sample) in samples.iter().enumerate() {
        let window = 0.5 - 0.5 * (2.0 * std::f64::consts::PI * i as f64 / (n - 1) as f64).cos();
        window_sum += window;
        let s0 = f64::from(sample) * window + coefficient * s1 - s2;
        s2 = s1;
        s1 = s0;
    }
    let power = s1 * s1 + s2 * s2 - coefficient * s1 * s2;
    let amplitude = 2.0 * power.max(0.0).sqrt() / window_sum;
    amplitude / overall
}

/// `count` samples of a sine tone at `rate` Hz with peak `amplitude`.
pub fn tone(frequency: f64, rate: u32, count: usize, amplitude: f64) -> Vec<i16> {
    tone_from(frequency, rate, 0, count, amplitude)
}

/// Samples `start..start + count` of the tone [`tone`] describes, so a stream can be made
/// packet by packet without a phase jump.
pub fn tone_from(
    frequency: f64,
    rate: u32,
    start: usize,
    count: usize,
    amplitude: f64,
) -> Vec<i16> {
    (start..start + count)
        .map(|i| {
            let t = i as f64 / f64::from(rate);
            (amplitude * (2.0 * std::f64::consts::PI * frequency * t).sin()).round() as i16
        })
        .collect()
}

/// The strongest frequency of `samples` between `from` and `to` Hz, searched in `step` Hz
/// steps, with its [`level_at`]; None for silence.
pub fn dominant(samples: &[i16], rate: u32, from: f64, to: f64, step: f64) -> Option<(f64, f64)> {
    let top = to.min(f64::from(rate) / 2.0 - step);
    let mut best: Option<(f64, f64)> = None;
    let mut frequency = from;
    while frequency <= top {
        let level = level_at(samples, rate, frequency);
        if level > best.map_or(0.0, |(_, l)| l) {
            best = Some((frequency, level));
        }
        frequency += step;
    }
    best
}

/// Level of `samples` in dB relative to a full-scale sine (0 dBFS); -inf for silence.
pub fn dbfs(samples: &[i16]) -> f64 {
    20.0 * (rms(samples) * std::f64::consts::SQRT_2 / 32767.0).log10()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tone_is_found_at_its_frequency_only() {
        let samples = tone(440.0, 8000, 4000, 8000.0);
        assert!((level_at(&samples, 8000, 440.0) - 1.0).abs() < 0.05);
        assert!(level_at(&samples, 8000, 1000.0) < 0.01);
        assert_eq!(level_at(&[0; 100], 8000, 440.0), 0.0);
        assert!((rms(&samples) - 8000.0 / std::f64::consts::SQRT_2).abs() < 20.0);
    }

    #[test]
    fn the_dominant_tone_and_the_level_of_a_block_are_found() {
        let mut block = tone(1000.0, 8000, 8000, 3000.0);
        for (s, quiet) in block.iter_mut().zip(tone(300.0, 8000, 8000, 500.0)) {
            *s += quiet;
        }
        let (frequency, level) = dominant(&block, 8000, 100.0, 3800.0, 50.0).unwrap();
        assert_eq!(frequency, 1000.0);
        assert!(level > 0.9, "{level}");
        assert_eq!(dominant(&[0; 800], 8000, 100.0, 3800.0, 50.0), None);
        let full = tone(440.0, 8000, 8000, 32767.0);
        assert!(dbfs(&full).abs() < 0.1, "{}", dbfs(&full));
        let quarter = tone(440.0, 8000, 8000, 32767.0 / 4.0);
        assert!((dbfs(&quarter) + 12.04).abs() < 0.1, "{}", dbfs(&quarter));
    }
}
