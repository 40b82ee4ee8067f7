//! The io_uring driver, driven directly (no loop): each test arms ops, makes
//! the other end act, and checks the completions `poll` reports.
//!
//! If io_uring cannot be set up here, each test prints
//! `SKIP: io_uring unavailable: <reason>` and passes, unless
//! `UVRING_REQUIRE_IO_URING=1`, in which case it fails.

use super::super::{
    parse_record, parse_recvmsg, Backend, Completion, Driver, Op, OpKind, PoolConfig, RecordLayout, Token,
    RECVMSG_CONTROL_LEN,
};
use super::{Features, Uring};
use crate::sys::socket::SockAddr;
use crate::sys::{self, socket};
use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

fn driver(cfg: PoolConfig) -> Option<Uring> {
    or_skip(Uring::new(cfg))
}

/// As `driver`, with the optional features `want` allows.
fn driver_with(want: Features) -> Option<Uring> {
    or_skip(Uring::with_features(PoolConfig::default(), want))
}

/// The driver, or `None` after printing why io_uring is unavailable (a
/// failure under `UVRING_REQUIRE_IO_URING=1`).
fn or_skip(res: Result<Uring, super::super::Unavailable>) -> Option<Uring> {
    match res {
        Ok(u) => Some(u),
        Err(why) => {
            if std::env::var("UVRING_REQUIRE_IO_URING").as_deref() == Ok("1") {
                panic!("io_uring required but unavailable: {}", why.reason);
            }
            eprintln!("SKIP: io_uring unavailable: {}", why.reason);
            None
        }
    }
}

macro_rules! driver_or_skip {
    ($cfg:expr) => {
        match driver($cfg) {
            Some(u) => u,
            None => return,
        }
    };
    () => {
        driver_or_skip!(PoolConfig::default())
    };
}

fn token(index: usize, kind: OpKind) -> Token {
    Token::new(index, 7, kind)
}

/// Polls until `done(all completions so far)` or five seconds pass.
fn poll_until(u: &mut Uring, all: &mut Vec<Completion>, mut done: impl FnMut(&[Completion]) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut out = Vec::with_capacity(64);
    while !done(all) {
        assert!(Instant::now() < deadline, "timed out; completions so far: {all:?}");
        out.clear();
        u.poll(100, &mut out).expect("poll");
        all.extend_from_slice(&out);
    }
}

