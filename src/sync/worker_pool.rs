//! A fixed set of threads for the FUSE operations that must wait for the
//! API, so that a slow download never holds up the kernel's other requests.
//!
//! Two lanes: jobs in [`Lane::First`] (reads, names a listing shows) are
//! taken before any in [`Lane::Second`] (probes of names nobody listed),
//! and a few workers take only the first lane, so that probes holding
//! every other worker (each waiting for a turn at the rate limit) never
//! keep a real reader waiting in the queue.
//!
//! Locks: `queues` alone.

use std::collections::VecDeque;
use std::sync::Arc;
use std::thread::JoinHandle;

use parking_lot::{Condvar, Mutex};

type Job = Box<dyn FnOnce() + Send>;

/// Which queue a job waits in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lane {
    First,
    Second,
}

pub struct WorkerPool {
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
}

struct Shared {
    queues: Mutex<Queues>,
    ready: Condvar,
}

struct Queues {
    first: VecDeque<Job>,
    second: VecDeque<Job>,
    open: bool,
}

impl WorkerPool {
    /// `size` workers for either lane, and `reserved` more for the first only.
    pub fn new(name: &str, size: usize, reserved: usize) -> std::io::Result<WorkerPool> {
        let shared = Arc::new(Shared {
            queues: Mutex::new(Queues {
                first: VecDeque::new(),
                second: VecDeque::new(),
                open: true,
            }),
            ready: Condvar::new(),
        });
        let lanes =
            std::iter::repeat_n(true, size.max(1)).chain(std::iter::repeat_n(false, reserved));
        let threads = lanes
            .enumerate()
            .map(|(i, takes_second)| {
                let shared = shared.clone();
                std::thread::Builder::new()
                    .name(format!("{name}-{i}"))
                    .spawn(move || work(&shared, takes_second))
            })
            .collect::<Result<_, _>>()?;
        Ok(WorkerPool { shared, threads })
    }

    /// Jobs waiting for a worker.
    pub fn queued(&self) -> usize {
        let queues = self.shared.queues.lock();
        queues.first.len() + queues.second.len()
    }

    pub fn spawn(&self, lane: Lane, job: impl FnOnce() + Send + 'static) {
        let mut queues = self.shared.queues.lock();
        if !queues.open {
            return;
        }
        match lane {
            Lane::First => queues.first.push_back(Box::new(job)),
            Lane::Second => queues.second.push_back(Box::new(job)),
        }
        drop(queues);
        // Every waiter: a reserved worker may not take a second-lane job.
        self.shared.ready.notify_all();
    }
}

fn work(shared: &Shared, takes_second: bool) {
    loop {
        let job = {
            let mut queues = shared.queues.lock();
            loop {
                if let Some(job) = queues.first.pop_front() {
                    break job;
                }
                if takes_second {
                    if let Some(job) = queues.second.pop_front() {
                        break job;
                    }
                }
                if !queues.open {
                    return;
                }
                shared.ready.wait(&mut queues);
            }
        };
        // A bug costs the one operation (its unanswered reply answers EIO as
        // it drops), never the worker: the pool must not shrink.
        if std::panic::catch_unwind(std::panic::AssertUnwindSafe(job)).is_err() {
            log::error!("an operation panicked (a bug; please report it); its caller gets EIO");
        }
    }
}

impl Drop for WorkerPool {
    /// Stops taking jobs; workers finish the ones queued and exit. They are
    /// not joined: a worker stuck in a download must not hold up unmounting.
    fn drop(&mut self) {
        self.shared.queues.lock().open = false;
        self.shared.ready.notify_all();
        self.threads.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc::channel;
    use std::time::Duration;

    #[test]
    fn a_blocked_job_does_not_hold_up_the_others() {
        let pool = WorkerPool::new("test", 2, 0).unwrap();
        let (release, blocked) = channel::<()>();
        pool.spawn(Lane::First, move || {
            let _ = blocked.recv();
        });
        let (done, results) = channel();
        for i in 0..5 {
            let done = done.clone();
            pool.spawn(Lane::First, move || done.send(i).unwrap());
        }
        let mut got: Vec<i32> = (0..5)
            .map(|_| results.recv_timeout(Duration::from_secs(10)).unwrap())
            .collect();
        got.sort();
        assert_eq!(got, [0, 1, 2, 3, 4]);
        release.send(()).unwrap();
    }

    #[test]
    fn a_panicking_job_does_not_cost_a_worker() {
        let pool = WorkerPool::new("test", 1, 0).unwrap();
        for _ in 0..3 {
            pool.spawn(Lane::First, || panic!("a bug"));
        }
        let (done, result) = channel();
        pool.spawn(Lane::First, move || done.send(7).unwrap());
        assert_eq!(result.recv_timeout(Duration::from_secs(10)), Ok(7));
    }

    #[test]
    fn the_first_lane_never_waits_behind_the_second() {
        // Every shared worker held by a second-lane job, and more queued.
        let pool = WorkerPool::new("test", 2, 1).unwrap();
        let (release, blocked) = channel::<()>();
        let blocked = Arc::new(Mutex::new(blocked));
        for _ in 0..10 {
            let blocked = blocked.clone();
            pool.spawn(Lane::Second, move || {
                let _ = blocked.lock().recv();
            });
        }
        let (done, result) = channel();
        pool.spawn(Lane::First, move || done.send(1).unwrap());
        assert_eq!(result.recv_timeout(Duration::from_secs(10)), Ok(1));
        for _ in 0..10 {
            release.send(()).unwrap();
        }
    }
}
