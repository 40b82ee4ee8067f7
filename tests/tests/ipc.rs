//! IPC between processes (libuv's test-ipc.c, test-ipc-send-recv.c and
//! test-ipc-heavy-traffic-deadlock-bug.c): a child on the test's backend
//! sends and receives handles over an IPC pipe given to it as fd 3.

use std::cell::{Cell, RefCell};
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::os::fd::RawFd;
use std::path::Path;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use uvring::*;
use uvring_tests::child::{ipc_stdio, spawn_child, ChildGuard, ExitRecord};
use uvring_tests::{both_backends, fd_count, run_until};

const LIMIT: Duration = Duration::from_secs(30);

fn child_exe() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_uvring-test-child"))
}

/// Spawns the test child running `scenario` with an IPC channel as its fd 3.
fn spawn_ipc_child(lp: &mut Loop, args: &[&str]) -> (PipeStream, ChildGuard, ExitRecord) {
    let ch = lp.pipe_init(true).unwrap();
    let (_p, guard, exit) = spawn_child(lp, child_exe(), args, &ipc_stdio(ch));
    (lp.pipe_stream(ch).expect("spawn connected the channel"), guard, exit)
}

/// Closes the channel (the child sees end of file and exits) and waits for
/// a clean exit.
fn finish(lp: &mut Loop, ch: PipeStream, exit: &ExitRecord) {
    if lp.is_live(ch) && !lp.is_closing(ch) {
        lp.close(ch, None).unwrap();
    }
    run_until(lp, LIMIT, |_| exit.get().is_some());
    assert_eq!(exit.get(), Some((0, 0)), "the child failed (its output is above)");
    lp.run(RunMode::Default, &mut ()).unwrap();
}

/// (device, inode): the identity of the open socket behind an fd.
fn identity(fd: RawFd) -> (u64, u64) {
    // SAFETY: stat is plain data; fstat fills it for a valid fd.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `st` is valid for writes.
    assert_eq!(unsafe { libc::fstat(fd, &mut st) }, 0);
    (st.st_dev, st.st_ino)
}

/// A flag for a helper thread to set when done, and an async handle for it
/// to wake the loop with (a thread's progress is nothing the loop polls).
fn thread_done(lp: &mut Loop) -> (Arc<AtomicBool>, Async, AsyncSender) {
    let (wake, sender) = lp.async_init(&OnAsync::new(|_, _, _| {})).unwrap();
    (Arc::new(AtomicBool::new(false)), wake, sender)
}

fn pattern(i: u64) -> u8 {
    (i % 251) as u8
}

/// ipc_listen_before_write / ipc_listen_after_write.
fn listen_shared_with_child(lp: &mut Loop, scenario: &str) {
    let (ch, _guard, exit) = spawn_ipc_child(lp, &[scenario]);
    let bytes = Rc::new(RefCell::new(Vec::new()));
    let addr = Rc::new(Cell::new(None::<SocketAddr>));
    let accepted = Rc::new(Cell::new(0u32));
    let acc = accepted.clone();
    // Our side of the shared listener: answer "p", stop after one accept.
    let on_conn = OnConnection::new(move |lp, _, srv, res| {
        if res.is_err() || lp.is_closing(srv) {
            return;
        }
        if let Ok(c) = lp.accept(srv) {
            acc.set(acc.get() + 1);
            lp.write(c, b"p", None).unwrap();
            lp.shutdown(c, Some(&OnShutdown::new(|lp, _, c, _| lp.close(c, None).unwrap()))).unwrap();
            lp.close(srv, None).unwrap();
        }
    });
    let (b, a) = (bytes.clone(), addr.clone());
    lp.read_start(
        ch,
        &OnRead::new(move |lp, _, ch, res| {
            let data = res.expect("channel read");
            while lp.pending_count(ch).unwrap() > 0 {
                assert_eq!(lp.pending_type(ch).unwrap(), Some(StreamType::Tcp));
                // A listening socket (or one about to listen): a TcpSocket.
                let server = match lp.accept_pending(ch).unwrap() {
                    PendingHandle::TcpSocket(s) => s,
                    other => panic!("the shared listener arrives as a TcpSocket, not {other:?}"),
                };
                let server = lp.listen(server, 128, &on_conn).unwrap();
                a.set(Some(lp.tcp_getsockname(server).unwrap()));
            }
            b.borrow_mut().extend_from_slice(data);
        }),
    )
    .unwrap();
    run_until(lp, LIMIT, |_| addr.get().is_some());
    assert_eq!(&*bytes.borrow(), b"hello\n");
    assert_eq!(lp.pending_count(ch).unwrap(), 0);
    // Up to 100 clients, one after another; each reads who accepted it.
    let target = addr.get().unwrap();
    let (done, wake, sender) = thread_done(lp);
    let d = done.clone();
    let clients = std::thread::spawn(move || {
        let (mut parent, mut child) = (0, 0);
        for _ in 0..100 {
            let Ok(mut s) = std::net::TcpStream::connect(target) else { break };
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            let mut tag = [0u8; 1];
            match s.read(&mut tag) {
                Ok(1) if tag[0] == b'p' => parent += 1,
                Ok(1) if tag[0] == b'c' => child += 1,
                _ => {} // dropped by a listener that was closing
            }
            if parent > 0 && child > 0 {
                break;
            }
        }
        d.store(true, Ordering::Release);
        sender.send();
        (parent, child)
    });
    run_until(lp, LIMIT, |_| done.load(Ordering::Acquire));
    lp.close(wake, None).unwrap();
    let (parent, child) = clients.join().unwrap();
    assert!(parent >= 1 && child >= 1, "accepts: parent {parent}, child {child}");
    assert!(accepted.get() >= 1);
    finish(lp, ch, &exit);
}

