//! The on-disk store: the tier behind the memory cache that outlives the
//! mount. It keeps each downloaded face with what `stat` shows of it, and
//! each directory listing, so that a remount, a reboot or a crash costs no
//! download for what is still fresh.
//!
//! Layout, under the `--cache-dir` the user names:
//!
//! ```text
//! facefs-v1/<tenant>/tenant           base URL and app id, in full
//! facefs-v1/<tenant>/lock             flock of the mount using it, and its pid
//! facefs-v1/<tenant>/faces/<hh>/<h>   one face: see entry.rs
//! facefs-v1/<tenant>/listings/<kind>  one listing: see entry.rs
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

mod directory;
pub mod entry;
pub mod metrics;

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use lru::LruCache;
use parking_lot::Mutex;

use self::directory::{create_private, is_own_file, open_private, StoreLock};
use self::metrics::StoreMetrics;
use super::face::{digest, Face, FaceMeta};
use super::layout::FaceKey;
use super::listing::Listing;
use crate::api::{FaceBytes, IdKind};
use crate::sync::byte_budget::{ByteBudget, MemoryHold};

/// The store's own directory under `--cache-dir`; a new format gets a new one.
const FORMAT_DIR: &str = "facefs-v1";
/// The store never leaves less than this share of its file system free.
const FREE_SPACE_FLOOR: f64 = 0.05;
/// No stored file is believed to be larger: a face, its header, some slack.
const MAX_FACE_FILE: u64 = crate::api::http::MAX_FACE_BYTES + 4096;
/// Nor any listing: 2,000,000 ids of at most 243 bytes and their ends.
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
}

/// What the store holds, for `statfs`-style reports and the metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StoreUsage {
    pub bytes: u64,
    pub faces: usize,
    pub evictions: u64,
    /// Whether the start-up scan is done (before it, the totals count only
    /// what this mount wrote).
    pub scanned: bool,
}

pub struct FaceStore {
    root: PathBuf,
    /// `root/faces`, open.
    faces_dir: File,
    max_bytes: u64,
    memory: Arc<ByteBudget>,
    memory_wait: Duration,
    index: Arc<Mutex<Index>>,
    next_temp: AtomicU64,
    /// Whether "no room" was logged since the last write that found room.
    warned_full: AtomicBool,
    metrics: StoreMetrics,
    /// Tests hold writes here to see that nothing else waits for them.
    #[cfg(test)]
    write_gate: Mutex<Option<Arc<crate::sync::gate::Gate>>>,
    _lock: StoreLock,
}

/// The faces on disk by file name, least recently used first out.
struct Index {
    lru: LruCache<u64, u64>,
    /// Bytes on disk of the faces in `lru` and of the listings.
    bytes: u64,
    listings: [u64; 3],
    evictions: u64,
    scanned: bool,
}

impl Index {
    fn put(&mut self, name: u64, bytes: u64) {
        if let Some(old) = self.lru.put(name, bytes) {
            self.bytes -= old;
        }
        self.bytes += bytes;
    }

    fn remove(&mut self, name: u64) {
        if let Some(old) = self.lru.pop(&name) {
            self.bytes -= old;
        }
    }

    /// Takes out the least recently used face: its name, and the bytes it
    /// took on disk (its file is the caller's to delete).
    fn evict_one(&mut self) -> Option<(u64, u64)> {
        let (name, bytes) = self.lru.pop_lru()?;
        self.bytes -= bytes;
        self.evictions += 1;
        Some((name, bytes))
    }
}

/// What [`FaceStore::meta_now`] found.
#[derive(Debug, Clone, Copy)]
pub enum Peek {
    Found(FaceMeta),
    /// No stored face (or none this store would serve).
    Absent,
    /// Answering needs the disk.
    WouldBlock,
}

