//! HTTP/1.1 keep-alive "hello world" on a uvring cluster.
//!
//! ```text
//! cargo run --release --example hello_cluster -- [--workers N] [--policy rr|shared|reuseport]
//!                                                [--backend epoll|io_uring|auto] [--port P] [--host H]
//!                                                [--unix PATH]
//!                                                [--admin 127.0.0.1:PORT] [--max-memory MIB]
//!                                                [--pid-file PATH] [--upgrade-exec PATH]
//! curl http://127.0.0.1:8000/
//! curl --unix-socket /tmp/hello.sock http://localhost/   # with --unix /tmp/hello.sock
//! ```
//!
//! With `--unix PATH` the server listens on a Unix socket instead of TCP;
//! in a cluster the workers' listens go to the primary, which binds the
//! path once (and removes it when the last worker has closed it).
//!
//! With `--admin ADDR` the primary serves `/health`, `/stats` (JSON) and
//! `/metrics` (Prometheus) on ADDR from its own loop (`Primary::admin_listen`);
//! `/health` answers 503 once a shutdown began. With `--max-memory MIB` a
//! worker whose `RssAnon` grows above MIB MiB is replaced (a new worker
//! listens first, then the old one drains).
//!
//! The primary forks `--workers` workers (default: the number of CPUs; 0
//! serves from this process alone) and logs their events to stderr. The
//! server code is the same standalone and clustered: inside a worker its
//! `listen` goes to the primary. A worker killed with `kill -9` is replaced;
//! SIGINT or SIGTERM disconnects the workers gracefully (open connections
//! finish) and the primary exits 0; SIGHUP replaces every worker in turn
//! (rolling restart). A draining worker (shutdown, a step of a roll)
//! answers the next request on each connection with `Connection: close`
//! and closes it, and closes a connection idle for the drain grace
//! (`Worker::on_drain`). A listen that cannot succeed (the port is taken)
//! ends in a restart storm, and the primary exits 1.
//!
//! Operations (see the README's "Operations" section): started under
//! systemd socket activation (`LISTEN_FDS`), the primary serves on the
//! inherited sockets instead of binding; with `NOTIFY_SOCKET` it speaks
//! sd_notify (`READY=1`, `RELOADING=1` during a SIGHUP roll, `STOPPING=1`,
//! `MAINPID=` after an upgrade, `WATCHDOG=1` when `WATCHDOG_USEC` asks);
//! `--pid-file PATH` writes the primary's pid. SIGUSR2 upgrades the primary
//! with no downtime: it starts a new primary (this program, or
//! `--upgrade-exec PATH`) that inherits the listening sockets, and once the
//! new one's workers listen the old one drains and exits; if the new one
//! fails, the old one says why and serves on.
//!
//! Operations (see the README's "Running a cluster in production"):
//! `--uid N --gid N` run the workers unprivileged, `--cwd DIR` sets their
//! directory, `--stdio inherit|discard|capture` their output (`capture`
//! prefixes each line with `[worker ID pid PID]`), `--cpu-affinity` pins
//! worker i to the i-th CPU, `--log FILE` sends the primary's log (and
//! captured output) to FILE, which SIGUSR1 reopens; SIGTTIN adds a worker
//! and SIGTTOU removes one.
//!
//! Requests are parsed with `httparse`; pipelined requests are answered in
//! order, `Connection: close` (and HTTP/1.0 without keep-alive) is honoured.
//! Per-connection state is recycled, so serving allocates nothing once warm.
//! It lives in the loop's user data (`Server`, passed to `run`): every
//! callback gets it, so nothing is behind a shared cell; a connection's
//! slot in it is the stream's data word. The cluster's part of the state
//! lives there too: a worker's `Server` holds its `Worker`
//! ([`WorkerData`]), the primary's `Supervisor` its `Primary`
//! ([`PrimaryData`]).

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;
use uvring::{
    Backend, Error, Loop, OnConnection, OnListenStop, OnRead, OnShutdown, OnSignal, OnTimer, OnWrite, PipeListener,
    PipeStream, RunMode, Signal, StreamHandle, TcpListener, TcpStream,
};
use uvring_cluster::{
    available_cpus, is_worker, ChildOutput, ListenFds, ListenSource, Primary, PrimaryData, RespawnSettings,
    SchedPolicy, SdNotify, Settings, Worker, WorkerData, WorkerStatus,
};

/// Largest request head (and unparsed pipeline) a connection may buffer.
const MAX_BUFFERED: usize = 64 * 1024;
const BODY: &str = "hello world";

