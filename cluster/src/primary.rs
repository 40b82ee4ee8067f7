//! The primary side: forks workers, answers their listen queries, accepts
//! and hands connections over (`rr`), holds the shared store, reports
//! worker events, restarts crashed workers and rolls restarts.
//!
//! # Round robin without leaks
//!
//! The primary accepts with [`Loop::accept_fd`] (no handle per connection)
//! and queues the fd. Once per loop iteration (a check hook, so that a burst
//! accepted in one poll goes out together) each queued connection is given
//! to the next member worker of its listener in rotation, passing over
//! workers loaded more than a slack above the least-loaded one
//! ([`RoundRobin`]; load = unacknowledged + reported open connections): the
//! fd joins that worker's batch (up to 16 fds in one `NewConnection` frame)
//! and the primary keeps it, numbered, until the worker acknowledges it.
//! Accepted: the primary closes it. Refused: the connection is queued again
//! for another worker. The worker's channel closes first: all its
//! unacknowledged connections are queued again, once the channel's close
//! has completed. A connection that no worker can take (no member left, or
//! too many refusals) is closed. Nothing on this path allocates once the
//! queues have their capacity.
//!
//! The batch is sent with [`Loop::write_fds_borrowed`]: the loop sends the
//! primary's own fds, so no duplicate is made (and closed) per connection.
//! Its contract (an fd stays open until the kernel is done with it) holds
//! because an fd in `unacked` is closed only after its worker acknowledged
//! it (the worker received it: the send is done), and the unacknowledged
//! fds of a closed channel wait in `limbo` until the loop has freed that
//! channel (every send on it has ended) before they can be re-sent or
//! closed.
//!
//! # Re-entrancy
//!
//! State lives in one `Rc<RefCell<PrimaryState<D>>>`; loop callbacks hold a
//! `Weak`. User callbacks (events) run through a queue with the borrow
//! released, so they may call any `Primary` or `WorkerHandle` method. As
//! everywhere in the loop, no user callback runs inside an API call: events
//! that an API call causes (a fork, a kill's disconnect, a finished
//! `disconnect` or `rolling_restart`) are delivered from a loop callback (a
//! zero-delay timer), with the loop's user data `D`.

use crate::channel::{feed_chunk, ChannelError, Flow, FrameWriter};
use crate::proto::{
    Decoded, Frame, FrameDecoder, FrameFds, ListenAddress, ListenFlags, ListenKey, SocketType, StoreStatus,
};
use crate::schedule::{RespawnDecision, RestartGovernor, RoundRobin, WorkerId};
use crate::settings::{
    ChildOutput, SchedPolicy, Settings, ENV_BACKEND, ENV_CHANNEL_FD, ENV_NORMAL_SCHED, ENV_SCHED_POLICY, ENV_WORKER_ID,
};
use crate::store::SharedStore;
use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::ffi::{OsStr, OsString};
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsRawFd, BorrowedFd, IntoRawFd, OwnedFd, RawFd};
use std::path::PathBuf;
use std::rc::{Rc, Weak};
use std::time::Duration;
use uvring::{
    Error, FdBatch, HandleId, Hook, HookKind, Loop, OnClose, OnConnection, OnExit, OnHook, OnRead, OnTimer, PipeStream,
    Process, ProcessOptions, Result, Stdio, TcpListener, TcpSocket, Timer, TCP_IPV6ONLY,
};

/// Environment variable telling workers how often to report their load (ms).
pub const ENV_LOAD_REPORT_MS: &str = "UVRING_CLUSTER_LOAD_MS";

/// The child fd number of the IPC channel.
const CHANNEL_FD: i32 = 3;

/// A connection refused or orphaned this many times is closed.
const MAX_ATTEMPTS: u8 = 8;

/// Where a worker is in its life (Node's `worker.state`).
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum WorkerStatus {
    /// Forked; not online yet.
    Starting,
    /// Said `Online`.
    Online,
    /// Has at least one server listening.
    Listening,
    /// Asked to disconnect; its channel is still open.
    Disconnecting,
    /// Its channel is closed; the process may still run.
    Disconnected,
    /// The process exited.
    Dead,
}

/// Counters of the round-robin hand-off.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct ClusterStats {
    /// Connections a worker accepted.
    pub handed_off: u64,
    /// Refusals by workers (each refused connection was queued again).
    pub refused: u64,
    /// Connections queued again because their worker's channel closed.
    pub redistributed: u64,
    /// Connections closed because no worker could take them.
    pub closed_unroutable: u64,
}

struct WorkerInfo {
    id: WorkerId,
    pid: Cell<i32>,
    status: Cell<WorkerStatus>,
    connected: Cell<bool>,
    exited_after_disconnect: Cell<bool>,
}

/// A worker as the primary sees it (Node's `Worker` object in the primary).
/// Cheap to clone; stays valid (reporting `is_dead`) after the worker exits.
pub struct WorkerHandle<D> {
    info: Rc<WorkerInfo>,
    primary: Weak<RefCell<PrimaryState<D>>>,
}

impl<D> Clone for WorkerHandle<D> {
    fn clone(&self) -> Self {
        WorkerHandle { info: self.info.clone(), primary: self.primary.clone() }
    }
}

impl<D> std::fmt::Debug for WorkerHandle<D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerHandle")
            .field("id", &self.info.id)
            .field("pid", &self.info.pid.get())
            .field("status", &self.info.status.get())
            .finish()
    }
}

struct Unacked {
    seq: u64,
    listener_id: u32,
    attempts: u8,
    fd: OwnedFd,
}

struct WorkerEntry {
    info: Rc<WorkerInfo>,
    process: Option<Process>,
    channel: Option<PipeStream>,
    /// The channel's decoder; out of the entry while a chunk is decoded.
    decoder: Option<FrameDecoder>,
    disconnecting: bool,
    unacked: VecDeque<Unacked>,
    next_seq: u64,
    reported_load: u32,
    /// Connections of the batch being built: the last `batch_len` entries
    /// of `unacked`.
    batch_len: usize,
    batch_listener: u32,
    batch_first_seq: u64,
}

impl WorkerEntry {
    fn load(&self) -> Option<u32> {
        if self.channel.is_none() || self.disconnecting {
            return None;
        }
        // Acknowledged connections count through the worker's next report
        // (counting them here too would turn throughput into load).
        Some(self.unacked.len() as u32 + self.reported_load)
    }
}

enum ListenerMode {
    /// The primary accepts on the listener and hands connections over.
    RoundRobin(RoundRobin, TcpListener),
    /// The socket listens (outside the loop) and its members accept on
    /// copies of it.
    Shared(Vec<WorkerId>, TcpSocket),
}

struct Listener {
    id: u32,
    requested: SocketAddr,
    index: u32,
    flags: u32,
    port: u16,
    mode: ListenerMode,
}

impl Listener {
    fn remove_member(&mut self, w: WorkerId) {
        match &mut self.mode {
            ListenerMode::RoundRobin(rr, _) => {
                rr.remove(w);
            }
            ListenerMode::Shared(v, _) => v.retain(|&x| x != w),
        }
    }

    fn is_empty(&self) -> bool {
        match &self.mode {
            ListenerMode::RoundRobin(rr, _) => rr.is_empty(),
            ListenerMode::Shared(v, _) => v.is_empty(),
        }
    }

    /// The loop handle of its socket.
    fn handle(&self) -> HandleId {
        match self.mode {
            ListenerMode::RoundRobin(_, l) => l.id(),
            ListenerMode::Shared(_, s) => s.id(),
        }
    }
}

