//! The listing of each id directory: fetched whole (or not at all), kept in
//! memory and in the store while fresh, edited by events and uploads. A
//! listing is never served stale, even when the API is down: a listing
//! missing faces added since would make `rsync --delete` delete them from a
//! backup. Failing the directory fails the rsync.
//!
//! Locks: `held` is a leaf, taken for a map look-up or an insert and never
//! across I/O (the kernel's never-wait lookups read it). Concurrent
//! fetches of one directory share one in `flights`.
//!
//! The store is written behind: a change queues one write of the listing
//! as it will be when the write runs, unless one is queued already, so a
//! burst of events costs a write or two, not one per event.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;

use super::answer::{Fetch, Step, Stop};
use super::error::FsError;
use super::freshness::Freshness;
use super::layout::FaceKey;
use super::listing::{self, Listing};
use super::store::bounded::{BoundedStore, Write};
use crate::api::{FaceApi, IdKind};
use crate::sync::single_flight::SingleFlight;

/// Names the API said do not exist, looked up in one directory without a
/// fresh listing, after which its listing is fetched in the background: a
/// restore looks up thousands of wiped names, and one listing (50 users a
/// page) then answers them all instead of one "does it exist?" each.
/// Reads of faces that exist, and a single stat, list nothing.
pub const MISSES_BEFORE_LISTING: u32 = 8;

/// How long reading a stored listing may take (it can be hundreds of MB)
/// before it is fetched from the API instead.
pub const STORED_LISTING_WAIT: Duration = Duration::from_secs(30);

type Held = Arc<Mutex<HashMap<IdKind, Arc<Listing>>>>;

pub struct Listings {
    api: Arc<dyn FaceApi>,
    store: Option<Arc<BoundedStore>>,
    freshness: Arc<Freshness>,
    held: Held,
    /// Per directory: a write of its listing is queued and not begun.
    writes_queued: Arc<[AtomicBool; 3]>,
    /// Per directory: lookups no fresh listing could answer, since it last
    /// had one (see [`MISSES_BEFORE_LISTING`]).
    misses: [AtomicU32; 3],
    flights: SingleFlight<IdKind, Result<Arc<Listing>, FsError>>,
    /// Set when the mount is going away: listings under way end with `EIO`
    /// before their next page instead of running on.
    stopping: AtomicBool,
}

impl Listings {
    pub fn new(
        api: Arc<dyn FaceApi>,
        store: Option<Arc<BoundedStore>>,
        freshness: Arc<Freshness>,
    ) -> Listings {
        Listings {
            api,
            store,
            freshness,
            held: Held::default(),
            writes_queued: Arc::default(),
            misses: Default::default(),
            flights: SingleFlight::default(),
            stopping: AtomicBool::new(false),
        }
    }

    pub fn stop(&self) {
        self.stopping.store(true, Ordering::SeqCst);
    }

    /// The listing of `kind` held now, whatever its age.
    pub fn held(&self, kind: IdKind) -> Option<Arc<Listing>> {
        self.held.lock().get(&kind).cloned()
    }

    /// How many directories have a listing in memory.
    pub fn held_count(&self) -> usize {
        self.held.lock().len()
    }

    fn fresh(&self, kind: IdKind) -> Option<Arc<Listing>> {
        self.held(kind)
            .filter(|l| self.freshness.fresh(l.fetched_at))
    }

    /// Whether the listing held shows `key`, fresh or not. It only orders
    /// requests (a name a listing showed is no probe): a walk that outlasts
    /// `--ttl` must not turn every reader into a probe, which wait
    /// unordered behind each other. What is trusted needs a fresh one.
    pub fn shows(&self, key: &FaceKey) -> bool {
        self.held(key.kind)
            .is_some_and(|l| l.place_of(key).is_some())
    }

    /// If a fresh listing shows the user of `key` without a face: for how
    /// much longer that listing is trusted.
    pub fn absence(&self, key: &FaceKey) -> Option<Duration> {
        let listing = self.fresh(key.kind)?;
        listing
            .shows_without_face(&key.id)
            .then(|| self.freshness.remaining(listing.fetched_at))
    }

    /// A lookup in `kind` the API answered "does not exist" and no fresh
    /// listing could; whether it is the one after which the listing should
    /// be fetched (once).
    pub fn missed(&self, kind: IdKind) -> bool {
        if self.fresh(kind).is_some() {
            return false;
        }
        self.misses[slot(kind)].fetch_add(1, Ordering::Relaxed) + 1 == MISSES_BEFORE_LISTING
    }

    /// The fresh listing of `kind`: from memory, the store or the API.
    pub fn get(&self, kind: IdKind, fetch: Fetch) -> Step<Arc<Listing>> {
        if let Some(listing) = self.fresh(kind) {
            return Ok(listing);
        }
        if fetch == Fetch::Never {
            return Err(Stop::WouldBlock);
        }
        let result = self.flights.run(&kind, || {
            if let Some(listing) = self.fresh(kind) {
                return Ok(listing);
            }
            let stored = self.store.as_ref().and_then(|s| {
                s.read_within(slot(kind) as u64, STORED_LISTING_WAIT, move |s| {
                    s.listing(kind)
                })
                .flatten()
            });
            if let Some(listing) = stored.filter(|l| self.freshness.fresh(l.fetched_at)) {
                let listing = Arc::new(listing);
                self.held.lock().insert(kind, listing.clone());
                self.misses[slot(kind)].store(0, Ordering::Relaxed);
                return Ok(listing);
            }
            let listing = Arc::new(listing::fetch(
                &*self.api,
                kind,
                self.freshness.wall(),
                &self.stopping,
            )?);
            self.held.lock().insert(kind, listing.clone());
            self.misses[slot(kind)].store(0, Ordering::Relaxed);
            self.store_held(kind);
            Ok(listing)
        });
        Ok(result?)
    }

    /// The user `id` gained a face (`listed`) or lost it: the listing held
    /// of `kind`, if any, shows it so, in memory and then in the store.
    pub fn user_changed(&self, kind: IdKind, id: &str, listed: bool) {
        {
            let mut held = self.held.lock();
            let Some(listing) = held.get_mut(&kind) else {
                return;
            };
            // In place while no open directory holds this version (else
            // copied once, and the open directory keeps what it read).
            let listing = Arc::make_mut(listing);
            let changed = if listed {
                listing.add(id)
            } else {
                listing.remove(id)
            };
            if !changed {
                return;
            }
        };
        self.store_held(kind);
    }

    /// Queues a write of the listing of `kind` to the store, unless one
    /// is queued and not begun: that one writes what is held when it runs.
    fn store_held(&self, kind: IdKind) {
        let Some(store) = &self.store else {
            return;
        };
        let queued = self.writes_queued.clone();
        if queued[slot(kind)].swap(true, Ordering::SeqCst) {
            return;
        }
        let held = self.held.clone();
        store.write(slot(kind) as u64, Write::Needed, move |s| {
            // Cleared first: a change from here on queues another write.
            queued[slot(kind)].store(false, Ordering::SeqCst);
            let listing = held.lock().get(&kind).cloned();
            if let Some(listing) = listing {
                s.put_listing(kind, &listing);
            }
        });
    }
}

/// The directory's place in per-directory arrays (and its store lane).
fn slot(kind: IdKind) -> usize {
    kind.index()
}
