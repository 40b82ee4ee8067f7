//! The worker side: the IPC channel to the primary, the listen hook that
//! routes `listen` to the primary, messages, the shared-store client, and
//! the graceful disconnect.
//!
//! # The model: the worker's state is part of the user's data
//!
//! [`Worker::init`] opens the channel named by `UVRING_CHANNEL_FD`, installs
//! a [`ListenHook`] and returns the [`Worker`]: a plain struct that the
//! application keeps inside its loop data `D`. `D` implements
//! [`WorkerData`], which hands the library its part (`Some` in a worker,
//! `None` when the same server code runs standalone). Every loop callback
//! of the library (channel reads, hooks, the load timer, the listen hook)
//! gets `d` from the engine and reaches its state through `d.worker()`; a
//! user callback (an `Rc<dyn Fn>` clone) is called with `(lp, d, ..)` only
//! after that borrow has ended. No shared cell, and no user callback runs
//! inside a `Worker` call.
//!
//! # Listening
//!
//! Ordinary server code (`tcp_bind` + `listen`) works unchanged: the engine
//! asks the hook from its pending phase, with `d`. Under `rr` the listener
//! receives connections the primary accepted (`NewConnection` frames,
//! delivered with [`Loop::listen_inject`]); under `shared` it adopts the
//! primary's listening socket; under `reuseport` it binds its own
//! `SO_REUSEPORT` socket ([`Loop::listen_bind`]). A bind error in the
//! primary reaches the server's connection callback through
//! [`Loop::listen_fail`], as Node's `error` event.
//!
//! # Acknowledgements
//!
//! An injected connection reaches the server's `on_connection` from the
//! loop's pending phase of the next iteration, not inside `listen_inject`.
//! Its acknowledgement waits for that: after the pending phase (a prepare
//! hook) a connection whose server still listens is acknowledged as
//! accepted. A server closed first (by the user, or by a disconnect, from
//! inside a connection callback for instance) dropped the connections still
//! in its accept queue; the hook's [`closed`](ListenHook::closed) says how
//! many (the last ones it received, since the user accepts in order): those
//! are refused, so the primary gives its own copy to another worker, while
//! the ones before them (the user accepted them) are accepted.
//! Acknowledgements go out in connection order, as few `Ack` frames in one
//! write; a disconnect shuts the channel down only after them.
//!
//! # When the primary dies
//!
//! A channel that closes while this worker is not disconnecting means the
//! primary is gone. A worker must not outlive it (no orphans): by default
//! the library stops the loop, so `Loop::run` returns and `main` exits.
//! [`Worker::on_primary_gone`] replaces that default (to close servers
//! first, say); the library never calls `process::exit`.

use crate::channel::{feed_chunk, Flow, FrameWriter};
use crate::proto::{
    Decoded, Frame, FrameDecoder, FrameFds, ListenAddress, ListenFlags, ListenKey, SocketType, StoreStatus, LOAD_EXEMPT,
};
use crate::schedule::WorkerId;
use crate::settings::{
    SchedPolicy, ENV_CHANNEL_FD, ENV_MAX_MESSAGE_LEN, ENV_NORMAL_SCHED, ENV_SCHED_POLICY, ENV_WORKER_ID,
};
use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;
use std::time::Duration;
use uvring::{
    Error, FdBatch, HandleId, Hook, HookKind, ListenHook, Loop, OnConnection, OnHook, OnListenStop, OnRead, OnTimer,
    PipeListener, PipeStream, Result, TcpListener, Timer, Udp, TCP_IPV6ONLY, TCP_REUSEPORT, UDP_IPV6ONLY,
    UDP_REUSEADDR, UDP_REUSEPORT,
};

/// The loop data of a program that may run as a cluster worker: it holds
/// the [`Worker`] that [`Worker::init`] returned and hands it to the
/// library (smithay's delegate pattern over calloop).
///
/// ```
/// use uvring_cluster::{Worker, WorkerData};
///
/// struct Server {
///     worker: Option<Worker<Server>>,
///     // ... the server's own state
/// }
///
/// impl WorkerData for Server {
///     fn worker(&mut self) -> Option<&mut Worker<Server>> {
///         self.worker.as_mut()
///     }
/// }
/// ```
pub trait WorkerData: Sized + 'static {
    /// The cluster's part of the loop data: `Some` in a worker, `None` when
    /// the same code runs standalone (then `listen` is an ordinary local
    /// listen).
    fn worker(&mut self) -> Option<&mut Worker<Self>>;
}

/// `(loop, data, bytes, fds)`: a user message from the primary.
type MessageFn<D> = dyn Fn(&mut Loop<D>, &mut D, &[u8], &mut FrameFds);
/// `(loop, data, server, real address)`: a server is listening.
type ListeningFn<D> = dyn Fn(&mut Loop<D>, &mut D, TcpListener, SocketAddr);
/// `(loop, data)`: the channel to the primary closed.
type ChannelFn<D> = dyn Fn(&mut Loop<D>, &mut D);
/// `(loop, data, idle grace)`: the worker drains.
type DrainFn<D> = dyn Fn(&mut Loop<D>, &mut D, Duration);

