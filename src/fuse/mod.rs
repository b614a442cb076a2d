//! The thin adapter between the kernel (through fuser) and the filesystem
//! core. Each operation is first answered on the FUSE thread from what the
//! core already holds; one that needs the API moves to a worker thread.

use std::ffi::OsStr;
use std::path::Path;
use std::sync::Arc;
use std::time::SystemTime;

use fuser::{
    FileHandle, Filesystem, FopenFlags, Generation, INodeNo, IoctlFlags, KernelConfig, LockOwner,
    OpenAccMode, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory,
    ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyIoctl, ReplyOpen, ReplyStatfs, ReplyWrite,
    ReplyXattr, Request, TimeOrNow, WriteFlags,
};

use crate::api::Priority;
use crate::fs::writing::{AttrChange, OpenMode};
use crate::fs::FaceFs;
use crate::sync::worker_pool::Lane;

mod dirs;
mod dispatch;
mod init;
pub mod metrics;
mod reply;

use self::dispatch::Dispatcher;
use self::metrics::{FuseMetrics, FuseOp};
use self::reply::{absent_attr, empty, errno, file_attr};

pub struct FuseAdapter {
    dispatch: Dispatcher,
    /// The kernel opens files itself (FUSE_NO_OPEN_SUPPORT): no OPEN or
    /// RELEASE reaches facefs, and reads come by inode. Safe because an inode
    /// is one version of a face, whose bytes never change.
    no_open: bool,
    /// Threads that run operations which wait.
    parallel: usize,
}

impl FuseAdapter {
    pub fn new(core: Arc<FaceFs>, workers: usize) -> std::io::Result<FuseAdapter> {
        Ok(FuseAdapter {
            dispatch: Dispatcher::new(core, workers)?,
            no_open: false,
            parallel: workers,
        })
    }

    pub fn metrics(&self) -> &Arc<FuseMetrics> {
        self.dispatch.metrics()
    }

    fn core(&self) -> &Arc<FaceFs> {
        self.dispatch.core()
    }
}

/// The handle of a file the kernel opened itself (see `no_open`); the core's
/// handles start at 1.
const NO_HANDLE: u64 = 0;

