//! The long connection itself: one thread that bootstraps, connects, pings,
//! reads frames, acknowledges each whole message at once, and reconnects on
//! the schedule the server's ClientConfig gives. It follows the Go SDK
//! (`ws/client.go`) where the SDKs differ, with two additions the SDKs
//! lack: a watchdog (nothing received for two ping intervals and 5 s ends
//! the connection, as larksuite-oapi-sdk-rs does) and acks of 200 for event
//! types facefs ignores (lark_oapi answers those 500, which makes the
//! service push them again for hours).
//!
//! The connection URL carries an access key and a ticket: it is never
//! logged, nor is any error text that could hold it.

use std::net::{TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tungstenite::stream::MaybeTlsStream;
use tungstenite::{Message, WebSocket};

use super::frame::{self, Frame};
use super::message::{self, Event, Fragments, SeenEvents, UserChange};
use super::metrics::EventMetrics;
use crate::api::secret::Secret;

/// Bootstrap codes worth retrying ("system busy", "internal error"); any
/// other non-zero code is a refusal that retrying will not change.
const RETRYABLE_CODES: [i64; 2] = [1, 1_000_040_343];
/// The handshake's auth error for "too many connections" (50 per app).
const TOO_MANY_CONNECTIONS: i64 = 1_000_040_350;
/// How often the reader wakes to ping, watch and check for a stop.
const TICK: Duration = Duration::from_millis(200);
/// Event ids remembered for deduplication (the service re-pushes an
/// unacknowledged event four times over about seven hours).
const SEEN_EVENTS: usize = 16_384;

/// What to do with what arrives.
pub trait ChangeSink: Send + Sync {
    /// Must return fast: the ack waits for it (and has 3 s).
    fn user_changed(&self, change: &UserChange);
    /// The connection went up or down.
    fn connected(&self, up: bool);
}

pub struct EventsConfig {
    pub base_url: reqwest::Url,
    pub app_id: String,
    pub app_secret: Secret,
    /// Bound on the bootstrap request and the connect.
    pub timeout: Duration,
}

/// The ClientConfig: the SDKs' defaults until the server sends its own.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Schedule {
    reconnect_count: i64,
    reconnect_interval: Duration,
    reconnect_nonce: Duration,
    ping_interval: Duration,
}

impl Default for Schedule {
    fn default() -> Schedule {
        Schedule {
            reconnect_count: -1,
            reconnect_interval: Duration::from_secs(120),
            reconnect_nonce: Duration::from_secs(30),
            ping_interval: Duration::from_secs(120),
        }
    }
}

impl Schedule {
    /// Applies a ClientConfig JSON object (seconds); fields it lacks or
    /// holds nonsense in stay as they were.
    fn apply(&mut self, config: &serde_json::Value) {
        let secs = |name: &str, min: u64| {
            config
                .get(name)
                .and_then(|v| v.as_u64())
                .filter(|s| *s >= min && *s <= 86_400)
                .map(Duration::from_secs)
        };
        if let Some(count) = config.get("ReconnectCount").and_then(|v| v.as_i64()) {
            self.reconnect_count = count;
        }
        self.reconnect_interval = secs("ReconnectInterval", 1).unwrap_or(self.reconnect_interval);
        self.reconnect_nonce = secs("ReconnectNonce", 0).unwrap_or(self.reconnect_nonce);
        self.ping_interval = secs("PingInterval", 1).unwrap_or(self.ping_interval);
    }

    fn watchdog(&self) -> Duration {
        self.ping_interval * 2 + Duration::from_secs(5)
    }
}

/// How a connection ended.
enum Ended {
    Stopped,
    /// Worth another try later; `connected` says whether it got as far as
    /// a working connection (which restarts the reconnect count).
    Retry {
        why: String,
        connected: bool,
    },
    /// A refusal that retrying will not change.
    Fatal(String),
}

/// What the rest of facefs can see of the connection.
#[derive(Default)]
pub struct ConnectionStatus {
    pub up: AtomicBool,
    /// Why the connection gave up for good, if it did.
    pub fatal: Mutex<Option<String>>,
    pub metrics: EventMetrics,
}

pub struct EventConnection {
    stop: Arc<AtomicBool>,
    pub status: Arc<ConnectionStatus>,
    thread: Option<JoinHandle<()>>,
}

impl EventConnection {
    pub fn start(
        config: EventsConfig,
        sink: Arc<dyn ChangeSink>,
    ) -> std::io::Result<EventConnection> {
        let stop = Arc::new(AtomicBool::new(false));
        let status = Arc::new(ConnectionStatus::default());
        let (thread_stop, thread_status) = (stop.clone(), status.clone());
        let thread = std::thread::Builder::new()
            .name("facefs-events".into())
            .spawn(move || run(&config, &*sink, &thread_stop, &thread_status))?;
        Ok(EventConnection {
            stop,
            status,
            thread: Some(thread),
        })
    }
}

