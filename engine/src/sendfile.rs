//! File-to-socket transfer ([`Loop::sendfile`]): a range of a file sent on
//! a stream without ever blocking the loop on the disk.
//!
//! A transfer is a write request: it takes its place in the stream's write
//! queue (a marker at the stream offset where it was queued, carrying no
//! bytes), goes out when every write queued before it has, and writes
//! queued after it wait for it. Only one transfer of a stream is in flight
//! at a time: its current op is the stream's `send_op`, so nothing else is
//! sent meanwhile and `close` cancels it like any send.
//!
//! Two ways to move the bytes:
//!
//! - **sendfile** (the default on both backends): the loop asks the page
//!   cache whether the next range is there (`cachestat`, which never
//!   blocks); if so it calls `sendfile` itself, as many bytes as the
//!   socket takes, and waits for `POLLOUT` (a `Poll` op: epoll, or a poll
//!   in the ring) when the socket is full. A range not in the cache is
//!   first read into it on the work pool, so a page-cache miss waits on a
//!   pool thread, never on the loop. No copy through user memory.
//! - **read+send** (io_uring with ring file reads): a ring read into a
//!   chunk buffer, then a ring send of it, in turn. The kernel handles a
//!   miss inside the ring, and every step is a completion op. It copies
//!   every byte twice (page cache to the chunk, chunk to the socket), and
//!   measured about 3x sendfile's server CPU per 1 MiB response
//!   (`bench/RESULTS.md`), so it is used where the page cache cannot be
//!   asked (`cachestat` missing: before Linux 6.5, or a file system
//!   without it), or when `UVRING_SENDFILE=read-send` asks for it.
//!
//! `UVRING_SENDFILE=sendfile` or `read-send` (or
//! [`LoopOptions::sendfile_read_send`](crate::LoopOptions::sendfile_read_send))
//! picks one (read+send needs ring file reads; without them, sendfile is
//! used).
//!
//! Errors: any failure (a reset peer's `ECONNRESET`, `EPIPE`, a file's
//! `EIO`) fails the transfer and, like a failed send, every write queued
//! on the stream after it: a peer must not get a body that stops part way
//! followed by the next response. A file that ends before `len` is not an
//! error: the callback gets the bytes sent, which the caller compares.
//!
//! The file is borrowed, as for [`fs_read`](Loop::fs_read): keep it open
//! until the callback has run.

use crate::backend::{Op, OpKind, Token};
use crate::error::{Error, Result};
use crate::event_loop::{Loop, Pending};
use crate::handle::{OnSendFile, SendFileFn, StreamHandle};
use crate::stream::{Stream, StreamType, WriteReq};
use crate::sys::sendfile as sys;
use crate::work::Work;
use slab::Slab;
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::rc::Rc;

/// Bytes probed and sent per `sendfile` step, and the read+send chunk.
const CHUNK: u64 = 256 * 1024;
/// Bytes one wakeup sends with `sendfile` before letting other streams
/// run (it waits for `POLLOUT`, which a writable socket answers at once).
const MAX_PER_WAKEUP: u64 = 4 * 1024 * 1024;
/// Chunk buffers kept for later transfers (read+send).
const SPARE_BUFS_MAX: usize = 64;

/// How a loop moves file bytes to sockets.
#[derive(Copy, Clone, PartialEq, Eq, Debug)]
enum Mode {
    SendFile,
    ReadSend,
}

#[derive(Copy, Clone, PartialEq, Eq, Debug)]
enum Phase {
    /// In the write queue, not started.
    Queued,
    /// sendfile: the pool is reading the next range into the page cache.
    Warming(Work),
    /// An op of the stream's (`send_op`) is in flight: the `Poll` for
    /// `POLLOUT`, the ring read or the send.
    Op,
    /// Between steps (the op's completion is being handled).
    Running,
    /// Ended; the callback runs when the write queue reaches it.
    Done(std::result::Result<u64, Error>),
}

