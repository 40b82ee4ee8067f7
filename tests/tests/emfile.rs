//! Accept under fd exhaustion (libuv's emfile): with RLIMIT_NOFILE lowered
//! and every fd in use, a pending connection does not make the loop spin,
//! other handles keep working, and accepting resumes once fds are free.
//!
//! The limit is process-wide: the harness serialises this binary's tests,
//! and the soft limit is restored (and the filler fds closed) even if the
//! test fails.

use std::cell::{Cell, RefCell};
use std::os::fd::OwnedFd;
use std::rc::Rc;
use std::time::{Duration, Instant};
use uvring::*;
use uvring_tests::{both_backends, listener_with_backlog, run_until};

const LIMIT: Duration = Duration::from_secs(10);

/// Milliseconds.
fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn getrlimit() -> libc::rlimit {
    let mut r = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: `r` is a valid rlimit to fill.
    assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) }, 0);
    r
}

fn setrlimit(r: libc::rlimit) {
    // SAFETY: `r` is a valid rlimit; only the soft limit changes, which an
    // unprivileged process may raise again up to the hard limit.
    assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &r) }, 0);
}

/// Holds the process at its fd limit; dropping it frees the fds and
/// restores the soft limit.
struct Exhausted {
    saved: libc::rlimit,
    fillers: Vec<OwnedFd>,
}

impl Exhausted {
    /// Lowers the soft limit to just above the highest fd in use, then
    /// opens fds until `EMFILE`.
    fn new() -> Exhausted {
        let saved = getrlimit();
        let highest = std::fs::read_dir("/proc/self/fd")
            .unwrap()
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u64>().ok())
            .max()
            .unwrap();
        let mut lowered = saved;
        lowered.rlim_cur = (highest + 1 + 8).min(saved.rlim_max);
        setrlimit(lowered);
        let mut fillers = Vec::new();
        loop {
            match std::fs::File::open("/dev/null") {
                Ok(f) => fillers.push(OwnedFd::from(f)),
                Err(e) => {
                    assert_eq!(e.raw_os_error(), Some(libc::EMFILE), "filling fds: {e}");
                    break;
                }
            }
        }
        Exhausted { saved, fillers }
    }

    fn release(self) {}
}

impl Drop for Exhausted {
    fn drop(&mut self) {
        self.fillers.clear();
        setrlimit(self.saved);
    }
}

both_backends! {
    fn emfile(lp) {
        let served = Rc::new(RefCell::new(Vec::new()));
        let (accepted, accept_errors) = (Rc::new(Cell::new(0u32)), Rc::new(RefCell::new(Vec::new())));
        let on_written = OnWrite::new(|lp, _, s: TcpStream, st| {
            st.unwrap();
            lp.close(s, None).unwrap();
        });
        let on_connection = {
            let (accepted, accept_errors) = (accepted.clone(), accept_errors.clone());
            OnConnection::new(move |lp, _, srv, st| match st {
                Ok(()) => {
                    let c = lp.accept(srv).unwrap();
                    accepted.set(accepted.get() + 1);
                    lp.write(c, b"served", Some(&on_written)).unwrap();
                }
                Err(e) => accept_errors.borrow_mut().push(e),
            })
        };
        let (server, addr) = listener_with_backlog(lp, 8, &on_connection);

        let ticks = Rc::new(Cell::new(0u32));
        let timer = lp.timer_init().unwrap();
        let k = ticks.clone();
        lp.timer_start(timer, ms(20), ms(20), &OnTimer::new(move |_, _, _| k.set(k.get() + 1))).unwrap();

        // The client's socket exists before the fds run out; its connect
        // completes in the kernel's backlog, the accept cannot.
        let on_read = {
            let served = served.clone();
            OnRead::new(move |lp, _, s, res| match res {
                Ok(b) => served.borrow_mut().extend_from_slice(b),
                Err(_) => lp.close(s, None).unwrap(),
            })
        };
        let client = lp.tcp_init().unwrap();
        let client = lp.tcp_connect(client, addr, &OnConnect::new(|_, _, _, st| st.unwrap())).unwrap();
        lp.read_start(client, &on_read).unwrap();
        let exhausted = Exhausted::new();

        // 300 ms at the limit: no spinning, the timer ticks, nothing accepted.
        let (iter0, ticks0) = (lp.iterations(), ticks.get());
        let end = Instant::now() + Duration::from_millis(300);
        run_until(lp, LIMIT, |_| Instant::now() >= end);
        let iterations = lp.iterations() - iter0;
        eprintln!(
            "at the fd limit for 300 ms: {iterations} iterations, {} timer ticks, {} accept errors",
            ticks.get() - ticks0,
            accept_errors.borrow().len()
        );
        assert!(iterations < 50, "the loop spun: {iterations} iterations in 300 ms");
        assert!(ticks.get() - ticks0 >= 2, "the timer kept working");
        assert_eq!(accepted.get(), 0);
        assert!(!accept_errors.borrow().is_empty(), "the listener reports EMFILE");
        assert!(accept_errors.borrow().iter().all(|e| *e == Error::EMFILE), "{:?}", accept_errors.borrow());
        assert!(lp.is_active(server), "the listener stays alive");

        // Free the fds: the pending connection is accepted and served.
        exhausted.release();
        run_until(lp, LIMIT, |lp| !lp.is_live(client));
        assert_eq!(accepted.get(), 1);
        assert_eq!(*served.borrow(), b"served");
        lp.close(server, None).unwrap();
        lp.close(timer, None).unwrap();
        assert!(!lp.run(RunMode::Default, &mut ()).unwrap());
    }
}