struct Options {
    workers: usize,
    policy: SchedPolicy,
    backend: Backend,
    host: IpAddr,
    port: u16,
    /// `--unix PATH`: serve on this Unix socket instead of TCP.
    unix: Option<PathBuf>,
    /// Operations (issue 10): the workers' user, group, directory, stdio,
    /// CPU pinning; the primary's log file.
    uid: Option<u32>,
    gid: Option<u32>,
    cwd: Option<std::path::PathBuf>,
    stdio: ChildOutput,
    cpu_affinity: bool,
    log: Option<std::path::PathBuf>,
    /// `--pid-file`: where the primary writes its pid.
    pid_file: Option<PathBuf>,
    /// `--upgrade-exec`: the program SIGUSR2 starts (default: this one).
    upgrade_exec: Option<PathBuf>,
    /// `--admin`: where the primary serves its admin endpoint.
    admin: Option<SocketAddr>,
    /// `--max-memory`: the workers' `RssAnon` limit, MiB.
    max_memory_mib: Option<u64>,
    /// `--worker-sched batch|normal` (default: `HELLO_WORKER_SCHED`, else
    /// batch): `Settings::worker_batch_scheduling`.
    worker_batch: bool,
}

const USAGE: &str = "usage: hello_cluster [--workers N] [--policy rr|shared|reuseport] [--backend epoll|io_uring|auto]
                     [--port P] [--host H] [--unix PATH] [--admin ADDR:PORT] [--max-memory MIB]
                     [--pid-file PATH] [--upgrade-exec PATH] [--uid N] [--gid N] [--cwd DIR]
                     [--stdio inherit|discard|capture] [--cpu-affinity] [--log FILE]
                     [--worker-sched batch|normal]
signals (primary): SIGINT/SIGTERM graceful stop, SIGHUP rolling restart, SIGUSR2 upgrade,
                   SIGTTIN/SIGTTOU one worker more/less, SIGUSR1 reopen --log";

/// A bad command line: the reason and the usage on stderr, exit 2.
fn usage(msg: &str) -> ! {
    eprintln!("hello_cluster: {msg}");
    eprintln!("{USAGE}");
    std::process::exit(2);
}

fn parse_options() -> Options {
    let mut o = Options {
        workers: available_cpus(),
        policy: SchedPolicy::from_env(),
        backend: Backend::from_env().unwrap_or(Backend::Auto),
        host: IpAddr::from([0, 0, 0, 0]),
        port: std::env::var("PORT").ok().and_then(|p| p.parse().ok()).unwrap_or(8000),
        unix: None,
        uid: None,
        gid: None,
        cwd: None,
        stdio: ChildOutput::Inherit,
        cpu_affinity: false,
        log: None,
        pid_file: None,
        upgrade_exec: None,
        admin: None,
        max_memory_mib: None,
        worker_batch: std::env::var("HELLO_WORKER_SCHED").map_or(true, |v| v != "normal"),
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = || args.next().unwrap_or_else(|| usage(&format!("{a} needs a value")));
        match a.as_str() {
            "--workers" | "-w" => o.workers = value().parse().unwrap_or_else(|_| usage("bad --workers")),
            "--policy" => o.policy = SchedPolicy::parse(&value()).unwrap_or_else(|| usage("bad --policy")),
            "--backend" => o.backend = Backend::parse(&value()).unwrap_or_else(|| usage("bad --backend")),
            "--port" | "-p" => o.port = value().parse().unwrap_or_else(|_| usage("bad --port")),
            "--host" => o.host = value().parse().unwrap_or_else(|_| usage("bad --host")),
            "--unix" => o.unix = Some(PathBuf::from(value())),
            "--uid" => o.uid = Some(value().parse().unwrap_or_else(|_| usage("bad --uid (a number)"))),
            "--gid" => o.gid = Some(value().parse().unwrap_or_else(|_| usage("bad --gid (a number)"))),
            "--cwd" => o.cwd = Some(value().into()),
            "--stdio" => o.stdio = ChildOutput::parse(&value()).unwrap_or_else(|| usage("bad --stdio")),
            "--cpu-affinity" => o.cpu_affinity = true,
            "--log" => o.log = Some(value().into()),
            "--pid-file" => o.pid_file = Some(PathBuf::from(value())),
            "--upgrade-exec" => o.upgrade_exec = Some(PathBuf::from(value())),
            "--admin" => o.admin = Some(value().parse().unwrap_or_else(|_| usage("bad --admin (want ADDR:PORT)"))),
            "--max-memory" => {
                o.max_memory_mib = Some(value().parse().unwrap_or_else(|_| usage("bad --max-memory (want MiB)")))
            }
            "--worker-sched" => {
                o.worker_batch = match value().as_str() {
                    "batch" => true,
                    "normal" => false,
                    _ => usage("bad --worker-sched (batch or normal)"),
                }
            }
            "--help" | "-h" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => usage(&format!("unknown argument {other}")),
        }
    }
    o
}

pub fn main() {
    let o = parse_options();
    let result = if is_worker() {
        // The primary passes the backend in UVRING_BACKEND.
        run_worker(o)
    } else if o.workers == 0 {
        run_standalone(o)
    } else {
        run_primary(o)
    };
    if let Err(e) = result {
        eprintln!("hello_cluster: {e}");
        std::process::exit(1);
    }
}

/// A loop on `backend`. When `auto` fell back to epoll, says why io_uring
/// was not taken; when no loop can be made, says why and exits.
fn open_loop<D>(backend: Backend, who: &str) -> Loop<D> {
    match Loop::with_backend(backend) {
        Ok(lp) => {
            if let Some(why) = lp.fallback_reason() {
                eprintln!("[{who}] {backend} backend fell back to epoll: {why}");
            }
            lp
        }
        Err(e) => {
            eprintln!("hello_cluster: cannot create a loop with the {backend} backend: {e}");
            std::process::exit(1);
        }
    }
}

