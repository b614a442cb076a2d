//! The event long connection's client against the emulator's server: real
//! HTTP bootstrap, a real WebSocket, pbbp2 frames on the wire.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use facefs::api::secret::Secret;
use facefs::api::IdKind;
use facefs::emulator::long_connection::{Misbehaviour, Refusal};
use facefs::emulator::Emulator;
use facefs::events::connection::{ChangeSink, EventConnection, EventsConfig};
use facefs::events::message::UserChange;
use parking_lot::Mutex;

#[derive(Default)]
struct Recorder {
    changes: Mutex<Vec<UserChange>>,
    ups: Mutex<Vec<bool>>,
}

impl ChangeSink for Recorder {
    fn user_changed(&self, change: &UserChange) {
        self.changes.lock().push(change.clone());
    }

    fn connected(&self, up: bool) {
        self.ups.lock().push(up);
    }
}

fn connect(emu: &Emulator) -> (EventConnection, Arc<Recorder>) {
    let recorder = Arc::new(Recorder::default());
    let connection = EventConnection::start(
        EventsConfig {
            base_url: reqwest::Url::parse(&emu.base_url()).unwrap(),
            app_id: emu.config().app_id.clone(),
            app_secret: Secret::new(emu.config().app_secret.clone()),
            timeout: Duration::from_secs(5),
        },
        recorder.clone(),
    )
    .unwrap();
    (connection, recorder)
}

#[test]
fn a_fragmented_event_arrives_whole_once_and_is_acknowledged() {
    let emu = emulator(small_tenant(10));
    let (connection, recorder) = connect(&emu);
    let server = emu.long_connection();
    wait_until(Duration::from_secs(10), "connected", || {
        server.clients() == 1
    });
    wait_until(Duration::from_secs(10), "a ping", || server.pings() >= 1);
    let open_id = emu.ids_with_faces(IdKind::OpenId)[0].clone();
    let message = emu.push_user_updated(&open_id, true, 3).unwrap();
    assert!(
        server.wait_for_ack(&message, Duration::from_secs(3)),
        "acked within 3 s"
    );
    let changes = recorder.changes.lock().clone();
    assert_eq!(changes.len(), 1);
    let user = &emu.tenant().users()[emu.tenant().find(IdKind::OpenId, &open_id).unwrap()];
    assert_eq!(changes[0].open_id.as_deref(), Some(open_id.as_str()));
    assert_eq!(
        changes[0].union_id.as_deref(),
        Some(user.id(IdKind::UnionId))
    );
    assert_eq!(changes[0].user_id.as_deref(), Some(user.id(IdKind::UserId)));
    assert_eq!(changes[0].face_uploaded, Some(true));
    let acks = server.acks();
    assert_eq!(
        acks.len(),
        1,
        "only the completing fragment is acknowledged"
    );
    assert_eq!(acks[0].code, Some(200));
    assert!(acks[0]
        .biz_rt
        .as_deref()
        .is_some_and(|ms| ms.parse::<u64>().is_ok()));

    // The same event again (a re-push): acknowledged, not done twice.
    let payload = serde_json::json!({
        "schema": "2.0",
        "header": {"event_id": "ev-dup", "event_type": "acs.user.updated_v1"},
        "event": {"user_id": {"open_id": open_id}, "face_uploaded": false},
    })
    .to_string();
    for _ in 0..2 {
        let message = emu.push_event(payload.as_bytes(), 1).unwrap();
        assert!(server.wait_for_ack(&message, Duration::from_secs(3)));
    }
    assert_eq!(recorder.changes.lock().len(), 2);
    // Another event type: acknowledged with 200, nothing done.
    let other = r#"{"schema":"2.0","header":{"event_id":"ev-o","event_type":"acs.access_record.created_v1"},"event":{}}"#;
    let message = emu.push_event(other.as_bytes(), 1).unwrap();
    assert!(server.wait_for_ack(&message, Duration::from_secs(3)));
    assert_eq!(server.acks().last().unwrap().code, Some(200));
    assert_eq!(recorder.changes.lock().len(), 2);
    assert!(connection.status.fatal.lock().is_none());
}

