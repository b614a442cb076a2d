//! What the kernel must forget after a change, and the way to tell it. The
//! daemon hands over the way once the mount exists; until then (and in
//! tests without one) notices go nowhere.

use std::sync::{Arc, OnceLock};

use super::metrics::FsMetrics;

/// What the kernel must forget after a change: a name in a directory, or
/// the attributes and pages of an inode.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Invalidation {
    Entry { parent: u64, name: String },
    Inode(u64),
}

type Tell = Box<dyn Fn(Vec<Invalidation>) + Send + Sync>;

pub struct KernelNotices {
    tell: OnceLock<Tell>,
    metrics: Arc<FsMetrics>,
}

impl KernelNotices {
    pub fn new(metrics: Arc<FsMetrics>) -> KernelNotices {
        KernelNotices {
            tell: OnceLock::new(),
            metrics,
        }
    }

    /// Where invalidations go once the kernel is there to hear them.
    pub fn set(&self, tell: Tell) {
        let _ = self.tell.set(tell);
    }

    /// Tells the kernel to forget what changed (counted; nowhere before `set`).
    pub fn tell(&self, forget: Vec<Invalidation>) {
        if forget.is_empty() {
            return;
        }
        self.metrics.invalidations.inc_by(forget.len() as u64);
        if let Some(tell) = self.tell.get() {
            tell(forget);
        }
    }
}
