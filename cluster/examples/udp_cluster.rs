//! A UDP echo server on a uvring cluster: every worker receives on one
//! socket that the primary bound (Node's `dgram` in a cluster worker).
//!
//! ```text
//! cargo run --release --example udp_cluster -- [--workers N] [--policy rr|shared|reuseport]
//!                                               [--backend epoll|io_uring|auto] [--port P] [--host H]
//! echo hi | nc -u -w1 127.0.0.1 7000
//! ```
//!
//! The primary forks `--workers` workers (default: the number of CPUs; 0
//! serves from this process alone). Each worker asks the primary for the
//! socket ([`Worker::udp_bind`]): the primary binds it once, whatever the
//! policy, and hands every worker a copy; the kernel gives each datagram to
//! one worker, which sends it back prefixed with `[worker <id>] `. A bind
//! error (the port is taken) reaches each worker, which exits 1. SIGINT or
//! SIGTERM disconnects the workers (their sockets close) and the primary
//! exits 0; each worker says how many datagrams it echoed.

use std::net::{IpAddr, SocketAddr};
use uvring::{Backend, Datagram, Loop, OnRecv, OnSignal, RunMode, Signal, Udp};
use uvring_cluster::{
    available_cpus, is_worker, worker_id, Primary, PrimaryData, SchedPolicy, Settings, Worker, WorkerData,
};

/// Longest answer: the prefix and a datagram of up to 64 KiB.
const MAX_ANSWER: usize = 64 * 1024 + 32;

struct Options {
    workers: usize,
    policy: SchedPolicy,
    backend: Backend,
    host: IpAddr,
    port: u16,
}

fn usage(msg: &str) -> ! {
    eprintln!("udp_cluster: {msg}");
    eprintln!("usage: udp_cluster [--workers N] [--policy rr|shared|reuseport] [--backend epoll|io_uring|auto] [--port P] [--host H]");
    std::process::exit(2);
}

fn parse_options() -> Options {
    let mut o = Options {
        workers: available_cpus(),
        policy: SchedPolicy::from_env(),
        backend: Backend::from_env().unwrap_or(Backend::Auto),
        host: IpAddr::from([127, 0, 0, 1]),
        port: std::env::var("PORT").ok().and_then(|p| p.parse().ok()).unwrap_or(7000),
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
            "--help" | "-h" => {
                println!("usage: udp_cluster [--workers N] [--policy rr|shared|reuseport] [--backend epoll|io_uring|auto] [--port P] [--host H]");
                std::process::exit(0);
            }
            other => usage(&format!("unknown argument {other}")),
        }
    }
    o
}

pub fn main() {
    let o = parse_options();
    let result = if is_worker() { run_worker(o) } else { run_primary(o) };
    match result {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("udp_cluster: {e}");
            std::process::exit(1);
        }
    }
}

/// A worker's (or the standalone server's) state: the loop's user data.
struct Echo {
    worker: Option<Worker<Echo>>,
    /// The answer being built (reused: no allocation per datagram).
    answer: Vec<u8>,
    prefix: Vec<u8>,
    echoed: u64,
    failed: bool,
}

impl WorkerData for Echo {
    fn worker(&mut self) -> Option<&mut Worker<Echo>> {
        self.worker.as_mut()
    }
}

fn on_datagram(lp: &mut Loop<Echo>, echo: &mut Echo, udp: Udp, res: uvring::Result<Datagram<'_>>) {
    let Ok(dg) = res else { return };
    echo.answer.clear();
    echo.answer.extend_from_slice(&echo.prefix);
    echo.answer.extend_from_slice(&dg.data[..dg.data.len().min(MAX_ANSWER - echo.prefix.len())]);
    // `udp_send` copies the bytes into its queue.
    if lp.udp_send(udp, &echo.answer, dg.addr, None).is_ok() {
        echo.echoed += 1;
    }
}

