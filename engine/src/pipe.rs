//! Pipes (`uv_pipe_t`): Unix-domain stream sockets, and IPC pipes that carry
//! file descriptors next to their bytes.
//!
//! [`pipe_init`](Loop::pipe_init) makes a [`PipeSocket`]; it becomes a
//! [`PipeListener`] (`pipe_bind` + `listen`) or a [`PipeStream`]
//! (`pipe_connect`, a spawn stdio entry); `pipe_open` and `pipe_pair` give
//! streams directly. The stream API (read, write, shutdown, close) applies as
//! for TCP; an IPC pipe's stream also sends and receives handles.
//!
//! # Handle passing
//!
//! Sending: [`Loop::write2`] attaches one handle (its fd is duplicated at
//! call time, so the caller may close its handle at once);
//! [`Loop::write_fds`] attaches up to [`FdBatch::CAPACITY`] fds, which all
//! travel in one `SCM_RIGHTS` message with the write's first byte. A write
//! that carries fds starts a new `sendmsg`, so its fds are never sent with
//! another write's bytes, and a partial send never sends them twice.
//!
//! Receiving: the fds that arrive with a chunk are queued as pending handles
//! *before* that chunk's bytes reach the read callback, so a reader that
//! first drains the pending queue and then consumes the bytes sees fds in
//! stream order. (A chunk can hold bytes written before the write that
//! carried its fds, never bytes after a later write's fds: the kernel ends a
//! receive at the message that carries fds.) Take them with
//! [`Loop::accept_pending`], [`Loop::accept_pending_into`] or
//! [`Loop::accept_pending_fd`]. A truncated control message (`MSG_CTRUNC`:
//! more fds than the receive buffer holds) is reported to the read callback
//! as [`Error::CONTROL_TRUNCATED`], and the fds of that message that did
//! arrive are closed. Closing the pipe closes every fd never accepted.

use crate::error::{Error, Result};
use crate::event_loop::Loop;
use crate::handle::*;
use crate::stream::{Stream, StreamType};
use crate::sys::{self, socket};
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd, RawFd};
use std::path::Path;

/// Fds to send in one message ([`Loop::write_fds`]): an inline array, so
/// building and sending a batch allocates nothing. The batch owns its fds
/// and closes any it still holds when dropped.
pub struct FdBatch {
    fds: [RawFd; socket::MAX_FDS_PER_MSG],
    len: usize,
}

impl FdBatch {
    /// Most fds one batch (one message) carries.
    pub const CAPACITY: usize = socket::MAX_FDS_PER_MSG;

    pub const fn new() -> FdBatch {
        FdBatch { fds: [-1; socket::MAX_FDS_PER_MSG], len: 0 }
    }

    /// Adds an fd; gives it back if the batch is full.
    pub fn push(&mut self, fd: OwnedFd) -> std::result::Result<(), OwnedFd> {
        if self.len >= Self::CAPACITY {
            return Err(fd);
        }
        self.fds[self.len] = fd.into_raw_fd();
        self.len += 1;
        Ok(())
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The fds, in the order they will be sent.
    pub fn as_raw_fds(&self) -> &[RawFd] {
        &self.fds[..self.len]
    }

    /// Closes every fd in the batch.
    pub fn clear(&mut self) {
        for &fd in &self.fds[..self.len] {
            sys::close(fd);
        }
        self.len = 0;
    }

    /// Forgets the fds (their ownership moved elsewhere).
    fn release(&mut self) {
        self.len = 0;
    }
}

impl Default for FdBatch {
    fn default() -> Self {
        FdBatch::new()
    }
}

impl Drop for FdBatch {
    fn drop(&mut self) {
        self.clear();
    }
}

impl std::fmt::Debug for FdBatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("FdBatch").field(&self.as_raw_fds()).finish()
    }
}

