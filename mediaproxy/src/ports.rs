//! The RTP port pool: even RTP ports, RTCP on the next odd port, from a configured range.
//!
//! Pairs are handed out in random order (as rtpengine does): the next call's ports cannot be
//! guessed from the last one's, so a stranger who saw one call's ports cannot aim RTP at the
//! next call's before its phones do. Released pairs wait out a quarantine before they are
//! handed out again, so that late packets of an ended call never reach a new one. A pair
//! whose bind failed (another process holds it) goes to the back of the quarantine too: it
//! is skipped now and retried later, never lost. Pure bookkeeping; binding is the caller's
//! job.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

/// An inclusive port range as given on the command line (`--ports 30000-39999`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortRange {
    pub min: u16,
    pub max: u16,
}

impl PortRange {
    /// Even RTP ports whose RTCP port (RTP + 1) also lies in the range.
    pub(crate) fn pairs(&self) -> impl Iterator<Item = u16> + use<> {
        let first = self.min + (self.min % 2);
        let max = self.max;
        (first..max).step_by(2).filter(move |port| *port < max)
    }

    /// How many RTP/RTCP port pairs the range holds.
    pub fn pair_count(&self) -> usize {
        self.pairs().count()
    }

    /// Whether `port` lies in the range.
    pub fn contains(&self, port: u16) -> bool {
        (self.min..=self.max).contains(&port)
    }
}

impl std::str::FromStr for PortRange {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let (min, max) = text
            .split_once('-')
            .ok_or_else(|| format!("expected MIN-MAX, got {text:?}"))?;
        let parse = |part: &str| {
            part.trim()
                .parse::<u16>()
                .map_err(|_| format!("{part:?} is not a port number"))
        };
        let range = Self {
            min: parse(min)?,
            max: parse(max)?,
        };
        if range.min == 0 {
            return Err("port 0 cannot be part of the range".into());
        }
        if range.pair_count() == 0 {
            return Err(format!(
                "{text} holds no RTP/RTCP pair (an even port and the next one)"
            ));
        }
        Ok(range)
    }
}

impl std::fmt::Display for PortRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.min, self.max)
    }
}

/// Free and quarantined RTP ports.
#[derive(Debug)]
pub(crate) struct PortPool {
    free: VecDeque<u16>,
    quarantine: VecDeque<(Instant, u16)>,
    quarantine_for: Duration,
    total_pairs: usize,
    /// Picks among the free pairs; seeded from the operating system.
    rng: StdRng,
}

impl PortPool {
    /// A pool over `range` whose order is seeded from the operating system (a failing OS
    /// source leaves it seeded by the clock: the order is then guessable, never wrong).
    pub(crate) fn new(range: PortRange, quarantine_for: Duration) -> Self {
        let mut seed = [0u8; 32];
        if getrandom::fill(&mut seed).is_err() {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default()
                .as_nanos();
            seed[..16].copy_from_slice(&nanos.to_le_bytes());
        }
        Self::with_seed(range, quarantine_for, seed)
    }

    /// A pool whose order is fixed by `seed` (tests).
    pub(crate) fn with_seed(range: PortRange, quarantine_for: Duration, seed: [u8; 32]) -> Self {
        let free: VecDeque<u16> = range.pairs().collect();
        Self {
            total_pairs: free.len(),
            free,
            quarantine: VecDeque::new(),
            quarantine_for,
            rng: StdRng::from_seed(seed),
        }
    }

    /// Takes a free RTP port at random (the pair is `port`, `port + 1`).
    pub(crate) fn take(&mut self, now: Instant) -> Option<u16> {
        self.expire(now);
        if self.free.is_empty() {
            return None;
        }
        let index = self.rng.random_range(0..self.free.len());
        self.free.swap_remove_back(index)
    }

    /// Returns a pair whose call ended; usable again after the quarantine.
    pub(crate) fn release(&mut self, now: Instant, port: u16) {
        self.quarantine.push_back((now + self.quarantine_for, port));
    }

