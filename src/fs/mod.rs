//! The filesystem core: lookups, attributes, listings, open files and reads,
//! in terms of the API client and the caches. It knows nothing of FUSE;
//! every failure is an [`FsError`] that carries its errno.
//!
//! Every operation that may need the API takes a [`Fetch`]. The adapter first
//! calls it with [`Fetch::Never`], on the kernel's thread, and gets either the
//! answer from memory or [`Answer::WouldBlock`]; only then does it call again
//! with [`Fetch::Allowed`] on a worker. A call that answers `WouldBlock` must
//! have changed nothing — numbered no inode, noted no read-ahead, counted no
//! miss — so that the second call behaves exactly as if it were the first.

pub mod cache;
pub mod clock;
pub mod error;
pub mod face;
pub mod inodes;
pub mod layout;
pub mod listing;
pub mod metrics;
pub mod pending;
pub mod readahead;
pub mod store;
pub mod writing;

use std::collections::HashMap;
use std::ffi::OsStr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant, SystemTime};

use parking_lot::Mutex;

use self::cache::{ByteLru, CacheUsage, NegativeCache};
use self::clock::{Clock, SystemClock};
use self::error::err;
pub use self::error::FsError;
use self::face::{mtime_of, Face, FaceMeta};
pub use self::inodes::ROOT_INO;
use self::inodes::{dir_ino, dir_kind, face_ino, InodeTable};
use self::layout::FaceKey;
use self::listing::Listing;
use self::metrics::FsMetrics;
use self::readahead::ReadAhead;
use self::store::{FaceStore, Peek};
use self::writing::{OpenMode, Writes, FIRST_WRITTEN_INO, WRITTEN_GRACE};
use crate::api::{ApiError, FaceApi, IdKind, Priority};
use crate::sync::single_flight::SingleFlight;
use crate::sync::worker_pool::WorkerPool;

/// Absent names remembered at most; beyond it the oldest are forgotten.
const NEGATIVE_ENTRIES: usize = 16_384;
/// After a refresh fails for an outage, faces that can be served stale are,
/// without asking the API again, for this long: otherwise every read during
/// an outage would wait out the whole retry budget first.
const OUTAGE_BACKOFF: Duration = Duration::from_secs(30);

#[derive(Clone, Debug)]
pub struct FsConfig {
    /// Bytes of face images kept in memory.
    pub cache_bytes: u64,
    /// How long a fetched face or listing is trusted.
    pub ttl: Duration,
    /// How long a face or listing may be trusted while the event connection
    /// has been up since it was fetched (`--ttl-with-events`).
    pub ttl_with_events: Duration,
    /// How long past its TTL a face may still be served when refreshing it
    /// fails for an outage (never a listing: see `listing`).
    pub max_stale: Duration,
    /// How long "does not exist" is remembered.
    pub negative_ttl: Duration,
    pub uid: u32,
    pub gid: u32,
    pub file_mode: u16,
    pub dir_mode: u16,
    /// Downloads that directory read-ahead may start ahead of a sequential
    /// walk; 0 turns read-ahead off.
    pub readahead: usize,
    /// Threads that run read-ahead downloads.
    pub prefetch_threads: usize,
    /// Writing `<id>.jpg` uploads it (`--writable`).
    pub writable: bool,
}

impl Default for FsConfig {
    fn default() -> FsConfig {
        FsConfig {
            cache_bytes: 256 << 20,
            ttl: Duration::from_secs(600),
            max_stale: Duration::from_secs(3 * 24 * 3600),
            ttl_with_events: Duration::from_secs(24 * 3600),
            negative_ttl: Duration::from_secs(30),
            uid: 0,
            gid: 0,
            file_mode: 0o400,
            dir_mode: 0o700,
            readahead: 64,
            prefetch_threads: 32,
            writable: false,
        }
    }
}

