//! The primary side: forks workers, answers their listen queries, accepts
//! and hands connections over (`rr`), holds the shared store, reports
//! worker events, restarts crashed workers and rolls restarts.
//!
//! # The model: the primary's state is part of the user's data
//!
//! [`Primary`] is a plain struct that the application keeps inside its
//! loop data `D`; `D` implements [`PrimaryData`] to hand the library its
//! part (smithay's delegate pattern over calloop). The library's loop
//! callbacks (channel reads, process exits, its timers and its check hook)
//! get `d` from the engine and reach their state through
//! [`PrimaryData::primary_by_id`]. A user callback is an `Rc<dyn Fn>`: it is
//! cloned out, the borrow of the primary ends, and only then is it called
//! with `(lp, d, ..)`, so no borrow is held across user code, and user code
//! may call any `Primary` method through `d.primary()`. No shared cell.
//!
//! As everywhere in the loop, no user callback runs inside an API call:
//! events that an API call causes (a fork, a kill's disconnect, a finished
//! [`disconnect`](Primary::disconnect) or
//! [`rolling_restart`](Primary::rolling_restart)) are queued and delivered
//! from a loop callback (a zero-delay timer, or whichever library callback
//! runs first), with the loop's user data `D`.
//!
//! The state is split by responsibility, one module each:
//!
//! - `routing`: listen routing (`queryServer`): listeners keyed by
//!   address, index, flags and policy, bound once, replies with the real
//!   port or the bind error.
//! - `handoff`: round robin: the accepted-connection queue, batches to
//!   workers, unacknowledged connections and their re-routing.
//! - `lifecycle`: the worker table: fork, online, exit, the respawn
//!   governor, disconnect and kill, channel close.
//! - `messaging`: user messages and the shared store.
//! - `rolling`: rolling restart.
//!
//! This module holds the struct, the worker table's entries, the channel
//! reader (frames go to the module that owns them) and the event queue.
//!
//! # Round robin without leaks
//!
//! The primary accepts with [`Loop::accept_fd`] (no handle per connection)
//! and queues the fd. Once per loop iteration (a check hook, so that a burst
//! accepted in one poll goes out together) each queued connection is given
//! to the next member worker of its listener in rotation, passing over
//! workers loaded more than a slack above the least-loaded one
//! ([`RoundRobin`](crate::RoundRobin); load = unacknowledged + reported open
//! connections): the fd joins that worker's batch (up to 16 fds in one
//! `NewConnection` frame) and the primary keeps it, numbered, until the
//! worker acknowledges it. Accepted: the primary closes it. Refused: the
//! connection is queued again for another worker. The worker's channel
//! closes first: all its unacknowledged connections are queued again, once
//! the channel's close has completed. A connection that no worker can take
//! (no member left, or too many refusals) is closed. Nothing on this path
//! allocates once the queues have their capacity.
//!
//! The batch is sent with [`Loop::write_fds_borrowed`]: the loop sends the
//! primary's own fds, so no duplicate is made (and closed) per connection.
//! Its contract (an fd stays open until the kernel is done with it) holds
//! because an fd in `unacked` is closed only after its worker acknowledged
//! it (the worker received it: the send is done), and the unacknowledged
//! fds of a closed channel wait in `limbo` until the loop has freed that
//! channel (every send on it has ended) before they can be re-sent or
//! closed.

mod codec;
mod handoff;
mod lifecycle;
mod messaging;
mod node;
mod output;
mod rolling;
mod routing;
mod stats;
mod upgrade;

pub use stats::{ProcessMemory, WorkerStats};
pub use upgrade::UpgradeFailure;

use crate::channel::{feed_chunk, ChannelError, Flow};
use crate::node::NodeFault;
use crate::proto::{DecodeError, Decoded, Frame, FrameFds, FrameKind};
use crate::schedule::WorkerId;
use crate::settings::{SchedPolicy, Settings};
use crate::store::SharedStore;
use codec::{ChannelDecoder, ChannelWriter};
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::os::fd::IntoRawFd;
use std::rc::Rc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;
use uvring::{
    Loop, OnClose, OnConnection, OnExit, OnHook, OnRead, OnTimer, PipeListener, PipeStream, Process, TcpListener, Timer,
};

/// Environment variable telling workers how often to report their load (ms).
pub const ENV_LOAD_REPORT_MS: &str = "UVRING_CLUSTER_LOAD_MS";

