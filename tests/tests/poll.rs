//! Poll watchers on foreign fds (`uv_poll_t`), libuv's poll scenarios that
//! apply to Linux: readable and writable on a socketpair, level-triggered
//! repeats, disconnect, stop and restart with other events, close while
//! polling. The loop never owns the fds: each test closes them itself and
//! checks they were still open.

use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use uvring::*;
use uvring_tests::both_backends;

/// What the callbacks saw, in order.
#[derive(Default)]
struct Seen {
    events: Vec<PollEvents>,
    errors: Vec<Error>,
    closed: usize,
}

fn pair() -> (UnixStream, UnixStream) {
    let (a, b) = UnixStream::pair().unwrap();
    a.set_nonblocking(true).unwrap();
    b.set_nonblocking(true).unwrap();
    (a, b)
}

/// A loop of the harness's backend whose data is `Seen`.
fn seen_loop(lp: &Loop) -> Loop<Seen> {
    Loop::with_backend(lp.backend()).unwrap()
}

/// Records each event, then stops the watcher.
fn record_and_stop() -> OnPoll<Seen> {
    OnPoll::new(|lp, seen: &mut Seen, p, res| {
        match res {
            Ok(e) => seen.events.push(e),
            Err(e) => seen.errors.push(e),
        }
        lp.poll_stop(p).unwrap();
    })
}

fn close_and_finish(lp: &mut Loop<Seen>, p: Poll, seen: &mut Seen) {
    let on_close = OnClose::new(|_, seen: &mut Seen, _| seen.closed += 1);
    lp.close(p, Some(&on_close)).unwrap();
    assert!(!lp.run(RunMode::Default, seen).unwrap());
    assert_eq!(seen.closed, 1);
    assert_eq!(lp.handle_count(), 0);
}

