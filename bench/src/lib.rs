//! Benchmark rigs for uvring, shared by the criterion benches
//! (`benches/`) and their sanity tests.
//!
//! Each rig owns one [`Loop`] that runs **both** sides of the traffic: the
//! server and its clients are handles of the same loop on the same thread.
//! The measured thing is therefore the engine alone (its backend, handle
//! bookkeeping, callbacks, buffer pool and the syscalls or ring operations it
//! issues), with no cross-thread wake-ups and no second runtime in the way,
//! and it uses exactly one core of the two the benchmark machine has. The
//! tokio peer in `benches/echo.rs` is built the same way (server and client
//! tasks in one current-thread runtime).
//!
//! * [`EchoRig`]: ping-pong echo. `conns` client connections each send a
//!   message of `msg_size` bytes, wait for all of it to come back, and send
//!   the next one.
//! * [`ChurnRig`]: accept/close churn. Clients connect; the server accepts
//!   and closes at once (as an HTTP server does after a `Connection: close`
//!   reply); the client sees EOF, closes, and connects again.
//! * [`TimerRig`]: starts and stops a set of timers.

use std::cell::Cell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};
use uvring::{Backend, Error, Loop, OnConnect, OnConnection, OnRead, OnTimer, RunMode, Stream, Timer};

/// Why a rig could not be built or run.
#[derive(Debug)]
pub struct RigError(pub String);

impl std::fmt::Display for RigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for RigError {}

impl From<Error> for RigError {
    fn from(e: Error) -> Self {
        RigError(format!("uvring: {e}"))
    }
}

/// Result of the rigs.
pub type RigResult<T> = std::result::Result<T, RigError>;

/// Whether `backend` can be opened here (io_uring may be disabled by the
/// kernel or a seccomp policy); `Err` says why not.
pub fn backend_available(backend: Backend) -> RigResult<()> {
    Loop::with_backend(backend).map(drop).map_err(|e| RigError(format!("{backend}: {e}")))
}

/// Runs `lp` one iteration at a time until `done()` or `limit` passes.
fn run_until(lp: &mut Loop, limit: Duration, what: &str, mut done: impl FnMut() -> bool) -> RigResult<()> {
    let start = Instant::now();
    while !done() {
        if start.elapsed() > limit {
            return Err(RigError(format!("{what}: not done after {limit:?}")));
        }
        lp.run(RunMode::Once)?;
    }
    Ok(())
}

/// Closes every live handle the rig made and runs the loop until all of
/// them are gone (bounded).
fn close_all(lp: &mut Loop, handles: &[Stream]) {
    for &h in handles {
        if lp.is_live(h) && !lp.is_closing(h) {
            let _ = lp.close(h, None);
        }
    }
    let start = Instant::now();
    while lp.handle_count() > 0 && start.elapsed() < Duration::from_secs(5) {
        if lp.run(RunMode::NoWait).is_err() {
            break;
        }
    }
}

/// Listens on an ephemeral port of 127.0.0.1; `on_connection` takes the
/// connections.
fn listen_loopback(lp: &mut Loop, on_connection: &OnConnection) -> RigResult<(Stream, SocketAddr)> {
    let server = lp.tcp_init()?;
    lp.tcp_bind(server, ([127, 0, 0, 1], 0).into(), 0)?;
    lp.listen(server, 1024, on_connection)?;
    let addr = lp.tcp_getsockname(server)?;
    Ok((server, addr))
}

// ---- echo ---------------------------------------------------------------

/// State shared by the echo rig's callbacks (cold: built once).
struct EchoShared {
    /// Clients that finished their round trips in the current batch.
    done: Cell<usize>,
    conns: usize,
    connected: Cell<usize>,
    accepted: Cell<usize>,
    /// A callback failed: the batch cannot finish (the callback also stops
    /// the loop, so `run` returns and reports it).
    failed: Cell<Option<Error>>,
}

/// Ping-pong echo: `conns` clients, `msg_size`-byte messages, server and
/// clients on one loop. See the crate docs.
pub struct EchoRig {
    lp: Loop,
    server: Stream,
    clients: Vec<Stream>,
    /// Server-side connections (cold: filled at set-up).
    accepted: Rc<std::cell::RefCell<Vec<Stream>>>,
    shared: Rc<EchoShared>,
    msg: Vec<u8>,
}

