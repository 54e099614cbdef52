//! The RTP port pool: even RTP ports, RTCP on the next odd port, from a configured range.
//!
//! Released pairs wait out a quarantine before they are handed out again, so that late
//! packets of an ended call never reach a new one. A pair whose bind failed (another process
//! holds it) goes to the back of the quarantine too: it is skipped now and retried later,
//! never lost. Pure bookkeeping; binding is the caller's job.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// An inclusive port range as given on the command line (`--ports 30000-39999`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortRange {
    pub min: u16,
    pub max: u16,
}

impl PortRange {
    /// Even RTP ports whose RTCP port (RTP + 1) also lies in the range.
    pub fn pairs(&self) -> impl Iterator<Item = u16> + use<> {
        let first = self.min + (self.min % 2);
        let max = self.max;
        (first..max).step_by(2).filter(move |port| *port < max)
    }

    pub fn pair_count(&self) -> usize {
        self.pairs().count()
    }

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
pub struct PortPool {
    free: VecDeque<u16>,
    quarantine: VecDeque<(Instant, u16)>,
    quarantine_for: Duration,
    total_pairs: usize,
}

impl PortPool {
    pub fn new(range: PortRange, quarantine_for: Duration) -> Self {
        let free: VecDeque<u16> = range.pairs().collect();
        Self {
            total_pairs: free.len(),
            free,
            quarantine: VecDeque::new(),
            quarantine_for,
        }
    }

    /// Takes the next free RTP port (the pair is `port`, `port + 1`).
    pub fn take(&mut self, now: Instant) -> Option<u16> {
        self.expire(now);
        self.free.pop_front()
    }

    /// Returns a pair whose call ended; usable again after the quarantine.
    pub fn release(&mut self, now: Instant, port: u16) {
        self.quarantine.push_back((now + self.quarantine_for, port));
    }

    /// A pair that could not be bound: skip it for now, retry after the quarantine.
    pub fn skip(&mut self, now: Instant, port: u16) {
        self.release(now, port);
    }

    /// A pair taken and not used through no fault of its own (the process had no descriptor
    /// to bind it with): free again at once, first in line.
    pub fn give_back(&mut self, port: u16) {
        self.free.push_front(port);
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
    pub fn free_pairs(&mut self, now: Instant) -> usize {
        self.expire(now);
        self.free.len()
    }

    pub fn total_pairs(&self) -> usize {
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
