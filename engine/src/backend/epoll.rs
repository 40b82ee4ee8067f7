//! The epoll backend: readiness turned into completions.
//!
//! Each fd has at most one *read-side* op (accept, recv, recvmsg, recvfrom,
//! read, poll_in), one *write-side* op (send, connect) and one poll
//! watcher's poll; a second op of a side while one is in flight is refused
//! with `EBUSY` (the contract allows it; io_uring has no such limit). The fd
//! is in the epoll set, level-triggered, exactly while it has an op that
//! waits for readiness. When epoll reports it ready, this backend performs
//! the syscall and reports the result as a completion. Sends and connects
//! are tried at once (the common case succeeds without touching epoll);
//! their results wait in `ready` until the next `poll`, so no completion is
//! ever delivered from inside a submit call. A cancel takes the op out of
//! its side at once, so a replacement can be submitted right after it.
//!
//! Datagrams: any number of `SendTo` ops may be in flight per fd. They are
//! queued per fd in submission order and sent at the start of the next
//! `poll`, as many as the socket takes per `sendmmsg` call; only when the
//! socket's buffer is full does the fd wait for `EPOLLOUT`, and later sends
//! queue behind, so datagrams leave in order. `RecvFrom` receives with
//! `recvmmsg`, one pool buffer per datagram, up to
//! [`MAX_READS_PER_WAKEUP`] per wakeup.
//!
//! Non-socket streams (`ReadStream`, `WriteStream`): pipes, FIFOs and ttys
//! are watched like sockets and read with `read(2)`, written with
//! `writev(2)`. A regular file (or `/dev/null`) cannot be watched:
//! `epoll_ctl` refuses it with `EPERM`. Such an fd is read as always ready
//! (libuv does the same): it joins the `always_ready` list, every `poll`
//! reads it (without waiting) until its read op ends or is cancelled.

use super::{
    write_recvmsg_header, Backend, BufPool, Completion, Driver, Op, PoolConfig, RecordLayout, Token, WaitStats,
    MAX_ACCEPTS_PER_WAKEUP, MAX_IOV, MAX_READS_PER_WAKEUP, RECVMSG_CONTROL_LEN, RECVMSG_HEADER_LEN, RECVMSG_NAME_LEN,
};
use crate::error::{Error, Result};
use crate::sys::socket::SockAddr;
use crate::sys::{self, epoll, socket};
use std::collections::VecDeque;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::rc::Rc;

/// Events fetched per `epoll_wait`.
const EVENTS_PER_WAIT: usize = 1024;
/// Datagrams handed to one `sendmmsg` call.
const DGRAM_BATCH: usize = 32;

#[derive(Copy, Clone)]
enum ReadOp {
    Accept {
        token: Token,
    },
    Recv {
        token: Token,
    },
    RecvMsg {
        token: Token,
    },
    RecvFrom {
        token: Token,
    },
    ReadStream {
        token: Token,
    },
    /// Its buffer is `RegRare::read_buf`.
    Read {
        token: Token,
    },
    PollIn {
        token: Token,
    },
}

impl ReadOp {
    fn token(&self) -> Token {
        match *self {
            ReadOp::Accept { token }
            | ReadOp::Recv { token }
            | ReadOp::RecvMsg { token }
            | ReadOp::RecvFrom { token }
            | ReadOp::ReadStream { token }
            | ReadOp::Read { token, .. }
            | ReadOp::PollIn { token } => token,
        }
    }
}

#[derive(Copy, Clone)]
enum WriteOp {
    Send { token: Token },
    Connect { token: Token },
    WriteStream { token: Token },
}

impl WriteOp {
    fn token(&self) -> Token {
        match *self {
            WriteOp::Send { token } | WriteOp::Connect { token } | WriteOp::WriteStream { token } => token,
        }
    }
}

/// A send waiting for `EPOLLOUT`: copies of the iovecs and fds.
struct PendingSend {
    iov: [libc::iovec; MAX_IOV],
    iovcnt: usize,
    fds: [RawFd; socket::MAX_FDS_PER_MSG],
    nfds: usize,
}

/// A datagram waiting to be sent: copies of its iovecs and destination.
struct DgramSend {
    token: Token,
    iov: [libc::iovec; MAX_IOV],
    iovcnt: usize,
    /// The destination; `len == 0` for the connected peer.
    addr: SockAddr,
}

struct Reg {
    /// Bumped when the fd is deregistered; carried in the epoll data so an
    /// event for an earlier registration of the same fd number is ignored.
    generation: u32,
    /// Events currently in the epoll set (0: not in the set).
    registered: u32,
    exclusive: bool,
    read: Option<ReadOp>,
    write: Option<WriteOp>,
    /// The send waiting for `EPOLLOUT`, while one does: taken from
    /// `Epoll::send_spare` and given back when the op ends, so an idle fd
    /// holds no iovec or fd array (a `Reg` exists for every fd number).
    send: Option<Box<PendingSend>>,
    /// What a connection's fd never needs (a poll watcher's poll,
    /// datagrams, a file read's buffer): made on first use and kept with
    /// the fd number (so using it again allocates nothing), so that a
    /// stream's `Reg` is 64 bytes, not 104.
    rare: Option<Box<RegRare>>,
    /// The socket refused a datagram (`EAGAIN`): wait for `EPOLLOUT`.
    dgram_blocked: bool,
    /// epoll refused the fd (`EPERM`: a regular file): its read op is run
    /// at every `poll` instead (the fd is in `Epoll::always_ready`).
    always_ready: bool,
}

/// The rarely used part of a [`Reg`].
struct RegRare {
    /// A poll watcher's one-shot poll: its token and epoll events.
    poll: Option<(Token, u32)>,
    /// `SendTo` ops in flight, in submission order (the queue keeps its
    /// capacity, so sending allocates nothing after warm-up).
    dgrams: VecDeque<DgramSend>,
    /// The buffer of the fd's `ReadOp::Read`, lent by the loop until the
    /// op completes.
    read_buf: (*mut u8, usize),
}

impl Default for RegRare {
    fn default() -> RegRare {
        RegRare { poll: None, dgrams: VecDeque::new(), read_buf: (std::ptr::null_mut(), 0) }
    }
}

impl Reg {
    fn new() -> Reg {
        Reg {
            generation: 0,
            registered: 0,
            exclusive: false,
            read: None,
            write: None,
            send: None,
            rare: None,
            dgram_blocked: false,
            always_ready: false,
        }
    }