type GetFn<D> = dyn FnOnce(&mut Loop<D>, &mut D, Result<Option<&[u8]>>);
type SetFn<D> = dyn FnOnce(&mut Loop<D>, &mut D, Result<()>);
type DeleteFn<D> = dyn FnOnce(&mut Loop<D>, &mut D, Result<bool>);
type AddFn<D> = dyn FnOnce(&mut Loop<D>, &mut D, Result<i64>);
type CasFn<D> = dyn FnOnce(&mut Loop<D>, &mut D, Result<CasOutcome<'_>>);
type KeysFn<D> = dyn FnOnce(&mut Loop<D>, &mut D, Result<Vec<Vec<u8>>>);

/// What a store request's callback gets.
enum StoreCallback<D> {
    Get(Box<GetFn<D>>),
    Set(Box<SetFn<D>>),
    Delete(Box<DeleteFn<D>>),
    Add(Box<AddFn<D>>),
    Cas(Box<CasFn<D>>),
    /// A keys listing, with the prefix asked and the keys of the pages
    /// received so far.
    Keys {
        prefix: Vec<u8>,
        keys: Vec<Vec<u8>>,
        cb: Box<KeysFn<D>>,
    },
}

impl<D> StoreCallback<D> {
    /// Fails the request with `e` (timeout, channel gone).
    fn fail(self, lp: &mut Loop<D>, d: &mut D, e: Error) {
        match self {
            StoreCallback::Get(f) => f(lp, d, Err(e)),
            StoreCallback::Set(f) => f(lp, d, Err(e)),
            StoreCallback::Delete(f) => f(lp, d, Err(e)),
            StoreCallback::Add(f) => f(lp, d, Err(e)),
            StoreCallback::Cas(f) => f(lp, d, Err(e)),
            StoreCallback::Keys { cb, .. } => cb(lp, d, Err(e)),
        }
    }
}

/// A store request waiting for its answer.
struct StoreRequest<D> {
    req_id: u32,
    /// `lp.now()` past which it fails with `ETIMEDOUT` (`u64::MAX`: never).
    deadline: u64,
    cb: StoreCallback<D>,
}

/// How a [`Worker::store_compare_and_swap`] ended.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum CasOutcome<'a> {
    /// The value was swapped.
    Swapped,
    /// The value was not `expected`: here is the current one (`None`: the
    /// key is absent). The store is unchanged.
    Mismatch(Option<&'a [u8]>),
}

/// Environment variable passing [`Settings::store_timeout`](crate::Settings::store_timeout)
/// (ms) to workers.
pub const ENV_STORE_TIMEOUT_MS: &str = "UVRING_CLUSTER_STORE_TIMEOUT_MS";

/// The store timeout a worker starts with when the primary names none.
pub const DEFAULT_STORE_TIMEOUT: Duration = Duration::from_secs(5);

/// The role named by the environment, read once: `(worker id, channel fd)`.
fn role_env() -> Option<(WorkerId, RawFd)> {
    static ROLE: OnceLock<Option<(WorkerId, RawFd)>> = OnceLock::new();
    *ROLE.get_or_init(|| {
        let id = std::env::var(ENV_WORKER_ID).ok()?.trim().parse().ok()?;
        let fd: RawFd = std::env::var(ENV_CHANNEL_FD).ok()?.trim().parse().ok()?;
        (fd >= 0).then_some((id, fd))
    })
}

/// Whether this process is a cluster worker (its environment names a worker
/// id and a channel fd, as Node's `NODE_UNIQUE_ID` and `NODE_CHANNEL_FD`).
pub fn is_worker() -> bool {
    role_env().is_some()
}

/// Whether this process is a primary (not a worker).
pub fn is_primary() -> bool {
    !is_worker()
}

/// This worker's id, if it is one.
pub fn worker_id() -> Option<WorkerId> {
    role_env().map(|(id, _)| id)
}

static INITIALIZED: AtomicBool = AtomicBool::new(false);

/// What listens share a per-worker index counter: the same address and
/// socket type (Node's `indexesKey`).
#[derive(Debug, Clone, PartialEq, Eq)]
enum IndexKey {
    Tcp(SocketAddr),
    Udp(SocketAddr),
    Unix(PathBuf),
    Fd(RawFd),
}

/// A pipe server on a Unix path, routed through the primary like a TCP
/// one (see [`ListenHook::listen_pipe`]).
#[derive(Debug)]
struct PipeServer {
    stream: PipeListener,
    seq: u32,
    /// The primary's id for the listener, once the reply came.
    listener_id: Option<u32>,
    path: PathBuf,
    index: u32,
    /// Closed by the user before the primary answered.
    closed: bool,
}

/// A server a connection can be handed to.
#[derive(Debug, Clone, Copy)]
enum Target {
    Tcp(TcpListener),
    Pipe(PipeListener),
}

impl Target {
    fn id(self) -> HandleId {
        match self {
            Target::Tcp(s) => s.id(),
            Target::Pipe(s) => s.id(),
        }
    }

    fn inject<D>(self, lp: &mut Loop<D>, fd: OwnedFd) -> std::result::Result<(), (Error, OwnedFd)> {
        match self {
            Target::Tcp(s) => lp.listen_inject(s, fd),
            Target::Pipe(s) => lp.listen_inject(s, fd),
        }
    }
}

/// Which listens share a per-worker index counter (Node's `indexesKey`).
#[derive(Debug)]
struct IndexSet {
    key: IndexKey,
    next: u32,
    live: Vec<u32>,
}

/// `(loop, data, the bound socket or the bind error)`: a UDP bind through
/// the primary completed ([`Worker::udp_bind`]).
type DgramFn<D> = dyn FnOnce(&mut Loop<D>, &mut D, Result<Udp>);

/// A UDP bind through the primary: asked, then bound.
struct Dgram<D> {
    seq: u32,
    requested: SocketAddr,
    index: u32,
    /// The user's callback, until the reply came.
    on_bound: Option<Box<DgramFn<D>>>,
    /// Once bound: the socket and the primary's id for its key.
    bound: Option<(Udp, u32)>,
}

#[derive(Debug)]
struct Server {
    stream: TcpListener,
    seq: u32,
    /// The primary's id for the listener, once the reply came.
    listener_id: Option<u32>,
    /// The address asked for (the port may be 0).
    requested: SocketAddr,
    index: u32,
    backlog: i32,
    /// The real address once listening.
    address: Option<SocketAddr>,
    /// Closed by the user before the primary answered.
    closed: bool,
    /// The listen's flags (`TCP_IPV6ONLY`).
    flags: u32,
    /// A listen on the primary's fd of this number ([`Worker::listen_fd`]).
    fd: Option<RawFd>,
}

impl Server {
    fn index_key(&self) -> IndexKey {
        match self.fd {
            Some(fd) => IndexKey::Fd(fd),
            None => IndexKey::Tcp(self.requested),
        }
    }
}

/// A connection the primary handed over, until its acknowledgement is
/// recorded (see the module docs).
#[derive(Debug)]
struct Handoff {
    seq: u64,
    /// The server (TCP or pipe) it was injected into (`None`: refused at
    /// once).
    server: Option<HandleId>,
    /// The loop iteration it was injected in: its `on_connection` runs in
    /// the pending phase of a later one.
    iteration: u64,
    /// `Some(accepted)` once known.
    outcome: Option<bool>,
}

/// This process's side of the cluster (Node's `cluster.worker` inside a
/// worker), kept in the loop's user data `D` (see [`WorkerData`]).
pub struct Worker<D> {
    id: WorkerId,
    policy: SchedPolicy,
    channel: Option<PipeStream>,
    /// The channel's decoder; out of the struct while a chunk is decoded.
    decoder: Option<FrameDecoder>,
    writer: FrameWriter,
    servers: Vec<Server>,
    /// Sockets [`Worker::listen_fd`] made, until the hook routes their
    /// listen: `(socket, fd number in the primary)`.
    fd_listens: Vec<(HandleId, RawFd)>,
    /// Pipe servers on Unix paths.
    pipes: Vec<PipeServer>,
    /// UDP sockets bound through the primary, or being bound.
    dgrams: Vec<Dgram<D>>,
    indexes: Vec<IndexSet>,
    next_seq: u32,
    next_req: u32,
    store_reqs: Vec<StoreRequest<D>>,
    /// How long a store request may wait for its answer (zero: for ever).
    store_timeout: Duration,
    /// Fails the store requests past their deadline (unreferenced).
    store_timer: Option<Timer>,
    on_message: Option<Rc<MessageFn<D>>>,
    on_listening: Option<Rc<ListeningFn<D>>>,
    on_disconnect: Option<Rc<ChannelFn<D>>>,
    on_primary_gone: Option<Rc<ChannelFn<D>>>,
    on_drain: Option<Rc<DrainFn<D>>>,
    /// A disconnect began and `on_drain` has not run yet.
    drain_due: bool,
    /// `Settings::drain_grace`, from the primary.
    drain_grace: Duration,
    disconnecting: bool,
    exited_after_disconnect: bool,
    load_timer: Option<Timer>,
    /// The load timer's period.
    load_every: Duration,
    /// The load timer is set to fire before its period, for a held-back
    /// `shared` report (`on_load_report` sets it back).
    load_timer_early: bool,
    last_load: u32,
    /// Connections handed over, in order, whose acknowledgement is not
    /// recorded yet.
    handoffs: VecDeque<Handoff>,
    /// Acknowledgements not yet written: one run of consecutive
    /// connections with the same outcome `(first seq, count, accepted)`.
    /// They go out, as few `Ack` frames in one write, from `delivery_hook`,
    /// `turn_hook` or the listen hook's `closed`.
    ack_run: Option<(u64, u32, bool)>,
    /// Prepare hook: after the pending phase delivered injected
    /// connections, decide and write their acks.
    delivery_hook: Option<Hook>,
    /// Check hook: writes the iteration's acks, then a due channel shutdown.
    turn_hook: Option<Hook>,
    /// `begin_disconnect` ran: shut the channel down after the acks
    /// (`Some(primary_initiated)`).
    shutdown_due: Option<bool>,
    /// The last `recvmsg` lost its fds (`MSG_CTRUNC`: this process is at its
    /// fd limit): the connections of the bytes that come with it are
    /// refused, and the primary gives them to another worker.
    fds_lost: bool,
    /// `shared`: the balancing state (see [`Share`]).
    share: Share,
}

/// Under `shared`, the worker's part of spreading the load (nginx's
/// `accept_disabled`, cluster-wide): at the end of each loop iteration it
/// reports its load (open connections plus connections accepted so far)
/// when it changed, and the primary answers every worker with the most
/// each may hold: the least-loaded worker's load, in the receiving
/// worker's own units. A worker more than [`SHARE_SLACK`] above it pauses
/// accepting ([`Loop::listen_pause`]), so the kernel hands the next
/// connections to the others; it resumes once back under.
///
/// Under churn the load changes in nearly every iteration, so reports are
/// rate-limited to one per [`ENV_SHARE_REPORT_MS`] milliseconds (default
/// [`SHARE_REPORT_MS`]) after a burst of [`SHARE_REPORT_BURST`]: a change
/// held back is sent when the next report may go, by the load timer set
/// to fire then. The frames (and the primary's wake-ups and answers) are
/// then one per interval, not one per connection; between reports a worker
/// pauses on its own load against the last limit. The primary marks one
/// least-loaded worker ([`LOAD_EXEMPT`]): while its reports are held back
/// it never pauses, so stale limits cannot pause every worker at once and
/// some worker always accepts (while its reports flow it pauses like the
/// others, and the primary's answer to its report resumes it).
#[derive(Debug, Default)]
struct Share {
    /// Handles that are not connections, counted when the shared listener
    /// was adopted.
    baseline: Option<usize>,
    /// The last load reported.
    reported: Option<u32>,
    /// The most this worker may hold, from the primary.
    limit: Option<u32>,
    paused: bool,
    /// Reports at most one per this many milliseconds (0: every change).
    every_ms: u64,
    /// Loop time one interval after the last report, counting a burst's
    /// reports one interval each (a token bucket of
    /// [`SHARE_REPORT_BURST`] reports, refilled one per interval).
    next_ms: u64,
}

/// Environment: the least interval between two `shared` load reports of a
/// worker, in milliseconds (0: report every change, as before 2026-12-01;
/// at most 60,000).
pub const ENV_SHARE_REPORT_MS: &str = "UVRING_CLUSTER_SHARE_MS";

/// The default of [`ENV_SHARE_REPORT_MS`].
const SHARE_REPORT_MS: u64 = 20;

/// Reports a `shared` worker may send back to back before the interval
/// applies: a quiet worker reports each change of a short burst at once
/// (a few connections opened together balance exactly).
const SHARE_REPORT_BURST: u64 = 256;

/// How far (load units: one connection accepted and open counts 2) a
/// `shared` worker may go above the least-loaded one before it pauses.
const SHARE_SLACK: u32 = 2;

impl<D> std::fmt::Debug for Worker<D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker")
            .field("id", &self.id)
            .field("policy", &self.policy)
            .field("connected", &self.channel.is_some())
            .field("servers", &self.servers.len())
            .finish_non_exhaustive()
    }
}

