//! Inode numbers: fixed ones for the root and the three id directories, and
//! for each face file one derived from its name, so that a listing can show
//! inode numbers without remembering anything, and the same name shows the
//! same number in every mount. The table holds only the faces the kernel
//! knows (looked up and not yet forgotten), so names that were asked about
//! and do not exist cost nothing.
//!
//! An inode is one version of a face (its digest): when a face's bytes
//! change, its name gets a new inode, and a file opened before keeps the old
//! one, so it reads the old bytes to the end or fails — never a mix. Since an
//! inode's bytes never change, the kernel may keep its pages for good.

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

/// The number a face's name maps to (FNV-1a over kind, variant and id).
/// Two names mapping to one number is possible in principle (2^-63 per
/// pair); the table then gives the later one the next free number.
pub fn face_ino(key: &FaceKey) -> u64 {
    number(key, &[])
}

/// The number for a later version of a face, while the kernel still holds
/// the one of its name.
fn version_ino(key: &FaceKey, digest: u64) -> u64 {
    number(key, &digest.to_le_bytes())
}

fn number(key: &FaceKey, salt: &[u8]) -> u64 {
    FIRST_FACE_INO + key.digest(salt) % (u64::MAX / 2)
}

pub struct FaceNode {
    pub key: FaceKey,
    /// The version this inode is: its size, digest, and when it was last
    /// confirmed (the digest never changes for one inode). `None` for a
    /// name a directory listing handed the kernel before facefs knew its
    /// bytes: the first lookup or `stat` that learns them makes it that
    /// version.
    pub meta: Option<FaceMeta>,
    /// Lookups answered and not yet forgotten by the kernel.
    lookups: u64,
}

#[derive(Default)]
pub struct InodeTable {
    by_key: HashMap<FaceKey, u64>,
    nodes: HashMap<u64, FaceNode>,
}

impl InodeTable {
    /// Notes a lookup of `key`, whose bytes are `meta`, answered to the
    /// kernel; returns the inode of that version, numbering it if needed.
    pub fn looked_up(&mut self, key: &FaceKey, meta: FaceMeta) -> u64 {
        if let Some(&ino) = self.by_key.get(key) {
            if let Some(node) = self
                .nodes
                .get_mut(&ino)
                .filter(|n| n.meta.is_none_or(|m| m.digest == meta.digest))
            {
                node.meta = Some(meta);
                node.lookups += 1;
                return ino;
            }
        }
        self.numbered(key, Some(meta))
    }

    /// Notes that a directory listing handed `key` to the kernel: one more
    /// lookup of the inode its name shows now, numbered without a version
    /// if the kernel holds none. Returns it and the version it is, if known.
    pub fn listed(&mut self, key: &FaceKey) -> (u64, Option<FaceMeta>) {
        if let Some(node) = self.by_key.get(key).and_then(|i| self.nodes.get_mut(i)) {
            node.lookups += 1;
            return (self.by_key[key], node.meta);
        }
        (self.numbered(key, None), None)
    }

    /// A new inode for `key`, the current one of its name, looked up once:
    /// the name's own number if free, else the version's.
    fn numbered(&mut self, key: &FaceKey, meta: Option<FaceMeta>) -> u64 {
        let mut ino = face_ino(key);
        if self.nodes.contains_key(&ino) {
            ino = version_ino(key, meta.map_or(0, |m| m.digest));
        }
        while self.nodes.contains_key(&ino) || ino < FIRST_FACE_INO {
            ino = ino.wrapping_add(1);
        }
        self.by_key.insert(key.clone(), ino);
        self.nodes.insert(
            ino,
            FaceNode {
                key: key.clone(),
                meta,
                lookups: 1,
            },
        );
        ino
    }

    /// Whether `ino` is the version its name shows now.
    pub fn is_current(&self, ino: u64) -> bool {
        self.nodes
            .get(&ino)
            .is_some_and(|n| self.by_key.get(&n.key) == Some(&ino))
    }

    /// The kernel forgets `n` lookups of `ino`; at none left, so does the
    /// table. Returns whether `ino` is gone.
    pub fn forget(&mut self, ino: u64, n: u64) -> bool {
        let Some(node) = self.nodes.get_mut(&ino) else {
            return true;
        };
        node.lookups = node.lookups.saturating_sub(n);
        if node.lookups > 0 {
            return false;
        }
        if let Some(node) = self.nodes.remove(&ino) {
            if self.by_key.get(&node.key) == Some(&ino) {
                self.by_key.remove(&node.key);
            }
        }
        true
    }

