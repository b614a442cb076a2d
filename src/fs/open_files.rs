//! Open files and directories, and the faces being read by inode.
//!
//! Locks: `files`, `dirs` and `pins` are leaves, each held for a map
//! operation only, never across I/O or while taking another.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use super::answer::Step;
use super::attr::{DirEntry, NodeKind};
use super::error::err;
use super::face::Face;
use super::inodes::{dir_ino, face_ino, ROOT_INO};
use super::layout::FaceKey;
use super::listing::Listing;
use crate::api::IdKind;

/// Handle numbers, shared by everything the core opens (faces, written
/// files, directories), so `release` can tell them apart by number.
#[derive(Debug)]
pub struct HandleNumbers(AtomicU64);

impl Default for HandleNumbers {
    fn default() -> HandleNumbers {
        // 0 is the adapter's "opened by the kernel itself".
        HandleNumbers(AtomicU64::new(1))
    }
}

impl HandleNumbers {
    pub fn next(&self) -> u64 {
        self.0.fetch_add(1, Ordering::Relaxed)
    }
}

/// What one open directory shows, fixed at its first read.
#[derive(Clone)]
pub enum DirSnapshot {
    Root,
    Faces(IdKind, Arc<Listing>),
}

/// Entries of an open directory from an offset on. Nothing is copied: each
/// entry is made from the listing as the caller takes it, so reading a
/// directory of a million faces costs what the reader reads.
pub struct DirPage {
    dir: DirSnapshot,
    ino: u64,
    start: u64,
}

impl DirPage {
    /// Each entry with the offset of the one after it.
    pub fn entries(&self) -> impl Iterator<Item = (u64, DirEntry)> + '_ {
        self.entries_with_keys()
            .map(|(next, entry, _)| (next, entry))
    }

    /// [`Self::entries`], each face's with its key.
    pub fn entries_with_keys(&self) -> impl Iterator<Item = (u64, DirEntry, Option<FaceKey>)> + '_ {
        let total = match &self.dir {
            DirSnapshot::Root => 2 + IdKind::ALL.len(),
            DirSnapshot::Faces(_, listing) => 2 + listing.files(),
        };
        let start = usize::try_from(self.start).unwrap_or(usize::MAX);
        (start..total).filter_map(move |i| {
            let (entry, key) = self.entry(i)?;
            Some((i as u64 + 1, entry, key))
        })
    }

    fn entry(&self, i: usize) -> Option<(DirEntry, Option<FaceKey>)> {
        let dir = |name: &str, ino| {
            let entry = DirEntry {
                ino,
                kind: NodeKind::Directory,
                name: name.to_owned(),
            };
            (entry, None)
        };
        match (i, &self.dir) {
            (0, _) => Some(dir(".", self.ino)),
            (1, _) => Some(dir("..", ROOT_INO)),
            (i, DirSnapshot::Root) => IdKind::ALL.get(i - 2).map(|k| dir(k.as_str(), dir_ino(*k))),
            (i, DirSnapshot::Faces(kind, listing)) => {
                let key = listing.file_at(*kind, i - 2)?;
                let entry = DirEntry {
                    ino: face_ino(&key),
                    kind: NodeKind::File,
                    name: key.file_name(),
                };
                Some((entry, Some(key)))
            }
        }
    }
}

pub struct ReadSlice {
    /// `None` for a read at or past the end, which needs no bytes.
    face: Option<Arc<Face>>,
    start: usize,
    end: usize,
    /// Bytes of a file being written, copied out.
    copied: Vec<u8>,
}

impl ReadSlice {
    pub fn copied(bytes: Vec<u8>) -> ReadSlice {
        ReadSlice {
            copied: bytes,
            ..ReadSlice::EMPTY
        }
    }

    pub fn of(face: Arc<Face>, offset: u64, size: u32) -> ReadSlice {
        let len = face.bytes.len();
        let start = usize::try_from(offset).unwrap_or(usize::MAX).min(len);
        let end = start.saturating_add(size as usize).min(len);
        ReadSlice {
            face: Some(face),
            start,
            end,
            copied: Vec::new(),
        }
    }

    pub const EMPTY: ReadSlice = ReadSlice {
        face: None,
        start: 0,
        end: 0,
        copied: Vec::new(),
    };

    pub fn bytes(&self) -> &[u8] {
        self.face
            .as_ref()
            .map_or(&self.copied[..], |f| &f.bytes[self.start..self.end])
    }
}

/// Faces being read by inode. With the kernel opening files itself there is
/// no handle to hold a face between the reads of one file: without a pin, a
/// cache smaller than what is being read at once would evict a face between
/// two of its reads and download it again for each. A pin ends once as many
/// bytes as the face has were read (the kernel's reads of one file may come
/// out of order), on FORGET, after [`PIN_IDLE`] without a read, or when more
/// than `limit` files are being read; its bytes stay inside the memory budget.
struct ReadPins {
    pins: HashMap<u64, Pin>,
    limit: usize,
}

struct Pin {
    face: Arc<Face>,
    served: u64,
    last_read: Instant,
}

