//! Shared pieces of the cluster scenario tests: settings that fork the
//! `cluster-worker` helper, an event log, clients on helper threads, a
//! graceful shutdown, and a guard that kills workers if a test fails.
#![allow(dead_code)]

use std::cell::RefCell;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::rc::Rc;
use std::sync::mpsc::{self, Receiver};
use std::time::Duration;
use uvring::{Loop, OnTimer, RunMode};
use uvring_cluster::{ChildOutput, Primary, SchedPolicy, Settings, WorkerId};

/// The worker program.
pub const WORKER: &str = env!("CARGO_BIN_EXE_cluster-worker");

/// Runs the loop until `done()`, panicking after `timeout`. A ticking timer
/// bounds each blocking poll, so the deadline is checked even when nothing
/// happens.
pub fn run_until(lp: &mut Loop, timeout: Duration, mut done: impl FnMut(&mut Loop) -> bool) {
    run_until_with(lp, &mut (), timeout, |lp, _| done(lp));
}

/// [`run_until`] for a loop with user data: runs `lp` with `data` until
/// `done(lp, data)`.
pub fn run_until_with<D: 'static>(
    lp: &mut Loop<D>,
    data: &mut D,
    timeout: Duration,
    mut done: impl FnMut(&mut Loop<D>, &mut D) -> bool,
) {
    let deadline = std::time::Instant::now() + timeout;
    let tick = lp.timer_init().unwrap();
    let every = Duration::from_millis(20);
    lp.timer_start(tick, every, every, &OnTimer::new(|_, _, _| {})).unwrap();
    lp.unref_handle(tick).unwrap();
    while !done(lp, data) {
        if std::time::Instant::now() > deadline {
            let _ = lp.close(tick, None);
            panic!("timed out after {timeout:?}");
        }
        lp.run(RunMode::Once, data).expect("loop run");
    }
    lp.close(tick, None).unwrap();
    // Let the tick's close finish (it must not count as a live handle).
    while lp.is_live(tick) {
        lp.run(RunMode::NoWait, data).expect("loop run");
    }
}

/// Generous bound for any one wait in a test.
pub const WAIT: Duration = Duration::from_secs(20);

/// Settings that fork the helper playing `scenario`.
pub fn settings(policy: SchedPolicy, scenario: &str, workers: usize) -> Settings {
    Settings {
        exec: Some(WORKER.into()),
        args: Some(vec![scenario.into()]),
        workers,
        policy,
        output: ChildOutput::Inherit,
        ..Settings::default()
    }
}

/// What a test primary saw.
#[derive(Default, Debug)]
pub struct Log {
    /// `(worker, text)` of each user message.
    pub messages: Vec<(WorkerId, String)>,
    /// `(worker, port)` of each listening event.
    pub listening: Vec<(WorkerId, u16)>,
    pub online: Vec<WorkerId>,
    pub disconnects: Vec<WorkerId>,
    /// `(worker, code, signal, exited_after_disconnect)`.
    pub exits: Vec<(WorkerId, i64, i32, bool)>,
    pub pids: Vec<i32>,
}

impl Log {
    pub fn messages_from(&self, id: WorkerId) -> Vec<String> {
        self.messages.iter().filter(|(w, _)| *w == id).map(|(_, m)| m.clone()).collect()
    }

    pub fn has_message(&self, text: &str) -> bool {
        self.messages.iter().any(|(_, m)| m == text)
    }

    pub fn count_prefix(&self, prefix: &str) -> usize {
        self.messages.iter().filter(|(_, m)| m.starts_with(prefix)).count()
    }
}

pub type SharedLog = Rc<RefCell<Log>>;

/// Records every event of `primary` in a log.
pub fn record(primary: &Primary<()>) -> SharedLog {
    let log: SharedLog = Rc::default();
    let l = log.clone();
    primary.on_fork(move |_, _, w| l.borrow_mut().pids.push(w.pid()));
    let l = log.clone();
    primary.on_online(move |_, _, w| l.borrow_mut().online.push(w.id()));
    let l = log.clone();
    primary.on_listening(move |_, _, w, addr| l.borrow_mut().listening.push((w.id(), addr.port())));
    let l = log.clone();
    primary.on_message(move |_, _, w, bytes, _| {
        l.borrow_mut().messages.push((w.id(), String::from_utf8_lossy(bytes).into_owned()))
    });
    let l = log.clone();
    primary.on_disconnect(move |_, _, w| l.borrow_mut().disconnects.push(w.id()));
    let l = log.clone();
    primary.on_exit(move |_, _, w, code, signal| {
        l.borrow_mut().exits.push((w.id(), code, signal, w.exited_after_disconnect()))
    });
    log
}

/// Kills the recorded workers if the test panics (so a failing test leaves
/// no process behind); a passing test has already reaped them.
pub struct KillGuard(pub SharedLog);

impl Drop for KillGuard {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for &pid in &self.0.borrow().pids {
                // SAFETY: plain syscall on a pid this test forked.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
    }
}