impl<D: 'static> Worker<D> {
    /// Records the outcome of connection `seq` (a run grows, or the previous
    /// run is encoded for the next write).
    fn note_ack(&mut self, seq: u64, accepted: bool) {
        if let Some((first, count, ok)) = &mut self.ack_run {
            if *ok == accepted && first.checked_add(u64::from(*count)) == Some(seq) && *count < u32::MAX {
                *count += 1;
                return;
            }
            let frame = Frame::Ack { conn_seq: *first, count: *count, accepted: *ok };
            let _ = self.writer.queue(&frame);
        }
        self.ack_run = Some((seq, 1, accepted));
    }

    /// Records the acks of the leading hand-offs whose outcome is known (in
    /// order: the primary takes acks in connection order).
    fn settle_handoffs(&mut self) {
        while let Some(&Handoff { seq, outcome: Some(accepted), .. }) = self.handoffs.front() {
            self.handoffs.pop_front();
            self.note_ack(seq, accepted);
        }
    }

    /// After a pending phase: a connection whose `on_connection` has run
    /// (injected in an earlier iteration) and whose server still listens
    /// is this worker's (the user took it, or holds it in the accept queue).
    /// One whose server is closing waits for the hook's `closed`.
    fn decide_delivered(&mut self, lp: &Loop<D>) {
        let now = lp.iterations();
        for h in self.handoffs.iter_mut().filter(|h| h.outcome.is_none() && h.iteration < now) {
            match h.server {
                Some(s) if lp.is_closing(s) => {}
                // Listening; or gone without the hook hearing of it, which
                // cannot happen: then the safe way, as one that was taken
                // (a refusal could hand the connection to a second worker).
                _ => h.outcome = Some(true),
            }
        }
    }

    /// `server` closed with `dropped` connections still in its accept
    /// queue: the last `dropped` it received were never accepted (refused);
    /// the undecided ones before them, the user took (accepted).
    fn decide_closed(&mut self, server: HandleId, dropped: usize) {
        let mut left = dropped;
        for h in self.handoffs.iter_mut().rev().filter(|h| h.server == Some(server)) {
            if h.outcome.is_none() {
                h.outcome = Some(left == 0);
            }
            left = left.saturating_sub(1);
        }
    }

    /// Whether an acknowledgement still waits for a closing server's
    /// `closed` (a disconnect holds the channel's shutdown for it).
    fn acks_pending_close(&self, lp: &Loop<D>) -> bool {
        self.handoffs.iter().any(|h| h.outcome.is_none() && h.server.is_some_and(|s| lp.is_closing(s)))
    }

    /// Sets the load timer to fire in `ms` (unless it already will early).
    fn load_timer_soon(&mut self, lp: &mut Loop<D>, ms: u64) {
        let Some(t) = self.load_timer else { return };
        if !self.load_timer_early {
            self.load_timer_early = true;
            let _ = lp.timer_set_repeat(t, Duration::from_millis(ms)).and_then(|()| lp.timer_again(t));
        }
    }

    /// The load timer fired early: back to its period.
    fn load_timer_back(&mut self, lp: &mut Loop<D>) {
        if let Some(t) = self.load_timer.filter(|_| std::mem::take(&mut self.load_timer_early)) {
            let _ = lp.timer_set_repeat(t, self.load_every).and_then(|()| lp.timer_again(t));
        }
    }

    /// Writes the recorded acks (and anything else queued) in one write.
    fn flush_acks(&mut self, lp: &mut Loop<D>) {
        self.settle_handoffs();
        if let Some((conn_seq, count, accepted)) = self.ack_run.take() {
            let _ = self.writer.queue(&Frame::Ack { conn_seq, count, accepted });
        }
        if let Some(ch) = self.channel {
            let _ = self.writer.flush(lp, ch);
        }
    }

    fn send_frame(&mut self, lp: &mut Loop<D>, frame: &Frame<'_>) -> Result<()> {
        let ch = self.channel.ok_or(Error::ENOTCONN)?;
        self.writer.send(lp, ch, frame)
    }

    fn take_index(&mut self, key: IndexKey) -> u32 {
        if let Some(set) = self.indexes.iter_mut().find(|s| s.key == key) {
            let i = set.next;
            set.next += 1;
            set.live.push(i);
            return i;
        }
        self.indexes.push(IndexSet { key, next: 1, live: vec![0] });
        0
    }

    fn release_index(&mut self, key: &IndexKey, index: u32) {
        if let Some(pos) = self.indexes.iter().position(|s| s.key == *key) {
            let set = &mut self.indexes[pos];
            set.live.retain(|&i| i != index);
            if set.live.is_empty() {
                self.indexes.swap_remove(pos);
            }
        }
    }

    fn server_for_listener(&self, listener_id: u32) -> Option<Target> {
        let tcp = self.servers.iter().find(|s| s.listener_id == Some(listener_id) && !s.closed);
        if let Some(s) = tcp {
            return Some(Target::Tcp(s.stream));
        }
        let pipe = self.pipes.iter().find(|s| s.listener_id == Some(listener_id) && !s.closed);
        pipe.map(|s| Target::Pipe(s.stream))
    }

    /// Removes the server entry at `i` and frees its index.
    fn remove_server(&mut self, i: usize) -> Server {
        let s = self.servers.swap_remove(i);
        self.release_index(&s.index_key(), s.index);
        s
    }

    /// Asks the primary to listen on its fd `fd` for `server` (see
    /// [`Worker::listen_fd`]).
    fn query_fd(&mut self, lp: &mut Loop<D>, server: TcpListener, fd: RawFd, backlog: i32) -> Result<()> {
        let seq = self.next_seq;
        let index = self.take_index(IndexKey::Fd(fd));
        let key = ListenKey {
            address: ListenAddress::Fd(fd as u32),
            port: 0,
            socket_type: SocketType::Tcp,
            backlog: backlog.max(0) as u32,
            flags: ListenFlags::empty(),
            index,
        };
        if let Err(e) = self.send_frame(lp, &Frame::QueryServer { seq, key }) {
            self.release_index(&IndexKey::Fd(fd), index);
            return Err(e);
        }
        self.next_seq = self.next_seq.wrapping_add(1);
        self.servers.push(Server {
            stream: server,
            seq,
            listener_id: None,
            requested: SocketAddr::from(([0, 0, 0, 0], 0)),
            index,
            backlog,
            address: None,
            closed: false,
            flags: 0,
            fd: Some(fd),
        });
        Ok(())
    }

    /// Removes the pipe server entry at `i` and frees its index.
    fn remove_pipe(&mut self, i: usize) -> PipeServer {
        let s = self.pipes.swap_remove(i);
        self.release_index(&IndexKey::Unix(s.path.clone()), s.index);
        s
    }

    /// A server the primary answered could not listen here (its bind or
    /// its adopted socket failed): forget it, tell the primary to release
    /// its key, and report the error to the server's `on_connection`.
    fn server_failed_locally(&mut self, lp: &mut Loop<D>, s: TcpListener, listener_id: u32, e: Error) {
        if let Some(i) = self.servers.iter().position(|x| x.stream == s) {
            self.remove_server(i);
        }
        let _ = self.send_frame(lp, &Frame::Close { listener_id });
        lp.listen_fail(s, e);
    }

    /// Starts leaving (see [`Worker::disconnect`]); runs no user code.
    fn begin_disconnect(&mut self, lp: &mut Loop<D>, primary_initiated: bool) {
        if self.disconnecting {
            return;
        }
        self.disconnecting = true;
        self.exited_after_disconnect = true;
        self.drain_due = true;
        if let Some(t) = self.load_timer.take() {
            let _ = lp.close(t, None);
        }
        // A server that accepts by itself (a shared or reuseport listener)
        // stops gracefully and closes once its accept op has ended:
        // connections the kernel already accepted for it (io_uring's
        // multishot accept does so on its own) are still served, not reset.
        // An `rr` server accepts nothing itself: it closes now, so the
        // primary stops routing to it at once (a hand-off already on its
        // way, or one not yet taken from its accept queue, is refused and
        // goes to another worker).
        let on_stopped = OnListenStop::new(|lp, _d, s: TcpListener, _| {
            if lp.is_live(s) && !lp.is_closing(s) {
                let _ = lp.close(s, None);
            }
        });
        // UDP sockets close now (Node's disconnect closes every handle it
        // got from the primary); the check hook tells the primary.
        for (u, _) in self.dgrams.iter().filter_map(|g| g.bound) {
            if lp.is_live(u) && !lp.is_closing(u) {
                let _ = lp.close(u, None);
            }
        }
        let on_pipe_stopped = OnListenStop::new(|lp, _d, s: PipeListener, _| {
            if lp.is_live(s) && !lp.is_closing(s) {
                let _ = lp.close(s, None);
            }
        });
        for s in self.pipes.iter().filter(|s| !s.closed).map(|s| s.stream) {
            if !lp.is_live(s) || lp.is_closing(s) {
                continue;
            }
            let local = lp.fileno(s).is_ok_and(|fd| fd >= 0);
            if !(local && lp.listen_stop(s, Some(&on_pipe_stopped)).is_ok()) {
                let _ = lp.close(s, None);
            }
        }
        for s in self.servers.iter().filter(|s| !s.closed).map(|s| s.stream) {
            if !lp.is_live(s) || lp.is_closing(s) {
                continue;
            }
            let local = lp.fileno(s).is_ok_and(|fd| fd >= 0);
            if !(local && lp.listen_stop(s, Some(&on_stopped)).is_ok()) {
                let _ = lp.close(s, None);
            }
        }
        if self.channel.is_some() {
            // The channel is shut down at the end of this loop iteration,
            // after the acks of the connections received in it (a user
            // callback may call `disconnect` while connections of the same
            // frame are still being delivered; their acks must reach the
            // primary, or it would hand them to another worker).
            self.shutdown_due = Some(primary_initiated);
        }
    }
}

/// The listen hook installed in worker processes; its state is the
/// [`Worker`] in `D`.
struct WorkerHook;

fn socket_addr_to_listen(addr: &SocketAddr) -> ListenAddress<'static> {
    match addr.ip() {
        IpAddr::V4(ip) => ListenAddress::V4(ip),
        IpAddr::V6(ip) => ListenAddress::V6(ip),
    }
}

impl<D: WorkerData> ListenHook<D> for WorkerHook {
    fn listen(
        &self,
        lp: &mut Loop<D>,
        d: &mut D,
        server: TcpListener,
        addr: SocketAddr,
        flags: u32,
        backlog: i32,
    ) -> Option<Result<()>> {
        // Bound locally already (the user asked for SO_REUSEPORT): an
        // ordinary local listen.
        if lp.fileno(server).is_ok_and(|fd| fd >= 0) {
            return None;
        }
        let w = d.worker()?;
        if w.disconnecting {
            return Some(Err(Error::ENOTCONN));
        }
        // Under reuseport a fixed port is bound here; port 0 asks the
        // primary, which reserves one port for every worker.
        if w.policy == SchedPolicy::ReusePort && addr.port() != 0 {
            if let Err(e) = lp.listen_bind(server, addr, flags | TCP_REUSEPORT, backlog) {
                return Some(Err(e));
            }
            let real = lp.tcp_getsockname(server).unwrap_or(addr);
            let index = w.take_index(IndexKey::Tcp(addr));
            w.servers.push(Server {
                stream: server,
                seq: 0,
                listener_id: None,
                requested: addr,
                index,
                backlog,
                address: Some(real),
                closed: false,
                flags,
                fd: None,
            });
            // The primary and the user hear of it now: this runs from the
            // loop's pending phase, never from inside `listen`.
            let frame = Frame::Listening { listener_id: 0, address: socket_addr_to_listen(&real), port: real.port() };
            let _ = w.send_frame(lp, &frame);
            if let Some(cb) = w.on_listening.clone() {
                cb(lp, d, server, real);
            }
            return Some(Ok(()));
        }
        if let Some(i) = w.fd_listens.iter().position(|&(h, _)| h == server.id()) {
            let (_, fd) = w.fd_listens.swap_remove(i);
            return Some(w.query_fd(lp, server, fd, backlog));
        }
        let seq = w.next_seq;
        w.next_seq = w.next_seq.wrapping_add(1);
        let index = w.take_index(IndexKey::Tcp(addr));
        let mut lflags = ListenFlags::empty().bits();
        if flags & TCP_IPV6ONLY != 0 {
            lflags |= ListenFlags::IPV6_ONLY.bits();
        }
        let key = ListenKey {
            address: socket_addr_to_listen(&addr),
            port: addr.port(),
            socket_type: SocketType::Tcp,
            backlog: backlog.max(0) as u32,
            flags: ListenFlags::from_bits(lflags).unwrap_or(ListenFlags::empty()),
            index,
        };
        if let Err(e) = w.send_frame(lp, &Frame::QueryServer { seq, key }) {
            w.release_index(&IndexKey::Tcp(addr), index);
            return Some(Err(e));
        }
        w.servers.push(Server {
            stream: server,
            seq,
            listener_id: None,
            requested: addr,
            index,
            backlog,
            address: None,
            closed: false,
            flags,
            fd: None,
        });
        Some(Ok(()))
    }

    fn closed(&self, lp: &mut Loop<D>, d: &mut D, server: TcpListener, dropped: usize) {
        let Some(w) = d.worker() else { return };
        w.decide_closed(server.id(), dropped);
        if let Some(i) = w.servers.iter().position(|s| s.stream == server && !s.closed) {
            match w.servers[i].listener_id {
                Some(listener_id) => {
                    w.remove_server(i);
                    let _ = w.send_frame(lp, &Frame::Close { listener_id });
                }
                None if w.policy == SchedPolicy::ReusePort => {
                    w.remove_server(i);
                }
                // The reply has not come yet: remember, and close the
                // listener in the primary when it does.
                None => w.servers[i].closed = true,
            }
        }
        w.flush_acks(lp);
        // A disconnect may have waited for these acks.
        maybe_shutdown(lp, d);
    }

