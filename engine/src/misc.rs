//! Async handles, signal watchers, and idle/prepare/check hooks.

use crate::backend::{Driver, OpKind};
use crate::error::{Error, Result};
use crate::event_loop::{Kind, Loop};
use crate::handle::*;
use crate::sys;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

// ---- async --------------------------------------------------------------

struct AsyncShared {
    fd: OwnedFd,
    pending: AtomicBool,
}

/// Wakes an [`Async`] handle's loop from any thread (`uv_async_send`).
/// Sends coalesce: many sends before the loop wakes give one callback.
#[derive(Clone)]
pub struct AsyncSender(Arc<AsyncShared>);

impl AsyncSender {
    /// Schedules the async callback; safe from any thread, never blocks.
    pub fn send(&self) {
        if !self.0.pending.swap(true, Ordering::AcqRel) {
            sys::eventfd_signal(self.0.fd.as_raw_fd());
        }
    }
}

pub(crate) struct AsyncState {
    cb: OnAsync,
    shared: Arc<AsyncShared>,
    /// Where the eventfd read lands; boxed so its address is stable while
    /// the backend owns it.
    counter: Box<u64>,
}

// ---- signals ------------------------------------------------------------

pub(crate) struct SignalState {
    signum: i32,
    cb: Option<OnSignal>,
}

pub(crate) struct SignalPipeState {
    read_end: OwnedFd,
    _write_end: OwnedFd,
    buf: Box<[u8; 64]>,
    sys_slot: usize,
}

/// A loop's signal bookkeeping: its pipe handle and its watchers.
#[derive(Default)]
pub(crate) struct SignalRegistry {
    pipe: Option<HandleId>,
    sys_slot: usize,
    watchers: Vec<(HandleId, i32)>,
    scratch: Vec<(HandleId, i32)>,
}

// ---- hooks --------------------------------------------------------------

/// The three kinds of per-iteration hooks, in libuv's sense.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum HookKind {
    /// Runs every iteration before prepare; while one is active, poll does not block.
    Idle = 0,
    /// Runs right before polling for I/O.
    Prepare = 1,
    /// Runs right after polling for I/O.
    Check = 2,
}

pub(crate) struct HookState {
    pub kind: HookKind,
    pub cb: Option<OnHook>,
}

impl Loop {
    // ---- async ----------------------------------------------------------

    /// Creates an async handle and the sender that wakes it.
    pub fn async_init(&mut self, cb: &OnAsync) -> Result<(Async, AsyncSender)> {
        let shared = Arc::new(AsyncShared { fd: sys::eventfd()?, pending: AtomicBool::new(false) });
        let st = AsyncState { cb: cb.clone(), shared: shared.clone(), counter: Box::new(0) };
        let h = self.insert(Kind::Async(st))?;
        if let Err(e) = self.async_arm(h) {
            self.slots.remove(h.index as usize);
            return Err(e);
        }
        self.set_active(h, true);
        Ok((Async(h), AsyncSender(shared)))
    }

    fn async_arm(&mut self, h: HandleId) -> Result<()> {
        let slot = self.slot_mut(h)?;
        let Kind::Async(st) = &mut slot.kind else { return Err(Error::WRONG_TYPE) };
        let fd = st.shared.fd.as_raw_fd();
        let ptr = (&mut *st.counter as *mut u64).cast::<u8>();
        // SAFETY: `counter` is boxed inside the slot, which is freed only after
        // this op's final completion (the slot's `inflight` count guards it).
        unsafe { self.driver.read(fd, Loop::token(h, OpKind::Read), ptr, 8)? };
        self.slot_mut(h)?.inflight += 1;
        Ok(())
    }

    pub(crate) fn async_close(&mut self, h: HandleId) {
        if let Ok(slot) = self.slot(h) {
            if let (Kind::Async(st), true) = (&slot.kind, slot.inflight > 0) {
                let fd = st.shared.fd.as_raw_fd();
                self.driver.cancel(fd, Loop::token(h, OpKind::Read));
            }
        }
    }

