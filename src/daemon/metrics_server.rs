//! Serves `GET /metrics` with hyper. Every local user can reach the port and
//! the daemon often runs as root, so each way a client could hold memory or
//! the listener has a bound: an 8 KiB request head read within 5 s, at most
//! 32 headers, no request body read, one request per connection, 10 s per
//! connection, 64 connections at once (more are closed at once).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use prometheus_client::registry::Registry;

use crate::api::metrics::ApiMetrics;
use crate::events::metrics::EventMetrics;
use crate::fleet::metrics::FleetMetrics;
use crate::fs::store::metrics::StoreMetrics;
use crate::fs::store::FaceStore;
use crate::fs::FaceFs;
use crate::fuse::metrics::FuseMetrics;
use crate::metrics::render;

/// hyper's smallest read buffer, and so the largest request head.
const MAX_HEAD_BYTES: usize = 8 * 1024;
const MAX_HEADERS: usize = 32;
const HEAD_TIMEOUT: Duration = Duration::from_secs(5);
const CONNECTION_TIME: Duration = Duration::from_secs(10);
const MAX_CONNECTIONS: usize = 64;

/// The metrics of each layer of one mount; `None` for a layer it runs without.
pub struct Layers<'a> {
    pub api: &'a ApiMetrics,
    pub core: &'a Arc<FaceFs>,
    pub store: Option<&'a Arc<FaceStore>>,
    pub events: Option<&'a EventMetrics>,
    pub fleet: Option<&'a FleetMetrics>,
    pub fuse: &'a FuseMetrics,
}

/// The registry `/metrics` renders. A layer the mount runs without shows
/// its names at 0, so dashboards need not know how each mount was made.
pub fn registry(layers: &Layers) -> Registry {
    let mut registry = Registry::default();
    layers.api.register(&mut registry);
    let (core, held) = (layers.core.clone(), layers.core.clone());
    layers.core.metrics().register(
        &mut registry,
        Arc::new(move || core.cache_usage()),
        move || held.kernel_faces() as u64,
    );
    StoreMetrics::register(layers.store, &mut registry);
    let idle_events = EventMetrics::default();
    layers
        .events
        .unwrap_or(&idle_events)
        .register(&mut registry);
    let idle_fleet = FleetMetrics::default();
    layers.fleet.unwrap_or(&idle_fleet).register(&mut registry);
    layers.fuse.register(&mut registry);
    registry
}

/// The running server; dropping it stops it.
pub struct MetricsServer {
    addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl MetricsServer {
    pub fn start(addr: &str, registry: Arc<Registry>) -> std::io::Result<MetricsServer> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let listener = runtime.block_on(TcpListener::bind(addr))?;
        let addr = listener.local_addr()?;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        // One thread of its own runs the server; dropping the runtime at the
        // end ends every connection.
        std::thread::Builder::new()
            .name("facefs-metrics".into())
            .spawn(move || {
                // The registry may hold the last reference to the core,
                // whose blocking HTTP client panics if dropped inside an
                // async context: the last of it goes after the runtime.
                let kept = registry.clone();
                runtime.block_on(async {
                    tokio::select! {
                        _ = accept(listener, registry) => {}
                        _ = stopped => {}
                    }
                });
                drop(runtime);
                drop(kept);
            })?;
        Ok(MetricsServer {
            addr,
            stop: Some(stop),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

async fn accept(listener: TcpListener, registry: Arc<Registry>) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            // Out of file descriptors, say: wait rather than spin.
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            drop(stream);
            continue;
        };
        let registry = registry.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                let registry = registry.clone();
                async move { Ok::<_, Infallible>(answer(&request, &registry)) }
            });
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEAD_TIMEOUT)
                .max_buf_size(MAX_HEAD_BYTES)
                .max_headers(MAX_HEADERS)
                .keep_alive(false)
                .serve_connection(TokioIo::new(stream), service);
            let _ = tokio::time::timeout(CONNECTION_TIME, connection).await;
            drop(slot);
        });
    }
}

