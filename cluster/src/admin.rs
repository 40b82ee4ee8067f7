//! The admin endpoint: a tiny HTTP/1.1 responder served by the primary's
//! own loop, for operators, load balancers and Prometheus.
//!
//! [`Primary::admin_listen`] binds it (keep it on a loopback or otherwise
//! private address: it has no authentication). Each connection carries one
//! `GET` (or `HEAD`) and is closed after the answer (`Connection: close`):
//!
//! - `/health`: `200 ok` while the cluster serves; `503` while it shuts
//!   down ([`Primary::disconnect`]), before any worker listens, or after
//!   [`Primary::set_healthy(false)`](Primary::set_healthy) (an upgrade
//!   hands over, say). A balancer's health check takes the host out of
//!   rotation on the 503, before the listeners close.
//! - `/stats`: JSON, the cluster's counters and one object per worker
//!   ([`stats_json`]).
//! - `/metrics`: the same figures in the Prometheus text format
//!   ([`metrics_text`]).
//!
//! The listener and its connections are unreferenced: they never keep the
//! loop alive, so a primary whose workers are gone still ends. At most
//! [`MAX_ADMIN_CONNECTIONS`] are open at once (more are closed at once), a
//! request head is at most [`MAX_ADMIN_REQUEST`] bytes, and a connection
//! that has not sent its request within [`ADMIN_REQUEST_TIMEOUT`] is closed
//! (so idle clients cannot hold every slot and silence `/health`).

use crate::primary::{Primary, PrimaryData, PrimaryId, WorkerStats, WorkerStatus};
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::time::Duration;
use uvring::{Loop, OnConnection, OnRead, OnShutdown, OnTimer, Result, TcpListener, TcpStream, Timer};

/// Admin connections open at once; one more is closed as soon as accepted.
pub const MAX_ADMIN_CONNECTIONS: usize = 64;
/// Longest request head; a longer one gets `431` and the connection closes.
pub const MAX_ADMIN_REQUEST: usize = 8 * 1024;
/// How long a connection may take to send its request.
pub const ADMIN_REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// An open admin connection.
struct AdminConn {
    stream: TcpStream,
    /// The request so far.
    buf: Vec<u8>,
    /// `lp.now()` at its accept.
    opened: u64,
}

/// The admin endpoint's state, kept by its [`Primary`].
pub(crate) struct Admin<D> {
    listener: TcpListener,
    addr: SocketAddr,
    /// Open connections and their partial request; the slot index is the
    /// stream's data word.
    conns: Vec<Option<AdminConn>>,
    free: Vec<usize>,
    /// Closes connections past `ADMIN_REQUEST_TIMEOUT` (every second,
    /// unreferenced).
    sweep: Option<Timer>,
    on_read: OnRead<D, TcpStream>,
    on_shutdown: OnShutdown<D, TcpStream>,
}

impl<D> Admin<D> {
    pub(crate) fn address(&self) -> SocketAddr {
        self.addr
    }

    /// The listener (an upgrade hands its socket over).
    pub(crate) fn listener(&self) -> TcpListener {
        self.listener
    }

    /// Closes the listener and every connection.
    pub(crate) fn close(self, lp: &mut Loop<D>) {
        let _ = lp.close(self.listener, None);
        if let Some(t) = self.sweep {
            let _ = lp.close(t, None);
        }
        for c in self.conns.into_iter().flatten() {
            let _ = lp.close(c.stream, None);
        }
    }

    fn release(&mut self, slot: usize) -> Option<TcpStream> {
        let c = self.conns.get_mut(slot)?.take()?;
        self.free.push(slot);
        Some(c.stream)
    }

    /// Closes the connections that have not sent their request in time.
    fn close_late(&mut self, lp: &mut Loop<D>) {
        let now = lp.now();
        let limit = ADMIN_REQUEST_TIMEOUT.as_millis() as u64;
        for slot in 0..self.conns.len() {
            let late = self.conns[slot].as_ref().is_some_and(|c| now.saturating_sub(c.opened) >= limit);
            if late {
                if let Some(s) = self.release(slot) {
                    let _ = lp.close(s, None);
                }
            }
        }
    }
}

