//! Writing faces (`--writable`): the bytes written to a file are held in
//! memory, bounded, and uploaded when the file is closed (flush, fsync) or,
//! for a temporary file (rsync's `.<name>.XXXXXX`), when it is renamed onto
//! a face's name. The service makes the crop, so only `<id>.jpg` can be
//! written. After an upload the user's faces are dropped everywhere facefs
//! and the kernel hold them, since the service may re-encode what it got.
//!
//! The inodes of files created here (a face written anew, a temporary
//! file) have numbers of their own, from [`FIRST_WRITTEN_INO`] up; an
//! existing face opened for writing keeps its inode, its bytes pending
//! beside it until the last handle closes.

mod files;

use std::ffi::OsStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

pub use self::files::MAX_PENDING_BYTES;
use self::files::{Target, Writes, WrittenFile};
use super::answer::{Answer, Fetch, Step, Stop};
use super::attr::{Attr, Ownership};
use super::cache::ExpiringSet;
use super::error::{err, FsError};
use super::face::{Face, FaceMeta};
use super::freshness::Freshness;
use super::inodes::dir_kind;
use super::layout::{self, FaceKey};
use super::metrics::FsMetrics;
use super::open_files::HandleNumbers;
use crate::api::image::ImageType;
use crate::api::{ApiError, IdKind};

/// How long after its upload a face takes `chmod`, `chown` and `utime`
/// as no-ops (rsync sets them on what it wrote).
const WRITTEN_GRACE: Duration = Duration::from_secs(600);
/// Users the API said do not exist, and faces just written, remembered at most.
const REMEMBERED: usize = 16_384;
/// Inode numbers of files created here; faces' numbers stay below.
pub const FIRST_WRITTEN_INO: u64 = 1 << 63;

/// Which attributes a `setattr` asks to change.
#[derive(Clone, Copy, Debug, Default)]
pub struct AttrChange {
    pub size: Option<u64>,
    /// Mode, owner or times: accepted as no-ops where writing is.
    pub other: bool,
}

/// How a file is opened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpenMode {
    Read,
    Write { truncate: bool },
}

/// What the rest of the core does for writing.
pub trait WriteContext {
    /// The face and version inode `ino` is.
    fn face_version(&self, ino: u64) -> Result<(FaceKey, FaceMeta), FsError>;
    /// The bytes of the version `digest` of `key` (`EIO` if it changed).
    fn version_bytes(&self, key: &FaceKey, digest: u64, fetch: Fetch) -> Step<Arc<Face>>;
    /// Uploads `bytes` as the face of `key`.
    fn put_face(&self, key: &FaceKey, bytes: &[u8], image_type: ImageType) -> Result<(), ApiError>;
    /// The digests of the user's faces as facefs knows them now.
    fn known_digests(&self, key: &FaceKey) -> Vec<u64>;
    /// The user's faces were replaced by an upload: what facefs and the
    /// kernel held of them, `old_digests` included, goes.
    fn uploaded(&self, key: &FaceKey, old_digests: &[u64]);
    /// The kernel must forget what it holds of inode `ino`.
    fn forget_inode(&self, ino: u64);
    fn dir_attr(&self, ino: u64) -> Attr;
    fn getattr(&self, ino: u64, fetch: Fetch) -> Answer<Attr>;
}

fn refuse_crop() -> FsError {
    err!(
        libc::EPERM,
        "cropped faces cannot be written: the service makes the crop from <id>.jpg (restore with rsync --exclude='*.cropped.jpg')"
    )
}

/// Files being written (`--writable`), and what writing remembers.
///
/// Locks: `writes` is a leaf: held for bookkeeping only, never across an
/// upload, a download or a call into the rest of the core.
pub struct Writing {
    writable: bool,
    owner: Ownership,
    numbers: Arc<HandleNumbers>,
    writes: Mutex<Writes>,
    /// Users the API said do not exist, by id (only a create asks).
    absent_users: ExpiringSet<(IdKind, String)>,
    /// Faces uploaded a moment ago (see [`WRITTEN_GRACE`]).
    recently_written: ExpiringSet<FaceKey>,
    freshness: Arc<Freshness>,
    metrics: Arc<FsMetrics>,
}

