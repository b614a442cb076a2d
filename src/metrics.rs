//! Counters of what facefs does, served as Prometheus text. One process
//! serves one mount, so the counters are process-wide statics: every layer
//! counts its own events without being handed a registry.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::api::Endpoint;
#[cfg(test)]
use crate::fs::cache::CacheUsage;
use crate::fs::Usage;

impl Outcome {
    pub fn of<T>(result: &Result<T, crate::api::ApiError>) -> Outcome {
        use crate::api::ApiError::*;
        match result {
            Ok(_) => Outcome::Ok,
            Err(UserNotFound | FaceNotFound) => Outcome::Absent,
            Err(Throttled { .. }) => Outcome::Throttled,
            Err(Transient(_)) => Outcome::Transient,
            Err(PermissionDenied(_)) => Outcome::Denied,
            Err(InvalidPageToken | BadCredentials(_) | ImageRefused(_) | Failed(_)) => {
                Outcome::Failed
            }
        }
    }
}

/// How one API request ended, as labels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    Absent,
    Throttled,
    Transient,
    Denied,
    Failed,
}

const OUTCOMES: [&str; 6] = ["ok", "absent", "throttled", "transient", "denied", "failed"];

/// The FUSE operations facefs counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FuseOp {
    Lookup,
    Getattr,
    Open,
    Read,
    Release,
    Opendir,
    Readdir,
    Releasedir,
    Statfs,
    Create,
    Write,
    Flush,
    Fsync,
    Setattr,
    Rename,
    Unlink,
}

impl FuseOp {
    pub const ALL: [FuseOp; 16] = [
        FuseOp::Lookup,
        FuseOp::Getattr,
        FuseOp::Open,
        FuseOp::Read,
        FuseOp::Release,
        FuseOp::Opendir,
        FuseOp::Readdir,
        FuseOp::Releasedir,
        FuseOp::Statfs,
        FuseOp::Create,
        FuseOp::Write,
        FuseOp::Flush,
        FuseOp::Fsync,
        FuseOp::Setattr,
        FuseOp::Rename,
        FuseOp::Unlink,
    ];

    /// The `op` label.
    pub fn as_str(self) -> &'static str {
        match self {
            FuseOp::Lookup => "lookup",
            FuseOp::Getattr => "getattr",
            FuseOp::Open => "open",
            FuseOp::Read => "read",
            FuseOp::Release => "release",
            FuseOp::Opendir => "opendir",
            FuseOp::Readdir => "readdir",
            FuseOp::Releasedir => "releasedir",
            FuseOp::Statfs => "statfs",
            FuseOp::Create => "create",
            FuseOp::Write => "write",
            FuseOp::Flush => "flush",
            FuseOp::Fsync => "fsync",
            FuseOp::Setattr => "setattr",
            FuseOp::Rename => "rename",
            FuseOp::Unlink => "unlink",
        }
    }
}

const OPS: usize = FuseOp::ALL.len();
const ENDPOINTS: usize = Endpoint::ALL.len();

/// Latency buckets, in seconds.
const BUCKETS: [f64; 7] = [0.0001, 0.001, 0.01, 0.1, 1.0, 10.0, 60.0];

const ERRNOS: [(i32, &str); 10] = [
    (libc::ENOENT, "ENOENT"),
    (libc::EIO, "EIO"),
    (libc::EACCES, "EACCES"),
    (libc::EROFS, "EROFS"),
    (libc::ENOTDIR, "ENOTDIR"),
    (libc::EPERM, "EPERM"),
    (libc::EINVAL, "EINVAL"),
    (libc::EFBIG, "EFBIG"),
    (libc::ENOSPC, "ENOSPC"),
    (0, "other"),
];

