//! Where logs go: stderr in the foreground (the journal, under systemd), a
//! file with --log-file, and otherwise, once detached, the system log.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::net::UnixDatagram;
use std::path::Path;

/// The filter variable, e.g. FACEFS_LOG=debug or FACEFS_LOG=facefs::api=trace.
pub const FILTER_ENV: &str = "FACEFS_LOG";
/// Dependencies' log targets that can carry a secret below `debug`; each is
/// capped there, however specific the user's filter.
const SECRET_TARGETS: [&str; 3] = [
    "tungstenite",
    "tungstenite::handshake",
    "tungstenite::handshake::client",
];
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
    // Whatever the user asks for: the WebSocket library prints the event
    // connection's request, access key and ticket included, at trace.
    for target in SECRET_TARGETS {
        logger.filter_module(target, log::LevelFilter::Debug);
    }
    match log_file {
        Some(path) => {
            let file = open_log_file(path)?;
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

/// Opens `--log-file` for appending. The log names files and API failures
/// of biometric data: the file is never reached through a symlink (one
/// planted where the log goes would send it elsewhere), must belong to the
/// user facefs runs as, and is made private (0600) whatever mode it had.
fn open_log_file(path: &Path) -> Result<std::fs::File, String> {
    use std::os::unix::fs::MetadataExt;
    use std::os::unix::fs::PermissionsExt;
    let shown = path.display();
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| match e.raw_os_error() {
            Some(libc::ELOOP) => format!(
                "the log file {shown} is a symbolic link; give the real path (facefs does not follow links for its log)"
            ),
            _ => format!("cannot open the log file {shown}: {e}"),
        })?;
    let meta = file
        .metadata()
        .map_err(|e| format!("cannot inspect the log file {shown}: {e}"))?;
    // SAFETY: geteuid cannot fail.
    let me = unsafe { libc::geteuid() };
    if !meta.is_file() {
        return Err(format!("the log file {shown} is not a regular file"));
    }
    if meta.uid() != me {
        return Err(format!(
            "the log file {shown} belongs to uid {}, not to the user facefs runs as ({me}); remove it or give another path",
            meta.uid()
        ));
    }
    if meta.mode() & 0o077 != 0 {
        file.set_permissions(std::fs::Permissions::from_mode(0o600))
            .map_err(|e| format!("cannot make the log file {shown} private (chmod 600): {e}"))?;
    }
    Ok(file)
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

/// An error as a person reads it: its message, then each cause's, joined
/// by ": " ("cannot create the cache directory /x: Permission denied").
pub fn with_causes(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(e) = cause {
        text.push_str(": ");
        text.push_str(&e.to_string());
        cause = e.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn a_log_file_is_private_and_never_a_symlink() {
        let d = std::env::temp_dir().join(format!("facefs-logfile-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        let log = d.join("facefs.log");
        std::fs::write(&log, "old\n").unwrap();
        std::fs::set_permissions(&log, std::fs::Permissions::from_mode(0o644)).unwrap();
        drop(open_log_file(&log).unwrap());
        let mode = std::fs::metadata(&log).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(
            std::fs::read_to_string(&log).unwrap(),
            "old\n",
            "appended, not truncated"
        );

        let target = d.join("elsewhere");
        let link = d.join("link.log");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        let err = open_log_file(&link).unwrap_err();
        assert!(err.contains("symbolic link"), "{err}");
        assert!(!target.exists(), "nothing written through the link");
        let _ = std::fs::remove_dir_all(&d);
    }
}
