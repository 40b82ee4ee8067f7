//! TCP streams: libuv's shutdown, write-queue, try-write, writealot,
//! read stop/start, RST and close/accept scenarios, plus connect, bind and
//! socket options.

use std::cell::{Cell, RefCell};
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::time::Duration;
use uvring::*;
use uvring_tests::{both_backends, bump, count, listener, run_on_with, run_until};

const LIMIT: Duration = Duration::from_secs(20);

/// Milliseconds.
fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// A TCP stream connecting to `addr`.
fn connect(lp: &mut Loop, addr: SocketAddr, on_connect: &OnConnect<(), TcpStream>) -> TcpStream {
    let s = lp.tcp_init().unwrap();
    lp.tcp_connect(s, addr, on_connect).unwrap()
}

/// An `on_connection` that accepts every connection and starts reading with
/// `on_read`; accepted ids go to `into`.
fn accept_and_read(on_read: OnRead<(), TcpStream>, into: Rc<RefCell<Vec<TcpStream>>>) -> OnConnection<(), TcpListener> {
    OnConnection::new(move |lp, _, server, st| {
        st.unwrap();
        while let Ok(c) = lp.accept(server) {
            lp.read_start(c, &on_read).unwrap();
            into.borrow_mut().push(c);
        }
    })
}

/// An `on_read` that echoes what it reads, shuts down at EOF and closes
/// after the shutdown (and on errors).
fn echo_reader() -> OnRead<(), TcpStream> {
    let on_shutdown = OnShutdown::new(|lp, _, s: TcpStream, _| {
        let _ = lp.close(s, None);
    });
    OnRead::new(move |lp, _, s, res| match res {
        Ok(bytes) => lp.write(s, bytes, None).unwrap(),
        Err(e) if e == Error::EOF => {
            if lp.shutdown(s, Some(&on_shutdown)).is_err() {
                lp.close(s, None).unwrap();
            }
        }
        Err(_) => lp.close(s, None).unwrap(),
    })
}

/// The byte at stream offset `i` of the writealot pattern (no short period,
/// so lost, doubled or reordered chunks show).
fn pattern(i: u64) -> u8 {
    (i.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 56) as u8 ^ (i >> 20) as u8
}

