//! The thin adapter between the kernel (through fuser) and the filesystem
//! core. Each operation is first answered on the FUSE thread from what the
//! core already holds; one that needs the API moves to a worker thread.

use std::ffi::OsStr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, InitFlags,
    IoctlFlags, KernelConfig, LockOwner, OpenAccMode, OpenFlags, RenameFlags, ReplyAttr,
    ReplyCreate, ReplyData, ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyIoctl, ReplyOpen,
    ReplyStatfs, ReplyWrite, ReplyXattr, Request, TimeOrNow, WriteFlags,
};

use crate::fs::error::err;
use crate::fs::writing::{AttrChange, OpenMode};
use crate::fs::{Answer, Attr, FaceFs, Fetch, FsError, NodeKind};
use crate::sync::worker_pool::WorkerPool;

pub mod metrics;

use self::metrics::{FuseMetrics, FuseOp};

pub struct FuseAdapter {
    core: Arc<FaceFs>,
    workers: WorkerPool,
    /// The kernel opens files itself (FUSE_NO_OPEN_SUPPORT): no OPEN or
    /// RELEASE reaches facefs, and reads come by inode. Safe because an inode
    /// is one version of a face, whose bytes never change.
    no_open: bool,
    /// Threads of `workers`.
    parallel: usize,
    metrics: Arc<FuseMetrics>,
}

impl FuseAdapter {
    pub fn new(core: Arc<FaceFs>, workers: usize) -> std::io::Result<FuseAdapter> {
        Ok(FuseAdapter {
            core,
            workers: WorkerPool::new("facefs-worker", workers)?,
            no_open: false,
            parallel: workers,
            metrics: Arc::default(),
        })
    }

    pub fn metrics(&self) -> &Arc<FuseMetrics> {
        &self.metrics
    }

    /// Runs `work` without waiting for the API; if it would block, runs it
    /// again on a worker thread and finishes there.
    fn answer<T: 'static>(
        &self,
        op: FuseOp,
        work: impl Fn(&FaceFs, Fetch) -> Answer<T> + Send + 'static,
        reply: impl FnOnce(Result<T, FsError>) + Send + 'static,
    ) {
        let start = Instant::now();
        match work(&self.core, Fetch::Never) {
            Answer::Done(result) => finish(&self.metrics, op, start, result, reply),
            Answer::WouldBlock => {
                let core = self.core.clone();
                let metrics = self.metrics.clone();
                self.workers.spawn(move || {
                    let result = match work(&core, Fetch::Allowed) {
                        Answer::Done(result) => result,
                        Answer::WouldBlock => Err(err!(
                            libc::EIO,
                            "{}: the core asked to wait where waiting is allowed (a bug)",
                            op.as_str()
                        )),
                    };
                    finish(&metrics, op, start, result, reply);
                });
            }
        }
    }

    /// Runs an operation that never waits for the API and finishes it.
    fn inline<T>(
        &self,
        op: FuseOp,
        work: impl FnOnce() -> Result<T, FsError>,
        reply: impl FnOnce(Result<T, FsError>),
    ) {
        let start = Instant::now();
        finish(&self.metrics, op, start, work(), reply);
    }

    /// Replies `errno` to an operation facefs does not offer, counted.
    fn unsupported(&self, op: FuseOp, errno: i32, why: &str, reply: impl FnOnce(Errno)) {
        self.inline(
            op,
            || Err::<(), _>(FsError::new(errno, why).at_level(log::Level::Trace)),
            |result| {
                if let Err(e) = result {
                    reply(self::errno(&e));
                }
            },
        );
    }
}

/// The one place where an operation's outcome is logged, counted and
/// replied: every reply of the adapter but the fixed ones goes through here.
fn finish<T>(
    metrics: &FuseMetrics,
    op: FuseOp,
    start: Instant,
    result: Result<T, FsError>,
    reply: impl FnOnce(Result<T, FsError>),
) {
    let errno = match &result {
        Ok(_) => 0,
        Err(e) => {
            log::log!(e.level(), "{}: {e}", op.as_str());
            e.errno()
        }
    };
    metrics.op(op, start.elapsed(), errno);
    reply(result);
}

