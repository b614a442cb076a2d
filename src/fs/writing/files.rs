//! The table of files being written: their bytes, names, handles and
//! inode numbers, and the bounds on what they may hold. Bookkeeping only:
//! [`super::Writing`] holds it under its lock and does the uploads.

use std::collections::HashMap;
use std::time::{Duration, Instant, SystemTime};

use super::FIRST_WRITTEN_INO;
use crate::api::image::MAX_UPLOAD_BYTES;
use crate::api::IdKind;
use crate::fs::error::{err, FsError};
use crate::fs::face::FaceMeta;
use crate::fs::layout::FaceKey;
use crate::fs::pending::PendingBytes;

/// Bytes written and not yet uploaded or discarded, over all files: a
/// write past it is refused with ENOSPC (enough for six faces of the
/// largest size at once, or a thousand of the usual).
pub const MAX_PENDING_BYTES: u64 = 64 << 20;
/// Temporary files held at most.
pub(super) const MAX_SCRATCH_FILES: usize = 1024;
/// A temporary file neither open nor touched for this long is dropped
/// when the next one is created (a writer that died before its rename).
pub(super) const SCRATCH_IDLE: Duration = Duration::from_secs(3600);

#[derive(Debug)]
pub(super) enum Target {
    /// An existing face (its own inode, in the inode table), opened for writing.
    Face(FaceKey),
    /// A face written anew: uploaded when closed.
    Created(FaceKey),
    /// Any other name: held until renamed onto a face's name.
    Scratch,
    /// Uploaded, renamed or unlinked; the kernel may still hold the inode.
    Gone,
}

pub(super) struct WrittenFile {
    pub(super) dir: IdKind,
    pub(super) name: String,
    pub(super) target: Target,
    pub(super) bytes: PendingBytes,
    pub(super) handles: usize,
    /// The kernel's lookups of our own inodes (not of `Target::Face`).
    pub(super) lookups: u64,
    /// Writes so far, and how many of them the last upload carried.
    pub(super) changes: u64,
    pub(super) uploaded: u64,
    pub(super) mtime: SystemTime,
    pub(super) touched: Instant,
}

impl WrittenFile {
    /// A file created here, open once and looked up once.
    pub(super) fn created(
        dir: IdKind,
        name: &str,
        target: Target,
        now: Instant,
        wall: SystemTime,
    ) -> WrittenFile {
        WrittenFile {
            dir,
            name: name.to_owned(),
            target,
            bytes: PendingBytes::empty(),
            handles: 0,
            lookups: 1,
            // A new face is a change even if nothing is written: closing
            // it empty is reported (EINVAL), not silently ignored.
            changes: 1,
            uploaded: 0,
            mtime: wall,
            touched: now,
        }
    }

    /// An existing face opened for writing: its original bytes are not
    /// needed until a write leaves holes (see [`PendingBytes::over`]).
    pub(super) fn over_face(
        key: FaceKey,
        version: FaceMeta,
        now: Instant,
        wall: SystemTime,
    ) -> WrittenFile {
        WrittenFile {
            dir: key.kind,
            name: key.file_name(),
            bytes: PendingBytes::over(version.size, version.digest),
            target: Target::Face(key),
            handles: 0,
            lookups: 0,
            changes: 0,
            uploaded: 0,
            mtime: wall,
            touched: now,
        }
    }

    pub(super) fn dirty(&self) -> bool {
        self.changes != self.uploaded
    }
}

#[derive(Default)]
pub(super) struct Writes {
    pub(super) files: HashMap<u64, WrittenFile>,
    /// Names of files created here that are not gone, by directory.
    pub(super) names: HashMap<(IdKind, String), u64>,
    /// Open handles of written files.
    pub(super) handles: HashMap<u64, u64>,
    pub(super) next_ino: u64,
}

impl Writes {
    pub(super) fn new_ino(&mut self) -> u64 {
        self.next_ino += 1;
        FIRST_WRITTEN_INO + self.next_ino
    }

    /// Bytes held by every file being written.
    pub(super) fn held(&self) -> u64 {
        self.files.values().map(|f| f.bytes.len()).sum()
    }