pub(crate) struct Transfer<D> {
    generation: u32,
    stream: Stream,
    fd: RawFd,
    /// The next file offset to send (read+send: to read) from.
    offset: u64,
    /// Bytes still to send (read+send: still to read).
    remaining: u64,
    sent: u64,
    /// sendfile: the range up to here was warmed on the pool; send it
    /// without probing again.
    warmed_to: u64,
    /// read+send: the chunk (lent to the backend while `phase` is `Op`),
    /// its filled length, and how much of that is sent.
    buf: Vec<u8>,
    filled: usize,
    buf_off: usize,
    phase: Phase,
    cb: Option<Rc<SendFileFn<D>>>,
}

/// A loop's transfers (dropped after the backend: a read+send chunk is
/// lent to it while its op is in flight).
pub(crate) struct Transfers<D> {
    entries: Slab<Transfer<D>>,
    next_generation: u32,
    bufs_spare: Vec<Vec<u8>>,
    mode: Option<Mode>,
    /// The loop reads files through the ring (read+send is possible).
    ring_reads: bool,
    /// [`LoopOptions::sendfile_read_send`](crate::LoopOptions::sendfile_read_send).
    read_send: Option<bool>,
    /// Starts a warm-up on the work pool. The pool needs `D: 'static`,
    /// which the loop's inner code does not have; [`Loop::sendfile`] does
    /// and leaves this here.
    warm: Option<fn(&mut Loop<D>, u32)>,
}

impl<D> Transfers<D> {
    pub(crate) fn new(read_send: Option<bool>) -> Transfers<D> {
        Transfers {
            entries: Slab::new(),
            next_generation: 1,
            bufs_spare: Vec::new(),
            mode: None,
            ring_reads: false,
            read_send,
            warm: None,
        }
    }
}

fn mode_from_env() -> Option<Mode> {
    match std::env::var("UVRING_SENDFILE").ok()?.trim().to_ascii_lowercase().as_str() {
        "sendfile" => Some(Mode::SendFile),
        "read-send" | "readsend" | "read_send" => Some(Mode::ReadSend),
        _ => None,
    }
}

impl<D: 'static> Loop<D> {
    /// Sends `len` bytes of `file` from `offset` on stream `s`
    /// (`uv_fs_sendfile` as a stream write): queued behind the writes made
    /// before it, ahead of those made after; `cb` gets the bytes sent
    /// (fewer than `len` if the file ends first) or the error
    /// (`ECONNRESET`, `EPIPE`; `ECANCELED` if the stream is closed first).
    /// The loop never waits for the disk (see the module docs for how each
    /// backend avoids it). An error fails the writes queued after the
    /// transfer too, as a failed send does. Keep `file` open until `cb` has
    /// run. An immediate `Err` means nothing was queued (as for `write`;
    /// `EINVAL` on an IPC pipe).
    ///
    /// # Errors
    ///
    /// Nothing is queued and `cb` never runs: [`Error::STALE_HANDLE`] if the stream is closed or
    /// closing; `EINVAL` on an IPC pipe or when `offset + len` overflows an `i64`; as
    /// [`write`](Self::write) otherwise (`EBADF` for a listener or a stream without a socket,
    /// `EPIPE` after a shutdown, an earlier write's error). The transfer's own failure reaches
    /// `cb`.
    pub fn sendfile<S: StreamHandle>(
        &mut self,
        s: S,
        file: &impl AsFd,
        offset: u64,
        len: u64,
        cb: Option<&OnSendFile<D, S>>,
    ) -> Result<()> {
        let s = Stream::of(s);
        if self.stream_ref(s)?.ty == StreamType::IpcPipe {
            // IPC pipes carry framed messages with fds: raw file bytes
            // have no place there.
            return Err(Error::EINVAL);
        }
        if i64::try_from(offset.checked_add(len).ok_or(Error::EINVAL)?).is_err() {
            return Err(Error::EINVAL);
        }
        self.write_admit(s)?;
        if self.xfers.mode.is_none() {
            let ring = self.fs_io_uring();
            self.xfers.ring_reads = ring;
            let asked = match self.xfers.read_send {
                Some(true) => Some(Mode::ReadSend),
                Some(false) => Some(Mode::SendFile),
                None => mode_from_env(),
            };
            self.xfers.mode = Some(match asked {
                Some(Mode::ReadSend) if ring => Mode::ReadSend,
                _ => Mode::SendFile,
            });
            self.xfers.warm = Some(Self::xfer_warm_start);
        }
        let generation = self.xfers.next_generation;
        self.xfers.next_generation = generation.wrapping_add(1).max(1);
        let phase = if len == 0 { Phase::Done(Ok(0)) } else { Phase::Queued };
        let index = self.xfers.entries.insert(Transfer {
            generation,
            stream: s,
            fd: file.as_fd().as_raw_fd(),
            offset,
            remaining: len,
            sent: 0,
            warmed_to: offset,
            buf: Vec::new(),
            filled: 0,
            buf_off: 0,
            phase,
            cb: cb.map(|c| c.f.clone()),
        }) as u32;
        let st = self.stream_state(s)?;
        let at = st.queued_total;
        st.parts.side().writes.push_back(WriteReq {
            end: at,
            cb: None,
            nfds: 0,
            borrowed: false,
            start: at,
            file: Some(index),
        });
        self.active_reqs += 1;
        self.flush(s);
        Ok(())
    }

    /// Reads transfer `index`'s next range into the page cache on the pool.
    fn xfer_warm_start(lp: &mut Loop<D>, index: u32) {
        let Some(t) = lp.xfers.entries.get(index as usize) else { return };
        let (fd, offset, len, generation) = (t.fd, t.offset, t.remaining.min(CHUNK), t.generation);
        let queued = lp.queue_work(
            move || sys::warm(fd, offset, len),
            move |lp, _d, res| {
                match lp.xfers.entries.get_mut(index as usize) {
                    Some(t) if t.generation == generation && matches!(t.phase, Phase::Warming(_)) => {
                        t.phase = Phase::Running;
                        t.warmed_to = offset + len;
                    }
                    _ => return,
                }
                // A stream closed meanwhile finishes the transfer itself
                // (with `ECANCELED`).
                let Some(s) = lp.xfer_stream(index) else { return };
                match res.and_then(|r| r) {
                    Ok(()) => lp.xfer_step(s, index),
                    Err(e) => lp.xfer_finish(s, index, Err(e)),
                }
            },
        );
        match queued {
            Ok(w) => {
                if let Some(t) = lp.xfers.entries.get_mut(index as usize) {
                    t.phase = Phase::Warming(w);
                }
            }
            Err(e) => {
                if let Some(s) = lp.xfer_stream(index) {
                    lp.xfer_finish(s, index, Err(e));
                }
            }
        }
    }
}

