//! The work pool (`uv_queue_work`): libuv's threadpool scenarios, cancel,
//! liveness, panics, fork, and allocation per item, on both backends.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};
use uvring::*;
use uvring_tests::alloc_count::{allocations_in, CountingAllocator};
use uvring_tests::{both_backends, run_until_with};

#[global_allocator]
static GLOBAL: CountingAllocator = CountingAllocator;

const LIMIT: Duration = Duration::from_secs(10);

/// A gate that holds pool threads until it is opened.
#[derive(Clone, Default)]
struct Gate(Arc<(Mutex<bool>, Condvar)>);

impl Gate {
    fn wait(&self) {
        let (lock, cond) = &*self.0;
        let mut open = lock.lock().unwrap();
        while !*open {
            open = cond.wait(open).unwrap();
        }
    }
    fn open(&self) {
        let (lock, cond) = &*self.0;
        *lock.lock().unwrap() = true;
        cond.notify_all();
    }
}

/// Occupies every pool thread with an item that waits for `gate`; returns
/// once all of them have started. Their `done` counts into `Blocked::done`.
fn block_pool<D: Blocked + 'static>(lp: &mut Loop<D>, gate: &Gate) -> Vec<Work> {
    let started = Arc::new(AtomicUsize::new(0));
    let n = threadpool_size();
    let items = (0..n)
        .map(|_| {
            let (g, s) = (gate.clone(), started.clone());
            lp.queue_work(
                move || {
                    s.fetch_add(1, Ordering::AcqRel);
                    g.wait();
                },
                |_, d: &mut D, r| {
                    r.unwrap();
                    d.blocker_done();
                },
            )
            .unwrap()
        })
        .collect();
    let deadline = Instant::now() + LIMIT;
    while started.load(Ordering::Acquire) < n {
        assert!(Instant::now() < deadline, "pool threads did not all start");
        std::thread::sleep(Duration::from_millis(1));
    }
    items
}

trait Blocked {
    fn blocker_done(&mut self);
}

#[derive(Default)]
struct Cancel {
    blockers_done: usize,
    cancelled: usize,
    other: Vec<Result<()>>,
}

impl Blocked for Cancel {
    fn blocker_done(&mut self) {
        self.blockers_done += 1;
    }
}

#[derive(Default)]
struct Chain {
    done: Vec<u64>,
    work_ran_before_done: bool,
}

