//! Mounts of one tenant coordinated through a real redis-server (`--redis`):
//! one rate budget, a monthly budget, and going on alone when Redis fails.

mod common;

use std::time::{Duration, Instant};

use common::*;
use facefs::api::IdKind;
use facefs::emulator::tenant::TenantSpec;
use facefs::emulator::{Emulator, EmulatorConfig, Route};
use facefs::fs::layout::face_file_name;

fn limited_tenant(users: usize, per_second: u32) -> Emulator {
    emulator(EmulatorConfig {
        tenant: TenantSpec {
            users,
            ..TenantSpec::default()
        },
        rate_limit: Some(per_second),
        ..EmulatorConfig::default()
    })
}

/// Reads every face of open_id through each mount at once, one thread a
/// mount, and checks the bytes.
fn read_everything(emu: &Emulator, mounts: &[Mount]) {
    let ids = emu.ids_with_faces(IdKind::OpenId);
    std::thread::scope(|scope| {
        for mnt in mounts {
            let ids = &ids;
            scope.spawn(move || {
                for id in ids {
                    for cropped in [false, true] {
                        let path = mnt.join("open_id").join(face_file_name(id, cropped));
                        let bytes = std::fs::read(&path).unwrap_or_else(|e| {
                            panic!("{}: {e}\n{}", path.display(), mnt.log_text())
                        });
                        assert!(bytes == emu.face(IdKind::OpenId, id, cropped).unwrap());
                    }
                }
            });
        }
    });
}

/// Reads one face through `mnt` and checks it is the emulator's.
fn read_face(emu: &Emulator, mnt: &Mount, id: &str, cropped: bool) {
    let path = mnt.join("open_id").join(face_file_name(id, cropped));
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{e}\n{}", mnt.log_text()));
    assert!(
        Some(bytes) == emu.face(IdKind::OpenId, id, cropped),
        "{id} differs"
    );
}

/// A mount of the fleet serving its metrics; the port to scrape.
fn mount_with_metrics(emu: &Emulator, extra: &[&str]) -> (Mount, u16) {
    let port = free_port();
    let port_arg = port.to_string();
    let mut args = extra.to_vec();
    args.extend(["--metrics-listen", &port_arg]);
    (Mount::start(emu, &args), port)
}

/// Whether every mount has Redis up and counts `members` mounts.
fn all_on_redis(mounts: &[(Mount, u16)], members: f64) -> bool {
    mounts.iter().all(|(_, port)| {
        let metrics = scrape_metrics(*port);
        metric(&metrics, "facefs_fleet_members") == members
            && metric(&metrics, "facefs_redis_up") == 1.0
    })
}

/// Three mounts at `--rate-limit 5` on the Redis at `url`, once each
/// counts three.
fn three_at_five(emu: &Emulator, url: &str) -> Vec<(Mount, u16)> {
    let mounts: Vec<(Mount, u16)> = (0..3)
        .map(|_| mount_with_metrics(emu, &["--redis", url, "--rate-limit", "5"]))
        .collect();
    wait_until(Duration::from_secs(10), "each mount counts three", || {
        all_on_redis(&mounts, 3.0)
    });
    mounts
}

fn throttled(emu: &Emulator) -> usize {
    emu.requests().iter().filter(|r| r.throttled).count()
}

fn acs_requests(emu: &Emulator) -> usize {
    emu.count(Route::Face) + emu.count(Route::ListUsers) + emu.count(Route::Upload)
}

/// The fleet's count of this month's requests, read from Redis itself.
fn month_count(redis: &RedisServer) -> i64 {
    let keys = redis.keys("facefs:*:requests:*");
    assert_eq!(keys.len(), 1, "{keys:?}");
    redis.get_int(&keys[0])
}