#[test]
fn a_dropped_or_silent_connection_is_made_again() {
    let emu = emulator(small_tenant(4));
    emu.set_client_config(serde_json::json!({
        "ReconnectCount": -1, "ReconnectInterval": 1, "ReconnectNonce": 1, "PingInterval": 1,
    }));
    let (connection, recorder) = connect(&emu);
    let server = emu.long_connection();
    wait_until(Duration::from_secs(10), "connected", || {
        server.clients() == 1
    });
    server.drop_clients();
    wait_until(Duration::from_secs(10), "reconnected", || {
        server.connections() >= 2 && server.clients() == 1
    });
    // A server that stops answering: the next ping unanswered for 10 s ends it.
    server
        .answer_pings
        .store(false, std::sync::atomic::Ordering::SeqCst);
    let before = server.connections();
    wait_until(Duration::from_secs(20), "watchdog reconnect", || {
        server.connections() > before
    });
    assert!(recorder.ups.lock().contains(&false));
    assert!(connection.status.fatal.lock().is_none());
}

#[test]
fn refusals_that_retrying_cannot_change_end_the_connection_for_good() {
    let emu = emulator(small_tenant(4));
    emu.set_bootstrap_code(Some(1_000_040_344));
    let (connection, _) = connect(&emu);
    wait_until(Duration::from_secs(10), "fatal", || {
        connection.status.fatal.lock().is_some()
    });
    assert!(connection
        .status
        .fatal
        .lock()
        .as_deref()
        .unwrap()
        .contains("1000040344"));

    emu.set_bootstrap_code(None);
    *emu.long_connection().refusal.lock() = Some(Refusal::TooManyConnections);
    let (connection, _) = connect(&emu);
    wait_until(Duration::from_secs(10), "fatal", || {
        connection.status.fatal.lock().is_some()
    });
    let why = connection.status.fatal.lock().clone().unwrap();
    assert!(why.contains("1000040350"), "{why}");
    // The URL's access key and ticket are in no message.
    assert!(
        !why.contains("access_key") && !why.contains("ticket-"),
        "{why}"
    );
}

