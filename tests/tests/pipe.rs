//! Pipes and fd passing within one process: Unix-domain bind/listen/connect,
//! open from an fd, libuv's pipe_sendmsg (4 fds in one raw SCM_RIGHTS
//! message), several fds per write, `MSG_CTRUNC`, type checks on accept, and
//! fd ownership (dup at send time, nothing sent twice, nothing leaked).

use std::cell::{Cell, RefCell};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::rc::Rc;
use std::time::Duration;
use uvring::os::socketpair;
use uvring::*;
use uvring_tests::{both_backends, run_until};

const LIMIT: Duration = Duration::from_secs(10);

/// (device, inode) of an fd: the identity of the open socket behind it.
fn identity(fd: RawFd) -> (u64, u64) {
    // SAFETY: stat is plain data; fstat fills it for a valid fd.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `st` is valid for writes.
    assert_eq!(unsafe { libc::fstat(fd, &mut st) }, 0);
    (st.st_dev, st.st_ino)
}

/// A raw `sendmsg` of `data` with `fds` in one SCM_RIGHTS message, as
/// libuv's pipe_sendmsg test does (not limited to the engine's 64).
fn raw_sendmsg(fd: RawFd, data: &[u8], fds: &[RawFd]) {
    let space = unsafe { libc::CMSG_SPACE(std::mem::size_of_val(fds) as u32) } as usize;
    let mut control = vec![0u64; space / 8 + 1];
    let mut iov = libc::iovec { iov_base: data.as_ptr() as *mut _, iov_len: data.len() };
    // SAFETY: msghdr is plain data; the pointers set below outlive the call.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = space;
    // SAFETY: `control` holds CMSG_SPACE(fds) bytes, u64-aligned.
    unsafe {
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        (*cmsg).cmsg_level = libc::SOL_SOCKET;
        (*cmsg).cmsg_type = libc::SCM_RIGHTS;
        (*cmsg).cmsg_len = libc::CMSG_LEN(std::mem::size_of_val(fds) as u32) as usize;
        std::ptr::copy_nonoverlapping(fds.as_ptr(), libc::CMSG_DATA(cmsg).cast::<RawFd>(), fds.len());
        assert_eq!(libc::sendmsg(fd, &msg, 0), data.len() as isize, "raw sendmsg");
    }
}

/// Reads a stream into a shared buffer, recording errors; closes at EOF.
#[allow(clippy::type_complexity)]
fn reader(lp: &mut Loop, s: PipeStream) -> (Rc<RefCell<Vec<u8>>>, Rc<RefCell<Vec<Error>>>) {
    let buf = Rc::new(RefCell::new(Vec::new()));
    let errs = Rc::new(RefCell::new(Vec::new()));
    let (b, e) = (buf.clone(), errs.clone());
    lp.read_start(
        s,
        &OnRead::new(move |_, _, _, res| match res {
            Ok(data) => b.borrow_mut().extend_from_slice(data),
            Err(err) => e.borrow_mut().push(err),
        }),
    )
    .unwrap();
    (buf, errs)
}

fn temp_path(name: &str) -> std::path::PathBuf {
    let p = std::env::temp_dir().join(format!("uvring-{}-{}-{}", name, std::process::id(), uvring_tests::fd_count()));
    let _ = std::fs::remove_file(&p);
    p
}

