//! Timers: an indexed binary min-heap ordered by (due time, start order), so
//! timers due at the same millisecond fire in the order they were started,
//! and stop/restart is O(log n) with no garbage left behind.

use crate::error::{Error, Result};
use crate::event_loop::{Kind, Loop};
use crate::handle::{HandleFn, HandleId, OnTimer, Timer};
use std::rc::Rc;
use std::time::Duration;

pub(crate) struct TimerState<D> {
    pub cb: Option<Rc<HandleFn<D>>>,
    pub repeat: Duration,
}

/// Milliseconds for the timer heap (which runs on the loop's millisecond
/// clock): a non-zero duration below 1 ms counts as 1 ms, as libuv rounds up.
fn ms(d: Duration) -> u64 {
    let m = d.as_millis().min(u64::MAX as u128) as u64;
    if m == 0 && !d.is_zero() {
        1
    } else {
        m
    }
}

#[derive(Copy, Clone)]
struct Entry {
    due: u64,
    seq: u64,
    h: HandleId,
}

impl Entry {
    fn before(&self, other: &Entry) -> bool {
        (self.due, self.seq) < (other.due, other.seq)
    }
}

const NONE: u32 = u32::MAX;

pub(crate) struct TimerHeap {
    heap: Vec<Entry>,
    /// Heap position by slot index.
    pos: Vec<u32>,
    seq: u64,
}

impl TimerHeap {
    pub fn with_capacity(n: usize) -> TimerHeap {
        TimerHeap { heap: Vec::with_capacity(n), pos: Vec::with_capacity(n), seq: 0 }
    }

    fn pos_of(&self, h: HandleId) -> Option<usize> {
        let p = *self.pos.get(h.index as usize)?;
        (p != NONE && self.heap.get(p as usize).is_some_and(|e| e.h == h)).then_some(p as usize)
    }

    pub fn due(&self, h: HandleId) -> Option<u64> {
        self.pos_of(h).map(|p| self.heap[p].due)
    }

    pub fn next_due(&self) -> Option<u64> {
        self.heap.first().map(|e| e.due)
    }

    pub fn insert(&mut self, h: HandleId, due: u64) {
        self.remove(h);
        let i = h.index as usize;
        if i >= self.pos.len() {
            self.pos.resize((i + 1).next_power_of_two(), NONE);
        }
        self.seq += 1;
        self.heap.push(Entry { due, seq: self.seq, h });
        let at = self.heap.len() - 1;
        self.pos[i] = at as u32;
        self.sift_up(at);
    }

    pub fn remove(&mut self, h: HandleId) {
        let Some(p) = self.pos_of(h) else { return };
        self.pos[h.index as usize] = NONE;
        let last = self.heap.len() - 1;
        if p != last {
            self.heap.swap(p, last);
            self.heap.pop();
            self.pos[self.heap[p].h.index as usize] = p as u32;
            let p = self.sift_up(p);
            self.sift_down(p);
        } else {
            self.heap.pop();
        }
    }

    /// The start-order stamp of the latest insert: timers (re)started
    /// afterwards have higher stamps.
    pub fn last_seq(&self) -> u64 {
        self.seq
    }

    /// Removes and returns the earliest timer if it is due at `now` and was
    /// (re)started at or before stamp `limit`. A timer restarted during the
    /// timer phase (due at `now` at the earliest, with a later stamp) sorts
    /// after every timer that was due when the phase began, so stopping at
    /// the first one runs each due timer once per phase, as libuv does; a
    /// callback that restarts its own timer with timeout 0 cannot keep the
    /// phase going forever.
    pub fn pop_due_started_by(&mut self, now: u64, limit: u64) -> Option<HandleId> {
        let top = *self.heap.first()?;
        if top.due > now || top.seq > limit {
            return None;
        }
        self.remove(top.h);
        Some(top.h)
    }

    /// Removes and returns the earliest timer if it is due at `now`.
    #[cfg(test)]
    pub fn pop_due(&mut self, now: u64) -> Option<HandleId> {
        let top = *self.heap.first()?;
        if top.due > now {
            return None;
        }
        self.remove(top.h);
        Some(top.h)
    }

    fn set(&mut self, i: usize, e: Entry) {
        self.heap[i] = e;
        self.pos[e.h.index as usize] = i as u32;
    }

    fn sift_up(&mut self, mut i: usize) -> usize {
        let e = self.heap[i];
        while i > 0 {
            let parent = (i - 1) / 2;
            if !e.before(&self.heap[parent]) {
                break;
            }
            let p = self.heap[parent];
            self.set(i, p);
            i = parent;
        }
        self.set(i, e);
        i
    }

    fn sift_down(&mut self, mut i: usize) {
        let e = self.heap[i];
        let n = self.heap.len();
        loop {
            let l = 2 * i + 1;
            if l >= n {
                break;
            }
            let r = l + 1;
            let c = if r < n && self.heap[r].before(&self.heap[l]) { r } else { l };
            if !self.heap[c].before(&e) {
                break;
            }
            let ce = self.heap[c];
            self.set(i, ce);
            i = c;
        }
        self.set(i, e);
    }
}

impl<D> Loop<D> {
    /// A new, stopped timer (`uv_timer_init`).
    ///
    /// # Errors
    ///
    /// `ENOSPC` when the loop's handle table is full (over 2^24 handles).
    pub fn timer_init(&mut self) -> Result<Timer> {
        Ok(Timer(self.insert(Kind::Timer(TimerState { cb: None, repeat: Duration::ZERO }))?))
    }

