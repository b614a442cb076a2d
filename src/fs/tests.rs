use super::*;
use crate::api::failure::{FailureApi, Fault};
use crate::api::memory::MemoryApi;
use crate::api::Endpoint;
use crate::fs::clock::TestClock;
use crate::fs::faces::OUTAGE_BACKOFF;
use crate::fs::writing::OpenMode;
use std::time::{Duration, Instant};

type TestApi = FailureApi<MemoryApi>;

/// What an answer that must wait is, for comparing answers as errnos.
const WOULD_BLOCK: i32 = -1;

impl<T> Answer<T> {
    fn unwrap(self) -> T {
        match self {
            Answer::Done(Ok(value)) => value,
            Answer::Done(Err(e)) => panic!("{e}"),
            Answer::WouldBlock => panic!("the answer would block"),
        }
    }

    fn errno(self) -> Result<T, i32> {
        match self {
            Answer::Done(result) => result.map_err(|e| e.errno()),
            Answer::WouldBlock => Err(WOULD_BLOCK),
        }
    }
}

fn tenant() -> Arc<TestApi> {
    let api = MemoryApi::new();
    api.add_user(
        &["ou_a", "on_a", "emp a"],
        Some(vec![1; 100]),
        Some(vec![2; 40]),
    );
    api.add_user(
        &["ou_b", "on_b", "100%"],
        Some(vec![3; 60]),
        Some(vec![4; 30]),
    );
    api.add_user(&["ou_c", "on_c", "c"], None, None);
    Arc::new(FailureApi::new(api))
}

/// A core on a clock that moves only when the test moves it.
fn fs_with(api: &Arc<TestApi>, config: FsConfig) -> Arc<FaceFs> {
    fs_on_clock(api, config, &TestClock::default())
}

fn fs_on_clock(api: &Arc<TestApi>, config: FsConfig, clock: &TestClock) -> Arc<FaceFs> {
    FaceFs::with_clock(api.clone(), config, None, Arc::new(clock.clone()))
}

fn fs_with_ttl(api: &Arc<TestApi>, ttl: Duration, clock: &TestClock) -> Arc<FaceFs> {
    fs_on_clock(
        api,
        FsConfig {
            ttl,
            readahead: 0,
            ..FsConfig::default()
        },
        clock,
    )
}

/// Without read-ahead, so request counts are the reader's own.
fn fs(api: &Arc<TestApi>) -> Arc<FaceFs> {
    fs_with(
        api,
        FsConfig {
            readahead: 0,
            ..FsConfig::default()
        },
    )
}

fn name(s: &str) -> &OsStr {
    OsStr::new(s)
}

/// An answer without its time to live, which moves on its own.
fn stable(attr: Attr) -> Attr {
    Attr {
        valid_for: Duration::ZERO,
        ..attr
    }
}

fn read_all(fs: &FaceFs, ino: u64) -> Vec<u8> {
    let fh = fs.open(ino, OpenMode::Read, Fetch::Allowed).unwrap();
    let bytes = fs
        .read(fh, 0, 1 << 20, Fetch::Never)
        .unwrap()
        .bytes()
        .to_vec();
    fs.release(fh);
    bytes
}

fn names(fs: &FaceFs, ino: u64) -> Vec<String> {
    let fh = fs.opendir(ino).unwrap();
    let page = fs.readdir(ino, fh, 0, Fetch::Allowed).unwrap();
    fs.releasedir(fh);
    page.entries().map(|(_, e)| e.name).collect()
}

#[test]
fn root_holds_the_three_directories() {
    let api = tenant();
    let fs = fs(&api);
    assert_eq!(
        names(&fs, ROOT_INO),
        [".", "..", "open_id", "union_id", "user_id"]
    );
    for kind in IdKind::ALL {
        assert_eq!(
            fs.lookup(ROOT_INO, name(kind.as_str()), Fetch::Never)
                .unwrap()
                .kind,
            NodeKind::Directory
        );
    }
    assert_eq!(
        fs.lookup(ROOT_INO, name("faces"), Fetch::Allowed).errno(),
        Err(libc::ENOENT)
    );
    assert_eq!(
        api.requests(Endpoint::Face) + api.requests(Endpoint::List),
        0
    );
}

#[test]
fn listing_shows_both_files_of_users_with_faces_and_downloads_nothing() {
    let api = tenant();
    let fs = fs(&api);
    let user_dir = fs
        .lookup(ROOT_INO, name("user_id"), Fetch::Never)
        .unwrap()
        .ino;
    assert_eq!(
        names(&fs, user_dir),
        [
            ".",
            "..",
            "emp a.jpg",
            "emp a.cropped.jpg",
            "100%.jpg",
            "100%.cropped.jpg"
        ]
    );
    assert_eq!(api.requests(Endpoint::Face), 0);
    assert_eq!(api.requests(Endpoint::List), 2, "two pages of two users");
    names(&fs, user_dir);
    assert_eq!(
        api.requests(Endpoint::List),
        2,
        "the listing is cached for the TTL"
    );
}

#[test]
fn stat_is_exact_and_read_returns_the_api_bytes() {
    let api = tenant();
    let fs = fs(&api);
    let dir = dir_ino(IdKind::OpenId);
    let full = fs.lookup(dir, name("ou_a.jpg"), Fetch::Allowed).unwrap();
    let cropped = fs
        .lookup(dir, name("ou_a.cropped.jpg"), Fetch::Allowed)
        .unwrap();
    assert_eq!((full.size, cropped.size), (100, 40));
    assert_eq!(full.perm, 0o400);
    assert_eq!(read_all(&fs, full.ino), vec![1; 100]);
    assert_eq!(read_all(&fs, cropped.ino), vec![2; 40]);
    assert_eq!(
        api.requests(Endpoint::Face),
        2,
        "stat fetched; reads used the cache"
    );
    let counted = fs.metrics();
    assert_eq!(counted.cache_misses.get(), 2, "one miss per download");
    assert_eq!(counted.cache_hits.get(), 2, "one hit per opened file");
    assert_eq!(counted.downloads_in_flight.get(), 0);
    assert_eq!(fs.cache_usage().bytes, 140);
    assert_eq!(
        stable(fs.getattr(full.ino, Fetch::Never).unwrap()),
        stable(full),
        "same inode and mtime"
    );
}

#[test]
fn reads_at_offsets_and_past_the_end() {
    let api = tenant();
    let fs = fs(&api);
    let ino = fs
        .lookup(dir_ino(IdKind::UnionId), name("on_b.jpg"), Fetch::Allowed)
        .unwrap()
        .ino;
    let fh = fs.open(ino, OpenMode::Read, Fetch::Allowed).unwrap();
    assert_eq!(
        fs.read(fh, 50, 100, Fetch::Never).unwrap().bytes().len(),
        10
    );
    assert!(fs
        .read(fh, 60, 10, Fetch::Never)
        .unwrap()
        .bytes()
        .is_empty());
    assert!(fs
        .read(fh, u64::MAX, 10, Fetch::Never)
        .unwrap()
        .bytes()
        .is_empty());
    fs.release(fh);
    assert_eq!(
        fs.read(fh, 0, 1, Fetch::Never).errno().err(),
        Some(libc::EBADF)
    );
}

