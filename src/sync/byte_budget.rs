//! One budget for the bytes of faces in memory: those being received, those
//! in the cache, and those only open files still hold. A download takes its
//! share before its body arrives and gives it back when the last holder of
//! the face lets go, so no mix of readers, sizes and evictions can hold more
//! than the budget.

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Permits are KiB: a semaphore counts in u32 chunks.
const UNIT: u64 = 1024;

pub struct ByteBudget {
    units: Arc<Semaphore>,
    capacity: u64,
}

/// Bytes taken from a [`ByteBudget`]; given back on drop.
pub struct MemoryHold(Option<OwnedSemaphorePermit>);

fn units(bytes: u64) -> u32 {
    u32::try_from(bytes.div_ceil(UNIT)).unwrap_or(u32::MAX)
}

impl ByteBudget {
    pub fn new(capacity: u64) -> Arc<ByteBudget> {
        Arc::new(ByteBudget {
            units: Arc::new(Semaphore::new(units(capacity) as usize)),
            capacity,
        })
    }

    /// Takes `bytes`, waiting until they are free. Callers bound the wait
    /// with their own deadline.
    pub async fn hold(&self, bytes: u64) -> MemoryHold {
        let wanted = units(bytes).min(units(self.capacity));
        match self.units.clone().acquire_many_owned(wanted).await {
            Ok(permit) => MemoryHold(Some(permit)),
            // Never closed: the budget lives as long as its holders.
            Err(_) => MemoryHold(None),
        }
    }

    /// Takes `bytes` if they are free now.
    pub fn try_hold(&self, bytes: u64) -> Option<MemoryHold> {
        let wanted = units(bytes).min(units(self.capacity));
        self.units
            .clone()
            .try_acquire_many_owned(wanted)
            .ok()
            .map(|permit| MemoryHold(Some(permit)))
    }

    /// Takes `bytes` from a thread that is not async, polling for room for
    /// at most `wait` (which only happens when memory is short); `None`
    /// past it.
    pub fn hold_within(&self, bytes: u64, wait: std::time::Duration) -> Option<MemoryHold> {
        let deadline = std::time::Instant::now() + wait;
        let mut pause = std::time::Duration::from_millis(1);
        loop {
            if let Some(held) = self.try_hold(bytes) {
                return Some(held);
            }
            if std::time::Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(std::time::Duration::from_millis(50));
        }
    }

    /// Bytes held now (in KiB units, rounded up per hold).
    pub fn in_use(&self) -> u64 {
        (u64::from(units(self.capacity)) - self.units.available_permits() as u64) * UNIT
    }
}

impl MemoryHold {
    /// A hold on nothing, for bytes no budget counts (the in-memory fake).
    pub fn none() -> MemoryHold {
        MemoryHold(None)
    }

    /// Adds `other` to this hold.
    pub fn merge(&mut self, other: MemoryHold) {
        match (&mut self.0, other.0) {
            (Some(mine), Some(theirs)) => mine.merge(theirs),
            (mine @ None, theirs) => *mine = theirs,
            (Some(_), None) => {}
        }
    }

    pub fn bytes(&self) -> u64 {
        self.0
            .as_ref()
            .map_or(0, |p| u64::from(p.num_permits() as u32) * UNIT)
    }

    /// Gives back what this hold has beyond `bytes`.
    pub fn shrink_to(&mut self, bytes: u64) {
        if let Some(permit) = &mut self.0 {
            let keep = units(bytes) as usize;
            if permit.num_permits() > keep {
                drop(permit.split(permit.num_permits() - keep));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    #[test]
    fn holds_are_counted_until_dropped_and_never_exceed_the_budget() {
        let rt = runtime();
        let budget = ByteBudget::new(10 * 1024);
        let mut a = rt.block_on(budget.hold(4 * 1024));
        let b = rt.block_on(budget.hold(5000));
        assert_eq!(budget.in_use(), 4 * 1024 + 5 * 1024);
        // No room for 2 KiB more: the wait ends only by the caller's deadline.
        let waited = rt.block_on(async {
            tokio::time::timeout(Duration::from_millis(50), budget.hold(2048)).await
        });
        assert!(waited.is_err());
        a.shrink_to(1024);
        assert_eq!(budget.in_use(), 6 * 1024);
        let c = rt.block_on(budget.hold(2048));
        a.merge(c);
        assert_eq!(a.bytes(), 3 * 1024);
        drop((a, b));
        assert_eq!(budget.in_use(), 0);
    }
}
