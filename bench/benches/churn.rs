//! Accept/close churn per backend, with tokio's current-thread runtime as a
//! peer: 16 clients at a time connect to a server in the same loop (same
//! runtime for tokio), the server accepts and closes at once, the client
//! reads EOF and closes, and the next connection starts. One iteration is
//! one connection's whole life.
//!
//! `cargo bench -p uvring-bench --bench churn` takes about 20 s.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use std::time::{Duration, Instant};
use tokio::io::AsyncReadExt;
use uvring::Backend;
use uvring_bench::{backend_available, ChurnRig};

const PARALLEL: usize = 16;

/// The tokio peer: an accept-and-drop server task and `PARALLEL` client
/// tasks that connect, read to EOF and drop, in one current-thread runtime.
struct TokioChurn {
    rt: tokio::runtime::Runtime,
    addr: std::net::SocketAddr,
}

impl TokioChurn {
    fn new() -> TokioChurn {
        let rt = tokio::runtime::Builder::new_current_thread().enable_io().build().expect("tokio runtime");
        let addr = rt.block_on(async {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
            let addr = listener.local_addr().expect("local addr");
            tokio::spawn(async move {
                while let Ok((conn, _)) = listener.accept().await {
                    drop(conn);
                }
            });
            addr
        });
        TokioChurn { rt, addr }
    }

    fn run(&mut self, n: u64) -> Duration {
        let addr = self.addr;
        let start = Instant::now();
        self.rt.block_on(async move {
            let per = n / PARALLEL as u64;
            let extra = n % PARALLEL as u64;
            let tasks: Vec<_> = (0..PARALLEL as u64)
                .map(|i| {
                    let count = per + u64::from(i < extra);
                    tokio::spawn(async move {
                        let mut buf = [0u8; 64];
                        for _ in 0..count {
                            let mut c = tokio::net::TcpStream::connect(addr).await.expect("connect");
                            while c.read(&mut buf).await.map(|r| r > 0).unwrap_or(false) {}
                        }
                    })
                })
                .collect();
            for t in tasks {
                t.await.expect("client task");
            }
        });
        start.elapsed()
    }
}

fn churn(c: &mut Criterion) {
    let mut group = c.benchmark_group("churn");
    group.sample_size(20).warm_up_time(Duration::from_millis(1000)).measurement_time(Duration::from_secs(4));
    group.throughput(Throughput::Elements(1));
    let mut backends = vec![Backend::Epoll];
    match backend_available(Backend::IoUring) {
        Ok(()) => backends.push(Backend::IoUring),
        Err(e) => eprintln!("SKIP io_uring: {e}"),
    }
    for backend in backends {
        let mut rig = ChurnRig::new(backend, PARALLEL).expect("churn rig");
        group.bench_function(format!("{backend}/{PARALLEL}p"), |b| {
            b.iter_custom(|iters| rig.run(iters).expect("churn run"))
        });
    }
    let mut peer = TokioChurn::new();
    group.bench_function(format!("tokio/{PARALLEL}p"), |b| b.iter_custom(|iters| peer.run(iters)));
    group.finish();
}

criterion_group!(benches, churn);
criterion_main!(benches);
