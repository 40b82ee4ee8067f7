//! The admin responder (`Primary::admin_listen`) in-process, for what the
//! example test does not reach: split and bad requests, `HEAD`, wrong
//! methods and paths, an oversized head, the connection bound,
//! `set_healthy`, and a clean close (no fd or handle left).

mod cluster_support;

use cluster_support::*;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::mpsc;
use std::time::Duration;
use uvring::Loop;
use uvring_cluster::admin::{ADMIN_REQUEST_TIMEOUT, MAX_ADMIN_CONNECTIONS, MAX_ADMIN_REQUEST};

/// Sends `parts` (a pause between them) to `addr` from a helper thread and
/// runs the loop until the whole answer is back.
fn try_fetch(
    lp: &mut Loop<Cluster>,
    c: &mut Cluster,
    addr: SocketAddr,
    parts: Vec<Vec<u8>>,
) -> std::io::Result<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let answer = (|| {
            let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
            s.set_read_timeout(Some(Duration::from_secs(10)))?;
            for (i, p) in parts.iter().enumerate() {
                if i > 0 {
                    std::thread::sleep(Duration::from_millis(30));
                }
                s.write_all(p)?;
            }
            let mut out = String::new();
            s.read_to_string(&mut out)?;
            Ok::<_, std::io::Error>(out)
        })();
        let _ = tx.send(answer);
    });
    let mut got = None;
    run_until(lp, c, WAIT, |_, _| {
        got = got.take().or_else(|| rx.try_recv().ok());
        got.is_some()
    });
    got.unwrap()
}

fn fetch(lp: &mut Loop<Cluster>, c: &mut Cluster, addr: SocketAddr, parts: Vec<Vec<u8>>) -> String {
    try_fetch(lp, c, addr, parts).expect("an answer")
}

fn get(lp: &mut Loop<Cluster>, c: &mut Cluster, addr: SocketAddr, path: &str) -> String {
    fetch(lp, c, addr, vec![format!("GET {path} HTTP/1.1\r\nHost: a\r\n\r\n").into_bytes()])
}

cluster_test! {
    fn admin_answers_and_closes_cleanly(lp, policy) [rr = RoundRobin] {
        let mut c = Cluster::new(lp, settings(policy, "serve", 1));
        let addr = c.primary.admin_listen(lp, "127.0.0.1:0".parse().unwrap()).unwrap();
        assert_eq!(c.primary.admin_address(), Some(addr));

        // No worker listens yet. (The admin endpoint never keeps the loop
        // alive: a referenced timer does, while nothing else is there.)
        let keep = lp.timer_init().unwrap();
        let hour = Duration::from_secs(3600);
        lp.timer_start(keep, hour, hour, &uvring::OnTimer::new(|_, _, _| {})).unwrap();
        let r = get(lp, &mut c, addr, "/health");
        assert!(r.starts_with("HTTP/1.1 503 ") && r.ends_with("\r\n\r\nno worker listening\n"), "{r:?}");
        lp.close(keep, None).unwrap();
        c.primary.start(lp).unwrap();
        wait_for(lp, &mut c, |l| l.listening.len() == 1);

        // A request split across writes.
        let r = fetch(lp, &mut c, addr, vec![b"GET /hea".to_vec(), b"lth HTTP/1.1\r\nHost:".to_vec(), b" a\r\n\r\n".to_vec()]);
        assert!(r.starts_with("HTTP/1.1 200 OK\r\n") && r.ends_with("\r\n\r\nok\n"), "{r:?}");
        assert!(r.contains("Connection: close\r\n") && r.contains("Content-Length: 3\r\n"), "{r:?}");

        // HEAD: the head of the answer, no body. A query string is ignored.
        let r = fetch(lp, &mut c, addr, vec![b"HEAD /stats?x=1 HTTP/1.1\r\nHost: a\r\n\r\n".to_vec()]);
        assert!(r.starts_with("HTTP/1.1 200 OK\r\n") && r.contains("application/json") && r.ends_with("\r\n\r\n"), "{r:?}");
        let r = get(lp, &mut c, addr, "/stats");
        assert!(r.contains("\"workers\":[{\"id\":1,"), "{r:?}");

        // Wrong method, unknown path, garbage, an endless head.
        let r = fetch(lp, &mut c, addr, vec![b"POST /health HTTP/1.1\r\nContent-Length: 0\r\n\r\n".to_vec()]);
        assert!(r.starts_with("HTTP/1.1 405 "), "{r:?}");
        assert!(get(lp, &mut c, addr, "/nope").starts_with("HTTP/1.1 404 "));
        let r = fetch(lp, &mut c, addr, vec![b"\x01\x02 nonsense\r\n\r\n".to_vec()]);
        assert!(r.starts_with("HTTP/1.1 400 "), "{r:?}");
        let long = format!("GET /health HTTP/1.1\r\nX: {}\r\n", "a".repeat(MAX_ADMIN_REQUEST));
        let r = fetch(lp, &mut c, addr, vec![long.into_bytes()]);
        assert!(r.starts_with("HTTP/1.1 431 "), "{r:?}");

        // Past the bound, a connection is closed at once; the held ones,
        // silent, are closed after the request timeout, and the endpoint
        // answers again (idle clients cannot silence /health for long).
        let held: Vec<TcpStream> = (0..MAX_ADMIN_CONNECTIONS).map(|_| TcpStream::connect(addr).unwrap()).collect();
        let r = try_fetch(lp, &mut c, addr, vec![b"GET /health HTTP/1.1\r\n\r\n".to_vec()]);
        // Closed with the request unread: an EOF, or a reset.
        let closed = match &r {
            Ok(text) => text.is_empty(),
            Err(e) => e.kind() == std::io::ErrorKind::ConnectionReset,
        };
        assert!(closed, "the connection past the bound is closed unanswered: {r:?}");
        let deadline = std::time::Instant::now() + ADMIN_REQUEST_TIMEOUT + WAIT;
        loop {
            let r = try_fetch(lp, &mut c, addr, vec![b"GET /health HTTP/1.1\r\n\r\n".to_vec()]);
            if r.as_ref().is_ok_and(|r| r.starts_with("HTTP/1.1 200 ")) {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "{r:?}");
            let pause = std::time::Instant::now() + Duration::from_millis(200);
            run_until(lp, &mut c, WAIT, |_, _| std::time::Instant::now() >= pause);
        }
        for mut h in held {
            let mut rest = Vec::new();
            // Closed by the endpoint: EOF (or a reset).
            assert!(matches!(h.read_to_end(&mut rest), Ok(0) | Err(_)), "{rest:?}");
        }

        // The program says it is handing over.
        c.primary.set_healthy(false);
        let r = get(lp, &mut c, addr, "/health");
        assert!(r.starts_with("HTTP/1.1 503 ") && r.ends_with("\r\n\r\ndraining\n"), "{r:?}");
        assert!(get(lp, &mut c, addr, "/metrics").contains("\nuvring_cluster_up 0\n"));
        c.primary.set_healthy(true);

        c.primary.admin_close(lp);
        assert_eq!(c.primary.admin_address(), None);
        shutdown(lp, &mut c);
        // The close has run (the loop is idle): nothing listens there now.
        assert!(TcpStream::connect(addr).is_err(), "the admin listener is closed");
    }
}