    fn wanted(&self) -> u32 {
        let mut ev = 0;
        if self.read.is_some() && !self.always_ready {
            ev |= epoll::IN;
        }
        if self.write.is_some() || self.dgram_blocked {
            ev |= epoll::OUT;
        }
        if let Some((_, events)) = self.poll() {
            ev |= events;
        }
        ev
    }

    fn poll(&self) -> Option<(Token, u32)> {
        self.rare.as_ref().and_then(|r| r.poll)
    }

    fn take_poll(&mut self) -> Option<(Token, u32)> {
        self.rare.as_mut().and_then(|r| r.poll.take())
    }

    fn rare(&mut self) -> &mut RegRare {
        self.rare.get_or_insert_with(Box::default)
    }
}

pub(crate) struct Epoll {
    epfd: OwnedFd,
    pool: Rc<BufPool>,
    free_bufs: Vec<u16>,
    /// Registrations indexed by fd number; grows to the highest fd seen.
    regs: Vec<Reg>,
    /// Completions produced outside `poll` (immediate sends, cancels).
    ready: Vec<Completion>,
    events: Vec<epoll::Event>,
    /// Fds with datagrams queued since the last `poll` (not blocked).
    dgram_dirty: Vec<RawFd>,
    /// Time blocked in `epoll_wait`, completions found ready.
    stats: WaitStats,
    /// Fds epoll refused (regular files) whose read op runs at every `poll`.
    always_ready: Vec<RawFd>,
    /// Send copies no fd waits with (see `Reg::send`).
    #[allow(clippy::vec_box)] // the boxes move into and out of `Reg::send`
    send_spare: Vec<Box<PendingSend>>,
}

// SAFETY-relevant note: `RegRare::read_buf` holds a raw pointer lent by the loop
// (contract rule 3); Epoll is never shared across threads (no Send/Sync).

impl Epoll {
    pub fn new(cfg: PoolConfig) -> Result<Epoll> {
        let pool = Rc::new(BufPool::new(cfg)?);
        let free_bufs = (0..cfg.count).rev().collect();
        Ok(Epoll {
            epfd: epoll::create()?,
            pool,
            free_bufs,
            regs: Vec::with_capacity(crate::event_loop::TABLE_RESERVE),
            ready: Vec::with_capacity(256),
            events: vec![epoll::EMPTY; EVENTS_PER_WAIT],
            dgram_dirty: Vec::with_capacity(64),
            stats: WaitStats::default(),
            always_ready: Vec::new(),
            send_spare: Vec::new(),
        })
    }

    fn reg(&mut self, fd: RawFd) -> &mut Reg {
        let i = fd as usize;
        if i >= self.regs.len() {
            // Grown in steps of 256 entries (the vector's capacity still
            // doubles): only entries up to the highest fd are written, so
            // their pages are the only ones resident.
            let new_len = (i + 1).next_multiple_of(256);
            self.regs.resize_with(new_len, Reg::new);
        }
        &mut self.regs[i]
    }

    /// Brings the epoll set in line with the fd's ops.
    fn update(&mut self, fd: RawFd) -> Result<()> {
        let epfd = self.epfd.as_raw_fd();
        let reg = self.reg(fd);
        let want = reg.wanted();
        if want == reg.registered {
            return Ok(());
        }
        let data = fd as u32 as u64 | ((reg.generation as u64) << 32);
        let res = if reg.registered == 0 {
            let extra = if reg.exclusive { epoll::EXCLUSIVE } else { 0 };
            epoll::ctl(epfd, epoll::ADD, fd, want | extra, data)
        } else if want == 0 || reg.exclusive {
            // EPOLLEXCLUSIVE registrations cannot be modified, only re-added.
            let r = epoll::ctl(epfd, epoll::DEL, fd, 0, 0);
            if r.is_ok() && want != 0 {
                epoll::ctl(epfd, epoll::ADD, fd, want | epoll::EXCLUSIVE, data)
            } else {
                r
            }
        } else {
            epoll::ctl(epfd, epoll::MOD, fd, want, data)
        };
        let reg = self.reg(fd);
        match res {
            Ok(()) => {
                reg.registered = want;
                Ok(())
            }
            Err(e) => {
                if want == 0 || e.errno() == Some(libc::ENOENT) {
                    reg.registered = 0;
                }
                Err(e)
            }
        }
    }

    fn arm_read(&mut self, fd: RawFd, op: ReadOp) -> Result<()> {
        let reg = self.reg(fd);
        if reg.read.is_some() {
            return Err(Error::from_errno(libc::EBUSY));
        }
        reg.read = Some(op);
        if let Err(e) = self.update(fd) {
            self.reg(fd).read = None;
            return Err(e);
        }
        Ok(())
    }

    fn arm_write(&mut self, fd: RawFd, op: WriteOp) -> Result<()> {
        let reg = self.reg(fd);
        if reg.write.is_some() {
            return Err(Error::from_errno(libc::EBUSY));
        }
        reg.write = Some(op);
        if let Err(e) = self.update(fd) {
            self.reg(fd).write = None;
            return Err(e);
        }
        Ok(())
    }

    fn push(out: &mut Vec<Completion>, token: Token, res: i32, buf: Option<u16>, more: bool) {
        out.push(Completion { token, res, buf, more });
    }

    /// Reports a one-shot op's syscall result; returns whether the op
    /// ended (`false`: `EAGAIN` or `EINTR`, wait for readiness again).
    fn one_shot(out: &mut Vec<Completion>, token: Token, r: Result<usize>) -> bool {
        match r {
            Err(e) if e.is_would_block() || e.errno() == Some(libc::EINTR) => false,
            Ok(n) => {
                Self::push(out, token, n as i32, None, false);
                true
            }
            Err(e) => {
                Self::push(out, token, -e.code(), None, false);
                true
            }
        }
    }

    /// A send op found without its copy (`Reg::send`), which `written_or_wait`
    /// always leaves with it: it ends with `EIO` rather than send nothing.
    fn lost_send(out: &mut Vec<Completion>, token: Token) -> bool {
        debug_assert!(false, "a waiting send without its iovec copy");
        Self::push(out, token, -libc::EIO, None, false);
        true
    }