#[test]
#[cfg_attr(not(facefs_mount), ignore = "needs FUSE (scripts/test.sh runs it)")]
fn an_event_shows_a_replaced_face_at_once_through_the_kernels_caches() {
    use facefs::emulator::Route;
    use facefs::fs::layout::face_file_name;
    let emu = emulator(small_tenant(10));
    let port = free_port();
    let mnt = Mount::start(
        &emu,
        &[
            "--events",
            "--ttl",
            "1h",
            "--rate-limit",
            "100",
            "--metrics-listen",
            &port.to_string(),
        ],
    );
    let server = emu.long_connection();
    wait_until(Duration::from_secs(10), "connected", || {
        server.clients() == 1
    });
    let ids = emu.ids_with_faces(IdKind::OpenId);
    let (who, other) = (&ids[0], &ids[1]);
    let file = mnt.join("open_id").join(face_file_name(who, false));
    let old = std::fs::read(&file).unwrap();
    assert_eq!(Some(old.clone()), emu.face(IdKind::OpenId, who, false));
    // Read twice: the second comes from the kernel's page cache.
    std::fs::read(&file).unwrap();
    let downloads = emu.count(Route::Face);

    let new = emu.face(IdKind::OpenId, other, false).unwrap();
    // The emulator sends the event itself, as the service does.
    let replaced = Instant::now();
    let message = emu
        .replace_face(IdKind::OpenId, who, false, new.clone())
        .unwrap();
    assert!(server.wait_for_ack(&message, Duration::from_secs(3)));
    wait_until(Duration::from_secs(1), "the new bytes", || {
        std::fs::read(&file).ok() == Some(new.clone())
    });
    eprintln!(
        "new bytes read {:?} after the replacement",
        replaced.elapsed()
    );
    assert_eq!(
        emu.count(Route::Face),
        downloads + 1,
        "downloaded once more, within the TTL"
    );
    // The same face under the user's union_id changes too.
    let user = &emu.tenant().users()[emu.tenant().find(IdKind::OpenId, who).unwrap()];
    let union = mnt
        .join("union_id")
        .join(face_file_name(user.id(IdKind::UnionId), false));
    assert_eq!(
        std::fs::read(&union).unwrap(),
        emu.face(IdKind::UnionId, user.id(IdKind::UnionId), false)
            .unwrap()
    );

    // face_uploaded false: gone from `ls` at once, without a listing request.
    let name = face_file_name(other, false);
    assert!(std::fs::read_dir(mnt.join("open_id"))
        .unwrap()
        .flatten()
        .any(|e| e.file_name() == name.as_str()));
    let lists = emu.count(Route::ListUsers);
    // The face removed in the emulator (which sends face_uploaded: false).
    let message = emu.set_has_face(other, false).unwrap();
    assert!(server.wait_for_ack(&message, Duration::from_secs(3)));
    let listed = |n: &str| {
        std::fs::read_dir(mnt.join("open_id"))
            .unwrap()
            .flatten()
            .any(|e| e.file_name() == n)
    };
    wait_until(Duration::from_secs(5), "the user gone from ls", || {
        !listed(&name)
    });
    let gone = std::fs::read(mnt.join("open_id").join(&name)).unwrap_err();
    assert_eq!(
        gone.raw_os_error(),
        Some(libc::ENOENT),
        "the API says it is gone"
    );
    let message = emu.set_has_face(other, true).unwrap();
    assert!(server.wait_for_ack(&message, Duration::from_secs(3)));
    wait_until(Duration::from_secs(5), "the user back in ls", || {
        listed(&name)
    });
    assert_eq!(emu.count(Route::ListUsers), lists);
    // The kernel's "does not exist" is forgotten on a thread of its own, a
    // moment after the listing changed; kept, it would last the 30 s of
    // --negative-ttl.
    let face = emu.face(IdKind::OpenId, other, false);
    wait_until(Duration::from_secs(5), "the face readable again", || {
        std::fs::read(mnt.join("open_id").join(&name)).ok() == face
    });

    // Three events (replaced, removed, enrolled), each acted on once.
    let metrics = scrape_metrics(port);
    assert_eq!(metric(&metrics, "facefs_events_total"), 3.0);
    assert_eq!(metric(&metrics, "facefs_event_duplicates_total"), 0.0);
    assert_eq!(metric(&metrics, "facefs_event_connection_up"), 1.0);
    assert_eq!(metric(&metrics, "facefs_event_connects_total"), 1.0);
    // Only names the kernel holds are told (exact lists in the core's tests).
    assert!(
        metric(&metrics, "facefs_kernel_invalidations_total") >= 2.0,
        "{metrics}"
    );
    let log = mnt.log_text();
    assert!(log.contains("event long connection up"), "{log}");
    assert!(
        !log.contains("access_key=") && !log.contains("ticket-"),
        "the URL's secrets in the log"
    );
}

#[test]
fn with_two_clients_of_one_app_each_event_reaches_one() {
    let emu = emulator(small_tenant(6));
    let (_a, first) = connect(&emu);
    let (_b, second) = connect(&emu);
    let server = emu.long_connection();
    wait_until(Duration::from_secs(10), "two clients", || {
        server.clients() == 2
    });
    let open_id = emu.ids_with_faces(IdKind::OpenId)[0].clone();
    for _ in 0..10 {
        let message = emu.push_user_updated(&open_id, true, 1).unwrap();
        assert!(server.wait_for_ack(&message, Duration::from_secs(3)));
    }
    let (a, b) = (first.changes.lock().len(), second.changes.lock().len());
    assert_eq!(a + b, 10, "each event once, to one client");
    assert!(
        a > 0 && b > 0,
        "both clients were chosen at times: {a} and {b}"
    );
}

