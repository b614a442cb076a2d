//! Finding the master through Redis Sentinel: each sentinel in turn is
//! asked where the master is (`SENTINEL get-master-addr-by-name`), and the
//! server it names must say it is the master (`ROLE`) — a sentinel that has
//! not seen a failover yet may name the old one, now a replica.

use std::sync::Arc;
use std::time::Instant;

use rustls::ClientConfig;

use super::address::{Address, Place};
use super::target::Sentinels;
use super::{ClientError, Cmd, Connection};

/// What a caller refuses to connect to (a master a sentinel names).
pub type Check<'a> = &'a dyn Fn(&Address) -> Result<(), ClientError>;

/// A connection to the master and where it is, all by `deadline`; the
/// sentinels are asked from `first` on (the one that answered last), and
/// a master `check` refuses is not connected to. The error is the last
/// sentinel's or master's.
pub fn connect_to_master(
    set: &Sentinels,
    first: usize,
    tls: Option<&Arc<ClientConfig>>,
    deadline: Instant,
    check: Check<'_>,
) -> Result<(Connection, Address, usize), ClientError> {
    let mut last = ClientError::Unexpected("no sentinel given");
    for turn in 0..set.sentinels.len() {
        let which = (first + turn) % set.sentinels.len();
        match master_by(set, &set.sentinels[which], tls, deadline, check) {
            Ok((connection, master)) => return Ok((connection, master, which)),
            Err(e) => {
                log::debug!("fleet: sentinel {}: {e}", set.sentinels[which]);
                last = e;
            }
        }
        if Instant::now() >= deadline {
            break;
        }
    }
    Err(last)
}

fn master_by(
    set: &Sentinels,
    sentinel: &Address,
    tls: Option<&Arc<ClientConfig>>,
    deadline: Instant,
    check: Check<'_>,
) -> Result<(Connection, Address), ClientError> {
    let mut asked = Connection::open(sentinel, tls, deadline)?;
    let answer = asked.query(
        &Cmd::new("SENTINEL")
            .arg("get-master-addr-by-name")
            .arg(&set.master),
    )?;
    let place = master_place(answer)?;
    let master = Address {
        place,
        ..set.login.clone()
    };
    check(&master)?;
    Ok((open_master(&master, tls, deadline)?, master))
}

/// A connection to `master` if it says it is the master, by `deadline`.
pub fn open_master(
    master: &Address,
    tls: Option<&Arc<ClientConfig>>,
    deadline: Instant,
) -> Result<Connection, ClientError> {
    let mut connection = Connection::open(master, tls, deadline)?;
    if !is_master(connection.query(&Cmd::new("ROLE"))?) {
        return Err(ClientError::Unexpected(
            "the server named as master is not one (a failover under way)",
        ));
    }
    Ok(connection)
}

/// `[host, port]`, or nil for a master the sentinel does not monitor.
fn master_place(answer: super::Reply) -> Result<Place, ClientError> {
    if matches!(answer, super::Reply::Nil) {
        return Err(ClientError::Unexpected(
            "the sentinel monitors no master of that name (check the name after the hosts)",
        ));
    }
    let items = answer.array()?;
    let (Some(host), Some(port), 2) = (
        items.first().and_then(|r| r.text()),
        items.get(1).and_then(|r| r.text()),
        items.len(),
    ) else {
        return Err(ClientError::Unexpected("not a host and port"));
    };
    let port = port
        .parse()
        .map_err(|_| ClientError::Unexpected("not a port"))?;
    // An address, not a name to look up: a host name would be looked up
    // under the same deadline, but a sentinel answers with an address.
    let host = match host.parse::<std::net::IpAddr>() {
        Ok(std::net::IpAddr::V6(v6)) => format!("[{v6}]"),
        Ok(std::net::IpAddr::V4(v4)) => v4.to_string(),
        Err(_) if is_host_name(host) => host.to_owned(),
        Err(_) => return Err(ClientError::Unexpected("not a host")),
    };
    Ok(Place::Tcp { host, port })
}