/// The stream type a received fd should become: `Tcp` for an IPv4/IPv6
/// stream socket, `Pipe` for a Unix stream socket; `WRONG_TYPE` for
/// anything else (datagram sockets, files, pipe(2) fds), which only
/// [`Loop::accept_pending_fd`] takes.
fn fd_stream_type(fd: RawFd) -> Result<StreamType> {
    let (ty, _listening) = socket::socket_kind(fd).map_err(|_| Error::WRONG_TYPE)?;
    if ty != libc::SOCK_STREAM {
        return Err(Error::WRONG_TYPE);
    }
    match socket::sockname(fd)?.family() {
        libc::AF_INET | libc::AF_INET6 => Ok(StreamType::Tcp),
        libc::AF_UNIX => Ok(StreamType::Pipe),
        _ => Err(Error::WRONG_TYPE),
    }
}

impl<D> Loop<D> {
    /// A pipe handle without a socket yet (`uv_pipe_init`); `ipc` makes it
    /// an IPC pipe that can carry handles. Give it a socket with
    /// [`pipe_bind`](Self::pipe_bind) (then `listen`),
    /// [`pipe_connect`](Self::pipe_connect) or as a spawn stdio entry.
    pub fn pipe_init(&mut self, ipc: bool) -> Result<PipeSocket> {
        let ty = if ipc { StreamType::IpcPipe } else { StreamType::Pipe };
        Ok(PipeSocket(self.new_stream(ty, -1, libc::AF_UNIX)?.0))
    }

    fn pipe_state_check(&mut self, s: Stream) -> Result<()> {
        let st = self.stream_state(s)?;
        if st.ty == StreamType::Tcp {
            return Err(Error::WRONG_TYPE);
        }
        if st.fd >= 0 {
            return Err(Error::INVALID_STATE);
        }
        Ok(())
    }

    /// Binds the pipe to a filesystem path (`uv_pipe_bind`); then `listen`.
    /// `EADDRINUSE` if the path exists. The path is not removed on close.
    pub fn pipe_bind(&mut self, s: PipeSocket, path: &Path) -> Result<()> {
        let s = Stream::of(s);
        self.pipe_state_check(s)?;
        let addr = socket::SockAddr::unix(path)?;
        let fd = socket::stream_socket(libc::AF_UNIX)?;
        socket::bind(fd.as_raw_fd(), &addr)?;
        let st = self.stream_state(s)?;
        st.fd = fd.into_raw_fd();
        st.family = libc::AF_UNIX;
        Ok(())
    }

    /// Connects to the pipe listening at `path` (`uv_pipe_connect`); the
    /// socket becomes the returned stream, and `cb` gets the result.
    pub fn pipe_connect(&mut self, s: PipeSocket, path: &Path, cb: &OnConnect<D, PipeStream>) -> Result<PipeStream> {
        let s = Stream::of(s);
        self.pipe_state_check(s)?;
        if self.stream_state(s)?.on_connect.is_some() {
            return Err(Error::INVALID_STATE);
        }
        let addr = socket::SockAddr::unix(path)?;
        let fd = socket::stream_socket(libc::AF_UNIX)?;
        let raw = fd.as_raw_fd();
        let st = self.stream_state(s)?;
        st.fd = fd.into_raw_fd();
        st.family = libc::AF_UNIX;
        if let Err(e) = self.connect_raw(s, raw, &addr, &cb.f) {
            if let Ok(st) = self.stream_state(s) {
                st.fd = -1;
            }
            sys::close(raw);
            return Err(e);
        }
        Ok(PipeStream(s.0))
    }