fn run_worker(o: Options) -> uvring::Result<()> {
    // The primary passes its loop's backend in UVRING_BACKEND.
    let backend = Backend::from_env()?;
    let mut lp: Loop<Server> = open_loop(backend, &std::process::id().to_string());
    // The cluster's part of the server's state: `listen` below asks the
    // primary through it. If the primary dies, the worker stops the loop
    // (its default), `run` returns and the process exits.
    let mut server = Server { worker: Some(Worker::init(&mut lp)?), ..Server::default() };
    // One line on stdout per listen: with `--stdio capture` the primary
    // logs it as `[worker ID pid PID] serving on ADDR`.
    if let Some(w) = server.worker.as_mut() {
        w.on_listening(|_, _, _, addr| println!("serving on {addr}"));
    }
    // Disconnected (shutdown, a step of a rolling restart): finish every
    // connection. Busy ones close after their next response (which says
    // `Connection: close`); the idle ones after the grace.
    let on_shutdown = close_after_shutdown();
    let on_pipe_shutdown = close_after_shutdown();
    let close_idle = OnTimer::new(move |lp, server: &mut Server, t| {
        let _ = lp.close(t, None);
        for slot in 0..server.conns.len() {
            let Some(s) = server.conns[slot].stream.filter(|_| server.conns[slot].buf.is_none()) else { continue };
            server.release(slot);
            match s {
                ConnStream::Tcp(s) => finish(lp, s, &on_shutdown),
                ConnStream::Pipe(s) => finish(lp, s, &on_pipe_shutdown),
            }
        }
    });
    if let Some(w) = server.worker.as_mut() {
        w.on_drain(move |lp, server: &mut Server, grace| {
            server.draining = true;
            // Unreferenced: a worker whose connections have all closed
            // exits without waiting for it.
            if let Ok(t) = lp.timer_init() {
                let _ = lp.unref_handle(t);
                let _ = lp.timer_start(t, grace, Duration::ZERO, &close_idle);
            }
        });
    }
    // Ctrl-C reaches the whole process group; the primary orchestrates the
    // shutdown, so a worker ignores it rather than dying mid-request.
    let sigint = lp.signal_start(libc::SIGINT, &OnSignal::new(|_, _, _, _| {}))?;
    lp.unref_handle(sigint)?;
    match &o.unix {
        Some(path) => {
            serve_unix(&mut lp, path)?;
        }
        None => {
            serve(&mut lp, SocketAddr::new(o.host, o.port))?;
        }
    }
    lp.run(RunMode::Default, &mut server)?;
    Ok(())
}

fn run_standalone(o: Options) -> uvring::Result<()> {
    let mut lp: Loop<Server> = open_loop(o.backend, &std::process::id().to_string());
    if let Some(path) = &o.unix {
        let server = serve_unix(&mut lp, path)?;
        eprintln!("[{}] serving on unix {} ({} backend)", std::process::id(), path.display(), lp.backend());
        stop_on_signals(&mut lp, server)?;
        lp.run(RunMode::Default, &mut Server::default())?;
        return Ok(());
    }
    let server = serve(&mut lp, SocketAddr::new(o.host, o.port))?;
    eprintln!("[{}] serving on {} ({} backend)", std::process::id(), lp.tcp_getsockname(server)?, lp.backend());
    stop_on_signals(&mut lp, server)?;
    lp.run(RunMode::Default, &mut Server::default())?;
    Ok(())
}

/// The primary's state, the loop's user data: the cluster's part (see
/// [`PrimaryData`]), the signal watchers, and whether a shutdown began.
struct Supervisor {
    primary: Primary<Supervisor>,
    signals: Vec<Signal>,
    shutting_down: bool,
    /// A restart storm left no worker: exit 1.
    failed: bool,
    /// sd_notify, when a service manager listens (`NOTIFY_SOCKET`).
    notify: Option<SdNotify>,
    /// Every worker listened once: readiness was reported.
    ready: bool,
    /// A new primary took over (an upgrade): this one only drains.
    replaced: bool,
    upgrade_exec: Option<PathBuf>,
    pid_file: Option<PathBuf>,
}

impl Supervisor {
    /// Sends an sd_notify state, if a manager listens; a failure is logged.
    fn notify(&self, state: &str) {
        if let Some(Err(e)) = self.notify.as_ref().map(|n| n.notify(state)) {
            eprintln!("[primary {}] sd_notify {state:?} failed: {e}", std::process::id());
        }
    }

    /// Once `workers` workers listen: tells the old primary (after an
    /// upgrade) or the service manager (`READY=1`) that this one serves.
    fn check_ready(&mut self, workers: usize) {
        let listening = self.primary.workers().iter().filter(|w| w.status() == WorkerStatus::Listening).count();
        if self.ready || listening < workers {
            return;
        }
        self.ready = true;
        let me = std::process::id();
        match self.primary.announce_ready() {
            Ok(true) => {
                write_pid_file(self.pid_file.as_deref());
                eprintln!("[primary {me}] upgrade: workers listening; told the old primary to drain")
            }
            Ok(false) => self.notify("READY=1"),
            Err(e) => eprintln!("[primary {me}] upgrade: cannot tell the old primary: {e}"),
        }
    }
}

