//! Callbacks with the loop in hand: from inside callbacks, user code closes
//! its own handle, closes other handles, writes, accepts and stops the loop,
//! and nothing panics or leaks. State lives in `Rc<Cell<..>>` counters the
//! test owns; the loop itself is never wrapped in a `RefCell`.

use std::cell::RefCell;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;
use uvring::*;
use uvring_tests::{both_backends, bump, count, listener, run_until};

const LIMIT: Duration = Duration::from_secs(20);

/// A blocking peer on a helper thread: connects, sends `send`, then reads
/// until EOF and returns what it read. Every step is bounded by timeouts,
/// and a refused or reset connection just ends it (some tests close the
/// listener or the connection early on purpose).
fn peer(addr: SocketAddr, send: Vec<u8>) -> std::thread::JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let Ok(mut s) = std::net::TcpStream::connect(addr) else { return Vec::new() };
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.set_write_timeout(Some(Duration::from_secs(10))).unwrap();
        if s.write_all(&send).is_err() {
            return Vec::new();
        }
        let mut back = Vec::new();
        let _ = s.read_to_end(&mut back);
        back
    })
}

both_backends! {
    /// Each kind of callback closes its own handle: timer, read (with more
    /// data arriving in the same batch), write (with more writes queued),
    /// connect, connection (with connections still queued), async, check.
    fn callback_closes_own_handle(lp) {
        // Timer.
        let t = lp.timer_init().unwrap();
        lp.timer_start(t, 0, 1, &OnTimer::new(|lp, t| lp.close(t, None).unwrap())).unwrap();
        // Check hook.
        let h = lp.hook_init(HookKind::Check).unwrap();
        lp.hook_start(h, &OnHook::new(|lp, h| lp.close(h, None).unwrap())).unwrap();
        // Async.
        let (a, sender) = lp.async_init(&OnAsync::new(|lp, a| lp.close(a, None).unwrap())).unwrap();
        sender.send();
        assert!(!lp.run(RunMode::Default).unwrap());
        assert!(!lp.is_live(t) && !lp.is_live(h) && !lp.is_live(a));

        // Read: the peer sends 1 MB, the first read callback closes the
        // stream; no read callback runs after that.
        let reads_after_close = count();
        let on_read = {
            let reads_after_close = reads_after_close.clone();
            OnRead::new(move |lp, s, _| {
                if lp.is_closing(s) {
                    bump(&reads_after_close);
                }
                lp.close(s, None).unwrap();
            })
        };
        // Connection: accept one, close the listener with others queued.
        let on_connection = OnConnection::new(move |lp, srv, st| {
            st.unwrap();
            let c = lp.accept(srv).unwrap();
            lp.read_start(c, &on_read).unwrap();
            lp.close(srv, None).unwrap();
        });
        let (server, addr) = listener(lp, &on_connection);
        let peers: Vec<_> = (0..3).map(|_| peer(addr, vec![9u8; 1 << 20])).collect();
        run_until(lp, LIMIT, |lp| !lp.is_live(server) && lp.handle_count() == 0);
        for p in peers {
            p.join().unwrap();
        }
        assert_eq!(reads_after_close.get(), 0);

        // Write: the first write's callback closes the stream; the other
        // queued writes complete with ECANCELED (or success if sent).
        let statuses = Rc::new(RefCell::new(Vec::new()));
        let on_write = {
            let statuses = statuses.clone();
            OnWrite::new(move |lp, s, st| {
                statuses.borrow_mut().push(st);
                if !lp.is_closing(s) {
                    lp.close(s, None).unwrap();
                }
            })
        };
        // Connect: the connect callback writes, then a second handle's
        // connect callback closes its own handle at once.
        let on_connect = OnConnect::new(move |lp, s, st| {
            st.unwrap();
            for _ in 0..5 {
                lp.write(s, &[1u8; 300_000], Some(&on_write)).unwrap();
            }
        });
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let w = lp.tcp_init().unwrap();
        lp.tcp_connect(w, addr, &on_connect).unwrap();
        let c = lp.tcp_init().unwrap();
        lp.tcp_connect(c, addr, &OnConnect::new(|lp, s, st| {
            st.unwrap();
            lp.close(s, None).unwrap();
        })).unwrap();
        assert!(!lp.run(RunMode::Default).unwrap());
        let statuses = statuses.borrow();
        assert_eq!(statuses.len(), 5, "every write reports once");
        assert_eq!(statuses[0], Ok(()));
        assert!(statuses[1..].iter().all(|s| *s == Ok(()) || *s == Err(Error::ECANCELED)), "{statuses:?}");
        drop(l);
    }

    /// Callbacks close other handles: a timer closes a timer due in the same
    /// iteration (it never fires); a read callback closes another stream
    /// whose data is ready in the same batch (its callback never runs); a
    /// close callback closes a further handle.
    fn callback_closes_other_handle(lp) {
        let t1 = lp.timer_init().unwrap();
        let t2 = lp.timer_init().unwrap();
        let t3 = lp.timer_init().unwrap();
        let on_t3_closed = OnClose::new(|_, _| {});
        let on_t2_closed = OnClose::new(move |lp, _| lp.close(t3, Some(&on_t3_closed)).unwrap());
        lp.timer_start(t1, 5, 0, &OnTimer::new(move |lp, me| {
            lp.close(t2, Some(&on_t2_closed)).unwrap();
            lp.close(me, None).unwrap();
        })).unwrap();
        // Due at the same time as t1, started after it: t1 runs first.
        lp.timer_start(t2, 5, 0, &OnTimer::new(|_, _| panic!("closed by t1 before its turn"))).unwrap();
        lp.timer_start(t3, 60_000, 0, &OnTimer::new(|_, _| panic!("closed from a close callback"))).unwrap();
        assert!(!lp.run(RunMode::Default).unwrap());
        assert!(!lp.is_live(t1) && !lp.is_live(t2) && !lp.is_live(t3));

        // Two connections with data ready; whichever reads first closes both.
        let incoming = Rc::new(RefCell::new(Vec::<Stream>::new()));
        let reads = count();
        let on_read = {
            let (incoming, reads) = (incoming.clone(), reads.clone());
            OnRead::new(move |lp, _, res| {
                assert!(res.is_ok());
                bump(&reads);
                for c in incoming.borrow().iter() {
                    lp.close(*c, None).unwrap();
                }
            })
        };
        let on_connection = {
            let incoming = incoming.clone();
            OnConnection::new(move |lp, srv, st| {
                st.unwrap();
                while let Ok(c) = lp.accept(srv) {
                    incoming.borrow_mut().push(c);
                }
                if incoming.borrow().len() == 2 {
                    for c in incoming.borrow().iter() {
                        lp.read_start(*c, &on_read).unwrap();
                    }
                    lp.close(srv, None).unwrap();
                }
            })
        };
        let (_server, addr) = listener(lp, &on_connection);
        let p1 = peer(addr, b"one".to_vec());
        let p2 = peer(addr, b"two".to_vec());
        run_until(lp, LIMIT, |lp| incoming.borrow().len() == 2 && lp.handle_count() == 0);
        p1.join().unwrap();
        p2.join().unwrap();
        assert_eq!(reads.get(), 1, "the closed stream's pending read was dropped");
    }

    /// Callbacks write: a connect callback, a read callback (echo), a write
    /// callback (a chain of 200 writes, each queued by the previous one's
    /// callback), a timer callback and a close callback all write.
    fn callback_writes(lp) {
        let on_read = OnRead::new(|lp, s, res| match res {
            Ok(b) => lp.write(s, b, None).unwrap(),
            Err(_) => lp.close(s, None).unwrap(),
        });
        let on_connection = OnConnection::new(move |lp, srv, st| {
            st.unwrap();
            let c = lp.accept(srv).unwrap();
            lp.read_start(c, &on_read).unwrap();
            lp.close(srv, None).unwrap();
        });
        let (_server, addr) = listener(lp, &on_connection);
        let received = Rc::new(RefCell::new(Vec::new()));
        let client = lp.tcp_init().unwrap();
        let other = lp.tcp_init().unwrap();
        let on_other_closed = OnClose::new(move |lp, _| lp.write(client, b"[close]", None).unwrap());
        let on_timer = OnTimer::new(move |lp, t| {
            lp.write(client, b"[timer]", None).unwrap();
            lp.close(t, None).unwrap();
            lp.close(other, Some(&on_other_closed)).unwrap();
        });
        let chain = count();
        let on_write: Rc<RefCell<Option<OnWrite>>> = Rc::new(RefCell::new(None));
        let cb = {
            let (chain, slot) = (chain.clone(), on_write.clone());
            OnWrite::new(move |lp, s, st| {
                st.unwrap();
                bump(&chain);
                if chain.get() < 200 {
                    let next = slot.borrow().clone().unwrap();
                    lp.write(s, b".", Some(&next)).unwrap();
                } else {
                    let t = lp.timer_init().unwrap();
                    lp.timer_start(t, 1, 0, &on_timer).unwrap();
                }
            })
        };
        *on_write.borrow_mut() = Some(cb.clone());
        let on_client_read = {
            let received = received.clone();
            OnRead::new(move |lp, s, res| match res {
                Ok(b) => {
                    received.borrow_mut().extend_from_slice(b);
                    if received.borrow().ends_with(b"[close]") {
                        lp.close(s, None).unwrap();
                    }
                }
                Err(e) => panic!("{e:?}"),
            })
        };
        lp.tcp_connect(client, addr, &OnConnect::new(move |lp, s, st| {
            st.unwrap();
            lp.read_start(s, &on_client_read).unwrap();
            lp.write(s, b"[connect]", Some(&cb)).unwrap();
        })).unwrap();
        assert!(!lp.run(RunMode::Default).unwrap());
        *on_write.borrow_mut() = None;
        let mut want = b"[connect]".to_vec();
        want.extend(std::iter::repeat_n(b'.', 199));
        want.extend_from_slice(b"[timer][close]");
        assert_eq!(String::from_utf8_lossy(&received.borrow()), String::from_utf8_lossy(&want));
    }

    /// Accepting from callbacks: in `on_connection`, and later from a timer
    /// callback (the connection waits in the listener's queue meanwhile).
    fn callback_accepts(lp) {
        let served = count();
        let on_written = OnWrite::new(|lp, s, st| {
            st.unwrap();
            lp.close(s, None).unwrap();
        });
        let timer = lp.timer_init().unwrap();
        let on_timer = {
            let (served, on_written) = (served.clone(), on_written.clone());
            OnTimer::new(move |lp, t| {
                let srv = lp.user_data::<Stream>().copied().unwrap();
                while let Ok(c) = lp.accept(srv) {
                    lp.write(c, b"late", Some(&on_written)).unwrap();
                    bump(&served);
                }
                if served.get() == 4 {
                    lp.close(t, None).unwrap();
                    lp.close(srv, None).unwrap();
                }
            })
        };
        let on_connection = {
            let served = served.clone();
            OnConnection::new(move |lp, srv, st| {
                st.unwrap();
                if served.get() < 2 {
                    // Accept now.
                    let c = lp.accept(srv).unwrap();
                    lp.write(c, b"now", Some(&on_written)).unwrap();
                    bump(&served);
                } else if !lp.is_active(timer) {
                    // Leave it queued; a timer accepts it.
                    lp.timer_start(timer, 10, 10, &on_timer).unwrap();
                }
            })
        };
        let (server, addr) = listener(lp, &on_connection);
        lp.set_user_data(server);
        let first: Vec<_> = (0..2).map(|_| peer(addr, vec![])).collect();
        run_until(lp, LIMIT, |_| served.get() == 2);
        let late: Vec<_> = (0..2).map(|_| peer(addr, vec![])).collect();
        assert!(!lp.run(RunMode::Default).unwrap());
        for p in first {
            assert_eq!(p.join().unwrap(), b"now");
        }
        for p in late {
            assert_eq!(p.join().unwrap(), b"late");
        }
        assert_eq!(served.get(), 4);
    }

    /// Stopping the loop from callbacks (timer, idle, read, write, close):
    /// `run` returns after the iteration, and a later `run` carries on.
    fn callback_stops_loop(lp) {
        let stops = count();
        let t = lp.timer_init().unwrap();
        let s2 = stops.clone();
        lp.timer_start(t, 0, 0, &OnTimer::new(move |lp, _| {
            bump(&s2);
            lp.stop();
        })).unwrap();
        let keepalive = lp.timer_init().unwrap();
        lp.timer_start(keepalive, 60_000, 0, &OnTimer::new(|_, _| {})).unwrap();
        assert!(lp.run(RunMode::Default).unwrap(), "stopped with a timer still active");
        assert_eq!(stops.get(), 1);

        // An idle hook (a check hook would wait for the 60 s timer first:
        // check runs after the poll phase, which blocks until the timer).
        let idle = lp.hook_init(HookKind::Idle).unwrap();
        let s3 = stops.clone();
        lp.hook_start(idle, &OnHook::new(move |lp, _| {
            bump(&s3);
            let me = lp.user_data::<Hook>().copied().unwrap();
            lp.hook_stop(me).unwrap();
            lp.stop();
        })).unwrap();
        lp.set_user_data(idle);
        assert!(lp.run(RunMode::Default).unwrap());
        assert_eq!(stops.get(), 2);

        // Read and write callbacks stop the loop; close callbacks too.
        let on_read = {
            let stops = stops.clone();
            OnRead::new(move |lp, s, res| {
                if res.is_ok() {
                    bump(&stops);
                    lp.stop();
                } else {
                    lp.close(s, None).unwrap();
                }
            })
        };
        let on_connection = OnConnection::new(move |lp, srv, st| {
            st.unwrap();
            let c = lp.accept(srv).unwrap();
            lp.read_start(c, &on_read).unwrap();
        });
        let (server, addr) = listener(lp, &on_connection);
        let on_write = {
            let stops = stops.clone();
            OnWrite::new(move |lp, _, st| {
                st.unwrap();
                bump(&stops);
                lp.stop();
            })
        };
        let client = lp.tcp_init().unwrap();
        lp.tcp_connect(client, addr, &OnConnect::new(move |lp, s, st| {
            st.unwrap();
            lp.write(s, b"stop", Some(&on_write)).unwrap();
        })).unwrap();
        while stops.get() < 4 {
            assert!(lp.run(RunMode::Default).unwrap());
        }
        let s4 = stops.clone();
        lp.close(client, Some(&OnClose::new(move |lp, _| {
            bump(&s4);
            lp.stop();
        }))).unwrap();
        run_until(lp, LIMIT, |_| stops.get() == 5);
        for h in [server.id(), t.id(), keepalive.id(), idle.id()] {
            if !lp.is_closing(h) && lp.is_live(h) {
                lp.close(h, None).unwrap();
            }
        }
        assert!(!lp.run(RunMode::Default).unwrap());
    }

    /// Misuse from a callback is an error, never a panic: running the loop
    /// re-entrantly, closing a handle twice, using a handle closed earlier
    /// in the same callback.
    fn callback_misuse_is_an_error(lp) {
        let checked = count();
        let c2 = checked.clone();
        let t = lp.timer_init().unwrap();
        lp.timer_start(t, 0, 0, &OnTimer::new(move |lp, t| {
            assert_eq!(lp.run(RunMode::NoWait), Err(Error::INVALID_STATE));
            lp.close(t, None).unwrap();
            assert_eq!(lp.close(t, None), Err(Error::INVALID_STATE));
            assert_eq!(lp.timer_start(t, 1, 0, &OnTimer::new(|_, _| {})), Err(Error::STALE_HANDLE));
            bump(&c2);
        })).unwrap();
        assert!(!lp.run(RunMode::Default).unwrap());
        assert_eq!(checked.get(), 1);
    }

    /// An IPC read callback closes its own pipe while more messages with
    /// fds attached are already received (in the same batch or buffered in
    /// the loop): the fds of the dropped messages are closed, none leaks
    /// (the harness checks the fd count).
    fn callback_closes_ipc_pipe_with_fds_in_flight(lp) {
        let (a, b) = lp.pipe_pair(true).unwrap();
        let written = count();
        let on_written = {
            let written = written.clone();
            OnWrite::new(move |_, _, st| {
                st.unwrap();
                bump(&written);
            })
        };
        for _ in 0..40 {
            let mut batch = FdBatch::new();
            batch.push(std::fs::File::open("/dev/null").unwrap().into()).unwrap();
            lp.write_fds(a, b"m", &mut batch, Some(&on_written)).unwrap();
        }
        // Every message waits in b's socket before b reads.
        run_until(lp, LIMIT, |_| written.get() == 40);
        let reads = count();
        let r2 = reads.clone();
        lp.read_start(b, &OnRead::new(move |lp, s, res| {
            assert!(res.is_ok(), "{res:?}");
            bump(&r2);
            lp.close(s, None).unwrap();
        })).unwrap();
        run_until(lp, LIMIT, |lp| !lp.is_live(b));
        assert_eq!(reads.get(), 1);
        lp.close(a, None).unwrap();
        assert!(!lp.run(RunMode::Default).unwrap());
    }

    /// The same with a read_stop first: messages received after the stop
    /// are kept for the next read_start, and closing the pipe instead closes
    /// their fds.
    fn ipc_pipe_closed_with_stashed_fds(lp) {
        let (a, b) = lp.pipe_pair(true).unwrap();
        let written = count();
        let on_written = {
            let written = written.clone();
            OnWrite::new(move |_, _, st| {
                st.unwrap();
                bump(&written);
            })
        };
        for _ in 0..40 {
            let mut batch = FdBatch::new();
            batch.push(std::fs::File::open("/dev/null").unwrap().into()).unwrap();
            lp.write_fds(a, b"m", &mut batch, Some(&on_written)).unwrap();
        }
        run_until(lp, LIMIT, |_| written.get() == 40);
        let reads = count();
        let r2 = reads.clone();
        lp.read_start(b, &OnRead::new(move |lp, s, res| {
            assert!(res.is_ok(), "{res:?}");
            bump(&r2);
            if lp.is_reading(s) {
                lp.read_stop(s).unwrap();
            }
        })).unwrap();
        run_until(lp, LIMIT, |_| reads.get() >= 1);
        for _ in 0..5 {
            lp.run(RunMode::NoWait).unwrap();
        }
        lp.close(b, None).unwrap();
        lp.close(a, None).unwrap();
        assert!(!lp.run(RunMode::Default).unwrap());
    }

    /// Messages that carry fds are read several per wakeup (the kernel ends
    /// a read at each of them, which is no sign that the socket is drained).
    fn ipc_messages_with_fds_read_in_few_iterations(lp) {
        let (a, b) = lp.pipe_pair(true).unwrap();
        let written = count();
        let on_written = {
            let written = written.clone();
            OnWrite::new(move |_, _, st| {
                st.unwrap();
                bump(&written);
            })
        };
        for _ in 0..20 {
            let mut batch = FdBatch::new();
            batch.push(std::fs::File::open("/dev/null").unwrap().into()).unwrap();
            lp.write_fds(a, b"m", &mut batch, Some(&on_written)).unwrap();
        }
        run_until(lp, LIMIT, |_| written.get() == 20);
        let got = count();
        let g2 = got.clone();
        lp.read_start(b, &OnRead::new(move |lp, s, res| {
            assert_eq!(res.map(|b| b.len()), Ok(1));
            while lp.accept_pending_fd(s).is_ok() {
                bump(&g2);
            }
        })).unwrap();
        let before = lp.iterations();
        run_until(lp, LIMIT, |_| got.get() == 20);
        let iterations = lp.iterations() - before;
        assert!(iterations <= 5, "20 queued messages took {iterations} iterations");
        lp.close(a, None).unwrap();
        lp.close(b, None).unwrap();
        assert!(!lp.run(RunMode::Default).unwrap());
    }
}