fn run_worker(o: Options) -> uvring::Result<i32> {
    let mut lp: Loop<Echo> = Loop::with_backend(Backend::from_env()?)?;
    let id = worker_id().unwrap_or(0);
    let mut echo = Echo {
        worker: None,
        answer: Vec::with_capacity(MAX_ANSWER),
        prefix: format!("[worker {id}] ").into_bytes(),
        echoed: 0,
        failed: false,
    };
    let on_recv = OnRecv::new(on_datagram);
    let addr = SocketAddr::new(o.host, o.port);
    let mut worker = Worker::init(&mut lp)?;
    worker.on_disconnect(move |_, echo: &mut Echo| eprintln!("[worker {id}] echoed {} datagrams; bye", echo.echoed));
    worker.udp_bind(&mut lp, addr, 0, move |lp, echo: &mut Echo, res| match res {
        Ok(u) => {
            if let Err(e) = lp.udp_recv_start(u, &on_recv) {
                eprintln!("[worker {id}] receive: {e}");
            }
        }
        Err(e) => {
            eprintln!("[worker {id}] cannot bind udp {addr}: {e}");
            echo.failed = true;
            lp.stop();
        }
    })?;
    echo.worker = Some(worker);
    // Ctrl-C reaches the whole process group; the primary orchestrates.
    let sigint = lp.signal_start(libc::SIGINT, &OnSignal::new(|_, _, _, _| {}))?;
    lp.unref_handle(sigint)?;
    lp.run(RunMode::Default, &mut echo)?;
    Ok(i32::from(echo.failed))
}

/// The primary's state: the cluster's part and the signal watchers.
struct Supervisor {
    primary: Primary<Supervisor>,
    signals: Vec<Signal>,
}

impl PrimaryData for Supervisor {
    fn primary(&mut self) -> &mut Primary<Supervisor> {
        &mut self.primary
    }
}

fn run_primary(o: Options) -> uvring::Result<i32> {
    if o.workers == 0 {
        return run_standalone(o);
    }
    let me = std::process::id();
    let mut lp: Loop<Supervisor> = Loop::with_backend(o.backend)?;
    let settings = Settings::default().workers(o.workers).policy(o.policy).backend(Some(lp.backend()));
    let mut primary = Primary::new(&mut lp, settings)?;
    eprintln!("[primary {me}] {} workers, {} backend, udp {}:{}", o.workers, lp.backend(), o.host, o.port);
    primary.on_listening(move |_, _, w, addr| {
        eprintln!("[primary {me}] worker {} (pid {}) receiving on udp {addr}", w.id(), w.pid())
    });
    primary.on_exit(move |_, _, w, code, signal| {
        eprintln!("[primary {me}] worker {} (pid {}) exited (code {code}, signal {signal})", w.id(), w.pid())
    });
    let on_stop = OnSignal::new(move |lp, sup: &mut Supervisor, _, signum| {
        eprintln!("[primary {me}] signal {signum}: disconnecting workers");
        for s in sup.signals.drain(..) {
            let _ = lp.close(s, None);
        }
        sup.primary.disconnect(lp, move |_, _| eprintln!("[primary {me}] all workers gone; bye"));
    });
    let mut signals = Vec::new();
    for signum in [libc::SIGINT, libc::SIGTERM] {
        signals.push(lp.signal_start(signum, &on_stop)?);
    }
    primary.start(&mut lp)?;
    let mut sup = Supervisor { primary, signals };
    lp.run(RunMode::Default, &mut sup)?;
    Ok(0)
}

/// `--workers 0`: one process binds and echoes by itself.
fn run_standalone(o: Options) -> uvring::Result<i32> {
    let mut lp: Loop<Echo> = Loop::with_backend(o.backend)?;
    let mut echo = Echo {
        worker: None,
        answer: Vec::with_capacity(MAX_ANSWER),
        prefix: b"[standalone] ".to_vec(),
        echoed: 0,
        failed: false,
    };
    let u = lp.udp_init()?;
    lp.udp_bind(u, SocketAddr::new(o.host, o.port), 0)?;
    lp.udp_recv_start(u, &OnRecv::new(on_datagram))?;
    eprintln!("[{}] echoing on udp {} ({} backend)", std::process::id(), lp.udp_getsockname(u)?, lp.backend());
    let stop = OnSignal::new(move |lp, echo: &mut Echo, sig, _| {
        eprintln!("[{}] echoed {} datagrams; bye", std::process::id(), echo.echoed);
        let _ = lp.close(u, None);
        let _ = lp.close(sig, None);
    });
    for signum in [libc::SIGINT, libc::SIGTERM] {
        let s = lp.signal_start(signum, &stop)?;
        lp.unref_handle(s)?;
    }
    lp.run(RunMode::Default, &mut echo)?;
    Ok(0)
}
