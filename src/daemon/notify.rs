//! systemd's readiness protocol (sd_notify): one datagram to the socket
//! named by NOTIFY_SOCKET. Written out rather than linked to libsystemd: it
//! is a few lines, and facefs should not need systemd to run.

use std::os::unix::net::UnixDatagram;

/// Sends `state` (e.g. `READY=1`) if facefs runs under a service manager
/// that asked for it; does nothing otherwise.
pub fn notify(state: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let result = UnixDatagram::unbound().and_then(|socket| {
        let bytes = path.as_encoded_bytes();
        match bytes.strip_prefix(b"@") {
            // An abstract socket: the name is the rest, after a NUL.
            Some(name) => {
                use std::os::linux::net::SocketAddrExt;
                let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
                socket.send_to_addr(state.as_bytes(), &addr)
            }
            None => socket.send_to(state.as_bytes(), &path),
        }
    });
    if let Err(e) = result {
        log::warn!("cannot notify the service manager ({state}): {e}");
    }
}
