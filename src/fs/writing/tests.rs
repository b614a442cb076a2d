//! Writing faces through the core: what is uploaded when, what is refused
//! with which errno, and what is forgotten after an upload.

use std::ffi::OsStr;
use std::sync::Arc;

use parking_lot::Mutex;

use super::*;
use crate::api::failure::{FailureApi, Fault};
use crate::api::image::MAX_UPLOAD_BYTES;
use crate::api::memory::{MemoryApi, Upload};
use crate::api::Endpoint;
use crate::emulator::face_image::face_jpeg;
use crate::fs::clock::TestClock;
use crate::fs::inodes::dir_ino;
use crate::fs::{Attr, FaceFs, FsConfig, Invalidation, ROOT_INO};

type TestApi = FailureApi<MemoryApi>;

/// Answers as values or errnos (-1: would block).
fn done<T>(answer: Answer<T>) -> Result<T, i32> {
    match answer {
        Answer::Done(result) => result.map_err(|e| e.errno()),
        Answer::WouldBlock => Err(-1),
    }
}

fn ok<T>(answer: Answer<T>) -> T {
    match answer {
        Answer::Done(Ok(value)) => value,
        Answer::Done(Err(e)) => panic!("{e}"),
        Answer::WouldBlock => panic!("would block"),
    }
}

fn name(s: &str) -> &OsStr {
    OsStr::new(s)
}

fn open_dir() -> u64 {
    dir_ino(IdKind::OpenId)
}

struct Setup {
    api: Arc<TestApi>,
    fs: Arc<FaceFs>,
    told: Arc<Mutex<Vec<Invalidation>>>,
    faces: [Vec<u8>; 2],
}

fn setup(writable: bool) -> Setup {
    let faces = [face_jpeg(1, 40, 50), face_jpeg(2, 40, 50)];
    let memory = MemoryApi::new();
    memory.add_user(
        &["ou_a", "on_a", "a"],
        Some(faces[0].clone()),
        Some(face_jpeg(11, 30, 30)),
    );
    memory.add_user(
        &["ou_b", "on_b", "b"],
        Some(faces[1].clone()),
        Some(face_jpeg(12, 30, 30)),
    );
    memory.add_user(&["ou_c", "on_c", "c"], None, None);
    let api = Arc::new(FailureApi::new(memory));
    let fs = FaceFs::with_clock(
        api.clone(),
        FsConfig {
            readahead: 0,
            writable,
            ..FsConfig::default()
        },
        None,
        Arc::new(TestClock::default()),
    );
    let told = Arc::new(Mutex::new(Vec::new()));
    let sink = told.clone();
    fs.set_kernel(Box::new(move |batch| sink.lock().extend(batch)));
    Setup {
        api,
        fs,
        told,
        faces,
    }
}

impl Setup {
    fn lookup(&self, dir: u64, file: &str) -> Result<Attr, i32> {
        done(self.fs.lookup(dir, name(file), Fetch::Allowed))
    }

    fn read(&self, dir: u64, file: &str) -> Vec<u8> {
        let ino = self.lookup(dir, file).unwrap().ino;
        let fh = ok(self.fs.open(ino, OpenMode::Read, Fetch::Allowed));
        let bytes = ok(self.fs.read(fh, 0, 1 << 24, Fetch::Allowed))
            .bytes()
            .to_vec();
        self.fs.release(fh);
        bytes
    }

    fn write_all(&self, fh: u64, bytes: &[u8]) {
        for (i, chunk) in bytes.chunks(4096).enumerate() {
            ok(self.fs.write(fh, (i * 4096) as u64, chunk, Fetch::Allowed));
        }
    }

    fn uploads(&self) -> Vec<Upload> {
        self.api.inner().uploads()
    }
}

#[test]
fn a_read_only_mount_refuses_every_change() {
    let s = setup(false);
    let ino = s.lookup(open_dir(), "ou_a.jpg").unwrap().ino;
    let erofs = Err(libc::EROFS);
    assert_eq!(
        s.fs.create(open_dir(), name("ou_c.jpg"))
            .map_err(|e| e.errno())
            .map(drop),
        erofs
    );
    assert_eq!(
        done(s.fs.open(ino, OpenMode::Write { truncate: true }, Fetch::Allowed)).map(drop),
        erofs
    );
    let change = AttrChange {
        other: true,
        ..AttrChange::default()
    };
    assert_eq!(
        done(s.fs.setattr(ino, change, Fetch::Allowed)).map(drop),
        erofs
    );
    assert_eq!(
        done(s.fs.rename(
            open_dir(),
            name("a"),
            open_dir(),
            name("ou_a.jpg"),
            Fetch::Allowed
        )),
        erofs
    );
    assert_eq!(
        s.fs.unlink(open_dir(), name("ou_a.jpg"))
            .map_err(|e| e.errno()),
        erofs
    );
    assert_eq!(s.fs.refuse_change("mkdir").errno(), libc::EROFS);
    assert!(s.uploads().is_empty());
}

