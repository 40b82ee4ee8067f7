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
///
/// # Errors
///
/// The errno of `listen(2)`: `EADDRINUSE` (another socket listens on the port), `ENOTSOCK`,
/// `EOPNOTSUPP` for a socket type that cannot listen.
pub fn listen(fd: BorrowedFd<'_>, backlog: i32) -> Result<()> {
    sys::socket::listen(fd.as_raw_fd(), backlog)
}

/// The socket's local address (`getsockname`): `ENOTSOCK` for an fd that
/// is not a socket, `EINVAL` for a socket whose address is not IPv4/IPv6.
///
/// # Errors
///
/// `ENOTSOCK` for an fd that is not a socket; `EBADF`; `EINVAL` for a socket whose address is not
/// IPv4 or IPv6 (a Unix socket).
pub fn local_addr(fd: BorrowedFd<'_>) -> Result<SocketAddr> {
    sys::socket::sockname(fd.as_raw_fd())?.to_std().ok_or(Error::EINVAL)
}

/// A close-on-exec duplicate of fd number `fd` of this process (`EBADF`
/// if none is open): for an fd named by number, as Node's `listen({fd})`
/// does, without taking it over.
/// # Errors
///
/// `EBADF` if `fd` is negative or not open; `EMFILE` at the fd limit.
pub fn dup_fd(fd: std::os::fd::RawFd) -> Result<OwnedFd> {
    if fd < 0 {
        return Err(Error::EBADF);
    }
    sys::dup_cloexec(fd)
}

/// Whether the fd is a stream socket (TCP or Unix), listening or not.
pub fn is_stream_socket(fd: BorrowedFd<'_>) -> bool {
    sys::socket::socket_kind(fd.as_raw_fd()).is_ok_and(|(ty, _)| ty == libc::SOCK_STREAM)
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
///
/// # Errors
///
/// `EBADF` if no fd of that number is open (nothing is owned then).
pub unsafe fn adopt_inherited(fd: std::os::fd::RawFd) -> Result<OwnedFd> {
    sys::set_cloexec(fd, true)?;
    // SAFETY: `fd` is open (fcntl succeeded) and, per the caller, unowned.
    Ok(unsafe { sys::owned(fd) })
}

/// A connected pair of Unix stream sockets, close-on-exec, non-blocking
/// if asked.
///
/// # Errors
///
/// The errno of `socketpair(2)`: `EMFILE`, `ENFILE`.
pub fn socketpair(nonblocking: bool) -> Result<(OwnedFd, OwnedFd)> {
    sys::socket::socketpair(nonblocking)
}

/// Moves the calling thread to `SCHED_BATCH` (or back to `SCHED_OTHER`).
///
/// # Errors
///
/// The errno of `sched_setscheduler(2)` (`EPERM` where a policy forbids the change).
pub fn set_sched_batch(batch: bool) -> Result<()> {
    sys::process::set_sched_batch(batch)
}

/// Moves thread `tid` (a process's main thread has its pid as tid) to
/// `SCHED_BATCH` (or back to `SCHED_OTHER`): for a child that cannot move
/// itself back, as a cluster primary's Node.js workers cannot.
/// # Errors
///
/// The errno of `sched_setscheduler(2)`: `ESRCH` for no such thread, `EPERM`.
pub fn set_sched_batch_of(tid: i32, batch: bool) -> Result<()> {
    sys::process::set_sched_batch_of(tid, batch)
}

/// Whether the calling thread runs under the normal policy (`SCHED_OTHER`).
pub fn sched_is_normal() -> bool {
    sys::process::sched_is_normal()
}

/// A pidfd for process `pid` (`pidfd_open`).
///
/// # Errors
///
/// The errno of `pidfd_open(2)`: `ESRCH` for no such process, `ENOSYS` before Linux 5.3, `EMFILE`.
pub fn pidfd_open(pid: i32) -> Result<OwnedFd> {
    sys::process::pidfd_open(pid)
}

/// Sends `signum` to the process a pidfd names.
///
/// # Errors
///
/// The errno of `pidfd_send_signal(2)`: `ESRCH` once the process has exited, `EINVAL` for a bad
/// signal number, `EPERM`.
pub fn pidfd_send_signal(pidfd: BorrowedFd<'_>, signum: i32) -> Result<()> {
    sys::process::pidfd_send_signal(pidfd.as_raw_fd(), signum)
}

/// Waits for the process a pidfd names to exit, and reaps it.
///
/// # Errors
///
/// The errno of `waitid(2)`: `ECHILD` if the process is not a child of the caller (or was reaped
/// already).
pub fn wait_blocking(pidfd: BorrowedFd<'_>) -> Result<()> {
    sys::process::wait_blocking(pidfd.as_raw_fd()).map(|_| ())
}

/// The CPUs this thread may run on (`sched_getaffinity`), in order: the
/// numbers `/proc/PID/status` lists as `Cpus_allowed_list`.
/// # Errors
///
/// The errno of `sched_getaffinity(2)` (`EINVAL` if the kernel's CPU set is larger than the
/// mask asked with).
pub fn allowed_cpus() -> Result<Vec<usize>> {
    sys::process::allowed_cpus()
}

/// This process's `RLIMIT_NOFILE` as `(soft, hard)`.
/// # Errors
///
/// The errno of `getrlimit(2)` (none expected on Linux).
pub fn nofile_limit() -> Result<(u64, u64)> {
    sys::process::nofile_limit()
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit (nginx's
/// `worker_rlimit_nofile`); processes started afterwards inherit it.
/// Returns the new soft limit.
/// # Errors
///
/// The errno of `getrlimit(2)` or `setrlimit(2)` (`EPERM` if the hard limit is above
/// `fs.nr_open`).
pub fn raise_nofile_limit() -> Result<u64> {
    sys::process::raise_nofile_limit()
}

/// Opens `path` for appending (created with mode `0644` if missing) and
/// makes it fd `target` (`dup2`): what `target` was is closed. nginx's log
/// reopen: after a log rotation moved the file away, the next write goes to
/// a new file at `path`. `EINVAL` for a path with a NUL byte.
///
/// # Errors
///
/// `EINVAL` for a path with a NUL byte; the errno of `open(2)` (`ENOENT` for a missing
/// directory, `EACCES`) or `dup2(2)`; `target` is unchanged on error.
pub fn reopen_append(path: &std::path::Path, target: BorrowedFd<'_>) -> Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).map_err(|_| Error::EINVAL)?;
    sys::process::reopen_append(&c, target.as_raw_fd())
}
