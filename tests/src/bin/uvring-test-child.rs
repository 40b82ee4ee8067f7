//! The child side of the process and IPC tests (libuv's `ipc_helper`,
//! `spawn_helper*`, `stdio_over_pipes_helper`, ...). Runs its own uvring
//! loop on the backend named by `UVRING_BACKEND`, which the parent test sets
//! to its own. The IPC channel, when there is one, is fd 3.
//!
//! Usage: `uvring-test-child <scenario> [args]`. Every scenario is bounded:
//! a watchdog exits with status 3 after 30 s, and a child whose IPC channel
//! reaches end of file (the parent is gone or done) exits.

use std::cell::{Cell, RefCell};
use std::io::Read;
use std::os::fd::{FromRawFd, OwnedFd};
use std::rc::Rc;
use std::time::Duration;
use uvring::*;

const WATCHDOG_MS: u64 = 30_000;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let scenario = args.get(1).map(String::as_str).unwrap_or("");
    match scenario {
        "exit" => std::process::exit(args.get(2).and_then(|a| a.parse().ok()).unwrap_or(0)),
        "sleep" => {
            std::thread::sleep(std::time::Duration::from_millis(WATCHDOG_MS));
            std::process::exit(3);
        }
        "env" => {
            // Prints the working directory and one variable, for spawn's
            // cwd and env options.
            let cwd = std::env::current_dir().unwrap();
            let var = std::env::var(args.get(2).map(String::as_str).unwrap_or("UVRING_TEST_VAR")).unwrap_or_default();
            println!("{}\n{}", cwd.display(), var);
            std::process::exit(0);
        }
        _ => {}
    }
    let mut lp = Loop::new().expect("child loop");
    let watchdog = lp.timer_init().unwrap();
    lp.timer_start(
        watchdog,
        Duration::from_millis(WATCHDOG_MS),
        Duration::ZERO,
        &OnTimer::new(|_, _, _| {
            eprintln!("uvring-test-child: watchdog expired");
            std::process::exit(3);
        }),
    )
    .unwrap();
    lp.unref_handle(watchdog).unwrap();
    match scenario {
        "listen_before_write" => listen_and_send(&mut lp, false),
        "listen_after_write" => listen_and_send(&mut lp, true),
        "tcp_connection" => tcp_connection(&mut lp),
        "bind_twice" => bind_twice(&mut lp),
        "idle" => {
            let ch = channel(&mut lp);
            read_until_eof(&mut lp, ch, |_, _, _| {});
        }
        "send_recv" => send_recv(&mut lp),
        "heavy" => heavy(&mut lp),
        "stdio" => stdio(&mut lp),
        "tcp_server_fd3" => tcp_server_fd3(&mut lp),
        "many_handles" => many_handles(&mut lp, args.get(2).and_then(|a| a.parse().ok()).unwrap_or(1000)),
        other => panic!("unknown scenario {other:?}"),
    }
    lp.run(RunMode::Default, &mut ()).expect("child run");
    std::process::exit(0);
}

/// The IPC channel the parent gave us as fd 3.
fn channel(lp: &mut Loop) -> PipeStream {
    // SAFETY: the parent set up fd 3 for us (Stdio::Ipc at index 3); nothing
    // else in this process owns it.
    lp.pipe_open(unsafe { OwnedFd::from_raw_fd(3) }, true).expect("fd 3 is the IPC channel")
}

/// Reads `ch`, giving each chunk to `f`; at end of file closes every handle
/// (the loop then ends and the child exits 0).
fn read_until_eof(lp: &mut Loop, ch: PipeStream, f: impl Fn(&mut Loop, PipeStream, &[u8]) + 'static) {
    lp.read_start(
        ch,
        &OnRead::new(move |lp, _, s, res| match res {
            Ok(data) => f(lp, s, data),
            Err(e) => {
                assert_eq!(e, Error::EOF, "channel read failed");
                lp.close(s, None).unwrap();
            }
        }),
    )
    .unwrap();
}

fn localhost() -> std::net::SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

/// Writes one byte naming the acceptor ('c') into each accepted connection,
/// then shuts it down and closes it.
fn greet_and_close(lp: &mut Loop, c: TcpStream, tag: &[u8]) {
    lp.write(c, tag, None).unwrap();
    lp.shutdown(c, Some(&OnShutdown::new(|lp, _, c, _| lp.close(c, None).unwrap()))).unwrap();
}

