//! facefs under a misbehaving API, over real mounts: the right errno and
//! never wrong bytes, no hangs, throttling honoured, no secret leaked.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use facefs::api::IdKind;
use facefs::emulator::{Emulator, Route, WireFault};
use facefs::fs::layout::face_file_name;

/// Reads every face file of `kind` on 8 threads; returns (path, outcome) pairs.
fn read_all(
    emu: &Emulator,
    mnt: &Mount,
    kind: IdKind,
) -> Vec<(String, Result<Vec<u8>, std::io::Error>)> {
    let paths: Vec<(String, PathBuf)> = emu
        .ids_with_faces(kind)
        .iter()
        .flat_map(|id| {
            [false, true].map(|c| {
                (
                    face_file_name(id, c),
                    mnt.join(kind.as_str()).join(face_file_name(id, c)),
                )
            })
        })
        .collect();
    let queue = Arc::new(Mutex::new(paths));
    let results = Arc::new(Mutex::new(Vec::new()));
    let threads: Vec<_> = (0..8)
        .map(|_| {
            let (queue, results) = (queue.clone(), results.clone());
            std::thread::spawn(move || loop {
                let Some((name, path)) = queue.lock().unwrap().pop() else {
                    return;
                };
                let outcome = std::fs::read(&path);
                results.lock().unwrap().push((name, outcome));
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    Arc::try_unwrap(results).unwrap().into_inner().unwrap()
}

#[test]
#[cfg_attr(not(facefs_mount), ignore = "needs FUSE (scripts/test.sh runs it)")]
fn thirty_percent_failing_face_requests_give_no_wrong_byte_and_no_enoent() {
    // Every kind but the trickle, whose bound tests/http_client.rs checks
    // (at 30% it would spend a request timeout on every third request).
    let faults = WireFault::ALL
        .into_iter()
        .filter(|f| *f != WireFault::Trickle);
    for fault in faults {
        let emu = emulator(small_tenant(100));
        emu.inject(Route::Face, fault, 0.3);
        // Defaults but for the pace and, for hangs, a short request timeout.
        let mnt = Mount::start(&emu, &["--rate-limit", "1000", "--request-timeout", "1s"]);
        let results = read_all(&emu, &mnt, IdKind::OpenId);
        let mut ok = 0;
        for (name, outcome) in &results {
            let id = name.trim_end_matches(".jpg").trim_end_matches(".cropped");
            match outcome {
                Ok(bytes) => {
                    assert_eq!(
                        Some(bytes),
                        emu.face(IdKind::OpenId, id, name.ends_with(".cropped.jpg"))
                            .as_ref(),
                        "{fault:?}: wrong bytes for {name}"
                    );
                    ok += 1;
                }
                Err(e) => assert_eq!(e.raw_os_error(), Some(libc::EIO), "{fault:?}: {name}: {e}"),
            }
        }
        let injected = emu.requests().iter().filter(|r| r.fault.is_some()).count();
        assert!(
            injected > 10,
            "{fault:?}: the faults were injected ({injected})"
        );
        if fault == WireFault::Chunked {
            assert_eq!(ok, results.len(), "a chunked answer is a correct answer");
        }
        // 0.3^5 = 0.24% of requests fail five times in a row: about one
        // read in 400; 97% leaves room for chance, not for a regression.
        assert!(
            ok * 100 >= results.len() * 97,
            "{fault:?}: {ok} of {} reads succeeded",
            results.len()
        );
    }
}

#[test]
#[cfg_attr(not(facefs_mount), ignore = "needs FUSE (scripts/test.sh runs it)")]
fn a_listing_fails_whole_or_shows_everything() {
    // 150 users are three pages; with 70% of list requests failing, some
    // listings fail after their retries, on the first page or a later one.
    let emu = emulator(small_tenant(150));
    emu.inject(Route::ListUsers, WireFault::ServerError, 0.7);
    let mnt = Mount::start(&emu, &["--rate-limit", "1000", "--ttl", "0s"]);
    let full = emu.ids_with_faces(IdKind::UnionId).len() * 2;
    let (mut failed, mut whole) = (0, 0);
    for _ in 0..12 {
        let out = run("ls", &[&mnt.join("union_id")]);
        if out.status.success() {
            assert_eq!(
                stdout(&out).lines().count(),
                full,
                "a listing is never short"
            );
            whole += 1;
        } else {
            assert!(
                stderr(&out).contains("Input/output error"),
                "{}",
                stderr(&out)
            );
            assert!(
                stdout(&out).is_empty(),
                "nothing listed from a failed listing"
            );
            failed += 1;
        }
    }
    assert!(
        failed > 0 && whole > 0,
        "both outcomes were exercised: {failed} failed, {whole} whole"
    );
}

#[test]
#[cfg_attr(
    not(all(facefs_mount, facefs_rsync)),
    ignore = "needs FUSE, rsync (scripts/test.sh runs it)"
)]
fn during_an_outage_rsync_delete_deletes_nothing() {
    let emu = emulator(small_tenant(12));
    let mnt = Mount::start(
        &emu,
        &[
            "--rate-limit",
            "1000",
            // Every listing and face is stale at once: the outage below is
            // seen by the next rsync, with no sleep past a TTL.
            "--ttl",
            "0s",
            "--retry-budget",
            "1s",
        ],
    );
    let backup = TempDir::new("backup");
    let src = format!("{}/", mnt.join("open_id").display());
    assert!(run("rsync", &[&"-a", &"--delete", &src, &backup.path()])
        .status
        .success());
    let before = std::fs::read_dir(backup.path()).unwrap().count();
    assert_eq!(before, emu.ids_with_faces(IdKind::OpenId).len() * 2);

    emu.set_outage(true);
    let out = run("rsync", &[&"-a", &"--delete", &src, &backup.path()]);
    assert!(!out.status.success(), "rsync must report the failure");
    assert_eq!(
        std::fs::read_dir(backup.path()).unwrap().count(),
        before,
        "nothing deleted: {}",
        stderr(&out)
    );
    for id in emu.ids_with_faces(IdKind::OpenId) {
        let copy = std::fs::read(backup.path().join(face_file_name(&id, false))).unwrap();
        assert_eq!(Some(copy), emu.face(IdKind::OpenId, &id, false));
    }

    emu.set_outage(false);
    assert!(
        run("rsync", &[&"-a", &"--delete", &src, &backup.path()])
            .status
            .success(),
        "recovers after the outage"
    );
}

fn spawn_cat(path: &Path) -> std::process::Child {
    Command::new("cat")
        .arg(path)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

#[test]
#[cfg_attr(not(facefs_mount), ignore = "needs FUSE (scripts/test.sh runs it)")]
fn a_hung_download_ends_in_eio_while_everything_else_answers() {
    let emu = emulator(small_tenant(6));
    // One attempt of 5 s: long enough to be sure it is still waiting below.
    let mnt = Mount::start(
        &emu,
        &[
            "--rate-limit",
            "1000",
            "--request-timeout",
            "5s",
            "--retry-budget",
            "1s",
        ],
    );
    let ids = emu.ids_with_faces(IdKind::OpenId);
    let dir = mnt.join("open_id");
    let warm = dir.join(face_file_name(&ids[0], false));
    assert!(std::fs::read(&warm).is_ok());
    assert!(run("ls", &[&dir]).status.success());

    emu.inject(Route::Face, WireFault::Hang, 1.0);
    let mut hung = spawn_cat(&dir.join(face_file_name(&ids[1], false)));
    emu.wait_for_faulted(Route::Face, 1);
    // While it hangs, the root, the listing and a cached face answer.
    assert_eq!(ls_count(mnt.path()), 3);
    assert_eq!(ls_count(&dir), ids.len() * 2);
    assert_eq!(
        std::fs::read(&warm).unwrap(),
        emu.face(IdKind::OpenId, &ids[0], false).unwrap()
    );
    if let Some(status) = hung.try_wait().unwrap() {
        let mut err = String::new();
        std::io::Read::read_to_string(hung.stderr.as_mut().unwrap(), &mut err).unwrap();
        panic!(
            "the hung read ended ({status}: {err}) before the others answered:\n{}",
            mnt.log_text()
        );
    }
    let status = wait_with_timeout(&mut hung, Duration::from_secs(30));
    let mut err = String::new();
    std::io::Read::read_to_string(hung.stderr.as_mut().unwrap(), &mut err).unwrap();
    assert!(!status.success());
    assert!(err.contains("Input/output error"), "{err}");
}

fn ls_count(path: &Path) -> usize {
    let out = run("ls", &[&path]);
    assert!(out.status.success(), "{}", stderr(&out));
    stdout(&out).lines().count()
}

/// fuser 0.18 does not pass FUSE_INTERRUPT on, so a killed reader leaves
/// once its operation's bound (here one 3 s attempt) is reached.
#[test]
#[cfg_attr(not(facefs_mount), ignore = "needs FUSE (scripts/test.sh runs it)")]
fn killed_readers_and_umount_during_hung_downloads() {
    let emu = emulator(small_tenant(6));
    let mut mnt = Mount::start(
        &emu,
        &[
            "--rate-limit",
            "1000",
            "--request-timeout",
            "3s",
            "--retry-budget",
            "1s",
        ],
    );
    let ids = emu.ids_with_faces(IdKind::OpenId);
    let dir = mnt.join("open_id");
    emu.inject(Route::Face, WireFault::Hang, 1.0);
    // A reader killed mid-download leaves a working mount behind.
    let mut killed = spawn_cat(&dir.join(face_file_name(&ids[0], false)));
    emu.wait_for_faulted(Route::Face, 1);
    killed.kill().unwrap();
    assert!(!wait_with_timeout(&mut killed, Duration::from_secs(15)).success());
    assert_eq!(ls_count(mnt.path()), 3);

    // With a download hanging, SIGTERM still unmounts and exits.
    let mut hung = spawn_cat(&dir.join(face_file_name(&ids[1], true)));
    emu.wait_for_faulted(Route::Face, 2);
    let status = mnt.signal_and_wait(libc::SIGTERM);
    assert_eq!(status.code(), Some(0), "{}", mnt.log_text());
    assert!(!is_mounted(mnt.path()));
    assert!(!wait_with_timeout(&mut hung, Duration::from_secs(10)).success());
}

#[test]
#[cfg_attr(not(facefs_mount), ignore = "needs FUSE (scripts/test.sh runs it)")]
fn lazy_umount_detaches_at_once_during_a_hung_download() {
    let emu = emulator(small_tenant(3));
    let mnt = Mount::start(&emu, &["--request-timeout", "2s", "--retry-budget", "1s"]);
    emu.inject(Route::Face, WireFault::Hang, 1.0);
    let id = emu.ids_with_faces(IdKind::OpenId)[0].clone();
    let mut hung = spawn_cat(&mnt.join("open_id").join(face_file_name(&id, false)));
    emu.wait_for_faulted(Route::Face, 1);
    assert!(run("umount", &[&"-l", &mnt.path()]).status.success());
    assert!(!is_mounted(mnt.path()));
    assert!(!wait_with_timeout(&mut hung, Duration::from_secs(20)).success());
}

#[test]
#[cfg_attr(not(facefs_mount), ignore = "needs FUSE (scripts/test.sh runs it)")]
fn twenty_cold_reads_at_the_servers_rate_limit() {
    let emu = emulator(small_tenant(12));
    emu.set_rate_limit(Some(5));
    let mnt = Mount::start(&emu, &["--rate-limit", "5"]);
    let ids = emu.ids_with_faces(IdKind::OpenId);
    let paths: Vec<PathBuf> = ids
        .iter()
        .flat_map(|id| [false, true].map(|c| mnt.join("open_id").join(face_file_name(id, c))))
        .take(20)
        .collect();
    assert_eq!(paths.len(), 20);
    let readers: Vec<_> = paths
        .chunks(5)
        .map(|chunk| {
            let chunk = chunk.to_vec();
            std::thread::spawn(move || {
                chunk
                    .iter()
                    .map(|p| std::fs::read(p).is_ok())
                    .filter(|ok| *ok)
                    .count()
            })
        })
        .collect();
    let ok: usize = readers.into_iter().map(|t| t.join().unwrap()).sum();
    assert_eq!(ok, 20);
    let throttled = emu.requests().iter().filter(|r| r.throttled).count();
    assert!(throttled <= 2, "{throttled} throttled answers");
    assert_eq!(emu.count(Route::Face) - throttled, 20);
}

#[test]
#[cfg_attr(not(facefs_mount), ignore = "needs FUSE (scripts/test.sh runs it)")]
fn a_throttling_answer_is_waited_out() {
    let emu = emulator(small_tenant(4));
    emu.inject(Route::Face, WireFault::Throttle, 1.0);
    let mnt = Mount::start(&emu, &["--retry-budget", "5s"]);
    let id = emu.ids_with_faces(IdKind::OpenId)[0].clone();
    let reader = {
        let path = mnt.join("open_id").join(face_file_name(&id, false));
        std::thread::spawn(move || std::fs::read(path))
    };
    emu.wait_for_faulted(Route::Face, 1);
    emu.clear_faults();
    assert_eq!(
        reader.join().unwrap().unwrap(),
        emu.face(IdKind::OpenId, &id, false).unwrap()
    );
    let throttled = emu
        .requests()
        .iter()
        .filter(|r| r.fault == Some(WireFault::Throttle))
        .count();
    assert!(
        (1..=4).contains(&throttled),
        "retried after each reset, not in a tight loop: {throttled}"
    );
}

#[test]
#[cfg_attr(not(facefs_mount), ignore = "needs FUSE (scripts/test.sh runs it)")]
fn no_secret_or_token_in_a_trace_log_or_argv() {
    let emu = emulator(small_tenant(5));
    let mnt = Mount::start_with_env(&emu, &["--rate-limit", "1000"], &[("FACEFS_LOG", "trace")]);
    let ids = emu.ids_with_faces(IdKind::UserId);
    assert!(std::fs::read(mnt.join("user_id").join(face_file_name(&ids[0], false))).is_ok());
    emu.expire_tokens();
    assert!(std::fs::read(mnt.join("user_id").join(face_file_name(&ids[1], true))).is_ok());
    emu.inject(Route::Face, WireFault::ServerError, 1.0);
    assert!(std::fs::read(mnt.join("user_id").join(face_file_name(&ids[2], true))).is_err());
    // The failure is logged once, with what support needs and without the id.
    let log = mnt.log_text();
    let failures: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("WARN") && l.contains("face failed"))
        .collect();
    assert_eq!(failures.len(), 1, "{failures:?}");
    let line = failures[0];
    assert!(
        line.contains("downloading a user_id face")
            && line.contains("(code 5000)")
            && line.contains("[HTTP 500]"),
        "{line}"
    );
    assert!(line.contains("[log id 2026emulator"), "{line}");
    assert!(!line.contains(&ids[2]), "{line}");
    let pid = mnt.child.as_ref().unwrap().id();
    let argv = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
    let log = mnt.log_text();
    let tokens = emu.issued_tokens();
    assert_eq!(tokens.len(), 2);
    assert!(log.lines().count() > 50, "trace logging was on");
    for secret in tokens.iter().chain([&emu.config().app_secret]) {
        assert!(
            !log.contains(secret.as_str()),
            "{secret} leaked into the log"
        );
        assert!(!String::from_utf8_lossy(&argv).contains(secret.as_str()));
    }
}

#[test]
#[cfg_attr(not(facefs_mount), ignore = "needs FUSE (scripts/test.sh runs it)")]
fn hostile_names_stay_one_path_segment() {
    let emu = emulator(small_tenant(3));
    let mnt = Mount::start(&emu, &["--rate-limit", "1000"]);
    let ids = [
        "..%2F..%2Fauth",
        "a%3Fuser_id_type%3Duser_id",
        "x#y",
        "a b+c",
        "..",
        "a?b=c&d",
        "%",
        "ou_1/../../x",
    ];
    for id in ids {
        let out = run("stat", &[&mnt.join("open_id").join(format!("{id}.jpg"))]);
        assert!(
            stderr(&out).contains("No such file or directory"),
            "{id}: {}",
            stderr(&out)
        );
    }
    let faces: Vec<_> = emu
        .requests()
        .into_iter()
        .filter(|r| r.route != Route::Token)
        .collect();
    // '..' and names with '/' never reach the API; every other id arrives whole.
    let sent: Vec<&str> = ids
        .iter()
        .copied()
        .filter(|id| *id != ".." && !id.contains('/'))
        .collect();
    assert_eq!(faces.len(), sent.len(), "{faces:?}");
    for (request, id) in faces.iter().zip(&sent) {
        assert_eq!(request.route, Route::Face);
        assert_eq!(request.user_id.as_deref(), Some(*id));
        assert_eq!(request.query, "is_cropped=false&user_id_type=open_id");
        assert!(
            request.path.starts_with("/open-apis/acs/v1/users/") && request.path.ends_with("/face"),
            "{}",
            request.path
        );
        assert_eq!(request.path.matches('/').count(), 6, "{}", request.path);
    }
}

#[test]
#[cfg_attr(
    not(all(facefs_mount, facefs_root, facefs_setpriv)),
    ignore = "needs FUSE, root, setpriv (scripts/test.sh runs it)"
)]
fn other_users_cannot_enter_the_mount() {
    let emu = emulator(small_tenant(2));
    let mnt = Mount::start(&emu, &[]);
    let out = run(
        "setpriv",
        &[
            &"--reuid=65534",
            &"--regid=65534",
            &"--clear-groups",
            &"ls",
            &mnt.path(),
        ],
    );
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("Permission denied"),
        "{}",
        stderr(&out)
    );
    assert_eq!(ls_count(mnt.path()), 3, "the owner still can");
}

