//! What the fleet counts: whether Redis answers, its failures, what the
//! fleet read from it instead of the API, events from other mounts, and
//! the month's requests as Redis counts them.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::metrics::register_counters;

#[derive(Debug, Default)]
pub struct FleetMetrics {
    pub redis_up: Gauge,
    pub redis_failures: Counter,
    pub hits: Counter,
    pub events: Counter,
    pub requests_this_month: Gauge,
    pub rejected: Counter,
    /// Mounts of the fleet alive, as last counted in Redis.
    pub members: Gauge,
}

impl FleetMetrics {
    /// Registers these metrics; without `--redis`, the same names at 0.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "facefs_redis_up",
            "1 when Redis (--redis) answered the last time it was asked",
            self.redis_up.clone(),
        );
        registry.register(
            "facefs_fleet_members",
            "Mounts of the fleet alive, as last counted in Redis; while Redis fails, each paces at --rate-limit divided by this",
            self.members.clone(),
        );
        registry.register(
            "facefs_fleet_requests_this_month",
            "API requests the whole fleet sent this month (UTC), counted in Redis",
            self.requests_this_month.clone(),
        );
        register_counters(
            registry,
            &[
                (
                    "facefs_redis_failures",
                    "Redis commands that failed; the mount then goes on alone for a moment",
                    &self.redis_failures,
                ),
                (
                    "facefs_fleet_hits",
                    "Faces, listing pages and absences read from Redis instead of the API",
                    &self.hits,
                ),
                (
                    "facefs_fleet_events",
                    "Events other mounts heard, read from the fleet's stream and applied here",
                    &self.events,
                ),
                (
                    "facefs_fleet_rejected",
                    "Values and events read from Redis that failed to open (tampering, or another key): read as misses",
                    &self.rejected,
                ),
            ],
        );
    }
}
