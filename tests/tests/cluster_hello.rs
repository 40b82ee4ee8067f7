//! The main job, end to end: the `hello_cluster` example (built as the
//! `cluster-hello` helper from the example's source) serves "hello world"
//! over HTTP/1.1 keep-alive with pipelining and `Connection: close`, replaces
//! a worker killed with `kill -9`, and on SIGTERM disconnects its workers
//! and exits 0 with no process left behind.

mod cluster_support;

use cluster_support::hello::*;
use std::io::{Read, Write};

fn scenario(backend: &str, policy: &str) {
    if backend == "io_uring" && !io_uring_available() {
        return;
    }
    let port = free_port();
    let mut ex = Example::start(backend, policy, port);
    ex.wait_log(&["worker 1", "listening on"]);
    let w2 = ex.wait_log(&["worker 2", "listening on"]);

    // Plain GET.
    let r = get(port);
    assert!(r.starts_with("HTTP/1.1 200 OK\r\n") && r.ends_with("\r\n\r\nhello world"), "{r:?}");

    // Keep-alive: two requests on one connection, then pipelined ones
    // answered in order, the last with Connection: close.
    let mut s = connect(port);
    for _ in 0..2 {
        s.write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
        assert!(read_response(&mut s).ends_with("hello world"));
    }
    s.write_all(b"GET /1 HTTP/1.1\r\nHost: t\r\n\r\nPOST /2 HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\n\r\nabcGET /3 HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").unwrap();
    for i in 0..3 {
        let r = read_response(&mut s);
        assert!(r.starts_with("HTTP/1.1 200 OK") && r.ends_with("hello world"), "{i}: {r:?}");
        assert_eq!(r.contains("Connection: close"), i == 2);
    }
    let mut rest = Vec::new();
    assert_eq!(s.read_to_end(&mut rest).unwrap(), 0, "closed after Connection: close");

    // kill -9 a worker: a replacement listens and serving goes on.
    // SAFETY: plain syscall on a worker of the example.
    unsafe { libc::kill(pid_of(&w2), libc::SIGKILL) };
    ex.wait_log(&["worker 2", "exited unexpectedly", "signal 9"]);
    ex.wait_log(&["worker 3", "listening on"]);
    for _ in 0..4 {
        assert!(get(port).ends_with("hello world"));
    }

    // SIGTERM: graceful disconnect, exit 0, nothing left.
    // SAFETY: plain syscall on our child.
    unsafe { libc::kill(ex.child.id() as i32, libc::SIGTERM) };
    ex.wait_clean_exit();
    assert_eq!(ex.count_log("exited after disconnect"), 2);
}

macro_rules! hello_tests {
    ($($name:ident: $backend:literal, $policy:literal;)*) => {
        $(
            #[test]
            fn $name() {
                scenario($backend, $policy);
            }
        )*
    };
}

hello_tests! {
    epoll_rr: "epoll", "rr";
    io_uring_rr: "io_uring", "rr";
    epoll_shared: "epoll", "shared";
    io_uring_shared: "io_uring", "shared";
    epoll_reuseport: "epoll", "reuseport";
    io_uring_reuseport: "io_uring", "reuseport";
}