struct PendingConn {
    listener_id: u32,
    attempts: u8,
    exclude: Option<WorkerId>,
    fd: OwnedFd,
}

type WorkerFn<D> = dyn Fn(&mut Loop<D>, &mut D, &WorkerHandle<D>);
type ListeningFn<D> = dyn Fn(&mut Loop<D>, &mut D, &WorkerHandle<D>, SocketAddr);
type MessageFn<D> = dyn Fn(&mut Loop<D>, &mut D, &WorkerHandle<D>, &[u8], &mut FrameFds);
type ExitFn<D> = dyn Fn(&mut Loop<D>, &mut D, &WorkerHandle<D>, i64, i32);
type StormFn<D> = dyn Fn(&mut Loop<D>, &mut D);
type DoneFn<D> = Box<dyn FnOnce(&mut Loop<D>, &mut D)>;

struct Events<D> {
    fork: Option<Rc<WorkerFn<D>>>,
    online: Option<Rc<WorkerFn<D>>>,
    listening: Option<Rc<ListeningFn<D>>>,
    message: Option<Rc<MessageFn<D>>>,
    disconnect: Option<Rc<WorkerFn<D>>>,
    exit: Option<Rc<ExitFn<D>>>,
    storm: Option<Rc<StormFn<D>>>,
}

impl<D> Default for Events<D> {
    fn default() -> Self {
        Events { fork: None, online: None, listening: None, message: None, disconnect: None, exit: None, storm: None }
    }
}

enum Event<D> {
    Fork(Rc<WorkerInfo>),
    Online(Rc<WorkerInfo>),
    Listening(Rc<WorkerInfo>, SocketAddr),
    Disconnect(Rc<WorkerInfo>),
    Exit(Rc<WorkerInfo>, i64, i32),
    Storm,
    /// `Primary::disconnect` is complete (its callbacks follow as `Done`):
    /// respawning may resume.
    ShutdownDone,
    Done(DoneFn<D>),
}

struct Rolling<D> {
    old: VecDeque<WorkerId>,
    /// (old, replacement) being swapped now.
    current: Option<(WorkerId, WorkerId)>,
    done: Option<DoneFn<D>>,
}

struct PrimaryState<D> {
    settings: Settings,
    /// This thread moved to `SCHED_BATCH` ([`Settings::batch_scheduling`]):
    /// workers are told to move back to the normal policy.
    batch_sched: bool,
    exec: PathBuf,
    args: Vec<OsString>,
    workers: Vec<WorkerEntry>,
    next_worker_id: WorkerId,
    listeners: Vec<Listener>,
    next_listener_id: u32,
    pending: VecDeque<PendingConn>,
    dispatch_hook: Option<Hook>,
    writer: FrameWriter,
    store: SharedStore,
    events: Events<D>,
    queue: VecDeque<Event<D>>,
    dispatching: bool,
    /// The zero-delay timer that delivers events queued by an API call.
    drain_timer: Option<Timer>,
    governor: RestartGovernor,
    shutting_down: bool,
    disconnect_cbs: Vec<DoneFn<D>>,
    respawn_timers: Vec<Timer>,
    stats: ClusterStats,
    rolling: Option<Rolling<D>>,
    rr_on_connection: Option<OnConnection<D, TcpListener>>,
    /// Unacknowledged connections of closed channels, until the loop has
    /// freed the channel (see the module docs).
    limbo: Vec<(PipeStream, PendingConn)>,
    on_channel_read: Option<OnRead<D, PipeStream>>,
    on_channel_freed: Option<OnClose<D>>,
    on_exit: Option<OnExit<D>>,
    on_dispatch: Option<OnHook<D>>,
    on_respawn: Option<OnTimer<D>>,
    on_drain: Option<OnTimer<D>>,
}

impl<D> PrimaryState<D> {
    fn entry(&self, id: WorkerId) -> Option<&WorkerEntry> {
        self.workers.iter().find(|w| w.info.id == id)
    }

    fn entry_mut(&mut self, id: WorkerId) -> Option<&mut WorkerEntry> {
        self.workers.iter_mut().find(|w| w.info.id == id)
    }

    fn send_to(&mut self, lp: &mut Loop<D>, id: WorkerId, frame: &Frame<'_>) -> Result<()> {
        let ch = self.entry(id).and_then(|w| w.channel).ok_or(Error::ENOTCONN)?;
        self.writer.send(lp, ch, frame)
    }

    /// Removes `w` from `listener_id`; closes the listener when it has no
    /// member left.
    fn leave_listener(&mut self, lp: &mut Loop<D>, listener_id: u32, w: WorkerId) {
        let Some(i) = self.listeners.iter().position(|l| l.id == listener_id) else { return };
        self.listeners[i].remove_member(w);
        if self.listeners[i].is_empty() {
            let l = self.listeners.swap_remove(i);
            let _ = lp.close(l.handle(), None);
        }
    }

    fn leave_all_listeners(&mut self, lp: &mut Loop<D>, w: WorkerId) {
        let mut i = 0;
        while i < self.listeners.len() {
            self.listeners[i].remove_member(w);
            if self.listeners[i].is_empty() {
                let l = self.listeners.swap_remove(i);
                let _ = lp.close(l.handle(), None);
            } else {
                i += 1;
            }
        }
    }
}

impl<D> Drop for PrimaryState<D> {
    fn drop(&mut self) {
        // A send queued on a channel that is still open (or still closing)
        // may name these fds (`write_fds_borrowed`). With the primary gone,
        // nobody learns when those sends end, so the fds are left open
        // rather than letting the loop send whatever file takes the number
        // next. (After an orderly shutdown every channel is freed and
        // nothing is left here.)
        for w in &mut self.workers {
            if w.channel.is_some() {
                for u in w.unacked.drain(..) {
                    let _ = u.fd.into_raw_fd();
                }
            }
        }
        for (_, conn) in self.limbo.drain(..) {
            let _ = conn.fd.into_raw_fd();
        }
    }
}

/// The primary process's side of the cluster (Node's `cluster` in the
/// primary), on a loop whose user data is `D`. Cheap to clone.
pub struct Primary<D> {
    shared: Rc<RefCell<PrimaryState<D>>>,
}

impl<D> Clone for Primary<D> {
    fn clone(&self) -> Self {
        Primary { shared: self.shared.clone() }
    }
}

impl<D> std::fmt::Debug for Primary<D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Primary").field("workers", &self.shared.borrow().workers.len()).finish()
    }
}