impl Peek {
    fn found(self) -> Option<FaceMeta> {
        match self {
            Peek::Found(meta) => Some(meta),
            _ => None,
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum HeaderRead {
    Wait,
    Now,
}

/// Reads the start of `file` into `buf`; how many bytes it holds.
fn read_prefix(file: &File, buf: &mut [u8]) -> Option<usize> {
    let mut read = 0;
    while read < buf.len() {
        match std::os::unix::fs::FileExt::read_at(file, &mut buf[read..], read as u64) {
            Ok(0) => break,
            Ok(n) => read += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return None,
        }
    }
    Some(read)
}

/// [`read_prefix`] from the page cache only: `None` if that needs the disk.
fn read_cached(file: &File, len: u64, buf: &mut [u8]) -> Option<usize> {
    let iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: one iovec over `buf`, which outlives the call; a descriptor owned by `file`.
    let n = unsafe { libc::preadv2(file.as_raw_fd(), &iov, 1, 0, libc::RWF_NOWAIT) };
    // A short read may mean the rest is not cached: only a whole header or
    // the whole (short) file counts.
    usize::try_from(n)
        .ok()
        .filter(|n| *n == buf.len() || *n as u64 == len)
}

/// Whether an opened file can be a face entry this store wrote.
fn is_face_file(meta: &std::fs::Metadata) -> bool {
    is_own_file(meta) && meta.len() <= MAX_FACE_FILE
}

/// The file name of a face: its key, hashed.
fn face_name(key: &FaceKey) -> u64 {
    let mut text = Vec::with_capacity(key.id.len() + 2);
    text.push(key.kind.index() as u8);
    text.push(u8::from(key.cropped));
    text.extend_from_slice(key.id.as_bytes());
    digest(&text)
}

fn face_path(root: &Path, name: u64) -> PathBuf {
    root.join("faces").join(face_relative(name))
}

/// A face's path below `faces/`.
fn face_relative(name: u64) -> String {
    let hex = format!("{name:016x}");
    format!("{}/{}", &hex[..2], &hex[2..])
}

fn listing_path(root: &Path, kind: IdKind) -> PathBuf {
    root.join("listings").join(kind.as_str())
}

/// Bytes a file takes on disk (blocks, not length: what the bound is about).
fn disk_bytes(meta: &std::fs::Metadata) -> u64 {
    meta.blocks() * 512
}

impl FaceStore {
    /// Opens (creating it if need be) the tenant's store under the cache
    /// directory, takes its lock and starts the scan that sizes it.
    pub fn open(config: StoreConfig, memory: Arc<ByteBudget>) -> Result<Arc<FaceStore>, String> {
        directory::prepare_top(&config.dir)?;
        let format_dir = config.dir.join(FORMAT_DIR);
        directory::prepare_own(&format_dir)?;
        let root = format_dir.join(format!("{:016x}", digest(config.tenant.as_bytes())));
        directory::prepare_own(&root)?;
        let lock = directory::lock(&root)?;
        check_tenant(&root, &config.tenant)?;
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
            next_temp: AtomicU64::new(0),
            warned_full: AtomicBool::new(false),
            metrics: StoreMetrics::default(),
            #[cfg(test)]
            write_gate: Mutex::new(None),
            _lock: lock,
        });
        let scanner = Arc::downgrade(&store);
        std::thread::Builder::new()
            .name("facefs-store-scan".into())
            .spawn(move || {
                let started = Instant::now();
                let Some(root) = scanner.upgrade().map(|s| s.root.clone()) else {
                    return;
                };
                let found = scan(&root);
                if let Some(store) = scanner.upgrade() {
                    store.scanned(found, started);
                }
            })
            .map_err(|e| format!("cannot start the store's scan: {e}"))?;
        Ok(store)
    }

    pub fn metrics(&self) -> &StoreMetrics {
        &self.metrics
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn usage(&self) -> StoreUsage {
        let index = self.index.lock();
        StoreUsage {
            bytes: index.bytes,
            faces: index.lru.len(),
            evictions: index.evictions,
            scanned: index.scanned,
        }
    }

    /// Merges what the scan found under what this mount wrote meanwhile
    /// (which is newer), then evicts down to the bound.
    fn scanned(&self, mut found: Scan, started: Instant) {
        found.faces.sort_by_key(|f| f.2);
        let mut index = self.index.lock();
        let written = std::mem::replace(&mut index.lru, LruCache::unbounded());
        // A listing written since the scan looked is the one on disk now.
        for (kind, bytes) in found.listings.iter().enumerate() {
            if index.listings[kind] == 0 {
                index.listings[kind] = *bytes;
            }
        }
        index.bytes = index.listings.iter().sum();
        for (name, bytes, _) in found.faces {
            index.put(name, bytes);
        }
        for (name, bytes) in written.iter().rev() {
            index.put(*name, *bytes);
        }
        index.scanned = true;
        let faces = index.lru.len();
        let bytes = index.bytes;
        drop(index);
        // Down to the bound, now that the total is known.
        self.make_room(None, 0, 0);
        log::info!(
            "store {}: {faces} faces, {} MiB, scanned in {:?}{}",
            self.root.display(),
            bytes >> 20,
            started.elapsed(),
            if found.removed > 0 {
                format!("; removed {} unfinished or foreign files", found.removed)
            } else {
                String::new()
            }
        );
    }

    /// The stored face of `key`, verified, or `None` (missing or damaged:
    /// damaged entries are deleted). `Err` only when no memory could be had
    /// for its bytes within the wait.
    pub fn face(&self, key: &FaceKey) -> Result<Option<Face>, String> {
        let name = face_name(key);
        let path = face_path(&self.root, name);
        let file = match self.open_face(name) {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            // A symlink where a face should be: planted, never followed.
            Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
                self.discard(name, &path, key, "a symbolic link");
                return Ok(None);
            }
            // Out of descriptors, an I/O error: the entry may be good.
            Err(e) => {
                log::warn!(
                    "cannot open the stored {} face {}: {e}",
                    key.kind,
                    path.display()
                );
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
        let header = match entry::verify_face(key, &bytes) {
            Ok(header) => header,
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
        let name = face_name(key);
        let file = self.open_face(name).ok()?;
        let meta = file.metadata().ok().filter(is_face_file)?;
        let held = self.memory.try_hold(meta.len())?;
        let mut bytes = vec![0u8; meta.len() as usize];
        let read = read_cached(&file, meta.len(), &mut bytes)?;
        bytes.truncate(read);
        let header = entry::verify_face(key, &bytes)
            .ok()
            .filter(|h| wanted(h.fetched_at))?;
        Some(self.served(name, bytes, held, header))
    }

    fn served(
        &self,
        name: u64,
        mut bytes: Vec<u8>,
        held: MemoryHold,
        header: entry::StoredFaceHeader,
    ) -> Face {
        bytes.drain(..header.data_start);
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
        self.header(key, HeaderRead::Wait).found()
    }

    /// [`Self::meta`] without waiting for the disk's data, for the kernel's
    /// own thread: the header is read only if it is in the page cache
    /// (`RWF_NOWAIT`), and damage is left for a call that may wait to
    /// handle, so that this one changes nothing. (Opening the file may
    /// still wait for directory blocks, as any local file system lookup;
    /// the start-up scan has usually brought those in. Keep `--cache-dir`
    /// on a local disk.)
    pub fn meta_now(&self, key: &FaceKey) -> Peek {
        self.header(key, HeaderRead::Now)
    }

    fn header(&self, key: &FaceKey, how: HeaderRead) -> Peek {
        let name = face_name(key);
        // What cannot be known here: a call that may wait finds out, and
        // only that one may delete.
        let unknown = match how {
            HeaderRead::Now => Peek::WouldBlock,
            HeaderRead::Wait => Peek::Absent,
        };
        let file = match self.open_face(name) {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Peek::Absent,
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
            HeaderRead::Wait => read_prefix(&file, &mut start),
        };
        let Some(read) = read else { return unknown };
        match entry::verify_face_header(key, &start[..read], meta.len()) {
            Ok((header, size)) => Peek::Found(FaceMeta {
                size,
                digest: header.digest,
                fetched_at: header.fetched_at,
            }),
            Err(_) if how == HeaderRead::Now => unknown,
            Err(damage) => {
                let path = face_path(&self.root, name);
                self.discard(name, &path, key, &damage.to_string());
                Peek::Absent
            }
        }
    }

    /// Opens a stored face, relative to the open faces directory (a stat
    /// walk opens every face), never through a symlink.
    fn open_face(&self, name: u64) -> std::io::Result<File> {
        directory::open_private_at(&self.faces_dir, &face_relative(name))
    }

    /// Memory for `bytes` from the same budget as downloads. The budget is
    /// async (the HTTP client waits on it); a store read is not, and waits
    /// for room by polling, which only happens when memory is short.
    fn hold(&self, bytes: u64) -> Result<MemoryHold, String> {
        self.memory.hold_within(bytes, self.memory_wait).ok_or_else(|| {
            format!(
                "no memory for a stored face within {:?}: every byte of --cache-size is held by faces being read",
                self.memory_wait
            )
        })
    }

    fn discard(&self, name: u64, path: &Path, key: &FaceKey, why: &str) {
        // The id is personal data: the log names the kind and the file.
        log::warn!(
            "discarding the stored {} face {}: {why}; it is downloaded again when needed",
            key.kind,
            path.display()
        );
        self.metrics.discarded.inc();
        let _ = std::fs::remove_file(path);
        self.index.lock().remove(name);
    }

    /// Keeps `face` as the stored face of `key`. A failure to write is
    /// logged and costs only the next download.
    pub fn put_face(&self, key: &FaceKey, face: &Face) {
        let name = face_name(key);
        let path = face_path(&self.root, name);
        let header = entry::face_header(key, &face.bytes, face.digest, face.fetched_at);
        let size = (header.len() + face.bytes.len()) as u64;
        if !self.make_room(Some(name), size, 0) {
            return;
        }
        let written = path
            .parent()
            .map_or(Ok(()), |dir| {
                directory::prepare_own(dir).map_err(std::io::Error::other)
            })
            .and_then(|()| {
                self.write_then_rename(&path, |file| {
                    file.write_all(&header)?;
                    file.write_all(&face.bytes)
                })
            });
        match written {
            Ok(bytes) => {
                self.index.lock().put(name, bytes);
                self.metrics.writes.inc();
            }
            Err(e) => log::warn!(
                "cannot store a {} face in {}: {e}",
                key.kind,
                self.root.display()
            ),
        }
    }

    /// Forgets the stored face of `key` (the API said it does not exist).
    pub fn remove_face(&self, key: &FaceKey) {
        let name = face_name(key);
        let _ = std::fs::remove_file(face_path(&self.root, name));
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
        match entry::decode_listing(kind, &bytes) {
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
        let encoded = entry::encode_listing(kind, listing);
        let path = listing_path(&self.root, kind);
        let old = self.index.lock().listings[kind.index()];
        if !self.make_room(None, encoded.len() as u64, old) {
            return;
        }
        match self.write_then_rename(&path, |file| file.write_all(&encoded)) {
            Ok(bytes) => {
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

    /// A small note kept beside the store's entries (e.g. how far the
    /// fleet's event stream was read), if one was written.
    pub fn note(&self, name: &str) -> Option<String> {
        let mut text = String::new();
        directory::open_private(&self.root.join(format!("{name}.note")))
            .ok()?
            .read_to_string(&mut text)
            .ok()?;
        Some(text)
    }

    pub fn put_note(&self, name: &str, text: &str) {
        let path = self.root.join(format!("{name}.note"));
        if let Err(e) = self.write_then_rename(&path, |file| file.write_all(text.as_bytes())) {
            log::warn!("cannot write {}: {e}", path.display());
        }
    }

    /// From now on every write waits at `gate` first, as on a disk that
    /// stalls.
    #[cfg(test)]
    pub fn hold_writes(&self, gate: Arc<crate::sync::gate::Gate>) {
        *self.write_gate.lock() = Some(gate);
    }

    /// Writes a new file beside `path` and renames it onto `path`; returns
    /// the bytes it takes on disk.
    fn write_then_rename(
        &self,
        path: &Path,
        write: impl FnOnce(&mut File) -> std::io::Result<()>,
    ) -> std::io::Result<u64> {
        #[cfg(test)]
        if let Some(gate) = self.write_gate.lock().clone() {
            gate.pass();
        }
        let temp = path.with_extension(format!(
            "{}.{}.tmp",
            std::process::id(),
            self.next_temp.fetch_add(1, Ordering::Relaxed)
        ));
        let result = create_private(&temp).and_then(|mut file| {
            write(&mut file)?;
            let bytes = disk_bytes(&file.metadata()?);
            std::fs::rename(&temp, path)?;
            Ok(bytes)
        });
        if result.is_err() {
            let _ = std::fs::remove_file(&temp);
        }
        result
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
    fn make_room(&self, name: Option<u64>, incoming: u64, still_on_disk: u64) -> bool {
        let space = free_space(&self.root);
        let (fits, evicted) = {
            let mut index = self.index.lock();
            let replaced = name.and_then(|name| index.lru.peek(&name).copied());
            if let Some(name) = name {
                index.remove(name);
            }
            match space {
                Some(space) => self.plan_eviction(
                    &mut index,
                    &space,
                    incoming,
                    still_on_disk + replaced.unwrap_or(0),
                ),
                None => (false, Vec::new()),
            }
        };
        for name in evicted {
            let _ = std::fs::remove_file(face_path(&self.root, name));
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

    /// Takes the least recently used faces out of `index` until `incoming`
    /// bytes fit; whether they do, and the faces to delete.
    fn plan_eviction(
        &self,
        index: &mut Index,
        space: &Space,
        incoming: u64,
        still_on_disk: u64,
    ) -> (bool, Vec<u64>) {
        let mut evicted = Vec::new();
        // Files take whole blocks, and a new directory may take one more.
        let incoming = incoming.div_ceil(space.block) * space.block;
        if incoming > self.max_bytes {
            return (false, evicted);
        }
        // Before the scan the total is unknown: only the floor is kept.
        while index.scanned && index.bytes + incoming > self.max_bytes {
            match index.evict_one() {
                Some((name, _)) => evicted.push(name),
                None => return (false, evicted),
            }
        }
        let needed = space.floor + incoming + space.block + still_on_disk;
        let mut free = space.free;
        while free < needed {
            match index.evict_one() {
                Some((name, bytes)) => {
                    evicted.push(name);
                    free += bytes;
                }
                None => return (false, evicted),
            }
        }
        (true, evicted)
    }
}

/// The tenant the store holds must be this one: the directory name is a
/// hash, the `tenant` file the proof. A store whose proof is missing,
/// damaged or names another tenant cannot be trusted to hold this tenant's
/// faces: it is emptied (it is a cache) and claimed, and the mount starts.
fn check_tenant(root: &Path, tenant: &str) -> Result<(), String> {
    let path = root.join("tenant");
    let why = match std::fs::read(&path) {
        Ok(found) if found == tenant.as_bytes() => return Ok(()),
        Ok(_) => "its tenant file names another tenant or is damaged",
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => "it has no tenant file",
        Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
    };
    let mut emptied = false;
    for dir in ["faces", "listings"] {
        match std::fs::remove_dir_all(root.join(dir)) {
            Ok(()) => emptied = true,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(format!("cannot empty {}: {e}", root.join(dir).display())),
        }
    }
    if emptied {
        log::warn!(
            "emptying the store in {}: {why}; its faces are downloaded again when needed",
            root.display()
        );
    }
    let temp = root.join("tenant.tmp");
    let _ = std::fs::remove_file(&temp);
    create_private(&temp)
        .and_then(|mut f| f.write_all(tenant.as_bytes()))
        .and_then(|()| std::fs::rename(&temp, &path))
        .map_err(|e| format!("cannot write {}: {e}", path.display()))
}

/// What the store's file system has free, in bytes.
struct Space {
    free: u64,
    /// What must stay free.
    floor: u64,
    block: u64,
}

fn free_space(root: &Path) -> Option<Space> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(root.as_os_str().as_bytes()).ok()?;
    // SAFETY: statvfs writes into the zeroed struct; path is NUL-terminated.
    let stats = unsafe {
        let mut stats: libc::statvfs = std::mem::zeroed();
        (libc::statvfs(path.as_ptr(), &mut stats) == 0).then_some(stats)
    }?;
    let block = stats.f_frsize.max(512);
    let total = stats.f_blocks.saturating_mul(block);
    Some(Space {
        free: stats.f_bavail.saturating_mul(block),
        floor: (total as f64 * FREE_SPACE_FLOOR) as u64,
        block,
    })
}

/// What the start-up scan found: faces as (name, bytes on disk, last use).
struct Scan {
    faces: Vec<(u64, u64, SystemTime)>,
    /// Bytes on disk of each kind's listing.
    listings: [u64; 3],
    removed: usize,
}

/// Walks the face files. Leftovers of writes that never finished (a crash)
/// and files that cannot be the store's are removed: the lock says no one
/// else writes here.
fn scan(root: &Path) -> Scan {
    let mut found = Scan {
        faces: Vec::new(),
        listings: IdKind::ALL.map(|kind| {
            std::fs::symlink_metadata(listing_path(root, kind)).map_or(0, |m| disk_bytes(&m))
        }),
        removed: 0,
    };
    let Ok(dirs) = std::fs::read_dir(root.join("faces")) else {
        return found;
    };
    // This process's own writes in flight, which the scan runs beside.
    let own_temp = format!(".{}.", std::process::id());
    for dir in dirs.flatten() {
        let prefix = dir.file_name().to_string_lossy().into_owned();
        let Ok(files) = std::fs::read_dir(dir.path()) else {
            continue;
        };
        for file in files.flatten() {
            let rest = file.file_name().to_string_lossy().into_owned();
            let name = (prefix.len() == 2 && rest.len() == 14)
                .then(|| u64::from_str_radix(&format!("{prefix}{rest}"), 16).ok())
                .flatten();
            match (name, file.metadata()) {
                (Some(name), Ok(meta)) if meta.is_file() => found.faces.push((
                    name,
                    disk_bytes(&meta),
                    meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
                )),
                _ if rest.contains(&own_temp) && rest.ends_with(".tmp") => {}
                _ => {
                    if std::fs::remove_file(file.path()).is_ok() {
                        found.removed += 1;
                    }
                }
            }
        }
    }
    found
}

#[cfg(test)]
pub mod tests;