/// Kills these pids if the test panics ([`KillGuard`] for a test that
/// keeps no [`Log`]).
pub struct PidGuard(pub Vec<i32>);

impl Drop for PidGuard {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for &pid in &self.0 {
                // SAFETY: plain syscall on a pid this test forked.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
    }
}

/// Makes a primary with `settings`, records its events, guards against
/// orphans and starts it: the opening of most scenarios. Keep the guard
/// alive for the whole test (`let (primary, log, _guard) = ...`).
pub fn start_cluster(lp: &mut Loop, settings: Settings) -> (Primary<()>, SharedLog, KillGuard) {
    let primary = Primary::new(lp, settings).unwrap();
    let log = record(&primary);
    let guard = KillGuard(log.clone());
    primary.start(lp).unwrap();
    (primary, log, guard)
}

/// Disconnects every worker and runs the loop until the callback ran and
/// the loop is idle.
pub fn shutdown(lp: &mut Loop, primary: &Primary<()>) {
    disconnect_all(lp, primary);
    run_until(lp, WAIT, |lp| !lp.alive());
}

/// Disconnects every worker and waits for the callback (other primaries
/// on the loop keep running).
pub fn disconnect_all(lp: &mut Loop, primary: &Primary<()>) {
    let done = Rc::new(RefCell::new(false));
    let d = done.clone();
    primary.disconnect(lp, move |_, _| *d.borrow_mut() = true);
    run_until(lp, WAIT, |_| *done.borrow());
    assert_eq!(primary.worker_count(), 0, "worker table empty after disconnect");
    assert_eq!(primary.listener_count(), 0, "no listener left after disconnect");
}

/// A port that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Connects, says hello, and reads the whole answer.
pub fn ask(port: u16) -> std::io::Result<String> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    s.write_all(b"hi")?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out)
}

/// Runs `n` [`ask`]s, `concurrency` at a time, on helper threads; the
/// receiver yields each answer.
pub fn ask_many(port: u16, n: usize, concurrency: usize) -> Receiver<std::io::Result<String>> {
    let (tx, rx) = mpsc::channel();
    let next = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    for _ in 0..concurrency.max(1) {
        let (tx, next) = (tx.clone(), next.clone());
        std::thread::spawn(move || {
            while next.fetch_add(1, std::sync::atomic::Ordering::SeqCst) < n {
                if tx.send(ask(port)).is_err() {
                    return;
                }
            }
        });
    }
    rx
}

/// Runs the loop until `n` results came from `rx`, and returns them.
pub fn collect<T>(lp: &mut Loop, rx: &Receiver<T>, n: usize) -> Vec<T> {
    collect_with(lp, &mut (), rx, n)
}

/// [`collect`] for a loop with user data.
pub fn collect_with<D: 'static, T>(lp: &mut Loop<D>, data: &mut D, rx: &Receiver<T>, n: usize) -> Vec<T> {
    let mut out = Vec::with_capacity(n);
    run_until_with(lp, data, Duration::from_secs(60), |_, _| {
        while let Ok(v) = rx.try_recv() {
            out.push(v);
        }
        out.len() >= n
    });
    out
}

/// Runs the loop until `cond(log)` holds.
pub fn wait_for(lp: &mut Loop, log: &SharedLog, mut cond: impl FnMut(&Log) -> bool) {
    let deadline = std::time::Instant::now() + WAIT;
    run_until(lp, WAIT + Duration::from_secs(1), |_| {
        assert!(std::time::Instant::now() < deadline, "condition not met; log: {:#?}", log.borrow());
        cond(&log.borrow())
    });
}

/// `cluster_test! { fn name(lp, policy) [rr = RoundRobin, shared = Shared] { .. } }`
/// makes `name::rr::epoll`, `name::rr::io_uring`, `name::shared::epoll`, ...
/// The body gets `&mut Loop` (`Loop<()>`), or `&mut Loop<D>` when the loop's
/// user data type is named: `fn name(lp: State, policy) [..] { .. }`.
#[macro_export]
macro_rules! cluster_test {
    ($(fn $name:ident($lp:ident $(: $d:ty)?, $policy:ident) [$($m:ident = $p:ident),*] $body:block)*) => {
        $(
            mod $name {
                #[allow(unused_imports)]
                use super::*;
                fn body($lp: &mut uvring::Loop<$($d)?>, $policy: uvring_cluster::SchedPolicy) $body
                $(
                    mod $m {
                        #[test]
                        fn epoll() {
                            uvring_tests::run_on_of(uvring::Backend::Epoll, uvring::LoopOptions::default(), |lp| {
                                super::body(lp, uvring_cluster::SchedPolicy::$p)
                            });
                        }
                        #[test]
                        fn io_uring() {
                            uvring_tests::run_on_of(uvring::Backend::IoUring, uvring::LoopOptions::default(), |lp| {
                                super::body(lp, uvring_cluster::SchedPolicy::$p)
                            });
                        }
                    }
                )*
            }
        )*
    };
}
