//! What `stat` shows: attributes of directories and faces, made from the
//! mount's owner and modes, and entries of a directory.

use std::time::{Duration, SystemTime};

use super::face::{mtime_of, FaceMeta};
use super::inodes::ROOT_INO;
use crate::api::IdKind;

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

/// Who owns what the mount shows, with which modes, since when.
#[derive(Clone, Copy, Debug)]
pub struct Ownership {
    pub uid: u32,
    pub gid: u32,
    pub file_mode: u16,
    pub dir_mode: u16,
    /// The directories' mtime.
    pub mounted_at: SystemTime,
}

impl Ownership {
    /// The root or an id directory, trusted for `valid_for`.
    pub fn dir(&self, ino: u64, valid_for: Duration) -> Attr {
        Attr {
            ino,
            kind: NodeKind::Directory,
            size: 0,
            mtime: self.mounted_at,
            perm: self.dir_mode,
            nlink: if ino == ROOT_INO {
                2 + IdKind::ALL.len() as u32
            } else {
                2
            },
            uid: self.uid,
            gid: self.gid,
            valid_for,
        }
    }

    /// A face of `meta` (its mtime follows from its bytes).
    pub fn face(&self, ino: u64, meta: FaceMeta, valid_for: Duration) -> Attr {
        Attr {
            ino,
            kind: NodeKind::File,
            size: meta.size,
            mtime: mtime_of(meta.digest),
            perm: self.file_mode,
            nlink: 1,
            uid: self.uid,
            gid: self.gid,
            valid_for,
        }
    }

    /// A file being written: writable, of `size` bytes, asked about anew
    /// each time (it changes with every write); `linked` while it has a name.
    pub fn written(&self, ino: u64, size: u64, mtime: SystemTime, linked: bool) -> Attr {
        Attr {
            ino,
            kind: NodeKind::File,
            size,
            mtime,
            perm: self.file_mode | 0o200,
            nlink: u32::from(linked),
            uid: self.uid,
            gid: self.gid,
            valid_for: Duration::ZERO,
        }
    }
}
