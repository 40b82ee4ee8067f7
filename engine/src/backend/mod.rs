//! The backend contract: how the loop hands I/O to epoll or io_uring.
//!
//! The contract is **completion-shaped**, so that io_uring fits it natively
//! and epoll imitates it: the loop *submits* operations tagged with a
//! [`Token`], and [`Driver::poll`] reports [`Completion`]s. The epoll backend
//! waits for readiness and then does the syscall itself, reporting its result
//! as a completion; the io_uring backend submits the operation to the ring.
//!
//! # The operations
//!
//! The loop describes each operation as an [`Op`] and submits it with
//! [`Driver::submit`] under a [`Token`] of its own (the loop's op table
//! makes one per op: slot index, generation, kind), so completions name the
//! operation, not a handle.
//!
//! | op | shape | lends to the backend | a completion's `res` |
//! |---|---|---|---|
//! | `Accept { fd, exclusive }` | persistent | nothing | a new fd |
//! | `Recv { fd }` | persistent | nothing | bytes in `buf`; 0 (no buffer, final) at EOF |
//! | `RecvMsg { fd }` | persistent | nothing | a record's length in `buf`; 0 at EOF |
//! | `Send { fd, iov, fds }` | one-shot | the bytes `iov` describes, the fds open | bytes sent |
//! | `Connect { fd, addr }` | one-shot | nothing (`addr` is copied) | 0 |
//! | `Read { fd, ptr, len }` | one-shot | `ptr..ptr + len` | bytes read |
//! | `PollIn { fd }` | one-shot | nothing | revents (`POLLIN`) |
//! | `Poll { fd, events }` | one-shot | nothing | `poll(2)` revents |
//! | `FileRead { fd, ptr, len, offset }` | one-shot | `ptr..ptr + len` | bytes read |
//! | `FileWrite { fd, ptr, len, offset }` | one-shot | `ptr..ptr + len` | bytes written |
//! | `Fsync { fd, data_only }` | one-shot | nothing | 0 |
//! | `Statx { dirfd, path, flags, buf }` | one-shot | `path` (to its NUL), `*buf` | 0 |
//! | `OpenAt { path, flags, mode }` | one-shot | `path` (to its NUL) | a new fd |
//! | `RecvFrom { fd }` | persistent | nothing | a datagram record's length in `buf` (never 0) |
//! | `SendTo { fd, iov, addr }` | one-shot | the bytes `iov` describes (`addr` is copied) | the datagram's length |
//! | `ReadStream { fd }` | persistent | nothing | bytes in `buf`; 0 (no buffer, final) at EOF |
//! | `WriteStream { fd, iov }` | one-shot | the bytes `iov` describes | bytes written |
//! | `FileReadv { fd, iov, iovcnt, offset }` | one-shot | the iovec array and the memory it describes | bytes read |
//! | `FileWritev { fd, iov, iovcnt, offset }` | one-shot | the iovec array and the memory it describes | bytes written |
//!
//! `ReadStream` and `WriteStream` are `Recv` and `Send` for fds that are
//! not sockets (pipes, FIFOs, ttys, regular files: a server's stdin and
//! stdout). epoll watches pipes, FIFOs and ttys as it does sockets; a
//! regular file (or `/dev/null`), which `epoll_ctl` refuses with `EPERM`,
//! is read as always ready, as libuv does. io_uring reads with `READ`
//! into a provided buffer, re-armed after each chunk, and writes with
//! `WRITEV`; where the file cannot wait inside the kernel (a tty opened
//! non-blocking answers `EAGAIN`) the backend polls it and retries.
//!
//! Any completion may carry `-errno` instead of a result.
//!
//! **File operations** (`FileRead` to `OpenAt`, `FileReadv`, `FileWritev`) are optional: a backend
//! says which it performs with [`Driver::supports`] (io_uring: those its
//! probe found; epoll: none, it refuses them with `ENOSYS`), and the loop
//! sends the others to its work pool.
//!
//! **Several ops per fd.** io_uring takes any number of ops in flight on
//! one fd, of any kinds, each its own request keyed by its token. epoll
//! keeps, per fd, one *read-side* op (`Accept`, `Recv`, `RecvMsg`,
//! `RecvFrom`, `Read`, `PollIn`, `ReadStream`), one *write-side* op (`Send`,
//! `Connect`, `WriteStream`)
//! and one `Poll`: a second op of a side while one is in flight is refused
//! with `EBUSY` (at submit, nothing is reported for it). `SendTo` ops are
//! not limited on either backend: epoll queues them per fd and sends them
//! in submission order (with `sendmmsg`, several per call); io_uring issues
//! each at once, so datagrams that find the socket's buffer full wait each
//! on its own and may leave, and complete, in another order. On both, `cancel` frees the op's
//! place at once, so a replacement may be submitted right after it, and ops
//! on different fds never limit each other: one handle may have several ops
//! of one kind in flight on different fds.
//!
//! # Rules every backend meets, per op
//!
//! 1. **Exactly one final completion.** Every op that `submit` accepted
//!    reports completions carrying its token until exactly one with
//!    `more == false`; after that, nothing more carries its token. An op
//!    whose `submit` returned `Err` reports nothing. One-shot ops (`Send`,
//!    `SendTo`, `Connect`, `Read`, `PollIn`, `Poll`, `WriteStream`) report
//!    exactly one completion. Persistent ops (`Accept`, `Recv`, `RecvMsg`,
//!    `RecvFrom`, `ReadStream`)
//!    report any number with
//!    `more == true` and then the final one, when they fail, are cancelled,
//!    or the kernel ends a multishot (io_uring re-arms internally where it
//!    can, e.g. after `ENOBUFS`, only if that keeps the op alive without
//!    loss; otherwise it ends the op and the loop re-arms with a new op).
//! 2. **Cancel hastens, never skips.** [`Driver::cancel`] makes the op
//!    named by the token end soon, and no other op; its final completion
//!    still arrives through `poll` (with `-ECANCELED`, or its real result if
//!    it finished first). No completion is ever delivered synchronously from
//!    a submit or cancel call: user callbacks never run re-entrantly.
//! 3. **Memory lent stays lent.** For a `Send`, `SendTo` or `WriteStream`, the memory each iovec
//!    describes stays valid and unmodified until the op's final completion,
//!    and each fd in `fds` stays **open**, naming the same file, until then
//!    (io_uring reads them when the operation runs, not when it is
//!    submitted). For a `Read`, `ptr..ptr + len` stays valid for writes and
//!    untouched by anyone else until the op's final completion; likewise
//!    a `FileRead`'s memory, a `FileWrite`'s (valid and unmodified), a
//!    `FileReadv`'s or `FileWritev`'s iovec array and every buffer it names
//!    (likewise), and a
//!    `Statx`'s path and record and an `OpenAt`'s path. The other
//!    ops lend nothing: the backend copies what it needs of every op
//!    (iovec arrays, fd numbers, socket addresses) into storage it owns, so
//!    callers may pass stack values. [`Driver::submit`] is `unsafe` for this
//!    rule; the loop upholds it.
//! 4. **Resources in completions are owned by the receiver.** An `Accept`
//!    completion with `res >= 0` carries a new fd (non-blocking, `CLOEXEC`),
//!    now owned by the loop; so does an `OpenAt` completion (`CLOEXEC`). A completion with `buf = Some(id)` (`Recv`,
//!    `RecvMsg`) lends receive buffer `id` until the loop calls
//!    now owned by the loop. A completion with `buf = Some(id)` (`Recv`,
//!    `RecvMsg`, `RecvFrom`) lends receive buffer `id` until the loop calls
//!    [`Driver::recycle`]. The loop releases both even when it drops the
//!    completion (a stale token, a closing handle); the token's kind byte
//!    says what to release. `Accept` completions may still arrive after
//!    `cancel` (io_uring runs the wake-ups it already claimed first, so a
//!    connection it took from a shared listen queue is never stranded); the
//!    loop serves or closes them.
//! 5. **Bounded work per wakeup.** A backend reports at most the `out`
//!    capacity per `poll`, performs at most [`MAX_ACCEPTS_PER_WAKEUP`]
//!    accepts per `Accept` op and [`MAX_READS_PER_WAKEUP`] reads (datagrams,
//!    for `RecvFrom`) per `Recv`, `RecvMsg` or `RecvFrom` op per wakeup.
//! 6. **Nothing inherited across fork.** fds are `CLOEXEC`; the ring is
//!    `dontfork`.
//!
//! # Receive buffers
//!
//! Both backends receive into one pool of `count` buffers of `size` bytes
//! ([`BufPool`]). Buffer ids are `u16`. For `RecvMsg` and `RecvFrom`, a
//! buffer holds a record in io_uring's `io_uring_recvmsg_out` layout: a
//! 16-byte header (`namelen`, `controllen`, `payloadlen`, `flags` as
//! native-endian u32), a name space, a control space, then the payload. The
//! spaces are fixed per op kind ([`RecordLayout`]): `RecvMsg` (IPC) has no
//! name space and [`RECVMSG_CONTROL_LEN`] bytes of control space;
//! `RecvFrom` (datagrams) has [`RECVMSG_NAME_LEN`] bytes of name space (any
//! IPv4 or IPv6 address) and no control space. The header's `namelen` and
//! `controllen` say how much of each space is used (`namelen` is the
//! sender's address length, which may exceed the space: the name is then
//! cut), `flags` are recvmsg's `msg_flags` (`MSG_TRUNC`: the payload was
//! cut; `MSG_CTRUNC`: the control data was). See [`parse_record`]. The
//! epoll backend writes the same layout, so the loop parses one format. A
//! record completion's `res` is the record's full length (header + both
//! spaces + payload). End of stream on recv and recvmsg alike is `res == 0`
//! with no buffer, and is final; `RecvFrom` has no end of stream (an empty
//! datagram is a record with `payloadlen == 0`).

