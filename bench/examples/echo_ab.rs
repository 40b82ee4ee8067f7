//! Interleaved A/B/C runs of the echo benchmark: epoll, io_uring and tokio
//! take turns, shape by shape, so that a busy moment of a shared machine
//! hits all three alike; prints the median time per round trip and the
//! design's ratios. Complements the criterion group (`benches/echo.rs`),
//! which measures each peer in its own time window.
//!
//! ```text
//! cargo run --release -p uvring-bench --example echo_ab -- [turns] [round trips per turn]
//! ```
//!
//! Defaults: 7 turns of 20 000 round trips per shape and peer (~40 s).
//! For profiling one case, `ECHO_AB_SHAPE=64c/16KiB` keeps one shape and
//! `ECHO_AB_PEERS=tokio` (or `epoll,io_uring`) runs only those peers (the
//! others print as NaN).

use std::time::Duration;
use uvring::Backend;
use uvring_bench::{backend_available, EchoRig};

#[path = "../benches/peers/tokio_echo.rs"]
mod tokio_echo;
use tokio_echo::TokioEcho;

const SHAPES: [(usize, usize, &str); 4] =
    [(1, 64, "64B"), (64, 64, "64B"), (1, 16 * 1024, "16KiB"), (64, 16 * 1024, "16KiB")];

fn median(v: &mut [f64]) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<u64> = std::env::args().skip(1).filter_map(|a| a.parse().ok()).collect();
    let turns = args.first().copied().unwrap_or(7).max(1);
    let trips = args.get(1).copied().unwrap_or(20_000).max(64);
    backend_available(Backend::IoUring).map_err(|e| format!("io_uring needed for the A/B: {e}"))?;
    println!(
        "echo A/B, in-process (server and clients in one loop): {turns} turns x {trips} round trips per shape and peer; median us per round trip"
    );
    println!(
        "{:<14} {:>8} {:>9} {:>8}   {:>14} {:>16} {:>14}",
        "shape", "epoll", "io_uring", "tokio", "uring/epoll", "best uvring/tokio", "tokio/epoll"
    );
    let shape_filter = std::env::var("ECHO_AB_SHAPE").ok();
    let peers = std::env::var("ECHO_AB_PEERS").unwrap_or_else(|_| "epoll,io_uring,tokio".into());
    let run_peer = [peers.contains("epoll"), peers.contains("io_uring"), peers.contains("tokio")];
    for (conns, size, label) in SHAPES {
        if shape_filter.as_ref().is_some_and(|f| *f != format!("{conns}c/{label}")) {
            continue;
        }
        let rounds = (trips / conns as u64).max(1);
        let mut epoll = EchoRig::new(Backend::Epoll, conns, size)?;
        let mut ring = EchoRig::new(Backend::IoUring, conns, size)?;
        let mut tokio = TokioEcho::new(conns, size);
        // Warm-up turn, not counted.
        if run_peer[0] {
            epoll.run(rounds / 10 + 1)?;
        }
        if run_peer[1] {
            ring.run(rounds / 10 + 1)?;
        }
        if run_peer[2] {
            tokio.run(rounds / 10 + 1);
        }
        let per_trip = |d: Duration| d.as_secs_f64() * 1e6 / (rounds * conns as u64) as f64;
        let (mut e, mut r, mut t) = (Vec::new(), Vec::new(), Vec::new());
        for turn in 0..turns {
            // Rotate who goes first, so no peer always runs right after another.
            for k in 0..3 {
                let which = (turn as usize + k) % 3;
                if !run_peer[which] {
                    continue;
                }
                match which {
                    0 => e.push(per_trip(epoll.run(rounds)?)),
                    1 => r.push(per_trip(ring.run(rounds)?)),
                    _ => t.push(per_trip(tokio.run(rounds))),
                }
            }
        }
        let (e, r, t) = (median(&mut e), median(&mut r), median(&mut t));
        // Ratios of throughput = inverse ratios of time per round trip.
        println!(
            "{:<14} {:>8.2} {:>9.2} {:>8.2}   {:>13.2}x {:>15.2}x {:>13.2}x",
            format!("{conns}c/{label}"),
            e,
            r,
            t,
            e / r,
            t / e.min(r),
            e / t
        );
    }
    Ok(())
}
