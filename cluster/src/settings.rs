//! Cluster settings: what the primary forks, how it schedules connections,
//! and how it restarts crashed workers. Pure data; nothing here touches the OS
//! except reading the environment in [`SchedPolicy::from_env`].

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;
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
/// Set by the primary when [`Settings::worker_batch_scheduling`] is on: the
/// worker moves itself to `SCHED_BATCH` at `Worker::init`.
pub const ENV_WORKER_BATCH: &str = "UVRING_CLUSTER_WORKER_BATCH";
/// Environment variable telling a worker its drain grace in ms
/// ([`Settings::drain_grace`]).
pub const ENV_DRAIN_GRACE_MS: &str = "UVRING_CLUSTER_DRAIN_GRACE_MS";
/// Environment variable passing [`Settings::max_message_len`] to workers, so
/// that both ends of a channel hold the same limit.
pub const ENV_MAX_MESSAGE_LEN: &str = "UVRING_CLUSTER_MAX_MESSAGE";
/// Default [`Settings::max_message_len`]: 1 MiB.
pub const DEFAULT_MAX_MESSAGE_LEN: usize = 1 << 20;

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

impl std::str::FromStr for SchedPolicy {
    type Err = uvring::Error;

    /// As [`parse`](SchedPolicy::parse); `EINVAL` for an unknown name.
    fn from_str(s: &str) -> Result<SchedPolicy, uvring::Error> {
        SchedPolicy::parse(s).ok_or(uvring::Error::EINVAL)
    }
}

impl std::fmt::Display for SchedPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// When and how often crashed workers are replaced. Start from `default()`
/// (off, like Node) and set what differs:
/// `RespawnSettings::default().enabled(true).base_delay(Duration::from_millis(20))`.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct RespawnSettings {
    /// Replace a worker that exits without having been disconnected.
    pub enabled: bool,
    /// Delay before the first respawn after a crash (default 100 ms).
    pub base_delay: Duration,
    /// Largest delay: the delay doubles per crash within `window`, up to
    /// this (default 5 s).
    pub max_delay: Duration,
    /// More than this many crashes within `window` is a restart storm:
    /// respawning stops (default 10).
    pub storm_limit: u32,
    /// The window crashes are counted in (default 10 s).
    pub window: Duration,
}

impl Default for RespawnSettings {
    fn default() -> Self {
        RespawnSettings {
            enabled: false,
            base_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(5),
            storm_limit: 10,
            window: Duration::from_secs(10),
        }
    }
}

impl RespawnSettings {
    /// Sets whether crashed workers are replaced.
    pub fn enabled(mut self, on: bool) -> Self {
        self.enabled = on;
        self
    }
    /// Sets the first delay.
    pub fn base_delay(mut self, d: Duration) -> Self {
        self.base_delay = d;
        self
    }
    /// Sets the largest delay.
    pub fn max_delay(mut self, d: Duration) -> Self {
        self.max_delay = d;
        self
    }
    /// Sets the restart-storm limit.
    pub fn storm_limit(mut self, n: u32) -> Self {
        self.storm_limit = n;
        self
    }
    /// Sets the window crashes are counted in.
    pub fn window(mut self, d: Duration) -> Self {
        self.window = d;
        self
    }
}

/// What a worker's stdin, stdout and stderr are (Node's `settings.stdio`
/// and `silent`).
#[derive(Copy, Clone, Debug, PartialEq, Eq, Default)]
pub enum ChildOutput {
    /// The primary's own stdin, stdout and stderr.
    #[default]
    Inherit,
    /// `/dev/null` for stdout; stdin and stderr stay inherited (so crashes
    /// are seen).
    QuietStdout,
    /// `/dev/null` for stdin, stdout and stderr (Node's `silent` without
    /// the pipes): nothing a worker writes is seen.
    Discard,
    /// stdout and stderr are pipes to the primary (stdin is `/dev/null`),
    /// which writes each line to its own stderr prefixed with
    /// `[worker ID pid PID] ` (PM2's and egg's prefixed logs; see
    /// [`Primary::capture_into`](crate::Primary::capture_into) and
    /// [`Primary::captured_lines_dropped`](crate::Primary::captured_lines_dropped)).
    Capture,
}

