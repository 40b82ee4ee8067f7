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
//! * [`UdpRig`]: datagram ping-pong. `sockets` client UDP sockets, each
//!   connected to one echo server socket, send a datagram and wait for its
//!   echo before sending the next.
//! * [`TimerRig`]: starts and stops a set of timers.
//!
//! The rigs use the engine as an application should: each rig's state is
//! the loop's data `D` (handed to [`Loop::run`] and to every callback), a
//! client's progress sits in a `Vec` indexed by its handle's `data` word,
//! and every callback is built once and shared by all connections. Once the
//! connections are up, a round trip allocates nothing.

pub mod proctree;

use std::net::SocketAddr;
use std::time::{Duration, Instant};
use uvring::{
    Backend, Datagram, Error, Loop, OnConnect, OnConnection, OnRead, OnRecv, OnTimer, RunMode, TcpListener, TcpStream,
    Timer, Udp,
};

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
    Loop::<()>::with_backend(backend).map(drop).map_err(|e| RigError(format!("{backend}: {e}")))
}

/// Runs `lp` one iteration at a time until `done(d)` or `limit` passes.
fn run_until<D>(lp: &mut Loop<D>, d: &mut D, limit: Duration, what: &str, done: impl Fn(&D) -> bool) -> RigResult<()> {
    let start = Instant::now();
    while !done(d) {
        if start.elapsed() > limit {
            return Err(RigError(format!("{what}: not done after {limit:?}")));
        }
        lp.run(RunMode::Once, d)?;
    }
    Ok(())
}

/// Closes every live handle of the rig's loop and runs the loop until all
/// of them are gone (bounded).
fn close_all<D>(lp: &mut Loop<D>, d: &mut D) {
    lp.walk(|lp, h| {
        if !lp.is_closing(h) {
            let _ = lp.close(h, None);
        }
    });
    let start = Instant::now();
    while lp.handle_count() > 0 && start.elapsed() < Duration::from_secs(5) {
        if lp.run(RunMode::NoWait, d).is_err() {
            break;
        }
    }
}

/// Listens on an ephemeral port of 127.0.0.1; `on_connection` takes the
/// connections.
fn listen_loopback<D: 'static>(
    lp: &mut Loop<D>,
    on_connection: &OnConnection<D, TcpListener>,
) -> RigResult<(TcpListener, SocketAddr)> {
    let sock = lp.tcp_init()?;
    lp.tcp_bind(sock, ([127, 0, 0, 1], 0).into(), 0)?;
    let server = lp.listen(sock, 1024, on_connection)?;
    let addr = lp.tcp_getsockname(server)?;
    Ok((server, addr))
}

// ---- echo ---------------------------------------------------------------

/// One client connection of the echo rig; its index in
/// [`EchoState::clients`] is the stream's `data` word.
struct EchoClient {
    stream: TcpStream,
    /// Round trips still to do in the current batch.
    remaining: u64,
    /// Bytes of the current reply received so far.
    got: u64,
}

/// The echo rig's state: the loop's data, which every callback receives.
struct EchoState {
    clients: Vec<EchoClient>,
    /// The message every client sends (and gets back).
    msg: Vec<u8>,
    /// Clients that finished their round trips in the current batch.
    done: usize,
    conns: usize,
    connected: usize,
    accepted: usize,
    /// A callback failed: the batch cannot finish (the callback also stops
    /// the loop, so `run` returns and reports it).
    failed: Option<Error>,
}

impl EchoState {
    fn fail(&mut self, lp: &mut Loop<EchoState>, e: Error) {
        self.failed = Some(e);
        lp.stop();
    }
}

/// Ping-pong echo: `conns` clients, `msg_size`-byte messages, server and
/// clients on one loop. See the crate docs.
pub struct EchoRig {
    lp: Loop<EchoState>,
    state: EchoState,
}

/// Server side: echoes every chunk back as it comes.
fn echo_server_read(lp: &mut Loop<EchoState>, d: &mut EchoState, stream: TcpStream, res: uvring::Result<&[u8]>) {
    match res {
        Ok(bytes) => {
            if let Err(e) = lp.write(stream, bytes, None) {
                d.fail(lp, e);
                let _ = lp.close(stream, None);
            }
        }
        Err(_) => {
            let _ = lp.close(stream, None);
        }
    }
}

