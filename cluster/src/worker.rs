//! The worker side: the IPC channel to the primary, the listen hook that
//! routes `listen` to the primary, messages, the shared-store client, and
//! the graceful disconnect.
//!
//! [`Worker::init`] opens the channel named by `UVRING_CHANNEL_FD` and
//! installs a [`ListenHook`], so that ordinary server code (`tcp_bind` +
//! `listen`) works unchanged: under `rr` its listener receives connections
//! the primary accepted (`NewConnection` frames, delivered with
//! [`Loop::listen_inject`]); under `shared` it adopts the primary's
//! listening socket; under `reuseport` it binds its own `SO_REUSEPORT`
//! socket. A bind error in the primary reaches the server's connection
//! callback through [`Loop::listen_fail`], as Node's `error` event.
//!
//! # Acknowledgements
//!
//! An injected connection reaches the server's `on_connection` from the
//! loop's pending phase of the next iteration, not inside `listen_inject`.
//! Its acknowledgement waits for that: after the pending phase (a prepare
//! hook) a connection whose server still listens is acknowledged as
//! accepted. A server closed first (by the user, or by a disconnect, from
//! inside a connection callback for instance) drops the connections still
//! in its accept queue: those are refused, so the primary gives its own
//! copy to another worker, while the ones the user accepted (a stream holds
//! them) are accepted. Acknowledgements go out in connection order, as few
//! `Ack` frames in one write.
//!
//! State lives in one `Rc<RefCell<WorkerState<D>>>` that callbacks reach
//! through a `Weak`. The borrow is never held across a user callback, so
//! user code may call back into the worker from anywhere; no user callback
//! runs inside a `Worker` call.

use crate::channel::{feed_chunk, Flow, FrameWriter};
use crate::proto::{
    Decoded, Frame, FrameDecoder, FrameFds, ListenAddress, ListenFlags, ListenKey, SocketType, StoreStatus,
};
use crate::schedule::WorkerId;
use crate::settings::{SchedPolicy, ENV_CHANNEL_FD, ENV_NORMAL_SCHED, ENV_SCHED_POLICY, ENV_WORKER_ID};
use std::cell::RefCell;
use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::rc::{Rc, Weak};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;
use std::time::Duration;
use uvring::{
    Error, FdBatch, HandleType, Hook, HookKind, ListenHook, Loop, OnHook, OnListenStop, OnRead, OnTimer, PipeStream,
    Result, TcpListener, Timer, TCP_IPV6ONLY, TCP_REUSEPORT,
};

/// `(loop, data, bytes, fds)`: a user message from the primary.
type MessageFn<D> = dyn Fn(&mut Loop<D>, &mut D, &[u8], &mut FrameFds);
/// `(loop, data, server, real address)`: a server is listening.
type ListeningFn<D> = dyn Fn(&mut Loop<D>, &mut D, TcpListener, SocketAddr);
/// `(loop, data)`: the channel to the primary closed.
type DisconnectFn<D> = dyn Fn(&mut Loop<D>, &mut D);

type GetFn<D> = dyn FnOnce(&mut Loop<D>, &mut D, Option<&[u8]>);
type SetFn<D> = dyn FnOnce(&mut Loop<D>, &mut D, Result<()>);
type DeleteFn<D> = dyn FnOnce(&mut Loop<D>, &mut D, bool);

enum StoreCallback<D> {
    Get(Box<GetFn<D>>),
    Set(Box<SetFn<D>>),
    Delete(Box<DeleteFn<D>>),
}

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

/// Which listens share a per-worker index counter (Node's `indexesKey`).
#[derive(Debug)]
struct IndexSet {
    address: SocketAddr,
    next: u32,
    live: Vec<u32>,
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
}

/// A connection the primary handed over, until its acknowledgement is
/// recorded (see the module docs).
#[derive(Debug)]
struct Handoff {
    seq: u64,
    /// The server it was injected into (`None`: refused at once).
    server: Option<TcpListener>,
    /// Its fd number, to recognise the stream the user accepted it as.
    fd: RawFd,
    /// The loop iteration it was injected in: its `on_connection` runs in
    /// the pending phase of a later one.
    iteration: u64,
    /// `Some(accepted)` once known.
    outcome: Option<bool>,
}

