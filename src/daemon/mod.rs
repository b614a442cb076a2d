//! The mount's life: detach (unless in the foreground) and report back only
//! once the mount answers; then serve until `umount` or a signal, and on a
//! signal unmount cleanly.

mod assemble;
pub mod cli;
pub mod hardening;
pub mod logging;
pub mod metrics_server;
pub mod mount_options;
pub mod mountpoint;
pub mod notify;

use std::io::{Read, Write};
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{channel, Sender};
use std::sync::Arc;
use std::time::Duration;

use fuser::INodeNo;

use self::assemble::Origin;
use self::cli::Settings;
use self::metrics_server::{Layers, MetricsServer};
use self::notify::notify;
use crate::api::http::IN_FLIGHT_BYTES;
use crate::emulator::Emulator;
use crate::events::connection::{ChangeSink, EventConnection, EventsConfig};
use crate::events::message::UserChange;
use crate::fleet::events::{FleetEvents, StreamTarget};
use crate::fs::{FaceFs, Invalidation, ROOT_INO};
use crate::fuse::FuseAdapter;
use crate::sync::byte_budget::ByteBudget;

/// How long the new mount has to answer its first `stat`.
const READY_TIMEOUT: Duration = Duration::from_secs(20);
/// After a signal, how long to wait for readers to let go of the mount.
const UNMOUNT_GRACE: Duration = Duration::from_secs(7);
/// At the end, how long queued store writes may take.
const STORE_FLUSH: Duration = Duration::from_secs(2);
/// After a signal, the process ends within this however its threads are
/// stuck (the README promises 10 s; the store's lock goes with it).
const EXIT_LIMIT: Duration = Duration::from_millis(9_500);

/// Where the outcome of mounting goes: the terminal, or the waiting parent.
enum Readiness {
    Foreground,
    Parent(std::fs::File),
}

impl Readiness {
    fn ready(self) {
        notify("READY=1");
        if let Readiness::Parent(mut pipe) = self {
            let _ = pipe.write_all(b"ok");
            detach_stdio();
        }
    }

    fn failed(self, message: &str) {
        match self {
            Readiness::Foreground => eprintln!("facefs: {message}"),
            Readiness::Parent(mut pipe) => {
                let _ = pipe.write_all(format!("error: {message}").as_bytes());
            }
        }
    }
}

enum MountEvent {
    Signal(i32),
    Ended(std::io::Result<()>),
}

/// Mounts and serves; returns the process's exit code.
pub fn run(settings: Settings) -> i32 {
    let readiness = if settings.foreground {
        Readiness::Foreground
    } else {
        // Forking must come before any thread is started.
        match detach() {
            Ok(readiness) => readiness,
            Err(message) => {
                eprintln!("facefs: {message}");
                return 1;
            }
        }
    };
    let signals = match block_signals() {
        Ok(set) => set,
        Err(e) => {
            readiness.failed(&format!("cannot set up signal handling: {e}"));
            return 1;
        }
    };
    let (events, incoming) = channel();
    let (mut unmounter, servers) = match mount(&settings, events.clone()) {
        Ok(mounted) => mounted,
        Err(message) => {
            readiness.failed(&message);
            return 1;
        }
    };
    log::info!("mounted at {}", settings.mountpoint.display());
    readiness.ready();
    std::thread::spawn(move || wait_for_signals(signals, events));

    match incoming.recv() {
        Ok(MountEvent::Ended(result)) => ended(result, &servers.core),
        Ok(MountEvent::Signal(signal)) => {
            exit_at_the_latest(EXIT_LIMIT);
            log::info!(
                "signal {signal}: unmounting {}",
                settings.mountpoint.display()
            );
            notify("STOPPING=1");
            // Listings in flight give up, so the session can end.
            servers.core.stop();
            if let Err(e) = unmounter.unmount() {
                log::warn!("unmount failed ({e}); detaching the mount instead, open files keep working until closed");
                if let Err(e) = mountpoint::detach(&settings.mountpoint) {
                    log::error!("cannot detach {}: {e}", settings.mountpoint.display());
                }
            }
            loop {
                match incoming.recv_timeout(UNMOUNT_GRACE) {
                    Ok(MountEvent::Ended(result)) => return ended(result, &servers.core),
                    Ok(MountEvent::Signal(_)) => continue,
                    Err(_) => {
                        log::warn!(
                            "the kernel did not end the session within {UNMOUNT_GRACE:?}; exiting"
                        );
                        return 0;
                    }
                }
            }
        }
        Err(_) => 1,
    }
}

