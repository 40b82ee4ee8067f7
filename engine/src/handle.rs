//! Handle ids and callback types.
//!
//! # Handles
//!
//! A handle id is a slot index plus a generation: `Copy`, small, and never
//! confused with a later handle that reuses the slot (the generation differs,
//! so the stale id gets [`Error::STALE_HANDLE`](crate::Error::STALE_HANDLE)).
//! Each kind of handle has its own id type, and a socket changes type as it
//! changes state, so that a misuse does not compile:
//!
//! | id | made by | what it can do |
//! |---|---|---|
//! | [`TcpSocket`] | `tcp_init`, `tcp_open` | bind, then `listen` (gives a [`TcpListener`]) or `tcp_connect` (gives a [`TcpStream`]) |
//! | [`TcpListener`] | `listen` | `accept` (gives [`TcpStream`]s), `listen_stop` |
//! | [`TcpStream`] | `accept`, `tcp_connect`, `tcp_open_stream` | read, write, shutdown |
//! | [`PipeSocket`] | `pipe_init` | `pipe_bind` + `listen` (a [`PipeListener`]), `pipe_connect` (a [`PipeStream`]), spawn stdio |
//! | [`PipeListener`] | `listen` | `accept` (gives [`PipeStream`]s) |
//! | [`PipeStream`] | `accept`, `pipe_connect`, `pipe_open`, `pipe_pair` | read, write, shutdown; an IPC pipe also sends and receives handles |
//! | [`Udp`] | `udp_init`, `udp_open` | bind, connect, send and receive datagrams, multicast |
//! | [`Timer`], [`Async`], [`Signal`], [`Hook`], [`Process`], [`Poll`], [`FsEvent`] | their `*_init`/`*_start`/`spawn` | as libuv |
//!
//! Stream operations take any [`StreamHandle`]; `accept` takes any
//! [`ListenerHandle`]; `listen` takes any [`SocketHandle`]. Operations every
//! handle has (`close`, `ref`, `data`, `is_active`) take
//! `impl Into<HandleId>`.
//!
//! ```compile_fail
//! # use uvring::*;
//! # fn f(lp: &mut Loop, t: Timer, cb: &OnRead<(), TcpStream>) {
//! lp.read_start(t, cb); // a timer is not a stream
//! # }
//! ```
//!
//! ```compile_fail
//! # use uvring::*;
//! # fn f(lp: &mut Loop, l: TcpListener) {
//! lp.write(l, b"x", None); // a listener cannot be written to
//! # }
//! ```
//!
//! # Callbacks
//!
//! Every callback gets `(&mut Loop<D>, &mut D, ...)`: the loop and the
//! user's state value, the one passed to [`Loop::run`](crate::Loop::run)
//! (the calloop model). Per-connection state lives in `D` (a slab keyed by
//! the handle, or by the handle's `data` word), so no callback needs
//! `Rc<RefCell<..>>`.
//!
//! A callback is built **once** with `new` (from a closure or a plain `fn`)
//! and shared by reference count: hand `&cb` to every connection. Storing it
//! is a reference-count increment, so a new connection costs no heap
//! allocation for its callbacks (libuv shares C function pointers the same
//! way). Callbacks are `Fn`: state they change lives in `D`.
//!
//! Callbacks never run from inside an API call: every completion, failures
//! found inside a call included (a write on a broken stream, a connection
//! injected by a listen hook), is delivered from the loop's phases. So a
//! callback is never re-entered, and none is ever skipped.

use crate::error::Result;
use crate::event_loop::Loop;
use std::marker::PhantomData;
use std::net::SocketAddr;
use std::rc::Rc;

/// Any handle: a slot index and a generation.
#[derive(Copy, Clone, PartialEq, Eq, Hash, Debug)]
pub struct HandleId {
    pub(crate) index: u32,
    pub(crate) generation: u32,
}

pub(crate) mod sealed {
    /// Makes a typed id from an untyped one; only the engine can.
    pub trait Typed: Copy {
        fn from_id(h: super::HandleId) -> Self;
    }
}
use sealed::Typed;