both_backends! {
    fn pipe_bind_listen_connect_echo(lp) {
        let path = temp_path("echo");
        let server = lp.pipe_init(false).unwrap();
        lp.pipe_bind(server, &path).unwrap();
        let on_read = OnRead::new(|lp, _, s, res| match res {
            Ok(data) => lp.write(s, data, None).unwrap(),
            Err(_) => lp.close(s, None).unwrap(),
        });
        let server = lp.listen(server, 16, &OnConnection::new(move |lp, _, srv, res| {
            res.unwrap();
            let c = lp.accept(srv).unwrap();
            assert_eq!(lp.stream_type(c).unwrap(), StreamType::Pipe);
            lp.read_start(c, &on_read).unwrap();
            lp.close(srv, None).unwrap();
        })).unwrap();
        let client = lp.pipe_init(false).unwrap();
        let got = Rc::new(RefCell::new(Vec::new()));
        let g = got.clone();
        let client = lp.pipe_connect(client, &path, &OnConnect::new(move |lp, _, c, res| {
            res.unwrap();
            lp.write(c, b"over a named pipe", None).unwrap();
            let g = g.clone();
            lp.read_start(c, &OnRead::new(move |lp, _, c, res| {
                g.borrow_mut().extend_from_slice(res.unwrap());
                if g.borrow().len() == 17 {
                    lp.close(c, None).unwrap();
                }
            })).unwrap();
        })).unwrap();
        lp.run(RunMode::Default, &mut ()).unwrap();
        assert!(!lp.is_live(server) && !lp.is_live(client));
        assert_eq!(&*got.borrow(), b"over a named pipe");
        std::fs::remove_file(&path).unwrap();
    }

    fn pipe_connect_to_missing_path_fails(lp) {
        let client = lp.pipe_init(false).unwrap();
        let status = Rc::new(Cell::new(None));
        let s = status.clone();
        lp.pipe_connect(client, &temp_path("missing"), &OnConnect::new(move |lp, _, c, res| {
            s.set(Some(res));
            lp.close(c, None).unwrap();
        })).unwrap();
        lp.run(RunMode::Default, &mut ()).unwrap();
        assert_eq!(status.get(), Some(Err(Error::ENOENT)));
    }

    fn pipe_bind_existing_path_is_eaddrinuse(lp) {
        let path = temp_path("inuse");
        let a = lp.pipe_init(false).unwrap();
        lp.pipe_bind(a, &path).unwrap();
        let b = lp.pipe_init(false).unwrap();
        assert_eq!(lp.pipe_bind(b, &path), Err(Error::EADDRINUSE));
        lp.close(a, None).unwrap();
        lp.close(b, None).unwrap();
        lp.run(RunMode::Default, &mut ()).unwrap();
        std::fs::remove_file(&path).unwrap();
    }

    fn pipe_open_refuses_non_sockets_as_ipc_pipes(lp) {
        // A non-socket is a plain stream (tests/tests/stdin.rs); it cannot
        // carry handles.
        let file: OwnedFd = std::fs::File::open("/dev/null").unwrap().into();
        assert_eq!(lp.pipe_open(file, true), Err(Error::from_errno(libc::ENOTSOCK)));
        // No handle is left behind, and the fd was closed (the harness checks).
        assert_eq!(lp.handle_count(), 0);
        lp.run(RunMode::Default, &mut ()).unwrap();
    }

    fn pipe_sendmsg(lp) {
        // libuv's pipe_sendmsg: four fds in one raw SCM_RIGHTS message with
        // one byte; all four arrive, as pipes, in order.
        let (raw, ours) = socketpair(true).unwrap();
        let ipc = lp.pipe_open(ours, true).unwrap();
        let pairs: Vec<(OwnedFd, OwnedFd)> = (0..4).map(|_| socketpair(true).unwrap()).collect();
        let sent: Vec<RawFd> = pairs.iter().map(|(a, _)| a.as_raw_fd()).collect();
        raw_sendmsg(raw.as_raw_fd(), b"x", &sent);
        let ids: Vec<_> = sent.iter().map(|&fd| identity(fd)).collect();
        drop(pairs);
        let received = Rc::new(RefCell::new(Vec::new()));
        let r = received.clone();
        lp.read_start(ipc, &OnRead::new(move |lp, _, s, res| {
            assert_eq!(res.unwrap(), b"x");
            assert_eq!(lp.pending_count(s).unwrap(), 4);
            while lp.pending_count(s).unwrap() > 0 {
                assert_eq!(lp.pending_type(s).unwrap(), Some(StreamType::Pipe));
                let PendingHandle::PipeStream(p) = lp.accept_pending(s).unwrap() else {
                    panic!("a connected Unix socket arrives as a PipeStream")
                };
                assert_eq!(lp.stream_type(p).unwrap(), StreamType::Pipe);
                r.borrow_mut().push(identity(lp.fileno(p).unwrap()));
                lp.close(p, None).unwrap();
            }
            assert_eq!(lp.pending_type(s).unwrap(), None);
            lp.close(s, None).unwrap();
        })).unwrap();
        run_until(lp, LIMIT, |_| received.borrow().len() == 4);
        lp.run(RunMode::Default, &mut ()).unwrap();
        assert_eq!(*received.borrow(), ids);
    }

    fn write_fds_sends_several_fds_in_one_message(lp) {
        let (a, b) = lp.pipe_pair(true).unwrap();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let (u1, _u1_peer) = socketpair(true).unwrap();
        let (u2, _u2_peer) = socketpair(true).unwrap();
        let ids = vec![identity(listener.as_raw_fd()), identity(u1.as_raw_fd()), identity(u2.as_raw_fd())];
        let mut batch = FdBatch::new();
        batch.push(OwnedFd::from(listener)).unwrap();
        batch.push(u1).unwrap();
        batch.push(u2).unwrap();
        let wrote = Rc::new(Cell::new(false));
        let w = wrote.clone();
        lp.write_fds(a, b"three", &mut batch, Some(&OnWrite::new(move |_, _, _, res| {
            res.unwrap();
            w.set(true);
        }))).unwrap();
        assert!(batch.is_empty(), "ownership passed to the loop");
        let got = Rc::new(RefCell::new(Vec::new()));
        let types = Rc::new(RefCell::new(Vec::new()));
        let (g, t) = (got.clone(), types.clone());
        lp.read_start(b, &OnRead::new(move |lp, _, s, res| {
            res.unwrap();
            while let Some(ty) = lp.pending_type(s).unwrap() {
                t.borrow_mut().push(ty);
                let fd = lp.accept_pending_fd(s).unwrap();
                g.borrow_mut().push(identity(fd.as_raw_fd()));
            }
        })).unwrap();
        run_until(lp, LIMIT, |_| got.borrow().len() == 3 && wrote.get());
        assert_eq!(*got.borrow(), ids);
        assert_eq!(*types.borrow(), [StreamType::Tcp, StreamType::Pipe, StreamType::Pipe]);
        lp.close(a, None).unwrap();
        lp.close(b, None).unwrap();
        lp.run(RunMode::Default, &mut ()).unwrap();
    }

    fn fds_after_a_zero_length_write_still_travel(lp) {
        let (a, b) = lp.pipe_pair(true).unwrap();
        let done = Rc::new(Cell::new(0));
        let on_write = OnWrite::new({
            let d = done.clone();
            move |_, _, _, res| {
                res.unwrap();
                d.set(d.get() + 1);
            }
        });
        lp.write(a, b"", Some(&on_write)).unwrap();
        let (x, _y) = socketpair(true).unwrap();
        let mut batch = FdBatch::new();
        batch.push(x).unwrap();
        lp.write_fds(a, b"f", &mut batch, Some(&on_write)).unwrap();
        let (buf, _) = reader(lp, b);
        run_until(lp, LIMIT, |lp| done.get() == 2 && buf.borrow().len() == 1 && lp.pending_count(b).unwrap() == 1);
        // Received fds are close-on-exec.
        let fd = lp.accept_pending_fd(b).unwrap();
        // SAFETY: F_GETFD on an fd we own.
        let flags = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFD) };
        assert_ne!(flags & libc::FD_CLOEXEC, 0);
        drop(fd);
        lp.close(a, None).unwrap();
        lp.close(b, None).unwrap();
        lp.run(RunMode::Default, &mut ()).unwrap();
    }

    fn write2_dups_the_handle_at_call_time(lp) {
        // The sender may close its handle right after write2.
        let (a, b) = lp.pipe_pair(true).unwrap();
        let server = lp.tcp_init().unwrap();
        lp.tcp_bind(server, "127.0.0.1:0".parse().unwrap(), 0).unwrap();
        let addr = lp.tcp_getsockname(server).unwrap();
        lp.write2(a, b"L", server, None).unwrap();
        lp.close(server, None).unwrap();
        let got = Rc::new(Cell::new(None));
        let g = got.clone();
        lp.read_start(b, &OnRead::new(move |lp, _, s, res| {
            assert_eq!(res.unwrap(), b"L");
            // A bound socket, neither listening nor connected: a TcpSocket.
            let h = match lp.accept_pending(s).unwrap() {
                PendingHandle::TcpSocket(h) => h,
                other => panic!("a bound TCP socket arrives as a TcpSocket, not {other:?}"),
            };
            assert_eq!(lp.handle_type(h).unwrap(), HandleType::Tcp);
            g.set(Some(lp.tcp_getsockname(h).unwrap()));
            lp.close(h, None).unwrap();
            lp.close(s, None).unwrap();
        })).unwrap();
        run_until(lp, LIMIT, |_| got.get().is_some());
        assert_eq!(got.get(), Some(addr));
        lp.close(a, None).unwrap();
        lp.run(RunMode::Default, &mut ()).unwrap();
    }

    fn fd_writes_need_an_ipc_pipe_and_a_byte(lp) {
        let (a, b) = lp.pipe_pair(false).unwrap();
        let (x, y) = lp.pipe_pair(true).unwrap();
        let mut batch = FdBatch::new();
        batch.push(std::fs::File::open("/dev/null").unwrap().into()).unwrap();
        assert_eq!(lp.write_fds(a, b"no", &mut batch, None), Err(Error::EINVAL));
        assert_eq!(lp.write_fds(x, b"", &mut batch, None), Err(Error::EINVAL));
        assert_eq!(batch.len(), 1, "a refused batch keeps its fds");
        drop(batch);
        for s in [a, b, x, y] {
            lp.close(s, None).unwrap();
        }
        lp.run(RunMode::Default, &mut ()).unwrap();
    }

    /// `accept_pending` types each handle by what arrived (this replaces
    /// `accept_pending_into`, whose type check is now done by the types): a
    /// bound TCP socket is a TcpSocket (on which `listen` works), a listening
    /// one too, a TCP connection a TcpStream, a listening Unix socket a
    /// PipeSocket, a connected one a PipeStream; an fd that is no stream
    /// socket is WRONG_TYPE and stays pending (for `accept_pending_fd`).
    fn accept_pending_types_what_arrived(lp) {
        let (a, b) = lp.pipe_pair(true).unwrap();
        // A bound TCP socket.
        let bound = lp.tcp_init().unwrap();
        lp.tcp_bind(bound, "127.0.0.1:0".parse().unwrap(), 0).unwrap();
        let bound_addr = lp.tcp_getsockname(bound).unwrap();
        lp.write2(a, b"B", bound, None).unwrap();
        lp.close(bound, None).unwrap();
        // A listening TCP socket.
        let (tcp_listener, listener_addr) = uvring_tests::listener(lp, &OnConnection::new(|_, _, _, _| {}));
        lp.write2(a, b"L", tcp_listener, None).unwrap();
        lp.close(tcp_listener, None).unwrap();
        // A TCP connection.
        let std_listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let conn = lp.tcp_from_std_stream(std::net::TcpStream::connect(std_listener.local_addr().unwrap()).unwrap()).unwrap();
        let conn_local = lp.tcp_getsockname(conn).unwrap();
        lp.write2(a, b"C", conn, None).unwrap();
        lp.close(conn, None).unwrap();
        // A listening Unix socket.
        let path = temp_path("pending-listener");
        let pl = lp.pipe_init(false).unwrap();
        lp.pipe_bind(pl, &path).unwrap();
        let pl = lp.listen(pl, 4, &OnConnection::new(|_, _, _, _| {})).unwrap();
        lp.write2(a, b"P", pl, None).unwrap();
        lp.close(pl, None).unwrap();
        // A connected Unix socket.
        let (x, y) = lp.pipe_pair(false).unwrap();
        let x_id = identity(lp.fileno(x).unwrap());
        lp.write2(a, b"S", x, None).unwrap();
        lp.close(x, None).unwrap();
        // Not a socket at all.
        let mut batch = FdBatch::new();
        batch.push(std::fs::File::open("/dev/null").unwrap().into()).unwrap();
        lp.write_fds(a, b"F", &mut batch, None).unwrap();

        let (buf, errs) = reader(lp, b);
        run_until(lp, LIMIT, |lp| lp.pending_count(b).unwrap() == 6 && buf.borrow().len() == 6);
        assert!(errs.borrow().is_empty());
        assert_eq!(&*buf.borrow(), b"BLCPSF");

        assert_eq!(lp.pending_type(b).unwrap(), Some(StreamType::Tcp));
        let PendingHandle::TcpSocket(bound) = lp.accept_pending(b).unwrap() else { panic!("bound: a TcpSocket") };
        assert_eq!(lp.tcp_getsockname(bound).unwrap(), bound_addr);
        // It can listen.
        let bound = lp.listen(bound, 4, &OnConnection::new(|_, _, _, _| {})).unwrap();
        assert_eq!(lp.tcp_getsockname(bound).unwrap(), bound_addr);

        assert_eq!(lp.pending_type(b).unwrap(), Some(StreamType::Tcp));
        let PendingHandle::TcpSocket(listening) = lp.accept_pending(b).unwrap() else {
            panic!("listening: a TcpSocket")
        };
        assert_eq!(lp.tcp_getsockname(listening).unwrap(), listener_addr);
        let listening = lp.listen(listening, 4, &OnConnection::new(|_, _, _, _| {})).unwrap();

        assert_eq!(lp.pending_type(b).unwrap(), Some(StreamType::Tcp));
        let PendingHandle::TcpStream(conn) = lp.accept_pending(b).unwrap() else { panic!("connection: a TcpStream") };
        assert_eq!(lp.stream_type(conn).unwrap(), StreamType::Tcp);
        assert_eq!(lp.tcp_getsockname(conn).unwrap(), conn_local);
        assert_eq!(lp.tcp_getpeername(conn).unwrap(), std_listener.local_addr().unwrap());

        assert_eq!(lp.pending_type(b).unwrap(), Some(StreamType::Pipe));
        let PendingHandle::PipeSocket(pl) = lp.accept_pending(b).unwrap() else {
            panic!("listening Unix socket: a PipeSocket")
        };
        let pl = lp.listen(pl, 4, &OnConnection::new(|_, _, _, _| {})).unwrap();

        assert_eq!(lp.pending_type(b).unwrap(), Some(StreamType::Pipe));
        let PendingHandle::PipeStream(x) = lp.accept_pending(b).unwrap() else {
            panic!("connected Unix socket: a PipeStream")
        };
        assert_eq!(lp.stream_type(x).unwrap(), StreamType::Pipe);
        assert_eq!(identity(lp.fileno(x).unwrap()), x_id);

        assert_eq!(lp.pending_type(b), Err(Error::WRONG_TYPE));
        assert_eq!(lp.accept_pending(b), Err(Error::WRONG_TYPE));
        assert_eq!(lp.pending_count(b).unwrap(), 1, "a mismatch leaves the handle pending");
        drop(lp.accept_pending_fd(b).unwrap());
        assert_eq!(lp.pending_count(b).unwrap(), 0);
        assert_eq!(lp.accept_pending(b), Err(Error::EAGAIN));
        for h in [a.id(), b.id(), bound.id(), listening.id(), conn.id(), pl.id(), x.id(), y.id()] {
            lp.close(h, None).unwrap();
        }
        lp.run(RunMode::Default, &mut ()).unwrap();
        std::fs::remove_file(&path).unwrap();
    }

    fn closing_the_pipe_closes_unaccepted_fds(lp) {
        // The harness checks the fd count at the end: the 10 received fds
        // never accepted must be closed with the pipe.
        let (a, b) = lp.pipe_pair(true).unwrap();
        for _ in 0..10 {
            let (x, _y) = socketpair(true).unwrap();
            let mut batch = FdBatch::new();
            batch.push(x).unwrap();
            lp.write_fds(a, b"h", &mut batch, None).unwrap();
        }
        let (buf, _) = reader(lp, b);
        run_until(lp, LIMIT, |_| buf.borrow().len() == 10);
        assert_eq!(lp.pending_count(b).unwrap(), 10);
        lp.close(a, None).unwrap();
        lp.close(b, None).unwrap();
        lp.run(RunMode::Default, &mut ()).unwrap();
    }

    fn partial_writes_never_send_an_fd_twice(lp) {
        // Large writes with fds go out in several sends while the reader is
        // slow; each fd still arrives exactly once, with its write's bytes.
        const SIZE: usize = 4 << 20;
        let (a, b) = lp.pipe_pair(true).unwrap();
        let data: Vec<u8> = (0..SIZE).map(|i| (i % 249) as u8).collect();
        for _ in 0..3 {
            let (x, _y) = socketpair(true).unwrap();
            let mut batch = FdBatch::new();
            batch.push(x).unwrap();
            lp.write_fds(a, &data, &mut batch, None).unwrap();
        }
        let total = Rc::new(Cell::new(0usize));
        let handles = Rc::new(Cell::new(0usize));
        let (t, h) = (total.clone(), handles.clone());
        lp.read_start(b, &OnRead::new(move |lp, _, s, res| {
            let chunk = res.unwrap();
            while let Ok(fd) = lp.accept_pending_fd(s) {
                drop(fd);
                h.set(h.get() + 1);
            }
            for (k, &byte) in chunk.iter().enumerate() {
                assert_eq!(byte, ((t.get() + k) % SIZE % 249) as u8);
            }
            t.set(t.get() + chunk.len());
            assert_eq!(h.get(), t.get().div_ceil(SIZE), "fds out of step at {}", t.get());
        })).unwrap();
        run_until(lp, Duration::from_secs(30), |_| total.get() == 3 * SIZE);
        assert_eq!(handles.get(), 3);
        lp.close(a, None).unwrap();
        lp.close(b, None).unwrap();
        lp.run(RunMode::Default, &mut ()).unwrap();
    }

    fn ipc_control_truncated(lp) {
        // 100 fds in one message, more than the receive buffer's control
        // space (64): the read callback gets CONTROL_TRUNCATED, no fd is
        // left pending, and none leaks (the harness counts).
        let (raw, ours) = socketpair(true).unwrap();
        let ipc = lp.pipe_open(ours, true).unwrap();
        let files: Vec<OwnedFd> = (0..100).map(|_| std::fs::File::open("/dev/null").unwrap().into()).collect();
        let fds: Vec<RawFd> = files.iter().map(|f| f.as_raw_fd()).collect();
        raw_sendmsg(raw.as_raw_fd(), b"t", &fds);
        drop(files);
        // A normal handle after it still arrives.
        let (x, _y) = socketpair(true).unwrap();
        raw_sendmsg(raw.as_raw_fd(), b"n", &[x.as_raw_fd()]);
        drop(x);
        let (buf, errs) = reader(lp, ipc);
        run_until(lp, LIMIT, |_| buf.borrow().len() == 2);
        assert_eq!(*errs.borrow(), [Error::CONTROL_TRUNCATED]);
        assert_eq!(&*buf.borrow(), b"tn");
        assert_eq!(lp.pending_count(ipc).unwrap(), 1);
        assert_eq!(lp.pending_type(ipc).unwrap(), Some(StreamType::Pipe));
        lp.close(ipc, None).unwrap();
        lp.run(RunMode::Default, &mut ()).unwrap();
    }

    fn accept_fd_takes_a_connection_without_a_handle(lp) {
        let server = lp.tcp_init().unwrap();
        lp.tcp_bind(server, "127.0.0.1:0".parse().unwrap(), 0).unwrap();
        let taken = Rc::new(RefCell::new(None));
        let t = taken.clone();
        let server = lp.listen(server, 16, &OnConnection::new(move |lp, _, srv, res| {
            res.unwrap();
            *t.borrow_mut() = Some(lp.accept_fd(srv).unwrap());
            assert_eq!(lp.accept_fd(srv).unwrap_err(), Error::EAGAIN);
            lp.close(srv, None).unwrap();
        })).unwrap();
        let addr = lp.tcp_getsockname(server).unwrap();
        let client = std::net::TcpStream::connect(addr).unwrap();
        run_until(lp, LIMIT, |_| taken.borrow().is_some());
        lp.run(RunMode::Default, &mut ()).unwrap();
        let fd = taken.borrow_mut().take().unwrap();
        let s = lp.tcp_open_stream(fd).unwrap();
        assert_eq!(lp.tcp_getpeername(s).unwrap(), client.local_addr().unwrap());
        lp.close(s, None).unwrap();
        lp.run(RunMode::Default, &mut ()).unwrap();
    }

    /// write_fds_borrowed sends the caller's fds without taking them: they
    /// arrive (the same sockets), and stay open and the caller's after the
    /// write completed (the harness counts fds at the end).
    fn write_fds_borrowed_leaves_the_fds_with_the_caller(lp) {
        let (a, b) = lp.pipe_pair(true).unwrap();
        let (u1, _u1_peer) = socketpair(true).unwrap();
        let (u2, _u2_peer) = socketpair(true).unwrap();
        let ids = vec![identity(u1.as_raw_fd()), identity(u2.as_raw_fd())];
        let wrote = Rc::new(Cell::new(0));
        let on_write = {
            let w = wrote.clone();
            OnWrite::new(move |_, _, _, res| {
                res.unwrap();
                w.set(w.get() + 1);
            })
        };
        // SAFETY: u1 and u2 live until the end of the test, after the write
        // callback ran.
        unsafe { lp.write_fds_borrowed(a, b"two", &[u1.as_raw_fd(), u2.as_raw_fd()], Some(&on_write)) }.unwrap();
        // SAFETY: as above; no fds: a plain write.
        unsafe { lp.write_fds_borrowed(a, b"-", &[], Some(&on_write)) }.unwrap();
        let got = Rc::new(RefCell::new(Vec::new()));
        let g = got.clone();
        lp.read_start(b, &OnRead::new(move |lp, _, s, res| {
            res.unwrap();
            while let Ok(fd) = lp.accept_pending_fd(s) {
                g.borrow_mut().push(identity(fd.as_raw_fd()));
            }
        })).unwrap();
        run_until(lp, LIMIT, |_| got.borrow().len() == 2 && wrote.get() == 2);
        assert_eq!(*got.borrow(), ids);
        // Still open, still the same sockets.
        assert_eq!(identity(u1.as_raw_fd()), ids[0]);
        assert_eq!(identity(u2.as_raw_fd()), ids[1]);
        lp.close(a, None).unwrap();
        lp.close(b, None).unwrap();
        lp.run(RunMode::Default, &mut ()).unwrap();
        drop((u1, u2));
    }

    /// A borrowed write cancelled by close (or failed) leaves the fds open:
    /// the callback reports ECANCELED and the caller closes them after.
    fn write_fds_borrowed_cancelled_by_close(lp) {
        let (a, b) = lp.pipe_pair(true).unwrap();
        // Fill a's send buffer (nobody reads b) so the borrowed write queues.
        let big = vec![7u8; 1 << 20];
        lp.write(a, &big, None).unwrap();
        let (x, _x_peer) = socketpair(true).unwrap();
        let id = identity(x.as_raw_fd());
        let status = Rc::new(RefCell::new(None));
        let st = status.clone();
        let on_write = OnWrite::new(move |_, _, _, res| *st.borrow_mut() = Some(res));
        // SAFETY: x lives until after the pipe is closed and freed below.
        unsafe { lp.write_fds_borrowed(a, b"x", &[x.as_raw_fd()], Some(&on_write)) }.unwrap();
        lp.run(RunMode::NoWait, &mut ()).unwrap();
        lp.close(a, None).unwrap();
        lp.close(b, None).unwrap();
        lp.run(RunMode::Default, &mut ()).unwrap();
        assert_eq!(*status.borrow(), Some(Err(Error::ECANCELED)));
        assert_eq!(identity(x.as_raw_fd()), id, "the loop did not close it");
        drop(x);
    }
}
