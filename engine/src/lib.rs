//! uvring: a libuv-style event loop for Linux, with an epoll and an
//! io_uring backend behind one API.
//!
//! A TCP echo round trip on loopback: a listener echoes what it reads, and
//! a timer starts a client that sends `hello` and waits for it to come back.
//! Everything runs on one thread, in one [`Loop`], over one state value.
//!
//! ```
//! use std::net::SocketAddr;
//! use std::time::Duration;
//! use uvring::{Loop, OnConnect, OnConnection, OnRead, OnTimer, RunMode, TcpListener, TcpStream};
//!
//! /// The program's state: handed to `run`, lent to every callback.
//! #[derive(Default)]
//! struct State {
//!     server: Option<SocketAddr>,
//!     listener: Option<TcpListener>,
//!     reply: Vec<u8>,
//! }
//!
//! fn main() -> uvring::Result<()> {
//!     let mut lp: Loop<State> = Loop::new()?; // backend from UVRING_BACKEND, default auto
//!
//!     // The server: echo every chunk, close at end of stream.
//!     let echo = OnRead::new(|lp: &mut Loop<State>, _st: &mut State, s: TcpStream, data| match data {
//!         Ok(bytes) => lp.write(s, bytes, None).unwrap_or(()),
//!         Err(_eof_or_error) => lp.close(s, None).unwrap_or(()),
//!     });
//!     let on_connection = OnConnection::new(move |lp: &mut Loop<State>, _st: &mut State, l: TcpListener, status| {
//!         if status.is_ok() {
//!             while let Ok(s) = lp.accept(l) {
//!                 lp.read_start(s, &echo).unwrap_or(());
//!             }
//!         }
//!     });
//!     let sock = lp.tcp_init()?;
//!     lp.tcp_bind(sock, "127.0.0.1:0".parse().unwrap(), 0)?;
//!     let listener = lp.listen(sock, 128, &on_connection)?;
//!     let mut state =
//!         State { server: Some(lp.tcp_getsockname(listener)?), listener: Some(listener), reply: Vec::new() };
//!
//!     // The client: collect the echo; when it is all back, close the
//!     // client and the listener, and `run` returns (nothing is left alive).
//!     let on_reply = OnRead::new(|lp: &mut Loop<State>, st: &mut State, s: TcpStream, data| {
//!         if let Ok(bytes) = data {
//!             st.reply.extend_from_slice(bytes);
//!         }
//!         if st.reply.len() >= 5 || data.is_err() {
//!             lp.close(s, None).unwrap_or(());
//!             if let Some(l) = st.listener.take() {
//!                 lp.close(l, None).unwrap_or(());
//!             }
//!         }
//!     });
//!     let on_connect = OnConnect::new(|_lp: &mut Loop<State>, _st: &mut State, _s: TcpStream, status| {
//!         assert!(status.is_ok(), "connect failed: {status:?}");
//!     });
//!     let start_client = OnTimer::new(move |lp: &mut Loop<State>, st: &mut State, t| {
//!         lp.close(t, None).unwrap_or(());
//!         let sock = lp.tcp_init().unwrap();
//!         let s = lp.tcp_connect(sock, st.server.unwrap(), &on_connect).unwrap();
//!         // Both wait for the connect; the bytes are copied at once.
//!         lp.write(s, b"hello", None).unwrap();
//!         lp.read_start(s, &on_reply).unwrap();
//!     });
//!     let t = lp.timer_init()?;
//!     lp.timer_start(t, Duration::from_millis(1), Duration::ZERO, &start_client)?;
//!
//!     lp.run(RunMode::Default, &mut state)?;
//!     assert_eq!(state.reply, b"hello");
//!     Ok(())
//! }
//! ```
//!
//! # The loop
//!
//! A [`Loop<D>`](Loop) is libuv's `uv_loop_t`: one thread's set of handles
//! and the phases that serve them. [`Loop::run`] repeats an iteration:
//!
//! 1. **update time**: [`Loop::now`] is cached once per iteration
//!    (milliseconds);
//! 2. **timers** whose time has come ([`Loop::timer_start`]);
//! 3. **pending**: work that API calls queued for the loop (see below);
//! 4. **idle** and **prepare** hooks ([`Loop::hook_init`], [`HookKind`]);
//! 5. **poll**: wait for I/O and dispatch its completions (reads, accepts,
//!    writes done, connects, datagrams, process exits, signals, async
//!    wake-ups, work-pool and file completions), at most
//!    [`LoopOptions::completions_per_poll`] per wait;
//! 6. **check** hooks;
//! 7. **closing**: close callbacks of handles whose close has finished.
//!
//! The poll phase blocks until the next timer is due unless something is
//! already to do (pending work, an idle hook, a handle that can finish
//! closing, a [`stop`](Loop::stop)).
//!
//! [`RunMode::Default`] iterates while the loop is **alive**;
//! [`RunMode::Once`] runs one iteration, blocking for I/O if there is
//! nothing else to do; [`RunMode::NoWait`] one iteration without blocking.
//! The loop is alive ([`Loop::alive`]) while any of these remain: an
//! *active* handle that is *ref'd* (a listener, a reading stream, a started
//! timer, a running child, ...; [`Loop::unref_handle`] makes a handle stop
//! counting), a request in flight (a write, connect, shutdown, UDP send,
//! work item, file operation or name lookup), or a handle whose close has
//! not finished. `run` returns whether the loop is still alive; a
//! [`stop`](Loop::stop) makes it return after the current iteration.
//!
//! # Callbacks and the user's data
//!
//! The loop runs over the program's state `D`: [`run`](Loop::run) takes
//! `&mut D`, and every callback receives `(&mut Loop<D>, &mut D, handle,
//! ...)`. A callback may call any loop method (open, write, close any
//! handle, even its own) and change the state; per-connection state lives
//! in `D` (a slab keyed by the handle id or by the handle's
//! [`data`](Loop::set_data) word), so no callback needs `Rc<RefCell<..>>`
//! (calloop's model).
//!
//! A callback is built **once**, with `new` on its type ([`OnRead::new`],
//! [`OnConnection::new`], [`OnTimer::new`], ...) from a closure or a plain
//! `fn`, and shared by reference: hand `&cb` to every handle that uses it.
//! Each handle keeps a reference-count increment, not a new allocation. The
//! types name their verb and their handle: [`OnRead<D, S>`](OnRead) for a
//! stream `S` gets `Result<&[u8]>` (the bytes lent for the call, or
//! [`Error::EOF`], or an error); [`OnWrite`], [`OnConnect`], [`OnShutdown`],
//! [`OnConnection`] and [`OnSend`] get a `Result<()>` status; [`OnRecv`] a
//! [`Datagram`]; [`OnExit`] the exit code and signal; [`OnClose`],
//! [`OnTimer`], [`OnAsync`], [`OnHook`] only the handle.
//!
//! **API calls never run user code.** Only the loop's phases hold the
//! user's `&mut D`, so a method cannot call a callback: whatever it causes
//! (a queued write whose send fails inside the call, a stream closed with
//! writes queued, a cancelled work item, stashed data after `read_start`)
//! is put on the loop's *pending queue* and delivered from the next pending
//! phase. So a callback is never re-entered, and none is ever skipped.
//!
//! # Handles and operations
//!
//! A **handle** is a long-lived object (a socket, a timer, a child
//! process) named by a typed id: `Copy`, a slot index plus a generation, so
//! an id of a closed handle never names the handle that reuses its slot
//! (it gets [`Error::STALE_HANDLE`]). A socket changes id type as it
//! changes state, so misuse does not compile:
//!
//! | id | made by | what it can do |
//! |---|---|---|
//! | [`TcpSocket`] | [`tcp_init`](Loop::tcp_init), [`tcp_open`](Loop::tcp_open) | [`tcp_bind`](Loop::tcp_bind), then [`listen`](Loop::listen) (a [`TcpListener`]) or [`tcp_connect`](Loop::tcp_connect) (a [`TcpStream`]) |
//! | [`TcpListener`] | `listen` | [`accept`](Loop::accept) (gives [`TcpStream`]s), [`listen_stop`](Loop::listen_stop) |
//! | [`TcpStream`] | `accept`, `tcp_connect`, [`tcp_open_stream`](Loop::tcp_open_stream) | [`read_start`](Loop::read_start), [`write`](Loop::write), [`shutdown`](Loop::shutdown) |
//! | [`PipeSocket`] | [`pipe_init`](Loop::pipe_init) | [`pipe_bind`](Loop::pipe_bind) + `listen` (a [`PipeListener`]), [`pipe_connect`](Loop::pipe_connect) (a [`PipeStream`]), spawn stdio |
//! | [`PipeListener`] | `listen` | `accept` (gives [`PipeStream`]s) |
//! | [`PipeStream`] | `accept`, `pipe_connect`, [`pipe_open`](Loop::pipe_open), [`pipe_pair`](Loop::pipe_pair) | read, write, shutdown; an IPC pipe also sends and receives fds ([`write_fds`](Loop::write_fds), [`accept_pending`](Loop::accept_pending)) |
//! | [`Udp`] | [`udp_init`](Loop::udp_init), [`udp_open`](Loop::udp_open) | [`udp_bind`](Loop::udp_bind), [`udp_send`](Loop::udp_send), [`udp_recv_start`](Loop::udp_recv_start), multicast |
//! | [`Timer`] | [`timer_init`](Loop::timer_init) | [`timer_start`](Loop::timer_start), [`timer_stop`](Loop::timer_stop) |
//! | [`Async`] | [`async_init`](Loop::async_init) | woken from any thread by its [`AsyncSender`] |
//! | [`Signal`] | [`signal_start`](Loop::signal_start) | `signal_stop`, `signal_restart` |
//! | [`Hook`] | [`hook_init`](Loop::hook_init) | `hook_start`, `hook_stop` (idle, prepare, check) |
//! | [`Process`] | [`spawn`](Loop::spawn) | [`process_kill`](Loop::process_kill); its [`OnExit`] runs once |
//! | [`Poll`] | [`poll_init`](Loop::poll_init) | `poll_start` on a foreign fd's readiness |
//! | [`FsEvent`] | [`fs_event_init`](Loop::fs_event_init) | [`fs_event_start`](Loop::fs_event_start): watch a file or directory |
//!
//! Stream operations take any [`StreamHandle`], `accept` any
//! [`ListenerHandle`], `listen` any [`SocketHandle`]; what every handle has
//! ([`close`](Loop::close), [`ref_handle`](Loop::ref_handle),
//! [`set_data`](Loop::set_data), [`is_active`](Loop::is_active)) takes
//! `impl Into<HandleId>`.
//!
//! An **operation** (libuv's request) is one thing asked of a handle, with
//! its own completion: a write ([`OnWrite`]), a connect, a shutdown, a UDP
//! send. Writes and sends queue: a handle may have any number in flight,
//! and their callbacks run in the order they were made (one connect and
//! one shutdown at a time). Work items and file operations are
//! requests of the loop itself, with an id to cancel them ([`Work`],
//! [`FsRequest`]) and a closure that gets the result.
//!
//! Two kinds of failure, kept apart: an **immediate** `Err` from the method
//! means nothing was started and no callback will run (each method's
//! `# Errors` says which values); a failure found **later** (a reset peer,
//! a refused connect, a file that does not exist) reaches the operation's
//! callback as `Err`, never the method.
//!
//! **Close** ([`Loop::close`]) is two-phase, as in libuv. It stops the
//! handle at once: no callback of it runs any more except those of its
//! operations still queued, which complete with `ECANCELED`, and its close
//! callback. The slot lives on, flagged closing, until the kernel has
//! given back every operation and every buffer lent to it; then the
//! closing phase frees the slot and runs the [`OnClose`]. From the `close`
//! call on, operations on the id are refused (`STALE_HANDLE`); closing
//! twice is `INVALID_STATE`. A loop with no handle left can be closed with
//! [`Loop::close_loop`].
//!
//! # Backends and fallback
//!
//! The loop talks to the kernel through one of two backends that meet one
//! completion-shaped contract, so everything above behaves the same on
//! both (the test suite runs every test on each):
//!
//! - [`Backend::Epoll`]: readiness with `epoll`; the loop performs each
//!   syscall when the fd is ready and reports its result as a completion.
//! - [`Backend::IoUring`]: operations are submitted to an io_uring and the
//!   kernel performs them: multishot accept and receive into a ring of
//!   provided buffers (no syscall per read), sends and connects as ring
//!   operations, and file reads, writes, fsyncs, stats and opens through
//!   the ring too (each probed; `UVRING_FS_IO_URING=0` or
//!   [`LoopOptions::fs_io_uring`] keeps them on the work pool).
//! - [`Backend::Auto`] (the default): io_uring when the ring can be set up
//!   and its probe finds every operation the loop needs, otherwise epoll;
//!   [`Loop::fallback_reason`] says why io_uring was not taken (a kernel
//!   without it, `kernel.io_uring_disabled`, a seccomp filter).
//!
//! [`Loop::new`] reads `UVRING_BACKEND` (`epoll`, `io_uring`, `auto`;
//! unset means `auto`); [`Loop::with_backend`] and [`Loop::with_options`]
//! choose in code. Asking for io_uring where it cannot work is an error
//! whose [`context`](Error::context) says why, never a silent fallback.
//! [`Loop::backend`] tells which one runs.
//!
//! # Allocation
//!
//! The hot paths (accept, read, write, timers, UDP send and receive, IPC
//! messages with fds) allocate nothing once warm; counting-allocator tests
//! check it. What allocates, and when:
//!
//! - **Once per loop**: the handle and operation tables, the pending and
//!   closing queues (with room for 1024 handles and operations, grown if
//!   needed), and the receive-buffer pool ([`PoolConfig`], default 512
//!   buffers of 16 KiB), which every read borrows from and gives back.
//! - **Once per callback**: `OnRead::new(..)` and its kin box the closure
//!   in an `Rc`; handles share it.
//! - **Reused**: a closed stream's or UDP socket's parts (write buffer,
//!   request queues, send buffers) go to a spare list for the next one; an
//!   idle stream lends its write buffer and queue back to the loop. So a
//!   connection that comes after one that closed costs no allocation, and
//!   an idle connection holds no write buffer.
//! - **Per request, by design**: work items (the boxed closure), file
//!   operations (their paths and results, e.g. [`Loop::fs_scandir`]'s
//!   `Vec`), name lookups and `spawn` (argument and environment strings).
//!   A received chunk is lent to [`OnRead`] as a slice valid for the call:
//!   copy what must outlive it.
//!
//! # Beyond sockets
//!
//! Blocking work runs on a work pool shared by the process's loops
//! ([`Loop::queue_work`], `UVRING_THREADPOOL_SIZE` threads, default
//! [`DEFAULT_THREADPOOL_SIZE`], at most [`MAX_THREADPOOL_SIZE`], started by
//! the first item) and completes on the loop, with `ECANCELED` after
//! [`Loop::cancel_work`] or [`Error::WORK_PANICKED`] if the function
//! panicked. Name resolution ([`Loop::getaddrinfo`],
//! [`Loop::getnameinfo`], [`Loop::tcp_connect_host`]) and file operations
//! ([`Loop::fs_open`], [`Loop::fs_read`], [`Loop::fs_write`],
//! [`Loop::fs_stat`], ...) are built on it; on io_uring the file
//! operations the ring has go through the ring instead. Child processes
//! ([`Loop::spawn`], [`ProcessOptions`]) are started with a pidfd
//! (`clone3`, or `fork` and `pidfd_open`), so their exit is an ordinary
//! completion and a recycled pid is never signalled. Signals
//! ([`Loop::signal_start`]) are delivered on the loop, from any number of
//! watchers per signal.
//!
//! Streams are not only sockets: [`Loop::pipe_open`] also takes a
//! `pipe(2)` end, a FIFO, a terminal or a regular file (stdin and stdout,
//! say), and [`Loop::sendfile`] sends a file's bytes on a stream, in order
//! with its writes, without the loop waiting for the disk. File watching
//! ([`Loop::fs_event_start`], on inotify) and vectored file I/O
//! ([`Loop::fs_read_vectored`], [`Loop::fs_write_vectored`]) complete the
//! file side.
//!
//! The loop measures itself, always on and without allocation:
//! [`Loop::metrics_idle_time`] is the time spent blocked waiting for I/O
//! (utilisation over a span is `1 - Δidle / Δwall`), and
//! [`Loop::metrics_info`] counts iterations and completions
//! ([`LoopMetrics`]), as libuv's `uv_metrics_*`.
//!
//! A loop can also host a *listen hook* ([`ListenHook`]) through which
//! another layer takes over `listen`: the `uvring-cluster` crate uses it so
//! that unchanged server code runs standalone or as a cluster worker.

