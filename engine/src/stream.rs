//! Streams (`uv_stream_t`): TCP sockets and Unix-domain pipes, listeners and
//! connections.
//!
//! Writes are copied into a per-stream outgoing buffer so callers need not
//! keep their bytes alive. Two buffers alternate: `inflight` is lent to the
//! kernel by the one send in flight and is never touched until its completion
//! arrives; new writes append to `queued`. When `inflight` is fully sent the
//! two swap. Both keep their capacity (and are recycled across connections),
//! so steady-state writing allocates nothing. An idle stream holds neither:
//! the buffers and the request queue (its `WriteSide`) are lent to the
//! loop's pools until the stream writes again.
//!
//! Reads arrive in pool buffers. A read that arrives while the stream is not
//! reading (after `read_stop`, before its cancellation lands) is stashed with
//! its buffer and delivered in order on the next `read_start`: nothing is lost.

use crate::backend::{Completion, Driver, Op, OpKind, Token};
use crate::error::{Error, Result};
use crate::event_loop::{Kind, Loop, Pending, Slot, F_CLOSING};
use crate::handle::sealed::Typed;
use crate::handle::*;
use crate::sys::{self, socket};
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::os::fd::{IntoRawFd, OwnedFd, RawFd};
use std::rc::Rc;
use std::time::Duration;

/// The engine's untyped stream id: the public typed ids ([`TcpStream`],
/// [`TcpListener`], [`PipeStream`], ...) all name a stream slot.
#[derive(Copy, Clone, PartialEq, Eq, Debug)]
pub(crate) struct Stream(pub(crate) HandleId);

impl Stream {
    pub(crate) fn of(h: impl Into<HandleId>) -> Stream {
        Stream(h.into())
    }
}

/// `tcp_bind` flag: IPv6 only (no dual-stack).
pub const TCP_IPV6ONLY: u32 = 1;
/// `tcp_bind` flag: `SO_REUSEPORT`, for several sockets on one port.
pub const TCP_REUSEPORT: u32 = 2;
/// `tcp_bind` flag: Node's `exclusive`: a listen hook (a cluster worker's,
/// which would route the listen to the primary) is not asked; the socket
/// is bound here at once, so a port another process holds fails with
/// `EADDRINUSE`.
pub const TCP_EXCLUSIVE: u32 = 4;

/// Accepted connections a listener queues before it stops accepting until
/// the user calls `accept` (back-pressure against a listener that does not).
const MAX_ACCEPT_QUEUE: usize = 128;
/// Back-off before accepting again after `EMFILE`/`ENFILE` (no spinning).
const ACCEPT_BACKOFF_MS: u64 = 100;

/// The kind of stream.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum StreamType {
    /// A TCP stream.
    Tcp,
    /// A Unix-domain stream socket.
    Pipe,
    /// A Unix-domain stream socket that carries handles (fds) with its bytes.
    IpcPipe,
}

/// Where a listener is in [`Loop::listen_stop`].
#[derive(Copy, Clone, PartialEq, Eq, Debug)]
pub(crate) enum ListenStop {
    /// Accepting (or not listening at all).
    Running,
    /// Asked to stop; its accept op has not ended yet.
    Stopping,
    /// The accept op has ended; nothing more arrives.
    Stopped,
}

/// A persistent op of a stream (its recv or its accept), named by the
/// token of the op in flight.
#[derive(Copy, Clone, PartialEq, Eq, Debug)]
pub(crate) enum OpState {
    Idle,
    Armed(Token),
    /// Cancelled; its final completion has not arrived yet.
    Ending(Token),
}

pub(crate) struct WriteReq<D> {
    /// Stream offset (in bytes ever queued) at which this write is complete.
    pub end: u64,
    pub cb: Option<Rc<StatusFn<D>>>,
    /// Fds to attach to this write's first byte (IPC): the next `nfds`
    /// entries of `StreamParts::send_fds` (0 once they are sent).
    pub nfds: u8,
    /// The fds are the caller's ([`Loop::write_fds_borrowed`]): sent, never
    /// closed by the loop.
    pub borrowed: bool,
    /// Stream offset of this write's first byte.
    pub start: u64,
    /// A file transfer ([`Loop::sendfile`]): an entry of `Loop::xfers`. It
    /// carries no bytes of the buffers (`start == end`) and marks its place
    /// in the queue.
    pub file: Option<u32>,
}

/// A read result held back until the stream reads again.
#[derive(Copy, Clone)]
pub(crate) struct Stashed {
    pub res: i32,
    pub buf: Option<u16>,
    pub kind: OpKind,
}

/// A queue most streams never use (stashed reads, received or attached
/// fds): 8 bytes in the stream until its first entry, then a boxed
/// `VecDeque` that stays with the stream's parts (recycled with them, so a
/// warm loop allocates nothing for it).
#[allow(clippy::box_collection)] // 8 bytes in every stream instead of 32
pub(crate) struct BoxedDeque<T>(Option<Box<VecDeque<T>>>);

impl<T> BoxedDeque<T> {
    pub(crate) const fn new() -> BoxedDeque<T> {
        BoxedDeque(None)
    }

    pub(crate) fn len(&self) -> usize {
        self.0.as_ref().map_or(0, |q| q.len())
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub(crate) fn front(&self) -> Option<&T> {
        self.0.as_ref().and_then(|q| q.front())
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = &T> {
        self.0.iter().flat_map(|q| q.iter())
    }

    pub(crate) fn pop_front(&mut self) -> Option<T> {
        self.0.as_mut().and_then(|q| q.pop_front())
    }

    pub(crate) fn push_back(&mut self, item: T) {
        self.0.get_or_insert_with(Box::default).push_back(item);
    }

    pub(crate) fn extend(&mut self, items: impl IntoIterator<Item = T>) {
        let mut items = items.into_iter().peekable();
        if items.peek().is_some() {
            self.0.get_or_insert_with(Box::default).extend(items);
        }
    }

    pub(crate) fn drain(&mut self) -> impl Iterator<Item = T> + '_ {
        self.0.iter_mut().flat_map(|q| q.drain(..))
    }

    pub(crate) fn clear(&mut self) {
        if let Some(q) = self.0.as_mut() {
            q.clear();
        }
    }
}

/// The growable parts of a stream, recycled across connections.
/// Most write buffers the loop keeps for streams to share (see `flush`);
/// past it, a drained stream's buffers are freed.
pub(crate) const WRITE_BUFS_SPARE_MAX: usize = 1024;
/// The least capacity a new write buffer gets. Buffers are shared by every
/// stream (see `flush`), so one sized by a short write (a 9-byte answer)
/// would otherwise grow, an allocation, when a longer small write (an IPC
/// frame of a few dozen bytes) borrows it later.
pub(crate) const WRITE_BUF_MIN: usize = 256;

/// A stream's write side while it has writes: both buffers and the
/// request queue. An idle stream has none (`StreamParts::w` is `None`): the
/// buffers go to the loop's pool of write buffers and this box, with its
/// queue's capacity, to its pool of write sides (see `flush`), so an idle
/// connection's slot pays 8 bytes for them instead of 80.
pub(crate) struct WriteSide<D> {
    pub queued: Vec<u8>,
    pub inflight: Vec<u8>,
    pub writes: VecDeque<WriteReq<D>>,
}

impl<D> Default for WriteSide<D> {
    fn default() -> WriteSide<D> {
        WriteSide { queued: Vec::new(), inflight: Vec::new(), writes: VecDeque::new() }
    }
}

pub(crate) struct StreamParts<D> {
    /// The write side, from `write_admit` until the stream is idle again.
    pub w: Option<Box<WriteSide<D>>>,
    pub stash: BoxedDeque<Stashed>,
    /// Handles received over an IPC pipe, not yet accepted.
    pub pending_handles: BoxedDeque<RawFd>,
    /// Fds owned by queued writes (IPC), in write order; closed once sent.
    pub send_fds: BoxedDeque<RawFd>,
}

impl<D> StreamParts<D> {
    fn new() -> StreamParts<D> {
        StreamParts {
            w: None,
            stash: BoxedDeque::new(),
            pending_handles: BoxedDeque::new(),
            send_fds: BoxedDeque::new(),
        }
    }

    /// Forgets the next `n` entries of `send_fds` (a write's fds, sent or
    /// dropped), closing them unless they are `borrowed`.
    fn release_send_fds(&mut self, n: u8, borrowed: bool) {
        for _ in 0..n {
            if let Some(fd) = self.send_fds.pop_front() {
                if !borrowed {
                    sys::close(fd);
                }
            }
        }
    }

    /// The write side; `write_admit` gave it from the loop's pool (made
    /// here only if it did not run).
    pub(crate) fn side(&mut self) -> &mut WriteSide<D> {
        self.w.get_or_insert_with(Box::default)
    }

    /// Whether any write request is queued.
    pub(crate) fn has_writes(&self) -> bool {
        self.w.as_ref().is_some_and(|w| !w.writes.is_empty())
    }

    /// The queued write requests, oldest first.
    pub(crate) fn writes(&self) -> impl Iterator<Item = &WriteReq<D>> {
        self.w.iter().flat_map(|w| w.writes.iter())
    }

    fn pop_write(&mut self) -> Option<WriteReq<D>> {
        self.w.as_mut().and_then(|w| w.writes.pop_front())
    }

    fn clear(&mut self) {
        if let Some(w) = self.w.as_mut() {
            w.queued.clear();
            w.inflight.clear();
            w.writes.clear();
        }
        self.stash.clear();
        self.pending_handles.clear();
        self.send_fds.clear();
    }
}

#[derive(Copy, Clone, PartialEq, Eq)]
pub(crate) enum ShutdownState {
    None,
    /// Waiting for the write queue to drain.
    Requested,
    /// The socket is shut; the callback runs in the pending phase.
    Done,
}

/// What only a connect under way keeps: out of line, from the loop's pool
/// (`Loop::connect_spare`) while the connect lasts, so that an accepted or
/// connected stream's slot pays 8 bytes for it instead of 56.
#[derive(Default)]
pub(crate) struct Connecting {
    /// The connect op in flight.
    pub op: Option<Token>,
    /// A connect by name: the resolution in flight on the work pool.
    pub resolve: Option<crate::work::Work>,
    /// A connect to several addresses: those not tried yet, the next last.
    pub addrs: Vec<SocketAddr>,
}

/// What only a listener, or a socket bound by `tcp_bind`, keeps: out of
/// line, allocated when the stream binds or listens (never on a hot path),
/// so that the slot of every connection, idle ones included, stays small.
pub(crate) struct ListenState<D> {
    pub on_connection: Option<Rc<StatusFn<D>>>,
    pub accept_op: OpState,
    pub exclusive: bool,
    /// [`Loop::listen_pause`]: the accept op stays unarmed.
    pub accept_paused: bool,
    /// Connections accepted from this listener so far.
    pub accepted: u64,
    pub stop: ListenStop,
    /// The `listen_stop` callback, until it runs.
    pub on_stop: Option<Rc<StatusFn<D>>>,
    /// Address recorded by `tcp_bind` (for a listen hook that binds elsewhere).
    pub bind_addr: Option<(SocketAddr, u32)>,
    /// The listen hook was asked to take this listener over: it hears of
    /// the close ([`ListenHook::closed`]).
    pub hook_asked: bool,
    /// Connections dropped from the accept queue by `close`, for the hook.
    pub hook_dropped: usize,
    /// Accepted connections not yet taken by `accept`.
    pub accept_queue: VecDeque<RawFd>,
}

impl<D> Default for ListenState<D> {
    fn default() -> ListenState<D> {
        ListenState {
            on_connection: None,
            accept_op: OpState::Idle,
            exclusive: false,
            accept_paused: false,
            accepted: 0,
            stop: ListenStop::Running,
            on_stop: None,
            bind_addr: None,
            hook_asked: false,
            hook_dropped: 0,
            accept_queue: VecDeque::new(),
        }
    }
}

pub(crate) struct StreamState<D> {
    pub fd: RawFd,
    pub ty: StreamType,
    pub family: i32,
    pub listening: bool,
    pub connected: bool,
    pub eof: bool,
    pub reading: bool,
    pub on_read: Option<Rc<ReadFn<D>>>,
    pub recv_op: OpState,
    pub rearm_recv: bool,
    /// A listener's (or a bound socket's) state, boxed so that a
    /// connection's slot does not carry it (see [`ListenState`]).
    pub lis: Option<Box<ListenState<D>>>,
    pub on_connect: Option<Rc<StatusFn<D>>>,
    /// A connect's op, name resolution and addresses, while it is under
    /// way (see [`Connecting`]).
    pub conn: Option<Box<Connecting>>,
    /// The send op in flight (one at a time: `inflight` is its buffer), or
    /// the op of the file transfer in flight.
    pub send_op: Option<Token>,
    /// The file transfer in flight (an entry of `Loop::xfers`): nothing
    /// else is sent until it ends.
    pub xfer: Option<u32>,
    /// Bytes of `inflight` already sent.
    pub inflight_off: usize,
    /// Bytes in the send currently in flight.
    pub inflight_len: usize,
    pub queued_total: u64,
    pub written_total: u64,
    pub write_error: Option<Error>,
    pub shutdown: ShutdownState,
    /// A shutdown request is in flight (its callback, if any, is
    /// `shutdown_cb`); see [`take_shutdown_req`](Self::take_shutdown_req).
    pub shutdown_req: bool,
    pub shutdown_cb: Option<Rc<StatusFn<D>>>,
    /// Fds attached to the send in flight (IPC), closed after they are sent
    /// (at most `socket::MAX_FDS_PER_MSG`).
    pub inflight_fds: u8,
    /// The fd is not a socket (a pipe(2), FIFO, tty or file opened by
    /// `pipe_open`): read with `ReadStream`, written with `WriteStream`.
    pub not_socket: bool,
    pub parts: StreamParts<D>,
}

impl<D> StreamState<D> {
    /// The listener part, made on first use (by a bind or a listen).
    pub(crate) fn lis(&mut self) -> &mut ListenState<D> {
        self.lis.get_or_insert_with(Box::default)
    }

