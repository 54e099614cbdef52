//! RTP and RTCP recognition, just deep enough for relaying and statistics (RFC 3550 section
//! 5.1 and 6.4, RFC 5761 section 4 for RTCP multiplexed on the RTP port).
//!
//! No I/O and no allocation: [`classify`] looks at a datagram in place.

/// The fixed part of an RTP header (RFC 3550 section 5.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RtpHeader {
    pub payload_type: u8,
    pub marker: bool,
    pub sequence: u16,
    pub timestamp: u32,
    pub ssrc: u32,
}

/// What a datagram received on a media socket is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Datagram {
    Rtp(RtpHeader),
    Rtcp,
}

/// Why a datagram is not relayable media.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Malformed {
    /// Shorter than the header it claims to be (12 bytes of RTP plus CSRCs, 8 of RTCP).
    TooShort,
    /// Version field is not 2 (STUN, DTLS, garbage).
    NotRtp,
}

const RTP_HEADER_LEN: usize = 12;
const RTCP_HEADER_LEN: usize = 8;

/// Classifies one datagram. On the RTCP port everything of version 2 is RTCP; on the RTP port
/// the second byte tells RTCP (packet types 192 to 223) from RTP, as RFC 5761 section 4 does.
pub fn classify(data: &[u8], on_rtcp_port: bool) -> Result<Datagram, Malformed> {
    let Some(&first) = data.first() else {
        return Err(Malformed::TooShort);
    };
    if first >> 6 != 2 {
        return Err(Malformed::NotRtp);
    }
    let second = data.get(1).copied().unwrap_or(0);
    if on_rtcp_port || (192..=223).contains(&second) {
        return if data.len() < RTCP_HEADER_LEN {
            Err(Malformed::TooShort)
        } else {
            Ok(Datagram::Rtcp)
        };
    }
    let csrc_count = usize::from(first & 0x0f);
    if data.len() < RTP_HEADER_LEN + 4 * csrc_count {
        return Err(Malformed::TooShort);
    }
    Ok(Datagram::Rtp(RtpHeader {
        payload_type: second & 0x7f,
        marker: second & 0x80 != 0,
        sequence: u16::from_be_bytes([data[2], data[3]]),
        timestamp: u32::from_be_bytes([data[4], data[5], data[6], data[7]]),
        ssrc: u32::from_be_bytes([data[8], data[9], data[10], data[11]]),
    }))
}

/// Builds a minimal RTP packet; used by tests and the benchmark's generator.
pub fn build_rtp(
    payload_type: u8,
    sequence: u16,
    timestamp: u32,
    ssrc: u32,
    payload: &[u8],
) -> Vec<u8> {
    let mut packet = Vec::with_capacity(RTP_HEADER_LEN + payload.len());
    packet.push(0x80);
    packet.push(payload_type & 0x7f);
    packet.extend_from_slice(&sequence.to_be_bytes());
    packet.extend_from_slice(&timestamp.to_be_bytes());
    packet.extend_from_slice(&ssrc.to_be_bytes());
    packet.extend_from_slice(payload);
    packet
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_rtp_header_fields() {
        let packet = build_rtp(8, 0xabcd, 0x01020304, 0xdeadbeef, &[0u8; 160]);
        let Ok(Datagram::Rtp(header)) = classify(&packet, false) else {
            panic!("not RTP");
        };
        assert_eq!(header.payload_type, 8);
        assert_eq!(header.sequence, 0xabcd);
        assert_eq!(header.timestamp, 0x01020304);
        assert_eq!(header.ssrc, 0xdeadbeef);
        assert!(!header.marker);
    }

    #[test]
    fn rtcp_on_the_rtp_port_is_recognised_rfc5761() {
        // A receiver report: V=2, RC=0, PT=201, length 1.
        let rr = [0x80, 201, 0, 1, 0, 0, 0, 1];
        assert_eq!(classify(&rr, false), Ok(Datagram::Rtcp));
        assert_eq!(classify(&rr, true), Ok(Datagram::Rtcp));
    }

    #[test]
    fn rejects_short_and_foreign_datagrams() {
        assert_eq!(classify(&[], false), Err(Malformed::TooShort));
        assert_eq!(classify(&[0x80, 0, 0], false), Err(Malformed::TooShort));
        // STUN binding request starts with two zero bits.
        assert_eq!(classify(&[0x00, 0x01, 0, 0], false), Err(Malformed::NotRtp));
        assert_eq!(classify(&[0x80, 200, 0], true), Err(Malformed::TooShort));
        // CSRC count of 2 needs 20 bytes.
        let mut packet = build_rtp(0, 1, 1, 1, &[0u8; 4]);
        packet[0] |= 2;
        assert_eq!(classify(&packet, false), Err(Malformed::TooShort));
    }
}
