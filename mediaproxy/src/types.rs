//! Domain types shared by the relay core, the control plane and the gRPC edge.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// Why an identifier from a request was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field} must be 1 to {max} printable ASCII characters without spaces")]
pub struct InvalidId {
    pub field: &'static str,
    pub max: usize,
}

fn parse_id(text: &str, field: &'static str, max: usize) -> Result<Arc<str>, InvalidId> {
    let printable = text.bytes().all(|b| (0x21..=0x7e).contains(&b));
    if text.is_empty() || text.len() > max || !printable {
        return Err(InvalidId { field, max });
    }
    Ok(Arc::from(text))
}

/// The one id of a call (DESIGN section 5): relay, recording and CDR are keyed by it.
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

/// The signaling instance that owns a call and renews its lease.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Owner(Arc<str>);

impl Owner {
    pub fn parse(text: &str) -> Result<Self, InvalidId> {
        parse_id(text, "owner", 128).map(Self)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for Owner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
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
}

/// One `a=rtpmap` entry (or a static payload type in use).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Codec {
    pub payload_type: u8,
    pub encoding: String,
    pub clock_rate: u32,
    pub channels: u8,
}

/// Where a leg wants one media line's packets, from its SDP (validated).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteMedia {
    pub index: usize,
    pub target: RemoteTarget,
    pub codecs: Vec<Codec>,
    pub direction: Direction,
}

/// The destination part of a [`RemoteMedia`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RemoteTarget {
    /// A real address; `rtcp` equals `rtp` under RTCP multiplexing.
    Address { rtp: SocketAddr, rtcp: SocketAddr },
    /// `c=0.0.0.0` (or `::`): do not send to this leg.
    Hold,
    /// Port 0: the media line is disabled.
    Disabled,
}

/// Ties monotonic instants to wall-clock milliseconds without a syscall per conversion.
#[derive(Debug, Clone, Copy)]
pub struct WallClock {
    instant: Instant,
    unix_ms: u64,
}

impl WallClock {
    pub fn now() -> Self {
        let unix_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        Self {
            instant: Instant::now(),
            unix_ms,
        }
    }

    pub fn unix_ms(&self, at: Instant) -> u64 {
        match at.checked_duration_since(self.instant) {
            Some(after) => self.unix_ms + after.as_millis() as u64,
            None => self
                .unix_ms
                .saturating_sub(self.instant.duration_since(at).as_millis() as u64),
        }
    }
}

/// Why a received datagram was not relayed. Bounded: these are metric label values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    UnknownSource,
    BeforeLatching,
    TooShort,
    NotRtp,
    NoDestination,
    SendError,
}

impl DropReason {
    pub const ALL: [Self; 6] = [
        Self::UnknownSource,
        Self::BeforeLatching,
        Self::TooShort,
        Self::NotRtp,
        Self::NoDestination,
        Self::SendError,
    ];

    pub fn index(self) -> usize {
        self as usize
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::UnknownSource => "unknown_source",
            Self::BeforeLatching => "before_latching",
            Self::TooShort => "too_short",
            Self::NotRtp => "not_rtp",
            Self::NoDestination => "no_destination",
            Self::SendError => "send_error",
        }
    }
}

/// Why a session ended. Bounded: these are metric label values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReleaseReason {
    /// The owner released it.
    Released,
    /// No media for the media (or hold) timeout.
    Timeout,
    /// The owner stopped renewing its lease.
    LeaseExpired,
    /// The proxy shut down with the call still up.
    Shutdown,
}

impl ReleaseReason {
    pub const ALL: [Self; 4] = [
        Self::Released,
        Self::Timeout,
        Self::LeaseExpired,
        Self::Shutdown,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Released => "released",
            Self::Timeout => "timeout",
            Self::LeaseExpired => "lease_expired",
            Self::Shutdown => "shutdown",
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
        assert_eq!(Owner::parse("").unwrap_err().field, "owner");
    }

    #[test]
    fn wall_clock_maps_instants_both_ways() {
        let clock = WallClock::now();
        let later = clock.instant + std::time::Duration::from_millis(1500);
        assert_eq!(clock.unix_ms(later), clock.unix_ms + 1500);
    }
}
