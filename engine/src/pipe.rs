//! Pipes (`uv_pipe_t`): Unix-domain stream sockets, and IPC pipes that carry
//! file descriptors next to their bytes.
//!
//! A pipe is a [`Stream`] of type [`StreamType::Pipe`] or
//! [`StreamType::IpcPipe`]; the stream API (listen, accept, read, write,
//! shutdown, close) applies as for TCP.
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
use crate::stream::StreamType;
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

impl Loop {
    /// A pipe handle without a socket yet (`uv_pipe_init`); `ipc` makes it
    /// an IPC pipe that can carry handles. Give it a socket with
    /// [`pipe_bind`](Self::pipe_bind), [`pipe_connect`](Self::pipe_connect),
    /// [`pipe_open`](Self::pipe_open) or as a spawn stdio entry.
    pub fn pipe_init(&mut self, ipc: bool) -> Result<Stream> {
        let ty = if ipc { StreamType::IpcPipe } else { StreamType::Pipe };
        self.new_stream(ty, -1, libc::AF_UNIX)
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
    pub fn pipe_bind(&mut self, s: Stream, path: &Path) -> Result<()> {
        self.pipe_state_check(s)?;
        let addr = socket::SockAddr::unix(path)?;
        let fd = socket::stream_socket(libc::AF_UNIX)?;
        socket::bind(fd.as_raw_fd(), &addr)?;
        let st = self.stream_state(s)?;
        st.fd = fd.into_raw_fd();
        st.family = libc::AF_UNIX;
        Ok(())
    }

    /// Connects to the pipe listening at `path` (`uv_pipe_connect`); `cb`
    /// gets the result.
    pub fn pipe_connect(&mut self, s: Stream, path: &Path, cb: &OnConnect) -> Result<()> {
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
        if let Err(e) = self.connect_raw(s, raw, &addr, cb) {
            if let Ok(st) = self.stream_state(s) {
                st.fd = -1;
            }
            sys::close(raw);
            return Err(e);
        }
        Ok(())
    }

    /// Adopts an open Unix stream socket, connected or listening
    /// (`uv_pipe_open`), for example an IPC channel inherited from a parent.
    /// The fd is made non-blocking and close-on-exec. `ENOTSOCK` if it is
    /// not a socket; on error the fd is closed.
    pub fn pipe_open(&mut self, s: Stream, fd: OwnedFd) -> Result<()> {
        self.pipe_state_check(s)?;
        let (ty, _) = socket::socket_kind(fd.as_raw_fd())?;
        if ty != libc::SOCK_STREAM {
            return Err(Error::EINVAL);
        }
        self.stream_adopt(s, fd)
    }

    /// Gives stream `s` (without a socket) the socket `fd`.
    fn stream_adopt(&mut self, s: Stream, fd: OwnedFd) -> Result<()> {
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

    /// A connected pair of pipes in this loop (a Unix socketpair), both IPC
    /// pipes if `ipc`.
    pub fn pipe_pair(&mut self, ipc: bool) -> Result<(Stream, Stream)> {
        let (a, b) = socket::socketpair(true)?;
        let x = self.pipe_init(ipc)?;
        if let Err(e) = self.stream_adopt(x, a) {
            let _ = self.close(x, None);
            return Err(e);
        }
        let y = match self.pipe_init(ipc) {
            Ok(y) => y,
            Err(e) => {
                let _ = self.close(x, None);
                return Err(e);
            }
        };
        if let Err(e) = self.stream_adopt(y, b) {
            let _ = self.close(x, None);
            let _ = self.close(y, None);
            return Err(e);
        }
        Ok((x, y))
    }

    // ---- sending handles ----------------------------------------------

    /// Writes `data` with `send_handle`'s socket attached to its first byte
    /// (`uv_write2`). The fd is duplicated now, so the caller may close
    /// `send_handle` at once. `data` must not be empty; `s` must be an IPC
    /// pipe (`EINVAL` otherwise).
    pub fn write2(&mut self, s: Stream, data: &[u8], send_handle: Stream, cb: Option<&OnWrite>) -> Result<()> {
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
    pub fn write_fds(&mut self, s: Stream, data: &[u8], fds: &mut FdBatch, cb: Option<&OnWrite>) -> Result<()> {
        if fds.is_empty() {
            return self.write(s, data, cb);
        }
        self.write_with_fds(s, data, fds.as_raw_fds(), cb)?;
        fds.release();
        Ok(())
    }

    // ---- receiving handles --------------------------------------------

    /// Handles received and not yet accepted (`uv_pipe_pending_count`).
    pub fn pending_count(&self, s: Stream) -> Result<usize> {
        Ok(self.stream_ref(s)?.parts.pending_handles.len())
    }

    /// The type of the next pending handle (`uv_pipe_pending_type`): `Tcp`
    /// or `Pipe`; `None` if none is pending; `WRONG_TYPE` for an fd that is
    /// not a stream socket (take it with
    /// [`accept_pending_fd`](Self::accept_pending_fd)).
    pub fn pending_type(&self, s: Stream) -> Result<Option<StreamType>> {
        match self.stream_ref(s)?.parts.pending_handles.front() {
            None => Ok(None),
            Some(&fd) => fd_stream_type(fd).map(Some),
        }
    }

    fn pop_pending(&mut self, s: Stream) -> Result<OwnedFd> {
        let fd = self.stream_state(s)?.parts.pending_handles.pop_front().ok_or(Error::EAGAIN)?;
        // SAFETY: the pending queue owned the fd alone; it is now ours.
        Ok(unsafe { OwnedFd::from_raw_fd(fd) })
    }

    /// Takes the next pending handle as a new stream of its type (`Tcp` or
    /// `Pipe`). `EAGAIN` if none is pending; `WRONG_TYPE` (the fd stays
    /// pending) if it is not a stream socket.
    pub fn accept_pending(&mut self, s: Stream) -> Result<Stream> {
        let ty = self.pending_type(s)?.ok_or(Error::EAGAIN)?;
        let fd = self.pop_pending(s)?;
        self.open_socket(fd, ty)
    }

    /// Takes the next pending handle into `client`, a handle without a
    /// socket made by `tcp_init` or `pipe_init` (`uv_accept` on an IPC
    /// pipe). A type mismatch (a TCP socket into a pipe handle, ...) is
    /// `WRONG_TYPE` and leaves the fd pending.
    pub fn accept_pending_into(&mut self, s: Stream, client: Stream) -> Result<()> {
        let ty = self.pending_type(s)?.ok_or(Error::EAGAIN)?;
        let st = self.stream_state(client)?;
        let fits = match ty {
            StreamType::Tcp => st.ty == StreamType::Tcp,
            _ => st.ty != StreamType::Tcp,
        };
        if !fits {
            return Err(Error::WRONG_TYPE);
        }
        if st.fd >= 0 {
            return Err(Error::INVALID_STATE);
        }
        let fd = self.pop_pending(s)?;
        self.stream_adopt(client, fd)
    }

    /// Takes the next pending fd as is, whatever it is (`EAGAIN` if none).
    pub fn accept_pending_fd(&mut self, s: Stream) -> Result<OwnedFd> {
        self.pop_pending(s)
    }
}
