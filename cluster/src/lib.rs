//! uvring-cluster: a Node.js-`cluster`-style layer on the uvring event loop.
//!
//! One primary process owns the listening sockets, accepts connections and
//! hands them to worker processes over IPC (or lets workers accept for
//! themselves, per the scheduling policy). The layers, bottom up:
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
pub use store::SharedStore;
pub use worker::{is_primary, is_worker, worker_id, Worker, WorkerData};