    fn listen_pipe(
        &self,
        lp: &mut Loop<D>,
        d: &mut D,
        server: PipeListener,
        path: &Path,
        backlog: i32,
    ) -> Option<Result<()>> {
        let w = d.worker()?;
        if w.disconnecting {
            return Some(Err(Error::ENOTCONN));
        }
        let bytes = path.as_os_str().as_bytes();
        if bytes.is_empty() || bytes.len() > crate::proto::UNIX_PATH_MAX {
            return Some(Err(Error::from_errno(libc::ENAMETOOLONG)));
        }
        let seq = w.next_seq;
        let index = w.take_index(IndexKey::Unix(path.to_path_buf()));
        let key = ListenKey {
            address: ListenAddress::Unix(bytes),
            port: 0,
            socket_type: SocketType::Pipe,
            backlog: backlog.max(0) as u32,
            flags: ListenFlags::empty(),
            index,
        };
        if let Err(e) = w.send_frame(lp, &Frame::QueryServer { seq, key }) {
            w.release_index(&IndexKey::Unix(path.to_path_buf()), index);
            return Some(Err(e));
        }
        w.next_seq = w.next_seq.wrapping_add(1);
        let path = path.to_path_buf();
        w.pipes.push(PipeServer { stream: server, seq, listener_id: None, path, index, closed: false });
        Some(Ok(()))
    }

    fn closed_pipe(&self, lp: &mut Loop<D>, d: &mut D, server: PipeListener, dropped: usize) {
        let Some(w) = d.worker() else { return };
        w.decide_closed(server.id(), dropped);
        if let Some(i) = w.pipes.iter().position(|s| s.stream == server && !s.closed) {
            match w.pipes[i].listener_id {
                Some(listener_id) => {
                    w.remove_pipe(i);
                    let _ = w.send_frame(lp, &Frame::Close { listener_id });
                }
                // The reply has not come yet: close in the primary when it
                // does.
                None => w.pipes[i].closed = true,
            }
        }
        w.flush_acks(lp);
        maybe_shutdown(lp, d);
    }
}

impl<D: WorkerData> Worker<D> {
    /// Opens the channel to the primary and installs the listen hook. Call
    /// once, early, in a worker process (see [`is_worker`]), and keep the
    /// result in the loop's data, where [`WorkerData::worker`] finds it;
    /// `EINVAL` in a primary, `INVALID_STATE` the second time.
    ///
    /// # Errors
    ///
    /// `EINVAL` outside a worker (the primary's `UVRING_WORKER_ID` and `UVRING_CHANNEL_FD` are not
    /// set, as in a primary or a standalone run);
    /// [`Error::INVALID_STATE`](uvring::Error::INVALID_STATE) on a second call in the process;
    /// `EINVAL` or `ENOTSOCK` if the inherited channel fd is not a stream socket; `ENOSPC` if the
    /// loop's handle table is full. A primary already gone is not an error here: the channel's
    /// end is seen from the loop ([`on_primary_gone`](Self::on_primary_gone)).
    ///
    /// # Examples
    ///
    /// The same server code runs standalone and in a worker: keep the
    /// `Worker` in the loop's data when there is one.
    ///
    /// ```
    /// use uvring::{Loop, RunMode};
    /// use uvring_cluster::{is_worker, Worker, WorkerData};
    ///
    /// struct Server {
    ///     worker: Option<Worker<Server>>,
    /// }
    ///
    /// impl WorkerData for Server {
    ///     fn worker(&mut self) -> Option<&mut Worker<Server>> {
    ///         self.worker.as_mut()
    ///     }
    /// }
    ///
    /// let mut lp: Loop<Server> = Loop::new()?;
    /// let worker = if is_worker() { Some(Worker::init(&mut lp)?) } else { None };
    /// let mut server = Server { worker };
    /// // tcp_init, tcp_bind and listen as usual: in a worker the primary routes them.
    /// lp.run(RunMode::Default, &mut server)?;
    /// # Ok::<(), uvring::Error>(())
    /// ```
    pub fn init(lp: &mut Loop<D>) -> Result<Worker<D>> {
        let (id, fd) = role_env().ok_or(Error::EINVAL)?;
        if INITIALIZED.swap(true, Ordering::SeqCst) {
            return Err(Error::INVALID_STATE);
        }
        // SAFETY: the primary started this process with its end of the
        // channel at fd `fd` (named by UVRING_CHANNEL_FD) and nothing else in
        // the process owns it; INITIALIZED makes sure it is taken once.
        let owned = unsafe { OwnedFd::from_raw_fd(fd) };
        // Grandchildren must not think they are workers of this primary.
        std::env::remove_var(ENV_CHANNEL_FD);
        std::env::remove_var(ENV_WORKER_ID);
        // A primary under SCHED_BATCH (Settings::batch_scheduling) passed it
        // on with the fork; a worker serves under the normal policy.
        if std::env::var_os(ENV_NORMAL_SCHED).is_some_and(|v| v == "1") {
            let _ = uvring::os::set_sched_batch(false);
        }
        std::env::remove_var(ENV_NORMAL_SCHED);
        // Settings::worker_batch_scheduling asks for SCHED_BATCH instead.
        if std::env::var_os(crate::settings::ENV_WORKER_BATCH).is_some_and(|v| v == "1") {
            let _ = uvring::os::set_sched_batch(true);
        }
        std::env::remove_var(crate::settings::ENV_WORKER_BATCH);
        let policy = std::env::var(ENV_SCHED_POLICY).ok().and_then(|v| SchedPolicy::parse(&v)).unwrap_or_default();
        let load_ms: u64 =
            std::env::var(crate::primary::ENV_LOAD_REPORT_MS).ok().and_then(|v| v.parse().ok()).unwrap_or(50);
        let share_ms = std::env::var(ENV_SHARE_REPORT_MS)
            .ok()
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(SHARE_REPORT_MS)
            .min(60_000);
        let drain_grace = std::env::var(crate::settings::ENV_DRAIN_GRACE_MS)
            .ok()
            .and_then(|v| v.parse().ok())
            .map_or(Duration::from_millis(500), Duration::from_millis);
        std::env::remove_var(crate::settings::ENV_DRAIN_GRACE_MS);
        let max_message = std::env::var(ENV_MAX_MESSAGE_LEN)
            .ok()
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(crate::settings::DEFAULT_MAX_MESSAGE_LEN);
        std::env::remove_var(ENV_MAX_MESSAGE_LEN);
        let store_timeout = std::env::var(ENV_STORE_TIMEOUT_MS)
            .ok()
            .and_then(|v| v.trim().parse().ok())
            .map_or(DEFAULT_STORE_TIMEOUT, Duration::from_millis);
        std::env::remove_var(ENV_STORE_TIMEOUT_MS);
        let pipe = lp.pipe_open(owned, true)?;
        let mut worker = Worker {
            id,
            policy,
            channel: Some(pipe),
            decoder: Some(crate::channel::decoder(max_message)),
            writer: FrameWriter::new(max_message),
            servers: Vec::with_capacity(8),
            fd_listens: Vec::new(),
            pipes: Vec::new(),
            dgrams: Vec::new(),
            indexes: Vec::new(),
            next_seq: 1,
            next_req: 1,
            store_reqs: Vec::new(),
            store_timeout,
            store_timer: None,
            on_message: None,
            on_listening: None,
            on_disconnect: None,
            on_primary_gone: None,
            on_drain: None,
            drain_due: false,
            drain_grace,
            disconnecting: false,
            exited_after_disconnect: false,
            load_timer: None,
            load_every: Duration::from_millis(load_ms),
            load_timer_early: false,
            last_load: 0,
            handoffs: VecDeque::with_capacity(64),
            ack_run: None,
            delivery_hook: None,
            turn_hook: None,
            shutdown_due: None,
            fds_lost: false,
            share: Share { every_ms: share_ms, ..Share::default() },
        };
        let hook = lp.hook_init(HookKind::Prepare)?;
        lp.unref_handle(hook)?;
        lp.hook_start(hook, &OnHook::new(on_prepare::<D>))?;
        worker.delivery_hook = Some(hook);
        let hook = lp.hook_init(HookKind::Check)?;
        lp.unref_handle(hook)?;
        lp.hook_start(hook, &OnHook::new(on_check::<D>))?;
        worker.turn_hook = Some(hook);
        lp.read_start(pipe, &OnRead::new(on_channel_read::<D>))?;
        lp.set_listen_hook(Some(Rc::new(WorkerHook)));
        worker.send_frame(lp, &Frame::Online)?;
        // Under `shared` the same timer re-checks the balance, so a change
        // seen only in a later iteration (a connection's close completes
        // after the check hook) is reported while the worker is idle.
        if matches!(policy, SchedPolicy::RoundRobin | SchedPolicy::Shared) && load_ms > 0 {
            let t = lp.timer_init()?;
            lp.unref_handle(t)?;
            let every = Duration::from_millis(load_ms);
            lp.timer_start(t, every, every, &OnTimer::new(on_load_report::<D>))?;
            worker.load_timer = Some(t);
        }
        Ok(worker)
    }
}

impl<D: WorkerData> Worker<D> {
    /// This worker's id (Node's `cluster.worker.id`).
    pub fn id(&self) -> WorkerId {
        self.id
    }

    /// The scheduling policy the primary runs.
    pub fn policy(&self) -> SchedPolicy {
        self.policy
    }

    /// Whether the channel to the primary is open.
    pub fn is_connected(&self) -> bool {
        self.channel.is_some()
    }

    /// Whether this worker is leaving because it was disconnected.
    pub fn exited_after_disconnect(&self) -> bool {
        self.exited_after_disconnect
    }

    /// The real address of a server once it listens (the primary resolves
    /// port 0), if known.
    pub fn server_address(&self, server: TcpListener) -> Option<SocketAddr> {
        self.servers.iter().find(|s| s.stream == server).and_then(|s| s.address)
    }

    /// Binds a UDP socket to `addr` through the primary (Node's `dgram`
    /// `bind` inside a worker; flags: [`UDP_IPV6ONLY`], [`UDP_REUSEADDR`],
    /// [`UDP_REUSEPORT`]). The primary binds one socket per address, flags
    /// and per-worker index, whatever the scheduling policy (Node's
    /// `SharedHandle`), and every worker that asks receives on a copy of it:
    /// the kernel gives each datagram to one of them. Port 0 gives every
    /// worker the same port.
    ///
    /// `on_bound` gets the socket (a [`Udp`] handle: `udp_recv_start`,
    /// `udp_send`, ... as usual) or the bind error (`EADDRINUSE`, `EACCES`,
    /// ...), from the loop. Closing the handle (`Loop::close`) tells the
    /// primary, which closes its copy when the last worker has closed
    /// theirs; a disconnect closes it. `EINVAL` for unknown flags,
    /// `ENOTCONN` when the channel is closed or a disconnect began.
    ///
    /// # Errors
    ///
    /// `EINVAL` for unknown flags (or `UDP_IPV6ONLY` with an IPv4 address); `ENOTCONN` when the
    /// channel is closed or a disconnect began; the error of the channel's write. The bind's own
    /// errors reach `on_bound`.
    pub fn udp_bind(
        &mut self,
        lp: &mut Loop<D>,
        addr: SocketAddr,
        flags: u32,
        on_bound: impl FnOnce(&mut Loop<D>, &mut D, Result<Udp>) + 'static,
    ) -> Result<()> {
        if flags & !(UDP_IPV6ONLY | UDP_REUSEADDR | UDP_REUSEPORT) != 0 || (flags & UDP_IPV6ONLY != 0 && addr.is_ipv4())
        {
            return Err(Error::EINVAL);
        }
        if self.disconnecting {
            return Err(Error::ENOTCONN);
        }
        let mut lflags = ListenFlags::empty();
        for (bit, flag) in [
            (UDP_IPV6ONLY, ListenFlags::IPV6_ONLY),
            (UDP_REUSEADDR, ListenFlags::REUSE_ADDR),
            (UDP_REUSEPORT, ListenFlags::REUSE_PORT),
        ] {
            if flags & bit != 0 {
                lflags = lflags | flag;
            }
        }
        let seq = self.next_seq;
        let index = self.take_index(IndexKey::Udp(addr));
        let key = ListenKey {
            address: socket_addr_to_listen(&addr),
            port: addr.port(),
            socket_type: SocketType::Udp,
            backlog: 0,
            flags: lflags,
            index,
        };
        if let Err(e) = self.send_frame(lp, &Frame::QueryServer { seq, key }) {
            self.release_index(&IndexKey::Udp(addr), index);
            return Err(e);
        }
        self.next_seq = self.next_seq.wrapping_add(1);
        self.dgrams.push(Dgram { seq, requested: addr, index, on_bound: Some(Box::new(on_bound)), bound: None });
        Ok(())
    }

