//! A Redis client held to the bounds facefs holds every peer to: each
//! command, connect and login included, ends by one deadline, and each
//! reply is read under a size limit the caller sets (see [`reply`]). The
//! `redis` crate offers neither — its timeouts bound each socket read, and
//! it reads whatever length a reply announces — so facefs speaks RESP2
//! itself: the few commands the fleet sends need little more.

pub mod address;
pub mod command;
pub mod reply;
pub mod sentinel;
pub mod target;
mod transport;

use std::io::{self, Write};
use std::sync::Arc;
use std::time::Instant;

use rustls::ClientConfig;

pub use self::address::{Address, AddressError, Place};
pub use self::command::{Cmd, Script, ScriptCall};
use self::reply::ReplyReader;
pub use self::reply::{Limits, Reply};
pub use self::transport::tls_config;
use self::transport::Transport;
use crate::text::shown;

/// Why a command got no usable answer.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("connection: {0}")]
    Io(#[source] io::Error),
    #[error("no answer in time")]
    Timeout,
    #[error("the connection was closed")]
    Closed,
    #[error("an answer that is not Redis protocol ({0})")]
    Protocol(&'static str),
    #[error("an unexpected answer ({0})")]
    Unexpected(&'static str),
    #[error("a value of {0} bytes, over the limit")]
    Oversized(usize),
    #[error("Redis refused: {0}")]
    Refused(Refusal),
}

impl ClientError {
    pub(crate) fn from_io(e: io::Error) -> ClientError {
        match e.kind() {
            io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => ClientError::Timeout,
            io::ErrorKind::UnexpectedEof => ClientError::Closed,
            _ => ClientError::Io(e),
        }
    }

    /// Whether the connection is out of step or gone: a refusal, or an
    /// answer read whole but not of the expected kind, leaves it usable.
    /// `READONLY` is a replica's refusal: the server is no longer the
    /// master (a failover demoted it), so the connection is of no use.
    pub fn breaks_connection(&self) -> bool {
        match self {
            ClientError::Refused(r) => r.code() == "READONLY",
            ClientError::Unexpected(_) | ClientError::Oversized(_) => false,
            _ => true,
        }
    }
}

/// A server's error reply, kept printable: its code and a bounded, escaped
/// message (a hostile server chooses it).
#[derive(Debug, Clone)]
pub struct Refusal(String);

impl Refusal {
    fn new(text: &str) -> Refusal {
        Refusal(shown(text).to_string())
    }

    /// The error's code: `ERR`, `NOSCRIPT`, `WRONGPASS`, `OOM`...
    pub fn code(&self) -> &str {
        self.0.split(' ').next().unwrap_or("")
    }
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// One connection to Redis. Every call waits at most until the deadline
/// last set; a caller sets one before each command.
pub struct Connection {
    reader: ReplyReader<Transport>,
}

impl Connection {
    /// Connects, with TLS if the address asks for it, and logs in, all by `deadline`.
    pub fn open(
        address: &Address,
        tls: Option<&Arc<ClientConfig>>,
        deadline: Instant,
    ) -> Result<Connection, ClientError> {
        let transport = Transport::connect(address, tls, deadline).map_err(ClientError::from_io)?;
        let mut connection = Connection {
            reader: ReplyReader::new(transport),
        };
        if let Some(password) = &address.password {
            let auth = match &address.user {
                Some(user) => Cmd::new("AUTH").arg(user),
                None => Cmd::new("AUTH"),
            };
            connection.query(&auth.arg(password.expose()))?;
        }
        if address.db != 0 {
            connection.query(&Cmd::new("SELECT").arg(address.db))?;
        }
        Ok(connection)
    }

    /// Until when the next calls may wait.
    pub fn set_deadline(&mut self, deadline: Instant) {
        self.reader.get_mut().set_deadline(deadline);
    }

    /// Sends `cmd` and reads a small reply ([`Limits::SMALL`]).
    pub fn query(&mut self, cmd: &Cmd) -> Result<Reply, ClientError> {
        self.query_within(cmd, Limits::SMALL)
    }

    pub fn query_within(&mut self, cmd: &Cmd, limits: Limits) -> Result<Reply, ClientError> {
        self.send(std::slice::from_ref(cmd))?;
        self.receive(limits)
    }

    /// Runs `cmds` as one transaction (`MULTI` ... `EXEC`), one round trip;
    /// their replies, each a [`Reply::Error`] where that command failed.
    pub fn transaction(&mut self, cmds: &[Cmd]) -> Result<Vec<Reply>, ClientError> {
        let mut all = Vec::with_capacity(cmds.len() + 2);
        all.push(Cmd::new("MULTI"));
        all.extend(cmds.iter().cloned());
        all.push(Cmd::new("EXEC"));
        self.send(&all)?;
        // +OK, a +QUEUED (or an error, which EXEC then reports) per
        // command, then EXEC's array: all read, to stay in step.
        for _ in 0..=cmds.len() {
            self.reader.read(Limits::SMALL)?;
        }
        let replies = self.receive(Limits::SMALL)?.array()?;
        if replies.len() != cmds.len() {
            return Err(ClientError::Protocol(
                "a transaction answered for other commands",
            ));
        }
        Ok(replies)
    }

    /// Runs a script by its digest, sending it whole only if Redis does not know it.
    pub fn invoke(&mut self, call: &ScriptCall<'_>) -> Result<Reply, ClientError> {
        let (by_digest, whole) = call.commands();
        match self.query(&by_digest) {
            Err(ClientError::Refused(r)) if r.code() == "NOSCRIPT" => self.query(&whole),
            answer => answer,
        }
    }

    fn send(&mut self, cmds: &[Cmd]) -> Result<(), ClientError> {
        // Bytes no command asked for: a reply of a command abandoned
        // halfway, or a server speaking out of turn. Not to be read as ours.
        if self.reader.has_buffered() {
            return Err(ClientError::Protocol("bytes no command asked for"));
        }
        let mut out = Vec::new();
        for cmd in cmds {
            cmd.encode(&mut out);
        }
        let transport = self.reader.get_mut();
        transport.write_all(&out).map_err(ClientError::from_io)?;
        transport.flush().map_err(ClientError::from_io)
    }

    fn receive(&mut self, limits: Limits) -> Result<Reply, ClientError> {
        match self.reader.read(limits)? {
            Reply::Error(text) => Err(ClientError::Refused(Refusal::new(&text))),
            reply => Ok(reply),
        }
    }
}

#[cfg(test)]
mod tests;
