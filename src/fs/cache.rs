//! The two caches in front of the API: faces bounded by their bytes, and
//! names the API said do not exist, remembered for a short time.

use parking_lot::Mutex;
use std::hash::Hash;
use std::num::NonZeroUsize;
use std::sync::Arc;
use std::time::{Duration, Instant};

use lru::LruCache;

/// What a [`ByteLru`] holds, for `statfs` and the metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CacheUsage {
    pub bytes: u64,
    pub entries: usize,
    /// Entries evicted to make room, since the start.
    pub evictions: u64,
}

/// A least-recently-used map whose values are weighed in bytes; inserting
/// evicts the least recently used values until the total fits the capacity.
pub struct ByteLru<K: Hash + Eq, V> {
    inner: Mutex<ByteLruInner<K, V>>,
    capacity: u64,
}

struct ByteLruInner<K: Hash + Eq, V> {
    map: LruCache<K, (Arc<V>, u64)>,
    bytes: u64,
    evictions: u64,
}

impl<K: Hash + Eq, V> ByteLru<K, V> {
    pub fn new(capacity: u64) -> ByteLru<K, V> {
        ByteLru {
            inner: Mutex::new(ByteLruInner {
                map: LruCache::unbounded(),
                bytes: 0,
                evictions: 0,
            }),
            capacity,
        }
    }

    fn lock(&self) -> parking_lot::MutexGuard<'_, ByteLruInner<K, V>> {
        self.inner.lock()
    }

    pub fn get(&self, key: &K) -> Option<Arc<V>> {
        self.lock().map.get(key).map(|(v, _)| v.clone())
    }

    /// Stores `value` weighing `weight` bytes. A value larger than the whole
    /// cache is not stored: the caller still holds it for its one use.
    pub fn insert(&self, key: K, value: Arc<V>, weight: u64) {
        let mut inner = self.lock();
        if let Some((_, old)) = inner.map.pop(&key) {
            inner.bytes -= old;
        }
        if weight > self.capacity {
            return;
        }
        while inner.bytes + weight > self.capacity {
            let Some((_, (_, w))) = inner.map.pop_lru() else {
                break;
            };
            inner.bytes -= w;
            inner.evictions += 1;
        }
        inner.bytes += weight;
        inner.map.put(key, (value, weight));
    }

    pub fn remove(&self, key: &K) {
        let mut inner = self.lock();
        if let Some((_, w)) = inner.map.pop(key) {
            inner.bytes -= w;
        }
    }

    pub fn usage(&self) -> CacheUsage {
        let inner = self.lock();
        CacheUsage {
            bytes: inner.bytes,
            entries: inner.map.len(),
            evictions: inner.evictions,
        }
    }
}

/// Keys remembered each until its expiry (names the API said do not exist,
/// faces uploaded a moment ago). Bounded in entries, so that probing random
/// names cannot grow memory.
pub struct ExpiringSet<K: Hash + Eq> {
    entries: Mutex<LruCache<K, Instant>>,
    ttl: Duration,
}

impl<K: Hash + Eq> ExpiringSet<K> {
    pub fn new(ttl: Duration, max_entries: usize) -> ExpiringSet<K> {
        let cap = NonZeroUsize::new(max_entries.max(1)).unwrap();
        ExpiringSet {
            entries: Mutex::new(LruCache::new(cap)),
            ttl,
        }
    }

    /// How long a key is remembered.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// Remembers `key` as absent from `now` on.
    pub fn insert(&self, key: K, now: Instant) {
        if self.ttl.is_zero() {
            return;
        }
        self.entries.lock().put(key, now + self.ttl);
    }

    pub fn remove(&self, key: &K) {
        self.entries.lock().pop(key);
    }

    pub fn contains(&self, key: &K, now: Instant) -> bool {
        let mut entries = self.entries.lock();
        match entries.peek(key) {
            Some(expiry) if now < *expiry => true,
            Some(_) => {
                entries.pop(key);
                false
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn evicts_least_recently_used_by_bytes() {
        let cache = ByteLru::new(100);
        cache.insert("a", Arc::new(()), 40);
        cache.insert("b", Arc::new(()), 40);
        assert!(cache.get(&"a").is_some()); // a is now the most recent
        cache.insert("c", Arc::new(()), 40);
        assert!(cache.get(&"b").is_none(), "b was least recently used");
        assert!(cache.get(&"a").is_some() && cache.get(&"c").is_some());
        assert_eq!(
            cache.usage(),
            CacheUsage {
                bytes: 80,
                entries: 2,
                evictions: 1
            }
        );
    }

    #[test]
    fn never_exceeds_capacity() {
        let cache = ByteLru::new(1000);
        for i in 0..500u64 {
            cache.insert(i, Arc::new(()), 1 + (i * 37) % 300);
            assert!(cache.usage().bytes <= 1000);
        }
        cache.insert(9999, Arc::new(()), 1001);
        assert!(cache.get(&9999).is_none(), "larger than the whole cache");
        assert!(cache.usage().bytes <= 1000);
    }

    #[test]
    fn replacing_a_key_recounts_its_bytes() {
        let cache = ByteLru::new(100);
        cache.insert("a", Arc::new(1), 60);
        cache.insert("a", Arc::new(2), 30);
        assert_eq!(cache.usage().bytes, 30);
        assert_eq!(*cache.get(&"a").unwrap(), 2);
        cache.remove(&"a");
        assert_eq!(cache.usage().entries, 0);
        assert_eq!(cache.usage().bytes, 0);
    }

    #[test]
    fn negative_entries_expire() {
        let neg = ExpiringSet::new(Duration::from_millis(50), 10);
        let t0 = Instant::now();
        neg.insert("gone", t0);
        assert!(neg.contains(&"gone", t0 + Duration::from_millis(49)));
        assert!(!neg.contains(&"gone", t0 + Duration::from_millis(50)));
        let off = ExpiringSet::new(Duration::ZERO, 10);
        off.insert("x", t0);
        assert!(!off.contains(&"x", t0));
    }

    #[test]
    fn negative_cache_is_bounded() {
        let neg = ExpiringSet::new(Duration::from_secs(60), 3);
        for k in 0..10 {
            neg.insert(k, Instant::now());
        }
        let now = Instant::now();
        assert_eq!((0..10).filter(|k| neg.contains(k, now)).count(), 3);
    }
}