macro_rules! typed_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Copy, Clone, PartialEq, Eq, Hash, Debug)]
        pub struct $name(pub(crate) HandleId);

        impl From<$name> for HandleId {
            fn from(h: $name) -> HandleId {
                h.0
            }
        }

        impl $name {
            /// The untyped id (for `close`, `ref`, `data`, ...).
            pub fn id(self) -> HandleId {
                self.0
            }
        }

        impl Typed for $name {
            fn from_id(h: HandleId) -> Self {
                $name(h)
            }
        }
    };
}

impl Typed for HandleId {
    fn from_id(h: HandleId) -> Self {
        h
    }
}

typed_id!(
    /// A TCP socket that is neither listening nor connected: made by
    /// `tcp_init` (or `tcp_open` of a bound or listening fd); bind it, then
    /// `listen` or `tcp_connect`.
    TcpSocket
);
typed_id!(
    /// A listening TCP socket.
    TcpListener
);
typed_id!(
    /// A TCP connection (connecting, connected, or half-closed).
    TcpStream
);
typed_id!(
    /// A Unix-domain socket that is neither listening nor connected: made
    /// by `pipe_init`; `pipe_bind` + `listen`, `pipe_connect`, or a spawn
    /// stdio entry.
    PipeSocket
);
typed_id!(
    /// A listening Unix-domain socket.
    PipeListener
);
typed_id!(
    /// A Unix-domain stream connection; an IPC pipe also carries handles.
    PipeStream
);
typed_id!(
    /// A timer.
    Timer
);
typed_id!(
    /// An async handle: wakes the loop from another thread.
    Async
);
typed_id!(
    /// A signal watcher.
    Signal
);
typed_id!(
    /// An idle, prepare or check hook.
    Hook
);
typed_id!(
    /// A child process.
    Process
);
typed_id!(
    /// A watcher of a foreign fd's readiness (`uv_poll_t`).
    Poll
);
typed_id!(
    /// A UDP socket (`uv_udp_t`): bound or not, connected or not.
    Udp
);
typed_id!(
    /// A file-system watcher (`uv_fs_event_t`, on inotify).
    FsEvent
);

/// A stream: what `read_start`, `write`, `shutdown` and `try_write` take
/// ([`TcpStream`], [`PipeStream`]).
pub trait StreamHandle: Typed + Into<HandleId> + std::fmt::Debug + 'static {}
impl StreamHandle for TcpStream {}
impl StreamHandle for PipeStream {}

/// A listening socket: what `accept` and `listen_stop` take.
pub trait ListenerHandle: Typed + Into<HandleId> + std::fmt::Debug + 'static {
    /// The connections it accepts.
    type Stream: StreamHandle;
}
impl ListenerHandle for TcpListener {
    type Stream = TcpStream;
}
impl ListenerHandle for PipeListener {
    type Stream = PipeStream;
}

/// A socket that can start listening: what `listen` takes.
pub trait SocketHandle: Typed + Into<HandleId> + std::fmt::Debug + 'static {
    /// What it becomes when it listens.
    type Listener: ListenerHandle;
}
impl SocketHandle for TcpSocket {
    type Listener = TcpListener;
}
impl SocketHandle for PipeSocket {
    type Listener = PipeListener;
}

/// A TCP handle in any state (socket options, addresses).
pub trait TcpHandle: Typed + Into<HandleId> + std::fmt::Debug + 'static {}
impl TcpHandle for TcpSocket {}
impl TcpHandle for TcpListener {}
impl TcpHandle for TcpStream {}

/// A handle whose socket an IPC pipe can send (`write2`).
pub trait SendableHandle: Typed + Into<HandleId> + std::fmt::Debug + 'static {}
impl SendableHandle for TcpSocket {}
impl SendableHandle for TcpListener {}
impl SendableHandle for TcpStream {}
impl SendableHandle for PipeSocket {}
impl SendableHandle for PipeListener {}
impl SendableHandle for PipeStream {}

/// A handle taken from an IPC pipe by
/// [`accept_pending`](crate::Loop::accept_pending), typed by what arrived:
/// a connection is a stream; a listening socket is a socket on which
/// `listen` starts accepting (libuv's `uv_accept`, then `uv_listen`).
#[derive(Copy, Clone, PartialEq, Eq, Debug)]
pub enum PendingHandle {
    /// A listening TCP socket.
    TcpSocket(TcpSocket),
    TcpStream(TcpStream),
    /// A listening Unix-domain socket.
    PipeSocket(PipeSocket),
    PipeStream(PipeStream),
}

