//! The loop: handle slots, libuv's phases, completion dispatch, and close.
//!
//! Phase order per iteration, as libuv: update time, timers, pending,
//! idle, prepare, poll (I/O completions), check, closing.
//!
//! Re-entrancy: user callbacks receive `&mut Loop<D>` and `&mut D` and may
//! do anything, including closing the handle whose callback is running. The
//! loop never holds a borrow of a slot across a callback (it clones the
//! callback's `Rc` first) and re-looks-up the slot afterwards, the way libuv
//! re-checks state after every callback. Only the loop's phases call user
//! code (they alone hold the user's `&mut D`); API calls never do: a failure
//! found inside one is queued for the pending phase. So no callback can be
//! re-entered, and none is ever skipped. Close is deferred: a closed handle's slot lives
//! on, flagged closing, until the closing phase finds no operation of it
//! still owned by the kernel; only then is the slot freed and its close
//! callback run.
//!
//! Operations are first-class: every op the loop submits to the backend gets
//! an entry in the op table (a slab: the owning handle, the op's kind, a
//! generation) and a [`Token`] naming that entry. A completion is looked up
//! by its token, the entry is freed by the op's final completion, and the
//! completion goes to the owning handle, which knows its ops by their tokens
//! (and cancels them by token). So a handle may have several ops of one kind
//! in flight; the slot's `inflight` counts them all.

use crate::async_handle::AsyncState;
use crate::backend::{self, AnyDriver, Backend, Completion, Driver, Op, OpKind, PoolConfig, Token};
use crate::error::{Error, Result};
use crate::handle::*;
use crate::hook::{HookKind, HookState};
use crate::poll::PollState;
use crate::signal::{SignalPipeState, SignalRegistry, SignalState};
use crate::stream::{Stream, StreamParts, StreamState, StreamType};
use crate::timer::{TimerHeap, TimerState};
use crate::udp::{UdpParts, UdpState};
use slab::Slab;
use std::collections::VecDeque;
use std::rc::Rc;

/// How [`Loop::run`] runs (`uv_run_mode`).
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum RunMode {
    /// Until no ref'd active handle, request or closing handle remains, or `stop`.
    Default,
    /// One iteration, blocking for I/O if there is nothing else to do.
    Once,
    /// One iteration without blocking.
    NoWait,
}

/// Options for [`Loop::with_options`]: start from `default()` and set what
/// differs (`LoopOptions::default().backend(Backend::Epoll)`).
///
/// The defaults: [`Backend::Auto`], a receive-buffer pool of 512 buffers of
/// 16 KiB ([`PoolConfig::default`]), at most 1024 completions per poll, and
/// file operations through io_uring unless `UVRING_FS_IO_URING` turns them
/// off. [`Loop::new`] uses them, with the backend from `UVRING_BACKEND`.
///
/// ```
/// use uvring::{Backend, Loop, LoopOptions, PoolConfig};
///
/// let opts = LoopOptions::default()
///     .backend(Backend::Epoll)
///     .pool(PoolConfig::new(256, 4096)) // 256 buffers of 4 KiB: 1 MiB
///     .completions_per_poll(256);
/// let lp: Loop<()> = Loop::with_options(opts)?;
/// assert_eq!(lp.backend(), Backend::Epoll);
/// # Ok::<(), uvring::Error>(())
/// ```
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct LoopOptions {
    /// The backend (default [`Backend::Auto`]).
    pub backend: Backend,
    /// The receive-buffer pool.
    pub pool: PoolConfig,
    /// Completions taken per poll (bounded work per wakeup; default 1024).
    pub completions_per_poll: usize,
    /// Whether file operations go through io_uring where the ring has them
    /// (else every one runs on the work pool). `None` (the default) reads
    /// `UVRING_FS_IO_URING`: `0`, `false`, `off` or `no` turn it off;
    /// anything else, or unset, leaves it on. No effect on epoll.
    pub fs_io_uring: Option<bool>,
    /// Whether [`Loop::sendfile`] on io_uring reads the file through the
    /// ring and sends the chunks (read+send) instead of calling
    /// `sendfile(2)` after a page-cache probe. `None` (the default) reads
    /// `UVRING_SENDFILE` (`read-send` turns it on). Needs ring file reads;
    /// no effect on epoll.
    pub sendfile_read_send: Option<bool>,
    /// The most bytes of write-buffer capacity the loop keeps for reuse
    /// (default [`DEFAULT_WRITE_POOL_BYTES`], 4 MiB). Streams lend their
    /// write buffers to this pool when they go idle and take them back when
    /// they write, so warm loops allocate nothing; a buffer that would take
    /// the pool past this budget (a megabyte response's, say) is freed
    /// instead, so a burst of large writes does not stay resident.
    pub write_pool_bytes: usize,
}

/// The default of [`LoopOptions::write_pool_bytes`]: 4 MiB.
pub const DEFAULT_WRITE_POOL_BYTES: usize = 4 << 20;

impl Default for LoopOptions {
    fn default() -> Self {
        LoopOptions {
            backend: Backend::Auto,
            pool: PoolConfig::default(),
            completions_per_poll: 1024,
            fs_io_uring: None,
            sendfile_read_send: None,
            write_pool_bytes: DEFAULT_WRITE_POOL_BYTES,
        }
    }
}

impl LoopOptions {
    /// Sets the backend.
    pub fn backend(mut self, backend: Backend) -> Self {
        self.backend = backend;
        self
    }
    /// Sets the receive-buffer pool.
    pub fn pool(mut self, pool: PoolConfig) -> Self {
        self.pool = pool;
        self
    }
    /// Sets how many completions one poll takes at most.
    pub fn completions_per_poll(mut self, n: usize) -> Self {
        self.completions_per_poll = n;
        self
    }
    /// Sends file operations through io_uring (where the ring has them) or
    /// all to the work pool, whatever `UVRING_FS_IO_URING` says.
    pub fn fs_io_uring(mut self, on: bool) -> Self {
        self.fs_io_uring = Some(on);
        self
    }
    /// Makes [`Loop::sendfile`] read+send through the ring (`true`) or
    /// use `sendfile(2)` (`false`), whatever `UVRING_SENDFILE` says.
    pub fn sendfile_read_send(mut self, on: bool) -> Self {
        self.sendfile_read_send = Some(on);
        self
    }
    /// Sets how many bytes of write-buffer capacity the loop keeps for
    /// reuse ([`LoopOptions::write_pool_bytes`]).
    pub fn write_pool_bytes(mut self, bytes: usize) -> Self {
        self.write_pool_bytes = bytes;
        self
    }
}

/// The loop's work counters ([`Loop::metrics_info`], libuv's
/// `uv_metrics_t`).
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct LoopMetrics {
    /// Completed iterations of `run`.
    pub loop_count: u64,
    /// Completions the poll phase took from the backend (I/O events,
    /// operations finished, cancellations).
    pub events: u64,
    /// Of those, the ones that were already waiting when the loop polled:
    /// the backend had them queued, or the poll could not block (pending
    /// work, idle hooks, `RunMode::NoWait`). A loop that rarely sleeps
    /// has `events_waiting` close to `events`.
    pub events_waiting: u64,
}