/// Writes this process's pid to `--pid-file`, if given.
fn write_pid_file(path: Option<&std::path::Path>) {
    let Some(path) = path else { return };
    let me = std::process::id();
    if let Err(e) = std::fs::write(path, format!("{me}\n")) {
        eprintln!("[primary {me}] cannot write the pid file {}: {e}", path.display());
    }
}

/// Starts a graceful shutdown: the workers disconnect (open connections
/// finish); those still there after 10 s are killed.
fn begin_shutdown(lp: &mut Loop<Supervisor>, sup: &mut Supervisor, on_deadline: &OnTimer<Supervisor>) {
    let me = std::process::id();
    sup.primary.disconnect(lp, move |lp, sup| {
        eprintln!("[primary {me}] all workers gone; bye");
        for s in sup.signals.drain(..) {
            let _ = lp.close(s, None);
        }
    });
    if let Ok(t) = lp.timer_init() {
        let _ = lp.unref_handle(t);
        let _ = lp.timer_start(t, Duration::from_secs(10), Duration::ZERO, on_deadline);
    }
}

impl PrimaryData for Supervisor {
    fn primary(&mut self) -> &mut Primary<Supervisor> {
        &mut self.primary
    }
}

/// `--log FILE`: makes FILE the primary's stderr (its log), appending; run
/// again on SIGUSR1 after a rotation moved the file away (nginx's reopen).
fn open_log(path: &std::path::Path) -> uvring::Result<()> {
    uvring::os::reopen_append(path, std::os::fd::AsFd::as_fd(&std::io::stderr()))
}

