//! The start-up scan: the face files on disk, sized into the index on a
//! thread of its own so that mounting does not wait for it.

use std::path::{Path, PathBuf};
use std::time::{Instant, SystemTime};

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

fn scan(root: &Path) -> Scan {
    let mut found = Scan {
        faces: Vec::new(),
        listings: IdKind::ALL.map(|kind| {
            std::fs::symlink_metadata(listing_path(root, kind)).map_or(0, |m| disk_bytes(&m))
        }),
        removed: 0,
    };
    let Ok(dirs) = std::fs::read_dir(root.join("faces")) else {
        return found;
    };
    // This process's own writes in flight, which the scan runs beside.
    let own_temp = format!(".{}.", std::process::id());
    for dir in dirs.flatten() {
        let prefix = dir.file_name().to_string_lossy().into_owned();
        let Ok(files) = std::fs::read_dir(dir.path()) else {
            continue;
        };
        for file in files.flatten() {
            let rest = file.file_name().to_string_lossy().into_owned();
            let name = (prefix.len() == 2 && rest.len() == 30)
                .then(|| FaceName::from_str_radix(&format!("{prefix}{rest}"), 16).ok())
                .flatten();
            match (name, file.metadata()) {
                (Some(name), Ok(meta)) if meta.is_file() => found.faces.push((
                    name,
                    disk_bytes(&meta),
                    meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
                )),
                _ if rest.contains(&own_temp) && rest.ends_with(".tmp") => {}
                _ => {
                    if std::fs::remove_file(file.path()).is_ok() {
                        found.removed += 1;
                    }
                }
            }
        }
    }
    found
}
