//! Faces in tiers: memory (a byte-bounded LRU), the on-disk store, the API.
//! A face is served from the first tier that holds it fresh; concurrent
//! readers of one face share one download (single-flight); "does not
//! exist" is remembered for `--negative-ttl`; when the API fails for an
//! outage, the newest bytes at hand stand in within `--max-stale`.
//!
//! Locks: `outage_until` is a leaf, never held across I/O; the cache and
//! the absence set lock inside themselves. A download holds no lock: its
//! followers wait in the single-flight, not on a mutex.

use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use super::answer::{Fetch, Step, Stop};
use super::cache::{ByteLru, CacheUsage, ExpiringSet};
use super::error::{err, FsError};
use super::face::{Face, FaceMeta};
use super::freshness::Freshness;
use super::layout::FaceKey;
use super::metrics::FsMetrics;
use super::store::bounded::{BoundedStore, Write};
use super::store::FaceStore;
use crate::api::{ApiError, FaceApi, Priority};
use crate::sync::single_flight::SingleFlight;

/// After a refresh fails for an outage, faces that can be served stale are,
/// without asking the API again, for this long: otherwise every read during
/// an outage would wait out the whole retry budget first.
pub const OUTAGE_BACKOFF: Duration = Duration::from_secs(30);

/// What loading a face asks of the rest of the core, and tells it.
pub trait LoadContext {
    /// How urgent a download of `key` is: a name a fresh listing shows goes
    /// before probes of names that may not exist.
    fn priority(&self, key: &FaceKey) -> Priority;
    /// `meta` is now the face of `key` in memory (what `stat` knows follows).
    fn kept(&self, key: &FaceKey, meta: FaceMeta);
    /// The API said the user `key` names does not exist.
    fn user_absent(&self, key: &FaceKey);
}

/// The context of a read-ahead: the reader's, at [`Priority::Ahead`].
struct Ahead<'a>(&'a dyn LoadContext);

impl LoadContext for Ahead<'_> {
    fn priority(&self, _key: &FaceKey) -> Priority {
        Priority::Ahead
    }

    fn kept(&self, key: &FaceKey, meta: FaceMeta) {
        self.0.kept(key, meta);
    }

    fn user_absent(&self, key: &FaceKey) {
        self.0.user_absent(key);
    }
}

pub struct Faces {
    api: Arc<dyn FaceApi>,
    memory: ByteLru<FaceKey, Face>,
    /// The on-disk tier behind `memory` (`--cache-dir`), under its time bound.
    store: Option<Arc<BoundedStore>>,
    /// Faces the API said do not exist, until `--negative-ttl`.
    absent: ExpiringSet<FaceKey>,
    downloads: SingleFlight<FaceKey, Result<Arc<Face>, FsError>>,
    /// Until when stale faces are served without asking (see [`OUTAGE_BACKOFF`]).
    outage_until: Mutex<Option<Instant>>,
    freshness: Arc<Freshness>,
    metrics: Arc<FsMetrics>,
}

impl Faces {
    pub fn new(
        api: Arc<dyn FaceApi>,
        memory_bytes: u64,
        store: Option<Arc<BoundedStore>>,
        absent: ExpiringSet<FaceKey>,
        freshness: Arc<Freshness>,
        metrics: Arc<FsMetrics>,
    ) -> Faces {
        Faces {
            api,
            memory: ByteLru::new(memory_bytes),
            store,
            absent,
            downloads: SingleFlight::default(),
            outage_until: Mutex::new(None),
            freshness,
            metrics,
        }
    }

    pub fn api(&self) -> &Arc<dyn FaceApi> {
        &self.api
    }

    pub fn store(&self) -> Option<&Arc<FaceStore>> {
        self.store.as_ref().map(|s| s.store())
    }

    /// Waits for the store's queued writes, at most `limit`.
    pub fn flush_store(&self, limit: Duration) -> bool {
        self.store.as_ref().is_none_or(|s| s.flush(limit))
    }

    pub fn metrics(&self) -> &Arc<FsMetrics> {
        &self.metrics
    }

    pub fn memory_usage(&self) -> CacheUsage {
        self.memory.usage()
    }

    /// The face of `key` in memory, whatever its age.
    pub fn in_memory(&self, key: &FaceKey) -> Option<Arc<Face>> {
        self.memory.get(key)
    }

    /// The face of `key` in memory while it is fresh.
    pub fn fresh_in_memory(&self, key: &FaceKey) -> Option<Arc<Face>> {
        self.memory
            .get(key)
            .filter(|f| self.freshness.fresh_face(f.digest, f.fetched_at))
    }

    /// The digests of the bytes of `key` in memory and in the store.
    pub fn digests(&self, key: &FaceKey) -> Vec<u64> {
        let stored = self.stored_header(key);
        let in_memory = self.memory.get(key);
        in_memory
            .map(|f| f.digest)
            .into_iter()
            .chain(stored.map(|m| m.digest))
            .collect()
    }