impl Drop for EventConnection {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Sleeps `length`, waking early to stop.
fn pause(length: Duration, stop: &AtomicBool) -> bool {
    let until = Instant::now() + length;
    while Instant::now() < until {
        if stop.load(Ordering::SeqCst) {
            return false;
        }
        std::thread::sleep(TICK.min(until.saturating_duration_since(Instant::now())));
    }
    !stop.load(Ordering::SeqCst)
}

fn jitter(up_to: Duration) -> Duration {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos() as u64);
    let span = up_to.as_millis() as u64;
    Duration::from_millis(if span == 0 { 0 } else { nanos % span })
}

/// What every connection of the thread shares.
struct Listener<'a> {
    sink: &'a dyn ChangeSink,
    stop: &'a AtomicBool,
    status: &'a ConnectionStatus,
    schedule: Schedule,
    seen: SeenEvents,
}

fn run(config: &EventsConfig, sink: &dyn ChangeSink, stop: &AtomicBool, status: &ConnectionStatus) {
    let mut listener = Listener {
        sink,
        stop,
        status,
        schedule: Schedule::default(),
        seen: SeenEvents::new(SEEN_EVENTS),
    };
    let mut failures: i64 = 0;
    loop {
        let ended = session(config, &mut listener);
        let schedule = listener.schedule;
        match ended {
            Ended::Stopped => return,
            Ended::Fatal(why) => {
                log::error!(
                    "the event long connection gave up: {why}; facefs goes on with --ttl alone"
                );
                status.metrics.connection_failed.set(1);
                *status.fatal.lock() = Some(why);
                return;
            }
            Ended::Retry { why, connected } => {
                if connected {
                    failures = 0;
                }
                failures += 1;
                if schedule.reconnect_count >= 0 && failures > schedule.reconnect_count.max(1) {
                    let why = format!("{why}; no connection after {} tries", failures - 1);
                    log::error!(
                        "the event long connection gave up: {why}; facefs goes on with --ttl alone"
                    );
                    status.metrics.connection_failed.set(1);
                    *status.fatal.lock() = Some(why);
                    return;
                }
                // A random first delay, so that many mounts do not come back at once.
                let wait = if failures == 1 {
                    jitter(schedule.reconnect_nonce)
                } else {
                    schedule.reconnect_interval
                };
                log::warn!(
                    "the event long connection is down ({why}); connecting again in {wait:?}"
                );
                if !pause(wait, stop) {
                    return;
                }
            }
        }
    }
}

/// The bootstrap: the connection URL for this app, and the server's
/// ClientConfig.
fn bootstrap(config: &EventsConfig, schedule: &mut Schedule) -> Result<reqwest::Url, Ended> {
    let retry = |why: String| Ended::Retry {
        why,
        connected: false,
    };
    let client = reqwest::blocking::Client::builder()
        .timeout(config.timeout)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(|e| retry(format!("cannot build an HTTP client: {e}")))?;
    let endpoint = config
        .base_url
        .join("/callback/ws/endpoint")
        .map_err(|e| Ended::Fatal(format!("no bootstrap URL: {e}")))?;
    let body =
        serde_json::json!({ "AppID": config.app_id, "AppSecret": config.app_secret.expose() });
    let answer = client
        .post(endpoint)
        .header("locale", "zh")
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .body(body.to_string())
        .send()
        .map_err(|e| retry(format!("the bootstrap request failed: {}", e.without_url())))?;
    if answer.status() != reqwest::StatusCode::OK {
        return Err(retry(format!(
            "the bootstrap answered HTTP {}",
            answer.status()
        )));
    }
    let value: serde_json::Value = answer
        .bytes()
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or_else(|| retry("the bootstrap answer is not JSON".into()))?;
    let code = value.get("code").and_then(|c| c.as_i64()).unwrap_or(-1);
    let msg = value.get("msg").and_then(|m| m.as_str()).unwrap_or("");
    if code != 0 {
        let why = format!("the bootstrap answered code {code} ({msg})");
        return Err(if RETRYABLE_CODES.contains(&code) {
            retry(why)
        } else {
            Ended::Fatal(format!(
                "{why}: check the app id and secret, and that the app is a self-built app subscribed to events in long-connection mode"
            ))
        });
    }
    if let Some(client_config) = value.pointer("/data/ClientConfig") {
        schedule.apply(client_config);
    }
    let url = value
        .pointer("/data/URL")
        .and_then(|u| u.as_str())
        .and_then(|u| reqwest::Url::parse(u).ok())
        .ok_or_else(|| retry("the bootstrap answer has no connection URL".into()))?;
    let loopback = url.host().is_some_and(|h| match h {
        url::Host::Domain(d) => d == "localhost",
        url::Host::Ipv4(ip) => ip.is_loopback(),
        url::Host::Ipv6(ip) => ip.is_loopback(),
    });
    match url.scheme() {
        "wss" => Ok(url),
        "ws" if loopback => Ok(url),
        _ => Err(Ended::Fatal(
            "the bootstrap gave a connection URL that is not wss:// (plaintext ws:// is accepted only to loopback)".into(),
        )),
    }
}