#[test]
fn missing_users_and_faces_are_enoent_and_remembered() {
    let api = tenant();
    let fs = fs(&api);
    let dir = dir_ino(IdKind::OpenId);
    assert_eq!(
        fs.lookup(dir, name("ou_nobody.jpg"), Fetch::Allowed)
            .errno(),
        Err(libc::ENOENT)
    );
    assert_eq!(
        fs.lookup(dir, name("ou_c.jpg"), Fetch::Allowed).errno(),
        Err(libc::ENOENT)
    );
    assert_eq!(api.requests(Endpoint::Face), 2);
    assert_eq!(
        fs.lookup(dir, name("ou_nobody.jpg"), Fetch::Never).errno(),
        Err(libc::ENOENT)
    );
    assert_eq!(
        api.requests(Endpoint::Face),
        2,
        "negative answers are remembered"
    );
}

#[test]
fn negative_ttl_expires() {
    let api = tenant();
    let clock = TestClock::default();
    let fs = fs_on_clock(
        &api,
        FsConfig {
            negative_ttl: Duration::from_secs(30),
            ..FsConfig::default()
        },
        &clock,
    );
    let dir = dir_ino(IdKind::OpenId);
    assert_eq!(
        fs.lookup(dir, name("ou_c.jpg"), Fetch::Allowed).errno(),
        Err(libc::ENOENT)
    );
    api.inner()
        .set_faces("ou_c", Some(vec![9; 10]), Some(vec![8; 5]));
    clock.advance(Duration::from_secs(29));
    assert_eq!(
        fs.lookup(dir, name("ou_c.jpg"), Fetch::Never).errno(),
        Err(libc::ENOENT),
        "still remembered as absent"
    );
    clock.advance(Duration::from_secs(1));
    assert_eq!(
        fs.lookup(dir, name("ou_c.jpg"), Fetch::Allowed)
            .unwrap()
            .size,
        10
    );
}

#[test]
fn names_outside_the_layout_cost_no_request() {
    let api = tenant();
    let fs = fs(&api);
    for bad in ["x.png", "abc", ".jpg", "ou_a.jpeg"] {
        assert_eq!(
            fs.lookup(dir_ino(IdKind::OpenId), name(bad), Fetch::Allowed)
                .errno(),
            Err(libc::ENOENT)
        );
    }
    assert_eq!(api.requests(Endpoint::Face), 0);
}

#[test]
fn transient_failures_are_eio_and_not_remembered() {
    let api = tenant();
    let fs = fs(&api);
    api.fail_next(Endpoint::Face, [Fault::Transient]);
    let dir = dir_ino(IdKind::OpenId);
    assert_eq!(
        fs.lookup(dir, name("ou_a.jpg"), Fetch::Allowed).errno(),
        Err(libc::EIO)
    );
    assert_eq!(
        fs.lookup(dir, name("ou_a.jpg"), Fetch::Allowed)
            .unwrap()
            .size,
        100
    );
}

#[test]
fn missing_scope_is_eacces() {
    let api = tenant();
    let fs = fs(&api);
    api.fail_next(Endpoint::Face, [Fault::PermissionDenied]);
    assert_eq!(
        fs.lookup(dir_ino(IdKind::UserId), name("c.jpg"), Fetch::Allowed)
            .errno(),
        Err(libc::EACCES)
    );
}

#[test]
fn a_listing_failing_part_way_fails_whole() {
    let api = tenant();
    let fs = fs(&api);
    let dir = dir_ino(IdKind::OpenId);
    // The first page succeeds, the second fails.
    let fh = fs.opendir(dir).unwrap();
    api.fail_next(Endpoint::List, [Fault::Pass, Fault::Transient]);
    assert_eq!(
        fs.readdir(dir, fh, 0, Fetch::Allowed).errno().err(),
        Some(libc::EIO)
    );
}

#[test]
fn an_invalid_page_token_restarts_the_listing() {
    let api = tenant();
    let fs = fs(&api);
    api.fail_next(Endpoint::List, [Fault::InvalidPageToken]);
    assert_eq!(names(&fs, dir_ino(IdKind::OpenId)).len(), 2 + 4);
    assert_eq!(
        api.requests(Endpoint::List),
        3,
        "one refused page, then two pages"
    );
}

#[test]
fn cache_evicts_by_bytes_and_refetches() {
    let api = tenant();
    let fs = fs_with(
        &api,
        FsConfig {
            cache_bytes: 150,
            ..FsConfig::default()
        },
    );
    let dir = dir_ino(IdKind::OpenId);
    let a = fs.lookup(dir, name("ou_a.jpg"), Fetch::Allowed).unwrap();
    fs.lookup(dir, name("ou_b.jpg"), Fetch::Allowed).unwrap();
    assert_eq!(
        fs.cache_usage().bytes,
        60,
        "100 + 60 > 150: ou_a was evicted"
    );
    // stat still answers from what is known, the bytes are downloaded again.
    assert_eq!(fs.getattr(a.ino, Fetch::Never).unwrap().size, 100);
    assert_eq!(
        fs.open(a.ino, OpenMode::Read, Fetch::Never).errno(),
        Err(WOULD_BLOCK)
    );
    assert_eq!(read_all(&fs, a.ino), vec![1; 100]);
    assert_eq!(api.requests(Endpoint::Face), 3);
    assert!(fs.cache_usage().bytes <= 150);
}

#[test]
fn ttl_expiry_refetches_and_mtime_follows_the_bytes() {
    let api = tenant();
    let clock = TestClock::default();
    let fs = fs_with_ttl(&api, Duration::from_secs(30), &clock);
    let dir = dir_ino(IdKind::OpenId);
    let before = fs.lookup(dir, name("ou_a.jpg"), Fetch::Allowed).unwrap();
    clock.advance(Duration::from_secs(29));
    fs.getattr(before.ino, Fetch::Never).unwrap();
    assert_eq!(api.requests(Endpoint::Face), 1, "fresh until the TTL");
    clock.advance(Duration::from_secs(1));
    let same = fs.getattr(before.ino, Fetch::Allowed).unwrap();
    assert_eq!(api.requests(Endpoint::Face), 2);
    assert_eq!(
        stable(same),
        stable(before.clone()),
        "same bytes: same inode, size and mtime"
    );
    api.inner()
        .set_faces("ou_a", Some(vec![7; 120]), Some(vec![2; 40]));
    clock.advance(Duration::from_secs(30));
    // The old inode still describes the old bytes, and is not to be cached.
    let old = fs.getattr(before.ino, Fetch::Allowed).unwrap();
    assert_eq!(
        (old.size, old.mtime, old.valid_for),
        (100, before.mtime, Duration::ZERO)
    );
    // The name now shows the new bytes, under a new inode.
    let after = fs.lookup(dir, name("ou_a.jpg"), Fetch::Never).unwrap();
    assert_eq!(after.size, 120);
    assert_ne!(after.mtime, before.mtime);
    assert_ne!(after.ino, before.ino);
}

