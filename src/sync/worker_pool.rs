//! A fixed set of threads for the FUSE operations that must wait for the
//! API, so that a slow download never holds up the kernel's other requests.

use parking_lot::Mutex;
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::Arc;
use std::thread::JoinHandle;

type Job = Box<dyn FnOnce() + Send>;

pub struct WorkerPool {
    jobs: Option<Sender<Job>>,
    threads: Vec<JoinHandle<()>>,
}

impl WorkerPool {
    pub fn new(name: &str, size: usize) -> std::io::Result<WorkerPool> {
        let (jobs, queue) = channel::<Job>();
        let queue = Arc::new(Mutex::new(queue));
        let threads = (0..size.max(1))
            .map(|i| {
                let queue = queue.clone();
                std::thread::Builder::new()
                    .name(format!("{name}-{i}"))
                    .spawn(move || work(&queue))
            })
            .collect::<Result<_, _>>()?;
        Ok(WorkerPool {
            jobs: Some(jobs),
            threads,
        })
    }

    pub fn spawn(&self, job: impl FnOnce() + Send + 'static) {
        if let Some(jobs) = &self.jobs {
            // Sending fails only once every worker is gone, when nothing can run it.
            let _ = jobs.send(Box::new(job));
        }
    }
}

fn work(queue: &Mutex<Receiver<Job>>) {
    loop {
        let job = match queue.lock().recv() {
            Ok(job) => job,
            Err(_) => return,
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
        self.jobs.take();
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
        let pool = WorkerPool::new("test", 2).unwrap();
        let (release, blocked) = channel::<()>();
        pool.spawn(move || {
            let _ = blocked.recv();
        });
        let (done, results) = channel();
        for i in 0..5 {
            let done = done.clone();
            pool.spawn(move || done.send(i).unwrap());
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
        let pool = WorkerPool::new("test", 1).unwrap();
        for _ in 0..3 {
            pool.spawn(|| panic!("a bug"));
        }
        let (done, result) = channel();
        pool.spawn(move || done.send(7).unwrap());
        assert_eq!(result.recv_timeout(Duration::from_secs(10)), Ok(7));
    }
}