impl Writing {
    pub fn new(
        writable: bool,
        owner: Ownership,
        numbers: Arc<HandleNumbers>,
        freshness: Arc<Freshness>,
        metrics: Arc<FsMetrics>,
        negative_ttl: Duration,
    ) -> Writing {
        Writing {
            writable,
            owner,
            numbers,
            writes: Mutex::new(Writes::default()),
            absent_users: ExpiringSet::new(negative_ttl, REMEMBERED),
            recently_written: ExpiringSet::new(WRITTEN_GRACE, REMEMBERED),
            freshness,
            metrics,
        }
    }

    fn now(&self) -> Instant {
        self.freshness.now()
    }

    pub fn writable(&self) -> bool {
        self.writable
    }

    /// The API said the user `key` names does not exist: a create of its
    /// face is `ENOENT` (kept only where something can be created).
    pub fn user_absent(&self, key: &FaceKey) {
        if self.writable {
            self.absent_users
                .insert((key.kind, key.id.clone()), self.now());
        }
    }

    /// The user `id` changed (an event, an upload): whatever the API said
    /// of it before no longer holds.
    pub fn user_changed(&self, kind: IdKind, id: &str) {
        self.absent_users.remove(&(kind, id.to_owned()));
    }

    fn writable_or_refuse(&self, what: &str) -> Result<(), FsError> {
        if self.writable {
            return Ok(());
        }
        Err(err!(
            libc::EROFS,
            "{what}: the mount is read-only (mount with --writable to upload faces)"
        ))
    }

    fn written_attr_of(&self, ino: u64, file: &WrittenFile) -> Attr {
        self.owner.written(
            ino,
            file.bytes.len(),
            file.mtime,
            !matches!(file.target, Target::Gone),
        )
    }

    /// What `stat` shows of a file being written (or created here), if `ino` is one.
    pub fn written_attr(&self, ino: u64) -> Option<Attr> {
        // Every stat asks: a read-only mount answers without the lock.
        if !self.writable {
            return None;
        }
        let writes = self.writes.lock();
        writes
            .files
            .get(&ino)
            .map(|file| self.written_attr_of(ino, file))
    }

    /// A lookup of a name created here (a temporary file, a face being
    /// written anew): counted, as the kernel will forget it.
    pub fn written_lookup(&self, kind: IdKind, name: &OsStr) -> Option<Attr> {
        if !self.writable {
            return None;
        }
        let name = name.to_str()?;
        let mut writes = self.writes.lock();
        let ino = *writes.names.get(&(kind, name.to_owned()))?;
        let file = writes.files.get_mut(&ino)?;
        file.lookups += 1;
        Some(self.written_attr_of(ino, file))
    }

    /// The kernel forgets lookups of one of our inodes.
    pub fn forget_written(&self, ino: u64, lookups: u64) {
        self.writes.lock().forget(ino, lookups);
    }

    /// Creates `name` in an id directory and opens it for writing.
    pub fn create(&self, parent: u64, name: &OsStr) -> Result<(Attr, u64), FsError> {
        self.writable_or_refuse("create")?;
        let kind = dir_kind(parent).ok_or_else(|| {
            err!(
                libc::EPERM,
                "files can only be written in open_id, union_id and user_id"
            )
        })?;
        let text = name
            .to_str()
            .ok_or_else(|| err!(libc::EINVAL, "a file name that is not UTF-8"))?;
        let target = match layout::parse_face_name(name) {
            Some((_, true)) => return Err(refuse_crop()),
            Some((id, false)) => {
                if self.absent_users.contains(&(kind, id.clone()), self.now()) {
                    return Err(err!(
                        libc::ENOENT,
                        "no such {kind} user: the API said it does not exist"
                    ));
                }
                Target::Created(FaceKey::new(kind, id, false))
            }
            None if text.ends_with(".jpg") => {
                return Err(err!(
                    libc::EINVAL,
                    "{text:?} is not a face name this directory can hold"
                ))
            }
            None => Target::Scratch,
        };
        let now = self.now();
        let mut writes = self.writes.lock();
        if matches!(target, Target::Scratch) {
            writes.room_for_scratch(now)?;
        }
        if let Some(old) = writes.names.get(&(kind, text.to_owned())).copied() {
            // The kernel asked to create a name it did not know was there.
            writes.retire(old);
        }
        let fh = self.numbers.next();
        let file = WrittenFile::created(kind, text, target, now, self.freshness.wall());
        let ino = writes.add_created(file, fh);
        Ok((self.written_attr_of(ino, &writes.files[&ino]), fh))
    }

