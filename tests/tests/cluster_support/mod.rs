//! Shared pieces of the cluster scenario tests: settings that fork the
//! `cluster-worker` helper, the test's loop data ([`Cluster`]: the primary
//! and the log of its events, which kills the workers if a test fails),
//! clients on helper threads, and a graceful shutdown.
#![allow(dead_code)]

pub mod hello;
pub mod ops;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::mpsc::{self, Receiver};
use std::time::Duration;
use uvring::{Loop, OnTimer, RunMode};
use uvring_cluster::{ChildOutput, Primary, PrimaryData, PrimaryId, SchedPolicy, Settings, WorkerId};

/// The worker program.
pub const WORKER: &str = env!("CARGO_BIN_EXE_cluster-worker");

/// Runs `lp` with `data` until `done(lp, data)`, panicking after `timeout`.
/// A ticking timer bounds each blocking poll, so the deadline is checked
/// even when nothing happens.
pub fn run_until<D: 'static>(
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
    Settings::default()
        .exec(Some(WORKER.into()))
        .args(Some(vec![scenario.into()]))
        .workers(workers)
        .policy(policy)
        .output(ChildOutput::Inherit)
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
    /// `(worker, reason)` of each channel error.
    pub channel_errors: Vec<(WorkerId, String)>,
    /// `Primary::disconnect`'s callback ran.
    pub disconnected: bool,
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

/// The loop data of a cluster test: the primary and the log of its
/// events, and for scenarios with two clusters on one loop, a second
/// primary and its log. Dropped during a panic, it kills every worker
/// either primary forked, so a failing test leaves no process behind (a
/// passing test has already reaped them).
pub struct Cluster {
    pub primary: Primary<Cluster>,
    pub log: Log,
    pub second: Option<(Primary<Cluster>, Log)>,
    /// Connections the test's own servers hold.
    pub streams: Vec<uvring::TcpStream>,
}

impl PrimaryData for Cluster {
    fn primary(&mut self) -> &mut Primary<Cluster> {
        &mut self.primary
    }

    fn primary_by_id(&mut self, id: PrimaryId) -> Option<&mut Primary<Cluster>> {
        if self.primary.id() == id {
            return Some(&mut self.primary);
        }
        self.second.as_mut().map(|(p, _)| p).filter(|p| p.id() == id)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let second = self.second.iter().flat_map(|(_, l)| l.pids.iter());
            for &pid in self.log.pids.iter().chain(second) {
                // SAFETY: plain syscall on a pid this test forked.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
    }
}

impl Cluster {
    /// A primary with `settings` whose events are logged; nothing forked.
    pub fn new(lp: &mut Loop<Cluster>, settings: Settings) -> Cluster {
        Cluster { primary: recorded(lp, settings), log: Log::default(), second: None, streams: Vec::new() }
    }

    /// Adds a second cluster with `settings` on the same loop (logged in
    /// its own log); nothing forked.
    pub fn add_second(&mut self, lp: &mut Loop<Cluster>, settings: Settings) {
        self.second = Some((recorded(lp, settings), Log::default()));
    }

    /// The second primary.
    pub fn second(&mut self) -> &mut Primary<Cluster> {
        &mut self.second.as_mut().expect("a second cluster").0
    }

    /// The second primary's log.
    pub fn second_log(&self) -> &Log {
        &self.second.as_ref().expect("a second cluster").1
    }

    /// The log of primary `id`.
    pub fn log_of(&mut self, id: PrimaryId) -> &mut Log {
        match &mut self.second {
            Some((p, log)) if p.id() == id => log,
            _ => &mut self.log,
        }
    }

