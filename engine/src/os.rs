//! A few operating-system helpers for code built on the loop (the cluster
//! layer, tests), in safe and fd-ownership-correct form: each takes the fds
//! it works on as [`BorrowedFd`] (it never closes them) or returns
//! [`OwnedFd`]s. Everything else that touches the OS stays private to the
//! engine.

use crate::error::{Error, Result};
use crate::sys;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};

/// `listen(2)` on a bound socket.
pub fn listen(fd: BorrowedFd<'_>, backlog: i32) -> Result<()> {
    sys::socket::listen(fd.as_raw_fd(), backlog)
}

/// The socket's local address (`getsockname`): `ENOTSOCK` for an fd that
/// is not a socket, `EINVAL` for a socket whose address is not IPv4/IPv6.
pub fn local_addr(fd: BorrowedFd<'_>) -> Result<SocketAddr> {
    sys::socket::sockname(fd.as_raw_fd())?.to_std().ok_or(Error::EINVAL)
}

/// Whether the fd is a socket (of any family) with a local address.
pub fn is_socket(fd: BorrowedFd<'_>) -> bool {
    sys::socket::sockname(fd.as_raw_fd()).is_ok()
}

/// Whether the fd is a stream socket that listens (`SO_TYPE` is
/// `SOCK_STREAM` and `SO_ACCEPTCONN` is set): what a socket-activated or
/// handed-over listener must be.
pub fn is_listening_stream(fd: BorrowedFd<'_>) -> bool {
    sys::socket::is_listening_stream(fd.as_raw_fd())
}

/// `CLOCK_MONOTONIC` now, in microseconds since an unspecified start (the
/// clock systemd's `MONOTONIC_USEC=` is read on).
pub fn monotonic_us() -> u64 {
    sys::monotonic_us()
}

/// Takes ownership of an fd this process inherited by number (systemd's
/// `LISTEN_FDS` start at 3, say) and makes it close-on-exec, so that
/// children spawned later do not inherit it by accident. `EBADF` if no
/// such fd is open (nothing is owned then).
///
/// # Safety
///
/// Nothing else in this process owns `fd` or will close it: the caller
/// claims it, as `OwnedFd::from_raw_fd` does.
pub unsafe fn adopt_inherited(fd: std::os::fd::RawFd) -> Result<OwnedFd> {
    sys::set_cloexec(fd, true)?;
    // SAFETY: `fd` is open (fcntl succeeded) and, per the caller, unowned.
    Ok(unsafe { sys::owned(fd) })
}

/// A connected pair of Unix stream sockets, close-on-exec, non-blocking
/// if asked.
pub fn socketpair(nonblocking: bool) -> Result<(OwnedFd, OwnedFd)> {
    sys::socket::socketpair(nonblocking)
}

/// Moves the calling thread to `SCHED_BATCH` (or back to `SCHED_OTHER`).
pub fn set_sched_batch(batch: bool) -> Result<()> {
    sys::process::set_sched_batch(batch)
}

/// Moves thread `tid` (a process's main thread has its pid as tid) to
/// `SCHED_BATCH` (or back to `SCHED_OTHER`): for a child that cannot move
/// itself back, as a cluster primary's Node.js workers cannot.
pub fn set_sched_batch_of(tid: i32, batch: bool) -> Result<()> {
    sys::process::set_sched_batch_of(tid, batch)
}

/// Whether the calling thread runs under the normal policy (`SCHED_OTHER`).
pub fn sched_is_normal() -> bool {
    sys::process::sched_is_normal()
}

/// A pidfd for process `pid` (`pidfd_open`).
pub fn pidfd_open(pid: i32) -> Result<OwnedFd> {
    sys::process::pidfd_open(pid)
}

/// Sends `signum` to the process a pidfd names.
pub fn pidfd_send_signal(pidfd: BorrowedFd<'_>, signum: i32) -> Result<()> {
    sys::process::pidfd_send_signal(pidfd.as_raw_fd(), signum)
}

/// Waits for the process a pidfd names to exit, and reaps it.
pub fn wait_blocking(pidfd: BorrowedFd<'_>) -> Result<()> {
    sys::process::wait_blocking(pidfd.as_raw_fd()).map(|_| ())
}
