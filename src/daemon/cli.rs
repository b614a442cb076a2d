//! The command line: flags, their defaults and environment variables, and
//! their checking into [`Settings`] before anything is mounted.

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

use crate::api::http::parse_base_url;
use crate::api::secret::Secret;

/// Environment variable holding the app secret, for those who prefer it to a file.
pub const SECRET_ENV: &str = "FEISHU_APP_SECRET";
/// Where a Redis URL holding a password may come from, besides a file.
pub const REDIS_URL_ENV: &str = "FACEFS_REDIS_URL";
/// Where a data key may come from instead of `--data-key-file`.
pub const DATA_KEY_ENV: &str = "FACEFS_DATA_KEY";
/// A data key holds at least this many bytes.
const MIN_DATA_KEY: usize = 32;

#[derive(Parser, Debug)]
#[command(
    name = "facefs",
    version,
    about = "Mount a Feishu tenant's access-control faces as read-only files",
    after_help = "The app secret is read from --app-secret-file or from $FEISHU_APP_SECRET, never from a flag: \
                  command lines are visible to every user of the machine.\n\
                  Logs: set FACEFS_LOG (e.g. FACEFS_LOG=debug); unmount with `umount MOUNTPOINT`.\n\
                  Fill a --cache-dir store ahead of a backup: facefs prefetch MOUNTPOINT [open_id|union_id|user_id] (facefs prefetch -h tells more)."
)]
pub struct Cli {
    /// Where to mount: an existing, empty directory (unless --allow-non-empty is given).
    pub mountpoint: PathBuf,