/// The handle of a file the kernel opened itself (see `no_open`); the core's
/// handles start at 1.
const NO_HANDLE: u64 = 0;

fn errno(err: &FsError) -> Errno {
    Errno::from_i32(err.errno())
}

/// Replies to an operation that answers nothing but success or an errno.
fn empty(reply: ReplyEmpty) -> impl FnOnce(Result<(), FsError>) {
    move |result| match result {
        Ok(()) => reply.ok(),
        Err(e) => reply.error(errno(&e)),
    }
}

fn file_attr(attr: &Attr) -> FileAttr {
    FileAttr {
        ino: INodeNo(attr.ino),
        size: attr.size,
        blocks: attr.size.div_ceil(512),
        atime: attr.mtime,
        mtime: attr.mtime,
        ctime: attr.mtime,
        crtime: attr.mtime,
        kind: file_type(attr.kind),
        perm: attr.perm,
        nlink: attr.nlink,
        uid: attr.uid,
        gid: attr.gid,
        rdev: 0,
        blksize: 4096,
        flags: 0,
    }
}

fn file_type(kind: NodeKind) -> FileType {
    match kind {
        NodeKind::Directory => FileType::Directory,
        NodeKind::File => FileType::RegularFile,
    }
}

impl Filesystem for FuseAdapter {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
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
        let background = u16::try_from(self.parallel * 4 + 64).unwrap_or(u16::MAX);
        if config.set_max_background(background).is_ok() {
            let _ = config.set_congestion_threshold(background / 4 * 3);
        }
        if self.core.writable() {
            // O_TRUNC comes with the open, not as a setattr before it
            // (which a face would refuse: it cannot be truncated alone).
            if let Err(missing) = config.add_capabilities(InitFlags::FUSE_ATOMIC_O_TRUNC) {
                log::warn!("the kernel lacks {missing:?}: truncating opens of faces will fail");
            }
            // Opens must reach facefs: a write opens a face for writing.
            return Ok(());
        }
        // Two requests fewer per file read: a warm `cat` runs at page-cache speed.
        self.no_open = config
            .add_capabilities(InitFlags::FUSE_NO_OPEN_SUPPORT)
            .is_ok();
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let name = name.to_owned();
        self.answer(
            FuseOp::Lookup,
            move |core, fetch| core.lookup(parent.0, &name, fetch),
            move |result| match result {
                // The kernel may keep the answer as long as the core trusts it.
                Ok(attr) => reply.entry(&attr.valid_for, &file_attr(&attr), Generation(0)),
                Err(e) => reply.error(errno(&e)),
            },
        );
    }

    /// The kernel no longer holds `nlookup` lookups of `ino`: the core lets
    /// go of what it kept for it.
    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        self.core.forget(ino.0, nlookup);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        self.answer(
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
            self.unsupported(
                FuseOp::Open,
                libc::ENOSYS,
                "the kernel opens files itself",
                |e| reply.error(e),
            );
            return;
        }
        let core = self.core.clone();
        self.answer(
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
            self.answer(
                FuseOp::Read,
                move |core, fetch| core.read_inode(ino.0, offset, size, fetch),
                move |result| match result {
                    Ok(slice) => reply.data(slice.bytes()),
                    Err(e) => reply.error(errno(&e)),
                },
            );
            return;
        }
        self.answer(
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
        self.inline(
            FuseOp::Release,
            || {
                self.core.release(fh.0);
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
        self.unsupported(
            FuseOp::Getxattr,
            libc::ENOSYS,
            "no extended attributes",
            |e| reply.error(e),
        );
    }

    fn listxattr(&self, _req: &Request, _ino: INodeNo, _size: u32, reply: ReplyXattr) {
        self.unsupported(
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
        self.unsupported(FuseOp::Ioctl, libc::ENOTTY, "no ioctls", |e| reply.error(e));
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        self.inline(
            FuseOp::Opendir,
            || self.core.opendir(ino.0),
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
        mut reply: ReplyDirectory,
    ) {
        self.answer(
            FuseOp::Readdir,
            move |core, fetch| core.readdir(ino.0, fh.0, offset, fetch),
            move |result| match result {
                Ok(page) => {
                    for (next, entry) in page.entries() {
                        if reply.add(INodeNo(entry.ino), next, file_type(entry.kind), &entry.name) {
                            break;
                        }
                    }
                    reply.ok();
                }
                Err(e) => reply.error(errno(&e)),
            },
        );
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        self.inline(
            FuseOp::Releasedir,
            || {
                self.core.releasedir(fh.0);
                Ok(())
            },
            |_| reply.ok(),
        );
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        self.inline(
            FuseOp::Statfs,
            || Ok(self.core.cache_usage()),
            |result| {
                let usage = result.unwrap_or_default();
                // Free space: what may still be written before uploads (`--writable`).
                let free = self.core.pending_room() / 4096;
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
        let change = AttrChange {
            size,
            other: mode.is_some()
                || uid.is_some()
                || gid.is_some()
                || atime.is_some()
                || mtime.is_some()
                || ctime.is_some()
                || crtime.is_some()
                || chgtime.is_some()
                || bkuptime.is_some()
                || flags.is_some(),
        };
        self.answer(
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
        self.inline(
            FuseOp::Create,
            || self.core.create(parent.0, name),
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
        self.answer(
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
        if !self.core.is_write_handle(fh.0) {
            if self.core.writable() {
                reply.ok();
            } else {
                // Nothing to flush on a read-only mount: ENOSYS stops the
                // kernel sending flush at all, saving a round trip per close.
                self.unsupported(
                    FuseOp::Flush,
                    libc::ENOSYS,
                    "nothing to flush on a read-only mount",
                    |e| reply.error(e),
                );
            }
            return;
        }
        self.answer(
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
        self.answer(
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
            self.unsupported(
                FuseOp::Rename,
                libc::EINVAL,
                "rename flags are not supported",
                |e| reply.error(e),
            );
            return;
        }
        let (name, newname) = (name.to_owned(), newname.to_owned());
        self.answer(
            FuseOp::Rename,
            move |core, fetch| core.rename(parent.0, &name, newparent.0, &newname, fetch),
            empty(reply),
        );
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        self.inline(
            FuseOp::Unlink,
            || self.core.unlink(parent.0, name),
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
        self.inline(
            FuseOp::Mknod,
            || Err::<(), _>(self.core.refuse_change("mknod")),
            |result| {
                if let Err(e) = result {
                    reply.error(errno(&e));
                }
            },
        );
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
        self.inline(
            FuseOp::Mkdir,
            || Err::<(), _>(self.core.refuse_change("mkdir")),
            |result| {
                if let Err(e) = result {
                    reply.error(errno(&e));
                }
            },
        );
    }

    fn rmdir(&self, _req: &Request, _parent: INodeNo, _name: &OsStr, reply: ReplyEmpty) {
        self.inline(
            FuseOp::Rmdir,
            || Err(self.core.refuse_change("rmdir")),
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
        self.inline(
            FuseOp::Symlink,
            || Err::<(), _>(self.core.refuse_change("symlink")),
            |result| {
                if let Err(e) = result {
                    reply.error(errno(&e));
                }
            },
        );
    }

    fn link(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _newparent: INodeNo,
        _newname: &OsStr,
        reply: ReplyEntry,
    ) {
        self.inline(
            FuseOp::Link,
            || Err::<(), _>(self.core.refuse_change("link")),
            |result| {
                if let Err(e) = result {
                    reply.error(errno(&e));
                }
            },
        );
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
        self.unsupported(
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
        self.unsupported(
            FuseOp::CopyFileRange,
            libc::ENOSYS,
            "no copy_file_range",
            |e| reply.error(e),
        );
    }
}