#[test]
#[cfg_attr(
    not(all(facefs_mount, facefs_redis)),
    ignore = "needs FUSE, redis-server (scripts/test.sh runs it)"
)]
fn four_mounts_share_one_rate_budget() {
    // Alone, four mounts at --rate-limit 5 send up to 20 a second into a
    // limit of 5, and are throttled.
    let emu = limited_tenant(6, 5);
    let alone: Vec<Mount> = (0..4)
        .map(|_| Mount::start(&emu, &["--rate-limit", "5"]))
        .collect();
    read_everything(&emu, &alone);
    assert!(
        throttled(&emu) > 0,
        "four mounts alone were never throttled"
    );
    drop(alone);

    let emu = limited_tenant(6, 5);
    let redis = RedisServer::start(&[]);
    let url = redis.url();
    let (first, port) = mount_with_metrics(&emu, &["--rate-limit", "5", "--redis", &url]);
    let mut fleet = vec![first];
    for _ in 0..3 {
        fleet.push(Mount::start(&emu, &["--rate-limit", "5", "--redis", &url]));
    }
    std::thread::scope(|scope| {
        for mnt in &fleet {
            scope.spawn(|| {
                let out = run("ls", &[&mnt.join("open_id")]);
                assert!(out.status.success(), "{}", stderr(&out));
                assert_eq!(stdout(&out).lines().count(), 12);
            });
        }
    });
    read_everything(&emu, &fleet);
    assert_eq!(
        throttled(&emu),
        0,
        "the fleet kept under the server's limit"
    );
    assert!(
        emu.count(Route::Face) == 12,
        "one download per face for the fleet, not {}:\n{}",
        emu.count(Route::Face),
        fleet
            .iter()
            .flat_map(|m| m
                .log_text()
                .lines()
                .filter(|l| l.contains("fleet:") || l.contains("WARN"))
                .map(str::to_owned)
                .collect::<Vec<_>>())
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert_eq!(emu.count(Route::ListUsers), 1, "one listing for the fleet");
    // Every request was counted once, by the Redis server.
    assert_eq!(month_count(&redis), acs_requests(&emu) as i64);
    let metrics = scrape_metrics(port);
    assert_eq!(metric(&metrics, "facefs_redis_up"), 1.0);
    assert_eq!(metric(&metrics, "facefs_redis_failures_total"), 0.0);
    assert!(metric(&metrics, "facefs_fleet_requests_this_month") <= 13.0);

    // A damaged value in Redis is a miss: a new mount downloads those faces.
    let keys = redis.keys("facefs:*:face:*");
    assert_eq!(keys.len(), 12, "{keys:?}");
    for key in &keys {
        redis.query(&["SETRANGE", key, "30", "garbage"]).unwrap();
    }
    let fresh = Mount::start(&emu, &["--rate-limit", "5", "--redis", &url]);
    read_everything(&emu, std::slice::from_ref(&fresh));
    assert_eq!(
        emu.count(Route::Face),
        24,
        "each damaged value downloaded again"
    );
}

#[test]
#[cfg_attr(
    not(all(facefs_mount, facefs_redis)),
    ignore = "needs FUSE, redis-server (scripts/test.sh runs it)"
)]
fn a_mount_goes_on_alone_while_redis_is_down_and_rejoins() {
    let emu = emulator(small_tenant(12));
    let mut redis = RedisServer::start(&[]);
    let url = redis.url();
    let (mnt, port) = mount_with_metrics(&emu, &["--rate-limit", "100", "--redis", &url]);
    let ids = emu.ids_with_faces(IdKind::OpenId);
    let read = |i: usize| read_face(&emu, &mnt, &ids[i], false);
    read(0);
    assert_eq!(month_count(&redis), 1);
    // Readers at once: the mount opens several connections to Redis.
    let in_parallel = |dir: &str, cropped: bool| {
        std::thread::scope(|scope| {
            for id in emu.ids_with_faces(IdKind::parse(dir).unwrap()) {
                let path = mnt.join(dir).join(face_file_name(&id, cropped));
                scope.spawn(move || std::fs::read(path).unwrap());
            }
        })
    };
    in_parallel("union_id", false);

    redis.kill();
    for i in 1..5 {
        read(i);
    }
    let log = mnt.log_text();
    assert_eq!(log.matches("failed (").count(), 1, "logged once:\n{log}");
    let metrics = scrape_metrics(port);
    assert_eq!(metric(&metrics, "facefs_redis_up"), 0.0);
    assert!(metric(&metrics, "facefs_redis_failures_total") >= 1.0);

    // Back, empty (no persistence): the mount rejoins within its retry interval.
    redis.restart();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut i = 5;
    while !mnt.log_text().contains("answers again") {
        assert!(
            Instant::now() < deadline,
            "never rejoined:\n{}",
            mnt.log_text()
        );
        std::thread::sleep(Duration::from_millis(300));
        read(i % ids.len());
        i += 1;
    }
    // A face not read yet: its request takes a turn from the new Redis.
    let cropped = mnt.join("open_id").join(face_file_name(&ids[0], true));
    assert!(std::fs::read(&cropped).ok() == emu.face(IdKind::OpenId, &ids[0], true));
    assert!(month_count(&redis) >= 1, "counted again after the restart");
    assert_eq!(metric(&scrape_metrics(port), "facefs_redis_up"), 1.0);
    // Readers at once, using every connection of the mount: none of those
    // opened before the restart is used again (each would fail, and send
    // the mount alone for 2 s once more).
    in_parallel("user_id", false);
    let log = mnt.log_text();
    assert_eq!(log.matches("failed (").count(), 1, "one outage:\n{log}");
    assert_eq!(log.matches("answers again").count(), 1, "{log}");
}

#[test]
#[cfg_attr(
    not(all(facefs_mount, facefs_redis)),
    ignore = "needs FUSE, redis-server (scripts/test.sh runs it)"
)]
fn an_unreachable_or_full_redis_never_fails_a_read() {
    let emu = emulator(small_tenant(10));
    // Nothing listens there: the mount starts and reads anyway.
    let dead = format!("redis://127.0.0.1:{}/0", free_port());
    let mnt = Mount::start(&emu, &["--redis", &dead, "--rate-limit", "100"]);
    let id = &emu.ids_with_faces(IdKind::OpenId)[0];
    let path = mnt.join("open_id").join(face_file_name(id, false));
    assert!(Some(std::fs::read(&path).unwrap()) == emu.face(IdKind::OpenId, id, false));
    drop(mnt);

    // Full: every write refused with OOM; reads go on, paced locally.
    let redis = RedisServer::start(&["--maxmemory", "1", "--maxmemory-policy", "noeviction"]);
    let mnt = Mount::start(&emu, &["--redis", &redis.url(), "--rate-limit", "100"]);
    for id in emu.ids_with_faces(IdKind::OpenId).iter().take(4) {
        read_face(&emu, &mnt, id, false);
    }
    assert!(mnt.log_text().contains("failed ("), "{}", mnt.log_text());
}

#[test]
#[cfg_attr(
    not(all(facefs_mount, facefs_redis)),
    ignore = "needs FUSE, redis-server (scripts/test.sh runs it)"
)]
fn a_monthly_budget_stops_requests_before_the_tenants_quota() {
    let emu = emulator(small_tenant(12));
    let redis = RedisServer::start(&[]);
    let mnt = Mount::start(
        &emu,
        &[
            "--redis",
            &redis.url(),
            "--monthly-budget",
            "5",
            "--rate-limit",
            "100",
            "--max-stale",
            "0s",
        ],
    );
    let ids = emu.ids_with_faces(IdKind::OpenId);
    for id in &ids[..5] {
        read_face(&emu, &mnt, id, false);
    }
    let over = std::fs::read(mnt.join("open_id").join(face_file_name(&ids[5], false))).unwrap_err();
    assert_eq!(over.raw_os_error(), Some(libc::EIO));
    assert_eq!(
        emu.count(Route::Face),
        5,
        "the sixth request was never sent"
    );
    assert_eq!(month_count(&redis), 5);
    assert!(
        mnt.log_text().contains("--monthly-budget is 5"),
        "{}",
        mnt.log_text()
    );
}

