//! When to read ahead in a directory. Programs that stat every entry in
//! listing order (rsync, ls -l, find, du) get the next faces downloaded in
//! parallel; the window doubles while the walk stays sequential, as the
//! kernel's file read-ahead does. [`ReadAhead`] decides places only;
//! [`ReadAheads`] keeps one per directory and runs the downloads the core
//! hands it on threads of its own.
//!
//! Locks: `walks` is a leaf, held only while a place is noted.

use std::collections::HashMap;
use std::ops::RangeInclusive;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;

use super::cache::CacheUsage;
use super::layout::FaceKey;
use super::listing::Listing;
use crate::api::IdKind;
use crate::sync::worker_pool::{Lane, WorkerPool};

/// The first window, once two lookups in a row followed the listing.
const START: usize = 4;

#[derive(Debug, Default)]
pub struct ReadAhead {
    last: Option<usize>,
    /// Places up to here have been handed out.
    issued_to: usize,
    window: usize,
}

impl ReadAhead {
    /// Notes a lookup of the file at `place` in a listing of `len` files and
    /// returns the places to fetch ahead, if any; at most `max_window` ahead.
    pub fn on_lookup(
        &mut self,
        place: usize,
        len: usize,
        max_window: usize,
    ) -> Option<RangeInclusive<usize>> {
        match self.last {
            // The adapter may ask twice for one lookup: count it once.
            Some(last) if last == place => return None,
            // Sequential: the next file, or the one after (a skipped variant).
            Some(last) if place > last && place - last <= 2 => {}
            _ => {
                *self = ReadAhead {
                    last: Some(place),
                    issued_to: place,
                    window: 0,
                };
                return None;
            }
        }
        self.last = Some(place);
        self.issued_to = self.issued_to.max(place);
        // When the walk enters the last batch issued, issue the next, twice as large.
        if self.window == 0 {
            self.window = START.min(max_window);
        } else if place + self.window > self.issued_to {
            self.window = (self.window * 2).min(max_window);
        } else {
            return None;
        }
        let from = self.issued_to + 1;
        let to = (self.issued_to + self.window).min(len.saturating_sub(1));
        self.issued_to = to.max(self.issued_to);
        (from <= to).then_some(from..=to)
    }
}

/// The walk of each directory, and the threads that fetch ahead of it.
pub struct ReadAheads {
    walks: Mutex<HashMap<IdKind, ReadAhead>>,
    /// `None` when read-ahead is off (or its threads could not start).
    workers: Option<WorkerPool>,
    /// Faces fetched ahead at most (`FsConfig::readahead`).
    max_window: usize,
    /// The memory cache's size, which read-ahead must not overrun.
    cache_bytes: u64,
    /// Downloads handed to `workers` so far.
    started: AtomicU64,
}

impl ReadAheads {
    /// Up to `max_window` faces ahead, `threads` downloads at once; a
    /// window of 0 turns read-ahead off.
    pub fn new(max_window: usize, threads: usize, cache_bytes: u64) -> ReadAheads {
        let workers = (max_window > 0)
            .then(|| WorkerPool::new("facefs-prefetch", threads, 0))
            .and_then(|pool| {
                pool.map_err(|e| log::warn!("read-ahead is off: cannot start its threads: {e}"))
                    .ok()
            });
        ReadAheads {
            walks: Mutex::new(HashMap::new()),
            workers,
            max_window,
            cache_bytes,
            started: AtomicU64::new(0),
        }
    }

    /// How far read-ahead may go: no further than half of what the cache
    /// holds of faces of the size seen so far (`usage`), or it would evict
    /// faces it fetched before the walk reaches them.
    pub fn window(&self, usage: CacheUsage) -> usize {
        if usage.entries == 0 {
            return self.max_window;
        }
        let average = (usage.bytes / usage.entries as u64).max(1);
        let fits = usize::try_from(self.cache_bytes / 2 / average).unwrap_or(usize::MAX);
        self.max_window.min(fits)
    }

    pub fn enabled(&self) -> bool {
        self.workers.is_some()
    }

    /// Notes a lookup of `key` in `listing`; the faces to fetch ahead, if
    /// the lookups are walking the listing in order (at most `window`).
    pub fn after_lookup(&self, key: &FaceKey, listing: &Listing, window: usize) -> Vec<FaceKey> {
        if self.workers.is_none() {
            return Vec::new();
        }
        let Some(place) = listing.place_of(key) else {
            return Vec::new();
        };
        let places = self.walks.lock().entry(key.kind).or_default().on_lookup(
            place,
            listing.files(),
            window,
        );
        places
            .into_iter()
            .flatten()
            .map_while(|next| listing.file_at(key.kind, next))
            .collect()
    }

    /// Runs `job` on a read-ahead thread.
    pub fn spawn(&self, job: impl FnOnce() + Send + 'static) {
        if let Some(workers) = &self.workers {
            self.started.fetch_add(1, Ordering::Relaxed);
            workers.spawn(Lane::First, job);
        }
    }

    /// How many downloads read-ahead has started.
    pub fn started(&self) -> u64 {
        self.started.load(Ordering::Relaxed)
    }

    /// Whether no walk has been noted.
    pub fn is_idle(&self) -> bool {
        self.walks.lock().is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sequential_walk_fetches_every_later_place_once_in_growing_batches() {
        let mut ra = ReadAhead::default();
        let mut fetched = Vec::new();
        let mut batches = Vec::new();
        for place in 0..200 {
            if let Some(range) = ra.on_lookup(place, 200, 32) {
                batches.push(range.clone().count());
                fetched.extend(range);
            }
        }
        assert_eq!(
            fetched,
            (2..200).collect::<Vec<_>>(),
            "each place after the first two, once, in order"
        );
        assert_eq!(&batches[..4], &[4, 8, 16, 32], "doubling up to the cap");
        assert!(batches.iter().all(|b| *b <= 32));
    }

    #[test]
    fn random_access_and_repeats_fetch_nothing() {
        let mut ra = ReadAhead::default();
        for place in [50, 10, 90, 30, 30, 70, 0, 99] {
            assert_eq!(ra.on_lookup(place, 100, 32), None, "{place}");
        }
    }

    #[test]
    fn skipping_one_variant_stays_sequential_and_the_end_is_respected() {
        let mut ra = ReadAhead::default();
        assert_eq!(ra.on_lookup(0, 6, 32), None);
        assert_eq!(ra.on_lookup(2, 6, 32), Some(3..=5));
        assert_eq!(ra.on_lookup(4, 6, 32), None, "nothing left past the end");
    }
}
