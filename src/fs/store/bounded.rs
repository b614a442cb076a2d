//! The store under a time bound: a slow or hung disk costs downloads, not
//! hangs. Every store access that may wait for the disk runs on a lane
//! thread of its own; a reader waits at most [`STORE_WAIT`] for its answer
//! and then goes on without it (to the API), counted in
//! `facefs_store_abandoned_total`. Writes are queued and never waited for;
//! a lane with [`MAX_QUEUED`] writes waiting drops new face writes (counted
//! in `facefs_store_writes_dropped_total`; they cost only a later download),
//! never a removal. Accesses to one face (or one listing) go to one lane,
//! in order, so a removal is never overtaken by an older write.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::sync_channel;
use std::sync::Arc;
use std::time::Duration;

use super::FaceStore;
use crate::repeated_warning::RepeatedWarning;
use crate::sync::worker_pool::{Lane, WorkerPool};

/// How long a reader waits for the store before going to the API.
pub const STORE_WAIT: Duration = Duration::from_secs(2);
/// Writes one lane holds queued before it drops new face writes.
pub const MAX_QUEUED: usize = 256;
/// Lane threads: accesses to different faces go on in parallel.
const LANES: usize = 8;

pub struct BoundedStore {
    store: Arc<FaceStore>,
    lanes: Vec<WorkerPool>,
    /// Every access first waits this long: a slow disk, for tests.
    delay: Option<Duration>,
    warning: RepeatedWarning,
}

/// Whether a queued write may be dropped when its lane is full.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Write {
    Droppable,
    Needed,
}

impl BoundedStore {
    pub fn new(store: Arc<FaceStore>) -> std::io::Result<BoundedStore> {
        let lanes = (0..LANES)
            .map(|_| WorkerPool::new("facefs-store", 1, 0))
            .collect::<Result<_, _>>()?;
        Ok(BoundedStore {
            delay: store.disk_delay(),
            store,
            lanes,
            warning: RepeatedWarning::new(),
        })
    }

    /// The store itself, for what never waits for the disk.
    pub fn store(&self) -> &Arc<FaceStore> {
        &self.store
    }

    fn lane(&self, which: u64) -> &WorkerPool {
        &self.lanes[(which % LANES as u64) as usize]
    }

    /// Runs `read` on lane `which` and waits for it at most [`STORE_WAIT`];
    /// `None` if it did not answer by then (it is skipped if it has not
    /// started, and its answer dropped if it comes later).
    pub fn read<T: Send + 'static>(
        &self,
        which: u64,
        read: impl FnOnce(&FaceStore) -> T + Send + 'static,
    ) -> Option<T> {
        self.read_within(which, STORE_WAIT, read)
    }

    /// As [`Self::read`], waiting at most `wait`.
    pub fn read_within<T: Send + 'static>(
        &self,
        which: u64,
        wait: Duration,
        read: impl FnOnce(&FaceStore) -> T + Send + 'static,
    ) -> Option<T> {
        let (answer, answered) = sync_channel(1);
        let abandoned = Arc::new(AtomicBool::new(false));
        let (store, delay, skip) = (self.store.clone(), self.delay, abandoned.clone());
        self.lane(which).spawn(Lane::First, move || {
            if skip.load(Ordering::Relaxed) {
                return;
            }
            if let Some(delay) = delay {
                std::thread::sleep(delay);
            }
            let _ = answer.send(read(&store));
        });
        match answered.recv_timeout(wait) {
            Ok(value) => Some(value),
            Err(_) => {
                abandoned.store(true, Ordering::Relaxed);
                self.store.metrics().abandoned.inc();
                self.warning.warn(|| {
                    format!(
                        "the store in {} did not answer within {wait:?}: fetched from the API instead (check the disk)",
                        self.store.root().display()
                    )
                });
                None
            }
        }
    }

    /// Queues `write` on lane `which`, in order with the lane's other accesses.
    pub fn write(&self, which: u64, kind: Write, write: impl FnOnce(&FaceStore) + Send + 'static) {
        let lane = self.lane(which);
        if kind == Write::Droppable && lane.queued() >= MAX_QUEUED {
            self.store.metrics().writes_dropped.inc();
            return;
        }
        let (store, delay) = (self.store.clone(), self.delay);
        lane.spawn(Lane::First, move || {
            if let Some(delay) = delay {
                std::thread::sleep(delay);
            }
            write(&store);
        });
    }

    /// Waits until every write queued so far is done (for tests and for
    /// a clean unmount), at most `limit`; whether they all were.
    pub fn flush(&self, limit: Duration) -> bool {
        let deadline = std::time::Instant::now() + limit;
        self.lanes.iter().all(|lane| {
            let (done, waited) = sync_channel(1);
            lane.spawn(Lane::First, move || {
                let _ = done.send(());
            });
            waited
                .recv_timeout(deadline.saturating_duration_since(std::time::Instant::now()))
                .is_ok()
        })
    }
}

impl Drop for BoundedStore {
    /// Queued writes finish (within the bound) before the store, and its
    /// lock, can go: the next mount of it must find both done.
    fn drop(&mut self) {
        self.flush(STORE_WAIT);
    }
}
