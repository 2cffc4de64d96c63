//! A cache of immutable values (events, state maps) bounded by their approximate size in
//! bytes, which drops the least recently used first: a count alone would let a few huge
//! state maps, or a burst of sends, hold the process's memory.

use std::borrow::Borrow;
use std::hash::Hash;

use hashlink::LinkedHashMap;

pub struct Lru<K, V> {
    /// Least recently used first, each with its weight.
    entries: LinkedHashMap<K, (V, usize)>,
    bytes: usize,
    budget: usize,
}

impl<K: Hash + Eq, V: Clone> Lru<K, V> {
    pub fn new(budget: usize) -> Self {
        Lru { entries: LinkedHashMap::new(), bytes: 0, budget }
    }

    /// The value of `key`, now the most recently used.
    pub fn get<Q>(&mut self, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.entries.to_back(key).map(|(value, _)| value.clone())
    }

    /// Keeps `value` (of about `weight` bytes), dropping the least recently used entries
    /// beyond the budget. A value larger than the whole budget is not kept.
    pub fn insert(&mut self, key: K, value: V, weight: usize) {
        if weight > self.budget {
            self.remove(&key);
            return;
        }
        if let Some((_, replaced)) = self.entries.insert(key, (value, weight)) {
            self.bytes -= replaced;
        }
        self.bytes += weight;
        while self.bytes > self.budget {
            let Some((_, (_, dropped))) = self.entries.pop_front() else { break };
            self.bytes -= dropped;
        }
    }

    pub fn remove<Q>(&mut self, key: &Q)
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        if let Some((_, weight)) = self.entries.remove(key) {
            self.bytes -= weight;
        }
    }

    pub fn clear(&mut self) {
        self.entries.clear();
        self.bytes = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::Lru;

    #[test]
    fn drops_the_least_recently_used_beyond_the_budget() {
        let mut cache = Lru::new(100);
        cache.insert("a", 1, 40);
        cache.insert("b", 2, 40);
        assert_eq!(cache.get("a"), Some(1));
        cache.insert("c", 3, 40);
        assert_eq!(cache.get("b"), None, "b was used least recently");
        assert_eq!((cache.get("a"), cache.get("c")), (Some(1), Some(3)));
        cache.insert("a", 4, 10);
        assert_eq!(cache.bytes, 50);
        cache.insert("huge", 5, 101);
        assert_eq!(cache.get("huge"), None);
        cache.remove("c");
        assert_eq!(cache.bytes, 10);
        cache.clear();
        assert_eq!((cache.get("a"), cache.bytes), (None, 0));
    }
}
