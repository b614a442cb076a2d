//! Real mounts over the emulator, exercised with the programs users run:
//! ls, cat, cmp, stat, identify, rsync, touch, rm, mkdir, mv, ln.

mod common;

use std::collections::BTreeSet;
use std::process::Stdio;
use std::time::Duration;

use common::*;
use facefs::api::IdKind;
use facefs::emulator::tenant::ODD_USER_IDS;
use facefs::emulator::{EmulatorConfig, Route};
use facefs::fs::layout::face_file_name;

fn expected_names(emu: &facefs::emulator::Emulator, kind: IdKind) -> BTreeSet<String> {
    emu.ids_with_faces(kind)
        .iter()
        .flat_map(|id| [face_file_name(id, false), face_file_name(id, true)])
        .collect()
}

fn ls(path: &std::path::Path) -> BTreeSet<String> {
    let out = run("ls", &[&"-1A", &path]);
    assert!(
        out.status.success(),
        "ls {}: {}",
        path.display(),
        stderr(&out)
    );
    stdout(&out).lines().map(str::to_owned).collect()
}

#[test]
#[cfg_attr(not(facefs_mount), ignore = "needs FUSE (scripts/test.sh runs it)")]
fn ls_shows_every_user_with_a_face_and_downloads_none() {
    // 75 users: two list pages of 50, users without faces among them.
    let emu = emulator(small_tenant(75));
    let mnt = Mount::start(&emu, &[]);
    assert_eq!(
        ls(mnt.path()),
        BTreeSet::from(["open_id".into(), "union_id".into(), "user_id".into()])
    );
    for kind in IdKind::ALL {
        let names = ls(&mnt.join(kind.as_str()));
        assert_eq!(names, expected_names(&emu, kind), "{kind}");
        assert!(names.len() < 150, "users without faces are not listed");
    }
    assert_eq!(emu.count(Route::Face), 0, "listing downloads no face");
    assert_eq!(emu.count(Route::ListUsers), 3 * 2);
    // Within the TTL a directory is listed from memory: pages are fetched once.
    for kind in IdKind::ALL {
        assert_eq!(ls(&mnt.join(kind.as_str())), expected_names(&emu, kind));
    }
    assert_eq!(
        emu.count(Route::ListUsers),
        3 * 2,
        "list pages once per TTL"
    );
}