#![deny(unsafe_op_in_unsafe_fn)]
#![deny(missing_docs)]
#![deny(clippy::missing_errors_doc)]
#![warn(missing_debug_implementations)]

#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;

mod async_handle;
mod backend;
mod dns;
mod error;
mod event_loop;
mod fs;
mod fs_event;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
mod handle;
mod hook;
pub mod os;
mod pipe;
mod poll;
mod process;
mod sendfile;
mod signal;
mod stream;
mod sys;
mod timer;
mod udp;
mod work;

pub use async_handle::AsyncSender;
pub use backend::{Backend, PoolConfig, MAX_ACCEPTS_PER_WAKEUP, MAX_READS_PER_WAKEUP};
pub use dns::{AddrInfoFlags, AddrInfoHints, AddressFamily, NameInfoFlags, SocketKind};
pub use error::{Error, Result};
pub use event_loop::{HandleType, Loop, LoopMetrics, LoopOptions, RunMode, DEFAULT_WRITE_POOL_BYTES};
pub use fs::{CopyFlags, DirEntry, FileKind, FileStat, FsRequest, OpenFlags};
pub use fs_event::{FsChange, FsEventFlags, FsEvents};
pub use handle::{
    Async, Datagram, HandleId, Hook, ListenerHandle, OnAsync, OnClose, OnConnect, OnConnection, OnExit, OnHook,
    OnListenStop, OnPoll, OnRead, OnRecv, OnSend, OnSendFile, OnShutdown, OnSignal, OnTimer, OnWrite, PendingHandle,
    PipeListener, PipeSocket, PipeStream, Poll, PollEvents, Process, RecvFlags, SendableHandle, Signal, SocketHandle,
    StreamHandle, TcpHandle, TcpListener, TcpSocket, TcpStream, Timer, Udp,
};
pub use handle::{FsEvent, OnFsEvent};
pub use hook::HookKind;
pub use pipe::FdBatch;
pub use process::{ProcessOptions, Stdio};
pub use stream::{ListenHook, StreamType, TCP_EXCLUSIVE, TCP_IPV6ONLY, TCP_REUSEPORT};
pub use udp::{Membership, MulticastInterface, UDP_IPV6ONLY, UDP_REUSEADDR, UDP_REUSEPORT};
pub use work::{threadpool_size, Work, DEFAULT_THREADPOOL_SIZE, MAX_THREADPOOL_SIZE};