#[test]
fn mtime_is_the_same_in_every_mount() {
    let api = tenant();
    let one = fs(&api)
        .lookup(dir_ino(IdKind::OpenId), name("ou_b.jpg"), Fetch::Allowed)
        .unwrap();
    let two = fs(&api)
        .lookup(dir_ino(IdKind::OpenId), name("ou_b.jpg"), Fetch::Allowed)
        .unwrap();
    assert_eq!(one.mtime, two.mtime);
}

#[test]
fn writes_and_directory_misuse() {
    let api = tenant();
    let fs = fs(&api);
    let ino = fs
        .lookup(dir_ino(IdKind::OpenId), name("ou_a.jpg"), Fetch::Allowed)
        .unwrap()
        .ino;
    assert_eq!(
        fs.open(ino, OpenMode::Write { truncate: false }, Fetch::Allowed)
            .errno(),
        Err(libc::EROFS)
    );
    assert_eq!(
        fs.open(ROOT_INO, OpenMode::Read, Fetch::Allowed).errno(),
        Err(libc::EISDIR)
    );
    assert_eq!(fs.opendir(ino).map_err(|e| e.errno()), Err(libc::ENOTDIR));
    assert_eq!(
        fs.lookup(ino, name("x.jpg"), Fetch::Allowed).errno(),
        Err(libc::ENOTDIR)
    );
    assert_eq!(
        fs.getattr(999_999, Fetch::Allowed).errno(),
        Err(libc::ENOENT)
    );
}

#[test]
fn never_fetch_reports_would_block() {
    let api = tenant();
    let fs = fs(&api);
    let dir = dir_ino(IdKind::OpenId);
    assert_eq!(
        fs.lookup(dir, name("ou_a.jpg"), Fetch::Never).errno(),
        Err(WOULD_BLOCK)
    );
    let fh = fs.opendir(dir).unwrap();
    assert_eq!(
        fs.readdir(dir, fh, 0, Fetch::Never).errno().err(),
        Some(WOULD_BLOCK)
    );
    assert_eq!(
        api.requests(Endpoint::Face) + api.requests(Endpoint::List),
        0
    );
}

/// The adapter's contract: a first pass that answers WouldBlock numbers
/// no inode, notes no read-ahead and sends no request; the second pass
/// then answers as if it were the only one.
#[test]
fn a_first_pass_that_would_block_changes_nothing() {
    let api = big_tenant(10);
    let fs = fs_reading_ahead(&api);
    let dir = dir_ino(IdKind::OpenId);
    for file in ["ou_000.jpg", "ou_000.cropped.jpg", "ou_001.jpg"] {
        assert_eq!(
            fs.lookup(dir, name(file), Fetch::Never).errno(),
            Err(WOULD_BLOCK)
        );
    }
    assert_eq!(fs.nodes.len(), 0, "no inode numbered");
    let fh = fs.opendir(dir).unwrap();
    assert_eq!(
        fs.readdir(dir, fh, 0, Fetch::Never).errno().err(),
        Some(WOULD_BLOCK)
    );
    assert!(fs.listings.held_count() == 0);
    let entries: Vec<_> = fs
        .readdir(dir, fh, 0, Fetch::Allowed)
        .unwrap()
        .entries()
        .collect();
    assert_eq!(entries.len(), 2 + 20);
    let numbered = fs.nodes.len();
    for file in ["ou_000.jpg", "ou_000.cropped.jpg"] {
        assert_eq!(
            fs.lookup(dir, name(file), Fetch::Never).errno(),
            Err(WOULD_BLOCK)
        );
    }
    assert!(
        fs.readahead.is_idle(),
        "lookups that would block note no read-ahead"
    );
    assert_eq!(fs.nodes.len(), numbered);
    assert_eq!(api.requests(Endpoint::Face), 0);
    // Never, then Allowed, as the adapter does: the same inode as readdir
    // gave, and read-ahead as for a walk that asked only once.
    let first = fs.lookup(dir, name("ou_000.jpg"), Fetch::Allowed).unwrap();
    assert_eq!(
        Some(first.ino),
        entries
            .iter()
            .find(|(_, e)| e.name == "ou_000.jpg")
            .map(|(_, e)| e.ino)
    );
    fs.lookup(dir, name("ou_000.cropped.jpg"), Fetch::Allowed)
        .unwrap();
    wait_for_requests(&api, 6);
    assert_eq!(
        api.requests(Endpoint::Face),
        6,
        "two lookups, four read ahead"
    );
    assert_eq!(
        fs.getattr(first.ino, Fetch::Never).errno().map(|a| a.size),
        Ok(10),
        "answered from memory now"
    );
    fs.releasedir(fh);
}

#[test]
fn names_that_do_not_exist_cost_no_memory_and_forgotten_faces_go() {
    let api = tenant();
    let fs = fs(&api);
    let dir = dir_ino(IdKind::OpenId);
    for i in 0..500 {
        let name = format!("ou_nobody{i}.jpg");
        assert_eq!(
            fs.lookup(dir, name.as_ref(), Fetch::Allowed).errno(),
            Err(libc::ENOENT)
        );
    }
    assert_eq!(fs.nodes.len(), 0, "no inode for an absent name");
    let a = fs.lookup(dir, name("ou_a.jpg"), Fetch::Allowed).unwrap();
    fs.lookup(dir, name("ou_a.jpg"), Fetch::Never).unwrap();
    assert_eq!(fs.nodes.len(), 1);
    fs.forget(a.ino, 2);
    assert_eq!(fs.nodes.len(), 0);
    assert_eq!(fs.getattr(a.ino, Fetch::Never).errno(), Err(libc::ENOENT));
    let again = fs.lookup(dir, name("ou_a.jpg"), Fetch::Never).unwrap();
    assert_eq!(again.ino, a.ino, "a name keeps its number");
}

#[test]
fn readdir_pages_through_one_snapshot_from_any_offset() {
    let api = big_tenant(30);
    let fs = fs(&api);
    let dir = dir_ino(IdKind::UserId);
    let fh = fs.opendir(dir).unwrap();
    let all: Vec<(u64, DirEntry)> = fs
        .readdir(dir, fh, 0, Fetch::Allowed)
        .unwrap()
        .entries()
        .collect();
    assert_eq!(all.len(), 2 + 60);
    // The service changes; the open directory keeps its snapshot.
    api.inner()
        .add_user(&["ou_new", "on_new", "new"], Some(vec![1]), None);
    for offset in [1, 2, 17, 61, 62, 63, 1000] {
        let page: Vec<(u64, DirEntry)> = fs
            .readdir(dir, fh, offset, Fetch::Never)
            .unwrap()
            .entries()
            .collect();
        assert_eq!(
            page,
            all[all.len().min(offset as usize)..],
            "offset {offset}"
        );
    }
    assert_eq!(all[2].1.name, "u000.jpg");
    assert_eq!(all[3].1.name, "u000.cropped.jpg");
    let looked_up = fs
        .lookup(dir, name("u000.cropped.jpg"), Fetch::Allowed)
        .unwrap();
    assert_eq!(looked_up.ino, all[3].1.ino, "readdir and lookup agree");
    fs.releasedir(fh);
    assert_eq!(api.requests(Endpoint::List), 1);
}