/// The loop data of a program that runs a cluster primary: it holds the
/// [`Primary`] and hands it to the library.
///
/// ```
/// use uvring_cluster::{Primary, PrimaryData};
///
/// struct Supervisor {
///     primary: Primary<Supervisor>,
///     // ... the program's own state
/// }
///
/// impl PrimaryData for Supervisor {
///     fn primary(&mut self) -> &mut Primary<Supervisor> {
///         &mut self.primary
///     }
/// }
/// ```
pub trait PrimaryData: Sized + 'static {
    /// The cluster's part of the loop data.
    fn primary(&mut self) -> &mut Primary<Self>;

    /// The primary with this id. The default serves loop data that holds
    /// one primary; data that holds several (two clusters on one loop)
    /// returns the one whose [`Primary::id`] matches.
    fn primary_by_id(&mut self, id: PrimaryId) -> Option<&mut Primary<Self>> {
        let p = self.primary();
        (p.id == id).then_some(p)
    }
}

/// Names one [`Primary`] (unique in the process), for loop data that holds
/// more than one ([`PrimaryData::primary_by_id`]).
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub struct PrimaryId(u32);

impl PrimaryId {
    fn next() -> PrimaryId {
        static NEXT: AtomicU32 = AtomicU32::new(1);
        PrimaryId(NEXT.fetch_add(1, Ordering::Relaxed))
    }
}

/// Why a worker's channel failed ([`Primary::on_channel_error`]).
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ChannelFault {
    /// The worker sent bytes that are not a valid frame stream: garbage, a
    /// header claiming more than [`Settings::max_message_len`], an
    /// oversized frame, fds no frame claims (stray fds). The channel is
    /// cut and the worker killed (`SIGKILL`): it is broken or hostile.
    Decode(DecodeError),
    /// The worker sent a frame only the primary sends. Cut and killed, as
    /// for [`Decode`](Self::Decode).
    UnexpectedFrame(FrameKind),
    /// The channel ended although the worker was not leaving (it crashed,
    /// or closed its end); the stream ended between frames.
    UnexpectedEof,
    /// Reading the channel failed with this error. The channel is cut.
    Read(uvring::Error),
    /// Fds the worker sent were lost (`MSG_CTRUNC`: this process is at its
    /// fd limit). The channel stays up; the frames that carried them
    /// arrive with empty fd slots.
    FdsLost,
    /// A Node worker ([`WorkerProtocol::Node`](crate::WorkerProtocol))
    /// sent bad input: a line that is not JSON, one over
    /// [`Settings::max_message_len`], a message that breaks Node's
    /// protocol. Cut and killed, as for [`Decode`](Self::Decode).
    Node(NodeFault),
}

impl ChannelFault {
    /// Whether the worker sent bad input (then it is killed).
    pub fn is_bad_input(&self) -> bool {
        matches!(self, ChannelFault::Decode(_) | ChannelFault::UnexpectedFrame(_) | ChannelFault::Node(_))
    }
}

impl std::fmt::Display for ChannelFault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ChannelFault::Decode(e) => write!(f, "bad input: {e}"),
            ChannelFault::UnexpectedFrame(kind) => write!(f, "bad input: unexpected {kind:?} frame"),
            ChannelFault::UnexpectedEof => f.write_str("unexpected end of channel"),
            ChannelFault::Read(e) => write!(f, "read error: {e}"),
            ChannelFault::FdsLost => f.write_str("fds lost (control message truncated at the fd limit)"),
            ChannelFault::Node(e) => write!(f, "bad input: {e}"),
        }
    }
}

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

/// A worker as the primary sees it (Node's `Worker` object in the primary),
/// read at one moment: [`Primary::worker`] reads it afresh, and event
/// callbacks get it as it is when the event is delivered. Workers are named
/// by their [`WorkerId`]; the primary remembers the last 64 that exited, so
/// their final state can still be read.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct WorkerInfo {
    id: WorkerId,
    pid: i32,
    status: WorkerStatus,
    connected: bool,
    exited_after_disconnect: bool,
    unacked: usize,
    open_connections: u32,
}

impl WorkerInfo {
    /// The worker's id (Node's `worker.id`).
    pub fn id(&self) -> WorkerId {
        self.id
    }

    /// The worker's process id.
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// Where the worker is in its life.
    pub fn status(&self) -> WorkerStatus {
        self.status
    }

    /// Whether the process has exited.
    pub fn is_dead(&self) -> bool {
        self.status == WorkerStatus::Dead
    }

    /// Whether the IPC channel is open.
    pub fn is_connected(&self) -> bool {
        self.connected
    }

