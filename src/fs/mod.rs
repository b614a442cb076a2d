//! The filesystem core: inodes, lookups, listings, open files and reads,
//! in terms of the API client and the caches. It knows nothing of FUSE;
//! every method returns an [`FsError`] that carries its errno.

pub mod cache;
pub mod error;
pub mod layout;
pub mod readahead;

use parking_lot::{Mutex, MutexGuard};
use std::collections::{HashMap, HashSet};
use std::ffi::OsStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant, SystemTime};

use self::cache::{ByteLru, NegativeCache};
pub use self::error::FsError;
use self::layout::FaceKey;
use self::readahead::ReadAhead;
use crate::api::IdKind;
use crate::api::{ApiError, FaceApi};
use crate::metrics::METRICS;
use crate::sync::single_flight::SingleFlight;
use crate::sync::worker_pool::WorkerPool;

pub const ROOT_INO: u64 = 1;
const FIRST_FACE_INO: u64 = 16;
/// Restarts of a listing whose page token the API stopped accepting.
const LISTING_RESTARTS: u32 = 3;
/// A listing longer than this is a broken API answer, not a tenant.
const MAX_LISTED_USERS: usize = 2_000_000;
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

/// Whether a call may wait for the API. The FUSE adapter first asks with
/// `Never`, answering at once from the caches, and only hands the calls that
/// get [`FsError::WouldBlock`] to a worker thread.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fetch {
    Allowed,
    Never,
}

/// A downloaded face.
pub struct Face {
    pub bytes: Vec<u8>,
    digest: u64,
    fetched_at: Instant,
}

/// What is known of a face without holding its bytes: enough for `stat`.
#[derive(Clone, Copy)]
struct FaceMeta {
    size: u64,
    digest: u64,
    fetched_at: Instant,
}

struct FaceNode {
    key: FaceKey,
    meta: Option<FaceMeta>,
    /// The digest of the bytes the last open of this inode served: if the
    /// next open serves the same, the kernel's page cache is still right.
    opened_digest: Option<u64>,
}

/// Face inodes. A face keeps its number for the life of the mount, so the
/// same bytes always show the same inode.
#[derive(Default)]
struct InodeTable {
    by_key: HashMap<FaceKey, u64>,
    nodes: HashMap<u64, FaceNode>,
    next: u64,
}

impl InodeTable {
    fn ino_for(&mut self, key: &FaceKey) -> u64 {
        if let Some(ino) = self.by_key.get(key) {
            return *ino;
        }
        let ino = FIRST_FACE_INO + self.next;
        self.next += 1;
        self.by_key.insert(key.clone(), ino);
        self.nodes.insert(
            ino,
            FaceNode {
                key: key.clone(),
                meta: None,
                opened_digest: None,
            },
        );
        ino
    }
}

struct Listing {
    /// Ids with a face, in the API's order, without repeats.
    ids: Vec<String>,
    /// Each id's place in `ids`.
    positions: HashMap<String, usize>,
    fetched_at: Instant,
}

impl Listing {
    /// The file at `place` in directory order: each user's full face, then cropped.
    fn file_at(&self, kind: IdKind, place: usize) -> Option<FaceKey> {
        self.ids
            .get(place / 2)
            .map(|id| FaceKey::new(kind, id.as_str(), place % 2 == 1))
    }

    fn place_of(&self, key: &FaceKey) -> Option<usize> {
        self.positions
            .get(&key.id)
            .map(|i| 2 * i + usize::from(key.cropped))
    }
}

/// What `open` gives the kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Opened {
    pub fh: u64,
    /// The bytes are those the previous open served: the kernel may keep its page cache.
    pub keep_cache: bool,
}

pub struct ReadSlice {
    face: Arc<Face>,
    start: usize,
    end: usize,
}

impl ReadSlice {
    pub fn bytes(&self) -> &[u8] {
        &self.face.bytes[self.start..self.end]
    }
}

