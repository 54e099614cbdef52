//! G.722 decoding (ITU-T G.722, 09/2012): 64 kbit/s sub-band ADPCM to 16 kHz linear PCM.
//!
//! Each octet carries a 6-bit lower-band code and a 2-bit higher-band code (mode 1, the only
//! mode RTP uses: RFC 3551 section 4.5.2). Each band has its own adaptive quantiser and
//! pole-zero predictor (blocks 2 to 6 of the recommendation); the receive QMF then turns one
//! sample of each band into two output samples. The RTP clock of G.722 is 8000 Hz although
//! the audio is sampled at 16 kHz (RFC 3551's well-known historical error).
//!
//! The block names in comments (INVQBL, LOGSCL, UPPOL2, ...) are the recommendation's.

/// Samples a G.722 octet decodes to.
pub const SAMPLES_PER_OCTET: usize = 2;

/// Decoder state of one stream.
#[derive(Debug, Clone)]
pub struct G722Decoder {
    lower: Band,
    higher: Band,
    /// Receive QMF delay line: the last 12 sum and difference samples, interleaved.
    qmf: [i32; 24],
}

/// Adaptive quantiser and predictor state of one sub-band.
#[derive(Debug, Clone, Default)]
struct Band {
    /// Signal estimate (PREDIC): pole plus zero section outputs.
    estimate: i32,
    /// Zero section output (FILTEZ).
    zero_output: i32,
    /// Reconstructed signal, now and the two before (RECONS).
    reconstructed: [i32; 3],
    /// Partially reconstructed signal, now and the two before (PARREC).
    partial: [i32; 3],
    /// Pole coefficients a1, a2 (index 0 unused).
    poles: [i32; 3],
    /// Quantised difference signal, now and the six before.
    difference: [i32; 7],
    /// Zero coefficients b1..b6 (index 0 unused).
    zeros: [i32; 7],
    /// Logarithmic quantiser scale factor (nabla).
    log_scale: i32,
    /// Linear quantiser scale factor (delta), shifted left by 2.
    scale: i32,
}

fn saturate(value: i32) -> i32 {
    value.clamp(i32::from(i16::MIN), i32::from(i16::MAX))
}

/// INVQBL: 6-bit lower-band code to quantiser output (table 17, shifted as in the reference).
const LOWER_6BIT: [i32; 64] = [
    -136, -136, -136, -136, -24808, -21904, -19008, -16704, -14984, -13512, -12280, -11192, -10232,
    -9360, -8576, -7856, -7192, -6576, -6000, -5456, -4944, -4464, -4008, -3576, -3168, -2776,
    -2400, -2032, -1688, -1360, -1040, -728, 24808, 21904, 19008, 16704, 14984, 13512, 12280,
    11192, 10232, 9360, 8576, 7856, 7192, 6576, 6000, 5456, 4944, 4464, 4008, 3576, 3168, 2776,
    2400, 2032, 1688, 1360, 1040, 728, 432, 136, -432, -136,
];
/// INVQAL: the code's 4 most significant bits to the predictor's quantiser output.
const LOWER_4BIT: [i32; 16] = [
    0, -20456, -12896, -8968, -6288, -4240, -2584, -1200, 20456, 12896, 8968, 6288, 4240, 2584,
    1200, 0,
];
/// LOGSCL: the 4-bit code's magnitude class and its scale factor multiplier.
const LOWER_CLASS: [usize; 16] = [0, 7, 6, 5, 4, 3, 2, 1, 7, 6, 5, 4, 3, 2, 1, 0];
const LOWER_ADAPT: [i32; 8] = [-60, -30, 58, 172, 334, 538, 1198, 3042];
/// INVQAH: 2-bit higher-band code to quantiser output.
const HIGHER_2BIT: [i32; 4] = [-7408, -1616, 7408, 1616];
/// LOGSCH: the 2-bit code's class and its scale factor multiplier.
const HIGHER_CLASS: [usize; 4] = [2, 1, 2, 1];
const HIGHER_ADAPT: [i32; 3] = [0, -214, 798];
/// SCALEL/SCALEH: antilog table of the scale factor's fractional part.
const ANTILOG: [i32; 32] = [
    2048, 2093, 2139, 2186, 2233, 2282, 2332, 2383, 2435, 2489, 2543, 2599, 2656, 2714, 2774, 2834,
    2896, 2960, 3025, 3091, 3158, 3228, 3298, 3371, 3444, 3520, 3597, 3676, 3756, 3838, 3922, 4008,
];
/// Receive QMF coefficients (table 11), h0..h11.
const QMF: [i32; 12] = [3, -11, 12, 32, -210, 951, 3876, -805, 362, -156, 53, -11];

