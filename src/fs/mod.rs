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
pub mod readahead;

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
use self::readahead::ReadAhead;
use crate::api::{FaceApi, IdKind, Priority};
use crate::metrics::METRICS;
use crate::sync::single_flight::SingleFlight;
use crate::sync::worker_pool::WorkerPool;

/// Absent names remembered at most; beyond it the oldest are forgotten.
const NEGATIVE_ENTRIES: usize = 16_384;

#[derive(Clone, Debug)]
pub struct FsConfig {
    /// Bytes of face images kept in memory.
    pub cache_bytes: u64,
    /// How long a fetched face or listing is trusted.
    pub ttl: Duration,
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
}

impl Default for FsConfig {
    fn default() -> FsConfig {
        FsConfig {
            cache_bytes: 256 << 20,
            ttl: Duration::from_secs(600),
            negative_ttl: Duration::from_secs(30),
            uid: 0,
            gid: 0,
            file_mode: 0o400,
            dir_mode: 0o700,
            readahead: 64,
            prefetch_threads: 32,
        }
    }
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
}

impl ReadSlice {
    fn of(face: Arc<Face>, offset: u64, size: u32) -> ReadSlice {
        let len = face.bytes.len();
        let start = usize::try_from(offset).unwrap_or(usize::MAX).min(len);
        let end = start.saturating_add(size as usize).min(len);
        ReadSlice {
            face: Some(face),
            start,
            end,
        }
    }

    const EMPTY: ReadSlice = ReadSlice {
        face: None,
        start: 0,
        end: 0,
    };

    pub fn bytes(&self) -> &[u8] {
        self.face
            .as_ref()
            .map_or(&[][..], |f| &f.bytes[self.start..self.end])
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
}

impl FaceFs {
    pub fn new(api: Arc<dyn FaceApi>, config: FsConfig) -> Arc<FaceFs> {
        FaceFs::with_clock(api, config, Arc::new(SystemClock))
    }

    pub fn with_clock(
        api: Arc<dyn FaceApi>,
        config: FsConfig,
        clock: Arc<dyn Clock>,
    ) -> Arc<FaceFs> {
        let prefetchers = (config.readahead > 0)
            .then(|| WorkerPool::new("facefs-prefetch", config.prefetch_threads))
            .and_then(|pool| {
                pool.map_err(|e| log::warn!("read-ahead is off: cannot start its threads: {e}"))
                    .ok()
            });
        let pin_limit = config.prefetch_threads.max(8) * 2;
        Arc::new_cyclic(|me| FaceFs {
            me: me.clone(),
            api,
            faces: ByteLru::new(config.cache_bytes),
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
        })
    }

    /// The mount is going away: listings under way end with `EIO` before
    /// their next page instead of running on.
    pub fn stop(&self) {
        self.stopping.store(true, Ordering::SeqCst);
    }

    pub fn cache_usage(&self) -> CacheUsage {
        self.faces.usage()
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
        self.age(at).is_some_and(|age| age < self.config.ttl)
    }

