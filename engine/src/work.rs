//! The work pool (`uv_queue_work`): run a function on a pool thread, then
//! its completion on the loop.
//!
//! # One pool per process
//!
//! As in libuv, the threads are shared by every loop of the process: a
//! fixed pool of [`threadpool_size`] threads (`UVRING_THREADPOOL_SIZE`,
//! default 4, at most 1024), started lazily by the first item queued in the
//! process. Per-loop pools would multiply threads by loops (a server with one
//! loop per core would run cores × 4 threads that mostly sleep) and give each
//! loop a cold start; a shared queue keeps every thread busy whichever loop
//! has work. Items are taken first in, first out.
//!
//! # Completions
//!
//! Each loop that queues work gets a completion queue (a `Vec` behind a
//! mutex) and an eventfd. A pool thread that finishes an item pushes it on
//! its loop's queue and signals the eventfd (once per batch: a flag
//! coalesces signals, as async handles do). The loop keeps one eventfd read
//! in the backend, owned by an internal handle that does not count toward
//! liveness; when it completes, the poll phase takes the whole queue and
//! runs each item's `done` on the loop thread with `&mut Loop<D>` and
//! `&mut D`. Queued items count as requests, so they keep the loop alive
//! until their `done` has run.
//!
//! # Cancel
//!
//! [`Loop::cancel_work`] takes an item out of the pool's queue if no thread
//! has started it; its `done` then runs from the next pending phase with
//! `Err(ECANCELED)` (never from inside the call). An item that has started
//! (or finished) cannot be cancelled: `EBUSY`, as `uv_cancel`. Dropping a
//! loop takes its items that have not started out of the queue.
//!
//! # Fork
//!
//! A forked child inherits the pool's memory but none of its threads, and
//! perhaps a queue lock held by a thread that no longer exists. So the pool
//! records the pid that made it, and the first use in another process makes
//! a new pool (new lock, new threads) and leaves the parent's untouched (it
//! is leaked, a few hundred bytes). The pool is found through an atomic
//! pointer, not a lock, so finding it cannot deadlock in a child. Loops do
//! not survive fork (the ring is not inherited either): a child makes its
//! own loops, whose items go to its own pool.
//!
//! # Allocation
//!
//! Queueing allocates one box: the user's `work` closure with room for its
//! result, type-erased so that it can travel to a pool thread and back.
//! `done` is boxed too, which allocates only if it captures something
//! (zero-sized boxes do not allocate). The pool's queue, the loop's table of
//! items and its completion queues reuse their storage, so nothing else
//! allocates per item after warm-up (`tests/tests/work.rs` counts).

use crate::backend::{Driver, Op, Token};
use crate::error::{Error, Result};
use crate::event_loop::{Kind, Loop, Pending};
use crate::handle::HandleId;
use crate::sys;
use slab::Slab;
use std::any::Any;
use std::collections::VecDeque;
use std::os::fd::{AsRawFd, OwnedFd};
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Once, PoisonError};

/// Threads in the pool when `UVRING_THREADPOOL_SIZE` is unset (libuv's 4).
pub const DEFAULT_THREADPOOL_SIZE: usize = 4;
/// Most threads a pool has (`UVRING_THREADPOOL_SIZE` is clamped to it, as
/// libuv clamps `UV_THREADPOOL_SIZE`).
pub const MAX_THREADPOOL_SIZE: usize = 1024;

/// A queued work item (`uv_work_t`): a request, not a handle. It names one
/// item until its `done` has run; after that it is stale
/// ([`Error::STALE_REQUEST`]), even when its table entry is reused.
#[derive(Copy, Clone, PartialEq, Eq, Hash, Debug)]
pub struct Work {
    pub(crate) index: u32,
    pub(crate) generation: u32,
}

