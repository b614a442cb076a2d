//! Keeping the secret and the faces inside the process: no core dumps or
//! ptrace by other processes of the same user, and no copy of the app
//! secret left in the environment block that /proc/PID/environ shows.

use std::ffi::CString;

/// Marks the process non-dumpable: no core file (which would hold the app
/// secret, the live token and cached faces), and its /proc entries (memory,
/// environment) become root's, so other processes of the same user cannot
/// read or trace it. Call first thing in `main`.
pub fn make_undumpable() {
    // SAFETY: prctl with PR_SET_DUMPABLE takes plain integers.
    if unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) } != 0 {
        log::warn!(
            "cannot mark the process non-dumpable: {}",
            std::io::Error::last_os_error()
        );
    }
}

/// Reads environment variable `name` and removes it, overwriting the value
/// where the kernel put it (the block /proc/PID/environ reads) first. Must be
/// called while the process has one thread, before anything else reads the
/// environment.
pub fn take_env_secret(name: &str) -> Option<String> {
    let value = std::env::var(name).ok()?;
    let key = CString::new(name).ok()?;
    // SAFETY: single-threaded (see above); getenv returns a pointer to the
    // NUL-terminated value inside the environment block, which is writable,
    // and the value's own bytes are overwritten with NULs, nothing past them.
    unsafe {
        let place = libc::getenv(key.as_ptr());
        if !place.is_null() {
            let len = libc::strlen(place);
            for i in 0..len {
                std::ptr::write_volatile(place.add(i), 0);
            }
        }
    }
    std::env::remove_var(name);
    Some(value)
}