#[test]
#[cfg_attr(not(facefs_mount), ignore = "needs FUSE (scripts/test.sh runs it)")]
fn listings_with_attributes_hide_no_name_and_the_kernel_gives_every_lookup_back() {
    // 400 users: faces for about 600 names, several READDIRPLUS answers of
    // 32 KiB each, none of whose faces facefs knows yet.
    let emu = emulator(small_tenant(400));
    let port = free_port();
    let mut mnt = Mount::start(
        &emu,
        &[
            "--rate-limit",
            "1000",
            "--metrics-listen",
            &port.to_string(),
        ],
    );
    let dir = mnt.join("open_id");
    let expected = expected_names(&emu, IdKind::OpenId);
    let scrape = || scrape_metrics(port);
    let ops = |metrics: &str, op: &str| {
        metric(
            metrics,
            &format!("facefs_fuse_op_seconds_count{{op=\"{op}\"}}"),
        )
    };
    // Names only, and names with attributes: every one, none hidden (an
    // entry numbered 0 would be).
    assert_eq!(ls(&dir), expected);
    // What readdir itself gives (Python's scandir reads d_ino, no stat).
    let scan = "import os,sys\nfor e in os.scandir(sys.argv[1]): print(e.inode(), e.name)";
    let out = run("python3", &[&"-c", &scan, &dir]);
    let text = stdout(&out);
    let numbered: Vec<(&str, &str)> = text.lines().filter_map(|l| l.split_once(' ')).collect();
    assert_eq!(numbered.len(), expected.len(), "{}", stderr(&out));
    assert!(
        numbered.iter().all(|(ino, _)| *ino != "0"),
        "no entry numbered 0"
    );
    let metrics = scrape();
    assert!(ops(&metrics, "readdirplus") >= 1.0, "{metrics}");
    let before = ops(&metrics, "lookup");
    assert_eq!(emu.count(Route::Face), 0, "listing downloads no face");
    // A stat of each face the listing could not describe (backwards, so
    // read-ahead does not learn any first): each is looked up once (the
    // listed inode is the one the lookup finds), as without READDIRPLUS.
    let walk = "import os,sys\nfor n in reversed([e.name for e in os.scandir(sys.argv[1])]): os.stat(os.path.join(sys.argv[1], n))";
    let out = run("python3", &[&"-c", &walk, &dir]);
    assert!(out.status.success(), "{}", stderr(&out));
    let metrics = scrape();
    assert_eq!(ops(&metrics, "lookup") - before, expected.len() as f64);
    assert_eq!(
        metric(&metrics, "facefs_kernel_faces"),
        expected.len() as f64
    );
    for id in emu.ids_with_faces(IdKind::OpenId).iter().take(3) {
        let path = dir.join(face_file_name(id, false));
        let size = std::fs::metadata(&path).unwrap().len();
        assert_eq!(
            Some(size as usize),
            emu.face(IdKind::OpenId, id, false).map(|f| f.len())
        );
    }
    // Another walk, now with every face known: no LOOKUP at all.
    let before = ops(&scrape(), "lookup");
    assert_eq!(run("ls", &[&"-lA", &dir]).status.code(), Some(0));
    assert_eq!(ops(&scrape(), "lookup"), before);
    // When the kernel lets go of its inodes, it forgets every lookup it
    // was handed, listed or looked up: none is left over, none missing.
    std::fs::write("/proc/sys/vm/drop_caches", "2").unwrap();
    wait_until(
        Duration::from_secs(10),
        "every face inode forgotten",
        || metric(&scrape(), "facefs_kernel_faces") == 0.0,
    );
    assert_eq!(ls(&dir), expected, "and listed again whole");
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
fn cat_gives_the_api_bytes_in_every_directory() {
    let emu = emulator(small_tenant(12));
    let mnt = Mount::start(&emu, &["--rate-limit", "200"]);
    let scratch = TempDir::new("expected");
    let mut checked = 0;
    for kind in IdKind::ALL {
        for id in emu.ids_with_faces(kind) {
            for cropped in [false, true] {
                let path = mnt.join(kind.as_str()).join(face_file_name(&id, cropped));
                let out = run("cat", &[&path]);
                assert!(
                    out.status.success(),
                    "cat {}: {}",
                    path.display(),
                    stderr(&out)
                );
                let expected = emu.face(kind, &id, cropped).unwrap();
                assert_eq!(out.stdout, expected, "{}", path.display());
                // cmp against the bytes written out, as a user would check a copy.
                let copy = scratch.path().join("face");
                std::fs::write(&copy, &expected).unwrap();
                assert!(run("cmp", &[&path, &copy]).status.success());
                checked += 1;
            }
        }
    }
    // Every odd user_id went through, and full and cropped faces differ.
    assert!(ODD_USER_IDS
        .iter()
        .all(|id| emu.ids_with_faces(IdKind::UserId).contains(&id.to_string())));
    assert_ne!(
        emu.face(IdKind::UserId, "100%", false),
        emu.face(IdKind::UserId, "100%", true)
    );
    assert_eq!(
        emu.count(Route::Face),
        checked,
        "one download per file; stat and read share it"
    );
}

#[test]
#[cfg_attr(not(facefs_mount), ignore = "needs FUSE (scripts/test.sh runs it)")]
fn stat_reports_the_exact_size_before_any_read() {
    let emu = emulator(small_tenant(10));
    let mnt = Mount::start(&emu, &[]);
    for (kind, id) in [
        (IdKind::UserId, "emp 001"),
        (IdKind::UserId, "张伟"),
        (IdKind::OpenId, &*emu.ids_with_faces(IdKind::OpenId)[3]),
    ] {
        for cropped in [false, true] {
            let path = mnt.join(kind.as_str()).join(face_file_name(id, cropped));
            let out = run("stat", &[&"-c", &"%s %F %a", &path]);
            let expected = emu.face(kind, id, cropped).unwrap().len();
            assert_eq!(
                stdout(&out).trim(),
                format!("{expected} regular file 400"),
                "{}",
                path.display()
            );
        }
    }
    let out = run("stat", &[&"-c", &"%F %a %U", &mnt.join("open_id")]);
    assert_eq!(stdout(&out).trim(), "directory 700 root");
}

#[test]
#[cfg_attr(not(facefs_mount), ignore = "needs FUSE (scripts/test.sh runs it)")]
fn missing_users_faces_and_foreign_names_are_enoent() {
    let emu = emulator(small_tenant(20));
    let mnt = Mount::start(&emu, &[]);
    let faceless = emu.ids_without_faces(IdKind::OpenId)[0].clone();
    for rel in [
        "open_id/ou_nobody.jpg".to_owned(),
        format!("open_id/{faceless}.jpg"),
        format!("open_id/{faceless}.cropped.jpg"),
    ] {
        let out = run("cat", &[&mnt.join(&rel)]);
        assert!(!out.status.success());
        assert!(
            stderr(&out).contains("No such file or directory"),
            "{rel}: {}",
            stderr(&out)
        );
    }
    let face_requests = emu.count(Route::Face);
    assert_eq!(face_requests, 3);
    for rel in [
        "open_id/x.png",
        "open_id/abc",
        "open_id/.jpg",
        "faces",
        "user_id/a.jpeg",
    ] {
        let out = run("stat", &[&mnt.join(rel)]);
        assert!(
            stderr(&out).contains("No such file or directory"),
            "{rel}: {}",
            stderr(&out)
        );
    }
    assert_eq!(
        emu.count(Route::Face),
        face_requests,
        "names outside the layout cost no request"
    );
}

#[test]
#[cfg_attr(not(facefs_mount), ignore = "needs FUSE (scripts/test.sh runs it)")]
fn every_write_is_erofs() {
    let emu = emulator(small_tenant(3));
    let mnt = Mount::start(&emu, &[]);
    let id = emu.ids_with_faces(IdKind::OpenId)[0].clone();
    let face = mnt.join("open_id").join(face_file_name(&id, false));
    let dir = mnt.join("open_id");
    let attempts: Vec<(&str, Vec<String>)> = vec![
        ("touch", vec![dir.join("new.jpg").display().to_string()]),
        (
            "sh",
            vec!["-c".into(), format!("echo x > '{}'", face.display())],
        ),
        (
            "sh",
            vec!["-c".into(), format!("echo x >> '{}'", face.display())],
        ),
        ("rm", vec!["-f".into(), face.display().to_string()]),
        ("mkdir", vec![dir.join("sub").display().to_string()]),
        (
            "mv",
            vec![
                face.display().to_string(),
                dir.join("moved.jpg").display().to_string(),
            ],
        ),
        (
            "ln",
            vec![
                "-s".into(),
                "/etc/passwd".into(),
                dir.join("link.jpg").display().to_string(),
            ],
        ),
        ("chmod", vec!["644".into(), face.display().to_string()]),
        ("touch", vec![face.display().to_string()]),
        ("rmdir", vec![dir.display().to_string()]),
    ];
    for (program, args) in attempts {
        let out = std::process::Command::new(program)
            .args(&args)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(!out.status.success(), "{program} {args:?} succeeded");
        assert!(
            stderr(&out).contains("Read-only file system"),
            "{program} {args:?}: {}",
            stderr(&out)
        );
    }
    // The face is still there and whole.
    assert_eq!(
        std::fs::read(&face).unwrap(),
        emu.face(IdKind::OpenId, &id, false).unwrap()
    );
}

#[test]
#[cfg_attr(
    not(all(facefs_mount, facefs_identify)),
    ignore = "needs FUSE, ImageMagick (scripts/test.sh runs it)"
)]
fn identify_decodes_faces() {
    let emu = emulator(small_tenant(8));
    let mnt = Mount::start(&emu, &[]);
    // ImageMagick itself expands `?` and `*` in file names, so plain ids here.
    let full = run("identify", &[&mnt.join("user_id/emp 001.jpg")]);
    assert!(
        stdout(&full).contains("JPEG 120x150"),
        "{}{}",
        stdout(&full),
        stderr(&full)
    );
    let cropped = run("identify", &[&mnt.join("user_id/张伟.cropped.jpg")]);
    assert!(
        stdout(&cropped).contains("JPEG 90x90"),
        "{}{}",
        stdout(&cropped),
        stderr(&cropped)
    );
}