#[test]
#[cfg_attr(
    not(all(facefs_mount, facefs_redis)),
    ignore = "needs FUSE, redis-server (scripts/test.sh runs it)"
)]
fn the_redis_password_stays_out_of_argv_and_logs() {
    let emu = emulator(small_tenant(10));
    let password = "s3cret-redis-pw";
    let redis = RedisServer::start(&["--requirepass", password]);
    let with_password = format!("redis://:{password}@127.0.0.1:{}/0", redis.port);

    let mountpoint = TempDir::new("refused");
    let out = run(
        FACEFS,
        &[&mountpoint.path(), &"--demo", &"--redis", &with_password],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("--redis-url-file"),
        "{}",
        stderr(&out)
    );
    assert!(!stderr(&out).contains(password));

    let secrets = TempDir::new("redis-url");
    let file = secrets.path().join("redis-url");
    std::fs::write(&file, format!("{with_password}\n")).unwrap();
    let file_arg = file.to_str().unwrap();
    // Every feature on, at trace level: events, the store, an upload.
    let cache = TempDir::new("trace-store");
    let mnt = Mount::start_with_env(
        &emu,
        &[
            "--redis-url-file",
            file_arg,
            "--rate-limit",
            "100",
            "--events",
            "--writable",
            "--cache-dir",
            cache.path().to_str().unwrap(),
        ],
        &[("FACEFS_LOG", "trace")],
    );
    let ids = emu.ids_with_faces(IdKind::OpenId);
    let id = &ids[0];
    std::fs::read(mnt.join("open_id").join(face_file_name(id, false))).unwrap();
    assert_eq!(month_count(&redis), 1, "authenticated and counted");
    let replacement = emu.face(IdKind::OpenId, &ids[1], false).unwrap();
    std::fs::write(
        mnt.join("open_id").join(face_file_name(id, false)),
        replacement,
    )
    .unwrap();
    let log = mnt.log_text();
    assert!(
        log.contains("TRACE") && log.contains("uploaded a face"),
        "{log}"
    );
    let mut secrets = vec![password.to_owned(), emu.config().app_secret.clone()];
    secrets.extend(emu.issued_tokens());
    secrets.push("ticket-".into());
    for secret in &secrets {
        assert!(!log.contains(secret.as_str()), "{secret} in a trace log");
    }
    // With store, events and an upload on: nothing in Redis (values and
    // stream entries) or in the store shows a face or names a user.
    let every_id: Vec<String> = IdKind::ALL
        .into_iter()
        .flat_map(|kind| [emu.ids_with_faces(kind), emu.ids_without_faces(kind)].concat())
        .collect();
    let shows = |bytes: &[u8]| {
        holds_a_jpeg(&emu, bytes)
            || every_id
                .iter()
                .any(|id| bytes.windows(id.len()).any(|w| w == id.as_bytes()))
    };
    wait_until(
        Duration::from_secs(5),
        "the upload's event in the stream",
        || !redis.keys("facefs:*:events").is_empty(),
    );
    let mut connection = redis.connection();
    for key in redis.keys("*") {
        assert!(!shows(key.as_bytes()), "{key}");
        let value: redis::Value = match redis::cmd("TYPE")
            .arg(&key)
            .query::<String>(&mut connection)
            .unwrap()
            .as_str()
        {
            "stream" => redis::cmd("XRANGE")
                .arg(&key)
                .arg("-")
                .arg("+")
                .query(&mut connection)
                .unwrap(),
            "string" => redis::cmd("GET").arg(&key).query(&mut connection).unwrap(),
            "zset" => redis::cmd("ZRANGE")
                .arg(&key)
                .arg(0)
                .arg(-1)
                .query(&mut connection)
                .unwrap(),
            other => panic!("{key} is a {other}"),
        };
        assert!(!shows(&flatten(&value)), "{key} shows a face or an id");
    }
    let mut stored = 0;
    for file in walk(cache.path()) {
        stored += 1;
        assert!(!shows(&std::fs::read(&file).unwrap()), "{}", file.display());
    }
    assert!(stored > 2, "the store holds entries");
    drop(mnt);

    // From the environment: read, then wiped from the process's environment.
    let counted = month_count(&redis);
    let mnt = Mount::start_with_env(
        &emu,
        &["--rate-limit", "100"],
        &[
            ("FACEFS_REDIS_URL", &with_password),
            ("FACEFS_LOG", "trace"),
        ],
    );
    std::fs::read(mnt.join("open_id").join(face_file_name(&ids[2], true))).unwrap();
    assert_eq!(
        month_count(&redis),
        counted + 1,
        "authenticated and counted"
    );
    let pid = mnt.child.as_ref().unwrap().id();
    let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
    assert!(
        !String::from_utf8_lossy(&environ).contains(password),
        "the URL is still in the environment"
    );
    assert!(
        !mnt.log_text().contains(password),
        "the password in a trace log"
    );
}

/// The service gives an event to one client of the app; through the
/// fleet's stream every mount drops the replaced face.
#[test]
#[cfg_attr(
    not(all(facefs_mount, facefs_redis)),
    ignore = "needs FUSE, redis-server (scripts/test.sh runs it)"
)]
fn an_event_heard_by_one_mount_reaches_all_four() {
    let emu = emulator(small_tenant(10));
    let redis = RedisServer::start(&[]);
    let url = redis.url();
    let fleet: Vec<Mount> = (0..4)
        .map(|_| {
            Mount::start(
                &emu,
                &[
                    "--events",
                    "--ttl",
                    "1h",
                    "--rate-limit",
                    "100",
                    "--redis",
                    &url,
                ],
            )
        })
        .collect();
    let server = emu.long_connection();
    wait_until(Duration::from_secs(10), "four connections", || {
        server.clients() == 4
    });
    let ids = emu.ids_with_faces(IdKind::OpenId);
    let (who, other) = (&ids[0], &ids[1]);
    let file = |mnt: &Mount| mnt.join("open_id").join(face_file_name(who, false));
    for mnt in &fleet {
        assert!(std::fs::read(file(mnt)).ok() == emu.face(IdKind::OpenId, who, false));
    }
    let new = emu.face(IdKind::OpenId, other, false).unwrap();
    let message = emu
        .replace_face(IdKind::OpenId, who, false, new.clone())
        .unwrap();
    assert!(server.wait_for_ack(&message, Duration::from_secs(3)));
    for mnt in &fleet {
        wait_until(
            Duration::from_secs(5),
            "the new face in every mount",
            || std::fs::read(file(mnt)).ok() == Some(new.clone()),
        );
    }
    // One of them heard it; the other three read it from the stream.
    let from_stream: usize = fleet
        .iter()
        .map(|m| m.log_text().matches("from the fleet").count())
        .sum();
    assert_eq!(from_stream, 3);
}

