//! The io_uring backend: the loop's operations become SQEs, CQEs become
//! [`Completion`]s (see the contract in `super`).
//!
//! - Accept, recv and recvmsg are multishot. Receives take buffers from one
//!   provided-buffer ring (group [`BGID`]) built over the [`BufPool`]; recv
//!   and recvmsg share it, so `recycle` has one place to return a buffer to.
//! - When the kernel ends a multishot op without an error (it does so, e.g.,
//!   when the CQ overflows) the op is re-armed at the next `poll` and the
//!   completion is reported with `more == true`. When it ends with `ENOBUFS`
//!   (every buffer lent to the loop) nothing is reported: the op waits until
//!   the loop recycles a buffer, then is re-armed, so the stream continues in
//!   order and the loop never sees the starvation.
//! - Send is `SEND` for one iovec without fds, else `SENDMSG` with its
//!   header, iovec copy and `SCM_RIGHTS` message in a reusable slot; connect
//!   keeps its address in a slot. Nothing allocates per op after warm-up.
//! - File operations (read and write at an offset, fsync, statx, openat)
//!   are plain one-shot SQEs pointing at memory the loop lends (rule 3);
//!   the setup probe records which opcodes the kernel has, and
//!   [`Driver::supports`] tells the loop, which runs the others on its work
//!   pool.
//! - Non-socket streams (pipes, ttys, files): `ReadStream` is a one-shot
//!   `READ` into a provided buffer, re-armed after every chunk like a
//!   multishot op the kernel ended; `WriteStream` is a `WRITEV` from a
//!   slot. A file that cannot wait inside the kernel (a tty opened
//!   non-blocking) answers `EAGAIN`: a `POLL_ADD` under the op's token then
//!   waits for it and the op is retried.
//! - Datagrams: `RecvFrom` is a multishot `RECVMSG` like recvmsg, from a
//!   second template that reserves a name space for the sender's address
//!   and no control space; `SendTo` is a `SENDMSG` whose header, iovec copy
//!   and destination live in a slot. Any number of each may be in flight
//!   per socket, each its own request.
//! - Every loop SQE carries the loop's token as `user_data`; backend-internal
//!   SQEs (cancels) carry [`INTERNAL`] (kind byte 0), whose CQEs are dropped.
//!   Each op is its own request, so any number of ops (of one kind or not)
//!   may be in flight on one fd; a cancel names one token and ends that op.
//! - Accept waits exclusively (one ring woken per connection). Cancelling
//!   an accept first runs wake-ups it already claimed, then cancels and
//!   tears the op down in one enter, so a listener shared with other
//!   processes never strands a connection in its queue.
//! - `poll` submits and waits in one `io_uring_enter` (`EXT_ARG` timeout),
//!   always with `GETEVENTS` so deferred task work runs and overflowed CQEs
//!   are flushed; CQEs beyond the caller's room stay in the CQ.

mod bufring;
mod fixed;
mod ops;
mod setup;
#[cfg(test)]
pub(crate) mod tests;

use super::{
    Backend, BufPool, Completion, Driver, Op, OpKind, PoolConfig, RecordLayout, Token, Unavailable, WaitStats, MAX_IOV,
    RECVMSG_CONTROL_LEN, RECVMSG_HEADER_LEN, RECVMSG_NAME_LEN,
};
use crate::error::{Error, Result};
use crate::sys::socket::{self, SockAddr};
use bufring::BufRing;
use fixed::FixedFiles;
use io_uring::types::{self, CancelBuilder, Fd, SubmitArgs, Timespec};
use io_uring::{cqueue, opcode, squeue, EnterFlags, IoUring};
use ops::{MultiKind, MultiOp, MultiState, OpTable, SlotPool, Tracked};
pub(crate) use setup::Features;
use std::collections::VecDeque;
use std::mem::ManuallyDrop;
use std::os::fd::{AsRawFd, RawFd};
use std::rc::Rc;

/// Buffer group of the provided-buffer ring (recv and recvmsg).
const BGID: u16 = 0;
/// `user_data` of backend-internal SQEs (cancels): kind byte 0, never a token.
const INTERNAL: u64 = 0;
/// CQEs copied out of the ring per batch.
const REAP_BATCH: usize = 256;

/// Builds an opcode on `fd`'s fixed slot if it has one, else on the plain
/// fd (`$t` is the target in `$e`).
macro_rules! on_target {
    ($slot:expr, $fd:expr, |$t:ident| $e:expr) => {
        match $slot {
            Some(i) => {
                let $t = types::Fixed(i);
                $e
            }
            None => {
                let $t = Fd($fd);
                $e
            }
        }
    };
}

pub(crate) struct Uring {
    /// Dropped by hand, first (see `Drop`): the kernel may use the buffer
    /// ring, the pool and the slots until the ring is gone. Boxed to keep
    /// `Uring` (and so the loop's driver enum) small.
    ring: ManuallyDrop<Box<IoUring>>,
    bufs: BufRing,
    pool: Rc<BufPool>,
    /// The recvmsg multishot template (`msg_namelen = 0`,
    /// `msg_controllen = RECVMSG_CONTROL_LEN`), read by the kernel when each
    /// recvmsg SQE is prepared; boxed so its address is stable.
    recvmsg_hdr: Box<libc::msghdr>,
    /// The datagram (`RecvFrom`) template: `msg_namelen =
    /// RECVMSG_NAME_LEN`, no control space ([`RecordLayout::DATAGRAM`]).
    recvfrom_hdr: Box<libc::msghdr>,
    ops: OpTable,
    slots: SlotPool,
    /// Tokens of persistent ops waiting to be (re)submitted ([`MultiState`]).
    waiting: Vec<u64>,
    /// SQEs that found the SQ full even after a submit; pushed first at the
    /// next opportunity, in order.
    backlog: VecDeque<squeue::Entry>,
    /// Completions made by the backend itself (cancel of a waiting op, the
    /// final completion after a cancelled op's last data), reported first.
    deferred: VecDeque<Completion>,
    /// CQEs copied out of the CQ, awaiting translation.
    batch: Vec<(u64, i32, u32)>,
    /// Loop SQEs pushed whose last CQE (no `F_MORE`) has not been seen.
    inflight: usize,
    features: Box<str>,
    /// The process that set the ring up. The ring's memory is `dontfork`, so
    /// a forked child must not touch it (not even in `Drop`).
    pid: u32,
    /// The file operations the probe found ([`setup::FileOps`]).
    file_ops: setup::FileOps,
    /// Time blocked in `io_uring_enter`, completions found ready.
    stats: WaitStats,
    /// The registered file table (feature `fixed_files`).
    fixed: Option<FixedFiles>,
    /// The ring's registered index (feature `ring_fd`); `None`: enter by fd.
    ring_index: Option<u32>,
    /// `SEND_ZC` for large sends (feature `send_zc`, where probed).
    send_zc: bool,
    /// `SEND_ZC` sends whose notification has not come.
    zc_inflight: usize,
}