    /// Whether the worker left because of `disconnect` or `kill` (not a crash).
    pub fn exited_after_disconnect(&self) -> bool {
        self.exited_after_disconnect
    }

    /// Connections handed to this worker and not yet acknowledged.
    pub fn unacked_connections(&self) -> usize {
        self.unacked
    }

    /// The open connections the worker last reported (its load; under
    /// `rr`, every `Settings::load_report`).
    pub fn open_connections(&self) -> u32 {
        self.open_connections
    }
}

/// A live worker in the table.
struct WorkerEntry {
    info: WorkerInfo,
    process: Option<Process>,
    channel: Option<PipeStream>,
    /// The channel's decoder; out of the entry while a chunk is decoded.
    decoder: Option<ChannelDecoder>,
    disconnecting: bool,
    /// The extra environment it was forked with: its respawned or rolled
    /// replacement gets it too.
    env: Vec<(std::ffi::OsString, std::ffi::OsString)>,
    /// `kill` signalled it: its exit counts as after a disconnect.
    killed: bool,
    /// A server of it listened (it started).
    listened: bool,
    /// `lp.now()` at its fork.
    forked_at: u64,
    /// `lp.now()` when its channel last brought bytes (or at its fork).
    last_heard: u64,
    /// Kills it if a disconnect has not ended by `Settings::drain_timeout`.
    drain_timer: Option<Timer>,
    /// Kills a rolling replacement that has not started by
    /// `Settings::startup_timeout`.
    startup_timer: Option<Timer>,
    /// The last `recvmsg` lost its fds (see [`ChannelFault::FdsLost`]).
    fds_lost: bool,
    /// The CPU it is pinned to (`Settings::cpu_affinity`).
    cpu: Option<usize>,
    /// Hand-off state: connections sent and not yet acknowledged, the
    /// batch being built, the reported load.
    conns: handoff::WorkerConns,
    /// Restarts, messages, the worker's own report (see `stats`).
    figures: stats::Figures,
}

impl WorkerEntry {
    /// The worker as it is now.
    fn info(&self) -> WorkerInfo {
        WorkerInfo { unacked: self.conns.unacked.len(), open_connections: self.conns.reported_load, ..self.info }
    }
}

type WorkerFn<D> = dyn Fn(&mut Loop<D>, &mut D, &WorkerInfo);
type ListeningFn<D> = dyn Fn(&mut Loop<D>, &mut D, &WorkerInfo, SocketAddr);
type MessageFn<D> = dyn Fn(&mut Loop<D>, &mut D, &WorkerInfo, &[u8], &mut FrameFds);
type ExitFn<D> = dyn Fn(&mut Loop<D>, &mut D, &WorkerInfo, i64, i32);
type StormFn<D> = dyn Fn(&mut Loop<D>, &mut D);
type ChannelErrorFn<D> = dyn Fn(&mut Loop<D>, &mut D, &WorkerInfo, ChannelFault);
type MemoryLimitFn<D> = dyn Fn(&mut Loop<D>, &mut D, &WorkerInfo, u64);
type DoneFn<D> = Box<dyn FnOnce(&mut Loop<D>, &mut D)>;

/// An event waiting to be delivered; a worker's info is read again at
/// delivery (the carried copy serves if it is gone by then).
enum Event<D> {
    Fork(WorkerInfo),
    Online(WorkerInfo),
    Listening(WorkerInfo, SocketAddr),
    Disconnect(WorkerInfo),
    ChannelError(WorkerInfo, ChannelFault),
    Exit(WorkerInfo, i64, i32),
    Storm,
    Unresponsive(WorkerInfo),
    /// Above `Settings::max_memory` (its `RssAnon` in bytes): replaced.
    MemoryLimit(WorkerInfo, u64),
    /// `Primary::disconnect` is complete (its callbacks follow as `Done`):
    /// respawning may resume.
    ShutdownDone,
    Done(DoneFn<D>),
}

/// The user's event callbacks, and the events waiting for them.
struct Events<D> {
    fork: Option<Rc<WorkerFn<D>>>,
    online: Option<Rc<WorkerFn<D>>>,
    listening: Option<Rc<ListeningFn<D>>>,
    message: Option<Rc<MessageFn<D>>>,
    disconnect: Option<Rc<WorkerFn<D>>>,
    exit: Option<Rc<ExitFn<D>>>,
    storm: Option<Rc<StormFn<D>>>,
    unresponsive: Option<Rc<WorkerFn<D>>>,
    channel_error: Option<Rc<ChannelErrorFn<D>>>,
    memory_limit: Option<Rc<MemoryLimitFn<D>>>,
    queue: VecDeque<Event<D>>,
    /// The zero-delay timer that delivers events queued by an API call.
    drain_timer: Option<Timer>,
}