pub(crate) mod bufpool;
pub(crate) mod epoll;
pub(crate) mod op;
pub(crate) mod uring;

pub(crate) use bufpool::BufPool;
pub(crate) use op::{Op, OpKind, Token};

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
/// Name space in every datagram record: a `sockaddr_in6`, the largest
/// address a UDP socket reports.
pub const RECVMSG_NAME_LEN: usize = std::mem::size_of::<libc::sockaddr_in6>();

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
    ///
    /// # Errors
    ///
    /// `EINVAL` if the variable is set to a name [`parse`](Self::parse) does not take.
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

impl std::str::FromStr for Backend {
    type Err = Error;

    /// Parses a name as `UVRING_BACKEND` takes it; `EINVAL` for others.
    fn from_str(s: &str) -> Result<Backend> {
        Backend::parse(s).ok_or(Error::EINVAL)
    }
}

impl std::fmt::Display for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// One reported result.
#[derive(Copy, Clone, Debug)]
pub(crate) struct Completion {
    pub token: Token,
    /// `>= 0`: bytes, a new fd (`Accept`, `OpenAt`), revents (`PollIn`,
    /// `Poll`), 0 (`Connect`, `Fsync`, `Statx`); `< 0`: `-errno`.
    pub res: i32,
    /// A receive buffer lent to the loop (`Recv`, `RecvMsg`).
    pub buf: Option<u16>,
    /// More completions will follow for this op.
    pub more: bool,
}

