//! Owned writes against copied writes, in-process (server and client in
//! one loop, one thread): a client sends a one-byte request, the server
//! answers with a body of `--bytes` bytes, the client reads all of it and
//! asks again. The server builds each body either in a buffer of its own
//! and hands it to `Loop::write`, which copies it into the stream's write
//! buffer (`copy`), or in a buffer from `Loop::write_buf`, handed over
//! with `Loop::write_vec`, which sends it from where it is (`owned`).
//! Both modes run in the same process, round by round, and the report
//! gives, per mode, the median CPU time (utime + stime of this process)
//! per response and responses per second.
//!
//! ```text
//! write_probe [--backend epoll|io_uring|auto] [--bytes N] [--secs S] [--rounds R]
//! ```

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::{Duration, Instant};
use uvring::{Backend, Loop, OnConnect, OnConnection, OnRead, RunMode, TcpListener, TcpStream};
use uvring_bench::proctree;

#[derive(Clone, Copy, PartialEq)]
enum Mode {
    Copy,
    Owned,
}

struct State {
    mode: Mode,
    /// The body's bytes, built anew for every response (the work a real
    /// server does to produce one), into `scratch` or a pooled buffer.
    template: Vec<u8>,
    scratch: Vec<u8>,
    client: Option<TcpStream>,
    server_side: Option<TcpStream>,
    got: usize,
    responses: u64,
    running: bool,
}

fn serve(lp: &mut Loop<State>, st: &mut State, s: TcpStream, res: uvring::Result<&[u8]>) {
    if res.is_err() {
        let _ = lp.close(s, None);
        return;
    }
    match st.mode {
        Mode::Copy => {
            st.scratch.clear();
            st.scratch.extend_from_slice(&st.template);
            lp.write(s, &st.scratch, None).expect("write");
        }
        Mode::Owned => {
            let mut buf = lp.write_buf();
            buf.extend_from_slice(&st.template);
            lp.write_vec(s, buf, None).expect("write_vec");
        }
    }
}

fn receive(lp: &mut Loop<State>, st: &mut State, s: TcpStream, res: uvring::Result<&[u8]>) {
    let Ok(bytes) = res else {
        let _ = lp.close(s, None);
        return;
    };
    st.got += bytes.len();
    if st.got >= st.template.len() {
        st.got -= st.template.len();
        st.responses += 1;
        if st.running {
            lp.write(s, b"?", None).expect("request");
        }
    }
}

