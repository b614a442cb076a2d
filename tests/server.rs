//! facefs on a server: mount(8) with -o options and an fstab line, shared
//! access for a group, systemd's readiness protocol, dead mount points.

mod common;

use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use facefs::api::IdKind;
use facefs::emulator::Route;
use facefs::fs::layout::face_file_name;

/// A directory holding the secret file and an fstab.
fn helper_dir(emu: &facefs::emulator::Emulator) -> (TempDir, PathBuf) {
    let dir = TempDir::new("helper");
    let secret = dir.path().join("secret");
    std::fs::write(&secret, &emu.config().app_secret).unwrap();
    std::fs::set_permissions(&secret, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    (dir, secret)
}

/// mount(8) runs helpers with a fixed PATH, so `facefs` must be in a system
/// directory, as the package installs it: link the test build there for the
/// test's duration (unless a facefs is installed already).
struct InstalledLink(Option<PathBuf>);

impl InstalledLink {
    fn new() -> InstalledLink {
        let link = PathBuf::from("/usr/local/bin/facefs");
        if link.exists() {
            return InstalledLink(None);
        }
        std::os::unix::fs::symlink(FACEFS, &link).unwrap();
        InstalledLink(Some(link))
    }
}

impl Drop for InstalledLink {
    fn drop(&mut self) {
        if let Some(link) = &self.0 {
            let _ = std::fs::remove_file(link);
        }
    }
}

/// One test for both, since both need the link in /usr/local/bin.
#[test]
#[cfg_attr(
    not(all(facefs_mount, facefs_root, facefs_mount_helper)),
    ignore = "needs FUSE, root, mount.fuse3 (scripts/test.sh runs it)"
)]
fn mount_8_with_an_fstab_line_and_with_bad_options() {
    let _link = InstalledLink::new();
    an_fstab_line_mounts_with_mount_and_unmounts_with_umount();
    mount_t_fuse_facefs_rejects_unknown_and_unsafe_options();
}

fn an_fstab_line_mounts_with_mount_and_unmounts_with_umount() {
    let emu = emulator(small_tenant(6));
    let (helper, secret) = helper_dir(&emu);
    let mnt = TempDir::new("fstab-mnt");
    let _cleanup = Unmount(mnt.path());
    let fstab = helper.path().join("fstab");
    let options = format!(
        "_netdev,noauto,ro,nodev,nosuid,allow_other,app_id={},app_secret_file={},base_url={},rate_limit=100",
        emu.config().app_id,
        secret.display(),
        emu.base_url()
    );
    std::fs::write(
        &fstab,
        format!(
            "facefs {} fuse.facefs {options} 0 0\n",
            mnt.path().display()
        ),
    )
    .unwrap();

    // `mount MOUNTPOINT` with this fstab, as `mount /mnt/faces` reads /etc/fstab.
    let out = Command::new("mount")
        .arg("--fstab")
        .arg(&fstab)
        .arg(mnt.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "mount: {}", stderr(&out));
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
    let line = mounts
        .lines()
        .find(|l| l.split(' ').nth(1) == Some(&*mnt.path().to_string_lossy()))
        .unwrap();
    assert!(
        line.contains(" fuse") && line.contains("ro,") && line.contains("allow_other"),
        "{line}"
    );
    let id = emu.ids_with_faces(IdKind::OpenId)[0].clone();
    assert_eq!(
        std::fs::read(mnt.path().join("open_id").join(face_file_name(&id, false))).unwrap(),
        emu.face(IdKind::OpenId, &id, false).unwrap()
    );

    let out = run("umount", &[&mnt.path()]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!is_mounted(mnt.path()));
}

fn mount_t_fuse_facefs_rejects_unknown_and_unsafe_options() {
    let emu = emulator(small_tenant(1));
    let (_helper, secret) = helper_dir(&emu);
    let mnt = TempDir::new("bad-options");
    let _cleanup = Unmount(mnt.path());
    for (options, message) in [
        ("app_secret=s", "app_secret_file"),
        ("colour=blue", "unknown mount option"),
        ("ttl", "needs a value"),
    ] {
        let all = format!("{options},app_id=x,app_secret_file={}", secret.display());
        let out = Command::new("mount")
            .args(["-t", "fuse.facefs", "facefs"])
            .arg(mnt.path())
            .args(["-o", &all])
            .output()
            .unwrap();
        assert!(!out.status.success());
        assert!(
            stderr(&out).contains(message),
            "{options}: {}",
            stderr(&out)
        );
        assert!(!is_mounted(mnt.path()));
    }
    assert_eq!(emu.count(Route::Token), 0);
}