    /// A `read` op finished: an async's eventfd or the signal pipe.
    pub(crate) fn on_read_fd(&mut self, h: HandleId, res: i32) {
        let Ok(slot) = self.slot(h) else { return };
        match &slot.kind {
            Kind::Async(st) => {
                let cb = st.cb.clone();
                // Clear before the callback: a send racing with it either is
                // seen by this callback or schedules another wake-up.
                st.shared.pending.store(false, Ordering::Release);
                if self.async_arm(h).is_err() {
                    self.set_active(h, false);
                }
                if res >= 0 {
                    invoke!(&cb, self, Async(h));
                }
            }
            Kind::SignalPipe(st) => {
                let n = if res > 0 { res as usize } else { 0 };
                let mut sigs = [0u8; 64];
                sigs[..n].copy_from_slice(&st.buf[..n]);
                if res > 0 || res == -libc::EAGAIN || res == -libc::EINTR {
                    let _ = self.signal_pipe_arm(h);
                }
                for &signum in &sigs[..n] {
                    self.signal_dispatch(signum as i32);
                }
            }
            _ => {}
        }
    }

    // ---- signals --------------------------------------------------------

    /// Watches `signum`; `cb` runs on the loop each time it arrives.
    pub fn signal_start(&mut self, signum: i32, cb: &OnSignal) -> Result<Signal> {
        let h = self.insert(Kind::Signal(SignalState { signum, cb: Some(cb.clone()) }))?;
        if let Err(e) = self.signal_watch(h, signum) {
            self.slots.remove(h.index as usize);
            return Err(e);
        }
        self.set_active(h, true);
        Ok(Signal(h))
    }

    /// Stops watching; the handle may be started again with `signal_restart`.
    pub fn signal_stop(&mut self, s: Signal) -> Result<()> {
        match &self.open_slot_mut(s.0)?.kind {
            Kind::Signal(_) => {}
            _ => return Err(Error::WRONG_TYPE),
        }
        self.signal_unwatch(s.0);
        self.set_active(s.0, false);
        Ok(())
    }

    /// Starts a stopped signal handle again, for `signum` with `cb`.
    pub fn signal_restart(&mut self, s: Signal, signum: i32, cb: &OnSignal) -> Result<()> {
        match &mut self.open_slot_mut(s.0)?.kind {
            Kind::Signal(st) => {
                st.signum = signum;
                st.cb = Some(cb.clone());
            }
            _ => return Err(Error::WRONG_TYPE),
        }
        self.signal_unwatch(s.0);
        self.signal_watch(s.0, signum)?;
        self.set_active(s.0, true);
        Ok(())
    }

    fn signal_watch(&mut self, h: HandleId, signum: i32) -> Result<()> {
        if !(1..=sys::signal::MAX_SIGNAL).contains(&signum) {
            return Err(Error::EINVAL);
        }
        self.signal_pipe_ensure()?;
        if !self.signals.watchers.iter().any(|(_, s)| *s == signum) {
            sys::signal::watch(self.signals.sys_slot, signum)?;
        }
        self.signals.watchers.push((h, signum));
        Ok(())
    }

    fn signal_unwatch(&mut self, h: HandleId) {
        let Some(i) = self.signals.watchers.iter().position(|(x, _)| *x == h) else { return };
        let (_, signum) = self.signals.watchers.swap_remove(i);
        if !self.signals.watchers.iter().any(|(_, s)| *s == signum) {
            sys::signal::unwatch(self.signals.sys_slot, signum);
        }
        if self.signals.watchers.is_empty() {
            if let Some(pipe) = self.signals.pipe.take() {
                let _ = self.close(pipe, None);
            }
        }
    }

    pub(crate) fn signal_close(&mut self, h: HandleId) {
        self.signal_unwatch(h);
    }

