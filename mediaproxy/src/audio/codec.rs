//! Which codec an RTP packet carries, and its decoder.
//!
//! The payload type is looked up in the codec map of the leg's SDP (`a=rtpmap`), then in the
//! other leg's (offer and answer normally agree), then among the static types of RFC 3551.
//! Telephone events (RFC 4733) and comfort noise (RFC 3389) are not audio: a recording leaves
//! their time silent rather than writing them as noise.

use proto::domain::Codec;

use super::g711::{alaw_to_linear, ulaw_to_linear};
use super::g722::G722Decoder;

/// What a payload type means to the recorder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AudioCodec {
    Pcmu,
    Pcma,
    G722,
    /// RFC 7587: always a 48 kHz RTP clock; stereo streams are decoded to mono.
    Opus,
    /// RFC 4733 DTMF and other named events.
    TelephoneEvent,
    /// RFC 3389 comfort noise.
    ComfortNoise,
}

impl AudioCodec {
    /// The codec an SDP `a=rtpmap` names, if the recorder knows it.
    pub fn identify(codec: &Codec) -> Option<Self> {
        let name = codec.encoding.to_ascii_lowercase();
        match (name.as_str(), codec.clock_rate) {
            ("pcmu", 8000) => Some(Self::Pcmu),
            ("pcma", 8000) => Some(Self::Pcma),
            // RFC 3551 section 4.5.2: the clock is 8000 Hz though the audio is 16 kHz.
            ("g722", 8000) => Some(Self::G722),
            ("opus", 48000) => Some(Self::Opus),
            ("telephone-event", _) => Some(Self::TelephoneEvent),
            ("cn", _) => Some(Self::ComfortNoise),
            _ => None,
        }
    }

    /// The static payload types of RFC 3551 table 4 that the recorder knows.
    pub fn from_static(payload_type: u8) -> Option<Self> {
        match payload_type {
            0 => Some(Self::Pcmu),
            8 => Some(Self::Pcma),
            9 => Some(Self::G722),
            13 => Some(Self::ComfortNoise),
            _ => None,
        }
    }

    /// Sample rate of the decoded audio; None for what is not audio.
    pub fn sample_rate(self) -> Option<u32> {
        match self {
            Self::Pcmu | Self::Pcma => Some(8000),
            Self::G722 => Some(16000),
            Self::Opus => Some(48000),
            Self::TelephoneEvent | Self::ComfortNoise => None,
        }
    }

    /// RTP timestamp units per second.
    pub fn clock_rate(self) -> u32 {
        match self {
            Self::Opus => 48000,
            _ => 8000,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Pcmu => "PCMU",
            Self::Pcma => "PCMA",
            Self::G722 => "G722",
            Self::Opus => "opus",
            Self::TelephoneEvent => "telephone-event",
            Self::ComfortNoise => "CN",
        }
    }
}

/// Looks up a payload type: the sending leg's SDP, the other leg's, then the static table.
pub fn resolve(payload_type: u8, own: &[Codec], other: &[Codec]) -> Option<AudioCodec> {
    let by_map = |map: &[Codec]| {
        map.iter()
            .find(|c| c.payload_type == payload_type)
            .map(AudioCodec::identify)
    };
    match by_map(own).or_else(|| by_map(other)) {
        // The SDP named it: known or not, the map decides.
        Some(known) => known,
        None => AudioCodec::from_static(payload_type),
    }
}

/// A payload the decoder refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{codec} payload of {len} bytes could not be decoded: {reason}")]
pub struct DecodeError {
    pub codec: &'static str,
    pub len: usize,
    pub reason: String,
}

/// Largest Opus frame: 120 ms at 48 kHz.
const OPUS_MAX_FRAME: usize = 5760;

/// Decoder state of one stream.
pub enum Decoder {
    Pcmu,
    Pcma,
    G722(Box<G722Decoder>),
    Opus {
        decoder: Box<opus_pure::OpusDecoder>,
        scratch: Box<[i16; OPUS_MAX_FRAME]>,
    },
}

impl std::fmt::Debug for Decoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Pcmu => "Decoder::Pcmu",
            Self::Pcma => "Decoder::Pcma",
            Self::G722(_) => "Decoder::G722",
            Self::Opus { .. } => "Decoder::Opus",
        })
    }
}

impl Decoder {
    /// A decoder for an audio codec; None for telephone events and comfort noise.
    pub fn new(codec: AudioCodec) -> Option<Self> {
        Some(match codec {
            AudioCodec::Pcmu => Self::Pcmu,
            AudioCodec::Pcma => Self::Pcma,
            AudioCodec::G722 => Self::G722(Box::default()),
            // Mono output: libopus (and this port of it) downmixes a stereo stream.
            AudioCodec::Opus => Self::Opus {
                decoder: Box::new(opus_pure::OpusDecoder::new(48000, 1).ok()?),
                scratch: Box::new([0; OPUS_MAX_FRAME]),
            },
            AudioCodec::TelephoneEvent | AudioCodec::ComfortNoise => return None,
        })
    }