    /// Adopts an open fd as a stream (`uv_pipe_open`): a connected Unix
    /// stream socket, for example an IPC channel inherited from a parent
    /// (`ipc` makes it an IPC pipe), or an fd that is not a socket, such as
    /// the process's stdin or stdout: a pipe(2) end, a FIFO, a terminal (in
    /// raw or line mode, as the terminal is set; libuv's `uv_tty_t` read
    /// side) or a regular file. The fd is made non-blocking and
    /// close-on-exec and the loop owns it from now on (on error it is
    /// closed). Pass a `dup` of fd 0 to keep stdin itself open; note that
    /// non-blocking mode belongs to the open file, so a shell sharing the
    /// terminal or pipe sees it too (as with libuv).
    ///
    /// A non-socket stream is read with `read(2)` and written with
    /// `writev(2)` at the file position; a regular file (or `/dev/null`),
    /// which epoll cannot watch, is read as always ready, to its end
    /// ([`Error::EOF`]), not refused. Such a stream cannot carry handles
    /// (`ipc` gives `ENOTSOCK`), and [`shutdown`](Self::shutdown) reports
    /// `ENOTSOCK` once the writes drained (close the stream to give the
    /// reader its end of file). `EINVAL` for a listening or datagram socket.
    pub fn pipe_open(&mut self, fd: OwnedFd, ipc: bool) -> Result<PipeStream> {
        if !sys::is_socket(fd.as_raw_fd())? {
            if ipc {
                return Err(Error::from_errno(libc::ENOTSOCK));
            }
            let s = self.pipe_init(false)?;
            if let Err(e) = self.stream_adopt_not_socket(Stream::of(s), fd) {
                let _ = self.close(s, None);
                return Err(e);
            }
            return Ok(PipeStream(s.0));
        }
        let (ty, listening) = socket::socket_kind(fd.as_raw_fd())?;
        if ty != libc::SOCK_STREAM || listening {
            return Err(Error::EINVAL);
        }
        let s = self.pipe_init(ipc)?;
        if let Err(e) = self.stream_adopt(Stream::of(s), fd) {
            let _ = self.close(s, None);
            return Err(e);
        }
        Ok(PipeStream(s.0))
    }

    /// The stream of a pipe socket that is connected: one given to
    /// [`spawn`](Self::spawn) as `Stdio::Pipe` or `Stdio::Ipc`.
    /// `INVALID_STATE` if it has no connected socket.
    pub fn pipe_stream(&self, s: PipeSocket) -> Result<PipeStream> {
        let st = self.stream_ref(Stream::of(s))?;
        if st.ty == StreamType::Tcp {
            return Err(Error::WRONG_TYPE);
        }
        if st.fd < 0 || !st.connected {
            return Err(Error::INVALID_STATE);
        }
        Ok(PipeStream(s.0))
    }

    /// Gives stream `s` (without a socket) the socket `fd`.
    pub(crate) fn stream_adopt(&mut self, s: Stream, fd: OwnedFd) -> Result<()> {
        let raw = fd.as_raw_fd();
        sys::set_nonblocking(raw, true)?;
        sys::set_cloexec(raw, true)?;
        let family = socket::sockname(raw).map(|a| a.family()).unwrap_or(libc::AF_UNSPEC);
        let connected = socket::peername(raw).is_ok();
        let st = self.stream_state(s)?;
        st.fd = fd.into_raw_fd();
        st.family = family;
        st.connected = connected;
        Ok(())
    }

    /// Gives stream `s` (without an fd) the non-socket fd `fd`.
    fn stream_adopt_not_socket(&mut self, s: Stream, fd: OwnedFd) -> Result<()> {
        let raw = fd.as_raw_fd();
        sys::set_nonblocking(raw, true)?;
        sys::set_cloexec(raw, true)?;
        let st = self.stream_state(s)?;
        st.fd = fd.into_raw_fd();
        st.family = libc::AF_UNSPEC;
        st.connected = true;
        st.not_socket = true;
        Ok(())
    }

    /// A connected pair of pipes in this loop (a Unix socketpair), both IPC
    /// pipes if `ipc`.
    pub fn pipe_pair(&mut self, ipc: bool) -> Result<(PipeStream, PipeStream)> {
        let (a, b) = socket::socketpair(true)?;
        let x = self.pipe_open(a, ipc)?;
        match self.pipe_open(b, ipc) {
            Ok(y) => Ok((x, y)),
            Err(e) => {
                let _ = self.close(x, None);
                Err(e)
            }
        }
    }

    // ---- sending handles ----------------------------------------------

    /// Writes `data` with `send_handle`'s socket attached to its first byte
    /// (`uv_write2`). The fd is duplicated now, so the caller may close
    /// `send_handle` at once. `data` must not be empty; `s` must be an IPC
    /// pipe (`EINVAL` otherwise).
    pub fn write2<H: SendableHandle>(
        &mut self,
        s: PipeStream,
        data: &[u8],
        send_handle: H,
        cb: Option<&OnWrite<D, PipeStream>>,
    ) -> Result<()> {
        let fd = self.fileno(send_handle)?;
        if fd < 0 {
            return Err(Error::EBADF);
        }
        let mut batch = FdBatch::new();
        let _ = batch.push(sys::dup_cloexec(fd)?);
        self.write_fds(s, data, &mut batch, cb)
    }