/// A mount with a store that was down while the event went out applies it
/// when it is back; if the stream lost events, it trusts nothing it holds.
#[test]
#[cfg_attr(
    not(all(facefs_mount, facefs_redis)),
    ignore = "needs FUSE, redis-server (scripts/test.sh runs it)"
)]
fn a_restarted_mount_catches_up_on_the_events_it_missed() {
    let emu = emulator(small_tenant(10));
    let mut redis = RedisServer::start(&[]);
    let url = redis.url();
    let cache = TempDir::new("store");
    let store = cache.path().to_str().unwrap().to_owned();
    let ids = emu.ids_with_faces(IdKind::OpenId);
    let (who, other) = (&ids[0], &ids[1]);
    let path = |mnt: &Mount| mnt.join("open_id").join(face_file_name(who, false));
    let args = [
        "--ttl",
        "1h",
        "--rate-limit",
        "100",
        "--redis",
        &url,
        "--cache-dir",
        &store,
    ];
    {
        let a = Mount::start(&emu, &args);
        assert!(std::fs::read(path(&a)).ok() == emu.face(IdKind::OpenId, who, false));
        // Until it has a place in the stream, noted in its store.
        let noted = || {
            std::fs::read_dir(cache.path().join("facefs-v2"))
                .into_iter()
                .flatten()
                .flatten()
                .any(|tenant| tenant.path().join("fleet-events.note").exists())
        };
        wait_until(Duration::from_secs(15), "a position in the stream", noted);
    }
    // While it is down, another mount hears a replacement.
    let hearer = Mount::start(&emu, &["--events", "--rate-limit", "100", "--redis", &url]);
    wait_until(Duration::from_secs(10), "connected", || {
        emu.long_connection().clients() == 1
    });
    let new = emu.face(IdKind::OpenId, other, false).unwrap();
    let message = emu
        .replace_face(IdKind::OpenId, who, false, new.clone())
        .unwrap();
    assert!(emu
        .long_connection()
        .wait_for_ack(&message, Duration::from_secs(3)));
    drop(hearer);
    let downloads = emu.count(Route::Face);
    let a = Mount::start(&emu, &args);
    wait_until(Duration::from_secs(15), "the missed event applied", || {
        std::fs::read(path(&a)).ok() == Some(new.clone())
    });
    assert_eq!(
        emu.count(Route::Face),
        downloads + 1,
        "only the changed face"
    );
    drop(a);

    // Redis restarts and loses the stream: the store is not trusted.
    redis.kill();
    redis.restart();
    let downloads = emu.count(Route::Face);
    let a = Mount::start(&emu, &args);
    let other_face = a.join("open_id").join(face_file_name(other, false));
    wait_until(Duration::from_secs(15), "the loss noticed", || {
        a.log_text().contains("no longer holds every event")
    });
    assert!(std::fs::read(&other_face).ok() == emu.face(IdKind::OpenId, other, false));
    assert_eq!(
        emu.count(Route::Face),
        downloads + 1,
        "downloaded, not taken from the store"
    );
}

/// A Redis that stops answering (DEBUG SLEEP holds the server) costs each
/// mount one --redis-timeout, then the reads go on alone.
#[test]
#[cfg_attr(
    not(all(facefs_mount, facefs_redis)),
    ignore = "needs FUSE, redis-server (scripts/test.sh runs it)"
)]
fn a_redis_that_stops_answering_fails_no_read() {
    let emu = emulator(small_tenant(12));
    let redis = RedisServer::start(&["--enable-debug-command", "yes"]);
    let url = redis.url();
    let (mnt, port) = mount_with_metrics(&emu, &["--redis", &url, "--rate-limit", "100"]);
    let ids = emu.ids_with_faces(IdKind::OpenId);
    let read = |i: usize| read_face(&emu, &mnt, &ids[i], false);
    read(0);
    std::thread::scope(|scope| {
        let sleeper = scope.spawn(|| redis.query(&["DEBUG", "SLEEP", "3"]));
        wait_until(
            Duration::from_secs(2),
            "Redis stalled by DEBUG SLEEP",
            || redis.is_stalled(),
        );
        for i in 1..6 {
            read(i);
        }
        assert!(sleeper.join().unwrap().is_some(), "DEBUG SLEEP ran");
    });
    let metrics = scrape_metrics(port);
    assert!(metric(&metrics, "facefs_redis_failures_total") >= 1.0);
    assert_eq!(
        mnt.log_text().matches("failed (").count(),
        1,
        "{}",
        mnt.log_text()
    );
}

/// A throttling answer to one mount pauses the whole fleet: the pause is
/// kept in Redis for as long as the API asked.
#[test]
#[cfg_attr(
    not(all(facefs_mount, facefs_redis)),
    ignore = "needs FUSE, redis-server (scripts/test.sh runs it)"
)]
fn a_throttling_answer_pauses_the_whole_fleet() {
    use facefs::emulator::WireFault;
    let emu = emulator(small_tenant(10));
    let redis = RedisServer::start(&[]);
    let url = redis.url();
    let args = ["--redis", url.as_str(), "--rate-limit", "100"];
    let (heard, other) = (Mount::start(&emu, &args), Mount::start(&emu, &args));
    emu.set_throttle_reset(Duration::from_secs(2));
    emu.inject(Route::Face, WireFault::Throttle, 1.0);
    let ids = emu.ids_with_faces(IdKind::OpenId);
    std::thread::scope(|scope| {
        let throttled = scope.spawn(|| read_face(&emu, &heard, &ids[0], false));
        emu.wait_for_faulted(Route::Face, 1);
        emu.clear_faults();
        // Set once the answer is read; it outlives the pause by a second.
        wait_until(Duration::from_secs(5), "the fleet's pause in Redis", || {
            redis.keys("facefs:*:rate:pause").len() == 1
        });
        let key = redis.keys("facefs:*:rate:pause").remove(0);
        let until = std::time::UNIX_EPOCH + Duration::from_micros(redis.get_int(&key) as u64);
        // The other mount never heard the 429: it waits for the fleet's pause all the same.
        read_face(&emu, &other, &ids[1], false);
        throttled.join().unwrap();
        let log = emu.requests();
        let sent = |id: &str| {
            log.iter()
                .filter(|r| r.route == Route::Face && r.user_id.as_deref() == Some(id))
                .map(|r| r.at)
                .collect::<Vec<_>>()
        };
        assert!(
            sent(&ids[1]).iter().all(|at| *at >= until),
            "the other mount asked before the pause ended"
        );
        assert_eq!(
            sent(&ids[0]).len(),
            2,
            "the throttled request, then one retry"
        );
        assert!(sent(&ids[0])[1] >= until, "retried before the pause ended");
    });
}

