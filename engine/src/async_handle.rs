//! Async handles (`uv_async_t`): wake a loop from another thread.

use crate::backend::{Driver, Op, Token};
use crate::error::{Error, Result};
use crate::event_loop::{Kind, Loop};
use crate::handle::*;
use crate::sys;
use std::os::fd::{AsRawFd, OwnedFd};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

struct AsyncShared {
    fd: OwnedFd,
    pending: AtomicBool,
}

/// Wakes an [`Async`] handle's loop from any thread (`uv_async_send`).
/// Sends coalesce: many sends before the loop wakes give one callback.
#[derive(Clone)]
pub struct AsyncSender(Arc<AsyncShared>);

impl std::fmt::Debug for AsyncSender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AsyncSender").field("pending", &self.0.pending.load(Ordering::Relaxed)).finish()
    }
}

impl AsyncSender {
    /// Schedules the async callback; safe from any thread, never blocks.
    pub fn send(&self) {
        if !self.0.pending.swap(true, Ordering::AcqRel) {
            sys::eventfd_signal(self.0.fd.as_raw_fd());
        }
    }
}

pub(crate) struct AsyncState<D> {
    cb: Rc<HandleFn<D>>,
    shared: Arc<AsyncShared>,
    /// Where the eventfd read lands; boxed so its address is stable while
    /// the backend owns it.
    counter: Box<u64>,
    /// The eventfd read in flight.
    op: Option<Token>,
}

impl<D> Loop<D> {
    /// Creates an async handle and the sender that wakes it.
    ///
    /// # Errors
    ///
    /// The errno of `eventfd` (`EMFILE`, `ENFILE`); `ENOSPC` if the loop's handle or operation
    /// table is full. Nothing is left open on error.
    pub fn async_init(&mut self, cb: &OnAsync<D>) -> Result<(Async, AsyncSender)> {
        let shared = Arc::new(AsyncShared { fd: sys::eventfd()?, pending: AtomicBool::new(false) });
        let st = AsyncState { cb: cb.f.clone(), shared: shared.clone(), counter: Box::new(0), op: None };
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
        // this op's final completion (the slot's `inflight` count guards it),
        // and nothing else touches it meanwhile (one read at a time: `op`).
        let token = unsafe { self.submit_op(h, Op::Read { fd, ptr, len: 8 })? };
        if let Ok(Kind::Async(st)) = self.slot_mut(h).map(|s| &mut s.kind) {
            st.op = Some(token);
        }
        Ok(())
    }

    pub(crate) fn async_close(&mut self, h: HandleId) {
        if let Ok(Kind::Async(st)) = self.slot(h).map(|s| &s.kind) {
            if let Some(token) = st.op {
                let fd = st.shared.fd.as_raw_fd();
                self.driver.cancel(fd, token);
            }
        }
    }

    /// A `read` op finished: an async's eventfd, the signal pipe, or the
    /// work pool's completion eventfd.
    pub(crate) fn on_read_fd(&mut self, h: HandleId, token: Token, res: i32, d: &mut D) {
        let Ok(slot) = self.slot_mut(h) else { return };
        match &mut slot.kind {
            Kind::Async(st) => {
                debug_assert_eq!(st.op, Some(token));
                st.op = None;
                let cb = st.cb.clone();
                // Clear before the callback: a send racing with it either is
                // seen by this callback or schedules another wake-up.
                st.shared.pending.store(false, Ordering::Release);
                if self.async_arm(h).is_err() {
                    self.set_active(h, false);
                }
                if res >= 0 {
                    cb(self, d, h);
                }
            }
            Kind::SignalPipe(_) => self.on_signal_pipe_read(h, token, res, d),
            Kind::WorkWake(_) => self.on_work_wake(h, token, res, d),
            _ => {}
        }
    }
}
