//! What every layer's metrics share: values read when `/metrics` is
//! scraped. Each layer owns its metrics (`api::metrics`, `fs::metrics`,
//! `fs::store::metrics`, `events::metrics`, `fleet::metrics`,
//! `fuse::metrics`) and registers them in the registry the daemon builds;
//! nothing here is process-wide. A leaf: it depends on no other module.

use std::fmt;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
}

/// A value another part keeps (a cache's size, a store's evictions), read
/// at each scrape instead of mirrored into a metric on every change.
pub struct Scraped {
    name: &'static str,
    help: &'static str,
    kind: Kind,
    read: Box<dyn Fn() -> u64 + Send + Sync>,
}

impl Scraped {
    /// Registers `read` as the metric `name` (without `_total`: the
    /// exposition adds it to counters).
    pub fn register(
        registry: &mut Registry,
        name: &'static str,
        help: &'static str,
        kind: Kind,
        read: impl Fn() -> u64 + Send + Sync + 'static,
    ) {
        registry.register_collector(Box::new(Scraped {
            name,
            help,
            kind,
            read: Box::new(read),
        }));
    }
}

/// A value read out of a snapshot `U` (a cache's or store's usage) at each
/// scrape: its name, help, kind, and which field of the snapshot it is.
pub type Reading<U> = (&'static str, &'static str, Kind, fn(&U) -> u64);

/// Registers each of `readings` over the snapshots `snapshot` takes.
pub fn register_readings<U: 'static>(
    registry: &mut Registry,
    snapshot: std::sync::Arc<dyn Fn() -> U + Send + Sync>,
    readings: &[Reading<U>],
) {
    for &(name, help, kind, field) in readings {
        let snapshot = snapshot.clone();
        Scraped::register(registry, name, help, kind, move || field(&snapshot()));
    }
}

impl fmt::Debug for Scraped {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Scraped").field("name", &self.name).finish()
    }
}

impl Collector for Scraped {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        let value = (self.read)();
        match self.kind {
            Kind::Counter => {
                let counter = ConstCounter::new(value);
                let metric =
                    encoder.encode_descriptor(self.name, self.help, None, counter.metric_type())?;
                counter.encode(metric)
            }
            Kind::Gauge => {
                let gauge = ConstGauge::new(i64::try_from(value).unwrap_or(i64::MAX));
                let metric =
                    encoder.encode_descriptor(self.name, self.help, None, gauge.metric_type())?;
                gauge.encode(metric)
            }
        }
    }
}

/// Registers each `(name, help, counter)` (names without `_total`).
pub fn register_counters(
    registry: &mut Registry,
    counters: &[(&'static str, &'static str, &Counter)],
) {
    for (name, help, counter) in counters {
        registry.register(*name, *help, (*counter).clone());
    }
}

/// The Prometheus text of `registry`.
pub fn render(registry: &Registry) -> String {
    let mut text = String::new();
    // Writing to a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut text, registry);
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_scraped_value_is_read_at_each_render() {
        let value = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(3));
        let mut registry = Registry::default();
        let read = value.clone();
        Scraped::register(&mut registry, "x_bytes", "Bytes.", Kind::Gauge, move || {
            read.load(std::sync::atomic::Ordering::Relaxed)
        });
        Scraped::register(
            &mut registry,
            "x_evictions",
            "Evictions.",
            Kind::Counter,
            || 7,
        );
        assert!(render(&registry).lines().any(|l| l == "x_bytes 3"));
        value.store(5, std::sync::atomic::Ordering::Relaxed);
        let text = render(&registry);
        assert!(text.lines().any(|l| l == "x_bytes 5"), "{text}");
        assert!(text.lines().any(|l| l == "x_evictions_total 7"), "{text}");
    }
}