struct WorkerState<D> {
    id: WorkerId,
    policy: SchedPolicy,
    channel: Option<PipeStream>,
    /// The channel's decoder; out of the state while a chunk is decoded.
    decoder: Option<FrameDecoder>,
    writer: FrameWriter,
    servers: Vec<Server>,
    indexes: Vec<IndexSet>,
    next_seq: u32,
    next_req: u32,
    store_reqs: Vec<(u32, StoreCallback<D>)>,
    on_message: Option<Rc<MessageFn<D>>>,
    on_listening: Option<Rc<ListeningFn<D>>>,
    on_disconnect: Option<Rc<DisconnectFn<D>>>,
    disconnecting: bool,
    exited_after_disconnect: bool,
    load_timer: Option<Timer>,
    last_load: u32,
    /// Outcomes of local (`reuseport`) listens, reported on the next loop
    /// turn, outside the hook.
    deferred: Vec<Deferred>,
    defer_timer: Option<Timer>,
    on_deferred: Option<OnTimer<D>>,
    /// Connections handed over, in order, whose acknowledgement is not
    /// recorded yet.
    handoffs: VecDeque<Handoff>,
    /// Acknowledgements not yet written: one run of consecutive
    /// connections with the same outcome `(first seq, count, accepted)`.
    /// They go out, as few `Ack` frames in one write, from `delivery_hook`
    /// or `turn_hook`.
    ack_run: Option<(u64, u32, bool)>,
    /// Prepare hook: after the pending phase delivered injected
    /// connections, decide and write their acks.
    delivery_hook: Option<Hook>,
    /// Check hook: writes the iteration's acks, then a due channel shutdown.
    turn_hook: Option<Hook>,
    /// `begin_disconnect` ran: shut the channel down in `turn_hook`, after
    /// the acks (`Some(primary_initiated)`).
    shutdown_due: Option<bool>,
}

impl<D> WorkerState<D> {
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
    fn decide_delivered(&mut self, lp: &mut Loop<D>) {
        let now = lp.iterations();
        let mut gone = false;
        for h in self.handoffs.iter_mut().filter(|h| h.outcome.is_none() && h.iteration < now) {
            match h.server {
                Some(s) if lp.is_live(s) && !lp.is_closing(s) => h.outcome = Some(true),
                _ => gone = true,
            }
        }
        if gone {
            // A server closed without the hook hearing of it (cannot happen
            // for a server that took connections; decided the safe way).
            self.decide_by_holder(lp, |h| h.iteration < now);
        }
    }

    /// Decides the undecided hand-offs that `pick` selects, whose server
    /// is closed (its accept queue dropped): accepted if the user took the
    /// connection (a TCP stream of the loop holds its fd), else refused.
    fn decide_by_holder(&mut self, lp: &mut Loop<D>, pick: impl Fn(&Handoff) -> bool) {
        let handoffs = &mut self.handoffs;
        if !handoffs.iter().any(|h| h.outcome.is_none() && pick(h)) {
            return;
        }
        lp.walk(|lp, id| {
            // Until the drain, the fd was open in the accept queue: no other
            // handle can have its number but the stream accepted from it.
            if lp.handle_type(id) != Ok(HandleType::Tcp) {
                return;
            }
            let Ok(fd) = lp.fileno(id) else { return };
            for h in handoffs.iter_mut().filter(|h| h.outcome.is_none() && h.fd == fd && pick(h)) {
                h.outcome = Some(true);
            }
        });
        for h in handoffs.iter_mut().filter(|h| h.outcome.is_none() && pick(h)) {
            h.outcome = Some(false);
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

    fn send(&mut self, lp: &mut Loop<D>, frame: &Frame<'_>) -> Result<()> {
        let ch = self.channel.ok_or(Error::ENOTCONN)?;
        self.writer.send(lp, ch, frame)
    }

    fn take_index(&mut self, address: SocketAddr) -> u32 {
        if let Some(set) = self.indexes.iter_mut().find(|s| s.address == address) {
            let i = set.next;
            set.next += 1;
            set.live.push(i);
            return i;
        }
        self.indexes.push(IndexSet { address, next: 1, live: vec![0] });
        0
    }

    fn release_index(&mut self, address: SocketAddr, index: u32) {
        if let Some(pos) = self.indexes.iter().position(|s| s.address == address) {
            let set = &mut self.indexes[pos];
            set.live.retain(|&i| i != index);
            if set.live.is_empty() {
                self.indexes.swap_remove(pos);
            }
        }
    }

    fn server_for_listener(&self, listener_id: u32) -> Option<TcpListener> {
        self.servers.iter().find(|s| s.listener_id == Some(listener_id) && !s.closed).map(|s| s.stream)
    }

    /// Removes the server entry at `i` and frees its index.
    fn remove_server(&mut self, i: usize) -> Server {
        let s = self.servers.swap_remove(i);
        self.release_index(s.requested, s.index);
        s
    }

    /// Starts the timer that reports `deferred` on the next loop turn.
    fn defer(&mut self, lp: &mut Loop<D>, item: Deferred) {
        self.deferred.push(item);
        if let (Some(t), Some(cb)) = (self.defer_timer, self.on_deferred.as_ref()) {
            let _ = lp.timer_start(t, Duration::ZERO, Duration::ZERO, cb);
        }
    }
}

/// This process's side of the cluster (Node's `cluster.worker` inside a
/// worker), on a loop whose user data is `D`. Cheap to clone.
pub struct Worker<D> {
    shared: Rc<RefCell<WorkerState<D>>>,
}

impl<D> Clone for Worker<D> {
    fn clone(&self) -> Self {
        Worker { shared: self.shared.clone() }
    }
}

impl<D> std::fmt::Debug for Worker<D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker").field("id", &self.shared.borrow().id).finish()
    }
}

