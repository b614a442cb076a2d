//! Directory listings in fuser's terms: READDIR (names) and READDIRPLUS
//! (names with the attributes the kernel keeps, see `fs::readdirplus`).

use fuser::{FileHandle, Generation, INodeNo, ReplyDirectory, ReplyDirectoryPlus};

use super::metrics::FuseOp;
use super::reply::{errno, file_attr, file_type};
use super::FuseAdapter;

impl FuseAdapter {
    pub(super) fn answer_readdir(
        &self,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        self.dispatch.answer(
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

    /// Every entry the core prepared is one lookup it counted; those the
    /// kernel's buffer has no room for are given back at once, since the
    /// kernel links exactly the entries of the answer.
    pub(super) fn answer_readdirplus(
        &self,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        let core = self.core().clone();
        self.dispatch.answer(
            FuseOp::Readdirplus,
            move |core, fetch| core.readdirplus(ino.0, fh.0, offset, fetch),
            move |result| match result {
                Ok(entries) => {
                    let mut full = false;
                    for entry in entries {
                        let attr = file_attr(&entry.attr);
                        full = full
                            || reply.add(
                                attr.ino,
                                entry.next,
                                &entry.name,
                                &entry.attr.valid_for,
                                &attr,
                                Generation(0),
                            );
                        if full && entry.counted {
                            core.forget(entry.attr.ino, 1);
                        }
                    }
                    reply.ok();
                }
                Err(e) => reply.error(errno(&e)),
            },
        );
    }
}