/// What every backend implements. Calls never run user code.
pub(crate) trait Driver {
    /// Which backend this is.
    fn kind(&self) -> Backend;

    /// Starts `op`; its completions carry `token`, whose kind must be
    /// `op.kind()` and which no other op in flight may carry. `Err` means
    /// the op was not started and nothing will be reported for it (`EINVAL`
    /// for arguments out of bounds, `EBUSY` for a side of an fd taken on
    /// epoll, an epoll registration error).
    ///
    /// # Safety
    /// Rule 3 of the contract, per op: for `Op::Send`, the memory each
    /// iovec describes must stay valid and unmodified, and each fd in `fds`
    /// open (naming the same file), until the op's final completion has been
    /// reported; for `Op::Read` and `Op::FileRead`, `ptr..ptr + len` must
    /// stay valid for writes, and not be accessed by anyone else, until
    /// then; for `Op::FileWrite`, valid and unmodified; for `Op::Statx`,
    /// `path` and `*buf`, and for `Op::OpenAt`, `path`, likewise; for
    /// `Op::WriteStream`, as `Op::Send`; for `Op::FileReadv` and
    /// `Op::FileWritev`, the iovec array and every buffer it names, as for
    /// `Op::FileRead` and `Op::FileWrite`. The other ops lend nothing and
    /// carry no obligation.
    unsafe fn submit(&mut self, token: Token, op: Op<'_>) -> Result<()>;

    /// Whether this backend performs ops of `kind` (every kind but the file
    /// operations always; those where the backend has them).
    fn supports(&self, kind: OpKind) -> bool;

    /// Ends the op `token` on `fd` soon; see rule 2. Other ops on `fd`
    /// (other tokens) are not touched.
    fn cancel(&mut self, fd: RawFd, token: Token);

    /// Forgets `fd` before the loop closes it (epoll: `EPOLL_CTL_DEL`, which
    /// matters when another process holds the same open file). Called only
    /// when no op on `fd` is in flight.
    fn deregister(&mut self, fd: RawFd);

    /// Closes `fd`, which the loop owns and no op uses (after
    /// [`deregister`](Self::deregister) if it was ever registered). epoll
    /// closes at once; io_uring queues an `IORING_OP_CLOSE` that goes to the
    /// kernel with the next submission (no syscall of its own), or closes at
    /// once when the SQ has no room. The fd number stays taken until then.
    fn close_fd(&mut self, fd: RawFd);

    /// Hands the kernel what is queued but not yet submitted (io_uring's
    /// SQ: closes, sends queued by the last callbacks), so nothing waits
    /// for a next [`poll`](Self::poll) that may never come. Called when
    /// [`Loop::run`](crate::Loop::run) returns.
    fn flush(&mut self);

    /// Submits pending work and waits up to `timeout_ms` (`-1`: no limit,
    /// `0`: don't block) for completions, appending at most
    /// `out.capacity() - out.len()` of them to `out`.
    fn poll(&mut self, timeout_ms: i64, out: &mut Vec<Completion>) -> Result<()>;

    /// The receive-buffer pool (shared with the loop for reading buffers).
    fn pool(&self) -> &std::rc::Rc<BufPool>;

    /// Gives buffer `id` back for receiving.
    fn recycle(&mut self, id: u16);

    /// What the waits in [`poll`](Self::poll) have cost so far (the loop's
    /// metrics; see [`WaitStats`]).
    fn wait_stats(&self) -> WaitStats;
}

/// Totals kept by a driver around its waits, for the loop's metrics
/// (libuv's `uv_metrics_idle_time` and `events_waiting`). Measuring costs
/// two reads of the monotonic clock (vDSO, no syscall) per `poll` that may
/// block; a `poll` with a zero timeout is not timed.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct WaitStats {
    /// Time spent inside the blocking wait (`epoll_wait`, `io_uring_enter`
    /// with `GETEVENTS` and a wait count), in nanoseconds.
    pub idle_ns: u64,
    /// Completions that were ready when `poll` was called, so the driver
    /// did not have to block for them: those queued inside the driver, and
    /// every completion of a `poll` that could not block.
    pub events_waiting: u64,
}

