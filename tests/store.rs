//! The on-disk store (--cache-dir) over real mounts: remounts that download
//! nothing, damage and crashes that are never served, outages, permissions.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;
use facefs::api::IdKind;
use facefs::emulator::{Emulator, Route};
use facefs::fs::layout::face_file_name;

/// Every face file of the store under `cache_dir` (unfinished writes too).
fn stored_faces(cache_dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let Ok(tenants) = std::fs::read_dir(cache_dir.join("facefs-v2")) else {
        return files;
    };
    for tenant in tenants.flatten() {
        for prefix in std::fs::read_dir(tenant.path().join("faces"))
            .into_iter()
            .flatten()
            .flatten()
        {
            for file in std::fs::read_dir(prefix.path()).unwrap().flatten() {
                files.push(file.path());
            }
        }
    }
    files.sort();
    files
}

fn listing_file(cache_dir: &Path, kind: IdKind) -> PathBuf {
    let tenant = std::fs::read_dir(cache_dir.join("facefs-v2"))
        .unwrap()
        .flatten()
        .next()
        .unwrap()
        .path();
    tenant.join("listings").join(kind.as_str())
}

fn mount_with_store(emu: &Emulator, cache_dir: &Path, extra: &[&str]) -> Mount {
    let mut args = vec![
        "--rate-limit",
        "500",
        "--cache-dir",
        cache_dir.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    Mount::start(emu, &args)
}

/// Reads every face of `kind` through the mount and checks it against the
/// emulator's bytes.
fn read_and_check_all(emu: &Emulator, mnt: &Mount, kind: IdKind) {
    for id in emu.ids_with_faces(kind) {
        for cropped in [false, true] {
            let path = mnt.join(kind.as_str()).join(face_file_name(&id, cropped));
            let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            assert!(
                Some(bytes) == emu.face(kind, &id, cropped),
                "{} differs",
                path.display()
            );
        }
    }
}

/// Waits until the mount's store has been scanned (its log says so).
fn wait_for_scan(mnt: &Mount) {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !mnt.log_text().contains("scanned in") {
        assert!(
            std::time::Instant::now() < deadline,
            "no scan:\n{}",
            mnt.log_text()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn rsync(src: &str, dest: &Path, extra: &[&str]) -> std::process::Output {
    let mut args: Vec<&dyn AsRef<std::ffi::OsStr>> = vec![&"-a", &"--stats"];
    for arg in extra {
        args.push(arg);
    }
    args.push(&src);
    args.push(&dest);
    run("rsync", &args)
}

#[test]
#[cfg_attr(
    not(all(facefs_mount, facefs_rsync)),
    ignore = "needs FUSE, rsync (scripts/test.sh runs it)"
)]
fn a_remount_over_a_warm_store_downloads_nothing_and_rsync_copies_nothing() {
    let emu = emulator(small_tenant(30));
    let cache = TempDir::new("store");
    let backup = TempDir::new("backup");
    let files = emu.ids_with_faces(IdKind::OpenId).len() * 2;
    {
        let mnt = mount_with_store(&emu, cache.path(), &[]);
        let src = format!("{}/", mnt.join("open_id").display());
        let first = rsync(&src, backup.path(), &[]);
        assert!(first.status.success(), "{}", stderr(&first));
        assert_eq!(emu.count(Route::Face), files);
    }
    assert_eq!(stored_faces(cache.path()).len(), files);
    let lists = emu.count(Route::ListUsers);

    let port = free_port();
    let mut mnt = mount_with_store(&emu, cache.path(), &["--metrics-listen", &port.to_string()]);
    let ops = |op: &str| {
        let metrics = scrape_metrics(port);
        metric(
            &metrics,
            &format!("facefs_fuse_op_seconds_count{{op=\"{op}\"}}"),
        )
    };
    // The root's attributes, which the kernel does not know at first.
    std::fs::metadata(mnt.path()).unwrap();
    assert_eq!(ops("getattr"), 1.0);
    let src = format!("{}/", mnt.join("open_id").display());
    let second = rsync(&src, backup.path(), &[]);
    assert!(second.status.success(), "{}", stderr(&second));
    assert!(
        stdout(&second).contains("Number of regular files transferred: 0"),
        "same sizes and mtimes after the remount:\n{}",
        stdout(&second)
    );
    assert_eq!(emu.count(Route::Face), files, "no face downloaded again");
    assert_eq!(emu.count(Route::ListUsers), lists, "nor the listing");
    // The listing carried what the store's headers say (READDIRPLUS):
    // rsync's lstat of each face asked facefs nothing.
    assert_eq!(ops("lookup"), 1.0, "open_id/ itself, and no stored face");
    assert_eq!(ops("getattr"), 1.0, "the root's, before the walk");
    assert!(ops("readdirplus") >= 1.0);
    let metrics = scrape_metrics(port);
    assert_eq!(metric(&metrics, "facefs_kernel_faces"), files as f64);
    read_and_check_all(&emu, &mnt, IdKind::OpenId);
    assert_eq!(emu.count(Route::Face), files);
    let metrics = scrape_metrics(port);
    assert_eq!(
        metric(&metrics, "facefs_store_hits_total"),
        files as f64,
        "each face read from the store once"
    );
    assert_eq!(metric(&metrics, "facefs_store_writes_total"), 0.0);
    assert_eq!(metric(&metrics, "facefs_store_faces"), files as f64);
    assert!(metric(&metrics, "facefs_store_bytes") > 0.0);
    // Unmounted with the metrics server up: a clean end (its thread once
    // panicked, dropping the core's HTTP client inside its async runtime).
    let status = mnt.unmount_and_wait();
    let log = mnt.log_text();
    assert!(
        status.success() && !log.contains("panicked"),
        "{status}\n{log}"
    );
}

#[test]
#[cfg_attr(not(facefs_mount), ignore = "needs FUSE (scripts/test.sh runs it)")]
fn damaged_entries_are_downloaded_again_and_never_served() {
    let emu = emulator(small_tenant(20));
    let cache = TempDir::new("store");
    {
        let mnt = mount_with_store(&emu, cache.path(), &[]);
        read_and_check_all(&emu, &mnt, IdKind::OpenId);
    }
    let downloads = emu.count(Route::Face);
    let files = stored_faces(cache.path());
    assert_eq!(files.len(), downloads);
    // Torn, truncated to nothing, zeroed, garbage, one bit flipped, and an
    // entry of another format version.
    let len = |p: &Path| std::fs::metadata(p).unwrap().len();
    let open = |p: &Path| std::fs::OpenOptions::new().write(true).open(p).unwrap();
    open(&files[0]).set_len(len(&files[0]) / 2).unwrap();
    open(&files[1]).set_len(0).unwrap();
    std::fs::write(&files[2], vec![0u8; len(&files[2]) as usize]).unwrap();
    std::fs::write(&files[3], b"GIF89a not what was stored").unwrap();
    let mut flipped = std::fs::read(&files[4]).unwrap();
    let middle = flipped.len() / 2 + 40;
    flipped[middle] ^= 0x01;
    std::fs::write(&files[4], flipped).unwrap();
    let mut older = std::fs::read(&files[5]).unwrap();
    older[7] = b'0';
    std::fs::write(&files[5], older).unwrap();
    // And the listing, garbled.
    std::fs::write(
        listing_file(cache.path(), IdKind::OpenId),
        b"facefsL1\x00\x01",
    )
    .unwrap();
    let lists = emu.count(Route::ListUsers);

    let port = free_port();
    let mnt = mount_with_store(&emu, cache.path(), &["--metrics-listen", &port.to_string()]);
    let names = std::fs::read_dir(mnt.join("open_id")).unwrap().count();
    assert_eq!(names, downloads, "the listing is whole again");
    assert!(emu.count(Route::ListUsers) > lists, "listed again");
    read_and_check_all(&emu, &mnt, IdKind::OpenId);
    assert_eq!(
        emu.count(Route::Face),
        downloads + 6,
        "exactly the six damaged faces were downloaded again"
    );
    let metrics = scrape_metrics(port);
    assert_eq!(
        metric(&metrics, "facefs_store_discarded_total"),
        7.0,
        "six faces and the listing"
    );
    // Logged at the 1st, 2nd, 4th... discard, not at each.
    let log = mnt.log_text();
    let lines = log.matches("discarding the stored open_id face").count();
    assert!((2..=3).contains(&lines), "{lines} lines:\n{log}");
    assert!(
        log.contains("discarding the stored open_id listing"),
        "{log}"
    );
}

#[test]
#[cfg_attr(
    not(all(facefs_mount, facefs_rsync)),
    ignore = "needs FUSE, rsync (scripts/test.sh runs it)"
)]
fn kill_9_in_the_middle_of_a_backup_leaves_nothing_wrong_behind() {
    let emu = emulator(small_tenant(60));
    emu.set_latency(Duration::from_millis(30));
    let cache = TempDir::new("store");
    let backup = TempDir::new("backup");
    let files = emu.ids_with_faces(IdKind::UserId).len() * 2;
    let killed;
    {
        let mut mnt = mount_with_store(&emu, cache.path(), &["--max-parallel", "8"]);
        let src = format!("{}/", mnt.join("user_id").display());
        let mut backup_run = std::process::Command::new("rsync")
            .args(["-a", &src])
            .arg(backup.path())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        assert!(emu.wait_for_log(Duration::from_secs(30), |log| {
            log.iter().filter(|r| r.route == Route::Face).count() >= files / 3
        }));
        killed = mnt.child.as_ref().unwrap().id();
        mnt.child.as_mut().unwrap().kill().unwrap();
        mnt.child.as_mut().unwrap().wait().unwrap();
        let status = wait_with_timeout(&mut backup_run, Duration::from_secs(30));
        assert!(!status.success(), "rsync must notice the mount died");
    }
    let stored_before = stored_faces(cache.path())
        .iter()
        .filter(|p| p.extension().is_none())
        .count();
    assert!(
        stored_before > 0 && stored_before < files,
        "{stored_before} of {files}"
    );
    let downloads = emu.count(Route::Face);

    let mnt = mount_with_store(&emu, cache.path(), &[]);
    read_and_check_all(&emu, &mnt, IdKind::UserId);
    wait_for_scan(&mnt);
    let again = emu.count(Route::Face) - downloads;
    assert_eq!(
        again,
        files - stored_before,
        "what was stored whole is served from the store"
    );
    // The scan removed whatever the killed process left half-written (the
    // new mount's own writes, behind its reads, may still be under way).
    let half_written: Vec<_> = stored_faces(cache.path())
        .into_iter()
        .filter(|p| p.to_string_lossy().contains(&format!(".{killed}.")))
        .collect();
    assert!(half_written.is_empty(), "{half_written:?}");
}

