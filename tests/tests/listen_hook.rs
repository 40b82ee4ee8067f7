//! The listen hook (`ListenHook`), the seam through which the cluster layer
//! takes over `listen` in a worker: `listen` only records the request, and
//! the loop asks the hook from its pending phase with the user's data `D`
//! (so the hook keeps its state in `D`, with no cell); `closed` comes from
//! the closing phase with `D` and the number of connections the user never
//! accepted. A hook that declines listens locally; an error reaches
//! `on_connection`; `listen_bind` binds the listener's own socket (with
//! `SO_REUSEPORT`) without a scratch socket.

use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::rc::Rc;
use std::time::Duration;
use uvring::*;
use uvring_tests::{both_backends, run_until_with};

const LIMIT: Duration = Duration::from_secs(20);

/// What the hook does when it is asked.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
enum Mode {
    /// Take the listener over and inject `Hooked::to_inject`.
    #[default]
    TakeOver,
    /// Decline: the loop listens locally.
    Decline,
    /// Refuse with this error.
    Fail(Error),
    /// Bind the listener's own socket with `SO_REUSEPORT` (`listen_bind`).
    ReusePort,
}

/// The loop's user data: the hook's state lives here, not in the hook.
#[derive(Default)]
struct Hooked {
    mode: Mode,
    /// Connections the hook injects when it takes a listener over.
    to_inject: Vec<OwnedFd>,
    /// What the hook and the callbacks saw, in order.
    log: Vec<String>,
    /// Connections `on_connection` accepts before it closes the listener.
    accept_then_close: usize,
    accepted: Vec<TcpStream>,
    errors: Vec<Error>,
}

/// A hook without state of its own.
struct Hook;

impl ListenHook<Hooked> for Hook {
    fn listen(
        &self,
        lp: &mut Loop<Hooked>,
        d: &mut Hooked,
        server: TcpListener,
        addr: SocketAddr,
        flags: u32,
        backlog: i32,
    ) -> Option<Result<()>> {
        assert!(lp.is_active(server), "the listener is listening while the hook is asked");
        d.log.push(format!("listen {addr}"));
        match d.mode {
            Mode::TakeOver => {
                for fd in d.to_inject.drain(..) {
                    lp.listen_inject(server, fd).map_err(|(e, _)| e).unwrap();
                }
                Some(Ok(()))
            }
            Mode::Decline => None,
            Mode::Fail(e) => Some(Err(e)),
            Mode::ReusePort => Some(lp.listen_bind(server, addr, flags | TCP_REUSEPORT, backlog)),
        }
    }

    fn closed(&self, lp: &mut Loop<Hooked>, d: &mut Hooked, server: TcpListener, dropped: usize) {
        // From the closing phase: the id is still valid, and closing.
        assert!(lp.is_live(server) && lp.is_closing(server));
        d.log.push(format!("closed {dropped}"));
    }
}

fn on_connection() -> OnConnection<Hooked, TcpListener> {
    OnConnection::new(|lp: &mut Loop<Hooked>, d: &mut Hooked, l, res| match res {
        Ok(()) => {
            d.log.push("connection".into());
            if d.accepted.len() < d.accept_then_close {
                let c = lp.accept(l).unwrap();
                d.accepted.push(c);
                if d.accepted.len() == d.accept_then_close {
                    lp.close(l, None).unwrap();
                }
            }
        }
        Err(e) => {
            d.log.push(format!("error {e}"));
            d.errors.push(e);
        }
    })
}

/// `n` connected server-side sockets (their clients are returned too).
fn connections(n: usize) -> (Vec<OwnedFd>, Vec<std::net::TcpStream>) {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let clients: Vec<_> = (0..n).map(|_| std::net::TcpStream::connect(addr).unwrap()).collect();
    let servers = (0..n).map(|_| OwnedFd::from(l.accept().unwrap().0)).collect();
    (servers, clients)
}

fn hooked_listen(lp: &mut Loop<Hooked>, addr: &str, flags: u32) -> TcpListener {
    let s = lp.tcp_init().unwrap();
    lp.tcp_bind(s, addr.parse().unwrap(), flags).unwrap();
    lp.listen(s, 16, &on_connection()).unwrap()
}

fn close_all(lp: &mut Loop<Hooked>, d: &mut Hooked) {
    for c in d.accepted.drain(..) {
        lp.close(c, None).unwrap();
    }
    run_until_with(lp, d, LIMIT, |lp, _| !lp.alive());
}