thread_local! {
    /// Completions `wait_for` polled up for tokens other than the one it
    /// waited for; later calls take them from here first.
    static STASH: std::cell::RefCell<Vec<Completion>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Polls until `n` completions for `t` arrived; returns them in order.
fn wait_for(u: &mut Uring, t: Token, n: usize) -> Vec<Completion> {
    let mut all = STASH.with(|s| std::mem::take(&mut *s.borrow_mut()));
    poll_until(u, &mut all, |c| c.iter().filter(|c| c.token == t).count() >= n);
    let (mine, others): (Vec<_>, Vec<_>) = all.into_iter().partition(|c| c.token == t);
    STASH.with(|s| *s.borrow_mut() = others);
    mine
}

/// Submits an op that lends no memory, for which rule 3 asks nothing
/// (sends and reads are submitted with `unsafe` and their own reasons).
fn submit(u: &mut Uring, t: Token, op: Op<'_>) -> crate::error::Result<()> {
    assert!(!matches!(op, Op::Send { .. } | Op::Read { .. }), "{op:?} lends memory");
    // SAFETY: checked above: the op lends no memory.
    unsafe { u.submit(t, op) }
}

fn pair() -> (OwnedFd, OwnedFd) {
    socket::socketpair(true).expect("socketpair")
}

fn fd_flags(fd: RawFd) -> (bool, bool) {
    // SAFETY: fcntl with F_GETFD/F_GETFL only reads fd flags.
    let fdfl = unsafe { libc::fcntl(fd, libc::F_GETFD) };
    // SAFETY: as above.
    let fl = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    assert!(fdfl >= 0 && fl >= 0, "fd {fd} not open");
    (fdfl & libc::FD_CLOEXEC != 0, fl & libc::O_NONBLOCK != 0)
}

/// Copies the bytes of a recv completion and gives the buffer back.
fn take_bytes(u: &mut Uring, c: &Completion, into: &mut Vec<u8>) {
    let id = c.buf.expect("data completion without a buffer");
    assert!(c.res > 0);
    // SAFETY: the completion lent buffer `id` to us until `recycle`.
    into.extend_from_slice(unsafe { u.pool().slice(id, c.res as usize) });
    u.recycle(id);
}

#[test]
fn setup_describes_itself() {
    let u = driver_or_skip!();
    let f = u.features().to_string();
    eprintln!("{f}");
    assert!(f.starts_with("io_uring sq="), "{f}");
}

#[test]
fn refused_setup_is_unavailable_with_a_reason() {
    // A seccomp filter on this thread only makes io_uring_setup fail with
    // EPERM, as `kernel.io_uring_disabled` or a container profile would.
    let res = std::thread::spawn(|| {
        let filter = [
            // Load the syscall number.
            libc::sock_filter { code: (libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) as u16, jt: 0, jf: 0, k: 0 },
            libc::sock_filter {
                code: (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16,
                jt: 0,
                jf: 1,
                k: libc::SYS_io_uring_setup as u32,
            },
            libc::sock_filter {
                code: (libc::BPF_RET | libc::BPF_K) as u16,
                jt: 0,
                jf: 0,
                k: libc::SECCOMP_RET_ERRNO | libc::EPERM as u32,
            },
            libc::sock_filter { code: (libc::BPF_RET | libc::BPF_K) as u16, jt: 0, jf: 0, k: libc::SECCOMP_RET_ALLOW },
        ];
        let prog = libc::sock_fprog { len: filter.len() as u16, filter: filter.as_ptr() as *mut _ };
        // SAFETY: plain prctl calls; `prog` and `filter` outlive them, and the
        // filter (this thread only: no TSYNC) dies with the thread.
        let ok = unsafe {
            libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) == 0
                && libc::prctl(libc::PR_SET_SECCOMP, libc::SECCOMP_MODE_FILTER, &prog as *const libc::sock_fprog) == 0
        };
        if !ok {
            return None;
        }
        let direct = Uring::new(PoolConfig::default()).err().map(|why| (why.error, why.reason));
        // `Auto` falls back to epoll and says why.
        let (d, why) = super::super::open(Backend::Auto, PoolConfig::default()).expect("auto opens epoll");
        assert_eq!(d.kind(), Backend::Epoll);
        assert!(why.is_some_and(|w| w.contains("EPERM")));
        Some(direct)
    })
    .join()
    .unwrap();
    let Some(res) = res else {
        eprintln!("SKIP: cannot install a seccomp filter here");
        return;
    };
    let (error, reason) = res.expect("setup must fail under the filter");
    assert_eq!(error.errno(), Some(libc::EPERM));
    assert!(reason.contains("io_uring_setup: EPERM"), "{reason}");
    eprintln!("reason: {reason}");
}

#[test]
fn recv_multishot_continues_across_messages_then_eof() {
    let mut u = driver_or_skip!();
    let (a, b) = pair();
    let t = token(1, OpKind::Recv);
    submit(&mut u, t, Op::Recv { fd: a.as_raw_fd() }).unwrap();
    let mut got = Vec::new();
    for i in 0..50u32 {
        let msg = format!("message {i};");
        sys::write(b.as_raw_fd(), msg.as_bytes()).unwrap();
        let mut all = Vec::new();
        poll_until(&mut u, &mut all, |c| !c.is_empty());
        for c in &all {
            assert_eq!(c.token, t);
            assert!(c.more, "multishot recv ended early: {c:?}");
            take_bytes(&mut u, c, &mut got);
        }
    }
    let expected: String = (0..50).map(|i| format!("message {i};")).collect();
    assert_eq!(String::from_utf8(got).unwrap(), expected);
    drop(b);
    let cs = wait_for(&mut u, t, 1);
    assert_eq!((cs[0].res, cs[0].buf, cs[0].more), (0, None, false), "EOF is final");
}

#[test]
fn enobufs_rearms_and_the_stream_arrives_in_order() {
    // Two 64-byte buffers for 20 KiB: the multishot recv runs dry many
    // times; the driver must re-arm it silently once buffers come back.
    let mut u = driver_or_skip!(PoolConfig { count: 2, size: 64 });
    let (a, b) = pair();
    let data: Vec<u8> = (0..20 * 1024).map(|i| (i * 7 % 251) as u8).collect();
    let mut writer = std::os::unix::net::UnixStream::from(b);
    writer.set_nonblocking(false).unwrap();
    writer.write_all(&data).unwrap();
    let t = token(2, OpKind::Recv);
    submit(&mut u, t, Op::Recv { fd: a.as_raw_fd() }).unwrap();

    // Starve it first: poll without recycling. Only two buffers can be filled.
    let mut held = Vec::new();
    for _ in 0..5 {
        let mut out = Vec::with_capacity(16);
        u.poll(20, &mut out).unwrap();
        held.extend(out);
    }
    assert!(held.len() <= 2, "only two buffers exist: {held:?}");
    assert!(held.iter().all(|c| c.more && c.res > 0), "starvation must not surface: {held:?}");

    let mut got = Vec::new();
    for c in held {
        take_bytes(&mut u, &c, &mut got);
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while got.len() < data.len() {
        assert!(Instant::now() < deadline, "stalled at {} of {} bytes", got.len(), data.len());
        let mut out = Vec::with_capacity(16);
        u.poll(100, &mut out).unwrap();
        for c in &out {
            assert_eq!(c.token, t);
            assert!(c.more && c.res > 0, "unexpected completion {c:?}");
            take_bytes(&mut u, c, &mut got);
        }
    }
    assert_eq!(got, data);
    u.cancel(a.as_raw_fd(), t);
    let cs = wait_for(&mut u, t, 1);
    assert_eq!((cs[0].res, cs[0].more), (-libc::ECANCELED, false));
}

#[test]
fn cancel_of_a_starved_recv_still_completes() {
    let mut u = driver_or_skip!(PoolConfig { count: 2, size: 64 });
    let (a, b) = pair();
    sys::write(b.as_raw_fd(), &[1u8; 1000]).unwrap();
    let t = token(3, OpKind::Recv);
    submit(&mut u, t, Op::Recv { fd: a.as_raw_fd() }).unwrap();
    let mut held = Vec::new();
    poll_until(&mut u, &mut held, |c| c.len() >= 2);
    // Let the ENOBUFS end arrive and be absorbed.
    let mut out = Vec::with_capacity(16);
    u.poll(20, &mut out).unwrap();
    assert!(out.is_empty(), "{out:?}");
    u.cancel(a.as_raw_fd(), t);
    let cs = wait_for(&mut u, t, 1);
    assert_eq!((cs[0].res, cs[0].buf, cs[0].more), (-libc::ECANCELED, None, false));
    for c in held {
        u.recycle(c.buf.unwrap());
    }
    // Nothing more for that token.
    out.clear();
    u.poll(20, &mut out).unwrap();
    assert!(out.is_empty(), "{out:?}");
}

#[test]
fn cancel_of_a_recv_gives_a_final_ecanceled() {
    let mut u = driver_or_skip!();
    let (a, _b) = pair();
    let t = token(4, OpKind::Recv);
    submit(&mut u, t, Op::Recv { fd: a.as_raw_fd() }).unwrap();
    assert_eq!(
        submit(&mut u, t, Op::Recv { fd: a.as_raw_fd() }).unwrap_err().errno(),
        Some(libc::EBUSY),
        "one op per token"
    );
    let mut out = Vec::with_capacity(8);
    u.poll(0, &mut out).unwrap();
    assert!(out.is_empty());
    u.cancel(a.as_raw_fd(), t);
    assert!(out.is_empty(), "cancel never completes synchronously");
    let cs = wait_for(&mut u, t, 1);
    assert_eq!(cs.len(), 1);
    assert_eq!((cs[0].res, cs[0].more), (-libc::ECANCELED, false));
}

#[test]
fn accept_multishot_takes_several_connections() {
    let mut u = driver_or_skip!();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let addr = listener.local_addr().unwrap();
    let t = token(5, OpKind::Accept);
    submit(&mut u, t, Op::Accept { fd: listener.as_raw_fd(), exclusive: true }).unwrap();
    let clients: Vec<TcpStream> = (0..5).map(|_| TcpStream::connect(addr).unwrap()).collect();
    let cs = wait_for(&mut u, t, 5);
    for c in &cs {
        assert!(c.res >= 0 && c.more && c.buf.is_none(), "{c:?}");
        assert_eq!(fd_flags(c.res), (true, true), "accepted fds are CLOEXEC and non-blocking");
        // SAFETY: the completion hands us the new fd (rule 4).
        drop(unsafe { OwnedFd::from_raw_fd(c.res) });
    }
    u.cancel(listener.as_raw_fd(), t);
    let end = wait_for(&mut u, t, 1);
    assert_eq!((end[0].res, end[0].more), (-libc::ECANCELED, false));
    drop(clients);
}

#[test]
fn send_with_fds_and_recvmsg_receives_them_cloexec() {
    let mut u = driver_or_skip!();
    let (a, b) = pair();
    let rt = token(6, OpKind::RecvMsg);
    submit(&mut u, rt, Op::RecvMsg { fd: b.as_raw_fd() }).unwrap();

    let (p0, p1) = sys::pipe().unwrap();
    let ev = sys::eventfd().unwrap();
    let fds = [p0.as_raw_fd(), p1.as_raw_fd(), ev.as_raw_fd()];
    let head = b"hello ".to_vec();
    let tail = b"fds".to_vec();
    let iov = [
        libc::iovec { iov_base: head.as_ptr() as *mut _, iov_len: head.len() },
        libc::iovec { iov_base: tail.as_ptr() as *mut _, iov_len: tail.len() },
    ];
    let st = token(6, OpKind::Send);
    // SAFETY: `head` and `tail` outlive the send's completion (awaited below),
    // and the three fds stay open until then.
    unsafe { u.submit(st, Op::Send { fd: a.as_raw_fd(), iov: &iov, fds: &fds }).unwrap() };
    let sent = wait_for(&mut u, st, 1);
    assert_eq!((sent[0].res, sent[0].more), (9, false));

    let cs = wait_for(&mut u, rt, 1);
    let c = cs[0];
    assert!(c.more && c.res > 0, "{c:?}");
    let id = c.buf.unwrap();
    let mut received = Vec::new();
    {
        // SAFETY: the completion lent buffer `id` until recycle.
        let buf = unsafe { u.pool().slice(id, c.res as usize) };
        let rec = parse_recvmsg(buf).expect("well-formed record");
        assert_eq!(rec.payload, b"hello fds");
        assert_eq!(rec.flags & libc::MSG_CTRUNC, 0);
        socket::for_each_rights_fd(rec.control, |fd| received.push(fd));
    }
    u.recycle(id);
    assert_eq!(received.len(), 3);
    for fd in received {
        assert!(fd_flags(fd).0, "received fds are CLOEXEC");
        sys::close(fd);
    }

    // As the loop does before a close (the send may have registered it).
    u.deregister(a.as_raw_fd());
    drop(a);
    let end = wait_for(&mut u, rt, 1);
    assert_eq!((end[0].res, end[0].buf, end[0].more), (0, None, false), "recvmsg EOF is res 0, final");
}

#[test]
fn send_one_iovec_reaches_the_peer() {
    let mut u = driver_or_skip!();
    let (a, b) = pair();
    let msg = b"plain send".to_vec();
    let iov = [libc::iovec { iov_base: msg.as_ptr() as *mut _, iov_len: msg.len() }];
    let t = token(7, OpKind::Send);
    // SAFETY: `msg` outlives the completion (awaited below).
    unsafe { u.submit(t, Op::Send { fd: a.as_raw_fd(), iov: &iov, fds: &[] }).unwrap() };
    let cs = wait_for(&mut u, t, 1);
    assert_eq!((cs[0].res, cs[0].more), (msg.len() as i32, false));
    let mut buf = [0u8; 64];
    let n = sys::read(b.as_raw_fd(), &mut buf).unwrap();
    assert_eq!(&buf[..n], &msg[..]);
}

#[test]
fn send_to_a_closed_peer_is_epipe_not_sigpipe() {
    let mut u = driver_or_skip!();
    let (a, b) = pair();
    drop(b);
    let msg = b"x".to_vec();
    let iov = [libc::iovec { iov_base: msg.as_ptr() as *mut _, iov_len: 1 }];
    let t = token(8, OpKind::Send);
    // SAFETY: `msg` outlives the completion (awaited below).
    unsafe { u.submit(t, Op::Send { fd: a.as_raw_fd(), iov: &iov, fds: &[] }).unwrap() };
    let cs = wait_for(&mut u, t, 1);
    assert_eq!(cs[0].res, -libc::EPIPE);
}

#[test]
fn too_many_fds_set_msg_ctrunc() {
    let mut u = driver_or_skip!();
    let (a, b) = pair();
    let rt = token(9, OpKind::RecvMsg);
    submit(&mut u, rt, Op::RecvMsg { fd: b.as_raw_fd() }).unwrap();

    // 70 fds need more control space than RECVMSG_CONTROL_LEN (64 fds).
    let null = sys::open_dev_null().unwrap();
    let fds: Vec<RawFd> = vec![null.as_raw_fd(); 70];
    let space = socket::cmsg_space(fds.len() * 4);
    assert!(space > RECVMSG_CONTROL_LEN);
    let mut control = vec![0u64; space / 8 + 1];
    let byte = [42u8];
    let mut iov = libc::iovec { iov_base: byte.as_ptr() as *mut _, iov_len: 1 };
    // SAFETY: msghdr is plain data; all-zero is a valid value.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    // SAFETY: `control` has room for `space` bytes and is u64-aligned.
    unsafe { socket::fill_rights(control.as_mut_ptr().cast(), &fds) };
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = space;
    // SAFETY: `msg` points at live `iov`, `byte` and `control`.
    let n = unsafe { libc::sendmsg(a.as_raw_fd(), &msg, libc::MSG_NOSIGNAL) };
    assert_eq!(n, 1, "{}", std::io::Error::last_os_error());

    let cs = wait_for(&mut u, rt, 1);
    let id = cs[0].buf.unwrap();
    let mut received = Vec::new();
    {
        // SAFETY: the completion lent buffer `id` until recycle.
        let buf = unsafe { u.pool().slice(id, cs[0].res as usize) };
        let rec = parse_recvmsg(buf).unwrap();
        assert_eq!(rec.payload, &[42]);
        assert_ne!(rec.flags & libc::MSG_CTRUNC, 0, "truncation must be visible");
        socket::for_each_rights_fd(rec.control, |fd| received.push(fd));
    }
    u.recycle(id);
    assert!(received.len() < 70);
    for fd in received {
        sys::close(fd);
    }
    u.cancel(b.as_raw_fd(), rt);
    let end = wait_for(&mut u, rt, 1);
    assert!(!end[0].more);
}

#[test]
fn connect_to_a_closed_port_is_refused() {
    let mut u = driver_or_skip!();
    let port = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let s = socket::stream_socket(libc::AF_INET).unwrap();
    let t = token(10, OpKind::Connect);
    // A stack address: the driver must copy it.
    submit(&mut u, t, Op::Connect { fd: s.as_raw_fd(), addr: &socket::SockAddr::from_std(&port) }).unwrap();
    let cs = wait_for(&mut u, t, 1);
    assert_eq!((cs[0].res, cs[0].more), (-libc::ECONNREFUSED, false));
}

#[test]
fn connect_then_send_and_recv_over_tcp() {
    let mut u = driver_or_skip!();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let s = socket::stream_socket(libc::AF_INET).unwrap();
    let t = token(11, OpKind::Connect);
    let addr = socket::SockAddr::from_std(&listener.local_addr().unwrap());
    submit(&mut u, t, Op::Connect { fd: s.as_raw_fd(), addr: &addr }).unwrap();
    let cs = wait_for(&mut u, t, 1);
    assert_eq!(cs[0].res, 0);
    let (mut peer, _) = listener.accept().unwrap();
    let rt = token(11, OpKind::Recv);
    submit(&mut u, rt, Op::Recv { fd: s.as_raw_fd() }).unwrap();
    peer.write_all(b"over tcp").unwrap();
    let cs = wait_for(&mut u, rt, 1);
    let mut got = Vec::new();
    take_bytes(&mut u, &cs[0], &mut got);
    assert_eq!(got, b"over tcp");
    u.cancel(s.as_raw_fd(), rt);
    let end = wait_for(&mut u, rt, 1);
    assert_eq!(end[0].res, -libc::ECANCELED);
}

#[test]
fn read_on_an_eventfd() {
    let mut u = driver_or_skip!();
    let ev = sys::eventfd().unwrap();
    let mut value = Box::new(0u64);
    let t = token(12, OpKind::Read);
    // SAFETY: `value` is boxed and outlives the completion (awaited below).
    unsafe { u.submit(t, Op::Read { fd: ev.as_raw_fd(), ptr: (&mut *value as *mut u64).cast(), len: 8 }).unwrap() };
    let mut out = Vec::with_capacity(4);
    u.poll(0, &mut out).unwrap();
    assert!(out.is_empty(), "nothing signalled yet");
    sys::eventfd_signal(ev.as_raw_fd());
    sys::eventfd_signal(ev.as_raw_fd());
    let cs = wait_for(&mut u, t, 1);
    assert_eq!((cs[0].res, cs[0].more), (8, false));
    assert_eq!(*value, 2);
}

#[test]
fn poll_in_reports_readable() {
    let mut u = driver_or_skip!();
    let (r, w) = sys::pipe().unwrap();
    let t = token(13, OpKind::PollIn);
    submit(&mut u, t, Op::PollIn { fd: r.as_raw_fd() }).unwrap();
    sys::write(w.as_raw_fd(), b"!").unwrap();
    let cs = wait_for(&mut u, t, 1);
    assert!(cs[0].res & libc::POLLIN as i32 != 0 && !cs[0].more, "{:?}", cs[0]);
}

#[test]
fn poll_with_nothing_to_do_returns_after_the_timeout() {
    let mut u = driver_or_skip!();
    let mut out = Vec::with_capacity(8);
    let t0 = Instant::now();
    u.poll(50, &mut out).unwrap();
    let waited = t0.elapsed();
    assert!(out.is_empty());
    assert!(waited >= Duration::from_millis(30), "returned early: {waited:?}");
    assert!(waited < Duration::from_secs(5));
    let t0 = Instant::now();
    u.poll(0, &mut out).unwrap();
    assert!(t0.elapsed() < Duration::from_secs(1));
}

#[test]
fn no_completion_is_lost_past_sq_and_cq_capacity() {
    // 6000 one-shot polls on a readable pipe complete at once: more than the
    // SQ (1024) and the CQ (4096) hold, so pushing submits early and the
    // kernel parks CQEs in its overflow list. Reaping through a small `out`
    // must still see every one exactly once.
    let mut u = driver_or_skip!();
    let (r, w) = sys::pipe().unwrap();
    sys::write(w.as_raw_fd(), b"!").unwrap();
    const N: usize = 6000;
    for i in 0..N {
        submit(&mut u, token(i, OpKind::PollIn), Op::PollIn { fd: r.as_raw_fd() }).unwrap();
    }
    let mut seen = vec![false; N];
    let mut count = 0;
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut out = Vec::with_capacity(100);
    while count < N {
        assert!(Instant::now() < deadline, "only {count} of {N} completions");
        out.clear();
        u.poll(100, &mut out).unwrap();
        assert!(out.len() <= 100);
        for c in &out {
            let i = c.token.index();
            assert!(!seen[i], "duplicate completion {c:?}");
            seen[i] = true;
            count += 1;
        }
    }
    out.clear();
    u.poll(10, &mut out).unwrap();
    assert!(out.is_empty());
}

#[test]
fn multishot_ended_by_cq_overflow_is_rearmed_transparently() {
    // Fill the CQ with poll completions the loop does not reap; a recv that
    // completes meanwhile cannot post with F_MORE, so the kernel ends the
    // multishot. The driver must re-arm it and report `more == true`.
    let mut u = driver_or_skip!();
    let (a, b) = pair();
    let rt = token(50, OpKind::Recv);
    submit(&mut u, rt, Op::Recv { fd: a.as_raw_fd() }).unwrap();
    let (r, w) = sys::pipe().unwrap();
    sys::write(w.as_raw_fd(), b"!").unwrap();
    const FILL: usize = 4200;
    for i in 0..FILL {
        submit(&mut u, token(1000 + i, OpKind::PollIn), Op::PollIn { fd: r.as_raw_fd() }).unwrap();
    }
    let mut none: Vec<Completion> = Vec::new();
    u.poll(0, &mut none).unwrap();
    sys::write(b.as_raw_fd(), b"first").unwrap();
    u.poll(0, &mut none).unwrap();
    assert!(none.is_empty());

    let mut got = Vec::new();
    let mut polls = 0;
    let mut all = Vec::new();
    poll_until(&mut u, &mut all, |c| {
        polls = c.iter().filter(|c| c.token.kind() == Some(OpKind::PollIn)).count();
        polls == FILL && c.iter().any(|c| c.token == rt)
    });
    for c in all.iter().filter(|c| c.token == rt) {
        assert!(c.more, "{c:?}");
        take_bytes(&mut u, c, &mut got);
    }
    assert_eq!(got, b"first");
    // The stream goes on.
    sys::write(b.as_raw_fd(), b"second").unwrap();
    let cs = wait_for(&mut u, rt, 1);
    assert!(cs[0].more);
    got.clear();
    take_bytes(&mut u, &cs[0], &mut got);
    assert_eq!(got, b"second");
}

#[test]
fn out_capacity_bounds_each_poll() {
    let mut u = driver_or_skip!();
    let (a, b) = pair();
    let msg = b"0123456789".to_vec();
    let iov = [libc::iovec { iov_base: msg.as_ptr() as *mut _, iov_len: msg.len() }];
    for i in 0..10 {
        // SAFETY: `msg` outlives every completion (all awaited below).
        unsafe { u.submit(token(100 + i, OpKind::Send), Op::Send { fd: a.as_raw_fd(), iov: &iov, fds: &[] }).unwrap() };
    }
    let mut out = Vec::with_capacity(3);
    let mut total = 0;
    let deadline = Instant::now() + Duration::from_secs(5);
    while total < 10 {
        assert!(Instant::now() < deadline);
        out.clear();
        u.poll(100, &mut out).unwrap();
        assert!(out.len() <= 3);
        total += out.len();
    }
    let mut sink = [0u8; 256];
    assert_eq!(sys::read(b.as_raw_fd(), &mut sink).unwrap(), 100);
}

#[test]
fn two_polls_of_one_fd_complete_with_their_own_tokens() {
    // Several ops of one kind in flight on one fd, as one handle may now
    // have: each is its own request, and cancelling one leaves the other.
    let mut u = driver_or_skip!();
    let (r, w) = sys::pipe().unwrap();
    let fd = r.as_raw_fd();
    let (t1, t2, t3) = (token(70, OpKind::Poll), token(71, OpKind::Poll), token(72, OpKind::Poll));
    for t in [t1, t2, t3] {
        submit(&mut u, t, Op::Poll { fd, events: libc::POLLIN as u32 }).unwrap();
    }
    u.cancel(fd, t2);
    assert!(wait_for(&mut u, t2, 1).iter().all(|c| (c.res, c.more) == (-libc::ECANCELED, false)));
    sys::write(w.as_raw_fd(), b"!").unwrap();
    for t in [t1, t3] {
        let cs = wait_for(&mut u, t, 1);
        assert_eq!(cs.len(), 1, "{cs:?}");
        assert!(cs[0].res & libc::POLLIN as i32 != 0 && !cs[0].more, "{:?}", cs[0]);
    }
    let mut out = Vec::with_capacity(8);
    u.poll(20, &mut out).unwrap();
    assert!(out.is_empty(), "one final completion per op: {out:?}");
}

#[test]
fn two_sends_on_one_socket_complete_with_their_own_tokens() {
    let mut u = driver_or_skip!();
    let (a, b) = pair();
    let (first, second) = (b"first ".to_vec(), b"second".to_vec());
    let null = sys::open_dev_null().unwrap();
    let iov1 = [libc::iovec { iov_base: first.as_ptr() as *mut _, iov_len: first.len() }];
    let iov2 = [libc::iovec { iov_base: second.as_ptr() as *mut _, iov_len: second.len() }];
    let (t1, t2) = (token(80, OpKind::Send), token(81, OpKind::Send));
    // SAFETY: both buffers outlive the completions (awaited below), and
    // `null` stays open until then. One send with an fd takes a slot, one
    // without does not: both paths run side by side.
    unsafe {
        u.submit(t1, Op::Send { fd: a.as_raw_fd(), iov: &iov1, fds: &[] }).unwrap();
        u.submit(t2, Op::Send { fd: a.as_raw_fd(), iov: &iov2, fds: &[null.as_raw_fd()] }).unwrap();
    }
    let c1 = wait_for(&mut u, t1, 1);
    let c2 = wait_for(&mut u, t2, 1);
    assert_eq!((c1[0].res, c1[0].more), (first.len() as i32, false));
    assert_eq!((c2[0].res, c2[0].more), (second.len() as i32, false));
    let mut buf = [0u8; 64];
    let mut control = [0u8; RECVMSG_CONTROL_LEN];
    let (mut n, mut fds) = (0, Vec::new());
    while n < 12 {
        let (got, _flags, controllen) = socket::recvmsg(b.as_raw_fd(), &mut buf[n..], &mut control).unwrap();
        assert!(got > 0);
        n += got;
        socket::for_each_rights_fd(&control[..controllen], |fd| fds.push(fd));
    }
    // Two requests in flight are not ordered against each other (no link).
    assert!(&buf[..n] == b"first second" || &buf[..n] == b"secondfirst ", "{:?}", &buf[..n]);
    assert_eq!(fds.len(), 1, "the second send's fd arrived");
    fds.into_iter().for_each(sys::close);
}

#[test]
fn dropping_the_driver_with_ops_in_flight_is_clean() {
    let mut u = driver_or_skip!();
    let (a, _b) = pair();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    submit(&mut u, token(20, OpKind::Recv), Op::Recv { fd: a.as_raw_fd() }).unwrap();
    submit(&mut u, token(20, OpKind::RecvMsg), Op::RecvMsg { fd: a.as_raw_fd() }).unwrap();
    submit(&mut u, token(21, OpKind::Accept), Op::Accept { fd: listener.as_raw_fd(), exclusive: false }).unwrap();
    let mut out = Vec::with_capacity(8);
    u.poll(0, &mut out).unwrap();
    let t0 = Instant::now();
    drop(u);
    assert!(t0.elapsed() < Duration::from_secs(2));
}

/// Counts heap allocations made by the current thread while `COUNTING` is
/// set; otherwise a plain pass-through to the system allocator. (The only
/// `#[global_allocator]` of the engine's unit-test binary; other modules
/// may use `count_allocs` too.)
pub(crate) mod alloc_count {
    use std::alloc::{GlobalAlloc, Layout, System};
    use std::cell::Cell;

    thread_local! {
        static COUNTING: Cell<bool> = const { Cell::new(false) };
        static COUNT: Cell<usize> = const { Cell::new(0) };
    }

    struct Counting;

    fn note() {
        if COUNTING.try_with(Cell::get).unwrap_or(false) {
            let _ = COUNT.try_with(|c| c.set(c.get() + 1));
        }
    }

    // SAFETY: every call is forwarded unchanged to `System`, which upholds
    // the GlobalAlloc contract; counting touches only const-initialised
    // thread-locals without destructors, which never allocate.
    unsafe impl GlobalAlloc for Counting {
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            note();
            // SAFETY: forwarded from the caller.
            unsafe { System.alloc(layout) }
        }
        unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
            note();
            // SAFETY: forwarded from the caller.
            unsafe { System.alloc_zeroed(layout) }
        }
        unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
            note();
            // SAFETY: forwarded from the caller.
            unsafe { System.realloc(ptr, layout, new_size) }
        }
        unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
            // SAFETY: forwarded from the caller.
            unsafe { System.dealloc(ptr, layout) }
        }
    }

    #[global_allocator]
    static GLOBAL: Counting = Counting;

    /// Runs `f` and returns how many allocations this thread made inside it.
    pub(crate) fn count_allocs<R>(f: impl FnOnce() -> R) -> (usize, R) {
        COUNT.with(|c| c.set(0));
        COUNTING.with(|c| c.set(true));
        let r = f();
        COUNTING.with(|c| c.set(false));
        (COUNT.with(Cell::get), r)
    }
}