#[test]
#[cfg_attr(
    not(all(facefs_mount, facefs_rsync)),
    ignore = "needs FUSE, rsync (scripts/test.sh runs it)"
)]
fn rsync_copies_byte_exact_and_a_second_run_transfers_nothing() {
    let emu = emulator(small_tenant(40));
    let mnt = Mount::start(&emu, &["--rate-limit", "200"]);
    let backup = TempDir::new("backup");
    let src = format!("{}/", mnt.join("user_id").display());
    let first = run("rsync", &[&"-a", &src, &backup.path()]);
    assert!(first.status.success(), "{}", stderr(&first));
    let expected = expected_names(&emu, IdKind::UserId);
    assert_eq!(ls(backup.path()), expected);
    for id in emu.ids_with_faces(IdKind::UserId) {
        for cropped in [false, true] {
            let copy = std::fs::read(backup.path().join(face_file_name(&id, cropped))).unwrap();
            assert_eq!(Some(copy), emu.face(IdKind::UserId, &id, cropped), "{id}");
        }
    }
    assert_eq!(
        emu.count(Route::Face),
        expected.len(),
        "exactly one download per file"
    );

    let second = run("rsync", &[&"-a", &"--stats", &src, &backup.path()]);
    assert!(second.status.success(), "{}", stderr(&second));
    let stats = stdout(&second);
    assert!(
        stats.contains("Number of regular files transferred: 0"),
        "{stats}"
    );
    assert_eq!(
        emu.count(Route::Face),
        expected.len(),
        "the second run is served from the cache"
    );
}

