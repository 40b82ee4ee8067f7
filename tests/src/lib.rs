//! Shared harness for uvring's acceptance tests.
//!
//! Every engine scenario runs on both backends: [`both_backends!`] turns one
//! body into an `epoll` and an `io_uring` test. Where io_uring cannot be set
//! up, the io_uring case prints a visible `SKIP` line and passes, unless
//! `UVRING_REQUIRE_IO_URING=1`, which makes that skip a failure (CI sets it).
//!
//! Each test runs under [`TestGuard`]: tests in one binary are serialised (so
//! `/proc/self/fd` counts are exact), and the guard checks at the end that the
//! loop has no live handles and the fd count is back where it started.

/// The repository README's examples, compiled as doc tests (the README
/// lives outside the published crates, so this unpublished package checks it).
#[doc = include_str!("../../README.md")]
#[cfg(doctest)]
pub struct RepositoryReadmeDoctests;

pub mod child;

pub mod alloc_count;

use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};
use uvring::{Backend, Loop, LoopOptions};

static SERIAL: Mutex<()> = Mutex::new(());

/// Number of open fds in this process.
pub fn fd_count() -> usize {
    std::fs::read_dir("/proc/self/fd").map(|d| d.count()).unwrap_or(0)
}

/// Number of open fds in process `pid`.
pub fn fd_count_of(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.count()).unwrap_or(0)
}

/// This process's open fds, each as "number -> target" (`socket:[inode]`,
/// `pipe:[inode]`, a path): the target tells a reused number apart.
pub fn open_fds() -> std::collections::BTreeSet<String> {
    let Ok(dir) = std::fs::read_dir("/proc/self/fd") else { return Default::default() };
    dir.filter_map(|e| e.ok())
        .filter_map(|e| {
            // The directory's own fd is gone by the time we read its link.
            let target = std::fs::read_link(e.path()).ok()?;
            Some(format!("{} -> {}", e.file_name().to_string_lossy(), target.display()))
        })
        .filter(|fd| !fd.ends_with("/fd"))
        .collect()
}

/// Serialises tests within a binary and checks fds at the end.
pub struct TestGuard {
    fds_at_start: std::collections::BTreeSet<String>,
    _lock: MutexGuard<'static, ()>,
}

impl TestGuard {
    pub fn new() -> TestGuard {
        let lock = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
        TestGuard { fds_at_start: open_fds(), _lock: lock }
    }