impl<D: 'static> Primary<D> {
    /// A primary with `settings`; no worker is forked yet ([`start`](Self::start)
    /// forks `settings.workers`, [`fork`](Self::fork) one).
    pub fn new(lp: &mut Loop<D>, settings: Settings) -> Result<Primary<D>> {
        let _ = lp;
        let exec = match &settings.exec {
            Some(p) => p.clone(),
            None => std::env::current_exe().map_err(Error::from)?,
        };
        let args = match &settings.args {
            Some(a) => a.clone(),
            None => std::env::args_os().skip(1).collect(),
        };
        let governor = RestartGovernor::new(settings.respawn.clone());
        // See `Settings::batch_scheduling`. A thread the user already put
        // under another policy keeps it.
        let batch_sched = settings.policy == SchedPolicy::RoundRobin
            && settings.batch_scheduling
            && uvring::os::sched_is_normal()
            && uvring::os::set_sched_batch(true).is_ok();
        let shared = Rc::new(RefCell::new(PrimaryState {
            settings,
            batch_sched,
            exec,
            args,
            workers: Vec::with_capacity(16),
            next_worker_id: 1,
            listeners: Vec::new(),
            next_listener_id: 1,
            pending: VecDeque::with_capacity(256),
            dispatch_hook: None,
            writer: FrameWriter::new(),
            store: SharedStore::new(),
            events: Events::default(),
            queue: VecDeque::with_capacity(16),
            dispatching: false,
            drain_timer: None,
            governor,
            shutting_down: false,
            disconnect_cbs: Vec::new(),
            respawn_timers: Vec::new(),
            stats: ClusterStats::default(),
            rolling: None,
            rr_on_connection: None,
            limbo: Vec::new(),
            on_channel_read: None,
            on_channel_freed: None,
            on_exit: None,
            on_dispatch: None,
            on_respawn: None,
            on_drain: None,
        }));
        let weak = Rc::downgrade(&shared);
        {
            let mut st = shared.borrow_mut();
            st.rr_on_connection = Some(rr_on_connection(weak.clone()));
            st.on_channel_read = Some(channel_reader(weak.clone()));
            st.on_channel_freed = Some(on_channel_freed(weak.clone()));
            st.on_exit = Some(on_worker_exit(weak.clone()));
            st.on_dispatch = Some(on_dispatch(weak.clone()));
            st.on_respawn = Some(on_respawn(weak.clone()));
            st.on_drain = Some(on_drain(weak));
        }
        Ok(Primary { shared })
    }

    /// The settings.
    pub fn settings(&self) -> Settings {
        self.shared.borrow().settings.clone()
    }

    /// The scheduling policy.
    pub fn policy(&self) -> SchedPolicy {
        self.shared.borrow().settings.policy
    }

    /// Forks `settings.workers` workers.
    pub fn start(&self, lp: &mut Loop<D>) -> Result<()> {
        let n = self.shared.borrow().settings.workers;
        for _ in 0..n {
            self.fork(lp)?;
        }
        Ok(())
    }

    /// Forks one worker (Node's `cluster.fork()`). Its `fork` event comes
    /// from the loop, after this call.
    pub fn fork(&self, lp: &mut Loop<D>) -> Result<WorkerHandle<D>> {
        self.fork_with_env(lp, &[])
    }

    /// Forks one worker with extra environment variables (Node's
    /// `cluster.fork(env)`).
    pub fn fork_with_env(&self, lp: &mut Loop<D>, extra_env: &[(&str, &str)]) -> Result<WorkerHandle<D>> {
        let h = fork_worker(&self.shared, lp, extra_env);
        schedule_drain(&self.shared, lp);
        h
    }

    /// Live workers (not yet exited), in fork order.
    pub fn workers(&self) -> Vec<WorkerHandle<D>> {
        let weak = Rc::downgrade(&self.shared);
        self.shared
            .borrow()
            .workers
            .iter()
            .map(|w| WorkerHandle { info: w.info.clone(), primary: weak.clone() })
            .collect()
    }

    /// The live worker with this id.
    pub fn worker(&self, id: WorkerId) -> Option<WorkerHandle<D>> {
        let weak = Rc::downgrade(&self.shared);
        self.shared.borrow().entry(id).map(|w| WorkerHandle { info: w.info.clone(), primary: weak })
    }

    /// Number of live workers (the worker table's size).
    pub fn worker_count(&self) -> usize {
        self.shared.borrow().workers.len()
    }

    /// Listeners the primary holds open for workers.
    pub fn listener_count(&self) -> usize {
        self.shared.borrow().listeners.len()
    }

    /// Round-robin counters.
    pub fn stats(&self) -> ClusterStats {
        self.shared.borrow().stats
    }

    /// Whether a restart storm stopped respawning.
    pub fn respawn_stopped(&self) -> bool {
        self.shared.borrow().governor.stormed()
    }

    /// A worker was forked: `(loop, data, worker)`.
    pub fn on_fork(&self, cb: impl Fn(&mut Loop<D>, &mut D, &WorkerHandle<D>) + 'static) {
        self.shared.borrow_mut().events.fork = Some(Rc::new(cb));
    }

    /// A worker said it is up: `(loop, data, worker)`.
    pub fn on_online(&self, cb: impl Fn(&mut Loop<D>, &mut D, &WorkerHandle<D>) + 'static) {
        self.shared.borrow_mut().events.online = Some(Rc::new(cb));
    }

    /// A worker's server is listening: `(loop, data, worker, real address)`.
    pub fn on_listening(&self, cb: impl Fn(&mut Loop<D>, &mut D, &WorkerHandle<D>, SocketAddr) + 'static) {
        self.shared.borrow_mut().events.listening = Some(Rc::new(cb));
    }

    /// A user message from a worker: `(loop, data, worker, bytes, fds)`,
    /// with the fds sent alongside (those not taken are closed after the
    /// call).
    pub fn on_message(&self, cb: impl Fn(&mut Loop<D>, &mut D, &WorkerHandle<D>, &[u8], &mut FrameFds) + 'static) {
        self.shared.borrow_mut().events.message = Some(Rc::new(cb));
    }

    /// A worker's channel closed: `(loop, data, worker)`.
    pub fn on_disconnect(&self, cb: impl Fn(&mut Loop<D>, &mut D, &WorkerHandle<D>) + 'static) {
        self.shared.borrow_mut().events.disconnect = Some(Rc::new(cb));
    }

    /// A worker exited: `(loop, data, worker, exit code, terminating
    /// signal)`, one of the last two 0.
    pub fn on_exit(&self, cb: impl Fn(&mut Loop<D>, &mut D, &WorkerHandle<D>, i64, i32) + 'static) {
        self.shared.borrow_mut().events.exit = Some(Rc::new(cb));
    }

    /// Respawning stopped because of a restart storm: `(loop, data)`.
    pub fn on_restart_storm(&self, cb: impl Fn(&mut Loop<D>, &mut D) + 'static) {
        self.shared.borrow_mut().events.storm = Some(Rc::new(cb));
    }

    /// Disconnects every worker (Node's `cluster.disconnect(cb)`); `cb` runs
    /// once every worker has exited, always from a later loop turn (even
    /// when there is no worker). No worker is respawned meanwhile.
    pub fn disconnect(&self, lp: &mut Loop<D>, cb: impl FnOnce(&mut Loop<D>, &mut D) + 'static) {
        let (ids, timers) = {
            let mut st = self.shared.borrow_mut();
            st.shutting_down = true;
            st.disconnect_cbs.push(Box::new(cb));
            let ids: Vec<WorkerId> = st.workers.iter().map(|w| w.info.id).collect();
            (ids, std::mem::take(&mut st.respawn_timers))
        };
        for t in timers {
            let _ = lp.close(t, None);
        }
        for id in ids {
            disconnect_worker(&self.shared, lp, id);
        }
        check_shutdown_done(&self.shared);
        schedule_drain(&self.shared, lp);
    }

    /// Replaces every worker, one at a time, without dropping service: a new
    /// worker is forked, and the old one is disconnected (its connections
    /// drain) once the new one listens. `cb` runs when all are replaced
    /// (from a later loop turn).
    pub fn rolling_restart(&self, lp: &mut Loop<D>, cb: impl FnOnce(&mut Loop<D>, &mut D) + 'static) {
        {
            let mut st = self.shared.borrow_mut();
            let old: VecDeque<WorkerId> = st.workers.iter().map(|w| w.info.id).collect();
            st.rolling = Some(Rolling { old, current: None, done: Some(Box::new(cb)) });
        }
        rolling_step(&self.shared, lp);
        schedule_drain(&self.shared, lp);
    }

    /// Reads the shared store.
    pub fn store_get(&self, key: &[u8]) -> Option<Vec<u8>> {
        self.shared.borrow().store.get(key).map(<[u8]>::to_vec)
    }

    /// Writes the shared store.
    pub fn store_set(&self, key: &[u8], value: &[u8]) {
        self.shared.borrow_mut().store.set(key, value);
    }

    /// Removes a key from the shared store; returns whether it was there.
    pub fn store_delete(&self, key: &[u8]) -> bool {
        self.shared.borrow_mut().store.delete(key)
    }

    /// Number of keys in the shared store.
    pub fn store_len(&self) -> usize {
        self.shared.borrow().store.len()
    }
}