/// The listen hook installed in worker processes.
struct WorkerHook<D>(Weak<RefCell<WorkerState<D>>>);

fn socket_addr_to_listen(addr: &SocketAddr) -> ListenAddress<'static> {
    match addr.ip() {
        IpAddr::V4(ip) => ListenAddress::V4(ip),
        IpAddr::V6(ip) => ListenAddress::V6(ip),
    }
}

/// A socket bound to `addr` with `SO_REUSEPORT`, not yet listening. The hook
/// cannot bind the listener it is given (`tcp_bind` takes a socket that is
/// not listening yet), so a scratch socket is bound and a duplicate of its
/// fd taken; the scratch handle is closed.
fn bind_reuseport<D>(lp: &mut Loop<D>, addr: SocketAddr, flags: u32) -> Result<OwnedFd> {
    let scratch = lp.tcp_init()?;
    let res = lp.tcp_bind(scratch, addr, flags | TCP_REUSEPORT).and_then(|()| lp.fileno(scratch)).and_then(|fd| {
        // SAFETY: `fd` is the socket of `scratch`, which the loop keeps open
        // until `scratch` is closed, below.
        let fd = unsafe { BorrowedFd::borrow_raw(fd) };
        fd.try_clone_to_owned().map_err(Error::from)
    });
    let _ = lp.close(scratch, None);
    res
}

impl<D: 'static> ListenHook<D> for WorkerHook<D> {
    fn listen(
        &mut self,
        lp: &mut Loop<D>,
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
        let state = self.0.upgrade()?;
        let mut st = state.borrow_mut();
        if st.disconnecting {
            return Some(Err(Error::ENOTCONN));
        }
        if st.policy == SchedPolicy::ReusePort {
            let listening = bind_reuseport(lp, addr, flags).and_then(|fd| {
                uvring::os::listen(fd.as_fd(), backlog)?;
                lp.listen_adopt(server, fd, false)
            });
            if let Err(e) = listening {
                // Reported on the next turn through the connection
                // callback, as under the other policies (Node's `error`).
                st.defer(lp, Deferred::Failed(server, e));
                return Some(Ok(()));
            }
            let real = lp.tcp_getsockname(server).unwrap_or(addr);
            let index = st.take_index(addr);
            st.servers.push(Server {
                stream: server,
                seq: 0,
                listener_id: None,
                requested: addr,
                index,
                backlog,
                address: Some(real),
                closed: false,
            });
            // The primary hears of it on the next turn, as the user's
            // `listening` callback does (never from inside `listen`).
            st.defer(lp, Deferred::Listening(server, real));
            return Some(Ok(()));
        }
        let seq = st.next_seq;
        st.next_seq = st.next_seq.wrapping_add(1);
        let index = st.take_index(addr);
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
        if let Err(e) = st.send(lp, &Frame::QueryServer { seq, key }) {
            st.release_index(addr, index);
            return Some(Err(e));
        }
        st.servers.push(Server {
            stream: server,
            seq,
            listener_id: None,
            requested: addr,
            index,
            backlog,
            address: None,
            closed: false,
        });
        Some(Ok(()))
    }

    fn closed(&mut self, lp: &mut Loop<D>, server: TcpListener) {
        let Some(state) = self.0.upgrade() else { return };
        let mut st = state.borrow_mut();
        // Its accept queue is dropped: connections still in it are refused.
        st.decide_by_holder(lp, |h| h.server == Some(server));
        let Some(i) = st.servers.iter().position(|s| s.stream == server && !s.closed) else { return };
        match st.servers[i].listener_id {
            Some(listener_id) => {
                st.remove_server(i);
                let _ = st.send(lp, &Frame::Close { listener_id });
            }
            None if st.policy == SchedPolicy::ReusePort => {
                st.remove_server(i);
            }
            // The reply has not come yet: remember, and close the listener
            // in the primary when it does.
            None => st.servers[i].closed = true,
        }
    }
}