/// Read by inode with a cache that holds one face: a file being read
/// keeps its face between reads instead of downloading it again.
#[test]
fn a_face_being_read_is_not_downloaded_again_when_evicted() {
    let api = tenant();
    let fs = fs_with(
        &api,
        FsConfig {
            cache_bytes: 100,
            readahead: 0,
            ..FsConfig::default()
        },
    );
    let dir = dir_ino(IdKind::OpenId);
    let a = fs.lookup(dir, name("ou_a.jpg"), Fetch::Allowed).unwrap();
    let b = fs.lookup(dir, name("ou_b.jpg"), Fetch::Allowed).unwrap();
    assert_eq!(api.requests(Endpoint::Face), 2, "b evicted a");
    let part = |ino, offset| {
        fs.read_inode(ino, offset, 10, Fetch::Allowed)
            .unwrap()
            .bytes()
            .to_vec()
    };
    assert_eq!(part(a.ino, 0), vec![1; 10]);
    assert_eq!(part(b.ino, 0), vec![3; 10]);
    assert_eq!(
        api.requests(Endpoint::Face),
        4,
        "each downloaded once more, evicting the other"
    );
    for offset in (10..100).step_by(10) {
        assert_eq!(part(a.ino, offset), vec![1; 10]);
        assert_eq!(part(b.ino, offset.min(50)), vec![3; 10]);
    }
    assert_eq!(
        api.requests(Endpoint::Face),
        4,
        "the reads in progress kept their faces"
    );
    assert!(
        fs.open.pinned(a.ino).is_none(),
        "unpinned once all was read"
    );
}

fn big_tenant(users: usize) -> Arc<TestApi> {
    let api = MemoryApi::with_page_size(50);
    for i in 0..users {
        let ids = [
            format!("ou_{i:03}"),
            format!("on_{i:03}"),
            format!("u{i:03}"),
        ];
        api.add_user(
            &[&ids[0], &ids[1], &ids[2]],
            Some(vec![i as u8; 10 + i]),
            Some(vec![i as u8; 5]),
        );
    }
    Arc::new(FailureApi::new(api))
}

fn fs_reading_ahead(api: &Arc<TestApi>) -> Arc<FaceFs> {
    fs_with(
        api,
        FsConfig {
            readahead: 16,
            prefetch_threads: 4,
            ..FsConfig::default()
        },
    )
}

/// Waits until the prefetchers have made `n` requests (they run on
/// threads); fails if they have not within 10 s.
fn wait_for_requests(api: &TestApi, n: usize) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while api.requests(Endpoint::Face) < n {
        assert!(
            std::time::Instant::now() < deadline,
            "{} face requests after 10 s, expected {n}",
            api.requests(Endpoint::Face)
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn a_sequential_walk_is_read_ahead_with_one_request_per_file() {
    let api = big_tenant(40);
    let fs = fs_reading_ahead(&api);
    let dir = dir_ino(IdKind::OpenId);
    let entries = names(&fs, dir);
    let files: Vec<&String> = entries.iter().skip(2).collect();
    assert_eq!(files.len(), 80);
    fs.lookup(dir, name(files[0]), Fetch::Allowed).unwrap();
    fs.lookup(dir, name(files[1]), Fetch::Allowed).unwrap();
    // Two lookups in listing order start read-ahead of the next four.
    wait_for_requests(&api, 6);
    assert_eq!(api.requests(Endpoint::Face), 6);
    for (i, file) in files.iter().enumerate().skip(2) {
        let attr = fs.lookup(dir, name(file), Fetch::Allowed).unwrap();
        assert_eq!(attr.size, if i % 2 == 0 { 10 + i as u64 / 2 } else { 5 });
    }
    wait_for_requests(&api, 80);
    assert_eq!(
        api.requests(Endpoint::Face),
        80,
        "read-ahead and lookups shared every download"
    );
}

#[test]
fn a_reader_that_joined_a_deferred_read_ahead_asks_for_itself() {
    let api = tenant();
    let fs = fs(&api);
    let key = FaceKey::new(IdKind::OpenId, "ou_a", false);
    // A read-ahead that gets no turn soon enough gives up, and says so.
    api.fail_next(Endpoint::Face, [Fault::Deferred]);
    assert!(matches!(
        fs.faces.load_ahead(&key, &*fs),
        Err(Stop::Failed(_))
    ));
    assert_eq!(api.requests(Endpoint::Face), 1);
    // A reader handed that answer (it joined the read-ahead's download)
    // does not fail with it: it asks for itself.
    api.fail_next(Endpoint::Face, [Fault::Deferred]);
    let dir = dir_ino(IdKind::OpenId);
    assert_eq!(
        fs.lookup(dir, name("ou_a.jpg"), Fetch::Allowed)
            .unwrap()
            .size,
        100
    );
    assert_eq!(api.requests(Endpoint::Face), 3);
}

#[test]
fn read_ahead_needs_lookups_in_listing_order() {
    let api = big_tenant(40);
    let fs = fs_reading_ahead(&api);
    let dir = dir_ino(IdKind::OpenId);
    names(&fs, dir);
    assert_eq!(
        api.requests(Endpoint::Face),
        0,
        "a plain readdir downloads nothing"
    );
    // Random access: every fourth file, backwards.
    for i in (0..40).rev().step_by(4) {
        fs.lookup(dir, name(&format!("ou_{i:03}.jpg")), Fetch::Allowed)
            .unwrap();
    }
    // Read-ahead starts its downloads inside the lookup: none started
    // means none will come.
    assert_eq!(
        fs.readahead.started(),
        0,
        "no read-ahead for a walk that is not sequential"
    );
    assert_eq!(api.requests(Endpoint::Face), 10);
}

#[test]
fn an_inode_is_one_version_and_reads_its_own_bytes_or_eio() {
    let api = tenant();
    let clock = TestClock::default();
    let fs = fs_with_ttl(&api, Duration::from_secs(30), &clock);
    let dir = dir_ino(IdKind::OpenId);
    let old = fs.lookup(dir, name("ou_a.jpg"), Fetch::Allowed).unwrap();
    // Read by inode, as the kernel does once it opens files itself.
    let read = |ino, fetch| {
        fs.read_inode(ino, 0, 4096, fetch)
            .errno()
            .map(|s| s.bytes().to_vec())
    };
    assert_eq!(read(old.ino, Fetch::Never), Ok(vec![1; 100]));
    // Its bytes stay right past the TTL: a version never changes.
    clock.advance(Duration::from_secs(60));
    assert_eq!(read(old.ino, Fetch::Never), Ok(vec![1; 100]));
    assert_eq!(api.requests(Endpoint::Face), 1);
    // Re-enrolled: the name gets a new inode with the new bytes...
    api.inner().set_faces("ou_a", Some(vec![5; 120]), None);
    let new = fs.lookup(dir, name("ou_a.jpg"), Fetch::Allowed).unwrap();
    assert_ne!(new.ino, old.ino);
    assert_eq!(read(new.ino, Fetch::Never), Ok(vec![5; 120]));
    // ...and the old inode, its bytes gone, fails rather than mixing.
    assert_eq!(read(old.ino, Fetch::Allowed), Err(libc::EIO));
    // A new open of it came through a name the kernel has not forgotten
    // yet: ESTALE, so that the kernel looks the name up again.
    assert_eq!(
        fs.open(old.ino, OpenMode::Read, Fetch::Allowed).errno(),
        Err(libc::ESTALE)
    );
    // An open handle of the old path keeps what it opened.
    let opened = fs.open(new.ino, OpenMode::Read, Fetch::Never).unwrap();
    api.inner().set_faces("ou_a", Some(vec![6; 80]), None);
    clock.advance(Duration::from_secs(60));
    assert_eq!(
        fs.read(opened, 0, 4096, Fetch::Never).unwrap().bytes(),
        &[5; 120][..]
    );
}

#[test]
fn answers_carry_how_long_they_stay_true() {
    let api = tenant();
    let clock = TestClock::default();
    let fs = fs_with_ttl(&api, Duration::from_secs(100), &clock);
    let dir = dir_ino(IdKind::OpenId);
    let attr = fs.lookup(dir, name("ou_a.jpg"), Fetch::Allowed).unwrap();
    assert_eq!(attr.valid_for, Duration::from_secs(100));
    clock.advance(Duration::from_secs(40));
    let attr = fs.getattr(attr.ino, Fetch::Never).unwrap();
    assert_eq!(attr.valid_for, Duration::from_secs(60));
}

#[test]
fn concurrent_readers_share_one_download() {
    let api = tenant();
    let fs = fs(&api);
    let threads: Vec<_> = (0..8)
        .map(|_| {
            let fs = fs.clone();
            std::thread::spawn(move || {
                fs.lookup(
                    dir_ino(IdKind::OpenId),
                    OsStr::new("ou_b.jpg"),
                    Fetch::Allowed,
                )
            })
        })
        .collect();
    for t in threads {
        assert_eq!(t.join().unwrap().unwrap().size, 60);
    }
    // Whether the threads overlapped (one shared download) or not (the
    // later ones hit the cache), the API sees one request.
    assert_eq!(api.requests(Endpoint::Face), 1);
}

/// Runs `work` on a thread of its own and fails the test if it is not
/// done within 10 s: for what must not wait on anything held.
fn within_10s<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(work());
    });
    rx.recv_timeout(Duration::from_secs(10))
        .expect("waited on something held (a download or a disk write)")
}

