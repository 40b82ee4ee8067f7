//! The library with unchanged Node.js workers (issue 15): a `Primary` whose
//! workers speak Node's own cluster protocol exchanges messages both ways,
//! answers the seed's shared memory from 4 workers, and drops a worker
//! that sends bad input (only that one, with the reason). Both backends;
//! `node` from the machine (a visible SKIP without it, a failure under
//! `UVRING_REQUIRE_NODE=1`). The apps are in tests/node/.

mod cluster_support;
mod node_support;

use cluster_support::*;
use node_support::{app, node_available};
use uvring_cluster::{Settings, WorkerProtocol};

// ---- the library with Node workers ------------------------------------

/// Settings that run tests/node/`name` as `workers` Node workers.
fn node_settings(policy: uvring_cluster::SchedPolicy, name: &str, workers: usize) -> Settings {
    Settings::default()
        .exec(Some("node".into()))
        .args(Some(vec![app(name).into()]))
        .workers(workers)
        .policy(policy)
        .protocol(WorkerProtocol::Node)
}

cluster_test! {
    // process.send reaches the primary; the primary's message reaches
    // process.on('message'); listening comes with the real port, port 0
    // shared by both workers.
    fn messages_both_ways(lp, policy) [rr = RoundRobin, shared = Shared] {
        if !node_available() {
            return;
        }
        let mut c = start_cluster(lp, node_settings(policy, "messages.js", 2));
        wait_for(lp, &mut c, |l| l.count_prefix("{\"hello\":") == 2);
        wait_for(lp, &mut c, |l| l.listening.len() == 2);
        let (a, b) = (c.log.listening[0].1, c.log.listening[1].1);
        assert!(a != 0 && a == b, "{:?}", c.log.listening);
        for w in [1, 2] {
            let msg = format!("{{\"ping\":{w},\"text\":\"a \\\"quoted\\\" line\\nbreak\"}}");
            c.primary.send(lp, w, msg.as_bytes()).unwrap();
        }
        // A message that is not JSON cannot go to a Node worker.
        assert!(c.primary.send(lp, 1, b"not json").is_err());
        wait_for(lp, &mut c, |l| l.count_prefix("{\"echo\":") == 2);
        for w in [1, 2] {
            let want = format!("{{\"echo\":{{\"ping\":{w},\"text\":\"a \\\"quoted\\\" line\\nbreak\"}},\"from\":{w}}}");
            assert_eq!(c.log.messages_from(w).last(), Some(&want));
        }
        shutdown(lp, &mut c);
        assert!(c.log.exits.iter().all(|&(_, code, signal, after)| code == 0 && signal == 0 && after), "{:?}", c.log.exits);
    }

    // The seed's Manager/User shared memory from 4 Node workers: set answers
    // 'OK', get the value (the same uuid comes back), a missing key
    // undefined.
    fn manager_set_get_from_4_workers(lp, policy) [rr = RoundRobin] {
        if !node_available() {
            return;
        }
        let mut c = start_cluster(lp, node_settings(policy, "manager.js", 4));
        wait_for(lp, &mut c, |l| l.count_prefix("{\"result\":") == 4);
        for w in 1..=4u32 {
            let want = format!("{{\"result\":{w},\"own\":true,\"all\":true,\"missing\":true}}");
            assert_eq!(c.log.messages_from(w), vec![want], "{:?}", c.log.messages);
            let stored = c.primary.store_get(format!("k{w}").as_bytes()).map(|v| String::from_utf8_lossy(v).into_owned());
            let want = format!("{{\"worker\":{w},\"list\":[{w},\"two\",{{\"three\":3}}],\"text\":\"line\\nbreak \\\"quoted\\\"\"}}");
            assert_eq!(stored.as_deref(), Some(want.as_str()));
        }
        shutdown(lp, &mut c);
    }

    // Bad JSON from worker 1 and a line over the limit from worker 2 drop
    // those two (with the reason), and only them: worker 3 still echoes.
    fn bad_input_drops_only_that_worker(lp, policy) [rr = RoundRobin] {
        if !node_available() {
            return;
        }
        let settings = node_settings(policy, "faults.js", 3).max_message_len(4096);
        let mut c = start_cluster(lp, settings);
        wait_for(lp, &mut c, |l| l.channel_errors.len() == 2 && l.count_prefix("{\"hello\":3}") == 1);
        let reason = |w| c.log.channel_errors.iter().find(|(id, _)| *id == w).map(|(_, r)| r.clone()).unwrap();
        assert!(reason(1).contains("is not JSON"), "{}", reason(1));
        assert!(reason(2).contains("more than 4096 bytes"), "{}", reason(2));
        wait_for(lp, &mut c, |l| l.exits.len() == 2);
        assert!(c.log.exits.iter().all(|&(w, _, signal, _)| w != 3 && signal == libc::SIGKILL), "{:?}", c.log.exits);
        c.primary.send(lp, 3, b"\"still there?\"").unwrap();
        wait_for(lp, &mut c, |l| l.has_message("{\"echo\":\"still there?\",\"from\":3}"));
        shutdown(lp, &mut c);
    }
}