/// The number of threads in this process's work pool: from
/// `UVRING_THREADPOOL_SIZE` when the pool is made (first use in the
/// process), clamped to `1..=`[`MAX_THREADPOOL_SIZE`]; unset or not a
/// number gives [`DEFAULT_THREADPOOL_SIZE`]. Does not start the threads.
pub fn threadpool_size() -> usize {
    pool().size
}

fn size_from_env() -> usize {
    parse_size(std::env::var("UVRING_THREADPOOL_SIZE").ok().as_deref())
}

/// A pool size from `UVRING_THREADPOOL_SIZE`'s value, as `UV_THREADPOOL_SIZE`:
/// 0 means 1, more than the maximum means the maximum.
fn parse_size(value: Option<&str>) -> usize {
    match value.and_then(|v| v.trim().parse::<usize>().ok()) {
        Some(n) => n.clamp(1, MAX_THREADPOOL_SIZE),
        None => DEFAULT_THREADPOOL_SIZE,
    }
}

// ---- the job: what a pool thread runs ---------------------------------------

/// What a pool thread runs: the engine's own requests (file operations)
/// are tasks whose state comes back to the loop with the result, so a
/// buffer lent to a task is returned even when the task is cancelled.
pub(crate) trait Task: Send + 'static {
    type Output: Send + 'static;
    fn run(&mut self) -> Self::Output;
}

/// A user's `work` closure as a task.
struct FnTask<F>(Option<F>);

impl<F: FnOnce() -> T + Send + 'static, T: Send + 'static> Task for FnTask<F> {
    type Output = T;
    fn run(&mut self) -> T {
        // `Job::run` runs a task at most once.
        let f = self.0.take().expect("a work item runs once");
        f()
    }
}

/// A type-erased task with room for its result; it travels to a pool
/// thread and back in one box.
pub(crate) trait Job: Send {
    /// Runs the task (once), keeping its result; a panic is caught and kept
    /// as such, so the pool thread lives on and the loop still hears back.
    fn run(&mut self);
    fn into_any(self: Box<Self>) -> Box<dyn Any>;
}

enum Outcome<T> {
    NotRun,
    Done(T),
    Panicked,
}

struct TaskJob<K: Task> {
    task: K,
    outcome: Outcome<K::Output>,
}

impl<K: Task> Job for TaskJob<K> {
    fn run(&mut self) {
        if let Outcome::NotRun = self.outcome {
            self.outcome = match std::panic::catch_unwind(AssertUnwindSafe(|| self.task.run())) {
                Ok(v) => Outcome::Done(v),
                Err(_) => Outcome::Panicked,
            };
        }
    }
    fn into_any(self: Box<Self>) -> Box<dyn Any> {
        self
    }
}

/// What `done` receives: the job back, run or (cancelled) not.
pub(crate) type DoneFn<D> = Box<dyn FnOnce(&mut Loop<D>, &mut D, Box<dyn Job>)>;

// ---- the pool -----------------------------------------------------------------

/// A loop's completion queue, shared with the pool threads.
pub(crate) struct Completions {
    wake: OwnedFd,
    /// A signal is on its way (or the loop is about to look): later
    /// finishers need not signal again.
    signalled: AtomicBool,
    done: Mutex<Vec<Finished>>,
}

pub(crate) struct Finished {
    index: u32,
    generation: u32,
    job: Box<dyn Job>,
}

struct Queued {
    to: Arc<Completions>,
    index: u32,
    generation: u32,
    job: Box<dyn Job>,
}

impl Completions {
    fn finish(&self, f: Finished) {
        lock(&self.done).push(f);
        if !self.signalled.swap(true, Ordering::AcqRel) {
            sys::eventfd_signal(self.wake.as_raw_fd());
        }
    }
}

struct Pool {
    /// The process that made this pool; another process (a forked child)
    /// makes its own.
    pid: u32,
    size: usize,
    start: Once,
    /// Threads that started (0 after `start` means none could be made).
    threads: AtomicUsize,
    queue: Mutex<VecDeque<Queued>>,
    ready: Condvar,
}