impl ChildOutput {
    /// Parses `inherit`, `quiet-stdout`, `discard` (or `silent`, `ignore`)
    /// or `capture`.
    pub fn parse(name: &str) -> Option<ChildOutput> {
        match name.trim().to_ascii_lowercase().as_str() {
            "inherit" => Some(ChildOutput::Inherit),
            "quiet-stdout" | "quiet" => Some(ChildOutput::QuietStdout),
            "discard" | "silent" | "ignore" => Some(ChildOutput::Discard),
            "capture" | "pipe" => Some(ChildOutput::Capture),
            _ => None,
        }
    }

    /// The name [`parse`](Self::parse) accepts.
    pub fn name(self) -> &'static str {
        match self {
            ChildOutput::Inherit => "inherit",
            ChildOutput::QuietStdout => "quiet-stdout",
            ChildOutput::Discard => "discard",
            ChildOutput::Capture => "capture",
        }
    }
}

/// Settings of a [`Primary`](crate::Primary) (Node's `cluster.setupPrimary`).
/// Start from `default()` and set what differs with the builder methods of
/// the same names: `Settings::default().workers(2).policy(SchedPolicy::Shared)`.
///
/// # Defaults
///
/// [`Settings::default()`](Settings::default) gives:
///
/// | field | default |
/// |---|---|
/// | `exec`, `args` | `None`: the primary's own program and arguments |
/// | `env` | none beyond the primary's environment |
/// | `workers` | [`available_cpus()`](available_cpus) |
/// | `policy` | [`SchedPolicy::from_env()`](SchedPolicy::from_env): `UVRING_CLUSTER_SCHED_POLICY`, else `rr` |
/// | `backend` | `None`: the primary loop's backend |
/// | `respawn` | [`RespawnSettings::default()`]: off; 100 ms doubling to 5 s; a storm is over 10 crashes in 10 s |
/// | `output` | [`ChildOutput::Inherit`] |
/// | `load_report` | 50 ms |
/// | `load_slack` | [`DEFAULT_LOAD_SLACK`](crate::schedule::DEFAULT_LOAD_SLACK) (8) |
/// | `batch_scheduling` | on |
/// | `worker_batch_scheduling` | on |
/// | `drain_grace` | 500 ms |
/// | `drain_timeout` | 30 s |
/// | `startup_timeout` | 10 s |
/// | `heartbeat_interval` | 1 s |
/// | `heartbeat_timeout` | 10 s |
/// | `max_message_len` | [`DEFAULT_MAX_MESSAGE_LEN`] (1 MiB) |
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use uvring_cluster::{RespawnSettings, SchedPolicy, Settings};
///
/// let settings = Settings::default()
///     .workers(4)
///     .policy(SchedPolicy::ReusePort)
///     .respawn(RespawnSettings::default().enabled(true).storm_limit(5))
///     .drain_timeout(Duration::from_secs(5));
/// assert_eq!(settings.workers, 4);
/// assert!(settings.respawn.enabled);
/// assert_eq!(settings.heartbeat_interval, Duration::from_secs(1)); // left at its default
/// ```
#[derive(Clone, Debug)]
#[non_exhaustive]
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
    /// What the workers speak on their channel: uvring's frames (default)
    /// or Node's own cluster protocol, for unchanged Node.js workers.
    pub protocol: crate::node::WorkerProtocol,
    /// Loop backend for workers (passed as `UVRING_BACKEND`); `None` passes
    /// the primary loop's own backend.
    pub backend: Option<Backend>,
    /// Crash handling.
    pub respawn: RespawnSettings,
    /// Where workers' stdout goes.
    pub output: ChildOutput,
    /// How often a worker reports its load (open connections); default 50 ms.
    pub load_report: Duration,
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
    /// Run every worker under Linux's `SCHED_BATCH` policy, under any
    /// [`SchedPolicy`]: a worker woken by a request then does not preempt
    /// the task running on its CPU (often the load's own client on a
    /// loaded machine); it runs at its turn and serves everything that
    /// arrived meanwhile in one loop iteration. Fewer, fuller wake-ups cost
    /// less CPU per request when the CPUs are saturated (keep-alive HTTP on
    /// 2 cores: about a third of the voluntary context switches, see
    /// bench/RESULTS.md), at the price of latency under saturation. An idle
    /// CPU still runs the worker at once. Default: on.
    pub worker_batch_scheduling: bool,
    /// When a worker drains (disconnect, shutdown, a step of a rolling
    /// restart), how long a connection with no request in flight may stay
    /// open before the server closes it ([`Worker::on_drain`](crate::Worker::on_drain)
    /// passes it to the application). At most 1 s is sensible; default 500 ms.
    pub drain_grace: Duration,
    /// How long a worker asked to disconnect may take to exit before the
    /// primary kills it (`SIGKILL`); default 30 s.
    pub drain_timeout: Duration,
    /// How long a rolling restart's replacement may take to listen (or to
    /// come online, when the worker it replaces never listened) before it
    /// is killed and counted as a failed start; default 10 s. A worker that
    /// crashes within this time of its fork, before it listens, is a failed
    /// start too: more than `respawn.storm_limit` of them in a row is a
    /// restart storm (a listen that cannot succeed stops the respawn loop).
    pub startup_timeout: Duration,
    /// How often the primary sends each worker a heartbeat, which the
    /// worker's loop answers; `Duration::ZERO` turns liveness checks off.
    /// Default 1 s.
    pub heartbeat_interval: Duration,
    /// A worker whose channel has been silent (no answer to a heartbeat,
    /// nothing else) for this long is unresponsive: it is killed
    /// (`SIGKILL`), its unacknowledged connections go to other workers at
    /// once, and its exit is a crash (respawned per `respawn`). Default 10 s.
    pub heartbeat_timeout: Duration,
    /// The largest frame payload either end of a channel sends or accepts:
    /// a user message's bytes, a store request's key and value plus 8
    /// bytes. A send above it fails with `EMSGSIZE` and sends nothing; the
    /// workers get the same limit (`UVRING_CLUSTER_MAX_MESSAGE`). Each
    /// channel's receive buffer is this large (allocated once, at fork), so
    /// raise it only as far as needed. Default 1 MiB
    /// ([`DEFAULT_MAX_MESSAGE_LEN`]).
    pub max_message_len: usize,
    /// How long a worker's shared-store request ([`Worker::store_get`](crate::Worker::store_get),
    /// [`store_add`](crate::Worker::store_add), ...) waits for the
    /// primary's answer before its callback gets `ETIMEDOUT` (a primary
    /// stuck or gone does not leave the worker waiting for ever); zero
    /// waits for ever. Default 5 s.
    pub store_timeout: Duration,
    /// User id the workers run as (`setuid` in the child before exec), so
    /// that a primary started as root (to bind a privileged port, say) runs
    /// its workers unprivileged; `None` keeps the primary's.
    pub uid: Option<u32>,
    /// Group id the workers run as (`setgid` before exec); `None` keeps the
    /// primary's.
    pub gid: Option<u32>,
    /// Supplementary groups of the workers (`setgroups` before exec).
    /// `None`: with `uid` or `gid` set, a root primary's groups are dropped
    /// (the workers keep none); otherwise they are inherited.
    pub groups: Option<Vec<u32>>,
    /// Working directory of the workers; `None` keeps the primary's.
    pub cwd: Option<PathBuf>,
    /// Pin each worker to one CPU of the primary's allowed set
    /// (`sched_getaffinity`): the first worker to the first CPU, the second
    /// to the second, ... (a worker takes the CPU with the fewest live
    /// workers, so a replacement takes its predecessor's). Default off.
    pub cpu_affinity: bool,
    /// Raise the primary's soft `RLIMIT_NOFILE` to the hard limit when it
    /// is made (nginx's `worker_rlimit_nofile`); workers inherit it.
    /// Default on.
    pub raise_fd_limit: bool,
    /// With [`ChildOutput::Capture`], how many bytes of captured lines the
    /// primary holds while its own output is slow; a line that does not fit
    /// is dropped (and counted). Default 256 KiB.
    pub capture_buffer: usize,
    /// The most anonymous resident memory (`RssAnon` in
    /// `/proc/PID/status`: heap and stacks, not shared program text or the
    /// io_uring rings' mappings that `VmRSS` counts) a worker may hold, in
    /// bytes. Checked at each heartbeat (`heartbeat_interval`); a worker
    /// above it is replaced by a rolling replacement (a new worker listens
    /// first, then the old one drains: no request is cut), and
    /// [`Primary::on_memory_limit`](crate::Primary::on_memory_limit) says so.
    /// Default `None` (no limit).
    pub max_memory: Option<u64>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            exec: None,
            args: None,
            env: Vec::new(),
            workers: available_cpus(),
            policy: SchedPolicy::from_env(),
            protocol: crate::node::WorkerProtocol::Uvring,
            backend: None,
            respawn: RespawnSettings::default(),
            output: ChildOutput::default(),
            load_report: Duration::from_millis(50),
            load_slack: crate::schedule::DEFAULT_LOAD_SLACK,
            batch_scheduling: true,
            worker_batch_scheduling: true,
            drain_grace: Duration::from_millis(500),
            drain_timeout: Duration::from_secs(30),
            startup_timeout: Duration::from_secs(10),
            heartbeat_interval: Duration::from_secs(1),
            heartbeat_timeout: Duration::from_secs(10),
            max_message_len: DEFAULT_MAX_MESSAGE_LEN,
            store_timeout: crate::worker::DEFAULT_STORE_TIMEOUT,
            uid: None,
            gid: None,
            groups: None,
            cwd: None,
            cpu_affinity: false,
            raise_fd_limit: true,
            capture_buffer: 256 << 10,
            max_memory: None,
        }
    }
}

