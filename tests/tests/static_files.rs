//! The `static_files` example (built as the `static-files` helper from the
//! example's source), driven as a user would: a real cluster (a primary
//! and two workers) in its own process group, real HTTP clients (curl
//! where installed, else plain sockets). A 64 MiB file reaches 8
//! concurrent clients intact; Range (206, 416), HEAD, 304, 404 and `..`
//! escapes (plain, percent-encoded, through a symlink) are answered right;
//! keep-alive carries several requests; SIGTERM ends everything. On both
//! backends.

mod cluster_support;

use cluster_support::hello::{group_alive, io_uring_available, Example, WAIT};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_static-files");
const BIG: usize = 64 * 1024 * 1024;

/// A root directory with the files the scenario asks for, and a secret
/// beside it (outside the root), removed when dropped.
struct Site {
    dir: PathBuf,
    root: PathBuf,
    big: Arc<Vec<u8>>,
}

impl Site {
    fn new(tag: &str) -> Site {
        let dir = std::env::temp_dir().join(format!("uvring-static-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let root = dir.join("root");
        std::fs::create_dir_all(root.join("sub")).unwrap();
        std::fs::write(root.join("index.html"), b"<h1>home</h1>\n").unwrap();
        std::fs::write(root.join("sub/page.txt"), b"0123456789abcdefghij").unwrap();
        std::fs::write(dir.join("secret"), b"outside the root").unwrap();
        std::os::unix::fs::symlink(dir.join("secret"), root.join("sub/link")).unwrap();
        std::os::unix::fs::symlink("page.txt", root.join("sub/inside")).unwrap();
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        let big: Vec<u8> = (0..BIG)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 24) as u8
            })
            .collect();
        std::fs::write(root.join("big.bin"), &big).unwrap();
        Site { dir, root, big: Arc::new(big) }
    }
}

