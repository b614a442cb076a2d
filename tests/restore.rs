//! Restoring faces by writing them (--writable) over real mounts: rsync
//! restores, the ways programs write, refusals with their errno, outages.

mod common;

use std::path::Path;
use std::process::Output;

use common::*;
use facefs::api::{codes, IdKind};
use facefs::emulator::face_image::face_jpeg;
use facefs::emulator::{Emulator, Route, WireFault};
use facefs::fs::layout::face_file_name;
use facefs::fs::listings::MISSES_BEFORE_LISTING;

fn writable(emu: &Emulator, extra: &[&str]) -> Mount {
    let mut args = vec!["--writable", "--rate-limit", "500"];
    args.extend_from_slice(extra);
    Mount::start(emu, &args)
}

fn sh(script: &str) -> Output {
    run("sh", &[&"-c", &script])
}

/// rsync -a of a mount's open_id directory into `dest`.
fn backup(mnt: &Mount, dest: &Path) {
    let src = format!("{}/", mnt.join("open_id").display());
    let out = run("rsync", &[&"-a", &src, &dest]);
    assert!(out.status.success(), "{}", stderr(&out));
}

/// A backup of the open_id faces, made through a read-only mount.
fn backed_up(emu: &Emulator) -> TempDir {
    let saved = TempDir::new("backup");
    let mnt = Mount::start(emu, &[]);
    backup(&mnt, saved.path());
    saved
}

/// The restore the README gives: the backup turned around, crops left to the service.
fn restore(backup: &Path, mnt: &Mount) -> Output {
    let src = format!("{}/", backup.display());
    let dest = format!("{}/", mnt.join("open_id").display());
    run(
        "rsync",
        &[&"-a", &"--stats", &"--exclude=*.cropped.jpg", &src, &dest],
    )
}

fn uploads(emu: &Emulator) -> usize {
    emu.count(Route::Upload)
}

/// Every full face in the backup is what the emulator serves.
fn assert_served_equals(emu: &Emulator, backup: &Path) {
    let mut checked = 0;
    for entry in std::fs::read_dir(backup).unwrap().flatten() {
        let name = entry.file_name().into_string().unwrap();
        let Some(id) = name
            .strip_suffix(".jpg")
            .filter(|n| !n.ends_with(".cropped"))
        else {
            continue;
        };
        let saved = std::fs::read(entry.path()).unwrap();
        assert!(
            emu.face(IdKind::OpenId, id, false) == Some(saved),
            "{name} differs"
        );
        checked += 1;
    }
    assert!(checked > 10, "only {checked} faces in the backup");
}

#[test]
#[cfg_attr(
    not(all(facefs_mount, facefs_rsync)),
    ignore = "needs FUSE, rsync (scripts/test.sh runs it)"
)]
fn an_rsync_restore_puts_back_what_was_backed_up() {
    let emu = emulator(small_tenant(30));
    let saved = backed_up(&emu);
    // A device reset wiped two faces; three were re-enrolled by mistake.
    let ids = emu.ids_with_faces(IdKind::OpenId);
    for id in &ids[..2] {
        emu.set_has_face(id, false);
    }
    for (n, id) in ids[2..5].iter().enumerate() {
        emu.replace_face(IdKind::OpenId, id, false, face_jpeg(500 + n as u64, 60, 70));
    }

    let port = free_port();
    let mnt = writable(&emu, &["--metrics-listen", &port.to_string()]);
    let out = restore(saved.path(), &mnt);
    assert!(
        out.status.success(),
        "rsync: {}\n{}",
        stderr(&out),
        mnt.log_text()
    );
    assert!(
        stdout(&out).contains("Number of regular files transferred: 5"),
        "{}",
        stdout(&out)
    );
    assert_eq!(uploads(&emu), 5, "one upload per face that differed");
    assert_served_equals(&emu, saved.path());
    let metrics = scrape_metrics(port);
    assert_eq!(metric(&metrics, "facefs_uploads_total"), 5.0);
    assert_eq!(
        metric(
            &metrics,
            "facefs_api_requests_total{endpoint=\"upload\",outcome=\"ok\"}"
        ),
        5.0
    );

    // The mount shows what the service serves now: the restored faces, and
    // the service's new crops of them.
    for id in &ids[..5] {
        let full = std::fs::read(mnt.join("open_id").join(face_file_name(id, false))).unwrap();
        assert!(Some(full) == emu.face(IdKind::OpenId, id, false), "{id}");
        let crop = std::fs::read(mnt.join("open_id").join(face_file_name(id, true))).unwrap();
        assert!(
            Some(crop) == emu.face(IdKind::OpenId, id, true),
            "{id} cropped"
        );
    }
    // Run again: the service kept the bytes, so their mtimes match the backup's.
    let again = restore(saved.path(), &mnt);
    assert!(again.status.success(), "{}", stderr(&again));
    assert!(
        stdout(&again).contains("Number of regular files transferred: 0"),
        "{}",
        stdout(&again)
    );
    assert_eq!(uploads(&emu), 5);
    // No temporary file is left behind in memory or in a listing.
    let listed = ls(&mnt.join("open_id"));
    assert!(listed.iter().all(|n| !n.starts_with('.')), "{listed:?}");
}