    /// Listens on the socket that fd number `fd` names in the primary's fd
    /// table (Node's `server.listen({fd})` inside a worker: the number is
    /// the primary's, not this process's). The primary listens on a
    /// duplicate of it (its own fd stays open) and routes it like any
    /// listen: connections handed over under `rr`, the socket shared
    /// otherwise. TCP sockets only; errors (`EBADF`: no such fd in the
    /// primary, `ENOTSOCK`, `EINVAL` for a socket that is not TCP) reach
    /// `on_connection`, as for any listen. The server's address
    /// ([`server_address`](Self::server_address), `on_listening`) has the
    /// socket's port and the unspecified IP.
    ///
    /// # Errors
    ///
    /// `ENOTCONN` when the channel is closed or a disconnect began; `ENOSPC` for a full handle
    /// table; the error of the channel's write. The primary's errors (`EBADF`, `ENOTSOCK`,
    /// `EINVAL`) reach `on_connection`.
    pub fn listen_fd(
        &mut self,
        lp: &mut Loop<D>,
        fd: RawFd,
        backlog: i32,
        on_connection: &OnConnection<D, TcpListener>,
    ) -> Result<TcpListener> {
        if fd < 0 {
            return Err(Error::EBADF);
        }
        if self.disconnecting {
            return Err(Error::ENOTCONN);
        }
        let s = lp.tcp_init()?;
        // With the listen hook installed the address is only recorded (the
        // socket is never bound here): `listen` asks the hook, which finds
        // the socket among `fd_listens`.
        let res = lp.tcp_bind(s, SocketAddr::from(([0, 0, 0, 0], 0)), 0).and_then(|()| {
            self.fd_listens.push((s.id(), fd));
            lp.listen(s, backlog, on_connection)
        });
        if res.is_err() {
            self.fd_listens.retain(|&(h, _)| h != s.id());
            let _ = lp.close(s, None);
        }
        res
    }