/// A user list whose every page says "more" and names no new user: `ls`
/// fails with EIO after a bounded number of pages, and facefs stops asking.
#[test]
#[cfg_attr(not(facefs_mount), ignore = "needs FUSE (scripts/test.sh runs it)")]
fn a_listing_that_never_ends_is_eio_after_a_bounded_number_of_pages() {
    let emu = emulator(small_tenant(6));
    let mnt = Mount::start(&emu, &["--rate-limit", "1000"]);
    emu.set_endless_listing(true);
    let out = run("ls", &[&mnt.join("union_id")]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("Input/output error"),
        "{}",
        stderr(&out)
    );
    let pages = emu.count(Route::ListUsers);
    assert!((2..=20).contains(&pages), "{pages} pages");
    assert!(
        !emu.wait_for_log(Duration::from_millis(500), |log| log.len() > pages + 1),
        "facefs went on listing"
    );
    assert!(
        mnt.log_text().contains("named no new user"),
        "{}",
        mnt.log_text()
    );
}

/// SIGTERM while a slow endless listing runs: facefs gives up the listing
/// before its next page, unmounts and exits, and `ls` gets EIO.
#[test]
#[cfg_attr(not(facefs_mount), ignore = "needs FUSE (scripts/test.sh runs it)")]
fn sigterm_ends_a_listing_in_flight() {
    let emu = emulator(small_tenant(6));
    let mut mnt = Mount::start(&emu, &["--rate-limit", "1000"]);
    emu.set_endless_listing(true);
    emu.set_latency(Duration::from_millis(400));
    let lister = Command::new("ls")
        .arg(mnt.join("open_id"))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    assert!(emu.wait_for_log(Duration::from_secs(10), |log| log
        .iter()
        .any(|r| r.route == Route::ListUsers)));
    let start = Instant::now();
    let status = mnt.signal_and_wait(libc::SIGTERM);
    let took = start.elapsed();
    assert_eq!(status.code(), Some(0), "{}", mnt.log_text());
    // Ten stalled pages at 400 ms would take 4 s; stopping takes one page.
    assert!(took < Duration::from_secs(3), "{took:?}");
    let out = lister.wait_with_output().unwrap();
    assert!(!out.status.success());
    let pages = emu.count(Route::ListUsers);
    assert!(pages < 8, "{pages} pages");
}

