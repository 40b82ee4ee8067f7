//! Limits that refuse instead of killing (issue 9): a worker at its fd
//! limit refuses the connections whose fds it could not receive, the
//! primary re-routes them or, when every worker refused, closes and counts
//! them; no worker dies.

mod cluster_support;

use cluster_support::*;
use std::net::{SocketAddr, TcpStream};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// A cluster of one "messages" worker with this message size limit, whose
/// large messages are logged as "received <len>".
fn message_cluster(lp: &mut uvring::Loop<Cluster>, policy: uvring_cluster::SchedPolicy, limit: usize) -> Cluster {
    let mut c = Cluster::new(lp, settings(policy, "messages", 1).max_message_len(limit));
    c.primary.on_message(|_, d, w, bytes, _| {
        let text = if bytes.len() > 1000 {
            let ok = bytes.iter().enumerate().all(|(i, &x)| x == (i % 251) as u8);
            format!("received {} {ok}", bytes.len())
        } else {
            String::from_utf8_lossy(bytes).into_owned()
        };
        d.log.messages.push((w.id(), text));
    });
    c.primary.start(lp).unwrap();
    wait_for(lp, &mut c, |l| l.has_message("hello from worker"));
    c
}

/// Runs the loop for `d` (so workers and primary settle).
fn settle(lp: &mut uvring::Loop<Cluster>, c: &mut Cluster, d: Duration) {
    let until = Instant::now() + d;
    run_until(lp, c, d + WAIT, |_, _| Instant::now() >= until);
}

cluster_test! {
    // Workers at RLIMIT_NOFILE 64 and 200 idle clients: each worker takes
    // what fits, the `recvmsg` that would go past its limit comes back
    // truncated (MSG_CTRUNC) and those connections are refused, not taken
    // for a lost primary; the primary re-routes them, and closes (and
    // counts) the ones every worker refused. Once the idle clients go,
    // every new client is answered, by the same two workers.
    fn rr_worker_at_fd_limit(lp, policy) [rr = RoundRobin] {
        let s = settings(policy, "serve", 2).env(vec![("NOFILE".into(), "64".into())]);
        let mut c = start_cluster(lp, s);
        wait_for(lp, &mut c, |l| l.listening.len() == 2);
        let port = c.log.listening[0].1;
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let (tx, rx) = mpsc::channel();
        let (release, released) = mpsc::channel::<()>();
        let clients = std::thread::spawn(move || {
            let idle: Vec<TcpStream> = (0..200).filter_map(|_| TcpStream::connect(addr).ok()).collect();
            let _ = tx.send(idle.len());
            let _ = released.recv_timeout(Duration::from_secs(60));
            drop(idle);
        });
        assert_eq!(collect(lp, &mut c, &rx, 1), vec![200]);
        run_until(lp, &mut c, WAIT, |_, c| {
            let s = c.primary.stats();
            s.handed_off + s.closed_unroutable >= 200
        });
        let stats = c.primary.stats();
        eprintln!("200 idle clients at NOFILE 64: {stats:?}");
        assert!(stats.refused > 0, "the workers' limits were reached: {stats:?}");
        assert!(stats.handed_off >= 60, "both workers took connections: {stats:?}");
        assert_eq!(stats.handed_off + stats.closed_unroutable, 200, "{stats:?}");
        assert!(c.log.exits.is_empty(), "no worker exits: {:?}", c.log.exits);
        assert_eq!(c.primary.worker_count(), 2);
        release.send(()).unwrap();
        clients.join().unwrap();
        // The workers see the idle clients' EOFs and close their sockets.
        settle(lp, &mut c, Duration::from_millis(500));
        let rx = ask_many(port, 200, 4);
        let answers = collect(lp, &mut c, &rx, 200);
        let answered = answers.iter().filter(|a| a.as_ref().is_ok_and(|s| s.starts_with("worker "))).count();
        assert_eq!(answered, 200, "every client answered: {:?}", answers.iter().find(|a| !a.as_ref().is_ok_and(|s| s.starts_with("worker "))));
        assert!(c.log.exits.is_empty(), "no worker exits: {:?}", c.log.exits);
        assert_eq!(c.log.pids.len(), 2, "nothing respawned");
        shutdown(lp, &mut c);
    }

    // The message size limit holds both ways: a send above it returns
    // EMSGSIZE and sends nothing (the channel and the worker live on); a
    // send of exactly the limit goes through; so does a store `set` under
    // it, and one above it fails at the call.
    fn message_size_limit(lp, policy) [rr = RoundRobin] {
        const LIMIT: usize = 64 * 1024;
        const EMSGSIZE: &str = "90";
        let mut c = message_cluster(lp, policy, LIMIT);
        let w = c.primary.workers()[0].id();
        let over: Vec<u8> = (0..LIMIT + 1).map(|i| (i % 251) as u8).collect();
        assert_eq!(c.primary.send(lp, w, &over), Err(uvring::Error::EMSGSIZE));
        c.primary.send(lp, w, &over[..LIMIT]).unwrap();
        wait_for(lp, &mut c, |l| l.count_prefix("big ") == 1);
        assert!(c.log.has_message(&format!("big {LIMIT} true false")), "{:?}", c.log.messages);
        for cmd in [format!("try-send {}", LIMIT + 1), format!("try-send {LIMIT}"), format!("try-set {LIMIT}"), "try-set 1000".into()] {
            c.primary.send(lp, w, cmd.as_bytes()).unwrap();
        }
        wait_for(lp, &mut c, |l| l.has_message("stored 1000 ok"));
        let log = &c.log;
        assert!(log.has_message(&format!("sent {} {EMSGSIZE}", LIMIT + 1)), "{:?}", log.messages);
        assert!(log.has_message(&format!("sent {LIMIT} ok")), "{:?}", log.messages);
        assert!(log.has_message(&format!("received {LIMIT} true")), "{:?}", log.messages);
        assert!(log.has_message(&format!("set {LIMIT} {EMSGSIZE}")), "{:?}", log.messages);
        assert!(log.has_message("set 1000 ok"), "{:?}", log.messages);
        assert_eq!(log.count_prefix("received "), 1, "nothing above the limit arrived: {:?}", log.messages);
        assert_eq!(c.primary.store_get(b"big").map(<[u8]>::len), Some(1000));
        // Still connected both ways.
        c.primary.send(lp, w, b"ping").unwrap();
        wait_for(lp, &mut c, |l| l.has_message("echo ping"));
        assert!(c.log.disconnects.is_empty() && c.log.exits.is_empty(), "{:?}", c.log);
        shutdown(lp, &mut c);
    }

    // The limit can be raised (for both ends): 3 MB messages both ways.
    fn message_size_limit_raised(lp, policy) [rr = RoundRobin] {
        const BIG: usize = 3_000_000;
        let mut c = message_cluster(lp, policy, 4 << 20);
        let w = c.primary.workers()[0].id();
        let payload: Vec<u8> = (0..BIG).map(|i| (i % 251) as u8).collect();
        c.primary.send(lp, w, &payload).unwrap();
        c.primary.send(lp, w, format!("try-send {BIG}").as_bytes()).unwrap();
        c.primary.send(lp, w, format!("try-set {BIG}").as_bytes()).unwrap();
        wait_for(lp, &mut c, |l| l.has_message(&format!("stored {BIG} ok")));
        let log = &c.log;
        assert!(log.has_message(&format!("big {BIG} true false")), "{:?}", log.messages);
        assert!(log.has_message(&format!("sent {BIG} ok")), "{:?}", log.messages);
        assert!(log.has_message(&format!("received {BIG} true")), "{:?}", log.messages);
        assert_eq!(c.primary.store_get(b"big").map(<[u8]>::len), Some(BIG));
        assert!(c.log.disconnects.is_empty() && c.log.exits.is_empty(), "{:?}", c.log);
        shutdown(lp, &mut c);
    }
}

