//! The WebSocket of the long connection, under time bounds of its own:
//! every socket read ends by a deadline the reader sets (a tick), also
//! while bytes trickle in, so the reader gets back to its stop flag, its
//! ping and its frame and pong deadlines however the server sends. The
//! WebSocket library keeps a frame read halfway and goes on with it.
//!
//! The connection URL carries an access key and a ticket: no error text
//! that could hold it is passed on.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tungstenite::protocol::WebSocketConfig;
use tungstenite::stream::MaybeTlsStream;
use tungstenite::WebSocket;

use super::connection::{Ended, Reached};

/// The largest frame or message accepted: events are a few KB (and split
/// into fragments by the service when large).
pub const MAX_MESSAGE: usize = 1 << 20;

/// The clock the reader sets and the socket obeys, and what it counts.
#[derive(Clone)]
pub struct Pace(Arc<PaceState>);

struct PaceState {
    start: Instant,
    /// Until when reads may wait, in ms since `start`.
    until_ms: AtomicU64,
    /// Bytes received on the socket.
    received: AtomicU64,
}

impl Pace {
    fn new() -> Pace {
        Pace(Arc::new(PaceState {
            start: Instant::now(),
            until_ms: AtomicU64::new(0),
            received: AtomicU64::new(0),
        }))
    }

    /// Reads and writes wait at most until `at`.
    pub fn until(&self, at: Instant) {
        let ms = at.saturating_duration_since(self.0.start).as_millis() as u64;
        self.0.until_ms.store(ms, Ordering::Relaxed);
    }

    /// Bytes received so far.
    pub fn received(&self) -> u64 {
        self.0.received.load(Ordering::Relaxed)
    }

    /// Time left, or `WouldBlock` (a tick over, not an error) if none.
    fn left(&self) -> io::Result<Duration> {
        let until = self.0.start + Duration::from_millis(self.0.until_ms.load(Ordering::Relaxed));
        match until.saturating_duration_since(Instant::now()) {
            left if left.is_zero() => Err(io::ErrorKind::WouldBlock.into()),
            left => Ok(left),
        }
    }
}

/// A TCP stream whose every read and write ends by the pace's deadline.
pub struct PacedStream {
    tcp: TcpStream,
    pace: Pace,
}

impl Read for PacedStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.tcp.set_read_timeout(Some(self.pace.left()?))?;
        let n = self.tcp.read(buf)?;
        self.pace.0.received.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}

impl Write for PacedStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.tcp.set_write_timeout(Some(self.pace.left()?))?;
        self.tcp.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.tcp.flush()
    }
}

pub type Socket = WebSocket<MaybeTlsStream<PacedStream>>;

/// Connects and shakes hands by `timeout`; the socket comes back with its pace.
pub(super) fn connect(url: &reqwest::Url, timeout: Duration) -> Result<(Socket, Pace), Ended> {
    let retry = |why: String| Ended::Retry {
        why,
        reached: Reached::Nothing,
    };
    let host = url.host_str().unwrap_or_default().to_owned();
    let port = url.port_or_known_default().unwrap_or(443);
    let deadline = Instant::now() + timeout;
    let tcp = crate::net::connect_by(&host, port, deadline)
        .map_err(|e| retry(format!("cannot connect to {host}: {e}")))?;
    let pace = Pace::new();
    pace.until(deadline);
    let stream = PacedStream {
        tcp,
        pace: pace.clone(),
    };
    let config = WebSocketConfig::default()
        .max_message_size(Some(MAX_MESSAGE))
        .max_frame_size(Some(MAX_MESSAGE));
    match tungstenite::client_tls_with_config(url.as_str(), stream, Some(config), None) {
        Ok((socket, _)) => Ok((socket, pace)),
        Err(tungstenite::HandshakeError::Failure(tungstenite::Error::Http(answer))) => {
            let header = |name: &str| {
                let value = answer.headers().get(name).and_then(|v| v.to_str().ok());
                crate::text::shown(value.unwrap_or("")).to_string()
            };
            let (status, auth) = (header("Handshake-Status"), header("Handshake-Autherrcode"));
            let why = format!(
                "the handshake was refused (HTTP {}, Handshake-Status {status}, Handshake-Autherrcode {auth}: {})",
                answer.status().as_u16(),
                header("Handshake-Msg")
            );
            if status == "403"
                || (status == "514" && auth == super::connection::TOO_MANY_CONNECTIONS.to_string())
            {
                Err(Ended::Fatal(format!(
                    "{why}; 403 is a banned app, 1000040350 more than 50 connections for the app"
                )))
            } else {
                Err(retry(why))
            }
        }
        Err(tungstenite::HandshakeError::Interrupted(_)) => Err(retry(format!(
            "the WebSocket handshake with {host} took over {timeout:?}"
        ))),
        // tungstenite's errors may hold the URL: only the kind is told.
        Err(_) => Err(retry(format!("the WebSocket handshake with {host} failed"))),
    }
}

/// What went wrong, without anything that could hold the URL.
pub fn error_kind(e: &tungstenite::Error) -> String {
    match e {
        tungstenite::Error::Io(e) => e.kind().to_string(),
        tungstenite::Error::Tls(_) => "TLS error".into(),
        tungstenite::Error::Protocol(p) => format!("protocol error: {p}"),
        tungstenite::Error::Capacity(c) => format!("capacity: {c}"),
        _ => "WebSocket error".into(),
    }
}
