//! The domain types both services speak, with their checked conversions from the wire.
//!
//! Generated protobuf enums carry an `UNSPECIFIED` zero value and arrive as bare `i32`s;
//! these types cannot hold either. Conversions from the wire are `TryFrom` (or `from_wire`
//! for the raw `i32` of an enum field) and fail with a [`WireError`] whose text names what
//! was wrong, so a server can answer `INVALID_ARGUMENT` with it and a client can say which
//! reply it could not read. Conversions to the wire cannot fail.

use std::sync::Arc;

use crate::v1 as pb;

/// A wire value that does not convert into a domain type; the text names the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct WireError(pub String);

/// Why an identifier was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field} must be 1 to {max} printable ASCII characters without spaces")]
pub struct InvalidId {
    pub field: &'static str,
    pub max: usize,
}

/// Checks an identifier: 1 to `max` printable ASCII characters, no spaces.
pub fn parse_id(text: &str, field: &'static str, max: usize) -> Result<Arc<str>, InvalidId> {
    let printable = text.bytes().all(|b| (0x21..=0x7e).contains(&b));
    if text.is_empty() || text.len() > max || !printable {
        return Err(InvalidId { field, max });
    }
    Ok(Arc::from(text))
}

/// The one id of a call (docs/architecture.md, "Call identity"): relay, recording and CDR are
/// keyed by it. It is the caller leg's SIP Call-ID.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CallId(Arc<str>);

impl CallId {
    pub fn parse(text: &str) -> Result<Self, InvalidId> {
        parse_id(text, "call_id", 256).map(Self)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for CallId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// A call id compares with the text it was parsed from (a log line, a test's literal).
impl PartialEq<str> for CallId {
    fn eq(&self, other: &str) -> bool {
        &*self.0 == other
    }
}

impl PartialEq<&str> for CallId {
    fn eq(&self, other: &&str) -> bool {
        &*self.0 == *other
    }
}

/// Packet and byte counters of one flow (RTP or RTCP, received or sent), with the Unix
/// milliseconds of its first and last packet (0 when none).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    pub packets: u64,
    /// UDP payload bytes.
    pub bytes: u64,
    pub first_unix_ms: u64,
    pub last_unix_ms: u64,
}

impl From<pb::Counters> for Counters {
    fn from(c: pb::Counters) -> Self {
        Self {
            packets: c.packets,
            bytes: c.bytes,
            first_unix_ms: c.first_unix_ms,
            last_unix_ms: c.last_unix_ms,
        }
    }
}

impl From<Counters> for pb::Counters {
    fn from(c: Counters) -> Self {
        Self {
            packets: c.packets,
            bytes: c.bytes,
            first_unix_ms: c.first_unix_ms,
            last_unix_ms: c.last_unix_ms,
        }
    }
}

/// Receive quality of the RTP one leg sent on one media line, as RFC 3550 appendix A
/// computes it: what the proxy measures and signaling's CDR and verdict read.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct RtpQuality {
    /// SSRC of the current stream.
    pub ssrc: u32,
    /// Packets expected from the sequence numbers seen (A.3), over every SSRC.
    pub expected: u64,
    /// Expected minus distinct packets received.
    pub lost: i64,
    /// Packets whose sequence number was already received.
    pub duplicates: u64,
    /// Packets that arrived after a higher sequence number.
    pub out_of_order: u64,
    /// Interarrival jitter (A.8) in milliseconds, current and the highest seen.
    pub jitter_ms: f64,
    pub max_jitter_ms: f64,
    /// Times the SSRC changed.
    pub ssrc_changes: u32,
    /// Payload type of the last RTP packet.
    pub last_payload_type: u8,
}

impl From<pb::RtpQuality> for RtpQuality {
    /// A payload type over 127 (which RTP cannot carry) reads as 0.
    fn from(q: pb::RtpQuality) -> Self {
        Self {
            ssrc: q.ssrc,
            expected: q.expected,
            lost: q.lost,
            duplicates: q.duplicates,
            out_of_order: q.out_of_order,
            jitter_ms: q.jitter_ms,
            max_jitter_ms: q.max_jitter_ms,
            ssrc_changes: q.ssrc_changes,
            last_payload_type: u8::try_from(q.last_payload_type)
                .ok()
                .filter(|pt| *pt < 128)
                .unwrap_or(0),
        }
    }
}

impl From<RtpQuality> for pb::RtpQuality {
    fn from(q: RtpQuality) -> Self {
        Self {
            ssrc: q.ssrc,
            expected: q.expected,
            lost: q.lost,
            duplicates: q.duplicates,
            out_of_order: q.out_of_order,
            jitter_ms: q.jitter_ms,
            max_jitter_ms: q.max_jitter_ms,
            ssrc_changes: q.ssrc_changes,
            last_payload_type: u32::from(q.last_payload_type),
        }
    }
}