/// The library's own loop callbacks, made once; each finds the primary
/// through [`PrimaryData::primary_by_id`].
struct LoopCallbacks<D> {
    rr_connection: OnConnection<D, TcpListener>,
    /// The same, for `rr` listeners on Unix paths.
    rr_pipe_connection: OnConnection<D, PipeListener>,
    channel_read: OnRead<D, PipeStream>,
    channel_freed: OnClose<D>,
    exit: OnExit<D>,
    dispatch: OnHook<D>,
    respawn: OnTimer<D>,
    drain: OnTimer<D>,
    drain_deadline: OnTimer<D>,
    startup_deadline: OnTimer<D>,
    heartbeat: OnTimer<D>,
}

/// The primary process's side of the cluster (Node's `cluster` in the
/// primary), kept in the loop's user data `D` (see [`PrimaryData`]).
///
/// Workers are named by [`WorkerId`]: [`fork`](Self::fork) returns it,
/// [`workers`](Self::workers) and [`worker`](Self::worker) read them, and
/// [`send`](Self::send), [`kill`](Self::kill) and
/// [`disconnect_worker`](Self::disconnect_worker) act on one.
pub struct Primary<D> {
    id: PrimaryId,
    settings: Settings,
    /// The live workers, in fork order.
    workers: Vec<WorkerEntry>,
    writer: ChannelWriter,
    routing: routing::Routing,
    handoff: handoff::Handoff,
    life: lifecycle::Lifecycle<D>,
    store: SharedStore,
    rolling: Option<rolling::Rolling<D>>,
    /// Inherited listeners and upgrades (`upgrade.rs`).
    handover: upgrade::Handover<D>,
    events: Events<D>,
    cbs: LoopCallbacks<D>,
    /// Captured worker output (`ChildOutput::Capture`).
    output: output::Output<D>,
    /// The admin endpoint, once `admin_listen` bound it.
    admin: Option<crate::admin::Admin<D>>,
    /// `set_healthy`'s word (`/health`).
    healthy: bool,
}

impl<D> std::fmt::Debug for Primary<D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Primary")
            .field("id", &self.id)
            .field("policy", &self.settings.policy)
            .field("workers", &self.workers.len())
            .field("stats", &self.handoff.stats)
            .finish_non_exhaustive()
    }
}

impl<D> Drop for Primary<D> {
    fn drop(&mut self) {
        // A send queued on a channel that is still open (or still closing)
        // may name these fds (`write_fds_borrowed`). With the primary gone,
        // nobody learns when those sends end, so the fds are left open
        // rather than letting the loop send whatever file takes the number
        // next. (After an orderly shutdown every channel is freed and
        // nothing is left here.)
        for w in &mut self.workers {
            if w.channel.is_some() {
                for u in w.conns.unacked.drain(..) {
                    let _ = u.fd.into_raw_fd();
                }
            }
        }
        for (_, conn) in self.handoff.limbo.drain(..) {
            let _ = conn.fd.into_raw_fd();
        }
    }
}

impl<D> Primary<D> {
    fn entry(&self, id: WorkerId) -> Option<&WorkerEntry> {
        self.workers.iter().find(|w| w.info.id == id)
    }

    fn entry_mut(&mut self, id: WorkerId) -> Option<&mut WorkerEntry> {
        self.workers.iter_mut().find(|w| w.info.id == id)
    }

    fn send_to(&mut self, lp: &mut Loop<D>, id: WorkerId, frame: &Frame<'_>) -> uvring::Result<()> {
        let ch = self.entry(id).and_then(|w| w.channel).ok_or(uvring::Error::ENOTCONN)?;
        self.writer.send(lp, ch, frame)
    }

    /// This primary's id (see [`PrimaryData::primary_by_id`]).
    pub fn id(&self) -> PrimaryId {
        self.id
    }

    /// The settings.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// The scheduling policy.
    pub fn policy(&self) -> SchedPolicy {
        self.settings.policy
    }

    /// The worker with this id as it is now: a live one, or one of the last
    /// 64 that exited (status [`Dead`](WorkerStatus::Dead)).
    pub fn worker(&self, id: WorkerId) -> Option<WorkerInfo> {
        self.entry(id).map(WorkerEntry::info).or_else(|| self.life.exited.iter().find(|w| w.id == id).copied())
    }