#[test]
fn a_hung_download_is_shared_and_the_kernels_thread_never_waits_for_it() {
    let api = tenant();
    let fs = fs(&api);
    let dir = dir_ino(IdKind::OpenId);
    let gate = Arc::new(crate::sync::gate::Gate::default());
    api.fail_next(Endpoint::Face, [Fault::Hold(gate.clone())]);
    let readers: Vec<_> = (0..3)
        .map(|_| {
            let fs = fs.clone();
            std::thread::spawn(move || fs.lookup(dir, name("ou_a.jpg"), Fetch::Allowed).errno())
        })
        .collect();
    gate.wait_for_waiters(1, Duration::from_secs(10));
    // While the download hangs, a first pass answers at once, changing nothing.
    let first_pass = {
        let fs = fs.clone();
        within_10s(move || fs.lookup(dir, name("ou_a.jpg"), Fetch::Never).errno())
    };
    assert_eq!(first_pass.map(drop), Err(WOULD_BLOCK));
    let root = {
        let fs = fs.clone();
        within_10s(move || fs.lookup(ROOT_INO, name("open_id"), Fetch::Never).errno())
    };
    assert_eq!(root.unwrap().ino, dir);
    gate.open();
    for reader in readers {
        assert_eq!(reader.join().unwrap().unwrap().size, 100);
    }
    assert_eq!(
        api.requests(Endpoint::Face),
        1,
        "one download for all readers"
    );
    assert_eq!(fs.metrics().cache_misses.get(), 1);
}

mod with_a_store {
    use super::*;
    use crate::fs::store::tests::TempStoreDir;

    const TTL: Duration = Duration::from_secs(600);
    const MAX_STALE: Duration = Duration::from_secs(3600);

    fn mount(api: &Arc<TestApi>, dir: &TempStoreDir, clock: &TestClock) -> Arc<FaceFs> {
        FaceFs::with_clock(
            api.clone(),
            FsConfig {
                ttl: TTL,
                max_stale: MAX_STALE,
                readahead: 0,
                ..FsConfig::default()
            },
            Some(dir.open("tenant", 1 << 30)),
            Arc::new(clock.clone()),
        )
    }

    fn requests(api: &TestApi) -> (usize, usize) {
        (api.requests(Endpoint::Face), api.requests(Endpoint::List))
    }

    fn look(fs: &FaceFs, file: &str) -> Result<Attr, i32> {
        fs.lookup(dir_ino(IdKind::OpenId), name(file), Fetch::Allowed)
            .errno()
    }

    #[test]
    fn a_stalled_listing_write_holds_up_no_answer_of_the_kernels_thread() {
        let api = tenant();
        let dir = TempStoreDir::new("core-stalled-write");
        let fs = FaceFs::with_clock(
            api.clone(),
            FsConfig {
                ttl: TTL,
                // Read-ahead on: a lookup reads the listing to plan it.
                readahead: 4,
                prefetch_threads: 2,
                ..FsConfig::default()
            },
            Some(dir.open("tenant", 1 << 30)),
            Arc::new(TestClock::default()),
        );
        let open_id = dir_ino(IdKind::OpenId);
        names(&fs, open_id);
        let known = look(&fs, "ou_a.jpg").unwrap();
        let gate = Arc::new(crate::sync::gate::Gate::default());
        fs.store().unwrap().hold_writes(gate.clone());
        // An event adds a user: its listing is rewritten in the store, and
        // the disk stalls.
        let changer = {
            let fs = fs.clone();
            std::thread::spawn(move || {
                fs.apply_user_change(&[(IdKind::OpenId, "ou_new")], Some(true))
            })
        };
        gate.wait_for_waiters(1, Duration::from_secs(10));
        let (looked, listed) = {
            let fs = fs.clone();
            within_10s(move || {
                let looked = fs.lookup(open_id, name("ou_a.jpg"), Fetch::Never).errno();
                let fh = fs.opendir(open_id).unwrap();
                let page = fs.readdir(open_id, fh, 0, Fetch::Never).errno();
                let listed: Vec<String> = page
                    .map(|p| p.entries().map(|(_, e)| e.name).collect())
                    .unwrap_or_default();
                fs.releasedir(fh);
                (looked, listed)
            })
        };
        assert_eq!(looked.unwrap().ino, known.ino);
        assert!(
            listed.contains(&"ou_new.jpg".to_owned()),
            "memory shows the change before the disk has it: {listed:?}"
        );
        gate.open();
        changer.join().unwrap();
        drop(fs);
        // The store ends with what memory held.
        let again = mount(&api, &dir, &TestClock::default());
        assert!(names(&again, open_id).contains(&"ou_new.jpg".to_owned()));
    }