/// A client's per-connection state packs into its handle's `data` word:
/// round trips still to do (high 32 bits) and bytes of the current reply
/// received so far (low 32 bits).
fn pack(remaining: u64, got: u64) -> usize {
    ((remaining << 32) | got) as usize
}

fn unpack(word: usize) -> (u64, u64) {
    let w = word as u64;
    (w >> 32, w & 0xffff_ffff)
}

impl EchoRig {
    /// Builds the server and connects `conns` clients to it.
    pub fn new(backend: Backend, conns: usize, msg_size: usize) -> RigResult<EchoRig> {
        assert!(conns > 0 && msg_size > 0 && msg_size < u32::MAX as usize, "echo rig: bad shape");
        let mut lp = Loop::with_backend(backend)?;
        let shared = Rc::new(EchoShared {
            done: Cell::new(0),
            conns,
            connected: Cell::new(0),
            accepted: Cell::new(0),
            failed: Cell::new(None),
        });
        let accepted = Rc::new(std::cell::RefCell::new(Vec::with_capacity(conns)));

        // Server side: echo every chunk back as it comes.
        let sh = shared.clone();
        let on_server_read = OnRead::new(move |lp, stream, res| match res {
            Ok(bytes) => {
                if let Err(e) = lp.write(stream, bytes, None) {
                    sh.failed.set(Some(e));
                    lp.stop();
                    let _ = lp.close(stream, None);
                }
            }
            Err(_) => {
                let _ = lp.close(stream, None);
            }
        });
        let sh = shared.clone();
        let acc = accepted.clone();
        let on_connection = OnConnection::new(move |lp, server, status| {
            if let Err(e) = status {
                sh.failed.set(Some(e));
                lp.stop();
                return;
            }
            while let Ok(conn) = lp.accept(server) {
                let _ = lp.tcp_nodelay(conn, true);
                if let Err(e) = lp.read_start(conn, &on_server_read) {
                    sh.failed.set(Some(e));
                    lp.stop();
                }
                acc.borrow_mut().push(conn);
                sh.accepted.set(sh.accepted.get() + 1);
            }
        });
        let (server, addr) = listen_loopback(&mut lp, &on_connection)?;

        // Client side: count the reply; when all of it is back, send the
        // next message or report this client done.
        let msg: Vec<u8> = (0..msg_size).map(|i| (i % 251) as u8).collect();
        let sh = shared.clone();
        let payload = msg.clone();
        let on_client_read = OnRead::new(move |lp, stream, res| {
            let bytes = match res {
                Ok(b) => b.len() as u64,
                Err(e) => {
                    sh.failed.set(Some(e));
                    lp.stop();
                    let _ = lp.close(stream, None);
                    return;
                }
            };
            let (mut remaining, mut got) = unpack(lp.data(stream).unwrap_or(0));
            got += bytes;
            if got >= payload.len() as u64 {
                got -= payload.len() as u64;
                remaining = remaining.saturating_sub(1);
                if remaining > 0 {
                    if let Err(e) = lp.write(stream, &payload, None) {
                        sh.failed.set(Some(e));
                        lp.stop();
                    }
                } else {
                    sh.done.set(sh.done.get() + 1);
                    if sh.done.get() == sh.conns {
                        lp.stop();
                    }
                }
            }
            let _ = lp.set_data(stream, pack(remaining, got));
        });
        let sh = shared.clone();
        let on_connect = OnConnect::new(move |lp, stream, status| {
            if let Err(e) = status {
                sh.failed.set(Some(e));
                lp.stop();
                return;
            }
            let _ = lp.tcp_nodelay(stream, true);
            if let Err(e) = lp.read_start(stream, &on_client_read) {
                sh.failed.set(Some(e));
                lp.stop();
            }
            sh.connected.set(sh.connected.get() + 1);
        });
        let mut clients = Vec::with_capacity(conns);
        for _ in 0..conns {
            let c = lp.tcp_init()?;
            lp.tcp_connect(c, addr, &on_connect)?;
            clients.push(c);
        }
        let mut rig = EchoRig { lp, server, clients, accepted, shared, msg };
        let sh = rig.shared.clone();
        run_until(&mut rig.lp, Duration::from_secs(10), "echo set-up", || {
            sh.failed.get().is_some() || (sh.connected.get() == conns && sh.accepted.get() == conns)
        })?;
        if let Some(e) = rig.shared.failed.get() {
            return Err(RigError(format!("echo set-up: {e}")));
        }
        Ok(rig)
    }