type Socket = WebSocket<MaybeTlsStream<TcpStream>>;

fn connect(url: &reqwest::Url, timeout: Duration) -> Result<Socket, Ended> {
    let retry = |why: String| Ended::Retry {
        why,
        connected: false,
    };
    let host = url.host_str().unwrap_or_default().to_owned();
    let port = url.port_or_known_default().unwrap_or(443);
    let addr = (host.as_str(), port)
        .to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .ok_or_else(|| retry(format!("cannot resolve {host}")))?;
    let stream = TcpStream::connect_timeout(&addr, timeout)
        .map_err(|e| retry(format!("cannot connect to {host}: {e}")))?;
    let _ = stream.set_read_timeout(Some(timeout));
    let _ = stream.set_write_timeout(Some(timeout));
    match tungstenite::client_tls(url.as_str(), stream) {
        Ok((socket, _)) => {
            let _ = match socket.get_ref() {
                MaybeTlsStream::Plain(s) => s.set_read_timeout(Some(TICK)),
                MaybeTlsStream::Rustls(s) => s.get_ref().set_read_timeout(Some(TICK)),
                _ => Ok(()),
            };
            Ok(socket)
        }
        Err(tungstenite::HandshakeError::Failure(tungstenite::Error::Http(answer))) => {
            let header = |name: &str| {
                answer
                    .headers()
                    .get(name)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .to_owned()
            };
            let (status, auth) = (header("Handshake-Status"), header("Handshake-Autherrcode"));
            let why = format!(
                "the handshake was refused (HTTP {}, Handshake-Status {status}, Handshake-Autherrcode {auth}: {})",
                answer.status().as_u16(),
                header("Handshake-Msg")
            );
            if status == "403" || (status == "514" && auth == TOO_MANY_CONNECTIONS.to_string()) {
                Err(Ended::Fatal(format!(
                    "{why}; 403 is a banned app, 1000040350 more than 50 connections for the app"
                )))
            } else {
                Err(retry(why))
            }
        }
        // tungstenite's errors may hold the URL: only the kind is told.
        Err(_) => Err(retry(format!("the WebSocket handshake with {host} failed"))),
    }
}

fn session(config: &EventsConfig, listener: &mut Listener) -> Ended {
    let url = match bootstrap(config, &mut listener.schedule) {
        Ok(url) => url,
        Err(ended) => return ended,
    };
    let service: i32 = url
        .query_pairs()
        .find(|(k, _)| k == "service_id")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    let connection_id = url
        .query_pairs()
        .find(|(k, _)| k == "device_id")
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default();
    let mut socket = match connect(&url, config.timeout) {
        Ok(socket) => socket,
        Err(ended) => return ended,
    };
    log::info!("event long connection up (connection {connection_id})");
    listener.status.up.store(true, Ordering::SeqCst);
    listener.status.metrics.connection(true);
    listener.sink.connected(true);
    let ended = read_frames(&mut socket, service, listener);
    listener.status.up.store(false, Ordering::SeqCst);
    listener.status.metrics.connection(false);
    listener.sink.connected(false);
    let _ = socket.close(None);
    let _ = socket.flush();
    ended
}