    /// `--negative-ttl`: how long "does not exist" is trusted.
    pub fn negative_ttl(&self) -> Duration {
        self.absent.ttl()
    }

    /// Whether the API's "does not exist" for `key` is remembered.
    pub fn is_absent(&self, key: &FaceKey) -> bool {
        self.absent.contains(key, self.freshness.now())
    }

    /// `ENOENT` while the API's "does not exist" for `key` is remembered.
    pub fn known_absent(&self, key: &FaceKey) -> Result<(), FsError> {
        if self.is_absent(key) {
            return Err(err!(
                libc::ENOENT,
                "the API said this {} face does not exist",
                key.kind
            ));
        }
        Ok(())
    }

    /// What the store's header says of `key`, if it holds it fresh; with
    /// [`Fetch::Never`] only from the page cache.
    pub fn stored_meta(&self, key: &FaceKey, fetch: Fetch) -> Step<Option<FaceMeta>> {
        let Some(store) = &self.store else {
            return Ok(None);
        };
        let stored = match fetch {
            Fetch::Allowed => self.stored_header(key),
            Fetch::Never => store.store().meta_now(key)?,
        };
        Ok(stored.filter(|m| self.freshness.fresh_face(m.digest, m.fetched_at)))
    }

    /// [`Self::stored_meta`] of each of `keys` (a page of a directory
    /// listing), waiting for the disk at most the store's bound for all.
    pub fn stored_metas(&self, keys: &[FaceKey], fetch: Fetch) -> Step<Vec<Option<FaceMeta>>> {
        let (Some(store), Some(first)) = (&self.store, keys.first()) else {
            return Ok(vec![None; keys.len()]);
        };
        let stored = match fetch {
            Fetch::Never => keys
                .iter()
                .map(|key| store.store().meta_now(key))
                .collect::<Step<Vec<_>>>()?,
            Fetch::Allowed => {
                let owned = keys.to_vec();
                store
                    .read(lane_of(first), move |s| {
                        owned.iter().map(|key| s.listed_meta(key)).collect()
                    })
                    .unwrap_or_else(|| vec![None; keys.len()])
            }
        };
        let fresh = |m: &FaceMeta| self.freshness.fresh_face(m.digest, m.fetched_at);
        Ok(stored.into_iter().map(|m| m.filter(fresh)).collect())
    }

    /// The store's header of `key`, waiting for the disk at most its bound.
    fn stored_header(&self, key: &FaceKey) -> Option<FaceMeta> {
        let store = self.store.as_ref()?;
        let owned = key.clone();
        store.read(lane_of(key), move |s| s.meta(&owned)).flatten()
    }

    /// Whether the store holds `key` fresh (its header read, waiting for the disk).
    pub fn stored_fresh(&self, key: &FaceKey) -> bool {
        matches!(self.stored_meta(key, Fetch::Allowed), Ok(Some(_)))
    }

    /// A face's bytes, from memory while fresh, else (once for all
    /// concurrent callers) from the store or the API: see [`Self::refresh`].
    pub fn load(&self, key: &FaceKey, fetch: Fetch, context: &dyn LoadContext) -> Step<Arc<Face>> {
        self.known_absent(key)?;
        if let Some(face) = self.fresh_in_memory(key) {
            self.metrics.cache(true);
            return Ok(face);
        }
        if fetch == Fetch::Never {
            // The store, on the kernel's thread, only from the page cache.
            let stored = self
                .store
                .as_ref()
                .and_then(|s| s.store().face_now(key, |at| self.freshness.fresh(at)))
                .filter(|f| !self.freshness.superseded_since(f.digest, f.fetched_at));
            if let Some(face) = stored.map(Arc::new) {
                self.metrics.cache(true);
                self.keep(key, face.clone(), context);
                return Ok(face);
            }
            return Err(Stop::WouldBlock);
        }
        let flight = || {
            self.downloads.run(key, || {
                if let Some(face) = self.fresh_in_memory(key) {
                    return Ok(face);
                }
                self.refresh(key, context)
            })
        };
        let mut result = flight();
        // A read-ahead this caller joined found no turn soon enough and was
        // not sent: a reader asks for itself.
        let deferred = matches!(&result, Err(e) if e.is_deferred());
        if deferred && context.priority(key) != Priority::Ahead {
            result = flight();
        }
        Ok(result?)
    }

    /// [`Self::load`] for read-ahead: its download takes a turn of the rate
    /// limit only if one comes soon ([`Priority::Ahead`]).
    pub fn load_ahead(&self, key: &FaceKey, context: &dyn LoadContext) -> Step<Arc<Face>> {
        self.load(key, Fetch::Allowed, &Ahead(context))
    }

