//! Time as the core sees it: freshness (TTLs) is measured on a [`Clock`], so
//! tests move time forward instead of sleeping past a TTL.
//!
//! Two clocks: the monotonic one for short waits inside one process, and the
//! wall clock for when a face or listing was fetched, because that has to
//! mean the same after a remount or a reboot (the on-disk store keeps it).
//! A wall clock stepped back makes entries look fetched in the future; the
//! core treats those as stale, so a clock step costs downloads, never trust.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use parking_lot::Mutex;

pub trait Clock: Send + Sync {
    fn now(&self) -> Instant;
    fn wall(&self) -> SystemTime;
}

/// The machine's clocks.
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Instant {
        Instant::now()
    }

    fn wall(&self) -> SystemTime {
        SystemTime::now()
    }
}

/// Clocks that move only when told to, both together.
#[derive(Clone)]
pub struct TestClock(Arc<Mutex<(Instant, SystemTime)>>);

impl Default for TestClock {
    fn default() -> TestClock {
        TestClock(Arc::new(Mutex::new((Instant::now(), SystemTime::now()))))
    }
}

impl TestClock {
    pub fn advance(&self, by: Duration) {
        let mut clocks = self.0.lock();
        clocks.0 += by;
        clocks.1 += by;
    }
}

impl Clock for TestClock {
    fn now(&self) -> Instant {
        self.0.lock().0
    }

    fn wall(&self) -> SystemTime {
        self.0.lock().1
    }
}
