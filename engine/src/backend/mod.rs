//! The backend contract: how the loop hands I/O to epoll or io_uring.
//!
//! The contract is **completion-shaped**, so that io_uring fits it natively
//! and epoll imitates it: the loop *submits* operations tagged with a
//! [`Token`], and [`Driver::poll`] reports [`Completion`]s. The epoll backend
//! waits for readiness and then does the syscall itself, reporting its result
//! as a completion; the io_uring backend submits the operation to the ring.
//!
//! # Rules every backend meets
//!
//! 1. **Exactly one final completion.** Every submitted operation reports
//!    completions until one with `more == false`; after that, nothing more
//!    carries its token. One-shot operations (send, connect, read, poll_in)
//!    report exactly one completion. Persistent operations (accept, recv,
//!    recvmsg) report any number with `more == true` and then a final one,
//!    when they fail, are cancelled, or the kernel ends a multishot (io_uring
//!    re-arms internally where it can, e.g. after `ENOBUFS`, only if that keeps
//!    the op alive without loss; otherwise it ends the op and the loop re-arms).
//! 2. **Cancel hastens, never skips.** [`Driver::cancel`] makes the op end
//!    soon; its final completion still arrives through `poll` (with
//!    `-ECANCELED`, or its real result if it finished first). No completion is
//!    ever delivered synchronously from a submit or cancel call: user callbacks
//!    never run re-entrantly.
//! 3. **Memory lent stays lent.** For `send` and `read`, the loop guarantees
//!    that the data memory stays valid and untouched until the final
//!    completion. The backend copies everything else it needs (iovec arrays,
//!    fd numbers, socket addresses) into storage it owns, so callers may pass
//!    stack values. The fds named in a send must stay **open** until its
//!    completion: io_uring reads them when the operation runs, not when it is
//!    submitted.
//! 4. **Resources in completions are owned by the receiver.** An accept
//!    completion with `res >= 0` carries a new fd (non-blocking, `CLOEXEC`),
//!    now owned by the loop. A completion with `buf = Some(id)` lends receive
//!    buffer `id` until the loop calls [`Driver::recycle`]. The loop releases
//!    both even when it drops the completion (stale handle).
//!    Accept completions may still arrive after `cancel` (io_uring runs the
//!    wake-ups it already claimed first, so a connection it took from a shared
//!    listen queue is never stranded); the loop serves or closes them.
//! 5. **Bounded work per wakeup.** A backend reports at most the `out`
//!    capacity per `poll`, performs at most [`MAX_ACCEPTS_PER_WAKEUP`]
//!    accepts and [`MAX_READS_PER_WAKEUP`] reads per fd per wakeup.
//! 6. **Nothing inherited across fork.** fds are `CLOEXEC`; the ring is
//!    `dontfork`.
//!
//! # Receive buffers
//!
//! Both backends receive into one pool of `count` buffers of `size` bytes
//! ([`BufPool`]). Buffer ids are `u16`. For `recvmsg`, a buffer holds a
//! record in io_uring's `io_uring_recvmsg_out` layout: a 16-byte header
//! (`namelen`, `controllen`, `payloadlen`, `flags` as native-endian u32),
//! `namelen` (always 0) bytes of name, [`RECVMSG_CONTROL_LEN`] bytes of control
//! space (of which `controllen` are used), then the payload; see
//! [`parse_recvmsg`]. The epoll backend writes the same layout, so the loop
//! parses one format. A recvmsg completion's `res` is the record's full
//! length (header + control space + payload). End of stream on recv and
//! recvmsg alike is `res == 0` with no buffer, and is final.

pub(crate) mod bufpool;
pub(crate) mod epoll;
pub(crate) mod uring;

pub(crate) use bufpool::BufPool;

use crate::error::{Error, Result};
use std::os::fd::RawFd;