/// Whoever can write to the fleet's Redis can delete values (costing
/// downloads) but cannot read a face or an id there, move a face under
/// another name, plant a "does not exist" or a short listing.
#[test]
#[cfg_attr(
    not(all(facefs_mount, facefs_redis)),
    ignore = "needs FUSE, redis-server (scripts/test.sh runs it)"
)]
fn a_writer_to_redis_cannot_read_swap_or_plant_faces() {
    use redis::Commands;
    let emu = emulator(small_tenant(12));
    let redis = RedisServer::start(&[]);
    let url = redis.url();
    let (first, _) = mount_with_metrics(&emu, &["--redis", &url, "--rate-limit", "100"]);
    let (second, port) = mount_with_metrics(&emu, &["--redis", &url, "--rate-limit", "100"]);
    let ids = emu.ids_with_faces(IdKind::OpenId);
    let listed = std::fs::read_dir(first.join("open_id")).unwrap().count();
    for id in &ids {
        read_face(&emu, &first, id, false);
    }
    let nobody = "ou_nobody_at_all";
    assert!(std::fs::metadata(first.join("open_id").join(format!("{nobody}.jpg"))).is_err());

    // Nothing in Redis shows a face or names a user.
    let mut connection = redis.connection();
    let keys: Vec<String> = connection.keys("*").unwrap();
    let mut every_id: Vec<String> = IdKind::ALL
        .into_iter()
        .flat_map(|kind| [emu.ids_with_faces(kind), emu.ids_without_faces(kind)].concat())
        .collect();
    every_id.push(nobody.to_owned());
    for key in &keys {
        assert!(
            !every_id.iter().any(|id| key.contains(id.as_str())),
            "{key} names a user"
        );
        let Ok(value) = connection.get::<_, Vec<u8>>(key) else {
            continue; // not a string value (the stream, counters' kin)
        };
        assert!(!holds_a_jpeg(&emu, &value), "{key} holds a JPEG");
        for id in &every_id {
            assert!(
                !value.windows(id.len()).any(|w| w == id.as_bytes()),
                "{key} names {id}"
            );
        }
    }

    // Every face value moved one key on; the absence put on every listing
    // page and on the faces no mount read yet.
    let faces: Vec<String> = keys
        .iter()
        .filter(|k| k.contains(":face:"))
        .cloned()
        .collect();
    // Each face read (read-ahead adds some), and the absence.
    assert!(faces.len() > ids.len(), "{keys:?}");
    let values: Vec<Vec<u8>> = faces.iter().map(|k| connection.get(k).unwrap()).collect();
    for (i, key) in faces.iter().enumerate() {
        let moved = &values[(i + 1) % values.len()];
        let _: () = connection.pset_ex(key, moved.as_slice(), 600_000).unwrap();
    }
    let absence = values
        .iter()
        .min_by_key(|v| v.len())
        .expect("the absence is the shortest value")
        .clone();
    for key in keys.iter().filter(|k| k.contains(":list:")) {
        let _: () = connection
            .pset_ex(key, absence.as_slice(), 600_000)
            .unwrap();
    }
    let downloads = emu.count(Route::Face);

    // The second mount lists every file and reads every face right.
    assert_eq!(
        std::fs::read_dir(second.join("open_id")).unwrap().count(),
        listed,
        "a short listing"
    );
    for id in &ids {
        read_face(&emu, &second, id, false);
    }
    assert!(
        emu.count(Route::Face) >= downloads + ids.len(),
        "the moved values were downloaded again"
    );
    // Logged at the 1st, 2nd, 4th... rejection, once read-ahead is done
    // opening values (the count unchanged for half a second; a count read
    // between a rejection and its line would be one line ahead).
    let rejected = || metric(&scrape_metrics(port), "facefs_fleet_rejected_total") as u64;
    let last = std::cell::Cell::new(u64::MAX);
    wait_until(Duration::from_secs(20), "rejections settle", || {
        std::thread::sleep(Duration::from_millis(500));
        last.replace(rejected()) == last.get()
    });
    let count = last.get();
    assert!(count >= ids.len() as u64);
    let logged = second.log_text().matches("failed to open").count();
    assert_eq!(
        logged,
        count.ilog2() as usize + 1,
        "lines for {count} rejections:\n{}",
        second.log_text()
    );
}

/// Numbers no mount could have written, planted in Redis, stop no read.
#[test]
#[cfg_attr(
    not(all(facefs_mount, facefs_redis)),
    ignore = "needs FUSE, redis-server (scripts/test.sh runs it)"
)]
fn numbers_forged_in_redis_stop_no_read() {
    let emu = emulator(small_tenant(6));
    let redis = RedisServer::start(&[]);
    let url = redis.url();
    let mnt = Mount::start(&emu, &["--redis", &url, "--rate-limit", "100"]);
    let ids = emu.ids_with_faces(IdKind::OpenId);
    read_face(&emu, &mnt, &ids[0], false);
    let prefix = redis
        .keys("facefs:*:rate:next")
        .remove(0)
        .replace("rate:next", "");
    for (key, value) in [
        ("rate:pause", "9000000000000000"),
        ("rate:next", "9000000000000000"),
    ] {
        assert!(redis
            .query(&["SET", &format!("{prefix}{key}"), value])
            .is_some());
    }
    let month = redis.keys("facefs:*:requests:*").remove(0);
    assert!(redis.query(&["SET", &month, "-5"]).is_some());
    // A forged pause would refuse every turn (EIO): each read must succeed.
    for id in &ids[1..] {
        read_face(&emu, &mnt, id, false);
    }
    assert!(
        month_count(&redis) >= ids.len() as i64 - 1,
        "counted again from 0"
    );
}

