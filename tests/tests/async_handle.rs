//! Async handles: another thread wakes the loop; sends coalesce.

use std::cell::Cell;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use uvring::*;
use uvring_tests::{both_backends, run_until};

const LIMIT: Duration = Duration::from_secs(10);

both_backends! {
    /// A loop blocked in poll with nothing but an async handle is woken by a
    /// send from another thread; the callback closes the handle and `run`
    /// returns.
    fn async_wakes_blocked_loop(lp) {
        let calls = Rc::new(Cell::new(0u32));
        let c = calls.clone();
        let (a, sender) = lp.async_init(&OnAsync::new(move |lp, _, a| {
            c.set(c.get() + 1);
            lp.close(a, None).unwrap();
        })).unwrap();
        assert!(lp.is_active(a));
        let thread = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            sender.send();
        });
        assert!(!lp.run(RunMode::Default, &mut ()).unwrap());
        thread.join().unwrap();
        assert_eq!(calls.get(), 1);
    }

    /// Sends made before the loop runs coalesce into one callback.
    fn async_sends_coalesce(lp) {
        let calls = Rc::new(Cell::new(0u32));
        let c = calls.clone();
        let (a, sender) = lp.async_init(&OnAsync::new(move |_, _, _| c.set(c.get() + 1))).unwrap();
        let s = sender.clone();
        std::thread::spawn(move || {
            for _ in 0..10_000 {
                s.send();
            }
        })
        .join()
        .unwrap();
        for _ in 0..100 {
            sender.send();
        }
        run_until(lp, LIMIT, |_| calls.get() >= 1);
        // Nothing more is pending: a non-blocking turn runs no callback.
        for _ in 0..3 {
            lp.run(RunMode::NoWait, &mut ()).unwrap();
        }
        assert_eq!(calls.get(), 1, "10,100 sends before the loop ran: one callback");
        lp.close(a, None).unwrap();
        lp.run(RunMode::Default, &mut ()).unwrap();
    }

    /// Concurrent sends from another thread while the loop runs: fewer
    /// callbacks than sends, and at least one callback after the last send
    /// (no wake-up is lost).
    fn async_concurrent_sends(lp) {
        const SENDS: usize = 20_000;
        let sent = Arc::new(AtomicUsize::new(0));
        let finished = Arc::new(AtomicBool::new(false));
        let calls = Rc::new(Cell::new(0usize));
        let saw_last = Rc::new(Cell::new(false));
        let (c, last, seen) = (calls.clone(), saw_last.clone(), sent.clone());
        let fin = finished.clone();
        let (a, sender) = lp.async_init(&OnAsync::new(move |lp, _, a| {
            c.set(c.get() + 1);
            // `finished` is set after the last count and before the last
            // send: if that send's wake-up were lost, no callback would see it.
            if fin.load(Ordering::Acquire) {
                assert_eq!(seen.load(Ordering::Acquire), SENDS);
                last.set(true);
                lp.close(a, None).unwrap();
            }
        })).unwrap();
        let sent2 = sent.clone();
        let thread = std::thread::spawn(move || {
            for i in 0..SENDS {
                sent2.fetch_add(1, Ordering::AcqRel);
                if i == SENDS - 1 {
                    finished.store(true, Ordering::Release);
                }
                sender.send();
                if i % 1000 == 0 {
                    std::thread::yield_now();
                }
            }
        });
        run_until(lp, LIMIT, |_| saw_last.get());
        thread.join().unwrap();
        lp.run(RunMode::Default, &mut ()).unwrap();
        assert!(calls.get() >= 1);
        assert!(calls.get() < SENDS, "sends coalesce: {} callbacks for {SENDS} sends", calls.get());
        assert!(!lp.is_live(a));
    }

    /// An unref'd async handle does not keep the loop alive; closing it
    /// while a send is pending is clean.
    fn async_unref_and_close_pending(lp) {
        let (a, sender) = lp.async_init(&OnAsync::new(|_, _, _| panic!("closed before the loop ran"))).unwrap();
        lp.unref_handle(a).unwrap();
        assert!(!lp.alive());
        sender.send();
        lp.close(a, None).unwrap();
        assert!(!lp.run(RunMode::Default, &mut ()).unwrap());
        // Sending to a closed handle is harmless.
        sender.send();
        drop(sender);
    }
}
