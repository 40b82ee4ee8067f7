//! The monoio peer of `bench/echo_external.sh`: a TCP echo server on
//! monoio's io_uring driver (one thread, thread-per-core style), one task
//! per connection, 16 KiB read buffer (the size of uvring's pool buffers).
//! monoio's I/O takes owned buffers: the buffer goes to the kernel with the
//! read and comes back with its result.
//!
//! ```text
//! monoio_echo [--port P]
//! ```
//!
//! Prints `listening ADDR` once it accepts; exits 1 if the io_uring driver
//! cannot start (no fallback to epoll: that would not be monoio's
//! io_uring figure).

use monoio::io::{AsyncReadRent, AsyncWriteRentExt};
use monoio::net::TcpListener;
use std::net::SocketAddr;

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
    let mut rt = match monoio::RuntimeBuilder::<monoio::IoUringDriver>::new().with_entries(1024).build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("monoio_echo: io_uring driver: {e}");
            std::process::exit(1);
        }
    };
    rt.block_on(async move {
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let listener = TcpListener::bind(addr).expect("bind");
        println!("listening {}", listener.local_addr().expect("local addr"));
        loop {
            let Ok((mut conn, _)) = listener.accept().await else { continue };
            let _ = conn.set_nodelay(true);
            monoio::spawn(async move {
                let mut buf = Vec::with_capacity(16 * 1024);
                loop {
                    let (res, b) = conn.read(buf).await;
                    buf = b;
                    match res {
                        Ok(0) | Err(_) => break,
                        Ok(_) => {}
                    }
                    let (res, b) = conn.write_all(buf).await;
                    buf = b;
                    if res.is_err() {
                        break;
                    }
                    buf.clear();
                }
            });
        }
    });
}
