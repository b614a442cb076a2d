//! A fleet of mounts of one tenant, coordinated through Redis (`--redis`).
//!
//! Redis is an aid, never a dependency: every call is bounded by
//! `--redis-timeout`, and when Redis is down, slow, full or restarted, each
//! mount goes on alone (its share of the rate limit, its own caches) and
//! rejoins when Redis answers again. Both changes are logged once and
//! counted.
//!
//! Keys live under `facefs:{<prefix>:<tenant>}:` (the tenant is a hash of
//! the API origin and the app id), so tenants and deployments never mix.

mod alone;
pub mod client;
pub mod events;
pub mod metrics;
pub mod rate;
pub mod shared;

use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use self::client::target::Target;
use self::client::{sentinel, Address, AddressError, ClientError, Connection, Place};
use self::metrics::FleetMetrics;
use crate::api::secret::Secret;
use crate::seal::{NotOpened, Sealer};

/// Connections to Redis at most: the threads of a busy mount ask at once,
/// and one connection would make them queue past `--redis-timeout`.
const CONNECTIONS: usize = 8;

/// After a failure, Redis is not asked again for this long: a reader must
/// not wait out a timeout on every request while Redis is down.
pub(super) const RETRY_AFTER: Duration = Duration::from_secs(2);

pub struct FleetConfig {
    /// `redis://` or `rediss://`; may hold a password, so it is a secret.
    pub url: Secret,
    /// PEM certificates of the CAs trusted for `rediss://` instead of the
    /// public roots (`--redis-ca-file`).
    pub ca_file: Option<std::path::PathBuf>,
    /// `--redis-prefix`, to keep deployments on one Redis apart.
    pub prefix: Option<String>,
    /// The API origin and app id: whose budget and faces these are.
    pub tenant: String,
    /// Bound on each command, connecting included.
    pub timeout: Duration,
    /// The tenant's keys: what the fleet keeps in Redis is sealed with them.
    pub sealer: Arc<Sealer>,
}

pub struct Fleet {
    target: Target,
    /// For a Sentinel target: what is known of the master.
    master: Mutex<Master>,
    /// For `rediss://`.
    tls: Option<Arc<rustls::ClientConfig>>,
    /// Where Redis is, for logs (never the URL: it may hold the password).
    server: String,
    keys: String,
    timeout: Duration,
    pool: Pool,
    /// Lock order: a pool slot, then `health`, then `master`; `changes`
    /// alone. None is held across I/O but a slot's (its connection's).
    health: Mutex<Health>,
    /// Called (outside every other lock) each time Redis fails after
    /// answering (`false`) or answers after failing (`true`).
    changes: Mutex<Vec<ChangeHook>>,
    /// This mount's name in the fleet (its stream entries, its membership).
    instance: String,
    pub metrics: FleetMetrics,
    pub(crate) sealer: Arc<Sealer>,
}

/// Told whether Redis answers (`true`) or fails (`false`), at each change.
type ChangeHook = Box<dyn Fn(bool) + Send + Sync>;

/// This mount's connections to Redis.
struct Pool {
    /// Each with the generation it was opened in.
    slots: Vec<Mutex<Option<(u64, Connection)>>>,
    /// Which connection a caller that finds none free waits for.
    next: std::sync::atomic::AtomicUsize,
    /// Bumped when a connection breaks: the server likely died or
    /// restarted (or a failover moved the master), so every connection
    /// opened before is dropped at its next use instead of failing then —
    /// one by one, each failure would send the mount alone for 2 s again.
    generation: std::sync::atomic::AtomicU64,
}

/// A Sentinel target's master, as this mount last knew it.
#[derive(Default)]
struct Master {
    /// Found last; forgotten when a connection breaks (the sentinels are
    /// asked again rather than a hung old master's ROLE).
    found: Option<Address>,
    /// Which sentinel named it (asked first next time).
    named_by: usize,
    /// Logged last: the log says only when the master changes.
    logged: Option<Place>,
}

struct Health {
    /// Since when Redis has been failing, if it is.
    down_since: Option<Instant>,
    /// While down: not asked again before this.
    next_try: Instant,
}

