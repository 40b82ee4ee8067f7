//! Runs the echo rig (in-process: server and clients in one loop) for a
//! fixed number of round trips and prints the rate:
//! a handle for `strace -c`, `perf` and quick A/B checks outside criterion.
//!
//! ```text
//! cargo run --release -p uvring-bench --bin echo_probe -- io_uring 64 64 20000
//! #                                                       backend conns size rounds-per-conn
//! ```

use std::process::ExitCode;
use uvring::Backend;
use uvring_bench::EchoRig;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let backend = match args.first().map(String::as_str).unwrap_or("epoll") {
        "epoll" => Backend::Epoll,
        "io_uring" => Backend::IoUring,
        other => {
            eprintln!("echo_probe: unknown backend {other} (epoll | io_uring)");
            return ExitCode::from(2);
        }
    };
    let num = |i: usize, dflt: u64| args.get(i).and_then(|s| s.parse::<u64>().ok()).unwrap_or(dflt);
    let (conns, size, rounds) = (num(1, 64) as usize, num(2, 64) as usize, num(3, 10_000));
    let mut rig = match EchoRig::new(backend, conns, size) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("echo_probe: {e}");
            return ExitCode::FAILURE;
        }
    };
    // Warm-up: buffers, pools and the kernel's socket memory.
    if let Err(e) = rig.run(rounds / 10 + 1) {
        eprintln!("echo_probe: {e}");
        return ExitCode::FAILURE;
    }
    match rig.run(rounds) {
        Ok(t) => {
            let trips = rounds * conns as u64;
            println!(
                "in-process (server and clients in one loop), {backend} {conns}c {size}B: {trips} round trips in {:.3} s = {:.0} round trips/s ({:.2} us each)",
                t.as_secs_f64(),
                trips as f64 / t.as_secs_f64(),
                t.as_secs_f64() * 1e6 / trips as f64
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("echo_probe: {e}");
            ExitCode::FAILURE
        }
    }
}
