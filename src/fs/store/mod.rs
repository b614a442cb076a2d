//! The on-disk store: the tier behind the memory cache that outlives the
//! mount. It keeps each downloaded face with what `stat` shows of it, and
//! each directory listing, so that a remount, a reboot or a crash costs no
//! download for what is still fresh.
//!
//! Layout, under the `--cache-dir` the user names:
//!
//! ```text
//! facefs-v2/<tenant>/tenant           base URL and app id, in full
//! facefs-v2/<tenant>/lock             flock of the mount using it, and its pid
//! facefs-v2/<tenant>/faces/<hh>/<h>   one face: see entry.rs
//! facefs-v2/<tenant>/listings/<kind>  one listing: see entry.rs
//! ```
//!
//! `<tenant>` and `<h>` are FNV-1a hashes of the tenant and of the face's
//! key; a hash names a file, what the file says is checked against the full
//! key, so a collision is a miss, never another face. Each file is written
//! to a temporary name and renamed into place, and verified whole at every
//! read; whatever does not verify is deleted and downloaded again. Nothing
//! is fsynced: a power cut may lose the newest entries, and the checksums
//! make sure that a torn one is discarded rather than served.
//!
//! There is no index file to lose: at start a background thread scans the
//! face files (their sizes and last use, kept as mtime) into the in-memory
//! LRU that bounds the store, so mounting does not wait for the scan, and
//! reads need no index (a face's path comes from its key).

pub mod bounded;
mod directory;
pub mod entry;
mod error;
mod files;
pub mod metrics;
mod notes;
mod room;
mod scan;

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use lru::LruCache;
use parking_lot::Mutex;

use self::directory::{check_tenant, is_own_file, open_private, StoreLock};
pub use self::error::StoreError;
use self::files::{
    face_name, face_path, is_face_file, listing_path, open_face_file, read_cached, read_prefix,
    remove_face_file, FaceName, Replacer,
};
use self::metrics::StoreMetrics;
pub use self::room::StoreUsage;
use self::room::{free_space, Index, FREE_SPACE_FLOOR};
use self::scan::Scan;
use super::answer::{Step, Stop};
use super::face::{digest, Face, FaceMeta};
use super::layout::FaceKey;
use super::listing::Listing;
use crate::api::{FaceBytes, IdKind};
use crate::repeated_warning::RepeatedWarning;
use crate::seal::Sealer;
use crate::sync::byte_budget::{ByteBudget, MemoryHold};

/// The store's own directory under `--cache-dir`; a new format gets a new one.
const FORMAT_DIR: &str = "facefs-v2";
/// Where stores of the unsealed format lived; this tenant's is removed.
const OLD_FORMAT_DIR: &str = "facefs-v1";
/// No stored listing is believed to be larger: 2,000,000 ids of at most 243 bytes and their ends.
const MAX_LISTING_FILE: u64 = 2_000_000 * (243 + 4) + 4096;

/// A face read within this of its last recorded use is not touched again:
/// the LRU order across remounts needs hours, not every read.
const TOUCH_EVERY: Duration = Duration::from_secs(3600);

pub struct StoreConfig {
    /// The `--cache-dir` the user named.
    pub dir: PathBuf,
    /// Bytes on disk this tenant's store may take.
    pub max_bytes: u64,
    /// Who the faces belong to: the API base URL and the app id.
    pub tenant: String,
    /// How long a read may wait for room in the memory budget.
    pub memory_wait: Duration,
    /// The tenant's keys: every entry is sealed with them.
    pub sealer: Arc<Sealer>,
    /// Every access that may wait for the disk first waits this long (a
    /// slow disk, for tests; see [`bounded`]).
    pub disk_delay: Option<Duration>,
}

pub struct FaceStore {
    root: PathBuf,
    /// `root/faces`, open.
    faces_dir: File,
    max_bytes: u64,
    memory: Arc<ByteBudget>,
    memory_wait: Duration,
    index: Arc<Mutex<Index>>,
    /// Writes entries to a temporary name, then renames them into place.
    replacer: Replacer,
    /// Whether "no room" was logged since the last write that found room.
    warned_full: AtomicBool,
    metrics: StoreMetrics,
    sealer: Arc<Sealer>,
    disk_delay: Option<Duration>,
    _lock: StoreLock,
}