/// What kind of handle an id names ([`Loop::handle_type`]).
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum HandleType {
    /// A TCP stream, listener or unbound socket.
    Tcp,
    /// A Unix-domain socket (a pipe or an IPC pipe).
    Pipe,
    /// A timer ([`Loop::timer_init`]).
    Timer,
    /// An async wake-up handle ([`Loop::async_init`]).
    Async,
    /// A signal watcher ([`Loop::signal_start`]).
    Signal,
    /// A prepare, check or idle hook ([`Loop::hook_init`]).
    Hook,
    /// A child process ([`Loop::spawn`]).
    Process,
    /// An fd readiness watcher ([`Loop::poll_init`]).
    Poll,
    /// A UDP socket ([`Loop::udp_init`]).
    Udp,
    /// A file-system watcher.
    FsEvent,
}

pub(crate) const F_REF: u8 = 1;
pub(crate) const F_ACTIVE: u8 = 2;
pub(crate) const F_CLOSING: u8 = 4;
/// Internal handles (the signal pipe) never count toward liveness.
pub(crate) const F_INTERNAL: u8 = 8;

// Streams dominate the size; boxing them would cost an allocation per
// connection, while slab slots are reused, so the size is paid once.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Kind<D> {
    Stream(StreamState<D>),
    Timer(TimerState<D>),
    Async(AsyncState<D>),
    Signal(SignalState<D>),
    SignalPipe(SignalPipeState),
    Hook(HookState<D>),
    Process(crate::process::ProcessState<D>),
    Poll(PollState<D>),
    /// Internal: reads the eventfd the work pool signals.
    WorkWake(crate::work::WakeState),
    /// Internal: owns the file operations in the backend (their requests
    /// are in `Loop::fs`).
    FileOps,
    Udp(UdpState<D>),
    FsEvent(crate::fs_event::FsEventState<D>),
    /// Internal: the loop's inotify instance (its watchers are in
    /// `Loop::inotify`).
    Inotify(crate::fs_event::InotifyState),
}

pub(crate) struct Slot<D> {
    pub generation: u32,
    pub flags: u8,
    /// Operations owned by the backend (submitted, final completion pending):
    /// this handle's entries in the op table.
    pub inflight: u32,
    pub data: usize,
    pub close_cb: Option<Rc<HandleFn<D>>>,
    pub kind: Kind<D>,
}

/// An operation the backend holds: an entry of the loop's op table, named
/// by the [`Token`] its completions carry (the entry's index, `generation`
/// and `kind`).
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub(crate) struct OpEntry {
    pub generation: u32,
    /// The handle the op belongs to; its completions go there.
    pub handle: HandleId,
    pub kind: OpKind,
    /// Which of the handle's requests the op serves, where it keeps a
    /// table of them (file operations); 0 otherwise.
    pub req: u32,
}

/// Entries reserved up front in the loop's tables that grow with the
/// number of connections (handle slots, the op table, the backends' per-fd
/// and per-op tables). Reserving costs address space, not memory: only the
/// pages of entries in use are ever touched. A table grown step by step
/// instead leaves each old copy behind on the heap (realloc copies it and
/// the freed copy stays resident), which cost an idle connection tens of
/// bytes more.
pub(crate) const TABLE_RESERVE: usize = 16384;

/// Deferred work for the pending phase.
#[derive(Copy, Clone, Debug)]
pub(crate) enum Pending {
    /// Complete writes whose bytes are all sent (zero-length writes), start
    /// a due shutdown.
    Writes(Stream),
    /// Deliver reads stashed while the stream was not reading.
    Stash(Stream),
    /// A shutdown finished with this status code (0 = ok, else errno).
    ShutdownDone(Stream, i32),
    /// A listener's accept op has ended after `listen_stop`.
    ListenStopped(Stream),
    /// A listen hook injected connections: run `on_connection` for each
    /// one still queued.
    Injected(Stream),
    /// A listen hook reported a late listen error.
    ListenFailed(Stream, crate::error::Error),
    /// A work item was cancelled before it started: run its `done`.
    WorkCancelled(crate::work::Work),
    /// `listen` with a listen hook installed: ask the hook (with `D`) now,
    /// with this backlog.
    HookListen(Stream, i32),
    /// Deliver datagrams kept while the UDP socket was not receiving.
    Udp(HandleId),
}

/// A libuv-style event loop over the user's state `D` (see the crate docs):
/// [`run`](Self::run) takes `&mut D`, and every callback gets the loop and
/// the state.
pub struct Loop<D = ()> {
    pub(crate) driver: AnyDriver,
    pub(crate) pool: Rc<backend::BufPool>,
    pub(crate) slots: Slab<Slot<D>>,
    next_generation: u32,
    /// Work-pool items in flight and their completion queue.
    pub(crate) work: crate::work::WorkQueue<D>,
    /// File operations in the backend (their buffers are lent to it, so
    /// this is dropped after `driver`).
    pub(crate) fs: crate::fs::FsState<D>,
    /// File-to-socket transfers (a chunk may be lent to the backend, so
    /// this too is dropped after `driver`).
    pub(crate) xfers: crate::sendfile::Transfers<D>,
    /// Operations in the backend, by token index (entries are reused, so
    /// submitting allocates nothing after warm-up).
    pub(crate) ops: Slab<OpEntry>,
    next_op_generation: u32,
    pub(crate) timers: TimerHeap,
    pub(crate) now_ms: u64,
    start_ms: u64,
    pub(crate) pending: VecDeque<Pending>,
    closing: Vec<HandleId>,
    closing_scratch: Vec<HandleId>,
    pub(crate) hooks: [Vec<HandleId>; 3],
    hook_scratch: Vec<HandleId>,
    completions: Vec<Completion>,
    /// Ref'd, active, non-internal handles.
    active_handles: usize,
    /// In-flight requests (writes, connects, shutdowns, work items).
    pub(crate) active_reqs: usize,
    stop_flag: bool,
    running: bool,
    fallback_reason: Option<String>,
    pub(crate) parts_spare: Vec<StreamParts<D>>,
    /// Write buffers of idle streams, lent to whichever stream writes next
    /// (an idle connection holds no write buffer).
    pub(crate) write_bufs_spare: Vec<Vec<u8>>,
    /// The capacity of the buffers in `write_bufs_spare`, and its budget
    /// ([`LoopOptions::write_pool_bytes`]).
    pub(crate) write_bufs_spare_bytes: usize,
    pub(crate) write_pool_bytes: usize,
    /// Write sides (request queues) of idle streams, lent likewise.
    #[allow(clippy::vec_box)] // the boxes move into and out of the streams
    pub(crate) write_sides_spare: Vec<Box<crate::stream::WriteSide<D>>>,
    /// Connect parts of streams no longer connecting (see `Connecting`).
    #[allow(clippy::vec_box)] // the boxes move into and out of the streams
    pub(crate) connect_spare: Vec<Box<crate::stream::Connecting>>,
    /// Send buffers and queues of closed UDP sockets, for new ones.
    pub(crate) udp_spare: Vec<UdpParts<D>>,
    /// Listeners waiting out an accept back-off: (deadline ms, stream).
    pub(crate) accept_retry: Vec<(u64, Stream)>,
    pub(crate) signals: SignalRegistry,
    /// File-system watchers and the loop's inotify handle.
    pub(crate) inotify: crate::fs_event::InotifyRegistry,
    /// The listen hook, shared so that a call can run through a clone
    /// while the hook stays installed (see `ListenHook`).
    pub(crate) listen_hook: Option<Rc<dyn crate::stream::ListenHook<D>>>,
    /// The paths of pipes bound with `pipe_bind` (see `pipe::BoundPath`).
    pub(crate) bound_paths: Vec<crate::pipe::BoundPath>,
    user: Option<Box<dyn std::any::Any>>,
    iterations: u64,
    /// Completions dispatched (the `events` of [`LoopMetrics`]).
    events: u64,
}

