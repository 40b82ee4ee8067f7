//! The client of the external-client echo benchmark
//! (`bench/echo_external.sh`): its own process, pinned to one core, with
//! `-c` connections to an echo server that runs in another process (pinned
//! to the other core by the script). Each connection sends an `-s`-byte
//! message, waits until all of it has come back, and sends the next one
//! (ping-pong, `TCP_NODELAY`).
//!
//! ```text
//! echo_client --addr 127.0.0.1:PORT [-c 64] [-s 64] [-d 2] [--warmup 0.5]
//!             [--cpu 0] [--server-pid PID] [--backend epoll|io_uring|auto] [--csv]
//! ```
//!
//! After the warm-up the client opens a window of `-d` seconds and counts
//! the round trips completed in it. With `--server-pid`, it reads the
//! server's CPU time (utime + stime of the process and its descendants,
//! from `/proc`) at both ends of the same window, and reports server CPU
//! per round trip. It also reports its own CPU over the window: near 100 %
//! of a core means the client, not the server, set the rate.
//!
//! Output: one line of text, or with `--csv` one CSV row
//! `conns,size,secs,round_trips,rate,server_cpu_s,server_cpu_us_per_rt,client_cpu_share,client_backend`.
//!
//! The client runs on a uvring loop (one thread); every connection shares
//! the same callbacks, and its progress sits in a `Vec` indexed by the
//! stream's data word.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::{Duration, Instant};
use uvring::{Backend, Error, Loop, OnConnect, OnRead, OnTimer, RunMode, TcpStream};
use uvring_bench::proctree;

struct Options {
    addr: SocketAddr,
    conns: usize,
    size: usize,
    duration: Duration,
    warmup: Duration,
    cpu: Option<usize>,
    server_pid: Option<u32>,
    backend: Backend,
    csv: bool,
}

const USAGE: &str = "usage: echo_client --addr HOST:PORT [-c CONNS] [-s BYTES] [-d SECS] [--warmup SECS] \
                     [--cpu N] [--server-pid PID] [--backend epoll|io_uring|auto] [--csv]";

fn secs(s: &str) -> Result<Duration, String> {
    let v: f64 = s.trim_end_matches('s').parse().map_err(|_| format!("bad duration {s}"))?;
    if !(0.0..86_400.0).contains(&v) {
        return Err(format!("duration out of range: {s}"));
    }
    Ok(Duration::from_secs_f64(v))
}

fn parse_args() -> Result<Options, String> {
    let mut o = Options {
        addr: ([127, 0, 0, 1], 7000).into(),
        conns: 64,
        size: 64,
        duration: Duration::from_secs(2),
        warmup: Duration::from_millis(500),
        cpu: None,
        server_pid: None,
        backend: Backend::Auto,
        csv: false,
    };
    let mut addr = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = || args.next().ok_or_else(|| format!("{a} needs a value"));
        match a.as_str() {
            "--addr" => addr = Some(value()?.parse().map_err(|_| "bad --addr")?),
            "-c" | "--connections" => o.conns = value()?.parse().map_err(|_| "bad -c")?,
            "-s" | "--size" => o.size = value()?.parse().map_err(|_| "bad -s")?,
            "-d" | "--duration" => o.duration = secs(&value()?)?,
            "--warmup" => o.warmup = secs(&value()?)?,
            "--cpu" => o.cpu = Some(value()?.parse().map_err(|_| "bad --cpu")?),
            "--server-pid" => o.server_pid = Some(value()?.parse().map_err(|_| "bad --server-pid")?),
            "--backend" => o.backend = Backend::parse(&value()?).ok_or("bad --backend")?,
            "--csv" => o.csv = true,
            "-h" | "--help" => return Err(USAGE.into()),
            other => return Err(format!("unknown argument {other}\n{USAGE}")),
        }
    }
    o.addr = addr.ok_or(USAGE)?;
    if o.conns == 0 || o.size == 0 || o.duration.is_zero() {
        return Err("-c, -s and -d must be above zero".into());
    }
    Ok(o)
}

/// One reading at an end of the measured window.
#[derive(Clone, Copy)]
struct Mark {
    at: Instant,
    round_trips: u64,
    server_cpu: Option<Duration>,
    client_cpu: Duration,
}

/// The client's state: the loop's data.
struct Client {
    /// Bytes of the current reply received so far, per connection (index =
    /// the stream's data word).
    got: Vec<usize>,
    msg: Vec<u8>,
    connected: usize,
    round_trips: u64,
    server_pid: Option<u32>,
    start: Option<Mark>,
    end: Option<Mark>,
    failed: Option<String>,
}

impl Client {
    fn mark(&self) -> Mark {
        Mark {
            at: Instant::now(),
            round_trips: self.round_trips,
            server_cpu: self.server_pid.and_then(|p| proctree::sample(p).ok()).map(|s| s.cpu),
            client_cpu: proctree::self_cpu(),
        }
    }

    fn fail(&mut self, lp: &mut Loop<Client>, why: String) {
        if self.failed.is_none() {
            self.failed = Some(why);
        }
        lp.stop();
    }
}