impl WaitStats {
    /// Adds the time since `since` to the idle total.
    pub(crate) fn add_idle(&mut self, since: std::time::Instant) {
        let ns = u64::try_from(since.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.idle_ns = self.idle_ns.saturating_add(ns);
    }
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
    unsafe fn submit(&mut self, token: Token, op: Op<'_>) -> Result<()> {
        // SAFETY: the caller's guarantee is forwarded unchanged.
        dispatch!(self, d => unsafe { d.submit(token, op) })
    }
    fn supports(&self, kind: OpKind) -> bool {
        dispatch!(self, d => d.supports(kind))
    }
    fn cancel(&mut self, fd: RawFd, token: Token) {
        dispatch!(self, d => d.cancel(fd, token))
    }
    fn deregister(&mut self, fd: RawFd) {
        dispatch!(self, d => d.deregister(fd))
    }
    fn close_fd(&mut self, fd: RawFd) {
        dispatch!(self, d => d.close_fd(fd))
    }
    fn flush(&mut self) {
        dispatch!(self, d => d.flush())
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
    fn wait_stats(&self) -> WaitStats {
        dispatch!(self, d => d.wait_stats())
    }
}

/// Sizes of the receive-buffer pool: `PoolConfig::new(count, size)` or
/// `PoolConfig::default()` (512 buffers of 16 KiB).
#[derive(Copy, Clone, Debug)]
#[non_exhaustive]
pub struct PoolConfig {
    /// Number of buffers (a power of two, at most 32768).
    pub count: u16,
    /// Bytes per buffer.
    pub size: u32,
}

impl PoolConfig {
    /// `count` buffers (a power of two, at most 32768) of `size` bytes.
    pub const fn new(count: u16, size: u32) -> PoolConfig {
        PoolConfig { count, size }
    }
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
            Err(why) => Err(why.error.with_context(crate::error::intern(why.reason))),
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

/// The spaces a recvmsg record reserves after its header, fixed per op
/// kind (see "Receive buffers" in the module docs).
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub(crate) struct RecordLayout {
    /// Bytes reserved for the sender's address.
    pub name: usize,
    /// Bytes reserved for control messages.
    pub control: usize,
}

impl RecordLayout {
    /// `RecvMsg` records (IPC pipes): fds in the control space, no name.
    pub const STREAM: RecordLayout = RecordLayout { name: 0, control: RECVMSG_CONTROL_LEN };
    /// `RecvFrom` records (datagrams): the sender's address, no control.
    pub const DATAGRAM: RecordLayout = RecordLayout { name: RECVMSG_NAME_LEN, control: 0 };

    /// Where the payload starts.
    pub const fn payload_offset(self) -> usize {
        RECVMSG_HEADER_LEN + self.name + self.control
    }
}

/// A parsed recvmsg record from a receive buffer (see the module docs).
pub(crate) struct RecvMsgRecord<'a> {
    /// The used part of the name space (empty without a name).
    pub name: &'a [u8],
    pub control: &'a [u8],
    pub payload: &'a [u8],
    /// recvmsg's `msg_flags` (`MSG_TRUNC`, `MSG_CTRUNC`).
    pub flags: i32,
}

/// Splits a `RecvMsg` (IPC) record; `None` if the header is inconsistent
/// with `buf`.
pub(crate) fn parse_recvmsg(buf: &[u8]) -> Option<RecvMsgRecord<'_>> {
    parse_record(buf, RecordLayout::STREAM)
}

/// An IPC record as the loop uses it: the payload, and whether the kernel
/// cut the control data (`MSG_CTRUNC`).
pub(crate) struct IpcRecordParts<'a> {
    pub payload: &'a [u8],
    pub truncated: bool,
}