/// This process's pool, or one a parent process made before a fork (then
/// replaced at first use). A pointer, not a lock: see the module docs.
static POOL: AtomicPtr<Pool> = AtomicPtr::new(std::ptr::null_mut());

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Jobs run outside every lock and their panics are caught, so a
    // poisoned lock only means a panic elsewhere; the data is consistent.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// This process's pool, made on first use (threads are started by the first
/// item, not here).
fn pool() -> &'static Pool {
    let pid = std::process::id();
    let cur = POOL.load(Ordering::Acquire);
    // SAFETY: a non-null POOL points at a leaked, never-freed `Pool`.
    if !cur.is_null() && unsafe { (*cur).pid } == pid {
        // SAFETY: as above; it lives for the rest of the process.
        return unsafe { &*cur };
    }
    let new = Box::into_raw(Box::new(Pool {
        pid,
        size: size_from_env(),
        start: Once::new(),
        threads: AtomicUsize::new(0),
        queue: Mutex::new(VecDeque::with_capacity(256)),
        ready: Condvar::new(),
    }));
    match POOL.compare_exchange(cur, new, Ordering::AcqRel, Ordering::Acquire) {
        // The pool we replace, if any, is a parent's: leaked, never touched.
        // SAFETY: `new` came from `Box::into_raw` and is never freed.
        Ok(_) => unsafe { &*new },
        Err(winner) => {
            // Another thread of this process made one first: use it.
            // SAFETY: `new` was never shared; this is its only owner.
            drop(unsafe { Box::from_raw(new) });
            // SAFETY: a non-null POOL points at a leaked, never-freed `Pool`.
            unsafe { &*winner }
        }
    }
}

/// This process's pool if it has one (never makes one).
fn current_pool() -> Option<&'static Pool> {
    let cur = POOL.load(Ordering::Acquire);
    // SAFETY: a non-null POOL points at a leaked, never-freed `Pool`.
    (!cur.is_null() && unsafe { (*cur).pid } == std::process::id()).then(|| unsafe { &*cur })
}

impl Pool {
    /// Starts the threads once; `EAGAIN` if none could be started.
    fn ensure_started(&'static self) -> Result<()> {
        self.start.call_once(|| {
            for i in 0..self.size {
                // std's default stack (2 MiB, or RUST_MIN_STACK): the
                // resolver's NSS modules can be stack-hungry.
                let spawned = std::thread::Builder::new().name(format!("uvring-pool-{i}")).spawn(move || self.worker());
                if spawned.is_ok() {
                    self.threads.fetch_add(1, Ordering::AcqRel);
                }
            }
        });
        if self.threads.load(Ordering::Acquire) == 0 {
            return Err(Error::EAGAIN);
        }
        Ok(())
    }

    fn worker(&'static self) {
        // Signals go to the loop threads, as in libuv's pool.
        sys::signal::block_all_in_thread();
        loop {
            let Queued { to, index, generation, mut job } = {
                let mut q = lock(&self.queue);
                loop {
                    if let Some(item) = q.pop_front() {
                        break item;
                    }
                    q = self.ready.wait(q).unwrap_or_else(PoisonError::into_inner);
                }
            };
            job.run();
            to.finish(Finished { index, generation, job });
        }
    }

    fn push(&self, item: Queued) {
        lock(&self.queue).push_back(item);
        self.ready.notify_one();
    }

    /// Takes the item out of the queue if no thread has started it.
    fn take(&self, to: &Arc<Completions>, index: u32, generation: u32) -> Option<Queued> {
        let mut q = lock(&self.queue);
        let pos =
            q.iter().position(|it| it.index == index && it.generation == generation && Arc::ptr_eq(&it.to, to))?;
        q.remove(pos)
    }

