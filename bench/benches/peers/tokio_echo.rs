//! The tokio peer of the echo benchmark: server and client tasks in one
//! current-thread runtime, the same shape as `uvring_bench::EchoRig`.
//! Shared by `benches/echo.rs` and `examples/echo_ab.rs` (`#[path]` module).

use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The tokio peer: server and clients in one current-thread runtime.
pub struct TokioEcho {
    rt: tokio::runtime::Runtime,
    clients: Vec<tokio::net::TcpStream>,
    msg: Vec<u8>,
}

impl TokioEcho {
    pub fn new(conns: usize, size: usize) -> TokioEcho {
        let rt = tokio::runtime::Builder::new_current_thread().enable_io().build().expect("tokio runtime");
        let msg: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
        let clients = rt.block_on(async {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
            let addr: SocketAddr = listener.local_addr().expect("local addr");
            // The server: one task per connection, echoing each chunk back
            // with the same buffer size the uvring pool uses (16 KiB).
            tokio::spawn(async move {
                while let Ok((mut conn, _)) = listener.accept().await {
                    let _ = conn.set_nodelay(true);
                    tokio::spawn(async move {
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
            let mut clients = Vec::with_capacity(conns);
            for _ in 0..conns {
                let c = tokio::net::TcpStream::connect(addr).await.expect("connect");
                c.set_nodelay(true).expect("nodelay");
                clients.push(c);
            }
            clients
        });
        TokioEcho { rt, clients, msg }
    }

    /// Every client does `rounds` round trips, all at once.
    pub fn run(&mut self, rounds: u64) -> Duration {
        let clients = std::mem::take(&mut self.clients);
        let msg = std::mem::take(&mut self.msg);
        let start = Instant::now();
        let (clients, msg) = self.rt.block_on(async move {
            let msg = std::sync::Arc::new(msg);
            let tasks: Vec<_> = clients
                .into_iter()
                .map(|mut c| {
                    let msg = msg.clone();
                    tokio::spawn(async move {
                        let mut buf = vec![0u8; msg.len()];
                        for _ in 0..rounds {
                            c.write_all(&msg).await.expect("client write");
                            c.read_exact(&mut buf).await.expect("client read");
                        }
                        c
                    })
                })
                .collect();
            let mut back = Vec::with_capacity(tasks.len());
            for t in tasks {
                back.push(t.await.expect("client task"));
            }
            (back, std::sync::Arc::try_unwrap(msg).expect("sole owner"))
        });
        let elapsed = start.elapsed();
        self.clients = clients;
        self.msg = msg;
        elapsed
    }
}