    /// Marks the current version of `key` confirmed by `meta`, if `meta`
    /// is that version (same digest) or the inode has none yet; a
    /// different version changes nothing.
    pub fn confirm(&mut self, key: &FaceKey, meta: FaceMeta) {
        let Some(&ino) = self.by_key.get(key) else {
            return;
        };
        if let Some(node) = self
            .nodes
            .get_mut(&ino)
            .filter(|n| n.meta.is_none_or(|m| m.digest == meta.digest))
        {
            node.meta = Some(meta);
        }
    }

    /// The inode of `key`, if the kernel knows it.
    /// What is known of `key`'s current version is no longer fresh: the
    /// next `stat` asks again (the face changed, says an event).
    pub fn expire(&mut self, key: &FaceKey) {
        if let Some(node) = self.by_key.get(key).and_then(|ino| self.nodes.get_mut(ino)) {
            if let Some(meta) = &mut node.meta {
                meta.fetched_at = std::time::SystemTime::UNIX_EPOCH;
            }
        }
    }

    /// The current inodes of faces whose bytes are one of `digests`.
    pub fn with_digests(&self, digests: &[u64]) -> Vec<(u64, FaceKey)> {
        self.by_key
            .iter()
            .filter(|(_, ino)| {
                self.nodes
                    .get(ino)
                    .and_then(|n| n.meta)
                    .is_some_and(|m| digests.contains(&m.digest))
            })
            .map(|(key, ino)| (*ino, key.clone()))
            .collect()
    }

    pub fn existing(&self, key: &FaceKey) -> Option<u64> {
        self.by_key.get(key).copied()
    }

    pub fn node(&self, ino: u64) -> Option<&FaceNode> {
        self.nodes.get(&ino)
    }

    /// Faces the kernel knows.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::SystemTime;

    fn meta(digest: u64) -> FaceMeta {
        FaceMeta {
            size: 10,
            digest,
            fetched_at: SystemTime::now(),
        }
    }

    #[test]
    fn numbers_come_from_names_and_go_when_forgotten() {
        let mut table = InodeTable::default();
        let a = FaceKey::new(IdKind::OpenId, "ou_a", false);
        let ino = table.looked_up(&a, meta(1));
        assert_eq!(ino, face_ino(&a));
        assert_ne!(ino, face_ino(&FaceKey::new(IdKind::OpenId, "ou_a", true)));
        assert_ne!(ino, face_ino(&FaceKey::new(IdKind::UnionId, "ou_a", false)));
        assert_eq!(table.looked_up(&a, meta(1)), ino);
        table.forget(ino, 1);
        assert_eq!(table.existing(&a), Some(ino), "one lookup left");
        table.forget(ino, 1);
        assert_eq!((table.existing(&a), table.len()), (None, 0));
        assert_eq!(table.looked_up(&a, meta(1)), ino, "the same number again");
    }

    #[test]
    fn a_new_version_is_a_new_inode_and_the_old_one_stays_until_forgotten() {
        let mut table = InodeTable::default();
        let a = FaceKey::new(IdKind::OpenId, "ou_a", false);
        let old = table.looked_up(&a, meta(1));
        let new = table.looked_up(&a, meta(2));
        assert_ne!(old, new);
        assert_eq!(table.existing(&a), Some(new));
        assert!(table.is_current(new) && !table.is_current(old));
        assert_eq!(
            table.node(old).unwrap().meta.map(|m| m.digest),
            Some(1),
            "the old inode keeps its version"
        );
        table.forget(old, 1);
        assert_eq!(
            table.existing(&a),
            Some(new),
            "forgetting the old one leaves the name"
        );
        table.forget(new, 1);
        assert_eq!(table.len(), 0);
    }

    #[test]
    fn a_listed_name_without_a_version_becomes_the_first_version_found() {
        let mut table = InodeTable::default();
        let a = FaceKey::new(IdKind::OpenId, "ou_a", false);
        let (ino, version) = table.listed(&a);
        assert_eq!(ino, face_ino(&a));
        assert!(version.is_none());
        // The lookup that learns its bytes keeps the number the kernel has.
        assert_eq!(table.looked_up(&a, meta(7)), ino);
        assert_eq!(table.node(ino).unwrap().meta.map(|m| m.digest), Some(7));
        // Listed again: the same inode, with its version, one more lookup.
        assert_eq!(table.listed(&a).1.map(|m| m.digest), Some(7));
        table.forget(ino, 2);
        assert_eq!(table.existing(&a), Some(ino), "one lookup left");
        table.forget(ino, 1);
        assert_eq!(table.len(), 0);
        // A `stat` that learns the bytes confirms a listed inode too.
        let (ino, _) = table.listed(&a);
        table.confirm(&a, meta(8));
        assert_eq!(table.node(ino).unwrap().meta.map(|m| m.digest), Some(8));
    }
}