/// A restore of wiped faces asks the API for the uploads, one listing and
/// the first few lookups only: after the API said "does not exist" 8
/// times, the listing is fetched, it shows the wiped users without a face, and the
/// lookups of rsync's generator and of each rename's target are answered
/// from it (the kernel keeping those absences instead of asking again).
#[test]
#[cfg_attr(
    not(all(facefs_mount, facefs_rsync)),
    ignore = "needs FUSE, rsync (scripts/test.sh runs it)"
)]
fn a_restore_of_wiped_faces_sends_only_uploads_and_the_listing() {
    let emu = emulator(small_tenant(30));
    let saved = backed_up(&emu);
    let wiped = emu.ids_with_faces(IdKind::OpenId);
    for id in &wiped {
        emu.set_has_face(id, false);
    }
    let mnt = writable(&emu, &[]);
    let (faces, lists) = (emu.count(Route::Face), emu.count(Route::ListUsers));
    let out = restore(saved.path(), &mnt);
    assert!(
        out.status.success(),
        "rsync: {}\n{}",
        stderr(&out),
        mnt.log_text()
    );
    assert_eq!(uploads(&emu), wiped.len(), "one upload per wiped face");
    // "Does it exist?" is asked for the first 8 lookups; the 8th "no"
    // starts the listing in the background, and once it is in, the listing
    // answers (lookups made while its page is under way still ask: how
    // many depends on the machine's load, so only the bounds are exact).
    let asked = emu.count(Route::Face) - faces;
    let before_listing = MISSES_BEFORE_LISTING as usize;
    assert!(
        asked >= before_listing && asked <= wiped.len() / 2,
        "{asked} faces asked for, of {}",
        wiped.len()
    );
    assert_eq!(emu.count(Route::ListUsers), lists + 1, "one listing page");
    assert_served_equals(&emu, saved.path());
}

fn ls(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    names
}