fn deferred_cb<D: 'static>(weak: Weak<RefCell<WorkerState<D>>>) -> OnTimer<D> {
    OnTimer::new(move |lp, d, _t| {
        let Some(state) = weak.upgrade() else { return };
        loop {
            let (item, cb) = {
                let mut st = state.borrow_mut();
                if st.deferred.is_empty() {
                    break;
                }
                let item = st.deferred.remove(0);
                (item, st.on_listening.clone())
            };
            match item {
                Deferred::Listening(s, addr) => {
                    if !lp.is_live(s) || lp.is_closing(s) {
                        continue;
                    }
                    let frame =
                        Frame::Listening { listener_id: 0, address: socket_addr_to_listen(&addr), port: addr.port() };
                    let _ = state.borrow_mut().send(lp, &frame);
                    if let Some(cb) = cb {
                        cb(lp, d, s, addr);
                    }
                }
                Deferred::Failed(s, e) => lp.listen_fail(s, e),
            }
        }
    })
}

enum Deferred {
    Listening(TcpListener, SocketAddr),
    Failed(TcpListener, Error),
}

/// What to do after a query reply, once the state borrow is released.
enum ReplyAction {
    Nothing,
    Fail(TcpListener, i32),
    Listening(TcpListener, SocketAddr),
    Adopt(TcpListener, SocketAddr, i32, u32),
}