    /// Live workers (not yet exited), in fork order.
    pub fn workers(&self) -> Vec<WorkerInfo> {
        self.workers.iter().map(WorkerEntry::info).collect()
    }

    /// Number of live workers (the worker table's size).
    pub fn worker_count(&self) -> usize {
        self.workers.len()
    }
}

impl<D: PrimaryData> Primary<D> {
    /// A primary with `settings`; no worker is forked yet ([`start`](Self::start)
    /// forks `settings.workers`, [`fork`](Self::fork) one). Keep it in the
    /// loop's data, where [`PrimaryData`] finds it.
    ///
    /// # Errors
    ///
    /// The error of `std::env::current_exe` (`ENOENT`, say) when
    /// [`Settings::exec`](crate::Settings::exec) is unset and the running program's path cannot be
    /// read. Nothing else: no worker is forked yet.
    ///
    /// # Examples
    ///
    /// Make the primary, set its event callbacks, then move it into the loop's
    /// data and [`start`](Self::start) it (the crate docs have a complete,
    /// runnable program):
    ///
    /// ```
    /// use uvring::Loop;
    /// use uvring_cluster::{Primary, PrimaryData, Settings};
    ///
    /// struct Supervisor {
    ///     primary: Primary<Supervisor>,
    ///     online: u32,
    /// }
    ///
    /// impl PrimaryData for Supervisor {
    ///     fn primary(&mut self) -> &mut Primary<Supervisor> {
    ///         &mut self.primary
    ///     }
    /// }
    ///
    /// let mut lp: Loop<Supervisor> = Loop::new()?;
    /// let mut primary = Primary::new(&mut lp, Settings::default().workers(2))?;
    /// primary.on_online(|_lp, sup: &mut Supervisor, w| {
    ///     sup.online += 1;
    ///     eprintln!("worker {} (pid {}) is up", w.id(), w.pid());
    /// });
    /// let sup = Supervisor { primary, online: 0 };
    /// assert_eq!(sup.primary.worker_count(), 0); // nothing forked before `start`
    /// // sup.primary.start(&mut lp)?; lp.run(RunMode::Default, &mut sup)?;
    /// # Ok::<(), uvring::Error>(())
    /// ```
    pub fn new(lp: &mut Loop<D>, settings: Settings) -> uvring::Result<Primary<D>> {
        let _ = lp;
        let id = PrimaryId::next();
        let life = lifecycle::Lifecycle::new(&settings)?;
        let max_message = settings.max_message_len;
        if settings.raise_fd_limit {
            // Best effort: a limit that cannot be raised stays as it was.
            let _ = uvring::os::raise_nofile_limit();
        }
        let output = output::Output::new(id, settings.capture_buffer);
        Ok(Primary {
            id,
            routing: routing::Routing::new(),
            handoff: handoff::Handoff::new(),
            life,
            settings,
            workers: Vec::with_capacity(16),
            writer: ChannelWriter::new(max_message),
            store: SharedStore::new(),
            rolling: None,
            handover: upgrade::Handover::new(id),
            events: Events {
                fork: None,
                online: None,
                listening: None,
                message: None,
                disconnect: None,
                exit: None,
                storm: None,
                unresponsive: None,
                channel_error: None,
                memory_limit: None,
                queue: VecDeque::with_capacity(16),
                drain_timer: None,
            },
            cbs: LoopCallbacks {
                rr_connection: handoff::on_rr_connection(id),
                rr_pipe_connection: handoff::on_rr_connection(id),
                channel_read: on_channel_read(id),
                channel_freed: handoff::on_channel_freed(id),
                exit: lifecycle::on_worker_exit(id),
                dispatch: handoff::on_dispatch(id),
                respawn: lifecycle::on_respawn(id),
                drain: on_drain(id),
                drain_deadline: lifecycle::on_drain_deadline(id),
                startup_deadline: lifecycle::on_startup_deadline(id),
                heartbeat: lifecycle::on_heartbeat(id),
            },
            output,
            admin: None,
            healthy: true,
        })
    }

    /// A worker was forked: `(loop, data, worker)`.
    pub fn on_fork(&mut self, cb: impl Fn(&mut Loop<D>, &mut D, &WorkerInfo) + 'static) {
        self.events.fork = Some(Rc::new(cb));
    }