#[test]
fn hot_paths_do_not_allocate_after_warm_up() {
    let mut u = driver_or_skip!();
    let (a, b) = pair();
    let (c, d) = pair();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let laddr = socket::SockAddr::from_std(&listener.local_addr().unwrap());
    let ev = sys::eventfd().unwrap();
    let null = sys::open_dev_null().unwrap();
    let payload = [7u8; 512];
    let mut out: Vec<Completion> = Vec::with_capacity(256);
    let mut evbuf = Box::new(0u64);
    let rt = token(30, OpKind::Recv);
    let mt = token(31, OpKind::RecvMsg);
    let at = token(32, OpKind::Accept);
    submit(&mut u, rt, Op::Recv { fd: b.as_raw_fd() }).unwrap();
    submit(&mut u, mt, Op::RecvMsg { fd: d.as_raw_fd() }).unwrap();
    submit(&mut u, at, Op::Accept { fd: listener.as_raw_fd(), exclusive: false }).unwrap();

    // One round of every hot operation; returns when all have completed.
    let round = |u: &mut Uring, out: &mut Vec<Completion>, evbuf: &mut u64| {
        let iov1 = [libc::iovec { iov_base: payload.as_ptr() as *mut _, iov_len: payload.len() }];
        let iov2 = [iov1[0], iov1[0]];
        let fds = [null.as_raw_fd()];
        // SAFETY: `payload` outlives every send and the eventfd read lands in
        // `evbuf`, all awaited in this round; `null` stays open throughout.
        unsafe {
            u.submit(token(40, OpKind::Send), Op::Send { fd: a.as_raw_fd(), iov: &iov1, fds: &[] }).unwrap();
            u.submit(token(41, OpKind::Send), Op::Send { fd: c.as_raw_fd(), iov: &iov2, fds: &fds }).unwrap();
            u.submit(token(42, OpKind::Read), Op::Read { fd: ev.as_raw_fd(), ptr: (evbuf as *mut u64).cast(), len: 8 })
                .unwrap();
        }
        sys::eventfd_signal(ev.as_raw_fd());
        let s = socket::stream_socket(libc::AF_INET).unwrap();
        submit(u, token(43, OpKind::Connect), Op::Connect { fd: s.as_raw_fd(), addr: &laddr }).unwrap();
        // Cancel and re-arm the stream recv, as stop/start reading does.
        u.cancel(b.as_raw_fd(), rt);
        let (mut recv_bytes, mut msg_bytes, mut oneshots, mut accepted, mut cancelled) = (0, 0, 0, 0, false);
        let deadline = Instant::now() + Duration::from_secs(5);
        while recv_bytes < 512 || msg_bytes < 1024 || oneshots < 4 || accepted < 1 || !cancelled {
            assert!(Instant::now() < deadline, "round stalled");
            out.clear();
            u.poll(100, out).unwrap();
            for c in out.iter() {
                match c.token.kind() {
                    Some(OpKind::Recv) => {
                        if !c.more {
                            assert_eq!(c.res, -libc::ECANCELED);
                            cancelled = true;
                            submit(u, rt, Op::Recv { fd: b.as_raw_fd() }).unwrap();
                        } else {
                            recv_bytes += c.res as usize;
                        }
                    }
                    Some(OpKind::RecvMsg) => {
                        // SAFETY: lent until recycle below.
                        let buf = unsafe { u.pool().slice(c.buf.unwrap(), c.res as usize) };
                        let rec = parse_recvmsg(buf).unwrap();
                        msg_bytes += rec.payload.len();
                        socket::for_each_rights_fd(rec.control, sys::close);
                    }
                    Some(OpKind::Accept) => {
                        sys::close(c.res);
                        accepted += 1;
                    }
                    _ => {
                        assert!(c.res >= 0, "{c:?}");
                        oneshots += 1;
                    }
                }
                if let Some(id) = c.buf {
                    u.recycle(id);
                }
            }
        }
        drop(s);
    };
    for _ in 0..3 {
        round(&mut u, &mut out, &mut evbuf);
    }
    let (allocs, ()) = alloc_count::count_allocs(|| {
        for _ in 0..20 {
            round(&mut u, &mut out, &mut evbuf);
        }
    });
    assert_eq!(allocs, 0, "the driver's hot paths allocated {allocs} times after warm-up");
}

