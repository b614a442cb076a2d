//! How a mount's parts are built from the settings: where the API is (or
//! the demo emulator), the on-disk store, the client stack (HTTP, retries,
//! the rate budget, the fleet), the core's configuration, and the FUSE
//! session's options. `mount` in `mod.rs` puts them together.

use std::sync::Arc;
use std::time::Duration;

use fuser::{Config, MountOption, SessionACL};

use super::cli::{Access, Settings, Source};
use super::logging::with_causes;
use crate::api::http::{HttpApi, HttpConfig};
use crate::api::metrics::ApiMetrics;
use crate::api::retry::{RetryPolicy, RetryingApi};
use crate::api::secret::Secret;
use crate::api::throttle::RateLimiter;
use crate::api::FaceApi;
use crate::emulator::{Emulator, EmulatorConfig};
use crate::fleet::events::FleetEvents;
use crate::fleet::rate::FleetPacer;
use crate::fleet::shared::{SharedApi, SharedConfig};
use crate::fleet::{Fleet, FleetConfig};
use crate::fs::store::{FaceStore, StoreConfig};
use crate::fs::FsConfig;
use crate::seal::Sealer;
use crate::sync::byte_budget::ByteBudget;

/// Where the faces come from: the API, or the demo's own emulator.
pub struct Origin {
    pub base_url: reqwest::Url,
    pub app_id: String,
    pub app_secret: Secret,
    /// The demo's emulator, which lives as long as the mount.
    pub emulator: Option<Emulator>,
}

impl Origin {
    pub fn of(settings: &Settings) -> Result<Origin, String> {
        match &settings.source {
            Source::Api {
                base_url,
                app_id,
                app_secret,
            } => Ok(Origin {
                base_url: base_url.clone(),
                app_id: app_id.clone(),
                app_secret: app_secret.clone(),
                emulator: None,
            }),
            Source::Demo => {
                let emulator = Emulator::start(EmulatorConfig::default())
                    .map_err(|e| format!("cannot start the demo emulator: {e}"))?;
                let config = emulator.config();
                Ok(Origin {
                    base_url: reqwest::Url::parse(&emulator.base_url())
                        .map_err(|e| e.to_string())?,
                    app_id: config.app_id.clone(),
                    app_secret: Secret::new(config.app_secret.clone()),
                    emulator: Some(emulator),
                })
            }
        }
    }

    /// Whose faces these are: the API origin and the app. Stores and
    /// fleets keep tenants apart by it.
    pub fn tenant(&self) -> String {
        format!("{}\n{}", self.base_url, self.app_id)
    }

    /// The keys what facefs keeps outside its memory is sealed with:
    /// derived from `--data-key-file` if given, else from the app secret,
    /// and the tenant.
    pub fn sealer(&self, data_key: Option<&Secret>) -> Arc<Sealer> {
        let key = data_key.unwrap_or(&self.app_secret);
        Arc::new(Sealer::derive(key.expose().as_bytes(), &self.tenant()))
    }
}

/// The on-disk store (`--cache-dir`), if asked for.
pub fn store(
    settings: &Settings,
    origin: &Origin,
    sealer: &Arc<Sealer>,
    memory: &Arc<ByteBudget>,
) -> Result<Option<Arc<FaceStore>>, String> {
    let Some(dir) = &settings.cache_dir else {
        return Ok(None);
    };
    let config = StoreConfig {
        dir: dir.clone(),
        max_bytes: settings.cache_dir_size,
        tenant: origin.tenant(),
        memory_wait: settings.request_timeout,
        sealer: sealer.clone(),
        disk_delay: test_disk_delay(),
    };
    FaceStore::open(config, memory.clone())
        .map(Some)
        .map_err(|e| format!("cannot use --cache-dir: {}", with_causes(&e)))
}

/// Debug builds (the ones tests mount) read `FACEFS_TEST_STORE_DELAY`
/// (e.g. `5s`): every store access that may wait for the disk first
/// waits that long, as on a failing disk. Release builds never do.
fn test_disk_delay() -> Option<Duration> {
    if !cfg!(debug_assertions) {
        return None;
    }
    let delay = std::env::var("FACEFS_TEST_STORE_DELAY").ok()?;
    humantime::parse_duration(&delay).ok()
}

