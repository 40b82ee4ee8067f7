//! An HTTP/1.1 static file server on a uvring cluster.
//!
//! ```text
//! cargo run --release --example static_files -- --root DIR [--port P] [--workers N]
//!                                                [--backend epoll|io_uring|auto] [--host H]
//!                                                [--policy rr|shared|reuseport]
//! curl http://127.0.0.1:8000/index.html
//! ```
//!
//! GET and HEAD of the regular files under `--root` (a directory's
//! `index.html` for a path ending in `/`), with `Content-Length`,
//! `Last-Modified` and `If-Modified-Since` (304), one byte range (`Range:
//! bytes=a-b`, `a-`, `-n`: 206, or 416 when it is past the end; several
//! ranges are answered with the whole file), keep-alive and pipelining.
//! Nothing outside the root is served: a path with a `..` segment (also
//! percent-encoded) is refused with 403, and a path that resolves outside
//! the root through a symlink is refused with 403 too; a missing file is
//! 404, anything but a regular file 403, other methods 405.
//!
//! The loop never touches the disk: a request's path is resolved and its
//! file opened and stat'ed on the engine's work pool ([`Loop::queue_work`]:
//! canonicalisation has no ring opcode, and it is one trip to the pool
//! instead of three), and the body goes out with [`Loop::sendfile`], which
//! sends from the page cache and reads misses in off the loop. The
//! response head is written first and the transfer queues behind it. Open
//! files are kept for a second per path (nginx's `open_file_cache` with
//! `open_file_cache_valid 1s`): within it, a request for the same path is
//! answered from the loop without the pool; a file changed or removed is
//! seen at most a second late.
//!
//! The cluster part is hello_cluster's: the primary forks `--workers`
//! workers (default: the number of CPUs; 0 serves from this process) that
//! share the port; SIGINT or SIGTERM disconnects them (open connections
//! finish) and the primary exits 0.

use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::net::{IpAddr, SocketAddr};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::{Duration, UNIX_EPOCH};
use uvring::{
    Backend, Error, Loop, OnConnection, OnListenStop, OnRead, OnSendFile, OnShutdown, OnSignal, OnTimer, RunMode,
    Signal, TcpListener, TcpStream,
};
use uvring_cluster::{
    available_cpus, is_worker, Primary, PrimaryData, RespawnSettings, SchedPolicy, Settings, Worker, WorkerData,
};

/// Largest request head (and unparsed pipeline) a connection may buffer.
const MAX_BUFFERED: usize = 16 * 1024;
/// How long an open file is used for its path before it is resolved again.
const CACHE_VALID_MS: u64 = 1000;
/// Paths whose open files are kept (the cache is emptied when full).
const CACHE_MAX: usize = 1024;
const USAGE: &str = "usage: static_files --root DIR [--port P] [--workers N] [--backend epoll|io_uring|auto] [--host H] [--policy rr|shared|reuseport]";

struct Options {
    root: PathBuf,
    workers: usize,
    policy: SchedPolicy,
    backend: Backend,
    host: IpAddr,
    port: u16,
}

fn usage(msg: &str) -> ! {
    eprintln!("static_files: {msg}");
    eprintln!("{USAGE}");
    std::process::exit(2);
}

fn parse_options() -> Options {
    let mut root = None;
    let mut o = Options {
        root: PathBuf::new(),
        workers: available_cpus(),
        policy: SchedPolicy::from_env(),
        backend: Backend::from_env().unwrap_or(Backend::Auto),
        host: IpAddr::from([0, 0, 0, 0]),
        port: std::env::var("PORT").ok().and_then(|p| p.parse().ok()).unwrap_or(8000),
    };
    let mut args = std::env::args_os().skip(1);
    while let Some(a) = args.next() {
        let a = a.to_string_lossy().into_owned();
        let mut value = || args.next().unwrap_or_else(|| usage(&format!("{a} needs a value")));
        let mut text = || value().to_string_lossy().into_owned();
        match a.as_str() {
            "--root" | "-r" => root = Some(PathBuf::from(value())),
            "--workers" | "-w" => o.workers = text().parse().unwrap_or_else(|_| usage("bad --workers")),
            "--policy" => o.policy = SchedPolicy::parse(&text()).unwrap_or_else(|| usage("bad --policy")),
            "--backend" => o.backend = Backend::parse(&text()).unwrap_or_else(|| usage("bad --backend")),
            "--port" | "-p" => o.port = text().parse().unwrap_or_else(|_| usage("bad --port")),
            "--host" => o.host = text().parse().unwrap_or_else(|_| usage("bad --host")),
            "--help" | "-h" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => usage(&format!("unknown argument {other}")),
        }
    }
    let root = root.unwrap_or_else(|| usage("--root is required"));
    // Once, before any loop runs: the root as the kernel resolves it, so
    // that every request's resolved path can be checked against it.
    o.root = match std::fs::canonicalize(&root) {
        Ok(r) if r.is_dir() => r,
        Ok(_) => usage(&format!("--root {} is not a directory", root.display())),
        Err(e) => usage(&format!("--root {}: {e}", root.display())),
    };
    o
}