impl Uring {
    pub fn new(cfg: PoolConfig) -> std::result::Result<Uring, Unavailable> {
        Uring::with_features(cfg, Features::from_env())
    }

    /// As [`Uring::new`], with the optional features `want` allows (each
    /// only if the kernel has it).
    pub(crate) fn with_features(cfg: PoolConfig, want: Features) -> std::result::Result<Uring, Unavailable> {
        Uring::build(cfg, want, fixed::MAX_SLOTS)
    }

    /// As [`Uring::with_features`], with a registered-file table of at most
    /// `fixed_slots` slots.
    fn build(cfg: PoolConfig, want: Features, fixed_slots: u32) -> std::result::Result<Uring, Unavailable> {
        let (ring, flags) = setup::build_ring()?;
        let file_ops = setup::probe(&ring)?;
        let pool = Rc::new(BufPool::new(cfg).map_err(|error| Unavailable {
            error,
            reason: format!("receive buffer pool: {error} ({} x {} bytes)", cfg.count, cfg.size),
        })?);
        let mut bufs = BufRing::new(cfg.count).map_err(|error| Unavailable {
            error,
            reason: format!("provided-buffer ring of {} entries: {error}", cfg.count),
        })?;
        for id in 0..cfg.count {
            bufs.add(&pool, id);
        }
        bufs.publish();
        // SAFETY: the ring memory (`bufs`) and every buffer it names (`pool`)
        // live in the `Uring` we return, whose `Drop` destroys the io_uring
        // instance before either is freed. On the error path below the ring
        // is dropped first too.
        if let Err(e) = unsafe { ring.submitter().register_buf_ring_with_flags(bufs.addr(), cfg.count, BGID, 0) } {
            drop(ring);
            return Err(setup::bufring_reason(&e));
        }
        // SAFETY: msghdr is plain data; all-zero is a valid value.
        let mut hdr: Box<libc::msghdr> = Box::new(unsafe { std::mem::zeroed() });
        hdr.msg_namelen = 0;
        hdr.msg_controllen = RECVMSG_CONTROL_LEN as _;
        // SAFETY: as above.
        let mut dgram_hdr: Box<libc::msghdr> = Box::new(unsafe { std::mem::zeroed() });
        dgram_hdr.msg_namelen = RECVMSG_NAME_LEN as _;
        dgram_hdr.msg_controllen = 0;
        let fixed = if want.fixed_files { FixedFiles::new(&ring, fixed_slots) } else { None };
        let send_zc = want.send_zc && setup::has_send_zc(&ring);
        let ring_index = if want.ring_fd { fixed::register_ring_fd(&ring) } else { None };
        let have = Features { ring_fd: ring_index.is_some(), fixed_files: fixed.is_some(), send_zc };
        let features = setup::describe(&ring, flags, have, cfg.count, cfg.size as usize);
        Ok(Uring {
            ring: ManuallyDrop::new(Box::new(ring)),
            bufs,
            pool,
            recvmsg_hdr: hdr,
            recvfrom_hdr: dgram_hdr,
            ops: OpTable::with_capacity(crate::event_loop::TABLE_RESERVE),
            slots: SlotPool::with_capacity(64),
            waiting: Vec::with_capacity(256),
            backlog: VecDeque::with_capacity(256),
            deferred: VecDeque::with_capacity(256),
            batch: Vec::with_capacity(REAP_BATCH),
            inflight: 0,
            features: features.into_boxed_str(),
            pid: std::process::id(),
            file_ops,
            stats: WaitStats::default(),
            fixed,
            ring_index,
            send_zc,
            zc_inflight: 0,
        })
    }

    /// How the ring was set up ("io_uring sq=1024 cq=4096 single_issuer+...").
    #[allow(dead_code)]
    pub(crate) fn features(&self) -> &str {
        &self.features
    }

    /// Queues an SQE: into the SQ, else (SQ full) after submitting what is
    /// there, else into the backlog, so no submission is ever lost.
    ///
    /// # Safety
    /// Every pointer in `entry` must stay valid until the op's last CQE:
    /// the caller either owns that memory for the ring's lifetime (pool,
    /// buffer ring, recvmsg template), holds it in a slot freed only at the
    /// final CQE, or has the loop's promise (contract rule 3).
    unsafe fn push(&mut self, entry: squeue::Entry) {
        if self.backlog.is_empty() {
            // SAFETY: forwarded from this function's contract.
            if unsafe { self.ring.submission().push(&entry) }.is_ok() {
                return;
            }
            // The SQ is full: hand it to the kernel and try once more. Errors
            // (EBUSY under CQ back-pressure) leave the SQEs queued; poll retries.
            let _ = self.ring.submit();
            // SAFETY: as above.
            if unsafe { self.ring.submission().push(&entry) }.is_ok() {
                return;
            }
        }
        self.backlog.push_back(entry);
    }

    /// Queues an SQE for a loop op (counted in `inflight`).
    ///
    /// # Safety
    /// As for [`Uring::push`].
    unsafe fn push_op(&mut self, entry: squeue::Entry) {
        self.inflight += 1;
        // SAFETY: forwarded from this function's contract.
        unsafe { self.push(entry) }
    }

    /// Moves backlogged SQEs into the SQ while it has room.
    fn flush_backlog(&mut self) {
        while let Some(entry) = self.backlog.front() {
            // SAFETY: backlogged entries were checked by `push`'s callers.
            if unsafe { self.ring.submission().push(entry) }.is_err() {
                return;
            }
            self.backlog.pop_front();
        }
    }