fn answer(request: &Request<Incoming>, registry: &Registry) -> Response<String> {
    let (status, body) = match (request.method(), request.uri().path()) {
        (&Method::GET, "/metrics") => (StatusCode::OK, render(registry)),
        _ => (StatusCode::NOT_FOUND, "try /metrics\n".to_owned()),
    };
    let mut response = Response::new(body);
    *response.status_mut() = status;
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        ),
    );
    response
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;
    use crate::api::memory::MemoryApi;
    use crate::fs::FsConfig;

    /// Each series' name and label names, as dashboards and alerts use them.
    fn series(text: &str) -> BTreeSet<String> {
        text.lines()
            .filter(|l| !l.starts_with('#'))
            .map(|l| {
                let name_and_labels = l.rsplit_once(' ').map_or(l, |(s, _)| s);
                match name_and_labels.split_once('{') {
                    None => name_and_labels.to_owned(),
                    Some((name, labels)) => {
                        let keys: Vec<&str> = labels
                            .trim_end_matches('}')
                            .split(',')
                            .filter_map(|kv| kv.split_once('=').map(|(k, _)| k))
                            .filter(|k| *k != "le")
                            .collect();
                        format!("{name}{{{}}}", keys.join(","))
                    }
                }
            })
            .collect()
    }

    #[test]
    fn the_exposition_keeps_its_names_and_labels() {
        let core = FaceFs::new(Arc::new(MemoryApi::new()), FsConfig::default(), None);
        let registry = registry(&Layers {
            api: &ApiMetrics::default(),
            core: &core,
            store: None,
            events: None,
            fleet: None,
            fuse: &FuseMetrics::default(),
        });
        let text = render(&registry);
        let got = series(&text);
        let pinned: BTreeSet<String> = [
            "facefs_api_requests_total{endpoint,outcome}",
            "facefs_api_retries_total",
            "facefs_api_throttled_total",
            "facefs_token_renewals_total",
            "facefs_cache_hits_total",
            "facefs_cache_misses_total",
            "facefs_cache_bytes",
            "facefs_cache_faces",
            "facefs_cache_evictions_total",
            "facefs_downloads_in_flight",
            "facefs_stale_served_total",
            "facefs_kernel_invalidations_total",
            "facefs_kernel_faces",
            "facefs_uploads_total",
            "facefs_uploaded_bytes_total",
            "facefs_store_hits_total",
            "facefs_store_writes_total",
            "facefs_store_discarded_total",
            "facefs_store_listing_writes_total",
            "facefs_store_abandoned_total",
            "facefs_store_writes_dropped_total",
            "facefs_store_evictions_total",
            "facefs_store_bytes",
            "facefs_store_faces",
            "facefs_events_total",
            "facefs_event_duplicates_total",
            "facefs_events_ignored_total",
            "facefs_event_connects_total",
            "facefs_event_connection_up",
            "facefs_event_connection_failed",
            "facefs_redis_up",
            "facefs_redis_failures_total",
            "facefs_fleet_members",
            "facefs_fleet_requests_this_month",
            "facefs_fleet_hits_total",
            "facefs_fleet_events_total",
            "facefs_fleet_rejected_total",
            "facefs_fuse_op_seconds_bucket{op}",
            "facefs_fuse_op_seconds_sum{op}",
            "facefs_fuse_op_seconds_count{op}",
            "facefs_fuse_errors_total{op,errno}",
        ]
        .into_iter()
        .map(String::from)
        .collect();
        assert_eq!(got, pinned, "{text}");
        // Every label combination is there from the start, at 0.
        for line in [
            "facefs_api_requests_total{endpoint=\"upload\",outcome=\"denied\"} 0",
            "facefs_fuse_errors_total{op=\"lookup\",errno=\"ENOENT\"} 0",
            "facefs_fuse_op_seconds_count{op=\"mkdir\"} 0",
        ] {
            assert!(text.lines().any(|l| l == line), "no {line} in\n{text}");
        }
    }

    #[test]
    fn each_layer_counts_into_the_registry() {
        let core = FaceFs::new(Arc::new(MemoryApi::new()), FsConfig::default(), None);
        let (api, fuse) = (ApiMetrics::default(), FuseMetrics::default());
        let registry = registry(&Layers {
            api: &api,
            core: &core,
            store: None,
            events: None,
            fleet: None,
            fuse: &fuse,
        });
        api.request(
            crate::api::Endpoint::Face,
            crate::api::metrics::Outcome::Throttled,
        );
        fuse.op(
            crate::fuse::metrics::FuseOp::Lookup,
            Duration::from_millis(5),
            0,
        );
        fuse.op(
            crate::fuse::metrics::FuseOp::Lookup,
            Duration::from_millis(50),
            libc::ENOENT,
        );
        core.metrics().cache(false);
        let text = render(&registry);
        for line in [
            "facefs_api_requests_total{endpoint=\"face\",outcome=\"throttled\"} 1",
            "facefs_api_throttled_total 1",
            "facefs_fuse_op_seconds_count{op=\"lookup\"} 2",
            "facefs_fuse_errors_total{op=\"lookup\",errno=\"ENOENT\"} 1",
            "facefs_cache_misses_total 1",
            "facefs_downloads_in_flight 0",
        ] {
            assert!(text.lines().any(|l| l == line), "no {line} in\n{text}");
        }
    }
}
