//! The wall clock of a process: monotonic instants projected onto Unix time, following the
//! wall clock's steps (an NTP correction at boot, a resumed VM) while every timer and
//! duration stays monotonic.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

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

#[cfg(test)]
mod tests {
    use super::*;

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
