//! Inode numbers: fixed ones for the root and the three id directories, and
//! for each face file one derived from its name, so that a listing can show
//! inode numbers without remembering anything, and the same name shows the
//! same number in every mount. The table holds only the faces the kernel
//! knows (looked up and not yet forgotten), so names that were asked about
//! and do not exist cost nothing.

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
    let bytes = [key.kind.index() as u8, u8::from(key.cropped)];
    let hash = bytes
        .iter()
        .chain(key.id.as_bytes())
        .fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
            (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
        });
    FIRST_FACE_INO + hash % (u64::MAX / 2)
}

pub struct FaceNode {
    pub key: FaceKey,
    pub meta: Option<FaceMeta>,
    /// The digest of the bytes the last open of this inode served: if the
    /// next open serves the same, the kernel's page cache is still right.
    pub opened_digest: Option<u64>,
    /// Lookups answered and not yet forgotten by the kernel.
    lookups: u64,
}

#[derive(Default)]
pub struct InodeTable {
    by_key: HashMap<FaceKey, u64>,
    nodes: HashMap<u64, FaceNode>,
}

impl InodeTable {
    /// Notes a lookup of `key` answered to the kernel, numbering it if the
    /// kernel does not know it yet; returns its inode.
    pub fn looked_up(&mut self, key: &FaceKey) -> u64 {
        let ino = match self.by_key.get(key) {
            Some(ino) => *ino,
            None => {
                let mut ino = face_ino(key);
                while self.nodes.contains_key(&ino) || ino < FIRST_FACE_INO {
                    ino = ino.wrapping_add(1);
                }
                self.by_key.insert(key.clone(), ino);
                self.nodes.insert(
                    ino,
                    FaceNode {
                        key: key.clone(),
                        meta: None,
                        opened_digest: None,
                        lookups: 0,
                    },
                );
                ino
            }
        };
        if let Some(node) = self.nodes.get_mut(&ino) {
            node.lookups += 1;
        }
        ino
    }

    /// The kernel forgets `n` lookups of `ino`; at none left, so does the table.
    pub fn forget(&mut self, ino: u64, n: u64) {
        let Some(node) = self.nodes.get_mut(&ino) else {
            return;
        };
        node.lookups = node.lookups.saturating_sub(n);
        if node.lookups == 0 {
            if let Some(node) = self.nodes.remove(&ino) {
                self.by_key.remove(&node.key);
            }
        }
    }

    /// The inode of `key`, if the kernel knows it.
    pub fn existing(&self, key: &FaceKey) -> Option<u64> {
        self.by_key.get(key).copied()
    }

    pub fn node(&self, ino: u64) -> Option<&FaceNode> {
        self.nodes.get(&ino)
    }

    pub fn node_mut(&mut self, ino: u64) -> Option<&mut FaceNode> {
        self.nodes.get_mut(&ino)
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

    #[test]
    fn numbers_come_from_names_and_go_when_forgotten() {
        let mut table = InodeTable::default();
        let a = FaceKey::new(IdKind::OpenId, "ou_a", false);
        let ino = table.looked_up(&a);
        assert_eq!(ino, face_ino(&a));
        assert_ne!(ino, face_ino(&FaceKey::new(IdKind::OpenId, "ou_a", true)));
        assert_ne!(ino, face_ino(&FaceKey::new(IdKind::UnionId, "ou_a", false)));
        assert_eq!(table.looked_up(&a), ino);
        table.forget(ino, 1);
        assert_eq!(table.existing(&a), Some(ino), "one lookup left");
        table.forget(ino, 1);
        assert_eq!((table.existing(&a), table.len()), (None, 0));
        assert_eq!(table.looked_up(&a), ino, "the same number again");
    }

    #[test]
    fn a_taken_number_moves_the_later_name_on() {
        let mut table = InodeTable::default();
        let a = FaceKey::new(IdKind::OpenId, "ou_a", false);
        let ino = table.looked_up(&a);
        // Pretend another name hashed to the same number.
        let b = FaceKey::new(IdKind::OpenId, "ou_b", false);
        table.by_key.remove(&a);
        table.nodes.get_mut(&ino).unwrap().key = b.clone();
        table.by_key.insert(b.clone(), ino);
        let moved = table.looked_up(&a);
        assert_ne!(moved, ino);
        assert_eq!(table.node(moved).unwrap().key, a);
        assert_eq!(table.node(ino).unwrap().key, b);
    }
}
