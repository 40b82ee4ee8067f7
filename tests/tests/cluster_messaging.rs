//! Messages and the shared store, after Node's test-cluster-message and
//! -send-handle-large-payload; plus the shared key/value store under
//! concurrent use by four workers.

mod cluster_support;

use cluster_support::*;
use std::os::fd::AsFd;

cluster_test! {
    // User messages both ways.
    fn message(lp, policy) [rr = RoundRobin] {
        let mut c = start_cluster(lp, settings(policy, "messages", 1));
        wait_for(lp, &mut c, |l| l.has_message("hello from worker"));
        let w = c.primary.workers()[0].id();
        c.primary.send(lp, w, b"ping").unwrap();
        c.primary.send(lp, w, b"pong").unwrap();
        wait_for(lp, &mut c, |l| l.has_message("echo pong"));
        assert_eq!(c.log.messages_from(1), vec!["hello from worker", "echo ping", "echo pong"]);
        shutdown(lp, &mut c);
    }

    // An 800,004-byte message with a socket attached, both ways.
    fn send_handle_large_payload(lp, policy) [rr = RoundRobin] {
        let mut c = Cluster::new(lp, settings(policy, "messages", 1));
        // The big one is checked here and logged as a summary.
        c.primary.on_message(|_, d, w, bytes, fds| {
            if bytes.len() > 1000 {
                let ok = bytes.iter().enumerate().all(|(i, &x)| x == (i % 251) as u8);
                let fd_ok = fds.len() == 1
                    && fds.take(0).is_some_and(|fd| uvring::os::local_addr(fd.as_fd()).is_ok());
                d.log.messages.push((0, format!("received {} {ok} {fd_ok}", bytes.len())));
            } else {
                d.log.messages.push((w.id(), String::from_utf8_lossy(bytes).into_owned()));
            }
        });
        c.primary.start(lp).unwrap();
        wait_for(lp, &mut c, |l| l.has_message("hello from worker"));
        let payload: Vec<u8> = (0..800_004usize).map(|i| (i % 251) as u8).collect();
        let sock = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let w = c.primary.workers()[0].id();
        c.primary.send_with_fds(lp, w, &payload, &[sock.as_fd()]).unwrap();
        drop(sock);
        wait_for(lp, &mut c, |l| l.count_prefix("big ") == 1);
        assert!(c.log.has_message("big 800004 true true"), "{:?}", c.log.messages);
        wait_for(lp, &mut c, |l| l.count_prefix("received ") == 1);
        assert!(c.log.has_message("received 800004 true true"), "{:?}", c.log.messages);
        shutdown(lp, &mut c);
    }

    // Four workers set and read the store concurrently; each reads its own
    // writes, and the primary ends with every key.
    fn shared_store(lp, policy) [rr = RoundRobin] {
        let mut c = start_cluster(lp, settings(policy, "store", 4));
        wait_for(lp, &mut c, |l| l.count_prefix("store-done ") == 4);
        assert_eq!(c.log.count_prefix("store-done 0"), 4, "{:?}", c.log.messages);
        let p = &mut c.primary;
        assert_eq!(p.store_len(), 401);
        for id in 1..=4u32 {
            for j in [0u32, 50, 99] {
                let v = p.store_get(format!("w{id}:{j}").as_bytes()).unwrap();
                assert_eq!(v, (id * 1000 + j).to_string().into_bytes());
            }
        }
        let shared = String::from_utf8(p.store_get(b"shared").unwrap().to_vec()).unwrap();
        assert!(shared.ends_with("99"), "the last write of some worker: {shared}");
        assert!(p.store_delete(b"shared"));
        shutdown(lp, &mut c);
    }
}