    /// A worker said it is up: `(loop, data, worker)`.
    pub fn on_online(&mut self, cb: impl Fn(&mut Loop<D>, &mut D, &WorkerInfo) + 'static) {
        self.events.online = Some(Rc::new(cb));
    }

    /// A worker's server is listening: `(loop, data, worker, real address)`.
    pub fn on_listening(&mut self, cb: impl Fn(&mut Loop<D>, &mut D, &WorkerInfo, SocketAddr) + 'static) {
        self.events.listening = Some(Rc::new(cb));
    }

    /// A user message from a worker: `(loop, data, worker, bytes, fds)`,
    /// with the fds sent alongside (those not taken are closed after the
    /// call).
    pub fn on_message(&mut self, cb: impl Fn(&mut Loop<D>, &mut D, &WorkerInfo, &[u8], &mut FrameFds) + 'static) {
        self.events.message = Some(Rc::new(cb));
    }

    /// A worker's channel closed: `(loop, data, worker)`.
    pub fn on_disconnect(&mut self, cb: impl Fn(&mut Loop<D>, &mut D, &WorkerInfo) + 'static) {
        self.events.disconnect = Some(Rc::new(cb));
    }

    /// A worker exited: `(loop, data, worker, exit code, terminating
    /// signal)`, one of the last two 0.
    pub fn on_exit(&mut self, cb: impl Fn(&mut Loop<D>, &mut D, &WorkerInfo, i64, i32) + 'static) {
        self.events.exit = Some(Rc::new(cb));
    }

    /// A worker's channel failed: `(loop, data, worker, reason)`. Bad input
    /// ([`ChannelFault::is_bad_input`]) cuts the channel and kills the
    /// worker (its exit follows, and a respawn if respawning is on); an
    /// unexpected end of the channel comes before the `disconnect` event.
    pub fn on_channel_error(&mut self, cb: impl Fn(&mut Loop<D>, &mut D, &WorkerInfo, ChannelFault) + 'static) {
        self.events.channel_error = Some(Rc::new(cb));
    }

    /// Respawning stopped because of a restart storm: `(loop, data)`.
    pub fn on_restart_storm(&mut self, cb: impl Fn(&mut Loop<D>, &mut D) + 'static) {
        self.events.storm = Some(Rc::new(cb));
    }

    /// A worker missed its heartbeats for `Settings::heartbeat_timeout`
    /// and was killed (its `disconnect` and `exit` events follow):
    /// `(loop, data, worker)`.
    pub fn on_unresponsive(&mut self, cb: impl Fn(&mut Loop<D>, &mut D, &WorkerInfo) + 'static) {
        self.events.unresponsive = Some(Rc::new(cb));
    }

    /// A worker's `RssAnon` was above [`Settings::max_memory`]: `(loop,
    /// data, worker, RssAnon in bytes)`. A rolling replacement is under way
    /// (the new worker listens first, then this one drains).
    pub fn on_memory_limit(&mut self, cb: impl Fn(&mut Loop<D>, &mut D, &WorkerInfo, u64) + 'static) {
        self.events.memory_limit = Some(Rc::new(cb));
    }

    /// Delivers the queued events from a loop callback soon (a zero-delay
    /// timer): an API call queues events but never runs user callbacks
    /// itself.
    fn schedule_drain(&mut self, lp: &mut Loop<D>) {
        if self.events.queue.is_empty() || self.events.drain_timer.is_some() {
            return;
        }
        let Ok(t) = lp.timer_init() else { return };
        if lp.timer_start(t, Duration::ZERO, Duration::ZERO, &self.cbs.drain).is_ok() {
            self.events.drain_timer = Some(t);
        } else {
            let _ = lp.close(t, None);
        }
    }

    /// The worker's info now, or the copy an event carried if it is gone.
    fn refresh(&self, info: WorkerInfo) -> WorkerInfo {
        self.worker(info.id).unwrap_or(info)
    }
}

fn on_drain<D: PrimaryData>(pid: PrimaryId) -> OnTimer<D> {
    OnTimer::new(move |lp, d: &mut D, t| {
        let _ = lp.close(t, None);
        let Some(p) = d.primary_by_id(pid) else { return };
        if p.events.drain_timer == Some(t) {
            p.events.drain_timer = None;
        }
        drain_events(lp, d, pid);
    })
}

