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
    /// empty (not started by a service manager that listens). `EINVAL`
    /// (as an `io::Error`) for a name that is neither an absolute path nor
    /// `@abstract`. The watchdog interval is read from `WATCHDOG_USEC`
    /// when `WATCHDOG_PID` is unset or names this process.
    pub fn from_env() -> io::Result<Option<SdNotify>> {
        let Some(name) = std::env::var_os(ENV_NOTIFY_SOCKET).filter(|v| !v.is_empty()) else { return Ok(None) };
        let bytes = std::os::unix::ffi::OsStrExt::as_bytes(name.as_os_str());
        let addr = match bytes.first() {
            Some(b'@') => SocketAddr::from_abstract_name(&bytes[1..])?,
            Some(b'/') => SocketAddr::from_pathname(std::path::Path::new(&name))?,
            _ => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "NOTIFY_SOCKET is neither a path nor @abstract",
                ))
            }
        };
        let socket = UnixDatagram::unbound()?;
        socket.set_nonblocking(true)?;
        let for_us = std::env::var(ENV_WATCHDOG_PID)
            .ok()
            .filter(|p| !p.trim().is_empty())
            .is_none_or(|p| p.trim().parse::<u32>().ok() == Some(std::process::id()));
        let watchdog = std::env::var(ENV_WATCHDOG_USEC)
            .ok()
            .and_then(|v| v.trim().parse::<u64>().ok())
            .filter(|&us| us > 0 && for_us)
            .map(Duration::from_micros);
        Ok(Some(SdNotify { socket, addr, watchdog }))
    }

    /// Sends `state` (`"READY=1"`, `"MAINPID=1234"`, several assignments
    /// separated by newlines) as one datagram.
    pub fn notify(&self, state: &str) -> io::Result<()> {
        self.socket.send_to_addr(state.as_bytes(), &self.addr).map(|_| ())
    }

    /// Sends `RELOADING=1` with `MONOTONIC_USEC=` (the time of the
    /// reload on `CLOCK_MONOTONIC`, which `Type=notify-reload` units
    /// require with it); follow it with `READY=1` when the reload is done.
    pub fn reloading(&self) -> io::Result<()> {
        self.notify(&format!("RELOADING=1\nMONOTONIC_USEC={}", uvring::os::monotonic_us()))
    }

    /// The interval the unit's watchdog expects a `WATCHDOG=1` within
    /// (`WATCHDOG_USEC`), if it asked; ping at half of it.
    pub fn watchdog(&self) -> Option<Duration> {
        self.watchdog
    }
}