pub struct FaceFs {
    me: Weak<FaceFs>,
    api: Arc<dyn FaceApi>,
    config: FsConfig,
    mounted_at: SystemTime,
    faces: ByteLru<FaceKey, Face>,
    absent: NegativeCache<FaceKey>,
    downloads: SingleFlight<FaceKey, Result<Arc<Face>, FsError>>,
    listings: Mutex<HashMap<IdKind, Arc<Listing>>>,
    listing_flights: SingleFlight<IdKind, Result<Arc<Listing>, FsError>>,
    inodes: Mutex<InodeTable>,
    open_files: Mutex<HashMap<u64, Arc<Face>>>,
    open_dirs: Mutex<HashMap<u64, Option<Arc<Vec<DirEntry>>>>>,
    next_handle: AtomicU64,
    readahead: Mutex<HashMap<IdKind, ReadAhead>>,
    prefetchers: Option<WorkerPool>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock()
}

fn dir_ino(kind: IdKind) -> u64 {
    2 + IdKind::ALL.iter().position(|k| *k == kind).unwrap() as u64
}

fn dir_kind(ino: u64) -> Option<IdKind> {
    IdKind::ALL.into_iter().find(|k| dir_ino(*k) == ino)
}

/// FNV-1a: a digest that is the same in every process and on every machine.
fn digest(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// The API gives faces no timestamps. A time derived from the bytes stays the
/// same for the same face across mounts and machines, so `rsync -a` skips
/// unchanged faces, and moves when the face changes, so it copies new ones.
/// The times fall between 2000 and 2020.
fn mtime_of(digest: u64) -> SystemTime {
    const Y2000: u64 = 946_684_800;
    const TWENTY_YEARS: u64 = 631_152_000;
    SystemTime::UNIX_EPOCH + Duration::from_secs(Y2000 + digest % TWENTY_YEARS)
}

impl FaceFs {
    pub fn new(api: Arc<dyn FaceApi>, config: FsConfig) -> Arc<FaceFs> {
        let prefetchers = (config.readahead > 0)
            .then(|| WorkerPool::new("facefs-prefetch", config.prefetch_threads))
            .and_then(|pool| {
                pool.map_err(|e| log::warn!("read-ahead is off: cannot start its threads: {e}"))
                    .ok()
            });
        Arc::new_cyclic(|me| FaceFs {
            me: me.clone(),
            api,
            faces: ByteLru::new(config.cache_bytes),
            absent: NegativeCache::new(config.negative_ttl, NEGATIVE_ENTRIES),
            config,
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
        })
    }

    /// Bytes and faces held by the face cache, and evictions so far.
    pub fn cache_usage(&self) -> (u64, usize, u64) {
        self.faces.usage()
    }

    fn fresh(&self, at: Instant) -> bool {
        at.elapsed() < self.config.ttl
    }

    fn remaining(&self, at: Instant) -> Duration {
        self.config.ttl.saturating_sub(at.elapsed())
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

    pub fn lookup(&self, parent: u64, name: &OsStr, fetch: Fetch) -> Result<Attr, FsError> {
        if parent == ROOT_INO {
            let kind = layout::dir_kind(name).ok_or(FsError::NotFound)?;
            return Ok(self.dir_attr(dir_ino(kind)));
        }
        let kind = match dir_kind(parent) {
            Some(kind) => kind,
            None if lock(&self.inodes).nodes.contains_key(&parent) => {
                return Err(FsError::NotADirectory)
            }
            None => return Err(FsError::NotFound),
        };
        let (id, cropped) = layout::parse_face_name(name).ok_or(FsError::NotFound)?;
        let key = FaceKey::new(kind, id, cropped);
        self.read_ahead_after(&key);
        self.stat_face(&key, fetch)
    }

    /// Notes a lookup of `key`; if the lookups are walking the listing in
    /// order, starts downloading the faces that come next (see [`ReadAhead`]).
    fn read_ahead_after(&self, key: &FaceKey) {
        let Some(prefetchers) = &self.prefetchers else {
            return;
        };
        let Some(listing) = lock(&self.listings).get(&key.kind).cloned() else {
            return;
        };
        let Some(place) = listing.place_of(key) else {
            return;
        };
        let places = lock(&self.readahead)
            .entry(key.kind)
            .or_default()
            .on_lookup(place, listing.ids.len() * 2, self.config.readahead);
        let Some(places) = places else { return };
        for next in places {
            let Some(next_key) = listing.file_at(key.kind, next) else {
                break;
            };
            if self.absent.contains(&next_key)
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
                    // Failures are the reader's to see when it gets there.
                    let _ = fs.load_face(&next_key, Fetch::Allowed);
                }
            });
        }
    }

    pub fn getattr(&self, ino: u64, fetch: Fetch) -> Result<Attr, FsError> {
        if ino == ROOT_INO || dir_kind(ino).is_some() {
            return Ok(self.dir_attr(ino));
        }
        let key = lock(&self.inodes)
            .nodes
            .get(&ino)
            .map(|n| n.key.clone())
            .ok_or(FsError::NotFound)?;
        self.stat_face(&key, fetch)
    }

    /// The attributes of a face: from what is known while it is fresh, else
    /// by downloading it, since only the bytes tell the exact size.
    fn stat_face(&self, key: &FaceKey, fetch: Fetch) -> Result<Attr, FsError> {
        if self.absent.contains(key) {
            return Err(FsError::NotFound);
        }
        {
            let mut inodes = lock(&self.inodes);
            let ino = inodes.ino_for(key);
            if let Some(meta) = inodes.nodes[&ino].meta.filter(|m| self.fresh(m.fetched_at)) {
                return Ok(self.face_attr(ino, meta));
            }
        }
        let face = self.load_face(key, fetch)?;
        let ino = lock(&self.inodes).ino_for(key);
        Ok(self.face_attr(
            ino,
            FaceMeta {
                size: face.bytes.len() as u64,
                digest: face.digest,
                fetched_at: face.fetched_at,
            },
        ))
    }

    /// A face's bytes, from the cache while fresh, else downloaded once for
    /// all concurrent callers.
    fn load_face(&self, key: &FaceKey, fetch: Fetch) -> Result<Arc<Face>, FsError> {
        if self.absent.contains(key) {
            return Err(FsError::NotFound);
        }
        let cached = || self.faces.get(key).filter(|f| self.fresh(f.fetched_at));
        if let Some(face) = cached() {
            METRICS.cache(true);
            return Ok(face);
        }
        if fetch == Fetch::Never {
            return Err(FsError::WouldBlock);
        }
        self.downloads.run(key, || {
            if let Some(face) = cached() {
                return Ok(face);
            }
            self.download(key)
        })
    }

    fn download(&self, key: &FaceKey) -> Result<Arc<Face>, FsError> {
        METRICS.cache(false);
        let _in_flight = METRICS.download();
        match self.api.get_face(key.kind, &key.id, key.cropped) {
            Ok(mut bytes) => {
                // The cache weighs faces by length: hold no more than that.
                bytes.shrink_to_fit();
                let face = Arc::new(Face {
                    digest: digest(&bytes),
                    bytes,
                    fetched_at: Instant::now(),
                });
                let meta = FaceMeta {
                    size: face.bytes.len() as u64,
                    digest: face.digest,
                    fetched_at: face.fetched_at,
                };
                {
                    let mut inodes = lock(&self.inodes);
                    let ino = inodes.ino_for(key);
                    inodes.nodes.get_mut(&ino).unwrap().meta = Some(meta);
                }
                self.faces.insert(key.clone(), face.clone(), meta.size);
                Ok(face)
            }
            Err(err) => {
                let fs_err = FsError::from_api(&err, key.kind);
                if matches!(err, ApiError::UserNotFound | ApiError::FaceNotFound) {
                    self.forget_face(key);
                }
                Err(fs_err)
            }
        }
    }

    /// The API said this face does not exist: drop what was known of it.
    fn forget_face(&self, key: &FaceKey) {
        self.absent.insert(key.clone());
        self.faces.remove(key);
        let mut inodes = lock(&self.inodes);
        if let Some(ino) = inodes.by_key.get(key).copied() {
            inodes.nodes.get_mut(&ino).unwrap().meta = None;
        }
    }

    fn handle(&self) -> u64 {
        self.next_handle.fetch_add(1, Ordering::Relaxed)
    }

    /// Opens a face for reading. The handle holds the bytes, so every read of
    /// one open file sees one version of the face, whatever the cache does.
    pub fn open(&self, ino: u64, write: bool, fetch: Fetch) -> Result<Opened, FsError> {
        if ino == ROOT_INO || dir_kind(ino).is_some() {
            return Err(FsError::IsADirectory);
        }
        let key = lock(&self.inodes)
            .nodes
            .get(&ino)
            .map(|n| n.key.clone())
            .ok_or(FsError::NotFound)?;
        if write {
            return Err(FsError::ReadOnly);
        }
        let face = self.load_face(&key, fetch)?;
        let keep_cache = {
            let mut inodes = lock(&self.inodes);
            let node = inodes.nodes.get_mut(&ino).ok_or(FsError::NotFound)?;
            node.opened_digest.replace(face.digest) == Some(face.digest)
        };
        let fh = self.handle();
        lock(&self.open_files).insert(fh, face);
        Ok(Opened { fh, keep_cache })
    }

    pub fn read(&self, fh: u64, offset: u64, size: u32) -> Result<ReadSlice, FsError> {
        let face = lock(&self.open_files)
            .get(&fh)
            .cloned()
            .ok_or(FsError::BadHandle)?;
        let len = face.bytes.len();
        let start = usize::try_from(offset).unwrap_or(usize::MAX).min(len);
        let end = start.saturating_add(size as usize).min(len);
        Ok(ReadSlice { face, start, end })
    }

    pub fn release(&self, fh: u64) {
        lock(&self.open_files).remove(&fh);
    }

    pub fn opendir(&self, ino: u64) -> Result<u64, FsError> {
        if ino != ROOT_INO && dir_kind(ino).is_none() {
            return Err(if lock(&self.inodes).nodes.contains_key(&ino) {
                FsError::NotADirectory
            } else {
                FsError::NotFound
            });
        }
        let fh = self.handle();
        lock(&self.open_dirs).insert(fh, None);
        Ok(fh)
    }

    /// Directory entries from `offset` on, each with the offset of the entry
    /// after it. The first call of a handle takes a snapshot of the listing
    /// that later calls page through, so one `ls` sees one consistent listing;
    /// a listing that cannot be had whole fails instead of showing part.
    pub fn readdir(
        &self,
        ino: u64,
        fh: u64,
        offset: u64,
        fetch: Fetch,
    ) -> Result<Vec<(u64, DirEntry)>, FsError> {
        let snapshot = lock(&self.open_dirs)
            .get(&fh)
            .cloned()
            .ok_or(FsError::BadHandle)?;
        let entries = match snapshot {
            Some(entries) if offset > 0 => entries,
            _ => {
                let entries = Arc::new(self.dir_entries(ino, fetch)?);
                if let Some(slot) = lock(&self.open_dirs).get_mut(&fh) {
                    *slot = Some(entries.clone());
                }
                entries
            }
        };
        let skip = usize::try_from(offset).unwrap_or(usize::MAX);
        Ok(entries
            .iter()
            .enumerate()
            .skip(skip)
            .map(|(i, e)| (i as u64 + 1, e.clone()))
            .collect())
    }

    pub fn releasedir(&self, fh: u64) {
        lock(&self.open_dirs).remove(&fh);
    }

    fn dir_entries(&self, ino: u64, fetch: Fetch) -> Result<Vec<DirEntry>, FsError> {
        let dot = |name: &str, ino| DirEntry {
            ino,
            kind: NodeKind::Directory,
            name: name.to_owned(),
        };
        let mut entries = vec![dot(".", ino), dot("..", ROOT_INO)];
        if ino == ROOT_INO {
            entries.extend(IdKind::ALL.map(|k| dot(k.as_str(), dir_ino(k))));
            return Ok(entries);
        }
        let kind = dir_kind(ino).ok_or(FsError::NotADirectory)?;
        let listing = self.listing(kind, fetch)?;
        let mut inodes = lock(&self.inodes);
        for id in &listing.ids {
            for cropped in [false, true] {
                let key = FaceKey::new(kind, id.as_str(), cropped);
                entries.push(DirEntry {
                    ino: inodes.ino_for(&key),
                    kind: NodeKind::File,
                    name: key.file_name(),
                });
            }
        }
        Ok(entries)
    }

    fn listing(&self, kind: IdKind, fetch: Fetch) -> Result<Arc<Listing>, FsError> {
        let cached = || {
            lock(&self.listings)
                .get(&kind)
                .filter(|l| self.fresh(l.fetched_at))
                .cloned()
        };
        if let Some(listing) = cached() {
            return Ok(listing);
        }
        if fetch == Fetch::Never {
            return Err(FsError::WouldBlock);
        }
        self.listing_flights.run(&kind, || {
            if let Some(listing) = cached() {
                return Ok(listing);
            }
            let listing = Arc::new(self.fetch_listing(kind)?);
            lock(&self.listings).insert(kind, listing.clone());
            Ok(listing)
        })
    }

    /// All pages of the user list. Any page failing fails the whole listing.
    fn fetch_listing(&self, kind: IdKind) -> Result<Listing, FsError> {
        let mut restarts = 0;
        'restart: loop {
            let mut seen = HashSet::new();
            let mut ids = Vec::new();
            let mut skipped = 0usize;
            let mut page_token: Option<String> = None;
            loop {
                let page = match self.api.list_users(kind, page_token.as_deref()) {
                    Ok(page) => page,
                    Err(ApiError::InvalidPageToken) if restarts < LISTING_RESTARTS => {
                        restarts += 1;
                        log::info!("the API no longer accepts the {kind} listing's page token; listing again from the start");
                        continue 'restart;
                    }
                    Err(err) => return Err(FsError::from_api(&err, kind)),
                };
                for user in page.users.into_iter().filter(|u| u.face_uploaded) {
                    if !layout::representable_id(&user.user_id) {
                        skipped += 1;
                    } else if seen.insert(user.user_id.clone()) {
                        ids.push(user.user_id);
                    }
                }
                if ids.len() > MAX_LISTED_USERS {
                    log::error!("the {kind} listing passed {MAX_LISTED_USERS} users; treating the answer as broken");
                    return Err(FsError::Io);
                }
                match page.next_page_token {
                    Some(next) => page_token = Some(next),
                    None => break,
                }
            }
            if skipped > 0 {
                log::warn!("{skipped} {kind} ids cannot be file names (they hold '/', are '.' or '..', end in '.cropped' or are too long) and are not listed");
            }
            let positions = ids
                .iter()
                .enumerate()
                .map(|(i, id)| (id.clone(), i))
                .collect();
            return Ok(Listing {
                ids,
                positions,
                fetched_at: Instant::now(),
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::memory::{Fault, MemoryApi};

    fn tenant() -> Arc<MemoryApi> {
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
        Arc::new(api)
    }

    fn fs_with(api: &Arc<MemoryApi>, config: FsConfig) -> Arc<FaceFs> {
        FaceFs::new(api.clone(), config)
    }

    fn fs_with_ttl(api: &Arc<MemoryApi>, ttl: Duration) -> Arc<FaceFs> {
        fs_with(
            api,
            FsConfig {
                ttl,
                readahead: 0,
                ..FsConfig::default()
            },
        )
    }

    /// Without read-ahead, so request counts are the reader's own.
    fn fs(api: &Arc<MemoryApi>) -> Arc<FaceFs> {
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
        let fh = fs.open(ino, false, Fetch::Allowed).unwrap().fh;
        let bytes = fs.read(fh, 0, 1 << 20).unwrap().bytes().to_vec();
        fs.release(fh);
        bytes
    }

    fn names(fs: &FaceFs, ino: u64) -> Vec<String> {
        let fh = fs.opendir(ino).unwrap();
        let entries = fs.readdir(ino, fh, 0, Fetch::Allowed).unwrap();
        fs.releasedir(fh);
        entries.into_iter().map(|(_, e)| e.name).collect()
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
            fs.lookup(ROOT_INO, name("faces"), Fetch::Allowed),
            Err(FsError::NotFound)
        );
        assert_eq!(api.face_requests() + api.list_requests(), 0);
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
        assert_eq!(api.face_requests(), 0);
        assert_eq!(api.list_requests(), 2, "two pages of two users");
        names(&fs, user_dir);
        assert_eq!(api.list_requests(), 2, "the listing is cached for the TTL");
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
        assert_eq!(api.face_requests(), 2, "stat fetched; reads used the cache");
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
        let fh = fs.open(ino, false, Fetch::Allowed).unwrap().fh;
        assert_eq!(fs.read(fh, 50, 100).unwrap().bytes().len(), 10);
        assert!(fs.read(fh, 60, 10).unwrap().bytes().is_empty());
        assert!(fs.read(fh, u64::MAX, 10).unwrap().bytes().is_empty());
        fs.release(fh);
        assert_eq!(fs.read(fh, 0, 1).err(), Some(FsError::BadHandle));
    }

    #[test]
    fn missing_users_and_faces_are_enoent_and_remembered() {
        let api = tenant();
        let fs = fs(&api);
        let dir = dir_ino(IdKind::OpenId);
        assert_eq!(
            fs.lookup(dir, name("ou_nobody.jpg"), Fetch::Allowed),
            Err(FsError::NotFound)
        );
        assert_eq!(
            fs.lookup(dir, name("ou_c.jpg"), Fetch::Allowed),
            Err(FsError::NotFound)
        );
        assert_eq!(api.face_requests(), 2);
        assert_eq!(
            fs.lookup(dir, name("ou_nobody.jpg"), Fetch::Never),
            Err(FsError::NotFound)
        );
        assert_eq!(api.face_requests(), 2, "negative answers are remembered");
    }

    #[test]
    fn negative_ttl_expires() {
        let api = tenant();
        let fs = fs_with(
            &api,
            FsConfig {
                negative_ttl: Duration::from_millis(30),
                ..FsConfig::default()
            },
        );
        let dir = dir_ino(IdKind::OpenId);
        assert_eq!(
            fs.lookup(dir, name("ou_c.jpg"), Fetch::Allowed),
            Err(FsError::NotFound)
        );
        api.set_faces("ou_c", Some(vec![9; 10]), Some(vec![8; 5]));
        std::thread::sleep(Duration::from_millis(40));
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
                fs.lookup(dir_ino(IdKind::OpenId), name(bad), Fetch::Allowed),
                Err(FsError::NotFound)
            );
        }
        assert_eq!(api.face_requests(), 0);
    }

    #[test]
    fn transient_failures_are_eio_and_not_remembered() {
        let api = tenant();
        let fs = fs(&api);
        api.push_faults([Fault::Transient]);
        let dir = dir_ino(IdKind::OpenId);
        assert_eq!(
            fs.lookup(dir, name("ou_a.jpg"), Fetch::Allowed),
            Err(FsError::Io)
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
        api.push_faults([Fault::PermissionDenied]);
        assert_eq!(
            fs.lookup(dir_ino(IdKind::UserId), name("c.jpg"), Fetch::Allowed),
            Err(FsError::PermissionDenied)
        );
    }

    #[test]
    fn a_listing_failing_part_way_fails_whole() {
        let api = tenant();
        let fs = fs(&api);
        let dir = dir_ino(IdKind::OpenId);
        // The first page succeeds, the second fails.
        let fh = fs.opendir(dir).unwrap();
        api.push_faults([Fault::Pass, Fault::Transient]);
        assert_eq!(
            fs.readdir(dir, fh, 0, Fetch::Allowed).err(),
            Some(FsError::Io)
        );
    }

    #[test]
    fn an_invalid_page_token_restarts_the_listing() {
        let api = tenant();
        let fs = fs(&api);
        api.push_faults([Fault::InvalidPageToken]);
        assert_eq!(names(&fs, dir_ino(IdKind::OpenId)).len(), 2 + 4);
        assert_eq!(api.list_requests(), 3, "one refused page, then two pages");
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
        assert_eq!(fs.cache_usage().0, 60, "100 + 60 > 150: ou_a was evicted");
        // stat still answers from what is known, the bytes are downloaded again.
        assert_eq!(fs.getattr(a.ino, Fetch::Never).unwrap().size, 100);
        assert_eq!(
            fs.open(a.ino, false, Fetch::Never),
            Err(FsError::WouldBlock)
        );
        assert_eq!(read_all(&fs, a.ino), vec![1; 100]);
        assert_eq!(api.face_requests(), 3);
        assert!(fs.cache_usage().0 <= 150);
    }

    #[test]
    fn ttl_expiry_refetches_and_mtime_follows_the_bytes() {
        let api = tenant();
        let fs = fs_with_ttl(&api, Duration::from_millis(30));
        let dir = dir_ino(IdKind::OpenId);
        let before = fs.lookup(dir, name("ou_a.jpg"), Fetch::Allowed).unwrap();
        std::thread::sleep(Duration::from_millis(40));
        let same = fs.getattr(before.ino, Fetch::Allowed).unwrap();
        assert_eq!(api.face_requests(), 2);
        assert_eq!(
            stable(same),
            stable(before.clone()),
            "same bytes: same inode, size and mtime"
        );
        api.set_faces("ou_a", Some(vec![7; 120]), Some(vec![2; 40]));
        std::thread::sleep(Duration::from_millis(40));
        let after = fs.getattr(before.ino, Fetch::Allowed).unwrap();
        assert_eq!(after.size, 120);
        assert_ne!(after.mtime, before.mtime);
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
        assert_eq!(fs.open(ino, true, Fetch::Allowed), Err(FsError::ReadOnly));
        assert_eq!(
            fs.open(ROOT_INO, false, Fetch::Allowed),
            Err(FsError::IsADirectory)
        );
        assert_eq!(fs.opendir(ino), Err(FsError::NotADirectory));
        assert_eq!(
            fs.lookup(ino, name("x.jpg"), Fetch::Allowed),
            Err(FsError::NotADirectory)
        );
        assert_eq!(fs.getattr(999_999, Fetch::Allowed), Err(FsError::NotFound));
    }

    #[test]
    fn never_fetch_reports_would_block() {
        let api = tenant();
        let fs = fs(&api);
        let dir = dir_ino(IdKind::OpenId);
        assert_eq!(
            fs.lookup(dir, name("ou_a.jpg"), Fetch::Never),
            Err(FsError::WouldBlock)
        );
        let fh = fs.opendir(dir).unwrap();
        assert_eq!(
            fs.readdir(dir, fh, 0, Fetch::Never).err(),
            Some(FsError::WouldBlock)
        );
        assert_eq!(api.face_requests() + api.list_requests(), 0);
    }

    fn big_tenant(users: usize) -> Arc<MemoryApi> {
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
        Arc::new(api)
    }

    fn fs_reading_ahead(api: &Arc<MemoryApi>) -> Arc<FaceFs> {
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
    fn wait_for_requests(api: &MemoryApi, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while api.face_requests() < n && Instant::now() < deadline {
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
        assert_eq!(api.face_requests(), 6);
        for (i, file) in files.iter().enumerate().skip(2) {
            let attr = fs.lookup(dir, name(file), Fetch::Allowed).unwrap();
            assert_eq!(attr.size, if i % 2 == 0 { 10 + i as u64 / 2 } else { 5 });
        }
        wait_for_requests(&api, 80);
        assert_eq!(
            api.face_requests(),
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
        assert_eq!(api.face_requests(), 0, "a plain readdir downloads nothing");
        // Random access: every fourth file, backwards.
        for i in (0..40).rev().step_by(4) {
            fs.lookup(dir, name(&format!("ou_{i:03}.jpg")), Fetch::Allowed)
                .unwrap();
        }
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(
            api.face_requests(),
            10,
            "no read-ahead for a walk that is not sequential"
        );
    }

    #[test]
    fn the_kernel_keeps_its_page_cache_only_for_unchanged_bytes() {
        let api = tenant();
        let fs = fs_with_ttl(&api, Duration::from_millis(30));
        let ino = fs
            .lookup(dir_ino(IdKind::OpenId), name("ou_a.jpg"), Fetch::Allowed)
            .unwrap()
            .ino;
        let first = fs.open(ino, false, Fetch::Allowed).unwrap();
        let second = fs.open(ino, false, Fetch::Allowed).unwrap();
        assert!(!first.keep_cache && second.keep_cache);
        std::thread::sleep(Duration::from_millis(40));
        assert!(
            fs.open(ino, false, Fetch::Allowed).unwrap().keep_cache,
            "refetched, same bytes"
        );
        api.set_faces("ou_a", Some(vec![5; 100]), None);
        std::thread::sleep(Duration::from_millis(40));
        assert!(
            !fs.open(ino, false, Fetch::Allowed).unwrap().keep_cache,
            "new bytes: drop the page cache"
        );
    }

    #[test]
    fn answers_carry_how_long_they_stay_true() {
        let api = tenant();
        let fs = fs_with_ttl(&api, Duration::from_secs(100));
        let attr = fs
            .lookup(dir_ino(IdKind::OpenId), name("ou_a.jpg"), Fetch::Allowed)
            .unwrap();
        assert!(
            attr.valid_for <= Duration::from_secs(100) && attr.valid_for > Duration::from_secs(90)
        );
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
        assert_eq!(api.face_requests(), 1);
    }
}