/// Counts the reply; once all of it is back, sends the next message.
fn on_read(lp: &mut Loop<Client>, c: &mut Client, stream: TcpStream, res: uvring::Result<&[u8]>) {
    let n = match res {
        Ok(b) => b.len(),
        Err(e) => {
            let _ = lp.close(stream, None);
            return c.fail(lp, format!("read: {e}"));
        }
    };
    let Some(got) = lp.data(stream).ok().and_then(|i| c.got.get_mut(i)) else { return };
    *got += n;
    if *got < c.msg.len() {
        return;
    }
    *got -= c.msg.len();
    c.round_trips += 1;
    if let Err(e) = lp.write(stream, &c.msg, None) {
        c.fail(lp, format!("write: {e}"));
    }
}

fn run(o: &Options) -> Result<(Client, Backend), String> {
    if let Some(cpu) = o.cpu {
        proctree::pin_to_cpu(cpu).map_err(|e| format!("pin to cpu {cpu}: {e}"))?;
    }
    let mut lp: Loop<Client> = Loop::with_backend(o.backend).map_err(|e| format!("{}: {e}", o.backend))?;
    let fail = |e: Error| e.to_string();
    let on_read = OnRead::new(on_read);
    let on_connect = OnConnect::new(move |lp, c: &mut Client, stream: TcpStream, status| {
        if let Err(e) = status {
            let _ = lp.close(stream, None);
            return c.fail(lp, format!("connect: {e}"));
        }
        let _ = lp.tcp_nodelay(stream, true);
        if let Err(e) = lp.read_start(stream, &on_read) {
            return c.fail(lp, format!("read_start: {e}"));
        }
        c.connected += 1;
        if let Err(e) = lp.write(stream, &c.msg, None) {
            c.fail(lp, format!("write: {e}"));
        }
    });
    for i in 0..o.conns {
        let sock = lp.tcp_init().map_err(fail)?;
        lp.set_data(sock, i).map_err(fail)?;
        lp.tcp_connect(sock, o.addr, &on_connect).map_err(fail)?;
    }
    // The window: opens after the warm-up, closes `duration` later.
    let on_start = OnTimer::new(|_lp, c: &mut Client, _t| c.start = Some(c.mark()));
    let on_end = OnTimer::new(|lp, c: &mut Client, _t| {
        c.end = Some(c.mark());
        lp.stop();
    });
    let t_start = lp.timer_init().map_err(fail)?;
    let t_end = lp.timer_init().map_err(fail)?;
    lp.timer_start(t_start, o.warmup, Duration::ZERO, &on_start).map_err(fail)?;
    lp.timer_start(t_end, o.warmup + o.duration, Duration::ZERO, &on_end).map_err(fail)?;

    let mut c = Client {
        got: vec![0; o.conns],
        msg: (0..o.size).map(|i| (i % 251) as u8).collect(),
        connected: 0,
        round_trips: 0,
        server_pid: o.server_pid,
        start: None,
        end: None,
        failed: None,
    };
    let backend = lp.backend();
    while c.end.is_none() && c.failed.is_none() {
        lp.run(RunMode::Default, &mut c).map_err(fail)?;
    }
    if let Some(why) = c.failed.take() {
        return Err(why);
    }
    if c.connected < o.conns {
        return Err(format!("only {} of {} connections were up by the end of the warm-up", c.connected, o.conns));
    }
    // Process exit closes the sockets; the server sees EOF on each.
    Ok((c, backend))
}

fn main() -> ExitCode {
    let o = match parse_args() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("echo_client: {e}");
            return ExitCode::from(2);
        }
    };
    let (c, backend) = match run(&o) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("echo_client: {e}");
            return ExitCode::FAILURE;
        }
    };
    let (Some(a), Some(b)) = (c.start, c.end) else {
        eprintln!("echo_client: the window did not open");
        return ExitCode::FAILURE;
    };
    let secs = (b.at - a.at).as_secs_f64();
    let trips = b.round_trips - a.round_trips;
    let rate = trips as f64 / secs;
    let server_cpu = match (a.server_cpu, b.server_cpu) {
        (Some(x), Some(y)) => Some((y - x).as_secs_f64()),
        _ => None,
    };
    let per_rt = server_cpu.map(|s| s * 1e6 / trips.max(1) as f64);
    let client_share = (b.client_cpu - a.client_cpu).as_secs_f64() / secs;
    if o.csv {
        println!(
            "{},{},{secs:.3},{trips},{rate:.0},{},{},{client_share:.3},{backend}",
            o.conns,
            o.size,
            server_cpu.map(|s| format!("{s:.3}")).unwrap_or_default(),
            per_rt.map(|u| format!("{u:.3}")).unwrap_or_default(),
        );
    } else {
        println!(
            "{}c x {}B: {trips} round trips in {secs:.3} s = {rate:.0}/s; server CPU {} ({} us per round trip); \
             client CPU {:.0} % of a core (client loop: {backend})",
            o.conns,
            o.size,
            server_cpu.map(|s| format!("{s:.3} s")).unwrap_or_else(|| "not read".into()),
            per_rt.map(|u| format!("{u:.2}")).unwrap_or_else(|| "-".into()),
            client_share * 100.0,
        );
    }
    ExitCode::SUCCESS
}