impl Filesystem for FuseAdapter {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        self.no_open = init::configure(config, self.parallel, self.core().writable());
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let name = name.to_owned();
        // A name no listing shows waits behind everything else.
        let lane = |core: &FaceFs| match core.lookup_priority(parent.0, &name) {
            Priority::Listed | Priority::Ahead => Lane::First,
            Priority::Probe => Lane::Second,
        };
        let name = name.clone();
        self.dispatch.answer_in(
            FuseOp::Lookup,
            lane,
            move |core, fetch| core.lookup(parent.0, &name, fetch),
            move |result| match result {
                // The kernel may keep the answer as long as the core trusts it.
                Ok(attr) => reply.entry(&attr.valid_for, &file_attr(&attr), Generation(0)),
                // An absence the core trusts: a negative entry, kept as long.
                Err(e) => match e.kernel_ttl() {
                    Some(ttl) if e.errno() == libc::ENOENT => {
                        reply.entry(&ttl, &absent_attr(), Generation(0))
                    }
                    _ => reply.error(errno(&e)),
                },
            },
        );
    }

    /// The kernel no longer holds `nlookup` lookups of `ino`: the core lets
    /// go of what it kept for it.
    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        self.core().forget(ino.0, nlookup);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        self.dispatch.answer(
            FuseOp::Getattr,
            move |core, fetch| core.getattr(ino.0, fetch),
            move |result| match result {
                Ok(attr) => reply.attr(&attr.valid_for, &file_attr(&attr)),
                Err(e) => reply.error(errno(&e)),
            },
        );
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let truncate = flags.0 & libc::O_TRUNC != 0;
        let mode = if flags.acc_mode() != OpenAccMode::O_RDONLY || truncate {
            OpenMode::Write { truncate }
        } else {
            OpenMode::Read
        };
        if self.no_open && mode == OpenMode::Read {
            // The kernel takes ENOSYS as "open files yourself from now on".
            self.dispatch.unsupported(
                FuseOp::Open,
                libc::ENOSYS,
                "the kernel opens files itself",
                |e| reply.error(e),
            );
            return;
        }
        let core = self.core().clone();
        self.dispatch.answer(
            FuseOp::Open,
            move |core, fetch| core.open(ino.0, mode, fetch),
            move |result| match result {
                Ok(fh) => {
                    let flags = if core.is_write_handle(fh) {
                        // Written bytes stay out of the page cache: what
                        // is read next must be what the service has.
                        FopenFlags::FOPEN_DIRECT_IO
                    } else {
                        // An inode is one version: its pages stay right.
                        FopenFlags::FOPEN_KEEP_CACHE
                    };
                    reply.opened(FileHandle(fh), flags)
                }
                Err(e) => reply.error(errno(&e)),
            },
        );
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        if fh.0 == NO_HANDLE {
            self.dispatch.answer(
                FuseOp::Read,
                move |core, fetch| core.read_inode(ino.0, offset, size, fetch),
                move |result| match result {
                    Ok(slice) => reply.data(slice.bytes()),
                    Err(e) => reply.error(errno(&e)),
                },
            );
            return;
        }
        self.dispatch.answer(
            FuseOp::Read,
            move |core, fetch| core.read(fh.0, offset, size, fetch),
            move |result| match result {
                Ok(slice) => reply.data(slice.bytes()),
                Err(e) => reply.error(errno(&e)),
            },
        );
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.dispatch.inline(
            FuseOp::Release,
            || {
                self.core().release(fh.0);
                Ok(())
            },
            |_| reply.ok(),
        );
    }

    /// No extended attributes; ENOSYS tells the kernel not to ask again.
    fn getxattr(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _name: &OsStr,
        _size: u32,
        reply: ReplyXattr,
    ) {
        self.dispatch.unsupported(
            FuseOp::Getxattr,
            libc::ENOSYS,
            "no extended attributes",
            |e| reply.error(e),
        );
    }

    fn listxattr(&self, _req: &Request, _ino: INodeNo, _size: u32, reply: ReplyXattr) {
        self.dispatch.unsupported(
            FuseOp::Listxattr,
            libc::ENOSYS,
            "no extended attributes",
            |e| reply.error(e),
        );
    }

    /// No ioctls: a face is not a terminal. Python's `open()` asks (TCGETS)
    /// for every file it opens; ENOTTY is the answer it expects, where
    /// fuser's default would log a warning per file.
    fn ioctl(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _flags: IoctlFlags,
        _cmd: u32,
        _in_data: &[u8],
        _out_size: u32,
        reply: ReplyIoctl,
    ) {
        self.dispatch
            .unsupported(FuseOp::Ioctl, libc::ENOTTY, "no ioctls", |e| reply.error(e));
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        self.dispatch.inline(
            FuseOp::Opendir,
            || self.core().opendir(ino.0),
            |result| match result {
                Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::empty()),
                Err(e) => reply.error(errno(&e)),
            },
        );
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        reply: ReplyDirectory,
    ) {
        self.answer_readdir(ino, fh, offset, reply);
    }

    fn readdirplus(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        reply: ReplyDirectoryPlus,
    ) {
        self.answer_readdirplus(ino, fh, offset, reply);
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        self.dispatch.inline(
            FuseOp::Releasedir,
            || {
                self.core().releasedir(fh.0);
                Ok(())
            },
            |_| reply.ok(),
        );
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        self.dispatch.inline(
            FuseOp::Statfs,
            || Ok(self.core().cache_usage()),
            |result| {
                let usage = result.unwrap_or_default();
                // Free space: what may still be written before uploads (`--writable`).
                let free = self.core().pending_room() / 4096;
                let blocks = usage.bytes.div_ceil(4096) + free;
                reply.statfs(blocks, free, free, usage.entries as u64, 0, 4096, 255, 4096);
            },
        );
    }

    // Changes: uploads with --writable, EROFS without (see fs::writing).

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        crtime: Option<SystemTime>,
        chgtime: Option<SystemTime>,
        bkuptime: Option<SystemTime>,
        flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let owner = [mode, uid, gid].iter().any(Option::is_some) || flags.is_some();
        let times = [atime, mtime].iter().any(Option::is_some)
            || [ctime, crtime, chgtime, bkuptime]
                .iter()
                .any(Option::is_some);
        let change = AttrChange {
            size,
            other: owner || times,
        };
        self.dispatch.answer(
            FuseOp::Setattr,
            move |core, fetch| core.setattr(ino.0, change, fetch),
            move |result| match result {
                Ok(attr) => reply.attr(&attr.valid_for, &file_attr(&attr)),
                Err(e) => reply.error(errno(&e)),
            },
        );
    }

    fn create(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        _mode: u32,
        _umask: u32,
        _flags: i32,
        reply: ReplyCreate,
    ) {
        self.dispatch.inline(
            FuseOp::Create,
            || self.core().create(parent.0, name),
            |result| match result {
                Ok((attr, fh)) => reply.created(
                    &attr.valid_for,
                    &file_attr(&attr),
                    Generation(0),
                    FileHandle(fh),
                    FopenFlags::FOPEN_DIRECT_IO,
                ),
                Err(e) => reply.error(errno(&e)),
            },
        );
    }

    fn write(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let data = data.to_vec();
        self.dispatch.answer(
            FuseOp::Write,
            move |core, fetch| core.write(fh.0, offset, &data, fetch),
            move |result| match result {
                Ok(written) => reply.written(written),
                Err(e) => reply.error(errno(&e)),
            },
        );
    }

    /// `close()`: where a written face is uploaded and the writer learns
    /// how that went.
    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        if !self.core().is_write_handle(fh.0) {
            if self.core().writable() {
                reply.ok();
            } else {
                // Nothing to flush on a read-only mount: ENOSYS stops the
                // kernel sending flush at all, saving a round trip per close.
                self.dispatch.unsupported(
                    FuseOp::Flush,
                    libc::ENOSYS,
                    "nothing to flush on a read-only mount",
                    |e| reply.error(e),
                );
            }
            return;
        }
        self.dispatch.answer(
            FuseOp::Flush,
            move |core, fetch| core.flush(fh.0, fetch),
            empty(reply),
        );
    }

    fn fsync(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        self.dispatch.answer(
            FuseOp::Fsync,
            move |core, fetch| core.flush(fh.0, fetch),
            empty(reply),
        );
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        if !flags.is_empty() {
            // RENAME_NOREPLACE and RENAME_EXCHANGE: callers fall back to a plain rename.
            self.dispatch.unsupported(
                FuseOp::Rename,
                libc::EINVAL,
                "rename flags are not supported",
                |e| reply.error(e),
            );
            return;
        }
        let (name, newname) = (name.to_owned(), newname.to_owned());
        self.dispatch.answer(
            FuseOp::Rename,
            move |core, fetch| core.rename(parent.0, &name, newparent.0, &newname, fetch),
            empty(reply),
        );
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        self.dispatch.inline(
            FuseOp::Unlink,
            || self.core().unlink(parent.0, name),
            empty(reply),
        );
    }

    fn mknod(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _name: &OsStr,
        _mode: u32,
        _umask: u32,
        _rdev: u32,
        reply: ReplyEntry,
    ) {
        self.dispatch
            .refuse(FuseOp::Mknod, "mknod", |e| reply.error(e));
    }

    fn mkdir(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _name: &OsStr,
        _mode: u32,
        _umask: u32,
        reply: ReplyEntry,
    ) {
        self.dispatch
            .refuse(FuseOp::Mkdir, "mkdir", |e| reply.error(e));
    }

    fn rmdir(&self, _req: &Request, _parent: INodeNo, _name: &OsStr, reply: ReplyEmpty) {
        self.dispatch.inline(
            FuseOp::Rmdir,
            || Err(self.core().refuse_change("rmdir")),
            empty(reply),
        );
    }

    fn symlink(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _link_name: &OsStr,
        _target: &Path,
        reply: ReplyEntry,
    ) {
        self.dispatch
            .refuse(FuseOp::Symlink, "symlink", |e| reply.error(e));
    }

    fn link(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _newparent: INodeNo,
        _newname: &OsStr,
        reply: ReplyEntry,
    ) {
        self.dispatch
            .refuse(FuseOp::Link, "link", |e| reply.error(e));
    }

    /// Space is not reserved ahead: EOPNOTSUPP makes callers (rsync
    /// --preallocate, posix_fallocate) just write.
    fn fallocate(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _offset: u64,
        _length: u64,
        _mode: i32,
        reply: ReplyEmpty,
    ) {
        self.dispatch.unsupported(
            FuseOp::Fallocate,
            libc::EOPNOTSUPP,
            "space is not reserved ahead",
            |e| reply.error(e),
        );
    }

    /// ENOSYS: the kernel falls back to reads and writes, and stops asking.
    fn copy_file_range(
        &self,
        _req: &Request,
        _ino_in: INodeNo,
        _fh_in: FileHandle,
        _offset_in: u64,
        _ino_out: INodeNo,
        _fh_out: FileHandle,
        _offset_out: u64,
        _len: u64,
        _flags: fuser::CopyFileRangeFlags,
        reply: ReplyWrite,
    ) {
        self.dispatch.unsupported(
            FuseOp::CopyFileRange,
            libc::ENOSYS,
            "no copy_file_range",
            |e| reply.error(e),
        );
    }
}
