//! Deadlines as state (the model is quinn-proto's `TimerTable`): the core owns every timer it
//! arms, the driver only asks for the next deadline and says when it passed. A timer is keyed
//! by what it is for, so arming it again moves it and stopping it removes it; nothing is left
//! behind for a handler to ignore.

use std::collections::{BTreeSet, HashMap};
use std::hash::Hash;
use std::time::Instant;

/// Armed deadlines keyed by `K`, at most one per key.
#[derive(Debug)]
pub(crate) struct TimerTable<K> {
    armed: HashMap<K, (Instant, u64)>,
    /// Deadlines in order; the sequence number keeps equal instants apart and in arming order.
    order: BTreeSet<(Instant, u64, K)>,
    sequence: u64,
}

impl<K> Default for TimerTable<K> {
    fn default() -> Self {
        Self {
            armed: HashMap::new(),
            order: BTreeSet::new(),
            sequence: 0,
        }
    }
}

impl<K: Copy + Eq + Hash + Ord> TimerTable<K> {
    /// Arms `key` for `at`, replacing any deadline it had.
    pub(crate) fn set(&mut self, key: K, at: Instant) {
        self.stop(key);
        self.sequence += 1;
        self.armed.insert(key, (at, self.sequence));
        self.order.insert((at, self.sequence, key));
    }

    /// Disarms `key` (nothing happens when it was not armed).
    pub(crate) fn stop(&mut self, key: K) {
        if let Some((at, sequence)) = self.armed.remove(&key) {
            self.order.remove(&(at, sequence, key));
        }
    }

    /// The earliest deadline.
    pub(crate) fn next_timeout(&self) -> Option<Instant> {
        self.order.first().map(|(at, _, _)| *at)
    }

    /// Takes the earliest timer whose deadline is at or before `now`.
    pub(crate) fn pop_expired(&mut self, now: Instant) -> Option<K> {
        let &(at, sequence, key) = self.order.first()?;
        if at > now {
            return None;
        }
        self.order.remove(&(at, sequence, key));
        self.armed.remove(&key);
        Some(key)
    }

    /// Armed timers.
    pub(crate) fn len(&self) -> usize {
        self.armed.len()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn timers_fire_in_order_once_and_can_be_moved_or_stopped() {
        let start = Instant::now();
        let at = |ms| start + Duration::from_millis(ms);
        let mut table = TimerTable::default();
        table.set("b", at(20));
        table.set("a", at(10));
        table.set("c", at(30));
        table.set("b", at(40)); // moved, not duplicated
        table.stop("c");
        assert_eq!(table.len(), 2);
        assert_eq!(table.next_timeout(), Some(at(10)));
        assert_eq!(table.pop_expired(at(5)), None);
        assert_eq!(table.pop_expired(at(50)), Some("a"));
        assert_eq!(table.pop_expired(at(50)), Some("b"));
        assert_eq!(table.pop_expired(at(50)), None);
        assert_eq!(table.next_timeout(), None);
    }

    #[test]
    fn equal_deadlines_fire_in_arming_order() {
        let at = Instant::now();
        let mut table = TimerTable::default();
        for key in [3, 1, 2] {
            table.set(key, at);
        }
        let fired: Vec<_> = std::iter::from_fn(|| table.pop_expired(at)).collect();
        assert_eq!(fired, [3, 1, 2]);
    }
}
