//! Answers about the system kept for a while: the user database's (names,
//! groups) and what /proc named (executables, cgroups).

use std::{
    collections::HashMap,
    hash::Hash,
    sync::RwLock,
    time::{Duration, Instant},
};

/// A map whose entries are trusted for `ttl`, holding at most `max`: when
/// full, expired entries go, then all of them.
#[derive(Debug)]
pub struct TtlMap<K, V> {
    ttl: Duration,
    max: usize,
    entries: RwLock<HashMap<K, (Instant, V)>>,
}

impl<K: Eq + Hash, V: Clone> TtlMap<K, V> {
    pub fn new(ttl: Duration, max: usize) -> Self {
        Self {
            ttl,
            max,
            entries: RwLock::new(HashMap::new()),
        }
    }

    /// The entry for `key`, if it is younger than the ttl.
    pub fn get(&self, key: &K) -> Option<V> {
        let entries = self.entries.read().unwrap_or_else(|p| p.into_inner());
        entries
            .get(key)
            .filter(|(at, _)| at.elapsed() < self.ttl)
            .map(|(_, value)| value.clone())
    }

    pub fn put(&self, key: K, value: V) {
        let mut entries = self.entries.write().unwrap_or_else(|p| p.into_inner());
        if entries.len() >= self.max {
            entries.retain(|_, (at, _)| at.elapsed() < self.ttl);
            if entries.len() >= self.max {
                entries.clear();
            }
        }
        entries.insert(key, (Instant::now(), value));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_expire_and_the_map_stays_bounded() {
        let map = TtlMap::new(Duration::from_secs(60), 2);
        map.put(1, "a");
        map.put(2, "b");
        assert_eq!((map.get(&1), map.get(&2)), (Some("a"), Some("b")));
        // Full and nothing expired: everything goes for the newcomer.
        map.put(3, "c");
        assert_eq!((map.get(&1), map.get(&3)), (None, Some("c")));
        let expired = TtlMap::new(Duration::ZERO, 8);
        expired.put(1, "a");
        assert_eq!(expired.get(&1), None);
    }
}