    /// Where the stream is in `listen_stop` (`Running` if it never listened).
    pub(crate) fn listen_stop(&self) -> ListenStop {
        self.lis.as_ref().map_or(ListenStop::Running, |l| l.stop)
    }

    /// The address `tcp_bind` recorded, if any.
    pub(crate) fn bind_addr(&self) -> Option<(SocketAddr, u32)> {
        self.lis.as_ref().and_then(|l| l.bind_addr)
    }

    /// The shutdown request in flight, if any, with its callback; it is no
    /// longer in flight after this.
    pub(crate) fn take_shutdown_req(&mut self) -> Option<Option<Rc<StatusFn<D>>>> {
        std::mem::take(&mut self.shutdown_req).then(|| self.shutdown_cb.take())
    }

    /// A send that carried fds put at least one byte out: the fds went with
    /// its first byte, so the write that owned them releases them now and a
    /// retry of the remainder never sends them twice.
    fn release_sent_fds(&mut self) {
        if self.inflight_fds == 0 {
            return;
        }
        let offset = self.written_total;
        let parts = &mut self.parts;
        let mut writes = parts.w.iter_mut().flat_map(|w| w.writes.iter_mut());
        if let Some(w) = writes.find(|w| w.nfds > 0 && w.start == offset) {
            let (n, borrowed) = (w.nfds, w.borrowed);
            w.nfds = 0;
            parts.release_send_fds(n, borrowed);
        }
        self.inflight_fds = 0;
    }

    pub(crate) fn into_parts(mut self) -> StreamParts<D> {
        self.parts.clear();
        std::mem::replace(&mut self.parts, StreamParts::new())
    }

    /// Closes every fd the stream owns (used when the loop is dropped).
    pub(crate) fn drop_fds(&mut self) {
        if self.fd >= 0 {
            sys::close(self.fd);
            self.fd = -1;
        }
        let queued = self.lis.as_deref_mut().map(|l| &mut l.accept_queue);
        for fd in queued.into_iter().flat_map(|q| q.drain(..)).chain(self.parts.pending_handles.drain()) {
            sys::close(fd);
        }
        while let Some(w) = self.parts.pop_write() {
            self.parts.release_send_fds(w.nfds, w.borrowed);
        }
        self.parts.send_fds.clear();
    }
}

/// Lets another layer take over `listen` for TCP streams: the cluster layer
/// installs one in worker processes so that `listen` asks the primary,
/// exactly as Node's `net.Server#listen` does inside a cluster worker.
///
/// With a hook installed, `tcp_bind` only records the address (unless the
/// flags ask for [`TCP_REUSEPORT`]) and [`Loop::listen`] of a bound TCP
/// socket only records the request: it returns the listener at once (listening
/// and active), and the loop calls [`listen`](Self::listen) from its pending
/// phase, with the user's data `D`, so the hook's own state may live in `D`
/// (the cluster's worker finds it through a trait that `D` implements). The
/// hook runs from a loop phase, so it may run user code; what it reports
/// later goes through [`Loop::listen_inject`], [`Loop::listen_adopt`],
/// [`Loop::listen_bind`] and [`Loop::listen_fail`].
///
/// A hook is stored as `Rc` and called through a clone (no `RefCell`): the
/// hook stays installed while it runs, so a `listen` made from inside it (or
/// from user code it calls) is routed the same way. Its methods take `&self`;
/// keep its state in `D`.
pub trait ListenHook<D> {
    /// Called from the loop's pending phase after [`Loop::listen`] of a TCP
    /// socket bound with `tcp_bind` (`server` is the id `listen` returned;
    /// if it was closed or stopped meanwhile, the hook is not called).
    ///
    /// - `None`: listen locally, as without a hook (the recorded address is
    ///   bound now if it was not yet).
    /// - `Some(Ok(()))`: the hook took the listener over. It delivers
    ///   connections with [`Loop::listen_inject`], adopts a listening fd
    ///   with [`Loop::listen_adopt`], or binds the listener's own socket
    ///   with [`Loop::listen_bind`] (for example with [`TCP_REUSEPORT`]);
    ///   late errors go through [`Loop::listen_fail`].
    ///
    /// An error (`Some(Err(e))`, or a local listen that fails) reaches the
    /// listener's `on_connection` as `Err(e)` at once, from this phase, and
    /// the listener stops listening.
    #[allow(clippy::too_many_arguments)]
    fn listen(
        &self,
        lp: &mut Loop<D>,
        d: &mut D,
        server: TcpListener,
        addr: SocketAddr,
        flags: u32,
        backlog: i32,
    ) -> Option<Result<()>>;

    /// Called from the loop's closing phase, with the user's data, when a
    /// listener the hook was asked about (its [`listen`](Self::listen) ran)
    /// is freed. `dropped` counts the connections that were still in its
    /// accept queue when it was closed: the user never accepted them (they
    /// were closed). The user accepts in queue order, so they are the last
    /// `dropped` of those the listener received.
    fn closed(&self, lp: &mut Loop<D>, d: &mut D, server: TcpListener, dropped: usize);

    /// [`listen`](Self::listen) for a Unix-domain pipe: called from the
    /// pending phase after [`Loop::listen`] of a pipe given a path with
    /// `pipe_bind` (with a hook installed, `pipe_bind` only records the
    /// path). The answers are those of `listen`; `None` (the default)
    /// binds the path here and listens locally. A hook that takes the
    /// listener over delivers with [`Loop::listen_inject`] or
    /// [`Loop::listen_adopt`], and reports late errors with
    /// [`Loop::listen_fail`]; the path is then not this process's to
    /// remove.
    fn listen_pipe(
        &self,
        lp: &mut Loop<D>,
        d: &mut D,
        server: PipeListener,
        path: &std::path::Path,
        backlog: i32,
    ) -> Option<Result<()>> {
        let _ = (lp, d, server, path, backlog);
        None
    }

    /// [`closed`](Self::closed) for a pipe listener the hook was asked
    /// about with [`listen_pipe`](Self::listen_pipe).
    fn closed_pipe(&self, lp: &mut Loop<D>, d: &mut D, server: PipeListener, dropped: usize) {
        let _ = (lp, d, server, dropped);
    }
}

impl<D> Loop<D> {
    /// The connect part of `s`, taken from the loop's pool if it has none.
    pub(crate) fn connecting(&mut self, s: Stream) -> Result<&mut Connecting> {
        if self.stream_state(s)?.conn.is_none() {
            let c = self.connect_spare.pop().unwrap_or_default();
            self.stream_state(s)?.conn = Some(c);
        }
        Ok(self.stream_state(s)?.conn.get_or_insert_with(Box::default))
    }

    /// The connect is over (or never started): its part goes back to the
    /// loop's pool.
    pub(crate) fn connect_release(&mut self, s: Stream) {
        if let Some(c) = self.stream_state(s).ok().and_then(|st| st.conn.take()) {
            self.connect_spare_push(c);
        }
    }

    pub(crate) fn connect_spare_push(&mut self, mut c: Box<Connecting>) {
        c.op = None;
        c.resolve = None;
        c.addrs.clear();
        if self.connect_spare.len() < WRITE_BUFS_SPARE_MAX {
            self.connect_spare.push(c);
        }
    }

    pub(crate) fn stream_state(&mut self, s: Stream) -> Result<&mut StreamState<D>> {
        match &mut self.open_slot_mut(s.0)?.kind {
            Kind::Stream(st) => Ok(st),
            _ => Err(Error::WRONG_TYPE),
        }
    }

    pub(crate) fn stream_ref(&self, s: Stream) -> Result<&StreamState<D>> {
        let slot = self.slot(s.0)?;
        if slot.flags & F_CLOSING != 0 {
            return Err(Error::STALE_HANDLE);
        }
        match &slot.kind {
            Kind::Stream(st) => Ok(st),
            _ => Err(Error::WRONG_TYPE),
        }
    }

    pub(crate) fn new_stream(&mut self, ty: StreamType, fd: RawFd, family: i32) -> Result<Stream> {
        let parts = self.parts_spare.pop().unwrap_or_else(StreamParts::new);
        let st = StreamState {
            fd,
            ty,
            family,
            listening: false,
            connected: fd >= 0,
            eof: false,
            reading: false,
            on_read: None,
            recv_op: OpState::Idle,
            rearm_recv: false,
            lis: None,
            on_connect: None,
            conn: None,
            send_op: None,
            xfer: None,
            inflight_off: 0,
            inflight_len: 0,
            queued_total: 0,
            written_total: 0,
            write_error: None,
            shutdown: ShutdownState::None,
            shutdown_req: false,
            shutdown_cb: None,
            inflight_fds: 0,
            not_socket: false,
            parts,
        };
        match self.insert(Kind::Stream(st)) {
            Ok(h) => Ok(Stream(h)),
            Err(e) => {
                if fd >= 0 {
                    sys::close(fd);
                }
                Err(e)
            }
        }
    }

    /// The stream's type (`Tcp`, `Pipe`, `IpcPipe`).
    ///
    /// # Errors
    ///
    /// [`Error::STALE_HANDLE`] if the stream is closed or closing.
    pub fn stream_type<S: StreamHandle>(&self, s: S) -> Result<StreamType> {
        Ok(self.stream_ref(Stream::of(s))?.ty)
    }

    /// The handle's fd (-1 before bind/connect), for diagnostics and tests.
    /// The loop keeps owning it. `WRONG_TYPE` for handles without one.
    ///
    /// # Errors
    ///
    /// [`Error::STALE_HANDLE`] if `h` names no live handle (a closing one still answers);
    /// [`Error::WRONG_TYPE`] for a handle without an fd (timer, async, signal, hook, process).
    pub fn fileno(&self, h: impl Into<HandleId>) -> Result<RawFd> {
        let h = h.into();
        match &self.slot(h)?.kind {
            Kind::Stream(st) => Ok(st.fd),
            Kind::Poll(p) => Ok(p.fd),
            Kind::Udp(u) => Ok(u.fd),
            _ => Err(Error::WRONG_TYPE),
        }
    }

    // ---- TCP ------------------------------------------------------------

    /// A TCP handle without a socket yet (`uv_tcp_init`); the socket is made
    /// by `tcp_bind` or `tcp_connect` for the address family they need.
    ///
    /// # Errors
    ///
    /// `ENOSPC` when the loop's handle table is full (over 2^24 handles).
    pub fn tcp_init(&mut self) -> Result<TcpSocket> {
        Ok(TcpSocket(self.new_stream(StreamType::Tcp, -1, libc::AF_UNSPEC)?.0))
    }

    fn tcp_ensure_socket(&mut self, s: Stream, family: i32) -> Result<RawFd> {
        let st = self.stream_state(s)?;
        if st.fd >= 0 {
            return Ok(st.fd);
        }
        let fd = socket::stream_socket(family)?.into_raw_fd();
        let st = self.stream_state(s)?;
        st.fd = fd;
        st.family = family;
        Ok(fd)
    }

    /// Binds to `addr` (flags: [`TCP_IPV6ONLY`], [`TCP_REUSEPORT`],
    /// [`TCP_EXCLUSIVE`]). `SO_REUSEADDR` is always set, as libuv does.
    /// Inside a cluster worker (a listen hook is installed) the address is
    /// only recorded, unless the flags ask for `SO_REUSEPORT` or
    /// `TCP_EXCLUSIVE`: the hook decides at `listen`.
    ///
    /// # Errors
    ///
    /// [`Error::STALE_HANDLE`] if `s` is closed or closing; the errno of `socket`, `setsockopt` or
    /// `bind(2)`: `EADDRINUSE` (the address is taken and neither socket uses `SO_REUSEPORT`),
    /// `EACCES` (a privileged port), `EADDRNOTAVAIL` (not a local address), `EINVAL` (already
    /// bound).
    pub fn tcp_bind(&mut self, s: TcpSocket, addr: SocketAddr, flags: u32) -> Result<()> {
        let s = Stream::of(s);
        let st = self.stream_state(s)?;
        if st.ty != StreamType::Tcp {
            return Err(Error::WRONG_TYPE);
        }
        st.lis().bind_addr = Some((addr, flags));
        if self.listen_hook.is_some() && flags & (TCP_REUSEPORT | TCP_EXCLUSIVE) == 0 {
            return Ok(());
        }
        self.tcp_bind_socket(s, addr, flags)
    }

