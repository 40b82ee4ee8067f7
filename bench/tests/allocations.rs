//! Once warm, an echo round trip allocates nothing: the rig's state is the
//! loop's data, its callbacks are shared, and the engine reuses its buffers.
//! (Its own test binary: the counting allocator sees every thread, so no
//! other test may run beside it.)

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicU64, Ordering};
use uvring::Backend;
use uvring_bench::{backend_available, EchoRig};

/// Counts allocations (and growing reallocations) made through it.
struct Counting;

static ALLOCS: AtomicU64 = AtomicU64::new(0);

// SAFETY: every call is forwarded unchanged to the system allocator, which
// upholds `GlobalAlloc`'s contract; counting has no effect on the memory.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: the caller's contract for `alloc` is passed on as is.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `System` through this allocator.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: the caller's contract for `realloc` is passed on as is.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

#[test]
fn warm_echo_round_trips_do_not_allocate() {
    let mut backends = vec![Backend::Epoll];
    match backend_available(Backend::IoUring) {
        Ok(()) => backends.push(Backend::IoUring),
        Err(e) if std::env::var_os("UVRING_REQUIRE_IO_URING").is_some() => panic!("io_uring required: {e}"),
        Err(e) => eprintln!("SKIP io_uring: {e}"),
    }
    for backend in backends {
        for (conns, size) in [(1, 64), (64, 64), (8, 16 * 1024)] {
            let at_start = ALLOCS.load(Ordering::Relaxed);
            let mut rig = EchoRig::new(backend, conns, size).expect("echo rig");
            assert!(ALLOCS.load(Ordering::Relaxed) > at_start, "the counting allocator is not counting");
            // Warm-up: buffer pools, queues and slabs reach their size.
            rig.run(200).expect("warm-up");
            let before = ALLOCS.load(Ordering::Relaxed);
            rig.run(500).expect("measured batch");
            let allocs = ALLOCS.load(Ordering::Relaxed) - before;
            assert_eq!(
                allocs, 0,
                "{backend} {conns}c {size}B: {allocs} allocations in 500 warm round trips per client"
            );
        }
    }
}
