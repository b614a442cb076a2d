//! What the filesystem core counts: faces served from memory or fetched,
//! downloads under way, stale faces served, kernel invalidations, uploads.
//! The core owns one [`FsMetrics`]; the daemon registers it with the
//! cache's size, read at each scrape.

use std::sync::Arc;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use super::cache::CacheUsage;
use crate::metrics::{register_counters, register_readings, Kind, Scraped};

#[derive(Debug, Default)]
pub struct FsMetrics {
    pub cache_hits: Counter,
    pub cache_misses: Counter,
    pub downloads_in_flight: Gauge,
    pub stale_served: Counter,
    pub invalidations: Counter,
    pub uploads: Counter,
    pub uploaded_bytes: Counter,
}

/// Counts a download while it lives.
pub struct InFlight<'a>(&'a Gauge);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}

impl FsMetrics {
    pub fn cache(&self, hit: bool) {
        if hit {
            self.cache_hits.inc();
        } else {
            self.cache_misses.inc();
        }
    }

    pub fn download(&self) -> InFlight<'_> {
        self.downloads_in_flight.inc();
        InFlight(&self.downloads_in_flight)
    }

    pub fn uploaded(&self, bytes: usize) {
        self.uploads.inc();
        self.uploaded_bytes.inc_by(bytes as u64);
    }

    /// Registers the counters, the memory cache's size as `usage` reads
    /// it, and the faces the kernel holds as `kernel_faces` counts them.
    pub fn register(
        &self,
        registry: &mut Registry,
        usage: Arc<dyn Fn() -> CacheUsage + Send + Sync>,
        kernel_faces: impl Fn() -> u64 + Send + Sync + 'static,
    ) {
        Scraped::register(
            registry,
            "facefs_kernel_faces",
            "Face inodes the kernel holds: looked up or listed, and not yet forgotten",
            Kind::Gauge,
            kernel_faces,
        );
        register_counters(
            registry,
            &[
                (
                    "facefs_cache_hits",
                    "Faces served from the cache",
                    &self.cache_hits,
                ),
                (
                    "facefs_cache_misses",
                    "Faces that had to be downloaded",
                    &self.cache_misses,
                ),
                (
                    "facefs_stale_served",
                    "Faces served past their TTL because refreshing them failed (--max-stale)",
                    &self.stale_served,
                ),
                (
                    "facefs_kernel_invalidations",
                    "Names and inodes the kernel was told to forget after events and uploads",
                    &self.invalidations,
                ),
                (
                    "facefs_uploads",
                    "Faces uploaded by writing them (--writable)",
                    &self.uploads,
                ),
                (
                    "facefs_uploaded_bytes",
                    "Bytes of the faces uploaded",
                    &self.uploaded_bytes,
                ),
            ],
        );
        registry.register(
            "facefs_downloads_in_flight",
            "Face downloads under way",
            self.downloads_in_flight.clone(),
        );
        register_readings(
            registry,
            usage,
            &[
                (
                    "facefs_cache_bytes",
                    "Bytes of faces in the cache",
                    Kind::Gauge,
                    |u| u.bytes,
                ),
                (
                    "facefs_cache_faces",
                    "Faces in the cache",
                    Kind::Gauge,
                    |u| u.entries as u64,
                ),
                (
                    "facefs_cache_evictions",
                    "Faces evicted to stay within --cache-size",
                    Kind::Counter,
                    |u| u.evictions,
                ),
            ],
        );
    }
}