pub fn main() {
    let o = parse_options();
    let result = if is_worker() {
        run_worker(o)
    } else if o.workers == 0 {
        run_standalone(o)
    } else {
        run_primary(o)
    };
    if let Err(e) = result {
        eprintln!("static_files: {e}");
        std::process::exit(1);
    }
}

fn open_loop<D>(backend: Backend, who: &str) -> Loop<D> {
    match Loop::with_backend(backend) {
        Ok(lp) => {
            if let Some(why) = lp.fallback_reason() {
                eprintln!("[{who}] {backend} backend fell back to epoll: {why}");
            }
            lp
        }
        Err(e) => {
            eprintln!("static_files: cannot create a loop with the {backend} backend: {e}");
            std::process::exit(1);
        }
    }
}

fn run_worker(o: Options) -> uvring::Result<()> {
    // The primary passes its loop's backend in UVRING_BACKEND.
    let backend = Backend::from_env()?;
    let mut lp: Loop<Server> = open_loop(backend, &std::process::id().to_string());
    let mut server = Server::new(o.root.clone());
    server.worker = Some(Worker::init(&mut lp)?);
    // Disconnected: busy connections close after their next response
    // (which says `Connection: close`), idle ones after the grace.
    let on_shutdown = close_after_shutdown();
    let close_idle = OnTimer::new(move |lp, server: &mut Server, t| {
        let _ = lp.close(t, None);
        for slot in 0..server.conns.len() {
            let c = &server.conns[slot];
            let Some(s) = c.stream.filter(|_| c.buf.is_empty() && !c.busy && c.files.is_empty()) else { continue };
            server.release(slot);
            finish(lp, s, &on_shutdown);
        }
    });
    if let Some(w) = server.worker.as_mut() {
        w.on_drain(move |lp, server: &mut Server, grace| {
            server.draining = true;
            if let Ok(t) = lp.timer_init() {
                let _ = lp.unref_handle(t);
                let _ = lp.timer_start(t, grace, Duration::ZERO, &close_idle);
            }
        });
    }
    // Ctrl-C reaches the whole process group; the primary orchestrates.
    let sigint = lp.signal_start(libc::SIGINT, &OnSignal::new(|_, _, _, _| {}))?;
    lp.unref_handle(sigint)?;
    serve(&mut lp, SocketAddr::new(o.host, o.port))?;
    lp.run(RunMode::Default, &mut server)?;
    Ok(())
}

fn run_standalone(o: Options) -> uvring::Result<()> {
    let mut lp: Loop<Server> = open_loop(o.backend, &std::process::id().to_string());
    let server = serve(&mut lp, SocketAddr::new(o.host, o.port))?;
    eprintln!(
        "[{}] serving {} on {} ({} backend)",
        std::process::id(),
        o.root.display(),
        lp.tcp_getsockname(server)?,
        lp.backend()
    );
    let on_stopped = OnListenStop::new(|lp, _, server: TcpListener, _| {
        let _ = lp.close(server, None);
    });
    let stop = OnSignal::new(move |lp, _, sig, _| {
        if !lp.is_listen_stopped(server)
            && lp.listen_stop(server, Some(&on_stopped)).is_err()
            && lp.is_live(server)
            && !lp.is_closing(server)
        {
            let _ = lp.close(server, None);
        }
        let _ = lp.close(sig, None);
    });
    for signum in [libc::SIGINT, libc::SIGTERM] {
        let s = lp.signal_start(signum, &stop)?;
        lp.unref_handle(s)?;
    }
    lp.run(RunMode::Default, &mut Server::new(o.root))?;
    Ok(())
}

/// The primary's state: the cluster's part and the signal watchers.
struct Supervisor {
    primary: Primary<Supervisor>,
    signals: Vec<Signal>,
    shutting_down: bool,
}

impl PrimaryData for Supervisor {
    fn primary(&mut self) -> &mut Primary<Supervisor> {
        &mut self.primary
    }
}