    /// Decodes one RTP payload, appending the samples to `out`.
    pub fn decode(&mut self, payload: &[u8], out: &mut Vec<i16>) -> Result<(), DecodeError> {
        match self {
            Self::Pcmu => out.extend(payload.iter().map(|&b| ulaw_to_linear(b))),
            Self::Pcma => out.extend(payload.iter().map(|&b| alaw_to_linear(b))),
            Self::G722(decoder) => decoder.decode(payload, out),
            Self::Opus { decoder, scratch } => {
                if payload.is_empty() {
                    return Err(DecodeError {
                        codec: "opus",
                        len: 0,
                        reason: "empty payload".into(),
                    });
                }
                let samples = decoder
                    .decode_s16(payload, OPUS_MAX_FRAME, &mut scratch[..])
                    .map_err(|error| DecodeError {
                        codec: "opus",
                        len: payload.len(),
                        reason: error.to_string(),
                    })?;
                out.extend_from_slice(&scratch[..samples.min(OPUS_MAX_FRAME)]);
            }
        }
        Ok(())
    }
}

/// The payload of an RTP packet (RFC 3550 section 5.1): after the fixed header, the CSRC list
/// and any header extension, without padding. None when the lengths do not add up.
pub fn rtp_payload(packet: &[u8]) -> Option<&[u8]> {
    if packet.len() < 12 || packet[0] >> 6 != 2 {
        return None;
    }
    let csrc = usize::from(packet[0] & 0x0f) * 4;
    let mut start = 12 + csrc;
    if packet[0] & 0x10 != 0 {
        let extension = packet.get(start..start + 4)?;
        let words = usize::from(u16::from_be_bytes([extension[2], extension[3]]));
        start += 4 + words * 4;
    }
    let mut end = packet.len();
    if packet[0] & 0x20 != 0 {
        let padding = usize::from(*packet.last()?);
        end = end.checked_sub(padding)?;
    }
    packet.get(start..end)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn codec(pt: u8, name: &str, rate: u32) -> Codec {
        Codec {
            payload_type: pt,
            encoding: name.into(),
            clock_rate: rate,
            channels: 1,
        }
    }

    #[test]
    fn payload_types_resolve_through_both_sdps_then_the_static_table() {
        let caller = [
            codec(111, "opus", 48000),
            codec(101, "telephone-event", 8000),
        ];
        let callee = [codec(96, "G722", 8000)];
        assert_eq!(resolve(111, &caller, &callee), Some(AudioCodec::Opus));
        assert_eq!(resolve(96, &caller, &callee), Some(AudioCodec::G722));
        assert_eq!(resolve(101, &caller, &[]), Some(AudioCodec::TelephoneEvent));
        assert_eq!(resolve(0, &[], &[]), Some(AudioCodec::Pcmu));
        assert_eq!(resolve(13, &[], &[]), Some(AudioCodec::ComfortNoise));
        // A dynamic type nobody declared, and a codec the recorder cannot decode.
        assert_eq!(resolve(100, &caller, &callee), None);
        assert_eq!(resolve(18, &[codec(18, "G729", 8000)], &[]), None);
        // An SDP that remaps a static number wins over the table.
        assert_eq!(
            resolve(8, &[codec(8, "PCMU", 8000)], &[]),
            Some(AudioCodec::Pcmu)
        );
        assert_eq!(AudioCodec::G722.sample_rate(), Some(16000));
        assert_eq!(AudioCodec::TelephoneEvent.sample_rate(), None);
    }

    #[test]
    fn rtp_payload_skips_csrcs_extensions_and_padding() {
        let mut packet = vec![0x80, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1];
        packet.extend_from_slice(&[1, 2, 3]);
        assert_eq!(rtp_payload(&packet), Some(&[1u8, 2, 3][..]));
        // One CSRC, a one-word extension, two bytes of padding.
        let mut packet = vec![0xb1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1, 9, 9, 9, 9];
        packet.extend_from_slice(&[0xbe, 0xde, 0, 1, 7, 7, 7, 7, 5, 6, 0, 2]);
        assert_eq!(rtp_payload(&packet), Some(&[5u8, 6][..]));
        // An extension longer than the packet.
        let packet = [0x90, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1, 0xbe, 0xde, 0, 9];
        assert_eq!(rtp_payload(&packet), None);
        assert_eq!(rtp_payload(&[0x80; 4]), None);
    }

    #[test]
    fn decoders_produce_the_codecs_sample_counts() {
        let mut out = Vec::new();
        Decoder::new(AudioCodec::Pcmu)
            .unwrap()
            .decode(&[0xff; 160], &mut out)
            .unwrap();
        assert_eq!(out, vec![0; 160]);
        out.clear();
        Decoder::new(AudioCodec::G722)
            .unwrap()
            .decode(&[0; 160], &mut out)
            .unwrap();
        assert_eq!(out.len(), 320);
        assert!(Decoder::new(AudioCodec::TelephoneEvent).is_none());
        let mut opus = Decoder::new(AudioCodec::Opus).unwrap();
        assert!(opus.decode(&[], &mut out).is_err());
        // TOC 0xF8: CELT fullband 20 ms, one frame; an empty frame decodes to 960 samples.
        out.clear();
        opus.decode(&[0xf8], &mut out).unwrap();
        assert_eq!(out.len(), 960);
    }
}
