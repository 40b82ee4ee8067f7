//! Poll watchers (`uv_poll_t`): readiness of an fd the loop does not own
//! (a socket or pipe of another library, a device), reported as loop
//! callbacks. Level-triggered, as libuv's on Linux: while the fd stays
//! ready, the callback runs again on each iteration.
//!
//! Both backends poll with a one-shot operation (`POLL_ADD` on io_uring, a
//! one-shot interest on epoll) that the loop arms again after each event;
//! stopping or closing cancels it, and the handle's slot lives until the
//! cancelled operation has come back. Changing the events cancels the op in
//! flight and arms a new one at once, so for a while two polls of one
//! watcher may be in flight: the watcher knows the one it wants by its
//! token and drops the cancelled one's completion. The loop never reads,
//! writes or closes the fd: close the watcher before closing the fd.

use crate::backend::{Driver, Op, Token};
use crate::error::{Error, Result};
use crate::event_loop::{Kind, Loop};
use crate::handle::*;
use std::os::fd::RawFd;
use std::rc::Rc;

pub(crate) struct PollState<D> {
    pub fd: RawFd,
    /// The events asked for (`PollEvents` bits); empty while stopped.
    events: PollEvents,
    cb: Option<Rc<PollFn<D>>>,
    /// The poll op in the backend that asks for `events`. Ops cancelled by
    /// a stop or a change of events may still be in flight too; their
    /// completions carry other tokens and are dropped.
    op: Option<Token>,
}

/// `PollEvents` to `poll(2)` events.
fn to_poll_bits(e: PollEvents) -> u32 {
    let mut bits = 0;
    if e.contains(PollEvents::READABLE) {
        bits |= libc::POLLIN as u32;
    }
    if e.contains(PollEvents::WRITABLE) {
        bits |= libc::POLLOUT as u32;
    }
    if e.contains(PollEvents::DISCONNECT) {
        bits |= libc::POLLRDHUP as u32;
    }
    if e.contains(PollEvents::PRIORITIZED) {
        bits |= libc::POLLPRI as u32;
    }
    bits
}

/// `poll(2)` revents to the `PollEvents` asked for. An error or hang-up is
/// reported as every direction asked for (as libuv does), so the user's
/// next read or write meets the error.
fn from_revents(revents: u32, asked: PollEvents) -> PollEvents {
    let mut e = PollEvents::empty();
    let err = revents & (libc::POLLERR | libc::POLLHUP) as u32 != 0;
    if revents & libc::POLLIN as u32 != 0 || err {
        e |= PollEvents::READABLE;
    }
    if revents & libc::POLLOUT as u32 != 0 || err {
        e |= PollEvents::WRITABLE;
    }
    if revents & libc::POLLRDHUP as u32 != 0 || revents & libc::POLLHUP as u32 != 0 {
        e |= PollEvents::DISCONNECT;
    }
    if revents & libc::POLLPRI as u32 != 0 {
        e |= PollEvents::PRIORITIZED;
    }
    PollEvents(e.0 & asked.0)
}

impl<D> Loop<D> {
    /// A stopped watcher of `fd` (`uv_poll_init`). The loop never closes
    /// `fd`; it must stay open until the watcher is closed.
    ///
    /// # Errors
    ///
    /// `EBADF` for a negative fd; `ENOSPC` if the handle table is full.
    pub fn poll_init(&mut self, fd: RawFd) -> Result<Poll> {
        if fd < 0 {
            return Err(Error::EBADF);
        }
        let st = PollState { fd, events: PollEvents::empty(), cb: None, op: None };
        Ok(Poll(self.insert(Kind::Poll(st))?))
    }

    fn poll_state(&mut self, p: Poll) -> Result<&mut PollState<D>> {
        match &mut self.open_slot_mut(p.0)?.kind {
            Kind::Poll(st) => Ok(st),
            _ => Err(Error::WRONG_TYPE),
        }
    }