    /// Opens a file for writing, or a file created here for reading. The
    /// original bytes of an existing face are not needed yet (see
    /// `PendingBytes::over`).
    pub fn open_written(
        &self,
        core: &dyn WriteContext,
        ino: u64,
        mode: OpenMode,
    ) -> Option<Result<u64, FsError>> {
        let is_ours = self.writes.lock().files.contains_key(&ino);
        let truncate = matches!(mode, OpenMode::Write { truncate: true });
        if !is_ours {
            if mode == OpenMode::Read {
                return None;
            }
            return Some(self.open_face_for_write(core, ino, truncate));
        }
        if mode != OpenMode::Read {
            if let Err(e) = self.writable_or_refuse("open for writing") {
                return Some(Err(e));
            }
        }
        let fh = self.numbers.next();
        let opened = self.writes.lock().reopen(ino, fh, truncate, self.now());
        Some(opened.map(|()| fh))
    }

    fn open_face_for_write(
        &self,
        core: &dyn WriteContext,
        ino: u64,
        truncate: bool,
    ) -> Result<u64, FsError> {
        self.writable_or_refuse("open for writing")?;
        let (key, version) = core.face_version(ino)?;
        if key.cropped {
            return Err(refuse_crop());
        }
        let fh = self.numbers.next();
        let mut writes = self.writes.lock();
        if !writes.files.contains_key(&ino) {
            writes.check_room(0, version.size)?;
            let file = WrittenFile::over_face(key, version, self.now(), self.freshness.wall());
            writes.files.insert(ino, file);
        }
        writes.reopen(ino, fh, truncate, self.now())?;
        Ok(fh)
    }

    /// Whether `fh` is a handle of a written file.
    pub fn is_write_handle(&self, fh: u64) -> bool {
        self.writes.lock().handles.contains_key(&fh)
    }

    /// Fills in what was not written of an existing face from its version's
    /// bytes, when a write or read needs them.
    fn fill_from_original(&self, core: &dyn WriteContext, ino: u64, fetch: Fetch) -> Step<()> {
        let missing = self.writes.lock().missing_original(ino)?;
        let Some((key, digest)) = missing else {
            return Ok(());
        };
        let original = core.version_bytes(&key, digest, fetch)?;
        self.writes.lock().fill(ino, digest, &original.bytes);
        Ok(())
    }

    pub fn write(
        &self,
        core: &dyn WriteContext,
        fh: u64,
        offset: u64,
        data: &[u8],
        fetch: Fetch,
    ) -> Step<u32> {
        self.writable_or_refuse("write")?;
        loop {
            let now = (self.now(), self.freshness.wall());
            let written = self.writes.lock().write_at(fh, offset, data, now)?;
            match written {
                Ok(()) => return Ok(data.len() as u32),
                // Holes the original bytes fill first.
                Err(ino) => self.fill_from_original(core, ino, fetch)?,
            }
        }
    }

    /// Reads through a handle of a written file.
    pub fn read_written(
        &self,
        core: &dyn WriteContext,
        fh: u64,
        offset: u64,
        size: u32,
        fetch: Fetch,
    ) -> Step<Vec<u8>> {
        loop {
            let read = self.writes.lock().read_at(fh, offset, size)?;
            match read {
                Ok(bytes) => return Ok(bytes),
                Err(ino) => self.fill_from_original(core, ino, fetch)?,
            }
        }
    }

