//! Timer start/stop: 10 000 timers started (spread-out timeouts) and then
//! stopped, per iteration. Timers never touch the backend, so one backend
//! suffices; the throughput is in timers (one start plus one stop each).
//!
//! `cargo bench -p uvring-bench --bench timers` takes about 10 s.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use std::time::Duration;
use uvring::Backend;
use uvring_bench::TimerRig;

const TIMERS: usize = 10_000;

fn timers(c: &mut Criterion) {
    let mut group = c.benchmark_group("timers");
    group.sample_size(20).warm_up_time(Duration::from_millis(1000)).measurement_time(Duration::from_secs(4));
    group.throughput(Throughput::Elements(TIMERS as u64));
    let mut rig = TimerRig::new(Backend::Epoll, TIMERS).expect("timer rig");
    group.bench_function("start_stop/10k", |b| b.iter(|| rig.start_stop().expect("start/stop")));
    group.finish();
}

criterion_group!(benches, timers);
criterion_main!(benches);
