//! The uvring side of the external-client echo benchmark
//! (`bench/echo_external.sh`): a TCP echo server on one loop, one thread,
//! nothing else in the process. The clients are another process
//! (`echo_client`), pinned to the other core.
//!
//! ```text
//! echo_server --backend epoll|io_uring|auto [--port P] [--cpu N]
//! ```
//!
//! Prints `listening 127.0.0.1:PORT BACKEND` on stdout once it accepts
//! (port 0, the default, takes a free port). SIGINT or SIGTERM closes every
//! handle and the process exits 0.

use std::io::Write;
use std::net::SocketAddr;
use std::process::ExitCode;
use uvring::{Backend, Loop, OnConnection, OnRead, OnSignal, RunMode, TcpListener, TcpStream};
use uvring_bench::proctree;

/// The server's state: connections open, for the exit line.
#[derive(Default)]
struct Echo {
    open: usize,
}

/// Echoes each chunk back; closes the connection at EOF or on an error.
fn on_read(lp: &mut Loop<Echo>, echo: &mut Echo, stream: TcpStream, res: uvring::Result<&[u8]>) {
    if let Ok(bytes) = res {
        if lp.write(stream, bytes, None).is_ok() {
            return;
        }
    }
    if lp.close(stream, None).is_ok() {
        echo.open -= 1;
    }
}

fn run() -> Result<(), String> {
    let mut backend = Backend::Auto;
    let mut port = 0u16;
    let mut cpu = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = || args.next().ok_or_else(|| format!("{a} needs a value"));
        match a.as_str() {
            "--backend" => backend = Backend::parse(&value()?).ok_or("bad --backend")?,
            "--port" => port = value()?.parse().map_err(|_| "bad --port")?,
            "--cpu" => cpu = Some(value()?.parse::<usize>().map_err(|_| "bad --cpu")?),
            other => return Err(format!("unknown argument {other}")),
        }
    }
    if let Some(cpu) = cpu {
        proctree::pin_to_cpu(cpu).map_err(|e| format!("pin to cpu {cpu}: {e}"))?;
    }
    let mut lp: Loop<Echo> = Loop::with_backend(backend).map_err(|e| format!("{backend}: {e}"))?;
    let on_read = OnRead::new(on_read);
    let on_connection = OnConnection::new(move |lp, echo: &mut Echo, server: TcpListener, status| {
        if status.is_err() {
            return;
        }
        while let Ok(client) = lp.accept(server) {
            let _ = lp.tcp_nodelay(client, true);
            if lp.read_start(client, &on_read).is_err() {
                let _ = lp.close(client, None);
                continue;
            }
            echo.open += 1;
        }
    });
    let on_stop = OnSignal::new(|lp, _echo: &mut Echo, _sig, _signum| {
        lp.walk(|lp, h| {
            if !lp.is_closing(h) {
                let _ = lp.close(h, None);
            }
        });
    });
    let fail = |e: uvring::Error| e.to_string();
    let sock = lp.tcp_init().map_err(fail)?;
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    lp.tcp_bind(sock, addr, 0).map_err(fail)?;
    let server = lp.listen(sock, 1024, &on_connection).map_err(fail)?;
    lp.signal_start(libc::SIGINT, &on_stop).map_err(fail)?;
    lp.signal_start(libc::SIGTERM, &on_stop).map_err(fail)?;
    let local = lp.tcp_getsockname(server).map_err(fail)?;
    println!("listening {local} {}", lp.backend());
    let _ = std::io::stdout().flush();
    let mut echo = Echo::default();
    lp.run(RunMode::Default, &mut echo).map_err(fail)?;
    Ok(())
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("echo_server: {e}");
            ExitCode::FAILURE
        }
    }
}
