//! Signal watchers (`uv_signal_t`): signals delivered as loop callbacks.
//!
//! The process-wide handler (in `sys::signal`) writes each signal number to
//! a pipe per loop; the loop reads the pipe and runs the watchers of that
//! number from its poll phase.

use crate::backend::{Driver, Op, Token};
use crate::error::{Error, Result};
use crate::event_loop::{Kind, Loop};
use crate::handle::*;
use crate::sys;
use std::os::fd::{AsRawFd, OwnedFd};
use std::rc::Rc;

pub(crate) struct SignalState<D> {
    signum: i32,
    cb: Option<Rc<IntFn<D>>>,
}

pub(crate) struct SignalPipeState {
    read_end: OwnedFd,
    _write_end: OwnedFd,
    buf: Box<[u8; 64]>,
    sys_slot: usize,
    /// The pipe read in flight.
    op: Option<Token>,
}

/// A loop's signal bookkeeping: its pipe handle and its watchers.
#[derive(Default)]
pub(crate) struct SignalRegistry {
    pipe: Option<HandleId>,
    sys_slot: usize,
    watchers: Vec<(HandleId, i32)>,
    scratch: Vec<(HandleId, i32)>,
}

impl<D> Loop<D> {
    /// Watches `signum`; `cb` runs on the loop each time it arrives.
    ///
    /// # Errors
    ///
    /// `EINVAL` for a signal number outside 1..=64, and for `SIGKILL` and `SIGSTOP`; the errno of
    /// setting up the loop's signal pipe (`EMFILE`); `ENOSPC` if the handle table is full.
    pub fn signal_start(&mut self, signum: i32, cb: &OnSignal<D>) -> Result<Signal> {
        let h = self.insert(Kind::Signal(SignalState { signum, cb: Some(cb.f.clone()) }))?;
        if let Err(e) = self.signal_watch(h, signum) {
            self.slots.remove(h.index as usize);
            return Err(e);
        }
        self.set_active(h, true);
        Ok(Signal(h))
    }

    /// Stops watching; the handle may be started again with `signal_restart`.
    ///
    /// # Errors
    ///
    /// [`Error::STALE_HANDLE`] if the handle is closed or closing.
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
    ///
    /// # Errors
    ///
    /// [`Error::STALE_HANDLE`] if the handle is closed or closing; as
    /// [`signal_start`](Self::signal_start) for `signum` (the handle is left stopped then).
    pub fn signal_restart(&mut self, s: Signal, signum: i32, cb: &OnSignal<D>) -> Result<()> {
        match &mut self.open_slot_mut(s.0)?.kind {
            Kind::Signal(st) => {
                st.signum = signum;
                st.cb = Some(cb.f.clone());
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

    /// The signal pipe's read finished: re-arm it, then run the watchers
    /// of each signal number read.
    pub(crate) fn on_signal_pipe_read(&mut self, h: HandleId, token: Token, res: i32, d: &mut D) {
        let Ok(Kind::SignalPipe(st)) = self.slot_mut(h).map(|s| &mut s.kind) else { return };
        debug_assert_eq!(st.op, Some(token));
        st.op = None;
        let n = if res > 0 { res as usize } else { 0 };
        let mut sigs = [0u8; 64];
        sigs[..n].copy_from_slice(&st.buf[..n]);
        if res > 0 || res == -libc::EAGAIN || res == -libc::EINTR {
            let _ = self.signal_pipe_arm(h);
        }
        for &signum in &sigs[..n] {
            self.signal_dispatch(signum as i32, d);
        }
    }

    pub(crate) fn signal_close(&mut self, h: HandleId) {
        self.signal_unwatch(h);
    }

    fn signal_dispatch(&mut self, signum: i32, d: &mut D) {
        let mut list = std::mem::take(&mut self.signals.scratch);
        list.clear();
        list.extend(self.signals.watchers.iter().filter(|(_, s)| *s == signum));
        for &(h, _) in &list {
            let cb = match self.slot(h).map(|s| &s.kind) {
                Ok(Kind::Signal(st)) if st.signum == signum && self.is_active(h) => st.cb.clone(),
                _ => None,
            };
            if let Some(cb) = cb {
                cb(self, d, h, signum);
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
        let st = SignalPipeState { read_end, _write_end: write_end, buf: Box::new([0; 64]), sys_slot, op: None };
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
        // final completion (the slot's `inflight` count guards it), and
        // nothing else touches it meanwhile (one read at a time: `op`).
        let token = unsafe { self.submit_op(h, Op::Read { fd, ptr, len: 64 })? };
        if let Ok(Kind::SignalPipe(st)) = self.slot_mut(h).map(|s| &mut s.kind) {
            st.op = Some(token);
        }
        Ok(())
    }

    pub(crate) fn signal_pipe_close(&mut self, h: HandleId) {
        if let Ok(slot) = self.slot(h) {
            if let Kind::SignalPipe(st) = &slot.kind {
                let (fd, sys_slot, op) = (st.read_end.as_raw_fd(), st.sys_slot, st.op);
                sys::signal::unregister(sys_slot);
                if let Some(token) = op {
                    self.driver.cancel(fd, token);
                }
            }
        }
    }

    pub(crate) fn signal_pipe_drop(&mut self, h: HandleId) {
        if let Ok(Kind::SignalPipe(st)) = self.slot(h).map(|s| &s.kind) {
            sys::signal::unregister(st.sys_slot);
        }
    }
}