    /// Handles readability for `fd`; returns whether the read op ended.
    fn on_readable(&mut self, fd: RawFd, op: ReadOp, out: &mut Vec<Completion>) -> bool {
        match op {
            ReadOp::Accept { token } => {
                for _ in 0..MAX_ACCEPTS_PER_WAKEUP {
                    match socket::accept(fd) {
                        Ok(new) => {
                            use std::os::fd::IntoRawFd;
                            Self::push(out, token, new.into_raw_fd(), None, true);
                        }
                        Err(e) if e.is_would_block() => return false,
                        // The peer gave up before we accepted: not the listener's problem.
                        Err(e) if matches!(e.errno(), Some(libc::ECONNABORTED | libc::EPROTO | libc::EINTR)) => {}
                        Err(e) => {
                            Self::push(out, token, -e.code(), None, false);
                            return true;
                        }
                    }
                }
                false
            }
            ReadOp::Recv { token } | ReadOp::RecvMsg { token } | ReadOp::ReadStream { token } => {
                let is_msg = matches!(op, ReadOp::RecvMsg { .. });
                let is_file = matches!(op, ReadOp::ReadStream { .. });
                for _ in 0..MAX_READS_PER_WAKEUP {
                    // With no free buffer, leave the data in the socket: the
                    // loop recycles buffers after this iteration's callbacks
                    // and level-triggered epoll reports the fd again.
                    let Some(id) = self.free_bufs.pop() else { return false };
                    // SAFETY: `id` came off the free list, so nobody else holds it.
                    let buf = unsafe { self.pool.slice_mut(id) };
                    let size = buf.len();
                    let res = if is_msg {
                        Self::recvmsg_record(fd, buf)
                    } else if is_file {
                        sys::read(fd, buf).map(|n| (n, n, false))
                    } else {
                        socket::recv(fd, buf).map(|n| (n, n, false))
                    };
                    match res {
                        Ok((0, _, _)) => {
                            self.free_bufs.push(id);
                            Self::push(out, token, 0, None, false);
                            return true;
                        }
                        Ok((used, payload, with_fds)) => {
                            Self::push(out, token, used as i32, Some(id), true);
                            let room = if is_msg { size - RECVMSG_HEADER_LEN - RECVMSG_CONTROL_LEN } else { size };
                            // A short read means the socket is drained, except
                            // when fds came along: the kernel ends a read at
                            // each message that carries fds, so more may wait
                            // (IPC hand-offs arrive one per message).
                            if payload < room && !with_fds {
                                return false;
                            }
                        }
                        Err(e) => {
                            self.free_bufs.push(id);
                            if e.is_would_block() || e.errno() == Some(libc::EINTR) {
                                return false;
                            }
                            Self::push(out, token, -e.code(), None, false);
                            return true;
                        }
                    }
                }
                false
            }
            ReadOp::RecvFrom { token } => self.recv_datagrams(fd, token, out),
            ReadOp::Read { token } => {
                let (ptr, len) = self.reg(fd).rare().read_buf;
                // SAFETY: the loop lent `ptr..ptr+len` until this op completes (rule 3).
                let buf = unsafe { std::slice::from_raw_parts_mut(ptr, len) };
                Self::one_shot(out, token, sys::read(fd, buf))
            }
            ReadOp::PollIn { token } => {
                Self::push(out, token, epoll::IN as i32, None, false);
                true
            }
        }
    }

    /// recvmsg into `buf` in the contract's record layout. Returns (bytes of
    /// the record used, payload bytes, whether control data came along);
    /// (0, 0, false) at end of stream.
    fn recvmsg_record(fd: RawFd, buf: &mut [u8]) -> Result<(usize, usize, bool)> {
        let (head, rest) = buf.split_at_mut(RECVMSG_HEADER_LEN);
        let (control, payload) = rest.split_at_mut(RECVMSG_CONTROL_LEN);
        let (n, flags, controllen) = socket::recvmsg(fd, payload, control)?;
        if n == 0 && controllen == 0 {
            return Ok((0, 0, false));
        }
        write_recvmsg_header(head, 0, controllen, n, flags);
        Ok((RECVMSG_HEADER_LEN + RECVMSG_CONTROL_LEN + n, n, controllen > 0))
    }

    /// Receives datagrams on `fd` with `recvmmsg`, one free pool buffer
    /// each, as records in the contract's datagram layout, up to
    /// [`MAX_READS_PER_WAKEUP`] of them; returns whether the op ended (an
    /// error, reported as its final completion).
    fn recv_datagrams(&mut self, fd: RawFd, token: Token, out: &mut Vec<Completion>) -> bool {
        const N: usize = MAX_READS_PER_WAKEUP;
        let offset = RecordLayout::DATAGRAM.payload_offset();
        let size = self.pool.size();
        let mut done = 0;
        while done < N {
            // With no free buffer, leave the datagrams in the socket (see Recv).
            let want = (N - done).min(self.free_bufs.len());
            if want == 0 {
                return false;
            }
            let mut ids = [0u16; N];
            let mut iovs = [libc::iovec { iov_base: std::ptr::null_mut(), iov_len: 0 }; N];
            // SAFETY: mmsghdr is plain data; all-zero is a valid value.
            let mut msgs: [libc::mmsghdr; N] = unsafe { std::mem::zeroed() };
            for i in 0..want {
                let id = self.free_bufs.pop().expect("counted above");
                ids[i] = id;
                let base = self.pool.ptr(id);
                // SAFETY: `RecvFrom` is refused at submit unless a buffer is
                // longer than `offset`, so both pointers stay inside buffer `id`.
                let (name, payload) = unsafe { (base.add(RECVMSG_HEADER_LEN), base.add(offset)) };
                iovs[i] = libc::iovec { iov_base: payload.cast(), iov_len: size - offset };
                let hdr = &mut msgs[i].msg_hdr;
                hdr.msg_name = name.cast();
                hdr.msg_namelen = RECVMSG_NAME_LEN as _;
                hdr.msg_iov = &mut iovs[i];
                hdr.msg_iovlen = 1;
            }
            // SAFETY: each header points into buffer `ids[i]`, which came off
            // the free list (nobody else holds it), and at `iovs[i]`; both
            // outlive the call.
            let res = unsafe { socket::recvmmsg(fd, &mut msgs[..want]) };
            let got = match res {
                Ok(n) => n,
                Err(e) => {
                    self.free_bufs.extend_from_slice(&ids[..want]);
                    if e.is_would_block() || e.errno() == Some(libc::EINTR) {
                        return false;
                    }
                    Self::push(out, token, -e.code(), None, false);
                    return true;
                }
            };
            for (m, &id) in msgs[..got].iter().zip(&ids) {
                // SAFETY: buffer `id` is still ours; the kernel is done with it.
                let buf = unsafe { self.pool.slice_mut(id) };
                let len = m.msg_len as usize;
                write_recvmsg_header(buf, m.msg_hdr.msg_namelen as usize, 0, len, m.msg_hdr.msg_flags);
                Self::push(out, token, (offset + len) as i32, Some(id), true);
            }
            self.free_bufs.extend_from_slice(&ids[got..want]);
            done += got;
            if got < want {
                return false;
            }
        }
        false
    }