/// A core dump or another process of the same user reading /proc would get
/// the app secret, the live token and cached faces: facefs is non-dumpable
/// (so the kernel makes its /proc entries root's, whatever its group), and
/// the secret it read from the environment is gone from /proc/PID/environ.
#[test]
#[cfg_attr(
    not(all(facefs_mount, facefs_root, facefs_setpriv)),
    ignore = "needs FUSE, root, setpriv (scripts/test.sh runs it)"
)]
fn the_process_is_not_dumpable_and_its_environment_holds_no_secret() {
    use std::os::unix::fs::MetadataExt;
    let emu = emulator(small_tenant(2));
    let mnt = Mount::start_wrapped(
        &emu,
        &["setpriv", "--regid=4242", "--clear-groups", "--"],
        &[],
        &[],
    );
    let pid = mnt.child.as_ref().unwrap().id();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    assert!(
        status.lines().any(|l| l.starts_with("Gid:\t4242")),
        "facefs runs under group 4242:\n{status}"
    );
    // The files in /proc/PID follow dumpability (the directory itself does not).
    let environ_file = std::fs::metadata(format!("/proc/{pid}/environ")).unwrap();
    assert_eq!(
        environ_file.gid(),
        0,
        "a dumpable process's /proc entries would be group 4242's"
    );
    let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
    let secret = emu.config().app_secret.as_bytes();
    assert!(
        !environ.windows(secret.len()).any(|w| w == secret),
        "the app secret is still in the environment block"
    );
    assert!(is_mounted(mnt.path()));
}