/// The client the core calls, and what the fleet shares.
pub struct Client {
    pub api: Arc<dyn FaceApi>,
    pub metrics: Arc<ApiMetrics>,
    pub fleet: Option<Arc<Fleet>>,
    pub fleet_events: Option<Arc<FleetEvents>>,
}

/// HTTP under retries under the rate budget (the fleet's, with `--redis`,
/// and then the fleet's shared faces on top). The credentials are checked
/// now, so that bad ones fail the mount, not the first read.
pub fn client(
    settings: &Settings,
    origin: &Origin,
    sealer: &Arc<Sealer>,
    memory: &Arc<ByteBudget>,
) -> Result<Client, String> {
    let metrics = Arc::new(ApiMetrics::default());
    let http = HttpApi::new(HttpConfig {
        base_url: origin.base_url.clone(),
        app_id: origin.app_id.clone(),
        app_secret: origin.app_secret.clone(),
        request_timeout: settings.request_timeout,
        memory: memory.clone(),
    })
    .map_err(|e| with_causes(&e))?
    .with_metrics(metrics.clone());
    http.check_credentials()
        .map_err(|e| format!("cannot get a tenant access token: {e}"))?;
    let retrying = RetryingApi::new(
        http,
        RetryPolicy {
            budget: settings.retry_budget,
            ..RetryPolicy::default()
        },
    )
    .with_metrics(metrics.clone());
    let limiter = Arc::new(RateLimiter::new(settings.rate_limit));
    let Some(redis) = &settings.redis else {
        return Ok(Client {
            api: Arc::new(retrying.with_rate_limit(limiter)),
            metrics,
            fleet: None,
            fleet_events: None,
        });
    };
    let fleet = Arc::new(
        Fleet::new(FleetConfig {
            url: redis.url.clone(),
            ca_file: redis.ca_file.clone(),
            prefix: redis.prefix.clone(),
            tenant: origin.tenant(),
            timeout: redis.timeout,
            sealer: sealer.clone(),
        })
        .map_err(|e| e.to_string())?,
    );
    log::info!(
        "sharing this tenant's rate budget, faces, listings and events through Redis, keys under {}* (what its Redis ACL should allow)",
        fleet.key("")
    );
    let fleet_events = FleetEvents::new(fleet.clone());
    let pacer = FleetPacer::new(
        limiter,
        fleet.clone(),
        settings.rate_limit,
        redis.monthly_budget,
    );
    let shared = SharedApi::new(
        retrying.with_rate_limit(Arc::new(pacer)),
        fleet.clone(),
        SharedConfig {
            face_ttl: settings.ttl,
            negative_ttl: settings.negative_ttl,
            wait: settings.request_timeout,
            memory: memory.clone(),
            events: Some(fleet_events.clone()),
        },
    );
    Ok(Client {
        api: Arc::new(shared),
        metrics,
        fleet: Some(fleet),
        fleet_events: Some(fleet_events),
    })
}

/// The core's configuration from the flags.
pub fn fs_config(settings: &Settings) -> FsConfig {
    // SAFETY: getuid and getgid cannot fail.
    let (uid, gid) = unsafe {
        (
            settings.uid.unwrap_or(libc::getuid()),
            settings.gid.unwrap_or(libc::getgid()),
        )
    };
    FsConfig {
        cache_bytes: settings.cache_size,
        ttl: settings.ttl,
        max_stale: settings.max_stale,
        ttl_with_events: settings.ttl_with_events,
        negative_ttl: settings.negative_ttl,
        uid,
        gid,
        file_mode: settings.file_mode,
        dir_mode: settings.dir_mode,
        readahead: settings.max_parallel * 2,
        prefetch_threads: settings.max_parallel,
        writable: settings.writable,
    }
}

/// The FUSE session's mount options, access and threads.
pub fn session_config(settings: &Settings) -> Config {
    let mut config = Config::default();
    config.mount_options = vec![
        MountOption::FSName("facefs".into()),
        MountOption::Subtype("facefs".into()),
        if settings.writable {
            MountOption::RW
        } else {
            MountOption::RO
        },
        MountOption::NoDev,
        MountOption::NoSuid,
        MountOption::NoExec,
        MountOption::DefaultPermissions,
    ];
    // Faces are biometric data: only the mounting user gets in unless asked.
    config.acl = match settings.access {
        Access::Owner => SessionACL::Owner,
        Access::OwnerAndRoot => SessionACL::RootAndOwner,
        Access::Everyone => SessionACL::All,
    };
    config.n_threads = Some(2);
    config
}