    fn remaining(&self, at: SystemTime) -> Duration {
        self.age(at)
            .map_or(Duration::ZERO, |age| self.config.ttl.saturating_sub(age))
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
                    .is_some_and(|f| self.fresh(f.fetched_at))
            {
                continue;
            }
            let me = self.me.clone();
            prefetchers.spawn(move || {
                if let Some(fs) = me.upgrade() {
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
            if let Some(meta) = known.filter(|m| self.fresh(m.fetched_at)) {
                return Ok(meta);
            }
        }
        Ok(self.load_face(key, fetch)?.meta())
    }

    /// The attributes of a face, numbering its inode for the kernel.
    fn stat_face(&self, key: &FaceKey, fetch: Fetch) -> Step<Attr> {
        let meta = self.face_meta(key, fetch)?;
        let ino = self.inodes.lock().looked_up(key, meta);
        Ok(self.face_attr(ino, meta))
    }

    /// A face's bytes, from the cache while fresh, else downloaded once for
    /// all concurrent callers.
    fn load_face(&self, key: &FaceKey, fetch: Fetch) -> Step<Arc<Face>> {
        self.known_absent(key)?;
        let cached = || self.faces.get(key).filter(|f| self.fresh(f.fetched_at));
        if let Some(face) = cached() {
            METRICS.cache(true);
            return Ok(face);
        }
        if fetch == Fetch::Never {
            return Err(Stop::WouldBlock);
        }
        let result = self.downloads.run(key, || {
            if let Some(face) = cached() {
                return Ok(face);
            }
            self.download(key)
        });
        Ok(result?)
    }

    fn download(&self, key: &FaceKey) -> Result<Arc<Face>, FsError> {
        METRICS.cache(false);
        let _in_flight = METRICS.download();
        // A name no fresh listing shows waits behind those one does: probes
        // of names that do not exist must not hold up the faces that do.
        let priority = if self.listed(key) {
            Priority::Listed
        } else {
            Priority::Probe
        };
        match self.api.get_face(key.kind, &key.id, key.cropped, priority) {
            Ok(bytes) => {
                let face = Arc::new(Face::new(bytes, self.clock.wall()));
                self.inodes.lock().confirm(key, face.meta());
                self.faces
                    .insert(key.clone(), face.clone(), face.bytes.len() as u64);
                Ok(face)
            }
            Err(e) => {
                if e.is_not_found() {
                    self.forget_face(key);
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
    }

    fn handle(&self) -> u64 {
        self.next_handle.fetch_add(1, Ordering::Relaxed)
    }

    /// Opens a face for reading and returns the handle, which holds the bytes
    /// of the inode's version for every read of this open file.
    pub fn open(&self, ino: u64, write: bool, fetch: Fetch) -> Answer<u64> {
        self.open_step(ino, write, fetch).into()
    }

    fn open_step(&self, ino: u64, write: bool, fetch: Fetch) -> Step<u64> {
        let (key, version) = self.face_version(ino)?;
        if write {
            return Err(err!(libc::EROFS, "faces are read-only").into());
        }
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
            METRICS.cache(true);
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

    pub fn read(&self, fh: u64, offset: u64, size: u32) -> Result<ReadSlice, FsError> {
        let face = self
            .open_files
            .lock()
            .get(&fh)
            .cloned()
            .ok_or_else(|| err!(libc::EBADF, "no open file {fh}"))?;
        Ok(ReadSlice::of(face, offset, size))
    }

    pub fn release(&self, fh: u64) {
        self.open_files.lock().remove(&fh);
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
            let listing = Arc::new(listing::fetch(
                &*self.api,
                kind,
                self.clock.wall(),
                &self.stopping,
            )?);
            self.listings.lock().insert(kind, listing.clone());
            Ok(listing)
        });
        Ok(result?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::failure::{FailureApi, Fault};
    use crate::api::memory::MemoryApi;
    use crate::api::Endpoint;
    use crate::fs::clock::TestClock;

    type TestApi = FailureApi<MemoryApi>;

    /// What an answer that must wait is, for comparing answers as errnos.
    const WOULD_BLOCK: i32 = -1;

    impl<T> Answer<T> {
        fn unwrap(self) -> T {
            match self {
                Answer::Done(Ok(value)) => value,
                Answer::Done(Err(e)) => panic!("{e}"),
                Answer::WouldBlock => panic!("the answer would block"),
            }
        }

        fn errno(self) -> Result<T, i32> {
            match self {
                Answer::Done(result) => result.map_err(|e| e.errno()),
                Answer::WouldBlock => Err(WOULD_BLOCK),
            }
        }
    }

    fn tenant() -> Arc<TestApi> {
        let api = MemoryApi::new();
        api.add_user(
            &["ou_a", "on_a", "emp a"],
            Some(vec![1; 100]),
            Some(vec![2; 40]),
        );
        api.add_user(
            &["ou_b", "on_b", "100%"],
            Some(vec![3; 60]),
            Some(vec![4; 30]),
        );
        api.add_user(&["ou_c", "on_c", "c"], None, None);
        Arc::new(FailureApi::new(api))
    }

    /// A core on a clock that moves only when the test moves it.
    fn fs_with(api: &Arc<TestApi>, config: FsConfig) -> Arc<FaceFs> {
        fs_on_clock(api, config, &TestClock::default())
    }

    fn fs_on_clock(api: &Arc<TestApi>, config: FsConfig, clock: &TestClock) -> Arc<FaceFs> {
        FaceFs::with_clock(api.clone(), config, Arc::new(clock.clone()))
    }

    fn fs_with_ttl(api: &Arc<TestApi>, ttl: Duration, clock: &TestClock) -> Arc<FaceFs> {
        fs_on_clock(
            api,
            FsConfig {
                ttl,
                readahead: 0,
                ..FsConfig::default()
            },
            clock,
        )
    }

    /// Without read-ahead, so request counts are the reader's own.
    fn fs(api: &Arc<TestApi>) -> Arc<FaceFs> {
        fs_with(
            api,
            FsConfig {
                readahead: 0,
                ..FsConfig::default()
            },
        )
    }

    fn name(s: &str) -> &OsStr {
        OsStr::new(s)
    }

    /// An answer without its time to live, which moves on its own.
    fn stable(attr: Attr) -> Attr {
        Attr {
            valid_for: Duration::ZERO,
            ..attr
        }
    }

    fn read_all(fs: &FaceFs, ino: u64) -> Vec<u8> {
        let fh = fs.open(ino, false, Fetch::Allowed).unwrap();
        let bytes = fs.read(fh, 0, 1 << 20).unwrap().bytes().to_vec();
        fs.release(fh);
        bytes
    }

    fn names(fs: &FaceFs, ino: u64) -> Vec<String> {
        let fh = fs.opendir(ino).unwrap();
        let page = fs.readdir(ino, fh, 0, Fetch::Allowed).unwrap();
        fs.releasedir(fh);
        page.entries().map(|(_, e)| e.name).collect()
    }

    #[test]
    fn root_holds_the_three_directories() {
        let api = tenant();
        let fs = fs(&api);
        assert_eq!(
            names(&fs, ROOT_INO),
            [".", "..", "open_id", "union_id", "user_id"]
        );
        for kind in IdKind::ALL {
            assert_eq!(
                fs.lookup(ROOT_INO, name(kind.as_str()), Fetch::Never)
                    .unwrap()
                    .kind,
                NodeKind::Directory
            );
        }
        assert_eq!(
            fs.lookup(ROOT_INO, name("faces"), Fetch::Allowed).errno(),
            Err(libc::ENOENT)
        );
        assert_eq!(
            api.requests(Endpoint::Face) + api.requests(Endpoint::List),
            0
        );
    }

    #[test]
    fn listing_shows_both_files_of_users_with_faces_and_downloads_nothing() {
        let api = tenant();
        let fs = fs(&api);
        let user_dir = fs
            .lookup(ROOT_INO, name("user_id"), Fetch::Never)
            .unwrap()
            .ino;
        assert_eq!(
            names(&fs, user_dir),
            [
                ".",
                "..",
                "emp a.jpg",
                "emp a.cropped.jpg",
                "100%.jpg",
                "100%.cropped.jpg"
            ]
        );
        assert_eq!(api.requests(Endpoint::Face), 0);
        assert_eq!(api.requests(Endpoint::List), 2, "two pages of two users");
        names(&fs, user_dir);
        assert_eq!(
            api.requests(Endpoint::List),
            2,
            "the listing is cached for the TTL"
        );
    }

    #[test]
    fn stat_is_exact_and_read_returns_the_api_bytes() {
        let api = tenant();
        let fs = fs(&api);
        let dir = dir_ino(IdKind::OpenId);
        let full = fs.lookup(dir, name("ou_a.jpg"), Fetch::Allowed).unwrap();
        let cropped = fs
            .lookup(dir, name("ou_a.cropped.jpg"), Fetch::Allowed)
            .unwrap();
        assert_eq!((full.size, cropped.size), (100, 40));
        assert_eq!(full.perm, 0o400);
        assert_eq!(read_all(&fs, full.ino), vec![1; 100]);
        assert_eq!(read_all(&fs, cropped.ino), vec![2; 40]);
        assert_eq!(
            api.requests(Endpoint::Face),
            2,
            "stat fetched; reads used the cache"
        );
        assert_eq!(
            stable(fs.getattr(full.ino, Fetch::Never).unwrap()),
            stable(full),
            "same inode and mtime"
        );
    }

    #[test]
    fn reads_at_offsets_and_past_the_end() {
        let api = tenant();
        let fs = fs(&api);
        let ino = fs
            .lookup(dir_ino(IdKind::UnionId), name("on_b.jpg"), Fetch::Allowed)
            .unwrap()
            .ino;
        let fh = fs.open(ino, false, Fetch::Allowed).unwrap();
        assert_eq!(fs.read(fh, 50, 100).unwrap().bytes().len(), 10);
        assert!(fs.read(fh, 60, 10).unwrap().bytes().is_empty());
        assert!(fs.read(fh, u64::MAX, 10).unwrap().bytes().is_empty());
        fs.release(fh);
        assert_eq!(
            fs.read(fh, 0, 1).err().map(|e| e.errno()),
            Some(libc::EBADF)
        );
    }

    #[test]
    fn missing_users_and_faces_are_enoent_and_remembered() {
        let api = tenant();
        let fs = fs(&api);
        let dir = dir_ino(IdKind::OpenId);
        assert_eq!(
            fs.lookup(dir, name("ou_nobody.jpg"), Fetch::Allowed)
                .errno(),
            Err(libc::ENOENT)
        );
        assert_eq!(
            fs.lookup(dir, name("ou_c.jpg"), Fetch::Allowed).errno(),
            Err(libc::ENOENT)
        );
        assert_eq!(api.requests(Endpoint::Face), 2);
        assert_eq!(
            fs.lookup(dir, name("ou_nobody.jpg"), Fetch::Never).errno(),
            Err(libc::ENOENT)
        );
        assert_eq!(
            api.requests(Endpoint::Face),
            2,
            "negative answers are remembered"
        );
    }

    #[test]
    fn negative_ttl_expires() {
        let api = tenant();
        let clock = TestClock::default();
        let fs = fs_on_clock(
            &api,
            FsConfig {
                negative_ttl: Duration::from_secs(30),
                ..FsConfig::default()
            },
            &clock,
        );
        let dir = dir_ino(IdKind::OpenId);
        assert_eq!(
            fs.lookup(dir, name("ou_c.jpg"), Fetch::Allowed).errno(),
            Err(libc::ENOENT)
        );
        api.inner()
            .set_faces("ou_c", Some(vec![9; 10]), Some(vec![8; 5]));
        clock.advance(Duration::from_secs(29));
        assert_eq!(
            fs.lookup(dir, name("ou_c.jpg"), Fetch::Never).errno(),
            Err(libc::ENOENT),
            "still remembered as absent"
        );
        clock.advance(Duration::from_secs(1));
        assert_eq!(
            fs.lookup(dir, name("ou_c.jpg"), Fetch::Allowed)
                .unwrap()
                .size,
            10
        );
    }

    #[test]
    fn names_outside_the_layout_cost_no_request() {
        let api = tenant();
        let fs = fs(&api);
        for bad in ["x.png", "abc", ".jpg", "ou_a.jpeg"] {
            assert_eq!(
                fs.lookup(dir_ino(IdKind::OpenId), name(bad), Fetch::Allowed)
                    .errno(),
                Err(libc::ENOENT)
            );
        }
        assert_eq!(api.requests(Endpoint::Face), 0);
    }

    #[test]
    fn transient_failures_are_eio_and_not_remembered() {
        let api = tenant();
        let fs = fs(&api);
        api.fail_next(Endpoint::Face, [Fault::Transient]);
        let dir = dir_ino(IdKind::OpenId);
        assert_eq!(
            fs.lookup(dir, name("ou_a.jpg"), Fetch::Allowed).errno(),
            Err(libc::EIO)
        );
        assert_eq!(
            fs.lookup(dir, name("ou_a.jpg"), Fetch::Allowed)
                .unwrap()
                .size,
            100
        );
    }

    #[test]
    fn missing_scope_is_eacces() {
        let api = tenant();
        let fs = fs(&api);
        api.fail_next(Endpoint::Face, [Fault::PermissionDenied]);
        assert_eq!(
            fs.lookup(dir_ino(IdKind::UserId), name("c.jpg"), Fetch::Allowed)
                .errno(),
            Err(libc::EACCES)
        );
    }

    #[test]
    fn a_listing_failing_part_way_fails_whole() {
        let api = tenant();
        let fs = fs(&api);
        let dir = dir_ino(IdKind::OpenId);
        // The first page succeeds, the second fails.
        let fh = fs.opendir(dir).unwrap();
        api.fail_next(Endpoint::List, [Fault::Pass, Fault::Transient]);
        assert_eq!(
            fs.readdir(dir, fh, 0, Fetch::Allowed).errno().err(),
            Some(libc::EIO)
        );
    }

    #[test]
    fn an_invalid_page_token_restarts_the_listing() {
        let api = tenant();
        let fs = fs(&api);
        api.fail_next(Endpoint::List, [Fault::InvalidPageToken]);
        assert_eq!(names(&fs, dir_ino(IdKind::OpenId)).len(), 2 + 4);
        assert_eq!(
            api.requests(Endpoint::List),
            3,
            "one refused page, then two pages"
        );
    }

    #[test]
    fn cache_evicts_by_bytes_and_refetches() {
        let api = tenant();
        let fs = fs_with(
            &api,
            FsConfig {
                cache_bytes: 150,
                ..FsConfig::default()
            },
        );
        let dir = dir_ino(IdKind::OpenId);
        let a = fs.lookup(dir, name("ou_a.jpg"), Fetch::Allowed).unwrap();
        fs.lookup(dir, name("ou_b.jpg"), Fetch::Allowed).unwrap();
        assert_eq!(
            fs.cache_usage().bytes,
            60,
            "100 + 60 > 150: ou_a was evicted"
        );
        // stat still answers from what is known, the bytes are downloaded again.
        assert_eq!(fs.getattr(a.ino, Fetch::Never).unwrap().size, 100);
        assert_eq!(
            fs.open(a.ino, false, Fetch::Never).errno(),
            Err(WOULD_BLOCK)
        );
        assert_eq!(read_all(&fs, a.ino), vec![1; 100]);
        assert_eq!(api.requests(Endpoint::Face), 3);
        assert!(fs.cache_usage().bytes <= 150);
    }

    #[test]
    fn ttl_expiry_refetches_and_mtime_follows_the_bytes() {
        let api = tenant();
        let clock = TestClock::default();
        let fs = fs_with_ttl(&api, Duration::from_secs(30), &clock);
        let dir = dir_ino(IdKind::OpenId);
        let before = fs.lookup(dir, name("ou_a.jpg"), Fetch::Allowed).unwrap();
        clock.advance(Duration::from_secs(29));
        fs.getattr(before.ino, Fetch::Never).unwrap();
        assert_eq!(api.requests(Endpoint::Face), 1, "fresh until the TTL");
        clock.advance(Duration::from_secs(1));
        let same = fs.getattr(before.ino, Fetch::Allowed).unwrap();
        assert_eq!(api.requests(Endpoint::Face), 2);
        assert_eq!(
            stable(same),
            stable(before.clone()),
            "same bytes: same inode, size and mtime"
        );
        api.inner()
            .set_faces("ou_a", Some(vec![7; 120]), Some(vec![2; 40]));
        clock.advance(Duration::from_secs(30));
        // The old inode still describes the old bytes, and is not to be cached.
        let old = fs.getattr(before.ino, Fetch::Allowed).unwrap();
        assert_eq!(
            (old.size, old.mtime, old.valid_for),
            (100, before.mtime, Duration::ZERO)
        );
        // The name now shows the new bytes, under a new inode.
        let after = fs.lookup(dir, name("ou_a.jpg"), Fetch::Never).unwrap();
        assert_eq!(after.size, 120);
        assert_ne!(after.mtime, before.mtime);
        assert_ne!(after.ino, before.ino);
    }

    #[test]
    fn mtime_is_the_same_in_every_mount() {
        let api = tenant();
        let one = fs(&api)
            .lookup(dir_ino(IdKind::OpenId), name("ou_b.jpg"), Fetch::Allowed)
            .unwrap();
        let two = fs(&api)
            .lookup(dir_ino(IdKind::OpenId), name("ou_b.jpg"), Fetch::Allowed)
            .unwrap();
        assert_eq!(one.mtime, two.mtime);
    }

    #[test]
    fn writes_and_directory_misuse() {
        let api = tenant();
        let fs = fs(&api);
        let ino = fs
            .lookup(dir_ino(IdKind::OpenId), name("ou_a.jpg"), Fetch::Allowed)
            .unwrap()
            .ino;
        assert_eq!(fs.open(ino, true, Fetch::Allowed).errno(), Err(libc::EROFS));
        assert_eq!(
            fs.open(ROOT_INO, false, Fetch::Allowed).errno(),
            Err(libc::EISDIR)
        );
        assert_eq!(fs.opendir(ino).map_err(|e| e.errno()), Err(libc::ENOTDIR));
        assert_eq!(
            fs.lookup(ino, name("x.jpg"), Fetch::Allowed).errno(),
            Err(libc::ENOTDIR)
        );
        assert_eq!(
            fs.getattr(999_999, Fetch::Allowed).errno(),
            Err(libc::ENOENT)
        );
    }

    #[test]
    fn never_fetch_reports_would_block() {
        let api = tenant();
        let fs = fs(&api);
        let dir = dir_ino(IdKind::OpenId);
        assert_eq!(
            fs.lookup(dir, name("ou_a.jpg"), Fetch::Never).errno(),
            Err(WOULD_BLOCK)
        );
        let fh = fs.opendir(dir).unwrap();
        assert_eq!(
            fs.readdir(dir, fh, 0, Fetch::Never).errno().err(),
            Some(WOULD_BLOCK)
        );
        assert_eq!(
            api.requests(Endpoint::Face) + api.requests(Endpoint::List),
            0
        );
    }

    /// The adapter's contract: a first pass that answers WouldBlock numbers
    /// no inode, notes no read-ahead and sends no request; the second pass
    /// then answers as if it were the only one.
    #[test]
    fn a_first_pass_that_would_block_changes_nothing() {
        let api = big_tenant(10);
        let fs = fs_reading_ahead(&api);
        let dir = dir_ino(IdKind::OpenId);
        for file in ["ou_000.jpg", "ou_000.cropped.jpg", "ou_001.jpg"] {
            assert_eq!(
                fs.lookup(dir, name(file), Fetch::Never).errno(),
                Err(WOULD_BLOCK)
            );
        }
        assert_eq!(fs.inodes.lock().len(), 0, "no inode numbered");
        let fh = fs.opendir(dir).unwrap();
        assert_eq!(
            fs.readdir(dir, fh, 0, Fetch::Never).errno().err(),
            Some(WOULD_BLOCK)
        );
        assert!(fs.listings.lock().is_empty());
        let entries: Vec<_> = fs
            .readdir(dir, fh, 0, Fetch::Allowed)
            .unwrap()
            .entries()
            .collect();
        assert_eq!(entries.len(), 2 + 20);
        let numbered = fs.inodes.lock().len();
        for file in ["ou_000.jpg", "ou_000.cropped.jpg"] {
            assert_eq!(
                fs.lookup(dir, name(file), Fetch::Never).errno(),
                Err(WOULD_BLOCK)
            );
        }
        assert!(
            fs.readahead.lock().is_empty(),
            "lookups that would block note no read-ahead"
        );
        assert_eq!(fs.inodes.lock().len(), numbered);
        assert_eq!(api.requests(Endpoint::Face), 0);
        // Never, then Allowed, as the adapter does: the same inode as readdir
        // gave, and read-ahead as for a walk that asked only once.
        let first = fs.lookup(dir, name("ou_000.jpg"), Fetch::Allowed).unwrap();
        assert_eq!(
            Some(first.ino),
            entries
                .iter()
                .find(|(_, e)| e.name == "ou_000.jpg")
                .map(|(_, e)| e.ino)
        );
        fs.lookup(dir, name("ou_000.cropped.jpg"), Fetch::Allowed)
            .unwrap();
        wait_for_requests(&api, 6);
        assert_eq!(
            api.requests(Endpoint::Face),
            6,
            "two lookups, four read ahead"
        );
        assert_eq!(
            fs.getattr(first.ino, Fetch::Never).errno().map(|a| a.size),
            Ok(10),
            "answered from memory now"
        );
        fs.releasedir(fh);
    }

    #[test]
    fn names_that_do_not_exist_cost_no_memory_and_forgotten_faces_go() {
        let api = tenant();
        let fs = fs(&api);
        let dir = dir_ino(IdKind::OpenId);
        for i in 0..500 {
            let name = format!("ou_nobody{i}.jpg");
            assert_eq!(
                fs.lookup(dir, name.as_ref(), Fetch::Allowed).errno(),
                Err(libc::ENOENT)
            );
        }
        assert_eq!(fs.inodes.lock().len(), 0, "no inode for an absent name");
        let a = fs.lookup(dir, name("ou_a.jpg"), Fetch::Allowed).unwrap();
        fs.lookup(dir, name("ou_a.jpg"), Fetch::Never).unwrap();
        assert_eq!(fs.inodes.lock().len(), 1);
        fs.forget(a.ino, 2);
        assert_eq!(fs.inodes.lock().len(), 0);
        assert_eq!(fs.getattr(a.ino, Fetch::Never).errno(), Err(libc::ENOENT));
        let again = fs.lookup(dir, name("ou_a.jpg"), Fetch::Never).unwrap();
        assert_eq!(again.ino, a.ino, "a name keeps its number");
    }

    #[test]
    fn readdir_pages_through_one_snapshot_from_any_offset() {
        let api = big_tenant(30);
        let fs = fs(&api);
        let dir = dir_ino(IdKind::UserId);
        let fh = fs.opendir(dir).unwrap();
        let all: Vec<(u64, DirEntry)> = fs
            .readdir(dir, fh, 0, Fetch::Allowed)
            .unwrap()
            .entries()
            .collect();
        assert_eq!(all.len(), 2 + 60);
        // The service changes; the open directory keeps its snapshot.
        api.inner()
            .add_user(&["ou_new", "on_new", "new"], Some(vec![1]), None);
        for offset in [1, 2, 17, 61, 62, 63, 1000] {
            let page: Vec<(u64, DirEntry)> = fs
                .readdir(dir, fh, offset, Fetch::Never)
                .unwrap()
                .entries()
                .collect();
            assert_eq!(
                page,
                all[all.len().min(offset as usize)..],
                "offset {offset}"
            );
        }
        assert_eq!(all[2].1.name, "u000.jpg");
        assert_eq!(all[3].1.name, "u000.cropped.jpg");
        let looked_up = fs
            .lookup(dir, name("u000.cropped.jpg"), Fetch::Allowed)
            .unwrap();
        assert_eq!(looked_up.ino, all[3].1.ino, "readdir and lookup agree");
        fs.releasedir(fh);
        assert_eq!(api.requests(Endpoint::List), 1);
    }

    /// Read by inode with a cache that holds one face: a file being read
    /// keeps its face between reads instead of downloading it again.
    #[test]
    fn a_face_being_read_is_not_downloaded_again_when_evicted() {
        let api = tenant();
        let fs = fs_with(
            &api,
            FsConfig {
                cache_bytes: 100,
                readahead: 0,
                ..FsConfig::default()
            },
        );
        let dir = dir_ino(IdKind::OpenId);
        let a = fs.lookup(dir, name("ou_a.jpg"), Fetch::Allowed).unwrap();
        let b = fs.lookup(dir, name("ou_b.jpg"), Fetch::Allowed).unwrap();
        assert_eq!(api.requests(Endpoint::Face), 2, "b evicted a");
        let part = |ino, offset| {
            fs.read_inode(ino, offset, 10, Fetch::Allowed)
                .unwrap()
                .bytes()
                .to_vec()
        };
        assert_eq!(part(a.ino, 0), vec![1; 10]);
        assert_eq!(part(b.ino, 0), vec![3; 10]);
        assert_eq!(
            api.requests(Endpoint::Face),
            4,
            "each downloaded once more, evicting the other"
        );
        for offset in (10..100).step_by(10) {
            assert_eq!(part(a.ino, offset), vec![1; 10]);
            assert_eq!(part(b.ino, offset.min(50)), vec![3; 10]);
        }
        assert_eq!(
            api.requests(Endpoint::Face),
            4,
            "the reads in progress kept their faces"
        );
        assert!(
            fs.reading.lock().pins.get(&a.ino).is_none(),
            "unpinned once all was read"
        );
    }

    fn big_tenant(users: usize) -> Arc<TestApi> {
        let api = MemoryApi::with_page_size(50);
        for i in 0..users {
            let ids = [
                format!("ou_{i:03}"),
                format!("on_{i:03}"),
                format!("u{i:03}"),
            ];
            api.add_user(
                &[&ids[0], &ids[1], &ids[2]],
                Some(vec![i as u8; 10 + i]),
                Some(vec![i as u8; 5]),
            );
        }
        Arc::new(FailureApi::new(api))
    }

    fn fs_reading_ahead(api: &Arc<TestApi>) -> Arc<FaceFs> {
        fs_with(
            api,
            FsConfig {
                readahead: 16,
                prefetch_threads: 4,
                ..FsConfig::default()
            },
        )
    }

    /// Waits until the prefetchers have made `n` requests (they run on threads).
    fn wait_for_requests(api: &TestApi, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while api.requests(Endpoint::Face) < n && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn a_sequential_walk_is_read_ahead_with_one_request_per_file() {
        let api = big_tenant(40);
        let fs = fs_reading_ahead(&api);
        let dir = dir_ino(IdKind::OpenId);
        let entries = names(&fs, dir);
        let files: Vec<&String> = entries.iter().skip(2).collect();
        assert_eq!(files.len(), 80);
        fs.lookup(dir, name(files[0]), Fetch::Allowed).unwrap();
        fs.lookup(dir, name(files[1]), Fetch::Allowed).unwrap();
        // Two lookups in listing order start read-ahead of the next four.
        wait_for_requests(&api, 6);
        assert_eq!(api.requests(Endpoint::Face), 6);
        for (i, file) in files.iter().enumerate().skip(2) {
            let attr = fs.lookup(dir, name(file), Fetch::Allowed).unwrap();
            assert_eq!(attr.size, if i % 2 == 0 { 10 + i as u64 / 2 } else { 5 });
        }
        wait_for_requests(&api, 80);
        assert_eq!(
            api.requests(Endpoint::Face),
            80,
            "read-ahead and lookups shared every download"
        );
    }

    #[test]
    fn read_ahead_needs_lookups_in_listing_order() {
        let api = big_tenant(40);
        let fs = fs_reading_ahead(&api);
        let dir = dir_ino(IdKind::OpenId);
        names(&fs, dir);
        assert_eq!(
            api.requests(Endpoint::Face),
            0,
            "a plain readdir downloads nothing"
        );
        // Random access: every fourth file, backwards.
        for i in (0..40).rev().step_by(4) {
            fs.lookup(dir, name(&format!("ou_{i:03}.jpg")), Fetch::Allowed)
                .unwrap();
        }
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(
            api.requests(Endpoint::Face),
            10,
            "no read-ahead for a walk that is not sequential"
        );
    }

    #[test]
    fn an_inode_is_one_version_and_reads_its_own_bytes_or_eio() {
        let api = tenant();
        let clock = TestClock::default();
        let fs = fs_with_ttl(&api, Duration::from_secs(30), &clock);
        let dir = dir_ino(IdKind::OpenId);
        let old = fs.lookup(dir, name("ou_a.jpg"), Fetch::Allowed).unwrap();
        // Read by inode, as the kernel does once it opens files itself.
        let read = |ino, fetch| {
            fs.read_inode(ino, 0, 4096, fetch)
                .errno()
                .map(|s| s.bytes().to_vec())
        };
        assert_eq!(read(old.ino, Fetch::Never), Ok(vec![1; 100]));
        // Its bytes stay right past the TTL: a version never changes.
        clock.advance(Duration::from_secs(60));
        assert_eq!(read(old.ino, Fetch::Never), Ok(vec![1; 100]));
        assert_eq!(api.requests(Endpoint::Face), 1);
        // Re-enrolled: the name gets a new inode with the new bytes...
        api.inner().set_faces("ou_a", Some(vec![5; 120]), None);
        let new = fs.lookup(dir, name("ou_a.jpg"), Fetch::Allowed).unwrap();
        assert_ne!(new.ino, old.ino);
        assert_eq!(read(new.ino, Fetch::Never), Ok(vec![5; 120]));
        // ...and the old inode, its bytes gone, fails rather than mixing.
        assert_eq!(read(old.ino, Fetch::Allowed), Err(libc::EIO));
        // An open handle of the old path keeps what it opened.
        let opened = fs.open(new.ino, false, Fetch::Never).unwrap();
        api.inner().set_faces("ou_a", Some(vec![6; 80]), None);
        clock.advance(Duration::from_secs(60));
        assert_eq!(fs.read(opened, 0, 4096).unwrap().bytes(), &[5; 120][..]);
    }

    #[test]
    fn answers_carry_how_long_they_stay_true() {
        let api = tenant();
        let clock = TestClock::default();
        let fs = fs_with_ttl(&api, Duration::from_secs(100), &clock);
        let dir = dir_ino(IdKind::OpenId);
        let attr = fs.lookup(dir, name("ou_a.jpg"), Fetch::Allowed).unwrap();
        assert_eq!(attr.valid_for, Duration::from_secs(100));
        clock.advance(Duration::from_secs(40));
        let attr = fs.getattr(attr.ino, Fetch::Never).unwrap();
        assert_eq!(attr.valid_for, Duration::from_secs(60));
    }

    #[test]
    fn concurrent_readers_share_one_download() {
        let api = tenant();
        let fs = fs(&api);
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let fs = fs.clone();
                std::thread::spawn(move || {
                    fs.lookup(
                        dir_ino(IdKind::OpenId),
                        OsStr::new("ou_b.jpg"),
                        Fetch::Allowed,
                    )
                })
            })
            .collect();
        for t in threads {
            assert_eq!(t.join().unwrap().unwrap().size, 60);
        }
        // Whether the threads overlapped (one shared download) or not (the
        // later ones hit the cache), the API sees one request.
        assert_eq!(api.requests(Endpoint::Face), 1);
    }
}
