//! The loop: handle slots, libuv's phases, completion dispatch, and close.
//!
//! Phase order per iteration, as libuv: update time, timers, pending,
//! idle, prepare, poll (I/O completions), check, closing.
//!
//! Re-entrancy: user callbacks receive `&mut Loop` and may do anything,
//! including closing the handle whose callback is running. The loop never
//! holds a borrow of a slot across a callback (it clones the callback's `Rc`
//! first) and re-looks-up the slot afterwards, the way libuv re-checks
//! state after every callback. Close is deferred: a closed handle's slot lives
//! on, flagged closing, until the closing phase finds no operation of it
//! still owned by the kernel; only then is the slot freed and its close
//! callback run.

use crate::backend::{self, AnyDriver, Backend, Completion, Driver, OpKind, PoolConfig, Token};
use crate::error::{Error, Result};
use crate::handle::*;
use crate::misc::{AsyncState, HookKind, HookState, SignalPipeState, SignalState};
use crate::stream::{StreamParts, StreamState};
use crate::timer::{TimerHeap, TimerState};
use slab::Slab;
use std::collections::VecDeque;
use std::rc::Rc;

/// How [`Loop::run`] runs (`uv_run_mode`).
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum RunMode {
    /// Until no ref'd active handle, request or closing handle remains, or `stop`.
    Default,
    /// One iteration, blocking for I/O if there is nothing else to do.
    Once,
    /// One iteration without blocking.
    NoWait,
}

/// Options for [`Loop::with_options`].
#[derive(Clone, Debug)]
pub struct LoopOptions {
    pub backend: Backend,
    pub pool: PoolConfig,
    /// Completions taken per poll (bounded work per wakeup).
    pub completions_per_poll: usize,
}

impl Default for LoopOptions {
    fn default() -> Self {
        LoopOptions { backend: Backend::Auto, pool: PoolConfig::default(), completions_per_poll: 1024 }
    }
}

pub(crate) const F_REF: u8 = 1;
pub(crate) const F_ACTIVE: u8 = 2;
pub(crate) const F_CLOSING: u8 = 4;
/// Internal handles (the signal pipe) never count toward liveness.
pub(crate) const F_INTERNAL: u8 = 8;

// Streams dominate the size; boxing them would cost an allocation per
// connection, while slab slots are reused, so the size is paid once.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Kind {
    Stream(StreamState),
    Timer(TimerState),
    Async(AsyncState),
    Signal(SignalState),
    SignalPipe(SignalPipeState),
    Hook(HookState),
    Process(crate::process::ProcessState),
}

pub(crate) struct Slot {
    pub generation: u32,
    pub flags: u8,
    /// Operations owned by the backend (submitted, final completion pending).
    pub inflight: u32,
    pub data: usize,
    pub close_cb: Option<OnClose>,
    pub kind: Kind,
}

/// Deferred work for the pending phase.
#[derive(Copy, Clone, Debug)]
pub(crate) enum Pending {
    /// Complete writes whose bytes are all sent (zero-length writes), start
    /// a due shutdown.
    Writes(Stream),
    /// Deliver reads stashed while the stream was not reading.
    Stash(Stream),
    /// A shutdown finished with this status code (0 = ok, else errno).
    ShutdownDone(Stream, i32),
    /// A listener's accept op has ended after `listen_stop`.
    ListenStopped(Stream),
}