/// Sets SO_LINGER {on, 0}: closing the socket then sends RST.
fn linger_zero(s: &std::net::TcpStream) {
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

both_backends! {
    /// shutdown_twice: the second shutdown fails; the first completes.
    fn shutdown_twice(lp) {
        let accepted = Rc::new(RefCell::new(vec![]));
        let (server, addr) = listener(lp, &accept_and_read(echo_reader(), accepted.clone()));
        let shut = count();
        let on_shutdown = {
            let shut = shut.clone();
            OnShutdown::new(move |lp, _, s, st| {
                st.unwrap();
                bump(&shut);
                lp.close(s, None).unwrap();
            })
        };
        let on_connect = OnConnect::new(move |lp, _, s, st| {
            st.unwrap();
            lp.shutdown(s, Some(&on_shutdown)).unwrap();
            assert!(lp.shutdown(s, Some(&on_shutdown)).is_err(), "second shutdown fails");
        });
        let client = connect(lp, addr, &on_connect);
        run_until(lp, LIMIT, |lp| shut.get() == 1 && !lp.is_live(client) && accepted.borrow().iter().all(|c| !lp.is_live(*c)));
        lp.close(server, None).unwrap();
        assert!(!lp.run(RunMode::Default, &mut ()).unwrap());
        assert_eq!(shut.get(), 1);
    }

    /// shutdown_close: closing right after shutdown still runs the shutdown
    /// callback, exactly once (success or ECANCELED), before the close
    /// callback.
    fn shutdown_close(lp) {
        let accepted = Rc::new(RefCell::new(vec![]));
        let (server, addr) = listener(lp, &accept_and_read(echo_reader(), accepted.clone()));
        let log = Rc::new(RefCell::new(Vec::<&'static str>::new()));
        let on_shutdown = {
            let log = log.clone();
            OnShutdown::new(move |_, _, _, st| {
                assert!(st == Ok(()) || st == Err(Error::ECANCELED), "shutdown status {st:?}");
                log.borrow_mut().push("shutdown");
            })
        };
        let on_close = {
            let log = log.clone();
            OnClose::new(move |_, _, _| log.borrow_mut().push("close"))
        };
        let on_connect = OnConnect::new(move |lp, _, s, st| {
            st.unwrap();
            lp.shutdown(s, Some(&on_shutdown)).unwrap();
            lp.close(s, Some(&on_close)).unwrap();
        });
        let client = connect(lp, addr, &on_connect);
        run_until(lp, LIMIT, |lp| !lp.is_live(client) && accepted.borrow().iter().all(|c| !lp.is_live(*c)) && !accepted.borrow().is_empty());
        lp.close(server, None).unwrap();
        assert!(!lp.run(RunMode::Default, &mut ()).unwrap());
        assert_eq!(*log.borrow(), ["shutdown", "close"]);
    }

    /// shutdown_close with a write queued: the write and the shutdown each
    /// report once.
    fn shutdown_close_with_write(lp) {
        let accepted = Rc::new(RefCell::new(vec![]));
        let (server, addr) = listener(lp, &accept_and_read(echo_reader(), accepted.clone()));
        let (writes, shuts) = (count(), count());
        let on_write = {
            let writes = writes.clone();
            OnWrite::new(move |_, _, _, st| {
                assert!(st == Ok(()) || st == Err(Error::ECANCELED), "write status {st:?}");
                bump(&writes);
            })
        };
        let on_shutdown = {
            let shuts = shuts.clone();
            OnShutdown::new(move |_, _, _, st| {
                assert!(st == Ok(()) || st == Err(Error::ECANCELED), "shutdown status {st:?}");
                bump(&shuts);
            })
        };
        let on_connect = OnConnect::new(move |lp, _, s, st| {
            st.unwrap();
            lp.write(s, &[7u8; 100_000], Some(&on_write)).unwrap();
            lp.shutdown(s, Some(&on_shutdown)).unwrap();
            lp.close(s, None).unwrap();
        });
        let client = connect(lp, addr, &on_connect);
        run_until(lp, LIMIT, |lp| !lp.is_live(client));
        run_until(lp, LIMIT, |lp| !accepted.borrow().is_empty() && accepted.borrow().iter().all(|c| !lp.is_live(*c)));
        lp.close(server, None).unwrap();
        assert!(!lp.run(RunMode::Default, &mut ()).unwrap());
        assert_eq!((writes.get(), shuts.get()), (1, 1));
    }

    /// shutdown_eof: EOF from the peer does not close the handle: it stays
    /// live, and can still write (the peer reads it) and shut down.
    fn shutdown_eof(lp) {
        let got = Rc::new(RefCell::new(Vec::new()));
        let eof_seen = count();
        let on_shutdown = OnShutdown::new(|lp, _, s, st| {
            st.unwrap();
            lp.close(s, None).unwrap();
        });
        let on_read = {
            let (got, eof_seen) = (got.clone(), eof_seen.clone());
            OnRead::new(move |lp, _, s, res| match res {
                Ok(bytes) => got.borrow_mut().extend_from_slice(bytes),
                Err(e) if e == Error::EOF => {
                    bump(&eof_seen);
                    assert!(lp.is_live(s) && !lp.is_closing(s), "EOF does not close the handle");
                    assert!(!lp.is_reading(s), "reading stops at EOF");
                    lp.write(s, b"after-eof", None).unwrap();
                    lp.shutdown(s, Some(&on_shutdown)).unwrap();
                }
                Err(e) => panic!("read error {e:?}"),
            })
        };
        let accepted = Rc::new(RefCell::new(vec![]));
        let (server, addr) = listener(lp, &accept_and_read(on_read, accepted.clone()));
        let peer = std::thread::spawn(move || {
            let mut s = std::net::TcpStream::connect(addr).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            s.write_all(b"hello").unwrap();
            s.shutdown(std::net::Shutdown::Write).unwrap();
            let mut back = Vec::new();
            s.read_to_end(&mut back).unwrap();
            back
        });
        run_until(lp, LIMIT, |lp| !accepted.borrow().is_empty() && !lp.is_live(accepted.borrow()[0]));
        lp.close(server, None).unwrap();
        assert!(!lp.run(RunMode::Default, &mut ()).unwrap());
        assert_eq!(peer.join().unwrap(), b"after-eof");
        assert_eq!(*got.borrow(), b"hello");
        assert_eq!(eof_seen.get(), 1);
    }

    /// tcp_write_queue_order: 10,000 writes of 1 KiB to a peer that never
    /// reads, closed after 1 s: every write reports exactly once, in the
    /// order queued, the completed ones before the cancelled ones.
    fn tcp_write_queue_order(lp) {
        const WRITES: usize = 10_000;
        let accepted = Rc::new(RefCell::new(Vec::<TcpStream>::new()));
        let acc = accepted.clone();
        let (server, addr) = listener(lp, &OnConnection::new(move |lp, _, srv, st| {
            st.unwrap();
            // Accept, never read.
            acc.borrow_mut().push(lp.accept(srv).unwrap());
        }));
        let log = Rc::new(RefCell::new(Vec::<(usize, Result<()>)>::with_capacity(WRITES)));
        let on_writes: Vec<OnWrite<(), TcpStream>> = (0..WRITES)
            .map(|i| {
                let log = log.clone();
                OnWrite::new(move |_, _, _, st| log.borrow_mut().push((i, st)))
            })
            .collect();
        let timer = lp.timer_init().unwrap();
        let chunk = [0x5au8; 1024];
        let on_connect = OnConnect::new(move |lp, _, s, st| {
            st.unwrap();
            for cb in &on_writes {
                lp.write(s, &chunk, Some(cb)).unwrap();
            }
        });
        let client = connect(lp, addr, &on_connect);
        let on_timer = {
            let accepted = accepted.clone();
            OnTimer::new(move |lp, _, t| {
                lp.close(t, None).unwrap();
                lp.close(server, None).unwrap();
                lp.close(client, None).unwrap();
                for c in accepted.borrow().iter() {
                    lp.close(*c, None).unwrap();
                }
            })
        };
        lp.timer_start(timer, ms(1000), ms(0), &on_timer).unwrap();
        assert!(!lp.run(RunMode::Default, &mut ()).unwrap());
        let log = log.borrow();
        assert_eq!(log.len(), WRITES, "completed + cancelled = {WRITES}");
        let order: Vec<usize> = log.iter().map(|(i, _)| *i).collect();
        assert!(order.iter().enumerate().all(|(k, i)| k == *i), "callbacks in queue order");
        let completed = log.iter().take_while(|(_, st)| st.is_ok()).count();
        assert!(log[completed..].iter().all(|(_, st)| *st == Err(Error::ECANCELED)), "the rest are cancelled");
        assert!(completed > 0, "some writes reached the socket buffers");
        eprintln!("{completed} writes completed, {} cancelled", WRITES - completed);
    }

    /// tcp_try_write: try_write sends what the socket takes now; a
    /// zero-length try_write is 0; what was written arrives.
    fn tcp_try_write(lp) {
        let received = Rc::new(Cell::new(0usize));
        let on_read = {
            let received = received.clone();
            OnRead::new(move |lp, _, s, res| match res {
                Ok(bytes) => received.set(received.get() + bytes.len()),
                Err(_) => lp.close(s, None).unwrap(),
            })
        };
        let accepted = Rc::new(RefCell::new(vec![]));
        let (server, addr) = listener(lp, &accept_and_read(on_read, accepted.clone()));
        let written = Rc::new(Cell::new(0usize));
        let on_connect = {
            let written = written.clone();
            OnConnect::new(move |lp, _, s, st| {
                st.unwrap();
                loop {
                    match lp.try_write(s, b"PING") {
                        Ok(n) if n > 0 => {
                            written.set(written.get() + n);
                            break;
                        }
                        Ok(_) => panic!("a 4-byte try_write wrote nothing without EAGAIN"),
                        Err(e) => assert!(e.is_would_block(), "try_write: {e:?}"),
                    }
                }
                assert_eq!(lp.try_write(s, b""), Ok(0));
                lp.close(s, None).unwrap();
            })
        };
        let client = connect(lp, addr, &on_connect);
        run_until(lp, LIMIT, |lp| !lp.is_live(client) && !accepted.borrow().is_empty() && !lp.is_live(accepted.borrow()[0]));
        lp.close(server, None).unwrap();
        assert!(!lp.run(RunMode::Default, &mut ()).unwrap());
        assert_eq!(written.get(), 4);
        assert_eq!(received.get(), 4);
    }

    /// try_write until the socket is full: short counts and then EAGAIN,
    /// never an error; with a write queued, try_write is EAGAIN; everything
    /// written arrives in order.
    fn tcp_try_write_fill(lp) {
        let received = Rc::new(RefCell::new(Vec::new()));
        let on_read = {
            let received = received.clone();
            OnRead::new(move |lp, _, s, res| match res {
                Ok(bytes) => received.borrow_mut().extend_from_slice(bytes),
                Err(_) => lp.close(s, None).unwrap(),
            })
        };
        let accepted = Rc::new(RefCell::new(Vec::<TcpStream>::new()));
        let acc = accepted.clone();
        let (server, addr) = listener(lp, &OnConnection::new(move |lp, _, srv, st| {
            st.unwrap();
            // Accept, but read only once the client is done writing.
            acc.borrow_mut().push(lp.accept(srv).unwrap());
        }));
        let total = Rc::new(Cell::new(0usize));
        let on_write = OnWrite::new(|lp, _, s, st| {
            st.unwrap();
            lp.close(s, None).unwrap();
        });
        let on_connect = {
            let total = total.clone();
            OnConnect::new(move |lp, _, s, st| {
                st.unwrap();
                loop {
                    let off = total.get();
                    let piece: Vec<u8> = (off as u64..off as u64 + 65536).map(pattern).collect();
                    match lp.try_write(s, &piece) {
                        Ok(n) => total.set(off + n),
                        Err(e) if e.is_would_block() => break,
                        Err(e) => panic!("try_write: {e:?}"),
                    }
                }
                // A queued write: try_write must not jump the queue.
                let off = total.get() as u64;
                let tail: Vec<u8> = (off..off + 1000).map(pattern).collect();
                lp.write(s, &tail, Some(&on_write)).unwrap();
                total.set(total.get() + 1000);
                assert!(lp.write_queue_size(s).unwrap() > 0);
                assert_eq!(lp.try_write(s, b"jump"), Err(Error::EAGAIN));
            })
        };
        let client = connect(lp, addr, &on_connect);
        run_until(lp, LIMIT, |_| total.get() > 0 && !accepted.borrow().is_empty());
        let incoming = accepted.borrow()[0];
        lp.read_start(incoming, &on_read).unwrap();
        run_until(lp, LIMIT, |lp| !lp.is_live(client) && !lp.is_live(incoming));
        lp.close(server, None).unwrap();
        assert!(!lp.run(RunMode::Default, &mut ()).unwrap());
        let received = received.borrow();
        assert_eq!(received.len(), total.get());
        assert!(received.iter().enumerate().all(|(i, b)| *b == pattern(i as u64)), "bytes intact and in order");
    }

    /// tcp_try_write_error: writing to a peer that closed gives EPIPE or
    /// ECONNRESET (never a signal), and leaves the write queue empty; a
    /// queued write then fails the same way through its callback, which
    /// runs from the loop (the `write` call itself returns Ok), exactly
    /// once, after the callback that queued the write has returned.
    fn tcp_try_write_error(lp) {
        let acc = Rc::new(RefCell::new(Vec::<TcpStream>::new()));
        let a2 = acc.clone();
        let (server, addr) = listener(lp, &OnConnection::new(move |lp, _, srv, st| {
            st.unwrap();
            // Accept and close at once.
            let c = lp.accept(srv).unwrap();
            lp.close(c, None).unwrap();
            lp.close(srv, None).unwrap();
            a2.borrow_mut().push(c);
        }));
        let failed = Rc::new(Cell::new(None::<Error>));
        let write_failed = Rc::new(RefCell::new(Vec::<Error>::new()));
        let log = Rc::new(RefCell::new(Vec::<&'static str>::new()));
        let client = connect(lp, addr, &OnConnect::new(|_, _, _, st| st.unwrap()));
        run_until(lp, LIMIT, |lp| !acc.borrow().is_empty() && !lp.is_live(server));
        // Keep trying (the peer's RST comes back after our first bytes).
        let timer = lp.timer_init().unwrap();
        let on_write = {
            let (write_failed, log) = (write_failed.clone(), log.clone());
            OnWrite::new(move |lp, _, s, st| {
                log.borrow_mut().push("write callback");
                write_failed.borrow_mut().push(st.expect_err("the write to a reset peer fails"));
                assert_eq!(lp.write_queue_size(s), Ok(0));
            })
        };
        let on_timer = {
            let (failed, log) = (failed.clone(), log.clone());
            OnTimer::new(move |lp, _, t| match lp.try_write(client, &[1u8; 4096]) {
                Ok(_) => {}
                Err(e) if e.is_would_block() => {}
                Err(e) => {
                    failed.set(Some(e));
                    assert_eq!(lp.write_queue_size(client), Ok(0), "nothing queued after the error");
                    lp.timer_stop(t).unwrap();
                    // A queued write fails too: through its callback, from
                    // the loop, never from inside `write`.
                    log.borrow_mut().push("write call");
                    lp.write(client, b"more", Some(&on_write)).unwrap();
                    log.borrow_mut().push("write returned");
                }
            })
        };
        lp.timer_start(timer, ms(1), ms(5), &on_timer).unwrap();
        run_until(lp, LIMIT, |_| !write_failed.borrow().is_empty());
        // A few more iterations: the callback does not run a second time.
        for _ in 0..3 {
            lp.run(RunMode::NoWait, &mut ()).unwrap();
        }
        assert_eq!(*log.borrow(), ["write call", "write returned", "write callback"]);
        let e = failed.get().unwrap();
        assert!(e == Error::EPIPE || e == Error::ECONNRESET, "try_write error {e:?}");
        assert_eq!(write_failed.borrow().len(), 1, "the write callback ran once");
        let e = write_failed.borrow()[0];
        assert!(e == Error::EPIPE || e == Error::ECONNRESET, "write error {e:?}");
        assert_eq!(lp.write_queue_size(client), Ok(0));
        lp.close(client, None).unwrap();
        lp.close(timer, None).unwrap();
        assert!(!lp.run(RunMode::Default, &mut ()).unwrap());
        assert_eq!(write_failed.borrow().len(), 1, "not called again by the close");
    }

    /// tcp_writealot: 32 MiB written in 128 KiB writes, echoed by a server
    /// in the same loop, read back intact (byte pattern checked), then EOF.
    fn tcp_writealot(lp) {
        const CHUNK: usize = 128 * 1024;
        const CHUNKS: usize = 256;
        const TOTAL: usize = CHUNK * CHUNKS;
        let accepted = Rc::new(RefCell::new(vec![]));
        let (server, addr) = listener(lp, &accept_and_read(echo_reader(), accepted.clone()));
        let (read_total, mismatches, writes_done, eof) = (count(), count(), count(), count());
        let on_read = {
            let (read_total, mismatches, eof) = (read_total.clone(), mismatches.clone(), eof.clone());
            OnRead::new(move |lp, _, s, res| match res {
                Ok(bytes) => {
                    let base = read_total.get() as u64;
                    let bad = bytes.iter().enumerate().filter(|(i, b)| **b != pattern(base + *i as u64)).count();
                    mismatches.set(mismatches.get() + bad);
                    read_total.set(read_total.get() + bytes.len());
                }
                Err(e) => {
                    assert_eq!(e, Error::EOF);
                    bump(&eof);
                    lp.close(s, None).unwrap();
                }
            })
        };
        let on_write = {
            let writes_done = writes_done.clone();
            OnWrite::new(move |_, _, _, st| {
                st.unwrap();
                bump(&writes_done);
            })
        };
        let on_shutdown = OnShutdown::new(|_, _, _, st| st.unwrap());
        let on_connect = OnConnect::new(move |lp, _, s, st| {
            st.unwrap();
            lp.read_start(s, &on_read).unwrap();
            let mut chunk = vec![0u8; CHUNK];
            for k in 0..CHUNKS {
                let base = (k * CHUNK) as u64;
                for (i, b) in chunk.iter_mut().enumerate() {
                    *b = pattern(base + i as u64);
                }
                lp.write(s, &chunk, Some(&on_write)).unwrap();
            }
            assert!(lp.write_queue_size(s).unwrap() > 0);
            lp.shutdown(s, Some(&on_shutdown)).unwrap();
        });
        let client = connect(lp, addr, &on_connect);
        run_until(lp, Duration::from_secs(120), |lp| !lp.is_live(client));
        run_until(lp, LIMIT, |lp| accepted.borrow().iter().all(|c| !lp.is_live(*c)));
        lp.close(server, None).unwrap();
        assert!(!lp.run(RunMode::Default, &mut ()).unwrap());
        assert_eq!(writes_done.get(), CHUNKS);
        assert_eq!(read_total.get(), TOTAL);
        assert_eq!(mismatches.get(), 0, "echoed bytes intact");
        assert_eq!(eof.get(), 1);
    }

    /// tcp_read_stop_start: read_stop then read_start from inside the read
    /// callback loses nothing: the end of the stream still arrives.
    fn tcp_read_stop_start(lp) {
        let reads = count();
        let on_write_ok = OnWrite::new(|_, _, _, st| st.unwrap());
        let on_read2 = {
            let reads = reads.clone();
            OnRead::new(move |lp, _, s, res| {
                bump(&reads);
                if res.is_err() {
                    lp.close(s, None).unwrap();
                }
            })
        };
        let on_read1 = {
            let reads = reads.clone();
            OnRead::new(move |lp, _, s, res| {
                assert!(res.is_ok(), "first read has data: {res:?}");
                // Write on the half-open connection, then restart reading.
                lp.write(s, b"1234578\0", Some(&on_write_ok)).unwrap();
                lp.read_stop(s).unwrap();
                lp.read_start(s, &on_read2).unwrap();
                bump(&reads);
            })
        };
        let accepted = Rc::new(RefCell::new(vec![]));
        let (server, addr) = listener(lp, &accept_and_read(on_read1, accepted.clone()));
        let on_write_close = OnWrite::new(|lp, _, s, st| {
            st.unwrap();
            lp.close(s, None).unwrap();
        });
        let client = connect(lp, addr, &OnConnect::new(move |lp, _, s, st| {
            st.unwrap();
            lp.write(s, b"1234578\0", Some(&on_write_close)).unwrap();
        }));
        run_until(lp, LIMIT, |lp| !lp.is_live(client) && !accepted.borrow().is_empty() && !lp.is_live(accepted.borrow()[0]));
        lp.close(server, None).unwrap();
        assert!(!lp.run(RunMode::Default, &mut ()).unwrap());
        assert!(reads.get() >= 2);
    }

    /// read_stop keeps data that is already on its way; read_start delivers
    /// it in order, with nothing lost across many stop/start cycles (the
    /// reader pauses after every chunk, a timer resumes it).
    fn tcp_read_stop_start_cycles(lp) {
        const TOTAL: usize = 4 * 1024 * 1024;
        let got = Rc::new(RefCell::new(Vec::with_capacity(TOTAL)));
        let paused = Rc::new(Cell::new(None::<TcpStream>));
        let (pauses, resumes) = (count(), count());
        let timer = lp.timer_init().unwrap();
        let on_read = {
            let (got, paused, pauses) = (got.clone(), paused.clone(), pauses.clone());
            OnRead::new(move |lp, _, s, res| match res {
                Ok(bytes) => {
                    got.borrow_mut().extend_from_slice(bytes);
                    if lp.is_reading(s) {
                        lp.read_stop(s).unwrap();
                        paused.set(Some(s));
                        bump(&pauses);
                    }
                }
                Err(e) => {
                    assert_eq!(e, Error::EOF);
                    lp.close(s, None).unwrap();
                    lp.close(timer, None).unwrap();
                }
            })
        };
        let on_timer = {
            let (paused, resumes, on_read) = (paused.clone(), resumes.clone(), on_read.clone());
            OnTimer::new(move |lp, _, _| {
                if let Some(s) = paused.take() {
                    lp.read_start(s, &on_read).unwrap();
                    bump(&resumes);
                }
            })
        };
        lp.timer_start(timer, ms(1), ms(1), &on_timer).unwrap();
        let accepted = Rc::new(RefCell::new(vec![]));
        let (server, addr) = listener(lp, &accept_and_read(on_read, accepted.clone()));
        let peer = std::thread::spawn(move || {
            let mut s = std::net::TcpStream::connect(addr).unwrap();
            s.set_write_timeout(Some(Duration::from_secs(20))).unwrap();
            let data: Vec<u8> = (0..TOTAL as u64).map(pattern).collect();
            for piece in data.chunks(100_000) {
                s.write_all(piece).unwrap();
            }
        });
        run_until(lp, Duration::from_secs(60), |lp| !lp.is_live(timer));
        peer.join().unwrap();
        lp.close(server, None).unwrap();
        assert!(!lp.run(RunMode::Default, &mut ()).unwrap());
        let got = got.borrow();
        assert_eq!(got.len(), TOTAL);
        assert!(got.iter().enumerate().all(|(i, b)| *b == pattern(i as u64)), "bytes intact and in order");
        assert!(pauses.get() > 1 && resumes.get() > 1, "{} pauses, {} resumes", pauses.get(), resumes.get());
    }

    /// tcp_rst: a peer that closes with SO_LINGER 0 sends RST; the read
    /// callback gets ECONNRESET (not EOF).
    fn tcp_rst(lp) {
        let results = Rc::new(RefCell::new(Vec::<Result<usize>>::new()));
        let on_read = {
            let results = results.clone();
            OnRead::new(move |lp, _, s, res| match res {
                Ok(bytes) => {
                    results.borrow_mut().push(Ok(bytes.len()));
                    lp.write(s, bytes, None).unwrap();
                }
                Err(e) => {
                    results.borrow_mut().push(Err(e));
                    lp.close(s, None).unwrap();
                }
            })
        };
        let accepted = Rc::new(RefCell::new(vec![]));
        let (server, addr) = listener(lp, &accept_and_read(on_read, accepted.clone()));
        let peer = std::thread::spawn(move || {
            let mut s = std::net::TcpStream::connect(addr).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            s.write_all(b"hello").unwrap();
            // Wait for the echo: the server is reading, nothing is unread.
            let mut back = [0u8; 5];
            s.read_exact(&mut back).unwrap();
            linger_zero(&s);
            drop(s);
        });
        run_until(lp, LIMIT, |lp| !accepted.borrow().is_empty() && !lp.is_live(accepted.borrow()[0]));
        peer.join().unwrap();
        lp.close(server, None).unwrap();
        assert!(!lp.run(RunMode::Default, &mut ()).unwrap());
        assert_eq!(*results.borrow(), [Ok(5), Err(Error::ECONNRESET)]);
    }

    /// tcp_close_accept: two accepted connections both have a read ready;
    /// the first read callback closes the other one and the listener, and a
    /// new connection is made once their fds are free (so the new socket
    /// reuses one of their fd numbers). The new handle sees no stale event:
    /// its connect to the closed listener fails, and it reads nothing.
    fn tcp_close_accept(lp) {
        let incoming = Rc::new(RefCell::new(Vec::<TcpStream>::new()));
        let (reads, writes, closes) = (count(), count(), count());
        let check_status = Rc::new(RefCell::new(Vec::<Result<()>>::new()));
        let closed_fds = Rc::new(RefCell::new(Vec::new()));
        let check_fd = Rc::new(Cell::new(-1));
        let server_cell = Rc::new(Cell::new(None::<TcpListener>));
        let check_cell = Rc::new(Cell::new(None::<TcpStream>));

        let on_close = {
            let closes = closes.clone();
            OnClose::new(move |_, _, _| bump(&closes))
        };
        let on_check_read = OnRead::new(|_, _, _, res| panic!("the new handle never connected, yet read {res:?}"));
        let on_check_connect = {
            let (check_status, incoming, on_close) = (check_status.clone(), incoming.clone(), on_close.clone());
            OnConnect::new(move |lp, _, s, st| {
                check_status.borrow_mut().push(st);
                // Done: close the check handle and the remaining incoming one.
                for c in incoming.borrow().iter() {
                    if lp.is_live(*c) && !lp.is_closing(*c) {
                        lp.close(*c, Some(&on_close)).unwrap();
                    }
                }
                lp.close(s, Some(&on_close)).unwrap();
            })
        };
        // The listener's close callback runs when the fds of the closed
        // handles are free: connect from there.
        let on_server_close = {
            let (closes, check_fd, check_cell) = (closes.clone(), check_fd.clone(), check_cell.clone());
            OnClose::new(move |lp, _, _| {
                bump(&closes);
                let addr = lp.user_data::<SocketAddr>().copied().unwrap();
                let check = lp.tcp_init().unwrap();
                let check = lp.tcp_connect(check, addr, &on_check_connect).unwrap();
                check_fd.set(lp.fileno(check).unwrap());
                // Reading starts before the connect completes; nothing
                // stale may arrive.
                lp.read_start(check, &on_check_read).unwrap();
                check_cell.set(Some(check));
            })
        };
        let on_read = {
            let (incoming, reads, closed_fds, server_cell) =
                (incoming.clone(), reads.clone(), closed_fds.clone(), server_cell.clone());
            let on_close = on_close.clone();
            OnRead::new(move |lp, _, s, res| {
                assert_eq!(res.map(|b| b.len()), Ok(1));
                bump(&reads);
                lp.read_stop(s).unwrap();
                for c in incoming.borrow().iter() {
                    if *c != s {
                        closed_fds.borrow_mut().push(lp.fileno(*c).unwrap());
                        lp.close(*c, Some(&on_close)).unwrap();
                    }
                }
                let server = server_cell.get().unwrap();
                closed_fds.borrow_mut().push(lp.fileno(server).unwrap());
                lp.close(server, Some(&on_server_close)).unwrap();
            })
        };
        let on_connection = {
            let incoming = incoming.clone();
            OnConnection::new(move |lp, _, srv, st| {
                st.unwrap();
                while let Ok(c) = lp.accept(srv) {
                    incoming.borrow_mut().push(c);
                }
                // Once both are accepted, start reading both: each has its
                // byte waiting, so both reads are ready at once.
                if incoming.borrow().len() == 2 {
                    for c in incoming.borrow().iter() {
                        lp.read_start(*c, &on_read).unwrap();
                    }
                }
            })
        };
        let (server, addr) = listener(lp, &on_connection);
        server_cell.set(Some(server));
        lp.set_user_data(addr);
        let on_write = {
            let writes = writes.clone();
            OnWrite::new(move |_, _, _, st| {
                st.unwrap();
                bump(&writes);
            })
        };
        let on_connect = OnConnect::new(move |lp, _, s, st| {
            st.unwrap();
            lp.write(s, b"x", Some(&on_write)).unwrap();
        });
        let outgoing = [connect(lp, addr, &on_connect), connect(lp, addr, &on_connect)];
        run_until(lp, LIMIT, |lp| check_cell.get().is_some_and(|c| !lp.is_live(c)));
        for s in outgoing {
            lp.close(s, None).unwrap();
        }
        assert!(!lp.run(RunMode::Default, &mut ()).unwrap());
        assert_eq!(reads.get(), 1, "the other read was dropped with its closed handle");
        assert_eq!(writes.get(), 2);
        assert_eq!(closes.get(), 4, "two incoming, listener, check");
        let status = check_status.borrow();
        assert_eq!(status.len(), 1, "connect reported once");
        assert!(status[0].is_err(), "no stale readiness mistaken for a connect: {:?}", status[0]);
        assert!(
            closed_fds.borrow().contains(&check_fd.get()),
            "fd number reused: check fd {} among closed {:?}",
            check_fd.get(),
            closed_fds.borrow()
        );
    }

    /// Connecting to a port nobody listens on fails with ECONNREFUSED
    /// through the callback, once.
    fn tcp_connect_refused(lp) {
        // Find a free port: bind, note it, close.
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let status = Rc::new(RefCell::new(vec![]));
        let st2 = status.clone();
        let s = connect(lp, addr, &OnConnect::new(move |lp, _, s, st| {
            st2.borrow_mut().push(st);
            lp.close(s, None).unwrap();
        }));
        assert!(!lp.run(RunMode::Default, &mut ()).unwrap());
        assert_eq!(*status.borrow(), [Err(Error::ECONNREFUSED)]);
        assert!(!lp.is_live(s));
    }

    /// Closing a handle with a connect in flight: the connect callback runs
    /// once, with ECANCELED, before the close callback.
    fn tcp_close_while_connecting(lp) {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let log = Rc::new(RefCell::new(Vec::<String>::new()));
        let l2 = log.clone();
        let s = connect(lp, addr, &OnConnect::new(move |_, _, _, st| l2.borrow_mut().push(format!("connect {st:?}"))));
        let l3 = log.clone();
        lp.close(s, Some(&OnClose::new(move |_, _, _| l3.borrow_mut().push("close".into())))).unwrap();
        assert!(!lp.run(RunMode::Default, &mut ()).unwrap());
        assert_eq!(*log.borrow(), [format!("connect {:?}", Err::<(), _>(Error::ECANCELED)), "close".into()]);
    }

    /// Binding an address in use fails with EADDRINUSE (at bind or listen);
    /// SO_REUSEPORT lets two sockets share a port.
    fn tcp_bind_errors_and_reuseport(lp) {
        let (a, addr) = listener(lp, &OnConnection::new(|_, _, _, _| {}));
        let b = lp.tcp_init().unwrap();
        let res = lp.tcp_bind(b, addr, 0).and_then(|_| lp.listen(b, 16, &OnConnection::new(|_, _, _, _| {})));
        assert_eq!(res, Err(Error::EADDRINUSE));
        // The failed socket stays a live TcpSocket.
        assert!(lp.is_live(b));

        let r1 = lp.tcp_init().unwrap();
        lp.tcp_bind(r1, "127.0.0.1:0".parse().unwrap(), TCP_REUSEPORT).unwrap();
        let raddr = lp.tcp_getsockname(r1).unwrap();
        let r1 = lp.listen(r1, 16, &OnConnection::new(|_, _, _, _| {})).unwrap();
        let r2 = lp.tcp_init().unwrap();
        lp.tcp_bind(r2, raddr, TCP_REUSEPORT).unwrap();
        let r2 = lp.listen(r2, 16, &OnConnection::new(|_, _, _, _| {})).unwrap();
        assert_eq!(lp.tcp_getsockname(r2).unwrap(), raddr);
        for h in [a.id(), b.id(), r1.id(), r2.id()] {
            lp.close(h, None).unwrap();
        }
        assert!(!lp.run(RunMode::Default, &mut ()).unwrap());
    }

    /// IPv6 loopback: bind, connect, echo one message; sockname/peername
    /// match; nodelay and keepalive can be set.
    fn tcp_ipv6_and_options(lp) {
        let server = lp.tcp_init().unwrap();
        if lp.tcp_bind(server, "[::1]:0".parse().unwrap(), TCP_IPV6ONLY).is_err() {
            eprintln!("SKIP part: no IPv6 loopback");
            lp.close(server, None).unwrap();
            lp.run(RunMode::Default, &mut ()).unwrap();
            return;
        }
        let accepted = Rc::new(RefCell::new(vec![]));
        let server = lp.listen(server, 16, &accept_and_read(echo_reader(), accepted.clone())).unwrap();
        let addr = lp.tcp_getsockname(server).unwrap();
        assert!(addr.is_ipv6());
        let echoed = Rc::new(RefCell::new(Vec::new()));
        let on_read = {
            let echoed = echoed.clone();
            OnRead::new(move |lp, _, s, res| match res {
                Ok(b) => {
                    echoed.borrow_mut().extend_from_slice(b);
                    if echoed.borrow().len() == 5 {
                        lp.close(s, None).unwrap();
                    }
                }
                Err(e) => panic!("{e:?}"),
            })
        };
        let on_connect = OnConnect::new(move |lp, _, s, st| {
            st.unwrap();
            let peer = lp.tcp_getpeername(s).unwrap();
            assert_eq!(peer, addr);
            assert!(lp.tcp_getsockname(s).unwrap().is_ipv6());
            lp.tcp_nodelay(s, true).unwrap();
            lp.tcp_keepalive(s, Some(Duration::from_secs(30))).unwrap();
            lp.tcp_keepalive(s, None).unwrap();
            lp.read_start(s, &on_read).unwrap();
            lp.write(s, b"hello", None).unwrap();
        });
        let client = connect(lp, addr, &on_connect);
        run_until(lp, LIMIT, |lp| !lp.is_live(client));
        run_until(lp, LIMIT, |lp| accepted.borrow().iter().all(|c| !lp.is_live(*c)));
        lp.close(server, None).unwrap();
        assert!(!lp.run(RunMode::Default, &mut ()).unwrap());
        assert_eq!(*echoed.borrow(), b"hello");
    }

    /// Streams opened from std types: a std listener serves a std client.
    fn tcp_open_from_std(lp) {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let server = lp.tcp_from_std_listener(l).unwrap();
        let accepted = Rc::new(RefCell::new(vec![]));
        let server = lp.listen(server, 16, &accept_and_read(echo_reader(), accepted.clone())).unwrap();
        let std_client = std::net::TcpStream::connect(addr).unwrap();
        let client = lp.tcp_from_std_stream(std_client).unwrap();
        assert_eq!(lp.tcp_getpeername(client).unwrap(), addr);
        let echoed = Rc::new(RefCell::new(Vec::new()));
        let e2 = echoed.clone();
        lp.read_start(client, &OnRead::new(move |lp, _, s, res| match res {
            Ok(b) => e2.borrow_mut().extend_from_slice(b),
            Err(e) => {
                assert_eq!(e, Error::EOF);
                lp.close(s, None).unwrap();
            }
        })).unwrap();
        lp.write(client, b"from std", None).unwrap();
        lp.shutdown(client, None).unwrap();
        run_until(lp, LIMIT, |lp| !lp.is_live(client));
        run_until(lp, LIMIT, |lp| accepted.borrow().iter().all(|c| !lp.is_live(*c)));
        lp.close(server, None).unwrap();
        assert!(!lp.run(RunMode::Default, &mut ()).unwrap());
        assert_eq!(*echoed.borrow(), b"from std");
    }

    /// read_start before the connect completes: reading begins once
    /// connected; a refused connect is reported as refused (a receive armed
    /// too early would swallow the socket error) and no read callback runs.
    fn tcp_read_start_while_connecting(lp) {
        let accepted = Rc::new(RefCell::new(vec![]));
        let (server, addr) = listener(lp, &accept_and_read(echo_reader(), accepted.clone()));
        let echoed = Rc::new(RefCell::new(Vec::new()));
        let on_read = {
            let echoed = echoed.clone();
            OnRead::new(move |lp, _, s, res| match res {
                Ok(b) => echoed.borrow_mut().extend_from_slice(b),
                Err(e) => {
                    assert_eq!(e, Error::EOF);
                    lp.close(s, None).unwrap();
                }
            })
        };
        let on_connect = OnConnect::new(|lp, _, s, st| {
            st.unwrap();
            lp.write(s, b"early reader", None).unwrap();
            lp.shutdown(s, None).unwrap();
        });
        let client = connect(lp, addr, &on_connect);
        lp.read_start(client, &on_read).unwrap();
        run_until(lp, LIMIT, |lp| !lp.is_live(client));
        run_until(lp, LIMIT, |lp| accepted.borrow().iter().all(|c| !lp.is_live(*c)));
        assert_eq!(*echoed.borrow(), b"early reader");

        // Now refused: the listener is gone.
        let on_server_closed = count();
        let c2 = on_server_closed.clone();
        lp.close(server, Some(&OnClose::new(move |_, _, _| bump(&c2)))).unwrap();
        run_until(lp, LIMIT, |_| on_server_closed.get() == 1);
        let status = Rc::new(RefCell::new(vec![]));
        let st2 = status.clone();
        let refused = connect(lp, addr, &OnConnect::new(move |lp, _, s, st| {
            st2.borrow_mut().push(st);
            lp.close(s, None).unwrap();
        }));
        lp.read_start(refused, &OnRead::new(|_, _, _, res| panic!("no read on a refused connect: {res:?}"))).unwrap();
        assert!(!lp.run(RunMode::Default, &mut ()).unwrap());
        assert_eq!(*status.borrow(), [Err(Error::ECONNREFUSED)]);
    }

    /// Writes and a shutdown queued before the connect completes wait for
    /// it and then go out in order (libuv queues them the same way); when
    /// the connect fails they are cancelled, each reported once.
    fn tcp_write_before_connect(lp) {
        let accepted = Rc::new(RefCell::new(vec![]));
        let (server, addr) = listener(lp, &accept_and_read(echo_reader(), accepted.clone()));
        let log = Rc::new(RefCell::new(Vec::<(&'static str, Result<()>)>::new()));
        let logger = |what: &'static str| {
            let log = log.clone();
            move |_: &mut Loop, _: &mut (), _: TcpStream, st: Result<()>| log.borrow_mut().push((what, st))
        };
        let (on_write, on_shutdown) = (OnWrite::new(logger("write")), OnShutdown::new(logger("shutdown")));
        let on_connect = OnConnect::new(logger("connect"));
        let echoed = Rc::new(RefCell::new(Vec::new()));
        let on_read = {
            let echoed = echoed.clone();
            OnRead::new(move |lp, _, s, res| match res {
                Ok(b) => echoed.borrow_mut().extend_from_slice(b),
                Err(_) => lp.close(s, None).unwrap(),
            })
        };
        let client = connect(lp, addr, &on_connect);
        lp.write(client, b"queued ", Some(&on_write)).unwrap();
        lp.write(client, b"early", Some(&on_write)).unwrap();
        lp.shutdown(client, Some(&on_shutdown)).unwrap();
        lp.read_start(client, &on_read).unwrap();
        run_until(lp, LIMIT, |lp| !lp.is_live(client));
        run_until(lp, LIMIT, |lp| accepted.borrow().iter().all(|c| !lp.is_live(*c)));
        assert_eq!(*echoed.borrow(), b"queued early");
        assert_eq!(*log.borrow(), [("connect", Ok(())), ("write", Ok(())), ("write", Ok(())), ("shutdown", Ok(()))]);

        // Refused: the writes and the shutdown are cancelled.
        let closed = count();
        let c2 = closed.clone();
        lp.close(server, Some(&OnClose::new(move |_, _, _| bump(&c2)))).unwrap();
        run_until(lp, LIMIT, |_| closed.get() == 1);
        log.borrow_mut().clear();
        let refused = connect(lp, addr, &on_connect);
        lp.write(refused, b"never", Some(&on_write)).unwrap();
        lp.shutdown(refused, Some(&on_shutdown)).unwrap();
        run_until(lp, LIMIT, |_| log.borrow().len() == 3);
        lp.close(refused, None).unwrap();
        assert!(!lp.run(RunMode::Default, &mut ()).unwrap());
        assert_eq!(
            *log.borrow(),
            [
                ("connect", Err(Error::ECONNREFUSED)),
                ("write", Err(Error::ECANCELED)),
                ("shutdown", Err(Error::ECANCELED))
            ]
        );
    }

    /// A zero-length write completes (in order with the others).
    fn tcp_zero_length_write(lp) {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let log = Rc::new(RefCell::new(Vec::<(u8, Result<()>)>::new()));
        let cb = |tag: u8| {
            let log = log.clone();
            OnWrite::new(move |_, _, _, st| log.borrow_mut().push((tag, st)))
        };
        let (w0, w1, w2) = (cb(0), cb(1), cb(2));
        let client = connect(lp, addr, &OnConnect::new(move |lp, _, s, st| {
            st.unwrap();
            lp.write(s, b"", Some(&w0)).unwrap();
            lp.write(s, b"abc", Some(&w1)).unwrap();
            lp.write(s, b"", Some(&w2)).unwrap();
        }));
        run_until(lp, LIMIT, |_| log.borrow().len() == 3);
        assert_eq!(*log.borrow(), [(0, Ok(())), (1, Ok(())), (2, Ok(()))]);
        lp.close(client, None).unwrap();
        assert!(!lp.run(RunMode::Default, &mut ()).unwrap());
    }

    /// Back-pressure on a listener whose user does not accept: once its
    /// queue is full the loop stops accepting (connections wait in the
    /// kernel's backlog; io_uring's multishot accept may already have taken
    /// a whole burst, which is kept, never dropped), and accepting resumes
    /// as the user drains the queue.
    fn tcp_accept_queue_is_bounded(lp) {
        const BURST: usize = 200;
        let notified = count();
        let n2 = notified.clone();
        let server = lp.tcp_init().unwrap();
        lp.tcp_bind(server, "127.0.0.1:0".parse().unwrap(), 0).unwrap();
        let server = lp.listen(server, 1024, &OnConnection::new(move |_, _, _, st| {
            st.unwrap();
            bump(&n2);
        })).unwrap();
        let addr = lp.tcp_getsockname(server).unwrap();
        // A ticking timer bounds each poll while the loop is left to accept
        // what it is willing to.
        let tick = lp.timer_init().unwrap();
        lp.timer_start(tick, ms(10), ms(10), &OnTimer::new(|_, _, _| {})).unwrap();
        let settle = |lp: &mut Loop| {
            let t0 = std::time::Instant::now();
            run_until(lp, LIMIT, |_| t0.elapsed() > Duration::from_millis(200));
        };
        let mut clients: Vec<_> = (0..BURST).map(|_| std::net::TcpStream::connect(addr).unwrap()).collect();
        settle(lp);
        let first = lp.accept_queue_len(server).unwrap();
        assert!(first >= 128, "accepts up to the limit: {first}");
        assert!(first <= 128 + 64 || lp.backend() == Backend::IoUring, "the accept queue is bounded: {first}");
        // A second burst while the queue is full is not accepted.
        clients.extend((0..BURST).map(|_| std::net::TcpStream::connect(addr).unwrap()));
        settle(lp);
        assert_eq!(lp.accept_queue_len(server).unwrap(), first, "no accepting while the queue is full");
        assert_eq!(notified.get(), first, "one notification per queued connection");
        // Drain: everything arrives eventually.
        let mut accepted = vec![];
        run_until(lp, LIMIT, |lp| {
            while let Ok(c) = lp.accept(server) {
                accepted.push(c);
            }
            accepted.len() == 2 * BURST
        });
        assert_eq!(notified.get(), 2 * BURST);
        for c in accepted {
            lp.close(c, None).unwrap();
        }
        lp.close(server, None).unwrap();
        lp.close(tick, None).unwrap();
        assert!(!lp.run(RunMode::Default, &mut ()).unwrap());
        drop(clients);
    }
}

both_backends! {
    /// Fairness: while one peer floods a stream as fast as it can, a second
    /// stream's ping-pong keeps making progress (bounded work per wakeup).
    fn tcp_busy_peer_does_not_starve_others(lp) {
        use std::sync::atomic::{AtomicBool, Ordering};
        use std::sync::Arc;
        let flooded = Rc::new(Cell::new(0usize));
        let on_read = {
            let flooded = flooded.clone();
            OnRead::new(move |lp, _, s, res| match res {
                // Stream 0 is the flood (data word 0), stream 1 the ping-pong.
                Ok(b) if lp.data(s).unwrap() == 0 => flooded.set(flooded.get() + b.len()),
                Ok(b) => lp.write(s, b, None).unwrap(),
                Err(_) => lp.close(s, None).unwrap(),
            })
        };
        let accepted = Rc::new(RefCell::new(Vec::<TcpStream>::new()));
        let acc = accepted.clone();
        let (server, addr) = listener(lp, &OnConnection::new(move |lp, _, srv, st| {
            st.unwrap();
            while let Ok(c) = lp.accept(srv) {
                lp.set_data(c, acc.borrow().len()).unwrap();
                acc.borrow_mut().push(c);
                lp.read_start(c, &on_read).unwrap();
            }
        }));
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let flood = std::thread::spawn(move || {
            let mut s = std::net::TcpStream::connect(addr).unwrap();
            s.set_write_timeout(Some(Duration::from_secs(20))).unwrap();
            let chunk = vec![0u8; 64 * 1024];
            while !stop2.load(Ordering::Acquire) {
                if s.write_all(&chunk).is_err() {
                    break;
                }
            }
        });
        run_until(lp, LIMIT, |_| accepted.borrow().len() == 1 && flooded.get() > 1 << 20);
        let ping = std::thread::spawn(move || {
            let mut s = std::net::TcpStream::connect(addr).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
            for _ in 0..50 {
                s.write_all(b"ping").unwrap();
                let mut back = [0u8; 4];
                s.read_exact(&mut back).unwrap();
            }
        });
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        let watcher = std::thread::spawn(move || {
            let ok = ping.join().is_ok();
            let _ = done_tx.send(ok);
        });
        // The loop keeps running the flood and the ping-pong together.
        let tick = lp.timer_init().unwrap();
        lp.timer_start(tick, ms(10), ms(10), &OnTimer::new(|_, _, _| {})).unwrap();
        let mut ping_ok = None;
        run_until(lp, LIMIT, |_| {
            ping_ok = ping_ok.or(done_rx.try_recv().ok());
            ping_ok.is_some()
        });
        assert_eq!(ping_ok, Some(true), "the ping-pong completed during the flood");
        stop.store(true, Ordering::Release);
        run_until(lp, LIMIT, |lp| accepted.borrow().len() == 2 && accepted.borrow().iter().all(|c| !lp.is_live(*c)));
        flood.join().unwrap();
        watcher.join().unwrap();
        lp.close(tick, None).unwrap();
        lp.close(server, None).unwrap();
        assert!(!lp.run(RunMode::Default, &mut ()).unwrap());
        assert!(flooded.get() > 1 << 20);
    }
}

/// 32 streams sending at once into a pool of 4 small receive buffers: the
/// backends run out of buffers again and again (epoll leaves data in the
/// socket, io_uring's receives starve and resume), and every byte arrives
/// intact and in order on every stream.
fn small_pool_many_streams(lp: &mut Loop) {
    const STREAMS: usize = 32;
    const BYTES: usize = 256 * 1024;
    let got: Rc<RefCell<Vec<Vec<u8>>>> = Rc::new(RefCell::new(vec![Vec::new(); STREAMS]));
    let eofs = count();
    let on_read = {
        let (got, eofs) = (got.clone(), eofs.clone());
        OnRead::new(move |lp, _, s, res| match res {
            Ok(b) => got.borrow_mut()[lp.data(s).unwrap()].extend_from_slice(b),
            Err(e) => {
                assert_eq!(e, Error::EOF);
                bump(&eofs);
                lp.close(s, None).unwrap();
            }
        })
    };
    let accepted = Rc::new(RefCell::new(vec![]));
    let acc = accepted.clone();
    let on_read_named = on_read.clone();
    let (server, addr) = listener(
        lp,
        &OnConnection::new(move |lp, _, srv, st| {
            st.unwrap();
            while let Ok(c) = lp.accept(srv) {
                let id = acc.borrow().len();
                lp.set_data(c, id).unwrap();
                acc.borrow_mut().push(c);
                lp.read_start(c, &on_read_named).unwrap();
            }
        }),
    );
    // Clients connect one at a time so accept order names them.
    let sent = count();
    let on_sent = {
        let sent = sent.clone();
        OnWrite::new(move |_, _, _, st| {
            st.unwrap();
            bump(&sent);
        })
    };
    let mut clients = vec![];
    for i in 0..STREAMS {
        let connected = count();
        let c2 = connected.clone();
        let c = connect(
            lp,
            addr,
            &OnConnect::new(move |_, _, _, st| {
                st.unwrap();
                bump(&c2);
            }),
        );
        run_until(lp, LIMIT, |_| connected.get() == 1 && accepted.borrow().len() == i + 1);
        clients.push(c);
    }
    for (i, &c) in clients.iter().enumerate() {
        let data: Vec<u8> = (0..BYTES as u64).map(|k| pattern(k + i as u64)).collect();
        lp.write(c, &data, Some(&on_sent)).unwrap();
        lp.shutdown(c, None).unwrap();
    }
    run_until(lp, Duration::from_secs(60), |_| eofs.get() == STREAMS && sent.get() == STREAMS);
    for c in clients {
        lp.close(c, None).unwrap();
    }
    lp.close(server, None).unwrap();
    assert!(!lp.run(RunMode::Default, &mut ()).unwrap());
    for (i, g) in got.borrow().iter().enumerate() {
        assert_eq!(g.len(), BYTES, "stream {i}");
        assert!(g.iter().enumerate().all(|(k, b)| *b == pattern(k as u64 + i as u64)), "stream {i} intact");
    }
}

fn small_pool() -> LoopOptions {
    LoopOptions::default().pool(PoolConfig::new(4, 1024))
}

mod small_pool_many_streams {
    use super::*;
    #[test]
    fn epoll() {
        run_on_with(Backend::Epoll, small_pool(), small_pool_many_streams);
    }
    #[test]
    fn io_uring() {
        run_on_with(Backend::IoUring, small_pool(), small_pool_many_streams);
    }
}

/// `LoopOptions::write_pool_bytes` bounds the write buffers the loop keeps
/// for reuse: a megabyte buffer written with `write_vec` is kept for the
/// next `write_buf` under the default budget (4 MiB) and freed once sent
/// under a 64 KiB one, so a burst of large writes does not stay resident.
fn write_pool_budget(backend: Backend) {
    const BIG: usize = 1 << 20;
    for (budget, kept) in [(64 << 10, false), (DEFAULT_WRITE_POOL_BYTES, true)] {
        uvring_tests::run_on_of(backend, LoopOptions::default().write_pool_bytes(budget), |lp: &mut Loop| {
            let accepted = Rc::new(RefCell::new(Vec::<TcpStream>::new()));
            let (server, addr) = listener(lp, &accept_and_read(echo_reader(), accepted.clone()));
            let reader = uvring_tests::read_to_end_in_thread(addr, LIMIT);
            run_until(lp, LIMIT, |_| accepted.borrow().len() == 1);
            let s = accepted.borrow()[0];
            let written = count();
            let on_written = {
                let written = written.clone();
                OnWrite::new(move |_, _, _, st: Result<()>| {
                    st.unwrap();
                    bump(&written);
                })
            };
            let big = vec![1u8; BIG];
            let ptr = big.as_ptr();
            lp.write_vec(s, big, Some(&on_written)).unwrap();
            run_until(lp, LIMIT, |_| written.get() == 1);
            let back = lp.write_buf();
            assert_eq!(back.capacity() >= BIG, kept, "budget {budget}: capacity {}", back.capacity());
            if kept {
                assert_eq!(back.as_ptr(), ptr);
            }
            lp.close(s, None).unwrap();
            lp.close(server, None).unwrap();
            assert!(!lp.run(RunMode::Default, &mut ()).unwrap());
            assert_eq!(reader.join().unwrap().len(), BIG);
        });
    }
}

#[test]
fn write_pool_budget_epoll() {
    write_pool_budget(Backend::Epoll);
}

#[test]
fn write_pool_budget_io_uring() {
    write_pool_budget(Backend::IoUring);
}

both_backends! {
    /// `write_vec` and `write` interleave on one stream and keep their
    /// order: owned buffers that find the queue empty are sent from where
    /// they are, ones behind queued bytes are appended; every callback runs,
    /// in order, and the peer reads the whole pattern.
    fn write_vec_and_write_keep_their_order(lp) {
        let accepted = Rc::new(RefCell::new(Vec::<TcpStream>::new()));
        let (server, addr) = listener(lp, &accept_and_read(echo_reader(), accepted.clone()));
        let reader = uvring_tests::read_to_end_in_thread(addr, LIMIT);
        run_until(lp, LIMIT, |_| accepted.borrow().len() == 1);
        let s = accepted.borrow()[0];
        let order = Rc::new(RefCell::new(Vec::new()));
        let mut offset = 0u64;
        // Sizes from one byte to 300 KiB, so some writes find the queue
        // empty and some are queued behind a send still in flight.
        let sizes = [1usize, 100, 300 << 10, 7, 64 << 10, 0, 4096, 200 << 10, 3, 1 << 10];
        for round in 0..3 {
            for (i, &n) in sizes.iter().enumerate() {
                let chunk: Vec<u8> = (offset..offset + n as u64).map(pattern).collect();
                offset += n as u64;
                let id = round * sizes.len() + i;
                let cb = {
                    let order = order.clone();
                    OnWrite::new(move |_, _, _, st: Result<()>| {
                        st.unwrap();
                        order.borrow_mut().push(id);
                    })
                };
                if (i + round) % 2 == 0 {
                    let mut buf = lp.write_buf();
                    buf.extend_from_slice(&chunk);
                    lp.write_vec(s, buf, Some(&cb)).unwrap();
                } else {
                    lp.write(s, &chunk, Some(&cb)).unwrap();
                }
            }
        }
        let writes = 3 * sizes.len();
        run_until(lp, LIMIT, |_| order.borrow().len() == writes);
        assert_eq!(*order.borrow(), (0..writes).collect::<Vec<_>>(), "callbacks in write order");
        lp.close(s, None).unwrap();
        lp.close(server, None).unwrap();
        assert!(!lp.run(RunMode::Default, &mut ()).unwrap());
        let got = reader.join().unwrap();
        assert_eq!(got.len() as u64, offset);
        assert!(got.iter().enumerate().all(|(i, &b)| b == pattern(i as u64)), "every byte in order");
    }

    /// A stream that cannot take writes refuses `write_vec` as it refuses
    /// `write` (here after a shutdown: EPIPE); the buffer goes to the pool.
    fn write_vec_after_shutdown_is_refused(lp) {
        let accepted = Rc::new(RefCell::new(Vec::<TcpStream>::new()));
        let (server, addr) = listener(lp, &accept_and_read(echo_reader(), accepted.clone()));
        let client = std::net::TcpStream::connect(addr).unwrap();
        run_until(lp, LIMIT, |_| accepted.borrow().len() == 1);
        let s = accepted.borrow()[0];
        lp.shutdown(s, None).unwrap();
        let mut buf = lp.write_buf();
        buf.extend_from_slice(b"late");
        assert_eq!(lp.write_vec(s, buf, None), Err(Error::EPIPE));
        assert!(lp.write_buf().capacity() > 0);
        drop(client);
        lp.close(s, None).unwrap();
        lp.close(server, None).unwrap();
        assert!(!lp.run(RunMode::Default, &mut ()).unwrap());
    }
}