/// Client side: counts the reply; when all of it is back, sends the next
/// message or reports this client done.
fn echo_client_read(lp: &mut Loop<EchoState>, d: &mut EchoState, stream: TcpStream, res: uvring::Result<&[u8]>) {
    let bytes = match res {
        Ok(b) => b.len() as u64,
        Err(e) => {
            d.fail(lp, e);
            let _ = lp.close(stream, None);
            return;
        }
    };
    let Some(client) = lp.data(stream).ok().and_then(|i| d.clients.get_mut(i)) else { return };
    let len = d.msg.len() as u64;
    client.got += bytes;
    if client.got < len {
        return;
    }
    client.got -= len;
    client.remaining = client.remaining.saturating_sub(1);
    if client.remaining > 0 {
        if let Err(e) = lp.write(stream, &d.msg, None) {
            d.fail(lp, e);
        }
    } else {
        d.done += 1;
        if d.done == d.conns {
            lp.stop();
        }
    }
}

impl EchoRig {
    /// Builds the server and connects `conns` clients to it.
    pub fn new(backend: Backend, conns: usize, msg_size: usize) -> RigResult<EchoRig> {
        assert!(conns > 0 && msg_size > 0, "echo rig: bad shape");
        let mut lp = Loop::with_backend(backend)?;
        let mut state = EchoState {
            clients: Vec::with_capacity(conns),
            msg: (0..msg_size).map(|i| (i % 251) as u8).collect(),
            done: 0,
            conns,
            connected: 0,
            accepted: 0,
            failed: None,
        };

        // Every callback is built once; the connections share them.
        let on_server_read = OnRead::new(echo_server_read);
        let on_connection = OnConnection::new(move |lp, d: &mut EchoState, server: TcpListener, status| {
            if let Err(e) = status {
                d.fail(lp, e);
                return;
            }
            while let Ok(conn) = lp.accept(server) {
                let _ = lp.tcp_nodelay(conn, true);
                if let Err(e) = lp.read_start(conn, &on_server_read) {
                    d.fail(lp, e);
                }
                d.accepted += 1;
            }
        });
        let (_server, addr) = listen_loopback(&mut lp, &on_connection)?;

        let on_client_read = OnRead::new(echo_client_read);
        let on_connect = OnConnect::new(move |lp, d: &mut EchoState, stream: TcpStream, status| {
            if let Err(e) = status {
                d.fail(lp, e);
                return;
            }
            let _ = lp.tcp_nodelay(stream, true);
            if let Err(e) = lp.read_start(stream, &on_client_read) {
                d.fail(lp, e);
            }
            d.connected += 1;
        });
        for i in 0..conns {
            let sock = lp.tcp_init()?;
            lp.set_data(sock, i)?;
            let stream = lp.tcp_connect(sock, addr, &on_connect)?;
            state.clients.push(EchoClient { stream, remaining: 0, got: 0 });
        }
        let mut rig = EchoRig { lp, state };
        run_until(&mut rig.lp, &mut rig.state, Duration::from_secs(10), "echo set-up", |d| {
            d.failed.is_some() || (d.connected == conns && d.accepted == conns)
        })?;
        if let Some(e) = rig.state.failed {
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
        let st = &mut self.state;
        st.done = 0;
        let start = Instant::now();
        for c in &mut st.clients {
            c.remaining = rounds;
            c.got = 0;
            self.lp.write(c.stream, &st.msg, None)?;
        }
        // `stop` from the last client's read callback ends the run.
        while st.done < st.conns {
            if let Some(e) = st.failed {
                return Err(RigError(format!("echo: {e}")));
            }
            self.lp.run(RunMode::Default, st)?;
        }
        Ok(start.elapsed())
    }
}

impl Drop for EchoRig {
    fn drop(&mut self) {
        close_all(&mut self.lp, &mut self.state);
    }
}

// ---- accept/close churn -------------------------------------------------

/// The churn rig's state: the loop's data, which every callback receives.
struct ChurnState {
    /// Connections still to start in this batch.
    to_start: u64,
    /// Connections still to finish (client saw EOF and closed).
    to_finish: u64,
    failed: Option<Error>,
    addr: SocketAddr,
    /// Starts each client connection; the read callback reaches it here to
    /// start the next connection when one ends.
    on_connect: OnConnect<ChurnState, TcpStream>,
}

impl ChurnState {
    fn fail(&mut self, lp: &mut Loop<ChurnState>, e: Error) {
        self.failed = Some(e);
        lp.stop();
    }
}

/// Accept/close churn: `parallel` clients at a time connect; the server
/// accepts and closes at once; each client reads EOF, closes, and the next
/// connection starts. Server-side close first keeps TIME_WAIT on the
/// server's side, so the clients' ephemeral ports are not exhausted.
pub struct ChurnRig {
    lp: Loop<ChurnState>,
    parallel: usize,
    state: ChurnState,
}

/// Client side: EOF ends the connection; the next one starts.
fn churn_client_read(lp: &mut Loop<ChurnState>, d: &mut ChurnState, stream: TcpStream, res: uvring::Result<&[u8]>) {
    match res {
        Ok(_) => return, // the server sends nothing; ignore
        Err(e) if e == Error::EOF => {}
        Err(e) => d.fail(lp, e),
    }
    let _ = lp.close(stream, None);
    d.to_finish -= 1;
    if d.to_finish == 0 {
        lp.stop();
        return;
    }
    if let Err(e) = start_connect(lp, d) {
        d.fail(lp, e);
    }
}

impl ChurnRig {
    pub fn new(backend: Backend, parallel: usize) -> RigResult<ChurnRig> {
        assert!(parallel > 0, "churn rig: parallel must be > 0");
        let mut lp = Loop::with_backend(backend)?;
        let on_connection = OnConnection::new(|lp, d: &mut ChurnState, server: TcpListener, status| {
            if let Err(e) = status {
                d.fail(lp, e);
                return;
            }
            while let Ok(conn) = lp.accept(server) {
                let _ = lp.close(conn, None);
            }
        });
        let (_server, addr) = listen_loopback(&mut lp, &on_connection)?;

        let on_read = OnRead::new(churn_client_read);
        let on_connect = OnConnect::new(move |lp, d: &mut ChurnState, stream: TcpStream, status| {
            if let Err(e) = status {
                d.fail(lp, e);
                let _ = lp.close(stream, None);
                return;
            }
            if let Err(e) = lp.read_start(stream, &on_read) {
                d.fail(lp, e);
            }
        });
        let state = ChurnState { to_start: 0, to_finish: 0, failed: None, addr, on_connect };
        Ok(ChurnRig { lp, parallel, state })
    }

