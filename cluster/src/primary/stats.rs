//! What the primary tells about each worker: figures it keeps itself
//! (uptime, restarts, connections handed off and acknowledged, messages),
//! figures it reads from `/proc` (memory), and figures only the worker sees
//! (open connections, loop utilisation), which arrive with each heartbeat
//! answer ([`WorkerReport`]). Also the memory limit
//! ([`Settings::max_memory`]): a worker whose `RssAnon` is above it is
//! replaced by a rolling replacement.

use super::{Event, Primary, PrimaryData, WorkerEntry, WorkerInfo, WorkerStatus};
use crate::proto::WorkerReport;
use crate::schedule::WorkerId;
use std::io::Read;
use std::time::Duration;
use uvring::Loop;

/// The figures the primary keeps per worker (part of its table entry).
#[derive(Clone, Debug, Default)]
pub(super) struct Figures {
    /// Replacements before this worker (a respawn after a crash, a rolling
    /// or memory replacement): its predecessor's count plus one.
    pub restarts: u32,
    /// User messages from the worker, and to it.
    pub messages_in: u64,
    pub messages_out: u64,
    /// The worker's last report and the utilisation computed from it.
    pub report: Option<WorkerReport>,
    pub utilisation: Option<f64>,
    /// Its `RssAnon` was found above the limit: it is being replaced.
    pub over_memory: bool,
}

impl Figures {
    /// Takes a new report: utilisation over the time since the previous
    /// one (over the worker's whole life for the first).
    pub(super) fn on_report(&mut self, r: WorkerReport) {
        let (idle0, up0) = self.report.map_or((0, 0), |p| (p.idle_us, p.uptime_us));
        let (didle, dup) = (r.idle_us.saturating_sub(idle0), r.uptime_us.saturating_sub(up0));
        if dup > 0 {
            self.utilisation = Some((1.0 - didle as f64 / dup as f64).clamp(0.0, 1.0));
        }
        self.report = Some(r);
    }
}

/// A process's memory, from `/proc/PID/status`.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ProcessMemory {
    /// `RssAnon`: resident anonymous memory (heap, stacks): what the
    /// process itself allocated. The memory limit measures this.
    pub rss_anon_bytes: u64,
    /// `VmRSS`: everything resident, shared program text and the io_uring
    /// rings' mappings included.
    pub vm_rss_bytes: u64,
}

impl ProcessMemory {
    /// Reads `/proc/PID/status`; `None` if the process is gone or the file
    /// lacks the fields.
    pub fn of_pid(pid: i32) -> Option<ProcessMemory> {
        if pid <= 0 {
            return None;
        }
        let mut buf = [0u8; 4096];
        let mut f = std::fs::File::open(format!("/proc/{pid}/status")).ok()?;
        let mut len = 0;
        while len < buf.len() {
            match f.read(&mut buf[len..]) {
                Ok(0) => break,
                Ok(n) => len += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => return None,
            }
        }
        ProcessMemory::parse(&buf[..len])
    }

    /// Parses the text of `/proc/PID/status` (sizes are in kB there).
    fn parse(status: &[u8]) -> Option<ProcessMemory> {
        let kb = |name: &[u8]| {
            status.split(|&b| b == b'\n').find_map(|line| {
                let rest = line.strip_prefix(name)?.strip_prefix(b":")?;
                let text = std::str::from_utf8(rest).ok()?.trim();
                text.strip_suffix("kB").unwrap_or(text).trim().parse::<u64>().ok()
            })
        };
        Some(ProcessMemory {
            rss_anon_bytes: kb(b"RssAnon")?.saturating_mul(1024),
            vm_rss_bytes: kb(b"VmRSS")?.saturating_mul(1024),
        })
    }
}