    /// Sends `fd`'s queued datagrams in order, [`DGRAM_BATCH`] per
    /// `sendmmsg`, until the queue is empty or the socket's buffer is full
    /// (then the fd waits for `EPOLLOUT`). A datagram the socket refuses
    /// with an error completes with it; the ones behind it still go.
    fn flush_dgrams(&mut self, fd: RawFd) {
        let Some(reg) = self.regs.get_mut(fd as usize) else { return };
        let Some(dgrams) = reg.rare.as_deref_mut().map(|r| &mut r.dgrams) else {
            reg.dgram_blocked = false;
            return;
        };
        loop {
            if dgrams.is_empty() {
                reg.dgram_blocked = false;
                return;
            }
            let n = dgrams.len().min(DGRAM_BATCH);
            // SAFETY: mmsghdr is plain data; all-zero is a valid value.
            let mut msgs: [libc::mmsghdr; DGRAM_BATCH] = unsafe { std::mem::zeroed() };
            for (m, d) in msgs.iter_mut().zip(dgrams.iter_mut()) {
                m.msg_hdr.msg_iov = d.iov.as_mut_ptr();
                m.msg_hdr.msg_iovlen = d.iovcnt as _;
                if d.addr.len > 0 {
                    m.msg_hdr.msg_name = (&mut d.addr.storage as *mut libc::sockaddr_storage).cast();
                    m.msg_hdr.msg_namelen = d.addr.len;
                }
            }
            // SAFETY: names and iovec arrays live in `RegRare::dgrams`, which is
            // not touched during the call; the bytes the iovecs describe are
            // lent by the loop until each op's completion (rule 3).
            match unsafe { socket::sendmmsg(fd, &mut msgs[..n]) } {
                Ok(sent) => {
                    for m in &msgs[..sent] {
                        let d = dgrams.pop_front().expect("sent from the queue");
                        self.ready.push(Completion { token: d.token, res: m.msg_len as i32, buf: None, more: false });
                    }
                }
                Err(e) if e.is_would_block() || e.errno() == Some(libc::EINTR) => {
                    reg.dgram_blocked = true;
                    return;
                }
                Err(e) => {
                    let d = dgrams.pop_front().expect("queue not empty");
                    self.ready.push(Completion { token: d.token, res: -e.code(), buf: None, more: false });
                }
            }
        }
    }

    /// Ends every op of `fd` with `err` (the fd went away under us).
    fn fail_fd(&mut self, fd: RawFd, err: Error, out: &mut Vec<Completion>) {
        let reg = self.reg(fd);
        let ops =
            [reg.read.take().map(|o| o.token()), reg.write.take().map(|o| o.token()), reg.take_poll().map(|(t, _)| t)];
        reg.dgram_blocked = false;
        for token in ops.into_iter().flatten() {
            Self::push(out, token, -err.code(), None, false);
        }
        if let Some(dgrams) = self.reg(fd).rare.as_deref_mut().map(|r| &mut r.dgrams) {
            for d in dgrams.drain(..) {
                Self::push(out, d.token, -err.code(), None, false);
            }
        }
        self.release_send(fd);
    }

    /// Gives the fd's send copy back to `send_spare` once no send waits.
    fn release_send(&mut self, fd: RawFd) {
        let reg = self.reg(fd);
        if reg.write.is_none() {
            if let Some(b) = reg.send.take() {
                self.send_spare.push(b);
            }
        }
    }

    /// Handles writability for `fd`; returns whether the write op ended.
    fn on_writable(&mut self, fd: RawFd, op: WriteOp, out: &mut Vec<Completion>) -> bool {
        match op {
            WriteOp::Send { token } => {
                let Some(s) = self.reg(fd).send.as_deref() else { return Self::lost_send(out, token) };
                // SAFETY: the iovecs point at memory the loop keeps valid until
                // this op completes (rule 3).
                Self::one_shot(out, token, unsafe { socket::sendmsg(fd, &s.iov[..s.iovcnt], &s.fds[..s.nfds]) })
            }
            WriteOp::WriteStream { token } => {
                let Some(s) = self.reg(fd).send.as_deref() else { return Self::lost_send(out, token) };
                // SAFETY: the iovecs point at memory the loop keeps valid until
                // this op completes (rule 3).
                Self::one_shot(out, token, unsafe { sys::writev(fd, &s.iov[..s.iovcnt]) })
            }
            WriteOp::Connect { token } => {
                let res = match socket::take_error(fd) {
                    Ok(0) => 0,
                    Ok(err) => -err,
                    Err(e) => -e.code(),
                };
                Self::push(out, token, res, None, false);
                true
            }
        }
    }
}

impl Epoll {
    /// Sends now if the socket takes it, else keeps copies of the iovecs and
    /// fds and waits for `EPOLLOUT`.
    ///
    /// # Safety
    /// As [`Driver::submit`] for `Op::Send`.
    unsafe fn start_send(&mut self, fd: RawFd, token: Token, iov: &[libc::iovec], fds: &[RawFd]) -> Result<()> {
        if iov.len() > MAX_IOV || fds.len() > socket::MAX_FDS_PER_MSG {
            return Err(Error::EINVAL);
        }
        if self.reg(fd).write.is_some() {
            return Err(Error::from_errno(libc::EBUSY));
        }
        // SAFETY: the caller keeps the iovec memory valid for this call.
        let res = unsafe { socket::sendmsg(fd, iov, fds) };
        self.written_or_wait(fd, WriteOp::Send { token }, iov, fds, res)
    }

