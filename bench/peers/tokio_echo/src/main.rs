//! The tokio peer of `bench/echo_external.sh`: a TCP echo server on tokio's
//! current-thread runtime (one thread, like the uvring and monoio peers),
//! one task per connection, 16 KiB read buffer (the size of uvring's pool
//! buffers).
//!
//! ```text
//! tokio_echo [--port P]
//! ```
//!
//! Prints `listening ADDR` once it accepts.

use std::net::SocketAddr;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn main() {
    let mut port = 0u16;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let v = args.next().unwrap_or_default();
        match a.as_str() {
            "--port" => port = v.parse().expect("bad --port"),
            other => panic!("unknown argument {other}"),
        }
    }
    let rt = tokio::runtime::Builder::new_current_thread().enable_io().build().expect("runtime");
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, async move {
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let listener = tokio::net::TcpListener::bind(addr).await.expect("bind");
        println!("listening {}", listener.local_addr().expect("local addr"));
        loop {
            let Ok((mut conn, _)) = listener.accept().await else { continue };
            let _ = conn.set_nodelay(true);
            tokio::task::spawn_local(async move {
                let mut buf = vec![0u8; 16 * 1024];
                loop {
                    match conn.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            if conn.write_all(&buf[..n]).await.is_err() {
                                break;
                            }
                        }
                    }
                }
            });
        }
    });
}