#[test]
fn an_event_whose_ack_was_lost_is_pushed_again_and_acted_on_once() {
    let emu = emulator(small_tenant(6));
    emu.set_client_config(serde_json::json!({
        "ReconnectCount": -1, "ReconnectInterval": 1, "ReconnectNonce": 1, "PingInterval": 1,
    }));
    let server = emu.long_connection();
    server.set_repush_after(Duration::from_millis(300));
    let (_connection, recorder) = connect(&emu);
    wait_until(Duration::from_secs(10), "connected", || {
        server.clients() == 1
    });
    let open_id = emu.ids_with_faces(IdKind::OpenId)[0].clone();
    // The connection dies right behind the event: its ack may never come.
    let message = emu.push_user_updated(&open_id, true, 2).unwrap();
    server.drop_clients();
    assert!(
        server.wait_for_ack(&message, Duration::from_secs(10)),
        "acked on the next connection"
    );
    // Acknowledged, it is never pushed again; a second event pushed now
    // comes after every push of the first on the one connection, so once
    // it is acknowledged, every delivery of the first was handled.
    let later = emu.ids_with_faces(IdKind::OpenId)[1].clone();
    let marker = emu.push_user_updated(&later, true, 1).unwrap();
    assert!(server.wait_for_ack(&marker, Duration::from_secs(10)));
    let changes = recorder.changes.lock();
    let first = changes
        .iter()
        .filter(|c| c.open_id.as_deref() == Some(open_id.as_str()))
        .count();
    assert_eq!(first, 1, "acted on once: {changes:?}");
}

fn count_entries(dir: &str) -> usize {
    std::fs::read_dir(dir).map_or(0, |d| d.count())
}

#[test]
#[cfg_attr(not(facefs_mount), ignore = "needs FUSE (scripts/test.sh runs it)")]
fn twenty_dropped_connections_lose_no_event_and_leak_nothing() {
    let emu = emulator(small_tenant(10));
    emu.set_client_config(serde_json::json!({
        "ReconnectCount": -1, "ReconnectInterval": 1, "ReconnectNonce": 1, "PingInterval": 1,
    }));
    let mnt = Mount::start(&emu, &["--events", "--rate-limit", "100"]);
    let server = emu.long_connection();
    wait_until(Duration::from_secs(10), "connected", || {
        server.clients() == 1
    });
    let pid = mnt.child.as_ref().unwrap().id();
    let (threads, fds) = (
        count_entries(&format!("/proc/{pid}/task")),
        count_entries(&format!("/proc/{pid}/fd")),
    );
    let ids = emu.ids_with_faces(IdKind::OpenId);
    let started = Instant::now();
    for i in 0..20 {
        wait_until(Duration::from_secs(10), "reconnected", || {
            server.clients() == 1
        });
        let message = emu.push_user_updated(&ids[i % ids.len()], true, 1).unwrap();
        assert!(
            server.wait_for_ack(&message, Duration::from_secs(3)),
            "event {i} acked"
        );
        // Half dropped silently, half closed properly.
        if i % 2 == 0 {
            server.drop_clients();
        } else {
            server.close_clients();
        }
        assert!(std::fs::metadata(mnt.path()).is_ok(), "the mount answers");
    }
    wait_until(Duration::from_secs(10), "reconnected", || {
        server.clients() == 1
    });
    eprintln!("20 drops in {:?}", started.elapsed());
    // Threads and descriptors settle back (a bootstrap's HTTP client ends with it).
    let now = || {
        (
            count_entries(&format!("/proc/{pid}/task")),
            count_entries(&format!("/proc/{pid}/fd")),
        )
    };
    let settled = || {
        let (threads_now, fds_now) = now();
        threads_now <= threads && fds_now <= fds
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !settled() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let (threads_after, fds_after) = now();
    assert!(
        threads_after <= threads,
        "threads {threads} -> {threads_after} after 10 s"
    );
    assert!(
        fds_after <= fds,
        "descriptors {fds} -> {fds_after} after 10 s"
    );
    let acted = mnt.log_text().matches("a user's faces changed").count();
    assert_eq!(acted, 20, "each event acted on once");
}

#[test]
#[cfg_attr(
    not(all(facefs_mount, facefs_rsync)),
    ignore = "needs FUSE, rsync (scripts/test.sh runs it)"
)]
fn with_events_repeated_backups_download_each_face_once_whatever_the_ttl() {
    use facefs::emulator::Route;
    let emu = emulator(small_tenant(30));
    let mnt = Mount::start(&emu, &["--events", "--ttl", "1s", "--rate-limit", "1000"]);
    let server = emu.long_connection();
    wait_until(Duration::from_secs(10), "connected", || {
        server.clients() == 1
    });
    let backup = TempDir::new("backup");
    let src = format!("{}/", mnt.join("open_id").display());
    let files = emu.ids_with_faces(IdKind::OpenId).len() * 2;
    let started = std::time::Instant::now();
    for run_number in 0..10 {
        let out = run("rsync", &[&"-a", &src, &backup.path()]);
        assert!(out.status.success(), "run {run_number}: {}", stderr(&out));
        if run_number == 0 {
            // What is waited for is time itself: past --ttl (1 s) for
            // everything the first run fetched.
            wait_until(Duration::from_secs(5), "past --ttl", || {
                started.elapsed() > Duration::from_millis(1100)
            });
        }
    }
    assert_eq!(
        emu.count(Route::Face),
        files,
        "the first run's downloads and no more"
    );
    assert_eq!(emu.count(Route::ListUsers), 1, "one listing");
}