fn is_host_name(text: &str) -> bool {
    !text.is_empty()
        && text.len() <= 253
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
}

/// `ROLE` answers an array whose first item is `master`, `slave` or `sentinel`.
fn is_master(role: super::Reply) -> bool {
    role.array()
        .ok()
        .and_then(|items| items.first().and_then(|r| r.text()).map(|t| t == "master"))
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::super::Reply;
    use super::*;

    fn bulk(s: &str) -> Reply {
        Reply::Bulk(s.as_bytes().to_vec())
    }

    /// A sentinel on loopback that names `master` once; the test's check
    /// refuses it: it is never connected to.
    #[test]
    fn a_master_the_check_refuses_is_never_connected_to() {
        use std::io::{Read, Write};
        use std::net::TcpListener;
        let master = TcpListener::bind("127.0.0.1:0").unwrap();
        let master_port = master.local_addr().unwrap().port();
        master.set_nonblocking(true).unwrap();
        let sentinel = TcpListener::bind("127.0.0.1:0").unwrap();
        let sentinel_port = sentinel.local_addr().unwrap().port();
        let answering = std::thread::spawn(move || {
            let (mut socket, _) = sentinel.accept().unwrap();
            let mut asked = [0u8; 256];
            let _ = socket.read(&mut asked).unwrap();
            let port = master_port.to_string();
            let answer = format!("*2\r\n$9\r\n127.0.0.1\r\n${}\r\n{port}\r\n", port.len());
            socket.write_all(answer.as_bytes()).unwrap();
        });
        let target = super::super::target::Target::parse(&format!(
            "redis+sentinel://127.0.0.1:{sentinel_port}/m"
        ))
        .unwrap();
        let super::super::target::Target::Sentinel(set) = target else {
            panic!("a sentinel target")
        };
        let checked = std::cell::Cell::new(None);
        let check = |a: &Address| {
            checked.set(Some(a.to_string()));
            Err(ClientError::Unexpected("refused by the check"))
        };
        let deadline = Instant::now() + std::time::Duration::from_secs(2);
        let err = connect_to_master(&set, 0, None, deadline, &check)
            .err()
            .unwrap();
        answering.join().unwrap();
        assert!(err.to_string().contains("refused by the check"), "{err}");
        assert_eq!(checked.take(), Some(format!("127.0.0.1:{master_port}")));
        assert!(
            master.accept().is_err(),
            "no connection to the refused master"
        );
    }

    #[test]
    fn a_sentinels_answer_is_an_address_or_a_clear_refusal() {
        let place = |items: Vec<Reply>| master_place(Reply::Array(items));
        assert_eq!(
            place(vec![bulk("127.0.0.1"), bulk("6380")]).unwrap(),
            Place::Tcp {
                host: "127.0.0.1".into(),
                port: 6380
            }
        );
        assert_eq!(
            place(vec![bulk("::1"), bulk("6380")]).unwrap(),
            Place::Tcp {
                host: "[::1]".into(),
                port: 6380
            }
        );
        assert!(place(vec![bulk("redis-1.internal"), bulk("6379")]).is_ok());
        for bad in [
            vec![bulk("127.0.0.1")],
            vec![bulk("127.0.0.1"), bulk("99999")],
            vec![bulk("a b\x1b[2J"), bulk("6379")],
            vec![bulk("h"), bulk("1"), bulk("extra")],
        ] {
            assert!(place(bad).is_err());
        }
        let unknown = master_place(Reply::Nil).unwrap_err().to_string();
        assert!(unknown.contains("name"), "{unknown}");
        assert!(is_master(Reply::Array(vec![bulk("master"), Reply::Int(0)])));
        assert!(!is_master(Reply::Array(vec![bulk("slave"), bulk("h")])));
        assert!(!is_master(Reply::Int(1)));
    }
}