    /// Makes the stream's socket (if it has none) and binds it.
    fn tcp_bind_socket(&mut self, s: Stream, addr: SocketAddr, flags: u32) -> Result<()> {
        let family = if addr.is_ipv4() { libc::AF_INET } else { libc::AF_INET6 };
        let fd = self.tcp_ensure_socket(s, family)?;
        socket::set_reuseaddr(fd)?;
        if flags & TCP_REUSEPORT != 0 {
            socket::set_reuseport(fd)?;
        }
        if addr.is_ipv6() {
            socket::set_ipv6only(fd, flags & TCP_IPV6ONLY != 0)?;
        }
        socket::bind(fd, &socket::SockAddr::from_std(&addr))
    }

    /// Wraps an existing TCP socket fd that is not connected (bound or
    /// listening) as a [`TcpSocket`]: `listen` on it next. The fd is made
    /// non-blocking and close-on-exec; the loop owns it from now on (on
    /// error too).
    ///
    /// # Errors
    ///
    /// `ENOSPC` when the handle table is full; the errno of `fcntl` if the fd cannot be made
    /// non-blocking (`EBADF` for a closed fd). The fd is closed on every error.
    pub fn tcp_open(&mut self, fd: OwnedFd) -> Result<TcpSocket> {
        Ok(TcpSocket(self.open_socket(fd, StreamType::Tcp)?.0))
    }

    /// Wraps an existing connected TCP socket fd as a [`TcpStream`]
    /// (`ENOTCONN` if it is not connected; the fd is closed then).
    ///
    /// # Errors
    ///
    /// `ENOTCONN` if the socket has no peer; otherwise as [`tcp_open`](Self::tcp_open). The fd is
    /// closed on every error.
    pub fn tcp_open_stream(&mut self, fd: OwnedFd) -> Result<TcpStream> {
        use std::os::fd::AsRawFd;
        socket::peername(fd.as_raw_fd()).map_err(|_| Error::ENOTCONN)?;
        Ok(TcpStream(self.open_socket(fd, StreamType::Tcp)?.0))
    }

    pub(crate) fn open_socket(&mut self, fd: OwnedFd, ty: StreamType) -> Result<Stream> {
        use std::os::fd::AsRawFd;
        let raw = fd.as_raw_fd();
        sys::set_nonblocking(raw, true)?;
        sys::set_cloexec(raw, true)?;
        let family = socket::sockname(raw).map(|a| a.family()).unwrap_or(libc::AF_UNSPEC);
        let connected = socket::peername(raw).is_ok();
        let s = self.new_stream(ty, fd.into_raw_fd(), family)?;
        if let Ok(st) = self.stream_state(s) {
            st.connected = connected;
        }
        Ok(s)
    }

    /// Adopts a `std` listener (call `listen` to start accepting).
    ///
    /// # Errors
    ///
    /// As [`tcp_open`](Self::tcp_open).
    pub fn tcp_from_std_listener(&mut self, l: std::net::TcpListener) -> Result<TcpSocket> {
        self.tcp_open(l.into())
    }

    /// Adopts a connected `std` stream.
    ///
    /// # Errors
    ///
    /// As [`tcp_open_stream`](Self::tcp_open_stream).
    pub fn tcp_from_std_stream(&mut self, s: std::net::TcpStream) -> Result<TcpStream> {
        self.tcp_open_stream(s.into())
    }

    /// Sets `TCP_NODELAY` (no Nagle delay).
    ///
    /// # Errors
    ///
    /// [`Error::STALE_HANDLE`] if the handle is closed or closing; `EBADF` if it has no socket yet
    /// (before `tcp_bind` or `tcp_connect`); the errno of `setsockopt`.
    pub fn tcp_nodelay<H: TcpHandle>(&mut self, h: H, on: bool) -> Result<()> {
        let fd = self.live_fd(Stream::of(h))?;
        socket::set_nodelay(fd, on)
    }

    /// Enables TCP keep-alive after `delay` idle (whole seconds, at least
    /// one), or disables it.
    ///
    /// # Errors
    ///
    /// [`Error::STALE_HANDLE`] if the handle is closed or closing; `EBADF` if it has no socket yet;
    /// the errno of `setsockopt`.
    pub fn tcp_keepalive<H: TcpHandle>(&mut self, h: H, delay: Option<Duration>) -> Result<()> {
        let fd = self.live_fd(Stream::of(h))?;
        socket::set_keepalive(fd, delay.map(|d| d.as_secs().clamp(1, u32::MAX as u64) as u32))
    }

    /// The local address.
    ///
    /// # Errors
    ///
    /// [`Error::STALE_HANDLE`] if the handle is closed or closing; `EBADF` if it has no socket yet
    /// (in a cluster worker, a listener before the primary answers, and an `rr` listener, which
    /// never has a socket of its own); `EINVAL` for an address that is not IPv4 or IPv6.
    pub fn tcp_getsockname<H: TcpHandle>(&self, h: H) -> Result<SocketAddr> {
        let fd = self.stream_ref(Stream::of(h))?.fd;
        if fd < 0 {
            return Err(Error::EBADF);
        }
        socket::sockname(fd)?.to_std().ok_or(Error::EINVAL)
    }

    /// The peer's address.
    ///
    /// # Errors
    ///
    /// [`Error::STALE_HANDLE`] if the stream is closed or closing; `ENOTCONN` if it has no socket
    /// yet (a connect by name still resolving) or, from `getpeername`, no peer (the connect has not
    /// completed, or the peer is gone).
    pub fn tcp_getpeername(&self, s: TcpStream) -> Result<SocketAddr> {
        let fd = self.stream_ref(Stream::of(s))?.fd;
        if fd < 0 {
            return Err(Error::ENOTCONN);
        }
        socket::peername(fd)?.to_std().ok_or(Error::EINVAL)
    }

    fn live_fd(&mut self, s: Stream) -> Result<RawFd> {
        let fd = self.stream_state(s)?.fd;
        if fd < 0 {
            return Err(Error::EBADF);
        }
        Ok(fd)
    }

    /// Connects (`uv_tcp_connect`); the socket becomes the returned
    /// [`TcpStream`] (reads and writes may be queued at once), and `cb` gets
    /// the result.
    ///
    /// # Errors
    ///
    /// Returned here, nothing started and `cb` never runs: [`Error::STALE_HANDLE`] if `s` is closed
    /// or closing; [`Error::INVALID_STATE`] if a connect is already under way or the socket listens
    /// or is connected; the errno of `socket(2)` (`EMFILE`, ...); `ENOSPC` if the loop's operation
    /// table is full. A connect that fails later (`ECONNREFUSED`, `ETIMEDOUT`, `ENETUNREACH`, or
    /// `ECANCELED` when the stream is closed first) reaches `cb` instead.
    pub fn tcp_connect(&mut self, s: TcpSocket, addr: SocketAddr, cb: &OnConnect<D, TcpStream>) -> Result<TcpStream> {
        let s = Stream::of(s);
        let st = self.stream_state(s)?;
        if st.on_connect.is_some() || st.listening || st.connected {
            return Err(Error::INVALID_STATE);
        }
        let family = if addr.is_ipv4() { libc::AF_INET } else { libc::AF_INET6 };
        let fd = self.tcp_ensure_socket(s, family)?;
        self.connect_raw(s, fd, &socket::SockAddr::from_std(&addr), &cb.f)?;
        Ok(TcpStream(s.0))
    }

    pub(crate) fn connect_raw(
        &mut self,
        s: Stream,
        fd: RawFd,
        addr: &socket::SockAddr,
        cb: &Rc<StatusFn<D>>,
    ) -> Result<()> {
        // SAFETY: a connect lends nothing (the backend copies `addr`).
        let token = unsafe { self.submit_op(s.0, Op::Connect { fd, addr })? };
        self.connecting(s)?.op = Some(token);
        self.stream_state(s)?.on_connect = Some(cb.clone());
        self.active_reqs += 1;
        Ok(())
    }

    pub(crate) fn on_connect(&mut self, s: Stream, token: Token, res: i32, d: &mut D) {
        let Ok(st) = self.stream_state(s) else { return };
        let more = st.conn.as_deref_mut().is_some_and(|c| {
            debug_assert_eq!(c.op, Some(token));
            c.op = None;
            !c.addrs.is_empty()
        });
        if res != 0 && more {
            // Connecting to several addresses: this one failed, so the
            // socket goes and the next address gets a new one (perhaps of
            // another family). Nothing else is in flight on it: reads and
            // sends wait for the connect.
            let fd = std::mem::replace(&mut st.fd, -1);
            if fd >= 0 {
                self.driver.deregister(fd);
                sys::close(fd);
            }
            self.connect_next(s, Error::from_neg(res), d);
            return;
        }
        self.connect_done(s, if res == 0 { Ok(()) } else { Err(Error::from_neg(res)) }, d);
    }

    /// The connect request ends with `status`: start what waited for it,
    /// then run the callback.
    pub(crate) fn connect_done(&mut self, s: Stream, status: Result<()>, d: &mut D) {
        let Ok(st) = self.stream_state(s) else { return };
        let cb = st.on_connect.take();
        self.connect_release(s);
        let Ok(st) = self.stream_state(s) else { return };
        if status.is_ok() {
            st.connected = true;
        }
        self.active_reqs -= 1;
        if status.is_ok() {
            // `read_start`, writes and a shutdown may have come before the
            // connect finished: start them now.
            self.recv_arm(s);
            self.flush(s);
            self.maybe_shutdown(s);
        }
        let failed = status.is_err();
        if let Some(cb) = cb {
            cb(self, d, s.0, status);
        }
        if failed {
            // As libuv: after the connect callback, writes queued on the
            // failed connection (and a shutdown) are cancelled, unless the
            // callback closed the stream (close cancels them then).
            self.fail_writes(s, Error::ECANCELED);
            self.complete_writes(s, d);
        }
    }

    /// Starts a connect to the next address not tried yet; when none can be
    /// started, the request fails with the last error (`last` if no other
    /// address was left to try).
    pub(crate) fn connect_next(&mut self, s: Stream, last: Error, d: &mut D) {
        if let Err(e) = self.connect_start_any(s, last) {
            self.connect_done(s, Err(e), d);
        }
    }

    /// Starts a connect to the first address of `connect_addrs` that takes
    /// one (a socket of its family, the op submitted); `Err` with the last
    /// failure (`last` if the list is empty) when none does. Calls no
    /// callback.
    fn connect_start_any(&mut self, s: Stream, mut last: Error) -> Result<()> {
        loop {
            let addrs = &mut self.connecting(s)?.addrs;
            let Some(addr) = addrs.pop() else { return Err(last) };
            let more = !addrs.is_empty();
            let family = if addr.is_ipv4() { libc::AF_INET } else { libc::AF_INET6 };
            let res = self.tcp_ensure_socket(s, family).and_then(|fd| {
                // SAFETY: a connect lends nothing (the backend copies `addr`).
                unsafe { self.submit_op(s.0, Op::Connect { fd, addr: &socket::SockAddr::from_std(&addr) }) }
            });
            match res {
                Ok(token) => {
                    self.connecting(s)?.op = Some(token);
                    return Ok(());
                }
                Err(e) => {
                    last = e;
                    let st = self.stream_state(s)?;
                    if more && st.fd >= 0 && st.bind_addr().is_none() {
                        sys::close(std::mem::replace(&mut st.fd, -1));
                    }
                }
            }
        }
    }