    /// The SQE (re)arming persistent op `op` tagged `user_data`.
    fn multishot_entry(&self, op: &MultiOp, user_data: u64) -> squeue::Entry {
        let fd = Fd(op.fd);
        match op.kind {
            MultiKind::Accept => opcode::AcceptMulti::new(fd).flags(libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK).build(),
            MultiKind::Recv => on_target!(self.fixed_slot(op.fd), op.fd, |t| opcode::RecvMulti::new(t, BGID).build()),
            MultiKind::RecvMsg => {
                on_target!(self.fixed_slot(op.fd), op.fd, |t| opcode::RecvMsgMulti::new(t, &*self.recvmsg_hdr, BGID)
                    .flags(libc::MSG_CMSG_CLOEXEC as u32)
                    .build())
            }
            MultiKind::RecvFrom => opcode::RecvMsgMulti::new(fd, &*self.recvfrom_hdr, BGID).build(),
            // Offset -1: the file position (a regular file as stdin); streams
            // have none.
            MultiKind::ReadStream => opcode::Read::new(fd, std::ptr::null_mut(), self.pool.size() as u32)
                .offset(u64::MAX)
                .buf_group(BGID)
                .build()
                .flags(squeue::Flags::BUFFER_SELECT),
        }
        .user_data(user_data)
    }

    /// `fd`'s registered slot, if it has one.
    fn fixed_slot(&self, fd: RawFd) -> Option<u32> {
        self.fixed.as_ref().and_then(|f| f.lookup(fd))
    }

    /// `fd`'s registered slot, registering `fd` first if the table has room
    /// (the first recv or send on a socket).
    fn register_fixed(&mut self, fd: RawFd) -> Option<u32> {
        let ring = &self.ring;
        self.fixed.as_mut().and_then(|f| f.slot(ring, fd))
    }

    /// Starts a persistent op.
    fn start_multishot(&mut self, fd: RawFd, token: Token, kind: MultiKind) -> Result<()> {
        let op = MultiOp { fd, kind, state: MultiState::InKernel, cancelled: false };
        if self.ops.contains_key(&token.0) {
            // Still in flight (its final completion has not been reported):
            // the loop reused a token, which the contract forbids.
            return Err(Error::from_errno(libc::EBUSY));
        }
        if matches!(kind, MultiKind::Recv | MultiKind::RecvMsg) {
            self.register_fixed(fd);
        }
        self.ops.insert(token.0, Tracked::Multi(op));
        let entry = self.multishot_entry(&op, token.0);
        // SAFETY: multishot SQEs point only at the recvmsg templates and the
        // buffer ring (via the group id), all owned for the ring's lifetime.
        unsafe { self.push_op(entry) };
        Ok(())
    }

    /// Re-submits waiting persistent ops: re-arms always, starved ones once
    /// the ring has a buffer again.
    fn resubmit_waiting(&mut self) {
        let mut i = 0;
        while i < self.waiting.len() {
            let ud = self.waiting[i];
            let op = match self.ops.get_mut(&ud) {
                Some(Tracked::Multi(op)) if !op.state.in_kernel() => op,
                // Re-armed or cancelled meanwhile: no longer waiting.
                Some(Tracked::Multi(_) | Tracked::Slot(_) | Tracked::StreamWrite { .. } | Tracked::ZcSend { .. })
                | None => {
                    self.waiting.swap_remove(i);
                    continue;
                }
            };
            if op.state == MultiState::Starved && self.bufs.available() == 0 {
                i += 1;
                continue;
            }
            op.state = MultiState::InKernel;
            let op = *op;
            self.waiting.swap_remove(i);
            let entry = self.multishot_entry(&op, ud);
            // SAFETY: as in `start_multishot`.
            unsafe { self.push_op(entry) };
        }
    }

    /// Reports `c` now if `out` has room, else at the next `poll`.
    fn emit(&mut self, out: &mut Vec<Completion>, c: Completion) {
        if out.len() < out.capacity() {
            out.push(c);
        } else {
            self.deferred.push_back(c);
        }
    }

    /// `io_uring_enter`: submits the SQ, runs deferred work, flushes
    /// overflowed CQEs and, if `wait`, waits up to `timeout_ms` (-1: no
    /// limit) for one CQE.
    fn enter(&mut self, wait: bool, timeout_ms: i64) -> Result<()> {
        let to_submit = self.ring.submission().len() as u32;
        let ts;
        let mut args = SubmitArgs::new();
        if wait && timeout_ms >= 0 {
            ts = Timespec::from(std::time::Duration::from_millis(timeout_ms as u64));
            args = args.timespec(&ts);
        }
        // SAFETY: `args` is an `io_uring_getevents_arg` (SubmitArgs is a
        // transparent wrapper) that, with the timespec it points at, lives
        // across the call; EXT_ARG tells the kernel to read it as such.
        let res = unsafe { self.enter_raw(to_submit, wait as u32, &args) };
        match res {
            Ok(_) => Ok(()),
            Err(e) => match e.raw_os_error() {
                Some(libc::ETIME | libc::EINTR) => Ok(()),
                // CQ back-pressure (EBUSY) or no memory for requests (EAGAIN):
                // nothing was submitted. Reaping makes room; the SQEs stay
                // queued for the next poll.
                Some(libc::EBUSY | libc::EAGAIN) => {
                    self.flush_overflow();
                    Ok(())
                }
                _ => Err(Error::from(e)),
            },
        }
    }

    /// `io_uring_enter` with `GETEVENTS | EXT_ARG`, naming the ring by its
    /// registered index when it has one. The index is the creating thread's:
    /// should another thread drive the ring (`EBADF`), it enters by fd from
    /// then on.
    ///
    /// # Safety
    /// `args` and what it points at must live across the call.
    unsafe fn enter_raw(
        &mut self,
        to_submit: u32,
        min_complete: u32,
        args: &SubmitArgs<'_, '_>,
    ) -> std::io::Result<usize> {
        // SAFETY: the caller's contract.
        let res = unsafe { self.enter_once(to_submit, min_complete, args) };
        match res {
            Err(e) if e.raw_os_error() == Some(libc::EBADF) && self.ring_index.take().is_some() => {
                // SAFETY: as above.
                unsafe { self.enter_once(to_submit, min_complete, args) }
            }
            res => res,
        }
    }