fn run_primary(o: Options) -> uvring::Result<()> {
    let me = std::process::id();
    let mut lp: Loop<Supervisor> = open_loop(o.backend, &format!("primary {me}"));
    let settings = Settings::default()
        .workers(o.workers)
        .policy(o.policy)
        .backend(Some(lp.backend()))
        .respawn(RespawnSettings::default().enabled(true));
    let mut primary = Primary::new(&mut lp, settings)?;
    eprintln!(
        "[primary {me}] serving {}: {} workers, policy {}, {} backend, port {}",
        o.root.display(),
        o.workers,
        o.policy,
        lp.backend(),
        o.port
    );
    primary.on_listening(move |_, _, w, addr| {
        eprintln!("[primary {me}] worker {} (pid {}) listening on {addr}", w.id(), w.pid())
    });
    primary.on_exit(move |lp, sup: &mut Supervisor, w, code, signal| {
        let how = if w.exited_after_disconnect() { "after disconnect" } else { "unexpectedly" };
        eprintln!("[primary {me}] worker {} (pid {}) exited {how} (code {code}, signal {signal})", w.id(), w.pid());
        if sup.primary.respawn_stopped() && sup.primary.worker_count() == 0 && !sup.shutting_down {
            eprintln!("[primary {me}] no worker left after a restart storm; exiting");
            sup.shutting_down = true;
            for s in sup.signals.drain(..) {
                let _ = lp.close(s, None);
            }
        }
    });
    let on_deadline = OnTimer::new(|lp, sup: &mut Supervisor, t| {
        for w in sup.primary.workers() {
            let _ = sup.primary.kill(lp, w.id(), libc::SIGKILL);
        }
        let _ = lp.close(t, None);
    });
    let on_stop = OnSignal::new(move |lp, sup: &mut Supervisor, _, signum| {
        if std::mem::replace(&mut sup.shutting_down, true) {
            return;
        }
        eprintln!("[primary {me}] signal {signum}: disconnecting workers");
        sup.primary.disconnect(lp, move |lp, sup| {
            eprintln!("[primary {me}] all workers gone; bye");
            for s in sup.signals.drain(..) {
                let _ = lp.close(s, None);
            }
        });
        if let Ok(t) = lp.timer_init() {
            let _ = lp.unref_handle(t);
            let _ = lp.timer_start(t, Duration::from_secs(10), Duration::ZERO, &on_deadline);
        }
    });
    let mut sup = Supervisor { primary, signals: Vec::new(), shutting_down: false };
    for signum in [libc::SIGINT, libc::SIGTERM] {
        sup.signals.push(lp.signal_start(signum, &on_stop)?);
    }
    sup.primary.start(&mut lp)?;
    lp.run(RunMode::Default, &mut sup)?;
    Ok(())
}

// ---- the HTTP server (the same code standalone and in a worker) ----------

/// Per-connection state, recycled through a free list.
#[derive(Default)]
struct Conn {
    stream: Option<TcpStream>,
    /// Bytes received and not yet answered (requests wait here while the
    /// one before them is being resolved).
    buf: Vec<u8>,
    /// A request's file is being resolved on the pool: the next waits.
    busy: bool,
    /// Close once the responses queued so far are out.
    closing: bool,
    /// Files being sent, in order, each with the byte count it must send;
    /// a transfer's callback takes the front one.
    files: VecDeque<(Rc<File>, u64)>,
}

/// An open file kept for its path (see the module docs).
struct Cached {
    file: Rc<File>,
    size: u64,
    mtime: u64,
    /// When it was resolved (the loop's clock, ms).
    at: u64,
}

/// The server's state, the loop's user data.
struct Server {
    worker: Option<Worker<Server>>,
    root: PathBuf,
    conns: Vec<Conn>,
    free: Vec<usize>,
    /// A response head being built.
    out: Vec<u8>,
    draining: bool,
    cache: HashMap<PathBuf, Cached>,
}

impl WorkerData for Server {
    fn worker(&mut self) -> Option<&mut Worker<Server>> {
        self.worker.as_mut()
    }
}

impl Server {
    fn new(root: PathBuf) -> Server {
        Server {
            worker: None,
            root,
            conns: Vec::new(),
            free: Vec::new(),
            out: Vec::new(),
            draining: false,
            cache: HashMap::new(),
        }
    }

    fn slot(&mut self) -> usize {
        match self.free.pop() {
            Some(i) => i,
            None => {
                self.conns.push(Conn::default());
                self.conns.len() - 1
            }
        }
    }

    /// Forgets connection `i` (its open files close with it).
    fn release(&mut self, i: usize) {
        if let Some(c) = self.conns.get_mut(i) {
            if c.stream.take().is_some() {
                c.buf.clear();
                c.busy = false;
                c.closing = false;
                c.files.clear();
                self.free.push(i);
            }
        }
    }
}

/// One byte range asked for (`Range: bytes=...`).
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
enum RangeSpec {
    /// `a-b` or `a-` (`None`: to the end).
    From(u64, Option<u64>),
    /// `-n`: the last `n` bytes.
    Last(u64),
}