    /// A face not fresh in memory: the stored one while it is fresh, else a
    /// download. When the download fails for an outage, the newest bytes at
    /// hand (memory or store) are served if they are within `--max-stale`
    /// of their TTL; "not found" is never covered up.
    fn refresh(&self, key: &FaceKey, context: &dyn LoadContext) -> Result<Arc<Face>, FsError> {
        let mut stale = self.memory.get(key);
        if let Some(store) = &self.store {
            // Not answered within its bound (a slow disk): as if not stored.
            let owned = key.clone();
            let stored = store
                .read(lane_of(key), move |s| s.face(&owned))
                .transpose()
                .map_err(|e| err!(source: e, libc::EIO, "reading a stored {} face", key.kind))?
                .flatten();
            if let Some(face) = stored.map(Arc::new) {
                if self.freshness.fresh_face(face.digest, face.fetched_at) {
                    self.metrics.cache(true);
                    self.keep(key, face.clone(), context);
                    return Ok(face);
                }
                if stale
                    .as_ref()
                    .is_none_or(|m| m.fetched_at < face.fetched_at)
                {
                    stale = Some(face);
                }
            }
        }
        let stale = stale.filter(|f| self.freshness.servable_stale(f.digest, f.fetched_at));
        if let Some(face) = &stale {
            if self
                .outage_until
                .lock()
                .is_some_and(|until| self.freshness.now() < until)
            {
                return Ok(self.serve_stale(key, face.clone(), context));
            }
        }
        match self.download(key, context) {
            Ok(face) => {
                *self.outage_until.lock() = None;
                Ok(face)
            }
            Err(e) if e.is_outage() && stale.is_some() => {
                let backoff = self.freshness.now() + OUTAGE_BACKOFF;
                if self.outage_until.lock().replace(backoff).is_none() {
                    log::warn!(
                        "the API is failing ({e}); serving faces up to {} past their TTL from what facefs holds, and asking the API again every {OUTAGE_BACKOFF:?}",
                        humantime::format_duration(self.freshness.policy().max_stale)
                    );
                }
                Ok(self.serve_stale(key, stale.unwrap(), context))
            }
            Err(e) => {
                if e.is_not_found() {
                    self.forget(key);
                }
                if matches!(e, ApiError::UserNotFound) {
                    context.user_absent(key);
                }
                // The id itself is personal data: the message names only its kind.
                Err(FsError::from_api(
                    e,
                    key.kind,
                    &format!("downloading a {} face", key.kind),
                ))
            }
        }
    }

    fn serve_stale(&self, key: &FaceKey, face: Arc<Face>, context: &dyn LoadContext) -> Arc<Face> {
        log::debug!("serving a stale {} face: the API is failing", key.kind);
        self.metrics.stale_served.inc();
        self.keep(key, face.clone(), context);
        face
    }

    /// A face now known good: for `stat`, in memory.
    fn keep(&self, key: &FaceKey, face: Arc<Face>, context: &dyn LoadContext) {
        context.kept(key, face.meta());
        self.memory
            .insert(key.clone(), face.clone(), face.bytes.len() as u64);
    }

    fn download(&self, key: &FaceKey, context: &dyn LoadContext) -> Result<Arc<Face>, ApiError> {
        self.metrics.cache(false);
        let _in_flight = self.metrics.download();
        let bytes = self
            .api
            .get_face(key.kind, &key.id, key.cropped, context.priority(key))?;
        // Fetched by another mount of the fleet a moment ago, or now; a
        // time ahead of this clock counts as now.
        let now = self.freshness.wall();
        let at = bytes.fetched_at.map_or(now, |at| at.min(now));
        let face = Arc::new(Face::new(bytes, at));
        self.keep(key, face.clone(), context);
        if let Some(store) = &self.store {
            let (owned, stored) = (key.clone(), face.clone());
            store.write(lane_of(key), Write::Droppable, move |s| {
                s.put_face(&owned, &stored)
            });
        }
        Ok(face)
    }

    /// The API said this face does not exist: drop what was known of it.
    fn forget(&self, key: &FaceKey) {
        self.absent.insert(key.clone(), self.freshness.now());
        self.drop_copies(key);
    }

    /// The face of `key` changed: its copies in memory and the store go,
    /// and so does a remembered absence.
    pub fn changed(&self, key: &FaceKey) {
        self.absent.remove(key);
        self.drop_copies(key);
    }

    fn drop_copies(&self, key: &FaceKey) {
        self.memory.remove(key);
        if let Some(store) = &self.store {
            let owned = key.clone();
            store.write(lane_of(key), Write::Needed, move |s| s.remove_face(&owned));
        }
    }
}

/// The store lane of `key`: every access to one face goes in one order.
fn lane_of(key: &FaceKey) -> u64 {
    crate::hash::digest(key.id.as_bytes()).wrapping_add(u64::from(key.cropped))
}
