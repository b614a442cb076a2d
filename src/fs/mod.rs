//! The filesystem core: lookups, attributes, listings, open files, reads
//! and writes, in terms of the API client and the caches. It knows nothing
//! of FUSE; every failure is an [`FsError`] that carries its errno, and
//! every operation that may wait follows the [`Fetch`]/[`Answer`] contract
//! (see `answer.rs`).
//!
//! [`FaceFs`] is a composition of parts, each owning its state:
//! [`Freshness`](freshness::Freshness) (what is trusted how long),
//! [`Faces`](faces::Faces) (memory, store and API tiers),
//! [`Listings`](listings::Listings), [`ReadAheads`](readahead::ReadAheads),
//! [`Nodes`](nodes::Nodes) (the inodes the kernel holds), [`OpenFiles`](open_files::OpenFiles),
//! [`Writing`](writing::Writing) and [`KernelNotices`](kernel::KernelNotices).
//! `FaceFs` routes each operation through them; the parts meet only here.

pub mod answer;
pub mod attr;
pub mod cache;
pub mod clock;
pub mod config;
mod contexts;
pub mod error;
pub mod face;
pub mod faces;
pub mod freshness;
pub mod id_set;
pub mod inodes;
pub mod kernel;
pub mod layout;
pub mod listing;
pub mod listings;
pub mod metrics;
pub mod nodes;
pub mod open_files;
pub mod pending;
pub mod readahead;
pub mod readdirplus;
pub mod store;
mod user_changes;
pub mod writing;

use std::ffi::OsStr;
use std::sync::{Arc, Weak};
use std::time::SystemTime;

pub use self::answer::{Answer, Fetch};
use self::answer::{Step, Stop};
pub use self::attr::{Attr, DirEntry, NodeKind};
use self::cache::{CacheUsage, ExpiringSet};
use self::clock::{Clock, SystemClock};
pub use self::config::FsConfig;
use self::error::err;
pub use self::error::FsError;
use self::face::{Face, FaceMeta};
use self::faces::{Faces, LoadContext};
use self::freshness::Freshness;
pub use self::inodes::ROOT_INO;
use self::inodes::{dir_ino, dir_kind};
pub use self::kernel::Invalidation;
use self::kernel::KernelNotices;
use self::layout::FaceKey;
use self::listings::Listings;
use self::metrics::FsMetrics;
use self::nodes::Nodes;
pub use self::open_files::{DirPage, ReadSlice};
use self::open_files::{DirSnapshot, HandleNumbers, OpenFiles};
use self::readahead::ReadAheads;
use self::store::bounded::BoundedStore;
use self::store::FaceStore;
use self::writing::{AttrChange, OpenMode, Writing, FIRST_WRITTEN_INO};
use crate::api::{IdKind, Priority};

/// Absent names and replaced digests remembered at most; beyond it the
/// oldest are forgotten.
const REMEMBERED: usize = 16_384;

/// The core. Lock order: the inode table (in `nodes`) may be held while
/// asking `freshness` (whose locks are leaves); every other lock of the
/// parts is a leaf, taken alone. No lock is held across disk or network
/// I/O: downloads and listings wait in single-flights, not on mutexes.
pub struct FaceFs {
    me: Weak<FaceFs>,
    freshness: Arc<Freshness>,
    nodes: Nodes,
    faces: Faces,
    listings: Listings,
    readahead: ReadAheads,
    open: OpenFiles,
    writing: Writing,
    kernel: KernelNotices,
}

impl FaceFs {
    pub fn new(
        api: Arc<dyn crate::api::FaceApi>,
        config: FsConfig,
        store: Option<Arc<FaceStore>>,
    ) -> Arc<FaceFs> {
        FaceFs::with_clock(api, config, store, Arc::new(SystemClock))
    }