/// A parsed request.
#[derive(Debug)]
struct Request {
    /// Bytes of the request (head; a body is refused).
    len: usize,
    head_only: bool,
    close: bool,
    /// The path under the root, decoded, with no `.` or `..` segment.
    rel: PathBuf,
    range: Option<RangeSpec>,
    if_modified_since: Option<u64>,
}

/// What a request's bytes hold.
enum Parsed {
    Request(Request),
    /// Answer with this status and close (after `len` bytes).
    Refuse(u16, usize, bool),
    Partial,
}

fn parse_request(bytes: &[u8]) -> Parsed {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut req = httparse::Request::new(&mut headers);
    let len = match req.parse(bytes) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Parsed::Partial,
        Err(_) => return Parsed::Refuse(400, bytes.len(), true),
    };
    let mut close = req.version == Some(0);
    let (mut range, mut ims) = (None, None);
    for h in req.headers.iter() {
        let name = h.name;
        if name.eq_ignore_ascii_case("connection") {
            if h.value.eq_ignore_ascii_case(b"close") {
                close = true;
            } else if h.value.eq_ignore_ascii_case(b"keep-alive") {
                close = false;
            }
        } else if name.eq_ignore_ascii_case("content-length") {
            if h.value.iter().any(|&b| b != b'0' && b != b' ') {
                // A GET or HEAD has no body; one would desynchronise the
                // connection, so it ends here.
                return Parsed::Refuse(400, bytes.len(), true);
            }
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            return Parsed::Refuse(400, bytes.len(), true);
        } else if name.eq_ignore_ascii_case("range") {
            range = parse_range(h.value);
        } else if name.eq_ignore_ascii_case("if-modified-since") {
            ims = parse_http_date(h.value);
        }
    }
    let head_only = match req.method {
        Some("GET") => false,
        Some("HEAD") => true,
        _ => return Parsed::Refuse(405, len, close),
    };
    let Some(path) = req.path else { return Parsed::Refuse(400, len, true) };
    match decode_path(path.as_bytes()) {
        Ok(rel) => Parsed::Request(Request { len, head_only, close, rel, range, if_modified_since: ims }),
        Err(status) => Parsed::Refuse(status, len, close),
    }
}

/// The request target as a relative path: query dropped, percent-decoded,
/// split on `/`; empty and `.` segments skipped, `..` refused (403), a NUL
/// or a bad escape refused (400). A path ending in `/` names its
/// `index.html`.
fn decode_path(target: &[u8]) -> Result<PathBuf, u16> {
    let target = target.split(|&b| b == b'?' || b == b'#').next().unwrap_or(b"");
    if target.first() != Some(&b'/') {
        return Err(400);
    }
    let mut decoded = Vec::with_capacity(target.len());
    let mut i = 0;
    while i < target.len() {
        match target[i] {
            b'%' => {
                let hex = |b: u8| (b as char).to_digit(16);
                let (Some(h), Some(l)) =
                    (target.get(i + 1).and_then(|&b| hex(b)), target.get(i + 2).and_then(|&b| hex(b)))
                else {
                    return Err(400);
                };
                decoded.push((h * 16 + l) as u8);
                i += 3;
            }
            b => {
                decoded.push(b);
                i += 1;
            }
        }
    }
    if decoded.contains(&0) {
        return Err(400);
    }
    let mut rel = PathBuf::new();
    for seg in decoded.split(|&b| b == b'/') {
        match seg {
            b"" | b"." => {}
            b".." => return Err(403),
            s => rel.push(std::ffi::OsStr::from_bytes(s)),
        }
    }
    if decoded.ends_with(b"/") {
        rel.push("index.html");
    }
    Ok(rel)
}

/// `bytes=a-b`, `bytes=a-` or `bytes=-n`; anything else (several ranges,
/// another unit, bad syntax) is ignored, and the whole file is sent.
fn parse_range(v: &[u8]) -> Option<RangeSpec> {
    let v = std::str::from_utf8(v).ok()?.trim();
    let spec = v.strip_prefix("bytes=")?.trim();
    if spec.contains(',') {
        return None;
    }
    let (a, b) = spec.split_once('-')?;
    let (a, b) = (a.trim(), b.trim());
    if a.is_empty() {
        return Some(RangeSpec::Last(b.parse().ok()?));
    }
    let a: u64 = a.parse().ok()?;
    if b.is_empty() {
        return Some(RangeSpec::From(a, None));
    }
    let b: u64 = b.parse().ok()?;
    (b >= a).then_some(RangeSpec::From(a, Some(b)))
}