    /// Uploads what was written through `fh`, if anything was since the
    /// last upload: at `close()` (flush) and `fsync`, where the writer sees
    /// the outcome. Temporary files wait for their rename.
    pub fn flush(&self, core: &dyn WriteContext, fh: u64, fetch: Fetch) -> Step<()> {
        let (ino, key, changes) = {
            let writes = self.writes.lock();
            let Some((&ino, file)) = writes
                .handles
                .get(&fh)
                .and_then(|ino| Some((ino, writes.files.get(ino)?)))
            else {
                return Ok(());
            };
            let key = match &file.target {
                // Empty: not written yet. The shell's `> file` closes its
                // first descriptor before the program writes through the
                // second, and an empty file is no face to upload anyway.
                _ if file.bytes.is_empty() => return Ok(()),
                Target::Face(key) | Target::Created(key) if file.dirty() => key.clone(),
                _ => return Ok(()),
            };
            (ino, key, file.changes)
        };
        if fetch == Fetch::Never {
            return Err(Stop::WouldBlock);
        }
        self.fill_from_original(core, ino, fetch)?;
        let bytes = (self.writes.lock().files.get(&ino))
            .and_then(|file| file.bytes.whole().map(<[u8]>::to_vec))
            .ok_or_else(|| {
                err!(
                    libc::EIO,
                    "the written face is gone or misses bytes (a bug)"
                )
            })?;
        let result = self.upload(core, &key, &bytes);
        if result.is_ok() {
            if let Some(file) = self.writes.lock().files.get_mut(&ino) {
                file.uploaded = file.uploaded.max(changes);
            }
        }
        if ino < FIRST_WRITTEN_INO {
            // An existing face's inode: the kernel took its size from the
            // writes; the next reader must see what the service serves.
            // (Inodes created here are never cached: their answers have no TTL.)
            core.forget_inode(ino);
        }
        Ok(result?)
    }

    /// Closes a handle; returns whether it was one of a written file. The
    /// last handle of a face lets go of its bytes (uploaded at flush, or
    /// reported then); a temporary file stays until renamed or removed.
    pub fn release_written(&self, fh: u64) -> bool {
        self.writes.lock().release(fh)
    }

    /// Uploads `bytes` as `key`'s face and drops what facefs and the kernel
    /// held of the user. The bytes must be a whole JPEG or PNG.
    fn upload(&self, core: &dyn WriteContext, key: &FaceKey, bytes: &[u8]) -> Result<(), FsError> {
        let image_type = ImageType::of_whole(bytes).ok_or_else(|| {
            err!(
                libc::EINVAL,
                "not uploaded: the {} bytes written are not a whole JPEG or PNG image",
                bytes.len()
            )
        })?;
        let old = core.known_digests(key);
        let start = Instant::now();
        match core.put_face(key, bytes, image_type) {
            Ok(()) => {
                self.metrics.uploaded(bytes.len());
                log::info!(
                    "uploaded a face by {} ({} bytes, {}) in {:?}",
                    key.kind,
                    bytes.len(),
                    image_type.file_type(),
                    start.elapsed()
                );
                self.recently_written.insert(key.clone(), self.now());
                core.uploaded(key, &old);
                Ok(())
            }
            Err(e) => {
                if matches!(e, ApiError::UserNotFound) {
                    self.absent_users
                        .insert((key.kind, key.id.clone()), self.now());
                }
                // A refused upload is news to the admin whatever its errno.
                Err(
                    FsError::from_api(e, key.kind, &format!("uploading a {} face", key.kind))
                        .at_level(log::Level::Warn),
                )
            }
        }
    }

    pub fn setattr(
        &self,
        core: &dyn WriteContext,
        ino: u64,
        change: AttrChange,
        fetch: Fetch,
    ) -> Step<Attr> {
        self.writable_or_refuse("setattr")?;
        if ino == super::inodes::ROOT_INO || dir_kind(ino).is_some() {
            if change.size.is_some() {
                return Err(err!(libc::EISDIR, "a directory has no size to set").into());
            }
            // rsync -a sets the times of the directory it copied into.
            return Ok(core.dir_attr(ino));
        }
        {
            let mut writes = self.writes.lock();
            if writes.files.contains_key(&ino) {
                if let Some(size) = change.size {
                    writes.set_size(ino, size, self.freshness.wall())?;
                }
                return Ok(self.written_attr_of(ino, &writes.files[&ino]));
            }
        }
        let (key, _) = core.face_version(ino)?;
        if change.size.is_some() {
            return Err(err!(
                libc::EPERM,
                "a face's size cannot be set; write the whole face (open it with O_TRUNC)"
            )
            .into());
        }
        if !self.recently_written.contains(&key, self.now()) {
            return Err(err!(
                libc::EPERM,
                "facefs sets its faces' modes, owners and times itself; only a face just written here takes them (as a no-op)"
            )
            .into());
        }
        core.getattr(ino, fetch).into()
    }