fn run_primary(o: Options) -> uvring::Result<()> {
    let me = std::process::id();
    if let Some(path) = &o.log {
        open_log(path)?;
    }
    // Sockets from systemd (`LISTEN_FDS`) or from the primary this one
    // replaces (SIGUSR2): claimed before anything is spawned.
    let inherited = ListenFds::from_env()?;
    let mut lp: Loop<Supervisor> = open_loop(o.backend, &format!("primary {me}"));
    let settings = Settings::default()
        .workers(o.workers)
        .policy(o.policy)
        .backend(Some(lp.backend()))
        .respawn(RespawnSettings::default().enabled(true))
        .uid(o.uid)
        .gid(o.gid)
        .cwd(o.cwd.clone())
        .output(o.stdio)
        .cpu_affinity(o.cpu_affinity)
        .worker_batch_scheduling(o.worker_batch)
        .max_memory(o.max_memory_mib.map(|m| m << 20));
    let mut primary = Primary::new(&mut lp, settings)?;
    eprintln!("[primary {me}] {} workers, policy {}, {} backend, port {}", o.workers, o.policy, lp.backend(), o.port);
    if let Some(path) = &o.unix {
        eprintln!("[primary {me}] serving on unix {} (bound once, by this process)", path.display());
    }
    for (fd, why) in inherited.ignored() {
        eprintln!("[primary {me}] inherited fd {fd} ignored: {why}");
    }
    let source = inherited.source();
    let addrs = inherited.addresses();
    let kept = primary.adopt(inherited);
    if source != ListenSource::None {
        let mut list = addrs.iter().map(|a| a.to_string()).collect::<Vec<_>>().join(", ");
        if list.is_empty() {
            list.push_str("none");
        }
        if kept == addrs.len() {
            eprintln!("[primary {me}] adopted {kept} listening socket(s) from {source}: {list}");
        } else {
            // The service manager keeps its copy of each socket, so the
            // workers' own SO_REUSEPORT binds of that port would fail.
            eprintln!("[primary {me}] socket activation needs --policy rr or shared: under reuseport each worker binds a socket of its own ({list} from {source}); exiting");
            std::process::exit(1);
        }
    }
    // A primary started by an upgrade writes the pid file once it serves
    // (`check_ready`): if it fails, the file still names the old one.
    if !primary.awaits_ready() {
        write_pid_file(o.pid_file.as_deref());
    }
    let notify = SdNotify::from_env().unwrap_or_else(|e| {
        eprintln!("[primary {me}] NOTIFY_SOCKET unusable: {e}");
        None
    });
    let workers = o.workers;
    primary.on_fork(move |_, _, w| eprintln!("[primary {me}] worker {} (pid {}) forked", w.id(), w.pid()));
    primary.on_online(move |_, _, w| eprintln!("[primary {me}] worker {} (pid {}) online", w.id(), w.pid()));
    primary.on_listening(move |_, sup: &mut Supervisor, w, addr| {
        eprintln!("[primary {me}] worker {} (pid {}) listening on {addr}", w.id(), w.pid());
        sup.check_ready(workers);
    });
    primary.on_disconnect(move |_, _, w| eprintln!("[primary {me}] worker {} disconnected", w.id()));
    primary.on_exit(move |lp, sup: &mut Supervisor, w, code, signal| {
        let how = if w.exited_after_disconnect() { "after disconnect" } else { "unexpectedly" };
        eprintln!("[primary {me}] worker {} (pid {}) exited {how} (code {code}, signal {signal})", w.id(), w.pid());
        if sup.primary.respawn_stopped() && sup.primary.worker_count() == 0 && !sup.shutting_down {
            // Nothing serves and nothing will: a listen that cannot succeed
            // (the port is taken, say) ends here rather than in a fork loop.
            eprintln!("[primary {me}] no worker left after a restart storm (see the workers' errors above); exiting");
            sup.failed = true;
            sup.shutting_down = true;
            for s in sup.signals.drain(..) {
                let _ = lp.close(s, None);
            }
        }
    });
    primary.on_restart_storm(move |_, _| eprintln!("[primary {me}] restart storm: no more respawns"));
    primary.on_unresponsive(move |_, _, w| {
        eprintln!("[primary {me}] worker {} (pid {}) missed its heartbeats: killed", w.id(), w.pid())
    });
    primary.on_channel_error(move |_, _, w, reason| {
        eprintln!("[primary {me}] worker {} (pid {}) channel error: {reason}", w.id(), w.pid())
    });
    if let Some(limit) = o.max_memory_mib {
        primary.on_memory_limit(move |_, _, w, rss_anon| {
            eprintln!(
                "[primary {me}] worker {} (pid {}) RssAnon {:.1} MiB above the limit of {limit} MiB: replacing it",
                w.id(),
                w.pid(),
                rss_anon as f64 / f64::from(1 << 20)
            )
        });
    }
    if let Some(addr) = o.admin {
        let bound = primary.admin_listen(&mut lp, addr)?;
        eprintln!("[primary {me}] admin on http://{bound} (/health /stats /metrics)");
    }
    // Workers that do not leave in time (a connection that never closes)
    // are killed.
    let on_deadline = OnTimer::new(|lp, sup: &mut Supervisor, t| {
        for w in sup.primary.workers() {
            let _ = sup.primary.kill(lp, w.id(), libc::SIGKILL);
        }
        let _ = lp.close(t, None);
    });
    let deadline = on_deadline.clone();
    let on_stop = OnSignal::new(move |lp, sup: &mut Supervisor, _, signum| {
        if std::mem::replace(&mut sup.shutting_down, true) {
            return;
        }
        eprintln!("[primary {me}] signal {signum}: disconnecting workers");
        if sup.primary.abort_upgrade(lp) {
            eprintln!("[primary {me}] upgrade cancelled: the new primary was told to stop");
        }
        if !sup.replaced {
            sup.notify("STOPPING=1");
        }
        begin_shutdown(lp, sup, &deadline);
    });
    let on_hup = OnSignal::new(move |lp, sup: &mut Supervisor, _, _| {
        eprintln!("[primary {me}] SIGHUP: rolling restart");
        if let Some(Err(e)) = sup.notify.as_ref().map(SdNotify::reloading) {
            eprintln!("[primary {me}] sd_notify RELOADING=1 failed: {e}");
        }
        sup.primary.rolling_restart(lp, move |_, sup| {
            eprintln!("[primary {me}] rolling restart done");
            sup.notify("READY=1");
        });
    });
    // gunicorn's TTIN and TTOU: one worker more, one fewer.
    let on_count = OnSignal::new(move |lp, sup: &mut Supervisor, _, signum| {
        if sup.shutting_down {
            return;
        }
        let (name, now) = (if signum == libc::SIGTTIN { "SIGTTIN" } else { "SIGTTOU" }, sup.primary.settings().workers);
        let next = if signum == libc::SIGTTIN { now + 1 } else { now.saturating_sub(1).max(1) };
        eprintln!("[primary {me}] {name}: workers {now} -> {next}");
        if let Err(e) = sup.primary.set_worker_count(lp, next) {
            eprintln!("[primary {me}] {name}: {e}");
        }
    });
    // nginx's USR1: reopen the log file (after a rotation).
    let log = o.log.clone();
    let on_usr1 = OnSignal::new(move |_, sup: &mut Supervisor, _, _| {
        let Some(path) = &log else { return };
        match open_log(path) {
            Ok(()) => eprintln!(
                "[primary {me}] SIGUSR1: log reopened ({} captured lines dropped so far)",
                sup.primary.captured_lines_dropped()
            ),
            Err(e) => eprintln!("[primary {me}] SIGUSR1: cannot reopen {}: {e}", path.display()),
        }
    });
    // SIGUSR2: a new primary takes the listening sockets over; once it
    // serves, this one drains and exits (nginx's USR2 + QUIT in one step).
    let on_usr2 = OnSignal::new(move |lp, sup: &mut Supervisor, _, _| {
        if sup.shutting_down {
            eprintln!("[primary {me}] SIGUSR2: shutting down; no upgrade");
            return;
        }
        if sup.primary.is_upgrading() {
            eprintln!("[primary {me}] SIGUSR2: an upgrade is already under way");
            return;
        }
        let exec = sup.upgrade_exec.clone();
        let deadline = on_deadline.clone();
        let started = sup.primary.upgrade(lp, exec.as_deref(), move |lp, sup: &mut Supervisor, res| match res {
            Ok(pid) => {
                eprintln!("[primary {me}] upgrade: new primary (pid {pid}) serves; draining workers and exiting");
                sup.replaced = true;
                sup.notify(&format!("MAINPID={pid}"));
                if !std::mem::replace(&mut sup.shutting_down, true) {
                    begin_shutdown(lp, sup, &deadline);
                }
            }
            Err(why) => eprintln!("[primary {me}] upgrade failed: {why}; still serving"),
        });
        let program = exec.map_or_else(|| "this program".to_string(), |p| p.display().to_string());
        match started {
            Ok(pid) => eprintln!("[primary {me}] SIGUSR2: upgrade: started {program} as the new primary (pid {pid})"),
            Err(e) => eprintln!("[primary {me}] upgrade failed: cannot start {program}: {e}; still serving"),
        }
    });
    let mut sup = Supervisor {
        primary,
        signals: Vec::new(),
        shutting_down: false,
        failed: false,
        notify,
        ready: false,
        replaced: false,
        upgrade_exec: o.upgrade_exec.clone(),
        pid_file: o.pid_file.clone(),
    };
    for signum in [libc::SIGINT, libc::SIGTERM] {
        sup.signals.push(lp.signal_start(signum, &on_stop)?);
    }
    sup.signals.push(lp.signal_start(libc::SIGHUP, &on_hup)?);
    for signum in [libc::SIGTTIN, libc::SIGTTOU] {
        sup.signals.push(lp.signal_start(signum, &on_count)?);
    }
    sup.signals.push(lp.signal_start(libc::SIGUSR1, &on_usr1)?);
    sup.signals.push(lp.signal_start(libc::SIGUSR2, &on_usr2)?);
    if let Some(every) = sup.notify.as_ref().and_then(SdNotify::watchdog) {
        // Pinged at half the interval the unit asked for, from the loop:
        // a stuck loop misses it and systemd restarts the service.
        let ping = OnTimer::new(|_, sup: &mut Supervisor, _| sup.notify("WATCHDOG=1"));
        let t = lp.timer_init()?;
        lp.unref_handle(t)?;
        lp.timer_start(t, every / 2, every / 2, &ping)?;
    }
    sup.primary.start(&mut lp)?;
    lp.run(RunMode::Default, &mut sup)?;
    if let Some(path) = &o.pid_file {
        // A new primary (an upgrade) has written its own pid there.
        if std::fs::read_to_string(path).is_ok_and(|s| s.trim() == me.to_string()) {
            let _ = std::fs::remove_file(path);
        }
    }
    if sup.failed {
        std::process::exit(1);
    }
    Ok(())
}