/// `cp` over an existing face: truncate, write, close. The upload carries
/// the bytes, and every copy of the user's old face is forgotten: in this
/// directory and, by its bytes, under the user's other ids.
#[test]
fn overwriting_a_face_uploads_it_at_close_and_forgets_the_old_one() {
    let s = setup(true);
    assert_eq!(s.read(open_dir(), "ou_b.jpg"), s.faces[1]);
    let union_dir = dir_ino(IdKind::UnionId);
    assert_eq!(s.read(union_dir, "on_b.jpg"), s.faces[1]);
    s.lookup(open_dir(), "ou_b.cropped.jpg").unwrap();
    let before = s.api.requests(Endpoint::Face);

    let new_face = face_jpeg(99, 64, 64);
    let ino = s.lookup(open_dir(), "ou_b.jpg").unwrap().ino;
    let fh =
        ok(s.fs.open(ino, OpenMode::Write { truncate: true }, Fetch::Allowed));
    s.write_all(fh, &new_face);
    assert_eq!(
        s.lookup(open_dir(), "ou_b.jpg").unwrap().size,
        new_face.len() as u64,
        "stat shows what is being written"
    );
    assert!(s.uploads().is_empty(), "nothing is sent before close");
    assert_eq!(
        done(s.fs.flush(fh, Fetch::Never)),
        Err(-1),
        "the upload waits on a worker"
    );
    ok(s.fs.flush(fh, Fetch::Allowed));
    ok(s.fs.flush(fh, Fetch::Allowed));
    s.fs.release(fh);
    assert_eq!(
        s.uploads(),
        [Upload {
            kind: IdKind::OpenId,
            id: "ou_b".into(),
            image: new_face.clone(),
            image_type: ImageType::Jpeg,
        }],
        "one upload, not one per flush"
    );
    assert_eq!(
        s.api.requests(Endpoint::Face),
        before,
        "the original was never needed"
    );

    // What the service serves now, through every directory facefs could tie to the user.
    assert_eq!(s.read(open_dir(), "ou_b.jpg"), new_face);
    assert_eq!(s.read(union_dir, "on_b.jpg"), new_face);
    let cropped = s.read(open_dir(), "ou_b.cropped.jpg");
    assert_eq!(cropped, new_face.iter().rev().copied().collect::<Vec<_>>());
    let told = s.told.lock().clone();
    let counted = s.fs.metrics();
    assert_eq!(counted.uploads.get(), 1);
    assert_eq!(counted.uploaded_bytes.get(), new_face.len() as u64);
    assert_eq!(counted.invalidations.get(), told.len() as u64);
    for file in ["ou_b.jpg", "ou_b.cropped.jpg"] {
        assert!(
            told.contains(&Invalidation::Entry {
                parent: open_dir(),
                name: file.into()
            }),
            "{file}: {told:?}"
        );
    }
    assert!(
        told.contains(&Invalidation::Entry {
            parent: union_dir,
            name: "on_b.jpg".into()
        }),
        "the same bytes under the union id: {told:?}"
    );
    assert!(told.contains(&Invalidation::Inode(ino)));
    assert!(
        !told.iter().any(|t| matches!(t, Invalidation::Entry { name, .. } if name == "b.jpg")),
        "names the kernel never looked up are not told (each notice takes the directory lock): {told:?}"
    );
}

