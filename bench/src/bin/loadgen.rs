//! HTTP/1.1 load generator on uvring loops: N connections send GETs for a
//! duration, keep-alive or one request per connection (`--close`), and the
//! tool prints requests/s and latency percentiles (hdrhistogram).
//!
//! ```text
//! cargo run --release -p uvring-bench --bin loadgen -- \
//!     --url http://127.0.0.1:8080/ -c 64 -d 10 -t 2 [--close] [--backend epoll|io_uring] [--csv]
//! ```
//!
//! Each of `-t` threads runs one loop with its share of the connections. A
//! connection sends one request, waits for the whole response (headers and
//! `Content-Length` body), records the latency, then sends the next request
//! on the same connection, or, with `--close` (which adds
//! `Connection: close`), closes and connects again; in that mode the
//! latency includes the connect. Only responses with status 2xx count as
//! requests; others count as errors. Responses must carry `Content-Length`
//! (no chunked bodies). `wrk` stays the neutral load generator
//! of `compare.sh`; this tool is for runs where the client's engine should
//! be uvring too, and for latency tails measured in microseconds.

use hdrhistogram::Histogram;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::{Duration, Instant};
use uvring::{Backend, Error, Loop, OnConnect, OnRead, OnTimer, RunMode, TcpStream, Timer};

#[derive(Clone, Debug)]
struct Config {
    addr: SocketAddr,
    host: String,
    path: String,
    conns: usize,
    threads: usize,
    duration: Duration,
    close: bool,
    backend: Backend,
    csv: bool,
}

const USAGE: &str = "usage: loadgen --url http://HOST:PORT/PATH [-c CONNS] [-d SECS] [-t THREADS] [--close] \
                     [--backend epoll|io_uring|auto] [--csv]";