/// What the kernel must forget after a change: a name in a directory, or
/// the attributes and pages of an inode.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Invalidation {
    Entry { parent: u64, name: String },
    Inode(u64),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NodeKind {
    Directory,
    File,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attr {
    pub ino: u64,
    pub kind: NodeKind,
    pub size: u64,
    pub mtime: SystemTime,
    pub perm: u16,
    pub nlink: u32,
    pub uid: u32,
    pub gid: u32,
    /// How long this answer stays true: the kernel may cache it that long.
    pub valid_for: Duration,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirEntry {
    pub ino: u64,
    pub kind: NodeKind,
    pub name: String,
}

/// Whether a call may wait for the API.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fetch {
    Allowed,
    Never,
}

/// The outcome of an operation that may need the API.
#[must_use]
#[derive(Debug)]
pub enum Answer<T> {
    Done(Result<T, FsError>),
    /// Only ever with [`Fetch::Never`]: answering needs the API. Nothing was
    /// changed; call again with [`Fetch::Allowed`] where waiting is fine.
    WouldBlock,
}

/// Inside the core: why a step did not produce its value.
enum Stop {
    WouldBlock,
    Failed(FsError),
}

impl From<FsError> for Stop {
    fn from(e: FsError) -> Stop {
        Stop::Failed(e)
    }
}

type Step<T> = Result<T, Stop>;

impl<T> From<Step<T>> for Answer<T> {
    fn from(step: Step<T>) -> Answer<T> {
        match step {
            Ok(value) => Answer::Done(Ok(value)),
            Err(Stop::Failed(e)) => Answer::Done(Err(e)),
            Err(Stop::WouldBlock) => Answer::WouldBlock,
        }
    }
}

/// What one open directory shows, fixed at its first read.
#[derive(Clone)]
enum DirSnapshot {
    Root,
    Faces(IdKind, Arc<Listing>),
}

/// Entries of an open directory from an offset on. Nothing is copied: each
/// entry is made from the listing as the caller takes it, so reading a
/// directory of a million faces costs what the reader reads.
pub struct DirPage {
    dir: DirSnapshot,
    ino: u64,
    start: u64,
}

impl DirPage {
    /// Each entry with the offset of the one after it.
    pub fn entries(&self) -> impl Iterator<Item = (u64, DirEntry)> + '_ {
        let total = match &self.dir {
            DirSnapshot::Root => 2 + IdKind::ALL.len(),
            DirSnapshot::Faces(_, listing) => 2 + listing.files(),
        };
        let start = usize::try_from(self.start).unwrap_or(usize::MAX);
        (start..total).filter_map(move |i| Some((i as u64 + 1, self.entry(i)?)))
    }

    fn entry(&self, i: usize) -> Option<DirEntry> {
        let dir = |name: &str, ino| DirEntry {
            ino,
            kind: NodeKind::Directory,
            name: name.to_owned(),
        };
        match (i, &self.dir) {
            (0, _) => Some(dir(".", self.ino)),
            (1, _) => Some(dir("..", ROOT_INO)),
            (i, DirSnapshot::Root) => IdKind::ALL.get(i - 2).map(|k| dir(k.as_str(), dir_ino(*k))),
            (i, DirSnapshot::Faces(kind, listing)) => {
                let key = listing.file_at(*kind, i - 2)?;
                Some(DirEntry {
                    ino: face_ino(&key),
                    kind: NodeKind::File,
                    name: key.file_name(),
                })
            }
        }
    }
}

pub struct ReadSlice {
    /// `None` for a read at or past the end, which needs no bytes.
    face: Option<Arc<Face>>,
    start: usize,
    end: usize,
    /// Bytes of a file being written, copied out.
    copied: Vec<u8>,
}

impl ReadSlice {
    fn copied(bytes: Vec<u8>) -> ReadSlice {
        ReadSlice {
            copied: bytes,
            ..ReadSlice::EMPTY
        }
    }

    fn of(face: Arc<Face>, offset: u64, size: u32) -> ReadSlice {
        let len = face.bytes.len();
        let start = usize::try_from(offset).unwrap_or(usize::MAX).min(len);
        let end = start.saturating_add(size as usize).min(len);
        ReadSlice {
            face: Some(face),
            start,
            end,
            copied: Vec::new(),
        }
    }

    const EMPTY: ReadSlice = ReadSlice {
        face: None,
        start: 0,
        end: 0,
        copied: Vec::new(),
    };

    pub fn bytes(&self) -> &[u8] {
        self.face
            .as_ref()
            .map_or(&self.copied[..], |f| &f.bytes[self.start..self.end])
    }
}

/// Faces being read by inode. With the kernel opening files itself there is
/// no handle to hold a face between the reads of one file: without a pin, a
/// cache smaller than what is being read at once would evict a face between
/// two of its reads and download it again for each. A pin ends once as many
/// bytes as the face has were read (the kernel's reads of one file may come
/// out of order), on FORGET, after [`PIN_IDLE`] without a read, or when more
/// than `limit` files are being read; its bytes stay inside the memory budget.
struct ReadPins {
    pins: HashMap<u64, Pin>,
    limit: usize,
}

struct Pin {
    face: Arc<Face>,
    served: u64,
    last_read: Instant,
}

/// A file not read for this long is taken as abandoned half-way.
const PIN_IDLE: Duration = Duration::from_secs(2);

impl ReadPins {
    fn new(limit: usize) -> ReadPins {
        ReadPins {
            pins: HashMap::new(),
            limit,
        }
    }

    fn get(&mut self, ino: u64) -> Option<Arc<Face>> {
        self.pins.get(&ino).map(|p| p.face.clone())
    }

    /// Drops pins of files no one has read for [`PIN_IDLE`].
    fn sweep(&mut self, now: Instant) {
        self.pins
            .retain(|_, p| now.saturating_duration_since(p.last_read) < PIN_IDLE);
    }

    fn pin(&mut self, ino: u64, face: Arc<Face>, now: Instant) {
        self.sweep(now);
        if self.pins.len() >= self.limit {
            let oldest = self
                .pins
                .iter()
                .min_by_key(|(_, p)| p.last_read)
                .map(|(i, _)| *i);
            if let Some(oldest) = oldest {
                self.pins.remove(&oldest);
            }
        }
        self.pins.entry(ino).or_insert(Pin {
            face,
            served: 0,
            last_read: now,
        });
    }

    /// Notes `bytes` served from `ino`'s pin; ends the pin once the whole
    /// face has been served.
    fn served(&mut self, ino: u64, bytes: usize, now: Instant) {
        if let Some(pin) = self.pins.get_mut(&ino) {
            pin.served += bytes as u64;
            pin.last_read = now;
            if pin.served >= pin.face.bytes.len() as u64 {
                self.pins.remove(&ino);
            }
        }
    }

