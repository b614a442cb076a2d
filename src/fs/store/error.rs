//! Why the store cannot be used, or a face in it read: the system's error
//! kept as the source, with what was being done and where.

use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A file system call failed.
    #[error("cannot {doing} {}", path.display())]
    Io {
        doing: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The directory is not safe for biometric data; the message names the fix.
    #[error("{0}")]
    Unsafe(String),
    /// Another facefs holds the tenant's store.
    #[error("{holder} is using the store in {} for this tenant; two mounts cannot share one store: give this mount its own --cache-dir, or unmount the other", dir.display())]
    Locked { holder: String, dir: PathBuf },
    /// Every byte of the memory budget is held by faces being read.
    #[error("no memory for a stored face within {0:?}: every byte of --cache-size is held by faces being read")]
    NoMemory(Duration),
    #[error("cannot start the store's scan")]
    Scan(#[source] std::io::Error),
}

impl StoreError {
    /// Turns an I/O error of `doing` on `path` into a store error.
    pub fn io(doing: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> StoreError {
        let path = path.to_owned();
        move |source| StoreError::Io {
            doing,
            path,
            source,
        }
    }
}