/// Which side of the B2BUA call a leg faces.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Leg {
    Caller,
    Callee,
}

impl Leg {
    pub const BOTH: [Self; 2] = [Self::Caller, Self::Callee];

    pub fn index(self) -> usize {
        match self {
            Self::Caller => 0,
            Self::Callee => 1,
        }
    }

    pub fn other(self) -> Self {
        match self {
            Self::Caller => Self::Callee,
            Self::Callee => Self::Caller,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Caller => "caller",
            Self::Callee => "callee",
        }
    }

    /// The raw value of a `Leg` field; UNSPECIFIED and unknown values are refused.
    pub fn from_wire(value: i32) -> Result<Self, WireError> {
        pb::Leg::try_from(value)
            .ok()
            .and_then(|leg| Self::try_from(leg).ok())
            .ok_or_else(|| WireError(format!("leg must be LEG_CALLER or LEG_CALLEE, got {value}")))
    }

    /// The raw value for a `Leg` field.
    pub fn to_wire(self) -> i32 {
        pb::Leg::from(self) as i32
    }
}

impl TryFrom<pb::Leg> for Leg {
    type Error = WireError;

    fn try_from(leg: pb::Leg) -> Result<Self, WireError> {
        match leg {
            pb::Leg::Caller => Ok(Self::Caller),
            pb::Leg::Callee => Ok(Self::Callee),
            pb::Leg::Unspecified => Err(WireError(
                "leg must be LEG_CALLER or LEG_CALLEE, got LEG_UNSPECIFIED".into(),
            )),
        }
    }
}

impl From<Leg> for pb::Leg {
    fn from(leg: Leg) -> Self {
        match leg {
            Leg::Caller => Self::Caller,
            Leg::Callee => Self::Callee,
        }
    }
}

/// The kind of an SDP media line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MediaKind {
    Audio,
    Video,
    /// Relayed as opaque datagrams (T.38 UDPTL, application).
    Other,
}

impl MediaKind {
    /// The SDP media name: `audio`, `video`, or `other` for anything else.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Audio => "audio",
            Self::Video => "video",
            Self::Other => "other",
        }
    }

    /// Audio and video carry RTP that the relay parses for statistics.
    pub fn is_rtp(self) -> bool {
        matches!(self, Self::Audio | Self::Video)
    }

    /// The raw value of a `MediaKind` field named `field`; UNSPECIFIED is refused.
    pub fn from_wire(value: i32, field: &str) -> Result<Self, WireError> {
        pb::MediaKind::try_from(value)
            .ok()
            .and_then(|kind| Self::try_from(kind).ok())
            .ok_or_else(|| {
                WireError(format!(
                    "{field} must be a MediaKind other than UNSPECIFIED, got {value}"
                ))
            })
    }

    /// The raw value for a `MediaKind` field.
    pub fn to_wire(self) -> i32 {
        pb::MediaKind::from(self) as i32
    }
}

impl TryFrom<pb::MediaKind> for MediaKind {
    type Error = WireError;

    fn try_from(kind: pb::MediaKind) -> Result<Self, WireError> {
        match kind {
            pb::MediaKind::Audio => Ok(Self::Audio),
            pb::MediaKind::Video => Ok(Self::Video),
            pb::MediaKind::Other => Ok(Self::Other),
            pb::MediaKind::Unspecified => Err(WireError(
                "kind must be a MediaKind other than UNSPECIFIED".into(),
            )),
        }
    }
}

impl From<MediaKind> for pb::MediaKind {
    fn from(kind: MediaKind) -> Self {
        match kind {
            MediaKind::Audio => Self::Audio,
            MediaKind::Video => Self::Video,
            MediaKind::Other => Self::Other,
        }
    }
}

/// SDP direction attribute (RFC 3264 section 5.1) as a leg declared it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Direction {
    #[default]
    SendRecv,
    SendOnly,
    RecvOnly,
    Inactive,
}

impl Direction {
    /// The SDP attribute name: `sendrecv`, `sendonly`, `recvonly`, `inactive`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::SendRecv => "sendrecv",
            Self::SendOnly => "sendonly",
            Self::RecvOnly => "recvonly",
            Self::Inactive => "inactive",
        }
    }

    /// Whether the leg declaring this direction intends to send media.
    pub fn sends(self) -> bool {
        matches!(self, Self::SendRecv | Self::SendOnly)
    }

    /// The raw value of a `Direction` field: UNSPECIFIED (and an unknown value from a newer
    /// peer) is SENDRECV, the SDP default (RFC 3264 section 5.1).
    pub fn from_wire(value: i32) -> Self {
        pb::Direction::try_from(value).map_or(Self::SendRecv, Self::from)
    }

    /// The raw value for a `Direction` field.
    pub fn to_wire(self) -> i32 {
        pb::Direction::from(self) as i32
    }
}