/// Runs the queued events. Each user callback is cloned out of the primary
/// and called with no borrow of it held; events it causes join the queue
/// and run in this same drain.
fn drain_events<D: PrimaryData>(lp: &mut Loop<D>, d: &mut D, pid: PrimaryId) {
    loop {
        let Some(p) = d.primary_by_id(pid) else { return };
        let Some(ev) = p.events.queue.pop_front() else { return };
        match ev {
            Event::Fork(info) => {
                let (cb, info) = (p.events.fork.clone(), p.refresh(info));
                if let Some(cb) = cb {
                    cb(lp, d, &info);
                }
            }
            Event::Online(info) => {
                let (cb, info) = (p.events.online.clone(), p.refresh(info));
                if let Some(cb) = cb {
                    cb(lp, d, &info);
                }
                if let Some(p) = d.primary_by_id(pid) {
                    p.rolling_on_up(lp, info.id, false);
                }
            }
            Event::Listening(info, addr) => {
                let (cb, info) = (p.events.listening.clone(), p.refresh(info));
                if let Some(cb) = cb {
                    cb(lp, d, &info, addr);
                }
                if let Some(p) = d.primary_by_id(pid) {
                    p.rolling_on_up(lp, info.id, true);
                }
            }
            Event::Disconnect(info) => {
                let (cb, info) = (p.events.disconnect.clone(), p.refresh(info));
                if let Some(cb) = cb {
                    cb(lp, d, &info);
                }
            }
            Event::ChannelError(info, fault) => {
                let (cb, info) = (p.events.channel_error.clone(), p.refresh(info));
                if let Some(cb) = cb {
                    cb(lp, d, &info, fault);
                }
            }
            Event::Exit(info, code, signal) => {
                let (cb, info) = (p.events.exit.clone(), p.refresh(info));
                if let Some(cb) = cb {
                    cb(lp, d, &info, code, signal);
                }
                if let Some(p) = d.primary_by_id(pid) {
                    p.rolling_on_exit(lp, info.id);
                }
            }
            Event::Unresponsive(info) => {
                if let Some(cb) = p.events.unresponsive.clone() {
                    cb(lp, d, &info);
                }
            }
            Event::MemoryLimit(info, rss_anon) => {
                let (cb, info) = (p.events.memory_limit.clone(), p.refresh(info));
                if let Some(cb) = cb {
                    cb(lp, d, &info, rss_anon);
                }
            }
            Event::Storm => {
                if let Some(cb) = p.events.storm.clone() {
                    cb(lp, d);
                }
            }
            Event::ShutdownDone => p.life.shutdown_done(p.workers.is_empty()),
            Event::Done(f) => f(lp, d),
        }
    }
}

// ---- the channels ----------------------------------------------------------

/// The read callback of every worker's channel (the worker id is the
/// channel's data word).
fn on_channel_read<D: PrimaryData>(pid: PrimaryId) -> OnRead<D, PipeStream> {
    OnRead::new(move |lp, d: &mut D, pipe, res| {
        let id = lp.data(pipe).unwrap_or(0) as WorkerId;
        let Some(p) = d.primary_by_id(pid) else { return };
        // The decoder is taken out of the entry while it hands out frames
        // (their handling needs `d`), and put back after.
        let Some(mut decoder) = p.entry_mut(id).filter(|w| w.channel == Some(pipe)).and_then(|w| w.decoder.take())
        else {
            return;
        };
        let fault = match res {
            Ok(bytes) => {
                let now = lp.now();
                if let Some(w) = p.entry_mut(id) {
                    w.last_heard = now;
                    if std::mem::take(&mut w.fds_lost) {
                        decoder.note_fds_lost(bytes.len());
                    }
                }
                // A worker that sends garbage loses its channel.
                match &mut decoder {
                    ChannelDecoder::Frames(dec) => {
                        let mut handler = |lp: &mut Loop<D>, dec: Decoded<'_>| handle_frame(lp, d, pid, id, pipe, dec);
                        match feed_chunk(lp, pipe, dec, bytes, &mut handler) {
                            Ok(_) => None,
                            Err(ChannelError::Decode(e)) => Some(ChannelFault::Decode(e)),
                            Err(ChannelError::Stalled) => Some(ChannelFault::Read(uvring::Error::EINVAL)),
                        }
                    }
                    ChannelDecoder::Node(dec) => node::feed_chunk(lp, d, pid, id, pipe, dec, bytes).err(),
                }
            }
            // This process is at its fd limit: the fds that came with the
            // bytes that follow are lost; the channel is fine.
            Err(e) if e == uvring::Error::CONTROL_TRUNCATED => {
                if let Some(w) = p.entry_mut(id) {
                    w.fds_lost = true;
                    let info = w.info();
                    p.events.queue.push_back(Event::ChannelError(info, ChannelFault::FdsLost));
                }
                None
            }
            Err(e) if e == uvring::Error::EOF => {
                let leaving = p.entry(id).is_some_and(|w| w.disconnecting || w.info.exited_after_disconnect);
                match decoder.finish() {
                    // Stray fds or a partial frame at the end: bad input.
                    Err(fault) => Some(fault),
                    Ok(()) if leaving => Some(ChannelFault::Read(e)),
                    Ok(()) => Some(ChannelFault::UnexpectedEof),
                }
            }
            Err(e) => Some(ChannelFault::Read(e)),
        };
        let Some(p) = d.primary_by_id(pid) else { return };
        match fault {
            None => {
                if let Some(w) = p.entry_mut(id).filter(|w| w.channel == Some(pipe)) {
                    w.decoder = Some(decoder);
                }
            }
            // An expected EOF: no error to report.
            Some(ChannelFault::Read(e)) if e == uvring::Error::EOF => {
                decoder.drain_fds();
                p.channel_closed(lp, id);
            }
            Some(fault) => {
                decoder.drain_fds();
                p.cut_channel(lp, id, fault);
            }
        }
        drain_events(lp, d, pid);
    })
}