/// Why a Redis URL cannot be used; never quoting it (it may hold the password).
#[derive(Debug, thiserror::Error)]
pub enum RedisUrlError {
    #[error(
        "the Redis URL cannot be read ({0}): write it as redis://host:port/db or rediss://..."
    )]
    Unreadable(#[source] AddressError),
    #[error("refusing plaintext redis:// to {0}: faces and the password would cross the network in clear; use rediss:// (Redis with TLS), or rediss+sentinel://")]
    Plaintext(String),
    #[error("cannot use --redis-ca-file {path}: {why}; give a file of PEM certificates (-----BEGIN CERTIFICATE-----)")]
    CaFile { path: String, why: String },
}

/// Checks a Redis URL: `rediss://` anywhere, plaintext `redis://` only to
/// loopback (the fleet will carry face bytes; a password would cross in
/// clear). Errors name the fix, never the password.
pub fn parse_url(url: &str) -> Result<Target, RedisUrlError> {
    let target = Target::parse(url).map_err(RedisUrlError::Unreadable)?;
    for address in target.addresses() {
        plaintext_only_to_loopback(address)?;
    }
    Ok(target)
}

fn plaintext_only_to_loopback(address: &Address) -> Result<(), RedisUrlError> {
    match &address.place {
        Place::Tcp { host, .. } if !address.tls && !is_loopback(host) => {
            Err(RedisUrlError::Plaintext(host.clone()))
        }
        _ => Ok(()),
    }
}