    /// Whether a file may grow from `old` to `new` bytes: not past
    /// [`MAX_UPLOAD_BYTES`], nor all files together past [`MAX_PENDING_BYTES`].
    pub(super) fn check_room(&self, old: u64, new: u64) -> Result<(), FsError> {
        if new > MAX_UPLOAD_BYTES {
            return Err(err!(
                libc::EFBIG,
                "a face may have at most {} MiB (the service's image uploads take 10 MB)",
                MAX_UPLOAD_BYTES >> 20
            ));
        }
        if new > old && self.held() - old + new > MAX_PENDING_BYTES {
            return Err(err!(
                libc::ENOSPC,
                "{} MiB of written faces are waiting to be uploaded; close (or finish renaming) some files first",
                MAX_PENDING_BYTES >> 20
            ));
        }
        Ok(())
    }

    /// The temporary file called `name` in the `kind` directory.
    pub(super) fn scratch_named(&self, kind: IdKind, name: &str) -> Option<u64> {
        let ino = *self.names.get(&(kind, name.to_owned()))?;
        let file = self.files.get(&ino)?;
        matches!(file.target, Target::Scratch).then_some(ino)
    }

    /// Lets go of a file's bytes: it is gone, only its inode stays while
    /// the kernel holds it.
    pub(super) fn retire(&mut self, ino: u64) {
        let Some(file) = self.files.get_mut(&ino) else {
            return;
        };
        file.bytes = PendingBytes::empty();
        if self.names.get(&(file.dir, file.name.clone())) == Some(&ino) {
            self.names.remove(&(file.dir, file.name.clone()));
        }
        match file.target {
            Target::Face(_) => {
                self.files.remove(&ino);
            }
            _ if file.lookups == 0 && file.handles == 0 => {
                self.files.remove(&ino);
            }
            _ => file.target = Target::Gone,
        }
    }

    /// The kernel forgets lookups of one of our inodes.
    pub(super) fn forget(&mut self, ino: u64, lookups: u64) {
        let Some(file) = self.files.get_mut(&ino) else {
            return;
        };
        file.lookups = file.lookups.saturating_sub(lookups);
        if file.lookups == 0 && file.handles == 0 && matches!(file.target, Target::Gone) {
            self.files.remove(&ino);
        }
    }

    /// Makes room for one more temporary file: drops those unused for
    /// [`SCRATCH_IDLE`]; `ENOSPC` if [`MAX_SCRATCH_FILES`] are held still.
    pub(super) fn room_for_scratch(&mut self, now: Instant) -> Result<(), FsError> {
        let idle: Vec<u64> = self
            .files
            .iter()
            .filter(|(_, f)| {
                matches!(f.target, Target::Scratch)
                    && f.handles == 0
                    && now.saturating_duration_since(f.touched) > SCRATCH_IDLE
            })
            .map(|(ino, _)| *ino)
            .collect();
        for ino in idle {
            log::info!("dropping a temporary file unused for an hour (never renamed onto a face)");
            self.retire(ino);
        }
        let scratch = self
            .files
            .values()
            .filter(|f| matches!(f.target, Target::Scratch))
            .count();
        if scratch >= MAX_SCRATCH_FILES {
            return Err(err!(
                libc::ENOSPC,
                "{MAX_SCRATCH_FILES} temporary files are held already; rename or remove some"
            ));
        }
        Ok(())
    }

    /// Closes a handle; whether it was one of a written file. The last
    /// handle of a face lets go of its bytes (uploaded at flush, or
    /// reported then); a temporary file stays until renamed or removed.
    pub(super) fn release(&mut self, fh: u64) -> bool {
        let Some(ino) = self.handles.remove(&fh) else {
            return false;
        };
        let Some(file) = self.files.get_mut(&ino) else {
            return true;
        };
        file.handles -= 1;
        if file.handles > 0 {
            return true;
        }
        match &file.target {
            Target::Face(_) | Target::Created(_) => {
                if file.dirty() && file.bytes.is_empty() {
                    log::info!("a {} face was closed empty: nothing uploaded", file.dir);
                } else if file.dirty() {
                    log::warn!(
                        "a written {} face was closed without a successful upload; its bytes are dropped",
                        file.dir
                    );
                }
                self.retire(ino);
            }
            Target::Scratch | Target::Gone => {}
        }
        true
    }

    /// Renames the temporary file `ino` from one name to another, which
    /// replaces a temporary file of that name.
    pub(super) fn rename_scratch(&mut self, ino: u64, from: (IdKind, &str), to: (IdKind, &str)) {
        if let Some(old) = self.names.remove(&(to.0, to.1.to_owned())) {
            self.retire(old);
        }
        self.names.remove(&(from.0, from.1.to_owned()));
        if let Some(file) = self.files.get_mut(&ino) {
            (file.dir, file.name) = (to.0, to.1.to_owned());
            self.names.insert((to.0, to.1.to_owned()), ino);
        }
    }