    /// The backend the rig runs on.
    pub fn backend(&self) -> Backend {
        self.lp.backend()
    }

    /// Every client does `rounds` round trips (all clients at once); returns
    /// the wall time from the first send to the last reply.
    pub fn run(&mut self, rounds: u64) -> RigResult<Duration> {
        if rounds == 0 {
            return Ok(Duration::ZERO);
        }
        let rounds = rounds.min(u32::MAX as u64);
        self.shared.done.set(0);
        let start = Instant::now();
        for &c in &self.clients {
            self.lp.set_data(c, pack(rounds, 0))?;
            self.lp.write(c, &self.msg, None)?;
        }
        // `stop` from the last client's read callback ends the run.
        while self.shared.done.get() < self.shared.conns {
            if let Some(e) = self.shared.failed.get() {
                return Err(RigError(format!("echo: {e}")));
            }
            self.lp.run(RunMode::Default)?;
        }
        Ok(start.elapsed())
    }
}

impl Drop for EchoRig {
    fn drop(&mut self) {
        let mut all = self.clients.clone();
        all.extend(self.accepted.borrow().iter().copied());
        all.push(self.server);
        close_all(&mut self.lp, &all);
    }
}

// ---- accept/close churn -------------------------------------------------

struct ChurnShared {
    /// Connections still to start in this batch.
    to_start: Cell<u64>,
    /// Connections still to finish (client saw EOF and closed).
    to_finish: Cell<u64>,
    failed: Cell<Option<Error>>,
    addr: Cell<Option<SocketAddr>>,
}

/// Accept/close churn: `parallel` clients at a time connect; the server
/// accepts and closes at once; each client reads EOF, closes, and the next
/// connection starts. Server-side close first keeps TIME_WAIT on the
/// server's side, so the clients' ephemeral ports are not exhausted.
pub struct ChurnRig {
    lp: Loop,
    server: Stream,
    parallel: usize,
    shared: Rc<ChurnShared>,
    on_connect: OnConnect,
    /// Breaks the `on_connect` -> `on_read` -> `on_connect` cycle on drop.
    connect_cb: Rc<std::cell::RefCell<Option<OnConnect>>>,
}

impl ChurnRig {
    pub fn new(backend: Backend, parallel: usize) -> RigResult<ChurnRig> {
        assert!(parallel > 0, "churn rig: parallel must be > 0");
        let mut lp = Loop::with_backend(backend)?;
        let shared = Rc::new(ChurnShared {
            to_start: Cell::new(0),
            to_finish: Cell::new(0),
            failed: Cell::new(None),
            addr: Cell::new(None),
        });
        let sh = shared.clone();
        let on_connection = OnConnection::new(move |lp, server, status| {
            if let Err(e) = status {
                sh.failed.set(Some(e));
                lp.stop();
                return;
            }
            while let Ok(conn) = lp.accept(server) {
                let _ = lp.close(conn, None);
            }
        });
        let (server, addr) = listen_loopback(&mut lp, &on_connection)?;
        shared.addr.set(Some(addr));

        // `on_connect` and `on_read` refer to each other (EOF starts the next
        // connect): the read callback reaches the connect callback through a
        // cell filled right after both exist.
        let connect_cb: Rc<std::cell::RefCell<Option<OnConnect>>> = Rc::new(std::cell::RefCell::new(None));
        let sh = shared.clone();
        let next = connect_cb.clone();
        let on_read = OnRead::new(move |lp, stream, res| {
            match res {
                Ok(_) => return, // the server sends nothing; ignore
                Err(Error::EOF) => {}
                Err(e) => {
                    sh.failed.set(Some(e));
                    lp.stop();
                }
            }
            let _ = lp.close(stream, None);
            sh.to_finish.set(sh.to_finish.get() - 1);
            if sh.to_finish.get() == 0 {
                lp.stop();
                return;
            }
            let cb = next.borrow().clone();
            if let Some(cb) = cb {
                if let Err(e) = start_connect(lp, &sh, &cb) {
                    sh.failed.set(Some(e));
                    lp.stop();
                }
            }
        });
        let sh = shared.clone();
        let on_connect = OnConnect::new(move |lp, stream, status| {
            if let Err(e) = status {
                sh.failed.set(Some(e));
                lp.stop();
                let _ = lp.close(stream, None);
                return;
            }
            if let Err(e) = lp.read_start(stream, &on_read) {
                sh.failed.set(Some(e));
                lp.stop();
            }
        });
        *connect_cb.borrow_mut() = Some(on_connect.clone());
        Ok(ChurnRig { lp, server, parallel, shared, on_connect, connect_cb })
    }