    /// Takes every item of one loop out of the queue.
    fn take_all(&self, to: &Arc<Completions>) -> Vec<Queued> {
        let mut q = lock(&self.queue);
        let mut out = Vec::new();
        let mut i = 0;
        while i < q.len() {
            if Arc::ptr_eq(&q[i].to, to) {
                out.extend(q.remove(i));
            } else {
                i += 1;
            }
        }
        out
    }
}

// ---- the loop's side ------------------------------------------------------------

struct WorkEntry<D> {
    generation: u32,
    done: Option<DoneFn<D>>,
    /// A job cancelled before it started, until its `done` runs.
    cancelled: Option<Box<dyn Job>>,
}

/// A loop's work items: the `done` of each item in flight, and the
/// completion queue the pool fills.
pub(crate) struct WorkQueue<D> {
    completions: Option<Arc<Completions>>,
    /// The internal handle that keeps an eventfd read in the backend.
    wake: Option<HandleId>,
    entries: Slab<WorkEntry<D>>,
    next_generation: u32,
    /// Swapped with the completion queue, so neither allocates after warm-up.
    scratch: Vec<Finished>,
}

impl<D> Default for WorkQueue<D> {
    fn default() -> Self {
        WorkQueue { completions: None, wake: None, entries: Slab::new(), next_generation: 1, scratch: Vec::new() }
    }
}

impl<D> Drop for WorkQueue<D> {
    fn drop(&mut self) {
        // Items nobody started will never be wanted: out of the queue, so
        // the pool does not run them for a loop that is gone. Their boxes
        // are dropped here, on the loop's thread.
        if let (Some(c), Some(pool)) = (&self.completions, current_pool()) {
            drop(pool.take_all(c));
        }
    }
}

/// The internal handle reading the completion eventfd.
pub(crate) struct WakeState {
    completions: Arc<Completions>,
    /// Where the eventfd read lands; boxed so its address is stable while
    /// the backend owns it.
    counter: Box<u64>,
    op: Option<Token>,
}

impl<D> Loop<D> {
    /// Runs `work` on a pool thread, then `done` on this loop with its
    /// result (`uv_queue_work`). `done` gets `Err(ECANCELED)` if the item
    /// was cancelled before it started ([`cancel_work`](Self::cancel_work)),
    /// and [`Error::WORK_PANICKED`] if `work` panicked (the pool thread
    /// lives on). The item keeps the loop alive until `done` has run.
    /// `EAGAIN` if the pool has no thread and none can be started.
    ///
    /// # Errors
    ///
    /// `EAGAIN` if the work pool has no thread and none can be started; the errno of `eventfd` or
    /// `ENOSPC` if the loop cannot set up its work-completion handle (first pool use only).
    /// `ENOSPC` if 2^32 items are in flight. `done` never runs then. What happens to the item later
    /// comes to `done`: `ECANCELED` if it was cancelled before it started, [`Error::WORK_PANICKED`]
    /// if `work` panicked.
    ///
    /// # Examples
    ///
    /// ```
    /// use uvring::{Loop, RunMode};
    ///
    /// let mut lp: Loop<Option<u64>> = Loop::new()?;
    /// lp.queue_work(
    ///     || (1..=20u64).product::<u64>(),                     // on a pool thread
    ///     |_lp, out: &mut Option<u64>, res| *out = res.ok(), // then on the loop
    /// )?;
    /// let mut out = None;
    /// lp.run(RunMode::Default, &mut out)?; // the item keeps the loop alive
    /// assert_eq!(out, Some(2_432_902_008_176_640_000));
    /// # Ok::<(), uvring::Error>(())
    /// ```
    pub fn queue_work<T, F, G>(&mut self, work: F, done: G) -> Result<Work>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
        G: FnOnce(&mut Loop<D>, &mut D, Result<T>) + 'static,
    {
        self.queue_task(FnTask(Some(work)), move |lp, d, _, res| done(lp, d, res))
    }

