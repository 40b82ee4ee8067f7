//! Messages and the shared store, after Node's test-cluster-message and
//! -send-handle-large-payload; plus the shared key/value store under
//! concurrent use by four workers.

mod cluster_support;

use cluster_support::*;
use std::cell::RefCell;
use std::os::fd::AsFd;
use std::rc::Rc;
use uvring_cluster::Primary;

cluster_test! {
    // User messages both ways.
    fn message(lp, policy) [rr = RoundRobin] {
        let (primary, log, _guard) = start_cluster(lp, settings(policy, "messages", 1));
        wait_for(lp, &log, |l| l.has_message("hello from worker"));
        let w = primary.workers()[0].clone();
        w.send(lp, b"ping").unwrap();
        w.send(lp, b"pong").unwrap();
        wait_for(lp, &log, |l| l.has_message("echo pong"));
        assert_eq!(log.borrow().messages_from(1), vec!["hello from worker", "echo ping", "echo pong"]);
        shutdown(lp, &primary);
    }

    // An 800,004-byte message with a socket attached, both ways.
    fn send_handle_large_payload(lp, policy) [rr = RoundRobin] {
        let primary = Primary::new(lp, settings(policy, "messages", 1)).unwrap();
        let log = record(&primary);
        let _guard = KillGuard(log.clone());
        let big: Rc<RefCell<Option<(usize, bool, bool)>>> = Rc::default();
        let (l, b) = (log.clone(), big.clone());
        primary.on_message(move |_, _, w, bytes, fds| {
            if bytes.len() > 1000 {
                let ok = bytes.iter().enumerate().all(|(i, &x)| x == (i % 251) as u8);
                let fd_ok = fds.len() == 1
                    && fds.take(0).is_some_and(|fd| uvring::os::local_addr(fd.as_fd()).is_ok());
                *b.borrow_mut() = Some((bytes.len(), ok, fd_ok));
            } else {
                l.borrow_mut().messages.push((w.id(), String::from_utf8_lossy(bytes).into_owned()));
            }
        });
        primary.start(lp).unwrap();
        wait_for(lp, &log, |l| l.has_message("hello from worker"));
        let payload: Vec<u8> = (0..800_004usize).map(|i| (i % 251) as u8).collect();
        let sock = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        primary.workers()[0].send_with_fds(lp, &payload, &[sock.as_fd()]).unwrap();
        drop(sock);
        wait_for(lp, &log, |l| l.count_prefix("big ") == 1);
        assert!(log.borrow().has_message("big 800004 true true"), "{:?}", log.borrow().messages);
        run_until(lp, WAIT, |_| big.borrow().is_some());
        assert_eq!(*big.borrow(), Some((800_004, true, true)));
        shutdown(lp, &primary);
    }

    // Four workers set and read the store concurrently; each reads its own
    // writes, and the primary ends with every key.
    fn shared_store(lp, policy) [rr = RoundRobin] {
        let (primary, log, _guard) = start_cluster(lp, settings(policy, "store", 4));
        wait_for(lp, &log, |l| l.count_prefix("store-done ") == 4);
        assert_eq!(log.borrow().count_prefix("store-done 0"), 4, "{:?}", log.borrow().messages);
        assert_eq!(primary.store_len(), 401);
        for id in 1..=4u32 {
            for j in [0u32, 50, 99] {
                let v = primary.store_get(format!("w{id}:{j}").as_bytes()).unwrap();
                assert_eq!(v, (id * 1000 + j).to_string().into_bytes());
            }
        }
        let shared = String::from_utf8(primary.store_get(b"shared").unwrap()).unwrap();
        assert!(shared.ends_with("99"), "the last write of some worker: {shared}");
        assert!(primary.store_delete(b"shared"));
        shutdown(lp, &primary);
    }
}
