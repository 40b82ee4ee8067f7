//! TCP echo server on 127.0.0.1.
//!
//! `PORT` picks the port (default 7000), `UVRING_BACKEND` the backend
//! (`epoll`, `io_uring`, `auto`).
//!
//! ```text
//! PORT=7000 UVRING_BACKEND=io_uring cargo run --release --example echo
//! ```

use std::net::SocketAddr;
use uvring::{Error, Loop, OnConnection, OnRead, RunMode};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let port: u16 = std::env::var("PORT").ok().and_then(|p| p.parse().ok()).unwrap_or(7000);
    let mut lp = Loop::new()?;
    eprintln!("echo: backend {}{}", lp.backend(), lp.fallback_reason().map(|r| format!(" ({r})")).unwrap_or_default());

    // Callbacks are built once and shared by every connection.
    let on_read = OnRead::new(|lp, stream, res| match res {
        Ok(bytes) => {
            if lp.write(stream, bytes, None).is_err() {
                let _ = lp.close(stream, None);
            }
        }
        Err(_) => {
            let _ = lp.close(stream, None);
        }
    });
    let on_connection = OnConnection::new(move |lp, server, status| {
        if let Err(e) = status {
            eprintln!("echo: accept: {e}");
            return;
        }
        while let Ok(client) = lp.accept(server) {
            let _ = lp.tcp_nodelay(client, true);
            if lp.read_start(client, &on_read).is_err() {
                let _ = lp.close(client, None);
            }
        }
    });

    let server = lp.tcp_init()?;
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    lp.tcp_bind(server, addr, 0)?;
    lp.listen(server, 1024, &on_connection)?;
    eprintln!("echo: listening on {}", lp.tcp_getsockname(server)?);
    lp.run(RunMode::Default)?;
    let _: Option<Error> = None;
    Ok(())
}