    /// Queues a task; `done` gets the task back with its result (or
    /// `ECANCELED`, `WORK_PANICKED`).
    pub(crate) fn queue_task<K, G>(&mut self, task: K, done: G) -> Result<Work>
    where
        K: Task,
        G: FnOnce(&mut Loop<D>, &mut D, K, Result<K::Output>) + 'static,
    {
        let job: Box<dyn Job> = Box::new(TaskJob { task, outcome: Outcome::NotRun });
        let done: DoneFn<D> = Box::new(move |lp: &mut Loop<D>, d: &mut D, job: Box<dyn Job>| {
            // The job is the one made above: no other type comes back.
            let Ok(job) = job.into_any().downcast::<TaskJob<K>>() else { return };
            let TaskJob { task, outcome } = *job;
            let res = match outcome {
                Outcome::Done(v) => Ok(v),
                Outcome::Panicked => Err(Error::WORK_PANICKED),
                Outcome::NotRun => Err(Error::ECANCELED),
            };
            done(lp, d, task, res)
        });
        self.submit_job(job, done)
    }

    /// Cancels an item that no pool thread has started (`uv_cancel`): its
    /// `done` runs from the next pending phase with `Err(ECANCELED)`, and
    /// its `work` never runs (it is dropped after `done`). `EBUSY` if it
    /// has started, finished or was cancelled already;
    /// [`Error::STALE_REQUEST`] once its `done` ran.
    ///
    /// # Errors
    ///
    /// [`Error::STALE_REQUEST`] if `done` has already run; `EBUSY` if a pool thread has started the
    /// item (or it was already cancelled): it completes as usual.
    pub fn cancel_work(&mut self, w: Work) -> Result<()> {
        match self.work.entries.get(w.index as usize) {
            Some(e) if e.generation == w.generation => {}
            _ => return Err(Error::STALE_REQUEST),
        }
        let (Some(c), Some(pool)) = (&self.work.completions, current_pool()) else { return Err(Error::EBUSY) };
        let Some(item) = pool.take(c, w.index, w.generation) else { return Err(Error::EBUSY) };
        // The unrun job waits in its entry for `done` (which gets its task
        // back, buffers included).
        if let Some(e) = self.work.entries.get_mut(w.index as usize) {
            e.cancelled = Some(item.job);
        }
        self.push_pending(Pending::WorkCancelled(w));
        Ok(())
    }

    /// Work items whose `done` has not run yet.
    pub fn work_in_flight(&self) -> usize {
        self.work.entries.len()
    }

    /// Queues a type-erased job; the engine's own pool requests (name
    /// resolution, file operations) come through here too.
    pub(crate) fn submit_job(&mut self, job: Box<dyn Job>, done: DoneFn<D>) -> Result<Work> {
        let pool = pool();
        pool.ensure_started()?;
        let to = self.work_completions()?;
        if self.work.entries.len() >= u32::MAX as usize {
            return Err(Error::from_errno(libc::ENOSPC));
        }
        let generation = self.work.next_generation;
        self.work.next_generation = self.work.next_generation.wrapping_add(1).max(1);
        let index = self.work.entries.insert(WorkEntry { generation, done: Some(done), cancelled: None }) as u32;
        pool.push(Queued { to, index, generation, job });
        self.active_reqs += 1;
        Ok(Work { index, generation })
    }

    /// The loop's completion queue, made (with its eventfd and the internal
    /// handle reading it) on first use.
    fn work_completions(&mut self) -> Result<Arc<Completions>> {
        if let (Some(c), Some(h)) = (&self.work.completions, self.work.wake) {
            let c = c.clone();
            // A read that could not be re-armed earlier is retried here.
            if matches!(self.slot(h).map(|s| &s.kind), Ok(Kind::WorkWake(st)) if st.op.is_none()) {
                self.work_wake_arm(h)?;
            }
            return Ok(c);
        }
        let c = Arc::new(Completions {
            wake: sys::eventfd()?,
            signalled: AtomicBool::new(false),
            done: Mutex::new(Vec::with_capacity(64)),
        });
        let st = WakeState { completions: c.clone(), counter: Box::new(0), op: None };
        let h = self.insert(Kind::WorkWake(st))?;
        self.set_internal(h);
        if let Err(e) = self.work_wake_arm(h) {
            self.slots.remove(h.index as usize);
            return Err(e);
        }
        self.work.completions = Some(c.clone());
        self.work.wake = Some(h);
        self.work.scratch.reserve(64);
        Ok(c)
    }

