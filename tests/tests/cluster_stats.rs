//! The primary's per-worker figures (`Primary::worker_stats`) are real: the
//! open connections a test holds, the workers' pids, a restart after
//! `kill -9`, hand-off counters, messages, memory and loop utilisation; and
//! a worker whose `RssAnon` grows above `Settings::max_memory` is replaced
//! (new worker listening first, the old one drained) without one failed
//! request under a steady client load.

mod cluster_support;

use cluster_support::*;
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Duration;
use uvring::Loop;
use uvring_cluster::{RespawnSettings, SchedPolicy, WorkerStats, WorkerStatus};

/// Heartbeats (and so worker reports) this often in these tests.
const BEAT: Duration = Duration::from_millis(100);

/// Runs the loop until the figures satisfy `ok`; returns them.
fn stats_until(
    lp: &mut Loop<Cluster>,
    c: &mut Cluster,
    what: &str,
    ok: impl Fn(&[WorkerStats]) -> bool,
) -> Vec<WorkerStats> {
    let deadline = std::time::Instant::now() + WAIT;
    run_until(lp, c, WAIT + Duration::from_secs(1), |lp, c| {
        let s = c.primary.worker_stats(lp);
        assert!(std::time::Instant::now() < deadline, "{what}: {s:#?}");
        ok(&s)
    });
    c.primary.worker_stats(lp)
}

fn open_total(s: &[WorkerStats]) -> Option<u32> {
    s.iter().map(|w| w.open_connections).sum()
}

