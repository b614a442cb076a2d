//! Harness for real-mount tests: an emulator in this process, the facefs
//! binary mounted over it, and cleanup that runs even when a test fails.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use facefs::api::IdKind;
use facefs::emulator::tenant::TenantSpec;
use facefs::emulator::{Emulator, EmulatorConfig};

pub const FACEFS: &str = env!("CARGO_BIN_EXE_facefs");

/// A fresh directory under the system temp dir, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(label: &str) -> TempDir {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        let path =
            std::env::temp_dir().join(format!("facefs-test-{}-{n}-{label}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).unwrap();
        TempDir(path)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        // Only after any mount inside is gone: remove_dir_all does not cross into it.
        if !is_mounted(&self.0) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

pub fn is_mounted(path: &Path) -> bool {
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    let path = path.to_string_lossy();
    mounts.lines().any(|l| l.split(' ').nth(1) == Some(&*path))
}

pub fn emulator(config: EmulatorConfig) -> Emulator {
    Emulator::start(config).expect("start the emulator")
}

pub fn small_tenant(users: usize) -> EmulatorConfig {
    EmulatorConfig {
        tenant: TenantSpec {
            users,
            ..TenantSpec::default()
        },
        ..EmulatorConfig::default()
    }
}

/// The facefs command for this emulator, credentials in place, secret in the environment.
pub fn facefs_command(emu: &Emulator, mountpoint: &Path) -> Command {
    let mut cmd = Command::new(FACEFS);
    cmd.arg(mountpoint)
        .arg("--base-url")
        .arg(emu.base_url())
        .arg("--app-id")
        .arg(&emu.config().app_id)
        .env("FEISHU_APP_SECRET", &emu.config().app_secret)
        .env("FACEFS_LOG", "debug")
        .stdin(Stdio::null());
    cmd
}

/// facefs mounted in the foreground as a child; unmounted and reaped on drop.
pub struct Mount {
    pub dir: TempDir,
    pub child: Option<Child>,
    pub log: PathBuf,
}

impl Mount {
    pub fn start(emu: &Emulator, extra: &[&str]) -> Mount {
        Mount::start_with_env(emu, extra, &[])
    }

    pub fn start_with_env(emu: &Emulator, extra: &[&str], env: &[(&str, &str)]) -> Mount {
        Mount::start_wrapped(emu, &[], extra, env)
    }

    /// facefs started through `wrapper` (a program that execs its
    /// arguments, e.g. `setpriv --regid=N --`), so the child is facefs itself.
    pub fn start_wrapped(
        emu: &Emulator,
        wrapper: &[&str],
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Mount {
        let dir = TempDir::new("mnt");
        let log = dir.path().with_extension("log");
        let mountpoint = dir.path().to_owned();
        let stderr = std::fs::File::create(&log).unwrap();
        let mut command = facefs_command(emu, &mountpoint);
        if let Some((program, args)) = wrapper.split_first() {
            let direct = command;
            command = Command::new(program);
            command
                .args(args)
                .arg(direct.get_program())
                .args(direct.get_args());
            for (key, value) in direct.get_envs() {
                if let Some(value) = value {
                    command.env(key, value);
                }
            }
            command.stdin(Stdio::null());
        }
        command
            .arg("-f")
            .args(extra)
            .envs(env.iter().copied())
            .stderr(stderr)
            .stdout(Stdio::null());
        let child = command.spawn().unwrap();
        let mut mount = Mount {
            dir,
            child: Some(child),
            log,
        };
        mount.wait_ready();
        mount
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if is_mounted(self.path()) {
                return;
            }
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!(
                    "facefs exited with {status} before mounting:\n{}",
                    self.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("facefs did not mount within 20 s:\n{}", self.log_text());
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn join(&self, rel: &str) -> PathBuf {
        self.path().join(rel)
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Unmounts with `umount`, as an admin would, and returns how facefs exited.
    pub fn unmount_and_wait(&mut self) -> std::process::ExitStatus {
        let out = Command::new("umount").arg(self.path()).output().unwrap();
        assert!(
            out.status.success(),
            "umount: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        wait_with_timeout(self.child.as_mut().unwrap(), Duration::from_secs(20))
    }

    /// Sends `signal` and returns how facefs exited.
    pub fn signal_and_wait(&mut self, signal: i32) -> std::process::ExitStatus {
        let mut child = self.child.take().unwrap();
        // SAFETY: kill on our own child's pid.
        unsafe { libc::kill(child.id() as i32, signal) };
        wait_with_timeout(&mut child, Duration::from_secs(20))
    }
}

pub fn wait_with_timeout(child: &mut Child, limit: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("process {} did not exit within {limit:?}", child.id());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Unmounts whatever is at `path`, lazily if it is busy or dead.
pub fn force_unmount(path: &Path) {
    if is_mounted(path) {
        let ok = Command::new("umount")
            .arg(path)
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            let _ = Command::new("umount")
                .arg("-l")
                .arg(path)
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// Unmounts `path` on drop, for tests that mount other than through [`Mount`].
pub struct Unmount<'a>(pub &'a Path);

impl Drop for Unmount<'_> {
    fn drop(&mut self) {
        force_unmount(self.0);
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        force_unmount(self.path());
        if let Some(mut child) = self.child.take() {
            let deadline = Instant::now() + Duration::from_secs(10);
            while child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_file(&self.log);
    }
}

/// Runs a program and returns its output; panics only if it cannot start.
pub fn run(program: &str, args: &[&dyn AsRef<std::ffi::OsStr>]) -> Output {
    Command::new(program)
        .args(args.iter().map(|a| a.as_ref()))
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run {program}: {e} (the README's test command installs it)")
        })
}

pub fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

pub fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// A port free on loopback now (for a server the test has facefs start).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A line of /proc/PID/status in KiB: `VmRSS` now, `VmHWM` the peak.
pub fn memory_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status
        .lines()
        .find(|l| l.split(':').next() == Some(field))
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"));
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// The mount's /metrics text, from `--metrics-listen PORT`.
pub fn scrape_metrics(port: u16) -> String {
    reqwest::blocking::get(format!("http://127.0.0.1:{port}/metrics"))
        .unwrap()
        .text()
        .unwrap()
}

/// The value of one series in Prometheus text.
pub fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| {
            l.strip_prefix(series)
                .and_then(|rest| rest.strip_prefix(' '))
        })
        .unwrap_or_else(|| panic!("no {series} in\n{text}"))
        .parse()
        .unwrap()
}

/// A real `redis-server` on a free loopback port, stopped on drop (or by
/// `kill`, for tests of a Redis that dies). No disk persistence: a
/// restart loses everything, as a restarted cache would.
pub struct RedisServer {
    pub port: u16,
    child: Option<Child>,
    extra: Vec<String>,
    /// Its working directory: a replica writes the master's data there
    /// (`dump.rdb`), and a server started elsewhere must not load it.
    dir: TempDir,
}

impl RedisServer {
    pub fn start(extra: &[&str]) -> RedisServer {
        let mut server = RedisServer {
            port: free_port(),
            child: None,
            extra: extra.iter().map(|s| s.to_string()).collect(),
            dir: TempDir::new("redis"),
        };
        server.restart();
        server
    }

    /// Its URL, with the password of `--requirepass` if it was given one.
    pub fn url(&self) -> String {
        let password = self
            .extra
            .iter()
            .position(|a| a == "--requirepass")
            .and_then(|i| self.extra.get(i + 1));
        match password {
            Some(p) => format!("redis://:{p}@127.0.0.1:{}/0", self.port),
            None => format!("redis://127.0.0.1:{}/0", self.port),
        }
    }

    /// Starts it (again) on its port and waits until it answers PING.
    pub fn restart(&mut self) {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .args(&self.extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start redis-server (the README's test command installs it)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.query(&["PING"]).is_none() {
            assert!(
                Instant::now() < deadline,
                "redis-server did not answer within 10 s"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL, as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// One command; `None` if Redis did not answer.
    pub fn query(&self, args: &[&str]) -> Option<redis::Value> {
        query_at(&self.url(), args)
    }

    /// A connection of its own, for commands on binary values.
    pub fn connection(&self) -> redis::Connection {
        redis::Client::open(self.url())
            .and_then(|c| c.get_connection_with_timeout(Duration::from_secs(2)))
            .expect("a connection to the test's redis-server")
    }

    /// Whether the server is stalled (a `DEBUG SLEEP` holds it): a PING on
    /// a new connection gets no answer within 100 ms.
    pub fn is_stalled(&self) -> bool {
        use std::io::{Read, Write};
        let Ok(mut socket) = std::net::TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let _ = socket.set_read_timeout(Some(Duration::from_millis(100)));
        if socket.write_all(b"PING\r\n").is_err() {
            return false;
        }
        let mut answer = [0u8; 7];
        socket.read(&mut answer).is_err()
    }

    /// The integer value of `key` (0 if missing).
    pub fn get_int(&self, key: &str) -> i64 {
        match self.query(&["GET", key]) {
            Some(redis::Value::BulkString(bytes)) => {
                String::from_utf8_lossy(&bytes).parse().unwrap_or(0)
            }
            _ => 0,
        }
    }

    /// Every key matching `pattern`.
    pub fn keys(&self, pattern: &str) -> Vec<String> {
        match self.query(&["KEYS", pattern]) {
            Some(redis::Value::Array(keys)) => keys
                .into_iter()
                .filter_map(|k| match k {
                    redis::Value::BulkString(b) => String::from_utf8(b).ok(),
                    _ => None,
                })
                .collect(),
            _ => Vec::new(),
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A master, its replica and three sentinels (quorum 2) watching them as
/// `facefs`: real `redis-server` and `redis-sentinel` processes on free
/// loopback ports, stopped on drop.
pub struct SentinelSet {
    pub master: RedisServer,
    pub replica: RedisServer,
    pub sentinel_ports: Vec<u16>,
    sentinels: Vec<Child>,
    /// The killed master's port, held: a Redis another test starts there
    /// would be taken for the old master come back, and made a replica.
    held_port: Option<std::net::TcpListener>,
    _dir: TempDir,
}

impl SentinelSet {
    pub const MASTER: &'static str = "facefs";

    /// Starts them and waits until each sentinel knows the replica and
    /// the other two, so that a failover can be agreed on.
    pub fn start() -> SentinelSet {
        let master = RedisServer::start(&[]);
        let replica = RedisServer::start(&["--replicaof", "127.0.0.1", &master.port.to_string()]);
        let dir = TempDir::new("sentinels");
        let (mut sentinel_ports, mut sentinels) = (Vec::new(), Vec::new());
        for n in 0..3 {
            let port = free_port();
            // Sentinel rewrites its configuration file: one each.
            let conf = dir.path().join(format!("sentinel-{n}.conf"));
            std::fs::write(
                &conf,
                format!(
                    "port {port}\nbind 127.0.0.1\ndaemonize no\ndir {}\n\
                     sentinel monitor {name} 127.0.0.1 {master} 2\n\
                     sentinel down-after-milliseconds {name} 1000\n\
                     sentinel failover-timeout {name} 10000\n\
                     sentinel parallel-syncs {name} 1\n",
                    dir.path().display(),
                    name = Self::MASTER,
                    master = master.port,
                ),
            )
            .unwrap();
            let child = Command::new("redis-sentinel")
                .arg(&conf)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("start redis-sentinel (the README's test command installs it)");
            sentinels.push(child);
            sentinel_ports.push(port);
        }
        let set = SentinelSet {
            master,
            replica,
            sentinel_ports,
            sentinels,
            held_port: None,
            _dir: dir,
        };
        wait_until(
            Duration::from_secs(30),
            "the sentinels know each other and the replica",
            || {
                set.sentinel_ports.iter().all(|&port| {
                    let count = |what: &str| match sentinel_query(
                        port,
                        &["SENTINEL", what, Self::MASTER],
                    ) {
                        Some(redis::Value::Array(items)) => items.len(),
                        _ => 0,
                    };
                    count("replicas") == 1 && count("sentinels") == 2
                })
            },
        );
        set
    }

    /// The URL facefs is given.
    pub fn url(&self) -> String {
        let hosts: Vec<String> = self
            .sentinel_ports
            .iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect();
        format!("redis+sentinel://{}/{}", hosts.join(","), Self::MASTER)
    }

    /// SIGKILL of the master, whose port stays taken while the sentinels live.
    pub fn kill_master(&mut self) {
        self.master.kill();
        self.held_port = std::net::TcpListener::bind(("127.0.0.1", self.master.port)).ok();
    }

    /// The master's port, as the first sentinel that answers says.
    pub fn master_port(&self) -> Option<u16> {
        self.sentinel_ports.iter().find_map(|&port| {
            match sentinel_query(port, &["SENTINEL", "get-master-addr-by-name", Self::MASTER])? {
                redis::Value::Array(items) => match items.get(1)? {
                    redis::Value::BulkString(b) => String::from_utf8_lossy(b).parse().ok(),
                    _ => None,
                },
                _ => None,
            }
        })
    }
}

impl Drop for SentinelSet {
    fn drop(&mut self) {
        for child in &mut self.sentinels {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// One command to the sentinel on `port`; `None` if it did not answer.
fn sentinel_query(port: u16, args: &[&str]) -> Option<redis::Value> {
    query_at(&format!("redis://127.0.0.1:{port}"), args)
}

/// One command to the server at `url`; `None` if it did not answer.
fn query_at(url: &str, args: &[&str]) -> Option<redis::Value> {
    let client = redis::Client::open(url).ok()?;
    let mut connection = client
        .get_connection_with_timeout(Duration::from_millis(500))
        .ok()?;
    let mut cmd = redis::cmd(args[0]);
    for arg in &args[1..] {
        cmd.arg(*arg);
    }
    cmd.query(&mut connection).ok()
}

/// A Redis that misbehaves, on a free loopback port, for as long as it lives.
pub enum HostileRedis {
    /// Answers every command with a reply announcing 2 GB and sends bytes
    /// as fast as the reader takes them.
    Flood,
    /// Passes everything to and from a real Redis, but its replies one byte
    /// every `every`.
    Trickle { upstream: u16, every: Duration },
}

impl HostileRedis {
    /// Starts serving; returns the port. The threads end with the test process.
    pub fn serve(self) -> u16 {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let hostile = std::sync::Arc::new(self);
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                let hostile = hostile.clone();
                std::thread::spawn(move || hostile.answer(client));
            }
        });
        port
    }

    fn answer(&self, mut client: std::net::TcpStream) {
        use std::io::{Read, Write};
        match self {
            HostileRedis::Flood => {
                let mut command = [0u8; 65536];
                let zeros = vec![0u8; 1 << 16];
                if matches!(client.read(&mut command), Ok(n) if n > 0)
                    && client.write_all(b"$2000000000\r\n").is_ok()
                {
                    while client.write_all(&zeros).is_ok() {}
                }
            }
            HostileRedis::Trickle { upstream, every } => {
                let Ok(server) = std::net::TcpStream::connect(("127.0.0.1", *upstream)) else {
                    return;
                };
                let (mut to_server, mut from_client) =
                    (server.try_clone().unwrap(), client.try_clone().unwrap());
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut from_client, &mut to_server);
                });
                let mut from_server = server;
                let mut byte = [0u8; 1];
                while matches!(from_server.read(&mut byte), Ok(1)) {
                    std::thread::sleep(*every);
                    if client.write_all(&byte).is_err() {
                        return;
                    }
                }
            }
        }
    }
}

/// Polls `done` until it holds; fails the test after `limit`.
pub fn wait_until(limit: Duration, what: &str, done: impl Fn() -> bool) {
    let deadline = Instant::now() + limit;
    while !done() {
        assert!(Instant::now() < deadline, "not within {limit:?}: {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Whether `bytes` hold the start of a JPEG as the emulator serves them
/// (its first 12 bytes: the SOI and the JFIF header). Three bytes
/// (`FF D8 FF`) would not do: sealed bytes hold them by chance about once
/// in 16 MB, so a store of faces would now and then seem to hold one.
pub fn holds_a_jpeg(emu: &Emulator, bytes: &[u8]) -> bool {
    let id = &emu.ids_with_faces(IdKind::OpenId)[0];
    let face = emu.face(IdKind::OpenId, id, false).unwrap();
    assert!(
        face.starts_with(b"\xff\xd8\xff"),
        "the emulator's faces are JPEGs"
    );
    let start = &face[..12];
    bytes.windows(start.len()).any(|w| w == start)
}
