//! Handle ids and callback types.
//!
//! A handle id is a slot index plus a generation: `Copy`, small, and never
//! confused with a later handle that reuses the slot (the generation differs,
//! so the stale id gets [`Error::STALE_HANDLE`](crate::Error::STALE_HANDLE)).
//!
//! Callbacks are closures allocated **once** and shared by reference count:
//! build an [`OnRead`] (or any other) with `new` at start-up and hand clones of
//! it to every connection. A clone is a reference-count increment, so a new
//! connection costs no heap allocation for its callbacks (libuv shares C
//! function pointers the same way). Per-connection state lives in the handle's
//! `data` word ([`Loop::set_data`](crate::Loop::set_data)) or in the closure.

use crate::error::Result;
use crate::Loop;
use std::cell::RefCell;
use std::rc::Rc;

/// Any handle: a slot index and a generation.
#[derive(Copy, Clone, PartialEq, Eq, Hash, Debug)]
pub struct HandleId {
    pub(crate) index: u32,
    pub(crate) generation: u32,
}

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
    };
}

typed_id!(
    /// A stream: a TCP socket or a Unix-domain pipe (listener or connection).
    Stream
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

/// A callback, allocated once and cheaply cloned (see the module docs).
pub struct Callback<F: ?Sized>(pub(crate) Rc<RefCell<F>>);

impl<F: ?Sized> Clone for Callback<F> {
    fn clone(&self) -> Self {
        Callback(self.0.clone())
    }
}

impl<F: ?Sized> std::fmt::Debug for Callback<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Callback")
    }
}

/// `(loop, stream, status)`: connection arrived, write done, connect done, shutdown done.
pub type StreamFn = dyn FnMut(&mut Loop, Stream, Result<()>);
/// `(loop, stream, bytes or error)`: data read; `Err(Error::EOF)` at end of stream.
pub type ReadFn = dyn FnMut(&mut Loop, Stream, Result<&[u8]>);
/// `(loop, handle)`: handle closed; idle/prepare/check ran.
pub type HandleFn = dyn FnMut(&mut Loop, HandleId);
/// `(loop, timer)`: timer fired.
pub type TimerFn = dyn FnMut(&mut Loop, Timer);
/// `(loop, async)`: woken by [`AsyncSender::send`](crate::AsyncSender::send).
pub type AsyncFn = dyn FnMut(&mut Loop, Async);
/// `(loop, signal handle, signal number)`.
pub type SignalFn = dyn FnMut(&mut Loop, Signal, i32);
/// `(loop, process, exit status, terminating signal)`.
pub type ExitFn = dyn FnMut(&mut Loop, Process, i64, i32);

/// New connection on a listener (`uv_connection_cb`).
pub type OnConnection = Callback<StreamFn>;
/// Write completed (`uv_write_cb`).
pub type OnWrite = Callback<StreamFn>;
/// Connect completed (`uv_connect_cb`).
pub type OnConnect = Callback<StreamFn>;
/// Shutdown completed (`uv_shutdown_cb`).
pub type OnShutdown = Callback<StreamFn>;
/// Data read (`uv_read_cb`).
pub type OnRead = Callback<ReadFn>;
/// A listener stopped accepting ([`Loop::listen_stop`](crate::Loop::listen_stop)):
/// no connection can arrive any more.
pub type OnListenStop = Callback<StreamFn>;
/// Handle closed (`uv_close_cb`), or an idle/prepare/check hook ran.
pub type OnClose = Callback<HandleFn>;
/// Idle, prepare or check hook.
pub type OnHook = Callback<HandleFn>;
/// Timer fired (`uv_timer_cb`).
pub type OnTimer = Callback<TimerFn>;
/// Async woken (`uv_async_cb`).
pub type OnAsync = Callback<AsyncFn>;
/// Signal received (`uv_signal_cb`).
pub type OnSignal = Callback<SignalFn>;
/// Child exited (`uv_exit_cb`).
pub type OnExit = Callback<ExitFn>;

macro_rules! callback_new {
    ($fnty:ident, ($($arg:ty),*)) => {
        impl Callback<$fnty> {
            /// Wraps a closure; this is the one allocation, share it by cloning.
            pub fn new(f: impl FnMut(&mut Loop, $($arg),*) + 'static) -> Self {
                Callback(Rc::new(RefCell::new(f)))
            }
        }
    };
}

callback_new!(StreamFn, (Stream, Result<()>));
callback_new!(ReadFn, (Stream, Result<&[u8]>));
callback_new!(HandleFn, (HandleId));
callback_new!(TimerFn, (Timer));
callback_new!(AsyncFn, (Async));
callback_new!(SignalFn, (Signal, i32));
callback_new!(ExitFn, (Process, i64, i32));

/// Calls a callback. Callbacks never run re-entrantly (the loop never calls
/// user code from inside an API call, and `run` refuses to nest), so the
/// borrow always succeeds; if it ever did not, the call is skipped rather
/// than panicking.
macro_rules! invoke {
    ($cb:expr, $($arg:expr),*) => {{
        let cb = $cb;
        if let Ok(mut f) = cb.0.try_borrow_mut() {
            (&mut *f)($($arg),*);
        } else {
            debug_assert!(false, "callback re-entered");
        }
    }};
}
pub(crate) use invoke;
