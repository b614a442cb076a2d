//! A small HTTP/1.1 server, for the emulator and the metrics endpoint.
//! Written here rather than taken from a crate because the emulator must be
//! able to answer wrongly on purpose (cut bodies, resets, silence), which
//! servers built to be correct do not allow.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

const MAX_HEAD_BYTES: usize = 64 * 1024;
/// Room for the largest face upload and its form around it.
const MAX_BODY_BYTES: usize = 12 * 1024 * 1024;
const MAX_CONNECTIONS: usize = 512;
/// An idle keep-alive connection is closed after this long.
const IDLE_TIMEOUT: Duration = Duration::from_secs(30);

pub struct Request {
    pub method: String,
    /// The path as sent, still percent-encoded.
    pub path: String,
    /// The query as sent, still percent-encoded.
    pub query: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Request {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Query parameters, percent-decoded; `None` if one is not UTF-8.
    pub fn query_pairs(&self) -> Option<Vec<(String, String)>> {
        self.query
            .split('&')
            .filter(|p| !p.is_empty())
            .map(|pair| {
                let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                Some((decode(k)?, decode(v)?))
            })
            .collect()
    }

    /// The first value of the query parameter `name`, decoded.
    pub fn param(&self, name: &str) -> Option<String> {
        self.query_pairs()?
            .into_iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v)
    }
}

/// Percent-decodes one URL component (`+` is a literal plus, as in paths).
pub fn decode(s: &str) -> Option<String> {
    percent_encoding::percent_decode_str(s)
        .decode_utf8()
        .ok()
        .map(|c| c.into_owned())
}

pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn new(status: u16, content_type: &str, body: Vec<u8>) -> Response {
        Response {
            status,
            headers: vec![("Content-Type".into(), content_type.into())],
            body,
        }
    }

    pub fn json(status: u16, value: &serde_json::Value) -> Response {
        Response::new(
            status,
            "application/json; charset=utf-8",
            value.to_string().into_bytes(),
        )
    }

    pub fn with_header(mut self, name: &str, value: &str) -> Response {
        self.headers.push((name.into(), value.into()));
        self
    }
}

/// How to answer: properly, or in one of the broken ways a real network and
/// a real service sometimes answer.
pub enum Reply {
    Respond(Response),
    /// Close the connection with a TCP reset before sending anything.
    Reset,
    /// Announce the whole body in Content-Length but send only `keep` bytes, then reset.
    CutShort(Response, usize),
    /// Send the body chunked, without Content-Length (a valid answer).
    Chunked(Response),
    /// Send nothing for this long, holding the connection open, then close it.
    Silence(Duration),
    /// Send the head at once, then the body one byte per this long.
    Trickle(Response, Duration),
    /// Send the head, chunked, then this many bytes of JSON whitespace (an
    /// answer that never ends as far as a client should care).
    Flood(Response, u64),
}

pub type Handler = dyn Fn(&Request) -> Reply + Send + Sync;

pub struct Server {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    acceptor: Option<JoinHandle<()>>,
}

