//! Cluster settings: what the primary forks, how it schedules connections,
//! and how it restarts crashed workers. Pure data; nothing here touches the OS
//! except reading the environment in [`SchedPolicy::from_env`].

use std::ffi::OsString;
use std::path::PathBuf;
use uvring::Backend;

/// Environment variable naming a worker's id (Node's `NODE_UNIQUE_ID`).
pub const ENV_WORKER_ID: &str = "UVRING_WORKER_ID";
/// Environment variable naming the worker's IPC channel fd (Node's `NODE_CHANNEL_FD`).
pub const ENV_CHANNEL_FD: &str = "UVRING_CHANNEL_FD";
/// Environment variable choosing the scheduling policy (`rr`, `shared`, `reuseport`).
pub const ENV_SCHED_POLICY: &str = "UVRING_CLUSTER_SCHED_POLICY";
/// Environment variable choosing the loop backend (read by `uvring::Loop::new`).
pub const ENV_BACKEND: &str = "UVRING_BACKEND";
/// Set by a primary that moved itself to `SCHED_BATCH`
/// ([`Settings::batch_scheduling`]): its workers, which inherit the policy,
/// move back to the normal one at `Worker::init`.
pub const ENV_NORMAL_SCHED: &str = "UVRING_CLUSTER_NORMAL_SCHED";

/// How connections reach workers.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Default)]
pub enum SchedPolicy {
    /// The primary accepts and hands each connection to the least-loaded worker.
    #[default]
    RoundRobin,
    /// The primary binds and sends the listening socket; workers accept themselves.
    Shared,
    /// Each worker binds its own `SO_REUSEPORT` socket; the primary is not asked.
    ReusePort,
}

impl SchedPolicy {
    /// Parses `rr`, `shared` (Node's `none` too) or `reuseport`.
    pub fn parse(name: &str) -> Option<SchedPolicy> {
        match name.trim().to_ascii_lowercase().as_str() {
            "rr" | "round-robin" | "roundrobin" => Some(SchedPolicy::RoundRobin),
            "shared" | "none" => Some(SchedPolicy::Shared),
            "reuseport" | "reuse-port" | "so_reuseport" => Some(SchedPolicy::ReusePort),
            _ => None,
        }
    }

    /// The policy named by `UVRING_CLUSTER_SCHED_POLICY`; `rr` when unset,
    /// empty or unknown.
    pub fn from_env() -> SchedPolicy {
        std::env::var(ENV_SCHED_POLICY).ok().and_then(|v| SchedPolicy::parse(&v)).unwrap_or_default()
    }

    /// The name [`parse`](Self::parse) accepts.
    pub fn name(self) -> &'static str {
        match self {
            SchedPolicy::RoundRobin => "rr",
            SchedPolicy::Shared => "shared",
            SchedPolicy::ReusePort => "reuseport",
        }
    }
}

impl std::fmt::Display for SchedPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// When and how often crashed workers are replaced.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RespawnSettings {
    /// Replace a worker that exits without having been disconnected.
    pub enabled: bool,
    /// Delay before the first respawn after a crash, in ms.
    pub base_delay_ms: u64,
    /// Largest delay: the delay doubles per crash within `window_ms`, up to this.
    pub max_delay_ms: u64,
    /// More than this many crashes within `window_ms` is a restart storm:
    /// respawning stops.
    pub storm_limit: u32,
    /// The window crashes are counted in, in ms.
    pub window_ms: u64,
}

impl Default for RespawnSettings {
    fn default() -> Self {
        RespawnSettings { enabled: false, base_delay_ms: 100, max_delay_ms: 5_000, storm_limit: 10, window_ms: 10_000 }
    }
}

/// What a child's stdout and stderr are.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Default)]
pub enum ChildOutput {
    /// The primary's own stdout and stderr.
    #[default]
    Inherit,
    /// `/dev/null` for stdout; stderr stays inherited (so crashes are seen).
    QuietStdout,
}

/// Settings of a [`Primary`](crate::Primary) (Node's `cluster.setupPrimary`).
#[derive(Clone, Debug)]
pub struct Settings {
    /// Program to run as a worker; `None` re-executes the current program.
    pub exec: Option<PathBuf>,
    /// Its arguments (without the program name); `None` passes the primary's own.
    pub args: Option<Vec<OsString>>,
    /// Extra environment for workers, on top of the primary's.
    pub env: Vec<(OsString, OsString)>,
    /// Workers [`Primary::start`](crate::Primary::start) forks.
    pub workers: usize,
    /// Scheduling policy.
    pub policy: SchedPolicy,
    /// Loop backend for workers (passed as `UVRING_BACKEND`); `None` passes
    /// the primary loop's own backend.
    pub backend: Option<Backend>,
    /// Crash handling.
    pub respawn: RespawnSettings,
    /// Where workers' stdout goes.
    pub output: ChildOutput,
    /// How often a worker reports its load (open connections), in ms.
    pub load_report_ms: u64,
    /// Round robin passes over a worker whose load is more than this above
    /// the least-loaded one (see [`RoundRobin`](crate::RoundRobin)).
    pub load_slack: u32,
    /// Under `rr`, run the primary's loop thread under Linux's `SCHED_BATCH`
    /// policy (when it runs under the normal one): a new connection then
    /// does not preempt a busy worker (or any other running task) to wake
    /// the primary; the primary runs at its turn and hands over everything
    /// that arrived meanwhile in one batch per worker. When a CPU is idle it
    /// runs at once, as before. On a busy 2-core machine this took the
    /// `Connection: close` throughput of `rr` from ~0.75x to ~0.93x of
    /// `reuseport` (bench/RESULTS.md). Workers keep the normal policy.
    /// Default: on.
    pub batch_scheduling: bool,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            exec: None,
            args: None,
            env: Vec::new(),
            workers: available_cpus(),
            policy: SchedPolicy::from_env(),
            backend: None,
            respawn: RespawnSettings::default(),
            output: ChildOutput::default(),
            load_report_ms: 50,
            load_slack: crate::schedule::DEFAULT_LOAD_SLACK,
            batch_scheduling: true,
        }
    }
}

/// The number of CPUs this process may run on (at least 1).
pub fn available_cpus() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy_names_round_trip() {
        for p in [SchedPolicy::RoundRobin, SchedPolicy::Shared, SchedPolicy::ReusePort] {
            assert_eq!(SchedPolicy::parse(p.name()), Some(p));
        }
        assert_eq!(SchedPolicy::parse(" RR "), Some(SchedPolicy::RoundRobin));
        assert_eq!(SchedPolicy::parse("none"), Some(SchedPolicy::Shared));
        assert_eq!(SchedPolicy::parse("fifo"), None);
        assert_eq!(SchedPolicy::default(), SchedPolicy::RoundRobin);
    }

    #[test]
    fn defaults_are_node_like() {
        let s = Settings::default();
        assert!(s.workers >= 1);
        assert!(!s.respawn.enabled, "Node does not respawn by default");
        assert!(s.exec.is_none() && s.args.is_none());
    }
}
