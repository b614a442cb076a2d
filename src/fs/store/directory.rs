//! The store's directories: private to the mounting user, checked before use,
//! and locked so that one process at a time writes a tenant's store.

use std::fs::{DirBuilder, File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

use super::error::StoreError;
use crate::seal::Sealer;

fn euid() -> u32 {
    // SAFETY: geteuid cannot fail.
    unsafe { libc::geteuid() }
}

/// The cache directory the user named: created `0700` if missing. One that
/// exists must be a directory of the mounting user that no one else can
/// write to, or another user could swap faces in.
pub fn prepare_top(dir: &Path) -> Result<(), StoreError> {
    match std::fs::metadata(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(StoreError::io("create the cache directory", dir)),
        Err(e) => Err(StoreError::io("use the cache directory", dir)(e)),
        Ok(meta) => check_private(dir, &meta, false),
    }
}

/// A directory of the store's own, below the top: created `0700`, and if it
/// exists, a real directory (no symlink) of the mounting user, `0700`.
pub fn prepare_own(dir: &Path) -> Result<(), StoreError> {
    match DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            let meta = std::fs::symlink_metadata(dir).map_err(StoreError::io("use", dir))?;
            check_private(dir, &meta, true)
        }
        Err(e) => Err(StoreError::io("create", dir)(e)),
    }
}

fn check_private(dir: &Path, meta: &std::fs::Metadata, own: bool) -> Result<(), StoreError> {
    let shown = dir.display();
    if !meta.is_dir() {
        return Err(StoreError::Unsafe(format!(
            "the cache directory {shown} is not a directory{}",
            if own {
                " (the store's own directories are never symlinks); remove it"
            } else {
                ""
            }
        )));
    }
    if meta.uid() != euid() {
        return Err(StoreError::Unsafe(format!(
            "the cache directory {shown} belongs to uid {}, not to the mounting user (uid {}): faces are biometric data; run `chown {} {shown}` or choose another --cache-dir",
            meta.uid(),
            euid(),
            euid()
        )));
    }
    let mode = meta.permissions().mode() & 0o777;
    let loose = if own {
        mode & 0o077 != 0
    } else {
        mode & 0o022 != 0
    };
    if loose {
        return Err(StoreError::Unsafe(format!(
            "the cache directory {shown} has mode {mode:04o}, so other users can {} it: faces are biometric data; run `chmod 700 {shown}` or choose another --cache-dir",
            if own { "reach into" } else { "write to" }
        )));
    }
    Ok(())
}

/// Opens a file of the store for writing: never through a symlink, `0600`.
pub fn create_private(path: &Path) -> std::io::Result<File> {
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
}

/// Opens a file of the store for reading: never through a symlink.
pub fn open_private(path: &Path) -> std::io::Result<File> {
    OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
}

/// Opens one of the store's directories, to open files relative to it.
pub fn open_dir(dir: &Path) -> Result<File, StoreError> {
    OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(dir)
        .map_err(StoreError::io("open", dir))
}

/// [`open_private`] of `relative` below the open directory `dir`.
pub fn open_private_at(dir: &File, relative: &str) -> std::io::Result<File> {
    // Without an access-time update: a read would otherwise dirty the
    // inode (a journal write per header a listing reads), and the store
    // orders its faces by modification time. Only an owner may ask.
    match open_at(
        dir,
        relative,
        libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_NOATIME,
    ) {
        Err(e) if e.raw_os_error() == Some(libc::EPERM) => {
            open_at(dir, relative, libc::O_RDONLY | libc::O_NOFOLLOW)
        }
        opened => opened,
    }
}

/// Opens the directory `name` below the open directory `dir`, never
/// through a symlink (a planted one is refused: ELOOP or ENOTDIR).
pub fn open_dir_at(dir: &File, name: &str) -> std::io::Result<File> {
    open_at(
        dir,
        name,
        libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW,
    )
}