    /// One `io_uring_enter` (see [`Uring::enter_raw`]).
    ///
    /// # Safety
    /// As [`Uring::enter_raw`].
    unsafe fn enter_once(
        &self,
        to_submit: u32,
        min_complete: u32,
        args: &SubmitArgs<'_, '_>,
    ) -> std::io::Result<usize> {
        let mut flags = (EnterFlags::GETEVENTS | EnterFlags::EXT_ARG).bits();
        let fd = match self.ring_index {
            Some(i) => {
                flags |= EnterFlags::REGISTERED_RING.bits();
                i as RawFd
            }
            None => self.ring.as_raw_fd(),
        };
        let arg: *const SubmitArgs<'_, '_> = args;
        // SAFETY: `SubmitArgs` is a transparent `io_uring_getevents_arg`;
        // the caller keeps it (and its timespec) alive across the call.
        unsafe {
            fixed::enter(fd, to_submit, min_complete, flags, arg.cast(), std::mem::size_of::<SubmitArgs<'_, '_>>())
        }
    }

    /// Asks the kernel to move overflowed CQEs into the CQ (and run deferred
    /// task work) without submitting or waiting.
    fn flush_overflow(&mut self) {
        let args = SubmitArgs::new();
        // SAFETY: as in `enter`; no timespec, no submissions, no wait.
        let _ = unsafe { self.enter_raw(0, 0, &args) };
    }

    /// Translates CQEs into `out` until it is full or the CQ (including the
    /// kernel's overflow list) is empty.
    fn reap(&mut self, out: &mut Vec<Completion>) {
        loop {
            while out.len() < out.capacity() {
                let room = (out.capacity() - out.len()).min(REAP_BATCH);
                self.batch.clear();
                {
                    let cq = self.ring.completion();
                    for cqe in cq.take(room) {
                        self.batch.push((cqe.user_data(), cqe.result(), cqe.flags()));
                    }
                }
                if self.batch.is_empty() {
                    break;
                }
                for i in 0..self.batch.len() {
                    let (ud, res, flags) = self.batch[i];
                    self.complete(ud, res, flags, out);
                }
            }
            if out.len() >= out.capacity() || !self.ring.submission().cq_overflow() {
                return;
            }
            // The kernel holds CQEs that did not fit the CQ; bring them in.
            self.flush_overflow();
            if self.ring.completion().is_empty() {
                return;
            }
        }
    }

    /// Translates one CQE.
    fn complete(&mut self, ud: u64, res: i32, flags: u32, out: &mut Vec<Completion>) {
        let token = Token(ud);
        let Some(kind) = token.kind() else { return }; // internal SQE
        let more = cqueue::more(flags);
        if !more {
            self.inflight = self.inflight.saturating_sub(1);
        }
        let buf = cqueue::buffer_select(flags);
        if let Some(id) = buf {
            self.bufs.mark_lent(id);
        }
        match kind {
            OpKind::Accept => self.complete_multishot(token, MultiKind::Accept, res, buf, more, out),
            OpKind::Recv => self.complete_multishot(token, MultiKind::Recv, res, buf, more, out),
            OpKind::RecvMsg => self.complete_multishot(token, MultiKind::RecvMsg, res, buf, more, out),
            OpKind::RecvFrom => self.complete_multishot(token, MultiKind::RecvFrom, res, buf, more, out),
            OpKind::ReadStream => self.complete_read_stream(token, res, buf, out),
            OpKind::WriteStream => self.complete_write_stream(token, res, out),
            OpKind::Send if self.zc_inflight > 0 && matches!(self.ops.get(&ud), Some(Tracked::ZcSend { .. })) => {
                self.complete_send_zc(token, res, more, out)
            }
            OpKind::Send | OpKind::SendTo | OpKind::Connect => {
                if self.slots.in_use() > 0 {
                    if let Some(Tracked::Slot(i)) = self.ops.get(&ud).copied() {
                        self.ops.remove(&ud);
                        self.slots.give(i);
                    }
                }
                self.emit(out, Completion { token, res, buf: None, more: false });
            }
            OpKind::Read
            | OpKind::PollIn
            | OpKind::Poll
            | OpKind::FileRead
            | OpKind::FileWrite
            | OpKind::Fsync
            | OpKind::Statx
            | OpKind::OpenAt
            | OpKind::FileReadv
            | OpKind::FileWritev => self.emit(out, Completion { token, res, buf: None, more: false }),
        }
    }

    fn complete_multishot(
        &mut self,
        token: Token,
        kind: MultiKind,
        mut res: i32,
        mut buf: Option<u16>,
        more: bool,
        out: &mut Vec<Completion>,
    ) {
        if let Some(id) = buf {
            // A recvmsg record with neither payload nor control is the end of
            // the stream: report it as recv does (res 0, no buffer).
            let eof_record = kind == MultiKind::RecvMsg && self.recvmsg_is_eof(id, res);
            if res <= 0 || eof_record {
                self.recycle(id);
                buf = None;
                res = res.min(0);
            }
        }
        let data = if kind == MultiKind::Accept { res >= 0 } else { res > 0 };
        if more {
            self.emit(out, Completion { token, res, buf, more: true });
            return;
        }
        // The kernel ended the op.
        let op = match self.ops.get_mut(&token.0) {
            Some(Tracked::Multi(op)) => op,
            // No persistent op under this token: report the end as it came.
            Some(Tracked::Slot(_) | Tracked::StreamWrite { .. } | Tracked::ZcSend { .. }) | None => {
                self.emit(out, Completion { token, res, buf, more: false });
                return;
            }
        };
        if data && !op.cancelled {
            op.state = MultiState::Rearm;
            self.waiting.push(token.0);
            self.emit(out, Completion { token, res, buf, more: true });
        } else if data {
            self.ops.remove(&token.0);
            self.emit(out, Completion { token, res, buf, more: true });
            self.emit(out, Completion { token, res: -libc::ECANCELED, buf: None, more: false });
        } else if res == -libc::ENOBUFS && !op.cancelled && kind != MultiKind::Accept {
            op.state = MultiState::Starved;
            self.waiting.push(token.0);
        } else {
            if res == -libc::ENOBUFS {
                res = -libc::ECANCELED;
            }
            self.ops.remove(&token.0);
            self.emit(out, Completion { token, res, buf, more: false });
        }
    }