/// ipc_send_recv_*: two handles, one per write; the child sends each back.
/// Bound sockets (neither listening nor connected) come back as sockets of
/// `want`'s kind.
fn send_recv<H: SendableHandle>(lp: &mut Loop, handles: [H; 2], want: StreamType) {
    let (ch, _guard, exit) = spawn_ipc_child(lp, &["send_recv"]);
    let ids: Vec<_> = handles.iter().map(|&h| identity(lp.fileno(h).unwrap())).collect();
    lp.write2(ch, b"1", handles[0], None).unwrap();
    lp.write2(ch, b"2", handles[1], None).unwrap();
    for h in handles {
        lp.close(h, None).unwrap();
    }
    let back = Rc::new(RefCell::new(Vec::new()));
    let bytes = Rc::new(RefCell::new(Vec::new()));
    let (bk, by) = (back.clone(), bytes.clone());
    lp.read_start(
        ch,
        &OnRead::new(move |lp, _, ch, res| {
            let data = res.expect("channel read");
            while lp.pending_count(ch).unwrap() > 0 {
                assert_eq!(lp.pending_type(ch).unwrap(), Some(want));
                let h = lp.accept_pending(ch).unwrap();
                match (want, h) {
                    (StreamType::Tcp, PendingHandle::TcpSocket(_)) => {
                        assert_eq!(lp.handle_type(h).unwrap(), HandleType::Tcp)
                    }
                    (StreamType::Pipe, PendingHandle::PipeSocket(_)) => {
                        assert_eq!(lp.handle_type(h).unwrap(), HandleType::Pipe)
                    }
                    _ => panic!("a bound {want:?} socket came back as {h:?}"),
                }
                bk.borrow_mut().push(identity(lp.fileno(h).unwrap()));
                lp.close(h, None).unwrap();
            }
            by.borrow_mut().extend_from_slice(data);
        }),
    )
    .unwrap();
    run_until(lp, LIMIT, |_| back.borrow().len() == 2 && bytes.borrow().len() == 2);
    assert_eq!(*back.borrow(), ids, "the same sockets came back, in order");
    assert_eq!(&*bytes.borrow(), b"12");
    finish(lp, ch, &exit);
}

fn temp_path(name: &str) -> std::path::PathBuf {
    let p = std::env::temp_dir().join(format!("uvring-ipc-{}-{}", name, std::process::id()));
    let _ = std::fs::remove_file(&p);
    p
}