#[test]
#[cfg_attr(not(facefs_mount), ignore = "needs FUSE (scripts/test.sh runs it)")]
fn an_expired_token_mid_session_is_invisible_to_readers() {
    let emu = emulator(small_tenant(5));
    let mnt = Mount::start(&emu, &[]);
    let ids = emu.ids_with_faces(IdKind::UnionId);
    let read = |id: &str| std::fs::read(mnt.join("union_id").join(face_file_name(id, false)));
    assert_eq!(
        read(&ids[0]).unwrap(),
        emu.face(IdKind::UnionId, &ids[0], false).unwrap()
    );
    emu.expire_tokens();
    assert_eq!(
        read(&ids[1]).unwrap(),
        emu.face(IdKind::UnionId, &ids[1], false).unwrap()
    );
    assert_eq!(emu.count(Route::Token), 2, "renewed once");
}

#[test]
#[cfg_attr(not(facefs_mount), ignore = "needs FUSE (scripts/test.sh runs it)")]
fn a_missing_scope_is_permission_denied_and_logged() {
    let emu = emulator(EmulatorConfig {
        deny_user_id_scope: true,
        ..small_tenant(4)
    });
    let mnt = Mount::start(&emu, &[]);
    let out = run("ls", &[&mnt.join("user_id")]);
    assert!(
        stderr(&out).contains("Permission denied"),
        "{}",
        stderr(&out)
    );
    let out = run("cat", &[&mnt.join("user_id/emp 001.jpg")]);
    assert!(
        stderr(&out).contains("Permission denied"),
        "{}",
        stderr(&out)
    );
    assert!(
        mnt.log_text().contains("contact:user.employee_id:readonly"),
        "{}",
        mnt.log_text()
    );
    assert_eq!(
        ls(&mnt.join("open_id")).len(),
        8,
        "other directories still work"
    );
}

