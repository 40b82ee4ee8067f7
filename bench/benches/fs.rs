//! File reads through the loop, on a file in the page cache (issue 12):
//! 4 KiB reads at random offsets (64 per iteration, 8 in flight) and 1 MiB
//! sequential reads (8 MiB per iteration, one at a time), each three ways:
//! `io_uring` (reads in the ring), `io_uring_pool` (io_uring loop with
//! `fs_io_uring(false)`: reads on the work pool) and `epoll_pool` (the epoll
//! backend, whose file reads always go to the pool). In-process: the loop,
//! the pool threads and criterion share the machine; the file is read once
//! before measuring so every read hits the page cache.
//!
//! `cargo bench -p uvring-bench --bench fs` (about 30 s with the defaults;
//! `-- --warm-up-time 1 --measurement-time 2` for a quick look).

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use std::fs::File;
use std::time::Duration;
use uvring::{Backend, Loop, LoopOptions, Result, RunMode};

const FILE_LEN: u64 = 8 << 20;
const SMALL: usize = 4096;
const SMALL_READS: usize = 64;
const SMALL_DEPTH: usize = 8;
const LARGE: usize = 1 << 20;

/// One iteration's reads: what is left to issue, what is in flight, and
/// the buffers between reads.
struct Reads {
    file: File,
    len: usize,
    total: usize,
    depth: usize,
    issued: usize,
    inflight: usize,
    /// Sequential (the next chunk) or random (from `rng`).
    sequential: bool,
    rng: u64,
    spare: Vec<Vec<u8>>,
    bytes: usize,
}

impl Reads {
    fn next_offset(&mut self) -> u64 {
        if self.sequential {
            return (self.issued * self.len) as u64 % FILE_LEN;
        }
        // xorshift64: cheap, deterministic, spread over the file.
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        (self.rng % (FILE_LEN / self.len as u64)) * self.len as u64
    }
}

fn issue(lp: &mut Loop<Reads>, r: &mut Reads) {
    while r.inflight < r.depth && r.issued < r.total {
        let off = r.next_offset();
        let buf = r.spare.pop().unwrap_or_else(|| vec![0; r.len]);
        lp.fs_read(&r.file, buf, Some(off), on_read).expect("queue a read");
        r.issued += 1;
        r.inflight += 1;
    }
}

fn on_read(lp: &mut Loop<Reads>, r: &mut Reads, n: Result<usize>, buf: Vec<u8>) {
    r.bytes += n.expect("read");
    r.inflight -= 1;
    r.spare.push(buf);
    issue(lp, r);
}

/// A loop (backend, file ops in the ring or not) and its reads.
struct Rig {
    lp: Loop<Reads>,
    reads: Reads,
}

impl Rig {
    fn new(
        path: &std::path::Path,
        backend: Backend,
        ring: bool,
        len: usize,
        total: usize,
        depth: usize,
    ) -> Option<Rig> {
        let lp = match Loop::with_options(LoopOptions::default().backend(backend).fs_io_uring(ring)) {
            Ok(lp) => lp,
            Err(e) => {
                eprintln!("SKIP {backend}: {e}");
                return None;
            }
        };
        assert_eq!(lp.fs_io_uring(), ring && backend == Backend::IoUring, "file reads routed as asked");
        let file = File::open(path).expect("open the bench file");
        let reads = Reads {
            file,
            len,
            total,
            depth,
            issued: 0,
            inflight: 0,
            sequential: depth == 1,
            rng: 0x9e37_79b9_7f4a_7c15,
            spare: Vec::new(),
            bytes: 0,
        };
        Some(Rig { lp, reads })
    }

    fn run(&mut self) {
        let r = &mut self.reads;
        r.issued = 0;
        r.bytes = 0;
        issue(&mut self.lp, r);
        self.lp.run(RunMode::Default, r).expect("run");
        assert_eq!(self.reads.bytes, self.reads.total * self.reads.len, "every read was whole");
    }
}

/// The bench file: `FILE_LEN` bytes, read once so it sits in the page cache.
fn bench_file() -> std::path::PathBuf {
    let path = std::env::temp_dir().join(format!("uvring-bench-fs-{}", std::process::id()));
    let data: Vec<u8> = (0..FILE_LEN as usize).map(|i| (i % 251) as u8).collect();
    std::fs::write(&path, &data).expect("write the bench file");
    assert_eq!(std::fs::read(&path).expect("warm the page cache").len(), data.len());
    path
}

fn fs_reads(c: &mut Criterion) {
    let path = bench_file();
    let modes = [
        ("io_uring", Backend::IoUring, true),
        ("io_uring_pool", Backend::IoUring, false),
        ("epoll_pool", Backend::Epoll, false),
    ];
    let mut group = c.benchmark_group("fs_read");
    group.sample_size(20).warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(4));
    group.throughput(Throughput::Bytes((SMALL * SMALL_READS) as u64));
    for (name, backend, ring) in modes {
        let Some(mut rig) = Rig::new(&path, backend, ring, SMALL, SMALL_READS, SMALL_DEPTH) else { continue };
        group.bench_function(format!("rand4k_x64_qd8/{name}"), |b| b.iter(|| rig.run()));
    }
    let large_reads = (FILE_LEN as usize) / LARGE;
    group.throughput(Throughput::Bytes(FILE_LEN));
    for (name, backend, ring) in modes {
        let Some(mut rig) = Rig::new(&path, backend, ring, LARGE, large_reads, 1) else { continue };
        group.bench_function(format!("seq1m_x8_qd1/{name}"), |b| b.iter(|| rig.run()));
    }
    group.finish();
    let _ = std::fs::remove_file(&path);
}

criterion_group!(benches, fs_reads);
criterion_main!(benches);