/// Ends the process after `limit` if it has not ended by then: no thread
/// stuck in I/O (a peer that never answers) may keep it, or the store's
/// lock, alive.
fn exit_at_the_latest(limit: Duration) {
    let _ = std::thread::Builder::new()
        .name("facefs-exit".into())
        .spawn(move || {
            std::thread::sleep(limit);
            log::error!("stopping took over {limit:?} (a thread is stuck in I/O); exiting now");
            log::logger().flush();
            // SAFETY: _exit ends the process at once; nothing is used after.
            unsafe { libc::_exit(1) };
        });
}

/// The session ended: what the store still has queued is written (for a
/// bounded time: the disk may be the reason it is queued), then the exit code.
fn ended(result: std::io::Result<()>, core: &FaceFs) -> i32 {
    if !core.flush_store(STORE_FLUSH) {
        log::warn!("the store's queued writes did not finish within {STORE_FLUSH:?}; they cost downloads after the next mount");
    }
    match result {
        Ok(()) => {
            log::info!("unmounted");
            0
        }
        Err(e) => {
            log::error!("the FUSE session failed: {e}");
            1
        }
    }
}

/// Builds the client, checks the credentials, mounts, and waits until the
/// mount answers. Returns what unmounts it, and the servers to keep alive.
fn mount(
    settings: &Settings,
    events: Sender<MountEvent>,
) -> Result<(fuser::SessionUnmounter, Servers), String> {
    let origin = Origin::of(settings)?;
    // Everything held in faces: the cache, and downloads, stored faces being
    // read and open files beyond it.
    let memory = ByteBudget::new(settings.cache_size.saturating_add(IN_FLIGHT_BYTES));
    let sealer = origin.sealer(settings.data_key.as_ref());
    let store = assemble::store(settings, &origin, &sealer, &memory)?;
    let events_config = settings.events.then(|| EventsConfig {
        base_url: origin.base_url.clone(),
        app_id: origin.app_id.clone(),
        app_secret: origin.app_secret.clone(),
        timeout: settings.request_timeout,
    });
    let client = assemble::client(settings, &origin, &sealer, &memory)?;
    let fleet_events = client.fleet_events.clone();
    let core = FaceFs::new(
        client.api.clone(),
        assemble::fs_config(settings),
        store.clone(),
    );
    let adapter = FuseAdapter::new(core.clone(), settings.max_parallel)
        .map_err(|e| format!("cannot start workers: {e}"))?;
    let fuse_metrics = adapter.metrics().clone();
    let config = assemble::session_config(settings);
    let mut session = fuser::Session::new(adapter, &settings.mountpoint, &config).map_err(|e| {
        format!(
            "cannot mount at {}: {e}{}",
            settings.mountpoint.display(),
            mount_hint(&e)
        )
    })?;
    let mut unmounter = session.unmount_callable();
    if settings.events || settings.writable || fleet_events.is_some() {
        tell_kernel_through(&core, session.notifier())
            .map_err(|e| format!("cannot start the invalidation thread: {e}"))?;
    }
    let changes = Arc::new(MountChanges {
        core: core.clone(),
        fleet: fleet_events.clone(),
    });
    if let Some(fleet_events) = &fleet_events {
        fleet_events
            .listen(changes.clone())
            .map_err(|e| format!("cannot start the fleet's event reader: {e}"))?;
    }
    let long_connection = match events_config {
        Some(config) => Some(
            EventConnection::start(config, changes)
                .map_err(|e| format!("cannot start the event connection: {e}"))?,
        ),
        None => None,
    };
    let metrics = match &settings.metrics_listen {
        Some(addr) => {
            let registry = metrics_server::registry(&Layers {
                api: &client.metrics,
                core: &core,
                store: store.as_ref(),
                events: long_connection.as_ref().map(|c| &c.status.metrics),
                fleet: client.fleet.as_ref().map(|f| &f.metrics),
                fuse: &fuse_metrics,
            });
            let server = MetricsServer::start(addr, Arc::new(registry))
                .map_err(|e| format!("cannot serve metrics on {addr}: {e}"))?;
            log::info!("metrics at http://{}/metrics", server.addr());
            Some(server)
        }
        None => None,
    };
    std::thread::Builder::new()
        .name("fuse-session".into())
        .spawn(move || {
            let _ = events.send(MountEvent::Ended(session.run()));
        })
        .map_err(|e| format!("cannot start the FUSE session: {e}"))?;
    if let Err(message) = wait_until_answering(&settings.mountpoint) {
        if unmounter.unmount().is_err() {
            let _ = mountpoint::detach(&settings.mountpoint);
        }
        return Err(message);
    }
    Ok((
        unmounter,
        Servers {
            core,
            _events: long_connection,
            _emulator: origin.emulator,
            _metrics: metrics,
        },
    ))
}