    /// Starts (or changes) watching for `events` (`uv_poll_start`); `cb`
    /// runs with the events that occurred, or with an error (the watcher is
    /// stopped then). `EINVAL` for empty `events`; an fd the backend cannot
    /// poll (closed, a regular file on epoll) fails here, at once.
    ///
    /// # Errors
    ///
    /// `EINVAL` for empty `events`; [`Error::STALE_HANDLE`] if the watcher is closed or closing;
    /// the backend's refusal of the fd (`EPERM` from `epoll_ctl` for a regular file, `EBADF` for a
    /// closed fd); `ENOSPC` if the operation table is full. Errors found later reach `cb`, and stop
    /// the watcher.
    pub fn poll_start(&mut self, p: Poll, events: PollEvents, cb: &OnPoll<D>) -> Result<()> {
        if events.is_empty() {
            return Err(Error::EINVAL);
        }
        let st = self.poll_state(p)?;
        let changed = st.events != events;
        st.events = events;
        st.cb = Some(cb.f.clone());
        if changed {
            // The op in flight asks for other events: cancel it, and arm
            // one for the new events below, now.
            if let Some(token) = st.op.take() {
                let fd = st.fd;
                self.driver.cancel(fd, token);
            }
        }
        if let Err(e) = self.poll_arm(p.0) {
            if let Ok(st) = self.poll_state(p) {
                st.events = PollEvents::empty();
            }
            return Err(e);
        }
        self.set_active(p.0, true);
        Ok(())
    }

    /// Stops watching (`uv_poll_stop`); it may be started again.
    ///
    /// # Errors
    ///
    /// [`Error::STALE_HANDLE`] if the watcher is closed or closing.
    pub fn poll_stop(&mut self, p: Poll) -> Result<()> {
        let st = self.poll_state(p)?;
        st.events = PollEvents::empty();
        if let Some(token) = st.op.take() {
            let fd = st.fd;
            self.driver.cancel(fd, token);
        }
        self.set_active(p.0, false);
        Ok(())
    }

    /// Submits the poll op if the watcher wants events and has no op for
    /// them in flight.
    fn poll_arm(&mut self, h: HandleId) -> Result<()> {
        let Ok(Kind::Poll(st)) = self.slot(h).map(|s| &s.kind) else { return Ok(()) };
        if st.op.is_some() || st.events.is_empty() {
            return Ok(());
        }
        let (fd, events) = (st.fd, to_poll_bits(st.events));
        // SAFETY: a poll lends nothing.
        let token = unsafe { self.submit_op(h, Op::Poll { fd, events })? };
        if let Ok(Kind::Poll(st)) = self.slot_mut(h).map(|s| &mut s.kind) {
            st.op = Some(token);
        }
        Ok(())
    }

    pub(crate) fn poll_close(&mut self, h: HandleId) {
        let Ok(slot) = self.slot_mut(h) else { return };
        let Kind::Poll(st) = &mut slot.kind else { return };
        st.events = PollEvents::empty();
        if let Some(token) = st.op.take() {
            let fd = st.fd;
            self.driver.cancel(fd, token);
        }
    }

    /// A poll op completed: if it is the watcher's current op, report the
    /// events (or the error), then arm again while the watcher is started.
    pub(crate) fn on_poll(&mut self, h: HandleId, token: Token, res: i32, d: &mut D) {
        let Ok(Kind::Poll(st)) = self.slot_mut(h).map(|s| &mut s.kind) else { return };
        if st.op != Some(token) {
            // An op cancelled by a stop or a change of events: an event that
            // raced the cancel is dropped (level-triggered: the op that
            // replaced it reports it again if still true).
            return;
        }
        st.op = None;
        let asked = st.events;
        let cb = st.cb.clone();
        if res < 0 {
            self.poll_failed(h, Error::from_neg(res), cb, d);
            return;
        }
        let events = from_revents(res as u32, asked);
        if !events.is_empty() {
            if let Some(cb) = cb.clone() {
                cb(self, d, h, Ok(events));
            }
        }
        // The callback may have stopped, changed or closed the watcher.
        if self.is_active(h) {
            if let Err(e) = self.poll_arm(h) {
                self.poll_failed(h, e, cb, d);
            }
        }
    }

    fn poll_failed(&mut self, h: HandleId, e: Error, cb: Option<Rc<PollFn<D>>>, d: &mut D) {
        if let Ok(Kind::Poll(st)) = self.slot_mut(h).map(|s| &mut s.kind) {
            st.events = PollEvents::empty();
        }
        self.set_active(h, false);
        if let Some(cb) = cb {
            cb(self, d, h, Err(e));
        }
    }
}