#[test]
fn cancelled_accept_does_not_strand_a_claimed_connection() {
    // Two rings accept on one listener (two workers sharing it). A
    // connection's exclusive wake-up goes to the first ring, which then stops
    // listening before it polled. The connection must not be left in the
    // queue unannounced: the first ring delivers it before its final
    // completion (and the second ring is not needed).
    let mut a = driver_or_skip!();
    let mut b = driver_or_skip!();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let addr = listener.local_addr().unwrap();
    let (ta, tb) = (token(60, OpKind::Accept), token(61, OpKind::Accept));
    let mut out = Vec::with_capacity(8);
    submit(&mut a, ta, Op::Accept { fd: listener.as_raw_fd(), exclusive: true }).unwrap();
    a.poll(0, &mut out).unwrap();
    submit(&mut b, tb, Op::Accept { fd: listener.as_raw_fd(), exclusive: true }).unwrap();
    b.poll(0, &mut out).unwrap();
    assert!(out.is_empty());
    let client = TcpStream::connect(addr).unwrap();
    std::thread::sleep(Duration::from_millis(20));
    a.cancel(listener.as_raw_fd(), ta);
    let mut ca_all = wait_for(&mut a, ta, 1);
    while ca_all.last().unwrap().more {
        ca_all.extend(wait_for(&mut a, ta, 1));
    }
    let mut accepted = 0;
    for c in &ca_all {
        if c.res >= 0 {
            accepted += 1;
            sys::close(c.res);
        }
    }
    assert_eq!(ca_all.last().map(|c| (c.res, c.more)), Some((-libc::ECANCELED, false)), "{ca_all:?}");
    if accepted == 0 {
        // Ring A did not claim it (the wake-up went elsewhere): B must have it.
        let cb = wait_for(&mut b, tb, 1);
        assert!(cb[0].res >= 0, "{cb:?}");
        sys::close(cb[0].res);
    }
    b.cancel(listener.as_raw_fd(), tb);
    let end = wait_for(&mut b, tb, 1);
    assert!(!end.last().unwrap().more);
    for c in &end {
        if c.res >= 0 {
            sys::close(c.res);
        }
    }
    drop(client);
}

