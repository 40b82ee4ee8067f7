//! Prints what a process tree has used so far, for the benchmark scripts:
//!
//! ```text
//! proc_tree PID
//! cpu_ns=1234567890 rss_bytes=31457280 processes=3
//! proc_tree --each PID
//! pid=100 ppid=1 cpu_ns=400000000
//! pid=101 ppid=100 cpu_ns=900000000
//! ```
//!
//! `cpu_ns` is utime + stime of PID and every descendant (all threads),
//! `rss_bytes` the sum of their resident sets (see
//! `uvring_bench::proctree`). With `--each`, one line per process of the
//! tree (PID first), for the split between a cluster's primary and its
//! workers. Exit status 1 if PID is not running.

use std::process::ExitCode;
use uvring_bench::proctree;

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1).peekable();
    let each = args.peek().is_some_and(|a| a == "--each");
    if each {
        args.next();
    }
    let Some(pid) = args.next().and_then(|p| p.parse::<u32>().ok()) else {
        eprintln!("usage: proc_tree [--each] PID");
        return ExitCode::from(2);
    };
    if each {
        return match proctree::sample_each(pid) {
            Ok(list) => {
                for p in list {
                    println!("pid={} ppid={} cpu_ns={}", p.pid, p.ppid, p.cpu.as_nanos());
                }
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("proc_tree: {pid}: {e}");
                ExitCode::FAILURE
            }
        };
    }
    match proctree::sample(pid) {
        Ok(s) => {
            println!("cpu_ns={} rss_bytes={} processes={}", s.cpu.as_nanos(), s.rss_bytes, s.processes);
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("proc_tree: {pid}: {e}");
            ExitCode::FAILURE
        }
    }
}
