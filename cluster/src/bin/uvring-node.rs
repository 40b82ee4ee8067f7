//! `uvring-node`: runs an unchanged Node.js program as a cluster of Node
//! workers under uvring's primary, which speaks Node's own cluster protocol.
//!
//! ```text
//! uvring-node [--workers N] [--policy rr|shared] [--exec-argv "ARGS"] [--node PATH] app.js [args...]
//! ```
//!
//! Each worker is `node [exec-argv] app.js [args...]` with `NODE_UNIQUE_ID`
//! set, so `cluster.isPrimary` is false in it and its worker branch runs;
//! its `listen` asks this primary, which binds once and hands connections
//! over (`rr`, several in flight per worker) or sends the listening socket
//! (`shared`). A worker that dies is replaced (with back-off, and a
//! restart-storm limit); SIGHUP replaces every worker in turn (rolling
//! restart); SIGINT or SIGTERM disconnects the workers (their servers
//! close, open connections finish) and the primary exits 0 once they are
//! gone (killing what is left after the drain timeout). Events go to
//! stderr, one line each. The seed's shared memory (`Manager` / `User`,
//! `isSharedMemoryMessage` messages) is answered by the primary's store;
//! other messages from workers are logged.
//!
//! The loop backend is chosen by `UVRING_BACKEND` (epoll, io_uring, auto).

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;
use uvring::{Loop, OnSignal, OnTimer, RunMode, Signal};
use uvring_cluster::{available_cpus, Primary, PrimaryData, RespawnSettings, SchedPolicy, Settings, WorkerProtocol};

const USAGE: &str =
    "usage: uvring-node [--workers N] [--policy rr|shared] [--exec-argv \"ARGS\"] [--node PATH] app.js [args...]";

const HELP: &str = "\
Runs app.js as N unchanged Node.js cluster workers under uvring's primary.

