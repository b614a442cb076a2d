//! The mount point before mounting: it must be a directory that nothing is
//! mounted on, and empty unless asked (a mount would hide its files). A dead mount left by a crashed process is named as such, with
//! the fix, and detached only when asked; facefs never stacks over a mount.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// What the mount point may be besides an empty directory.
#[derive(Clone, Copy, Debug, Default)]
pub struct Allow {
    /// A dead mount there is detached first (`--recover`).
    pub recover: bool,
    /// A directory with files in it, hidden while mounted (`--allow-non-empty`).
    pub non_empty: bool,
}

/// Checks `path` and returns it canonical.
pub fn check(path: &Path, allow: Allow) -> Result<PathBuf, String> {
    let shown = path.display();
    let missing =
        || format!("mount point {shown} does not exist; create it with `mkdir -p {shown}`");
    // Canonical without touching the mount point itself, which may be dead.
    let canonical = match (
        path.parent().filter(|p| !p.as_os_str().is_empty()),
        path.file_name(),
    ) {
        (Some(parent), Some(name)) => std::fs::canonicalize(parent).map(|p| p.join(name)),
        (None, Some(name)) => std::env::current_dir().map(|d| d.join(name)),
        _ => std::fs::canonicalize(path),
    }
    .map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            missing()
        } else {
            format!("mount point {shown}: {e}")
        }
    })?;
    if let Some(fstype) = mounted_fstype(&canonical) {
        // The kernel answers stat of a dead FUSE mount from its cache;
        // statfs always reaches the filesystem.
        if statfs(&canonical).err().and_then(|e| e.raw_os_error()) != Some(libc::ENOTCONN) {
            return Err(format!(
                "{shown} is already a mount point ({fstype}); unmount it first or choose another directory: \
                 facefs does not mount over another mount"
            ));
        }
        if !allow.recover {
            return Err(format!(
                "{shown} is a dead mount left by a facefs (or other FUSE) process that ended \
                 (Transport endpoint is not connected); detach it with `umount -l {shown}` \
                 (or `fusermount3 -uz {shown}`), or pass --recover to let facefs do it"
            ));
        }
        detach(&canonical).map_err(|e| format!("cannot detach the dead mount at {shown}: {e}"))?;
        log::warn!("detached the dead mount at {shown}");
        return check(
            path,
            Allow {
                recover: false,
                ..allow
            },
        );
    }
    match std::fs::metadata(&canonical) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(missing()),
        Err(e) => Err(format!("mount point {shown}: {e}")),
        Ok(meta) if !meta.is_dir() => Err(format!("mount point {shown} is not a directory")),
        Ok(_) => {
            if !allow.non_empty {
                refuse_non_empty(&canonical, path)?;
            }
            std::fs::canonicalize(&canonical).map_err(|e| format!("mount point {shown}: {e}"))
        }
    }
}

/// Refuses a mount point with entries in it: mounting would hide them.
fn refuse_non_empty(dir: &Path, shown: &Path) -> Result<(), String> {
    let shown = shown.display();
    let mut entries = std::fs::read_dir(dir).map_err(|e| format!("mount point {shown}: {e}"))?;
    match entries.next() {
        None => Ok(()),
        Some(first) => {
            let name = first
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .unwrap_or_default();
            Err(format!(
                "mount point {shown} is not empty (it holds {} and {} more): mounting would hide its files; \
                 empty it, choose another directory, or pass --allow-non-empty (-o nonempty) to mount over them",
                crate::text::shown(&name),
                entries.count()
            ))
        }
    }
}

fn statfs(path: &Path) -> std::io::Result<()> {
    let c_path = CString::new(path.as_os_str().as_bytes()).map_err(std::io::Error::other)?;
    // SAFETY: a valid C string and a zeroed out-struct of the right type.
    let mut buf: libc::statfs = unsafe { std::mem::zeroed() };
    match unsafe { libc::statfs(c_path.as_ptr(), &mut buf) } {
        0 => Ok(()),
        _ => Err(std::io::Error::last_os_error()),
    }
}

/// Detaches whatever is mounted at `path` (MNT_DETACH: busy or dead alike).
pub fn detach(path: &Path) -> std::io::Result<()> {
    let c_path = CString::new(path.as_os_str().as_bytes()).map_err(std::io::Error::other)?;
    // SAFETY: a valid C string; MNT_DETACH only detaches the mount.
    if unsafe { libc::umount2(c_path.as_ptr(), libc::MNT_DETACH) } == 0 {
        return Ok(());
    }
    let err = std::io::Error::last_os_error();
    // Non-root users unmount through fuse3's setuid helper.
    let helper = std::process::Command::new("fusermount3")
        .arg("-u")
        .arg("-z")
        .arg("--")
        .arg(path)
        .status();
    match helper {
        Ok(status) if status.success() => Ok(()),
        _ => Err(err),
    }
}

/// The filesystem type mounted exactly at `path`, if any (from mountinfo).
fn mounted_fstype(path: &Path) -> Option<String> {
    mounted_at(path).map(|(fstype, _)| fstype)
}

/// The filesystem type and source mounted exactly at `path`, if any.
pub fn mounted_at(path: &Path) -> Option<(String, String)> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let wanted = path.as_os_str().as_bytes();
    mountinfo.lines().find_map(|line| {
        let mut fields = line.split(' ');
        let mount_point = fields.nth(4)?;
        let mut after = line.split(" - ").nth(1)?.split(' ');
        let (fstype, source) = (after.next()?, after.next()?);
        (unescape(mount_point) == wanted).then(|| (fstype.to_owned(), source.to_owned()))
    })
}

/// mountinfo writes space, tab, newline and backslash as `\ooo` octal.
fn unescape(field: &str) -> Vec<u8> {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .and_then(|d| std::str::from_utf8(d).ok())
            .and_then(|d| u8::from_str_radix(d, 8).ok());
        match (bytes[i], octal) {
            (b'\\', Some(byte)) => {
                out.push(byte);
                i += 4;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_escapes() {
        assert_eq!(unescape(r"/mnt/a\040b"), b"/mnt/a b");
        assert_eq!(unescape(r"/x\134y"), b"/x\\y");
        assert_eq!(unescape("/plain"), b"/plain");
    }

    #[test]
    fn the_root_is_a_mount_point_and_a_file_is_not_a_directory() {
        let plain = Allow::default();
        assert!(check(Path::new("/etc/hostname"), plain)
            .unwrap_err()
            .contains("not a directory"));
        assert!(check(Path::new("/no/such/dir"), plain)
            .unwrap_err()
            .contains("mkdir -p"));
        assert!(check(Path::new("/proc"), plain)
            .unwrap_err()
            .contains("already a mount point (proc)"));
    }

    #[test]
    fn a_directory_with_files_is_refused_unless_allowed() {
        let dir = std::env::temp_dir().join(format!("facefs-nonempty-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        assert!(check(&dir, Allow::default()).is_ok(), "empty");
        std::fs::write(dir.join("keep\x1b[2J.txt"), b"").unwrap();
        let err = check(&dir, Allow::default()).unwrap_err();
        assert!(
            err.contains("--allow-non-empty") && err.contains("keep\\033[2J.txt"),
            "{err}"
        );
        let allowed = Allow {
            non_empty: true,
            ..Allow::default()
        };
        assert!(check(&dir, allowed).is_ok());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
