//! Prints what a process tree has used so far, for the benchmark scripts:
//!
//! ```text
//! proc_tree PID
//! cpu_ns=1234567890 rss_bytes=31457280 processes=3
//! ```
//!
//! `cpu_ns` is utime + stime of PID and every descendant (all threads),
//! `rss_bytes` the sum of their resident sets (see
//! `uvring_bench::proctree`). Exit status 1 if PID is not running.

use std::process::ExitCode;
use uvring_bench::proctree;

fn main() -> ExitCode {
    let Some(pid) = std::env::args().nth(1).and_then(|p| p.parse::<u32>().ok()) else {
        eprintln!("usage: proc_tree PID");
        return ExitCode::from(2);
    };
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