/// Failures that repeat with every read or write of a failing disk.
static CANNOT_OPEN: RepeatedWarning = RepeatedWarning::new();
static CANNOT_WRITE: RepeatedWarning = RepeatedWarning::new();

#[derive(Clone, Copy, PartialEq, Eq)]
enum HeaderRead {
    /// Waiting for the disk, and reading the whole file in behind (a read
    /// usually follows a `stat`).
    Wait,
    /// Waiting for the disk, the header alone (a directory listing: few of
    /// its faces are read).
    Listed,
    /// From the page cache or not at all.
    Now,
}

impl FaceStore {
    /// Opens (creating it if need be) the tenant's store under the cache
    /// directory, takes its lock and starts the scan that sizes it.
    pub fn open(
        config: StoreConfig,
        memory: Arc<ByteBudget>,
    ) -> Result<Arc<FaceStore>, StoreError> {
        directory::prepare_top(&config.dir)?;
        let format_dir = config.dir.join(FORMAT_DIR);
        directory::prepare_own(&format_dir)?;
        let tenant_dir = format!("{:016x}", digest(config.tenant.as_bytes()));
        directory::remove_unsealed(&config.dir.join(OLD_FORMAT_DIR).join(&tenant_dir));
        let root = format_dir.join(tenant_dir);
        directory::prepare_own(&root)?;
        let lock = directory::lock(&root)?;
        check_tenant(&root, &config.tenant, &config.sealer)?;
        for dir in ["faces", "listings"] {
            directory::prepare_own(&root.join(dir))?;
        }
        let faces_dir = directory::open_dir(&root.join("faces"))?;
        let index = Arc::new(Mutex::new(Index {
            lru: LruCache::unbounded(),
            bytes: 0,
            listings: [0; 3],
            evictions: 0,
            scanned: false,
        }));
        let store = Arc::new(FaceStore {
            root,
            faces_dir,
            max_bytes: config.max_bytes,
            memory,
            memory_wait: config.memory_wait,
            index,
            replacer: Replacer::default(),
            warned_full: AtomicBool::new(false),
            metrics: StoreMetrics::default(),
            sealer: config.sealer,
            disk_delay: config.disk_delay,
            _lock: lock,
        });
        let scanner = Arc::downgrade(&store);
        scan::start(store.root.clone(), move |found, started| {
            if let Some(store) = scanner.upgrade() {
                store.scanned(found, started);
            }
        })
        .map_err(StoreError::Scan)?;
        Ok(store)
    }

    /// From now on every write waits at `gate` first, as on a disk that stalls.
    #[cfg(test)]
    pub fn hold_writes(&self, gate: Arc<crate::sync::gate::Gate>) {
        self.replacer.hold_writes(gate);
    }

    /// Where `key`'s face is stored.
    #[cfg(test)]
    pub fn face_path_of(&self, key: &FaceKey) -> PathBuf {
        face_path(&self.root, face_name(&self.sealer, key))
    }

    pub fn metrics(&self) -> &StoreMetrics {
        &self.metrics
    }