fn parse_args() -> Result<Config, String> {
    let mut url = None;
    let mut cfg = Config {
        addr: ([127, 0, 0, 1], 80).into(),
        host: String::new(),
        path: "/".into(),
        conns: 64,
        threads: 1,
        duration: Duration::from_secs(10),
        close: false,
        backend: Backend::Auto,
        csv: false,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = || args.next().ok_or_else(|| format!("{a} needs a value"));
        match a.as_str() {
            "--url" | "-u" => url = Some(value()?),
            "-c" | "--connections" => cfg.conns = value()?.parse().map_err(|_| "bad -c")?,
            "-t" | "--threads" => cfg.threads = value()?.parse().map_err(|_| "bad -t")?,
            "-d" | "--duration" => {
                let secs: f64 = value()?.trim_end_matches('s').parse().map_err(|_| "bad -d")?;
                if !(secs > 0.0 && secs < 86_400.0) {
                    return Err("-d must be between 0 and 86400 seconds".into());
                }
                cfg.duration = Duration::from_secs_f64(secs);
            }
            "--close" => cfg.close = true,
            "--csv" => cfg.csv = true,
            "--backend" => {
                cfg.backend = match value()?.as_str() {
                    "epoll" => Backend::Epoll,
                    "io_uring" => Backend::IoUring,
                    "auto" => Backend::Auto,
                    other => return Err(format!("unknown backend {other}")),
                }
            }
            "-h" | "--help" => return Err(USAGE.into()),
            other => return Err(format!("unknown argument {other}\n{USAGE}")),
        }
    }
    let url = url.ok_or(USAGE)?;
    let rest = url.strip_prefix("http://").ok_or("only http:// URLs")?;
    let (hostport, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    cfg.addr = hostport
        .parse()
        .or_else(|_| format!("{hostport}:80").parse())
        .map_err(|_| format!("{hostport}: need a numeric IP address and port (no DNS lookups)"))?;
    cfg.host = hostport.to_string();
    cfg.path = path.to_string();
    if cfg.conns == 0 || cfg.threads == 0 {
        return Err("-c and -t must be at least 1".into());
    }
    cfg.threads = cfg.threads.min(cfg.conns);
    Ok(cfg)
}

/// What one thread measured.
struct Tally {
    hist: Histogram<u64>,
    ok: u64,
    bad_status: u64,
    errors: u64,
    connects: u64,
}

impl Tally {
    fn new() -> Tally {
        // 1 us .. 60 s, 3 significant digits.
        let hist = Histogram::new_with_bounds(1, 60_000_000, 3).expect("histogram bounds are valid");
        Tally { hist, ok: 0, bad_status: 0, errors: 0, connects: 0 }
    }
}

/// A connection's state; its index in [`LoadState::conns`] is the
/// stream's `data` word.
struct Conn {
    stream: Option<TcpStream>,
    buf: Vec<u8>,
    sent_at: Instant,
}

/// A load thread's state: the loop's data, which every callback receives.
struct LoadState {
    cfg: Config,
    request: Vec<u8>,
    conns: Vec<Conn>,
    tally: Tally,
    /// The duration is over: finish what is in flight, start nothing new.
    stopping: bool,
    open: usize,
    /// Opens every connection (the read callback reaches it here to
    /// reconnect).
    on_connect: OnConnect<LoadState, TcpStream>,
}

/// Outcome of looking at the bytes received so far.
enum Parsed {
    Incomplete,
    /// A whole response: its length in the buffer, whether it was 2xx, and
    /// whether the server closes the connection after it.
    Done {
        len: usize,
        ok: bool,
        server_closes: bool,
    },
    Invalid,
}

fn parse_response(buf: &[u8]) -> Parsed {
    let Some(head_end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        return if buf.len() > 64 * 1024 { Parsed::Invalid } else { Parsed::Incomplete };
    };
    let head = &buf[..head_end];
    let mut lines = head.split(|&b| b == b'\n');
    let status_line = lines.next().unwrap_or(&[]);
    // "HTTP/1.1 200 OK"
    let status =
        status_line.split(|&b| b == b' ').nth(1).and_then(|s| std::str::from_utf8(s).ok()?.parse::<u16>().ok());
    let Some(status) = status else { return Parsed::Invalid };
    let mut content_length = 0usize;
    let mut server_closes = false;
    for line in lines {
        let Some(colon) = line.iter().position(|&b| b == b':') else { continue };
        let name = &line[..colon];
        let value = std::str::from_utf8(&line[colon + 1..]).unwrap_or("").trim();
        if name.eq_ignore_ascii_case(b"content-length") {
            match value.parse() {
                Ok(n) => content_length = n,
                Err(_) => return Parsed::Invalid,
            }
        } else if name.eq_ignore_ascii_case(b"connection") && value.eq_ignore_ascii_case("close") {
            server_closes = true;
        }
    }
    let len = head_end + 4 + content_length;
    if buf.len() < len {
        return Parsed::Incomplete;
    }
    Parsed::Done { len, ok: (200..300).contains(&status), server_closes }
}

fn send_request(lp: &mut Loop<LoadState>, st: &mut LoadState, idx: usize) {
    let Some(s) = st.conns[idx].stream else { return };
    st.conns[idx].sent_at = Instant::now();
    if lp.write(s, &st.request, None).is_err() {
        st.tally.errors += 1;
        close_conn(lp, st, idx);
    }
}

fn close_conn(lp: &mut Loop<LoadState>, st: &mut LoadState, idx: usize) {
    if let Some(s) = st.conns[idx].stream.take() {
        let _ = lp.close(s, None);
        st.open -= 1;
    }
    st.conns[idx].buf.clear();
}

fn open_conn(lp: &mut Loop<LoadState>, st: &mut LoadState, idx: usize) {
    if st.stopping {
        if st.open == 0 {
            lp.stop();
        }
        return;
    }
    let res = (|| -> uvring::Result<TcpStream> {
        let sock = lp.tcp_init()?;
        lp.set_data(sock, idx)?;
        match lp.tcp_connect(sock, st.cfg.addr, &st.on_connect) {
            Ok(s) => Ok(s),
            Err(e) => {
                let _ = lp.close(sock, None);
                Err(e)
            }
        }
    })();
    match res {
        Ok(s) => {
            st.conns[idx].stream = Some(s);
            st.conns[idx].sent_at = Instant::now();
            st.open += 1;
            st.tally.connects += 1;
        }
        Err(_) => st.tally.errors += 1,
    }
}

/// A response (or the end of the connection) arrived.
fn read_response(lp: &mut Loop<LoadState>, st: &mut LoadState, s: TcpStream, res: uvring::Result<&[u8]>) {
    let Ok(idx) = lp.data(s) else { return };
    if st.conns.get(idx).and_then(|c| c.stream) != Some(s) {
        return;
    }
    let reconnect = match res {
        Ok(bytes) => {
            st.conns[idx].buf.extend_from_slice(bytes);
            match parse_response(&st.conns[idx].buf) {
                Parsed::Incomplete => return,
                Parsed::Invalid => {
                    st.tally.errors += 1;
                    true
                }
                Parsed::Done { len, ok, server_closes } => {
                    let us = st.conns[idx].sent_at.elapsed().as_micros().max(1) as u64;
                    if ok {
                        st.tally.ok += 1;
                        let _ = st.tally.hist.record(us.min(60_000_000));
                    } else {
                        st.tally.bad_status += 1;
                    }
                    st.conns[idx].buf.drain(..len);
                    if st.cfg.close || server_closes || st.stopping {
                        true
                    } else {
                        send_request(lp, st, idx);
                        false
                    }
                }
            }
        }
        Err(e) if e == Error::EOF => {
            // The server closed between keep-alive requests (or after a
            // reply we already counted): not an error unless a request
            // was outstanding with bytes missing.
            if !st.conns[idx].buf.is_empty() {
                st.tally.errors += 1;
            }
            true
        }
        Err(_) => {
            st.tally.errors += 1;
            true
        }
    };
    if reconnect {
        close_conn(lp, st, idx);
        open_conn(lp, st, idx);
    }
}

/// The grace period after the run is over: closes whatever is left.
fn grace_over(lp: &mut Loop<LoadState>, st: &mut LoadState, t: Timer) {
    for idx in 0..st.conns.len() {
        close_conn(lp, st, idx);
    }
    let _ = lp.close(t, None);
    lp.stop();
}

fn run_thread(cfg: Config, conns: usize) -> Result<Tally, String> {
    let mut lp = Loop::with_backend(cfg.backend).map_err(|e| format!("loop: {e}"))?;
    let mut request = format!("GET {} HTTP/1.1\r\nHost: {}\r\n", cfg.path, cfg.host);
    if cfg.close {
        request.push_str("Connection: close\r\n");
    }
    request.push_str("\r\n");

    // Every callback is built once; the connections share them.
    let on_read = OnRead::new(read_response);
    let on_connect = OnConnect::new(move |lp, st: &mut LoadState, s: TcpStream, status| {
        let Ok(idx) = lp.data(s) else { return };
        if status.is_err() || lp.tcp_nodelay(s, true).is_err() || lp.read_start(s, &on_read).is_err() {
            st.tally.errors += 1;
            close_conn(lp, st, idx);
            if st.stopping && st.open == 0 {
                lp.stop();
            }
            return;
        }
        // In --close mode the latency counts from the connect.
        let started = st.conns[idx].sent_at;
        send_request(lp, st, idx);
        if st.cfg.close {
            st.conns[idx].sent_at = started;
        }
    });
    // End of the run: stop starting requests; give in-flight ones a grace
    // period, then close whatever is left.
    let on_grace = OnTimer::new(grace_over);
    let on_end = OnTimer::new(move |lp, st: &mut LoadState, t| {
        // Every open connection has a request in flight; each closes when
        // its response arrives, and the last one stops the loop.
        st.stopping = true;
        if st.open == 0 {
            lp.stop();
        }
        let _ = lp.timer_start(t, Duration::from_secs(2), Duration::ZERO, &on_grace);
    });
    let mut st = LoadState {
        cfg: cfg.clone(),
        request: request.into_bytes(),
        conns: (0..conns)
            .map(|_| Conn { stream: None, buf: Vec::with_capacity(4096), sent_at: Instant::now() })
            .collect(),
        tally: Tally::new(),
        stopping: false,
        open: 0,
        on_connect,
    };

    let t0 = Instant::now();
    for idx in 0..conns {
        open_conn(&mut lp, &mut st, idx);
    }
    let end = lp.timer_init().map_err(|e| format!("timer: {e}"))?;
    lp.timer_start(end, cfg.duration, Duration::ZERO, &on_end).map_err(|e| format!("timer: {e}"))?;
    loop {
        match lp.run(RunMode::Default, &mut st) {
            Ok(_) => {}
            Err(e) => return Err(format!("loop: {e}")),
        }
        if st.stopping && (st.open == 0 || t0.elapsed() > cfg.duration + Duration::from_secs(3)) {
            break;
        }
        if !st.stopping && t0.elapsed() > cfg.duration + Duration::from_secs(3) {
            break;
        }
    }
    // Tidy up: every connection and the timer closed.
    for idx in 0..st.conns.len() {
        close_conn(&mut lp, &mut st, idx);
    }
    if lp.is_live(end) && !lp.is_closing(end) {
        let _ = lp.close(end, None);
    }
    let _ = lp.run(RunMode::NoWait, &mut st);
    Ok(st.tally)
}

fn main() -> ExitCode {
    let cfg = match parse_args() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("loadgen: {e}");
            return ExitCode::from(2);
        }
    };
    let start = Instant::now();
    let handles: Vec<_> = (0..cfg.threads)
        .map(|i| {
            let share = cfg.conns / cfg.threads + usize::from(i < cfg.conns % cfg.threads);
            let c = cfg.clone();
            std::thread::spawn(move || run_thread(c, share))
        })
        .collect();
    let mut total = Tally::new();
    for h in handles {
        match h.join() {
            Ok(Ok(t)) => {
                let _ = total.hist.add(&t.hist);
                total.ok += t.ok;
                total.bad_status += t.bad_status;
                total.errors += t.errors;
                total.connects += t.connects;
            }
            Ok(Err(e)) => {
                eprintln!("loadgen: {e}");
                return ExitCode::FAILURE;
            }
            Err(_) => {
                eprintln!("loadgen: a load thread panicked");
                return ExitCode::FAILURE;
            }
        }
    }
    let secs = cfg.duration.as_secs_f64().min(start.elapsed().as_secs_f64());
    let rps = total.ok as f64 / secs;
    let q = |p: f64| total.hist.value_at_quantile(p) as f64 / 1000.0;
    if cfg.csv {
        println!("rps,p50_ms,p90_ms,p99_ms,p999_ms,max_ms,ok,non2xx,errors,connects");
        println!(
            "{rps:.0},{:.3},{:.3},{:.3},{:.3},{:.3},{},{},{},{}",
            q(0.5),
            q(0.9),
            q(0.99),
            q(0.999),
            total.hist.max() as f64 / 1000.0,
            total.ok,
            total.bad_status,
            total.errors,
            total.connects
        );
    } else {
        println!(
            "loadgen: {} connections on {} thread(s), {:.1} s, {}{}",
            cfg.conns,
            cfg.threads,
            secs,
            if cfg.close { "Connection: close" } else { "keep-alive" },
            format_args!(", backend {}", cfg.backend)
        );
        println!(
            "  requests/s: {rps:.0}  ({} ok, {} non-2xx, {} errors, {} connects)",
            total.ok, total.bad_status, total.errors, total.connects
        );
        println!(
            "  latency ms: p50 {:.3}  p90 {:.3}  p99 {:.3}  p99.9 {:.3}  max {:.3}",
            q(0.5),
            q(0.9),
            q(0.99),
            q(0.999),
            total.hist.max() as f64 / 1000.0
        );
    }
    if total.ok == 0 {
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}