    /// A pair that could not be bound: skip it for now, retry after the quarantine.
    pub(crate) fn skip(&mut self, now: Instant, port: u16) {
        self.release(now, port);
    }

    /// A pair taken and not used through no fault of its own (the process had no descriptor
    /// to bind it with): free again at once.
    pub(crate) fn give_back(&mut self, port: u16) {
        self.free.push_back(port);
    }

    fn expire(&mut self, now: Instant) {
        while let Some(&(until, port)) = self.quarantine.front() {
            if until > now {
                break;
            }
            self.quarantine.pop_front();
            self.free.push_back(port);
        }
    }

    /// Pairs that can be handed out now.
    pub(crate) fn free_pairs(&mut self, now: Instant) -> usize {
        self.expire(now);
        self.free.len()
    }

    pub(crate) fn total_pairs(&self) -> usize {
        self.total_pairs
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn range_yields_even_pairs_inside_the_range() {
        let range: PortRange = "30001-30010".parse().unwrap();
        assert_eq!(
            range.pairs().collect::<Vec<_>>(),
            vec![30002, 30004, 30006, 30008]
        );
        let range: PortRange = "30000-30001".parse().unwrap();
        assert_eq!(range.pair_count(), 1);
        assert!("30000-30000".parse::<PortRange>().is_err());
        assert!("30000".parse::<PortRange>().is_err());
        assert!("a-b".parse::<PortRange>().is_err());
    }

    #[test]
    fn ports_are_handed_out_in_an_order_that_cannot_be_guessed() {
        let range: PortRange = "40000-49999".parse().unwrap();
        let now = Instant::now();
        let order = |seed: u8| {
            let mut pool = PortPool::with_seed(range, Duration::from_secs(5), [seed; 32]);
            (0..200)
                .map(|_| pool.take(now).unwrap())
                .collect::<Vec<_>>()
        };
        let (one, other) = (order(1), order(2));
        assert_ne!(one, other, "another seed, another order");
        assert_eq!(one, order(1), "a seed repeats its order");
        // Not a walk: few consecutive takes are neighbours, and they spread over the range.
        let neighbours = one.windows(2).filter(|w| w[0].abs_diff(w[1]) == 2).count();
        assert!(neighbours < 5, "{neighbours} neighbouring takes in {one:?}");
        assert!(one.iter().any(|&p| p < 42000) && one.iter().any(|&p| p > 48000));
        let mut unique = one.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), one.len(), "no pair twice");
        // Every pair is handed out once before the pool is empty.
        let mut pool = PortPool::new("40000-40099".parse().unwrap(), Duration::from_secs(5));
        let mut all: Vec<u16> = std::iter::from_fn(|| pool.take(now)).collect();
        all.sort_unstable();
        assert_eq!(all, (40000..40099).step_by(2).collect::<Vec<_>>());
    }

    #[test]
    fn a_pair_given_back_is_free_again_at_once() {
        let now = Instant::now();
        let mut pool = PortPool::new("40000-40003".parse().unwrap(), Duration::from_secs(5));
        let port = pool.take(now).unwrap();
        pool.give_back(port);
        assert_eq!(pool.free_pairs(now), pool.total_pairs());
        let mut both = [pool.take(now).unwrap(), pool.take(now).unwrap()];
        both.sort_unstable();
        assert_eq!(both, [40000, 40002]);
    }

    #[test]
    fn released_ports_wait_out_the_quarantine() {
        let start = Instant::now();
        let mut pool = PortPool::new("40000-40003".parse().unwrap(), Duration::from_secs(5));
        let a = pool.take(start).unwrap();
        let b = pool.take(start).unwrap();
        assert_eq!(pool.take(start), None);
        pool.release(start, a);
        assert_eq!(pool.take(start + Duration::from_secs(4)), None);
        assert_eq!(pool.take(start + Duration::from_secs(5)), Some(a));
        pool.skip(start, b);
        assert_eq!(pool.free_pairs(start + Duration::from_secs(6)), 1);
        assert_eq!(pool.total_pairs(), 2);
    }
}
