//! Connecting to a peer by a deadline, name lookup included: the system
//! resolver has no timeout to give it, so a name is looked up on a thread
//! of its own and abandoned at the deadline.

use std::io;
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::Instant;

/// Connects to `host:port` (a name or an address, IPv6 bracketed or not)
/// by `deadline`, trying each address in turn; `TCP_NODELAY` set.
pub fn connect_by(host: &str, port: u16, deadline: Instant) -> io::Result<TcpStream> {
    let bare = host.trim_matches(['[', ']']);
    let addrs: Vec<SocketAddr> = match bare.parse::<std::net::IpAddr>() {
        Ok(ip) => vec![SocketAddr::new(ip, port)],
        Err(_) => {
            let (send, receive) = std::sync::mpsc::channel();
            let name = (bare.to_owned(), port);
            std::thread::Builder::new()
                .name("facefs-resolve".into())
                .spawn(move || {
                    let _ = send.send(name.to_socket_addrs().map(Iterator::collect::<Vec<_>>));
                })?;
            receive
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
                .map_err(|_| {
                    io::Error::new(
                        io::ErrorKind::TimedOut,
                        "looking up the host's name took too long",
                    )
                })??
        }
    };
    let mut last = io::Error::new(io::ErrorKind::NotFound, "the host's name has no address");
    for addr in addrs {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::ErrorKind::TimedOut.into());
        }
        match TcpStream::connect_timeout(&addr, left) {
            Ok(stream) => {
                stream.set_nodelay(true)?;
                return Ok(stream);
            }
            Err(e) => last = e,
        }
    }
    Err(last)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn names_and_addresses_connect_and_nothing_waits_past_the_deadline() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let soon = || Instant::now() + Duration::from_secs(5);
        assert!(connect_by("127.0.0.1", port, soon()).is_ok());
        assert!(connect_by("localhost", port, soon()).is_ok());
        let past = Instant::now();
        let err = connect_by("localhost", port, past).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
    }
}