    /// Writes `data` with every fd of `fds` attached to its first byte, all
    /// in one `SCM_RIGHTS` message, in order. On success the batch is left
    /// empty (the loop owns the fds and closes them once sent); on error it
    /// still holds them. `data` must not be empty; `s` must be an IPC pipe.
    pub fn write_fds(
        &mut self,
        s: PipeStream,
        data: &[u8],
        fds: &mut FdBatch,
        cb: Option<&OnWrite<D, PipeStream>>,
    ) -> Result<()> {
        if fds.is_empty() {
            return self.write(s, data, cb);
        }
        self.write_with_fds(Stream::of(s), data, fds.as_raw_fds(), cb.map(|c| &c.f))?;
        fds.release();
        Ok(())
    }

    // ---- receiving handles --------------------------------------------

    /// Handles received and not yet accepted (`uv_pipe_pending_count`).
    pub fn pending_count(&self, s: PipeStream) -> Result<usize> {
        Ok(self.stream_ref(Stream::of(s))?.parts.pending_handles.len())
    }

    /// The type of the next pending handle (`uv_pipe_pending_type`): `Tcp`
    /// or `Pipe`; `None` if none is pending; `WRONG_TYPE` for an fd that is
    /// not a stream socket (take it with
    /// [`accept_pending_fd`](Self::accept_pending_fd)).
    pub fn pending_type(&self, s: PipeStream) -> Result<Option<StreamType>> {
        match self.stream_ref(Stream::of(s))?.parts.pending_handles.front() {
            None => Ok(None),
            Some(&fd) => fd_stream_type(fd).map(Some),
        }
    }

    fn pop_pending(&mut self, s: PipeStream) -> Result<OwnedFd> {
        let fd = self.stream_state(Stream::of(s))?.parts.pending_handles.pop_front().ok_or(Error::EAGAIN)?;
        // SAFETY: the pending queue owned the fd alone; it is now ours.
        Ok(unsafe { OwnedFd::from_raw_fd(fd) })
    }

    /// Takes the next pending handle as a new handle of what it is: a
    /// connected socket comes out as a stream; any other (bound, or
    /// listening) as a [`TcpSocket`] or [`PipeSocket`], on which `listen`
    /// starts accepting (as libuv's `uv_accept` into a handle, then
    /// `uv_listen`). `EAGAIN` if none is pending; `WRONG_TYPE` (the fd stays
    /// pending) if it is not a stream socket.
    pub fn accept_pending(&mut self, s: PipeStream) -> Result<PendingHandle> {
        let ty = self.pending_type(s)?.ok_or(Error::EAGAIN)?;
        let fd = self.pop_pending(s)?;
        // Connectedness, not SO_ACCEPTCONN, decides: a socket sent after
        // bind and before listen is a socket to listen on, whatever the
        // sender did with its own copy meanwhile.
        let connected = socket::peername(fd.as_raw_fd()).is_ok();
        // Whether the sender's pipe was an IPC pipe is not on the wire: a
        // Unix socket arrives as a plain pipe, as in libuv.
        let h = self.open_socket(fd, ty)?;
        Ok(match (ty, connected) {
            (StreamType::Tcp, false) => PendingHandle::TcpSocket(TcpSocket(h.0)),
            (StreamType::Tcp, true) => PendingHandle::TcpStream(TcpStream(h.0)),
            (_, false) => PendingHandle::PipeSocket(PipeSocket(h.0)),
            (_, true) => PendingHandle::PipeStream(PipeStream(h.0)),
        })
    }

    /// Takes the next pending fd as is, whatever it is (`EAGAIN` if none).
    pub fn accept_pending_fd(&mut self, s: PipeStream) -> Result<OwnedFd> {
        self.pop_pending(s)
    }
}