    fn work_wake_arm(&mut self, h: HandleId) -> Result<()> {
        let Kind::WorkWake(st) = &mut self.slot_mut(h)?.kind else { return Err(Error::WRONG_TYPE) };
        let fd = st.completions.wake.as_raw_fd();
        let ptr = (&mut *st.counter as *mut u64).cast::<u8>();
        // SAFETY: `counter` is boxed inside the slot, which is freed only
        // after this op's final completion (the slot's `inflight` count
        // guards it, and the driver is dropped before the slots), and
        // nothing else touches it meanwhile (one read at a time: `op`).
        let token = unsafe { self.submit_op(h, Op::Read { fd, ptr, len: 8 })? };
        if let Ok(Kind::WorkWake(st)) = self.slot_mut(h).map(|s| &mut s.kind) {
            st.op = Some(token);
        }
        Ok(())
    }

    pub(crate) fn work_wake_close(&mut self, h: HandleId) {
        if let Ok(Kind::WorkWake(st)) = self.slot(h).map(|s| &s.kind) {
            if let Some(token) = st.op {
                let fd = st.completions.wake.as_raw_fd();
                self.driver.cancel(fd, token);
            }
        }
    }

    /// The completion eventfd was read: arm the read again, then run the
    /// `done` of every item the pool has finished, in the order they
    /// finished.
    pub(crate) fn on_work_wake(&mut self, h: HandleId, token: Token, res: i32, d: &mut D) {
        let Ok(Kind::WorkWake(st)) = self.slot_mut(h).map(|s| &mut s.kind) else { return };
        debug_assert_eq!(st.op, Some(token));
        st.op = None;
        let c = st.completions.clone();
        if res == -libc::ECANCELED {
            return;
        }
        // Clear before taking the queue: an item finished after this either
        // is in the batch below or signals again.
        c.signalled.store(false, Ordering::Release);
        // On failure `work_completions` retries at the next queue_work; the
        // items in flight then are delivered by the next successful read.
        let _ = self.work_wake_arm(h);
        let mut batch = std::mem::take(&mut self.work.scratch);
        std::mem::swap(&mut *lock(&c.done), &mut batch);
        for f in batch.drain(..) {
            self.work_deliver(Work { index: f.index, generation: f.generation }, Some(f.job), d);
        }
        self.work.scratch = batch;
    }

    /// Runs an item's `done` (from the poll phase, or the pending phase for
    /// a cancelled one).
    pub(crate) fn work_deliver(&mut self, w: Work, job: Option<Box<dyn Job>>, d: &mut D) {
        match self.work.entries.get(w.index as usize) {
            Some(e) if e.generation == w.generation => {}
            _ => return,
        }
        let entry = self.work.entries.remove(w.index as usize);
        self.active_reqs -= 1;
        if let (Some(done), Some(job)) = (entry.done, job.or(entry.cancelled)) {
            done(self, d, job);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pool_size_from_the_environment_value() {
        assert_eq!(parse_size(None), DEFAULT_THREADPOOL_SIZE);
        assert_eq!(parse_size(Some("")), DEFAULT_THREADPOOL_SIZE);
        assert_eq!(parse_size(Some("eight")), DEFAULT_THREADPOOL_SIZE);
        assert_eq!(parse_size(Some(" 8 ")), 8);
        assert_eq!(parse_size(Some("0")), 1);
        assert_eq!(parse_size(Some("100000")), MAX_THREADPOOL_SIZE);
    }
}