/// cp, shell redirection, cat, dd (also with fsync), rsync, rsync --inplace
/// and Python: each upload
/// is the bytes written, and the user's face reads new at once through the
/// other id directories too (their old copies were in the kernel's cache).
#[test]
#[cfg_attr(
    not(all(facefs_mount, facefs_rsync)),
    ignore = "needs FUSE, rsync (scripts/test.sh runs it)"
)]
fn every_way_of_writing_uploads_the_bytes_written() {
    let emu = emulator(small_tenant(20));
    let mnt = writable(&emu, &[]);
    let work = TempDir::new("work");
    let ids = emu.ids_with_faces(IdKind::OpenId);
    let users = emu.tenant().users();
    let ways = [
        "cp {src} {dst}",
        "cat {src} > {dst}",
        "dd if={src} of={dst} bs=1000 status=none",
        "dd if={src} of={dst} bs=777 conv=notrunc status=none",
        // fsync uploads; the close after it has nothing left to send.
        "dd if={src} of={dst} bs=4096 conv=fsync status=none",
        "rsync {src} {dst}",
        "rsync --inplace {src} {dst}",
        "python3 -c 'import shutil,sys; shutil.copyfile(sys.argv[1], sys.argv[2])' {src} {dst}",
    ];
    for (n, way) in ways.iter().enumerate() {
        let id = &ids[n];
        let user = users
            .iter()
            .find(|u| u.id(IdKind::OpenId) == id.as_str())
            .unwrap();
        let union_path = mnt
            .join("union_id")
            .join(face_file_name(user.id(IdKind::UnionId), false));
        let before = std::fs::read(&union_path).unwrap();
        // A smaller face for the notrunc case would leave the old tail: same size there.
        let new_face = face_jpeg(900 + n as u64, 48 + n as u16 * 8, 60);
        let src = work.path().join(format!("{n}.jpg"));
        std::fs::write(&src, &new_face).unwrap();
        let dst = mnt.join("open_id").join(face_file_name(id, false));
        let command = way
            .replace("{src}", src.to_str().unwrap())
            .replace("{dst}", dst.to_str().unwrap());
        let out = sh(&command);
        assert!(
            out.status.success(),
            "{command}: {}\n{}",
            stderr(&out),
            mnt.log_text()
        );
        let expected = if way.contains("notrunc") && new_face.len() < before.len() {
            let mut merged = before.clone();
            merged[..new_face.len()].copy_from_slice(&new_face);
            merged
        } else {
            new_face.clone()
        };
        // assert! rather than assert_eq!: a failure need not print the images.
        assert!(
            emu.face(IdKind::OpenId, id, false) == Some(expected.clone()),
            "{command}"
        );
        let back = std::fs::read(&dst)
            .unwrap_or_else(|e| panic!("{command}: reading back: {e}\n{}", mnt.log_text()));
        assert!(back == expected, "{command}: read back");
        assert!(
            std::fs::read(&union_path).unwrap() == expected,
            "{command}: the same user under union_id"
        );
        assert_eq!(uploads(&emu), n + 1, "{command}: one upload");
    }
}

#[test]
#[cfg_attr(not(facefs_mount), ignore = "needs FUSE (scripts/test.sh runs it)")]
fn refusals_reach_the_writer_with_their_errno() {
    let emu = emulator(small_tenant(20));
    let mnt = writable(&emu, &[]);
    let work = TempDir::new("work");
    let image = work.path().join("face.jpg");
    std::fs::write(&image, face_jpeg(77, 50, 60)).unwrap();
    let text = work.path().join("note.txt");
    std::fs::write(&text, "not a face\n").unwrap();
    let ids = emu.ids_with_faces(IdKind::OpenId);
    let dir = mnt.join("open_id");
    let face = |i: usize, cropped: bool| dir.join(face_file_name(&ids[i], cropped));
    let before: Vec<_> = (0..6)
        .map(|i| emu.face(IdKind::OpenId, &ids[i], false))
        .collect();
    let p = |path: &Path| path.to_str().unwrap().to_owned();
    let cases = [
        (
            format!("cp {} {}", p(&image), p(&face(0, true))),
            "Operation not permitted",
        ),
        (
            format!("cp {} {}", p(&text), p(&face(1, false))),
            "Invalid argument",
        ),
        (
            format!(
                "dd if=/dev/zero of={} bs=1M count=11 status=none",
                p(&face(2, false))
            ),
            "File too large",
        ),
        (
            format!("cp {} {}", p(&image), p(&dir.join("ou_nobody.jpg"))),
            "No such file or directory",
        ),
        (
            format!("rm {}", p(&face(3, false))),
            "Operation not permitted",
        ),
        (
            format!("mkdir {}", p(&dir.join("sub"))),
            "Operation not permitted",
        ),
        (
            format!("chmod 644 {}", p(&face(3, false))),
            "Operation not permitted",
        ),
        (
            format!("ln -s {} {}", p(&image), p(&dir.join("ou_x.jpg"))),
            "Operation not permitted",
        ),
        (
            format!("mv {} {}", p(&face(3, false)), p(&face(4, false))),
            "Operation not permitted",
        ),
    ];
    for (command, message) in &cases {
        let out = sh(command);
        assert!(!out.status.success(), "{command} succeeded");
        assert!(
            stderr(&out).contains(message),
            "{command}: {}",
            stderr(&out)
        );
    }
    assert_eq!(uploads(&emu), 0, "nothing refused here reached the API");

    // The API refusing: its code in the log, EACCES to the writer.
    emu.set_upload_refusal(Some(codes::SCOPE_MISSING));
    let out = sh(&format!("cp {} {}", p(&image), p(&face(5, false))));
    assert!(
        stderr(&out).contains("Permission denied"),
        "{}",
        stderr(&out)
    );
    assert_eq!(uploads(&emu), 1);
    let log = mnt.log_text();
    assert!(
        log.contains(&format!("code {}", codes::SCOPE_MISSING)) && log.contains("log id"),
        "{log}"
    );
    for (i, face) in before.iter().enumerate() {
        assert!(
            &emu.face(IdKind::OpenId, &ids[i], false) == face,
            "face {i} changed"
        );
    }
    // What the mount shows did not change either.
    assert!(std::fs::read(face(5, false)).ok() == before[5]);
}