#[test]
#[cfg_attr(
    not(all(facefs_mount, facefs_root, facefs_setpriv)),
    ignore = "needs FUSE, root, setpriv (scripts/test.sh runs it)"
)]
fn a_group_can_be_given_read_access() {
    let emu = emulator(small_tenant(3));
    let mnt = Mount::start(
        &emu,
        &[
            "--allow-other",
            "--gid",
            "65534",
            "--file-mode",
            "0440",
            "--dir-mode",
            "0550",
        ],
    );
    let id = emu.ids_with_faces(IdKind::OpenId)[0].clone();
    let face = mnt.join("open_id").join(face_file_name(&id, true));
    let as_nobody = |args: &[&dyn AsRef<std::ffi::OsStr>]| {
        let mut all: Vec<&dyn AsRef<std::ffi::OsStr>> =
            vec![&"--reuid=65534", &"--regid=65534", &"--clear-groups"];
        all.extend_from_slice(args);
        run("setpriv", &all)
    };
    let out = as_nobody(&[&"cat", &face]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(Some(out.stdout), emu.face(IdKind::OpenId, &id, true));
    let out = run("stat", &[&"-c", &"%a %g", &face]);
    assert_eq!(stdout(&out).trim(), "440 65534");
    // A user outside the group gets nothing.
    let out = run(
        "setpriv",
        &[
            &"--reuid=65533",
            &"--regid=65533",
            &"--clear-groups",
            &"cat",
            &face,
        ],
    );
    assert!(
        stderr(&out).contains("Permission denied"),
        "{}",
        stderr(&out)
    );
}

#[test]
#[cfg_attr(not(facefs_mount), ignore = "needs FUSE (scripts/test.sh runs it)")]
fn systemd_hears_ready_once_the_mount_answers_and_stopping_on_sigterm() {
    let emu = emulator(small_tenant(2));
    let sockdir = TempDir::new("notify");
    let socket_path = sockdir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mnt_dir = TempDir::new("notify-mnt");
    let _cleanup = Unmount(mnt_dir.path());
    let mut child = facefs_command(&emu, mnt_dir.path())
        .arg("-f")
        .env("NOTIFY_SOCKET", &socket_path)
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut buf = [0u8; 256];
    let n = socket.recv(&mut buf).expect("READY=1 within 20 s");
    assert_eq!(&buf[..n], b"READY=1");
    // Ready means answering, at that very moment.
    assert_eq!(std::fs::read_dir(mnt_dir.path()).unwrap().count(), 3);
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let n = socket.recv(&mut buf).expect("STOPPING=1");
    assert_eq!(&buf[..n], b"STOPPING=1");
    assert_eq!(
        wait_with_timeout(&mut child, Duration::from_secs(20)).code(),
        Some(0)
    );
    assert!(!is_mounted(mnt_dir.path()));
}

#[test]
#[cfg_attr(
    not(all(facefs_mount, facefs_root)),
    ignore = "needs FUSE, root (scripts/test.sh runs it)"
)]
fn a_dead_mount_point_is_named_and_recovered_only_when_asked() {
    let emu = emulator(small_tenant(2));
    let mut dead = Mount::start(&emu, &[]);
    let path = dead.path().to_owned();
    let mut child = dead.child.take().unwrap();
    child.kill().unwrap(); // SIGKILL: no chance to unmount
    child.wait().unwrap();
    let probe = std::fs::read_dir(&path).unwrap_err();
    assert_eq!(
        probe.raw_os_error(),
        Some(libc::ENOTCONN),
        "the test made a dead mount"
    );

    let out = facefs_command(&emu, &path).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(
        err.contains("Transport endpoint is not connected")
            && err.contains("umount -l")
            && err.contains("--recover"),
        "{err}"
    );

    let out = facefs_command(&emu, &path)
        .arg("--recover")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(std::fs::read_dir(&path).unwrap().count(), 3);
    // `dead`'s drop unmounts the recovered mount, which ends its process.
}

#[test]
#[cfg_attr(not(facefs_mount), ignore = "needs FUSE (scripts/test.sh runs it)")]
fn a_live_mount_point_is_never_stacked_over() {
    let emu = emulator(small_tenant(2));
    let first = Mount::start(&emu, &[]);
    let out = facefs_command(&emu, first.path()).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("already a mount point"),
        "{}",
        stderr(&out)
    );
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
    assert_eq!(
        mounts
            .lines()
            .filter(|l| l.split(' ').nth(1) == Some(&*first.path().to_string_lossy()))
            .count(),
        1
    );
}