    pub fn with_clock(
        api: Arc<dyn crate::api::FaceApi>,
        config: FsConfig,
        store: Option<Arc<FaceStore>>,
        clock: Arc<dyn Clock>,
    ) -> Arc<FaceFs> {
        let metrics = Arc::new(FsMetrics::default());
        let freshness = Arc::new(Freshness::new(clock, config.trust_policy(), REMEMBERED));
        let owner = config.ownership(SystemTime::now());
        let numbers = Arc::new(HandleNumbers::default());
        let store = store.and_then(|store| match BoundedStore::new(store) {
            Ok(bounded) => Some(Arc::new(bounded)),
            Err(e) => {
                log::error!("cannot start the store's threads ({e}): going on without --cache-dir");
                None
            }
        });
        Arc::new_cyclic(|me| FaceFs {
            me: me.clone(),
            nodes: Nodes::new(owner, freshness.clone()),
            faces: Faces::new(
                api.clone(),
                config.cache_bytes,
                store.clone(),
                ExpiringSet::new(config.negative_ttl, REMEMBERED),
                freshness.clone(),
                metrics.clone(),
            ),
            listings: Listings::new(api, store, freshness.clone()),
            readahead: ReadAheads::new(
                config.readahead,
                config.prefetch_threads,
                config.cache_bytes,
            ),
            open: OpenFiles::new(numbers.clone(), config.prefetch_threads.max(8) * 2),
            writing: Writing::new(
                config.writable,
                owner,
                numbers,
                freshness.clone(),
                metrics.clone(),
                config.negative_ttl,
            ),
            kernel: KernelNotices::new(metrics),
            freshness,
        })
    }

    /// Where invalidations go once the kernel is there to hear them.
    pub fn set_kernel(&self, tell: Box<dyn Fn(Vec<Invalidation>) + Send + Sync>) {
        self.kernel.set(tell);
    }

    /// The mount is going away: listings under way end with `EIO` before
    /// their next page instead of running on.
    pub fn stop(&self) {
        self.listings.stop();
    }

    pub fn cache_usage(&self) -> CacheUsage {
        self.faces.memory_usage()
    }

    /// Face inodes the kernel holds (looked up or listed, not forgotten).
    pub fn kernel_faces(&self) -> usize {
        self.nodes.len()
    }

    pub fn metrics(&self) -> &FsMetrics {
        self.faces.metrics()
    }

    /// Waits for the store's queued writes, at most `limit`; whether all were done.
    pub fn flush_store(&self, limit: std::time::Duration) -> bool {
        self.faces.flush_store(limit)
    }

    /// The on-disk store, if there is one.
    pub fn store(&self) -> Option<&Arc<FaceStore>> {
        self.faces.store()
    }

    /// Changes may have been missed (the fleet's event stream lost some):
    /// nothing fetched before `at` is trusted as fresh any more; each face
    /// and listing is fetched again when next needed (outages may still
    /// serve it stale, within `--max-stale`).
    pub fn distrust_before(&self, at: SystemTime) {
        self.freshness.distrust_before(at);
    }

    /// The event connection went up or down (see [`Freshness::events_connected`]).
    pub fn events_connected(&self, up: bool) {
        self.freshness.events_connected(up);
    }

    pub fn lookup(&self, parent: u64, name: &OsStr, fetch: Fetch) -> Answer<Attr> {
        self.lookup_step(parent, name, fetch).into()
    }

    fn lookup_step(&self, parent: u64, name: &OsStr, fetch: Fetch) -> Step<Attr> {
        if parent == ROOT_INO {
            let kind = layout::dir_kind(name)
                .ok_or_else(|| err!(libc::ENOENT, "no such directory in the root"))?;
            return Ok(self.nodes.dir_attr(dir_ino(kind)));
        }
        let Some(kind) = dir_kind(parent) else {
            return Err(self.nodes.not_a_directory(parent).into());
        };
        if let Some(attr) = self.writing.written_lookup(kind, name) {
            return Ok(attr);
        }
        let (id, cropped) = layout::parse_face_name(name)
            .ok_or_else(|| err!(libc::ENOENT, "a name outside the layout"))?;
        let key = FaceKey::new(kind, id, cropped);
        // The API's own listing says this user has no face: as trusted as
        // the names it shows, and the kernel may keep the absence as long.
        if let Some(remaining) = self.listings.absence(&key) {
            let ttl = remaining.min(self.faces.negative_ttl());
            let why = err!(
                libc::ENOENT,
                "the {kind} listing shows this user without a face"
            );
            return Err(why.cached_for(ttl).into());
        }
        if fetch == Fetch::Allowed {
            // Before the download, so the next faces come in parallel with it.
            self.read_ahead_after(&key);
            let answer = self.stat_face(&key, fetch);
            let not_found = matches!(&answer, Err(Stop::Failed(e)) if e.errno() == libc::ENOENT);
            if not_found && self.listings.missed(kind) {
                self.list_in_background(kind);
            }
            return answer;
        }
        let answer = self.stat_face(&key, fetch);
        if !matches!(answer, Err(Stop::WouldBlock)) {
            self.read_ahead_after(&key);
        }
        answer
    }