    /// UDP sockets bound through the primary and still open.
    pub fn udp_sockets(&self) -> impl Iterator<Item = Udp> + '_ {
        self.dgrams.iter().filter_map(|g| g.bound.map(|(u, _)| u))
    }

    /// Runs `cb` when a server starts listening: `(loop, data, server, real
    /// address)` (Node's `listening` event on the server).
    pub fn on_listening(&mut self, cb: impl Fn(&mut Loop<D>, &mut D, TcpListener, SocketAddr) + 'static) {
        self.on_listening = Some(Rc::new(cb));
    }

    /// Runs `cb` for each user message from the primary: `(loop, data,
    /// bytes, fds)`, with the fds that came with it (those not taken are
    /// closed after the call).
    pub fn on_message(&mut self, cb: impl Fn(&mut Loop<D>, &mut D, &[u8], &mut FrameFds) + 'static) {
        self.on_message = Some(Rc::new(cb));
    }

    /// Runs `cb` when the channel to the primary closes, after a disconnect
    /// or because the primary died (then [`on_primary_gone`](Self::on_primary_gone)'s
    /// action follows).
    pub fn on_disconnect(&mut self, cb: impl Fn(&mut Loop<D>, &mut D) + 'static) {
        self.on_disconnect = Some(Rc::new(cb));
    }

    /// Replaces what happens when the channel closes although this worker
    /// was not disconnecting: the primary died, and a worker must not
    /// outlive it. The default stops the loop ([`Loop::stop`]): `run`
    /// returns, and `main` should then return (the process exits). A
    /// replacement must end the process just as surely, for instance by
    /// closing the servers and connections so that the loop runs empty.
    pub fn on_primary_gone(&mut self, cb: impl Fn(&mut Loop<D>, &mut D) + 'static) {
        self.on_primary_gone = Some(Rc::new(cb));
    }

    /// Runs `cb` when this worker starts to drain (a disconnect from the
    /// primary: a graceful shutdown, a step of a rolling restart,
    /// `disconnect_worker`; or [`disconnect`](Self::disconnect) here):
    /// `(loop, data, idle grace)`, from the loop. The servers have stopped
    /// accepting; the process exits once the loop runs empty, so the
    /// application finishes its connections: it answers the next request
    /// on each with `Connection: close` (or its protocol's equivalent) and
    /// closes it, and closes a connection that has had no request in flight
    /// for `idle grace` (`Settings::drain_grace`; a client sending at that
    /// moment is not cut mid-request). Whatever is left at the primary's
    /// drain deadline (`Settings::drain_timeout`) is killed.
    pub fn on_drain(&mut self, cb: impl Fn(&mut Loop<D>, &mut D, Duration) + 'static) {
        self.on_drain = Some(Rc::new(cb));
    }

    /// Whether this worker is draining (a disconnect began).
    pub fn is_draining(&self) -> bool {
        self.disconnecting
    }

    /// The idle grace of a drain (`Settings::drain_grace`, from the primary).
    pub fn drain_grace(&self) -> Duration {
        self.drain_grace
    }

    /// Sends a user message to the primary. `EMSGSIZE`, and nothing sent,
    /// when `bytes` is longer than the cluster's
    /// [`max_message_len`](crate::Settings::max_message_len).
    ///
    /// # Errors
    ///
    /// `ENOTCONN` once the channel is closed (after a disconnect, or when the primary is gone);
    /// `EMSGSIZE` for a message over the limit; the error of the channel's write (`EPIPE`,
    /// `ECONNRESET`). Nothing is sent on error.
    pub fn send(&mut self, lp: &mut Loop<D>, bytes: &[u8]) -> Result<()> {
        self.send_frame(lp, &Frame::Message { bytes, nfds: 0 })
    }

    /// Sends a user message with fds attached (each is duplicated; the
    /// caller keeps its own). At most 16 fds.
    ///
    /// # Errors
    ///
    /// `EINVAL` for more than 16 fds; the errno of duplicating an fd (`EMFILE`, `EBADF`); otherwise
    /// as [`send`](Self::send). Nothing is sent on error; the duplicates are closed.
    pub fn send_with_fds(&mut self, lp: &mut Loop<D>, bytes: &[u8], fds: &[BorrowedFd<'_>]) -> Result<()> {
        let mut batch = dup_batch(fds)?;
        let ch = self.channel.ok_or(Error::ENOTCONN)?;
        let nfds = u8::try_from(fds.len()).map_err(|_| Error::EINVAL)?;
        self.writer.send_fds(lp, ch, &Frame::Message { bytes, nfds }, &mut batch)
    }

    fn store_request(&mut self, lp: &mut Loop<D>, frame: &Frame<'_>, cb: StoreCallback<D>) -> Result<()> {
        self.store_request_or_back(lp, frame, cb).map_err(|(e, _)| e)
    }

    /// Sends a store request (`frame`, numbered `next_req`); on error, gives
    /// the callback back.
    fn store_request_or_back(
        &mut self,
        lp: &mut Loop<D>,
        frame: &Frame<'_>,
        cb: StoreCallback<D>,
    ) -> std::result::Result<(), (Error, StoreCallback<D>)> {
        let req_id = self.next_req;
        if let Err(e) = self.send_frame(lp, frame) {
            return Err((e, cb));
        }
        self.next_req = self.next_req.wrapping_add(1);
        let deadline = match self.store_timeout {
            t if t.is_zero() => u64::MAX,
            t => lp.now().saturating_add(u64::try_from(t.as_millis()).unwrap_or(u64::MAX)),
        };
        self.store_reqs.push(StoreRequest { req_id, deadline, cb });
        if deadline != u64::MAX {
            self.arm_store_timer(lp);
        }
        Ok(())
    }

    /// Starts the store timer for the earliest deadline if it is not running.
    fn arm_store_timer(&mut self, lp: &mut Loop<D>) {
        let Some(first) = self.store_reqs.iter().map(|r| r.deadline).min().filter(|&d| d != u64::MAX) else {
            return;
        };
        let t = match self.store_timer {
            Some(t)
                if lp.is_active(t) && lp.timer_due_in(t).is_ok_and(|d| lp.now() + d.as_millis() as u64 <= first) =>
            {
                return
            }
            Some(t) => t,
            None => {
                let Ok(t) = lp.timer_init() else { return };
                if lp.unref_handle(t).is_err() {
                    let _ = lp.close(t, None);
                    return;
                }
                self.store_timer = Some(t);
                t
            }
        };
        let after = Duration::from_millis(first.saturating_sub(lp.now()));
        let _ = lp.timer_start(t, after, Duration::ZERO, &OnTimer::new(on_store_timeout::<D>));
    }

    /// How long a store request waits for its answer before its callback
    /// gets `ETIMEDOUT` (`Settings::store_timeout`, from the primary;
    /// default 5 s). An answer that comes later is dropped.
    pub fn store_timeout(&self) -> Duration {
        self.store_timeout
    }

    /// Sets the store timeout for the requests made from now on (zero: wait
    /// for ever).
    pub fn set_store_timeout(&mut self, timeout: Duration) {
        self.store_timeout = timeout;
    }

    /// Store requests waiting for their answer.
    pub fn store_pending(&self) -> usize {
        self.store_reqs.len()
    }

    /// Reads `key` from the primary's shared store; `cb` gets `(loop, data,
    /// value)`, from the loop: `Ok(None)` if the key is absent,
    /// `ETIMEDOUT` if no answer came within the store timeout, `ENOTCONN`
    /// if the channel closed first.
    ///
    /// # Errors
    ///
    /// `ENOTCONN` once the channel is closed; `EMSGSIZE` for a key over the message limit; the
    /// error of the channel's write. `cb` is dropped, never called, on error.
    pub fn store_get(
        &mut self,
        lp: &mut Loop<D>,
        key: &[u8],
        cb: impl FnOnce(&mut Loop<D>, &mut D, Result<Option<&[u8]>>) + 'static,
    ) -> Result<()> {
        let frame = Frame::StoreGet { req_id: self.next_req, key };
        self.store_request(lp, &frame, StoreCallback::Get(Box::new(cb)))
    }

    /// Writes `key` = `value` in the primary's shared store; `cb` gets
    /// `(loop, data, result)`, from the loop. `EMSGSIZE`, and nothing sent
    /// (`cb` dropped), when key and value together with 8 bytes are longer
    /// than the cluster's [`max_message_len`](crate::Settings::max_message_len).
    ///
    /// # Errors
    ///
    /// `ENOTCONN` once the channel is closed; `EMSGSIZE` as said; the error of the channel's write.
    /// `cb` is dropped, never called, on error. The primary's refusal reaches `cb` as `Err`, and so
    /// does `ENOTCONN` if the channel closes before the reply.
    pub fn store_set(
        &mut self,
        lp: &mut Loop<D>,
        key: &[u8],
        value: &[u8],
        cb: impl FnOnce(&mut Loop<D>, &mut D, Result<()>) + 'static,
    ) -> Result<()> {
        let frame = Frame::StoreSet { req_id: self.next_req, key, value };
        self.store_request(lp, &frame, StoreCallback::Set(Box::new(cb)))
    }

    /// Removes `key` from the shared store; `cb` gets `(loop, data, whether
    /// it was there)`, from the loop.
    ///
    /// # Errors
    ///
    /// `ENOTCONN` once the channel is closed; `EMSGSIZE` for a key over the message limit; the
    /// error of the channel's write. `cb` is dropped, never called, on error. If the channel closes
    /// before the reply, `cb` gets `false`.
    pub fn store_delete(
        &mut self,
        lp: &mut Loop<D>,
        key: &[u8],
        cb: impl FnOnce(&mut Loop<D>, &mut D, Result<bool>) + 'static,
    ) -> Result<()> {
        let frame = Frame::StoreDelete { req_id: self.next_req, key };
        self.store_request(lp, &frame, StoreCallback::Delete(Box::new(cb)))
    }

    /// Adds `delta` to the decimal integer at `key` (an absent key counts as
    /// 0) atomically: the primary applies each request whole, so increments
    /// from many workers lose nothing. `cb` gets `(loop, data, new value)`;
    /// `EINVAL` if the value is not a decimal `i64` or the sum overflows
    /// (the value is unchanged).
    ///
    /// # Errors
    ///
    /// `ENOTCONN` once the channel is closed; `EMSGSIZE` for a key or value over the message limit;
    /// the error of the channel's write. `cb` is dropped, never called, on error. Later errors
    /// (`ETIMEDOUT` past [`Settings::store_timeout`](crate::Settings::store_timeout), `ENOTCONN` if the
    /// channel closes first) reach `cb`. `EINVAL` in `cb` if the value is not a decimal `i64` or the
    /// sum overflows.
    pub fn store_add(
        &mut self,
        lp: &mut Loop<D>,
        key: &[u8],
        delta: i64,
        cb: impl FnOnce(&mut Loop<D>, &mut D, Result<i64>) + 'static,
    ) -> Result<()> {
        let frame = Frame::StoreAdd { req_id: self.next_req, key, delta };
        self.store_request(lp, &frame, StoreCallback::Add(Box::new(cb)))
    }

    /// Sets `key` = `value` if its value is `expected` (`None`: if the key
    /// is absent), atomically. `cb` gets `(loop, data, outcome)`:
    /// [`CasOutcome::Swapped`], or [`CasOutcome::Mismatch`] with the
    /// current value.
    ///
    /// # Errors
    ///
    /// `ENOTCONN` once the channel is closed; `EMSGSIZE` for a key or value over the message limit;
    /// the error of the channel's write. `cb` is dropped, never called, on error. Later errors
    /// (`ETIMEDOUT` past [`Settings::store_timeout`](crate::Settings::store_timeout), `ENOTCONN` if the
    /// channel closes first) reach `cb`.
    pub fn store_compare_and_swap(
        &mut self,
        lp: &mut Loop<D>,
        key: &[u8],
        expected: Option<&[u8]>,
        value: &[u8],
        cb: impl FnOnce(&mut Loop<D>, &mut D, Result<CasOutcome<'_>>) + 'static,
    ) -> Result<()> {
        let frame = Frame::StoreCas { req_id: self.next_req, key, expected, value };
        self.store_request(lp, &frame, StoreCallback::Cas(Box::new(cb)))
    }

    /// Lists the keys that start with `prefix`, in byte order; `cb` gets
    /// `(loop, data, keys)`. A long list comes in several answers (each
    /// fits the message size limit), fetched one after the other; keys
    /// added or removed meanwhile may or may not be listed. `EMSGSIZE` in
    /// `cb` if a key is too long to be listed at all.
    ///
    /// # Errors
    ///
    /// `ENOTCONN` once the channel is closed; `EMSGSIZE` for a key or value over the message limit;
    /// the error of the channel's write. `cb` is dropped, never called, on error. Later errors
    /// (`ETIMEDOUT` past [`Settings::store_timeout`](crate::Settings::store_timeout), `ENOTCONN` if the
    /// channel closes first) reach `cb`.
    pub fn store_keys(
        &mut self,
        lp: &mut Loop<D>,
        prefix: &[u8],
        cb: impl FnOnce(&mut Loop<D>, &mut D, Result<Vec<Vec<u8>>>) + 'static,
    ) -> Result<()> {
        let frame = Frame::StoreKeys { req_id: self.next_req, prefix, after: &[] };
        let cb = StoreCallback::Keys { prefix: prefix.to_vec(), keys: Vec::new(), cb: Box::new(cb) };
        self.store_request(lp, &frame, cb)
    }

    /// Leaves the cluster gracefully (Node's `worker.disconnect()` in a
    /// worker): servers close (the primary stops routing to them), the
    /// channel closes once the primary has seen everything, and the process
    /// exits when its open connections are done (when the loop runs empty).
    pub fn disconnect(&mut self, lp: &mut Loop<D>) {
        self.begin_disconnect(lp, false);
    }
}

// ---- loop callbacks: each finds the worker through `d.worker()` -----------

/// The channel's read callback.
fn on_channel_read<D: WorkerData>(lp: &mut Loop<D>, d: &mut D, pipe: PipeStream, res: Result<&[u8]>) {
    // The decoder is taken out while it hands out frames (their handling
    // needs `d`), and put back after.
    let Some(mut decoder) = d.worker().filter(|w| w.channel == Some(pipe)).and_then(|w| w.decoder.take()) else {
        return;
    };
    let ok = match res {
        // Acks go out after the connections' callbacks ran, with the
        // others of that loop iteration.
        Ok(bytes) => {
            if d.worker().is_some_and(|w| std::mem::take(&mut w.fds_lost)) {
                decoder.note_fds_lost(bytes.len());
            }
            let mut handler = |lp: &mut Loop<D>, dec: Decoded<'_>| handle_frame(lp, d, pipe, dec);
            feed_chunk(lp, pipe, &mut decoder, bytes, &mut handler).is_ok()
        }
        // A truncated control message: the kernel dropped the fds that came
        // with the bytes that follow (this process is at its fd limit). The
        // primary is fine: the connections of those bytes are refused, and
        // it hands them to another worker.
        Err(e) if e == Error::CONTROL_TRUNCATED => {
            if let Some(w) = d.worker() {
                w.fds_lost = true;
            }
            true
        }
        // EOF, or an error.
        Err(_) => false,
    };
    if ok {
        if let Some(w) = d.worker().filter(|w| w.channel == Some(pipe)) {
            w.decoder = Some(decoder);
        }
    } else {
        decoder.drain_fds();
        channel_closed(lp, d, pipe);
    }
}

/// The prepare hook: after the pending phase delivered the connections
/// injected in the previous iteration, decide and write their acks.
fn on_prepare<D: WorkerData>(lp: &mut Loop<D>, d: &mut D, _h: Hook) {
    let Some(w) = d.worker() else { return };
    if w.handoffs.is_empty() {
        return;
    }
    w.decide_delivered(lp);
    w.flush_acks(lp);
}

/// The check hook: at the end of each loop iteration, write the acks
/// known by then (one write for all of them), then shut the channel down
/// if a disconnect began.
fn on_check<D: WorkerData>(lp: &mut Loop<D>, d: &mut D, _h: Hook) {
    let Some(w) = d.worker() else { return };
    if w.policy == SchedPolicy::Shared {
        w.balance(lp);
    }
    if !w.dgrams.is_empty() {
        w.release_closed_dgrams(lp);
    }
    w.flush_acks(lp);
    deliver_drain(lp, d);
    maybe_shutdown(lp, d);
}

impl<D: 'static> Worker<D> {
    /// From the check hook: a UDP socket bound through the primary that the
    /// user closed (or that a disconnect closed) leaves its key, so the
    /// primary closes its copy after the last worker.
    fn release_closed_dgrams(&mut self, lp: &mut Loop<D>) {
        let mut i = 0;
        while i < self.dgrams.len() {
            match self.dgrams[i].bound {
                Some((u, listener_id)) if !lp.is_live(u) || lp.is_closing(u) => {
                    let g = self.dgrams.swap_remove(i);
                    self.release_index(&IndexKey::Udp(g.requested), g.index);
                    let _ = self.send_frame(lp, &Frame::Close { listener_id });
                }
                _ => i += 1,
            }
        }
    }

    /// `shared`, from the load timer: a paused worker that finds a
    /// connection waiting in the backlog resumes (until its next balance):
    /// the kernel may have woken this process for it just as it paused, and
    /// then no other worker hears of it.
    fn unstick(&mut self, lp: &mut Loop<D>) {
        if !self.share.paused || self.disconnecting {
            return;
        }
        let waiting = self
            .servers
            .iter()
            .filter(|s| !s.closed && s.listener_id.is_some())
            .any(|s| lp.listen_has_pending(s.stream).unwrap_or(false));
        if waiting {
            self.share.paused = false;
            for s in self.servers.iter().filter(|s| !s.closed && s.listener_id.is_some()) {
                if lp.is_live(s.stream) && !lp.is_closing(s.stream) {
                    let _ = lp.listen_pause(s.stream, false);
                }
            }
        }
    }

    /// `shared`: reports this worker's load if it changed, and pauses or
    /// resumes accepting on the shared listeners (see [`Share`]).
    fn balance(&mut self, lp: &mut Loop<D>) {
        let Some(baseline) = self.share.baseline else { return };
        if self.disconnecting {
            return;
        }
        let mut accepted: u64 = 0;
        for s in self.servers.iter().filter(|s| !s.closed && s.listener_id.is_some()) {
            accepted += lp.listen_accepted(s.stream).unwrap_or(0);
        }
        let open = lp.handle_count().saturating_sub(baseline) as u64;
        let load = (open + accepted) as u32;
        // Reports are held back while `next_ms` (one interval after the
        // last report, or after where a burst of `SHARE_REPORT_BURST`
        // began) is more than a burst ahead of now.
        let (now, every) = (lp.now(), self.share.every_ms);
        let early = self.share.next_ms.saturating_sub(now + every * (SHARE_REPORT_BURST - 1));
        let held = early > 0 && self.load_timer.is_some();
        if self.share.reported != Some(load) {
            if held {
                self.load_timer_soon(lp, early);
            } else {
                self.share.reported = Some(load);
                self.share.next_ms = self.share.next_ms.max(now) + every;
                let _ = self.send_frame(lp, &Frame::Load { open_connections: load });
            }
        }
        let Some(limit) = self.share.limit else { return };
        let over = share_over(load, limit, held);
        if over != self.share.paused {
            self.share.paused = over;
            for s in self.servers.iter().filter(|s| !s.closed && s.listener_id.is_some()) {
                if lp.is_live(s.stream) && !lp.is_closing(s.stream) {
                    let _ = lp.listen_pause(s.stream, over);
                }
            }
        }
    }
}