impl<D> Loop<D> {
    /// The stream whose transfer in flight is `index`, if it is still open.
    fn xfer_stream(&self, index: u32) -> Option<Stream> {
        let s = self.xfers.entries.get(index as usize)?.stream;
        (self.stream_ref(s).ok()?.xfer == Some(index)).then_some(s)
    }

    /// The transfer to start on `s` now, if its turn has come: every write
    /// before it is sent (the in-flight buffer is empty; the caller checked).
    pub(crate) fn xfer_due(&self, s: Stream) -> Option<u32> {
        let st = self.stream_ref(s).ok()?;
        for w in st.parts.writes() {
            match w.file {
                Some(i) => match self.xfers.entries.get(i as usize)?.phase {
                    Phase::Done(_) => continue,
                    Phase::Queued if w.start == st.written_total => return Some(i),
                    _ => return None,
                },
                None if w.end <= st.written_total && w.nfds == 0 => continue,
                None => return None,
            }
        }
        None
    }

    /// Whether transfer `index` has ended (its callback may run).
    pub(crate) fn xfer_done(&self, index: u32) -> bool {
        self.xfers.entries.get(index as usize).is_none_or(|t| matches!(t.phase, Phase::Done(_)))
    }

    /// Whether transfer `index` has an op of the stream's in flight (its
    /// chunk is lent to the backend).
    pub(crate) fn xfer_busy(&self, index: u32) -> bool {
        self.xfers.entries.get(index as usize).is_some_and(|t| t.phase == Phase::Op)
    }

    /// Removes transfer `index`, whose write request the queue has popped:
    /// its callback and result (`ECANCELED` if it never ended).
    pub(crate) fn xfer_take(&mut self, index: u32) -> (Option<Rc<SendFileFn<D>>>, Result<u64>) {
        if !self.xfers.entries.contains(index as usize) {
            return (None, Err(Error::ECANCELED));
        }
        let mut t = self.xfers.entries.remove(index as usize);
        self.xfer_recycle(&mut t.buf);
        let res = match t.phase {
            Phase::Done(r) => r,
            _ => Err(Error::ECANCELED),
        };
        (t.cb, res)
    }

