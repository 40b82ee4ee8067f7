//! Listen routing, after Node's test-cluster-listening-port,
//! -child-index-net, -server-restart-rr/-shared, -bind-twice, -eaddrinuse
//! and -shared-handle-bind-error.

mod cluster_support;

use cluster_support::*;
use uvring::OnConnection;
use uvring_cluster::SchedPolicy;

cluster_test! {
    // Port 0: the primary's listening event reports the same real port for
    // every worker, and that port serves. (reuseport binds per worker, so
    // it listens on a fixed port there.)
    fn listening_port(lp, policy) [rr = RoundRobin, shared = Shared, reuseport = ReusePort] {
        let mut s = settings(policy, "serve", 2);
        if policy == SchedPolicy::ReusePort {
            s.env.push(("PORT".into(), free_port().to_string().into()));
        }
        let mut c = start_cluster(lp, s);
        wait_for(lp, &mut c, |l| l.listening.len() == 2);
        let ports: Vec<u16> = c.log.listening.iter().map(|&(_, p)| p).collect();
        assert_ne!(ports[0], 0);
        assert_eq!(ports[0], ports[1], "{ports:?}");
        let rx = ask_many(ports[0], 4, 2);
        for answer in collect(lp, &mut c, &rx, 4) {
            assert!(answer.unwrap().starts_with("worker "));
        }
        shutdown(lp, &mut c);
    }

    // Two servers per worker on port 0 get distinct ports (per-worker
    // index), and closing and listening again works without collision.
    fn child_index_net(lp, policy) [rr = RoundRobin, shared = Shared] {
        let mut c = start_cluster(lp, settings(policy, "two-servers", 2));
        wait_for(lp, &mut c, |l| l.count_prefix("listening 1 ") == 4);
        let l = &c.log;
        for w in [1, 2] {
            for round in ["listening 0 ", "listening 1 "] {
                let ports: Vec<u16> =
                    l.messages_from(w).iter().filter_map(|m| m.strip_prefix(round)).map(|p| p.parse().unwrap()).collect();
                assert_eq!(ports.len(), 2, "{:?}", l.messages);
                assert!(ports[0] != 0 && ports[0] != ports[1], "the two servers collide: {:?}", l.messages);
            }
        }
        assert!(!l.messages.iter().any(|(_, m)| m.starts_with("error")), "{:?}", l.messages);
        shutdown(lp, &mut c);
    }

    // A server closed and listened again (the primary drops the listener
    // when its last worker leaves, and makes a new one).
    fn server_restart(lp, policy) [rr = RoundRobin, shared = Shared] {
        let mut c = start_cluster(lp, settings(policy, "two-servers", 1));
        wait_for(lp, &mut c, |l| l.count_prefix("listening 1 ") == 2);
        let port: u16 = c.log.messages.iter().rev().find_map(|(_, m)| m.strip_prefix("listening 1 ")).unwrap().parse().unwrap();
        let rx = ask_many(port, 2, 1);
        for answer in collect(lp, &mut c, &rx, 2) {
            assert_eq!(answer.unwrap(), "worker 1\n");
        }
        assert_eq!(c.primary.listener_count(), if policy == SchedPolicy::ReusePort { 0 } else { 2 });
        shutdown(lp, &mut c);
        assert_eq!(c.primary.listener_count(), 0);
    }

    // A second cluster on the same port: its worker's listen callback gets
    // EADDRINUSE. (Not reuseport: SO_REUSEPORT sockets of one user share.)
    fn bind_twice(lp, policy) [rr = RoundRobin, shared = Shared] {
        let port = free_port();
        let mut sa = settings(policy, "serve", 1);
        sa.env.push(("PORT".into(), port.to_string().into()));
        let mut c = start_cluster(lp, sa.clone());
        wait_for(lp, &mut c, |l| l.listening.len() == 1);
        c.add_second(lp, sa);
        c.second().start(lp).unwrap();
        wait_for_second(lp, &mut c, |l| l.count_prefix("error ") == 1);
        assert!(c.second_log().has_message(&format!("error {}", libc::EADDRINUSE)));
        assert!(c.second_log().listening.is_empty());
        let b = c.second().id();
        disconnect_all(lp, &mut c, b);
        shutdown(lp, &mut c);
    }

    // The bind fails, the port frees, a retry succeeds (the failed key was
    // dropped in the primary).
    fn eaddrinuse(lp, policy) [rr = RoundRobin, shared = Shared, reuseport = ReusePort] {
        let sock = lp.tcp_init().unwrap();
        lp.tcp_bind(sock, "127.0.0.1:0".parse().unwrap(), 0).unwrap();
        let blocker = lp.listen(sock, 8, &OnConnection::new(|_, _, _, _| {})).unwrap();
        let port = lp.tcp_getsockname(blocker).unwrap().port();
        let mut s = settings(policy, "retry-bind", 1);
        s.env.push(("PORT".into(), port.to_string().into()));
        let mut c = start_cluster(lp, s);
        wait_for(lp, &mut c, |l| l.count_prefix("error ") == 1);
        assert!(c.log.has_message(&format!("error {}", libc::EADDRINUSE)));
        lp.close(blocker, None).unwrap();
        let w = c.primary.workers()[0].id();
        run_until(lp, &mut c, WAIT, |lp, _| !lp.is_live(blocker));
        c.primary.send(lp, w, b"retry").unwrap();
        wait_for(lp, &mut c, |l| l.listening.len() == 1);
        assert_eq!(c.log.listening[0].1, port);
        let rx = ask_many(port, 1, 1);
        assert_eq!(collect(lp, &mut c, &rx, 1).pop().unwrap().unwrap(), "worker 1\n");
        shutdown(lp, &mut c);
    }

    // The primary itself holds the port (outside the cluster): the worker's
    // listen fails with EADDRINUSE, the worker leaves cleanly (code 0).
    fn shared_handle_bind_error(lp, policy) [rr = RoundRobin, shared = Shared, reuseport = ReusePort] {
        let sock = lp.tcp_init().unwrap();
        lp.tcp_bind(sock, "127.0.0.1:0".parse().unwrap(), 0).unwrap();
        let blocker = lp.listen(sock, 8, &OnConnection::new(|_, _, _, _| {})).unwrap();
        let port = lp.tcp_getsockname(blocker).unwrap().port();
        let mut c = Cluster::new(lp, settings(policy, "serve", 0));
        let w = c.primary.fork_with_env(lp, &[("PORT", &port.to_string())]).unwrap();
        wait_for(lp, &mut c, |l| l.count_prefix("error ") == 1);
        assert!(c.log.has_message(&format!("error {}", libc::EADDRINUSE)));
        c.primary.disconnect_worker(lp, w);
        wait_for(lp, &mut c, |l| l.exits.len() == 1);
        assert_eq!(c.log.exits[0], (1, 0, 0, true));
        lp.close(blocker, None).unwrap();
        run_until(lp, &mut c, WAIT, |lp, _| !lp.alive());
    }
}