/// Most accepts one listener performs per wakeup (fairness).
pub const MAX_ACCEPTS_PER_WAKEUP: usize = 32;
/// Most reads one stream performs per wakeup (fairness), as libuv's 32.
pub const MAX_READS_PER_WAKEUP: usize = 32;
/// Most iovecs in one send.
pub const MAX_IOV: usize = 8;
/// Control space reserved in every recvmsg buffer.
pub const RECVMSG_CONTROL_LEN: usize = crate::sys::socket::CONTROL_LEN;
/// Size of the `io_uring_recvmsg_out` header.
pub const RECVMSG_HEADER_LEN: usize = 16;

/// The I/O backend a loop runs on.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum Backend {
    /// Readiness with `epoll`; the loop does the syscalls.
    Epoll,
    /// Completions with `io_uring`.
    IoUring,
    /// io_uring when the ring can be set up and the probe finds every needed
    /// operation, else epoll (the loop records why).
    Auto,
}

impl Backend {
    /// Reads `UVRING_BACKEND` (`epoll`, `io_uring`/`iouring`/`uring`, `auto`);
    /// unset or empty means `Auto`.
    pub fn from_env() -> Result<Backend> {
        match std::env::var("UVRING_BACKEND") {
            Err(_) => Ok(Backend::Auto),
            Ok(v) => Backend::parse(&v).ok_or(Error::EINVAL),
        }
    }

    /// Parses a backend name as accepted by `UVRING_BACKEND`.
    pub fn parse(name: &str) -> Option<Backend> {
        match name.trim().to_ascii_lowercase().as_str() {
            "" | "auto" => Some(Backend::Auto),
            "epoll" => Some(Backend::Epoll),
            "io_uring" | "iouring" | "uring" | "io-uring" => Some(Backend::IoUring),
            _ => None,
        }
    }

    /// The name used by `UVRING_BACKEND`.
    pub fn name(self) -> &'static str {
        match self {
            Backend::Epoll => "epoll",
            Backend::IoUring => "io_uring",
            Backend::Auto => "auto",
        }
    }
}

impl std::fmt::Display for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// What kind of operation a token belongs to. A handle has at most one op of
/// each kind in flight, so (handle, kind) identifies an op.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum OpKind {
    Accept = 1,
    Recv = 2,
    RecvMsg = 3,
    Send = 4,
    Connect = 5,
    Read = 6,
    PollIn = 7,
}

impl OpKind {
    fn from_u8(v: u8) -> Option<OpKind> {
        Some(match v {
            1 => OpKind::Accept,
            2 => OpKind::Recv,
            3 => OpKind::RecvMsg,
            4 => OpKind::Send,
            5 => OpKind::Connect,
            6 => OpKind::Read,
            7 => OpKind::PollIn,
            _ => return None,
        })
    }
}

/// Tags an operation: handle slot index (24 bits), handle generation (32
/// bits), op kind (8 bits). Fits io_uring's `user_data` and epoll's `u64`.
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
    pub fn index(self) -> usize {
        (self.0 >> 40) as usize
    }
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

/// One reported result.
#[derive(Copy, Clone, Debug)]
pub(crate) struct Completion {
    pub token: Token,
    /// `>= 0`: bytes, a new fd (accept), revents (poll_in), 0 for connect;
    /// `< 0`: `-errno`.
    pub res: i32,
    /// A receive buffer lent to the loop (recv, recvmsg).
    pub buf: Option<u16>,
    /// More completions will follow for this op.
    pub more: bool,
}

/// What every backend implements. Calls never run user code.
pub(crate) trait Driver {
    /// Which backend this is.
    fn kind(&self) -> Backend;

    /// Persistent: accept connections on a listening socket. `exclusive` asks
    /// that only one of several processes sharing the socket wakes per
    /// connection (`EPOLLEXCLUSIVE`; io_uring's accept is exclusive already).
    fn accept(&mut self, fd: RawFd, token: Token, exclusive: bool) -> Result<()>;

    /// Persistent: receive stream bytes into pool buffers; `res == 0` is EOF
    /// and is final.
    fn recv(&mut self, fd: RawFd, token: Token) -> Result<()>;