#[test]
fn busy_answers_are_retried_and_a_pong_can_change_the_ping_interval() {
    let emu = emulator(small_tenant(4));
    emu.set_client_config(serde_json::json!({
        "ReconnectCount": -1, "ReconnectInterval": 1, "ReconnectNonce": 1, "PingInterval": 30,
    }));
    let server = emu.long_connection();
    *server.pong_config.lock() =
        r#"{"ReconnectCount":-1,"ReconnectInterval":1,"ReconnectNonce":1,"PingInterval":1}"#.into();
    let (connection, _) = connect(&emu);
    wait_until(Duration::from_secs(10), "connected", || {
        server.clients() == 1
    });
    // The bootstrap said 30 s; the first pong says 1 s.
    wait_until(Duration::from_secs(6), "pings every second", || {
        server.pings() >= 4
    });

    // Busy bootstraps (1, 1000040343) and a retryable handshake refusal:
    // each retried on the server's schedule, then connected again.
    for busy in [Some(1), Some(1_000_040_343), None] {
        emu.set_bootstrap_code(busy);
        if busy.is_none() {
            *server.refusal.lock() = Some(Refusal::AuthRetry);
        }
        let before = server.connections();
        let attempts = || match busy {
            Some(_) => emu.count(facefs::emulator::Route::EventsEndpoint),
            None => server.refusals(),
        };
        let attempted = attempts();
        server.drop_clients();
        // Refused twice: the first try and one retry on the server's schedule.
        wait_until(Duration::from_secs(10), "two refused attempts", || {
            attempts() >= attempted + 2
        });
        assert_eq!(server.connections(), before, "connected while refused");
        emu.set_bootstrap_code(None);
        *server.refusal.lock() = None;
        wait_until(Duration::from_secs(10), "connected again", || {
            server.connections() > before
        });
    }
    assert!(connection.status.fatal.lock().is_none());

    // A handshake answered 403 (a banned app) ends it for good.
    *server.refusal.lock() = Some(Refusal::Forbidden);
    server.drop_clients();
    wait_until(Duration::from_secs(10), "fatal", || {
        connection.status.fatal.lock().is_some()
    });
}

/// The event connection's access key and ticket never reach the log, even
/// at trace level.
#[test]
#[cfg_attr(not(facefs_mount), ignore = "needs FUSE (scripts/test.sh runs it)")]
fn the_connection_url_stays_out_of_a_trace_log() {
    let emu = emulator(small_tenant(4));
    let mnt = Mount::start_with_env(&emu, &["--events"], &[("FACEFS_LOG", "trace")]);
    let server = emu.long_connection();
    wait_until(Duration::from_secs(10), "connected", || {
        server.clients() == 1
    });
    let log = mnt.log_text();
    assert!(log.contains("TRACE"), "not a trace log:\n{log}");
    for secret in ["ticket-", "secret", &emu.config().app_secret] {
        assert!(!log.contains(secret), "{secret} in the log:\n{log}");
    }
}