/// The primary at its own fd limit (soft RLIMIT_NOFILE 20, one `rr`
/// worker without that limit) and 120 idle clients: accepting fails with
/// EMFILE, the engine backs off, and as the worker acknowledges the
/// connections the primary closes its copies and accepts the rest; then
/// every new client is answered. Run as its own process (the limit is
/// per process), on both backends.
#[test]
fn primary_at_fd_limit_backs_off_and_recovers() {
    use std::io::BufRead;
    use std::os::unix::process::CommandExt;
    for backend in ["epoll", "io_uring"] {
        if backend == "io_uring" && uvring_tests::make_loop(uvring::Backend::IoUring, Default::default()).is_none() {
            continue;
        }
        let mut child = std::process::Command::new(WORKER)
            .arg("primary-fd-limit")
            .env("UVRING_BACKEND", backend)
            .env("PRIMARY_NOFILE", "20")
            .env("NOFILE", "1024")
            .stdout(std::process::Stdio::piped())
            .process_group(0)
            .spawn()
            .unwrap();
        let pgid = child.id() as i32;
        // Kills the primary and its worker, whatever happens.
        let _guard = PidGuard(vec![-pgid]);
        let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
        let line = lines.next().expect("a port line").unwrap();
        let port: u16 = line.strip_prefix("port ").unwrap().parse().unwrap();
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let idle: Vec<TcpStream> = (0..120).map(|_| TcpStream::connect(addr).unwrap()).collect();
        std::thread::sleep(Duration::from_millis(500));
        let answered = (0..20).filter(|_| ask(port).is_ok_and(|s| s.starts_with("worker "))).count();
        assert_eq!(answered, 20, "{backend}: every client answered with 120 idle ones held");
        drop(idle);
        let answered = (0..20).filter(|_| ask(port).is_ok_and(|s| s.starts_with("worker "))).count();
        assert_eq!(answered, 20, "{backend}: and after they went");
        assert!(child.try_wait().unwrap().is_none(), "{backend}: the primary lives");
        // SAFETY: plain syscall on the process group this test made.
        unsafe { libc::kill(-pgid, libc::SIGKILL) };
        child.wait().unwrap();
    }
}
