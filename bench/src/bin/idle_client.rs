//! The client of the idle-memory benchmark (`bench/idle_memory.sh`): opens
//! `-n` keep-alive HTTP/1.1 connections to a server, sends one `GET` on each
//! and reads the whole response, then holds every connection open and idle
//! until SIGINT or SIGTERM.
//!
//! ```text
//! idle_client --addr 127.0.0.1:PORT [-n 5000] [--sources 8] [--subnet 0] [--parallel 256]
//!             [--backend epoll|io_uring|auto]
//! ```
//!
//! One source address has about 28,000 ephemeral ports towards one server
//! port, so the connections are spread over `--sources` addresses
//! 127.0.S.2, 127.0.S.3, ... (bound before connecting; S is `--subnet`, so
//! that runs one after another can take fresh addresses while the last
//! run's ports sit in TIME_WAIT). At most
//! `--parallel` connections are being set up at a time. Once every
//! connection has had its response, the client prints
//! `ready OK FAILED` on stdout; later it prints `closed-by-server N` for
//! each connection the server closed while idle, and on SIGINT or SIGTERM
//! it closes everything and exits (0 if every connection came up). The
//! process needs an fd limit above `-n` (the script raises it).

use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr};
use std::process::ExitCode;
use uvring::{Backend, Error, Loop, OnConnect, OnRead, OnSignal, RunMode, TcpStream};

struct Options {
    addr: SocketAddr,
    n: usize,
    sources: u8,
    subnet: u8,
    parallel: usize,
    backend: Backend,
}

const USAGE: &str =
    "usage: idle_client --addr HOST:PORT [-n N] [--sources K] [--subnet S] [--parallel P] [--backend epoll|io_uring|auto]";

fn parse_args() -> Result<Options, String> {
    let mut o = Options {
        addr: ([127, 0, 0, 1], 8000).into(),
        n: 5000,
        sources: 8,
        subnet: 0,
        parallel: 256,
        backend: Backend::Epoll,
    };
    let mut addr = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = || args.next().ok_or_else(|| format!("{a} needs a value"));
        match a.as_str() {
            "--addr" => addr = Some(value()?.parse().map_err(|_| "bad --addr")?),
            "-n" => o.n = value()?.parse().map_err(|_| "bad -n")?,
            "--sources" => o.sources = value()?.parse().map_err(|_| "bad --sources (1..=250)")?,
            "--subnet" => o.subnet = value()?.parse().map_err(|_| "bad --subnet (0..=255)")?,
            "--parallel" => o.parallel = value()?.parse().map_err(|_| "bad --parallel")?,
            "--backend" => o.backend = Backend::parse(&value()?).ok_or("bad --backend")?,
            "-h" | "--help" => return Err(USAGE.into()),
            other => return Err(format!("unknown argument {other}\n{USAGE}")),
        }
    }
    o.addr = addr.ok_or(USAGE)?;
    if o.n == 0 || o.parallel == 0 || o.sources == 0 || o.sources > 250 {
        return Err("-n, --parallel must be above zero, --sources in 1..=250".into());
    }
    Ok(o)
}

/// Where a connection is.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Request sent, response being read.
    Waiting,
    /// Response read; idle.
    Idle,
    Closed,
}

struct Conn {
    phase: Phase,
    /// The response so far (only until it is complete).
    buf: Vec<u8>,
}

/// The client's state: the loop's data.
struct Clients {
    conns: Vec<Conn>,
    request: Vec<u8>,
    target: usize,
    started: usize,
    in_flight: usize,
    idle: usize,
    failed: usize,
    closed_by_server: usize,
    ready_said: bool,
    first_error: Option<String>,
    addr: SocketAddr,
    sources: u8,
    subnet: u8,
    on_connect: Option<OnConnect<Clients, TcpStream>>,
}

/// Whether `buf` holds a whole response: the head and `Content-Length`
/// bytes of body (a response without the header ends at its head).
fn response_complete(buf: &[u8]) -> bool {
    let Some(head_end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else { return false };
    let head = String::from_utf8_lossy(&buf[..head_end]);
    let len = head
        .lines()
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.trim().parse::<usize>().ok())
        .unwrap_or(0);
    buf.len() >= head_end + 4 + len
}

impl Clients {
    fn error(&mut self, what: &str, e: Error) {
        self.failed += 1;
        if self.first_error.is_none() {
            self.first_error = Some(format!("{what}: {e}"));
        }
    }