#[test]
#[cfg_attr(not(facefs_mount), ignore = "needs FUSE (scripts/test.sh runs it)")]
fn metrics_move_as_faces_are_read() {
    let emu = emulator(small_tenant(4));
    let port = free_port();
    let mnt = Mount::start(
        &emu,
        &[
            "--metrics-listen",
            &port.to_string(),
            "--rate-limit",
            "1000",
        ],
    );
    let scrape = || scrape_metrics(port);
    let before = scrape();
    assert_eq!(
        metric(&before, "facefs_token_renewals_total"),
        1.0,
        "the token fetched at mount"
    );
    assert_eq!(
        metric(
            &before,
            r#"facefs_api_requests_total{endpoint="face",outcome="ok"}"#
        ),
        0.0
    );

    let id = emu.ids_with_faces(IdKind::OpenId)[0].clone();
    let face = mnt.join("open_id").join(face_file_name(&id, false));
    let bytes = std::fs::read(&face).unwrap();
    assert!(std::fs::read(&face).is_ok());
    assert!(std::fs::metadata(mnt.join("open_id/ou_nobody.jpg")).is_err());
    let after = scrape();
    assert_eq!(
        metric(
            &after,
            r#"facefs_api_requests_total{endpoint="face",outcome="ok"}"#
        ),
        1.0
    );
    assert_eq!(
        metric(
            &after,
            r#"facefs_api_requests_total{endpoint="face",outcome="absent"}"#
        ),
        1.0
    );
    assert_eq!(
        metric(&after, "facefs_cache_misses_total"),
        2.0,
        "one face and one absent name downloaded"
    );
    assert!(
        metric(&after, "facefs_cache_hits_total") >= 1.0,
        "the reads after the lookup hit the cache"
    );
    assert_eq!(metric(&after, "facefs_cache_bytes"), bytes.len() as f64);
    assert_eq!(metric(&after, "facefs_cache_faces"), 1.0);
    assert!(metric(&after, r#"facefs_fuse_op_seconds_count{op="lookup"}"#) >= 2.0);
    // The kernel opens files itself (FUSE_NO_OPEN_SUPPORT): the first OPEN
    // is answered ENOSYS (counted, as every reply is), none comes after it,
    // and reads come by inode.
    assert_eq!(
        metric(&after, r#"facefs_fuse_op_seconds_count{op="open"}"#),
        1.0
    );
    assert_eq!(
        metric(
            &after,
            r#"facefs_fuse_errors_total{op="open",errno="ENOSYS"}"#
        ),
        1.0
    );
    assert!(metric(&after, r#"facefs_fuse_op_seconds_count{op="read"}"#) >= 1.0);
    assert_eq!(
        metric(
            &after,
            r#"facefs_fuse_errors_total{op="lookup",errno="ENOENT"}"#
        ),
        1.0
    );
    assert_eq!(metric(&after, "facefs_downloads_in_flight"), 0.0);
    assert_eq!(emu.count(Route::Face), 2);

    // A warm stat is answered by the kernel's caches: facefs sees nothing.
    let asked = |text: &str| {
        metric(text, r#"facefs_fuse_op_seconds_count{op="lookup"}"#)
            + metric(text, r#"facefs_fuse_op_seconds_count{op="getattr"}"#)
    };
    for _ in 0..3 {
        assert_eq!(std::fs::metadata(&face).unwrap().len(), bytes.len() as u64);
    }
    assert_eq!(
        asked(&scrape()),
        asked(&after),
        "entry and attribute TTLs reach the kernel"
    );
}

/// Any local user can reach the metrics port: an endless header line, 500
/// idle connections and 500 requests announcing a body they never send must
/// not grow the daemon or silence it.
#[test]
#[cfg_attr(not(facefs_mount), ignore = "needs FUSE (scripts/test.sh runs it)")]
fn the_metrics_port_survives_a_flood() {
    use std::io::{Read, Write};
    use std::net::TcpStream;
    let emu = emulator(small_tenant(4));
    let port = free_port();
    let mnt = Mount::start(&emu, &["--metrics-listen", &port.to_string()]);
    let pid = mnt.child.as_ref().unwrap().id();
    let addr = format!("127.0.0.1:{port}");
    let scrape = || -> Option<String> {
        let mut s = TcpStream::connect(&addr).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            .ok()?;
        let mut text = String::new();
        s.read_to_string(&mut text).ok()?;
        text.contains("facefs_cache_faces").then_some(text)
    };
    assert!(scrape().is_some());
    let before = memory_kib(pid, "VmRSS");

    // 64 MiB of one header line: refused once past 8 KiB, never held.
    let mut endless = TcpStream::connect(&addr).unwrap();
    endless
        .write_all(b"GET /metrics HTTP/1.1\r\nX-Long: ")
        .unwrap();
    let chunk = vec![b'a'; 1 << 20];
    let mut sent = 0;
    for _ in 0..64 {
        match endless.write_all(&chunk) {
            Ok(()) => sent += 1,
            Err(_) => break, // the server closed it: that is the point
        }
    }
    assert!(sent < 64, "the server read a 64 MiB header line");
    drop(endless);

    // 500 idle connections and 500 that announce a body and send none.
    let mut held = Vec::new();
    for i in 0..1000 {
        let Ok(mut s) = TcpStream::connect(&addr) else {
            continue;
        };
        if i % 2 == 1 {
            let _ = s
                .write_all(b"POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 1048576\r\n\r\n");
        }
        held.push(s);
    }
    let after = memory_kib(pid, "VmRSS");
    assert!(
        after <= before + 4 * 1024,
        "RSS grew from {before} to {after} KiB"
    );
    // Faces answer throughout, and /metrics once the held connections time out.
    let id = emu.ids_with_faces(IdKind::OpenId)[0].clone();
    assert!(std::fs::read(mnt.join("open_id").join(face_file_name(&id, false))).is_ok());
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let mut answered = false;
    while std::time::Instant::now() < deadline && !answered {
        answered = scrape().is_some();
    }
    assert!(answered, "/metrics silent with 1000 connections held");
    drop(held);
}
