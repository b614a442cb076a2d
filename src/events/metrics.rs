//! What the event long connection counts: events acted on, re-pushed and
//! ignored; connects; whether it is up, and whether it gave up.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::metrics::register_counters;

#[derive(Debug, Default)]
pub struct EventMetrics {
    pub events: Counter,
    pub duplicates: Counter,
    pub ignored: Counter,
    pub connects: Counter,
    pub connection_up: Gauge,
    pub connection_failed: Gauge,
}

impl EventMetrics {
    /// The connection went up (counted) or down.
    pub fn connection(&self, up: bool) {
        if up {
            self.connects.inc();
        }
        self.connection_up.set(i64::from(up));
    }

    /// Registers these metrics; without `--events`, the same names at 0.
    pub fn register(&self, registry: &mut Registry) {
        register_counters(
            registry,
            &[
            (
                "facefs_events",
                "acs.user.updated_v1 events acted on (--events; re-pushed duplicates not counted)",
                &self.events,
            ),
            (
                "facefs_event_duplicates",
                "Events received again (re-pushed): acknowledged, not acted on",
                &self.duplicates,
            ),
            (
                "facefs_events_ignored",
                "Events of other types (or unreadable), acknowledged and not acted on",
                &self.ignored,
            ),
            (
                "facefs_event_connects",
                "Times the event long connection came up",
                &self.connects,
            ),
            ],
        );
        registry.register(
            "facefs_event_connection_up",
            "1 while the event long connection is up",
            self.connection_up.clone(),
        );
        registry.register(
            "facefs_event_connection_failed",
            "1 once the event long connection gave up on a refusal (credentials, 403, too many connections)",
            self.connection_failed.clone(),
        );
    }
}