impl<D: 'static> Worker<D> {
    /// Opens the channel to the primary and installs the listen hook. Call
    /// once, early, in a worker process (see [`is_worker`]); `EINVAL` in a
    /// primary, `INVALID_STATE` the second time.
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
        let policy = std::env::var(ENV_SCHED_POLICY).ok().and_then(|v| SchedPolicy::parse(&v)).unwrap_or_default();
        let load_ms: u64 =
            std::env::var(crate::primary::ENV_LOAD_REPORT_MS).ok().and_then(|v| v.parse().ok()).unwrap_or(50);
        let pipe = lp.pipe_open(owned, true)?;
        let defer_timer = lp.timer_init()?;
        lp.unref_handle(defer_timer)?;
        let shared = Rc::new(RefCell::new(WorkerState {
            id,
            policy,
            channel: Some(pipe),
            decoder: Some(FrameDecoder::new()),
            writer: FrameWriter::new(),
            servers: Vec::with_capacity(8),
            indexes: Vec::new(),
            next_seq: 1,
            next_req: 1,
            store_reqs: Vec::new(),
            on_message: None,
            on_listening: None,
            on_disconnect: None,
            disconnecting: false,
            exited_after_disconnect: false,
            load_timer: None,
            last_load: 0,
            deferred: Vec::new(),
            defer_timer: Some(defer_timer),
            on_deferred: None,
            handoffs: VecDeque::with_capacity(64),
            ack_run: None,
            delivery_hook: None,
            turn_hook: None,
            shutdown_due: None,
        }));
        let weak = Rc::downgrade(&shared);
        shared.borrow_mut().on_deferred = Some(deferred_cb(weak.clone()));
        let worker = Worker { shared };
        let hook = lp.hook_init(HookKind::Prepare)?;
        lp.unref_handle(hook)?;
        lp.hook_start(hook, &delivered(weak.clone()))?;
        worker.shared.borrow_mut().delivery_hook = Some(hook);
        let hook = lp.hook_init(HookKind::Check)?;
        lp.unref_handle(hook)?;
        lp.hook_start(hook, &turn_end(weak.clone()))?;
        worker.shared.borrow_mut().turn_hook = Some(hook);
        lp.read_start(pipe, &channel_reader(weak.clone()))?;
        lp.set_listen_hook(Some(Box::new(WorkerHook(weak.clone()))));
        worker.shared.borrow_mut().send(lp, &Frame::Online)?;
        if policy == SchedPolicy::RoundRobin && load_ms > 0 {
            let t = lp.timer_init()?;
            lp.unref_handle(t)?;
            let every = Duration::from_millis(load_ms);
            lp.timer_start(t, every, every, &load_reporter(weak))?;
            worker.shared.borrow_mut().load_timer = Some(t);
        }
        Ok(worker)
    }

    /// This worker's id (Node's `cluster.worker.id`).
    pub fn id(&self) -> WorkerId {
        self.shared.borrow().id
    }

    /// The scheduling policy the primary runs.
    pub fn policy(&self) -> SchedPolicy {
        self.shared.borrow().policy
    }

    /// Whether the channel to the primary is open.
    pub fn is_connected(&self) -> bool {
        self.shared.borrow().channel.is_some()
    }

    /// Whether this worker is leaving because it was disconnected.
    pub fn exited_after_disconnect(&self) -> bool {
        self.shared.borrow().exited_after_disconnect
    }

    /// The real address of a server once it listens (the primary resolves
    /// port 0), if known.
    pub fn server_address(&self, server: TcpListener) -> Option<SocketAddr> {
        self.shared.borrow().servers.iter().find(|s| s.stream == server).and_then(|s| s.address)
    }

    /// Runs `cb` when a server starts listening: `(loop, data, server, real
    /// address)` (Node's `listening` event on the server).
    pub fn on_listening(&self, cb: impl Fn(&mut Loop<D>, &mut D, TcpListener, SocketAddr) + 'static) {
        self.shared.borrow_mut().on_listening = Some(Rc::new(cb));
    }

    /// Runs `cb` for each user message from the primary: `(loop, data,
    /// bytes, fds)`, with the fds that came with it (those not taken are
    /// closed after the call).
    pub fn on_message(&self, cb: impl Fn(&mut Loop<D>, &mut D, &[u8], &mut FrameFds) + 'static) {
        self.shared.borrow_mut().on_message = Some(Rc::new(cb));
    }

    /// Runs `cb` when the channel to the primary closes after a disconnect.
    /// (When it closes unexpectedly, because the primary died, `cb` runs
    /// and then the process exits with status 0, as a Node worker does.)
    pub fn on_disconnect(&self, cb: impl Fn(&mut Loop<D>, &mut D) + 'static) {
        self.shared.borrow_mut().on_disconnect = Some(Rc::new(cb));
    }

    /// Sends a user message to the primary.
    pub fn send(&self, lp: &mut Loop<D>, bytes: &[u8]) -> Result<()> {
        self.shared.borrow_mut().send(lp, &Frame::Message { bytes, nfds: 0 })
    }

    /// Sends a user message with fds attached (each is duplicated; the
    /// caller keeps its own). At most 16 fds.
    pub fn send_with_fds(&self, lp: &mut Loop<D>, bytes: &[u8], fds: &[BorrowedFd<'_>]) -> Result<()> {
        let mut batch = dup_batch(fds)?;
        let mut st = self.shared.borrow_mut();
        let ch = st.channel.ok_or(Error::ENOTCONN)?;
        let nfds = u8::try_from(fds.len()).map_err(|_| Error::EINVAL)?;
        st.writer.send_fds(lp, ch, &Frame::Message { bytes, nfds }, &mut batch)
    }

    /// Reads `key` from the primary's shared store; `cb` gets `(loop, data,
    /// value)`.
    pub fn store_get(
        &self,
        lp: &mut Loop<D>,
        key: &[u8],
        cb: impl FnOnce(&mut Loop<D>, &mut D, Option<&[u8]>) + 'static,
    ) -> Result<()> {
        let mut st = self.shared.borrow_mut();
        let req_id = st.next_req;
        st.send(lp, &Frame::StoreGet { req_id, key })?;
        st.next_req = st.next_req.wrapping_add(1);
        st.store_reqs.push((req_id, StoreCallback::Get(Box::new(cb))));
        Ok(())
    }

    /// Writes `key` = `value` in the primary's shared store; `cb` gets
    /// `(loop, data, result)`.
    pub fn store_set(
        &self,
        lp: &mut Loop<D>,
        key: &[u8],
        value: &[u8],
        cb: impl FnOnce(&mut Loop<D>, &mut D, Result<()>) + 'static,
    ) -> Result<()> {
        let mut st = self.shared.borrow_mut();
        let req_id = st.next_req;
        st.send(lp, &Frame::StoreSet { req_id, key, value })?;
        st.next_req = st.next_req.wrapping_add(1);
        st.store_reqs.push((req_id, StoreCallback::Set(Box::new(cb))));
        Ok(())
    }

    /// Removes `key` from the shared store; `cb` gets `(loop, data, whether
    /// it was there)`.
    pub fn store_delete(
        &self,
        lp: &mut Loop<D>,
        key: &[u8],
        cb: impl FnOnce(&mut Loop<D>, &mut D, bool) + 'static,
    ) -> Result<()> {
        let mut st = self.shared.borrow_mut();
        let req_id = st.next_req;
        st.send(lp, &Frame::StoreDelete { req_id, key })?;
        st.next_req = st.next_req.wrapping_add(1);
        st.store_reqs.push((req_id, StoreCallback::Delete(Box::new(cb))));
        Ok(())
    }

    /// Leaves the cluster gracefully (Node's `worker.disconnect()` in a
    /// worker): servers close (the primary stops routing to them), the
    /// channel closes once the primary has seen everything, and the process
    /// exits when its open connections are done (when the loop runs empty).
    pub fn disconnect(&self, lp: &mut Loop<D>) {
        begin_disconnect(&self.shared, lp, false);
    }
}

