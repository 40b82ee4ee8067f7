//! Rolling restart: every worker is replaced, one at a time, without
//! dropping service. A replacement is forked; once it listens (or is
//! online, when the old worker never listened) the old one is disconnected
//! and drains; when it has exited, the next one is replaced.

use super::{Event, Primary, PrimaryData, WorkerStatus};
use crate::schedule::WorkerId;
use std::collections::VecDeque;
use uvring::Loop;

/// A rolling restart under way.
pub(super) struct Rolling<D> {
    /// Workers still to replace.
    old: VecDeque<WorkerId>,
    /// (old, replacement) being swapped now.
    current: Option<(WorkerId, WorkerId)>,
    done: Option<super::DoneFn<D>>,
}

impl<D: PrimaryData> Primary<D> {
    /// Replaces every worker, one at a time, without dropping service: a new
    /// worker is forked, and the old one is disconnected (its connections
    /// drain) once the new one listens. `cb` runs when all are replaced
    /// (from a later loop turn).
    pub fn rolling_restart(&mut self, lp: &mut Loop<D>, cb: impl FnOnce(&mut Loop<D>, &mut D) + 'static) {
        let old: VecDeque<WorkerId> = self.workers.iter().map(|w| w.info.id).collect();
        self.rolling = Some(Rolling { old, current: None, done: Some(Box::new(cb)) });
        self.rolling_step(lp);
        self.schedule_drain(lp);
    }

    /// Starts the next swap, or queues the completion.
    fn rolling_step(&mut self, lp: &mut Loop<D>) {
        loop {
            let Some(r) = self.rolling.as_mut() else { return };
            if r.current.is_some() {
                return;
            }
            let Some(old) = r.old.pop_front() else {
                if let Some(done) = self.rolling.take().and_then(|r| r.done) {
                    self.events.queue.push_back(Event::Done(done));
                }
                return;
            };
            if self.entry(old).is_none() {
                continue;
            }
            if let Ok(new) = self.fork_worker(lp, &[]) {
                if let Some(r) = self.rolling.as_mut() {
                    r.current = Some((old, new));
                }
                return;
            }
        }
    }

    /// A replacement came up: once it listens (or is online, when the old
    /// worker never listened), the old worker is disconnected.
    pub(super) fn rolling_on_up(&mut self, lp: &mut Loop<D>, id: WorkerId, listening: bool) {
        let Some((old, new)) = self.rolling.as_ref().and_then(|r| r.current) else { return };
        if new != id {
            return;
        }
        let old_listened = self.entry(old).is_some_and(|w| w.info.status == WorkerStatus::Listening);
        if old_listened && !listening {
            return;
        }
        self.disconnect_worker(lp, old);
    }

    /// A worker exited: if it was the one being replaced (or its
    /// replacement died before taking over, keeping the old one), go on.
    pub(super) fn rolling_on_exit(&mut self, lp: &mut Loop<D>, id: WorkerId) {
        let Some(r) = self.rolling.as_mut() else { return };
        match r.current {
            Some((old, new)) if old == id || new == id => {
                r.current = None;
                self.rolling_step(lp);
            }
            _ => {}
        }
    }
}
