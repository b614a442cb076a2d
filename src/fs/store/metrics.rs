//! What the on-disk store counts: faces read, faces written, entries that
//! failed verification; and, read at each scrape, what it holds.

use std::sync::Arc;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::registry::Registry;

use super::FaceStore;
use crate::metrics::{register_counters, register_readings, Kind};

#[derive(Debug, Default)]
pub struct StoreMetrics {
    pub hits: Counter,
    pub writes: Counter,
    pub discarded: Counter,
    pub abandoned: Counter,
    pub writes_dropped: Counter,
    pub listing_writes: Counter,
}

impl StoreMetrics {
    /// Registers `store`'s metrics; without a store (no `--cache-dir`) the
    /// same names, at 0, so dashboards need not know how a mount was made.
    pub fn register(store: Option<&Arc<FaceStore>>, registry: &mut Registry) {
        let idle = StoreMetrics::default();
        let metrics = store.map_or(&idle, |s| &s.metrics);
        register_counters(
            registry,
            &[
                (
                    "facefs_store_hits",
                    "Faces read from the on-disk store (--cache-dir), verified",
                    &metrics.hits,
                ),
                (
                    "facefs_store_writes",
                    "Faces written to the on-disk store",
                    &metrics.writes,
                ),
                (
                    "facefs_store_discarded",
                    "Stored faces and listings that failed verification and were deleted",
                    &metrics.discarded,
                ),
                (
                    "facefs_store_listing_writes",
                    "Listings written to the on-disk store (a burst of events costs one or two)",
                    &metrics.listing_writes,
                ),
                (
                    "facefs_store_abandoned",
                    "Store reads that took over their bound (a slow disk): the API was asked instead",
                    &metrics.abandoned,
                ),
                (
                    "facefs_store_writes_dropped",
                    "Face writes dropped because the store's queue was full (a slow disk)",
                    &metrics.writes_dropped,
                ),
            ],
        );
        let store = store.cloned();
        register_readings(
            registry,
            Arc::new(move || store.as_ref().map(|s| s.usage()).unwrap_or_default()),
            &[
                (
                    "facefs_store_evictions",
                    "Stored faces deleted to stay within --cache-dir-size or the free-space floor",
                    Kind::Counter,
                    |u| u.evictions,
                ),
                (
                    "facefs_store_bytes",
                    "Bytes the on-disk store takes (faces and listings)",
                    Kind::Gauge,
                    |u| u.bytes,
                ),
                (
                    "facefs_store_faces",
                    "Faces in the on-disk store",
                    Kind::Gauge,
                    |u| u.faces as u64,
                ),
            ],
        );
    }
}