both_backends! {
    fn ipc_listen_before_write(lp) {
        listen_shared_with_child(lp, "listen_before_write");
    }

    fn ipc_listen_after_write(lp) {
        listen_shared_with_child(lp, "listen_after_write");
    }

    fn ipc_tcp_connection(lp) {
        let (ch, _guard, exit) = spawn_ipc_child(lp, &["tcp_connection"]);
        let text = Rc::new(RefCell::new(Vec::new()));
        let port = Rc::new(Cell::new(None::<u16>));
        let reply = Rc::new(RefCell::new(Vec::new()));
        let (t, p, r) = (text.clone(), port.clone(), reply.clone());
        lp.read_start(ch, &OnRead::new(move |lp, _, ch, res| {
            let data = res.expect("channel read");
            while lp.pending_count(ch).unwrap() > 0 {
                // The child's accepted connection, whose copy it closed.
                let PendingHandle::TcpStream(conn) = lp.accept_pending(ch).unwrap() else {
                    panic!("a TCP connection arrives as a TcpStream")
                };
                assert_eq!(lp.stream_type(conn).unwrap(), StreamType::Tcp);
                lp.write(conn, b"world\n", None).unwrap();
                let r = r.clone();
                lp.read_start(conn, &OnRead::new(move |lp, _, conn, res| {
                    r.borrow_mut().extend_from_slice(res.expect("read on the passed connection"));
                    if r.borrow().ends_with(b"\n") {
                        lp.close(conn, None).unwrap();
                    }
                })).unwrap();
            }
            t.borrow_mut().extend_from_slice(data);
            let s = String::from_utf8_lossy(&t.borrow()).into_owned();
            if let Some(n) = s.strip_prefix("port ").and_then(|r| r.split('\n').next()) {
                p.set(n.parse().ok());
            }
        })).unwrap();
        run_until(lp, LIMIT, |_| port.get().is_some());
        let addr: SocketAddr = ([127, 0, 0, 1], port.get().unwrap()).into();
        let (done, wake, sender) = thread_done(lp);
        let d = done.clone();
        let client = std::thread::spawn(move || {
            let mut s = std::net::TcpStream::connect(addr).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            let mut buf = [0u8; 6];
            s.read_exact(&mut buf).unwrap();
            assert_eq!(&buf, b"world\n");
            s.write_all(b"hello again\n").unwrap();
            let mut rest = Vec::new();
            s.read_to_end(&mut rest).unwrap();
            d.store(true, Ordering::Release);
            sender.send();
        });
        run_until(lp, LIMIT, |_| done.load(Ordering::Acquire));
        lp.close(wake, None).unwrap();
        client.join().unwrap();
        assert_eq!(&*reply.borrow(), b"hello again\n");
        assert!(String::from_utf8_lossy(&text.borrow()).ends_with("\nhello\n"));
        finish(lp, ch, &exit);
    }

    fn ipc_listen_after_bind_twice(lp) {
        let (ch, _guard, exit) = spawn_ipc_child(lp, &["bind_twice"]);
        let got = Rc::new(RefCell::new(Vec::new()));
        let bytes = Rc::new(RefCell::new(Vec::new()));
        let (g, b) = (got.clone(), bytes.clone());
        lp.read_start(ch, &OnRead::new(move |lp, _, ch, res| {
            let data = res.expect("channel read");
            while lp.pending_count(ch).unwrap() > 0 {
                assert_eq!(lp.pending_type(ch).unwrap(), Some(StreamType::Tcp));
                // Bound, not listening: a TcpSocket, on which `listen` works.
                match lp.accept_pending(ch).unwrap() {
                    PendingHandle::TcpSocket(s) => g.borrow_mut().push(s),
                    other => panic!("a bound TCP socket arrives as a TcpSocket, not {other:?}"),
                }
            }
            b.borrow_mut().extend_from_slice(data);
        })).unwrap();
        run_until(lp, LIMIT, |_| got.borrow().len() == 2 && bytes.borrow().len() == 12);
        assert_eq!(&*bytes.borrow(), b"hello\nworld\n");
        let (first, second) = (got.borrow()[0], got.borrow()[1]);
        assert_eq!(lp.tcp_getsockname(first).unwrap(), lp.tcp_getsockname(second).unwrap());
        let on_conn = OnConnection::new(|_, _, _, _| {});
        let first = lp.listen(first, 16, &on_conn).unwrap();
        assert_eq!(lp.listen(second, 16, &on_conn), Err(Error::EADDRINUSE));
        lp.close(first, None).unwrap();
        lp.close(second, None).unwrap();
        finish(lp, ch, &exit);
    }

    fn ipc_send_zero(lp) {
        let (ch, _guard, exit) = spawn_ipc_child(lp, &["idle"]);
        let status = Rc::new(Cell::new(None));
        let s = status.clone();
        lp.write(ch, b"", Some(&OnWrite::new(move |_, _, _, res| s.set(Some(res))))).unwrap();
        run_until(lp, LIMIT, |_| status.get().is_some());
        assert_eq!(status.get(), Some(Ok(())));
        finish(lp, ch, &exit);
    }

    fn ipc_send_recv_tcp(lp) {
        let a = lp.tcp_init().unwrap();
        lp.tcp_bind(a, "127.0.0.1:0".parse().unwrap(), 0).unwrap();
        let b = lp.tcp_init().unwrap();
        lp.tcp_bind(b, "127.0.0.1:0".parse().unwrap(), 0).unwrap();
        send_recv(lp, [a, b], StreamType::Tcp);
    }

    fn ipc_send_recv_pipe(lp) {
        let (p1, p2) = (temp_path("recv1"), temp_path("recv2"));
        let a = lp.pipe_init(false).unwrap();
        lp.pipe_bind(a, &p1).unwrap();
        let b = lp.pipe_init(false).unwrap();
        lp.pipe_bind(b, &p2).unwrap();
        send_recv(lp, [a, b], StreamType::Pipe);
        assert!(!p1.exists() && !p2.exists(), "the close removed the paths");
    }

    fn ipc_heavy_traffic_deadlock_bug(lp) {
        // Both sides queue 256 writes of 3 x 8 KiB before reading.
        const WRITES: usize = 256;
        const TOTAL: u64 = (WRITES * 3 * 8192) as u64;
        let (ch, _guard, exit) = spawn_ipc_child(lp, &["heavy"]);
        let mut off = 0u64;
        let mut buf = vec![0u8; 8192];
        for _ in 0..WRITES * 3 {
            for b in buf.iter_mut() {
                *b = pattern(off);
                off += 1;
            }
            lp.write(ch, &buf, None).unwrap();
        }
        let got = Rc::new(Cell::new(0u64));
        let eof = Rc::new(Cell::new(false));
        let (g, e) = (got.clone(), eof.clone());
        lp.read_start(ch, &OnRead::new(move |lp, _, s, res| match res {
            Ok(data) => {
                for &b in data {
                    assert_eq!(b, pattern(g.get()), "byte {} corrupted", g.get());
                    g.set(g.get() + 1);
                }
                if g.get() == TOTAL {
                    lp.shutdown(s, None).unwrap();
                }
            }
            Err(err) => {
                assert_eq!(err, Error::EOF);
                e.set(true);
                lp.close(s, None).unwrap();
            }
        })).unwrap();
        run_until(lp, LIMIT, |_| eof.get());
        assert_eq!(got.get(), TOTAL);
        finish(lp, ch, &exit);
    }

    fn ipc_many_handles_in_order(lp) {
        // 1,000 handles, each with a 64 KiB write; at most 16 writes queued.
        const N: u32 = 1000;
        const WRITE: usize = 64 * 1024;
        const WINDOW: u32 = 16;
        let fds_at_start = fd_count();
        let (ch, guard, exit) = spawn_ipc_child(lp, &["many_handles", &N.to_string()]);
        let next = Rc::new(Cell::new(0u32));
        let done = Rc::new(Cell::new(0u32));
        let buf = Rc::new(RefCell::new(vec![0u8; WRITE]));
        let send_next: Rc<dyn Fn(&mut Loop)> = {
            let (next, buf) = (next.clone(), buf.clone());
            let on_write = OnWrite::new({
                let done = done.clone();
                move |_, _, _, res| {
                    res.unwrap();
                    done.set(done.get() + 1);
                }
            });
            Rc::new(move |lp: &mut Loop| {
                let i = next.get();
                next.set(i + 1);
                // The handle: a socket whose peer wrote `i` and closed.
                let (x, y) = uvring::os::socketpair(true).unwrap();
                let mut peer = std::os::unix::net::UnixStream::from(y);
                peer.write_all(&i.to_le_bytes()).unwrap();
                drop(peer);
                let mut data = buf.borrow_mut();
                for (j, b) in data.iter_mut().enumerate() {
                    *b = pattern(i as u64 * 7 + j as u64);
                }
                let mut batch = FdBatch::new();
                batch.push(x).unwrap();
                lp.write_fds(ch, &data, &mut batch, Some(&on_write)).unwrap();
            })
        };
        let report = Rc::new(RefCell::new(Vec::new()));
        let r = report.clone();
        lp.read_start(ch, &OnRead::new(move |_, _, _, res| {
            r.borrow_mut().extend_from_slice(res.expect("channel read"));
        })).unwrap();
        run_until(lp, Duration::from_secs(120), |lp| {
            while next.get() < N && next.get() - done.get() < WINDOW {
                send_next(lp);
            }
            report.borrow().ends_with(b"\n")
        });
        assert_eq!(done.get(), N);
        let text = String::from_utf8_lossy(&report.borrow()).into_owned();
        let words: Vec<&str> = text.split_whitespace().collect();
        assert_eq!(words.first(), Some(&"ok"), "child report: {text}");
        assert_eq!(words[1], words[2], "the child's fd count did not return to its start: {text}");
        finish(lp, ch, &exit);
        drop(guard);
        assert_eq!(fd_count(), fds_at_start, "the parent's fd count did not return to its start");
    }
}

#[test]
fn child_guard_kills_and_reaps() {
    // A test that fails leaves no orphan: dropping the guard kills the child.
    let guard = uvring_tests::TestGuard::new();
    let mut child = std::process::Command::new(child_exe()).arg("sleep").spawn().unwrap();
    let pid = child.id() as i32;
    drop(ChildGuard::new(pid));
    assert_eq!(child.try_wait().ok().flatten().map(|_| ()), None, "already reaped by the guard");
    // SAFETY: signal 0 checks existence only; the pid was reaped, so it is gone.
    assert_eq!(unsafe { libc::kill(pid, 0) }, -1);
    guard.check_fds();
}