    /// A `ReadStream` CQE: its `READ`'s, or (state `Polling`) the
    /// readiness poll's that an `EAGAIN` asked for.
    fn complete_read_stream(&mut self, token: Token, res: i32, buf: Option<u16>, out: &mut Vec<Completion>) {
        let op = match self.ops.get_mut(&token.0) {
            Some(Tracked::Multi(op)) => op,
            _ => return self.complete_multishot(token, MultiKind::ReadStream, res, buf, false, out),
        };
        if op.state == MultiState::Polling {
            if res >= 0 && !op.cancelled {
                // Readable (or hung up: the read then says what happened).
                op.state = MultiState::Rearm;
                self.waiting.push(token.0);
            } else {
                let res = if op.cancelled { -libc::ECANCELED } else { res };
                self.ops.remove(&token.0);
                self.emit(out, Completion { token, res, buf: None, more: false });
            }
            return;
        }
        if res == -libc::EAGAIN && !op.cancelled {
            op.state = MultiState::Polling;
            let entry = opcode::PollAdd::new(Fd(op.fd), libc::POLLIN as u32).build().user_data(token.0);
            // SAFETY: POLL_ADD points at no memory.
            unsafe { self.push_op(entry) };
            return;
        }
        self.complete_multishot(token, MultiKind::ReadStream, res, buf, false, out)
    }

    /// A `WriteStream` CQE: its `WRITEV`'s, or the poll's that an `EAGAIN`
    /// asked for (then the write is retried from the slot).
    fn complete_write_stream(&mut self, token: Token, res: i32, out: &mut Vec<Completion>) {
        let Some(&Tracked::StreamWrite { slot, fd, polling, cancelled }) = self.ops.get(&token.0) else {
            return self.emit(out, Completion { token, res, buf: None, more: false });
        };
        let again = !cancelled && if polling { res >= 0 } else { res == -libc::EAGAIN };
        if again {
            let entry = if polling {
                let s = self.slots.get(slot);
                opcode::Writev::new(Fd(fd), s.iov.as_ptr(), s.msg.msg_iovlen as u32).offset(u64::MAX).build()
            } else {
                opcode::PollAdd::new(Fd(fd), libc::POLLOUT as u32).build()
            };
            self.ops.insert(token.0, Tracked::StreamWrite { slot, fd, polling: !polling, cancelled });
            // SAFETY: the iovec copy lives in boxed slot `slot`, freed only at
            // this op's final CQE; the data is the loop's, valid until then
            // (rule 3). POLL_ADD points at no memory.
            unsafe { self.push_op(entry.user_data(token.0)) };
            return;
        }
        self.ops.remove(&token.0);
        self.slots.give(slot);
        let res = if polling && res >= 0 { -libc::ECANCELED } else { res };
        self.emit(out, Completion { token, res, buf: None, more: false });
    }

    /// A `SEND_ZC` CQE: the result (`F_MORE`: a notification follows) is
    /// kept until the notification says the kernel is done with the data;
    /// then the send completes. A socket that cannot send zero-copy (not
    /// TCP) answers `EOPNOTSUPP`: the send is made again as a plain `SEND`
    /// (the data is still lent: its completion has not been reported).
    fn complete_send_zc(&mut self, token: Token, res: i32, more: bool, out: &mut Vec<Completion>) {
        let Some(Tracked::ZcSend { fd, ptr, len, sent }) = self.ops.get_mut(&token.0) else { return };
        if more {
            *sent = Some(res);
            return;
        }
        let res = sent.unwrap_or(res);
        let (fd, ptr, len) = (*fd, *ptr as *const u8, *len);
        self.ops.remove(&token.0);
        self.zc_inflight -= 1;
        if res == -libc::EOPNOTSUPP {
            let entry = on_target!(self.fixed_slot(fd), fd, |t| opcode::Send::new(t, ptr, len)
                .flags(libc::MSG_NOSIGNAL)
                .build())
            .user_data(token.0);
            // SAFETY: the data is still lent (this send's completion has not
            // been reported), as when it was first submitted.
            unsafe { self.push_op(entry) };
            return;
        }
        self.emit(out, Completion { token, res, buf: None, more: false });
    }

    /// Whether buffer `id` holds a recvmsg record of `res` bytes with no
    /// payload and no control data.
    fn recvmsg_is_eof(&self, id: u16, res: i32) -> bool {
        if res < RECVMSG_HEADER_LEN as i32 {
            return false;
        }
        // SAFETY: the CQE just lent buffer `id` to us and the kernel no longer
        // writes it; we read its 16-byte header only.
        let head = unsafe { self.pool.slice(id, RECVMSG_HEADER_LEN) };
        let word = |i: usize| u32::from_ne_bytes([head[i * 4], head[i * 4 + 1], head[i * 4 + 2], head[i * 4 + 3]]);
        word(1) == 0 && word(2) == 0
    }
}