fn open_at(dir: &File, relative: &str, flags: libc::c_int) -> std::io::Result<File> {
    use std::os::fd::FromRawFd;
    let path = std::ffi::CString::new(relative).map_err(std::io::Error::other)?;
    // SAFETY: a NUL-terminated path below a directory descriptor `dir` owns.
    let fd = unsafe { libc::openat(dir.as_raw_fd(), path.as_ptr(), flags | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: openat just returned this descriptor, owned by no one else.
    Ok(unsafe { File::from_raw_fd(fd) })
}

/// Removes the entry `name` (a file, or a symlink itself) of the open
/// directory `dir`: whatever was swapped in on the way, nothing outside it.
pub fn remove_at(dir: &File, name: &str) -> std::io::Result<()> {
    let name = std::ffi::CString::new(name).map_err(std::io::Error::other)?;
    // SAFETY: a NUL-terminated name below a directory descriptor `dir` owns.
    if unsafe { libc::unlinkat(dir.as_raw_fd(), name.as_ptr(), 0) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// The entries of the open directory `dir` (through /proc: the directory
/// itself, whatever its path leads to now).
pub fn entries_of(dir: &File) -> std::io::Result<std::fs::ReadDir> {
    std::fs::read_dir(format!("/proc/self/fd/{}", dir.as_raw_fd()))
}

/// Whether an opened file is one the store could have written.
pub fn is_own_file(meta: &std::fs::Metadata) -> bool {
    meta.is_file() && meta.uid() == euid() && meta.permissions().mode() & 0o077 == 0
}

/// How long a mount waits for the store's lock before it is refused.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(3);

/// The lock on one tenant's store, held for the life of the mount; the
/// kernel lets go of it however the process ends (`kill -9` too).
pub struct StoreLock {
    _file: File,
}

/// Takes the lock in `dir`, or says which process holds it.
pub fn lock(dir: &Path) -> Result<StoreLock, StoreError> {
    let path = dir.join("lock");
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(&path)
        .map_err(StoreError::io("open", &path))?;
    // `umount` returns before the process of the old mount has exited and
    // let go of the lock: `umount && mount` must not be refused for it.
    let deadline = std::time::Instant::now() + LOCK_WAIT;
    let locked = loop {
        // SAFETY: flock on a descriptor this function owns.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
            break Ok(());
        }
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EWOULDBLOCK) || std::time::Instant::now() >= deadline {
            break Err(e);
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    if let Err(e) = locked {
        if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            let holder = holder.trim();
            let who = if holder.is_empty() {
                "another facefs".to_owned()
            } else {
                format!("another facefs (pid {holder})")
            };
            return Err(StoreError::Locked {
                holder: who,
                dir: dir.to_owned(),
            });
        }
        return Err(StoreError::io("lock", &path)(e));
    }
    // Who holds it, for the message above; the lock itself is the flock.
    let _ = file.set_len(0);
    let _ = file.rewind();
    let _ = write!(file, "{}", std::process::id());
    Ok(StoreLock { _file: file })
}

/// What the tenant proof is sealed to.
const PROOF_PLACE: &[u8] = b"facefs store tenant proof v2";

/// The store must be this tenant's, sealed with these keys: the directory
/// name is a hash, the `tenant` file the proof (the tenant, sealed). A
/// store whose proof is missing, damaged, names another tenant or was
/// sealed under another key (a rotated app secret, another
/// `--data-key-file`) holds nothing this mount can open: it is emptied (it
/// is a cache), claimed, and the mount starts.
pub fn check_tenant(root: &Path, tenant: &str, sealer: &Sealer) -> Result<(), StoreError> {
    let path = root.join("tenant");
    let why = match std::fs::read(&path) {
        Ok(found) => match sealer.open(PROOF_PLACE, &found) {
            Ok(opened) if opened == tenant.as_bytes() => return Ok(()),
            Ok(_) => "its tenant file names another tenant",
            Err(_) => "it was sealed under another key (the app secret was rotated, or --data-key-file changed) or its tenant file is damaged",
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => "it has no tenant file",
        Err(e) => return Err(StoreError::io("read", &path)(e)),
    };
    let mut emptied = false;
    for dir in ["faces", "listings"] {
        match std::fs::remove_dir_all(root.join(dir)) {
            Ok(()) => emptied = true,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(StoreError::io("empty", &root.join(dir))(e)),
        }
    }
    if emptied {
        log::warn!(
            "emptying the store in {}: {why}; its faces are downloaded again when needed",
            root.display()
        );
    }
    let temp = root.join("tenant.tmp");
    let _ = std::fs::remove_file(&temp);
    create_private(&temp)
        .and_then(|mut f| f.write_all(&sealer.seal(PROOF_PLACE, tenant.as_bytes())))
        .and_then(|()| std::fs::rename(&temp, &path))
        .map_err(StoreError::io("write", &path))
}

/// Removes the store an older facefs kept for this tenant in `dir` (faces
/// unsealed: they must not outlive the upgrade), unless a running facefs
/// still holds its lock. Never follows a symlink; failures are logged.
pub fn remove_unsealed(dir: &Path) {
    match std::fs::symlink_metadata(dir) {
        Ok(meta) if meta.is_dir() && meta.uid() == euid() => {}
        _ => return,
    }
    let Ok(lock) = lock(dir) else {
        log::warn!(
            "an older facefs still uses its unsealed store in {}; remove it once that mount is gone",
            dir.display()
        );
        return;
    };
    drop(lock);
    match std::fs::remove_dir_all(dir) {
        Ok(()) => log::info!(
            "removed the unsealed store of an older facefs in {}; faces are stored sealed from now on",
            dir.display()
        ),
        Err(e) => log::warn!("cannot remove the unsealed store in {}: {e}", dir.display()),
    }
    if let Some(parent) = dir.parent() {
        // Only if no other tenant's store is left in it.
        let _ = std::fs::remove_dir(parent);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("facefs-dir-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn directories_are_created_private_and_loose_ones_are_refused_with_the_fix() {
        let top = temp_dir("private");
        prepare_top(&top.join("a/b")).unwrap();
        let mode = std::fs::metadata(top.join("a/b"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o700);
        std::fs::set_permissions(&top, std::fs::Permissions::from_mode(0o777)).unwrap();
        let refused = prepare_top(&top).unwrap_err().to_string();
        assert!(
            refused.contains("mode 0777") && refused.contains("chmod 700"),
            "{refused}"
        );
        // Readable by others is fine for the top: the store's own are 0700.
        std::fs::set_permissions(&top, std::fs::Permissions::from_mode(0o755)).unwrap();
        prepare_top(&top).unwrap();
        let own = top.join("own");
        prepare_own(&own).unwrap();
        std::fs::set_permissions(&own, std::fs::Permissions::from_mode(0o750)).unwrap();
        assert!(prepare_own(&own)
            .unwrap_err()
            .to_string()
            .contains("reach into"));
        std::fs::remove_dir(&own).unwrap();
        std::os::unix::fs::symlink(&top, &own).unwrap();
        assert!(prepare_own(&own)
            .unwrap_err()
            .to_string()
            .contains("not a directory"));
        std::fs::remove_dir_all(&top).unwrap();
    }

    #[test]
    fn a_second_lock_is_refused_and_names_the_holder() {
        let dir = temp_dir("lock");
        prepare_top(&dir).unwrap();
        let held = lock(&dir).unwrap();
        let refused = lock(&dir).err().unwrap().to_string();
        assert!(
            refused.contains(&format!("pid {}", std::process::id()))
                && refused.contains("--cache-dir"),
            "{refused}"
        );
        drop(held);
        lock(&dir).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