    /// The pid of live worker `id`.
    pub fn pid(&self, id: WorkerId) -> i32 {
        self.primary.worker(id).expect("a worker").pid()
    }
}

/// A primary with `settings` whose every event is logged in the loop
/// data's log for it.
fn recorded(lp: &mut Loop<Cluster>, settings: Settings) -> Primary<Cluster> {
    let mut p = Primary::new(lp, settings).unwrap();
    let id = p.id();
    p.on_fork(move |_, d, w| d.log_of(id).pids.push(w.pid()));
    p.on_online(move |_, d, w| d.log_of(id).online.push(w.id()));
    p.on_listening(move |_, d, w, addr| d.log_of(id).listening.push((w.id(), addr.port())));
    p.on_message(move |_, d, w, bytes, _| {
        d.log_of(id).messages.push((w.id(), String::from_utf8_lossy(bytes).into_owned()))
    });
    p.on_disconnect(move |_, d, w| d.log_of(id).disconnects.push(w.id()));
    p.on_channel_error(move |_, d, w, reason| d.log_of(id).channel_errors.push((w.id(), reason.to_string())));
    p.on_exit(move |_, d, w, code, signal| {
        d.log_of(id).exits.push((w.id(), code, signal, w.exited_after_disconnect()))
    });
    p
}

/// Kills these pids if the test panics (for a test whose loop data is not
/// a [`Cluster`]).
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

/// Makes a primary with `settings`, records its events and starts it: the
/// opening of most scenarios.
pub fn start_cluster(lp: &mut Loop<Cluster>, settings: Settings) -> Cluster {
    let mut c = Cluster::new(lp, settings);
    c.primary.start(lp).unwrap();
    c
}

/// Disconnects every worker and runs the loop until the callback ran and
/// the loop is idle.
pub fn shutdown(lp: &mut Loop<Cluster>, c: &mut Cluster) {
    let id = c.primary.id();
    disconnect_all(lp, c, id);
    run_until(lp, c, WAIT, |lp, _| !lp.alive());
}

/// Disconnects every worker of primary `id` and waits for the callback
/// (another primary on the loop keeps running).
pub fn disconnect_all(lp: &mut Loop<Cluster>, c: &mut Cluster, id: PrimaryId) {
    let p = c.primary_by_id(id).expect("a primary");
    p.disconnect(lp, move |_, d| d.log_of(id).disconnected = true);
    run_until(lp, c, WAIT, |_, c| c.log_of(id).disconnected);
    let p = c.primary_by_id(id).expect("a primary");
    assert_eq!(p.worker_count(), 0, "worker table empty after disconnect");
    assert_eq!(p.listener_count(), 0, "no listener left after disconnect");
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
pub fn collect<D: 'static, T>(lp: &mut Loop<D>, data: &mut D, rx: &Receiver<T>, n: usize) -> Vec<T> {
    let mut out = Vec::with_capacity(n);
    run_until(lp, data, Duration::from_secs(60), |_, _| {
        while let Ok(v) = rx.try_recv() {
            out.push(v);
        }
        out.len() >= n
    });
    out
}

/// Runs the loop until `cond(log)` holds for the (first) primary's log.
pub fn wait_for(lp: &mut Loop<Cluster>, c: &mut Cluster, mut cond: impl FnMut(&Log) -> bool) {
    let deadline = std::time::Instant::now() + WAIT;
    run_until(lp, c, WAIT + Duration::from_secs(1), |_, c| {
        assert!(std::time::Instant::now() < deadline, "condition not met; log: {:#?}", c.log);
        cond(&c.log)
    });
}

/// [`wait_for`] on the second primary's log.
pub fn wait_for_second(lp: &mut Loop<Cluster>, c: &mut Cluster, mut cond: impl FnMut(&Log) -> bool) {
    let deadline = std::time::Instant::now() + WAIT;
    run_until(lp, c, WAIT + Duration::from_secs(1), |_, c| {
        assert!(std::time::Instant::now() < deadline, "condition not met; log: {:#?}", c.second_log());
        cond(c.second_log())
    });
}

/// The loop data a [`cluster_test!`] body's loop runs over: [`Cluster`]
/// unless the test names another.
pub type TestData<D = Cluster> = D;

/// `cluster_test! { fn name(lp, policy) [rr = RoundRobin, shared = Shared] { .. } }`
/// makes `name::rr::epoll`, `name::rr::io_uring`, `name::shared::epoll`, ...
/// The body gets `&mut Loop<Cluster>`, or `&mut Loop<D>` when the loop's
/// user data type is named: `fn name(lp: State, policy) [..] { .. }`.
#[macro_export]
macro_rules! cluster_test {
    ($(fn $name:ident($lp:ident $(: $d:ty)?, $policy:ident) [$($m:ident = $p:ident),*] $body:block)*) => {
        $(
            mod $name {
                #[allow(unused_imports)]
                use super::*;
                fn body($lp: &mut uvring::Loop<TestData<$($d)?>>, $policy: uvring_cluster::SchedPolicy) $body
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