/// A libuv-style event loop. See the crate docs.
pub struct Loop {
    pub(crate) driver: AnyDriver,
    pub(crate) pool: Rc<backend::BufPool>,
    pub(crate) slots: Slab<Slot>,
    next_generation: u32,
    pub(crate) timers: TimerHeap,
    pub(crate) now_ms: u64,
    start_ms: u64,
    pub(crate) pending: VecDeque<Pending>,
    closing: Vec<HandleId>,
    closing_scratch: Vec<HandleId>,
    pub(crate) hooks: [Vec<HandleId>; 3],
    hook_scratch: Vec<HandleId>,
    completions: Vec<Completion>,
    /// Ref'd, active, non-internal handles.
    active_handles: usize,
    /// In-flight requests (writes, connects, shutdowns).
    pub(crate) active_reqs: usize,
    stop_flag: bool,
    running: bool,
    fallback_reason: Option<String>,
    pub(crate) parts_spare: Vec<StreamParts>,
    /// Listeners waiting out an accept back-off: (deadline ms, stream).
    pub(crate) accept_retry: Vec<(u64, Stream)>,
    pub(crate) signals: crate::misc::SignalRegistry,
    pub(crate) listen_hook: Option<Box<dyn crate::stream::ListenHook>>,
    user: Option<Box<dyn std::any::Any>>,
    iterations: u64,
}

impl Loop {
    /// A loop on the backend named by `UVRING_BACKEND` (default `auto`).
    pub fn new() -> Result<Loop> {
        Loop::with_options(LoopOptions { backend: Backend::from_env()?, ..LoopOptions::default() })
    }

    /// A loop on the given backend.
    pub fn with_backend(backend: Backend) -> Result<Loop> {
        Loop::with_options(LoopOptions { backend, ..LoopOptions::default() })
    }

    pub fn with_options(opts: LoopOptions) -> Result<Loop> {
        let (driver, fallback_reason) = backend::open(opts.backend, opts.pool)?;
        let pool = driver.pool().clone();
        let now = crate::sys::monotonic_ms();
        Ok(Loop {
            driver,
            pool,
            slots: Slab::with_capacity(1024),
            next_generation: 1,
            timers: TimerHeap::with_capacity(256),
            now_ms: now,
            start_ms: now,
            pending: VecDeque::with_capacity(256),
            closing: Vec::with_capacity(256),
            closing_scratch: Vec::with_capacity(256),
            hooks: [Vec::new(), Vec::new(), Vec::new()],
            hook_scratch: Vec::new(),
            completions: Vec::with_capacity(opts.completions_per_poll.max(64)),
            active_handles: 0,
            active_reqs: 0,
            stop_flag: false,
            running: false,
            fallback_reason,
            parts_spare: Vec::new(),
            accept_retry: Vec::new(),
            signals: crate::misc::SignalRegistry::default(),
            listen_hook: None,
            user: None,
            iterations: 0,
        })
    }

    /// The backend this loop runs on (never `Auto`).
    pub fn backend(&self) -> Backend {
        self.driver.kind()
    }

    /// When `Auto` fell back to epoll: why io_uring was not taken.
    pub fn fallback_reason(&self) -> Option<&str> {
        self.fallback_reason.as_deref()
    }

    /// The loop's cached time in milliseconds (updated once per iteration).
    pub fn now(&self) -> u64 {
        self.now_ms - self.start_ms
    }

    /// Refreshes the cached time.
    pub fn update_time(&mut self) {
        self.now_ms = crate::sys::monotonic_ms();
    }

    /// Number of completed loop iterations (for tests that check for spinning).
    pub fn iterations(&self) -> u64 {
        self.iterations
    }

    /// Makes `run` return after the current iteration.
    pub fn stop(&mut self) {
        self.stop_flag = true;
    }

    /// Whether `run` would keep going: ref'd active handles, in-flight
    /// requests, or closing handles.
    pub fn alive(&self) -> bool {
        self.active_handles > 0 || self.active_reqs > 0 || !self.closing.is_empty()
    }

    /// Live handles, internal ones excluded (tests end with zero).
    pub fn handle_count(&self) -> usize {
        self.slots.iter().filter(|(_, s)| s.flags & F_INTERNAL == 0).count()
    }