impl From<PendingHandle> for HandleId {
    fn from(h: PendingHandle) -> HandleId {
        match h {
            PendingHandle::TcpSocket(x) => x.0,
            PendingHandle::TcpStream(x) => x.0,
            PendingHandle::PipeSocket(x) => x.0,
            PendingHandle::PipeStream(x) => x.0,
        }
    }
}

// ---- callbacks -------------------------------------------------------------

/// The stored, handle-untyped form of a status callback.
pub(crate) type StatusFn<D> = dyn Fn(&mut Loop<D>, &mut D, HandleId, Result<()>);
/// The stored form of a file transfer's callback (bytes sent).
pub(crate) type SendFileFn<D> = dyn Fn(&mut Loop<D>, &mut D, HandleId, Result<u64>);
/// The stored form of a read callback.
pub(crate) type ReadFn<D> = dyn for<'a> Fn(&mut Loop<D>, &mut D, HandleId, Result<&'a [u8]>);
/// The stored form of a handle callback (close, hooks, timers, async).
pub(crate) type HandleFn<D> = dyn Fn(&mut Loop<D>, &mut D, HandleId);
/// The stored form of a callback with one `i32` (signals).
pub(crate) type IntFn<D> = dyn Fn(&mut Loop<D>, &mut D, HandleId, i32);
/// The stored form of an exit callback.
pub(crate) type ExitFn<D> = dyn Fn(&mut Loop<D>, &mut D, HandleId, i64, i32);
/// The stored form of a poll callback.
pub(crate) type PollFn<D> = dyn Fn(&mut Loop<D>, &mut D, HandleId, Result<PollEvents>);
/// The stored form of a datagram receive callback.
pub(crate) type RecvFn<D> = dyn for<'a> Fn(&mut Loop<D>, &mut D, HandleId, Result<Datagram<'a>>);
/// The stored form of a file-system watcher's callback.
pub(crate) type FsEventFn<D> = dyn for<'a> Fn(&mut Loop<D>, &mut D, HandleId, Result<crate::fs_event::FsChange<'a>>);

macro_rules! callback_type {
    ($(#[$doc:meta])* $name:ident<D, $h:ident: $bound:path>, $raw:ident, ($($arg:ident: $argty:ty),*)) => {
        $(#[$doc])*
        pub struct $name<D, $h> {
            pub(crate) f: Rc<$raw<D>>,
            _h: PhantomData<fn($h)>,
        }

        impl<D, $h> Clone for $name<D, $h> {
            fn clone(&self) -> Self {
                $name { f: self.f.clone(), _h: PhantomData }
            }
        }

        impl<D, $h> std::fmt::Debug for $name<D, $h> {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(stringify!($name))
            }
        }

        impl<D: 'static, $h: $bound> $name<D, $h> {
            /// Wraps a closure or `fn`; this is the one allocation, share
            /// the result by reference.
            pub fn new(f: impl Fn(&mut Loop<D>, &mut D, $h, $($argty),*) + 'static) -> Self {
                $name { f: Rc::new(move |lp: &mut Loop<D>, d: &mut D, h: HandleId, $($arg: $argty),*| f(lp, d, $h::from_id(h), $($arg),*)), _h: PhantomData }
            }
        }
    };
    ($(#[$doc:meta])* $name:ident<D>, $h:ty, $raw:ident, ($($arg:ident: $argty:ty),*)) => {
        $(#[$doc])*
        pub struct $name<D> {
            pub(crate) f: Rc<$raw<D>>,
        }

        impl<D> Clone for $name<D> {
            fn clone(&self) -> Self {
                $name { f: self.f.clone() }
            }
        }

        impl<D> std::fmt::Debug for $name<D> {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(stringify!($name))
            }
        }

        impl<D: 'static> $name<D> {
            /// Wraps a closure or `fn`; this is the one allocation, share
            /// the result by reference.
            pub fn new(f: impl Fn(&mut Loop<D>, &mut D, $h, $($argty),*) + 'static) -> Self {
                $name { f: Rc::new(move |lp: &mut Loop<D>, d: &mut D, h: HandleId, $($arg: $argty),*| f(lp, d, <$h as Typed>::from_id(h), $($arg),*)) }
            }
        }
    };
}

