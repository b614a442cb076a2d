//! Where each entry's file lives under the store's root, and how the start
//! of a file is read (from the page cache alone, for the kernel's thread).

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
#[cfg(test)]
use std::sync::Arc;

use super::directory::{self, create_private, is_own_file};
use crate::api::IdKind;
use crate::fs::layout::FaceKey;
use crate::seal::Sealer;

/// No stored face file is believed to be larger: a face, its header, some slack.
const MAX_FACE_FILE: u64 = crate::api::http::MAX_FACE_BYTES + 4096;

/// Reads the start of `file` into `buf`; how many bytes it holds.
pub(super) fn read_prefix(file: &File, buf: &mut [u8]) -> Option<usize> {
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
pub(super) fn read_cached(file: &File, len: u64, buf: &mut [u8]) -> Option<usize> {
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
pub(super) fn is_face_file(meta: &std::fs::Metadata) -> bool {
    is_own_file(meta) && meta.len() <= MAX_FACE_FILE
}

/// The file name of a face: its key, hashed.
/// The file name of a face: a keyed hash of its key, which tells nothing
/// of the id to whoever lacks the tenant's keys (see [`face_name`]).
pub type FaceName = u128;

pub(super) fn face_path(root: &Path, name: FaceName) -> PathBuf {
    root.join("faces").join(face_relative(name))
}

/// A face's path below `faces/`.
pub(super) fn face_relative(name: FaceName) -> String {
    let hex = format!("{name:032x}");
    format!("{}/{}", &hex[..2], &hex[2..])
}

pub(super) fn listing_path(root: &Path, kind: IdKind) -> PathBuf {
    root.join("listings").join(kind.as_str())
}

/// Bytes a file takes on disk (blocks, not length: what the bound is about).
pub(super) fn disk_bytes(meta: &std::fs::Metadata) -> u64 {
    meta.blocks() * 512
}

/// Writes files whole or not at all: to a temporary name beside the
/// entry, renamed into place.
#[derive(Default)]
pub(super) struct Replacer {
    next_temp: AtomicU64,
    /// Tests hold writes here to see that nothing else waits for them.
    #[cfg(test)]
    gate: parking_lot::Mutex<Option<Arc<crate::sync::gate::Gate>>>,
}

impl Replacer {
    /// From now on every write waits at `gate` first, as on a disk that
    /// stalls.
    #[cfg(test)]
    pub fn hold_writes(&self, gate: Arc<crate::sync::gate::Gate>) {
        *self.gate.lock() = Some(gate);
    }

    /// Writes a new file beside `path` and renames it onto `path`; returns
    /// the bytes it takes on disk.
    pub(super) fn write_then_rename(
        &self,
        path: &Path,
        write: impl FnOnce(&mut File) -> std::io::Result<()>,
    ) -> std::io::Result<u64> {
        #[cfg(test)]
        if let Some(gate) = self.gate.lock().clone() {
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
}

/// The file name of `key`'s face: a keyed hash, which tells nothing of the
/// id to whoever lacks the tenant's keys.
pub(super) fn face_name(sealer: &Sealer, key: &FaceKey) -> FaceName {
    sealer.name_number(&[
        b"face",
        &[key.kind.index() as u8, u8::from(key.cropped)],
        key.id.as_bytes(),
    ])
}

/// Opens a stored face, relative to the open faces directory (a stat
/// walk opens every face), never through a symlink.
pub(super) fn open_face_file(faces_dir: &File, name: FaceName) -> std::io::Result<File> {
    directory::open_private_at(faces_dir, &face_relative(name))
}

/// Deletes the file of the face `name`, relative to the open faces
/// directory and its prefix directory opened without following a
/// symlink: nothing outside the store, whatever was planted in it.
pub(super) fn remove_face_file(faces_dir: &File, name: FaceName) {
    let relative = face_relative(name);
    let (prefix, file) = relative.split_once('/').expect("prefix/file");
    if let Ok(dir) = directory::open_dir_at(faces_dir, prefix) {
        let _ = directory::remove_at(&dir, file);
    }
}
