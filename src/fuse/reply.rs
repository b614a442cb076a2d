//! The core's answers in fuser's terms.

use fuser::{Errno, FileAttr, FileType, INodeNo, ReplyEmpty};

use crate::fs::{Attr, FsError, NodeKind};

pub fn errno(err: &FsError) -> Errno {
    Errno::from_i32(err.errno())
}

/// Replies to an operation that answers nothing but success or an errno.
pub fn empty(reply: ReplyEmpty) -> impl FnOnce(Result<(), FsError>) {
    move |result| match result {
        Ok(()) => reply.ok(),
        Err(e) => reply.error(errno(&e)),
    }
}

pub fn file_attr(attr: &Attr) -> FileAttr {
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

/// The attributes of a negative entry: node 0 tells the kernel the name
/// does not exist, and to remember that for the entry's TTL (an `ENOENT`
/// reply caches nothing). The kernel sends no FORGET for it.
pub fn absent_attr() -> FileAttr {
    FileAttr {
        ino: INodeNo(0),
        size: 0,
        blocks: 0,
        atime: std::time::UNIX_EPOCH,
        mtime: std::time::UNIX_EPOCH,
        ctime: std::time::UNIX_EPOCH,
        crtime: std::time::UNIX_EPOCH,
        kind: FileType::RegularFile,
        perm: 0,
        nlink: 0,
        uid: 0,
        gid: 0,
        rdev: 0,
        blksize: 4096,
        flags: 0,
    }
}

pub fn file_type(kind: NodeKind) -> FileType {
    match kind {
        NodeKind::Directory => FileType::Directory,
        NodeKind::File => FileType::RegularFile,
    }
}