#[test]
#[cfg_attr(not(facefs_mount), ignore = "needs FUSE (scripts/test.sh runs it)")]
fn without_writable_every_write_is_read_only() {
    let emu = emulator(small_tenant(20));
    let mnt = Mount::start(&emu, &[]);
    let work = TempDir::new("work");
    let image = work.path().join("face.jpg");
    std::fs::write(&image, face_jpeg(77, 50, 60)).unwrap();
    let ids = emu.ids_with_faces(IdKind::OpenId);
    let without = emu.ids_without_faces(IdKind::OpenId);
    let dir = mnt.join("open_id");
    let p = |path: &Path| path.to_str().unwrap().to_owned();
    let face = p(&dir.join(face_file_name(&ids[0], false)));
    let new = p(&dir.join(face_file_name(&without[0], false)));
    for command in [
        format!("cp {} {face}", p(&image)),
        format!("cp {} {new}", p(&image)),
        format!("cat {} > {face}", p(&image)),
        format!("touch {new}"),
        format!("rm {face}"),
        format!("mkdir {}", p(&dir.join("sub"))),
        format!("chmod 644 {face}"),
        format!("mv {face} {new}"),
    ] {
        let out = sh(&command);
        assert!(!out.status.success(), "{command} succeeded");
        assert!(
            stderr(&out).contains("Read-only file system"),
            "{command}: {}",
            stderr(&out)
        );
    }
    assert_eq!(uploads(&emu), 0);
}

#[test]
#[cfg_attr(
    not(all(facefs_mount, facefs_rsync)),
    ignore = "needs FUSE, rsync (scripts/test.sh runs it)"
)]
fn a_restore_during_an_outage_fails_loudly_and_uploads_nothing() {
    let emu = emulator(small_tenant(20));
    let saved = TempDir::new("backup");
    {
        let mnt = Mount::start(&emu, &[]);
        backup(&mnt, saved.path());
    }
    let ids = emu.ids_with_faces(IdKind::OpenId);
    for id in &ids[..3] {
        emu.set_has_face(id, false);
    }
    let mnt = writable(&emu, &["--retry-budget", "2s"]);
    emu.inject(Route::Upload, WireFault::ServerError, 1.0);
    let out = restore(saved.path(), &mnt);
    assert!(!out.status.success(), "rsync succeeded during the outage");
    assert!(
        stderr(&out).contains("Input/output error"),
        "{}",
        stderr(&out)
    );
    for id in &ids[..3] {
        assert_eq!(
            emu.face(IdKind::OpenId, id, false),
            None,
            "no face half-uploaded"
        );
        assert!(
            !mnt.join("open_id").join(face_file_name(id, false)).exists(),
            "the mount shows no face the service does not have"
        );
    }
    assert!(uploads(&emu) >= 3, "each face was tried, with retries");

    emu.clear_faults();
    let out = restore(saved.path(), &mnt);
    assert!(out.status.success(), "after the outage: {}", stderr(&out));
    assert_served_equals(&emu, saved.path());
}