    /// Persistent: like `recv`, but each buffer holds a recvmsg record with
    /// any `SCM_RIGHTS` fds (received `CLOEXEC`); see [`parse_recvmsg`].
    fn recvmsg(&mut self, fd: RawFd, token: Token) -> Result<()>;

    /// One-shot: send `iov` (at most [`MAX_IOV`] entries) with `MSG_NOSIGNAL`,
    /// attaching `fds` as one `SCM_RIGHTS` message if non-empty. The result
    /// may be a short count; the fds went with the first byte if `res > 0`.
    ///
    /// # Safety
    /// The memory each iovec describes must stay valid and unmodified until
    /// this op's completion is reported.
    unsafe fn send(&mut self, fd: RawFd, token: Token, iov: &[libc::iovec], fds: &[RawFd]) -> Result<()>;

    /// One-shot: connect a non-blocking socket; completes with 0 or `-errno`.
    fn connect(&mut self, fd: RawFd, token: Token, addr: &crate::sys::socket::SockAddr) -> Result<()>;

    /// One-shot: `read(2)` from a non-socket fd (eventfd, signal pipe).
    ///
    /// # Safety
    /// `ptr..ptr+len` must stay valid for writes until the completion.
    unsafe fn read(&mut self, fd: RawFd, token: Token, ptr: *mut u8, len: usize) -> Result<()>;

    /// One-shot: complete when `fd` is readable (pidfd).
    fn poll_in(&mut self, fd: RawFd, token: Token) -> Result<()>;

    /// Ends the op `token` on `fd` soon; see rule 2.
    fn cancel(&mut self, fd: RawFd, token: Token);

    /// Forgets `fd` before the loop closes it (epoll: `EPOLL_CTL_DEL`, which
    /// matters when another process holds the same open file). Called only
    /// when no op on `fd` is in flight.
    fn deregister(&mut self, fd: RawFd);

    /// Submits pending work and waits up to `timeout_ms` (`-1`: no limit,
    /// `0`: don't block) for completions, appending at most
    /// `out.capacity() - out.len()` of them to `out`.
    fn poll(&mut self, timeout_ms: i64, out: &mut Vec<Completion>) -> Result<()>;

    /// The receive-buffer pool (shared with the loop for reading buffers).
    fn pool(&self) -> &std::rc::Rc<BufPool>;

    /// Gives buffer `id` back for receiving.
    fn recycle(&mut self, id: u16);
}

/// The two backends behind one type, dispatched without dynamic calls.
pub(crate) enum AnyDriver {
    Epoll(epoll::Epoll),
    Uring(uring::Uring),
}

macro_rules! dispatch {
    ($self:expr, $d:ident => $e:expr) => {
        match $self {
            AnyDriver::Epoll($d) => $e,
            AnyDriver::Uring($d) => $e,
        }
    };
}

impl Driver for AnyDriver {
    fn kind(&self) -> Backend {
        dispatch!(self, d => d.kind())
    }
    fn accept(&mut self, fd: RawFd, token: Token, exclusive: bool) -> Result<()> {
        dispatch!(self, d => d.accept(fd, token, exclusive))
    }
    fn recv(&mut self, fd: RawFd, token: Token) -> Result<()> {
        dispatch!(self, d => d.recv(fd, token))
    }
    fn recvmsg(&mut self, fd: RawFd, token: Token) -> Result<()> {
        dispatch!(self, d => d.recvmsg(fd, token))
    }
    unsafe fn send(&mut self, fd: RawFd, token: Token, iov: &[libc::iovec], fds: &[RawFd]) -> Result<()> {
        // SAFETY: the caller's guarantee is forwarded unchanged.
        dispatch!(self, d => unsafe { d.send(fd, token, iov, fds) })
    }
    fn connect(&mut self, fd: RawFd, token: Token, addr: &crate::sys::socket::SockAddr) -> Result<()> {
        dispatch!(self, d => d.connect(fd, token, addr))
    }
    unsafe fn read(&mut self, fd: RawFd, token: Token, ptr: *mut u8, len: usize) -> Result<()> {
        // SAFETY: the caller's guarantee is forwarded unchanged.
        dispatch!(self, d => unsafe { d.read(fd, token, ptr, len) })
    }
    fn poll_in(&mut self, fd: RawFd, token: Token) -> Result<()> {
        dispatch!(self, d => d.poll_in(fd, token))
    }
    fn cancel(&mut self, fd: RawFd, token: Token) {
        dispatch!(self, d => d.cancel(fd, token))
    }
    fn deregister(&mut self, fd: RawFd) {
        dispatch!(self, d => d.deregister(fd))
    }
    fn poll(&mut self, timeout_ms: i64, out: &mut Vec<Completion>) -> Result<()> {
        dispatch!(self, d => d.poll(timeout_ms, out))
    }
    fn pool(&self) -> &std::rc::Rc<BufPool> {
        dispatch!(self, d => d.pool())
    }
    fn recycle(&mut self, id: u16) {
        dispatch!(self, d => d.recycle(id))
    }
}