    /// Connects to the first of `addrs` that accepts, trying them in order
    /// (the way a client tries each address a name resolves to): the
    /// socket becomes the returned [`TcpStream`] at once (reads, writes and
    /// a shutdown may be queued; they start after the connect), and `cb`
    /// runs once, with `Ok` for the address that answered or with the last
    /// address's error. Each try gets a new socket of its address's family,
    /// unless the socket was bound with `tcp_bind`: then only the first
    /// address of its family is tried, on that socket. `EINVAL` for an
    /// empty list, `EAFNOSUPPORT` if no address fits a bound socket; a
    /// failure to start every address is returned here and `cb` never runs.
    ///
    /// # Errors
    ///
    /// Returned here, `cb` never runs: [`Error::STALE_HANDLE`] if `s` is closed or closing;
    /// [`Error::INVALID_STATE`] if a connect is already under way or the socket listens or is
    /// connected; `EINVAL` for an empty list; `EAFNOSUPPORT` if no address fits a bound socket's
    /// family; the last address's error if none could be started. Connect failures reach `cb`, with
    /// the last address's error, as for [`tcp_connect`](Self::tcp_connect).
    pub fn tcp_connect_addrs(
        &mut self,
        s: TcpSocket,
        addrs: &[SocketAddr],
        cb: &OnConnect<D, TcpStream>,
    ) -> Result<TcpStream> {
        let s = Stream::of(s);
        let st = self.stream_state(s)?;
        if st.on_connect.is_some() || st.listening || st.connected {
            return Err(Error::INVALID_STATE);
        }
        if addrs.is_empty() {
            return Err(Error::EINVAL);
        }
        let c = self.connecting(s)?;
        c.addrs.clear();
        c.addrs.extend(addrs.iter().rev());
        if let Err(e) = self.connect_filter_bound(s).and_then(|()| self.connect_start_any(s, Error::EINVAL)) {
            self.connect_release(s);
            return Err(e);
        }
        let st = self.stream_state(s)?;
        st.on_connect = Some(cb.f.clone());
        self.active_reqs += 1;
        Ok(TcpStream(s.0))
    }

    /// On a socket bound by `tcp_bind`, keeps only the first address of its
    /// family in `connect_addrs` (`EAFNOSUPPORT` if none).
    pub(crate) fn connect_filter_bound(&mut self, s: Stream) -> Result<()> {
        let st = self.stream_state(s)?;
        if st.fd < 0 {
            return Ok(());
        }
        let v4 = st.family == libc::AF_INET;
        let addrs = &mut self.connecting(s)?.addrs;
        // The list is reversed: the first address is the last entry.
        let first = addrs.iter().rev().find(|a| a.is_ipv4() == v4).copied();
        addrs.clear();
        match first {
            Some(a) => {
                addrs.push(a);
                Ok(())
            }
            None => Err(Error::from_errno(libc::EAFNOSUPPORT)),
        }
    }

    // ---- listening ------------------------------------------------------

    /// Starts listening (`uv_listen`); the socket becomes the returned
    /// listener. `cb` runs once per incoming connection, which the callback
    /// takes with [`accept`](Self::accept). Errors that happen later (accept
    /// failures, a cluster primary's bind error) reach `cb` as `Err`. With a
    /// [`ListenHook`] installed, a socket bound with `tcp_bind` is only
    /// recorded here: the listener comes back at once, and the hook decides
    /// from the loop's pending phase (its errors reach `cb`).
    ///
    /// # Errors
    ///
    /// [`Error::STALE_HANDLE`] if `s` is closed or closing; [`Error::INVALID_STATE`] if it already
    /// listens, is connected or is connecting; `EINVAL` if it was never bound (no address to listen
    /// on); the errno of a deferred `bind(2)` (`EADDRINUSE`, ...) or of `listen(2)`. With a listen
    /// hook installed and a bound TCP socket none of these but the first two come here: the hook's
    /// answer reaches `cb` as `Err`. Accept failures later (`EMFILE` is retried after a back-off,
    /// not reported) reach `cb` too.
    ///
    /// # Examples
    ///
    /// A listener on a kernel-chosen loopback port; a `std` client connects
    /// (the kernel completes the handshake from the backlog), and the
    /// listener's callback takes the connection.
    ///
    /// ```
    /// use uvring::{Loop, OnConnection, RunMode, TcpListener};
    ///
    /// let mut lp: Loop<u32> = Loop::new()?;
    /// let on_connection = OnConnection::new(|lp: &mut Loop<u32>, accepted: &mut u32, l: TcpListener, status| {
    ///     if status.is_err() {
    ///         return; // an accept error; the listener goes on
    ///     }
    ///     // Take every waiting connection: `accept` is `EAGAIN` when none is left.
    ///     while let Ok(s) = lp.accept(l) {
    ///         *accepted += 1;
    ///         lp.close(s, None).unwrap_or(());
    ///     }
    ///     lp.close(l, None).unwrap_or(()); // one is enough here
    /// });
    /// let sock = lp.tcp_init()?;
    /// lp.tcp_bind(sock, "127.0.0.1:0".parse().unwrap(), 0)?;
    /// let listener = lp.listen(sock, 128, &on_connection)?;
    /// let _client = std::net::TcpStream::connect(lp.tcp_getsockname(listener)?)?;
    /// let mut accepted = 0;
    /// lp.run(RunMode::Default, &mut accepted)?;
    /// assert_eq!(accepted, 1);
    /// # Ok::<(), uvring::Error>(())
    /// ```
    pub fn listen<S: SocketHandle>(
        &mut self,
        s: S,
        backlog: i32,
        cb: &OnConnection<D, S::Listener>,
    ) -> Result<S::Listener> {
        let s = Stream::of(s);
        self.listen_raw(s, backlog, &cb.f)?;
        Ok(S::Listener::from_id(s.0))
    }

    fn listen_raw(&mut self, s: Stream, backlog: i32, cb: &Rc<StatusFn<D>>) -> Result<()> {
        let hooked = self.listen_hook.is_some();
        let st = self.stream_state(s)?;
        if st.listening || st.connected || st.on_connect.is_some() {
            return Err(Error::INVALID_STATE);
        }
        st.lis().on_connection = Some(cb.clone());
        let recorded = match st.ty {
            StreamType::Tcp => st.lis().bind_addr.is_some(),
            StreamType::Pipe => st.fd < 0 && self.pipe_bound_path(s.0).is_some(),
            StreamType::IpcPipe => false,
        };
        let st = self.stream_state(s)?;
        if recorded && hooked {
            // The hook decides from the pending phase, where it has `D`
            // (see `ListenHook`); meanwhile the listener counts as listening.
            st.listening = true;
            self.set_active(s.0, true);
            self.push_pending(Pending::HookListen(s, backlog));
            return Ok(());
        }
        if let Err(e) = self.listen_local(s, backlog) {
            if let Ok(st) = self.stream_state(s) {
                st.lis().on_connection = None;
            }
            return Err(e);
        }
        Ok(())
    }

    /// Listens on the stream's own socket (bound now from the address
    /// `tcp_bind` recorded, if a hook kept it from binding) and accepts.
    fn listen_local(&mut self, s: Stream, backlog: i32) -> Result<()> {
        let st = self.stream_state(s)?;
        if st.fd < 0 && st.ty == StreamType::Pipe {
            // A path recorded for a listen hook that let it be.
            let path = self.pipe_bound_path(s.0).ok_or(Error::EINVAL)?.to_path_buf();
            self.pipe_bind_socket(s, &path)?;
        } else if st.fd < 0 {
            let (addr, flags) = st.lis().bind_addr.ok_or(Error::EINVAL)?;
            self.tcp_bind_socket(s, addr, flags)?;
        }
        let fd = self.stream_state(s)?.fd;
        socket::listen(fd, backlog)?;
        self.stream_state(s)?.listening = true;
        self.set_active(s.0, true);
        self.accept_arm(s);
        Ok(())
    }

    /// The pending phase's half of a hooked `listen`: asks the hook (see
    /// [`ListenHook::listen`]).
    pub(crate) fn hook_listen(&mut self, s: Stream, backlog: i32, d: &mut D) {
        let hook = self.listen_hook.clone();
        let Ok(st) = self.stream_state(s) else { return };
        // Closed (the slot is closing: no state) or stopped meanwhile.
        if !st.listening || st.lis().stop != ListenStop::Running {
            return;
        }
        let pipe = st.ty == StreamType::Pipe;
        let bind_addr = st.lis().bind_addr;
        if pipe && self.pipe_bound_path(s.0).is_none() {
            return;
        }
        let Some(hook) = hook else {
            // The hook was removed meanwhile: an ordinary listen.
            if let Err(e) = self.listen_local(s, backlog) {
                self.hook_listen_failed(s, e, d);
            }
            return;
        };
        let answer = if pipe {
            let Some(path) = self.pipe_bound_path(s.0).map(|p| p.to_path_buf()) else { return };
            if let Ok(st) = self.stream_state(s) {
                st.lis().hook_asked = true;
            }
            hook.listen_pipe(self, d, PipeListener(s.0), &path, backlog)
        } else {
            let Some((addr, flags)) = bind_addr else { return };
            if let Ok(st) = self.stream_state(s) {
                st.lis().hook_asked = true;
            }
            hook.listen(self, d, TcpListener(s.0), addr, flags, backlog)
        };
        match answer {
            Some(Ok(())) => {}
            Some(Err(e)) => self.hook_listen_failed(s, e, d),
            None => {
                if let Err(e) = self.listen_local(s, backlog) {
                    self.hook_listen_failed(s, e, d);
                }
            }
        }
    }

    /// A hooked listen failed in the pending phase: the listener stops
    /// listening and its `on_connection` gets the error now.
    fn hook_listen_failed(&mut self, s: Stream, err: Error, d: &mut D) {
        let Ok(st) = self.stream_state(s) else { return };
        st.listening = false;
        let cb = st.lis().on_connection.clone();
        self.set_active(s.0, false);
        if let Some(cb) = cb {
            cb(self, d, s.0, Err(err));
        }
    }

    /// For a listen hook: bind the listener's own socket to `addr` with
    /// `flags` (as `tcp_bind` does without a hook; for example with
    /// [`TCP_REUSEPORT`], so that each worker has its own socket on a shared
    /// port) and listen on it: connections are then accepted locally.
    /// `INVALID_STATE` if the listener already has a socket or was stopped.
    ///
    /// # Errors
    ///
    /// [`Error::STALE_HANDLE`] if the listener is closed or closing; [`Error::INVALID_STATE`] if it
    /// already has a socket or was stopped; the errno of `socket`, `bind(2)` (`EADDRINUSE`, ...) or
    /// `listen(2)`.
    pub fn listen_bind(&mut self, s: TcpListener, addr: SocketAddr, flags: u32, backlog: i32) -> Result<()> {
        let s = Stream::of(s);
        let st = self.stream_state(s)?;
        if st.fd >= 0 || st.lis().stop != ListenStop::Running {
            return Err(Error::INVALID_STATE);
        }
        self.tcp_bind_socket(s, addr, flags)?;
        self.listen_local(s, backlog)
    }

    /// For a listen hook: take a listening fd (for example one received from
    /// a cluster primary) as this stream's socket and accept on it.
    /// `exclusive` avoids a thundering herd among processes sharing it.
    ///
    /// # Errors
    ///
    /// [`Error::STALE_HANDLE`] if the listener is closed or closing; [`Error::INVALID_STATE`] if it
    /// already has a socket or was stopped (the fd is closed in both cases, as it is dropped); the
    /// errno of `fcntl`.
    pub fn listen_adopt<L: ListenerHandle>(&mut self, s: L, fd: OwnedFd, exclusive: bool) -> Result<()> {
        let s = Stream::of(s);
        let st = self.stream_state(s)?;
        if st.fd >= 0 || st.lis().stop != ListenStop::Running {
            return Err(Error::INVALID_STATE);
        }
        sys::set_nonblocking(std::os::fd::AsRawFd::as_raw_fd(&fd), true)?;
        let st = self.stream_state(s)?;
        st.fd = fd.into_raw_fd();
        st.lis().exclusive = exclusive;
        st.listening = true;
        self.set_active(s.0, true);
        self.accept_arm(s);
        Ok(())
    }

    /// For a listen hook: deliver a connection accepted elsewhere (a cluster
    /// primary's round-robin hand-off). The fd joins the listener's accept
    /// queue now; its `on_connection` runs from the loop's pending phase, as
    /// for a local accept. Fails (giving the fd back) if the listener is not
    /// listening or was stopped with [`listen_stop`](Self::listen_stop).
    ///
    /// # Errors
    ///
    /// The fd comes back with the error: [`Error::STALE_HANDLE`] if the listener is closed or
    /// closing; [`Error::INVALID_STATE`] if it is not listening or was stopped.
    pub fn listen_inject<L: ListenerHandle>(&mut self, s: L, fd: OwnedFd) -> std::result::Result<(), (Error, OwnedFd)> {
        let s = Stream::of(s);
        match self.stream_state(s) {
            Ok(st) if st.listening && st.listen_stop() == ListenStop::Running => {
                st.lis().accept_queue.push_back(fd.into_raw_fd());
            }
            Ok(_) => return Err((Error::INVALID_STATE, fd)),
            Err(e) => return Err((e, fd)),
        };
        self.push_pending(Pending::Injected(s));
        Ok(())
    }

    /// A connection injected by a listen hook: tell the user, if it is
    /// still waiting (an earlier callback may have accepted it already).
    pub(crate) fn deliver_injected(&mut self, s: Stream, d: &mut D) {
        let Ok(st) = self.stream_state(s) else { return };
        if !st.listening || st.lis().accept_queue.is_empty() {
            return;
        }
        if let Some(cb) = st.lis().on_connection.clone() {
            cb(self, d, s.0, Ok(()));
        }
    }