/// What the core drops reaches the kernel on a thread of its own, because
/// the kernel may hold a notification until a lookup of that name ends (a
/// download, up to the retry budget; a rename holding the directory), and
/// neither an event's ack (due within 3 s) nor the operation that caused
/// it may wait for that.
fn tell_kernel_through(core: &FaceFs, notifier: fuser::Notifier) -> std::io::Result<()> {
    let (tx, rx) = channel::<Vec<Invalidation>>();
    std::thread::Builder::new()
        .name("facefs-invalidate".into())
        .spawn(move || {
            for batch in rx {
                for forget in batch {
                    // ENOENT: the kernel did not hold it, nothing to forget.
                    let _ = match forget {
                        Invalidation::Entry { parent, name } => {
                            notifier.inval_entry(INodeNo(parent), std::ffi::OsStr::new(&name))
                        }
                        Invalidation::Inode(ino) => notifier.inval_inode(INodeNo(ino), 0, 0),
                    };
                }
            }
        })?;
    core.set_kernel(Box::new(move |batch| {
        let _ = tx.send(batch);
    }));
    Ok(())
}

/// Where changes reach the mount, through the one entry point
/// [`FaceFs::apply_user_change`]: events heard here (then passed on to the
/// fleet, with `--redis`) and events the fleet's stream brings.
struct MountChanges {
    core: Arc<FaceFs>,
    fleet: Option<Arc<FleetEvents>>,
}

/// The store's note of the last fleet event applied.
const FLEET_POSITION_NOTE: &str = "fleet-events";

impl ChangeSink for MountChanges {
    fn user_changed(&self, change: &UserChange) {
        log::info!(
            "event {}: a user's faces changed (face_uploaded {:?}); dropping them",
            change.event_id,
            change.face_uploaded
        );
        self.core
            .apply_user_change(&change.ids(), change.face_uploaded);
        if let Some(fleet) = &self.fleet {
            fleet.publish(change);
        }
    }

    fn connected(&self, up: bool) {
        self.core.events_connected(up);
    }
}

impl StreamTarget for MountChanges {
    fn apply(&self, change: &UserChange) {
        self.core
            .apply_user_change(&change.ids(), change.face_uploaded);
    }

    fn distrust_before(&self, at: std::time::SystemTime) {
        self.core.distrust_before(at);
    }

    fn position(&self) -> Option<String> {
        self.core.store()?.note(FLEET_POSITION_NOTE)
    }

    fn set_position(&self, at: &str) {
        if let Some(store) = self.core.store() {
            store.put_note(FLEET_POSITION_NOTE, at);
        }
    }
}

/// What lives as long as the mount.
struct Servers {
    core: Arc<FaceFs>,
    _events: Option<EventConnection>,
    _emulator: Option<Emulator>,
    _metrics: Option<MetricsServer>,
}

fn mount_hint(e: &std::io::Error) -> &'static str {
    match e.kind() {
        std::io::ErrorKind::NotFound => {
            " (is the fuse3 package installed? it provides fusermount3)"
        }
        std::io::ErrorKind::PermissionDenied => {
            " (non-root mounts need fusermount3 from the fuse3 package and /dev/fuse access; \
             non-root --allow-other/--allow-root need `user_allow_other` in /etc/fuse.conf)"
        }
        _ => "",
    }
}

