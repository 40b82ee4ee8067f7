//! Idle, prepare and check hooks (`uv_idle_t`, `uv_prepare_t`, `uv_check_t`).

use crate::error::{Error, Result};
use crate::event_loop::{Kind, Loop};
use crate::handle::*;
use std::rc::Rc;

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

pub(crate) struct HookState<D> {
    pub kind: HookKind,
    pub cb: Option<Rc<HandleFn<D>>>,
}

impl<D> Loop<D> {
    /// A stopped idle, prepare or check hook.
    ///
    /// # Errors
    ///
    /// `ENOSPC` when the loop's handle table is full (over 2^24 handles).
    pub fn hook_init(&mut self, kind: HookKind) -> Result<Hook> {
        Ok(Hook(self.insert(Kind::Hook(HookState { kind, cb: None }))?))
    }

    /// Starts the hook: `cb` runs once per loop iteration in its phase.
    ///
    /// # Errors
    ///
    /// [`Error::STALE_HANDLE`] if the hook is closed or closing.
    pub fn hook_start(&mut self, h: Hook, cb: &OnHook<D>) -> Result<()> {
        let kind = match &mut self.open_slot_mut(h.0)?.kind {
            Kind::Hook(st) => {
                st.cb = Some(cb.f.clone());
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

    /// Stops the hook; it may be started again.
    ///
    /// # Errors
    ///
    /// [`Error::STALE_HANDLE`] if the hook is closed or closing.
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
