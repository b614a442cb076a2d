//! What facefs asks of the kernel at INIT.

use fuser::{InitFlags, KernelConfig};

/// Sets the capabilities and limits facefs wants, for `parallel` workers on
/// a mount that is `writable` or not; whether the kernel now opens files
/// itself (FUSE_NO_OPEN_SUPPORT: no OPEN or RELEASE reaches facefs).
pub fn configure(config: &mut KernelConfig, parallel: usize, writable: bool) -> bool {
    // Without it the kernel serialises lookups and readdir per directory,
    // and one hung download would block every other name in its directory.
    if let Err(missing) = config.add_capabilities(InitFlags::FUSE_PARALLEL_DIROPS) {
        log::warn!(
            "the kernel lacks {missing:?}: lookups in one directory will wait for each other"
        );
    }
    // The kernel sends read-ahead reads as background requests, 12 at a
    // time by default. If all 12 wait for downloads (that wait for
    // memory), the reads of faces already in memory could not even be
    // sent, and those readers could never finish and give memory back:
    // allow more background requests than there are workers to block.
    let background = u16::try_from(parallel * 4 + 64).unwrap_or(u16::MAX);
    if config.set_max_background(background).is_ok() {
        let _ = config.set_congestion_threshold(background / 4 * 3);
    }
    // Listings carry the attributes facefs knows, so a walk after a
    // remount needs no LOOKUP for them; AUTO keeps a names-only listing
    // (`ls -f`) on READDIR past its first page.
    if let Err(missing) =
        config.add_capabilities(InitFlags::FUSE_DO_READDIRPLUS | InitFlags::FUSE_READDIRPLUS_AUTO)
    {
        log::warn!("the kernel lacks {missing:?}: every walk looks each name up");
    }
    if writable {
        // O_TRUNC comes with the open, not as a setattr before it
        // (which a face would refuse: it cannot be truncated alone).
        if let Err(missing) = config.add_capabilities(InitFlags::FUSE_ATOMIC_O_TRUNC) {
            log::warn!("the kernel lacks {missing:?}: truncating opens of faces will fail");
        }
        // Opens must reach facefs: a write opens a face for writing.
        return false;
    }
    // Two requests fewer per file read: a warm `cat` runs at page-cache speed.
    config
        .add_capabilities(InitFlags::FUSE_NO_OPEN_SUPPORT)
        .is_ok()
}
