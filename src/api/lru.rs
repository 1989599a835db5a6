//! A bounded cache of review answers: at most `capacity` entries, each with an expiry; when
//! full, the least recently used entry goes. A flood of new keys (random tokens, made-up
//! paths) then pushes out the oldest answers one by one, never every answer at once.

use std::collections::{BTreeMap, HashMap};
use std::time::Instant;

/// A least-recently-used map of at most `capacity` entries that expire.
#[derive(Debug)]
pub struct ExpiringLru<K, V> {
    capacity: usize,
    /// Value, expiry, use stamp.
    entries: HashMap<K, (V, Instant, u64)>,
    /// Use stamp -> key, oldest first.
    order: BTreeMap<u64, K>,
    stamp: u64,
}

impl<K: std::hash::Hash + Eq + Clone, V> ExpiringLru<K, V> {
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity,
            entries: HashMap::new(),
            order: BTreeMap::new(),
            stamp: 0,
        }
    }

    /// The value of `key` if it has not expired at `now` (an expired one is dropped); a hit
    /// counts as a use.
    pub fn get(&mut self, key: &K, now: Instant) -> Option<&V> {
        self.get_until(key, now).map(|(value, _)| value)
    }

    /// [`Self::get`], with when the value expires.
    pub fn get_until(&mut self, key: &K, now: Instant) -> Option<(&V, Instant)> {
        let (_, until, _) = self.entries.get(key)?;
        if *until <= now {
            self.remove(key);
            return None;
        }
        self.stamp += 1;
        let (_, _, used) = self.entries.get_mut(key)?;
        self.order.remove(used);
        *used = self.stamp;
        self.order.insert(self.stamp, key.clone());
        self.entries
            .get(key)
            .map(|(value, until, _)| (value, *until))
    }

    /// Stores `value` for `key` until `until`, dropping the least recently used beyond the
    /// capacity.
    pub fn put(&mut self, key: K, value: V, until: Instant) {
        self.stamp += 1;
        if let Some((_, _, used)) = self.entries.insert(key.clone(), (value, until, self.stamp)) {
            self.order.remove(&used);
        }
        self.order.insert(self.stamp, key);
        while self.entries.len() > self.capacity {
            let Some((_, oldest)) = self.order.pop_first() else {
                break;
            };
            self.entries.remove(&oldest);
        }
    }

    fn remove(&mut self, key: &K) {
        if let Some((_, _, used)) = self.entries.remove(key) {
            self.order.remove(&used);
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn the_least_recently_used_goes_first_and_expired_entries_are_misses() {
        let now = Instant::now();
        let later = now + Duration::from_secs(10);
        let mut lru = ExpiringLru::new(3);
        for (k, v) in [(1, 'a'), (2, 'b'), (3, 'c')] {
            lru.put(k, v, later);
        }
        assert_eq!(lru.get(&1, now), Some(&'a'));
        lru.put(4, 'd', later);
        assert_eq!(lru.len(), 3);
        assert_eq!(lru.get(&2, now), None, "2 was least recently used");
        assert_eq!(lru.get(&1, now), Some(&'a'));
        lru.put(1, 'z', later);
        assert_eq!(lru.len(), 3);
        assert_eq!(lru.get(&1, now), Some(&'z'));
        assert_eq!(lru.get(&1, later), None, "expired");
        assert_eq!(lru.len(), 2);
    }
}