// ---- the HTTP server (the same code standalone and in a worker) ----------

/// Per-connection state, recycled through a free list.
#[derive(Default)]
struct Conn {
    /// Bytes of an incomplete request (or pipeline tail). `None` while no
    /// request is split across reads (the common case parses straight from
    /// the read buffer); taken from `Server::spare_bufs` when one is, and
    /// given back once it empties. Boxed, so that an idle connection's
    /// `Conn` is 24 bytes, not 40.
    #[allow(clippy::box_collection)]
    buf: Option<Box<Vec<u8>>>,
    /// The connection, while open.
    stream: Option<ConnStream>,
    /// `TCP_NODELAY` is set (see `on_read`: once the connection stays open).
    nodelay: bool,
}

/// A connection: TCP, or a Unix socket (`--unix`).
#[derive(Clone, Copy)]
enum ConnStream {
    Tcp(TcpStream),
    Pipe(PipeStream),
}

/// The server's state, the loop's user data: standalone, or a cluster
/// worker (then `worker` holds the cluster's part, see [`WorkerData`]).
struct Server {
    worker: Option<Worker<Server>>,
    conns: Vec<Conn>,
    free: Vec<usize>,
    /// Request buffers no connection needs now (see `Conn::buf`).
    #[allow(clippy::vec_box)] // the boxes move into and out of `Conn::buf`
    spare_bufs: Vec<Box<Vec<u8>>>,
    /// Responses of one read, written with a single `write`.
    out: Vec<u8>,
    /// The worker drains: every response says `Connection: close`.
    draining: bool,
}

/// Connections' state reserved up front: address space only (pages are
/// touched as connections arrive), and growing the vector step by step
/// would leave its old copies resident on the heap.
const CONNS_RESERVE: usize = 16384;

impl Default for Server {
    fn default() -> Server {
        Server {
            worker: None,
            conns: Vec::with_capacity(CONNS_RESERVE),
            free: Vec::new(),
            spare_bufs: Vec::new(),
            out: Vec::new(),
            draining: false,
        }
    }
}

impl WorkerData for Server {
    fn worker(&mut self) -> Option<&mut Worker<Server>> {
        self.worker.as_mut()
    }
}

impl Server {
    fn slot(&mut self) -> usize {
        match self.free.pop() {
            Some(i) => i,
            None => {
                self.conns.push(Conn { buf: None, stream: None, nodelay: false });
                self.conns.len() - 1
            }
        }
    }

