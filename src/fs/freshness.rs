//! Freshness: how long what was fetched (a face, a listing) is trusted, on
//! the core's clock. Trust ends at `--ttl`; longer (`--ttl-with-events`)
//! while the event connection has been up since the fetch; never for bytes
//! an upload replaced, nor for anything fetched before a moment the fleet
//! may have missed changes (see [`Freshness::distrust_before`]).
//!
//! Locks: `events_up_since` and `superseded` are leaves, each taken alone
//! and never across I/O. Callers may hold the inode table's lock while
//! asking (the inode table comes first).

use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use parking_lot::Mutex;

use super::clock::Clock;

/// How long trust lasts (from `--ttl`, `--ttl-with-events`, `--max-stale`).
#[derive(Clone, Copy, Debug)]
pub struct TrustPolicy {
    pub ttl: Duration,
    pub ttl_with_events: Duration,
    pub max_stale: Duration,
}

pub struct Freshness {
    clock: Arc<dyn Clock>,
    policy: TrustPolicy,
    /// Since when the event connection has been up without a break.
    events_up_since: Mutex<Option<SystemTime>>,
    /// Digests of faces replaced by an upload, and when: bytes with such a
    /// digest fetched before then are not trusted, under whatever id.
    superseded: Mutex<lru::LruCache<u64, SystemTime>>,
    /// Nothing fetched before this (ms since the epoch; 0: none) is fresh.
    trust_floor: AtomicU64,
}

impl Freshness {
    /// `remembered`: how many replaced digests are kept at most.
    pub fn new(clock: Arc<dyn Clock>, policy: TrustPolicy, remembered: usize) -> Freshness {
        Freshness {
            clock,
            policy,
            events_up_since: Mutex::new(None),
            superseded: Mutex::new(lru::LruCache::new(
                NonZeroUsize::new(remembered.max(1)).expect("not zero"),
            )),
            trust_floor: AtomicU64::new(0),
        }
    }

    pub fn policy(&self) -> TrustPolicy {
        self.policy
    }

    /// The monotonic clock, for short waits and expiries.
    pub fn now(&self) -> Instant {
        self.clock.now()
    }

    /// The wall clock, which fetch times are measured on.
    pub fn wall(&self) -> SystemTime {
        self.clock.wall()
    }

    /// How long ago `at` was on the wall clock; `None` for a time in the
    /// future (the clock was stepped back), which is never fresh.
    fn age(&self, at: SystemTime) -> Option<Duration> {
        self.clock.wall().duration_since(at).ok()
    }

    /// Whether what was fetched at `at` is still trusted.
    pub fn fresh(&self, at: SystemTime) -> bool {
        let floor = self.trust_floor.load(Ordering::Relaxed);
        if floor > 0 && at < SystemTime::UNIX_EPOCH + Duration::from_millis(floor) {
            return false;
        }
        self.age(at)
            .is_some_and(|age| age < self.policy.ttl || self.trusted_by_events(at, age))
    }

    /// Whether face bytes of `digest` fetched at `at` may be served as
    /// fresh: fresh, and not replaced by an upload since.
    pub fn fresh_face(&self, digest: u64, at: SystemTime) -> bool {
        self.fresh(at) && !self.superseded_since(digest, at)
    }

    /// Whether bytes of `digest` fetched at `at` were replaced by an upload since.
    pub fn superseded_since(&self, digest: u64, at: SystemTime) -> bool {
        self.superseded
            .lock()
            .peek(&digest)
            .is_some_and(|replaced| at <= *replaced)
    }

    /// An upload replaced the bytes of each of `digests`, now.
    pub fn supersede(&self, digests: &[u64]) {
        let wall = self.clock.wall();
        let mut superseded = self.superseded.lock();
        for digest in digests {
            superseded.put(*digest, wall);
        }
    }

    /// Whether bytes of `digest` fetched at `at`, past their TTL, may still
    /// stand in for a refresh that failed for an outage.
    pub fn servable_stale(&self, digest: u64, at: SystemTime) -> bool {
        !self.superseded_since(digest, at)
            && self
                .age(at)
                .is_some_and(|age| age < self.policy.ttl.saturating_add(self.policy.max_stale))
    }

