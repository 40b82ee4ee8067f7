//! Test helper for the cluster scenarios: run as a worker (forked by a
//! primary in a test), it plays the worker half of the scenario named by its
//! first argument; run directly with a `primary-*` scenario, it is a primary
//! that re-executes itself as its workers.
//!
//! Workers report to the primary with short text messages (`"listening
//! <port>"`, `"error <errno>"`, ...), which the tests read.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::net::SocketAddr;
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStringExt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use uvring::{
    Datagram, Loop, OnConnect, OnConnection, OnRead, OnRecv, OnShutdown, PipeListener, RunMode, TcpListener, TcpStream,
    Udp,
};
use uvring_cluster::{is_primary, Primary, PrimaryData, Settings, Worker, WorkerData};

/// Counts every heap allocation of the process (the allocation test asks a
/// worker for the count over a stretch of connections).
struct CountingAlloc;

static ALLOCS: AtomicUsize = AtomicUsize::new(0);
static ALLOCS_AT_START: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call is forwarded unchanged to the system allocator, which
// upholds the GlobalAlloc contract; counting is an atomic add.
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        trace_alloc();
        // SAFETY: forwarded from the caller.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: forwarded from the caller.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        trace_alloc();
        // SAFETY: forwarded from the caller.
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded from the caller.
        unsafe { System.dealloc(ptr, layout) }
    }
}

static TRACING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
thread_local! { static IN_TRACE: Cell<bool> = const { Cell::new(false) }; }

fn trace_alloc() {
    if TRACING.load(Ordering::Relaxed) && !IN_TRACE.with(Cell::get) {
        IN_TRACE.with(|c| c.set(true));
        eprintln!("ALLOC TRACE:\n{}", std::backtrace::Backtrace::force_capture());
        IN_TRACE.with(|c| c.set(false));
    }
}

#[global_allocator]
static GLOBAL: CountingAlloc = CountingAlloc;

/// A worker process's state: the loop's user data, which every callback
/// gets; the cluster's part of it is `worker`.
#[derive(Default)]
struct State {
    worker: Option<Worker<State>>,
    /// `stall-on-first`: the first connection has stalled the process.
    stalled: bool,
    /// `two-servers`: 0, then 1 once the servers listened again.
    round: u32,
    /// `two-servers`: listening events seen.
    listened: u32,
    /// `two-servers`: the servers of the current round.
    servers: Vec<TcpListener>,
    /// `store`: reads that did not give back the value written.
    store_bad: u32,
    /// `store`: reads answered.
    store_done: u32,
    /// `unix-serve`: the pipe servers.
    pipe_servers: Vec<PipeListener>,
    /// `store-atomic`: increments answered, and those that failed.
    adds_done: u32,
    adds_failed: u32,
}

/// `store-atomic`: one compare-and-swap increment of "cas": read, then swap
/// in the value plus one; a mismatch retries with the current value it
/// brought back. Reports "cas-done" after `left` increments.
fn cas_increment(lp: &mut Lp, d: &mut State, current: Option<Vec<u8>>, left: u32, tries: u32) {
    if left == 0 {
        send(lp, d, &format!("cas-done {tries}"));
        return;
    }
    let n: i64 = current.as_deref().and_then(|v| std::str::from_utf8(v).ok()?.parse().ok()).unwrap_or(0);
    let next = (n + 1).to_string();
    let Some(w) = d.worker() else { return };
    let swapped = next.clone().into_bytes();
    let res = w.store_compare_and_swap(lp, b"cas", current.as_deref(), next.as_bytes(), move |lp, d, r| match r {
        Ok(uvring_cluster::CasOutcome::Swapped) => cas_increment(lp, d, Some(swapped), left - 1, tries + 1),
        Ok(uvring_cluster::CasOutcome::Mismatch(cur)) => {
            let cur = cur.map(<[u8]>::to_vec);
            cas_increment(lp, d, cur, left, tries + 1)
        }
        Err(e) => send(lp, d, &format!("cas-error {e}")),
    });
    if let Err(e) = res {
        send(lp, d, &format!("cas-error {e}"));
    }
}

impl WorkerData for State {
    fn worker(&mut self) -> Option<&mut Worker<State>> {
        self.worker.as_mut()
    }
}

type Lp = Loop<State>;