/// The byte span `range` selects of a file of `size` bytes: `Ok(None)` for
/// the whole file, `Err(())` when it is unsatisfiable (416).
fn select(range: Option<RangeSpec>, size: u64) -> Result<Option<(u64, u64)>, ()> {
    match range {
        None => Ok(None),
        Some(RangeSpec::From(a, _)) if a >= size => Err(()),
        Some(RangeSpec::From(a, b)) => Ok(Some((a, b.unwrap_or(u64::MAX).min(size - 1)))),
        Some(RangeSpec::Last(0)) => Err(()),
        Some(RangeSpec::Last(_)) if size == 0 => Err(()),
        Some(RangeSpec::Last(n)) => Ok(Some((size - n.min(size), size - 1))),
    }
}

const MONTHS: [&str; 12] = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];

/// Days since 1970-01-01 of a civil date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m as i64 + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Appends `secs` (since the epoch) as an IMF-fixdate:
/// `Sun, 06 Nov 1994 08:49:37 GMT`.
fn push_http_date(out: &mut Vec<u8>, secs: u64) {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    let line = format!(
        "{}, {:02} {} {} {:02}:{:02}:{:02} GMT",
        DAYS[days.rem_euclid(7) as usize],
        d,
        MONTHS[(m - 1) as usize],
        y,
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    );
    out.extend_from_slice(line.as_bytes());
}

/// Parses an IMF-fixdate (the only form senders may generate); `None` for
/// anything else, which is then ignored.
fn parse_http_date(v: &[u8]) -> Option<u64> {
    let v = std::str::from_utf8(v).ok()?.trim();
    if v.len() != 29 || !v.ends_with(" GMT") {
        return None;
    }
    let num = |r: std::ops::Range<usize>| v.get(r)?.parse::<u32>().ok();
    let day = num(5..7)?;
    let month = MONTHS.iter().position(|m| v.get(8..11) == Some(*m))? as u32 + 1;
    let year = num(12..16)? as i64;
    let (h, mi, s) = (num(17..19)?, num(20..22)?, num(23..25)?);
    if day == 0 || day > 31 || h > 23 || mi > 59 || s > 60 {
        return None;
    }
    let days = days_from_civil(year, month, day);
    u64::try_from(days * 86_400 + (h * 3600 + mi * 60 + s) as i64).ok()
}

fn content_type(path: &Path) -> &'static str {
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("").to_ascii_lowercase();
    match ext.as_str() {
        "html" | "htm" => "text/html; charset=utf-8",
        "txt" => "text/plain; charset=utf-8",
        "css" => "text/css",
        "js" | "mjs" => "text/javascript",
        "json" => "application/json",
        "svg" => "image/svg+xml",
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "gif" => "image/gif",
        "webp" => "image/webp",
        "ico" => "image/x-icon",
        "wasm" => "application/wasm",
        "pdf" => "application/pdf",
        _ => "application/octet-stream",
    }
}

/// What a request's path names.
enum Found {
    File { file: Rc<File>, size: u64, mtime: u64 },
    Status(u16),
}

/// What the pool finds for a path (a `File` can cross threads, an `Rc`
/// cannot).
enum Resolved {
    File { file: File, size: u64, mtime: u64 },
    Status(u16),
}

/// On the work pool (blocking calls): resolves `rel` under `root`, every
/// symlink followed, refuses a result outside the root, and opens and
/// stats the file.
fn resolve(root: &Path, rel: &Path) -> Resolved {
    let status_of = |e: &std::io::Error| match e.kind() {
        std::io::ErrorKind::NotFound | std::io::ErrorKind::NotADirectory => 404,
        std::io::ErrorKind::PermissionDenied => 403,
        _ => 500,
    };
    let full = match std::fs::canonicalize(root.join(rel)) {
        Ok(p) => p,
        Err(e) => return Resolved::Status(status_of(&e)),
    };
    if !full.starts_with(root) {
        return Resolved::Status(403);
    }
    let file = match File::open(&full) {
        Ok(f) => f,
        Err(e) => return Resolved::Status(status_of(&e)),
    };
    match file.metadata() {
        Ok(m) if m.is_file() => {
            let mtime = m.modified().ok().and_then(|t| t.duration_since(UNIX_EPOCH).ok()).map_or(0, |d| d.as_secs());
            Resolved::File { file, size: m.len(), mtime }
        }
        Ok(_) => Resolved::Status(403),
        Err(e) => Resolved::Status(status_of(&e)),
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        206 => "Partial Content",
        304 => "Not Modified",
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        416 => "Range Not Satisfiable",
        431 => "Request Header Fields Too Large",
        _ => "Internal Server Error",
    }
}