pub struct Metrics {
    api: [[AtomicU64; OUTCOMES.len()]; ENDPOINTS],
    retries: AtomicU64,
    cache_hits: AtomicU64,
    cache_misses: AtomicU64,
    downloads_in_flight: AtomicU64,
    store_hits: AtomicU64,
    store_writes: AtomicU64,
    store_discarded: AtomicU64,
    stale_served: AtomicU64,
    events: AtomicU64,
    event_connects: AtomicU64,
    event_connection_up: AtomicU64,
    event_connection_fatal: AtomicU64,
    event_duplicates: AtomicU64,
    events_ignored: AtomicU64,
    invalidations: AtomicU64,
    uploads: AtomicU64,
    uploaded_bytes: AtomicU64,
    redis_up: AtomicU64,
    redis_failures: AtomicU64,
    fleet_month_requests: AtomicU64,
    fleet_events: AtomicU64,
    fleet_hits: AtomicU64,
    ops: [AtomicU64; OPS],
    /// Per operation: one counter per bucket (cumulative at render), then the sum in microseconds.
    latency: [[AtomicU64; BUCKETS.len() + 1]; OPS],
    latency_sum_us: [AtomicU64; OPS],
    errors: [[AtomicU64; ERRNOS.len()]; OPS],
}

// Array-repeat templates: each use is a fresh value, not a shared one.
#[allow(clippy::declare_interior_mutable_const)]
const ZERO: AtomicU64 = AtomicU64::new(0);
#[allow(clippy::declare_interior_mutable_const)]
const OUTCOME_ROW: [AtomicU64; OUTCOMES.len()] = [ZERO; OUTCOMES.len()];
#[allow(clippy::declare_interior_mutable_const)]
const BUCKET_ROW: [AtomicU64; BUCKETS.len() + 1] = [ZERO; BUCKETS.len() + 1];
#[allow(clippy::declare_interior_mutable_const)]
const ERRNO_ROW: [AtomicU64; ERRNOS.len()] = [ZERO; ERRNOS.len()];

pub static METRICS: Metrics = Metrics::new();