    /// Writes now if the fd takes it, else keeps a copy of the iovecs and
    /// waits for `EPOLLOUT` (a pipe or tty; a regular file never waits).
    ///
    /// # Safety
    /// As [`Driver::submit`] for `Op::WriteStream`.
    unsafe fn start_write_stream(&mut self, fd: RawFd, token: Token, iov: &[libc::iovec]) -> Result<()> {
        if iov.len() > MAX_IOV {
            return Err(Error::EINVAL);
        }
        if self.reg(fd).write.is_some() {
            return Err(Error::from_errno(libc::EBUSY));
        }
        // SAFETY: the caller keeps the iovec memory valid for this call.
        let res = unsafe { sys::writev(fd, iov) };
        self.written_or_wait(fd, WriteOp::WriteStream { token }, iov, &[], res)
    }

    /// The first try of a send or write: its result waits in `ready`, or,
    /// if the fd was full, copies of `iov` and `fds` wait for `EPOLLOUT`
    /// with `op`.
    fn written_or_wait(
        &mut self,
        fd: RawFd,
        op: WriteOp,
        iov: &[libc::iovec],
        fds: &[RawFd],
        res: Result<usize>,
    ) -> Result<()> {
        let token = op.token();
        match res {
            Ok(n) => {
                self.ready.push(Completion { token, res: n as i32, buf: None, more: false });
                Ok(())
            }
            Err(e) if e.is_would_block() => {
                let mut send = self.reg(fd).send.take().or_else(|| self.send_spare.pop()).unwrap_or_else(|| {
                    Box::new(PendingSend {
                        iov: [libc::iovec { iov_base: std::ptr::null_mut(), iov_len: 0 }; MAX_IOV],
                        iovcnt: 0,
                        fds: [-1; socket::MAX_FDS_PER_MSG],
                        nfds: 0,
                    })
                });
                send.iov[..iov.len()].copy_from_slice(iov);
                send.iovcnt = iov.len();
                send.fds[..fds.len()].copy_from_slice(fds);
                send.nfds = fds.len();
                self.reg(fd).send = Some(send);
                let armed = self.arm_write(fd, op);
                self.release_send(fd);
                armed
            }
            Err(e) => {
                self.ready.push(Completion { token, res: -e.code(), buf: None, more: false });
                Ok(())
            }
        }
    }

    /// Arms a `ReadStream`: in the epoll set, or, for an fd epoll refuses
    /// (`EPERM`: a regular file, `/dev/null`), in the always-ready list.
    fn start_read_stream(&mut self, fd: RawFd, token: Token) -> Result<()> {
        let refused = match self.arm_read(fd, ReadOp::ReadStream { token }) {
            Err(e) if e.errno() == Some(libc::EPERM) => true,
            Err(e) => return Err(e),
            // Known to be refused already: `arm_read` left epoll alone.
            Ok(()) => self.reg(fd).always_ready,
        };
        if refused {
            let reg = self.reg(fd);
            reg.read = Some(ReadOp::ReadStream { token });
            reg.always_ready = true;
            if !self.always_ready.contains(&fd) {
                self.always_ready.push(fd);
            }
        }
        Ok(())
    }

    /// Runs the read op of every always-ready fd (see the module docs), as
    /// room in `out` allows; drops fds whose op ended or was cancelled.
    fn poll_always_ready(&mut self, out: &mut Vec<Completion>) {
        let per_fd = MAX_READS_PER_WAKEUP + 2;
        let mut i = 0;
        while i < self.always_ready.len() {
            let fd = self.always_ready[i];
            let reg = self.reg(fd);
            let Some(op) = reg.read.filter(|_| reg.always_ready) else {
                self.always_ready.swap_remove(i);
                continue;
            };
            if out.capacity() - out.len() < per_fd {
                return;
            }
            if self.on_readable(fd, op, out) {
                self.reg(fd).read = None;
                self.always_ready.swap_remove(i);
                continue;
            }
            i += 1;
        }
    }

    /// Whether an always-ready fd has a read op to run (`poll` must not wait).
    fn has_always_ready(&self) -> bool {
        self.always_ready.iter().any(|&fd| self.regs.get(fd as usize).is_some_and(|r| r.read.is_some()))
    }

    fn start_connect(&mut self, fd: RawFd, token: Token, addr: &socket::SockAddr) -> Result<()> {
        if self.reg(fd).write.is_some() {
            return Err(Error::from_errno(libc::EBUSY));
        }
        match socket::connect(fd, addr) {
            Ok(()) => {
                self.ready.push(Completion { token, res: 0, buf: None, more: false });
                Ok(())
            }
            Err(e) if e.errno() == Some(libc::EINPROGRESS) => self.arm_write(fd, WriteOp::Connect { token }),
            Err(e) => {
                self.ready.push(Completion { token, res: -e.code(), buf: None, more: false });
                Ok(())
            }
        }
    }

    /// Queues a datagram behind `fd`'s others; it goes at the next `poll`
    /// (or, while the socket is full, when it turns writable).
    fn queue_dgram(&mut self, fd: RawFd, token: Token, iov: &[libc::iovec], addr: Option<&SockAddr>) -> Result<()> {
        if iov.len() > MAX_IOV {
            return Err(Error::EINVAL);
        }
        let reg = self.reg(fd);
        let mut d = DgramSend {
            token,
            iov: [libc::iovec { iov_base: std::ptr::null_mut(), iov_len: 0 }; MAX_IOV],
            iovcnt: iov.len(),
            addr: SockAddr::empty(),
        };
        d.iov[..iov.len()].copy_from_slice(iov);
        match addr {
            Some(a) => d.addr = *a,
            None => d.addr.len = 0,
        }
        let dgrams = &mut reg.rare.get_or_insert_with(Box::default).dgrams;
        let first = dgrams.is_empty() && !reg.dgram_blocked;
        dgrams.push_back(d);
        if first {
            self.dgram_dirty.push(fd);
        }
        Ok(())
    }

    fn start_poll(&mut self, fd: RawFd, token: Token, events: u32) -> Result<()> {
        let reg = self.reg(fd);
        if reg.poll().is_some() {
            return Err(Error::from_errno(libc::EBUSY));
        }
        // poll(2) and epoll share the bit values of these events.
        let mask = events & (epoll::IN | epoll::OUT | epoll::RDHUP | epoll::PRI);
        reg.rare().poll = Some((token, mask));
        if let Err(e) = self.update(fd) {
            self.reg(fd).take_poll();
            return Err(e);
        }
        Ok(())
    }
}