#[test]
fn a_cancelled_accept_stops_claiming_connections_at_once() {
    // Ring A (first in the listener's wait queue) cancels its accept and
    // then does not poll for a while, as a busy process would. Connections
    // arriving meanwhile must wake ring B, not vanish into A's cancelled op.
    let mut a = driver_or_skip!();
    let mut b = driver_or_skip!();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let addr = listener.local_addr().unwrap();
    let (ta, tb) = (token(62, OpKind::Accept), token(63, OpKind::Accept));
    let mut out = Vec::with_capacity(8);
    submit(&mut a, ta, Op::Accept { fd: listener.as_raw_fd(), exclusive: true }).unwrap();
    a.poll(0, &mut out).unwrap();
    submit(&mut b, tb, Op::Accept { fd: listener.as_raw_fd(), exclusive: true }).unwrap();
    b.poll(0, &mut out).unwrap();
    a.cancel(listener.as_raw_fd(), ta);
    let clients: Vec<TcpStream> = (0..3).map(|_| TcpStream::connect(addr).unwrap()).collect();
    let got = wait_for(&mut b, tb, 3);
    for c in &got {
        assert!(c.res >= 0 && c.more, "{c:?}");
        sys::close(c.res);
    }
    let fin = wait_for(&mut a, ta, 1);
    assert_eq!(fin.iter().map(|c| (c.res, c.more)).collect::<Vec<_>>(), vec![(-libc::ECANCELED, false)]);
    b.cancel(listener.as_raw_fd(), tb);
    let end = wait_for(&mut b, tb, 1);
    assert!(!end.last().unwrap().more);
    drop(clients);
}

