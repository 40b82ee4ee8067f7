//! The engine's error type: an errno, or one of a few uvring-specific codes.
//!
//! `Error` is `Copy` and never allocates, so it can travel through hot-path
//! callbacks. It converts into `std::io::Error` for callers that want one.

use std::fmt;

/// An error reported by the loop: a positive value is an OS `errno`; negative
/// values are uvring's own conditions (end of stream, stale handle, ...).
///
/// An error may carry a sentence saying what failed
/// ([`context`](Self::context)): only errors meant for a human do (a backend
/// that cannot be set up). Errors can be matched against the constants
/// (`Err(Error::EOF) => ..`); one with a context differs from the bare
/// constant, so compare [`errno`](Self::errno) or [`code`](Self::code) when
/// a context may be present.
#[derive(Copy, Clone, PartialEq, Eq, Hash)]
pub struct Error(i32, Option<&'static str>);

/// Shorthand for results carrying [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// The peer closed its side of the stream (libuv's `UV_EOF`).
    pub const EOF: Error = Error(-1, None);
    /// The handle id is stale: the handle was closed (and perhaps its slot reused).
    pub const STALE_HANDLE: Error = Error(-2, None);
    /// The handle exists but is of another type than the operation needs.
    pub const WRONG_TYPE: Error = Error(-3, None);
    /// The requested backend is not available on this system.
    pub const BACKEND_UNAVAILABLE: Error = Error(-4, None);
    /// The operation is not valid in the handle's current state.
    pub const INVALID_STATE: Error = Error(-5, None);
    /// A received control message was truncated (`MSG_CTRUNC`): fds were lost by the kernel.
    pub const CONTROL_TRUNCATED: Error = Error(-6, None);
    /// A work item's function panicked on its pool thread (the panic was
    /// caught; the pool lives on).
    pub const WORK_PANICKED: Error = Error(-7, None);
    /// The request id is stale: its completion has run (and its entry may
    /// have been reused).
    pub const STALE_REQUEST: Error = Error(-8, None);

    // Name resolution (`getaddrinfo`/`getnameinfo`) failures, with libuv's
    // values for its `UV_EAI_*` codes. `EAI_SYSTEM` is reported as its errno.
    /// The host has no address in the requested family.
    pub const EAI_ADDRFAMILY: Error = Error(-3000, None);
    /// Temporary failure in name resolution (no answer yet; try again).
    pub const EAI_AGAIN: Error = Error(-3001, None);
    /// Invalid flags in the hints.
    pub const EAI_BADFLAGS: Error = Error(-3002, None);
    /// Permanent failure in name resolution.
    pub const EAI_FAIL: Error = Error(-3004, None);
    /// The address family is not supported.
    pub const EAI_FAMILY: Error = Error(-3005, None);
    /// Out of memory while resolving.
    pub const EAI_MEMORY: Error = Error(-3006, None);
    /// The host name exists but has no address.
    pub const EAI_NODATA: Error = Error(-3007, None);
    /// Unknown host or service name.
    pub const EAI_NONAME: Error = Error(-3008, None);
    /// A result did not fit its buffer.
    pub const EAI_OVERFLOW: Error = Error(-3009, None);
    /// The service is not available for the socket type.
    pub const EAI_SERVICE: Error = Error(-3010, None);
    /// The socket type is not supported.
    pub const EAI_SOCKTYPE: Error = Error(-3011, None);

    /// The operation was cancelled: a request still pending when its handle
    /// closed, a cancelled work item or file request (`ECANCELED`).
    pub const ECANCELED: Error = Error(libc::ECANCELED, None);
    /// Try again (`EAGAIN`): nothing available now, e.g. a full kernel send
    /// buffer for [`try_write`](crate::Loop::try_write) or an empty accept queue.
    pub const EAGAIN: Error = Error(libc::EAGAIN, None);
    /// The peer closed its end; writing is no longer possible (`EPIPE`).
    pub const EPIPE: Error = Error(libc::EPIPE, None);
    /// The peer reset the connection (`ECONNRESET`).
    pub const ECONNRESET: Error = Error(libc::ECONNRESET, None);
    /// Nothing listens at the address connected to (`ECONNREFUSED`).
    pub const ECONNREFUSED: Error = Error(libc::ECONNREFUSED, None);
    /// The address is already bound by another socket (`EADDRINUSE`).
    pub const EADDRINUSE: Error = Error(libc::EADDRINUSE, None);
    /// Permission denied (`EACCES`), e.g. a privileged port.
    pub const EACCES: Error = Error(libc::EACCES, None);
    /// An invalid argument (`EINVAL`).
    pub const EINVAL: Error = Error(libc::EINVAL, None);
    /// The process has no free file descriptor (`EMFILE`).
    pub const EMFILE: Error = Error(libc::EMFILE, None);
    /// The system has no free file descriptor (`ENFILE`).
    pub const ENFILE: Error = Error(libc::ENFILE, None);
    /// The socket is not connected (`ENOTCONN`).
    pub const ENOTCONN: Error = Error(libc::ENOTCONN, None);
    /// A bad file descriptor (`EBADF`), e.g. a handle whose fd is gone.
    pub const EBADF: Error = Error(libc::EBADF, None);
    /// No buffer space (`ENOBUFS`), e.g. a pool or kernel queue is full.
    pub const ENOBUFS: Error = Error(libc::ENOBUFS, None);
    /// The operation is not supported here (`ENOSYS`).
    pub const ENOSYS: Error = Error(libc::ENOSYS, None);
    /// No such process (`ESRCH`): it has exited and been reaped.
    pub const ESRCH: Error = Error(libc::ESRCH, None);
    /// No such file or directory (`ENOENT`).
    pub const ENOENT: Error = Error(libc::ENOENT, None);
    /// Operation not permitted (`EPERM`).
    pub const EPERM: Error = Error(libc::EPERM, None);
    /// The resource is busy (`EBUSY`), e.g. a handle already doing this.
    pub const EBUSY: Error = Error(libc::EBUSY, None);
    /// The message is too long (`EMSGSIZE`), e.g. a datagram over the
    /// socket's limit.
    pub const EMSGSIZE: Error = Error(libc::EMSGSIZE, None);
    /// The operation timed out (`ETIMEDOUT`).
    pub const ETIMEDOUT: Error = Error(libc::ETIMEDOUT, None);

    /// An error from an OS `errno` value (positive).
    pub const fn from_errno(errno: i32) -> Error {
        Error(errno, None)
    }

    /// The same error with a sentence saying what failed.
    pub(crate) const fn with_context(self, what: &'static str) -> Error {
        Error(self.0, Some(what))
    }

    /// What failed, when the engine knows more than the code says (for
    /// example "io_uring_setup: EPERM (kernel.io_uring_disabled or a
    /// seccomp filter forbids it)"). `Display` includes it.
    pub fn context(self) -> Option<&'static str> {
        self.1
    }

    /// An error from a kernel-style negative return value (`-errno`).
    pub(crate) const fn from_neg(res: i32) -> Error {
        Error(-res, None)
    }

    /// The `errno` of the last failed libc call on this thread.
    pub(crate) fn last_os_error() -> Error {
        Error(std::io::Error::last_os_error().raw_os_error().unwrap_or(libc::EIO), None)
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
            -7 => "the work function panicked",
            -8 => "stale request (already completed)",
            -3000 => "EAI_ADDRFAMILY: the host has no address in the requested family",
            -3001 => "EAI_AGAIN: temporary failure in name resolution",
            -3002 => "EAI_BADFLAGS: invalid flags in the resolver hints",
            -3004 => "EAI_FAIL: permanent failure in name resolution",
            -3005 => "EAI_FAMILY: address family not supported by the resolver",
            -3006 => "EAI_MEMORY: out of memory in name resolution",
            -3007 => "EAI_NODATA: the host name has no address",
            -3008 => "EAI_NONAME: unknown host or service name",
            -3009 => "EAI_OVERFLOW: resolver result buffer overflow",
            -3010 => "EAI_SERVICE: service not available for the socket type",
            -3011 => "EAI_SOCKTYPE: socket type not supported by the resolver",
            _ => return None,
        })
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(name) => write!(f, "Error({name}")?,
            None => write!(f, "Error(errno {}: {}", self.0, std::io::Error::from_raw_os_error(self.0))?,
        }
        match self.1 {
            Some(what) => write!(f, "; {what})"),
            None => f.write_str(")"),
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(what) = self.1 {
            write!(f, "{what}: ")?;
        }
        match self.name() {
            Some(name) => f.write_str(name),
            None => fmt::Display::fmt(&std::io::Error::from_raw_os_error(self.0), f),
        }
    }
}

