//! The two listen forms of Node's cluster that are not an address (issue
//! 11): `listen({fd})` inside a worker names a socket in the *primary's* fd
//! table, which the primary listens on and routes like any listen; an
//! `exclusive` listen bypasses the primary on purpose, so a second worker
//! on the same fixed port gets `EADDRINUSE` instead of sharing it.

mod cluster_support;

use cluster_support::*;
use std::os::fd::AsRawFd;

cluster_test! {
    // Workers listen on the primary's fd: the primary (this test) made the
    // socket; it listens on a duplicate (its own fd stays open and
    // untouched), and every answer comes from a worker.
    fn listen_on_the_primarys_fd(lp, policy) [rr = RoundRobin, shared = Shared, reuseport = ReusePort] {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let mut s = settings(policy, "fd-serve", 2);
        s.env.push(("LISTEN_FD".into(), listener.as_raw_fd().to_string().into()));
        let mut c = start_cluster(lp, s);
        wait_for(lp, &mut c, |l| l.listening.len() == 2);
        assert!(c.log.listening.iter().all(|&(_, p)| p == port), "{:?}", c.log.listening);
        assert_eq!(c.primary.listener_count(), 1, "one listener for the fd");
        let rx = ask_many(port, 20, 4);
        let answers = collect(lp, &mut c, &rx, 20);
        let mut by = std::collections::BTreeSet::new();
        for a in answers {
            let a = a.unwrap();
            by.insert(a.trim().strip_prefix("worker ").expect("a worker answers").to_string());
        }
        if policy == uvring_cluster::SchedPolicy::RoundRobin {
            assert_eq!(by.len(), 2, "round robin reaches both workers: {by:?}");
        }
        shutdown(lp, &mut c);
        // The primary's own fd is still its socket, still listening.
        listener.set_nonblocking(true).unwrap();
        assert_eq!(listener.accept().unwrap_err().kind(), std::io::ErrorKind::WouldBlock);
    }

    // An fd the primary does not have (EBADF) or that is no socket
    // (ENOTSOCK): the error reaches every worker's server; no key is kept.
    fn listen_on_a_bad_fd_fails_in_the_worker(lp, policy) [rr = RoundRobin, shared = Shared] {
        let file = std::fs::File::open("/proc/self/stat").unwrap();
        for (fd, errno) in [(1 << 20, libc::EBADF), (file.as_raw_fd(), libc::ENOTSOCK)] {
            let mut s = settings(policy, "fd-serve", 2);
            s.env.push(("LISTEN_FD".into(), fd.to_string().into()));
            let mut c = start_cluster(lp, s);
            wait_for(lp, &mut c, |l| l.count_prefix("error ") == 2);
            assert_eq!(c.log.count_prefix(&format!("error {errno}")), 2, "{:?}", c.log.messages);
            assert_eq!(c.primary.listener_count(), 0);
            shutdown(lp, &mut c);
        }
    }

    // Two workers listen exclusively on one fixed port: the primary is not
    // asked (it holds no listener); one worker listens, the other's bind or
    // listen fails with EADDRINUSE, and the one that listens serves alone.
    fn exclusive_listens_bypass_the_primary(lp, policy) [rr = RoundRobin, shared = Shared] {
        let port = free_port();
        let mut s = settings(policy, "exclusive", 2);
        s.env.push(("PORT".into(), port.to_string().into()));
        let mut c = start_cluster(lp, s);
        wait_for(lp, &mut c, |l| l.count_prefix("error ") == 1);
        assert!(c.log.has_message(&format!("error {}", libc::EADDRINUSE)), "{:?}", c.log.messages);
        let failed = c.log.messages.iter().find(|(_, m)| m.starts_with("error ")).unwrap().0;
        assert_eq!(c.primary.listener_count(), 0, "exclusive listens bypass the primary");
        for _ in 0..4 {
            let answer = ask(port).unwrap();
            let id: u32 = answer.trim().strip_prefix("worker ").unwrap().parse().unwrap();
            assert_ne!(id, failed, "only the worker that listens answers");
        }
        shutdown(lp, &mut c);
    }
}