    fn release(&mut self, i: usize) {
        if let Some(c) = self.conns.get_mut(i) {
            if c.stream.take().is_some() {
                c.nodelay = false;
                self.free.push(i);
                if let Some(mut buf) = c.buf.take() {
                    buf.clear();
                    self.spare_bufs.push(buf);
                }
            }
        }
    }
}

enum Parsed {
    /// A request of `len` bytes; `close` if the connection ends after it.
    Request {
        len: usize,
        close: bool,
    },
    Partial,
    Bad,
}

fn parse_one(bytes: &[u8]) -> Parsed {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(bytes) {
        Ok(httparse::Status::Complete(head)) => {
            let mut close = req.version == Some(0);
            let mut body = 0usize;
            for h in req.headers.iter() {
                if h.name.eq_ignore_ascii_case("connection") {
                    if h.value.eq_ignore_ascii_case(b"close") {
                        close = true;
                    } else if h.value.eq_ignore_ascii_case(b"keep-alive") {
                        close = false;
                    }
                } else if h.name.eq_ignore_ascii_case("content-length") {
                    match std::str::from_utf8(h.value).ok().and_then(|v| v.trim().parse().ok()) {
                        Some(n) => body = n,
                        None => return Parsed::Bad,
                    }
                } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
                    // Chunked bodies are not needed for hello world.
                    return Parsed::Bad;
                }
            }
            if body > MAX_BUFFERED {
                return Parsed::Bad;
            }
            if bytes.len() < head + body {
                return Parsed::Partial;
            }
            Parsed::Request { len: head + body, close }
        }
        Ok(httparse::Status::Partial) => Parsed::Partial,
        Err(_) => Parsed::Bad,
    }
}

