//! The benchmark scripts' own binaries work end to end: `echo_client`
//! against `echo_server` on both backends, `idle_client` against a small
//! HTTP responder, `proc_tree` on a live process. Short runs; the figures
//! are not checked, only that every part answers and reports.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use uvring::Backend;
use uvring_bench::backend_available;

/// Kills and reaps a child when the test ends, on failure too.
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn first_line(child: &mut Child) -> String {
    let mut line = String::new();
    BufReader::new(child.stdout.as_mut().expect("piped stdout")).read_line(&mut line).expect("read line");
    line
}

#[test]
fn echo_client_measures_echo_server_on_both_backends() {
    for backend in ["epoll", "io_uring"] {
        if backend == "io_uring" {
            if let Err(e) = backend_available(Backend::IoUring) {
                // CI sets UVRING_REQUIRE_IO_URING=1: there a missing ring fails.
                assert!(std::env::var("UVRING_REQUIRE_IO_URING").as_deref() != Ok("1"), "io_uring required: {e}");
                eprintln!("SKIP io_uring: {e}");
                continue;
            }
        }
        let mut server = Reaped(
            Command::new(env!("CARGO_BIN_EXE_echo_server"))
                .args(["--backend", backend])
                .stdout(Stdio::piped())
                .spawn()
                .expect("spawn echo_server"),
        );
        let line = first_line(&mut server.0);
        let addr = line.split_whitespace().nth(1).expect("listening ADDR");
        let out = Command::new(env!("CARGO_BIN_EXE_echo_client"))
            .args(["--addr", addr, "-c", "4", "-s", "64", "-d", "0.2", "--warmup", "0.05", "--csv"])
            .args(["--server-pid", &server.0.id().to_string()])
            .output()
            .expect("run echo_client");
        assert!(out.status.success(), "{backend}: {}", String::from_utf8_lossy(&out.stderr));
        let row = String::from_utf8_lossy(&out.stdout);
        let f: Vec<&str> = row.trim().split(',').collect();
        assert_eq!(f.len(), 9, "{row}");
        assert_eq!((f[0], f[1]), ("4", "64"));
        assert!(f[3].parse::<u64>().unwrap() > 0, "no round trips: {row}");
        assert!(f[5].parse::<f64>().is_ok(), "server CPU not read: {row}");
    }
}

#[test]
fn idle_client_holds_connections_after_one_response() {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().unwrap();
    const N: usize = 20;
    let server = std::thread::spawn(move || {
        let mut conns = Vec::new();
        for _ in 0..N {
            let (mut c, _) = listener.accept().expect("accept");
            let mut buf = [0u8; 1024];
            let mut got = Vec::new();
            while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = c.read(&mut buf).expect("read request");
                assert!(n > 0, "client closed before its request ended");
                got.extend_from_slice(&buf[..n]);
            }
            c.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\nhello world").expect("respond");
            conns.push(c);
        }
        conns
    });
    let mut client = Reaped(
        Command::new(env!("CARGO_BIN_EXE_idle_client"))
            .args(["--addr", &addr.to_string(), "-n", &N.to_string(), "--sources", "3", "--parallel", "4"])
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn idle_client"),
    );
    assert_eq!(first_line(&mut client.0).trim(), format!("ready {N} 0"));
    let conns = server.join().expect("server thread");
    // The connections came from three source addresses.
    let mut sources: Vec<_> = conns.iter().map(|c| c.peer_addr().unwrap().ip()).collect();
    sources.sort();
    sources.dedup();
    assert_eq!(sources.len(), 3, "{sources:?}");
    // SIGTERM ends the client cleanly.
    // SAFETY: kill sends a signal to the child we own; no memory is involved.
    assert_eq!(unsafe { libc::kill(client.0.id() as i32, libc::SIGTERM) }, 0);
    let status = client.0.wait().expect("wait idle_client");
    assert!(status.success(), "{status:?}");
}

#[test]
fn proc_tree_reports_a_live_process() {
    let mut child = Reaped(Command::new("sleep").arg("5").spawn().expect("spawn sleep"));
    std::thread::sleep(Duration::from_millis(20));
    let out = Command::new(env!("CARGO_BIN_EXE_proc_tree")).arg(child.0.id().to_string()).output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.starts_with("cpu_ns=") && text.contains(" rss_bytes=") && text.contains(" processes=1"), "{text}");
    let _ = child.0.kill();
    let _ = child.0.wait();
    let gone = Command::new(env!("CARGO_BIN_EXE_proc_tree")).arg(child.0.id().to_string()).output().unwrap();
    assert!(!gone.status.success());
}