both_backends! {
    /// A byte waiting on the socket makes the watcher report READABLE (and
    /// only what it asked for).
    fn poll_readable(lp) {
        let mut plp = seen_loop(lp);
        let (a, mut b) = pair();
        b.write_all(b"x").unwrap();
        let p = plp.poll_init(a.as_raw_fd()).unwrap();
        plp.poll_start(p, PollEvents::READABLE, &record_and_stop()).unwrap();
        let mut seen = Seen::default();
        assert!(!plp.run(RunMode::Default, &mut seen).unwrap());
        assert_eq!(seen.events, [PollEvents::READABLE]);
        assert!(seen.errors.is_empty());
        // The fd is still open and still holds the byte: the loop never read it.
        let mut buf = [0u8; 4];
        assert_eq!((&a).read(&mut buf).unwrap(), 1);
        close_and_finish(&mut plp, p, &mut seen);
    }

    /// A fresh socket is writable at once; asking for both directions on a
    /// socket with nothing to read reports WRITABLE only.
    fn poll_writable(lp) {
        let mut plp = seen_loop(lp);
        let (a, _b) = pair();
        let p = plp.poll_init(a.as_raw_fd()).unwrap();
        plp.poll_start(p, PollEvents::READABLE | PollEvents::WRITABLE, &record_and_stop()).unwrap();
        let mut seen = Seen::default();
        assert!(!plp.run(RunMode::Default, &mut seen).unwrap());
        assert_eq!(seen.events, [PollEvents::WRITABLE]);
        close_and_finish(&mut plp, p, &mut seen);
    }

    /// Level-triggered: while the data stays unread, the watcher reports it
    /// again on the following iterations; once it is read, nothing more.
    fn poll_level_triggered(lp) {
        let mut plp = seen_loop(lp);
        let (a, mut b) = pair();
        b.write_all(b"abc").unwrap();
        let p = plp.poll_init(a.as_raw_fd()).unwrap();
        let reader = a.try_clone().unwrap();
        let cb = OnPoll::new(move |lp, seen: &mut Seen, p, res| {
            seen.events.push(res.unwrap());
            if seen.events.len() == 3 {
                // Drain the socket: the fd is no longer readable.
                let mut buf = [0u8; 16];
                assert_eq!((&reader).read(&mut buf).unwrap(), 3);
                // Stop after one more iteration with nothing to report.
                let t = lp.timer_init().unwrap();
                let stop = OnTimer::new(move |lp, _, t| {
                    lp.poll_stop(p).unwrap();
                    lp.close(t, None).unwrap();
                });
                lp.timer_start(t, std::time::Duration::from_millis(20), std::time::Duration::ZERO, &stop).unwrap();
            }
        });
        plp.poll_start(p, PollEvents::READABLE, &cb).unwrap();
        let mut seen = Seen::default();
        assert!(!plp.run(RunMode::Default, &mut seen).unwrap());
        assert_eq!(seen.events, [PollEvents::READABLE; 3], "reported while readable, then not again");
        close_and_finish(&mut plp, p, &mut seen);
    }

    /// The peer closing its end is a DISCONNECT (with READABLE: the end of
    /// stream is there to read).
    fn poll_disconnect(lp) {
        let mut plp = seen_loop(lp);
        let (a, b) = pair();
        let p = plp.poll_init(a.as_raw_fd()).unwrap();
        plp.poll_start(p, PollEvents::READABLE | PollEvents::DISCONNECT, &record_and_stop()).unwrap();
        drop(b);
        let mut seen = Seen::default();
        assert!(!plp.run(RunMode::Default, &mut seen).unwrap());
        assert_eq!(seen.events.len(), 1);
        assert!(seen.events[0].contains(PollEvents::DISCONNECT), "{:?}", seen.events);
        assert!(seen.events[0].contains(PollEvents::READABLE), "{:?}", seen.events);
        close_and_finish(&mut plp, p, &mut seen);
    }

    /// Stop, then start again with other events: only the new events are
    /// reported, and a stopped watcher reports nothing and does not keep the
    /// loop alive.
    fn poll_stop_and_restart(lp) {
        let mut plp = seen_loop(lp);
        let (a, mut b) = pair();
        let p = plp.poll_init(a.as_raw_fd()).unwrap();
        // Waiting for readable on an idle socket, then stopped at once.
        plp.poll_start(p, PollEvents::READABLE, &record_and_stop()).unwrap();
        assert!(plp.is_active(p));
        plp.poll_stop(p).unwrap();
        assert!(!plp.is_active(p));
        b.write_all(b"x").unwrap();
        let mut seen = Seen::default();
        assert!(!plp.run(RunMode::Default, &mut seen).unwrap(), "a stopped watcher keeps nothing alive");
        assert!(seen.events.is_empty(), "{:?}", seen.events);
        // Started for writable while readable is also true: writable only.
        plp.poll_start(p, PollEvents::WRITABLE, &record_and_stop()).unwrap();
        assert!(!plp.run(RunMode::Default, &mut seen).unwrap());
        assert_eq!(seen.events, [PollEvents::WRITABLE]);
        // Changed while started (readable -> writable) before any event.
        seen.events.clear();
        let mut buf = [0u8; 4];
        assert_eq!((&a).read(&mut buf).unwrap(), 1);
        plp.poll_start(p, PollEvents::READABLE, &record_and_stop()).unwrap();
        plp.poll_start(p, PollEvents::WRITABLE, &record_and_stop()).unwrap();
        assert!(!plp.run(RunMode::Default, &mut seen).unwrap());
        assert_eq!(seen.events, [PollEvents::WRITABLE]);
        close_and_finish(&mut plp, p, &mut seen);
    }

    /// Closing a watcher while it polls: its close callback runs, its poll
    /// callback never does, and the fd stays open (the loop does not own it).
    fn poll_close_while_polling(lp) {
        let mut plp = seen_loop(lp);
        let (a, mut b) = pair();
        let p = plp.poll_init(a.as_raw_fd()).unwrap();
        plp.poll_start(p, PollEvents::READABLE, &record_and_stop()).unwrap();
        let mut seen = Seen::default();
        assert!(plp.run(RunMode::NoWait, &mut seen).unwrap(), "polling keeps the loop alive");
        close_and_finish(&mut plp, p, &mut seen);
        assert!(seen.events.is_empty() && seen.errors.is_empty());
        // Still open: a byte written now arrives.
        b.write_all(b"y").unwrap();
        let mut buf = [0u8; 4];
        a.set_nonblocking(false).unwrap();
        assert_eq!((&a).read(&mut buf).unwrap(), 1);
        // A new watcher on the same fd works (the old registration is gone).
        let p2 = plp.poll_init(a.as_raw_fd()).unwrap();
        b.write_all(b"z").unwrap();
        plp.poll_start(p2, PollEvents::READABLE, &record_and_stop()).unwrap();
        assert!(!plp.run(RunMode::Default, &mut seen).unwrap());
        assert_eq!(seen.events, [PollEvents::READABLE]);
        seen.closed = 0;
        close_and_finish(&mut plp, p2, &mut seen);
    }

    /// Regression: a watcher closed and a new one started on the same fd
    /// at once: the first one's close must not take the fd away from the
    /// second (epoll forgot the fd in the closing phase, so the second never
    /// fired and its close never finished).
    fn poll_close_then_new_watcher_on_same_fd(lp) {
        let mut plp = seen_loop(lp);
        let (a, mut b) = pair();
        let p1 = plp.poll_init(a.as_raw_fd()).unwrap();
        plp.poll_start(p1, PollEvents::READABLE, &record_and_stop()).unwrap();
        plp.close(p1, None).unwrap();
        let p2 = plp.poll_init(a.as_raw_fd()).unwrap();
        plp.poll_start(p2, PollEvents::READABLE, &record_and_stop()).unwrap();
        let mut seen = Seen::default();
        // Let p1's close finish before the byte arrives.
        assert!(plp.run(RunMode::NoWait, &mut seen).unwrap());
        assert!(plp.run(RunMode::NoWait, &mut seen).unwrap());
        b.write_all(b"x").unwrap();
        assert!(!plp.run(RunMode::Default, &mut seen).unwrap());
        assert_eq!(seen.events, [PollEvents::READABLE]);
        close_and_finish(&mut plp, p2, &mut seen);
    }

    /// Misuse is refused: a negative fd, empty events, a closed watcher.
    fn poll_misuse(lp) {
        let mut plp = seen_loop(lp);
        assert_eq!(plp.poll_init(-1).err(), Some(Error::EBADF));
        let (a, _b) = pair();
        let p = plp.poll_init(a.as_raw_fd()).unwrap();
        assert_eq!(plp.poll_start(p, PollEvents::empty(), &record_and_stop()), Err(Error::EINVAL));
        assert_eq!(plp.fileno(p), Ok(a.as_raw_fd()));
        assert_eq!(plp.handle_type(p), Ok(HandleType::Poll));
        let mut seen = Seen::default();
        close_and_finish(&mut plp, p, &mut seen);
        assert_eq!(plp.poll_stop(p), Err(Error::STALE_HANDLE));
    }
}
