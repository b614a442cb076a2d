//! Cargo build script: finds which test tiers this machine can run and
//! tells the tests through `cfg`s, so that a plain `cargo test` on a machine
//! without FUSE, root or the programs the real-mount tests drive passes and
//! reports those tests as ignored, with the reason. `scripts/test.sh` sets
//! FACEFS_TEST_TIERS=all, and then a missing piece fails the build instead:
//! the project's own test command never skips a tier.

use std::path::{Path, PathBuf};

/// (cfg, what it needs, how to get it)
const TIERS: [(&str, &str, &str); 9] = [
    (
        "facefs_mount",
        "FUSE (/dev/fuse open for reading and writing by this user, and root or fusermount3)",
        "modprobe fuse; apt-get install fuse3",
    ),
    ("facefs_root", "root", "run the tests as root"),
    (
        "facefs_mount_helper",
        "mount.fuse3 for fstab mounts",
        "apt-get install fuse3",
    ),
    ("facefs_rsync", "rsync", "apt-get install rsync"),
    (
        "facefs_identify",
        "ImageMagick's identify",
        "apt-get install imagemagick",
    ),
    ("facefs_setpriv", "setpriv", "apt-get install util-linux"),
    (
        "facefs_sdk",
        "the official Python SDK",
        "scripts/need-sdk.sh",
    ),
    (
        "facefs_redis",
        "redis-server, for the fleet tests",
        "apt-get install redis-server",
    ),
    (
        "facefs_sentinel",
        "redis-sentinel, for the failover tests",
        "apt-get install redis-sentinel",
    ),
];

/// Where scripts/need-sdk.sh installs the SDK.
const SDK_PYTHON: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/target/sdk-venv/bin/python");

fn main() {
    println!("cargo:rerun-if-changed=scripts/test_tiers.rs");
    println!("cargo:rerun-if-env-changed=FACEFS_TEST_TIERS");
    println!("cargo:rerun-if-env-changed=PATH");
    println!("cargo:rerun-if-changed=/dev/fuse");
    let dirs = search_path();
    let mut any_missing = false;
    let mut found = |program: &str| match dirs.iter().map(|d| d.join(program)).find(|p| p.is_file())
    {
        // Watch the program itself: installing something else must not
        // rebuild facefs.
        Some(path) => {
            println!("cargo:rerun-if-changed={}", path.display());
            true
        }
        None => {
            any_missing = true;
            false
        }
    };
    let root = effective_uid() == Some(0);
    // What works for this user, not what exists: a root-only /dev/fuse
    // (crw-------) exists for everyone but opens only for root.
    let fuse = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/fuse")
        .is_ok();
    let have = [
        fuse && (root || found("fusermount3")),
        root,
        found("mount.fuse3"),
        found("rsync"),
        found("identify"),
        found("setpriv"),
        Path::new(SDK_PYTHON).is_file(),
        found("redis-server"),
        found("redis-sentinel"),
    ];
    if any_missing {
        // Installing a missing program adds it to one of these.
        for dir in &dirs {
            println!("cargo:rerun-if-changed={}", dir.display());
        }
    }
    let mut missing = Vec::new();
    for ((cfg, needs, fix), ok) in TIERS.iter().zip(have) {
        println!("cargo::rustc-check-cfg=cfg({cfg})");
        if ok {
            println!("cargo:rustc-cfg={cfg}");
        } else {
            missing.push(format!("{needs} ({fix})"));
        }
    }
    if missing.is_empty() {
        return;
    }
    if std::env::var("FACEFS_TEST_TIERS").as_deref() == Ok("all") {
        panic!(
            "FACEFS_TEST_TIERS=all, but this machine lacks: {}. scripts/test.sh installs the packages; run it as root.",
            missing.join("; ")
        );
    }
    println!(
        "cargo:warning=tests needing these are ignored on this machine: {} (scripts/test.sh runs every tier)",
        missing.join("; ")
    );
}

fn search_path() -> Vec<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let mut dirs: Vec<PathBuf> = std::env::split_paths(&path).collect();
    // mount(8) finds its helpers in sbin, which a user's PATH may lack.
    dirs.extend(["/sbin", "/usr/sbin"].map(PathBuf::from));
    dirs.retain(|d| d.is_dir());
    dirs.dedup();
    dirs
}

fn effective_uid() -> Option<u32> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("Uid:"))?;
    line.split_whitespace().nth(2)?.parse().ok()
}
