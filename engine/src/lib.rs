//! uvring: a libuv-style event loop for Linux with epoll and io_uring backends.
//!
//! Layers, bottom up: `sys` (the only code that calls libc), `backend` (the
//! completion-shaped contract and its epoll and io_uring drivers), and the
//! loop with its handles (streams, timers, async, signals), which never see
//! a platform detail.

#![deny(unsafe_op_in_unsafe_fn)]

#[doc = include_str!("../../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;

pub mod backend;
mod error;
mod event_loop;
#[macro_use]
mod handle;
mod misc;
mod pipe;
mod process;
mod stream;
pub mod sys;
mod timer;

pub use backend::{Backend, PoolConfig};
pub use error::{Error, Result};
pub use event_loop::{Loop, LoopOptions, RunMode};
pub use handle::*;
pub use misc::{AsyncSender, HookKind};
pub use pipe::FdBatch;
pub use process::{ProcessOptions, Stdio};
pub use stream::{ListenHook, StreamType, TCP_IPV6ONLY, TCP_REUSEPORT};