impl<D: 'static> WorkerHandle<D> {
    /// The worker's id (Node's `worker.id`).
    pub fn id(&self) -> WorkerId {
        self.info.id
    }

    /// The worker's process id.
    pub fn pid(&self) -> i32 {
        self.info.pid.get()
    }

    /// Where the worker is in its life.
    pub fn status(&self) -> WorkerStatus {
        self.info.status.get()
    }

    /// Whether the process has exited.
    pub fn is_dead(&self) -> bool {
        self.info.status.get() == WorkerStatus::Dead
    }

    /// Whether the IPC channel is open.
    pub fn is_connected(&self) -> bool {
        self.info.connected.get()
    }

    /// Whether the worker left because of `disconnect` or `kill` (not a crash).
    pub fn exited_after_disconnect(&self) -> bool {
        self.info.exited_after_disconnect.get()
    }

    /// Connections handed to this worker and not yet acknowledged.
    pub fn unacked_connections(&self) -> usize {
        let Some(state) = self.primary.upgrade() else { return 0 };
        let st = state.borrow();
        st.entry(self.info.id).map_or(0, |w| w.unacked.len())
    }

    /// Sends a user message.
    pub fn send(&self, lp: &mut Loop<D>, bytes: &[u8]) -> Result<()> {
        let state = self.primary.upgrade().ok_or(Error::ENOTCONN)?;
        let mut st = state.borrow_mut();
        st.send_to(lp, self.info.id, &Frame::Message { bytes, nfds: 0 })
    }

    /// Sends a user message with fds attached (each is duplicated; the
    /// caller keeps its own). At most 16 fds.
    pub fn send_with_fds(&self, lp: &mut Loop<D>, bytes: &[u8], fds: &[BorrowedFd<'_>]) -> Result<()> {
        let state = self.primary.upgrade().ok_or(Error::ENOTCONN)?;
        if fds.len() > crate::proto::MAX_FDS_PER_FRAME {
            return Err(Error::EINVAL);
        }
        let mut batch = FdBatch::new();
        for fd in fds {
            batch.push(fd.try_clone_to_owned().map_err(Error::from)?).map_err(|_| Error::EINVAL)?;
        }
        let mut st = state.borrow_mut();
        let ch = st.entry(self.info.id).and_then(|w| w.channel).ok_or(Error::ENOTCONN)?;
        let frame = Frame::Message { bytes, nfds: fds.len() as u8 };
        st.writer.send_fds(lp, ch, &frame, &mut batch)
    }

    /// Asks the worker to leave gracefully (Node's `worker.disconnect()`):
    /// it closes its servers, lets open connections finish, and exits.
    pub fn disconnect(&self, lp: &mut Loop<D>) {
        if let Some(state) = self.primary.upgrade() {
            disconnect_worker(&state, lp, self.info.id);
            schedule_drain(&state, lp);
        }
    }

    /// Kills the worker with `signum` (Node's `worker.kill()`): the channel
    /// closes now, the process gets the signal, and the worker counts as
    /// having exited after a disconnect (it is not respawned). The
    /// `disconnect` event comes from the loop, after this call.
    pub fn kill(&self, lp: &mut Loop<D>, signum: i32) -> Result<()> {
        let state = self.primary.upgrade().ok_or(Error::ESRCH)?;
        self.info.exited_after_disconnect.set(true);
        let process = state.borrow().entry(self.info.id).and_then(|w| w.process);
        channel_closed(&state, lp, self.info.id);
        let res = match process {
            Some(p) => lp.process_kill(p, signum),
            None => Err(Error::ESRCH),
        };
        schedule_drain(&state, lp);
        res
    }
}

// ---- forking -------------------------------------------------------------

fn fork_worker<D: 'static>(
    state: &Rc<RefCell<PrimaryState<D>>>,
    lp: &mut Loop<D>,
    extra_env: &[(&str, &str)],
) -> Result<WorkerHandle<D>> {
    let (id, exec, args, env, output, on_exit, reader) = {
        let mut st = state.borrow_mut();
        let id = st.next_worker_id;
        st.next_worker_id += 1;
        let backend = st.settings.backend.unwrap_or(lp.backend());
        let ours = [ENV_WORKER_ID, ENV_CHANNEL_FD, ENV_SCHED_POLICY, ENV_BACKEND, ENV_LOAD_REPORT_MS, ENV_NORMAL_SCHED];
        let mut env: Vec<(OsString, OsString)> =
            std::env::vars_os().filter(|(k, _)| !ours.iter().any(|o| OsStr::new(o) == k)).collect();
        for (k, v) in &st.settings.env {
            env.retain(|(x, _)| x != k);
            env.push((k.clone(), v.clone()));
        }
        for (k, v) in extra_env {
            env.retain(|(x, _)| x != OsStr::new(k));
            env.push((k.into(), v.into()));
        }
        env.push((ENV_WORKER_ID.into(), id.to_string().into()));
        env.push((ENV_CHANNEL_FD.into(), CHANNEL_FD.to_string().into()));
        env.push((ENV_SCHED_POLICY.into(), st.settings.policy.name().into()));
        env.push((ENV_BACKEND.into(), backend.name().into()));
        env.push((ENV_LOAD_REPORT_MS.into(), st.settings.load_report_ms.to_string().into()));
        if st.batch_sched {
            env.push((ENV_NORMAL_SCHED.into(), "1".into()));
        }
        let on_exit = st.on_exit.clone().ok_or(Error::INVALID_STATE)?;
        let reader = st.on_channel_read.clone().ok_or(Error::INVALID_STATE)?;
        (id, st.exec.clone(), st.args.clone(), env, st.settings.output, on_exit, reader)
    };
    ensure_dispatch_hook(state, lp)?;
    let pipe = lp.pipe_init(true)?;
    let stdout = match output {
        ChildOutput::Inherit => Stdio::Inherit,
        ChildOutput::QuietStdout => Stdio::Ignore,
    };
    let stdio = [Stdio::Inherit, stdout, Stdio::Inherit, Stdio::Ipc(pipe)];
    let arg_refs: Vec<&OsStr> = args.iter().map(OsString::as_os_str).collect();
    let env_refs: Vec<(&OsStr, &OsStr)> = env.iter().map(|(k, v)| (k.as_os_str(), v.as_os_str())).collect();
    let opts = ProcessOptions {
        file: &exec,
        args: &arg_refs,
        env: Some(&env_refs),
        cwd: None,
        stdio: &stdio,
        detached: false,
    };
    let process = match lp.spawn(&opts, &on_exit) {
        Ok(p) => p,
        Err(e) => {
            let _ = lp.close(pipe, None);
            release_if_idle(state, lp);
            return Err(e);
        }
    };
    let _ = lp.set_data(process, id as usize);
    let pid = lp.process_pid(process).unwrap_or(-1);
    let info = Rc::new(WorkerInfo {
        id,
        pid: Cell::new(pid),
        status: Cell::new(WorkerStatus::Starting),
        connected: Cell::new(true),
        exited_after_disconnect: Cell::new(false),
    });
    // The spawn connected the socket: from now on it is the channel.
    let channel = match lp.pipe_stream(pipe) {
        Ok(ch) => Some(ch),
        Err(_) => {
            let _ = lp.close(pipe, None);
            info.connected.set(false);
            info.status.set(WorkerStatus::Disconnected);
            None
        }
    };
    let read_ok = match channel {
        Some(ch) => lp.set_data(ch, id as usize).is_ok() && lp.read_start(ch, &reader).is_ok(),
        None => true,
    };
    {
        let mut st = state.borrow_mut();
        st.workers.push(WorkerEntry {
            info: info.clone(),
            process: Some(process),
            channel,
            decoder: Some(FrameDecoder::new()),
            disconnecting: false,
            unacked: VecDeque::with_capacity(64),
            next_seq: 1,
            reported_load: 0,
            batch_len: 0,
            batch_listener: 0,
            batch_first_seq: 0,
        });
        st.queue.push_back(Event::Fork(info.clone()));
    }
    if !read_ok {
        channel_closed(state, lp, id);
    }
    Ok(WorkerHandle { info, primary: Rc::downgrade(state) })
}

