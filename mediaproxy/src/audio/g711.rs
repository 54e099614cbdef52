//! G.711 (ITU-T G.711, 1988): 8-bit companded samples to 16-bit linear PCM.
//!
//! Both laws are decoded through a 256-entry table built at compile time.

/// Linear value of a μ-law byte (PCMU, RTP payload type 0).
pub fn ulaw_to_linear(byte: u8) -> i16 {
    ULAW[usize::from(byte)]
}

/// Linear value of an A-law byte (PCMA, RTP payload type 8).
pub fn alaw_to_linear(byte: u8) -> i16 {
    ALAW[usize::from(byte)]
}

const ULAW: [i16; 256] = {
    let mut table = [0i16; 256];
    let mut index = 0;
    while index < 256 {
        // The byte is sent inverted; the magnitude is (mantissa + bias) << exponent, less the
        // bias of 0x84 (G.711 table 2a).
        let code = !(index as u8);
        let exponent = (code >> 4) & 0x07;
        let mantissa = (code & 0x0f) as i32;
        let magnitude = (((mantissa << 3) + 0x84) << exponent) - 0x84;
        table[index] = if code & 0x80 != 0 {
            -magnitude as i16
        } else {
            magnitude as i16
        };
        index += 1;
    }
    table
};

const ALAW: [i16; 256] = {
    let mut table = [0i16; 256];
    let mut index = 0;
    while index < 256 {
        // Even bits are inverted on the wire (G.711 table 1a).
        let code = (index as u8) ^ 0x55;
        let segment = (code >> 4) & 0x07;
        let mut magnitude = ((code & 0x0f) as i32) << 4;
        magnitude += if segment == 0 { 8 } else { 0x108 };
        if segment > 1 {
            magnitude <<= segment - 1;
        }
        table[index] = if code & 0x80 != 0 {
            magnitude as i16
        } else {
            -magnitude as i16
        };
        index += 1;
    }
    table
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn silence_and_extremes_decode_as_the_tables_say() {
        // G.711: μ-law 0xFF and 0x7F are +0 and -0; 0x80 and 0x00 the largest magnitudes.
        assert_eq!(ulaw_to_linear(0xff), 0);
        assert_eq!(ulaw_to_linear(0x7f), 0);
        assert_eq!(ulaw_to_linear(0x80), 32124);
        assert_eq!(ulaw_to_linear(0x00), -32124);
        // A-law 0xD5 and 0x55 are the smallest positive and negative steps; 0xAA and 0x2A the
        // largest magnitudes.
        assert_eq!(alaw_to_linear(0xd5), 8);
        assert_eq!(alaw_to_linear(0x55), -8);
        assert_eq!(alaw_to_linear(0xaa), 32256);
        assert_eq!(alaw_to_linear(0x2a), -32256);
    }

    #[test]
    fn every_code_is_monotonic_within_its_sign() {
        // Positive μ-law codes run 0xFF (smallest) down to 0x80 (largest).
        for code in 0x81..=0xffu8 {
            assert!(ulaw_to_linear(code) < ulaw_to_linear(code - 1), "{code:#x}");
        }
        let positive_alaw: Vec<i16> = (0..=255u8).map(alaw_to_linear).filter(|v| *v > 0).collect();
        assert_eq!(positive_alaw.len(), 128);
    }
}
