//! Zero allocation on the round-robin hot paths after warm-up: in the
//! primary, accept -> choose a worker -> send the fd (and take the ack); in
//! the worker, receive the fd -> `on_connection` -> serve -> close. The
//! primary runs in this process under a thread-local counting allocator
//! (client threads are not counted); each worker counts its own
//! allocations and reports them.

mod cluster_support;

use cluster_support::*;
use std::time::{Duration, Instant};
use uvring::{Loop, RunMode};
use uvring_tests::alloc_count::{allocations_in, CountingAllocator};

#[global_allocator]
static GLOBAL: CountingAllocator = CountingAllocator;

/// Runs the loop, counting this thread's allocations inside `lp.run` only,
/// until `n` answers arrived; returns the count.
fn run_counted(
    lp: &mut Loop<Cluster>,
    c: &mut Cluster,
    rx: &std::sync::mpsc::Receiver<std::io::Result<String>>,
    n: usize,
) -> usize {
    let tick = lp.timer_init().unwrap();
    let every = Duration::from_millis(10);
    lp.timer_start(tick, every, every, &uvring::OnTimer::new(|_, _, _| {})).unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut got = 0;
    let mut count = 0;
    while got < n {
        assert!(Instant::now() < deadline, "timed out");
        count += allocations_in(|| {
            lp.run(RunMode::Once, c).unwrap();
        }) as usize;
        while let Ok(a) = rx.try_recv() {
            assert!(a.unwrap().starts_with("worker "));
            got += 1;
        }
    }
    lp.close(tick, None).unwrap();
    count
}

cluster_test! {
    fn rr_hot_paths_allocate_nothing(lp, policy) [rr = RoundRobin] {
        let mut c = start_cluster(lp, settings(policy, "serve", 2));
        wait_for(lp, &mut c, |l| l.listening.len() == 2);
        let port = c.log.listening[0].1;
        // Warm-up, burstier than the measured run: queues, write buffers
        // and recycled stream parts reach the sizes the measured run needs.
        let rx = ask_many(port, 2000, 16);
        collect(lp, &mut c, &rx, 2000);
        for w in c.primary.workers() {
            c.primary.send(lp, w.id(), b"alloc-start").unwrap();
        }
        wait_for(lp, &mut c, |l| l.count_prefix("alloc-started") == 2);
        let rx = ask_many(port, 400, 4);
        let primary_allocs = run_counted(lp, &mut c, &rx, 400);
        for w in c.primary.workers() {
            c.primary.send(lp, w.id(), b"alloc-stop").unwrap();
        }
        wait_for(lp, &mut c, |l| l.count_prefix("allocs ") == 2);
        let reports: Vec<String> = c.log.messages.iter().filter(|(_, m)| m.starts_with("allocs ")).map(|(_, m)| m.clone()).collect();
        assert_eq!(primary_allocs, 0, "primary: accept -> choose -> send fd allocated");
        for r in &reports {
            let mut it = r.split(' ');
            let (n, total): (usize, usize) = (it.nth(1).unwrap().parse().unwrap(), it.nth(1).unwrap().parse().unwrap());
            assert!(total > 0, "the worker's counter counts");
            assert_eq!(n, 0, "worker: receive fd -> on_connection allocated: {reports:?}");
        }
        // And this thread's counter counts.
        assert!(allocations_in(|| drop(std::hint::black_box(Box::new(1u64)))) >= 1);
        assert!(c.primary.stats().handed_off >= 800);
        shutdown(lp, &mut c);
    }
}
