//! Inode numbers: fixed ones for the root and the three id directories, and
//! one per face file, kept for the life of the mount so that the same name
//! always shows the same inode.

use std::collections::HashMap;

use super::face::FaceMeta;
use super::layout::FaceKey;
use crate::api::IdKind;

pub const ROOT_INO: u64 = 1;
const FIRST_FACE_INO: u64 = 16;

/// The inode of the directory of `kind` ids.
pub fn dir_ino(kind: IdKind) -> u64 {
    2 + kind.index() as u64
}

/// The kind of ids the directory `ino` holds, if it is one of the three.
pub fn dir_kind(ino: u64) -> Option<IdKind> {
    IdKind::ALL.into_iter().find(|k| dir_ino(*k) == ino)
}

pub struct FaceNode {
    pub key: FaceKey,
    pub meta: Option<FaceMeta>,
    /// The digest of the bytes the last open of this inode served: if the
    /// next open serves the same, the kernel's page cache is still right.
    pub opened_digest: Option<u64>,
}

#[derive(Default)]
pub struct InodeTable {
    by_key: HashMap<FaceKey, u64>,
    nodes: HashMap<u64, FaceNode>,
    next: u64,
}

impl InodeTable {
    /// The inode of `key`, numbering it if it has none yet.
    pub fn ino_for(&mut self, key: &FaceKey) -> u64 {
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

    /// The inode of `key` if it has one: for answers that must not number.
    pub fn existing(&self, key: &FaceKey) -> Option<u64> {
        self.by_key.get(key).copied()
    }

    pub fn node(&self, ino: u64) -> Option<&FaceNode> {
        self.nodes.get(&ino)
    }

    pub fn node_mut(&mut self, ino: u64) -> Option<&mut FaceNode> {
        self.nodes.get_mut(&ino)
    }

    /// Faces numbered so far.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }
}