/// Appends a response head; `extra` holds more header lines. A 304 has
/// no `Content-Length` (it would have to be the 200's).
fn push_head(out: &mut Vec<u8>, status: u16, len: u64, close: bool, extra: &[u8]) {
    use std::io::Write;
    let _ = write!(out, "HTTP/1.1 {status} {}\r\nServer: uvring\r\n", reason(status));
    if status != 304 {
        let _ = write!(out, "Content-Length: {len}\r\n");
    }
    out.extend_from_slice(extra);
    if close {
        out.extend_from_slice(b"Connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// Appends an error response with a one-line body.
fn push_error(out: &mut Vec<u8>, status: u16, close: bool, head_only: bool) {
    let body = format!("{status} {}\n", reason(status));
    let extra: &[u8] = if status == 405 {
        b"Content-Type: text/plain\r\nAllow: GET, HEAD\r\n"
    } else {
        b"Content-Type: text/plain\r\n"
    };
    push_head(out, status, body.len() as u64, close, extra);
    if !head_only {
        out.extend_from_slice(body.as_bytes());
    }
}

/// The callbacks every connection's responses use, made once.
#[derive(Clone)]
struct Callbacks {
    on_sent: OnSendFile<Server, TcpStream>,
    on_shutdown: OnShutdown<Server, TcpStream>,
}

/// Answers the requests buffered on connection `slot`, in order, until one
/// has to wait for the pool.
fn pump(lp: &mut Loop<Server>, server: &mut Server, slot: usize, cbs: &Callbacks) {
    loop {
        let Some(c) = server.conns.get(slot) else { return };
        let Some(s) = c.stream else { return };
        if c.busy || c.closing || c.buf.is_empty() {
            return;
        }
        let parsed = parse_request(&c.buf);
        server.out.clear();
        let c = &mut server.conns[slot];
        match parsed {
            Parsed::Partial => {
                if c.buf.len() > MAX_BUFFERED {
                    c.buf.clear();
                    push_error(&mut server.out, 431, true, false);
                    respond_and_close(lp, server, slot, s, cbs);
                }
                return;
            }
            Parsed::Refuse(status, len, close) => {
                c.buf.drain(..len.min(c.buf.len()));
                let close = close || server.draining;
                push_error(&mut server.out, status, close, false);
                if close {
                    respond_and_close(lp, server, slot, s, cbs);
                    return;
                }
                if lp.write(s, &server.out, None).is_err() {
                    drop_conn(lp, server, slot, s);
                    return;
                }
            }
            Parsed::Request(req) => {
                c.buf.drain(..req.len);
                c.busy = true;
                let now = lp.now();
                if let Some(hit) = server.cache.get(&req.rel).filter(|e| now.saturating_sub(e.at) < CACHE_VALID_MS) {
                    let found = Found::File { file: hit.file.clone(), size: hit.size, mtime: hit.mtime };
                    answer(lp, server, slot, s, req, found, cbs);
                    continue;
                }
                let root = server.root.clone();
                let rel = req.rel.clone();
                let cbs2 = cbs.clone();
                let queued = lp.queue_work(
                    move || resolve(&root, &rel),
                    move |lp, server: &mut Server, res| {
                        let found = match res.unwrap_or(Resolved::Status(500)) {
                            Resolved::File { file, size, mtime } => {
                                let file = Rc::new(file);
                                if server.cache.len() >= CACHE_MAX {
                                    server.cache.clear();
                                }
                                let at = lp.now();
                                server.cache.insert(req.rel.clone(), Cached { file: file.clone(), size, mtime, at });
                                Found::File { file, size, mtime }
                            }
                            Resolved::Status(status) => Found::Status(status),
                        };
                        answer(lp, server, slot, s, req, found, &cbs2);
                        pump(lp, server, slot, &cbs2);
                    },
                );
                if queued.is_err() {
                    drop_conn(lp, server, slot, s);
                }
                return;
            }
        }
    }
}

/// Writes `server.out` and ends the connection after it.
fn respond_and_close(lp: &mut Loop<Server>, server: &mut Server, slot: usize, s: TcpStream, cbs: &Callbacks) {
    let _ = lp.write(s, &server.out, None);
    if let Some(c) = server.conns.get_mut(slot) {
        c.closing = true;
    }
    let _ = lp.read_stop(s);
    if lp.shutdown(s, Some(&cbs.on_shutdown)).is_err() {
        drop_conn(lp, server, slot, s);
    }
}

/// Closes connection `slot` now.
fn drop_conn(lp: &mut Loop<Server>, server: &mut Server, slot: usize, s: TcpStream) {
    server.release(slot);
    let _ = lp.close(s, None);
}

/// A request on connection `slot` is resolved: write the head and queue
/// the body's transfer (the caller goes on with the next request).
fn answer(
    lp: &mut Loop<Server>,
    server: &mut Server,
    slot: usize,
    s: TcpStream,
    req: Request,
    found: Found,
    cbs: &Callbacks,
) {
    // The connection may have closed (and its slot been reused) meanwhile.
    match server.conns.get_mut(slot) {
        Some(c) if c.stream == Some(s) && c.busy => c.busy = false,
        _ => return,
    }
    let close = req.close || server.draining;
    server.out.clear();
    let (file, size, mtime) = match found {
        Found::File { file, size, mtime } => (file, size, mtime),
        Found::Status(status) => {
            push_error(&mut server.out, status, close, req.head_only);
            return finish_answer(lp, server, slot, s, close, None, cbs);
        }
    };
    let mut extra = Vec::with_capacity(128);
    extra.extend_from_slice(b"Last-Modified: ");
    push_http_date(&mut extra, mtime);
    extra.extend_from_slice(b"\r\n");
    if req.if_modified_since.is_some_and(|ims| mtime <= ims) {
        push_head(&mut server.out, 304, 0, close, &extra);
        return finish_answer(lp, server, slot, s, close, None, cbs);
    }
    extra.extend_from_slice(b"Accept-Ranges: bytes\r\nContent-Type: ");
    extra.extend_from_slice(content_type(&req.rel).as_bytes());
    extra.extend_from_slice(b"\r\n");
    let (status, start, len) = match select(req.range, size) {
        Ok(None) => (200, 0, size),
        Ok(Some((a, b))) => {
            extra.extend_from_slice(format!("Content-Range: bytes {a}-{b}/{size}\r\n").as_bytes());
            (206, a, b - a + 1)
        }
        Err(()) => {
            extra.extend_from_slice(format!("Content-Range: bytes */{size}\r\n").as_bytes());
            push_head(&mut server.out, 416, 0, close, &extra);
            return finish_answer(lp, server, slot, s, close, None, cbs);
        }
    };
    push_head(&mut server.out, status, len, close, &extra);
    let body = (!req.head_only && len > 0).then_some((file, start, len));
    finish_answer(lp, server, slot, s, close, body, cbs)
}

/// Writes the head in `server.out`, then the body's transfer, and closes
/// after them or goes on with the connection's next request.
fn finish_answer(
    lp: &mut Loop<Server>,
    server: &mut Server,
    slot: usize,
    s: TcpStream,
    close: bool,
    body: Option<(Rc<File>, u64, u64)>,
    cbs: &Callbacks,
) {
    if lp.write(s, &server.out, None).is_err() {
        return drop_conn(lp, server, slot, s);
    }
    if let Some((file, start, len)) = body {
        if lp.sendfile(s, &*file, start, len, Some(&cbs.on_sent)).is_err() {
            return drop_conn(lp, server, slot, s);
        }
        // Kept open until the transfer's callback.
        server.conns[slot].files.push_back((file, len));
    }
    if close {
        server.conns[slot].closing = true;
        let _ = lp.read_stop(s);
        if lp.shutdown(s, Some(&cbs.on_shutdown)).is_err() {
            drop_conn(lp, server, slot, s);
        }
    }
}

/// Listens on `addr` and serves the root's files.
fn serve(lp: &mut Loop<Server>, addr: SocketAddr) -> uvring::Result<TcpListener> {
    let on_sent =
        OnSendFile::new(|lp: &mut Loop<Server>, server: &mut Server, s: TcpStream, res: uvring::Result<u64>| {
            let Some(slot) = lp.data(s).ok().filter(|&i| server.conns.get(i).is_some_and(|c| c.stream == Some(s)))
            else {
                return;
            };
            let Some((_file, want)) = server.conns[slot].files.pop_front() else { return };
            // A failed or short transfer (the file shrank) leaves the peer
            // waiting for bytes that will not come: end the connection.
            if res != Ok(want) {
                drop_conn(lp, server, slot, s);
            }
        });
    let cbs = Callbacks { on_sent, on_shutdown: close_after_shutdown() };
    let on_read = OnRead::new(move |lp: &mut Loop<Server>, server: &mut Server, s: TcpStream, res| {
        let slot = lp.data(s).unwrap_or(usize::MAX);
        if !server.conns.get(slot).is_some_and(|c| c.stream == Some(s)) {
            return;
        }
        let bytes = match res {
            Ok(bytes) => bytes,
            Err(_) => return drop_conn(lp, server, slot, s),
        };
        let c = &mut server.conns[slot];
        if c.closing {
            return;
        }
        c.buf.extend_from_slice(bytes);
        pump(lp, server, slot, &cbs);
    });
    let on_connection = OnConnection::new(move |lp, server: &mut Server, srv: TcpListener, res| {
        if let Err(e) = res {
            if e == Error::EADDRINUSE || e == Error::EACCES || e.errno().is_none() {
                eprintln!("[{}] listen failed: {e}", std::process::id());
                let _ = lp.close(srv, None);
                std::process::exit(1);
            }
            return;
        }
        let Ok(c) = lp.accept(srv) else { return };
        let slot = server.slot();
        server.conns[slot].stream = Some(c);
        let _ = lp.set_data(c, slot);
        let _ = lp.tcp_nodelay(c, true);
        if lp.read_start(c, &on_read).is_err() {
            drop_conn(lp, server, slot, c);
        }
    });
    let socket = lp.tcp_init()?;
    lp.tcp_bind(socket, addr, 0)?;
    lp.listen(socket, 1024, &on_connection)
}

/// Ends a connection after what was written to it.
fn finish(lp: &mut Loop<Server>, s: TcpStream, on_shutdown: &OnShutdown<Server, TcpStream>) {
    let _ = lp.read_stop(s);
    if lp.shutdown(s, Some(on_shutdown)).is_err() {
        let _ = lp.close(s, None);
    }
}

/// A shutdown callback that closes the stream.
fn close_after_shutdown() -> OnShutdown<Server, TcpStream> {
    OnShutdown::new(|lp, server: &mut Server, s: TcpStream, _| {
        if let Ok(slot) = lp.data(s) {
            if server.conns.get(slot).is_some_and(|c| c.stream == Some(s)) {
                server.release(slot);
            }
        }
        let _ = lp.close(s, None);
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_decoded_and_escapes_refused() {
        assert_eq!(decode_path(b"/a/b.txt?x=1"), Ok(PathBuf::from("a/b.txt")));
        assert_eq!(decode_path(b"/a%20b"), Ok(PathBuf::from("a b")));
        assert_eq!(decode_path(b"/dir/"), Ok(PathBuf::from("dir/index.html")));
        assert_eq!(decode_path(b"/./a//b"), Ok(PathBuf::from("a/b")));
        assert_eq!(decode_path(b"/../etc/passwd"), Err(403));
        assert_eq!(decode_path(b"/a/%2e%2e/%2E%2E/x"), Err(403));
        assert_eq!(decode_path(b"/a%2f..%2fb"), Err(403));
        assert_eq!(decode_path(b"/a%00"), Err(400));
        assert_eq!(decode_path(b"/a%zz"), Err(400));
        assert_eq!(decode_path(b"a"), Err(400));
    }

    #[test]
    fn ranges() {
        assert_eq!(select(parse_range(b"bytes=0-9"), 100), Ok(Some((0, 9))));
        assert_eq!(select(parse_range(b"bytes=90-"), 100), Ok(Some((90, 99))));
        assert_eq!(select(parse_range(b"bytes=90-1000"), 100), Ok(Some((90, 99))));
        assert_eq!(select(parse_range(b"bytes=-10"), 100), Ok(Some((90, 99))));
        assert_eq!(select(parse_range(b"bytes=-1000"), 100), Ok(Some((0, 99))));
        assert_eq!(select(parse_range(b"bytes=100-"), 100), Err(()));
        assert_eq!(select(parse_range(b"bytes=-0"), 100), Err(()));
        assert_eq!(parse_range(b"bytes=0-1,5-6"), None);
        assert_eq!(parse_range(b"bytes=5-1"), None);
        assert_eq!(parse_range(b"items=0-1"), None);
    }

    #[test]
    fn http_dates_round_trip() {
        let mut out = Vec::new();
        push_http_date(&mut out, 784_111_777);
        assert_eq!(out, b"Sun, 06 Nov 1994 08:49:37 GMT");
        assert_eq!(parse_http_date(b"Sun, 06 Nov 1994 08:49:37 GMT"), Some(784_111_777));
        assert_eq!(parse_http_date(b"Sunday, 06-Nov-94 08:49:37 GMT"), None);
        for t in [0u64, 951_782_400, 1_700_000_000, 4_102_444_800] {
            let mut out = Vec::new();
            push_http_date(&mut out, t);
            assert_eq!(parse_http_date(&out), Some(t), "{}", String::from_utf8_lossy(&out));
        }
    }

    #[test]
    fn requests() {
        let Parsed::Request(r) = parse_request(b"HEAD /x.html HTTP/1.1\r\nRange: bytes=1-2\r\n\r\nGET") else {
            panic!("a request")
        };
        assert!(r.head_only && !r.close && r.rel == Path::new("x.html"));
        assert_eq!(r.range, Some(RangeSpec::From(1, Some(2))));
        assert!(matches!(parse_request(b"GET / HTTP/1.1\r\nHost"), Parsed::Partial));
        assert!(matches!(parse_request(b"POST / HTTP/1.1\r\n\r\n"), Parsed::Refuse(405, _, false)));
        assert!(matches!(parse_request(b"GET / HTTP/1.1\r\nContent-Length: 5\r\n\r\n"), Parsed::Refuse(400, _, true)));
        assert!(matches!(parse_request(b"\x00\x01 garbage\r\n\r\n"), Parsed::Refuse(400, _, true)));
    }
}