    /// For a listen hook: report a late listen error (e.g. `EADDRINUSE` from
    /// the primary) and stop listening. The listener's `on_connection` gets
    /// the error from the loop's pending phase.
    pub fn listen_fail<L: ListenerHandle>(&mut self, s: L, err: Error) {
        let s = Stream::of(s);
        let Ok(st) = self.stream_state(s) else { return };
        st.listening = false;
        self.set_active(s.0, false);
        self.push_pending(Pending::ListenFailed(s, err));
    }

    pub(crate) fn deliver_listen_failed(&mut self, s: Stream, err: Error, d: &mut D) {
        let Ok(st) = self.stream_state(s) else { return };
        if let Some(cb) = st.lis().on_connection.clone() {
            cb(self, d, s.0, Err(err));
        }
    }

    /// The address a TCP handle was bound to with `tcp_bind`, and the flags.
    ///
    /// # Errors
    ///
    /// [`Error::STALE_HANDLE`] if the handle is closed or closing.
    pub fn tcp_bind_addr<H: TcpHandle>(&self, h: H) -> Result<Option<(SocketAddr, u32)>> {
        Ok(self.stream_ref(Stream::of(h))?.bind_addr())
    }

    /// Installs the listen hook (see [`ListenHook`]), or removes it.
    pub fn set_listen_hook(&mut self, hook: Option<Rc<dyn ListenHook<D>>>) {
        self.listen_hook = hook;
    }

    /// Connections accepted and waiting for `accept`.
    ///
    /// # Errors
    ///
    /// [`Error::STALE_HANDLE`] if the listener is closed or closing.
    pub fn accept_queue_len<L: ListenerHandle>(&self, l: L) -> Result<usize> {
        Ok(self.stream_ref(Stream::of(l))?.lis.as_ref().map_or(0, |l| l.accept_queue.len()))
    }

    pub(crate) fn accept_arm(&mut self, s: Stream) {
        let Ok(st) = self.stream_state(s) else { return };
        if !st.listening
            || st.lis().accept_op != OpState::Idle
            || st.fd < 0
            || st.lis().stop != ListenStop::Running
            || st.lis().accept_paused
        {
            return;
        }
        if st.lis().accept_queue.len() >= MAX_ACCEPT_QUEUE {
            return;
        }
        let (fd, exclusive) = (st.fd, st.lis().exclusive);
        // SAFETY: an accept lends nothing.
        match unsafe { self.submit_op(s.0, Op::Accept { fd, exclusive }) } {
            Ok(token) => {
                if let Ok(st) = self.stream_state(s) {
                    st.lis().accept_op = OpState::Armed(token);
                }
            }
            Err(_) => self.accept_backoff(s),
        }
    }

    fn accept_backoff(&mut self, s: Stream) {
        if !self.accept_retry.iter().any(|(_, x)| *x == s) {
            self.accept_retry.push((self.now_ms + ACCEPT_BACKOFF_MS, s));
        }
    }

    pub(crate) fn accept_resume(&mut self, s: Stream) {
        self.accept_arm(s);
    }

    pub(crate) fn on_accept(&mut self, s: Stream, c: Completion, d: &mut D) {
        let Ok(st) = self.stream_state(s) else {
            self.release(c);
            return;
        };
        debug_assert!(matches!(st.lis().accept_op, OpState::Armed(t) | OpState::Ending(t) if t == c.token));
        if !c.more {
            st.lis().accept_op = OpState::Idle;
        }
        let listening = st.listening;
        // While stopping, connections the kernel accepted before the cancel
        // landed are still delivered (never dropped); errors no longer matter.
        let stopping = st.lis().stop == ListenStop::Stopping;
        let cb = st.lis().on_connection.clone();
        if c.res >= 0 {
            if !listening {
                sys::close(c.res);
                return;
            }
            st.lis().accept_queue.push_back(c.res);
            st.lis().accepted += 1;
            if let Some(cb) = cb {
                cb(self, d, s.0, Ok(()));
            }
            self.accept_pause_if_full(s);
        } else if c.res != -libc::ECANCELED && !stopping {
            // EMFILE, ENFILE, ENOBUFS, ...: back off instead of spinning, and
            // tell the user once per episode; the listener stays alive.
            self.accept_backoff(s);
            if let Some(cb) = cb {
                cb(self, d, s.0, Err(Error::from_neg(c.res)));
            }
            return;
        }
        if !c.more {
            if stopping {
                self.push_pending(Pending::ListenStopped(s));
            } else {
                self.accept_arm(s);
            }
        }
    }

    /// Stops accepting, gracefully (Node's `server.close()` before the
    /// handle goes): the accept op is cancelled, and connections the kernel
    /// accepted before the cancel landed still reach `on_connection` as
    /// usual (io_uring's multishot accept takes connections off the listen
    /// queue on its own, so there can be some). `cb` runs, from a later loop
    /// phase, once the accept op has ended: no connection can arrive any
    /// more, and closing the listener drops nothing that was accepted.
    /// Connections still in the kernel's listen queue stay there (for other
    /// processes sharing the socket, or refused when it closes).
    ///
    /// Connections already queued can still be taken with `accept`; a
    /// listen hook's [`listen_inject`](Self::listen_inject) is refused from
    /// now on. The listener stops counting as active once stopped. If the
    /// stream is closed first, `cb` does not run (`close` stays prompt and,
    /// as before, drops what arrives after it). `EINVAL` if the stream is
    /// not listening, `INVALID_STATE` if it was already stopped.
    ///
    /// # Errors
    ///
    /// [`Error::STALE_HANDLE`] if the listener is closed or closing; `EINVAL` if it is not
    /// listening; [`Error::INVALID_STATE`] if it was already stopped.
    pub fn listen_stop<L: ListenerHandle>(&mut self, l: L, cb: Option<&OnListenStop<D, L>>) -> Result<()> {
        let s = Stream::of(l);
        let st = self.stream_state(s)?;
        if !st.listening {
            return Err(Error::EINVAL);
        }
        if st.lis().stop != ListenStop::Running {
            return Err(Error::INVALID_STATE);
        }
        st.lis().stop = ListenStop::Stopping;
        st.lis().on_stop = cb.map(|c| c.f.clone());
        let fd = st.fd;
        match st.lis().accept_op {
            OpState::Armed(token) => {
                st.lis().accept_op = OpState::Ending(token);
                self.driver.cancel(fd, token);
            }
            // Paused (full queue): its final completion is on its way.
            OpState::Ending(_) => {}
            OpState::Idle => {
                self.accept_retry.retain(|(_, x)| *x != s);
                self.push_pending(Pending::ListenStopped(s));
            }
        }
        Ok(())
    }

    /// Pauses (`true`) or resumes (`false`) accepting on a listening stream
    /// whose socket is its own (not an `rr` listener fed by
    /// [`listen_inject`](Self::listen_inject)): while paused its accept op
    /// is not armed, so new connections wait in the kernel's backlog (for
    /// another process sharing the socket to take, as nginx's
    /// `accept_disabled`); connections already accepted are still
    /// delivered. Idempotent. `EINVAL` if the stream is not listening.
    ///
    /// # Errors
    ///
    /// [`Error::STALE_HANDLE`] if the listener is closed or closing; `EINVAL` if it is not
    /// listening.
    pub fn listen_pause<L: ListenerHandle>(&mut self, l: L, paused: bool) -> Result<()> {
        let s = Stream::of(l);
        let st = self.stream_state(s)?;
        if !st.listening {
            return Err(Error::EINVAL);
        }
        if st.lis().accept_paused == paused {
            return Ok(());
        }
        st.lis().accept_paused = paused;
        if paused {
            if let OpState::Armed(token) = st.lis().accept_op {
                st.lis().accept_op = OpState::Ending(token);
                let fd = st.fd;
                self.driver.cancel(fd, token);
            }
        } else {
            self.accept_arm(s);
        }
        Ok(())
    }

    /// Whether a connection waits in the listening socket's backlog (a
    /// zero-timeout `poll`). A paused listener sharing its socket with other
    /// processes uses it to notice a connection that nobody took: the
    /// kernel may have woken this process for it (an exclusive wakeup)
    /// just as it paused, and no other waiter hears of it.
    ///
    /// # Errors
    ///
    /// [`Error::STALE_HANDLE`] if the listener is closed or closing; `EINVAL` if it is not
    /// listening or has no socket of its own (an `rr` listener); the errno of `poll(2)`.
    pub fn listen_has_pending<L: ListenerHandle>(&mut self, l: L) -> Result<bool> {
        let st = self.stream_state(Stream::of(l))?;
        if !st.listening || st.fd < 0 {
            return Err(Error::EINVAL);
        }
        sys::readable_now(st.fd)
    }

    /// Connections accepted from this listener so far (injected ones not
    /// counted).
    ///
    /// # Errors
    ///
    /// [`Error::STALE_HANDLE`] if the listener is closed or closing.
    pub fn listen_accepted<L: ListenerHandle>(&self, l: L) -> Result<u64> {
        Ok(self.stream_ref(Stream::of(l))?.lis.as_ref().map_or(0, |l| l.accepted))
    }

    /// Whether [`listen_stop`](Self::listen_stop) was called on the stream.
    pub fn is_listen_stopped<L: ListenerHandle>(&self, l: L) -> bool {
        self.stream_ref(Stream::of(l)).is_ok_and(|st| st.listen_stop() != ListenStop::Running)
    }

    /// The accept op of a stopping listener has ended: run its callback.
    pub(crate) fn listen_stopped(&mut self, s: Stream, d: &mut D) {
        let Ok(st) = self.stream_state(s) else { return };
        if st.lis().stop != ListenStop::Stopping {
            return;
        }
        st.lis().stop = ListenStop::Stopped;
        let cb = st.lis().on_stop.take();
        self.set_active(s.0, false);
        if let Some(cb) = cb {
            cb(self, d, s.0, Ok(()));
        }
    }

    /// Back-pressure on a user that does not accept: once the queue is full,
    /// the persistent accept op is cancelled (further connections wait in
    /// the kernel's backlog). Completions already on their way still join
    /// the queue; `accept` re-arms once it is below the limit again.
    fn accept_pause_if_full(&mut self, s: Stream) {
        let Ok(st) = self.stream_state(s) else { return };
        let OpState::Armed(token) = st.lis().accept_op else { return };
        if st.fd < 0 || st.lis().accept_queue.len() < MAX_ACCEPT_QUEUE {
            return;
        }
        st.lis().accept_op = OpState::Ending(token);
        let fd = st.fd;
        self.driver.cancel(fd, token);
    }

    /// Takes one pending connection (`uv_accept`) as a new stream handle.
    /// `EAGAIN` if none is waiting.
    ///
    /// # Errors
    ///
    /// [`Error::STALE_HANDLE`] if the listener is closed or closing; `EINVAL` if it is not
    /// listening; `EAGAIN` if no connection is waiting (call it from `on_connection`, once per
    /// call); `ENOSPC` if the handle table is full (the connection is closed).
    ///
    /// # Examples
    ///
    /// See [`listen`](Self::listen): `accept` is called from the listener's
    /// [`OnConnection`], in a loop until it gives `EAGAIN`.
    pub fn accept<L: ListenerHandle>(&mut self, server: L) -> Result<L::Stream> {
        let server = Stream::of(server);
        let st = self.stream_state(server)?;
        if !st.listening {
            return Err(Error::EINVAL);
        }
        let was_full = st.lis().accept_queue.len() >= MAX_ACCEPT_QUEUE;
        let fd = st.lis().accept_queue.pop_front().ok_or(Error::EAGAIN)?;
        let (ty, family) = (st.ty, st.family);
        let s = self.new_stream(ty, fd, family);
        if was_full {
            self.accept_arm(server);
        }
        s.map(|s| L::Stream::from_id(s.0))
    }

    /// Takes one pending connection as a raw fd, without making a handle
    /// (a cluster primary hands it to a worker). `EAGAIN` if none is waiting.
    ///
    /// # Errors
    ///
    /// [`Error::STALE_HANDLE`] if the listener is closed or closing; `EINVAL` if it is not
    /// listening; `EAGAIN` if no connection is waiting.
    pub fn accept_fd<L: ListenerHandle>(&mut self, server: L) -> Result<OwnedFd> {
        let server = Stream::of(server);
        let st = self.stream_state(server)?;
        if !st.listening {
            return Err(Error::EINVAL);
        }
        let was_full = st.lis().accept_queue.len() >= MAX_ACCEPT_QUEUE;
        let fd = st.lis().accept_queue.pop_front().ok_or(Error::EAGAIN)?;
        if was_full {
            self.accept_arm(server);
        }
        // SAFETY: the fd came from the accept queue, which owned it alone.
        Ok(unsafe { sys::owned(fd) })
    }

    // ---- reading --------------------------------------------------------