    fn xfer_recycle(&mut self, buf: &mut Vec<u8>) {
        let buf = std::mem::take(buf);
        if buf.capacity() > 0 && self.xfers.bufs_spare.len() < SPARE_BUFS_MAX {
            self.xfers.bufs_spare.push(buf);
        }
    }

    /// Starts transfer `index`, now due on `s`.
    pub(crate) fn xfer_begin(&mut self, s: Stream, index: u32) {
        let Ok(st) = self.stream_state(s) else { return };
        st.xfer = Some(index);
        if let Some(t) = self.xfers.entries.get_mut(index as usize) {
            t.phase = Phase::Running;
        }
        self.xfer_step(s, index);
    }

    /// `close` of `s`: a warm-up on the pool is dropped if it has not
    /// started (an op of the stream's is cancelled with the others).
    pub(crate) fn xfer_close(&mut self, s: Stream) {
        let Ok(Some(index)) = self.stream_ref(s).map(|st| st.xfer) else { return };
        if let Some(Phase::Warming(w)) = self.xfers.entries.get(index as usize).map(|t| t.phase) {
            let _ = self.cancel_work(w);
        }
    }

    /// Ends transfer `index` with `res`; its callback runs when the write
    /// queue reaches it (from the pending phase). A failure fails the
    /// stream's other writes too.
    fn xfer_finish(&mut self, s: Stream, index: u32, res: Result<u64>) {
        let mut buf = Vec::new();
        if let Some(t) = self.xfers.entries.get_mut(index as usize) {
            t.phase = Phase::Done(res);
            std::mem::swap(&mut buf, &mut t.buf);
        }
        self.xfer_recycle(&mut buf);
        if let Ok(st) = self.stream_state(s) {
            st.xfer = None;
        }
        match res {
            Err(e) => self.fail_writes(s, e),
            Ok(_) => self.push_pending(Pending::Writes(s)),
        }
    }

    /// Moves transfer `index` on: the next step of its loop's mode.
    fn xfer_step(&mut self, s: Stream, index: u32) {
        match self.xfers.mode {
            Some(Mode::ReadSend) => self.xfer_read_send_step(s, index),
            _ => self.xfer_sendfile_step(s, index),
        }
    }

    /// Submits an op of the transfer's; the stream's `send_op` names it.
    ///
    /// # Safety
    /// As [`submit_op`](Self::submit_op) for `op`: memory it lends is the
    /// transfer's chunk, which stays put while `phase` is `Op`.
    unsafe fn xfer_submit(&mut self, s: Stream, index: u32, op: Op<'_>) {
        // SAFETY: forwarded from the caller.
        match unsafe { self.submit_op(s.0, op) } {
            Ok(token) => {
                if let Ok(st) = self.stream_state(s) {
                    st.send_op = Some(token);
                }
                if let Some(t) = self.xfers.entries.get_mut(index as usize) {
                    t.phase = Phase::Op;
                }
            }
            Err(e) => self.xfer_finish(s, index, Err(e)),
        }
    }

