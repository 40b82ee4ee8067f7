//! Callbacks with the loop in hand: from inside callbacks, user code closes
//! its own handle, closes other handles, writes, accepts and stops the loop,
//! and nothing panics or leaks. Most tests keep their state in `Rc<Cell<..>>`
//! counters they own; the last one keeps it in the loop's data `D`, calls
//! every operation from every kind of callback and checks the whole event
//! log. The loop itself is never wrapped in a `RefCell`.

use std::cell::{Cell, RefCell};
use std::ffi::OsStr;
use std::fs::File;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::Duration;
use uvring::*;
use uvring_tests::{both_backends, bump, count, listener, run_until};

const LIMIT: Duration = Duration::from_secs(20);

/// Milliseconds.
fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

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
        lp.timer_start(t, ms(0), ms(1), &OnTimer::new(|lp, _, t| lp.close(t, None).unwrap())).unwrap();
        // Check hook.
        let h = lp.hook_init(HookKind::Check).unwrap();
        lp.hook_start(h, &OnHook::new(|lp, _, h| lp.close(h, None).unwrap())).unwrap();
        // Async.
        let (a, sender) = lp.async_init(&OnAsync::new(|lp, _, a| lp.close(a, None).unwrap())).unwrap();
        sender.send();
        assert!(!lp.run(RunMode::Default, &mut ()).unwrap());
        assert!(!lp.is_live(t) && !lp.is_live(h) && !lp.is_live(a));

        // Read: the peer sends 1 MB, the first read callback closes the
        // stream; no read callback runs after that.
        let reads_after_close = count();
        let on_read = {
            let reads_after_close = reads_after_close.clone();
            OnRead::new(move |lp, _, s, _| {
                if lp.is_closing(s) {
                    bump(&reads_after_close);
                }
                lp.close(s, None).unwrap();
            })
        };
        // Connection: accept one, close the listener with others queued.
        let on_connection = OnConnection::new(move |lp, _, srv, st| {
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
            OnWrite::new(move |lp, _, s, st| {
                statuses.borrow_mut().push(st);
                if !lp.is_closing(s) {
                    lp.close(s, None).unwrap();
                }
            })
        };
        // Connect: the connect callback writes, then a second handle's
        // connect callback closes its own handle at once.
        let on_connect = OnConnect::new(move |lp, _, s, st| {
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
        lp.tcp_connect(c, addr, &OnConnect::new(|lp, _, s, st| {
            st.unwrap();
            lp.close(s, None).unwrap();
        })).unwrap();
        assert!(!lp.run(RunMode::Default, &mut ()).unwrap());
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
        let on_t3_closed = OnClose::new(|_, _, _| {});
        let on_t2_closed = OnClose::new(move |lp, _, _| lp.close(t3, Some(&on_t3_closed)).unwrap());
        lp.timer_start(t1, ms(5), ms(0), &OnTimer::new(move |lp, _, me| {
            lp.close(t2, Some(&on_t2_closed)).unwrap();
            lp.close(me, None).unwrap();
        })).unwrap();
        // Due at the same time as t1, started after it: t1 runs first.
        lp.timer_start(t2, ms(5), ms(0), &OnTimer::new(|_, _, _| panic!("closed by t1 before its turn"))).unwrap();
        lp.timer_start(t3, ms(60_000), ms(0), &OnTimer::new(|_, _, _| panic!("closed from a close callback"))).unwrap();
        assert!(!lp.run(RunMode::Default, &mut ()).unwrap());
        assert!(!lp.is_live(t1) && !lp.is_live(t2) && !lp.is_live(t3));

        // Two connections with data ready; whichever reads first closes both.
        let incoming = Rc::new(RefCell::new(Vec::<TcpStream>::new()));
        let reads = count();
        let on_read = {
            let (incoming, reads) = (incoming.clone(), reads.clone());
            OnRead::new(move |lp, _, _, res| {
                assert!(res.is_ok());
                bump(&reads);
                for c in incoming.borrow().iter() {
                    lp.close(*c, None).unwrap();
                }
            })
        };
        let on_connection = {
            let incoming = incoming.clone();
            OnConnection::new(move |lp, _, srv, st| {
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
        let on_read = OnRead::new(|lp, _, s, res| match res {
            Ok(b) => lp.write(s, b, None).unwrap(),
            Err(_) => lp.close(s, None).unwrap(),
        });
        let on_connection = OnConnection::new(move |lp, _, srv, st| {
            st.unwrap();
            let c = lp.accept(srv).unwrap();
            lp.read_start(c, &on_read).unwrap();
            lp.close(srv, None).unwrap();
        });
        let (_server, addr) = listener(lp, &on_connection);
        let received = Rc::new(RefCell::new(Vec::new()));
        let client = lp.tcp_init().unwrap();
        // The client's stream id, known once `tcp_connect` has returned it.
        let client_stream = Rc::new(Cell::new(None::<TcpStream>));
        let other = lp.tcp_init().unwrap();
        let cs = client_stream.clone();
        let on_other_closed = OnClose::new(move |lp, _, _| lp.write(cs.get().unwrap(), b"[close]", None).unwrap());
        let cs = client_stream.clone();
        let on_timer = OnTimer::new(move |lp, _, t| {
            lp.write(cs.get().unwrap(), b"[timer]", None).unwrap();
            lp.close(t, None).unwrap();
            lp.close(other, Some(&on_other_closed)).unwrap();
        });
        let chain = count();
        let on_write: Rc<RefCell<Option<OnWrite<(), TcpStream>>>> = Rc::new(RefCell::new(None));
        let cb = {
            let (chain, slot) = (chain.clone(), on_write.clone());
            OnWrite::new(move |lp, _, s, st| {
                st.unwrap();
                bump(&chain);
                if chain.get() < 200 {
                    let next = slot.borrow().clone().unwrap();
                    lp.write(s, b".", Some(&next)).unwrap();
                } else {
                    let t = lp.timer_init().unwrap();
                    lp.timer_start(t, ms(1), ms(0), &on_timer).unwrap();
                }
            })
        };
        *on_write.borrow_mut() = Some(cb.clone());
        let on_client_read = {
            let received = received.clone();
            OnRead::new(move |lp, _, s, res| match res {
                Ok(b) => {
                    received.borrow_mut().extend_from_slice(b);
                    if received.borrow().ends_with(b"[close]") {
                        lp.close(s, None).unwrap();
                    }
                }
                Err(e) => panic!("{e:?}"),
            })
        };
        let client = lp.tcp_connect(client, addr, &OnConnect::new(move |lp, _, s, st| {
            st.unwrap();
            lp.read_start(s, &on_client_read).unwrap();
            lp.write(s, b"[connect]", Some(&cb)).unwrap();
        })).unwrap();
        client_stream.set(Some(client));
        assert!(!lp.run(RunMode::Default, &mut ()).unwrap());
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
        let on_written = OnWrite::new(|lp, _, s, st| {
            st.unwrap();
            lp.close(s, None).unwrap();
        });
        let timer = lp.timer_init().unwrap();
        let on_timer = {
            let (served, on_written) = (served.clone(), on_written.clone());
            OnTimer::new(move |lp, _, t| {
                let srv = lp.user_data::<TcpListener>().copied().unwrap();
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
            OnConnection::new(move |lp, _, srv, st| {
                st.unwrap();
                if served.get() < 2 {
                    // Accept now.
                    let c = lp.accept(srv).unwrap();
                    lp.write(c, b"now", Some(&on_written)).unwrap();
                    bump(&served);
                } else if !lp.is_active(timer) {
                    // Leave it queued; a timer accepts it.
                    lp.timer_start(timer, ms(10), ms(10), &on_timer).unwrap();
                }
            })
        };
        let (server, addr) = listener(lp, &on_connection);
        lp.set_user_data(server);
        let first: Vec<_> = (0..2).map(|_| peer(addr, vec![])).collect();
        run_until(lp, LIMIT, |_| served.get() == 2);
        let late: Vec<_> = (0..2).map(|_| peer(addr, vec![])).collect();
        assert!(!lp.run(RunMode::Default, &mut ()).unwrap());
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
        lp.timer_start(t, ms(0), ms(0), &OnTimer::new(move |lp, _, _| {
            bump(&s2);
            lp.stop();
        })).unwrap();
        let keepalive = lp.timer_init().unwrap();
        lp.timer_start(keepalive, ms(60_000), ms(0), &OnTimer::new(|_, _, _| {})).unwrap();
        assert!(lp.run(RunMode::Default, &mut ()).unwrap(), "stopped with a timer still active");
        assert_eq!(stops.get(), 1);

        // An idle hook (a check hook would wait for the 60 s timer first:
        // check runs after the poll phase, which blocks until the timer).
        let idle = lp.hook_init(HookKind::Idle).unwrap();
        let s3 = stops.clone();
        lp.hook_start(idle, &OnHook::new(move |lp, _, _| {
            bump(&s3);
            let me = lp.user_data::<Hook>().copied().unwrap();
            lp.hook_stop(me).unwrap();
            lp.stop();
        })).unwrap();
        lp.set_user_data(idle);
        assert!(lp.run(RunMode::Default, &mut ()).unwrap());
        assert_eq!(stops.get(), 2);

        // Read and write callbacks stop the loop; close callbacks too.
        let on_read = {
            let stops = stops.clone();
            OnRead::new(move |lp, _, s, res| {
                if res.is_ok() {
                    bump(&stops);
                    lp.stop();
                } else {
                    lp.close(s, None).unwrap();
                }
            })
        };
        let on_connection = OnConnection::new(move |lp, _, srv, st| {
            st.unwrap();
            let c = lp.accept(srv).unwrap();
            lp.read_start(c, &on_read).unwrap();
        });
        let (server, addr) = listener(lp, &on_connection);
        let on_write = {
            let stops = stops.clone();
            OnWrite::new(move |lp, _, _, st| {
                st.unwrap();
                bump(&stops);
                lp.stop();
            })
        };
        let client = lp.tcp_init().unwrap();
        lp.tcp_connect(client, addr, &OnConnect::new(move |lp, _, s, st| {
            st.unwrap();
            lp.write(s, b"stop", Some(&on_write)).unwrap();
        })).unwrap();
        while stops.get() < 4 {
            assert!(lp.run(RunMode::Default, &mut ()).unwrap());
        }
        let s4 = stops.clone();
        lp.close(client, Some(&OnClose::new(move |lp, _, _| {
            bump(&s4);
            lp.stop();
        }))).unwrap();
        run_until(lp, LIMIT, |_| stops.get() == 5);
        for h in [server.id(), t.id(), keepalive.id(), idle.id()] {
            if !lp.is_closing(h) && lp.is_live(h) {
                lp.close(h, None).unwrap();
            }
        }
        assert!(!lp.run(RunMode::Default, &mut ()).unwrap());
    }

    /// Misuse from a callback is an error, never a panic: running the loop
    /// re-entrantly, closing a handle twice, using a handle closed earlier
    /// in the same callback.
    fn callback_misuse_is_an_error(lp) {
        let checked = count();
        let c2 = checked.clone();
        let t = lp.timer_init().unwrap();
        lp.timer_start(t, ms(0), ms(0), &OnTimer::new(move |lp, d, t| {
            assert_eq!(lp.run(RunMode::NoWait, d), Err(Error::INVALID_STATE));
            lp.close(t, None).unwrap();
            assert_eq!(lp.close(t, None), Err(Error::INVALID_STATE));
            assert_eq!(lp.timer_start(t, ms(1), ms(0), &OnTimer::new(|_, _, _| {})), Err(Error::STALE_HANDLE));
            bump(&c2);
        })).unwrap();
        assert!(!lp.run(RunMode::Default, &mut ()).unwrap());
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
            OnWrite::new(move |_, _, _, st| {
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
        lp.read_start(b, &OnRead::new(move |lp, _, s, res| {
            assert!(res.is_ok(), "{res:?}");
            bump(&r2);
            lp.close(s, None).unwrap();
        })).unwrap();
        run_until(lp, LIMIT, |lp| !lp.is_live(b));
        assert_eq!(reads.get(), 1);
        lp.close(a, None).unwrap();
        assert!(!lp.run(RunMode::Default, &mut ()).unwrap());
    }

    /// The same with a read_stop first: messages received after the stop
    /// are kept for the next read_start, and closing the pipe instead closes
    /// their fds.
    fn ipc_pipe_closed_with_stashed_fds(lp) {
        let (a, b) = lp.pipe_pair(true).unwrap();
        let written = count();
        let on_written = {
            let written = written.clone();
            OnWrite::new(move |_, _, _, st| {
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
        lp.read_start(b, &OnRead::new(move |lp, _, s, res| {
            assert!(res.is_ok(), "{res:?}");
            bump(&r2);
            if lp.is_reading(s) {
                lp.read_stop(s).unwrap();
            }
        })).unwrap();
        run_until(lp, LIMIT, |_| reads.get() >= 1);
        for _ in 0..5 {
            lp.run(RunMode::NoWait, &mut ()).unwrap();
        }
        lp.close(b, None).unwrap();
        lp.close(a, None).unwrap();
        assert!(!lp.run(RunMode::Default, &mut ()).unwrap());
    }

    /// Messages that carry fds are read several per wakeup (the kernel ends
    /// a read at each of them, which is no sign that the socket is drained).
    fn ipc_messages_with_fds_read_in_few_iterations(lp) {
        let (a, b) = lp.pipe_pair(true).unwrap();
        let written = count();
        let on_written = {
            let written = written.clone();
            OnWrite::new(move |_, _, _, st| {
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
        lp.read_start(b, &OnRead::new(move |lp, _, s, res| {
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
        assert!(!lp.run(RunMode::Default, &mut ()).unwrap());
    }
}

// ---- every operation from every callback ---------------------------------
//
// One scenario on a `Loop<Ev>`: the state lives in `D` (no `Rc<RefCell>`),
// every callback kind (connection, listen-stop, read, write, connect,
// shutdown, close, timer, hook, async, signal, poll, process exit, UDP send
// and receive, work done, file operation done) logs itself and, from inside,
// calls every operation on every handle ([`exercise`]), then starts the next
// step. Each step leaves exactly one chain of callbacks outstanding (two UDP
// sends, whose callbacks come in send order), so the log is the same on
// every backend and run; it is compared whole with the expected sequence: no
// callback lost, doubled or reordered, none run from inside an API call (the
// "call"/"returned" entries around the writes and the send that fail). The
// failure paths that used to call back from inside `write` (a refused
// connection, a reset peer) are among the steps.

/// The scenario's state (the loop's `D`).
struct Ev {
    log: Vec<String>,
    done: bool,
    deadline: std::time::Instant,
    /// Every handle made, with its name and type (closed ones stay listed:
    /// their ids must be stale).
    names: Vec<(HandleId, &'static str, HandleType)>,
    cb: Rc<Cbs>,
    l: Option<TcpListener>,
    s: Option<TcpStream>,
    c: Option<TcpStream>,
    p1: Option<PipeStream>,
    p2: Option<PipeStream>,
    t: Option<Timer>,
    h: Option<Hook>,
    sig: Option<Signal>,
    /// A timer closed before the scenario: a stale id.
    dead: Option<Timer>,
    sender: Option<AsyncSender>,
    /// The std end of S (connected to the loop's listener).
    peer: Option<std::net::TcpStream>,
    /// C connects here; its std end is `peer2`.
    stdl: std::net::TcpListener,
    peer2: Option<std::net::TcpStream>,
    /// Nobody listens there.
    refused: SocketAddr,
    timer_fires: u32,
    writes_s: u32,
    writes_c: u32,
    /// Handles closed one after the other at the end.
    close_order: std::collections::VecDeque<HandleId>,
    exercised: usize,
    /// Writes on scratch pipes made and closed inside callbacks: issued and
    /// reported (each exactly once).
    scratch_writes: usize,
    scratch_reported: usize,
    /// A poll watcher of `poll_end` (the loop never owns that fd); the
    /// step writes a byte into `poll_peer`.
    pw: Option<Poll>,
    poll_end: UnixStream,
    poll_peer: UnixStream,
    /// The fd of the scratch poll watchers `exercise` makes (its peer is
    /// kept open: no hang-up).
    scratch_poll: (UnixStream, UnixStream),
    /// A UDP socket bound to 127.0.0.1, and its address; it sends to itself.
    u: Option<Udp>,
    u_addr: SocketAddr,
    /// UDP sends of the step whose callbacks have not run.
    u_sends: usize,
    /// The child (`sh -c 'exit 3'`), and whether its exit callback ran.
    ch: Option<Process>,
    ch_exited: bool,
    /// The step's work item and file request; moved to `stale_*` by their
    /// callbacks (they are stale from then on).
    work: Option<Work>,
    stale_work: Option<Work>,
    fs_req: Option<FsRequest>,
    stale_fs: Option<FsRequest>,
    /// The file the fs steps stat, open, read and close.
    path: PathBuf,
    file: Option<File>,
    /// Scratch UDP sends, work items and file requests made inside
    /// callbacks (each cancelled or closed at once): issued and reported.
    scratch_sends: usize,
    scratch_sends_reported: usize,
    scratch_works: usize,
    scratch_works_reported: usize,
    scratch_fs: usize,
    scratch_fs_reported: usize,
}

/// Every callback of the scenario, built once.
struct Cbs {
    connection: OnConnection<Ev, TcpListener>,
    listen_stopped: OnListenStop<Ev, TcpListener>,
    read_s: OnRead<Ev, TcpStream>,
    write_s: OnWrite<Ev, TcpStream>,
    write_s_fail: OnWrite<Ev, TcpStream>,
    shutdown_s: OnShutdown<Ev, TcpStream>,
    timer: OnTimer<Ev>,
    never: OnTimer<Ev>,
    hook: OnHook<Ev>,
    signal: OnSignal<Ev>,
    connect_r: OnConnect<Ev, TcpStream>,
    write_r: OnWrite<Ev, TcpStream>,
    connect_c: OnConnect<Ev, TcpStream>,
    write_c: OnWrite<Ev, TcpStream>,
    write_p1: OnWrite<Ev, PipeStream>,
    shutdown_p1: OnShutdown<Ev, PipeStream>,
    read_p2: OnRead<Ev, PipeStream>,
    close: OnClose<Ev>,
    scratch_write: OnWrite<Ev, PipeStream>,
    ignore_connection: OnConnection<Ev, TcpListener>,
    poll: OnPoll<Ev>,
    never_poll: OnPoll<Ev>,
    exit: OnExit<Ev>,
    never_exit: OnExit<Ev>,
    send_u: OnSend<Ev>,
    send_u_fail: OnSend<Ev>,
    recv_u: OnRecv<Ev>,
    scratch_send: OnSend<Ev>,
}

impl Ev {
    fn log(&mut self, what: impl Into<String>) {
        self.log.push(what.into());
    }

    fn name(&mut self, h: impl Into<HandleId>, name: &'static str, ty: HandleType) {
        self.names.push((h.into(), name, ty));
    }

    fn name_of(&self, h: HandleId) -> &'static str {
        self.names.iter().find(|(id, _, _)| *id == h).map_or("?", |(_, n, _)| n)
    }
}

/// Calls every operation that does not itself call back on every handle
/// of the scenario, and the failing ones that must fail at once; makes and
/// closes scratch handles (a timer that never fires, a listener, a pipe pair
/// with a write queued, a poll watcher that never reports, a UDP socket with
/// a send queued) and requests (a work item and a file stat, each cancelled)
/// whose callbacks must each run exactly once, later.
fn exercise(lp: &mut Loop<Ev>, d: &mut Ev) {
    d.exercised += 1;
    let cb = d.cb.clone();
    // The loop itself.
    assert_eq!(lp.run(RunMode::NoWait, d), Err(Error::INVALID_STATE), "run is not re-entrant");
    lp.update_time();
    let _ = (lp.now(), lp.iterations(), lp.backend(), lp.alive());
    let mut seen = 0;
    lp.walk(|lp, h| {
        seen += 1;
        assert!(lp.is_live(h));
        lp.handle_type(h).unwrap();
    });
    assert_eq!(seen, lp.handle_count(), "walk visits every live handle");

    // Every handle, by id.
    for (id, name, ty) in d.names.clone() {
        if !lp.is_live(id) {
            assert_eq!(lp.data(id), Err(Error::STALE_HANDLE), "{name}");
            assert_eq!(lp.close(id, None), Err(Error::STALE_HANDLE), "{name}");
            assert_eq!(lp.handle_type(id), Err(Error::STALE_HANDLE), "{name}");
            assert!(!lp.is_active(id) && !lp.is_closing(id));
            continue;
        }
        assert_eq!(lp.handle_type(id), Ok(ty), "{name}");
        let word = lp.data(id).unwrap();
        lp.set_data(id, word + 1).unwrap();
        assert_eq!(lp.data(id), Ok(word + 1));
        lp.set_data(id, word).unwrap();
        // Streams, UDP sockets and poll watchers have an fd.
        let has_fd = matches!(ty, HandleType::Tcp | HandleType::Pipe | HandleType::Udp | HandleType::Poll);
        match lp.fileno(id) {
            Ok(fd) => assert!(has_fd && fd >= 0, "{name}: fd {fd}"),
            Err(e) => assert_eq!((e, has_fd), (Error::WRONG_TYPE, false), "{name}"),
        }
        if lp.is_closing(id) {
            assert_eq!(lp.close(id, None), Err(Error::INVALID_STATE), "{name}: closing twice");
            continue;
        }
        let was_ref = lp.has_ref(id).unwrap();
        lp.unref_handle(id).unwrap();
        assert_eq!(lp.has_ref(id), Ok(false));
        lp.ref_handle(id).unwrap();
        assert_eq!(lp.has_ref(id), Ok(true));
        if !was_ref {
            lp.unref_handle(id).unwrap();
        }
        let _ = lp.is_active(id);
    }

    // Typed operations on the handles still open.
    let open = |lp: &Loop<Ev>, h: HandleId| lp.is_live(h) && !lp.is_closing(h);
    if let Some(t) = d.t.filter(|t| open(lp, t.id())) {
        lp.timer_repeat(t).unwrap();
        let due = lp.timer_due_in(t).unwrap();
        assert!(due <= ms(5), "{due:?}");
    }
    let dead = d.dead.unwrap();
    assert_eq!(lp.timer_start(dead, ms(1), ms(0), &cb.never), Err(Error::STALE_HANDLE));
    assert_eq!(lp.timer_stop(dead), Err(Error::STALE_HANDLE));
    if let Some(h) = d.h.filter(|h| open(lp, h.id())) {
        let _ = lp.is_active(h);
    }
    let streams: Vec<TcpStream> = [d.s, d.c].into_iter().flatten().filter(|s| open(lp, s.id())).collect();
    for s in streams {
        let _ = lp.is_reading(s);
        lp.write_queue_size(s).unwrap();
        assert_eq!(lp.stream_type(s), Ok(StreamType::Tcp));
        lp.tcp_getsockname(s).unwrap();
        lp.tcp_bind_addr(s).unwrap();
    }
    if let Some(l) = d.l.filter(|l| open(lp, l.id())) {
        assert_eq!(lp.accept_queue_len(l), Ok(0));
        assert!(lp.accept(l).is_err(), "nothing to accept");
        assert!(lp.accept_fd(l).is_err(), "nothing to accept");
        lp.tcp_getsockname(l).unwrap();
        let _ = lp.is_listen_stopped(l);
    }
    let pipes: Vec<PipeStream> = [d.p1, d.p2].into_iter().flatten().filter(|p| open(lp, p.id())).collect();
    for p in pipes {
        assert_eq!(lp.stream_type(p), Ok(StreamType::Pipe));
        assert_eq!(lp.pending_count(p), Ok(0));
        assert_eq!(lp.pending_type(p), Ok(None));
        let r = lp.try_write(p, b"");
        assert!(r == Ok(0) || r == Err(Error::EPIPE), "{r:?}");
        let _ = (lp.is_reading(p), lp.write_queue_size(p).unwrap());
    }
    exercise_watchers_and_requests(lp, d);

    // Scratch handles made and closed from inside the callback.
    let t = lp.timer_init().unwrap();
    lp.timer_start(t, ms(0), ms(0), &cb.never).unwrap();
    lp.close(t, None).unwrap();
    let hk = lp.hook_init(HookKind::Check).unwrap();
    lp.hook_start(hk, &OnHook::new(|_, _, _| panic!("a hook closed at once never runs"))).unwrap();
    lp.close(hk, None).unwrap();
    let sock = lp.tcp_init().unwrap();
    lp.tcp_bind(sock, "127.0.0.1:0".parse().unwrap(), 0).unwrap();
    let l = lp.listen(sock, 1, &cb.ignore_connection).unwrap();
    lp.close(l, None).unwrap();
    let (a, b) = lp.pipe_pair(false).unwrap();
    lp.write(a, b"scratch", Some(&cb.scratch_write)).unwrap();
    d.scratch_writes += 1;
    lp.close(a, None).unwrap();
    lp.close(b, None).unwrap();
    scratch_watchers_and_requests(lp, d);
}

/// [`exercise`]'s part for the poll watcher, the UDP socket, the child
/// process, and the work and file requests: every operation that does not
/// call back, on the scenario's handles and on stale ids.
fn exercise_watchers_and_requests(lp: &mut Loop<Ev>, d: &mut Ev) {
    let cb = d.cb.clone();
    // Typed operations on a closing or closed handle are refused as stale.
    let open = |lp: &Loop<Ev>, h: HandleId| lp.is_live(h) && !lp.is_closing(h);
    if let Some(pw) = d.pw {
        if open(lp, pw.id()) {
            assert_eq!(lp.fileno(pw), Ok(d.poll_end.as_raw_fd()));
            assert_eq!(lp.poll_start(pw, PollEvents::empty(), &cb.never_poll), Err(Error::EINVAL));
            if !lp.is_active(pw) {
                // Started and stopped at once: the op in flight (the socket
                // is writable) is cancelled and its completion dropped.
                lp.poll_start(pw, PollEvents::WRITABLE, &cb.never_poll).unwrap();
                assert!(lp.is_active(pw));
                lp.poll_start(pw, PollEvents::WRITABLE | PollEvents::DISCONNECT, &cb.never_poll).unwrap();
                lp.poll_stop(pw).unwrap();
                assert!(!lp.is_active(pw));
                lp.poll_stop(pw).unwrap();
            }
        } else {
            assert_eq!(lp.poll_stop(pw), Err(Error::STALE_HANDLE));
            assert_eq!(lp.poll_start(pw, PollEvents::READABLE, &cb.never_poll), Err(Error::STALE_HANDLE));
        }
    }
    if let Some(u) = d.u {
        if open(lp, u.id()) {
            assert_eq!(lp.udp_getsockname(u), Ok(d.u_addr));
            assert_eq!(lp.udp_getpeername(u), Err(Error::ENOTCONN));
            assert_eq!(lp.udp_connect(u, None), Err(Error::ENOTCONN));
            assert_eq!(lp.udp_bind(u, "127.0.0.1:0".parse().unwrap(), 0), Err(Error::EINVAL), "bound already");
            let queued = lp.udp_send_queue_count(u).unwrap();
            assert!(queued <= d.u_sends, "{queued} queued, {} sends pending", d.u_sends);
            if d.u_sends == 0 {
                assert_eq!(lp.udp_send_queue_size(u), Ok(0));
            } else {
                // Sends are in flight: a try_send would pass them.
                assert_eq!(lp.udp_try_send(u, b"x", Some(d.u_addr)), Err(Error::EAGAIN));
            }
            lp.udp_set_ttl(u, 64).unwrap();
            lp.udp_set_broadcast(u, false).unwrap();
            assert!(lp.udp_send_buffer_size(u).unwrap() > 0 && lp.udp_recv_buffer_size(u).unwrap() > 0);
            if lp.is_active(u) {
                assert_eq!(lp.udp_recv_start(u, &cb.recv_u), Err(Error::from_errno(libc::EALREADY)));
            }
        } else {
            assert_eq!(lp.udp_getsockname(u), Err(Error::STALE_HANDLE));
            assert_eq!(lp.udp_send_queue_size(u), Err(Error::STALE_HANDLE));
            assert_eq!(lp.udp_send(u, b"x", Some(d.u_addr), None), Err(Error::STALE_HANDLE));
            assert_eq!(lp.udp_recv_stop(u), Err(Error::STALE_HANDLE));
        }
    }
    if let Some(ch) = d.ch {
        if open(lp, ch.id()) {
            assert!(lp.process_pid(ch).unwrap() > 0);
            assert_eq!(lp.process_exited(ch), Ok(d.ch_exited));
            assert_eq!(lp.is_active(ch), !d.ch_exited);
            let r = lp.process_kill(ch, 0);
            if d.ch_exited {
                assert_eq!(r, Err(Error::ESRCH));
            } else {
                // Running, or exited and not yet reaped.
                assert!(r == Ok(()) || r == Err(Error::ESRCH), "{r:?}");
            }
        } else {
            assert_eq!(lp.process_pid(ch), Err(Error::STALE_HANDLE));
            assert_eq!(lp.process_exited(ch), Err(Error::STALE_HANDLE));
            assert_eq!(lp.process_kill(ch, 0), Err(Error::STALE_HANDLE));
        }
    }
    // Requests whose callback ran are stale.
    if let Some(w) = d.stale_work {
        assert_eq!(lp.cancel_work(w), Err(Error::STALE_REQUEST));
    }
    if let Some(r) = d.stale_fs {
        assert_eq!(lp.fs_cancel(r), Err(Error::STALE_REQUEST));
    }
    let _ = lp.fs_io_uring();
}

/// [`exercise`]'s scratch poll watcher, UDP socket, child, work item and
/// file request, made and closed or cancelled at once.
fn scratch_watchers_and_requests(lp: &mut Loop<Ev>, d: &mut Ev) {
    let cb = d.cb.clone();
    // A poll watcher of a writable socket, closed while its poll is in
    // flight: its callback never runs.
    assert_eq!(lp.poll_init(-1), Err(Error::EBADF));
    let sp = lp.poll_init(d.scratch_poll.0.as_raw_fd()).unwrap();
    assert!(!lp.is_active(sp));
    lp.poll_start(sp, PollEvents::READABLE | PollEvents::WRITABLE, &cb.never_poll).unwrap();
    lp.poll_start(sp, PollEvents::WRITABLE, &cb.never_poll).unwrap();
    lp.poll_stop(sp).unwrap();
    lp.poll_start(sp, PollEvents::WRITABLE, &cb.never_poll).unwrap();
    lp.close(sp, None).unwrap();
    assert_eq!(lp.poll_stop(sp), Err(Error::STALE_HANDLE));
    // A UDP socket with a send queued to itself, closed at once: the send
    // reports once (sent or cancelled).
    let su = lp.udp_init().unwrap();
    assert_eq!(lp.udp_getsockname(su), Err(Error::EBADF), "no socket yet");
    assert_eq!(lp.udp_send(su, b"x", None, None), Err(Error::from_errno(libc::EDESTADDRREQ)));
    lp.udp_bind(su, "127.0.0.1:0".parse().unwrap(), 0).unwrap();
    let to = lp.udp_getsockname(su).unwrap();
    lp.udp_send(su, b"scratch", Some(to), Some(&cb.scratch_send)).unwrap();
    d.scratch_sends += 1;
    assert_eq!((lp.udp_send_queue_count(su), lp.udp_send_queue_size(su)), (Ok(1), Ok(7)));
    lp.close(su, None).unwrap();
    assert_eq!(lp.udp_send_queue_count(su), Err(Error::STALE_HANDLE));
    // A program that does not exist: spawn fails at once, no handle.
    let before = lp.handle_count();
    let missing = ProcessOptions::new(Path::new("/nonexistent/uvring-callbacks-no-such-program"));
    assert_eq!(lp.spawn(&missing, &cb.never_exit).map(|_| ()), Err(Error::ENOENT));
    assert_eq!(lp.handle_count(), before);
    // A work item and a file stat, cancelled at once (or already started):
    // each reports once; cancelling again is EBUSY.
    let before = lp.work_in_flight();
    let w = lp
        .queue_work(
            || 7u8,
            |_, d: &mut Ev, r: Result<u8>| {
                assert!(r == Ok(7) || r == Err(Error::ECANCELED), "{r:?}");
                d.scratch_works_reported += 1;
            },
        )
        .unwrap();
    d.scratch_works += 1;
    assert_eq!(lp.work_in_flight(), before + 1);
    let r = lp.cancel_work(w);
    assert!(r == Ok(()) || r == Err(Error::EBUSY), "{r:?}");
    assert_eq!(lp.cancel_work(w), Err(Error::EBUSY));
    let f = lp
        .fs_stat("/nonexistent/uvring-callbacks-no-such-file", |_, d: &mut Ev, r: Result<FileStat>| {
            let e = r.unwrap_err();
            assert!(e == Error::ENOENT || e == Error::ECANCELED, "{e:?}");
            d.scratch_fs_reported += 1;
        })
        .unwrap();
    d.scratch_fs += 1;
    let r = lp.fs_cancel(f);
    assert!(r == Ok(()) || r == Err(Error::EBUSY), "{r:?}");
    assert_eq!(lp.fs_cancel(f), Err(Error::EBUSY));
}

fn raise(signum: i32) {
    // SAFETY: raise has no memory-safety preconditions; the signal is
    // watched (else its default action would end the process).
    assert_eq!(unsafe { libc::raise(signum) }, 0);
}

/// Closes the next handle of the final chain, or ends the scenario.
fn close_next(lp: &mut Loop<Ev>, d: &mut Ev) {
    let cb = d.cb.clone();
    match d.close_order.pop_front() {
        Some(h) => {
            lp.close(h, Some(&cb.close)).unwrap();
            assert!(lp.is_closing(h) && !lp.is_active(h));
            assert_eq!(lp.close(h, None), Err(Error::INVALID_STATE));
        }
        None => d.done = true,
    }
}

fn on_connection(lp: &mut Loop<Ev>, d: &mut Ev, l: TcpListener, st: Result<()>) {
    st.unwrap();
    d.log("connection");
    let cb = d.cb.clone();
    let s = lp.accept(l).unwrap();
    d.s = Some(s);
    d.name(s, "S", HandleType::Tcp);
    assert_eq!(lp.accept(l), Err(Error::EAGAIN));
    assert_eq!(lp.tcp_getpeername(s).unwrap(), d.peer.as_ref().unwrap().local_addr().unwrap());
    lp.tcp_nodelay(s, true).unwrap();
    lp.tcp_keepalive(s, Some(Duration::from_secs(1))).unwrap();
    lp.tcp_keepalive(s, None).unwrap();
    lp.read_start(s, &cb.read_s).unwrap();
    assert!(lp.is_reading(s));
    exercise(lp, d);
    lp.listen_stop(l, Some(&cb.listen_stopped)).unwrap();
    assert!(lp.is_listen_stopped(l));
    assert_eq!(lp.listen_stop(l, None), Err(Error::INVALID_STATE));
}

fn on_listen_stopped(lp: &mut Loop<Ev>, d: &mut Ev, l: TcpListener, st: Result<()>) {
    st.unwrap();
    d.log("listen stopped");
    assert!(lp.is_listen_stopped(l) && !lp.is_active(l));
    exercise(lp, d);
    // The next step: the peer sends.
    d.peer.as_mut().unwrap().write_all(b"ping").unwrap();
}

fn on_read_s(lp: &mut Loop<Ev>, d: &mut Ev, s: TcpStream, res: Result<&[u8]>) {
    let cb = d.cb.clone();
    match res {
        Ok(bytes) => {
            d.log(format!("read S {}", String::from_utf8_lossy(bytes)));
            exercise(lp, d);
            lp.write(s, b"pong", Some(&cb.write_s)).unwrap();
            lp.write(s, b"", Some(&cb.write_s)).unwrap();
            lp.read_stop(s).unwrap();
            assert!(!lp.is_reading(s));
        }
        Err(e) if e == Error::ECONNRESET => {
            d.log("read S reset");
            if lp.is_reading(s) {
                lp.read_stop(s).unwrap();
            }
            exercise(lp, d);
            let e = lp.try_write(s, b"z").unwrap_err();
            assert!(e == Error::EPIPE || e == Error::ECONNRESET, "try_write on a reset stream: {e:?}");
            // The write fails, but not from inside `write`: it returns Ok
            // and its callback reports the error from the loop.
            d.log("write S call");
            lp.write(s, b"after reset", Some(&cb.write_s_fail)).unwrap();
            d.log("write S returned");
        }
        Err(e) => panic!("read S: {e:?}"),
    }
}

fn on_write_s(lp: &mut Loop<Ev>, d: &mut Ev, _: TcpStream, st: Result<()>) {
    st.unwrap();
    d.writes_s += 1;
    d.log(format!("write S ok {}", d.writes_s));
    exercise(lp, d);
    if d.writes_s == 2 {
        let cb = d.cb.clone();
        lp.timer_start(d.t.unwrap(), ms(1), ms(0), &cb.timer).unwrap();
        assert!(lp.is_active(d.t.unwrap()));
    }
}

fn on_timer(lp: &mut Loop<Ev>, d: &mut Ev, t: Timer) {
    d.timer_fires += 1;
    d.log(format!("timer {}", d.timer_fires));
    exercise(lp, d);
    let cb = d.cb.clone();
    if d.timer_fires == 1 {
        assert_eq!(lp.timer_repeat(t), Ok(Duration::ZERO));
        assert!(!lp.is_active(t), "a one-shot timer is inactive in its callback");
        lp.timer_set_repeat(t, ms(2)).unwrap();
        lp.timer_again(t).unwrap();
        assert!(lp.is_active(t));
    } else {
        assert_eq!(lp.timer_repeat(t), Ok(ms(2)));
        lp.timer_stop(t).unwrap();
        assert!(!lp.is_active(t));
        assert_eq!(lp.timer_due_in(t), Ok(Duration::ZERO));
        lp.hook_start(d.h.unwrap(), &cb.hook).unwrap();
    }
}

fn on_hook(lp: &mut Loop<Ev>, d: &mut Ev, h: Hook) {
    d.log("hook");
    lp.hook_stop(h).unwrap();
    assert!(!lp.is_active(h));
    exercise(lp, d);
    d.sender.as_ref().unwrap().send();
}

fn on_async(lp: &mut Loop<Ev>, d: &mut Ev, _: Async) {
    d.log("async");
    exercise(lp, d);
    let cb = d.cb.clone();
    let sig = lp.signal_start(libc::SIGUSR1, &cb.signal).unwrap();
    d.sig = Some(sig);
    d.name(sig, "SIG", HandleType::Signal);
    raise(libc::SIGUSR1);
}

fn on_signal(lp: &mut Loop<Ev>, d: &mut Ev, sig: Signal, signum: i32) {
    assert_eq!(signum, libc::SIGUSR1);
    d.log("signal");
    lp.signal_stop(sig).unwrap();
    assert!(!lp.is_active(sig));
    exercise(lp, d);
    // The next step: the poll watcher's fd turns readable.
    let cb = d.cb.clone();
    d.poll_peer.write_all(b"!").unwrap();
    let pw = d.pw.unwrap();
    lp.poll_start(pw, PollEvents::READABLE, &cb.poll).unwrap();
    assert!(lp.is_active(pw));
}

fn on_poll(lp: &mut Loop<Ev>, d: &mut Ev, pw: Poll, res: Result<PollEvents>) {
    let events = res.unwrap();
    assert_eq!(events, PollEvents::READABLE, "only what was asked for");
    d.log(format!("poll PW {events:?}"));
    // The loop never reads the fd: the byte is still there.
    let mut buf = [0u8; 8];
    assert_eq!((&d.poll_end).read(&mut buf).unwrap(), 1);
    lp.poll_stop(pw).unwrap();
    assert!(!lp.is_active(pw));
    // The next step: a child that exits with 3 (made before `exercise`,
    // which then sees it running).
    let cb = d.cb.clone();
    let args = [OsStr::new("-c"), OsStr::new("exit 3")];
    let opts = ProcessOptions::new(Path::new("/bin/sh")).args(&args);
    let ch = lp.spawn(&opts, &cb.exit).unwrap();
    d.ch = Some(ch);
    d.name(ch, "CH", HandleType::Process);
    assert!(lp.is_active(ch));
    exercise(lp, d);
}

fn on_exit(lp: &mut Loop<Ev>, d: &mut Ev, ch: Process, status: i64, signal: i32) {
    assert_eq!((status, signal), (3, 0));
    d.ch_exited = true;
    d.log(format!("exit CH {status}"));
    assert_eq!(lp.process_exited(ch), Ok(true));
    assert!(!lp.is_active(ch), "an exited child's handle is inactive in its exit callback");
    assert_eq!(lp.process_kill(ch, 0), Err(Error::ESRCH));
    exercise(lp, d);
    let cb = d.cb.clone();
    lp.close(ch, Some(&cb.close)).unwrap();
    assert_eq!(lp.process_pid(ch), Err(Error::STALE_HANDLE), "closing");
}

/// The UDP step: two sends to itself, the first too big for a datagram.
/// Neither calls back from inside `udp_send`; their callbacks come in send
/// order.
fn start_udp_sends(lp: &mut Loop<Ev>, d: &mut Ev) {
    let cb = d.cb.clone();
    let (u, to) = (d.u.unwrap(), d.u_addr);
    d.log("send U call");
    lp.udp_send(u, &[0u8; 70_000], Some(to), Some(&cb.send_u_fail)).unwrap();
    lp.udp_send(u, b"dgram", Some(to), Some(&cb.send_u)).unwrap();
    d.log("send U returned");
    d.u_sends = 2;
    assert_eq!((lp.udp_send_queue_count(u), lp.udp_send_queue_size(u)), (Ok(2), Ok(70_005)));
}

fn on_send_u_fail(lp: &mut Loop<Ev>, d: &mut Ev, _: Udp, st: Result<()>) {
    assert_eq!(st, Err(Error::EMSGSIZE));
    d.u_sends -= 1;
    d.log("send U failed");
    exercise(lp, d);
}

fn on_send_u(lp: &mut Loop<Ev>, d: &mut Ev, u: Udp, st: Result<()>) {
    st.unwrap();
    d.u_sends -= 1;
    d.log("send U ok");
    assert_eq!((lp.udp_send_queue_count(u), lp.udp_send_queue_size(u)), (Ok(0), Ok(0)));
    exercise(lp, d);
    // The next step: receive the datagram, waiting in the socket.
    let cb = d.cb.clone();
    lp.udp_recv_start(u, &cb.recv_u).unwrap();
    assert!(lp.is_active(u));
}

fn on_recv_u(lp: &mut Loop<Ev>, d: &mut Ev, u: Udp, res: Result<Datagram<'_>>) {
    let dg = res.unwrap();
    assert_eq!((dg.addr, dg.flags), (Some(d.u_addr), RecvFlags::empty()));
    d.log(format!("recv U {}", String::from_utf8_lossy(dg.data)));
    lp.udp_recv_stop(u).unwrap();
    assert!(!lp.is_active(u));
    exercise(lp, d);
    // The next step: a work item.
    let w = lp.queue_work(|| 6 * 7, on_work).unwrap();
    d.work = Some(w);
}

fn on_work(lp: &mut Loop<Ev>, d: &mut Ev, res: Result<i32>) {
    let w = d.work.take().unwrap();
    d.log(format!("work {}", res.unwrap()));
    assert_eq!(lp.cancel_work(w), Err(Error::STALE_REQUEST), "stale in its own callback");
    d.stale_work = Some(w);
    exercise(lp, d);
    // The next step: file operations.
    let path = d.path.clone();
    d.fs_req = Some(lp.fs_stat(path, on_stat).unwrap());
}

/// Marks the step's file request done (stale from now on).
fn fs_done(lp: &mut Loop<Ev>, d: &mut Ev) {
    let r = d.fs_req.take().unwrap();
    assert_eq!(lp.fs_cancel(r), Err(Error::STALE_REQUEST), "stale in its own callback");
    d.stale_fs = Some(r);
}

fn on_stat(lp: &mut Loop<Ev>, d: &mut Ev, res: Result<FileStat>) {
    let st = res.unwrap();
    assert!(st.is_file());
    d.log(format!("stat F {}", st.size));
    fs_done(lp, d);
    exercise(lp, d);
    let path = d.path.clone();
    d.fs_req = Some(lp.fs_open(path, OpenFlags::READ_ONLY, 0, on_open).unwrap());
}

fn on_open(lp: &mut Loop<Ev>, d: &mut Ev, res: Result<File>) {
    let file = res.unwrap();
    d.log("open F");
    fs_done(lp, d);
    exercise(lp, d);
    d.fs_req = Some(lp.fs_read(&file, vec![0u8; 16], Some(0), on_read_f).unwrap());
    d.file = Some(file);
}

fn on_read_f(lp: &mut Loop<Ev>, d: &mut Ev, res: Result<usize>, buf: Vec<u8>) {
    let n = res.unwrap();
    assert_eq!(buf.len(), 16, "the buffer comes back whole");
    d.log(format!("read F {}", String::from_utf8_lossy(&buf[..n])));
    fs_done(lp, d);
    exercise(lp, d);
    let file = d.file.take().unwrap();
    d.fs_req = Some(lp.fs_close(file, on_fs_close).unwrap());
}

fn on_fs_close(lp: &mut Loop<Ev>, d: &mut Ev, res: Result<()>) {
    res.unwrap();
    d.log("fs close F");
    fs_done(lp, d);
    exercise(lp, d);
    // The next step: a connection that is refused.
    let cb = d.cb.clone();
    let r = lp.tcp_init().unwrap();
    let r = lp.tcp_connect(r, d.refused, &cb.connect_r).unwrap();
    d.name(r, "R", HandleType::Tcp);
}

fn on_connect_r(lp: &mut Loop<Ev>, d: &mut Ev, r: TcpStream, st: Result<()>) {
    assert_eq!(st, Err(Error::ECONNREFUSED));
    d.log("connect R refused");
    exercise(lp, d);
    let cb = d.cb.clone();
    d.log("write R call");
    lp.write(r, b"never", Some(&cb.write_r)).unwrap();
    d.log("write R returned");
}

fn on_write_r(lp: &mut Loop<Ev>, d: &mut Ev, r: TcpStream, st: Result<()>) {
    assert!(st.is_err(), "a write on a refused connection fails: {st:?}");
    d.log("write R failed");
    exercise(lp, d);
    let cb = d.cb.clone();
    lp.close(r, Some(&cb.close)).unwrap();
}

fn on_connect_c(lp: &mut Loop<Ev>, d: &mut Ev, c: TcpStream, st: Result<()>) {
    st.unwrap();
    d.log("connect C");
    d.c = Some(c);
    let (peer2, _) = d.stdl.accept().unwrap();
    peer2.set_read_timeout(Some(LIMIT)).unwrap();
    assert_eq!(lp.tcp_getpeername(c).unwrap(), d.stdl.local_addr().unwrap());
    assert_eq!(lp.tcp_getsockname(c).unwrap(), peer2.peer_addr().unwrap());
    d.peer2 = Some(peer2);
    exercise(lp, d);
    let cb = d.cb.clone();
    lp.write(c, b"abc", Some(&cb.write_c)).unwrap();
    lp.write(c, b"def", Some(&cb.write_c)).unwrap();
}

fn on_write_c(lp: &mut Loop<Ev>, d: &mut Ev, c: TcpStream, st: Result<()>) {
    st.unwrap();
    d.writes_c += 1;
    d.log(format!("write C ok {}", d.writes_c));
    exercise(lp, d);
    if d.writes_c == 2 {
        let cb = d.cb.clone();
        lp.close_reset(c, Some(&cb.close)).unwrap();
        assert!(lp.is_closing(c));
        assert_eq!(lp.close(c, None), Err(Error::INVALID_STATE));
        assert!(lp.write(c, b"x", None).is_err(), "no write on a closing stream");
    }
}

fn on_write_p1(lp: &mut Loop<Ev>, d: &mut Ev, _: PipeStream, st: Result<()>) {
    st.unwrap();
    d.log("write P1 ok");
    exercise(lp, d);
}

fn on_shutdown_p1(lp: &mut Loop<Ev>, d: &mut Ev, _: PipeStream, st: Result<()>) {
    st.unwrap();
    d.log("shutdown P1 ok");
    exercise(lp, d);
    let cb = d.cb.clone();
    lp.read_start(d.p2.unwrap(), &cb.read_p2).unwrap();
}

fn on_read_p2(lp: &mut Loop<Ev>, d: &mut Ev, p2: PipeStream, res: Result<&[u8]>) {
    match res {
        Ok(bytes) => {
            d.log(format!("read P2 {}", String::from_utf8_lossy(bytes)));
            exercise(lp, d);
        }
        Err(e) => {
            assert_eq!(e, Error::EOF);
            d.log("read P2 eof");
            assert!(!lp.is_reading(p2), "reading stops at EOF");
            exercise(lp, d);
            // The next step: the peer of S resets the connection.
            let peer = d.peer.take().unwrap();
            linger_zero(&peer);
            drop(peer);
            let cb = d.cb.clone();
            lp.read_start(d.s.unwrap(), &cb.read_s).unwrap();
        }
    }
}

fn on_write_s_fail(lp: &mut Loop<Ev>, d: &mut Ev, s: TcpStream, st: Result<()>) {
    let e = st.unwrap_err();
    assert!(e == Error::EPIPE || e == Error::ECONNRESET, "write on a reset stream: {e:?}");
    d.log("write S failed");
    exercise(lp, d);
    // The failure is known now: a further write is refused at once.
    assert!(lp.write(s, b"again", None).is_err());
    let cb = d.cb.clone();
    lp.shutdown(s, Some(&cb.shutdown_s)).unwrap();
}

fn on_shutdown_s(lp: &mut Loop<Ev>, d: &mut Ev, s: TcpStream, st: Result<()>) {
    assert!(st.is_err(), "shutdown after a failed write: {st:?}");
    d.log("shutdown S failed");
    exercise(lp, d);
    assert_eq!(lp.close_reset(s, None), Err(Error::EINVAL), "no reset after a shutdown");
    // The final chain: each close callback closes the next handle.
    let order = [
        d.s.unwrap().id(),
        d.p1.unwrap().id(),
        d.p2.unwrap().id(),
        d.l.unwrap().id(),
        d.t.unwrap().id(),
        d.h.unwrap().id(),
        d.names.iter().find(|(_, n, _)| *n == "A").unwrap().0,
        d.sig.unwrap().id(),
        d.pw.unwrap().id(),
        d.u.unwrap().id(),
    ];
    d.close_order.extend(order);
    close_next(lp, d);
}

fn on_close(lp: &mut Loop<Ev>, d: &mut Ev, h: HandleId) {
    let name = d.name_of(h);
    d.log(format!("close {name}"));
    assert!(!lp.is_live(h), "closed before its close callback");
    exercise(lp, d);
    let cb = d.cb.clone();
    match name {
        "CH" => start_udp_sends(lp, d),
        "R" => {
            // The next step: a connection that succeeds.
            let c = lp.tcp_init().unwrap();
            let c = lp.tcp_connect(c, d.stdl.local_addr().unwrap(), &cb.connect_c).unwrap();
            d.name(c, "C", HandleType::Tcp);
        }
        "C" => {
            // close_reset sent a reset after the data.
            let mut peer2 = d.peer2.take().unwrap();
            let mut got = Vec::new();
            let mut buf = [0u8; 64];
            let end = loop {
                match peer2.read(&mut buf) {
                    Ok(0) => break Ok(()),
                    Ok(n) => got.extend_from_slice(&buf[..n]),
                    Err(e) => break Err(e.kind()),
                }
            };
            assert!(b"abcdef".starts_with(&got), "{got:?}");
            assert_eq!(end, Err(std::io::ErrorKind::ConnectionReset), "close_reset resets");
            // The next step: a pipe writes and shuts down.
            let p1 = d.p1.unwrap();
            lp.write(p1, b"p", Some(&cb.write_p1)).unwrap();
            lp.shutdown(p1, Some(&cb.shutdown_p1)).unwrap();
            assert_eq!(lp.write(p1, b"x", None), Err(Error::EPIPE), "write after shutdown");
            assert_eq!(lp.shutdown(p1, None), Err(Error::ENOTCONN), "second shutdown");
            assert!(lp.try_write(p1, b"y").is_err());
        }
        _ => close_next(lp, d),
    }
}

/// Sets SO_LINGER {on, 0}: closing the socket then sends RST.
fn linger_zero(s: &std::net::TcpStream) {
    use std::os::fd::AsRawFd;
    let l = libc::linger { l_onoff: 1, l_linger: 0 };
    // SAFETY: `l` is a valid linger struct for the duration of the call; the
    // fd is open (borrowed from `s`).
    let res = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&l as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    assert_eq!(res, 0);
}

fn every_operation_from_every_callback(lp: &mut Loop<Ev>) {
    let cb = Rc::new(Cbs {
        connection: OnConnection::new(on_connection),
        listen_stopped: OnListenStop::new(on_listen_stopped),
        read_s: OnRead::new(on_read_s),
        write_s: OnWrite::new(on_write_s),
        write_s_fail: OnWrite::new(on_write_s_fail),
        shutdown_s: OnShutdown::new(on_shutdown_s),
        timer: OnTimer::new(on_timer),
        never: OnTimer::new(|_, _, _| panic!("a timer closed or stale never fires")),
        hook: OnHook::new(on_hook),
        signal: OnSignal::new(on_signal),
        connect_r: OnConnect::new(on_connect_r),
        write_r: OnWrite::new(on_write_r),
        connect_c: OnConnect::new(on_connect_c),
        write_c: OnWrite::new(on_write_c),
        write_p1: OnWrite::new(on_write_p1),
        shutdown_p1: OnShutdown::new(on_shutdown_p1),
        read_p2: OnRead::new(on_read_p2),
        close: OnClose::new(on_close),
        scratch_write: OnWrite::new(|_, d: &mut Ev, _, _| d.scratch_reported += 1),
        ignore_connection: OnConnection::new(|_, _, _, _| {}),
        poll: OnPoll::new(on_poll),
        never_poll: OnPoll::new(|_, _, _, res| panic!("a poll watcher stopped or closed never reports: {res:?}")),
        exit: OnExit::new(on_exit),
        never_exit: OnExit::new(|_, _, _, _, _| panic!("a spawn that failed never exits")),
        send_u: OnSend::new(on_send_u),
        send_u_fail: OnSend::new(on_send_u_fail),
        recv_u: OnRecv::new(on_recv_u),
        scratch_send: OnSend::new(|_, d: &mut Ev, _, st| {
            assert!(st == Ok(()) || st == Err(Error::ECANCELED), "{st:?}");
            d.scratch_sends_reported += 1;
        }),
    });
    let refused = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let (poll_end, poll_peer) = UnixStream::pair().unwrap();
    poll_end.set_nonblocking(true).unwrap();
    let scratch_poll = UnixStream::pair().unwrap();
    let path = std::env::temp_dir().join(format!("uvring-callbacks-{}-{}", std::process::id(), lp.backend()));
    std::fs::write(&path, b"hello").unwrap();
    let mut d = Ev {
        log: vec![],
        done: false,
        deadline: std::time::Instant::now() + LIMIT,
        names: vec![],
        cb: cb.clone(),
        l: None,
        s: None,
        c: None,
        p1: None,
        p2: None,
        t: None,
        h: None,
        sig: None,
        dead: None,
        sender: None,
        peer: None,
        stdl: std::net::TcpListener::bind("127.0.0.1:0").unwrap(),
        peer2: None,
        refused,
        timer_fires: 0,
        writes_s: 0,
        writes_c: 0,
        close_order: Default::default(),
        exercised: 0,
        scratch_writes: 0,
        scratch_reported: 0,
        pw: None,
        poll_end,
        poll_peer,
        scratch_poll,
        u: None,
        u_addr: refused,
        u_sends: 0,
        ch: None,
        ch_exited: false,
        work: None,
        stale_work: None,
        fs_req: None,
        stale_fs: None,
        path,
        file: None,
        scratch_sends: 0,
        scratch_sends_reported: 0,
        scratch_works: 0,
        scratch_works_reported: 0,
        scratch_fs: 0,
        scratch_fs_reported: 0,
    };
    let dead = lp.timer_init().unwrap();
    lp.close(dead, None).unwrap();
    lp.run(RunMode::NoWait, &mut d).unwrap();
    d.dead = Some(dead);
    d.name(dead, "dead", HandleType::Timer);
    let sock = lp.tcp_init().unwrap();
    lp.tcp_bind(sock, "127.0.0.1:0".parse().unwrap(), 0).unwrap();
    let l = lp.listen(sock, 16, &cb.connection).unwrap();
    d.l = Some(l);
    d.name(l, "L", HandleType::Tcp);
    let t = lp.timer_init().unwrap();
    d.t = Some(t);
    d.name(t, "T", HandleType::Timer);
    let h = lp.hook_init(HookKind::Idle).unwrap();
    d.h = Some(h);
    d.name(h, "H", HandleType::Hook);
    let (a, sender) = lp.async_init(&OnAsync::new(on_async)).unwrap();
    d.sender = Some(sender);
    d.name(a, "A", HandleType::Async);
    let (p1, p2) = lp.pipe_pair(false).unwrap();
    d.p1 = Some(p1);
    d.p2 = Some(p2);
    d.name(p1, "P1", HandleType::Pipe);
    d.name(p2, "P2", HandleType::Pipe);
    let pw = lp.poll_init(d.poll_end.as_raw_fd()).unwrap();
    d.pw = Some(pw);
    d.name(pw, "PW", HandleType::Poll);
    let u = lp.udp_init().unwrap();
    lp.udp_bind(u, "127.0.0.1:0".parse().unwrap(), 0).unwrap();
    d.u_addr = lp.udp_getsockname(u).unwrap();
    d.u = Some(u);
    d.name(u, "U", HandleType::Udp);
    // A watchdog that keeps no handle alive but bounds each poll.
    let watchdog = lp.timer_init().unwrap();
    lp.timer_start(
        watchdog,
        ms(50),
        ms(50),
        &OnTimer::new(|_, d: &mut Ev, _| assert!(std::time::Instant::now() < d.deadline, "timed out: {:?}", d.log)),
    )
    .unwrap();
    lp.unref_handle(watchdog).unwrap();

    // The first step: a connection for the listener.
    let addr = lp.tcp_getsockname(l).unwrap();
    d.peer = Some(std::net::TcpStream::connect(addr).unwrap());
    while !d.done {
        assert!(lp.alive(), "the chain stalled after {:?}", d.log);
        lp.run(RunMode::Once, &mut d).unwrap();
    }
    lp.close(watchdog, None).unwrap();
    assert!(!lp.run(RunMode::Default, &mut d).unwrap());
    assert_eq!(lp.handle_count(), 0);
    assert_eq!(
        d.log,
        [
            "connection",
            "listen stopped",
            "read S ping",
            "write S ok 1",
            "write S ok 2",
            "timer 1",
            "timer 2",
            "hook",
            "async",
            "signal",
            "poll PW PollEvents(READABLE)",
            "exit CH 3",
            "close CH",
            "send U call",
            "send U returned",
            "send U failed",
            "send U ok",
            "recv U dgram",
            "work 42",
            "stat F 5",
            "open F",
            "read F hello",
            "fs close F",
            "connect R refused",
            "write R call",
            "write R returned",
            "write R failed",
            "close R",
            "connect C",
            "write C ok 1",
            "write C ok 2",
            "close C",
            "write P1 ok",
            "shutdown P1 ok",
            "read P2 p",
            "read P2 eof",
            "read S reset",
            "write S call",
            "write S returned",
            "write S failed",
            "shutdown S failed",
            "close S",
            "close P1",
            "close P2",
            "close L",
            "close T",
            "close H",
            "close A",
            "close SIG",
            "close PW",
            "close U",
        ]
    );
    assert_eq!(d.log.len(), 51);
    let callbacks = d.log.iter().filter(|e| !e.ends_with(" call") && !e.ends_with(" returned")).count();
    assert_eq!(d.exercised, callbacks, "every callback exercised the API");
    assert_eq!(d.scratch_reported, d.scratch_writes, "every scratch write reported exactly once");
    assert_eq!(d.scratch_sends_reported, d.scratch_sends, "every scratch send reported exactly once");
    assert_eq!(d.scratch_works_reported, d.scratch_works, "every scratch work item reported exactly once");
    assert_eq!(d.scratch_fs_reported, d.scratch_fs, "every scratch file request reported exactly once");
    assert_eq!(lp.work_in_flight(), 0);
    assert!(d.file.is_none() && d.work.is_none() && d.fs_req.is_none());
    // The poll watchers are closed: the fds the loop never owned are still
    // open and usable (the byte written now is read back).
    d.poll_peer.write_all(b"?").unwrap();
    let mut buf = [0u8; 8];
    d.poll_end.set_nonblocking(false).unwrap();
    assert_eq!(d.poll_end.read(&mut buf).unwrap(), 1);
    std::fs::remove_file(&d.path).unwrap();
}

both_backends! {
    /// Every callback kind calls every operation (see [`exercise`]) and
    /// starts the next step; the event log in the loop's data shows every
    /// callback exactly once, in order, on both backends.
    fn every_operation_from_every_callback(lp: Ev) {
        super::every_operation_from_every_callback(lp);
    }
}