/// Keeps one copy of each distinct sentence for the life of the process, so
/// that a `Copy` error can point at it. Only cold, rare failures (a backend
/// that cannot be set up) use it, and their sentences are few: the set stays
/// small however often they happen.
pub(crate) fn intern(sentence: String) -> &'static str {
    static SEEN: std::sync::Mutex<Vec<&'static str>> = std::sync::Mutex::new(Vec::new());
    let mut seen = SEEN.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(s) = seen.iter().find(|s| **s == sentence) {
        return s;
    }
    let s: &'static str = Box::leak(sentence.into_boxed_str());
    seen.push(s);
    s
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
        Error(e.raw_os_error().unwrap_or(libc::EIO), None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn context_is_shown() {
        let e = Error::EPERM.with_context(intern("io_uring_setup: EPERM (kernel.io_uring_disabled)".to_string()));
        assert_eq!(e.code(), Error::EPERM.code());
        assert_eq!(e.errno(), Some(libc::EPERM));
        assert!(matches!(Error::EOF, Error::EOF));
        let shown = e.to_string();
        assert!(shown.starts_with("io_uring_setup: EPERM (kernel.io_uring_disabled): "), "{shown}");
        assert!(format!("{e:?}").contains("kernel.io_uring_disabled"));
        assert_eq!(Error::EPERM.context(), None);
        // Interning keeps one copy per sentence.
        let a = intern("same".to_string());
        let b = intern("same".to_string());
        assert!(std::ptr::eq(a, b));
    }
}
