//! UDP datagram ping-pong per backend: epoll vs io_uring, 1 and 64 client
//! sockets, 64-byte datagrams. Each client socket is connected to one echo
//! server socket in the same loop (see `uvring_bench::UdpRig`), sends a
//! datagram and waits for its echo before sending the next; the server
//! answers to each datagram's sender address. Server and clients are
//! handles of one loop on one thread: the figure is the engine plus the
//! kernel's loopback, no thread hand-off, one core.
//!
//! Function names are `<backend>/<sockets>s/64B`. One iteration is one round
//! trip on every socket; the throughput is in round trips (`sockets` per
//! iteration), so the 1- and 64-socket cases share a scale.
//!
//! `cargo bench -p uvring-bench --bench udp` takes about 30 s.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use std::time::Duration;
use uvring::Backend;
use uvring_bench::{backend_available, UdpRig};

const SOCKETS: [usize; 2] = [1, 64];
const SIZE: usize = 64;

fn udp(c: &mut Criterion) {
    let mut group = c.benchmark_group("udp");
    group.sample_size(20).warm_up_time(Duration::from_millis(1000)).measurement_time(Duration::from_secs(4));
    let mut backends = vec![Backend::Epoll];
    match backend_available(Backend::IoUring) {
        Ok(()) => backends.push(Backend::IoUring),
        Err(e) => eprintln!("SKIP io_uring: {e}"),
    }
    for sockets in SOCKETS {
        group.throughput(Throughput::Elements(sockets as u64));
        for &backend in &backends {
            let mut rig = UdpRig::new(backend, sockets, SIZE).expect("udp rig");
            let id = BenchmarkId::new(format!("{backend}"), format!("{sockets}s/{SIZE}B"));
            group.bench_function(id, |b| b.iter_custom(|iters| rig.run(iters).expect("udp run")));
        }
    }
    group.finish();
}

criterion_group!(benches, udp);
criterion_main!(benches);
