//! Where every operation of the adapter ends: answered on the kernel's
//! thread when the core can without waiting, else on a worker; logged,
//! counted and replied in one place ([`finish`]).

use std::sync::Arc;
use std::time::Instant;

use fuser::Errno;

use super::metrics::{FuseMetrics, FuseOp};
use super::reply::errno;
use crate::fs::error::err;
use crate::fs::{Answer, FaceFs, Fetch, FsError};
use crate::sync::worker_pool::{Lane, WorkerPool};

pub struct Dispatcher {
    core: Arc<FaceFs>,
    workers: WorkerPool,
    metrics: Arc<FuseMetrics>,
}

impl Dispatcher {
    /// `workers` threads for operations that must wait, and an eighth
    /// more (at least two) kept for those that are not probes.
    pub fn new(core: Arc<FaceFs>, workers: usize) -> std::io::Result<Dispatcher> {
        Ok(Dispatcher {
            core,
            workers: WorkerPool::new("facefs-worker", workers, (workers / 8).max(2))?,
            metrics: Arc::default(),
        })
    }

    pub fn core(&self) -> &Arc<FaceFs> {
        &self.core
    }

    pub fn metrics(&self) -> &Arc<FuseMetrics> {
        &self.metrics
    }

    /// Runs `work` without waiting for the API; if it would block, runs it
    /// again on a worker thread and finishes there.
    pub fn answer<T: 'static>(
        &self,
        op: FuseOp,
        work: impl Fn(&FaceFs, Fetch) -> Answer<T> + Send + 'static,
        reply: impl FnOnce(Result<T, FsError>) + Send + 'static,
    ) {
        self.answer_in(op, |_| Lane::First, work, reply);
    }

    /// As [`Dispatcher::answer`], on a worker of the lane `lane` says
    /// (asked only if the operation must wait).
    pub fn answer_in<T: 'static>(
        &self,
        op: FuseOp,
        lane: impl FnOnce(&FaceFs) -> Lane,
        work: impl Fn(&FaceFs, Fetch) -> Answer<T> + Send + 'static,
        reply: impl FnOnce(Result<T, FsError>) + Send + 'static,
    ) {
        let start = Instant::now();
        match work(&self.core, Fetch::Never) {
            Answer::Done(result) => finish(&self.metrics, op, start, result, reply),
            Answer::WouldBlock => {
                let core = self.core.clone();
                let metrics = self.metrics.clone();
                self.workers.spawn(lane(&self.core), move || {
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
    pub fn inline<T>(
        &self,
        op: FuseOp,
        work: impl FnOnce() -> Result<T, FsError>,
        reply: impl FnOnce(Result<T, FsError>),
    ) {
        let start = Instant::now();
        finish(&self.metrics, op, start, work(), reply);
    }

    /// Refuses a change facefs never makes (mkdir, symlink, ...): `EPERM`,
    /// or `EROFS` on a read-only mount; counted.
    pub fn refuse(&self, op: FuseOp, what: &str, reply: impl FnOnce(Errno)) {
        self.inline(
            op,
            || Err::<(), _>(self.core.refuse_change(what)),
            |result| {
                if let Err(e) = result {
                    reply(errno(&e));
                }
            },
        );
    }

    /// Replies `errno` to an operation facefs does not offer, counted.
    pub fn unsupported(&self, op: FuseOp, code: i32, why: &str, reply: impl FnOnce(Errno)) {
        self.inline(
            op,
            || Err::<(), _>(FsError::new(code, why).at_level(log::Level::Trace)),
            |result| {
                if let Err(e) = result {
                    reply(errno(&e));
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