/// The channel's read callback.
fn channel_reader<D: 'static>(weak: Weak<RefCell<WorkerState<D>>>) -> OnRead<D, PipeStream> {
    OnRead::new(move |lp, d, pipe, res| {
        let Some(state) = weak.upgrade() else { return };
        // The decoder is taken out of the state while it hands out frames
        // (their handling borrows the state), and put back after.
        let decoder = {
            let mut st = state.borrow_mut();
            if st.channel == Some(pipe) {
                st.decoder.take()
            } else {
                None
            }
        };
        let Some(mut decoder) = decoder else { return };
        let ok = match res {
            // Acks go out after the connections' callbacks ran, with the
            // others of that loop iteration.
            Ok(bytes) => {
                let mut handler = |lp: &mut Loop<D>, dec: Decoded<'_>| handle_frame(&state, lp, d, pipe, dec);
                feed_chunk(lp, pipe, &mut decoder, bytes, &mut handler).is_ok()
            }
            // EOF, a truncated control message (fds lost), or an error.
            Err(_) => false,
        };
        if ok {
            let mut st = state.borrow_mut();
            if st.channel == Some(pipe) {
                st.decoder = Some(decoder);
            }
        } else {
            decoder.drain_fds();
            channel_closed(&state, lp, d, pipe);
        }
    })
}

/// The prepare hook: after the pending phase delivered the connections
/// injected in the previous iteration, decide and write their acks.
fn delivered<D: 'static>(weak: Weak<RefCell<WorkerState<D>>>) -> OnHook<D> {
    OnHook::new(move |lp, _d, _h| {
        let Some(state) = weak.upgrade() else { return };
        let mut st = state.borrow_mut();
        if st.handoffs.is_empty() {
            return;
        }
        st.decide_delivered(lp);
        st.flush_acks(lp);
    })
}

/// The check hook: at the end of each loop iteration, write the acks
/// known by then (one write for all of them), then shut the channel down
/// if a disconnect began.
fn turn_end<D: 'static>(weak: Weak<RefCell<WorkerState<D>>>) -> OnHook<D> {
    OnHook::new(move |lp, d, _h| {
        let Some(state) = weak.upgrade() else { return };
        let due = {
            let mut st = state.borrow_mut();
            st.flush_acks(lp);
            st.shutdown_due.take()
        };
        if let Some(primary_initiated) = due {
            shutdown_channel(&state, lp, d, primary_initiated);
        }
    })
}

fn load_reporter<D: 'static>(weak: Weak<RefCell<WorkerState<D>>>) -> OnTimer<D> {
    OnTimer::new(move |lp, _d, _t| {
        let Some(state) = weak.upgrade() else { return };
        let load = lp.handle_count() as u32;
        let mut st = state.borrow_mut();
        if load != st.last_load {
            st.last_load = load;
            let _ = st.send(lp, &Frame::Load { open_connections: load });
        }
    })
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

