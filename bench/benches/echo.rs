//! Echo ping-pong on one loop thread: uvring on epoll, uvring on io_uring,
//! and tokio's current-thread runtime, side by side in one criterion group.
//!
//! Function names are `<peer>/<conns>c/<size>`: `epoll/64c/64B`,
//! `io_uring/1c/16KiB`, `tokio/64c/64B`, ... One iteration is one round trip
//! on every connection (so `conns` round trips), and the throughput is the
//! bytes echoed per iteration (`conns * size`), which makes 1- and
//! 64-connection cases comparable on the same plot.
//!
//! Both sides of the traffic run on the same thread: the uvring server and
//! its clients are handles of one loop (see `uvring_bench::EchoRig`), the
//! tokio server and client tasks live in one current-thread runtime. The
//! measured thing is the engine (or the runtime) and the kernel's loopback,
//! with no thread hand-off, on one core.
//!
//! `cargo bench -p uvring-bench --bench echo` takes about 80 s.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use uvring::Backend;
use uvring_bench::{backend_available, EchoRig};

const SHAPES: [(usize, usize, &str); 4] =
    [(1, 64, "64B"), (64, 64, "64B"), (1, 16 * 1024, "16KiB"), (64, 16 * 1024, "16KiB")];

/// The tokio peer: server and clients in one current-thread runtime.
struct TokioEcho {
    rt: tokio::runtime::Runtime,
    clients: Vec<tokio::net::TcpStream>,
    msg: Vec<u8>,
}

impl TokioEcho {
    fn new(conns: usize, size: usize) -> TokioEcho {
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
    fn run(&mut self, rounds: u64) -> Duration {
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

fn echo(c: &mut Criterion) {
    let mut group = c.benchmark_group("echo");
    group.sample_size(20).warm_up_time(Duration::from_millis(1000)).measurement_time(Duration::from_secs(4));
    let uring = match backend_available(Backend::IoUring) {
        Ok(()) => true,
        Err(e) => {
            eprintln!("SKIP io_uring: {e}");
            false
        }
    };
    for (conns, size, label) in SHAPES {
        group.throughput(Throughput::Bytes((conns * size) as u64));
        let mut backends = vec![Backend::Epoll];
        if uring {
            backends.push(Backend::IoUring);
        }
        for backend in backends {
            let mut rig = EchoRig::new(backend, conns, size).expect("echo rig");
            let id = BenchmarkId::new(format!("{backend}"), format!("{conns}c/{label}"));
            group.bench_function(id, |b| b.iter_custom(|iters| rig.run(iters).expect("echo run")));
        }
        let mut peer = TokioEcho::new(conns, size);
        let id = BenchmarkId::new("tokio", format!("{conns}c/{label}"));
        group.bench_function(id, |b| b.iter_custom(|iters| peer.run(iters)));
    }
    group.finish();
}

criterion_group!(benches, echo);
criterion_main!(benches);