#[test]
fn recvfrom_records_name_their_sender_and_sendto_reaches_its_address() {
    let mut u = driver_or_skip!();
    let receiver = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    receiver.set_nonblocking(true).unwrap();
    let sender = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let (at, from) = (receiver.local_addr().unwrap(), sender.local_addr().unwrap());
    let r = token(90, OpKind::RecvFrom);
    submit(&mut u, r, Op::RecvFrom { fd: receiver.as_raw_fd() }).unwrap();
    // Two datagrams from one socket, one of them empty: both are records.
    let msgs: [&[u8]; 2] = [b"hello", b""];
    let dest = SockAddr::from_std(&at);
    for (i, m) in msgs.iter().enumerate() {
        let iov = [libc::iovec { iov_base: m.as_ptr() as *mut _, iov_len: m.len() }];
        let t = token(91 + i, OpKind::SendTo);
        // SAFETY: the bytes are static and outlive the completion, awaited below.
        unsafe { u.submit(t, Op::SendTo { fd: sender.as_raw_fd(), iov: &iov, addr: Some(&dest) }).unwrap() };
        let c = wait_for(&mut u, t, 1);
        assert_eq!((c[0].res, c[0].more), (m.len() as i32, false));
    }
    let got = wait_for(&mut u, r, 2);
    for (c, m) in got.iter().zip(msgs) {
        assert!(c.more, "the receive goes on: {c:?}");
        let id = c.buf.expect("a record");
        // SAFETY: the completion lent buffer `id` to us until `recycle`.
        let rec = unsafe { u.pool().slice(id, c.res as usize) };
        let rec = parse_record(rec, RecordLayout::DATAGRAM).expect("a datagram record");
        assert_eq!(rec.payload, m);
        assert_eq!(SockAddr::from_bytes(rec.name).to_std(), Some(from));
        assert_eq!(rec.flags & libc::MSG_TRUNC, 0);
        u.recycle(id);
    }
    u.cancel(receiver.as_raw_fd(), r);
    let end = wait_for(&mut u, r, 1);
    assert_eq!((end[0].res, end[0].more), (-libc::ECANCELED, false));
}