fn is_loopback(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost")
        || host
            .trim_matches(['[', ']'])
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Whether a Redis URL carries a password (it must then not come from argv).
pub fn has_password(url: &str) -> bool {
    Target::parse(url).is_ok_and(|t| t.has_password())
}

impl Fleet {
    /// Prepares the fleet's client; Redis need not be up (the mount goes on alone until it is).
    pub fn new(config: FleetConfig) -> Result<Fleet, RedisUrlError> {
        let target = parse_url(config.url.expose())?;
        let prefix = config.prefix.map(|p| format!("{p}:")).unwrap_or_default();
        Ok(Fleet {
            tls: match target.tls() {
                true => Some(client::tls_config(config.ca_file.as_deref())?),
                false => None,
            },
            server: target.to_string(),
            target,
            master: Mutex::new(Master::default()),
            // One hash tag for every key: a Redis Cluster keeps them in one
            // slot, as the scripts and transactions need.
            keys: format!(
                "facefs:{{{prefix}{:016x}}}:",
                crate::hash::digest(config.tenant.as_bytes())
            ),
            timeout: config.timeout,
            pool: Pool {
                slots: (0..CONNECTIONS).map(|_| Mutex::new(None)).collect(),
                next: std::sync::atomic::AtomicUsize::new(0),
                generation: std::sync::atomic::AtomicU64::new(0),
            },
            instance: format!(
                "{:x}-{:x}",
                std::process::id(),
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap_or_default()
                    .as_nanos()
            ),
            health: Mutex::new(Health {
                down_since: None,
                next_try: Instant::now(),
            }),
            changes: Mutex::new(Vec::new()),
            metrics: FleetMetrics::default(),
            sealer: config.sealer,
        })
    }

    /// The fleet's key for `name`.
    pub fn key(&self, name: &str) -> String {
        format!("{}{name}", self.keys)
    }

    /// This mount's name in the fleet.
    pub fn instance(&self) -> &str {
        &self.instance
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Whether the last call to Redis failed.
    pub fn is_down(&self) -> bool {
        self.health.lock().down_since.is_some()
    }

    /// Runs `command` on a connection, all of it (waiting for a free
    /// connection, connecting, the command) within the timeout; `None` if
    /// Redis failed (or failed a moment ago), and the caller goes on alone.
    pub fn run<T>(
        &self,
        command: impl FnOnce(&mut Connection) -> Result<T, ClientError>,
    ) -> Option<T> {
        let deadline = Instant::now() + self.timeout;
        {
            let health = self.health.lock();
            if health.down_since.is_some() && Instant::now() < health.next_try {
                return None;
            }
        }
        // A free connection, else one freed within the timeout: callers
        // queueing for longer mean Redis is slow, and do not wait on.
        let mut slot = match self.pool.slots.iter().find_map(|c| c.try_lock()) {
            Some(slot) => slot,
            None => {
                let turn = self
                    .pool
                    .next
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Some(slot) = self.pool.slots[turn % CONNECTIONS].try_lock_until(deadline)
                else {
                    log::debug!(
                        "fleet: every connection to Redis busy for {:?}",
                        self.timeout
                    );
                    return None;
                };
                slot
            }
        };
        use std::sync::atomic::Ordering::Relaxed;
        let generation = self.pool.generation.load(Relaxed);
        if slot
            .as_ref()
            .is_some_and(|(opened, _)| *opened != generation)
        {
            *slot = None;
        }
        let result = match slot.as_mut() {
            Some((_, connection)) => {
                connection.set_deadline(deadline);
                command(connection)
            }
            None => match self.open(deadline) {
                Ok(connection) => command(&mut slot.insert((generation, connection)).1),
                Err(e) => Err(e),
            },
        };
        match result {
            Ok(value) => {
                self.succeeded();
                Some(value)
            }
            Err(e) => {
                // A refusal of the command itself (a script error, OOM)
                // leaves the connection usable; anything else drops it,
                // and the sentinels are asked where the master is now (a
                // hung old master would spend every deadline on its ROLE).
                if e.breaks_connection() {
                    *slot = None;
                    self.pool.generation.fetch_add(1, Relaxed);
                    self.master.lock().found = None;
                }
                drop(slot);
                self.failed(&e);
                None
            }
        }
    }

    /// A connection of its own (for blocking reads), connected within the
    /// timeout; its user sets a deadline before each command. Its failures
    /// are its user's to handle: they say nothing about whether readers
    /// should go on alone (the next request finds that out).
    pub fn dedicated(&self) -> Result<Connection, ClientError> {
        self.open(Instant::now() + self.timeout)
    }

    /// A new connection: to the server, or to the master the sentinels
    /// name (the one found last while it still says it is the master).
    fn open(&self, deadline: Instant) -> Result<Connection, ClientError> {
        let tls = self.tls.as_ref();
        let set = match &self.target {
            Target::Server(address) => return Connection::open(address, tls, deadline),
            Target::Sentinel(set) => set,
        };
        let (known, first) = {
            let master = self.master.lock();
            (master.found.clone(), master.named_by)
        };
        if let Some(master) = known {
            match sentinel::open_master(&master, tls, deadline) {
                Ok(connection) => return Ok(connection),
                Err(e) => log::debug!("fleet: the master at {master}: {e}; asking the sentinels"),
            }
        }
        // A sentinel's answer may not send the password or faces in clear
        // off this machine: refused before connecting.
        let in_clear = |master: &Address| {
            plaintext_only_to_loopback(master).map_err(|_| {
                ClientError::Unexpected(
                    "the sentinels name a master off this machine: use rediss+sentinel://",
                )
            })
        };
        let (connection, master, which) =
            sentinel::connect_to_master(set, first, tls, deadline, &in_clear)?;
        let mut held = self.master.lock();
        let changed = held.logged.as_ref() != Some(&master.place);
        held.logged = Some(master.place.clone());
        held.found = Some(master.clone());
        held.named_by = which;
        drop(held);
        if changed {
            log::info!(
                "Redis: the sentinels name {master} as the master of {}",
                self.server
            );
        }
        Ok(connection)
    }

    /// A value read from Redis did not open: counted, and logged at the
    /// 1st, 2nd, 4th, 8th... time, so that a flood cannot fill the log.
    pub(crate) fn rejected(&self, why: &NotOpened) {
        self.metrics.rejected.inc();
        let count = self.metrics.rejected.get();
        if count.is_power_of_two() {
            log::warn!(
                "Redis at {}: {why}; read as a miss, fetched again (rejected so far: {count}). If every value fails, the mounts of this fleet use different app secrets; otherwise someone writes to Redis",
                self.server
            );
        }
    }

    /// Has `hook` called each time Redis fails after answering (`false`)
    /// or answers after failing (`true`).
    pub fn when_changed(&self, hook: impl Fn(bool) + Send + Sync + 'static) {
        self.changes.lock().push(Box::new(hook));
    }

    fn tell(&self, up: bool) {
        for hook in self.changes.lock().iter() {
            hook(up);
        }
    }

    fn succeeded(&self) {
        let mut health = self.health.lock();
        self.metrics.redis_up.set(1);
        let Some(since) = health.down_since.take() else {
            return;
        };
        drop(health);
        log::info!(
            "Redis at {} answers again after {:?}: the fleet shares its budget again",
            self.server,
            since.elapsed()
        );
        self.tell(true);
    }

    fn failed(&self, e: &ClientError) {
        let mut health = self.health.lock();
        health.next_try = Instant::now() + RETRY_AFTER;
        self.metrics.redis_failures.inc();
        self.metrics.redis_up.set(0);
        if health.down_since.is_none() {
            health.down_since = Some(Instant::now());
            drop(health);
            log::warn!(
                "Redis at {} failed ({e}): this mount goes on alone (its share of --rate-limit, its own caches) and asks Redis again every {RETRY_AFTER:?}",
                self.server,
            );
            self.tell(false);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_plaintext_only_to_loopback() {
        assert!(parse_url("redis://127.0.0.1:6379/0").is_ok());
        assert!(parse_url("redis://localhost").is_ok());
        assert!(parse_url("rediss://redis.internal:6380").is_ok());
        let err = parse_url("redis://:hunter2@10.0.0.5:6379")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("rediss://") && !err.contains("hunter2"),
            "{err}"
        );
        let err = parse_url("http://x").unwrap_err().to_string();
        assert!(!err.is_empty());
        assert!(parse_url("redis+sentinel://127.0.0.1,localhost:26380/m").is_ok());
        assert!(parse_url("rediss+sentinel://10.0.0.1,10.0.0.2/m").is_ok());
        let err = parse_url("redis+sentinel://127.0.0.1,10.0.0.2/m").unwrap_err();
        assert!(err.to_string().contains("10.0.0.2"), "{err}");
        assert!(has_password("redis+sentinel://:pw@127.0.0.1/m"));
        assert!(has_password(
            "redis+sentinel://127.0.0.1/m?sentinel_password=x"
        ));
        assert!(has_password("redis://:hunter2@127.0.0.1"));
        assert!(has_password("rediss://user:pw@h"));
        assert!(!has_password("redis://127.0.0.1:6379/2"));
    }

    #[test]
    fn keys_are_per_tenant_and_prefix() {
        let fleet = |tenant: &str, prefix: Option<&str>| {
            Fleet::new(FleetConfig {
                url: Secret::new("redis://127.0.0.1:1"),
                ca_file: None,
                prefix: prefix.map(str::to_owned),
                tenant: tenant.into(),
                timeout: Duration::from_millis(100),
                sealer: Arc::new(Sealer::derive(b"secret", tenant)),
            })
            .unwrap()
        };
        let a = fleet("https://open.feishu.cn\ncli_a", None).key("rate");
        let b = fleet("https://open.feishu.cn\ncli_b", None).key("rate");
        let c = fleet("https://open.feishu.cn\ncli_a", Some("prod")).key("rate");
        assert_ne!(a, b);
        assert!(
            c.starts_with("facefs:{prod:") && c.ends_with("}:rate"),
            "{c}"
        );
        assert!(a.starts_with("facefs:") && !a.contains("cli_a"), "{a}");
    }

    #[test]
    fn a_dead_redis_is_not_asked_again_at_once() {
        // Nothing listens on port 1: refused at once; then not asked for RETRY_AFTER.
        let fleet = Fleet::new(FleetConfig {
            url: Secret::new("redis://127.0.0.1:1"),
            ca_file: None,
            prefix: None,
            tenant: "t".into(),
            timeout: Duration::from_millis(200),
            sealer: Arc::new(Sealer::derive(b"secret", "t")),
        })
        .unwrap();
        assert_eq!(fleet.run(|c| c.query(&client::Cmd::new("PING"))), None);
        assert!(fleet.health.lock().down_since.is_some());
        assert!(
            fleet.health.lock().next_try > Instant::now(),
            "the next callers do not ask"
        );
        let mut asked = false;
        assert_eq!(
            fleet.run(|c| {
                asked = true;
                c.query(&client::Cmd::new("PING"))
            }),
            None
        );
        assert!(!asked);
    }
}