impl Server {
    pub fn start(addr: &str, handler: Arc<Handler>) -> io::Result<Server> {
        let listener = TcpListener::bind(addr)?;
        let addr = listener.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let stop_flag = stop.clone();
        let acceptor = std::thread::Builder::new()
            .name("http-accept".into())
            .spawn(move || {
                let live = Arc::new(AtomicUsize::new(0));
                for stream in listener.incoming() {
                    if stop_flag.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(stream) = stream else { continue };
                    if live.load(Ordering::SeqCst) >= MAX_CONNECTIONS {
                        continue; // dropped: the client sees a reset and retries
                    }
                    live.fetch_add(1, Ordering::SeqCst);
                    let (handler, live, stop) = (handler.clone(), live.clone(), stop_flag.clone());
                    let spawned =
                        std::thread::Builder::new()
                            .name("http-conn".into())
                            .spawn(move || {
                                let _ = serve_connection(stream, &*handler, &stop);
                                live.fetch_sub(1, Ordering::SeqCst);
                            });
                    if spawned.is_err() {
                        log::warn!("http server: cannot start a connection thread");
                    }
                }
            })?;
        Ok(Server {
            addr,
            stop,
            acceptor: Some(acceptor),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wakes the acceptor so it sees the flag.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
    }
}

fn serve_connection(stream: TcpStream, handler: &Handler, stop: &AtomicBool) -> io::Result<()> {
    stream.set_read_timeout(Some(IDLE_TIMEOUT))?;
    stream.set_nodelay(true)?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut writer = stream;
    while !stop.load(Ordering::SeqCst) {
        let Some(request) = read_request(&mut reader)? else {
            break;
        };
        let close = request
            .header("connection")
            .is_some_and(|v| v.eq_ignore_ascii_case("close"));
        match handler(&request) {
            Reply::Respond(response) => {
                writer.write_all(&head(&response, Some(response.body.len()), &response.body))?
            }
            Reply::Chunked(response) => {
                let mut body = Vec::new();
                // Two chunks, so that a reader must join them.
                let (a, b) = response.body.split_at(response.body.len() / 2);
                for chunk in [a, b].into_iter().filter(|c| !c.is_empty()) {
                    body.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
                    body.extend_from_slice(chunk);
                    body.extend_from_slice(b"\r\n");
                }
                body.extend_from_slice(b"0\r\n\r\n");
                writer.write_all(&head(&response, None, &body))?;
            }
            Reply::CutShort(response, keep) => {
                let keep = keep.min(response.body.len().saturating_sub(1));
                writer.write_all(&head(
                    &response,
                    Some(response.body.len()),
                    &response.body[..keep],
                ))?;
                reset(&writer);
                return Ok(());
            }
            Reply::Reset => {
                reset(&writer);
                return Ok(());
            }
            Reply::Trickle(response, gap) => {
                writer.write_all(&head(&response, Some(response.body.len()), &[]))?;
                for byte in &response.body {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    writer.flush()?;
                    std::thread::sleep(gap);
                    writer.write_all(std::slice::from_ref(byte))?;
                }
            }
            Reply::Flood(response, total) => {
                writer.write_all(&head(&response, None, &[]))?;
                let chunk = [b' '; 1 << 16];
                let mut sent = 0u64;
                while sent < total && !stop.load(Ordering::SeqCst) {
                    writer.write_all(format!("{:x}\r\n", chunk.len()).as_bytes())?;
                    writer.write_all(&chunk)?;
                    writer.write_all(b"\r\n")?;
                    sent += chunk.len() as u64;
                }
                writer.write_all(b"0\r\n\r\n")?;
            }
            Reply::Silence(length) => {
                // Until the time is up, or the client gives up and closes
                // (a hung answer must not hold a connection slot for minutes).
                let until = std::time::Instant::now() + length;
                let _ = writer.set_read_timeout(Some(Duration::from_millis(20)));
                let mut probe = [0u8; 1];
                while std::time::Instant::now() < until && !stop.load(Ordering::SeqCst) {
                    match writer.peek(&mut probe) {
                        Ok(0) => break,
                        Ok(_) => std::thread::sleep(Duration::from_millis(20)),
                        Err(e)
                            if matches!(
                                e.kind(),
                                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                            ) => {}
                        Err(_) => break,
                    }
                }
                break;
            }
        }
        writer.flush()?;
        if close {
            break;
        }
    }
    let _ = writer.shutdown(Shutdown::Both);
    Ok(())
}

fn invalid(msg: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.to_owned())
}

fn read_request(reader: &mut BufReader<TcpStream>) -> io::Result<Option<Request>> {
    let mut head_bytes = 0;
    let mut line = String::new();
    if reader.read_line(&mut line)? == 0 {
        return Ok(None);
    }
    head_bytes += line.len();
    let mut parts = line.split_whitespace();
    let (Some(method), Some(target)) = (parts.next(), parts.next()) else {
        return Err(invalid("bad request line"));
    };
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let mut request = Request {
        method: method.to_owned(),
        path: path.to_owned(),
        query: query.to_owned(),
        headers: vec![],
        body: vec![],
    };
    loop {
        line.clear();
        if reader.read_line(&mut line)? == 0 {
            return Err(invalid("connection closed in the request head"));
        }
        head_bytes += line.len();
        if head_bytes > MAX_HEAD_BYTES {
            return Err(invalid("request head too large"));
        }
        let trimmed = line.trim_end();
        if trimmed.is_empty() {
            break;
        }
        if let Some((name, value)) = trimmed.split_once(':') {
            request
                .headers
                .push((name.trim().to_owned(), value.trim().to_owned()));
        }
    }
    let length: usize = request
        .header("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    if length > MAX_BODY_BYTES {
        return Err(invalid("request body too large"));
    }
    request.body.resize(length, 0);
    reader.read_exact(&mut request.body)?;
    Ok(Some(request))
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Status",
    }
}

/// The status line and headers, with Content-Length when given (else
/// chunked), followed by `body` as it is to be sent.
fn head(response: &Response, length: Option<usize>, body: &[u8]) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 {} {}\r\n",
        response.status,
        reason(response.status)
    );
    for (name, value) in &response.headers {
        out.push_str(&format!("{name}: {value}\r\n"));
    }
    match length {
        Some(n) => out.push_str(&format!("Content-Length: {n}\r\n\r\n")),
        None => out.push_str("Transfer-Encoding: chunked\r\n\r\n"),
    }
    let mut bytes = out.into_bytes();
    bytes.extend_from_slice(body);
    bytes
}

/// Closes with RST rather than FIN: SO_LINGER with a zero timeout.
fn reset(stream: &TcpStream) {
    use std::os::fd::AsRawFd;
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: a valid socket and a correctly sized option value.
    unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
    let _ = stream.shutdown(Shutdown::Read);
}