    /// Starts reading (`uv_read_start`): `cb` gets each chunk as a slice
    /// valid for the call, `Err(Error::EOF)` at end of stream, or an error.
    ///
    /// # Errors
    ///
    /// [`Error::STALE_HANDLE`] if the stream is closed or closing; `EINVAL` for a listening stream;
    /// `ENOTCONN` if it has no socket. Read errors (`ECONNRESET`, ...) and end of stream
    /// ([`Error::EOF`]) reach `cb`, never this call.
    ///
    /// # Examples
    ///
    /// Reading one end of a connected pair of pipes until end of stream:
    ///
    /// ```
    /// use uvring::{Loop, OnRead, PipeStream, RunMode};
    ///
    /// let mut lp: Loop<Vec<u8>> = Loop::new()?;
    /// let (a, b) = lp.pipe_pair(false)?;
    /// let on_read = OnRead::new(|lp: &mut Loop<Vec<u8>>, got: &mut Vec<u8>, s: PipeStream, data| match data {
    ///     Ok(bytes) => got.extend_from_slice(bytes), // lent for this call only
    ///     Err(_eof_or_error) => lp.close(s, None).unwrap_or(()),
    /// });
    /// lp.read_start(b, &on_read)?;
    /// lp.write(a, b"ping", None)?;
    /// lp.shutdown(a, None)?; // `b` reads "ping", then end of stream
    /// let mut got = Vec::new();
    /// lp.run(RunMode::Default, &mut got)?;
    /// assert_eq!(got, b"ping");
    /// lp.close(a, None)?;
    /// lp.run(RunMode::Default, &mut got)?;
    /// # Ok::<(), uvring::Error>(())
    /// ```
    pub fn read_start<S: StreamHandle>(&mut self, s: S, cb: &OnRead<D, S>) -> Result<()> {
        let s = Stream::of(s);
        let st = self.stream_state(s)?;
        if st.listening {
            return Err(Error::EINVAL);
        }
        if st.fd < 0 {
            return Err(Error::ENOTCONN);
        }
        st.on_read = Some(cb.f.clone());
        st.reading = true;
        let stashed = !st.parts.stash.is_empty();
        self.set_active(s.0, true);
        if stashed {
            self.push_pending(Pending::Stash(s));
        }
        self.recv_arm(s);
        Ok(())
    }

    /// Stops reading (`uv_read_stop`). Data that is already on its way is
    /// kept for the next `read_start`.
    ///
    /// # Errors
    ///
    /// [`Error::STALE_HANDLE`] if the stream is closed or closing.
    pub fn read_stop<S: StreamHandle>(&mut self, s: S) -> Result<()> {
        let s = Stream::of(s);
        let st = self.stream_state(s)?;
        st.reading = false;
        st.rearm_recv = false;
        let active = st.listening;
        if let OpState::Armed(token) = st.recv_op {
            st.recv_op = OpState::Ending(token);
            let fd = st.fd;
            self.driver.cancel(fd, token);
        }
        self.set_active(s.0, active || self.stream_busy(s));
        Ok(())
    }

    /// Whether the stream is reading.
    pub fn is_reading<S: StreamHandle>(&self, s: S) -> bool {
        self.reading(Stream::of(s))
    }

    pub(crate) fn reading(&self, s: Stream) -> bool {
        self.stream_ref(s).is_ok_and(|st| st.reading)
    }

    fn stream_busy(&self, s: Stream) -> bool {
        self.stream_ref(s).is_ok_and(|st| st.reading || st.listening)
    }

    pub(crate) fn recv_arm(&mut self, s: Stream) {
        let Ok(st) = self.stream_state(s) else { return };
        // While a connect is in flight, reading waits for it (as libuv's
        // stream I/O handles the connect first): a receive armed on a
        // connecting socket would consume its error (`ECONNREFUSED`) and
        // make the connect look successful. `on_connect` arms it.
        if !st.reading || st.eof || st.fd < 0 || st.on_connect.is_some() {
            return;
        }
        match st.recv_op {
            OpState::Armed(_) => return,
            // A new receive waits for the cancelled one's end: two
            // multishot receives on one socket could interleave the bytes.
            OpState::Ending(_) => {
                st.rearm_recv = true;
                return;
            }
            OpState::Idle => {}
        }
        let fd = st.fd;
        let op = if st.not_socket {
            Op::ReadStream { fd }
        } else if st.ty == StreamType::IpcPipe {
            Op::RecvMsg { fd }
        } else {
            Op::Recv { fd }
        };
        let kind = op.kind();
        // SAFETY: a receive lends nothing (it reads into pool buffers).
        match unsafe { self.submit_op(s.0, op) } {
            Ok(token) => {
                if let Ok(st) = self.stream_state(s) {
                    st.recv_op = OpState::Armed(token);
                }
            }
            Err(e) => {
                if let Ok(st) = self.stream_state(s) {
                    st.parts.stash.push_back(Stashed { res: -e.code(), buf: None, kind });
                }
                self.push_pending(Pending::Stash(s));
            }
        }
    }

    pub(crate) fn on_recv(&mut self, s: Stream, c: Completion, d: &mut D) {
        let kind = c.token.kind().unwrap_or(OpKind::Recv);
        let Ok(st) = self.stream_state(s) else {
            self.release(c);
            return;
        };
        debug_assert!(matches!(st.recv_op, OpState::Armed(t) | OpState::Ending(t) if t == c.token));
        let was_ending = matches!(st.recv_op, OpState::Ending(_));
        if !c.more {
            st.recv_op = OpState::Idle;
        }
        let event = match c.res {
            n if n > 0 => true,
            0 => true,
            e if e == -libc::ECANCELED && was_ending => false,
            e if e == -libc::ENOBUFS => false,
            _ => true,
        };
        if event {
            let item = Stashed { res: c.res, buf: c.buf, kind };
            if st.reading && st.parts.stash.is_empty() {
                self.deliver_read(s, item, d);
            } else {
                st.parts.stash.push_back(item);
                if st.reading {
                    self.push_pending(Pending::Stash(s));
                }
            }
        } else if let Some(id) = c.buf {
            self.driver.recycle(id);
        }
        if !c.more {
            let rearm = match self.stream_state(s) {
                Ok(st) => {
                    let again = st.reading || (was_ending && st.rearm_recv);
                    st.rearm_recv = false;
                    again && st.write_error.is_none()
                }
                Err(_) => false,
            };
            if rearm {
                self.recv_arm(s);
            }
        }
    }

    pub(crate) fn deliver_stash(&mut self, s: Stream, d: &mut D) {
        loop {
            let Ok(st) = self.stream_state(s) else { return };
            if !st.reading {
                return;
            }
            let Some(item) = st.parts.stash.pop_front() else { return };
            self.deliver_read(s, item, d);
        }
    }

    /// Runs the read callback for one result, then recycles its buffer.
    fn deliver_read(&mut self, s: Stream, item: Stashed, d: &mut D) {
        let Ok(st) = self.stream_state(s) else {
            if let Some(id) = item.buf {
                self.discard_recv_buf(Some(item.kind), id, item.res);
            }
            return;
        };
        let cb = st.on_read.clone();
        if item.res <= 0 {
            // End of stream or an error: libuv stops reading after either.
            st.reading = false;
            if item.res == 0 {
                st.eof = true;
            }
            let active = st.listening;
            self.set_active(s.0, active);
            let status = if item.res == 0 { Error::EOF } else { Error::from_neg(item.res) };
            if let Some(cb) = cb {
                cb(self, d, s.0, Err(status));
            }
            return;
        }
        let Some(id) = item.buf else { return };
        let pool = self.pool.clone();
        // SAFETY: buffer `id` was lent to the loop by this completion and is
        // recycled only below, after the callback; `pool` (an Rc clone) keeps
        // the memory alive even if the callback replaces the loop.
        let data = unsafe { pool.slice(id, item.res as usize) };
        if item.kind == OpKind::RecvMsg {
            self.deliver_ipc_record(s, data, cb, d);
        } else if let Some(cb) = cb {
            cb(self, d, s.0, Ok(data));
        }
        self.driver.recycle(id);
    }

    /// An IPC pipe's recvmsg record: queue its fds as pending handles, then
    /// hand the payload to the read callback. A truncated control message is
    /// reported (and the fds that did arrive are closed), never ignored.
    fn deliver_ipc_record(&mut self, s: Stream, data: &[u8], cb: Option<Rc<ReadFn<D>>>, d: &mut D) {
        // Received fds join the stream's queue, or are closed if the control
        // data was cut (or the stream is gone): never leaked.
        let mut st = self.stream_state(s).ok();
        let parsed = crate::backend::parse_ipc_record(data, |fd, truncated| match &mut st {
            Some(st) if !truncated => st.parts.pending_handles.push_back(fd),
            _ => sys::close(fd),
        });
        let Some(rec) = parsed else {
            if let Some(cb) = cb {
                cb(self, d, s.0, Err(Error::EINVAL));
            }
            return;
        };
        let truncated = rec.truncated;
        if truncated {
            if let Some(cb) = &cb {
                cb(self, d, s.0, Err(Error::CONTROL_TRUNCATED));
            }
        }
        if !rec.payload.is_empty() && self.reading(s) {
            if let Some(cb) = &cb {
                cb(self, d, s.0, Ok(rec.payload));
            }
        }
    }

    // ---- writing --------------------------------------------------------

    /// Queues `data` for writing (`uv_write`); the bytes are copied, so the
    /// caller's buffer is free at once. `cb` runs when all of them are sent,
    /// or with `ECANCELED` if the stream is closed first. A failure found
    /// while sending (a reset peer) reaches `cb` from the loop, never from
    /// inside this call; an immediate `Err` means nothing was queued (the
    /// stream is closed, shut down, or failed before).
    ///
    /// # Errors
    ///
    /// Nothing is queued and `cb` never runs: [`Error::STALE_HANDLE`] if the stream is closed or
    /// closing; `EBADF` if it listens or has no socket (and no connect under way); `EPIPE` after
    /// [`shutdown`](Self::shutdown); the error an earlier write failed with (`EPIPE`, `ECONNRESET`,
    /// ...), which sticks to the stream. Failures while sending reach `cb`; so does `ECANCELED`
    /// when the stream is closed before the bytes are sent.
    ///
    /// # Examples
    ///
    /// ```
    /// use uvring::{Loop, OnWrite, PipeStream, RunMode};
    ///
    /// let mut lp: Loop<u32> = Loop::new()?;
    /// let (a, b) = lp.pipe_pair(false)?;
    /// let done = OnWrite::new(|_lp: &mut Loop<u32>, writes: &mut u32, _s: PipeStream, status| {
    ///     assert!(status.is_ok());
    ///     *writes += 1;
    /// });
    /// let mut buf = *b"first";
    /// lp.write(a, &buf, Some(&done))?;
    /// buf.copy_from_slice(b"again"); // the bytes were copied: the buffer is free at once
    /// lp.write(a, &buf, Some(&done))?;
    /// assert_eq!(lp.write_queue_size(a)?, 10); // nothing is sent before the loop runs
    /// let mut writes = 0;
    /// lp.run(RunMode::Default, &mut writes)?;
    /// assert_eq!(writes, 2);
    /// lp.close(a, None)?;
    /// lp.close(b, None)?;
    /// lp.run(RunMode::Default, &mut writes)?;
    /// # Ok::<(), uvring::Error>(())
    /// ```
    pub fn write<S: StreamHandle>(&mut self, s: S, data: &[u8], cb: Option<&OnWrite<D, S>>) -> Result<()> {
        self.queue_write(Stream::of(s), data, &[], false, cb.map(|c| &c.f))
    }

    /// Queues a write that carries `fds` with its first byte (IPC). On `Ok`
    /// the loop owns the fds (closed once sent, or when the write fails or
    /// the stream closes); on `Err` the caller still does.
    pub(crate) fn write_with_fds(
        &mut self,
        s: Stream,
        data: &[u8],
        fds: &[RawFd],
        cb: Option<&Rc<StatusFn<D>>>,
    ) -> Result<()> {
        self.queue_write(s, data, fds, false, cb)
    }

    /// Queues a write carrying `fds` that stay the caller's: the loop sends
    /// them with the write's first byte and never closes them, so a caller
    /// that keeps its own reference to each fd (a cluster primary holds every
    /// connection until a worker acknowledges it) needs no duplicate. The
    /// same rules as [`write_fds`](Self::write_fds) otherwise: at most
    /// [`FdBatch::CAPACITY`](crate::FdBatch::CAPACITY) fds, `data` not empty,
    /// `s` an IPC pipe.
    ///
    /// # Safety
    /// Each fd in `fds` must stay open, naming the same open file, until the
    /// kernel is done with it: until `cb` has run (with any status), or the
    /// peer has received the fds, or `s` is closed and its slot freed
    /// ([`is_live`](Self::is_live) false). Closing one earlier can make the
    /// loop send whatever file later takes that fd number.
    ///
    /// # Errors
    ///
    /// As [`write_fds`](Self::write_fds).
    pub unsafe fn write_fds_borrowed(
        &mut self,
        s: PipeStream,
        data: &[u8],
        fds: &[RawFd],
        cb: Option<&OnWrite<D, PipeStream>>,
    ) -> Result<()> {
        self.queue_write(Stream::of(s), data, fds, true, cb.map(|c| &c.f))
    }

