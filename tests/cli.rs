//! The command's contract: detaching only once mounted, failing cleanly on
//! bad credentials or flags, `umount` ending the process, and `--demo`.

mod common;

use std::path::Path;

use std::time::{Duration, Instant};

use common::*;
use facefs::emulator::Route;

/// Pids of running facefs processes whose command line names `mountpoint`.
fn facefs_pids(mountpoint: &Path) -> Vec<u32> {
    let needle = mountpoint.to_string_lossy().into_owned();
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let zombie = stat
                .rsplit(')')
                .next()
                .is_some_and(|rest| rest.trim_start().starts_with('Z'));
            !zombie
                && cmdline
                    .split(|b| *b == 0)
                    .any(|arg| arg == needle.as_bytes())
                && cmdline.starts_with(FACEFS.as_bytes())
        })
        .collect()
}

fn wait_gone(mountpoint: &Path) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if facefs_pids(mountpoint).is_empty() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

#[test]
#[cfg_attr(not(facefs_mount), ignore = "needs FUSE (scripts/test.sh runs it)")]
fn detached_mount_is_ready_on_exit_and_umount_ends_it() {
    let emu = emulator(small_tenant(4));
    let dir = TempDir::new("detached");
    let _cleanup = Unmount(dir.path());
    let log = dir.path().with_extension("log");
    let out = facefs_command(&emu, dir.path())
        .arg("--log-file")
        .arg(&log)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    // No waiting: the command returned only once the mount answered.
    let listing = run("ls", &[&dir.path().join("open_id")]);
    assert_eq!(stdout(&listing).lines().count(), 8, "{}", stderr(&listing));
    assert_eq!(facefs_pids(dir.path()).len(), 1, "one background process");

    let umount = run("umount", &[&dir.path()]);
    assert!(umount.status.success(), "{}", stderr(&umount));
    assert!(
        wait_gone(dir.path()),
        "the background process ends with the mount"
    );
    assert!(!is_mounted(dir.path()));
    let logged = std::fs::read_to_string(&log).unwrap();
    let _ = std::fs::remove_file(&log);
    assert!(
        logged.contains("mounted at") && logged.contains("unmounted"),
        "{logged}"
    );
    assert!(
        !logged.contains(&emu.config().app_secret),
        "no secret in the log"
    );
}

#[test]
#[cfg_attr(not(facefs_mount), ignore = "needs FUSE (scripts/test.sh runs it)")]
fn a_detached_mount_stops_cleanly_on_sigterm() {
    let emu = emulator(small_tenant(2));
    let dir = TempDir::new("detached-term");
    let _cleanup = Unmount(dir.path());
    let out = facefs_command(&emu, dir.path()).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let pids = facefs_pids(dir.path());
    assert_eq!(pids.len(), 1);
    // SAFETY: signalling a process this test started.
    unsafe { libc::kill(pids[0] as i32, libc::SIGTERM) };
    assert!(wait_gone(dir.path()));
    assert!(!is_mounted(dir.path()));
}

#[test]
fn a_wrong_secret_fails_with_the_api_code_and_mounts_nothing() {
    let emu = emulator(small_tenant(1));
    let dir = TempDir::new("badsecret");
    let _cleanup = Unmount(dir.path());
    for foreground in [false, true] {
        let mut cmd = facefs_command(&emu, dir.path());
        cmd.env("FEISHU_APP_SECRET", "wrong-secret");
        if foreground {
            cmd.arg("-f");
        }
        let out = cmd.output().unwrap();
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert!(err.contains("code 10014"), "{err}");
        assert!(err.contains("log id 2026emulator"), "{err}");
        assert!(
            !err.contains("wrong-secret"),
            "the secret is never printed: {err}"
        );
        assert!(!is_mounted(dir.path()));
        assert!(facefs_pids(dir.path()).is_empty());
    }
    assert_eq!(emu.count(Route::Face), 0);
}