fn main() {
    // SCENARIO (per-worker, through fork_with_env) overrides the argument.
    let scenario = std::env::var("SCENARIO").ok().or_else(|| std::env::args().nth(1)).unwrap_or_default();
    if is_primary() {
        primary_main(&scenario);
        return;
    }
    // NOFILE=n: this worker's RLIMIT_NOFILE, set before anything opens an fd
    // (the limits test runs workers at 64).
    if let Some(n) = std::env::var("NOFILE").ok().and_then(|v| v.parse::<u64>().ok()) {
        let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        // SAFETY: plain syscall with a valid struct.
        assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) }, 0);
        // Lowered for good (the limits test), or raised back up to the hard
        // limit (a worker of a primary at its own limit).
        let lim = if n <= lim.rlim_cur {
            libc::rlimit { rlim_cur: n, rlim_max: n }
        } else {
            libc::rlimit { rlim_cur: n.min(lim.rlim_max), ..lim }
        };
        // SAFETY: plain syscall with a valid, initialized struct.
        let rc = unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) };
        assert_eq!(rc, 0, "setrlimit NOFILE {n}");
    }
    let mut lp: Lp = Loop::new().expect("loop");
    let mut state = State { worker: Some(Worker::init(&mut lp).expect("worker init")), ..State::default() };
    worker_main(&mut lp, &mut state, &scenario);
    // Returns when the loop runs empty, or when the primary is gone (the
    // worker's default action stops the loop): the process exits.
    lp.run(RunMode::Default, &mut state).expect("run");
}

fn port_env() -> u16 {
    std::env::var("PORT").ok().and_then(|p| p.parse().ok()).unwrap_or(0)
}

fn local(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// Sends `msg` to the primary.
fn send(lp: &mut Lp, d: &mut State, msg: &str) {
    if let Some(w) = d.worker() {
        let _ = w.send(lp, msg.as_bytes());
    }
}

/// "ok", or the errno of a failed call.
fn outcome(res: Option<uvring::Result<()>>) -> String {
    match res {
        Some(Ok(())) => "ok".into(),
        Some(Err(e)) => e.errno().unwrap_or(0).to_string(),
        None => "none".into(),
    }
}

/// A connection handler that answers the first bytes with `"worker <id>\n"`
/// and then shuts down and closes.
fn answer_once(id: u32) -> OnRead<State, TcpStream> {
    let reply = format!("worker {id}\n").into_bytes();
    let on_shutdown = OnShutdown::new(|lp: &mut Lp, _, s: TcpStream, _| {
        let _ = lp.close(s, None);
    });
    OnRead::new(move |lp, _, s, res| match res {
        Ok(_) => {
            let _ = lp.read_stop(s);
            if lp.write(s, &reply, None).is_err() || lp.shutdown(s, Some(&on_shutdown)).is_err() {
                let _ = lp.close(s, None);
            }
        }
        Err(_) => {
            let _ = lp.close(s, None);
        }
    })
}

/// Reads until EOF, then closes (a connection that stays open until the peer goes).
fn hold_until_eof() -> OnRead<State, TcpStream> {
    OnRead::new(|lp, _, s, res| {
        if res.is_err() {
            let _ = lp.close(s, None);
        }
    })
}

fn listen(lp: &mut Lp, port: u16, on_conn: &OnConnection<State, TcpListener>) -> TcpListener {
    let s = lp.tcp_init().expect("tcp_init");
    lp.tcp_bind(s, local(port), 0).expect("bind");
    lp.listen(s, 511, on_conn).expect("listen")
}

/// A server that answers each connection once; errors are reported.
fn serving(id: u32) -> OnConnection<State, TcpListener> {
    let on_read = answer_once(id);
    OnConnection::new(move |lp, d, srv, res| match res {
        Ok(()) => {
            if let Ok(c) = lp.accept(srv) {
                let _ = lp.read_start(c, &on_read);
            }
        }
        Err(e) => {
            send(lp, d, &format!("error {}", e.errno().unwrap_or(0)));
            let _ = lp.close(srv, None);
        }
    })
}

/// The `udp-echo` scenario (see `worker_main`).
fn udp_echo(lp: &mut Lp, w: &mut Worker<State>, id: u32) {
    let reply = format!("worker {id}").into_bytes();
    let on_recv = OnRecv::new(move |lp: &mut Lp, _: &mut State, u: Udp, res: uvring::Result<Datagram<'_>>| {
        if let Ok(dg) = res {
            let _ = lp.udp_send(u, &reply, dg.addr, None);
        }
    });
    w.on_message(|lp, d, msg, _| {
        if msg == b"udp-close" {
            let sockets: Vec<Udp> = d.worker().map(|w| w.udp_sockets().collect()).unwrap_or_default();
            for u in sockets {
                let _ = lp.close(u, None);
            }
            send(lp, d, "udp-closed");
        } else if msg == b"fds" {
            let n = std::fs::read_dir("/proc/self/fd").map(|d| d.count()).unwrap_or(0);
            send(lp, d, &format!("fds {n}"));
        }
    });
    let bound = w.udp_bind(lp, local(port_env()), 0, move |lp, d, res| match res {
        Ok(u) => {
            if let Err(e) = lp.udp_recv_start(u, &on_recv) {
                send(lp, d, &format!("udp-error {}", e.errno().unwrap_or(0)));
            }
        }
        Err(e) => send(lp, d, &format!("udp-error {}", e.errno().unwrap_or(0))),
    });
    bound.expect("udp_bind");
}