impl Band {
    /// LOGSCL/LOGSCH then SCALEL/SCALEH: adapts the scale factor to the code's class.
    fn adapt_scale(&mut self, adapt: i32, limit: i32, shift: i32) {
        self.log_scale = ((self.log_scale * 127) >> 7) + adapt;
        self.log_scale = self.log_scale.clamp(0, limit);
        let fraction = ANTILOG[((self.log_scale >> 6) & 31) as usize];
        let exponent = shift - (self.log_scale >> 11);
        let linear = if exponent < 0 {
            fraction << -exponent
        } else {
            fraction >> exponent
        };
        self.scale = linear << 2;
    }

    /// Block 4: reconstruction, predictor adaptation and the next signal estimate, from the
    /// quantised difference `d`.
    fn predict(&mut self, d: i32) {
        let reconstructed = saturate(self.estimate + d);
        let partial = saturate(self.zero_output + d);
        let sign = |value: i32| value >> 15;
        let (p0, p1, p2) = (sign(partial), sign(self.partial[0]), sign(self.partial[1]));

        // UPPOL2: second pole coefficient.
        let a1 = saturate(self.poles[1] << 2);
        let towards = if p0 == p1 { -a1 } else { a1 }.min(32767);
        let a2 =
            ((towards >> 7) + if p0 == p2 { 128 } else { -128 }) + ((self.poles[2] * 32512) >> 15);
        let a2 = a2.clamp(-12288, 12288);
        // UPPOL1: first pole coefficient, bounded by the second.
        let a1 = saturate(if p0 == p1 { 192 } else { -192 } + ((self.poles[1] * 32640) >> 15));
        let bound = saturate(15360 - a2);
        let a1 = a1.clamp(-bound, bound);

        // UPZERO: zero coefficients, leaking towards 0, stepped by the signs of d.
        let step = if d == 0 { 0 } else { 128 };
        let d_sign = sign(d);
        for i in 1..7 {
            let agree = sign(self.difference[i - 1]) == d_sign;
            let leak = (self.zeros[i] * 32640) >> 15;
            self.zeros[i] = saturate(if agree { step } else { -step } + leak);
        }

        // DELAYA/DELAYL: shift the histories. `difference[k]` holds d of k+1 samples ago
        // after this, as FILTEZ needs.
        self.difference.copy_within(0..6, 1);
        self.difference[0] = d;
        self.reconstructed = [reconstructed, reconstructed, self.reconstructed[1]];
        self.partial = [partial, self.partial[0], self.partial[1]];
        self.poles[1] = a1;
        self.poles[2] = a2;

        // FILTEP: pole section over the last two reconstructed samples.
        let pole = saturate(
            ((self.poles[1] * saturate(self.reconstructed[1] << 1)) >> 15)
                + ((self.poles[2] * saturate(self.reconstructed[2] << 1)) >> 15),
        );
        // FILTEZ: zero section over the last six differences.
        let zero: i32 = (1..7)
            .map(|i| (self.zeros[i] * saturate(self.difference[i - 1] << 1)) >> 15)
            .sum();
        self.zero_output = saturate(zero);
        // PREDIC.
        self.estimate = saturate(pole + self.zero_output);
    }
}

impl Default for G722Decoder {
    fn default() -> Self {
        Self::new()
    }
}

impl G722Decoder {
    /// A decoder in the reset state of the recommendation (DETL = 32, DETH = 8).
    pub fn new() -> Self {
        let band = |scale| Band {
            scale,
            ..Band::default()
        };
        Self {
            lower: band(32),
            higher: band(8),
            qmf: [0; 24],
        }
    }