#[test]
#[cfg_attr(
    not(all(facefs_mount, facefs_rsync)),
    ignore = "needs FUSE, rsync (scripts/test.sh runs it)"
)]
fn during_an_outage_stored_faces_are_served_but_rsync_delete_deletes_nothing() {
    let emu = emulator(small_tenant(12));
    let cache = TempDir::new("store");
    let backup = TempDir::new("backup");
    // Everything is stale at once, so the outage is seen with no sleep.
    let stale_at_once = ["--ttl", "0s", "--retry-budget", "1s"];
    {
        let mnt = mount_with_store(&emu, cache.path(), &stale_at_once);
        let src = format!("{}/", mnt.join("open_id").display());
        assert!(rsync(&src, backup.path(), &["--delete"]).status.success());
    }
    let before = std::fs::read_dir(backup.path()).unwrap().count();
    let id = emu.ids_with_faces(IdKind::OpenId)[0].clone();
    let file = face_file_name(&id, false);

    let mnt = mount_with_store(&emu, cache.path(), &stale_at_once);
    emu.set_outage(true);
    let served = std::fs::read(mnt.join("open_id").join(&file)).unwrap();
    assert!(
        Some(served) == emu.face(IdKind::OpenId, &id, false),
        "the stored bytes"
    );
    let src = format!("{}/", mnt.join("open_id").display());
    let out = rsync(&src, backup.path(), &["--delete"]);
    assert!(!out.status.success(), "a listing is never served stale");
    assert_eq!(
        std::fs::read_dir(backup.path()).unwrap().count(),
        before,
        "nothing deleted"
    );
    assert!(
        mnt.log_text()
            .contains("serving faces up to 3days past their TTL"),
        "{}",
        mnt.log_text()
    );
    drop(mnt);

    // With --max-stale 0 the same read is EIO.
    emu.set_outage(false);
    let strict = mount_with_store(
        &emu,
        cache.path(),
        &[&stale_at_once[..], &["--max-stale", "0s"]].concat(),
    );
    emu.set_outage(true);
    let err = std::fs::read(strict.join("open_id").join(&file)).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EIO));
}