impl Uring {
    /// `SEND` for one iovec without fds, else `SENDMSG` from a slot.
    ///
    /// # Safety
    /// As [`Driver::submit`] for `Op::Send`.
    unsafe fn start_send(&mut self, fd: RawFd, token: Token, iov: &[libc::iovec], fds: &[RawFd]) -> Result<()> {
        if iov.len() > MAX_IOV || fds.len() > socket::MAX_FDS_PER_MSG {
            return Err(Error::EINVAL);
        }
        let fixed = self.register_fixed(fd);
        if iov.len() == 1 && fds.is_empty() {
            let len = u32::try_from(iov[0].iov_len).unwrap_or(u32::MAX);
            let ptr = iov[0].iov_base as *const u8;
            let entry = if self.send_zc && iov[0].iov_len >= setup::SEND_ZC_MIN {
                let prev = self.ops.insert(token.0, Tracked::ZcSend { fd, ptr: ptr as usize, len, sent: None });
                debug_assert!(prev.is_none(), "{token:?} submitted while in flight");
                self.zc_inflight += 1;
                on_target!(fixed, fd, |t| opcode::SendZc::new(t, ptr, len).flags(libc::MSG_NOSIGNAL).build())
            } else {
                on_target!(fixed, fd, |t| opcode::Send::new(t, ptr, len).flags(libc::MSG_NOSIGNAL).build())
            }
            .user_data(token.0);
            // SAFETY: the data is the caller's, valid until the completion
            // (this function's contract); nothing else is pointed at.
            unsafe { self.push_op(entry) };
            return Ok(());
        }
        let i = self.slots.take();
        let slot = self.slots.get(i);
        slot.iov[..iov.len()].copy_from_slice(iov);
        slot.msg.msg_name = std::ptr::null_mut();
        slot.msg.msg_namelen = 0;
        slot.msg.msg_iov = slot.iov.as_mut_ptr();
        slot.msg.msg_iovlen = iov.len() as _;
        slot.msg.msg_flags = 0;
        if fds.is_empty() {
            slot.msg.msg_control = std::ptr::null_mut();
            slot.msg.msg_controllen = 0;
        } else {
            // SAFETY: `control` holds CONTROL_LEN >= cmsg_space(64 fds) bytes,
            // is u64-aligned (enough for cmsghdr), and fds.len() <= 64.
            unsafe { socket::fill_rights(slot.control.as_mut_ptr().cast(), fds) };
            slot.msg.msg_control = slot.control.as_mut_ptr().cast();
            slot.msg.msg_controllen = socket::cmsg_space(std::mem::size_of_val(fds)) as _;
        }
        let msg: *const libc::msghdr = &slot.msg;
        let entry = on_target!(fixed, fd, |t| opcode::SendMsg::new(t, msg).flags(libc::MSG_NOSIGNAL as u32).build())
            .user_data(token.0);
        let prev = self.ops.insert(token.0, Tracked::Slot(i));
        debug_assert!(prev.is_none(), "{token:?} submitted while in flight");
        // SAFETY: the header, iovec copy and control message live in boxed
        // slot `i`, freed only at this op's CQE; the data is the caller's,
        // valid until then (this function's contract).
        unsafe { self.push_op(entry) };
        Ok(())
    }

    /// `SENDMSG` of one datagram, to `addr` if given, from a slot.
    ///
    /// # Safety
    /// As [`Driver::submit`] for `Op::SendTo`.
    unsafe fn start_send_to(
        &mut self,
        fd: RawFd,
        token: Token,
        iov: &[libc::iovec],
        addr: Option<&SockAddr>,
    ) -> Result<()> {
        if iov.len() > MAX_IOV {
            return Err(Error::EINVAL);
        }
        let i = self.slots.take();
        let slot = self.slots.get(i);
        slot.iov[..iov.len()].copy_from_slice(iov);
        match addr {
            Some(a) => {
                slot.addr = *a;
                slot.msg.msg_name = (&mut slot.addr.storage as *mut libc::sockaddr_storage).cast();
                slot.msg.msg_namelen = a.len;
            }
            None => {
                slot.msg.msg_name = std::ptr::null_mut();
                slot.msg.msg_namelen = 0;
            }
        }
        slot.msg.msg_iov = slot.iov.as_mut_ptr();
        slot.msg.msg_iovlen = iov.len() as _;
        slot.msg.msg_control = std::ptr::null_mut();
        slot.msg.msg_controllen = 0;
        slot.msg.msg_flags = 0;
        let entry = opcode::SendMsg::new(Fd(fd), &slot.msg).flags(libc::MSG_NOSIGNAL as u32).build().user_data(token.0);
        let prev = self.ops.insert(token.0, Tracked::Slot(i));
        debug_assert!(prev.is_none(), "{token:?} submitted while in flight");
        // SAFETY: the header, iovec copy and address live in boxed slot `i`,
        // freed only at this op's CQE; the data is the caller's, valid until
        // then (this function's contract).
        unsafe { self.push_op(entry) };
        Ok(())
    }

    fn start_connect(&mut self, fd: RawFd, token: Token, addr: &SockAddr) -> Result<()> {
        let i = self.slots.take();
        let slot = self.slots.get(i);
        slot.addr = *addr;
        let entry = opcode::Connect::new(Fd(fd), slot.addr.as_ptr(), slot.addr.len).build().user_data(token.0);
        let prev = self.ops.insert(token.0, Tracked::Slot(i));
        debug_assert!(prev.is_none(), "{token:?} submitted while in flight");
        // SAFETY: the address lives in boxed slot `i`, freed only at this
        // op's CQE.
        unsafe { self.push_op(entry) };
        Ok(())
    }

    /// `WRITEV` at the file position, from a slot holding the iovec copy.
    ///
    /// # Safety
    /// As [`Driver::submit`] for `Op::WriteStream`.
    unsafe fn start_write_stream(&mut self, fd: RawFd, token: Token, iov: &[libc::iovec]) -> Result<()> {
        if iov.len() > MAX_IOV {
            return Err(Error::EINVAL);
        }
        let i = self.slots.take();
        let slot = self.slots.get(i);
        slot.iov[..iov.len()].copy_from_slice(iov);
        slot.msg.msg_iovlen = iov.len() as _;
        let entry = opcode::Writev::new(Fd(fd), slot.iov.as_ptr(), iov.len() as u32)
            .offset(u64::MAX)
            .build()
            .user_data(token.0);
        let prev = self.ops.insert(token.0, Tracked::StreamWrite { slot: i, fd, polling: false, cancelled: false });
        debug_assert!(prev.is_none(), "{token:?} submitted while in flight");
        // SAFETY: the iovec copy lives in boxed slot `i`, freed only at this
        // op's final CQE; the data is the caller's, valid until then (this
        // function's contract).
        unsafe { self.push_op(entry) };
        Ok(())
    }

    fn start_poll(&mut self, fd: RawFd, token: Token, events: u32) {
        let entry = opcode::PollAdd::new(Fd(fd), events).build().user_data(token.0);
        // SAFETY: POLL_ADD points at no memory.
        unsafe { self.push_op(entry) };
    }
}