/// One measured window: `secs` of request/response in `mode`; returns
/// (CPU us per response, responses per second).
fn window(lp: &mut Loop<State>, st: &mut State, mode: Mode, secs: f64) -> (f64, f64) {
    st.mode = mode;
    st.responses = 0;
    st.running = true;
    let client = st.client.expect("connected");
    lp.write(client, b"?", None).expect("request");
    let cpu0 = proctree::self_cpu();
    let t0 = Instant::now();
    let end = t0 + Duration::from_secs_f64(secs);
    while Instant::now() < end {
        lp.run(RunMode::Once, st).expect("run");
    }
    // Let the last response finish, then stop asking.
    st.running = false;
    let n = st.responses;
    let cpu = proctree::self_cpu() - cpu0;
    let wall = t0.elapsed();
    while st.got != 0 || st.responses == n {
        lp.run(RunMode::Once, st).expect("run");
    }
    (cpu.as_secs_f64() * 1e6 / n as f64, n as f64 / wall.as_secs_f64())
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn run() -> Result<(), String> {
    let mut backend = Backend::Auto;
    let mut bytes = 256 << 10;
    let mut secs = 1.0f64;
    let mut rounds = 5usize;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = || args.next().ok_or_else(|| format!("{a} needs a value"));
        match a.as_str() {
            "--backend" => backend = Backend::parse(&value()?).ok_or("bad --backend")?,
            "--bytes" => bytes = value()?.parse().map_err(|_| "bad --bytes")?,
            "--secs" => secs = value()?.parse().map_err(|_| "bad --secs")?,
            "--rounds" => rounds = value()?.parse().map_err(|_| "bad --rounds")?,
            other => return Err(format!("unknown argument {other}")),
        }
    }
    let fail = |e: uvring::Error| e.to_string();
    let mut lp: Loop<State> = Loop::with_backend(backend).map_err(|e| format!("{backend}: {e}"))?;
    let mut st = State {
        mode: Mode::Copy,
        template: (0..bytes).map(|i| (i % 251) as u8).collect(),
        scratch: Vec::new(),
        client: None,
        server_side: None,
        got: 0,
        responses: 0,
        running: false,
    };
    let on_serve = OnRead::new(serve);
    let on_connection = OnConnection::new(move |lp, st: &mut State, server: TcpListener, status| {
        if status.is_ok() {
            if let Ok(c) = lp.accept(server) {
                lp.read_start(c, &on_serve).expect("read_start");
                st.server_side = Some(c);
            }
        }
    });
    let on_receive = OnRead::new(receive);
    let on_connect = OnConnect::new(move |lp, st: &mut State, s: TcpStream, status| {
        status.expect("connect");
        lp.tcp_nodelay(s, true).expect("nodelay");
        lp.read_start(s, &on_receive).expect("read_start");
        st.client = Some(s);
    });
    let sock = lp.tcp_init().map_err(fail)?;
    lp.tcp_bind(sock, SocketAddr::from(([127, 0, 0, 1], 0)), 0).map_err(fail)?;
    let server = lp.listen(sock, 16, &on_connection).map_err(fail)?;
    let addr = lp.tcp_getsockname(server).map_err(fail)?;
    let sock = lp.tcp_init().map_err(fail)?;
    lp.tcp_connect(sock, addr, &on_connect).map_err(fail)?;
    while st.client.is_none() || st.server_side.is_none() {
        lp.run(RunMode::Once, &mut st).map_err(fail)?;
    }
    // Warm-up: buffers and queues reach their working sizes.
    window(&mut lp, &mut st, Mode::Copy, secs / 4.0);
    window(&mut lp, &mut st, Mode::Owned, secs / 4.0);
    let (mut cpu_copy, mut cpu_owned, mut rate_copy, mut rate_owned) = (vec![], vec![], vec![], vec![]);
    for round in 0..rounds {
        // Alternate which mode goes first.
        let order = if round % 2 == 0 { [Mode::Copy, Mode::Owned] } else { [Mode::Owned, Mode::Copy] };
        for mode in order {
            let (cpu, rate) = window(&mut lp, &mut st, mode, secs);
            match mode {
                Mode::Copy => {
                    cpu_copy.push(cpu);
                    rate_copy.push(rate);
                }
                Mode::Owned => {
                    cpu_owned.push(cpu);
                    rate_owned.push(rate);
                }
            }
        }
    }
    let ratios: Vec<String> = cpu_owned.iter().zip(&cpu_copy).map(|(o, c)| format!("{:.2}", o / c)).collect();
    let (cc, co) = (median(&mut cpu_copy), median(&mut cpu_owned));
    let (rc, ro) = (median(&mut rate_copy), median(&mut rate_owned));
    println!("write_probe (in-process: server and client in one loop), backend {}, {bytes} B bodies, {rounds} x {secs} s per mode", lp.backend());
    println!("  copy  (write):     {cc:9.2} us CPU per response  {rc:10.0} responses/s");
    println!("  owned (write_vec): {co:9.2} us CPU per response  {ro:10.0} responses/s");
    println!("  owned / copy: CPU {:.2}x, rate {:.2}x; per round CPU {}", co / cc, ro / rc, ratios.join(" "));
    for s in [st.client.take(), st.server_side.take()].into_iter().flatten() {
        let _ = lp.close(s, None);
    }
    let _ = lp.close(server, None);
    lp.run(RunMode::Default, &mut st).map_err(fail)?;
    Ok(())
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("write_probe: {e}");
            ExitCode::FAILURE
        }
    }
}
