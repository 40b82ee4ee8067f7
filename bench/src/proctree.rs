//! What a server process tree costs, read from `/proc`: CPU time
//! (utime + stime) and resident memory of a process and every descendant,
//! and CPU pinning for the external-client benchmarks.
//!
//! The benchmarks measure a server as the whole tree it runs as (a cluster
//! primary and its workers, nginx's master and workers, Node's primary and
//! workers), so a figure per request or per connection counts every
//! process that serves it. CPU times come from `/proc/<pid>/stat` fields 14
//! and 15, which cover all threads of a process (io_uring's kernel workers
//! included); their unit is the clock tick (`sysconf(_SC_CLK_TCK)`, 10 ms at
//! 100 Hz), so a window should hold at least a few hundred ticks of CPU
//! for a 1 % figure.

use std::collections::HashMap;
use std::io;
use std::time::Duration;

/// One reading of a process tree.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TreeSample {
    /// utime + stime of every process in the tree, all threads.
    pub cpu: Duration,
    /// Sum of the processes' resident set sizes (pages shared between them,
    /// such as a forked worker's untouched copy of its parent, count once
    /// per process).
    pub rss_bytes: u64,
    /// Processes in the tree (the root included).
    pub processes: usize,
}

/// The fields of `/proc/<pid>/stat` the tree needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Stat {
    ppid: u32,
    /// utime + stime, in clock ticks.
    ticks: u64,
    /// Resident pages.
    rss_pages: u64,
}

/// Parses one `/proc/<pid>/stat` line. The command name (field 2) is in
/// parentheses and may hold spaces and parentheses itself, so the fields
/// are counted from the last `)`.
fn parse_stat(line: &str) -> Option<Stat> {
    let rest = &line[line.rfind(')')? + 1..];
    // rest = " S ppid pgrp ...": field 3 (state) is index 0.
    let f: Vec<&str> = rest.split_ascii_whitespace().collect();
    let field = |n: usize| f.get(n - 3).and_then(|s| s.parse::<u64>().ok());
    Some(Stat { ppid: field(4)? as u32, ticks: field(14)? + field(15)?, rss_pages: field(24)? })
}

fn clock_ticks_per_sec() -> u64 {
    // SAFETY: sysconf reads a constant of the running system; no memory is
    // passed.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as u64
    } else {
        100
    }
}

fn page_size() -> u64 {
    // SAFETY: as above.
    let p = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if p > 0 {
        p as u64
    } else {
        4096
    }
}

/// Every process now alive, by pid. A process that exits while `/proc` is
/// being read is skipped.
fn all_stats() -> io::Result<HashMap<u32, Stat>> {
    let mut out = HashMap::new();
    for entry in std::fs::read_dir("/proc")? {
        let Ok(entry) = entry else { continue };
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else { continue };
        let Ok(line) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { continue };
        if let Some(st) = parse_stat(&line) {
            out.insert(pid, st);
        }
    }
    Ok(out)
}

/// `root` and its descendants among `stats`.
fn tree_of(root: u32, stats: &HashMap<u32, Stat>) -> Vec<u32> {
    let mut children: HashMap<u32, Vec<u32>> = HashMap::new();
    for (&pid, st) in stats {
        children.entry(st.ppid).or_default().push(pid);
    }
    let mut tree = Vec::new();
    let mut todo = vec![root];
    while let Some(pid) = todo.pop() {
        if !stats.contains_key(&pid) {
            continue;
        }
        tree.push(pid);
        if let Some(c) = children.get(&pid) {
            todo.extend_from_slice(c);
        }
    }
    tree
}

/// Reads the CPU time and RSS of `root` and all its descendants. `ESRCH`
/// if `root` is not running.
pub fn sample(root: u32) -> io::Result<TreeSample> {
    let stats = all_stats()?;
    let tree = tree_of(root, &stats);
    if tree.is_empty() {
        return Err(io::Error::from_raw_os_error(libc::ESRCH));
    }
    let (ticks, pages) =
        tree.iter().filter_map(|p| stats.get(p)).fold((0, 0), |(t, r), s| (t + s.ticks, r + s.rss_pages));
    let hz = clock_ticks_per_sec();
    Ok(TreeSample {
        cpu: Duration::from_nanos(ticks * 1_000_000_000 / hz),
        rss_bytes: pages * page_size(),
        processes: tree.len(),
    })
}

