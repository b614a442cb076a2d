//! Time as the core sees it: freshness (TTLs) is measured on a [`Clock`], so
//! tests move time forward instead of sleeping past a TTL.

use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

pub trait Clock: Send + Sync {
    fn now(&self) -> Instant;
}

/// The monotonic clock of the machine.
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Instant {
        Instant::now()
    }
}

/// A clock that moves only when told to.
#[derive(Clone)]
pub struct TestClock(Arc<Mutex<Instant>>);

impl Default for TestClock {
    fn default() -> TestClock {
        TestClock(Arc::new(Mutex::new(Instant::now())))
    }
}

impl TestClock {
    pub fn advance(&self, by: Duration) {
        *self.0.lock() += by;
    }
}

impl Clock for TestClock {
    fn now(&self) -> Instant {
        *self.0.lock()
    }
}