/// ipc_listen_before_write / ipc_listen_after_write: bind a listener, send
/// it with "hello\n", accept one connection, then stop listening.
fn listen_and_send(lp: &mut Loop, listen_after_write: bool) {
    let ch = channel(lp);
    let sock = lp.tcp_init().unwrap();
    lp.tcp_bind(sock, localhost(), 0).unwrap();
    let on_conn = OnConnection::new(|lp, _, srv: TcpListener, res| {
        if res.is_err() || lp.is_closing(srv) {
            return;
        }
        if let Ok(c) = lp.accept(srv) {
            greet_and_close(lp, c, b"c");
            lp.close(srv, None).unwrap();
        }
    });
    let server = if listen_after_write {
        lp.write2(ch, b"hello\n", sock, None).unwrap();
        lp.listen(sock, 128, &on_conn).unwrap()
    } else {
        let server = lp.listen(sock, 128, &on_conn).unwrap();
        lp.write2(ch, b"hello\n", server, None).unwrap();
        server
    };
    read_until_eof(lp, ch, move |lp, _, _| {
        if lp.is_live(server) && !lp.is_closing(server) {
            lp.close(server, None).unwrap();
        }
    });
}

/// ipc_tcp_connection: accept a connection from the parent's client, send it
/// over IPC with "hello\n" and close our copy.
fn tcp_connection(lp: &mut Loop) {
    let ch = channel(lp);
    let sock = lp.tcp_init().unwrap();
    lp.tcp_bind(sock, localhost(), 0).unwrap();
    let server = lp
        .listen(
            sock,
            16,
            &OnConnection::new(move |lp, _, srv, res| {
                res.unwrap();
                let c = lp.accept(srv).unwrap();
                lp.write2(ch, b"hello\n", c, None).unwrap();
                lp.close(c, None).unwrap();
                lp.close(srv, None).unwrap();
            }),
        )
        .unwrap();
    let port = lp.tcp_getsockname(server).unwrap().port();
    lp.write(ch, format!("port {port}\n").as_bytes(), None).unwrap();
    read_until_eof(lp, ch, |_, _, _| {});
}

/// ipc_listen_after_bind_twice: two sockets bound to one port, sent in two
/// writes.
fn bind_twice(lp: &mut Loop) {
    let ch = channel(lp);
    let a = lp.tcp_init().unwrap();
    lp.tcp_bind(a, localhost(), 0).unwrap();
    let addr = lp.tcp_getsockname(a).unwrap();
    let b = lp.tcp_init().unwrap();
    lp.tcp_bind(b, addr, 0).unwrap();
    lp.write2(ch, b"hello\n", a, None).unwrap();
    lp.write2(ch, b"world\n", b, None).unwrap();
    lp.close(a, None).unwrap();
    lp.close(b, None).unwrap();
    read_until_eof(lp, ch, |_, _, _| {});
}

/// ipc_send_recv_*: every handle received is accepted and sent back with
/// the byte that came with it.
fn send_recv(lp: &mut Loop) {
    let ch = channel(lp);
    read_until_eof(lp, ch, |lp, ch, data| {
        let mut bytes = data.iter();
        while lp.pending_count(ch).unwrap() > 0 {
            let h = lp.accept_pending(ch).unwrap();
            let tag = [*bytes.next().unwrap_or(&b'?')];
            match h {
                PendingHandle::TcpSocket(h) => lp.write2(ch, &tag, h, None),
                PendingHandle::TcpStream(h) => lp.write2(ch, &tag, h, None),
                PendingHandle::PipeSocket(h) => lp.write2(ch, &tag, h, None),
                PendingHandle::PipeStream(h) => lp.write2(ch, &tag, h, None),
            }
            .unwrap();
            lp.close(h, None).unwrap();
        }
    });
}

/// The byte at stream offset `i` in the heavy-traffic and many-handles
/// scenarios.
pub fn pattern(i: u64) -> u8 {
    (i % 251) as u8
}

/// ipc_heavy_traffic_deadlock_bug: queue 256 writes of 3 x 8 KiB before
/// reading, read the peer's 6 MiB, then shut down.
fn heavy(lp: &mut Loop) {
    const WRITES: usize = 256;
    const TOTAL: u64 = (WRITES * 3 * 8192) as u64;
    let ch = channel(lp);
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
    lp.read_start(
        ch,
        &OnRead::new(move |lp, _, s, res| match res {
            Ok(data) => {
                for &b in data {
                    assert_eq!(b, pattern(got.get()), "byte {} corrupted", got.get());
                    got.set(got.get() + 1);
                }
                if got.get() == TOTAL {
                    lp.shutdown(s, None).unwrap();
                }
            }
            Err(e) => {
                assert_eq!(e, Error::EOF);
                assert_eq!(got.get(), TOTAL, "short read");
                lp.close(s, None).unwrap();
            }
        }),
    )
    .unwrap();
}