fn worker_main(lp: &mut Lp, state: &mut State, scenario: &str) {
    let w = state.worker.as_mut().expect("a worker");
    let id = w.id();
    w.on_listening(|lp, d, _s, addr| send(lp, d, &format!("listening {}", addr.port())));
    if std::env::var_os("ON_PRIMARY_GONE").is_some_and(|v| v == "say") {
        // Replaces the default (stop the loop): says so, then stops it.
        w.on_primary_gone(move |lp, _| {
            println!("gone {id}");
            lp.stop();
        });
    }
    match scenario {
        // Serve PORT (default 0) until disconnected.
        "serve" => {
            w.on_message(|lp, d, msg, _| {
                if msg == b"sched" {
                    let normal = uvring::os::sched_is_normal();
                    send(lp, d, if normal { "sched normal" } else { "sched other" });
                } else if msg == b"fds" {
                    let n = std::fs::read_dir("/proc/self/fd").map(|d| d.count()).unwrap_or(0);
                    send(lp, d, &format!("fds {n}"));
                } else if msg == b"alloc-start" {
                    send(lp, d, "alloc-started");
                    ALLOCS_AT_START.store(ALLOCS.load(Ordering::SeqCst), Ordering::SeqCst);
                    TRACING.store(std::env::var_os("ALLOC_TRACE").is_some(), Ordering::SeqCst);
                } else if let Some(mib) = std::str::from_utf8(msg).ok().and_then(|m| m.strip_prefix("grow ")) {
                    // Allocate and touch MIB MiB, kept for the process's
                    // life (the memory-limit test's worker grows).
                    let mib: usize = mib.parse().unwrap_or(0);
                    let block: &'static mut [u8] = Vec::leak(vec![1u8; mib << 20]);
                    std::hint::black_box(&block);
                    send(lp, d, &format!("grew {mib}"));
                } else if msg == b"alloc-stop" {
                    TRACING.store(false, Ordering::SeqCst);
                    let total = ALLOCS.load(Ordering::SeqCst);
                    let n = total - ALLOCS_AT_START.load(Ordering::SeqCst);
                    // The total shows the counter counts at all.
                    send(lp, d, &format!("allocs {n} of {total}"));
                }
            });
            listen(lp, port_env(), &serving(id));
        }
        // Serve; close the server at the first connection (refusing the
        // rest of its batch), but answer that connection.
        "close-on-first" => {
            let on_read = answer_once(id);
            listen(
                lp,
                port_env(),
                &OnConnection::new(move |lp, _, srv, res| {
                    if res.is_ok() {
                        if let Ok(c) = lp.accept(srv) {
                            let _ = lp.read_start(c, &on_read);
                        }
                        let _ = lp.close(srv, None);
                    }
                }),
            );
        }
        // Serve; at the first connection, answer it and disconnect from
        // inside the connection callback (the rest of its batch is refused).
        "disconnect-on-first" => {
            let on_read = answer_once(id);
            listen(
                lp,
                port_env(),
                &OnConnection::new(move |lp, d: &mut State, srv, res| {
                    if res.is_ok() {
                        if let Ok(c) = lp.accept(srv) {
                            let _ = lp.read_start(c, &on_read);
                        }
                        if let Some(w) = d.worker() {
                            w.disconnect(lp);
                        }
                    }
                }),
            );
        }
        // Serve, but block the whole process for a long time at the first
        // connection (so the rest of its batch stays unacknowledged).
        "stall-on-first" => {
            let on_read = answer_once(id);
            listen(
                lp,
                port_env(),
                &OnConnection::new(move |lp, d: &mut State, srv, res| {
                    if res.is_ok() {
                        if let Ok(c) = lp.accept(srv) {
                            let _ = lp.read_start(c, &on_read);
                        }
                        if !std::mem::replace(&mut d.stalled, true) {
                            std::thread::sleep(Duration::from_secs(30));
                        }
                    }
                }),
            );
        }
        // Serve, but spin (a busy loop, for ever) at the first connection:
        // the loop stops answering heartbeats, and the rest of its batch
        // stays unacknowledged.
        "spin-on-first" => {
            listen(
                lp,
                port_env(),
                &OnConnection::new(move |lp, _, srv, res| {
                    if res.is_ok() {
                        let _c = lp.accept(srv);
                        loop {
                            std::hint::spin_loop();
                        }
                    }
                }),
            );
        }
        // Say "drain <grace ms>" when told to drain (by the primary, or by
        // this worker's own disconnect when the primary says "leave").
        "drain-report" => {
            w.on_drain(|lp, d, grace| send(lp, d, &format!("drain {}", grace.as_millis())));
            w.on_message(|lp, d, msg, _| {
                if msg == b"leave" {
                    if let Some(w) = d.worker() {
                        w.disconnect(lp);
                    }
                }
            });
        }
        // Serve, only as worker 1: a later worker (a rolling replacement)
        // never listens.
        "serve-first-only" => {
            if id == 1 {
                listen(lp, port_env(), &serving(id));
            }
        }
        // Two servers on port 0, closed and listened again; report ports.
        "two-servers" => {
            let conn = serving(id);
            w.on_listening(move |lp, d, _s, addr| {
                send(lp, d, &format!("listening {} {}", d.round, addr.port()));
                d.listened += 1;
                if d.listened == 2 && d.round == 0 {
                    d.round = 1;
                    for s in std::mem::take(&mut d.servers) {
                        let _ = lp.close(s, None);
                    }
                    let a = listen(lp, 0, &conn);
                    let b = listen(lp, 0, &conn);
                    d.servers.extend([a, b]);
                }
            });
            let conn = serving(id);
            let a = listen(lp, 0, &conn);
            let b = listen(lp, 0, &conn);
            state.servers.extend([a, b]);
        }
        // Listen on PORT; on EADDRINUSE report it, and listen again when told.
        "retry-bind" => {
            let conn = serving(id);
            listen(lp, port_env(), &conn);
            w.on_message(move |lp, _, msg, _| {
                if msg == b"retry" {
                    listen(lp, port_env(), &conn);
                }
            });
        }
        // Say "tag <TAG>" (TAG from the environment given at fork), answer
        // SIGUSR1 with "usr1 <TAG>" (the signal does not end the worker), and
        // stay connected until told otherwise.
        "tagged" => {
            let tag = std::env::var("TAG").unwrap_or_default();
            let said = format!("tag {tag}");
            let on_usr1 = uvring::OnSignal::new(move |lp, d: &mut State, _, _| send(lp, d, &format!("usr1 {tag}")));
            let sig = lp.signal_start(libc::SIGUSR1, &on_usr1).expect("signal");
            lp.unref_handle(sig).expect("unref");
            // Said once the handler is in place.
            send(lp, state, &said);
        }
        // Exit with status 42 once online.
        "exit42" => std::process::exit(42),
        // Nothing: stay connected until told otherwise.
        "idle" => {}
        // UDP through the primary (issue 11): bind 127.0.0.1:PORT, answer
        // each datagram with "worker <id>"; "udp-error <errno>" if the bind
        // fails. Messages: "udp-close" closes the socket ("udp-closed"),
        // "fds" reports the open fds.
        "udp-echo" => udp_echo(lp, w, id),
        // A pipe server on UNIX_PATH (a leading '@' names an abstract
        // socket), through the primary; answers "worker <id>\n" and
        // closes. "unix-close" closes it ("unix-closed"); errors are
        // "error <errno>".
        "unix-serve" => {
            let path = std::env::var("UNIX_PATH").unwrap_or_default();
            let path = match path.strip_prefix('@') {
                Some(name) => {
                    std::path::PathBuf::from(std::ffi::OsString::from_vec([&[0u8][..], name.as_bytes()].concat()))
                }
                None => std::path::PathBuf::from(path),
            };
            let reply = format!("worker {id}\n").into_bytes();
            let on_conn = OnConnection::new(move |lp: &mut Lp, d: &mut State, srv: PipeListener, res| match res {
                Ok(()) => {
                    if let Ok(c) = lp.accept(srv) {
                        let _ = lp.write(c, &reply, None);
                        let _ = lp.close(c, None);
                    }
                }
                Err(e) => {
                    send(lp, d, &format!("error {}", e.errno().unwrap_or(0)));
                    let _ = lp.close(srv, None);
                }
            });
            w.on_message(|lp, d, msg, _| {
                if msg == b"unix-close" {
                    for l in d.pipe_servers.drain(..) {
                        let _ = lp.close(l, None);
                    }
                    send(lp, d, "unix-closed");
                }
            });
            let s = lp.pipe_init(false).expect("pipe_init");
            lp.pipe_bind(s, &path).expect("pipe_bind");
            let l = lp.listen(s, 128, &on_conn).expect("listen");
            state.pipe_servers.push(l);
        }
        // Listen on the primary's fd LISTEN_FD (Node's `listen({fd})`);
        // answers like "serve", errors as "error <errno>".
        "fd-serve" => {
            let fd = std::env::var("LISTEN_FD").ok().and_then(|v| v.parse().ok()).unwrap_or(-1);
            w.listen_fd(lp, fd, 511, &serving(id)).expect("listen_fd");
        }
        // An exclusive listen on PORT (Node's `exclusive: true`): bound
        // here, not through the primary; "error <errno>" if it fails.
        "exclusive" => {
            let s = lp.tcp_init().expect("tcp_init");
            // The primary does not know of this server: it is the
            // application's to close when the worker drains.
            w.on_drain(|lp, d, _| {
                for l in d.servers.drain(..) {
                    if lp.is_live(l) && !lp.is_closing(l) {
                        let _ = lp.close(l, None);
                    }
                }
            });
            match lp.tcp_bind(s, local(port_env()), uvring::TCP_EXCLUSIVE) {
                Ok(()) => {
                    let l = lp.listen(s, 511, &serving(id)).expect("listen");
                    state.servers.push(l);
                }
                Err(e) => {
                    let _ = lp.close(s, None);
                    send(lp, state, &format!("error {}", e.errno().unwrap_or(0)));
                }
            }
        }
        // Connect to PORT (a server in the test) and keep the connection
        // until the peer closes it.
        "hold-connection" => {
            let c = lp.tcp_init().expect("tcp_init");
            let on_read = hold_until_eof();
            lp.tcp_connect(
                c,
                local(port_env()),
                &OnConnect::new(move |lp, d, c, res| {
                    if res.is_ok() {
                        let _ = lp.read_start(c, &on_read);
                        send(lp, d, "connected");
                    } else {
                        let _ = lp.close(c, None);
                    }
                }),
            )
            .expect("connect");
        }
        // Keep-alive: answer "worker <id>" to every read, keep the
        // connection until the client closes it.
        "keepalive" => {
            let reply = format!("worker {id}\n").into_bytes();
            let on_read = OnRead::new(move |lp: &mut Lp, _, s: TcpStream, res| match res {
                Ok(_) => {
                    if lp.write(s, &reply, None).is_err() {
                        let _ = lp.close(s, None);
                    }
                }
                Err(_) => {
                    let _ = lp.close(s, None);
                }
            });
            listen(
                lp,
                port_env(),
                &OnConnection::new(move |lp, _, srv, res| {
                    if res.is_ok() {
                        if let Ok(c) = lp.accept(srv) {
                            let _ = lp.read_start(c, &on_read);
                        }
                    }
                }),
            );
        }
        // Serve, and hold every accepted connection open until the client closes.
        "serve-hold" => {
            let on_read = hold_until_eof();
            listen(
                lp,
                0,
                &OnConnection::new(move |lp, d, srv, res| {
                    if res.is_ok() {
                        if let Ok(c) = lp.accept(srv) {
                            let _ = lp.read_start(c, &on_read);
                            send(lp, d, "accepted");
                        }
                    }
                }),
            );
        }
        // Echo messages back; answer "big" with a large payload and a socket.
        "messages" => {
            w.on_message(|lp, d, msg, fds| {
                if msg.len() > 1000 {
                    let ok = msg.iter().enumerate().all(|(i, &b)| b == (i % 251) as u8);
                    let fd_ok = fds.take(0).is_some_and(|fd| uvring::os::local_addr(fd.as_fd()).is_ok());
                    send(lp, d, &format!("big {} {ok} {fd_ok}", msg.len()));
                    // And the other way: a large payload with a socket.
                    let payload: Vec<u8> = (0..800_004usize).map(|i| (i % 251) as u8).collect();
                    let sock = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
                    if let Some(w) = d.worker() {
                        let _ = w.send_with_fds(lp, &payload, &[sock.as_fd()]);
                    }
                } else if let Some(n) = std::str::from_utf8(msg).ok().and_then(|m| m.strip_prefix("try-send ")) {
                    // Send n bytes; report how it went ("sent n ok|<errno>").
                    let n: usize = n.parse().unwrap_or(0);
                    let payload: Vec<u8> = (0..n).map(|i| (i % 251) as u8).collect();
                    let res = d.worker().map(|w| w.send(lp, &payload));
                    send(lp, d, &format!("sent {n} {}", outcome(res)));
                } else if let Some(n) = std::str::from_utf8(msg).ok().and_then(|m| m.strip_prefix("try-set ")) {
                    // Store a value of n bytes; report the call's result and,
                    // from its callback, the store's.
                    let n: usize = n.parse().unwrap_or(0);
                    let value = vec![7u8; n];
                    let res = d.worker().map(|w| {
                        w.store_set(lp, b"big", &value, move |lp, d, r| {
                            send(lp, d, &format!("stored {n} {}", outcome(Some(r))))
                        })
                    });
                    send(lp, d, &format!("set {n} {}", outcome(res)));
                } else {
                    let mut reply = b"echo ".to_vec();
                    reply.extend_from_slice(msg);
                    if let Some(w) = d.worker() {
                        let _ = w.send(lp, &reply);
                    }
                }
            });
            send(lp, state, "hello from worker");
        }
        // Shared store: set own keys, read them back, read a common key.
        "store" => {
            let n = 100u32;
            for j in 0..n {
                let key = format!("w{id}:{j}");
                let val = format!("{}", id * 1000 + j);
                let _ = w.store_set(lp, key.as_bytes(), val.as_bytes(), |_, _, _| {});
                let _ = w.store_set(lp, b"shared", val.as_bytes(), |_, _, _| {});
                let _ = w.store_get(lp, key.as_bytes(), move |lp, d, v| {
                    if v.ok().flatten() != Some(val.as_bytes()) {
                        d.store_bad += 1;
                    }
                    d.store_done += 1;
                    if d.store_done == n {
                        let msg = format!("store-done {}", d.store_bad);
                        send(lp, d, &msg);
                    }
                });
            }
        }
        // Atomic store operations: ADDS increments of "counter" (all sent at
        // once), then CAS compare-and-swap increments of "cas", then a
        // keys listing and a delete.
        "store-atomic" => {
            let adds: u32 = std::env::var("ADDS").ok().and_then(|v| v.parse().ok()).unwrap_or(1000);
            let cas: u32 = std::env::var("CAS").ok().and_then(|v| v.parse().ok()).unwrap_or(50);
            for _ in 0..adds {
                let res = w.store_add(lp, b"counter", 1, move |lp, d, r| {
                    d.adds_done += 1;
                    d.adds_failed += u32::from(r.is_err());
                    if d.adds_done == adds {
                        let msg = format!("adds-done {} failed {}", d.adds_done, d.adds_failed);
                        send(lp, d, &msg);
                    }
                });
                assert!(res.is_ok(), "store_add: {res:?}");
            }
            // Keys of this worker: KEYS of them, listed back by prefix.
            let keys: u32 = std::env::var("KEYS").ok().and_then(|v| v.parse().ok()).unwrap_or(100);
            for j in 0..keys {
                let _ = w.store_set(lp, format!("k:{id}:{j:04}").as_bytes(), b"v", |_, _, _| {});
            }
            let prefix = format!("k:{id}:");
            let _ = w.store_keys(lp, prefix.clone().as_bytes(), move |lp, d, r| {
                let msg = match r {
                    Ok(list) => {
                        let want: Vec<Vec<u8>> = (0..keys).map(|j| format!("k:{id}:{j:04}").into_bytes()).collect();
                        format!("keys {} {}", list.len(), list == want)
                    }
                    Err(e) => format!("keys-error {e}"),
                };
                send(lp, d, &msg);
                // Delete one, then count again.
                let Some(w) = d.worker() else { return };
                let first = format!("k:{id}:0000");
                let _ = w.store_delete(lp, first.as_bytes(), move |lp, d, r| {
                    send(lp, d, &format!("deleted {r:?}"));
                    let Some(w) = d.worker() else { return };
                    let _ = w.store_keys(lp, prefix.as_bytes(), |lp, d, r| {
                        let msg = format!("keys-after-delete {}", r.map_or(0, |l| l.len()));
                        send(lp, d, &msg);
                    });
                });
            });
            cas_increment(lp, state, None, cas, 0);
        }
        // A store request that the primary does not answer in time fails
        // with ETIMEDOUT; the primary stalls (on "stall") until this worker
        // has seen the timeout (it creates STALL_FILE), then answers late.
        "store-timeout" => {
            w.set_store_timeout(Duration::from_millis(100));
            send(lp, state, "stall");
            let Some(w) = state.worker() else { return };
            let res = w.store_get(lp, b"x", |lp, d, r| {
                let first = match r {
                    Err(e) => e.errno().unwrap_or(0).to_string(),
                    Ok(v) => format!("answered {v:?}"),
                };
                if let Some(f) = std::env::var_os("STALL_FILE") {
                    std::fs::write(f, b"timed out").expect("STALL_FILE");
                }
                let Some(w) = d.worker() else { return };
                w.set_store_timeout(Duration::from_secs(20));
                let pending = w.store_pending();
                let _ = w.store_get(lp, b"x", move |lp, d, r| {
                    let msg =
                        format!("store-timeout {first} pending {pending} then {:?}", r.map(|v| v.map(<[u8]>::to_vec)));
                    send(lp, d, &msg);
                });
            });
            assert!(res.is_ok());
        }
        // Write to stdout and stderr (captured by the primary): whole lines,
        // a line in two writes, a 10,000-byte line, LINES numbered lines;
        // then "chatter-done".
        "chatter" => {
            use std::io::Write;
            let lines: usize = std::env::var("LINES").ok().and_then(|v| v.parse().ok()).unwrap_or(0);
            let mut out = std::io::stdout().lock();
            let mut err = std::io::stderr().lock();
            let _ = out.write_all(b"hello out\n").and_then(|()| out.flush());
            let _ = err.write_all(b"hello err\n");
            let _ = out.write_all(b"par").and_then(|()| out.flush());
            std::thread::sleep(Duration::from_millis(50));
            let _ = out.write_all(b"tial\n").and_then(|()| out.flush());
            let mut long = vec![b'x'; 10_000];
            long.push(b'\n');
            let _ = out.write_all(&long).and_then(|()| out.flush());
            for i in 0..lines {
                let _ = writeln!(out, "line {i:05}");
            }
            let _ = out.flush();
            // The worker's ends are blocking (O_NONBLOCK clear).
            let flags = std::fs::read_to_string("/proc/self/fdinfo/1").unwrap_or_default();
            let flags = flags.lines().find_map(|l| l.strip_prefix("flags:")).unwrap_or("").trim().to_string();
            let nonblocking = u32::from_str_radix(&flags, 8).map_or(true, |f| f & 0o4000 != 0);
            send(lp, state, &format!("chatter-done nonblocking {nonblocking}"));
        }
        // Write garbage on the channel: the primary must drop this worker
        // (and this worker then exits, its channel gone).
        "garbage" => {
            // SAFETY: fd 3 is this worker's channel (the primary puts it
            // there), open for the life of the process; borrowed only to
            // duplicate it.
            let ch = unsafe { std::os::fd::BorrowedFd::borrow_raw(3) };
            if let Ok(dup) = ch.try_clone_to_owned() {
                use std::io::Write;
                // A frame header with an unsupported version.
                let _ = std::fs::File::from(dup).write_all(&[0xff; 64]);
            }
        }
        // Write bad input on the channel (HOSTILE = random | huge-header |
        // oversized) and keep running: the primary must report it, kill
        // this worker and replace it.
        // HOSTILE_ONCE names a file: the first worker to find it missing
        // creates it and is hostile; later ones (its replacement) serve.
        "hostile" if std::env::var_os("HOSTILE_ONCE").is_some_and(|f| std::path::Path::new(&f).exists()) => {
            listen(lp, port_env(), &serving(id));
        }
        "hostile" => {
            if let Some(f) = std::env::var_os("HOSTILE_ONCE") {
                std::fs::write(f, b"hostile").expect("HOSTILE_ONCE");
            }
            let bytes: Vec<u8> = match std::env::var("HOSTILE").as_deref() {
                Ok("huge-header") => {
                    // A Message header claiming 0xFFFFFFF0 bytes.
                    let mut h = vec![1u8, 0x0b, 0, 0];
                    h.extend_from_slice(&0xFFFF_FFF0u32.to_le_bytes());
                    h
                }
                Ok("oversized") => {
                    // A whole Message frame one byte above the default limit.
                    let len = uvring_cluster::DEFAULT_MAX_MESSAGE_LEN + 1;
                    let mut f = vec![1u8, 0x0b, 0, 0];
                    f.extend_from_slice(&(len as u32).to_le_bytes());
                    f.resize(8 + len, b'x');
                    f
                }
                // Bytes from a small xorshift generator, never a valid
                // header (the first byte is not version 1).
                _ => {
                    let mut x: u64 = 0x9e37_79b9_7f4a_7c15 ^ u64::from(std::process::id());
                    let mut v: Vec<u8> = (0..4096)
                        .map(|_| {
                            x ^= x << 13;
                            x ^= x >> 7;
                            x ^= x << 17;
                            x as u8
                        })
                        .collect();
                    v[0] = 0xee;
                    v
                }
            };
            // Outlive the channel: nothing here ends the process.
            w.on_primary_gone(|_, _| {});
            let t = lp.timer_init().expect("timer");
            let every = Duration::from_secs(1);
            lp.timer_start(t, every, every, &uvring::OnTimer::new(|_, _, _| {})).expect("timer");
            // SAFETY: fd 3 is this worker's channel (the primary puts it
            // there), open for the life of the process; borrowed only to
            // duplicate it.
            let ch = unsafe { std::os::fd::BorrowedFd::borrow_raw(3) };
            if let Ok(dup) = ch.try_clone_to_owned() {
                use std::io::Write;
                std::thread::spawn(move || {
                    let _ = std::fs::File::from(dup).write_all(&bytes);
                });
            }
        }
        other => panic!("unknown worker scenario {other:?}"),
    }
}

