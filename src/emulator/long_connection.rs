//! The emulator's side of Feishu's event long connection: a WebSocket
//! server on its own loopback port speaking `pbbp2` frames, reached through
//! the URL that `POST /callback/ws/endpoint` hands out. It answers pings
//! with pongs carrying a client config, pushes events (split into
//! fragments when asked) to one connected client at random, as the real
//! service does for several clients of one app, and records the acks.

use std::collections::HashSet;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};
use tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tungstenite::{Message, WebSocket};

use crate::events::frame::{self, Frame, Header};

/// The `service_id` the URL carries and pings must repeat.
pub const SERVICE_ID: i32 = 33_554_678;

/// An acknowledgement the emulator received.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ack {
    pub message_id: String,
    /// The `code` of the ack's JSON payload.
    pub code: Option<i64>,
    pub biz_rt: Option<String>,
}

/// How the handshake of the next connections fails.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// `Handshake-Status: 403` (forbidden): fatal for the client.
    Forbidden,
    /// `Handshake-Status: 514` with `Handshake-Autherrcode: 1000040350`:
    /// too many connections, fatal.
    TooManyConnections,
    /// `Handshake-Status: 514`, another auth code: worth retrying.
    AuthRetry,
}

/// How the server misbehaves on each new connection, on purpose.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Misbehaviour {
    /// Closes the connection as soon as it is made.
    CloseAtOnce,
    /// Announces a 16 MiB frame and sends it one byte every 100 ms.
    TrickleFrame,
    /// Sends this many frames that are not `pbbp2`, as fast as it can,
    /// then serves as usual.
    MalformedFrames(usize),
    /// Sends this many events whose payload is not JSON, then serves as usual.
    BadEvents(usize),
}

enum Outgoing {
    Frame(Vec<u8>),
    /// End the connection without a close frame (a dead network).
    Drop,
    /// End it properly, with a close frame.
    Close,
    /// Misbehave from now on.
    Misbehave(Misbehaviour),
}

/// A pushed message not yet acknowledged, pushed again when due (the real
/// service's 15 s, 5 min, 1 h, 6 h, shortened to `Repushes::after` each).
struct Unacked {
    message_id: String,
    frames: Vec<Vec<u8>>,
    due: Instant,
    left: u32,
}

pub struct Shared {
    /// `access_key`/`ticket` pairs handed out and not yet used.
    tickets: Mutex<HashSet<(String, String)>>,
    clients: Mutex<Vec<(u64, Sender<Outgoing>)>>,
    acks: Mutex<Vec<Ack>>,
    acked: Condvar,
    counts: Counts,
    pub refusal: Mutex<Option<Refusal>>,
    /// The ClientConfig JSON pongs carry (empty: none).
    pub pong_config: Mutex<String>,
    /// Whether pings are answered at all (off: a silent server).
    pub answer_pings: AtomicBool,
    /// How new connections misbehave, if they do.
    pub misbehaviour: Mutex<Option<Misbehaviour>>,
    repushes: Repushes,
}

/// What the server counts, and the ids it hands out.
struct Counts {
    pings: AtomicUsize,
    connections: AtomicUsize,
    /// Handshakes refused.
    refusals: AtomicUsize,
    next_id: AtomicU64,
}

/// Messages pushed and not acknowledged, and how they are pushed again.
struct Repushes {
    unacked: Mutex<Vec<Unacked>>,
    /// How long after a push without an ack it is pushed again.
    after: Mutex<Duration>,
    /// Messages pushed again.
    count: AtomicUsize,
}

pub struct LongConnection {
    pub addr: SocketAddr,
    pub shared: Arc<Shared>,
    stop: Arc<AtomicBool>,
    acceptor: Option<JoinHandle<()>>,
}