    fn unpin(&mut self, ino: u64) {
        self.pins.remove(&ino);
    }
}

pub struct FaceFs {
    me: Weak<FaceFs>,
    api: Arc<dyn FaceApi>,
    config: FsConfig,
    clock: Arc<dyn Clock>,
    mounted_at: SystemTime,
    faces: ByteLru<FaceKey, Face>,
    /// The on-disk tier behind `faces` (`--cache-dir`).
    store: Option<Arc<FaceStore>>,
    /// Until when stale faces are served without asking (see [`OUTAGE_BACKOFF`]).
    outage_until: Mutex<Option<Instant>>,
    /// Since when the event connection has been up without a break.
    events_up_since: Mutex<Option<SystemTime>>,
    absent: NegativeCache<FaceKey>,
    downloads: SingleFlight<FaceKey, Result<Arc<Face>, FsError>>,
    listings: Mutex<HashMap<IdKind, Arc<Listing>>>,
    listing_flights: SingleFlight<IdKind, Result<Arc<Listing>, FsError>>,
    inodes: Mutex<InodeTable>,
    open_files: Mutex<HashMap<u64, Arc<Face>>>,
    open_dirs: Mutex<HashMap<u64, Option<DirSnapshot>>>,
    next_handle: AtomicU64,
    readahead: Mutex<HashMap<IdKind, ReadAhead>>,
    prefetchers: Option<WorkerPool>,
    /// Set when the mount is going away: long work in flight gives up.
    stopping: AtomicBool,
    /// Faces being read by inode (see [`ReadPins`]).
    reading: Mutex<ReadPins>,
    /// Files being written (`--writable`).
    writes: Mutex<Writes>,
    /// Users the API said do not exist, by id.
    absent_users: NegativeCache<(IdKind, String)>,
    /// Faces uploaded a moment ago (see [`WRITTEN_GRACE`]).
    recently_written: NegativeCache<FaceKey>,
    /// Digests of faces replaced by an upload, and when: bytes with such a
    /// digest fetched before then are not trusted, under whatever id.
    superseded: Mutex<lru::LruCache<u64, SystemTime>>,
    /// Nothing fetched before this (ms since the epoch; 0: none) is fresh:
    /// changes may have been missed (see [`Self::distrust_before`]).
    trust_floor: AtomicU64,
    /// Tells the kernel what to forget (set by the daemon).
    kernel: std::sync::OnceLock<Box<dyn Fn(Vec<Invalidation>) + Send + Sync>>,
    metrics: FsMetrics,
}

impl FaceFs {
    pub fn new(
        api: Arc<dyn FaceApi>,
        config: FsConfig,
        store: Option<Arc<FaceStore>>,
    ) -> Arc<FaceFs> {
        FaceFs::with_clock(api, config, store, Arc::new(SystemClock))
    }

    pub fn with_clock(
        api: Arc<dyn FaceApi>,
        config: FsConfig,
        store: Option<Arc<FaceStore>>,
        clock: Arc<dyn Clock>,
    ) -> Arc<FaceFs> {
        let prefetchers = (config.readahead > 0)
            .then(|| WorkerPool::new("facefs-prefetch", config.prefetch_threads))
            .and_then(|pool| {
                pool.map_err(|e| log::warn!("read-ahead is off: cannot start its threads: {e}"))
                    .ok()
            });
        let pin_limit = config.prefetch_threads.max(8) * 2;
        let config_negative_ttl = config.negative_ttl;
        Arc::new_cyclic(|me| FaceFs {
            me: me.clone(),
            api,
            faces: ByteLru::new(config.cache_bytes),
            store,
            outage_until: Mutex::new(None),
            events_up_since: Mutex::new(None),
            absent: NegativeCache::new(config.negative_ttl, NEGATIVE_ENTRIES),
            config,
            clock,
            mounted_at: SystemTime::now(),
            downloads: SingleFlight::default(),
            listings: Mutex::new(HashMap::new()),
            listing_flights: SingleFlight::default(),
            inodes: Mutex::new(InodeTable::default()),
            open_files: Mutex::new(HashMap::new()),
            open_dirs: Mutex::new(HashMap::new()),
            next_handle: AtomicU64::new(1),
            readahead: Mutex::new(HashMap::new()),
            prefetchers,
            stopping: AtomicBool::new(false),
            reading: Mutex::new(ReadPins::new(pin_limit)),
            writes: Mutex::new(Writes::default()),
            absent_users: NegativeCache::new(config_negative_ttl, NEGATIVE_ENTRIES),
            recently_written: NegativeCache::new(WRITTEN_GRACE, NEGATIVE_ENTRIES),
            superseded: Mutex::new(lru::LruCache::new(
                std::num::NonZeroUsize::new(NEGATIVE_ENTRIES).expect("not zero"),
            )),
            kernel: std::sync::OnceLock::new(),
            trust_floor: AtomicU64::new(0),
            metrics: FsMetrics::default(),
        })
    }

    /// Where invalidations go once the kernel is there to hear them.
    pub fn set_kernel(&self, tell: Box<dyn Fn(Vec<Invalidation>) + Send + Sync>) {
        let _ = self.kernel.set(tell);
    }