    fn queue_write(
        &mut self,
        s: Stream,
        data: &[u8],
        fds: &[RawFd],
        borrowed: bool,
        cb: Option<&Rc<StatusFn<D>>>,
    ) -> Result<()> {
        let st = self.stream_state(s)?;
        if !fds.is_empty() && (st.ty != StreamType::IpcPipe || data.is_empty() || fds.len() > socket::MAX_FDS_PER_MSG) {
            // Fds travel only on IPC pipes, with a byte to carry them.
            return Err(Error::EINVAL);
        }
        self.write_admit(s)?;
        let st = self.stream_state(s)?;
        let start = st.queued_total;
        st.parts.side().queued.extend_from_slice(data);
        st.queued_total += data.len() as u64;
        let end = st.queued_total;
        st.parts.send_fds.extend(fds.iter().copied());
        st.parts.side().writes.push_back(WriteReq {
            end,
            cb: cb.cloned(),
            nfds: fds.len() as u8,
            borrowed,
            start,
            file: None,
        });
        self.active_reqs += 1;
        self.flush(s);
        Ok(())
    }

    /// Checks that `s` takes a write request now, and gives an idle stream
    /// its write buffer and request queue back from the loop's pools.
    pub(crate) fn write_admit(&mut self, s: Stream) -> Result<()> {
        self.write_admit_side(s)?;
        if self.stream_state(s)?.parts.side().queued.capacity() == 0 {
            let buf = self.write_buf();
            self.stream_state(s)?.parts.side().queued = buf;
        }
        Ok(())
    }

    /// Checks that `s` takes a write request now (as `write_admit`), giving
    /// it its write side but no buffer: the caller brings one.
    fn write_admit_side(&mut self, s: Stream) -> Result<()> {
        let st = self.stream_state(s)?;
        // A connect by name has no socket until the name is resolved; its
        // writes wait in the queue like those of any connect.
        if (st.fd < 0 && st.on_connect.is_none()) || st.listening {
            return Err(Error::EBADF);
        }
        if st.shutdown != ShutdownState::None {
            return Err(Error::EPIPE);
        }
        if let Some(e) = st.write_error {
            return Err(e);
        }
        // An idle stream lent its write side and buffers to the loop's
        // pools (see `flush`); take the side back, with its queue's capacity.
        if st.parts.w.is_none() {
            let side = self.write_sides_spare.pop().unwrap_or_default();
            self.stream_state(s)?.parts.w = Some(side);
        }
        Ok(())
    }

    /// An empty buffer for [`write_vec`](Self::write_vec), from the loop's
    /// pool of write buffers (the ones idle streams lent it), with the
    /// capacity it has; a new one of 256 bytes if the pool is empty.
    ///
    /// Fill it and hand it to `write_vec`: the bytes are then not copied
    /// again, and the buffer comes back to the pool once it is sent, so a
    /// server that builds its responses this way allocates nothing once
    /// warm (up to [`LoopOptions::write_pool_bytes`](crate::LoopOptions::write_pool_bytes)
    /// of buffers kept).
    pub fn write_buf(&mut self) -> Vec<u8> {
        match self.write_bufs_spare.pop() {
            Some(buf) => {
                self.write_bufs_spare_bytes -= buf.capacity();
                buf
            }
            None => Vec::with_capacity(WRITE_BUF_MIN),
        }
    }

    /// Gives a buffer to the loop's pool of write buffers, emptied, or
    /// frees it if the pool is full (by count or by its byte budget).
    pub(crate) fn give_write_buf(&mut self, mut buf: Vec<u8>) {
        let cap = buf.capacity();
        if cap > 0
            && self.write_bufs_spare.len() < WRITE_BUFS_SPARE_MAX
            && self.write_bufs_spare_bytes + cap <= self.write_pool_bytes
        {
            buf.clear();
            self.write_bufs_spare_bytes += cap;
            self.write_bufs_spare.push(buf);
        }
    }

    /// Gives a stream's write side to the loop's pool of write sides (or
    /// frees it past `WRITE_BUFS_SPARE_MAX`), its buffers to the pool of
    /// write buffers, within that pool's byte budget. For a stream gone
    /// idle and for a closed one alike: a side never keeps buffers while
    /// pooled, so every pooled byte is counted against the budget.
    pub(crate) fn lend_write_side(&mut self, mut side: Box<WriteSide<D>>) {
        self.give_write_buf(std::mem::take(&mut side.inflight));
        self.give_write_buf(std::mem::take(&mut side.queued));
        side.writes.clear();
        if self.write_sides_spare.len() < WRITE_BUFS_SPARE_MAX {
            self.write_sides_spare.push(side);
        }
    }

    /// Queues `data` for writing and takes the buffer (an owned write):
    /// the same as [`write`](Self::write), except that the payload is not
    /// copied when nothing else waits in the stream's queue, the common case
    /// of a response written in one piece: the buffer itself becomes the
    /// stream's write buffer and the kernel reads the bytes from it. Behind
    /// other queued bytes it is appended to them (order is kept) and the
    /// buffer goes back to the pool at once. Either way the buffer ends in
    /// the loop's pool of write buffers, which [`write_buf`](Self::write_buf)
    /// hands out again.
    ///
    /// On `Err` the buffer goes to the pool too; nothing was queued.
    ///
    /// ```
    /// use uvring::{Loop, OnRead, RunMode, TcpStream};
    /// # let mut lp: Loop<usize> = Loop::new()?;
    /// # let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    /// # let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    /// # let (server, _) = listener.accept().unwrap();
    /// let s: TcpStream = lp.tcp_from_std_stream(server)?;
    /// let mut body = lp.write_buf();
    /// body.extend_from_slice(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok");
    /// lp.write_vec(s, body, None)?;
    /// lp.close(s, None)?;
    /// lp.run(RunMode::Default, &mut 0)?;
    /// # drop(client);
    /// # Ok::<(), uvring::Error>(())
    /// ```
    ///
    /// # Errors
    ///
    /// As [`write`](Self::write).
    pub fn write_vec<S: StreamHandle>(&mut self, s: S, data: Vec<u8>, cb: Option<&OnWrite<D, S>>) -> Result<()> {
        let s = Stream::of(s);
        if let Err(e) = self.write_admit_side(s) {
            self.give_write_buf(data);
            return Err(e);
        }
        let st = self.stream_state(s)?;
        let start = st.queued_total;
        st.queued_total += data.len() as u64;
        let end = st.queued_total;
        let side = st.parts.side();
        let spare = if side.queued.is_empty() {
            std::mem::replace(&mut side.queued, data)
        } else {
            side.queued.extend_from_slice(&data);
            data
        };
        side.writes.push_back(WriteReq {
            end,
            cb: cb.map(|c| c.f.clone()),
            nfds: 0,
            borrowed: false,
            start,
            file: None,
        });
        self.active_reqs += 1;
        self.give_write_buf(spare);
        self.flush(s);
        Ok(())
    }

    /// Bytes queued and not yet sent (`uv_stream_get_write_queue_size`):
    /// the figure to watch for back-pressure.
    ///
    /// # Errors
    ///
    /// [`Error::STALE_HANDLE`] if the stream is closed or closing.
    pub fn write_queue_size<S: StreamHandle>(&self, s: S) -> Result<usize> {
        let st = self.stream_ref(Stream::of(s))?;
        Ok((st.queued_total - st.written_total) as usize)
    }

    /// Writes what the socket takes now, without queueing (`uv_try_write`).
    /// `EAGAIN` if nothing could be written or writes are already queued.
    ///
    /// # Errors
    ///
    /// [`Error::STALE_HANDLE`] if the stream is closed or closing; `EBADF` if it listens or has no
    /// socket; `EAGAIN` if writes are queued (so that bytes keep their order) or the socket takes
    /// nothing now; `EPIPE` after a shutdown; the errno of `sendmsg` (`EPIPE`, `ECONNRESET`, ...).
    pub fn try_write<S: StreamHandle>(&mut self, s: S, data: &[u8]) -> Result<usize> {
        let st = self.stream_state(Stream::of(s))?;
        if st.fd < 0 || st.listening {
            return Err(Error::EBADF);
        }
        if st.parts.has_writes() || st.send_op.is_some() {
            return Err(Error::EAGAIN);
        }
        if st.shutdown != ShutdownState::None {
            return Err(Error::EPIPE);
        }
        let iov = [libc::iovec { iov_base: data.as_ptr() as *mut _, iov_len: data.len() }];
        if st.not_socket {
            // SAFETY: `iov` describes `data`, which lives for the whole call.
            return unsafe { sys::writev(st.fd, &iov) };
        }
        // SAFETY: `iov` describes `data`, which lives for the whole call.
        unsafe { socket::sendmsg(st.fd, &iov, &[]) }
    }

    /// Sends what is queued if no send is in flight.
    pub(crate) fn flush(&mut self, s: Stream) {
        let Ok(st) = self.stream_state(s) else { return };
        // No write side: nothing was written since the stream went idle.
        let Some(side) = st.parts.w.as_mut() else { return };
        // Nothing goes out before a connect completes (`on_connect` flushes):
        // epoll would find the write side busy, io_uring would let the
        // write's completion overtake the connect's.
        if st.send_op.is_some() || st.fd < 0 || st.on_connect.is_some() || st.xfer.is_some() {
            return;
        }
        if st.inflight_off >= side.inflight.len() {
            // A file transfer whose turn has come goes before later bytes.
            if let Some(x) = self.xfer_due(s) {
                self.xfer_begin(s, x);
                return;
            }
            let Ok(st) = self.stream_state(s) else { return };
            st.parts.side().inflight.clear();
            st.inflight_off = 0;
            self.fill_inflight(s);
        }
        let Ok(st) = self.stream_state(s) else { return };
        let remaining = st.parts.side().inflight.len() - st.inflight_off;
        if remaining == 0 {
            // Both buffers are empty (`fill_inflight` moved everything
            // queued): an idle stream keeps no write buffer; they go to the
            // loop's pool, shared by every stream, capacity and all, and
            // with no request left, the write side goes to its own pool.
            let side = st.parts.side();
            let inflight = std::mem::take(&mut side.inflight);
            let queued = std::mem::take(&mut side.queued);
            let idle = side.writes.is_empty().then(|| st.parts.w.take()).flatten();
            self.give_write_buf(inflight);
            self.give_write_buf(queued);
            if let Some(side) = idle {
                self.lend_write_side(side);
            }
            let Ok(st) = self.stream_state(s) else { return };
            let done = st.parts.writes().next().is_some_and(|w| w.end <= st.written_total);
            if done || st.shutdown == ShutdownState::Requested {
                self.push_pending(Pending::Writes(s));
            }
            return;
        }
        let fd = st.fd;
        let st_not_socket = st.not_socket;
        // SAFETY (for the pointer handed to the backend): `inflight` is not
        // touched until this send's completion; only `queued` grows meanwhile.
        let ptr = unsafe { st.parts.side().inflight.as_ptr().add(st.inflight_off) };
        let iov = [libc::iovec { iov_base: ptr as *mut _, iov_len: remaining }];
        let mut fds = [-1; socket::MAX_FDS_PER_MSG];
        let nfds = self.inflight_fds(s, &mut fds);
        // SAFETY: see above: the memory stays valid and unmodified until the
        // completion, which `send_op` guards; the fds are owned by queued
        // writes (or borrowed under `write_fds_borrowed`'s contract) and
        // closed only once the send's completion has come back.
        let op = if st_not_socket {
            Op::WriteStream { fd, iov: &iov }
        } else {
            Op::Send { fd, iov: &iov, fds: &fds[..nfds] }
        };
        let res = unsafe { self.submit_op(s.0, op) };
        match res {
            Ok(token) => {
                if let Ok(st) = self.stream_state(s) {
                    st.send_op = Some(token);
                    st.inflight_len = remaining;
                    st.inflight_fds = nfds as u8;
                }
            }
            Err(e) => self.fail_writes(s, e),
        }
    }

    /// Moves queued bytes into the in-flight buffer: all of them, or up to
    /// the next file transfer, or for an IPC pipe with handles attached, up
    /// to the next write that carries a handle (each handle must go with its
    /// own write's first byte).
    fn fill_inflight(&mut self, s: Stream) {
        let Ok(st) = self.stream_state(s) else { return };
        let Some(parts) = st.parts.w.as_deref_mut() else { return };
        // The first write not fully moved to `inflight` starts at the stream
        // offset `moved` = written_total (inflight is empty here).
        let moved = st.written_total;
        let mut cut = parts.queued.len();
        for w in parts.writes.iter() {
            if (w.nfds > 0 || w.file.is_some()) && w.start > moved {
                cut = (w.start - moved) as usize;
                break;
            }
        }
        if cut == parts.queued.len() {
            std::mem::swap(&mut parts.inflight, &mut parts.queued);
        } else {
            parts.inflight.extend_from_slice(&parts.queued[..cut]);
            parts.queued.drain(..cut);
        }
    }