/// A Redis that announces a 2 GB reply and floods it, or one that trickles
/// its replies a byte at a time, costs a mount bounded memory and at most
/// `--redis-timeout` a command: every read gets the right bytes, soon.
#[test]
#[cfg_attr(
    not(all(facefs_mount, facefs_redis)),
    ignore = "needs FUSE, redis-server (scripts/test.sh runs it)"
)]
fn a_redis_that_floods_or_trickles_costs_bounded_memory_and_time() {
    let emu = emulator(small_tenant(12));
    let ids = emu.ids_with_faces(IdKind::OpenId);
    let real = RedisServer::start(&[]);
    let flood = HostileRedis::Flood.serve();
    let trickle = HostileRedis::Trickle {
        upstream: real.port,
        every: Duration::from_millis(20),
    }
    .serve();
    for (what, port) in [("flood", flood), ("trickle", trickle)] {
        let url = format!("redis://127.0.0.1:{port}/0");
        let (mnt, metrics_port) = mount_with_metrics(
            &emu,
            &[
                "--redis",
                &url,
                "--rate-limit",
                "100",
                "--redis-timeout",
                "250ms",
            ],
        );
        let mut slowest = Duration::ZERO;
        for (i, id) in ids.iter().enumerate() {
            let start = Instant::now();
            read_face(&emu, &mnt, id, i % 2 == 1);
            slowest = slowest.max(start.elapsed());
        }
        let listed = std::fs::read_dir(mnt.join("open_id")).unwrap().count();
        assert_eq!(listed, 2 * ids.len(), "{what}");
        // A command costs at most 250 ms, and after a failure Redis is
        // left alone for 2 s: a read pays a few timeouts at most (the
        // redis crate's per-read timeout let one trickled reply take 20 s).
        assert!(
            slowest < Duration::from_secs(3),
            "{what}: a read took {slowest:?}"
        );
        let peak_mib = memory_kib(mnt.child.as_ref().unwrap().id(), "VmHWM") / 1024;
        assert!(peak_mib < 200, "{what}: peak {peak_mib} MiB");
        let metrics = scrape_metrics(metrics_port);
        assert!(
            metric(&metrics, "facefs_redis_failures_total") >= 1.0,
            "{what}"
        );
        let log = mnt.log_text();
        assert!(log.contains("failed (no answer in time)"), "{what}: {log}");
    }
}

/// Entries planted in the fleet's stream — too large to keep, or forged —
/// are read past and counted, at bounded memory and log, and the next real
/// event still reaches every mount.
#[test]
#[cfg_attr(
    not(all(facefs_mount, facefs_redis)),
    ignore = "needs FUSE, redis-server (scripts/test.sh runs it)"
)]
fn planted_stream_entries_are_skipped_and_the_next_event_applies() {
    use redis::Commands;
    let emu = emulator(small_tenant(6));
    let redis = RedisServer::start(&[]);
    let url = redis.url();
    let args = ["--ttl", "1h", "--rate-limit", "100", "--redis", &url];
    let hearing = Mount::start(&emu, &[&args[..], &["--events"]].concat());
    let (reader, port) = mount_with_metrics(&emu, &args);
    let server = emu.long_connection();
    wait_until(Duration::from_secs(10), "the event connection", || {
        server.clients() == 1
    });
    let ids = emu.ids_with_faces(IdKind::OpenId);
    let who = &ids[0];
    let file = reader.join("open_id").join(face_file_name(who, false));
    read_face(&emu, &reader, who, false);
    read_face(&emu, &hearing, who, false);

    let stream = redis
        .keys("facefs:*:rate:next")
        .remove(0)
        .replace("rate:next", "events");
    let mut connection = redis.connection();
    let big = vec![b'x'; 20 << 20];
    for _ in 0..4 {
        let _: String = connection
            .xadd(
                &stream,
                "*",
                &[("origin", &b"elsewhere"[..]), ("event", &big[..])],
            )
            .unwrap();
    }
    let forged = vec![7u8; 300];
    let _: String = connection
        .xadd(
            &stream,
            "*",
            &[("origin", &b"elsewhere"[..]), ("event", &forged[..])],
        )
        .unwrap();
    drop(big);

    let new = emu.face(IdKind::OpenId, &ids[1], false).unwrap();
    let message = emu
        .replace_face(IdKind::OpenId, who, false, new.clone())
        .unwrap();
    assert!(server.wait_for_ack(&message, Duration::from_secs(3)));
    wait_until(
        Duration::from_secs(10),
        "the new face from the stream",
        || std::fs::read(&file).ok() == Some(new.clone()),
    );
    let rejected = metric(&scrape_metrics(port), "facefs_fleet_rejected_total");
    assert_eq!(rejected, 5.0);
    let peak_mib = memory_kib(reader.child.as_ref().unwrap().id(), "VmHWM") / 1024;
    assert!(peak_mib < 200, "peak {peak_mib} MiB");
    let log = reader.log_text();
    assert!(log.len() < 64 << 10, "{} bytes of log", log.len());
}

/// Every byte string in a Redis reply, concatenated.
fn flatten(value: &redis::Value) -> Vec<u8> {
    match value {
        redis::Value::BulkString(bytes) => bytes.clone(),
        redis::Value::Array(items) => items.iter().flat_map(flatten).collect(),
        redis::Value::SimpleString(text) => text.clone().into_bytes(),
        _ => Vec::new(),
    }
}

/// Every file below `dir`.
fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            files.extend(walk(&path));
        } else {
            files.push(path);
        }
    }
    files
}