    /// Tells the kernel to forget what changed (no-op before `set_kernel`).
    pub fn tell_kernel(&self, forget: Vec<Invalidation>) {
        if forget.is_empty() {
            return;
        }
        self.metrics.invalidations.inc_by(forget.len() as u64);
        if let Some(tell) = self.kernel.get() {
            tell(forget);
        }
    }

    /// The mount is going away: listings under way end with `EIO` before
    /// their next page instead of running on.
    pub fn stop(&self) {
        self.stopping.store(true, Ordering::SeqCst);
    }

    pub fn cache_usage(&self) -> CacheUsage {
        self.faces.usage()
    }

    pub fn metrics(&self) -> &FsMetrics {
        &self.metrics
    }

    fn now(&self) -> Instant {
        self.clock.now()
    }

    /// How long ago `at` was on the wall clock; `None` for a time in the
    /// future (the clock was stepped back), which is never fresh.
    fn age(&self, at: SystemTime) -> Option<Duration> {
        self.clock.wall().duration_since(at).ok()
    }

    fn fresh(&self, at: SystemTime) -> bool {
        let floor = self.trust_floor.load(Ordering::Relaxed);
        if floor > 0 && at < SystemTime::UNIX_EPOCH + Duration::from_millis(floor) {
            return false;
        }
        self.age(at)
            .is_some_and(|age| age < self.config.ttl || self.trusted_by_events(at, age))
    }

    /// Whether face bytes of `digest` fetched at `at` may be served as
    /// fresh: fresh, and not replaced by an upload since.
    fn fresh_face(&self, digest: u64, at: SystemTime) -> bool {
        self.fresh(at) && !self.superseded_since(digest, at)
    }

    fn superseded_since(&self, digest: u64, at: SystemTime) -> bool {
        self.superseded
            .lock()
            .peek(&digest)
            .is_some_and(|replaced| at <= *replaced)
    }

    /// Whether the event connection vouches for what was fetched at `at`:
    /// it has been up without a break since then (so any change since came
    /// as an event), and `--ttl-with-events`, the bound on an event lost
    /// anyway, has not passed.
    fn trusted_by_events(&self, at: SystemTime, age: Duration) -> bool {
        age < self.config.ttl_with_events
            && self.events_up_since.lock().is_some_and(|since| since <= at)
    }

    /// How long the kernel may keep an answer: the rest of `--ttl`, or, for
    /// what the event connection vouches for, `--ttl` again (events tell
    /// the kernel themselves; if the connection drops, the kernel's copy
    /// lasts no longer than without events).
    fn remaining(&self, at: SystemTime) -> Duration {
        match self.age(at) {
            Some(age) if age < self.config.ttl => self.config.ttl - age,
            Some(age) if self.trusted_by_events(at, age) => self
                .config
                .ttl
                .min(self.config.ttl_with_events.saturating_sub(age)),
            _ => Duration::ZERO,
        }
    }

    /// Changes may have been missed (the fleet's event stream lost some):
    /// nothing fetched before `at` is trusted as fresh any more; each face
    /// and listing is fetched again when next needed (outages may still
    /// serve it stale, within `--max-stale`).
    pub fn distrust_before(&self, at: SystemTime) {
        let ms = at
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis() as u64;
        self.trust_floor.fetch_max(ms, Ordering::Relaxed);
    }

    /// The on-disk store, if there is one.
    pub fn store(&self) -> Option<&Arc<FaceStore>> {
        self.store.as_ref()
    }

    /// The event connection went up or down. While it is down, and for
    /// what was fetched before it came back, `--ttl` alone applies: events
    /// sent while no client was connected may be lost.
    pub fn events_connected(&self, up: bool) {
        *self.events_up_since.lock() = up.then(|| self.clock.wall());
    }

    fn dir_attr(&self, ino: u64) -> Attr {
        Attr {
            ino,
            kind: NodeKind::Directory,
            size: 0,
            mtime: self.mounted_at,
            perm: self.config.dir_mode,
            nlink: if ino == ROOT_INO {
                2 + IdKind::ALL.len() as u32
            } else {
                2
            },
            uid: self.config.uid,
            gid: self.config.gid,
            valid_for: self.config.ttl,
        }
    }

    fn face_attr(&self, ino: u64, meta: FaceMeta) -> Attr {
        Attr {
            ino,
            kind: NodeKind::File,
            size: meta.size,
            mtime: mtime_of(meta.digest),
            perm: self.config.file_mode,
            nlink: 1,
            uid: self.config.uid,
            gid: self.config.gid,
            valid_for: self.remaining(meta.fetched_at),
        }
    }

    /// The face and version inode `ino` is; directories and unknown inodes
    /// are errors.
    fn face_version(&self, ino: u64) -> Result<(FaceKey, FaceMeta), FsError> {
        if ino == ROOT_INO || dir_kind(ino).is_some() {
            return Err(err!(libc::EISDIR, "inode {ino} is a directory"));
        }
        self.inodes
            .lock()
            .node(ino)
            .map(|n| (n.key.clone(), n.meta))
            .ok_or_else(|| err!(libc::ENOENT, "no inode {ino}"))
    }

    pub fn lookup(&self, parent: u64, name: &OsStr, fetch: Fetch) -> Answer<Attr> {
        self.lookup_step(parent, name, fetch).into()
    }