/// One worker's figures at one moment ([`Primary::worker_stats`]).
#[derive(Copy, Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct WorkerStats {
    /// Id, pid, state, connection to the channel.
    pub info: WorkerInfo,
    /// Since its fork.
    pub uptime: Duration,
    /// Replacements before this worker: a respawned, rolled or
    /// memory-replaced worker has its predecessor's count plus one.
    pub restarts: u32,
    /// TCP connections open in the worker, as it last reported (with its
    /// heartbeat answer); `None` before its first report.
    pub open_connections: Option<u32>,
    /// Connections the primary handed to it (`rr`).
    pub handed_off: u64,
    /// Of those, the ones it acknowledged as accepted.
    pub acked: u64,
    /// Of those, the ones it refused (they went to another worker).
    pub refused: u64,
    /// Handed off and not acknowledged yet.
    pub unacked: usize,
    /// User messages it sent the primary.
    pub messages_received: u64,
    /// User messages the primary sent it.
    pub messages_sent: u64,
    /// Its memory now (`None` once the process is gone).
    pub memory: Option<ProcessMemory>,
    /// Share of time its loop was busy (not blocked waiting for I/O) between
    /// its last two reports, 0.0 ..= 1.0; `None` before its first report.
    pub loop_utilisation: Option<f64>,
    /// Its loop's iterations, as last reported.
    pub loop_count: u64,
    /// Completions its loop took, as last reported.
    pub events: u64,
    /// `shared`: load reports it sent (rate-limited, see
    /// `UVRING_CLUSTER_SHARE_MS`).
    pub load_reports: u64,
}

impl WorkerStatus {
    /// The state's name, lower case (`listening`), as `/stats` shows it.
    pub fn name(self) -> &'static str {
        match self {
            WorkerStatus::Starting => "starting",
            WorkerStatus::Online => "online",
            WorkerStatus::Listening => "listening",
            WorkerStatus::Disconnecting => "disconnecting",
            WorkerStatus::Disconnected => "disconnected",
            WorkerStatus::Dead => "dead",
        }
    }
}

impl<D> Primary<D> {
    /// The admin endpoint's address, once [`admin_listen`](Self::admin_listen) bound it.
    pub fn admin_address(&self) -> Option<std::net::SocketAddr> {
        self.admin.as_ref().map(crate::admin::Admin::address)
    }

    /// Closes the admin endpoint (its listener and connections).
    pub fn admin_close(&mut self, lp: &mut Loop<D>) {
        if let Some(a) = self.admin.take() {
            a.close(lp);
        }
    }

    pub(crate) fn admin_mut(&mut self) -> Option<&mut crate::admin::Admin<D>> {
        self.admin.as_mut()
    }

    /// Marks the cluster as not serving (`false`) or serving again for the
    /// admin `/health` (503 while unhealthy), for a hand-over the library
    /// does not see (an upgrade of the primary, a maintenance window).
    /// A shutdown ([`disconnect`](Self::disconnect)) answers 503 by itself.
    pub fn set_healthy(&mut self, healthy: bool) {
        self.healthy = healthy;
    }

    /// [`set_healthy`](Self::set_healthy)'s word (default `true`).
    pub fn is_healthy(&self) -> bool {
        self.healthy
    }

    /// Every live worker's figures, in fork order. Reads each worker's
    /// `/proc/PID/status` (for its memory): meant for an admin request or
    /// a periodic report, not for a hot path.
    pub fn worker_stats(&self, lp: &Loop<D>) -> Vec<WorkerStats> {
        let now = lp.now();
        self.workers.iter().map(|w| Self::stats_of(w, now)).collect()
    }

    /// Whether the cluster is going away: a [`disconnect`](Self::disconnect)
    /// of every worker is under way. An admin `/health` answers 503 then.
    pub fn is_shutting_down(&self) -> bool {
        self.life.shutting_down
    }

    fn stats_of(w: &WorkerEntry, now: u64) -> WorkerStats {
        let f = &w.figures;
        let report = f.report.unwrap_or_default();
        WorkerStats {
            info: w.info(),
            uptime: Duration::from_millis(now.saturating_sub(w.forked_at)),
            restarts: f.restarts,
            open_connections: f.report.map(|r| r.open_connections),
            handed_off: w.conns.handed_off,
            acked: w.conns.acked,
            refused: w.conns.refused,
            unacked: w.conns.unacked.len(),
            messages_received: f.messages_in,
            messages_sent: f.messages_out,
            memory: ProcessMemory::of_pid(w.info.pid),
            loop_utilisation: f.utilisation,
            loop_count: report.loop_count,
            events: report.events,
            load_reports: w.conns.load_reports,
        }
    }

    /// Worker `id` answered a heartbeat with its report.
    pub(super) fn on_report(&mut self, id: WorkerId, report: WorkerReport) {
        if let Some(w) = self.entry_mut(id) {
            w.figures.on_report(report);
        }
    }