/// One process of a tree, for the per-process split (`proc_tree --each`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProcessSample {
    pub pid: u32,
    pub ppid: u32,
    /// utime + stime of this process, all threads.
    pub cpu: Duration,
}

/// Like [`sample`], but one entry per process of the tree (the root
/// first, then by pid), so a cluster's primary and workers can be told
/// apart. `ESRCH` if `root` is not running.
pub fn sample_each(root: u32) -> io::Result<Vec<ProcessSample>> {
    let stats = all_stats()?;
    let mut tree = tree_of(root, &stats);
    if tree.is_empty() {
        return Err(io::Error::from_raw_os_error(libc::ESRCH));
    }
    tree.sort_by_key(|&p| (p != root, p));
    let hz = clock_ticks_per_sec();
    Ok(tree
        .iter()
        .filter_map(|p| stats.get(p).map(|s| (*p, s)))
        .map(|(pid, s)| ProcessSample { pid, ppid: s.ppid, cpu: Duration::from_nanos(s.ticks * 1_000_000_000 / hz) })
        .collect())
}

/// The CPU time (user + system) this process has used so far, all threads.
pub fn self_cpu() -> Duration {
    // SAFETY: getrusage writes into the zeroed struct we own.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: as above; RUSAGE_SELF is always valid.
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) } != 0 {
        return Duration::ZERO;
    }
    let tv = |t: libc::timeval| Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64);
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// Pins the calling thread (the whole process, if it has one thread) to
/// `cpu`.
pub fn pin_to_cpu(cpu: usize) -> io::Result<()> {
    // SAFETY: cpu_set_t is a plain bit array; zeroed is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    if cpu >= libc::CPU_SETSIZE as usize {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    // SAFETY: `cpu` is below CPU_SETSIZE (checked above).
    unsafe { libc::CPU_SET(cpu, &mut set) };
    // SAFETY: pid 0 is the calling thread; the set lives for the call.
    if unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_stat_counts_fields_after_the_last_paren() {
        // A command name with a space and a parenthesis in it.
        let line = "4242 (my (srv) x) S 1 4242 4242 0 -1 4194560 500 0 0 0 \
                    123 45 0 0 20 0 3 0 100 1000000 789 18446744073709551615";
        assert_eq!(parse_stat(line), Some(Stat { ppid: 1, ticks: 168, rss_pages: 789 }));
        assert_eq!(parse_stat("1 (init) S 0"), None);
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn tree_holds_the_root_and_its_descendants_only() {
        let st = |ppid| Stat { ppid, ticks: 1, rss_pages: 1 };
        let stats: HashMap<u32, Stat> =
            [(1, st(0)), (10, st(1)), (11, st(10)), (12, st(10)), (13, st(12)), (20, st(1))].into();
        let mut t = tree_of(10, &stats);
        t.sort();
        assert_eq!(t, vec![10, 11, 12, 13]);
        assert!(tree_of(99, &stats).is_empty());
    }

    #[test]
    fn sample_of_this_process_and_a_child() {
        let mut child = std::process::Command::new("sleep").arg("5").spawn().expect("spawn sleep");
        let me = std::process::id();
        let s = sample(me).expect("sample self");
        assert!(s.processes >= 2, "{s:?}");
        assert!(s.rss_bytes > 0);
        let each = sample_each(me).expect("sample each");
        let _ = child.kill();
        let _ = child.wait();
        assert_eq!(each[0].pid, me);
        assert!(each.iter().any(|p| p.pid == child.id() && p.ppid == me), "{each:?}");
        assert!(sample(u32::MAX - 1).is_err());
        assert!(sample_each(u32::MAX - 1).is_err());
    }
}