#[test]
#[cfg_attr(not(facefs_mount), ignore = "needs FUSE (scripts/test.sh runs it)")]
fn the_store_is_private_and_a_shared_or_loose_one_is_refused() {
    let emu = emulator(small_tenant(4));
    let parent = TempDir::new("store-parent");
    let cache = parent.path().join("new/cache");
    let mnt = mount_with_store(&emu, &cache, &[]);
    read_and_check_all(&emu, &mnt, IdKind::OpenId);
    // The store is written behind the reads: no temporary file left.
    wait_until(Duration::from_secs(10), "the store's writes done", || {
        let files = stored_faces(&cache);
        !files.is_empty() && files.iter().all(|p| p.extension().is_none())
    });
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&cache), 0o700);
    for file in stored_faces(&cache) {
        assert_eq!(mode(&file), 0o600, "{}", file.display());
        let mut dir = file.parent().unwrap();
        while dir != cache {
            assert_eq!(mode(dir), 0o700, "{}", dir.display());
            dir = dir.parent().unwrap();
        }
    }

    // A second mount of the tenant on the same store is refused.
    let other = TempDir::new("mnt2");
    let out = facefs_command(&emu, other.path())
        .args(["-f", "--cache-dir"])
        .arg(&cache)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("two mounts cannot share one store"),
        "{}",
        stderr(&out)
    );
    drop(mnt);

    // A cache directory others can write to is refused, with the fix.
    std::fs::set_permissions(&cache, std::fs::Permissions::from_mode(0o777)).unwrap();
    let out = facefs_command(&emu, other.path())
        .args(["-f", "--cache-dir"])
        .arg(&cache)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(stderr(&out).contains("chmod 700"), "{}", stderr(&out));
    assert!(!is_mounted(other.path()));
}

