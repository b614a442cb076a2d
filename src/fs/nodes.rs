//! What the kernel holds: the inodes of the faces it looked up, and the
//! attributes `stat` shows of them and of the directories.
//!
//! Locks: `table` may be held while asking `freshness` (whose locks are
//! leaves), never across I/O.

use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;

use super::attr::{Attr, Ownership};
use super::error::{err, FsError};
use super::face::FaceMeta;
use super::freshness::Freshness;
use super::inodes::{dir_ino, dir_kind, InodeTable, ROOT_INO};
use super::kernel::Invalidation;
use super::layout::FaceKey;

pub struct Nodes {
    owner: Ownership,
    freshness: Arc<Freshness>,
    table: Mutex<InodeTable>,
}

impl Nodes {
    pub fn new(owner: Ownership, freshness: Arc<Freshness>) -> Nodes {
        Nodes {
            owner,
            freshness,
            table: Mutex::new(InodeTable::default()),
        }
    }

    /// The root or an id directory.
    pub fn dir_attr(&self, ino: u64) -> Attr {
        self.owner.dir(ino, self.freshness.policy().ttl)
    }

    /// The face version `ino`, whose bytes are `meta`, trusted as long as
    /// the fetch is.
    pub fn face_attr(&self, ino: u64, meta: FaceMeta) -> Attr {
        self.owner
            .face(ino, meta, self.freshness.remaining(meta.fetched_at))
    }

    /// The attributes of an entry a listing hands the kernel without a
    /// fresh version: valid for no time, so the kernel looks the name up
    /// before any use; those of the version the inode is, if it is one (a
    /// size of 0 would make the kernel drop its cached pages).
    pub fn unconfirmed_attr(&self, ino: u64, version: Option<FaceMeta>) -> Attr {
        let meta = version.unwrap_or(FaceMeta {
            size: 0,
            digest: 0,
            fetched_at: std::time::UNIX_EPOCH,
        });
        self.owner.face(ino, meta, Duration::ZERO)
    }

    /// The face and version inode `ino` is; directories and unknown inodes
    /// are errors. The version is `None` for a name a listing handed the
    /// kernel before facefs knew its bytes.
    pub fn face_version(&self, ino: u64) -> Result<(FaceKey, Option<FaceMeta>), FsError> {
        if ino == ROOT_INO || dir_kind(ino).is_some() {
            return Err(err!(libc::EISDIR, "inode {ino} is a directory"));
        }
        self.table
            .lock()
            .node(ino)
            .map(|n| (n.key.clone(), n.meta))
            .ok_or_else(|| err!(libc::ENOENT, "no inode {ino}"))
    }

    /// `ENOTDIR` for a face's inode, `ENOENT` for one unknown.
    pub fn not_a_directory(&self, ino: u64) -> FsError {
        match self.table.lock().node(ino) {
            Some(_) => err!(libc::ENOTDIR, "inode {ino} is a face, not a directory"),
            None => err!(libc::ENOENT, "no inode {ino}"),
        }
    }

    /// What the kernel's inode of `key` says of its bytes, while fresh.
    pub fn fresh_meta(&self, key: &FaceKey) -> Option<FaceMeta> {
        let table = self.table.lock();
        let meta = table.node(table.existing(key)?)?.meta?;
        self.freshness
            .fresh_face(meta.digest, meta.fetched_at)
            .then_some(meta)
    }

    /// Notes that a directory listing handed `key` to the kernel (one
    /// lookup): its inode, and the version it is if known.
    pub fn listed(&self, key: &FaceKey) -> (u64, Option<FaceMeta>) {
        self.table.lock().listed(key)
    }

    /// Notes a lookup of `key`, whose bytes are `meta`, answered to the
    /// kernel; returns the inode of that version.
    pub fn looked_up(&self, key: &FaceKey, meta: FaceMeta) -> u64 {
        self.table.lock().looked_up(key, meta)
    }

    /// `meta` was confirmed as the current version of `key`.
    pub fn confirm(&self, key: &FaceKey, meta: FaceMeta) {
        self.table.lock().confirm(key, meta);
    }

    /// The attributes of the face version `ino` (of `key`, bytes
    /// `version`), given what the name shows now (`current`): an older
    /// version's inode describes its own bytes, for good, and is not to be
    /// cached, as the name's next lookup finds the newer one.
    pub fn version_attr(
        &self,
        ino: u64,
        key: &FaceKey,
        version: FaceMeta,
        current: Option<FaceMeta>,
    ) -> Attr {
        match current {
            Some(meta) if meta.digest == version.digest => {
                self.confirm(key, meta);
                self.face_attr(ino, meta)
            }
            _ => Attr {
                valid_for: Duration::ZERO,
                ..self.face_attr(ino, version)
            },
        }
    }

    /// Whether `ino` is the version its name shows now.
    pub fn is_current(&self, ino: u64) -> bool {
        self.table.lock().is_current(ino)
    }

    /// The kernel forgets `lookups` lookups of `ino`; whether it is gone.
    pub fn forget(&self, ino: u64, lookups: u64) -> bool {
        self.table.lock().forget(ino, lookups)
    }

    /// What is known of `key` expires; its inode, if the kernel holds it.
    pub fn expire(&self, key: &FaceKey) -> Option<u64> {
        let mut table = self.table.lock();
        table.expire(key);
        table.existing(key)
    }

    /// The digest of the version of `key` the kernel holds.
    pub fn digest(&self, key: &FaceKey) -> Option<u64> {
        let table = self.table.lock();
        table
            .existing(key)
            .and_then(|ino| table.node(ino))
            .and_then(|n| n.meta)
            .map(|m| m.digest)
    }

    /// What the kernel must forget of faces of `digests` under names other
    /// than `key`'s user.
    pub fn others_with(&self, digests: &[u64], key: &FaceKey) -> Vec<Invalidation> {
        let mut forget = Vec::new();
        for (ino, other) in self.table.lock().with_digests(digests) {
            if other.kind != key.kind || other.id != key.id {
                forget.push(Invalidation::Entry {
                    parent: dir_ino(other.kind),
                    name: other.file_name(),
                });
                forget.push(Invalidation::Inode(ino));
            }
        }
        forget
    }

    /// Faces the kernel knows.
    pub fn len(&self) -> usize {
        self.table.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
