//! Channel errors carry reasons (issue 9): a worker that sends bad input
//! (random bytes, a header claiming 0xFFFFFFF0 bytes, an oversized frame)
//! is reported with the reason, killed (it keeps running otherwise) and
//! replaced, and the primary keeps serving; a worker whose channel ends
//! unexpectedly is reported, not killed.

mod cluster_support;

use cluster_support::*;
use uvring::Loop;
use uvring_cluster::{RespawnSettings, SchedPolicy};

/// One hostile worker (`kind`) beside a serving one.
fn hostile(lp: &mut Loop<Cluster>, policy: SchedPolicy, kind: &str, reason: &str) {
    let once = std::env::temp_dir().join(format!("uvring-hostile-{}-{kind}-{}", std::process::id(), lp.backend()));
    let _ = std::fs::remove_file(&once);
    let s = settings(policy, "hostile", 0)
        .respawn(RespawnSettings::default().enabled(true))
        .env(vec![("HOSTILE".into(), kind.into()), ("HOSTILE_ONCE".into(), once.clone().into())]);
    let mut c = Cluster::new(lp, s);
    // The first worker serves (the marker exists), the second is hostile.
    std::fs::write(&once, b"serve").unwrap();
    let good = c.primary.fork(lp).unwrap();
    wait_for(lp, &mut c, |l| l.listening.len() == 1);
    let port = c.log.listening[0].1;
    std::fs::remove_file(&once).unwrap();
    let bad = c.primary.fork(lp).unwrap();
    // Reported with its reason, killed, and replaced by a serving worker.
    wait_for(lp, &mut c, |l| l.exits.iter().any(|e| e.0 == bad) && l.listening.iter().any(|&(w, _)| w > bad));
    let _ = std::fs::remove_file(&once);
    let errors: Vec<&String> = c.log.channel_errors.iter().filter(|(w, _)| *w == bad).map(|(_, r)| r).collect();
    assert_eq!(errors.len(), 1, "{:?}", c.log.channel_errors);
    assert!(errors[0].contains(reason), "{kind}: reason {:?} names {reason:?}", errors[0]);
    let exit = c.log.exits.iter().find(|e| e.0 == bad).unwrap();
    assert_eq!((exit.1, exit.2), (0, libc::SIGKILL), "{kind}: killed, not left running: {exit:?}");
    assert!(c.log.exits.iter().all(|e| e.0 == bad), "only the hostile one exited: {:?}", c.log.exits);
    assert!(c.log.channel_errors.iter().all(|(w, _)| *w == bad), "{:?}", c.log.channel_errors);
    // Still serving.
    let rx = ask_many(port, 4, 1);
    let answers = collect(lp, &mut c, &rx, 4);
    assert!(answers.iter().all(|a| a.as_ref().is_ok_and(|s| s.starts_with("worker "))), "{answers:?}");
    assert!(c.primary.worker(good).is_some_and(|w| w.is_connected()));
    shutdown(lp, &mut c);
}

cluster_test! {
    fn hostile_random_bytes(lp, policy) [rr = RoundRobin, shared = Shared, reuseport = ReusePort] {
        hostile(lp, policy, "random", "bad input: unsupported frame version");
    }

    fn hostile_huge_header(lp, policy) [rr = RoundRobin, shared = Shared, reuseport = ReusePort] {
        hostile(lp, policy, "huge-header", "bad input: frame of 4294967288 bytes exceeds the maximum");
    }

    fn hostile_oversized_frame(lp, policy) [rr = RoundRobin, shared = Shared, reuseport = ReusePort] {
        hostile(lp, policy, "oversized", "bad input: frame of 1048585 bytes exceeds the maximum of 1048584");
    }

    // A worker that exits on its own (status 42) without a disconnect: the
    // unexpected end of its channel is reported; it is not killed.
    fn unexpected_eof(lp, policy) [rr = RoundRobin] {
        let mut c = start_cluster(lp, settings(policy, "exit42", 1));
        wait_for(lp, &mut c, |l| l.exits.len() == 1);
        assert_eq!(c.log.channel_errors, vec![(1, "unexpected end of channel".to_string())]);
        assert_eq!((c.log.exits[0].1, c.log.exits[0].2), (42, 0));
        shutdown(lp, &mut c);
    }
}