impl Driver for Epoll {
    fn kind(&self) -> Backend {
        Backend::Epoll
    }

    unsafe fn submit(&mut self, token: Token, op: Op<'_>) -> Result<()> {
        debug_assert_eq!(token.kind(), Some(op.kind()), "{token:?} for {op:?}");
        match op {
            Op::Accept { fd, exclusive } => {
                let reg = self.reg(fd);
                if reg.registered == 0 {
                    reg.exclusive = exclusive;
                }
                self.arm_read(fd, ReadOp::Accept { token })
            }
            Op::Recv { fd } => self.arm_read(fd, ReadOp::Recv { token }),
            Op::RecvMsg { fd } => {
                if self.pool.size() <= RECVMSG_HEADER_LEN + RECVMSG_CONTROL_LEN {
                    return Err(Error::EINVAL);
                }
                self.arm_read(fd, ReadOp::RecvMsg { token })
            }
            // SAFETY: the caller's rule-3 guarantee for this send, forwarded.
            Op::Send { fd, iov, fds } => unsafe { self.start_send(fd, token, iov, fds) },
            Op::Connect { fd, addr } => self.start_connect(fd, token, addr),
            // The pointer is kept in the read op and used when the fd turns
            // readable; the caller lends the memory until the completion.
            Op::Read { fd, ptr, len } => {
                self.reg(fd).rare().read_buf = (ptr, len);
                self.arm_read(fd, ReadOp::Read { token })
            }
            Op::PollIn { fd } => self.arm_read(fd, ReadOp::PollIn { token }),
            Op::Poll { fd, events } => self.start_poll(fd, token, events),
            // Regular files are always "ready" to epoll: their I/O blocks in
            // the syscall, so the loop runs it on the work pool instead.
            Op::FileRead { .. }
            | Op::FileWrite { .. }
            | Op::Fsync { .. }
            | Op::Statx { .. }
            | Op::OpenAt { .. }
            | Op::FileReadv { .. }
            | Op::FileWritev { .. } => Err(Error::ENOSYS),
            Op::RecvFrom { fd } => {
                if self.pool.size() <= RecordLayout::DATAGRAM.payload_offset() {
                    return Err(Error::EINVAL);
                }
                self.arm_read(fd, ReadOp::RecvFrom { token })
            }
            // The iovecs are copied; the bytes stay lent until the completion
            // (the caller's rule-3 guarantee).
            Op::SendTo { fd, iov, addr } => self.queue_dgram(fd, token, iov, addr),
            Op::ReadStream { fd } => self.start_read_stream(fd, token),
            // SAFETY: the caller's rule-3 guarantee for this write, forwarded.
            Op::WriteStream { fd, iov } => unsafe { self.start_write_stream(fd, token, iov) },
        }
    }

    fn supports(&self, kind: super::OpKind) -> bool {
        !kind.is_file_op()
    }

    fn cancel(&mut self, fd: RawFd, token: Token) {
        let reg = self.reg(fd);
        let mut hit = false;
        if reg.read.is_some_and(|op| op.token() == token) {
            reg.read = None;
            hit = true;
        }
        if reg.write.is_some_and(|op| op.token() == token) {
            reg.write = None;
            hit = true;
        }
        if reg.poll().is_some_and(|(t, _)| t == token) {
            reg.take_poll();
            hit = true;
        }
        if let Some(dgrams) = reg.rare.as_deref_mut().map(|r| &mut r.dgrams) {
            if let Some(i) = dgrams.iter().position(|d| d.token == token) {
                dgrams.remove(i);
                if dgrams.is_empty() {
                    reg.dgram_blocked = false;
                }
                hit = true;
            }
        }
        if hit {
            self.release_send(fd);
            self.ready.push(Completion { token, res: -libc::ECANCELED, buf: None, more: false });
            // Removing interest cannot fail in a way that matters: the ops are gone.
            let _ = self.update(fd);
        }
    }

    fn deregister(&mut self, fd: RawFd) {
        let epfd = self.epfd.as_raw_fd();
        let reg = self.reg(fd);
        debug_assert!(reg.read.is_none() && reg.write.is_none(), "deregister with ops in flight");
        debug_assert!(reg.rare.as_ref().is_none_or(|r| r.dgrams.is_empty()), "deregister with datagrams in flight");
        reg.read = None;
        reg.write = None;
        if let Some(r) = reg.rare.as_deref_mut() {
            r.poll = None;
            r.dgrams.clear();
        }
        self.release_send(fd);
        let reg = self.reg(fd);
        reg.dgram_blocked = false;
        reg.always_ready = false;
        reg.exclusive = false;
        if let Some(i) = self.always_ready.iter().position(|&f| f == fd) {
            self.always_ready.swap_remove(i);
        }
        let reg = self.reg(fd);
        reg.generation = reg.generation.wrapping_add(1);
        if reg.registered != 0 {
            reg.registered = 0;
            let _ = epoll::ctl(epfd, epoll::DEL, fd, 0, 0);
        }
    }

