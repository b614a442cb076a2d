//! The start-up scan: the face files on disk, sized into the index on a
//! thread of its own so that mounting does not wait for it.

use std::path::{Path, PathBuf};
use std::time::{Instant, SystemTime};

use super::directory;
use super::files::{disk_bytes, listing_path, FaceName};
use crate::api::IdKind;

/// What the start-up scan found: faces as (name, bytes on disk, last use).
pub(super) struct Scan {
    pub(super) faces: Vec<(FaceName, u64, SystemTime)>,
    /// Bytes on disk of each kind's listing.
    pub(super) listings: [u64; 3],
    pub(super) removed: usize,
}

/// Walks the face files. Leftovers of writes that never finished (a crash)
/// and files that cannot be the store's are removed: the lock says no one
/// else writes here.
/// Scans `root` on a thread of its own, then hands `done` what it found
/// and when it started.
pub(super) fn start(
    root: PathBuf,
    done: impl FnOnce(Scan, Instant) + Send + 'static,
) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("facefs-store-scan".into())
        .spawn(move || {
            let started = Instant::now();
            done(scan(&root), started);
        })
        .map(drop)
}

/// Walks the face files. Leftovers of writes that never finished (a crash)
/// and files that cannot be the store's are removed: the lock says no one
/// else writes here. Nothing is followed out of the store: each directory
/// is opened without following symlinks, and removals are relative to it.
fn scan(root: &Path) -> Scan {
    let mut found = Scan {
        faces: Vec::new(),
        listings: IdKind::ALL.map(|kind| {
            std::fs::symlink_metadata(listing_path(root, kind)).map_or(0, |m| disk_bytes(&m))
        }),
        removed: 0,
    };
    let Ok(faces) = directory::open_dir(&root.join("faces")) else {
        return found;
    };
    let Ok(dirs) = directory::entries_of(&faces) else {
        return found;
    };
    // This process's own writes in flight, which the scan runs beside.
    let own_temp = format!(".{}.", std::process::id());
    let mut remove = |dir: &std::fs::File, name: &str| {
        if directory::remove_at(dir, name).is_ok() {
            found.removed += 1;
        }
    };
    let mut listed = Vec::new();
    for dir in dirs.flatten() {
        let prefix = dir.file_name().to_string_lossy().into_owned();
        let opened = (prefix.len() == 2)
            .then(|| directory::open_dir_at(&faces, &prefix).ok())
            .flatten();
        let (Some(opened), Ok(files)) = (
            opened.as_ref(),
            opened
                .as_ref()
                .map_or(Err(()), |d| directory::entries_of(d).map_err(drop)),
        ) else {
            // A file, a symlink (planted: never followed), a stray name.
            remove(&faces, &prefix);
            continue;
        };
        for file in files.flatten() {
            let rest = file.file_name().to_string_lossy().into_owned();
            let name = (rest.len() == 30)
                .then(|| FaceName::from_str_radix(&format!("{prefix}{rest}"), 16).ok())
                .flatten();
            match (name, file.metadata()) {
                (Some(name), Ok(meta)) if meta.is_file() => listed.push((
                    name,
                    disk_bytes(&meta),
                    meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
                )),
                _ if rest.contains(&own_temp) && rest.ends_with(".tmp") => {}
                _ => remove(opened, &rest),
            }
        }
    }
    found.faces = listed;
    found
}