impl<D> Primary<D> {
    /// Worker `id`'s channel failed for `fault`: reports it, closes the
    /// channel, and kills a worker that sent bad input (a worker that keeps
    /// running after garbage would otherwise hold its place for ever).
    fn cut_channel(&mut self, lp: &mut Loop<D>, id: WorkerId, fault: ChannelFault) {
        let Some(w) = self.entry(id) else { return };
        if w.channel.is_none() {
            return;
        }
        let (info, process) = (w.info(), w.process);
        self.events.queue.push_back(Event::ChannelError(info, fault));
        self.channel_closed(lp, id);
        if fault.is_bad_input() {
            if let Some(p) = process {
                let _ = lp.process_kill(p, libc::SIGKILL);
            }
        }
    }
}

/// One frame from worker `id`: each goes to the module that owns it; a
/// user message goes to the user.
fn handle_frame<D: PrimaryData>(
    lp: &mut Loop<D>,
    d: &mut D,
    pid: PrimaryId,
    id: WorkerId,
    pipe: PipeStream,
    dec: Decoded<'_>,
) -> Flow {
    let Decoded { frame, mut fds } = dec;
    let Some(p) = d.primary_by_id(pid) else { return Flow::Stop };
    match frame {
        Frame::Online => p.worker_online(id),
        Frame::QueryServer { seq, key } => p.query_server(lp, id, seq, &key),
        Frame::Ack { conn_seq, count, accepted } => p.on_ack(lp, id, conn_seq, count, accepted),
        Frame::Listening { address, port, .. } => p.worker_listening(id, address, port),
        Frame::Close { listener_id } => p.leave_listener(lp, listener_id, id),
        Frame::ExitedAfterDisconnect => p.worker_leaving(id),
        Frame::Load { open_connections } => p.on_load(lp, id, open_connections),
        // Any frame shows the worker's loop runs (`on_channel_read`); the
        // answer carries the worker's figures.
        Frame::Heartbeat { report, .. } => {
            if let Some(r) = report {
                p.on_report(id, r);
            }
        }
        Frame::Message { bytes, .. } => {
            if let Some(w) = p.entry_mut(id) {
                w.figures.messages_in += 1;
            }
            let (cb, info) = (p.events.message.clone(), p.worker(id));
            if let (Some(cb), Some(info)) = (cb, info) {
                cb(lp, d, &info, bytes, &mut fds);
            }
        }
        Frame::StoreGet { .. }
        | Frame::StoreSet { .. }
        | Frame::StoreDelete { .. }
        | Frame::StoreAdd { .. }
        | Frame::StoreCas { .. }
        | Frame::StoreKeys { .. } => p.store_request(lp, id, &frame),
        // A worker has no business sending these: it loses its channel.
        Frame::QueryServerReply { .. } | Frame::NewConnection { .. } | Frame::StoreReply { .. } | Frame::Disconnect => {
            drop(fds);
            p.cut_channel(lp, id, ChannelFault::UnexpectedFrame(frame.kind()));
            return Flow::Stop;
        }
    }
    let open = d.primary_by_id(pid).and_then(|p| p.entry(id)).is_some_and(|w| w.channel == Some(pipe));
    if open {
        Flow::Continue
    } else {
        Flow::Stop
    }
}