    fn poll(&mut self, timeout_ms: i64, out: &mut Vec<Completion>) -> Result<()> {
        // Datagrams queued since the last poll go first, batched per fd.
        if !self.dgram_dirty.is_empty() {
            let mut dirty = std::mem::take(&mut self.dgram_dirty);
            for &fd in &dirty {
                self.flush_dgrams(fd);
                if let Err(e) = self.update(fd) {
                    let mut failed = std::mem::take(&mut self.ready);
                    self.fail_fd(fd, e, &mut failed);
                    self.ready = failed;
                }
            }
            dirty.clear();
            self.dgram_dirty = dirty;
        }
        let room = out.capacity() - out.len();
        let take = self.ready.len().min(room);
        out.extend(self.ready.drain(..take));
        self.stats.events_waiting += take as u64;
        let timeout = if !self.ready.is_empty() || take > 0 || self.has_always_ready() {
            0
        } else if timeout_ms < 0 {
            -1
        } else {
            timeout_ms.min(i32::MAX as i64) as i32
        };
        // Leave room for one fd's worth of completions per event handled.
        let per_fd = MAX_READS_PER_WAKEUP.max(MAX_ACCEPTS_PER_WAKEUP) + 2;
        let room = out.capacity() - out.len();
        if room < per_fd {
            return Ok(());
        }
        let max_events = (room / per_fd).clamp(1, EVENTS_PER_WAIT);
        // Only a wait that may block is idle time (libuv measures the same
        // span: around `epoll_wait`).
        let waited = (timeout != 0).then(std::time::Instant::now);
        let res = epoll::wait(self.epfd.as_raw_fd(), &mut self.events[..max_events], timeout);
        if let Some(since) = waited {
            self.stats.add_idle(since);
        }
        let n = res?;
        let before_events = out.len();
        for i in 0..n {
            let ev = self.events[i];
            let fd = ev.u64 as u32 as RawFd;
            let generation = (ev.u64 >> 32) as u32;
            let reg = self.reg(fd);
            if reg.generation != generation {
                continue;
            }
            let flags = ev.events;
            if flags & (epoll::IN | epoll::ERR | epoll::HUP) != 0 {
                if let Some(op) = self.reg(fd).read {
                    if self.on_readable(fd, op, out) {
                        self.reg(fd).read = None;
                    }
                }
            }
            if flags & (epoll::OUT | epoll::ERR | epoll::HUP) != 0 {
                if let Some(op) = self.reg(fd).write {
                    if self.on_writable(fd, op, out) {
                        self.reg(fd).write = None;
                        self.release_send(fd);
                    }
                }
                if self.reg(fd).dgram_blocked {
                    self.flush_dgrams(fd);
                }
            }
            if let Some((token, mask)) = self.reg(fd).poll() {
                let got = flags & (mask | epoll::ERR | epoll::HUP);
                if got != 0 {
                    self.reg(fd).take_poll();
                    Self::push(out, token, got as i32, None, false);
                }
            }
            if let Err(e) = self.update(fd) {
                // The fd went away under us (closed elsewhere): end its ops.
                self.fail_fd(fd, e, out);
            }
        }
        if !self.always_ready.is_empty() {
            self.poll_always_ready(out);
        }
        // Datagrams sent on `EPOLLOUT` above complete in this poll too.
        let room = out.capacity() - out.len();
        let take = self.ready.len().min(room);
        out.extend(self.ready.drain(..take));
        if timeout == 0 {
            // A wait that could not block found only what was ready.
            self.stats.events_waiting += (out.len() - before_events) as u64;
        }
        Ok(())
    }

    fn wait_stats(&self) -> WaitStats {
        self.stats
    }

    fn pool(&self) -> &Rc<BufPool> {
        &self.pool
    }

    fn recycle(&mut self, id: u16) {
        debug_assert!(id < self.pool.count());
        self.free_bufs.push(id);
    }
}

#[cfg(test)]
mod tests {
    //! The epoll driver, driven directly (no loop), for what only it does:
    //! one op per side of an fd, ops of one kind on different fds.

    use super::super::{Completion, Driver, Op, OpKind, PoolConfig, Token};
    use super::Epoll;
    use crate::sys::{self, socket};
    use std::os::fd::AsRawFd;
    use std::time::{Duration, Instant};

    fn driver() -> Epoll {
        Epoll::new(PoolConfig { count: 8, size: 4096 }).expect("epoll")
    }

    /// Every fd number up to the highest in use has a `Reg`: a stream's is
    /// 64 bytes (polls, datagrams and file reads are out of line).
    #[test]
    fn reg_is_64_bytes() {
        assert!(std::mem::size_of::<super::Reg>() <= 64, "{}", std::mem::size_of::<super::Reg>());
    }

    /// Submits an op that lends no memory, for which rule 3 asks nothing.
    fn submit(e: &mut Epoll, t: Token, op: Op<'_>) -> crate::error::Result<()> {
        assert!(!matches!(op, Op::Send { .. } | Op::Read { .. }), "{op:?} lends memory");
        // SAFETY: checked above: the op lends no memory.
        unsafe { e.submit(t, op) }
    }

    /// Polls until `n` completions arrived or five seconds pass.
    fn completions(e: &mut Epoll, n: usize) -> Vec<Completion> {
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut all = Vec::new();
        let mut out = Vec::with_capacity(64);
        while all.len() < n {
            assert!(Instant::now() < deadline, "timed out; completions so far: {all:?}");
            out.clear();
            e.poll(100, &mut out).expect("poll");
            all.extend_from_slice(&out);
        }
        all
    }

    #[test]
    fn two_reads_of_one_kind_on_different_fds_complete_with_their_own_tokens() {
        let mut e = driver();
        let (ev1, ev2) = (sys::eventfd().unwrap(), sys::eventfd().unwrap());
        let (mut v1, mut v2) = (Box::new(0u64), Box::new(0u64));
        // Same kind, as one handle's two reads would be: only the op slot differs.
        let (t1, t2) = (Token::new(1, 9, OpKind::Read), Token::new(2, 9, OpKind::Read));
        // SAFETY: both boxes outlive the completions, awaited below.
        unsafe {
            e.submit(t1, Op::Read { fd: ev1.as_raw_fd(), ptr: (&mut *v1 as *mut u64).cast(), len: 8 }).unwrap();
            e.submit(t2, Op::Read { fd: ev2.as_raw_fd(), ptr: (&mut *v2 as *mut u64).cast(), len: 8 }).unwrap();
        }
        sys::eventfd_signal(ev2.as_raw_fd());
        sys::eventfd_signal(ev1.as_raw_fd());
        sys::eventfd_signal(ev1.as_raw_fd());
        let mut cs = completions(&mut e, 2);
        cs.sort_by_key(|c| c.token.index());
        assert_eq!(cs.iter().map(|c| (c.token, c.res, c.more)).collect::<Vec<_>>(), [(t1, 8, false), (t2, 8, false)]);
        assert_eq!((*v1, *v2), (2, 1));
    }