    /// Decodes `octets` into `out` (two samples per octet, appended).
    pub fn decode(&mut self, octets: &[u8], out: &mut Vec<i16>) {
        out.reserve(octets.len() * SAMPLES_PER_OCTET);
        for &octet in octets {
            let lower = self.decode_lower(octet & 0x3f);
            let higher = self.decode_higher(octet >> 6);
            let [first, second] = self.synthesise(lower, higher);
            out.push(first);
            out.push(second);
        }
    }

    /// Lower band: INVQBL (6 bits, for the output), INVQAL (4 bits, for the predictor),
    /// LOGSCL, SCALEL, block 4.
    fn decode_lower(&mut self, code: u8) -> i32 {
        let band = &mut self.lower;
        let output = (band.estimate + ((band.scale * LOWER_6BIT[usize::from(code)]) >> 15))
            .clamp(-16384, 16383);
        let code4 = usize::from(code >> 2);
        let d = (band.scale * LOWER_4BIT[code4]) >> 15;
        band.adapt_scale(LOWER_ADAPT[LOWER_CLASS[code4]], 18432, 8);
        band.predict(d);
        output
    }

    /// Higher band: INVQAH, LOGSCH, SCALEH, block 4.
    fn decode_higher(&mut self, code: u8) -> i32 {
        let band = &mut self.higher;
        let d = (band.scale * HIGHER_2BIT[usize::from(code)]) >> 15;
        let output = (band.estimate + d).clamp(-16384, 16383);
        band.adapt_scale(HIGHER_ADAPT[HIGHER_CLASS[usize::from(code)]], 22528, 10);
        band.predict(d);
        output
    }

    /// Receive QMF: one lower and one higher band sample to two 16 kHz samples.
    fn synthesise(&mut self, lower: i32, higher: i32) -> [i16; 2] {
        self.qmf.copy_within(2..24, 0);
        self.qmf[22] = lower + higher;
        self.qmf[23] = lower - higher;
        let mut even = 0;
        let mut odd = 0;
        for i in 0..12 {
            even += self.qmf[2 * i] * QMF[i];
            odd += self.qmf[2 * i + 1] * QMF[11 - i];
        }
        [saturate(odd >> 11) as i16, saturate(even >> 11) as i16]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audio::analysis::{level_at, tone};
    use audio_codec::{Decoder as _, Encoder as _};

    /// One second of a tone at 16 kHz, encoded by an independent G.722 encoder.
    fn encoded(frequency: f64) -> (Vec<i16>, Vec<u8>) {
        let pcm = tone(frequency, 16000, 16000, 9000.0);
        let mut encoder = audio_codec::g722::G722Encoder::new();
        let mut octets = Vec::new();
        for block in pcm.chunks(320) {
            octets.extend(encoder.encode(block));
        }
        (pcm, octets)
    }

    #[test]
    fn decodes_another_implementations_stream_to_the_same_tone() {
        for frequency in [440.0, 1000.0, 5000.0] {
            let (_, octets) = encoded(frequency);
            assert_eq!(octets.len(), 8000);
            let mut ours = Vec::new();
            let mut decoder = G722Decoder::new();
            for packet in octets.chunks(160) {
                decoder.decode(packet, &mut ours);
            }
            assert_eq!(ours.len(), 16000);
            let steady = &ours[1600..];
            // 5 kHz is only in the higher band: both bands decode.
            assert!(level_at(steady, 16000, frequency) > 0.9, "{frequency} Hz");
            // The other implementation's decoder agrees once the start-up transient (its
            // reset state differs from the recommendation's) has died away.
            let theirs = audio_codec::g722::G722Decoder::new().decode(&octets);
            let (mut noise, mut signal) = (0.0, 0.0);
            for (a, b) in ours[1600..].iter().zip(&theirs[1600..]) {
                noise += (f64::from(*a) - f64::from(*b)).powi(2);
                signal += f64::from(*b).powi(2);
            }
            let snr = 10.0 * (signal / noise.max(1.0)).log10();
            assert!(snr > 40.0, "{frequency} Hz: {snr:.1} dB apart");
        }
    }
}
