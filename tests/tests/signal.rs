//! Signals: a signal raised in the process reaches the watcher's callback
//! on the loop. The handler is process-wide; the harness serialises the
//! tests of this binary, and a signal is raised only while it is watched
//! (else its default action would end the process).

use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;
use uvring::*;
use uvring_tests::{both_backends, run_until};

const LIMIT: Duration = Duration::from_secs(10);

fn raise(signum: i32) {
    // SAFETY: raise has no memory-safety preconditions; the signal is watched.
    let res = unsafe { libc::raise(signum) };
    assert_eq!(res, 0);
}

type Seen = Rc<RefCell<Vec<(u32, i32)>>>;

/// A signal callback recording (handle data, signum).
fn recorder(seen: &Seen) -> OnSignal<()> {
    let seen = seen.clone();
    OnSignal::new(move |lp, _, h, signum| seen.borrow_mut().push((lp.data(h).unwrap() as u32, signum)))
}

both_backends! {
    /// SIGUSR1 raised on the loop's thread reaches the callback.
    fn signal_reaches_callback(lp) {
        let seen = Seen::default();
        let s = lp.signal_start(libc::SIGUSR1, &recorder(&seen)).unwrap();
        lp.set_data(s, 1).unwrap();
        raise(libc::SIGUSR1);
        run_until(lp, LIMIT, |_| !seen.borrow().is_empty());
        assert_eq!(*seen.borrow(), [(1, libc::SIGUSR1)]);
        lp.close(s, None).unwrap();
        assert!(!lp.run(RunMode::Default, &mut ()).unwrap());
    }

    /// A signal sent by another thread with kill(getpid()) wakes a loop
    /// blocked in poll; the callback stops its own watcher.
    fn signal_from_other_thread(lp) {
        let seen = Seen::default();
        let s2 = seen.clone();
        let s = lp.signal_start(libc::SIGUSR2, &OnSignal::new(move |lp, _, h, signum| {
            s2.borrow_mut().push((0, signum));
            lp.close(h, None).unwrap();
        })).unwrap();
        let pid = std::process::id() as i32;
        let thread = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            // SAFETY: kill has no memory-safety preconditions; SIGUSR2 is watched
            // until the loop's callback ran, which is after this send.
            unsafe { libc::kill(pid, libc::SIGUSR2) };
        });
        assert!(!lp.run(RunMode::Default, &mut ()).unwrap());
        thread.join().unwrap();
        assert_eq!(*seen.borrow(), [(0, libc::SIGUSR2)]);
        assert!(!lp.is_live(s));
    }

    /// Two watchers of one signal both run; a watcher of another signal does
    /// not; a stopped watcher does not, and can be restarted.
    fn signal_watchers(lp) {
        let seen = Seen::default();
        let cb = recorder(&seen);
        let a = lp.signal_start(libc::SIGUSR1, &cb).unwrap();
        let b = lp.signal_start(libc::SIGUSR1, &cb).unwrap();
        let c = lp.signal_start(libc::SIGUSR2, &cb).unwrap();
        lp.set_data(a, 1).unwrap();
        lp.set_data(b, 2).unwrap();
        lp.set_data(c, 3).unwrap();
        raise(libc::SIGUSR1);
        run_until(lp, LIMIT, |_| seen.borrow().len() == 2);
        let mut got = seen.borrow().clone();
        got.sort();
        assert_eq!(got, [(1, libc::SIGUSR1), (2, libc::SIGUSR1)]);
        seen.borrow_mut().clear();

        // `a` stops; SIGUSR1 is still watched by `b`.
        lp.signal_stop(a).unwrap();
        assert!(!lp.is_active(a));
        raise(libc::SIGUSR1);
        raise(libc::SIGUSR2);
        run_until(lp, LIMIT, |_| seen.borrow().len() == 2);
        let mut got = seen.borrow().clone();
        got.sort();
        assert_eq!(got, [(2, libc::SIGUSR1), (3, libc::SIGUSR2)]);
        seen.borrow_mut().clear();

        // `a` restarts, now for SIGUSR2.
        lp.signal_restart(a, libc::SIGUSR2, &cb).unwrap();
        raise(libc::SIGUSR2);
        run_until(lp, LIMIT, |_| seen.borrow().len() == 2);
        let mut got = seen.borrow().clone();
        got.sort();
        assert_eq!(got, [(1, libc::SIGUSR2), (3, libc::SIGUSR2)]);

        for h in [a, b, c] {
            lp.close(h, None).unwrap();
        }
        assert!(!lp.run(RunMode::Default, &mut ()).unwrap());
    }

    /// Signals arriving in a burst are each delivered (ordinary signals may
    /// merge in the kernel while one is pending, so at least one and at most
    /// as many callbacks as raises).
    fn signal_burst(lp) {
        let seen = Seen::default();
        let s = lp.signal_start(libc::SIGUSR1, &recorder(&seen)).unwrap();
        for _ in 0..10 {
            raise(libc::SIGUSR1);
        }
        run_until(lp, LIMIT, |_| !seen.borrow().is_empty());
        for _ in 0..3 {
            lp.run(RunMode::NoWait, &mut ()).unwrap();
        }
        let n = seen.borrow().len();
        assert!((1..=10).contains(&n), "{n} callbacks for 10 raises");
        lp.close(s, None).unwrap();
        assert!(!lp.run(RunMode::Default, &mut ()).unwrap());
    }

    /// An invalid signal number is refused.
    fn signal_invalid(lp) {
        let cb = OnSignal::new(|_, _, _, _| {});
        assert_eq!(lp.signal_start(0, &cb).err(), Some(Error::EINVAL));
        assert_eq!(lp.signal_start(libc::SIGKILL, &cb).err(), Some(Error::EINVAL));
        assert_eq!(lp.signal_start(1000, &cb).err(), Some(Error::EINVAL));
        assert_eq!(lp.handle_count(), 0);
    }
}