    #[test]
    fn a_second_op_on_a_taken_side_of_one_fd_is_ebusy() {
        let mut e = driver();
        let (a, _b) = socket::socketpair(true).unwrap();
        let fd = a.as_raw_fd();
        submit(&mut e, Token::new(1, 1, OpKind::Recv), Op::Recv { fd }).unwrap();
        let busy = |r: crate::error::Result<()>| r.unwrap_err().errno() == Some(libc::EBUSY);
        assert!(busy(submit(&mut e, Token::new(2, 1, OpKind::Recv), Op::Recv { fd })), "read side taken");
        assert!(busy(submit(&mut e, Token::new(3, 1, OpKind::PollIn), Op::PollIn { fd })), "read side taken");
        // The poll watcher's side is separate.
        let events = libc::POLLOUT as u32;
        submit(&mut e, Token::new(4, 1, OpKind::Poll), Op::Poll { fd, events }).unwrap();
        assert!(busy(submit(&mut e, Token::new(5, 1, OpKind::Poll), Op::Poll { fd, events })), "poll side taken");
        let cs = completions(&mut e, 1);
        assert_eq!((cs[0].token, cs[0].more), (Token::new(4, 1, OpKind::Poll), false), "{cs:?}");
        assert_ne!(cs[0].res & libc::POLLOUT as i32, 0);
        // Refused ops report nothing; the recv is still there to cancel.
        e.cancel(fd, Token::new(1, 1, OpKind::Recv));
        let cs = completions(&mut e, 1);
        assert_eq!(
            cs.iter().map(|c| (c.token, c.res)).collect::<Vec<_>>(),
            [(Token::new(1, 1, OpKind::Recv), -libc::ECANCELED)]
        );
    }

    #[test]
    fn cancel_ends_only_its_token_and_frees_the_side_at_once() {
        let mut e = driver();
        let (r, w) = sys::pipe().unwrap();
        let fd = r.as_raw_fd();
        let (old, new) = (Token::new(1, 1, OpKind::Poll), Token::new(1, 2, OpKind::Poll));
        submit(&mut e, old, Op::Poll { fd, events: libc::POLLIN as u32 }).unwrap();
        // A token that is not the op in flight changes nothing.
        e.cancel(fd, new);
        e.cancel(fd, old);
        // A replacement goes in right after the cancel, as a poll watcher
        // changing its events does.
        submit(&mut e, new, Op::Poll { fd, events: libc::POLLIN as u32 }).unwrap();
        sys::write(w.as_raw_fd(), b"!").unwrap();
        let cs = completions(&mut e, 2);
        assert_eq!(cs[0].token, old);
        assert_eq!((cs[0].res, cs[0].more), (-libc::ECANCELED, false));
        assert_eq!(cs[1].token, new);
        assert_ne!(cs[1].res & libc::POLLIN as i32, 0);
        let mut out = Vec::with_capacity(8);
        e.poll(20, &mut out).unwrap();
        assert!(out.is_empty(), "one final completion per op: {out:?}");
    }

    #[test]
    fn an_immediate_send_completes_at_the_next_poll_not_in_submit() {
        let mut e = driver();
        let (a, b) = socket::socketpair(true).unwrap();
        let msg = *b"now";
        let iov = [libc::iovec { iov_base: msg.as_ptr() as *mut _, iov_len: msg.len() }];
        let t = Token::new(3, 4, OpKind::Send);
        // SAFETY: `msg` outlives the completion (awaited below); no fds.
        unsafe { e.submit(t, Op::Send { fd: a.as_raw_fd(), iov: &iov, fds: &[] }).unwrap() };
        let mut buf = [0u8; 8];
        assert_eq!(sys::read(b.as_raw_fd(), &mut buf).unwrap(), 3, "sent at once");
        let cs = completions(&mut e, 1);
        assert_eq!((cs[0].token, cs[0].res, cs[0].more), (t, 3, false));
    }

    #[test]
    fn datagrams_blocked_by_a_full_socket_go_out_in_order_when_it_drains() {
        let mut e = driver();
        let (a, b) = std::os::unix::net::UnixDatagram::pair().unwrap();
        a.set_nonblocking(true).unwrap();
        b.set_nonblocking(true).unwrap();
        // More than the peer's queue holds, so the fd waits for EPOLLOUT.
        const N: usize = 2000;
        let payloads: Vec<[u8; 8]> = (0..N as u64).map(u64::to_le_bytes).collect();
        let tokens: Vec<Token> = (0..N).map(|i| Token::new(1 + i, 1, OpKind::SendTo)).collect();
        for (p, &t) in payloads.iter().zip(&tokens) {
            let iov = [libc::iovec { iov_base: p.as_ptr() as *mut _, iov_len: p.len() }];
            // SAFETY: `payloads` outlives every completion (all awaited below).
            unsafe { e.submit(t, Op::SendTo { fd: a.as_raw_fd(), iov: &iov, addr: None }).unwrap() };
        }
        let (mut done, mut got, mut blocked) = (Vec::new(), Vec::new(), false);
        let mut out = Vec::with_capacity(256);
        let deadline = Instant::now() + Duration::from_secs(10);
        while done.len() < N || got.len() < N {
            assert!(Instant::now() < deadline, "timed out: {} done, {} received", done.len(), got.len());
            out.clear();
            e.poll(10, &mut out).unwrap();
            done.extend(out.iter().map(|c| {
                assert_eq!((c.res, c.more), (8, false), "{c:?}");
                c.token
            }));
            blocked |= done.len() < N;
            let mut buf = [0u8; 8];
            while let Ok(8) = b.recv(&mut buf) {
                got.push(u64::from_le_bytes(buf));
            }
        }
        assert!(blocked, "the socket filled up");
        assert_eq!(done, tokens, "completions in submission order");
        assert_eq!(got, (0..N as u64).collect::<Vec<_>>(), "datagrams in submission order");
    }

    #[test]
    fn a_cancelled_datagram_stays_home_and_the_others_go() {
        let mut e = driver();
        let (a, b) = std::os::unix::net::UnixDatagram::pair().unwrap();
        b.set_nonblocking(true).unwrap();
        let msgs: [&[u8]; 3] = [b"one", b"two", b"three"];
        let tokens: Vec<Token> = (0..3).map(|i| Token::new(10 + i, 1, OpKind::SendTo)).collect();
        for (m, &t) in msgs.iter().zip(&tokens) {
            let iov = [libc::iovec { iov_base: m.as_ptr() as *mut _, iov_len: m.len() }];
            // SAFETY: the bytes are static.
            unsafe { e.submit(t, Op::SendTo { fd: a.as_raw_fd(), iov: &iov, addr: None }).unwrap() };
        }
        e.cancel(a.as_raw_fd(), tokens[1]);
        let mut cs = completions(&mut e, 3);
        cs.sort_by_key(|c| c.token.index());
        assert_eq!(cs.iter().map(|c| c.res).collect::<Vec<_>>(), [3, -libc::ECANCELED, 5]);
        let mut buf = [0u8; 8];
        let n = b.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"one");
        let n = b.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"three");
    }
}