    fn signal_dispatch(&mut self, signum: i32) {
        let mut list = std::mem::take(&mut self.signals.scratch);
        list.clear();
        list.extend(self.signals.watchers.iter().filter(|(_, s)| *s == signum));
        for &(h, _) in &list {
            let cb = match self.slot(h).map(|s| &s.kind) {
                Ok(Kind::Signal(st)) if st.signum == signum && self.is_active(h) => st.cb.clone(),
                _ => None,
            };
            if let Some(cb) = cb {
                invoke!(&cb, self, Signal(h), signum);
            }
        }
        self.signals.scratch = list;
    }

    fn signal_pipe_ensure(&mut self) -> Result<()> {
        if self.signals.pipe.is_some() {
            return Ok(());
        }
        let (read_end, write_end) = sys::pipe()?;
        let sys_slot = sys::signal::register(write_end.as_raw_fd())?;
        let st = SignalPipeState { read_end, _write_end: write_end, buf: Box::new([0; 64]), sys_slot };
        let h = match self.insert(Kind::SignalPipe(st)) {
            Ok(h) => h,
            Err(e) => {
                sys::signal::unregister(sys_slot);
                return Err(e);
            }
        };
        self.set_internal(h);
        self.signals.pipe = Some(h);
        self.signals.sys_slot = sys_slot;
        if let Err(e) = self.signal_pipe_arm(h) {
            self.signals.pipe = None;
            let _ = self.close(h, None);
            return Err(e);
        }
        Ok(())
    }

    fn signal_pipe_arm(&mut self, h: HandleId) -> Result<()> {
        let slot = self.slot_mut(h)?;
        let Kind::SignalPipe(st) = &mut slot.kind else { return Err(Error::WRONG_TYPE) };
        let fd = st.read_end.as_raw_fd();
        let ptr = st.buf.as_mut_ptr();
        // SAFETY: `buf` is boxed inside the slot, freed only after this op's
        // final completion (the slot's `inflight` count guards it).
        unsafe { self.driver.read(fd, Loop::token(h, OpKind::Read), ptr, 64)? };
        self.slot_mut(h)?.inflight += 1;
        Ok(())
    }

    pub(crate) fn signal_pipe_close(&mut self, h: HandleId) {
        if let Ok(slot) = self.slot(h) {
            if let Kind::SignalPipe(st) = &slot.kind {
                let (fd, sys_slot, busy) = (st.read_end.as_raw_fd(), st.sys_slot, slot.inflight > 0);
                sys::signal::unregister(sys_slot);
                if busy {
                    self.driver.cancel(fd, Loop::token(h, OpKind::Read));
                }
            }
        }
    }

    pub(crate) fn signal_pipe_drop(&mut self, h: HandleId) {
        if let Ok(Kind::SignalPipe(st)) = self.slot(h).map(|s| &s.kind) {
            sys::signal::unregister(st.sys_slot);
        }
    }

    // ---- hooks ----------------------------------------------------------

    /// A stopped idle, prepare or check hook.
    pub fn hook_init(&mut self, kind: HookKind) -> Result<Hook> {
        Ok(Hook(self.insert(Kind::Hook(HookState { kind, cb: None }))?))
    }

    /// Starts the hook: `cb` runs once per loop iteration in its phase.
    pub fn hook_start(&mut self, h: Hook, cb: &OnHook) -> Result<()> {
        let kind = match &mut self.open_slot_mut(h.0)?.kind {
            Kind::Hook(st) => {
                st.cb = Some(cb.clone());
                st.kind
            }
            _ => return Err(Error::WRONG_TYPE),
        };
        if !self.hooks[kind as usize].contains(&h.0) {
            self.hooks[kind as usize].push(h.0);
        }
        self.set_active(h.0, true);
        Ok(())
    }

    pub fn hook_stop(&mut self, h: Hook) -> Result<()> {
        let kind = match &self.open_slot_mut(h.0)?.kind {
            Kind::Hook(st) => st.kind,
            _ => return Err(Error::WRONG_TYPE),
        };
        self.hooks[kind as usize].retain(|x| *x != h.0);
        self.set_active(h.0, false);
        Ok(())
    }
}
