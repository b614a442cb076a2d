//! `facefs prefetch`: fills a mount's on-disk store ahead of time (the night
//! before the first backup) by reading every listed face through the mount.
//! Reading is what a backup does, so what it leaves behind is exactly what
//! the backup will find: faces still fresh come from the store at disk
//! speed, the rest are downloaded at the mount's rate limit and stored. Run
//! again after a stop, it picks up where it stopped.

use std::io::{IsTerminal, Read};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use parking_lot::Mutex;

use crate::api::IdKind;

#[derive(Parser, Debug)]
#[command(
    name = "facefs prefetch",
    bin_name = "facefs prefetch",
    about = "Read every listed face of a facefs mount, so that its --cache-dir store holds them all",
    after_help = "Faces still fresh in the store cost no request; the others are downloaded at the \
                  mount's --rate-limit. Ctrl-C stops cleanly; run it again to go on."
)]
pub struct PrefetchCli {
    /// A mounted facefs (started with --cache-dir, or this only warms memory).
    pub mountpoint: PathBuf,

    /// Directories to fill [default: all three]. Each is downloaded on its
    /// own: name only the one your backups read to spend a third of the quota.
    #[arg(value_name = "open_id|union_id|user_id", value_parser = parse_kind)]
    pub kinds: Vec<IdKind>,

    /// Faces read at once (the mount's rate limit is what bounds downloads).
    #[arg(long, value_name = "N", default_value_t = 8, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub jobs: u16,

    /// Without a terminal, how often a progress line is printed.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = crate::daemon::cli::parse_duration)]
    pub progress_every: Duration,
}

fn parse_kind(text: &str) -> Result<IdKind, String> {
    IdKind::parse(text).ok_or_else(|| {
        format!("{text:?} is not a directory of the mount; give open_id, union_id or user_id")
    })
}

/// Set by SIGINT/SIGTERM: no new face is started.
static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

/// Runs the command; returns the exit code (0 all read, 1 failures, 2 bad
/// use, 130 stopped).
pub fn run(cli: PrefetchCli) -> i32 {
    match prefetch(&cli) {
        Ok(code) => code,
        Err(message) => {
            eprintln!("facefs prefetch: {message}");
            2
        }
    }
}

struct Progress {
    done: AtomicUsize,
    bytes: AtomicU64,
    gone: AtomicUsize,
    failed: Mutex<Vec<(PathBuf, std::io::Error)>>,
}

fn prefetch(cli: &PrefetchCli) -> Result<i32, String> {
    check_mount(&cli.mountpoint)?;
    let kinds = if cli.kinds.is_empty() {
        IdKind::ALL.to_vec()
    } else {
        cli.kinds.clone()
    };
    let mut files = Vec::new();
    for kind in kinds {
        let dir = cli.mountpoint.join(kind.as_str());
        let entries = std::fs::read_dir(&dir)
            .and_then(|entries| {
                entries
                    .map(|e| e.map(|e| e.path()))
                    .collect::<Result<Vec<_>, _>>()
            })
            .map_err(|e| {
                format!(
                    "cannot list {}: {e} (the mount's log says why)",
                    printable(&dir)
                )
            })?;
        files.extend(entries);
    }
    // SAFETY: the handler only stores to an atomic.
    unsafe {
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
    }
    let total = files.len();
    eprintln!(
        "facefs prefetch: {total} faces listed under {}",
        printable(&cli.mountpoint)
    );
    let started = Instant::now();
    let progress = Arc::new(Progress {
        done: AtomicUsize::new(0),
        bytes: AtomicU64::new(0),
        gone: AtomicUsize::new(0),
        failed: Mutex::new(Vec::new()),
    });
    let queue = Arc::new(Mutex::new(files.into_iter()));
    let workers: Vec<_> = (0..cli.jobs)
        .map(|_| {
            let queue = queue.clone();
            let progress = progress.clone();
            std::thread::spawn(move || work(&queue, &progress))
        })
        .collect();
    report_until_done(&progress, total, started, &workers, cli.progress_every);
    for worker in workers {
        let _ = worker.join();
    }
    summary(&progress, total, started)
}

/// A facefs mount, or the command has nothing to do.
fn check_mount(mountpoint: &Path) -> Result<(), String> {
    let wanted = std::fs::canonicalize(mountpoint)
        .map_err(|e| format!("cannot use {}: {e}", printable(mountpoint)))?;
    // Mounted by root the type is plain "fuse"; through fusermount3, "fuse.facefs".
    match crate::daemon::mountpoint::mounted_at(&wanted) {
        Some((fstype, source)) if source == "facefs" && matches!(fstype.as_str(), "fuse" | "fuse.facefs") => Ok(()),
        _ => Err(format!(
            "{} is not a facefs mount; mount it first, e.g. `facefs {0} --cache-dir /var/cache/facefs ...`",
            printable(mountpoint)
        )),
    }
}