    /// API origin; plaintext http:// is accepted only for loopback addresses.
    #[arg(
        long,
        env = "FACEFS_BASE_URL",
        default_value = "https://open.feishu.cn",
        value_name = "URL"
    )]
    pub base_url: String,

    /// The app's id (cli_...).
    #[arg(long, env = "FEISHU_APP_ID", value_name = "ID")]
    pub app_id: Option<String>,

    /// A file holding the app secret (or set $FEISHU_APP_SECRET).
    #[arg(long, value_name = "PATH")]
    pub app_secret_file: Option<PathBuf>,

    /// Stay attached to the terminal; without it, detach once the mount works.
    #[arg(short, long)]
    pub foreground: bool,

    /// Memory for cached face images, e.g. 64MiB, 1GiB.
    #[arg(long, value_name = "SIZE", default_value = "256MiB", value_parser = parse_size)]
    pub cache_size: u64,

    /// How long a fetched face or listing is trusted, e.g. 30s, 10m.
    #[arg(long, value_name = "DURATION", default_value = "10m", value_parser = parse_duration)]
    pub ttl: Duration,

    /// Keep downloaded faces and listings on disk here, across remounts and
    /// reboots (created 0700; one mount per tenant at a time).
    #[arg(long, value_name = "DIR")]
    pub cache_dir: Option<PathBuf>,

    /// Disk space the --cache-dir store may take for this tenant; the least
    /// recently used faces go first, and 5% of the file system stays free.
    #[arg(long, value_name = "SIZE", default_value = "2GiB", value_parser = parse_size)]
    pub cache_dir_size: u64,

    /// How long past its TTL a face may still be served when the API fails
    /// (outage, throttling, quota used up); 0 turns it off. Never listings.
    #[arg(long, value_name = "DURATION", default_value = "3d", value_parser = parse_duration)]
    pub max_stale: Duration,

    /// How long "does not exist" is remembered.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = parse_duration)]
    pub negative_ttl: Duration,

    /// Bound on one HTTP exchange with the API, connect to last byte.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_positive_duration)]
    pub request_timeout: Duration,

    /// No retry of a failed request starts after this long; an operation ends
    /// with EIO within this plus one request timeout.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = parse_duration)]
    pub retry_budget: Duration,

    /// Requests per second facefs sends at most, shared by all threads.
    #[arg(long, value_name = "N", default_value_t = 5.0, value_parser = parse_rate)]
    pub rate_limit: f64,

    /// Threads serving operations that wait for the API.
    #[arg(long, value_name = "N", default_value_t = 64, value_parser = clap::value_parser!(u16).range(1..=256))]
    pub max_parallel: u16,

    /// Append logs to this file (created with mode 0600); without it logs go
    /// to stderr in the foreground and to the system log (/dev/log) once detached.
    #[arg(long, value_name = "PATH")]
    pub log_file: Option<PathBuf>,

    /// Serve Prometheus metrics at http://ADDR/metrics; a bare port listens on 127.0.0.1.
    #[arg(long, value_name = "ADDR", value_parser = parse_listen)]
    pub metrics_listen: Option<String>,

    /// Let every user of the machine enter the mount (file modes still apply).
    /// Non-root users need `user_allow_other` in /etc/fuse.conf.
    #[arg(long, conflicts_with = "allow_root")]
    pub allow_other: bool,

    /// Let root enter the mount besides the mounting user.
    #[arg(long)]
    pub allow_root: bool,

    /// Owner of every file and directory [default: the mounting user].
    #[arg(long, value_name = "UID")]
    pub uid: Option<u32>,

    /// Group of every file and directory [default: the mounting user's group].
    #[arg(long, value_name = "GID")]
    pub gid: Option<u32>,

    /// Mode of the face files, in octal.
    #[arg(long, value_name = "MODE", default_value = "0400", value_parser = parse_mode)]
    pub file_mode: u16,

    /// Mode of the directories, in octal.
    #[arg(long, value_name = "MODE", default_value = "0700", value_parser = parse_mode)]
    pub dir_mode: u16,

    /// If the mount point is a dead mount left by a process that ended
    /// ("Transport endpoint is not connected"), detach it and mount afresh.
    #[arg(long)]
    pub recover: bool,

    /// Mount even if the mount point holds files (hidden while mounted;
    /// refused otherwise). `-o nonempty` says the same.
    #[arg(long, alias = "nonempty")]
    pub allow_non_empty: bool,

    /// Hear about changed faces as they happen over Feishu's event long
    /// connection (acs.user.updated_v1); needs the app subscribed to the event
    /// in long-connection mode. Without it, changes show after --ttl.
    #[arg(long)]
    pub events: bool,

    /// How long a face or listing is trusted, with --events, while the event
    /// connection has been up since it was fetched (the bound on a lost event).
    #[arg(long, value_name = "DURATION", default_value = "24h", value_parser = parse_duration)]
    pub ttl_with_events: Duration,

    /// Upload faces by writing them: creating or overwriting <id>.jpg (cp,
    /// shell redirection, dd, rsync, also in place) uploads it at close or
    /// rename. Off by default: a write changes what door readers recognise.
    #[arg(long)]
    pub writable: bool,

    /// Share one rate budget with the other mounts of this tenant through
    /// Redis (rediss://host:port, or redis:// to loopback). A URL with a
    /// password must come from --redis-url-file or $FACEFS_REDIS_URL.
    #[arg(long, value_name = "URL")]
    pub redis: Option<String>,

    /// A file holding the Redis URL (for one with a password).
    #[arg(long, value_name = "PATH", conflicts_with = "redis")]
    pub redis_url_file: Option<PathBuf>,

    /// For rediss:// to a Redis whose certificate a private CA signed: the
    /// CA's certificates (PEM), trusted instead of the public roots.
    #[arg(long, value_name = "PATH")]
    pub redis_ca_file: Option<PathBuf>,

    /// Keeps this deployment's keys apart from others on the same Redis.
    #[arg(long, value_name = "PREFIX")]
    pub redis_prefix: Option<String>,

    /// A file holding the key (at least 32 bytes) that seals the store and
    /// the fleet's values, instead of one derived from the app secret; every
    /// mount of a fleet needs the same (or set FACEFS_DATA_KEY).
    #[arg(long, value_name = "PATH")]
    pub data_key_file: Option<PathBuf>,

    /// Bound on each Redis command; past it the mount goes on alone.
    #[arg(long, value_name = "DURATION", default_value = "250ms", value_parser = parse_duration)]
    pub redis_timeout: Duration,

    /// With --redis, the API requests the whole fleet may send per calendar
    /// month (UTC); past it no request is sent (EIO, as the service's own
    /// quota would answer), before the tenant's quota is gone.
    #[arg(long, value_name = "N")]
    pub monthly_budget: Option<u64>,

    /// Serve built-in demo faces from an embedded emulator; needs no credentials.
    #[arg(long, conflicts_with_all = ["app_id", "app_secret_file"])]
    pub demo: bool,
}