    /// Renames a temporary file onto a face's name, which uploads it, or
    /// onto another temporary name. Faces themselves cannot be renamed.
    pub fn rename(
        &self,
        core: &dyn WriteContext,
        parent: u64,
        name: &OsStr,
        new_parent: u64,
        new_name: &OsStr,
        fetch: Fetch,
    ) -> Step<()> {
        self.writable_or_refuse("rename")?;
        let (Some(kind), Some(new_kind)) = (dir_kind(parent), dir_kind(new_parent)) else {
            return Err(err!(
                libc::EPERM,
                "only files in the id directories can be renamed"
            )
            .into());
        };
        let (Some(from), Some(to)) = (name.to_str(), new_name.to_str()) else {
            return Err(err!(libc::EINVAL, "a file name that is not UTF-8").into());
        };
        let source = self.writes.lock().scratch_named(kind, from);
        let Some(ino) = source else {
            return Err(err!(
                libc::EPERM,
                "only a temporary file written here can be renamed, not a face"
            )
            .into());
        };
        let target = match layout::parse_face_name(new_name) {
            Some((_, true)) => return Err(refuse_crop().into()),
            Some((id, false)) => FaceKey::new(new_kind, id, false),
            None if to.ends_with(".jpg") => {
                return Err(err!(
                    libc::EINVAL,
                    "{to:?} is not a face name this directory can hold"
                )
                .into())
            }
            None => {
                // One temporary name to another.
                self.writes
                    .lock()
                    .rename_scratch(ino, (kind, from), (new_kind, to));
                return Ok(());
            }
        };
        if fetch == Fetch::Never {
            return Err(Stop::WouldBlock);
        }
        let bytes = (self.writes.lock().files.get(&ino))
            .and_then(|file| file.bytes.whole().map(<[u8]>::to_vec))
            .ok_or_else(|| err!(libc::EIO, "the temporary file is gone or misses bytes"))?;
        self.upload(core, &target, &bytes)?;
        // The kernel moves the name onto this inode, whose answers have no
        // TTL: the next lookup of the face's name comes here again.
        self.writes.lock().retire(ino);
        Ok(())
    }

    /// Removes a temporary file (rsync removes its own after a failure);
    /// faces cannot be deleted through facefs.
    pub fn unlink(&self, parent: u64, name: &OsStr) -> Result<(), FsError> {
        self.writable_or_refuse("unlink")?;
        let kind =
            dir_kind(parent).ok_or_else(|| err!(libc::EPERM, "nothing here can be removed"))?;
        let mut writes = self.writes.lock();
        let scratch = name.to_str().and_then(|n| writes.scratch_named(kind, n));
        match scratch {
            Some(ino) => {
                writes.retire(ino);
                Ok(())
            }
            None => Err(err!(
                libc::EPERM,
                "faces cannot be deleted through facefs (remove them in the Feishu admin console)"
            )),
        }
    }

    /// The answer to every other change (mkdir, rmdir, symlink, link, mknod).
    pub fn refuse_change(&self, what: &str) -> FsError {
        match self.writable_or_refuse(what) {
            Err(e) => e,
            Ok(()) => err!(libc::EPERM, "{what}: facefs holds only faces"),
        }
    }

    /// Room left for written bytes, for `statfs`.
    pub fn pending_room(&self) -> u64 {
        if !self.writable {
            return 0;
        }
        MAX_PENDING_BYTES.saturating_sub(self.writes.lock().held())
    }
}

#[cfg(test)]
mod tests;
