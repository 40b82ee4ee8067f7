//! `listen_stop`: a listener stops accepting gracefully (Node's
//! `server.close()`): what the kernel already accepted for it (io_uring's
//! multishot accept takes connections off the listen queue by itself) is
//! still delivered and served; nothing accepted is dropped.

use std::cell::{Cell, RefCell};
use std::io::Read;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::mpsc;
use std::time::Duration;
use uvring::*;
use uvring_tests::{both_backends, listener_with_backlog as listener, run_until};

const LIMIT: Duration = Duration::from_secs(30);

/// What one client connection saw.
#[derive(Debug, Default, Clone, Copy)]
struct Outcomes {
    /// Got the greeting: accepted and served.
    served: usize,
    /// Refused, reset or timed out before any byte: the listener never
    /// accepted it (it was left in, or refused by, the kernel's queue).
    not_accepted: usize,
    /// A clean end of stream without the greeting: accepted and then
    /// dropped by the server. Must never happen.
    dropped: usize,
}

/// Connects to `addr` up to `n` times, one connection at a time, until a
/// connect is refused (the listener is gone); reads each to the end.
fn client(addr: SocketAddr, n: usize) -> Outcomes {
    let mut o = Outcomes::default();
    for _ in 0..n {
        let mut s = match std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5)) {
            Ok(s) => s,
            Err(_) => {
                o.not_accepted += 1;
                break;
            }
        };
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut got = Vec::new();
        match s.read_to_end(&mut got) {
            Ok(_) if got == b"hi" => o.served += 1,
            Ok(_) => o.dropped += 1,
            Err(_) if got.is_empty() => o.not_accepted += 1,
            Err(e) => panic!("greeting cut short ({got:?}): {e}"),
        }
    }
    o
}