#[cfg(test)]
mod tests {
    use super::{parse_response, Parsed};

    #[test]
    fn whole_response_with_body_is_done() {
        let r = b"HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\nhello worldHTTP/1.1";
        assert!(matches!(parse_response(r), Parsed::Done { len: 50, ok: true, server_closes: false }));
    }

    #[test]
    fn partial_head_or_body_is_incomplete() {
        assert!(matches!(parse_response(b"HTTP/1.1 200 OK\r\nContent-Len"), Parsed::Incomplete));
        assert!(matches!(parse_response(b"HTTP/1.1 200 OK\r\ncontent-length: 11\r\n\r\nhello"), Parsed::Incomplete));
    }

    #[test]
    fn status_and_connection_close_are_read() {
        let r = b"HTTP/1.1 503 Busy\r\nCONNECTION: Close\r\nContent-Length: 0\r\n\r\n";
        assert!(matches!(parse_response(r), Parsed::Done { ok: false, server_closes: true, .. }));
    }

    #[test]
    fn garbage_is_invalid_not_a_panic() {
        assert!(matches!(parse_response(b"\r\n\r\n"), Parsed::Invalid));
        assert!(matches!(parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n"), Parsed::Invalid));
        assert!(matches!(parse_response(&vec![b'a'; 70_000]), Parsed::Invalid));
    }
}
