//! The loop itself: liveness (libuv's tcp_ref1-4 and loop_alive), phase
//! order (close_order), run modes, and handle ids that go stale.

use std::cell::{Cell, RefCell};
use std::net::{SocketAddr, TcpListener};
use std::rc::Rc;
use std::time::Duration;
use uvring::*;
use uvring_tests::{both_backends, run_until};

const LIMIT: Duration = Duration::from_secs(10);

/// A plain listener the kernel completes handshakes for (its backlog); the
/// test never needs to accept from it.
fn backlog_listener() -> (TcpListener, SocketAddr) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    (l, addr)
}

fn counter() -> Rc<Cell<u32>> {
    Rc::new(Cell::new(0))
}

/// Closes `h` and runs the loop until its close callback has run.
fn close_and_drain(lp: &mut Loop, h: impl Into<HandleId>) {
    let done = counter();
    let d = done.clone();
    lp.close(h, Some(&OnClose::new(move |_, _| d.set(d.get() + 1)))).unwrap();
    run_until(lp, LIMIT, |_| done.get() == 1);
}

both_backends! {
    /// tcp_ref: an unref'd, inactive TCP handle does not keep the loop alive.
    fn tcp_ref(lp) {
        let h = lp.tcp_init().unwrap();
        lp.unref_handle(h).unwrap();
        assert!(!lp.has_ref(h).unwrap());
        assert!(!lp.run(RunMode::Default).unwrap(), "run returns at once");
        close_and_drain(lp, h);
    }

    /// tcp_ref2: an unref'd listener does not keep the loop alive.
    fn tcp_ref2(lp) {
        let h = lp.tcp_init().unwrap();
        lp.tcp_bind(h, "127.0.0.1:0".parse().unwrap(), 0).unwrap();
        lp.listen(h, 128, &OnConnection::new(|_, _, _| panic!("no connection expected"))).unwrap();
        assert!(lp.alive());
        lp.unref_handle(h).unwrap();
        assert!(!lp.alive());
        assert!(!lp.run(RunMode::Default).unwrap());
        close_and_drain(lp, h);
    }

    /// tcp_ref2b: closing an unref'd listener still runs its close callback
    /// (a closing handle keeps the loop alive until then).
    fn tcp_ref2b(lp) {
        let h = lp.tcp_init().unwrap();
        lp.tcp_bind(h, "127.0.0.1:0".parse().unwrap(), 0).unwrap();
        lp.listen(h, 128, &OnConnection::new(|_, _, _| panic!("no connection expected"))).unwrap();
        lp.unref_handle(h).unwrap();
        let closed = counter();
        let c = closed.clone();
        lp.close(h, Some(&OnClose::new(move |_, _| c.set(c.get() + 1)))).unwrap();
        assert!(lp.alive(), "a closing handle keeps the loop alive");
        assert!(!lp.run(RunMode::Default).unwrap());
        assert_eq!(closed.get(), 1);
    }

    /// tcp_ref3: an unref'd handle with a connect and then a shutdown in
    /// flight keeps the loop alive until both callbacks ran.
    fn tcp_ref3(lp) {
        let (_listener, addr) = backlog_listener();
        let (connected, shut) = (counter(), counter());
        let on_shutdown = {
            let shut = shut.clone();
            OnShutdown::new(move |_, _, st| {
                st.unwrap();
                shut.set(shut.get() + 1);
            })
        };
        let on_connect = {
            let connected = connected.clone();
            OnConnect::new(move |lp, s, st| {
                st.unwrap();
                connected.set(connected.get() + 1);
                lp.shutdown(s, Some(&on_shutdown)).unwrap();
            })
        };
        let h = lp.tcp_init().unwrap();
        lp.tcp_connect(h, addr, &on_connect).unwrap();
        lp.unref_handle(h).unwrap();
        assert!(lp.alive(), "the connect request keeps the loop alive");
        assert!(!lp.run(RunMode::Default).unwrap());
        assert_eq!((connected.get(), shut.get()), (1, 1));
        close_and_drain(lp, h);
    }

    /// tcp_ref4: an unref'd handle with a write and a shutdown in flight
    /// keeps the loop alive until both callbacks ran.
    fn tcp_ref4(lp) {
        let (_listener, addr) = backlog_listener();
        let (written, shut) = (counter(), counter());
        let on_write = {
            let written = written.clone();
            OnWrite::new(move |_, _, st| {
                st.unwrap();
                written.set(written.get() + 1);
            })
        };
        let on_shutdown = {
            let (shut, written) = (shut.clone(), written.clone());
            OnShutdown::new(move |_, _, st| {
                st.unwrap();
                assert_eq!(written.get(), 1, "shutdown completes after the queued write");
                shut.set(shut.get() + 1);
            })
        };
        let on_connect = OnConnect::new(move |lp, s, st| {
            st.unwrap();
            lp.write(s, b"PING", Some(&on_write)).unwrap();
            lp.shutdown(s, Some(&on_shutdown)).unwrap();
        });
        let h = lp.tcp_init().unwrap();
        lp.tcp_connect(h, addr, &on_connect).unwrap();
        lp.unref_handle(h).unwrap();
        assert!(!lp.run(RunMode::Default).unwrap());
        assert_eq!((written.get(), shut.get()), (1, 1));
        close_and_drain(lp, h);
    }

    /// loop_alive: a fresh loop is not alive; an active timer makes it
    /// alive until it fired; an unref'd TCP handle with a pending connect or
    /// write is alive too.
    fn loop_alive(lp) {
        assert!(!lp.alive());
        let t = lp.timer_init().unwrap();
        assert!(!lp.alive(), "an inactive handle does not count");
        let fired = counter();
        let f = fired.clone();
        lp.timer_start(t, 10, 0, &OnTimer::new(move |_, _| f.set(f.get() + 1))).unwrap();
        assert!(lp.alive());
        assert!(!lp.run(RunMode::Default).unwrap());
        assert_eq!(fired.get(), 1);
        assert!(!lp.alive());
        close_and_drain(lp, t);

        let (_listener, addr) = backlog_listener();
        let h = lp.tcp_init().unwrap();
        lp.unref_handle(h).unwrap();
        let alive_in_connect = Rc::new(Cell::new(false));
        let on_write = OnWrite::new(|_, _, st| st.unwrap());
        let on_connect = {
            let alive_in_connect = alive_in_connect.clone();
            OnConnect::new(move |lp, s, st| {
                st.unwrap();
                lp.write(s, b"x", Some(&on_write)).unwrap();
                alive_in_connect.set(lp.alive());
            })
        };
        lp.tcp_connect(h, addr, &on_connect).unwrap();
        assert!(lp.alive(), "a pending connect keeps the loop alive");
        assert!(!lp.run(RunMode::Default).unwrap());
        assert!(alive_in_connect.get(), "a pending write keeps the loop alive");
        assert!(!lp.alive());
        close_and_drain(lp, h);
    }

    /// close_order: check callbacks run before the close callbacks of the
    /// same iteration; every close callback runs once.
    fn close_order(lp) {
        let log = Rc::new(RefCell::new(Vec::<&'static str>::new()));
        let on_close = {
            let log = log.clone();
            OnClose::new(move |_, _| log.borrow_mut().push("close"))
        };
        let on_timer = {
            let (log, on_close) = (log.clone(), on_close.clone());
            OnTimer::new(move |lp, t| {
                log.borrow_mut().push("timer");
                lp.close(t, Some(&on_close)).unwrap();
            })
        };
        let t1 = lp.timer_init().unwrap();
        lp.timer_start(t1, 0, 0, &on_timer).unwrap();
        let t2 = lp.timer_init().unwrap();
        lp.timer_start(t2, 100_000, 0, &on_timer).unwrap();
        let check = lp.hook_init(HookKind::Check).unwrap();
        let on_check = {
            let log = log.clone();
            OnHook::new(move |lp, h| {
                assert!(!log.borrow().contains(&"close"), "check runs before any close callback");
                log.borrow_mut().push("check");
                lp.close(h, Some(&on_close)).unwrap();
                lp.close(t2, Some(&on_close)).unwrap();
            })
        };
        lp.hook_start(check, &on_check).unwrap();
        assert!(!lp.run(RunMode::Default).unwrap());
        assert_eq!(*log.borrow(), ["timer", "check", "close", "close", "close"]);
    }

    /// Once runs a single iteration and blocks for a due timer; NoWait does
    /// not block.
    fn run_modes(lp) {
        let fired = counter();
        let f = fired.clone();
        let t = lp.timer_init().unwrap();
        lp.timer_start(t, 20, 0, &OnTimer::new(move |_, _| f.set(f.get() + 1))).unwrap();
        let before = lp.iterations();
        assert!(lp.run(RunMode::NoWait).unwrap(), "still alive: the timer is pending");
        assert_eq!(lp.iterations(), before + 1);
        assert_eq!(fired.get(), 0);
        run_until(lp, LIMIT, |_| fired.get() == 1);
        assert!(!lp.alive());
        close_and_drain(lp, t);
    }

    /// `stop` makes `run` return after the current iteration even though
    /// handles are active; a later `run` continues.
    fn stop_and_resume(lp) {
        let ticks = counter();
        let k = ticks.clone();
        let t = lp.timer_init().unwrap();
        lp.timer_start(t, 1, 1, &OnTimer::new(move |lp, t| {
            k.set(k.get() + 1);
            if k.get() == 3 {
                lp.stop();
            }
            if k.get() == 6 {
                lp.close(t, None).unwrap();
            }
        })).unwrap();
        assert!(lp.run(RunMode::Default).unwrap(), "stopped while a timer is active");
        assert_eq!(ticks.get(), 3);
        assert!(!lp.run(RunMode::Default).unwrap());
        assert_eq!(ticks.get(), 6);
    }

    /// A closed handle's id goes stale, also after its slot is reused by a
    /// new handle; closing twice is an error.
    fn stale_handle_ids(lp) {
        let old = lp.timer_init().unwrap();
        lp.set_data(old, 7).unwrap();
        lp.close(old, None).unwrap();
        assert!(lp.is_closing(old));
        assert_eq!(lp.close(old, None), Err(Error::INVALID_STATE), "closing twice");
        assert_eq!(lp.timer_start(old, 1, 0, &OnTimer::new(|_, _| {})), Err(Error::STALE_HANDLE));
        lp.run(RunMode::Default).unwrap();
        assert!(!lp.is_live(old));
        assert_eq!(lp.close(old, None), Err(Error::STALE_HANDLE), "closing a closed handle");

        // The freed slot is reused by the next handle: a different id.
        let new = lp.timer_init().unwrap();
        assert_ne!(new.id(), old.id());
        assert!(lp.is_live(new));
        assert_eq!(lp.data(new), Ok(0), "the new handle does not inherit data");
        assert_eq!(lp.data(old), Err(Error::STALE_HANDLE));
        assert_eq!(lp.set_data(old, 1), Err(Error::STALE_HANDLE));
        assert_eq!(lp.timer_stop(old), Err(Error::STALE_HANDLE));
        assert_eq!(lp.ref_handle(old), Err(Error::STALE_HANDLE));
        assert_eq!(lp.close(old, None), Err(Error::STALE_HANDLE));
        assert!(lp.is_live(new), "the stale id touched nothing");

        // A stream id gone stale, used with stream operations.
        let s = lp.tcp_init().unwrap();
        close_and_drain(lp, s);
        let s2 = lp.tcp_init().unwrap();
        assert_eq!(lp.read_start(s, &OnRead::new(|_, _, _| {})), Err(Error::STALE_HANDLE));
        assert_eq!(lp.write(s, b"x", None), Err(Error::STALE_HANDLE));
        assert_eq!(lp.shutdown(s, None), Err(Error::STALE_HANDLE));
        assert_eq!(lp.accept(s), Err(Error::STALE_HANDLE));
        close_and_drain(lp, s2);
        close_and_drain(lp, new);
    }

    /// libuv's phase order in one iteration: timers, pending (a deferred
    /// write completion), idle, prepare, poll, check, closing.
    fn phase_order(lp) {
        let log = Rc::new(RefCell::new(Vec::<&'static str>::new()));
        let logger = |what: &'static str| {
            let log = log.clone();
            OnHook::new(move |lp, h| {
                log.borrow_mut().push(what);
                lp.close(h, None).unwrap();
            })
        };
        let (a, b) = lp.pipe_pair(false).unwrap();
        let l = log.clone();
        // A zero-length write completes in the pending phase.
        lp.write(a, b"", Some(&OnWrite::new(move |_, _, st| {
            st.unwrap();
            l.borrow_mut().push("pending");
        }))).unwrap();
        let t = lp.timer_init().unwrap();
        let (l, on_close) = (log.clone(), {
            let log = log.clone();
            OnClose::new(move |_, _| log.borrow_mut().push("close"))
        });
        lp.timer_start(t, 0, 0, &OnTimer::new(move |lp, t| {
            l.borrow_mut().push("timer");
            lp.close(t, Some(&on_close)).unwrap();
        })).unwrap();
        for (kind, name) in [(HookKind::Check, "check"), (HookKind::Prepare, "prepare"), (HookKind::Idle, "idle")] {
            let h = lp.hook_init(kind).unwrap();
            lp.hook_start(h, &logger(name)).unwrap();
        }
        lp.run(RunMode::Once).unwrap();
        assert_eq!(*log.borrow(), ["timer", "pending", "idle", "prepare", "check", "close"]);
        lp.close(a, None).unwrap();
        lp.close(b, None).unwrap();
        assert!(!lp.run(RunMode::Default).unwrap());
    }

    /// `now` is cached for the iteration: two timers firing in the same
    /// iteration see the same time even if the first one takes a while;
    /// `update_time` refreshes it.
    fn now_is_cached_per_iteration(lp) {
        let seen = Rc::new(RefCell::new(Vec::new()));
        let cb = {
            let seen = seen.clone();
            OnTimer::new(move |lp, _| {
                seen.borrow_mut().push(lp.now());
                std::thread::sleep(Duration::from_millis(20));
            })
        };
        let (t1, t2) = (lp.timer_init().unwrap(), lp.timer_init().unwrap());
        lp.timer_start(t1, 5, 0, &cb).unwrap();
        lp.timer_start(t2, 5, 0, &cb).unwrap();
        assert!(!lp.run(RunMode::Default).unwrap());
        let seen = seen.borrow();
        assert_eq!(seen.len(), 2);
        assert_eq!(seen[0], seen[1], "same iteration, same cached time");
        let before = lp.now();
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(lp.now(), before, "no refresh outside the loop");
        lp.update_time();
        assert!(lp.now() >= before + 5);
        close_and_drain(lp, t1);
        close_and_drain(lp, t2);
    }
}