#[test]
#[cfg_attr(not(facefs_mount), ignore = "needs FUSE (scripts/test.sh runs it)")]
fn the_store_stays_within_its_size() {
    let emu = emulator(small_tenant(40));
    let cache = TempDir::new("store");
    let limit = 256 * 1024;
    let mnt = mount_with_store(&emu, cache.path(), &["--cache-dir-size", "256KiB"]);
    read_and_check_all(&emu, &mnt, IdKind::OpenId);
    let used: u64 = stored_faces(cache.path())
        .iter()
        .map(|p| {
            use std::os::unix::fs::MetadataExt;
            std::fs::metadata(p).unwrap().blocks() * 512
        })
        .sum();
    assert!(
        used > 0 && used <= limit,
        "{used} bytes stored, limit {limit}"
    );
    let log = mnt.log_text();
    assert!(!log.contains("cannot store"), "{log}");
}

fn prefetch(mnt: &Mount, args: &[&str]) -> std::process::Output {
    std::process::Command::new(FACEFS)
        .arg("prefetch")
        .arg(mnt.path())
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap()
}

#[test]
#[cfg_attr(not(facefs_mount), ignore = "needs FUSE (scripts/test.sh runs it)")]
fn prefetch_fills_the_store_resumes_and_lists_what_failed() {
    let emu = emulator(small_tenant(30));
    let cache = TempDir::new("store");
    let files = emu.ids_with_faces(IdKind::OpenId).len() * 2;
    {
        let mnt = mount_with_store(&emu, cache.path(), &["--retry-budget", "100ms"]);
        let out = prefetch(&mnt, &["open_id"]);
        assert!(out.status.success(), "{}\n{}", stderr(&out), mnt.log_text());
        let report = stderr(&out);
        assert!(
            report.contains(&format!("{files} of {files} faces read")),
            "{report}"
        );
        assert_eq!(emu.count(Route::Face), files);
        // Stored behind the reads.
        wait_until(Duration::from_secs(10), "every face stored", || {
            stored_faces(cache.path()).len() == files
        });
        // Run again: everything is fresh, nothing is downloaded.
        assert!(prefetch(&mnt, &["open_id"]).status.success());
        assert_eq!(emu.count(Route::Face), files);

        // Failures are listed by name and make the exit code 1.
        emu.inject(Route::Face, facefs::emulator::WireFault::ServerError, 1.0);
        let out = prefetch(&mnt, &["union_id", "--jobs", "8"]);
        assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
        let report = stderr(&out);
        assert!(report.contains(&format!("{files} failed")), "{report}");
        let first = emu.ids_with_faces(IdKind::UnionId)[0].clone();
        assert!(report.contains(&face_file_name(&first, false)), "{report}");
        emu.clear_faults();
    }
    // A remount's prefetch finds the store full.
    let downloads = emu.count(Route::Face);
    let mnt = mount_with_store(&emu, cache.path(), &[]);
    assert!(prefetch(&mnt, &["open_id"]).status.success());
    assert_eq!(emu.count(Route::Face), downloads);

    let elsewhere = TempDir::new("not-a-mount");
    let out = std::process::Command::new(FACEFS)
        .args(["prefetch"])
        .arg(elsewhere.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("is not a facefs mount; mount it first"),
        "{}",
        stderr(&out)
    );
}