#[test]
#[cfg_attr(not(facefs_mount), ignore = "needs FUSE (scripts/test.sh runs it)")]
fn stat_walks_download_each_face_once_with_read_ahead() {
    // 150 users: enough for the read-ahead window to grow to its cap.
    let emu = emulator(small_tenant(150));
    let mnt = Mount::start(&emu, &["--rate-limit", "1000", "--max-parallel", "8"]);
    let dir = mnt.join("union_id");
    let files = expected_names(&emu, IdKind::UnionId).len();
    let out = run("ls", &[&"-l", &dir]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        stdout(&out)
            .lines()
            .filter(|l| l.starts_with("-r--------"))
            .count(),
        files
    );
    assert_eq!(
        emu.count(Route::Face),
        files,
        "ls -l: one request per file, read-ahead included"
    );
    for (program, args) in [("find", vec!["-size", "+1k"]), ("du", vec!["-s"])] {
        let mut cmd = std::process::Command::new(program);
        cmd.arg(&dir).args(&args);
        assert!(cmd.output().unwrap().status.success(), "{program}");
    }
    let find = run("find", &[&dir, &"-type", &"f", &"-size", &"+1k"]);
    assert_eq!(
        stdout(&find).lines().count(),
        files,
        "every face is over 1 KiB"
    );
    assert_eq!(
        emu.count(Route::Face),
        files,
        "find and du were served from the cache"
    );
}