Options:
  --workers N        workers to run (default: the number of CPUs)
  --policy rr|shared rr: the primary accepts and hands connections over
                     (default); shared: workers accept on the listening socket
  --exec-argv ARGS   options for node itself, space-separated (\"--max-old-space-size=512\")
  --node PATH        the node binary (default: node, found in PATH)
  -h, --help         this text

Signals: SIGHUP rolling restart; SIGINT/SIGTERM graceful shutdown.
Environment: UVRING_BACKEND=epoll|io_uring|auto chooses the primary's loop backend.";

struct Options {
    workers: usize,
    policy: SchedPolicy,
    exec_argv: Vec<OsString>,
    node: PathBuf,
    app: Vec<OsString>,
}

fn usage(msg: &str) -> ! {
    eprintln!("uvring-node: {msg}");
    eprintln!("{USAGE}");
    std::process::exit(2);
}

fn parse_options() -> Options {
    let mut o = Options {
        workers: available_cpus(),
        policy: SchedPolicy::RoundRobin,
        exec_argv: Vec::new(),
        node: PathBuf::from("node"),
        app: Vec::new(),
    };
    let mut args = std::env::args_os().skip(1);
    while let Some(a) = args.next() {
        let flag = a.to_string_lossy().into_owned();
        let mut value = |name: &str| args.next().unwrap_or_else(|| usage(&format!("{name} needs a value")));
        match flag.as_str() {
            "-h" | "--help" => {
                println!("{USAGE}\n\n{HELP}");
                std::process::exit(0);
            }
            "--workers" => {
                o.workers = value("--workers")
                    .to_string_lossy()
                    .parse()
                    .ok()
                    .filter(|&n| n > 0)
                    .unwrap_or_else(|| usage("--workers takes a number above 0"))
            }
            "--policy" => {
                o.policy = match SchedPolicy::parse(&value("--policy").to_string_lossy()) {
                    Some(p @ (SchedPolicy::RoundRobin | SchedPolicy::Shared)) => p,
                    _ => usage("--policy is rr or shared"),
                }
            }
            "--exec-argv" => {
                o.exec_argv = value("--exec-argv").to_string_lossy().split_whitespace().map(OsString::from).collect()
            }
            "--node" => o.node = PathBuf::from(value("--node")),
            "--" => {
                o.app.extend(args.by_ref());
            }
            f if f.starts_with('-') && o.app.is_empty() => usage(&format!("unknown option {f}")),
            _ => {
                o.app.push(a);
                o.app.extend(args.by_ref());
            }
        }
    }
    if o.app.is_empty() {
        usage("no app.js given");
    }
    o
}

/// The primary's state: the cluster's part, the signal watchers, whether a
/// shutdown began, and whether the cluster failed (exit 1).
struct Supervisor {
    primary: Primary<Supervisor>,
    signals: Vec<Signal>,
    shutting_down: bool,
    failed: bool,
}

impl PrimaryData for Supervisor {
    fn primary(&mut self) -> &mut Primary<Supervisor> {
        &mut self.primary
    }
}

pub fn main() {
    let o = parse_options();
    if let Err(e) = run(o) {
        eprintln!("uvring-node: {e}");
        std::process::exit(1);
    }
}

fn close_signals(lp: &mut Loop<Supervisor>, sup: &mut Supervisor) {
    for s in sup.signals.drain(..) {
        let _ = lp.close(s, None);
    }
}

fn run(o: Options) -> uvring::Result<()> {
    let me = std::process::id();
    let mut lp: Loop<Supervisor> = Loop::new()?;
    let mut args = o.exec_argv.clone();
    args.extend(o.app.iter().cloned());
    let settings = Settings::default()
        .workers(o.workers)
        .policy(o.policy)
        .protocol(WorkerProtocol::Node)
        .exec(Some(o.node.clone()))
        .args(Some(args))
        .respawn(RespawnSettings::default().enabled(true));
    let drain_timeout = settings.drain_timeout;
    let mut primary = Primary::new(&mut lp, settings)?;
    eprintln!(
        "[uvring-node {me}] {} node workers of {}, policy {}, {} backend",
        o.workers,
        o.app[0].to_string_lossy(),
        o.policy,
        lp.backend()
    );
    primary.on_fork(move |_, _, w| eprintln!("[uvring-node {me}] worker {} (pid {}) forked", w.id(), w.pid()));
    primary.on_online(move |_, _, w| eprintln!("[uvring-node {me}] worker {} (pid {}) online", w.id(), w.pid()));
    primary.on_listening(move |_, _, w, addr| {
        eprintln!("[uvring-node {me}] worker {} (pid {}) listening on {addr}", w.id(), w.pid())
    });
    primary.on_message(move |_, _, w, bytes, _| {
        eprintln!("[uvring-node {me}] worker {} message: {}", w.id(), String::from_utf8_lossy(bytes))
    });
    primary.on_disconnect(move |_, _, w| eprintln!("[uvring-node {me}] worker {} disconnected", w.id()));
    primary.on_channel_error(move |_, _, w, reason| {
        eprintln!("[uvring-node {me}] worker {} (pid {}) channel error: {reason}", w.id(), w.pid())
    });
    primary.on_restart_storm(move |_, _| eprintln!("[uvring-node {me}] restart storm: no more respawns"));
    primary.on_exit(move |lp, sup: &mut Supervisor, w, code, signal| {
        let how = if w.exited_after_disconnect() { "after disconnect" } else { "unexpectedly" };
        eprintln!("[uvring-node {me}] worker {} (pid {}) exited {how} (code {code}, signal {signal})", w.id(), w.pid());
        if sup.primary.respawn_stopped() && sup.primary.worker_count() == 0 && !sup.shutting_down {
            eprintln!(
                "[uvring-node {me}] no worker left after a restart storm (see the workers' errors above); exiting"
            );
            sup.failed = true;
            sup.shutting_down = true;
            close_signals(lp, sup);
        }
    });
    // Workers that do not leave in time are killed (each is also killed
    // by the primary at its own drain deadline; this ends the wait for
    // respawns under way too).
    let on_deadline = OnTimer::new(|lp, sup: &mut Supervisor, t| {
        for w in sup.primary.workers() {
            let _ = sup.primary.kill(lp, w.id(), libc::SIGKILL);
        }
        let _ = lp.close(t, None);
    });
    let on_stop = OnSignal::new(move |lp, sup: &mut Supervisor, _, signum| {
        if std::mem::replace(&mut sup.shutting_down, true) {
            return;
        }
        eprintln!("[uvring-node {me}] signal {signum}: disconnecting workers");
        sup.primary.disconnect(lp, move |lp, sup| {
            let s = sup.primary.stats();
            eprintln!(
                "[uvring-node {me}] connections: {} handed off, {} refused or not received, {} redistributed, {} closed unroutable",
                s.handed_off, s.refused, s.redistributed, s.closed_unroutable
            );
            eprintln!("[uvring-node {me}] all workers gone; bye");
            close_signals(lp, sup);
        });
        if let Ok(t) = lp.timer_init() {
            let _ = lp.unref_handle(t);
            let _ = lp.timer_start(t, drain_timeout + Duration::from_secs(1), Duration::ZERO, &on_deadline);
        }
    });
    let on_hup = OnSignal::new(move |lp, sup: &mut Supervisor, _, _| {
        eprintln!("[uvring-node {me}] SIGHUP: rolling restart");
        sup.primary.rolling_restart(lp, move |_, _| eprintln!("[uvring-node {me}] rolling restart done"));
    });
    let mut sup = Supervisor { primary, signals: Vec::new(), shutting_down: false, failed: false };
    for signum in [libc::SIGINT, libc::SIGTERM] {
        sup.signals.push(lp.signal_start(signum, &on_stop)?);
    }
    sup.signals.push(lp.signal_start(libc::SIGHUP, &on_hup)?);
    sup.primary.start(&mut lp)?;
    lp.run(RunMode::Default, &mut sup)?;
    if sup.failed {
        std::process::exit(1);
    }
    Ok(())
}
