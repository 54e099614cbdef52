//! Domain types shared by the relay core, the control plane and the gRPC edge. Those that
//! signaling speaks too (call id, leg, media kind, direction, codec) live in the `proto`
//! crate and are re-exported here.

use std::net::SocketAddr;
use std::sync::Arc;

use proto::domain::parse_id;
pub(crate) use proto::domain::{CallId, Codec, Direction, InvalidId, Leg, MediaKind};
pub(crate) use service_kit::clock::WallClock;

/// The signaling instance that owns a call and renews its lease.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct Owner(Arc<str>);

impl Owner {
    pub(crate) fn parse(text: &str) -> Result<Self, InvalidId> {
        parse_id(text, "owner", 128).map(Self)
    }

    pub(crate) fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for Owner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Where a leg wants one media line's packets, from its SDP (validated).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RemoteMedia {
    pub(crate) index: usize,
    pub(crate) target: RemoteTarget,
    pub(crate) codecs: Vec<Codec>,
    pub(crate) direction: Direction,
    /// Where the leg's SIP messages come from: a phone behind a NAT sends its media from
    /// that address too, so a source with this IP ranks with the SDP's address.
    pub(crate) signaling_ip: Option<std::net::IpAddr>,
}

/// The destination part of a [`RemoteMedia`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RemoteTarget {
    /// A real address; `rtcp` equals `rtp` under RTCP multiplexing.
    Address { rtp: SocketAddr, rtcp: SocketAddr },
    /// `c=0.0.0.0` (or `::`): do not send to this leg.
    Hold,
    /// Port 0: the media line is disabled.
    Disabled,
}

/// Why a received datagram was not relayed. Bounded: these are metric label values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DropReason {
    UnknownSource,
    BeforeLatching,
    TooShort,
    NotRtp,
    NoDestination,
    SendError,
}

impl DropReason {
    pub(crate) const ALL: [Self; 6] = [
        Self::UnknownSource,
        Self::BeforeLatching,
        Self::TooShort,
        Self::NotRtp,
        Self::NoDestination,
        Self::SendError,
    ];

    pub(crate) fn index(self) -> usize {
        self as usize
    }

    pub(crate) fn as_str(self) -> &'static str {
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
pub(crate) enum ReleaseReason {
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
    pub(crate) const ALL: [Self; 4] = [
        Self::Released,
        Self::Timeout,
        Self::LeaseExpired,
        Self::Shutdown,
    ];

    pub(crate) fn as_str(self) -> &'static str {
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
    fn owners_are_printable_and_bounded() {
        assert!(Owner::parse("signaling-5060-1234").is_ok());
        assert_eq!(Owner::parse("").unwrap_err().field, "owner");
        assert!(Owner::parse(&"o".repeat(129)).is_err());
    }
}