fn add(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

impl Metrics {
    const fn new() -> Metrics {
        Metrics {
            api: [OUTCOME_ROW; ENDPOINTS],
            retries: ZERO,
            cache_hits: ZERO,
            cache_misses: ZERO,
            downloads_in_flight: ZERO,
            store_hits: ZERO,
            store_writes: ZERO,
            store_discarded: ZERO,
            stale_served: ZERO,
            events: ZERO,
            event_connects: ZERO,
            event_connection_up: ZERO,
            event_connection_fatal: ZERO,
            event_duplicates: ZERO,
            events_ignored: ZERO,
            invalidations: ZERO,
            uploads: ZERO,
            uploaded_bytes: ZERO,
            redis_up: ZERO,
            redis_failures: ZERO,
            fleet_month_requests: ZERO,
            fleet_events: ZERO,
            fleet_hits: ZERO,
            ops: [ZERO; OPS],
            latency: [BUCKET_ROW; OPS],
            latency_sum_us: [ZERO; OPS],
            errors: [ERRNO_ROW; OPS],
        }
    }

    pub fn api_request(&self, endpoint: Endpoint, outcome: Outcome) {
        add(&self.api[endpoint as usize][outcome as usize]);
    }

    pub fn retry(&self) {
        add(&self.retries);
    }

    pub fn cache(&self, hit: bool) {
        add(if hit {
            &self.cache_hits
        } else {
            &self.cache_misses
        });
    }

    /// A face read from the on-disk store.
    pub fn store_read(&self) {
        add(&self.store_hits);
    }

    pub fn store_write(&self) {
        add(&self.store_writes);
    }

    /// A stored entry that failed verification and was deleted.
    pub fn store_discarded(&self) {
        add(&self.store_discarded);
    }

    /// A face past its TTL served because refreshing it failed.
    pub fn stale_served(&self) {
        add(&self.stale_served);
    }

    /// An event that changed something (duplicates not counted).
    pub fn event(&self) {
        add(&self.events);
    }

    /// The event connection went up (counted) or down.
    pub fn event_connection(&self, up: bool) {
        if up {
            add(&self.event_connects);
        }
        self.event_connection_up
            .store(u64::from(up), Ordering::Relaxed);
    }

    /// An event id seen before (a re-push): acknowledged, not acted on.
    pub fn event_duplicate(&self) {
        add(&self.event_duplicates);
    }

    /// An event of a type facefs does not act on (acknowledged all the same).
    pub fn event_ignored(&self) {
        add(&self.events_ignored);
    }

    /// A face uploaded (`--writable`), of `bytes` bytes.
    pub fn uploaded(&self, bytes: usize) {
        add(&self.uploads);
        self.uploaded_bytes
            .fetch_add(bytes as u64, Ordering::Relaxed);
    }

    /// Whether Redis (`--redis`) answered the last time it was asked.
    pub fn redis_up(&self, up: bool) {
        self.redis_up.store(u64::from(up), Ordering::Relaxed);
    }

    /// A Redis command that failed (timeout, refused, full, gone).
    pub fn redis_failure(&self) {
        add(&self.redis_failures);
    }

    /// A face, listing page or "does not exist" read from the fleet's Redis
    /// instead of the API.
    pub fn fleet_hit(&self) {
        add(&self.fleet_hits);
    }

    /// An event another mount heard, applied here.
    pub fn fleet_event(&self) {
        add(&self.fleet_events);
    }

    /// Requests the fleet sent this month, as Redis counted them.
    pub fn fleet_requests_this_month(&self, n: u64) {
        self.fleet_month_requests.store(n, Ordering::Relaxed);
    }

    /// Names and inodes the kernel was told to forget.
    pub fn invalidations(&self, n: usize) {
        self.invalidations.fetch_add(n as u64, Ordering::Relaxed);
    }

    /// The event connection gave up for good (a refusal).
    pub fn event_connection_fatal(&self) {
        self.event_connection_fatal.store(1, Ordering::Relaxed);
    }

    /// Counts a download while the returned guard lives.
    pub fn download(&self) -> InFlight<'_> {
        add(&self.downloads_in_flight);
        InFlight(&self.downloads_in_flight)
    }

    /// Records one FUSE operation, how long it took and its errno (0 for success).
    pub fn op(&self, op: FuseOp, took: Duration, errno: i32) {
        let i = op as usize;
        add(&self.ops[i]);
        let secs = took.as_secs_f64();
        let bucket = BUCKETS
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(BUCKETS.len());
        add(&self.latency[i][bucket]);
        self.latency_sum_us[i].fetch_add(took.as_micros() as u64, Ordering::Relaxed);
        if errno != 0 {
            let e = ERRNOS
                .iter()
                .position(|(n, _)| *n == errno)
                .unwrap_or(ERRNOS.len() - 1);
            add(&self.errors[i][e]);
        }
    }

    /// The Prometheus text exposition.
    pub fn render(&self, usage: &Usage) -> String {
        let cache = usage.cache;
        let store = usage.store.unwrap_or_default();
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let mut out = String::new();
        fn family(out: &mut String, name: &str, kind: &str, help: &str) {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        }
        family(
            &mut out,
            "facefs_api_requests_total",
            "counter",
            "API requests by endpoint and outcome.",
        );
        let mut lines = String::new();
        for (e, endpoint) in Endpoint::ALL.iter().map(|e| e.as_str()).enumerate() {
            for (o, outcome) in OUTCOMES.iter().enumerate() {
                let _ = writeln!(
                    lines,
                    "facefs_api_requests_total{{endpoint=\"{endpoint}\",outcome=\"{outcome}\"}} {}",
                    get(&self.api[e][o])
                );
            }
        }
        out.push_str(&lines);
        let simple: [(&str, &str, &str, u64); 29] = [
            (
                "facefs_api_retries_total",
                "counter",
                "Requests retried after a transient failure or throttling.",
                get(&self.retries),
            ),
            (
                "facefs_api_throttled_total",
                "counter",
                "Throttling answers (HTTP 429 / 99991400).",
                self.api_total(Outcome::Throttled),
            ),
            (
                "facefs_token_renewals_total",
                "counter",
                "Tenant access tokens fetched.",
                self.api_total_endpoint(Endpoint::Token, Outcome::Ok),
            ),
            (
                "facefs_cache_hits_total",
                "counter",
                "Faces served from the cache.",
                get(&self.cache_hits),
            ),
            (
                "facefs_cache_misses_total",
                "counter",
                "Faces that had to be downloaded.",
                get(&self.cache_misses),
            ),
            (
                "facefs_cache_bytes",
                "gauge",
                "Bytes of faces in the cache.",
                cache.bytes,
            ),
            (
                "facefs_cache_evictions_total",
                "counter",
                "Faces evicted to stay within --cache-size.",
                cache.evictions,
            ),
            (
                "facefs_downloads_in_flight",
                "gauge",
                "Face downloads under way.",
                get(&self.downloads_in_flight),
            ),
            (
                "facefs_store_hits_total",
                "counter",
                "Faces read from the on-disk store (--cache-dir), verified.",
                get(&self.store_hits),
            ),
            (
                "facefs_store_writes_total",
                "counter",
                "Faces written to the on-disk store.",
                get(&self.store_writes),
            ),
            (
                "facefs_store_discarded_total",
                "counter",
                "Stored faces and listings that failed verification and were deleted.",
                get(&self.store_discarded),
            ),
            (
                "facefs_store_evictions_total",
                "counter",
                "Stored faces deleted to stay within --cache-dir-size or the free-space floor.",
                store.evictions,
            ),
            (
                "facefs_store_bytes",
                "gauge",
                "Bytes the on-disk store takes (faces and listings).",
                store.bytes,
            ),
            (
                "facefs_store_faces",
                "gauge",
                "Faces in the on-disk store.",
                store.faces as u64,
            ),
            (
                "facefs_events_total",
                "counter",
                "acs.user.updated_v1 events acted on (--events; re-pushed duplicates not counted).",
                get(&self.events),
            ),
            (
                "facefs_event_duplicates_total",
                "counter",
                "Events received again (re-pushed): acknowledged, not acted on.",
                get(&self.event_duplicates),
            ),
            (
                "facefs_events_ignored_total",
                "counter",
                "Events of other types (or unreadable), acknowledged and not acted on.",
                get(&self.events_ignored),
            ),
            (
                "facefs_kernel_invalidations_total",
                "counter",
                "Names and inodes the kernel was told to forget after events and uploads.",
                get(&self.invalidations),
            ),
            (
                "facefs_redis_up",
                "gauge",
                "1 when Redis (--redis) answered the last time it was asked.",
                get(&self.redis_up),
            ),
            (
                "facefs_redis_failures_total",
                "counter",
                "Redis commands that failed; the mount then goes on alone for a moment.",
                get(&self.redis_failures),
            ),
            (
                "facefs_fleet_requests_this_month",
                "gauge",
                "API requests the whole fleet sent this month (UTC), counted in Redis.",
                get(&self.fleet_month_requests),
            ),
            (
                "facefs_fleet_hits_total",
                "counter",
                "Faces, listing pages and absences read from Redis instead of the API.",
                get(&self.fleet_hits),
            ),
            (
                "facefs_fleet_events_total",
                "counter",
                "Events other mounts heard, read from the fleet's stream and applied here.",
                get(&self.fleet_events),
            ),
            (
                "facefs_uploads_total",
                "counter",
                "Faces uploaded by writing them (--writable).",
                get(&self.uploads),
            ),
            (
                "facefs_uploaded_bytes_total",
                "counter",
                "Bytes of the faces uploaded.",
                get(&self.uploaded_bytes),
            ),
            (
                "facefs_event_connects_total",
                "counter",
                "Times the event long connection came up.",
                get(&self.event_connects),
            ),
            (
                "facefs_event_connection_up",
                "gauge",
                "1 while the event long connection is up.",
                get(&self.event_connection_up),
            ),
            (
                "facefs_event_connection_failed",
                "gauge",
                "1 once the event long connection gave up on a refusal (credentials, 403, too many connections).",
                get(&self.event_connection_fatal),
            ),
            (
                "facefs_stale_served_total",
                "counter",
                "Faces served past their TTL because refreshing them failed (--max-stale).",
                get(&self.stale_served),
            ),
        ];
        for (name, kind, help, value) in simple {
            family(&mut out, name, kind, help);
            let _ = writeln!(out, "{name} {value}");
        }
        family(
            &mut out,
            "facefs_cache_faces",
            "gauge",
            "Faces in the cache.",
        );
        let _ = writeln!(out, "facefs_cache_faces {}", cache.entries);
        family(
            &mut out,
            "facefs_fuse_op_seconds",
            "histogram",
            "FUSE operations by kind: count and latency.",
        );
        for (i, op) in FuseOp::ALL.iter().map(|o| o.as_str()).enumerate() {
            let mut cumulative = 0;
            for (b, bound) in BUCKETS.iter().enumerate() {
                cumulative += get(&self.latency[i][b]);
                let _ = writeln!(
                    out,
                    "facefs_fuse_op_seconds_bucket{{op=\"{op}\",le=\"{bound}\"}} {cumulative}"
                );
            }
            let _ = writeln!(
                out,
                "facefs_fuse_op_seconds_bucket{{op=\"{op}\",le=\"+Inf\"}} {}",
                get(&self.ops[i])
            );
            let _ = writeln!(
                out,
                "facefs_fuse_op_seconds_sum{{op=\"{op}\"}} {}",
                get(&self.latency_sum_us[i]) as f64 / 1e6
            );
            let _ = writeln!(
                out,
                "facefs_fuse_op_seconds_count{{op=\"{op}\"}} {}",
                get(&self.ops[i])
            );
        }
        family(
            &mut out,
            "facefs_fuse_errors_total",
            "counter",
            "FUSE operations that failed, by errno.",
        );
        for (i, op) in FuseOp::ALL.iter().map(|o| o.as_str()).enumerate() {
            for (e, (_, name)) in ERRNOS.iter().enumerate() {
                let _ = writeln!(
                    out,
                    "facefs_fuse_errors_total{{op=\"{op}\",errno=\"{name}\"}} {}",
                    get(&self.errors[i][e])
                );
            }
        }
        out
    }

    fn api_total(&self, outcome: Outcome) -> u64 {
        (0..ENDPOINTS)
            .map(|e| self.api[e][outcome as usize].load(Ordering::Relaxed))
            .sum()
    }

    fn api_total_endpoint(&self, endpoint: Endpoint, outcome: Outcome) -> u64 {
        self.api[endpoint as usize][outcome as usize].load(Ordering::Relaxed)
    }
}