/// Parses a size such as `64MiB`, `1G`, `500k` or `1048576`. `k`, `M`, `G`,
/// `T` and `KiB`..`TiB` are powers of 1024; `KB`..`TB` are powers of 1000.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let number: f64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a size; try 64MiB or 1GiB"))?;
    let multiplier: u64 = match unit.trim() {
        "" | "B" | "b" => 1,
        "k" | "K" | "KiB" | "kiB" => 1 << 10,
        "M" | "m" | "MiB" => 1 << 20,
        "G" | "g" | "GiB" => 1 << 30,
        "T" | "t" | "TiB" => 1 << 40,
        "KB" | "kB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        "TB" => 1_000_000_000_000,
        other => {
            return Err(format!(
                "unknown size unit {other:?} in {text:?}; use KiB, MiB, GiB (or k, M, G)"
            ))
        }
    };
    let bytes = number * multiplier as f64;
    if !bytes.is_finite() || bytes >= u64::MAX as f64 {
        return Err(format!("{text:?} is too large"));
    }
    Ok(bytes as u64)
}

/// Parses a duration such as `30s`, `10m`, `1h 30m` or `250ms`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text.trim())
        .map_err(|e| format!("{text:?} is not a duration ({e}); try 30s, 10m or 1h"))
}

fn parse_listen(text: &str) -> Result<String, String> {
    let text = text.trim();
    let addr = if text.parse::<u16>().is_ok() {
        format!("127.0.0.1:{text}")
    } else {
        text.to_owned()
    };
    addr.parse::<std::net::SocketAddr>()
        .map(|a| a.to_string())
        .map_err(|_| format!("{text:?} is not a listen address; give a port (9464) or ADDR:PORT (127.0.0.1:9464)"))
}

fn parse_mode(text: &str) -> Result<u16, String> {
    match u16::from_str_radix(text.trim().trim_start_matches("0o"), 8) {
        Ok(mode) if mode <= 0o777 => Ok(mode),
        _ => Err(format!(
            "{text:?} is not a file mode; give octal permission bits such as 0440"
        )),
    }
}

fn parse_rate(text: &str) -> Result<f64, String> {
    match text.trim().parse::<f64>() {
        Ok(rate) if rate.is_finite() && rate > 0.0 && rate <= 10_000.0 => Ok(rate),
        _ => Err(format!(
            "{text:?} is not a request rate; give requests per second, e.g. 5 or 50"
        )),
    }
}

fn parse_positive_duration(text: &str) -> Result<Duration, String> {
    match parse_duration(text)? {
        d if d.is_zero() => Err(format!("{text:?} must be longer than zero")),
        d => Ok(d),
    }
}

/// Where the faces come from.
pub enum Source {
    Api {
        base_url: reqwest::Url,
        app_id: String,
        app_secret: Secret,
    },
    Demo,
}

/// Who besides the mounting user may enter the mount.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    Owner,
    OwnerAndRoot,
    Everyone,
}

/// `--redis` and the options that go with it.
pub struct RedisSettings {
    pub url: Secret,
    /// `--redis-ca-file`: the CAs trusted for rediss:// instead of the public roots.
    pub ca_file: Option<PathBuf>,
    pub prefix: Option<String>,
    pub timeout: Duration,
    pub monthly_budget: Option<u64>,
}

/// The command line, checked: everything needed to mount, nothing missing.
pub struct Settings {
    pub mountpoint: PathBuf,
    pub source: Source,
    pub foreground: bool,
    pub cache_size: u64,
    pub ttl: Duration,
    pub negative_ttl: Duration,
    pub cache_dir: Option<PathBuf>,
    pub cache_dir_size: u64,
    pub max_stale: Duration,
    pub events: bool,
    pub ttl_with_events: Duration,
    pub writable: bool,
    pub redis: Option<RedisSettings>,
    pub request_timeout: Duration,
    pub retry_budget: Duration,
    pub rate_limit: f64,
    pub max_parallel: usize,
    pub access: Access,
    pub metrics_listen: Option<String>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub file_mode: u16,
    pub dir_mode: u16,
    /// `--data-key-file`: seals instead of the app secret.
    pub data_key: Option<Secret>,
}