callback_type!(
    /// `(loop, data, listener, status)`: a connection is waiting for
    /// `accept` (`uv_connection_cb`); `Err` for a listen or accept failure.
    OnConnection<D, L: ListenerHandle>, StatusFn, (status: Result<()>)
);
callback_type!(
    /// `(loop, data, listener, status)`: the listener stopped accepting
    /// ([`Loop::listen_stop`](crate::Loop::listen_stop)).
    OnListenStop<D, L: ListenerHandle>, StatusFn, (status: Result<()>)
);
callback_type!(
    /// `(loop, data, stream, status)`: a write completed (`uv_write_cb`).
    OnWrite<D, S: StreamHandle>, StatusFn, (status: Result<()>)
);
callback_type!(
    /// `(loop, data, stream, sent)`: a file transfer
    /// ([`Loop::sendfile`](crate::Loop::sendfile)) ended: the bytes sent
    /// (fewer than asked if the file ended first), or its error.
    OnSendFile<D, S: StreamHandle>, SendFileFn, (sent: Result<u64>)
);
callback_type!(
    /// `(loop, data, stream, status)`: a connect completed (`uv_connect_cb`).
    OnConnect<D, S: StreamHandle>, StatusFn, (status: Result<()>)
);
callback_type!(
    /// `(loop, data, stream, status)`: a shutdown completed (`uv_shutdown_cb`).
    OnShutdown<D, S: StreamHandle>, StatusFn, (status: Result<()>)
);

/// `(loop, data, stream, bytes)`: data read (`uv_read_cb`), valid for the
/// call; `Err(Error::EOF)` at end of stream, or another error.
pub struct OnRead<D, S> {
    pub(crate) f: Rc<ReadFn<D>>,
    _s: PhantomData<fn(S)>,
}

impl<D, S> Clone for OnRead<D, S> {
    fn clone(&self) -> Self {
        OnRead { f: self.f.clone(), _s: PhantomData }
    }
}

impl<D, S> std::fmt::Debug for OnRead<D, S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("OnRead")
    }
}

impl<D: 'static, S: StreamHandle> OnRead<D, S> {
    /// Wraps a closure or `fn`; this is the one allocation, share the result
    /// by reference.
    pub fn new(f: impl Fn(&mut Loop<D>, &mut D, S, Result<&[u8]>) + 'static) -> Self {
        OnRead {
            f: Rc::new(move |lp: &mut Loop<D>, d: &mut D, h: HandleId, r: Result<&[u8]>| f(lp, d, S::from_id(h), r)),
            _s: PhantomData,
        }
    }
}

