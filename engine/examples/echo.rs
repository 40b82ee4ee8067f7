//! TCP echo server on 127.0.0.1.
//!
//! `PORT` picks the port (default 7000), `UVRING_BACKEND` the backend
//! (`epoll`, `io_uring`, `auto`). Ctrl-C (SIGINT) closes every handle, so
//! the loop ends, and prints what was served.
//!
//! ```text
//! PORT=7000 UVRING_BACKEND=io_uring cargo run --release --example echo
//! ```
//!
//! The server's state is the loop's data: `run` takes it, and every
//! callback gets it next to the loop, so no callback needs a shared,
//! reference-counted cell.

use std::net::SocketAddr;
use uvring::{Loop, OnConnection, OnRead, OnSignal, RunMode, TcpListener, TcpStream};

/// What the server counts; the loop's data `D`.
#[derive(Default)]
struct Echo {
    /// Connections open now.
    open: usize,
    /// Connections accepted since the start.
    served: u64,
    /// Bytes echoed back since the start.
    echoed: u64,
}

/// Echoes each chunk back; closes the connection at EOF or on an error.
fn on_read(lp: &mut Loop<Echo>, echo: &mut Echo, stream: TcpStream, res: uvring::Result<&[u8]>) {
    if let Ok(bytes) = res {
        if lp.write(stream, bytes, None).is_ok() {
            echo.echoed += bytes.len() as u64;
            return;
        }
    }
    if lp.close(stream, None).is_ok() {
        echo.open -= 1;
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let port: u16 = std::env::var("PORT").ok().and_then(|p| p.parse().ok()).unwrap_or(7000);
    let mut lp: Loop<Echo> = Loop::new()?;
    eprintln!("echo: backend {}{}", lp.backend(), lp.fallback_reason().map(|r| format!(" ({r})")).unwrap_or_default());

    // Callbacks are built once and shared by every connection.
    let on_read = OnRead::new(on_read);
    let on_connection = OnConnection::new(move |lp, echo: &mut Echo, server: TcpListener, status| {
        if let Err(e) = status {
            eprintln!("echo: accept: {e}");
            return;
        }
        while let Ok(client) = lp.accept(server) {
            let _ = lp.tcp_nodelay(client, true);
            if lp.read_start(client, &on_read).is_err() {
                let _ = lp.close(client, None);
                continue;
            }
            echo.open += 1;
            echo.served += 1;
        }
    });
    let on_sigint = OnSignal::new(|lp, echo: &mut Echo, _sig, _signum| {
        eprintln!(
            "echo: {} connections served, {} bytes echoed, {} open; closing",
            echo.served, echo.echoed, echo.open
        );
        lp.walk(|lp, h| {
            if !lp.is_closing(h) {
                let _ = lp.close(h, None);
            }
        });
    });

    let sock = lp.tcp_init()?;
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    lp.tcp_bind(sock, addr, 0)?;
    let server = lp.listen(sock, 1024, &on_connection)?;
    lp.signal_start(libc::SIGINT, &on_sigint)?;
    eprintln!("echo: listening on {}", lp.tcp_getsockname(server)?);
    let mut echo = Echo::default();
    lp.run(RunMode::Default, &mut echo)?;
    Ok(())
}