/// 300 threads probing names that do not exist, at the default rate limit
/// of 5 a second and the default 64 workers: a face the listing shows is
/// still read at once — not after the probes queued ahead of it at the
/// rate limit (60 s), nor behind those holding every worker (41-47 s
/// before the worker pool had lanes).
#[test]
#[cfg_attr(not(facefs_mount), ignore = "needs FUSE (scripts/test.sh runs it)")]
fn probes_of_absent_names_do_not_starve_a_listed_face() {
    let emu = emulator(small_tenant(6));
    let mnt = Arc::new(Mount::start(&emu, &["--rate-limit", "5"]));
    let dir = mnt.join("open_id");
    assert_eq!(ls_count(&dir), emu.ids_with_faces(IdKind::OpenId).len() * 2);
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let probers: Vec<_> = (0..300)
        .map(|t| {
            let (dir, stop) = (dir.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut i = 0;
                while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                    let _ = std::fs::metadata(dir.join(format!("ou_probe{t}x{i}.jpg")));
                    i += 1;
                }
            })
        })
        .collect();
    // Let the probes fill the queue.
    assert!(emu.wait_for_log(Duration::from_secs(10), |log| log
        .iter()
        .filter(|r| r.route == Route::Face)
        .count()
        >= 5));
    let id = emu.ids_with_faces(IdKind::OpenId)[0].clone();
    let start = Instant::now();
    let bytes = std::fs::read(dir.join(face_file_name(&id, false))).unwrap();
    let took = start.elapsed();
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    // The probes queued would take a minute at 5 a second: ending facefs
    // ends them (the mount is cleaned up as the test ends).
    let pid = mnt.child.as_ref().unwrap().id() as i32;
    // SAFETY: kill on our own child's pid.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    for prober in probers {
        prober.join().unwrap();
    }
    assert_eq!(Some(bytes), emu.face(IdKind::OpenId, &id, false));
    assert!(
        took < Duration::from_secs(5),
        "the listed face waited {took:?}"
    );
}