    /// Runs `n` connection lifecycles; returns the wall time.
    pub fn run(&mut self, n: u64) -> RigResult<Duration> {
        if n == 0 {
            return Ok(Duration::ZERO);
        }
        let st = &mut self.state;
        st.to_start = n;
        st.to_finish = n;
        st.failed = None;
        let start = Instant::now();
        for _ in 0..self.parallel {
            start_connect(&mut self.lp, st)?;
        }
        while st.to_finish > 0 {
            if let Some(e) = st.failed {
                return Err(RigError(format!("churn: {e}")));
            }
            self.lp.run(RunMode::Default, st)?;
        }
        Ok(start.elapsed())
    }
}

/// Starts the next client connection of a churn batch, if any is left.
fn start_connect(lp: &mut Loop<ChurnState>, d: &mut ChurnState) -> uvring::Result<()> {
    if d.to_start == 0 {
        return Ok(());
    }
    d.to_start -= 1;
    let sock = lp.tcp_init()?;
    if let Err(e) = lp.tcp_connect(sock, d.addr, &d.on_connect) {
        let _ = lp.close(sock, None);
        return Err(e);
    }
    Ok(())
}

impl Drop for ChurnRig {
    fn drop(&mut self) {
        close_all(&mut self.lp, &mut self.state);
    }
}

// ---- UDP ----------------------------------------------------------------

/// The UDP rig's state: the loop's data, which every callback receives.
struct UdpState {
    /// Round trips each client still has to do in the current batch,
    /// indexed by the client socket's `data` word.
    remaining: Vec<u64>,
    /// The datagram every client sends (and gets back).
    msg: Vec<u8>,
    /// Clients that finished their round trips in the current batch.
    done: usize,
    failed: Option<Error>,
}

impl UdpState {
    fn fail(&mut self, lp: &mut Loop<UdpState>, e: Error) {
        self.failed = Some(e);
        lp.stop();
    }
}

/// Datagram ping-pong: `sockets` client sockets connected to one echo
/// server socket, server and clients on one loop. A lost datagram (never
/// seen on loopback) fails the batch after a watchdog's 10 s instead of
/// hanging it.
pub struct UdpRig {
    lp: Loop<UdpState>,
    state: UdpState,
    clients: Vec<Udp>,
    watchdog: Timer,
    on_watchdog: OnTimer<UdpState>,
}

/// Server side: sends each datagram back to its sender.
fn udp_server_recv(lp: &mut Loop<UdpState>, d: &mut UdpState, u: Udp, res: uvring::Result<Datagram<'_>>) {
    let sent = res.and_then(|dg| lp.udp_send(u, dg.data, dg.addr, None));
    if let Err(e) = sent {
        d.fail(lp, e);
    }
}

/// Client side: an echo is back; send the next datagram or report this
/// client done.
fn udp_client_recv(lp: &mut Loop<UdpState>, d: &mut UdpState, u: Udp, res: uvring::Result<Datagram<'_>>) {
    if let Err(e) = res {
        d.fail(lp, e);
        return;
    }
    let Some(left) = lp.data(u).ok().and_then(|i| d.remaining.get_mut(i)) else { return };
    *left = left.saturating_sub(1);
    if *left > 0 {
        if let Err(e) = lp.udp_send(u, &d.msg, None, None) {
            d.fail(lp, e);
        }
    } else {
        d.done += 1;
        if d.done == d.remaining.len() {
            lp.stop();
        }
    }
}

impl UdpRig {
    /// Binds the echo server to 127.0.0.1 and connects `sockets` clients
    /// to it; each sends `msg_size`-byte datagrams.
    pub fn new(backend: Backend, sockets: usize, msg_size: usize) -> RigResult<UdpRig> {
        assert!(sockets > 0 && msg_size > 0, "udp rig: bad shape");
        let mut lp = Loop::with_backend(backend)?;
        let server = lp.udp_init()?;
        lp.udp_bind(server, ([127, 0, 0, 1], 0).into(), 0)?;
        let addr = lp.udp_getsockname(server)?;
        lp.udp_recv_start(server, &OnRecv::new(udp_server_recv))?;
        // One callback for every client.
        let on_client_recv = OnRecv::new(udp_client_recv);
        let mut clients = Vec::with_capacity(sockets);
        for i in 0..sockets {
            let c = lp.udp_init()?;
            lp.set_data(c, i)?;
            lp.udp_connect(c, Some(addr))?;
            lp.udp_recv_start(c, &on_client_recv)?;
            clients.push(c);
        }
        let watchdog = lp.timer_init()?;
        let on_watchdog = OnTimer::new(|lp: &mut Loop<UdpState>, d: &mut UdpState, _| {
            d.fail(lp, Error::ETIMEDOUT);
        });
        let state = UdpState {
            remaining: vec![0; sockets],
            msg: (0..msg_size).map(|i| (i % 251) as u8).collect(),
            done: 0,
            failed: None,
        };
        Ok(UdpRig { lp, state, clients, watchdog, on_watchdog })
    }