    fn lookup_step(&self, parent: u64, name: &OsStr, fetch: Fetch) -> Step<Attr> {
        if parent == ROOT_INO {
            let kind = layout::dir_kind(name)
                .ok_or_else(|| err!(libc::ENOENT, "no such directory in the root"))?;
            return Ok(self.dir_attr(dir_ino(kind)));
        }
        let Some(kind) = dir_kind(parent) else {
            return Err(match self.inodes.lock().node(parent) {
                Some(_) => err!(libc::ENOTDIR, "inode {parent} is a face, not a directory"),
                None => err!(libc::ENOENT, "no inode {parent}"),
            }
            .into());
        };
        if self.config.writable {
            if let Some(attr) = self.written_lookup(kind, name) {
                return Ok(attr);
            }
        }
        let (id, cropped) = layout::parse_face_name(name)
            .ok_or_else(|| err!(libc::ENOENT, "a name outside the layout"))?;
        let key = FaceKey::new(kind, id, cropped);
        if fetch == Fetch::Allowed {
            // Before the download, so the next faces come in parallel with it.
            self.read_ahead_after(&key);
            return self.stat_face(&key, fetch);
        }
        let answer = self.stat_face(&key, fetch);
        if !matches!(answer, Err(Stop::WouldBlock)) {
            self.read_ahead_after(&key);
        }
        answer
    }

    /// Notes a lookup of `key`; if the lookups are walking the listing in
    /// order, starts downloading the faces that come next (see [`ReadAhead`]).
    fn read_ahead_after(&self, key: &FaceKey) {
        let Some(prefetchers) = &self.prefetchers else {
            return;
        };
        let Some(listing) = self.listings.lock().get(&key.kind).cloned() else {
            return;
        };
        let Some(place) = listing.place_of(key) else {
            return;
        };
        let places = self
            .readahead
            .lock()
            .entry(key.kind)
            .or_default()
            .on_lookup(place, listing.files(), self.readahead_window());
        let Some(places) = places else { return };
        for next in places {
            let Some(next_key) = listing.file_at(key.kind, next) else {
                break;
            };
            if self.absent.contains(&next_key, self.now())
                || self
                    .faces
                    .get(&next_key)
                    .is_some_and(|f| self.fresh_face(f.digest, f.fetched_at))
            {
                continue;
            }
            let me = self.me.clone();
            prefetchers.spawn(move || {
                if let Some(fs) = me.upgrade() {
                    // A fresh stored face costs the walk a header read, not
                    // a download: only the disk is asked to read it ahead.
                    let stored = fs.store.as_ref().and_then(|s| s.meta(&next_key));
                    if stored.is_some_and(|m| fs.fresh_face(m.digest, m.fetched_at)) {
                        return;
                    }
                    // Failures are the reader's to see (and log) when it gets there.
                    if let Err(Stop::Failed(e)) = fs.load_face(&next_key, Fetch::Allowed) {
                        log::debug!("read-ahead: {e}");
                    }
                }
            });
        }
    }

    /// How far read-ahead may go: no further than half of what the cache
    /// holds of faces of the size seen so far, or it would evict faces it
    /// fetched before the walk reaches them.
    fn readahead_window(&self) -> usize {
        let usage = self.faces.usage();
        if usage.entries == 0 {
            return self.config.readahead;
        }
        let average = (usage.bytes / usage.entries as u64).max(1);
        let fits = usize::try_from(self.config.cache_bytes / 2 / average).unwrap_or(usize::MAX);
        self.config.readahead.min(fits)
    }

    pub fn getattr(&self, ino: u64, fetch: Fetch) -> Answer<Attr> {
        if ino == ROOT_INO || dir_kind(ino).is_some() {
            return Answer::Done(Ok(self.dir_attr(ino)));
        }
        if let Some(attr) = self.written_attr(ino) {
            return Answer::Done(Ok(attr));
        }
        let step = self
            .face_version(ino)
            .map_err(Stop::from)
            .and_then(|(key, version)| {
                // An older version's inode describes its own bytes, for good;
                // not to be cached, as the name's next lookup finds the newer one.
                let old = || Attr {
                    valid_for: Duration::ZERO,
                    ..self.face_attr(ino, version)
                };
                if !self.inodes.lock().is_current(ino) {
                    return Ok(old());
                }
                let meta = self.face_meta(&key, fetch)?;
                if meta.digest != version.digest {
                    return Ok(old());
                }
                self.inodes.lock().confirm(&key, meta);
                Ok(self.face_attr(ino, meta))
            });
        step.into()
    }

    /// The kernel forgets `lookups` lookups of `ino`.
    pub fn forget(&self, ino: u64, lookups: u64) {
        if ino >= FIRST_WRITTEN_INO {
            self.forget_written(ino, lookups);
            return;
        }
        if self.inodes.lock().forget(ino, lookups) {
            self.reading.lock().unpin(ino);
        }
    }

    /// `ENOENT` while the API's "does not exist" for `key` is remembered.
    fn known_absent(&self, key: &FaceKey) -> Result<(), FsError> {
        if self.absent.contains(key, self.now()) {
            return Err(err!(
                libc::ENOENT,
                "the API said this {} face does not exist",
                key.kind
            ));
        }
        Ok(())
    }

