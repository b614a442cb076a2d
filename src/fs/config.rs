//! What the core is told at mount: sizes, TTLs, owner and modes.

use std::time::{Duration, SystemTime};

use super::attr::Ownership;
use super::freshness::TrustPolicy;

#[derive(Clone, Debug)]
pub struct FsConfig {
    /// Bytes of face images kept in memory.
    pub cache_bytes: u64,
    /// How long a fetched face or listing is trusted.
    pub ttl: Duration,
    /// How long a face or listing may be trusted while the event connection
    /// has been up since it was fetched (`--ttl-with-events`).
    pub ttl_with_events: Duration,
    /// How long past its TTL a face may still be served when refreshing it
    /// fails for an outage (never a listing: see `listings`).
    pub max_stale: Duration,
    /// How long "does not exist" is remembered.
    pub negative_ttl: Duration,
    pub uid: u32,
    pub gid: u32,
    pub file_mode: u16,
    pub dir_mode: u16,
    /// Downloads that directory read-ahead may start ahead of a sequential
    /// walk; 0 turns read-ahead off.
    pub readahead: usize,
    /// Threads that run read-ahead downloads.
    pub prefetch_threads: usize,
    /// Writing `<id>.jpg` uploads it (`--writable`).
    pub writable: bool,
}

impl Default for FsConfig {
    fn default() -> FsConfig {
        FsConfig {
            cache_bytes: 256 << 20,
            ttl: Duration::from_secs(600),
            max_stale: Duration::from_secs(3 * 24 * 3600),
            ttl_with_events: Duration::from_secs(24 * 3600),
            negative_ttl: Duration::from_secs(30),
            uid: 0,
            gid: 0,
            file_mode: 0o400,
            dir_mode: 0o700,
            readahead: 64,
            prefetch_threads: 32,
            writable: false,
        }
    }
}

impl FsConfig {
    pub fn trust_policy(&self) -> TrustPolicy {
        TrustPolicy {
            ttl: self.ttl,
            ttl_with_events: self.ttl_with_events,
            max_stale: self.max_stale,
        }
    }

    /// Who owns what the mount shows, with directories dated `mounted_at`.
    pub fn ownership(&self, mounted_at: SystemTime) -> Ownership {
        Ownership {
            uid: self.uid,
            gid: self.gid,
            file_mode: self.file_mode,
            dir_mode: self.dir_mode,
            mounted_at,
        }
    }
}