both_backends! {
    /// libuv's threadpool_queue_work_simple: the work runs on a pool
    /// thread, `done` on the loop thread with its result, and `run` returns
    /// once `done` has run (the item kept the loop alive).
    fn threadpool_queue_work_simple(lp: Vec<String>) {
        let loop_thread = std::thread::current().id();
        lp.queue_work(
            move || {
                assert_ne!(std::thread::current().id(), loop_thread, "work runs on a pool thread");
                assert!(std::thread::current().name().unwrap().starts_with("uvring-pool-"));
                6 * 7
            },
            move |lp, log: &mut Vec<String>, r| {
                assert_eq!(std::thread::current().id(), loop_thread, "done runs on the loop thread");
                log.push(format!("done {r:?} in flight {}", lp.work_in_flight()));
            },
        )
        .unwrap();
        assert!(lp.alive(), "a queued item keeps the loop alive");
        assert_eq!(lp.work_in_flight(), 1);
        let mut log = Vec::new();
        assert!(!lp.run(RunMode::Default, &mut log).unwrap());
        assert_eq!(log, ["done Ok(42) in flight 0"]);
        assert!(!lp.alive());
    }

    /// libuv's threadpool_cancel_work: with every pool thread busy, queued
    /// items are cancelled: their work never runs, their `done` gets
    /// ECANCELED from the loop (not from inside `cancel_work`). A running
    /// item cannot be cancelled (EBUSY), and a finished one is stale.
    fn threadpool_cancel_work(lp: Cancel) {
        let gate = Gate::default();
        let blockers = block_pool(lp, &gate);
        let ran = Arc::new(AtomicBool::new(false));
        let queued: Vec<Work> = (0..16)
            .map(|_| {
                let ran = ran.clone();
                lp.queue_work(move || ran.store(true, Ordering::Release), |_, d: &mut Cancel, r| {
                    assert_eq!(r, Err(Error::ECANCELED));
                    d.cancelled += 1;
                })
                .unwrap()
            })
            .collect();
        for &w in &queued {
            lp.cancel_work(w).unwrap();
        }
        assert_eq!(lp.cancel_work(queued[0]), Err(Error::EBUSY), "cancelled already");
        assert_eq!(lp.cancel_work(blockers[0]), Err(Error::EBUSY), "running");
        let mut d = Cancel::default();
        lp.run(RunMode::NoWait, &mut d).unwrap();
        assert_eq!(d.cancelled, 16, "cancelled items complete from the next pending phase");
        assert_eq!(lp.cancel_work(queued[0]), Err(Error::STALE_REQUEST), "its done has run");
        // An item cancelled from inside a callback completes on the loop too.
        let w = lp.queue_work(|| (), |_, d: &mut Cancel, r| d.other.push(r)).unwrap();
        let t = lp.timer_init().unwrap();
        let on_timer = OnTimer::new(move |lp: &mut Loop<Cancel>, d: &mut Cancel, t| {
            d.other.push(lp.cancel_work(w));
            lp.close(t, None).unwrap();
        });
        lp.timer_start(t, Duration::ZERO, Duration::ZERO, &on_timer).unwrap();
        run_until_with(lp, &mut d, LIMIT, |_, d| d.other.len() == 2);
        assert_eq!(d.other, [Ok(()), Err(Error::ECANCELED)]);
        gate.open();
        lp.run(RunMode::Default, &mut d).unwrap();
        assert_eq!(d.blockers_done, threadpool_size());
        assert!(!ran.load(Ordering::Acquire), "a cancelled item's work never runs");
    }

    /// libuv's threadpool_multiple_event_loops: loops on several threads
    /// share the pool; each gets its own items' completions.
    fn threadpool_multiple_event_loops(lp) {
        let backend = lp.backend();
        let threads: Vec<_> = (0..4u64)
            .map(|t| {
                std::thread::spawn(move || {
                    let mut lp: Loop<Vec<u64>> = Loop::with_backend(backend).unwrap();
                    for i in 0..25u64 {
                        let v = t * 100 + i;
                        lp.queue_work(move || v, |_, got: &mut Vec<u64>, r| got.push(r.unwrap())).unwrap();
                    }
                    let mut got = Vec::new();
                    lp.run(RunMode::Default, &mut got).unwrap();
                    got.sort_unstable();
                    assert_eq!(got, (0..25).map(|i| t * 100 + i).collect::<Vec<_>>());
                })
            })
            .collect();
        let mine = Arc::new(AtomicUsize::new(0));
        let m = mine.clone();
        lp.queue_work(move || m.fetch_add(1, Ordering::AcqRel), |_, _, r| assert_eq!(r, Ok(0))).unwrap();
        lp.run(RunMode::Default, &mut ()).unwrap();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(mine.load(Ordering::Acquire), 1);
    }

    /// `done` runs after its work, once; items queued from `done` keep the
    /// loop going; `run` returns exactly when the last `done` has run.
    fn work_completion_order_and_liveness(lp: Chain) {
        const CHAIN: u64 = 20;
        fn step(lp: &mut Loop<Chain>, i: u64) {
            let ran = Arc::new(AtomicBool::new(false));
            let r2 = ran.clone();
            lp.queue_work(
                move || {
                    r2.store(true, Ordering::Release);
                    i
                },
                move |lp, d: &mut Chain, r| {
                    d.work_ran_before_done &= ran.load(Ordering::Acquire);
                    d.done.push(r.unwrap());
                    if i + 1 < CHAIN {
                        step(lp, i + 1);
                    }
                },
            )
            .unwrap();
        }
        step(lp, 0);
        let mut d = Chain { done: Vec::new(), work_ran_before_done: true };
        assert!(!lp.run(RunMode::Default, &mut d).unwrap());
        assert_eq!(d.done, (0..CHAIN).collect::<Vec<_>>(), "each done once, in chain order");
        assert!(d.work_ran_before_done);
        // A burst: every done runs exactly once, whatever the finishing order.
        let mut burst = Chain { done: Vec::new(), work_ran_before_done: true };
        for i in 0..200u64 {
            lp.queue_work(move || i, |_, d: &mut Chain, r| d.done.push(r.unwrap())).unwrap();
        }
        assert_eq!(lp.work_in_flight(), 200);
        assert!(!lp.run(RunMode::Default, &mut burst).unwrap());
        burst.done.sort_unstable();
        assert_eq!(burst.done, (0..200).collect::<Vec<_>>());
        assert_eq!(lp.work_in_flight(), 0);
        // NoWait with nothing in flight returns at once.
        let t0 = Instant::now();
        assert!(!lp.run(RunMode::NoWait, &mut burst).unwrap());
        assert!(t0.elapsed() < Duration::from_secs(1));
    }

    /// A panicking work function gives `WORK_PANICKED` to `done`, and the
    /// pool keeps serving.
    fn work_panic_is_an_error_value(lp: Vec<Result<u32>>) {
        lp.queue_work(|| -> u32 { panic!("deliberate panic in a work item (expected in this test)") }, |_, got: &mut Vec<Result<u32>>, r| got.push(r))
            .unwrap();
        let mut got = Vec::new();
        lp.run(RunMode::Default, &mut got).unwrap();
        for _ in 0..threadpool_size() * 2 {
            lp.queue_work(|| 7u32, |_, got: &mut Vec<Result<u32>>, r| got.push(r)).unwrap();
        }
        lp.run(RunMode::Default, &mut got).unwrap();
        assert_eq!(got[0], Err(Error::WORK_PANICKED));
        assert!(got[1..].iter().all(|r| *r == Ok(7)), "{got:?}");
        assert_eq!(got.len(), 1 + threadpool_size() * 2);
    }

    /// Dropping a loop takes its unstarted items out of the pool's queue:
    /// their work never runs and what they captured is dropped; items of
    /// another loop are untouched.
    fn dropping_a_loop_drops_its_queued_items(lp: Cancel) {
        let gate = Gate::default();
        let blockers = block_pool(lp, &gate);
        assert_eq!(blockers.len(), threadpool_size());
        let ran = Arc::new(AtomicBool::new(false));
        let token = Arc::new(());
        {
            let mut other: Loop<()> = Loop::with_backend(lp.backend()).unwrap();
            for _ in 0..8 {
                let (ran, token) = (ran.clone(), token.clone());
                other.queue_work(move || {
                    let _keep = token;
                    ran.store(true, Ordering::Release);
                }, |_, _, _| panic!("the loop is gone")).unwrap();
            }
            assert_eq!(Arc::strong_count(&token), 9);
        }
        assert_eq!(Arc::strong_count(&token), 1, "the dropped loop's items were dropped with it");
        gate.open();
        let mut d = Cancel::default();
        lp.run(RunMode::Default, &mut d).unwrap();
        assert_eq!(d.blockers_done, threadpool_size());
        assert!(!ran.load(Ordering::Acquire));
    }

    /// After warm-up, an item costs the loop thread one allocation: the
    /// box that carries its work closure to a pool thread and its result
    /// back. A `done` that captures nothing is a zero-sized box (free); the
    /// queues and the item table reuse their storage.
    fn work_items_allocate_only_for_the_closures(lp: u64) {
        fn round(lp: &mut Loop<u64>, n: u64, with_value: bool) {
            for _ in 0..n {
                if with_value {
                    lp.queue_work(|| 1u64, |_, sum: &mut u64, r| *sum += r.unwrap()).unwrap();
                } else {
                    lp.queue_work(|| (), |_, sum: &mut u64, r| { r.unwrap(); *sum += 1 }).unwrap();
                }
            }
            let mut sum = 0;
            lp.run(RunMode::Default, &mut sum).unwrap();
            assert_eq!(sum, n);
        }
        for _ in 0..3 {
            round(lp, 64, true);
            round(lp, 64, false);
        }
        let unit = allocations_in(|| round(lp, 64, false));
        assert_eq!(unit, 64, "{unit} allocations for 64 items returning ()");
        let valued = allocations_in(|| round(lp, 64, true));
        assert_eq!(valued, 64, "{valued} allocations for 64 items returning a u64");
    }

    /// A forked child gets a pool of its own (the parent's threads do not
    /// exist there): work queued in the child runs and completes.
    fn threadpool_after_fork(lp) {
        // Make sure the parent's pool has started threads before the fork.
        lp.queue_work(|| 1, |_, _, r| assert_eq!(r, Ok(1))).unwrap();
        lp.run(RunMode::Default, &mut ()).unwrap();
        let backend = lp.backend();
        // SAFETY: the child only runs the code below (the loop, the pool,
        // the allocator) and leaves with `_exit`, never returning into the
        // test harness.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork failed");
        if pid == 0 {
            let ok = std::panic::catch_unwind(|| {
                let mut lp: Loop<u32> = Loop::with_backend(backend).unwrap();
                for i in 0..8u32 {
                    lp.queue_work(move || i, |_, n: &mut u32, r| *n += r.unwrap()).unwrap();
                }
                let mut n = 0;
                lp.run(RunMode::Default, &mut n).unwrap();
                n == (0..8).sum::<u32>()
            });
            // SAFETY: ends the child without running the parent's atexit state.
            unsafe { libc::_exit(if matches!(ok, Ok(true)) { 0 } else { 1 }) };
        }
        let _guard = uvring_tests::child::ChildGuard::new(pid);
        let deadline = Instant::now() + LIMIT;
        let mut status = 0;
        loop {
            // SAFETY: waits for our own child; `status` is a valid out pointer.
            let r = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
            if r == pid {
                break;
            }
            assert!(Instant::now() < deadline, "the forked child's work did not complete");
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0, "child status {status:#x}");
    }
}
