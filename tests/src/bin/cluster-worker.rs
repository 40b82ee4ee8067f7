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
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use uvring::{Loop, OnConnect, OnConnection, OnRead, OnShutdown, RunMode, TcpListener, TcpStream};
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
                    if v != Some(val.as_bytes()) {
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
                .policy(uvring_cluster::SchedPolicy::RoundRobin);
            let mut primary = Primary::new(&mut lp, settings).expect("primary");
            primary.on_listening(|_, _, _, addr| println!("port {}", addr.port()));
            Supervisor { primary, online: 0 }
        }
        other => panic!("unknown primary scenario {other:?}"),
    };
    sup.primary.start(&mut lp).expect("start");
    lp.run(RunMode::Default, &mut sup).expect("run");
}