fn work(queue: &Mutex<std::vec::IntoIter<PathBuf>>, progress: &Progress) {
    let mut buffer = vec![0u8; 64 << 10];
    while !STOP.load(Ordering::SeqCst) {
        let Some(path) = queue.lock().next() else {
            return;
        };
        let read = std::fs::File::open(&path).and_then(|mut file| {
            let mut bytes = 0u64;
            loop {
                match file.read(&mut buffer)? {
                    0 => return Ok(bytes),
                    n => bytes += n as u64,
                }
            }
        });
        match read {
            Ok(bytes) => {
                progress.bytes.fetch_add(bytes, Ordering::Relaxed);
            }
            // Removed since the listing: not a failure of the prefetch.
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                progress.gone.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => progress.failed.lock().push((path, e)),
        }
        progress.done.fetch_add(1, Ordering::Relaxed);
    }
}

/// A progress bar on a terminal; a plain line every `every` otherwise (a
/// log, a cron mail, `systemd-run`).
fn report_until_done(
    progress: &Progress,
    total: usize,
    started: Instant,
    workers: &[std::thread::JoinHandle<()>],
    every: Duration,
) {
    let running = || workers.iter().any(|w| !w.is_finished());
    let failed = || progress.failed.lock().len();
    if std::io::stderr().is_terminal() {
        let bar = indicatif::ProgressBar::new(total as u64);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{bar:40} {pos}/{len} faces  {per_sec}  ETA {eta}  {msg}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        while running() {
            bar.set_position(progress.done.load(Ordering::Relaxed) as u64);
            if failed() > 0 {
                bar.set_message(format!("{} failed", failed()));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        bar.set_position(progress.done.load(Ordering::Relaxed) as u64);
        bar.finish();
        return;
    }
    let mut last = Instant::now();
    while running() {
        std::thread::sleep(Duration::from_millis(100));
        if last.elapsed() >= every {
            last = Instant::now();
            let done = progress.done.load(Ordering::Relaxed);
            let rate = done as f64 / started.elapsed().as_secs_f64().max(0.001);
            let left = if rate > 0.0 {
                humantime::format_duration(Duration::from_secs(
                    ((total - done) as f64 / rate) as u64,
                ))
                .to_string()
            } else {
                "unknown".into()
            };
            eprintln!(
                "facefs prefetch: {done}/{total} faces ({:.0}%), {rate:.1}/s, about {left} left, {} failed",
                100.0 * done as f64 / total.max(1) as f64,
                failed()
            );
        }
    }
}

fn summary(progress: &Progress, total: usize, started: Instant) -> Result<i32, String> {
    let done = progress.done.load(Ordering::Relaxed);
    let gone = progress.gone.load(Ordering::Relaxed);
    let failed = progress.failed.lock();
    let took = humantime::format_duration(Duration::from_secs(started.elapsed().as_secs()));
    eprintln!(
        "facefs prefetch: {} of {total} faces read ({} MiB) in {took}{}",
        done - failed.len() - gone,
        progress.bytes.load(Ordering::Relaxed) >> 20,
        if gone > 0 {
            format!("; {gone} removed since they were listed")
        } else {
            String::new()
        }
    );
    if !failed.is_empty() {
        eprintln!(
            "facefs prefetch: {} failed (the mount's log has the API's reasons):",
            failed.len()
        );
        for (path, e) in failed.iter() {
            eprintln!("  {}: {e}", printable(path));
        }
    }
    if STOP.load(Ordering::SeqCst) {
        eprintln!(
            "facefs prefetch: stopped with {} faces to go; what was read is kept, run it again to go on",
            total - done
        );
        return Ok(130);
    }
    Ok(if failed.is_empty() { 0 } else { 1 })
}

/// A path as it may go to a terminal: ids come from the API, and a
/// control character in one must not drive the terminal or forge a line.
fn printable(path: &std::path::Path) -> String {
    crate::text::shown_whole(&path.to_string_lossy()).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_are_the_three_directories() {
        let cli =
            PrefetchCli::try_parse_from(["facefs prefetch", "/mnt", "user_id", "--jobs", "2"])
                .unwrap();
        assert_eq!(cli.kinds, [IdKind::UserId]);
        let err = PrefetchCli::try_parse_from(["facefs prefetch", "/mnt", "faces"]).unwrap_err();
        assert!(
            err.to_string()
                .contains("give open_id, union_id or user_id"),
            "{err}"
        );
    }
}