/// rsync: a temporary file, written and closed (no upload), then renamed
/// onto the face's name (the upload). A user without a face gets one, and
/// the listing shows it at once.
#[test]
fn a_temporary_file_is_uploaded_when_renamed_onto_a_face() {
    let s = setup(true);
    let fh = s.fs.opendir(open_dir()).unwrap();
    let listed = |fs: &FaceFs| {
        let page = ok(fs.readdir(open_dir(), fh, 0, Fetch::Allowed));
        page.entries().map(|(_, e)| e.name).collect::<Vec<_>>()
    };
    assert!(!listed(&s.fs).contains(&"ou_c.jpg".to_owned()));
    let listing_requests = s.api.requests(Endpoint::List);
    assert_eq!(s.lookup(open_dir(), "ou_c.jpg"), Err(libc::ENOENT));

    let temp = ".ou_c.jpg.Xy12Ab";
    let (attr, wfh) = s.fs.create(open_dir(), name(temp)).unwrap();
    assert!(attr.ino >= FIRST_WRITTEN_INO);
    s.write_all(wfh, &s.faces[0]);
    ok(s.fs.flush(wfh, Fetch::Allowed));
    s.fs.release(wfh);
    assert!(s.uploads().is_empty(), "a temporary file is not a face");
    assert_eq!(
        s.lookup(open_dir(), temp).unwrap().size,
        s.faces[0].len() as u64
    );
    let times = AttrChange {
        other: true,
        ..AttrChange::default()
    };
    ok(s.fs.setattr(attr.ino, times, Fetch::Allowed));

    ok(s.fs.rename(
        open_dir(),
        name(temp),
        open_dir(),
        name("ou_c.jpg"),
        Fetch::Allowed,
    ));
    assert_eq!(s.uploads().len(), 1);
    assert_eq!(s.uploads()[0].id, "ou_c");
    assert_eq!(
        s.lookup(open_dir(), temp),
        Err(libc::ENOENT),
        "the temporary name is gone"
    );
    assert_eq!(
        s.read(open_dir(), "ou_c.jpg"),
        s.faces[0],
        "no longer absent"
    );
    s.fs.releasedir(fh);
    let fh = s.fs.opendir(open_dir()).unwrap();
    let page = ok(s.fs.readdir(open_dir(), fh, 0, Fetch::Allowed));
    assert!(page.entries().any(|(_, e)| e.name == "ou_c.jpg"));
    assert_eq!(
        s.api.requests(Endpoint::List),
        listing_requests,
        "the listing is edited, not fetched again"
    );
    // The kernel still holds the renamed inode: it answers, then goes when forgotten.
    assert_eq!(ok(s.fs.getattr(attr.ino, Fetch::Never)).nlink, 0);
    s.fs.forget(attr.ino, 2);
    assert_eq!(
        done(s.fs.getattr(attr.ino, Fetch::Never)).map(drop),
        Err(libc::ENOENT)
    );
    // rsync -a then sets times on what it wrote: a no-op, not an error.
    let face = s.lookup(open_dir(), "ou_c.jpg").unwrap().ino;
    assert_eq!(
        done(s.fs.setattr(face, times, Fetch::Allowed)).map(|a| a.ino),
        Ok(face)
    );
}

#[test]
fn refusals_carry_the_errno_a_program_reports() {
    let s = setup(true);
    let errno = |r: Result<(Attr, u64), FsError>| r.map(drop).map_err(|e| e.errno());
    // The service makes the crop.
    assert_eq!(
        errno(s.fs.create(open_dir(), name("ou_c.cropped.jpg"))),
        Err(libc::EPERM)
    );
    let cropped = s.lookup(open_dir(), "ou_a.cropped.jpg").unwrap().ino;
    assert_eq!(
        done(s.fs.open(cropped, OpenMode::Write { truncate: true }, Fetch::Allowed)),
        Err(libc::EPERM)
    );
    // A user the API said does not exist, known from the lookup before.
    assert_eq!(s.lookup(open_dir(), "ou_zz.jpg"), Err(libc::ENOENT));
    assert_eq!(
        errno(s.fs.create(open_dir(), name("ou_zz.jpg"))),
        Err(libc::ENOENT)
    );
    // ... and not known before: at close.
    let (_, fh) = s.fs.create(open_dir(), name("ou_yy.jpg")).unwrap();
    s.write_all(fh, &s.faces[0]);
    assert_eq!(done(s.fs.flush(fh, Fetch::Allowed)), Err(libc::ENOENT));
    s.fs.release(fh);
    // Bytes that are not a whole image: at close, nothing sent.
    let (_, fh) = s.fs.create(open_dir(), name("ou_c.jpg")).unwrap();
    s.write_all(fh, &s.faces[0][..s.faces[0].len() - 10]);
    assert_eq!(done(s.fs.flush(fh, Fetch::Allowed)), Err(libc::EINVAL));
    s.fs.release(fh);
    // Too large: at the write past the bound.
    let (_, fh) = s.fs.create(open_dir(), name("ou_c.jpg")).unwrap();
    let at = MAX_UPLOAD_BYTES - 2;
    assert_eq!(done(s.fs.write(fh, at, b"ab", Fetch::Allowed)), Ok(2));
    assert_eq!(
        done(s.fs.write(fh, at, b"abc", Fetch::Allowed)),
        Err(libc::EFBIG)
    );
    s.fs.release(fh);
    // Deleting and other changes.
    assert_eq!(
        s.fs.unlink(open_dir(), name("ou_a.jpg"))
            .map_err(|e| e.errno()),
        Err(libc::EPERM)
    );
    assert_eq!(s.fs.refuse_change("mkdir").errno(), libc::EPERM);
    let face = s.lookup(open_dir(), "ou_a.jpg").unwrap().ino;
    let chmod = AttrChange {
        other: true,
        ..AttrChange::default()
    };
    assert_eq!(
        done(s.fs.setattr(face, chmod, Fetch::Allowed)).map(drop),
        Err(libc::EPERM)
    );
    let truncate = AttrChange {
        size: Some(0),
        other: false,
    };
    assert_eq!(
        done(s.fs.setattr(face, truncate, Fetch::Allowed)).map(drop),
        Err(libc::EPERM)
    );
    assert_eq!(
        done(s.fs.setattr(ROOT_INO, chmod, Fetch::Allowed)).map(|a| a.ino),
        Ok(ROOT_INO),
        "rsync -a sets the directory's times"
    );
    assert_eq!(
        done(s.fs.rename(
            open_dir(),
            name("ou_a.jpg"),
            open_dir(),
            name("ou_b.jpg"),
            Fetch::Allowed
        )),
        Err(libc::EPERM),
        "faces are not renamed"
    );
    assert!(s.uploads().is_empty());
}