    /// The fds to attach to the send about to start: the first unsent
    /// write's handles, if that write starts exactly at the send's first
    /// byte. Sends go in write order, so they are the front of `send_fds`.
    fn inflight_fds(&mut self, s: Stream, out: &mut [RawFd; socket::MAX_FDS_PER_MSG]) -> usize {
        let Ok(st) = self.stream_state(s) else { return 0 };
        let offset = st.written_total;
        for w in st.parts.writes() {
            // Writes already sent, and zero-length ones at `offset` (which
            // carry no fds), are passed over.
            if w.end <= offset {
                continue;
            }
            if w.nfds > 0 && w.start == offset {
                let n = (w.nfds as usize).min(out.len());
                for (dst, src) in out.iter_mut().zip(st.parts.send_fds.iter()).take(n) {
                    *dst = *src;
                }
                return n;
            }
            if w.start >= offset {
                break;
            }
        }
        0
    }

    pub(crate) fn on_send(&mut self, s: Stream, token: Token, res: i32, d: &mut D) {
        let Ok(st) = self.stream_state(s) else { return };
        if st.xfer.is_some() {
            return self.xfer_on_op(s, token, OpKind::Send, res);
        }
        debug_assert_eq!(st.send_op, Some(token));
        st.send_op = None;
        if res < 0 {
            self.fail_writes(s, Error::from_neg(res));
            self.complete_writes(s, d);
            return;
        }
        let n = res as usize;
        if n > 0 {
            st.release_sent_fds();
        }
        st.inflight_off += n;
        st.written_total += n as u64;
        self.complete_writes(s, d);
    }

    /// Runs the callbacks of writes whose bytes are all sent (or, after a
    /// failure, of every queued write, with the error), then sends more or
    /// starts a due shutdown.
    pub(crate) fn complete_writes(&mut self, s: Stream, d: &mut D) {
        loop {
            let Ok(st) = self.stream_state(s) else { return };
            let failed = st.write_error;
            let Some(w) = st.parts.writes().next() else { break };
            // A zero-length write that carries a handle completes only once
            // the handle went out; a file transfer, once it has ended.
            let waiting = match w.file {
                Some(x) => (failed.is_none() && !self.xfer_done(x)) || self.xfer_busy(x),
                None => failed.is_none() && (w.end > st.written_total || w.nfds > 0),
            };
            if waiting {
                break;
            }
            let Ok(st) = self.stream_state(s) else { return };
            let Some(w) = st.parts.pop_write() else { break };
            if failed.is_some() {
                st.parts.release_send_fds(w.nfds, w.borrowed);
            }
            self.active_reqs -= 1;
            if let Some(x) = w.file {
                let (cb, res) = self.xfer_take(x);
                let res = match (res, failed) {
                    (Err(Error::ECANCELED), Some(e)) => Err(e),
                    (r, _) => r,
                };
                if let Some(cb) = cb {
                    cb(self, d, s.0, res);
                }
            } else if let Some(cb) = w.cb {
                cb(self, d, s.0, failed.map_or(Ok(()), Err));
            }
        }
        // No write left: `flush` lends the write side to the loop's pool.
        self.flush(s);
        self.maybe_shutdown(s);
    }

    /// A send failed: every queued write fails with the error (their
    /// callbacks run from `complete_writes`, in the loop's pending phase
    /// when the failure was found inside an API call), and later writes get
    /// it at once.
    pub(crate) fn fail_writes(&mut self, s: Stream, e: Error) {
        let Ok(st) = self.stream_state(s) else { return };
        st.write_error = Some(e);
        if let Some(side) = st.parts.w.as_mut() {
            side.queued.clear();
            side.inflight.clear();
        }
        st.inflight_off = 0;
        st.written_total = st.queued_total;
        if st.parts.has_writes() {
            self.push_pending(Pending::Writes(s));
        }
        self.maybe_shutdown(s);
    }

    // ---- shutdown -------------------------------------------------------

    /// Shuts down the write side once queued writes are sent
    /// (`uv_shutdown`). A second shutdown fails with `ENOTCONN`.
    ///
    /// # Errors
    ///
    /// [`Error::STALE_HANDLE`] if the stream is closed or closing; `ENOTCONN` if it has no socket
    /// and no connect under way, listens, or was already shut down. The shutdown's own result
    /// (`ECANCELED` if the stream is closed first) reaches `cb`.
    pub fn shutdown<S: StreamHandle>(&mut self, s: S, cb: Option<&OnShutdown<D, S>>) -> Result<()> {
        let s = Stream::of(s);
        let st = self.stream_state(s)?;
        if (st.fd < 0 && st.on_connect.is_none()) || st.listening || st.shutdown != ShutdownState::None {
            return Err(Error::ENOTCONN);
        }
        st.shutdown = ShutdownState::Requested;
        st.shutdown_req = true;
        st.shutdown_cb = cb.map(|c| c.f.clone());
        self.active_reqs += 1;
        self.maybe_shutdown(s);
        Ok(())
    }

    fn maybe_shutdown(&mut self, s: Stream) {
        let Ok(st) = self.stream_state(s) else { return };
        if st.shutdown != ShutdownState::Requested || st.on_connect.is_some() {
            return;
        }
        if st.send_op.is_some() || st.written_total < st.queued_total || st.parts.has_writes() {
            return;
        }
        let code = match st.write_error {
            Some(e) => e.code(),
            None => match socket::shutdown_write(st.fd) {
                Ok(()) => 0,
                Err(e) => e.code(),
            },
        };
        st.shutdown = ShutdownState::Done;
        self.push_pending(Pending::ShutdownDone(s, code));
    }

    pub(crate) fn shutdown_done(&mut self, s: Stream, code: i32, d: &mut D) {
        let Ok(st) = self.stream_state(s) else { return };
        let Some(cb) = st.take_shutdown_req() else { return };
        self.active_reqs -= 1;
        let status = if code == 0 { Ok(()) } else { Err(Error::from_errno(code)) };
        if let Some(cb) = cb {
            cb(self, d, s.0, status);
        }
    }

    /// Closes a TCP connection with a reset (`uv_tcp_close_reset`): the
    /// peer gets `ECONNRESET` instead of an orderly end of stream. Queued
    /// writes are cancelled, as for `close`. `EINVAL` after a `shutdown`
    /// (libuv refuses it too: the FIN may already be out).
    ///
    /// # Errors
    ///
    /// [`Error::STALE_HANDLE`] if the stream is closed or closing; `EINVAL` after a
    /// [`shutdown`](Self::shutdown); the errno of `setsockopt(SO_LINGER)`.
    pub fn close_reset(&mut self, s: TcpStream, cb: Option<&OnClose<D>>) -> Result<()> {
        let st = self.stream_state(Stream::of(s))?;
        if st.shutdown != ShutdownState::None {
            return Err(Error::EINVAL);
        }
        if st.fd >= 0 {
            socket::set_linger_zero(st.fd)?;
        }
        self.close(s, cb)
    }

    // ---- close ----------------------------------------------------------

    /// First half of closing a stream: stop every operation. The slot stays
    /// until the backend has returned everything it held.
    pub(crate) fn stream_close(&mut self, s: Stream) {
        self.accept_retry.retain(|(_, x)| *x != s);
        self.xfer_close(s);
        let resolve = {
            let Ok(slot) = self.slot_mut(s.0) else { return };
            let Kind::Stream(st) = &mut slot.kind else { return };
            let fd = st.fd;
            let mut cancels: [Option<Token>; 4] = [None; 4];
            if let OpState::Armed(token) = st.recv_op {
                st.recv_op = OpState::Ending(token);
                cancels[0] = Some(token);
            }
            if let Some(l) = st.lis.as_deref_mut() {
                if let OpState::Armed(token) = l.accept_op {
                    l.accept_op = OpState::Ending(token);
                    cancels[1] = Some(token);
                }
                if l.hook_asked {
                    l.hook_dropped = l.accept_queue.len();
                }
                for fd in l.accept_queue.drain(..) {
                    sys::close(fd);
                }
            }
            cancels[2] = st.send_op;
            cancels[3] = st.conn.as_ref().and_then(|c| c.op);
            let resolve = st.conn.as_mut().and_then(|c| c.resolve.take());
            for fd in st.parts.pending_handles.drain() {
                sys::close(fd);
            }
            st.reading = false;
            st.listening = false;
            for token in cancels.into_iter().flatten() {
                if fd >= 0 {
                    self.driver.cancel(fd, token);
                }
            }
            resolve
        };
        // A name still being resolved: drop it if no pool thread has
        // started it (its completion finds the stream closing either way;
        // the connect callback gets ECANCELED when the close finishes).
        if let Some(w) = resolve {
            let _ = self.cancel_work(w);
        }
        // Stashed reads hold receive buffers: give them back now.
        while let Ok(st) = self.slot_mut(s.0).map(|slot| match &mut slot.kind {
            Kind::Stream(st) => st.parts.stash.pop_front(),
            _ => None,
        }) {
            let Some(item) = st else { break };
            if let Some(id) = item.buf {
                self.discard_recv_buf(Some(item.kind), id, item.res);
            }
        }
    }

    /// A send completed after close began: count what went out so those
    /// writes report success rather than cancellation.
    pub(crate) fn stream_send_done_closing(&mut self, s: Stream, token: Token, res: i32) {
        if let Ok(slot) = self.slot_mut(s.0) {
            if let Kind::Stream(st) = &mut slot.kind {
                debug_assert_eq!(st.send_op, Some(token));
                st.send_op = None;
                // A file transfer's op: its bytes are not the buffers'.
                if res > 0 && st.xfer.is_none() {
                    st.release_sent_fds();
                    st.written_total += res as u64;
                }
            }
        }
    }

    /// Second half of closing: nothing is in flight any more. Close the fd
    /// and run the callbacks of writes, connect and shutdown that were
    /// pending (written ones succeed; the rest get `ECANCELED`).
    pub(crate) fn stream_finish_close(&mut self, s: Stream, d: &mut D) {
        let (fd, hooked, ty, observed) = match self.slot_mut(s.0) {
            Ok(Slot { kind: Kind::Stream(st), close_cb, .. }) => {
                let hooked = st.lis.as_ref().and_then(|l| l.hook_asked.then_some(l.hook_dropped));
                // A listener's address must be free once it is closed (a
                // rebind may follow at once), and a close callback may count
                // on the fd being gone (libuv closes before it): those close
                // now. A connection closed without a callback may go with the
                // backend's next submission (io_uring's `close` feature).
                let observed = st.lis.is_some() || close_cb.is_some();
                (std::mem::replace(&mut st.fd, -1), hooked, st.ty, observed)
            }
            _ => return,
        };
        if ty == StreamType::Pipe {
            self.pipe_release_path(s.0);
        }
        if fd >= 0 {
            self.driver.deregister(fd);
            if observed {
                sys::close(fd);
            } else {
                self.driver.close_fd(fd);
            }
        }
        loop {
            let (w, written) = match self.slot_mut(s.0).map(|slot| &mut slot.kind) {
                Ok(Kind::Stream(st)) => {
                    let w = st.parts.pop_write();
                    if let Some(w) = &w {
                        st.parts.release_send_fds(w.nfds, w.borrowed);
                    }
                    (w, st.written_total)
                }
                _ => return,
            };
            let Some(w) = w else { break };
            self.active_reqs -= 1;
            if let Some(x) = w.file {
                let (cb, res) = self.xfer_take(x);
                if let Some(cb) = cb {
                    cb(self, d, s.0, res);
                }
                continue;
            }
            let status = if w.end <= written && w.nfds == 0 { Ok(()) } else { Err(Error::ECANCELED) };
            if let Some(cb) = w.cb {
                cb(self, d, s.0, status);
            }
        }
        let connect = match self.slot_mut(s.0).map(|slot| &mut slot.kind) {
            Ok(Kind::Stream(st)) => st.on_connect.take(),
            _ => None,
        };
        if let Some(cb) = connect {
            self.active_reqs -= 1;
            cb(self, d, s.0, Err(Error::ECANCELED));
        }
        let shutdown = match self.slot_mut(s.0).map(|slot| &mut slot.kind) {
            Ok(Kind::Stream(st)) => st.take_shutdown_req(),
            _ => None,
        };
        if let Some(cb) = shutdown {
            self.active_reqs -= 1;
            if let Some(cb) = cb {
                cb(self, d, s.0, Err(Error::ECANCELED));
            }
        }
        // The hook hears of a listener it was asked about, with `D`, while
        // the id is still valid (the slot is freed after this).
        if let (Some(dropped), Some(hook)) = (hooked, self.listen_hook.clone()) {
            match ty {
                StreamType::Pipe => hook.closed_pipe(self, d, PipeListener(s.0), dropped),
                _ => hook.closed(self, d, TcpListener(s.0), dropped),
            }
        }
    }
}