/// Sizes of the receive-buffer pool.
#[derive(Copy, Clone, Debug)]
pub struct PoolConfig {
    /// Number of buffers (a power of two, at most 32768).
    pub count: u16,
    /// Bytes per buffer.
    pub size: u32,
}

impl Default for PoolConfig {
    fn default() -> Self {
        PoolConfig { count: 512, size: 16 * 1024 }
    }
}

/// Builds the driver the user asked for; for `Auto`, also returns why
/// io_uring was not taken, if it was not.
pub(crate) fn open(choice: Backend, pool: PoolConfig) -> Result<(AnyDriver, Option<String>)> {
    match choice {
        Backend::Epoll => Ok((AnyDriver::Epoll(epoll::Epoll::new(pool)?), None)),
        Backend::IoUring => match uring::Uring::new(pool) {
            Ok(u) => Ok((AnyDriver::Uring(u), None)),
            Err(why) => Err(why.error),
        },
        Backend::Auto => match uring::Uring::new(pool) {
            Ok(u) => Ok((AnyDriver::Uring(u), None)),
            Err(why) => Ok((AnyDriver::Epoll(epoll::Epoll::new(pool)?), Some(why.reason))),
        },
    }
}

/// Why io_uring could not be used: an error for callers and a sentence for
/// humans ("io_uring_setup: EPERM (kernel.io_uring_disabled or seccomp)").
#[derive(Debug)]
pub(crate) struct Unavailable {
    pub error: Error,
    pub reason: String,
}

/// A parsed recvmsg record from a receive buffer (see the module docs).
pub(crate) struct RecvMsgRecord<'a> {
    pub control: &'a [u8],
    pub payload: &'a [u8],
    pub flags: i32,
}

/// Splits a recvmsg record; `None` if the header is inconsistent with `buf`.
pub(crate) fn parse_recvmsg(buf: &[u8]) -> Option<RecvMsgRecord<'_>> {
    let word = |i: usize| -> Option<u32> {
        let b = buf.get(i * 4..i * 4 + 4)?;
        Some(u32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
    };
    let namelen = word(0)? as usize;
    let controllen = word(1)? as usize;
    let payloadlen = word(2)? as usize;
    let flags = word(3)? as i32;
    let control_start = RECVMSG_HEADER_LEN.checked_add(namelen)?;
    let payload_start = control_start.checked_add(RECVMSG_CONTROL_LEN)?;
    let control = buf.get(control_start..control_start.checked_add(controllen.min(RECVMSG_CONTROL_LEN))?)?;
    let payload = buf.get(payload_start..payload_start.checked_add(payloadlen)?)?;
    Some(RecvMsgRecord { control, payload, flags })
}

/// Writes a recvmsg record header (used by the epoll backend).
pub(crate) fn write_recvmsg_header(buf: &mut [u8], controllen: usize, payloadlen: usize, flags: i32) {
    let words = [0u32, controllen as u32, payloadlen as u32, flags as u32];
    for (i, w) in words.iter().enumerate() {
        buf[i * 4..i * 4 + 4].copy_from_slice(&w.to_ne_bytes());
    }
}