fn ensure_dispatch_hook<D: 'static>(state: &Rc<RefCell<PrimaryState<D>>>, lp: &mut Loop<D>) -> Result<()> {
    let cb = {
        let st = state.borrow();
        if st.dispatch_hook.is_some() {
            return Ok(());
        }
        st.on_dispatch.clone().ok_or(Error::INVALID_STATE)?
    };
    let h = lp.hook_init(HookKind::Check)?;
    lp.hook_start(h, &cb)?;
    lp.unref_handle(h)?;
    state.borrow_mut().dispatch_hook = Some(h);
    Ok(())
}

/// Closes the primary's own handles once nothing is left to serve, so a
/// primary without workers keeps no loop handle.
fn release_if_idle<D>(state: &Rc<RefCell<PrimaryState<D>>>, lp: &mut Loop<D>) {
    let hook = {
        let mut st = state.borrow_mut();
        if !st.workers.is_empty() || !st.listeners.is_empty() || !st.pending.is_empty() || !st.limbo.is_empty() {
            return;
        }
        st.dispatch_hook.take()
    };
    if let Some(h) = hook {
        let _ = lp.close(h, None);
    }
}

// ---- events --------------------------------------------------------------

fn handle<D>(state: &Rc<RefCell<PrimaryState<D>>>, info: &Rc<WorkerInfo>) -> WorkerHandle<D> {
    WorkerHandle { info: info.clone(), primary: Rc::downgrade(state) }
}

/// Delivers the queued events from a loop callback soon (a zero-delay
/// timer): an API call queues events but never runs user callbacks itself.
fn schedule_drain<D: 'static>(state: &Rc<RefCell<PrimaryState<D>>>, lp: &mut Loop<D>) {
    let cb = {
        let st = state.borrow();
        if st.queue.is_empty() || st.drain_timer.is_some() {
            return;
        }
        match st.on_drain.clone() {
            Some(cb) => cb,
            None => return,
        }
    };
    let Ok(t) = lp.timer_init() else { return };
    if lp.timer_start(t, Duration::ZERO, Duration::ZERO, &cb).is_ok() {
        state.borrow_mut().drain_timer = Some(t);
    } else {
        let _ = lp.close(t, None);
    }
}

fn on_drain<D: 'static>(weak: Weak<RefCell<PrimaryState<D>>>) -> OnTimer<D> {
    OnTimer::new(move |lp, d, t| {
        let _ = lp.close(t, None);
        let Some(state) = weak.upgrade() else { return };
        {
            let mut st = state.borrow_mut();
            if st.drain_timer == Some(t) {
                st.drain_timer = None;
            }
        }
        drain_events(&state, lp, d);
    })
}

/// Runs queued events with the state unborrowed; nested calls only queue.
fn drain_events<D: 'static>(state: &Rc<RefCell<PrimaryState<D>>>, lp: &mut Loop<D>, d: &mut D) {
    {
        let mut st = state.borrow_mut();
        if st.dispatching {
            return;
        }
        st.dispatching = true;
    }
    loop {
        let (ev, events) = {
            let mut st = state.borrow_mut();
            let Some(ev) = st.queue.pop_front() else {
                st.dispatching = false;
                return;
            };
            if let Event::ShutdownDone = ev {
                if st.workers.is_empty() && st.disconnect_cbs.is_empty() {
                    st.shutting_down = false;
                }
            }
            let e = &st.events;
            let cbs = (
                e.fork.clone(),
                e.online.clone(),
                e.listening.clone(),
                e.disconnect.clone(),
                e.exit.clone(),
                e.storm.clone(),
            );
            (ev, cbs)
        };
        let (fork, online, listening, disconnect, exit, storm) = events;
        match ev {
            Event::Fork(info) => {
                if let Some(cb) = fork {
                    cb(lp, d, &handle(state, &info));
                }
            }
            Event::Online(info) => {
                if let Some(cb) = online {
                    cb(lp, d, &handle(state, &info));
                }
                rolling_on_up(state, lp, info.id, false);
            }
            Event::Listening(info, addr) => {
                if let Some(cb) = listening {
                    cb(lp, d, &handle(state, &info), addr);
                }
                rolling_on_up(state, lp, info.id, true);
            }
            Event::Disconnect(info) => {
                if let Some(cb) = disconnect {
                    cb(lp, d, &handle(state, &info));
                }
            }
            Event::Exit(info, code, signal) => {
                if let Some(cb) = exit {
                    cb(lp, d, &handle(state, &info), code, signal);
                }
                rolling_on_exit(state, lp, info.id);
            }
            Event::Storm => {
                if let Some(cb) = storm {
                    cb(lp, d);
                }
            }
            Event::ShutdownDone => {}
            Event::Done(f) => f(lp, d),
        }
    }
}

// ---- channel -------------------------------------------------------------

/// The read callback of every worker's channel (the worker id is the
/// channel's data word).
fn channel_reader<D: 'static>(weak: Weak<RefCell<PrimaryState<D>>>) -> OnRead<D, PipeStream> {
    OnRead::new(move |lp, d, pipe, res| {
        let Some(state) = weak.upgrade() else { return };
        let id = lp.data(pipe).unwrap_or(0) as WorkerId;
        // The decoder is taken out of the entry while it hands out frames
        // (their handling borrows the state), and put back after.
        let decoder =
            state.borrow_mut().entry_mut(id).filter(|w| w.channel == Some(pipe)).and_then(|w| w.decoder.take());
        let Some(mut decoder) = decoder else { return };
        let ok = match res {
            Ok(bytes) => {
                let mut handler = |lp: &mut Loop<D>, dec: Decoded<'_>| handle_frame(&state, lp, d, id, pipe, dec);
                // A worker that sends garbage loses its channel.
                !matches!(
                    feed_chunk(lp, pipe, &mut decoder, bytes, &mut handler),
                    Err(ChannelError::Decode(_) | ChannelError::Stalled)
                )
            }
            Err(_) => false,
        };
        if ok {
            if let Some(w) = state.borrow_mut().entry_mut(id).filter(|w| w.channel == Some(pipe)) {
                w.decoder = Some(decoder);
            }
        } else {
            decoder.drain_fds();
            channel_closed(&state, lp, id);
        }
        drain_events(&state, lp, d);
    })
}