    fn timer_state(&mut self, t: Timer) -> Result<&mut TimerState<D>> {
        match &mut self.open_slot_mut(t.0)?.kind {
            Kind::Timer(st) => Ok(st),
            _ => Err(Error::WRONG_TYPE),
        }
    }

    /// Starts (or restarts) the timer: `cb` runs `timeout` after the loop's
    /// cached now, then every `repeat` if `repeat` is not zero. The loop's
    /// clock counts milliseconds: a non-zero duration under 1 ms is 1 ms.
    ///
    /// # Errors
    ///
    /// [`Error::STALE_HANDLE`] if the timer is closed or closing.
    ///
    /// # Examples
    ///
    /// A one-shot timer and a repeating one that stops itself:
    ///
    /// ```
    /// use std::time::Duration;
    /// use uvring::{Loop, OnTimer, RunMode, Timer};
    ///
    /// type Log = Vec<&'static str>;
    /// let mut lp: Loop<Log> = Loop::new()?;
    /// let (once, every) = (lp.timer_init()?, lp.timer_init()?);
    /// let on_once = OnTimer::new(|_lp: &mut Loop<Log>, log: &mut Log, _t| log.push("once"));
    /// let on_every = OnTimer::new(|lp: &mut Loop<Log>, log: &mut Log, t: Timer| {
    ///     log.push("tick");
    ///     if log.iter().filter(|e| **e == "tick").count() == 3 {
    ///         lp.timer_stop(t).unwrap();
    ///     }
    /// });
    /// lp.timer_start(once, Duration::from_millis(5), Duration::ZERO, &on_once)?;
    /// lp.timer_start(every, Duration::ZERO, Duration::from_millis(2), &on_every)?;
    /// let mut log = Log::new();
    /// lp.run(RunMode::Default, &mut log)?; // returns once both timers are stopped
    /// assert_eq!(log.iter().filter(|e| **e == "tick").count(), 3);
    /// assert!(log.contains(&"once"));
    /// # Ok::<(), uvring::Error>(())
    /// ```
    pub fn timer_start(&mut self, t: Timer, timeout: Duration, repeat: Duration, cb: &OnTimer<D>) -> Result<()> {
        let st = self.timer_state(t)?;
        st.cb = Some(cb.f.clone());
        st.repeat = repeat;
        let due = self.now_ms.saturating_add(ms(timeout));
        self.timers.insert(t.0, due);
        self.set_active(t.0, true);
        Ok(())
    }

    /// Stops the timer; it may be started again.
    ///
    /// # Errors
    ///
    /// [`Error::STALE_HANDLE`] if the timer is closed or closing.
    pub fn timer_stop(&mut self, t: Timer) -> Result<()> {
        self.timer_state(t)?;
        self.timers.remove(t.0);
        self.set_active(t.0, false);
        Ok(())
    }

    /// Restarts a repeating timer with its repeat as the timeout
    /// (`uv_timer_again`); `EINVAL` if it was never started.
    ///
    /// # Errors
    ///
    /// [`Error::STALE_HANDLE`] if the timer is closed or closing; `EINVAL` if it was never started.
    pub fn timer_again(&mut self, t: Timer) -> Result<()> {
        let st = self.timer_state(t)?;
        if st.cb.is_none() {
            return Err(Error::EINVAL);
        }
        let repeat = st.repeat;
        if !repeat.is_zero() {
            let due = self.now_ms.saturating_add(ms(repeat));
            self.timers.insert(t.0, due);
            self.set_active(t.0, true);
        }
        Ok(())
    }

    /// Sets the repeat interval (takes effect at the next firing).
    ///
    /// # Errors
    ///
    /// [`Error::STALE_HANDLE`] if the timer is closed or closing.
    pub fn timer_set_repeat(&mut self, t: Timer, repeat: Duration) -> Result<()> {
        self.timer_state(t)?.repeat = repeat;
        Ok(())
    }

    /// The repeat interval (zero: one-shot).
    ///
    /// # Errors
    ///
    /// [`Error::STALE_HANDLE`] if the timer is closed or closing.
    pub fn timer_repeat(&mut self, t: Timer) -> Result<Duration> {
        Ok(self.timer_state(t)?.repeat)
    }

    /// Time until the timer fires (zero if due or stopped).
    ///
    /// # Errors
    ///
    /// [`Error::STALE_HANDLE`] if the timer is closed or closing.
    pub fn timer_due_in(&mut self, t: Timer) -> Result<Duration> {
        self.timer_state(t)?;
        Ok(Duration::from_millis(self.timers.due(t.0).map_or(0, |d| d.saturating_sub(self.now_ms))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(i: u32) -> HandleId {
        HandleId { index: i, generation: 1 }
    }

    #[test]
    fn heap_orders_by_due_then_start_order() {
        let mut heap = TimerHeap::with_capacity(4);
        heap.insert(h(3), 10);
        heap.insert(h(1), 5);
        heap.insert(h(2), 10);
        heap.insert(h(4), 1);
        heap.remove(h(4));
        let mut order = vec![];
        while let Some(x) = heap.pop_due(100) {
            order.push(x.index);
        }
        assert_eq!(order, vec![1, 3, 2]);
    }

    #[test]
    fn heap_restart_moves_timer() {
        let mut heap = TimerHeap::with_capacity(4);
        for i in 0..50 {
            heap.insert(h(i), 100 - i as u64);
        }
        for i in 0..50 {
            heap.insert(h(i), i as u64);
        }
        let mut last = 0;
        let mut n = 0;
        while let Some(x) = heap.pop_due(1000) {
            let due = x.index as u64;
            assert!(due >= last);
            last = due;
            n += 1;
        }
        assert_eq!(n, 50);
    }
}
