//! Rolling restart: every worker is replaced, one at a time, without
//! dropping service. A replacement is forked (with the environment of the
//! worker it replaces); once it listens (or is online, when the old worker
//! never listened) the old one is disconnected and drains; when it has
//! exited, the next one is replaced. A replacement that does not start
//! within `Settings::startup_timeout` is killed (a failed start) and the
//! old worker stays.
//!
//! Requests compose: a rolling restart asked for while one is under way is
//! queued (however many come, one more roll follows, over the workers as
//! they are then, and every callback runs at its end), so the table never
//! holds more than one worker above the target; `disconnect` cancels a roll
//! and nothing more is forked.

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
    /// Another roll was asked for meanwhile: one more pass follows.
    again: bool,
    /// The callbacks of every roll merged into this one.
    done: Vec<super::DoneFn<D>>,
}

impl<D: PrimaryData> Primary<D> {
    /// Replaces every worker, one at a time, without dropping service: a new
    /// worker is forked, and the old one is disconnected (its connections
    /// drain) once the new one listens. `cb` runs when all are replaced
    /// (from a later loop turn).
    ///
    /// Asked for during a roll, another pass over every worker is queued
    /// after it (several requests share one pass); `cb` runs when that pass
    /// ends. Asked for during a [`disconnect`](Self::disconnect), or
    /// cancelled by one, nothing is forked and `cb` is dropped.
    pub fn rolling_restart(&mut self, lp: &mut Loop<D>, cb: impl FnOnce(&mut Loop<D>, &mut D) + 'static) {
        if self.life_shutting_down() {
            return;
        }
        if let Some(r) = self.rolling.as_mut() {
            r.again = true;
            r.done.push(Box::new(cb));
            return;
        }
        let old: VecDeque<WorkerId> = self.workers.iter().map(|w| w.info.id).collect();
        self.rolling = Some(Rolling { old, current: None, again: false, done: vec![Box::new(cb)] });
        self.rolling_step(lp);
        self.schedule_drain(lp);
    }

    /// Replaces worker `id` alone, the way a rolling restart replaces each
    /// worker: a new one is forked, and `id` is disconnected (it drains)
    /// once the new one listens. During a roll, `id` joins the workers
    /// still to replace (unless it is among them already). Nothing happens
    /// during a [`disconnect`](Self::disconnect) or for an unknown worker.
    pub fn replace_worker(&mut self, lp: &mut Loop<D>, id: WorkerId) {
        if self.life_shutting_down() || self.entry(id).is_none() {
            return;
        }
        match self.rolling.as_mut() {
            Some(r) => {
                let current = r.current.is_some_and(|(old, new)| old == id || new == id);
                if !current && !r.old.contains(&id) {
                    r.old.push_back(id);
                }
            }
            None => {
                self.rolling =
                    Some(Rolling { old: VecDeque::from([id]), current: None, again: false, done: Vec::new() });
                self.rolling_step(lp);
            }
        }
        self.schedule_drain(lp);
    }

    /// Whether worker `id` is in the swap under way (the old worker or its
    /// replacement).
    pub(super) fn rolling_swap_member(&self, id: WorkerId) -> bool {
        self.rolling.as_ref().and_then(|r| r.current).is_some_and(|(old, new)| old == id || new == id)
    }

    /// Whether a rolling restart is under way.
    pub fn is_rolling(&self) -> bool {
        self.rolling.is_some()
    }

    /// Starts the next swap, or queues the completion.
    fn rolling_step(&mut self, lp: &mut Loop<D>) {
        loop {
            if self.life_shutting_down() {
                self.rolling = None;
                return;
            }
            let Some(r) = self.rolling.as_mut() else { return };
            if r.current.is_some() {
                return;
            }
            let Some(old) = r.old.pop_front() else {
                if std::mem::take(&mut r.again) {
                    r.old = self.workers.iter().map(|w| w.info.id).collect();
                    continue;
                }
                if let Some(r) = self.rolling.take() {
                    self.events.queue.extend(r.done.into_iter().map(Event::Done));
                }
                return;
            };
            let Some((env, restarts)) =
                self.entry(old).filter(|w| !w.disconnecting).map(|w| (w.env.clone(), w.figures.restarts))
            else {
                continue;
            };
            if let Ok(new) = self.fork_worker(lp, env) {
                self.inherit_restarts(restarts, new);
                let timeout = self.settings.startup_timeout;
                let timer = self.start_worker_timer(lp, new, timeout, false);
                if let Some(w) = self.entry_mut(new) {
                    w.startup_timer = timer;
                }
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
        if let Some(t) = self.entry_mut(new).and_then(|w| w.startup_timer.take()) {
            let _ = lp.close(t, None);
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