/// Datagrams that find the socket full wait in the kernel each on its own,
/// so they may leave (and complete) in another order than submitted; the
/// loop runs their callbacks in submission order regardless.
#[test]
fn many_datagrams_in_flight_on_a_full_socket_each_complete_once() {
    let mut u = driver_or_skip!();
    let (a, b) = std::os::unix::net::UnixDatagram::pair().unwrap();
    a.set_nonblocking(true).unwrap();
    b.set_nonblocking(true).unwrap();
    // More than the peer's queue holds, so some wait for room in the kernel.
    const N: usize = 2000;
    let payloads: Vec<[u8; 8]> = (0..N as u64).map(u64::to_le_bytes).collect();
    let tokens: Vec<Token> = (0..N).map(|i| token(1000 + i, OpKind::SendTo)).collect();
    for (p, &t) in payloads.iter().zip(&tokens) {
        let iov = [libc::iovec { iov_base: p.as_ptr() as *mut _, iov_len: p.len() }];
        // SAFETY: `payloads` outlives every completion (all awaited below).
        unsafe { u.submit(t, Op::SendTo { fd: a.as_raw_fd(), iov: &iov, addr: None }).unwrap() };
    }
    let (mut done, mut got) = (Vec::new(), Vec::new());
    let mut out = Vec::with_capacity(256);
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut blocked = false;
    while done.len() < N || got.len() < N {
        assert!(Instant::now() < deadline, "timed out: {} done, {} received", done.len(), got.len());
        out.clear();
        u.poll(10, &mut out).unwrap();
        done.extend(out.iter().map(|c| {
            assert_eq!((c.res, c.more), (8, false), "{c:?}");
            c.token
        }));
        blocked |= done.len() < N;
        let mut buf = [0u8; 8];
        while let Ok(8) = b.recv(&mut buf) {
            got.push(u64::from_le_bytes(buf));
        }
    }
    assert!(blocked, "the socket filled up");
    let mut sorted = done.clone();
    sorted.sort_by_key(|t| t.index());
    assert_eq!(sorted, tokens, "each send completed exactly once");
    got.sort_unstable();
    assert_eq!(got, (0..N as u64).collect::<Vec<_>>(), "each datagram arrived once");
}

/// Every feature on but `SEND_ZC`.
const FIXED: Features = Features { ring_fd: true, fixed_files: true, send_zc: false, close: true };

/// A driver with a registered-file table, or `None` (after saying why).
fn fixed_driver() -> Option<Uring> {
    let u = driver_with(FIXED)?;
    if u.fixed.is_none() {
        eprintln!("SKIP: no registered-file table on this kernel");
        return None;
    }
    Some(u)
}

/// Registered sockets in `u`'s file table.
fn fixed_count(u: &Uring) -> usize {
    u.fixed.as_ref().map_or(0, |f| f.count())
}

/// Echoes `msg` from `a` through a recv on `b` (armed by the caller as
/// `rt`), returning the bytes received.
fn recv_once(u: &mut Uring, rt: Token, a: RawFd, msg: &[u8]) -> Vec<u8> {
    let iov = [libc::iovec { iov_base: msg.as_ptr() as *mut _, iov_len: msg.len() }];
    let st = Token::new(rt.index(), rt.generation() + 1, OpKind::Send);
    // SAFETY: `msg` outlives the send's completion (awaited below).
    unsafe { u.submit(st, Op::Send { fd: a, iov: &iov, fds: &[] }).unwrap() };
    assert_eq!(wait_for(u, st, 1)[0].res, msg.len() as i32);
    let c = wait_for(u, rt, 1)[0];
    let mut got = Vec::new();
    take_bytes(u, &c, &mut got);
    got
}

/// Ends recv `rt` on `fd`, empties its slot and closes it, as the loop does.
fn end_and_close(u: &mut Uring, rt: Token, fd: OwnedFd) {
    u.cancel(fd.as_raw_fd(), rt);
    let end = wait_for(u, rt, 1);
    assert!(!end[0].more, "{end:?}");
    u.deregister(fd.as_raw_fd());
    drop(fd);
}

/// Whether the peer of a closed socket sees EOF (the close really closed).
fn sees_eof(peer: &OwnedFd) -> bool {
    let mut p = libc::pollfd { fd: peer.as_raw_fd(), events: libc::POLLIN, revents: 0 };
    // SAFETY: one valid pollfd for the call.
    let n = unsafe { libc::poll(&mut p, 1, 5000) };
    let mut buf = [0u8; 8];
    n == 1 && sys::read(peer.as_raw_fd(), &mut buf).ok() == Some(0)
}

#[test]
fn features_parse_from_a_list() {
    let d = Features::default();
    assert_eq!(Features::parse(""), d);
    assert_eq!(
        Features::parse("no_ring_fd, fixed_files,send_zc,bogus"),
        Features { ring_fd: false, fixed_files: true, send_zc: true, close: false }
    );
    assert_eq!(Features::parse("send_zc,no_send_zc"), d);
    assert_eq!(Features::parse("close"), Features { close: true, ..d });
}

/// Whether `peer` has seen its other end close, without waiting. (Not an
/// fd-table check: another test thread may reuse a closed fd's number.)
fn closed_by_now(peer: &OwnedFd) -> bool {
    let mut p = libc::pollfd { fd: peer.as_raw_fd(), events: libc::POLLIN, revents: 0 };
    // SAFETY: one valid pollfd for the call.
    unsafe { libc::poll(&mut p, 1, 0) == 1 }
}

#[test]
fn close_fd_goes_with_the_next_submission() {
    let Some(mut u) = driver_with(Features { close: true, ..Features::default() }) else { return };
    let (a, b) = pair();
    let fd = b.into_raw_fd();
    u.close_fd(fd);
    assert!(!closed_by_now(&a), "queued, not closed, until the ring is entered");
    u.flush();
    assert!(closed_by_now(&a), "closed by the flush's submission");
    assert!(sees_eof(&a));
    // And by a poll's submission, the usual way.
    let (a, b) = pair();
    let fd = b.into_raw_fd();
    u.close_fd(fd);
    let mut out = Vec::with_capacity(8);
    u.poll(0, &mut out).unwrap();
    assert!(closed_by_now(&a) && out.is_empty(), "closed, and its completion is not the loop's: {out:?}");
    assert!(sees_eof(&a));
}