    /// Adds a file created here, open as `fh`; its inode.
    pub(super) fn add_created(&mut self, mut file: WrittenFile, fh: u64) -> u64 {
        let ino = self.new_ino();
        file.handles = 1;
        self.names.insert((file.dir, file.name.clone()), ino);
        self.files.insert(ino, file);
        self.handles.insert(fh, ino);
        ino
    }

    /// Opens `ino`, held here, once more as `fh`; `truncate` empties it.
    pub(super) fn reopen(
        &mut self,
        ino: u64,
        fh: u64,
        truncate: bool,
        now: Instant,
    ) -> Result<(), FsError> {
        let file = self
            .files
            .get_mut(&ino)
            .ok_or_else(|| err!(libc::ESTALE, "the file is gone"))?;
        if matches!(file.target, Target::Gone) {
            return Err(err!(
                libc::ESTALE,
                "this file was uploaded or removed; open its name again"
            ));
        }
        file.handles += 1;
        file.touched = now;
        if truncate && !file.bytes.is_empty() {
            file.bytes.truncate(0);
            file.changes += 1;
        }
        self.handles.insert(fh, ino);
        Ok(())
    }

    /// The face and version whose bytes `ino` still needs, if any.
    pub(super) fn missing_original(&self, ino: u64) -> Result<Option<(FaceKey, u64)>, FsError> {
        let file = self
            .files
            .get(&ino)
            .ok_or_else(|| err!(libc::EBADF, "no written file {ino}"))?;
        Ok(match (&file.target, file.bytes.missing_base()) {
            (Target::Face(key), Some(digest)) => Some((key.clone(), digest)),
            _ => None,
        })
    }

    /// Fills in what was not written of `ino` from the original bytes of
    /// version `digest` (unless they came meanwhile).
    pub(super) fn fill(&mut self, ino: u64, digest: u64, original: &[u8]) {
        if let Some(file) = self.files.get_mut(&ino) {
            if file.bytes.missing_base() == Some(digest) {
                file.bytes.fill(original);
            }
        }
    }

    /// Writes `data` at `offset` through `fh` (at `now`: monotonic and
    /// wall); `Ok(Err(ino))` if the original bytes of `ino` must be filled
    /// in first.
    pub(super) fn write_at(
        &mut self,
        fh: u64,
        offset: u64,
        data: &[u8],
        now: (Instant, SystemTime),
    ) -> Result<Result<(), u64>, FsError> {
        let ino = *self
            .handles
            .get(&fh)
            .ok_or_else(|| err!(libc::EBADF, "handle {fh} is not open for writing"))?;
        let old = self.files.get(&ino).map_or(0, |f| f.bytes.len());
        let end = offset.saturating_add(data.len() as u64);
        self.check_room(old, old.max(end))?;
        let file = self.files.get_mut(&ino).expect("a handle's file");
        if file.bytes.write(offset, data).is_err() {
            return Ok(Err(ino));
        }
        file.changes += 1;
        (file.touched, file.mtime) = now;
        Ok(Ok(()))
    }

    /// Reads through `fh`; `Ok(Err(ino))` if the original bytes of `ino`
    /// must be filled in first.
    pub(super) fn read_at(
        &self,
        fh: u64,
        offset: u64,
        size: u32,
    ) -> Result<Result<Vec<u8>, u64>, FsError> {
        let ino = *self
            .handles
            .get(&fh)
            .ok_or_else(|| err!(libc::EBADF, "no open file {fh}"))?;
        Ok(self
            .files
            .get(&ino)
            .and_then(|f| f.bytes.read(offset, size))
            .map(<[u8]>::to_vec)
            .ok_or(ino))
    }

    /// Truncates or extends `ino`, held here, to `size` bytes.
    pub(super) fn set_size(
        &mut self,
        ino: u64,
        size: u64,
        wall: SystemTime,
    ) -> Result<(), FsError> {
        let old = match self.files.get(&ino) {
            Some(file) if matches!(file.target, Target::Gone) => {
                return Err(err!(libc::ESTALE, "this file was uploaded or removed"))
            }
            Some(file) => file.bytes.len(),
            None => return Err(err!(libc::EBADF, "no written file {ino}")),
        };
        self.check_room(old, size)?;
        let file = self.files.get_mut(&ino).expect("checked above");
        file.bytes.truncate(size);
        file.changes += 1;
        file.mtime = wall;
        Ok(())
    }
}
