//! `shared` spreads the load (issue 9): a worker more than its share above
//! the least-loaded one stops accepting until it is back under, so 64
//! keep-alive connections and 200 sequential ones split within ±20 %
//! across 2 and across 4 workers, and a replacement worker takes new
//! connections at once.

mod cluster_support;

use cluster_support::*;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::mpsc;
use std::time::Duration;
use uvring::Loop;
use uvring_cluster::{RespawnSettings, SchedPolicy, WorkerId};

/// Opens `n` connections one after another, each answered once ("worker
/// <id>"); `keep` holds them all open until the end. Returns who answered.
fn clients(lp: &mut Loop<Cluster>, c: &mut Cluster, port: u16, n: usize, keep: bool) -> Vec<WorkerId> {
    let (tx, rx) = mpsc::channel();
    let t = std::thread::spawn(move || {
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let mut held = Vec::new();
        for _ in 0..n {
            let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            s.write_all(b"hi").unwrap();
            let mut line = String::new();
            BufReader::new(&s).read_line(&mut line).unwrap();
            let id: WorkerId = line.trim().strip_prefix("worker ").unwrap().parse().unwrap();
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

cluster_test! {
    fn shared_spreads_over_2(lp, policy) [shared = Shared] {
        spread(lp, policy, 2);
    }

    fn shared_spreads_over_4(lp, policy) [shared = Shared] {
        spread(lp, policy, 4);
    }
}