#[test]
#[cfg_attr(not(facefs_mount), ignore = "needs FUSE (scripts/test.sh runs it)")]
fn concurrent_readers_of_one_face_share_one_download() {
    let emu = emulator(small_tenant(3));
    let mnt = Mount::start(&emu, &[]);
    let path = mnt.join("user_id/plus+sign.jpg");
    let readers: Vec<_> = (0..8)
        .map(|_| {
            std::process::Command::new("cat")
                .arg(&path)
                .stdout(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for reader in readers {
        let out = reader.wait_with_output().unwrap();
        assert_eq!(
            Some(out.stdout),
            emu.face(IdKind::UserId, "plus+sign", false)
        );
    }
    assert_eq!(emu.count(Route::Face), 1);
}

#[test]
#[cfg_attr(not(facefs_mount), ignore = "needs FUSE (scripts/test.sh runs it)")]
fn sigterm_and_sigint_unmount_and_exit_zero() {
    for signal in [libc::SIGTERM, libc::SIGINT] {
        let emu = emulator(small_tenant(2));
        let mut mnt = Mount::start(&emu, &[]);
        assert_eq!(ls(mnt.path()).len(), 3);
        let status = mnt.signal_and_wait(signal);
        assert_eq!(
            status.code(),
            Some(0),
            "signal {signal}: {}",
            mnt.log_text()
        );
        assert!(!is_mounted(mnt.path()));
    }
}

/// SIGUSR1 and SIGUSR2, whose default would kill facefs and leave a dead
/// mount, are ignored: the mount goes on serving.
#[test]
#[cfg_attr(not(facefs_mount), ignore = "needs FUSE (scripts/test.sh runs it)")]
fn user_signals_leave_the_mount_serving() {
    let emu = emulator(small_tenant(4));
    let mnt = Mount::start(&emu, &[]);
    let pid = mnt.child.as_ref().unwrap().id() as i32;
    for signal in [libc::SIGUSR1, libc::SIGUSR2] {
        // SAFETY: kill on our own child's pid.
        assert_eq!(unsafe { libc::kill(pid, signal) }, 0);
    }
    wait_until(Duration::from_secs(5), "both signals logged", || {
        mnt.log_text()
            .matches("ignored, facefs goes on serving")
            .count()
            == 2
    });
    let id = &emu.ids_with_faces(IdKind::OpenId)[0];
    let bytes = std::fs::read(mnt.join("open_id").join(face_file_name(id, false))).unwrap();
    assert_eq!(Some(bytes), emu.face(IdKind::OpenId, id, false));
    assert!(mnt.child.as_ref().is_some_and(|c| {
        // SAFETY: signal 0 only checks that the process exists.
        unsafe { libc::kill(c.id() as i32, 0) == 0 }
    }));
}

/// A mount point with files in it is refused (the mount would hide them),
/// naming the fix; `--allow-non-empty` (or `-o nonempty`) mounts over it.
#[test]
#[cfg_attr(not(facefs_mount), ignore = "needs FUSE (scripts/test.sh runs it)")]
fn a_non_empty_mount_point_is_refused_unless_allowed() {
    let emu = emulator(small_tenant(2));
    let dir = TempDir::new("nonempty");
    let _cleanup = Unmount(dir.path());
    std::fs::write(dir.path().join("notes.txt"), b"mine").unwrap();
    let out = facefs_command(&emu, dir.path()).arg("-f").output().unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("not empty") && stderr(&out).contains("--allow-non-empty"));
    assert!(!is_mounted(dir.path()));
    for allow in ["--allow-non-empty", "-ononempty"] {
        let out = facefs_command(&emu, dir.path())
            .arg(allow)
            .output()
            .unwrap();
        assert!(out.status.success(), "{allow}: {}", stderr(&out));
        assert!(is_mounted(dir.path()));
        assert_eq!(ls(dir.path()).len(), 3, "the mount shows its own root");
        force_unmount(dir.path());
        wait_until(Duration::from_secs(10), "unmounted", || {
            !is_mounted(dir.path())
        });
    }
    assert_eq!(
        std::fs::read(dir.path().join("notes.txt")).unwrap(),
        b"mine"
    );
}

/// A user the listing shows without a face is "does not exist" from the
/// listing, without the API, and the kernel keeps that answer: more stats
/// within `--negative-ttl` do not reach facefs at all.
#[test]
#[cfg_attr(not(facefs_mount), ignore = "needs FUSE (scripts/test.sh runs it)")]
fn the_listing_answers_for_users_without_a_face_and_the_kernel_keeps_it() {
    let emu = emulator(small_tenant(20));
    let port = free_port();
    let mnt = Mount::start(&emu, &["--metrics-listen", &port.to_string()]);
    let dir = mnt.join("open_id");
    assert_eq!(ls(&dir).len(), 2 * emu.ids_with_faces(IdKind::OpenId).len());
    let faces = emu.count(Route::Face);
    let lookups = || {
        metric(
            &scrape_metrics(port),
            "facefs_fuse_op_seconds_count{op=\"lookup\"}",
        )
    };
    let faceless = emu.ids_without_faces(IdKind::OpenId);
    assert!(!faceless.is_empty());
    let before = lookups();
    for id in &faceless {
        for _ in 0..3 {
            let err = std::fs::metadata(dir.join(face_file_name(id, false))).unwrap_err();
            assert_eq!(err.raw_os_error(), Some(libc::ENOENT));
        }
    }
    assert_eq!(emu.count(Route::Face), faces, "the API was not asked");
    assert_eq!(
        lookups() - before,
        faceless.len() as f64,
        "one lookup a name"
    );
}

/// 100,000 users listed in all three directories: every name shown, and the
/// daemon's peak memory within 128 MiB with nothing in the face cache.
#[test]
#[cfg_attr(not(facefs_mount), ignore = "needs FUSE (scripts/test.sh runs it)")]
fn a_hundred_thousand_users_list_in_bounded_memory() {
    let emu = emulator(small_tenant(100_000));
    let mnt = Mount::start(&emu, &["--rate-limit", "10000"]);
    let mut shown = 0;
    for kind in IdKind::ALL {
        let out = run("ls", &[&"-f", &mnt.join(kind.as_str())]);
        assert!(out.status.success(), "{}", stderr(&out));
        let names = stdout(&out).lines().count() - 2;
        assert_eq!(names, emu.ids_with_faces(kind).len() * 2, "{kind}");
        shown += names;
    }
    assert!(shown > 500_000);
    let peak = memory_kib(mnt.child.as_ref().unwrap().id(), "VmHWM");
    eprintln!("peak RSS after listing {shown} names: {peak} KiB");
    assert!(peak <= 128 * 1024, "peak RSS {peak} KiB");
    assert_eq!(emu.count(Route::Face), 0);
}

/// Every stat of a name that does not exist is one answer from the API and
/// then nothing kept but a bounded negative cache: memory stops growing.
#[test]
#[cfg_attr(not(facefs_mount), ignore = "needs FUSE (scripts/test.sh runs it)")]
fn stats_of_absent_names_do_not_grow_memory() {
    let emu = emulator(small_tenant(3));
    let mnt = Mount::start(&emu, &["--rate-limit", "10000"]);
    let pid = mnt.child.as_ref().unwrap().id();
    let dir = mnt.join("open_id");
    let stat_absent = |range: std::ops::Range<u32>| {
        for i in range {
            let err = std::fs::metadata(dir.join(format!("ou_absent{i:08}.jpg"))).unwrap_err();
            assert_eq!(err.raw_os_error(), Some(libc::ENOENT));
        }
    };
    stat_absent(0..3000);
    let after_warm_up = memory_kib(pid, "VmRSS");
    stat_absent(3000..20_000);
    let after = memory_kib(pid, "VmRSS");
    assert_eq!(emu.count(Route::Face), 20_000, "each name asked once");
    assert!(
        after <= after_warm_up + 4 * 1024,
        "RSS grew from {after_warm_up} to {after} KiB over 17,000 absent names"
    );
}

/// 64 readers at once of faces of 8 MiB through an 8 MiB cache: every byte
/// right, and the daemon's peak memory within what the README promises (the
/// cache, plus 64 MiB of faces in flight or held by open files, plus up to
/// 0.5 MiB of connection buffers per parallel download), not 64 x 8 MiB.
#[test]
#[cfg_attr(not(facefs_mount), ignore = "needs FUSE (scripts/test.sh runs it)")]
fn large_answers_in_parallel_stay_within_the_memory_bound() {
    let mut config = small_tenant(80);
    config.tenant.pad_faces_to = 8 << 20;
    let emu = emulator(config);
    let mnt = Mount::start(
        &emu,
        &[
            "--rate-limit",
            "1000",
            "--cache-size",
            "8MiB",
            "--max-parallel",
            "64",
        ],
    );
    let pid = mnt.child.as_ref().unwrap().id();
    let baseline = memory_kib(pid, "VmHWM");
    let ids: Vec<String> = emu
        .ids_with_faces(IdKind::OpenId)
        .into_iter()
        .take(64)
        .collect();
    assert_eq!(ids.len(), 64);
    let readers: Vec<_> = ids
        .iter()
        .map(|id| {
            let path = mnt.join("open_id").join(face_file_name(id, false));
            std::thread::spawn(move || std::fs::read(path))
        })
        .collect();
    for (reader, id) in readers.into_iter().zip(&ids) {
        let bytes = reader
            .join()
            .unwrap()
            .unwrap_or_else(|e| panic!("{id}: {e}\n{}", mnt.log_text()));
        assert_eq!(Some(bytes), emu.face(IdKind::OpenId, id, false), "{id}");
    }
    let peak = memory_kib(pid, "VmHWM");
    eprintln!("peak RSS {peak} KiB (baseline {baseline} KiB) after 64 parallel 8 MiB reads");
    // Each face downloaded at most twice (once for the size at lookup, once
    // for the bytes, as the cache holds one face): a read in progress keeps
    // its face between its reads, and read-ahead stays within the cache.
    let requests = emu.count(Route::Face);
    assert!(
        requests <= 2 * 64 + 8,
        "{requests} face requests for 64 files"
    );
    // The bound, plus 16 MiB for threads and the allocator.
    assert!(
        peak <= baseline + (8 + 64 + 32 + 16) * 1024,
        "peak {peak} KiB, baseline {baseline} KiB"
    );
}

/// An open file is one version of a face: re-enrolled while a program has
/// it open, the program reads the old bytes to the end (or fails), never a
/// mix, while the path shows the new face under a new inode.
#[test]
#[cfg_attr(not(facefs_mount), ignore = "needs FUSE (scripts/test.sh runs it)")]
fn an_open_file_keeps_its_version_while_the_path_shows_the_new_one() {
    use std::io::Read;
    use std::os::unix::fs::MetadataExt;
    let emu = emulator(small_tenant(4));
    let mnt = Mount::start(&emu, &["--ttl", "1s", "--rate-limit", "1000"]);
    let id = emu.ids_with_faces(IdKind::OpenId)[0].clone();
    let path = mnt.join("open_id").join(face_file_name(&id, false));
    let old = emu.face(IdKind::OpenId, &id, false).unwrap();
    let mut file = std::fs::File::open(&path).unwrap();
    let old_ino = file.metadata().unwrap().ino();
    let mut first = vec![0; 100];
    file.read_exact(&mut first).unwrap();
    assert_eq!(first, old[..100]);

    let new: Vec<u8> = old.iter().rev().copied().chain(*b"re-enrolled").collect();
    emu.replace_face(IdKind::OpenId, &id, false, new.clone());
    // Past the TTL the path shows the new face, under another inode.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while std::fs::metadata(&path).unwrap().ino() == old_ino {
        assert!(
            std::time::Instant::now() < deadline,
            "the name never showed the new face"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(std::fs::read(&path).unwrap(), new);
    // The old file reads on: the rest of the old bytes, or an error.
    let mut rest = Vec::new();
    match file.read_to_end(&mut rest) {
        Ok(_) => assert_eq!([first, rest].concat(), old, "old bytes to the end"),
        Err(e) => assert_eq!(e.raw_os_error(), Some(libc::EIO), "{e}"),
    }
}

/// Python's `open()` asks every file whether it is a terminal (an ioctl):
/// the answer is ENOTTY, and nothing is logged for it.
#[test]
#[cfg_attr(not(facefs_mount), ignore = "needs FUSE (scripts/test.sh runs it)")]
fn ioctl_is_enotty_and_python_reads_faces_quietly() {
    let emu = emulator(small_tenant(3));
    let mnt = Mount::start(&emu, &[]);
    let id = emu.ids_with_faces(IdKind::OpenId)[0].clone();
    let path = mnt.join("open_id").join(face_file_name(&id, false));
    let script = "import fcntl, sys, termios\n\
                  f = open(sys.argv[1], 'rb')\n\
                  data = f.read()\n\
                  try:\n    fcntl.ioctl(f, termios.TCGETS)\n    print('no error')\n\
                  except OSError as e:\n    print(e.errno, len(data))\n";
    let out = run("python3", &[&"-c", &script, &path]);
    assert!(out.status.success(), "{}", stderr(&out));
    let face = emu.face(IdKind::OpenId, &id, false).unwrap();
    assert_eq!(
        stdout(&out).trim(),
        format!("{} {}", libc::ENOTTY, face.len())
    );
    assert!(
        !mnt.log_text().contains("Not Implemented"),
        "{}",
        mnt.log_text()
    );
}