/// `shared`: whether a worker with `load` and the primary's `limit` pauses
/// (see [`Share`]); `held`: its reports are being held back. Wrapping
/// differences: loads only grow apart by a few units.
fn share_over(load: u32, limit: u32, held: bool) -> bool {
    match limit.wrapping_sub(load) as i32 {
        // The least-loaded worker: its limit is the least load plus
        // `LOAD_EXEMPT`. While its reports go out at once it pauses like the
        // others (the primary answers its next report); held back, it never
        // does, so some worker always accepts.
        d if d > (LOAD_EXEMPT / 2) as i32 => {
            !held && load.wrapping_sub(limit.wrapping_sub(LOAD_EXEMPT)) as i32 > SHARE_SLACK as i32
        }
        d => d < -(SHARE_SLACK as i32),
    }
}

/// Runs `on_drain` once a disconnect began (from the loop, never from
/// inside `disconnect`).
fn deliver_drain<D: WorkerData>(lp: &mut Loop<D>, d: &mut D) {
    let Some(w) = d.worker() else { return };
    if !std::mem::take(&mut w.drain_due) {
        return;
    }
    let grace = w.drain_grace;
    if let Some(cb) = w.on_drain.clone() {
        cb(lp, d, grace);
    }
}

/// Reports the worker's load: its open connections.
fn on_load_report<D: WorkerData>(lp: &mut Loop<D>, d: &mut D, _t: Timer) {
    let load = u32::try_from(lp.tcp_connection_count()).unwrap_or(u32::MAX);
    let Some(w) = d.worker() else { return };
    if w.policy == SchedPolicy::Shared {
        w.load_timer_back(lp);
        w.balance(lp);
        w.unstick(lp);
        return;
    }
    if load != w.last_load {
        w.last_load = load;
        let _ = w.send_frame(lp, &Frame::Load { open_connections: load });
    }
}