cluster_test! {
    fn stats_report_real_figures(lp, policy) [rr = RoundRobin, shared = Shared] {
        let settings = settings(policy, "serve-hold", 2)
            .heartbeat_interval(BEAT)
            .respawn(RespawnSettings::default().enabled(true).base_delay(Duration::from_millis(10)));
        let mut c = start_cluster(lp, settings);
        wait_for(lp, &mut c, |l| l.listening.len() == 2);
        let port = c.log.listening[0].1;
        // Three connections held open by the test.
        let held: Vec<TcpStream> = (0..3).map(|_| TcpStream::connect(("127.0.0.1", port)).unwrap()).collect();
        wait_for(lp, &mut c, |l| l.count_prefix("accepted") == 3);
        let s = stats_until(lp, &mut c, "3 open connections", |s| open_total(s) == Some(3));
        let mut pids: Vec<i32> = s.iter().map(|w| w.info.pid()).collect();
        pids.sort();
        let mut forked = c.log.pids.clone();
        forked.sort();
        assert_eq!(pids, forked, "the workers' real pids");
        for w in &s {
            assert_eq!(w.info.status(), WorkerStatus::Listening);
            assert_eq!(w.restarts, 0);
            let mem = w.memory.expect("a live worker's memory");
            assert!(mem.rss_anon_bytes > 0 && mem.vm_rss_bytes >= mem.rss_anon_bytes, "{mem:?}");
            let u = w.loop_utilisation.expect("a report came");
            assert!((0.0..=1.0).contains(&u), "{u}");
            assert!(w.loop_count > 0 && w.events > 0, "{w:?}");
            // "listening <port>" and one "accepted" per connection it took.
            assert_eq!(w.messages_received as usize, c.log.messages_from(w.info.id()).len(), "{w:?}");
        }
        if policy == SchedPolicy::RoundRobin {
            assert_eq!(s.iter().map(|w| w.handed_off).sum::<u64>(), 3);
            assert_eq!(s.iter().map(|w| w.acked).sum::<u64>(), 3);
            assert_eq!(s.iter().map(|w| w.unacked).sum::<usize>(), 0);
        }

        // Two of them close: the figure follows.
        drop(held);
        let held: Vec<TcpStream> = vec![TcpStream::connect(("127.0.0.1", port)).unwrap()];
        wait_for(lp, &mut c, |l| l.count_prefix("accepted") == 4);
        stats_until(lp, &mut c, "1 open connection", |s| open_total(s) == Some(1));

        // kill -9: the respawned worker counts one restart.
        let victim = s[0].info.id();
        // SAFETY: plain syscall on our child's pid.
        assert_eq!(unsafe { libc::kill(s[0].info.pid(), libc::SIGKILL) }, 0);
        wait_for(lp, &mut c, |l| l.exits.len() == 1 && l.listening.len() == 3);
        let s = stats_until(lp, &mut c, "the replacement reports", |s| {
            s.len() == 2 && s.iter().all(|w| w.open_connections.is_some())
        });
        assert!(s.iter().all(|w| w.info.id() != victim));
        let mut restarts: Vec<u32> = s.iter().map(|w| w.restarts).collect();
        restarts.sort();
        assert_eq!(restarts, [0, 1], "{s:#?}");
        drop(held);
        shutdown(lp, &mut c);
    }

    fn memory_limit_replaces_a_worker_without_a_failed_request(lp, policy) [rr = RoundRobin, shared = Shared] {
        const LIMIT_MIB: u64 = 48;
        let settings = settings(policy, "serve", 2).heartbeat_interval(BEAT).max_memory(Some(LIMIT_MIB << 20));
        let mut c = Cluster::new(lp, settings);
        c.primary.on_memory_limit(|_, d, w, rss_anon| {
            d.log.messages.push((w.id(), format!("memory-limit {}", rss_anon >> 20)))
        });
        c.primary.start(lp).unwrap();
        wait_for(lp, &mut c, |l| l.listening.len() == 2);
        let port = c.log.listening[0].1;
        // Below the limit at rest: nothing happens over a few checks.
        stats_until(lp, &mut c, "reports", |s| s.iter().all(|w| w.loop_utilisation.is_some()));
        for w in c.primary.worker_stats(lp) {
            let anon = w.memory.unwrap().rss_anon_bytes;
            assert!(anon < LIMIT_MIB << 20, "a fresh worker holds {anon} bytes: raise the test's limit");
        }

        // A light steady load: two clients, one request at a time each.
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, rx) = mpsc::channel();
        let clients: Vec<_> = (0..2)
            .map(|_| {
                let (stop, tx) = (stop.clone(), tx.clone());
                std::thread::spawn(move || {
                    while !stop.load(Ordering::SeqCst) {
                        let _ = tx.send(ask(port));
                        std::thread::sleep(Duration::from_millis(5));
                    }
                })
            })
            .collect();
        drop(tx);
        let answered = |rx: &mpsc::Receiver<std::io::Result<String>>, out: &mut Vec<std::io::Result<String>>| {
            while let Ok(r) = rx.try_recv() {
                out.push(r);
            }
        };
        // The load is steady before the worker grows.
        let mut results = Vec::new();
        run_until(lp, &mut c, WAIT, |_, _| {
            answered(&rx, &mut results);
            results.len() >= 10
        });

        let fat = c.primary.workers()[0].id();
        c.primary.send(lp, fat, b"grow 96").unwrap();
        wait_for(lp, &mut c, |l| l.messages_from(fat).iter().any(|m| m == "grew 96"));
        wait_for(lp, &mut c, |l| l.messages_from(fat).iter().any(|m| m.starts_with("memory-limit")));
        // The replacement listens, then the fat worker drains and exits.
        wait_for(lp, &mut c, |l| l.listening.len() == 3);
        wait_for(lp, &mut c, |l| l.exits.iter().any(|e| e.0 == fat));
        let exit = c.log.exits.iter().find(|e| e.0 == fat).copied().unwrap();
        assert_eq!(exit, (fat, 0, 0, true), "drained and exited after its disconnect, not killed");
        let new = c.log.listening[2].0;
        let s = c.primary.worker_stats(lp);
        assert_eq!(s.len(), 2, "{s:#?}");
        assert_eq!(s.iter().find(|w| w.info.id() == new).map(|w| w.restarts), Some(1), "{s:#?}");

        // Serve on with the replacement a moment, then stop the load.
        answered(&rx, &mut results);
        let before = results.len();
        run_until(lp, &mut c, WAIT, |_, _| {
            answered(&rx, &mut results);
            results.len() >= before + 20
        });
        stop.store(true, Ordering::SeqCst);
        run_until(lp, &mut c, WAIT, |_, _| clients.iter().all(|t| t.is_finished()));
        answered(&rx, &mut results);
        for t in clients {
            t.join().unwrap();
        }
        let failed: Vec<_> = results.iter().filter(|r| !r.as_ref().is_ok_and(|a| a.starts_with("worker "))).collect();
        assert!(failed.is_empty(), "{} of {} requests failed: {failed:?}", failed.len(), results.len());
        eprintln!("{policy}: {} requests across the replacement, none failed ({before} before it ended)", results.len());
        assert!(c.log.count_prefix("memory-limit") == 1, "{:?}", c.log.messages);
        shutdown(lp, &mut c);
    }
}