    pub fn disk_delay(&self) -> Option<Duration> {
        self.disk_delay
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn usage(&self) -> StoreUsage {
        self.index.lock().usage()
    }

    /// Merges what the scan found under what this mount wrote meanwhile
    /// (which is newer), then evicts down to the bound.
    fn scanned(&self, found: Scan, started: Instant) {
        let removed = found.removed;
        let (faces, bytes) = self.index.lock().merge_scan(found);
        // Down to the bound, now that the total is known.
        self.make_room(None, 0, 0);
        log::info!(
            "store {}: {faces} faces, {} MiB, scanned in {:?}{}",
            self.root.display(),
            bytes >> 20,
            started.elapsed(),
            if removed > 0 {
                format!("; removed {removed} unfinished or foreign files")
            } else {
                String::new()
            }
        );
    }

    /// The stored face of `key`, verified, or `None` (missing or damaged:
    /// damaged entries are deleted). `Err` only when no memory could be had
    /// for its bytes within the wait.
    pub fn face(&self, key: &FaceKey) -> Result<Option<Face>, StoreError> {
        let name = face_name(&self.sealer, key);
        let path = face_path(&self.root, name);
        let file = match open_face_file(&self.faces_dir, name) {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            // A symlink where a face should be: planted, never followed.
            Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
                self.discard(name, &path, key, "a symbolic link");
                return Ok(None);
            }
            // Out of descriptors, an I/O error: the entry may be good.
            Err(e) => {
                CANNOT_OPEN.warn(|| {
                    format!(
                        "cannot open the stored {} face {}: {e}",
                        key.kind,
                        path.display()
                    )
                });
                return Ok(None);
            }
        };
        let meta = match file.metadata() {
            Ok(meta) if is_face_file(&meta) => meta,
            Ok(_) => {
                self.discard(name, &path, key, "not a private file of the right size");
                return Ok(None);
            }
            Err(e) => {
                self.discard(name, &path, key, &format!("cannot be read ({e})"));
                return Ok(None);
            }
        };
        let held = self.hold(meta.len())?;
        let mut bytes = Vec::with_capacity(meta.len() as usize);
        // One byte more than the length: a file grown since fails the check.
        if let Err(e) = (&file).take(meta.len() + 1).read_to_end(&mut bytes) {
            self.discard(name, &path, key, &format!("cannot be read ({e})"));
            return Ok(None);
        }
        let (header, bytes) = match entry::open_face(&self.sealer, key, bytes) {
            Ok(opened) => opened,
            Err(damage) => {
                self.discard(name, &path, key, &damage.to_string());
                return Ok(None);
            }
        };
        let last_use = meta.modified().unwrap_or(SystemTime::UNIX_EPOCH);
        if SystemTime::now()
            .duration_since(last_use)
            .unwrap_or_default()
            > TOUCH_EVERY
        {
            // The order eviction follows after a remount.
            let _ = file.set_modified(SystemTime::now());
        }
        Ok(Some(self.served(name, bytes, held, header)))
    }

    /// [`Self::face`] without waiting, for the kernel's own thread: only if
    /// the whole file is in the page cache (`RWF_NOWAIT`), memory is free
    /// now, and `wanted` accepts when it was fetched. Anything else, damage
    /// included, is `None` for a call that may wait to handle; this one
    /// then changed nothing.
    pub fn face_now(&self, key: &FaceKey, wanted: impl Fn(SystemTime) -> bool) -> Option<Face> {
        let name = face_name(&self.sealer, key);
        let file = open_face_file(&self.faces_dir, name).ok()?;
        let meta = file.metadata().ok().filter(is_face_file)?;
        let held = self.memory.try_hold(meta.len())?;
        let mut bytes = vec![0u8; meta.len() as usize];
        let read = read_cached(&file, meta.len(), &mut bytes)?;
        bytes.truncate(read);
        entry::verify_face_header(&self.sealer, key, &bytes, bytes.len() as u64)
            .ok()
            .filter(|h| wanted(h.fetched_at))?;
        let (header, bytes) = entry::open_face(&self.sealer, key, bytes).ok()?;
        Some(self.served(name, bytes, held, header))
    }

    fn served(
        &self,
        name: FaceName,
        bytes: Vec<u8>,
        held: MemoryHold,
        header: entry::StoredFaceHeader,
    ) -> Face {
        self.index.lock().lru.promote(&name);
        self.metrics.hits.inc();
        Face::verified(
            FaceBytes {
                bytes,
                held,
                fetched_at: None,
            },
            header.digest,
            header.fetched_at,
        )
    }

    /// What `stat` shows of the stored face of `key`, from its verified
    /// header alone (a backup's walk stats every file and reads few). The
    /// bytes are verified when they are read; if they fail then, the face
    /// is downloaded again and its inode keeps the version its header named.
    ///
    /// The kernel is also asked to read the whole file in, asynchronously:
    /// the read that usually follows a stat then finds it in the page cache
    /// instead of waiting for the disk a second time.
    pub fn meta(&self, key: &FaceKey) -> Option<FaceMeta> {
        self.header(key, HeaderRead::Wait).ok().flatten()
    }