/// Splits an IPC pipe's `RecvMsg` record and calls `fd` with each fd its
/// `SCM_RIGHTS` messages carry and whether the control data was cut
/// (control data beyond the control space is ignored); `None`, with no fd
/// reported, if the header is inconsistent with `buf`. The caller owns
/// every fd reported, truncated record or not.
pub(crate) fn parse_ipc_record(buf: &[u8], mut fd: impl FnMut(std::os::fd::RawFd, bool)) -> Option<IpcRecordParts<'_>> {
    let rec = parse_recvmsg(buf)?;
    let truncated = rec.flags & libc::MSG_CTRUNC != 0;
    let control = &rec.control[..rec.control.len().min(RECVMSG_CONTROL_LEN)];
    crate::sys::socket::for_each_rights_fd(control, |f| fd(f, truncated));
    Some(IpcRecordParts { payload: rec.payload, truncated })
}

/// Splits a recvmsg record laid out as `layout`; `None` if the header is
/// inconsistent with `buf`. A name or control length beyond its space is
/// cut to the space (the kernel reports the untruncated length).
pub(crate) fn parse_record(buf: &[u8], layout: RecordLayout) -> Option<RecvMsgRecord<'_>> {
    let word = |i: usize| -> Option<u32> {
        let b = buf.get(i * 4..i * 4 + 4)?;
        Some(u32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
    };
    let namelen = word(0)? as usize;
    let controllen = word(1)? as usize;
    let payloadlen = word(2)? as usize;
    let flags = word(3)? as i32;
    let control_start = RECVMSG_HEADER_LEN.checked_add(layout.name)?;
    let payload_start = control_start.checked_add(layout.control)?;
    let name = buf.get(RECVMSG_HEADER_LEN..RECVMSG_HEADER_LEN + namelen.min(layout.name))?;
    let control = buf.get(control_start..control_start.checked_add(controllen.min(layout.control))?)?;
    let payload = buf.get(payload_start..payload_start.checked_add(payloadlen)?)?;
    Some(RecvMsgRecord { name, control, payload, flags })
}