impl LongConnection {
    pub fn start() -> std::io::Result<LongConnection> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            tickets: Mutex::new(HashSet::new()),
            clients: Mutex::new(Vec::new()),
            acks: Mutex::new(Vec::new()),
            acked: Condvar::new(),
            counts: Counts {
                pings: AtomicUsize::new(0),
                connections: AtomicUsize::new(0),
                refusals: AtomicUsize::new(0),
                next_id: AtomicU64::new(1),
            },
            refusal: Mutex::new(None),
            pong_config: Mutex::new(String::new()),
            answer_pings: AtomicBool::new(true),
            misbehaviour: Mutex::new(None),
            repushes: Repushes {
                unacked: Mutex::new(Vec::new()),
                after: Mutex::new(Duration::from_secs(1)),
                count: AtomicUsize::new(0),
            },
        });
        let stop = Arc::new(AtomicBool::new(false));
        let (repush_shared, repush_stop) = (shared.clone(), stop.clone());
        std::thread::Builder::new()
            .name("emulator-ws-repush".into())
            .spawn(move || {
                while !repush_stop.load(Ordering::SeqCst) {
                    repush_shared.repush_due();
                    std::thread::sleep(Duration::from_millis(50));
                }
            })?;
        let (accept_shared, accept_stop) = (shared.clone(), stop.clone());
        let acceptor = std::thread::Builder::new()
            .name("emulator-ws-accept".into())
            .spawn(move || {
                for stream in listener.incoming() {
                    if accept_stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(stream) = stream else { continue };
                    let (shared, stop) = (accept_shared.clone(), accept_stop.clone());
                    let _ = std::thread::Builder::new()
                        .name("emulator-ws".into())
                        .spawn(move || serve(stream, &shared, &stop));
                }
            })?;
        Ok(LongConnection {
            addr,
            shared,
            stop,
            acceptor: Some(acceptor),
        })
    }

    /// A connection URL with a fresh access key and ticket, good once.
    pub fn issue_url(&self) -> String {
        let n = self.shared.counts.next_id.fetch_add(1, Ordering::SeqCst);
        let (key, ticket) = (format!("ak{n:08x}secret"), format!("ticket-{n:08x}"));
        self.shared
            .tickets
            .lock()
            .insert((key.clone(), ticket.clone()));
        format!(
            "ws://{}/ws/v2?fpid=493&aid=552564&device_id=emu{n}&access_key={key}&service_id={SERVICE_ID}&ticket={ticket}",
            self.addr
        )
    }
}

impl Drop for LongConnection {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
    }
}

impl Shared {
    pub fn clients(&self) -> usize {
        self.clients.lock().len()
    }

    pub fn connections(&self) -> usize {
        self.counts.connections.load(Ordering::SeqCst)
    }

    pub fn pings(&self) -> usize {
        self.counts.pings.load(Ordering::SeqCst)
    }

    pub fn acks(&self) -> Vec<Ack> {
        self.acks.lock().clone()
    }

    /// Waits until an ack of `message_id` has come, or `limit` passed.
    pub fn wait_for_ack(&self, message_id: &str, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        let mut acks = self.acks.lock();
        loop {
            if acks.iter().any(|a| a.message_id == message_id) {
                return true;
            }
            if self.acked.wait_until(&mut acks, deadline).timed_out() {
                return acks.iter().any(|a| a.message_id == message_id);
            }
        }
    }

    /// Sends `payload` to one connected client chosen at random, in
    /// `fragments` data frames (sent last to first when `reversed`);
    /// returns the message id, or `None` with no client connected.
    pub fn push(
        &self,
        payload: &[u8],
        fragments: usize,
        reversed: bool,
        pick: f64,
    ) -> Option<String> {
        let n = self.counts.next_id.fetch_add(1, Ordering::SeqCst);
        let message_id = format!("msg-{n}");
        let fragments = fragments.clamp(1, payload.len().max(1));
        let size = payload.len().div_ceil(fragments).max(1);
        let mut frames: Vec<Vec<u8>> = payload
            .chunks(size)
            .enumerate()
            .map(|(seq, part)| {
                let mut frame = event_frame(&message_id, part.to_vec());
                (frame.seq_id, frame.log_id) = (n, n);
                frame.headers.extend([
                    header(frame::SUM, payload.len().div_ceil(size).to_string()),
                    header(frame::SEQ, seq.to_string()),
                    header("trace_id", format!("trace-{n}")),
                ]);
                frame.to_bytes()
            })
            .collect();
        if reversed {
            frames.reverse();
        }
        let clients = self.clients.lock();
        if clients.is_empty() {
            return None;
        }
        let (_, client) = &clients[((pick * clients.len() as f64) as usize).min(clients.len() - 1)];
        for frame in &frames {
            let _ = client.send(Outgoing::Frame(frame.clone()));
        }
        drop(clients);
        self.repushes.unacked.lock().push(Unacked {
            message_id: message_id.clone(),
            frames,
            due: Instant::now() + *self.repushes.after.lock(),
            left: 4,
        });
        Some(message_id)
    }

