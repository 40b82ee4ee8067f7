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
//! `cargo bench -p uvring-bench --bench echo` takes about 2 minutes.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use std::time::Duration;
use uvring::Backend;
use uvring_bench::{backend_available, EchoRig};

#[path = "peers/tokio_echo.rs"]
mod tokio_echo;
use tokio_echo::TokioEcho;

const SHAPES: [(usize, usize, &str); 4] =
    [(1, 64, "64B"), (64, 64, "64B"), (1, 16 * 1024, "16KiB"), (64, 16 * 1024, "16KiB")];

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