impl<D: PrimaryData> Admin<D> {
    /// Binds `addr` (or takes `inherited`, a socket an upgrade handed
    /// over, bound and listening already) and listens on `lp` for primary
    /// `pid`.
    pub(crate) fn listen(
        lp: &mut Loop<D>,
        pid: PrimaryId,
        addr: SocketAddr,
        inherited: Option<std::os::fd::OwnedFd>,
    ) -> Result<Admin<D>> {
        let (socket, bound) = match inherited {
            Some(fd) => (lp.tcp_open(fd)?, Ok(())),
            None => {
                let socket = lp.tcp_init()?;
                (socket, lp.tcp_bind(socket, addr, 0))
            }
        };
        let started = bound.and_then(|()| lp.listen(socket, 64, &on_admin_connection(pid)));
        let listener = match started {
            Ok(l) => l,
            Err(e) => {
                let _ = lp.close(socket, None);
                return Err(e);
            }
        };
        let addr = match lp.unref_handle(listener).and_then(|()| lp.tcp_getsockname(listener)) {
            Ok(a) => a,
            Err(e) => {
                let _ = lp.close(listener, None);
                return Err(e);
            }
        };
        // The sweep is best effort: without it the endpoint still serves.
        let sweep = lp.timer_init().ok().filter(|&t| {
            let every = Duration::from_secs(1);
            let ok = lp.unref_handle(t).is_ok() && lp.timer_start(t, every, every, &on_admin_sweep(pid)).is_ok();
            if !ok {
                let _ = lp.close(t, None);
            }
            ok
        });
        Ok(Admin {
            listener,
            addr,
            conns: Vec::new(),
            free: Vec::new(),
            sweep,
            on_read: on_admin_read(pid),
            on_shutdown: OnShutdown::new(|lp, _, s: TcpStream, _| {
                let _ = lp.close(s, None);
            }),
        })
    }
}

fn on_admin_sweep<D: PrimaryData>(pid: PrimaryId) -> OnTimer<D> {
    OnTimer::new(move |lp, d: &mut D, _| {
        if let Some(admin) = d.primary_by_id(pid).and_then(|p| p.admin_mut()) {
            admin.close_late(lp);
        }
    })
}

fn on_admin_connection<D: PrimaryData>(pid: PrimaryId) -> OnConnection<D, TcpListener> {
    OnConnection::new(move |lp, d: &mut D, server, res| {
        if res.is_err() {
            // EMFILE and friends: the loop backs off; nothing was accepted.
            return;
        }
        let Ok(s) = lp.accept(server) else { return };
        let Some(admin) = d.primary_by_id(pid).and_then(|p| p.admin_mut()) else {
            let _ = lp.close(s, None);
            return;
        };
        let open = admin.conns.len() - admin.free.len();
        if open >= MAX_ADMIN_CONNECTIONS {
            let _ = lp.close(s, None);
            return;
        }
        let slot = admin.free.pop().unwrap_or_else(|| {
            admin.conns.push(None);
            admin.conns.len() - 1
        });
        admin.conns[slot] = Some(AdminConn { stream: s, buf: Vec::new(), opened: lp.now() });
        let ok = lp.set_data(s, slot).is_ok() && lp.unref_handle(s).is_ok() && lp.read_start(s, &admin.on_read).is_ok();
        if !ok {
            admin.release(slot);
            let _ = lp.close(s, None);
        }
    })
}

fn on_admin_read<D: PrimaryData>(pid: PrimaryId) -> OnRead<D, TcpStream> {
    OnRead::new(move |lp, d: &mut D, s, res| {
        let slot = lp.data(s).unwrap_or(usize::MAX);
        let Some(p) = d.primary_by_id(pid) else { return };
        let Some(admin) = p.admin_mut() else { return };
        let bytes = match res {
            Ok(b) => b,
            Err(_) => {
                admin.release(slot);
                let _ = lp.close(s, None);
                return;
            }
        };
        let Some(Some(conn)) = admin.conns.get_mut(slot) else { return };
        conn.buf.extend_from_slice(bytes);
        let request = std::mem::take(&mut conn.buf);
        let response = match parse_request(&request) {
            Parsed::Partial if request.len() <= MAX_ADMIN_REQUEST => {
                if let Some(Some(conn)) = admin.conns.get_mut(slot) {
                    conn.buf = request;
                }
                return;
            }
            Parsed::Partial => simple(431, "Request Header Fields Too Large", "request head too long\n"),
            Parsed::Bad => simple(400, "Bad Request", "bad request\n"),
            Parsed::Request { head, path } => {
                let mut r = answer(p, lp, path);
                if head {
                    r.body.clear();
                }
                r
            }
        };
        let Some(admin) = d.primary_by_id(pid).and_then(|p| p.admin_mut()) else { return };
        admin.release(slot);
        let on_shutdown = admin.on_shutdown.clone();
        let bytes = response.to_bytes();
        let _ = lp.read_stop(s);
        if lp.write(s, &bytes, None).is_err() || lp.shutdown(s, Some(&on_shutdown)).is_err() {
            let _ = lp.close(s, None);
        }
    })
}

enum Parsed<'a> {
    /// `GET` or `HEAD` (`head`) of `path` (the query string cut off).
    Request {
        head: bool,
        path: &'a str,
    },
    Partial,
    Bad,
}