both_backends! {
    // `listen` returns at once; the hook runs from the pending phase with
    // the loop's data and injects three connections; the user accepts one
    // and closes the listener: `closed` comes from the closing phase with
    // the two that were dropped.
    fn listen_and_closed_run_from_the_loop_with_d(lp: Hooked) {
        lp.set_listen_hook(Some(Rc::new(Hook)));
        let (fds, _clients) = connections(3);
        let mut d = Hooked { to_inject: fds, accept_then_close: 1, ..Hooked::default() };
        let l = hooked_listen(lp, "127.0.0.1:9", 0);
        assert_eq!(lp.fileno(l), Ok(-1), "with a hook, tcp_bind only records the address");
        assert!(lp.is_active(l));
        assert!(d.log.is_empty());
        run_until_with(lp, &mut d, LIMIT, |_, d| d.log.iter().any(|l| l.starts_with("closed")));
        assert_eq!(d.log, ["listen 127.0.0.1:9", "connection", "closed 2"]);
        assert!(!lp.is_live(l));
        close_all(lp, &mut d);
        lp.set_listen_hook(None);
    }

    // A hook that declines: the loop binds the recorded address and listens
    // locally, from the pending phase; a client is accepted. The hook still
    // hears of the close (nothing dropped).
    fn a_hook_that_declines_listens_locally(lp: Hooked) {
        lp.set_listen_hook(Some(Rc::new(Hook)));
        let mut d = Hooked { mode: Mode::Decline, accept_then_close: 1, ..Hooked::default() };
        let l = hooked_listen(lp, "127.0.0.1:0", 0);
        assert_eq!(lp.fileno(l), Ok(-1));
        run_until_with(lp, &mut d, LIMIT, |_, d| !d.log.is_empty());
        let addr = lp.tcp_getsockname(l).unwrap();
        assert_ne!(addr.port(), 0);
        let _client = std::net::TcpStream::connect(addr).unwrap();
        run_until_with(lp, &mut d, LIMIT, |_, d| d.log.iter().any(|l| l.starts_with("closed")));
        assert_eq!(d.log, ["listen 127.0.0.1:0", "connection", "closed 0"]);
        close_all(lp, &mut d);
        lp.set_listen_hook(None);
    }

    // A local listen that fails (the port is taken) and a hook that refuses:
    // both errors reach `on_connection` from the loop, and the listener
    // stops listening.
    fn errors_reach_on_connection(lp: Hooked) {
        lp.set_listen_hook(Some(Rc::new(Hook)));
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = taken.local_addr().unwrap().port();
        let mut d = Hooked { mode: Mode::Decline, ..Hooked::default() };
        let a = hooked_listen(lp, &format!("127.0.0.1:{port}"), 0);
        run_until_with(lp, &mut d, LIMIT, |_, d| !d.errors.is_empty());
        assert_eq!(d.errors, [Error::EADDRINUSE]);
        assert!(!lp.is_active(a));
        d.mode = Mode::Fail(Error::EACCES);
        let b = hooked_listen(lp, "127.0.0.1:0", 0);
        assert!(d.errors.len() == 1, "never from inside listen");
        run_until_with(lp, &mut d, LIMIT, |_, d| d.errors.len() == 2);
        assert_eq!(d.errors, [Error::EADDRINUSE, Error::EACCES]);
        assert!(!lp.is_active(b));
        lp.close(a, None).unwrap();
        lp.close(b, None).unwrap();
        run_until_with(lp, &mut d, LIMIT, |_, d| d.log.iter().filter(|l| l.starts_with("closed")).count() == 2);
        close_all(lp, &mut d);
        lp.set_listen_hook(None);
    }

    // `listen_bind`: the hook binds each listener's own socket with
    // SO_REUSEPORT (two on one port), no scratch socket; both accept.
    fn a_hook_binds_the_listener_itself(lp: Hooked) {
        lp.set_listen_hook(Some(Rc::new(Hook)));
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let mut d = Hooked { mode: Mode::ReusePort, accept_then_close: 1, ..Hooked::default() };
        let addr = format!("127.0.0.1:{port}");
        let a = hooked_listen(lp, &addr, 0);
        let b = hooked_listen(lp, &addr, 0);
        run_until_with(lp, &mut d, LIMIT, |_, d| d.log.len() == 2);
        assert!(d.errors.is_empty(), "{:?}", d.errors);
        for l in [a, b] {
            assert!(lp.fileno(l).unwrap() >= 0);
            assert_eq!(lp.tcp_getsockname(l).unwrap().port(), port);
        }
        let _client = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        run_until_with(lp, &mut d, LIMIT, |_, d| d.accepted.len() == 1);
        let open: Vec<TcpListener> = [a, b].into_iter().filter(|&l| lp.is_live(l) && !lp.is_closing(l)).collect();
        assert_eq!(open.len(), 1);
        lp.close(open[0], None).unwrap();
        run_until_with(lp, &mut d, LIMIT, |_, d| d.log.iter().filter(|l| l.starts_with("closed")).count() == 2);
        close_all(lp, &mut d);
        lp.set_listen_hook(None);
    }

    // A listener closed before the pending phase: the hook is never asked,
    // and never hears of it.
    fn closed_before_the_loop_runs_never_reaches_the_hook(lp: Hooked) {
        lp.set_listen_hook(Some(Rc::new(Hook)));
        let mut d = Hooked::default();
        let l = hooked_listen(lp, "127.0.0.1:0", 0);
        lp.close(l, None).unwrap();
        run_until_with(lp, &mut d, LIMIT, |lp, _| !lp.alive());
        assert!(d.log.is_empty(), "{:?}", d.log);
        lp.set_listen_hook(None);
    }
}
