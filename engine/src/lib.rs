//! uvring: a libuv-style event loop for Linux with epoll and io_uring backends.
//!
//! Layers, bottom up: `sys` (private: the only code that calls libc),
//! `backend` (private: the completion-shaped contract and its epoll and
//! io_uring drivers), and the loop with its handles (streams, UDP sockets,
//! timers, async, signals, hooks, processes, poll watchers), which never see
//! a platform detail.
//!
//! # The model
//!
//! A [`Loop<D>`](Loop) runs over the user's state `D`:
//! [`run`](Loop::run) takes `&mut D`, and every callback receives
//! `(&mut Loop<D>, &mut D, handle, ...)`, so per-connection state lives in
//! `D` (a slab keyed by the handle or its `data` word) and no callback needs
//! `Rc<RefCell<..>>` (calloop's model). Callbacks are built once
//! ([`OnRead::new`], ...) and shared by every handle that uses them.
//! Handles have typed ids (see [`handle`](crate::TcpStream)'s table): a
//! timer handed to a stream operation, or a listener to `write`, does not
//! compile. Callbacks run only from the loop's phases, never from inside an
//! API call.
//!
//! ```
//! use std::time::Duration;
//! use uvring::{Loop, OnTimer, RunMode};
//!
//! struct State {
//!     ticks: u32,
//! }
//!
//! let mut lp: Loop<State> = Loop::new().unwrap();
//! let t = lp.timer_init().unwrap();
//! let on_tick = OnTimer::new(|lp: &mut Loop<State>, state: &mut State, t| {
//!     state.ticks += 1;
//!     if state.ticks == 3 {
//!         lp.close(t, None).unwrap();
//!     }
//! });
//! lp.timer_start(t, Duration::from_millis(1), Duration::from_millis(1), &on_tick).unwrap();
//! let mut state = State { ticks: 0 };
//! lp.run(RunMode::Default, &mut state).unwrap();
//! assert_eq!(state.ticks, 3);
//! ```

//! # Beyond sockets
//!
//! Blocking work runs on a work pool shared by the process's loops
//! ([`Loop::queue_work`], `UVRING_THREADPOOL_SIZE` threads, default 4) and
//! completes on the loop; name resolution ([`Loop::getaddrinfo`],
//! [`Loop::tcp_connect_host`]) and file operations ([`Loop::fs_open`],
//! [`Loop::fs_read`], ...) are built on it. On io_uring, file reads,
//! writes, fsyncs, stats and opens go through the ring instead
//! (`UVRING_FS_IO_URING=0` keeps them on the pool).

#![deny(unsafe_op_in_unsafe_fn)]
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
pub use event_loop::{HandleType, Loop, LoopMetrics, LoopOptions, RunMode};
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
pub use stream::{ListenHook, StreamType, TCP_IPV6ONLY, TCP_REUSEPORT};
pub use udp::{Membership, MulticastInterface, UDP_IPV6ONLY, UDP_REUSEADDR, UDP_REUSEPORT};
pub use work::{threadpool_size, Work, DEFAULT_THREADPOOL_SIZE, MAX_THREADPOOL_SIZE};