impl<D> std::fmt::Debug for Loop<D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Loop")
            .field("backend", &self.backend())
            .field("handles", &self.handle_count())
            .field("active_handles", &self.active_handles)
            .field("active_reqs", &self.active_reqs)
            .field("closing", &self.closing.len())
            .field("iterations", &self.iterations)
            .finish_non_exhaustive()
    }
}

impl<D> Loop<D> {
    /// A loop on the backend named by `UVRING_BACKEND` (default `auto`).
    ///
    /// # Errors
    ///
    /// `EINVAL` if `UVRING_BACKEND` names no backend; otherwise as
    /// [`with_options`](Self::with_options).
    ///
    /// # Examples
    ///
    /// ```
    /// use uvring::{Loop, RunMode};
    ///
    /// let mut lp: Loop<()> = Loop::new()?;
    /// println!("running on {:?}", lp.backend());
    /// if let Some(why) = lp.fallback_reason() {
    ///     println!("io_uring was not taken: {why}");
    /// }
    /// // No handle, nothing to do: `run` returns at once, and the loop is not alive.
    /// assert!(!lp.run(RunMode::Default, &mut ())?);
    /// # Ok::<(), uvring::Error>(())
    /// ```
    pub fn new() -> Result<Loop<D>> {
        Loop::with_options(LoopOptions::default().backend(Backend::from_env()?))
    }

    /// A loop on the given backend.
    ///
    /// # Errors
    ///
    /// As [`with_options`](Self::with_options).
    pub fn with_backend(backend: Backend) -> Result<Loop<D>> {
        Loop::with_options(LoopOptions::default().backend(backend))
    }

    /// A loop with the given options. An io_uring that cannot be set up is
    /// an error whose message says why (with `Backend::IoUring`); with
    /// `Auto` the loop falls back to epoll and
    /// [`fallback_reason`](Self::fallback_reason) says why.
    ///
    /// # Errors
    ///
    /// `EINVAL` for a bad [`PoolConfig`] (a count that is zero, not a power of two or over 32768,
    /// or a zero size); `ENOMEM` if the pool cannot be allocated; with [`Backend::IoUring`], the
    /// ring's setup error (its errno, e.g. `EPERM` or `ENOSYS`, or [`Error::BACKEND_UNAVAILABLE`]
    /// when the probe lacks a needed operation) with a [`context`](Error::context) sentence saying
    /// why; the errno of `epoll_create1` or `eventfd` for epoll (and for `Auto`'s fallback).
    pub fn with_options(opts: LoopOptions) -> Result<Loop<D>> {
        let (driver, fallback_reason) = backend::open(opts.backend, opts.pool)?;
        let pool = driver.pool().clone();
        let now = crate::sys::monotonic_ms();
        Ok(Loop {
            driver,
            pool,
            slots: Slab::with_capacity(TABLE_RESERVE),
            next_generation: 1,
            work: Default::default(),
            fs: crate::fs::FsState::new(opts.fs_io_uring.unwrap_or_else(crate::fs::fs_io_uring_from_env)),
            xfers: crate::sendfile::Transfers::new(opts.sendfile_read_send),
            ops: Slab::with_capacity(TABLE_RESERVE),
            next_op_generation: 1,
            timers: TimerHeap::with_capacity(256),
            now_ms: now,
            start_ms: now,
            pending: VecDeque::with_capacity(256),
            closing: Vec::with_capacity(256),
            closing_scratch: Vec::with_capacity(256),
            hooks: [Vec::new(), Vec::new(), Vec::new()],
            hook_scratch: Vec::new(),
            completions: Vec::with_capacity(opts.completions_per_poll.max(64)),
            active_handles: 0,
            active_reqs: 0,
            stop_flag: false,
            running: false,
            fallback_reason,
            parts_spare: Vec::new(),
            write_bufs_spare: Vec::new(),
            write_bufs_spare_bytes: 0,
            write_pool_bytes: opts.write_pool_bytes,
            write_sides_spare: Vec::new(),
            connect_spare: Vec::new(),
            udp_spare: Vec::new(),
            accept_retry: Vec::new(),
            signals: SignalRegistry::default(),
            inotify: Default::default(),
            listen_hook: None,
            bound_paths: Vec::new(),
            user: None,
            iterations: 0,
            events: 0,
        })
    }

    /// The backend this loop runs on (never `Auto`).
    pub fn backend(&self) -> Backend {
        self.driver.kind()
    }

    /// When `Auto` fell back to epoll: why io_uring was not taken.
    pub fn fallback_reason(&self) -> Option<&str> {
        self.fallback_reason.as_deref()
    }

    /// The loop's cached time in milliseconds (updated once per iteration).
    pub fn now(&self) -> u64 {
        self.now_ms - self.start_ms
    }

    /// Refreshes the cached time.
    pub fn update_time(&mut self) {
        self.now_ms = crate::sys::monotonic_ms();
    }

    /// Number of completed loop iterations (for tests that check for spinning).
    pub fn iterations(&self) -> u64 {
        self.iterations
    }

    /// Time the loop has spent blocked in the backend's wait (`epoll_wait`,
    /// or `io_uring_enter` waiting for completions) since it was created:
    /// libuv's `uv_metrics_idle_time`. Time in callbacks and in the loop's
    /// own work is not idle; neither is a poll that could not block. Always
    /// on: two reads of the monotonic clock (vDSO) per wait that may block.
    /// Utilisation over a span is `1 - Δidle / Δwall`.
    pub fn metrics_idle_time(&self) -> std::time::Duration {
        std::time::Duration::from_nanos(self.driver.wait_stats().idle_ns)
    }

    /// Counters of the loop's work (libuv's `uv_metrics_info`).
    pub fn metrics_info(&self) -> LoopMetrics {
        LoopMetrics {
            loop_count: self.iterations,
            events: self.events,
            events_waiting: self.driver.wait_stats().events_waiting,
        }
    }

    /// Makes `run` return after the current iteration.
    pub fn stop(&mut self) {
        self.stop_flag = true;
    }

    /// Whether `run` would keep going: ref'd active handles, in-flight
    /// requests, or closing handles.
    pub fn alive(&self) -> bool {
        self.active_handles > 0 || self.active_reqs > 0 || !self.closing.is_empty()
    }

    /// Live handles, internal ones excluded (tests end with zero).
    pub fn handle_count(&self) -> usize {
        self.slots.iter().filter(|(_, s)| s.flags & F_INTERNAL == 0).count()
    }

    /// Open TCP connections (accepted or connected streams, not closing; no
    /// listener): the load a cluster worker reports.
    pub fn tcp_connection_count(&self) -> usize {
        self.slots
            .iter()
            .filter(|(_, s)| s.flags & F_CLOSING == 0)
            .filter(|(_, s)| {
                matches!(&s.kind, Kind::Stream(st) if st.ty == crate::stream::StreamType::Tcp && !st.listening && st.fd >= 0)
            })
            .count()
    }