/// The worker's channel is gone (EOF, error, garbage, kill): close it, queue
/// its unacknowledged connections for others, leave its listeners.
fn channel_closed<D>(state: &Rc<RefCell<PrimaryState<D>>>, lp: &mut Loop<D>, id: WorkerId) {
    let mut st = state.borrow_mut();
    let st = &mut *st;
    let Some(w) = st.workers.iter_mut().find(|w| w.info.id == id) else { return };
    let Some(ch) = w.channel.take() else { return };
    // Fds received ahead of their frames are closed with the decoder.
    w.decoder = None;
    // The unacknowledged connections may still be named by a send queued on
    // this channel: they wait in `limbo` until its close has completed.
    let _ = lp.close(ch, st.on_channel_freed.as_ref());
    w.info.connected.set(false);
    if w.info.status.get() != WorkerStatus::Dead {
        w.info.status.set(WorkerStatus::Disconnected);
    }
    w.batch_len = 0;
    while let Some(u) = w.unacked.pop_front() {
        st.stats.redistributed += 1;
        let conn = PendingConn {
            listener_id: u.listener_id,
            attempts: u.attempts.saturating_add(1),
            exclude: Some(id),
            fd: u.fd,
        };
        st.limbo.push((ch, conn));
    }
    let info = w.info.clone();
    st.leave_all_listeners(lp, id);
    st.queue.push_back(Event::Disconnect(info));
}

fn handle_frame<D: 'static>(
    state: &Rc<RefCell<PrimaryState<D>>>,
    lp: &mut Loop<D>,
    d: &mut D,
    id: WorkerId,
    pipe: PipeStream,
    dec: Decoded<'_>,
) -> Flow {
    let Decoded { frame, mut fds } = dec;
    match frame {
        Frame::Online => {
            let mut st = state.borrow_mut();
            if let Some(w) = st.entry_mut(id) {
                if w.info.status.get() == WorkerStatus::Starting {
                    w.info.status.set(WorkerStatus::Online);
                }
                let info = w.info.clone();
                st.queue.push_back(Event::Online(info));
            }
        }
        Frame::QueryServer { seq, key } => query_server(state, lp, id, seq, &key),
        Frame::Ack { conn_seq, count, accepted } => {
            let mut st = state.borrow_mut();
            let st = &mut *st;
            if let Some(w) = st.workers.iter_mut().find(|w| w.info.id == id) {
                let end = conn_seq.saturating_add(u64::from(count));
                while w.unacked.front().is_some_and(|u| u.seq >= conn_seq && u.seq < end) {
                    let Some(u) = w.unacked.pop_front() else { break };
                    if accepted {
                        st.stats.handed_off += 1;
                        drop(u.fd);
                    } else {
                        st.stats.refused += 1;
                        st.pending.push_back(PendingConn {
                            listener_id: u.listener_id,
                            attempts: u.attempts.saturating_add(1),
                            exclude: Some(id),
                            fd: u.fd,
                        });
                    }
                }
            }
        }
        Frame::Listening { address, port, .. } => {
            let ip: Option<IpAddr> = match address {
                ListenAddress::V4(ip) => Some(ip.into()),
                ListenAddress::V6(ip) => Some(ip.into()),
                ListenAddress::Unix(_) => None,
            };
            let mut st = state.borrow_mut();
            if let Some(w) = st.entry_mut(id) {
                if matches!(w.info.status.get(), WorkerStatus::Starting | WorkerStatus::Online) {
                    w.info.status.set(WorkerStatus::Listening);
                }
                let info = w.info.clone();
                if let Some(ip) = ip {
                    st.queue.push_back(Event::Listening(info, SocketAddr::new(ip, port)));
                }
            }
        }
        Frame::Close { listener_id } => {
            state.borrow_mut().leave_listener(lp, listener_id, id);
        }
        Frame::ExitedAfterDisconnect => {
            let mut st = state.borrow_mut();
            if let Some(w) = st.entry_mut(id) {
                w.info.exited_after_disconnect.set(true);
                w.disconnecting = true;
            }
        }
        Frame::Load { open_connections } => {
            let mut st = state.borrow_mut();
            if let Some(w) = st.entry_mut(id) {
                w.reported_load = open_connections;
            }
        }
        Frame::Message { bytes, .. } => {
            let (cb, info) = {
                let st = state.borrow();
                (st.events.message.clone(), st.entry(id).map(|w| w.info.clone()))
            };
            if let (Some(cb), Some(info)) = (cb, info) {
                cb(lp, d, &handle(state, &info), bytes, &mut fds);
            }
        }
        Frame::StoreGet { req_id, key } => {
            let mut st = state.borrow_mut();
            let st = &mut *st;
            let (status, value) = match st.store.get(key) {
                Some(v) => (StoreStatus::Found, v),
                None => (StoreStatus::NotFound, &[][..]),
            };
            if let Some(ch) = st.workers.iter().find(|w| w.info.id == id).and_then(|w| w.channel) {
                let _ = st.writer.send(lp, ch, &Frame::StoreReply { req_id, status, value });
            }
        }
        Frame::StoreSet { req_id, key, value } => {
            let mut st = state.borrow_mut();
            st.store.set(key, value);
            let _ = st.send_to(lp, id, &Frame::StoreReply { req_id, status: StoreStatus::Ok, value: &[] });
        }
        Frame::StoreDelete { req_id, key } => {
            let mut st = state.borrow_mut();
            let status = if st.store.delete(key) { StoreStatus::Found } else { StoreStatus::NotFound };
            let _ = st.send_to(lp, id, &Frame::StoreReply { req_id, status, value: &[] });
        }
        // A worker has no business sending these: it loses its channel.
        Frame::QueryServerReply { .. } | Frame::NewConnection { .. } | Frame::StoreReply { .. } | Frame::Disconnect => {
            drop(fds);
            channel_closed(state, lp, id);
            return Flow::Stop;
        }
    }
    let open = state.borrow().entry(id).is_some_and(|w| w.channel == Some(pipe));
    if open {
        Flow::Continue
    } else {
        Flow::Stop
    }
}