/// A server that starts a frame and trickles it, or never answers a ping
/// (asking for pings a day apart), is down within the pong and frame
/// bounds, not after a day: the reader's deadlines hold however slowly
/// bytes come.
#[test]
fn a_trickled_frame_or_a_silent_server_is_down_within_its_bound() {
    use facefs::events::connection::{FRAME_WAIT, PONG_WAIT};
    let bound = PONG_WAIT.max(FRAME_WAIT) + Duration::from_secs(3);
    let emu = emulator(small_tenant(4));
    let server = emu.long_connection();
    let (connection, recorder) = connect(&emu);
    wait_until(Duration::from_secs(10), "connected", || {
        server.clients() == 1
    });
    let started = Instant::now();
    server.misbehave_clients(Misbehaviour::TrickleFrame);
    wait_until(bound, "a trickled frame ends the connection", || {
        recorder.ups.lock().contains(&false)
    });
    assert!(!connection
        .status
        .up
        .load(std::sync::atomic::Ordering::SeqCst));
    eprintln!("trickle: down after {:?}", started.elapsed());

    let emu = emulator(small_tenant(4));
    emu.set_client_config(serde_json::json!({
        "ReconnectCount": -1, "ReconnectInterval": 1, "ReconnectNonce": 1, "PingInterval": 86_400,
    }));
    let server = emu.long_connection();
    server
        .answer_pings
        .store(false, std::sync::atomic::Ordering::SeqCst);
    let (_connection, recorder) = connect(&emu);
    wait_until(Duration::from_secs(10), "connected", || {
        server.clients() == 1
    });
    wait_until(bound, "a silent server ends the connection", || {
        recorder.ups.lock().contains(&false)
    });
}

/// A server that accepts and closes at once, asking for no pause between
/// tries, gets a few bootstraps (each carries the app secret), not hundreds.
#[test]
fn a_server_that_closes_at_once_gets_few_bootstraps() {
    use facefs::emulator::Route;
    let emu = emulator(small_tenant(4));
    emu.set_client_config(serde_json::json!({
        "ReconnectCount": -1, "ReconnectInterval": 1, "ReconnectNonce": 0, "PingInterval": 1,
    }));
    *emu.long_connection().misbehaviour.lock() = Some(Misbehaviour::CloseAtOnce);
    let (connection, _) = connect(&emu);
    std::thread::sleep(Duration::from_secs(10));
    let bootstraps = emu.count(Route::EventsEndpoint);
    drop(connection);
    // Tries at 0, 1, 1-2, 2-4 and 4-8 s: at most six in ten seconds.
    assert!(
        (2..=6).contains(&bootstraps),
        "{bootstraps} bootstraps in 10 s"
    );
}

/// An event server stuck mid-frame while the connection seems up: within
/// the detection bound facefs stops trusting the connection, so a face
/// replaced at the service (no event can arrive) reads new after `--ttl`;
/// and SIGTERM still ends facefs within 10 s, its store lock with it.
#[test]
#[cfg_attr(not(facefs_mount), ignore = "needs FUSE (scripts/test.sh runs it)")]
fn a_stuck_event_connection_costs_trust_not_freshness_or_shutdown() {
    use facefs::events::connection::{FRAME_WAIT, PONG_WAIT};
    use facefs::fs::layout::face_file_name;
    let emu = emulator(small_tenant(6));
    let store = TempDir::new("stuck-events-store");
    let store_path = store.path().to_str().unwrap().to_owned();
    let args = [
        "--ttl",
        "2s",
        "--rate-limit",
        "100",
        "--cache-dir",
        &store_path,
    ];
    let mut mnt = Mount::start(&emu, &[&args[..], &["--events"]].concat());
    let server = emu.long_connection();
    wait_until(Duration::from_secs(10), "connected", || {
        server.clients() == 1
    });
    let ids = emu.ids_with_faces(IdKind::OpenId);
    let file = mnt.join("open_id").join(face_file_name(&ids[0], false));
    assert_eq!(
        std::fs::read(&file).ok(),
        emu.face(IdKind::OpenId, &ids[0], false)
    );
    // Replaced at the service without an event: only distrust brings it.
    let new = emu.face(IdKind::OpenId, &ids[1], false).unwrap();
    let user = emu.tenant().find(IdKind::OpenId, &ids[0]).unwrap();
    emu.tenant().replace_face(user, false, new.clone());
    *server.misbehaviour.lock() = Some(Misbehaviour::TrickleFrame);
    server.misbehave_clients(Misbehaviour::TrickleFrame);
    let stuck = Instant::now();
    // The next ping (2 s) unanswered for PONG_WAIT, or the frame not whole
    // within FRAME_WAIT; then --ttl; and a margin for a busy machine.
    let bound = Duration::from_secs(2) + PONG_WAIT.min(FRAME_WAIT) + Duration::from_secs(2 + 4);
    wait_until(bound, "the replaced face read new", || {
        std::fs::read(&file).ok() == Some(new.clone())
    });
    eprintln!("stuck connection: new face after {:?}", stuck.elapsed());

    let stopping = Instant::now();
    let status = mnt.signal_and_wait(libc::SIGTERM);
    let took = stopping.elapsed();
    assert!(took < Duration::from_secs(10), "SIGTERM took {took:?}");
    assert!(status.success(), "{status:?}");
    // The store's lock went with the process: the store mounts again.
    let again = Mount::start(&emu, &args);
    let file = again.join("open_id").join(face_file_name(&ids[0], false));
    assert_eq!(std::fs::read(&file).ok(), Some(new));
}