    /// What `stat` shows of a face: from what is known while it is fresh,
    /// else by downloading it, since only the bytes tell the exact size.
    fn face_meta(&self, key: &FaceKey, fetch: Fetch) -> Step<FaceMeta> {
        self.known_absent(key)?;
        {
            let inodes = self.inodes.lock();
            let known = inodes
                .existing(key)
                .and_then(|ino| inodes.node(ino))
                .map(|n| n.meta);
            if let Some(meta) = known.filter(|m| self.fresh_face(m.digest, m.fetched_at)) {
                return Ok(meta);
            }
        }
        if let (Some(store), None) = (&self.store, self.faces.get(key)) {
            // A fresh stored face answers `stat` from its header alone; on
            // the kernel's thread only if the header is in the page cache.
            let stored = match fetch {
                Fetch::Allowed => store.meta(key),
                Fetch::Never => match store.meta_now(key) {
                    Peek::Found(meta) => Some(meta),
                    Peek::Absent => None,
                    Peek::WouldBlock => return Err(Stop::WouldBlock),
                },
            };
            if let Some(meta) = stored.filter(|m| self.fresh_face(m.digest, m.fetched_at)) {
                return Ok(meta);
            }
        }
        Ok(self.load_face(key, fetch)?.meta())
    }

    /// The attributes of a face, numbering its inode for the kernel; those
    /// of what is being written to it while it is.
    fn stat_face(&self, key: &FaceKey, fetch: Fetch) -> Step<Attr> {
        let meta = self.face_meta(key, fetch)?;
        let ino = self.inodes.lock().looked_up(key, meta);
        Ok(self
            .written_attr(ino)
            .unwrap_or_else(|| self.face_attr(ino, meta)))
    }

    /// A face's bytes, from memory while fresh, else (once for all
    /// concurrent callers) from the store or the API: see [`Self::refresh`].
    fn load_face(&self, key: &FaceKey, fetch: Fetch) -> Step<Arc<Face>> {
        self.known_absent(key)?;
        let cached = || {
            self.faces
                .get(key)
                .filter(|f| self.fresh_face(f.digest, f.fetched_at))
        };
        if let Some(face) = cached() {
            self.metrics.cache(true);
            return Ok(face);
        }
        if fetch == Fetch::Never {
            // The store, on the kernel's thread, only from the page cache.
            let stored = self
                .store
                .as_ref()
                .and_then(|s| s.face_now(key, |at| self.fresh(at)))
                .filter(|f| !self.superseded_since(f.digest, f.fetched_at));
            if let Some(face) = stored.map(Arc::new) {
                self.metrics.cache(true);
                self.keep_in_memory(key, face.clone());
                return Ok(face);
            }
            return Err(Stop::WouldBlock);
        }
        let result = self.downloads.run(key, || {
            if let Some(face) = cached() {
                return Ok(face);
            }
            self.refresh(key)
        });
        Ok(result?)
    }

