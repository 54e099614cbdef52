//! Domain types shared by the relay core, the control plane and the gRPC edge. Those that
//! signaling speaks too (call id, leg, media kind, direction, codec) live in the `proto`
//! crate and are re-exported here.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use proto::domain::parse_id;
pub use proto::domain::{CallId, Codec, Direction, InvalidId, Leg, MediaKind};

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

/// Where a leg wants one media line's packets, from its SDP (validated).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteMedia {
    pub index: usize,
    pub target: RemoteTarget,
    pub codecs: Vec<Codec>,
    pub direction: Direction,
    /// Where the leg's SIP messages come from: a phone behind a NAT sends its media from
    /// that address too, so a source with this IP ranks with the SDP's address.
    pub signaling_ip: Option<std::net::IpAddr>,
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
///
/// Every copy shares the steps of the wall clock seen so far ([`WallClock::follow`]): times
/// reported after a step (an NTP correction, a resumed VM) are on the new wall clock, while
/// every timer and duration stays on the monotonic clock.
#[derive(Debug, Clone)]
pub struct WallClock {
    instant: Instant,
    unix_ms: u64,
    /// The wall clock's steps since `instant`, in milliseconds (forward positive).
    steps_ms: Arc<AtomicI64>,
}

/// How far the wall clock may drift from its projection before it counts as stepped. NTP
/// slews both clocks alike; only a step parts them.
pub const CLOCK_STEP_MS: i64 = 1000;

fn system_unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl WallClock {
    pub fn now() -> Self {
        Self::anchored(Instant::now(), system_unix_ms())
    }

    /// A clock on which `instant` is `unix_ms` milliseconds since the Unix epoch.
    pub fn anchored(instant: Instant, unix_ms: u64) -> Self {
        Self {
            instant,
            unix_ms,
            steps_ms: Arc::new(AtomicI64::new(0)),
        }
    }

    /// Milliseconds since the epoch at `self.instant`, on the wall clock as last followed.
    fn base_ms(&self) -> u64 {
        self.unix_ms
            .saturating_add_signed(self.steps_ms.load(Ordering::Relaxed))
    }

    /// Reads the wall clock and, when it has moved more than [`CLOCK_STEP_MS`] from this
    /// clock's projection, moves every copy onto it; returns the step in milliseconds.
    pub fn follow(&self) -> Option<i64> {
        self.follow_at(Instant::now(), system_unix_ms())
    }

    /// [`WallClock::follow`] with the wall clock read by the caller: `unix_ms` at `now`.
    pub fn follow_at(&self, now: Instant, unix_ms: u64) -> Option<i64> {
        let step = unix_ms as i64 - self.unix_ms(now) as i64;
        if step.abs() <= CLOCK_STEP_MS {
            return None;
        }
        self.steps_ms.fetch_add(step, Ordering::Relaxed);
        Some(step)
    }

    /// Microseconds since the Unix epoch at `at` (for pcap records).
    pub fn unix_us(&self, at: Instant) -> u64 {
        let base = self.base_ms() * 1000;
        match at.checked_duration_since(self.instant) {
            Some(after) => base + after.as_micros() as u64,
            None => base.saturating_sub(self.instant.duration_since(at).as_micros() as u64),
        }
    }

    pub fn unix_ms(&self, at: Instant) -> u64 {
        let base = self.base_ms();
        match at.checked_duration_since(self.instant) {
            Some(after) => base + after.as_millis() as u64,
            None => base.saturating_sub(self.instant.duration_since(at).as_millis() as u64),
        }
    }

    /// The instant that was `unix_ms` milliseconds since the Unix epoch on this clock (the
    /// anchor's instant, for one before the process's monotonic clock began).
    pub fn at(&self, unix_ms: u64) -> Instant {
        let base = self.base_ms();
        if unix_ms >= base {
            self.instant + Duration::from_millis(unix_ms - base)
        } else {
            self.instant
                .checked_sub(Duration::from_millis(base - unix_ms))
                .unwrap_or(self.instant)
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
    fn owners_are_printable_and_bounded() {
        assert!(Owner::parse("signaling-5060-1234").is_ok());
        assert_eq!(Owner::parse("").unwrap_err().field, "owner");
        assert!(Owner::parse(&"o".repeat(129)).is_err());
    }

    #[test]
    fn wall_clock_maps_instants_both_ways() {
        let clock = WallClock::now();
        let later = clock.instant + std::time::Duration::from_millis(1500);
        assert_eq!(clock.unix_ms(later), clock.unix_ms + 1500);
    }

    #[test]
    fn every_copy_of_the_wall_clock_follows_a_step() {
        let clock = WallClock::now();
        let copy = clock.clone();
        let at = clock.instant + std::time::Duration::from_secs(10);
        assert_eq!(clock.follow_at(at, clock.unix_ms + 10_800), None);
        assert_eq!(
            clock.follow_at(at, clock.unix_ms + 10_000 - 3_600_000),
            Some(-3_600_000)
        );
        assert_eq!(copy.unix_ms(at), clock.unix_ms + 10_000 - 3_600_000);
        assert_eq!(
            copy.unix_us(at),
            (clock.unix_ms + 10_000 - 3_600_000) * 1000
        );
        // Back again, from the stepped projection.
        assert_eq!(clock.follow_at(at, clock.unix_ms + 10_000), Some(3_600_000));
        assert_eq!(copy.unix_ms(at), clock.unix_ms + 10_000);
    }
}
