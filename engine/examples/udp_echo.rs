//! UDP echo server on 127.0.0.1: every datagram goes back to its sender.
//!
//! `PORT` picks the port (default 7000), `UVRING_BACKEND` the backend
//! (`epoll`, `io_uring`, `auto`). Ctrl-C (SIGINT) closes every handle, so
//! the loop ends, and prints what was served.
//!
//! ```text
//! PORT=7000 UVRING_BACKEND=io_uring cargo run --release --example udp_echo
//! echo hello | nc -u -w1 127.0.0.1 7000
//! ```
//!
//! The server's state is the loop's data: `run` takes it, and every
//! callback gets it next to the loop, so no callback needs a shared cell.
//! Each datagram is lent to the receive callback for the
//! call; `udp_send` copies it, so it can go straight back. Datagrams longer
//! than a receive buffer's payload space (16 KiB less 44 bytes with the
//! default `PoolConfig`) arrive cut and are counted as truncated.

use std::net::SocketAddr;
use uvring::{Datagram, Loop, OnRecv, OnSend, OnSignal, RunMode, Udp};

/// What the server counts; the loop's data `D`.
#[derive(Default)]
struct Echo {
    /// Datagrams received, and bytes echoed back.
    received: u64,
    echoed: u64,
    /// Datagrams that arrived cut (longer than a receive buffer) and sends
    /// that failed.
    truncated: u64,
    failed: u64,
}

/// Sends each datagram back to where it came from.
fn on_recv(lp: &mut Loop<Echo>, echo: &mut Echo, udp: Udp, res: uvring::Result<Datagram<'_>>, on_sent: &OnSend<Echo>) {
    match res {
        Ok(dg) => {
            echo.received += 1;
            if dg.flags.is_truncated() {
                echo.truncated += 1;
            }
            if lp.udp_send(udp, dg.data, dg.addr, Some(on_sent)).is_err() {
                echo.failed += 1;
            }
        }
        // An ICMP error about an earlier datagram: receiving goes on.
        Err(e) => eprintln!("udp_echo: receive: {e}"),
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let port: u16 = std::env::var("PORT").ok().and_then(|p| p.parse().ok()).unwrap_or(7000);
    let mut lp: Loop<Echo> = Loop::new()?;
    eprintln!(
        "udp_echo: backend {}{}",
        lp.backend(),
        lp.fallback_reason().map(|r| format!(" ({r})")).unwrap_or_default()
    );

    // Callbacks are built once and shared by every datagram.
    let on_sent = OnSend::new(|_, echo: &mut Echo, _, status: uvring::Result<()>| match status {
        Ok(()) => echo.echoed += 1,
        Err(_) => echo.failed += 1,
    });
    let on_recv = OnRecv::new(move |lp, echo: &mut Echo, udp, res: uvring::Result<Datagram<'_>>| {
        on_recv(lp, echo, udp, res, &on_sent)
    });
    let on_sigint = OnSignal::new(|lp, echo: &mut Echo, _sig, _signum| {
        eprintln!(
            "udp_echo: {} datagrams received, {} echoed, {} truncated, {} failed; closing",
            echo.received, echo.echoed, echo.truncated, echo.failed
        );
        lp.walk(|lp, h| {
            if !lp.is_closing(h) {
                let _ = lp.close(h, None);
            }
        });
    });

    let udp = lp.udp_init()?;
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    lp.udp_bind(udp, addr, 0)?;
    lp.udp_recv_start(udp, &on_recv)?;
    lp.signal_start(libc::SIGINT, &on_sigint)?;
    eprintln!("udp_echo: listening on udp {}", lp.udp_getsockname(udp)?);
    let mut echo = Echo::default();
    lp.run(RunMode::Default, &mut echo)?;
    Ok(())
}