    /// Stores a value for user code, reachable from every callback.
    pub fn set_user_data<T: 'static>(&mut self, value: T) {
        self.user = Some(Box::new(value));
    }

    /// The value stored with [`set_user_data`](Self::set_user_data), if of type `T`.
    pub fn user_data<T: 'static>(&mut self) -> Option<&mut T> {
        self.user.as_mut()?.downcast_mut()
    }

    /// Runs the loop with the user's state `data`, which every callback
    /// receives. Returns whether the loop is still alive. Calling `run` from
    /// inside a callback is refused with `INVALID_STATE`.
    ///
    /// # Errors
    ///
    /// [`Error::INVALID_STATE`] when called from inside a callback of this loop (the loop is
    /// already running); an error of the backend's wait (`epoll_wait` or `io_uring_enter`; `EINTR`
    /// is not one), after the iteration's completions were dispatched. Errors of single operations
    /// never come here: they go to their callbacks.
    ///
    /// # Examples
    ///
    /// A repeating timer counts in the state, and stops the loop at three;
    /// the timer is then closed, and one more run finishes the close.
    ///
    /// ```
    /// use std::time::Duration;
    /// use uvring::{Loop, OnTimer, RunMode};
    ///
    /// let mut lp: Loop<u32> = Loop::new()?;
    /// let t = lp.timer_init()?;
    /// let tick = OnTimer::new(|lp: &mut Loop<u32>, n: &mut u32, _t| {
    ///     *n += 1;
    ///     if *n == 3 {
    ///         lp.stop();
    ///     }
    /// });
    /// lp.timer_start(t, Duration::from_millis(1), Duration::from_millis(1), &tick)?;
    /// let mut n = 0;
    /// let alive = lp.run(RunMode::Default, &mut n)?;
    /// assert_eq!(n, 3);
    /// assert!(alive); // stopped, not finished: the timer still runs
    /// lp.close(t, None)?;
    /// assert!(!lp.run(RunMode::Default, &mut n)?);
    /// assert!(lp.close_loop().is_ok());
    /// # Ok::<(), uvring::Error>(())
    /// ```
    pub fn run(&mut self, mode: RunMode, data: &mut D) -> Result<bool> {
        if self.running {
            return Err(Error::INVALID_STATE);
        }
        self.running = true;
        let res = self.run_inner(mode, data);
        self.running = false;
        // What the last callbacks queued (io_uring: closes, sends) goes to
        // the kernel now, not at a next run that may never come.
        self.driver.flush();
        res
    }

    fn run_inner(&mut self, mode: RunMode, d: &mut D) -> Result<bool> {
        self.update_time();
        let mut alive = self.alive();
        if !alive {
            self.run_timers(d);
        }
        while alive && !self.stop_flag {
            self.update_time();
            self.run_timers(d);
            let ran_pending = self.run_pending(d);
            self.run_hooks(HookKind::Idle, d);
            self.run_hooks(HookKind::Prepare, d);
            let timeout = if (mode == RunMode::Once && !ran_pending) || mode == RunMode::Default {
                self.poll_timeout()
            } else {
                0
            };
            self.poll(timeout, d)?;
            self.run_hooks(HookKind::Check, d);
            self.run_closing(d);
            self.iterations += 1;
            if mode == RunMode::Once {
                // libuv runs due timers once more after a blocking poll in Once mode.
                self.update_time();
                self.run_timers(d);
            }
            alive = self.alive();
            if mode != RunMode::Default {
                break;
            }
        }
        self.stop_flag = false;
        Ok(alive)
    }

    fn poll_timeout(&self) -> i64 {
        if self.stop_flag
            || !self.pending.is_empty()
            || !self.hooks[HookKind::Idle as usize].is_empty()
            || !self.alive()
        {
            return 0;
        }
        // A closing handle with nothing in the kernel finishes in this
        // iteration's closing phase: don't block before it. Ones still waiting
        // for the backend's final completions do block, for those completions.
        if self.closing.iter().any(|h| self.slot(*h).is_ok_and(|s| s.inflight == 0)) {
            return 0;
        }
        let mut deadline = self.timers.next_due();
        for &(d, _) in &self.accept_retry {
            deadline = Some(deadline.map_or(d, |t: u64| t.min(d)));
        }
        match deadline {
            Some(due) => due.saturating_sub(self.now_ms) as i64,
            None => -1,
        }
    }

    fn poll(&mut self, timeout: i64, d: &mut D) -> Result<()> {
        let mut completions = std::mem::take(&mut self.completions);
        completions.clear();
        let res = self.driver.poll(timeout, &mut completions);
        self.update_time();
        // Keep the buffer memory alive across callbacks even if user code
        // replaces the loop value (`mem::replace`) from inside one.
        let pool = self.pool.clone();
        self.events += completions.len() as u64;
        for c in completions.iter() {
            self.dispatch(*c, &pool, d);
        }
        completions.clear();
        self.completions = completions;
        res
    }

    /// Allocates a slot for a new handle (ref'd, inactive).
    pub(crate) fn insert(&mut self, kind: Kind<D>) -> Result<HandleId> {
        // Tokens name ops now, not handles, but the handle count keeps the
        // limit it always had (ENOSPC past it), which callers rely on.
        if self.slots.len() >= Token::MAX_INDEX {
            return Err(Error::from_errno(libc::ENOSPC));
        }
        let generation = self.next_generation;
        self.next_generation = self.next_generation.wrapping_add(1).max(1);
        let index = self.slots.insert(Slot { generation, flags: F_REF, inflight: 0, data: 0, close_cb: None, kind });
        Ok(HandleId { index: index as u32, generation })
    }

    pub(crate) fn slot(&self, h: HandleId) -> Result<&Slot<D>> {
        match self.slots.get(h.index as usize) {
            Some(s) if s.generation == h.generation => Ok(s),
            _ => Err(Error::STALE_HANDLE),
        }
    }

    pub(crate) fn slot_mut(&mut self, h: HandleId) -> Result<&mut Slot<D>> {
        match self.slots.get_mut(h.index as usize) {
            Some(s) if s.generation == h.generation => Ok(s),
            _ => Err(Error::STALE_HANDLE),
        }
    }

    /// A live (not closing) slot.
    pub(crate) fn open_slot_mut(&mut self, h: HandleId) -> Result<&mut Slot<D>> {
        let s = self.slot_mut(h)?;
        if s.flags & F_CLOSING != 0 {
            return Err(Error::STALE_HANDLE);
        }
        Ok(s)
    }

    /// Starts `op` for handle `h`: allocates its op table entry, hands it
    /// to the backend under the entry's token, and counts it in the
    /// handle's `inflight`. Returns the token, which the handle keeps to
    /// recognise the op's completions and to cancel it. On `Err` nothing
    /// was started (`ENOSPC` when the op table is full, the backend's error
    /// otherwise) and no completion will come.
    ///
    /// # Safety
    /// As [`Driver::submit`] for `op` (contract rule 3): a `Send`'s bytes
    /// and fds, and a `Read`'s memory, stay valid until the op's final
    /// completion has been dispatched. Other ops carry no obligation.
    pub(crate) unsafe fn submit_op(&mut self, h: HandleId, op: Op<'_>) -> Result<Token> {
        // SAFETY: forwarded.
        unsafe { self.submit_op_req(h, 0, op) }
    }

    /// [`submit_op`](Self::submit_op) for an op that serves request `req`
    /// of its handle (the op table entry keeps it for the completion).
    ///
    /// # Safety
    /// As `submit_op`.
    pub(crate) unsafe fn submit_op_req(&mut self, h: HandleId, req: u32, op: Op<'_>) -> Result<Token> {
        self.slot(h)?;
        if self.ops.len() >= Token::MAX_INDEX {
            return Err(Error::from_errno(libc::ENOSPC));
        }
        let generation = self.next_op_generation;
        self.next_op_generation = self.next_op_generation.wrapping_add(1);
        let kind = op.kind();
        let entry = self.ops.vacant_entry();
        let token = Token::new(entry.key(), generation, kind);
        entry.insert(OpEntry { generation, handle: h, kind, req });
        // SAFETY: the caller's rule-3 guarantee for `op`, forwarded.
        if let Err(e) = unsafe { self.driver.submit(token, op) } {
            self.ops.remove(token.index());
            return Err(e);
        }
        if let Ok(slot) = self.slot_mut(h) {
            slot.inflight += 1;
        }
        Ok(token)
    }

    /// Books completion `c` against the op table: the op it belongs to, or
    /// `None` if its token names no op in flight (a stale generation). A
    /// final completion (`more == false`) frees the entry and uncounts the
    /// op from its handle's `inflight`.
    pub(crate) fn op_completed(&mut self, c: &Completion) -> Option<OpEntry> {
        let op = *self.ops.get(c.token.index())?;
        if op.generation != c.token.generation() || c.token.kind() != Some(op.kind) {
            return None;
        }
        if !c.more {
            self.ops.remove(c.token.index());
            if let Ok(slot) = self.slot_mut(op.handle) {
                slot.inflight = slot.inflight.saturating_sub(1);
            }
        }
        Some(op)
    }

    /// Marks a handle active or inactive, keeping the liveness count.
    pub(crate) fn set_active(&mut self, h: HandleId, on: bool) {
        let _ = self.set_flag(h, F_ACTIVE, on);
    }

    /// Sets or clears `flag` (`F_ACTIVE` or `F_REF`), keeping the count of
    /// handles that keep the loop alive: ref'd, active and not internal.
    fn set_flag(&mut self, h: HandleId, flag: u8, on: bool) -> Result<()> {
        let keeps_alive = |flags: u8| (flags & (F_REF | F_ACTIVE)) == (F_REF | F_ACTIVE) && flags & F_INTERNAL == 0;
        let s = self.slot_mut(h)?;
        let before = keeps_alive(s.flags);
        if on {
            s.flags |= flag;
        } else {
            s.flags &= !flag;
        }
        match (before, keeps_alive(s.flags)) {
            (false, true) => self.active_handles += 1,
            (true, false) => self.active_handles -= 1,
            _ => {}
        }
        Ok(())
    }

    pub(crate) fn set_internal(&mut self, h: HandleId) {
        if let Ok(s) = self.slot_mut(h) {
            debug_assert!(s.flags & F_ACTIVE == 0);
            s.flags |= F_INTERNAL;
        }
    }

    /// Whether the handle is active (reading, listening, started, ...).
    pub fn is_active(&self, h: impl Into<HandleId>) -> bool {
        self.slot(h.into()).is_ok_and(|s| s.flags & F_ACTIVE != 0 && s.flags & F_CLOSING == 0)
    }

    /// Whether `close` was called on the handle (and its close callback has
    /// not yet run).
    pub fn is_closing(&self, h: impl Into<HandleId>) -> bool {
        self.slot(h.into()).is_ok_and(|s| s.flags & F_CLOSING != 0)
    }

    /// Whether the id names a live handle (not yet closed).
    pub fn is_live(&self, h: impl Into<HandleId>) -> bool {
        self.slot(h.into()).is_ok()
    }

    /// Lets the handle keep the loop alive while active (the default).
    ///
    /// # Errors
    ///
    /// [`Error::STALE_HANDLE`] if `h` names no live handle (closed and its close callback run, or
    /// never opened). A closing handle is still accepted.
    pub fn ref_handle(&mut self, h: impl Into<HandleId>) -> Result<()> {
        self.set_ref(h.into(), true)
    }

    /// Stops the handle from keeping the loop alive.
    ///
    /// # Errors
    ///
    /// [`Error::STALE_HANDLE`] if `h` names no live handle.
    pub fn unref_handle(&mut self, h: impl Into<HandleId>) -> Result<()> {
        self.set_ref(h.into(), false)
    }

    /// Whether the handle is ref'd.
    ///
    /// # Errors
    ///
    /// [`Error::STALE_HANDLE`] if `h` names no live handle.
    pub fn has_ref(&self, h: impl Into<HandleId>) -> Result<bool> {
        Ok(self.slot(h.into())?.flags & F_REF != 0)
    }

    fn set_ref(&mut self, h: HandleId, on: bool) -> Result<()> {
        self.set_flag(h, F_REF, on)
    }

    /// Stores a word of user data with the handle (libuv's `data`).
    ///
    /// # Errors
    ///
    /// [`Error::STALE_HANDLE`] if `h` names no live handle (a closing one is accepted until its
    /// close callback has run).
    pub fn set_data(&mut self, h: impl Into<HandleId>, data: usize) -> Result<()> {
        self.slot_mut(h.into())?.data = data;
        Ok(())
    }

    /// The handle's user data word.
    ///
    /// # Errors
    ///
    /// [`Error::STALE_HANDLE`] if `h` names no live handle (a closing one still has its word until
    /// its close callback has run).
    pub fn data(&self, h: impl Into<HandleId>) -> Result<usize> {
        Ok(self.slot(h.into())?.data)
    }

    /// Closes `fd` on the loop's backend: at once, or, on io_uring with
    /// `UVRING_IO_URING_FEATURES=close`, with the next submission
    /// (`IORING_OP_CLOSE`, no syscall of its own). Either way the fd is
    /// closed by the time [`run`](Self::run) returns or the loop's next poll
    /// has begun. For fds the loop does not watch, such as a connection
    /// already handed to another process.
    pub fn close_fd(&mut self, fd: std::os::fd::OwnedFd) {
        self.driver.close_fd(std::os::fd::IntoRawFd::into_raw_fd(fd));
    }

    /// Closes a handle. Its operations stop now; in-flight writes complete
    /// with `ECANCELED`; `cb` runs in a later closing phase, after every
    /// buffer the kernel held has come back. Closing twice is an error.
    ///
    /// A stream's fd is closed before `cb` runs, and a listener's at once in
    /// that phase (its address is free for a new bind). A connection closed
    /// without a callback is closed as by [`close_fd`](Self::close_fd): with
    /// io_uring's `close` feature, at the next submission, and in any case by
    /// the time `run` returns.
    ///
    /// # Errors
    ///
    /// [`Error::STALE_HANDLE`] if `h` names no live handle; [`Error::INVALID_STATE`] if `close` was
    /// already called on it. Nothing else: a close always succeeds, and its callback always runs.
    pub fn close(&mut self, h: impl Into<HandleId>, cb: Option<&OnClose<D>>) -> Result<()> {
        let h = h.into();
        let s = self.slot_mut(h)?;
        if s.flags & F_CLOSING != 0 {
            return Err(Error::INVALID_STATE);
        }
        s.close_cb = cb.map(|c| c.f.clone());
        self.set_active(h, false);
        let s = self.slot_mut(h)?;
        s.flags |= F_CLOSING;
        // Internal handles never counted; closing ones count via `closing`.
        match &s.kind {
            Kind::Stream(_) => self.stream_close(Stream(h)),
            Kind::Timer(_) => self.timers.remove(h),
            Kind::Async(_) => self.async_close(h),
            Kind::Signal(_) => self.signal_close(h),
            Kind::SignalPipe(_) => self.signal_pipe_close(h),
            Kind::Hook(st) => {
                let k = st.kind as usize;
                self.hooks[k].retain(|x| *x != h);
            }
            Kind::Process(_) => self.process_close(h),
            Kind::Poll(_) => self.poll_close(h),
            Kind::WorkWake(_) => self.work_wake_close(h),
            Kind::FileOps => {}
            Kind::Udp(_) => self.udp_close(h),
            Kind::FsEvent(_) => self.fs_event_close(h),
            Kind::Inotify(_) => self.inotify_close(h),
        }
        self.closing.push(h);
        Ok(())
    }

    /// Visits every live handle (`uv_walk`), internal ones excluded, in slot
    /// order; `f` may close them (a snapshot of the ids is taken first, so
    /// handles opened by `f` are not visited). Handles already closing are
    /// visited too: check [`is_closing`](Self::is_closing).
    pub fn walk(&mut self, mut f: impl FnMut(&mut Loop<D>, HandleId)) {
        let ids: Vec<HandleId> = self
            .slots
            .iter()
            .filter(|(_, s)| s.flags & F_INTERNAL == 0)
            .map(|(i, s)| HandleId { index: i as u32, generation: s.generation })
            .collect();
        for h in ids {
            if self.slot(h).is_ok() {
                f(self, h);
            }
        }
    }

    /// What kind of handle `h` is.
    ///
    /// # Errors
    ///
    /// [`Error::STALE_HANDLE`] if `h` names no live handle.
    pub fn handle_type(&self, h: impl Into<HandleId>) -> Result<HandleType> {
        Ok(match &self.slot(h.into())?.kind {
            Kind::Stream(st) if st.ty == StreamType::Tcp => HandleType::Tcp,
            Kind::Stream(_) => HandleType::Pipe,
            Kind::Timer(_) => HandleType::Timer,
            Kind::Async(_) | Kind::WorkWake(_) | Kind::FileOps => HandleType::Async,
            Kind::Signal(_) | Kind::SignalPipe(_) => HandleType::Signal,
            Kind::Hook(_) => HandleType::Hook,
            Kind::Process(_) => HandleType::Process,
            Kind::Poll(_) => HandleType::Poll,
            Kind::Udp(_) => HandleType::Udp,
            Kind::FsEvent(_) | Kind::Inotify(_) => HandleType::FsEvent,
        })
    }

    /// Closes the loop (`uv_loop_close`): succeeds only when no handle is
    /// left and nothing is in flight; otherwise gives the loop back with
    /// `EBUSY` (close the handles, for example from [`walk`](Self::walk),
    /// and run the loop until their close callbacks have run).
    ///
    /// # Errors
    ///
    /// `EBUSY`, with the loop given back, while a handle is open, a close callback has not run or a
    /// request (write, connect, work item, file operation) is in flight.
    // The loop is large, but giving it back by value is the point (as
    // `uv_loop_close` leaves the loop usable), and the signature is public.
    #[allow(clippy::result_large_err)]
    pub fn close_loop(self) -> std::result::Result<(), (Error, Loop<D>)> {
        if self.handle_count() > 0 || self.active_reqs > 0 || !self.closing.is_empty() {
            return Err((Error::from_errno(libc::EBUSY), self));
        }
        drop(self);
        Ok(())
    }

    fn run_closing(&mut self, d: &mut D) {
        if self.closing.is_empty() {
            return;
        }
        let mut list = std::mem::take(&mut self.closing_scratch);
        std::mem::swap(&mut list, &mut self.closing);
        for h in list.drain(..) {
            let ready = self.slot(h).is_ok_and(|s| s.inflight == 0);
            if !ready {
                if self.slot(h).is_ok() {
                    self.closing.push(h);
                }
                continue;
            }
            self.finish_close(h, d);
        }
        self.closing_scratch = list;
    }

    /// Frees a closed handle whose kernel operations are all done, then runs
    /// the deferred callbacks: cancelled writes first, then the close callback.
    fn finish_close(&mut self, h: HandleId, d: &mut D) {
        if matches!(self.slot(h).map(|s| &s.kind), Ok(Kind::Stream(_))) {
            self.stream_finish_close(Stream(h), d);
        }
        if matches!(self.slot(h).map(|s| &s.kind), Ok(Kind::Process(_))) {
            self.process_finish_close(h);
        }
        // A poll watcher needs no second half: its op's cancel (or its
        // completion) already took the fd's interest out of the backend, and
        // the fd is not ours. Forgetting the fd here, later, would wipe the
        // registration of a new watcher (or stream) on the same fd number.
        if matches!(self.slot(h).map(|s| &s.kind), Ok(Kind::Udp(_))) {
            self.udp_finish_close(h, d);
        }
        let Ok(s) = self.slot_mut(h) else { return };
        let cb = s.close_cb.take();
        let slot = self.slots.remove(h.index as usize);
        match slot.kind {
            Kind::Stream(mut st) => {
                if let Some(c) = st.conn.take() {
                    self.connect_spare_push(c);
                }
                let mut parts = st.into_parts();
                if let Some(side) = parts.w.take() {
                    self.lend_write_side(side);
                }
                self.parts_spare.push(parts);
            }
            Kind::Udp(st) => self.udp_spare.push(st.into_parts()),
            _ => {}
        }
        if let Some(cb) = cb {
            cb(self, d, h);
        }
    }

    fn run_pending(&mut self, d: &mut D) -> bool {
        let n = self.pending.len();
        for _ in 0..n {
            let Some(p) = self.pending.pop_front() else { break };
            match p {
                Pending::Writes(s) => self.complete_writes(s, d),
                Pending::Stash(s) => self.deliver_stash(s, d),
                Pending::ShutdownDone(s, code) => self.shutdown_done(s, code, d),
                Pending::ListenStopped(s) => self.listen_stopped(s, d),
                Pending::Injected(s) => self.deliver_injected(s, d),
                Pending::ListenFailed(s, e) => self.deliver_listen_failed(s, e, d),
                Pending::WorkCancelled(w) => self.work_deliver(w, None, d),
                Pending::HookListen(s, backlog) => self.hook_listen(s, backlog, d),
                Pending::Udp(h) => self.udp_pending(h, d),
            }
        }
        n > 0
    }

    fn run_hooks(&mut self, kind: HookKind, d: &mut D) {
        if self.hooks[kind as usize].is_empty() {
            return;
        }
        let mut list = std::mem::take(&mut self.hook_scratch);
        list.clear();
        list.extend_from_slice(&self.hooks[kind as usize]);
        for &h in &list {
            // A hook stopped by an earlier callback in this round does not run.
            if !self.hooks[kind as usize].contains(&h) {
                continue;
            }
            let cb = match self.slot(h).map(|s| &s.kind) {
                Ok(Kind::Hook(st)) => st.cb.clone(),
                _ => None,
            };
            if let Some(cb) = cb {
                cb(self, d, h);
            }
        }
        self.hook_scratch = list;
    }

    fn run_timers(&mut self, d: &mut D) {
        // Timers (re)started by the callbacks below wait for the next
        // iteration, even when already due.
        let started_by = self.timers.last_seq();
        while let Some(h) = self.timers.pop_due_started_by(self.now_ms, started_by) {
            let (cb, repeat) = match self.slot(h).map(|s| &s.kind) {
                Ok(Kind::Timer(t)) => (t.cb.clone(), t.repeat),
                _ => continue,
            };
            if !repeat.is_zero() {
                let due = self.now_ms + (repeat.as_millis() as u64).max(1);
                self.timers.insert(h, due);
            } else {
                self.set_active(h, false);
            }
            if let Some(cb) = cb {
                cb(self, d, h);
            }
        }
        // Accept back-off deadlines ride on the timer phase.
        let now = self.now_ms;
        let mut i = 0;
        while i < self.accept_retry.len() {
            if self.accept_retry[i].0 <= now {
                let (_, s) = self.accept_retry.swap_remove(i);
                self.accept_resume(s);
            } else {
                i += 1;
            }
        }
    }

    /// Routes one completion to the handle that owns its op. Completions
    /// that name no op in flight (stale), or whose handle is closing or
    /// gone, release what they carry (an fd, a buffer) and are dropped.
    fn dispatch(&mut self, c: Completion, _pool: &Rc<backend::BufPool>, d: &mut D) {
        let Some(op) = self.op_completed(&c) else {
            self.release(c);
            return;
        };
        let h = op.handle;
        let Ok(slot) = self.slot(h) else {
            self.release(c);
            return;
        };
        // A stream's poll and file read are its file transfer's.
        let stream = matches!(slot.kind, Kind::Stream(_));
        if slot.flags & F_CLOSING != 0 {
            self.release(c);
            match op.kind {
                OpKind::Send | OpKind::WriteStream => self.stream_send_done_closing(Stream(h), c.token, c.res),
                OpKind::Poll | OpKind::FileRead if stream => self.stream_send_done_closing(Stream(h), c.token, c.res),
                OpKind::SendTo => self.udp_send_done_closing(h, c.token, c.res),
                _ => {}
            }
            return;
        }
        let inotify = matches!(slot.kind, Kind::Inotify(_));
        match op.kind {
            OpKind::Accept => self.on_accept(Stream(h), c, d),
            OpKind::Recv | OpKind::RecvMsg | OpKind::ReadStream => self.on_recv(Stream(h), c, d),
            OpKind::Send | OpKind::WriteStream => self.on_send(Stream(h), c.token, c.res, d),
            OpKind::Poll | OpKind::FileRead if stream => self.xfer_on_op(Stream(h), c.token, op.kind, c.res),
            OpKind::Connect => self.on_connect(Stream(h), c.token, c.res, d),
            OpKind::Read => self.on_read_fd(h, c.token, c.res, d),
            OpKind::PollIn if inotify => self.on_inotify_ready(h, c.token, c.res, d),
            OpKind::PollIn => self.on_poll_in(h, c.token, c.res, d),
            OpKind::Poll => self.on_poll(h, c.token, c.res, d),
            OpKind::FileRead
            | OpKind::FileWrite
            | OpKind::Fsync
            | OpKind::Statx
            | OpKind::OpenAt
            | OpKind::FileReadv
            | OpKind::FileWritev => self.on_file_op(op.req, c.token, c.res, d),
            OpKind::RecvFrom => self.on_udp_recv(h, c, d),
            OpKind::SendTo => self.on_udp_send(h, c.token, c.res, d),
        }
    }

    /// Releases what a dropped completion carries.
    pub(crate) fn release(&mut self, c: Completion) {
        if let Some(id) = c.buf {
            self.discard_recv_buf(c.token.kind(), id, c.res);
        }
        if matches!(c.token.kind(), Some(OpKind::Accept | OpKind::OpenAt)) && c.res >= 0 {
            crate::sys::close(c.res);
        }
    }

    /// Gives back receive buffer `id` holding an unread result of `res`
    /// bytes. A recvmsg record in it may carry fds (`SCM_RIGHTS`) that now
    /// nobody will accept: they are closed first, so none leaks.
    pub(crate) fn discard_recv_buf(&mut self, kind: Option<OpKind>, id: u16, res: i32) {
        if kind == Some(OpKind::RecvMsg) && res > 0 {
            // SAFETY: buffer `id` was lent to the loop by its completion and
            // is recycled only below; nothing writes it meanwhile.
            let data = unsafe { self.pool.slice(id, res as usize) };
            if let Some(rec) = backend::parse_recvmsg(data) {
                crate::sys::socket::for_each_rights_fd(rec.control, crate::sys::close);
            }
        }
        self.driver.recycle(id);
    }

    pub(crate) fn push_pending(&mut self, p: Pending) {
        self.pending.push_back(p);
    }
}