impl Drop for Site {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Starts the example on `root` with two workers on a kernel-chosen port.
fn start(root: &Path, backend: &str) -> Example {
    let mut cmd = Command::new(BIN);
    cmd.arg("--root").arg(root).args(["--port", "0", "--workers", "2", "--backend", backend, "--host", "127.0.0.1"]);
    Example::spawn(cmd)
}

/// SIGTERM: the primary disconnects its workers and exits 0; nothing of
/// the group is left.
fn stop(mut ex: Example) {
    // SAFETY: plain syscall on our child.
    unsafe { libc::kill(ex.child.id() as i32, libc::SIGTERM) };
    let deadline = Instant::now() + WAIT;
    let status = loop {
        if let Some(st) = ex.child.try_wait().unwrap() {
            break st;
        }
        assert!(Instant::now() < deadline, "primary did not exit after SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(status.code(), Some(0), "{status:?}");
    while group_alive(ex.pgid) {
        assert!(Instant::now() < deadline, "processes left behind");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// One parsed response.
#[derive(Debug)]
struct Response {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Response {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

fn connect(port: u16) -> TcpStream {
    let s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    s
}

/// Reads one response from `s` (`head_only`: a HEAD's, no body).
fn read_response(s: &mut TcpStream, head_only: bool) -> Response {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        s.read_exact(&mut byte).unwrap();
        buf.push(byte[0]);
    }
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut r = httparse::Response::new(&mut headers);
    assert!(r.parse(&buf).unwrap().is_complete());
    let status = r.code.unwrap();
    let headers: Vec<(String, String)> =
        r.headers.iter().map(|h| (h.name.to_string(), String::from_utf8_lossy(h.value).into_owned())).collect();
    let mut resp = Response { status, headers, body: Vec::new() };
    let len: usize = resp.header("Content-Length").map_or(0, |v| v.parse().unwrap());
    if !head_only && status != 304 {
        resp.body = vec![0; len];
        s.read_exact(&mut resp.body).unwrap();
    }
    resp
}

/// One request on a new connection (`Connection: close`), raw: the target
/// goes out exactly as given.
fn ask(port: u16, method: &str, target: &str, extra: &str) -> Response {
    let mut s = connect(port);
    write!(s, "{method} {target} HTTP/1.1\r\nHost: t\r\n{extra}Connection: close\r\n\r\n").unwrap();
    let r = read_response(&mut s, method == "HEAD");
    let mut rest = Vec::new();
    s.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty(), "nothing after the response: {rest:?}");
    r
}

fn has_curl() -> bool {
    Command::new("curl")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Downloads `path` and compares it with `want` as it streams in (curl
/// writing to a pipe where installed, else a socket).
fn download_matches(port: u16, path: &str, want: &[u8], curl: bool) {
    let mut child = None;
    let mut src: Box<dyn Read> = if curl {
        let mut c = Command::new("curl")
            .args(["-sS", "--fail", "--max-time", "60", &format!("http://127.0.0.1:{port}{path}")])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let out = c.stdout.take().unwrap();
        child = Some(c);
        Box::new(out)
    } else {
        let mut s = connect(port);
        write!(s, "GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").unwrap();
        let head = read_head(&mut s);
        assert!(head.starts_with("HTTP/1.1 200 "), "{head}");
        assert!(head.contains(&format!("Content-Length: {}\r\n", want.len())), "{head}");
        Box::new(s)
    };
    let mut buf = vec![0u8; 256 * 1024];
    let mut at = 0;
    loop {
        let n = src.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        assert!(at + n <= want.len(), "more bytes than the file has");
        assert!(buf[..n] == want[at..at + n], "bytes differ in {at}..{}", at + n);
        at += n;
    }
    assert_eq!(at, want.len(), "the whole file");
    if let Some(mut c) = child {
        assert!(c.wait().unwrap().success(), "curl failed");
    }
}

/// Reads a response head byte by byte (the body follows on the socket).
fn read_head(s: &mut TcpStream) -> String {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        s.read_exact(&mut byte).unwrap();
        buf.push(byte[0]);
    }
    String::from_utf8(buf).unwrap()
}

fn scenario(backend: &str) {
    if backend == "io_uring" && !io_uring_available() {
        return;
    }
    let site = Site::new(backend);
    let mut server = start(&site.root, backend);
    server.wait_log(&["worker 1", "listening on"]);
    let line = server.wait_log(&["worker 2", "listening on"]);
    let port: u16 = line.rsplit(':').next().unwrap().trim().parse().unwrap();

    // The 64 MiB file, 8 clients at once.
    let curl = has_curl();
    if !curl {
        eprintln!("curl not installed: plain sockets download instead");
    }
    let clients: Vec<_> = (0..8)
        .map(|_| {
            let big = site.big.clone();
            std::thread::spawn(move || download_matches(port, "/big.bin", &big, curl))
        })
        .collect();
    for c in clients {
        c.join().expect("a download failed");
    }

    // A plain GET, and index.html for a directory.
    let r = ask(port, "GET", "/sub/page.txt", "");
    assert_eq!((r.status, r.body.as_slice()), (200, &b"0123456789abcdefghij"[..]));
    assert_eq!(r.header("Content-Length"), Some("20"));
    assert_eq!(r.header("Accept-Ranges"), Some("bytes"));
    assert_eq!(ask(port, "GET", "/", "").body, b"<h1>home</h1>\n");
    // A symlink that stays inside the root is followed.
    assert_eq!(ask(port, "GET", "/sub/inside", "").body, b"0123456789abcdefghij");

    // HEAD: the GET's head, no body.
    let h = ask(port, "HEAD", "/big.bin", "");
    assert_eq!(h.status, 200);
    assert_eq!(h.header("Content-Length"), Some(BIG.to_string().as_str()));
    assert!(h.body.is_empty());

    // Ranges: a-b, a-, -n (206), past the end (416), several (the whole file).
    let r = ask(port, "GET", "/big.bin", "Range: bytes=1000-1999\r\n");
    assert_eq!(r.status, 206);
    assert_eq!(r.header("Content-Range"), Some(format!("bytes 1000-1999/{BIG}").as_str()));
    assert_eq!(r.body, site.big[1000..2000]);
    let r = ask(port, "GET", "/big.bin", &format!("Range: bytes={}-\r\n", BIG - 5));
    assert_eq!((r.status, r.body.as_slice()), (206, &site.big[BIG - 5..]));
    let r = ask(port, "GET", "/sub/page.txt", "Range: bytes=-4\r\n");
    assert_eq!((r.status, r.body.as_slice()), (206, &b"ghij"[..]));
    assert_eq!(r.header("Content-Range"), Some("bytes 16-19/20"));
    let r = ask(port, "GET", "/sub/page.txt", "Range: bytes=20-\r\n");
    assert_eq!(r.status, 416);
    assert_eq!(r.header("Content-Range"), Some("bytes */20"));
    let r = ask(port, "GET", "/sub/page.txt", "Range: bytes=0-1,4-5\r\n");
    assert_eq!((r.status, r.body.len()), (200, 20));
    let r = ask(port, "HEAD", "/sub/page.txt", "Range: bytes=2-3\r\n");
    assert_eq!((r.status, r.header("Content-Length")), (206, Some("2")));

    // 304 for If-Modified-Since at (or after) Last-Modified; 200 before.
    let lm = ask(port, "GET", "/index.html", "").header("Last-Modified").unwrap().to_string();
    let r = ask(port, "GET", "/index.html", &format!("If-Modified-Since: {lm}\r\n"));
    assert_eq!(r.status, 304);
    assert_eq!(r.header("Last-Modified"), Some(lm.as_str()));
    let r = ask(port, "GET", "/index.html", "If-Modified-Since: Sun, 06 Nov 1994 08:49:37 GMT\r\n");
    assert_eq!(r.status, 200);

    // 404, and nothing outside the root.
    assert_eq!(ask(port, "GET", "/missing.txt", "").status, 404);
    assert_eq!(ask(port, "GET", "/sub/page.txt/x", "").status, 404);
    for target in ["/../secret", "/sub/../../secret", "/%2e%2e/secret", "/sub/%2E%2E/%2e%2e/secret", "/..%2fsecret"] {
        let r = ask(port, "GET", target, "");
        assert!(r.status == 403 || r.status == 404, "{target}: {r:?}");
        assert!(!r.body.windows(7).any(|w| w == b"outside"), "{target} leaked the secret");
    }
    let r = ask(port, "GET", "/sub/link", "");
    assert_eq!(r.status, 403, "a symlink out of the root");
    assert_eq!(ask(port, "POST", "/index.html", "Content-Length: 0\r\n").status, 405);

    // Keep-alive: HEAD, a range and a GET on one connection, the last two
    // pipelined, answered in order.
    let mut s = connect(port);
    s.write_all(b"HEAD /sub/page.txt HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
    let r = read_response(&mut s, true);
    assert_eq!((r.status, r.header("Content-Length")), (200, Some("20")));
    s.write_all(b"GET /sub/page.txt HTTP/1.1\r\nHost: t\r\nRange: bytes=0-2\r\n\r\nGET /missing HTTP/1.1\r\nHost: t\r\n\r\nGET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").unwrap();
    assert_eq!(read_response(&mut s, false).body, b"012");
    assert_eq!(read_response(&mut s, false).status, 404);
    let r = read_response(&mut s, false);
    assert_eq!((r.status, r.header("Connection")), (200, Some("close")));
    let mut rest = Vec::new();
    assert_eq!(s.read_to_end(&mut rest).unwrap(), 0, "closed after Connection: close");

    stop(server);
}

#[test]
fn epoll() {
    scenario("epoll");
}

#[test]
fn io_uring() {
    scenario("io_uring");
}

#[test]
fn help_exits_zero_and_a_missing_root_is_an_error() {
    let out = Command::new(BIN).arg("--help").output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stdout).contains("--root DIR"));
    let out = Command::new(BIN).args(["--root", "/nonexistent/uvring-static"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--root"));
}