#[test]
fn a_refused_upload_fails_the_close_and_changes_nothing_served() {
    for (fault, errno) in [
        (Fault::Transient, libc::EIO),
        (Fault::QuotaExhausted, libc::EIO),
        (Fault::PermissionDenied, libc::EACCES),
        (Fault::ImageRefused, libc::EINVAL),
    ] {
        let s = setup(true);
        s.api.fail_next(Endpoint::Upload, [fault.clone()]);
        let ino = s.lookup(open_dir(), "ou_a.jpg").unwrap().ino;
        let fh =
            ok(s.fs.open(ino, OpenMode::Write { truncate: true }, Fetch::Allowed));
        s.write_all(fh, &s.faces[1]);
        assert_eq!(
            done(s.fs.flush(fh, Fetch::Allowed)),
            Err(errno),
            "{fault:?}"
        );
        s.fs.release(fh);
        assert_eq!(s.read(open_dir(), "ou_a.jpg"), s.faces[0], "{fault:?}");
        assert!(s.uploads().is_empty());
        assert!(
            s.told.lock().contains(&Invalidation::Inode(ino)),
            "the kernel drops the size and pages the writes gave it"
        );
    }
}

/// `dd conv=notrunc` and the like: what was not written comes from the
/// face as it was, downloaded only because it is needed.
#[test]
fn a_partial_overwrite_keeps_the_rest_of_the_face() {
    let s = setup(true);
    let ino = s.lookup(open_dir(), "ou_a.jpg").unwrap().ino;
    s.api
        .inner()
        .set_faces("ou_a", Some(s.faces[0].clone()), None);
    let fh =
        ok(s.fs.open(ino, OpenMode::Write { truncate: false }, Fetch::Allowed));
    let patch = &s.faces[1][100..200];
    ok(s.fs.write(fh, 100, patch, Fetch::Allowed));
    ok(s.fs.flush(fh, Fetch::Allowed));
    s.fs.release(fh);
    let mut expected = s.faces[0].clone();
    expected[100..200].copy_from_slice(patch);
    assert_eq!(s.uploads()[0].image, expected);
}

#[test]
fn written_bytes_are_bounded_in_all() {
    let s = setup(true);
    let chunk = vec![0xffu8; 1 << 20];
    let mut handles = Vec::new();
    let mut written = 0u64;
    let full = loop {
        let (_, fh) =
            s.fs.create(open_dir(), name(&format!(".t{}", handles.len())))
                .unwrap();
        handles.push(fh);
        let mut offset = 0;
        let refused = loop {
            match done(s.fs.write(fh, offset, &chunk, Fetch::Allowed)) {
                Ok(n) => {
                    offset += u64::from(n);
                    written += u64::from(n);
                }
                Err(e) => break e,
            }
            if offset == 8 << 20 {
                break 0;
            }
        };
        if refused != 0 {
            break refused;
        }
    };
    assert_eq!(full, libc::ENOSPC);
    assert_eq!(written, MAX_PENDING_BYTES);
    assert_eq!(s.fs.pending_room(), 0);
    // Removing a temporary file gives its room back.
    s.fs.release(handles[0]);
    s.fs.unlink(open_dir(), name(".t0")).unwrap();
    assert_eq!(s.fs.pending_room(), 8 << 20);
    assert_eq!(
        s.fs.unlink(open_dir(), name(".t0")).map_err(|e| e.errno()),
        Err(libc::EPERM)
    );
}