    #[test]
    fn a_remount_over_a_warm_store_asks_the_api_nothing_within_the_ttl() {
        let api = tenant();
        let dir = TempStoreDir::new("core-warm");
        let clock = TestClock::default();
        let first = mount(&api, &dir, &clock);
        let listed = names(&first, dir_ino(IdKind::OpenId));
        let attr = look(&first, "ou_a.jpg").unwrap();
        assert_eq!(read_all(&first, attr.ino), vec![1; 100]);
        let asked = requests(&api);
        assert_eq!(asked, (1, 2));
        drop(first);

        clock.advance(TTL / 2);
        let second = mount(&api, &dir, &clock);
        assert_eq!(names(&second, dir_ino(IdKind::OpenId)), listed);
        let again = look(&second, "ou_a.jpg").unwrap();
        assert_eq!(
            stable(again.clone()),
            stable(attr),
            "same inode, size and mtime"
        );
        assert_eq!(read_all(&second, again.ino), vec![1; 100]);
        assert_eq!(requests(&api), asked, "the store answered everything");
        assert_eq!(second.metrics().cache_misses.get(), 0);
        let stored = second.store().unwrap().metrics();
        assert_eq!(
            stored.hits.get(),
            1,
            "the read's bytes, from the store once"
        );
        assert_eq!(stored.writes.get(), 0);
        // What is left of the TTL (the store keeps milliseconds) is what
        // the kernel may cache it for.
        let left = again.valid_for;
        assert!(
            left <= TTL / 2 && left > TTL / 2 - Duration::from_millis(1),
            "{left:?}"
        );

        clock.advance(TTL / 2);
        look(&second, "ou_a.jpg").unwrap();
        assert_eq!(
            requests(&api).0,
            2,
            "past the TTL the face is downloaded again"
        );
    }

    #[test]
    fn stat_reads_only_the_stored_header_and_a_damaged_body_is_fetched_at_read() {
        let api = tenant();
        let dir = TempStoreDir::new("core-header");
        let clock = TestClock::default();
        let first = mount(&api, &dir, &clock);
        let attr = look(&first, "ou_a.jpg").unwrap();
        drop(first);
        // One bit of the face's bytes (its last byte) flipped on disk.
        let file = std::fs::read_dir(dir.0.join("facefs-v2"))
            .unwrap()
            .flatten()
            .flat_map(|tenant| std::fs::read_dir(tenant.path().join("faces")).unwrap())
            .flatten()
            .flat_map(|prefix| std::fs::read_dir(prefix.path()).unwrap())
            .flatten()
            .next()
            .unwrap()
            .path();
        let mut bytes = std::fs::read(&file).unwrap();
        *bytes.last_mut().unwrap() ^= 1;
        std::fs::write(&file, bytes).unwrap();

        let fs = mount(&api, &dir, &clock);
        let again = look(&fs, "ou_a.jpg").unwrap();
        assert_eq!(stable(again.clone()), stable(attr));
        assert_eq!(
            api.requests(Endpoint::Face),
            1,
            "stat from the header alone"
        );
        assert_eq!(
            read_all(&fs, again.ino),
            vec![1; 100],
            "the API's bytes, not the damaged ones"
        );
        assert_eq!(
            api.requests(Endpoint::Face),
            2,
            "downloaded again at the read"
        );
    }

    #[test]
    fn a_stored_face_past_its_ttl_stands_in_when_the_api_fails() {
        let api = tenant();
        let dir = TempStoreDir::new("core-stale");
        let clock = TestClock::default();
        let first = mount(&api, &dir, &clock);
        let fresh = look(&first, "ou_a.jpg").unwrap();
        drop(first);

        clock.advance(TTL + Duration::from_secs(1));
        let fs = mount(&api, &dir, &clock);
        api.fail_next(Endpoint::Face, [Fault::Transient]);
        let stale = look(&fs, "ou_a.jpg").unwrap();
        assert_eq!(stable(stale.clone()), stable(fresh));
        assert_eq!(
            stale.valid_for,
            Duration::ZERO,
            "a stale answer is not cached"
        );
        assert_eq!(read_all(&fs, stale.ino), vec![1; 100]);
        assert_eq!(api.requests(Endpoint::Face), 2);
        assert_eq!(fs.metrics().stale_served.get(), 1, "the lookup's");

        // During the back-off, stale faces cost no request.
        clock.advance(OUTAGE_BACKOFF / 2);
        look(&fs, "ou_a.jpg").unwrap();
        assert_eq!(api.requests(Endpoint::Face), 2);
        // A face with nothing to stand in for it still asks.
        api.fail_next(Endpoint::Face, [Fault::Transient]);
        assert_eq!(look(&fs, "ou_b.jpg"), Err(libc::EIO));
        assert_eq!(api.requests(Endpoint::Face), 3);

        // After it, the API is asked again, and its answer is fresh.
        clock.advance(OUTAGE_BACKOFF);
        assert!(look(&fs, "ou_a.jpg").unwrap().valid_for > Duration::ZERO);
        assert_eq!(api.requests(Endpoint::Face), 4);
    }

    #[test]
    fn stale_bytes_have_a_bound_and_never_cover_an_answer() {
        let api = tenant();
        let dir = TempStoreDir::new("core-bound");
        let clock = TestClock::default();
        let fs = mount(&api, &dir, &clock);
        look(&fs, "ou_a.jpg").unwrap();
        look(&fs, "ou_b.jpg").unwrap();

        // Quota used up counts as an outage; refused access does not.
        clock.advance(TTL + MAX_STALE / 2);
        api.fail_next(Endpoint::Face, [Fault::QuotaExhausted]);
        assert!(look(&fs, "ou_a.jpg").is_ok());
        clock.advance(OUTAGE_BACKOFF * 2);
        api.fail_next(Endpoint::Face, [Fault::PermissionDenied]);
        assert_eq!(look(&fs, "ou_b.jpg"), Err(libc::EACCES));

        // "Not found" is the answer, and the stored face goes.
        api.inner().set_faces("ou_b", None, None);
        assert_eq!(look(&fs, "ou_b.jpg"), Err(libc::ENOENT));

        // Beyond --max-stale, an outage is EIO.
        clock.advance(MAX_STALE);
        api.fail_next(Endpoint::Face, [Fault::Transient]);
        assert_eq!(look(&fs, "ou_a.jpg"), Err(libc::EIO));
    }

    #[test]
    fn a_face_the_api_says_is_gone_leaves_the_store() {
        let api = tenant();
        let dir = TempStoreDir::new("core-gone");
        let clock = TestClock::default();
        let fs = mount(&api, &dir, &clock);
        look(&fs, "ou_b.jpg").unwrap();
        clock.advance(TTL);
        api.inner().set_faces("ou_b", None, None);
        assert_eq!(look(&fs, "ou_b.jpg"), Err(libc::ENOENT));
        drop(fs);
        // A new mount, during an outage, has nothing to serve in its place.
        let fs = mount(&api, &dir, &clock);
        api.fail_next(Endpoint::Face, [Fault::Transient]);
        assert_eq!(look(&fs, "ou_b.jpg"), Err(libc::EIO));
    }

