//! The only module that calls libc (with the io_uring backend, which talks to
//! the kernel through the `io-uring` crate).
//!
//! Every wrapper returns `Result<_, Error>` mapping `-1` to `errno` through the
//! `syscall!` macro; every fd the engine creates is `CLOEXEC` and, for sockets,
//! non-blocking.

#![allow(unsafe_code)]

pub mod dns;
pub mod fs;
pub mod inotify;
pub mod process;
pub mod sendfile;
pub mod signal;
pub mod socket;

use crate::error::{Error, Result};
use std::os::fd::{FromRawFd, OwnedFd, RawFd};

/// Calls a libc function, mapping a `-1` return to `Err(Error::last_os_error())`.
macro_rules! syscall {
    ($fn:ident ( $($arg:expr),* $(,)? )) => {{
        // SAFETY: callers pass valid arguments per the libc function's contract;
        // each call site documents the pointers it hands over.
        let res = unsafe { libc::$fn($($arg),*) };
        if res == -1 {
            Err($crate::error::Error::last_os_error())
        } else {
            Ok(res)
        }
    }};
}
pub(crate) use syscall;

/// Closes an fd we own. Errors from close are not actionable (the fd is gone
/// either way), so they are ignored, as libuv does.
pub fn close(fd: RawFd) {
    // SAFETY: the caller owns `fd` and never uses it again.
    unsafe {
        libc::close(fd);
    }
}

/// Wraps a raw fd we just received from the kernel as owned.
///
/// # Safety
/// `fd` must be open and owned by nobody else.
pub unsafe fn owned(fd: RawFd) -> OwnedFd {
    // SAFETY: forwarded to the caller.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

/// Whether `fd` is readable now (`poll` with a zero timeout): for a
/// listening socket, a connection waits in its backlog.
pub fn readable_now(fd: RawFd) -> Result<bool> {
    let mut p = libc::pollfd { fd, events: libc::POLLIN, revents: 0 };
    // SAFETY: `p` is one valid pollfd for the call's duration.
    let n = syscall!(poll(&mut p, 1, 0))?;
    Ok(n > 0 && p.revents & libc::POLLIN != 0)
}

/// Reads into `buf`; returns the count or an error (`EAGAIN` included).
pub fn read(fd: RawFd, buf: &mut [u8]) -> Result<usize> {
    // SAFETY: `buf` is valid for writes of `buf.len()` bytes.
    let n = syscall!(read(fd, buf.as_mut_ptr().cast(), buf.len()))?;
    Ok(n as usize)
}

/// `writev(2)`: writes what `iov` describes (a pipe, tty or file; a
/// closed pipe gives `EPIPE`, and `SIGPIPE`, which Rust programs ignore
/// unless they ask otherwise); returns the count or an error.
///
/// # Safety
/// Each iovec must describe memory valid for reads for the call.
pub unsafe fn writev(fd: RawFd, iov: &[libc::iovec]) -> Result<usize> {
    let n = syscall!(writev(fd, iov.as_ptr(), iov.len().min(libc::c_int::MAX as usize) as libc::c_int))?;
    Ok(n as usize)
}

/// Whether `fd` is a socket (`fstat`); errors for a closed fd.
pub fn is_socket(fd: RawFd) -> Result<bool> {
    // SAFETY: stat is plain data; all-zero is a valid value.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `st` is a valid stat record for the call.
    syscall!(fstat(fd, &mut st))?;
    Ok(st.st_mode & libc::S_IFMT == libc::S_IFSOCK)
}

/// Writes from `buf`; returns the count or an error (tests only).
#[cfg(test)]
pub fn write(fd: RawFd, buf: &[u8]) -> Result<usize> {
    let n = syscall!(write(fd, buf.as_ptr().cast(), buf.len()))?;
    Ok(n as usize)
}

/// Opens `/dev/null` read-only, close-on-exec (a cheap fd for tests).
#[cfg(test)]
pub fn open_dev_null() -> Result<OwnedFd> {
    let fd = syscall!(open(c"/dev/null".as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC))?;
    // SAFETY: open returned a fresh fd that nobody else owns.
    Ok(unsafe { owned(fd) })
}

/// A non-blocking, close-on-exec eventfd (used by async handles and wake-ups).
pub fn eventfd() -> Result<OwnedFd> {
    let fd = syscall!(eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK))?;
    // SAFETY: eventfd just returned a fresh fd that nobody else owns.
    Ok(unsafe { owned(fd) })
}

/// Adds one to an eventfd counter. `EAGAIN` (counter saturated) still means
/// the reader will wake, so it is not an error.
pub fn eventfd_signal(fd: RawFd) {
    let one: u64 = 1;
    // SAFETY: writes 8 bytes from a live u64; the result only matters for EAGAIN,
    // which leaves the eventfd readable anyway.
    unsafe {
        libc::write(fd, (&one as *const u64).cast(), 8);
    }
}