/// Answers a worker's listen query: joins or creates the listener for the
/// key, or reports the bind error (and keeps no entry, so a retry binds
/// again).
fn query_server<D: 'static>(
    state: &Rc<RefCell<PrimaryState<D>>>,
    lp: &mut Loop<D>,
    id: WorkerId,
    seq: u32,
    key: &ListenKey<'_>,
) {
    let mut st = state.borrow_mut();
    let st = &mut *st;
    let Some(ch) = st.entry(id).and_then(|w| w.channel) else { return };
    let reply_err = |st: &mut PrimaryState<D>, lp: &mut Loop<D>, errno: i32| {
        let frame = Frame::QueryServerReply { seq, errno, port: 0, listener_id: 0, listener_fd: false };
        let _ = st.writer.send(lp, ch, &frame);
    };
    let ip: IpAddr = match key.address {
        ListenAddress::V4(ip) => ip.into(),
        ListenAddress::V6(ip) => ip.into(),
        ListenAddress::Unix(_) => return reply_err(st, lp, libc::EAFNOSUPPORT),
    };
    if key.socket_type != SocketType::Tcp {
        return reply_err(st, lp, libc::EAFNOSUPPORT);
    }
    let requested = SocketAddr::new(ip, key.port);
    let flags = if key.flags.contains(ListenFlags::IPV6_ONLY) { TCP_IPV6ONLY } else { 0 };
    let shared = st.settings.policy == SchedPolicy::Shared;
    let existing = st.listeners.iter().position(|l| {
        l.requested == requested
            && l.index == key.index
            && l.flags == flags
            && matches!(l.mode, ListenerMode::Shared(..)) == shared
    });
    let i = match existing {
        Some(i) => i,
        None => {
            let backlog = i32::try_from(key.backlog).unwrap_or(i32::MAX);
            match open_listener(st, lp, requested, flags, backlog, shared) {
                Ok((mode, port)) => {
                    let lid = st.next_listener_id;
                    st.next_listener_id = st.next_listener_id.wrapping_add(1).max(1);
                    let l = Listener { id: lid, requested, index: key.index, flags, port, mode };
                    let _ = lp.set_data(l.handle(), lid as usize);
                    st.listeners.push(l);
                    st.listeners.len() - 1
                }
                Err(e) => return reply_err(st, lp, e.errno().unwrap_or(libc::EINVAL)),
            }
        }
    };
    let l = &mut st.listeners[i];
    let shared_socket = match &mut l.mode {
        ListenerMode::RoundRobin(rr, _) => {
            rr.add(id);
            None
        }
        ListenerMode::Shared(v, socket) => {
            if !v.contains(&id) {
                v.push(id);
            }
            Some(*socket)
        }
    };
    let (lid, port) = (l.id, l.port);
    let frame = Frame::QueryServerReply { seq, errno: 0, port, listener_id: lid, listener_fd: shared };
    let sent = match shared_socket {
        Some(socket) => st.writer.send_handle(lp, ch, &frame, socket),
        None => st.writer.send(lp, ch, &frame),
    };
    if sent.is_err() {
        st.leave_listener(lp, lid, id);
    }
}

/// Binds a listener for `addr`: under `shared` a socket that listens
/// outside the loop (the workers accept on copies of it), else one the
/// loop accepts on for round robin. Returns it with its real port.
fn open_listener<D: 'static>(
    st: &PrimaryState<D>,
    lp: &mut Loop<D>,
    addr: SocketAddr,
    flags: u32,
    backlog: i32,
    shared: bool,
) -> Result<(ListenerMode, u16)> {
    let s = lp.tcp_init()?;
    if let Err(e) = lp.tcp_bind(s, addr, flags) {
        let _ = lp.close(s, None);
        return Err(e);
    }
    if shared {
        // The workers accept; the primary only makes the port listen now,
        // so a competing bind fails at once.
        let res = lp.fileno(s).and_then(|fd| {
            // SAFETY: `fd` is the socket of `s`, which the loop owns and
            // keeps open at least until `s` is closed, after this call.
            uvring::os::listen(unsafe { BorrowedFd::borrow_raw(fd) }, backlog)?;
            lp.tcp_getsockname(s).map(|a| a.port())
        });
        return match res {
            Ok(port) => Ok((ListenerMode::Shared(Vec::new(), s), port)),
            Err(e) => {
                let _ = lp.close(s, None);
                Err(e)
            }
        };
    }
    let Some(cb) = st.rr_on_connection.clone() else {
        let _ = lp.close(s, None);
        return Err(Error::INVALID_STATE);
    };
    let l = match lp.listen(s, backlog, &cb) {
        Ok(l) => l,
        Err(e) => {
            let _ = lp.close(s, None);
            return Err(e);
        }
    };
    match lp.tcp_getsockname(l) {
        Ok(a) => Ok((ListenerMode::RoundRobin(RoundRobin::with_slack(st.settings.load_slack), l), a.port())),
        Err(e) => {
            let _ = lp.close(l, None);
            Err(e)
        }
    }
}

// ---- round robin -----------------------------------------------------------

fn rr_on_connection<D: 'static>(weak: Weak<RefCell<PrimaryState<D>>>) -> OnConnection<D, TcpListener> {
    OnConnection::new(move |lp, _d, server, res| {
        let Some(state) = weak.upgrade() else { return };
        if res.is_err() {
            // EMFILE and friends: the engine backs off; nothing was accepted.
            return;
        }
        let listener_id = lp.data(server).unwrap_or(0) as u32;
        let mut st = state.borrow_mut();
        while let Ok(fd) = lp.accept_fd(server) {
            st.pending.push_back(PendingConn { listener_id, attempts: 0, exclude: None, fd });
        }
    })
}

fn on_dispatch<D: 'static>(weak: Weak<RefCell<PrimaryState<D>>>) -> OnHook<D> {
    OnHook::new(move |lp, d, _h| {
        let Some(state) = weak.upgrade() else { return };
        dispatch(&state, lp, d);
    })
}

/// Hands every queued connection to a worker; see the module docs.
fn dispatch<D: 'static>(state: &Rc<RefCell<PrimaryState<D>>>, lp: &mut Loop<D>, d: &mut D) {
    let mut broken: [WorkerId; 8] = [0; 8];
    let mut nbroken = 0;
    {
        let mut st = state.borrow_mut();
        if st.pending.is_empty() {
            return;
        }
        let st = &mut *st;
        while let Some(conn) = st.pending.pop_front() {
            let Some(l) = st.listeners.iter_mut().find(|l| l.id == conn.listener_id) else {
                st.stats.closed_unroutable += 1;
                continue;
            };
            let ListenerMode::RoundRobin(rr, _) = &mut l.mode else {
                st.stats.closed_unroutable += 1;
                continue;
            };
            if conn.attempts >= MAX_ATTEMPTS {
                st.stats.closed_unroutable += 1;
                continue;
            }
            let workers = &st.workers;
            let load = |w: WorkerId| workers.iter().find(|e| e.info.id == w).and_then(WorkerEntry::load);
            let chosen = rr.choose(load, conn.exclude);
            let Some(wid) = chosen else {
                st.stats.closed_unroutable += 1;
                continue;
            };
            let Some(w) = st.workers.iter_mut().find(|e| e.info.id == wid) else { continue };
            let full = w.batch_len >= crate::proto::MAX_FDS_PER_FRAME;
            let switch = w.batch_len > 0 && (w.batch_listener != conn.listener_id || full);
            if switch && flush_batch(&mut st.writer, lp, w).is_err() && nbroken < broken.len() {
                broken[nbroken] = wid;
                nbroken += 1;
            }
            let seq = w.next_seq;
            w.next_seq += 1;
            if w.batch_len == 0 {
                w.batch_listener = conn.listener_id;
                w.batch_first_seq = seq;
            }
            w.batch_len += 1;
            w.unacked.push_back(Unacked { seq, listener_id: conn.listener_id, attempts: conn.attempts, fd: conn.fd });
        }
        for w in st.workers.iter_mut() {
            if w.batch_len > 0 && flush_batch(&mut st.writer, lp, w).is_err() && nbroken < broken.len() {
                broken[nbroken] = w.info.id;
                nbroken += 1;
            }
        }
    }
    // A worker whose channel cannot take the frame is treated as gone: its
    // unacknowledged connections go to the others on the next turn.
    for &id in &broken[..nbroken] {
        channel_closed(state, lp, id);
    }
    if nbroken > 0 {
        drain_events(state, lp, d);
    }
}