    /// 20,000 events adding users cost the changes: each edits the listing
    /// in place, and the store is written behind — a write covers every
    /// change made while the one before it ran — not once per event.
    #[test]
    fn a_burst_of_events_costs_a_few_listing_writes_not_one_each() {
        let api = tenant();
        let dir = TempStoreDir::new("core-burst");
        let clock = TestClock::default();
        let fs = mount(&api, &dir, &clock);
        let ino = dir_ino(IdKind::OpenId);
        let before = names(&fs, ino).len();
        assert!(fs.flush_store(Duration::from_secs(10)));
        let store = fs.store().unwrap().clone();
        let writes = store.metrics().listing_writes.get();
        for i in 0..20_000 {
            fs.apply_user_change(&[(IdKind::OpenId, &format!("ou_new{i}"))], Some(true));
        }
        assert!(fs.flush_store(Duration::from_secs(30)));
        let written = store.metrics().listing_writes.get() - writes;
        // Each write covers every change made while the one before ran.
        assert!((1..2_000).contains(&written), "{written} listing writes");
        assert_eq!(names(&fs, ino).len(), before + 40_000);
        let stored = store.listing(IdKind::OpenId).unwrap();
        // Two files a user, and `.` and `..`.
        assert_eq!(
            2 * stored.len() + 2,
            before + 40_000,
            "the store holds what memory does"
        );
    }

    #[test]
    fn a_stored_listing_is_never_served_past_its_ttl() {
        let api = tenant();
        let dir = TempStoreDir::new("core-listing");
        let clock = TestClock::default();
        let first = mount(&api, &dir, &clock);
        names(&first, dir_ino(IdKind::OpenId));
        drop(first);
        clock.advance(TTL);
        let fs = mount(&api, &dir, &clock);
        api.fail_next(Endpoint::List, [Fault::Transient]);
        let ino = dir_ino(IdKind::OpenId);
        let fh = fs.opendir(ino).unwrap();
        assert_eq!(
            fs.readdir(ino, fh, 0, Fetch::Allowed).errno().err(),
            Some(libc::EIO)
        );
        assert_eq!(
            names(&fs, ino).len(),
            2 + 4,
            "listed again once the API answers"
        );
    }
}

#[test]
fn an_event_drops_a_users_faces_and_edits_the_listing_without_a_request() {
    let api = tenant();
    let fs = fs(&api);
    let dir = dir_ino(IdKind::OpenId);
    let before = names(&fs, dir);
    let attr = fs.lookup(dir, name("ou_a.jpg"), Fetch::Allowed).unwrap();
    assert_eq!(attr.size, 100);
    let lists = api.requests(Endpoint::List);

    api.inner()
        .set_faces("ou_a", Some(vec![7; 120]), Some(vec![8; 50]));
    let forget = fs.user_changed(
        &[(IdKind::OpenId, "ou_a"), (IdKind::UnionId, "on_a")],
        Some(true),
    );
    // The kernel is told about the name it looked up, not the ones it never
    // saw (each notice takes the directory's lock).
    assert_eq!(
        forget,
        [
            Invalidation::Entry {
                parent: dir,
                name: "ou_a.jpg".into()
            },
            Invalidation::Inode(attr.ino)
        ]
    );
    // Well within the TTL, the next stat asks the API again and sees the new face.
    let again = fs.lookup(dir, name("ou_a.jpg"), Fetch::Allowed).unwrap();
    assert_eq!(again.size, 120);
    assert_eq!(
        fs.getattr(attr.ino, Fetch::Allowed).unwrap().size,
        100,
        "the old inode keeps its version"
    );

    // face_uploaded false takes the user out of the listing, true puts it back.
    fs.user_changed(&[(IdKind::OpenId, "ou_b")], Some(false));
    let without: Vec<String> = names(&fs, dir);
    assert!(
        !without.iter().any(|n| n.starts_with("ou_b")),
        "{without:?}"
    );
    fs.user_changed(&[(IdKind::OpenId, "ou_b")], Some(true));
    let mut with = names(&fs, dir);
    let mut expected = before.clone();
    with.sort();
    expected.sort();
    assert_eq!(with, expected);
    assert_eq!(
        api.requests(Endpoint::List),
        lists,
        "no listing was fetched again"
    );
}

#[test]
fn while_the_event_connection_is_up_faces_are_trusted_longer_and_only_then() {
    let api = tenant();
    let clock = TestClock::default();
    let ttl = Duration::from_secs(60);
    let fs = fs_on_clock(
        &api,
        FsConfig {
            ttl,
            ttl_with_events: Duration::from_secs(3600),
            readahead: 0,
            ..FsConfig::default()
        },
        &clock,
    );
    let dir = dir_ino(IdKind::OpenId);
    let look = || fs.lookup(dir, name("ou_a.jpg"), Fetch::Allowed).unwrap();
    fs.events_connected(true);
    clock.advance(Duration::from_secs(1));
    look();
    assert_eq!(api.requests(Endpoint::Face), 1);
    clock.advance(ttl * 2);
    let attr = look();
    assert_eq!(
        api.requests(Endpoint::Face),
        1,
        "vouched for by the connection"
    );
    assert_eq!(
        attr.valid_for, ttl,
        "the kernel keeps it no longer than --ttl"
    );

    // Down: --ttl alone.
    fs.events_connected(false);
    look();
    assert_eq!(api.requests(Endpoint::Face), 2);
    // Up again: what was fetched before it came back gets --ttl alone too.
    clock.advance(Duration::from_secs(1));
    fs.events_connected(true);
    clock.advance(ttl * 2);
    look();
    assert_eq!(api.requests(Endpoint::Face), 3);
    // And nothing is trusted past --ttl-with-events.
    clock.advance(Duration::from_secs(3600));
    look();
    assert_eq!(api.requests(Endpoint::Face), 4);
}

/// A user a fresh listing shows without a face is `ENOENT` from the
/// listing — on the kernel's thread, without the API — and the kernel may
/// keep the absence for `--negative-ttl` or the listing's remaining trust,
/// whichever is shorter. A name the listing does not know still asks the
/// API; a listing past its TTL answers nothing; an event giving the user a
/// face makes the kernel forget the absence.
#[test]
fn a_fresh_listing_answers_for_users_without_a_face() {
    let api = tenant();
    let clock = TestClock::default();
    let fs = fs_with_ttl(&api, Duration::from_secs(60), &clock);
    let dir = dir_ino(IdKind::OpenId);
    names(&fs, dir);
    let faces = api.requests(Endpoint::Face);
    let absent = |file: &str| match fs.lookup(dir, name(file), Fetch::Never) {
        Answer::Done(Err(e)) if e.errno() == libc::ENOENT => e.kernel_ttl(),
        other => panic!("{file}: {other:?}"),
    };
    // --negative-ttl (30 s) is the shorter, then the listing's 10 s left.
    assert_eq!(absent("ou_c.jpg"), Some(Duration::from_secs(30)));
    assert_eq!(absent("ou_c.cropped.jpg"), Some(Duration::from_secs(30)));
    clock.advance(Duration::from_secs(50));
    assert_eq!(absent("ou_c.jpg"), Some(Duration::from_secs(10)));
    assert_eq!(api.requests(Endpoint::Face), faces, "the API was not asked");
    assert!(matches!(
        fs.lookup(dir, name("ou_unknown.jpg"), Fetch::Never),
        Answer::WouldBlock
    ));
    // An event gives ou_c a face: the kernel forgets the absence, and the
    // listing shows the face.
    let forget = fs.user_changed(&[(IdKind::OpenId, "ou_c")], Some(true));
    assert!(forget.contains(&Invalidation::Entry {
        parent: dir,
        name: "ou_c.jpg".into()
    }));
    assert!(matches!(
        fs.lookup(dir, name("ou_c.jpg"), Fetch::Never),
        Answer::WouldBlock
    ));
    // It loses it again; then the listing goes stale and answers nothing.
    fs.user_changed(&[(IdKind::OpenId, "ou_c")], Some(false));
    assert_eq!(absent("ou_c.jpg"), Some(Duration::from_secs(10)));
    clock.advance(Duration::from_secs(11));
    assert!(matches!(
        fs.lookup(dir, name("ou_c.jpg"), Fetch::Never),
        Answer::WouldBlock
    ));
}