fn dup_batch(fds: &[BorrowedFd<'_>]) -> Result<FdBatch> {
    if fds.len() > crate::proto::MAX_FDS_PER_FRAME {
        return Err(Error::EINVAL);
    }
    let mut batch = FdBatch::new();
    for fd in fds {
        let dup = fd.try_clone_to_owned().map_err(Error::from)?;
        batch.push(dup).map_err(|_| Error::EINVAL)?;
    }
    Ok(batch)
}

/// Shuts the channel down if a disconnect asked for it and no ack still
/// waits for a closing server's `closed` (that call comes in this
/// iteration's closing phase and retries).
fn maybe_shutdown<D: WorkerData>(lp: &mut Loop<D>, d: &mut D) {
    let Some(w) = d.worker() else { return };
    let Some(primary_initiated) = w.shutdown_due else { return };
    if w.acks_pending_close(lp) {
        return;
    }
    w.shutdown_due = None;
    let Some(ch) = w.channel else { return };
    if !primary_initiated {
        let _ = w.send_frame(lp, &Frame::ExitedAfterDisconnect);
    }
    // The primary sees EOF after everything sent so far, closes its end, and
    // this side's read then ends with EOF (an expected one).
    if lp.shutdown(ch, None).is_err() {
        channel_closed(lp, d, ch);
    }
}

/// The channel ended (EOF, error, or garbage from the primary).
fn channel_closed<D: WorkerData>(lp: &mut Loop<D>, d: &mut D, pipe: PipeStream) {
    let Some(w) = d.worker().filter(|w| w.channel == Some(pipe)) else { return };
    // Connections whose callback has not run yet stay this worker's: the
    // primary hands every unacknowledged one to another worker.
    for h in w.handoffs.iter_mut().filter(|h| h.outcome.is_none()) {
        h.outcome = Some(true);
    }
    w.flush_acks(lp);
    w.channel = None;
    w.decoder = None;
    w.shutdown_due = None;
    let hooks = [w.turn_hook.take(), w.delivery_hook.take()];
    let timer = w.load_timer.take();
    let stores = std::mem::take(&mut w.store_reqs);
    // UDP binds that will never be answered fail now too.
    let binds: Vec<Box<DgramFn<D>>> = w.dgrams.iter_mut().filter_map(|g| g.on_bound.take()).collect();
    w.dgrams.retain(|g| g.bound.is_some());
    let store_timer = w.store_timer.take();
    let expected = w.disconnecting;
    let (on_disconnect, on_gone) = (w.on_disconnect.clone(), w.on_primary_gone.clone());
    let _ = lp.close(pipe, None);
    for h in hooks.into_iter().flatten() {
        let _ = lp.close(h, None);
    }
    for t in [timer, store_timer].into_iter().flatten() {
        let _ = lp.close(t, None);
    }
    // Store requests that will never be answered fail now.
    for req in stores {
        req.cb.fail(lp, d, Error::ENOTCONN);
    }
    for cb in binds {
        cb(lp, d, Err(Error::ENOTCONN));
    }
    if expected {
        // A drain that began in this iteration is still told of.
        deliver_drain(lp, d);
    }
    if let Some(cb) = on_disconnect {
        cb(lp, d);
    }
    if !expected {
        // The primary is gone: no orphans (see `Worker::on_primary_gone`).
        match on_gone {
            Some(cb) => cb(lp, d),
            None => lp.stop(),
        }
    }
}

/// The primary answered the UDP bind `seq`: the socket (`fd`) becomes a
/// [`Udp`] handle, or the error goes to the user.
fn dgram_reply<D: WorkerData>(
    lp: &mut Loop<D>,
    d: &mut D,
    seq: u32,
    errno: i32,
    port: u16,
    listener_id: u32,
    fd: Option<OwnedFd>,
) {
    let Some(w) = d.worker() else { return };
    let Some(i) = w.dgrams.iter().position(|g| g.seq == seq && g.bound.is_none()) else { return };
    let cb = w.dgrams[i].on_bound.take();
    let opened = match (errno, fd) {
        (0, Some(fd)) => lp.udp_open(fd),
        (0, None) => Err(Error::EBADF),
        (errno, _) => Err(Error::from_errno(errno)),
    };
    let res = match opened {
        Ok(u) => {
            w.dgrams[i].bound = Some((u, listener_id));
            let addr = SocketAddr::new(w.dgrams[i].requested.ip(), port);
            let _ = w.send_frame(lp, &Frame::Listening { listener_id, address: socket_addr_to_listen(&addr), port });
            Ok(u)
        }
        Err(e) => {
            let g = w.dgrams.swap_remove(i);
            w.release_index(&IndexKey::Udp(g.requested), g.index);
            if errno == 0 {
                // The primary holds the key for this worker: release it.
                let _ = w.send_frame(lp, &Frame::Close { listener_id });
            }
            Err(e)
        }
    };
    if let Some(cb) = cb {
        cb(lp, d, res);
    }
}

/// The primary answered the pipe listen `seq`: under `rr` the server waits
/// for hand-offs, else it adopts the listening socket (`fd`: `Some` when
/// the reply carries one); an error goes to the server's `on_connection`.
fn pipe_reply<D: WorkerData>(
    lp: &mut Loop<D>,
    w: &mut Worker<D>,
    seq: u32,
    errno: i32,
    listener_id: u32,
    fd: Option<Option<OwnedFd>>,
) {
    let Some(i) = w.pipes.iter().position(|s| s.seq == seq && s.listener_id.is_none()) else { return };
    if w.pipes[i].closed {
        w.remove_pipe(i);
        if errno == 0 {
            let _ = w.send_frame(lp, &Frame::Close { listener_id });
        }
        return;
    }
    if errno != 0 {
        let s = w.remove_pipe(i);
        lp.listen_fail(s.stream, Error::from_errno(errno));
        return;
    }
    w.pipes[i].listener_id = Some(listener_id);
    let server = w.pipes[i].stream;
    let adopted = match fd {
        None => Ok(()),
        Some(Some(fd)) => lp.listen_adopt(server, fd, true),
        Some(None) => Err(Error::EBADF),
    };
    if let Err(e) = adopted {
        w.remove_pipe(i);
        let _ = w.send_frame(lp, &Frame::Close { listener_id });
        lp.listen_fail(server, e);
        return;
    }
    let path = w.pipes[i].path.as_os_str().as_bytes();
    let frame = Frame::Listening { listener_id, address: ListenAddress::Unix(path), port: 0 };
    let _ = w.writer.queue(&frame);
    if let Some(ch) = w.channel {
        let _ = w.writer.flush(lp, ch);
    }
}

/// What to do after a query reply.
enum ReplyAction {
    Nothing,
    Fail(TcpListener, i32),
    Listening(TcpListener, SocketAddr),
    Adopt(TcpListener, SocketAddr, i32, u32),
    /// `reuseport`: bind this worker's own socket to the port the primary
    /// reserved.
    Bind(TcpListener, SocketAddr, u32, i32, u32),
}

fn handle_frame<D: WorkerData>(lp: &mut Loop<D>, d: &mut D, pipe: PipeStream, dec: Decoded<'_>) -> Flow {
    let Decoded { frame, mut fds } = dec;
    let Some(w) = d.worker() else { return Flow::Stop };
    match frame {
        Frame::NewConnection { listener_id, first_conn_seq, count } => {
            let n = usize::from(count).min(crate::proto::MAX_FDS_PER_FRAME);
            let iteration = lp.iterations();
            let server = w.server_for_listener(listener_id).filter(|&s| lp.is_live(s.id()) && !lp.is_closing(s.id()));
            for i in 0..n {
                let seq = first_conn_seq.saturating_add(i as u64);
                let refused = Handoff { seq, server: None, iteration, outcome: Some(false) };
                let (Some(fd), Some(s)) = (fds.take(i), server) else {
                    w.handoffs.push_back(refused);
                    continue;
                };
                // The connection joins the server's accept queue; its
                // `on_connection` runs from the next pending phase, and the
                // ack waits for it (see the module docs).
                match s.inject(lp, fd) {
                    Ok(()) => w.handoffs.push_back(Handoff { seq, server: Some(s.id()), iteration, outcome: None }),
                    Err(_) => w.handoffs.push_back(refused),
                }
            }
            w.settle_handoffs();
        }
        Frame::QueryServerReply { seq, errno, listener_id, listener_fd, .. }
            if w.pipes.iter().any(|s| s.seq == seq && s.listener_id.is_none()) =>
        {
            pipe_reply(lp, w, seq, errno, listener_id, listener_fd.then(|| fds.take(0)));
        }
        Frame::QueryServerReply { seq, errno, port, listener_id, .. }
            if w.dgrams.iter().any(|g| g.seq == seq && g.bound.is_none()) =>
        {
            dgram_reply(lp, d, seq, errno, port, listener_id, fds.take(0));
        }
        Frame::QueryServerReply { seq, errno, port, listener_id, listener_fd } => {
            let action = match w.servers.iter().position(|s| s.seq == seq && s.listener_id.is_none()) {
                None => ReplyAction::Nothing,
                Some(i) if w.servers[i].closed => {
                    w.remove_server(i);
                    if errno == 0 {
                        let _ = w.send_frame(lp, &Frame::Close { listener_id });
                    }
                    ReplyAction::Nothing
                }
                Some(i) if errno != 0 => {
                    let s = w.remove_server(i);
                    ReplyAction::Fail(s.stream, errno)
                }
                Some(i) => {
                    let s = &mut w.servers[i];
                    s.listener_id = Some(listener_id);
                    let addr = SocketAddr::new(s.requested.ip(), port);
                    s.address = Some(addr);
                    if listener_fd {
                        ReplyAction::Adopt(s.stream, addr, s.backlog, listener_id)
                    } else if w.policy == SchedPolicy::ReusePort {
                        ReplyAction::Bind(s.stream, addr, s.flags, s.backlog, listener_id)
                    } else {
                        ReplyAction::Listening(s.stream, addr)
                    }
                }
            };
            let listening = match action {
                ReplyAction::Nothing => None,
                ReplyAction::Fail(s, errno) => {
                    lp.listen_fail(s, Error::from_errno(errno));
                    None
                }
                ReplyAction::Listening(s, addr) => Some((s, addr, listener_id)),
                ReplyAction::Bind(s, addr, flags, backlog, listener_id) => {
                    match lp.listen_bind(s, addr, flags | TCP_REUSEPORT, backlog) {
                        Ok(()) => Some((s, addr, listener_id)),
                        Err(e) => {
                            w.server_failed_locally(lp, s, listener_id, e);
                            None
                        }
                    }
                }
                ReplyAction::Adopt(s, addr, backlog, listener_id) => {
                    let adopted = match fds.take(0) {
                        Some(fd) => uvring::os::listen(fd.as_fd(), backlog).and_then(|()| lp.listen_adopt(s, fd, true)),
                        None => Err(Error::EBADF),
                    };
                    match adopted {
                        Ok(()) => {
                            if w.share.baseline.is_none() {
                                // Joins the balance before the primary hears
                                // that it listens (frames arrive in order).
                                w.share.baseline = Some(lp.handle_count());
                                w.share.reported = Some(0);
                                let _ = w.send_frame(lp, &Frame::Load { open_connections: 0 });
                            }
                            Some((s, addr, listener_id))
                        }
                        Err(e) => {
                            w.server_failed_locally(lp, s, listener_id, e);
                            None
                        }
                    }
                }
            };
            if let Some((s, addr, listener_id)) = listening {
                let frame = Frame::Listening { listener_id, address: socket_addr_to_listen(&addr), port: addr.port() };
                let _ = w.send_frame(lp, &frame);
                if let Some(cb) = w.on_listening.clone() {
                    cb(lp, d, s, addr);
                }
            }
        }
        Frame::Message { bytes, .. } => {
            if let Some(cb) = w.on_message.clone() {
                cb(lp, d, bytes, &mut fds);
            }
        }
        Frame::StoreReply { req_id, status, value } => {
            // An answer that comes after its request timed out finds nothing.
            let req = w.store_reqs.iter().position(|r| r.req_id == req_id).map(|i| w.store_reqs.swap_remove(i));
            if let Some(req) = req {
                store_reply(lp, d, req.cb, status, value);
            }
        }
        Frame::Disconnect => w.begin_disconnect(lp, true),
        // Answered from the loop: a worker whose loop is stuck does not.
        // The answer carries what only this loop sees (see `WorkerReport`).
        Frame::Heartbeat { seq, .. } => {
            let report = loop_report(lp);
            let _ = w.send_frame(lp, &Frame::Heartbeat { seq, report: Some(report) });
        }
        // `shared`: the most this worker may hold (see `Share`).
        Frame::Load { open_connections } => {
            w.share.limit = Some(open_connections);
            w.balance(lp);
        }
        // Frames only a worker sends, arriving here: the primary is broken.
        Frame::Online
        | Frame::QueryServer { .. }
        | Frame::Ack { .. }
        | Frame::Listening { .. }
        | Frame::Close { .. }
        | Frame::ExitedAfterDisconnect
        | Frame::StoreGet { .. }
        | Frame::StoreSet { .. }
        | Frame::StoreDelete { .. }
        | Frame::StoreAdd { .. }
        | Frame::StoreCas { .. }
        | Frame::StoreKeys { .. } => {}
    }
    if d.worker().is_some_and(|w| w.channel == Some(pipe)) {
        Flow::Continue
    } else {
        Flow::Stop
    }
}

/// Runs a store request's callback with its answer (or asks for the next
/// page of a keys listing).
fn store_reply<D: WorkerData>(lp: &mut Loop<D>, d: &mut D, cb: StoreCallback<D>, status: StoreStatus, value: &[u8]) {
    let ok = |r: bool| if r { Ok(()) } else { Err(Error::EINVAL) };
    match cb {
        StoreCallback::Get(f) => match status {
            StoreStatus::Found => f(lp, d, Ok(Some(value))),
            StoreStatus::NotFound => f(lp, d, Ok(None)),
            _ => f(lp, d, Err(Error::EINVAL)),
        },
        StoreCallback::Set(f) => f(lp, d, ok(status == StoreStatus::Ok)),
        StoreCallback::Delete(f) => match status {
            StoreStatus::Found | StoreStatus::NotFound => f(lp, d, Ok(status == StoreStatus::Found)),
            _ => f(lp, d, Err(Error::EINVAL)),
        },
        StoreCallback::Add(f) => match status {
            StoreStatus::Ok => f(lp, d, crate::store::parse_i64(value).ok_or(Error::EINVAL)),
            _ => f(lp, d, Err(Error::EINVAL)),
        },
        StoreCallback::Cas(f) => match status {
            StoreStatus::Ok => f(lp, d, Ok(CasOutcome::Swapped)),
            StoreStatus::Found => f(lp, d, Ok(CasOutcome::Mismatch(Some(value)))),
            StoreStatus::NotFound => f(lp, d, Ok(CasOutcome::Mismatch(None))),
            _ => f(lp, d, Err(Error::EINVAL)),
        },
        StoreCallback::Keys { prefix, mut keys, cb } => {
            let before = keys.len();
            for key in crate::proto::key_entries(value) {
                match key {
                    Ok(k) => keys.push(k.to_vec()),
                    Err(_) => return cb(lp, d, Err(Error::EINVAL)),
                }
            }
            match status {
                StoreStatus::Ok => cb(lp, d, Ok(keys)),
                // A page that lists nothing would ask for the same page again.
                StoreStatus::Partial if keys.len() > before => {
                    let Some(w) = d.worker() else { return };
                    let after = keys.last().cloned().unwrap_or_default();
                    let ask = prefix.clone();
                    let frame = Frame::StoreKeys { req_id: w.next_req, prefix: &ask, after: &after };
                    let again = StoreCallback::Keys { prefix, keys, cb };
                    if let Err((e, again)) = w.store_request_or_back(lp, &frame, again) {
                        again.fail(lp, d, e);
                    }
                }
                StoreStatus::Error => cb(lp, d, Err(Error::EMSGSIZE)),
                _ => cb(lp, d, Err(Error::EINVAL)),
            }
        }
    }
}

/// The store timer fired: the requests past their deadline fail with
/// `ETIMEDOUT`; the timer is set again for the next deadline.
fn on_store_timeout<D: WorkerData>(lp: &mut Loop<D>, d: &mut D, _t: Timer) {
    let now = lp.now();
    loop {
        let Some(w) = d.worker() else { return };
        let Some(i) = w.store_reqs.iter().position(|r| r.deadline <= now) else { break };
        let req = w.store_reqs.swap_remove(i);
        req.cb.fail(lp, d, Error::ETIMEDOUT);
    }
    if let Some(w) = d.worker() {
        if w.channel.is_some() {
            w.arm_store_timer(lp);
        }
    }
}

/// This worker's figures for the primary (sent with each heartbeat answer).
fn loop_report<D>(lp: &Loop<D>) -> crate::proto::WorkerReport {
    let info = lp.metrics_info();
    crate::proto::WorkerReport {
        open_connections: u32::try_from(lp.tcp_connection_count()).unwrap_or(u32::MAX),
        idle_us: u64::try_from(lp.metrics_idle_time().as_micros()).unwrap_or(u64::MAX),
        uptime_us: lp.now().saturating_mul(1000),
        loop_count: info.loop_count,
        events: info.events,
    }
}

#[cfg(test)]
mod share_tests {
    use super::{share_over, LOAD_EXEMPT, SHARE_SLACK};

    #[test]
    fn a_worker_pauses_only_beyond_the_slack() {
        assert!(!share_over(10 + SHARE_SLACK, 10, false));
        assert!(share_over(11 + SHARE_SLACK, 10, false));
        assert!(share_over(11 + SHARE_SLACK, 10, true));
        // Loads and limits wrap around u32.
        assert!(!share_over(u32::MAX, u32::MAX - SHARE_SLACK, false));
        assert!(share_over(SHARE_SLACK, u32::MAX - 1, false));
        assert!(!share_over(5, 10, false));
    }

    #[test]
    fn the_exempt_worker_pauses_only_while_its_reports_flow() {
        let least = 40u32;
        let limit = least.wrapping_add(LOAD_EXEMPT);
        assert!(!share_over(least + SHARE_SLACK, limit, false));
        assert!(share_over(least + SHARE_SLACK + 1, limit, false));
        for load in [least, least + 1_000, least + 1_000_000] {
            assert!(!share_over(load, limit, true), "held back, load {load}");
        }
        // Across the wrap too.
        let least = u32::MAX - 1;
        let limit = least.wrapping_add(LOAD_EXEMPT);
        assert!(!share_over(least.wrapping_add(SHARE_SLACK), limit, false));
        assert!(share_over(least.wrapping_add(SHARE_SLACK + 1), limit, false));
        assert!(!share_over(least.wrapping_add(500), limit, true));
    }
}