#[test]
fn close_fd_without_the_feature_closes_at_once() {
    let Some(mut u) = driver_with(Features::default()) else { return };
    let (a, b) = pair();
    let fd = b.into_raw_fd();
    u.close_fd(fd);
    assert!(closed_by_now(&a));
    assert!(sees_eof(&a));
}

#[test]
fn a_queued_close_is_done_when_the_ring_is_dropped() {
    let Some(mut u) = driver_with(Features { close: true, ..Features::default() }) else { return };
    let (a, b) = pair();
    let fd = b.into_raw_fd();
    u.close_fd(fd);
    drop(u);
    assert!(closed_by_now(&a));
    assert!(sees_eof(&a));
}

#[test]
fn fixed_files_register_on_first_recv_and_close_really_closes() {
    let Some(mut u) = fixed_driver() else { return };
    let (a, b) = pair();
    let rt = token(40, OpKind::Recv);
    submit(&mut u, rt, Op::Recv { fd: b.as_raw_fd() }).unwrap();
    // b by its recv, a by its send.
    assert_eq!(recv_once(&mut u, rt, a.as_raw_fd(), b"fixed"), b"fixed");
    assert_eq!(fixed_count(&u), 2);
    assert_eq!(recv_once(&mut u, rt, a.as_raw_fd(), b"again"), b"again");
    end_and_close(&mut u, rt, b);
    assert_eq!(fixed_count(&u), 1);
    assert!(sees_eof(&a), "a socket closed after deregister must be closed, not held by the table");
}

#[test]
fn fds_received_over_ipc_are_registered_on_first_use() {
    let Some(mut u) = fixed_driver() else { return };
    let (ipc_a, ipc_b) = pair();
    let mt = token(41, OpKind::RecvMsg);
    submit(&mut u, mt, Op::RecvMsg { fd: ipc_b.as_raw_fd() }).unwrap();
    let (conn, peer) = pair();
    let msg = b"fd".to_vec();
    let iov = [libc::iovec { iov_base: msg.as_ptr() as *mut _, iov_len: msg.len() }];
    let st = token(41, OpKind::Send);
    // SAFETY: `msg` and `conn` outlive the send's completion (awaited).
    unsafe { u.submit(st, Op::Send { fd: ipc_a.as_raw_fd(), iov: &iov, fds: &[conn.as_raw_fd()] }).unwrap() };
    assert_eq!(wait_for(&mut u, st, 1)[0].res, 2);
    drop(conn);
    let c = wait_for(&mut u, mt, 1)[0];
    let id = c.buf.unwrap();
    let mut received = Vec::new();
    {
        // SAFETY: the completion lent buffer `id` until recycle.
        let rec = parse_recvmsg(unsafe { u.pool().slice(id, c.res as usize) }).unwrap();
        socket::for_each_rights_fd(rec.control, |fd| received.push(fd));
    }
    u.recycle(id);
    assert_eq!(received.len(), 1);
    // SAFETY: the fd just arrived and nothing else owns it.
    let got = unsafe { sys::owned(received[0]) };
    let got_fd = got.as_raw_fd();
    let slot = |u: &Uring| u.fixed.as_ref().and_then(|f| f.lookup(got_fd));
    assert_eq!(slot(&u), None);
    let rt = token(42, OpKind::Recv);
    submit(&mut u, rt, Op::Recv { fd: got_fd }).unwrap();
    assert_eq!(slot(&u), Some(got_fd as u32), "the received fd is registered by its first recv");
    assert_eq!(recv_once(&mut u, rt, peer.as_raw_fd(), b"over ipc"), b"over ipc");
    end_and_close(&mut u, rt, got);
    assert_eq!(slot(&u), None, "deregister empties the slot");
    assert!(sees_eof(&peer));
}

#[test]
fn a_full_file_table_falls_back_to_plain_fds() {
    // Two slots: every socket here has a higher fd number, so none fits.
    let Some(mut u) = or_skip(Uring::build(PoolConfig::default(), FIXED, 2)) else { return };
    let (a, b) = pair();
    let rt = token(43, OpKind::Recv);
    submit(&mut u, rt, Op::Recv { fd: b.as_raw_fd() }).unwrap();
    assert_eq!(recv_once(&mut u, rt, a.as_raw_fd(), b"plain"), b"plain");
    assert_eq!(fixed_count(&u), 0);
    end_and_close(&mut u, rt, b);
    assert!(sees_eof(&a));
}

#[test]
fn every_feature_off_still_works() {
    let off = Features { ring_fd: false, fixed_files: false, send_zc: false, close: false };
    let Some(mut u) = driver_with(off) else { return };
    assert!(u.fixed.is_none() && u.ring_index.is_none());
    assert!(!u.features().contains("fixed_files") && !u.features().contains("ring_fd"), "{}", u.features());
    let (a, b) = pair();
    let rt = token(44, OpKind::Recv);
    submit(&mut u, rt, Op::Recv { fd: b.as_raw_fd() }).unwrap();
    assert_eq!(recv_once(&mut u, rt, a.as_raw_fd(), b"off"), b"off");
    end_and_close(&mut u, rt, b);
    assert!(sees_eof(&a));
}

#[test]
fn send_zc_completes_once_on_tcp_and_falls_back_on_unix_sockets() {
    let Some(mut u) = driver_with(Features { send_zc: true, ..FIXED }) else { return };
    if !u.send_zc {
        eprintln!("SKIP: no SEND_ZC on this kernel");
        return;
    }
    let big = vec![5u8; 64 * 1024];
    let iov = [libc::iovec { iov_base: big.as_ptr() as *mut _, iov_len: big.len() }];
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let tcp = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let (mut server, _) = listener.accept().unwrap();
    let (ua, ub) = pair();
    for (i, fd) in [tcp.as_raw_fd(), ua.as_raw_fd()].into_iter().enumerate() {
        let t = token(45 + i, OpKind::Send);
        // SAFETY: `big` outlives the send's completion (awaited below).
        unsafe { u.submit(t, Op::Send { fd, iov: &iov, fds: &[] }).unwrap() };
        let cs = wait_for(&mut u, t, 1);
        assert!(cs[0].res > 0 && !cs[0].more, "{cs:?}");
        let mut all = Vec::new();
        poll_until(&mut u, &mut all, |_| true);
        assert!(all.iter().all(|c| c.token != t), "one completion per send: {all:?}");
    }
    let mut buf = [0u8; 16];
    server.set_nonblocking(false).unwrap();
    std::io::Read::read_exact(&mut server, &mut buf).unwrap();
    assert_eq!(buf, [5u8; 16]);
    let n = sys::read(ub.as_raw_fd(), &mut buf).unwrap();
    assert_eq!(&buf[..n], &[5u8; 16][..n]);
}
