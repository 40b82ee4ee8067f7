//! Child processes (`uv_process_t`): exit is observed through a pidfd that
//! the backend polls, so reaping never races with other code's `waitpid`
//! of unrelated children, and no SIGCHLD handler is needed.

use crate::backend::{Driver, OpKind};
use crate::event_loop::{Kind, Loop};
use crate::handle::*;
use std::os::fd::{AsRawFd, OwnedFd};

pub(crate) struct ProcessState {
    pub pid: i32,
    pub pidfd: Option<OwnedFd>,
    pub exit_cb: Option<OnExit>,
    pub exited: bool,
}

impl Loop {
    pub(crate) fn process_close(&mut self, h: HandleId) {
        if let Ok(slot) = self.slot(h) {
            if let (Kind::Process(st), true) = (&slot.kind, slot.inflight > 0) {
                if let Some(fd) = &st.pidfd {
                    let fd = fd.as_raw_fd();
                    self.driver.cancel(fd, Loop::token(h, OpKind::PollIn));
                }
            }
        }
    }

    pub(crate) fn on_poll_in(&mut self, h: HandleId, res: i32) {
        let _ = (h, res);
    }
}
