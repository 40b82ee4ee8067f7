//! The loop itself: liveness (libuv's tcp_ref1-4 and loop_alive), phase
//! order (close_order), run modes, handle ids that go stale, `walk`,
//! `close_reset`, re-entrant `run`, and backend names.

use std::cell::{Cell, RefCell};
use std::io::Read;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;
use uvring::*;
use uvring_tests::{both_backends, listener, run_until};

const LIMIT: Duration = Duration::from_secs(10);

/// A plain listener the kernel completes handshakes for (its backlog); the
/// test never needs to accept from it.
fn backlog_listener() -> (std::net::TcpListener, SocketAddr) {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    (l, addr)
}

fn counter() -> Rc<Cell<u32>> {
    Rc::new(Cell::new(0))
}

/// Milliseconds.
fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// Closes `h` and runs the loop until its close callback has run.
fn close_and_drain(lp: &mut Loop, h: impl Into<HandleId>) {
    let done = counter();
    let d = done.clone();
    lp.close(h, Some(&OnClose::new(move |_, _, _| d.set(d.get() + 1)))).unwrap();
    run_until(lp, LIMIT, |_| done.get() == 1);
}

both_backends! {
    /// tcp_ref: an unref'd, inactive TCP handle does not keep the loop alive.
    fn tcp_ref(lp) {
        let h = lp.tcp_init().unwrap();
        lp.unref_handle(h).unwrap();
        assert!(!lp.has_ref(h).unwrap());
        assert!(!lp.run(RunMode::Default, &mut ()).unwrap(), "run returns at once");
        close_and_drain(lp, h);
    }

    /// tcp_ref2: an unref'd listener does not keep the loop alive.
    fn tcp_ref2(lp) {
        let (h, _) = listener(lp, &OnConnection::new(|_, _, _, _| panic!("no connection expected")));
        assert!(lp.alive());
        lp.unref_handle(h).unwrap();
        assert!(!lp.alive());
        assert!(!lp.run(RunMode::Default, &mut ()).unwrap());
        close_and_drain(lp, h);
    }

    /// tcp_ref2b: closing an unref'd listener still runs its close callback
    /// (a closing handle keeps the loop alive until then).
    fn tcp_ref2b(lp) {
        let (h, _) = listener(lp, &OnConnection::new(|_, _, _, _| panic!("no connection expected")));
        lp.unref_handle(h).unwrap();
        let closed = counter();
        let c = closed.clone();
        lp.close(h, Some(&OnClose::new(move |_, _, _| c.set(c.get() + 1)))).unwrap();
        assert!(lp.alive(), "a closing handle keeps the loop alive");
        assert!(!lp.run(RunMode::Default, &mut ()).unwrap());
        assert_eq!(closed.get(), 1);
    }

    /// tcp_ref3: an unref'd handle with a connect and then a shutdown in
    /// flight keeps the loop alive until both callbacks ran.
    fn tcp_ref3(lp) {
        let (_listener, addr) = backlog_listener();
        let (connected, shut) = (counter(), counter());
        let on_shutdown = {
            let shut = shut.clone();
            OnShutdown::new(move |_, _, _, st| {
                st.unwrap();
                shut.set(shut.get() + 1);
            })
        };
        let on_connect = {
            let connected = connected.clone();
            OnConnect::new(move |lp, _, s, st| {
                st.unwrap();
                connected.set(connected.get() + 1);
                lp.shutdown(s, Some(&on_shutdown)).unwrap();
            })
        };
        let sock = lp.tcp_init().unwrap();
        let h = lp.tcp_connect(sock, addr, &on_connect).unwrap();
        lp.unref_handle(h).unwrap();
        assert!(lp.alive(), "the connect request keeps the loop alive");
        assert!(!lp.run(RunMode::Default, &mut ()).unwrap());
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
            OnWrite::new(move |_, _, _, st| {
                st.unwrap();
                written.set(written.get() + 1);
            })
        };
        let on_shutdown = {
            let (shut, written) = (shut.clone(), written.clone());
            OnShutdown::new(move |_, _, _, st| {
                st.unwrap();
                assert_eq!(written.get(), 1, "shutdown completes after the queued write");
                shut.set(shut.get() + 1);
            })
        };
        let on_connect = OnConnect::new(move |lp, _, s, st| {
            st.unwrap();
            lp.write(s, b"PING", Some(&on_write)).unwrap();
            lp.shutdown(s, Some(&on_shutdown)).unwrap();
        });
        let sock = lp.tcp_init().unwrap();
        let h = lp.tcp_connect(sock, addr, &on_connect).unwrap();
        lp.unref_handle(h).unwrap();
        assert!(!lp.run(RunMode::Default, &mut ()).unwrap());
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
        lp.timer_start(t, ms(10), Duration::ZERO, &OnTimer::new(move |_, _, _| f.set(f.get() + 1))).unwrap();
        assert!(lp.alive());
        assert!(!lp.run(RunMode::Default, &mut ()).unwrap());
        assert_eq!(fired.get(), 1);
        assert!(!lp.alive());
        close_and_drain(lp, t);

        let (_listener, addr) = backlog_listener();
        let sock = lp.tcp_init().unwrap();
        lp.unref_handle(sock).unwrap();
        let alive_in_connect = Rc::new(Cell::new(false));
        let on_write = OnWrite::new(|_, _, _, st| st.unwrap());
        let on_connect = {
            let alive_in_connect = alive_in_connect.clone();
            OnConnect::new(move |lp, _, s, st| {
                st.unwrap();
                lp.write(s, b"x", Some(&on_write)).unwrap();
                alive_in_connect.set(lp.alive());
            })
        };
        let h = lp.tcp_connect(sock, addr, &on_connect).unwrap();
        assert!(!lp.has_ref(h).unwrap(), "the stream is the unref'd socket");
        assert!(lp.alive(), "a pending connect keeps the loop alive");
        assert!(!lp.run(RunMode::Default, &mut ()).unwrap());
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
            OnClose::new(move |_, _, _| log.borrow_mut().push("close"))
        };
        let on_timer = {
            let (log, on_close) = (log.clone(), on_close.clone());
            OnTimer::new(move |lp, _, t| {
                log.borrow_mut().push("timer");
                lp.close(t, Some(&on_close)).unwrap();
            })
        };
        let t1 = lp.timer_init().unwrap();
        lp.timer_start(t1, Duration::ZERO, Duration::ZERO, &on_timer).unwrap();
        let t2 = lp.timer_init().unwrap();
        lp.timer_start(t2, ms(100_000), Duration::ZERO, &on_timer).unwrap();
        let check = lp.hook_init(HookKind::Check).unwrap();
        let on_check = {
            let log = log.clone();
            OnHook::new(move |lp, _, h| {
                assert!(!log.borrow().contains(&"close"), "check runs before any close callback");
                log.borrow_mut().push("check");
                lp.close(h, Some(&on_close)).unwrap();
                lp.close(t2, Some(&on_close)).unwrap();
            })
        };
        lp.hook_start(check, &on_check).unwrap();
        assert!(!lp.run(RunMode::Default, &mut ()).unwrap());
        assert_eq!(*log.borrow(), ["timer", "check", "close", "close", "close"]);
    }

    /// Once runs a single iteration and blocks for a due timer; NoWait does
    /// not block.
    fn run_modes(lp) {
        let fired = counter();
        let f = fired.clone();
        let t = lp.timer_init().unwrap();
        lp.timer_start(t, ms(20), Duration::ZERO, &OnTimer::new(move |_, _, _| f.set(f.get() + 1))).unwrap();
        let before = lp.iterations();
        assert!(lp.run(RunMode::NoWait, &mut ()).unwrap(), "still alive: the timer is pending");
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
        lp.timer_start(t, ms(1), ms(1), &OnTimer::new(move |lp, _, t| {
            k.set(k.get() + 1);
            if k.get() == 3 {
                lp.stop();
            }
            if k.get() == 6 {
                lp.close(t, None).unwrap();
            }
        })).unwrap();
        assert!(lp.run(RunMode::Default, &mut ()).unwrap(), "stopped while a timer is active");
        assert_eq!(ticks.get(), 3);
        assert!(!lp.run(RunMode::Default, &mut ()).unwrap());
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
        assert_eq!(lp.timer_start(old, ms(1), Duration::ZERO, &OnTimer::new(|_, _, _| {})), Err(Error::STALE_HANDLE));
        lp.run(RunMode::Default, &mut ()).unwrap();
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

        // Stream ids gone stale (their slots reused), used with stream
        // operations.
        let (s, peer) = lp.pipe_pair(false).unwrap();
        close_and_drain(lp, s);
        close_and_drain(lp, peer);
        let (s2, peer2) = lp.pipe_pair(false).unwrap();
        assert_eq!(lp.read_start(s, &OnRead::new(|_, _, _, _| {})), Err(Error::STALE_HANDLE));
        assert_eq!(lp.write(s, b"x", None), Err(Error::STALE_HANDLE));
        assert_eq!(lp.try_write(s, b"x"), Err(Error::STALE_HANDLE));
        assert_eq!(lp.shutdown(s, None), Err(Error::STALE_HANDLE));
        assert_eq!(lp.read_stop(s), Err(Error::STALE_HANDLE));
        assert!(lp.is_live(s2) && lp.is_live(peer2), "the stale ids touched nothing");

        // A listener and a socket gone stale.
        let (l, _) = listener(lp, &OnConnection::new(|_, _, _, _| panic!("no connection expected")));
        close_and_drain(lp, l);
        let sock = lp.tcp_init().unwrap();
        close_and_drain(lp, sock);
        let s3 = lp.tcp_init().unwrap();
        assert_eq!(lp.accept(l), Err(Error::STALE_HANDLE));
        assert_eq!(lp.listen_stop(l, None), Err(Error::STALE_HANDLE));
        assert_eq!(lp.tcp_bind(sock, "127.0.0.1:0".parse().unwrap(), 0), Err(Error::STALE_HANDLE));
        let on_connection = OnConnection::new(|_, _, _, _| {});
        assert_eq!(lp.listen(sock, 16, &on_connection), Err(Error::STALE_HANDLE));
        for h in [s2.id(), peer2.id(), s3.id(), new.id()] {
            close_and_drain(lp, h);
        }
    }

    /// libuv's phase order in one iteration: timers, pending (a deferred
    /// write completion), idle, prepare, poll, check, closing.
    fn phase_order(lp) {
        let log = Rc::new(RefCell::new(Vec::<&'static str>::new()));
        let logger = |what: &'static str| {
            let log = log.clone();
            OnHook::new(move |lp, _, h| {
                log.borrow_mut().push(what);
                lp.close(h, None).unwrap();
            })
        };
        let (a, b) = lp.pipe_pair(false).unwrap();
        let l = log.clone();
        // A zero-length write completes in the pending phase.
        lp.write(a, b"", Some(&OnWrite::new(move |_, _, _, st| {
            st.unwrap();
            l.borrow_mut().push("pending");
        }))).unwrap();
        let t = lp.timer_init().unwrap();
        let (l, on_close) = (log.clone(), {
            let log = log.clone();
            OnClose::new(move |_, _, _| log.borrow_mut().push("close"))
        });
        lp.timer_start(t, Duration::ZERO, Duration::ZERO, &OnTimer::new(move |lp, _, t| {
            l.borrow_mut().push("timer");
            lp.close(t, Some(&on_close)).unwrap();
        })).unwrap();
        for (kind, name) in [(HookKind::Check, "check"), (HookKind::Prepare, "prepare"), (HookKind::Idle, "idle")] {
            let h = lp.hook_init(kind).unwrap();
            lp.hook_start(h, &logger(name)).unwrap();
        }
        lp.run(RunMode::Once, &mut ()).unwrap();
        assert_eq!(*log.borrow(), ["timer", "pending", "idle", "prepare", "check", "close"]);
        lp.close(a, None).unwrap();
        lp.close(b, None).unwrap();
        assert!(!lp.run(RunMode::Default, &mut ()).unwrap());
    }

    /// `now` is cached for the iteration: two timers firing in the same
    /// iteration see the same time even if the first one takes a while;
    /// `update_time` refreshes it.
    fn now_is_cached_per_iteration(lp) {
        let seen = Rc::new(RefCell::new(Vec::new()));
        let cb = {
            let seen = seen.clone();
            OnTimer::new(move |lp, _, _| {
                seen.borrow_mut().push(lp.now());
                std::thread::sleep(Duration::from_millis(20));
            })
        };
        let (t1, t2) = (lp.timer_init().unwrap(), lp.timer_init().unwrap());
        lp.timer_start(t1, ms(5), Duration::ZERO, &cb).unwrap();
        lp.timer_start(t2, ms(5), Duration::ZERO, &cb).unwrap();
        assert!(!lp.run(RunMode::Default, &mut ()).unwrap());
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

both_backends! {
    /// `walk` visits every live handle once (the signal watcher's internal
    /// pipe excluded), whatever its type; handles closed from `walk` are
    /// visited again while closing, and once their close callbacks ran the
    /// loop ends with nothing left to visit.
    fn walk_visits_and_closes_every_handle(lp) {
        let t = lp.timer_init().unwrap();
        lp.timer_start(t, ms(60_000), Duration::ZERO, &OnTimer::new(|_, _, _| panic!("closed before due"))).unwrap();
        let sock = lp.tcp_init().unwrap();
        let (l, _) = listener(lp, &OnConnection::new(|_, _, _, _| panic!("no connection expected")));
        let (a, b) = lp.pipe_pair(true).unwrap();
        let pipe_sock = lp.pipe_init(false).unwrap();
        let hook = lp.hook_init(HookKind::Check).unwrap();
        let (asy, sender) = lp.async_init(&OnAsync::new(|_, _, _| {})).unwrap();
        let sig = lp.signal_start(libc::SIGWINCH, &OnSignal::new(|_, _, _, _| {})).unwrap();
        let expected: Vec<(HandleId, HandleType)> = vec![
            (t.id(), HandleType::Timer),
            (sock.id(), HandleType::Tcp),
            (l.id(), HandleType::Tcp),
            (a.id(), HandleType::Pipe),
            (b.id(), HandleType::Pipe),
            (pipe_sock.id(), HandleType::Pipe),
            (hook.id(), HandleType::Hook),
            (asy.id(), HandleType::Async),
            (sig.id(), HandleType::Signal),
        ];
        let mut seen = Vec::new();
        lp.walk(|lp, h| seen.push((h, lp.handle_type(h).unwrap())));
        assert_eq!(seen.len(), expected.len(), "each live handle once: {seen:?}");
        for e in &expected {
            assert!(seen.contains(e), "{e:?} not visited: {seen:?}");
        }
        assert_eq!(lp.handle_count(), expected.len());

        let closed = counter();
        let on_close = {
            let closed = closed.clone();
            OnClose::new(move |_, _, _| closed.set(closed.get() + 1))
        };
        lp.walk(|lp, h| lp.close(h, Some(&on_close)).unwrap());
        let mut closing = 0;
        lp.walk(|lp, h| {
            assert!(lp.is_closing(h), "{h:?} was closed by the walk");
            closing += 1;
        });
        assert_eq!(closing, expected.len(), "closing handles are still visited");
        assert!(!lp.run(RunMode::Default, &mut ()).unwrap(), "nothing left: the loop ends");
        assert_eq!(closed.get() as usize, expected.len(), "every close callback ran once");
        let mut left = 0;
        lp.walk(|_, _| left += 1);
        assert_eq!(left, 0);
        // Sending to a closed async handle is harmless.
        sender.send();
    }

    /// `walk` from inside a callback: a timer closes every other handle
    /// and itself; handles opened by the walk's closure are not visited.
    fn walk_from_a_callback(lp) {
        let others: Vec<Timer> = (0..3).map(|_| lp.timer_init().unwrap()).collect();
        let visited = counter();
        let v = visited.clone();
        let t = lp.timer_init().unwrap();
        lp.timer_start(t, ms(1), Duration::ZERO, &OnTimer::new(move |lp, _, _| {
            let mut opened = None;
            lp.walk(|lp, h| {
                v.set(v.get() + 1);
                assert!(opened != Some(h), "a handle opened during the walk is not visited");
                if opened.is_none() {
                    opened = Some(lp.timer_init().unwrap().id());
                }
                lp.close(h, None).unwrap();
            });
            lp.close(opened.unwrap(), None).unwrap();
        })).unwrap();
        assert!(!lp.run(RunMode::Default, &mut ()).unwrap());
        assert_eq!(visited.get(), 4, "three timers and the one running");
        assert!(others.iter().all(|o| !lp.is_live(*o)));
        assert!(!lp.is_live(t));
    }

    /// `close_reset` on a TCP stream sends a reset: a std peer's read fails
    /// with `ConnectionReset` (not an orderly end of file); a uvring peer's
    /// read callback gets `ECONNRESET`; the close callback runs; and after
    /// a `shutdown` the reset is refused (`EINVAL`).
    fn close_reset_resets_the_peer(lp) {
        // 1. The server resets an accepted connection; a std client reads.
        let closed = counter();
        let on_close = {
            let closed = closed.clone();
            OnClose::new(move |_, _, _| closed.set(closed.get() + 1))
        };
        let on_connection = OnConnection::new(move |lp, _, srv, st| {
            st.unwrap();
            let c = lp.accept(srv).unwrap();
            lp.close_reset(c, Some(&on_close)).unwrap();
            assert!(lp.is_closing(c));
            lp.close(srv, None).unwrap();
        });
        let (server, addr) = listener(lp, &on_connection);
        let client = std::thread::spawn(move || {
            let mut s = std::net::TcpStream::connect(addr).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            let mut buf = [0u8; 16];
            s.read(&mut buf).map_err(|e| e.kind())
        });
        run_until(lp, LIMIT, |lp| closed.get() == 1 && !lp.is_live(server));
        assert_eq!(client.join().unwrap(), Err(std::io::ErrorKind::ConnectionReset));

        // 2. A uvring client resets; the uvring server's read sees ECONNRESET.
        let read_end = Rc::new(Cell::new(None::<Error>));
        let on_read = {
            let read_end = read_end.clone();
            OnRead::new(move |lp, _, s: TcpStream, res| match res {
                Ok(data) => panic!("no data expected: {data:?}"),
                Err(e) => {
                    read_end.set(Some(e));
                    lp.close(s, None).unwrap();
                }
            })
        };
        let accepted = counter();
        let on_connection = {
            let accepted = accepted.clone();
            OnConnection::new(move |lp, _, srv, st| {
                st.unwrap();
                let c = lp.accept(srv).unwrap();
                lp.read_start(c, &on_read).unwrap();
                accepted.set(accepted.get() + 1);
                lp.close(srv, None).unwrap();
            })
        };
        let (server, addr) = listener(lp, &on_connection);
        let connected = counter();
        let on_connect = {
            let connected = connected.clone();
            OnConnect::new(move |_, _, _, st| {
                st.unwrap();
                connected.set(connected.get() + 1);
            })
        };
        let sock = lp.tcp_init().unwrap();
        let c = lp.tcp_connect(sock, addr, &on_connect).unwrap();
        run_until(lp, LIMIT, |_| connected.get() == 1 && accepted.get() == 1);
        lp.close_reset(c, None).unwrap();
        assert_eq!(lp.close_reset(c, None), Err(Error::STALE_HANDLE), "closing already");
        run_until(lp, LIMIT, |lp| read_end.get().is_some() && !lp.is_live(c) && !lp.is_live(server));
        assert_eq!(read_end.get(), Some(Error::ECONNRESET), "a reset, not an end of file");

        // 3. No reset after a shutdown.
        let (_backlog, addr) = backlog_listener();
        let on_connect = {
            let connected = connected.clone();
            OnConnect::new(move |_, _, _, st| {
                st.unwrap();
                connected.set(connected.get() + 1);
            })
        };
        let sock = lp.tcp_init().unwrap();
        let c = lp.tcp_connect(sock, addr, &on_connect).unwrap();
        run_until(lp, LIMIT, |_| connected.get() == 2);
        lp.shutdown(c, None).unwrap();
        assert_eq!(lp.close_reset(c, None), Err(Error::EINVAL), "no reset after a shutdown");
        assert!(!lp.is_closing(c), "a refused reset does not close");
        close_and_drain(lp, c);
    }

    /// `run` called from inside a callback is refused with `INVALID_STATE`
    /// in every mode, and the outer run goes on undisturbed.
    fn nested_run_is_refused(lp) {
        let results = Rc::new(RefCell::new(Vec::new()));
        let r = results.clone();
        let t = lp.timer_init().unwrap();
        lp.timer_start(t, ms(1), ms(1), &OnTimer::new(move |lp, d, t| {
            for mode in [RunMode::Default, RunMode::Once, RunMode::NoWait] {
                r.borrow_mut().push(lp.run(mode, d));
            }
            if r.borrow().len() == 6 {
                lp.close(t, None).unwrap();
            }
        })).unwrap();
        assert!(!lp.run(RunMode::Default, &mut ()).unwrap());
        assert_eq!(*results.borrow(), vec![Err(Error::INVALID_STATE); 6], "two timer runs, three refusals each");
        assert!(!lp.is_live(t));
    }

    /// The loop's backend round-trips through its name (`Display`,
    /// `FromStr`, `parse`, `name`), and a loop made from the parsed name
    /// runs on the same backend.
    fn backend_name_round_trip(lp) {
        let b = lp.backend();
        assert_ne!(b, Backend::Auto, "a loop names the backend it took");
        let name = b.to_string();
        assert_eq!(name, b.name());
        assert_eq!(name.parse::<Backend>(), Ok(b));
        assert_eq!(Backend::parse(&name), Some(b));
        let other: Loop = Loop::with_backend(name.parse().unwrap()).unwrap();
        assert_eq!(other.backend(), b);
        assert_eq!(format!("{}", other.backend()), name);
    }
}

/// Every backend round-trips through `Display` and `FromStr`; the aliases
/// `UVRING_BACKEND` takes parse too; anything else is `EINVAL`.
#[test]
fn backend_from_str_and_display() {
    for b in [Backend::Epoll, Backend::IoUring, Backend::Auto] {
        assert_eq!(b.to_string().parse::<Backend>(), Ok(b), "{b}");
        assert_eq!(b.to_string(), b.name());
        assert_eq!(Backend::parse(b.name()), Some(b));
    }
    assert_eq!("epoll".parse::<Backend>(), Ok(Backend::Epoll));
    assert_eq!("io_uring".parse::<Backend>(), Ok(Backend::IoUring));
    assert_eq!("auto".parse::<Backend>(), Ok(Backend::Auto));
    for alias in ["iouring", "uring", "io-uring", "IO_URING", " io_uring "] {
        assert_eq!(alias.parse::<Backend>(), Ok(Backend::IoUring), "{alias:?}");
    }
    assert_eq!("EPOLL".parse::<Backend>(), Ok(Backend::Epoll));
    assert_eq!("".parse::<Backend>(), Ok(Backend::Auto), "empty means auto, as for UVRING_BACKEND");
    for bad in ["kqueue", "epoll2", "io_uring!"] {
        assert_eq!(bad.parse::<Backend>(), Err(Error::EINVAL), "{bad:?}");
        assert_eq!(Backend::parse(bad), None);
    }
}