fn read_frames(socket: &mut Socket, service: i32, listener: &mut Listener) -> Ended {
    let Listener {
        sink,
        stop,
        status,
        schedule,
        seen,
    } = listener;
    let retry = |why: String| Ended::Retry {
        why,
        connected: true,
    };
    let mut fragments = Fragments::default();
    // The first ping goes at once, as in every SDK.
    let mut next_ping = Instant::now();
    let mut last_ping = Instant::now();
    let mut last_heard = Instant::now();
    loop {
        if stop.load(Ordering::SeqCst) {
            return Ended::Stopped;
        }
        let now = Instant::now();
        if now >= next_ping {
            let ping = Frame::control(service, "ping").to_bytes();
            if socket.send(Message::Binary(ping.into())).is_err() {
                return retry("cannot send a ping".into());
            }
            last_ping = now;
            next_ping = now + schedule.ping_interval;
        }
        if now.saturating_duration_since(last_heard) > schedule.watchdog() {
            return retry(format!("nothing received for {:?}", schedule.watchdog()));
        }
        let message = match socket.read() {
            Ok(message) => message,
            Err(tungstenite::Error::Io(e))
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                // Pongs to the server's WebSocket pings go out on a flush.
                let _ = socket.flush();
                continue;
            }
            Err(tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed) => {
                return retry("the server closed the connection".into())
            }
            Err(e) => return retry(format!("reading failed: {}", error_kind(&e))),
        };
        last_heard = Instant::now();
        let bytes = match message {
            Message::Binary(bytes) => bytes,
            Message::Close(_) => return retry("the server closed the connection".into()),
            _ => continue,
        };
        let Ok(frame) = Frame::from_bytes(&bytes) else {
            log::warn!("event long connection: a frame that is not pbbp2; ignored");
            continue;
        };
        match (frame.method, frame.header(frame::TYPE)) {
            (frame::CONTROL, Some("pong")) => {
                let config = frame
                    .payload
                    .as_deref()
                    .filter(|p| !p.is_empty())
                    .and_then(|p| serde_json::from_slice::<serde_json::Value>(p).ok());
                if let Some(config) = config {
                    schedule.apply(&config);
                    // A new interval counts from the last ping, not the next.
                    next_ping = last_ping + schedule.ping_interval;
                }
            }
            (frame::DATA, Some("event")) => {
                let started = Instant::now();
                let header_number = |key: &str| frame.header(key).and_then(|v| v.parse().ok());
                let whole = fragments.add(
                    frame.header(frame::MESSAGE_ID).unwrap_or_default(),
                    header_number(frame::SUM).unwrap_or(1),
                    header_number(frame::SEQ).unwrap_or(0),
                    frame.payload.clone().unwrap_or_default(),
                    started,
                );
                // Only the fragment that completes a message is acknowledged.
                let Some(payload) = whole else { continue };
                handle(&payload, seen, *sink, &status.metrics);
                let ack = frame.ack(started.elapsed().as_millis() as u64);
                if socket.send(Message::Binary(ack.to_bytes().into())).is_err() {
                    return retry("cannot send an acknowledgement".into());
                }
            }
            // Cards and anything else: not for facefs.
            _ => {}
        }
    }
}

fn handle(payload: &[u8], seen: &mut SeenEvents, sink: &dyn ChangeSink, metrics: &EventMetrics) {
    match message::parse(payload) {
        Ok(Event::UserChanged(change)) => {
            if seen.first_time(&change.event_id) {
                metrics.events.inc();
                sink.user_changed(&change);
            } else {
                metrics.duplicates.inc();
                log::debug!(
                    "event {} again: acknowledged, already done",
                    change.event_id
                );
            }
        }
        Ok(Event::Other { event_type, .. }) => {
            metrics.ignored.inc();
            log::debug!("event {event_type}: not for facefs; acknowledged");
        }
        // Acknowledged all the same: a re-push would not read better.
        Err(why) => {
            metrics.ignored.inc();
            let cause = std::error::Error::source(&why).map(|c| format!(": {c}"));
            log::warn!(
                "event long connection: {why}{}; acknowledged and dropped",
                cause.unwrap_or_default()
            );
        }
    }
}

/// What went wrong, without anything that could hold the URL.
fn error_kind(e: &tungstenite::Error) -> String {
    match e {
        tungstenite::Error::Io(e) => e.kind().to_string(),
        tungstenite::Error::Tls(_) => "TLS error".into(),
        tungstenite::Error::Protocol(p) => format!("protocol error: {p}"),
        tungstenite::Error::Capacity(c) => format!("capacity: {c}"),
        _ => "WebSocket error".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_config_changes_only_what_it_sets_sensibly() {
        let mut s = Schedule::default();
        s.apply(&serde_json::json!({"PingInterval": 90, "ReconnectCount": 3, "ReconnectInterval": 0, "ReconnectNonce": "x"}));
        assert_eq!(s.ping_interval, Duration::from_secs(90));
        assert_eq!(s.reconnect_count, 3);
        assert_eq!(
            s.reconnect_interval,
            Duration::from_secs(120),
            "0 s is nonsense"
        );
        assert_eq!(s.reconnect_nonce, Duration::from_secs(30));
        assert_eq!(s.watchdog(), Duration::from_secs(185));
    }
}