/// A server flooding malformed frames and events that are not JSON gets
/// a few warning lines a minute, not one per frame, and the next real
/// event still applies.
#[test]
#[cfg_attr(not(facefs_mount), ignore = "needs FUSE (scripts/test.sh runs it)")]
fn a_flood_of_malformed_frames_logs_a_few_lines() {
    use facefs::repeated_warning::BURST;
    let emu = emulator(small_tenant(6));
    let mnt = Mount::start(&emu, &["--events", "--rate-limit", "100"]);
    let server = emu.long_connection();
    wait_until(Duration::from_secs(10), "connected", || {
        server.clients() == 1
    });
    server.misbehave_clients(Misbehaviour::MalformedFrames(100_000));
    server.misbehave_clients(Misbehaviour::BadEvents(20_000));
    let ids = emu.ids_with_faces(IdKind::OpenId);
    let message = emu.push_user_updated(&ids[0], true, 1).unwrap();
    assert!(server.wait_for_ack(&message, Duration::from_secs(60)));
    let log = mnt.log_text();
    let frames = log.matches("not pbbp2").count();
    let events = log.matches("acknowledged and dropped").count();
    // Per minute: BURST lines, then one saying how many were left out.
    assert!((1..=2 * BURST as usize).contains(&frames), "{frames} lines");
    assert!((1..=2 * BURST as usize).contains(&events), "{events} lines");
    assert_eq!(log.matches("a user's faces changed").count(), 1);
    assert!(log.len() < 64 << 10, "{} bytes of log", log.len());
}

/// A bootstrap answer of 1.5 GB is refused past 4 MiB: memory stays near
/// the idle daemon's, and the log says why.
#[test]
#[cfg_attr(not(facefs_mount), ignore = "needs FUSE (scripts/test.sh runs it)")]
fn a_bootstrap_answer_of_gigabytes_is_cut_at_its_limit() {
    use facefs::emulator::{Route, WireFault};
    let emu = emulator(small_tenant(4));
    let mnt = Mount::start(&emu, &["--events", "--rate-limit", "100"]);
    let server = emu.long_connection();
    wait_until(Duration::from_secs(10), "connected", || {
        server.clients() == 1
    });
    // The next bootstraps (after the server's 1 s schedule) answer 1.5 GB.
    emu.inject(Route::EventsEndpoint, WireFault::Flood, 1.0);
    server.drop_clients();
    let refused = Instant::now() + Duration::from_secs(20);
    while mnt.log_text().matches("over 4 MiB").count() < 2 {
        assert!(
            Instant::now() < refused,
            "not refused twice:\n{}",
            mnt.log_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let peak_mib = memory_kib(mnt.child.as_ref().unwrap().id(), "VmHWM") / 1024;
    assert!(peak_mib < 100, "peak {peak_mib} MiB");
    // Without the fault, the connection comes up again.
    emu.clear_faults();
    wait_until(Duration::from_secs(20), "connected again", || {
        server.clients() == 1
    });
}