    /// Stores a value for user code, reachable from every callback.
    pub fn set_user_data<T: 'static>(&mut self, value: T) {
        self.user = Some(Box::new(value));
    }

    /// The value stored with [`set_user_data`](Self::set_user_data), if of type `T`.
    pub fn user_data<T: 'static>(&mut self) -> Option<&mut T> {
        self.user.as_mut()?.downcast_mut()
    }

    /// Runs the loop. Returns whether it is still alive. Calling `run` from
    /// inside a callback is refused with `INVALID_STATE`.
    pub fn run(&mut self, mode: RunMode) -> Result<bool> {
        if self.running {
            return Err(Error::INVALID_STATE);
        }
        self.running = true;
        let res = self.run_inner(mode);
        self.running = false;
        res
    }

    fn run_inner(&mut self, mode: RunMode) -> Result<bool> {
        self.update_time();
        let mut alive = self.alive();
        if !alive {
            self.run_timers();
        }
        while alive && !self.stop_flag {
            self.update_time();
            self.run_timers();
            let ran_pending = self.run_pending();
            self.run_hooks(HookKind::Idle);
            self.run_hooks(HookKind::Prepare);
            let timeout = if (mode == RunMode::Once && !ran_pending) || mode == RunMode::Default {
                self.poll_timeout()
            } else {
                0
            };
            self.poll(timeout)?;
            self.run_hooks(HookKind::Check);
            self.run_closing();
            self.iterations += 1;
            if mode == RunMode::Once {
                // libuv runs due timers once more after a blocking poll in Once mode.
                self.update_time();
                self.run_timers();
            }
            alive = self.alive();
            if mode != RunMode::Default {
                break;
            }
        }
        self.stop_flag = false;
        Ok(alive)
    }

    fn poll_timeout(&self) -> i64 {
        if self.stop_flag
            || !self.pending.is_empty()
            || !self.hooks[HookKind::Idle as usize].is_empty()
            || !self.alive()
        {
            return 0;
        }
        // A closing handle with nothing in the kernel finishes in this
        // iteration's closing phase: don't block before it. Ones still waiting
        // for the backend's final completions do block, for those completions.
        if self.closing.iter().any(|h| self.slot(*h).is_ok_and(|s| s.inflight == 0)) {
            return 0;
        }
        let mut deadline = self.timers.next_due();
        for &(d, _) in &self.accept_retry {
            deadline = Some(deadline.map_or(d, |t: u64| t.min(d)));
        }
        match deadline {
            Some(due) => due.saturating_sub(self.now_ms) as i64,
            None => -1,
        }
    }

    fn poll(&mut self, timeout: i64) -> Result<()> {
        let mut completions = std::mem::take(&mut self.completions);
        completions.clear();
        let res = self.driver.poll(timeout, &mut completions);
        self.update_time();
        // Keep the buffer memory alive across callbacks even if user code
        // replaces the loop value (`mem::replace`) from inside one.
        let pool = self.pool.clone();
        for c in completions.iter() {
            self.dispatch(*c, &pool);
        }
        completions.clear();
        self.completions = completions;
        res
    }

    /// Allocates a slot for a new handle (ref'd, inactive).
    pub(crate) fn insert(&mut self, kind: Kind) -> Result<HandleId> {
        if self.slots.len() >= Token::MAX_INDEX {
            return Err(Error::from_errno(libc::ENOSPC));
        }
        let generation = self.next_generation;
        self.next_generation = self.next_generation.wrapping_add(1).max(1);
        let index = self.slots.insert(Slot { generation, flags: F_REF, inflight: 0, data: 0, close_cb: None, kind });
        Ok(HandleId { index: index as u32, generation })
    }

    pub(crate) fn slot(&self, h: HandleId) -> Result<&Slot> {
        match self.slots.get(h.index as usize) {
            Some(s) if s.generation == h.generation => Ok(s),
            _ => Err(Error::STALE_HANDLE),
        }
    }

    pub(crate) fn slot_mut(&mut self, h: HandleId) -> Result<&mut Slot> {
        match self.slots.get_mut(h.index as usize) {
            Some(s) if s.generation == h.generation => Ok(s),
            _ => Err(Error::STALE_HANDLE),
        }
    }

    /// A live (not closing) slot.
    pub(crate) fn open_slot_mut(&mut self, h: HandleId) -> Result<&mut Slot> {
        let s = self.slot_mut(h)?;
        if s.flags & F_CLOSING != 0 {
            return Err(Error::STALE_HANDLE);
        }
        Ok(s)
    }

    pub(crate) fn token(h: HandleId, kind: OpKind) -> Token {
        Token::new(h.index as usize, h.generation, kind)
    }

    /// Marks a handle active or inactive, keeping the liveness count.
    pub(crate) fn set_active(&mut self, h: HandleId, on: bool) {
        let _ = self.set_flag(h, F_ACTIVE, on);
    }

    /// Sets or clears `flag` (`F_ACTIVE` or `F_REF`), keeping the count of
    /// handles that keep the loop alive: ref'd, active and not internal.
    fn set_flag(&mut self, h: HandleId, flag: u8, on: bool) -> Result<()> {
        let keeps_alive = |flags: u8| (flags & (F_REF | F_ACTIVE)) == (F_REF | F_ACTIVE) && flags & F_INTERNAL == 0;
        let s = self.slot_mut(h)?;
        let before = keeps_alive(s.flags);
        if on {
            s.flags |= flag;
        } else {
            s.flags &= !flag;
        }
        match (before, keeps_alive(s.flags)) {
            (false, true) => self.active_handles += 1,
            (true, false) => self.active_handles -= 1,
            _ => {}
        }
        Ok(())
    }

    pub(crate) fn set_internal(&mut self, h: HandleId) {
        if let Ok(s) = self.slot_mut(h) {
            debug_assert!(s.flags & F_ACTIVE == 0);
            s.flags |= F_INTERNAL;
        }
    }

    /// Whether the handle is active (reading, listening, started, ...).
    pub fn is_active(&self, h: impl Into<HandleId>) -> bool {
        self.slot(h.into()).is_ok_and(|s| s.flags & F_ACTIVE != 0 && s.flags & F_CLOSING == 0)
    }

    /// Whether `close` was called on the handle (and its close callback has
    /// not yet run).
    pub fn is_closing(&self, h: impl Into<HandleId>) -> bool {
        self.slot(h.into()).is_ok_and(|s| s.flags & F_CLOSING != 0)
    }

    /// Whether the id names a live handle (not yet closed).
    pub fn is_live(&self, h: impl Into<HandleId>) -> bool {
        self.slot(h.into()).is_ok()
    }

    /// Lets the handle keep the loop alive while active (the default).
    pub fn ref_handle(&mut self, h: impl Into<HandleId>) -> Result<()> {
        self.set_ref(h.into(), true)
    }

    /// Stops the handle from keeping the loop alive.
    pub fn unref_handle(&mut self, h: impl Into<HandleId>) -> Result<()> {
        self.set_ref(h.into(), false)
    }

    /// Whether the handle is ref'd.
    pub fn has_ref(&self, h: impl Into<HandleId>) -> Result<bool> {
        Ok(self.slot(h.into())?.flags & F_REF != 0)
    }

    fn set_ref(&mut self, h: HandleId, on: bool) -> Result<()> {
        self.set_flag(h, F_REF, on)
    }

    /// Stores a word of user data with the handle (libuv's `data`).
    pub fn set_data(&mut self, h: impl Into<HandleId>, data: usize) -> Result<()> {
        self.slot_mut(h.into())?.data = data;
        Ok(())
    }

    /// The handle's user data word.
    pub fn data(&self, h: impl Into<HandleId>) -> Result<usize> {
        Ok(self.slot(h.into())?.data)
    }

    /// Closes a handle. Its operations stop now; in-flight writes complete
    /// with `ECANCELED`; `cb` runs in a later closing phase, after every
    /// buffer the kernel held has come back. Closing twice is an error.
    pub fn close(&mut self, h: impl Into<HandleId>, cb: Option<&OnClose>) -> Result<()> {
        let h = h.into();
        let s = self.slot_mut(h)?;
        if s.flags & F_CLOSING != 0 {
            return Err(Error::INVALID_STATE);
        }
        s.close_cb = cb.cloned();
        self.set_active(h, false);
        let s = self.slot_mut(h)?;
        s.flags |= F_CLOSING;
        // Internal handles never counted; closing ones count via `closing`.
        match &s.kind {
            Kind::Stream(_) => self.stream_close(Stream(h)),
            Kind::Timer(_) => self.timers.remove(h),
            Kind::Async(_) => self.async_close(h),
            Kind::Signal(_) => self.signal_close(h),
            Kind::SignalPipe(_) => self.signal_pipe_close(h),
            Kind::Hook(st) => {
                let k = st.kind as usize;
                self.hooks[k].retain(|x| *x != h);
            }
            Kind::Process(_) => self.process_close(h),
        }
        self.closing.push(h);
        Ok(())
    }

    fn run_closing(&mut self) {
        if self.closing.is_empty() {
            return;
        }
        let mut list = std::mem::take(&mut self.closing_scratch);
        std::mem::swap(&mut list, &mut self.closing);
        for h in list.drain(..) {
            let ready = self.slot(h).is_ok_and(|s| s.inflight == 0);
            if !ready {
                if self.slot(h).is_ok() {
                    self.closing.push(h);
                }
                continue;
            }
            self.finish_close(h);
        }
        self.closing_scratch = list;
    }

    /// Frees a closed handle whose kernel operations are all done, then runs
    /// the deferred callbacks: cancelled writes first, then the close callback.
    fn finish_close(&mut self, h: HandleId) {
        if matches!(self.slot(h).map(|s| &s.kind), Ok(Kind::Stream(_))) {
            self.stream_finish_close(Stream(h));
        }
        if matches!(self.slot(h).map(|s| &s.kind), Ok(Kind::Process(_))) {
            self.process_finish_close(h);
        }
        let Ok(s) = self.slot_mut(h) else { return };
        let cb = s.close_cb.take();
        let slot = self.slots.remove(h.index as usize);
        if let Kind::Stream(st) = slot.kind {
            self.parts_spare.push(st.into_parts());
        }
        if let Some(cb) = cb {
            invoke!(&cb, self, h);
        }
    }

    fn run_pending(&mut self) -> bool {
        let n = self.pending.len();
        for _ in 0..n {
            let Some(p) = self.pending.pop_front() else { break };
            match p {
                Pending::Writes(s) => self.complete_writes(s),
                Pending::Stash(s) => self.deliver_stash(s),
                Pending::ShutdownDone(s, code) => self.shutdown_done(s, code),
                Pending::ListenStopped(s) => self.listen_stopped(s),
            }
        }
        n > 0
    }

    fn run_hooks(&mut self, kind: HookKind) {
        if self.hooks[kind as usize].is_empty() {
            return;
        }
        let mut list = std::mem::take(&mut self.hook_scratch);
        list.clear();
        list.extend_from_slice(&self.hooks[kind as usize]);
        for &h in &list {
            // A hook stopped by an earlier callback in this round does not run.
            if !self.hooks[kind as usize].contains(&h) {
                continue;
            }
            let cb = match self.slot(h).map(|s| &s.kind) {
                Ok(Kind::Hook(st)) => st.cb.clone(),
                _ => None,
            };
            if let Some(cb) = cb {
                invoke!(&cb, self, h);
            }
        }
        self.hook_scratch = list;
    }

    fn run_timers(&mut self) {
        // Timers (re)started by the callbacks below wait for the next
        // iteration, even when already due.
        let started_by = self.timers.last_seq();
        while let Some(h) = self.timers.pop_due_started_by(self.now_ms, started_by) {
            let (cb, repeat) = match self.slot(h).map(|s| &s.kind) {
                Ok(Kind::Timer(t)) => (t.cb.clone(), t.repeat),
                _ => continue,
            };
            if repeat > 0 {
                let due = self.now_ms + repeat;
                self.timers.insert(h, due);
            } else {
                self.set_active(h, false);
            }
            if let Some(cb) = cb {
                invoke!(&cb, self, Timer(h));
            }
        }
        // Accept back-off deadlines ride on the timer phase.
        let now = self.now_ms;
        let mut i = 0;
        while i < self.accept_retry.len() {
            if self.accept_retry[i].0 <= now {
                let (_, s) = self.accept_retry.swap_remove(i);
                self.accept_resume(s);
            } else {
                i += 1;
            }
        }
    }

    /// Routes one completion to its handle. Completions for handles that are
    /// gone release what they carry (an fd, a buffer) and are dropped.
    fn dispatch(&mut self, c: Completion, _pool: &Rc<backend::BufPool>) {
        let h = HandleId { index: c.token.index() as u32, generation: c.token.generation() };
        let Ok(slot) = self.slot_mut(h) else {
            self.release(c);
            return;
        };
        if !c.more {
            slot.inflight = slot.inflight.saturating_sub(1);
        }
        let closing = slot.flags & F_CLOSING != 0;
        let Some(kind) = c.token.kind() else {
            self.release(c);
            return;
        };
        if closing {
            self.release(c);
            if kind == OpKind::Send {
                self.stream_send_done_closing(Stream(h), c.res);
            }
            return;
        }
        match kind {
            OpKind::Accept => self.on_accept(Stream(h), c),
            OpKind::Recv | OpKind::RecvMsg => self.on_recv(Stream(h), c),
            OpKind::Send => self.on_send(Stream(h), c.res),
            OpKind::Connect => self.on_connect(Stream(h), c.res),
            OpKind::Read => self.on_read_fd(h, c.res),
            OpKind::PollIn => self.on_poll_in(h, c.res),
        }
    }

    /// Releases what a dropped completion carries.
    pub(crate) fn release(&mut self, c: Completion) {
        if let Some(id) = c.buf {
            self.discard_recv_buf(c.token.kind(), id, c.res);
        }
        if c.token.kind() == Some(OpKind::Accept) && c.res >= 0 {
            crate::sys::close(c.res);
        }
    }

    /// Gives back receive buffer `id` holding an unread result of `res`
    /// bytes. A recvmsg record in it may carry fds (`SCM_RIGHTS`) that now
    /// nobody will accept: they are closed first, so none leaks.
    pub(crate) fn discard_recv_buf(&mut self, kind: Option<OpKind>, id: u16, res: i32) {
        if kind == Some(OpKind::RecvMsg) && res > 0 {
            // SAFETY: buffer `id` was lent to the loop by its completion and
            // is recycled only below; nothing writes it meanwhile.
            let data = unsafe { self.pool.slice(id, res as usize) };
            if let Some(rec) = backend::parse_recvmsg(data) {
                crate::sys::socket::for_each_rights_fd(rec.control, crate::sys::close);
            }
        }
        self.driver.recycle(id);
    }

    pub(crate) fn push_pending(&mut self, p: Pending) {
        self.pending.push_back(p);
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        // Close every fd the loop still owns; the backend (and the ring with
        // it) goes after, taking in-flight operations with it.
        let ids: Vec<HandleId> =
            self.slots.iter().map(|(i, s)| HandleId { index: i as u32, generation: s.generation }).collect();
        for h in ids {
            self.drop_handle_resources(h);
        }
    }
}

impl Loop {
    fn drop_handle_resources(&mut self, h: HandleId) {
        let Ok(s) = self.slot_mut(h) else { return };
        match &mut s.kind {
            Kind::Stream(st) => st.drop_fds(),
            Kind::SignalPipe(_) => self.signal_pipe_drop(h),
            Kind::Signal(_) => self.signal_close(h),
            _ => {}
        }
    }
}