    /// Starts connections until `parallel` are being set up or all are.
    fn fill(&mut self, lp: &mut Loop<Clients>, parallel: usize) {
        while self.in_flight < parallel && self.started < self.target {
            let i = self.started;
            self.started += 1;
            let source = Ipv4Addr::new(127, 0, self.subnet, 2 + (i % self.sources as usize) as u8);
            let r = (|| {
                let sock = lp.tcp_init()?;
                lp.set_data(sock, i)?;
                if let Err(e) = lp.tcp_bind(sock, (source, 0).into(), 0) {
                    let _ = lp.close(sock, None);
                    return Err(e);
                }
                let cb = self.on_connect.as_ref().expect("on_connect set before fill");
                lp.tcp_connect(sock, self.addr, cb).map(drop).inspect_err(|_| {
                    let _ = lp.close(sock, None);
                })
            })();
            match r {
                Ok(()) => self.in_flight += 1,
                Err(e) => self.error("connect", e),
            }
        }
        self.say_ready();
    }

    fn say_ready(&mut self) {
        if !self.ready_said && self.started == self.target && self.in_flight == 0 {
            self.ready_said = true;
            println!("ready {} {}", self.idle, self.failed);
            if let Some(e) = &self.first_error {
                eprintln!("idle_client: first error: {e}");
            }
            let _ = std::io::stdout().flush();
        }
    }
}

fn main() -> ExitCode {
    let o = match parse_args() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("idle_client: {e}");
            return ExitCode::from(2);
        }
    };
    let mut lp: Loop<Clients> = match Loop::with_backend(o.backend) {
        Ok(lp) => lp,
        Err(e) => {
            eprintln!("idle_client: {}: {e}", o.backend);
            return ExitCode::FAILURE;
        }
    };
    let parallel = o.parallel;
    let on_read = OnRead::new(move |lp, d: &mut Clients, s: TcpStream, res: uvring::Result<&[u8]>| {
        let Some(i) = lp.data(s).ok() else { return };
        let phase = d.conns[i].phase;
        match res {
            Ok(bytes) if phase == Phase::Waiting => {
                d.conns[i].buf.extend_from_slice(bytes);
                if response_complete(&d.conns[i].buf) {
                    d.conns[i].phase = Phase::Idle;
                    d.conns[i].buf = Vec::new();
                    d.idle += 1;
                    d.in_flight -= 1;
                    d.fill(lp, parallel);
                }
            }
            Ok(_) => {} // nothing more is expected on an idle connection
            Err(e) => {
                let _ = lp.close(s, None);
                d.conns[i].phase = Phase::Closed;
                if phase == Phase::Idle {
                    d.idle -= 1;
                    d.closed_by_server += 1;
                    println!("closed-by-server {}", d.closed_by_server);
                    let _ = std::io::stdout().flush();
                } else if phase == Phase::Waiting {
                    d.in_flight -= 1;
                    d.error("response", e);
                    d.fill(lp, parallel);
                }
            }
        }
    });
    let on_connect = OnConnect::new(move |lp, d: &mut Clients, s: TcpStream, status| {
        let Some(i) = lp.data(s).ok() else { return };
        let r = status.and_then(|()| lp.read_start(s, &on_read)).and_then(|()| lp.write(s, &d.request, None));
        if let Err(e) = r {
            let _ = lp.close(s, None);
            d.conns[i].phase = Phase::Closed;
            d.in_flight -= 1;
            d.error("connect", e);
            d.fill(lp, parallel);
        }
    });
    let on_stop = OnSignal::new(|lp, _d: &mut Clients, _sig, _signum| {
        lp.walk(|lp, h| {
            if !lp.is_closing(h) {
                let _ = lp.close(h, None);
            }
        });
    });
    let host = o.addr.to_string();
    let mut d = Clients {
        conns: (0..o.n).map(|_| Conn { phase: Phase::Waiting, buf: Vec::new() }).collect(),
        request: format!("GET / HTTP/1.1\r\nHost: {host}\r\n\r\n").into_bytes(),
        target: o.n,
        started: 0,
        in_flight: 0,
        idle: 0,
        failed: 0,
        closed_by_server: 0,
        ready_said: false,
        first_error: None,
        addr: o.addr,
        sources: o.sources,
        subnet: o.subnet,
        on_connect: Some(on_connect),
    };
    for sig in [libc::SIGINT, libc::SIGTERM] {
        if let Err(e) = lp.signal_start(sig, &on_stop) {
            eprintln!("idle_client: signal: {e}");
            return ExitCode::FAILURE;
        }
    }
    d.fill(&mut lp, parallel);
    if let Err(e) = lp.run(RunMode::Default, &mut d) {
        eprintln!("idle_client: {e}");
        return ExitCode::FAILURE;
    }
    if d.failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
