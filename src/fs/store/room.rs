//! How much room the store has: the LRU index of what it holds on disk
//! (bounded by `--cache-dir-size`), and the free space its file system must
//! keep. The index is the store's one lock, held for bookkeeping only.

use std::path::Path;

use lru::LruCache;

use super::files::FaceName;
use super::scan::Scan;

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

/// The store never leaves less than this share of its file system free.
pub(super) const FREE_SPACE_FLOOR: f64 = 0.05;

/// The faces on disk by file name, least recently used first out.
pub(super) struct Index {
    pub(super) lru: LruCache<FaceName, u64>,
    /// Bytes on disk of the faces in `lru` and of the listings.
    pub(super) bytes: u64,
    pub(super) listings: [u64; 3],
    pub(super) evictions: u64,
    pub(super) scanned: bool,
}

impl Index {
    pub(super) fn put(&mut self, name: FaceName, bytes: u64) {
        if let Some(old) = self.lru.put(name, bytes) {
            self.bytes -= old;
        }
        self.bytes += bytes;
    }

    /// Merges what the start-up scan found under what this mount wrote
    /// meanwhile (which is newer); the faces and bytes now known.
    pub(super) fn merge_scan(&mut self, mut found: Scan) -> (usize, u64) {
        found.faces.sort_by_key(|f| f.2);
        let written = std::mem::replace(&mut self.lru, LruCache::unbounded());
        // A listing written since the scan looked is the one on disk now.
        for (kind, bytes) in found.listings.iter().enumerate() {
            if self.listings[kind] == 0 {
                self.listings[kind] = *bytes;
            }
        }
        self.bytes = self.listings.iter().sum();
        for (name, bytes, _) in found.faces {
            self.put(name, bytes);
        }
        for (name, bytes) in written.iter().rev() {
            self.put(*name, *bytes);
        }
        self.scanned = true;
        (self.lru.len(), self.bytes)
    }

    pub(super) fn usage(&self) -> StoreUsage {
        StoreUsage {
            bytes: self.bytes,
            faces: self.lru.len(),
            evictions: self.evictions,
            scanned: self.scanned,
        }
    }

    pub(super) fn remove(&mut self, name: FaceName) {
        if let Some(old) = self.lru.pop(&name) {
            self.bytes -= old;
        }
    }

    /// Takes out the least recently used face: its name, and the bytes it
    /// took on disk (its file is the caller's to delete).
    fn evict_one(&mut self) -> Option<(FaceName, u64)> {
        let (name, bytes) = self.lru.pop_lru()?;
        self.bytes -= bytes;
        self.evictions += 1;
        Some((name, bytes))
    }

    /// Takes the least recently used faces out until `incoming`
    /// bytes fit; whether they do, and the faces to delete.
    pub(super) fn plan_eviction(
        &mut self,
        space: &Space,
        incoming: u64,
        still_on_disk: u64,
        max_bytes: u64,
    ) -> (bool, Vec<FaceName>) {
        let mut evicted = Vec::new();
        // Files take whole blocks, and a new directory may take one more.
        let incoming = incoming.div_ceil(space.block) * space.block;
        if incoming > max_bytes {
            return (false, evicted);
        }
        // Before the scan the total is unknown: only the floor is kept.
        while self.scanned && self.bytes + incoming > max_bytes {
            match self.evict_one() {
                Some((name, _)) => evicted.push(name),
                None => return (false, evicted),
            }
        }
        let needed = space.floor + incoming + space.block + still_on_disk;
        let mut free = space.free;
        while free < needed {
            match self.evict_one() {
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

/// What the store's file system has free, in bytes.
pub(super) struct Space {
    pub(super) free: u64,
    /// What must stay free.
    pub(super) floor: u64,
    pub(super) block: u64,
}

pub(super) fn free_space(root: &Path) -> Option<Space> {
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