impl Cli {
    /// Checks the flags and reads the secret. Errors name the fix.
    pub fn into_settings(self) -> Result<Settings, String> {
        let mountpoint = crate::daemon::mountpoint::check(
            &self.mountpoint,
            crate::daemon::mountpoint::Allow {
                recover: self.recover,
                non_empty: self.allow_non_empty,
            },
        )?;
        let source = if self.demo {
            Source::Demo
        } else {
            let base_url =
                parse_base_url(&self.base_url).map_err(|e| super::logging::with_causes(&e))?;
            let app_id = self
                .app_id
                .filter(|id| !id.trim().is_empty())
                .ok_or("no app id: pass --app-id or set FEISHU_APP_ID (or try --demo)")?;
            let app_secret = read_secret(self.app_secret_file.as_deref())?;
            Source::Api {
                base_url,
                app_id: app_id.trim().to_owned(),
                app_secret,
            }
        };
        Ok(Settings {
            mountpoint,
            source,
            foreground: self.foreground,
            cache_size: self.cache_size,
            ttl: self.ttl,
            negative_ttl: self.negative_ttl,
            cache_dir: self
                .cache_dir
                .map(|dir| std::path::absolute(&dir).unwrap_or(dir)),
            cache_dir_size: self.cache_dir_size,
            max_stale: self.max_stale,
            events: self.events,
            // Without the connection nothing vouches for longer than --ttl.
            ttl_with_events: if self.events {
                self.ttl_with_events.max(self.ttl)
            } else {
                self.ttl
            },
            writable: self.writable,
            redis: match redis_url(self.redis, self.redis_url_file.as_deref())? {
                Some(url) => Some(RedisSettings {
                    url,
                    ca_file: self.redis_ca_file,
                    prefix: self.redis_prefix,
                    timeout: self.redis_timeout,
                    monthly_budget: self.monthly_budget,
                }),
                None if self.monthly_budget.is_some() => {
                    return Err("--monthly-budget is counted in Redis: give --redis too".into())
                }
                None => None,
            },
            request_timeout: self.request_timeout,
            retry_budget: self.retry_budget,
            rate_limit: self.rate_limit,
            access: match (self.allow_other, self.allow_root) {
                (true, _) => Access::Everyone,
                (false, true) => Access::OwnerAndRoot,
                (false, false) => Access::Owner,
            },
            metrics_listen: self.metrics_listen,
            uid: self.uid,
            gid: self.gid,
            file_mode: self.file_mode,
            dir_mode: self.dir_mode,
            data_key: data_key(self.data_key_file.as_deref())?,
            max_parallel: usize::from(self.max_parallel),
        })
    }
}

fn read_secret(file: Option<&std::path::Path>) -> Result<Secret, String> {
    read_private("the app secret", file, SECRET_ENV)?.ok_or_else(|| {
        format!("no app secret: pass --app-secret-file PATH or set {SECRET_ENV} (or try --demo)")
    })
}

/// `--data-key-file` or $FACEFS_DATA_KEY, if given: long enough to be a key.
fn data_key(file: Option<&std::path::Path>) -> Result<Option<Secret>, String> {
    let key = read_private("the data key", file, DATA_KEY_ENV)?;
    if key
        .as_ref()
        .is_some_and(|k| k.expose().len() < MIN_DATA_KEY)
    {
        return Err(format!(
            "the data key is shorter than {MIN_DATA_KEY} bytes; make one with: head -c 32 /dev/urandom | base64 > FILE"
        ));
    }
    Ok(key)
}

/// A secret from `file` or else the environment variable `env` (which is
/// then wiped and removed); `None` if neither is given.
fn read_private(
    what: &str,
    file: Option<&std::path::Path>,
    env: &str,
) -> Result<Option<Secret>, String> {
    // Held as a Secret from the first byte, so that this copy is wiped too.
    let text = Secret::new(match file {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| format!("cannot read {what} from {}: {e}", path.display()))?;
            warn_if_shared(path, what);
            text
        }
        None => match super::hardening::take_env_secret(env) {
            Some(text) => text,
            None => return Ok(None),
        },
    });
    let secret = text.expose().trim();
    if secret.is_empty() {
        return Err(format!("{what} is empty"));
    }
    Ok(Some(Secret::new(secret)))
}