    /// Runs `n` connection lifecycles; returns the wall time.
    pub fn run(&mut self, n: u64) -> RigResult<Duration> {
        if n == 0 {
            return Ok(Duration::ZERO);
        }
        self.shared.to_start.set(n);
        self.shared.to_finish.set(n);
        self.shared.failed.set(None);
        let start = Instant::now();
        for _ in 0..self.parallel {
            start_connect(&mut self.lp, &self.shared, &self.on_connect)?;
        }
        while self.shared.to_finish.get() > 0 {
            if let Some(e) = self.shared.failed.get() {
                return Err(RigError(format!("churn: {e}")));
            }
            self.lp.run(RunMode::Default)?;
        }
        Ok(start.elapsed())
    }
}

/// Starts the next client connection of a churn batch, if any is left.
fn start_connect(lp: &mut Loop, sh: &ChurnShared, cb: &OnConnect) -> uvring::Result<()> {
    if sh.to_start.get() == 0 {
        return Ok(());
    }
    sh.to_start.set(sh.to_start.get() - 1);
    let addr = sh.addr.get().ok_or(Error::EINVAL)?;
    let c = lp.tcp_init()?;
    if let Err(e) = lp.tcp_connect(c, addr, cb) {
        let _ = lp.close(c, None);
        return Err(e);
    }
    Ok(())
}

impl Drop for ChurnRig {
    fn drop(&mut self) {
        close_all(&mut self.lp, &[self.server]);
        self.connect_cb.borrow_mut().take();
    }
}

// ---- timers -------------------------------------------------------------

/// A set of initialised timers to start and stop (`uv_timer_start` /
/// `uv_timer_stop`); none ever fires (timeouts are far in the future).
pub struct TimerRig {
    lp: Loop,
    timers: Vec<Timer>,
    cb: OnTimer,
}

impl TimerRig {
    pub fn new(backend: Backend, count: usize) -> RigResult<TimerRig> {
        let mut lp = Loop::with_backend(backend)?;
        let mut timers = Vec::with_capacity(count);
        for _ in 0..count {
            timers.push(lp.timer_init()?);
        }
        let cb = OnTimer::new(|_, _| {});
        Ok(TimerRig { lp, timers, cb })
    }

    /// Starts every timer (with spread-out timeouts, so the heap does real
    /// work), then stops every one in a different order.
    pub fn start_stop(&mut self) -> RigResult<()> {
        let n = self.timers.len();
        for (i, &t) in self.timers.iter().enumerate() {
            // 7919 is prime: the timeouts are a permutation-like spread.
            let timeout = 60_000 + ((i * 7919) % n.max(1)) as u64;
            self.lp.timer_start(t, timeout, 0, &self.cb)?;
        }
        // Stop in a zigzag order (first, last, second, second last, ...):
        // neither the insertion order nor the heap's.
        for k in 0..n {
            let i = if k % 2 == 0 { k / 2 } else { n - 1 - k / 2 };
            let t = self.timers[i];
            self.lp.timer_stop(t)?;
        }
        Ok(())
    }

    /// Timers currently active (0 after `start_stop`).
    pub fn active(&self) -> usize {
        self.timers.iter().filter(|&&t| self.lp.is_active(t)).count()
    }
}

impl Drop for TimerRig {
    fn drop(&mut self) {
        for &t in &self.timers {
            let _ = self.lp.close(t, None);
        }
        let _ = self.lp.run(RunMode::NoWait);
    }
}