/// A file not read for this long is taken as abandoned half-way.
const PIN_IDLE: Duration = Duration::from_secs(2);

impl ReadPins {
    fn new(limit: usize) -> ReadPins {
        ReadPins {
            pins: HashMap::new(),
            limit,
        }
    }

    fn get(&self, ino: u64) -> Option<Arc<Face>> {
        self.pins.get(&ino).map(|p| p.face.clone())
    }

    /// Drops pins of files no one has read for [`PIN_IDLE`].
    fn sweep(&mut self, now: Instant) {
        self.pins
            .retain(|_, p| now.saturating_duration_since(p.last_read) < PIN_IDLE);
    }

    fn pin(&mut self, ino: u64, face: Arc<Face>, now: Instant) {
        self.sweep(now);
        if self.pins.len() >= self.limit {
            let oldest = self
                .pins
                .iter()
                .min_by_key(|(_, p)| p.last_read)
                .map(|(i, _)| *i);
            if let Some(oldest) = oldest {
                self.pins.remove(&oldest);
            }
        }
        self.pins.entry(ino).or_insert(Pin {
            face,
            served: 0,
            last_read: now,
        });
    }

    /// Notes `bytes` served from `ino`'s pin; ends the pin once the whole
    /// face has been served.
    fn served(&mut self, ino: u64, bytes: usize, now: Instant) {
        if let Some(pin) = self.pins.get_mut(&ino) {
            pin.served += bytes as u64;
            pin.last_read = now;
            if pin.served >= pin.face.bytes.len() as u64 {
                self.pins.remove(&ino);
            }
        }
    }
}

pub struct OpenFiles {
    numbers: Arc<HandleNumbers>,
    /// Faces opened for reading, by handle: the version's bytes for every read.
    files: Mutex<HashMap<u64, Arc<Face>>>,
    /// Open directories, by handle, with what their first read showed.
    dirs: Mutex<HashMap<u64, Option<DirSnapshot>>>,
    /// Faces being read by inode (see [`ReadPins`]).
    pins: Mutex<ReadPins>,
}

impl OpenFiles {
    /// `pin_limit`: files read by inode at once whose bytes are held.
    pub fn new(numbers: Arc<HandleNumbers>, pin_limit: usize) -> OpenFiles {
        OpenFiles {
            numbers,
            files: Mutex::new(HashMap::new()),
            dirs: Mutex::new(HashMap::new()),
            pins: Mutex::new(ReadPins::new(pin_limit)),
        }
    }

    pub fn open(&self, face: Arc<Face>) -> u64 {
        let fh = self.numbers.next();
        self.files.lock().insert(fh, face);
        fh
    }

    /// A slice of the face open as `fh`; `None` if `fh` is not one.
    pub fn read(&self, fh: u64, offset: u64, size: u32) -> Option<ReadSlice> {
        let face = self.files.lock().get(&fh).cloned()?;
        Some(ReadSlice::of(face, offset, size))
    }

    /// Closes `fh`; whether it was an open face.
    pub fn release(&self, fh: u64) -> bool {
        self.files.lock().remove(&fh).is_some()
    }

    pub fn open_dir(&self) -> u64 {
        let fh = self.numbers.next();
        self.dirs.lock().insert(fh, None);
        fh
    }

    /// The entries of the open directory `fh` (inode `ino`) from `offset`
    /// on. The first read takes what `snapshot` shows, and later reads page
    /// through it, so one `ls` sees one consistent listing.
    pub fn dir_page(
        &self,
        fh: u64,
        ino: u64,
        offset: u64,
        snapshot: impl FnOnce() -> Step<DirSnapshot>,
    ) -> Step<DirPage> {
        let taken = self
            .dirs
            .lock()
            .get(&fh)
            .cloned()
            .ok_or_else(|| err!(libc::EBADF, "no open directory {fh}"))?;
        let dir = match taken {
            Some(dir) if offset > 0 => dir,
            _ => {
                let dir = snapshot()?;
                if let Some(slot) = self.dirs.lock().get_mut(&fh) {
                    *slot = Some(dir.clone());
                }
                dir
            }
        };
        Ok(DirPage {
            dir,
            ino,
            start: offset,
        })
    }

    pub fn release_dir(&self, fh: u64) {
        self.dirs.lock().remove(&fh);
    }

    /// The face pinned for reads of `ino`, if any.
    pub fn pinned(&self, ino: u64) -> Option<Arc<Face>> {
        self.pins.lock().get(ino)
    }

    /// Lets go of abandoned reads (before a read may wait for memory).
    pub fn sweep_pins(&self, now: Instant) {
        self.pins.lock().sweep(now);
    }

    pub fn pin(&self, ino: u64, face: Arc<Face>, now: Instant) {
        self.pins.lock().pin(ino, face, now);
    }

    pub fn served(&self, ino: u64, bytes: usize, now: Instant) {
        self.pins.lock().served(ino, bytes, now);
    }

    pub fn unpin(&self, ino: u64) {
        self.pins.lock().pins.remove(&ino);
    }
}
