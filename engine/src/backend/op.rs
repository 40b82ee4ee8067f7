//! Operation descriptions: what the loop asks a backend to do.
//!
//! An [`Op`] names one operation and carries its arguments; the loop hands
//! it to [`Driver::submit`](super::Driver::submit) with the [`Token`] that
//! its completions will carry. Adding an op kind means adding a variant here
//! (and its kind to [`OpKind`]): every driver matches ops and kinds
//! exhaustively, so each one fails to compile until it handles the new op.

use crate::sys::socket::SockAddr;
use std::os::fd::RawFd;

/// Declares [`OpKind`] and its decoding from a token's kind byte from one
/// list, so a new kind cannot be forgotten in `from_u8`.
macro_rules! op_kinds {
    ($($(#[$doc:meta])* $name:ident = $value:literal,)*) => {
        /// What kind of operation a token belongs to.
        #[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
        #[repr(u8)]
        pub(crate) enum OpKind {
            $($(#[$doc])* $name = $value,)*
        }

        impl OpKind {
            /// The kind whose byte is `v`; `None` for 0 (backend-internal
            /// operations) and unknown bytes.
            pub(crate) fn from_u8(v: u8) -> Option<OpKind> {
                match v {
                    $($value => Some(OpKind::$name),)*
                    _ => None,
                }
            }
        }
    };
}

op_kinds! {
    /// Persistent: accept connections.
    Accept = 1,
    /// Persistent: receive stream bytes into pool buffers.
    Recv = 2,
    /// Persistent: receive recvmsg records (with `SCM_RIGHTS` fds).
    RecvMsg = 3,
    /// One-shot: send bytes, maybe with fds.
    Send = 4,
    /// One-shot: connect a socket.
    Connect = 5,
    /// One-shot: `read(2)` into memory the loop lends.
    Read = 6,
    /// One-shot: wait until an fd is readable (a pidfd).
    PollIn = 7,
    /// One-shot: a poll watcher's readiness poll.
    Poll = 8,
    /// One-shot: read a file at an offset into memory the loop lends.
    FileRead = 9,
    /// One-shot: write a file at an offset from memory the loop lends.
    FileWrite = 10,
    /// One-shot: `fsync`/`fdatasync`.
    Fsync = 11,
    /// One-shot: `statx` into a record the loop lends.
    Statx = 12,
    /// One-shot: `openat`; the result is a new fd.
    OpenAt = 13,
    /// Persistent: receive datagrams, each a recvmsg record with the
    /// sender's address.
    RecvFrom = 14,
    /// One-shot: send one datagram, maybe to an address.
    SendTo = 15,
    /// Persistent: `read(2)` stream bytes from a non-socket fd (pipe, FIFO,
    /// tty, regular file) into pool buffers.
    ReadStream = 20,
    /// One-shot: `writev(2)` to a non-socket fd (pipe, FIFO, tty, file).
    WriteStream = 21,
    /// One-shot: `preadv` into buffers the loop lends.
    FileReadv = 22,
    /// One-shot: `pwritev` from buffers the loop lends.
    FileWritev = 23,
}

impl OpKind {
    /// File operations: only io_uring performs them (where its probe
    /// found the opcode); the loop sends them to the work pool otherwise.
    pub(crate) fn is_file_op(self) -> bool {
        matches!(
            self,
            OpKind::FileRead
                | OpKind::FileWrite
                | OpKind::Fsync
                | OpKind::Statx
                | OpKind::OpenAt
                | OpKind::FileReadv
                | OpKind::FileWritev
        )
    }
}

/// One operation for [`Driver::submit`](super::Driver::submit), with its
/// arguments. What each op does, and what its completions carry, is in the
/// contract (`super`, "The operations").
#[derive(Copy, Clone, Debug)]
pub(crate) enum Op<'a> {
    /// Accept connections on the listening socket `fd`. `exclusive` asks that
    /// only one of several processes sharing the socket wakes per connection
    /// (`EPOLLEXCLUSIVE`; io_uring's accept is exclusive already).
    Accept { fd: RawFd, exclusive: bool },
    /// Receive stream bytes into pool buffers; `res == 0` is EOF, final.
    Recv { fd: RawFd },
    /// As `Recv`, each buffer holding a recvmsg record with any `SCM_RIGHTS`
    /// fds (received `CLOEXEC`); see [`parse_recvmsg`](super::parse_recvmsg).
    RecvMsg { fd: RawFd },
    /// Send `iov` (at most [`MAX_IOV`](super::MAX_IOV) entries) with
    /// `MSG_NOSIGNAL`, attaching `fds` (at most
    /// [`MAX_FDS_PER_MSG`](crate::sys::socket::MAX_FDS_PER_MSG)) as one
    /// `SCM_RIGHTS` message if non-empty. The result may be a short count;
    /// the fds went with the first byte if `res > 0`.
    Send { fd: RawFd, iov: &'a [libc::iovec], fds: &'a [RawFd] },
    /// Connect the non-blocking socket `fd` to `addr`; 0 or `-errno`.
    Connect { fd: RawFd, addr: &'a SockAddr },
    /// `read(2)` from a non-socket fd (eventfd, signal pipe) into
    /// `ptr..ptr + len`.
    Read { fd: RawFd, ptr: *mut u8, len: usize },
    /// Complete when `fd` is readable (a pidfd).
    PollIn { fd: RawFd },
    /// Complete when `fd` (which the loop may not own) has any of `events`
    /// (`POLLIN`, `POLLOUT`, `POLLRDHUP`, `POLLPRI`); `res` is the `poll(2)`
    /// revents (`POLLERR` and `POLLHUP` are always reported).
    Poll { fd: RawFd, events: u32 },
    /// `pread` into `ptr..ptr + len` at `offset` (`None`: at the file
    /// position, as `read`).
    FileRead { fd: RawFd, ptr: *mut u8, len: usize, offset: Option<u64> },
    /// `pwrite` from `ptr..ptr + len` at `offset` (`None`: at the file
    /// position, as `write`).
    FileWrite { fd: RawFd, ptr: *const u8, len: usize, offset: Option<u64> },
    /// `fsync`, or `fdatasync` with `data_only`.
    Fsync { fd: RawFd, data_only: bool },
    /// `statx(dirfd, path, flags)` into `*buf`; `path` is NUL-terminated.
    Statx { dirfd: RawFd, path: *const libc::c_char, flags: i32, buf: *mut crate::sys::fs::StatxBuf },
    /// `openat(AT_FDCWD, path, flags, mode)`; `path` is NUL-terminated and
    /// `flags` include `O_CLOEXEC`.
    OpenAt { path: *const libc::c_char, flags: i32, mode: u32 },
    /// Receive datagrams into pool buffers, one recvmsg record per datagram
    /// with the sender's address in its name space
    /// ([`RecordLayout::DATAGRAM`](super::RecordLayout::DATAGRAM)); a
    /// datagram longer than the payload space arrives cut, with
    /// `MSG_TRUNC` in the record's flags. A zero-length datagram is a
    /// record like any other, not an end: this op ends only when it fails
    /// or is cancelled.
    RecvFrom { fd: RawFd },
    /// Send `iov` (at most [`MAX_IOV`](super::MAX_IOV) entries) as one
    /// datagram with `MSG_NOSIGNAL`, to `addr` if given (an unconnected
    /// socket), else to the connected peer. The result is the datagram's
    /// length; a datagram is never sent in part.
    SendTo { fd: RawFd, iov: &'a [libc::iovec], addr: Option<&'a SockAddr> },
    /// As `Recv`, for an fd that is not a socket (a pipe, FIFO or tty,
    /// non-blocking; or a regular file or `/dev/null`, which never block and
    /// which epoll cannot watch: they are read as always ready). `read(2)`
    /// at the file position; `res == 0` is EOF, final.
    ReadStream { fd: RawFd },
    /// As `Send` without fds, for an fd that is not a socket: `writev(2)`
    /// of `iov` (at most [`MAX_IOV`](super::MAX_IOV) entries) at the file
    /// position. The result may be a short count.
    WriteStream { fd: RawFd, iov: &'a [libc::iovec] },
    /// `preadv` into the `iovcnt` iovecs at `iov` at `offset` (`None`: at
    /// the file position, as `readv`); the iovec array and the memory each
    /// iovec describes are lent.
    FileReadv { fd: RawFd, iov: *const libc::iovec, iovcnt: usize, offset: Option<u64> },
    /// `pwritev` from the `iovcnt` iovecs at `iov` at `offset` (`None`: at
    /// the file position, as `writev`); lent as for `FileReadv`.
    FileWritev { fd: RawFd, iov: *const libc::iovec, iovcnt: usize, offset: Option<u64> },
}

impl Op<'_> {
    /// The op's kind, as its token must name it.
    pub(crate) fn kind(&self) -> OpKind {
        match self {
            Op::Accept { .. } => OpKind::Accept,
            Op::Recv { .. } => OpKind::Recv,
            Op::RecvMsg { .. } => OpKind::RecvMsg,
            Op::Send { .. } => OpKind::Send,
            Op::Connect { .. } => OpKind::Connect,
            Op::Read { .. } => OpKind::Read,
            Op::PollIn { .. } => OpKind::PollIn,
            Op::Poll { .. } => OpKind::Poll,
            Op::FileRead { .. } => OpKind::FileRead,
            Op::FileWrite { .. } => OpKind::FileWrite,
            Op::Fsync { .. } => OpKind::Fsync,
            Op::Statx { .. } => OpKind::Statx,
            Op::OpenAt { .. } => OpKind::OpenAt,
            Op::RecvFrom { .. } => OpKind::RecvFrom,
            Op::SendTo { .. } => OpKind::SendTo,
            Op::ReadStream { .. } => OpKind::ReadStream,
            Op::WriteStream { .. } => OpKind::WriteStream,
            Op::FileReadv { .. } => OpKind::FileReadv,
            Op::FileWritev { .. } => OpKind::FileWritev,
        }
    }
}

/// Tags an operation: op slot index (24 bits), op generation (32 bits), op
/// kind (8 bits). Fits io_uring's `user_data` and epoll's `u64`. The loop
/// gives every op it submits its own token (an entry of its op table), so a
/// completion names one op, never a handle's "recv" or "send" in general.
/// Zero is never a valid token (kinds start at 1); backends may use values
/// with kind 0 for their own internal operations.
#[derive(Copy, Clone, PartialEq, Eq, Hash)]
pub(crate) struct Token(pub u64);

impl Token {
    pub const INDEX_BITS: u32 = 24;
    pub const MAX_INDEX: usize = (1 << Self::INDEX_BITS) - 1;

    pub fn new(index: usize, generation: u32, kind: OpKind) -> Token {
        debug_assert!(index <= Self::MAX_INDEX);
        Token(((index as u64) << 40) | ((generation as u64) << 8) | kind as u64)
    }
    /// The op table slot.
    pub fn index(self) -> usize {
        (self.0 >> 40) as usize
    }
    /// The op table slot's generation when the op was submitted.
    pub fn generation(self) -> u32 {
        (self.0 >> 8) as u32
    }
    pub fn kind(self) -> Option<OpKind> {
        OpKind::from_u8(self.0 as u8)
    }
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Token({}#{} {:?})", self.index(), self.generation(), self.kind())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_fields_round_trip() {
        let kinds = [
            OpKind::Accept,
            OpKind::Recv,
            OpKind::RecvMsg,
            OpKind::Send,
            OpKind::Connect,
            OpKind::Read,
            OpKind::PollIn,
            OpKind::Poll,
            OpKind::FileRead,
            OpKind::FileWrite,
            OpKind::Fsync,
            OpKind::Statx,
            OpKind::OpenAt,
            OpKind::RecvFrom,
            OpKind::SendTo,
            OpKind::ReadStream,
            OpKind::WriteStream,
            OpKind::FileReadv,
            OpKind::FileWritev,
        ];
        for (i, &k) in kinds.iter().enumerate() {
            let t = Token::new(Token::MAX_INDEX - i, u32::MAX - i as u32, k);
            assert_eq!((t.index(), t.generation(), t.kind()), (Token::MAX_INDEX - i, u32::MAX - i as u32, Some(k)));
            assert_ne!(t.0, 0);
        }
        assert_eq!(Token(0).kind(), None, "kind byte 0 is the backends' own");
    }
}