    /// Worker `id` is replaced by `new`: the replacement counts one
    /// restart more.
    pub(super) fn inherit_restarts(&mut self, restarts: u32, new: WorkerId) {
        if let Some(w) = self.entry_mut(new) {
            w.figures.restarts = restarts.saturating_add(1);
        }
    }
}

impl<D: PrimaryData> Primary<D> {
    /// Serves the admin endpoint on `addr` from this loop (see
    /// [`admin`](crate::admin): `/health`, `/stats`, `/metrics`) and
    /// returns the address bound (port 0 picks one). An endpoint already
    /// served is closed first. Keep it on a private address.
    ///
    /// # Errors
    ///
    /// The error of binding and listening on `addr` (`EADDRINUSE`, `EACCES`, `EADDRNOTAVAIL`,
    /// `EMFILE`); the endpoint served before is closed all the same.
    pub fn admin_listen(
        &mut self,
        lp: &mut Loop<D>,
        addr: std::net::SocketAddr,
    ) -> uvring::Result<std::net::SocketAddr> {
        self.admin_close(lp);
        let inherited = self.take_inherited(addr);
        let admin = crate::admin::Admin::listen(lp, self.id, addr, inherited)?;
        let bound = admin.address();
        self.admin = Some(admin);
        Ok(bound)
    }

    /// With [`Settings::max_memory`](crate::Settings::max_memory) set:
    /// each serving worker whose `RssAnon` is above it gets a rolling
    /// replacement (a new worker first; the old one drains once the new one
    /// listens), and a `memory_limit` event. Run at each heartbeat tick.
    pub(super) fn check_memory(&mut self, lp: &mut Loop<D>) {
        let Some(limit) = self.settings.max_memory else { return };
        if self.life.shutting_down {
            return;
        }
        let mut over: Vec<(WorkerId, u64)> = Vec::new();
        for w in &self.workers {
            let serving = matches!(w.info.status, WorkerStatus::Online | WorkerStatus::Listening);
            if !serving || w.disconnecting || w.figures.over_memory || self.rolling_swap_member(w.info.id) {
                continue;
            }
            if let Some(m) = ProcessMemory::of_pid(w.info.pid).filter(|m| m.rss_anon_bytes > limit) {
                over.push((w.info.id, m.rss_anon_bytes));
            }
        }
        for (id, rss_anon) in over {
            let Some(w) = self.entry_mut(id) else { continue };
            w.figures.over_memory = true;
            let info = w.info();
            self.events.queue.push_back(Event::MemoryLimit(info, rss_anon));
            self.replace_worker(lp, id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_rss_anon_and_vm_rss_in_bytes() {
        let status = b"Name:\tcat\nVmPeak:\t  8000 kB\nVmRSS:\t    1024 kB\nRssAnon:\t     100 kB\nRssFile:\t 924 kB\n";
        assert_eq!(
            ProcessMemory::parse(status),
            Some(ProcessMemory { rss_anon_bytes: 100 * 1024, vm_rss_bytes: 1024 * 1024 })
        );
        assert_eq!(ProcessMemory::parse(b"Name:\tkthreadd\n"), None, "kernel threads have no RSS lines");
        assert_eq!(ProcessMemory::parse(b"RssAnon:\tlots kB\nVmRSS:\t1 kB\n"), None);
    }

    #[test]
    fn reads_this_process() {
        let me = ProcessMemory::of_pid(std::process::id() as i32).expect("own /proc/self/status");
        assert!(me.rss_anon_bytes > 0 && me.vm_rss_bytes >= me.rss_anon_bytes, "{me:?}");
        assert_eq!(ProcessMemory::of_pid(0), None);
    }

    #[test]
    fn utilisation_is_the_busy_share_between_two_reports() {
        let mut f = Figures::default();
        f.on_report(WorkerReport { idle_us: 750, uptime_us: 1000, ..Default::default() });
        assert_eq!(f.utilisation, Some(0.25));
        f.on_report(WorkerReport { idle_us: 750 + 100, uptime_us: 2000, ..Default::default() });
        assert_eq!(f.utilisation, Some(0.9));
        // Counters that go backwards (a bogus report) give no negative share.
        f.on_report(WorkerReport { idle_us: 0, uptime_us: 3000, ..Default::default() });
        assert_eq!(f.utilisation, Some(1.0));
    }
}