macro_rules! setters {
    ($($(#[$doc:meta])* $name:ident: $ty:ty),* $(,)?) => {
        impl Settings {
            $(
                $(#[$doc])*
                pub fn $name(mut self, value: $ty) -> Self {
                    self.$name = value;
                    self
                }
            )*
        }
    };
}

setters!(
    /// Sets the program to run as a worker.
    exec: Option<PathBuf>,
    /// Sets the workers' arguments.
    args: Option<Vec<OsString>>,
    /// Sets the extra environment for workers.
    env: Vec<(OsString, OsString)>,
    /// Sets how many workers `start` forks.
    workers: usize,
    /// Sets the scheduling policy.
    policy: SchedPolicy,
    /// Sets what the workers speak on their channel.
    protocol: crate::node::WorkerProtocol,
    /// Sets the workers' loop backend.
    backend: Option<Backend>,
    /// Sets crash handling.
    respawn: RespawnSettings,
    /// Sets where workers' stdout goes.
    output: ChildOutput,
    /// Sets how often workers report their load.
    load_report: Duration,
    /// Sets round robin's load slack.
    load_slack: u32,
    /// Sets whether the primary runs under `SCHED_BATCH` under `rr`.
    batch_scheduling: bool,
    /// Sets whether workers run under `SCHED_BATCH`.
    worker_batch_scheduling: bool,
    /// Sets the idle grace of a draining worker's connections.
    drain_grace: Duration,
    /// Sets how long a disconnecting worker may take before it is killed.
    drain_timeout: Duration,
    /// Sets how long a replacement may take to listen.
    startup_timeout: Duration,
    /// Sets how often workers are asked for a heartbeat (zero: never).
    heartbeat_interval: Duration,
    /// Sets how long a silent worker lives before it is killed.
    heartbeat_timeout: Duration,
    /// Sets the message size limit of both ends of every channel.
    max_message_len: usize,
    /// Sets how long a worker's store request waits for its answer.
    store_timeout: Duration,
    /// Sets the user id workers run as.
    uid: Option<u32>,
    /// Sets the group id workers run as.
    gid: Option<u32>,
    /// Sets the workers' supplementary groups.
    groups: Option<Vec<u32>>,
    /// Sets the workers' working directory.
    cwd: Option<PathBuf>,
    /// Sets whether each worker is pinned to one CPU.
    cpu_affinity: bool,
    /// Sets whether the primary raises its soft fd limit to the hard one.
    raise_fd_limit: bool,
    /// Sets the captured-output buffer of the primary.
    capture_buffer: usize,
    /// Sets the most `RssAnon` a worker may hold, in bytes (`None`: no limit).
    max_memory: Option<u64>,
);

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
        assert_eq!("shared".parse::<SchedPolicy>(), Ok(SchedPolicy::Shared));
        assert_eq!("fifo".parse::<SchedPolicy>(), Err(uvring::Error::EINVAL));
        assert_eq!(SchedPolicy::ReusePort.to_string(), "reuseport");
        for o in [ChildOutput::Inherit, ChildOutput::QuietStdout, ChildOutput::Discard, ChildOutput::Capture] {
            assert_eq!(ChildOutput::parse(o.name()), Some(o));
        }
        assert_eq!(ChildOutput::parse("silent"), Some(ChildOutput::Discard));
        assert_eq!(ChildOutput::parse("loud"), None);
    }

    #[test]
    fn defaults_are_node_like() {
        let s = Settings::default();
        assert!(s.workers >= 1);
        assert!(!s.respawn.enabled, "Node does not respawn by default");
        assert!(s.exec.is_none() && s.args.is_none());
    }
}