/// Writes a recvmsg record header (used by the epoll backend).
pub(crate) fn write_recvmsg_header(buf: &mut [u8], namelen: usize, controllen: usize, payloadlen: usize, flags: i32) {
    let words = [namelen as u32, controllen as u32, payloadlen as u32, flags as u32];
    for (i, w) in words.iter().enumerate() {
        buf[i * 4..i * 4 + 4].copy_from_slice(&w.to_ne_bytes());
    }
}

#[cfg(test)]
mod record_tests {
    use super::*;

    /// A record as io_uring writes it: header words, then the spaces.
    fn record(layout: RecordLayout, words: [u32; 4], fill: &[u8]) -> Vec<u8> {
        let mut buf: Vec<u8> = words.iter().flat_map(|w| w.to_ne_bytes()).collect();
        buf.resize(layout.payload_offset(), 0);
        buf[RECVMSG_HEADER_LEN..RECVMSG_HEADER_LEN + fill.len().min(layout.name)]
            .copy_from_slice(&fill[..fill.len().min(layout.name)]);
        buf.extend_from_slice(b"payload");
        buf
    }

    #[test]
    fn a_datagram_record_names_its_sender_and_keeps_the_payload_after_the_name_space() {
        // An IPv4 sender: 16 bytes of the 28-byte space used.
        let name = [7u8; 16];
        let buf = record(RecordLayout::DATAGRAM, [16, 0, 7, 0], &name);
        let rec = parse_record(&buf, RecordLayout::DATAGRAM).expect("parses");
        assert_eq!(rec.name, &name);
        assert!(rec.control.is_empty());
        assert_eq!(rec.payload, b"payload");
        assert_eq!(RecordLayout::DATAGRAM.payload_offset(), 16 + 28);
    }

    #[test]
    fn a_name_longer_than_its_space_is_cut_and_an_empty_payload_is_a_record() {
        let buf = record(RecordLayout::DATAGRAM, [200, 0, 0, libc::MSG_TRUNC as u32], &[1; 28]);
        let rec = parse_record(&buf, RecordLayout::DATAGRAM).expect("parses");
        assert_eq!(rec.name.len(), RECVMSG_NAME_LEN);
        assert!(rec.payload.is_empty());
        assert_eq!(rec.flags, libc::MSG_TRUNC);
    }

    #[test]
    fn a_payload_past_the_buffer_is_refused() {
        let buf = record(RecordLayout::DATAGRAM, [16, 0, 8, 0], &[]);
        assert!(parse_record(&buf, RecordLayout::DATAGRAM).is_none());
        assert!(parse_record(&buf[..10], RecordLayout::DATAGRAM).is_none());
    }

    #[test]
    fn a_stream_record_has_no_name_space() {
        let buf = record(RecordLayout::STREAM, [0, 0, 7, 0], &[]);
        let rec = parse_recvmsg(&buf).expect("parses");
        assert!(rec.name.is_empty());
        assert_eq!(rec.payload, b"payload");
    }
}