    /// How a lookup of `name` ranks: probes of names no listing shows
    /// wait behind everything else (at the rate limit and in the adapter's
    /// queue). Names outside the layout are answered without waiting.
    pub fn lookup_priority(&self, parent: u64, name: &OsStr) -> Priority {
        let key = dir_kind(parent).and_then(|kind| {
            let (id, cropped) = layout::parse_face_name(name)?;
            Some(FaceKey::new(kind, id, cropped))
        });
        key.map_or(Priority::Listed, |key| self.priority(&key))
    }

    /// Fetches the listing of `kind` on a thread of its own (lookups go on
    /// meanwhile, asking the API as before, until it is in).
    fn list_in_background(&self, kind: IdKind) {
        let me = self.me.clone();
        let spawned = std::thread::Builder::new()
            .name("facefs-list".into())
            .spawn(move || {
                if let Some(fs) = me.upgrade() {
                    if let Err(Stop::Failed(e)) = fs.listings.get(kind, Fetch::Allowed) {
                        log::debug!("listing {kind} for its lookups: {e}");
                    }
                }
            });
        if let Err(e) = spawned {
            log::debug!("cannot start a listing thread: {e}");
        }
    }

    /// Notes a lookup of `key`; if the lookups are walking the listing in
    /// order, starts downloading the faces that come next.
    fn read_ahead_after(&self, key: &FaceKey) {
        if !self.readahead.enabled() {
            return;
        }
        let Some(listing) = self.listings.held(key.kind) else {
            return;
        };
        for next in self.readahead.after_lookup(
            key,
            &listing,
            self.readahead.window(self.faces.memory_usage()),
        ) {
            if self.faces.is_absent(&next) || self.faces.fresh_in_memory(&next).is_some() {
                continue;
            }
            let me = self.me.clone();
            self.readahead.spawn(move || {
                if let Some(fs) = me.upgrade() {
                    // A fresh stored face costs the walk a header read, not
                    // a download: only the disk is asked to read it ahead.
                    if fs.faces.stored_fresh(&next) {
                        return;
                    }
                    // Failures are the reader's to see (and log) when it gets there.
                    if let Err(Stop::Failed(e)) = fs.faces.load_ahead(&next, &*fs) {
                        log::debug!("read-ahead: {e}");
                    }
                }
            });
        }
    }

    pub fn getattr(&self, ino: u64, fetch: Fetch) -> Answer<Attr> {
        if ino == ROOT_INO || dir_kind(ino).is_some() {
            return Answer::Done(Ok(self.nodes.dir_attr(ino)));
        }
        if let Some(attr) = self.writing.written_attr(ino) {
            return Answer::Done(Ok(attr));
        }
        let step = self
            .nodes
            .face_version(ino)
            .map_err(Stop::from)
            .and_then(|(key, version)| {
                let current = match self.nodes.is_current(ino) {
                    true => Some(self.face_meta(&key, fetch)?),
                    false => None,
                };
                // An inode listed without a version is the current one,
                // and becomes the version found now.
                let version = version.or(current).ok_or_else(|| unversioned(&key))?;
                Ok(self.nodes.version_attr(ino, &key, version, current))
            });
        step.into()
    }

    /// The face and version inode `ino` is; one a listing handed the
    /// kernel before facefs knew its bytes becomes the version found now.
    fn face_version(&self, ino: u64, fetch: Fetch) -> Step<(FaceKey, FaceMeta)> {
        let (key, version) = self.nodes.face_version(ino)?;
        if let Some(meta) = version {
            return Ok((key, meta));
        }
        let meta = self.face_meta(&key, fetch)?;
        self.nodes.confirm(&key, meta);
        // A lookup meanwhile may have made it a version first: that one stands.
        let (key, version) = self.nodes.face_version(ino)?;
        Ok((key, version.unwrap_or(meta)))
    }

    /// The kernel forgets `lookups` lookups of `ino`.
    pub fn forget(&self, ino: u64, lookups: u64) {
        if ino >= FIRST_WRITTEN_INO {
            self.writing.forget_written(ino, lookups);
            return;
        }
        if self.nodes.forget(ino, lookups) {
            self.open.unpin(ino);
        }
    }