    /// [`Self::meta`] without waiting for the disk's data, for the kernel's
    /// own thread: the header is read only if it is in the page cache
    /// (`RWF_NOWAIT`), and damage is left for a call that may wait to
    /// handle, so that this one changes nothing. (Opening the file may
    /// still wait for directory blocks, as any local file system lookup;
    /// the start-up scan has usually brought those in. Keep `--cache-dir`
    /// on a local disk.)
    pub fn meta_now(&self, key: &FaceKey) -> Step<Option<FaceMeta>> {
        self.header(key, HeaderRead::Now)
    }

    /// [`Self::meta`] for a directory listing: the header alone, no
    /// read-ahead of the bytes.
    pub fn listed_meta(&self, key: &FaceKey) -> Option<FaceMeta> {
        self.header(key, HeaderRead::Listed).ok().flatten()
    }

    fn header(&self, key: &FaceKey, how: HeaderRead) -> Step<Option<FaceMeta>> {
        let name = face_name(&self.sealer, key);
        // What cannot be known here: a call that may wait finds out, and
        // only that one may delete.
        let unknown = match how {
            HeaderRead::Now => Err(Stop::WouldBlock),
            HeaderRead::Wait | HeaderRead::Listed => Ok(None),
        };
        let file = match open_face_file(&self.faces_dir, name) {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(_) => return unknown,
        };
        if how == HeaderRead::Wait {
            // SAFETY: advice on a descriptor this function owns.
            unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_WILLNEED) };
        }
        let Some(meta) = file.metadata().ok().filter(is_face_file) else {
            return unknown;
        };
        let mut start = [0u8; entry::FACE_HEADER_MAX];
        let read = match how {
            HeaderRead::Now => read_cached(&file, meta.len(), &mut start),
            HeaderRead::Wait | HeaderRead::Listed => read_prefix(&file, &mut start),
        };
        let Some(read) = read else { return unknown };
        match entry::verify_face_header(&self.sealer, key, &start[..read], meta.len()) {
            Ok(header) => Ok(Some(FaceMeta {
                size: header.size,
                digest: header.digest,
                fetched_at: header.fetched_at,
            })),
            Err(_) if how == HeaderRead::Now => unknown,
            Err(damage) => {
                let path = face_path(&self.root, name);
                self.discard(name, &path, key, &damage.to_string());
                Ok(None)
            }
        }
    }

    /// Memory for `bytes` from the same budget as downloads. The budget is
    /// async (the HTTP client waits on it); a store read is not, and waits
    /// for room by polling, which only happens when memory is short.
    fn hold(&self, bytes: u64) -> Result<MemoryHold, StoreError> {
        self.memory
            .hold_within(bytes, self.memory_wait)
            .ok_or(StoreError::NoMemory(self.memory_wait))
    }

    fn discard(&self, name: FaceName, path: &Path, key: &FaceKey, why: &str) {
        // The id is personal data: the log names the kind and the file.
        self.metrics.discarded.inc();
        // At the 1st, 2nd, 4th... discard: a rotated secret or a planted
        // flood must not fill the log.
        let count = self.metrics.discarded.get();
        if count.is_power_of_two() {
            log::warn!(
                "discarding the stored {} face {}: {why}; it is downloaded again when needed (discarded so far: {count})",
                key.kind,
                path.display()
            );
        }
        remove_face_file(&self.faces_dir, name);
        self.index.lock().remove(name);
    }

    /// Keeps `face` as the stored face of `key`. A failure to write is
    /// logged and costs only the next download.
    pub fn put_face(&self, key: &FaceKey, face: &Face) {
        let name = face_name(&self.sealer, key);
        let path = face_path(&self.root, name);
        let sealed = entry::seal_face(&self.sealer, key, &face.bytes, face.digest, face.fetched_at);
        let size = sealed.len() as u64;
        if !self.make_room(Some(name), size, 0) {
            return;
        }
        let written = path
            .parent()
            .map_or(Ok(()), |dir| {
                directory::prepare_own(dir).map_err(std::io::Error::other)
            })
            .and_then(|()| {
                self.replacer
                    .write_then_rename(&path, |file| file.write_all(&sealed))
            });
        match written {
            Ok(bytes) => {
                self.index.lock().put(name, bytes);
                self.metrics.writes.inc();
            }
            Err(e) => CANNOT_WRITE.warn(|| {
                format!(
                    "cannot store a {} face in {}: {e}",
                    key.kind,
                    self.root.display()
                )
            }),
        }
    }

    /// Forgets the stored face of `key` (the API said it does not exist).
    pub fn remove_face(&self, key: &FaceKey) {
        let name = face_name(&self.sealer, key);
        remove_face_file(&self.faces_dir, name);
        self.index.lock().remove(name);
    }

    /// The stored listing of `kind`, verified, or `None`.
    pub fn listing(&self, kind: IdKind) -> Option<Listing> {
        let path = listing_path(&self.root, kind);
        let file = match open_private(&path) {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
            Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
                self.discard_listing(kind, &path, "a symbolic link");
                return None;
            }
            Err(e) => {
                log::warn!(
                    "cannot open the stored {kind} listing {}: {e}",
                    path.display()
                );
                return None;
            }
        };
        let fits = file
            .metadata()
            .is_ok_and(|m| is_own_file(&m) && m.len() <= MAX_LISTING_FILE);
        let mut bytes = Vec::new();
        if !fits
            || file
                .take(MAX_LISTING_FILE + 1)
                .read_to_end(&mut bytes)
                .is_err()
        {
            self.discard_listing(kind, &path, "not a private file of a listing's size");
            return None;
        }
        match entry::decode_listing(&self.sealer, kind, bytes) {
            Ok(listing) => Some(listing),
            Err(damage) => {
                self.discard_listing(kind, &path, &damage.to_string());
                None
            }
        }
    }

    fn discard_listing(&self, kind: IdKind, path: &Path, why: &str) {
        log::warn!(
            "discarding the stored {kind} listing {}: {why}; it is listed again when needed",
            path.display()
        );
        self.metrics.discarded.inc();
        let _ = std::fs::remove_file(path);
        let mut index = self.index.lock();
        index.bytes -= std::mem::take(&mut index.listings[kind.index()]);
    }

    pub fn put_listing(&self, kind: IdKind, listing: &Listing) {
        let encoded = entry::encode_listing(&self.sealer, kind, listing);
        let path = listing_path(&self.root, kind);
        let old = self.index.lock().listings[kind.index()];
        if !self.make_room(None, encoded.len() as u64, old) {
            return;
        }
        match self
            .replacer
            .write_then_rename(&path, |file| file.write_all(&encoded))
        {
            Ok(bytes) => {
                self.metrics.listing_writes.inc();
                let mut index = self.index.lock();
                index.bytes -= std::mem::replace(&mut index.listings[kind.index()], bytes);
                index.bytes += bytes;
            }
            Err(e) => log::warn!(
                "cannot store the {kind} listing in {}: {e}",
                self.root.display()
            ),
        }
    }

    /// Evicts until `incoming` more bytes fit the bound and the free-space
    /// floor; `false` if they cannot (the entry is then not stored). A face
    /// being replaced (`name`) leaves the bound at once, but its old file
    /// stays on disk until the new one is renamed over it, and so does an
    /// old listing: `still_on_disk` bytes the floor must allow for.
    ///
    /// The index lock is held for the bookkeeping only: the file system is
    /// asked for its free space before, and evicted files are deleted
    /// after, because the kernel's never-wait reads take the same lock and
    /// must not wait for a slow disk.
    fn make_room(&self, name: Option<FaceName>, incoming: u64, still_on_disk: u64) -> bool {
        let space = free_space(&self.root);
        let (fits, evicted) = {
            let mut index = self.index.lock();
            let replaced = name.and_then(|name| index.lru.peek(&name).copied());
            if let Some(name) = name {
                index.remove(name);
            }
            match space {
                Some(space) => index.plan_eviction(
                    &space,
                    incoming,
                    still_on_disk + replaced.unwrap_or(0),
                    self.max_bytes,
                ),
                None => (false, Vec::new()),
            }
        };
        for name in evicted {
            remove_face_file(&self.faces_dir, name);
        }
        if !fits && !self.warned_full.swap(true, Ordering::Relaxed) {
            log::warn!(
                "the store in {} is full (--cache-dir-size, or its file system is {:.0}% from full): new faces are not stored until room is made",
                self.root.display(),
                FREE_SPACE_FLOOR * 100.0
            );
        }
        if fits {
            self.warned_full.store(false, Ordering::Relaxed);
        }
        fits
    }
}

#[cfg(test)]
pub mod tests;