    /// Asserts that the test left no fd open that was not open when it
    /// started. Fds are compared by identity (number and target), not by
    /// count, so a socket that an earlier test's finished thread closes
    /// meanwhile is not mistaken for a leak, and a leak is never hidden by
    /// such a close. io_uring may close a cancelled op's fd a moment late, so
    /// the check waits up to 2 s for the set to settle.
    pub fn check_fds(&self) {
        let deadline = Instant::now() + Duration::from_secs(2);
        loop {
            let now = open_fds();
            let leaked: Vec<&String> = now.difference(&self.fds_at_start).collect();
            if leaked.is_empty() {
                return;
            }
            if Instant::now() > deadline {
                panic!(
                    "fd leak: open now but not at the start:\n{}\n(all open fds:\n{})",
                    leaked.iter().map(|s| s.as_str()).collect::<Vec<_>>().join("\n"),
                    now.iter().map(String::as_str).collect::<Vec<_>>().join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Default for TestGuard {
    fn default() -> Self {
        Self::new()
    }
}

/// Whether io_uring must be tested (`UVRING_REQUIRE_IO_URING=1`).
pub fn io_uring_required() -> bool {
    std::env::var("UVRING_REQUIRE_IO_URING").is_ok_and(|v| v == "1")
}

/// Makes a loop on `backend`, or `None` (after printing a visible SKIP) when
/// io_uring is unavailable and not required.
pub fn make_loop(backend: Backend, opts: LoopOptions) -> Option<Loop> {
    make_loop_of(backend, opts)
}

/// [`make_loop`] for a loop over the user state `D`.
pub fn make_loop_of<D>(backend: Backend, opts: LoopOptions) -> Option<Loop<D>> {
    match Loop::with_options(opts.backend(backend)) {
        Ok(lp) => {
            assert_eq!(lp.backend(), backend, "asked for {backend}, got {}", lp.backend());
            Some(lp)
        }
        Err(e) if backend == Backend::IoUring => {
            let why = Loop::<()>::with_backend(Backend::Auto)
                .ok()
                .and_then(|l| l.fallback_reason().map(str::to_owned))
                .unwrap_or_else(|| e.to_string());
            if io_uring_required() {
                panic!("io_uring required (UVRING_REQUIRE_IO_URING=1) but unavailable: {why}");
            }
            eprintln!("SKIP (io_uring unavailable: {why})");
            None
        }
        Err(e) => panic!("cannot create a {backend} loop: {e}"),
    }
}

/// Runs `body` on a fresh loop of `backend` under a [`TestGuard`], then checks
/// that no handle is left and no fd leaked.
pub fn run_on(backend: Backend, body: impl FnOnce(&mut Loop)) {
    run_on_with(backend, LoopOptions::default(), body)
}

/// [`run_on`] with loop options (pool sizes, ...).
pub fn run_on_with(backend: Backend, opts: LoopOptions, body: impl FnOnce(&mut Loop)) {
    run_on_of(backend, opts, body)
}

/// [`run_on_with`] for a loop over the user state `D` (the body makes the
/// state value and passes it to `run`).
pub fn run_on_of<D>(backend: Backend, opts: LoopOptions, body: impl FnOnce(&mut Loop<D>)) {
    let guard = TestGuard::new();
    {
        let Some(mut lp) = make_loop_of::<D>(backend, opts) else { return };
        body(&mut lp);
        assert_eq!(lp.handle_count(), 0, "handles left open at the end of the test");
    }
    guard.check_fds();
}

/// Runs the loop until `done()` or `timeout`; panics on timeout. Use it to
/// bound every test's time.
pub fn run_until(lp: &mut Loop, timeout: Duration, mut done: impl FnMut(&mut Loop) -> bool) {
    run_until_with(lp, &mut (), timeout, |lp, _| done(lp))
}

/// [`run_until`] for a loop over the user state `D`: runs with `data`, and
/// `done` sees it too.
pub fn run_until_with<D>(
    lp: &mut Loop<D>,
    data: &mut D,
    timeout: Duration,
    mut done: impl FnMut(&mut Loop<D>, &mut D) -> bool,
) {
    let deadline = Instant::now() + timeout;
    while !done(lp, data) {
        assert!(Instant::now() < deadline, "timed out after {timeout:?}");
        lp.run(uvring::RunMode::Once, data).expect("loop run");
    }
}

/// Defines each body as two tests, `<name>::epoll` and `<name>::io_uring`.
/// A body gets `&mut Loop` (`Loop<()>`), or `&mut Loop<D>` when the loop's
/// state type is given after the name.
///
/// ```ignore
/// both_backends! {
///     fn timer_fires(lp) { /* uses lp: &mut Loop */ }
///     fn with_state(lp: State) { /* uses lp: &mut Loop<State> */ }
/// }
/// ```
#[macro_export]
macro_rules! both_backends {
    ($($(#[$meta:meta])* fn $name:ident($lp:ident $(: $d:ty)?) $body:block)*) => {
        $(
            $(#[$meta])*
            mod $name {
                #[allow(unused_imports)]
                use super::*;
                fn body($lp: &mut uvring::Loop<$($d)?>) $body
                #[test]
                fn epoll() {
                    $crate::run_on_of(uvring::Backend::Epoll, uvring::LoopOptions::default(), body)
                }
                #[test]
                fn io_uring() {
                    $crate::run_on_of(uvring::Backend::IoUring, uvring::LoopOptions::default(), body)
                }
            }
        )*
    };
}

/// A std client on its own thread: connects to `addr` and reads until end
/// of file (each read bounded by `timeout`); joining gives the bytes.
pub fn read_to_end_in_thread(addr: std::net::SocketAddr, timeout: Duration) -> std::thread::JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        use std::io::Read;
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(timeout)).unwrap();
        let mut got = Vec::new();
        s.read_to_end(&mut got).unwrap();
        got
    })
}

/// Runs `f` with a timeout on a helper thread (for blocking std clients);
/// returns its result or panics on timeout.
pub fn with_timeout<T: Send + 'static>(timeout: Duration, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(timeout).expect("helper thread timed out")
}

/// A shared counter for callbacks (tests only: the engine never needs one).
pub type Count = std::rc::Rc<std::cell::Cell<usize>>;

/// A new counter at zero.
pub fn count() -> Count {
    std::rc::Rc::new(std::cell::Cell::new(0))
}

/// Adds one to a counter.
pub fn bump(c: &Count) {
    c.set(c.get() + 1);
}

/// A TCP listener on 127.0.0.1 with a kernel-chosen port, and its address.
pub fn listener<D: 'static>(
    lp: &mut Loop<D>,
    on_connection: &uvring::OnConnection<D, uvring::TcpListener>,
) -> (uvring::TcpListener, std::net::SocketAddr) {
    listener_with_backlog(lp, 128, on_connection)
}

/// [`listener`] with a given backlog.
pub fn listener_with_backlog<D: 'static>(
    lp: &mut Loop<D>,
    backlog: i32,
    on_connection: &uvring::OnConnection<D, uvring::TcpListener>,
) -> (uvring::TcpListener, std::net::SocketAddr) {
    let sock = lp.tcp_init().unwrap();
    lp.tcp_bind(sock, "127.0.0.1:0".parse().unwrap(), 0).unwrap();
    let server = lp.listen(sock, backlog, on_connection).unwrap();
    let addr = lp.tcp_getsockname(server).unwrap();
    (server, addr)
}