    /// What `stat` shows of a face: from what is known while it is fresh,
    /// else by downloading it, since only the bytes tell the exact size.
    fn face_meta(&self, key: &FaceKey, fetch: Fetch) -> Step<FaceMeta> {
        self.faces.known_absent(key)?;
        if let Some(meta) = self.nodes.fresh_meta(key) {
            return Ok(meta);
        }
        // A fresh stored face answers `stat` from its header alone (memory,
        // where it holds the face, is newer).
        if self.faces.in_memory(key).is_none() {
            if let Some(meta) = self.faces.stored_meta(key, fetch)? {
                return Ok(meta);
            }
        }
        Ok(self.faces.load(key, fetch, self)?.meta())
    }

    /// The attributes of a face, numbering its inode for the kernel; those
    /// of what is being written to it while it is.
    fn stat_face(&self, key: &FaceKey, fetch: Fetch) -> Step<Attr> {
        let meta = self.face_meta(key, fetch)?;
        let ino = self.nodes.looked_up(key, meta);
        Ok(self
            .writing
            .written_attr(ino)
            .unwrap_or_else(|| self.nodes.face_attr(ino, meta)))
    }

    /// Opens a face for reading and returns the handle, which holds the bytes
    /// of the inode's version for every read of this open file.
    pub fn open(&self, ino: u64, mode: OpenMode, fetch: Fetch) -> Answer<u64> {
        self.open_step(ino, mode, fetch).into()
    }

    fn open_step(&self, ino: u64, mode: OpenMode, fetch: Fetch) -> Step<u64> {
        if let Some(opened) = self.writing.open_written(self, ino, mode) {
            return Ok(opened?);
        }
        let (key, version) = self.face_version(ino, fetch)?;
        // A new open reached a version the service no longer serves through
        // a name whose notice (an event, an upload of ours) is still on its
        // way to the kernel: ESTALE makes the kernel look the name up again
        // and open the current version (the VFS retries an open once with
        // LOOKUP_REVAL), where EIO would fail `cp new MNT/x && cat MNT/x`.
        let face = self
            .bytes_of_version(&key, version.digest, fetch)?
            .ok_or_else(|| {
                err!(
                    libc::ESTALE,
                    "this {} face changed since the kernel looked it up; it looks it up again",
                    key.kind
                )
                .at_level(log::Level::Debug)
            })?;
        Ok(self.open.open(face))
    }

    /// The bytes of the version `digest` of `key`: see
    /// [`Self::bytes_of_version`]; a face changed since is `EIO`, never
    /// other bytes under the old inode.
    fn version_bytes(&self, key: &FaceKey, digest: u64, fetch: Fetch) -> Step<Arc<Face>> {
        Ok(self.bytes_of_version(key, digest, fetch)?.ok_or_else(|| {
            err!(
                libc::EIO,
                "this {} face changed while the file was open; open it again for the new one",
                key.kind
            )
        })?)
    }

    /// The bytes of the version `digest` of `key`: from the cache whatever its
    /// age (a version's bytes never change), else downloaded if the API
    /// still serves that version; `None` if it serves another.
    fn bytes_of_version(
        &self,
        key: &FaceKey,
        digest: u64,
        fetch: Fetch,
    ) -> Step<Option<Arc<Face>>> {
        if let Some(face) = self.faces.in_memory(key).filter(|f| f.digest == digest) {
            self.metrics().cache(true);
            return Ok(Some(face));
        }
        let face = self.faces.load(key, fetch, self)?;
        Ok((face.digest == digest).then_some(face))
    }

    /// Reads inode `ino` without an open handle (the kernel opens files
    /// itself once facefs answers `open` with ENOSYS): see [`Self::version_bytes`].
    pub fn read_inode(&self, ino: u64, offset: u64, size: u32, fetch: Fetch) -> Answer<ReadSlice> {
        let step = self.face_version(ino, fetch).and_then(|(key, version)| {
            // The end of the file needs no bytes (and must not wait for a
            // download: the reader may hold memory others wait for).
            if offset >= version.size {
                return Ok(ReadSlice::EMPTY);
            }
            let face = match self.open.pinned(ino) {
                Some(face) => face,
                None => {
                    // Abandoned reads give their memory back before this
                    // one may wait for memory.
                    self.open.sweep_pins(self.freshness.now());
                    let face = self.version_bytes(&key, version.digest, fetch)?;
                    self.open.pin(ino, face.clone(), self.freshness.now());
                    face
                }
            };
            let slice = ReadSlice::of(face, offset, size);
            self.open
                .served(ino, slice.bytes().len().max(1), self.freshness.now());
            Ok(slice)
        });
        step.into()
    }