/// A `stat` of the mount point must reach our root before we call it mounted.
fn wait_until_answering(mountpoint: &Path) -> Result<(), String> {
    let (tx, rx) = channel();
    let path: PathBuf = mountpoint.to_owned();
    std::thread::spawn(move || {
        let _ = tx.send(std::fs::metadata(&path));
    });
    match rx.recv_timeout(READY_TIMEOUT) {
        Ok(Ok(meta)) if meta.ino() == ROOT_INO => Ok(()),
        Ok(Ok(_)) => Err(format!(
            "{} does not show the new mount",
            mountpoint.display()
        )),
        Ok(Err(e)) => Err(format!(
            "the new mount at {} does not answer: {e}",
            mountpoint.display()
        )),
        Err(_) => Err(format!(
            "the new mount at {} did not answer within {READY_TIMEOUT:?}",
            mountpoint.display()
        )),
    }
}

/// Forks. The parent waits for the child's word and exits with it; the
/// child returns, in a new session, holding the pipe to report on.
fn detach() -> Result<Readiness, String> {
    let mut fds = [0; 2];
    // SAFETY: fds is a valid array of two ints.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(format!("pipe: {}", std::io::Error::last_os_error()));
    }
    // SAFETY: both descriptors were just created and are owned here alone.
    let (read_end, write_end) =
        unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    // SAFETY: no other thread exists yet, so the child inherits a consistent process.
    match unsafe { libc::fork() } {
        -1 => Err(format!("fork: {}", std::io::Error::last_os_error())),
        0 => {
            drop(read_end);
            // SAFETY: setsid has no preconditions; it detaches from the terminal's session.
            unsafe { libc::setsid() };
            Ok(Readiness::Parent(std::fs::File::from(write_end)))
        }
        _child => {
            drop(write_end);
            let mut answer = String::new();
            let _ = std::fs::File::from(read_end).read_to_string(&mut answer);
            let code = match answer.as_str() {
                "ok" => 0,
                "" => {
                    eprintln!("facefs: the background process exited before the mount was ready");
                    1
                }
                message => {
                    eprintln!(
                        "facefs: {}",
                        message.strip_prefix("error: ").unwrap_or(message)
                    );
                    1
                }
            };
            std::process::exit(code);
        }
    }
}

/// Points stdin, stdout and stderr at /dev/null once the parent has gone.
fn detach_stdio() {
    if let Ok(null) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
    {
        use std::os::fd::AsRawFd;
        for fd in 0..3 {
            // SAFETY: dup2 onto the standard descriptors, from a valid one.
            unsafe { libc::dup2(null.as_raw_fd(), fd) };
        }
    }
}

/// Blocks the termination signals (and the user signals, whose default
/// would kill facefs) in this thread and all it starts, so that one thread
/// can take them with `sigwait`.
fn block_signals() -> std::io::Result<libc::sigset_t> {
    // SAFETY: sigset operations on a local set; pthread_sigmask on this thread.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for signal in [
            libc::SIGINT,
            libc::SIGTERM,
            libc::SIGHUP,
            libc::SIGUSR1,
            libc::SIGUSR2,
        ] {
            libc::sigaddset(&mut set, signal);
        }
        match libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) {
            0 => Ok(set),
            err => Err(std::io::Error::from_raw_os_error(err)),
        }
    }
}

fn wait_for_signals(set: libc::sigset_t, events: Sender<MountEvent>) {
    loop {
        let mut signal = 0;
        // SAFETY: set holds signals blocked in every thread; signal is a valid out pointer.
        if unsafe { libc::sigwait(&set, &mut signal) } != 0 {
            continue;
        }
        // Their default would kill facefs and leave a dead mount; they have no use here.
        if matches!(signal, libc::SIGUSR1 | libc::SIGUSR2) {
            log::info!("signal {signal} (SIGUSR1 or SIGUSR2): ignored, facefs goes on serving");
            continue;
        }
        if events.send(MountEvent::Signal(signal)).is_err() {
            return;
        }
    }
}
