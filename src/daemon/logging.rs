//! Where logs go: stderr in the foreground (the journal, under systemd), a
//! file with --log-file, and otherwise, once detached, the system log.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::net::UnixDatagram;
use std::path::Path;

/// The filter variable, e.g. FACEFS_LOG=debug or FACEFS_LOG=facefs::api=trace.
pub const FILTER_ENV: &str = "FACEFS_LOG";
/// The system log socket; the variable exists for systems (and tests) that put it elsewhere.
const SYSLOG_ENV: &str = "FACEFS_SYSLOG_SOCKET";
const SYSLOG_SOCKET: &str = "/dev/log";
/// syslog facility "daemon".
const DAEMON: u8 = 3;

pub fn init(foreground: bool, log_file: Option<&Path>) -> Result<(), String> {
    let mut logger = env_logger::Builder::from_env(
        env_logger::Env::new().filter_or(FILTER_ENV, "info,fuser=error"),
    );
    logger.format_timestamp_millis();
    match log_file {
        Some(path) => {
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .mode(0o600)
                .open(path)
                .map_err(|e| format!("cannot open the log file {}: {e}", path.display()))?;
            logger.target(env_logger::Target::Pipe(Box::new(file)));
        }
        None if !foreground => {
            // One datagram a record: `<priority>facefs[pid]: message`; the
            // pid is asked each time, as it changes when facefs detaches.
            logger.format(|buf, record| {
                let severity = match record.level() {
                    log::Level::Error => 3,
                    log::Level::Warn => 4,
                    log::Level::Info => 6,
                    log::Level::Debug | log::Level::Trace => 7,
                };
                let pid = std::process::id();
                writeln!(
                    buf,
                    "<{}>facefs[{pid}]: {}: {}",
                    DAEMON * 8 + severity,
                    record.target(),
                    record.args()
                )
            });
            logger.target(env_logger::Target::Pipe(Box::new(Syslog::default())));
        }
        None => {}
    }
    logger.init();
    Ok(())
}

/// Sends each line written to the system log socket; drops it if there is none.
#[derive(Default)]
struct Syslog {
    socket: Option<UnixDatagram>,
}

impl Write for Syslog {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        if self.socket.is_none() {
            let path = std::env::var_os(SYSLOG_ENV).unwrap_or_else(|| SYSLOG_SOCKET.into());
            self.socket = UnixDatagram::unbound()
                .and_then(|s| s.connect(&path).map(|()| s))
                .ok();
        }
        if let Some(socket) = &self.socket {
            for line in bytes.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
                if socket.send(line).is_err() {
                    self.socket = None; // reconnect next time (syslog restarted)
                    break;
                }
            }
        }
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