    pub fn read(&self, fh: u64, offset: u64, size: u32, fetch: Fetch) -> Answer<ReadSlice> {
        match self.open.read(fh, offset, size) {
            Some(slice) => Answer::Done(Ok(slice)),
            None => self
                .writing
                .read_written(self, fh, offset, size, fetch)
                .map(ReadSlice::copied)
                .into(),
        }
    }

    pub fn release(&self, fh: u64) {
        if !self.open.release(fh) {
            self.writing.release_written(fh);
        }
    }

    pub fn opendir(&self, ino: u64) -> Result<u64, FsError> {
        if ino != ROOT_INO && dir_kind(ino).is_none() {
            return Err(self.nodes.not_a_directory(ino));
        }
        Ok(self.open.open_dir())
    }

    /// Directory entries from `offset` on, made as the caller takes them.
    /// The first call of a handle takes a snapshot of the listing that later
    /// calls page through, so one `ls` sees one consistent listing; a
    /// listing that cannot be had whole fails instead of showing part.
    pub fn readdir(&self, ino: u64, fh: u64, offset: u64, fetch: Fetch) -> Answer<DirPage> {
        self.readdir_step(ino, fh, offset, fetch).into()
    }

    fn readdir_step(&self, ino: u64, fh: u64, offset: u64, fetch: Fetch) -> Step<DirPage> {
        self.open
            .dir_page(fh, ino, offset, || self.dir_snapshot(ino, fetch))
    }

    pub fn releasedir(&self, fh: u64) {
        self.open.release_dir(fh);
    }

    fn dir_snapshot(&self, ino: u64, fetch: Fetch) -> Step<DirSnapshot> {
        if ino == ROOT_INO {
            return Ok(DirSnapshot::Root);
        }
        let kind =
            dir_kind(ino).ok_or_else(|| err!(libc::ENOTDIR, "inode {ino} is not a directory"))?;
        Ok(DirSnapshot::Faces(kind, self.listings.get(kind, fetch)?))
    }

    // Writing (`--writable`): see `writing`.

    pub fn writable(&self) -> bool {
        self.writing.writable()
    }

    /// Creates `name` in an id directory and opens it for writing.
    pub fn create(&self, parent: u64, name: &OsStr) -> Result<(Attr, u64), FsError> {
        self.writing.create(parent, name)
    }

    /// Whether `fh` is a handle of a written file.
    pub fn is_write_handle(&self, fh: u64) -> bool {
        self.writing.is_write_handle(fh)
    }

    pub fn write(&self, fh: u64, offset: u64, data: &[u8], fetch: Fetch) -> Answer<u32> {
        self.writing.write(self, fh, offset, data, fetch).into()
    }

    /// Uploads what was written through `fh` (at close and fsync).
    pub fn flush(&self, fh: u64, fetch: Fetch) -> Answer<()> {
        self.writing.flush(self, fh, fetch).into()
    }

    pub fn setattr(&self, ino: u64, change: AttrChange, fetch: Fetch) -> Answer<Attr> {
        self.writing.setattr(self, ino, change, fetch).into()
    }

    /// Renames a temporary file onto a face's name (which uploads it).
    pub fn rename(
        &self,
        parent: u64,
        name: &OsStr,
        new_parent: u64,
        new_name: &OsStr,
        fetch: Fetch,
    ) -> Answer<()> {
        self.writing
            .rename(self, parent, name, new_parent, new_name, fetch)
            .into()
    }

    /// Removes a temporary file; faces cannot be deleted through facefs.
    pub fn unlink(&self, parent: u64, name: &OsStr) -> Result<(), FsError> {
        self.writing.unlink(parent, name)
    }

    /// The answer to every other change (mkdir, rmdir, symlink, link, mknod).
    pub fn refuse_change(&self, what: &str) -> FsError {
        self.writing.refuse_change(what)
    }

    /// Room left for written bytes, for `statfs`.
    pub fn pending_room(&self) -> u64 {
        self.writing.pending_room()
    }
}

/// An inode a listing handed the kernel without a version, reached where
/// facefs cannot learn one: ESTALE makes the kernel look its name up.
fn unversioned(key: &FaceKey) -> FsError {
    err!(
        libc::ESTALE,
        "this {} face was listed but not looked up yet; the kernel looks it up",
        key.kind
    )
    .at_level(log::Level::Debug)
}

#[cfg(test)]
mod tests;