both_backends! {
    /// A flood of connects while the listener stops: every connection the
    /// listener accepted is served (greeting, then a clean close); the rest
    /// are refused or reset by the kernel, never accepted and dropped.
    fn stop_during_a_flood_drops_nothing_accepted(lp) {
        const CLIENTS: usize = 4;
        let accepted = Rc::new(Cell::new(0usize));
        let stopped = Rc::new(Cell::new(false));
        let server_cell = Rc::new(Cell::new(None::<TcpListener>));
        let on_shutdown = OnShutdown::new(|lp, _, s: TcpStream, _| {
            let _ = lp.close(s, None);
        });
        let on_stop = {
            let stopped = stopped.clone();
            OnListenStop::new(move |lp, _, srv: TcpListener, st| {
                st.unwrap();
                assert!(!stopped.replace(true), "stop callback ran twice");
                // Nothing can arrive any more: closing drops nothing.
                assert_eq!(lp.accept_queue_len(srv).unwrap(), 0);
                lp.close(srv, None).unwrap();
            })
        };
        let on_connection = {
            let (accepted, server_cell) = (accepted.clone(), server_cell.clone());
            OnConnection::new(move |lp, _, srv, st| {
                st.unwrap();
                while let Ok(c) = lp.accept(srv) {
                    accepted.set(accepted.get() + 1);
                    lp.write(c, b"hi", None).unwrap();
                    lp.shutdown(c, Some(&on_shutdown)).unwrap();
                }
                // Stop in the middle of the flood, from inside the callback
                // (more completions of the same batch may be on their way).
                if accepted.get() >= 40 && !lp.is_listen_stopped(srv) {
                    lp.listen_stop(srv, Some(&on_stop)).unwrap();
                    assert_eq!(server_cell.get(), Some(srv));
                }
            })
        };
        let (server, addr) = listener(lp, 1024, &on_connection);
        server_cell.set(Some(server));
        let (tx, rx) = mpsc::channel();
        for _ in 0..CLIENTS {
            let tx = tx.clone();
            std::thread::spawn(move || {
                let _ = tx.send(client(addr, 150));
            });
        }
        drop(tx);
        let mut total = Outcomes::default();
        let mut done = 0;
        run_until(lp, LIMIT, |lp| {
            while let Ok(o) = rx.try_recv() {
                total.served += o.served;
                total.not_accepted += o.not_accepted;
                total.dropped += o.dropped;
                done += 1;
            }
            done == CLIENTS && !lp.is_live(server) && !lp.alive()
        });
        assert!(stopped.get());
        assert_eq!(total.dropped, 0, "accepted connections were dropped: {total:?}");
        assert_eq!(total.served, accepted.get(), "every accepted connection was served: {total:?}");
        assert!(total.served >= 40, "{total:?}");
    }

    /// An idle listener: the stop callback runs on a later turn, once; the
    /// listener is no longer active; a second stop is refused; close after.
    fn stop_idle_listener(lp) {
        let on_connection = OnConnection::new(|_, _, _, _| panic!("no connection expected"));
        let (server, _) = listener(lp, 16, &on_connection);
        // A listener that is no longer listening (a listen hook reported a
        // late failure): stopping it is refused.
        let failed = Rc::new(Cell::new(false));
        let on_failed = {
            let failed = failed.clone();
            OnConnection::new(move |_, _, _, st| {
                assert_eq!(st, Err(Error::EADDRINUSE));
                failed.set(true);
            })
        };
        let (other, _) = listener(lp, 16, &on_failed);
        lp.listen_fail(other, Error::EADDRINUSE);
        run_until(lp, LIMIT, |_| failed.get());
        assert_eq!(lp.listen_stop(other, None), Err(Error::EINVAL), "not listening");
        assert!(!lp.is_listen_stopped(other));
        lp.close(other, None).unwrap();
        let calls = Rc::new(Cell::new(0));
        let on_stop = {
            let calls = calls.clone();
            OnListenStop::new(move |_, _, _, st| {
                st.unwrap();
                calls.set(calls.get() + 1);
            })
        };
        lp.listen_stop(server, Some(&on_stop)).unwrap();
        assert_eq!(calls.get(), 0, "the callback never runs from inside the call");
        assert!(lp.is_listen_stopped(server));
        assert_eq!(lp.listen_stop(server, None), Err(Error::INVALID_STATE));
        run_until(lp, LIMIT, |_| calls.get() == 1);
        assert!(!lp.is_active(server));
        // Not active: the loop has nothing left to wait for.
        assert!(!lp.run(RunMode::NoWait, &mut ()).unwrap());
        assert_eq!(calls.get(), 1);
        lp.close(server, None).unwrap();
        assert!(!lp.run(RunMode::Default, &mut ()).unwrap());
    }

    /// Closing while the stop is in progress stays prompt: the close
    /// callback runs, the stop callback does not, nothing leaks.
    fn close_while_stopping(lp) {
        let on_connection = OnConnection::new(|_, _, _, _| {});
        let (server, _) = listener(lp, 16, &on_connection);
        let on_stop = OnListenStop::new(|_, _, _, _| panic!("closed first: no stop callback"));
        let closed = Rc::new(Cell::new(false));
        let c = closed.clone();
        lp.listen_stop(server, Some(&on_stop)).unwrap();
        lp.close(server, Some(&OnClose::new(move |_, _, _| c.set(true)))).unwrap();
        assert!(!lp.run(RunMode::Default, &mut ()).unwrap());
        assert!(closed.get());
    }

    /// Connections queued before the stop can still be accepted after it
    /// (the user need not take them in `on_connection`).
    fn queued_connections_survive_the_stop(lp) {
        let on_connection = OnConnection::new(|_, _, _, st| st.unwrap());
        let (server, addr) = listener(lp, 16, &on_connection);
        let clients: Vec<_> = (0..3).map(|_| std::net::TcpStream::connect(addr).unwrap()).collect();
        run_until(lp, LIMIT, |lp| lp.accept_queue_len(server).unwrap() == 3);
        let taken = Rc::new(RefCell::new(Vec::new()));
        let on_stop = {
            let taken = taken.clone();
            OnListenStop::new(move |lp, _, srv, _| {
                while let Ok(c) = lp.accept(srv) {
                    taken.borrow_mut().push(c);
                }
                lp.close(srv, None).unwrap();
            })
        };
        lp.listen_stop(server, Some(&on_stop)).unwrap();
        run_until(lp, LIMIT, |lp| !lp.is_live(server));
        assert_eq!(taken.borrow().len(), 3);
        for c in taken.borrow().iter() {
            lp.close(*c, None).unwrap();
        }
        drop(clients);
        assert!(!lp.run(RunMode::Default, &mut ()).unwrap());
    }
}

both_backends! {
    /// `listen_pause`: a paused listener accepts nothing (the connection
    /// waits in the kernel's backlog); resumed, it takes it at once, and
    /// `listen_accepted` counts it.
    fn pause_leaves_connections_in_the_backlog(lp) {
        let got = Rc::new(Cell::new(0usize));
        let on_connection = {
            let got = got.clone();
            OnConnection::new(move |lp, _, srv, st| {
                st.unwrap();
                while let Ok(c) = lp.accept(srv) {
                    got.set(got.get() + 1);
                    lp.close(c, None).unwrap();
                }
            })
        };
        let (server, addr) = listener(lp, 16, &on_connection);
        lp.listen_pause(server, true).unwrap();
        lp.listen_pause(server, true).unwrap();
        let client = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
        let until = std::time::Instant::now() + Duration::from_millis(200);
        let t = lp.timer_init().unwrap();
        lp.timer_start(t, Duration::from_millis(10), Duration::from_millis(10), &OnTimer::new(|_, _, _| {})).unwrap();
        run_until(lp, LIMIT, |_| std::time::Instant::now() >= until);
        assert_eq!(got.get(), 0, "a paused listener accepted");
        assert_eq!(lp.listen_accepted(server).unwrap(), 0);
        lp.listen_pause(server, false).unwrap();
        run_until(lp, LIMIT, |_| got.get() == 1);
        assert_eq!(lp.listen_accepted(server).unwrap(), 1);
        drop(client);
        lp.close(t, None).unwrap();
        lp.close(server, None).unwrap();
        run_until(lp, LIMIT, |lp| !lp.alive());
    }
}
