//! Stable ports (issue 9): port 0 gives every worker the same port under
//! every policy (under `reuseport` the primary reserves it with a bound,
//! non-listening `SO_REUSEPORT` socket), and the port survives a full
//! respawn of every worker and a rolling restart.

mod cluster_support;

use cluster_support::*;
use uvring_cluster::RespawnSettings;

fn answered_by_workers(lp: &mut uvring::Loop<Cluster>, c: &mut Cluster, port: u16, n: usize) {
    let rx = ask_many(port, n, 2);
    let answers = collect(lp, c, &rx, n);
    assert!(answers.iter().all(|a| a.as_ref().is_ok_and(|s| s.starts_with("worker "))), "{answers:?}");
}

cluster_test! {
    // Three workers listen on port 0: one port.
    fn port0_one_port(lp, policy) [rr = RoundRobin, shared = Shared, reuseport = ReusePort] {
        let mut c = start_cluster(lp, settings(policy, "serve", 3));
        wait_for(lp, &mut c, |l| l.listening.len() == 3);
        let port = c.log.listening[0].1;
        assert_ne!(port, 0);
        assert!(c.log.listening.iter().all(|&(_, p)| p == port), "{:?}", c.log.listening);
        answered_by_workers(lp, &mut c, port, 6);
        shutdown(lp, &mut c);
    }

    // Every worker killed at once (SIGKILL from outside) and respawned:
    // the replacements listen on the same port, and answer on it.
    fn port0_survives_full_respawn(lp, policy) [rr = RoundRobin, shared = Shared, reuseport = ReusePort] {
        let s = settings(policy, "serve", 2).respawn(RespawnSettings::default().enabled(true));
        let mut c = start_cluster(lp, s);
        wait_for(lp, &mut c, |l| l.listening.len() == 2);
        let port = c.log.listening[0].1;
        for w in c.primary.workers() {
            // SAFETY: plain syscall on our child's pid.
            assert_eq!(unsafe { libc::kill(w.pid(), libc::SIGKILL) }, 0);
        }
        wait_for(lp, &mut c, |l| l.exits.len() == 2 && l.listening.len() == 4);
        assert!(c.log.listening.iter().all(|&(_, p)| p == port), "{:?}", c.log.listening);
        assert!(c.log.listening[2..].iter().all(|&(w, _)| w > 2), "{:?}", c.log.listening);
        answered_by_workers(lp, &mut c, port, 4);
        shutdown(lp, &mut c);
    }

    // A rolling restart replaces every worker; the port stays.
    fn port0_survives_rolling_restart(lp, policy) [rr = RoundRobin, shared = Shared, reuseport = ReusePort] {
        let mut c = start_cluster(lp, settings(policy, "serve", 2));
        wait_for(lp, &mut c, |l| l.listening.len() == 2);
        let port = c.log.listening[0].1;
        c.primary.rolling_restart(lp, |_, d| d.log.disconnected = true);
        wait_for(lp, &mut c, |l| l.disconnected && l.exits.len() == 2);
        c.log.disconnected = false;
        assert_eq!(c.log.listening.len(), 4, "{:?}", c.log.listening);
        assert!(c.log.listening.iter().all(|&(_, p)| p == port), "{:?}", c.log.listening);
        answered_by_workers(lp, &mut c, port, 4);
        shutdown(lp, &mut c);
    }
}