/// `rediss://` to a Redis with TLS whose certificate a private CA signed:
/// with `--redis-ca-file` the fleet speaks TLS to it (checked with
/// redis-cli over TLS); without it the certificate is refused and the
/// mount goes on alone; a file that is not PEM is refused at mount.
#[test]
#[cfg_attr(
    not(all(facefs_mount, facefs_redis)),
    ignore = "needs FUSE, redis-server (scripts/test.sh runs it)"
)]
fn rediss_with_a_private_ca_is_trusted_only_through_redis_ca_file() {
    let certs = TempDir::new("tls");
    let dir = certs.path().to_str().unwrap().to_owned();
    let made = run(
        "sh",
        &[
            &"-c",
            &format!(
                "cd {dir} && openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.crt -days 2 -subj '/CN=facefs test CA' \
                 && openssl req -newkey rsa:2048 -nodes -keyout server.key -out server.csr -subj '/CN=localhost' \
                 && printf 'subjectAltName=DNS:localhost\\n' > ext \
                 && openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -out server.crt -days 2 -extfile ext"
            ),
        ],
    );
    assert!(made.status.success(), "{}", stderr(&made));
    let port = free_port();
    // Its plain port (loopback) is the harness's; facefs uses the TLS one.
    let redis = RedisServer::start(&[
        "--tls-port",
        &port.to_string(),
        "--tls-cert-file",
        &format!("{dir}/server.crt"),
        "--tls-key-file",
        &format!("{dir}/server.key"),
        "--tls-ca-cert-file",
        &format!("{dir}/ca.crt"),
        "--tls-auth-clients",
        "no",
    ]);
    let cli = |args: &[&str]| {
        let mut all = vec!["--tls", "--cacert", "ca.crt", "-p"];
        let port = port.to_string();
        all.push(&port);
        all.extend_from_slice(args);
        let out = std::process::Command::new("redis-cli")
            .current_dir(certs.path())
            .args(&all)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    wait_until(Duration::from_secs(10), "Redis answers over TLS", || {
        cli(&["PING"]).trim() == "PONG"
    });
    let emu = emulator(small_tenant(6));
    let url = format!("rediss://localhost:{port}/0");
    let ids = emu.ids_with_faces(IdKind::OpenId);
    let ca = format!("{dir}/ca.crt");
    let trusted = Mount::start(
        &emu,
        &[
            "--redis",
            &url,
            "--redis-ca-file",
            &ca,
            "--rate-limit",
            "100",
        ],
    );
    read_face(&emu, &trusted, &ids[0], false);
    let keys = cli(&["--scan", "--pattern", "facefs:*"]);
    assert!(
        keys.contains(":rate:next"),
        "no fleet keys over TLS: {keys:?}\n{}",
        trusted.log_text()
    );
    assert!(
        !trusted.log_text().contains("failed ("),
        "{}",
        trusted.log_text()
    );

    // The public roots do not know this CA: refused, the mount goes on alone.
    let alone = Mount::start(&emu, &["--redis", &url, "--rate-limit", "100"]);
    read_face(&emu, &alone, &ids[1], false);
    let log = alone.log_text();
    assert!(
        log.contains("failed (") && log.to_lowercase().contains("certificate"),
        "{log}"
    );

    let mountpoint = TempDir::new("bad-ca");
    let out = facefs_command(&emu, mountpoint.path())
        .args([
            "--redis",
            &url,
            "--redis-ca-file",
            &format!("{dir}/ext"),
            "-f",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(stderr(&out).contains("--redis-ca-file"), "{}", stderr(&out));
    drop(redis);
}

/// While Redis is gone, each mount paces at its share of the tenant's
/// limit from the last count of mounts it saw: three mounts at
/// `--rate-limit 5` against a tenant limited to 5 a second get no
/// throttled answer — each at its own 5 a second, two answers in three
/// were 429.
#[test]
#[cfg_attr(
    not(all(facefs_mount, facefs_redis)),
    ignore = "needs FUSE, redis-server (scripts/test.sh runs it)"
)]
fn without_redis_each_mount_keeps_its_share_of_the_tenants_limit() {
    let emu = limited_tenant(40, 5);
    let mut redis = RedisServer::start(&[]);
    let mounts = three_at_five(&emu, &redis.url());
    redis.kill();
    let before = throttled(&emu);
    let downloads = emu.count(Route::Face);
    let ids = emu.ids_with_faces(IdKind::OpenId);
    std::thread::scope(|scope| {
        for (n, (mnt, _)) in mounts.iter().enumerate() {
            let (emu, ids) = (&emu, &ids);
            scope.spawn(move || {
                for id in &ids[n * 8..n * 8 + 8] {
                    read_face(emu, mnt, id, false);
                }
            });
        }
    });
    let got = throttled(&emu) - before;
    assert!(
        emu.count(Route::Face) - downloads >= 24,
        "every face downloaded"
    );
    // The server counts in fixed one-second windows. Each mount alone
    // sends one a second (5/3 rounded down), so no window gets over 3.
    // (At 5/3 a second each, some windows got 6: 3 of 24 throttled; each
    // at its own 5 a second: 12.)
    assert_eq!(got, 0, "throttled answers without Redis");
}

/// Mounts reading all the time while Redis dies and comes back: on the way
/// out each drops the turns the fleet granted it and starts its share once
/// the others can have noticed; on the way back it keeps to its share until
/// the others can have noticed, then the requests it had queued at its
/// share take the fleet's turns. No second of the server's gets more than
/// its limit. (Before: 6 throttled answers as Redis died, and 61 as it came
/// back, measured with four mounts.)
#[test]
#[cfg_attr(
    not(all(facefs_mount, facefs_redis)),
    ignore = "needs FUSE, redis-server (scripts/test.sh runs it)"
)]
fn a_fleet_reading_through_an_outage_of_redis_stays_under_the_limit() {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    let emu = limited_tenant(400, 5);
    let mut redis = RedisServer::start(&[]);
    let mounts = three_at_five(&emu, &redis.url());
    let ids = emu.ids_with_faces(IdKind::OpenId);
    let (next, stop, failures) = (
        AtomicUsize::new(0),
        AtomicBool::new(false),
        AtomicUsize::new(0),
    );
    let before = throttled(&emu);
    std::thread::scope(|scope| {
        // Four readers a mount, each on faces no one read yet: the fleet's
        // queue of granted turns is seconds long when Redis dies.
        for (mnt, _) in &mounts {
            for _ in 0..4 {
                let (ids, next, stop, failures) = (&ids, &next, &stop, &failures);
                scope.spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        let n = next.fetch_add(1, Ordering::Relaxed);
                        let path = mnt
                            .join("open_id")
                            .join(face_file_name(&ids[n / 2 % ids.len()], n % 2 == 1));
                        if std::fs::read(&path).is_err() {
                            failures.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                });
            }
        }
        std::thread::sleep(Duration::from_secs(4));
        redis.kill();
        std::thread::sleep(Duration::from_secs(6));
        redis.restart();
        wait_until(Duration::from_secs(10), "all three back on Redis", || {
            all_on_redis(&mounts, 3.0)
        });
        // Past the grace, the queues at the shares drained into the fleet's turns.
        std::thread::sleep(Duration::from_secs(6));
        stop.store(true, Ordering::Relaxed);
    });
    let log = mounts[0].0.log_text();
    assert!(log.contains("answers again"), "{log}");
    assert_eq!(failures.load(Ordering::Relaxed), 0, "failed reads\n{log}");
    let got = throttled(&emu) - before;
    assert_eq!(got, 0, "throttled answers through the outage");
}

