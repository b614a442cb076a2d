//! The byte stream to Redis — TCP, TLS over TCP, or a Unix socket — under
//! one deadline: every read and write waits at most until it, so a Redis
//! that trickles its reply a byte at a time costs the caller its deadline,
//! not a socket timeout per byte.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection, StreamOwned};

use super::address::{Address, Place};
use crate::fleet::RedisUrlError;

/// A socket whose every read and write ends by `deadline`.
pub struct Socket {
    stream: SocketStream,
    pub deadline: Instant,
}

enum SocketStream {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Socket {
    /// Time left, or `TimedOut` if none.
    fn left(&self) -> io::Result<Duration> {
        let left = self.deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::ErrorKind::TimedOut.into());
        }
        // A zero timeout would mean "none" to the socket.
        Ok(left.max(Duration::from_millis(1)))
    }
}

impl Read for Socket {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = self.left()?;
        match &mut self.stream {
            SocketStream::Tcp(s) => {
                s.set_read_timeout(Some(left))?;
                s.read(buf)
            }
            SocketStream::Unix(s) => {
                s.set_read_timeout(Some(left))?;
                s.read(buf)
            }
        }
    }
}

impl Write for Socket {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let left = self.left()?;
        match &mut self.stream {
            SocketStream::Tcp(s) => {
                s.set_write_timeout(Some(left))?;
                s.write(buf)
            }
            SocketStream::Unix(s) => {
                s.set_write_timeout(Some(left))?;
                s.write(buf)
            }
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The connection's bytes, in clear or through TLS.
pub enum Transport {
    Plain(Socket),
    Tls(Box<StreamOwned<ClientConnection, Socket>>),
}

impl Transport {
    /// Connects to `address` by `deadline` (name resolution included),
    /// with TLS where the address asks for it.
    pub fn connect(
        address: &Address,
        tls: Option<&Arc<ClientConfig>>,
        deadline: Instant,
    ) -> io::Result<Transport> {
        let stream = match &address.place {
            Place::Tcp { host, port } => {
                SocketStream::Tcp(crate::net::connect_by(host, *port, deadline)?)
            }
            Place::Unix(path) => SocketStream::Unix(UnixStream::connect(path)?),
        };
        let socket = Socket { stream, deadline };
        match (&address.place, address.tls) {
            (Place::Tcp { host, .. }, true) => {
                let config = tls.ok_or_else(|| io::Error::other("TLS is not set up"))?;
                let name = ServerName::try_from(host.trim_matches(['[', ']']).to_owned()).map_err(
                    |_| io::Error::new(io::ErrorKind::InvalidInput, "not a TLS server name"),
                )?;
                let connection =
                    ClientConnection::new(config.clone(), name).map_err(io::Error::other)?;
                let mut stream = StreamOwned::new(connection, socket);
                // The handshake now, under the connect deadline.
                while stream.conn.is_handshaking() {
                    stream.conn.complete_io(&mut stream.sock)?;
                }
                Ok(Transport::Tls(Box::new(stream)))
            }
            _ => Ok(Transport::Plain(socket)),
        }
    }

    pub fn set_deadline(&mut self, deadline: Instant) {
        match self {
            Transport::Plain(s) => s.deadline = deadline,
            Transport::Tls(s) => s.sock.deadline = deadline,
        }
    }
}

impl Read for Transport {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Transport::Plain(s) => s.read(buf),
            Transport::Tls(s) => s.read(buf),
        }
    }
}

impl Write for Transport {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Transport::Plain(s) => s.write(buf),
            Transport::Tls(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Transport::Plain(s) => s.flush(),
            Transport::Tls(s) => s.flush(),
        }
    }
}

/// TLS on rustls and ring: the Mozilla roots, as the HTTP client has them,
/// or the CAs of `ca_file` (PEM) instead, for a Redis a private CA signed.
pub fn tls_config(ca_file: Option<&std::path::Path>) -> Result<Arc<ClientConfig>, RedisUrlError> {
    let roots = match ca_file {
        None => rustls::RootCertStore::from_iter(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
        Some(path) => {
            use rustls::pki_types::pem::PemObject;
            let failed = |why: String| RedisUrlError::CaFile {
                path: path.display().to_string(),
                why,
            };
            let certificates: Vec<_> = rustls::pki_types::CertificateDer::pem_file_iter(path)
                .map_err(|e| failed(e.to_string()))?
                .collect::<Result<_, _>>()
                .map_err(|e| failed(e.to_string()))?;
            if certificates.is_empty() {
                return Err(failed("it holds no certificate".into()));
            }
            let mut roots = rustls::RootCertStore::empty();
            for certificate in certificates {
                roots.add(certificate).map_err(|e| failed(e.to_string()))?;
            }
            roots
        }
    };
    let config =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .expect("ring offers the default TLS versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
    Ok(Arc::new(config))
}