fn parse_request(bytes: &[u8]) -> Parsed<'_> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(bytes) {
        Ok(httparse::Status::Complete(_)) => {
            let (Some(method), Some(path)) = (req.method, req.path) else { return Parsed::Bad };
            let path = path.split('?').next().unwrap_or(path);
            match method {
                "GET" => Parsed::Request { head: false, path },
                "HEAD" => Parsed::Request { head: true, path },
                // Anything else is answered 405 by `answer`.
                _ => Parsed::Request { head: false, path: "\0method" },
            }
        }
        Ok(httparse::Status::Partial) => Parsed::Partial,
        Err(_) => Parsed::Bad,
    }
}

/// An answer to send.
struct Response {
    status: u16,
    reason: &'static str,
    content_type: &'static str,
    body: String,
}

impl Response {
    fn to_bytes(&self) -> Vec<u8> {
        let mut out = String::with_capacity(128 + self.body.len());
        let _ = write!(
            out,
            "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n",
            self.status,
            self.reason,
            self.content_type,
            self.body.len()
        );
        out.push_str(&self.body);
        out.into_bytes()
    }
}

fn simple(status: u16, reason: &'static str, body: &str) -> Response {
    Response { status, reason, content_type: "text/plain; charset=utf-8", body: body.to_owned() }
}

fn answer<D>(p: &Primary<D>, lp: &Loop<D>, path: &str) -> Response {
    match path {
        "/health" => match health(p) {
            Ok(()) => simple(200, "OK", "ok\n"),
            Err(why) => simple(503, "Service Unavailable", &format!("{why}\n")),
        },
        "/stats" => Response { status: 200, reason: "OK", content_type: "application/json", body: stats_json(p, lp) },
        "/metrics" => Response {
            status: 200,
            reason: "OK",
            content_type: "text/plain; version=0.0.4; charset=utf-8",
            body: metrics_text(p, lp),
        },
        "\0method" => simple(405, "Method Not Allowed", "only GET and HEAD\n"),
        _ => simple(404, "Not Found", "not found; try /health, /stats or /metrics\n"),
    }
}

/// Whether the cluster serves, or why not (the body of a `/health` 503).
pub fn health<D>(p: &Primary<D>) -> std::result::Result<(), &'static str> {
    if p.is_shutting_down() {
        Err("shutting down")
    } else if !p.is_healthy() {
        Err("draining")
    } else if !p.workers().iter().any(|w| w.status() == WorkerStatus::Listening) {
        Err("no worker listening")
    } else {
        Ok(())
    }
}

fn opt<T: std::fmt::Display>(v: Option<T>) -> String {
    v.map_or_else(|| "null".to_owned(), |v| v.to_string())
}

/// The `/stats` document: the primary (pid, policy, uptime, health, its
/// own loop's idle time, the hand-off counters) and `workers`, one object
/// per live worker with `id`, `pid`, `state`, `uptime_ms`, `restarts`,
/// `connections` (open, as the worker last reported; `null` before its
/// first report), `handed_off`, `acked`, `refused`, `unacked`, `messages`
/// (received from it), `messages_sent`, `rss_anon_bytes`, `vm_rss_bytes`,
/// `loop_utilisation` (0..1, busy share of its loop between its last two
/// reports), `loop_count` and `events`.
pub fn stats_json<D>(p: &Primary<D>, lp: &Loop<D>) -> String {
    let c = p.stats();
    let mut out = String::with_capacity(512);
    let _ = write!(
        out,
        "{{\"pid\":{},\"policy\":\"{}\",\"uptime_ms\":{},\"healthy\":{},\"shutting_down\":{},\
         \"loop_idle_ms\":{},\"handed_off\":{},\"refused\":{},\"redistributed\":{},\"closed_unroutable\":{},\"workers\":[",
        std::process::id(),
        p.policy(),
        lp.now(),
        health(p).is_ok(),
        p.is_shutting_down(),
        lp.metrics_idle_time().as_millis(),
        c.handed_off,
        c.refused,
        c.redistributed,
        c.closed_unroutable,
    );
    for (i, w) in p.worker_stats(lp).iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        let mem = w.memory;
        let _ = write!(
            out,
            "{{\"id\":{},\"pid\":{},\"state\":\"{}\",\"uptime_ms\":{},\"restarts\":{},\"connections\":{},\
             \"handed_off\":{},\"acked\":{},\"refused\":{},\"unacked\":{},\"messages\":{},\"messages_sent\":{},\
             \"rss_anon_bytes\":{},\"vm_rss_bytes\":{},\"loop_utilisation\":{},\"loop_count\":{},\"events\":{}}}",
            w.info.id(),
            w.info.pid(),
            w.info.status().name(),
            w.uptime.as_millis(),
            w.restarts,
            opt(w.open_connections),
            w.handed_off,
            w.acked,
            w.refused,
            w.unacked,
            w.messages_received,
            w.messages_sent,
            opt(mem.map(|m| m.rss_anon_bytes)),
            opt(mem.map(|m| m.vm_rss_bytes)),
            opt(w.loop_utilisation.map(|u| format!("{u:.4}"))),
            w.loop_count,
            w.events,
        );
    }
    out.push_str("]}\n");
    out
}