    /// Whether the event connection vouches for what was fetched at `at`:
    /// it has been up without a break since then (so any change since came
    /// as an event), and `--ttl-with-events`, the bound on an event lost
    /// anyway, has not passed.
    fn trusted_by_events(&self, at: SystemTime, age: Duration) -> bool {
        age < self.policy.ttl_with_events
            && self.events_up_since.lock().is_some_and(|since| since <= at)
    }

    /// How long the kernel may keep an answer: the rest of `--ttl`, or, for
    /// what the event connection vouches for, `--ttl` again (events tell
    /// the kernel themselves; if the connection drops, the kernel's copy
    /// lasts no longer than without events).
    pub fn remaining(&self, at: SystemTime) -> Duration {
        let TrustPolicy {
            ttl,
            ttl_with_events,
            ..
        } = self.policy;
        match self.age(at) {
            Some(age) if age < ttl => ttl - age,
            Some(age) if self.trusted_by_events(at, age) => {
                ttl.min(ttl_with_events.saturating_sub(age))
            }
            _ => Duration::ZERO,
        }
    }

    /// Changes may have been missed (the fleet's event stream lost some):
    /// nothing fetched before `at` is trusted as fresh any more.
    pub fn distrust_before(&self, at: SystemTime) {
        let ms = at
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis() as u64;
        self.trust_floor.fetch_max(ms, Ordering::Relaxed);
    }

    /// The event connection went up or down. While it is down, and for
    /// what was fetched before it came back, `--ttl` alone applies: events
    /// sent while no client was connected may be lost.
    pub fn events_connected(&self, up: bool) {
        *self.events_up_since.lock() = up.then(|| self.clock.wall());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fs::clock::TestClock;

    const TTL: Duration = Duration::from_secs(60);

    fn freshness(clock: &TestClock) -> Freshness {
        Freshness::new(
            Arc::new(clock.clone()),
            TrustPolicy {
                ttl: TTL,
                ttl_with_events: TTL * 10,
                max_stale: TTL * 2,
            },
            4,
        )
    }

    #[test]
    fn trust_ends_at_the_ttl_and_a_time_ahead_is_never_fresh() {
        let clock = TestClock::default();
        let f = freshness(&clock);
        let fetched = clock.wall();
        assert!(f.fresh(fetched));
        assert_eq!(f.remaining(fetched), TTL);
        clock.advance(TTL / 2);
        assert_eq!(f.remaining(fetched), TTL / 2);
        clock.advance(TTL / 2);
        assert!(!f.fresh(fetched));
        assert_eq!(f.remaining(fetched), Duration::ZERO);
        assert!(!f.fresh(clock.wall() + Duration::from_secs(1)));
    }

    #[test]
    fn events_extend_trust_only_for_what_came_after_they_were_up() {
        let clock = TestClock::default();
        let f = freshness(&clock);
        let before = clock.wall();
        clock.advance(Duration::from_secs(1));
        f.events_connected(true);
        let after = clock.wall();
        clock.advance(TTL * 2);
        assert!(!f.fresh(before), "fetched before the connection came up");
        assert!(f.fresh(after));
        assert_eq!(
            f.remaining(after),
            TTL,
            "the kernel keeps it no longer than --ttl"
        );
        f.events_connected(false);
        assert!(!f.fresh(after), "down: --ttl alone");
    }

    #[test]
    fn superseded_bytes_and_a_trust_floor_end_trust_early() {
        let clock = TestClock::default();
        let f = freshness(&clock);
        let fetched = clock.wall();
        f.supersede(&[7]);
        assert!(!f.fresh_face(7, fetched));
        assert!(!f.servable_stale(7, fetched));
        assert!(f.fresh_face(8, fetched));
        clock.advance(Duration::from_secs(1));
        assert!(f.fresh_face(7, clock.wall()), "fetched after the upload");
        f.distrust_before(clock.wall());
        assert!(!f.fresh(fetched));
        clock.advance(TTL * 2);
        assert!(
            f.servable_stale(8, fetched),
            "within --max-stale past the TTL"
        );
        clock.advance(TTL);
        assert!(!f.servable_stale(8, fetched));
    }
}