/// Mounts of a Redis that Sentinel watches: the master is killed, the
/// sentinels promote its replica, and the mounts find the new master on
/// their own. Reads go on throughout without a failure or a wrong byte,
/// and an event heard by one mount after the failover reaches the other
/// through the new master's stream.
#[test]
#[cfg_attr(
    not(all(facefs_mount, facefs_redis, facefs_sentinel)),
    ignore = "needs FUSE, redis-server, redis-sentinel (scripts/test.sh runs it)"
)]
fn a_sentinel_failover_is_followed_and_reads_go_on() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let emu = emulator(small_tenant(40));
    let mut set = SentinelSet::start();
    let url = set.url();
    let fleet: Vec<(Mount, u16)> = (0..2)
        .map(|_| {
            let args = ["--events", "--ttl", "1h", "--rate-limit", "100"];
            let redis = ["--redis", &url, "--redis-timeout", "250ms"];
            mount_with_metrics(&emu, &[&args[..], &redis[..]].concat())
        })
        .collect();
    let server = emu.long_connection();
    wait_until(Duration::from_secs(10), "two event connections", || {
        server.clients() == 2
    });
    wait_until(Duration::from_secs(10), "both mounts on the master", || {
        all_on_redis(&fleet, 2.0)
    });
    assert!(!set.master.keys("facefs:*").is_empty());
    assert!(fleet[0]
        .0
        .log_text()
        .contains(&format!("127.0.0.1:{} as the master", set.master.port)));

    // A reader through both mounts, a face every 50 ms, across the failover:
    // faces one mount fetched reach the other through Redis while it lives.
    let ids = emu.ids_with_faces(IdKind::OpenId);
    let stop = AtomicBool::new(false);
    let (promoted, failures) = std::thread::scope(|scope| {
        let reader = scope.spawn(|| {
            let mut failures = Vec::new();
            let mut n = 0usize;
            while !stop.load(Ordering::Relaxed) {
                let id = &ids[n / 2 % ids.len()];
                let mnt = &fleet[n % 2].0;
                let path = mnt
                    .join("open_id")
                    .join(face_file_name(id, n / 2 / ids.len() % 2 == 1));
                match std::fs::read(&path) {
                    Ok(bytes)
                        if Some(&bytes)
                            == emu
                                .face(IdKind::OpenId, id, n / 2 / ids.len() % 2 == 1)
                                .as_ref() => {}
                    Ok(_) => failures.push(format!("{}: wrong bytes", path.display())),
                    Err(e) => failures.push(format!("{}: {e}", path.display())),
                }
                n += 1;
                std::thread::sleep(Duration::from_millis(50));
            }
            failures
        });
        std::thread::sleep(Duration::from_secs(1));
        let killed = Instant::now();
        set.kill_master();
        wait_until(
            Duration::from_secs(60),
            "the sentinels promote the replica",
            || set.master_port() == Some(set.replica.port),
        );
        let promoted = killed.elapsed();
        wait_until(
            Duration::from_secs(10),
            "both mounts on the new master",
            || all_on_redis(&fleet, 2.0),
        );
        eprintln!(
            "promoted {promoted:?} after the kill; both mounts back {:?} after the promotion",
            killed.elapsed() - promoted
        );
        std::thread::sleep(Duration::from_secs(1));
        stop.store(true, Ordering::Relaxed);
        (promoted, reader.join().unwrap())
    });
    assert!(
        failures.is_empty(),
        "{failures:?}\n{}",
        fleet[1].0.log_text()
    );
    assert!(promoted > Duration::ZERO);
    let new_master = format!("127.0.0.1:{} as the master", set.replica.port);
    for (mnt, _) in &fleet {
        let log = mnt.log_text();
        assert!(log.contains(&new_master), "{log}");
        // The old master at the start, the new one: logged at each change only.
        assert_eq!(log.matches(" as the master of ").count(), 2, "{log}");
    }
    assert!(
        !set.replica.keys("facefs:*").is_empty(),
        "the fleet's keys on the new master"
    );

    // An event after the failover: one mount hears it, the other reads it
    // from the new master's stream.
    let (who, other) = (&ids[0], &ids[1]);
    let new = emu.face(IdKind::OpenId, other, false).unwrap();
    let heard_before: usize = fleet
        .iter()
        .map(|(m, _)| m.log_text().matches("from the fleet").count())
        .sum();
    let message = emu
        .replace_face(IdKind::OpenId, who, false, new.clone())
        .unwrap();
    assert!(server.wait_for_ack(&message, Duration::from_secs(3)));
    for (mnt, _) in &fleet {
        let file = mnt.join("open_id").join(face_file_name(who, false));
        wait_until(
            Duration::from_secs(5),
            "the new face in both mounts",
            || std::fs::read(&file).ok() == Some(new.clone()),
        );
    }
    let heard_after: usize = fleet
        .iter()
        .map(|(m, _)| m.log_text().matches("from the fleet").count())
        .sum();
    assert_eq!(
        heard_after - heard_before,
        1,
        "one mount read it from the stream"
    );
}