impl Driver for Uring {
    fn kind(&self) -> Backend {
        Backend::IoUring
    }

    unsafe fn submit(&mut self, token: Token, op: Op<'_>) -> Result<()> {
        debug_assert_eq!(token.kind(), Some(op.kind()), "{token:?} for {op:?}");
        match op {
            // io_uring's accept wakes one waiter per connection already.
            Op::Accept { fd, exclusive: _ } => self.start_multishot(fd, token, MultiKind::Accept),
            Op::Recv { fd } => self.start_multishot(fd, token, MultiKind::Recv),
            Op::RecvMsg { fd } => {
                if self.pool.size() <= RECVMSG_HEADER_LEN + RECVMSG_CONTROL_LEN {
                    return Err(Error::EINVAL);
                }
                self.start_multishot(fd, token, MultiKind::RecvMsg)
            }
            // SAFETY: the caller's rule-3 guarantee for this send, forwarded.
            Op::Send { fd, iov, fds } => unsafe { self.start_send(fd, token, iov, fds) },
            Op::Connect { fd, addr } => self.start_connect(fd, token, addr),
            Op::Read { fd, ptr, len } => {
                let len = u32::try_from(len).unwrap_or(u32::MAX);
                // Offset -1: the file position for seekable files; ignored for
                // streams (eventfd, pipes).
                let entry = opcode::Read::new(Fd(fd), ptr, len).offset(u64::MAX).build().user_data(token.0);
                // SAFETY: `ptr..ptr+len` stays valid until the completion
                // (the caller's rule-3 guarantee for this read).
                unsafe { self.push_op(entry) };
                Ok(())
            }
            Op::PollIn { fd } => {
                self.start_poll(fd, token, libc::POLLIN as u32);
                Ok(())
            }
            Op::Poll { fd, events } => {
                self.start_poll(fd, token, events);
                Ok(())
            }
            _ if !self.supports(op.kind()) => Err(Error::ENOSYS),
            Op::FileRead { fd, ptr, len, offset } => {
                let len = u32::try_from(len).unwrap_or(u32::MAX);
                // Offset -1: the file position, as read(2).
                let entry =
                    opcode::Read::new(Fd(fd), ptr, len).offset(offset.unwrap_or(u64::MAX)).build().user_data(token.0);
                // SAFETY: `ptr..ptr+len` stays valid until the completion
                // (the caller's rule-3 guarantee for this read).
                unsafe { self.push_op(entry) };
                Ok(())
            }
            Op::FileWrite { fd, ptr, len, offset } => {
                let len = u32::try_from(len).unwrap_or(u32::MAX);
                let entry =
                    opcode::Write::new(Fd(fd), ptr, len).offset(offset.unwrap_or(u64::MAX)).build().user_data(token.0);
                // SAFETY: `ptr..ptr+len` stays valid and unmodified until the
                // completion (the caller's rule-3 guarantee for this write).
                unsafe { self.push_op(entry) };
                Ok(())
            }
            Op::FileReadv { fd, iov, iovcnt, offset } => {
                let cnt = u32::try_from(iovcnt).map_err(|_| Error::EINVAL)?;
                let entry =
                    opcode::Readv::new(Fd(fd), iov, cnt).offset(offset.unwrap_or(u64::MAX)).build().user_data(token.0);
                // SAFETY: the iovec array and every buffer it names stay valid
                // until the completion (the caller's rule-3 guarantee).
                unsafe { self.push_op(entry) };
                Ok(())
            }
            Op::FileWritev { fd, iov, iovcnt, offset } => {
                let cnt = u32::try_from(iovcnt).map_err(|_| Error::EINVAL)?;
                let entry =
                    opcode::Writev::new(Fd(fd), iov, cnt).offset(offset.unwrap_or(u64::MAX)).build().user_data(token.0);
                // SAFETY: as for `FileReadv` (the buffers stay unmodified).
                unsafe { self.push_op(entry) };
                Ok(())
            }
            Op::Fsync { fd, data_only } => {
                let flags = if data_only { types::FsyncFlags::DATASYNC } else { types::FsyncFlags::empty() };
                let entry = opcode::Fsync::new(Fd(fd)).flags(flags).build().user_data(token.0);
                // SAFETY: FSYNC points at no memory.
                unsafe { self.push_op(entry) };
                Ok(())
            }
            Op::Statx { dirfd, path, flags, buf } => {
                let entry = opcode::Statx::new(Fd(dirfd), path, buf.cast::<types::statx>())
                    .flags(flags)
                    .mask(crate::sys::fs::STATX_MASK)
                    .build()
                    .user_data(token.0);
                // SAFETY: the path and the record stay valid until the
                // completion (the caller's rule-3 guarantee for this statx).
                unsafe { self.push_op(entry) };
                Ok(())
            }
            Op::OpenAt { path, flags, mode } => {
                let entry = opcode::OpenAt::new(Fd(crate::sys::fs::AT_FDCWD), path)
                    .flags(flags)
                    .mode(mode)
                    .build()
                    .user_data(token.0);
                // SAFETY: the path stays valid until the completion (the
                // caller's rule-3 guarantee for this openat).
                unsafe { self.push_op(entry) };
                Ok(())
            }
            Op::RecvFrom { fd } => {
                if self.pool.size() <= RecordLayout::DATAGRAM.payload_offset() {
                    return Err(Error::EINVAL);
                }
                self.start_multishot(fd, token, MultiKind::RecvFrom)
            }
            // SAFETY: the caller's rule-3 guarantee for this send, forwarded.
            Op::SendTo { fd, iov, addr } => unsafe { self.start_send_to(fd, token, iov, addr) },
            Op::ReadStream { fd } => self.start_multishot(fd, token, MultiKind::ReadStream),
            // SAFETY: the caller's rule-3 guarantee for this write, forwarded.
            Op::WriteStream { fd, iov } => unsafe { self.start_write_stream(fd, token, iov) },
        }
    }

    fn supports(&self, kind: OpKind) -> bool {
        !kind.is_file_op() || self.file_ops.has(kind)
    }

