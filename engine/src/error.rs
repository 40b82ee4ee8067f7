//! The engine's error type: an errno, or one of a few uvring-specific codes.
//!
//! `Error` is `Copy` and never allocates, so it can travel through hot-path
//! callbacks. It converts into `std::io::Error` for callers that want one.

use std::fmt;

/// An error reported by the loop: a positive value is an OS `errno`; negative
/// values are uvring's own conditions (end of stream, stale handle, ...).
#[derive(Copy, Clone, PartialEq, Eq, Hash)]
pub struct Error(i32);

/// Shorthand for results carrying [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// The peer closed its side of the stream (libuv's `UV_EOF`).
    pub const EOF: Error = Error(-1);
    /// The handle id is stale: the handle was closed (and perhaps its slot reused).
    pub const STALE_HANDLE: Error = Error(-2);
    /// The handle exists but is of another type than the operation needs.
    pub const WRONG_TYPE: Error = Error(-3);
    /// The requested backend is not available on this system.
    pub const BACKEND_UNAVAILABLE: Error = Error(-4);
    /// The operation is not valid in the handle's current state.
    pub const INVALID_STATE: Error = Error(-5);
    /// A received control message was truncated (`MSG_CTRUNC`): fds were lost by the kernel.
    pub const CONTROL_TRUNCATED: Error = Error(-6);

    pub const ECANCELED: Error = Error(libc::ECANCELED);
    pub const EAGAIN: Error = Error(libc::EAGAIN);
    pub const EPIPE: Error = Error(libc::EPIPE);
    pub const ECONNRESET: Error = Error(libc::ECONNRESET);
    pub const ECONNREFUSED: Error = Error(libc::ECONNREFUSED);
    pub const EADDRINUSE: Error = Error(libc::EADDRINUSE);
    pub const EACCES: Error = Error(libc::EACCES);
    pub const EINVAL: Error = Error(libc::EINVAL);
    pub const EMFILE: Error = Error(libc::EMFILE);
    pub const ENFILE: Error = Error(libc::ENFILE);
    pub const ENOTCONN: Error = Error(libc::ENOTCONN);
    pub const EBADF: Error = Error(libc::EBADF);
    pub const ENOBUFS: Error = Error(libc::ENOBUFS);
    pub const ENOSYS: Error = Error(libc::ENOSYS);
    pub const ESRCH: Error = Error(libc::ESRCH);
    pub const ENOENT: Error = Error(libc::ENOENT);

    /// An error from an OS `errno` value (positive).
    pub const fn from_errno(errno: i32) -> Error {
        Error(errno)
    }

    /// An error from a kernel-style negative return value (`-errno`).
    pub(crate) const fn from_neg(res: i32) -> Error {
        Error(-res)
    }

    /// The `errno` of the last failed libc call on this thread.
    pub(crate) fn last_os_error() -> Error {
        Error(std::io::Error::last_os_error().raw_os_error().unwrap_or(libc::EIO))
    }

    /// The OS `errno`, if this error is one.
    pub fn errno(self) -> Option<i32> {
        (self.0 > 0).then_some(self.0)
    }

    /// The raw code: positive for `errno`, negative for uvring's own codes.
    pub fn code(self) -> i32 {
        self.0
    }

    /// True for `EAGAIN`/`EWOULDBLOCK`, which is never a failure, only "not now".
    pub fn is_would_block(self) -> bool {
        self.0 == libc::EAGAIN
    }

    fn name(self) -> Option<&'static str> {
        Some(match self.0 {
            -1 => "end of stream",
            -2 => "stale handle (closed or reused)",
            -3 => "handle has the wrong type for this operation",
            -4 => "backend unavailable",
            -5 => "invalid state for this operation",
            -6 => "control message truncated (MSG_CTRUNC): file descriptors were dropped",
            _ => return None,
        })
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(name) => write!(f, "Error({name})"),
            None => write!(f, "Error(errno {}: {})", self.0, std::io::Error::from_raw_os_error(self.0)),
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(name) => f.write_str(name),
            None => fmt::Display::fmt(&std::io::Error::from_raw_os_error(self.0), f),
        }
    }
}

impl std::error::Error for Error {}

impl From<Error> for std::io::Error {
    fn from(e: Error) -> std::io::Error {
        match e.errno() {
            Some(errno) => std::io::Error::from_raw_os_error(errno),
            None if e == Error::EOF => std::io::Error::new(std::io::ErrorKind::UnexpectedEof, e),
            None => std::io::Error::other(e),
        }
    }
}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Error {
        Error(e.raw_os_error().unwrap_or(libc::EIO))
    }
}
