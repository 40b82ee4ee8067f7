//! Zero heap allocation on the fd-passing hot path after warm-up, on both
//! backends: a socket travels back and forth over an IPC pipe pair, sent
//! with `write2` (dup at call time) one way and `write_fds` (an `FdBatch`)
//! the other, received as a handle (`accept_pending`, then closed) on one
//! side and as a raw fd (`accept_pending_fd`) on the other.
//!
//! A counting global allocator counts, per thread, the allocations made
//! while the thread's measuring flag is on. The state lives in the loop's
//! data `D`; the callbacks are plain functions.

use std::time::Duration;
use uvring::*;
use uvring_tests::alloc_count::{allocations_in, CountingAllocator};
use uvring_tests::{both_backends, run_until_with};

#[global_allocator]
static GLOBAL: CountingAllocator = CountingAllocator;

const LIMIT: Duration = Duration::from_secs(60);

/// The loop's data: round trips done, and how many to make.
#[derive(Default)]
struct Trips {
    rounds: u64,
    target: u64,
    /// Times `b` received the traveller.
    received: u64,
}

/// b: take the handle as a handle, send it back (dup), close it.
fn on_b(lp: &mut Loop<Trips>, d: &mut Trips, b: PipeStream, res: Result<&[u8]>) {
    assert_eq!(res.expect("read on b"), b"x");
    while lp.pending_count(b).unwrap() > 0 {
        let h = lp.accept_pending(b).unwrap();
        // A bound TCP socket, neither listening nor connected (the engine
        // currently types it as a stream: only a listening socket comes out
        // as a `TcpSocket`); either is sent back as it is.
        match h {
            PendingHandle::TcpSocket(s) => lp.write2(b, b"y", s, None).unwrap(),
            PendingHandle::TcpStream(s) => lp.write2(b, b"y", s, None).unwrap(),
            other => panic!("the traveller is a TCP socket, not {other:?}"),
        }
        d.received += 1;
        lp.close(h, None).unwrap();
    }
}

/// a: take it back as a raw fd and send it again, in a batch.
fn on_a(lp: &mut Loop<Trips>, d: &mut Trips, a: PipeStream, res: Result<&[u8]>) {
    assert_eq!(res.expect("read on a"), b"y");
    while let Ok(fd) = lp.accept_pending_fd(a) {
        d.rounds += 1;
        if d.rounds < d.target {
            let mut batch = FdBatch::new();
            batch.push(fd).unwrap();
            lp.write_fds(a, b"x", &mut batch, None).unwrap();
        }
    }
}

/// `n` round trips of the traveller.
fn trip(lp: &mut Loop<Trips>, d: &mut Trips, a: PipeStream, traveller: TcpSocket, n: u64) {
    d.rounds = 0;
    d.target = n;
    lp.write2(a, b"x", traveller, None).unwrap();
    run_until_with(lp, d, LIMIT, |_, d| d.rounds == n);
}

both_backends! {
    fn fd_round_trips_allocate_nothing(lp: Trips) {
        let mut d = Trips::default();
        let (a, b) = lp.pipe_pair(true).unwrap();
        lp.read_start(b, &OnRead::new(on_b)).unwrap();
        lp.read_start(a, &OnRead::new(on_a)).unwrap();
        let traveller = lp.tcp_init().unwrap();
        lp.tcp_bind(traveller, "127.0.0.1:0".parse().unwrap(), 0).unwrap();
        trip(lp, &mut d, a, traveller, 200);
        let allocations = allocations_in(|| trip(lp, &mut d, a, traveller, 2_000));
        assert_eq!(d.rounds, 2_000);
        assert_eq!(d.received, 2_200);
        assert_eq!(allocations, 0, "heap allocations during 2,000 fd round trips");
        lp.close(a, None).unwrap();
        lp.close(b, None).unwrap();
        lp.close(traveller, None).unwrap();
        assert!(!lp.run(RunMode::Default, &mut d).unwrap());
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