    fn cancel(&mut self, _fd: RawFd, token: Token) {
        if let Some(Tracked::StreamWrite { cancelled, .. }) = self.ops.get_mut(&token.0) {
            *cancelled = true;
        }
        if let Some(Tracked::Multi(op)) = self.ops.get_mut(&token.0) {
            if op.cancelled {
                return;
            }
            op.cancelled = true;
            if !op.state.in_kernel() {
                // Not in the kernel (waiting for a re-arm or a buffer): end it
                // here; its final completion goes out at the next poll.
                self.ops.remove(&token.0);
                if let Some(pos) = self.waiting.iter().position(|&t| t == token.0) {
                    self.waiting.swap_remove(pos);
                }
                self.deferred.push_back(Completion { token, res: -libc::ECANCELED, buf: None, more: false });
                return;
            }
        }
        let accept = token.kind() == Some(OpKind::Accept);
        if accept {
            // io_uring's accept waits exclusively: a new connection wakes one
            // ring, and with DEFER_TASKRUN that ring accepts only at its next
            // enter. Cancelling first would drop the claimed wake-up and leave
            // the connection in a shared listen queue with no other process
            // told about it. So run the claimed accepts now (their fds arrive
            // as ordinary completions before the final one)...
            self.flush_overflow();
        }
        let entry = opcode::AsyncCancel2::new(CancelBuilder::user_data(token.0).all()).build().user_data(INTERNAL);
        // SAFETY: ASYNC_CANCEL points at no memory.
        unsafe { self.push(entry) };
        if accept {
            // ...and cancel at once, with GETEVENTS: the cancelled accept's
            // wait-queue entry is removed only when its task work runs, and
            // until then it would keep claiming (and dropping) wake-ups meant
            // for the other processes. Errors leave the SQE for the next poll.
            let _ = self.enter(false, 0);
        }
    }

    fn deregister(&mut self, fd: RawFd) {
        // Empty the fd's registered slot, if it has one, so that the close
        // that follows really closes; nothing else is registered per fd.
        let ring = &self.ring;
        if let Some(f) = self.fixed.as_mut() {
            f.release(ring, fd);
        }
    }

    fn poll(&mut self, timeout_ms: i64, out: &mut Vec<Completion>) -> Result<()> {
        let start = out.len();
        while out.len() < out.capacity() {
            match self.deferred.pop_front() {
                Some(c) => out.push(c),
                None => break,
            }
        }
        if !self.waiting.is_empty() {
            self.resubmit_waiting();
        }
        self.flush_backlog();
        let room = out.capacity() - out.len();
        let cq_len = self.ring.completion().len();
        let wait = timeout_ms != 0 && out.len() == start && room > 0 && cq_len == 0 && self.deferred.is_empty();
        let to_submit = !self.ring.submission().is_empty();
        if wait || to_submit || cq_len < room {
            // Only an enter that may block is idle time (libuv measures the
            // same span: around the wait).
            let waited = wait.then(std::time::Instant::now);
            let res = self.enter(wait, timeout_ms);
            if let Some(since) = waited {
                self.stats.add_idle(since);
            }
            res?;
        }
        self.flush_backlog();
        if self.deferred.is_empty() {
            self.reap(out);
        }
        if !wait {
            // Nothing was waited for: every completion was ready.
            self.stats.events_waiting += (out.len() - start) as u64;
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
        let ok = self.bufs.give_back(&self.pool, id);
        debug_assert!(ok, "buffer {id} recycled but not lent");
    }
}

impl Drop for Uring {
    fn drop(&mut self) {
        if std::process::id() != self.pid {
            // A forked child: the ring's pages are not mapped here (dontfork)
            // and the ring belongs to the parent. Leak our handle on it.
            return;
        }
        // SQEs still in the backlog never reached the kernel.
        for e in self.backlog.drain(..) {
            if Token(e.get_user_data()).kind().is_some() {
                self.inflight = self.inflight.saturating_sub(1);
            }
        }
        // Run claimed wake-ups first (see `cancel`): a connection an accept
        // already claimed is then accepted (and closed below, so its client
        // sees a reset at once) rather than stranded in a shared listen queue.
        self.flush_overflow();
        // Cancel everything, then wait (bounded) for every op to end, so no
        // request still points into the pool, a slot or the loop's memory
        // when they are freed. Accepted fds still in the CQ are closed.
        let entry = opcode::AsyncCancel2::new(CancelBuilder::any()).build().user_data(INTERNAL);
        // SAFETY: ASYNC_CANCEL points at no memory.
        unsafe { self.push(entry) };
        self.flush_backlog();
        for _ in 0..100 {
            let _ = self.enter(self.inflight > 0, 10);
            let mut cq = self.ring.completion();
            for cqe in &mut cq {
                let token = Token(cqe.user_data());
                let Some(kind) = token.kind() else { continue };
                if !cqueue::more(cqe.flags()) {
                    self.inflight = self.inflight.saturating_sub(1);
                }
                if matches!(kind, OpKind::Accept | OpKind::OpenAt) && cqe.result() >= 0 {
                    crate::sys::close(cqe.result());
                }
            }
            drop(cq);
            if self.inflight == 0 {
                break;
            }
        }
        // Accepted fds in completions the loop never collected.
        for c in self.deferred.drain(..) {
            if matches!(c.token.kind(), Some(OpKind::Accept | OpKind::OpenAt)) && c.res >= 0 {
                crate::sys::close(c.res);
            }
        }
        let _ = self.ring.submitter().unregister_buf_ring(BGID);
        // Registered files would stay open until the ring's (asynchronous)
        // teardown; the thread's registration of the ring fd would keep the
        // ring itself alive until the thread exits.
        if self.fixed.take().is_some() {
            let _ = self.ring.submitter().unregister_files();
        }
        if let Some(i) = self.ring_index.take() {
            fixed::unregister_ring_fd(&self.ring, i);
        }
        // SAFETY: dropped exactly once, here; nothing uses `ring` afterwards.
        // Fields (buffer ring, pool, slots, recvmsg template) are dropped
        // after this body returns, once the kernel has let go of them.
        unsafe { ManuallyDrop::drop(&mut self.ring) };
    }
}