    /// A face not fresh in memory: the stored one while it is fresh, else a
    /// download. When the download fails for an outage, the newest bytes at
    /// hand (memory or store) are served if they are within `max_stale` of
    /// their TTL; "not found" is never covered up.
    fn refresh(&self, key: &FaceKey) -> Result<Arc<Face>, FsError> {
        let mut stale = self.faces.get(key);
        if let Some(store) = &self.store {
            let stored = store.face(key).map_err(|message| {
                err!(libc::EIO, "reading a stored {} face: {message}", key.kind)
            })?;
            if let Some(face) = stored.map(Arc::new) {
                if self.fresh_face(face.digest, face.fetched_at) {
                    self.metrics.cache(true);
                    self.keep_in_memory(key, face.clone());
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
        let stale = stale.filter(|f| self.servable_stale(f));
        if let Some(face) = &stale {
            if self
                .outage_until
                .lock()
                .is_some_and(|until| self.now() < until)
            {
                return Ok(self.serve_stale(key, face.clone()));
            }
        }
        match self.download(key) {
            Ok(face) => {
                *self.outage_until.lock() = None;
                Ok(face)
            }
            Err(e) if e.is_outage() && stale.is_some() => {
                let backoff = self.now() + OUTAGE_BACKOFF;
                if self.outage_until.lock().replace(backoff).is_none() {
                    log::warn!(
                        "the API is failing ({e}); serving faces up to {} past their TTL from what facefs holds, and asking the API again every {OUTAGE_BACKOFF:?}",
                        humantime::format_duration(self.config.max_stale)
                    );
                }
                Ok(self.serve_stale(key, stale.unwrap()))
            }
            Err(e) => {
                if e.is_not_found() {
                    self.forget_face(key);
                }
                // Only a create asks (see `writing`).
                if self.config.writable && matches!(e, ApiError::UserNotFound) {
                    self.absent_users
                        .insert((key.kind, key.id.clone()), self.now());
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

    /// Whether `face`, past its TTL, may still stand in for a refresh.
    fn servable_stale(&self, face: &Face) -> bool {
        !self.superseded_since(face.digest, face.fetched_at)
            && self
                .age(face.fetched_at)
                .is_some_and(|age| age < self.config.ttl.saturating_add(self.config.max_stale))
    }

    fn serve_stale(&self, key: &FaceKey, face: Arc<Face>) -> Arc<Face> {
        log::debug!("serving a stale {} face: the API is failing", key.kind);
        self.metrics.stale_served.inc();
        self.keep_in_memory(key, face.clone());
        face
    }

    /// A face now known good: for `stat`, in memory.
    fn keep_in_memory(&self, key: &FaceKey, face: Arc<Face>) {
        self.inodes.lock().confirm(key, face.meta());
        self.faces
            .insert(key.clone(), face.clone(), face.bytes.len() as u64);
    }

    fn download(&self, key: &FaceKey) -> Result<Arc<Face>, ApiError> {
        self.metrics.cache(false);
        let _in_flight = self.metrics.download();
        // A name no fresh listing shows waits behind those one does: probes
        // of names that do not exist must not hold up the faces that do.
        let priority = if self.listed(key) {
            Priority::Listed
        } else {
            Priority::Probe
        };
        let bytes = self
            .api
            .get_face(key.kind, &key.id, key.cropped, priority)?;
        // Fetched by another mount of the fleet a moment ago, or now; a
        // time ahead of this clock counts as now.
        let now = self.clock.wall();
        let at = bytes.fetched_at.map_or(now, |at| at.min(now));
        let face = Arc::new(Face::new(bytes, at));
        self.keep_in_memory(key, face.clone());
        if let Some(store) = &self.store {
            store.put_face(key, &face);
        }
        Ok(face)
    }

    /// Whether a fresh listing shows `key`.
    fn listed(&self, key: &FaceKey) -> bool {
        self.listings
            .lock()
            .get(&key.kind)
            .is_some_and(|l| self.fresh(l.fetched_at) && l.place_of(key).is_some())
    }

    /// The API said this face does not exist: drop what was known of it.
    fn forget_face(&self, key: &FaceKey) {
        self.absent.insert(key.clone(), self.now());
        self.faces.remove(key);
        if let Some(store) = &self.store {
            store.remove_face(key);
        }
    }

    /// A user's faces changed (an event said so): both faces under each id
    /// given are dropped from memory and the store, what `stat` knew of them
    /// expires, and the listings gain or lose the user as `face_uploaded`
    /// says. Returns what the kernel must forget. Ids the event does not
    /// name (`user_id` without its field scope) stay until their TTL.
    pub fn user_changed(
        &self,
        ids: &[(IdKind, &str)],
        face_uploaded: Option<bool>,
    ) -> Vec<Invalidation> {
        let mut forget = Vec::new();
        for (kind, id) in ids {
            self.absent_users.remove(&(*kind, (*id).to_owned()));
            for cropped in [false, true] {
                let key = FaceKey::new(*kind, *id, cropped);
                self.faces.remove(&key);
                self.absent.remove(&key);
                if let Some(store) = &self.store {
                    store.remove_face(&key);
                }
                let ino = {
                    let mut inodes = self.inodes.lock();
                    inodes.expire(&key);
                    inodes.existing(&key)
                };
                // A name the kernel holds is one it looked up and has not
                // forgotten (it keeps no "does not exist"): only those are
                // told, since each notice takes the directory's lock.
                if let Some(ino) = ino {
                    self.reading.lock().unpin(ino);
                    forget.push(Invalidation::Entry {
                        parent: dir_ino(*kind),
                        name: key.file_name(),
                    });
                    forget.push(Invalidation::Inode(ino));
                }
            }
            let Some(listed) = face_uploaded else {
                continue;
            };
            let mut listings = self.listings.lock();
            let Some(listing) = listings.get(kind) else {
                continue;
            };
            let changed = if listed {
                listing.with(id)
            } else {
                listing.without(id)
            };
            if let Some(changed) = changed.map(Arc::new) {
                if let Some(store) = &self.store {
                    store.put_listing(*kind, &changed);
                }
                listings.insert(*kind, changed);
            }
        }
        forget
    }

    fn handle(&self) -> u64 {
        self.next_handle.fetch_add(1, Ordering::Relaxed)
    }

    /// Opens a face for reading and returns the handle, which holds the bytes
    /// of the inode's version for every read of this open file.
    pub fn open(&self, ino: u64, mode: OpenMode, fetch: Fetch) -> Answer<u64> {
        self.open_step(ino, mode, fetch).into()
    }

    fn open_step(&self, ino: u64, mode: OpenMode, fetch: Fetch) -> Step<u64> {
        if let Some(opened) = self.open_written(ino, mode) {
            return Ok(opened?);
        }
        let (key, version) = self.face_version(ino)?;
        let face = self.version_bytes(&key, version.digest, fetch)?;
        let fh = self.handle();
        self.open_files.lock().insert(fh, face);
        Ok(fh)
    }

    /// The bytes of the version `digest` of `key`: from the cache whatever its
    /// age (a version's bytes never change), else downloaded if the API
    /// still serves that version; a face changed since is `EIO`, never
    /// other bytes under the old inode.
    fn version_bytes(&self, key: &FaceKey, digest: u64, fetch: Fetch) -> Step<Arc<Face>> {
        if let Some(face) = self.faces.get(key).filter(|f| f.digest == digest) {
            self.metrics.cache(true);
            return Ok(face);
        }
        let face = self.load_face(key, fetch)?;
        if face.digest != digest {
            return Err(err!(
                libc::EIO,
                "this {} face changed while the file was open; open it again for the new one",
                key.kind
            )
            .into());
        }
        Ok(face)
    }

    /// Reads inode `ino` without an open handle (the kernel opens files
    /// itself once facefs answers `open` with ENOSYS): see [`Self::version_bytes`].
    pub fn read_inode(&self, ino: u64, offset: u64, size: u32, fetch: Fetch) -> Answer<ReadSlice> {
        let step = self
            .face_version(ino)
            .map_err(Stop::from)
            .and_then(|(key, version)| {
                // The end of the file needs no bytes (and must not wait for a
                // download: the reader may hold memory others wait for).
                if offset >= version.size {
                    return Ok(ReadSlice::EMPTY);
                }
                let pinned = self.reading.lock().get(ino);
                let face = match pinned {
                    Some(face) => face,
                    None => {
                        // Abandoned reads give their memory back before this
                        // one may wait for memory.
                        self.reading.lock().sweep(self.now());
                        let face = self.version_bytes(&key, version.digest, fetch)?;
                        self.reading.lock().pin(ino, face.clone(), self.now());
                        face
                    }
                };
                let slice = ReadSlice::of(face, offset, size);
                self.reading
                    .lock()
                    .served(ino, slice.bytes().len().max(1), self.now());
                Ok(slice)
            });
        step.into()
    }

    pub fn read(&self, fh: u64, offset: u64, size: u32, fetch: Fetch) -> Answer<ReadSlice> {
        let face = self.open_files.lock().get(&fh).cloned();
        match face {
            Some(face) => Answer::Done(Ok(ReadSlice::of(face, offset, size))),
            None => self
                .read_written(fh, offset, size, fetch)
                .map(ReadSlice::copied)
                .into(),
        }
    }

    pub fn release(&self, fh: u64) {
        if self.open_files.lock().remove(&fh).is_none() {
            self.release_written(fh);
        }
    }

    pub fn opendir(&self, ino: u64) -> Result<u64, FsError> {
        if ino != ROOT_INO && dir_kind(ino).is_none() {
            return Err(match self.inodes.lock().node(ino) {
                Some(_) => err!(libc::ENOTDIR, "inode {ino} is a face, not a directory"),
                None => err!(libc::ENOENT, "no inode {ino}"),
            });
        }
        let fh = self.handle();
        self.open_dirs.lock().insert(fh, None);
        Ok(fh)
    }

    /// Directory entries from `offset` on, made as the caller takes them.
    /// The first call of a handle takes a snapshot of the listing that later
    /// calls page through, so one `ls` sees one consistent listing; a
    /// listing that cannot be had whole fails instead of showing part.
    pub fn readdir(&self, ino: u64, fh: u64, offset: u64, fetch: Fetch) -> Answer<DirPage> {
        self.readdir_step(ino, fh, offset, fetch).into()
    }

    fn readdir_step(&self, ino: u64, fh: u64, offset: u64, fetch: Fetch) -> Step<DirPage> {
        let snapshot = self
            .open_dirs
            .lock()
            .get(&fh)
            .cloned()
            .ok_or_else(|| err!(libc::EBADF, "no open directory {fh}"))?;
        let dir = match snapshot {
            Some(dir) if offset > 0 => dir,
            _ => {
                let dir = self.dir_snapshot(ino, fetch)?;
                if let Some(slot) = self.open_dirs.lock().get_mut(&fh) {
                    *slot = Some(dir.clone());
                }
                dir
            }
        };
        Ok(DirPage {
            dir,
            ino,
            start: offset,
        })
    }

    pub fn releasedir(&self, fh: u64) {
        self.open_dirs.lock().remove(&fh);
    }

    fn dir_snapshot(&self, ino: u64, fetch: Fetch) -> Step<DirSnapshot> {
        if ino == ROOT_INO {
            return Ok(DirSnapshot::Root);
        }
        let kind =
            dir_kind(ino).ok_or_else(|| err!(libc::ENOTDIR, "inode {ino} is not a directory"))?;
        Ok(DirSnapshot::Faces(kind, self.listing(kind, fetch)?))
    }

    fn listing(&self, kind: IdKind, fetch: Fetch) -> Step<Arc<Listing>> {
        let cached = || {
            self.listings
                .lock()
                .get(&kind)
                .filter(|l| self.fresh(l.fetched_at))
                .cloned()
        };
        if let Some(listing) = cached() {
            return Ok(listing);
        }
        if fetch == Fetch::Never {
            return Err(Stop::WouldBlock);
        }
        let result = self.listing_flights.run(&kind, || {
            if let Some(listing) = cached() {
                return Ok(listing);
            }
            let stored = self.store.as_ref().and_then(|s| s.listing(kind));
            if let Some(listing) = stored.filter(|l| self.fresh(l.fetched_at)) {
                let listing = Arc::new(listing);
                self.listings.lock().insert(kind, listing.clone());
                return Ok(listing);
            }
            // Never a stale listing, even when the API is down: a listing
            // missing faces added since would make `rsync --delete` delete
            // them from a backup. Failing the directory fails the rsync.
            let listing = Arc::new(listing::fetch(
                &*self.api,
                kind,
                self.clock.wall(),
                &self.stopping,
            )?);
            if let Some(store) = &self.store {
                store.put_listing(kind, &listing);
            }
            self.listings.lock().insert(kind, listing.clone());
            Ok(listing)
        });
        Ok(result?)
    }
}

#[cfg(test)]
mod tests;