impl<D> Drop for Loop<D> {
    fn drop(&mut self) {
        // Close every fd the loop still owns; the backend (and the ring with
        // it) goes after, taking in-flight operations with it.
        let ids: Vec<HandleId> =
            self.slots.iter().map(|(i, s)| HandleId { index: i as u32, generation: s.generation }).collect();
        for h in ids {
            self.drop_handle_resources(h);
        }
    }
}

impl<D> Loop<D> {
    fn drop_handle_resources(&mut self, h: HandleId) {
        let Ok(s) = self.slot_mut(h) else { return };
        match &mut s.kind {
            Kind::Stream(st) => st.drop_fds(),
            Kind::SignalPipe(_) => self.signal_pipe_drop(h),
            Kind::Signal(_) => self.signal_close(h),
            Kind::Udp(st) => st.drop_fd(),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    //! The op table: first-class operations, several of one kind per handle.

    use super::*;
    use crate::backend::uring::tests::alloc_count::count_allocs;
    use crate::handle::{OnPoll, PollEvents};
    use crate::sys;
    use std::os::fd::{AsRawFd, OwnedFd, RawFd};
    use std::time::{Duration, Instant};

    /// What an idle connection holds in the loop: its handle slot and its
    /// recv's entry in the op table (the slot of a connection that is not
    /// writing or connecting: the write side, the connect part and the
    /// listener part are out of line). The backends pin their own per-fd
    /// and per-op entries (epoll's `Reg`, io_uring's op table).
    #[test]
    fn idle_connection_layout() {
        use std::mem::size_of;
        assert!(size_of::<Slot<()>>() <= 264, "handle slot: {} bytes", size_of::<Slot<()>>());
        assert!(size_of::<crate::stream::StreamState<()>>() <= 224);
        assert!(size_of::<crate::stream::StreamParts<()>>() <= 32);
        assert!(size_of::<OpEntry>() <= 20, "op entry: {} bytes", size_of::<OpEntry>());
        // The handle kind's tag lives in a niche of the stream's state: a
        // slot is its header (generation, flags, data, close callback) and
        // the largest kind, nothing more.
        assert!(size_of::<Kind<()>>() == size_of::<crate::stream::StreamState<()>>());
    }

    /// A loop on each backend: epoll, and io_uring when the ring can be set
    /// up here (else a visible SKIP, or a failure with
    /// `UVRING_REQUIRE_IO_URING=1`).
    fn loops<D>() -> Vec<Loop<D>> {
        let mut all = vec![Loop::with_backend(Backend::Epoll).expect("epoll loop")];
        match Loop::with_backend(Backend::IoUring) {
            Ok(lp) => all.push(lp),
            Err(e) if std::env::var("UVRING_REQUIRE_IO_URING").as_deref() == Ok("1") => {
                panic!("io_uring required but unavailable: {e}")
            }
            Err(e) => eprintln!("SKIP (io_uring half): io_uring unavailable: {e}"),
        }
        all
    }

    /// Submits an op that lends no memory, for which rule 3 asks nothing.
    fn submit<D>(lp: &mut Loop<D>, h: HandleId, op: Op<'_>) -> Result<Token> {
        assert!(!matches!(op, Op::Send { .. } | Op::Read { .. }), "{op:?} lends memory");
        // SAFETY: checked above: the op lends no memory.
        unsafe { lp.submit_op(h, op) }
    }

    /// Polls the backend and books each completion against the op table, as
    /// `dispatch` does before it routes, until `n` have arrived.
    fn book<D>(lp: &mut Loop<D>, n: usize) -> Vec<(Completion, Option<OpEntry>)> {
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut all = Vec::new();
        let mut out = Vec::with_capacity(64);
        while all.len() < n {
            assert!(Instant::now() < deadline, "{}: timed out; so far: {all:?}", lp.backend());
            out.clear();
            lp.driver.poll(100, &mut out).expect("poll");
            for c in &out {
                all.push((*c, lp.op_completed(c)));
            }
        }
        all
    }

    fn pipe() -> (OwnedFd, OwnedFd) {
        sys::pipe().expect("pipe")
    }

    fn poll_in(fd: RawFd) -> Op<'static> {
        Op::Poll { fd, events: libc::POLLIN as u32 }
    }

    #[test]
    fn two_reads_and_two_polls_of_one_handle_complete_with_their_own_tokens() {
        for mut lp in loops::<()>() {
            let backend = lp.backend();
            // Any handle can own ops; a timer has none of its own.
            let h = lp.timer_init().unwrap().id();
            let (ev1, ev2) = (sys::eventfd().unwrap(), sys::eventfd().unwrap());
            let ((r1, w1), (r2, w2)) = (pipe(), pipe());
            let mut counters = Box::new([0u64; 2]);
            let (c1, c2) = counters.split_at_mut(1);
            // SAFETY: `counters` is boxed and outlives both reads, whose
            // completions are awaited below.
            let reads = unsafe {
                [
                    lp.submit_op(h, Op::Read { fd: ev1.as_raw_fd(), ptr: c1.as_mut_ptr().cast(), len: 8 }).unwrap(),
                    lp.submit_op(h, Op::Read { fd: ev2.as_raw_fd(), ptr: c2.as_mut_ptr().cast(), len: 8 }).unwrap(),
                ]
            };
            let polls = [
                submit(&mut lp, h, poll_in(r1.as_raw_fd())).unwrap(),
                submit(&mut lp, h, poll_in(r2.as_raw_fd())).unwrap(),
            ];
            let tokens = [reads[0], reads[1], polls[0], polls[1]];
            for (i, t) in tokens.iter().enumerate() {
                assert!(!tokens[..i].contains(t), "{backend}: tokens are per op: {tokens:?}");
            }
            assert_eq!(lp.slot(h).unwrap().inflight, 4);
            assert_eq!(lp.ops.len(), 4);

            sys::eventfd_signal(ev2.as_raw_fd());
            sys::eventfd_signal(ev1.as_raw_fd());
            sys::write(w1.as_raw_fd(), b"!").unwrap();
            sys::write(w2.as_raw_fd(), b"!").unwrap();
            let done = book(&mut lp, 4);
            for t in tokens {
                let mine: Vec<_> = done.iter().filter(|(c, _)| c.token == t).collect();
                assert_eq!(mine.len(), 1, "{backend}: one completion for {t:?}: {done:?}");
                let (c, op) = mine[0];
                assert!(c.res > 0 && !c.more, "{backend}: {c:?}");
                assert_eq!(
                    *op,
                    Some(OpEntry { generation: t.generation(), handle: h, kind: t.kind().unwrap(), req: 0 })
                );
            }
            assert_eq!(*counters, [1, 1]);
            assert_eq!(lp.slot(h).unwrap().inflight, 0, "{backend}: final completions uncount their ops");
            assert!(lp.ops.is_empty(), "{backend}: final completions free their entries");

            // A completion naming a finished op is stale: booked as nothing.
            let stale = Completion { token: reads[0], res: 8, buf: None, more: false };
            assert_eq!(lp.op_completed(&stale), None);
            // Entries are reused under a new generation, so old tokens stay stale.
            let again = submit(&mut lp, h, poll_in(r1.as_raw_fd())).unwrap();
            assert!(tokens.iter().any(|t| t.index() == again.index()) && !tokens.contains(&again), "{again:?}");
            lp.driver.cancel(r1.as_raw_fd(), again);
            let end = book(&mut lp, 1);
            assert_eq!(end[0].1.map(|op| op.handle), Some(h));

            lp.close(h, None).unwrap();
            lp.run(RunMode::Default, &mut ()).unwrap();
            assert_eq!(lp.handle_count(), 0);
        }
    }

    #[test]
    fn a_poll_watcher_changing_its_events_has_two_polls_in_flight() {
        for mut lp in loops::<Vec<PollEvents>>() {
            let backend = lp.backend();
            // The write end of a pipe: writable, never readable.
            let (_r, w) = pipe();
            let p = lp.poll_init(w.as_raw_fd()).unwrap();
            let on_poll = OnPoll::new(|lp: &mut Loop<Vec<PollEvents>>, seen: &mut Vec<PollEvents>, p, events| {
                seen.push(events.unwrap());
                lp.close(p, None).unwrap();
            });
            lp.poll_start(p, PollEvents::READABLE, &on_poll).unwrap();
            // The first poll is cancelled and a second armed at once.
            lp.poll_start(p, PollEvents::WRITABLE, &on_poll).unwrap();
            assert_eq!(lp.slot(p.id()).unwrap().inflight, 2, "{backend}");
            let mut seen = Vec::new();
            lp.run(RunMode::Default, &mut seen).unwrap();
            assert_eq!(seen, [PollEvents::WRITABLE], "{backend}: only the current op reports");
            assert_eq!(lp.handle_count(), 0);
            assert!(lp.ops.is_empty());
        }
    }

    #[test]
    fn submitting_and_completing_ops_does_not_allocate_after_warm_up() {
        for mut lp in loops::<()>() {
            let backend = lp.backend();
            let h = lp.timer_init().unwrap().id();
            let ((r1, w1), (r2, w2)) = (pipe(), pipe());
            sys::write(w1.as_raw_fd(), b"!").unwrap();
            sys::write(w2.as_raw_fd(), b"!").unwrap();
            let mut out = Vec::with_capacity(64);
            // Two polls of one handle per round; both fds stay readable.
            let mut round = |lp: &mut Loop<()>| {
                submit(lp, h, poll_in(r1.as_raw_fd())).unwrap();
                submit(lp, h, poll_in(r2.as_raw_fd())).unwrap();
                let mut done = 0;
                while done < 2 {
                    out.clear();
                    lp.driver.poll(100, &mut out).unwrap();
                    for c in &out {
                        assert!(lp.op_completed(c).is_some());
                        done += 1;
                    }
                }
            };
            for _ in 0..3 {
                round(&mut lp);
            }
            let (allocs, ()) = count_allocs(|| {
                for _ in 0..100 {
                    round(&mut lp);
                }
            });
            assert_eq!(allocs, 0, "{backend}: the op table allocated {allocs} times after warm-up");
            lp.close(h, None).unwrap();
            lp.run(RunMode::Default, &mut ()).unwrap();
        }
    }
}
