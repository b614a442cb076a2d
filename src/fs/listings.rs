//! The listing of each id directory: fetched whole (or not at all), kept in
//! memory and in the store while fresh, edited by events and uploads. A
//! listing is never served stale, even when the API is down: a listing
//! missing faces added since would make `rsync --delete` delete them from a
//! backup. Failing the directory fails the rsync.
//!
//! Locks: `held` is a leaf, taken for a map look-up or an insert and never
//! across I/O (the kernel's never-wait lookups read it). Concurrent
//! fetches of one directory share one in `flights`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;

use super::answer::{Fetch, Step, Stop};
use super::error::FsError;
use super::freshness::Freshness;
use super::layout::FaceKey;
use super::listing::{self, Listing};
use super::store::FaceStore;
use crate::api::{FaceApi, IdKind};
use crate::sync::single_flight::SingleFlight;

pub struct Listings {
    api: Arc<dyn FaceApi>,
    store: Option<Arc<FaceStore>>,
    freshness: Arc<Freshness>,
    held: Mutex<HashMap<IdKind, Arc<Listing>>>,
    flights: SingleFlight<IdKind, Result<Arc<Listing>, FsError>>,
    /// Set when the mount is going away: listings under way end with `EIO`
    /// before their next page instead of running on.
    stopping: AtomicBool,
}

impl Listings {
    pub fn new(
        api: Arc<dyn FaceApi>,
        store: Option<Arc<FaceStore>>,
        freshness: Arc<Freshness>,
    ) -> Listings {
        Listings {
            api,
            store,
            freshness,
            held: Mutex::new(HashMap::new()),
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

    /// Whether a fresh listing shows `key`.
    pub fn shows(&self, key: &FaceKey) -> bool {
        self.fresh(key.kind)
            .is_some_and(|l| l.place_of(key).is_some())
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
            let stored = self.store.as_ref().and_then(|s| s.listing(kind));
            if let Some(listing) = stored.filter(|l| self.freshness.fresh(l.fetched_at)) {
                let listing = Arc::new(listing);
                self.held.lock().insert(kind, listing.clone());
                return Ok(listing);
            }
            let listing = Arc::new(listing::fetch(
                &*self.api,
                kind,
                self.freshness.wall(),
                &self.stopping,
            )?);
            if let Some(store) = &self.store {
                store.put_listing(kind, &listing);
            }
            self.held.lock().insert(kind, listing.clone());
            Ok(listing)
        });
        Ok(result?)
    }

    /// The user `id` gained a face (`listed`) or lost it: the listing held
    /// of `kind`, if any, shows it so, in memory and then in the store.
    pub fn user_changed(&self, kind: IdKind, id: &str, listed: bool) {
        let changed = {
            let mut held = self.held.lock();
            let Some(listing) = held.get(&kind) else {
                return;
            };
            let changed = if listed {
                listing.with(id)
            } else {
                listing.without(id)
            };
            let Some(changed) = changed.map(Arc::new) else {
                return;
            };
            held.insert(kind, changed.clone());
            changed
        };
        self.store_held(kind, changed);
    }

    /// Writes `listing` to the store without holding the lock (a listing
    /// can be hundreds of MB); if another change replaced it meanwhile,
    /// writes that one too, so the store ends with what memory holds.
    fn store_held(&self, kind: IdKind, mut listing: Arc<Listing>) {
        let Some(store) = &self.store else {
            return;
        };
        loop {
            store.put_listing(kind, &listing);
            match self.held(kind) {
                Some(now) if !Arc::ptr_eq(&now, &listing) => listing = now,
                _ => return,
            }
        }
    }
}
