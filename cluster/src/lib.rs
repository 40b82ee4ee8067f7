//! uvring-cluster: a Node.js-`cluster`-style layer on the uvring event loop.
//!
//! One primary process owns the listening sockets, accepts connections and
//! hands them to worker processes over IPC pipes (or lets the workers
//! accept for themselves, per the scheduling policy). The same program is
//! both: [`is_primary`] tells which it is running as. Here a primary forks
//! one worker (this same program, run again), the worker says hello over
//! its channel, and the primary disconnects it; the worker's loop then runs
//! empty and it exits, and so does the primary's:
//!
//! ```
//! use uvring::{Loop, RunMode};
//! use uvring_cluster::{is_primary, Primary, PrimaryData, Settings, Worker, WorkerData};
//!
//! /// The primary's loop data: the cluster's part and the program's own.
//! struct Supervisor {
//!     primary: Primary<Supervisor>,
//!     greeting: Vec<u8>,
//!     exits: u32,
//! }
//!
//! impl PrimaryData for Supervisor {
//!     fn primary(&mut self) -> &mut Primary<Supervisor> {
//!         &mut self.primary
//!     }
//! }
//!
//! /// A worker's loop data.
//! struct Server {
//!     worker: Option<Worker<Server>>,
//! }
//!
//! impl WorkerData for Server {
//!     fn worker(&mut self) -> Option<&mut Worker<Server>> {
//!         self.worker.as_mut()
//!     }
//! }
//!
//! fn main() -> uvring::Result<()> {
//!     if is_primary() {
//!         let mut lp: Loop<Supervisor> = Loop::new()?;
//!         // `exec` unset: the workers run this same program.
//!         let mut primary = Primary::new(&mut lp, Settings::default().workers(1))?;
//!         primary.on_message(|lp, sup: &mut Supervisor, _w, bytes, _fds| {
//!             sup.greeting = bytes.to_vec();
//!             // The worker's channel closes, its loop runs empty, it exits.
//!             sup.primary.disconnect(lp, |_lp, _sup| {});
//!         });
//!         primary.on_exit(|_lp, sup: &mut Supervisor, _w, code, signal| {
//!             assert_eq!((code, signal), (0, 0));
//!             sup.exits += 1;
//!         });
//!         let mut sup = Supervisor { primary, greeting: Vec::new(), exits: 0 };
//!         sup.primary.start(&mut lp)?;
//!         lp.run(RunMode::Default, &mut sup)?; // returns once nothing is left
//!         assert_eq!(sup.greeting, b"hello from worker 1");
//!         assert_eq!(sup.exits, 1);
//!     } else {
//!         let mut lp: Loop<Server> = Loop::new()?;
//!         let mut worker = Worker::init(&mut lp)?;
//!         let hello = format!("hello from worker {}", worker.id());
//!         worker.send(&mut lp, hello.as_bytes())?;
//!         lp.run(RunMode::Default, &mut Server { worker: Some(worker) })?;
//!     }
//!     Ok(())
//! }
//! ```
//!
//! The layers, bottom up:
//!
//! - [`proto`]: the IPC frame codec. Pure Rust, no OS calls: frames to bytes
//!   and bytes plus received fds back to frames, incrementally, bounded and
//!   allocation-free.
//! - `channel`: an engine IPC pipe plus a decoder and a reused emit buffer.
//! - [`schedule`]: the pure state machines: [`RoundRobin`] (rotation that
//!   passes over workers loaded more than a slack above the least loaded)
//!   and [`RestartGovernor`] (respawn back-off and restart-storm limit).
//! - [`store`]: the primary's shared key/value store.
//! - [`Primary`]: forking, listen routing, connection hand-off, events,
//!   disconnect, respawn, rolling restart; one module per job under
//!   [`primary`].
//! - [`Worker`]: the worker's channel, the listen hook (so unchanged server
//!   code runs standalone or clustered), messages, store client, disconnect.
//!
//! # Roles
//!
//! A primary forks each worker as a new process running
//! [`Settings::exec`] (default: the primary's own program, with its
//! arguments), with two environment variables that make it a worker:
//! `UVRING_WORKER_ID` (its [`WorkerId`]: 1, 2, 3, ... in fork order, never
//! reused) and `UVRING_CHANNEL_FD` (its end of the IPC channel, a Unix
//! socketpair that carries bytes and fds). [`is_primary`], [`is_worker`] and
//! [`worker_id`] read them; [`Worker::init`] takes the channel (once) and
//! removes them, so the worker's own children are not workers. The workers
//! also get the primary's policy, backend, drain grace and message limit
//! through the environment, and [`Settings::env`] plus
//! [`Primary::fork_with_env`]'s variables.
//!
//! # The model: the user's data holds the cluster's part
//!
//! The engine runs a `Loop<D>` over the program's state `D`, and every
//! callback gets `(&mut Loop<D>, &mut D, ..)`. The cluster layer needs
//! state of its own, and it keeps it *inside* `D` (smithay's delegate
//! pattern over calloop): [`Primary<D>`](Primary) and [`Worker<D>`](Worker)
//! are plain structs that the program stores in its `D`, and `D` hands
//! them to the library by implementing [`PrimaryData`] or [`WorkerData`]:
//!
//! - The library's loop callbacks (channel reads, process exits, its timers
//!   and hooks, the listen hook) get `d` from the engine and reach their
//!   state through the trait. A user callback (an `Rc<dyn Fn>`) is cloned
//!   out first and called with `(lp, d, ..)` with no borrow held, so it may
//!   call any `Primary` or `Worker` method through `d`. No shared cell
//!   anywhere.
//! - API calls (`d.primary().fork(lp)`, `kill`, `disconnect`, ...) never run
//!   user code: the events they cause are delivered from the loop.
//! - [`WorkerData::worker`] returns `Option`: `None` when the same server
//!   code runs standalone; then `listen` is an ordinary local listen.
//!   In a worker, the engine asks the cluster's listen hook from its pending
//!   phase, with `d` ([`uvring::ListenHook`]), and the hook asks the primary.
//! - A worker whose primary dies must not outlive it: by default the
//!   library stops the worker's loop, so `Loop::run` returns and `main`
//!   exits. [`Worker::on_primary_gone`] replaces that default; the library
//!   never calls `process::exit`.
//! - Loop data holding several primaries (two clusters on one loop)
//!   implements [`PrimaryData::primary_by_id`] as well.
//!
//! A supervisor that replaces crashed workers a few times, and a server
//! that runs standalone or as a worker (not run here: it forks a worker per
//! CPU and serves until stopped):
//!
//! ```no_run
//! use uvring::{Loop, RunMode};
//! use uvring_cluster::{is_primary, Primary, PrimaryData, Settings, Worker, WorkerData};
//!
//! /// The primary's loop data: the cluster's part and the program's own.
//! struct Supervisor {
//!     primary: Primary<Supervisor>,
//!     crashes: u32,
//! }
//!
//! impl PrimaryData for Supervisor {
//!     fn primary(&mut self) -> &mut Primary<Supervisor> {
//!         &mut self.primary
//!     }
//! }
//!
//! /// A server's loop data: standalone (`worker: None`) or in a worker.
//! #[derive(Default)]
//! struct Server {
//!     worker: Option<Worker<Server>>,
//!     requests: u64,
//! }
//!
//! impl WorkerData for Server {
//!     fn worker(&mut self) -> Option<&mut Worker<Server>> {
//!         self.worker.as_mut()
//!     }
//! }
//!
//! fn main() -> uvring::Result<()> {
//!     if is_primary() {
//!         let mut lp: Loop<Supervisor> = Loop::new()?;
//!         let mut primary = Primary::new(&mut lp, Settings::default())?;
//!         primary.on_exit(|lp, sup: &mut Supervisor, w, code, signal| {
//!             eprintln!("worker {} exited ({code}, {signal})", w.id());
//!             if !w.exited_after_disconnect() && sup.crashes < 3 {
//!                 sup.crashes += 1;
//!                 // Any primary method, from any callback.
//!                 let _ = sup.primary.fork(lp);
//!             }
//!         });
//!         let mut sup = Supervisor { primary, crashes: 0 };
//!         sup.primary.start(&mut lp)?;
//!         lp.run(RunMode::Default, &mut sup)?;
//!     } else {
//!         let mut lp: Loop<Server> = Loop::new()?;
//!         let mut server = Server { worker: Some(Worker::init(&mut lp)?), ..Server::default() };
//!         // ... tcp_init + tcp_bind + listen as usual: the primary routes it.
//!         lp.run(RunMode::Default, &mut server)?;
//!     }
//!     Ok(())
//! }
//! ```
//!
//! # Listen routing
//!
//! Server code does not change to run in a worker: it calls `tcp_init`,
//! `tcp_bind` and `listen` as it would standalone. In a worker,
//! [`Worker::init`] installs a [`uvring::ListenHook`] in the loop:
//! `tcp_bind` only records the address, `listen` returns the listener at
//! once, and the engine asks the hook from its pending phase, which sends
//! the primary a `QueryServer` frame (Node's `queryServer`). The primary
//! keys listeners by address, port, per-worker index and flags, binds each
//! **once**, and answers with the real port (so port 0 gives every worker
//! the same port) or the bind error, which reaches the server's
//! [`uvring::OnConnection`] as `Err` (as Node's `error` event). The worker
//! reports its listen back, and the primary's
//! [`on_listening`](Primary::on_listening) event fires; the worker's own
//! [`Worker::on_listening`] gives the real address.
//!
//! # Policies
//!
//! [`Settings::policy`] (default from `UVRING_CLUSTER_SCHED_POLICY`, else
//! `rr`) chooses how connections reach workers ([`SchedPolicy`]):
//!
//! - **`rr`** (round robin, Node's default): the primary accepts, and once
//!   per loop iteration hands each connection's fd to a worker, in batches
//!   of up to 16 fds per frame. The worker is chosen by a [`RoundRobin`]
//!   among the least loaded (connections handed over and not yet
//!   acknowledged, plus the open connections each worker reports every
//!   [`Settings::load_report`]), within [`Settings::load_slack`]. A
//!   connection stays the primary's until its worker acknowledges it; one
//!   refused, or whose worker's channel closes first, goes to another
//!   worker (up to a few attempts), so none is lost to a dying worker.
//!   The even split costs a hop through the
//!   primary; [`Settings::batch_scheduling`] keeps that hop from
//!   preempting busy workers.
//! - **`shared`**: the primary binds and sends the listening socket; every
//!   worker accepts on it (the kernel spreads connections, unevenly under
//!   load, as with Node's `SCHED_NONE`).
//! - **`reuseport`**: each worker binds its own `SO_REUSEPORT` socket and
//!   the kernel hashes connections across them; the primary is asked only
//!   for port 0, to reserve one port for all.
//!
//! Under every policy the workers run under `SCHED_BATCH`
//! ([`Settings::worker_batch_scheduling`], on by default): a request does
//! not preempt the task running on a worker's CPU, so a busy worker wakes
//! less often and serves more per wake-up.
//!
//! # Lifecycle
//!
//! Events are delivered on the primary's loop, as Node's `cluster` events:
//!
//! - **fork** ([`Primary::on_fork`]): [`Primary::start`] forks
//!   [`Settings::workers`] workers (default: the CPUs available),
//!   [`Primary::fork`] one more.
//! - **online** ([`Primary::on_online`]): the worker's [`Worker::init`]
//!   said it is up.
//! - **listening** ([`Primary::on_listening`]): a worker's server listens.
//! - **disconnect** ([`Primary::on_disconnect`]) and **exit**
//!   ([`Primary::on_exit`], with the exit code and signal; the
//!   [`WorkerInfo`] says whether it
//!   [exited after a disconnect](WorkerInfo::exited_after_disconnect)).
//!
//! A **disconnect** is the graceful stop: [`Primary::disconnect`] (every
//! worker, Node's `cluster.disconnect`), [`Primary::disconnect_worker`]
//! (one) or [`Worker::disconnect`] (from inside). The worker's servers stop
//! accepting and close, the primary routes nothing more to it, and its open
//! connections **drain**: [`Worker::on_drain`] tells the application, with
//! [`Settings::drain_grace`] (default 500 ms), to close idle connections
//! and answer the next request on busy ones with `Connection: close`. The
//! worker exits when its loop runs empty; one that takes longer than
//! [`Settings::drain_timeout`] (default 30 s) is killed. [`Primary::kill`]
//! sends a signal instead.
//!
//! A worker that exits without having been disconnected has **crashed**.
//! With [`RespawnSettings::enabled`] (off by default, as in Node) it is
//! replaced after a back-off that doubles per crash (100 ms up to 5 s by
//! default); more than `storm_limit` crashes within `window` is a restart
//! storm: respawning stops and [`Primary::on_restart_storm`] fires.
//!
//! A **rolling restart** ([`Primary::rolling_restart`]) replaces every
//! worker, one at a time, without dropping service: a replacement is
//! forked, and the old worker is disconnected once the replacement listens
//! (within [`Settings::startup_timeout`], default 10 s, or it is killed and
//! the old one stays).
//!
//! **Heartbeats**: the primary asks every worker for a heartbeat each
//! [`Settings::heartbeat_interval`] (default 1 s); the worker's *loop*
//! answers, so a worker stuck in a callback does not. One silent for
//! [`Settings::heartbeat_timeout`] (default 10 s) is killed, its
//! unacknowledged connections go to other workers at once, and
//! [`Primary::on_unresponsive`] fires. The other way round, a worker whose
//! primary dies stops its loop ([`Worker::on_primary_gone`] replaces that
//! default), so no worker outlives its primary.
//!
//! # Messaging and the store
//!
//! [`Primary::send`] and [`Worker::send`] carry user messages both ways
//! (Node's `worker.send` and `process.send`), delivered in order to
//! [`Primary::on_message`] and [`Worker::on_message`];
//! [`send_with_fds`](Primary::send_with_fds) attaches up to 16 file
//! descriptors (duplicated, so the sender keeps its own). A message longer
//! than [`Settings::max_message_len`] (default 1 MiB, both ends) is refused
//! with `EMSGSIZE` and nothing is sent.
//!
//! The primary holds a [`SharedStore`] of byte keys and values. It reads
//! and writes it directly ([`Primary::store_get`], [`Primary::store_set`],
//! [`Primary::store_delete`]); a worker asks over its channel
//! ([`Worker::store_get`], [`Worker::store_set`], [`Worker::store_delete`])
//! and gets the answer in a callback, from its loop. Requests are answered
//! in order, so a worker always reads its own writes.
//!
//! # Operations
//!
//! The library installs no signal handler: the program decides what
//! signals mean, with the engine's [`Loop::signal_start`](uvring::Loop::signal_start)
//! on the primary's loop. The `hello_cluster` example shows the usual
//! mapping: SIGINT or SIGTERM → [`Primary::disconnect`] (open connections
//! finish, then the primary exits 0), SIGHUP →
//! [`Primary::rolling_restart`]. [`Primary::workers`], [`Primary::stats`]
//! and [`Primary::worker`] report the state of the cluster; a worker that
//! sends bytes the codec refuses gets its channel cut and is killed, and
//! [`Primary::on_channel_error`] says why ([`ChannelFault`]): the primary
//! never panics on a worker's input.
//!
//! **Seeing inside**: [`Primary::worker_stats`] gives each worker's figures
//! ([`WorkerStats`]: uptime, restarts, connections, messages, memory, loop
//! utilisation from the reports its heartbeat answers carry);
//! [`Settings::max_memory`] replaces a worker that grows past a limit
//! ([`Primary::replace_worker`], a rolling restart of one); and
//! [`Primary::admin_listen`] serves `/health`, `/stats` and `/metrics` from
//! the primary's own loop ([`admin`]).
//!
//! **Service managers and upgrades**: [`ListenFds::from_env`] claims
//! listening sockets handed down by systemd's socket activation or by an
//! upgrade, and [`Primary::adopt`] serves them instead of binding;
//! [`SdNotify`] speaks systemd's readiness protocol; [`Primary::upgrade`]
//! starts a new primary (a new binary, say) with the listening sockets,
//! which calls [`Primary::announce_ready`] once its workers listen; the
//! old one then stops accepting, and the program disconnects its workers
//! and exits. Under `rr` and `shared` no connection attempt is refused
//! during the switch.
//!
//! Once warm, handing a connection to a worker allocates nothing, in the
//! primary or in the worker.

#![deny(missing_docs)]
#![deny(clippy::missing_errors_doc)]

/// The crate README's example, compiled as a doc test.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;

pub mod activation;
pub mod admin;
mod channel;
pub mod node;
pub mod notify;
pub mod primary;
pub mod proto;
pub mod schedule;
pub mod settings;
pub mod store;
pub mod worker;

pub use activation::{ListenFds, ListenSource};
pub use node::WorkerProtocol;
pub use notify::SdNotify;
pub use primary::{
    ChannelFault, ClusterStats, Primary, PrimaryData, PrimaryId, ProcessMemory, UpgradeFailure, WorkerInfo,
    WorkerStats, WorkerStatus,
};
pub use proto::FrameFds;
pub use schedule::{RespawnDecision, RestartGovernor, RoundRobin, WorkerId};
pub use settings::{available_cpus, ChildOutput, RespawnSettings, SchedPolicy, Settings, DEFAULT_MAX_MESSAGE_LEN};
pub use store::{SharedStore, StoreError};
pub use worker::{is_primary, is_worker, worker_id, CasOutcome, Worker, WorkerData};
