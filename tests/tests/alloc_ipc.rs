//! Zero heap allocation on the fd-passing hot path after warm-up, on both
//! backends: a socket travels back and forth over an IPC pipe pair, sent
//! with `write2` (dup at call time) one way and `write_fds` (an `FdBatch`)
//! the other, received as a handle (`accept_pending`, then closed) on one
//! side and as a raw fd (`accept_pending_fd`) on the other.
//!
//! A counting global allocator counts, per thread, the allocations made
//! while the thread's measuring flag is on.

use std::cell::Cell;
use std::rc::Rc;
use std::time::Duration;
use uvring::*;
use uvring_tests::alloc_count::{allocations_in, CountingAllocator};
use uvring_tests::{both_backends, run_until};

#[global_allocator]
static GLOBAL: CountingAllocator = CountingAllocator;

const LIMIT: Duration = Duration::from_secs(60);

both_backends! {
    fn fd_round_trips_allocate_nothing(lp) {
        let (a, b) = lp.pipe_pair(true).unwrap();
        let rounds = Rc::new(Cell::new(0u64));
        let target = Rc::new(Cell::new(0u64));
        // b: take the handle as a stream, send it back (dup), close it.
        lp.read_start(b, &OnRead::new(|lp, b, res| {
            assert_eq!(res.expect("read on b"), b"x");
            while lp.pending_count(b).unwrap() > 0 {
                let h = lp.accept_pending(b).unwrap();
                lp.write2(b, b"y", h, None).unwrap();
                lp.close(h, None).unwrap();
            }
        })).unwrap();
        // a: take it back as a raw fd and send it again, in a batch.
        let (r, t) = (rounds.clone(), target.clone());
        lp.read_start(a, &OnRead::new(move |lp, a, res| {
            assert_eq!(res.expect("read on a"), b"y");
            while let Ok(fd) = lp.accept_pending_fd(a) {
                r.set(r.get() + 1);
                if r.get() < t.get() {
                    let mut batch = FdBatch::new();
                    batch.push(fd).unwrap();
                    lp.write_fds(a, b"x", &mut batch, None).unwrap();
                }
            }
        })).unwrap();
        let traveller = lp.tcp_init().unwrap();
        lp.tcp_bind(traveller, "127.0.0.1:0".parse().unwrap(), 0).unwrap();
        let trip = |lp: &mut Loop, n: u64| {
            rounds.set(0);
            target.set(n);
            lp.write2(a, b"x", traveller, None).unwrap();
            run_until(lp, LIMIT, |_| rounds.get() == n);
        };
        trip(lp, 200);
        let allocations = allocations_in(|| trip(lp, 2_000));
        assert_eq!(rounds.get(), 2_000);
        assert_eq!(allocations, 0, "heap allocations during 2,000 fd round trips");
        for s in [a, b, traveller] {
            lp.close(s, None).unwrap();
        }
        assert!(!lp.run(RunMode::Default).unwrap());
    }
}

#[test]
fn counting_allocator_counts() {
    // The measurement is real: one box, one allocation.
    let n = allocations_in(|| {
        std::hint::black_box(Box::new(7u64));
    });
    assert_eq!(n, 1);
}