/// `--redis`, `--redis-url-file` or $FACEFS_REDIS_URL, checked; a URL with
/// a password only from the file or the environment.
fn redis_url(
    flag: Option<String>,
    file: Option<&std::path::Path>,
) -> Result<Option<Secret>, String> {
    if let Some(url) = flag {
        if crate::fleet::has_password(&url) {
            return Err(format!(
                "the Redis URL holds a password, and command lines are readable by all: put it in a file (--redis-url-file PATH, mode 0600) or in ${REDIS_URL_ENV}"
            ));
        }
        crate::fleet::parse_url(&url).map_err(|e| e.to_string())?;
        return Ok(Some(Secret::new(url)));
    }
    let url = read_private("the Redis URL", file, REDIS_URL_ENV)?;
    if let Some(url) = &url {
        crate::fleet::parse_url(url.expose()).map_err(|e| e.to_string())?;
    }
    Ok(url)
}

fn warn_if_shared(path: &std::path::Path, what: &str) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(meta) = std::fs::metadata(path) {
        if meta.permissions().mode() & 0o077 != 0 {
            // On the terminal too: a detached facefs logs to the system log.
            let warning = format!(
                "{} is readable by other users; `chmod 600 {0}` keeps {what} private",
                path.display()
            );
            eprintln!("facefs: warning: {warning}");
            log::warn!("{warning}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("64MiB"), Ok(64 << 20));
        assert_eq!(parse_size("1GiB"), Ok(1 << 30));
        assert_eq!(parse_size("1G"), Ok(1 << 30));
        assert_eq!(parse_size("500k"), Ok(500 << 10));
        assert_eq!(parse_size("1.5MiB"), Ok(3 << 19));
        assert_eq!(parse_size("10MB"), Ok(10_000_000));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size(" 2 MiB "), Ok(2 << 20));
        for bad in ["", "MiB", "12 parsecs", "-1MiB", "1e999GiB", "1..2k"] {
            assert!(parse_size(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("10m"), Ok(Duration::from_secs(600)));
        assert_eq!(parse_duration("1h 30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("10").is_err());
        assert!(parse_positive_duration("0s").is_err());
    }

    #[test]
    fn the_command_line_contract() {
        let cli = Cli::try_parse_from([
            "facefs",
            "/mnt",
            "--cache-size",
            "1GiB",
            "--ttl",
            "5m",
            "-f",
        ])
        .unwrap();
        assert_eq!(
            (cli.cache_size, cli.ttl, cli.foreground),
            (1 << 30, Duration::from_secs(300), true)
        );
        assert!(Cli::try_parse_from(["facefs", "/mnt", "--cache-size", "lots"]).is_err());
        assert!(Cli::try_parse_from(["facefs", "/mnt", "--rate-limit", "0"]).is_err());
        assert!(Cli::try_parse_from(["facefs", "/mnt", "--rate-limit", "fast"]).is_err());
        assert_eq!(
            Cli::try_parse_from(["facefs", "/mnt", "--rate-limit", "2.5"])
                .unwrap()
                .rate_limit,
            2.5
        );
        assert!(Cli::try_parse_from(["facefs", "/mnt", "--demo", "--app-id", "cli_x"]).is_err());
        assert!(
            Cli::try_parse_from(["facefs", "/mnt", "--app-secret", "x"]).is_err(),
            "no secret flag exists"
        );
        assert_eq!(
            Cli::try_parse_from(["facefs", "/mnt", "--file-mode", "0440"])
                .unwrap()
                .file_mode,
            0o440
        );
        assert!(Cli::try_parse_from(["facefs", "/mnt", "--file-mode", "0999"]).is_err());
        assert!(Cli::try_parse_from(["facefs", "/mnt", "--dir-mode", "4755"]).is_err());
        assert!(Cli::try_parse_from(["facefs", "/mnt", "--allow-other", "--allow-root"]).is_err());
    }
}