/// After the API said "does not exist" 8 times in a directory with no
/// fresh listing, the directory is listed in the background, and then
/// answers for its users without a face; reads of faces that exist list
/// nothing.
#[test]
fn repeated_absences_list_the_directory_in_the_background() {
    use crate::fs::listings::MISSES_BEFORE_LISTING;
    let api = tenant();
    let fs = fs(&api);
    let dir = dir_ino(IdKind::OpenId);
    for file in ["ou_a.jpg", "ou_b.jpg", "ou_a.cropped.jpg"] {
        fs.lookup(dir, name(file), Fetch::Allowed).unwrap();
    }
    assert_eq!(
        api.requests(Endpoint::List),
        0,
        "faces that exist list nothing"
    );
    for i in 0..MISSES_BEFORE_LISTING - 1 {
        let file = format!("ou_gone{i}.jpg");
        assert_eq!(
            fs.lookup(dir, name(&file), Fetch::Allowed).errno().err(),
            Some(libc::ENOENT)
        );
    }
    assert_eq!(api.requests(Endpoint::List), 0);
    assert_eq!(
        fs.lookup(dir, name("ou_c.jpg"), Fetch::Allowed)
            .errno()
            .err(),
        Some(libc::ENOENT)
    );
    let listed = Instant::now() + Duration::from_secs(10);
    while !matches!(
        fs.lookup(dir, name("ou_c.cropped.jpg"), Fetch::Never),
        Answer::Done(Err(_))
    ) {
        assert!(Instant::now() < listed, "not listed in the background");
        std::thread::sleep(Duration::from_millis(5));
    }
    // One listing, whatever its pages: as many as a listing by readdir.
    let pages = api.requests(Endpoint::List);
    names(&fs_with(&api, FsConfig::default()), dir);
    assert_eq!(api.requests(Endpoint::List), 2 * pages);
}

#[test]
fn readdirplus_hands_over_what_is_known_and_counts_each_entry_once() {
    let api = tenant();
    let fs = fs(&api);
    let dir = dir_ino(IdKind::OpenId);
    // ou_a looked up before: its version is known; ou_b's is not.
    let a = fs.lookup(dir, name("ou_a.jpg"), Fetch::Allowed).unwrap();
    let fh = fs.opendir(dir).unwrap();
    let entries = fs.readdirplus(dir, fh, 0, Fetch::Allowed).unwrap();
    let names: Vec<&str> = entries.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(
        names,
        [
            ".",
            "..",
            "ou_a.jpg",
            "ou_a.cropped.jpg",
            "ou_b.jpg",
            "ou_b.cropped.jpg"
        ]
    );
    let entry = |n: &str| entries.iter().find(|e| e.name == n).unwrap();
    assert!(!entry(".").counted && !entry("..").counted, "never linked");
    assert_eq!(entry(".").attr.ino, dir);
    let known = entry("ou_a.jpg");
    assert!(known.counted);
    assert_eq!((known.attr.ino, known.attr.size), (a.ino, 100));
    assert!(known.attr.valid_for > Duration::ZERO, "the kernel keeps it");
    let unknown = entry("ou_b.jpg");
    assert!(unknown.counted && unknown.attr.ino != 0);
    assert_eq!(
        unknown.attr.valid_for,
        Duration::ZERO,
        "looked up before use"
    );
    assert_eq!(api.requests(Endpoint::Face), 1, "listing downloads nothing");
    assert_eq!(fs.kernel_faces(), 4);

    // The lookup of a listed name finds the inode the kernel was given.
    let b = fs.lookup(dir, name("ou_b.jpg"), Fetch::Allowed).unwrap();
    assert_eq!((b.ino, b.size), (unknown.attr.ino, 60));
    // A stat of a listed inode learns its version too.
    let crop = entry("ou_b.cropped.jpg").attr.ino;
    assert_eq!(fs.getattr(crop, Fetch::Allowed).unwrap().size, 30);
    assert_eq!(read_all(&fs, crop), vec![4; 30]);

    // Each entry was one lookup: forgetting them all (and ou_a's and
    // ou_b's own lookups) leaves nothing.
    for e in entries.iter().filter(|e| e.counted) {
        fs.forget(e.attr.ino, 1);
    }
    assert_eq!(fs.kernel_faces(), 2, "ou_a and ou_b still looked up once");
    fs.forget(a.ino, 1);
    fs.forget(b.ino, 1);
    assert_eq!(fs.kernel_faces(), 0);
    fs.releasedir(fh);
}

#[test]
fn a_listed_face_not_yet_looked_up_opens_after_the_kernel_looks_it_up() {
    let api = tenant();
    let fs = fs(&api);
    let dir = dir_ino(IdKind::OpenId);
    let fh = fs.opendir(dir).unwrap();
    let entries = fs.readdirplus(dir, fh, 0, Fetch::Allowed).unwrap();
    let listed = entries.iter().find(|e| e.name == "ou_a.jpg").unwrap();
    // Opened by inode without a lookup (the kernel always looks a name
    // with no valid time up first, but an open must not trust that).
    let fh_face = fs
        .open(listed.attr.ino, OpenMode::Read, Fetch::Allowed)
        .unwrap();
    assert_eq!(
        fs.read(fh_face, 0, 4096, Fetch::Never).unwrap().bytes(),
        &[1; 100][..]
    );
    assert_eq!(api.requests(Endpoint::Face), 1);
}

#[test]
fn a_name_a_listing_showed_is_no_probe_after_the_listings_ttl() {
    let api = tenant();
    let clock = TestClock::default();
    let fs = fs_with_ttl(&api, Duration::from_secs(30), &clock);
    let dir = dir_ino(IdKind::OpenId);
    assert_eq!(fs.lookup_priority(dir, name("ou_a.jpg")), Priority::Probe);
    names(&fs, dir);
    assert_eq!(fs.lookup_priority(dir, name("ou_a.jpg")), Priority::Listed);
    // A walk that outlasts --ttl keeps its readers' place in the queue.
    clock.advance(Duration::from_secs(60));
    assert_eq!(fs.lookup_priority(dir, name("ou_a.jpg")), Priority::Listed);
    assert_eq!(fs.lookup_priority(dir, name("ou_zz.jpg")), Priority::Probe);
}