fn flush_batch<D>(writer: &mut FrameWriter, lp: &mut Loop<D>, w: &mut WorkerEntry) -> Result<()> {
    let n = w.batch_len.min(crate::proto::MAX_FDS_PER_FRAME);
    w.batch_len = 0;
    let mut fds: [RawFd; crate::proto::MAX_FDS_PER_FRAME] = [-1; crate::proto::MAX_FDS_PER_FRAME];
    let first = w.unacked.len() - n;
    for (dst, u) in fds.iter_mut().zip(w.unacked.range(first..)) {
        *dst = u.fd.as_raw_fd();
    }
    let frame =
        Frame::NewConnection { listener_id: w.batch_listener, first_conn_seq: w.batch_first_seq, count: n as u8 };
    match w.channel {
        // SAFETY: the fds belong to the batch's entries in `w.unacked`, which
        // are closed only once this worker acknowledges them (it received
        // them: the send is done) or, when the channel closes first, after
        // the loop has freed the channel (`limbo`); see the module docs.
        // On error nothing was queued.
        Some(ch) => unsafe { writer.send_fds_borrowed(lp, ch, &frame, &fds[..n]) },
        None => Err(Error::ENOTCONN),
    }
}

/// A closed channel is freed (nothing of it is left in the kernel): its
/// connections in `limbo` can go to other workers.
fn on_channel_freed<D: 'static>(weak: Weak<RefCell<PrimaryState<D>>>) -> OnClose<D> {
    OnClose::new(move |_lp, _d, h| {
        let Some(state) = weak.upgrade() else { return };
        let mut st = state.borrow_mut();
        let st = &mut *st;
        let mut i = 0;
        while i < st.limbo.len() {
            if HandleId::from(st.limbo[i].0) == h {
                let (_, conn) = st.limbo.swap_remove(i);
                st.pending.push_back(conn);
            } else {
                i += 1;
            }
        }
    })
}

// ---- lifecycle -------------------------------------------------------------

fn disconnect_worker<D>(state: &Rc<RefCell<PrimaryState<D>>>, lp: &mut Loop<D>, id: WorkerId) {
    let mut st = state.borrow_mut();
    let Some(w) = st.entry_mut(id) else { return };
    w.info.exited_after_disconnect.set(true);
    if w.channel.is_none() || w.disconnecting {
        return;
    }
    w.disconnecting = true;
    w.info.status.set(WorkerStatus::Disconnecting);
    let _ = st.send_to(lp, id, &Frame::Disconnect);
}

fn on_worker_exit<D: 'static>(weak: Weak<RefCell<PrimaryState<D>>>) -> OnExit<D> {
    OnExit::new(move |lp, d, process, code, signal| {
        let Some(state) = weak.upgrade() else {
            let _ = lp.close(process, None);
            return;
        };
        let id = lp.data(process).unwrap_or(0) as WorkerId;
        let _ = lp.close(process, None);
        channel_closed(&state, lp, id);
        let respawn = {
            let mut st = state.borrow_mut();
            let Some(i) = st.workers.iter().position(|w| w.info.id == id) else { return };
            let w = st.workers.remove(i);
            w.info.status.set(WorkerStatus::Dead);
            w.info.connected.set(false);
            st.queue.push_back(Event::Exit(w.info.clone(), code, signal));
            let crashed = !w.info.exited_after_disconnect.get();
            if crashed && st.settings.respawn.enabled && !st.shutting_down {
                let now = lp.now();
                match st.governor.on_crash(now) {
                    RespawnDecision::After(ms) => Some(ms),
                    RespawnDecision::Storm => {
                        st.queue.push_back(Event::Storm);
                        None
                    }
                }
            } else {
                None
            }
        };
        if let Some(ms) = respawn {
            schedule_respawn(&state, lp, ms);
        }
        drain_events(&state, lp, d);
        // `disconnect`'s callbacks run on a later loop turn.
        check_shutdown_done(&state);
        schedule_drain(&state, lp);
        release_if_idle(&state, lp);
    })
}

fn schedule_respawn<D: 'static>(state: &Rc<RefCell<PrimaryState<D>>>, lp: &mut Loop<D>, ms: u64) {
    let Some(cb) = state.borrow().on_respawn.clone() else { return };
    let Ok(t) = lp.timer_init() else { return };
    if lp.timer_start(t, Duration::from_millis(ms), Duration::ZERO, &cb).is_ok() {
        state.borrow_mut().respawn_timers.push(t);
    } else {
        let _ = lp.close(t, None);
    }
}

fn on_respawn<D: 'static>(weak: Weak<RefCell<PrimaryState<D>>>) -> OnTimer<D> {
    OnTimer::new(move |lp, d, t| {
        let _ = lp.close(t, None);
        let Some(state) = weak.upgrade() else { return };
        let go = {
            let mut st = state.borrow_mut();
            st.respawn_timers.retain(|&x| x != t);
            !st.shutting_down
        };
        if go {
            let _ = fork_worker(&state, lp, &[]);
            drain_events(&state, lp, d);
        }
    })
}

/// After `Primary::disconnect`: once the table is empty, queue the
/// callbacks (the caller has them run from a later loop turn, never from
/// inside the call that asked).
fn check_shutdown_done<D>(state: &Rc<RefCell<PrimaryState<D>>>) {
    let mut st = state.borrow_mut();
    if !st.shutting_down || !st.workers.is_empty() || st.disconnect_cbs.is_empty() {
        return;
    }
    let cbs = std::mem::take(&mut st.disconnect_cbs);
    st.queue.push_back(Event::ShutdownDone);
    st.queue.extend(cbs.into_iter().map(Event::Done));
}

fn rolling_step<D: 'static>(state: &Rc<RefCell<PrimaryState<D>>>, lp: &mut Loop<D>) {
    loop {
        let next = {
            let mut st = state.borrow_mut();
            let Some(r) = st.rolling.as_mut() else { return };
            if r.current.is_some() {
                return;
            }
            match r.old.pop_front() {
                Some(old) => Some(old),
                None => {
                    let done = st.rolling.take().and_then(|r| r.done);
                    if let Some(done) = done {
                        st.queue.push_back(Event::Done(done));
                    }
                    None
                }
            }
        };
        let Some(old) = next else { return };
        if state.borrow().entry(old).is_none() {
            continue;
        }
        match fork_worker(state, lp, &[]) {
            Ok(new) => {
                if let Some(r) = state.borrow_mut().rolling.as_mut() {
                    r.current = Some((old, new.id()));
                }
                return;
            }
            Err(_) => continue,
        }
    }
}

/// A replacement came up: once it listens (or is online, when the old
/// worker never listened), the old worker is disconnected.
fn rolling_on_up<D>(state: &Rc<RefCell<PrimaryState<D>>>, lp: &mut Loop<D>, id: WorkerId, listening: bool) {
    let old = {
        let st = state.borrow();
        let Some((old, new)) = st.rolling.as_ref().and_then(|r| r.current) else { return };
        if new != id {
            return;
        }
        let old_listened = st.entry(old).is_some_and(|w| w.info.status.get() == WorkerStatus::Listening);
        if old_listened && !listening {
            return;
        }
        old
    };
    disconnect_worker(state, lp, old);
}

fn rolling_on_exit<D: 'static>(state: &Rc<RefCell<PrimaryState<D>>>, lp: &mut Loop<D>, id: WorkerId) {
    let advance = {
        let mut st = state.borrow_mut();
        let Some(r) = st.rolling.as_mut() else { return };
        match r.current {
            Some((old, _)) if old == id => {
                r.current = None;
                true
            }
            // The replacement died before taking over: keep the old one.
            Some((_, new)) if new == id => {
                r.current = None;
                true
            }
            _ => false,
        }
    };
    if advance {
        rolling_step(state, lp);
    }
}
