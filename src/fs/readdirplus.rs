//! READDIRPLUS: directory entries with the attributes the kernel keeps for
//! each, so a walk after a remount (`rsync -a`, `ls -l`, `find -newer`)
//! sends no LOOKUP for the faces facefs already knows (from memory or the
//! store's headers).
//!
//! fuser 0.18 numbers an entry with its attributes' inode, and an entry
//! numbered 0 ("no attributes") would also get `d_ino` 0, which glibc's
//! `readdir` hides. So every face entry carries an inode: a face whose bytes
//! are unknown gets the inode of its name without a version and
//! attributes valid for no time, and the kernel looks it up before any use
//! (one LOOKUP, as without READDIRPLUS). Every entry handed over is one
//! lookup the kernel will forget; `.` and `..` are not linked, so not
//! counted.

use std::ffi::OsStr;

use super::answer::{Answer, Step};
use super::attr::{Attr, DirEntry};
use super::face::FaceMeta;
use super::layout::FaceKey;
use super::{FaceFs, Fetch};

/// One entry of a READDIRPLUS answer.
pub struct PlusEntry {
    /// The offset of the entry after it.
    pub next: u64,
    pub name: String,
    /// What the kernel keeps, for `attr.valid_for`.
    pub attr: Attr,
    /// Whether the core counted it as a lookup: an entry that does not fit
    /// the kernel's buffer is given back with [`FaceFs::forget`].
    pub counted: bool,
}

/// The bytes an entry takes in the answer: `fuse_direntplus` (128 + 24)
/// and the name, 8-aligned, as the kernel and fuser lay it out.
fn entry_bytes(name: &str) -> usize {
    (152 + name.len()).next_multiple_of(8)
}

/// How much of a directory one answer prepares: glibc's `readdir` buffer,
/// which the kernel asks to fill since Linux 6.16. Entries a smaller
/// request has no room for are given back.
const PREPARED_BYTES: usize = 32 * 1024;

impl FaceFs {
    /// The entries of directory `ino` from `offset` on, as many as one
    /// answer holds, each counted as a lookup of what it names.
    pub fn readdirplus(
        &self,
        ino: u64,
        fh: u64,
        offset: u64,
        fetch: Fetch,
    ) -> Answer<Vec<PlusEntry>> {
        self.readdirplus_step(ino, fh, offset, fetch).into()
    }

    fn readdirplus_step(
        &self,
        ino: u64,
        fh: u64,
        offset: u64,
        fetch: Fetch,
    ) -> Step<Vec<PlusEntry>> {
        let page = self.readdir_step(ino, fh, offset, fetch)?;
        let mut room = PREPARED_BYTES;
        let entries: Vec<(u64, DirEntry, Option<FaceKey>)> = page
            .entries_with_keys()
            .take_while(|(_, entry, _)| {
                let fits = entry_bytes(&entry.name) <= room;
                room = room.saturating_sub(entry_bytes(&entry.name));
                fits
            })
            .collect();
        // What is known of each face, before anything is counted: a read
        // that must wait starts over on a worker with nothing to undo.
        let keys: Vec<FaceKey> = entries
            .iter()
            .filter_map(|(_, _, key)| key.clone())
            .collect();
        let mut known = self.known_metas(&keys, fetch)?.into_iter();
        Ok(entries
            .into_iter()
            .map(|(next, entry, key)| {
                let (attr, counted) = match key {
                    Some(key) => (self.hand_over(&key, &entry, known.next().flatten()), true),
                    None => (self.nodes.dir_attr(entry.ino), false),
                };
                PlusEntry {
                    next,
                    name: entry.name,
                    attr,
                    counted,
                }
            })
            .collect())
    }

    /// What `stat` would answer of each of `keys` without downloading:
    /// from the kernel's inode or memory while fresh, else the store's
    /// header (all read at once, within the store's bound).
    fn known_metas(&self, keys: &[FaceKey], fetch: Fetch) -> Step<Vec<Option<FaceMeta>>> {
        let held = |key: &FaceKey| {
            if self.faces.is_absent(key) {
                return Some(None);
            }
            let fresh = self.nodes.fresh_meta(key);
            let fresh = fresh.or_else(|| self.faces.fresh_in_memory(key).map(|f| f.meta()));
            // In memory but stale: `stat` asks the API, not the store.
            match fresh {
                Some(meta) => Some(Some(meta)),
                None => self.faces.in_memory(key).map(|_| None),
            }
        };
        let answers: Vec<Option<Option<FaceMeta>>> = keys.iter().map(held).collect();
        let unanswered: Vec<FaceKey> = keys
            .iter()
            .zip(&answers)
            .filter(|(_, answer)| answer.is_none())
            .map(|(key, _)| key.clone())
            .collect();
        let mut stored = self.faces.stored_metas(&unanswered, fetch)?.into_iter();
        Ok(answers
            .into_iter()
            .map(|answer| answer.unwrap_or_else(|| stored.next().flatten()))
            .collect())
    }

    /// Counts the lookup an entry of `key` is and gives its attributes:
    /// the version facefs knows while fresh, else its name's inode for the
    /// kernel to look up before use.
    fn hand_over(&self, key: &FaceKey, entry: &DirEntry, known: Option<FaceMeta>) -> Attr {
        if let Some(attr) = self
            .writing
            .written_lookup(key.kind, OsStr::new(&entry.name))
        {
            return attr;
        }
        match known {
            Some(meta) => {
                let ino = self.nodes.looked_up(key, meta);
                (self.writing.written_attr(ino)).unwrap_or_else(|| self.nodes.face_attr(ino, meta))
            }
            None => {
                let (ino, version) = self.nodes.listed(key);
                self.nodes.unconfirmed_attr(ino, version)
            }
        }
    }
}