fn respond(out: &mut Vec<u8>, close: bool) {
    out.extend_from_slice(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 11\r\n");
    if close {
        out.extend_from_slice(b"Connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(BODY.as_bytes());
}

/// Answers every complete request in `bytes`; returns (bytes consumed,
/// whether to close after writing). A draining server closes after the
/// first answer.
fn answer_all(out: &mut Vec<u8>, bytes: &[u8], draining: bool) -> (usize, bool) {
    let mut at = 0;
    while at < bytes.len() {
        match parse_one(&bytes[at..]) {
            Parsed::Request { len, close } => {
                let close = close || draining;
                respond(out, close);
                at += len;
                if close {
                    return (at, true);
                }
            }
            Parsed::Partial => {
                if bytes.len() - at > MAX_BUFFERED {
                    out.extend_from_slice(b"HTTP/1.1 431 Request Header Fields Too Large\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
                    return (bytes.len(), true);
                }
                break;
            }
            Parsed::Bad => {
                out.extend_from_slice(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
                return (bytes.len(), true);
            }
        }
    }
    (at, false)
}

/// Listens on `addr` and serves hello world; the connections' state is the
/// loop's `Server`.
fn serve(lp: &mut Loop<Server>, addr: SocketAddr) -> uvring::Result<TcpListener> {
    let on_read = on_read::<TcpStream>();
    let on_connection = OnConnection::new(move |lp, server: &mut Server, srv: TcpListener, res| {
        if let Err(e) = res {
            listen_error(lp, srv, e);
            return;
        }
        let Ok(c) = lp.accept(srv) else { return };
        let slot = server.slot();
        server.conns[slot].stream = Some(ConnStream::Tcp(c));
        let _ = lp.set_data(c, slot);
        if legacy_churn() {
            server.conns[slot].nodelay = lp.tcp_nodelay(c, true).is_ok();
        }
        if lp.read_start(c, &on_read).is_err() {
            server.release(slot);
            let _ = lp.close(c, None);
        }
    });
    let socket = lp.tcp_init()?;
    lp.tcp_bind(socket, addr, 0)?;
    lp.listen(socket, 1024, &on_connection)
}

/// Listens on the Unix socket `path` and serves hello world (`--unix`).
/// Inside a worker the primary binds the path; standalone, the listener's
/// close removes it.
fn serve_unix(lp: &mut Loop<Server>, path: &Path) -> uvring::Result<PipeListener> {
    let on_read = on_read::<PipeStream>();
    let on_connection = OnConnection::new(move |lp, server: &mut Server, srv: PipeListener, res| {
        if let Err(e) = res {
            listen_error(lp, srv, e);
            return;
        }
        let Ok(c) = lp.accept(srv) else { return };
        let slot = server.slot();
        server.conns[slot].stream = Some(ConnStream::Pipe(c));
        let _ = lp.set_data(c, slot);
        if lp.read_start(c, &on_read).is_err() {
            server.release(slot);
            let _ = lp.close(c, None);
        }
    });
    let socket = lp.pipe_init(false)?;
    lp.pipe_bind(socket, path)?;
    lp.listen(socket, 1024, &on_connection)
}

/// A listener's error: a listen that cannot succeed ends the process (the
/// primary's restart storm limit then stops); others (EMFILE, ...) pass,
/// the loop backs off and retries.
fn listen_error(lp: &mut Loop<Server>, srv: impl Into<uvring::HandleId>, e: Error) {
    if e == Error::EADDRINUSE || e == Error::EACCES || e.errno().is_none() {
        eprintln!("[{}] listen failed: {e}", std::process::id());
        let _ = lp.close(srv, None);
        std::process::exit(1);
    }
}

/// Stops `server` on SIGINT or SIGTERM: accepting ends first, and it closes
/// once the accept op has ended, so no connection the kernel already
/// accepted is reset (Node's server.close()).
fn stop_on_signals<L: uvring::ListenerHandle + Copy>(lp: &mut Loop<Server>, server: L) -> uvring::Result<()> {
    let on_stopped = OnListenStop::new(|lp, _, server: L, _| {
        let _ = lp.close(server, None);
    });
    let stop = OnSignal::new(move |lp, _, sig, _| {
        let stopping = lp.is_listen_stopped(server);
        if !stopping
            && lp.listen_stop(server, Some(&on_stopped)).is_err()
            && lp.is_live(server)
            && !lp.is_closing(server)
        {
            let _ = lp.close(server, None);
        }
        let _ = lp.close(sig, None);
    });
    for signum in [libc::SIGINT, libc::SIGTERM] {
        let s = lp.signal_start(signum, &stop)?;
        lp.unref_handle(s)?;
    }
    Ok(())
}

/// The read callback of every connection, TCP or Unix: answers each
/// complete request, keeps an incomplete one for the next read.
///
/// Like nginx, it sets `TCP_NODELAY` when a connection stays open after a
/// response (a `Connection: close` one needs no setsockopt: its one
/// response goes out at once, Nagle holds back only data behind unacked
/// data), and it closes after the last response has been written, without
/// a `shutdown` first (the kernel sends what is queued, then the FIN).
/// `HELLO_CHURN=legacy` in the environment restores the former way (nodelay
/// on every accept, shutdown then close) for A/B benchmarks.
fn on_read<S: StreamHandle + Copy>() -> OnRead<Server, S> {
    let on_shutdown = close_after_shutdown::<S>();
    let on_written = close_after_write::<S>();
    OnRead::new(move |lp: &mut Loop<Server>, server: &mut Server, s: S, res| {
        let slot = lp.data(s).unwrap_or(usize::MAX);
        let bytes = match res {
            Ok(bytes) => bytes,
            Err(_) => {
                server.release(slot);
                let _ = lp.close(s, None);
                return;
            }
        };
        let Some(conn) = server.conns.get_mut(slot) else { return };
        server.out.clear();
        let close = match conn.buf.as_mut() {
            None => {
                // The common case: whole requests in one read, no copy.
                let (used, close) = answer_all(&mut server.out, bytes, server.draining);
                if !close && used < bytes.len() {
                    let mut buf = server.spare_bufs.pop().unwrap_or_default();
                    buf.extend_from_slice(&bytes[used..]);
                    conn.buf = Some(buf);
                }
                close
            }
            Some(buf) => {
                buf.extend_from_slice(bytes);
                let (used, close) = answer_all(&mut server.out, buf, server.draining);
                buf.drain(..used);
                if buf.is_empty() {
                    // Idle again: the buffer goes back to the pool.
                    server.spare_bufs.extend(conn.buf.take());
                }
                close
            }
        };
        if !close && !conn.nodelay {
            if let Some(ConnStream::Tcp(t)) = conn.stream {
                conn.nodelay = lp.tcp_nodelay(t, true).is_ok();
            }
        }
        let direct = close && !legacy_churn() && !server.out.is_empty();
        let cb = if direct { Some(&on_written) } else { None };
        if !server.out.is_empty() && lp.write(s, &server.out, cb).is_err() {
            server.release(slot);
            let _ = lp.close(s, None);
            return;
        }
        if close {
            server.release(slot);
            if direct {
                // `on_written` closes it.
                let _ = lp.read_stop(s);
            } else {
                finish(lp, s, &on_shutdown);
            }
        }
    })
}

/// Ends a connection after what was written to it: reading stops, the write
/// side shuts down once the queue is sent, then it closes.
fn finish<S: StreamHandle>(lp: &mut Loop<Server>, s: S, on_shutdown: &OnShutdown<Server, S>) {
    let _ = lp.read_stop(s);
    if lp.shutdown(s, Some(on_shutdown)).is_err() {
        let _ = lp.close(s, None);
    }
}

/// A write callback that closes the stream (its last response is sent, or
/// failed).
fn close_after_write<S: StreamHandle>() -> OnWrite<Server, S> {
    OnWrite::new(|lp, _, s: S, _| {
        let _ = lp.close(s, None);
    })
}

/// Whether `HELLO_CHURN=legacy` asks for the former connection end (see
/// `on_read`); read once.
fn legacy_churn() -> bool {
    static LEGACY: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *LEGACY.get_or_init(|| std::env::var("HELLO_CHURN").is_ok_and(|v| v == "legacy"))
}

/// A shutdown callback that closes the stream.
fn close_after_shutdown<S: StreamHandle>() -> OnShutdown<Server, S> {
    OnShutdown::new(|lp, _, s: S, _| {
        let _ = lp.close(s, None);
    })
}