/// stdio_over_pipes: greet on stdout in pieces, echo stdin to stdout, and at
/// end of stdin shut stdout down.
fn stdio(lp: &mut Loop) {
    // SAFETY: fds 0 and 1 are ours (the parent's socketpair ends); the loop
    // takes them over for the rest of the process.
    let inp = lp.pipe_open(unsafe { OwnedFd::from_raw_fd(0) }, false).unwrap();
    // SAFETY: as above.
    let out = lp.pipe_open(unsafe { OwnedFd::from_raw_fd(1) }, false).unwrap();
    for piece in [&b"hello"[..], b" ", b"world", b"\n"] {
        lp.write(out, piece, None).unwrap();
    }
    lp.read_start(
        inp,
        &OnRead::new(move |lp, _, s, res| match res {
            Ok(data) => lp.write(out, data, None).unwrap(),
            Err(_) => {
                lp.close(s, None).unwrap();
                lp.shutdown(out, Some(&OnShutdown::new(|lp, _, out, _| lp.close(out, None).unwrap()))).unwrap();
            }
        }),
    )
    .unwrap();
}

/// spawn_tcp_server: serve (echo) one connection on the listener passed as fd 3.
fn tcp_server_fd3(lp: &mut Loop) {
    // SAFETY: the parent passed its bound listener as our fd 3.
    let server = lp.tcp_open(unsafe { OwnedFd::from_raw_fd(3) }).unwrap();
    let on_read = OnRead::new(|lp, _, c: TcpStream, res| match res {
        Ok(data) => lp.write(c, data, None).unwrap(),
        Err(_) => lp.close(c, None).unwrap(),
    });
    lp.listen(
        server,
        16,
        &OnConnection::new(move |lp, _, srv, res| {
            res.unwrap();
            let c = lp.accept(srv).unwrap();
            lp.read_start(c, &on_read).unwrap();
            lp.close(srv, None).unwrap();
        }),
    )
    .unwrap();
}

fn fd_count() -> usize {
    std::fs::read_dir("/proc/self/fd").map(|d| d.count()).unwrap_or(0)
}

/// Many handles interleaved with 64 KiB writes: write `i` carries one
/// socket whose peer wrote `i` (4 bytes, little endian) before closing.
/// Checks that handles arrive in order, exactly with their write's bytes
/// (after a chunk ending at offset E, the writes starting before E have
/// delivered their handles and no other has), and that every byte is
/// intact. Reports `"ok <fds at start> <fds at end>\n"`.
fn many_handles(lp: &mut Loop, n: u64) {
    const WRITE: u64 = 64 * 1024;
    let ch = channel(lp);
    let start_fds = fd_count();
    let got = Rc::new(Cell::new(0u64));
    let handles = Rc::new(Cell::new(0u64));
    let report = Rc::new(RefCell::new(None::<String>));
    lp.read_start(
        ch,
        &OnRead::new(move |lp, _, ch, res| {
            let data = match res {
                Ok(d) => d,
                Err(e) => {
                    assert_eq!(e, Error::EOF);
                    lp.close(ch, None).unwrap();
                    return;
                }
            };
            while lp.pending_count(ch).unwrap() > 0 {
                assert_eq!(lp.pending_type(ch).unwrap(), Some(StreamType::Pipe));
                let fd = lp.accept_pending_fd(ch).unwrap();
                let mut idx = [0u8; 4];
                let mut sock = std::os::unix::net::UnixStream::from(fd);
                sock.set_nonblocking(false).unwrap();
                sock.read_exact(&mut idx).unwrap();
                assert_eq!(u32::from_le_bytes(idx) as u64, handles.get(), "handle out of order");
                handles.set(handles.get() + 1);
            }
            for &b in data {
                let i = got.get();
                assert_eq!(b, pattern(i / WRITE * 7 + i % WRITE), "byte {i} corrupted");
                got.set(i + 1);
            }
            let end = got.get();
            assert_eq!(handles.get(), end.div_ceil(WRITE), "handles out of step with bytes at offset {end}");
            if end == n * WRITE && report.borrow().is_none() {
                let msg = format!("ok {} {}\n", start_fds, fd_count());
                lp.write(ch, msg.as_bytes(), None).unwrap();
                *report.borrow_mut() = Some(msg);
            }
        }),
    )
    .unwrap();
}