    /// sendfile mode: send what is cached and the socket takes; wait for
    /// `POLLOUT` when it is full; warm a missing range on the pool.
    fn xfer_sendfile_step(&mut self, s: Stream, index: u32) {
        let Ok(sock) = self.stream_ref(s).map(|st| st.fd) else { return };
        let mut budget = MAX_PER_WAKEUP;
        loop {
            let Some(t) = self.xfers.entries.get_mut(index as usize) else { return };
            if t.remaining == 0 {
                let sent = t.sent;
                return self.xfer_finish(s, index, Ok(sent));
            }
            let n = t.remaining.min(CHUNK);
            let probe = if t.offset + n > t.warmed_to { sys::cached(t.fd, t.offset, n) } else { Ok(true) };
            if probe.is_err_and(sys::probe_unsupported) && self.xfers.ring_reads {
                // The page cache cannot be asked here: the ring reads
                // instead, from this transfer on (it is at a step's
                // boundary, which read+send starts from).
                self.xfers.mode = Some(Mode::ReadSend);
                return self.xfer_read_send_step(s, index);
            }
            if probe != Ok(true) {
                // A page-cache miss (or a kernel that cannot say): read the
                // range in on the pool, then come back.
                match self.xfers.warm {
                    Some(warm) => warm(self, index),
                    None => self.xfer_finish(s, index, Err(Error::INVALID_STATE)),
                }
                return;
            }
            if budget == 0 {
                break;
            }
            match sys::sendfile(sock, t.fd, t.offset, n.min(budget) as usize) {
                // The file ended before `len`: what went out is the result.
                Ok(0) => {
                    let sent = t.sent;
                    return self.xfer_finish(s, index, Ok(sent));
                }
                Ok(k) => {
                    let k = k as u64;
                    t.offset += k;
                    t.remaining -= k.min(t.remaining);
                    t.sent += k;
                    budget -= k.min(budget);
                }
                Err(e) if e.is_would_block() => break,
                Err(e) if e.errno() == Some(sys::EINTR) => {}
                Err(e) => return self.xfer_finish(s, index, Err(e)),
            }
        }
        // The socket is full (or this wakeup's share is spent): wait until
        // it takes more.
        // SAFETY: a poll lends no memory.
        unsafe { self.xfer_submit(s, index, Op::Poll { fd: sock, events: sys::POLLOUT }) };
    }

    /// read+send mode: send the chunk's unsent part, else read the next.
    fn xfer_read_send_step(&mut self, s: Stream, index: u32) {
        let Ok(sock) = self.stream_ref(s).map(|st| st.fd) else { return };
        let spare = &mut self.xfers.bufs_spare;
        let Some(t) = self.xfers.entries.get_mut(index as usize) else { return };
        if t.buf_off < t.filled {
            // SAFETY (for the op below): `buf_off < filled <= buf.len()`.
            let ptr = unsafe { t.buf.as_ptr().add(t.buf_off) };
            let iov = [libc::iovec { iov_base: ptr as *mut _, iov_len: t.filled - t.buf_off }];
            // SAFETY: the chunk belongs to the transfer, which is neither
            // removed nor touched while its phase is `Op` (until this
            // send's final completion: a close waits for it).
            unsafe { self.xfer_submit(s, index, Op::Send { fd: sock, iov: &iov, fds: &[] }) };
            return;
        }
        if t.remaining == 0 {
            let sent = t.sent;
            return self.xfer_finish(s, index, Ok(sent));
        }
        if t.buf.is_empty() {
            t.buf = spare.pop().unwrap_or_else(|| vec![0; CHUNK as usize]);
        }
        let len = t.remaining.min(t.buf.len() as u64) as usize;
        let op = Op::FileRead { fd: t.fd, ptr: t.buf.as_mut_ptr(), len, offset: Some(t.offset) };
        // SAFETY: as for the send above: the chunk stays put until the
        // read's final completion.
        unsafe { self.xfer_submit(s, index, op) };
    }

    /// A completion of transfer's op (a `POLLOUT`, a ring read, a send) on
    /// open stream `s`.
    pub(crate) fn xfer_on_op(&mut self, s: Stream, token: Token, kind: OpKind, res: i32) {
        let Ok(st) = self.stream_state(s) else { return };
        if st.send_op != Some(token) {
            return;
        }
        st.send_op = None;
        let Some(index) = st.xfer else { return };
        let Some(t) = self.xfers.entries.get_mut(index as usize) else { return };
        t.phase = Phase::Running;
        if res < 0 {
            return self.xfer_finish(s, index, Err(Error::from_neg(res)));
        }
        let n = res as usize;
        match kind {
            OpKind::FileRead if n == 0 => {
                let sent = t.sent;
                return self.xfer_finish(s, index, Ok(sent));
            }
            OpKind::FileRead => {
                t.filled = n;
                t.buf_off = 0;
                t.offset += n as u64;
                t.remaining -= (n as u64).min(t.remaining);
            }
            OpKind::Send => {
                t.buf_off += n;
                t.sent += n as u64;
            }
            // `POLLOUT` (or `POLLERR`/`POLLHUP`, which the next sendfile
            // turns into its error).
            _ => {}
        }
        self.xfer_step(s, index);
    }
}