/// Ids are the API's: one that holds terminal escapes or a newline reaches
/// the terminal escaped (as `ls -b` shows it), never as a control.
#[test]
#[cfg_attr(not(facefs_mount), ignore = "needs FUSE (scripts/test.sh runs it)")]
fn prefetch_prints_hostile_ids_escaped() {
    use facefs::emulator::tenant::{TenantSpec, HOSTILE_USER_IDS};
    let emu = emulator(facefs::emulator::EmulatorConfig {
        tenant: TenantSpec {
            users: 4,
            odd_user_ids: HOSTILE_USER_IDS.map(str::to_owned).to_vec(),
            ..TenantSpec::default()
        },
        ..facefs::emulator::EmulatorConfig::default()
    });
    let cache = TempDir::new("store");
    let mnt = mount_with_store(&emu, cache.path(), &["--retry-budget", "100ms"]);
    // Failures are printed by name.
    emu.inject(Route::Face, facefs::emulator::WireFault::ServerError, 1.0);
    let out = prefetch(&mnt, &["user_id"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let report = stderr(&out);
    assert!(
        !report.contains('\x1b') && !report.contains('\x07') && !report.contains('\u{202e}'),
        "{report:?}"
    );
    assert!(!report.contains("\nFAKE"), "{report:?}");
    assert!(report.contains("esc\\033]0;pwned\\007"), "{report:?}");
    assert!(
        report.contains("line\\nFAKE: all 3 faces ok.jpg"),
        "{report:?}"
    );
    assert!(report.contains("bidi\\u{202e}gpj.exe"), "{report:?}");
}

#[test]
#[cfg_attr(not(facefs_mount), ignore = "needs FUSE (scripts/test.sh runs it)")]
fn prefetch_stops_cleanly_on_ctrl_c_and_goes_on_when_run_again() {
    let emu = emulator(small_tenant(30));
    let cache = TempDir::new("store");
    let files = emu.ids_with_faces(IdKind::UserId).len() * 2;
    // Slow enough that the interrupt comes in the middle.
    let mnt = Mount::start(
        &emu,
        &[
            "--rate-limit",
            "20",
            "--cache-dir",
            cache.path().to_str().unwrap(),
        ],
    );
    let mut run = std::process::Command::new(FACEFS)
        .arg("prefetch")
        .arg(mnt.path())
        .args(["user_id", "--jobs", "2", "--progress-every", "200ms"])
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // At 20 requests a second, 10 take half a second: two progress lines.
    assert!(emu.wait_for_log(Duration::from_secs(20), |log| {
        log.iter().filter(|r| r.route == Route::Face).count() >= 10
    }));
    // SAFETY: kill on our own child's pid.
    unsafe { libc::kill(run.id() as i32, libc::SIGINT) };
    let status = wait_with_timeout(&mut run, Duration::from_secs(20));
    let mut report = String::new();
    std::io::Read::read_to_string(&mut run.stderr.take().unwrap(), &mut report).unwrap();
    assert_eq!(status.code(), Some(130), "{report}");
    assert!(report.contains("run it again to go on"), "{report}");
    // Not on a terminal: plain progress lines, with done/total, rate and time left.
    let line = report
        .lines()
        .find(|l| l.contains(&format!("/{files} faces (")))
        .unwrap_or_else(|| panic!("no progress line:\n{report}"));
    assert!(
        line.contains("/s, about ") && line.contains(" left, 0 failed"),
        "{line}"
    );
    let stopped_at = emu.count(Route::Face);
    assert!(stopped_at < files, "stopped early: {stopped_at} of {files}");

    let out = prefetch(&mnt, &["user_id"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        emu.count(Route::Face),
        files,
        "each face downloaded once over both runs"
    );
}

#[test]
#[cfg_attr(
    not(all(facefs_mount, facefs_root)),
    ignore = "needs FUSE and root, to mount a small tmpfs (scripts/test.sh runs it)"
)]
fn the_store_never_takes_the_last_5_percent_of_its_file_system() {
    let emu = emulator(small_tenant(20));
    let fs_dir = TempDir::new("small-fs");
    let ok = run(
        "mount",
        &[
            &"-t",
            &"tmpfs",
            &"-o",
            &"size=4m,mode=0700",
            &"tmpfs",
            &fs_dir.path(),
        ],
    );
    assert!(ok.status.success(), "{}", stderr(&ok));
    let _unmount = Unmount(fs_dir.path());
    // Leave about 300 KiB of the 4 MiB free: room for a few faces above the
    // 5% floor (205 KiB), not for all of them.
    let filler = vec![0u8; 4096 * 1024 - 300 * 1024];
    std::fs::write(fs_dir.path().join("filler"), filler).unwrap();
    let cache = fs_dir.path().join("cache");
    let mnt = mount_with_store(&emu, &cache, &[]);
    read_and_check_all(&emu, &mnt, IdKind::OpenId);
    let stats = nix_statvfs(fs_dir.path());
    assert!(
        stats.0 * 20 >= stats.1,
        "free {} of {} bytes: under 5%",
        stats.0,
        stats.1
    );
    let stored = stored_faces(&cache).len();
    let files = emu.ids_with_faces(IdKind::OpenId).len() * 2;
    // The least recently used were deleted to keep the floor.
    assert!(stored > 0 && stored < files, "{stored} of {files} stored");
}

/// Free and total bytes of the file system holding `path`.
fn nix_statvfs(path: &Path) -> (u64, u64) {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
    // SAFETY: statvfs fills the zeroed struct; c is NUL-terminated.
    let stats = unsafe {
        let mut stats: libc::statvfs = std::mem::zeroed();
        assert_eq!(libc::statvfs(c.as_ptr(), &mut stats), 0);
        stats
    };
    (
        stats.f_bavail * stats.f_frsize,
        stats.f_blocks * stats.f_frsize,
    )
}

#[test]
#[cfg_attr(not(facefs_mount), ignore = "needs FUSE (scripts/test.sh runs it)")]
fn umount_then_mount_at_once_finds_the_store_free() {
    let emu = emulator(small_tenant(4));
    let cache = TempDir::new("store");
    let mut first = mount_with_store(&emu, cache.path(), &[]);
    read_and_check_all(&emu, &first, IdKind::OpenId);
    // umount returns before the old process has exited.
    assert!(run("umount", &[&first.path()]).status.success());
    let second = mount_with_store(&emu, cache.path(), &[]);
    read_and_check_all(&emu, &second, IdKind::OpenId);
    // The old process has exited on its own, cleanly.
    let old = first.child.as_mut().unwrap();
    assert_eq!(
        wait_with_timeout(old, Duration::from_secs(20)).code(),
        Some(0)
    );
}

/// Whoever reads the store's disk sees neither a face nor an id; whoever
/// writes to it cannot put one face under another's name; the unsealed
/// store of an older facefs goes at the first mount.
#[test]
#[cfg_attr(not(facefs_mount), ignore = "needs FUSE (scripts/test.sh runs it)")]
fn the_store_shows_no_face_or_id_and_a_moved_face_is_not_served() {
    let emu = emulator(small_tenant(10));
    let cache = TempDir::new("sealed-store");
    {
        let mnt = mount_with_store(&emu, cache.path(), &[]);
        assert!(std::fs::read_dir(mnt.join("open_id")).unwrap().count() > 0);
        read_and_check_all(&emu, &mnt, IdKind::OpenId);
    }
    let files = stored_faces(cache.path());
    assert!(files.len() >= 2);
    let mut ids: Vec<String> = IdKind::ALL
        .into_iter()
        .flat_map(|kind| [emu.ids_with_faces(kind), emu.ids_without_faces(kind)].concat())
        .collect();
    ids.retain(|id| id.len() >= 3);
    let tenant_dir = files[0].ancestors().nth(3).unwrap().to_owned();
    let mut everything = files.clone();
    let listing = listing_file(cache.path(), IdKind::OpenId);
    assert!(listing.exists(), "the listing was stored");
    everything.push(listing);
    for file in &everything {
        let bytes = std::fs::read(file).unwrap();
        assert!(!holds_a_jpeg(&emu, &bytes), "{file:?} holds a JPEG");
        for id in &ids {
            let shown = |b: &[u8]| b.windows(id.len()).any(|w| w == id.as_bytes());
            assert!(!shown(&bytes), "{file:?} holds {id}");
            assert!(
                !file.to_string_lossy().contains(id.as_str()),
                "{file:?} names {id}"
            );
        }
    }

    // Two faces' files swapped, and an older facefs's unsealed store beside.
    let (a, b) = (
        std::fs::read(&files[0]).unwrap(),
        std::fs::read(&files[1]).unwrap(),
    );
    std::fs::write(&files[0], &b).unwrap();
    std::fs::write(&files[1], &a).unwrap();
    let old_store = cache
        .path()
        .join("facefs-v1")
        .join(tenant_dir.file_name().unwrap());
    std::fs::create_dir_all(old_store.join("faces/ab")).unwrap();
    std::fs::write(old_store.join("faces/ab/cdef"), b"\xff\xd8\xff an old face").unwrap();
    let downloads = emu.count(Route::Face);

    let port = free_port();
    let mnt = mount_with_store(&emu, cache.path(), &["--metrics-listen", &port.to_string()]);
    read_and_check_all(&emu, &mnt, IdKind::OpenId);
    assert_eq!(
        emu.count(Route::Face),
        downloads + 2,
        "the two moved faces, downloaded again"
    );
    let metrics = scrape_metrics(port);
    assert_eq!(metric(&metrics, "facefs_store_discarded_total"), 2.0);
    assert!(!old_store.exists(), "the unsealed store is still there");
    assert!(mnt.log_text().contains("removed the unsealed store"));
}

/// With --data-key-file the store is sealed with that key: another key opens
/// none of it (each face is downloaded again, never served wrong), and a
/// key too short to be one is refused with the way to make one.
#[test]
#[cfg_attr(not(facefs_mount), ignore = "needs FUSE (scripts/test.sh runs it)")]
fn a_data_key_seals_the_store_and_another_key_opens_none_of_it() {
    use std::os::unix::fs::PermissionsExt;
    let emu = emulator(small_tenant(6));
    let cache = TempDir::new("data-key");
    let keys = TempDir::new("keys");
    let write_key = |name: &str, text: &str| {
        let path = keys.path().join(name);
        std::fs::write(&path, text).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        path.to_string_lossy().into_owned()
    };
    let first = write_key("first", "0123456789abcdef0123456789abcdef-first");
    let second = write_key("second", "0123456789abcdef0123456789abcdef-second");
    {
        let mnt = mount_with_store(&emu, cache.path(), &["--data-key-file", &first]);
        read_and_check_all(&emu, &mnt, IdKind::OpenId);
    }
    let downloads = emu.count(Route::Face);
    {
        let mnt = mount_with_store(&emu, cache.path(), &["--data-key-file", &first]);
        read_and_check_all(&emu, &mnt, IdKind::OpenId);
        assert_eq!(
            emu.count(Route::Face),
            downloads,
            "the same key opens the store"
        );
    }
    let mnt = mount_with_store(&emu, cache.path(), &["--data-key-file", &second]);
    read_and_check_all(&emu, &mnt, IdKind::OpenId);
    assert_eq!(
        emu.count(Route::Face),
        2 * downloads,
        "another key opens nothing: every face downloaded again"
    );
    let log = mnt.log_text();
    assert_eq!(
        log.matches("sealed under another key").count(),
        1,
        "said once:\n{log}"
    );
    drop(mnt);

    let short = write_key("short", "too short");
    let dir = TempDir::new("short-key");
    let _cleanup = Unmount(dir.path());
    let out = facefs_command(&emu, dir.path())
        .args(["--data-key-file", &short, "-f"])
        .output()
        .unwrap();
    assert_ne!(out.status.code(), Some(0));
    assert!(
        stderr(&out).contains("head -c 32 /dev/urandom"),
        "{}",
        stderr(&out)
    );
    assert!(!is_mounted(dir.path()));
}

/// A store on a disk that takes 5 s per access (every store file out of
/// the page cache): each read of a stored face gives up on the store after
/// its bound and downloads instead — seconds, not the minutes a hung disk
/// cost — and the right bytes.
#[test]
#[cfg_attr(not(facefs_mount), ignore = "needs FUSE (scripts/test.sh runs it)")]
fn a_slow_store_disk_costs_downloads_not_hangs() {
    use facefs::fs::store::bounded::STORE_WAIT;
    let emu = emulator(small_tenant(8));
    let cache = TempDir::new("store");
    let ids: Vec<String> = emu
        .ids_with_faces(IdKind::OpenId)
        .into_iter()
        .take(8)
        .collect();
    {
        let mnt = mount_with_store(&emu, cache.path(), &[]);
        for id in &ids {
            std::fs::read(mnt.join("open_id").join(face_file_name(id, false))).unwrap();
        }
    }
    assert_eq!(
        stored_faces(cache.path()).len(),
        ids.len(),
        "stored at unmount"
    );
    let downloads = emu.count(Route::Face);
    let port = free_port();
    let mnt = Mount::start_with_env(
        &emu,
        &[
            "--rate-limit",
            "500",
            "--cache-dir",
            cache.path().to_str().unwrap(),
            "--metrics-listen",
            &format!("127.0.0.1:{port}"),
        ],
        &[("FACEFS_TEST_STORE_DELAY", "5s")],
    );
    // After the mount's start (its scan), so that nothing it does first
    // brings the files back in.
    wait_for_scan(&mnt);
    // Out of the page cache: the next reads must reach the "disk". Advice
    // per file is not always taken (pages in use stay); as root, drop the
    // clean page cache outright.
    for file in stored_faces(cache.path()) {
        let f = std::fs::File::open(&file).unwrap();
        // Dirty pages stay cached: written out first.
        f.sync_all().unwrap();
        // SAFETY: a valid descriptor; advice only.
        unsafe {
            libc::posix_fadvise(
                std::os::fd::AsRawFd::as_raw_fd(&f),
                0,
                0,
                libc::POSIX_FADV_DONTNEED,
            )
        };
    }
    let _ = std::fs::write("/proc/sys/vm/drop_caches", "1");
    let started = Instant::now();
    let slowest = std::thread::scope(|scope| {
        let readers: Vec<_> = ids
            .iter()
            .map(|id| {
                let (mnt, emu) = (&mnt, &emu);
                scope.spawn(move || {
                    let start = Instant::now();
                    let bytes =
                        std::fs::read(mnt.join("open_id").join(face_file_name(id, false))).unwrap();
                    assert_eq!(Some(bytes), emu.face(IdKind::OpenId, id, false));
                    start.elapsed()
                })
            })
            .collect();
        readers
            .into_iter()
            .map(|r| r.join().unwrap())
            .max()
            .unwrap()
    });
    // The header and then the bytes each wait out the bound, then a download.
    assert!(
        slowest < STORE_WAIT * 2 + Duration::from_secs(3),
        "a read took {slowest:?}"
    );
    eprintln!("8 reads over a slow store in {:?}", started.elapsed());
    // Each face the page cache no longer held was given up on and
    // downloaded (eviction by fadvise is advice: a few may still be cached,
    // and those are read from memory, as they should be).
    let downloaded = emu.count(Route::Face) - downloads;
    let metrics = scrape_metrics(port);
    let abandoned = metric(&metrics, "facefs_store_abandoned_total") as usize;
    assert!(
        downloaded >= ids.len() / 2,
        "{downloaded} downloaded\n{}",
        mnt.log_text()
    );
    assert!(
        abandoned >= downloaded,
        "{abandoned} abandoned, {downloaded} downloaded"
    );
}