fn begin_disconnect<D: 'static>(state: &Rc<RefCell<WorkerState<D>>>, lp: &mut Loop<D>, primary_initiated: bool) {
    let (servers, timer, channel) = {
        let mut st = state.borrow_mut();
        if st.disconnecting {
            return;
        }
        st.disconnecting = true;
        st.exited_after_disconnect = true;
        let servers: Vec<TcpListener> = st.servers.iter().filter(|s| !s.closed).map(|s| s.stream).collect();
        (servers, st.load_timer.take(), st.channel)
    };
    if let Some(t) = timer {
        let _ = lp.close(t, None);
    }
    // A server that accepts by itself (a shared or reuseport listener) stops
    // gracefully and closes once its accept op has ended: connections the
    // kernel already accepted for it (io_uring's multishot accept does so on
    // its own) are still served, not reset. An `rr` server accepts nothing
    // itself: it closes now, so the primary stops routing to it at once (a
    // hand-off already on its way, or one not yet taken from its accept
    // queue, is refused and goes to another worker).
    let on_stopped = OnListenStop::new(|lp, _d, s: TcpListener, _| {
        if lp.is_live(s) && !lp.is_closing(s) {
            let _ = lp.close(s, None);
        }
    });
    for s in servers {
        if !lp.is_live(s) || lp.is_closing(s) {
            continue;
        }
        let local = lp.fileno(s).is_ok_and(|fd| fd >= 0);
        if !(local && lp.listen_stop(s, Some(&on_stopped)).is_ok()) {
            let _ = lp.close(s, None);
        }
    }
    if channel.is_some() {
        // The channel is shut down at the end of this loop iteration, after
        // the acks of the connections received in it (a user callback may
        // call `disconnect` while connections of the same frame are still
        // being delivered; their acks must reach the primary, or it would
        // hand them to another worker).
        state.borrow_mut().shutdown_due = Some(primary_initiated);
    }
}

fn shutdown_channel<D: 'static>(
    state: &Rc<RefCell<WorkerState<D>>>,
    lp: &mut Loop<D>,
    d: &mut D,
    primary_initiated: bool,
) {
    let Some(ch) = state.borrow().channel else { return };
    if !primary_initiated {
        let _ = state.borrow_mut().send(lp, &Frame::ExitedAfterDisconnect);
    }
    // The primary sees EOF after everything sent so far, closes its end, and
    // this side's read then ends with EOF (an expected one).
    if lp.shutdown(ch, None).is_err() {
        channel_closed(state, lp, d, ch);
    }
}

/// The channel ended (EOF, error, or garbage from the primary).
fn channel_closed<D: 'static>(state: &Rc<RefCell<WorkerState<D>>>, lp: &mut Loop<D>, d: &mut D, pipe: PipeStream) {
    let (expected, cb, hooks, timers, stores) = {
        let mut st = state.borrow_mut();
        if st.channel != Some(pipe) {
            return;
        }
        // Connections whose callback has not run yet stay this worker's:
        // the primary hands every unacknowledged one to another worker.
        for h in st.handoffs.iter_mut().filter(|h| h.outcome.is_none()) {
            h.outcome = Some(true);
        }
        st.flush_acks(lp);
        st.channel = None;
        st.decoder = None;
        st.shutdown_due = None;
        let hooks = [st.turn_hook.take(), st.delivery_hook.take()];
        let timers = [st.load_timer.take(), st.defer_timer.take()];
        let stores = std::mem::take(&mut st.store_reqs);
        (st.disconnecting, st.on_disconnect.clone(), hooks, timers, stores)
    };
    let _ = lp.close(pipe, None);
    for h in hooks.into_iter().flatten() {
        let _ = lp.close(h, None);
    }
    for t in timers.into_iter().flatten() {
        let _ = lp.close(t, None);
    }
    // Store requests that will never be answered fail now.
    for (_, cb) in stores {
        match cb {
            StoreCallback::Get(f) => f(lp, d, None),
            StoreCallback::Set(f) => f(lp, d, Err(Error::ENOTCONN)),
            StoreCallback::Delete(f) => f(lp, d, false),
        }
    }
    if let Some(cb) = cb {
        cb(lp, d);
    }
    if !expected {
        // The primary is gone: no orphans.
        std::process::exit(0);
    }
}

