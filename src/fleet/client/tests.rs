//! The client against servers that misbehave on purpose (a real Redis is
//! in `tests/fleet.rs`): each answer is bounded in time and memory.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::time::{Duration, Instant};

use super::*;

/// A one-connection server on a free loopback port that reads one command
/// and then behaves as `serve` says.
fn server(serve: impl FnOnce(&mut std::net::TcpStream) + Send + 'static) -> Address {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let (mut stream, _) = listener.accept().unwrap();
        let mut command = [0u8; 4096];
        let _ = stream.read(&mut command);
        serve(&mut stream);
    });
    Address::parse(&format!("redis://127.0.0.1:{port}")).unwrap()
}

fn connect(address: &Address) -> Connection {
    Connection::open(address, None, Instant::now() + Duration::from_secs(5)).unwrap()
}

#[test]
fn a_trickled_reply_ends_at_the_deadline_not_per_byte() {
    let address = server(|s| {
        for _ in 0..200 {
            if s.write_all(b"+").is_err() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    });
    let mut c = connect(&address);
    let start = Instant::now();
    c.set_deadline(start + Duration::from_millis(250));
    let got = c.query(&Cmd::new("PING"));
    assert!(matches!(got, Err(ClientError::Timeout)), "{got:?}");
    let took = start.elapsed();
    assert!(took < Duration::from_millis(1000), "{took:?}");
    assert!(got.unwrap_err().breaks_connection());
}

#[test]
fn a_two_gigabyte_reply_costs_its_deadline_not_its_size() {
    let address = server(|s| {
        let _ = s.write_all(b"$2000000000\r\n");
        let zeros = vec![0u8; 1 << 16];
        while s.write_all(&zeros).is_ok() {}
    });
    let mut c = connect(&address);
    let start = Instant::now();
    c.set_deadline(start + Duration::from_millis(300));
    let got = c.query_within(&Cmd::new("GET").arg("k"), Limits::value(2 << 20));
    assert!(matches!(got, Err(ClientError::Timeout)), "{got:?}");
    assert!(start.elapsed() < Duration::from_millis(1500));
}

#[test]
fn a_refusal_is_kept_short_and_printable_and_leaves_the_connection_in_step() {
    let address = server(|s| {
        let mut text = b"-WRONGPASS \x1b[2J".to_vec();
        text.extend(std::iter::repeat_n(b'x', 10_000));
        text.extend_from_slice(b"\r\n");
        let _ = s.write_all(&text);
        let mut more = [0u8; 100];
        let _ = s.read(&mut more);
        let _ = s.write_all(b"+PONG\r\n");
    });
    let mut c = connect(&address);
    c.set_deadline(Instant::now() + Duration::from_secs(5));
    let err = c.query(&Cmd::new("PING")).unwrap_err();
    let ClientError::Refused(refusal) = &err else {
        panic!("{err:?}")
    };
    assert_eq!(refusal.code(), "WRONGPASS");
    let text = err.to_string();
    assert!(text.len() < 200 && !text.contains('\x1b'), "{text}");
    assert!(!err.breaks_connection());
    assert_eq!(
        c.query(&Cmd::new("PING")).unwrap(),
        Reply::Status("PONG".into())
    );
}

#[test]
fn a_reply_nobody_asked_for_is_not_read_as_the_next_one() {
    let address = server(|s| {
        let _ = s.write_all(b"+ONE\r\n+UNASKED\r\n");
        std::thread::sleep(Duration::from_secs(2));
    });
    let mut c = connect(&address);
    c.set_deadline(Instant::now() + Duration::from_secs(5));
    assert_eq!(
        c.query(&Cmd::new("PING")).unwrap(),
        Reply::Status("ONE".into())
    );
    let got = c.query(&Cmd::new("PING"));
    assert!(matches!(got, Err(ClientError::Protocol(_))), "{got:?}");
}

#[test]
fn connecting_ends_at_the_deadline_when_the_server_never_answers_the_login() {
    // Accepts and reads AUTH, then says nothing.
    let address = server(|_| std::thread::sleep(Duration::from_secs(3)));
    let address = Address {
        password: Some(crate::api::secret::Secret::new("pw")),
        ..address
    };
    let start = Instant::now();
    let got = Connection::open(&address, None, start + Duration::from_millis(200));
    assert!(matches!(got, Err(ClientError::Timeout)), "{:?}", got.err());
    assert!(start.elapsed() < Duration::from_millis(1000));
}
