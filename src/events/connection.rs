//! The long connection itself: one thread that bootstraps, connects, pings,
//! reads frames, acknowledges each whole message at once, and reconnects on
//! the schedule the server's ClientConfig gives (held to bounds, see
//! [`super::bootstrap`]). It follows the Go SDK (`ws/client.go`) where the
//! SDKs differ, with additions the SDKs lack:
//! - deadlines a server cannot stretch: a ping unanswered for
//!   [`PONG_WAIT`], or a frame begun and not whole within [`FRAME_WAIT`],
//!   ends the connection (and with it the trust `--ttl-with-events` gives),
//!   however slowly bytes keep coming;
//! - back-off: connections that keep failing before their first pong (or
//!   never come up) are tried again after exponentially longer waits with
//!   jitter, up to [`MAX_BACKOFF`], whatever the server's ReconnectInterval
//!   says; and bootstraps are rationed (20 at once, then one per 6 s);
//! - acks of 200 for event types facefs ignores (lark_oapi answers those
//!   500, which makes the service push them again for hours);
//! - warnings about what the server sends, at most 10 a minute each.
//!
//! The connection URL carries an access key and a ticket: it is never
//! logged, nor is any error text that could hold it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tungstenite::Message;

use super::bootstrap::{bootstrap, Schedule};
use super::frame::{self, Frame};
use super::message::{self, Event, Fragments, SeenEvents, UserChange};
use super::metrics::EventMetrics;
use super::socket::{connect, error_kind, Pace, Socket};
use crate::api::secret::Secret;
use crate::hash::random_up_to;
use crate::repeated_warning::RepeatedWarning;
use crate::text::shown;

/// The handshake's auth error for "too many connections" (50 per app).
pub(super) const TOO_MANY_CONNECTIONS: i64 = 1_000_040_350;
/// How often the reader wakes to ping, watch and check for a stop.
const TICK: Duration = Duration::from_millis(200);
/// How long a ping may go unanswered.
pub const PONG_WAIT: Duration = Duration::from_secs(10);
/// How long a frame may take from its first byte to its last.
pub const FRAME_WAIT: Duration = Duration::from_secs(10);
/// The first and the longest back-off after connections that never work.
const MIN_BACKOFF: Duration = Duration::from_secs(1);
pub const MAX_BACKOFF: Duration = Duration::from_secs(300);
/// How long dropping the connection waits for its thread (which checks
/// its stop flag every tick, but may be in a bootstrap request).
const JOIN_WAIT: Duration = Duration::from_secs(2);
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

/// How a connection ended.
pub(super) enum Ended {
    Stopped,
    /// Worth another try later, after a connection that got this far.
    Retry {
        why: String,
        reached: Reached,
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
    /// Stops the thread and waits for it a moment: never longer, so that a
    /// bootstrap request in flight cannot hold up the process's exit.
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let until = Instant::now() + JOIN_WAIT;
            while !thread.is_finished() && Instant::now() < until {
                std::thread::sleep(Duration::from_millis(10));
            }
            if thread.is_finished() {
                let _ = thread.join();
            } else {
                log::debug!("the event connection's thread is still busy; not waiting for it");
            }
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

/// How long to wait before the next try, after `failures` in a row (each
/// a connection that never worked): the server's schedule,
/// but from the second failure on at least a back-off doubling from
/// [`MIN_BACKOFF`] to [`MAX_BACKOFF`], its upper half random.
fn next_wait(failures: u32, schedule: &Schedule) -> Duration {
    if failures <= 1 {
        // A random first delay, so that many mounts do not come back at once.
        return random_up_to(schedule.reconnect_nonce);
    }
    let backoff = MIN_BACKOFF
        .saturating_mul(1 << (failures - 2).min(16))
        .min(MAX_BACKOFF);
    schedule
        .reconnect_interval
        .max(backoff / 2 + random_up_to(backoff / 2))
}

/// How far a connection got before it ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Reached {
    Nothing,
    /// Connected (restarts the count of tries the server's ReconnectCount
    /// allows).
    Connected,
    /// Its pings were answered: a working connection (restarts the back-off).
    Answered,
}

/// Bootstraps (each carries the app secret) at most [`BOOTSTRAP_BURST`]
/// at once, then one per [`BOOTSTRAP_EVERY`], however connections end.
const BOOTSTRAP_BURST: f64 = 20.0;
const BOOTSTRAP_EVERY: Duration = Duration::from_secs(6);

struct BootstrapBudget {
    tokens: f64,
    at: Instant,
}

impl BootstrapBudget {
    /// How long until the next bootstrap may go; takes its token.
    fn take(&mut self, now: Instant) -> Duration {
        let refill = now.duration_since(self.at).as_secs_f64() / BOOTSTRAP_EVERY.as_secs_f64();
        self.tokens = (self.tokens + refill).min(BOOTSTRAP_BURST) - 1.0;
        self.at = now;
        if self.tokens >= 0.0 {
            Duration::ZERO
        } else {
            BOOTSTRAP_EVERY.mul_f64(-self.tokens)
        }
    }
}

/// What every connection of the thread shares.
struct Listener<'a> {
    sink: &'a dyn ChangeSink,
    stop: &'a AtomicBool,
    status: &'a ConnectionStatus,
    schedule: Schedule,
    seen: SeenEvents,
    warnings: Warnings,
}