    pub fn repushes(&self) -> usize {
        self.repushes.count.load(Ordering::SeqCst)
    }

    /// Handshakes refused (see [`Shared::refusal`]).
    pub fn refusals(&self) -> usize {
        self.counts.refusals.load(Ordering::SeqCst)
    }

    /// A message not acknowledged is pushed again after `after`.
    pub fn set_repush_after(&self, after: Duration) {
        *self.repushes.after.lock() = after;
    }

    /// Pushes again what is due and still not acknowledged, to a client
    /// connected then (not necessarily the one that lost it).
    fn repush_due(&self) {
        let now = Instant::now();
        let mut unacked = self.repushes.unacked.lock();
        unacked.retain(|u| u.left > 0);
        let clients = self.clients.lock();
        if clients.is_empty() {
            return;
        }
        for (n, u) in unacked.iter_mut().filter(|u| u.due <= now).enumerate() {
            let (_, client) = &clients[n % clients.len()];
            for frame in &u.frames {
                let _ = client.send(Outgoing::Frame(frame.clone()));
            }
            u.left -= 1;
            u.due = now + *self.repushes.after.lock();
            self.repushes.count.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// Ends every connection without a close frame.
    pub fn drop_clients(&self) {
        for (_, client) in self.clients.lock().drain(..) {
            let _ = client.send(Outgoing::Drop);
        }
    }

    /// Makes every connection misbehave from now on (a trickled frame: a
    /// connection stuck while it seems up).
    pub fn misbehave_clients(&self, misbehaviour: Misbehaviour) {
        for (_, client) in self.clients.lock().iter() {
            let _ = client.send(Outgoing::Misbehave(misbehaviour));
        }
    }

    /// Ends every connection with a close frame (code 1000).
    pub fn close_clients(&self) {
        for (_, client) in self.clients.lock().drain(..) {
            let _ = client.send(Outgoing::Close);
        }
    }
}

// The handshake callback's type is tungstenite's, large error and all.
#[allow(clippy::result_large_err)]
fn serve(stream: TcpStream, shared: &Shared, stop: &AtomicBool) {
    let check = |request: &Request, response: Response| -> Result<Response, ErrorResponse> {
        let query = request.uri().query().unwrap_or("");
        let param = |name: &str| {
            query
                .split('&')
                .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
                .map(str::to_owned)
        };
        let refuse = |status: &str, auth: Option<&str>| {
            shared.counts.refusals.fetch_add(1, Ordering::SeqCst);
            let mut refusal = ErrorResponse::new(Some("refused".into()));
            *refusal.status_mut() = tungstenite::http::StatusCode::FORBIDDEN;
            let headers = refusal.headers_mut();
            headers.insert("Handshake-Status", status.parse().unwrap());
            headers.insert("Handshake-Msg", "refused by the emulator".parse().unwrap());
            if let Some(code) = auth {
                headers.insert("Handshake-Autherrcode", code.parse().unwrap());
            }
            refusal
        };
        match *shared.refusal.lock() {
            Some(Refusal::Forbidden) => return Err(refuse("403", None)),
            Some(Refusal::TooManyConnections) => return Err(refuse("514", Some("1000040350"))),
            Some(Refusal::AuthRetry) => return Err(refuse("514", Some("1"))),
            None => {}
        }
        let pair = (
            param("access_key").unwrap_or_default(),
            param("ticket").unwrap_or_default(),
        );
        if request.uri().path() != "/ws/v2" || !shared.tickets.lock().remove(&pair) {
            return Err(refuse("514", Some("1000040344")));
        }
        Ok(response)
    };
    let Ok(mut socket) = tungstenite::accept_hdr(stream, check) else {
        return;
    };
    let _ = socket
        .get_ref()
        .set_read_timeout(Some(Duration::from_millis(20)));
    let id = shared.counts.next_id.fetch_add(1, Ordering::SeqCst);
    shared.counts.connections.fetch_add(1, Ordering::SeqCst);
    let misbehaviour = *shared.misbehaviour.lock();
    if let Some(misbehaviour) = misbehaviour {
        if !misbehave(&mut socket, misbehaviour, stop) {
            return;
        }
    }
    let (tx, rx) = channel();
    shared.clients.lock().push((id, tx));
    run(&mut socket, shared, stop, &rx);
    shared.clients.lock().retain(|(c, _)| *c != id);
}

/// Misbehaves as told; whether the connection goes on to serve.
fn misbehave(
    socket: &mut WebSocket<TcpStream>,
    misbehaviour: Misbehaviour,
    stop: &AtomicBool,
) -> bool {
    use std::io::Write;
    match misbehaviour {
        Misbehaviour::CloseAtOnce => {
            let _ = socket.get_ref().shutdown(std::net::Shutdown::Both);
            false
        }
        Misbehaviour::TrickleFrame => {
            // FIN + binary, a 64-bit length of 16 MiB, then a byte at a time.
            let mut head = vec![0x82, 127];
            head.extend_from_slice(&(16u64 << 20).to_be_bytes());
            let stream = socket.get_mut();
            if stream.write_all(&head).is_err() {
                return false;
            }
            while !stop.load(Ordering::SeqCst) && stream.write_all(&[0]).is_ok() {
                std::thread::sleep(Duration::from_millis(100));
            }
            false
        }
        Misbehaviour::MalformedFrames(count) => {
            (0..count).all(|_| socket.send(Message::Binary(vec![0xff; 8].into())).is_ok())
        }
        Misbehaviour::BadEvents(count) => (0..count).all(|n| {
            let event = event_frame(&format!("bad-{n}"), b"{not json".to_vec());
            socket
                .send(Message::Binary(event.to_bytes().into()))
                .is_ok()
        }),
    }
}

fn header(key: &str, value: String) -> Header {
    Header {
        key: key.into(),
        value,
    }
}

/// A data frame of type "event" carrying `payload` as message `message_id`.
fn event_frame(message_id: &str, payload: Vec<u8>) -> Frame {
    Frame {
        service: SERVICE_ID,
        method: frame::DATA,
        headers: vec![
            header(frame::TYPE, "event".into()),
            header(frame::MESSAGE_ID, message_id.into()),
        ],
        payload: Some(payload),
        ..Frame::default()
    }
}

fn run(
    socket: &mut WebSocket<TcpStream>,
    shared: &Shared,
    stop: &AtomicBool,
    outgoing: &Receiver<Outgoing>,
) {
    while !stop.load(Ordering::SeqCst) {
        while let Ok(out) = outgoing.try_recv() {
            match out {
                Outgoing::Frame(bytes) => {
                    if socket.send(Message::Binary(bytes.into())).is_err() {
                        return;
                    }
                }
                Outgoing::Drop => {
                    let _ = socket.get_ref().shutdown(std::net::Shutdown::Both);
                    return;
                }
                Outgoing::Close => {
                    let _ = socket.close(None);
                    let _ = socket.flush();
                    return;
                }
                Outgoing::Misbehave(misbehaviour) => {
                    if !misbehave(socket, misbehaviour, stop) {
                        return;
                    }
                }
            }
        }
        match socket.read() {
            Ok(Message::Binary(bytes)) => {
                let Ok(frame) = Frame::from_bytes(&bytes) else {
                    continue;
                };
                if frame.method == frame::CONTROL && frame.header(frame::TYPE) == Some("ping") {
                    shared.counts.pings.fetch_add(1, Ordering::SeqCst);
                    if !shared.answer_pings.load(Ordering::SeqCst) {
                        continue;
                    }
                    let mut pong = Frame::control(SERVICE_ID, "pong");
                    let config = shared.pong_config.lock().clone();
                    if !config.is_empty() {
                        pong.payload = Some(config.into_bytes());
                    }
                    if socket
                        .send(Message::Binary(pong.to_bytes().into()))
                        .is_err()
                    {
                        return;
                    }
                } else if frame.method == frame::DATA {
                    let code = frame
                        .payload
                        .as_deref()
                        .and_then(|p| serde_json::from_slice::<serde_json::Value>(p).ok())
                        .and_then(|v| v.get("code").and_then(|c| c.as_i64()));
                    let message_id = frame.header(frame::MESSAGE_ID).unwrap_or_default();
                    // Acknowledged: never pushed again.
                    shared
                        .repushes
                        .unacked
                        .lock()
                        .retain(|u| u.message_id != message_id);
                    shared.acks.lock().push(Ack {
                        message_id: message_id.to_owned(),
                        code,
                        biz_rt: frame.header(frame::BIZ_RT).map(str::to_owned),
                    });
                    shared.acked.notify_all();
                }
            }
            Ok(Message::Close(_)) => return,
            Ok(_) => {}
            Err(tungstenite::Error::Io(e))
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return,
        }
    }
}