pub struct InFlight<'a>(&'a AtomicU64);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_prometheus_text() {
        let m = Metrics::new();
        m.api_request(Endpoint::Face, Outcome::Ok);
        m.api_request(Endpoint::Face, Outcome::Throttled);
        m.op(FuseOp::Lookup, Duration::from_millis(5), 0);
        m.op(FuseOp::Lookup, Duration::from_millis(50), libc::ENOENT);
        {
            let _d = m.download();
            assert!(m
                .render(&Usage::default())
                .contains("facefs_downloads_in_flight 1\n"));
        }
        let text = m.render(&Usage {
            cache: CacheUsage {
                bytes: 100,
                entries: 2,
                evictions: 3,
            },
            store: None,
        });
        for line in [
            "facefs_api_requests_total{endpoint=\"face\",outcome=\"ok\"} 1",
            "facefs_api_throttled_total 1",
            "facefs_fuse_op_seconds_bucket{op=\"lookup\",le=\"0.01\"} 1",
            "facefs_fuse_op_seconds_bucket{op=\"lookup\",le=\"0.1\"} 2",
            "facefs_fuse_op_seconds_count{op=\"lookup\"} 2",
            "facefs_fuse_errors_total{op=\"lookup\",errno=\"ENOENT\"} 1",
            "facefs_cache_bytes 100",
            "facefs_cache_evictions_total 3",
            "facefs_downloads_in_flight 0",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line}\n{text}");
        }
    }
}
