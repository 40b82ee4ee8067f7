//! `shared` spreads the load (issue 9): a worker more than its share above
//! the least-loaded one stops accepting until it is back under, so 64
//! keep-alive connections and 200 sequential ones split within ±20 %
//! across 2 and across 4 workers, and a replacement worker takes new
//! connections at once. Under churn the load reports are rate-limited
//! (issue 13): both workers still take connections.

mod cluster_support;

use cluster_support::*;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::mpsc;
use std::time::{Duration, Instant};
use uvring::Loop;
use uvring_cluster::worker::ENV_SHARE_REPORT_MS;
use uvring_cluster::{RespawnSettings, SchedPolicy, WorkerId};

/// Opens a connection and has it answered once ("worker <id>").
fn hello(addr: SocketAddr) -> (TcpStream, WorkerId) {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"hi").unwrap();
    let mut line = String::new();
    BufReader::new(&s).read_line(&mut line).unwrap();
    (s, line.trim().strip_prefix("worker ").unwrap().parse().unwrap())
}

/// Opens `n` connections one after another, each answered once ("worker
/// <id>"); `keep` holds them all open until the end. Returns who answered.
fn clients(lp: &mut Loop<Cluster>, c: &mut Cluster, port: u16, n: usize, keep: bool) -> Vec<WorkerId> {
    let (tx, rx) = mpsc::channel();
    let t = std::thread::spawn(move || {
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let mut held = Vec::new();
        for _ in 0..n {
            let (s, id) = hello(addr);
            let _ = tx.send(id);
            if keep {
                held.push(s);
            }
        }
        held
    });
    let ids = collect(lp, c, &rx, n);
    drop(t.join().unwrap());
    ids
}

fn split(ids: &[WorkerId], workers: &[WorkerId]) -> Vec<usize> {
    workers.iter().map(|w| ids.iter().filter(|i| *i == w).count()).collect()
}

fn assert_even(what: &str, ids: &[WorkerId], workers: &[WorkerId]) {
    let counts = split(ids, workers);
    let share = ids.len() as f64 / workers.len() as f64;
    eprintln!("{what}: {counts:?} (share {share:.1})");
    for &n in &counts {
        assert!((n as f64 - share).abs() <= share * 0.2, "{what}: {counts:?} not within ±20 % of {share:.1}");
    }
}

fn spread(lp: &mut Loop<Cluster>, policy: SchedPolicy, n: usize) {
    let s = settings(policy, "keepalive", n).respawn(RespawnSettings::default().enabled(true));
    let mut c = start_cluster(lp, s);
    wait_for(lp, &mut c, |l| l.listening.len() == n);
    let port = c.log.listening[0].1;
    let workers: Vec<WorkerId> = c.primary.workers().iter().map(|w| w.id()).collect();
    let ids = clients(lp, &mut c, port, 64, true);
    assert_even(&format!("64 keep-alive, {n} workers"), &ids, &workers);
    let ids = clients(lp, &mut c, port, 200, false);
    assert_even(&format!("200 sequential, {n} workers"), &ids, &workers);
    // A worker killed; its replacement takes new connections at once.
    let victim = workers[0];
    // SAFETY: plain syscall on our child's pid.
    assert_eq!(unsafe { libc::kill(c.pid(victim), libc::SIGKILL) }, 0);
    wait_for(lp, &mut c, |l| l.listening.len() == n + 1);
    let fresh = c.log.listening[n].0;
    let ids = clients(lp, &mut c, port, 8 * n, false);
    let mut now: Vec<WorkerId> = workers[1..].to_vec();
    now.push(fresh);
    let counts = split(&ids, &now);
    eprintln!("after a replacement, {n} workers: {counts:?} (new one last)");
    assert!(counts[n - 1] >= 4, "the replacement took {} of {}", counts[n - 1], ids.len());
    assert!(c.log.exits.len() == 1, "{:?}", c.log.exits);
    shutdown(lp, &mut c);
}

/// Churn: `threads` clients each open connections one after another, are
/// answered once and close, `n` in all. Returns who answered.
fn churn(lp: &mut Loop<Cluster>, c: &mut Cluster, port: u16, n: usize, threads: usize) -> Vec<WorkerId> {
    let (tx, rx) = mpsc::channel();
    let next = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let clients: Vec<_> = (0..threads)
        .map(|_| {
            let (tx, next) = (tx.clone(), next.clone());
            std::thread::spawn(move || {
                while next.fetch_add(1, std::sync::atomic::Ordering::SeqCst) < n {
                    let (_, id) = hello(addr);
                    if tx.send(id).is_err() {
                        return;
                    }
                }
            })
        })
        .collect();
    let ids = collect(lp, c, &rx, n);
    for t in clients {
        t.join().unwrap();
    }
    ids
}

/// Under churn every connection changes a worker's load twice (accepted,
/// then closed), yet the load reports the primary receives stay within
/// the rate limit: per worker at most a burst of 256 plus one per
/// interval (`UVRING_CLUSTER_SHARE_MS`, 50 ms here) of the run, counted
/// as frames. Both workers take a share of the connections.
fn churn_reports(lp: &mut Loop<Cluster>, policy: SchedPolicy) {
    const CONNS: usize = 3000;
    const EVERY_MS: u64 = 50;
    const BURST: u64 = 256;
    let s = settings(policy, "keepalive", 2).env(vec![(ENV_SHARE_REPORT_MS.into(), EVERY_MS.to_string().into())]);
    let mut c = start_cluster(lp, s);
    wait_for(lp, &mut c, |l| l.listening.len() == 2);
    let port = c.log.listening[0].1;
    let workers: Vec<WorkerId> = c.primary.workers().iter().map(|w| w.id()).collect();
    let reports = |lp: &Loop<Cluster>, c: &Cluster| c.primary.worker_stats(lp).iter().map(|w| w.load_reports).sum();
    let before: u64 = reports(lp, &c);
    let t0 = Instant::now();
    let ids = churn(lp, &mut c, port, CONNS, 4);
    let after: u64 = reports(lp, &c);
    let window_ms = t0.elapsed().as_millis() as u64;
    let counts = split(&ids, &workers);
    let bound = 2 * (BURST + window_ms / EVERY_MS + 8);
    eprintln!("{CONNS} churned: {counts:?}; {} load reports in {window_ms} ms (at most {bound})", after - before);
    assert!(after - before <= bound, "{} load reports for {CONNS} connections, above {bound}", after - before);
    for &n in &counts {
        assert!(n >= CONNS / 20, "a worker took {n} of {CONNS}: {counts:?}");
    }
    shutdown(lp, &mut c);
}

cluster_test! {
    fn shared_churn_reports_are_rate_limited(lp, policy) [shared = Shared] {
        churn_reports(lp, policy);
    }

    fn shared_spreads_over_2(lp, policy) [shared = Shared] {
        spread(lp, policy, 2);
    }

    fn shared_spreads_over_4(lp, policy) [shared = Shared] {
        spread(lp, policy, 4);
    }
}
