//! systemd's readiness protocol (`sd_notify(3)`), spoken without
//! libsystemd: one datagram per state change to the `AF_UNIX` socket named
//! by `NOTIFY_SOCKET` (a path, or an abstract name written with a leading
//! `@`), newline-separated `KEY=VALUE` assignments: `READY=1`,
//! `RELOADING=1`, `STOPPING=1`, `MAINPID=<pid>`, `WATCHDOG=1`, `STATUS=...`.
//!
//! The socket is non-blocking: a manager that does not read its queue
//! makes a send fail (`WouldBlock`), never stalls the primary's loop.

use std::io;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::time::Duration;

/// systemd's `NOTIFY_SOCKET`.
pub const ENV_NOTIFY_SOCKET: &str = "NOTIFY_SOCKET";
/// systemd's `WATCHDOG_USEC`: the watchdog interval the unit asks for.
pub const ENV_WATCHDOG_USEC: &str = "WATCHDOG_USEC";
/// systemd's `WATCHDOG_PID`: the process the watchdog is meant for.
pub const ENV_WATCHDOG_PID: &str = "WATCHDOG_PID";

/// A connection to the service manager's notification socket.
#[derive(Debug)]
pub struct SdNotify {
    socket: UnixDatagram,
    addr: SocketAddr,
    watchdog: Option<Duration>,
}

impl SdNotify {
    /// The notifier `NOTIFY_SOCKET` names; `None` when it is unset or
    /// empty (not started by a service manager that listens); an
    /// `InvalidInput` error for a name that is neither an absolute path
    /// nor `@abstract` (see [`connect`](Self::connect)). The watchdog interval is read from `WATCHDOG_USEC`
    /// when `WATCHDOG_PID` is unset or names this process.
    ///
    /// # Errors
    ///
    /// An `io::Error` of kind `InvalidInput` for a `NOTIFY_SOCKET` that is neither an absolute path
    /// nor `@abstract` (or too long for a socket address); the error of making the non-blocking
    /// datagram socket (`EMFILE`, ...).
    pub fn from_env() -> io::Result<Option<SdNotify>> {
        let Some(name) = std::env::var_os(ENV_NOTIFY_SOCKET).filter(|v| !v.is_empty()) else { return Ok(None) };
        let mut n = SdNotify::connect(&name)?;
        let for_us = std::env::var(ENV_WATCHDOG_PID)
            .ok()
            .filter(|p| !p.trim().is_empty())
            .is_none_or(|p| p.trim().parse::<u32>().ok() == Some(std::process::id()));
        let watchdog = std::env::var(ENV_WATCHDOG_USEC)
            .ok()
            .and_then(|v| v.trim().parse::<u64>().ok())
            .filter(|&us| us > 0 && for_us)
            .map(Duration::from_micros);
        n.watchdog = watchdog;
        Ok(Some(n))
    }

    /// A notifier for the socket `name` (as `NOTIFY_SOCKET` writes it: an
    /// absolute path, or `@` and an abstract name), without a watchdog.
    ///
    /// # Errors
    ///
    /// `InvalidInput` for a name that is neither an absolute path nor `@name`, or too long for
    /// `sun_path`; the error of `socket(2)`. Nothing is sent yet: a socket nobody listens on
    /// shows at the first [`notify`](Self::notify).
    pub fn connect(name: &std::ffi::OsStr) -> io::Result<SdNotify> {
        let bytes = std::os::unix::ffi::OsStrExt::as_bytes(name);
        let addr = match bytes.first() {
            Some(b'@') => SocketAddr::from_abstract_name(&bytes[1..])?,
            Some(b'/') => SocketAddr::from_pathname(std::path::Path::new(name))?,
            _ => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "NOTIFY_SOCKET is neither a path nor @abstract",
                ))
            }
        };
        let socket = UnixDatagram::unbound()?;
        socket.set_nonblocking(true)?;
        Ok(SdNotify { socket, addr, watchdog: None })
    }

    /// Sends `state` (`"READY=1"`, `"MAINPID=1234"`, several assignments
    /// separated by newlines) as one datagram.
    ///
    /// # Errors
    ///
    /// The error of `sendto`: `ECONNREFUSED` or `ENOENT` when nothing listens on the socket any
    /// more, `EAGAIN` when the manager's queue is full (the datagram is dropped, never waited for).
    pub fn notify(&self, state: &str) -> io::Result<()> {
        self.socket.send_to_addr(state.as_bytes(), &self.addr).map(|_| ())
    }

    /// Sends `RELOADING=1` with `MONOTONIC_USEC=` (the time of the
    /// reload on `CLOCK_MONOTONIC`, which `Type=notify-reload` units
    /// require with it); follow it with `READY=1` when the reload is done.
    ///
    /// # Errors
    ///
    /// As [`notify`](Self::notify).
    pub fn reloading(&self) -> io::Result<()> {
        self.notify(&format!("RELOADING=1\nMONOTONIC_USEC={}", uvring::os::monotonic_us()))
    }

    /// The interval the unit's watchdog expects a `WATCHDOG=1` within
    /// (`WATCHDOG_USEC`), if it asked; ping at half of it.
    pub fn watchdog(&self) -> Option<Duration> {
        self.watchdog
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::OsStr;

    fn receive(server: &UnixDatagram) -> String {
        server.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut buf = [0u8; 256];
        let n = server.recv(&mut buf).unwrap();
        String::from_utf8_lossy(&buf[..n]).into_owned()
    }

    #[test]
    fn speaks_to_a_path_and_to_an_abstract_name() {
        let path = std::env::temp_dir().join(format!("uvring-notify-unit-{}", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let server = UnixDatagram::bind(&path).unwrap();
        let n = SdNotify::connect(path.as_os_str()).unwrap();
        n.notify("READY=1").unwrap();
        assert_eq!(receive(&server), "READY=1");
        n.reloading().unwrap();
        let msg = receive(&server);
        assert!(msg.starts_with("RELOADING=1\nMONOTONIC_USEC="), "{msg:?}");
        std::fs::remove_file(&path).unwrap();

        let name = format!("uvring-notify-unit-{}", std::process::id());
        let server = UnixDatagram::bind_addr(&SocketAddr::from_abstract_name(name.as_bytes()).unwrap()).unwrap();
        let n = SdNotify::connect(OsStr::new(&format!("@{name}"))).unwrap();
        n.notify("STOPPING=1").unwrap();
        assert_eq!(receive(&server), "STOPPING=1");
        assert_eq!(n.watchdog(), None);
    }

    #[test]
    fn a_relative_name_is_refused() {
        let e = SdNotify::connect(OsStr::new("notify.sock")).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
    }

    #[test]
    fn nobody_listening_is_an_error_not_a_hang() {
        let path = std::env::temp_dir().join(format!("uvring-notify-unit-none-{}", std::process::id()));
        let n = SdNotify::connect(path.as_os_str()).unwrap();
        assert!(n.notify("READY=1").is_err());
    }
}