/// A primary process's state (the `primary-*` scenarios): the cluster's
/// part, and the workers seen online.
struct Supervisor {
    primary: Primary<Supervisor>,
    online: u32,
}

impl PrimaryData for Supervisor {
    fn primary(&mut self) -> &mut Primary<Supervisor> {
        &mut self.primary
    }
}

/// Primary-side scenarios for tests that must kill the primary itself.
fn primary_main(scenario: &str) {
    let mut lp: Loop<Supervisor> = Loop::new().expect("loop");
    let mut sup = match scenario {
        // Fork three workers: one idle, one serving (its listener keeps
        // its loop alive: the worker's default action when the primary
        // dies must stop it), and one serving that replaces that action
        // (it says "gone <id>" first); print their pids, and wait to be
        // killed.
        "primary-kill" => {
            let settings = Settings::default().args(Some(vec!["idle".into()])).workers(0);
            let mut primary = Primary::new(&mut lp, settings).expect("primary");
            primary.fork(&mut lp).expect("fork");
            primary.fork_with_env(&mut lp, &[("SCENARIO", "serve")]).expect("fork");
            primary.fork_with_env(&mut lp, &[("SCENARIO", "serve"), ("ON_PRIMARY_GONE", "say")]).expect("fork");
            primary.on_online(|_, d: &mut Supervisor, _| {
                d.online += 1;
                if d.online == 3 {
                    let pids: Vec<String> = d.primary.workers().iter().map(|w| w.pid().to_string()).collect();
                    println!("pids {}", pids.join(" "));
                }
            });
            Supervisor { primary, online: 0 }
        }
        // A primary at its own fd limit (PRIMARY_NOFILE, the soft limit;
        // its worker raises its own back with NOFILE): one `rr` worker
        // serving PORT; prints "port <n>" once it listens.
        "primary-fd-limit" => {
            if let Some(n) = std::env::var("PRIMARY_NOFILE").ok().and_then(|v| v.parse::<u64>().ok()) {
                let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
                // SAFETY: plain syscalls with a valid struct.
                unsafe {
                    assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim), 0);
                    lim.rlim_cur = n;
                    assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &lim), 0);
                }
            }
            let settings = Settings::default()
                .args(Some(vec!["serve".into()]))
                .workers(1)
                .policy(uvring_cluster::SchedPolicy::RoundRobin)
                .raise_fd_limit(false);
            let mut primary = Primary::new(&mut lp, settings).expect("primary");
            primary.on_listening(|_, _, _, addr| println!("port {}", addr.port()));
            Supervisor { primary, online: 0 }
        }
        other => panic!("unknown primary scenario {other:?}"),
    };
    sup.primary.start(&mut lp).expect("start");
    lp.run(RunMode::Default, &mut sup).expect("run");
}