fn handle_frame<D: 'static>(
    state: &Rc<RefCell<WorkerState<D>>>,
    lp: &mut Loop<D>,
    d: &mut D,
    pipe: PipeStream,
    dec: Decoded<'_>,
) -> Flow {
    let Decoded { frame, mut fds } = dec;
    match frame {
        Frame::NewConnection { listener_id, first_conn_seq, count } => {
            let n = usize::from(count).min(crate::proto::MAX_FDS_PER_FRAME);
            let iteration = lp.iterations();
            let mut st = state.borrow_mut();
            let server = st.server_for_listener(listener_id).filter(|&s| lp.is_live(s) && !lp.is_closing(s));
            for i in 0..n {
                let seq = first_conn_seq.saturating_add(i as u64);
                let refused = Handoff { seq, server: None, fd: -1, iteration, outcome: Some(false) };
                let (Some(fd), Some(s)) = (fds.take(i), server) else {
                    st.handoffs.push_back(refused);
                    continue;
                };
                let raw = fd.as_raw_fd();
                // The connection joins the server's accept queue; its
                // `on_connection` runs from the next pending phase, and the
                // ack waits for it (see the module docs).
                match lp.listen_inject(s, fd) {
                    Ok(()) => {
                        st.handoffs.push_back(Handoff { seq, server: Some(s), fd: raw, iteration, outcome: None })
                    }
                    Err(_) => st.handoffs.push_back(refused),
                }
            }
            st.settle_handoffs();
        }
        Frame::QueryServerReply { seq, errno, port, listener_id, listener_fd } => {
            let action = {
                let mut st = state.borrow_mut();
                match st.servers.iter().position(|s| s.seq == seq && s.listener_id.is_none()) {
                    None => ReplyAction::Nothing,
                    Some(i) if st.servers[i].closed => {
                        st.remove_server(i);
                        if errno == 0 {
                            let _ = st.send(lp, &Frame::Close { listener_id });
                        }
                        ReplyAction::Nothing
                    }
                    Some(i) if errno != 0 => {
                        let s = st.remove_server(i);
                        ReplyAction::Fail(s.stream, errno)
                    }
                    Some(i) => {
                        let s = &mut st.servers[i];
                        s.listener_id = Some(listener_id);
                        let addr = SocketAddr::new(s.requested.ip(), port);
                        s.address = Some(addr);
                        if listener_fd {
                            ReplyAction::Adopt(s.stream, addr, s.backlog, listener_id)
                        } else {
                            ReplyAction::Listening(s.stream, addr)
                        }
                    }
                }
            };
            let listening = match action {
                ReplyAction::Nothing => None,
                ReplyAction::Fail(s, errno) => {
                    lp.listen_fail(s, Error::from_errno(errno));
                    None
                }
                ReplyAction::Listening(s, addr) => Some((s, addr)),
                ReplyAction::Adopt(s, addr, backlog, listener_id) => {
                    let adopted = match fds.take(0) {
                        Some(fd) => uvring::os::listen(fd.as_fd(), backlog).and_then(|()| lp.listen_adopt(s, fd, true)),
                        None => Err(Error::EBADF),
                    };
                    match adopted {
                        Ok(()) => Some((s, addr)),
                        Err(e) => {
                            {
                                let mut st = state.borrow_mut();
                                if let Some(i) = st.servers.iter().position(|x| x.stream == s) {
                                    st.remove_server(i);
                                }
                                let _ = st.send(lp, &Frame::Close { listener_id });
                            }
                            lp.listen_fail(s, e);
                            None
                        }
                    }
                }
            };
            if let Some((s, addr)) = listening {
                let cb = {
                    let mut st = state.borrow_mut();
                    let listener_id = st.servers.iter().find(|x| x.stream == s).and_then(|x| x.listener_id);
                    if let Some(listener_id) = listener_id {
                        let _ = st.send(
                            lp,
                            &Frame::Listening { listener_id, address: socket_addr_to_listen(&addr), port: addr.port() },
                        );
                    }
                    st.on_listening.clone()
                };
                if let Some(cb) = cb {
                    cb(lp, d, s, addr);
                }
            }
        }
        Frame::Message { bytes, .. } => {
            let cb = state.borrow().on_message.clone();
            if let Some(cb) = cb {
                cb(lp, d, bytes, &mut fds);
            }
        }
        Frame::StoreReply { req_id, status, value } => {
            let cb = {
                let mut st = state.borrow_mut();
                st.store_reqs.iter().position(|(id, _)| *id == req_id).map(|i| st.store_reqs.swap_remove(i).1)
            };
            match cb {
                Some(StoreCallback::Get(f)) => f(lp, d, (status == StoreStatus::Found).then_some(value)),
                Some(StoreCallback::Set(f)) => {
                    f(lp, d, if status == StoreStatus::Ok { Ok(()) } else { Err(Error::EINVAL) })
                }
                Some(StoreCallback::Delete(f)) => f(lp, d, status == StoreStatus::Found),
                None => {}
            }
        }
        Frame::Disconnect => {
            begin_disconnect(state, lp, true);
        }
        // Frames only a worker sends, arriving here: the primary is broken.
        Frame::Online
        | Frame::QueryServer { .. }
        | Frame::Ack { .. }
        | Frame::Listening { .. }
        | Frame::Close { .. }
        | Frame::ExitedAfterDisconnect
        | Frame::Load { .. }
        | Frame::StoreGet { .. }
        | Frame::StoreSet { .. }
        | Frame::StoreDelete { .. } => {}
    }
    if state.borrow().channel == Some(pipe) {
        Flow::Continue
    } else {
        Flow::Stop
    }
}