callback_type!(
    /// `(loop, data, handle)`: the handle closed (`uv_close_cb`).
    OnClose<D>, HandleId, HandleFn, ()
);
callback_type!(
    /// `(loop, data, hook)`: an idle, prepare or check hook ran.
    OnHook<D>, Hook, HandleFn, ()
);
callback_type!(
    /// `(loop, data, timer)`: the timer fired (`uv_timer_cb`).
    OnTimer<D>, Timer, HandleFn, ()
);
callback_type!(
    /// `(loop, data, async)`: woken by [`AsyncSender::send`](crate::AsyncSender::send).
    OnAsync<D>, Async, HandleFn, ()
);
callback_type!(
    /// `(loop, data, watcher, signal number)` (`uv_signal_cb`).
    OnSignal<D>, Signal, IntFn, (signum: i32)
);
callback_type!(
    /// `(loop, data, process, exit status, terminating signal)` (`uv_exit_cb`).
    OnExit<D>, Process, ExitFn, (status: i64, signal: i32)
);
callback_type!(
    /// `(loop, data, poll, events)`: the fd is ready (`uv_poll_cb`); `Err`
    /// if polling failed (the watcher is stopped).
    OnPoll<D>, Poll, PollFn, (events: Result<PollEvents>)
);
callback_type!(
    /// `(loop, data, udp, status)`: a datagram send completed
    /// (`uv_udp_send_cb`): `Ok` once the kernel took it, `ECANCELED` if the
    /// socket was closed first, or the send's error. Sends of one socket
    /// complete in the order they were made.
    OnSend<D>, Udp, StatusFn, (status: Result<()>)
);
callback_type!(
    /// `(loop, data, udp, datagram)`: a datagram arrived (`uv_udp_recv_cb`),
    /// valid for the call; `Err` for an error the socket reported (an ICMP
    /// port unreachable on a connected socket is `ECONNREFUSED`; receiving
    /// goes on after such errors).
    OnRecv<D>, Udp, RecvFn, (datagram: Result<Datagram<'_>>)
);

callback_type!(
    /// `(loop, data, watcher, change)`: something happened to the watched
    /// path or, for a directory, to an entry in it (`uv_fs_event_cb`); the
    /// change's name is valid for the call. `Err(ENOBUFS)` when the kernel
    /// dropped events (its queue overflowed): rescan what you watch.
    OnFsEvent<D>, FsEvent, FsEventFn, (change: Result<crate::fs_event::FsChange<'_>>)
);

/// One received datagram, lent to an [`OnRecv`] callback for the call.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct Datagram<'a> {
    /// The payload: all of it, or its first part when
    /// [`flags`](Self::flags) says [`RecvFlags::TRUNCATED`].
    pub data: &'a [u8],
    /// The sender (an IPv4-mapped IPv6 address for an IPv4 sender on a
    /// dual-stack socket); `None` if the kernel named none.
    pub addr: Option<SocketAddr>,
    pub flags: RecvFlags,
}

/// What else the kernel said about a received datagram.
#[derive(Copy, Clone, PartialEq, Eq, Hash, Default)]
pub struct RecvFlags(pub(crate) u32);

impl RecvFlags {
    /// The datagram was longer than the receive buffer's payload space and
    /// was cut (`MSG_TRUNC`, libuv's `UV_UDP_PARTIAL`): the rest is lost.
    /// Receive buffers are [`PoolConfig::size`](crate::PoolConfig::size)
    /// bytes less a 44-byte record header and address.
    pub const TRUNCATED: RecvFlags = RecvFlags(1);

    /// No flag.
    pub const fn empty() -> RecvFlags {
        RecvFlags(0)
    }
    /// Whether every flag of `other` is in `self`.
    pub const fn contains(self, other: RecvFlags) -> bool {
        self.0 & other.0 == other.0
    }
    /// Whether the datagram was cut ([`TRUNCATED`](Self::TRUNCATED)).
    pub const fn is_truncated(self) -> bool {
        self.contains(RecvFlags::TRUNCATED)
    }
}

impl std::fmt::Debug for RecvFlags {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.is_truncated() {
            f.write_str("RecvFlags(TRUNCATED)")
        } else {
            f.write_str("RecvFlags()")
        }
    }
}

/// Readiness events of a [`Poll`] watcher (`uv_poll_event`).
#[derive(Copy, Clone, PartialEq, Eq, Hash, Default)]
pub struct PollEvents(pub(crate) u32);

impl PollEvents {
    /// Readable (`UV_READABLE`).
    pub const READABLE: PollEvents = PollEvents(1);
    /// Writable (`UV_WRITABLE`).
    pub const WRITABLE: PollEvents = PollEvents(2);
    /// The peer hung up its side (`UV_DISCONNECT`).
    pub const DISCONNECT: PollEvents = PollEvents(4);
    /// Urgent data (`UV_PRIORITIZED`).
    pub const PRIORITIZED: PollEvents = PollEvents(8);

    /// No events.
    pub const fn empty() -> PollEvents {
        PollEvents(0)
    }
    /// Whether every event of `other` is in `self`.
    pub const fn contains(self, other: PollEvents) -> bool {
        self.0 & other.0 == other.0
    }
    /// Whether no event is set.
    pub const fn is_empty(self) -> bool {
        self.0 == 0
    }
}

impl std::ops::BitOr for PollEvents {
    type Output = PollEvents;
    fn bitor(self, rhs: PollEvents) -> PollEvents {
        PollEvents(self.0 | rhs.0)
    }
}

impl std::ops::BitOrAssign for PollEvents {
    fn bitor_assign(&mut self, rhs: PollEvents) {
        self.0 |= rhs.0;
    }
}

impl std::fmt::Debug for PollEvents {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names = [(1, "READABLE"), (2, "WRITABLE"), (4, "DISCONNECT"), (8, "PRIORITIZED")];
        let mut first = true;
        f.write_str("PollEvents(")?;
        for (bit, name) in names {
            if self.0 & bit != 0 {
                if !first {
                    f.write_str(" | ")?;
                }
                f.write_str(name)?;
                first = false;
            }
        }
        f.write_str(")")
    }
}
