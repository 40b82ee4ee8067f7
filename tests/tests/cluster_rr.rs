//! Round-robin hand-off, after Node's test-cluster-accept-fail and
//! -worker-handle-close, and a 10,000-connection run: every connection is
//! answered, the split is even, and no fd is left behind anywhere.

mod cluster_support;

use cluster_support::*;
use std::time::{Duration, Instant};
use uvring_tests::{fd_count, fd_count_of};

/// Starts `n` clients and gives them time to connect while the primary's
/// loop is not running, so that they are all accepted in one turn and go
/// out as one burst (several fds per frame).
fn burst(port: u16, n: usize) -> std::sync::mpsc::Receiver<std::io::Result<String>> {
    let rx = ask_many(port, n, n);
    std::thread::sleep(Duration::from_millis(300));
    rx
}

fn worker_of(answer: &str) -> Option<u32> {
    answer.strip_prefix("worker ")?.trim().parse().ok()
}

cluster_test! {
    // The only worker refuses (it closed its server): the connections the
    // primary cannot hand off are closed, and the primary carries on.
    fn accept_fail(lp, policy) [rr = RoundRobin] {
        let mut c = start_cluster(lp, settings(policy, "close-on-first", 1));
        wait_for(lp, &mut c, |l| l.listening.len() == 1);
        let port = c.log.listening[0].1;
        let rx = burst(port, 8);
        let answers = collect(lp, &mut c, &rx, 8);
        let answered = answers.iter().filter(|a| a.as_ref().is_ok_and(|s| s == "worker 1\n")).count();
        assert_eq!(answered, 1, "{answers:?}");
        let stats = c.primary.stats();
        assert_eq!(stats.refused, 7, "{stats:?}");
        assert_eq!(stats.closed_unroutable, 7, "{stats:?}");
        assert_eq!(c.primary.listener_count(), 0);
        // Still serving: a new worker listens and answers.
        let w = c.primary.fork_with_env(lp, &[("SCENARIO", "serve")]).unwrap();
        wait_for(lp, &mut c, |l| l.listening.len() == 2);
        let port = c.log.listening[1].1;
        let rx = ask_many(port, 2, 1);
        assert!(collect(lp, &mut c, &rx, 2).iter().all(|a| a.as_ref().is_ok_and(|s| worker_of(s) == Some(w))));
        shutdown(lp, &mut c);
    }

    // A worker that closed its server refuses the rest of its batch; those
    // connections go to the other worker, none is lost.
    fn worker_handle_close(lp, policy) [rr = RoundRobin] {
        let mut c = Cluster::new(lp, settings(policy, "serve", 0));
        c.primary.fork_with_env(lp, &[("SCENARIO", "close-on-first")]).unwrap();
        c.primary.fork(lp).unwrap();
        wait_for(lp, &mut c, |l| l.listening.len() == 2);
        let port = c.log.listening[0].1;
        let rx = burst(port, 8);
        let answers = collect(lp, &mut c, &rx, 8);
        let by: Vec<Option<u32>> = answers.iter().map(|a| a.as_ref().ok().and_then(|s| worker_of(s))).collect();
        assert!(by.iter().all(Option::is_some), "every connection answered: {answers:?}");
        assert_eq!(by.iter().filter(|w| **w == Some(1)).count(), 1, "{by:?}");
        assert!(c.primary.stats().refused >= 1, "{:?}", c.primary.stats());
        assert_eq!(c.primary.stats().closed_unroutable, 0);
        shutdown(lp, &mut c);
    }

    // A worker disconnects from inside its connection callback: the
    // connection it took is acknowledged before its channel shuts down (so
    // the primary never hands it to another worker), the rest of its batch
    // is refused and served by the other worker.
    fn disconnect_inside_on_connection(lp, policy) [rr = RoundRobin] {
        let mut c = Cluster::new(lp, settings(policy, "serve", 0));
        c.primary.fork_with_env(lp, &[("SCENARIO", "disconnect-on-first")]).unwrap();
        c.primary.fork(lp).unwrap();
        wait_for(lp, &mut c, |l| l.listening.len() == 2);
        let port = c.log.listening[0].1;
        let rx = burst(port, 8);
        let answers = collect(lp, &mut c, &rx, 8);
        let by: Vec<Option<u32>> = answers.iter().map(|a| a.as_ref().ok().and_then(|s| worker_of(s))).collect();
        assert!(by.iter().all(Option::is_some), "every connection answered: {answers:?}");
        assert_eq!(by.iter().filter(|w| **w == Some(1)).count(), 1, "{by:?}");
        wait_for(lp, &mut c, |l| l.exits.len() == 1);
        let stats = c.primary.stats();
        assert_eq!(stats.redistributed, 0, "an acknowledged connection went elsewhere: {stats:?}");
        assert_eq!(stats.closed_unroutable, 0, "{stats:?}");
        shutdown(lp, &mut c);
    }

    // Settings::batch_scheduling: the primary's loop thread runs under
    // SCHED_BATCH, its workers under the normal policy; off, nothing changes.
    fn batch_scheduling(lp, policy) [rr = RoundRobin] {
        use uvring::os::{sched_is_normal, set_sched_batch};
        assert!(sched_is_normal());
        let mut s = settings(policy, "serve", 1);
        s.batch_scheduling = false;
        let plain = Cluster::new(lp, s);
        assert!(sched_is_normal(), "off: the thread keeps its policy");
        drop(plain);
        let mut s = settings(policy, "serve", 1);
        // Workers under the normal policy (Settings::worker_batch_scheduling
        // off): they move back from the primary's SCHED_BATCH.
        s.worker_batch_scheduling = false;
        let mut c = Cluster::new(lp, s);
        let batch = !sched_is_normal();
        // The test thread goes back to normal whatever happens below.
        set_sched_batch(false).unwrap();
        assert!(batch, "the primary's thread runs under SCHED_BATCH");
        c.primary.start(lp).unwrap();
        wait_for(lp, &mut c, |l| l.listening.len() == 1);
        let w = c.primary.workers()[0].id();
        c.primary.send(lp, w, b"sched").unwrap();
        wait_for(lp, &mut c, |l| l.count_prefix("sched ") == 1);
        assert!(c.log.has_message("sched normal"), "{:?}", c.log.messages);
        shutdown(lp, &mut c);
    }

    // Settings::worker_batch_scheduling (issue 13, on by default): every
    // worker runs under SCHED_BATCH, whatever the policy; the primary's own
    // setting is apart.
    fn worker_batch_scheduling(lp, policy) [rr = RoundRobin, shared = Shared, reuseport = ReusePort] {
        use uvring::os::sched_is_normal;
        let mut s = settings(policy, "serve", 1);
        s.batch_scheduling = false;
        s.worker_batch_scheduling = true;
        let mut c = Cluster::new(lp, s);
        assert!(sched_is_normal(), "the primary keeps its policy");
        c.primary.start(lp).unwrap();
        wait_for(lp, &mut c, |l| l.listening.len() == 1);
        let w = c.primary.workers()[0].id();
        c.primary.send(lp, w, b"sched").unwrap();
        wait_for(lp, &mut c, |l| l.count_prefix("sched ") == 1);
        assert!(c.log.has_message("sched other"), "{:?}", c.log.messages);
        // Still serving under the new policy.
        let port = c.log.listening[0].1;
        let rx = ask_many(port, 4, 4);
        let answers = collect(lp, &mut c, &rx, 4);
        assert!(answers.iter().all(|a| a.as_ref().is_ok_and(|s| s == "worker 1\n")), "{answers:?}");
        shutdown(lp, &mut c);
    }

    // A worker dies holding connections it never acknowledged: they go to
    // the other worker, and every client is answered.
    fn dying_worker_connections_are_redistributed(lp, policy) [rr = RoundRobin] {
        let mut c = Cluster::new(lp, settings(policy, "serve", 0));
        let stalling = c.primary.fork_with_env(lp, &[("SCENARIO", "stall-on-first")]).unwrap();
        c.primary.fork(lp).unwrap();
        wait_for(lp, &mut c, |l| l.listening.len() == 2);
        let port = c.log.listening[0].1;
        let rx = burst(port, 8);
        let unacked = |c: &Cluster| c.primary.worker(stalling).map_or(0, |w| w.unacked_connections());
        // Worker 1 is blocked inside its first connection with the rest of
        // its batch unacknowledged.
        run_until(lp, &mut c, WAIT, |_, c| unacked(c) > 0);
        let end = Instant::now() + Duration::from_millis(200);
        run_until(lp, &mut c, WAIT, |_, _| Instant::now() >= end);
        let held = unacked(&c);
        assert!(held >= 2, "worker 1 holds its batch: {held}");
        // SAFETY: plain syscall on our child's pid.
        unsafe { libc::kill(c.pid(stalling), libc::SIGKILL) };
        let answers = collect(lp, &mut c, &rx, 8);
        let by: Vec<Option<u32>> = answers.iter().map(|a| a.as_ref().ok().and_then(|s| worker_of(s))).collect();
        assert!(by.iter().all(|w| *w == Some(2)), "all answered by worker 2: {answers:?}");
        assert_eq!(c.primary.stats().redistributed as usize, held);
        assert_eq!(c.primary.stats().closed_unroutable, 0);
        shutdown(lp, &mut c);
    }

    // 10,000 connections, 4 workers: all answered, split within 10% of
    // even, fds back to baseline in the primary and every worker.
    fn ten_thousand_connections(lp, policy) [rr = RoundRobin] {
        const N: usize = 10_000;
        let mut c = start_cluster(lp, settings(policy, "serve", 4));
        wait_for(lp, &mut c, |l| l.listening.len() == 4);
        let port = c.log.listening[0].1;
        // Warm up, then take the baselines.
        let rx = ask_many(port, 40, 4);
        collect(lp, &mut c, &rx, 40);
        let pids: Vec<i32> = c.primary.workers().iter().map(|w| w.pid()).collect();
        let settle = |lp: &mut uvring::Loop<Cluster>, c: &mut Cluster| {
            let end = Instant::now() + Duration::from_millis(200);
            run_until(lp, c, WAIT, |_, _| Instant::now() >= end);
        };
        settle(lp, &mut c);
        let primary_fds = fd_count();
        let worker_fds: Vec<usize> = pids.iter().map(|&p| fd_count_of(p as u32)).collect();
        let rx = ask_many(port, N, 8);
        let answers = collect(lp, &mut c, &rx, N);
        let mut per = [0usize; 5];
        for a in &answers {
            let w = a.as_ref().ok().and_then(|s| worker_of(s)).unwrap_or_else(|| panic!("unanswered: {a:?}"));
            per[w as usize] += 1;
        }
        let even = N / 4;
        for &n in &per[1..] {
            assert!(n.abs_diff(even) <= even / 10, "split {:?} not within 10% of {even}", &per[1..]);
        }
        run_until(lp, &mut c, WAIT, |_, _| {
            fd_count() == primary_fds && pids.iter().zip(&worker_fds).all(|(&p, &n)| fd_count_of(p as u32) == n)
        });
        let stats = c.primary.stats();
        assert_eq!(stats.closed_unroutable, 0, "{stats:?}");
        assert!(stats.handed_off >= N as u64);
        shutdown(lp, &mut c);
    }
}