#[test]
fn bad_flags_are_refused_before_mounting() {
    let emu = emulator(small_tenant(1));
    let dir = TempDir::new("badflags");
    let _cleanup = Unmount(dir.path());
    let cases: [(&[&str], &str); 5] = [
        (&["--cache-size", "lots"], "not a size"),
        (&["--ttl", "forever"], "not a duration"),
        (&["--negative-ttl", "10"], "not a duration"),
        (&["--request-timeout", "0s"], "longer than zero"),
        (&["--max-parallel", "0"], "0"),
    ];
    for (args, message) in cases {
        let out = facefs_command(&emu, dir.path())
            .args(args)
            .arg("-f")
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
        assert!(stderr(&out).contains(message), "{args:?}: {}", stderr(&out));
        assert!(!is_mounted(dir.path()));
    }
    let plaintext = std::process::Command::new(FACEFS)
        .args([
            dir.path().to_str().unwrap(),
            "--base-url",
            "http://open.feishu.cn",
            "--app-id",
            "cli_x",
        ])
        .env("FEISHU_APP_SECRET", "s")
        .output()
        .unwrap();
    assert_eq!(plaintext.status.code(), Some(2));
    assert!(
        stderr(&plaintext).contains("refusing plaintext http://"),
        "{}",
        stderr(&plaintext)
    );
    let out = facefs_command(&emu, &dir.path().join("missing"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("mkdir -p"), "{}", stderr(&out));
    let out = std::process::Command::new(FACEFS)
        .arg(dir.path())
        .env_remove("FEISHU_APP_ID")
        .env_remove("FEISHU_APP_SECRET")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("--app-id"), "{}", stderr(&out));
    assert_eq!(emu.count(Route::Token), 0, "nothing reached the API");
}

#[test]
#[cfg_attr(
    not(all(facefs_mount, facefs_identify)),
    ignore = "needs FUSE, ImageMagick (scripts/test.sh runs it)"
)]
fn demo_mounts_without_credentials() {
    let dir = TempDir::new("demo");
    let _cleanup = Unmount(dir.path());
    let out = std::process::Command::new(FACEFS)
        .arg("--demo")
        .arg(dir.path())
        .env_remove("FEISHU_APP_ID")
        .env_remove("FEISHU_APP_SECRET")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let ident = run("identify", &[&dir.path().join("user_id/emp 001.jpg")]);
    assert!(stdout(&ident).contains("JPEG"), "{}", stderr(&ident));
    assert!(run("umount", &[&dir.path()]).status.success());
    assert!(wait_gone(dir.path()));
}

#[test]
fn man_page_and_completions_cover_every_option_of_help() {
    let help = stdout(&run(FACEFS, &[&"--help"]));
    let options: Vec<&str> = help
        .split_whitespace()
        .filter(|w| w.starts_with("--") && w.len() > 2)
        .map(|w| w.trim_end_matches(','))
        .collect();
    assert!(options.len() >= 20, "{help}");
    // --help shows defaults and environment variables.
    assert!(
        help.contains("[env: FEISHU_APP_ID=") || help.contains("[env: FEISHU_APP_ID]"),
        "{help}"
    );
    assert!(help.contains("[default: 256MiB]"), "{help}");
    let out = TempDir::new("docs");
    let status = std::process::Command::new(env!("CARGO_BIN_EXE_facefs-docs"))
        .arg(out.path())
        .status()
        .unwrap();
    assert!(status.success());
    let man = std::fs::read_to_string(out.path().join("facefs.1")).unwrap();
    let bash = std::fs::read_to_string(out.path().join("facefs.bash")).unwrap();
    for option in &options {
        // roff escapes '-' as '\-'.
        assert!(
            man.contains(&option.replace('-', "\\-")),
            "man page lacks {option}"
        );
        assert!(bash.contains(option), "bash completion lacks {option}");
    }
    assert!(out.path().join("_facefs").exists() && out.path().join("facefs.fish").exists());
}

#[test]
#[cfg_attr(not(facefs_mount), ignore = "needs FUSE (scripts/test.sh runs it)")]
fn a_detached_mount_logs_to_the_system_log() {
    let emu = emulator(small_tenant(2));
    let dir = TempDir::new("syslog");
    let _cleanup = Unmount(dir.path());
    let socket_path = dir.path().with_extension("sock");
    let _ = std::fs::remove_file(&socket_path);
    let syslog = std::os::unix::net::UnixDatagram::bind(&socket_path).unwrap();
    syslog
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let out = facefs_command(&emu, dir.path())
        .env("FACEFS_LOG", "info")
        .env("FACEFS_SYSLOG_SOCKET", &socket_path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(run("umount", &[&dir.path()]).status.success());
    assert!(wait_gone(dir.path()));
    let mut lines = Vec::new();
    let mut buf = [0u8; 4096];
    while let Ok(n) = syslog.recv(&mut buf) {
        lines.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        if lines.last().is_some_and(|l| l.contains("unmounted")) {
            break;
        }
    }
    let _ = std::fs::remove_file(&socket_path);
    // <30> is facility daemon, severity info.
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("<30>facefs[") && l.contains("mounted at")),
        "{lines:?}"
    );
    assert!(lines.iter().any(|l| l.contains("unmounted")), "{lines:?}");
    assert!(!lines.iter().any(|l| l.contains(&emu.config().app_secret)));
}
