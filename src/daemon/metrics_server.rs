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

use crate::fs::Usage;
use crate::metrics::METRICS;

/// hyper's smallest read buffer, and so the largest request head.
const MAX_HEAD_BYTES: usize = 8 * 1024;
const MAX_HEADERS: usize = 32;
const HEAD_TIMEOUT: Duration = Duration::from_secs(5);
const CONNECTION_TIME: Duration = Duration::from_secs(10);
const MAX_CONNECTIONS: usize = 64;

type UsageFn = Arc<dyn Fn() -> Usage + Send + Sync>;

/// The running server; dropping it stops it.
pub struct MetricsServer {
    addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl MetricsServer {
    pub fn start(addr: &str, usage: UsageFn) -> std::io::Result<MetricsServer> {
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
                runtime.block_on(async {
                    tokio::select! {
                        _ = accept(listener, usage) => {}
                        _ = stopped => {}
                    }
                });
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

async fn accept(listener: TcpListener, usage: UsageFn) {
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
        let usage = usage.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                let usage = usage.clone();
                async move { Ok::<_, Infallible>(answer(&request, &*usage)) }
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

fn answer(request: &Request<Incoming>, usage: &dyn Fn() -> Usage) -> Response<String> {
    let (status, body) = match (request.method(), request.uri().path()) {
        (&Method::GET, "/metrics") => (StatusCode::OK, METRICS.render(&usage())),
        _ => (StatusCode::NOT_FOUND, "try /metrics\n".to_owned()),
    };
    let mut response = Response::new(body);
    *response.status_mut() = status;
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/plain; version=0.0.4"),
    );
    response
}