/// Warnings about what the server sends, each at most 10 a minute.
#[derive(Default)]
struct Warnings {
    frame: RepeatedWarning,
    event: RepeatedWarning,
}

fn run(config: &EventsConfig, sink: &dyn ChangeSink, stop: &AtomicBool, status: &ConnectionStatus) {
    let mut listener = Listener {
        sink,
        stop,
        status,
        schedule: Schedule::default(),
        seen: SeenEvents::new(SEEN_EVENTS),
        warnings: Warnings::default(),
    };
    // Tries since a connection last came up (for the server's
    // ReconnectCount), and failures since one last worked (for the
    // back-off).
    let (mut tries, mut failures): (u32, u32) = (0, 0);
    let mut budget = BootstrapBudget {
        tokens: BOOTSTRAP_BURST,
        at: Instant::now(),
    };
    loop {
        let wait = budget.take(Instant::now());
        if !wait.is_zero() {
            log::debug!("event long connection: bootstraps are rationed; the next in {wait:?}");
            if !pause(wait, stop) {
                return;
            }
        }
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
            Ended::Retry { why, reached } => {
                if reached >= Reached::Connected {
                    tries = 0;
                }
                if reached == Reached::Answered {
                    failures = 0;
                }
                tries = tries.saturating_add(1);
                failures = failures.saturating_add(1);
                if schedule.reconnect_count >= 0
                    && i64::from(tries) > schedule.reconnect_count.max(1)
                {
                    let why = format!("{why}; no connection after {} tries", tries - 1);
                    log::error!(
                        "the event long connection gave up: {why}; facefs goes on with --ttl alone"
                    );
                    status.metrics.connection_failed.set(1);
                    *status.fatal.lock() = Some(why);
                    return;
                }
                let wait = next_wait(failures, &schedule);
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
        .map(|(_, v)| shown(&v).to_string())
        .unwrap_or_default();
    let (mut socket, pace) = match connect(&url, config.timeout) {
        Ok(connected) => connected,
        Err(ended) => return ended,
    };
    log::info!("event long connection up (connection {connection_id})");
    listener.status.up.store(true, Ordering::SeqCst);
    listener.status.metrics.connection(true);
    listener.sink.connected(true);
    let ended = read_frames(&mut socket, &pace, service, listener);
    listener.status.up.store(false, Ordering::SeqCst);
    listener.status.metrics.connection(false);
    listener.sink.connected(false);
    // A last word, under a short bound: the server may not be reading.
    pace.until(Instant::now() + TICK);
    let _ = socket.close(None);
    let _ = socket.flush();
    ended
}

/// The deadlines the reader keeps, besides its stop flag.
struct Deadlines {
    next_ping: Instant,
    /// When the ping now unanswered went out.
    unanswered_since: Option<Instant>,
    /// Bytes received when the last whole message came.
    received_at_last_message: u64,
    /// Since when bytes of a frame not yet whole have been coming.
    partial_since: Option<Instant>,
}

fn read_frames(socket: &mut Socket, pace: &Pace, service: i32, listener: &mut Listener) -> Ended {
    let Listener {
        sink,
        stop,
        status,
        schedule,
        seen,
        warnings,
    } = listener;
    let mut reached = Reached::Connected;
    let retry = |why: String, reached: Reached| Ended::Retry { why, reached };
    let mut fragments = Fragments::default();
    // The first ping goes at once, as in every SDK.
    let mut deadlines = Deadlines {
        next_ping: Instant::now(),
        unanswered_since: None,
        received_at_last_message: pace.received(),
        partial_since: None,
    };
    loop {
        if stop.load(Ordering::SeqCst) {
            return Ended::Stopped;
        }
        let now = Instant::now();
        if now >= deadlines.next_ping {
            pace.until(now + PONG_WAIT);
            let ping = Frame::control(service, "ping").to_bytes();
            if socket.send(Message::Binary(ping.into())).is_err() {
                return retry("cannot send a ping".into(), reached);
            }
            deadlines.unanswered_since.get_or_insert(now);
            deadlines.next_ping = now + schedule.ping_interval;
        }
        if let Some(since) = deadlines.unanswered_since {
            if now.duration_since(since) > PONG_WAIT {
                return retry(format!("a ping went unanswered for {PONG_WAIT:?}"), reached);
            }
        }
        if let Some(since) = deadlines.partial_since {
            if now.duration_since(since) > FRAME_WAIT {
                return retry(
                    format!("a frame did not arrive whole within {FRAME_WAIT:?}"),
                    reached,
                );
            }
        }
        pace.until(now + TICK);
        let message = match socket.read() {
            Ok(message) => message,
            Err(tungstenite::Error::Io(e))
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                if pace.received() > deadlines.received_at_last_message {
                    deadlines.partial_since.get_or_insert(now);
                }
                // Pongs to the server's WebSocket pings go out on a flush.
                let _ = socket.flush();
                continue;
            }
            Err(tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed) => {
                return retry("the server closed the connection".into(), reached)
            }
            Err(e) => return retry(format!("reading failed: {}", error_kind(&e)), reached),
        };
        deadlines.received_at_last_message = pace.received();
        deadlines.partial_since = None;
        let bytes = match message {
            Message::Binary(bytes) => bytes,
            Message::Close(_) => return retry("the server closed the connection".into(), reached),
            _ => continue,
        };
        let Ok(frame) = Frame::from_bytes(&bytes) else {
            warnings
                .frame
                .warn(|| "event long connection: a frame that is not pbbp2; ignored".into());
            continue;
        };
        match (frame.method, frame.header(frame::TYPE)) {
            (frame::CONTROL, Some("pong")) => {
                deadlines.unanswered_since = None;
                reached = Reached::Answered;
                let config = frame
                    .payload
                    .as_deref()
                    .filter(|p| !p.is_empty())
                    .and_then(|p| serde_json::from_slice::<serde_json::Value>(p).ok());
                if let Some(config) = config {
                    let last_ping = deadlines.next_ping - schedule.ping_interval;
                    schedule.apply(&config);
                    // A new interval counts from the last ping, not the next.
                    deadlines.next_ping = last_ping + schedule.ping_interval;
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
                handle(&payload, seen, *sink, &status.metrics, &warnings.event);
                let ack = frame.ack(started.elapsed().as_millis() as u64);
                pace.until(Instant::now() + PONG_WAIT);
                if socket.send(Message::Binary(ack.to_bytes().into())).is_err() {
                    return retry("cannot send an acknowledgement".into(), reached);
                }
            }
            // Cards and anything else: not for facefs.
            _ => {}
        }
    }
}

fn handle(
    payload: &[u8],
    seen: &mut SeenEvents,
    sink: &dyn ChangeSink,
    metrics: &EventMetrics,
    warning: &RepeatedWarning,
) {
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
            warning.warn(|| {
                let cause = std::error::Error::source(&why).map(|c| format!(": {c}"));
                format!(
                    "event long connection: {why}{}; acknowledged and dropped",
                    cause.unwrap_or_default()
                )
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_that_never_work_are_tried_ever_less_often() {
        let schedule = Schedule {
            reconnect_nonce: Duration::ZERO,
            reconnect_interval: Duration::from_secs(1),
            ..Schedule::default()
        };
        assert_eq!(next_wait(1, &schedule), Duration::ZERO);
        let mut elapsed = Duration::ZERO;
        let mut tries_in_a_minute = 0;
        for failures in 1.. {
            elapsed += next_wait(failures, &schedule);
            if elapsed > Duration::from_secs(60) {
                break;
            }
            tries_in_a_minute += 1;
        }
        assert!((6..=9).contains(&tries_in_a_minute), "{tries_in_a_minute}");
        let late = next_wait(40, &schedule);
        assert!(late >= MAX_BACKOFF / 2 && late <= MAX_BACKOFF, "{late:?}");
        // The server's longer interval still holds.
        let patient = Schedule {
            reconnect_interval: Duration::from_secs(120),
            ..schedule
        };
        assert_eq!(next_wait(2, &patient), Duration::from_secs(120));
    }

    #[test]
    fn bootstraps_are_rationed_whatever_ends_the_connections() {
        let start = Instant::now();
        let mut budget = BootstrapBudget {
            tokens: BOOTSTRAP_BURST,
            at: start,
        };
        let mut at = start;
        let mut sent = 0;
        // Tries as fast as the budget lets, for ten minutes.
        while at < start + Duration::from_secs(600) {
            at += budget.take(at);
            sent += 1;
        }
        assert_eq!(sent, 20 + 600 / 6);
    }
}