/// A close-on-exec, non-blocking pipe: (read end, write end).
pub fn pipe() -> Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as RawFd; 2];
    // SAFETY: `fds` has room for the two fds pipe2 writes.
    syscall!(pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK))?;
    // SAFETY: pipe2 returned two fresh fds that nobody else owns.
    Ok(unsafe { (owned(fds[0]), owned(fds[1])) })
}

/// Sets or clears `O_NONBLOCK`.
pub fn set_nonblocking(fd: RawFd, on: bool) -> Result<()> {
    let flags = syscall!(fcntl(fd, libc::F_GETFL))?;
    let new = if on { flags | libc::O_NONBLOCK } else { flags & !libc::O_NONBLOCK };
    if new != flags {
        syscall!(fcntl(fd, libc::F_SETFL, new))?;
    }
    Ok(())
}

/// Sets or clears `FD_CLOEXEC`.
pub fn set_cloexec(fd: RawFd, on: bool) -> Result<()> {
    let flags = syscall!(fcntl(fd, libc::F_GETFD))?;
    let new = if on { flags | libc::FD_CLOEXEC } else { flags & !libc::FD_CLOEXEC };
    if new != flags {
        syscall!(fcntl(fd, libc::F_SETFD, new))?;
    }
    Ok(())
}

/// Duplicates `fd` as a new close-on-exec fd.
pub fn dup_cloexec(fd: RawFd) -> Result<OwnedFd> {
    let new = syscall!(fcntl(fd, libc::F_DUPFD_CLOEXEC, 0))?;
    // SAFETY: fcntl returned a fresh fd that nobody else owns.
    Ok(unsafe { owned(new) })
}

/// Monotonic clock in milliseconds (the loop's `now`).
pub fn monotonic_ms() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid timespec to fill; CLOCK_MONOTONIC cannot fail.
    unsafe {
        libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts);
    }
    ts.tv_sec as u64 * 1000 + ts.tv_nsec as u64 / 1_000_000
}

/// Monotonic clock in microseconds (`CLOCK_MONOTONIC`, as systemd's
/// `MONOTONIC_USEC=` wants it).
pub fn monotonic_us() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid timespec to fill; CLOCK_MONOTONIC cannot fail.
    unsafe {
        libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts);
    }
    ts.tv_sec as u64 * 1_000_000 + ts.tv_nsec as u64 / 1000
}

/// Raw epoll calls for the epoll backend.
pub mod epoll {
    use super::*;
    pub use libc::epoll_event as Event;
    pub const IN: u32 = libc::EPOLLIN as u32;
    pub const OUT: u32 = libc::EPOLLOUT as u32;
    pub const ERR: u32 = libc::EPOLLERR as u32;
    pub const HUP: u32 = libc::EPOLLHUP as u32;
    pub const RDHUP: u32 = libc::EPOLLRDHUP as u32;
    pub const PRI: u32 = libc::EPOLLPRI as u32;
    pub const EXCLUSIVE: u32 = libc::EPOLLEXCLUSIVE as u32;

    pub fn create() -> Result<OwnedFd> {
        let fd = syscall!(epoll_create1(libc::EPOLL_CLOEXEC))?;
        // SAFETY: epoll_create1 returned a fresh fd that nobody else owns.
        Ok(unsafe { owned(fd) })
    }

    pub fn ctl(epfd: RawFd, op: i32, fd: RawFd, events: u32, data: u64) -> Result<()> {
        let mut ev = libc::epoll_event { events, u64: data };
        // SAFETY: `ev` is a valid epoll_event for the duration of the call.
        syscall!(epoll_ctl(epfd, op, fd, &mut ev))?;
        Ok(())
    }
    pub const ADD: i32 = libc::EPOLL_CTL_ADD;
    pub const MOD: i32 = libc::EPOLL_CTL_MOD;
    pub const DEL: i32 = libc::EPOLL_CTL_DEL;

    /// Waits for events; `timeout_ms < 0` blocks. `EINTR` reads as zero events.
    pub fn wait(epfd: RawFd, events: &mut [Event], timeout_ms: i32) -> Result<usize> {
        // SAFETY: `events` has room for `events.len()` entries, which bounds what
        // the kernel writes.
        let res = unsafe { libc::epoll_wait(epfd, events.as_mut_ptr(), events.len() as i32, timeout_ms) };
        if res < 0 {
            let e = Error::last_os_error();
            if e.errno() == Some(libc::EINTR) {
                return Ok(0);
            }
            return Err(e);
        }
        Ok(res as usize)
    }

    /// An all-zero event array element for pre-sizing buffers.
    pub const EMPTY: Event = libc::epoll_event { events: 0, u64: 0 };
}