    /// The backend the rig runs on.
    pub fn backend(&self) -> Backend {
        self.lp.backend()
    }

    /// Every client does `rounds` round trips (all clients at once); returns
    /// the wall time from the first send to the last echo.
    pub fn run(&mut self, rounds: u64) -> RigResult<Duration> {
        if rounds == 0 {
            return Ok(Duration::ZERO);
        }
        let st = &mut self.state;
        st.done = 0;
        st.remaining.fill(rounds);
        self.lp.timer_start(self.watchdog, Duration::from_secs(10), Duration::ZERO, &self.on_watchdog)?;
        let start = Instant::now();
        for &c in &self.clients {
            self.lp.udp_send(c, &st.msg, None, None)?;
        }
        // `stop` from the last client's callback ends the run.
        while st.done < self.clients.len() {
            if let Some(e) = st.failed {
                return Err(RigError(format!("udp: {e}")));
            }
            self.lp.run(RunMode::Default, st)?;
        }
        let elapsed = start.elapsed();
        self.lp.timer_stop(self.watchdog)?;
        Ok(elapsed)
    }
}

impl Drop for UdpRig {
    fn drop(&mut self) {
        close_all(&mut self.lp, &mut self.state);
    }
}

// ---- timers -------------------------------------------------------------

/// A set of initialised timers to start and stop (`uv_timer_start` /
/// `uv_timer_stop`); none ever fires (timeouts are far in the future).
pub struct TimerRig {
    lp: Loop,
    timers: Vec<Timer>,
    cb: OnTimer<()>,
}

impl TimerRig {
    pub fn new(backend: Backend, count: usize) -> RigResult<TimerRig> {
        let mut lp = Loop::with_backend(backend)?;
        let mut timers = Vec::with_capacity(count);
        for _ in 0..count {
            timers.push(lp.timer_init()?);
        }
        let cb = OnTimer::new(|_, _, _| {});
        Ok(TimerRig { lp, timers, cb })
    }

    /// Starts every timer (with spread-out timeouts, so the heap does real
    /// work), then stops every one in a different order.
    pub fn start_stop(&mut self) -> RigResult<()> {
        let n = self.timers.len();
        for (i, &t) in self.timers.iter().enumerate() {
            // 7919 is prime: the timeouts are a permutation-like spread.
            let timeout = Duration::from_millis(60_000 + ((i * 7919) % n.max(1)) as u64);
            self.lp.timer_start(t, timeout, Duration::ZERO, &self.cb)?;
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
        let _ = self.lp.run(RunMode::NoWait, &mut ());
    }
}