impl From<pb::Direction> for Direction {
    fn from(direction: pb::Direction) -> Self {
        match direction {
            pb::Direction::Sendonly => Self::SendOnly,
            pb::Direction::Recvonly => Self::RecvOnly,
            pb::Direction::Inactive => Self::Inactive,
            pb::Direction::Sendrecv | pb::Direction::Unspecified => Self::SendRecv,
        }
    }
}

impl From<Direction> for pb::Direction {
    fn from(direction: Direction) -> Self {
        match direction {
            Direction::SendRecv => Self::Sendrecv,
            Direction::SendOnly => Self::Sendonly,
            Direction::RecvOnly => Self::Recvonly,
            Direction::Inactive => Self::Inactive,
        }
    }
}

/// One `a=rtpmap` entry (or a static payload type in use).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Codec {
    pub payload_type: u8,
    pub encoding: String,
    pub clock_rate: u32,
    pub channels: u8,
}

impl TryFrom<&pb::Codec> for Codec {
    type Error = WireError;

    /// Refuses a payload type outside 0-127 and a zero clock rate; a channel count of 0 reads
    /// as 1 (the SDP default) and one above 255 as 255.
    fn try_from(codec: &pb::Codec) -> Result<Self, WireError> {
        let payload_type = u8::try_from(codec.payload_type)
            .ok()
            .filter(|pt| *pt <= 127)
            .ok_or_else(|| {
                WireError(format!(
                    "payload_type {} is not an RTP payload type (0-127)",
                    codec.payload_type
                ))
            })?;
        if codec.clock_rate == 0 {
            return Err(WireError("clock_rate must be positive".into()));
        }
        Ok(Self {
            payload_type,
            encoding: codec.encoding.clone(),
            clock_rate: codec.clock_rate,
            channels: u8::try_from(codec.channels.max(1)).unwrap_or(u8::MAX),
        })
    }
}

impl From<&Codec> for pb::Codec {
    fn from(codec: &Codec) -> Self {
        Self {
            payload_type: u32::from(codec.payload_type),
            encoding: codec.encoding.clone(),
            clock_rate: codec.clock_rate,
            channels: u32::from(codec.channels),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_printable_and_bounded() {
        assert!(CallId::parse("a84b4c76e66710@pc33.atlanta.com").is_ok());
        assert!(CallId::parse("").is_err());
        assert!(CallId::parse("has space").is_err());
        assert!(CallId::parse(&"x".repeat(257)).is_err());
    }

    #[test]
    fn enums_refuse_unspecified_and_unknown_values_and_round_trip() {
        for leg in Leg::BOTH {
            assert_eq!(Leg::from_wire(leg.to_wire()), Ok(leg));
        }
        assert!(Leg::from_wire(0).unwrap_err().0.contains("LEG_CALLER"));
        assert!(Leg::from_wire(99).is_err());
        for kind in [MediaKind::Audio, MediaKind::Video, MediaKind::Other] {
            assert_eq!(MediaKind::from_wire(kind.to_wire(), "kind"), Ok(kind));
        }
        let error = MediaKind::from_wire(0, "media[1]").unwrap_err();
        assert_eq!(
            error.0,
            "media[1] must be a MediaKind other than UNSPECIFIED, got 0"
        );
        for direction in [
            Direction::SendRecv,
            Direction::SendOnly,
            Direction::RecvOnly,
            Direction::Inactive,
        ] {
            assert_eq!(Direction::from_wire(direction.to_wire()), direction);
        }
        assert_eq!(Direction::from_wire(0), Direction::SendRecv);
        assert_eq!(Direction::from_wire(42), Direction::SendRecv);
    }

    #[test]
    fn codecs_are_checked_from_the_wire() {
        let wire = |payload_type, clock_rate, channels| pb::Codec {
            payload_type,
            encoding: "opus".into(),
            clock_rate,
            channels,
        };
        let opus = Codec::try_from(&wire(111, 48_000, 2)).unwrap();
        assert_eq!((opus.payload_type, opus.channels), (111, 2));
        assert_eq!(pb::Codec::from(&opus), wire(111, 48_000, 2));
        assert_eq!(Codec::try_from(&wire(0, 8000, 0)).unwrap().channels, 1);
        assert!(
            Codec::try_from(&wire(128, 8000, 1))
                .unwrap_err()
                .0
                .contains("0-127")
        );
        assert!(Codec::try_from(&wire(0, 0, 1)).is_err());
    }
}
