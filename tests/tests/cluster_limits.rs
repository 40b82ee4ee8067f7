//! Limits that refuse instead of killing (issue 9): a worker at its fd
//! limit refuses the connections whose fds it could not receive, the
//! primary re-routes them or, when every worker refused, closes and counts
//! them; no worker dies.

mod cluster_support;

use cluster_support::*;
use std::net::{SocketAddr, TcpStream};
use std::sync::mpsc;
use std::time::{Duration, Instant};

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
}
