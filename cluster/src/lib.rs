//! uvring-cluster: a Node.js-`cluster`-style layer on the uvring event loop.
//!
//! One primary process owns the listening sockets, accepts connections and
//! hands them to worker processes over IPC (or lets workers accept for
//! themselves, per the scheduling policy). The layers, bottom up:
//!
//! - [`proto`]: the IPC frame codec. Pure Rust, no OS calls: frames to bytes
//!   and bytes plus received fds back to frames, incrementally, bounded and
//!   allocation-free.

pub mod proto;