/// One Prometheus metric family over every worker.
fn family(
    out: &mut String,
    workers: &[WorkerStats],
    name: &str,
    kind: &str,
    help: &str,
    value: impl Fn(&WorkerStats) -> Option<String>,
) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
    for w in workers {
        if let Some(v) = value(w) {
            let _ = writeln!(out, "{name}{{worker=\"{}\",pid=\"{}\"}} {v}", w.info.id(), w.info.pid());
        }
    }
}

/// The `/metrics` document (Prometheus text format 0.0.4): the cluster's
/// counters, and per worker (labels `worker` and `pid`) its state, uptime,
/// restarts, open connections, hand-off counters, messages, memory and
/// loop utilisation.
pub fn metrics_text<D>(p: &Primary<D>, lp: &Loop<D>) -> String {
    let c = p.stats();
    let workers = p.worker_stats(lp);
    let mut out = String::with_capacity(2048);
    let cluster: [(&str, &str, &str, String); 7] = [
        (
            "uvring_cluster_up",
            "gauge",
            "1 while the cluster serves (/health answers 200).",
            u8::from(health(p).is_ok()).to_string(),
        ),
        ("uvring_cluster_workers", "gauge", "Live workers.", workers.len().to_string()),
        ("uvring_cluster_handed_off_total", "counter", "Connections workers accepted (rr).", c.handed_off.to_string()),
        (
            "uvring_cluster_refused_total",
            "counter",
            "Connections workers refused (sent to another).",
            c.refused.to_string(),
        ),
        (
            "uvring_cluster_redistributed_total",
            "counter",
            "Connections queued again because their worker's channel closed.",
            c.redistributed.to_string(),
        ),
        (
            "uvring_cluster_closed_unroutable_total",
            "counter",
            "Connections closed because no worker could take them.",
            c.closed_unroutable.to_string(),
        ),
        (
            "uvring_primary_loop_idle_seconds_total",
            "counter",
            "Time the primary's loop spent waiting for I/O.",
            format!("{:.6}", lp.metrics_idle_time().as_secs_f64()),
        ),
    ];
    for (name, kind, help, v) in cluster {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}");
    }
    let w = &workers;
    let o = &mut out;
    family(o, w, "uvring_worker_listening", "gauge", "1 if the worker has a server listening.", |w| {
        Some(u8::from(w.info.status() == WorkerStatus::Listening).to_string())
    });
    family(o, w, "uvring_worker_uptime_seconds", "gauge", "Time since the worker's fork.", |w| {
        Some(format!("{:.3}", w.uptime.as_secs_f64()))
    });
    family(o, w, "uvring_worker_restarts", "gauge", "Replacements before this worker (respawns, rolls).", |w| {
        Some(w.restarts.to_string())
    });
    family(o, w, "uvring_worker_connections", "gauge", "Open TCP connections, as the worker last reported.", |w| {
        w.open_connections.map(|n| n.to_string())
    });
    family(o, w, "uvring_worker_handed_off_total", "counter", "Connections the primary handed to the worker.", |w| {
        Some(w.handed_off.to_string())
    });
    family(o, w, "uvring_worker_acked_total", "counter", "Handed-off connections the worker accepted.", |w| {
        Some(w.acked.to_string())
    });
    family(o, w, "uvring_worker_messages_received_total", "counter", "User messages from the worker.", |w| {
        Some(w.messages_received.to_string())
    });
    family(o, w, "uvring_worker_messages_sent_total", "counter", "User messages to the worker.", |w| {
        Some(w.messages_sent.to_string())
    });
    family(o, w, "uvring_worker_rss_anon_bytes", "gauge", "Resident anonymous memory (RssAnon).", |w| {
        w.memory.map(|m| m.rss_anon_bytes.to_string())
    });
    family(o, w, "uvring_worker_vm_rss_bytes", "gauge", "Resident memory (VmRSS).", |w| {
        w.memory.map(|m| m.vm_rss_bytes.to_string())
    });
    family(o, w, "uvring_worker_loop_utilisation", "gauge", "Busy share of the worker's loop (0..1).", |w| {
        w.loop_utilisation.map(|u| format!("{u:.4}"))
    });
    family(o, w, "uvring_worker_loop_events_total", "counter", "Completions the worker's loop took.", |w| {
        Some(w.events.to_string())
    });
    out
}
