use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant, SystemTime};

use super::*;

/// A store directory of its own under the system's temp dir, removed on drop.
pub struct TempStoreDir(pub PathBuf);

impl TempStoreDir {
    pub fn new(name: &str) -> TempStoreDir {
        let dir = std::env::temp_dir().join(format!(
            "facefs-store-{name}-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        TempStoreDir(dir)
    }

    pub fn open(&self, tenant: &str, max_bytes: u64) -> Arc<FaceStore> {
        self.open_with(
            tenant,
            max_bytes,
            ByteBudget::new(64 << 20),
            Duration::from_secs(1),
        )
        .unwrap()
    }

    pub fn open_with(
        &self,
        tenant: &str,
        max_bytes: u64,
        memory: Arc<ByteBudget>,
        memory_wait: Duration,
    ) -> Result<Arc<FaceStore>, StoreError> {
        FaceStore::open(
            StoreConfig {
                dir: self.0.clone(),
                max_bytes,
                tenant: tenant.to_owned(),
                memory_wait,
                sealer: std::sync::Arc::new(crate::seal::Sealer::derive(b"test secret", tenant)),
                disk_delay: None,
            },
            memory,
        )
    }
}

impl Drop for TempStoreDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn face(bytes: &[u8]) -> Face {
    Face::new(
        FaceBytes {
            bytes: bytes.to_vec(),
            held: MemoryHold::none(),
            fetched_at: None,
        },
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000),
    )
}

fn key(id: &str) -> FaceKey {
    FaceKey::new(IdKind::OpenId, id, false)
}

/// Waits for the start-up scan, which runs on its own thread.
fn scanned(store: &FaceStore) -> StoreUsage {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let usage = store.usage();
        if usage.scanned {
            return usage;
        }
        assert!(Instant::now() < deadline, "the scan did not end");
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn file_of(store: &FaceStore, key: &FaceKey) -> PathBuf {
    store.face_path_of(key)
}

#[test]
fn faces_and_listings_outlive_the_store_that_wrote_them() {
    let dir = TempStoreDir::new("outlive");
    let listing = Listing::new(vec!["ou_a".into(), "ou_b".into()], SystemTime::now());
    {
        let store = dir.open("tenant", 1 << 30);
        assert!(store.face(&key("ou_a")).unwrap().is_none());
        store.put_face(&key("ou_a"), &face(b"face a"));
        store.put_listing(IdKind::OpenId, &listing);
    }
    let store = dir.open("tenant", 1 << 30);
    let back = store.face(&key("ou_a")).unwrap().unwrap();
    assert_eq!(back.bytes, b"face a");
    assert_eq!(back.digest, digest(b"face a"));
    assert_eq!(back.fetched_at, face(b"face a").fetched_at);
    let listed = store.listing(IdKind::OpenId).unwrap();
    assert_eq!(listed.parts(), listing.parts());
    assert!(store.listing(IdKind::UserId).is_none());
    let usage = scanned(&store);
    assert_eq!(usage.faces, 1);
    assert!(usage.bytes > 0);
}

#[test]
fn files_are_private_and_tenants_never_see_each_other() {
    let dir = TempStoreDir::new("private");
    let a = dir.open("https://open.feishu.cn\ncli_a", 1 << 30);
    let b = dir.open("https://open.feishu.cn\ncli_b", 1 << 30);
    a.put_face(&key("ou_a"), &face(b"tenant a's face"));
    assert!(b.face(&key("ou_a")).unwrap().is_none());
    assert!(a.face(&key("ou_a")).unwrap().is_some());
    let file = file_of(&a, &key("ou_a"));
    assert_eq!(
        std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let mut dir_of = file.parent();
    while let Some(d) = dir_of.filter(|d| d.starts_with(&dir.0)) {
        let mode = std::fs::metadata(d).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700, "{}", d.display());
        dir_of = d.parent();
    }
}

#[test]
fn a_second_store_of_one_tenant_in_one_directory_is_refused() {
    let dir = TempStoreDir::new("twice");
    let first = dir.open("tenant", 1 << 30);
    let refused = dir
        .open_with(
            "tenant",
            1 << 30,
            ByteBudget::new(1 << 20),
            Duration::from_secs(1),
        )
        .err()
        .unwrap()
        .to_string();
    assert!(
        refused.contains("two mounts cannot share one store"),
        "{refused}"
    );
    drop(first);
    dir.open("tenant", 1 << 30);
}

#[test]
fn damaged_entries_are_deleted_never_served() {
    let dir = TempStoreDir::new("damage");
    let store = dir.open("tenant", 1 << 30);
    let bytes = vec![9u8; 5000];
    type Damager = fn(&Path);
    let damages: [(&str, Damager); 5] = [
        ("torn", |p| {
            let len = std::fs::metadata(p).unwrap().len();
            std::fs::OpenOptions::new()
                .write(true)
                .open(p)
                .unwrap()
                .set_len(len / 2)
                .unwrap();
        }),
        ("emptied", |p| {
            std::fs::OpenOptions::new()
                .write(true)
                .open(p)
                .unwrap()
                .set_len(0)
                .unwrap();
        }),
        ("zeroed", |p| {
            let len = std::fs::metadata(p).unwrap().len() as usize;
            std::fs::write(p, vec![0; len]).unwrap();
        }),
        ("garbage", |p| {
            std::fs::write(p, b"<html>not a face</html>").unwrap()
        }),
        ("flipped", |p| {
            let mut all = std::fs::read(p).unwrap();
            let last = all.len() - 1;
            all[last] ^= 0x80;
            std::fs::write(p, all).unwrap();
        }),
    ];
    for (what, damage) in damages {
        store.put_face(&key("ou_a"), &face(&bytes));
        let file = file_of(&store, &key("ou_a"));
        damage(&file);
        assert!(
            store.face(&key("ou_a")).unwrap().is_none(),
            "{what} entry served"
        );
        assert!(!file.exists(), "{what} entry kept");
    }
    store.put_listing(
        IdKind::OpenId,
        &Listing::new(vec!["ou_a".into()], SystemTime::now()),
    );
    let listing = listing_path(store.root(), IdKind::OpenId);
    std::fs::write(&listing, b"facefsL1 and then nonsense").unwrap();
    assert!(store.listing(IdKind::OpenId).is_none());
    assert!(!listing.exists());
}

#[test]
fn the_bound_evicts_the_least_recently_used_faces_across_reopens() {
    let dir = TempStoreDir::new("bound");
    let one = vec![1u8; 10_000];
    {
        let store = dir.open("tenant", 1 << 30);
        for id in ["ou_1", "ou_2", "ou_3", "ou_4"] {
            store.put_face(&key(id), &face(&one));
        }
        // Recorded use survives the remount as the files' mtimes.
        let old = SystemTime::now() - Duration::from_secs(7200);
        for (i, id) in ["ou_2", "ou_1", "ou_3", "ou_4"].iter().enumerate() {
            let file = std::fs::File::options()
                .write(true)
                .open(file_of(&store, &key(id)))
                .unwrap();
            file.set_modified(old + Duration::from_secs(i as u64))
                .unwrap();
        }
    }
    let store = dir.open("tenant", 1 << 30);
    let per_face = scanned(&store).bytes / 4;
    drop(store);
    // Room for three: the scan evicts the least recently used one.
    let store = dir.open("tenant", 3 * per_face + per_face / 2);
    assert_eq!(scanned(&store).faces, 3);
    assert!(
        store.face(&key("ou_2")).unwrap().is_none(),
        "least recently used kept"
    );
    // Reading ou_1 makes ou_3 the least recently used.
    assert!(store.face(&key("ou_1")).unwrap().is_some());
    store.put_face(&key("ou_5"), &face(&one));
    let usage = store.usage();
    assert_eq!((usage.faces, usage.evictions), (3, 2));
    assert!(usage.bytes <= 3 * per_face + per_face / 2);
    assert!(store.face(&key("ou_3")).unwrap().is_none());
    for id in ["ou_1", "ou_4", "ou_5"] {
        assert!(store.face(&key(id)).unwrap().is_some(), "{id} evicted");
    }
}

#[test]
fn the_scan_removes_unfinished_writes_and_foreign_files() {
    let dir = TempStoreDir::new("scan");
    let (leftover, in_flight);
    {
        let store = dir.open("tenant", 1 << 30);
        store.put_face(&key("ou_a"), &face(b"a face"));
        let file = file_of(&store, &key("ou_a"));
        let other_pid = if std::process::id() == 1234 {
            1235
        } else {
            1234
        };
        leftover = file.with_extension(format!("{other_pid}.0.tmp"));
        std::fs::write(&leftover, b"half a face").unwrap();
        // A write this process has under way while the scan runs.
        in_flight = file.with_extension(format!("{}.99.tmp", std::process::id()));
        std::fs::write(&in_flight, b"being written").unwrap();
    }
    let store = dir.open("tenant", 1 << 30);
    assert_eq!(scanned(&store).faces, 1);
    assert!(!leftover.exists());
    assert!(in_flight.exists(), "the scan removed a write in flight");
    assert!(store.face(&key("ou_a")).unwrap().is_some());
}

#[test]
fn the_scan_and_its_deletions_stay_inside_the_store() {
    let dir = TempStoreDir::new("symlinks");
    let outside = TempStoreDir::new("outside");
    std::fs::create_dir_all(&outside.0).unwrap();
    let precious = outside.0.join("precious");
    std::fs::write(&precious, b"not the store's").unwrap();
    let faces;
    {
        let store = dir.open("tenant", 1 << 30);
        store.put_face(&key("ou_a"), &face(b"a face"));
        faces = file_of(&store, &key("ou_a"))
            .parent()
            .unwrap()
            .parent()
            .unwrap()
            .to_owned();
    }
    // A directory of the store's shape that is a symlink to elsewhere.
    let planted = faces.join("ab");
    std::os::unix::fs::symlink(&outside.0, &planted).unwrap();
    let store = dir.open("tenant", 1 << 30);
    assert_eq!(scanned(&store).faces, 1);
    assert!(
        precious.exists(),
        "the scan deleted a file outside the store"
    );
    assert!(
        std::fs::symlink_metadata(&planted).is_err(),
        "the planted symlink stays"
    );
    assert!(store.face(&key("ou_a")).unwrap().is_some());
}

#[test]
fn a_store_reading_into_a_full_memory_budget_waits_then_fails() {
    let dir = TempStoreDir::new("memory");
    let budget = ByteBudget::new(64 << 10);
    let store = dir
        .open_with(
            "tenant",
            1 << 30,
            budget.clone(),
            Duration::from_millis(100),
        )
        .unwrap();
    store.put_face(&key("ou_a"), &face(&[5u8; 40 << 10]));
    let held = budget.try_hold(40 << 10).unwrap();
    assert!(
        store.face(&key("ou_a")).is_err(),
        "read beyond the memory budget"
    );
    drop(held);
    let back = store.face(&key("ou_a")).unwrap().unwrap();
    assert!(
        budget.in_use() >= 40 << 10,
        "the stored face's bytes are not counted"
    );
    drop(back);
    assert_eq!(budget.in_use(), 0);
}

#[test]
fn a_store_without_a_valid_tenant_proof_is_emptied_and_claimed() {
    let dir = TempStoreDir::new("tenant-proof");
    let root = {
        let store = dir.open("tenant", 1 << 30);
        store.put_face(&key("ou_a"), &face(b"a face"));
        store.root().to_owned()
    };
    for damage in ["garbage", "missing"] {
        match damage {
            "garbage" => std::fs::write(root.join("tenant"), b"\0\0\0").unwrap(),
            _ => std::fs::remove_file(root.join("tenant")).unwrap(),
        }
        let store = dir.open("tenant", 1 << 30);
        assert!(
            store.face(&key("ou_a")).unwrap().is_none(),
            "{damage}: served"
        );
        let proof = std::fs::read(root.join("tenant")).unwrap();
        assert!(
            !proof.windows(6).any(|w| w == b"tenant"),
            "the proof is sealed"
        );
        store.put_face(&key("ou_a"), &face(b"a face"));
        drop(store);
        assert!(dir
            .open("tenant", 1 << 30)
            .face(&key("ou_a"))
            .unwrap()
            .is_some());
    }
}

#[test]
fn a_peek_from_the_kernels_thread_never_changes_the_store() {
    let dir = TempStoreDir::new("peek");
    let store = dir.open("tenant", 1 << 30);
    assert!(matches!(store.meta_now(&key("ou_a")), Ok(None)));
    store.put_face(&key("ou_a"), &face(b"a face"));
    // Just written: in the page cache.
    match store.meta_now(&key("ou_a")) {
        Ok(Some(meta)) => assert_eq!((meta.size, meta.digest), (6, digest(b"a face"))),
        _ => panic!("not found in the page cache"),
    }
    let file = file_of(&store, &key("ou_a"));
    std::fs::write(&file, b"garbage").unwrap();
    assert!(matches!(
        store.meta_now(&key("ou_a")),
        Err(crate::fs::answer::Stop::WouldBlock)
    ));
    assert!(file.exists(), "a peek deleted the damaged entry");
    assert!(store.meta(&key("ou_a")).is_none());
    assert!(!file.exists(), "the call that may wait deletes it");
}
