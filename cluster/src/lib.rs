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
//! - [`Primary`] and [`WorkerHandle`]: forking, listen routing, connection
//!   hand-off, events, disconnect, respawn, rolling restart.
//! - [`Worker`]: the worker's channel, the listen hook (so unchanged server
//!   code runs standalone or clustered), messages, store client, disconnect.
//!
//! Every event callback gets the loop and the loop's user data `D` (the
//! value passed to [`Loop::run`](uvring::Loop::run)), as the engine's own
//! callbacks do, so the program's state needs no `Rc<RefCell<..>>`.
//!
//! ```no_run
//! use uvring::{Loop, RunMode};
//! use uvring_cluster::{is_primary, Primary, Settings, Worker, WorkerData};
//!
//! /// The program's state: every callback gets it.
//! #[derive(Default)]
//! struct State {
//!     exits: u32,
//!     worker: Option<Worker<State>>,
//! }
//!
//! impl WorkerData for State {
//!     fn worker(&mut self) -> Option<&mut Worker<State>> {
//!         self.worker.as_mut()
//!     }
//! }
//!
//! let mut lp: Loop<State> = Loop::new().unwrap();
//! let mut state = State::default();
//! if is_primary() {
//!     let primary = Primary::new(&mut lp, Settings::default()).unwrap();
//!     primary.on_exit(|_lp, state, w, code, signal| {
//!         state.exits += 1;
//!         eprintln!("worker {} exited ({code}, {signal})", w.id());
//!     });
//!     primary.start(&mut lp).unwrap();
//! } else {
//!     state.worker = Some(Worker::init(&mut lp).unwrap());
//!     // ... tcp_init + tcp_bind + listen as usual: the primary routes it.
//! }
//! lp.run(RunMode::Default, &mut state).unwrap();
//! ```

mod channel;
pub mod primary;
pub mod proto;
pub mod schedule;
pub mod settings;
pub mod store;
pub mod worker;

pub use primary::{ClusterStats, Primary, WorkerHandle, WorkerStatus};
pub use proto::FrameFds;
pub use schedule::{RespawnDecision, RestartGovernor, RoundRobin, WorkerId};
pub use settings::{available_cpus, ChildOutput, RespawnSettings, SchedPolicy, Settings};
pub use store::SharedStore;
pub use worker::{is_primary, is_worker, worker_id, Worker, WorkerData};
